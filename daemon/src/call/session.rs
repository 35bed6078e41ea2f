//! One call as a task: negotiate SDP, answer, run media with the voice agent (`call::agent`) or
//! media test mode, keep the call record, end cleanly whoever hangs up.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::agent::AgentRun;
use super::core::{CallCore, CallEvent, CallOutput, Ending, Handler};
use super::record::{self, CallRecord, EndReason, Party, RtpSummary};
use super::transfer::{ringback_cycle, TransferEvent};
use super::work::WorkGuard;
use super::{CallControl, CallHost};
use crate::agent::AgentSpec;
use crate::config::{CallHandler, Config};
use crate::speech::service::CallSpeech;
use crate::telephony::codec::Negotiated;
use crate::telephony::media::{MediaConfig, MediaEvent, MediaSession, Recorder, TransmitKind};
use crate::telephony::rtp_ports::{RtpPorts, RtpSockets};
use crate::telephony::sdp::{self, LocalMedia, SdpError};
use crate::telephony::sip::{CallCommand, CallSignal, DialOutcome, InboundCall};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

/// One end of a media bridge between two call legs: audio to the other leg, audio from it.
/// When the other leg ends, its sender drops and this leg hangs up too.
pub struct Bridge {
    to_peer: mpsc::Sender<(Vec<i16>, u32)>,
    from_peer: mpsc::Receiver<(Vec<i16>, u32)>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bridge")
    }
}

/// Two connected bridge ends.
pub fn bridge_pair() -> (Bridge, Bridge) {
    // About a second of 20 ms frames: a stalled leg drops audio rather than growing memory.
    let (a_tx, a_rx) = mpsc::channel(50);
    let (b_tx, b_rx) = mpsc::channel(50);
    (
        Bridge {
            to_peer: a_tx,
            from_peer: b_rx,
        },
        Bridge {
            to_peer: b_tx,
            from_peer: a_rx,
        },
    )
}

/// The appliance's own call to a transfer's target, ringing: how dialling ends, our end of
/// the bridge, and the guard that cancels the leg when dropped (the caller hung up, the call
/// ended, the ring time ran out).
struct BridgeDial {
    /// None once received.
    outcome: Option<tokio::sync::oneshot::Receiver<(String, DialOutcome)>>,
    ours: Bridge,
    cancel: DropGuard,
}

/// Where a call's record snapshots go: the store (through the call's [`RecordWriter`]), or
/// nowhere for a transfer's bridge leg, which lives in the caller's record.
trait RecordSink: Sync {
    fn save(&self, rec: &CallRecord);
}

impl RecordSink for RecordWriter {
    fn save(&self, rec: &CallRecord) {
        RecordWriter::save(self, rec);
    }
}

/// A transfer's bridge leg keeps no record of its own (the caller's `transfer.bridge` has it).
struct NoRecord;

impl RecordSink for NoRecord {
    fn save(&self, _: &CallRecord) {}
}

/// Runs one inbound call to its end. `guard` counts it as active work until it returns.
pub async fn run_inbound(
    ctx: Arc<dyn CallHost>,
    ports: Arc<RtpPorts>,
    call: InboundCall,
    signals: mpsc::Receiver<CallSignal>,
    commands: mpsc::Sender<CallCommand>,
    guard: WorkGuard,
) {
    let id = ctx.store().new_id();
    let span = tracing::info_span!("call", id = %id, call_id = %call.call_id);
    async {
        let records = RecordWriter::start(&ctx);
        // The signal channel stays open until every record snapshot is on disk: the SIP layer
        // answers the caller's BYE once it closes, so a 200 OK never precedes the ended record.
        let mut signals = signals;
        inbound(ctx, ports, call, &mut signals, commands, id, &records).await;
        records.finish().await;
        drop(signals);
    }
    .instrument(span)
    .await;
    drop(guard);
}

async fn inbound(
    ctx: Arc<dyn CallHost>,
    ports: Arc<RtpPorts>,
    call: InboundCall,
    signals: &mut mpsc::Receiver<CallSignal>,
    commands: mpsc::Sender<CallCommand>,
    id: ulid::Ulid,
    records: &dyn RecordSink,
) {
    let config = ctx.config();
    let mut rec = CallRecord::new_inbound(
        id,
        &call.call_id,
        &call.from,
        &call.to,
        &call.source.to_string(),
    );
    rec.trunk = Some(call.trunk.clone());
    tracing::info!(from = %call.from, to = %call.to, source = %call.source, trunk = %call.trunk, "inbound call");

    // Admission first: a refused caller's record is saved once, already ended. (No save holds
    // up the 503 or the answer: the record writer does them beside the call.)
    let agent = if config.call.handler == CallHandler::Agent {
        match admit_agent(&ctx) {
            Ok(speech) => Some(speech),
            Err(reason) => {
                tracing::warn!("call refused (503): {reason}");
                refuse(records, &commands, &mut rec, 503, reason).await;
                return;
            }
        }
    } else {
        None
    };
    records.save(&rec);
    let Some(sockets) = ports.allocate().await else {
        let reason = "no free RTP port pair".to_owned();
        tracing::warn!("{reason}; widen rtp.port_min..port_max");
        refuse(records, &commands, &mut rec, 503, reason).await;
        return;
    };
    let local_ip = local_media_ip(&config, call.source);
    let local = LocalMedia {
        address: local_ip,
        rtp_port: sockets.rtp_port(),
        session_id: u64::from(rand_u32()),
        session_version: 1,
    };
    // An INVITE without SDP (delayed offer): we offer in the 200, the answer comes in the ACK.
    let delayed_offer = call.offer.trim().is_empty();
    let answer = if delayed_offer {
        Ok(None)
    } else {
        sdp::answer(
            &call.offer,
            &crate::telephony::codec::preferences(&config.sip),
            &local,
        )
        .map(Some)
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            let code = match e {
                SdpError::Malformed { .. } | SdpError::NoConnection => 400,
                _ => 488,
            };
            tracing::info!(code, "offer refused: {e}");
            refuse(records, &commands, &mut rec, code, e.to_string()).await;
            return;
        }
    };
    if config.call.answer_after_ms > 0 {
        // Ring first, as a person would: the caller hears ringback, and may hang up.
        let _ = commands.send(CallCommand::Ring).await;
        let ring = tokio::time::sleep(Duration::from_millis(u64::from(
            config.call.answer_after_ms,
        )));
        tokio::pin!(ring);
        loop {
            tokio::select! {
                _ = &mut ring => break,
                signal = signals.recv() => match signal {
                    Some(CallSignal::Cancelled) | None => {
                        tracing::info!("caller hung up while ringing (CANCEL)");
                        rec.end(EndReason::Cancelled, Some(Party::Caller));
                        records.save(&rec);
                        return;
                    }
                    Some(CallSignal::Terminated(why)) => {
                        rec.end(EndReason::Failed { error: why }, None);
                        records.save(&rec);
                        return;
                    }
                    Some(other) => tracing::debug!(?other, "signal while ringing"),
                },
            }
        }
    }
    let negotiated = match answer {
        Some(answer) => {
            let _ = commands
                .send(CallCommand::Answer {
                    sdp: answer.sdp.clone(),
                })
                .await;
            rec.answer_at_ms = Some(crate::store::now_ms());
            answer.negotiated
        }
        None => {
            rec.answer_at_ms = Some(crate::store::now_ms());
            match offer_in_200(&config, &local, signals, &commands).await {
                Ok(negotiated) => negotiated,
                Err((reason, by)) => {
                    rec.end(reason, by);
                    records.save(&rec);
                    return;
                }
            }
        }
    };
    rec.codec = Some(negotiated.codec);
    records.save(&rec);
    tracing::info!(codec = %negotiated.codec, remote_rtp = %negotiated.remote_rtp, local_rtp = local.rtp_port, delayed_offer, "answered");
    run_answered(
        &ctx,
        &config,
        negotiated,
        sockets,
        rec,
        (signals, commands),
        None,
        agent,
        records,
    )
    .await;
}

/// Delayed offer (an INVITE without SDP, RFC 3261 §13.2.1, RFC 3264): our offer goes in the
/// 200 and the caller's answer comes in the ACK. An ACK without a usable answer ends the call
/// with BYE.
async fn offer_in_200(
    config: &Config,
    local: &LocalMedia,
    signals: &mut mpsc::Receiver<CallSignal>,
    commands: &mpsc::Sender<CallCommand>,
) -> Result<Negotiated, (EndReason, Option<Party>)> {
    let preferences = crate::telephony::codec::preferences(&config.sip);
    let offer = sdp::offer(&preferences, local);
    let _ = commands.send(CallCommand::Answer { sdp: offer }).await;
    loop {
        let failed = match signals.recv().await {
            Some(CallSignal::AckAnswer { sdp: answer }) if answer.trim().is_empty() => {
                "the ACK carried no SDP answer to our offer".to_owned()
            }
            Some(CallSignal::AckAnswer { sdp: answer }) => {
                match sdp::read_answer(&answer, &preferences) {
                    Ok(negotiated) => return Ok(negotiated),
                    Err(e) => format!("the SDP answer in the ACK is unusable: {e}"),
                }
            }
            Some(CallSignal::RemoteHangup) => return Err((EndReason::Hangup, Some(Party::Caller))),
            Some(CallSignal::Cancelled) => return Err((EndReason::Cancelled, Some(Party::Caller))),
            Some(CallSignal::Terminated(error)) => return Err((EndReason::Failed { error }, None)),
            None => {
                let error = "signalling gone before the ACK".to_owned();
                return Err((EndReason::Failed { error }, None));
            }
            Some(other) => {
                tracing::debug!(?other, "signal while waiting for the ACK");
                continue;
            }
        };
        tracing::warn!("delayed offer (INVITE without SDP): {failed}; ending the call with BYE");
        let _ = commands.send(CallCommand::Hangup).await;
        let error = format!("delayed offer: {failed}");
        return Err((EndReason::Failed { error }, Some(Party::Appliance)));
    }
}

/// An answered call, inbound or outbound: media until someone hangs up, then the record is
/// completed.
#[allow(clippy::too_many_arguments)] // one call's parts, handed over once
async fn run_answered(
    ctx: &Arc<dyn CallHost>,
    config: &Config,
    negotiated: Negotiated,
    sockets: RtpSockets,
    mut rec: CallRecord,
    (signals, commands): (&mut mpsc::Receiver<CallSignal>, mpsc::Sender<CallCommand>),
    bridge: Option<Bridge>,
    agent: Option<AgentCall>,
    records: &dyn RecordSink,
) {
    // Recordings share the store's disk and its reserve: a call is not recorded (and a
    // recording stops) below it, so audio files never take the room the records need.
    let recording = config
        .call
        .record
        .then(|| {
            config
                .daemon
                .state_dir
                .join("recordings")
                .join(format!("{}.wav", rec.id))
        })
        .filter(|_| match ctx.store().check_room() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("call not recorded: {e}");
                false
            }
        });
    let mut media = match MediaRun::new(config, negotiated, sockets, recording, agent, bridge) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("media engine refused the negotiated stream: {e}");
            let _ = commands.send(CallCommand::Hangup).await;
            rec.end(EndReason::Failed { error: e }, Some(Party::Appliance));
            records.save(&rec);
            return;
        }
    };
    let (control_tx, mut control_rx) = mpsc::channel(8);
    ctx.live_calls().insert(&rec.id, control_tx);
    if let Some(agent) = media.agent.as_mut() {
        if let Some(d) = agent.start(&mut media.session, &mut rec) {
            media
                .core
                .handle_event(Instant::now(), CallEvent::Directive(d));
        }
    }
    let ending = media
        .run(
            ctx,
            config,
            signals,
            &commands,
            &mut control_rx,
            (&mut rec, records),
        )
        .await;
    media.end_transfer(ctx, &commands, &mut rec).await;
    ctx.live_calls().remove(&rec.id);
    media.close().await;
    if ending.send_bye {
        let _ = commands.send(CallCommand::Hangup).await;
    }
    rec.rtp = Some(media.summary());
    if let Some(path) = media.finish_recording() {
        rec.recording = Some(path);
    }
    rec.end(ending.reason, ending.by);
    records.save(&rec);
    tracing::info!(reason = ?rec.end_reason, by = ?rec.hung_up_by, duration_ms = ?rec.duration_ms(), "call ended");
}

/// An outbound call to place (commissioning now, campaigns later).
#[derive(Debug)]
pub struct DialRequest {
    pub to: String,
    pub ring_timeout: Duration,
    /// Connect the answered call's audio to another leg instead of media test mode. Such a
    /// leg (a transfer's bridge) keeps no call record of its own.
    pub bridge: Option<Bridge>,
    /// Cancelled: stop ringing at once (CANCEL) and give up the call.
    pub cancel: Option<CancellationToken>,
}

/// Places an outbound call and, when answered, runs it like an inbound one. `outcome`
/// receives the call id and how dialling ended as soon as that is known.
pub async fn run_outbound(
    ctx: Arc<dyn CallHost>,
    ports: Arc<RtpPorts>,
    ua: Arc<crate::telephony::sip::user_agent::UserAgent>,
    req: DialRequest,
    guard: WorkGuard,
    outcome: tokio::sync::oneshot::Sender<(String, DialOutcome)>,
) {
    let id = ctx.store().new_id();
    let span = tracing::info_span!("call", id = %id, to = %req.to);
    async {
        if req.bridge.is_some() {
            // A transfer's bridge leg: part of the caller's call, and of its record.
            outbound(ctx, ports, ua, req, id, outcome, &NoRecord).await;
        } else {
            let records = RecordWriter::start(&ctx);
            outbound(ctx, ports, ua, req, id, outcome, &records).await;
            records.finish().await;
        }
    }
    .instrument(span)
    .await;
    drop(guard);
}

async fn outbound(
    ctx: Arc<dyn CallHost>,
    ports: Arc<RtpPorts>,
    ua: Arc<crate::telephony::sip::user_agent::UserAgent>,
    req: DialRequest,
    id: ulid::Ulid,
    outcome: tokio::sync::oneshot::Sender<(String, DialOutcome)>,
    records: &dyn RecordSink,
) {
    let config = ctx.config();
    let from = format!("sip:{}@{}", config.sip.caller_id, ua.local_addr);
    let mut rec = CallRecord::new_inbound(id, "", &from, &req.to, &req.to);
    rec.direction = super::record::CallDirection::Outbound;
    records.save(&rec);
    let finish = |rec: &mut CallRecord, o: &DialOutcome| {
        let (code, reason) = match o {
            DialOutcome::Busy { code } => (*code, "busy".to_owned()),
            DialOutcome::NoAnswer { code } => (*code, "no answer".to_owned()),
            DialOutcome::Rejected { code } => (*code, "rejected".to_owned()),
            DialOutcome::Failed { code, reason } => (code.unwrap_or(0), reason.clone()),
            DialOutcome::Answered => (200, String::new()),
        };
        rec.dial_outcome = Some(o.clone());
        rec.end(EndReason::Rejected { code, reason }, None);
    };
    let Some(sockets) = ports.allocate().await else {
        let o = DialOutcome::Failed {
            code: None,
            reason: "no free RTP port pair".into(),
        };
        finish(&mut rec, &o);
        records.save(&rec);
        let _ = outcome.send((rec.id.clone(), o));
        return;
    };
    let peer = req
        .to
        .rsplit('@')
        .next()
        .and_then(|h| h.trim_start_matches("sip:").split(';').next())
        .and_then(|h| h.parse::<SocketAddr>().ok())
        .unwrap_or(ua.local_addr);
    let local = LocalMedia {
        address: local_media_ip(&config, peer),
        rtp_port: sockets.rtp_port(),
        session_id: u64::from(rand_u32()),
        session_version: 1,
    };
    let preferences = crate::telephony::codec::preferences(&config.sip);
    let offer = sdp::offer(&preferences, &local);
    let (result, answered) = ua
        .place_call(crate::telephony::sip::user_agent::OutboundRequest {
            to: req.to.clone(),
            caller_id: config.sip.caller_id.clone(),
            display_name: None,
            assert_identity: config.sip.assert_identity,
            offer,
            ring_timeout: req.ring_timeout,
            cancel: req.cancel.clone(),
        })
        .await;
    tracing::info!(outcome = ?result, "outbound call");
    let Some(mut call) = answered else {
        finish(&mut rec, &result);
        records.save(&rec);
        let _ = outcome.send((rec.id.clone(), result));
        return;
    };
    let negotiated = match sdp::read_answer(&call.answer_sdp, &preferences) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("answer SDP unusable: {e}");
            let _ = call.commands.send(CallCommand::Hangup).await;
            let o = DialOutcome::Failed {
                code: Some(200),
                reason: e.to_string(),
            };
            finish(&mut rec, &o);
            records.save(&rec);
            let _ = outcome.send((rec.id.clone(), o));
            return;
        }
    };
    rec.dial_outcome = Some(DialOutcome::Answered);
    rec.codec = Some(negotiated.codec);
    rec.answer_at_ms = Some(crate::store::now_ms());
    records.save(&rec);
    let _ = outcome.send((rec.id.clone(), DialOutcome::Answered));
    run_answered(
        &ctx,
        &config,
        negotiated,
        sockets,
        rec,
        (&mut call.signals, call.commands),
        req.bridge,
        None,
        records,
    )
    .await;
}

/// Refuses an inbound call before answering, and records why.
async fn refuse(
    records: &dyn RecordSink,
    commands: &mpsc::Sender<CallCommand>,
    rec: &mut CallRecord,
    code: u16,
    reason: String,
) {
    let _ = commands
        .send(CallCommand::Reject {
            code,
            reason: reason.clone(),
        })
        .await;
    rec.end(EndReason::Rejected { code, reason }, Some(Party::Appliance));
    records.save(rec);
}

/// A voice agent call's share of the engines, or why there is none (the caller gets 503).
fn admit_agent(ctx: &Arc<dyn CallHost>) -> Result<AgentCall, String> {
    match ctx.speech() {
        None => Err("the voice agent is still loading its models".to_owned()),
        Some(Err(e)) => Err(format!("the voice agent is unavailable: {e}")),
        Some(Ok(engines)) => engines
            .open_call()
            .map(|speech| (engines.spec.clone(), speech)),
    }
}

/// A call's agent: the configuration its engines were loaded for, and its share of them.
type AgentCall = (AgentSpec, CallSpeech);

/// Saves one call's record off the call's own loop, so a slow disk (an fsync can take seconds
/// on a busy one) never holds up answering, the media clock or signalling. Snapshots are
/// written in order by a task of their own; of those waiting only the newest is written (each
/// is the whole record). [`RecordWriter::finish`] waits for the last one.
struct RecordWriter {
    tx: mpsc::UnboundedSender<CallRecord>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordWriter {
    fn start(ctx: &Arc<dyn CallHost>) -> RecordWriter {
        let (tx, mut rx) = mpsc::unbounded_channel::<CallRecord>();
        let ctx = ctx.clone();
        let task = tokio::spawn(
            async move {
                while let Some(mut rec) = rx.recv().await {
                    while let Ok(newer) = rx.try_recv() {
                        rec = newer;
                    }
                    save_now(&ctx, &rec).await;
                }
            }
            .in_current_span(),
        );
        RecordWriter { tx, task }
    }

    fn save(&self, rec: &CallRecord) {
        // The task ends only after `finish` drops the sender: this cannot fail before then.
        let _ = self.tx.send(rec.clone());
    }

    /// Waits until every snapshot handed over is written (and an ended record queued
    /// upstream).
    async fn finish(self) {
        drop(self.tx);
        if let Err(e) = self.task.await {
            tracing::error!("call record writer failed: {e}");
        }
    }
}

async fn save_now(ctx: &Arc<dyn CallHost>, rec: &CallRecord) {
    // Counted before the store write, so whoever sees the ended record sees it counted.
    if rec.end_reason.is_some() {
        ctx.observe_call(rec);
        crate::fault::crash_point("before_ended_call_saved");
    }
    let (owner, saved) = (ctx.clone(), rec.clone());
    let upstream = super::upstream_of(ctx);
    // The store fsyncs: keep it off the runtime's workers. An ended record is saved with what
    // it owes upstream, as one write.
    let result =
        tokio::task::spawn_blocking(move || record::save_owing(owner.store(), &saved, upstream))
            .await;
    let failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(format!("the write task failed: {e}")),
    };
    if let Some(e) = failure {
        if rec.end_reason.is_none() {
            tracing::error!("call record not saved: {e}");
        } else {
            // Written (and sent upstream) once the store takes writes again.
            let waiting = super::hold_unsaved_record(ctx, rec.clone());
            tracing::error!(
                "call record not saved, kept in memory until the store takes writes ({waiting} waiting): {e}"
            );
        }
        return;
    }
    if rec.end_reason.is_none() {
        return;
    }
    // A finished record goes upstream (it is owed durably; the uplink delivers it when it can).
    crate::fault::crash_point("ended_call_saved");
    super::queue_owed_upstream(ctx).await;
}

/// The address to put in SDP: the configured public one, the listen IP, or the local
/// address the kernel would use to reach the caller.
fn local_media_ip(config: &Config, peer: SocketAddr) -> IpAddr {
    if let Some(ip) = config.sip.public_ip() {
        return ip;
    }
    if let Some(listen) = config.sip.listen_addr() {
        if !listen.ip().is_unspecified() {
            return listen.ip();
        }
    }
    // connect() on UDP sends nothing; it only asks the routing table.
    std::net::UdpSocket::bind(SocketAddr::new(
        if peer.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        },
        0,
    ))
    .and_then(|s| {
        s.connect(peer)?;
        s.local_addr()
    })
    .map(|a| a.ip())
    .unwrap_or_else(|_| sdp::advertisable(peer.ip()))
}

fn rand_u32() -> u32 {
    // Good enough for SSRCs, sequence starts and SDP session ids: unpredictable per call.
    let mut buf = [0u8; 4];
    if getrandom_fill(&mut buf).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return t ^ std::process::id();
    }
    u32::from_le_bytes(buf)
}

fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// The built-in commissioning prompt: three rising tones.
fn builtin_prompt() -> (Vec<i16>, u32) {
    let rate = 8000u32;
    let mut pcm = Vec::new();
    for freq in [440.0f32, 660.0, 880.0] {
        for n in 0..(rate * 3 / 10) {
            let t = n as f32 / rate as f32;
            pcm.push((f32::sin(2.0 * std::f32::consts::PI * freq * t) * 8000.0) as i16);
        }
        pcm.extend(std::iter::repeat_n(0i16, (rate / 5) as usize));
    }
    (pcm, rate)
}

/// Reads a WAV prompt as mono PCM.
fn load_prompt(path: &std::path::Path) -> Result<(Vec<i16>, u32), String> {
    let mut reader =
        hound::WavReader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        return Err(format!(
            "{}: only 16-bit PCM WAV is supported",
            path.display()
        ));
    }
    let channels = spec.channels.max(1) as usize;
    let samples: Vec<i16> = reader
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mono = samples
        .chunks(channels)
        .map(|c| (c.iter().map(|s| i32::from(*s)).sum::<i32>() / channels as i32) as i16)
        .collect();
    Ok((mono, spec.sample_rate))
}

/// The shell of an answered call: its sockets, the sans-I/O media session, the call core
/// ([`CallCore`]) and the agent's shell. Its loop only moves packets, signals and results
/// between them and carries out what the cores ask.
struct MediaRun {
    session: MediaSession,
    sockets: RtpSockets,
    core: CallCore,
    recorder: Option<(Recorder, PathBuf)>,
    /// Digits an operator asked to send, played one after another.
    dtmf_queue: std::collections::VecDeque<char>,
    /// When bridged to another leg: audio goes there instead of media test mode.
    bridge: Option<Bridge>,
    /// The operator waiting for the transfer's outcome.
    transfer_reply: Option<tokio::sync::oneshot::Sender<Result<String, String>>>,
    /// The transfer's bridge leg while it rings.
    bridge_dial: Option<BridgeDial>,
    /// The caller hears ringback (the bridge rings).
    ringback: bool,
    /// The voice agent (else media test mode).
    agent: Option<AgentRun>,
    /// Recorded frames since the disk's room was last checked.
    frames_since_room_check: u32,
    /// How the call ended, once the core says so.
    ending: Option<Ending>,
}

/// A recording checks the disk's room every this many 20 ms frames (5 s).
const RECORDING_ROOM_CHECK_FRAMES: u32 = 250;

impl MediaRun {
    fn new(
        config: &Config,
        negotiated: Negotiated,
        sockets: RtpSockets,
        recording: Option<PathBuf>,
        agent: Option<AgentCall>,
        bridge: Option<Bridge>,
    ) -> Result<Self, String> {
        let now = Instant::now();
        let mut media_config = MediaConfig::new(
            negotiated,
            (u64::from(rand_u32()) << 32) | u64::from(rand_u32()),
        );
        media_config.media_timeout = match config.sip.media_timeout_secs {
            0 => None,
            s => Some(Duration::from_secs(u64::from(s))),
        };
        media_config.wallclock_at_start = std::time::SystemTime::now();
        media_config.record = recording.is_some();
        let mut session = MediaSession::new(media_config, now).map_err(|e| e.to_string())?;
        let agent = agent.map(|(spec, speech)| AgentRun::new(config, spec, speech));
        let handler = if bridge.is_some() {
            Handler::Bridge
        } else if agent.is_some() {
            Handler::Agent
        } else {
            Handler::MediaTest(config.media_test.after_prompt)
        };
        if handler == Handler::MediaTest(config.media_test.after_prompt) {
            let (pcm, rate) = if config.media_test.prompt.as_os_str().is_empty() {
                builtin_prompt()
            } else {
                load_prompt(&config.media_test.prompt).unwrap_or_else(|e| {
                    tracing::warn!("prompt not playable, using the built-in tones: {e}");
                    builtin_prompt()
                })
            };
            if let Err(e) = session.queue_audio(&pcm, rate) {
                tracing::warn!("prompt not queued: {e}");
            }
        }
        let recorder = recording.and_then(|path| {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match Recorder::create(&path, negotiated.codec.sample_rate()) {
                Ok(r) => Some((r, path)),
                Err(e) => {
                    tracing::warn!("recording disabled for this call: {e}");
                    None
                }
            }
        });
        let max_duration = match config.call.max_duration_secs {
            0 => None,
            s => Some(Duration::from_secs(u64::from(s))),
        };
        let ring = Duration::from_secs(u64::from(config.call.transfer_ring_secs));
        Ok(Self {
            session,
            sockets,
            core: CallCore::new(now, handler, max_duration, ring),
            recorder,
            dtmf_queue: std::collections::VecDeque::new(),
            bridge,
            transfer_reply: None,
            bridge_dial: None,
            ringback: false,
            agent,
            frames_since_room_check: 0,
            ending: None,
        })
    }

    async fn run(
        &mut self,
        ctx: &Arc<dyn CallHost>,
        config: &Config,
        signals: &mut mpsc::Receiver<CallSignal>,
        commands: &mpsc::Sender<CallCommand>,
        control: &mut mpsc::Receiver<CallControl>,
        // The call's record and where its snapshots go.
        (rec, records): (&mut CallRecord, &dyn RecordSink),
    ) -> Ending {
        let mut shutdown = ctx.call_shutdown();
        let mut last_saved = (
            rec.dtmf_received.len(),
            rec.dtmf_sent.len(),
            rec.transfer.clone(),
        );
        let mut rtp_buf = vec![0u8; 2048];
        let mut rtcp_buf = vec![0u8; 2048];
        loop {
            self.feed_dtmf();
            self.feed_ringback();
            self.flush_transmits().await;
            self.drain_events(ctx, rec);
            self.apply_core(ctx, commands, rec).await;
            if let Some(ending) = self.ending.take() {
                return ending;
            }
            if self.agent.as_ref().is_some_and(|a| a.dirty) {
                if let Some(a) = self.agent.as_mut() {
                    a.dirty = false;
                }
                records.save(rec);
            }
            // Operators see a live call through the store: keep what changed there.
            let now_seen = (
                rec.dtmf_received.len(),
                rec.dtmf_sent.len(),
                rec.transfer.clone(),
            );
            if now_seen != last_saved {
                records.save(rec);
                last_saved = now_seen;
            }
            // One timer for the media engine, the turn engine and the call core; without a
            // timer the media engine is closed: wake at least once a second anyway.
            let wake = [
                self.session.poll_timeout(),
                self.agent.as_ref().and_then(AgentRun::poll_timeout),
                self.core.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                event = async {
                    match self.agent.as_mut() {
                        Some(a) => a.next_event().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let (Some(event), Some(agent)) = (event, self.agent.as_mut()) {
                        if let Some(d) = agent.handle_event(event, &mut self.session, rec) {
                            self.core.handle_event(Instant::now(), CallEvent::Directive(d));
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => self.handle_timeouts(rec),
                dialled = async {
                    match self.bridge_dial.as_mut().and_then(|d| d.outcome.as_mut()) {
                        Some(rx) => rx.await.ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    // Received: never poll that receiver again.
                    if let Some(d) = self.bridge_dial.as_mut() {
                        d.outcome = None;
                    }
                    let outcome = match dialled {
                        Some((_, outcome)) => outcome,
                        None => DialOutcome::Failed { code: None, reason: "the bridge leg ended without an outcome".into() },
                    };
                    let answered = outcome == DialOutcome::Answered;
                    self.core.handle_event(Instant::now(), CallEvent::Transfer(TransferEvent::Dialled(outcome)));
                    // Answered: `Connect` takes our end of the bridge; else the leg is gone.
                    if !answered {
                        self.bridge_dial = None;
                    }
                }
                r = self.sockets.rtp.recv_from(&mut rtp_buf) => {
                    if let Ok((n, from)) = r {
                        self.session.handle_rtp(Instant::now(), from, &rtp_buf[..n]);
                    }
                }
                r = self.sockets.rtcp.recv_from(&mut rtcp_buf) => {
                    if let Ok((n, from)) = r {
                        self.session.handle_rtcp(Instant::now(), from, &rtcp_buf[..n]);
                    }
                }
                signal = signals.recv() => self.on_signal(config, commands, rec, signal).await,
                chunk = async {
                    match self.bridge.as_mut() {
                        Some(b) => b.from_peer.recv().await,
                        None => std::future::pending().await,
                    }
                } => match chunk {
                    Some((pcm, rate)) => {
                        if let Err(e) = self.session.queue_audio(&pcm, rate) {
                            tracing::debug!("bridged audio dropped: {e}");
                        }
                    }
                    None => {
                        self.bridge = None;
                        self.core.handle_event(Instant::now(), CallEvent::BridgeLegEnded);
                    }
                },
                msg = control.recv() => match msg {
                    Some(CallControl::Hangup) => self.core.handle_event(Instant::now(), CallEvent::OperatorHangup),
                    Some(CallControl::SendDtmf { digits }) => {
                        self.dtmf_queue.extend(digits.chars());
                        rec.dtmf_sent.push_str(&digits);
                    }
                    Some(CallControl::Transfer { target, reply }) => {
                        match self.core.transfer_for_operator(target) {
                            Ok(()) => self.transfer_reply = Some(reply),
                            Err(refused) => {
                                let _ = reply.send(Err(refused.to_string()));
                            }
                        }
                    }
                    None => {}
                },
                _ = shutdown.changed() => self.core.handle_event(Instant::now(), CallEvent::Shutdown),
            }
        }
    }

    /// Every engine whose deadline passed.
    fn handle_timeouts(&mut self, rec: &mut CallRecord) {
        let now = Instant::now();
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
        }
        if let Some(agent) = self.agent.as_mut() {
            if agent.poll_timeout().is_some_and(|t| t <= now) {
                if let Some(d) = agent.handle_timeout(&mut self.session, rec) {
                    self.core.handle_event(now, CallEvent::Directive(d));
                }
            }
        }
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
    }

    async fn on_signal(
        &mut self,
        config: &Config,
        commands: &mpsc::Sender<CallCommand>,
        rec: &mut CallRecord,
        signal: Option<CallSignal>,
    ) {
        let now = Instant::now();
        let event = match signal {
            Some(CallSignal::Confirmed | CallSignal::AckAnswer { .. }) => {
                tracing::debug!("ACK received");
                return;
            }
            Some(CallSignal::RemoteHangup) => CallEvent::CallerHungUp,
            Some(CallSignal::Cancelled) => CallEvent::Cancelled,
            Some(CallSignal::Terminated(why)) => CallEvent::Terminated(why),
            Some(CallSignal::InfoDtmf { digit, .. }) => {
                tracing::info!(%digit, "DTMF (SIP INFO)");
                self.on_caller_digit(digit, rec);
                return;
            }
            Some(CallSignal::Reoffer { sdp: offer }) => {
                self.reoffer(config, &offer, commands).await;
                return;
            }
            Some(CallSignal::TransferAnswered { code }) => {
                CallEvent::Transfer(TransferEvent::ReferAnswered { code })
            }
            Some(CallSignal::TransferProgress { code, done }) => {
                CallEvent::Transfer(TransferEvent::ReferProgress { code, done })
            }
            None => CallEvent::Terminated("signalling gone".into()),
        };
        self.core.handle_event(now, event);
    }

    fn on_caller_digit(&mut self, digit: char, rec: &mut CallRecord) {
        rec.dtmf_received.push(digit);
        if let Some(agent) = self.agent.as_mut() {
            if let Some(d) = agent.on_dtmf(digit, &mut self.session, rec) {
                self.core
                    .handle_event(Instant::now(), CallEvent::Directive(d));
            }
        }
    }

    /// Carries out what the call core asks; the first ending it names is the call's.
    async fn apply_core(
        &mut self,
        ctx: &Arc<dyn CallHost>,
        commands: &mpsc::Sender<CallCommand>,
        rec: &mut CallRecord,
    ) {
        while let Some(output) = self.core.poll_output() {
            match output {
                CallOutput::Refer { target } => {
                    let _ = commands.send(CallCommand::Transfer { target }).await;
                }
                CallOutput::Dial {
                    target,
                    ring_timeout,
                } => {
                    if let Err(e) = self.dial_bridge(ctx, &target, ring_timeout) {
                        tracing::warn!(%target, "bridge not started: {e}");
                        let failed = DialOutcome::Failed {
                            code: None,
                            reason: format!("not started: {e}"),
                        };
                        self.core.handle_event(
                            Instant::now(),
                            CallEvent::Transfer(TransferEvent::Dialled(failed)),
                        );
                    }
                }
                CallOutput::Ringback(on) => {
                    self.session.flush_outgoing();
                    self.ringback = on;
                }
                CallOutput::Connect => {
                    if let Some(dial) = self.bridge_dial.take() {
                        let _ = dial.cancel.disarm();
                        self.bridge = Some(dial.ours);
                    }
                }
                CallOutput::CancelDial => {
                    // Dropping the guard cancels the leg's INVITE at once.
                    if self.bridge_dial.take().is_some() {
                        tracing::info!("bridge leg cancelled");
                    }
                }
                CallOutput::AgentPlayoutDrained => {
                    if let Some(agent) = self.agent.as_mut() {
                        if let Some(d) = agent.on_playout_drained(&mut self.session, rec) {
                            self.core
                                .handle_event(Instant::now(), CallEvent::Directive(d));
                        }
                    }
                }
                CallOutput::AgentTransferFailed(error) => {
                    if let Some(agent) = self.agent.as_mut() {
                        if let Some(d) = agent.on_transfer_failed(error, &mut self.session, rec) {
                            self.core
                                .handle_event(Instant::now(), CallEvent::Directive(d));
                        }
                    }
                }
                CallOutput::OperatorTransferSettled(result) => {
                    if let Some(reply) = self.transfer_reply.take() {
                        let _ = reply.send(result);
                    }
                }
                CallOutput::TransferRecord(record) => rec.transfer = Some(record),
                CallOutput::End(ending) => {
                    self.ending.get_or_insert(ending);
                }
            }
        }
    }

    /// Calls the transfer's target on a leg of its own, bridged to this call once answered.
    /// That leg keeps no call record: it is this call's (`transfer.bridge`).
    fn dial_bridge(
        &mut self,
        ctx: &Arc<dyn CallHost>,
        target: &str,
        ring_timeout: Duration,
    ) -> Result<(), String> {
        let tel = ctx.telephony().ok_or("telephony is not running")?;
        let (ours, theirs) = bridge_pair();
        let (otx, orx) = tokio::sync::oneshot::channel();
        let cancel = CancellationToken::new();
        let req = DialRequest {
            to: target.to_owned(),
            ring_timeout,
            bridge: Some(theirs),
            cancel: Some(cancel.clone()),
        };
        tel.dial(ctx, req, otx)?;
        self.bridge_dial = Some(BridgeDial {
            outcome: Some(orx),
            ours,
            cancel: cancel.drop_guard(),
        });
        Ok(())
    }

    /// The call is over: a transfer still under way is cancelled (and a ringing bridge leg
    /// with it), a bridged leg is released, and the record keeps how it ended.
    async fn end_transfer(
        &mut self,
        ctx: &Arc<dyn CallHost>,
        commands: &mpsc::Sender<CallCommand>,
        rec: &mut CallRecord,
    ) {
        self.core.finish(Instant::now());
        self.apply_core(ctx, commands, rec).await;
        self.bridge_dial = None;
        self.bridge = None;
    }

    /// While a bridge rings, the caller hears ringback: a cycle is queued whenever the last is
    /// nearly played.
    fn feed_ringback(&mut self) {
        if self.ringback && self.session.queued_ms() < 200 {
            if let Err(e) = self.session.queue_audio(&ringback_cycle(8000), 8000) {
                tracing::debug!("ringback not queued: {e}");
                self.ringback = false;
            }
        }
    }

    async fn reoffer(
        &mut self,
        config: &Config,
        offer: &str,
        commands: &mpsc::Sender<CallCommand>,
    ) {
        let local = LocalMedia {
            address: local_media_ip(config, self.session.rtp_destination()),
            rtp_port: self.sockets.rtp_port(),
            session_id: 1,
            session_version: 2,
        };
        match sdp::answer(
            offer,
            &crate::telephony::codec::preferences(&config.sip),
            &local,
        ) {
            Ok(a) => {
                tracing::info!(direction = ?a.negotiated.direction, codec = %a.negotiated.codec, "re-INVITE applied");
                match self.session.update_negotiated(Instant::now(), a.negotiated) {
                    Ok(()) => {
                        let _ = commands
                            .send(CallCommand::AnswerUpdate {
                                code: 200,
                                sdp: Some(a.sdp),
                            })
                            .await;
                    }
                    Err(e) => {
                        tracing::info!("re-INVITE refused by the media engine: {e}");
                        let _ = commands
                            .send(CallCommand::AnswerUpdate {
                                code: 488,
                                sdp: None,
                            })
                            .await;
                    }
                }
            }
            Err(e) => {
                tracing::info!("re-INVITE refused: {e}");
                let _ = commands
                    .send(CallCommand::AnswerUpdate {
                        code: 488,
                        sdp: None,
                    })
                    .await;
            }
        }
    }

    async fn flush_transmits(&mut self) {
        while let Some(t) = self.session.poll_transmit() {
            let socket = match t.kind {
                TransmitKind::Rtp => &self.sockets.rtp,
                TransmitKind::Rtcp => &self.sockets.rtcp,
            };
            if let Err(e) = socket.send_to(&t.data, t.dest).await {
                tracing::debug!(dest = %t.dest, "RTP send failed: {e}");
            }
        }
    }

    /// Hands queued operator digits to the engine as it has room for them.
    fn feed_dtmf(&mut self) {
        while let Some(d) = self.dtmf_queue.front().copied() {
            match self.session.send_dtmf(d, 120) {
                Ok(()) => {
                    self.dtmf_queue.pop_front();
                }
                Err(crate::telephony::media::MediaError::DtmfQueueFull(_)) => break,
                Err(e) => {
                    tracing::warn!("DTMF {d} not sent: {e}");
                    self.dtmf_queue.pop_front();
                }
            }
        }
    }

    fn drain_events(&mut self, ctx: &Arc<dyn CallHost>, rec: &mut CallRecord) {
        while let Some(event) = self.session.poll_event() {
            match event {
                MediaEvent::AudioFrame {
                    pcm, sample_rate, ..
                } => {
                    if let Some(b) = &self.bridge {
                        // A full queue means the other leg stalls: drop, never block this call.
                        let _ = b.to_peer.try_send((pcm, sample_rate));
                    } else if let Some(agent) = self.agent.as_mut() {
                        if let Some(d) =
                            agent.on_caller_audio(&pcm, sample_rate, &mut self.session, rec)
                        {
                            self.core
                                .handle_event(Instant::now(), CallEvent::Directive(d));
                        }
                    } else if self.core.echoing() {
                        if let Err(e) = self.session.queue_audio(&pcm, sample_rate) {
                            tracing::debug!("echo frame dropped: {e}");
                        }
                    }
                }
                MediaEvent::RecordFrame { .. } => {
                    if let Some((r, _)) = &mut self.recorder {
                        if let Err(e) = r.handle_event(&event) {
                            tracing::warn!("recording stopped: {e}");
                            self.recorder = None;
                        }
                    }
                    self.frames_since_room_check += 1;
                    if self.recorder.is_some()
                        && self.frames_since_room_check >= RECORDING_ROOM_CHECK_FRAMES
                    {
                        self.frames_since_room_check = 0;
                        if let Err(e) = ctx.store().check_room() {
                            // Keep what was recorded: a complete file, ending here.
                            tracing::warn!("recording stopped: {e}");
                            if let Some(path) = self.finish_recording() {
                                rec.recording = Some(path);
                            }
                        }
                    }
                }
                MediaEvent::PlayoutDrained => {
                    // A bridged call's queue holds the other leg's audio: not a prompt's end.
                    if self.bridge.is_none() {
                        self.core
                            .handle_event(Instant::now(), CallEvent::PlayoutDrained);
                    }
                }
                MediaEvent::Dtmf { digit, duration_ms } => {
                    tracing::info!(%digit, duration_ms, "DTMF (RFC 4733)");
                    self.on_caller_digit(digit, rec);
                }
                MediaEvent::MediaTimeout => {
                    self.core
                        .handle_event(Instant::now(), CallEvent::MediaTimeout);
                }
                other => tracing::debug!(event = ?other, "media event"),
            }
        }
    }

    /// Ends the stream (RTCP BYE) and sends what is left.
    async fn close(&mut self) {
        self.session.close(Instant::now());
        self.flush_transmits().await;
    }

    fn summary(&self) -> RtpSummary {
        let s = self.session.stats();
        RtpSummary {
            packets_sent: s.packets_sent,
            packets_received: s.packets_received,
            packets_lost: s.packets_lost,
            jitter_ms: s.jitter_ms,
            max_jitter_ms: s.max_jitter_ms,
            malformed: s.malformed_packets,
            late_or_duplicate: s.late_packets + s.duplicate_packets,
        }
    }

    fn finish_recording(&mut self) -> Option<PathBuf> {
        let (recorder, path) = self.recorder.take()?;
        match recorder.finish() {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!("recording not finished: {e}");
                None
            }
        }
    }
}
