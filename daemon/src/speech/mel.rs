//! Whisper's log-mel spectrogram, as `transformers.WhisperFeatureExtractor(chunk_length=8)`
//! computes it for Pipecat's Smart Turn v3 (`padding="max_length"`, `max_length=128000`,
//! `truncation=True`, `do_normalize=True`), after Pipecat has kept the last 8 s of the turn and
//! zero-padded shorter audio at the start:
//!
//! 1. the 128,000 samples are normalised to zero mean and unit variance (`+1e-7` under the root;
//!    the padding zeros count, as they do upstream);
//! 2. a centred STFT: reflect-padded by 200 samples each side, periodic Hann window of 400,
//!    hop 160, power spectrum |X|² (in f64, as numpy computes it);
//! 3. 80 triangular Slaney mel filters from 0 to 8 kHz, area-normalised;
//! 4. log10 of max(1e-10, energy); the last STFT frame dropped (801 → 800); values below the
//!    global maximum − 8 raised to it; then (x + 4) / 4.
//!
//! Pure and deterministic: no I/O, no threads. Smart Turn was trained on exactly these features,
//! so every step matters (the normalisation most: without it the model sees other levels).

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Rate of the audio the features are computed from.
pub const SAMPLE_RATE: usize = 16_000;
/// STFT window (25 ms).
pub const N_FFT: usize = 400;
/// STFT hop (10 ms).
pub const HOP_LENGTH: usize = 160;
pub const N_MELS: usize = 80;
/// Audio the features cover: the last 8 s of the turn.
pub const WINDOW_SAMPLES: usize = 8 * SAMPLE_RATE;
/// Frames in the features (one per hop; the STFT's 801st is dropped, as upstream).
pub const N_FRAMES: usize = WINDOW_SAMPLES / HOP_LENGTH;
/// Frequency bins of one real FFT frame.
const N_BINS: usize = N_FFT / 2 + 1;
/// Energy floor before the logarithm.
const MEL_FLOOR: f64 = 1e-10;
/// Added to the variance in the waveform normalisation.
const NORM_VARIANCE_EPS: f32 = 1e-7;
/// Dynamic range kept below the loudest value, in log10 units (80 dB).
const DYNAMIC_RANGE: f32 = 8.0;

/// The log-mel value of silence (energy at the floor everywhere): (log10(1e-10) + 4) / 4.
pub const SILENCE_VALUE: f32 = -1.5;

/// One triangular filter, stored sparsely: its weights start at `first_bin`.
#[derive(Debug, Clone)]
struct MelFilter {
    first_bin: usize,
    weights: Vec<f64>,
}

/// Computes the features; build once and share (immutable, `Send + Sync`).
pub struct LogMelExtractor {
    fft: Arc<dyn RealToComplex<f64>>,
    window: Vec<f64>,
    filters: Vec<MelFilter>,
}

impl std::fmt::Debug for LogMelExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMelExtractor")
            .field("n_fft", &N_FFT)
            .field("n_mels", &self.filters.len())
            .finish()
    }
}

impl Default for LogMelExtractor {
    fn default() -> Self {
        Self::new()
    }
}

impl LogMelExtractor {
    pub fn new() -> Self {
        LogMelExtractor {
            fft: RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT),
            window: periodic_hann(N_FFT),
            filters: slaney_mel_filters(N_MELS, SAMPLE_RATE),
        }
    }

    /// The features of the last 8 s of `pcm_16k` (mono, 16 kHz, nominally -1.0..=1.0), zero-padded
    /// at the start when shorter: `N_MELS × N_FRAMES` values, mel-major (row `m` holds mel band
    /// `m` over time), the layout of the model's `[1, 80, 800]` input.
    pub fn extract(&self, pcm_16k: &[f32]) -> Vec<f32> {
        let window = last_window(pcm_16k);
        let normalized = normalize(&window);
        let mut log_mel = self.log_mel_energies(&normalized);
        let max = log_mel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let floor = max - DYNAMIC_RANGE;
        for v in &mut log_mel {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
        log_mel
    }

    /// log10 mel energies of the first `N_FRAMES` STFT frames, mel-major.
    fn log_mel_energies(&self, samples: &[f32]) -> Vec<f32> {
        let padded = reflect_pad(samples, N_FFT / 2);
        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0.0f64; N_BINS];
        let mut out = vec![0.0f32; N_MELS * N_FRAMES];
        for t in 0..N_FRAMES {
            let start = t * HOP_LENGTH;
            for ((f, &x), &w) in frame
                .iter_mut()
                .zip(&padded[start..start + N_FFT])
                .zip(&self.window)
            {
                *f = x * w;
            }
            // Lengths come from the plan itself, so this cannot fail.
            if self
                .fft
                .process_with_scratch(&mut frame, &mut spectrum, &mut scratch)
                .is_err()
            {
                continue;
            }
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (m, filter) in self.filters.iter().enumerate() {
                out[m * N_FRAMES + t] = filter.log_energy(&power);
            }
        }
        out
    }
}

impl MelFilter {
    fn log_energy(&self, power: &[f64]) -> f32 {
        let energy: f64 = self
            .weights
            .iter()
            .zip(&power[self.first_bin..])
            .map(|(w, p)| w * p)
            .sum();
        energy.max(MEL_FLOOR).log10() as f32
    }
}

/// The last `WINDOW_SAMPLES` of `pcm`, zeros in front when it is shorter.
fn last_window(pcm: &[f32]) -> Vec<f32> {
    let kept = &pcm[pcm.len().saturating_sub(WINDOW_SAMPLES)..];
    let mut window = vec![0.0f32; WINDOW_SAMPLES - kept.len()];
    window.extend_from_slice(kept);
    window
}

/// Zero mean, unit variance over the whole window. Upstream does this in f32 (numpy on the
/// padded float32 buffer): the mean and variance are summed here in f64 (numpy's pairwise f32
/// sums land within an ulp of that) and then each sample is shifted and scaled in f32 as numpy
/// does, because the int8 model turns even the last bits of difference into score changes of
/// up to 0.3 on borderline turns.
fn normalize(samples: &[f32]) -> Vec<f32> {
    let n = samples.len().max(1) as f64;
    let mean = samples.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let variance = samples
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    let mean = mean as f32;
    let std = (variance as f32 + NORM_VARIANCE_EPS).sqrt();
    samples.iter().map(|&x| (x - mean) / std).collect()
}

/// numpy's `pad(mode="reflect")`: mirrored around the first and last sample, which are not
/// repeated.
fn reflect_pad(samples: &[f32], pad: usize) -> Vec<f64> {
    let n = samples.len();
    let mut out = Vec::with_capacity(n + 2 * pad);
    if n <= pad {
        // Not reachable with WINDOW_SAMPLES of input; keep the length right anyway.
        out.resize(n + 2 * pad, 0.0);
        return out;
    }
    out.extend((1..=pad).rev().map(|i| f64::from(samples[i])));
    out.extend(samples.iter().map(|&x| f64::from(x)));
    out.extend((1..=pad).map(|i| f64::from(samples[n - 1 - i])));
    out
}

/// The periodic Hann window (torch.hann_window's default, numpy's hanning(n + 1)[:-1]).
fn periodic_hann(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
        .collect()
}

/// Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
fn hz_to_mel(hz: f64) -> f64 {
    const LOG_START_HZ: f64 = 1000.0;
    const LOG_START_MEL: f64 = 15.0;
    if hz >= LOG_START_HZ {
        LOG_START_MEL + (hz / LOG_START_HZ).ln() * 27.0 / 6.4f64.ln()
    } else {
        3.0 * hz / 200.0
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    const LOG_START_HZ: f64 = 1000.0;
    const LOG_START_MEL: f64 = 15.0;
    if mel >= LOG_START_MEL {
        LOG_START_HZ * ((mel - LOG_START_MEL) * 6.4f64.ln() / 27.0).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// `n_mels` triangles evenly spaced in mels from 0 Hz to Nyquist over the FFT's bins, each
/// scaled by 2 / its width in Hz (Slaney's area normalisation).
fn slaney_mel_filters(n_mels: usize, sample_rate: usize) -> Vec<MelFilter> {
    let nyquist = (sample_rate / 2) as f64;
    let top_mel = hz_to_mel(nyquist);
    let edges: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(top_mel * i as f64 / (n_mels + 1) as f64))
        .collect();
    let bin_hz = |k: usize| nyquist * k as f64 / (N_BINS - 1) as f64;
    (0..n_mels)
        .map(|m| {
            let (low, centre, high) = (edges[m], edges[m + 1], edges[m + 2]);
            let area_norm = 2.0 / (high - low);
            let weight = |k: usize| {
                let f = bin_hz(k);
                let rising = (f - low) / (centre - low);
                let falling = (high - f) / (high - centre);
                rising.min(falling).max(0.0) * area_norm
            };
            let first_bin = (0..N_BINS).find(|&k| weight(k) > 0.0).unwrap_or(0);
            let last_bin = (0..N_BINS)
                .rev()
                .find(|&k| weight(k) > 0.0)
                .unwrap_or(first_bin);
            MelFilter {
                first_bin,
                weights: (first_bin..=last_bin).map(weight).collect(),
            }
        })
        .collect()
}

/// Power of one frame (for tests: the windowed |X[k]|² of `samples[..N_FFT]`).
#[cfg(test)]
fn frame_power(extractor: &LogMelExtractor, samples: &[f64]) -> Vec<f64> {
    let mut frame: Vec<f64> = samples
        .iter()
        .zip(&extractor.window)
        .map(|(x, w)| x * w)
        .collect();
    let mut spectrum: Vec<realfft::num_complex::Complex<f64>> = extractor.fft.make_output_vec();
    extractor
        .fft
        .process(&mut frame, &mut spectrum)
        .expect("fft sizes");
    spectrum.iter().map(|c| c.norm_sqr()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f64, amplitude: f64, samples: usize) -> Vec<f32> {
        (0..samples)
            .map(|i| {
                (amplitude
                    * (2.0 * std::f64::consts::PI * hz * i as f64 / SAMPLE_RATE as f64).sin())
                    as f32
            })
            .collect()
    }

    fn at(features: &[f32], mel: usize, frame: usize) -> f32 {
        features[mel * N_FRAMES + frame]
    }

    /// The mel band whose triangle peaks nearest `hz` (centres evenly spaced in Slaney mels).
    fn band_centred_near(hz: f64) -> usize {
        let step = hz_to_mel(8000.0) / (N_MELS + 1) as f64;
        (hz_to_mel(hz) / step).round() as usize - 1
    }

    #[test]
    fn shape_is_80_mels_by_800_frames() {
        let features = LogMelExtractor::new().extract(&sine(440.0, 0.3, 16_000));
        assert_eq!(features.len(), 80 * 800);
        assert_eq!((N_MELS, N_FRAMES), (80, 800));
    }

    #[test]
    fn silence_and_no_audio_give_the_floor_value_everywhere() {
        let extractor = LogMelExtractor::new();
        for pcm in [vec![0.0f32; 40_000], Vec::new(), vec![0.0; 200_000]] {
            let features = extractor.extract(&pcm);
            assert!(features.iter().all(|&v| v == SILENCE_VALUE), "{pcm:?}");
        }
    }

    #[test]
    fn slaney_scale_round_trips_and_breaks_at_1_khz() {
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(200.0) - 3.0).abs() < 1e-12);
        // 6.4 times 1 kHz is 27 mels above it.
        assert!((hz_to_mel(6400.0) - 42.0).abs() < 1e-9);
        for hz in [0.0, 123.0, 999.0, 1000.0, 3456.7, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9, "{hz}");
        }
    }

    #[test]
    fn fft_power_matches_a_plain_dft() {
        let extractor = LogMelExtractor::new();
        // A deterministic pseudo-random frame (LCG), not a sine: every bin is exercised.
        let mut state = 12345u64;
        let samples: Vec<f64> = (0..N_FFT)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect();
        let fast = frame_power(&extractor, &samples);
        for (k, &got) in fast.iter().enumerate() {
            let (mut re, mut im) = (0.0f64, 0.0f64);
            for (n, &x) in samples.iter().enumerate() {
                let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos();
                let angle = -2.0 * std::f64::consts::PI * (k * n) as f64 / N_FFT as f64;
                re += x * w * angle.cos();
                im += x * w * angle.sin();
            }
            let want = re * re + im * im;
            assert!((got - want).abs() <= 1e-9 * want.max(1.0), "bin {k}");
        }
    }

    /// The whole pipeline against a value computed by hand: a 1 kHz sine over all 8 s is, after
    /// normalisation, amplitude √2; 1 kHz is exactly FFT bin 25 (40 Hz per bin), where a periodic
    /// Hann window puts |X| = A·N/4 and half that in bins 24 and 26, nothing elsewhere. The mel
    /// energy of band m is then Σ weight_m(k)·|X[k]|² over those three bins, with each triangle's
    /// weight written out here from its edges.
    #[test]
    fn a_1khz_sine_gives_the_hand_computed_values() {
        let features = LogMelExtractor::new().extract(&sine(1000.0, 0.25, WINDOW_SAMPLES));
        let amplitude = 2f64.sqrt();
        let peak = (amplitude * N_FFT as f64 / 4.0).powi(2);
        let power = [(24usize, peak / 4.0), (25, peak), (26, peak / 4.0)];
        let step = hz_to_mel(8000.0) / (N_MELS + 1) as f64;
        let edge = |i: usize| mel_to_hz(step * i as f64);
        let mut loudest = f64::NEG_INFINITY;
        let mut expected = Vec::new();
        for m in 0..N_MELS {
            let (lo, mid, hi) = (edge(m), edge(m + 1), edge(m + 2));
            let energy: f64 = power
                .iter()
                .map(|&(k, p)| {
                    let f = k as f64 * 40.0;
                    let tri = if f <= lo || f >= hi {
                        0.0
                    } else if f <= mid {
                        (f - lo) / (mid - lo)
                    } else {
                        (hi - f) / (hi - mid)
                    };
                    tri * 2.0 / (hi - lo) * p
                })
                .sum();
            let log = energy.max(1e-10).log10();
            loudest = loudest.max(log);
            expected.push(log);
        }
        let band = band_centred_near(1000.0);
        let frame = N_FRAMES / 2;
        let (best, _) = (0..N_MELS)
            .map(|m| (m, at(&features, m, frame)))
            .fold((0, f32::MIN), |a, b| if b.1 > a.1 { b } else { a });
        assert!(
            best.abs_diff(band) <= 1,
            "peak in band {best}, 1 kHz is band {band}"
        );
        for (m, &log) in expected.iter().enumerate() {
            if log < loudest - 7.0 {
                continue; // clamped to the global maximum - 8: depends on the edge frames
            }
            let want = ((log + 4.0) / 4.0) as f32;
            let got = at(&features, m, frame);
            assert!((got - want).abs() < 1e-4, "band {m}: {got} vs {want}");
        }
    }

    #[test]
    fn a_tone_lands_in_its_mel_band() {
        let extractor = LogMelExtractor::new();
        for hz in [300.0, 1000.0, 2500.0, 5000.0] {
            let features = extractor.extract(&sine(hz, 0.5, WINDOW_SAMPLES));
            let frame = 400;
            let best = (0..N_MELS)
                .max_by(|&a, &b| at(&features, a, frame).total_cmp(&at(&features, b, frame)))
                .unwrap_or(0);
            let band = band_centred_near(hz);
            assert!(
                best.abs_diff(band) <= 1,
                "{hz} Hz in band {best}, expected {band}"
            );
        }
    }

    #[test]
    fn short_audio_is_padded_at_the_start() {
        let extractor = LogMelExtractor::new();
        // One second of tone: it fills the last 100 frames; the 7 s of padding before it stay
        // far below (only the normalisation's offset is left there).
        let features = extractor.extract(&sine(1000.0, 0.5, SAMPLE_RATE));
        let band = band_centred_near(1000.0);
        let early = at(&features, band, 100);
        let late = at(&features, band, N_FRAMES - 50);
        assert!(late > early + 1.0, "tone {late}, padding {early}");
        let loudest_early = (0..N_MELS)
            .flat_map(|m| (0..650).map(move |t| (m, t)))
            .map(|(m, t)| at(&features, m, t))
            .fold(f32::MIN, f32::max);
        assert!(loudest_early < late - 1.0, "{loudest_early} vs {late}");
    }

    #[test]
    fn only_the_last_8_seconds_count() {
        let extractor = LogMelExtractor::new();
        let mut long = sine(300.0, 0.9, 3 * SAMPLE_RATE);
        let tail = sine(2500.0, 0.2, WINDOW_SAMPLES);
        long.extend_from_slice(&tail);
        assert_eq!(extractor.extract(&long), extractor.extract(&tail));
    }

    #[test]
    fn level_does_not_matter_after_normalisation() {
        let extractor = LogMelExtractor::new();
        let quiet = extractor.extract(&sine(700.0, 0.01, 50_000));
        let loud = extractor.extract(&sine(700.0, 0.8, 50_000));
        let worst = quiet
            .iter()
            .zip(&loud)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "{worst}");
    }

    #[test]
    fn reflect_padding_mirrors_without_repeating_the_edge() {
        let padded = reflect_pad(&[1.0, 2.0, 3.0, 4.0, 5.0], 2);
        assert_eq!(padded, vec![3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0, 4.0, 3.0]);
    }

    #[test]
    fn filters_are_area_normalised_triangles() {
        let filters = slaney_mel_filters(N_MELS, SAMPLE_RATE);
        assert_eq!(filters.len(), N_MELS);
        for (m, f) in filters.iter().enumerate() {
            assert!(!f.weights.is_empty(), "band {m} covers no bin");
            assert!(f.weights.iter().all(|&w| w > 0.0));
        }
        // Bands start in order and cover up to Nyquist.
        assert!(filters.windows(2).all(|w| w[0].first_bin <= w[1].first_bin));
        let last = &filters[N_MELS - 1];
        assert_eq!(last.first_bin + last.weights.len(), N_BINS - 1);
    }
}
