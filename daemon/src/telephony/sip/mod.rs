//! SIP signalling. `admission` decides what happens to a new INVITE (pure, testable);
//! `screen` judges a raw message by RFC 3261/4475 and `wire` applies it to every UDP datagram
//! before rsipstack's parser sees it (answering, or dropping with a count and a log line, what
//! rsipstack would lose silently); `user_agent` is the async shell on rsipstack that owns
//! transports, transactions and dialogs and turns them into [`CallSignal`]s for the call task,
//! so nothing outside this module sees rsipstack's types.

pub mod admission;
pub mod keepalive;
pub mod registration;
pub mod screen;
pub mod user_agent;
pub mod wire;

use std::net::SocketAddr;

/// What the SIP user agent needs of the daemon around it: the running config, the admission
/// facts, its counters and where its audit lines go. The daemon implements it, so telephony
/// imports nothing above itself.
pub trait SipHost: Send + Sync + 'static {
    /// The running config (a snapshot; a reload replaces it).
    fn config(&self) -> crate::config::Config;
    /// New calls are refused (503) while the daemon drains.
    fn is_draining(&self) -> bool;
    fn active_calls(&self) -> usize;
    /// An INVITE refused at admission, by status.
    fn observe_admission_refusal(&self, code: u16);
    /// A request answered with an error before any transaction, by status.
    fn observe_sip_refused(&self, code: u16);
    /// A message dropped without an answer, by reason.
    fn observe_sip_dropped(&self, reason: &'static str);
    /// Writes the audit line of an INVITE refused from outside the trunks (the user agent
    /// keeps it to one a minute per source).
    fn audit_refused_invite(
        self: std::sync::Arc<Self>,
        source: std::net::IpAddr,
        from: &str,
        reason: &str,
    );
}

/// What the SIP layer tells a call task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallSignal {
    /// The caller's ACK arrived: media may flow both ways.
    Confirmed,
    /// The caller's ACK to a 200 that carried our offer, the INVITE having none (delayed
    /// offer): its SDP answer, empty when the ACK had none. Sent just before `Confirmed`.
    AckAnswer { sdp: String },
    /// The caller cancelled before we answered.
    Cancelled,
    /// The caller hung up (BYE).
    RemoteHangup,
    /// The dialog ended for another reason (timeout, transport error).
    Terminated(String),
    /// A re-INVITE or UPDATE with a new offer; answer with [`CallCommand::AnswerUpdate`].
    Reoffer { sdp: String },
    /// A SIP INFO carrying a DTMF digit (the fallback when RFC 4733 is not negotiated).
    InfoDtmf { digit: char, duration_ms: u32 },
    /// The answer to our REFER: 2xx accepted, anything else refused.
    TransferAnswered { code: u16 },
    /// A NOTIFY about the transfer: the status line of the new call (sipfrag), final or not.
    TransferProgress { code: u16, done: bool },
}

/// What a call task asks of the SIP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallCommand {
    /// 180 Ringing: the caller hears ringback until we answer.
    Ring,
    /// 200 OK with this SDP answer.
    Answer { sdp: String },
    /// A final error response before answer.
    Reject { code: u16, reason: String },
    /// 200 (or an error code) for a pending re-INVITE.
    AnswerUpdate { code: u16, sdp: Option<String> },
    /// BYE.
    Hangup,
    /// Blind transfer: REFER the caller to `target` (a SIP URI).
    Transfer { target: String },
}

/// The identity of an inbound call as SIP presented it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundCall {
    pub call_id: String,
    pub from: String,
    pub to: String,
    pub source: SocketAddr,
    pub trunk: String,
    /// The INVITE's SDP offer; empty for a delayed offer (we offer in the 200, the caller
    /// answers in the ACK: [`CallSignal::AckAnswer`]).
    pub offer: String,
}

/// How an outbound call attempt ended before (or by) being answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum DialOutcome {
    Answered,
    Busy { code: u16 },
    NoAnswer { code: u16 },
    Rejected { code: u16 },
    Failed { code: Option<u16>, reason: String },
}

impl DialOutcome {
    /// Maps a final response code (0: no response at all) to an outcome.
    pub fn from_code(code: u16, reason: &str) -> Self {
        match code {
            200..=299 => DialOutcome::Answered,
            486 | 600 => DialOutcome::Busy { code },
            408 | 480 | 487 => DialOutcome::NoAnswer { code },
            401 | 403 | 404 | 407 | 410 | 484 | 485 | 603 | 604 => DialOutcome::Rejected { code },
            0 => DialOutcome::Failed {
                code: None,
                reason: reason.to_owned(),
            },
            _ => DialOutcome::Failed {
                code: Some(code),
                reason: reason.to_owned(),
            },
        }
    }
}

/// Parses the body of a SIP INFO with `application/dtmf-relay` (`Signal=5\r\nDuration=160`) or
/// `application/dtmf` (`5`).
pub fn parse_info_dtmf(content_type: &str, body: &str) -> Option<(char, u32)> {
    let valid = |c: char| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D');
    let ct = content_type.to_ascii_lowercase();
    if ct.starts_with("application/dtmf-relay") {
        let mut digit = None;
        let mut duration = 250;
        for line in body.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "signal" => digit = v.trim().chars().next().map(|c| c.to_ascii_uppercase()),
                "duration" => duration = v.trim().parse().unwrap_or(250),
                _ => {}
            }
        }
        digit.filter(|c| valid(*c)).map(|d| (d, duration))
    } else if ct.starts_with("application/dtmf") {
        let d = body.trim().chars().next()?.to_ascii_uppercase();
        valid(d).then_some((d, 250))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_responses_map_to_call_outcomes() {
        assert_eq!(DialOutcome::from_code(200, ""), DialOutcome::Answered);
        assert_eq!(
            DialOutcome::from_code(486, ""),
            DialOutcome::Busy { code: 486 }
        );
        assert_eq!(
            DialOutcome::from_code(487, ""),
            DialOutcome::NoAnswer { code: 487 }
        );
        assert_eq!(
            DialOutcome::from_code(480, ""),
            DialOutcome::NoAnswer { code: 480 }
        );
        assert_eq!(
            DialOutcome::from_code(603, ""),
            DialOutcome::Rejected { code: 603 }
        );
        assert!(matches!(
            DialOutcome::from_code(503, "x"),
            DialOutcome::Failed {
                code: Some(503),
                ..
            }
        ));
        assert!(matches!(
            DialOutcome::from_code(0, "timeout"),
            DialOutcome::Failed { code: None, .. }
        ));
    }

    #[test]
    fn info_dtmf_bodies_of_both_common_types_parse() {
        assert_eq!(
            parse_info_dtmf("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"),
            Some(('5', 160))
        );
        assert_eq!(
            parse_info_dtmf("Application/DTMF-Relay", "Signal= #\r\n"),
            Some(('#', 250))
        );
        assert_eq!(parse_info_dtmf("application/dtmf", "9"), Some(('9', 250)));
        assert_eq!(
            parse_info_dtmf("application/dtmf-relay", "Signal=x\r\n"),
            None
        );
        assert_eq!(parse_info_dtmf("text/plain", "5"), None);
    }
}
