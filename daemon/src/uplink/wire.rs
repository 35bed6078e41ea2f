//! The one place where MQTT 3.1.1 and MQTT 5 differ for the shell: connect options, publish,
//! subscribe, and the events it acts on. Everything else (outbox, reconnect, commands) is the
//! shell's, shared by both.
//!
//! MQTT 5 adds, per outbox message: the idempotency key as user property `idempotency-key`,
//! content type `application/json` (payload format UTF-8), and the correlation data of a
//! command's response; and on incoming commands the `response_topic` / `correlation_data`.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as v5p;
use rumqttc::v5::mqttbytes::QoS as V5QoS;

pub use crate::config::MqttVersion;

/// What both protocols' connect options are made from.
pub(super) struct Settings {
    pub client_id: String,
    pub host: String,
    pub port: u16,
    pub keepalive: Duration,
    /// Empty username: no credentials.
    pub username: String,
    pub password: String,
    pub will_topic: String,
    pub will_payload: Vec<u8>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The outbox's window; rumqttc's is a little above it, so its packet ids rarely collide.
    pub max_in_flight: u16,
    /// Largest packet read (MQTT 5: also advertised to the broker as the maximum packet size).
    pub max_incoming_packet_bytes: usize,
    /// Largest packet sent (MQTT 3.1.1; on MQTT 5 the broker's CONNACK says).
    pub max_outgoing_packet_bytes: usize,
}

#[derive(Clone)]
pub(super) enum Options {
    V311(Box<rumqttc::MqttOptions>),
    V5(Box<rumqttc::v5::MqttOptions>),
}

const JSON: &str = "application/json";

/// How long the broker keeps an MQTT 5 session (subscription, queued commands) after the
/// appliance went away: a day, long beyond any command's lifetime (`expires_at`).
pub(super) const SESSION_EXPIRY_SECS: u32 = 86_400;

impl Options {
    /// A persistent session (3.1.1: clean session off; 5: no clean start, session expiry
    /// [`SESSION_EXPIRY_SECS`]): the broker keeps the command subscription and queues
    /// commands sent while the appliance is away (their `expires_at` still applies). What the
    /// appliance publishes is re-sent by the outbox alone: each connection gets a fresh event
    /// loop, so rumqttc's own re-send queue never carries anything over.
    pub fn new(version: MqttVersion, s: &Settings) -> Options {
        let inflight = s.max_in_flight.saturating_add(4);
        let channel = usize::from(s.max_in_flight) + 8;
        let transport = s
            .tls
            .clone()
            .map(|tls| rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
        match version {
            MqttVersion::V311 => {
                let mut o = rumqttc::MqttOptions::new(&s.client_id, &s.host, s.port);
                o.set_keep_alive(s.keepalive)
                    .set_clean_session(false)
                    .set_inflight(inflight)
                    .set_request_channel_capacity(channel)
                    .set_max_packet_size(s.max_incoming_packet_bytes, s.max_outgoing_packet_bytes)
                    .set_last_will(rumqttc::LastWill::new(
                        &s.will_topic,
                        s.will_payload.clone(),
                        rumqttc::QoS::AtLeastOnce,
                        true,
                    ));
                if !s.username.is_empty() {
                    o.set_credentials(&s.username, &s.password);
                }
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                Options::V311(Box::new(o))
            }
            MqttVersion::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(&s.client_id, &s.host, s.port);
                let will = v5p::LastWillProperties {
                    delay_interval: None,
                    payload_format_indicator: Some(1),
                    message_expiry_interval: None,
                    content_type: Some(JSON.to_owned()),
                    response_topic: None,
                    correlation_data: None,
                    user_properties: Vec::new(),
                };
                o.set_keep_alive(s.keepalive)
                    .set_clean_start(false)
                    .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS))
                    .set_outgoing_inflight_upper_limit(inflight)
                    .set_request_channel_capacity(channel)
                    .set_max_packet_size(Some(
                        u32::try_from(s.max_incoming_packet_bytes).unwrap_or(u32::MAX),
                    ))
                    .set_last_will(v5p::LastWill::new(
                        &s.will_topic,
                        s.will_payload.clone(),
                        V5QoS::AtLeastOnce,
                        true,
                        Some(will),
                    ));
                if !s.username.is_empty() {
                    o.set_credentials(&s.username, &s.password);
                }
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                Options::V5(Box::new(o))
            }
        }
    }

    /// The same options with a clean session (3.1.1: clean session on; 5: clean start): the
    /// broker discards the old session, queued and in-flight messages to the appliance
    /// included. Only for [`super::InboundProblem::TooLargeToRead`]'s one reset connection.
    pub fn with_clean_session(&self) -> Options {
        match self {
            Options::V311(o) => {
                let mut o = o.clone();
                o.set_clean_session(true);
                Options::V311(o)
            }
            Options::V5(o) => {
                let mut o = o.clone();
                o.set_clean_start(true);
                Options::V5(o)
            }
        }
    }

    fn max_incoming(&self) -> usize {
        match self {
            Options::V311(o) => o.max_packet_size(),
            Options::V5(o) => o
                .max_packet_size()
                .and_then(|m| usize::try_from(m).ok())
                .unwrap_or(usize::MAX),
        }
    }
}

/// What the shell sees of either protocol's event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WireEvent {
    ConnAck,
    /// `refused`: an MQTT 5 PUBACK whose reason code says the broker did not take the message.
    PubAck {
        pkid: u16,
        refused: Option<Refusal>,
    },
    /// rumqttc sent a publish we requested, with this packet id (in request order).
    Published(u16),
    Received {
        topic: String,
        payload: Vec<u8>,
        response: Option<super::ResponseRoute>,
    },
    Other,
}

/// Why an MQTT 5 broker did not take a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    /// The reason code's name, e.g. "NotAuthorized".
    pub reason: String,
    /// Sending the same message to the same topic again cannot succeed (not authorized,
    /// invalid topic or payload) until the broker's configuration changes.
    pub permanent: bool,
}

/// One publish the shell asks for.
pub(super) struct WireMessage {
    pub topic: String,
    pub body: Vec<u8>,
    pub retain: bool,
    /// MQTT 5: user property `idempotency-key`.
    pub idempotency_key: Option<String>,
    /// MQTT 5: the requester's correlation data on a command result.
    pub correlation_data: Option<Vec<u8>>,
}

pub(super) enum Client {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WireError {
    /// The broker sent a packet of `bytes` (remaining length), more than the `max` we read:
    /// rumqttc stops reading mid-packet and the connection is gone.
    TooLarge { bytes: usize, max: usize },
    /// The raw text of any other error; the shell turns it into one actionable line.
    Other(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::TooLarge { bytes, max } => write!(
                f,
                "the broker sent a {bytes}-byte packet, more than the {max} bytes the uplink reads"
            ),
            WireError::Other(raw) => f.write_str(raw),
        }
    }
}

fn v311_error(e: rumqttc::ConnectionError, max: usize) -> WireError {
    use rumqttc::mqttbytes::Error;
    match e {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            Error::PayloadSizeLimitExceeded(bytes),
        )) => WireError::TooLarge { bytes, max },
        e => WireError::Other(e.to_string()),
    }
}

fn v5_error(e: rumqttc::v5::ConnectionError) -> WireError {
    use rumqttc::v5::mqttbytes::Error;
    match e {
        rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::Deserialization(
            Error::PayloadSizeLimitExceeded { pkt_size, max },
        )) => WireError::TooLarge {
            bytes: pkt_size,
            max: usize::try_from(max).unwrap_or(usize::MAX),
        },
        e => WireError::Other(e.to_string()),
    }
}

/// A fresh client and event loop. The event loop runs in its own task (`poll` is not
/// cancel-safe: a write may be half done), never inside a `select!`, and stops at its first
/// error: reconnecting is the shell's to decide, not rumqttc's. Dropping the task's handle
/// does not stop it: abort it.
pub(super) fn connect(
    options: &Options,
) -> (
    Client,
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<Result<WireEvent, WireError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let max_incoming = options.max_incoming();
    match options {
        Options::V311(o) => {
            let cap = o.request_channel_capacity();
            let (client, mut eventloop) = rumqttc::AsyncClient::new((**o).clone(), cap);
            let pump = tokio::spawn(async move {
                loop {
                    let event = eventloop
                        .poll()
                        .await
                        .map(map_v311)
                        .map_err(|e| v311_error(e, max_incoming));
                    let failed = event.is_err();
                    if tx.send(event).is_err() || failed {
                        break;
                    }
                }
            });
            (Client::V311(client), pump, rx)
        }
        Options::V5(o) => {
            let cap = o.request_channel_capacity();
            let (client, mut eventloop) = rumqttc::v5::AsyncClient::new((**o).clone(), cap);
            let pump = tokio::spawn(async move {
                loop {
                    let event = eventloop.poll().await.map(map_v5).map_err(v5_error);
                    let failed = event.is_err();
                    if tx.send(event).is_err() || failed {
                        break;
                    }
                }
            });
            (Client::V5(client), pump, rx)
        }
    }
}

fn map_v311(event: rumqttc::Event) -> WireEvent {
    use rumqttc::{Event, Incoming, Outgoing};
    match event {
        Event::Incoming(Incoming::ConnAck(_)) => WireEvent::ConnAck,
        Event::Incoming(Incoming::PubAck(ack)) => WireEvent::PubAck {
            pkid: ack.pkid,
            refused: None,
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => WireEvent::Published(pkid),
        Event::Incoming(Incoming::Publish(p)) => WireEvent::Received {
            topic: p.topic,
            payload: p.payload.to_vec(),
            response: None,
        },
        _ => WireEvent::Other,
    }
}

fn map_v5(event: rumqttc::v5::Event) -> WireEvent {
    use rumqttc::v5::{Event, Incoming};
    use rumqttc::Outgoing;
    match event {
        Event::Incoming(Incoming::ConnAck(_)) => WireEvent::ConnAck,
        Event::Incoming(Incoming::PubAck(ack)) => WireEvent::PubAck {
            pkid: ack.pkid,
            refused: match ack.reason {
                v5p::PubAckReason::Success | v5p::PubAckReason::NoMatchingSubscribers => None,
                other => Some(Refusal {
                    reason: format!("{other:?}"),
                    permanent: matches!(
                        other,
                        v5p::PubAckReason::NotAuthorized
                            | v5p::PubAckReason::TopicNameInvalid
                            | v5p::PubAckReason::PayloadFormatInvalid
                    ),
                }),
            },
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => WireEvent::Published(pkid),
        Event::Incoming(Incoming::Publish(p)) => {
            // A topic that is not UTF-8 cannot be one of ours; the shell ignores it.
            let topic = String::from_utf8(p.topic.to_vec()).unwrap_or_default();
            let response = p.properties.and_then(|props| {
                props.response_topic.map(|topic| super::ResponseRoute {
                    topic,
                    correlation_data: props.correlation_data.map(|d| d.to_vec()),
                })
            });
            WireEvent::Received {
                topic,
                payload: p.payload.to_vec(),
                response,
            }
        }
        _ => WireEvent::Other,
    }
}

impl Client {
    /// Queues a QoS 1 publish without waiting (the request channel has room for the window).
    pub fn publish(&self, m: WireMessage) -> Result<(), String> {
        match self {
            Client::V311(c) => c
                .try_publish(m.topic, rumqttc::QoS::AtLeastOnce, m.retain, m.body)
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let mut user_properties = Vec::new();
                if let Some(key) = m.idempotency_key {
                    user_properties.push(("idempotency-key".to_owned(), key));
                }
                let properties = v5p::PublishProperties {
                    payload_format_indicator: Some(1),
                    content_type: Some(JSON.to_owned()),
                    correlation_data: m.correlation_data.map(Into::into),
                    user_properties,
                    ..v5p::PublishProperties::default()
                };
                c.try_publish_with_properties(
                    m.topic,
                    V5QoS::AtLeastOnce,
                    m.retain,
                    m.body,
                    properties,
                )
                .map_err(|e| e.to_string())
            }
        }
    }

    /// Queues a DISCONNECT (the broker then drops the last will).
    pub fn disconnect(&self) -> Result<(), String> {
        match self {
            Client::V311(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        }
    }

    pub fn subscribe(&self, filter: String) -> Result<(), String> {
        match self {
            Client::V311(c) => c
                .try_subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(filter, V5QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_the_config_spelling_only() {
        assert_eq!(MqttVersion::parse("5"), Some(MqttVersion::V5));
        assert_eq!(MqttVersion::parse("3.1.1"), Some(MqttVersion::V311));
        assert_eq!(MqttVersion::parse("5.0"), None);
        assert_eq!(MqttVersion::parse("3.1"), None);
    }

    #[test]
    fn v5_command_properties_become_the_response_route() {
        let mut publish = v5p::Publish::new(
            "edgevoice/s1/d/cmd/status",
            V5QoS::AtLeastOnce,
            "{}",
            Some(v5p::PublishProperties {
                response_topic: Some("edgevoice/s1/ops/replies".into()),
                correlation_data: Some(b"abc".to_vec().into()),
                ..v5p::PublishProperties::default()
            }),
        );
        publish.pkid = 3;
        let event = map_v5(rumqttc::v5::Event::Incoming(
            rumqttc::v5::Incoming::Publish(publish),
        ));
        assert_eq!(
            event,
            WireEvent::Received {
                topic: "edgevoice/s1/d/cmd/status".into(),
                payload: b"{}".to_vec(),
                response: Some(super::super::ResponseRoute {
                    topic: "edgevoice/s1/ops/replies".into(),
                    correlation_data: Some(b"abc".to_vec()),
                }),
            }
        );
    }

    #[test]
    fn a_v5_puback_with_a_failure_reason_is_a_refusal_and_no_subscribers_is_not() {
        let ack = |reason| {
            map_v5(rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::PubAck(
                v5p::PubAck {
                    pkid: 7,
                    reason,
                    properties: None,
                },
            )))
        };
        assert_eq!(
            ack(v5p::PubAckReason::NoMatchingSubscribers),
            WireEvent::PubAck {
                pkid: 7,
                refused: None
            }
        );
        assert_eq!(
            ack(v5p::PubAckReason::NotAuthorized),
            WireEvent::PubAck {
                pkid: 7,
                refused: Some(Refusal {
                    reason: "NotAuthorized".into(),
                    permanent: true
                })
            }
        );
        assert_eq!(
            ack(v5p::PubAckReason::QuotaExceeded),
            WireEvent::PubAck {
                pkid: 7,
                refused: Some(Refusal {
                    reason: "QuotaExceeded".into(),
                    permanent: false
                })
            }
        );
    }
}
