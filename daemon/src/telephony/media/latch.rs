//! Which remote source we listen to and where we send (symmetric RTP, "latching").
//!
//! Policy (only packets that parse and carry a negotiated payload type get here):
//! - Until the first such packet we send to the address from SDP. The first packet's source
//!   address and SSRC become the latched source, and we send there from then on (NAT).
//! - Packets from the latched (address, SSRC) are accepted.
//! - Anything else is a candidate and is not played. A candidate replaces the latched source
//!   only if it *stays*: a run of consecutive packets (in sequence) from one (address, SSRC),
//!   during which the latched source sent nothing at all. Any packet from the latched source
//!   resets the run, so a third party cannot take over a live call, and two streams arriving at
//!   once (a stray forked leg, a peer sending DTMF with a separate SSRC) never flap.
//!   - Same address, new SSRC (re-INVITE, transfer, PBX switching legs): 2 packets, as RFC 3550
//!     A.1 probation.
//!   - New address (NAT rebinding, media moved without SDP): 8 packets (160 ms at 20 ms).
//! - The packets of the winning run are kept and replayed, so the switch loses no audio.
//! - A new remote address in SDP (re-INVITE) unlatches: we send there and latch afresh.

use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Source {
    pub addr: SocketAddr,
    pub ssrc: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict<T> {
    Accept,
    /// Held as a candidate; not played (yet).
    Hold,
    /// A new source wins: play these held packets (oldest first), then the current one.
    Switch {
        from: Option<Source>,
        to: Source,
        replay: Vec<T>,
    },
}

struct Candidate<T> {
    source: Source,
    count: u32,
    last_seq: u16,
    held: Vec<T>,
}

/// `T` is what is kept of a held packet (the session keeps the datagram and its arrival time).
pub(crate) struct Latch<T> {
    dest: SocketAddr,
    current: Option<Source>,
    candidate: Option<Candidate<T>>,
}

impl<T> Latch<T> {
    pub(crate) const SAME_ADDR_PACKETS: u32 = 2;
    pub(crate) const NEW_ADDR_PACKETS: u32 = 8;

    pub(crate) fn new(sdp_addr: SocketAddr) -> Self {
        Latch {
            dest: sdp_addr,
            current: None,
            candidate: None,
        }
    }

    /// Where our RTP goes.
    pub(crate) fn dest(&self) -> SocketAddr {
        self.dest
    }

    /// SDP moved the peer: send to the new address and latch again on what arrives.
    pub(crate) fn reset_to(&mut self, sdp_addr: SocketAddr) {
        *self = Latch::new(sdp_addr);
    }

    /// Decides about one valid packet; `keep` makes what is held if the packet is held.
    pub(crate) fn check(
        &mut self,
        from: SocketAddr,
        ssrc: u32,
        seq: u16,
        keep: impl FnOnce() -> T,
    ) -> Verdict<T> {
        let source = Source { addr: from, ssrc };
        let Some(current) = self.current else {
            self.current = Some(source);
            self.dest = from;
            return Verdict::Switch {
                from: None,
                to: source,
                replay: Vec::new(),
            };
        };
        if source == current {
            self.candidate = None;
            return Verdict::Accept;
        }
        let needed = if from == current.addr {
            Self::SAME_ADDR_PACKETS
        } else {
            Self::NEW_ADDR_PACKETS
        };
        match self.candidate.as_mut() {
            Some(c) if c.source == source && seq == c.last_seq.wrapping_add(1) => {
                c.count += 1;
                c.last_seq = seq;
            }
            _ => {
                self.candidate = Some(Candidate {
                    source,
                    count: 1,
                    last_seq: seq,
                    held: Vec::new(),
                })
            }
        }
        let Some(c) = self.candidate.as_mut() else {
            return Verdict::Hold;
        };
        if c.count < needed {
            c.held.push(keep());
            return Verdict::Hold;
        }
        let replay = std::mem::take(&mut c.held);
        self.candidate = None;
        self.current = Some(source);
        self.dest = from;
        Verdict::Switch {
            from: Some(current),
            to: source,
            replay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telephony::media::test_util::addr;

    #[test]
    fn first_valid_packet_latches_even_from_another_address() {
        let mut l: Latch<Vec<u8>> = Latch::new(addr("192.0.2.1:4000"));
        assert_eq!(l.dest(), addr("192.0.2.1:4000"));
        let v = l.check(addr("198.51.100.7:30000"), 1, 10, Vec::new);
        assert!(matches!(v, Verdict::Switch { from: None, .. }));
        assert_eq!(l.dest(), addr("198.51.100.7:30000"));
        assert_eq!(
            l.check(addr("198.51.100.7:30000"), 1, 11, Vec::new),
            Verdict::Accept
        );
    }

    #[test]
    fn third_address_is_ignored_while_the_latched_source_keeps_sending() {
        let mut l: Latch<Vec<u8>> = Latch::new(addr("192.0.2.1:4000"));
        l.check(addr("192.0.2.1:4000"), 1, 0, Vec::new);
        for i in 0..100u16 {
            assert_eq!(
                l.check(addr("203.0.113.9:5000"), 99, i, Vec::new),
                Verdict::Hold
            );
            assert_eq!(
                l.check(addr("192.0.2.1:4000"), 1, i + 1, Vec::new),
                Verdict::Accept
            );
        }
        assert_eq!(l.dest(), addr("192.0.2.1:4000"));
    }

    #[test]
    fn new_source_that_stays_takes_over_and_its_packets_are_replayed() {
        let mut l: Latch<Vec<u8>> = Latch::new(addr("192.0.2.1:4000"));
        l.check(addr("192.0.2.1:4000"), 1, 0, Vec::new);
        for i in 0..Latch::<Vec<u8>>::NEW_ADDR_PACKETS as u16 - 1 {
            assert_eq!(
                l.check(addr("203.0.113.9:5000"), 2, 500 + i, || vec![i as u8]),
                Verdict::Hold
            );
        }
        let v = l.check(addr("203.0.113.9:5000"), 2, 507, || vec![7]);
        let Verdict::Switch { from, to, replay } = v else {
            panic!("expected a switch, got {v:?}");
        };
        assert_eq!(from.map(|s| s.ssrc), Some(1));
        assert_eq!(to.ssrc, 2);
        assert_eq!(replay, (0..7u8).map(|i| vec![i]).collect::<Vec<_>>());
        assert_eq!(l.dest(), addr("203.0.113.9:5000"));
    }

    #[test]
    fn ssrc_change_on_the_latched_address_switches_after_two_packets() {
        let mut l: Latch<Vec<u8>> = Latch::new(addr("192.0.2.1:4000"));
        l.check(addr("192.0.2.1:4000"), 1, 0, Vec::new);
        assert_eq!(
            l.check(addr("192.0.2.1:4000"), 2, 70, Vec::new),
            Verdict::Hold
        );
        assert!(matches!(
            l.check(addr("192.0.2.1:4000"), 2, 71, Vec::new),
            Verdict::Switch { .. }
        ));
    }

    #[test]
    fn candidate_run_must_be_in_sequence() {
        let mut l: Latch<Vec<u8>> = Latch::new(addr("192.0.2.1:4000"));
        l.check(addr("192.0.2.1:4000"), 1, 0, Vec::new);
        // Random sequence numbers (spoofed or garbage) never build a run.
        for seq in [5u16, 900, 3, 41_000, 17, 5] {
            assert_eq!(
                l.check(addr("192.0.2.1:4000"), 2, seq, Vec::new),
                Verdict::Hold
            );
        }
    }
}
