//! The outbox state machine: what goes upstream, in which order, when, and what is given up
//! when there is no room. Sans-I/O in quinn-proto's vocabulary: `handle_*` feeds it events,
//! `poll_*` drains what it wants done, and the caller passes the time in; it never reads a
//! clock, touches the disk or the network. [`super::DurableOutbox`] wraps it with the store.
//!
//! It tracks messages, not their bytes: a queued message is its id, size and age; the payload
//! lives in the store and is read when it is published.
//!
//! Invariants, per stream: messages are kept in sequence order; the ones on the wire (sent,
//! not yet PUBACKed) are always a prefix of the queue, because publishing takes the first unsent
//! one and a disconnect returns every in-flight one to unsent; appended-at times never decrease
//! along the queue (the clock is made monotonic across restarts, see [`Outbox::restore_message`]).

use std::collections::VecDeque;
use std::fmt;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A kind of upstream message. Each has its own sequence, queue and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Calls,
    Summaries,
    CommandResults,
    Events,
    Analytics,
    Telemetry,
}

impl Stream {
    pub const ALL: [Stream; 6] = [
        Stream::Calls,
        Stream::Summaries,
        Stream::CommandResults,
        Stream::Events,
        Stream::Analytics,
        Stream::Telemetry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Calls => "calls",
            Stream::Summaries => "summaries",
            Stream::CommandResults => "command_results",
            Stream::Events => "events",
            Stream::Analytics => "analytics",
            Stream::Telemetry => "telemetry",
        }
    }

    pub fn from_name(name: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Call records and summaries are the product's output; commands and events matter to
    /// operators; analytics and telemetry can be recomputed or lost.
    pub fn priority(self) -> Priority {
        match self {
            Stream::Calls | Stream::Summaries => Priority::High,
            Stream::CommandResults | Stream::Events => Priority::Normal,
            Stream::Analytics | Stream::Telemetry => Priority::Low,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Publishing goes highest first; room is made by evicting lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
}

impl Priority {
    /// Lowest first.
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Normal, Priority::High];
}

/// Per-stream sequence number; the first message of a stream is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sequence(pub u64);

impl fmt::Display for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One message: its stream and sequence. Stable for the message's whole life, across
/// re-sends and restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId {
    pub stream: Stream,
    pub sequence: Sequence,
}

impl MessageId {
    /// The idempotency key upstream drops duplicates by: `{site}/{device}/{stream}/{sequence}`.
    pub fn idempotency_key(&self, site: &str, device: &str) -> String {
        format!("{site}/{device}/{}/{}", self.stream, self.sequence)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.stream, self.sequence)
    }
}

/// What happens to a new message of some priority that does not fit once everything of lower
/// priority has been evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse the new message; the producer gets [`AppendError::Full`].
    RejectNew,
    /// Evict the oldest queued message of the same priority to make room.
    DropOldest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityPolicy {
    pub when_full: WhenFull,
    /// Unsent messages older than this are expired (counted); `None` keeps them until sent.
    pub max_age: Option<Duration>,
}

/// Limits and policies. Bytes are payload bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    pub max_messages: usize,
    pub max_bytes: u64,
    /// Publishes sent and not yet PUBACKed, like MQTT's inflight window.
    pub max_in_flight: u16,
    /// Publishes per second once the burst is spent; `None` for no limit.
    pub drain_rate: Option<NonZeroU32>,
    /// Publishes allowed back to back after an idle spell.
    pub drain_burst: NonZeroU32,
    pub high: PriorityPolicy,
    pub normal: PriorityPolicy,
    pub low: PriorityPolicy,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_messages: 200_000,
            max_bytes: 256 * 1024 * 1024,
            max_in_flight: 16,
            drain_rate: NonZeroU32::new(50),
            drain_burst: NonZeroU32::new(50).expect("non-zero"),
            high: PriorityPolicy {
                when_full: WhenFull::RejectNew,
                max_age: None,
            },
            normal: PriorityPolicy {
                when_full: WhenFull::RejectNew,
                max_age: Some(7 * DAY),
            },
            low: PriorityPolicy {
                when_full: WhenFull::DropOldest,
                max_age: Some(DAY),
            },
        }
    }
}

impl OutboxConfig {
    pub fn policy(&self, priority: Priority) -> &PriorityPolicy {
        match priority {
            Priority::High => &self.high,
            Priority::Normal => &self.normal,
            Priority::Low => &self.low,
        }
    }

    pub fn validate(&self) -> Result<(), OutboxConfigError> {
        let zero = |field| Err(OutboxConfigError::Zero { field });
        if self.max_messages == 0 {
            return zero("max_messages");
        }
        if self.max_bytes == 0 {
            return zero("max_bytes");
        }
        if self.max_in_flight == 0 {
            return zero("max_in_flight");
        }
        if self.high.when_full == WhenFull::DropOldest {
            return Err(OutboxConfigError::HighPriorityDropped);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxConfigError {
    #[error("uplink outbox: {field} is 0; set it to at least 1, or leave it out for the default")]
    Zero { field: &'static str },
    #[error("uplink outbox: high-priority records (calls, summaries) are never dropped to make room; set their when_full to reject_new")]
    HighPriorityDropped,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("uplink outbox is full ({queued_messages} messages, {queued_bytes} bytes queued, nothing left it may evict): {stream} message of {size} bytes refused; keep it and retry once the uplink drains, or raise the outbox limits")]
    Full {
        stream: Stream,
        size: u64,
        queued_messages: usize,
        queued_bytes: u64,
    },
    #[error("{stream} message of {size} bytes is larger than the whole uplink outbox ({max_bytes} bytes); raise the outbox max_bytes or send smaller messages")]
    TooLarge {
        stream: Stream,
        size: u64,
        max_bytes: u64,
    },
}

/// Counters since the outbox was opened (they restart at zero with the daemon).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCounters {
    pub appended: u64,
    /// Publish attempts, re-sends included.
    pub published: u64,
    /// Publish attempts with DUP set.
    pub resent: u64,
    pub acked: u64,
    /// Queued messages removed to make room for newer or higher-priority ones.
    pub evicted: u64,
    /// Unsent messages removed for being older than their priority's max age.
    pub expired: u64,
    /// New messages refused (outbox full, or too large).
    pub rejected: u64,
}

impl StreamCounters {
    fn add(&mut self, other: &StreamCounters) {
        self.appended += other.appended;
        self.published += other.published;
        self.resent += other.resent;
        self.acked += other.acked;
        self.evicted += other.evicted;
        self.expired += other.expired;
        self.rejected += other.rejected;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStatus {
    pub stream: Stream,
    pub priority: Priority,
    pub queued: usize,
    pub bytes: u64,
    pub in_flight: usize,
    pub oldest_age_ms: Option<u64>,
    pub next_sequence: u64,
    #[serde(flatten)]
    pub counters: StreamCounters,
}

/// What `edgevoice status` shows of the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStatus {
    pub connected: bool,
    pub queued_messages: usize,
    pub queued_bytes: u64,
    pub max_messages: usize,
    pub max_bytes: u64,
    pub in_flight: usize,
    pub max_in_flight: u16,
    pub oldest_age_ms: Option<u64>,
    pub totals: StreamCounters,
    pub streams: Vec<StreamStatus>,
}

/// A message to put on the wire as an MQTT QoS 1 PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub id: MessageId,
    /// In `1..=max_in_flight`; [`Outbox::handle_puback`] takes it back.
    pub packet_id: u16,
    /// Set when this message may have been sent before (MQTT's DUP flag).
    pub dup: bool,
    pub size: u64,
}

/// A decided, not yet applied append: the id it gets and what it evicts. Make it durable,
/// then [`Outbox::commit_append`] it before any other call on the outbox.
#[derive(Debug)]
#[must_use]
pub struct AppendPlan {
    id: MessageId,
    size: u64,
    appended_at_ms: u64,
    evict: Vec<MessageId>,
    generation: u64,
}

impl AppendPlan {
    pub fn id(&self) -> MessageId {
        self.id
    }
    pub fn evicted(&self) -> &[MessageId] {
        &self.evict
    }
    /// On the outbox's clock: wall-clock milliseconds, never going backwards.
    pub fn appended_at_ms(&self) -> u64 {
        self.appended_at_ms
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub id: MessageId,
    /// Messages evicted to make room, oldest of the lowest priority first.
    pub evicted: Vec<MessageId>,
}

impl Appended {
    pub fn sequence(&self) -> Sequence {
        self.id.sequence
    }
}

#[derive(Debug, Clone)]
struct Entry {
    sequence: u64,
    size: u64,
    appended_at_ms: u64,
    dup: bool,
}

#[derive(Debug, Clone)]
struct StreamQueue {
    stream: Stream,
    entries: VecDeque<Entry>,
    /// `entries[..in_flight]` are on the wire.
    in_flight: usize,
    next_sequence: u64,
    bytes: u64,
    counters: StreamCounters,
    /// The broker refused this stream's next message: nothing of it is published before
    /// then, so the other streams are not held up behind it (see [`Outbox::hold`]).
    held_until: Option<Instant>,
}

impl StreamQueue {
    fn unsent(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().skip(self.in_flight)
    }
}

/// Wall-clock milliseconds derived from the `Instant`s passed in, anchored once at open, so
/// ages survive restarts (they are stored) while nothing depends on the wall clock afterwards.
#[derive(Debug, Clone, Copy)]
struct Clock {
    epoch: Instant,
    epoch_ms: u64,
}

impl Clock {
    fn ms(&self, now: Instant) -> u64 {
        self.epoch_ms + now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms.saturating_sub(self.epoch_ms))
    }
}

/// The drain rate as GCRA (a token bucket kept as one timestamp): exact, no floats.
#[derive(Debug, Clone)]
struct DrainRate {
    interval: Duration,
    tolerance: Duration,
    /// Theoretical arrival time of the next publish.
    tat: Option<Instant>,
}

impl DrainRate {
    fn new(rate: NonZeroU32, burst: NonZeroU32) -> Self {
        let interval = Duration::from_secs(1) / rate.get();
        Self {
            interval,
            tolerance: interval * (burst.get() - 1),
            tat: None,
        }
    }

    /// When the next publish is allowed; `None` if now.
    fn next_permit(&self) -> Option<Instant> {
        self.tat.and_then(|t| t.checked_sub(self.tolerance))
    }

    fn try_take(&mut self, now: Instant) -> bool {
        if self.next_permit().is_some_and(|at| at > now) {
            return false;
        }
        let base = self.tat.map_or(now, |t| t.max(now));
        self.tat = Some(base + self.interval);
        true
    }
}

#[derive(Debug, Clone)]
pub struct Outbox {
    config: OutboxConfig,
    streams: Vec<StreamQueue>,
    /// Index is the packet id (0 unused, as in MQTT).
    in_flight: Vec<Option<MessageId>>,
    in_flight_count: usize,
    queued_messages: usize,
    queued_bytes: u64,
    connected: bool,
    rate: Option<DrainRate>,
    clock: Clock,
    /// Bumped by every change that can invalidate an [`AppendPlan`].
    generation: u64,
}

impl Outbox {
    /// An empty outbox, disconnected. `wall_clock_ms` is the wall clock at `now`; it is read
    /// once here, to date messages in a way that survives a restart.
    pub fn new(
        config: OutboxConfig,
        now: Instant,
        wall_clock_ms: u64,
    ) -> Result<Self, OutboxConfigError> {
        config.validate()?;
        let rate = config
            .drain_rate
            .map(|rate| DrainRate::new(rate, config.drain_burst));
        Ok(Self {
            streams: Stream::ALL
                .iter()
                .map(|&stream| StreamQueue {
                    stream,
                    entries: VecDeque::new(),
                    in_flight: 0,
                    next_sequence: 1,
                    bytes: 0,
                    counters: StreamCounters::default(),
                    held_until: None,
                })
                .collect(),
            in_flight: vec![None; usize::from(config.max_in_flight) + 1],
            in_flight_count: 0,
            queued_messages: 0,
            queued_bytes: 0,
            connected: false,
            rate,
            clock: Clock {
                epoch: now,
                epoch_ms: wall_clock_ms,
            },
            generation: 0,
            config,
        })
    }

    /// Puts back a message found in the store. Call before anything else, in sequence order
    /// per stream. It is marked DUP: it may have been sent before the restart. The clock moves
    /// up to its time if the wall clock was set back, so ages and order stay monotonic.
    pub fn restore_message(&mut self, id: MessageId, size: u64, appended_at_ms: u64) {
        debug_assert_eq!(self.generation, 0, "restore before use");
        let queue = &mut self.streams[id.stream.index()];
        debug_assert!(queue
            .entries
            .back()
            .is_none_or(|last| last.sequence < id.sequence.0));
        queue.entries.push_back(Entry {
            sequence: id.sequence.0,
            size,
            appended_at_ms,
            dup: true,
        });
        queue.bytes += size;
        queue.next_sequence = queue.next_sequence.max(id.sequence.0 + 1);
        self.queued_messages += 1;
        self.queued_bytes += size;
        self.clock.epoch_ms = self.clock.epoch_ms.max(appended_at_ms);
    }

    /// Puts back a stream's persisted next sequence (which outlives its messages).
    pub fn restore_next_sequence(&mut self, stream: Stream, next: Sequence) {
        debug_assert_eq!(self.generation, 0, "restore before use");
        let queue = &mut self.streams[stream.index()];
        queue.next_sequence = queue.next_sequence.max(next.0);
    }

    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn next_sequence(&self, stream: Stream) -> Sequence {
        Sequence(self.streams[stream.index()].next_sequence)
    }

    /// Every queued message (in flight or not), stream by stream, in sequence order.
    pub fn queued_ids(&self) -> Vec<MessageId> {
        self.streams
            .iter()
            .flat_map(|q| {
                q.entries.iter().map(|e| MessageId {
                    stream: q.stream,
                    sequence: Sequence(e.sequence),
                })
            })
            .collect()
    }

    /// Decides where a new message of `size` bytes goes and what must be evicted for it,
    /// changing nothing but the rejected counter. See [`AppendPlan`].
    pub fn prepare_append(
        &mut self,
        stream: Stream,
        size: u64,
        now: Instant,
    ) -> Result<AppendPlan, AppendError> {
        match self.plan_append(stream, size, now) {
            Ok(plan) => Ok(plan),
            Err(e) => {
                self.streams[stream.index()].counters.rejected += 1;
                Err(e)
            }
        }
    }

    fn plan_append(
        &self,
        stream: Stream,
        size: u64,
        now: Instant,
    ) -> Result<AppendPlan, AppendError> {
        if size > self.config.max_bytes {
            return Err(AppendError::TooLarge {
                stream,
                size,
                max_bytes: self.config.max_bytes,
            });
        }
        let priority = stream.priority();
        let drop_own = self.config.policy(priority).when_full == WhenFull::DropOldest;
        // How many unsent messages at the head of each stream the plan evicts.
        let mut taken = vec![0usize; self.streams.len()];
        let mut evict = Vec::new();
        let mut messages = self.queued_messages + 1;
        let mut bytes = self.queued_bytes + size;
        while messages > self.config.max_messages || bytes > self.config.max_bytes {
            let victim = Priority::ALL
                .into_iter()
                .filter(|&p| p < priority || (p == priority && drop_own))
                .find_map(|p| self.oldest_unsent(p, &taken));
            let Some(index) = victim else {
                return Err(AppendError::Full {
                    stream,
                    size,
                    queued_messages: self.queued_messages,
                    queued_bytes: self.queued_bytes,
                });
            };
            let queue = &self.streams[index];
            let entry = &queue.entries[queue.in_flight + taken[index]];
            taken[index] += 1;
            messages -= 1;
            bytes -= entry.size;
            evict.push(MessageId {
                stream: queue.stream,
                sequence: Sequence(entry.sequence),
            });
        }
        Ok(AppendPlan {
            id: MessageId {
                stream,
                sequence: Sequence(self.streams[stream.index()].next_sequence),
            },
            size,
            appended_at_ms: self.clock.ms(now),
            evict,
            generation: self.generation,
        })
    }

    /// [`Self::oldest_unsent`] among the streams not held.
    fn oldest_unsent_publishable(&self, priority: Priority) -> Option<usize> {
        let mut skip = [0; Stream::ALL.len()];
        for (i, q) in self.streams.iter().enumerate() {
            if q.held_until.is_some() {
                // Past its end: nothing of it is a candidate.
                skip[i] = q.entries.len();
            }
        }
        self.oldest_unsent(priority, &skip)
    }

    /// The broker refused `stream`'s message (an MQTT 5 PUBACK reason: not authorized, quota,
    /// …): publish nothing more of that stream until `until`, so its order is kept while the
    /// other streams go on. The refused message itself comes back as unsent with the next
    /// [`Self::handle_disconnect`], or stays in flight until then.
    pub fn hold(&mut self, stream: Stream, until: Instant) {
        self.streams[stream.index()].held_until = Some(until);
        self.generation += 1;
    }

    /// Among streams of `priority`, the one whose first unsent message (past those already
    /// `taken`) is oldest; ties go to the stream listed first.
    fn oldest_unsent(&self, priority: Priority, taken: &[usize]) -> Option<usize> {
        self.streams
            .iter()
            .enumerate()
            .filter(|(_, q)| q.stream.priority() == priority)
            .filter_map(|(i, q)| {
                q.entries
                    .get(q.in_flight + taken[i])
                    .map(|e| (e.appended_at_ms, i))
            })
            .min()
            .map(|(_, i)| i)
    }

    /// Applies a plan from [`Outbox::prepare_append`] once its message is durable.
    ///
    /// # Panics
    /// If anything changed the outbox since the plan was made: that is a bug in the caller.
    pub fn commit_append(&mut self, plan: AppendPlan) -> Appended {
        assert_eq!(
            plan.generation, self.generation,
            "outbox changed between prepare_append and commit_append"
        );
        for victim in &plan.evict {
            let queue = &mut self.streams[victim.stream.index()];
            let entry = queue
                .entries
                .remove(queue.in_flight)
                .expect("planned eviction is queued");
            debug_assert_eq!(entry.sequence, victim.sequence.0);
            queue.bytes -= entry.size;
            queue.counters.evicted += 1;
            self.queued_messages -= 1;
            self.queued_bytes -= entry.size;
        }
        let queue = &mut self.streams[plan.id.stream.index()];
        queue.entries.push_back(Entry {
            sequence: plan.id.sequence.0,
            size: plan.size,
            appended_at_ms: plan.appended_at_ms,
            dup: false,
        });
        queue.next_sequence += 1;
        queue.bytes += plan.size;
        queue.counters.appended += 1;
        self.queued_messages += 1;
        self.queued_bytes += plan.size;
        self.generation += 1;
        Appended {
            id: plan.id,
            evicted: plan.evict,
        }
    }

    /// Prepare and commit at once, for callers that keep payloads elsewhere (and tests).
    pub fn append(
        &mut self,
        stream: Stream,
        size: u64,
        now: Instant,
    ) -> Result<Appended, AppendError> {
        let plan = self.prepare_append(stream, size, now)?;
        Ok(self.commit_append(plan))
    }

    /// The broker accepted the connection: publishing may start.
    pub fn handle_connected(&mut self) {
        self.connected = true;
        self.generation += 1;
    }

    /// The connection is gone: every in-flight message becomes unsent again, keeping its id
    /// (so its idempotency key) and sent next time with DUP. Packet ids of the old connection
    /// are forgotten, so a late PUBACK for one is ignored. Returns how many were in flight.
    pub fn handle_disconnect(&mut self) -> usize {
        self.connected = false;
        for queue in &mut self.streams {
            queue.in_flight = 0;
        }
        self.in_flight.iter_mut().for_each(|slot| *slot = None);
        self.generation += 1;
        std::mem::take(&mut self.in_flight_count)
    }

    /// The next message to publish, if connected, the in-flight window has room and the drain
    /// rate allows one now. Highest priority first; within a priority the stream whose next
    /// message is oldest; within a stream, sequence order.
    pub fn poll_publish(&mut self, now: Instant) -> Option<Publish> {
        for queue in &mut self.streams {
            if queue.held_until.is_some_and(|until| until <= now) {
                queue.held_until = None;
            }
        }
        if !self.connected || self.in_flight_count >= usize::from(self.config.max_in_flight) {
            return None;
        }
        let index = Priority::ALL
            .into_iter()
            .rev()
            .find_map(|p| self.oldest_unsent_publishable(p))?;
        if let Some(rate) = &mut self.rate {
            if !rate.try_take(now) {
                return None;
            }
        }
        let packet_id = (1..self.in_flight.len())
            .find(|&i| self.in_flight[i].is_none())
            .expect("a free packet id while under max_in_flight");
        let queue = &mut self.streams[index];
        let entry = &mut queue.entries[queue.in_flight];
        let id = MessageId {
            stream: queue.stream,
            sequence: Sequence(entry.sequence),
        };
        let dup = std::mem::replace(&mut entry.dup, true);
        let size = entry.size;
        queue.in_flight += 1;
        queue.counters.published += 1;
        queue.counters.resent += u64::from(dup);
        self.in_flight[packet_id] = Some(id);
        self.in_flight_count += 1;
        self.generation += 1;
        Some(Publish {
            id,
            packet_id: packet_id as u16,
            dup,
            size,
        })
    }

    /// The message in flight under `packet_id` on this connection, if any.
    pub fn in_flight_id(&self, packet_id: u16) -> Option<MessageId> {
        *self.in_flight.get(usize::from(packet_id))?
    }

    /// The broker's PUBACK: the message is delivered and leaves the outbox. Returns its id
    /// (for the durable delete), or `None` for a packet id not in flight on this connection.
    pub fn handle_puback(&mut self, packet_id: u16) -> Option<MessageId> {
        let id = self.in_flight.get_mut(usize::from(packet_id))?.take()?;
        self.in_flight_count -= 1;
        let queue = &mut self.streams[id.stream.index()];
        let position = queue
            .entries
            .iter()
            .take(queue.in_flight)
            .position(|e| e.sequence == id.sequence.0)
            .expect("an in-flight message is in its stream's in-flight prefix");
        let entry = queue
            .entries
            .remove(position)
            .expect("position is in range");
        queue.in_flight -= 1;
        queue.bytes -= entry.size;
        queue.counters.acked += 1;
        self.queued_messages -= 1;
        self.queued_bytes -= entry.size;
        self.generation += 1;
        Some(id)
    }

    /// Expires unsent messages older than their priority's max age. Messages in flight are
    /// left alone: their fate is the broker's now. Returns the expired ids, oldest first per
    /// stream.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<MessageId> {
        let now_ms = self.clock.ms(now);
        let mut expired = Vec::new();
        for queue in &mut self.streams {
            let Some(max_age) = self.config.policy(queue.stream.priority()).max_age else {
                continue;
            };
            let max_age_ms = max_age.as_millis() as u64;
            while let Some(entry) = queue.entries.get(queue.in_flight) {
                if now_ms.saturating_sub(entry.appended_at_ms) < max_age_ms {
                    break;
                }
                let entry = queue.entries.remove(queue.in_flight).expect("just seen");
                queue.bytes -= entry.size;
                queue.counters.expired += 1;
                self.queued_messages -= 1;
                self.queued_bytes -= entry.size;
                expired.push(MessageId {
                    stream: queue.stream,
                    sequence: Sequence(entry.sequence),
                });
            }
        }
        if !expired.is_empty() {
            self.generation += 1;
        }
        expired
    }

    /// When to call [`Outbox::handle_timeout`] or [`Outbox::poll_publish`] next if nothing
    /// else happens: the next expiry, or the drain rate's next permit while something is
    /// waiting to be published. May be in the past (then: now).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self
            .streams
            .iter()
            .filter_map(|q| {
                let max_age = self.config.policy(q.stream.priority()).max_age?;
                let head = q.unsent().next()?;
                let due_ms = head
                    .appended_at_ms
                    .saturating_add(max_age.as_millis() as u64);
                Some(self.clock.instant(due_ms))
            })
            .min();
        // A held stream is due again when its hold ends.
        let held = self
            .streams
            .iter()
            .filter(|q| q.unsent().next().is_some())
            .filter_map(|q| q.held_until)
            .min()
            .filter(|_| self.connected);
        let waiting = self.connected
            && self.in_flight_count < usize::from(self.config.max_in_flight)
            && self
                .streams
                .iter()
                .any(|q| q.held_until.is_none() && q.unsent().next().is_some());
        let permit = self
            .rate
            .as_ref()
            .filter(|_| waiting)
            .and_then(DrainRate::next_permit);
        expiry.into_iter().chain(permit).chain(held).min()
    }

    /// Messages queued (in flight or not); [`Self::status`] without building the report.
    pub fn queued_messages(&self) -> usize {
        self.queued_messages
    }

    pub fn status(&self, now: Instant) -> OutboxStatus {
        let now_ms = self.clock.ms(now);
        let age = |e: &Entry| now_ms.saturating_sub(e.appended_at_ms);
        let streams: Vec<StreamStatus> = self
            .streams
            .iter()
            .map(|q| StreamStatus {
                stream: q.stream,
                priority: q.stream.priority(),
                queued: q.entries.len(),
                bytes: q.bytes,
                in_flight: q.in_flight,
                oldest_age_ms: q.entries.front().map(age),
                next_sequence: q.next_sequence,
                counters: q.counters,
            })
            .collect();
        let mut totals = StreamCounters::default();
        streams.iter().for_each(|s| totals.add(&s.counters));
        OutboxStatus {
            connected: self.connected,
            queued_messages: self.queued_messages,
            queued_bytes: self.queued_bytes,
            max_messages: self.config.max_messages,
            max_bytes: self.config.max_bytes,
            in_flight: self.in_flight_count,
            max_in_flight: self.config.max_in_flight,
            oldest_age_ms: streams.iter().filter_map(|s| s.oldest_age_ms).max(),
            totals,
            streams,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const WALL: u64 = 1_700_000_000_000;

    fn config() -> OutboxConfig {
        OutboxConfig {
            max_messages: 100,
            max_bytes: 100_000,
            max_in_flight: 4,
            drain_rate: None,
            drain_burst: NonZeroU32::MIN,
            high: PriorityPolicy {
                when_full: WhenFull::RejectNew,
                max_age: None,
            },
            normal: PriorityPolicy {
                when_full: WhenFull::RejectNew,
                max_age: None,
            },
            low: PriorityPolicy {
                when_full: WhenFull::DropOldest,
                max_age: None,
            },
        }
    }

    fn outbox(config: OutboxConfig) -> (Outbox, Instant) {
        let t0 = Instant::now();
        (Outbox::new(config, t0, WALL).unwrap(), t0)
    }

    fn id(stream: Stream, sequence: u64) -> MessageId {
        MessageId {
            stream,
            sequence: Sequence(sequence),
        }
    }

    fn drain(outbox: &mut Outbox, now: Instant) -> Vec<Publish> {
        std::iter::from_fn(|| outbox.poll_publish(now)).collect()
    }

    fn ack_all(outbox: &mut Outbox, sent: &[Publish]) {
        for p in sent {
            assert_eq!(outbox.handle_puback(p.packet_id), Some(p.id));
        }
    }

    #[test]
    fn publishes_each_stream_in_sequence_order_and_acks_remove() {
        let (mut ob, t0) = outbox(config());
        for i in 0..10 {
            let stream = [Stream::Events, Stream::CommandResults][i % 2];
            ob.append(stream, 10, t0 + MS * i as u32).unwrap();
        }
        ob.handle_connected();
        let mut seen = Vec::new();
        while !ob.queued_ids().is_empty() {
            let sent = drain(&mut ob, t0);
            assert!(!sent.is_empty() && sent.len() <= 4);
            ack_all(&mut ob, &sent);
            seen.extend(sent.into_iter().map(|p| p.id));
        }
        for stream in [Stream::Events, Stream::CommandResults] {
            let seqs: Vec<u64> = seen
                .iter()
                .filter(|i| i.stream == stream)
                .map(|i| i.sequence.0)
                .collect();
            assert_eq!(seqs, [1, 2, 3, 4, 5], "{stream}");
        }
        // Same priority: oldest first across streams, so the append order comes back.
        assert_eq!(seen[0], id(Stream::Events, 1));
        assert_eq!(seen[1], id(Stream::CommandResults, 1));
        let status = ob.status(t0);
        assert_eq!(status.queued_messages, 0);
        assert_eq!(status.queued_bytes, 0);
        assert_eq!(status.totals.acked, 10);
    }

    #[test]
    fn higher_priority_streams_are_published_first() {
        let (mut ob, t0) = outbox(config());
        ob.append(Stream::Telemetry, 1, t0).unwrap();
        ob.append(Stream::Events, 1, t0 + MS).unwrap();
        ob.append(Stream::Summaries, 1, t0 + MS * 2).unwrap();
        ob.append(Stream::Calls, 1, t0 + MS * 3).unwrap();
        ob.handle_connected();
        let order: Vec<Stream> = drain(&mut ob, t0).iter().map(|p| p.id.stream).collect();
        assert_eq!(
            order,
            [
                Stream::Summaries,
                Stream::Calls,
                Stream::Events,
                Stream::Telemetry
            ]
        );
    }

    #[test]
    fn nothing_is_published_while_disconnected() {
        let (mut ob, t0) = outbox(config());
        ob.append(Stream::Calls, 1, t0).unwrap();
        assert_eq!(ob.poll_publish(t0), None);
        ob.handle_connected();
        assert!(ob.poll_publish(t0).is_some());
    }

    #[test]
    fn in_flight_window_bounds_unacked_publishes_and_packet_ids() {
        let (mut ob, t0) = outbox(config());
        for _ in 0..6 {
            ob.append(Stream::Calls, 1, t0).unwrap();
        }
        ob.handle_connected();
        let sent = drain(&mut ob, t0);
        assert_eq!(sent.len(), 4);
        let mut ids: Vec<u16> = sent.iter().map(|p| p.packet_id).collect();
        ids.sort();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert_eq!(ob.handle_puback(sent[2].packet_id), Some(sent[2].id));
        let next = drain(&mut ob, t0);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].packet_id, sent[2].packet_id, "freed id is reused");
        assert_eq!(next[0].id, id(Stream::Calls, 5));
    }

    #[test]
    fn puback_in_any_order_removes_exactly_that_message() {
        let (mut ob, t0) = outbox(config());
        for _ in 0..4 {
            ob.append(Stream::Calls, 10, t0).unwrap();
        }
        ob.handle_connected();
        let sent = drain(&mut ob, t0);
        for i in [2, 0, 3] {
            assert_eq!(ob.handle_puback(sent[i].packet_id), Some(sent[i].id));
        }
        assert_eq!(ob.queued_ids(), [id(Stream::Calls, 2)]);
        assert_eq!(ob.status(t0).queued_bytes, 10);
    }

    #[test]
    fn unknown_and_stale_pubacks_are_ignored() {
        let (mut ob, t0) = outbox(config());
        ob.append(Stream::Calls, 1, t0).unwrap();
        ob.handle_connected();
        let sent = ob.poll_publish(t0).unwrap();
        assert_eq!(ob.handle_puback(0), None);
        assert_eq!(ob.handle_puback(3), None);
        assert_eq!(ob.handle_puback(u16::MAX), None);
        ob.handle_disconnect();
        // A PUBACK from the dead connection must not delete the message.
        assert_eq!(ob.handle_puback(sent.packet_id), None);
        assert_eq!(ob.queued_ids(), [id(Stream::Calls, 1)]);
    }

    #[test]
    fn disconnect_resends_in_flight_with_the_same_id_and_dup() {
        let (mut ob, t0) = outbox(config());
        for _ in 0..3 {
            ob.append(Stream::Summaries, 1, t0).unwrap();
        }
        ob.handle_connected();
        let first = drain(&mut ob, t0);
        assert!(first.iter().all(|p| !p.dup));
        assert_eq!(ob.handle_puback(first[1].packet_id), Some(first[1].id));
        assert_eq!(ob.handle_disconnect(), 2);
        assert_eq!(ob.poll_publish(t0), None);
        ob.handle_connected();
        let again = drain(&mut ob, t0);
        let ids: Vec<MessageId> = again.iter().map(|p| p.id).collect();
        assert_eq!(ids, [id(Stream::Summaries, 1), id(Stream::Summaries, 3)]);
        assert!(again.iter().all(|p| p.dup));
        let status = ob.status(t0);
        assert_eq!(status.totals.published, 5);
        assert_eq!(status.totals.resent, 2);
    }

    #[test]
    fn a_call_record_evicts_the_oldest_lowest_priority_first() {
        let mut cfg = config();
        cfg.max_messages = 4;
        let (mut ob, t0) = outbox(cfg);
        ob.append(Stream::Events, 1, t0).unwrap();
        ob.append(Stream::Telemetry, 1, t0 + MS).unwrap();
        ob.append(Stream::Analytics, 1, t0 + MS * 2).unwrap();
        ob.append(Stream::Telemetry, 1, t0 + MS * 3).unwrap();
        let a = ob.append(Stream::Calls, 1, t0 + MS * 4).unwrap();
        assert_eq!(a.evicted, [id(Stream::Telemetry, 1)]);
        let a = ob.append(Stream::Calls, 1, t0 + MS * 5).unwrap();
        assert_eq!(a.evicted, [id(Stream::Analytics, 1)]);
        let a = ob.append(Stream::Calls, 1, t0 + MS * 6).unwrap();
        assert_eq!(a.evicted, [id(Stream::Telemetry, 2)]);
        // Only events (normal) and calls left: a call evicts the event.
        let a = ob.append(Stream::Calls, 1, t0 + MS * 7).unwrap();
        assert_eq!(a.evicted, [id(Stream::Events, 1)]);
        let status = ob.status(t0);
        assert_eq!(status.totals.evicted, 4);
        assert_eq!(
            status.streams[Stream::Telemetry.index()].counters.evicted,
            2
        );
    }

    #[test]
    fn high_priority_is_refused_never_dropped_when_only_high_priority_is_queued() {
        let mut cfg = config();
        cfg.max_messages = 2;
        let (mut ob, t0) = outbox(cfg);
        ob.append(Stream::Calls, 1, t0).unwrap();
        ob.append(Stream::Summaries, 1, t0).unwrap();
        let err = ob.append(Stream::Calls, 1, t0).unwrap_err();
        assert!(matches!(err, AppendError::Full { .. }));
        assert!(err.to_string().contains("retry"), "{err}");
        assert_eq!(ob.queued_ids().len(), 2);
        // A low-priority message does not get in either, and the refusal is counted.
        ob.append(Stream::Telemetry, 1, t0).unwrap_err();
        let status = ob.status(t0);
        assert_eq!(status.totals.rejected, 2);
        assert_eq!(status.totals.evicted, 0);
        assert_eq!(
            ob.next_sequence(Stream::Calls),
            Sequence(2),
            "no sequence used"
        );
    }

    #[test]
    fn drop_oldest_policy_evicts_its_own_oldest_and_reject_new_refuses() {
        let mut cfg = config();
        cfg.max_bytes = 30;
        cfg.normal.when_full = WhenFull::RejectNew;
        let (mut ob, t0) = outbox(cfg);
        ob.append(Stream::Telemetry, 10, t0).unwrap();
        ob.append(Stream::Analytics, 10, t0 + MS).unwrap();
        ob.append(Stream::Telemetry, 10, t0 + MS * 2).unwrap();
        // Low is drop-oldest: a 20-byte telemetry message evicts the two oldest low ones.
        let a = ob.append(Stream::Telemetry, 20, t0 + MS * 3).unwrap();
        assert_eq!(
            a.evicted,
            [id(Stream::Telemetry, 1), id(Stream::Analytics, 1)]
        );
        // Normal evicts low, then is refused rather than dropping older normal ones.
        ob.append(Stream::Events, 25, t0 + MS * 4).unwrap();
        let err = ob.append(Stream::Events, 10, t0 + MS * 5).unwrap_err();
        assert!(matches!(err, AppendError::Full { .. }), "{err}");
        assert_eq!(ob.queued_ids(), [id(Stream::Events, 1)]);
    }

    #[test]
    fn in_flight_messages_are_never_evicted() {
        let mut cfg = config();
        cfg.max_messages = 2;
        let (mut ob, t0) = outbox(cfg);
        ob.append(Stream::Telemetry, 1, t0).unwrap();
        ob.append(Stream::Telemetry, 1, t0).unwrap();
        ob.handle_connected();
        assert_eq!(drain(&mut ob, t0).len(), 2);
        assert!(matches!(
            ob.append(Stream::Calls, 1, t0),
            Err(AppendError::Full { .. })
        ));
        ob.handle_disconnect();
        let a = ob.append(Stream::Calls, 1, t0).unwrap();
        assert_eq!(a.evicted, [id(Stream::Telemetry, 1)]);
    }

    #[test]
    fn a_message_larger_than_the_outbox_is_refused() {
        let mut cfg = config();
        cfg.max_bytes = 100;
        let (mut ob, t0) = outbox(cfg);
        let err = ob.append(Stream::Calls, 101, t0).unwrap_err();
        assert!(matches!(err, AppendError::TooLarge { .. }));
        assert!(err.to_string().contains("max_bytes"), "{err}");
        ob.append(Stream::Calls, 100, t0).unwrap();
    }

    #[test]
    fn a_held_stream_waits_in_order_while_the_others_go_on() {
        let (mut ob, t0) = outbox(config());
        for (i, stream) in [
            Stream::Calls,
            Stream::Calls,
            Stream::Summaries,
            Stream::Events,
        ]
        .into_iter()
        .enumerate()
        {
            ob.append(stream, 10, t0 + MS * i as u32).unwrap();
        }
        ob.handle_connected();
        let first = ob.poll_publish(t0).unwrap();
        assert_eq!(first.id, id(Stream::Calls, 1));
        // The broker refuses calls/1: the stream is held and the connection dropped.
        ob.hold(Stream::Calls, t0 + MS * 1000);
        assert_eq!(ob.handle_disconnect(), 1);
        ob.handle_connected();
        let sent: Vec<MessageId> = drain(&mut ob, t0 + MS).iter().map(|p| p.id).collect();
        assert_eq!(
            sent,
            [id(Stream::Summaries, 1), id(Stream::Events, 1)],
            "the other streams are not stuck behind the refused one"
        );
        assert_eq!(
            ob.poll_timeout(),
            Some(t0 + MS * 1000),
            "woken when the hold ends, not spinning before"
        );
        assert_eq!(ob.poll_publish(t0 + MS * 999), None);
        let retried: Vec<MessageId> = drain(&mut ob, t0 + MS * 1000)
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(
            retried,
            [id(Stream::Calls, 1), id(Stream::Calls, 2)],
            "the held stream resumes in its own order, the refused message first"
        );
    }

    #[test]
    fn a_hold_on_an_empty_stream_asks_for_no_wake_up() {
        let (mut ob, t0) = outbox(config());
        ob.handle_connected();
        ob.hold(Stream::Calls, t0 + MS * 1000);
        assert_eq!(ob.poll_timeout(), None);
    }

    #[test]
    fn drain_rate_allows_a_burst_then_the_rate() {
        let mut cfg = config();
        cfg.max_in_flight = 1000;
        cfg.max_messages = 1000;
        cfg.drain_rate = NonZeroU32::new(10);
        cfg.drain_burst = NonZeroU32::new(5).unwrap();
        let (mut ob, t0) = outbox(cfg);
        for _ in 0..200 {
            ob.append(Stream::Telemetry, 1, t0).unwrap();
        }
        ob.handle_connected();
        assert_eq!(drain(&mut ob, t0).len(), 5, "the burst");
        assert_eq!(ob.poll_timeout(), Some(t0 + MS * 100));
        assert_eq!(drain(&mut ob, t0 + MS * 99).len(), 0);
        assert_eq!(drain(&mut ob, t0 + MS * 100).len(), 1);
        // Polled every 10 ms for 10 s: 10 a second, never more than burst + rate * t.
        let mut sent = 6;
        for step in 1..=1000u32 {
            sent += drain(&mut ob, t0 + MS * 100 + MS * 10 * step).len();
        }
        assert_eq!(sent, 6 + 100);
        // Idle long enough and the burst is back.
        assert_eq!(drain(&mut ob, t0 + Duration::from_secs(60)).len(), 5);
    }

    #[test]
    fn expiry_removes_old_unsent_messages_but_not_in_flight_ones() {
        let mut cfg = config();
        cfg.low.max_age = Some(Duration::from_secs(10));
        cfg.normal.max_age = Some(Duration::from_secs(60));
        let (mut ob, t0) = outbox(cfg);
        ob.append(Stream::Telemetry, 5, t0).unwrap();
        ob.append(Stream::Telemetry, 5, t0 + Duration::from_secs(1))
            .unwrap();
        ob.append(Stream::Telemetry, 5, t0 + Duration::from_secs(2))
            .unwrap();
        ob.append(Stream::Events, 5, t0).unwrap();
        ob.append(Stream::Calls, 5, t0).unwrap();
        ob.handle_connected();
        let sent = ob.poll_publish(t0).unwrap();
        assert_eq!(sent.id, id(Stream::Calls, 1));
        assert_eq!(ob.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        let expired = ob.handle_timeout(t0 + Duration::from_millis(11_500));
        assert_eq!(
            expired,
            [id(Stream::Telemetry, 1), id(Stream::Telemetry, 2)]
        );
        assert_eq!(ob.poll_timeout(), Some(t0 + Duration::from_secs(12)));
        let expired = ob.handle_timeout(t0 + Duration::from_secs(3600));
        assert_eq!(expired, [id(Stream::Events, 1), id(Stream::Telemetry, 3)]);
        // The call record is high priority (no max age) and in flight anyway.
        assert_eq!(ob.queued_ids(), [id(Stream::Calls, 1)]);
        assert_eq!(ob.status(t0).totals.expired, 4);
        assert_eq!(ob.poll_timeout(), None);
    }

    #[test]
    fn status_reports_queues_bytes_ages_and_counters() {
        let (mut ob, t0) = outbox(config());
        ob.append(Stream::Calls, 100, t0).unwrap();
        ob.append(Stream::Telemetry, 7, t0 + Duration::from_secs(5))
            .unwrap();
        ob.handle_connected();
        ob.poll_publish(t0 + Duration::from_secs(5)).unwrap();
        let status = ob.status(t0 + Duration::from_secs(9));
        assert!(status.connected);
        assert_eq!(status.queued_messages, 2);
        assert_eq!(status.queued_bytes, 107);
        assert_eq!(status.in_flight, 1);
        assert_eq!(status.oldest_age_ms, Some(9000));
        let calls = &status.streams[Stream::Calls.index()];
        assert_eq!(
            (calls.queued, calls.in_flight, calls.next_sequence),
            (1, 1, 2)
        );
        let telemetry = &status.streams[Stream::Telemetry.index()];
        assert_eq!(telemetry.oldest_age_ms, Some(4000));
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["streams"][0]["stream"], "calls");
        assert_eq!(json["streams"][0]["appended"], 1);
        assert_eq!(json["totals"]["published"], 1);
    }

    #[test]
    fn restored_messages_keep_order_and_are_marked_dup() {
        let t0 = Instant::now();
        // The wall clock was set back by an hour since these were written.
        let mut ob = Outbox::new(config(), t0, WALL - 3_600_000).unwrap();
        ob.restore_message(id(Stream::Calls, 7), 3, WALL - 1000);
        ob.restore_message(id(Stream::Calls, 9), 3, WALL);
        ob.restore_next_sequence(Stream::Calls, Sequence(12));
        ob.restore_next_sequence(Stream::Events, Sequence(4));
        let a = ob.append(Stream::Calls, 1, t0).unwrap();
        assert_eq!(a.sequence(), Sequence(12));
        assert_eq!(ob.next_sequence(Stream::Events), Sequence(4));
        assert_eq!(ob.status(t0).oldest_age_ms, Some(1000));
        ob.handle_connected();
        let sent = drain(&mut ob, t0);
        assert_eq!(
            sent.iter()
                .map(|p| (p.id.sequence.0, p.dup))
                .collect::<Vec<_>>(),
            [(7, true), (9, true), (12, false)]
        );
    }

    #[test]
    #[should_panic(expected = "changed between prepare_append and commit_append")]
    fn a_stale_append_plan_is_refused() {
        let (mut ob, t0) = outbox(config());
        ob.append(Stream::Calls, 1, t0).unwrap();
        let plan = ob.prepare_append(Stream::Calls, 1, t0).unwrap();
        ob.handle_connected();
        ob.poll_publish(t0).unwrap();
        ob.commit_append(plan);
    }

    #[test]
    fn config_refuses_zero_limits_and_dropping_high_priority() {
        let mut cfg = OutboxConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        cfg.high.when_full = WhenFull::DropOldest;
        let err = cfg.validate().unwrap_err();
        assert!(err.to_string().contains("reject_new"), "{err}");
        let cfg = OutboxConfig {
            max_in_flight: 0,
            ..OutboxConfig::default()
        };
        let err = Outbox::new(cfg, Instant::now(), WALL).unwrap_err();
        assert_eq!(
            err,
            OutboxConfigError::Zero {
                field: "max_in_flight"
            }
        );
    }

    #[test]
    fn idempotency_key_names_site_device_stream_and_sequence() {
        let key = id(Stream::CommandResults, 42).idempotency_key("lon-1", "01hx");
        assert_eq!(key, "lon-1/01hx/command_results/42");
        assert_eq!(
            Stream::from_name("command_results"),
            Some(Stream::CommandResults)
        );
        assert_eq!(Stream::from_name("nope"), None);
    }
}
