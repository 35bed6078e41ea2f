//! Audio helpers for end-to-end tests: a minimal WAV (RIFF PCM s16) reader/writer, sox and
//! espeak-ng wrappers, and the measurements tests assert on (RMS, onset, cross-correlation).
//!
//! Use from a test file with `#[path = "common/audio.rs"] mod audio;`. Blocking, std only.
//!
//! The reader tolerates WAV files whose header was never finalised (baresip's `sndfile`
//! dumps while a call is still up): it then takes the data chunk to run to the end of the file.
#![allow(dead_code)]

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// PCM signed 16-bit audio: `samples` are interleaved when `channels` > 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Wav {
    pub rate: u32,
    pub channels: u16,
    pub samples: Vec<i16>,
}

impl Wav {
    /// Mono audio from samples.
    pub fn mono(rate: u32, samples: Vec<i16>) -> Wav {
        Wav {
            rate,
            channels: 1,
            samples,
        }
    }

    /// Reads a PCM s16 WAV file; panics with the path and reason if it cannot.
    pub fn read(path: impl AsRef<Path>) -> Wav {
        let path = path.as_ref();
        Wav::try_read(path).unwrap_or_else(|e| panic!("read WAV {}: {e}", path.display()))
    }

    /// Reads a PCM s16 WAV file (RIFF/WAVE, format 1 or WAVE_FORMAT_EXTENSIBLE with PCM).
    pub fn try_read(path: impl AsRef<Path>) -> io::Result<Wav> {
        let bytes = fs::read(path.as_ref())?;
        Wav::parse(&bytes)
    }

    /// Parses WAV bytes (see [`Wav::try_read`]).
    pub fn parse(bytes: &[u8]) -> io::Result<Wav> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
            return Err(bad("not a RIFF/WAVE file"));
        }
        let mut pos = 12;
        let mut fmt: Option<(u16, u16, u32, u16)> = None; // format, channels, rate, bits
        while pos + 8 <= bytes.len() {
            let id = &bytes[pos..pos + 4];
            let declared = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
            let body = pos + 8;
            if id == b"fmt " {
                if body + 16 > bytes.len() {
                    return Err(bad("truncated fmt chunk"));
                }
                let b = &bytes[body..];
                let mut format = u16::from_le_bytes([b[0], b[1]]);
                let channels = u16::from_le_bytes([b[2], b[3]]);
                let rate = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let bits = u16::from_le_bytes([b[14], b[15]]);
                if format == 0xFFFE && declared >= 40 && body + 26 <= bytes.len() {
                    // WAVE_FORMAT_EXTENSIBLE: the sub-format GUID starts with the format code.
                    format = u16::from_le_bytes([b[24], b[25]]);
                }
                fmt = Some((format, channels, rate, bits));
            } else if id == b"data" {
                let (format, channels, rate, bits) = fmt.ok_or_else(|| bad("data before fmt"))?;
                if format != 1 || bits != 16 {
                    return Err(bad(&format!(
                        "only PCM s16 is supported (format {format}, {bits} bits); convert with sox"
                    )));
                }
                if channels == 0 || rate == 0 {
                    return Err(bad("zero channels or rate"));
                }
                // An unfinalised header says 0 (or a placeholder): use what is in the file.
                let avail = bytes.len() - body;
                let len = if declared == 0 || declared > avail {
                    avail
                } else {
                    declared
                };
                let data = &bytes[body..body + (len & !1)];
                let samples = data
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect();
                return Ok(Wav {
                    rate,
                    channels,
                    samples,
                });
            }
            pos = body + declared + (declared & 1);
        }
        Err(bad("no data chunk"))
    }

    /// Writes a canonical 44-byte-header PCM s16 WAV file.
    pub fn write(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let data_len = (self.samples.len() * 2) as u32;
        let mut out = Vec::with_capacity(44 + data_len as usize);
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data_len).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&self.channels.to_le_bytes());
        out.extend_from_slice(&self.rate.to_le_bytes());
        out.extend_from_slice(&(self.rate * self.channels as u32 * 2).to_le_bytes());
        out.extend_from_slice(&(self.channels * 2).to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_len.to_le_bytes());
        for s in &self.samples {
            out.extend_from_slice(&s.to_le_bytes());
        }
        let mut f =
            fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        f.write_all(&out)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Number of sample frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.samples.len() / self.channels.max(1) as usize
    }

    /// Duration in seconds.
    pub fn duration_secs(&self) -> f64 {
        self.frames() as f64 / self.rate as f64
    }

    /// Mono samples (channels averaged).
    pub fn to_mono(&self) -> Vec<i16> {
        if self.channels <= 1 {
            return self.samples.clone();
        }
        let ch = self.channels as usize;
        self.samples
            .chunks_exact(ch)
            .map(|f| (f.iter().map(|&s| s as i32).sum::<i32>() / ch as i32) as i16)
            .collect()
    }

    /// A slice of the mono signal from `start_ms` lasting `len_ms` (clamped to the signal).
    pub fn segment_ms(&self, start_ms: u64, len_ms: u64) -> Vec<i16> {
        let m = self.to_mono();
        let a = ((start_ms * self.rate as u64 / 1000) as usize).min(m.len());
        let b = (a + (len_ms * self.rate as u64 / 1000) as usize).min(m.len());
        m[a..b].to_vec()
    }
}

/// Reads a WAV file (panics on error). Shorthand for [`Wav::read`].
pub fn read_wav(path: impl AsRef<Path>) -> Wav {
    Wav::read(path)
}

/// Writes mono or interleaved PCM s16 samples as a WAV file.
pub fn write_wav(path: impl AsRef<Path>, rate: u32, channels: u16, samples: &[i16]) {
    Wav {
        rate,
        channels,
        samples: samples.to_vec(),
    }
    .write(path)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e} (is it installed?)"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Converts any audio file sox reads into PCM s16 WAV at `rate` Hz with `channels` channels
/// (sox's default high-quality resampler; dither off so silence stays digital silence).
pub fn convert_with_sox(
    input: impl AsRef<Path>,
    output: impl AsRef<Path>,
    rate: u32,
    channels: u16,
) {
    run(Command::new("sox")
        .arg("-D")
        .arg(input.as_ref())
        .args([
            "-r",
            &rate.to_string(),
            "-c",
            &channels.to_string(),
            "-b",
            "16",
            "-e",
            "signed-integer",
        ])
        .arg(output.as_ref()));
}

/// Like [`convert_with_sox`], keeping only `len_ms` from `start_ms` and appending
/// `pad_ms` of silence (`sox ... trim S L pad 0 P`).
pub fn convert_segment_with_sox(
    input: impl AsRef<Path>,
    output: impl AsRef<Path>,
    rate: u32,
    start_ms: u64,
    len_ms: Option<u64>,
    pad_ms: u64,
) {
    let mut cmd = Command::new("sox");
    cmd.arg("-D")
        .arg(input.as_ref())
        .args([
            "-r",
            &rate.to_string(),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
        ])
        .arg(output.as_ref())
        .args(["trim", &format!("{:.3}", start_ms as f64 / 1000.0)]);
    if let Some(l) = len_ms {
        cmd.arg(format!("{:.3}", l as f64 / 1000.0));
    }
    if pad_ms > 0 {
        cmd.args(["pad", "0", &format!("{:.3}", pad_ms as f64 / 1000.0)]);
    }
    run(&mut cmd);
}

/// 8 kHz G.711 µ-law and back to 16 kHz, as the caller's audio reaches the recognizer.
pub fn through_the_phone(dir: &Path, pcm: &[i16], rate: u32) -> Vec<i16> {
    let wav = dir.join("in.wav");
    let ulaw = dir.join("line.ul");
    let back = dir.join("back.wav");
    write_wav(&wav, rate, 1, pcm);
    let run = |args: &[&str]| {
        let out = Command::new("sox").args(args).output().expect("run sox");
        assert!(out.status.success(), "sox {args:?}: {out:?}");
    };
    let (w, u, b) = (
        wav.to_string_lossy(),
        ulaw.to_string_lossy(),
        back.to_string_lossy(),
    );
    run(&[
        "-D", &w, "-r", "8000", "-c", "1", "-e", "u-law", "-t", "ul", &u,
    ]);
    run(&[
        "-D",
        "-t",
        "ul",
        "-r",
        "8000",
        "-c",
        "1",
        &u,
        "-r",
        "16000",
        "-b",
        "16",
        "-e",
        "signed-integer",
        &b,
    ]);
    read_wav(&back).samples
}

/// Resamples mono samples from `from` Hz to `to` Hz with sox (through temp files).
pub fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to {
        return samples.to_vec();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("in.wav");
    let b = dir.path().join("out.wav");
    write_wav(&a, from, 1, samples);
    convert_with_sox(&a, &b, to, 1);
    Wav::read(&b).samples
}

/// Speech from espeak-ng (en-us), converted with sox to mono s16 at `rate` Hz. Note that
/// whisper hears espeak at 8 kHz badly (see FACTS.md): use it for signalling/robustness tests.
pub fn make_speech(text: &str, out_wav: impl AsRef<Path>, rate: u32) {
    let out_wav = out_wav.as_ref();
    let dir = tempfile::tempdir().expect("tempdir");
    let raw: PathBuf = dir.path().join("espeak.wav");
    run(Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&raw)
        .arg(text));
    convert_with_sox(&raw, out_wav, rate, 1);
}

/// `ms` milliseconds of digital silence at `rate` Hz.
pub fn silence(rate: u32, ms: u64) -> Vec<i16> {
    vec![0; (rate as u64 * ms / 1000) as usize]
}

/// A sine tone (amplitude 0..1 of full scale).
pub fn tone(rate: u32, freq_hz: f64, ms: u64, amplitude: f64) -> Vec<i16> {
    let n = (rate as u64 * ms / 1000) as usize;
    (0..n)
        .map(|i| {
            let v = (2.0 * std::f64::consts::PI * freq_hz * i as f64 / rate as f64).sin();
            (v * amplitude * 32767.0) as i16
        })
        .collect()
}

/// Root mean square in sample units (0..32768).
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| (s as f64) * (s as f64)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// RMS relative to full scale in dB (digital silence gives -inf).
pub fn rms_dbfs(samples: &[i16]) -> f64 {
    20.0 * (rms(samples) / 32768.0).log10()
}

/// Time in ms of the start of the first 10 ms window whose RMS reaches `threshold_dbfs`
/// (e.g. -40.0); `None` if the signal never gets that loud.
pub fn first_sound_onset(samples: &[i16], rate: u32, threshold_dbfs: f64) -> Option<f64> {
    let win = (rate as usize / 100).max(1);
    let limit = 32768.0 * 10f64.powf(threshold_dbfs / 20.0);
    let limit_sq_sum = limit * limit * win as f64;
    let mut i = 0;
    while i + win <= samples.len() {
        let e: f64 = samples[i..i + win]
            .iter()
            .map(|&s| (s as f64) * (s as f64))
            .sum();
        if e >= limit_sq_sum {
            return Some(i as f64 * 1000.0 / rate as f64);
        }
        i += win / 2; // half-window hop
    }
    None
}

/// Maximum normalised cross-correlation between `a` and `b` over lags in
/// `[-max_lag_samples, +max_lag_samples]`, normalised over each lag's overlap.
///
/// Returns `(coefficient, lag)` with the convention `a[n + lag] ≈ b[n]`: a positive lag means
/// `b`'s content shows up `lag` samples later in `a` (e.g. `a` = what was received, `b` = what
/// was sent). The coefficient is in [-1, 1]; identical signals give 1.0.
///
/// Coarse-to-fine: correlate 8× block-averaged signals over the whole window, then refine the
/// best few coarse peaks at full rate. 40 s at 8 kHz with ±1 s of lag takes well under a
/// second in a debug build.
pub fn normalized_cross_correlation_max(
    a: &[i16],
    b: &[i16],
    max_lag_samples: usize,
) -> (f64, i64) {
    if a.is_empty() || b.is_empty() {
        return (0.0, 0);
    }
    let af: Vec<f32> = a.iter().map(|&s| s as f32).collect();
    let bf: Vec<f32> = b.iter().map(|&s| s as f32).collect();
    let max_lag = max_lag_samples as i64;
    const D: usize = 8;

    let mut candidates: Vec<i64> = Vec::new();
    if max_lag > 4 * D as i64 && a.len() > 16 * D && b.len() > 16 * D {
        let ad = decimate(&af, D);
        let bd = decimate(&bf, D);
        let cmax = max_lag / D as i64 + 1;
        let coarse = ncc_range(&ad, &bd, -cmax, cmax, 1);
        // best three separated peaks
        let mut sorted = coarse.clone();
        sorted.sort_by(|x, y| y.0.partial_cmp(&x.0).unwrap_or(std::cmp::Ordering::Equal));
        for (_, l) in sorted {
            if candidates.iter().all(|&c| (c - l).abs() > 2) {
                candidates.push(l);
            }
            if candidates.len() == 3 {
                break;
            }
        }
        let mut best = (f64::MIN, 0i64);
        for c in candidates {
            let lo = (c * D as i64 - 2 * D as i64).max(-max_lag);
            let hi = (c * D as i64 + 2 * D as i64).min(max_lag);
            if lo > hi {
                continue;
            }
            for r in ncc_range(&af, &bf, lo, hi, 1) {
                if r.0 > best.0 {
                    best = r;
                }
            }
        }
        if best.0 > f64::MIN {
            return best;
        }
    }
    ncc_range(&af, &bf, -max_lag, max_lag, 1)
        .into_iter()
        .fold((f64::MIN, 0), |best, r| if r.0 > best.0 { r } else { best })
}

fn decimate(x: &[f32], d: usize) -> Vec<f32> {
    x.chunks(d)
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect()
}

/// (coefficient, lag) for each lag in lo..=hi, with `a[n + lag] ≈ b[n]`.
fn ncc_range(a: &[f32], b: &[f32], lo: i64, hi: i64, step: usize) -> Vec<(f64, i64)> {
    // prefix sums of squares for the overlap energies
    let pa = prefix_sq(a);
    let pb = prefix_sq(b);
    let mut out = Vec::with_capacity(((hi - lo) as usize / step) + 1);
    let mut lag = lo;
    while lag <= hi {
        // overlap: n in [n0, n1) with 0 <= n < b.len(), 0 <= n + lag < a.len()
        let n0 = 0i64.max(-lag) as usize;
        let n1 = (b.len() as i64).min(a.len() as i64 - lag);
        if n1 > n0 as i64 + 16 {
            let n1 = n1 as usize;
            let aoff = (n0 as i64 + lag) as usize;
            let aa = &a[aoff..aoff + (n1 - n0)];
            let bb = &b[n0..n1];
            let dot = dot(aa, bb);
            let ea = pa[aoff + (n1 - n0)] - pa[aoff];
            let eb = pb[n1] - pb[n0];
            let den = (ea * eb).sqrt();
            let r = if den > 0.0 { dot / den } else { 0.0 };
            out.push((r, lag));
        }
        lag += step as i64;
    }
    out
}

fn prefix_sq(x: &[f32]) -> Vec<f64> {
    let mut p = Vec::with_capacity(x.len() + 1);
    let mut acc = 0f64;
    p.push(0.0);
    for &v in x {
        acc += (v as f64) * (v as f64);
        p.push(acc);
    }
    p
}

/// Dot product, unrolled in 8 independent f32 lanes (fast enough unoptimised), summed in f64.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (ac, bc) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    let mut lanes = [0f32; 8];
    let mut total = 0f64;
    for (k, (x, y)) in ac.zip(bc).enumerate() {
        lanes[0] += x[0] * y[0];
        lanes[1] += x[1] * y[1];
        lanes[2] += x[2] * y[2];
        lanes[3] += x[3] * y[3];
        lanes[4] += x[4] * y[4];
        lanes[5] += x[5] * y[5];
        lanes[6] += x[6] * y[6];
        lanes[7] += x[7] * y[7];
        // flush to f64 now and then to keep f32 accumulation error small
        if k % 512 == 511 {
            total += lanes.iter().map(|&v| v as f64).sum::<f64>();
            lanes = [0f32; 8];
        }
    }
    total += lanes.iter().map(|&v| v as f64).sum::<f64>();
    for (x, y) in ar.iter().zip(br) {
        total += (*x as f64) * (*y as f64);
    }
    total
}

/// Runs `soxi -D` style duration query through sox itself: duration of any audio file in seconds.
pub fn sox_duration_secs(path: impl AsRef<Path>) -> f64 {
    let out = run(Command::new("soxi").arg("-D").arg(path.as_ref()));
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("soxi -D output {out:?}: {e}"))
}
