//! Behaviour of a whole `MediaSession`, driven faster than real time with synthetic Instants.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::codec_impl::AudioDecoder;
use super::dtmf::EventBlock;
use super::rtcp::{self, RtcpPacket};
use super::rtp;
use super::test_util::{addr, best_lag, best_lag_in, read_wav, rms, Peer, TestRng};
use super::*;
use crate::telephony::codec::{Codec, Direction, Negotiated};

const SDP_RTP: &str = "192.0.2.10:40000";
const SDP_RTCP: &str = "192.0.2.10:40001";
const NAT_RTP: &str = "198.51.100.20:61000";
const DTMF_PT: u8 = 101;

fn neg(codec: Codec) -> Negotiated {
    Negotiated {
        codec,
        payload_type: codec.static_payload_type(),
        dtmf_payload_type: Some(DTMF_PT),
        ptime_ms: 20,
        remote_rtp: addr(SDP_RTP),
        remote_rtcp: addr(SDP_RTCP),
        direction: Direction::SendRecv,
    }
}

fn config(codec: Codec) -> MediaConfig {
    let mut c = MediaConfig::new(neg(codec), 42);
    c.wallclock_at_start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    c
}

/// A sent RTP packet, parsed.
#[derive(Debug, Clone)]
struct Sent {
    at: Instant,
    dest: SocketAddr,
    marker: bool,
    pt: u8,
    seq: u16,
    ts: u32,
    payload: Vec<u8>,
}

struct Harness {
    s: MediaSession,
    t0: Instant,
    now: Instant,
    rtp: Vec<Sent>,
    rtcp: Vec<(Instant, Transmit)>,
    events: Vec<(Instant, MediaEvent)>,
}

impl Harness {
    fn new(cfg: MediaConfig) -> Self {
        let t0 = Instant::now();
        Harness {
            s: MediaSession::new(cfg, t0).unwrap(),
            t0,
            now: t0,
            rtp: Vec::new(),
            rtcp: Vec::new(),
            events: Vec::new(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn drain(&mut self) {
        while let Some(t) = self.s.poll_transmit() {
            match t.kind {
                TransmitKind::Rtp => {
                    let p = rtp::parse(&t.data).unwrap();
                    self.rtp.push(Sent {
                        at: self.now,
                        dest: t.dest,
                        marker: p.marker,
                        pt: p.payload_type,
                        seq: p.seq,
                        ts: p.timestamp,
                        payload: p.payload.to_vec(),
                    });
                }
                TransmitKind::Rtcp => self.rtcp.push((self.now, t)),
            }
        }
        while let Some(e) = self.s.poll_event() {
            self.events.push((self.now, e));
        }
    }

    /// Runs every deadline up to and including `t`, calling exactly on time.
    fn run_to(&mut self, t: Instant) {
        while let Some(d) = self.s.poll_timeout() {
            if d > t {
                break;
            }
            self.now = d.max(self.now);
            self.s.handle_timeout(self.now);
            self.drain();
        }
        self.now = t.max(self.now);
    }

    fn run_ms(&mut self, ms: u64) {
        let t = self.now + Duration::from_millis(ms);
        self.run_to(t);
    }

    fn deliver(&mut self, t: Instant, from: &str, data: &[u8]) {
        self.run_to(t);
        self.s.handle_rtp(t, addr(from), data);
        self.drain();
    }

    fn frames(&self) -> Vec<(Vec<i16>, bool)> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                MediaEvent::AudioFrame { pcm, concealed, .. } => Some((pcm.clone(), *concealed)),
                _ => None,
            })
            .collect()
    }

    fn count(&self, f: impl Fn(&MediaEvent) -> bool) -> usize {
        self.events.iter().filter(|(_, e)| f(e)).count()
    }
}

fn decode_stream(codec: Codec, packets: &[Sent]) -> Vec<i16> {
    let mut dec = AudioDecoder::new(codec);
    let mut out = Vec::new();
    for p in packets {
        dec.decode(&p.payload, &mut out);
    }
    out
}

fn loud(n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| if i % 16 < 8 { 8000 } else { -8000 })
        .collect()
}

// ---- send clock ----

#[test]
fn send_clock_has_no_drift_over_ten_minutes() {
    let mut h = Harness::new(config(Codec::Pcmu));
    let end = h.at(10 * 60 * 1000);
    h.run_to(end - Duration::from_micros(1));
    assert_eq!(h.rtp.len(), 30_000);
    // Packet n left exactly at start + n·20 ms: zero scheduling error, not just at p99.
    let worst = h
        .rtp
        .iter()
        .enumerate()
        .map(|(n, p)| {
            p.at.duration_since(h.t0 + Duration::from_millis(20 * n as u64))
        })
        .max()
        .unwrap();
    assert_eq!(worst, Duration::ZERO);
}

#[test]
fn late_wakeups_do_not_accumulate_into_drift() {
    // A real shell wakes 0-7 ms late. Each packet is still due at start + n·20 ms, so
    // lateness never carries over to the next packet.
    let mut h = Harness::new(config(Codec::Pcmu));
    let mut rng = TestRng(3);
    let end = h.at(60_000);
    while let Some(d) = h.s.poll_timeout() {
        if d >= end {
            break;
        }
        h.now = d + Duration::from_micros(rng.below(7000));
        h.s.handle_timeout(h.now);
        h.drain();
    }
    assert_eq!(h.rtp.len(), 3000);
    for (n, p) in h.rtp.iter().enumerate() {
        let due = h.t0 + Duration::from_millis(20 * n as u64);
        assert!(
            p.at >= due && p.at < due + Duration::from_millis(7),
            "packet {n} at {:?}",
            p.at - due
        );
    }
}

#[test]
fn stalled_shell_skips_missed_ticks_instead_of_bursting() {
    let mut h = Harness::new(config(Codec::Pcmu));
    h.run_to(h.at(100));
    let before = h.rtp.len();
    // The runtime stalls for 2 s.
    h.now = h.at(2100);
    h.s.handle_timeout(h.now);
    h.drain();
    let burst = h.rtp.len() - before;
    assert!(burst <= 2, "sent {burst} packets at once after a stall");
    let last = h.rtp.last().unwrap();
    assert_eq!(
        last.ts.wrapping_sub(h.rtp[0].ts),
        105 * 160,
        "timestamp reflects real time"
    );
    assert!(last.marker, "a new talk-spurt after the gap");
    assert_eq!(h.s.stats().clock_ticks_skipped, 99);
}

#[test]
fn sequence_and_timestamps_continue_across_silence_and_talk_spurts_with_markers() {
    let mut h = Harness::new(config(Codec::Pcmu));
    h.run_ms(100); // silence
    h.s.queue_audio(&loud(800), 8000).unwrap(); // 100 ms
    h.run_ms(300);
    h.s.queue_audio(&loud(480), 8000).unwrap(); // 60 ms
    h.run_ms(200);
    let first = &h.rtp[0];
    for (i, p) in h.rtp.iter().enumerate() {
        assert_eq!(
            p.seq,
            first.seq.wrapping_add(i as u16),
            "seq continuity at {i}"
        );
        assert_eq!(
            p.ts,
            first.ts.wrapping_add(160 * i as u32),
            "ts continuity at {i}"
        );
        assert_eq!(p.pt, 0);
        assert_eq!(p.dest, addr(SDP_RTP));
    }
    assert_eq!(
        first.seq,
        MediaConfig::new(neg(Codec::Pcmu), 42).initial_seq
    );
    let markers: Vec<usize> = h
        .rtp
        .iter()
        .enumerate()
        .filter(|(_, p)| p.marker)
        .map(|(i, _)| i)
        .collect();
    // Start of stream, then the first packet of each talk-spurt (ticks at 120 and 420 ms).
    assert_eq!(markers, [0, 6, 21]);
    let is_silence = |p: &Sent| p.payload.iter().all(|&b| b == 0xff);
    assert!(h.rtp[1..6].iter().all(is_silence));
    assert!(h.rtp[6..11].iter().all(|p| !is_silence(p)));
    assert!(h.rtp[11..21].iter().all(is_silence));
    assert!(h.rtp[21..24].iter().all(|p| !is_silence(p)));
    assert!(h.rtp[24..].iter().all(is_silence));
}

#[test]
fn flush_outgoing_makes_the_very_next_packet_silence() {
    let mut h = Harness::new(config(Codec::Pcmu));
    h.s.queue_audio(&loud(16000), 8000).unwrap();
    h.run_to(h.at(50)); // ticks at 0, 20, 40
    assert!(h.s.queued_ms() > 1900);
    h.s.flush_outgoing();
    assert_eq!(h.s.queued_ms(), 0);
    h.run_to(h.at(60));
    let next = h.rtp.last().unwrap();
    assert!(
        next.payload.iter().all(|&b| b == 0xff),
        "barge-in effective within one frame"
    );
    assert_eq!(h.count(|e| matches!(e, MediaEvent::PlayoutDrained)), 0);
}

#[test]
fn queued_ms_tracks_pending_audio_and_drain_is_reported_once() {
    let mut h = Harness::new(config(Codec::G722));
    h.s.queue_audio(&loud(24000), 24000).unwrap(); // 1 s at 24 kHz
    assert_eq!(h.s.queued_ms(), 1000);
    h.run_to(h.at(490));
    assert_eq!(h.s.queued_ms(), 500);
    h.run_to(h.at(2000));
    assert_eq!(h.s.queued_ms(), 0);
    let drained: Vec<Instant> = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, MediaEvent::PlayoutDrained))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(
        drained,
        [h.at(980)],
        "50 frames of audio: the last one goes at 980 ms"
    );
}

#[test]
fn queue_audio_rejects_unusable_sample_rates() {
    let mut h = Harness::new(config(Codec::Pcmu));
    assert!(matches!(
        h.s.queue_audio(&[0; 10], 4000),
        Err(MediaError::UnsupportedSampleRate(4000))
    ));
    for rate in [8000, 16000, 22050, 24000, 48000] {
        h.s.queue_audio(&[0; 100], rate).unwrap();
    }
}

// ---- speech through the engine ----

/// Queues `speech` at `rate` into a session of `codec`, collects what it sends and decodes it.
fn send_speech(codec: Codec, speech: &[i16], rate: u32) -> Vec<i16> {
    let mut h = Harness::new(config(codec));
    h.s.queue_audio(speech, rate).unwrap();
    let ms = speech.len() as u64 * 1000 / u64::from(rate) + 100;
    h.run_ms(ms);
    decode_stream(codec, &h.rtp)
}

#[test]
fn speech_queued_at_16khz_goes_out_as_pcmu_and_pcma_that_correlate() {
    let (jfk, _) = read_wav("jfk.wav");
    let jfk = &jfk[..16000 * 4];
    let reference = Resampler::resample_all(jfk, 16000, 8000).unwrap();
    for codec in [Codec::Pcmu, Codec::Pcma] {
        let sent = send_speech(codec, jfk, 16000);
        let (lag, ncc) = best_lag(&reference, &sent, 40);
        assert!(ncc >= 0.9, "{codec}: ncc {ncc}");
        assert_eq!(lag, 0, "the first packet carries the first audio");
    }
}

#[test]
fn speech_queued_at_22050hz_goes_out_as_g722_that_correlates() {
    let (jfk, _) = read_wav("jfk.wav");
    let jfk = &jfk[..16000 * 4];
    let tts_like = Resampler::resample_all(jfk, 16000, 22050).unwrap();
    let sent = send_speech(Codec::G722, &tts_like, 22050);
    let (_, ncc) = best_lag(jfk, &sent, 40);
    assert!(ncc >= 0.9, "G.722 via 22050 Hz: ncc {ncc}");
}

#[test]
fn narrowband_speech_survives_g722_and_back() {
    let (harvard, _) = read_wav("harvard_8k.wav");
    let harvard = &harvard[..8000 * 4];
    let sent = send_speech(Codec::G722, harvard, 8000);
    let back = Resampler::resample_all(&sent, 16000, 8000).unwrap();
    let (_, ncc) = best_lag(harvard, &back, 20);
    assert!(ncc >= 0.9, "ncc {ncc}");
}

/// Two sessions back to back over a simulated network: A speaks, B plays out.
fn end_to_end(
    codec: Codec,
    speech: &[i16],
    rate: u32,
    delay_ms: impl Fn(u16) -> Option<u64>,
) -> (Vec<(Vec<i16>, bool)>, MediaStats) {
    let mut a = Harness::new(config(codec));
    let mut cfg_b = config(codec);
    cfg_b.ssrc = 0xb0b;
    let mut b = Harness::new(cfg_b);
    a.s.queue_audio(speech, rate).unwrap();
    let total = speech.len() as u64 * 1000 / u64::from(rate) + 400;
    let mut in_flight: Vec<(Instant, Vec<u8>)> = Vec::new();
    let mut sent_upto = 0;
    let mut t = a.t0;
    while t < a.at(total) {
        t += Duration::from_millis(1);
        a.run_to(t);
        for p in &a.rtp[sent_upto..] {
            if let Some(d) = delay_ms(p.seq) {
                let mut data = Vec::new();
                rtp::write(
                    &mut data,
                    p.marker,
                    p.pt,
                    p.seq,
                    p.ts,
                    a.s.ssrc(),
                    &p.payload,
                );
                in_flight.push((p.at + Duration::from_millis(d), data));
            }
        }
        sent_upto = a.rtp.len();
        in_flight.sort_by_key(|x| x.0);
        while in_flight.first().is_some_and(|x| x.0 <= t) {
            let (at, data) = in_flight.remove(0);
            b.deliver(at, SDP_RTP, &data);
        }
        b.run_to(t);
    }
    (b.frames(), b.s.stats())
}

#[test]
fn speech_crosses_two_sessions_intact_with_g722_and_pcmu() {
    let (jfk, _) = read_wav("jfk.wav");
    let jfk = &jfk[..16000 * 3];
    for codec in [Codec::G722, Codec::Pcmu] {
        let reference = Resampler::resample_all(jfk, 16000, codec.sample_rate()).unwrap();
        let (frames, stats) = end_to_end(codec, jfk, 16000, |_| Some(30));
        let played: Vec<i16> = frames.iter().flat_map(|f| f.0.iter().copied()).collect();
        // B plays A's audio later, by up to ~100 ms.
        let max = codec.sample_rate() as isize / 8;
        let (lag, ncc) = best_lag_in(&reference, &played, 0..=max);
        assert!(ncc >= 0.9, "{codec}: ncc {ncc}");
        // Played network (30) + buffer (40) ms after it was sent, rounded up to B's next tick.
        let lag_ms = lag * 1000 / codec.sample_rate() as isize;
        assert!(
            (60..=90).contains(&lag_ms),
            "{codec}: mouth-to-ear {lag_ms} ms"
        );
        assert_eq!(stats.packets_lost, 0);
        assert_eq!(stats.late_packets, 0);
    }
}

#[test]
fn speech_survives_jitter_reordering_and_loss() {
    let (jfk, _) = read_wav("jfk.wav");
    let jfk = &jfk[..16000 * 3];
    let reference = Resampler::resample_all(jfk, 16000, 8000).unwrap();
    // 20-60 ms jitter (reorders neighbours), 2% loss.
    let (frames, stats) = end_to_end(Codec::Pcmu, jfk, 16000, |seq| {
        let h = super::splitmix64(&mut u64::from(seq));
        (!h.is_multiple_of(50)).then_some(20 + (h >> 8) % 41)
    });
    let played: Vec<i16> = frames.iter().flat_map(|f| f.0.iter().copied()).collect();
    // The buffer grows by whole frames while adapting, so alignment shifts in 20 ms steps:
    // compare 250 ms segments, each at its own best lag near the overall one.
    let (base, _) = best_lag(&reference, &played, 1600);
    let seg = 2000;
    let mut scores = Vec::new();
    for start in (1600..played.len().saturating_sub(seg)).step_by(seg) {
        let p = &played[start..start + seg];
        let best = (-3..=3)
            .flat_map(|k| (-2..=2).map(move |d| base + 160 * k + d))
            .filter_map(|lag| {
                let from = usize::try_from(start as isize - lag).ok()?;
                let r = reference.get(from..from + seg)?;
                (rms(r) > 300.0).then(|| super::test_util::ncc_at(r, p, 0))
            })
            .fold(f64::MIN, f64::max);
        if best > f64::MIN {
            scores.push(best);
        }
    }
    scores.sort_by(f64::total_cmp);
    let median = scores[scores.len() / 2];
    assert!(median >= 0.9, "median segment ncc {median}: {scores:?}");
    assert!(stats.packets_lost >= 1);
    assert!(stats.frames_concealed > stats.packets_lost);
    assert!(stats.jitter_ms > 5.0, "jitter {}", stats.jitter_ms);
}

// ---- receiving, latching ----

fn peer_audio(peer: &mut Peer) -> Vec<u8> {
    peer.packet(&[0x20; 160], 160) // loud-ish µ-law
}

#[test]
fn comfort_silence_is_played_until_rtp_arrives() {
    let mut h = Harness::new(config(Codec::Pcmu));
    h.run_ms(200); // ticks at 0, 20, ..., 200
    let frames = h.frames();
    assert_eq!(frames.len(), 11);
    assert!(frames
        .iter()
        .all(|(pcm, concealed)| *concealed && pcm.len() == 160 && pcm.iter().all(|&s| s == 0)));
}

#[test]
fn peer_packets_of_another_size_play_without_gaps() {
    // The far end sends 30 ms packets (its own ptime) while we tick every 20 ms.
    let mut h = Harness::new(config(Codec::Pcmu));
    let mut peer = Peer::new(0x1111, 0);
    for i in 0..100u64 {
        h.deliver(h.at(30 * i + 25), SDP_RTP, &peer.packet(&[0x20; 240], 240));
    }
    h.run_to(h.at(3500));
    let frames = h.frames();
    let start = frames.iter().position(|f| !f.1).unwrap();
    let end = frames.iter().rposition(|f| !f.1).unwrap();
    assert!(frames[start..=end].iter().all(|f| !f.1 && f.0.len() == 160));
    assert_eq!(end - start + 1, 150, "3 s of audio in 20 ms frames");
    assert_eq!(h.s.stats().late_packets, 0);
}

#[test]
fn rtp_goes_to_sdp_address_until_valid_rtp_latches_it_elsewhere() {
    let mut h = Harness::new(config(Codec::Pcmu));
    h.run_ms(40);
    assert!(h.rtp.iter().all(|p| p.dest == addr(SDP_RTP)));
    let mut peer = Peer::new(0x1111, 0);
    // Garbage and unnegotiated payload types from the NAT address do not latch.
    h.deliver(h.at(45), NAT_RTP, &[0x80, 0, 1]);
    let mut wrong_pt = Peer::new(0x1111, 18);
    h.deliver(h.at(46), NAT_RTP, &wrong_pt.packet(&[0; 20], 160));
    h.run_ms(20);
    assert_eq!(h.rtp.last().unwrap().dest, addr(SDP_RTP));
    // Valid RTP from the NAT address: from now on we send there.
    h.deliver(h.at(70), NAT_RTP, &peer_audio(&mut peer));
    h.run_ms(20);
    assert_eq!(h.rtp.last().unwrap().dest, addr(NAT_RTP));
    assert_eq!(h.s.rtp_destination(), addr(NAT_RTP));
    assert_eq!(
        h.count(|e| *e
            == MediaEvent::Latched {
                addr: addr(NAT_RTP)
            }),
        1
    );
    let st = h.s.stats();
    assert_eq!(
        (
            st.malformed_packets,
            st.unknown_payload_type_packets,
            st.latch_changes
        ),
        (1, 1, 1)
    );
}

#[test]
fn third_address_is_ignored_while_the_peer_keeps_talking() {
    let mut h = Harness::new(config(Codec::Pcmu));
    let mut peer = Peer::new(0x1111, 0);
    let mut intruder = Peer::new(0x6666, 0);
    for i in 0..50u64 {
        h.deliver(h.at(20 * i), SDP_RTP, &peer_audio(&mut peer));
        h.deliver(
            h.at(20 * i + 5),
            "203.0.113.66:5000",
            &intruder.packet(&[0xff; 160], 160),
        );
    }
    h.run_ms(100);
    assert_eq!(h.s.rtp_destination(), addr(SDP_RTP));
    assert_eq!(h.s.remote_ssrc(), Some(0x1111));
    let st = h.s.stats();
    assert_eq!(st.foreign_packets, 50);
    assert_eq!(st.packets_received, 50);
    assert_eq!(st.ssrc_changes, 0);
}

#[test]
fn new_source_that_stays_takes_over_and_ssrc_change_resets_playout() {
    let mut h = Harness::new(config(Codec::Pcmu));
    let mut peer = Peer::new(0x1111, 0);
    for i in 0..50u64 {
        h.deliver(h.at(20 * i), SDP_RTP, &peer_audio(&mut peer));
    }
    // Transfer: the old stream stops, a new one (other SSRC, other address, other timeline)
    // starts and stays.
    let mut transferred = Peer::new(0x2222, 0);
    transferred.ts = 7_000_000;
    transferred.seq = 40_000;
    for i in 50..150u64 {
        h.deliver(h.at(20 * i), NAT_RTP, &peer_audio(&mut transferred));
    }
    h.run_ms(100);
    assert_eq!(h.s.remote_ssrc(), Some(0x2222));
    assert_eq!(h.s.rtp_destination(), addr(NAT_RTP));
    assert_eq!(
        h.count(|e| *e
            == MediaEvent::RemoteSsrcChanged {
                old: 0x1111,
                new: 0x2222
            }),
        1
    );
    let st = h.s.stats();
    assert_eq!(st.ssrc_changes, 1);
    assert_eq!(
        st.foreign_packets, 0,
        "held packets were replayed, not lost"
    );
    assert_eq!(st.packets_received, 150);
    assert_eq!(
        st.packets_lost, 0,
        "sequence tracking restarted with the new SSRC"
    );
    assert_eq!(st.late_packets, 0);
    // Played the new stream continuously to the end.
    let frames = h.frames();
    assert!(frames[frames.len() - 60..frames.len() - 5]
        .iter()
        .all(|f| !f.1));
}

#[test]
fn ssrc_change_on_the_same_address_is_followed_within_two_packets() {
    let mut h = Harness::new(config(Codec::Pcmu));
    let mut peer = Peer::new(0x1111, 0);
    for i in 0..20u64 {
        h.deliver(h.at(20 * i), SDP_RTP, &peer_audio(&mut peer));
    }
    let mut reinvited = Peer::new(0x3333, 0);
    for i in 20..40u64 {
        h.deliver(h.at(20 * i), SDP_RTP, &peer_audio(&mut reinvited));
    }
    assert_eq!(h.s.remote_ssrc(), Some(0x3333));
    assert_eq!(h.s.stats().packets_received, 40);
    assert_eq!(h.s.stats().latch_changes, 0);
}

#[test]
fn malformed_and_random_packets_never_panic_and_are_counted() {
    let mut h = Harness::new(config(Codec::G722));
    let mut peer = Peer::new(0x1111, 9);
    let mut rng = TestRng(0xfeed);
    let valid = peer.packet(&[0x55; 160], 160);
    let mut expected_bad = 0u64;
    let cases: [&[u8]; 5] = [&[], &[0x80], &valid[..11], &[0x40; 172], &[0x8f; 20]];
    for c in cases {
        h.s.handle_rtp(h.now, addr(NAT_RTP), c);
        h.s.handle_rtcp(h.now, addr(SDP_RTCP), c);
        expected_bad += 1;
    }
    assert_eq!(h.s.stats().malformed_packets, expected_bad);
    for i in 0..4000u64 {
        let len = rng.below(300) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if i % 2 == 0 && len > 0 {
            // Mutations of a valid packet reach deeper into the parsers.
            data = valid.clone();
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let at = rng.below(data.len() as u64) as usize;
                data[at] = rng.next_u64() as u8;
            }
            data.truncate(rng.below(data.len() as u64 + 1) as usize);
        }
        let t = h.now + Duration::from_micros(500);
        h.run_to(t);
        h.s.handle_rtp(t, addr(NAT_RTP), &data);
        h.s.handle_rtcp(t, addr(SDP_RTCP), &data);
        h.drain();
    }
    let st = h.s.stats();
    let rejected = st.malformed_packets + st.unknown_payload_type_packets + st.rtcp_malformed;
    assert!(rejected > 4000, "rejections counted: {st:?}");
    // The call still works: a stream from a fresh source plays after the noise.
    let mut fresh = Peer::new(0x7777, 9);
    let start = h.now;
    let mut enc = super::codec_impl::AudioEncoder::new(Codec::G722);
    for i in 0..30u32 {
        let mut p = Vec::new();
        enc.encode(&loud(320), &mut p);
        h.deliver(
            start + Duration::from_millis(20 * u64::from(i)),
            NAT_RTP,
            &fresh.packet(&p, 160),
        );
    }
    h.run_ms(200);
    let frames = h.frames();
    assert!(frames[frames.len() - 15..]
        .iter()
        .any(|f| !f.1 && rms(&f.0) > 1000.0));
}

// ---- DTMF ----

#[test]
fn send_dtmf_emits_rfc4733_packets_and_holds_audio_meanwhile() {
    let mut h = Harness::new(config(Codec::Pcmu));
    h.s.queue_audio(&loud(8000), 8000).unwrap();
    h.run_to(h.at(30)); // ticks at 0 and 20 ms carry audio
    let queued = h.s.queued_ms();
    h.s.send_dtmf('#', 100).unwrap();
    h.run_to(h.at(170)); // ticks 40..=160: the event
    assert_eq!(
        h.s.queued_ms(),
        queued,
        "audio is held, not dropped, during the event"
    );
    h.run_to(h.at(190));
    let p = &h.rtp;
    let event: Vec<&Sent> = p.iter().filter(|x| x.pt == DTMF_PT).collect();
    assert_eq!(event.len(), 7, "4 updates (20-80 ms) and 3 end packets");
    let blocks: Vec<EventBlock> = event
        .iter()
        .map(|x| EventBlock::parse(&x.payload).unwrap())
        .collect();
    assert!(blocks.iter().all(|b| b.event == 11 && b.volume == 10));
    assert_eq!(
        blocks.iter().map(|b| b.duration).collect::<Vec<_>>(),
        [160, 320, 480, 640, 800, 800, 800]
    );
    assert_eq!(
        blocks.iter().map(|b| b.end).collect::<Vec<_>>(),
        [false, false, false, false, true, true, true]
    );
    assert!(event[0].marker && event[1..].iter().all(|x| !x.marker));
    assert!(
        event.iter().all(|x| x.ts == p[2].ts),
        "one timestamp: the event start"
    );
    // Packets are one per tick, sequence numbers continuous throughout.
    for (i, x) in p.iter().enumerate() {
        assert_eq!(x.seq, p[0].seq.wrapping_add(i as u16));
    }
    assert_eq!(p[2..9].iter().filter(|x| x.pt == DTMF_PT).count(), 7);
    // Audio resumes with a marker and the timestamp of its own tick.
    assert_eq!(p[9].pt, 0);
    assert!(p[9].marker);
    assert_eq!(p[9].ts, p[0].ts.wrapping_add(9 * 160));
    assert!(p[9].payload.iter().any(|&b| b != 0xff));
}

#[test]
fn send_dtmf_refuses_what_cannot_be_sent() {
    let mut h = Harness::new(config(Codec::Pcmu));
    assert!(matches!(
        h.s.send_dtmf('x', 100),
        Err(MediaError::InvalidDtmfDigit('x'))
    ));
    assert!(matches!(
        h.s.send_dtmf('1', 5),
        Err(MediaError::InvalidDtmfDuration(5))
    ));
    let mut n = neg(Codec::Pcmu);
    n.dtmf_payload_type = None;
    h.s.update_negotiated(h.now, n).unwrap();
    assert!(matches!(
        h.s.send_dtmf('1', 100),
        Err(MediaError::DtmfNotNegotiated)
    ));
    let mut n = neg(Codec::Pcmu);
    n.direction = Direction::RecvOnly;
    h.s.update_negotiated(h.now, n).unwrap();
    assert!(matches!(
        h.s.send_dtmf('1', 100),
        Err(MediaError::DtmfNotSending(Direction::RecvOnly))
    ));
}

fn dtmf_packet(peer: &mut Peer, event: u8, end: bool, duration: u16) -> Vec<u8> {
    let block = EventBlock {
        event,
        end,
        volume: 10,
        duration,
    };
    let mut out = Vec::new();
    rtp::write(
        &mut out,
        duration == 160,
        DTMF_PT,
        peer.seq,
        peer.ts,
        peer.ssrc,
        &block.to_bytes(),
    );
    peer.seq = peer.seq.wrapping_add(1);
    out
}

#[test]
fn received_dtmf_is_reported_once_per_digit_even_with_lost_end_packets() {
    let mut h = Harness::new(config(Codec::Pcmu));
    let mut peer = Peer::new(0x1111, 0);
    let mut t = 0u64;
    let mut next = |h: &mut Harness, data: Vec<u8>| {
        t += 20;
        h.deliver(h.at(t), SDP_RTP, &data);
    };
    // Digit '1': updates, then three end packets.
    for d in [160, 320, 480] {
        let p = dtmf_packet(&mut peer, 1, false, d);
        next(&mut h, p);
    }
    for _ in 0..3 {
        let p = dtmf_packet(&mut peer, 1, true, 640);
        next(&mut h, p);
    }
    peer.ts = peer.ts.wrapping_add(1600);
    // Digit '9': all end packets lost.
    for d in [160, 320] {
        let p = dtmf_packet(&mut peer, 9, false, d);
        next(&mut h, p);
    }
    h.run_ms(500);
    // Digit 'D': only end packets arrive.
    peer.ts = peer.ts.wrapping_add(4000);
    for _ in 0..3 {
        let p = dtmf_packet(&mut peer, 15, true, 400);
        next(&mut h, p);
    }
    h.run_ms(500);
    let digits: Vec<(char, u32)> = h
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            MediaEvent::Dtmf { digit, duration_ms } => Some((*digit, *duration_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(digits, [('1', 80), ('9', 40), ('D', 50)]);
    assert_eq!(h.s.stats().dtmf_received, 3);
}

#[test]
fn dtmf_sent_by_one_session_is_detected_by_another() {
    let mut a = Harness::new(config(Codec::G722));
    let mut cfg = config(Codec::G722);
    cfg.ssrc = 0xb0b;
    let mut b = Harness::new(cfg);
    for d in ['4', '2', '*'] {
        a.s.send_dtmf(d, 120).unwrap();
    }
    a.run_to(a.at(1000));
    for (i, p) in a.rtp.iter().enumerate() {
        if i % 7 == 3 {
            continue; // some loss, including end packets
        }
        let mut data = Vec::new();
        rtp::write(
            &mut data,
            p.marker,
            p.pt,
            p.seq,
            p.ts,
            a.s.ssrc(),
            &p.payload,
        );
        b.deliver(p.at + Duration::from_millis(30), SDP_RTP, &data);
    }
    b.run_to(b.at(1500));
    let digits: Vec<char> = b
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            MediaEvent::Dtmf { digit, .. } => Some(*digit),
            _ => None,
        })
        .collect();
    assert_eq!(digits, ['4', '2', '*']);
}

// ---- RTCP ----

fn parse_rtcp(t: &Transmit) -> Vec<RtcpPacket> {
    rtcp::parse_compound(&t.data).unwrap()
}

#[test]
fn rtcp_sender_report_with_receiver_block_every_five_seconds_parses_back() {
    let mut h = Harness::new(config(Codec::Pcmu));
    let mut peer = Peer::new(0x1111, 0);
    for i in 0..600u64 {
        if i % 10 == 5 {
            peer.packet(&[], 160); // lost
            continue;
        }
        h.deliver(h.at(20 * i), SDP_RTP, &peer_audio(&mut peer));
    }
    h.run_to(h.at(15_100)); // two reports even at the longest randomized intervals
                            // RFC 3550 randomization: intervals within 2.5-7.5 s, mean 5 s.
    let times: Vec<u64> = h
        .rtcp
        .iter()
        .map(|(t, _)| t.duration_since(h.t0).as_millis() as u64)
        .collect();
    assert!(times.len() >= 2, "{times:?}");
    assert!((2500..=7500).contains(&times[0]));
    for w in times.windows(2) {
        assert!((2500..=7500).contains(&(w[1] - w[0])), "{times:?}");
    }
    let (at, t) = &h.rtcp[0];
    assert_eq!(t.dest, addr(SDP_RTCP));
    assert_eq!(t.kind, TransmitKind::Rtcp);
    let packets = parse_rtcp(t);
    let RtcpPacket::SenderReport {
        ssrc,
        info,
        reports,
    } = &packets[0]
    else {
        panic!("expected SR first, got {packets:?}");
    };
    assert_eq!(*ssrc, h.s.ssrc());
    let sent_before = h.rtp.iter().filter(|p| p.at <= *at).count() as u32;
    assert_eq!(info.packet_count, sent_before);
    assert_eq!(info.octet_count, sent_before * 160);
    let elapsed = at.duration_since(h.t0);
    assert_eq!(
        info.ntp >> 32,
        2_208_988_800 + 1_700_000_000 + elapsed.as_secs()
    );
    assert_eq!(
        info.rtp_ts,
        h.rtp[0]
            .ts
            .wrapping_add((elapsed.as_nanos() * 8 / 1_000_000) as u32)
    );
    assert_eq!(reports.len(), 1);
    let b = reports[0];
    assert_eq!(b.ssrc, 0x1111);
    assert!(
        (20..=30).contains(&b.fraction_lost),
        "10% loss is ~25/256: {}",
        b.fraction_lost
    );
    assert!(b.cumulative_lost > 0);
    assert_eq!(b.lsr, 0, "no SR from the peer yet");
    assert!(matches!(
        packets[1],
        RtcpPacket::Other {
            packet_type: rtcp::PT_SDES
        }
    ));
}

#[test]
fn round_trip_time_comes_from_the_peers_receiver_report() {
    let mut h = Harness::new(config(Codec::Pcmu));
    h.run_to(h.at(7600));
    let (sr_at, sr) = h.rtcp[0].clone();
    let RtcpPacket::SenderReport { info, .. } = parse_rtcp(&sr)[0].clone() else {
        panic!("expected SR");
    };
    // The peer answers 100 ms later having held our SR for 60 ms: RTT 40 ms.
    let block = rtcp::ReportBlock {
        ssrc: h.s.ssrc(),
        fraction_lost: 13,
        cumulative_lost: 4,
        ext_highest_seq: 100,
        jitter: 24,
        lsr: rtcp::ntp_middle(info.ntp),
        dlsr: (0.060 * 65536.0) as u32,
    };
    let mut rr = Vec::new();
    rtcp::write_report(&mut rr, 0x1111, None, &[block]);
    let t = sr_at + Duration::from_millis(100);
    h.s.handle_rtcp(t, addr("198.51.100.20:61001"), &rr);
    let st = h.s.stats();
    let rtt = st.rtt_ms.unwrap();
    assert!((rtt - 40.0).abs() < 0.1, "rtt {rtt}");
    assert_eq!(st.remote_packets_lost, Some(4));
    assert_eq!(st.remote_jitter_ms, Some(3.0));
    assert_eq!(st.remote_fraction_lost, Some(13.0 / 256.0));
    assert_eq!(st.rtcp_received, 1);
    // An RR from an unknown SSRC does not move where our RTCP goes.
    assert_eq!(h.s.rtcp_destination(), addr(SDP_RTCP));
}

#[test]
fn receiver_report_only_and_no_rtp_when_recvonly() {
    let mut cfg = config(Codec::Pcmu);
    cfg.negotiated.direction = Direction::RecvOnly;
    let mut h = Harness::new(cfg);
    let mut peer = Peer::new(0x1111, 0);
    for i in 0..400u64 {
        h.deliver(h.at(20 * i), SDP_RTP, &peer_audio(&mut peer));
    }
    h.run_to(h.at(8000));
    assert!(h.rtp.is_empty(), "recvonly sends no RTP");
    assert!(!h.rtcp.is_empty());
    for (_, t) in &h.rtcp {
        assert!(matches!(
            parse_rtcp(t)[0],
            RtcpPacket::ReceiverReport { .. }
        ));
    }
    assert_eq!(h.frames().len(), 401, "one per tick, 0..=8000 ms");
}

#[test]
fn inactive_sends_nothing_but_rtcp_and_expects_nothing() {
    let mut cfg = config(Codec::Pcmu);
    cfg.negotiated.direction = Direction::Inactive;
    cfg.media_timeout = Some(Duration::from_secs(2));
    let mut h = Harness::new(cfg);
    h.run_to(h.at(10_000));
    assert!(h.rtp.is_empty());
    assert!(!h.rtcp.is_empty());
    assert!(h.frames().is_empty());
    assert_eq!(h.count(|e| *e == MediaEvent::MediaTimeout), 0);
}

#[test]
fn close_sends_bye_and_stops_the_session() {
    let mut h = Harness::new(config(Codec::Pcmu));
    h.run_to(h.at(100));
    h.s.close(h.now);
    h.drain();
    let packets = parse_rtcp(&h.rtcp.last().unwrap().1);
    assert!(matches!(packets.last(), Some(RtcpPacket::Bye { ssrcs }) if ssrcs == &[h.s.ssrc()]));
    assert_eq!(h.s.poll_timeout(), None);
    assert!(matches!(
        h.s.queue_audio(&[0; 8], 8000),
        Err(MediaError::Closed)
    ));
}

// ---- media timeout, hold ----

#[test]
fn media_timeout_fires_once_then_rearms_when_rtp_returns() {
    let mut cfg = config(Codec::Pcmu);
    cfg.media_timeout = Some(Duration::from_secs(3));
    let mut h = Harness::new(cfg);
    let mut peer = Peer::new(0x1111, 0);
    for i in 0..50u64 {
        h.deliver(h.at(20 * i), SDP_RTP, &peer_audio(&mut peer));
    }
    h.run_to(h.at(10_000));
    let timeouts: Vec<Instant> = h
        .events
        .iter()
        .filter(|(_, e)| *e == MediaEvent::MediaTimeout)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(
        timeouts,
        [h.at(980 + 3000)],
        "once, exactly 3 s after the last packet"
    );
    h.deliver(h.at(10_000), SDP_RTP, &peer_audio(&mut peer));
    h.run_to(h.at(14_000));
    assert_eq!(h.count(|e| *e == MediaEvent::MediaTimeout), 2);
    assert_eq!(h.s.stats().media_timeouts, 2);
}

#[test]
fn media_timeout_never_fires_on_hold_and_restarts_after_it() {
    let mut cfg = config(Codec::Pcmu);
    cfg.media_timeout = Some(Duration::from_secs(3));
    let mut h = Harness::new(cfg);
    let mut hold = neg(Codec::Pcmu);
    hold.direction = Direction::SendOnly;
    h.s.update_negotiated(h.at(0), hold).unwrap();
    h.run_to(h.at(19_990));
    assert_eq!(h.count(|e| *e == MediaEvent::MediaTimeout), 0);
    assert!(h.frames().is_empty(), "on hold nothing is played out");
    assert_eq!(h.rtp.len(), 1000, "sendonly still sends every 20 ms");
    h.s.update_negotiated(h.at(19_990), neg(Codec::Pcmu))
        .unwrap();
    h.run_to(h.at(22_980));
    assert_eq!(h.count(|e| *e == MediaEvent::MediaTimeout), 0);
    h.run_to(h.at(22_990));
    assert_eq!(h.count(|e| *e == MediaEvent::MediaTimeout), 1);
}

#[test]
fn media_timeout_never_fires_while_the_peer_holds_us() {
    // The peer's sendonly makes us recvonly: it may send nothing at all while holding.
    let mut cfg = config(Codec::Pcmu);
    cfg.media_timeout = Some(Duration::from_secs(3));
    let mut h = Harness::new(cfg);
    let mut held = neg(Codec::Pcmu);
    held.direction = Direction::RecvOnly;
    h.s.update_negotiated(h.at(0), held).unwrap();
    h.run_to(h.at(20_000));
    assert_eq!(h.count(|e| *e == MediaEvent::MediaTimeout), 0);
    h.s.update_negotiated(h.at(20_000), neg(Codec::Pcmu))
        .unwrap();
    h.run_to(h.at(22_990));
    assert_eq!(
        h.count(|e| *e == MediaEvent::MediaTimeout),
        0,
        "restarted at resume"
    );
    h.run_to(h.at(23_010));
    assert_eq!(h.count(|e| *e == MediaEvent::MediaTimeout), 1);
}

#[test]
fn media_timeout_zero_disables_it() {
    let mut cfg = config(Codec::Pcmu);
    cfg.media_timeout = Some(Duration::ZERO);
    let mut h = Harness::new(cfg);
    h.run_to(h.at(120_000));
    assert_eq!(h.count(|e| *e == MediaEvent::MediaTimeout), 0);
}

// ---- re-INVITE ----

#[test]
fn reinvite_changing_codec_and_ptime_keeps_the_stream_continuous() {
    let mut h = Harness::new(config(Codec::Pcmu));
    h.s.queue_audio(&loud(8000), 8000).unwrap(); // 1 s
    h.run_to(h.at(210)); // ticks 0..=200: 11 packets
    let queued = h.s.queued_ms();
    let mut n = neg(Codec::G722);
    n.ptime_ms = 30;
    n.remote_rtp = addr("192.0.2.99:50000");
    h.s.update_negotiated(h.at(210), n).unwrap();
    assert_eq!(h.s.queued_ms(), queued, "queued audio converted, not lost");
    h.run_to(h.at(400));
    let p = &h.rtp;
    assert_eq!(
        p.len(),
        11 + 7,
        "220 ms then every 30 ms: 220, 250, ..., 400"
    );
    assert_eq!(p[11].at, h.at(220), "the next tick keeps its due time");
    assert_eq!(p[12].at, h.at(250));
    for i in 1..p.len() {
        assert_eq!(p[i].seq, p[i - 1].seq.wrapping_add(1));
        let step = if i <= 11 { 160 } else { 240 };
        assert_eq!(p[i].ts.wrapping_sub(p[i - 1].ts), step, "ts step at {i}");
    }
    assert_eq!(p[11].pt, 9);
    assert!(p[11].marker, "new codec, new talk-spurt");
    assert_eq!(p[11].payload.len(), 240, "30 ms of G.722");
    assert_eq!(
        p[11].dest,
        addr("192.0.2.99:50000"),
        "SDP moved the peer: unlatched"
    );
    let frames = h.frames();
    assert_eq!(frames.last().unwrap().0.len(), 480, "30 ms at 16 kHz");
}

#[test]
fn reinvite_rejects_an_impossible_ptime_and_keeps_the_old_one() {
    let mut h = Harness::new(config(Codec::Pcmu));
    let mut n = neg(Codec::Pcmu);
    n.ptime_ms = 0;
    assert!(matches!(
        h.s.update_negotiated(h.now, n),
        Err(MediaError::InvalidPtime(0))
    ));
    assert_eq!(h.s.negotiated().ptime_ms, 20);
    let mut cfg = config(Codec::Pcmu);
    cfg.negotiated.ptime_ms = 1000;
    assert!(MediaSession::new(cfg, Instant::now()).is_err());
}

// ---- recording, stats ----

#[test]
fn recorder_writes_a_two_channel_wav_of_the_call_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("call.wav");
    let mut cfg = config(Codec::Pcmu);
    cfg.record = true;
    let mut h = Harness::new(cfg);
    let mut rec = Recorder::create(&path, 8000).unwrap();
    let mut peer = Peer::new(0x1111, 0);
    h.s.queue_audio(&loud(4000), 8000).unwrap(); // agent speaks for 0.5 s
    for i in 0..100u64 {
        h.deliver(h.at(20 * i), SDP_RTP, &peer_audio(&mut peer));
    }
    h.run_to(h.at(2990));
    for (_, e) in &h.events {
        rec.handle_event(e).unwrap();
    }
    assert_eq!(rec.duration(), Duration::from_secs(3));
    rec.finish().unwrap();
    let mut r = hound::WavReader::open(&path).unwrap();
    let spec = r.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 8000, 16)
    );
    let samples: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    assert_eq!(samples.len(), 2 * 8000 * 3);
    let caller: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let agent: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    // Agent: the first 0.5 s, then silence. Caller: from ~60 ms (buffer delay) to ~2.06 s.
    assert!(rms(&agent[..4000]) > 7000.0);
    assert_eq!(rms(&agent[4000..]), 0.0);
    assert!(rms(&caller[1000..16000]) > 1000.0);
    assert_eq!(rms(&caller[17600..]), 0.0);
}

#[test]
fn media_stats_survive_a_json_round_trip() {
    let mut h = Harness::new(config(Codec::Pcmu));
    let mut peer = Peer::new(0x1111, 0);
    for i in 0..10u64 {
        h.deliver(h.at(20 * i), SDP_RTP, &peer_audio(&mut peer));
    }
    h.run_ms(100);
    let st = h.s.stats();
    assert_eq!(st.packets_received, 10);
    assert!(st.packets_sent >= 10);
    let json = serde_json::to_string(&st).unwrap();
    let back: MediaStats = serde_json::from_str(&json).unwrap();
    assert_eq!(back, st);
    // Older records with fewer fields still load.
    let partial: MediaStats = serde_json::from_str(r#"{"packets_sent": 3}"#).unwrap();
    assert_eq!(partial.packets_sent, 3);
}

#[test]
fn session_and_recorder_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<MediaSession>();
    assert_send::<Recorder>();
    assert_send::<Resampler>();
}

#[test]
fn received_frames_convert_to_16khz_for_asr_with_constant_latency() {
    let (harvard, _) = read_wav("harvard_8k.wav");
    let mut to_asr = Resampler::to_asr(8000).unwrap();
    let mut out = Vec::new();
    let mut sizes = Vec::new();
    for frame in harvard[..8000 * 2].chunks(160) {
        let before = out.len();
        to_asr.process(frame, &mut out).unwrap();
        sizes.push(out.len() - before);
    }
    assert_eq!(
        sizes[0], 160,
        "the first frame loses the 10 ms filter delay"
    );
    assert!(
        sizes[1..].iter().all(|&n| n == 320),
        "then 320 samples per frame"
    );
    let back = Resampler::resample_all(&out, 16000, 8000).unwrap();
    let (lag, ncc) = best_lag(&harvard[..back.len()], &back, 10);
    assert_eq!(lag, 0);
    assert!(ncc > 0.99, "ncc {ncc}");
    assert!(Resampler::to_asr(16000).is_ok());
}

#[test]
fn config_from_a_seed_is_deterministic_and_varies_with_the_seed() {
    let a = MediaConfig::new(neg(Codec::Pcmu), 1);
    let b = MediaConfig::new(neg(Codec::Pcmu), 1);
    let c = MediaConfig::new(neg(Codec::Pcmu), 2);
    assert_eq!(
        (a.ssrc, a.initial_seq, a.initial_ts),
        (b.ssrc, b.initial_seq, b.initial_ts)
    );
    assert_ne!(a.ssrc, c.ssrc);
    let _ = SystemTime::now;
}
