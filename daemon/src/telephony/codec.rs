//! The audio codecs edgevoice speaks on the wire, and what an offer/answer agreed on.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// G.711 µ-law, 8 kHz.
    Pcmu,
    /// G.711 A-law, 8 kHz.
    Pcma,
    /// G.722, 16 kHz audio (its RTP clock is 8000 by an old mistake in RFC 1890, kept forever).
    G722,
}

impl Codec {
    pub const ALL: [Codec; 3] = [Codec::Pcmu, Codec::Pcma, Codec::G722];

    /// The encoding name in SDP `a=rtpmap` (compared case-insensitively).
    pub fn sdp_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
        }
    }

    /// The RTP clock rate written in SDP and used for RTP timestamps.
    pub fn rtp_clock_rate(self) -> u32 {
        8000
    }

    /// The audio sample rate the codec carries.
    pub fn sample_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::G722 => 16000,
        }
    }

    /// The static payload type of RFC 3551.
    pub fn static_payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
        }
    }

    pub fn from_sdp(name: &str, clock_rate: u32) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.sdp_name().eq_ignore_ascii_case(name) && c.rtp_clock_rate() == clock_rate)
    }

    /// Config spelling: "pcmu", "pcma", "g722".
    pub fn from_config_name(name: &str) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.sdp_name().eq_ignore_ascii_case(name))
    }
}

/// The codec preference list of `sip.codecs` (names the config checked), in order.
pub fn preferences(sip: &crate::config::SipConfig) -> Vec<Codec> {
    sip.codecs
        .iter()
        .filter_map(|c| Codec::from_config_name(c))
        .collect()
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.sdp_name())
    }
}

/// Media direction of an SDP stream (RFC 3264), from our point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// What an offer/answer exchange agreed on for one audio stream: all the media engine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Negotiated {
    pub codec: Codec,
    /// The payload type used for `codec` on this call (the offerer's number).
    pub payload_type: u8,
    /// RFC 4733 telephone-event payload type, when both sides support it.
    pub dtmf_payload_type: Option<u8>,
    /// Packetization time in milliseconds (20 unless the peer insists).
    pub ptime_ms: u32,
    /// Where the peer wants its RTP (from c= and m=); RTCP goes to port + 1 unless a=rtcp says otherwise.
    pub remote_rtp: std::net::SocketAddr,
    pub remote_rtcp: std::net::SocketAddr,
    /// Our direction (hold makes it sendonly/inactive).
    pub direction: Direction,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_name_the_config_takes_is_a_codec_and_every_codec_has_one() {
        for name in crate::config::CODEC_NAMES {
            assert!(Codec::from_config_name(name).is_some(), "{name}");
        }
        assert_eq!(crate::config::CODEC_NAMES.len(), Codec::ALL.len());
    }

    #[test]
    fn codecs_match_by_name_and_clock_rate_case_insensitively() {
        assert_eq!(Codec::from_sdp("pcmu", 8000), Some(Codec::Pcmu));
        assert_eq!(Codec::from_sdp("G722", 8000), Some(Codec::G722));
        assert_eq!(Codec::from_sdp("G722", 16000), None);
        assert_eq!(Codec::from_sdp("opus", 48000), None);
    }
}
