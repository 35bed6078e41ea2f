//! Per-call media statistics, and the RFC 3550 receive-side bookkeeping behind them.

use serde::{Deserialize, Serialize};

use super::rtcp::ReportBlock;

/// What a call's media did, for the call record. Counters only grow; `jitter_ms`,
/// `jitter_target_ms` and the `remote_*`/`rtt_ms` fields are the latest values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MediaStats {
    /// RTP packets (audio and DTMF) and their bytes, headers included.
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub dtmf_sent: u64,
    /// Valid RTP accepted from the latched source (duplicates excluded).
    pub packets_received: u64,
    pub bytes_received: u64,
    /// RFC 3550 cumulative loss: expected minus received, never negative.
    pub packets_lost: u64,
    pub packets_expected: u64,
    /// RFC 3550 interarrival jitter, latest and highest, in milliseconds.
    pub jitter_ms: f64,
    pub max_jitter_ms: f64,
    /// Arrived after their playout time.
    pub late_packets: u64,
    pub duplicate_packets: u64,
    /// Did not parse as RTP/RTCP, or carried an impossible payload.
    pub malformed_packets: u64,
    /// Parsed, but with a payload type that was not negotiated.
    pub unknown_payload_type_packets: u64,
    /// Valid, but from a source other than the latched one (not played).
    pub foreign_packets: u64,
    /// Frames handed to the caller, and how many of them were (partly) concealed.
    pub frames_played: u64,
    pub frames_concealed: u64,
    /// Current and highest adaptive jitter-buffer delay.
    pub jitter_target_ms: u32,
    pub max_jitter_target_ms: u32,
    /// Jitter-buffer restarts because the peer's timeline jumped.
    pub jitter_resyncs: u64,
    pub dtmf_received: u64,
    pub ssrc_changes: u64,
    /// Times the RTP destination moved to a newly latched address.
    pub latch_changes: u64,
    pub rtcp_sent: u64,
    pub rtcp_received: u64,
    pub rtcp_malformed: u64,
    /// From the peer's receiver reports about our stream.
    pub rtt_ms: Option<f64>,
    pub remote_fraction_lost: Option<f64>,
    pub remote_packets_lost: Option<i64>,
    pub remote_jitter_ms: Option<f64>,
    pub media_timeouts: u64,
    /// 20 ms ticks skipped because the shell called far too late (a stalled runtime).
    pub clock_ticks_skipped: u64,
}

/// RFC 3550 A.1 sequence tracking and A.3 loss accounting for one remote SSRC.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReceiveStats {
    started: bool,
    max_seq: u16,
    cycles: u32,
    base_seq: u32,
    bad_seq: Option<u16>,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Bit i set: ext seq `max_ext - i` was seen (duplicate detection over 64 packets).
    seen: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeqVerdict {
    New,
    Duplicate,
    /// A jump of more than 3000: counted once the source confirms it by continuing from there.
    Jump,
}

impl ReceiveStats {
    const MAX_DROPOUT: u16 = 3000;
    const MAX_MISORDER: u16 = 100;

    fn init(&mut self, seq: u16) {
        *self = ReceiveStats {
            started: true,
            max_seq: seq,
            base_seq: u32::from(seq),
            ..ReceiveStats::default()
        };
    }

    fn ext_max(&self) -> u64 {
        u64::from(self.cycles) + u64::from(self.max_seq)
    }

    pub(crate) fn update(&mut self, seq: u16) -> SeqVerdict {
        if !self.started {
            self.init(seq);
            self.received = 1;
            self.seen = 1;
            return SeqVerdict::New;
        }
        let delta = seq.wrapping_sub(self.max_seq);
        if delta == 0 {
            return SeqVerdict::Duplicate;
        }
        if delta < Self::MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(1 << 16);
            }
            self.max_seq = seq;
            self.seen = if delta >= 64 {
                1
            } else {
                (self.seen << delta) | 1
            };
        } else if delta <= u16::MAX - Self::MAX_MISORDER {
            // A big jump: believe it only when the next packet follows it.
            if self.bad_seq == Some(seq) {
                self.init(seq);
                self.received = 1;
                self.seen = 1;
                return SeqVerdict::New;
            }
            self.bad_seq = Some(seq.wrapping_add(1));
            return SeqVerdict::Jump;
        } else {
            // Reordered or duplicated, within the last 100.
            let back = self.max_seq.wrapping_sub(seq);
            if back < 64 {
                if self.seen & (1 << back) != 0 {
                    return SeqVerdict::Duplicate;
                }
                self.seen |= 1 << back;
            }
        }
        self.bad_seq = None;
        self.received += 1;
        SeqVerdict::New
    }

    pub(crate) fn expected(&self) -> u64 {
        if !self.started {
            return 0;
        }
        (self.ext_max() + 1).saturating_sub(u64::from(self.base_seq))
    }

    pub(crate) fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// A report block about this source; advances the interval used for `fraction_lost`.
    pub(crate) fn report_block(
        &mut self,
        ssrc: u32,
        jitter_ts: f64,
        lsr: u32,
        dlsr: u32,
    ) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: self.lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            ext_highest_seq: self.ext_max() as u32,
            jitter: jitter_ts as u32,
            lsr,
            dlsr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_and_wraparound_are_counted_as_rfc3550_says() {
        let mut r = ReceiveStats::default();
        for seq in (65530u16..=65535).chain(0..10) {
            if seq == 2 || seq == 65533 {
                continue;
            }
            assert_eq!(r.update(seq), SeqVerdict::New);
        }
        assert_eq!(r.expected(), 16);
        assert_eq!(r.lost(), 2);
        let b = r.report_block(9, 80.0, 0, 0);
        assert_eq!(b.ext_highest_seq, (1 << 16) + 9);
        assert_eq!(b.cumulative_lost, 2);
        assert_eq!(b.fraction_lost, (2 * 256 / 16) as u8);
        assert_eq!(b.jitter, 80);
        // The next interval had no loss.
        for seq in 10..20 {
            r.update(seq);
        }
        assert_eq!(r.report_block(9, 0.0, 0, 0).fraction_lost, 0);
    }

    #[test]
    fn duplicates_and_reordering_are_told_apart() {
        let mut r = ReceiveStats::default();
        for seq in [10u16, 12, 11, 12, 11, 13] {
            r.update(seq);
        }
        assert_eq!(r.received, 4);
        assert_eq!(r.lost(), 0);
        assert_eq!(r.update(13), SeqVerdict::Duplicate);
    }

    #[test]
    fn sequence_jump_is_believed_when_the_stream_continues_from_it() {
        let mut r = ReceiveStats::default();
        r.update(100);
        r.update(101);
        assert_eq!(r.update(40_000), SeqVerdict::Jump);
        assert_eq!(r.update(40_001), SeqVerdict::New);
        assert_eq!(r.expected(), 1);
        assert_eq!(r.lost(), 0);
    }
}
