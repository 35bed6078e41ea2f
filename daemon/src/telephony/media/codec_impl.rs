//! G.711 µ-law/A-law and G.722 (64 kbit/s mode 1, one octet per pair of 16 kHz samples as RFC
//! 3551 packs it) over the `audio-codec` crate, behind a closed enum so a session holds no
//! trait objects.

use audio_codec::g722::{G722Decoder, G722Encoder};
use audio_codec::pcma::{PcmaDecoder, PcmaEncoder};
use audio_codec::pcmu::{PcmuDecoder, PcmuEncoder};

use crate::telephony::codec::Codec;

/// Decoded samples per RTP timestamp unit. (Payload octets equal RTP units for all three codecs:
/// G.711 has one 8 kHz sample per octet, G.722 two 16 kHz samples per octet on an 8 kHz clock.)
pub(crate) fn samples_per_ts(codec: Codec) -> usize {
    (codec.sample_rate() / codec.rtp_clock_rate()) as usize
}

pub enum AudioEncoder {
    Pcmu(PcmuEncoder),
    Pcma(PcmaEncoder),
    // Boxed: the ADPCM state is a few hundred bytes, the G.711 ones are empty.
    G722(Box<G722Encoder>),
}

impl AudioEncoder {
    pub fn new(codec: Codec) -> Self {
        match codec {
            Codec::Pcmu => AudioEncoder::Pcmu(PcmuEncoder::new()),
            Codec::Pcma => AudioEncoder::Pcma(PcmaEncoder::new()),
            Codec::G722 => AudioEncoder::G722(Box::new(G722Encoder::new())),
        }
    }

    /// Appends the encoding of `pcm` (at the codec's sample rate) to `out`.
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        let start = out.len();
        let enc: &mut dyn audio_codec::Encoder = match self {
            AudioEncoder::Pcmu(e) => e,
            AudioEncoder::Pcma(e) => e,
            AudioEncoder::G722(e) => e.as_mut(),
        };
        out.resize(start + enc.max_encode_bytes(pcm.len()), 0);
        // The buffer is sized by the codec's own bound, so this cannot fail; an encoder bug
        // would leave a short payload rather than take the call down.
        let n = enc.encode_into(pcm, &mut out[start..]).unwrap_or(0);
        out.truncate(start + n);
    }
}

pub enum AudioDecoder {
    Pcmu(PcmuDecoder),
    Pcma(PcmaDecoder),
    G722(Box<G722Decoder>),
}

impl AudioDecoder {
    pub fn new(codec: Codec) -> Self {
        match codec {
            Codec::Pcmu => AudioDecoder::Pcmu(PcmuDecoder::new()),
            Codec::Pcma => AudioDecoder::Pcma(PcmaDecoder::new()),
            Codec::G722 => AudioDecoder::G722(Box::new(G722Decoder::new())),
        }
    }

    /// Appends the decoding of `payload` to `out`. Any octet string is a valid payload for
    /// these codecs, so this is total.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        let start = out.len();
        let dec: &mut dyn audio_codec::Decoder = match self {
            AudioDecoder::Pcmu(d) => d,
            AudioDecoder::Pcma(d) => d,
            AudioDecoder::G722(d) => d.as_mut(),
        };
        out.resize(start + dec.max_decode_samples(payload.len()), 0);
        let n = dec.decode_into(payload, &mut out[start..]).unwrap_or(0);
        out.truncate(start + n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telephony::media::test_util::{best_ncc, read_wav};

    #[test]
    fn g711_silence_encodes_to_the_standard_idle_octets() {
        let mut out = Vec::new();
        AudioEncoder::new(Codec::Pcmu).encode(&[0; 4], &mut out);
        assert_eq!(out, [0xff; 4]);
        out.clear();
        AudioEncoder::new(Codec::Pcma).encode(&[0; 4], &mut out);
        assert_eq!(out, [0xd5; 4]);
    }

    #[test]
    fn g711_every_code_decodes_and_reencodes_to_itself() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let mut enc = AudioEncoder::new(codec);
            let mut dec = AudioDecoder::new(codec);
            for code in 0..=255u8 {
                let mut pcm = Vec::new();
                dec.decode(&[code], &mut pcm);
                let mut back = Vec::new();
                enc.encode(&pcm, &mut back);
                // µ-law has two codes for zero (0x7f, 0xff); 0 encodes as 0xff. audio-codec's A-law
                // encoder maps -8..=-1 to +8 (0xd5, the idle code) rather than -8 (0x55): a
                // difference of 16/65536, inaudible, and the idle pattern stays standard.
                let expected = match (codec, code) {
                    (Codec::Pcmu, 0x7f) => 0xff,
                    (Codec::Pcma, 0x55) => 0xd5,
                    _ => code,
                };
                assert_eq!(back, [expected], "{codec} code {code:#04x}");
            }
        }
    }

    #[test]
    fn g711_round_trip_of_speech_correlates_with_the_original() {
        let (speech, rate) = read_wav("harvard_8k.wav");
        assert_eq!(rate, 8000);
        let speech = &speech[..8000 * 5];
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let mut enc = AudioEncoder::new(codec);
            let mut dec = AudioDecoder::new(codec);
            let mut out = Vec::new();
            for frame in speech.chunks(160) {
                let mut bytes = Vec::new();
                enc.encode(frame, &mut bytes);
                assert_eq!(bytes.len(), frame.len());
                dec.decode(&bytes, &mut out);
            }
            let ncc = best_ncc(speech, &out, 0);
            assert!(ncc >= 0.99, "{codec}: ncc {ncc}");
        }
    }

    #[test]
    fn g722_round_trip_of_speech_correlates_with_the_original() {
        let (speech, rate) = read_wav("jfk.wav");
        assert_eq!(rate, 16000);
        let speech = &speech[..16000 * 5];
        let mut enc = AudioEncoder::new(Codec::G722);
        let mut dec = AudioDecoder::new(Codec::G722);
        let mut out = Vec::new();
        for frame in speech.chunks(320) {
            let mut bytes = Vec::new();
            enc.encode(frame, &mut bytes);
            assert_eq!(bytes.len(), 160, "20 ms of G.722 is 160 octets");
            dec.decode(&bytes, &mut out);
        }
        assert_eq!(out.len(), speech.len());
        // The QMF filter bank delays the output by a few samples.
        let ncc = best_ncc(speech, &out, 40);
        assert!(ncc >= 0.9, "G.722 ncc {ncc}");
    }
}
