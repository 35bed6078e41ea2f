//! Screening of SIP messages before any transaction or dialog sees them: framing and the
//! syntax rules whose violation RFC 3261 and RFC 4475 say to answer with an error, then the
//! checks an endpoint makes before handling a request (method, URI scheme, Require, bodies).
//! Total: any byte string gives a verdict, never a panic.

/// The methods we parse as SIP (RFC 3261 and the extensions in common use).
pub const KNOWN_METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "INFO",
    "UPDATE",
    "REFER",
    "NOTIFY",
    "SUBSCRIBE",
    "MESSAGE",
    "PRACK",
    "PUBLISH",
];

/// The methods we handle; others get 405 (known) or 501 (unknown) with this Allow list.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screened {
    /// A well-formed request the handler may process.
    Request { method: String },
    /// A well-formed response (matched to a transaction, or dropped if none).
    Response { code: u16 },
    /// Answer the request with this error and extra headers; do not process it further.
    Respond {
        code: u16,
        reason: String,
        headers: Vec<(&'static str, String)>,
    },
    /// Not answerable (a broken response, or framing too broken to build a reply): drop it.
    Drop { reason: String },
}

fn respond(code: u16, reason: impl Into<String>) -> Screened {
    Screened::Respond {
        code,
        reason: reason.into(),
        headers: Vec::new(),
    }
}

/// The full name of a compact header form (RFC 3261 §7.3.3), lowercased.
fn canonical_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "i" => "call-id",
        "f" => "from",
        "t" => "to",
        "l" => "content-length",
        "v" => "via",
        "m" => "contact",
        "c" => "content-type",
        "k" => "supported",
        "e" => "content-encoding",
        "s" => "subject",
        _ => return lower,
    }
    .to_owned()
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)
}

/// Splits head and body at the first empty line.
fn split_message(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some((&raw[..i], &raw[i + 4..]));
    }
    raw.windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (&raw[..i], &raw[i + 2..]))
}

/// Header lines with continuation lines folded in.
fn header_lines(head: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some(last) = lines.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
                continue;
            }
        }
        lines.push(line.to_owned());
    }
    lines
}

/// The URI of a name-addr or addr-spec header value, after checking its shape.
fn check_name_addr(value: &str) -> Result<String, String> {
    let v = value.trim();
    let mut rest = v;
    if v.starts_with('"') {
        // quoted-string with backslash escapes
        let mut end = None;
        let mut escaped = false;
        for (i, c) in v.char_indices().skip(1) {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or("unterminated quoted display name")?;
        rest = v[end + 1..].trim_start();
        if !rest.starts_with('<') {
            return Err("a quoted display name must be followed by <URI>".into());
        }
    }
    if let Some(open) = rest.find('<') {
        let display = rest[..open].trim();
        if !display.is_empty()
            && !display
                .split_whitespace()
                .all(|w| w.chars().all(is_token_char))
        {
            return Err(format!("display name \"{display}\" needs quotes"));
        }
        let close = rest[open..]
            .find('>')
            .map(|i| open + i)
            .ok_or("unclosed <")?;
        let uri = &rest[open + 1..close];
        if uri.starts_with(char::is_whitespace) || uri.ends_with(char::is_whitespace) {
            return Err("spaces inside <>".into());
        }
        Ok(uri.to_owned())
    } else {
        // addr-spec: parameters after ';' belong to the header; '?' needs <> around the URI.
        let uri = rest.split(';').next().unwrap_or(rest).trim();
        if uri.contains('?') {
            return Err("URI with headers must be enclosed in <>".into());
        }
        if uri.contains(char::is_whitespace) {
            return Err("spaces in URI".into());
        }
        Ok(uri.to_owned())
    }
}

fn scheme_of(uri: &str) -> Option<String> {
    let (scheme, _) = uri.split_once(':')?;
    let ok = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    ok.then(|| scheme.to_ascii_lowercase())
}

fn check_via(value: &str) -> Result<(), String> {
    for part in value.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err("empty Via value".into());
        }
        let mut params = part.split(';');
        let sent = params.next().unwrap_or_default().trim();
        // LWS is allowed around the slashes: "SIP / 2.0 / UDP host".
        let compact: String = sent.split('/').map(str::trim).collect::<Vec<_>>().join("/");
        if !compact.to_ascii_uppercase().starts_with("SIP/2.0/") {
            return Err(format!("Via \"{sent}\" is not SIP/2.0/transport host"));
        }
        for p in params {
            let p = p.trim();
            if p.is_empty() {
                return Err("empty Via parameter".into());
            }
            if let Some(branch) = p.strip_prefix("branch=") {
                if branch.trim() == "z9hG4bK" {
                    return Err("branch is only the magic cookie z9hG4bK".into());
                }
            }
        }
    }
    Ok(())
}

/// Screens one raw message (a UDP datagram, or one framed message from a stream).
#[allow(clippy::too_many_lines)] // RFC 3261 checks in the order a request is read
pub fn screen(raw: &[u8]) -> Screened {
    let Some((head, body)) = split_message(raw) else {
        return if raw.starts_with(b"SIP/") {
            Screened::Drop {
                reason: "response without a blank line after its headers".into(),
            }
        } else {
            respond(400, "no blank line after the headers")
        };
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return respond(400, "headers are not UTF-8");
    };
    let lines = header_lines(head);
    let Some(start) = lines.first() else {
        return Screened::Drop {
            reason: "empty message".into(),
        };
    };
    let is_response = start.starts_with("SIP/");

    // Headers: names, counts and the scalar values both requests and responses need.
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in &lines[1..] {
        let Some((name, value)) = line.split_once(':') else {
            return if is_response {
                Screened::Drop {
                    reason: format!("header line without a colon: {}", trunc(line)),
                }
            } else {
                respond(400, format!("header line without a colon: {}", trunc(line)))
            };
        };
        let name = name.trim_end();
        if name.is_empty() || !name.chars().all(is_token_char) {
            return respond(400, format!("bad header name \"{}\"", trunc(name)));
        }
        headers.push((canonical_name(name), value.trim().to_owned()));
    }
    let all = |n: &'static str| {
        headers
            .iter()
            .filter(move |(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let one = |n: &'static str| all(n).next();

    let cseq = one("cseq").map(|v| {
        let mut parts = v.split_whitespace();
        (
            parts.next().map(str::to_owned),
            parts.next().map(str::to_owned),
        )
    });
    let cseq_ok = cseq
        .as_ref()
        .and_then(|(n, _)| n.as_deref())
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n <= u64::from(u32::MAX >> 1));

    if is_response {
        let mut parts = start.splitn(3, ' ');
        let (version, code) = (parts.next(), parts.next());
        let code = code
            .filter(|c| c.len() == 3)
            .and_then(|c| c.parse::<u16>().ok());
        return match (version, code) {
            (Some("SIP/2.0"), Some(code)) if (100..=699).contains(&code) && cseq_ok => {
                Screened::Response { code }
            }
            _ => Screened::Drop {
                reason: format!("malformed response: {}", trunc(start)),
            },
        };
    }

    // Request-Line: exactly METHOD SP URI SP VERSION.
    let parts: Vec<&str> = start.split(' ').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return respond(
            400,
            "malformed Request-Line (exactly one space between its three parts)",
        );
    }
    let (method, uri, version) = (parts[0], parts[1], parts[2]);
    if !method.chars().all(is_token_char) {
        return respond(400, "method is not a token");
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return if version.to_ascii_uppercase().starts_with("SIP/") {
            respond(505, "Version Not Supported")
        } else {
            respond(400, "bad SIP version")
        };
    }
    if uri.starts_with('<') {
        return respond(400, "Request-URI must not be enclosed in <>");
    }
    let Some(scheme) = scheme_of(uri) else {
        return respond(400, "Request-URI has no scheme");
    };
    // '?' is legal in the user part; after the host it starts URI headers.
    let after_user = uri.rsplit_once('@').map_or(uri, |(_, host)| host);
    if (scheme == "sip" || scheme == "sips") && after_user.contains('?') {
        return respond(400, "Request-URI must not carry headers");
    }

    // Framing: Content-Length.
    let lengths: Vec<&str> = all("content-length").collect();
    if lengths.len() > 1 {
        return respond(400, "more than one Content-Length");
    }
    if let Some(l) = lengths.first() {
        match l.parse::<usize>() {
            Ok(n) if n > body.len() => {
                return respond(400, "Content-Length larger than the message")
            }
            Ok(_) => {}
            Err(_) => {
                return respond(
                    400,
                    format!("Content-Length \"{}\" is not a length", trunc(l)),
                )
            }
        }
    }

    // Required headers, once each.
    for name in ["via", "from", "to", "call-id", "cseq"] {
        if one(name).is_none() {
            return respond(400, format!("missing {name} header"));
        }
    }
    for name in ["from", "to", "call-id", "cseq", "max-forwards"] {
        if all(name).count() > 1 {
            return respond(400, format!("more than one {name} header"));
        }
    }
    if !cseq_ok {
        return respond(400, "CSeq number missing or over 2^31");
    }
    let cseq_method = cseq.and_then(|(_, m)| m).unwrap_or_default();
    if cseq_method != method {
        return respond(
            400,
            format!("CSeq method {cseq_method} does not match {method}"),
        );
    }
    for via in all("via") {
        if let Err(e) = check_via(via) {
            return respond(400, e);
        }
    }
    let mut to_from = Vec::new();
    for name in ["from", "to"] {
        match one(name).map(check_name_addr) {
            Some(Ok(uri)) => to_from.push(uri),
            Some(Err(e)) => return respond(400, format!("{name}: {e}")),
            None => {}
        }
    }
    for contact in all("contact") {
        if contact.trim() == "*" {
            continue;
        }
        if contact.split(';').any(|p| p.trim().is_empty()) && contact.contains(';') {
            return respond(400, "Contact: empty parameter");
        }
        if let Err(e) = check_name_addr(contact) {
            return respond(400, format!("Contact: {e}"));
        }
    }

    // What an endpoint checks before handling.
    if !KNOWN_METHODS.contains(&method) {
        return Screened::Respond {
            code: 501,
            reason: format!("method {} not implemented", trunc(method)),
            headers: vec![("Allow", ALLOW.into())],
        };
    }
    if scheme != "sip" && scheme != "sips" {
        return respond(416, format!("URI scheme {scheme} not supported"));
    }
    for uri in &to_from {
        if !matches!(scheme_of(uri).as_deref(), Some("sip" | "sips" | "tel")) {
            return respond(
                400,
                format!("To/From URI \"{}\" is not sip, sips or tel", trunc(uri)),
            );
        }
    }
    if method != "ACK" && method != "CANCEL" {
        let required: Vec<String> = all("require")
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        if !required.is_empty() {
            return Screened::Respond {
                code: 420,
                reason: "Bad Extension".into(),
                headers: vec![("Unsupported", required.join(", "))],
            };
        }
    }
    if let Some(mf) = one("max-forwards") {
        if mf.trim() == "0" && method != "ACK" {
            return respond(483, "Too Many Hops");
        }
    }
    if method == "INVITE" {
        let body_present = !body.iter().all(u8::is_ascii_whitespace);
        let content_type = one("content-type").unwrap_or("application/sdp");
        if body_present
            && !content_type
                .to_ascii_lowercase()
                .starts_with("application/sdp")
        {
            return Screened::Respond {
                code: 415,
                reason: format!("body type {} not supported", trunc(content_type)),
                headers: vec![("Accept", "application/sdp".into())],
            };
        }
        if let Some(accept) = one("accept") {
            if !accept.to_ascii_lowercase().contains("application/sdp") {
                return Screened::Respond {
                    code: 406,
                    reason: "Not Acceptable: we answer with application/sdp".into(),
                    headers: vec![("Warning", "399 edgevoice \"only application/sdp\"".into())],
                };
            }
        }
    }
    Screened::Request {
        method: method.to_owned(),
    }
}

/// A header value with its LWS tidied the way stricter parsers read it: runs of whitespace
/// made one space, and none around `;`, `=`, `/` and `,` (outside quoted strings and `<>`).
fn tidy_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let (mut quoted, mut escaped, mut angle) = (false, false, false);
    let (mut space, mut after_separator) = (false, false);
    for c in v.trim().chars() {
        if quoted {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        if c.is_whitespace() {
            space = true;
            continue;
        }
        let separator = !angle && matches!(c, ';' | '=' | '/' | ',');
        if space && !separator && !after_separator && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push(c);
        after_separator = separator;
        match c {
            '"' => quoted = true,
            '<' => angle = true,
            '>' => angle = false,
            _ => {}
        }
    }
    out
}

/// The message with its headers written plainly: continuation lines folded in, no space
/// before the colon, and the LWS in Via, From, To, Contact and CSeq tidied (RFC 3261 allows
/// it all; some parsers, rsipstack's among them, trip over it). The start line and the body
/// are left byte for byte. `None` without a blank line after the headers.
pub fn with_plain_headers(raw: &[u8]) -> Option<Vec<u8>> {
    let (head, body) = split_message(raw)?;
    let head = std::str::from_utf8(head).ok()?;
    let lines = header_lines(head);
    let (start, headers) = lines.split_first()?;
    let mut out = String::with_capacity(raw.len());
    out.push_str(start);
    out.push_str("\r\n");
    for line in headers {
        let (name, value) = line.split_once(':')?;
        let name = name.trim_end();
        let value = match canonical_name(name).as_str() {
            "via" | "from" | "to" | "contact" | "cseq" => tidy_value(value),
            _ => value.trim().to_owned(),
        };
        out.push_str(name);
        out.push_str(": ");
        out.push_str(&value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    Some(bytes)
}

/// The standard reason phrase of the codes the screen and the wire gate answer with.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        483 => "Too Many Hops",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        _ => "Error",
    }
}

/// Text safe inside a quoted header value: printable ASCII, no quotes or backslashes.
fn quotable(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .take(120)
        .collect()
}

/// The top Via value with what the transport saw: `received` when the sent-by host is not
/// the source address, `rport=<port>` when the client asked for it (RFC 3261 §18.2.1,
/// RFC 3581).
fn stamp_top_via(value: &str, source: std::net::SocketAddr) -> String {
    let (top, rest) = match value.split_once(',') {
        Some((top, rest)) => (top, Some(rest)),
        None => (value, None),
    };
    let mut parts = top.split(';');
    let sent = parts.next().unwrap_or_default().trim();
    let host = sent
        .rsplit_once('/')
        .map_or(sent, |(_, t)| t)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default();
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default()
    };
    let mut params: Vec<String> = Vec::new();
    for p in parts {
        let t = p.trim();
        if t.eq_ignore_ascii_case("rport") {
            params.push(format!("rport={}", source.port()));
        } else if !t.to_ascii_lowercase().starts_with("received=") {
            params.push(t.to_owned());
        }
    }
    if host != source.ip().to_string() {
        params.push(format!("received={}", source.ip()));
    }
    let mut out = sent.to_owned();
    for p in params {
        out.push(';');
        out.push_str(&p);
    }
    if let Some(rest) = rest {
        out.push(',');
        out.push_str(rest);
    }
    out
}

/// A stateless error response to a raw request (RFC 3261 §8.1.1, §8.2.6): its Via headers (the
/// top one stamped with what the transport saw), From, To (with a tag), Call-ID and CSeq
/// copied, then `extra`, a Warning naming `detail`, and no body. `None` when the request has
/// no Via: nothing could route or match the answer.
pub fn error_response(
    raw: &[u8],
    code: u16,
    detail: &str,
    extra: &[(&'static str, String)],
    source: std::net::SocketAddr,
) -> Option<Vec<u8>> {
    let head = split_message(raw).map_or(raw, |(head, _)| head);
    let head = String::from_utf8_lossy(head);
    let lines = header_lines(&head);
    let mut copied: Vec<(&'static str, String)> = Vec::new();
    let mut seen_via = false;
    for line in lines.iter().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let name = match canonical_name(name.trim_end()).as_str() {
            "via" => {
                if seen_via {
                    "Via"
                } else {
                    seen_via = true;
                    copied.push(("Via", stamp_top_via(value, source)));
                    continue;
                }
            }
            "from" => "From",
            "to" => "To",
            "call-id" => "Call-ID",
            "cseq" => "CSeq",
            _ => continue,
        };
        copied.push((name, value.to_owned()));
    }
    if !seen_via {
        return None;
    }
    // A To tag that is the same for every retransmission of the request.
    let tag = {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        for (n, v) in &copied {
            if *n != "To" {
                v.hash(&mut h);
            }
        }
        format!("ev{:012x}", h.finish() & 0xffff_ffff_ffff)
    };
    let mut out = format!("SIP/2.0 {code} {}\r\n", reason_phrase(code));
    for (name, value) in &copied {
        let value = if *name == "To" && !value.to_ascii_lowercase().contains(";tag=") {
            format!("{value};tag={tag}")
        } else {
            value.clone()
        };
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !extra.iter().any(|(n, _)| n.eq_ignore_ascii_case("warning")) {
        out.push_str(&format!(
            "Warning: 399 edgevoice \"{}\"\r\n",
            quotable(detail)
        ));
    }
    out.push_str(&format!(
        "Server: edgevoice/{}\r\nContent-Length: 0\r\n\r\n",
        crate::VERSION
    ));
    Some(out.into_bytes())
}

fn trunc(s: &str) -> String {
    s.chars().take(60).collect()
}

/// What our handler answers to a well-formed request of `method` outside a dialog, before
/// any call logic: `None` when the method is one we process.
pub fn method_verdict(method: &str) -> Option<u16> {
    match method {
        "INVITE" | "ACK" | "BYE" | "CANCEL" | "OPTIONS" | "INFO" | "UPDATE" => None,
        m if KNOWN_METHODS.contains(&m) => Some(405),
        _ => Some(501),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows we handle differently from INDEX.tsv on purpose, with what we do instead.
    const DELIBERATE: [(&str, &str); 1] = [(
        // RFC 4475 §3.1.2.12 allows ignoring a bad Date; we never use Date, so the call goes on.
        "baddate.dat",
        "accept",
    )];

    /// The 49 RFC 4475 torture messages through the screen and the method check, against
    /// INDEX.tsv's expectations.
    #[test]
    fn rfc4475_torture_messages_get_the_verdicts_the_rfc_names() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/sip/rfc4475");
        let index = std::fs::read_to_string(dir.join("INDEX.tsv")).expect("INDEX.tsv in ../shared");
        let mut checked = 0;
        let mut failures = Vec::new();
        for row in index.lines().skip(1) {
            let cols: Vec<&str> = row.split('\t').collect();
            let file = cols[0];
            let expected = DELIBERATE
                .iter()
                .find(|(f, _)| *f == file)
                .map_or(cols[3], |(_, instead)| *instead);
            let raw = std::fs::read(dir.join(file)).expect(file);
            // rsipstack's parser must not panic on any of them either.
            let _ =
                std::panic::catch_unwind(|| rsipstack::sip::SipMessage::try_from(raw.as_slice()))
                    .unwrap_or_else(|_| panic!("{file}: rsipstack's parser panicked"));
            let screened = screen(&raw);
            // The final answer: the screen's error, else what the handler says to the method.
            let answer = match &screened {
                Screened::Respond { code, .. } => Some(*code),
                Screened::Request { method } => method_verdict(method),
                _ => None,
            };
            let codes = |list: &str| -> Vec<u16> {
                list.split('|').filter_map(|c| c.parse().ok()).collect()
            };
            let ok = match expected.split_once(':') {
                None if expected == "accept" => {
                    matches!(
                        screened,
                        Screened::Request { .. } | Screened::Response { .. }
                    )
                }
                None if expected == "reject" => {
                    matches!(
                        screened,
                        Screened::Respond {
                            code: 400..=599,
                            ..
                        } | Screened::Drop { .. }
                    )
                }
                Some(("reject", list)) => {
                    matches!(&screened, Screened::Respond { code, .. } if codes(list).contains(code))
                }
                Some(("accept-but-respond-error", list)) => {
                    answer.is_some_and(|c| codes(list).contains(&c))
                }
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{file}: expected {expected}, got {screened:?} (answer {answer:?})"
                ));
            }
            checked += 1;
        }
        assert_eq!(checked, 49);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn well_formed_requests_of_other_methods_get_405_or_501() {
        assert_eq!(method_verdict("INVITE"), None);
        assert_eq!(method_verdict("REGISTER"), Some(405));
        assert_eq!(method_verdict("FOO"), Some(501));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let base = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/testdata/sip/rfc4475/wsinv.dat"),
        )
        .unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..3000 {
            let mut m = base.clone();
            for _ in 0..(seed % 8 + 1) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % m.len();
                m[i] = (seed >> 32) as u8;
            }
            seed ^= seed << 13;
            m.truncate((seed as usize) % (m.len() + 1));
            let _ = screen(&m);
        }
    }
}
