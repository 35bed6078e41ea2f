//! RTP fixed header (RFC 3550 §5.1): a total parser and a writer.
//!
//! Our own ~100 lines rather than the webrtc-rs `rtp` crate: that crate pulls webrtc-util (tokio,
//! nix 0.26, rand 0.9, thiserror 1) for a 12-byte header, and its RTCP sibling has had
//! panics on malformed input. Every function here returns `Err` on bad input, never panics.

/// A parsed RTP packet borrowing its payload from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RtpParseError {
    #[error("shorter than the 12-byte RTP header")]
    TooShort,
    #[error("RTP version is not 2")]
    BadVersion,
    #[error("CSRC list runs past the end of the packet")]
    BadCsrc,
    #[error("header extension runs past the end of the packet")]
    BadExtension,
    #[error("padding length is zero or longer than the payload")]
    BadPadding,
}

pub(crate) const HEADER_LEN: usize = 12;

fn be16(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*d.get(at)?, *d.get(at + 1)?]))
}

fn be32(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *d.get(at)?,
        *d.get(at + 1)?,
        *d.get(at + 2)?,
        *d.get(at + 3)?,
    ]))
}

pub(crate) fn parse(data: &[u8]) -> Result<RtpPacket<'_>, RtpParseError> {
    if data.len() < HEADER_LEN {
        return Err(RtpParseError::TooShort);
    }
    let b0 = data[0];
    if b0 >> 6 != 2 {
        return Err(RtpParseError::BadVersion);
    }
    let padding = b0 & 0x20 != 0;
    let extension = b0 & 0x10 != 0;
    let csrc_count = usize::from(b0 & 0x0f);
    let b1 = data[1];
    let seq = be16(data, 2).ok_or(RtpParseError::TooShort)?;
    let timestamp = be32(data, 4).ok_or(RtpParseError::TooShort)?;
    let ssrc = be32(data, 8).ok_or(RtpParseError::TooShort)?;

    let mut start = HEADER_LEN + 4 * csrc_count;
    if start > data.len() {
        return Err(RtpParseError::BadCsrc);
    }
    if extension {
        // 16-bit profile id, 16-bit length in 32-bit words, then the words.
        let words = be16(data, start + 2).ok_or(RtpParseError::BadExtension)?;
        start += 4 + 4 * usize::from(words);
        if start > data.len() {
            return Err(RtpParseError::BadExtension);
        }
    }
    let mut end = data.len();
    if padding {
        let pad = usize::from(data[end - 1]);
        if pad == 0 || pad > end - start {
            return Err(RtpParseError::BadPadding);
        }
        end -= pad;
    }
    Ok(RtpPacket {
        marker: b1 & 0x80 != 0,
        payload_type: b1 & 0x7f,
        seq,
        timestamp,
        ssrc,
        payload: &data[start..end],
    })
}

/// Appends a packet without CSRCs, extension or padding (all we ever send).
pub(crate) fn write(
    out: &mut Vec<u8>,
    marker: bool,
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) {
    out.reserve(HEADER_LEN + payload.len());
    out.push(0x80);
    out.push((u8::from(marker) << 7) | (payload_type & 0x7f));
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

/// RFC 5761 §4 demultiplexing: an RTCP packet's second byte (marker bit + payload type) falls in
/// 192..=223 (RTCP types 192-223; SR/RR/SDES/BYE/APP/FB/XR are 200-207).
pub(crate) fn looks_like_rtcp(data: &[u8]) -> bool {
    data.len() >= 2 && data[0] >> 6 == 2 && (192..=223).contains(&data[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_header_written_then_parsed_round_trips() {
        let mut buf = Vec::new();
        write(
            &mut buf,
            true,
            9,
            65535,
            0xdead_beef,
            0x1234_5678,
            &[1, 2, 3],
        );
        let p = parse(&buf).unwrap();
        assert!(p.marker);
        assert_eq!(p.payload_type, 9);
        assert_eq!(p.seq, 65535);
        assert_eq!(p.timestamp, 0xdead_beef);
        assert_eq!(p.ssrc, 0x1234_5678);
        assert_eq!(p.payload, &[1, 2, 3]);
    }

    #[test]
    fn rtp_parser_skips_csrcs_extension_and_padding() {
        let mut buf = vec![0x80 | 0x20 | 0x10 | 2, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        buf.extend_from_slice(&[0; 8]); // two CSRCs
        buf.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // one-word extension
        buf.extend_from_slice(&[7, 7]); // payload
        buf.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let p = parse(&buf).unwrap();
        assert_eq!(p.payload, &[7, 7]);
    }

    #[test]
    fn rtp_parser_rejects_truncated_and_inconsistent_headers() {
        assert_eq!(parse(&[]), Err(RtpParseError::TooShort));
        assert_eq!(parse(&[0x80; 11]), Err(RtpParseError::TooShort));
        assert_eq!(parse(&[0x40; 12]), Err(RtpParseError::BadVersion));
        assert_eq!(
            parse(&[0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(RtpParseError::BadCsrc)
        );
        let mut ext = vec![0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        assert_eq!(parse(&ext), Err(RtpParseError::BadExtension));
        ext.truncate(13);
        assert_eq!(parse(&ext), Err(RtpParseError::BadExtension));
        let mut pad = vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(parse(&pad), Err(RtpParseError::BadPadding));
        *pad.last_mut().unwrap() = 9;
        assert_eq!(parse(&pad), Err(RtpParseError::BadPadding));
    }

    #[test]
    fn rtcp_is_told_apart_from_rtp_by_its_second_byte() {
        assert!(looks_like_rtcp(&[0x80, 200, 0, 6]));
        assert!(looks_like_rtcp(&[0x81, 201, 0, 7]));
        assert!(!looks_like_rtcp(&[0x80, 0, 0, 1]));
        assert!(!looks_like_rtcp(&[0x80, 0x80 | 8]));
        assert!(!looks_like_rtcp(&[0x80]));
    }
}
