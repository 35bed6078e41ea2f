//! What the uplink publishes, byte for byte: the retained status, the envelope around outbox
//! messages, command results with their stored response route.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::commands::ResponseRoute;
use super::wire::WireMessage;
use super::{Identity, MessageId, Stream};

/// The retained `{base}/status` message.
pub(super) fn status_message(base: &str, state: &str, health: &str) -> WireMessage {
    WireMessage {
        topic: format!("{base}/status"),
        body: status_payload(state, health),
        retain: true,
        idempotency_key: None,
        correlation_data: None,
    }
}

pub(super) fn status_payload(state: &str, health: &str) -> Vec<u8> {
    serde_json::json!({
        "state": state,
        "version": crate::VERSION,
        "health": health,
        "at_ms": crate::store::now_ms(),
    })
    .to_string()
    .into_bytes()
}

/// The wire payload: an envelope that carries the idempotency key with the producer's payload
/// (inline JSON when it is JSON, else a string). Built only from stored data, so a re-send is
/// byte-identical.
pub(super) fn envelope(identity: &Identity, id: MessageId, key: &str, payload: &[u8]) -> Vec<u8> {
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

/// The reserved member of a stored command result that holds its response route; removed
/// before publishing.
pub(super) const ROUTE_FIELD: &str = "_route";

/// What the `command_results` stream stores: the handler's result object, plus (MQTT 5) the
/// route the result must take, so a result queued across a disconnect or restart still goes
/// where its requester waits.
pub(super) fn stored_result(result: Vec<u8>, route: Option<&ResponseRoute>) -> Vec<u8> {
    let Some(route) = route else {
        return result;
    };
    match serde_json::from_slice::<serde_json::Value>(&result) {
        Ok(serde_json::Value::Object(mut object)) => {
            let mut r = serde_json::Map::new();
            r.insert("topic".into(), route.topic.clone().into());
            if let Some(data) = &route.correlation_data {
                r.insert("correlation_data".into(), B64.encode(data).into());
            }
            object.insert(ROUTE_FIELD.into(), serde_json::Value::Object(r));
            serde_json::to_vec(&object).unwrap_or(result)
        }
        _ => result,
    }
}

/// Topic, body and properties of one outbox message. Command results go to
/// `cmd-result/{request_id}` (or their stored response topic, with its correlation data) as
/// the result object with the idempotency key added; telemetry to `telemetry` and everything
/// else to `events/{stream}`, in the [`envelope`]. Every one carries the key (MQTT 5: also as user property).
pub(super) fn outgoing_message(
    identity: &Identity,
    base: &str,
    id: MessageId,
    key: &str,
    payload: &[u8],
) -> WireMessage {
    let message = |topic, body| WireMessage {
        topic,
        body,
        retain: false,
        idempotency_key: Some(key.to_owned()),
        correlation_data: None,
    };
    if id.stream == Stream::CommandResults {
        if let Ok(serde_json::Value::Object(mut result)) =
            serde_json::from_slice::<serde_json::Value>(payload)
        {
            let route = result.remove(ROUTE_FIELD);
            let request_id = result
                .get("request_id")
                .and_then(|r| r.as_str())
                .filter(|r| crate::config::valid_id(r))
                .unwrap_or(crate::config::NO_REQUEST_ID)
                .to_owned();
            result.insert("key".into(), serde_json::Value::String(key.to_owned()));
            let body = serde_json::to_vec(&result).unwrap_or_default();
            let topic = route
                .as_ref()
                .and_then(|r| r.get("topic"))
                .and_then(|t| t.as_str());
            return match topic {
                Some(topic) => WireMessage {
                    correlation_data: route
                        .as_ref()
                        .and_then(|r| r.get("correlation_data"))
                        .and_then(|d| d.as_str())
                        .and_then(|d| B64.decode(d).ok()),
                    ..message(topic.to_owned(), body)
                },
                None => message(format!("{base}/cmd-result/{request_id}"), body),
            };
        }
    }
    // Telemetry has its own topic in the tree (.../telemetry), in the same envelope.
    let topic = if id.stream == Stream::Telemetry {
        format!("{base}/telemetry")
    } else {
        format!("{base}/events/{}", id.stream.as_str())
    };
    message(topic, envelope(identity, id, key, payload))
}
