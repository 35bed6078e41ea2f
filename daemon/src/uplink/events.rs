//! Site events on the uplink's `events` stream: what a fleet operator wants to hear of without
//! polling: the daemon started or is stopping, a command changed something (the audit trail,
//! from every channel), a SIGHUP reload, a registration or trunk went up or down. Here: the
//! events, how one is owed upstream in a store write, and the sink that queues them in order.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Stream, UplinkHandle};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteEvent {
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: SiteEventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SiteEventKind {
    /// The daemon is ready and taking calls.
    Started {
        version: String,
        config_source: String,
        sip_listen: Option<String>,
        /// Calls the previous run left up (a crash or kill); closed as `interrupted`.
        interrupted_calls: usize,
    },
    /// A stop began (SIGTERM/SIGINT): calls drain, then the daemon exits.
    Stopping { signal: String, active_calls: usize },
    /// An audited command (control socket or MQTT): who asked what, and how it went.
    Command {
        channel: String,
        who: String,
        command: String,
        /// `ok`, or `refused: …` / `failed: …`.
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// A SIGHUP reload (a reload asked for by command is a `command` event).
    ConfigReloaded {
        source: String,
        /// `ok`, or `refused: …` (the running config was kept).
        outcome: String,
        restart_required: Vec<String>,
    },
    /// A register-mode account became registered or stopped being registered.
    Registration {
        account: String,
        registrar: String,
        registered: bool,
        last_error: Option<String>,
    },
    /// A trunk's OPTIONS keepalive started or stopped being answered.
    Trunk {
        trunk: String,
        target: String,
        up: bool,
        last: String,
    },
}

/// Adds to `writes` that `event` is owed upstream (key: the record it comes with, e.g. an
/// audit record's id); [`EventSink::queue_owed`] then has it queued in order with the rest.
pub fn owe(
    writes: &mut crate::store::Writes,
    key: &str,
    event: &SiteEvent,
) -> Result<(), crate::store::StoreError> {
    let payload = serde_json::to_vec(event).map_err(|source| crate::store::StoreError::Encode {
        tree: "events",
        source,
    })?;
    crate::uplink::owe(
        writes,
        &format!("event/{key}"),
        &[(Stream::Events, payload)],
    )
}

enum Queued {
    Event(SiteEvent),
    /// Events were written as owed upstream ([`owe`]): queue what is owed, here, in order.
    Owed,
}

/// Queues site events upstream in the order they were emitted, without making the emitter
/// (often synchronous: the audit path, the status loop) wait for the store.
#[derive(Default)]
pub struct EventSink {
    tx: Mutex<Option<mpsc::UnboundedSender<Queued>>>,
    forwarder: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl EventSink {
    /// Starts forwarding to the uplink (call from inside the runtime). Without it, events
    /// are dropped: they are in the log and the audit tree either way.
    pub fn start(&self, uplink: UplinkHandle) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
        let forwarder = tokio::spawn(async move {
            while let Some(queued) = rx.recv().await {
                let result = match queued {
                    Queued::Event(event) => {
                        uplink.append_json(Stream::Events, &event).await.map(|_| ())
                    }
                    Queued::Owed => uplink.take_owed().await.map(|_| ()),
                };
                if let Err(e) = result {
                    tracing::warn!("site event not queued for the uplink: {e}");
                }
            }
        });
        *self.tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        *self.forwarder.lock().unwrap_or_else(|p| p.into_inner()) = Some(forwarder);
    }

    pub fn emit(&self, kind: SiteEventKind) {
        self.send(Queued::Event(SiteEvent {
            at_ms: crate::store::now_ms(),
            kind,
        }));
    }

    /// Events were written as owed upstream ([`owe`]): have them queued after those emitted
    /// before.
    pub fn queue_owed(&self) {
        self.send(Queued::Owed);
    }

    fn send(&self, queued: Queued) {
        if let Some(tx) = &*self.tx.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(queued);
        }
    }

    /// Stops taking events and waits until those emitted are in the outbox (the uplink's
    /// clean stop then publishes them with the rest).
    pub async fn finish(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let forwarder = self
            .forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(forwarder) = forwarder {
            let _ = forwarder.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_flat_with_their_kind() {
        let event = SiteEvent {
            at_ms: 5,
            kind: SiteEventKind::Stopping {
                signal: "SIGTERM".into(),
                active_calls: 2,
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"at_ms": 5, "kind": "stopping", "signal": "SIGTERM", "active_calls": 2})
        );
        let back: SiteEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
