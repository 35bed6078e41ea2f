//! An answered call's shell: its RTP sockets, the sans-I/O media session, the call core
//! ([`CallCore`]) and the agent's shell ([`AgentRun`]). One select loop moves packets, signals
//! and results between them and carries out what the cores ask; how the call was answered
//! (inbound, outbound, a bridge leg) is `session`'s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::agent::AgentRun;
use super::core::{CallCore, CallEvent, CallOutput, Ending, Handler};
use super::record::{CallRecord, RtpSummary};
use super::session::{local_media_ip, AgentCall, DialRequest, RecordSink};
use super::transfer::{ringback_cycle, TransferEvent};
use super::{CallControl, CallHost};
use crate::agent::turns::Directive;
use crate::config::Config;
use crate::telephony::codec::Negotiated;
use crate::telephony::media::{MediaConfig, MediaEvent, MediaSession, Recorder, TransmitKind};
use crate::telephony::rtp_ports::RtpSockets;
use crate::telephony::sdp::{self, LocalMedia};
use crate::telephony::sip::{CallCommand, CallSignal, DialOutcome};

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

/// The shell of an answered call: its sockets, the sans-I/O media session, the call core
/// ([`CallCore`]) and the agent's shell. Its loop only moves packets, signals and results
/// between them and carries out what the cores ask.
pub(super) struct MediaRun {
    pub(super) session: MediaSession,
    sockets: RtpSockets,
    pub(super) core: CallCore,
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
    pub(super) agent: Option<AgentRun>,
    /// Recorded frames since the disk's room was last checked.
    frames_since_room_check: u32,
    /// How the call ended, once the core says so.
    ending: Option<Ending>,
}

/// A recording checks the disk's room every this many 20 ms frames (5 s).
const RECORDING_ROOM_CHECK_FRAMES: u32 = 250;

impl MediaRun {
    pub(super) fn new(
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
        let agent = agent.map(|(engines, speech)| AgentRun::new(config, engines, speech));
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

    pub(super) async fn run(
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
                    if let Some(event) = event {
                        self.with_agent(rec, |a, session, rec| a.handle_event(event, session, rec));
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
        if self
            .agent
            .as_ref()
            .and_then(AgentRun::poll_timeout)
            .is_some_and(|t| t <= now)
        {
            self.with_agent(rec, AgentRun::handle_timeout);
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
        self.with_agent(rec, |a, session, rec| a.on_dtmf(digit, session, rec));
    }

    /// Hands something to the agent, if the call has one; what the agent then asks of the
    /// call (transfer, hang up) goes to the call core.
    pub(super) fn with_agent(
        &mut self,
        rec: &mut CallRecord,
        f: impl FnOnce(&mut AgentRun, &mut MediaSession, &mut CallRecord) -> Option<Directive>,
    ) {
        if let Some(directive) = self
            .agent
            .as_mut()
            .and_then(|agent| f(agent, &mut self.session, rec))
        {
            self.core
                .handle_event(Instant::now(), CallEvent::Directive(directive));
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
                    self.with_agent(rec, AgentRun::on_playout_drained);
                }
                CallOutput::AgentTransferFailed(error) => {
                    self.with_agent(rec, |a, session, rec| {
                        a.on_transfer_failed(error, session, rec)
                    });
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
    pub(super) async fn end_transfer(
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
                    } else if self.agent.is_some() {
                        self.with_agent(rec, |a, session, rec| {
                            a.on_caller_audio(&pcm, sample_rate, session, rec)
                        });
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
    pub(super) async fn close(&mut self) {
        self.session.close(Instant::now());
        self.flush_transmits().await;
    }

    pub(super) fn summary(&self) -> RtpSummary {
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

    pub(super) fn finish_recording(&mut self) -> Option<PathBuf> {
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

pub(super) fn rand_u32() -> u32 {
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
