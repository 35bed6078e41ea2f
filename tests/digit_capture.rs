//! Digit capture, measured as callers would give numbers: order numbers and phone numbers read
//! out by the bundled Piper voice (digit by digit, "oh" for zero, "double", in groups with
//! pauses, after "my number is", with a correction), through the telephone band (8 kHz
//! G.711 µ-law, by sox) and back to 16 kHz, recognised by whisper as the agent does while a
//! digits slot is open, and read by the agent's own rules (`agent::spoken::digits`). The
//! share captured exactly is printed per style beside plain recognition (no digits mode).
//!
//! Slow (real models, about 120 recognitions): one test, marked `slow_`.

#[path = "common/audio.rs"]
mod audio;
mod common;

use std::path::PathBuf;

use edgevoice::agent::spoken::{self, DigitSpan};
use edgevoice::speech::{
    pcm_i16_to_f32, Listening, PiperConfig, PiperSynthesizer, SpeechRecognizer, SpeechSynthesizer,
    WhisperConfig, WhisperRecognizer, ONNXRUNTIME_FILE, TTS_VOICE_FILE, WHISPER_MODEL_FILE,
};

const DIGIT_WORDS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

fn models_dir() -> PathBuf {
    common::shared_dir().join("models")
}

/// A deterministic stream of numbers (the same callers every run).
struct Lcg(u64);

impl Lcg {
    fn digit(&mut self) -> u8 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % 10) as u8
    }

    fn number(&mut self, len: usize) -> String {
        (0..len).map(|_| char::from(b'0' + self.digit())).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// "four, two, seven, nine".
    Digits,
    /// Zero said as "oh".
    Oh,
    /// Repeated digits as "double five".
    Double,
    /// "My order number is …" / "You can reach me on …".
    LeadIn,
    /// Groups with a pause of 700–1000 ms between them.
    Pauses,
    /// "4 2 7 8, sorry, 4 2 7 9".
    Correction,
}

const STYLES: [Style; 6] = [
    Style::Digits,
    Style::Oh,
    Style::Double,
    Style::LeadIn,
    Style::Pauses,
    Style::Correction,
];

/// One caller: what they mean, and what they say (pieces with a pause after each).
struct Caller {
    style: Style,
    digits: String,
    span: DigitSpan,
    pieces: Vec<(String, u64)>,
}

fn words(digits: &str, oh: bool, double: bool) -> String {
    let d: Vec<u8> = digits.bytes().map(|b| b - b'0').collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < d.len() {
        let word = if oh && d[i] == 0 {
            "oh"
        } else {
            DIGIT_WORDS[d[i] as usize]
        };
        if double && i + 1 < d.len() && d[i + 1] == d[i] {
            out.push(format!("double {word}"));
            i += 2;
        } else {
            out.push(word.to_owned());
            i += 1;
        }
    }
    out.join(", ")
}

/// Phone numbers in groups of 5, 3 and 3 (an 11-digit UK number).
fn groups(digits: &str) -> Vec<&str> {
    if digits.len() == 11 {
        vec![&digits[..5], &digits[5..8], &digits[8..]]
    } else {
        vec![&digits[..2], &digits[2..]]
    }
}

fn callers() -> Vec<Caller> {
    let mut rng = Lcg(20261206);
    let mut out = Vec::new();
    for i in 0..60 {
        let style = STYLES[i % STYLES.len()];
        let phone = i % 2 == 1;
        let (digits, span) = if phone {
            (
                format!("07{}", rng.number(9)),
                DigitSpan { min: 10, max: 13 },
            )
        } else {
            (rng.number(4), DigitSpan { min: 4, max: 4 })
        };
        // Numbers with something for the style to show: a zero for "oh", a pair for "double".
        let digits = match style {
            Style::Oh if !digits.contains('0') => format!("{}0{}", &digits[..1], &digits[2..]),
            Style::Double => {
                let b = digits.as_bytes();
                format!(
                    "{}{}{}",
                    &digits[..1],
                    b[1] as char,
                    &digits[1..digits.len() - 1]
                )
            }
            _ => digits,
        };
        let pieces = match style {
            Style::Digits => vec![(words(&digits, false, false), 0)],
            Style::Oh => vec![(words(&digits, true, false), 0)],
            Style::Double => vec![(words(&digits, true, true), 0)],
            Style::LeadIn => {
                let lead = if phone {
                    "You can reach me on"
                } else {
                    "My order number is"
                };
                vec![(format!("{lead} {}.", words(&digits, true, false)), 0)]
            }
            Style::Pauses => {
                let g = groups(&digits);
                let n = g.len();
                g.into_iter()
                    .enumerate()
                    .map(|(k, part)| {
                        let pause = if k + 1 < n { 700 + 150 * k as u64 } else { 0 };
                        (format!("{},", words(part, true, false)), pause)
                    })
                    .collect()
            }
            Style::Correction => {
                let last = digits.as_bytes()[digits.len() - 1] - b'0';
                let wrong = format!("{}{}", &digits[..digits.len() - 1], (last + 1) % 10);
                vec![(
                    format!(
                        "{}. Sorry, {}.",
                        words(&wrong, false, false),
                        words(&digits, false, false)
                    ),
                    0,
                )]
            }
        };
        out.push(Caller {
            style,
            digits,
            span,
            pieces,
        });
    }
    out
}

#[test]
fn slow_numbers_read_out_as_callers_do_are_captured_exactly() {
    let models = models_dir();
    let piper = PiperSynthesizer::load(PiperConfig::new(
        models.join(TTS_VOICE_FILE),
        models.join(ONNXRUNTIME_FILE),
    ))
    .expect("load piper");
    let whisper = WhisperRecognizer::load(WhisperConfig::new(models.join(WHISPER_MODEL_FILE)))
        .expect("load whisper");
    let mut session = whisper.session().expect("whisper session");
    let dir = tempfile::tempdir().unwrap();

    let callers = callers();
    // (style, captured in digits mode, captured in plain mode)
    let mut results: Vec<(Style, bool, bool)> = Vec::new();
    let mut misses = Vec::new();
    for caller in &callers {
        let mut pcm: Vec<i16> = Vec::new();
        let mut rate = 22_050;
        for (text, pause_ms) in &caller.pieces {
            let s = piper.synthesize(text).expect("synthesize");
            rate = s.sample_rate;
            pcm.extend(&s.pcm);
            pcm.extend(audio::silence(rate, *pause_ms));
        }
        // The endpointer's pad around the speech.
        let mut padded = audio::silence(rate, 200);
        padded.extend(pcm);
        padded.extend(audio::silence(rate, 200));
        let heard = pcm_i16_to_f32(&audio::through_the_phone(dir.path(), &padded, rate));
        let mut captured = |listening| {
            let text = session
                .transcribe_for(&heard, listening)
                .expect("transcribe")
                .text;
            let got = spoken::digits(&text, caller.span);
            (got.as_deref() == Some(caller.digits.as_str()), text, got)
        };
        let (digits_ok, digits_text, digits_got) = captured(Listening::Digits);
        let (plain_ok, _, _) = captured(Listening::Speech);
        if !digits_ok {
            misses.push(format!(
                "{:?} {}: said {:?}, heard {digits_text:?}, read {digits_got:?}",
                caller.style,
                caller.digits,
                caller
                    .pieces
                    .iter()
                    .map(|(t, _)| t.as_str())
                    .collect::<Vec<_>>()
                    .join(" … ")
            ));
        }
        results.push((caller.style, digits_ok, plain_ok));
    }

    eprintln!(
        "\ndigit capture, {} callers (Piper voice, 8 kHz µ-law):",
        callers.len()
    );
    eprintln!(
        "{:<12} {:>3} {:>14} {:>14}",
        "style", "n", "digits mode", "plain"
    );
    let rate = |v: &[(Style, bool, bool)], pick: fn(&(Style, bool, bool)) -> bool| {
        100.0 * v.iter().filter(|r| pick(r)).count() as f64 / v.len().max(1) as f64
    };
    for style in STYLES {
        let v: Vec<_> = results.iter().copied().filter(|r| r.0 == style).collect();
        eprintln!(
            "{:<12} {:>3} {:>13.0}% {:>13.0}%",
            format!("{style:?}"),
            v.len(),
            rate(&v, |r| r.1),
            rate(&v, |r| r.2)
        );
    }
    let digits_rate = rate(&results, |r| r.1);
    eprintln!(
        "{:<12} {:>3} {:>13.1}% {:>13.1}%",
        "all",
        results.len(),
        digits_rate,
        rate(&results, |r| r.2)
    );
    for m in &misses {
        eprintln!("  missed: {m}");
    }
    // The goal is 98 %; this floor is what was measured (see the closing note), so a change
    // that loses digits fails here.
    assert!(
        digits_rate >= FLOOR_PERCENT,
        "{digits_rate:.1}% captured exactly, under {FLOOR_PERCENT}%:\n{}",
        misses.join("\n")
    );
}

const FLOOR_PERCENT: f64 = 70.0;
