//! The UDP receive path in front of rsipstack's parser. rsipstack drops, with at most a debug
//! line, every datagram its parser refuses: a request with a method it has no name for, a
//! header it cannot type. A peer then gets no answer at all and retransmits into silence.
//!
//! [`gate`] decides for each datagram, before rsipstack sees it (pure, unit-tested): hand it on
//! (with its headers written plainly when only their LWS trips rsipstack), answer it here with
//! a stateless error built from the raw text (the [`screen`] verdict, or 400 when rsipstack
//! cannot parse what the screen let through), or drop it (a broken response, an unreadable
//! ACK, a request without a Via to answer along). [`ScreenedUdp`] is the socket rsipstack
//! reads through: it sends those answers to the address the datagram came from (symmetric
//! response routing, RFC 3581; rsipstack's own answers go there too whenever the top Via
//! names another host), and counts every refusal and drop (`edgevoice_sip_refused_total`,
//! `edgevoice_sip_dropped_total`) and logs it, at most one line per source and kind a minute
//! (each one at debug).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use rsipstack::sip::SipMessage;
use rsipstack::transport::SipConnection;

use super::screen::{self, Screened};
use super::SipHost;

/// Why a datagram was dropped unanswered (the `reason` label of `edgevoice_sip_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A response that breaks the grammar (status code out of range, bad CSeq...).
    MalformedResponse,
    /// An ACK that cannot be parsed (an ACK is never answered).
    MalformedAck,
    /// A request with no Via (or no start line): an answer could not be routed or matched.
    Unanswerable,
}

impl DropReason {
    pub fn label(self) -> &'static str {
        match self {
            DropReason::MalformedResponse => "malformed_response",
            DropReason::MalformedAck => "malformed_ack",
            DropReason::Unanswerable => "unanswerable_request",
        }
    }
}

/// What happens to one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// rsipstack parses and handles it.
    Pass,
    /// rsipstack handles it with its headers written plainly: what it could not parse as
    /// sent (LWS around `=` in a tag, folded lines...) but RFC 3261 allows.
    PassRewritten(Vec<u8>),
    /// Answered here with `response`, sent to where the request came from; not handed on.
    Answer {
        code: u16,
        detail: String,
        response: Vec<u8>,
    },
    /// Dropped without an answer.
    Drop { reason: DropReason, detail: String },
}

/// Whether rsipstack would take the message: its parser, the Via stamping its UDP path does on
/// every request, and the transaction key its endpoint makes (which needs a From tag: an
/// RFC 2543 request without one is refused, not silently lost).
fn rsipstack_takes(raw: &[u8], source: SocketAddr) -> Result<(), String> {
    use rsipstack::transaction::key::{TransactionKey, TransactionRole};
    let msg = SipMessage::try_from(raw).map_err(|e| format!("cannot be parsed: {e}"))?;
    let msg = SipConnection::update_msg_received(msg, source, rsipstack::sip::Transport::Udp)
        .map_err(|e| format!("cannot be parsed: top Via: {e}"))?;
    let key = match &msg {
        SipMessage::Request(req) => TransactionKey::from_request(req, TransactionRole::Server),
        SipMessage::Response(resp) => TransactionKey::from_response(resp, TransactionRole::Client),
    };
    key.map(|_| ()).map_err(|e| match e.to_string() {
        m if m.contains("from tags missing") => {
            "From has no tag (RFC 2543 syntax; RFC 3261 requires one)".to_owned()
        }
        m => format!("no transaction can be made of it: {m}"),
    })
}

/// `raw` with plain headers, when rsipstack takes that.
fn rewritten_for_rsipstack(raw: &[u8], source: SocketAddr) -> Option<Gate> {
    let plain = screen::with_plain_headers(raw)?;
    rsipstack_takes(&plain, source)
        .is_ok()
        .then_some(Gate::PassRewritten(plain))
}

/// Decides what happens to one datagram from `source`.
pub fn gate(raw: &[u8], source: SocketAddr) -> Gate {
    // Keepalives (CRLF) and empty datagrams: rsipstack answers or ignores them.
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Gate::Pass;
    }
    let is_ack = raw.starts_with(b"ACK ");
    let answer =
        |code: u16, detail: String, extra: &[(&'static str, String)]| match screen::error_response(
            raw, code, &detail, extra, source,
        ) {
            Some(response) => Gate::Answer {
                code,
                detail,
                response,
            },
            None => Gate::Drop {
                reason: DropReason::Unanswerable,
                detail: format!("{code} {detail}, but the request has no Via to answer along"),
            },
        };
    match screen::screen(raw) {
        Screened::Respond {
            code,
            reason,
            headers,
        } => {
            if is_ack {
                // Never answered. One rsipstack can read still ends its INVITE transaction.
                return match rsipstack_takes(raw, source) {
                    Ok(()) => Gate::Pass,
                    Err(_) => Gate::Drop {
                        reason: DropReason::MalformedAck,
                        detail: reason,
                    },
                };
            }
            answer(code, reason, &headers)
        }
        Screened::Drop { reason } => Gate::Drop {
            reason: if raw.starts_with(b"SIP/") {
                DropReason::MalformedResponse
            } else {
                DropReason::Unanswerable
            },
            detail: reason,
        },
        Screened::Response { .. } => match rsipstack_takes(raw, source) {
            Ok(()) => Gate::Pass,
            Err(e) => rewritten_for_rsipstack(raw, source).unwrap_or(Gate::Drop {
                reason: DropReason::MalformedResponse,
                detail: e,
            }),
        },
        Screened::Request { .. } => match rsipstack_takes(raw, source) {
            Ok(()) => Gate::Pass,
            Err(e) => match rewritten_for_rsipstack(raw, source) {
                Some(gate) => gate,
                None if is_ack => Gate::Drop {
                    reason: DropReason::MalformedAck,
                    detail: e,
                },
                None => answer(400, e, &[]),
            },
        },
    }
}

/// At most one log line per source and kind (refused, dropped) a minute; counts what it held
/// back.
#[derive(Default)]
struct LogLimiter {
    last: HashMap<(IpAddr, Kind), (Instant, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Refused,
    Dropped,
}

impl LogLimiter {
    /// `Some(n)` when a line may be written now, `n` being the lines held back since the last.
    fn admit(&mut self, source: IpAddr, kind: Kind, now: Instant) -> Option<u64> {
        const EVERY: Duration = Duration::from_secs(60);
        if self.last.len() > 10_000 {
            self.last.retain(|_, (t, _)| now.duration_since(*t) < EVERY);
        }
        match self.last.get_mut(&(source, kind)) {
            Some((t, held)) if now.duration_since(*t) < EVERY => {
                *held += 1;
                None
            }
            Some((t, held)) => {
                let n = *held;
                *t = now;
                *held = 0;
                Some(n)
            }
            None => {
                self.last.insert((source, kind), (now, 0));
                Some(0)
            }
        }
    }
}

/// The UDP socket rsipstack reads through: every datagram passes [`gate`] first.
pub struct ScreenedUdp {
    socket: tokio::net::UdpSocket,
    host: Weak<dyn SipHost>,
    limiter: Mutex<LogLimiter>,
}

impl ScreenedUdp {
    pub fn new(socket: tokio::net::UdpSocket, host: Weak<dyn SipHost>) -> Self {
        Self {
            socket,
            host,
            limiter: Mutex::new(LogLimiter::default()),
        }
    }

    fn may_log(&self, source: IpAddr, kind: Kind) -> Option<u64> {
        self.limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(source, kind, Instant::now())
    }

    /// `Some(bytes)` to hand to rsipstack (`None` inside: the datagram as received).
    async fn handle(&self, raw: &[u8], source: SocketAddr) -> Option<Option<Vec<u8>>> {
        match gate(raw, source) {
            Gate::Pass => return Some(None),
            Gate::PassRewritten(plain) => {
                tracing::debug!(%source, "SIP message handed on with its headers written plainly: {}", first_line(raw));
                return Some(Some(plain));
            }
            Gate::Answer {
                code,
                detail,
                response,
            } => {
                if let Some(host) = self.host.upgrade() {
                    host.observe_sip_refused(code);
                }
                let start = first_line(raw);
                tracing::debug!(%source, code, "SIP request refused: {detail}: {start}");
                if let Some(held) = self.may_log(source.ip(), Kind::Refused) {
                    tracing::info!(%source, code, "SIP request refused before any transaction: {detail} ({start}){}", held_note(held));
                }
                if let Err(e) = self.socket.send_to(&response, source).await {
                    tracing::debug!(%source, "cannot send the {code} answer: {e}");
                }
            }
            Gate::Drop { reason, detail } => {
                if let Some(host) = self.host.upgrade() {
                    host.observe_sip_dropped(reason.label());
                }
                let start = first_line(raw);
                tracing::debug!(%source, reason = reason.label(), "SIP message dropped: {detail}: {start}");
                if let Some(held) = self.may_log(source.ip(), Kind::Dropped) {
                    tracing::info!(%source, reason = reason.label(), "SIP message dropped without an answer: {detail} ({start}){}", held_note(held));
                }
            }
        }
        None
    }
}

fn first_line(raw: &[u8]) -> String {
    let line = raw.split(|b| *b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(line)
        .trim_end()
        .chars()
        .take(80)
        .collect()
}

fn held_note(held: u64) -> String {
    if held == 0 {
        String::new()
    } else {
        format!("; {held} more of these from this source in the last minute not logged")
    }
}

#[async_trait::async_trait]
impl rsipstack::platform::net::UdpSocket for ScreenedUdp {
    async fn recv_from(&self, buf: &mut [u8]) -> rsipstack::Result<(usize, SocketAddr)> {
        loop {
            let (len, source) = self.socket.recv_from(buf).await?;
            match self.handle(&buf[..len], source).await {
                Some(None) => return Ok((len, source)),
                Some(Some(plain)) if plain.len() <= buf.len() => {
                    buf[..plain.len()].copy_from_slice(&plain);
                    return Ok((plain.len(), source));
                }
                Some(Some(_)) | None => {}
            }
        }
    }

    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> rsipstack::Result<usize> {
        Ok(self.socket.send_to(buf, addr).await?)
    }

    fn local_addr(&self) -> rsipstack::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> SocketAddr {
        "127.0.0.1:5099".parse().unwrap()
    }

    fn request(method: &str, cseq_method: &str) -> String {
        format!(
            "{method} sip:bob@127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK-1;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@192.0.2.7>;tag=a1\r\n\
             To: <sip:bob@127.0.0.1>\r\n\
             Call-ID: c1@192.0.2.7\r\n\
             CSeq: 7 {cseq_method}\r\n\
             Content-Length: 0\r\n\r\n"
        )
    }

    fn answered(g: &Gate) -> (u16, String) {
        match g {
            Gate::Answer { code, response, .. } => {
                (*code, String::from_utf8(response.clone()).unwrap())
            }
            other => panic!("not answered: {other:?}"),
        }
    }

    #[test]
    fn an_unknown_method_is_answered_501_with_allow_and_the_request_s_headers() {
        let (code, text) = answered(&gate(request("FOO", "FOO").as_bytes(), from()));
        assert_eq!(code, 501);
        assert!(
            text.starts_with("SIP/2.0 501 Not Implemented\r\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("\r\nAllow: {}\r\n", screen::ALLOW)),
            "{text}"
        );
        // The top Via says where the request really came from.
        assert!(
            text.contains("Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK-1;rport=5099;received=127.0.0.1\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nFrom: <sip:alice@192.0.2.7>;tag=a1\r\n"));
        assert!(
            text.contains("\r\nTo: <sip:bob@127.0.0.1>;tag=ev"),
            "{text}"
        );
        assert!(text.contains("\r\nCall-ID: c1@192.0.2.7\r\nCSeq: 7 FOO\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        // The answer itself is a response rsipstack (and so a peer) can read.
        assert!(matches!(
            SipMessage::try_from(text.as_str()),
            Ok(SipMessage::Response(_))
        ));
        // Retransmissions get the same To tag.
        let (_, again) = answered(&gate(request("FOO", "FOO").as_bytes(), from()));
        assert_eq!(text, again);
    }

    #[test]
    fn lws_rsipstack_trips_over_is_written_plainly_before_it_sees_it() {
        let tortuous = request("OPTIONS", "OPTIONS")
            .replace(
                "From: <sip:alice@192.0.2.7>;tag=a1",
                "from   : \"A \\\"x\\\"\"   <sip:alice@192.0.2.7>\r\n  ;\r\n  tag = a1",
            )
            .replace("CSeq: 7 OPTIONS", "cseq: 0007\r\n  OPTIONS");
        assert!(rsipstack_takes(tortuous.as_bytes(), from()).is_err());
        let Gate::PassRewritten(plain) = gate(tortuous.as_bytes(), from()) else {
            panic!("not rewritten: {:?}", gate(tortuous.as_bytes(), from()));
        };
        let plain = String::from_utf8(plain).unwrap();
        assert!(
            plain.contains("\r\nfrom: \"A \\\"x\\\"\" <sip:alice@192.0.2.7>;tag=a1\r\n"),
            "{plain}"
        );
        assert!(plain.contains("\r\ncseq: 0007 OPTIONS\r\n"), "{plain}");
        assert!(plain.starts_with("OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n"));
        assert!(plain.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn requests_rsipstack_reads_are_handed_on() {
        assert_eq!(
            gate(request("OPTIONS", "OPTIONS").as_bytes(), from()),
            Gate::Pass
        );
        assert_eq!(gate(b"\r\n\r\n", from()), Gate::Pass);
    }

    #[test]
    fn screen_refusals_are_answered_here_and_acks_never() {
        let (code, _) = answered(&gate(request("OPTIONS", "INVITE").as_bytes(), from()));
        assert_eq!(code, 400);
        // An ACK is never answered: one rsipstack reads is handed on despite the screen, an
        // unreadable one is dropped.
        let ack = request("ACK", "ACK");
        let odd_ack = ack.replace("Via: ", "Via: bogus ");
        assert_eq!(gate(odd_ack.as_bytes(), from()), Gate::Pass);
        let unreadable_ack = ack.replace("SIP/2.0/UDP 192.0.2.7:5070", "SIP/2.0/UDP");
        assert!(matches!(
            gate(unreadable_ack.as_bytes(), from()),
            Gate::Drop {
                reason: DropReason::MalformedAck,
                ..
            }
        ));
        // A request the screen lets through but rsipstack cannot read is answered 400.
        let (code, _) = answered(&gate(
            request("OPTIONS", "OPTIONS")
                .replace("192.0.2.7:5070;branch", "192.0.2.7:99999;branch")
                .as_bytes(),
            from(),
        ));
        assert_eq!(code, 400);
        let garbage_ack = ack.replace(
            "Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK-1;rport",
            "Via: garbage",
        );
        assert!(matches!(
            gate(garbage_ack.as_bytes(), from()),
            Gate::Drop {
                reason: DropReason::MalformedAck,
                ..
            }
        ));
    }

    #[test]
    fn broken_responses_and_requests_without_via_are_dropped() {
        let bigcode = b"SIP/2.0 4294967301 better not break the receiver\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            gate(bigcode, from()),
            Gate::Drop {
                reason: DropReason::MalformedResponse,
                ..
            }
        ));
        let no_via = request("FOO", "FOO").replace(
            "Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK-1;rport\r\n",
            "",
        );
        assert!(matches!(
            gate(no_via.as_bytes(), from()),
            Gate::Drop {
                reason: DropReason::Unanswerable,
                ..
            }
        ));
    }

    #[test]
    fn the_log_limiter_lets_one_line_a_minute_per_source_and_kind_through() {
        let mut l = LogLimiter::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s = Duration::from_secs;
        assert_eq!(l.admit(a, Kind::Refused, t0), Some(0));
        assert_eq!(l.admit(a, Kind::Refused, t0 + s(1)), None);
        assert_eq!(l.admit(a, Kind::Refused, t0 + s(2)), None);
        // A drop is not hidden behind a refusal, nor one source behind another.
        assert_eq!(l.admit(a, Kind::Dropped, t0 + s(2)), Some(0));
        assert_eq!(l.admit(b, Kind::Refused, t0 + s(2)), Some(0));
        assert_eq!(l.admit(a, Kind::Refused, t0 + s(61)), Some(2));
    }

    /// Every RFC 4475 message gets a decision without a panic, and the ones rsipstack cannot
    /// parse are never handed to it.
    #[test]
    fn every_rfc4475_message_is_answered_dropped_or_readable_by_rsipstack() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/sip/rfc4475");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("../shared/testdata") {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("dat") {
                continue;
            }
            let raw = std::fs::read(&path).unwrap();
            n += 1;
            let handed = match gate(&raw, from()) {
                Gate::Pass => raw,
                Gate::PassRewritten(plain) => plain,
                _ => continue,
            };
            assert!(
                rsipstack_takes(&handed, from()).is_ok(),
                "{} handed to rsipstack, which cannot read it",
                path.display()
            );
        }
        assert_eq!(n, 49);
    }
}
