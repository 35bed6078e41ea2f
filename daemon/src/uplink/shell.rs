//! The async MQTT shell (rumqttc, MQTT 3.1.1) around [`DurableOutbox`] and [`Reconnect`].
//!
//! - Every store call (append, PUBACK delete, reads) runs on `spawn_blocking`, never on the
//!   runtime's workers: the store fsyncs.
//! - Each connection attempt gets a fresh rumqttc `EventLoop` with a clean session, so rumqttc's
//!   own re-send queue (`EventLoop::pending`, filled by `clean()` when a connection drops) is
//!   thrown away with it: the outbox alone decides what is re-sent (same idempotency key, DUP).
//! - rumqttc chooses packet ids itself; it reports each as `Outgoing::Publish(pkid)` in the
//!   order the publishes were requested, so a FIFO maps rumqttc's id to the outbox's one.
//!   A PUBACK for a mapped id is the only thing that deletes a message (`handle_puback`).
//! - Retained `edgevoice/{site}/{device}/status` "online" after CONNACK; the same topic as
//!   last will says "offline".
//! - Remote commands: after CONNACK, `edgevoice/{site}/{device}/cmd/+` at QoS 1. Each message
//!   goes to the [`CommandHandler`] on a blocking thread (at most [`MAX_COMMANDS_RUNNING`] at
//!   once, [`MAX_COMMANDS_QUEUED`] running or waiting, beyond that dropped and logged; the
//!   event loop never waits for a command); its result is appended to the
//!   `command_results` stream of the outbox, so it survives a disconnect, and is published on
//!   `edgevoice/{site}/{device}/cmd-result/{request_id}`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, Incoming, LastWill, MqttOptions, Outgoing, QoS, TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

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
/// Largest MQTT packet sent or received (commands carry whole config files).
const MAX_PACKET_BYTES: usize = 256 * 1024;

/// Turns one message from `cmd/{name}` into the JSON result to publish (verification, replay
/// check, audit, execution). Called on a blocking thread.
pub trait CommandHandler: Send + Sync + 'static {
    fn handle(&self, topic_name: &str, message: &[u8]) -> Vec<u8>;
}

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
        s
    }
}

struct Shared {
    outbox: Mutex<DurableOutbox>,
    owner: Arc<dyn StoreOwner>,
    wake: Notify,
    view: Mutex<View>,
    broker: String,
    tls: bool,
}

#[derive(Default)]
struct View {
    state: &'static str,
    last_error: Option<String>,
    connects: u64,
}

/// Producers' and status' way into the uplink. Cheap to clone.
#[derive(Clone)]
pub struct UplinkHandle {
    shared: Arc<Shared>,
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
    let outbox = DurableOutbox::open(
        owner.store(),
        outbox_config,
        identity.clone(),
        Instant::now(),
        crate::store::now_ms(),
    )?;
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
    let mut options = MqttOptions::new(client_id, config.broker_host.clone(), config.broker_port);
    options
        .set_keep_alive(Duration::from_secs(u64::from(config.keepalive_secs)))
        .set_clean_session(true)
        // A little above the outbox's window, so rumqttc's packet ids rarely collide.
        .set_inflight(config.max_in_flight.saturating_add(4))
        .set_request_channel_capacity(usize::from(config.max_in_flight) + 8)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if !config.username.is_empty() {
        options.set_credentials(config.username.clone(), config.password.clone());
    }
    let base = topic_base(&identity);
    options.set_last_will(LastWill::new(
        format!("{base}/status"),
        status_payload("offline", "connection lost"),
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(tls) = tls.clone() {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
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
    });
    let handle = UplinkHandle {
        shared: shared.clone(),
    };
    tokio::spawn(run(shared, options, reconnect, base, health, commands));
    Ok(handle)
}

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

fn status_payload(state: &str, health: &str) -> Vec<u8> {
    serde_json::json!({
        "state": state,
        "version": crate::ops::VERSION,
        "health": health,
        "at_ms": crate::store::now_ms(),
    })
    .to_string()
    .into_bytes()
}

/// The wire payload: an envelope that carries the idempotency key with the producer's payload
/// (inline JSON when it is JSON, else a string). Built only from stored data, so a re-send is
/// byte-identical.
fn envelope(identity: &Identity, id: MessageId, key: &str, payload: &[u8]) -> Vec<u8> {
    let body = serde_json::from_slice::<serde_json::Value>(payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(payload).into_owned())
    });
    serde_json::json!({
        "key": key,
        "site": identity.site(),
        "device": identity.device(),
        "stream": id.stream.as_str(),
        "seq": id.sequence.0,
        "payload": body,
    })
    .to_string()
    .into_bytes()
}

/// Topic and body of one outbox message. Command results go to `cmd-result/{request_id}` as
/// the result object with the idempotency key added; everything else to `events/{stream}` in
/// the [`envelope`].
fn outgoing_message(
    identity: &Identity,
    base: &str,
    id: MessageId,
    key: &str,
    payload: &[u8],
) -> (String, Vec<u8>) {
    if id.stream == Stream::CommandResults {
        if let Ok(serde_json::Value::Object(mut result)) =
            serde_json::from_slice::<serde_json::Value>(payload)
        {
            let request_id = result
                .get("request_id")
                .and_then(|r| r.as_str())
                .filter(|r| crate::control::remote::valid_id(r))
                .unwrap_or(crate::control::remote::NO_REQUEST_ID)
                .to_owned();
            result.insert("key".into(), serde_json::Value::String(key.to_owned()));
            let body = serde_json::to_vec(&result).unwrap_or_default();
            return (format!("{base}/cmd-result/{request_id}"), body);
        }
    }
    (
        format!("{base}/events/{}", id.stream.as_str()),
        envelope(identity, id, key, payload),
    )
}

/// Runs one remote command off the event loop and queues its result.
fn spawn_command(
    handler: Arc<dyn CommandHandler>,
    queue: Arc<tokio::sync::Semaphore>,
    slots: Arc<tokio::sync::Semaphore>,
    handle: UplinkHandle,
    name: String,
    message: Vec<u8>,
) {
    let Ok(queued) = queue.try_acquire_owned() else {
        tracing::warn!(
            command = %name.chars().take(64).collect::<String>(),
            "remote command dropped: {MAX_COMMANDS_QUEUED} commands already running or waiting"
        );
        return;
    };
    tokio::spawn(async move {
        let _queued = queued;
        let Ok(_permit) = slots.acquire_owned().await else {
            return;
        };
        let result = tokio::task::spawn_blocking(move || handler.handle(&name, &message)).await;
        match result {
            Ok(result) => {
                if let Err(e) = handle.append(Stream::CommandResults, result).await {
                    tracing::error!("remote command result not queued: {e}");
                }
            }
            Err(e) => tracing::error!("remote command task failed: {e}"),
        }
    });
}

/// A one-line, actionable reading of a rumqttc connection error.
fn explain(e: &rumqttc::ConnectionError, broker: &str, tls: bool) -> String {
    let raw = e.to_string();
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

async fn run(
    shared: Arc<Shared>,
    options: MqttOptions,
    mut reconnect: Reconnect,
    base: String,
    health: Arc<dyn Fn() -> String + Send + Sync>,
    commands: Option<Arc<dyn CommandHandler>>,
) {
    let command_slots = Arc::new(tokio::sync::Semaphore::new(MAX_COMMANDS_RUNNING));
    let command_queue = Arc::new(tokio::sync::Semaphore::new(MAX_COMMANDS_QUEUED));
    let command_prefix = format!("{base}/cmd/");
    let identity = shared
        .outbox
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .identity()
        .clone();
    loop {
        // Back-off.
        loop {
            let now = Instant::now();
            match reconnect.poll_reconnect(now) {
                Some(at) if at <= now => break,
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => break,
            }
        }
        set_view(&shared, "connecting", None);
        // A fresh event loop per connection: nothing of rumqttc's old pending queue survives.
        let (client, mut eventloop) =
            AsyncClient::new(options.clone(), usize::from(options.inflight()) + 8);
        // `EventLoop::poll` is not cancel-safe (a write may be half done), so it runs in its
        // own task, never inside a `select!`, and stops at its first error: reconnecting is
        // ours to decide, not rumqttc's.
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if events_tx.send(event).is_err() || failed {
                    break;
                }
            }
        });
        let connected = loop {
            match events.recv().await {
                Some(Ok(Event::Incoming(Incoming::ConnAck(_)))) => break Ok(()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(explain(&e, &shared.broker, shared.tls)),
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
        let online = status_payload("online", &health());
        // `None` in the FIFO: a publish that is not the outbox's (the status message).
        let mut requested: VecDeque<Option<u16>> = VecDeque::new();
        let mut by_pkid: HashMap<u16, u16> = HashMap::new();
        let error = 'conn: {
            if let Err(e) =
                client.try_publish(format!("{base}/status"), QoS::AtLeastOnce, true, online)
            {
                break 'conn format!("cannot queue the status message: {e}");
            }
            requested.push_back(None);
            if commands.is_some() {
                if let Err(e) = client.try_subscribe(format!("{command_prefix}+"), QoS::AtLeastOnce)
                {
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
                    let (topic, body) =
                        outgoing_message(&identity, &base, p.id, &p.key, &p.payload);
                    if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, body) {
                        break 'conn format!("cannot queue a publish: {e}");
                    }
                    requested.push_back(Some(p.packet_id));
                }
                if let Some(e) = failure {
                    break 'conn format!("outbox: {e}");
                }
                let wake_at = shared
                    .outbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .poll_timeout();
                let sleep = async {
                    match wake_at {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    event = events.recv() => match event {
                        Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                            if let Some(Some(ours)) = requested.pop_front() {
                                by_pkid.insert(pkid, ours);
                            }
                        }
                        Some(Ok(Event::Incoming(Incoming::PubAck(ack)))) => {
                            if let Some(ours) = by_pkid.remove(&ack.pkid) {
                                let r = with_outbox(&shared, move |o, store| o.handle_puback(store, ours)).await;
                                if let Err(e) = r {
                                    break 'conn format!("outbox: {e}");
                                }
                            }
                        }
                        Some(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                            match (&commands, publish.topic.strip_prefix(&command_prefix)) {
                                (Some(handler), Some(name)) => spawn_command(
                                    handler.clone(),
                                    command_queue.clone(),
                                    command_slots.clone(),
                                    UplinkHandle { shared: shared.clone() },
                                    name.to_owned(),
                                    publish.payload.to_vec(),
                                ),
                                _ => tracing::debug!(topic = %publish.topic, "uplink: unexpected message ignored"),
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break 'conn explain(&e, &shared.broker, shared.tls),
                        None => break 'conn "the MQTT event loop stopped".to_owned(),
                    },
                    _ = shared.wake.notified() => {}
                    _ = sleep => {}
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

#[cfg(test)]
mod tests {
    use super::*;
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
        let (topic, body) = outgoing_message(
            &identity,
            "edgevoice/s1/dev",
            id,
            &key,
            br#"{"request_id":"r-1","ok":true,"result":{"a":1}}"#,
        );
        assert_eq!(topic, "edgevoice/s1/dev/cmd-result/r-1");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["result"]["a"], 1);
        assert_eq!(v["key"], "s1/dev/command_results/3");
        let (topic, _) = outgoing_message(
            &identity,
            "edgevoice/s1/dev",
            id,
            &key,
            br#"{"request_id":null,"ok":false,"error":"malformed: x"}"#,
        );
        assert_eq!(topic, "edgevoice/s1/dev/cmd-result/_invalid");
        let calls = MessageId {
            stream: Stream::Calls,
            sequence: Sequence(1),
        };
        let (topic, _) = outgoing_message(&identity, "edgevoice/s1/dev", calls, "k", b"{}");
        assert_eq!(topic, "edgevoice/s1/dev/events/calls");
    }

    #[test]
    fn connection_errors_become_one_actionable_line() {
        let refused = rumqttc::ConnectionError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        let line = explain(&refused, "127.0.0.1:1883", false);
        assert!(
            line.contains("connection refused") && line.contains("uplink.broker_port"),
            "{line}"
        );
        let bad_ca = rumqttc::ConnectionError::Io(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        ));
        let line = explain(&bad_ca, "b:8883", true);
        assert!(line.contains("not signed by uplink.ca_file"), "{line}");
        assert!(!line.contains('\n'));
    }
}
