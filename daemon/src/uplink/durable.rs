//! The outbox on the store: every append is on disk (flushed) before it returns, a message
//! leaves the disk only after its PUBACK (or an eviction/expiry the counters report), and
//! opening the store rebuilds the outbox from what is there.
//!
//! Layout in the `outbox` tree (text keys, so they read well in listings):
//! - `m/{stream}/{sequence:020}`: a message: its idempotency key, time and payload. The zero
//!   padding makes keys sort by sequence, so one scan rebuilds every stream in order.
//! - `s/{stream}`: the stream's next sequence. Written in the same atomic batch as each
//!   append, so sequences keep rising after a restart even when the outbox had drained.
//!
//! What a crash does, at each point:
//! - during an append: the batch (message, next sequence, evictions) landed whole or not at
//!   all; if not, the producer got no `Ok` and still holds the data.
//! - after an append, before or while publishing: the message is re-read and sent after the
//!   restart with the key it was stored with, DUP set.
//! - between the broker's PUBACK and our delete: the message is sent once more with the same
//!   key; upstream drops it as a duplicate. That is the price of acknowledge-after-persist.
//! - during an expiry or PUBACK delete batch: the same, or the message expires again.
//!
//! A failed store write leaves memory and disk possibly apart; the outbox then refuses
//! further work until it is reopened, which rebuilds it from the disk.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::outbox::{
    AppendError, Appended, MessageId, Outbox, OutboxConfig, OutboxConfigError, OutboxStatus,
    Sequence, Stream,
};
use crate::store::{Batch, Record, Store, StoreError, TreeName, TypedTree, Writes};

/// Who this device is upstream; part of every idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    site: String,
    device: String,
}

impl Identity {
    /// Both become MQTT topic levels and key parts, so they may not be empty or hold `/`,
    /// `+`, `#` or control characters.
    pub fn new(site: &str, device: &str) -> Result<Self, IdentityError> {
        for (what, value) in [("site id", site), ("device id", device)] {
            let bad = |c: char| matches!(c, '/' | '+' | '#') || c.is_control();
            if value.is_empty() || value.chars().any(bad) {
                return Err(IdentityError {
                    what,
                    value: value.to_owned(),
                });
            }
        }
        Ok(Self {
            site: site.to_owned(),
            device: device.to_owned(),
        })
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn key(&self, id: MessageId) -> String {
        id.idempotency_key(&self.site, &self.device)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("uplink: {what} {value:?} cannot be part of an MQTT topic or idempotency key (empty, or has '/', '+', '#' or a control character); use letters, digits, '-', '_' or '.'")]
pub struct IdentityError {
    what: &'static str,
    value: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Config(#[from] OutboxConfigError),
    #[error("uplink outbox: {0}")]
    Store(#[from] StoreError),
    #[error("uplink outbox record {key} is inconsistent ({reason}); back up the state dir and report it: the outbox cannot be rebuilt around it")]
    Corrupt { key: String, reason: String },
    #[error("uplink outbox: an earlier store write failed, so memory and disk may disagree; reopen the outbox (restart the uplink) to rebuild it from the store")]
    NeedsReopen,
}

/// A message to put on the wire: MQTT QoS 1, `dup` as the DUP flag, `key` carried with it
/// (topic level, MQTT 5 user property or payload envelope: the shell's choice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingPublish {
    pub id: MessageId,
    pub key: String,
    pub packet_id: u16,
    pub dup: bool,
    pub payload: Vec<u8>,
}

/// A queued message as stored, for listings and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub id: MessageId,
    pub key: String,
    pub appended_at_ms: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum OutboxRecord {
    Message(StoredMessage),
    Stream(StreamLedger),
}

impl Record for OutboxRecord {
    const TREE: TreeName = TreeName::Outbox;
    const SCHEMA: u32 = 1;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredMessage {
    /// The idempotency key as first written: re-sends reuse it even if the site id changed.
    key: String,
    stream: Stream,
    sequence: u64,
    appended_at_ms: u64,
    payload: StoredPayload,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StreamLedger {
    next_sequence: u64,
}

/// Payload bytes inside a JSON record: as text when they are UTF-8 (JSON payloads, the usual
/// case, stay readable and small), else hex.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredPayload {
    Text(String),
    Hex(String),
}

impl StoredPayload {
    fn new(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => StoredPayload::Text(text.to_owned()),
            Err(_) => StoredPayload::Hex(hex::encode(bytes)),
        }
    }

    fn into_bytes(self) -> Result<Vec<u8>, String> {
        match self {
            StoredPayload::Text(text) => Ok(text.into_bytes()),
            StoredPayload::Hex(hex) => hex::decode(hex).map_err(|e| e.to_string()),
        }
    }
}

/// Messages a store write owes upstream, under the key [`owe`] was given: kept in the
/// `owed_upstream` tree until [`DurableOutbox::take_owed`] moves them into the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwedMessages {
    messages: Vec<OwedMessage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OwedMessage {
    stream: Stream,
    payload: StoredPayload,
}

impl Record for OwedMessages {
    const TREE: TreeName = TreeName::OwedUpstream;
    const SCHEMA: u32 = 1;
}

/// Adds to `writes` that `messages` (in order) are owed upstream under `key`: written with
/// the record they come from, they are one durable fact with it, and the uplink queues them
/// ([`DurableOutbox::take_owed`]) at its next chance, also after a crash. A later `owe` under
/// the same key, before they were taken, replaces them.
pub fn owe(
    writes: &mut Writes,
    key: &str,
    messages: &[(Stream, Vec<u8>)],
) -> Result<(), StoreError> {
    let owed = OwedMessages {
        messages: messages
            .iter()
            .map(|(stream, payload)| OwedMessage {
                stream: *stream,
                payload: StoredPayload::new(payload),
            })
            .collect(),
    };
    writes.put(key.as_bytes(), &owed)
}

fn message_key(id: MessageId) -> String {
    format!("m/{}/{:020}", id.stream, id.sequence.0)
}

fn stream_key(stream: Stream) -> String {
    format!("s/{stream}")
}

/// [`Outbox`] kept on the store. Calls take the store explicitly, so whoever owns the
/// [`Store`] (the daemon context) can lend it; always pass the one it was opened with.
#[derive(Debug)]
pub struct DurableOutbox {
    outbox: Outbox,
    identity: Identity,
    poisoned: bool,
}

impl DurableOutbox {
    /// Opens the outbox in `store`, rebuilding queues and sequences from it. `now` and
    /// `wall_clock_ms` are the same moment on the monotonic and the wall clock.
    pub fn open(
        store: &Store,
        config: OutboxConfig,
        identity: Identity,
        now: Instant,
        wall_clock_ms: u64,
    ) -> Result<Self, OutboxError> {
        let mut outbox = Outbox::new(config, now, wall_clock_ms)?;
        let tree = store.tree::<OutboxRecord>()?;
        for item in tree.iter() {
            let (raw_key, record) = item?;
            let key = String::from_utf8_lossy(&raw_key).into_owned();
            let corrupt = |reason: &str| OutboxError::Corrupt {
                key: key.clone(),
                reason: reason.to_owned(),
            };
            match record {
                OutboxRecord::Message(m) => {
                    let id = MessageId {
                        stream: m.stream,
                        sequence: Sequence(m.sequence),
                    };
                    if message_key(id) != key {
                        return Err(corrupt("its stream or sequence does not match its key"));
                    }
                    let size = m.payload.into_bytes().map_err(|e| corrupt(&e))?.len();
                    outbox.restore_message(id, size as u64, m.appended_at_ms);
                }
                OutboxRecord::Stream(ledger) => {
                    let stream = key
                        .strip_prefix("s/")
                        .and_then(Stream::from_name)
                        .ok_or_else(|| corrupt("not a known stream"))?;
                    outbox.restore_next_sequence(stream, Sequence(ledger.next_sequence));
                }
            }
        }
        Ok(Self {
            outbox,
            identity,
            poisoned: false,
        })
    }

    fn tree<'s>(&self, store: &'s Store) -> Result<TypedTree<'s, OutboxRecord>, OutboxError> {
        if self.poisoned {
            return Err(OutboxError::NeedsReopen);
        }
        Ok(store.tree::<OutboxRecord>()?)
    }

    /// Runs a store write; a failure poisons the outbox until it is reopened, except a write
    /// the store refused up front for want of disk space (nothing reached the disk).
    fn write<T>(&mut self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, OutboxError> {
        f().map_err(|e| {
            if !matches!(e, StoreError::DiskFull { .. }) {
                self.poisoned = true;
            }
            OutboxError::Store(e)
        })
    }

    /// Appends `payload` to `stream`, evicting per the policy if needed; on disk before it
    /// returns. An `Err` means the message is not in the outbox (nothing was evicted either).
    pub fn append(
        &mut self,
        store: &Store,
        stream: Stream,
        payload: &[u8],
        now: Instant,
    ) -> Result<Appended, OutboxError> {
        self.append_with(store, stream, payload, Writes::default(), now)
    }

    /// [`Self::append`] with `also` written in the same atomic store write.
    fn append_with(
        &mut self,
        store: &Store,
        stream: Stream,
        payload: &[u8],
        mut also: Writes,
        now: Instant,
    ) -> Result<Appended, OutboxError> {
        self.tree(store)?;
        let plan = self
            .outbox
            .prepare_append(stream, payload.len() as u64, now)?;
        let id = plan.id();
        for victim in plan.evicted() {
            also.remove::<OutboxRecord>(message_key(*victim));
        }
        let message = OutboxRecord::Message(StoredMessage {
            key: self.identity.key(id),
            stream,
            sequence: id.sequence.0,
            appended_at_ms: plan.appended_at_ms(),
            payload: StoredPayload::new(payload),
        });
        also.put(message_key(id), &message)?;
        let ledger = OutboxRecord::Stream(StreamLedger {
            next_sequence: id.sequence.0 + 1,
        });
        also.put(stream_key(stream), &ledger)?;
        self.write(|| store.apply(also))?;
        let appended = self.outbox.commit_append(plan);
        if !appended.evicted.is_empty() {
            let evicted: Vec<String> = appended.evicted.iter().map(|v| v.to_string()).collect();
            tracing::warn!(
                evicted = ?evicted,
                for_message = %id,
                "uplink outbox full: evicted queued messages to make room"
            );
        }
        Ok(appended)
    }

    /// Moves what store writes owe upstream ([`owe`]) into the outbox, oldest first. Each
    /// message moves in one atomic write (appended, and taken off what is owed), so a crash
    /// at any point neither loses one nor queues one twice. A message the outbox refuses by
    /// its policy (too large, full) is dropped with a log line, as a direct append would be;
    /// a store failure stops the move (what is left stays owed for the next try). Returns how
    /// many messages were appended.
    pub fn take_owed(&mut self, store: &Store, now: Instant) -> Result<usize, OutboxError> {
        self.tree(store)?;
        let owed = store.tree::<OwedMessages>()?;
        let entries: Vec<(Vec<u8>, OwedMessages)> = owed.iter().collect::<Result<_, _>>()?;
        let mut appended = 0;
        for (key, mut entry) in entries {
            let what = crate::store::display_key(&key);
            while !entry.messages.is_empty() {
                let message = entry.messages.remove(0);
                // What stays owed once this message is off the list: written with its append.
                let rest = || -> Result<Writes, StoreError> {
                    let mut rest = Writes::default();
                    match entry.messages.is_empty() {
                        true => rest.remove::<OwedMessages>(&key),
                        false => rest.put(&key, &entry)?,
                    }
                    Ok(rest)
                };
                let payload =
                    message
                        .payload
                        .into_bytes()
                        .map_err(|reason| OutboxError::Corrupt {
                            key: what.clone(),
                            reason,
                        })?;
                match self.append_with(store, message.stream, &payload, rest()?, now) {
                    Ok(_) => {
                        appended += 1;
                        if !entry.messages.is_empty() {
                            crate::fault::crash_point("owed_partly_queued");
                        }
                    }
                    Err(OutboxError::Append(e)) => {
                        tracing::error!("{what}: not queued for the uplink: {e}");
                        let rest = rest()?;
                        self.write(|| store.apply(rest))?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(appended)
    }

    pub fn handle_connected(&mut self) {
        self.outbox.handle_connected();
    }

    /// See [`Outbox::hold`].
    pub fn hold(&mut self, stream: Stream, until: Instant) {
        self.outbox.hold(stream, until);
    }

    /// See [`Outbox::handle_disconnect`].
    pub fn handle_disconnect(&mut self) -> usize {
        self.outbox.handle_disconnect()
    }

    /// The next message to send, with its stored key and payload. After an `Err`, disconnect
    /// and reopen: the message may be marked in flight without having been sent.
    pub fn poll_publish(
        &mut self,
        store: &Store,
        now: Instant,
    ) -> Result<Option<OutgoingPublish>, OutboxError> {
        let tree = self.tree(store)?;
        let Some(publish) = self.outbox.poll_publish(now) else {
            return Ok(None);
        };
        let key = message_key(publish.id);
        let stored = match tree.get(&key) {
            Ok(Some(OutboxRecord::Message(m))) => m,
            Ok(_) => {
                self.poisoned = true;
                return Err(OutboxError::Corrupt {
                    key,
                    reason: "queued in memory but missing on disk".into(),
                });
            }
            Err(e) => {
                self.poisoned = true;
                return Err(e.into());
            }
        };
        let payload = stored.payload.into_bytes().map_err(|reason| {
            self.poisoned = true;
            OutboxError::Corrupt {
                key: key.clone(),
                reason,
            }
        })?;
        Ok(Some(OutgoingPublish {
            id: publish.id,
            key: stored.key,
            packet_id: publish.packet_id,
            dup: publish.dup,
            payload,
        }))
    }

    /// The broker's PUBACK: deletes the message from disk (flushed). `Ok(None)` for a packet
    /// id not in flight on this connection.
    pub fn handle_puback(
        &mut self,
        store: &Store,
        packet_id: u16,
    ) -> Result<Option<MessageId>, OutboxError> {
        let tree = self.tree(store)?;
        let Some(id) = self.outbox.handle_puback(packet_id) else {
            return Ok(None);
        };
        self.write(|| tree.remove(message_key(id)))?;
        Ok(Some(id))
    }

    /// Expires old unsent messages, on disk too. Returns them.
    pub fn handle_timeout(
        &mut self,
        store: &Store,
        now: Instant,
    ) -> Result<Vec<MessageId>, OutboxError> {
        let tree = self.tree(store)?;
        let expired = self.outbox.handle_timeout(now);
        if !expired.is_empty() {
            let mut batch = Batch::default();
            for id in &expired {
                batch.remove(message_key(*id));
            }
            self.write(|| tree.apply(batch))?;
            let expired_ids: Vec<String> = expired.iter().map(|v| v.to_string()).collect();
            tracing::warn!(expired = ?expired_ids, "uplink outbox: expired unsent messages older than their max age");
        }
        Ok(expired)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outbox.poll_timeout()
    }

    pub fn status(&self, now: Instant) -> OutboxStatus {
        self.outbox.status(now)
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Every queued message as it is on disk, by stream then sequence.
    pub fn queued(&self, store: &Store) -> Result<Vec<QueuedMessage>, OutboxError> {
        let mut queued = Vec::new();
        for item in self.tree(store)?.iter() {
            if let (key, OutboxRecord::Message(m)) = item? {
                let corrupt = |reason| OutboxError::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    reason,
                };
                queued.push(QueuedMessage {
                    id: MessageId {
                        stream: m.stream,
                        sequence: Sequence(m.sequence),
                    },
                    key: m.key,
                    appended_at_ms: m.appended_at_ms,
                    payload: m.payload.into_bytes().map_err(corrupt)?,
                });
            }
        }
        queued.sort_by_key(|m| m.id);
        Ok(queued)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::uplink::outbox::{PriorityPolicy, WhenFull};

    const WALL: u64 = 1_700_000_000_000;

    fn config() -> OutboxConfig {
        OutboxConfig {
            drain_rate: None,
            ..OutboxConfig::default()
        }
    }

    fn identity(site: &str) -> Identity {
        Identity::new(site, "dev1").unwrap()
    }

    fn open(store: &Store, now: Instant) -> DurableOutbox {
        DurableOutbox::open(store, config(), identity("site-a"), now, WALL).unwrap()
    }

    fn id(stream: Stream, sequence: u64) -> MessageId {
        MessageId {
            stream,
            sequence: Sequence(sequence),
        }
    }

    fn owe_in_store(store: &Store, key: &str, messages: &[(Stream, Vec<u8>)]) {
        let mut writes = Writes::default();
        owe(&mut writes, key, messages).unwrap();
        store.apply(writes).unwrap();
    }

    #[test]
    fn owed_messages_move_into_the_outbox_once_in_order_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        {
            let store = Store::open(dir.path()).unwrap();
            owe_in_store(
                &store,
                "call/1",
                &[
                    (Stream::Calls, b"record 1".to_vec()),
                    (Stream::Summaries, b"summary 1".to_vec()),
                ],
            );
            // The daemon dies here: nothing was queued yet, the debt is on disk.
        }
        let store = Store::open(dir.path()).unwrap();
        let mut ob = open(&store, t0);
        owe_in_store(&store, "call/2", &[(Stream::Calls, b"record 2".to_vec())]);
        assert_eq!(ob.take_owed(&store, t0).unwrap(), 3);
        assert_eq!(ob.take_owed(&store, t0).unwrap(), 0, "taken once only");
        assert!(store.tree::<OwedMessages>().unwrap().is_empty());
        drop(ob);
        let ob = open(&store, t0);
        let queued: Vec<(MessageId, Vec<u8>)> = ob
            .queued(&store)
            .unwrap()
            .into_iter()
            .map(|m| (m.id, m.payload))
            .collect();
        assert_eq!(
            queued,
            [
                (id(Stream::Calls, 1), b"record 1".to_vec()),
                (id(Stream::Calls, 2), b"record 2".to_vec()),
                (id(Stream::Summaries, 1), b"summary 1".to_vec()),
            ]
        );
    }

    #[test]
    fn an_owed_message_the_outbox_refuses_is_dropped_and_the_rest_move() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let store = Store::open(dir.path()).unwrap();
        let small = OutboxConfig {
            max_bytes: 16,
            ..config()
        };
        let mut ob = DurableOutbox::open(&store, small, identity("site-a"), t0, WALL).unwrap();
        owe_in_store(
            &store,
            "call/1",
            &[
                (Stream::Calls, vec![b'x'; 64]),
                (Stream::Summaries, b"fits".to_vec()),
            ],
        );
        assert_eq!(ob.take_owed(&store, t0).unwrap(), 1);
        assert!(store.tree::<OwedMessages>().unwrap().is_empty());
        let queued = ob.queued(&store).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].id, id(Stream::Summaries, 1));
    }

    #[test]
    fn owed_messages_wait_while_the_store_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let store = Store::open(dir.path()).unwrap();
        let mut ob = open(&store, t0);
        owe_in_store(&store, "call/1", &[(Stream::Calls, b"r".to_vec())]);
        store.set_reserve(u64::MAX);
        assert!(matches!(
            ob.take_owed(&store, t0),
            Err(OutboxError::Store(StoreError::DiskFull { .. }))
        ));
        store.set_reserve(0);
        assert_eq!(
            ob.take_owed(&store, t0).unwrap(),
            1,
            "not poisoned, still owed"
        );
    }

    #[test]
    fn appends_survive_reopen_in_order_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut ob = open(&store, t0);
            ob.append(&store, Stream::Calls, br#"{"call":1}"#, t0)
                .unwrap();
            ob.append(&store, Stream::Telemetry, &[0xff, 0x00, 0x80], t0)
                .unwrap();
            ob.append(&store, Stream::Calls, b"", t0).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let ob = open(&store, t0);
        let queued = ob.queued(&store).unwrap();
        let got: Vec<(String, Vec<u8>)> = queued.into_iter().map(|m| (m.key, m.payload)).collect();
        assert_eq!(
            got,
            [
                ("site-a/dev1/calls/1".to_owned(), br#"{"call":1}"#.to_vec()),
                ("site-a/dev1/calls/2".to_owned(), vec![]),
                ("site-a/dev1/telemetry/1".to_owned(), vec![0xff, 0x00, 0x80]),
            ]
        );
        assert_eq!(
            ob.outbox().queued_ids(),
            [
                id(Stream::Calls, 1),
                id(Stream::Calls, 2),
                id(Stream::Telemetry, 1)
            ]
        );
        assert_eq!(ob.status(t0).queued_bytes, 13);
    }

    #[test]
    fn a_write_refused_for_disk_space_leaves_the_outbox_usable_once_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let store = Store::open(dir.path()).unwrap();
        let mut ob = open(&store, t0);
        ob.append(&store, Stream::Calls, b"1", t0).unwrap();
        store.set_reserve(u64::MAX);
        let refused = ob.append(&store, Stream::Calls, b"2", t0).unwrap_err();
        assert!(
            matches!(refused, OutboxError::Store(StoreError::DiskFull { .. })),
            "{refused}"
        );
        store.set_reserve(0);
        let appended = ob.append(&store, Stream::Calls, b"3", t0).unwrap();
        assert_eq!(
            appended.id,
            id(Stream::Calls, 2),
            "the refused one took no sequence"
        );
        assert_eq!(ob.queued(&store).unwrap().len(), 2);
    }

    #[test]
    fn sequences_continue_after_reopen_even_when_drained() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut ob = open(&store, t0);
            for _ in 0..3 {
                ob.append(&store, Stream::Events, b"e", t0).unwrap();
            }
            ob.handle_connected();
            while let Some(p) = ob.poll_publish(&store, t0).unwrap() {
                ob.handle_puback(&store, p.packet_id).unwrap().unwrap();
            }
            assert!(ob.queued(&store).unwrap().is_empty());
        }
        let store = Store::open(dir.path()).unwrap();
        let mut ob = open(&store, t0);
        let a = ob.append(&store, Stream::Events, b"e", t0).unwrap();
        assert_eq!(a.sequence(), Sequence(4));
        let a = ob.append(&store, Stream::Calls, b"c", t0).unwrap();
        assert_eq!(a.sequence(), Sequence(1));
    }

    #[test]
    fn in_flight_messages_are_resent_after_a_crash_with_the_same_key_and_dup() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let first = {
            let store = Store::open(dir.path()).unwrap();
            let mut ob = open(&store, t0);
            ob.append(&store, Stream::Summaries, b"s1", t0).unwrap();
            ob.handle_connected();
            let p = ob.poll_publish(&store, t0).unwrap().unwrap();
            assert!(!p.dup);
            p
            // Crash: no PUBACK.
        };
        let store = Store::open(dir.path()).unwrap();
        // The site id changed in the config meanwhile: the stored key still wins.
        let mut ob = DurableOutbox::open(&store, config(), identity("site-b"), t0, WALL).unwrap();
        ob.handle_connected();
        let again = ob.poll_publish(&store, t0).unwrap().unwrap();
        assert_eq!(
            (
                again.id,
                again.key.as_str(),
                again.payload.as_slice(),
                again.dup
            ),
            (first.id, "site-a/dev1/summaries/1", &b"s1"[..], true)
        );
        ob.append(&store, Stream::Summaries, b"s2", t0).unwrap();
        let next = ob.poll_publish(&store, t0).unwrap().unwrap();
        assert_eq!(next.key, "site-b/dev1/summaries/2");
    }

    #[test]
    fn crash_between_puback_and_delete_resends_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let sent = {
            let store = Store::open(dir.path()).unwrap();
            let mut ob = open(&store, t0);
            ob.append(&store, Stream::Calls, b"c1", t0).unwrap();
            ob.handle_connected();
            let p = ob.poll_publish(&store, t0).unwrap().unwrap();
            // The PUBACK reaches the state machine; the process dies before the delete.
            assert_eq!(ob.outbox.handle_puback(p.packet_id), Some(p.id));
            p
        };
        let store = Store::open(dir.path()).unwrap();
        let mut ob = open(&store, t0);
        ob.handle_connected();
        let again = ob.poll_publish(&store, t0).unwrap().unwrap();
        assert_eq!((again.key, again.dup), (sent.key, true));
        ob.handle_puback(&store, again.packet_id).unwrap().unwrap();
        drop(ob);
        assert!(open(&store, t0).queued(&store).unwrap().is_empty());
    }

    #[test]
    fn puback_delete_and_eviction_are_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let cfg = OutboxConfig {
            max_messages: 2,
            ..config()
        };
        {
            let store = Store::open(dir.path()).unwrap();
            let mut ob = DurableOutbox::open(&store, cfg.clone(), identity("s"), t0, WALL).unwrap();
            ob.append(&store, Stream::Telemetry, b"t1", t0).unwrap();
            ob.append(&store, Stream::Calls, b"c1", t0).unwrap();
            let a = ob.append(&store, Stream::Calls, b"c2", t0).unwrap();
            assert_eq!(a.evicted, [id(Stream::Telemetry, 1)]);
            ob.handle_connected();
            let p = ob.poll_publish(&store, t0).unwrap().unwrap();
            assert_eq!(p.id, id(Stream::Calls, 1));
            ob.handle_puback(&store, p.packet_id).unwrap().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let ob = DurableOutbox::open(&store, cfg, identity("s"), t0, WALL).unwrap();
        let ids: Vec<MessageId> = ob.queued(&store).unwrap().iter().map(|m| m.id).collect();
        assert_eq!(ids, [id(Stream::Calls, 2)]);
        assert_eq!(ob.outbox().next_sequence(Stream::Telemetry), Sequence(2));
    }

    #[test]
    fn ages_survive_a_restart_and_expired_messages_leave_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let cfg = OutboxConfig {
            low: PriorityPolicy {
                when_full: WhenFull::DropOldest,
                max_age: Some(Duration::from_secs(60)),
            },
            ..config()
        };
        {
            let store = Store::open(dir.path()).unwrap();
            let mut ob = DurableOutbox::open(&store, cfg.clone(), identity("s"), t0, WALL).unwrap();
            ob.append(&store, Stream::Telemetry, b"old", t0).unwrap();
            ob.append(
                &store,
                Stream::Telemetry,
                b"new",
                t0 + Duration::from_secs(30),
            )
            .unwrap();
        }
        // Restarted 40 s of wall time later (a fresh monotonic clock).
        let t1 = Instant::now();
        let store = Store::open(dir.path()).unwrap();
        let mut ob =
            DurableOutbox::open(&store, cfg.clone(), identity("s"), t1, WALL + 40_000).unwrap();
        assert_eq!(ob.status(t1).oldest_age_ms, Some(40_000));
        assert_eq!(ob.poll_timeout(), Some(t1 + Duration::from_secs(20)));
        let expired = ob
            .handle_timeout(&store, t1 + Duration::from_secs(20))
            .unwrap();
        assert_eq!(expired, [id(Stream::Telemetry, 1)]);
        drop(ob);
        let ob = DurableOutbox::open(&store, cfg, identity("s"), t1, WALL + 40_000).unwrap();
        let payloads: Vec<Vec<u8>> = ob
            .queued(&store)
            .unwrap()
            .into_iter()
            .map(|m| m.payload)
            .collect();
        assert_eq!(payloads, [b"new".to_vec()]);
    }

    #[test]
    fn a_full_outbox_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let store = Store::open(dir.path()).unwrap();
        let cfg = OutboxConfig {
            max_messages: 1,
            ..config()
        };
        let mut ob = DurableOutbox::open(&store, cfg, identity("s"), t0, WALL).unwrap();
        ob.append(&store, Stream::Calls, b"c1", t0).unwrap();
        let err = ob.append(&store, Stream::Calls, b"c2", t0).unwrap_err();
        assert!(
            matches!(err, OutboxError::Append(AppendError::Full { .. })),
            "{err}"
        );
        assert_eq!(ob.queued(&store).unwrap().len(), 1);
        assert_eq!(ob.status(t0).totals.rejected, 1);
    }

    #[test]
    fn identity_refuses_topic_characters_with_a_fix() {
        assert!(Identity::new("lon-1", "01hx").is_ok());
        for (site, device) in [
            ("", "d"),
            ("a/b", "d"),
            ("s", "d+"),
            ("s", "#"),
            ("s\n", "d"),
        ] {
            let err = Identity::new(site, device).unwrap_err().to_string();
            assert!(err.contains("use letters"), "{err}");
        }
    }

    #[test]
    fn a_damaged_record_is_reported_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        {
            let store = Store::open(dir.path()).unwrap();
            let tree = store.tree::<OutboxRecord>().unwrap();
            let record = OutboxRecord::Message(StoredMessage {
                key: "s/d/calls/5".into(),
                stream: Stream::Calls,
                sequence: 5,
                appended_at_ms: WALL,
                payload: StoredPayload::Text("x".into()),
            });
            tree.put(message_key(id(Stream::Calls, 6)), &record)
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let err = DurableOutbox::open(&store, config(), identity("s"), t0, WALL).unwrap_err();
        assert!(matches!(err, OutboxError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains("m/calls/00000000000000000006"),
            "{err}"
        );
    }
}
