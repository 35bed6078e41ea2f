//! Endpointing: turns per-window speech probabilities (Silero VAD, one per 32 ms of 16 kHz audio)
//! into speech start and end decisions. Sans-I/O: positions are in windows, not wall time.
//!
//! - Speech starts once `min_speech` of windows over the threshold accumulate with no gap longer
//!   than the hang-over (a cough is shorter and is dropped).
//! - It ends after `endpoint_silence` of windows under a lower threshold (hysteresis), so
//!   short pauses mid-sentence do not end the turn.
//! - A turn longer than `max_utterance` is cut there.
//!
//! The utterance reported starts a little before the first speech window (a pad, so whisper
//! hears the onset) and ends a little after the last one.

/// One VAD window: 512 samples at 16 kHz.
pub use crate::speech::vad::WINDOW_SAMPLES;
pub const WINDOW_MS: u32 = 32;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointConfig {
    pub threshold: f32,
    pub min_speech_ms: u32,
    pub endpoint_silence_ms: u32,
    pub max_utterance_ms: u32,
    /// Audio kept before the first and after the last speech window.
    pub pad_ms: u32,
}

impl EndpointConfig {
    fn windows(ms: u32) -> u64 {
        u64::from(ms.div_ceil(WINDOW_MS)).max(1)
    }
}

/// What the endpointer decided after a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointEvent {
    /// The caller is speaking (enough speech seen). `start_sample` is where the utterance begins
    /// (16 kHz sample index since the stream began, pad included).
    SpeechStarted { start_sample: u64 },
    /// The caller paused long enough for the trailing pad: if the turn ends at this pause,
    /// [`EndpointEvent::SpeechEnded`] will report this same span, so recognition (and more)
    /// can start on it now, speculatively. Once per pause; never after the turn ended.
    Paused { start_sample: u64, end_sample: u64 },
    /// The turn is over: the utterance is `start_sample..end_sample`.
    SpeechEnded {
        start_sample: u64,
        end_sample: u64,
        /// Cut at `max_utterance` rather than by silence.
        cut: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Silence,
    /// Speech-like windows since `first`, `voiced` of them over the threshold.
    Maybe {
        first: u64,
        voiced: u64,
        last_voiced: u64,
    },
    Speaking {
        first: u64,
        last_voiced: u64,
    },
}

#[derive(Debug, Clone)]
pub struct Endpointer {
    cfg: EndpointConfig,
    state: State,
    /// Windows handled so far.
    windows: u64,
}

impl Endpointer {
    pub fn new(cfg: EndpointConfig) -> Self {
        Self {
            cfg,
            state: State::Silence,
            windows: 0,
        }
    }

    /// True while the caller is in a turn (speech started, not yet ended).
    pub fn in_speech(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    /// True while speech-like windows are being weighed (not yet confirmed as a start).
    pub fn maybe_speech(&self) -> bool {
        matches!(self.state, State::Maybe { .. })
    }

    /// Where the utterance in progress would end if the caller stopped now (the sample span's
    /// end that `Paused` and `SpeechEnded` report); None outside a turn.
    pub fn pending_end(&self) -> Option<u64> {
        match self.state {
            State::Speaking { last_voiced, .. } => Some(self.end_sample(last_voiced)),
            _ => None,
        }
    }

    /// Windows handled so far.
    pub fn windows(&self) -> u64 {
        self.windows
    }

    /// Changes how much speech confirms a start (shorter while the agent talks, for barge-in).
    pub fn set_min_speech_ms(&mut self, ms: u32) {
        self.cfg.min_speech_ms = ms;
    }

    /// Changes the silence that ends a turn (longer while a number or a message is awaited).
    pub fn set_endpoint_silence_ms(&mut self, ms: u32) {
        self.cfg.endpoint_silence_ms = ms;
    }

    /// Ends the turn at the pause in progress, because what was said is complete (the digits
    /// asked for, a yes): the span [`EndpointEvent::Paused`] reported. None outside a pause.
    pub fn end_at_pause(&mut self) -> Option<EndpointEvent> {
        let State::Speaking { first, last_voiced } = self.state else {
            return None;
        };
        let pad = EndpointConfig::windows(self.cfg.pad_ms);
        if self.windows < last_voiced + pad + 2 {
            return None;
        }
        self.state = State::Silence;
        Some(EndpointEvent::SpeechEnded {
            start_sample: self.start_sample(first),
            end_sample: self.end_sample(last_voiced),
            cut: false,
        })
    }

    /// Forgets any speech in progress (e.g. after the agent took the turn by DTMF).
    pub fn reset(&mut self) {
        self.state = State::Silence;
    }

    fn start_sample(&self, first: u64) -> u64 {
        let pad = EndpointConfig::windows(self.cfg.pad_ms);
        first.saturating_sub(pad) * WINDOW_SAMPLES as u64
    }

    fn end_sample(&self, last_voiced: u64) -> u64 {
        let pad = EndpointConfig::windows(self.cfg.pad_ms);
        (last_voiced + 1 + pad).min(self.windows) * WINDOW_SAMPLES as u64
    }

    /// Handles the probability of the next window.
    pub fn handle_window(&mut self, probability: f32) -> Option<EndpointEvent> {
        let i = self.windows;
        self.windows += 1;
        let voiced = probability >= self.cfg.threshold;
        // Hysteresis: once speaking, a window counts as silence only well under the threshold.
        let quiet = probability < (self.cfg.threshold - 0.15).max(0.05);
        let silence = EndpointConfig::windows(self.cfg.endpoint_silence_ms);
        // A gap this long inside a candidate start resets it (two clicks are not speech).
        let start_gap = 4;
        match self.state {
            State::Silence => {
                if voiced {
                    self.state = State::Maybe {
                        first: i,
                        voiced: 1,
                        last_voiced: i,
                    };
                    return self.confirm_start();
                }
                None
            }
            State::Maybe {
                first,
                voiced: n,
                last_voiced,
            } => {
                if voiced {
                    self.state = State::Maybe {
                        first,
                        voiced: n + 1,
                        last_voiced: i,
                    };
                    self.confirm_start()
                } else {
                    if i - last_voiced >= start_gap {
                        self.state = State::Silence;
                    }
                    None
                }
            }
            State::Speaking { first, last_voiced } => {
                let last_voiced = if quiet { last_voiced } else { i };
                self.state = State::Speaking { first, last_voiced };
                let max = EndpointConfig::windows(self.cfg.max_utterance_ms);
                let pad = EndpointConfig::windows(self.cfg.pad_ms);
                if i + 1 - last_voiced > silence {
                    self.state = State::Silence;
                    return Some(EndpointEvent::SpeechEnded {
                        start_sample: self.start_sample(first),
                        end_sample: self.end_sample(last_voiced),
                        cut: false,
                    });
                }
                if i + 1 - first >= max {
                    self.state = State::Silence;
                    return Some(EndpointEvent::SpeechEnded {
                        start_sample: self.start_sample(first),
                        end_sample: self.windows * WINDOW_SAMPLES as u64,
                        cut: true,
                    });
                }
                // The pad after the last voiced window is complete: the span is final unless
                // the caller goes on.
                if i - last_voiced == pad + 1 && pad + 1 < silence {
                    return Some(EndpointEvent::Paused {
                        start_sample: self.start_sample(first),
                        end_sample: self.end_sample(last_voiced),
                    });
                }
                None
            }
        }
    }

    fn confirm_start(&mut self) -> Option<EndpointEvent> {
        if let State::Maybe {
            first,
            voiced,
            last_voiced,
        } = self.state
        {
            if voiced >= EndpointConfig::windows(self.cfg.min_speech_ms) {
                self.state = State::Speaking { first, last_voiced };
                return Some(EndpointEvent::SpeechStarted {
                    start_sample: self.start_sample(first),
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EndpointConfig {
        EndpointConfig {
            threshold: 0.5,
            min_speech_ms: 192,       // 6 windows
            endpoint_silence_ms: 640, // 20 windows
            max_utterance_ms: 10_016, // 313 windows
            pad_ms: 64,               // 2 windows
        }
    }

    /// Feeds `(probability, windows)` runs; returns (window index, event) pairs.
    fn run_all(e: &mut Endpointer, runs: &[(f32, u64)]) -> Vec<(u64, EndpointEvent)> {
        let mut out = Vec::new();
        for &(p, n) in runs {
            for _ in 0..n {
                let i = e.windows();
                if let Some(ev) = e.handle_window(p) {
                    out.push((i, ev));
                }
            }
        }
        out
    }

    /// Turn starts and ends only (the pauses have their own test).
    fn run(e: &mut Endpointer, runs: &[(f32, u64)]) -> Vec<(u64, EndpointEvent)> {
        run_all(e, runs)
            .into_iter()
            .filter(|(_, ev)| !matches!(ev, EndpointEvent::Paused { .. }))
            .collect()
    }

    #[test]
    fn a_pause_reports_the_span_the_end_will_have_once_per_pause() {
        let mut e = Endpointer::new(cfg());
        // Speech, a 400 ms pause (the caller goes on), speech, then the end.
        let ev = run_all(&mut e, &[(0.9, 30), (0.1, 12), (0.9, 30), (0.1, 25)]);
        let kinds: Vec<(u64, EndpointEvent)> = ev.clone();
        assert_eq!(
            kinds,
            vec![
                (5, EndpointEvent::SpeechStarted { start_sample: 0 }),
                // Last voiced window 29, pad 2: the pad is complete at window 32.
                (
                    32,
                    EndpointEvent::Paused {
                        start_sample: 0,
                        end_sample: 32 * 512
                    }
                ),
                (
                    74,
                    EndpointEvent::Paused {
                        start_sample: 0,
                        end_sample: 74 * 512
                    }
                ),
                (
                    91,
                    EndpointEvent::SpeechEnded {
                        start_sample: 0,
                        end_sample: 74 * 512,
                        cut: false
                    }
                ),
            ]
        );
        // A pause as long as the endpoint silence itself has nothing to speculate on.
        let mut short = Endpointer::new(EndpointConfig {
            endpoint_silence_ms: 96,
            ..cfg()
        });
        let ev = run_all(&mut short, &[(0.9, 30), (0.0, 10)]);
        assert!(
            !ev.iter()
                .any(|(_, e)| matches!(e, EndpointEvent::Paused { .. })),
            "{ev:?}"
        );
    }

    #[test]
    fn a_sentence_starts_after_min_speech_and_ends_after_the_silence() {
        let mut e = Endpointer::new(cfg());
        let ev = run(&mut e, &[(0.0, 10), (0.9, 50), (0.0, 30)]);
        assert_eq!(
            ev,
            vec![
                (
                    15,
                    EndpointEvent::SpeechStarted {
                        start_sample: 8 * 512
                    }
                ),
                (
                    79,
                    EndpointEvent::SpeechEnded {
                        start_sample: 8 * 512,
                        end_sample: 62 * 512,
                        cut: false
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_cough_shorter_than_min_speech_is_ignored() {
        let mut e = Endpointer::new(cfg());
        let ev = run(
            &mut e,
            &[(0.0, 10), (0.9, 4), (0.0, 40), (0.8, 3), (0.0, 40)],
        );
        assert!(ev.is_empty(), "{ev:?}");
        assert!(!e.in_speech());
    }

    #[test]
    fn pauses_shorter_than_the_endpoint_silence_keep_the_turn_open() {
        let mut e = Endpointer::new(cfg());
        // Two phrases with a 400 ms pause (12 windows) between them: one turn.
        let ev = run(&mut e, &[(0.9, 30), (0.1, 12), (0.9, 30), (0.1, 25)]);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(
            matches!(ev[1].1, EndpointEvent::SpeechEnded { end_sample, .. } if end_sample == 74 * 512)
        );
    }

    #[test]
    fn hysteresis_keeps_borderline_windows_inside_speech() {
        let mut e = Endpointer::new(cfg());
        // 0.4 is under the start threshold but above the end threshold (0.35).
        let ev = run(&mut e, &[(0.9, 10), (0.4, 40), (0.0, 25)]);
        assert_eq!(ev.len(), 2);
        assert!(
            matches!(ev[1].1, EndpointEvent::SpeechEnded { end_sample, .. } if end_sample == 52 * 512)
        );
    }

    #[test]
    fn a_complete_answer_ends_at_the_pause_with_the_span_the_pause_reported() {
        let mut e = Endpointer::new(cfg());
        let events = run_all(&mut e, &[(0.9, 20), (0.0, 8)]);
        let paused = events.iter().find_map(|(_, ev)| match ev {
            EndpointEvent::Paused {
                start_sample,
                end_sample,
            } => Some((*start_sample, *end_sample)),
            _ => None,
        });
        let Some((start, end)) = paused else {
            panic!("no pause in {events:?}");
        };
        assert_eq!(
            e.end_at_pause(),
            Some(EndpointEvent::SpeechEnded {
                start_sample: start,
                end_sample: end,
                cut: false
            })
        );
        assert!(!e.in_speech());
        // Mid-speech there is no pause to end at.
        let mut e = Endpointer::new(cfg());
        run(&mut e, &[(0.9, 20)]);
        assert_eq!(e.end_at_pause(), None);
    }

    #[test]
    fn a_monologue_is_cut_at_max_utterance() {
        let mut e = Endpointer::new(cfg());
        let ev = run(&mut e, &[(0.9, 400)]);
        assert!(
            matches!(ev[1], (312, EndpointEvent::SpeechEnded { cut: true, .. })),
            "{ev:?}"
        );
        // Speech that goes on starts a new turn.
        assert!(
            matches!(ev[2], (318, EndpointEvent::SpeechStarted { .. })),
            "{ev:?}"
        );
        assert_eq!(ev.len(), 3);
    }
}
