//! Packet-loss concealment by pitch-period repetition with fade-out (in the spirit of G.711
//! Appendix I), used for all three codecs at their own sample rate.
//!
//! On the first lost sample the last ~40 ms of good audio are searched for the pitch period
//! (normalized autocorrelation over 2.5-15 ms lags); the last period is then repeated, at full
//! level for the first 10 ms, fading linearly to silence by 60 ms (a longer gap is silence, as a
//! repeated buzz is worse than a gap). When audio resumes, the first 2.5 ms are cross-faded from
//! the continued concealment into the real signal so there is no click.

pub(crate) struct Concealer {
    rate: usize,
    /// The most recent output (real or concealed), newest last.
    history: Vec<i16>,
    history_len: usize,
    /// One pitch period copied out of the history when a loss starts.
    period: Vec<i16>,
    phase: usize,
    /// Samples concealed since the last good sample.
    lost: usize,
    /// Whether any real audio has been seen (before that, concealment is plain silence).
    primed: bool,
}

impl Concealer {
    pub(crate) fn new(sample_rate: u32) -> Self {
        let rate = sample_rate as usize;
        let history_len = rate * 40 / 1000;
        Concealer {
            rate,
            history: Vec::with_capacity(history_len * 2),
            history_len,
            period: Vec::new(),
            phase: 0,
            lost: 0,
            primed: false,
        }
    }

    fn remember(&mut self, samples: &[i16]) {
        self.history.extend_from_slice(samples);
        if self.history.len() > self.history_len {
            let cut = self.history.len() - self.history_len;
            self.history.drain(..cut);
        }
    }

    /// Takes real decoded audio (cross-fading its start if it ends a concealment) and passes it
    /// on in place.
    pub(crate) fn good(&mut self, samples: &mut [i16]) {
        if self.lost > 0 && self.primed && !self.period.is_empty() {
            let fade = (self.rate / 400).min(samples.len()); // 2.5 ms
            for (i, s) in samples.iter_mut().take(fade).enumerate() {
                let w = (i + 1) as f32 / (fade + 1) as f32;
                let c = f32::from(self.next_concealed_sample());
                *s = (f32::from(*s) * w + c * (1.0 - w)) as i16;
            }
        }
        self.lost = 0;
        self.primed = true;
        self.remember(samples);
    }

    /// Appends `n` concealment samples to `out`.
    pub(crate) fn conceal(&mut self, n: usize, out: &mut Vec<i16>) {
        if !self.primed {
            out.resize(out.len() + n, 0);
            return;
        }
        if self.lost == 0 {
            self.start_loss();
        }
        let start = out.len();
        for _ in 0..n {
            let s = self.next_concealed_sample();
            out.push(s);
            self.lost += 1;
        }
        self.remember(&out[start..]);
    }

    #[cfg(test)]
    /// Whether a loss has run long enough that the output is silence anyway.
    pub(crate) fn faded_out(&self) -> bool {
        !self.primed || self.lost >= self.rate * 60 / 1000
    }

    fn start_loss(&mut self) {
        let pitch = self.estimate_pitch();
        let h = &self.history;
        self.period.clear();
        if pitch > 0 && h.len() >= pitch {
            self.period.extend_from_slice(&h[h.len() - pitch..]);
        }
        self.phase = 0;
    }

    fn gain(&self) -> f32 {
        let full = self.rate * 10 / 1000;
        let zero = self.rate * 60 / 1000;
        if self.lost <= full {
            1.0
        } else if self.lost >= zero {
            0.0
        } else {
            1.0 - (self.lost - full) as f32 / (zero - full) as f32
        }
    }

    fn next_concealed_sample(&mut self) -> i16 {
        if self.period.is_empty() {
            return 0;
        }
        let s = self.period[self.phase % self.period.len()];
        self.phase = (self.phase + 1) % self.period.len();
        (f32::from(s) * self.gain()) as i16
    }

    /// The lag in 2.5..=15 ms that best predicts the last 20 ms of history from the audio one
    /// lag earlier; falls back to the longest lag for unvoiced sound.
    fn estimate_pitch(&self) -> usize {
        let h = &self.history;
        let min_lag = self.rate / 400;
        let max_lag = self.rate * 15 / 1000;
        let window = self.rate / 50;
        if h.len() < window + min_lag {
            return h.len().min(max_lag);
        }
        let max_lag = max_lag.min(h.len() - window);
        let tail = &h[h.len() - window..];
        let energy_tail: f64 = tail.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let mut best = (max_lag, f64::MIN);
        for lag in min_lag..=max_lag {
            let past = &h[h.len() - window - lag..h.len() - lag];
            let (mut xy, mut yy) = (0f64, 0f64);
            for (&x, &y) in tail.iter().zip(past) {
                xy += f64::from(x) * f64::from(y);
                yy += f64::from(y) * f64::from(y);
            }
            let denom = (energy_tail * yy).sqrt();
            let score = if denom > 0.0 { xy / denom } else { 0.0 };
            if score > best.1 {
                best = (lag, score);
            }
        }
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telephony::media::test_util::rms;

    fn tone(n: usize, period: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (6000.0 * (2.0 * std::f32::consts::PI * i as f32 / period as f32).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn concealment_continues_a_voiced_signal_then_fades_to_silence() {
        let mut plc = Concealer::new(8000);
        let mut audio = tone(320, 57); // ~140 Hz voice-like period
        plc.good(&mut audio);
        let mut lost = Vec::new();
        plc.conceal(160, &mut lost);
        // The first 10 ms continue the waveform at full level, in phase.
        let expected = tone(320 + 80, 57);
        let err: f64 = lost[..80]
            .iter()
            .zip(&expected[320..])
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
            .sum::<f64>()
            / 80.0;
        assert!(err < 400.0, "concealment out of phase: mean error {err}");
        assert!(rms(&lost) > 2000.0);
        let mut later = Vec::new();
        plc.conceal(480, &mut later);
        assert!(plc.faded_out());
        assert!(
            rms(&later[..160]) > 500.0,
            "still fading 20-40 ms into the loss"
        );
        assert_eq!(rms(&later[320..]), 0.0, "silence after 60 ms of loss");
    }

    #[test]
    fn concealment_before_any_audio_is_silence() {
        let mut plc = Concealer::new(16000);
        let mut out = Vec::new();
        plc.conceal(320, &mut out);
        assert_eq!(out, vec![0; 320]);
    }
}
