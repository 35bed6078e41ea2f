//! RTCP (RFC 3550 §6): sender and receiver reports, SDES CNAME and BYE; a total parser for the
//! compound packets a peer sends and a writer for ours. Own code for the same reasons as `rtp`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const PT_SR: u8 = 200;
pub(crate) const PT_RR: u8 = 201;
pub(crate) const PT_SDES: u8 = 202;
pub(crate) const PT_BYE: u8 = 203;

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    /// Signed 24-bit on the wire.
    pub cumulative_lost: i32,
    pub ext_highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR received from `ssrc`, 0 if none.
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SenderInfo {
    pub ntp: u64,
    pub rtp_ts: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RtcpPacket {
    SenderReport {
        ssrc: u32,
        info: SenderInfo,
        reports: Vec<ReportBlock>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: Vec<ReportBlock>,
    },
    Bye {
        ssrcs: Vec<u32>,
    },
    /// SDES, APP, feedback, XR: understood as well-formed, not used.
    Other {
        packet_type: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RtcpParseError {
    #[error("empty datagram")]
    Empty,
    #[error("RTCP header truncated")]
    TooShort,
    #[error("RTCP version is not 2")]
    BadVersion,
    #[error("RTCP length field runs past the datagram")]
    BadLength,
    #[error("report count does not fit the packet length")]
    BadReportCount,
}

fn be32(d: &[u8], at: usize) -> Result<u32, RtcpParseError> {
    match d.get(at..at + 4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(RtcpParseError::TooShort),
    }
}

fn parse_block(d: &[u8], at: usize) -> Result<ReportBlock, RtcpParseError> {
    let word = be32(d, at + 4)?;
    // Sign-extend the 24-bit cumulative loss.
    let cumulative_lost = ((word << 8) as i32) >> 8;
    Ok(ReportBlock {
        ssrc: be32(d, at)?,
        fraction_lost: (word >> 24) as u8,
        cumulative_lost,
        ext_highest_seq: be32(d, at + 8)?,
        jitter: be32(d, at + 12)?,
        lsr: be32(d, at + 16)?,
        dlsr: be32(d, at + 20)?,
    })
}

fn parse_blocks(body: &[u8], at: usize, count: usize) -> Result<Vec<ReportBlock>, RtcpParseError> {
    if at + 24 * count > body.len() {
        return Err(RtcpParseError::BadReportCount);
    }
    (0..count).map(|i| parse_block(body, at + 24 * i)).collect()
}

/// Parses a compound RTCP datagram. Any inconsistency rejects the whole datagram, as RFC 3550
/// A.2 asks; reports are small and periodic, so dropping one costs nothing.
pub(crate) fn parse_compound(data: &[u8]) -> Result<Vec<RtcpPacket>, RtcpParseError> {
    if data.is_empty() {
        return Err(RtcpParseError::Empty);
    }
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(RtcpParseError::TooShort);
        }
        if rest[0] >> 6 != 2 {
            return Err(RtcpParseError::BadVersion);
        }
        let count = usize::from(rest[0] & 0x1f);
        let packet_type = rest[1];
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        if len > rest.len() {
            return Err(RtcpParseError::BadLength);
        }
        let mut body = &rest[..len];
        if rest[0] & 0x20 != 0 {
            // Padding (only legal on the last packet, tolerated anywhere).
            let pad = usize::from(body[len - 1]);
            if pad == 0 || pad > len - 4 {
                return Err(RtcpParseError::BadLength);
            }
            body = &body[..len - pad];
        }
        let packet = match packet_type {
            PT_SR => {
                let ssrc = be32(body, 4)?;
                let ntp = (u64::from(be32(body, 8)?) << 32) | u64::from(be32(body, 12)?);
                let info = SenderInfo {
                    ntp,
                    rtp_ts: be32(body, 16)?,
                    packet_count: be32(body, 20)?,
                    octet_count: be32(body, 24)?,
                };
                let reports = parse_blocks(body, 28, count)?;
                RtcpPacket::SenderReport {
                    ssrc,
                    info,
                    reports,
                }
            }
            PT_RR => {
                let ssrc = be32(body, 4)?;
                let reports = parse_blocks(body, 8, count)?;
                RtcpPacket::ReceiverReport { ssrc, reports }
            }
            PT_BYE => {
                let ssrcs = (0..count)
                    .map(|i| be32(body, 4 + 4 * i))
                    .collect::<Result<Vec<_>, _>>()?;
                RtcpPacket::Bye { ssrcs }
            }
            other => RtcpPacket::Other { packet_type: other },
        };
        out.push(packet);
        rest = &rest[len..];
    }
    Ok(out)
}

fn push_header(out: &mut Vec<u8>, count: usize, packet_type: u8, len_bytes: usize) {
    debug_assert!(len_bytes.is_multiple_of(4) && count < 32);
    out.push(0x80 | (count as u8 & 0x1f));
    out.push(packet_type);
    out.extend_from_slice(&((len_bytes / 4 - 1) as u16).to_be_bytes());
}

fn push_block(out: &mut Vec<u8>, b: &ReportBlock) {
    out.extend_from_slice(&b.ssrc.to_be_bytes());
    let lost = (b.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32) & 0x00ff_ffff;
    out.extend_from_slice(&((u32::from(b.fraction_lost) << 24) | lost).to_be_bytes());
    out.extend_from_slice(&b.ext_highest_seq.to_be_bytes());
    out.extend_from_slice(&b.jitter.to_be_bytes());
    out.extend_from_slice(&b.lsr.to_be_bytes());
    out.extend_from_slice(&b.dlsr.to_be_bytes());
}

/// SR when `info` is given (we sent media since the last report), RR otherwise.
pub(crate) fn write_report(
    out: &mut Vec<u8>,
    ssrc: u32,
    info: Option<SenderInfo>,
    blocks: &[ReportBlock],
) {
    let blocks = &blocks[..blocks.len().min(31)];
    match info {
        Some(info) => {
            push_header(out, blocks.len(), PT_SR, 28 + 24 * blocks.len());
            out.extend_from_slice(&ssrc.to_be_bytes());
            out.extend_from_slice(&info.ntp.to_be_bytes());
            out.extend_from_slice(&info.rtp_ts.to_be_bytes());
            out.extend_from_slice(&info.packet_count.to_be_bytes());
            out.extend_from_slice(&info.octet_count.to_be_bytes());
        }
        None => {
            push_header(out, blocks.len(), PT_RR, 8 + 24 * blocks.len());
            out.extend_from_slice(&ssrc.to_be_bytes());
        }
    }
    for b in blocks {
        push_block(out, b);
    }
}

/// SDES with one chunk carrying CNAME, which every compound packet must include (RFC 3550 §6.1).
pub(crate) fn write_sdes_cname(out: &mut Vec<u8>, ssrc: u32, cname: &str) {
    let name = &cname.as_bytes()[..cname.len().min(255)];
    // ssrc + (type, len, text) + at least one null terminator, padded to 32 bits.
    let chunk = (4 + 2 + name.len() + 1).div_ceil(4) * 4;
    push_header(out, 1, PT_SDES, 4 + chunk);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.push(1); // CNAME
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.resize(out.len() + chunk - (4 + 2 + name.len()), 0);
}

pub(crate) fn write_bye(out: &mut Vec<u8>, ssrc: u32) {
    push_header(out, 1, PT_BYE, 8);
    out.extend_from_slice(&ssrc.to_be_bytes());
}

/// 64-bit NTP timestamp (seconds since 1900 in the high word) of a wall-clock time.
pub(crate) fn ntp_from_system_time(t: SystemTime) -> u64 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits used by LSR and for round-trip computation.
pub(crate) fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> ReportBlock {
        ReportBlock {
            ssrc: 0xabcd,
            fraction_lost: 64,
            cumulative_lost: -3,
            ext_highest_seq: 0x0001_0005,
            jitter: 77,
            lsr: 0x1234_5678,
            dlsr: 65536,
        }
    }

    #[test]
    fn sender_report_with_block_and_cname_round_trips() {
        let mut buf = Vec::new();
        let info = SenderInfo {
            ntp: 0x0102_0304_0506_0708,
            rtp_ts: 160,
            packet_count: 10,
            octet_count: 1600,
        };
        write_report(&mut buf, 42, Some(info), &[block()]);
        write_sdes_cname(&mut buf, 42, "edgevoice@host");
        assert_eq!(buf.len() % 4, 0);
        let parsed = parse_compound(&buf).unwrap();
        assert_eq!(
            parsed[0],
            RtcpPacket::SenderReport {
                ssrc: 42,
                info,
                reports: vec![block()]
            }
        );
        assert_eq!(
            parsed[1],
            RtcpPacket::Other {
                packet_type: PT_SDES
            }
        );
    }

    #[test]
    fn receiver_report_and_bye_round_trip() {
        let mut buf = Vec::new();
        write_report(&mut buf, 7, None, &[block(), block()]);
        write_bye(&mut buf, 7);
        let parsed = parse_compound(&buf).unwrap();
        assert_eq!(
            parsed,
            vec![
                RtcpPacket::ReceiverReport {
                    ssrc: 7,
                    reports: vec![block(), block()]
                },
                RtcpPacket::Bye { ssrcs: vec![7] }
            ]
        );
    }

    #[test]
    fn rtcp_parser_rejects_lies_about_lengths_and_counts() {
        assert_eq!(parse_compound(&[]), Err(RtcpParseError::Empty));
        assert_eq!(
            parse_compound(&[0x80, 201, 0]),
            Err(RtcpParseError::TooShort)
        );
        assert_eq!(
            parse_compound(&[0x40, 201, 0, 1, 0, 0, 0, 0]),
            Err(RtcpParseError::BadVersion)
        );
        assert_eq!(
            parse_compound(&[0x80, 201, 0, 9, 0, 0, 0, 0]),
            Err(RtcpParseError::BadLength)
        );
        // RR claiming one block but carrying none.
        assert_eq!(
            parse_compound(&[0x81, 201, 0, 1, 0, 0, 0, 7]),
            Err(RtcpParseError::BadReportCount)
        );
        // SR too short for its sender info.
        assert_eq!(
            parse_compound(&[0x80, 200, 0, 1, 0, 0, 0, 7]),
            Err(RtcpParseError::TooShort)
        );
    }

    #[test]
    fn ntp_time_counts_from_1900() {
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        let ntp = ntp_from_system_time(t);
        assert_eq!(ntp >> 32, 2_208_988_801);
        assert_eq!(ntp & 0xffff_ffff, 1 << 31);
        assert_eq!(
            ntp_middle(ntp),
            ((2_208_988_801u64 & 0xffff) << 16) as u32 | 0x8000
        );
    }
}
