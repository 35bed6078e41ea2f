//! Signed remote commands (MQTT `edgevoice/{site}/{device}/cmd/{name}`): the envelope, its
//! verification, the replay ledger, and the handler the uplink shell hands each message to.
//!
//! The envelope signs exact bytes, so nothing depends on JSON canonicalisation:
//!
//! ```text
//! {"payload": "<base64 of the payload JSON bytes>", "key_id": "<trusted key name>",
//!  "signature": "<base64 Ed25519 signature over exactly those bytes>"}
//! payload = {"request_id", "name", "target": {"site", "device"}, "args", "issued_at",
//!            "expires_at"}   (unix seconds; device "*": every device of the site)
//! ```
//!
//! The target is signed, so a command captured on one device's topic and published on
//! another's is refused there (`wrong target`); a payload without one (signed before targets
//! existed) is refused with the fix (`no target`).
//!
//! [`Policy::verify`] is sans-I/O: message, topic name and the current time in, a verified
//! command or a [`Rejection`] saying why out. The replay check ([`remember`]) is the one step
//! that needs the store; [`RemoteCommands`] puts the two together with the [`Dispatcher`], so
//! MQTT and the local socket share one implementation of every command.
//!
//! Only a command that passes every check (signature, target, time, response topic, not seen
//! before) is "verified" and runs unlimited; every refusal, signed or not, shares the
//! unverified budget ([`RejectionBudget`]), because a captured signed command can be replayed
//! by anyone at no cost. A refusal is never published on `cmd-result/{request_id}` when that
//! request id has already run here (a replay, or anyone's message claiming the id): the
//! original result stays the only one on that topic; the refusal is in the audit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::protocol::Request;
use super::rejection_budget::{Admission, Limits, RecentCopies, RejectionBudget};
use super::{ControlHost, Dispatcher, Principal};
use crate::config::UplinkConfig;
use crate::store::{Record, Store, StoreError, TreeName};
use crate::uplink::{CommandMessage, CommandReply, InboundProblem, Triage};

/// The MQTT channel name in audit records.
pub const CHANNEL: &str = "mqtt";
/// Largest result published; a bigger one is replaced by an error saying so.
pub const MAX_RESULT_BYTES: usize = 128 * 1024;

pub use crate::config::{parse_trusted_key, valid_id, TrustedKey, NO_REQUEST_ID};

/// The `uplink.trusted_keys` line for a public key.
pub fn public_key_line(name: &str, key: &VerifyingKey) -> String {
    format!("{name}:{}", B64.encode(key.as_bytes()))
}

/// `target.device` for a command meant for every device of `target.site`.
pub const ALL_DEVICES: &str = "*";

/// Where a signed command may run: one device of one site, or every device ([`ALL_DEVICES`])
/// of one site. Checked against the appliance's own `uplink.site_id` and device id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub site: String,
    pub device: String,
}

/// What is signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandPayload {
    pub request_id: String,
    pub name: String,
    /// Required; `Option` only so that a payload signed without one is refused with the fix
    /// ([`RejectReason::NoTarget`]) rather than as malformed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(default)]
    pub args: serde_json::Value,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
}

/// What travels on `cmd/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub payload: String,
    pub key_id: String,
    pub signature: String,
}

/// Signs `payload` and returns the envelope JSON (what `edgevoice command sign` prints).
pub fn sign(key: &SigningKey, key_id: &str, payload: &CommandPayload) -> String {
    let bytes = serde_json::to_vec(payload).unwrap_or_default();
    let signature = key.sign(&bytes);
    let envelope = Envelope {
        payload: B64.encode(&bytes),
        key_id: key_id.to_owned(),
        signature: B64.encode(signature.to_bytes()),
    };
    serde_json::to_string(&envelope).unwrap_or_default()
}

/// A private key file: the 32-byte seed in base64 on one line.
pub fn encode_signing_key(key: &SigningKey) -> String {
    format!("{}\n", B64.encode(key.to_bytes()))
}

pub fn decode_signing_key(text: &str) -> Result<SigningKey, String> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| format!("not a key file written by `edgevoice command keygen` ({e})"))?;
    let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "holds {} bytes; a key file from `edgevoice command keygen` holds 32",
            bytes.len()
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Why a command was refused. `Display` is the `error` of the published result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("unsigned: the envelope has no signature; sign it with `edgevoice command sign`")]
    Unsigned,
    #[error("unknown key: \"{0}\" is not in uplink.trusted_keys")]
    UnknownKey(String),
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("name mismatch: the topic says \"{topic}\", the signed payload \"{payload}\"")]
    NameMismatch { topic: String, payload: String },
    #[error("no target: the signed payload names no site and device, so it would run on every appliance that trusts the key; re-sign it with `edgevoice command sign --site {site} --device {device}` (or --all-devices for every device of the site)")]
    NoTarget { site: String, device: String },
    #[error("wrong target: signed for site \"{target_site}\" device \"{target_device}\", this appliance is site \"{site}\" device \"{device}\"; sign it for this one with `edgevoice command sign --site {site} --device {device}`")]
    WrongTarget {
        target_site: String,
        target_device: String,
        site: String,
        device: String,
    },
    #[error("not yet valid: issued_at {issued_at} is {ahead} s in the future (clock skew allowed: {skew} s); check the signer's clock")]
    NotYetValid {
        issued_at: u64,
        ahead: u64,
        skew: u64,
    },
    #[error("lifetime too long: expires_at - issued_at is {lifetime} s, the most allowed is {max} s (uplink.command_max_lifetime_secs)")]
    LifetimeTooLong { lifetime: u64, max: u64 },
    #[error("expired: expires_at {expires_at} was {ago} s ago (clock skew allowed: {skew} s)")]
    Expired {
        expires_at: u64,
        ago: u64,
        skew: u64,
    },
    #[error("replayed: request_id \"{0}\" was seen before")]
    Replayed(String),
    #[error("oversized: the message is {bytes} bytes, a command may have at most {max}; it was acknowledged and dropped unread")]
    Oversized { bytes: usize, max: usize },
    #[error("too large to read: the broker delivered a {bytes}-byte message on the command topic, more than the {max} bytes the uplink reads, and would have re-sent it on every connect; the broker session was reset to make it forget that message (commands queued for this device while it was away are lost with it); limit message sizes at the broker (mosquitto: message_size_limit)")]
    TooLargeToRead { bytes: usize, max: usize },
    #[error("bad response topic: {0}; the command was not run")]
    BadResponseTopic(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// A refused message with whatever could be learnt from it, for the result and the audit.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: RejectReason,
    /// Usable as a topic level ([`valid_id`]); the result goes to `cmd-result/{this}`.
    pub request_id: Option<String>,
    /// Set only when the signature verified with this key.
    pub verified_key: Option<String>,
    pub args: serde_json::Value,
}

/// A command whose envelope verified; not yet checked against the replay ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub key_id: String,
    pub payload: CommandPayload,
}

/// What verification checks against: trusted keys, time limits and who this appliance is.
#[derive(Debug, Clone)]
pub struct Policy {
    pub keys: Vec<TrustedKey>,
    pub max_lifetime_secs: u64,
    pub clock_skew_secs: u64,
    /// `uplink.site_id`: a command's `target.site` must equal it.
    pub site: String,
    /// This appliance's device id: a command's `target.device` must equal it or be `*`.
    pub device: String,
}

impl Policy {
    /// From a validated config (entries that do not parse are skipped; validation refuses them)
    /// and the device id.
    pub fn from_config(u: &UplinkConfig, device: &str) -> Policy {
        Policy {
            keys: u
                .trusted_keys
                .iter()
                .filter_map(|k| parse_trusted_key(k).ok())
                .collect(),
            max_lifetime_secs: u.command_max_lifetime_secs,
            clock_skew_secs: u.command_clock_skew_secs,
            site: u.site_id.clone(),
            device: device.to_owned(),
        }
    }

    /// Checks one message from `cmd/{topic_name}` at `now` (unix seconds).
    #[allow(clippy::too_many_lines)] // the envelope's checks in order, each refusal with its reason
    pub fn verify(
        &self,
        topic_name: &str,
        message: &[u8],
        now: u64,
    ) -> Result<Verified, Box<Rejection>> {
        let mut rejection = Rejection {
            reason: RejectReason::Internal(String::new()),
            request_id: None,
            verified_key: None,
            args: serde_json::Value::Null,
        };
        let reject = |mut r: Rejection, reason| {
            r.reason = reason;
            Err(Box::new(r))
        };
        let value: serde_json::Value = match serde_json::from_slice(message) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(_) => {
                return reject(
                    rejection,
                    RejectReason::Malformed("the message is not a JSON object".into()),
                )
            }
            Err(e) => {
                return reject(
                    rejection,
                    RejectReason::Malformed(format!("the message is not JSON ({e})")),
                )
            }
        };
        // Unverified hints, only to route the result and fill the audit record.
        let claimed = value
            .get("payload")
            .and_then(|p| p.as_str())
            .and_then(|p| B64.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or_else(|| value.clone());
        rejection.request_id = claimed
            .get("request_id")
            .and_then(|r| r.as_str())
            .filter(|r| valid_id(r) && !r.starts_with('_'))
            .map(str::to_owned);
        rejection.args = claimed
            .get("args")
            .cloned()
            .unwrap_or(serde_json::Value::Null);

        let field = |name: &str| value.get(name).and_then(|v| v.as_str());
        let Some(signature) = field("signature") else {
            if value.get("signature").is_some() {
                return reject(
                    rejection,
                    RejectReason::Malformed("signature must be a base64 string".into()),
                );
            }
            return reject(rejection, RejectReason::Unsigned);
        };
        let (Some(payload_b64), Some(key_id)) = (field("payload"), field("key_id")) else {
            return reject(
                rejection,
                RejectReason::Malformed(
                    "the envelope needs string fields payload, key_id and signature".into(),
                ),
            );
        };
        let Some(trusted) = self.keys.iter().find(|k| k.name == key_id) else {
            return reject(
                rejection,
                RejectReason::UnknownKey(key_id.chars().take(64).collect()),
            );
        };
        let Ok(payload) = B64.decode(payload_b64) else {
            return reject(
                rejection,
                RejectReason::Malformed("payload is not base64".into()),
            );
        };
        let signature = match B64.decode(signature) {
            Ok(s) => s,
            Err(_) => {
                return reject(
                    rejection,
                    RejectReason::BadSignature("the signature is not base64".into()),
                )
            }
        };
        let Ok(signature) = Signature::from_slice(&signature) else {
            return reject(
                rejection,
                RejectReason::BadSignature(format!(
                    "the signature is {} bytes, an Ed25519 signature is 64",
                    signature.len()
                )),
            );
        };
        if trusted.key.verify_strict(&payload, &signature).is_err() {
            return reject(
                rejection,
                RejectReason::BadSignature(format!(
                    "it does not verify with key \"{key_id}\" over the payload bytes"
                )),
            );
        }
        rejection.verified_key = Some(key_id.to_owned());
        let payload: CommandPayload = match serde_json::from_slice(&payload) {
            Ok(p) => p,
            Err(e) => {
                return reject(
                    rejection,
                    RejectReason::Malformed(format!(
                        "the signed payload is not {{request_id, name, target, args, issued_at, expires_at}} ({e})"
                    )),
                )
            }
        };
        if !valid_id(&payload.request_id) || payload.request_id.starts_with('_') {
            return reject(
                rejection,
                RejectReason::Malformed(
                    "request_id must be 1-64 letters, digits, '-', '_' or '.', not starting with '_'"
                        .into(),
                ),
            );
        }
        if payload.name != topic_name {
            return reject(
                rejection,
                RejectReason::NameMismatch {
                    topic: topic_name.chars().take(64).collect(),
                    payload: payload.name.chars().take(64).collect(),
                },
            );
        }
        // Escaped and cut: the target is signed but may still be anything.
        let shown =
            |s: &str| -> String { s.chars().take(64).flat_map(char::escape_debug).collect() };
        match &payload.target {
            None => {
                return reject(
                    rejection,
                    RejectReason::NoTarget {
                        site: self.site.clone(),
                        device: self.device.clone(),
                    },
                )
            }
            Some(t)
                if t.site != self.site || (t.device != ALL_DEVICES && t.device != self.device) =>
            {
                return reject(
                    rejection,
                    RejectReason::WrongTarget {
                        target_site: shown(&t.site),
                        target_device: shown(&t.device),
                        site: self.site.clone(),
                        device: self.device.clone(),
                    },
                )
            }
            Some(_) => {}
        }
        let skew = self.clock_skew_secs;
        if payload.issued_at > now.saturating_add(skew) {
            return reject(
                rejection,
                RejectReason::NotYetValid {
                    issued_at: payload.issued_at,
                    ahead: payload.issued_at - now,
                    skew,
                },
            );
        }
        if payload.expires_at < payload.issued_at {
            return reject(
                rejection,
                RejectReason::Malformed("expires_at is before issued_at".into()),
            );
        }
        let lifetime = payload.expires_at - payload.issued_at;
        if lifetime > self.max_lifetime_secs {
            return reject(
                rejection,
                RejectReason::LifetimeTooLong {
                    lifetime,
                    max: self.max_lifetime_secs,
                },
            );
        }
        if now > payload.expires_at.saturating_add(skew) {
            return reject(
                rejection,
                RejectReason::Expired {
                    expires_at: payload.expires_at,
                    ago: now - payload.expires_at,
                    skew,
                },
            );
        }
        Ok(Verified {
            key_id: key_id.to_owned(),
            payload,
        })
    }
}

/// A request id that ran here, kept until a day after its command could no longer be
/// accepted anyway ([`LEDGER_KEEP_AFTER_EXPIRY_SECS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenCommand {
    pub key_id: String,
    pub name: String,
    /// Unix seconds; the entry may go once this, the clock skew and
    /// [`LEDGER_KEEP_AFTER_EXPIRY_SECS`] have passed.
    pub expires_at: u64,
    pub seen_at_ms: u64,
}

/// How long a request id stays in the ledger after its command expired. Not needed to refuse
/// replays (an expired command is refused anyway), but to know, for a day more (the broker
/// session's lifetime), that the id already has its result, so that an expired replay's
/// refusal is not published on top of it.
pub const LEDGER_KEEP_AFTER_EXPIRY_SECS: u64 = 86_400;

impl Record for SeenCommand {
    const TREE: TreeName = TreeName::CommandIds;
    const SCHEMA: u32 = 1;
}

/// Records `verified`'s request id, durably; false if it was seen before (a replay).
pub fn remember(store: &Store, verified: &Verified) -> Result<bool, StoreError> {
    let seen = SeenCommand {
        key_id: verified.key_id.clone(),
        name: verified.payload.name.clone(),
        expires_at: verified.payload.expires_at,
        seen_at_ms: crate::store::now_ms(),
    };
    store
        .tree::<SeenCommand>()?
        .insert_new(verified.payload.request_id.as_bytes(), &seen)
}

/// True if `request_id` ran here (it is in the ledger). An unreadable ledger says true: the
/// caller then publishes nothing on that id's topic, the safe side.
pub fn has_run(store: &Store, request_id: &str) -> bool {
    match store
        .tree::<SeenCommand>()
        .and_then(|t| t.get(request_id.as_bytes()))
    {
        Ok(seen) => seen.is_some(),
        Err(e) => {
            tracing::warn!("command id ledger not readable: {e}");
            true
        }
    }
}

/// Drops ids whose commands expired (plus the clock skew) more than
/// [`LEDGER_KEEP_AFTER_EXPIRY_SECS`] ago; returns how many.
pub fn prune(store: &Store, now: u64, skew: u64) -> Result<usize, StoreError> {
    let tree = store.tree::<SeenCommand>()?;
    let mut stale = Vec::new();
    for item in tree.iter() {
        match item {
            Ok((key, seen))
                if seen
                    .expires_at
                    .saturating_add(skew)
                    .saturating_add(LEDGER_KEEP_AFTER_EXPIRY_SECS)
                    < now =>
            {
                stale.push(key)
            }
            Ok(_) => {}
            // An unreadable entry is kept: dropping it could let a replay through.
            Err(e) => tracing::warn!("command id ledger: {e}"),
        }
    }
    let mut batch = crate::store::Batch::default();
    for key in &stale {
        batch.remove(key);
    }
    if !stale.is_empty() {
        tree.apply(batch)?;
    }
    Ok(stale.len())
}

/// Longest MQTT 5 response topic accepted (bytes).
pub const MAX_RESPONSE_TOPIC_BYTES: usize = 256;
/// Longest MQTT 5 correlation data carried back (bytes).
pub const MAX_CORRELATION_DATA_BYTES: usize = 1024;
/// Levels under `edgevoice/{site}/{device}/` a response must never go to: commands (every
/// appliance would have to verify, audit and answer them), status and event records (what
/// upstream takes as the fleet's own data).
const RESERVED_LEVELS: [&str; 3] = ["cmd", "status", "events"];

/// The response-topic policy: the response route is not covered by the signature (it is an
/// MQTT property), so a forged or re-routed command must not make the appliance publish
/// anywhere it likes. Accepted: a topic inside `edgevoice/{site}/`, at most
/// [`MAX_RESPONSE_TOPIC_BYTES`], without wildcards, NUL or empty levels, whose fourth level
/// is not `cmd`, `status` or `events`; correlation data at most [`MAX_CORRELATION_DATA_BYTES`].
pub fn check_response_route(
    site: &str,
    route: &crate::uplink::ResponseRoute,
) -> Result<(), String> {
    let topic = &route.topic;
    // Escaped: the topic is the sender's text and ends up in logs and results.
    let shown: String = topic
        .chars()
        .take(80)
        .flat_map(char::escape_debug)
        .collect();
    if topic.len() > MAX_RESPONSE_TOPIC_BYTES {
        return Err(format!(
            "\"{shown}...\" is {} bytes, at most {MAX_RESPONSE_TOPIC_BYTES}",
            topic.len()
        ));
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(format!("\"{shown}\" has a wildcard or NUL"));
    }
    let prefix = format!("edgevoice/{site}/");
    let Some(rest) = topic.strip_prefix(&prefix) else {
        return Err(format!("\"{shown}\" is not inside {prefix}"));
    };
    let levels: Vec<&str> = rest.split('/').collect();
    if levels.iter().any(|l| l.is_empty()) {
        return Err(format!("\"{shown}\" has an empty level"));
    }
    if let Some(level) = levels.get(1).filter(|l| RESERVED_LEVELS.contains(l)) {
        return Err(format!(
            "\"{shown}\" is a device's {level} topic; use a topic of your own, e.g. {prefix}replies/<client>"
        ));
    }
    if let Some(data) = &route.correlation_data {
        if data.len() > MAX_CORRELATION_DATA_BYTES {
            return Err(format!(
                "the correlation data is {} bytes, at most {MAX_CORRELATION_DATA_BYTES}",
                data.len()
            ));
        }
    }
    Ok(())
}

/// The JSON published on `cmd-result/{request_id}`.
pub fn result_json(
    request_id: Option<&str>,
    outcome: Result<serde_json::Value, String>,
) -> Vec<u8> {
    let mut v = match outcome {
        Ok(result) => {
            serde_json::json!({ "request_id": request_id, "ok": true, "result": result })
        }
        Err(error) => serde_json::json!({ "request_id": request_id, "ok": false, "error": error }),
    };
    let bytes = serde_json::to_vec(&v).unwrap_or_default();
    if bytes.len() <= MAX_RESULT_BYTES {
        return bytes;
    }
    v = serde_json::json!({
        "request_id": request_id,
        "ok": false,
        "error": format!("the result is {} bytes, more than the {MAX_RESULT_BYTES} a result may carry; ask for less (e.g. a smaller limit)", bytes.len()),
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    crate::store::now_ms() / 1000
}

/// Verifies, checks for replays, audits and runs remote commands through the [`Dispatcher`].
pub struct RemoteCommands {
    host: Arc<dyn ControlHost>,
    dispatcher: Arc<Dispatcher>,
    last_prune: AtomicU64,
    unverified: Mutex<RejectionBudget>,
    recent: Mutex<RecentCopies>,
}

fn limits(u: &UplinkConfig) -> Limits {
    Limits {
        per_min: u.unverified_commands_per_min,
        burst: u.unverified_commands_burst,
    }
}

impl RemoteCommands {
    pub fn new(host: Arc<dyn ControlHost>, dispatcher: Arc<Dispatcher>) -> Self {
        let budget = RejectionBudget::new(limits(&host.config().uplink), Instant::now());
        Self {
            host,
            dispatcher,
            last_prune: AtomicU64::new(0),
            unverified: Mutex::new(budget),
            recent: Mutex::new(RecentCopies::default()),
        }
    }

    /// The cheap look at a message before it is queued (no store, no signature check): a
    /// byte-identical copy of a message handled recently (a replay) runs in the copies' lane
    /// while the refusal budget lasts and is dropped here once it is spent (counted with the
    /// refusals beyond the budget); anything else is handled.
    pub fn triage_message(&self, message: &CommandMessage, clock: Instant) -> Triage {
        let copy = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen_before(&[message.name.as_bytes(), &message.payload]);
        if !copy {
            return Triage::Handle;
        }
        let uplink = self.host.config().uplink;
        let mut budget = self.unverified.lock().unwrap_or_else(|p| p.into_inner());
        budget.set_limits(limits(&uplink), clock);
        if budget.has_token(clock) {
            // Handled in full (refused and audited within the budget), in the copies' lane.
            return Triage::HandleCopy;
        }
        if let Admission::Drop { opens_window: true } = budget.admit(clock) {
            tracing::warn!(
                "remote commands: more than {} refused commands a minute (burst {}); dropping them without audit record or result for a while (uplink.unverified_commands_per_min); this one: a copy of a message already handled (a replay)",
                uplink.unverified_commands_per_min,
                uplink.unverified_commands_burst,
            );
        }
        Triage::Drop
    }

    /// Writes the summary of a window of rate-limited drops once it is over.
    fn summarise_drops(&self, now: Instant) {
        let closed = self
            .unverified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .poll_closed_window(now);
        if let Some(w) = closed {
            let outcome = format!(
                "rate_limited: {} unverified commands dropped in {} s without a result (uplink.unverified_commands_per_min)",
                w.dropped,
                w.length.as_secs()
            );
            tracing::warn!("remote commands: {outcome}");
            let principal = Principal {
                channel: CHANNEL.into(),
                who: format!("{CHANNEL}:unverified"),
            };
            self.dispatcher.audit(
                &principal,
                &Request::new("(unverified)", serde_json::Value::Null),
                outcome,
            );
        }
    }

    /// One message from `cmd/{name}` → what to publish. Blocking (store, and whatever the
    /// command does): call it off the runtime's workers. `now`: unix seconds, for the
    /// command's validity; `clock`: for the rate limit.
    pub fn handle_message(
        &self,
        message: &CommandMessage,
        now: u64,
        clock: Instant,
    ) -> CommandReply {
        let topic_name = message.name.as_str();
        let uplink = self.host.config().uplink;
        let store = self.host.store();
        let policy = Policy::from_config(&uplink, &store.instance().device_id);
        if now.saturating_sub(self.last_prune.load(Ordering::Relaxed)) >= 60 {
            self.last_prune.store(now, Ordering::Relaxed);
            match prune(store, now, policy.clock_skew_secs) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "command id ledger pruned"),
                Err(e) => tracing::warn!("command id ledger not pruned: {e}"),
            }
        }
        self.summarise_drops(clock);
        // The route is used only if it passes the policy; a verified command with a bad one
        // is refused (and answered on cmd-result/{request_id}).
        let route_problem = message
            .response
            .as_ref()
            .and_then(|r| check_response_route(&uplink.site_id, r).err());
        let route = message.response.clone().filter(|_| route_problem.is_none());
        let verified = policy
            .verify(topic_name, &message.payload, now)
            .and_then(|v| {
                let refuse = |reason| {
                    Box::new(Rejection {
                        reason,
                        request_id: Some(v.payload.request_id.clone()),
                        verified_key: Some(v.key_id.clone()),
                        args: v.payload.args.clone(),
                    })
                };
                if let Some(problem) = &route_problem {
                    return Err(refuse(RejectReason::BadResponseTopic(problem.clone())));
                }
                match remember(store, &v) {
                    Ok(true) => Ok(v),
                    Ok(false) => Err(refuse(RejectReason::Replayed(v.payload.request_id.clone()))),
                    Err(e) => Err(refuse(RejectReason::Internal(format!(
                        "the command id ledger cannot be written ({e})"
                    )))),
                }
            });
        match verified {
            Err(r) => self.answer_refusal(topic_name, &r, route, &uplink, clock),
            Ok(v) => {
                let principal = Principal {
                    channel: CHANNEL.into(),
                    who: format!("{CHANNEL}:{}", v.key_id),
                };
                let request_id = v.payload.request_id.clone();
                tracing::info!(command = %v.payload.name, %request_id, key = %v.key_id, "remote command");
                let req = Request {
                    id: Some(request_id.clone()),
                    command: v.payload.name,
                    args: v.payload.args,
                };
                let response = self.dispatcher.handle(&principal, req);
                let outcome = if response.ok {
                    Ok(response.result.unwrap_or(serde_json::Value::Null))
                } else {
                    Err(response.error.unwrap_or_else(|| "failed".into()))
                };
                CommandReply::Publish {
                    result: result_json(Some(&request_id), outcome),
                    route,
                }
            }
        }
    }

    /// A refused message: within the unverified budget, audited and answered; beyond it,
    /// dropped and counted. Every refusal takes from the budget, signed or not: only a
    /// command that passed every check is unlimited.
    fn answer_refusal(
        &self,
        command: &str,
        r: &Rejection,
        route: Option<crate::uplink::ResponseRoute>,
        uplink: &UplinkConfig,
        clock: Instant,
    ) -> CommandReply {
        let admission = {
            let mut budget = self.unverified.lock().unwrap_or_else(|p| p.into_inner());
            budget.set_limits(limits(uplink), clock);
            budget.admit(clock)
        };
        if let Admission::Drop { opens_window } = admission {
            if opens_window {
                tracing::warn!(
                    "remote commands: more than {} refused commands a minute (burst {}); dropping them without audit record or result for a while (uplink.unverified_commands_per_min); this one: {}",
                    uplink.unverified_commands_per_min,
                    uplink.unverified_commands_burst,
                    r.reason
                );
            }
            return CommandReply::Dropped;
        }
        let who = match &r.verified_key {
            Some(k) => format!("{CHANNEL}:{k}"),
            None => format!("{CHANNEL}:unverified"),
        };
        tracing::warn!(command = %command.chars().take(64).collect::<String>(), %who, "remote command refused: {}", r.reason);
        let principal = Principal {
            channel: CHANNEL.into(),
            who,
        };
        let mut req = Request::new(command, r.args.clone());
        req.id = r.request_id.clone();
        self.dispatcher
            .audit(&principal, &req, format!("refused: {}", r.reason));
        // An id that ran here has its result on cmd-result/{id}; a refusal (a replay, an
        // expired copy, anyone's message claiming the id) must not follow it there.
        let replayed = matches!(r.reason, RejectReason::Replayed(_))
            || r.request_id
                .as_deref()
                .is_some_and(|id| has_run(self.host.store(), id));
        if replayed {
            return CommandReply::NoResult;
        }
        CommandReply::Publish {
            result: result_json(r.request_id.as_deref(), Err(r.reason.to_string())),
            // Unauthenticated input never chooses where the appliance publishes.
            route: route.filter(|_| r.verified_key.is_some()),
        }
    }

    /// A message the uplink did not hand over whole (too big): refused like any unverified
    /// one, without a request id.
    pub fn handle_problem(&self, problem: &InboundProblem, clock: Instant) -> CommandReply {
        let uplink = self.host.config().uplink;
        self.summarise_drops(clock);
        let (command, reason) = match problem {
            InboundProblem::Oversized { name, bytes, max } => (
                name.as_str(),
                RejectReason::Oversized {
                    bytes: *bytes,
                    max: *max,
                },
            ),
            InboundProblem::TooLargeToRead { bytes, max } => (
                "(unread)",
                RejectReason::TooLargeToRead {
                    bytes: *bytes,
                    max: *max,
                },
            ),
        };
        let rejection = Rejection {
            reason,
            request_id: None,
            verified_key: None,
            args: serde_json::Value::Null,
        };
        self.answer_refusal(command, &rejection, None, &uplink, clock)
    }
}

impl crate::uplink::CommandHandler for RemoteCommands {
    fn handle(&self, message: CommandMessage) -> CommandReply {
        self.handle_message(&message, now_secs(), Instant::now())
    }

    fn refuse(&self, problem: InboundProblem) -> CommandReply {
        self.handle_problem(&problem, Instant::now())
    }

    fn triage(&self, message: &CommandMessage) -> Triage {
        self.triage_message(message, Instant::now())
    }

    fn housekeeping(&self) {
        self.summarise_drops(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::DaemonContext;
    use std::time::Duration;

    const NOW: u64 = 1_800_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn policy() -> Policy {
        Policy {
            keys: vec![TrustedKey {
                name: "ops".into(),
                key: key(1).verifying_key(),
            }],
            max_lifetime_secs: 600,
            clock_skew_secs: 30,
            site: "s1".into(),
            device: "dev-a".into(),
        }
    }

    fn payload(name: &str) -> CommandPayload {
        CommandPayload {
            request_id: "r1".into(),
            name: name.into(),
            target: Some(Target {
                site: "s1".into(),
                device: "dev-a".into(),
            }),
            args: serde_json::json!({}),
            issued_at: NOW - 10,
            expires_at: NOW + 50,
        }
    }

    fn signed(p: &CommandPayload) -> Vec<u8> {
        sign(&key(1), "ops", p).into_bytes()
    }

    fn rejected(topic: &str, msg: &[u8]) -> Box<Rejection> {
        policy().verify(topic, msg, NOW).unwrap_err()
    }

    #[test]
    fn a_good_envelope_verifies() {
        let v = policy()
            .verify("status", &signed(&payload("status")), NOW)
            .unwrap();
        assert_eq!(v.key_id, "ops");
        assert_eq!(v.payload, payload("status"));
    }

    #[test]
    fn trusted_key_lines_round_trip_and_bad_ones_say_why() {
        let line = public_key_line("ops", &key(1).verifying_key());
        assert_eq!(
            parse_trusted_key(&line).unwrap().key,
            key(1).verifying_key()
        );
        assert!(parse_trusted_key("nocolon")
            .unwrap_err()
            .contains("name:base64"));
        assert!(parse_trusted_key("a b:AAAA")
            .unwrap_err()
            .contains("key name"));
        assert!(parse_trusted_key("ops:!!")
            .unwrap_err()
            .contains("not base64"));
        assert!(parse_trusted_key("ops:AAAA").unwrap_err().contains("32"));
        let file = encode_signing_key(&key(3));
        assert_eq!(
            decode_signing_key(&file).unwrap().to_bytes(),
            key(3).to_bytes()
        );
    }

    #[test]
    fn not_json_or_missing_fields_is_malformed() {
        let r = rejected("status", b"not json");
        assert!(matches!(r.reason, RejectReason::Malformed(_)), "{r:?}");
        let r = rejected("status", b"[1]");
        assert!(matches!(r.reason, RejectReason::Malformed(_)), "{r:?}");
        let r = rejected("status", br#"{"signature": "AAAA"}"#);
        assert!(matches!(r.reason, RejectReason::Malformed(_)), "{r:?}");
        // Signed, but the payload lacks fields.
        let bytes = br#"{"request_id":"r1","name":"status"}"#;
        let env = Envelope {
            payload: B64.encode(bytes),
            key_id: "ops".into(),
            signature: B64.encode(key(1).sign(bytes).to_bytes()),
        };
        let r = rejected("status", &serde_json::to_vec(&env).unwrap());
        assert!(matches!(r.reason, RejectReason::Malformed(_)), "{r:?}");
        assert_eq!(r.verified_key.as_deref(), Some("ops"));
    }

    #[test]
    fn unsigned_is_refused_with_the_request_id_for_the_result() {
        let raw = serde_json::to_vec(&payload("status")).unwrap();
        let r = rejected("status", &raw);
        assert_eq!(r.reason, RejectReason::Unsigned);
        assert_eq!(r.request_id.as_deref(), Some("r1"));
        assert!(r.reason.to_string().starts_with("unsigned"));
    }

    #[test]
    fn unknown_key_is_refused() {
        let msg = sign(&key(2), "stranger", &payload("status"));
        let r = rejected("status", msg.as_bytes());
        assert_eq!(r.reason, RejectReason::UnknownKey("stranger".into()));
        assert_eq!(r.verified_key, None);
        // A trusted name with another key's signature is a bad signature.
        let msg = sign(&key(2), "ops", &payload("status"));
        let r = rejected("status", msg.as_bytes());
        assert!(matches!(r.reason, RejectReason::BadSignature(_)), "{r:?}");
    }

    #[test]
    fn name_must_match_the_topic() {
        let r = rejected("config.apply", &signed(&payload("status")));
        assert!(
            matches!(r.reason, RejectReason::NameMismatch { .. }),
            "{r:?}"
        );
    }

    #[test]
    fn expired_future_and_too_long_lived_commands_are_refused() {
        let mut p = payload("status");
        p.issued_at = NOW - 200;
        p.expires_at = NOW - 31;
        let r = rejected("status", &signed(&p));
        assert!(
            matches!(r.reason, RejectReason::Expired { ago: 31, .. }),
            "{r:?}"
        );
        // Within the skew: accepted.
        p.expires_at = NOW - 30;
        assert!(policy().verify("status", &signed(&p), NOW).is_ok());

        let mut p = payload("status");
        p.issued_at = NOW + 31;
        p.expires_at = NOW + 100;
        let r = rejected("status", &signed(&p));
        assert!(
            matches!(r.reason, RejectReason::NotYetValid { .. }),
            "{r:?}"
        );
        p.issued_at = NOW + 30;
        assert!(policy().verify("status", &signed(&p), NOW).is_ok());

        let mut p = payload("status");
        p.expires_at = p.issued_at + 601;
        let r = rejected("status", &signed(&p));
        assert!(
            matches!(r.reason, RejectReason::LifetimeTooLong { .. }),
            "{r:?}"
        );
        p.expires_at = p.issued_at - 1;
        let r = rejected("status", &signed(&p));
        assert!(matches!(r.reason, RejectReason::Malformed(_)), "{r:?}");
    }

    #[test]
    fn bad_request_ids_are_refused() {
        let mut p = payload("status");
        p.request_id = "a/b".into();
        let r = rejected("status", &signed(&p));
        assert!(matches!(r.reason, RejectReason::Malformed(_)), "{r:?}");
        assert_eq!(r.request_id, None, "never used as a topic level");
        p.request_id = "_invalid".into();
        assert!(matches!(
            rejected("status", &signed(&p)).reason,
            RejectReason::Malformed(_)
        ));
    }

    /// Any single-byte change of the payload or the signature is refused.
    #[test]
    fn every_single_byte_change_of_payload_or_signature_is_refused() {
        let p = payload("status");
        let bytes = serde_json::to_vec(&p).unwrap();
        let sig = key(1).sign(&bytes).to_bytes();
        let envelope = |payload: &[u8], sig: &[u8]| {
            serde_json::to_vec(&Envelope {
                payload: B64.encode(payload),
                key_id: "ops".into(),
                signature: B64.encode(sig),
            })
            .unwrap()
        };
        assert!(policy()
            .verify("status", &envelope(&bytes, &sig), NOW)
            .is_ok());
        let mut tried = 0;
        for i in 0..bytes.len() {
            for delta in [1u8, 0x80, 0xff] {
                let mut changed = bytes.clone();
                changed[i] = changed[i].wrapping_add(delta);
                let r = policy()
                    .verify("status", &envelope(&changed, &sig), NOW)
                    .unwrap_err();
                assert!(
                    matches!(r.reason, RejectReason::BadSignature(_)),
                    "payload byte {i} +{delta}: {r:?}"
                );
                tried += 1;
            }
        }
        for i in 0..sig.len() {
            for delta in [1u8, 0x80, 0xff] {
                let mut changed = sig;
                changed[i] = changed[i].wrapping_add(delta);
                let r = policy()
                    .verify("status", &envelope(&bytes, &changed), NOW)
                    .unwrap_err();
                assert!(
                    matches!(r.reason, RejectReason::BadSignature(_)),
                    "signature byte {i} +{delta}: {r:?}"
                );
                tried += 1;
            }
        }
        assert_eq!(tried, 3 * (bytes.len() + 64));
    }

    #[test]
    fn the_ledger_refuses_replays_across_reopen_and_prunes_expired_ids() {
        let dir = tempfile::tempdir().unwrap();
        let v = policy()
            .verify("status", &signed(&payload("status")), NOW)
            .unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(!has_run(&store, "r1"));
            assert!(remember(&store, &v).unwrap(), "first time");
            assert!(!remember(&store, &v).unwrap(), "replay");
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(!remember(&store, &v).unwrap(), "replay after reopen");
        assert!(has_run(&store, "r1"));
        // Kept a day past the expiry (and skew), so an expired copy still finds it.
        let gone = v.payload.expires_at + 30 + LEDGER_KEEP_AFTER_EXPIRY_SECS;
        assert_eq!(prune(&store, v.payload.expires_at + 31, 30).unwrap(), 0);
        assert_eq!(prune(&store, gone, 30).unwrap(), 0);
        assert_eq!(prune(&store, gone + 1, 30).unwrap(), 1);
        assert!(!has_run(&store, "r1"));
        assert!(remember(&store, &v).unwrap());
    }

    #[test]
    fn response_topics_must_stay_inside_the_site_and_off_reserved_levels() {
        let route = |topic: &str| crate::uplink::ResponseRoute {
            topic: topic.into(),
            correlation_data: Some(vec![1, 2]),
        };
        for good in [
            "edgevoice/s1/replies/ops-1",
            "edgevoice/s1/dev/cmd-result/r1",
            "edgevoice/s1/x",
        ] {
            assert_eq!(check_response_route("s1", &route(good)), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("elsewhere/s1/replies", "not inside edgevoice/s1/"),
            ("edgevoice/s2/replies", "not inside edgevoice/s1/"),
            ("edgevoice/s1/replies/#", "wildcard"),
            ("edgevoice/s1/+/x", "wildcard"),
            ("edgevoice/s1//x", "empty level"),
            ("edgevoice/s1/", "empty level"),
            ("edgevoice/s1/dev/cmd/status", "cmd topic"),
            ("edgevoice/s1/dev/status", "status topic"),
            ("edgevoice/s1/dev/events/calls", "events topic"),
        ] {
            let e = check_response_route("s1", &route(bad)).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("edgevoice/s1/{}", "a".repeat(MAX_RESPONSE_TOPIC_BYTES));
        assert!(check_response_route("s1", &route(&long))
            .unwrap_err()
            .contains("at most 256"));
        let mut big = route("edgevoice/s1/replies");
        big.correlation_data = Some(vec![0; MAX_CORRELATION_DATA_BYTES + 1]);
        assert!(check_response_route("s1", &big)
            .unwrap_err()
            .contains("correlation data"));
    }

    /// A `RemoteCommands` on a fresh store, site `s1`, trusting `ops` (key 1), answering at
    /// most `burst` unverified refusals (one more a minute).
    fn remote(dir: &std::path::Path, burst: u32) -> (RemoteCommands, Arc<DaemonContext>) {
        let mut config = crate::config::Config::default();
        config.daemon.state_dir = dir.join("state");
        config.daemon.runtime_dir = dir.join("run");
        config.uplink.site_id = "s1".into();
        config.uplink.trusted_keys = vec![public_key_line("ops", &key(1).verifying_key())];
        config.uplink.unverified_commands_per_min = 1;
        config.uplink.unverified_commands_burst = burst;
        let loaded = crate::config::LoadedConfig {
            config,
            source: dir.join("edgevoice.toml"),
        };
        let store = Store::open(&dir.join("state")).unwrap();
        let ctx = Arc::new(DaemonContext::new(loaded, store, None));
        let dispatcher = Arc::new(Dispatcher::new(ctx.clone()));
        (RemoteCommands::new(ctx.clone(), dispatcher), ctx)
    }

    fn message(payload: Vec<u8>, response: Option<&str>) -> CommandMessage {
        CommandMessage {
            name: "status".into(),
            payload,
            response: response.map(|topic| crate::uplink::ResponseRoute {
                topic: topic.into(),
                correlation_data: Some(b"c-1".to_vec()),
            }),
        }
    }

    fn outcome(reply: &CommandReply) -> (serde_json::Value, Option<String>) {
        match reply {
            CommandReply::Publish { result, route } => (
                serde_json::from_slice(result).unwrap(),
                route.as_ref().map(|r| r.topic.clone()),
            ),
            CommandReply::Dropped => panic!("dropped"),
            CommandReply::NoResult => panic!("no result"),
        }
    }

    /// A command for `ctx`'s device, valid now.
    fn live(ctx: &DaemonContext, request_id: &str) -> CommandPayload {
        CommandPayload {
            request_id: request_id.into(),
            target: Some(Target {
                site: "s1".into(),
                device: ctx.store().instance().device_id.clone(),
            }),
            issued_at: now_secs() - 1,
            expires_at: now_secs() + 60,
            ..payload("status")
        }
    }

    fn audit_outcomes(ctx: &DaemonContext) -> Vec<String> {
        ctx.store()
            .tree::<super::super::AuditRecord>()
            .unwrap()
            .newest_json(100)
            .iter()
            .map(|r| r["outcome"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn results_take_an_acceptable_response_route_and_a_bad_one_refuses_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let (remote, ctx) = remote(dir.path(), 20);
        let now = Instant::now();
        let mut p = live(&ctx, "r1");
        let reply = remote.handle_message(
            &message(signed(&p), Some("edgevoice/s1/replies/ops")),
            now_secs(),
            now,
        );
        let (result, route) = outcome(&reply);
        assert_eq!(result["ok"], true, "{result}");
        assert_eq!(route.as_deref(), Some("edgevoice/s1/replies/ops"));
        let CommandReply::Publish { route: Some(r), .. } = reply else {
            unreachable!()
        };
        assert_eq!(r.correlation_data.as_deref(), Some(&b"c-1"[..]));

        p.request_id = "r2".into();
        let (result, route) = outcome(&remote.handle_message(
            &message(signed(&p), Some("edgevoice/s2/replies")),
            now_secs(),
            now,
        ));
        assert_eq!(route, None, "answered on cmd-result");
        assert!(
            result["error"].as_str().unwrap().starts_with(
                "bad response topic: \"edgevoice/s2/replies\" is not inside edgevoice/s1/"
            ),
            "{result}"
        );
        assert!(
            audit_outcomes(&ctx)
                .iter()
                .any(|o| o.starts_with("refused: bad response topic")),
            "{:?}",
            audit_outcomes(&ctx)
        );
    }

    #[test]
    fn unverified_refusals_beyond_the_budget_are_dropped_and_summarised_once_per_window() {
        let dir = tempfile::tempdir().unwrap();
        let (remote, ctx) = remote(dir.path(), 2);
        let t0 = Instant::now();
        let unsigned = serde_json::to_vec(&payload("status")).unwrap();
        let handle = |t: Instant| remote.handle_message(&message(unsigned.clone(), None), NOW, t);
        let (result, route) = outcome(&remote.handle_message(
            &message(unsigned.clone(), Some("edgevoice/s1/replies/x")),
            NOW,
            t0,
        ));
        assert!(result["error"].as_str().unwrap().starts_with("unsigned"));
        assert_eq!(route, None, "unverified: answered on cmd-result only");
        let (result, _) = outcome(&handle(t0));
        assert!(result["error"].as_str().unwrap().starts_with("unsigned"));
        for _ in 0..5 {
            assert_eq!(handle(t0), CommandReply::Dropped);
        }
        // A bad signature is just as unverified.
        let forged = sign(&key(2), "ops", &payload("status"));
        assert_eq!(
            remote.handle_message(&message(forged.into_bytes(), None), NOW, t0),
            CommandReply::Dropped
        );
        // Commands that pass every check are never limited by it.
        let p = live(&ctx, "r1");
        let (result, _) =
            outcome(&remote.handle_message(&message(signed(&p), None), now_secs(), t0));
        assert_eq!(result["ok"], true, "{result}");
        let refused = |ctx: &DaemonContext| {
            audit_outcomes(ctx)
                .iter()
                .filter(|o| o.starts_with("refused: unsigned"))
                .count()
        };
        assert_eq!(refused(&ctx), 2, "only the answered ones");
        // The window closes a minute after the first drop: one summary record.
        remote.summarise_drops(t0 + Duration::from_secs(59));
        assert!(!audit_outcomes(&ctx)
            .iter()
            .any(|o| o.starts_with("rate_limited")));
        remote.summarise_drops(t0 + Duration::from_secs(60));
        remote.summarise_drops(t0 + Duration::from_secs(61));
        let summaries: Vec<String> = audit_outcomes(&ctx)
            .into_iter()
            .filter(|o| o.starts_with("rate_limited"))
            .collect();
        assert_eq!(
            summaries,
            vec!["rate_limited: 6 unverified commands dropped in 60 s without a result (uplink.unverified_commands_per_min)".to_owned()]
        );
    }

    #[test]
    fn a_command_signed_for_another_device_or_site_or_for_none_is_refused_with_the_fix() {
        let target = |site: &str, device: &str| {
            let mut p = payload("status");
            p.target = Some(Target {
                site: site.into(),
                device: device.into(),
            });
            p
        };
        assert!(policy()
            .verify("status", &signed(&target("s1", "dev-a")), NOW)
            .is_ok());
        // Every device of the site.
        assert!(policy()
            .verify("status", &signed(&target("s1", ALL_DEVICES)), NOW)
            .is_ok());
        for (site, device) in [
            ("s1", "dev-b"),
            ("s2", "dev-a"),
            ("s2", ALL_DEVICES),
            ("", ""),
        ] {
            let r = rejected("status", &signed(&target(site, device)));
            assert_eq!(r.verified_key.as_deref(), Some("ops"));
            assert_eq!(
                r.reason.to_string(),
                format!("wrong target: signed for site \"{site}\" device \"{device}\", this appliance is site \"s1\" device \"dev-a\"; sign it for this one with `edgevoice command sign --site s1 --device dev-a`")
            );
        }
        // Signed before targets existed: the exact bytes such a signer made.
        let old = br#"{"request_id":"r1","name":"status","args":{},"issued_at":1799999990,"expires_at":1800000050}"#;
        let env = Envelope {
            payload: B64.encode(old),
            key_id: "ops".into(),
            signature: B64.encode(key(1).sign(old).to_bytes()),
        };
        let r = rejected("status", &serde_json::to_vec(&env).unwrap());
        assert_eq!(
            r.reason,
            RejectReason::NoTarget {
                site: "s1".into(),
                device: "dev-a".into()
            }
        );
        assert!(r
            .reason
            .to_string()
            .contains("re-sign it with `edgevoice command sign --site s1 --device dev-a`"));
        // The target is covered by the signature like everything else.
        let bytes = serde_json::to_vec(&payload("status")).unwrap();
        let moved = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("dev-a", "dev-b");
        let env = Envelope {
            payload: B64.encode(moved.as_bytes()),
            key_id: "ops".into(),
            signature: B64.encode(key(1).sign(&bytes).to_bytes()),
        };
        let r = policy()
            .verify("status", &serde_json::to_vec(&env).unwrap(), NOW)
            .unwrap_err();
        assert!(matches!(r.reason, RejectReason::BadSignature(_)), "{r:?}");
    }

    /// A captured command replayed (before and after it expired): every copy is refused,
    /// within the shared budget only, and none is published on its request id's topic; the
    /// same goes for anyone's unsigned message claiming that id. Genuine commands run on.
    #[test]
    fn replays_share_the_unverified_budget_and_never_follow_the_original_result() {
        let dir = tempfile::tempdir().unwrap();
        let (remote, ctx) = remote(dir.path(), 3);
        let t0 = Instant::now();
        let original = signed(&live(&ctx, "r1"));
        let (result, _) =
            outcome(&remote.handle_message(&message(original.clone(), None), now_secs(), t0));
        assert_eq!(result["ok"], true, "{result}");
        // Replayed while valid: refused, audited, no result.
        let replay = |now: u64| remote.handle_message(&message(original.clone(), None), now, t0);
        assert_eq!(replay(now_secs()), CommandReply::NoResult);
        // Replayed after it expired: refused as expired, still no result on r1.
        let later = now_secs() + 3600;
        assert_eq!(replay(later), CommandReply::NoResult);
        // Anyone's unsigned message with that request id.
        let mut unsigned = live(&ctx, "r1");
        unsigned.name = "status".into();
        assert_eq!(
            remote.handle_message(
                &message(serde_json::to_vec(&unsigned).unwrap(), None),
                now_secs(),
                t0
            ),
            CommandReply::NoResult
        );
        // The budget (3) is spent: further copies are dropped and counted.
        for _ in 0..50 {
            assert_eq!(replay(now_secs()), CommandReply::Dropped);
            assert_eq!(replay(later), CommandReply::Dropped);
        }
        // Before the queue: a byte-identical copy finds the budget spent and is dropped
        // without a signature check; a new message is handled.
        let copy = message(original.clone(), None);
        assert_eq!(
            remote.triage_message(&copy, t0),
            Triage::Handle,
            "first seen"
        );
        assert_eq!(remote.triage_message(&copy, t0), Triage::Drop);
        let dir2 = tempfile::tempdir().unwrap();
        let (other, _) = super::tests::remote(dir2.path(), 3);
        assert_eq!(other.triage_message(&copy, t0), Triage::Handle);
        assert_eq!(
            other.triage_message(&copy, t0),
            Triage::HandleCopy,
            "budget left"
        );
        let fresh = message(signed(&live(&ctx, "r2")), None);
        assert_eq!(remote.triage_message(&fresh, t0), Triage::Handle);
        // A genuine command still runs at once.
        let (result, _) = outcome(&remote.handle_message(
            &message(signed(&live(&ctx, "r2")), None),
            now_secs(),
            t0,
        ));
        assert_eq!(result["ok"], true, "{result}");
        let outcomes = audit_outcomes(&ctx);
        let refused: Vec<&String> = outcomes
            .iter()
            .filter(|o| o.starts_with("refused"))
            .collect();
        assert_eq!(refused.len(), 3, "{outcomes:?}");
        assert!(refused.iter().any(|o| o.starts_with("refused: replayed")));
        assert!(refused.iter().any(|o| o.starts_with("refused: expired")));
        assert!(refused.iter().any(|o| o.starts_with("refused: unsigned")));
        // The drops are summarised once the window is over.
        remote.summarise_drops(t0 + Duration::from_secs(60));
        assert!(audit_outcomes(&ctx)
            .iter()
            .any(|o| o.starts_with("rate_limited: 101 unverified commands dropped")));
    }

    #[test]
    fn a_command_for_another_device_is_refused_with_a_result_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let (remote, ctx) = remote(dir.path(), 3);
        let mut p = live(&ctx, "r1");
        p.target = Some(Target {
            site: "s1".into(),
            device: "someone-else".into(),
        });
        let (result, route) =
            outcome(&remote.handle_message(&message(signed(&p), None), now_secs(), Instant::now()));
        assert_eq!(route, None);
        assert!(
            result["error"]
                .as_str()
                .unwrap()
                .starts_with("wrong target: signed for site \"s1\" device \"someone-else\""),
            "{result}"
        );
        assert!(audit_outcomes(&ctx)
            .iter()
            .any(|o| o.starts_with("refused: wrong target")));
        // Not run, so the id is free for the right command.
        assert!(!has_run(ctx.store(), "r1"));
    }

    #[test]
    fn oversized_messages_are_refused_within_the_budget_without_a_request_id() {
        let dir = tempfile::tempdir().unwrap();
        let (remote, ctx) = remote(dir.path(), 1);
        let t0 = Instant::now();
        let problem = InboundProblem::Oversized {
            name: "status".into(),
            bytes: 1_048_576,
            max: 262_144,
        };
        let (result, route) = outcome(&remote.handle_problem(&problem, t0));
        assert_eq!(
            (result["request_id"].clone(), route),
            (serde_json::Value::Null, None)
        );
        assert!(
            result["error"]
                .as_str()
                .unwrap()
                .starts_with("oversized: the message is 1048576 bytes"),
            "{result}"
        );
        assert_eq!(remote.handle_problem(&problem, t0), CommandReply::Dropped);
        assert!(audit_outcomes(&ctx)
            .iter()
            .any(|o| o.starts_with("refused: oversized")));
    }

    #[test]
    fn results_carry_the_request_id_and_big_ones_become_an_error() {
        let ok: serde_json::Value =
            serde_json::from_slice(&result_json(Some("r1"), Ok(serde_json::json!({"a": 1}))))
                .unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"request_id": "r1", "ok": true, "result": {"a": 1}})
        );
        let err: serde_json::Value =
            serde_json::from_slice(&result_json(None, Err("expired: x".into()))).unwrap();
        assert_eq!(err["ok"], false);
        assert_eq!(err["error"], "expired: x");
        let big = "x".repeat(MAX_RESULT_BYTES);
        let v: serde_json::Value =
            serde_json::from_slice(&result_json(Some("r"), Ok(serde_json::json!(big)))).unwrap();
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap().contains("ask for less"));
    }
}
