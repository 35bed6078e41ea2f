//! One call as a task: negotiate SDP, answer, run media with the voice agent (`call::agent`) or
//! media test mode, keep the call record, end cleanly whoever hangs up.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::agent::AgentRun;
use super::media::{rand_u32, Bridge, MediaRun};
use super::record::{self, CallRecord, EndReason, Party};
use super::work::WorkGuard;
use super::CallHost;
use crate::agent::engines::AgentEngines;
use crate::config::{CallHandler, Config};
use crate::speech::service::CallSpeech;
use crate::telephony::codec::Negotiated;
use crate::telephony::rtp_ports::{RtpPorts, RtpSockets};
use crate::telephony::sdp::{self, LocalMedia, SdpError};
use crate::telephony::sip::{CallCommand, CallSignal, DialOutcome, InboundCall};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Where a call's record snapshots go: the store (through the call's [`RecordWriter`]), or
/// nowhere for a transfer's bridge leg, which lives in the caller's record.
pub(super) trait RecordSink: Sync {
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
    media.with_agent(&mut rec, AgentRun::start);
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
            .map(|speech| (Arc::clone(&engines), speech)),
    }
}

/// A call's agent: the engines it started with (held for the call's life: a model swap counts
/// the calls still on the old ones), and its share of them.
pub(super) type AgentCall = (Arc<AgentEngines>, CallSpeech);

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
pub(super) fn local_media_ip(config: &Config, peer: SocketAddr) -> IpAddr {
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
