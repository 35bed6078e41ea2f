//! The call record: every call, answered or not, leaves one in the store. It is written (durably)
//! as the INVITE arrives, updated on answer and as the call goes, and completed when the call
//! ends; each call's writes go through a writer of their own (call/session.rs), so the disk
//! never holds up answering or the media clock.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::transfer::{TransferRecord, TransferRequester, TransferState};
use crate::store::{self, Record, Store, StoreError, TreeName};
use crate::telephony::codec::Codec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallDirection {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    Caller,
    Appliance,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EndReason {
    /// Refused before answer with this SIP status.
    Rejected { code: u16, reason: String },
    /// The caller cancelled before answer.
    Cancelled,
    /// A normal hang-up; `hung_up_by` says who.
    Hangup,
    /// Handed to another party by a blind transfer that succeeded.
    Transferred { target: String },
    /// RTP stopped for longer than `sip.media_timeout_secs`.
    MediaTimeout,
    /// The call reached `call.max_duration_secs`.
    MaxDuration,
    /// The daemon stopped (drain timeout) with the call still up.
    Shutdown,
    /// The daemon died with the call up; found on the next start.
    Interrupted,
    /// Signalling or media failed.
    Failed { error: String },
}

impl EndReason {
    /// The serde tag (`end_reason.kind` in the record): metrics labels and summaries use it.
    pub fn kind(&self) -> &'static str {
        match self {
            EndReason::Rejected { .. } => "rejected",
            EndReason::Cancelled => "cancelled",
            EndReason::Hangup => "hangup",
            EndReason::Transferred { .. } => "transferred",
            EndReason::MediaTimeout => "media_timeout",
            EndReason::MaxDuration => "max_duration",
            EndReason::Shutdown => "shutdown",
            EndReason::Interrupted => "interrupted",
            EndReason::Failed { .. } => "failed",
        }
    }
}

/// RTP figures kept with the call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RtpSummary {
    pub packets_sent: u64,
    pub packets_received: u64,
    pub packets_lost: u64,
    pub jitter_ms: f64,
    pub max_jitter_ms: f64,
    pub malformed: u64,
    pub late_or_duplicate: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub id: String,
    pub direction: CallDirection,
    pub sip_call_id: String,
    pub from: String,
    pub to: String,
    pub trunk: Option<String>,
    pub remote: String,
    pub invite_at_ms: u64,
    pub answer_at_ms: Option<u64>,
    pub end_at_ms: Option<u64>,
    pub end_reason: Option<EndReason>,
    pub hung_up_by: Option<Party>,
    pub codec: Option<Codec>,
    pub rtp: Option<RtpSummary>,
    /// Digits received, in order (RFC 4733 or SIP INFO).
    pub dtmf_received: String,
    pub dtmf_sent: String,
    /// The call's transfer to a human (the last one, when there were several), with the
    /// appliance's own call to the target when the REFER was refused (that leg has no record
    /// of its own).
    pub transfer: Option<TransferRecord>,
    pub recording: Option<PathBuf>,
    /// Outbound calls: how dialling ended.
    #[serde(default)]
    pub dial_outcome: Option<crate::telephony::sip::DialOutcome>,
    /// Voice agent calls: each caller turn, stored as it happens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<AgentTurn>,
}

pub use crate::agent::turns::{AgentTurn, TurnLatency, TurnWord};

impl Record for CallRecord {
    const TREE: TreeName = TreeName::Calls;
    /// 2: `transfer` is a [`TransferRecord`] (was a sentence), a key press is `"dtmf": "5"`
    /// (was `"caller": "<key 5>"`), a turn's `action` is one of [`crate::agent::TurnAction`].
    const SCHEMA: u32 = 2;

    fn upgrade(from_schema: u32, mut raw: serde_json::Value) -> Result<Self, String> {
        if from_schema != 1 {
            return Err(format!("no upgrade from schema {from_schema}"));
        }
        upgrade_from_schema_1(&mut raw);
        serde_json::from_value(raw).map_err(|e| format!("upgrading from schema 1: {e}"))
    }
}

/// Schema 1 → 2, on the JSON: the transfer sentence becomes a typed record (as far as the
/// sentence tells), `"caller": "<key 5>"` becomes `"dtmf": "5"`.
fn upgrade_from_schema_1(raw: &mut serde_json::Value) {
    use serde_json::Value;
    let transferred = raw["end_reason"]["kind"] == "transferred";
    let agent = raw["turns"].as_array().is_some_and(|t| !t.is_empty());
    if let Some(text) = raw["transfer"].as_str().map(str::to_owned) {
        let record = transfer_from_sentence(&text, transferred, agent);
        if let Some(fields) = raw.as_object_mut() {
            let typed = serde_json::to_value(record).unwrap_or(Value::Null);
            fields.insert("transfer".to_owned(), typed);
        }
    }
    let turns = raw.get_mut("turns").and_then(Value::as_array_mut);
    for turn in turns.into_iter().flatten() {
        let key = turn["caller"]
            .as_str()
            .and_then(|c| c.strip_prefix("<key "))
            .and_then(|c| c.strip_suffix('>'))
            .filter(|d| d.chars().count() == 1)
            .map(str::to_owned);
        if let (Some(digit), Some(fields)) = (key, turn.as_object_mut()) {
            fields.remove("caller");
            fields.insert("dtmf".to_owned(), Value::String(digit));
        }
    }
}

/// What a schema 1 sentence ("REFER to X refused (501); bridged to X (call …)") says.
fn transfer_from_sentence(text: &str, transferred: bool, agent: bool) -> TransferRecord {
    let target = text
        .strip_prefix("REFER to ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default();
    let requested_by = if agent {
        TransferRequester::Agent
    } else {
        TransferRequester::Operator
    };
    let mut record = TransferRecord::new(target, requested_by);
    let code_after = |word: &str| {
        let rest = &text[text.find(word)? + word.len()..];
        rest.trim_start()
            .strip_prefix('(')?
            .get(..3)?
            .parse::<u16>()
            .ok()
    };
    record.refer_code = code_after("accepted").or_else(|| code_after("refused"));
    record.notify_code = code_after("transferee reports");
    record.state = if transferred {
        TransferState::Transferred
    } else if text.contains("bridged to") {
        TransferState::Bridged
    } else if text.contains("refused") || text.contains("failed") {
        record.error = Some(text.to_owned());
        TransferState::Failed
    } else if record.refer_code.is_some() {
        TransferState::ReferAccepted
    } else {
        TransferState::Referring
    };
    if text.contains("bridge") {
        record.bridge = Some(super::transfer::BridgeRecord {
            dial_outcome: (record.state == TransferState::Bridged)
                .then_some(crate::telephony::sip::DialOutcome::Answered),
            ring_ms: None,
        });
    }
    record
}

impl CallRecord {
    pub fn new_inbound(id: Ulid, sip_call_id: &str, from: &str, to: &str, remote: &str) -> Self {
        Self {
            id: id.to_string(),
            direction: CallDirection::Inbound,
            sip_call_id: sip_call_id.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            trunk: None,
            remote: remote.to_owned(),
            invite_at_ms: store::now_ms(),
            answer_at_ms: None,
            end_at_ms: None,
            end_reason: None,
            hung_up_by: None,
            codec: None,
            rtp: None,
            dtmf_received: String::new(),
            dtmf_sent: String::new(),
            transfer: None,
            recording: None,
            dial_outcome: None,
            turns: Vec::new(),
        }
    }

    pub fn key(&self) -> Vec<u8> {
        self.id
            .parse::<Ulid>()
            .map(|u| u.to_bytes().to_vec())
            .unwrap_or_else(|_| self.id.as_bytes().to_vec())
    }

    pub fn end(&mut self, reason: EndReason, by: Option<Party>) {
        if self.end_at_ms.is_none() {
            self.end_at_ms = Some(store::now_ms());
            self.end_reason = Some(reason);
            self.hung_up_by = by;
        }
    }

    pub fn duration_ms(&self) -> Option<u64> {
        Some(self.end_at_ms?.saturating_sub(self.answer_at_ms?))
    }
}

/// Ended call records the store refused (a full disk): held in memory, oldest dropped beyond
/// [`MAX_UNSAVED`], written once the store takes them again. A restart before then loses them.
#[derive(Debug, Default)]
pub struct UnsavedRecords {
    records: std::sync::Mutex<std::collections::VecDeque<CallRecord>>,
}

/// At most this many unsaved records are held (a few KiB each).
pub const MAX_UNSAVED: usize = 1000;

impl UnsavedRecords {
    /// Holds `record` (replacing an older copy of the same call); returns the record dropped
    /// to make room, if any.
    pub fn hold(&self, record: CallRecord) -> Option<CallRecord> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.retain(|r| r.id != record.id);
        records.push_back(record);
        (records.len() > MAX_UNSAVED)
            .then(|| records.pop_front())
            .flatten()
    }

    /// Everything held, oldest first; the holder is empty afterwards.
    pub fn take_all(&self) -> Vec<CallRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes the record durably.
pub fn save(store: &Store, record: &CallRecord) -> Result<(), StoreError> {
    store.tree::<CallRecord>()?.put(record.key(), record)
}

/// Where an upstream debt goes: `send_upstream` for ended calls when the uplink is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Send,
    LocalOnly,
}

/// Writes the record durably; an ended one with [`Upstream::Send`] together with what it owes
/// upstream (its record on `calls`, its summary on `summaries`) in the same atomic write, so a
/// crash after this returns loses neither: the uplink queues them at its next chance, also
/// after a restart ([`crate::uplink::DurableOutbox::take_owed`]).
pub fn save_owing(
    store: &Store,
    record: &CallRecord,
    upstream: Upstream,
) -> Result<(), StoreError> {
    if upstream == Upstream::LocalOnly || record.end_reason.is_none() {
        return save(store, record);
    }
    let mut writes = store::Writes::default();
    writes.put(record.key(), record)?;
    crate::uplink::owe(
        &mut writes,
        &owed_key(&record.id),
        &upstream_messages(record)?,
    )?;
    store.apply(writes)
}

/// The key of what a call owes upstream: one debt per call, replaced if it is saved ended again
/// before the uplink took it.
fn owed_key(call_id: &str) -> String {
    format!("call/{call_id}")
}

/// An ended call's messages upstream: its whole record on `calls`, then its summary (when it
/// has one) on `summaries`.
pub fn upstream_messages(
    record: &CallRecord,
) -> Result<Vec<(crate::uplink::Stream, Vec<u8>)>, StoreError> {
    use crate::uplink::Stream;
    let json = |tree, value: serde_json::Result<Vec<u8>>| {
        value.map_err(|source| StoreError::Encode { tree, source })
    };
    let mut messages = vec![(Stream::Calls, json("calls", serde_json::to_vec(record))?)];
    if let Some(summary) = super::summary::summarize(record) {
        messages.push((
            Stream::Summaries,
            json("summaries", serde_json::to_vec(&summary))?,
        ));
    }
    Ok(messages)
}

/// A call by its id (the ULID shown by `edgevoice calls`).
pub fn get(store: &Store, id: &str) -> Result<Option<CallRecord>, StoreError> {
    let key = match id.parse::<Ulid>() {
        Ok(u) => u.to_bytes().to_vec(),
        Err(_) => return Ok(None),
    };
    store.tree::<CallRecord>()?.get(key)
}

/// What `retention.purge` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    /// Call records removed.
    pub calls: usize,
    /// Recording files removed with them.
    pub recordings: usize,
}

/// Removes the records (and recording files) of calls that ended before `cutoff_ms`, in one
/// atomic batch; live calls and unreadable records stay.
pub fn purge_ended_before(store: &Store, cutoff_ms: u64) -> Result<Purged, StoreError> {
    let tree = store.tree::<CallRecord>()?;
    let mut batch = crate::store::Batch::default();
    let mut victims = Vec::new();
    for item in tree.iter() {
        match item {
            Ok((key, rec)) if rec.end_at_ms.is_some_and(|end| end < cutoff_ms) => {
                batch.remove(&key);
                victims.push(rec);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("retention.purge skips a record: {e}"),
        }
    }
    if victims.is_empty() {
        return Ok(Purged {
            calls: 0,
            recordings: 0,
        });
    }
    tree.apply(batch)?;
    let mut recordings = 0;
    for path in victims.iter().filter_map(|r| r.recording.as_ref()) {
        match std::fs::remove_file(path) {
            Ok(()) => recordings += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("retention.purge: cannot remove {}: {e}", path.display()),
        }
    }
    Ok(Purged {
        calls: victims.len(),
        recordings,
    })
}

/// Where records still waiting for a broken store go when the daemon restarts to reopen it
/// (one JSON record per line, in the state dir); the next start writes them into the store.
pub const UNSAVED_FILE: &str = "unsaved-calls.jsonl";

/// Appends `records` to the state dir's [`UNSAVED_FILE`], durably.
pub fn write_unsaved_file(state_dir: &Path, records: &[CallRecord]) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let path = state_dir.join(UNSAVED_FILE);
    let mut text = String::new();
    for record in records {
        text.push_str(&serde_json::to_string(record).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::File::open(state_dir)?.sync_all()?;
    Ok(path)
}

/// One line of [`UNSAVED_FILE`]: a record as this build writes it, or as the build before the
/// typed transfer wrote it (schema 1; an upgrade may leave such a file behind).
fn parse_unsaved_line(line: &str) -> Result<CallRecord, String> {
    let raw: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    match serde_json::from_value::<CallRecord>(raw.clone()) {
        Ok(record) => Ok(record),
        Err(e) => <CallRecord as Record>::upgrade(1, raw).map_err(|_| e.to_string()),
    }
}

/// Writes the records a previous run left in [`UNSAVED_FILE`] into the store and removes the
/// file; returns them (to send upstream). A line that is not a record is logged and skipped; if
/// the store refuses one, the file stays for the next start.
pub fn import_unsaved_file(
    store: &Store,
    state_dir: &Path,
    upstream: Upstream,
) -> Result<Vec<CallRecord>, String> {
    let path = state_dir.join(UNSAVED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut imported = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match parse_unsaved_line(line) {
            Ok(record) => {
                save_owing(store, &record, upstream)
                    .map_err(|e| format!("{}: kept for the next start: {e}", path.display()))?;
                imported.push(record);
            }
            Err(e) => tracing::error!(
                "{} line {}: not a call record, skipped: {e}",
                path.display(),
                n + 1
            ),
        }
    }
    std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    Ok(imported)
}

/// Calls left without an end by a daemon that died: marked `interrupted` at start-up, so the
/// record says what happened instead of looking live forever; each owes upstream like any
/// ended call (in the same write). Returns the closed records.
pub fn close_interrupted(store: &Store, upstream: Upstream) -> Result<Vec<CallRecord>, StoreError> {
    let tree = store.tree::<CallRecord>()?;
    let mut closed = Vec::new();
    for item in tree.newest(10_000) {
        let Ok((_, mut rec)) = item else { continue };
        if rec.end_at_ms.is_none() {
            rec.end(EndReason::Interrupted, None);
            save_owing(store, &rec, upstream)?;
            closed.push(rec);
        }
    }
    Ok(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> CallRecord {
        CallRecord::new_inbound(Ulid::from_parts(n, 1), "c", "a", "b", "r")
    }

    #[test]
    fn records_left_in_the_unsaved_file_are_written_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = record(1);
        first.end(EndReason::Hangup, Some(Party::Caller));
        let second = {
            let mut r = record(2);
            r.end(EndReason::MediaTimeout, None);
            r
        };
        write_unsaved_file(dir.path(), std::slice::from_ref(&first)).unwrap();
        write_unsaved_file(dir.path(), std::slice::from_ref(&second)).unwrap();
        let path = dir.path().join(UNSAVED_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{not a record\n");
        // A line an older build left: schema 1, the transfer as a sentence.
        let mut older = serde_json::to_value(record(3)).unwrap();
        older["transfer"] = serde_json::json!("REFER to sip:desk@pbx refused (501)");
        older["end_at_ms"] = serde_json::json!(5);
        older["end_reason"] = serde_json::json!({"kind": "hangup"});
        text.push_str(&format!("{older}\n"));
        std::fs::write(&path, text).unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let imported = import_unsaved_file(&store, dir.path(), Upstream::LocalOnly).unwrap();
        assert_eq!(imported.len(), 3, "{imported:?}");
        assert_eq!(imported[..2], [first.clone(), second.clone()]);
        let upgraded = imported[2].transfer.as_ref().expect("the sentence, typed");
        assert_eq!(upgraded.target, "sip:desk@pbx");
        assert_eq!(get(&store, &first.id).unwrap(), Some(first));
        assert_eq!(get(&store, &second.id).unwrap(), Some(second));
        assert!(!path.exists(), "imported, so removed");
        assert_eq!(
            import_unsaved_file(&store, dir.path(), Upstream::LocalOnly).unwrap(),
            []
        );
    }

    #[test]
    fn unsaved_records_keep_the_latest_copy_per_call_and_drop_the_oldest_beyond_the_limit() {
        let held = UnsavedRecords::default();
        assert_eq!(held.hold(record(1)), None);
        let mut newer = record(1);
        newer.dtmf_received = "5".into();
        assert_eq!(held.hold(newer.clone()), None);
        assert_eq!(held.len(), 1, "one copy per call");
        for n in 2..=MAX_UNSAVED as u64 {
            assert_eq!(held.hold(record(n)), None);
        }
        let dropped = held.hold(record(MAX_UNSAVED as u64 + 1));
        assert_eq!(dropped, Some(newer), "the oldest goes");
        let all = held.take_all();
        assert_eq!(all.len(), MAX_UNSAVED);
        assert_eq!(all[0].id, record(2).id, "oldest first");
        assert!(held.is_empty());
    }

    #[test]
    fn purge_removes_calls_that_ended_before_the_cutoff_with_their_recordings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let call = |end: Option<u64>, recording: Option<PathBuf>| {
            let mut r = CallRecord::new_inbound(
                store.new_id(),
                "c@x",
                "sip:a@x",
                "sip:b@y",
                "10.0.0.1:5060",
            );
            r.end_at_ms = end;
            r.recording = recording;
            save(&store, &r).unwrap();
            r
        };
        let wav = dir.path().join("old.wav");
        std::fs::write(&wav, b"RIFF").unwrap();
        let old = call(Some(1_000), Some(wav.clone()));
        let old_gone_wav = call(Some(2_000), Some(dir.path().join("missing.wav")));
        let recent = call(Some(10_000), None);
        let live = call(None, None);
        let purged = purge_ended_before(&store, 5_000).unwrap();
        assert_eq!(
            purged,
            Purged {
                calls: 2,
                recordings: 1
            }
        );
        assert!(!wav.exists());
        assert_eq!(get(&store, &old.id).unwrap(), None);
        assert_eq!(get(&store, &old_gone_wav.id).unwrap(), None);
        assert!(get(&store, &recent.id).unwrap().is_some());
        assert!(get(&store, &live.id).unwrap().is_some());
        assert_eq!(purge_ended_before(&store, 5_000).unwrap().calls, 0);
    }

    #[test]
    fn records_round_trip_and_interrupted_calls_are_closed_on_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut done =
            CallRecord::new_inbound(store.new_id(), "a@x", "sip:a@x", "sip:b@y", "10.0.0.1:5060");
        done.answer_at_ms = Some(done.invite_at_ms);
        done.end(EndReason::Hangup, Some(Party::Caller));
        save(&store, &done).unwrap();
        let live =
            CallRecord::new_inbound(store.new_id(), "b@x", "sip:c@x", "sip:b@y", "10.0.0.1:5060");
        save(&store, &live).unwrap();

        assert_eq!(get(&store, &done.id).unwrap().unwrap(), done);
        assert_eq!(
            close_interrupted(&store, Upstream::LocalOnly)
                .unwrap()
                .len(),
            1
        );
        let live = get(&store, &live.id).unwrap().unwrap();
        assert_eq!(live.end_reason, Some(EndReason::Interrupted));
        assert_eq!(get(&store, "not-a-ulid").unwrap(), None);
    }

    #[test]
    fn schema_1_records_are_read_with_a_typed_transfer_and_key_presses() {
        let mut rec = record(9);
        rec.end(EndReason::Hangup, Some(Party::Caller));
        let mut v1 = serde_json::to_value(&rec).unwrap();
        v1["transfer"] = serde_json::json!(
            "REFER to sip:desk@pbx refused (501); bridged to sip:desk@pbx (call 01J)"
        );
        v1["turns"] = serde_json::json!([
            {"turn": 1, "caller": "<key 0>", "agent": "One moment.", "intent": "dtmf:0",
             "action": "transfer", "interrupted": false, "errors": [],
             "caller_start_ms": null, "caller_end_ms": null,
             "latency": {"endpoint_ms": null, "asr_final_ms": null, "llm_first_token_ms": null,
                         "first_tts_audio_ms": null, "first_reply_rtp_ms": null}}
        ]);
        let up = CallRecord::upgrade(1, v1).unwrap();
        let t = up.transfer.unwrap();
        assert_eq!(t.target, "sip:desk@pbx");
        assert_eq!(t.refer_code, Some(501));
        assert_eq!(t.state, TransferState::Bridged);
        assert_eq!(t.requested_by, TransferRequester::Agent);
        assert_eq!(
            up.turns[0].turn.input,
            crate::agent::conversation::CallerInput::Dtmf('0')
        );
        assert_eq!(up.turns[0].turn.action, crate::agent::TurnAction::Transfer);
    }

    #[test]
    fn the_end_reason_kind_is_the_records_serde_tag() {
        for reason in [
            EndReason::Rejected {
                code: 503,
                reason: "x".into(),
            },
            EndReason::Cancelled,
            EndReason::Hangup,
            EndReason::Transferred { target: "t".into() },
            EndReason::MediaTimeout,
            EndReason::MaxDuration,
            EndReason::Shutdown,
            EndReason::Interrupted,
            EndReason::Failed { error: "e".into() },
        ] {
            let json = serde_json::to_value(&reason).unwrap();
            assert_eq!(json["kind"], reason.kind(), "{reason:?}");
        }
    }
}
