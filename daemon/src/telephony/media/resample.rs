//! Streaming fixed-ratio resampling of 16-bit mono PCM, over rubato's FFT resampler.
//!
//! rubato works on whole chunks; this wrapper takes any number of samples at a time, keeps the
//! remainder, trims the filter's start-up delay so output lines up with input sample for sample,
//! and on `flush` pads with silence so the tail comes out too. The total output length after a
//! flush is exactly `round(input_len * to / from)`, which keeps `queued_ms` and recordings
//! honest.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

use super::MediaError;

/// Sample rates accepted anywhere audio enters the engine.
pub const MIN_SAMPLE_RATE: u32 = 8000;
pub const MAX_SAMPLE_RATE: u32 = 192_000;
/// What speech recognition (whisper, Silero VAD) takes.
pub const ASR_SAMPLE_RATE: u32 = 16_000;

/// Streaming resampler for mono 16-bit PCM. For ASR, one per call:
///
/// ```
/// # use edgevoice::telephony::media::Resampler;
/// let mut to_asr = Resampler::to_asr(8000).unwrap();
/// let mut asr_input = Vec::new();
/// for frame in [[0i16; 160]; 3] {
///     // Each 20 ms caller frame (MediaEvent::AudioFrame) in, 16 kHz out with 10 ms latency.
///     to_asr.process(&frame, &mut asr_input).unwrap();
/// }
/// assert_eq!(asr_input.len(), 3 * 320 - 160);
/// ```
pub struct Resampler {
    from: u32,
    to: u32,
    inner: Option<Inner>,
}

struct Inner {
    fft: Box<Fft<f32>>,
    chunk_in: usize,
    chunk_out: usize,
    pending: Vec<f32>,
    out_buf: Vec<f32>,
    /// Output samples still to drop: the FFT filter's start-up delay.
    to_trim: usize,
    in_total: u64,
    out_total: u64,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

fn to_i16(x: f32) -> i16 {
    (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz (each within 8 kHz..=192 kHz). Equal rates pass
    /// samples through untouched.
    pub fn new(from: u32, to: u32) -> Result<Self, MediaError> {
        for rate in [from, to] {
            if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
                return Err(MediaError::UnsupportedSampleRate(rate));
            }
        }
        if from == to {
            return Ok(Resampler {
                from,
                to,
                inner: None,
            });
        }
        // 20 ms chunks (rounded up by rubato to a whole FFT block for this rate pair): the
        // latency budget of one RTP frame, and a block big enough for a steep anti-alias filter.
        let chunk = (from / 50) as usize;
        let fft = Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Both)
            .map_err(|e| MediaError::Resampler(e.to_string()))?;
        let chunk_in = fft.input_frames_next();
        let chunk_out = fft.output_frames_next();
        let to_trim = fft.output_delay();
        Ok(Resampler {
            from,
            to,
            inner: Some(Inner {
                fft: Box::new(fft),
                chunk_in,
                chunk_out,
                pending: Vec::with_capacity(chunk_in * 2),
                out_buf: vec![0.0; chunk_out],
                to_trim,
                in_total: 0,
                out_total: 0,
            }),
        })
    }

    /// From a codec rate (8 or 16 kHz) to [`ASR_SAMPLE_RATE`]; passes 16 kHz (G.722) through.
    pub fn to_asr(from: u32) -> Result<Self, MediaError> {
        Resampler::new(from, ASR_SAMPLE_RATE)
    }

    pub fn input_rate(&self) -> u32 {
        self.from
    }

    pub fn output_rate(&self) -> u32 {
        self.to
    }

    /// Resamples `input`, appending every output sample that is ready to `out`. Up to one chunk
    /// (20 ms) of input plus the filter delay stays inside until more input or `flush`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) -> Result<(), MediaError> {
        let Some(inner) = self.inner.as_mut() else {
            out.extend_from_slice(input);
            return Ok(());
        };
        inner.in_total += input.len() as u64;
        inner
            .pending
            .extend(input.iter().map(|&s| f32::from(s) / 32768.0));
        let mut used = 0;
        while inner.pending.len() - used >= inner.chunk_in {
            inner.run_chunk(used, out)?;
            used += inner.chunk_in;
        }
        inner.pending.drain(..used);
        Ok(())
    }

    /// Emits the rest of the signal (padding with silence through the filter) and resets, so
    /// the next `process` starts a new, independent stream.
    pub fn flush(&mut self, out: &mut Vec<i16>) -> Result<(), MediaError> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(());
        };
        let expected =
            (inner.in_total * u64::from(self.to) + u64::from(self.from) / 2) / u64::from(self.from);
        // Whatever is pending is shorter than a chunk: pad it with silence, then push silence
        // through until the filter has given back every sample owed.
        while inner.out_total < expected {
            let len = inner.pending.len().max(inner.chunk_in);
            inner.pending.resize(len, 0.0);
            inner.run_chunk(0, out)?;
            inner.pending.drain(..inner.chunk_in);
        }
        let excess = (inner.out_total - expected) as usize;
        out.truncate(out.len().saturating_sub(excess));
        self.reset();
        Ok(())
    }

    /// Drops all buffered audio and filter state.
    pub fn reset(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            inner.fft.reset();
            inner.pending.clear();
            inner.to_trim = inner.fft.output_delay();
            inner.in_total = 0;
            inner.out_total = 0;
        }
    }

    /// Output samples still owed for input already given (what `flush` would emit).
    pub fn pending_output(&self) -> usize {
        match &self.inner {
            None => 0,
            Some(inner) => {
                let expected = (inner.in_total * u64::from(self.to) + u64::from(self.from) / 2)
                    / u64::from(self.from);
                expected.saturating_sub(inner.out_total) as usize
            }
        }
    }

    /// Resamples a whole clip in one go (flushes at the end).
    pub fn resample_all(input: &[i16], from: u32, to: u32) -> Result<Vec<i16>, MediaError> {
        let mut r = Resampler::new(from, to)?;
        let mut out = Vec::with_capacity(input.len() * to as usize / from as usize + 1);
        r.process(input, &mut out)?;
        r.flush(&mut out)?;
        Ok(out)
    }
}

impl Inner {
    /// Runs the chunk at `pending[at..]`, appending its output minus any start-up delay.
    fn run_chunk(&mut self, at: usize, out: &mut Vec<i16>) -> Result<(), MediaError> {
        let input = InterleavedSlice::new(&self.pending[at..at + self.chunk_in], 1, self.chunk_in)
            .map_err(|e| MediaError::Resampler(e.to_string()))?;
        let mut output = InterleavedSlice::new_mut(&mut self.out_buf, 1, self.chunk_out)
            .map_err(|e| MediaError::Resampler(e.to_string()))?;
        let (_, produced) = self
            .fft
            .process_into_buffer(&input, &mut output, None)
            .map_err(|e| MediaError::Resampler(e.to_string()))?;
        let skip = self.to_trim.min(produced);
        self.to_trim -= skip;
        out.extend(self.out_buf[skip..produced].iter().map(|&x| to_i16(x)));
        self.out_total += (produced - skip) as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telephony::media::test_util::{best_lag, read_wav};

    fn sine(rate: u32, hz: f64, secs: f64) -> Vec<i16> {
        let n = (f64::from(rate) * secs) as usize;
        (0..n)
            .map(|i| {
                (8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin())
                    as i16
            })
            .collect()
    }

    #[test]
    fn resampler_output_length_is_exact_for_every_supported_rate() {
        for from in [8000, 16000, 22050, 24000, 48000] {
            for to in [8000, 16000] {
                let input = sine(from, 440.0, 0.73);
                let out = Resampler::resample_all(&input, from, to).unwrap();
                let expected =
                    (input.len() as u64 * u64::from(to) + u64::from(from) / 2) / u64::from(from);
                assert_eq!(out.len() as u64, expected, "{from}->{to}");
            }
        }
    }

    #[test]
    fn resampler_streams_in_odd_pieces_like_one_call() {
        let input = sine(22050, 300.0, 1.0);
        let whole = Resampler::resample_all(&input, 22050, 8000).unwrap();
        let mut r = Resampler::new(22050, 8000).unwrap();
        let mut pieces = Vec::new();
        for chunk in input.chunks(97) {
            r.process(chunk, &mut pieces).unwrap();
        }
        r.flush(&mut pieces).unwrap();
        assert_eq!(whole, pieces);
    }

    #[test]
    fn resampler_keeps_timing_and_waveform_of_speech() {
        // 16 kHz speech down to 8 kHz and back up must still line up with the original (no
        // start-up delay left in) and correlate strongly (telephone band kept).
        let (speech, _) = read_wav("jfk.wav");
        let speech = &speech[..16000 * 3];
        let down = Resampler::resample_all(speech, 16000, 8000).unwrap();
        let up = Resampler::resample_all(&down, 8000, 16000).unwrap();
        let (lag, ncc) = best_lag(speech, &up, 8);
        assert_eq!(lag, 0, "resampling must not delay the signal");
        assert!(ncc > 0.9, "ncc {ncc}");
    }

    #[test]
    fn resampler_removes_content_above_the_new_nyquist() {
        // A 6 kHz tone does not exist at 8 kHz: a proper low-pass removes it, where sample
        // dropping would alias it to 2 kHz at full level.
        let input = sine(16000, 6000.0, 0.5);
        let out = Resampler::resample_all(&input, 16000, 8000).unwrap();
        let peak = out[400..out.len() - 400]
            .iter()
            .map(|s| s.unsigned_abs())
            .max()
            .unwrap();
        assert!(peak < 100, "aliased energy left: peak {peak}");
    }

    #[test]
    fn resampler_rejects_rates_outside_the_supported_range() {
        assert!(matches!(
            Resampler::new(0, 8000),
            Err(MediaError::UnsupportedSampleRate(0))
        ));
        assert!(Resampler::new(8000, 400_000).is_err());
        assert!(Resampler::new(44100, 8000).is_ok());
    }
}
