//! Whether a new INVITE gets a call: which trunk it came from, whether there is room, whether
//! the daemon is draining. Pure: the user agent gathers the facts and applies the verdict.

use std::net::IpAddr;

use crate::config::TrunkConfig;

/// The facts about one new INVITE.
#[derive(Debug, Clone)]
pub struct InviteFacts<'a> {
    pub source: IpAddr,
    pub max_forwards: Option<u32>,
    pub trunks: &'a [TrunkConfig],
    pub active_calls: usize,
    pub max_calls: u32,
    pub draining: bool,
    pub retry_after_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Take the call, on this trunk.
    Accept { trunk: String },
    /// Refuse with a final response.
    Reject {
        code: u16,
        reason: String,
        retry_after: Option<u32>,
        /// Worth an audit record (a refused source), not just a log line.
        audit: bool,
    },
}

/// The trunk whose allow list holds `source`, if any.
pub fn trunk_for(source: IpAddr, trunks: &[TrunkConfig]) -> Option<&TrunkConfig> {
    // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
    let source = match source {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(source),
        v4 => v4,
    };
    trunks
        .iter()
        .find(|t| t.networks().iter().any(|n| n.contains(&source)))
}

pub fn decide(f: &InviteFacts<'_>) -> Verdict {
    if f.max_forwards == Some(0) {
        return Verdict::Reject {
            code: 483,
            reason: "Too Many Hops".into(),
            retry_after: None,
            audit: false,
        };
    }
    let Some(trunk) = trunk_for(f.source, f.trunks) else {
        return Verdict::Reject {
            code: 403,
            reason: format!("{} is not an address of a configured trunk", f.source),
            retry_after: None,
            audit: true,
        };
    };
    if f.draining {
        return Verdict::Reject {
            code: 503,
            reason: "Shutting down".into(),
            retry_after: Some(f.retry_after_secs),
            audit: false,
        };
    }
    if f.active_calls >= f.max_calls as usize {
        return Verdict::Reject {
            code: 503,
            reason: format!("At capacity ({} calls)", f.max_calls),
            retry_after: Some(f.retry_after_secs),
            audit: false,
        };
    }
    Verdict::Accept {
        trunk: trunk.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunks() -> Vec<TrunkConfig> {
        vec![
            TrunkConfig {
                name: "pbx".into(),
                allow: vec!["10.1.2.3".into()],
                ..Default::default()
            },
            TrunkConfig {
                name: "carrier".into(),
                allow: vec!["198.51.100.0/24".into()],
                ..Default::default()
            },
        ]
    }

    fn facts<'a>(source: &str, trunks: &'a [TrunkConfig]) -> InviteFacts<'a> {
        InviteFacts {
            source: source.parse().unwrap(),
            max_forwards: Some(70),
            trunks,
            active_calls: 0,
            max_calls: 2,
            draining: false,
            retry_after_secs: 30,
        }
    }

    #[test]
    fn invites_are_accepted_only_from_trunk_addresses() {
        let t = trunks();
        assert_eq!(
            decide(&facts("10.1.2.3", &t)),
            Verdict::Accept {
                trunk: "pbx".into()
            }
        );
        assert_eq!(
            decide(&facts("198.51.100.77", &t)),
            Verdict::Accept {
                trunk: "carrier".into()
            }
        );
        assert_eq!(
            decide(&facts("::ffff:10.1.2.3", &t)),
            Verdict::Accept {
                trunk: "pbx".into()
            }
        );
        match decide(&facts("10.1.2.4", &t)) {
            Verdict::Reject {
                code: 403,
                audit: true,
                reason,
                ..
            } => assert!(reason.contains("10.1.2.4")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn at_capacity_or_draining_gets_503_with_retry_after() {
        let t = trunks();
        let mut f = facts("10.1.2.3", &t);
        f.active_calls = 2;
        assert!(matches!(
            decide(&f),
            Verdict::Reject {
                code: 503,
                retry_after: Some(30),
                ..
            }
        ));
        f.active_calls = 0;
        f.draining = true;
        assert!(matches!(decide(&f), Verdict::Reject { code: 503, .. }));
    }

    #[test]
    fn max_forwards_zero_is_too_many_hops_before_anything_else() {
        let t = trunks();
        let mut f = facts("203.0.113.1", &t);
        f.max_forwards = Some(0);
        assert!(matches!(
            decide(&f),
            Verdict::Reject {
                code: 483,
                audit: false,
                ..
            }
        ));
    }
}
