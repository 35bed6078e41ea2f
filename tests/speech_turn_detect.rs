//! Semantic end of turn (Smart Turn v3.2 on ONNX Runtime, ../shared/models) on a labelled set
//! built here: caller utterances that are complete and ones that stop mid-thought, spoken by the
//! bundled Piper voice, scored on clean 16 kHz audio and after the telephone path a caller's
//! audio takes (8 kHz, G.711 µ-law with the daemon's codec, back up to 16 kHz with its
//! resampler).
//!
//! Each mid-thought turn is spoken three ways, because a synthetic voice does not pause
//! mid-sentence the way a person does:
//! - "as typed": the prefix alone; espeak-ng gives its last word a sentence's falling pitch, as
//!   if the caller had finished;
//! - "comma": the prefix with a trailing comma, the rising continuation pitch of a pause;
//! - "cut": the whole sentence's audio cut after the prefix's words (mid-sentence pitch and
//!   timing, then silence), the closest to a caller who stops to think.
//!
//! Every clip is trimmed where its speech ends and given the same silence after it: 200 ms
//! (Pipecat's VAD pause before it asks Smart Turn) and 600 ms (this daemon's endpointer pause).
//! Without that, a rendering's own tail (or a cut's lack of one) decides more than the words.
//!
//! Asserted: on clean 16 kHz audio with the 200 ms pause, the model's own threshold (0.5) gets
//! at least 85 % right for every rendering. Reported (the measurement): the 8 kHz accuracy, AUC, the score
//! distributions, the best threshold per path, and each clip's scores.
//! `EDGEVOICE_TURN_DUMP=<dir>` writes every clip, our features and our score for an outside
//! reference run (bench/reference/smart_turn_ref.py is Pipecat's own path).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgevoice::speech::{
    pcm_i16_to_f32, PiperConfig, PiperSynthesizer, SmartTurn, SmartTurnConfig, SpeechSynthesizer,
    TurnCompletion, ONNXRUNTIME_FILE, TTS_VOICE_FILE, TURN_MODEL_FILE,
};
use edgevoice::telephony::codec::Codec;
use edgevoice::telephony::media::{AudioDecoder, AudioEncoder, Resampler};

/// What a caller says when their turn is over.
const COMPLETE: &[&str] = &[
    "What are your opening hours?",
    "My order number is four two seven nine.",
    "I'd like to speak to someone about my bill.",
    "Can you tell me where my parcel is?",
    "I want to cancel my subscription.",
    "Yes, that's right.",
    "No, thank you.",
    "My name is Sarah Jones.",
    "Call me back on oh seven seven nine four, one two three, four five six.",
    "I need to change my delivery address.",
    "Is the shop open on Sunday?",
    "That's all, thanks very much.",
    "I've been charged twice this month.",
    "Could you send me a new password, please?",
    "My postcode is S W one A, one A A.",
    "I'd like to book an appointment for Tuesday.",
    "The payment didn't go through.",
    "How much does the premium plan cost?",
    "Please transfer me to billing.",
    "I never received my refund.",
    "Can I pay by card?",
    "Thanks, goodbye.",
];

/// What a caller says before pausing mid-thought, and the whole sentence it is the start of
/// (the "cut" rendering takes its audio from the whole sentence).
const MID_THOUGHT: &[(&str, &str)] = &[
    (
        "My order number is four two",
        "My order number is four two seven nine.",
    ),
    ("I'd like to, um", "I'd like to, um, check my balance."),
    (
        "Can you tell me the",
        "Can you tell me the way to the station?",
    ),
    (
        "Call me back on oh seven seven",
        "Call me back on oh seven seven nine four.",
    ),
    ("What are your opening", "What are your opening hours?"),
    (
        "I'd like to speak to someone about",
        "I'd like to speak to someone about my bill.",
    ),
    ("I want to cancel my", "I want to cancel my subscription."),
    (
        "My name is Sarah and I",
        "My name is Sarah and I live in Leeds.",
    ),
    (
        "I need to change my delivery",
        "I need to change my delivery address.",
    ),
    (
        "The reason I'm calling is",
        "The reason I'm calling is my broken boiler.",
    ),
    (
        "I was wondering if you could",
        "I was wondering if you could help me.",
    ),
    (
        "My postcode is S W one",
        "My postcode is S W one A, one A A.",
    ),
    (
        "I've been charged twice for the",
        "I've been charged twice for the same order.",
    ),
    (
        "Could you send me a new",
        "Could you send me a new password, please?",
    ),
    (
        "I'd like to book an appointment for",
        "I'd like to book an appointment for Tuesday.",
    ),
    (
        "The payment didn't go through because",
        "The payment didn't go through because my card expired.",
    ),
    ("How much does the", "How much does the premium plan cost?"),
    (
        "Please transfer me to the",
        "Please transfer me to the billing team.",
    ),
    ("I never received my", "I never received my refund."),
    (
        "So basically what happened was",
        "So basically what happened was the engineer never came.",
    ),
    (
        "And then the engineer said that",
        "And then the engineer said that it was fixed.",
    ),
    ("Well, I think, uh", "Well, I think, uh, that's everything."),
];

/// Silence after the words when the detector is asked (every clip is first trimmed to where
/// its speech ends, so no rendering brings a tail of its own): Pipecat's VAD pause before Smart
/// Turn runs (asserted), and this daemon's endpointer pause (`endpoint_silence_ms`, reported).
const TRAILING_SILENCES: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(600)];

fn models_dir() -> PathBuf {
    common::shared_dir().join("models")
}

fn smart_turn() -> SmartTurn {
    let models = models_dir();
    let t = Instant::now();
    let model = SmartTurn::load(SmartTurnConfig::new(
        models.join(TURN_MODEL_FILE),
        models.join(ONNXRUNTIME_FILE),
    ))
    .expect("load Smart Turn");
    eprintln!("Smart Turn loaded (1 thread) in {:?}", t.elapsed());
    model
}

fn piper() -> PiperSynthesizer {
    let models = models_dir();
    PiperSynthesizer::load(PiperConfig::new(
        models.join(TTS_VOICE_FILE),
        models.join(ONNXRUNTIME_FILE),
    ))
    .expect("load Piper")
}

/// One utterance as the detector gets it: clean 16 kHz, and through the telephone path.
struct Clip {
    text: String,
    complete: bool,
    /// The speech, trimmed where it ends, at the voice's rate.
    speech: Vec<i16>,
    rate: u32,
}

impl Clip {
    /// With `silence` after the words: clean 16 kHz, and through the telephone path.
    fn paths(&self, silence: Duration) -> (Vec<f32>, Vec<f32>) {
        let mut pcm = self.speech.clone();
        let samples = (silence.as_secs_f64() * f64::from(self.rate)) as usize;
        pcm.resize(pcm.len() + samples, 0);
        let wideband = Resampler::resample_all(&pcm, self.rate, 16_000).expect("resample");
        let telephone = telephone_path(&pcm, self.rate);
        (pcm_i16_to_f32(&wideband), pcm_i16_to_f32(&telephone))
    }
}

/// 8 kHz, G.711 µ-law out and back with the daemon's own codec, then 16 kHz with its resampler.
fn telephone_path(pcm: &[i16], rate: u32) -> Vec<i16> {
    let narrow = Resampler::resample_all(pcm, rate, 8000).expect("resample to 8 kHz");
    let mut encoder = AudioEncoder::new(Codec::Pcmu);
    let mut decoder = AudioDecoder::new(Codec::Pcmu);
    let mut decoded = Vec::with_capacity(narrow.len());
    // One 20 ms RTP packet at a time, as a call carries it.
    for frame in narrow.chunks(160) {
        let mut payload = Vec::with_capacity(frame.len());
        encoder.encode(frame, &mut payload);
        decoder.decode(&payload, &mut decoded);
    }
    assert_eq!(decoded.len(), narrow.len(), "µ-law is one octet per sample");
    Resampler::resample_all(&decoded, 8000, 16_000).expect("resample to 16 kHz")
}

/// Speaks `text` with the Piper voice: 16-bit PCM at the voice's rate.
fn speak(piper: &PiperSynthesizer, text: &str) -> (Vec<i16>, u32) {
    let speech = piper.synthesize(text).expect("synthesize");
    (speech.pcm, speech.sample_rate)
}

fn clip(text: &str, complete: bool, mut speech: Vec<i16>, rate: u32) -> Clip {
    speech.truncate(speech_end(&speech));
    Clip {
        text: text.to_owned(),
        complete,
        speech,
        rate,
    }
}

/// Where speech ends: the last sample above 1 % of the peak (-40 dB: keeps a soft final "s";
/// Piper's own silence is near digital zero).
fn speech_end(pcm: &[i16]) -> usize {
    let peak = pcm.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
    let level = peak / 100;
    pcm.iter()
        .rposition(|s| s.unsigned_abs() > level)
        .map_or(0, |i| i + 1)
}

/// The whole sentence's audio cut where its first words end: near where the prefix spoken on
/// its own ends (same voice, same phonemes), at the quietest 20 ms within ±100 ms (the gap
/// between two words), with a 5 ms fade so the cut does not click.
fn cut_from_whole(piper: &PiperSynthesizer, prefix: &str, whole: &str) -> (Vec<i16>, u32) {
    let (alone, rate) = speak(piper, prefix);
    let (mut pcm, whole_rate) = speak(piper, whole);
    assert_eq!(rate, whole_rate);
    let ms = |n: u32| (rate * n / 1000) as usize;
    let estimate = speech_end(&alone).min(pcm.len());
    let frame = ms(20);
    let from = estimate.saturating_sub(ms(100));
    let to = (estimate + ms(100)).min(pcm.len().saturating_sub(frame));
    let energy = |at: usize| -> f64 {
        pcm[at..at + frame]
            .iter()
            .map(|&s| f64::from(s).powi(2))
            .sum()
    };
    let quietest = (from..=to.max(from))
        .step_by(ms(5).max(1))
        .min_by(|&a, &b| energy(a).total_cmp(&energy(b)))
        .unwrap_or(estimate);
    let cut = (quietest + frame / 2).min(pcm.len());
    pcm.truncate(cut);
    let fade = ms(5).min(pcm.len());
    let fade_from = pcm.len() - fade;
    for (i, s) in pcm[fade_from..].iter_mut().enumerate() {
        *s = (f64::from(*s) * (fade - i) as f64 / fade as f64) as i16;
    }
    (pcm, rate)
}

/// How a mid-thought turn is spoken.
const RENDERINGS: [&str; 3] = ["as typed", "comma", "cut"];

fn mid_thought_clips(piper: &PiperSynthesizer, rendering: &str) -> Vec<Clip> {
    MID_THOUGHT
        .iter()
        .map(|&(prefix, whole)| {
            let (pcm, rate) = match rendering {
                "as typed" => speak(piper, prefix),
                "comma" => speak(piper, &format!("{prefix},")),
                _ => cut_from_whole(piper, prefix, whole),
            };
            clip(prefix, false, pcm, rate)
        })
        .collect()
}

/// Scores of one set of clips, per path.
struct Scored {
    complete: Vec<bool>,
    wideband: Vec<f32>,
    telephone: Vec<f32>,
}

/// With `EDGEVOICE_TURN_DUMP=<dir>`, each scored clip's 16 kHz samples, our features and our
/// score are written there (raw little-endian f32; `scores.tsv`) for an outside reference run
/// (e.g. Pipecat's Python feature code and onnxruntime) to compare with.
fn dump(pcm: &[f32], model: &SmartTurn, score: f32) {
    let Some(dir) = std::env::var_os("EDGEVOICE_TURN_DUMP").map(PathBuf::from) else {
        return;
    };
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::create_dir_all(&dir).expect("dump dir");
    std::fs::write(dir.join(format!("{n}.pcm.f32")), bytes(pcm)).expect("dump");
    let features = model.features(pcm).expect("features");
    std::fs::write(dir.join(format!("{n}.features.f32")), bytes(&features)).expect("dump");
    let line = format!("{n}\t{score}\n");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("scores.tsv"))
        .expect("dump");
    std::io::Write::write_all(&mut f, line.as_bytes()).expect("dump");
}

fn score(model: &SmartTurn, clips: &[Clip], silence: Duration) -> Scored {
    let run = |pcm: &[f32]| {
        let p = model.completion(pcm).expect("completion");
        dump(pcm, model, p);
        p
    };
    let mut scored = Scored {
        complete: Vec::new(),
        wideband: Vec::new(),
        telephone: Vec::new(),
    };
    for clip in clips {
        let (wideband, telephone) = clip.paths(silence);
        scored.complete.push(clip.complete);
        scored.wideband.push(run(&wideband));
        scored.telephone.push(run(&telephone));
    }
    scored
}

/// Share of clips judged right at `threshold` (complete above it, as Pipecat decides).
fn accuracy(labels: &[bool], scores: &[f32], threshold: f32) -> f64 {
    let right = labels
        .iter()
        .zip(scores)
        .filter(|(&complete, &p)| (p > threshold) == complete)
        .count();
    right as f64 / labels.len().max(1) as f64
}

/// The threshold with the best accuracy (midpoints between sorted scores), and that accuracy.
fn best_threshold(labels: &[bool], scores: &[f32]) -> (f32, f64) {
    let mut sorted = scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    let mut candidates = vec![0.0f32, 1.0];
    candidates.extend(sorted.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    candidates
        .into_iter()
        .map(|t| (t, accuracy(labels, scores, t)))
        .fold((0.5, -1.0), |best, c| if c.1 > best.1 { c } else { best })
}

/// Probability that a random complete clip outscores a random incomplete one (ROC AUC).
fn auc(labels: &[bool], scores: &[f32]) -> f64 {
    let pos: Vec<f32> = pick(labels, scores, true);
    let neg: Vec<f32> = pick(labels, scores, false);
    let wins: f64 = pos
        .iter()
        .flat_map(|p| neg.iter().map(move |n| (p, n)))
        .map(|(p, n)| match p.total_cmp(n) {
            std::cmp::Ordering::Greater => 1.0,
            std::cmp::Ordering::Equal => 0.5,
            std::cmp::Ordering::Less => 0.0,
        })
        .sum();
    wins / (pos.len() * neg.len()).max(1) as f64
}

fn pick(labels: &[bool], scores: &[f32], class: bool) -> Vec<f32> {
    labels
        .iter()
        .zip(scores)
        .filter(|(&l, _)| l == class)
        .map(|(_, &s)| s)
        .collect()
}

/// min / p25 / median / p75 / max.
fn distribution(mut scores: Vec<f32>) -> String {
    if scores.is_empty() {
        return "-".into();
    }
    scores.sort_by(f32::total_cmp);
    let q = |f: f64| scores[((scores.len() - 1) as f64 * f).round() as usize];
    format!(
        "{:.3} / {:.3} / {:.3} / {:.3} / {:.3}",
        q(0.0),
        q(0.25),
        q(0.5),
        q(0.75),
        q(1.0)
    )
}

/// Prints one condition's figures; returns its accuracy at 0.5.
fn report(name: &str, labels: &[bool], scores: &[f32]) -> f64 {
    let at_half = accuracy(labels, scores, 0.5);
    let (best, best_acc) = best_threshold(labels, scores);
    eprintln!(
        "| {name} | {:.1} % | {:.3} | {best:.3} ({:.1} %) | {} | {} |",
        at_half * 100.0,
        auc(labels, scores),
        best_acc * 100.0,
        distribution(pick(labels, scores, true)),
        distribution(pick(labels, scores, false)),
    );
    at_half
}

#[test]
fn the_model_loads_and_scores_silence_and_long_audio() {
    let model = smart_turn();
    let silence = model.completion(&[0.0; 16_000]).expect("completion");
    assert!((0.0..=1.0).contains(&silence), "{silence}");
    // Only the last 8 s are heard: 3 s of noise in front change nothing.
    let mut state = 7u32;
    let noise: Vec<f32> = (0..48_000)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect();
    let tone: Vec<f32> = (0..128_000).map(|i| 0.3 * (i as f32 * 0.2).sin()).collect();
    let longer = [noise.as_slice(), tone.as_slice()].concat();
    let a = model.completion(&tone).expect("completion");
    let b = model.completion(&longer).expect("completion");
    assert_eq!(a, b);
    // Unusable input is refused with a reason, not scored.
    let err = model.completion(&[0.0, f32::NAN]).unwrap_err();
    assert!(err.to_string().contains("finite"), "{err}");
}

#[test]
#[ignore = "a measurement, not a product claim: Smart Turn v3.2 tells complete from mid-thought \
            Piper turns apart only 64-70 % of the time at 0.5 (AUC about 0.7) at 16 and 8 kHz, \
            so the turn engine does not use it (session 8 note); re-measure with --ignored"]
fn slow_complete_and_mid_thought_turns_are_told_apart_on_16_khz_and_measured_on_8_khz() {
    let model = smart_turn();
    let voice = piper();
    let started = Instant::now();
    let complete: Vec<Clip> = COMPLETE
        .iter()
        .map(|t| {
            let (pcm, rate) = speak(&voice, t);
            clip(t, true, pcm, rate)
        })
        .collect();
    let mid: Vec<Vec<Clip>> = RENDERINGS
        .iter()
        .map(|r| mid_thought_clips(&voice, r))
        .collect();
    eprintln!(
        "{} complete and {} mid-thought utterances ({} renderings) by Piper in {:?}",
        COMPLETE.len(),
        MID_THOUGHT.len(),
        RENDERINGS.len(),
        started.elapsed()
    );
    let mut wideband_accuracy = Vec::new();
    for silence in TRAILING_SILENCES {
        let complete_scores = score(&model, &complete, silence);
        let mid_scores: Vec<Scored> = mid
            .iter()
            .map(|clips| score(&model, clips, silence))
            .collect();
        eprintln!("\n## {} ms of silence after the words", silence.as_millis());
        print_clip_scores(&complete, &complete_scores, &mid[0], &mid_scores);
        eprintln!(
            "\n| mid-thought rendering, path | right at 0.5 | AUC | best threshold (accuracy) | complete: min/p25/median/p75/max | mid-thought: min/p25/median/p75/max |"
        );
        eprintln!("|---|---|---|---|---|---|");
        for (rendering, scored) in RENDERINGS.iter().zip(&mid_scores) {
            let labels = [complete_scores.complete.clone(), scored.complete.clone()].concat();
            let wide = [complete_scores.wideband.clone(), scored.wideband.clone()].concat();
            let phone = [complete_scores.telephone.clone(), scored.telephone.clone()].concat();
            let at_half = report(&format!("{rendering}, 16 kHz"), &labels, &wide);
            report(&format!("{rendering}, 8 kHz µ-law"), &labels, &phone);
            if silence == TRAILING_SILENCES[0] {
                wideband_accuracy.push((*rendering, at_half));
            }
        }
    }

    // The model's own threshold on clean 16 kHz audio after Pipecat's pause, for every way of
    // speaking a mid-thought turn: a detector that works on one rendering only would not work
    // on callers.
    let short: Vec<String> = wideband_accuracy
        .iter()
        .filter(|(_, a)| *a < 0.85)
        .map(|(r, a)| format!("{r}: {:.1} %", a * 100.0))
        .collect();
    assert!(
        short.is_empty(),
        "clean 16 kHz, {} ms pause, right at 0.5 below 85 %: {short:?} (tables above)",
        TRAILING_SILENCES[0].as_millis()
    );
}

fn print_clip_scores(complete: &[Clip], c: &Scored, mid: &[Clip], m: &[Scored]) {
    eprintln!("\n| clip | 16 kHz | 8 kHz | comma 16 / 8 kHz | cut 16 / 8 kHz |");
    eprintln!("|---|---|---|---|---|");
    for (i, clip) in complete.iter().enumerate() {
        eprintln!(
            "| {} | {:.3} | {:.3} | | |",
            clip.text, c.wideband[i], c.telephone[i]
        );
    }
    for (i, clip) in mid.iter().enumerate() {
        eprintln!(
            "| {}… | {:.3} | {:.3} | {:.3} / {:.3} | {:.3} / {:.3} |",
            clip.text,
            m[0].wideband[i],
            m[0].telephone[i],
            m[1].wideband[i],
            m[1].telephone[i],
            m[2].wideband[i],
            m[2].telephone[i]
        );
    }
}
