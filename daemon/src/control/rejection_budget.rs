//! How many refused remote commands get an audit record and a published result: a token
//! bucket. Every refusal counts, signed or not (malformed, oversized, unsigned, unknown key,
//! bad signature, wrong target, expired, replayed, ...): anyone who can publish on `cmd/+` can
//! send those, a captured signed command included; only a command that passes every check is
//! "verified" and outside the budget. Beyond the budget refusals are dropped silently and only
//! counted, and each window of drops is summarised once (audit and log) instead of per
//! message. Sans-I/O: the caller passes the time in.

use std::time::{Duration, Instant};

/// Length of a window of drops: the first drop opens it; once it is over, its count is
/// summarised.
pub const WINDOW: Duration = Duration::from_secs(60);

/// `uplink.unverified_commands_per_min` / `uplink.unverified_commands_burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_min: u32,
    pub burst: u32,
}

/// What to do with one refused command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Audit it and publish its rejection.
    Answer,
    /// Drop it. `opens_window`: the first drop of a window (log one line now).
    Drop { opens_window: bool },
}

/// A closed window of drops, to summarise once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DroppedWindow {
    pub dropped: u64,
    pub length: Duration,
}

#[derive(Debug, Clone)]
pub struct RejectionBudget {
    limits: Limits,
    /// Tokens in thousandths, so refills of fractions of a token add up exactly.
    milli_tokens: u64,
    refilled_at: Instant,
    window: Option<(Instant, u64)>,
    total_dropped: u64,
}

impl RejectionBudget {
    /// Starts full: a burst is answered at once.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            milli_tokens: u64::from(limits.burst) * 1000,
            refilled_at: now,
            window: None,
            total_dropped: 0,
        }
    }

    /// New limits (config reload); tokens above the new burst are dropped.
    pub fn set_limits(&mut self, limits: Limits, now: Instant) {
        if limits != self.limits {
            self.refill(now);
            self.limits = limits;
            self.milli_tokens = self.milli_tokens.min(u64::from(limits.burst) * 1000);
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        // per_min tokens per 60 s = per_min thousandths per 60 ms.
        let earned = elapsed.as_millis() as u64 * u64::from(self.limits.per_min) / 60;
        if earned > 0 {
            let cap = u64::from(self.limits.burst) * 1000;
            self.milli_tokens = self.milli_tokens.saturating_add(earned).min(cap);
            // Keep the remainder of the division: advance only by the time that was paid for
            // (earned > 0, so per_min > 0).
            let paid_ms = earned * 60 / u64::from(self.limits.per_min);
            self.refilled_at += Duration::from_millis(paid_ms);
        }
    }

    /// One refused command at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        self.refill(now);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            return Admission::Answer;
        }
        self.total_dropped += 1;
        match &mut self.window {
            Some((_, dropped)) => {
                *dropped += 1;
                Admission::Drop {
                    opens_window: false,
                }
            }
            None => {
                self.window = Some((now, 1));
                Admission::Drop { opens_window: true }
            }
        }
    }

    /// The window of drops, once it has lasted [`WINDOW`]; then the next drop opens a new one.
    pub fn poll_closed_window(&mut self, now: Instant) -> Option<DroppedWindow> {
        let (opened, dropped) = self.window?;
        let length = now.saturating_duration_since(opened);
        if length < WINDOW {
            return None;
        }
        self.window = None;
        Some(DroppedWindow { dropped, length })
    }

    /// Drops since start.
    pub fn total_dropped(&self) -> u64 {
        self.total_dropped
    }

    /// True if a refusal at `now` would be answered (takes nothing).
    pub fn has_token(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.milli_tokens >= 1000
    }
}

/// The digests of the last [`RecentCopies::CAPACITY`] messages handled, to recognise a
/// byte-identical copy (a replay) before it costs a signature check: a copy finds the budget
/// empty and is dropped on the event loop, so a flood of replays cannot fill the command queue
/// that genuine commands wait in. Digests are keyed SipHash (a per-process random key), so a
/// sender cannot make a new message collide with an old one.
#[derive(Debug)]
pub struct RecentCopies {
    keys: std::collections::hash_map::RandomState,
    set: std::collections::HashSet<u64>,
    order: std::collections::VecDeque<u64>,
}

impl Default for RecentCopies {
    fn default() -> Self {
        Self {
            keys: std::collections::hash_map::RandomState::new(),
            set: Default::default(),
            order: Default::default(),
        }
    }
}

impl RecentCopies {
    pub const CAPACITY: usize = 4096;

    /// Records `parts` (e.g. topic name and payload); true if the same was recorded before
    /// (and is still among the last [`Self::CAPACITY`]).
    pub fn seen_before(&mut self, parts: &[&[u8]]) -> bool {
        use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
        let mut h = self.keys.build_hasher();
        for part in parts {
            part.hash(&mut h);
        }
        let digest = h.finish();
        if self.set.contains(&digest) {
            return true;
        }
        if self.order.len() >= Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(digest);
        self.order.push_back(digest);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        per_min: 10,
        burst: 20,
    };

    fn answered(b: &mut RejectionBudget, now: Instant, n: usize) -> usize {
        (0..n).filter(|_| b.admit(now) == Admission::Answer).count()
    }

    #[test]
    fn a_full_bucket_answers_a_burst_then_drops() {
        let t0 = Instant::now();
        let mut b = RejectionBudget::new(LIMITS, t0);
        assert_eq!(answered(&mut b, t0, 20), 20);
        assert_eq!(b.admit(t0), Admission::Drop { opens_window: true });
        assert_eq!(
            b.admit(t0),
            Admission::Drop {
                opens_window: false
            }
        );
        assert_eq!(b.total_dropped(), 2);
    }

    #[test]
    fn tokens_come_back_at_the_configured_rate_and_no_faster() {
        let t0 = Instant::now();
        let mut b = RejectionBudget::new(LIMITS, t0);
        answered(&mut b, t0, 20);
        // 10 per minute: one every 6 s.
        assert_eq!(answered(&mut b, t0 + Duration::from_millis(5_999), 1), 0);
        assert_eq!(answered(&mut b, t0 + Duration::from_secs(6), 1), 1);
        assert_eq!(answered(&mut b, t0 + Duration::from_secs(6), 1), 0);
        // Many small steps add up to the same as one big one (no rounding loss).
        let mut t = t0 + Duration::from_secs(6);
        let mut got = 0;
        for _ in 0..600 {
            t += Duration::from_millis(100);
            got += answered(&mut b, t, 1);
        }
        assert_eq!(got, 10, "60 s at 10/min");
        // A long idle spell refills to the burst, not beyond.
        assert_eq!(answered(&mut b, t + Duration::from_secs(3600), 100), 20);
    }

    #[test]
    fn a_window_of_drops_is_summarised_once_after_a_minute() {
        let t0 = Instant::now();
        let mut b = RejectionBudget::new(
            Limits {
                per_min: 1,
                burst: 1,
            },
            t0,
        );
        assert_eq!(b.admit(t0), Admission::Answer);
        for i in 0..5 {
            b.admit(t0 + Duration::from_secs(i));
        }
        assert_eq!(b.poll_closed_window(t0 + Duration::from_secs(59)), None);
        assert_eq!(
            b.poll_closed_window(t0 + Duration::from_secs(60)),
            Some(DroppedWindow {
                dropped: 5,
                length: WINDOW
            })
        );
        assert_eq!(b.poll_closed_window(t0 + Duration::from_secs(120)), None);
        // Refilled by now (1/min): answered, no new window.
        assert_eq!(b.admit(t0 + Duration::from_secs(61)), Admission::Answer);
        assert_eq!(
            b.admit(t0 + Duration::from_secs(61)),
            Admission::Drop { opens_window: true }
        );
        assert_eq!(b.total_dropped(), 6);
    }

    #[test]
    fn copies_are_recognised_until_enough_newer_messages_pushed_them_out() {
        let mut r = RecentCopies::default();
        assert!(!r.seen_before(&[b"status", b"{1}"]));
        assert!(r.seen_before(&[b"status", b"{1}"]));
        // The parts are kept apart: ("status", "x") is not ("statu", "sx").
        assert!(!r.seen_before(&[b"statu", b"s{1}"]));
        assert!(!r.seen_before(&[b"drain", b"{1}"]));
        for i in 0..RecentCopies::CAPACITY {
            r.seen_before(&[b"n", i.to_string().as_bytes()]);
        }
        assert!(!r.seen_before(&[b"status", b"{1}"]), "pushed out");
        assert_eq!(r.set.len(), RecentCopies::CAPACITY);
        assert_eq!(r.order.len(), RecentCopies::CAPACITY);
    }

    #[test]
    fn has_token_takes_nothing() {
        let t0 = Instant::now();
        let mut b = RejectionBudget::new(
            Limits {
                per_min: 1,
                burst: 1,
            },
            t0,
        );
        assert!(b.has_token(t0));
        assert!(b.has_token(t0));
        assert_eq!(b.admit(t0), Admission::Answer);
        assert!(!b.has_token(t0));
    }

    #[test]
    fn lower_limits_on_reload_cap_the_tokens_at_once() {
        let t0 = Instant::now();
        let mut b = RejectionBudget::new(LIMITS, t0);
        b.set_limits(
            Limits {
                per_min: 1,
                burst: 2,
            },
            t0,
        );
        assert_eq!(answered(&mut b, t0, 10), 2);
    }
}
