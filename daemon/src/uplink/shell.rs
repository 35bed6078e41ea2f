//! The async MQTT shell (rumqttc; MQTT 5 or 3.1.1, `uplink.mqtt_version`) around
//! [`DurableOutbox`] and [`Reconnect`]. The protocol differences live in `wire.rs`; everything
//! here is the same for both.
//!
//! - Every store call (append, PUBACK delete, reads) runs on `spawn_blocking`, never on the
//!   runtime's workers: the store fsyncs.
//! - Each connection attempt gets a fresh rumqttc `EventLoop`, so rumqttc's own re-send queue
//!   (`EventLoop::pending`, filled by `clean()` when a connection drops) is thrown away with
//!   it: the outbox alone decides what is re-sent (same idempotency key). The broker session
//!   is persistent (MQTT 5: session expiry a day): it keeps the command subscription and the
//!   commands sent while the appliance was away, which arrive at reconnect (and are refused
//!   if they expired meanwhile). QoS 1 publishes to the broker leave no broker-side state, so
//!   the session adds no second re-send queue for what the appliance sends.
//! - rumqttc chooses packet ids itself; it reports each as `Outgoing::Publish(pkid)` in the
//!   order the publishes were requested, so a FIFO maps rumqttc's id to the outbox's one.
//!   A PUBACK for a mapped id is the only thing that deletes a message (`handle_puback`); an
//!   MQTT 5 PUBACK whose reason code refuses the message deletes nothing and ends the
//!   connection (the message is sent again after the back-off; status shows why), except a
//!   command result refused for good (not authorized, invalid topic or payload): it went to
//!   a topic its requester chose, and keeping it would block its stream forever.
//! - Retained `edgevoice/{site}/{device}/status` "online" after CONNACK; the same topic as
//!   last will says "offline".
//! - Remote commands: after CONNACK, `edgevoice/{site}/{device}/cmd/+` at QoS 1. Each message
//!   goes to the [`CommandHandler`] on a blocking thread (at most [`MAX_COMMANDS_RUNNING`] at
//!   once, [`MAX_COMMANDS_QUEUED`] running or waiting, beyond that dropped and logged; the
//!   event loop never waits for a command); its result is appended to the
//!   `command_results` stream of the outbox, so it survives a disconnect, and is published on
//!   `edgevoice/{site}/{device}/cmd-result/{request_id}`, or, when the MQTT 5 command named a
//!   response topic the handler accepted, on that topic instead, with the command's
//!   correlation data. The route is stored with the result (see [`stored_result`]).
//! - Inbound size: rumqttc reads packets up to [`MAX_INCOMING_PACKET_BYTES`] (MQTT 5: also the
//!   maximum packet size we advertise) and acknowledges every QoS 1 message it reads, so the
//!   broker forgets it; a command above [`MAX_COMMAND_BYTES`] is then dropped here unread,
//!   counted and refused ([`InboundProblem::Oversized`]). A bigger packet (MQTT 3.1.1 cannot
//!   tell the broker a maximum) breaks the connection mid-read, and the persistent session
//!   would bring it back on every connect: the next connect is preceded by one clean-session
//!   connect that makes the broker forget it ([`InboundProblem::TooLargeToRead`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::commands::{
    CommandHandler, CommandLanes, CommandMessage, CommandReply, InboundProblem, ResponseRoute,
    Triage, HOUSEKEEPING_EVERY, MAX_COMMAND_BYTES, MAX_INCOMING_PACKET_BYTES,
};
use super::messages::{outgoing_message, status_message, status_payload, stored_result};
use super::wire::{self, MqttVersion, Settings, WireEvent};
use super::{
    DurableOutbox, Identity, MessageId, OutboxConfig, OutboxError, OutboxStatus, Reconnect,
    ReconnectConfig, Stream,
};
use crate::config::UplinkConfig;
use crate::store::Store;

/// Commands running at once; further ones wait their turn (the event loop does not).
pub const MAX_COMMANDS_RUNNING: usize = 4;
/// Commands running or waiting; beyond this a message is dropped (logged), so a flood of
/// messages cannot grow memory without bound.
pub const MAX_COMMANDS_QUEUED: usize = 64;
/// Largest MQTT packet sent (a result is at most 128 KiB).
const MAX_OUTGOING_PACKET_BYTES: usize = 256 * 1024;
/// Whoever owns the store lends it to the uplink's blocking calls.
pub trait StoreOwner: Send + Sync + 'static {
    fn store(&self) -> &Store;
}

/// What `edgevoice status` shows of the uplink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkReport {
    /// "connected", "connecting", "offline".
    pub state: String,
    pub broker: String,
    pub tls: bool,
    pub last_error: Option<String>,
    pub connects: u64,
    pub queued_messages: usize,
    pub queued_bytes: u64,
    pub in_flight: usize,
    pub acked: u64,
    pub rejected: u64,
    pub evicted: u64,
    pub expired: u64,
    /// "5" or "3.1.1".
    #[serde(default)]
    pub mqtt_version: String,
    /// Unverified commands dropped without a result by the rate limit
    /// (`uplink.unverified_commands_per_min`).
    #[serde(default)]
    pub commands_rate_limited: u64,
    /// Command messages dropped unread for their size (more than [`MAX_COMMAND_BYTES`],
    /// including those too large to read at all).
    #[serde(default)]
    pub commands_oversized: u64,
    /// Broker sessions reset to make the broker forget a message too large to read
    /// ([`InboundProblem::TooLargeToRead`]).
    #[serde(default)]
    pub session_resets: u64,
}

impl UplinkReport {
    /// One line for systemd STATUS= and the plain `edgevoice status`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} ({}{}), {} queued",
            self.state,
            self.broker,
            if self.tls { ", tls" } else { "" },
            self.queued_messages
        );
        if self.state != "connected" {
            if let Some(e) = &self.last_error {
                s.push_str(&format!(", last error: {e}"));
            }
        }
        if self.commands_rate_limited > 0 {
            s.push_str(&format!(
                ", {} unverified commands dropped (rate limit)",
                self.commands_rate_limited
            ));
        }
        if self.commands_oversized > 0 {
            s.push_str(&format!(
                ", {} oversized commands dropped",
                self.commands_oversized
            ));
        }
        s
    }
}

struct Shared {
    outbox: Mutex<DurableOutbox>,
    owner: Arc<dyn StoreOwner>,
    wake: Notify,
    /// Set by [`UplinkHandle::shutdown`]: say "offline" ourselves, disconnect, stop.
    stop: tokio::sync::watch::Sender<bool>,
    /// Set when the connection task has ended.
    stopped: tokio::sync::watch::Sender<bool>,
    view: Mutex<View>,
    broker: String,
    tls: bool,
    version: MqttVersion,
    /// How long a stream the broker refused waits before its message is tried again.
    refused_stream_retry: Duration,
}

#[derive(Default)]
struct View {
    state: &'static str,
    last_error: Option<String>,
    connects: u64,
    commands_rate_limited: u64,
    commands_oversized: u64,
    session_resets: u64,
}

/// Producers' and status' way into the uplink. Cheap to clone.
#[derive(Clone)]
pub struct UplinkHandle {
    shared: Arc<Shared>,
}

impl UplinkHandle {
    /// Stops the uplink cleanly (daemon shutdown): a connected uplink first publishes what is
    /// queued (for up to 2 s), then the retained "offline" status, and disconnects; what is
    /// still queued stays in the outbox for the next start. Waits at most `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shared.stop.send_replace(true);
        let mut stopped = self.shared.stopped.subscribe();
        let _ = tokio::time::timeout(timeout, stopped.wait_for(|s| *s)).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkStartError {
    #[error(transparent)]
    Identity(#[from] super::IdentityError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("uplink: {0}")]
    Config(String),
    #[error("uplink TLS: {0}")]
    Tls(String),
}

impl UplinkHandle {
    /// Appends to the durable outbox; returns once the message is on disk (flushed). An `Err`
    /// means it was not queued (outbox full per policy, or the store failed).
    pub async fn append(&self, stream: Stream, payload: Vec<u8>) -> Result<MessageId, OutboxError> {
        let shared = self.shared.clone();
        let appended = tokio::task::spawn_blocking(move || {
            let mut outbox = shared.outbox.lock().unwrap_or_else(|p| p.into_inner());
            outbox.append(shared.owner.store(), stream, &payload, Instant::now())
        })
        .await
        .expect("uplink append task panicked")?;
        self.shared.wake.notify_one();
        Ok(appended.id)
    }

    /// Queues what store writes owe upstream ([`crate::uplink::owe`]); returns once it is in
    /// the outbox (flushed), or left owed for the next call when the store refused. An `Err` is
    /// one line for the log.
    pub async fn take_owed(&self) -> Result<usize, String> {
        let shared = self.shared.clone();
        let taken = tokio::task::spawn_blocking(move || {
            let mut outbox = shared.outbox.lock().unwrap_or_else(|p| p.into_inner());
            outbox.take_owed(shared.owner.store(), Instant::now())
        })
        .await
        .map_err(|e| format!("the uplink's queueing task failed: {e}"))?
        .map_err(|e| e.to_string())?;
        if taken > 0 {
            self.shared.wake.notify_one();
        }
        Ok(taken)
    }

    /// [`Self::append`] of `value` as JSON; the error is one line for the log.
    pub async fn append_json(
        &self,
        stream: Stream,
        value: &impl Serialize,
    ) -> Result<MessageId, String> {
        let json = serde_json::to_vec(value).map_err(|e| format!("not serialisable: {e}"))?;
        self.append(stream, json).await.map_err(|e| e.to_string())
    }

    pub fn report(&self) -> UplinkReport {
        let status: OutboxStatus = self
            .shared
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .status(Instant::now());
        let view = self.shared.view.lock().unwrap_or_else(|p| p.into_inner());
        UplinkReport {
            state: view.state.to_owned(),
            broker: self.shared.broker.clone(),
            tls: self.shared.tls,
            last_error: view.last_error.clone(),
            connects: view.connects,
            queued_messages: status.queued_messages,
            queued_bytes: status.queued_bytes,
            in_flight: status.in_flight,
            acked: status.totals.acked,
            rejected: status.totals.rejected,
            evicted: status.totals.evicted,
            expired: status.totals.expired,
            mqtt_version: match self.shared.version {
                MqttVersion::V5 => "5",
                MqttVersion::V311 => "3.1.1",
            }
            .to_owned(),
            commands_rate_limited: view.commands_rate_limited,
            commands_oversized: view.commands_oversized,
            session_resets: view.session_resets,
        }
    }
}

fn topic_base(identity: &Identity) -> String {
    format!("edgevoice/{}/{}", identity.site(), identity.device())
}

/// Opens the outbox and starts the connection task. Call from inside the runtime.
pub fn start(
    config: &UplinkConfig,
    owner: Arc<dyn StoreOwner>,
    device_id: &str,
    health: Arc<dyn Fn() -> String + Send + Sync>,
    commands: Option<Arc<dyn CommandHandler>>,
) -> Result<UplinkHandle, UplinkStartError> {
    let identity = Identity::new(&config.site_id, device_id)?;
    let outbox_config = OutboxConfig {
        max_messages: config.max_messages as usize,
        max_bytes: config.max_bytes,
        max_in_flight: config.max_in_flight,
        drain_rate: std::num::NonZeroU32::new(config.drain_rate_per_sec),
        drain_burst: std::num::NonZeroU32::new(config.drain_burst.max(1)).expect("max(1)"),
        ..OutboxConfig::default()
    };
    let hours = |h: u32| Some(Duration::from_secs(u64::from(h) * 3600));
    let outbox_config = OutboxConfig {
        normal: super::PriorityPolicy {
            max_age: hours(config.max_age_hours),
            ..outbox_config.normal
        },
        low: super::PriorityPolicy {
            max_age: hours(config.telemetry_max_age_hours),
            ..outbox_config.low
        },
        ..outbox_config
    };
    let outbox = DurableOutbox::open(
        owner.store(),
        outbox_config,
        identity.clone(),
        Instant::now(),
        crate::store::now_ms(),
    )?;
    // What earlier runs' store writes still owe upstream (a crash came between a call's end
    // and its queueing, or the store refused the move): queued before anything new.
    let mut outbox = outbox;
    match outbox.take_owed(owner.store(), Instant::now()) {
        Ok(0) => {}
        Ok(n) => tracing::info!("{n} messages owed upstream by the last run are queued now"),
        Err(e) => tracing::error!("messages owed upstream stay owed for now: {e}"),
    }
    let reconnect_config = ReconnectConfig {
        initial_delay: Duration::from_millis(u64::from(config.reconnect_min_ms)),
        max_delay: Duration::from_secs(u64::from(config.reconnect_max_secs)),
        ..ReconnectConfig::default()
    };
    let seed = device_id.bytes().fold(crate::store::now_ms(), |h, b| {
        h.rotate_left(5) ^ u64::from(b)
    });
    let reconnect = Reconnect::new(reconnect_config, seed, Instant::now())
        .map_err(|e| UplinkStartError::Config(e.to_string()))?;
    let tls = if config.ca_file.as_os_str().is_empty() {
        None
    } else {
        Some(tls_config(config)?)
    };
    let client_id = if config.client_id.is_empty() {
        format!("edgevoice-{}-{}", config.site_id, device_id)
    } else {
        config.client_id.clone()
    };
    let version = MqttVersion::parse(&config.mqtt_version).ok_or_else(|| {
        UplinkStartError::Config(format!(
            "mqtt_version \"{}\" is not \"5\" or \"3.1.1\"",
            config.mqtt_version
        ))
    })?;
    let base = topic_base(&identity);
    let options = wire::Options::new(
        version,
        &Settings {
            client_id,
            host: config.broker_host.clone(),
            port: config.broker_port,
            keepalive: Duration::from_secs(u64::from(config.keepalive_secs)),
            username: config.username.clone(),
            password: config.password.clone(),
            will_topic: format!("{base}/status"),
            will_payload: status_payload("offline", "connection lost"),
            tls: tls.clone(),
            max_in_flight: config.max_in_flight,
            max_incoming_packet_bytes: MAX_INCOMING_PACKET_BYTES,
            max_outgoing_packet_bytes: MAX_OUTGOING_PACKET_BYTES,
        },
    );
    let shared = Arc::new(Shared {
        outbox: Mutex::new(outbox),
        owner,
        wake: Notify::new(),
        view: Mutex::new(View {
            state: "connecting",
            ..View::default()
        }),
        broker: format!("{}:{}", config.broker_host, config.broker_port),
        tls: tls.is_some(),
        version,
        refused_stream_retry: Duration::from_secs(u64::from(config.reconnect_max_secs))
            .min(MAX_REFUSED_STREAM_RETRY),
        stop: tokio::sync::watch::channel(false).0,
        stopped: tokio::sync::watch::channel(false).0,
    });
    let handle = UplinkHandle {
        shared: shared.clone(),
    };
    tokio::spawn(async move {
        let done = shared.clone();
        run(shared, options, reconnect, base, health, commands).await;
        done.stopped.send_replace(true);
    });
    Ok(handle)
}

/// A refused stream is tried again after `uplink.reconnect_max_secs`, at most this.
const MAX_REFUSED_STREAM_RETRY: Duration = Duration::from_secs(60);

/// How long a clean shutdown keeps publishing what is queued before it says "offline".
const SHUTDOWN_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// How long a clean shutdown waits for the broker to take the "offline" status.
const SHUTDOWN_STATUS_WAIT: Duration = Duration::from_secs(2);

fn tls_config(config: &UplinkConfig) -> Result<Arc<rustls::ClientConfig>, UplinkStartError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| UplinkStartError::Tls(format!("cannot read {} ({e})", path.display())))
    };
    let mut roots = rustls::RootCertStore::empty();
    let ca = read(&config.ca_file)?;
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        let cert = cert.map_err(|e| {
            UplinkStartError::Tls(format!("uplink.ca_file {}: {e}", config.ca_file.display()))
        })?;
        roots.add(cert).map_err(|e| {
            UplinkStartError::Tls(format!("uplink.ca_file {}: {e}", config.ca_file.display()))
        })?;
    }
    if roots.is_empty() {
        return Err(UplinkStartError::Tls(format!(
            "uplink.ca_file {} holds no certificate; point it at the broker's CA (PEM)",
            config.ca_file.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UplinkStartError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let client = if config.client_cert.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let pem = read(&config.client_cert)?;
        let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
        let certs = certs.map_err(|e| UplinkStartError::Tls(format!("uplink.client_cert: {e}")))?;
        let key_pem = read(&config.client_key)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| UplinkStartError::Tls(format!("uplink.client_key: {e}")))?
            .ok_or_else(|| {
                UplinkStartError::Tls(format!(
                    "uplink.client_key {} holds no private key",
                    config.client_key.display()
                ))
            })?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| UplinkStartError::Tls(format!("uplink.client_cert/client_key: {e}")))?
    };
    Ok(Arc::new(client))
}

/// What arrived on `cmd/`: a command for the handler, or a problem to refuse.
enum Inbound {
    Command(CommandMessage),
    Problem(InboundProblem),
}

impl Inbound {
    /// What arrived on `cmd/{name}`: the message, or, above [`MAX_COMMAND_BYTES`], only its
    /// size (the payload is dropped here, before it can wait in the queue).
    fn from_message(name: &str, payload: Vec<u8>, response: Option<ResponseRoute>) -> Inbound {
        if payload.len() > MAX_COMMAND_BYTES {
            return Inbound::Problem(InboundProblem::Oversized {
                name: name.chars().take(64).collect(),
                bytes: payload.len(),
                max: MAX_COMMAND_BYTES,
            });
        }
        Inbound::Command(CommandMessage {
            name: name.to_owned(),
            payload,
            response,
        })
    }

    fn name(&self) -> String {
        match self {
            Inbound::Command(m) => m.name.chars().take(64).collect(),
            Inbound::Problem(InboundProblem::Oversized { name, .. }) => name.clone(),
            Inbound::Problem(InboundProblem::TooLargeToRead { .. }) => "(unread)".into(),
        }
    }
}

/// Runs one remote command (or the refusal of a problem) off the event loop and queues its
/// result.
fn spawn_command(
    handler: Arc<dyn CommandHandler>,
    lanes: &CommandLanes,
    handle: UplinkHandle,
    inbound: Inbound,
) {
    if let Inbound::Problem(problem) = &inbound {
        let mut view = handle.shared.view.lock().unwrap_or_else(|p| p.into_inner());
        view.commands_oversized += 1;
        if let InboundProblem::Oversized { name, bytes, max } = problem {
            tracing::warn!(
                command = %name,
                "uplink: a {bytes}-byte command message was acknowledged and dropped unread (at most {max}); limit message sizes at the broker (mosquitto: message_size_limit)"
            );
        }
    }
    let triage = match &inbound {
        Inbound::Command(message) => handler.triage(message),
        // Refusals only: never in the genuine commands' slots.
        Inbound::Problem(_) => Triage::HandleCopy,
    };
    let (queue, slots) = match triage {
        Triage::Handle => (&lanes.queue, lanes.slots.clone()),
        Triage::HandleCopy => (&lanes.copy_queue, lanes.copy_slot.clone()),
        Triage::Drop => {
            let mut view = handle.shared.view.lock().unwrap_or_else(|p| p.into_inner());
            view.commands_rate_limited += 1;
            return;
        }
    };
    let Ok(queued) = queue.clone().try_acquire_owned() else {
        if triage == Triage::HandleCopy {
            // The copies' own lane is full: one more copy is one more for the rate limit.
            let mut view = handle.shared.view.lock().unwrap_or_else(|p| p.into_inner());
            view.commands_rate_limited += 1;
        } else {
            tracing::warn!(
                command = %inbound.name(),
                "remote command dropped: {MAX_COMMANDS_QUEUED} commands already running or waiting"
            );
        }
        return;
    };
    tokio::spawn(async move {
        let _queued = queued;
        let Ok(_permit) = slots.acquire_owned().await else {
            return;
        };
        let reply = tokio::task::spawn_blocking(move || match inbound {
            Inbound::Command(message) => handler.handle(message),
            Inbound::Problem(problem) => handler.refuse(problem),
        })
        .await;
        match reply {
            Ok(CommandReply::Publish { result, route }) => {
                let stored = stored_result(result, route.as_ref());
                if let Err(e) = handle.append(Stream::CommandResults, stored).await {
                    tracing::error!("remote command result not queued: {e}");
                }
            }
            Ok(CommandReply::Dropped) => {
                let mut view = handle.shared.view.lock().unwrap_or_else(|p| p.into_inner());
                view.commands_rate_limited += 1;
            }
            Ok(CommandReply::NoResult) => {}
            Err(e) => tracing::error!("remote command task failed: {e}"),
        }
    });
}

/// A one-line, actionable reading of a rumqttc connection error.
fn explain(raw: &str, broker: &str, tls: bool) -> String {
    let lower = raw.to_ascii_lowercase();
    if lower.contains("unknownissuer")
        || lower.contains("invalid peer certificate")
        || lower.contains("badsignature")
    {
        format!("TLS: the broker {broker}'s certificate is not signed by uplink.ca_file ({raw}); point uplink.ca_file at the CA that issued the broker's certificate")
    } else if lower.contains("notvalidforname") {
        format!("TLS: the broker's certificate does not name {broker} ({raw}); set uplink.broker_host to a name in the certificate")
    } else if lower.contains("certificate required")
        || lower.contains("certificaterequired")
        || lower.contains("unknown ca")
        || lower.contains("bad certificate")
    {
        format!("TLS: the broker {broker} refused our client certificate ({raw}); check uplink.client_cert/client_key against the broker's CA")
    } else if lower.contains("connection refused") && !lower.contains("return code") {
        format!("cannot reach broker {broker} (connection refused); is it running and is uplink.broker_port right{}?", if tls { "" } else { " (TLS brokers usually use 8883)" })
    } else if lower.contains("return code") {
        format!("broker {broker} refused the connection ({raw}); check uplink.username/password and client_id")
    } else {
        format!("broker {broker}: {raw}")
    }
}

fn set_view(shared: &Shared, state: &'static str, error: Option<String>) {
    let mut view = shared.view.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = &error {
        if view.last_error.as_deref() != Some(e.as_str()) {
            tracing::error!("uplink: {e}");
        }
    }
    if state == "connected" {
        view.connects += 1;
        if view.state != "connected" {
            tracing::info!(broker = %shared.broker, "uplink connected");
        }
    }
    view.state = state;
    if error.is_some() {
        view.last_error = error;
    }
}

/// Runs `f` on the outbox off the runtime's workers.
async fn with_outbox<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut DurableOutbox, &Store) -> T + Send + 'static,
) -> T {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let mut outbox = shared.outbox.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut outbox, shared.owner.store())
    })
    .await
    .expect("uplink outbox task panicked")
}

#[allow(clippy::too_many_lines)] // the uplink's one select loop over the broker, the outbox and commands
async fn run(
    shared: Arc<Shared>,
    options: wire::Options,
    mut reconnect: Reconnect,
    base: String,
    health: Arc<dyn Fn() -> String + Send + Sync>,
    commands: Option<Arc<dyn CommandHandler>>,
) {
    let lanes = CommandLanes::new();
    let command_prefix = format!("{base}/cmd/");
    let identity = shared
        .outbox
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .identity()
        .clone();
    let mut stop = shared.stop.subscribe();
    // Set when the broker sent a packet too large to read: (its size, our maximum).
    let mut reset_session: Option<(usize, usize)> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        // Back-off.
        loop {
            let now = Instant::now();
            match reconnect.poll_reconnect(now) {
                Some(at) if at <= now => break,
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = stop.changed() => return,
                    }
                }
                None => break,
            }
        }
        set_view(&shared, "connecting", None);
        if let Some((bytes, max)) = reset_session {
            match reset_broker_session(&options).await {
                Ok(()) => {
                    reset_session = None;
                    tracing::warn!(
                        "uplink: the broker session was reset (one clean-session connect) to make the broker forget a {bytes}-byte command message it re-sent on every connect (more than the {max} bytes the uplink reads); commands queued for this device while it was away are lost with it, the outbox is not; limit message sizes at the broker (mosquitto: message_size_limit)"
                    );
                    {
                        let mut view = shared.view.lock().unwrap_or_else(|p| p.into_inner());
                        view.session_resets += 1;
                    }
                    if let Some(handler) = &commands {
                        spawn_command(
                            handler.clone(),
                            &lanes,
                            UplinkHandle {
                                shared: shared.clone(),
                            },
                            Inbound::Problem(InboundProblem::TooLargeToRead { bytes, max }),
                        );
                    }
                }
                Err(e) => {
                    reconnect.handle_connect_failed(Instant::now());
                    set_view(
                        &shared,
                        "offline",
                        Some(format!(
                            "broker session reset: {}",
                            explain(&e, &shared.broker, shared.tls)
                        )),
                    );
                    continue;
                }
            }
        }
        // A fresh event loop per connection: nothing of rumqttc's old pending queue survives.
        let (client, pump, mut events) = wire::connect(&options);
        let connected = loop {
            match events.recv().await {
                Some(Ok(WireEvent::ConnAck)) => break Ok(()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(explain(&e.to_string(), &shared.broker, shared.tls)),
                None => break Err("the MQTT event loop stopped".to_owned()),
            }
        };
        if let Err(e) = connected {
            pump.abort();
            reconnect.handle_connect_failed(Instant::now());
            set_view(&shared, "offline", Some(e));
            continue;
        }
        reconnect.handle_connected(Instant::now());
        set_view(&shared, "connected", None);
        {
            let mut view = shared.view.lock().unwrap_or_else(|p| p.into_inner());
            view.last_error = None;
        }
        with_outbox(&shared, |o, _| o.handle_connected()).await;
        let mut said_health = health();
        // `None` in the FIFO: a publish that is not the outbox's (the status message).
        let mut requested: VecDeque<Option<u16>> = VecDeque::new();
        let mut by_pkid: HashMap<u16, u16> = HashMap::new();
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set by a clean stop: publish what is queued (the last calls' records, the stopping
        // event) until the outbox is empty or this deadline, then say offline.
        let mut flush_until: Option<Instant> = None;
        let error = 'conn: {
            if let Err(e) = client.publish(status_message(&base, "online", &said_health)) {
                break 'conn format!("cannot queue the status message: {e}");
            }
            requested.push_back(None);
            if commands.is_some() {
                if let Err(e) = client.subscribe(format!("{command_prefix}+")) {
                    break 'conn format!("cannot subscribe to commands: {e}");
                }
            }
            loop {
                // Hand rumqttc everything the outbox allows now (window, drain rate).
                let outgoing = with_outbox(&shared, |o, store| {
                    let now = Instant::now();
                    let mut out = Vec::new();
                    loop {
                        match o.poll_publish(store, now) {
                            Ok(Some(p)) => out.push(p),
                            Ok(None) => break,
                            Err(e) => return (out, Some(e)),
                        }
                    }
                    if let Err(e) = o.handle_timeout(store, now) {
                        return (out, Some(e));
                    }
                    (out, None)
                })
                .await;
                let (outgoing, failure) = outgoing;
                for p in outgoing {
                    let message = outgoing_message(&identity, &base, p.id, &p.key, &p.payload);
                    if let Err(e) = client.publish(message) {
                        break 'conn format!("cannot queue a publish: {e}");
                    }
                    requested.push_back(Some(p.packet_id));
                }
                if let Some(e) = failure {
                    break 'conn format!("outbox: {e}");
                }
                let (wake_at, queued) = {
                    let outbox = shared.outbox.lock().unwrap_or_else(|p| p.into_inner());
                    (outbox.poll_timeout(), outbox.outbox().queued_messages())
                };
                if let Some(deadline) = flush_until {
                    if queued == 0 || Instant::now() >= deadline {
                        say_offline_and_disconnect(&client, &mut events, &base).await;
                        pump.abort();
                        let _ = with_outbox(&shared, |o, _| o.handle_disconnect()).await;
                        set_view(&shared, "offline", None);
                        tracing::info!(
                            left_queued = queued,
                            "uplink: said offline and disconnected"
                        );
                        return;
                    }
                }
                let wake_at = wake_at.into_iter().chain(flush_until).min();
                let sleep = async {
                    match wake_at {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    event = events.recv() => match event {
                        Some(Ok(WireEvent::Published(pkid))) => {
                            if let Some(Some(ours)) = requested.pop_front() {
                                by_pkid.insert(pkid, ours);
                            }
                        }
                        Some(Ok(WireEvent::PubAck { pkid, refused: Some(refusal) })) => {
                            let Some(ours) = by_pkid.remove(&pkid) else {
                                continue;
                            };
                            // A command result the broker will never take on its (requester-
                            // chosen) topic would block its stream forever: it is dropped. Any
                            // other refused message is kept (deleting would lose it); its stream
                            // is held for a while, so the other streams are not stuck behind it,
                            // and it is sent again after reconnecting; status shows the reason.
                            let retry_at = Instant::now() + shared.refused_stream_retry;
                            let r = with_outbox(&shared, move |o, store| {
                                let id = o.outbox().in_flight_id(ours);
                                let result = id.filter(|id| id.stream == Stream::CommandResults);
                                if refusal.permanent && result.is_some() {
                                    o.handle_puback(store, ours).map(|_| (id, refusal, true))
                                } else {
                                    if let Some(id) = id {
                                        o.hold(id.stream, retry_at);
                                    }
                                    Ok((id, refusal, false))
                                }
                            })
                            .await;
                            match r {
                                Ok((id, refusal, true)) => tracing::warn!(
                                    message = %id.map(|i| i.to_string()).unwrap_or_default(),
                                    "uplink: command result dropped: the broker refused it ({}) on its topic",
                                    refusal.reason
                                ),
                                Ok((id, refusal, false)) => break 'conn format!(
                                    "the broker refused {} (PUBACK reason {}); it stays queued and its stream is tried again in {} s (the other streams go on); check the broker's ACL and limits for {base}/#",
                                    id.map(|i| i.to_string()).unwrap_or_else(|| "a publish".into()),
                                    refusal.reason,
                                    shared.refused_stream_retry.as_secs()
                                ),
                                Err(e) => break 'conn format!("outbox: {e}"),
                            }
                        }
                        Some(Ok(WireEvent::PubAck { pkid, refused: None })) => {
                            if let Some(ours) = by_pkid.remove(&pkid) {
                                let r = with_outbox(&shared, move |o, store| {
                                    fault::before_puback_delete(o, ours);
                                    o.handle_puback(store, ours)
                                })
                                .await;
                                if let Err(e) = r {
                                    break 'conn format!("outbox: {e}");
                                }
                            }
                        }
                        Some(Ok(WireEvent::Received { topic, payload, response })) => {
                            // Already acknowledged by rumqttc (QoS 1), so the broker forgets it
                            // whatever happens to it here.
                            match (&commands, topic.strip_prefix(&command_prefix)) {
                                (Some(handler), Some(name)) => spawn_command(
                                    handler.clone(),
                                    &lanes,
                                    UplinkHandle { shared: shared.clone() },
                                    Inbound::from_message(name, payload, response),
                                ),
                                _ => tracing::debug!(%topic, "uplink: unexpected message ignored"),
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(wire::WireError::TooLarge { bytes, max })) => {
                            reset_session = Some((bytes, max));
                            break 'conn format!(
                                "the broker sent a {bytes}-byte message, more than the {max} bytes the uplink reads; the broker session is reset at the next connect to make it forget that message; limit message sizes at the broker (mosquitto: message_size_limit)"
                            );
                        }
                        Some(Err(e)) => break 'conn explain(&e.to_string(), &shared.broker, shared.tls),
                        None => break 'conn "the MQTT event loop stopped".to_owned(),
                    },
                    _ = housekeeping.tick() => {
                        if let Some(handler) = &commands {
                            let handler = handler.clone();
                            tokio::task::spawn_blocking(move || handler.housekeeping());
                        }
                        // The retained status follows the daemon (starting → ready → draining),
                        // not only the connection.
                        let now_health = health();
                        if now_health != said_health {
                            let status = status_message(&base, "online", &now_health);
                            if let Err(e) = client.publish(status) {
                                break 'conn format!("cannot queue the status message: {e}");
                            }
                            requested.push_back(None);
                            said_health = now_health;
                        }
                    }
                    _ = shared.wake.notified() => {}
                    _ = sleep => {}
                    _ = stop.changed(), if flush_until.is_none() => {
                        flush_until = Some(Instant::now() + SHUTDOWN_FLUSH_WAIT);
                    }
                }
            }
        };
        // Dropping the event loop drops rumqttc's own re-send queue with it.
        pump.abort();
        let back = with_outbox(&shared, |o, _| o.handle_disconnect()).await;
        reconnect.handle_disconnected(Instant::now());
        tracing::warn!(in_flight_returned = back, "uplink disconnected: {error}");
        set_view(&shared, "offline", Some(error));
    }
}

/// One connection with a clean session, closed at once: the broker discards the appliance's
/// session, and with it the message too large to read that it would otherwise re-send on every
/// connect (MQTT 3.1.1 cannot tell the broker a maximum packet size). The next, normal connect
/// starts a new persistent session and subscribes again. What the appliance publishes is not
/// affected: QoS 1 publishes leave no broker-side state; the outbox re-sends.
async fn reset_broker_session(options: &wire::Options) -> Result<(), String> {
    let (client, pump, mut events) = wire::connect(&options.with_clean_session());
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(Ok(WireEvent::ConnAck)) => break Ok(()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(e.to_string()),
                None => break Err("the MQTT event loop stopped".to_owned()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no CONNACK within 10 s".to_owned()));
    if result.is_ok() {
        let _ = client.disconnect();
        // The event loop writes the DISCONNECT and then stops (its stream ends or errs).
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(Ok(_)) = events.recv().await {}
        })
        .await;
    }
    pump.abort();
    result
}

/// A clean stop: the retained status says "offline" (health "stopped") in our own words, so
/// the broker does not publish the last will ("connection lost") for what was no loss; then
/// DISCONNECT. Bounded: a broker that does not answer gets the will instead.
async fn say_offline_and_disconnect(
    client: &wire::Client,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Result<WireEvent, wire::WireError>>,
    base: &str,
) {
    if client
        .publish(status_message(base, "offline", "stopped"))
        .is_err()
    {
        return;
    }
    // Packet ids of publishes queued before this one are in flight too: wait until every one
    // requested so far, ours last, is acknowledged or the time is up.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_STATUS_WAIT;
    let mut ours: Option<u16> = None;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Ok(WireEvent::Published(pkid)))) => ours = Some(pkid),
            Ok(Some(Ok(WireEvent::PubAck { pkid, .. }))) if Some(pkid) == ours => break,
            Ok(Some(Ok(_))) => {}
            _ => return,
        }
    }
    let _ = client.disconnect();
    // The event loop writes the DISCONNECT and then stops (its stream ends or errs).
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(Ok(_)) = events.recv().await {}
    })
    .await;
}

/// The forced-duplicate test's crash point (tests/uplink_mqtt.rs, [`crate::fault`]): the
/// broker's PUBACK for a message arrived and the daemon dies before the durable delete.
mod fault {
    pub(super) fn before_puback_delete(outbox: &super::DurableOutbox, packet_id: u16) {
        if !cfg!(debug_assertions) {
            return;
        }
        if let Some(id) = outbox.outbox().in_flight_id(packet_id) {
            crate::fault::crash_before_puback_delete(&id.to_string(), &outbox.identity().key(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::messages::*;
    use crate::uplink::Sequence;

    #[test]
    fn envelope_carries_the_key_and_inlines_json_payloads() {
        let identity = Identity::new("s1", "dev").unwrap();
        let id = MessageId {
            stream: Stream::Calls,
            sequence: Sequence(7),
        };
        let key = identity.key(id);
        let a = envelope(&identity, id, &key, br#"{"id":"c1"}"#);
        assert_eq!(
            a,
            envelope(&identity, id, &key, br#"{"id":"c1"}"#),
            "re-sends are identical"
        );
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["key"], "s1/dev/calls/7");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["payload"]["id"], "c1");
        let t: serde_json::Value =
            serde_json::from_slice(&envelope(&identity, id, &key, b"not json")).unwrap();
        assert_eq!(t["payload"], "not json");
    }

    #[test]
    fn command_results_go_to_their_request_topic_with_the_key() {
        let identity = Identity::new("s1", "dev").unwrap();
        let id = MessageId {
            stream: Stream::CommandResults,
            sequence: Sequence(3),
        };
        let key = identity.key(id);
        let m = outgoing_message(
            &identity,
            "edgevoice/s1/dev",
            id,
            &key,
            br#"{"request_id":"r-1","ok":true,"result":{"a":1}}"#,
        );
        assert_eq!(m.topic, "edgevoice/s1/dev/cmd-result/r-1");
        assert_eq!(
            m.idempotency_key.as_deref(),
            Some("s1/dev/command_results/3")
        );
        assert_eq!(m.correlation_data, None);
        let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["result"]["a"], 1);
        assert_eq!(v["key"], "s1/dev/command_results/3");
        let m = outgoing_message(
            &identity,
            "edgevoice/s1/dev",
            id,
            &key,
            br#"{"request_id":null,"ok":false,"error":"malformed: x"}"#,
        );
        assert_eq!(m.topic, "edgevoice/s1/dev/cmd-result/_invalid");
        let calls = MessageId {
            stream: Stream::Calls,
            sequence: Sequence(1),
        };
        let m = outgoing_message(&identity, "edgevoice/s1/dev", calls, "k", b"{}");
        assert_eq!(m.topic, "edgevoice/s1/dev/events/calls");
        assert_eq!(m.idempotency_key.as_deref(), Some("k"));
        let telemetry = MessageId {
            stream: Stream::Telemetry,
            sequence: Sequence(2),
        };
        let m = outgoing_message(&identity, "edgevoice/s1/dev", telemetry, "t", b"{}");
        assert_eq!(m.topic, "edgevoice/s1/dev/telemetry");
        let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(v["stream"], "telemetry");
    }

    #[test]
    fn a_stored_response_route_sends_the_result_there_with_its_correlation_data() {
        let identity = Identity::new("s1", "dev").unwrap();
        let id = MessageId {
            stream: Stream::CommandResults,
            sequence: Sequence(4),
        };
        let key = identity.key(id);
        let result = br#"{"request_id":"r-2","ok":true,"result":1}"#.to_vec();
        let route = ResponseRoute {
            topic: "edgevoice/s1/ops/replies".into(),
            correlation_data: Some(vec![0, 159, 255]),
        };
        let stored = stored_result(result.clone(), Some(&route));
        let m = outgoing_message(&identity, "edgevoice/s1/dev", id, &key, &stored);
        assert_eq!(m.topic, "edgevoice/s1/ops/replies");
        assert_eq!(m.correlation_data, Some(vec![0, 159, 255]));
        let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"request_id": "r-2", "ok": true, "result": 1, "key": key}),
            "the route is not part of the body"
        );
        // Re-sends are identical; no route stores the result unchanged.
        let again = outgoing_message(&identity, "edgevoice/s1/dev", id, &key, &stored);
        assert_eq!((again.topic, again.body), (m.topic, m.body));
        assert_eq!(stored_result(result.clone(), None), result);
        let no_data = ResponseRoute {
            correlation_data: None,
            ..route
        };
        let m = outgoing_message(
            &identity,
            "edgevoice/s1/dev",
            id,
            &key,
            &stored_result(result, Some(&no_data)),
        );
        assert_eq!(
            (m.topic.as_str(), m.correlation_data),
            ("edgevoice/s1/ops/replies", None)
        );
    }

    #[test]
    fn connection_errors_become_one_actionable_line() {
        let refused = rumqttc::ConnectionError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        let line = explain(&refused.to_string(), "127.0.0.1:1883", false);
        assert!(
            line.contains("connection refused") && line.contains("uplink.broker_port"),
            "{line}"
        );
        let bad_ca = rumqttc::ConnectionError::Io(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        ));
        let line = explain(&bad_ca.to_string(), "b:8883", true);
        // MQTT 5's CONNACK refusal reads the same way.
        let v5 = rumqttc::v5::ConnectionError::ConnectionRefused(
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::NotAuthorized,
        );
        let line5 = explain(&v5.to_string(), "b:1883", false);
        assert!(line5.contains("uplink.username/password"), "{line5}");
        assert!(line.contains("not signed by uplink.ca_file"), "{line}");
        assert!(!line.contains('\n'));
    }
}
