//! Site events on the uplink's `events` stream: what a fleet operator wants to hear of without
//! polling: the daemon started or is stopping, a command changed something (the audit trail,
//! from every channel), a SIGHUP reload, a registration or trunk went up or down.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::telephony::sip::keepalive::TrunkHealth;
use crate::telephony::sip::registration::RegistrationStatus;
use crate::uplink::{Stream, UplinkHandle};

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

/// What changed between two looks at the registrations and trunks, as events. A name seen
/// for the first time counts as a change only when it is down (up is the expected state).
pub fn connectivity_changes(before: &Connectivity, now: &Connectivity) -> Vec<SiteEventKind> {
    let mut events = Vec::new();
    for reg in &now.registrations {
        let prev = before
            .registrations
            .iter()
            .find(|r| r.account == reg.account);
        if is_news(prev.map(|p| p.registered), reg.registered, reg.failures > 0) {
            events.push(SiteEventKind::Registration {
                account: reg.account.clone(),
                registrar: reg.registrar.clone(),
                registered: reg.registered,
                last_error: reg.last_error.clone(),
            });
        }
    }
    for trunk in &now.trunks {
        let prev = before
            .trunks
            .iter()
            .find(|t| t.trunk == trunk.trunk && t.target == trunk.target);
        if is_news(prev.map(|p| p.up), trunk.up, !trunk.last.is_empty()) {
            events.push(SiteEventKind::Trunk {
                trunk: trunk.trunk.clone(),
                target: trunk.target.clone(),
                up: trunk.up,
                last: trunk.last.clone(),
            });
        }
    }
    events
}

/// Up or down is news when it flipped; seen for the first time, only when down after trying.
fn is_news(before: Option<bool>, up: bool, tried: bool) -> bool {
    match before {
        Some(was_up) => was_up != up,
        None => !up && tried,
    }
}

/// The registrations and trunks as `edgevoice status` shows them.
#[derive(Debug, Clone, Default)]
pub struct Connectivity {
    pub registrations: Vec<RegistrationStatus>,
    pub trunks: Vec<TrunkHealth>,
}

impl Connectivity {
    pub fn of(status: super::Status) -> Connectivity {
        Connectivity {
            registrations: status.registrations,
            trunks: status.trunks,
        }
    }
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

    fn reg(account: &str, registered: bool, failures: u32) -> RegistrationStatus {
        RegistrationStatus {
            account: account.into(),
            registrar: "10.0.0.1:5060".into(),
            registered,
            failures,
            last_error: (!registered).then(|| "403 Forbidden".to_owned()),
        }
    }

    fn trunk(name: &str, up: bool, last: &str) -> TrunkHealth {
        TrunkHealth {
            trunk: name.into(),
            target: "sip:10.0.0.2".into(),
            up,
            last: last.into(),
        }
    }

    #[test]
    fn a_registration_that_flips_is_one_event_each_way() {
        let up = Connectivity {
            registrations: vec![reg("a", true, 0), reg("b", true, 0)],
            trunks: vec![],
        };
        let down = Connectivity {
            registrations: vec![reg("a", false, 1), reg("b", true, 0)],
            trunks: vec![],
        };
        let lost = connectivity_changes(&up, &down);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(matches!(
            &lost[0],
            SiteEventKind::Registration { account, registered: false, last_error: Some(_), .. } if account == "a"
        ));
        let back = connectivity_changes(&down, &up);
        assert!(matches!(
            &back[..],
            [SiteEventKind::Registration {
                registered: true,
                ..
            }]
        ));
        assert!(
            connectivity_changes(&up, &up).is_empty(),
            "no change, no event"
        );
    }

    #[test]
    fn first_sight_is_news_only_when_something_is_down_after_trying() {
        let empty = Connectivity::default();
        let starting = Connectivity {
            registrations: vec![reg("a", false, 0)],
            trunks: vec![trunk("t", false, "")],
        };
        assert!(
            connectivity_changes(&empty, &starting).is_empty(),
            "not tried yet is not down"
        );
        let failing = Connectivity {
            registrations: vec![reg("a", false, 2)],
            trunks: vec![trunk("t", false, "timeout")],
        };
        assert_eq!(connectivity_changes(&empty, &failing).len(), 2);
        let healthy = Connectivity {
            registrations: vec![reg("a", true, 0)],
            trunks: vec![trunk("t", true, "200 in 3 ms")],
        };
        assert!(connectivity_changes(&empty, &healthy).is_empty());
    }

    #[test]
    fn a_trunk_going_down_and_up_is_reported_with_its_last_answer() {
        let up = Connectivity {
            registrations: vec![],
            trunks: vec![trunk("carrier", true, "200 in 4 ms")],
        };
        let down = Connectivity {
            registrations: vec![],
            trunks: vec![trunk("carrier", false, "no answer in 5 s")],
        };
        let events = connectivity_changes(&up, &down);
        assert_eq!(
            events,
            vec![SiteEventKind::Trunk {
                trunk: "carrier".into(),
                target: "sip:10.0.0.2".into(),
                up: false,
                last: "no answer in 5 s".into(),
            }]
        );
    }

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
