//! Adaptive jitter buffer: packets in, exactly one frame of decoded PCM out per tick.
//!
//! All positions are extended RTP timestamps (i64, wrap-free) and all times are "RTP units since
//! the session started" (8000 per second), so arrival and media time share one scale.
//!
//! Playout follows an ideal position, `now - min_transit - target`: a packet that crossed the
//! network as fast as any recent one (minimum transit over a 4 s window, which also follows clock
//! skew) is played `target` after it arrived. `target` comes from the RFC 3550 interarrival
//! jitter `J`: `3·J + ptime/2`, clamped to [min, max] (for uniformly distributed delay, J is a
//! third of its spread). It rises at once and falls by at most one frame a second. The actual
//! play cursor moves one frame per tick; when it is a frame or more off the ideal it is nudged by
//! a frame (a concealment frame inserted to grow, a frame dropped to shrink), preferably in quiet
//! audio, at most once per tick, and forced after 0.5 s of waiting. Far off (a jump in the peer's
//! timestamps) it jumps.
//!
//! Losses, gaps and late packets are filled by [`Concealer`]; packets are decoded in order, so the
//! G.722 ADPCM state follows the stream (a dropped frame is decoded and discarded for that reason).

use std::collections::{BTreeMap, VecDeque};

use super::codec_impl::{samples_per_ts, AudioDecoder};
use super::plc::Concealer;
use crate::telephony::codec::Codec;

/// RTP units per millisecond (all our codecs use an 8 kHz RTP clock).
pub(crate) const TS_PER_MS: i64 = 8;

/// RFC 3550 §6.4.1 / A.8 interarrival jitter, in RTP units.
#[derive(Debug, Clone, Default)]
pub(crate) struct JitterEstimator {
    last_transit: Option<i64>,
    jitter: f64,
}

impl JitterEstimator {
    pub(crate) fn update(&mut self, transit: i64) {
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    pub(crate) fn jitter(&self) -> f64 {
        self.jitter
    }

    /// Keeps the estimate but starts differences afresh (after a timeline change).
    pub(crate) fn forget_last(&mut self) {
        self.last_transit = None;
    }
}

/// Minimum transit over the last few one-second buckets.
#[derive(Debug, Default)]
struct TransitWindow {
    buckets: VecDeque<(i64, i64)>,
}

impl TransitWindow {
    const BUCKET: i64 = 1000 * TS_PER_MS;
    const KEEP: i64 = 4;

    fn update(&mut self, arrival: i64, transit: i64) {
        let bucket = arrival.div_euclid(Self::BUCKET);
        match self.buckets.back_mut() {
            Some((b, m)) if *b == bucket => *m = (*m).min(transit),
            _ => self.buckets.push_back((bucket, transit)),
        }
        while self
            .buckets
            .front()
            .is_some_and(|(b, _)| *b <= bucket - Self::KEEP)
        {
            self.buckets.pop_front();
        }
    }

    fn min(&self) -> Option<i64> {
        self.buckets.iter().map(|(_, m)| *m).min()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InsertOutcome {
    Buffered,
    /// Its playout time had passed.
    Late,
    Duplicate,
    /// The peer's timeline jumped; the buffer restarted from this packet.
    Resynced,
}

/// Counters the session folds into `MediaStats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct JitterCounters {
    pub late: u64,
    pub duplicate: u64,
    pub concealed_frames: u64,
    pub played_frames: u64,
    pub resyncs: u64,
    pub grown_frames: u64,
    pub shrunk_frames: u64,
}

struct Stored {
    seq: u16,
    payload: Vec<u8>,
}

impl Stored {
    /// Duration in RTP units: one per octet for G.711 and G.722 alike.
    fn dur(&self) -> i64 {
        self.payload.len() as i64
    }
}

pub(crate) struct JitterBuffer {
    spt: usize,
    frame_ts: i64,
    frame_samples: usize,
    min_target: i64,
    max_target: i64,
    packets: BTreeMap<i64, Stored>,
    last_ext_ts: Option<i64>,
    /// Extended timestamp of the next sample to play; None until playout starts.
    cursor: Option<i64>,
    /// Decoded samples starting at `cursor`.
    carry: VecDeque<i16>,
    decoder: AudioDecoder,
    plc: Concealer,
    jitter: JitterEstimator,
    transit: TransitWindow,
    target: i64,
    ticks: u64,
    last_shrink_tick: u64,
    adjust_wait: u32,
    last_frame_quiet: bool,
    resync_votes: u32,
    played: VecDeque<u16>,
    scratch: Vec<i16>,
    pub(crate) counters: JitterCounters,
}

impl JitterBuffer {
    /// Most packets held at once (10 s at 20 ms): a flood of far-future timestamps cannot grow
    /// memory without bound.
    const MAX_PACKETS: usize = 500;
    /// Ticks to wait for a quiet frame before forcing a delay adjustment (0.5 s at 20 ms).
    const FORCE_ADJUST_TICKS: u32 = 25;
    /// Target may fall by one frame per this many ticks (1 s at 20 ms).
    const SHRINK_EVERY_TICKS: u64 = 50;
    /// RMS below which a frame counts as quiet (about -40 dBFS).
    const QUIET_RMS: f64 = 330.0;
    /// A packet this far from the cursor (late or early) votes for a resync.
    const WILD_TS: i64 = 2000 * TS_PER_MS;

    pub(crate) fn new(codec: Codec, ptime_ms: u32, min_ms: u32, max_ms: u32) -> Self {
        let spt = samples_per_ts(codec);
        let frame_ts = i64::from(ptime_ms) * TS_PER_MS;
        let min_target = i64::from(min_ms) * TS_PER_MS;
        JitterBuffer {
            spt,
            frame_ts,
            frame_samples: frame_ts as usize * spt,
            min_target,
            max_target: i64::from(max_ms.max(min_ms)) * TS_PER_MS,
            packets: BTreeMap::new(),
            last_ext_ts: None,
            cursor: None,
            carry: VecDeque::new(),
            decoder: AudioDecoder::new(codec),
            plc: Concealer::new(codec.sample_rate()),
            jitter: JitterEstimator::default(),
            transit: TransitWindow::default(),
            target: min_target,
            ticks: 0,
            last_shrink_tick: 0,
            adjust_wait: 0,
            last_frame_quiet: true,
            resync_votes: 0,
            played: VecDeque::with_capacity(64),
            scratch: Vec::new(),
            counters: JitterCounters::default(),
        }
    }

    /// Forget the stream (new SSRC, new codec): playout restarts after the target delay.
    pub(crate) fn reset(&mut self, codec: Codec) {
        let counters = self.counters;
        let (min_ms, max_ms) = (self.min_target / TS_PER_MS, self.max_target / TS_PER_MS);
        *self = JitterBuffer::new(
            codec,
            (self.frame_ts / TS_PER_MS) as u32,
            min_ms as u32,
            max_ms as u32,
        );
        self.counters = counters;
    }

    pub(crate) fn set_ptime(&mut self, ptime_ms: u32) {
        self.frame_ts = i64::from(ptime_ms) * TS_PER_MS;
        self.frame_samples = self.frame_ts as usize * self.spt;
    }

    pub(crate) fn target_ms(&self) -> u32 {
        (self.target / TS_PER_MS) as u32
    }

    fn unwrap_ts(&mut self, ts: u32) -> i64 {
        let ext = match self.last_ext_ts {
            None => i64::from(ts),
            Some(last) => last + i64::from(ts.wrapping_sub(last as u32) as i32),
        };
        self.last_ext_ts = Some(ext);
        ext
    }

    /// Takes one audio packet. `arrival` is the receive time in RTP units since session start.
    pub(crate) fn insert(
        &mut self,
        arrival: i64,
        seq: u16,
        ts: u32,
        payload: &[u8],
    ) -> InsertOutcome {
        let mut ext = self.unwrap_ts(ts);
        let dur = payload.len() as i64;
        let mut outcome = InsertOutcome::Buffered;

        if let Some(cursor) = self.cursor {
            let wild = ext + dur <= cursor - Self::WILD_TS
                || ext > cursor + self.max_target + Self::WILD_TS;
            if wild {
                self.resync_votes += 1;
                if self.resync_votes < 2 {
                    self.counters.late += 1;
                    return InsertOutcome::Late;
                }
                // Two wild packets in a row: the peer's timeline moved; follow it.
                self.restart_playout();
                ext = self.unwrap_ts(ts);
                self.counters.resyncs += 1;
                outcome = InsertOutcome::Resynced;
            } else {
                self.resync_votes = 0;
            }
            if let Some(cursor) = self.cursor {
                if ext + dur <= cursor {
                    if self.played.contains(&seq) {
                        self.counters.duplicate += 1;
                        return InsertOutcome::Duplicate;
                    }
                    // Late packets still measure the network.
                    self.measure(arrival, ext);
                    self.counters.late += 1;
                    return InsertOutcome::Late;
                }
            }
        }
        if self.packets.contains_key(&ext) {
            self.counters.duplicate += 1;
            return InsertOutcome::Duplicate;
        }
        self.measure(arrival, ext);
        if self.packets.len() >= Self::MAX_PACKETS {
            // Keep the packets nearest the cursor; the farthest-future one goes.
            self.packets.pop_last();
        }
        self.packets.insert(
            ext,
            Stored {
                seq,
                payload: payload.to_vec(),
            },
        );
        outcome
    }

    fn measure(&mut self, arrival: i64, ext: i64) {
        let transit = arrival - ext;
        self.jitter.update(transit);
        self.transit.update(arrival, transit);
    }

    /// Drops queued audio and the playout position, keeping decoder history for concealment.
    fn restart_playout(&mut self) {
        self.packets.clear();
        self.cursor = None;
        self.carry.clear();
        self.transit = TransitWindow::default();
        self.resync_votes = 0;
        self.last_ext_ts = None;
        // The transit jump between timelines is not network jitter.
        self.jitter.forget_last();
    }

    fn update_target(&mut self) {
        let j = self.jitter.jitter();
        let desired =
            ((3.0 * j) as i64 + self.frame_ts / 2).clamp(self.min_target, self.max_target);
        // Whole milliseconds, so the reported target is exact.
        let desired = (desired + TS_PER_MS - 1) / TS_PER_MS * TS_PER_MS;
        if desired > self.target {
            self.target = desired;
        } else if desired < self.target
            && self.ticks - self.last_shrink_tick >= Self::SHRINK_EVERY_TICKS
        {
            self.target = (self.target - self.frame_ts).max(desired);
            self.last_shrink_tick = self.ticks;
        }
    }

    /// Appends exactly one frame (ptime at the codec rate) to `out`; returns whether any of it
    /// was concealment (or comfort silence before the stream started).
    pub(crate) fn pull(&mut self, now: i64, out: &mut Vec<i16>) -> bool {
        self.ticks += 1;
        self.update_target();
        let Some(min_transit) = self.transit.min() else {
            return self.conceal_frame(out);
        };
        let ideal = now - min_transit - self.target;
        let cursor = match self.cursor {
            Some(c) => c,
            None => match self.packets.first_key_value() {
                // Start once the first packet has waited `target`.
                Some((&first, _)) if ideal >= first => {
                    self.cursor = Some(first);
                    self.carry.clear();
                    first
                }
                _ => return self.conceal_frame(out),
            },
        };

        let off = cursor - ideal;
        if off <= -(self.max_target + 10 * self.frame_ts) {
            // Far behind (the peer's timestamps leapt ahead): jump to where we should be.
            self.jump_to(ideal);
        } else if off.abs() >= self.frame_ts {
            self.adjust_wait += 1;
            let at_gap = self.carry.is_empty() && !self.packets.contains_key(&cursor);
            if self.last_frame_quiet || at_gap || self.adjust_wait >= Self::FORCE_ADJUST_TICKS {
                self.adjust_wait = 0;
                if off > 0 {
                    // Too little delay: play a concealment frame without moving the cursor.
                    self.counters.grown_frames += 1;
                    return self.conceal_frame(out);
                }
                // Too much delay: play this frame into the void (keeps decoder state).
                self.counters.shrunk_frames += 1;
                self.scratch.clear();
                let mut discard = std::mem::take(&mut self.scratch);
                self.render(&mut discard);
                self.scratch = discard;
            }
        } else {
            self.adjust_wait = 0;
        }
        let start = out.len();
        let concealed = self.render(out);
        self.last_frame_quiet = concealed || rms(&out[start..]) < Self::QUIET_RMS;
        self.counters.played_frames += 1;
        if concealed {
            self.counters.concealed_frames += 1;
        }
        concealed
    }

    fn conceal_frame(&mut self, out: &mut Vec<i16>) -> bool {
        self.plc.conceal(self.frame_samples, out);
        self.counters.played_frames += 1;
        self.counters.concealed_frames += 1;
        self.last_frame_quiet = true;
        true
    }

    fn jump_to(&mut self, ts: i64) {
        self.counters.resyncs += 1;
        while let Some(entry) = self.packets.first_entry() {
            if *entry.key() + entry.get().dur() > ts {
                break;
            }
            entry.remove();
        }
        self.carry.clear();
        self.cursor = Some(ts);
    }

    /// Renders one frame from the cursor on: buffered audio where there is some, concealment
    /// for gaps.
    fn render(&mut self, out: &mut Vec<i16>) -> bool {
        let Some(mut cursor) = self.cursor else {
            return self.conceal_frame(out);
        };
        let spt = self.spt;
        let mut need = self.frame_samples;
        let mut concealed = false;
        while need > 0 {
            if !self.carry.is_empty() {
                let take = need.min(self.carry.len());
                out.extend(self.carry.drain(..take));
                need -= take;
                cursor += (take / spt) as i64;
                continue;
            }
            // Packets wholly before the cursor can only be left over from a jump.
            while let Some(entry) = self.packets.first_entry() {
                if *entry.key() + entry.get().dur() > cursor {
                    break;
                }
                entry.remove();
                self.counters.late += 1;
            }
            match self.packets.first_key_value().map(|(&k, _)| k) {
                Some(key) if key <= cursor => {
                    let Some(p) = self.packets.remove(&key) else {
                        break;
                    };
                    self.scratch.clear();
                    self.decoder.decode(&p.payload, &mut self.scratch);
                    // A packet straddling the cursor (odd packet sizes): skip what was played.
                    let skip = ((cursor - key) as usize * spt).min(self.scratch.len());
                    let mut fresh = self.scratch.split_off(skip);
                    self.plc.good(&mut fresh);
                    self.carry.extend(fresh);
                    if self.played.len() == 64 {
                        self.played.pop_front();
                    }
                    self.played.push_back(p.seq);
                    if self.carry.is_empty() {
                        // An empty payload: nothing to play, move on.
                        continue;
                    }
                }
                next => {
                    let gap = match next {
                        Some(key) => ((key - cursor) as usize * spt).min(need),
                        None => need,
                    };
                    self.plc.conceal(gap, out);
                    need -= gap;
                    cursor += (gap / spt) as i64;
                    concealed = true;
                }
            }
        }
        self.cursor = Some(cursor);
        concealed
    }
}

fn rms(x: &[i16]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / x.len() as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telephony::media::codec_impl::AudioEncoder;
    use crate::telephony::media::test_util::{rms as rms_of, TestRng};

    const FRAME: i64 = 160;

    /// Speech-like test signal: a 200 Hz tone at a level well above "quiet".
    fn frame_pcm(i: usize) -> Vec<i16> {
        (0..160)
            .map(|k| {
                let n = (i * 160 + k) as f32;
                (5000.0 * (2.0 * std::f32::consts::PI * 200.0 * n / 8000.0).sin()) as i16
            })
            .collect()
    }

    fn payload(enc: &mut AudioEncoder, i: usize) -> Vec<u8> {
        let mut out = Vec::new();
        enc.encode(&frame_pcm(i), &mut out);
        out
    }

    struct Sim {
        jb: JitterBuffer,
        enc: AudioEncoder,
        /// (arrival, seq, ts, payload), sent over time.
        in_flight: Vec<(i64, u16, u32, Vec<u8>)>,
        outcomes: Vec<InsertOutcome>,
        frames: Vec<(Vec<i16>, bool)>,
    }

    impl Sim {
        fn new() -> Self {
            Sim {
                jb: JitterBuffer::new(Codec::Pcmu, 20, 40, 120),
                enc: AudioEncoder::new(Codec::Pcmu),
                in_flight: Vec::new(),
                outcomes: Vec::new(),
                frames: Vec::new(),
            }
        }

        /// Packet `i` (sent at i*20 ms) arriving `delay_ms` later.
        fn send(&mut self, i: usize, delay_ms: i64) {
            let p = payload(&mut self.enc, i);
            let ts = 1000u32.wrapping_add(i as u32 * 160);
            self.in_flight
                .push((i as i64 * FRAME + delay_ms * 8, i as u16, ts, p));
        }

        /// Runs ticks `from..to` (tick t at t*20 ms + 1 µs, after same-instant arrivals).
        fn run(&mut self, from: i64, to: i64) {
            self.in_flight.sort_by_key(|p| p.0);
            for t in from..to {
                let now = t * FRAME;
                let due: Vec<_> = self
                    .in_flight
                    .iter()
                    .filter(|p| p.0 <= now)
                    .cloned()
                    .collect();
                self.in_flight.retain(|p| p.0 > now);
                for (arr, seq, ts, p) in due {
                    let o = self.jb.insert(arr, seq, ts, &p);
                    self.outcomes.push(o);
                }
                let mut out = Vec::new();
                let c = self.jb.pull(now, &mut out);
                assert_eq!(out.len(), 160, "exactly one frame per tick");
                self.frames.push((out, c));
            }
        }
    }

    #[test]
    fn jitter_buffer_plays_steady_stream_after_minimum_delay_without_concealment() {
        let mut s = Sim::new();
        for i in 0..100 {
            s.send(i, 30);
        }
        s.run(0, 100);
        // 30 ms network + 40 ms buffer: frames 0..=3 are start-up silence.
        let first_audio = s.frames.iter().position(|f| !f.1).unwrap();
        assert_eq!(first_audio, 4);
        assert!(s.frames[..4].iter().all(|f| f.0.iter().all(|&x| x == 0)));
        assert!(
            s.frames[4..].iter().all(|f| !f.1),
            "no concealment in a clean stream"
        );
        assert_eq!(s.jb.target_ms(), 40);
        assert_eq!(s.jb.counters.late, 0);
        // The audio comes out in order, intact (G.711 exact for these samples within a step).
        let mut dec = AudioDecoder::new(Codec::Pcmu);
        let mut expect = Vec::new();
        dec.decode(
            &payload(&mut AudioEncoder::new(Codec::Pcmu), 0),
            &mut expect,
        );
        assert_eq!(s.frames[4].0, expect);
    }

    #[test]
    fn jitter_buffer_reorders_packets_within_its_delay() {
        let mut s = Sim::new();
        for i in 0..100 {
            // Every odd packet overtakes the one before it.
            let d = if i % 2 == 0 { 35 } else { 15 };
            s.send(i, d);
        }
        s.run(0, 110);
        assert_eq!(s.jb.counters.late, 0);
        // Every packet is played, in order (concealment frames may be inserted while the
        // buffer grows to the measured jitter, but no audio is lost or swapped).
        let played: Vec<_> = s
            .frames
            .iter()
            .filter(|f| !f.1)
            .map(|f| f.0.clone())
            .collect();
        assert_eq!(played.len(), 100);
        let mut enc = AudioEncoder::new(Codec::Pcmu);
        let mut dec = AudioDecoder::new(Codec::Pcmu);
        for (k, f) in played.iter().enumerate() {
            let mut expect = Vec::new();
            dec.decode(&payload(&mut enc, k), &mut expect);
            // The first 2.5 ms may be cross-faded out of a concealment frame.
            assert_eq!(f[20..], expect[20..], "frame {k}");
        }
    }

    #[test]
    fn jitter_buffer_drops_duplicates_and_counts_them() {
        let mut s = Sim::new();
        for i in 0..50 {
            s.send(i, 20);
            if i % 5 == 0 {
                s.send(i, 25); // copy arriving while still buffered
                s.send(i, 200); // copy arriving long after playout
            }
        }
        s.run(0, 60);
        assert_eq!(s.jb.counters.duplicate, 20);
        assert_eq!(s.jb.counters.late, 0);
        let start = s.frames.iter().position(|f| !f.1).unwrap();
        assert!(s.frames[start..start + 45].iter().all(|f| !f.1));
    }

    #[test]
    fn jitter_buffer_drops_late_packets_and_conceals_their_frames() {
        let mut s = Sim::new();
        for i in 0..60 {
            s.send(i, if i == 30 { 150 } else { 20 });
        }
        s.run(0, 60);
        assert_eq!(s.jb.counters.late, 1);
        assert!(s.outcomes.contains(&InsertOutcome::Late));
        let concealed_after_start = s.frames.iter().skip_while(|f| f.1).filter(|f| f.1).count();
        assert_eq!(concealed_after_start, 1);
    }

    #[test]
    fn single_lost_packet_is_concealed_with_non_silent_audio() {
        let mut s = Sim::new();
        for i in (0..60).filter(|&i| i != 20) {
            s.send(i, 20);
        }
        s.run(0, 60);
        let start = s.frames.iter().position(|f| !f.1).unwrap();
        let lost = &s.frames[start + 20];
        assert!(lost.1, "the lost frame is flagged concealed");
        let level = rms_of(&lost.0);
        let neighbour = rms_of(&s.frames[start + 19].0);
        assert!(
            level > neighbour * 0.5,
            "concealment level {level} vs {neighbour}"
        );
        assert!(!s.frames[start + 21].1);
    }

    #[test]
    fn adaptive_delay_grows_under_jitter_and_shrinks_back() {
        let mut s = Sim::new();
        let mut rng = TestRng(7);
        // 10 s of delay uniform in 20..100 ms, then 30 s of steady 20 ms.
        for i in 0..500 {
            s.send(i, 20 + rng.below(81) as i64);
        }
        for i in 500..2000 {
            s.send(i, 20);
        }
        s.run(0, 500);
        let grown = s.jb.target_ms();
        assert!(grown >= 80, "target under 80 ms of jitter: {grown}");
        assert!(grown <= 120);
        let late_during_jitter = s.jb.counters.late;
        assert!(
            late_during_jitter < 25,
            "late packets under jitter: {late_during_jitter}"
        );
        s.run(500, 2000);
        assert_eq!(s.jb.target_ms(), 40, "target back to the minimum");
        assert!(s.jb.counters.shrunk_frames > 0);
        // And the actual playout delay follows: the last frames are real audio, played at
        // about 20 ms network + 40 ms buffer.
        assert!(s.frames[1990..].iter().all(|f| !f.1));
    }

    #[test]
    fn silence_suppression_gap_resumes_without_late_drops() {
        let mut s = Sim::new();
        for i in (0..50).chain(150..200) {
            s.send(i, 20);
        }
        s.run(0, 200);
        assert_eq!(s.jb.counters.late, 0);
        assert_eq!(s.jb.counters.resyncs, 0);
        assert!(!s.frames[199].1);
    }

    #[test]
    fn peer_timestamp_jump_resyncs_playout() {
        let mut s = Sim::new();
        for i in 0..50 {
            s.send(i, 20);
        }
        s.run(0, 50);
        // The peer's timestamps go back by a minute, with no pause (a B2BUA switched source).
        let mut enc = AudioEncoder::new(Codec::Pcmu);
        for i in 50..100usize {
            let ts = 1000u32.wrapping_sub(480_000).wrapping_add(i as u32 * 160);
            s.in_flight
                .push((i as i64 * FRAME + 160, i as u16, ts, payload(&mut enc, i)));
        }
        s.run(50, 100);
        assert!(s.jb.counters.resyncs >= 1);
        assert!(
            s.frames[90..].iter().all(|f| !f.1),
            "playing the new timeline"
        );
    }

    #[test]
    fn g722_frames_are_320_samples_at_16khz() {
        let mut jb = JitterBuffer::new(Codec::G722, 20, 40, 120);
        let mut enc = AudioEncoder::new(Codec::G722);
        let mut out = Vec::new();
        for i in 0..20i64 {
            let mut p = Vec::new();
            enc.encode(&[1000; 320], &mut p);
            jb.insert(i * FRAME, i as u16, (i * FRAME) as u32, &p);
            out.clear();
            jb.pull(i * FRAME, &mut out);
            assert_eq!(out.len(), 320);
        }
    }
}
