//! DTMF as RFC 4733 telephone-events: a sender driven by the 20 ms clock and a receiver that
//! reports each digit exactly once.
//!
//! Receiving: an event is identified by its RTP timestamp. It is reported when its first end
//! packet arrives; repeated end packets and late updates for an already reported timestamp are
//! ignored. If every end packet is lost, the event is reported when the next event starts or
//! when nothing has been heard of it for 200 ms, with the last duration seen. A long event sent
//! as several segments (RFC 4733 §2.5.1.3, duration overflow) is joined into one digit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// 0-9, *, #, A-D in RFC 4733 §3.2 order.
const DIGITS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
];

pub(crate) fn digit_to_event(c: char) -> Option<u8> {
    let c = c.to_ascii_uppercase();
    DIGITS.iter().position(|&d| d == c).map(|i| i as u8)
}

pub(crate) fn event_to_digit(e: u8) -> Option<char> {
    DIGITS.get(usize::from(e)).copied()
}

/// One 4-octet event block (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventBlock {
    pub event: u8,
    pub end: bool,
    pub volume: u8,
    pub duration: u16,
}

impl EventBlock {
    pub(crate) fn parse(p: &[u8]) -> Option<Self> {
        let b = p.get(..4)?;
        Some(EventBlock {
            event: b[0],
            end: b[1] & 0x80 != 0,
            volume: b[1] & 0x3f,
            duration: u16::from_be_bytes([b[2], b[3]]),
        })
    }

    pub(crate) fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }
}

/// A telephone-event packet to send in place of this tick's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DtmfPacket {
    pub payload: [u8; 4],
    pub marker: bool,
    pub timestamp: u32,
}

struct Sending {
    event: u8,
    timestamp: u32,
    total: u32,
    packets: u32,
    ends: u8,
}

#[derive(Default)]
pub(crate) struct DtmfSender {
    queue: VecDeque<(u8, u32)>,
    active: Option<Sending>,
    gap_ticks_left: u32,
}

impl DtmfSender {
    /// -10 dBm0, the customary level.
    const VOLUME: u8 = 10;
    const END_PACKETS: u8 = 3;
    /// Digits waiting at most (a full phone number and then some).
    pub(crate) const MAX_QUEUED: usize = 64;

    pub(crate) fn enqueue(&mut self, event: u8, duration_ts: u32) -> bool {
        if self.queue.len() >= Self::MAX_QUEUED {
            return false;
        }
        self.queue
            .push_back((event, duration_ts.min(u32::from(u16::MAX))));
        true
    }

    pub(crate) fn clear(&mut self) {
        self.queue.clear();
        self.active = None;
        self.gap_ticks_left = 0;
    }

    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.active.is_none() && self.queue.is_empty()
    }

    /// Called on every send tick. `Some` replaces this tick's audio packet. Between two digits,
    /// `gap_ticks` ticks of audio keep them apart for the far end's detector.
    pub(crate) fn on_tick(
        &mut self,
        tick_ts: u32,
        frame_ts: u32,
        gap_ticks: u32,
    ) -> Option<DtmfPacket> {
        if self.active.is_none() {
            if self.gap_ticks_left > 0 {
                self.gap_ticks_left -= 1;
                return None;
            }
            let (event, total) = self.queue.pop_front()?;
            self.active = Some(Sending {
                event,
                timestamp: tick_ts,
                total,
                packets: 0,
                ends: 0,
            });
        }
        let a = self.active.as_mut()?;
        let elapsed = (a.packets + 1).saturating_mul(frame_ts);
        let marker = a.packets == 0;
        a.packets += 1;
        let block = if a.ends == 0 && elapsed < a.total {
            EventBlock {
                event: a.event,
                end: false,
                volume: Self::VOLUME,
                duration: elapsed as u16,
            }
        } else {
            a.ends += 1;
            EventBlock {
                event: a.event,
                end: true,
                volume: Self::VOLUME,
                duration: a.total as u16,
            }
        };
        let packet = DtmfPacket {
            payload: block.to_bytes(),
            marker,
            timestamp: a.timestamp,
        };
        if a.ends >= Self::END_PACKETS {
            self.active = None;
            self.gap_ticks_left = gap_ticks;
        }
        Some(packet)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Detected {
    pub digit: char,
    pub duration_ms: u32,
}

struct Receiving {
    ts: i64,
    event: u8,
    /// Duration of earlier segments of the same long event.
    base: u32,
    segment: u32,
    last_seen: Instant,
}

#[derive(Default)]
pub(crate) struct DtmfReceiver {
    current: Option<Receiving>,
    last_done: Option<i64>,
    last_ext: Option<i64>,
}

impl DtmfReceiver {
    const STALE: Duration = Duration::from_millis(200);
    /// telephone-event/8000.
    const TS_PER_MS: u32 = 8;

    fn unwrap_ts(&mut self, ts: u32) -> i64 {
        let ext = match self.last_ext {
            None => i64::from(ts),
            Some(last) => last + i64::from(ts.wrapping_sub(last as u32) as i32),
        };
        self.last_ext = Some(ext.max(self.last_ext.unwrap_or(ext)));
        ext
    }

    fn finish(&mut self, out: &mut Vec<Detected>) {
        if let Some(cur) = self.current.take() {
            self.last_done = Some(cur.ts);
            if let Some(digit) = event_to_digit(cur.event) {
                out.push(Detected {
                    digit,
                    duration_ms: cur.base.saturating_add(cur.segment) / Self::TS_PER_MS,
                });
            }
        }
    }

    /// Takes one telephone-event payload; returns false if it is malformed.
    pub(crate) fn on_packet(
        &mut self,
        now: Instant,
        ts: u32,
        payload: &[u8],
        out: &mut Vec<Detected>,
    ) -> bool {
        let Some(block) = EventBlock::parse(payload) else {
            return false;
        };
        let ext = self.unwrap_ts(ts);
        if self.last_done.is_some_and(|done| ext <= done) {
            return true; // retransmitted end or a late update of a reported event
        }
        let dur = u32::from(block.duration);
        let (same, older, next_segment) = match &self.current {
            Some(cur) => {
                let end_of_segment = cur.ts + i64::from(cur.segment);
                let follows = ext.abs_diff(end_of_segment) <= u64::from(2 * Self::TS_PER_MS);
                (
                    cur.ts == ext,
                    ext < cur.ts,
                    cur.event == block.event && follows,
                )
            }
            None => (false, false, false),
        };
        if older {
            return true; // stale update of an event already superseded
        }
        match self.current.as_mut() {
            Some(cur) if same => {
                cur.segment = cur.segment.max(dur);
                cur.last_seen = now;
            }
            Some(cur) if next_segment => {
                // Next segment of the same long press.
                cur.base = cur.base.saturating_add(cur.segment);
                cur.ts = ext;
                cur.segment = dur;
                cur.last_seen = now;
            }
            Some(_) => {
                // A new event: the previous one lost all its end packets.
                self.finish(out);
                self.start(now, ext, block);
            }
            None => self.start(now, ext, block),
        }
        if block.end {
            self.finish(out);
        }
        true
    }

    fn start(&mut self, now: Instant, ext: i64, block: EventBlock) {
        self.current = Some(Receiving {
            ts: ext,
            event: block.event,
            base: 0,
            segment: u32::from(block.duration),
            last_seen: now,
        });
    }

    /// When an unfinished event should be given up on.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.current.as_ref().map(|c| c.last_seen + Self::STALE)
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Detected>) {
        if self.deadline().is_some_and(|d| now >= d) {
            self.finish(out);
        }
    }

    /// A new remote stream: report what was pending, then forget the old timeline.
    pub(crate) fn reset(&mut self, out: &mut Vec<Detected>) {
        self.finish(out);
        *self = DtmfReceiver::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_map_to_rfc4733_event_codes_and_back() {
        for (i, c) in "0123456789*#ABCD".chars().enumerate() {
            assert_eq!(digit_to_event(c), Some(i as u8));
            assert_eq!(event_to_digit(i as u8), Some(c));
        }
        assert_eq!(digit_to_event('a'), Some(12));
        assert_eq!(digit_to_event('x'), None);
        assert_eq!(event_to_digit(16), None); // flash: not a digit
    }

    #[test]
    fn sender_emits_start_with_marker_updates_and_three_ends_on_one_timestamp() {
        let mut s = DtmfSender::default();
        assert!(s.enqueue(5, 100 * 8));
        let mut packets = Vec::new();
        let mut ts = 8000u32;
        while let Some(p) = s.on_tick(ts, 160, 3) {
            packets.push(p);
            ts += 160;
        }
        let blocks: Vec<_> = packets
            .iter()
            .map(|p| EventBlock::parse(&p.payload).unwrap())
            .collect();
        assert_eq!(packets.len(), 4 + 3, "4 updates (20..80 ms) then 3 ends");
        assert!(packets[0].marker);
        assert!(packets[1..].iter().all(|p| !p.marker));
        assert!(packets.iter().all(|p| p.timestamp == 8000));
        let durations: Vec<_> = blocks.iter().map(|b| b.duration).collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
        assert!(blocks[..4]
            .iter()
            .all(|b| !b.end && b.event == 5 && b.volume == 10));
        assert!(blocks[4..].iter().all(|b| b.end));
        assert!(s.is_idle());
    }

    #[test]
    fn sender_keeps_a_gap_between_queued_digits() {
        let mut s = DtmfSender::default();
        s.enqueue(1, 40 * 8);
        s.enqueue(2, 40 * 8);
        let mut trace = Vec::new();
        for k in 0..20u32 {
            trace.push(
                s.on_tick(k * 160, 160, 3)
                    .map(|p| (p.timestamp, p.payload[0])),
            );
        }
        // digit 1: 1 update + 3 ends; 3 audio ticks; digit 2 at a new timestamp.
        assert!(trace[..4].iter().all(|t| *t == Some((0, 1))));
        assert!(trace[4..7].iter().all(Option::is_none));
        assert!(trace[7..11].iter().all(|t| *t == Some((7 * 160, 2))));
        assert!(trace[11..].iter().all(Option::is_none));
    }

    fn block(event: u8, end: bool, duration: u16) -> [u8; 4] {
        EventBlock {
            event,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    }

    #[test]
    fn receiver_reports_each_digit_once_despite_repeated_end_packets() {
        let t0 = Instant::now();
        let mut r = DtmfReceiver::default();
        let mut out = Vec::new();
        for (k, d) in [160u16, 320, 480].iter().enumerate() {
            r.on_packet(
                t0 + Duration::from_millis(20 * k as u64),
                1000,
                &block(7, false, *d),
                &mut out,
            );
        }
        assert!(out.is_empty());
        for _ in 0..3 {
            r.on_packet(
                t0 + Duration::from_millis(80),
                1000,
                &block(7, true, 640),
                &mut out,
            );
        }
        r.on_packet(
            t0 + Duration::from_millis(90),
            1000,
            &block(7, false, 480),
            &mut out,
        ); // reordered update
        r.handle_timeout(t0 + Duration::from_secs(1), &mut out);
        assert_eq!(
            out,
            [Detected {
                digit: '7',
                duration_ms: 80
            }]
        );
    }

    #[test]
    fn receiver_reports_digit_whose_end_packets_were_all_lost() {
        let t0 = Instant::now();
        let mut r = DtmfReceiver::default();
        let mut out = Vec::new();
        r.on_packet(t0, 1000, &block(1, false, 160), &mut out);
        r.on_packet(
            t0 + Duration::from_millis(20),
            1000,
            &block(1, false, 320),
            &mut out,
        );
        // The next digit starts: the first is reported at once.
        r.on_packet(
            t0 + Duration::from_millis(200),
            3000,
            &block(2, false, 160),
            &mut out,
        );
        assert_eq!(
            out,
            [Detected {
                digit: '1',
                duration_ms: 40
            }]
        );
        // No more packets: reported after 200 ms of silence, once.
        r.handle_timeout(t0 + Duration::from_millis(300), &mut out);
        assert_eq!(out.len(), 1);
        r.handle_timeout(t0 + Duration::from_millis(400), &mut out);
        r.handle_timeout(t0 + Duration::from_millis(500), &mut out);
        assert_eq!(
            out[1],
            Detected {
                digit: '2',
                duration_ms: 20
            }
        );
        assert_eq!(out.len(), 2);
        assert!(r.deadline().is_none());
    }

    #[test]
    fn receiver_joins_segments_of_a_long_event() {
        let t0 = Instant::now();
        let mut r = DtmfReceiver::default();
        let mut out = Vec::new();
        r.on_packet(t0, 0, &block(0, false, 65535), &mut out);
        r.on_packet(t0, 65535, &block(0, false, 8000), &mut out);
        r.on_packet(t0, 65535, &block(0, true, 8000), &mut out);
        assert_eq!(
            out,
            [Detected {
                digit: '0',
                duration_ms: (65535 + 8000) / 8
            }]
        );
    }

    #[test]
    fn receiver_rejects_short_payloads() {
        let mut r = DtmfReceiver::default();
        let mut out = Vec::new();
        assert!(!r.on_packet(Instant::now(), 0, &[1, 2, 3], &mut out));
        assert!(out.is_empty());
    }
}
