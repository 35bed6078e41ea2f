//! SDP offer/answer (RFC 3264) for one audio stream: a total parser, the answer to an offer,
//! our own offer, and the reading of a peer's answer.
//!
//! Codecs are matched by encoding name and clock rate, never by payload number: dynamic
//! payload types (telephone-event is 101 at one carrier, 100 or 126 at the next) are taken
//! from the offer's rtpmap lines and used as the offerer numbered them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::codec::{Codec, Direction, Negotiated};

/// Every ptime we send; RFC 3551's default for these codecs.
pub const PTIME_MS: u32 = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP line {line}: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("SDP has no audio stream")]
    NoAudio,
    #[error("no common audio codec: offered {offered}; we accept {accepted}")]
    NoCommonCodec { offered: String, accepted: String },
    #[error("SDP audio stream uses transport {0}; only RTP/AVP is supported")]
    UnsupportedTransport(String),
    #[error("SDP has no connection address for the audio stream")]
    NoConnection,
}

/// One `a=rtpmap` entry (or a static payload type without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    pub media: String,
    pub port: u16,
    pub protocol: String,
    /// Format list in the order given.
    pub formats: Vec<String>,
    pub rtpmaps: Vec<RtpMap>,
    pub connection: Option<IpAddr>,
    pub ptime: Option<u32>,
    pub direction: Option<Direction>,
    pub rtcp_port: Option<u16>,
}

impl MediaDescription {
    /// The encoding of payload type `pt`: its rtpmap, or the RFC 3551 static assignment.
    pub fn encoding_of(&self, pt: u8) -> Option<(String, u32)> {
        if let Some(m) = self.rtpmaps.iter().find(|m| m.payload_type == pt) {
            return Some((m.encoding.clone(), m.clock_rate));
        }
        Codec::ALL
            .into_iter()
            .find(|c| c.static_payload_type() == pt)
            .map(|c| (c.sdp_name().to_owned(), c.rtp_clock_rate()))
    }

    fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .filter(|pt| *pt < 128)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub origin_address: Option<IpAddr>,
    pub connection: Option<IpAddr>,
    pub direction: Option<Direction>,
    pub media: Vec<MediaDescription>,
}

fn parse_direction(attr: &str) -> Option<Direction> {
    match attr {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    }
}

fn parse_connection(value: &str, line: usize) -> Result<IpAddr, SdpError> {
    // c=IN IP4 192.0.2.1[/ttl]
    let mut parts = value.split_whitespace();
    let (net, _family, addr) = (parts.next(), parts.next(), parts.next());
    if net != Some("IN") {
        return Err(SdpError::Malformed {
            line,
            reason: format!("connection \"{value}\" is not IN"),
        });
    }
    let addr = addr.ok_or_else(|| SdpError::Malformed {
        line,
        reason: "connection without address".into(),
    })?;
    let addr = addr.split('/').next().unwrap_or(addr);
    addr.parse().map_err(|_| SdpError::Malformed {
        line,
        reason: format!(
            "connection address \"{addr}\" is not an IP address (host names are not supported)"
        ),
    })
}

/// Parses SDP text. Unknown lines and attributes are ignored, and so are rtpmap lines that
/// cannot be read (their payload types then count as unknown codecs); malformed m= and c=
/// lines are errors with the line number.
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    let mut session = SessionDescription {
        origin_address: None,
        connection: None,
        direction: None,
        media: Vec::new(),
    };
    let mut saw_version = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim_end_matches('\r');
        if raw.is_empty() {
            continue;
        }
        let malformed = |reason: String| SdpError::Malformed { line, reason };
        let (kind, value) = raw
            .split_once('=')
            .filter(|(k, _)| k.len() == 1)
            .ok_or_else(|| malformed(format!("\"{}\" is not type=value", truncate(raw))))?;
        match kind {
            "v" => {
                if value.trim() != "0" {
                    return Err(malformed(format!("version {value} is not 0")));
                }
                saw_version = true;
            }
            "o" => {
                session.origin_address =
                    value.split_whitespace().nth(5).and_then(|a| a.parse().ok());
            }
            "c" => {
                let addr = parse_connection(value, line)?;
                match session.media.last_mut() {
                    Some(m) => m.connection = Some(addr),
                    None => session.connection = Some(addr),
                }
            }
            "m" => {
                let mut parts = value.split_whitespace();
                let media = parts
                    .next()
                    .ok_or_else(|| malformed("empty m= line".into()))?;
                let port = parts
                    .next()
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| malformed("m= line without a valid port".into()))?;
                let protocol = parts
                    .next()
                    .ok_or_else(|| malformed("m= line without protocol".into()))?;
                session.media.push(MediaDescription {
                    media: media.to_owned(),
                    port,
                    protocol: protocol.to_owned(),
                    formats: parts.map(str::to_owned).collect(),
                    rtpmaps: Vec::new(),
                    connection: None,
                    ptime: None,
                    direction: None,
                    rtcp_port: None,
                });
            }
            "a" => {
                let (name, attr_value) = match value.split_once(':') {
                    Some((n, v)) => (n, Some(v)),
                    None => (value, None),
                };
                let Some(m) = session.media.last_mut() else {
                    if let Some(d) = parse_direction(name) {
                        session.direction = Some(d);
                    }
                    continue;
                };
                match (name, attr_value) {
                    ("rtpmap", Some(v)) => match parse_rtpmap(v) {
                        Ok(map) => m.rtpmaps.push(map),
                        // Be liberal: a codec line we cannot read names a codec we cannot
                        // choose; the others in the offer may still do.
                        Err(reason) => tracing::debug!("SDP line {line} ignored: {reason}"),
                    },
                    ("ptime", Some(v)) => m.ptime = v.trim().parse().ok(),
                    ("rtcp", Some(v)) => {
                        m.rtcp_port = v.split_whitespace().next().and_then(|p| p.parse().ok())
                    }
                    (other, None) => {
                        if let Some(d) = parse_direction(other) {
                            m.direction = Some(d);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if !saw_version {
        return Err(SdpError::Malformed {
            line: 1,
            reason: "missing v=0".into(),
        });
    }
    Ok(session)
}

/// `a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]`'s value.
fn parse_rtpmap(v: &str) -> Result<RtpMap, String> {
    let (pt, enc) = v
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("rtpmap \"{}\" lacks an encoding", truncate(v)))?;
    let payload_type = pt
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|p| *p < 128)
        .ok_or_else(|| format!("rtpmap payload type \"{}\" is not 0–127", truncate(pt)))?;
    let mut enc_parts = enc.trim().split('/');
    let encoding = enc_parts.next().unwrap_or_default().to_owned();
    let clock_rate = enc_parts
        .next()
        .and_then(|r| r.trim().parse().ok())
        .ok_or_else(|| format!("rtpmap \"{}\" lacks a clock rate", truncate(v)))?;
    Ok(RtpMap {
        payload_type,
        encoding,
        clock_rate,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

/// What we put in our SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    /// The address the peer should send RTP to (never 0.0.0.0).
    pub address: IpAddr,
    pub rtp_port: u16,
    pub session_id: u64,
    pub session_version: u64,
}

/// Result of answering an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub sdp: String,
    pub negotiated: Negotiated,
}

fn telephone_event_pt(m: &MediaDescription) -> Option<u8> {
    // Prefer the 8 kHz event clock, the one all our codecs' RTP clocks run at.
    m.payload_types().find(|pt| {
        m.encoding_of(*pt)
            .is_some_and(|(e, r)| e.eq_ignore_ascii_case("telephone-event") && r == 8000)
    })
}

fn remote_addresses(
    session: &SessionDescription,
    m: &MediaDescription,
) -> Result<(SocketAddr, SocketAddr, bool), SdpError> {
    let ip = m
        .connection
        .or(session.connection)
        .ok_or(SdpError::NoConnection)?;
    // RFC 2543 hold: c=0.0.0.0 means "do not send to me".
    let old_style_hold = ip.is_unspecified();
    let rtp = SocketAddr::new(ip, m.port);
    let rtcp = SocketAddr::new(ip, m.rtcp_port.unwrap_or(m.port.wrapping_add(1)));
    Ok((rtp, rtcp, old_style_hold))
}

fn first_audio(session: &SessionDescription) -> Result<(usize, &MediaDescription), SdpError> {
    session
        .media
        .iter()
        .enumerate()
        .find(|(_, m)| m.media == "audio" && m.port != 0)
        .ok_or(SdpError::NoAudio)
}

/// Answers an offer: the first of our `preferences` that the offer carries (matched by name
/// and clock rate), telephone-event when offered, one audio stream; other streams refused
/// (port 0) in place, as RFC 3264 requires.
pub fn answer(
    offer_text: &str,
    preferences: &[Codec],
    local: &LocalMedia,
) -> Result<Answer, SdpError> {
    let offer = parse(offer_text)?;
    let (audio_index, audio) = first_audio(&offer)?;
    if !audio.protocol.eq_ignore_ascii_case("RTP/AVP") {
        return Err(SdpError::UnsupportedTransport(audio.protocol.clone()));
    }
    let offered: Vec<(u8, String, u32)> = audio
        .payload_types()
        .filter_map(|pt| audio.encoding_of(pt).map(|(e, r)| (pt, e, r)))
        .collect();
    let chosen = preferences.iter().find_map(|codec| {
        offered
            .iter()
            .find(|(_, e, r)| Codec::from_sdp(e, *r) == Some(*codec))
            .map(|(pt, _, _)| (*codec, *pt))
    });
    let Some((codec, payload_type)) = chosen else {
        return Err(SdpError::NoCommonCodec {
            offered: offered
                .iter()
                .map(|(pt, e, r)| format!("{e}/{r} ({pt})"))
                .collect::<Vec<_>>()
                .join(", "),
            accepted: preferences
                .iter()
                .map(|c| c.sdp_name())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let dtmf_payload_type = telephone_event_pt(audio);
    let (remote_rtp, remote_rtcp, old_hold) = remote_addresses(&offer, audio)?;
    let offered_direction = audio
        .direction
        .or(offer.direction)
        .unwrap_or(Direction::SendRecv);
    let direction = if old_hold {
        Direction::Inactive
    } else {
        match offered_direction {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    };
    let negotiated = Negotiated {
        codec,
        payload_type,
        dtmf_payload_type,
        ptime_ms: PTIME_MS,
        remote_rtp,
        remote_rtcp,
        direction,
    };

    let mut sdp = session_header(local);
    for (i, m) in offer.media.iter().enumerate() {
        if i == audio_index {
            sdp.push_str(&audio_section(
                local,
                &[(codec, payload_type)],
                dtmf_payload_type,
                direction,
            ));
        } else {
            // Refuse the stream in place, keeping its format list as RFC 3264 §6 asks.
            let formats = if m.formats.is_empty() {
                "0".to_owned()
            } else {
                m.formats.join(" ")
            };
            sdp.push_str(&format!("m={} 0 {} {}\r\n", m.media, m.protocol, formats));
        }
    }
    Ok(Answer { sdp, negotiated })
}

fn session_header(local: &LocalMedia) -> String {
    let family = if local.address.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    };
    format!(
        "v=0\r\no=edgevoice {} {} IN {family} {}\r\ns=edgevoice\r\nc=IN {family} {}\r\nt=0 0\r\n",
        local.session_id, local.session_version, local.address, local.address
    )
}

fn direction_attr(d: Direction) -> &'static str {
    match d {
        Direction::SendRecv => "sendrecv",
        Direction::SendOnly => "sendonly",
        Direction::RecvOnly => "recvonly",
        Direction::Inactive => "inactive",
    }
}

fn audio_section(
    local: &LocalMedia,
    codecs: &[(Codec, u8)],
    dtmf: Option<u8>,
    direction: Direction,
) -> String {
    let mut formats: Vec<String> = codecs.iter().map(|(_, pt)| pt.to_string()).collect();
    if let Some(pt) = dtmf {
        formats.push(pt.to_string());
    }
    let mut s = format!(
        "m=audio {} RTP/AVP {}\r\n",
        local.rtp_port,
        formats.join(" ")
    );
    for (codec, pt) in codecs {
        s.push_str(&format!(
            "a=rtpmap:{pt} {}/{}\r\n",
            codec.sdp_name(),
            codec.rtp_clock_rate()
        ));
    }
    if let Some(pt) = dtmf {
        s.push_str(&format!(
            "a=rtpmap:{pt} telephone-event/8000\r\na=fmtp:{pt} 0-16\r\n"
        ));
    }
    s.push_str(&format!(
        "a=ptime:{PTIME_MS}\r\na={}\r\n",
        direction_attr(direction)
    ));
    s
}

/// The payload type we offer for telephone-event.
pub const OFFER_DTMF_PT: u8 = 101;

/// Our offer for an outbound call: every preferred codec at its static payload type, plus
/// telephone-event.
pub fn offer(preferences: &[Codec], local: &LocalMedia) -> String {
    let codecs: Vec<(Codec, u8)> = preferences
        .iter()
        .map(|c| (*c, c.static_payload_type()))
        .collect();
    let mut sdp = session_header(local);
    sdp.push_str(&audio_section(
        local,
        &codecs,
        Some(OFFER_DTMF_PT),
        Direction::SendRecv,
    ));
    sdp
}

/// Reads the peer's answer to our [`offer`].
pub fn read_answer(answer_text: &str, offered: &[Codec]) -> Result<Negotiated, SdpError> {
    let answer = parse(answer_text)?;
    let (_, audio) = first_audio(&answer)?;
    let chosen = audio.payload_types().find_map(|pt| {
        let (e, r) = audio.encoding_of(pt)?;
        Codec::from_sdp(&e, r)
            .filter(|c| offered.contains(c))
            .map(|c| (c, pt))
    });
    let (codec, payload_type) = chosen.ok_or_else(|| SdpError::NoCommonCodec {
        offered: audio.formats.join(" "),
        accepted: offered
            .iter()
            .map(|c| c.sdp_name())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let (remote_rtp, remote_rtcp, old_hold) = remote_addresses(&answer, audio)?;
    let answered = audio
        .direction
        .or(answer.direction)
        .unwrap_or(Direction::SendRecv);
    let direction = if old_hold {
        Direction::Inactive
    } else {
        match answered {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    };
    Ok(Negotiated {
        codec,
        payload_type,
        dtmf_payload_type: telephone_event_pt(audio),
        ptime_ms: PTIME_MS,
        remote_rtp,
        remote_rtcp,
        direction,
    })
}

/// An address to put in SDP when the configured one is a wildcard.
pub fn advertisable(addr: IpAddr) -> IpAddr {
    if addr.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalMedia {
        LocalMedia {
            address: "127.0.0.1".parse().unwrap(),
            rtp_port: 16000,
            session_id: 42,
            session_version: 1,
        }
    }

    const BARESIP_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 10000 RTP/AVP 9 0 8 100\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:100 telephone-event/8000\r\na=fmtp:100 0-15\r\na=ptime:20\r\na=sendrecv\r\n";

    #[test]
    fn answer_follows_our_preference_and_the_offerers_payload_numbers() {
        let a = answer(BARESIP_OFFER, &[Codec::Pcmu, Codec::G722], &local()).unwrap();
        assert_eq!(a.negotiated.codec, Codec::Pcmu);
        assert_eq!(a.negotiated.payload_type, 0);
        assert_eq!(a.negotiated.dtmf_payload_type, Some(100));
        assert_eq!(a.negotiated.remote_rtp, "127.0.0.1:10000".parse().unwrap());
        assert_eq!(a.negotiated.remote_rtcp, "127.0.0.1:10001".parse().unwrap());
        assert!(
            a.sdp.contains("m=audio 16000 RTP/AVP 0 100\r\n"),
            "{}",
            a.sdp
        );
        assert!(
            a.sdp.contains("a=rtpmap:100 telephone-event/8000"),
            "{}",
            a.sdp
        );
        assert!(a.sdp.contains("a=sendrecv"));
        // The answer parses back.
        parse(&a.sdp).unwrap();
    }

    #[test]
    fn dynamic_payload_types_are_matched_by_name_and_rate() {
        let offer = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 96 126\r\n\
a=rtpmap:96 g722/8000\r\na=rtpmap:126 telephone-event/8000\r\n";
        let a = answer(offer, &[Codec::G722], &local()).unwrap();
        assert_eq!(
            (a.negotiated.codec, a.negotiated.payload_type),
            (Codec::G722, 96)
        );
        assert_eq!(a.negotiated.dtmf_payload_type, Some(126));
        assert!(a.sdp.contains("a=rtpmap:96 G722/8000"));
    }

    #[test]
    fn a_static_payload_number_with_another_codecs_name_is_not_trusted() {
        // 0 is remapped to a codec we do not have: the number must not make it PCMU.
        let offer =
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 opus/48000/2\r\n";
        let err = answer(offer, &[Codec::Pcmu], &local()).unwrap_err();
        assert!(matches!(err, SdpError::NoCommonCodec { .. }), "{err}");
    }

    #[test]
    fn no_common_codec_names_both_sides() {
        let offer = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 18 111\r\na=rtpmap:18 G729/8000\r\na=rtpmap:111 opus/48000/2\r\n";
        let err = answer(offer, &[Codec::Pcmu, Codec::Pcma], &local())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("G729/8000 (18)")
                && err.contains("opus/48000 (111)")
                && err.contains("PCMU, PCMA"),
            "{err}"
        );
    }

    #[test]
    fn hold_offers_get_the_mirrored_direction() {
        let sendonly = BARESIP_OFFER.replace("a=sendrecv", "a=sendonly");
        let a = answer(&sendonly, &[Codec::Pcmu], &local()).unwrap();
        assert_eq!(a.negotiated.direction, Direction::RecvOnly);
        assert!(a.sdp.contains("a=recvonly"));
        let inactive = BARESIP_OFFER.replace("a=sendrecv", "a=inactive");
        assert_eq!(
            answer(&inactive, &[Codec::Pcmu], &local())
                .unwrap()
                .negotiated
                .direction,
            Direction::Inactive
        );
        let old_hold = BARESIP_OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
        assert_eq!(
            answer(&old_hold, &[Codec::Pcmu], &local())
                .unwrap()
                .negotiated
                .direction,
            Direction::Inactive
        );
    }

    #[test]
    fn other_streams_are_refused_in_place() {
        let offer =
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
m=audio 4000 RTP/AVP 8\r\n";
        let a = answer(offer, &[Codec::Pcma], &local()).unwrap();
        let video = a.sdp.find("m=video 0 RTP/AVP 96").expect(&a.sdp);
        let audio = a.sdp.find("m=audio 16000").expect(&a.sdp);
        assert!(video < audio);
    }

    #[test]
    fn srtp_only_offers_are_refused() {
        let offer = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/SAVP 0\r\n";
        assert!(matches!(
            answer(offer, &[Codec::Pcmu], &local()),
            Err(SdpError::UnsupportedTransport(_))
        ));
    }

    #[test]
    fn media_level_connection_and_rtcp_attribute_win() {
        let offer = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 10.0.0.2\r\na=rtcp:4005\r\n";
        let n = answer(offer, &[Codec::Pcmu], &local()).unwrap().negotiated;
        assert_eq!(n.remote_rtp, "10.0.0.2:4000".parse().unwrap());
        assert_eq!(n.remote_rtcp, "10.0.0.2:4005".parse().unwrap());
    }

    #[test]
    fn malformed_sdp_is_an_error_with_a_line_number_never_a_panic() {
        for bad in [
            "",
            "x",
            "v=1\r\n",
            "v=0\r\nm=audio\r\n",
            "v=0\r\nm=audio 99999 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 not-an-ip\r\nm=audio 4000 RTP/AVP 0\r\n",
            "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:300 PCMU/8000\r\n",
            "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0\r\n",
            "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n",
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 0 RTP/AVP 0\r\n",
        ] {
            assert!(answer(bad, &[Codec::Pcmu], &local()).is_err(), "{bad:?}");
        }
        // Arbitrary bytes: errors only.
        let mut seed = 0x1234_5678_u64;
        for _ in 0..2000 {
            let len = (seed % 200) as usize;
            let text: String = (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let alphabet = b"v=0mac IN P4 RTP/AVP12 :/\r\n.";
                    alphabet[(seed >> 33) as usize % alphabet.len()] as char
                })
                .collect();
            let _ = answer(&text, &[Codec::Pcmu], &local());
        }
    }

    #[test]
    fn an_unreadable_codec_line_beside_a_usable_codec_is_ignored() {
        // The payload type of the broken line is one we would not choose anyway.
        let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0 96 97 98\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:96 opus\r\n\
a=rtpmap:97\r\na=rtpmap:300 x/8000\r\na=rtpmap:98 AMR/8000\r\n";
        let a = answer(offer, &[Codec::G722, Codec::Pcmu], &local()).unwrap();
        assert_eq!(a.negotiated.codec, Codec::Pcmu);
        assert_eq!(a.negotiated.payload_type, 0);
        // A static payload type whose rtpmap is unreadable keeps its static meaning.
        let offer = offer.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU");
        let a = answer(&offer, &[Codec::Pcmu], &local()).unwrap();
        assert_eq!(a.negotiated.codec, Codec::Pcmu);
        // Nothing usable left: still no common codec, not a parse error.
        let offer = offer.replace("RTP/AVP 0 96", "RTP/AVP 96");
        assert!(matches!(
            answer(&offer, &[Codec::Pcmu], &local()),
            Err(SdpError::NoCommonCodec { .. })
        ));
    }

    #[test]
    fn our_offer_and_a_peer_answer_agree() {
        let ours = offer(&[Codec::G722, Codec::Pcmu], &local());
        assert!(ours.contains("m=audio 16000 RTP/AVP 9 0 101"), "{ours}");
        let theirs = answer(
            &ours,
            &[Codec::Pcmu],
            &LocalMedia {
                rtp_port: 20000,
                ..local()
            },
        )
        .unwrap();
        let n = read_answer(&theirs.sdp, &[Codec::G722, Codec::Pcmu]).unwrap();
        assert_eq!(n.codec, Codec::Pcmu);
        assert_eq!(n.dtmf_payload_type, Some(101));
        assert_eq!(n.remote_rtp.port(), 20000);
    }
}
