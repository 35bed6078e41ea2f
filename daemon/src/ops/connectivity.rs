//! Registrations and trunks going up or down, as site events (`uplink::events`).

use crate::telephony::sip::keepalive::TrunkHealth;
use crate::telephony::sip::registration::RegistrationStatus;
use crate::uplink::events::SiteEventKind;

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
}
