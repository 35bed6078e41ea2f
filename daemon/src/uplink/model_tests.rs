//! Model-based test of the durable outbox, after vector's disk buffer v2 `tests/model`: random
//! operations (appends of random streams and sizes, publishes, PUBACKs in random order, stale
//! PUBACKs, connects, disconnects, time passing with expiry, crash-and-reopen from the store)
//! go to the real [`DurableOutbox`] on a real store and to [`Model`], a deliberately naive
//! outbox written from the spec (one flat list, linear scans, no indexes). After every step
//! both must agree on what is queued (ids, keys, payloads, ages, order per stream; the real
//! one read back from disk as well as from memory), on what was published and evicted, and on
//! the whole status with its counters. A failing case is shrunk to a short list of operations
//! and printed with its seed.
//!
//! `EDGEVOICE_MODEL_CASES=500` runs more cases; `EDGEVOICE_MODEL_SEED=n` starts at seed n.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::backoff::SplitMix64;
use super::*;
use crate::store::Store;

const DEVICE: &str = "dev";
const START_WALL_MS: u64 = 1_700_000_000_000;
const DEFAULT_CASES: u64 = 100;
const STEPS: u64 = 80;

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: Stream,
        payload: Payload,
    },
    Publish,
    /// PUBACK for the n-th (modulo) in-flight message, in send order.
    Puback(usize),
    /// PUBACK for a packet id that is not in flight.
    StalePuback(u16),
    Connect,
    Disconnect,
    /// Time passes (both clocks), then expiry runs.
    Advance {
        ms: u64,
    },
    /// Time passes to exactly when the real outbox asked to be woken (if it did), then expiry
    /// runs: what the shell does, and it hits the age limits on the millisecond.
    SleepUntilTimeout,
    /// Crash (drop everything unflushed: nothing is) and reopen after `downtime_ms`, with the
    /// wall clock also shifted by `wall_shift_ms` (set back when negative), maybe another site.
    Reopen {
        downtime_ms: u64,
        wall_shift_ms: i64,
        site: u8,
    },
}

/// Bytes that print as their length and a hex prefix, so a shrunk case stays readable.
#[derive(Clone)]
struct Payload(Vec<u8>);

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head = hex::encode(&self.0[..self.0.len().min(8)]);
        write!(f, "{} bytes {head}..", self.0.len())
    }
}

#[derive(Debug, Clone)]
struct Case {
    config: OutboxConfig,
    ops: Vec<Op>,
}

fn generate(seed: u64) -> Case {
    let mut rng = SplitMix64::new(seed);
    let mut pick = move |n: u64| rng.below(n);
    let when_full = |x: u64| [WhenFull::RejectNew, WhenFull::DropOldest][x as usize];
    let max_age = |pick: &mut dyn FnMut(u64) -> u64, lo: u64, span: u64| {
        (pick(3) > 0).then(|| Duration::from_millis(lo + pick(span)))
    };
    let config = OutboxConfig {
        max_messages: 2 + pick(9) as usize,
        max_bytes: 60 + pick(400),
        max_in_flight: 1 + pick(4) as u16,
        drain_rate: None,
        drain_burst: NonZeroU32::MIN,
        high: PriorityPolicy {
            when_full: WhenFull::RejectNew,
            max_age: max_age(&mut pick, 40_000, 40_000),
        },
        normal: PriorityPolicy {
            when_full: when_full(pick(2)),
            max_age: max_age(&mut pick, 5_000, 15_000),
        },
        low: PriorityPolicy {
            when_full: when_full(pick(2)),
            max_age: max_age(&mut pick, 2_000, 8_000),
        },
    };
    let ops = (0..STEPS)
        .map(|_| match pick(100) {
            0..=33 => {
                let stream = Stream::ALL[pick(Stream::ALL.len() as u64) as usize];
                let len = if pick(10) == 0 { pick(150) } else { pick(60) };
                let payload = if pick(2) == 0 {
                    (0..len).map(|_| b'a' + pick(26) as u8).collect()
                } else {
                    (0..len).map(|_| pick(256) as u8).collect()
                };
                Op::Append {
                    stream,
                    payload: Payload(payload),
                }
            }
            34..=55 => Op::Publish,
            56..=69 => Op::Puback(pick(8) as usize),
            70..=71 => Op::StalePuback(pick(8) as u16),
            72..=79 => Op::Connect,
            80..=84 => Op::Disconnect,
            85..=89 => Op::SleepUntilTimeout,
            90..=94 => Op::Advance {
                ms: if pick(10) == 0 {
                    pick(30_000)
                } else {
                    pick(4_000)
                },
            },
            _ => Op::Reopen {
                downtime_ms: pick(20_000),
                wall_shift_ms: pick(120_000) as i64 - 60_000,
                site: pick(2) as u8,
            },
        })
        .collect();
    Case { config, ops }
}

#[derive(Debug, Clone)]
struct ModelMessage {
    id: MessageId,
    key: String,
    payload: Vec<u8>,
    appended_ms: u64,
    in_flight: bool,
    dup: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Full,
    TooLarge,
}

/// The outbox as the spec says it, without any of the real one's structure.
struct Model {
    config: OutboxConfig,
    site: String,
    messages: Vec<ModelMessage>,
    next_sequence: HashMap<Stream, u64>,
    counters: HashMap<Stream, StreamCounters>,
    connected: bool,
    /// In flight, in send order.
    sent: Vec<MessageId>,
    epoch: Instant,
    epoch_ms: u64,
}

impl Model {
    fn new(config: OutboxConfig, site: String, now: Instant, wall_ms: u64) -> Self {
        Self {
            config,
            site,
            messages: Vec::new(),
            next_sequence: HashMap::new(),
            counters: HashMap::new(),
            connected: false,
            sent: Vec::new(),
            epoch: now,
            epoch_ms: wall_ms,
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        self.epoch_ms + (now - self.epoch).as_millis() as u64
    }

    fn counters(&mut self, stream: Stream) -> &mut StreamCounters {
        self.counters.entry(stream).or_default()
    }

    fn next_sequence(&self, stream: Stream) -> u64 {
        self.next_sequence.get(&stream).copied().unwrap_or(1)
    }

    fn append(
        &mut self,
        stream: Stream,
        payload: &[u8],
        now: Instant,
    ) -> Result<(MessageId, Vec<MessageId>), Refused> {
        let size = payload.len() as u64;
        if size > self.config.max_bytes {
            self.counters(stream).rejected += 1;
            return Err(Refused::TooLarge);
        }
        let priority = stream.priority();
        let drop_own = self.config.policy(priority).when_full == WhenFull::DropOldest;
        let mut victims: Vec<MessageId> = Vec::new();
        loop {
            let kept = self.messages.iter().filter(|m| !victims.contains(&m.id));
            let count = kept.clone().count() + 1;
            let bytes = kept.map(|m| m.payload.len() as u64).sum::<u64>() + size;
            if count <= self.config.max_messages && bytes <= self.config.max_bytes {
                break;
            }
            let victim = self
                .messages
                .iter()
                .filter(|m| !m.in_flight && !victims.contains(&m.id))
                .filter(|m| {
                    let p = m.id.stream.priority();
                    p < priority || (p == priority && drop_own)
                })
                .min_by_key(|m| (m.id.stream.priority(), m.appended_ms, m.id));
            match victim {
                Some(m) => victims.push(m.id),
                None => {
                    self.counters(stream).rejected += 1;
                    return Err(Refused::Full);
                }
            }
        }
        self.messages.retain(|m| !victims.contains(&m.id));
        for v in &victims {
            self.counters(v.stream).evicted += 1;
        }
        let id = MessageId {
            stream,
            sequence: Sequence(self.next_sequence(stream)),
        };
        self.next_sequence.insert(stream, id.sequence.0 + 1);
        self.counters(stream).appended += 1;
        let appended_ms = self.ms(now);
        self.messages.push(ModelMessage {
            id,
            key: id.idempotency_key(&self.site, DEVICE),
            payload: payload.to_vec(),
            appended_ms,
            in_flight: false,
            dup: false,
        });
        Ok((id, victims))
    }

    fn publish(&mut self) -> Option<ModelMessage> {
        if !self.connected || self.sent.len() >= usize::from(self.config.max_in_flight) {
            return None;
        }
        let next = self
            .messages
            .iter_mut()
            .filter(|m| !m.in_flight)
            .min_by_key(|m| {
                (
                    std::cmp::Reverse(m.id.stream.priority()),
                    m.appended_ms,
                    m.id,
                )
            })?;
        let sent = next.clone();
        next.in_flight = true;
        next.dup = true;
        self.sent.push(sent.id);
        let counters = self.counters(sent.id.stream);
        counters.published += 1;
        counters.resent += u64::from(sent.dup);
        Some(sent)
    }

    fn puback(&mut self, id: MessageId) {
        self.sent.retain(|s| *s != id);
        self.messages.retain(|m| m.id != id);
        self.counters(id.stream).acked += 1;
    }

    fn disconnect(&mut self) -> usize {
        self.connected = false;
        self.messages.iter_mut().for_each(|m| m.in_flight = false);
        std::mem::take(&mut self.sent).len()
    }

    fn expire(&mut self, now: Instant) -> Vec<MessageId> {
        let now_ms = self.ms(now);
        let config = self.config.clone();
        let mut expired: Vec<MessageId> = self
            .messages
            .iter()
            .filter(|m| !m.in_flight)
            .filter(|m| {
                config
                    .policy(m.id.stream.priority())
                    .max_age
                    .is_some_and(|age| {
                        now_ms.saturating_sub(m.appended_ms) >= age.as_millis() as u64
                    })
            })
            .map(|m| m.id)
            .collect();
        expired.sort();
        self.messages.retain(|m| !expired.contains(&m.id));
        for id in &expired {
            self.counters(id.stream).expired += 1;
        }
        expired
    }

    fn reopen(&mut self, now: Instant, wall_ms: u64, site: String) {
        self.connected = false;
        self.sent.clear();
        self.counters.clear();
        for m in &mut self.messages {
            m.in_flight = false;
            m.dup = true;
        }
        self.epoch = now;
        self.epoch_ms = self
            .messages
            .iter()
            .map(|m| m.appended_ms)
            .fold(wall_ms, u64::max);
        self.site = site;
    }

    /// The next expiry: the earliest time an unsent message reaches its priority's max age.
    fn next_timeout(&self) -> Option<Instant> {
        self.messages
            .iter()
            .filter(|m| !m.in_flight)
            .filter_map(|m| {
                let age = self.config.policy(m.id.stream.priority()).max_age?;
                let due_ms = m.appended_ms + age.as_millis() as u64;
                Some(self.epoch + Duration::from_millis(due_ms.saturating_sub(self.epoch_ms)))
            })
            .min()
    }

    fn queued(&self) -> Vec<&ModelMessage> {
        let mut queued: Vec<&ModelMessage> = self.messages.iter().collect();
        queued.sort_by_key(|m| m.id);
        queued
    }

    fn status(&self, now: Instant) -> OutboxStatus {
        let now_ms = self.ms(now);
        let streams: Vec<StreamStatus> = Stream::ALL
            .iter()
            .map(|&stream| {
                let mine = || self.messages.iter().filter(move |m| m.id.stream == stream);
                StreamStatus {
                    stream,
                    priority: stream.priority(),
                    queued: mine().count(),
                    bytes: mine().map(|m| m.payload.len() as u64).sum(),
                    in_flight: mine().filter(|m| m.in_flight).count(),
                    oldest_age_ms: mine().map(|m| now_ms.saturating_sub(m.appended_ms)).max(),
                    next_sequence: self.next_sequence(stream),
                    counters: self.counters.get(&stream).copied().unwrap_or_default(),
                }
            })
            .collect();
        let mut totals = StreamCounters::default();
        for s in &streams {
            let c = &s.counters;
            totals.appended += c.appended;
            totals.published += c.published;
            totals.resent += c.resent;
            totals.acked += c.acked;
            totals.evicted += c.evicted;
            totals.expired += c.expired;
            totals.rejected += c.rejected;
        }
        OutboxStatus {
            connected: self.connected,
            queued_messages: self.messages.len(),
            queued_bytes: self.messages.iter().map(|m| m.payload.len() as u64).sum(),
            max_messages: self.config.max_messages,
            max_bytes: self.config.max_bytes,
            in_flight: self.sent.len(),
            max_in_flight: self.config.max_in_flight,
            oldest_age_ms: streams.iter().filter_map(|s| s.oldest_age_ms).max(),
            totals,
            streams,
        }
    }
}

/// The real outbox on a real store in a temp dir, next to the model.
struct Harness {
    dir: tempfile::TempDir,
    config: OutboxConfig,
    store: Option<Store>,
    real: Option<DurableOutbox>,
    model: Model,
    now: Instant,
    wall_ms: u64,
    packet_ids: HashMap<MessageId, u16>,
}

fn site_name(site: u8) -> String {
    format!("site-{site}")
}

impl Harness {
    fn new(config: OutboxConfig) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let now = Instant::now();
        let store = Store::open(dir.path()).map_err(|e| e.to_string())?;
        let identity = Identity::new(&site_name(0), DEVICE).map_err(|e| e.to_string())?;
        let real = DurableOutbox::open(&store, config.clone(), identity, now, START_WALL_MS)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            dir,
            model: Model::new(config.clone(), site_name(0), now, START_WALL_MS),
            config,
            store: Some(store),
            real: Some(real),
            now,
            wall_ms: START_WALL_MS,
            packet_ids: HashMap::new(),
        })
    }

    fn parts(&mut self) -> (&Store, &mut DurableOutbox) {
        (
            self.store.as_ref().expect("store open"),
            self.real.as_mut().expect("outbox open"),
        )
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let now = self.now;
        match op {
            Op::Append { stream, payload } => {
                let (store, real) = self.parts();
                let got = real.append(store, *stream, &payload.0, now);
                let want = self.model.append(*stream, &payload.0, now);
                match (got, want) {
                    (Ok(a), Ok((id, evicted))) if a.id == id && a.evicted == evicted => {}
                    (Err(OutboxError::Append(AppendError::Full { .. })), Err(Refused::Full)) => {}
                    (
                        Err(OutboxError::Append(AppendError::TooLarge { .. })),
                        Err(Refused::TooLarge),
                    ) => {}
                    (got, want) => return Err(format!("append: real {got:?}, model {want:?}")),
                }
            }
            Op::Publish => {
                let (store, real) = self.parts();
                let got = real.poll_publish(store, now).map_err(|e| e.to_string())?;
                let want = self.model.publish();
                match (got, want) {
                    (None, None) => {}
                    (Some(p), Some(m))
                        if p.id == m.id
                            && p.key == m.key
                            && p.payload == m.payload
                            && p.dup == m.dup =>
                    {
                        let window = 1..=self.config.max_in_flight;
                        if !window.contains(&p.packet_id)
                            || self.packet_ids.values().any(|&used| used == p.packet_id)
                        {
                            return Err(format!(
                                "packet id {} reused or out of range",
                                p.packet_id
                            ));
                        }
                        self.packet_ids.insert(p.id, p.packet_id);
                    }
                    (got, want) => {
                        let got = got.map(|p| (p.id, p.key, p.dup, Payload(p.payload)));
                        let want = want.map(|m| (m.id, m.key, m.dup, Payload(m.payload)));
                        return Err(format!("publish: real {got:?}, model {want:?}"));
                    }
                }
            }
            Op::Puback(n) => {
                if self.model.sent.is_empty() {
                    return Ok(());
                }
                let id = self.model.sent[n % self.model.sent.len()];
                let packet_id = self.packet_ids.remove(&id).ok_or("no packet id")?;
                let (store, real) = self.parts();
                let got = real
                    .handle_puback(store, packet_id)
                    .map_err(|e| e.to_string())?;
                if got != Some(id) {
                    return Err(format!("puback {packet_id}: real {got:?}, model {id}"));
                }
                self.model.puback(id);
            }
            Op::StalePuback(packet_id) => {
                if self.packet_ids.values().any(|p| p == packet_id) {
                    return Ok(());
                }
                let (store, real) = self.parts();
                let got = real
                    .handle_puback(store, *packet_id)
                    .map_err(|e| e.to_string())?;
                if got.is_some() {
                    return Err(format!("stale puback {packet_id} took {got:?}"));
                }
            }
            Op::Connect => {
                self.parts().1.handle_connected();
                self.model.connected = true;
            }
            Op::Disconnect => {
                let got = self.parts().1.handle_disconnect();
                let want = self.model.disconnect();
                self.packet_ids.clear();
                if got != want {
                    return Err(format!("disconnect: real {got} in flight, model {want}"));
                }
            }
            Op::Advance { .. } | Op::SleepUntilTimeout => {
                let ms = match op {
                    Op::Advance { ms } => *ms,
                    _ => match self.parts().1.poll_timeout() {
                        Some(at) => at.saturating_duration_since(now).as_millis() as u64,
                        None => return Ok(()),
                    },
                };
                self.now += Duration::from_millis(ms);
                self.wall_ms += ms;
                let now = self.now;
                let (store, real) = self.parts();
                let got = real.handle_timeout(store, now).map_err(|e| e.to_string())?;
                let want = self.model.expire(now);
                if got != want {
                    return Err(format!("expiry: real {got:?}, model {want:?}"));
                }
            }
            Op::Reopen {
                downtime_ms,
                wall_shift_ms,
                site,
            } => {
                self.real = None;
                self.store = None;
                self.packet_ids.clear();
                self.now += Duration::from_millis(*downtime_ms);
                self.wall_ms = (self.wall_ms + downtime_ms).saturating_add_signed(*wall_shift_ms);
                let store = Store::open(self.dir.path()).map_err(|e| e.to_string())?;
                let identity =
                    Identity::new(&site_name(*site), DEVICE).map_err(|e| e.to_string())?;
                let real = DurableOutbox::open(
                    &store,
                    self.config.clone(),
                    identity,
                    self.now,
                    self.wall_ms,
                )
                .map_err(|e| e.to_string())?;
                self.store = Some(store);
                self.real = Some(real);
                self.model.reopen(self.now, self.wall_ms, site_name(*site));
            }
        }
        Ok(())
    }

    /// Disk, memory and model agree.
    fn check(&mut self) -> Result<(), String> {
        let now = self.now;
        let (store, real) = self.parts();
        let on_disk: Vec<(MessageId, String, u64, Vec<u8>)> = real
            .queued(store)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|m| (m.id, m.key, m.appended_at_ms, m.payload))
            .collect();
        let in_memory = real.outbox().queued_ids();
        let status = real.status(now);
        let timeout = real.poll_timeout();
        let want: Vec<(MessageId, String, u64, Vec<u8>)> = self
            .model
            .queued()
            .into_iter()
            .map(|m| (m.id, m.key.clone(), m.appended_ms, m.payload.clone()))
            .collect();
        if on_disk != want {
            return Err(format!("on disk {on_disk:?}\n  model {want:?}"));
        }
        let want_ids: Vec<MessageId> = want.iter().map(|m| m.0).collect();
        if in_memory != want_ids {
            return Err(format!("in memory {in_memory:?}, model {want_ids:?}"));
        }
        let want_timeout = self.model.next_timeout();
        if timeout != want_timeout {
            return Err(format!(
                "poll_timeout: real {timeout:?}, model {want_timeout:?}"
            ));
        }
        let want_status = self.model.status(now);
        if status != want_status {
            return Err(format!(
                "status\n  real  {status:?}\n  model {want_status:?}"
            ));
        }
        Ok(())
    }
}

fn run(case: &Case) -> Result<(), String> {
    let mut harness = Harness::new(case.config.clone())?;
    harness.check()?;
    for (i, op) in case.ops.iter().enumerate() {
        harness
            .step(op)
            .and_then(|()| harness.check())
            .map_err(|e| format!("step {i} {op:?}: {e}"))?;
    }
    Ok(())
}

fn run_catching(case: &Case) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| run(case))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("panicked: {message}"))
    })
}

/// Removes chunks of operations while the case still fails (delta debugging, bounded).
fn shrink(mut case: Case, mut error: String) -> (Case, String) {
    let mut budget = 400;
    let mut chunk = case.ops.len() / 2;
    while chunk >= 1 && budget > 0 {
        let mut progressed = false;
        let mut i = 0;
        while i + chunk <= case.ops.len() && budget > 0 {
            budget -= 1;
            let mut candidate = case.clone();
            candidate.ops.drain(i..i + chunk);
            match run_catching(&candidate) {
                Err(e) => {
                    case = candidate;
                    error = e;
                    progressed = true;
                }
                Ok(()) => i += chunk,
            }
        }
        if !progressed {
            chunk /= 2;
        }
    }
    (case, error)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn durable_outbox_agrees_with_the_model_under_random_operations() {
    let cases = env_u64("EDGEVOICE_MODEL_CASES").unwrap_or(DEFAULT_CASES);
    let first_seed = env_u64("EDGEVOICE_MODEL_SEED").unwrap_or(0xED6E_0000);
    for seed in first_seed..first_seed + cases {
        let case = generate(seed);
        if let Err(error) = run_catching(&case) {
            let (small, error) = shrink(case, error);
            panic!(
                "outbox and model disagree (seed {seed}; replay with EDGEVOICE_MODEL_SEED={seed} \
                 EDGEVOICE_MODEL_CASES=1)\nconfig: {:?}\nshrunk to {} ops:\n{:#?}\n{error}",
                small.config,
                small.ops.len(),
                small.ops
            );
        }
    }
}

/// The generator covers what the model test is for: every operation, evictions, rejections,
/// expiry, re-sends; if a change to it stops producing one, this says so.
#[test]
fn generated_cases_exercise_every_path() {
    let mut totals = StreamCounters::default();
    let mut reopens = 0;
    for seed in 0xED6E_0000..0xED6E_0000 + DEFAULT_CASES {
        let case = generate(seed);
        reopens += case
            .ops
            .iter()
            .filter(|op| matches!(op, Op::Reopen { .. }))
            .count();
        // Replay on the model alone (cheap) and sum its counters.
        let now = Instant::now();
        let mut model = Model::new(case.config.clone(), site_name(0), now, START_WALL_MS);
        let mut clock = now;
        for op in &case.ops {
            match op {
                Op::Append { stream, payload } => {
                    let _ = model.append(*stream, &payload.0, clock);
                }
                Op::Publish => {
                    model.publish();
                }
                Op::Puback(n) if !model.sent.is_empty() => {
                    let id = model.sent[n % model.sent.len()];
                    model.puback(id);
                }
                Op::Connect => model.connected = true,
                Op::Disconnect => {
                    model.disconnect();
                }
                Op::Advance { ms } => {
                    clock += Duration::from_millis(*ms);
                    model.expire(clock);
                }
                _ => {}
            }
        }
        let c = model.status(clock).totals;
        totals.appended += c.appended;
        totals.acked += c.acked;
        totals.resent += c.resent;
        totals.expired += c.expired;
        totals.rejected += c.rejected;
        totals.evicted += c.evicted;
    }
    assert!(reopens > 50, "{reopens} reopens");
    for (what, n) in [
        ("appended", totals.appended),
        ("acked", totals.acked),
        ("resent", totals.resent),
        ("expired", totals.expired),
        ("rejected", totals.rejected),
        ("evicted", totals.evicted),
    ] {
        assert!(n > 20, "only {n} {what} in the generated cases: {totals:?}");
    }
}
