//! `MediaSession`: one call's RTP/RTCP state machine.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::codec_impl::AudioEncoder;
use super::dtmf::{digit_to_event, Detected, DtmfReceiver, DtmfSender};
use super::jitter::{JitterBuffer, JitterEstimator, TS_PER_MS};
use super::latch::{Latch, Source, Verdict};
use super::outgoing::Outgoing;
use super::rtcp::{self, RtcpPacket, SenderInfo};
use super::rtp;
use super::stats::{MediaStats, ReceiveStats, SeqVerdict};
use super::{splitmix64, MediaConfig, MediaError, MediaEvent, Transmit, TransmitKind};
use crate::telephony::codec::Negotiated;

/// A held candidate packet: its arrival time and the datagram.
type Held = (Instant, Vec<u8>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum PayloadKind {
    Audio,
    Dtmf,
}

/// One call's media. See the module documentation for how a shell drives it.
pub struct MediaSession {
    cfg: MediaConfig,
    neg: Negotiated,
    start: Instant,
    closed: bool,

    // Send clock: tick `index` is due at `clock_base + index·ptime` and carries RTP timestamp
    // `ts_base + index·ptime·8` (rebased, never reset, when ptime changes).
    clock_base: Instant,
    clock_index: u64,
    ts_base: u32,
    seq: u16,
    encoder: AudioEncoder,
    outgoing: Outgoing,
    talking: bool,
    /// Agent audio held back (see `hold_outgoing`).
    hold_outgoing: bool,
    marker_next: bool,
    dtmf_tx: DtmfSender,
    sent_since_report: bool,
    payload_octets_sent: u64,

    // Receive side.
    latch: Latch<Held>,
    remote: Option<Source>,
    rtcp_dest: SocketAddr,
    jb: JitterBuffer,
    recv: ReceiveStats,
    /// Loss bookkeeping of earlier remote SSRCs, so call totals survive an SSRC change.
    expected_before: u64,
    lost_before: u64,
    rtp_jitter: JitterEstimator,
    dtmf_rx: DtmfReceiver,
    last_sr: Option<(u32, Instant)>,
    last_media_at: Instant,
    timeout_fired: bool,

    rtcp_next: Instant,
    rng: u64,

    transmits: VecDeque<Transmit>,
    events: VecDeque<MediaEvent>,
    stats: MediaStats,
    detected: Vec<Detected>,
}

impl MediaSession {
    /// Ticks the shell may be behind before the missed ones are skipped instead of sent in a
    /// burst (200 ms at 20 ms).
    const MAX_CATCH_UP_TICKS: u64 = 10;
    /// Pause (sent as audio) between two DTMF digits we send.
    const DTMF_GAP_MS: u32 = 60;

    /// Starts the media clock at `now`: the first packet is due immediately.
    pub fn new(cfg: MediaConfig, now: Instant) -> Result<Self, MediaError> {
        let neg = cfg.negotiated;
        validate_ptime(neg.ptime_ms)?;
        if !(10..=1000).contains(&cfg.jitter_min_ms)
            || !(cfg.jitter_min_ms..=1000).contains(&cfg.jitter_max_ms)
        {
            return Err(MediaError::InvalidJitterBounds {
                min_ms: cfg.jitter_min_ms,
                max_ms: cfg.jitter_max_ms,
            });
        }
        let mut rng = u64::from(cfg.ssrc) ^ 0x5eed_f00d_u64;
        let first_report = jittered(cfg.rtcp_interval, &mut rng);
        Ok(MediaSession {
            neg,
            start: now,
            closed: false,
            clock_base: now,
            clock_index: 0,
            ts_base: cfg.initial_ts,
            seq: cfg.initial_seq,
            encoder: AudioEncoder::new(neg.codec),
            outgoing: Outgoing::new(neg.codec.sample_rate()),
            talking: false,
            hold_outgoing: false,
            marker_next: true,
            dtmf_tx: DtmfSender::default(),
            sent_since_report: false,
            payload_octets_sent: 0,
            latch: Latch::new(neg.remote_rtp),
            remote: None,
            rtcp_dest: neg.remote_rtcp,
            jb: JitterBuffer::new(
                neg.codec,
                neg.ptime_ms,
                cfg.jitter_min_ms,
                cfg.jitter_max_ms,
            ),
            recv: ReceiveStats::default(),
            expected_before: 0,
            lost_before: 0,
            rtp_jitter: JitterEstimator::default(),
            dtmf_rx: DtmfReceiver::default(),
            last_sr: None,
            last_media_at: now,
            timeout_fired: false,
            rtcp_next: now + first_report,
            rng,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: MediaStats::default(),
            detected: Vec::new(),
            cfg,
        })
    }

    // ---- getters ----

    pub fn negotiated(&self) -> &Negotiated {
        &self.neg
    }

    pub fn ssrc(&self) -> u32 {
        self.cfg.ssrc
    }

    /// The SSRC of the remote stream we play, once latched.
    pub fn remote_ssrc(&self) -> Option<u32> {
        self.remote.map(|s| s.ssrc)
    }

    /// Where our RTP goes now (SDP address until latched).
    pub fn rtp_destination(&self) -> SocketAddr {
        self.latch.dest()
    }

    pub fn rtcp_destination(&self) -> SocketAddr {
        self.rtcp_dest
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Milliseconds of agent audio queued and not yet sent.
    pub fn queued_ms(&self) -> u32 {
        let rate = u64::from(self.neg.codec.sample_rate());
        (self.outgoing.queued_samples() as u64 * 1000 / rate) as u32
    }

    /// The call's media statistics so far (for the call record; cheap, a copy).
    pub fn stats(&self) -> MediaStats {
        let mut s = self.stats.clone();
        s.packets_expected = self.expected_before + self.recv.expected();
        s.packets_lost = self.lost_before + self.recv.lost().max(0) as u64;
        s.jitter_ms = self.rtp_jitter.jitter() / TS_PER_MS as f64;
        let c = self.jb.counters;
        s.late_packets = c.late;
        s.duplicate_packets += c.duplicate;
        s.frames_played = c.played_frames;
        s.frames_concealed = c.concealed_frames;
        s.jitter_resyncs = c.resyncs;
        s.jitter_target_ms = self.jb.target_ms();
        s
    }

    // ---- output ----

    /// The next datagram to send, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the call, oldest first. Drain it every wake-up: audio frames come
    /// every ptime.
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must next be called; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let mut t = self.tick_due().min(self.rtcp_next);
        for d in [self.media_deadline(), self.dtmf_rx.deadline()]
            .into_iter()
            .flatten()
        {
            t = t.min(d);
        }
        Some(t)
    }

    // ---- input ----

    /// Runs everything due by `now`: one send/playout tick per ptime elapsed, RTCP, DTMF and
    /// media timeouts. Calling early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.run_ticks(now);
        if now >= self.rtcp_next {
            self.send_report(now, false);
            self.rtcp_next = now + jittered(self.cfg.rtcp_interval, &mut self.rng);
        }
        self.dtmf_rx.handle_timeout(now, &mut self.detected);
        self.emit_dtmf();
        if self.media_deadline().is_some_and(|d| now >= d) {
            self.timeout_fired = true;
            self.stats.media_timeouts += 1;
            self.events.push_back(MediaEvent::MediaTimeout);
        }
    }

    /// Takes a datagram from the RTP socket. Anything malformed, of an unnegotiated payload type
    /// or from a source other than the latched one is counted and dropped; nothing here panics.
    pub fn handle_rtp(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if self.closed {
            return;
        }
        if rtp::looks_like_rtcp(data) {
            // rtcp-mux peers (RFC 5761) send both on one port.
            self.handle_rtcp(now, from, data);
            return;
        }
        let Ok(pkt) = rtp::parse(data) else {
            self.stats.malformed_packets += 1;
            return;
        };
        let kind = if pkt.payload_type == self.neg.payload_type {
            PayloadKind::Audio
        } else if Some(pkt.payload_type) == self.neg.dtmf_payload_type {
            PayloadKind::Dtmf
        } else {
            self.stats.unknown_payload_type_packets += 1;
            return;
        };
        let plausible = match kind {
            PayloadKind::Audio => !pkt.payload.is_empty(),
            PayloadKind::Dtmf => pkt.payload.len() >= 4,
        };
        if !plausible {
            self.stats.malformed_packets += 1;
            return;
        }
        match self
            .latch
            .check(from, pkt.ssrc, pkt.seq, || (now, data.to_vec()))
        {
            Verdict::Accept => self.accept(now, data),
            Verdict::Hold => self.stats.foreign_packets += 1,
            Verdict::Switch { to, replay, .. } => {
                self.switch_source(to);
                self.stats.foreign_packets = self
                    .stats
                    .foreign_packets
                    .saturating_sub(replay.len() as u64);
                for (at, datagram) in replay {
                    self.accept(at, &datagram);
                }
                self.accept(now, data);
            }
        }
    }

    /// Takes a datagram from the RTCP socket (compound SR/RR/SDES/BYE); malformed ones are
    /// counted and dropped.
    pub fn handle_rtcp(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if self.closed {
            return;
        }
        let Ok(packets) = rtcp::parse_compound(data) else {
            self.stats.rtcp_malformed += 1;
            return;
        };
        self.stats.rtcp_received += 1;
        let remote = self.remote.map(|s| s.ssrc);
        for p in packets {
            match p {
                RtcpPacket::SenderReport {
                    ssrc,
                    info,
                    reports,
                } => {
                    if remote.is_none_or(|r| r == ssrc) {
                        self.last_sr = Some((rtcp::ntp_middle(info.ntp), now));
                    }
                    self.rtcp_from(remote, ssrc, from);
                    self.take_reports(now, &reports);
                }
                RtcpPacket::ReceiverReport { ssrc, reports } => {
                    self.rtcp_from(remote, ssrc, from);
                    self.take_reports(now, &reports);
                }
                RtcpPacket::Bye { ssrcs } => {
                    if remote.is_some_and(|r| ssrcs.contains(&r)) {
                        self.events.push_back(MediaEvent::RemoteBye);
                    }
                }
                RtcpPacket::Other { .. } => {}
            }
        }
    }

    // ---- commands ----

    /// Queues agent audio (mono PCM at `sample_rate`, 8-192 kHz), converted to the codec rate.
    /// Refused when closed, at an unsupported rate, or with over 5 minutes already queued.
    pub fn queue_audio(&mut self, pcm: &[i16], sample_rate: u32) -> Result<(), MediaError> {
        if self.closed {
            return Err(MediaError::Closed);
        }
        self.outgoing.queue(pcm, sample_rate)
    }

    /// Possible barge-in: while held, silence is sent and queued agent audio waits (the caller
    /// may only have coughed); lift the hold to go on, or [`Self::flush_outgoing`] to drop it.
    pub fn hold_outgoing(&mut self, hold: bool) {
        if self.hold_outgoing != hold {
            self.hold_outgoing = hold;
            // Whatever is said next is a new talk-spurt.
            self.talking = false;
        }
    }

    /// Barge-in: drops all queued agent audio; the next packet sent is silence.
    pub fn flush_outgoing(&mut self) {
        self.outgoing.flush();
        self.hold_outgoing = false;
        // Whatever is said next is a new talk-spurt.
        self.talking = false;
    }

    /// Queues an RFC 4733 digit. Audio is held back (not dropped) while it is sent.
    pub fn send_dtmf(&mut self, digit: char, duration_ms: u32) -> Result<(), MediaError> {
        let event = digit_to_event(digit).ok_or(MediaError::InvalidDtmfDigit(digit))?;
        if !(40..=8000).contains(&duration_ms) {
            return Err(MediaError::InvalidDtmfDuration(duration_ms));
        }
        if self.closed {
            return Err(MediaError::Closed);
        }
        if self.neg.dtmf_payload_type.is_none() {
            return Err(MediaError::DtmfNotNegotiated);
        }
        if !self.neg.direction.sends() {
            return Err(MediaError::DtmfNotSending(self.neg.direction));
        }
        if !self.dtmf_tx.enqueue(event, duration_ms * TS_PER_MS as u32) {
            return Err(MediaError::DtmfQueueFull(DtmfSender::MAX_QUEUED));
        }
        self.stats.dtmf_sent += 1;
        Ok(())
    }

    /// Applies a re-INVITE's result. Sequence numbers, timestamps and our SSRC continue; a new
    /// codec restarts the jitter buffer and converts queued audio; a new ptime takes effect on
    /// the next tick without a burst or gap; a new remote address unlatches; leaving hold
    /// re-arms the media timeout from `now`.
    pub fn update_negotiated(&mut self, now: Instant, n: Negotiated) -> Result<(), MediaError> {
        validate_ptime(n.ptime_ms)?;
        let old = self.neg;
        if n.codec != old.codec {
            self.outgoing.set_codec_rate(n.codec.sample_rate())?;
            self.encoder = AudioEncoder::new(n.codec);
            self.jb.reset(n.codec);
            self.marker_next = true;
        }
        if n.ptime_ms != old.ptime_ms {
            // Rebase: the next tick keeps its due time and timestamp; later ones use the new ptime.
            let next_due = self.tick_due();
            self.ts_base = self.tick_ts();
            self.clock_base = next_due;
            self.clock_index = 0;
            self.jb.set_ptime(n.ptime_ms);
        }
        if n.payload_type != old.payload_type {
            self.marker_next = true;
        }
        if n.remote_rtp != old.remote_rtp {
            self.latch.reset_to(n.remote_rtp);
        }
        if n.remote_rtcp != old.remote_rtcp {
            self.rtcp_dest = n.remote_rtcp;
        }
        if n.direction.sends() && !old.direction.sends() {
            self.marker_next = true;
        }
        if n.direction.receives() && !old.direction.receives() {
            self.jb.reset(n.codec);
        }
        if n.direction == crate::telephony::codec::Direction::SendRecv
            && old.direction != crate::telephony::codec::Direction::SendRecv
        {
            self.last_media_at = now;
            self.timeout_fired = false;
        }
        if n.dtmf_payload_type.is_none() || !n.direction.sends() {
            self.dtmf_tx.clear();
        }
        self.neg = n;
        Ok(())
    }

    /// Ends the session: sends a final report with RTCP BYE. Afterwards nothing is sent or
    /// taken, and `poll_timeout` is `None`.
    pub fn close(&mut self, now: Instant) {
        if !self.closed {
            self.send_report(now, true);
            self.closed = true;
        }
    }

    // ---- internals ----

    fn ptime(&self) -> Duration {
        Duration::from_millis(u64::from(self.neg.ptime_ms))
    }

    fn frame_ts(&self) -> u32 {
        self.neg.ptime_ms * TS_PER_MS as u32
    }

    fn tick_due(&self) -> Instant {
        self.clock_base + Duration::from_millis(u64::from(self.neg.ptime_ms) * self.clock_index)
    }

    fn tick_ts(&self) -> u32 {
        self.ts_base
            .wrapping_add((self.clock_index.wrapping_mul(u64::from(self.frame_ts()))) as u32)
    }

    /// Time as RTP units since the session started.
    fn units(&self, t: Instant) -> i64 {
        (t.saturating_duration_since(self.start).as_nanos() * TS_PER_MS as u128 / 1_000_000) as i64
    }

    fn media_deadline(&self) -> Option<Instant> {
        let timeout = self.cfg.media_timeout.filter(|d| !d.is_zero())?;
        // Only a two-way stream must carry RTP: a peer that holds us (our recvonly) often
        // sends nothing at all instead of music on hold.
        if self.timeout_fired || self.neg.direction != crate::telephony::codec::Direction::SendRecv
        {
            return None;
        }
        Some(self.last_media_at + timeout)
    }

    fn run_ticks(&mut self, now: Instant) {
        let due = self.tick_due();
        if now < due {
            return;
        }
        let behind = (now - due).as_nanos() / self.ptime().as_nanos();
        let behind = u64::try_from(behind).unwrap_or(u64::MAX);
        if behind > Self::MAX_CATCH_UP_TICKS {
            // Skip all but the latest tick. The timestamp still advances, so the far end sees a
            // gap of the true length.
            self.clock_index = self.clock_index.saturating_add(behind);
            self.stats.clock_ticks_skipped = self.stats.clock_ticks_skipped.saturating_add(behind);
            self.marker_next = true;
        }
        while self.tick_due() <= now {
            let due = self.tick_due();
            self.tick(due);
            self.clock_index += 1;
        }
    }

    fn tick(&mut self, due: Instant) {
        let rate = self.neg.codec.sample_rate();
        let n = (self.neg.ptime_ms * rate / 1000) as usize;
        let ts = self.tick_ts();
        let mut agent = None;

        if self.neg.direction.sends() {
            let dtmf = match self.neg.dtmf_payload_type {
                Some(pt) => {
                    let gap = Self::DTMF_GAP_MS.div_ceil(self.neg.ptime_ms);
                    self.dtmf_tx
                        .on_tick(ts, self.frame_ts(), gap)
                        .map(|p| (pt, p))
                }
                None => None,
            };
            if let Some((pt, p)) = dtmf {
                self.send_rtp(p.marker, pt, p.timestamp, &p.payload);
                // Audio after an event starts a new talk-spurt.
                self.marker_next = true;
                self.talking = false;
            } else {
                // Held: silence now, the queue kept for when the hold is lifted.
                let frame = if self.hold_outgoing {
                    None
                } else {
                    self.outgoing.take_frame(n)
                };
                let is_audio = frame.is_some();
                let pcm = frame.unwrap_or_else(|| vec![0; n]);
                let marker = self.marker_next || (is_audio && !self.talking);
                let mut payload = Vec::with_capacity(n);
                self.encoder.encode(&pcm, &mut payload);
                self.send_rtp(marker, self.neg.payload_type, ts, &payload);
                self.marker_next = false;
                self.talking = is_audio;
                if is_audio && self.outgoing.queued_samples() == 0 {
                    self.events.push_back(MediaEvent::PlayoutDrained);
                }
                agent = Some(pcm);
            }
        } else {
            // On hold the agent's audio still plays out on the clock (unheard), so queue timing
            // and PlayoutDrained behave the same.
            if self.outgoing.take_frame(n).is_some() && self.outgoing.queued_samples() == 0 {
                self.events.push_back(MediaEvent::PlayoutDrained);
            }
            self.marker_next = true;
            self.talking = false;
        }

        let mut caller = None;
        if self.neg.direction.receives() {
            let mut pcm = Vec::with_capacity(n);
            let concealed = self.jb.pull(self.units(due), &mut pcm);
            self.stats.max_jitter_target_ms =
                self.stats.max_jitter_target_ms.max(self.jb.target_ms());
            if self.cfg.record {
                caller = Some(pcm.clone());
            }
            self.events.push_back(MediaEvent::AudioFrame {
                pcm,
                sample_rate: rate,
                concealed,
            });
        }
        if self.cfg.record {
            self.events.push_back(MediaEvent::RecordFrame {
                caller: caller.unwrap_or_else(|| vec![0; n]),
                agent: agent.unwrap_or_else(|| vec![0; n]),
                sample_rate: rate,
            });
        }
    }

    fn send_rtp(&mut self, marker: bool, pt: u8, ts: u32, payload: &[u8]) {
        let mut data = Vec::with_capacity(rtp::HEADER_LEN + payload.len());
        rtp::write(&mut data, marker, pt, self.seq, ts, self.cfg.ssrc, payload);
        self.seq = self.seq.wrapping_add(1);
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += data.len() as u64;
        self.payload_octets_sent += payload.len() as u64;
        self.sent_since_report = true;
        self.transmits.push_back(Transmit {
            dest: self.latch.dest(),
            kind: TransmitKind::Rtp,
            data,
        });
    }

    fn ntp_at(&self, now: Instant) -> u64 {
        rtcp::ntp_from_system_time(
            self.cfg.wallclock_at_start + now.saturating_duration_since(self.start),
        )
    }

    fn send_report(&mut self, now: Instant, bye: bool) {
        let ntp = self.ntp_at(now);
        let info = self.sent_since_report.then(|| SenderInfo {
            ntp,
            // The RTP time of this instant on our media clock.
            rtp_ts: self.ts_base.wrapping_add(
                (now.saturating_duration_since(self.clock_base).as_nanos() * TS_PER_MS as u128
                    / 1_000_000) as u32,
            ),
            packet_count: self.stats.packets_sent as u32,
            octet_count: self.payload_octets_sent as u32,
        });
        let mut blocks = Vec::new();
        if let (Some(remote), true) = (self.remote, self.recv.expected() > 0) {
            let (lsr, dlsr) = match self.last_sr {
                Some((lsr, at)) => (
                    lsr,
                    (now.saturating_duration_since(at).as_secs_f64() * 65536.0) as u32,
                ),
                None => (0, 0),
            };
            blocks.push(
                self.recv
                    .report_block(remote.ssrc, self.rtp_jitter.jitter(), lsr, dlsr),
            );
        }
        let mut data = Vec::with_capacity(128);
        rtcp::write_report(&mut data, self.cfg.ssrc, info, &blocks);
        rtcp::write_sdes_cname(&mut data, self.cfg.ssrc, &self.cfg.cname);
        if bye {
            rtcp::write_bye(&mut data, self.cfg.ssrc);
        }
        self.sent_since_report = false;
        self.stats.rtcp_sent += 1;
        self.transmits.push_back(Transmit {
            dest: self.rtcp_dest,
            kind: TransmitKind::Rtcp,
            data,
        });
    }

    /// Symmetric RTCP: once the remote stream's SSRC reports from an address, answer there.
    fn rtcp_from(&mut self, remote: Option<u32>, ssrc: u32, from: SocketAddr) {
        if remote == Some(ssrc) {
            self.rtcp_dest = from;
        }
    }

    fn take_reports(&mut self, now: Instant, reports: &[rtcp::ReportBlock]) {
        for b in reports.iter().filter(|b| b.ssrc == self.cfg.ssrc) {
            self.stats.remote_fraction_lost = Some(f64::from(b.fraction_lost) / 256.0);
            self.stats.remote_packets_lost = Some(i64::from(b.cumulative_lost));
            self.stats.remote_jitter_ms = Some(f64::from(b.jitter) / TS_PER_MS as f64);
            if b.lsr != 0 {
                // RFC 3550 §6.4.1: RTT = A - LSR - DLSR, in 1/65536 s.
                let a = rtcp::ntp_middle(self.ntp_at(now));
                let rtt = a.wrapping_sub(b.lsr).wrapping_sub(b.dlsr);
                if rtt < 10 * 65536 {
                    self.stats.rtt_ms = Some(f64::from(rtt) * 1000.0 / 65536.0);
                }
            }
        }
    }

    fn switch_source(&mut self, to: Source) {
        let previous = self.remote;
        if previous.map(|s| s.ssrc) != Some(to.ssrc) {
            if let Some(prev) = previous {
                self.stats.ssrc_changes += 1;
                self.events.push_back(MediaEvent::RemoteSsrcChanged {
                    old: prev.ssrc,
                    new: to.ssrc,
                });
            }
            self.expected_before += self.recv.expected();
            self.lost_before += self.recv.lost().max(0) as u64;
            self.recv = ReceiveStats::default();
            self.rtp_jitter.forget_last();
            self.jb.reset(self.neg.codec);
            self.dtmf_rx.reset(&mut self.detected);
            self.emit_dtmf();
            self.last_sr = None;
        }
        let before = previous.map_or(self.neg.remote_rtp, |s| s.addr);
        if to.addr != before {
            self.stats.latch_changes += 1;
            self.events.push_back(MediaEvent::Latched { addr: to.addr });
        }
        self.remote = Some(to);
    }

    /// Takes a datagram from the latched source (already validated once).
    fn accept(&mut self, now: Instant, data: &[u8]) {
        let Ok(pkt) = rtp::parse(data) else {
            return;
        };
        self.last_media_at = self.last_media_at.max(now);
        self.timeout_fired = false;
        if self.recv.update(pkt.seq) == SeqVerdict::Duplicate {
            self.stats.duplicate_packets += 1;
            return;
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += data.len() as u64;
        let arrival = self.units(now);
        if pkt.payload_type == self.neg.payload_type {
            // Transit in wrapping 32-bit RTP arithmetic, so a timestamp wrap is no jump.
            let transit = i64::from((arrival as u32).wrapping_sub(pkt.timestamp) as i32);
            self.rtp_jitter.update(transit);
            let jitter_ms = self.rtp_jitter.jitter() / TS_PER_MS as f64;
            self.stats.max_jitter_ms = self.stats.max_jitter_ms.max(jitter_ms);
            if self.neg.direction.receives() {
                self.jb.insert(arrival, pkt.seq, pkt.timestamp, pkt.payload);
            }
        } else if !self
            .dtmf_rx
            .on_packet(now, pkt.timestamp, pkt.payload, &mut self.detected)
        {
            self.stats.malformed_packets += 1;
        }
        self.emit_dtmf();
    }

    fn emit_dtmf(&mut self) {
        for d in self.detected.drain(..) {
            self.stats.dtmf_received += 1;
            self.events.push_back(MediaEvent::Dtmf {
                digit: d.digit,
                duration_ms: d.duration_ms,
            });
        }
    }
}

fn validate_ptime(ptime_ms: u32) -> Result<(), MediaError> {
    if (10..=120).contains(&ptime_ms) {
        Ok(())
    } else {
        Err(MediaError::InvalidPtime(ptime_ms))
    }
}

/// RFC 3550 §6.3.1: the report interval randomized to [0.5, 1.5] × mean.
fn jittered(mean: Duration, rng: &mut u64) -> Duration {
    let f = 0.5 + (splitmix64(rng) >> 11) as f64 / (1u64 << 53) as f64;
    mean.mul_f64(f)
}
