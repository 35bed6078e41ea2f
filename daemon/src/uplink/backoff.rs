//! When to (re)connect to the broker: exponential back-off with jitter, as a sans-I/O state
//! machine. The jitter comes from a seeded generator so tests are exact and a fleet whose
//! broker restarts does not reconnect in lockstep (each device seeds differently).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectConfig {
    /// Wait after the first failure; doubled after each further one.
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Fraction of each wait that is random, in `0.0..=1.0`: a wait of `d` becomes one in
    /// `(d * (1 - jitter), d]`.
    pub jitter: f64,
    /// A connection that lasted this long resets the back-off when it drops; one that drops
    /// sooner counts as a failure, so a broker that accepts and then kicks us (a duplicate
    /// client id, say) is not hammered.
    pub stable_after: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            jitter: 0.5,
            stable_after: Duration::from_secs(30),
        }
    }
}

impl ReconnectConfig {
    pub fn validate(&self) -> Result<(), ReconnectConfigError> {
        if self.initial_delay.is_zero() || self.max_delay < self.initial_delay {
            return Err(ReconnectConfigError::Delays {
                initial: self.initial_delay,
                max: self.max_delay,
            });
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ReconnectConfigError::Jitter(self.jitter));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReconnectConfigError {
    #[error("uplink reconnect: initial delay {initial:?} and max delay {max:?} must satisfy 0 < initial <= max; fix them or leave them out for the defaults")]
    Delays { initial: Duration, max: Duration },
    #[error("uplink reconnect: jitter {0} is outside 0.0..=1.0; use e.g. 0.5")]
    Jitter(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionPhase {
    Waiting,
    Connecting,
    Connected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconnectStatus {
    pub phase: ConnectionPhase,
    /// Failed attempts (and short-lived connections) since the last stable connection.
    pub consecutive_failures: u32,
    /// Connection attempts since start.
    pub attempts: u64,
    pub next_attempt_in_ms: Option<u64>,
    pub connected_for_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Waiting { until: Instant },
    Connecting,
    Connected { since: Instant },
}

#[derive(Debug, Clone)]
pub struct Reconnect {
    config: ReconnectConfig,
    rng: SplitMix64,
    state: State,
    consecutive_failures: u32,
    attempts: u64,
}

impl Reconnect {
    /// Starts out wanting to connect at once. `seed` should differ between devices (e.g. from
    /// the device id and the start time).
    pub fn new(
        config: ReconnectConfig,
        seed: u64,
        now: Instant,
    ) -> Result<Self, ReconnectConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            rng: SplitMix64::new(seed),
            state: State::Waiting { until: now },
            consecutive_failures: 0,
            attempts: 0,
        })
    }

    /// When to connect next; `None` while connected or while an attempt is under way.
    /// Returns `Some(at)` with `at <= now` once it is time: the attempt counts as started
    /// then, and the caller reports its outcome with [`Reconnect::handle_connected`] or
    /// [`Reconnect::handle_connect_failed`]. With `at > now`, wake up at `at` and poll again.
    pub fn poll_reconnect(&mut self, now: Instant) -> Option<Instant> {
        match self.state {
            State::Waiting { until } => {
                if until <= now {
                    self.state = State::Connecting;
                    self.attempts += 1;
                }
                Some(until)
            }
            State::Connecting | State::Connected { .. } => None,
        }
    }

    pub fn handle_connected(&mut self, now: Instant) {
        self.state = State::Connected { since: now };
    }

    pub fn handle_connect_failed(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.wait_from(now);
    }

    /// An established connection dropped.
    pub fn handle_disconnected(&mut self, now: Instant) {
        let stable = match self.state {
            State::Connected { since } => {
                now.saturating_duration_since(since) >= self.config.stable_after
            }
            _ => false,
        };
        if stable {
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        }
        self.wait_from(now);
    }

    fn wait_from(&mut self, now: Instant) {
        let delay = self.delay(self.consecutive_failures);
        self.state = State::Waiting { until: now + delay };
    }

    /// `initial * 2^(failures - 1)`, capped, less up to `jitter` of it at random.
    fn delay(&mut self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        let base = self
            .config
            .initial_delay
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.config.max_delay);
        base.mul_f64(1.0 - self.config.jitter * self.rng.unit())
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. })
    }

    pub fn status(&self, now: Instant) -> ReconnectStatus {
        let (phase, next, connected_for) = match self.state {
            State::Waiting { until } => (
                ConnectionPhase::Waiting,
                Some(until.saturating_duration_since(now).as_millis() as u64),
                None,
            ),
            State::Connecting => (ConnectionPhase::Connecting, None, None),
            State::Connected { since } => (
                ConnectionPhase::Connected,
                None,
                Some(now.saturating_duration_since(since).as_millis() as u64),
            ),
        };
        ReconnectStatus {
            phase,
            consecutive_failures: self.consecutive_failures,
            attempts: self.attempts,
            next_attempt_in_ms: next,
            connected_for_ms: connected_for,
        }
    }
}

/// SplitMix64: tiny, seedable, good enough for jitter and test-case generation.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    #[cfg(test)]
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn reconnect(seed: u64, t0: Instant) -> Reconnect {
        Reconnect::new(ReconnectConfig::default(), seed, t0).unwrap()
    }

    /// Fails every attempt `n` times and returns each wait.
    fn waits_after_failures(r: &mut Reconnect, mut now: Instant, n: usize) -> Vec<Duration> {
        let mut waits = Vec::new();
        for _ in 0..n {
            let at = r.poll_reconnect(now).unwrap();
            assert!(at <= now);
            assert_eq!(r.poll_reconnect(now), None, "one attempt at a time");
            r.handle_connect_failed(now);
            let next = r.poll_reconnect(now).unwrap();
            waits.push(next - now);
            now = next;
        }
        waits
    }

    #[test]
    fn first_attempt_is_immediate_and_one_at_a_time() {
        let t0 = Instant::now();
        let mut r = reconnect(1, t0);
        assert_eq!(r.poll_reconnect(t0), Some(t0));
        assert_eq!(r.status(t0).phase, ConnectionPhase::Connecting);
        assert_eq!(r.poll_reconnect(t0 + S), None);
        r.handle_connected(t0 + S);
        assert!(r.is_connected());
        assert_eq!(r.poll_reconnect(t0 + S * 100), None);
        assert_eq!(r.status(t0 + S * 3).connected_for_ms, Some(2000));
    }

    #[test]
    fn back_off_doubles_to_the_cap_with_jitter_within_bounds() {
        let t0 = Instant::now();
        let mut r = reconnect(7, t0);
        let waits = waits_after_failures(&mut r, t0, 14);
        for (i, wait) in waits.iter().enumerate() {
            let base = (S * (1u32 << i.min(20))).min(S * 300);
            assert!(
                *wait > base / 2 && *wait <= base,
                "wait {i}: {wait:?} not in ({:?}, {base:?}]",
                base / 2
            );
        }
        assert_eq!(r.status(t0).consecutive_failures, 14);
        assert_eq!(r.status(t0).attempts, 14);
        // Jittered: not all at the cap are equal.
        let capped = &waits[9..];
        assert!(capped.windows(2).any(|w| w[0] != w[1]), "{capped:?}");
    }

    #[test]
    fn a_stable_connection_resets_the_back_off() {
        let t0 = Instant::now();
        let mut r = reconnect(3, t0);
        waits_after_failures(&mut r, t0, 6);
        let now = t0 + S * 1000;
        r.poll_reconnect(now).unwrap();
        r.handle_connected(now);
        r.handle_disconnected(now + S * 31);
        assert_eq!(r.status(now).consecutive_failures, 0);
        let wait = r.poll_reconnect(now + S * 31).unwrap() - (now + S * 31);
        assert!(wait > S / 2 && wait <= S, "{wait:?}");
    }

    #[test]
    fn a_flapping_connection_keeps_backing_off() {
        let t0 = Instant::now();
        let mut r = reconnect(5, t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..5 {
            now = r.poll_reconnect(now).unwrap().max(now);
            r.handle_connected(now);
            r.handle_disconnected(now + S);
            now += S;
            let at = r.poll_reconnect(now).unwrap();
            waits.push(at - now);
            now = at;
        }
        assert_eq!(r.status(now).consecutive_failures, 5);
        assert!(waits[4] > S * 8, "{waits:?}");
    }

    #[test]
    fn devices_with_different_seeds_spread_out() {
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..20)
            .map(|seed| waits_after_failures(&mut reconnect(seed, t0), t0, 4)[3])
            .collect();
        let mut distinct = waits.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 15, "{waits:?}");
    }

    #[test]
    fn no_jitter_gives_exact_doubling() {
        let t0 = Instant::now();
        let config = ReconnectConfig {
            jitter: 0.0,
            ..ReconnectConfig::default()
        };
        let mut r = Reconnect::new(config, 0, t0).unwrap();
        assert_eq!(
            waits_after_failures(&mut r, t0, 4),
            [S, S * 2, S * 4, S * 8]
        );
    }

    #[test]
    fn config_errors_say_what_to_fix() {
        let t0 = Instant::now();
        let bad = ReconnectConfig {
            jitter: 1.5,
            ..ReconnectConfig::default()
        };
        let err = Reconnect::new(bad, 0, t0).unwrap_err();
        assert!(err.to_string().contains("0.5"), "{err}");
        let bad = ReconnectConfig {
            max_delay: Duration::from_millis(10),
            ..ReconnectConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(ReconnectConfigError::Delays { .. })
        ));
    }
}
