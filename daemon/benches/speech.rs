//! Speech engine benchmark: our pipeline's engines on the bundled models, 2 threads, each figure
//! min / median of 7 runs, beside the reference engines' figures for this machine kind
//! (../shared/REFERENCE-FIGURES.md: whisper.cpp 1.8.5, llama.cpp via llama-cpp-python 0.3.36,
//! Piper 1.8.0 on ONNX Runtime 1.24.4, same models, same audio, 2 threads) as a ratio
//! (ours / reference; under 1 is faster). Prints a markdown table and writes it to
//! target/bench/speech.md.

#[path = "../../tests/common/audio.rs"]
mod audio;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgevoice::agent::AgentSpec;
use edgevoice::config::AgentConfig;
use edgevoice::speech::{
    pcm_i16_to_f32, Budget, ChatMessage, LlamaEngine, LlmConfig, PiperConfig, PiperSynthesizer,
    SileroVad, SpeechSynthesizer, WhisperConfig, WhisperRecognizer, LLM_MODEL_FILE,
    ONNXRUNTIME_FILE, TTS_VOICE_FILE, VAD_MODEL_FILE, WHISPER_MODEL_FILE,
};
use edgevoice::telephony::media::Resampler;

const RUNS: usize = 7;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn models() -> PathBuf {
    shared().join("models")
}

/// (min, median) of `RUNS` timings of `f`, in ms.
fn time_ms(mut f: impl FnMut() -> Duration) -> (f64, f64) {
    let mut v: Vec<f64> = (0..RUNS).map(|_| f().as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    (v[0], v[RUNS / 2])
}

struct Row {
    what: String,
    ours: (f64, f64),
    reference: Option<(f64, f64)>,
    unit: &'static str,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut rows: Vec<Row> = Vec::new();

    // --- ASR: whisper tiny.en q8_0, encoder sized to the audio (our default) and whole window.
    let mut wcfg = WhisperConfig::new(models().join(WHISPER_MODEL_FILE));
    wcfg.threads = 2;
    let whisper = WhisperRecognizer::load(wcfg.clone()).expect("whisper");
    wcfg.sized_audio_ctx = false;
    let whisper_full = WhisperRecognizer::load(wcfg).expect("whisper");
    let harvard = audio::read_wav(shared().join("testdata/audio/harvard_8k.wav"));
    let harvard16 = Resampler::resample_all(&harvard.to_mono(), 8000, 16_000).expect("resample");
    let first = pcm_i16_to_f32(&harvard16[..(2.74 * 16_000.0) as usize]);
    let jfk = pcm_i16_to_f32(&audio::read_wav(shared().join("testdata/audio/jfk.wav")).to_mono());
    for (what, pcm, rec, reference) in [
        (
            "ASR 2.74 s phone utterance, audio_ctx sized",
            &first,
            &whisper,
            (161.0, 165.0),
        ),
        (
            "ASR 2.74 s phone utterance, whole 30 s window",
            &first,
            &whisper_full,
            (1176.0, 1360.0),
        ),
        (
            "ASR jfk 11 s, audio_ctx sized",
            &jfk,
            &whisper,
            (537.0, 598.0),
        ),
        (
            "ASR jfk 11 s, whole 30 s window",
            &jfk,
            &whisper_full,
            (1309.0, 1448.0),
        ),
    ] {
        let mut session = rec.new_session().expect("state");
        let _ = session.transcribe(pcm);
        let t = time_ms(|| session.transcribe(pcm).expect("transcribe").elapsed);
        rows.push(Row {
            what: what.to_owned(),
            ours: t,
            reference: Some(reference),
            unit: "ms",
        });
    }
    let secs = jfk.len() as f64 / 16_000.0;
    let (_, med) = rows[2].ours;
    rows.push(Row {
        what: "ASR real-time factor (jfk, sized)".to_owned(),
        ours: (rows[2].ours.0 / 1000.0 / secs, med / 1000.0 / secs),
        reference: Some((537.0 / 1000.0 / secs, 598.0 / 1000.0 / secs)),
        unit: "×",
    });

    // --- VAD: Silero, one call step (2 new windows + 6 of context).
    let mut vad = SileroVad::load(&models().join(VAD_MODEL_FILE)).expect("vad");
    let chunk = &jfk[16_000..16_000 + 1024];
    let t = time_ms(|| {
        let s = Instant::now();
        vad.process(chunk).expect("vad");
        s.elapsed()
    });
    rows.push(Row {
        what: "VAD per 64 ms call step (8 windows incl. context)".to_owned(),
        ours: t,
        reference: Some((8.0 * 0.3, 8.0 * 0.5)),
        unit: "ms",
    });

    // --- LLM: SmolLM2-135M Q4_1 with the agent's system prompt.
    let mut lcfg = LlmConfig::new(models().join(LLM_MODEL_FILE));
    lcfg.threads = 2;
    let llm = LlamaEngine::load(lcfg).expect("llm");
    let spec = AgentSpec::new(&AgentConfig::default());
    let system = spec.system_prompt();
    let turn =
        "Hello, I would like to know when the clinic is open and whether I need an appointment.";
    let messages = vec![ChatMessage::system(system.clone()), ChatMessage::user(turn)];
    let prompt = llm.render_chat(&messages).expect("prompt");
    let budget = |n| Budget {
        max_tokens: n,
        max_time: Duration::from_secs(30),
    };
    let mut cont = |_: &str| ControlFlow::Continue(());
    // Whole prompt each turn (a fresh context).
    let whole = time_ms(|| {
        let mut s = llm.new_session().expect("ctx");
        s.generate(&prompt, budget(1), &mut cont)
            .expect("gen")
            .first_token
            .unwrap_or_default()
    });
    // Our way: the system prompt evaluated once in sequence 0, shared with the call's sequence.
    let mut shared_ctx = llm.new_shared_session(2, 4096).expect("ctx");
    shared_ctx
        .prime_seq(0, &llm.render_system(&system).expect("system"))
        .expect("prime");
    let kept = time_ms(|| {
        shared_ctx.release(1);
        shared_ctx.fork(0, 1).expect("fork");
        shared_ctx
            .generate_seq(1, &prompt, budget(1), &mut cont)
            .expect("gen")
            .first_token
            .unwrap_or_default()
    });
    let prompt_tokens = llm.count_tokens(&prompt);
    rows.push(Row {
        what: format!("LLM first token, whole prompt ({prompt_tokens} tokens) each turn"),
        ours: whole,
        reference: Some((2240.0, 2522.0)),
        unit: "ms",
    });
    rows.push(Row {
        what: "LLM first token, system prompt shared from sequence 0".to_owned(),
        ours: kept,
        reference: Some((223.0, 224.0)),
        unit: "ms",
    });
    let mut s = llm.new_session().expect("ctx");
    let g = s.generate(&prompt, budget(1), &mut cont).expect("gen");
    let pp = g.prompt_tokens as f64 / g.elapsed.as_secs_f64();
    let mut gen_rates = Vec::new();
    for _ in 0..3 {
        let mut s = llm.new_session().expect("ctx");
        let g = s.generate(&prompt, budget(64), &mut cont).expect("gen");
        let first = g.first_token.unwrap_or_default();
        let rest = g.elapsed.saturating_sub(first).as_secs_f64();
        if g.generated_tokens > 1 && rest > 0.0 {
            gen_rates.push((g.generated_tokens - 1) as f64 / rest);
        }
    }
    gen_rates.sort_by(f64::total_cmp);
    rows.push(Row {
        what: "LLM prompt processing".to_owned(),
        ours: (pp, pp),
        reference: Some((150.0, 185.0)),
        unit: "tok/s",
    });
    let g_med = gen_rates.get(gen_rates.len() / 2).copied().unwrap_or(0.0);
    let g_min = gen_rates.first().copied().unwrap_or(0.0);
    rows.push(Row {
        what: "LLM generation".to_owned(),
        ours: (g_min, g_med),
        reference: Some((65.0, 69.0)),
        unit: "tok/s",
    });

    // Slot extraction for a `collect` intent: the same prompt with and without the slots'
    // grammar, to show what constraining costs (the grammar sampler checks the whole
    // vocabulary at every step).
    {
        use edgevoice::agent::slots::{self, SlotKind, SlotSpec};
        let spec: Vec<SlotSpec> = [
            ("name", "the caller's full name", SlotKind::Text),
            ("day", "the day they want to come", SlotKind::Text),
            ("phone", "their phone number", SlotKind::Digits),
        ]
        .into_iter()
        .map(|(name, description, kind)| SlotSpec {
            name: name.into(),
            description: description.into(),
            kind,
        })
        .collect();
        let said = "Hi, my name is John Smith and I would like to come in on Monday.";
        let prompt = llm
            .render_chat(&slots::prompt(said, &spec))
            .expect("prompt");
        let grammar = slots::grammar(&spec);
        let mut tokens = 0;
        let constrained = time_ms(|| {
            let mut s = llm.new_session().expect("ctx");
            let g = s
                .generate_seq_constrained(0, &prompt, Some(&grammar), budget(80), &mut cont)
                .expect("extraction");
            tokens = g.generated_tokens;
            g.elapsed
        });
        let free = time_ms(|| {
            let mut s = llm.new_session().expect("ctx");
            s.generate_seq_constrained(0, &prompt, None, budget(tokens as u32), &mut cont)
                .expect("generation")
                .elapsed
        });
        rows.push(Row {
            what: format!(
                "LLM slot extraction, 3 slots, grammar ({tokens} tokens, prompt included)"
            ),
            ours: constrained,
            reference: None,
            unit: "ms",
        });
        rows.push(Row {
            what: format!("the same {tokens} tokens without the grammar"),
            ours: free,
            reference: None,
            unit: "ms",
        });
    }

    // --- TTS: Piper en_US-joe-medium.
    let ten = "Our opening hours are nine to five, Monday to Friday.";
    for threads in [1usize, 2] {
        let mut c = PiperConfig::new(
            models().join(TTS_VOICE_FILE),
            models().join(ONNXRUNTIME_FILE),
        );
        c.threads = threads;
        let t0 = Instant::now();
        let piper = PiperSynthesizer::load(c).expect("piper");
        let load = t0.elapsed();
        let _ = piper.synthesize(ten);
        let first = time_ms(|| {
            let s = Instant::now();
            let mut at = None;
            piper
                .synthesize_streaming(ten, &mut |_| {
                    at.get_or_insert_with(|| s.elapsed());
                    ControlFlow::Continue(())
                })
                .expect("tts");
            at.unwrap_or_default()
        });
        let reference = if threads == 1 {
            (322.0, 336.0)
        } else {
            (193.0, 203.0)
        };
        rows.push(Row {
            what: format!("TTS first audio, 10-word sentence, {threads} thread(s)"),
            ours: first,
            reference: Some(reference),
            unit: "ms",
        });
        let syn = piper.synthesize(ten).expect("tts");
        let rtf = syn.elapsed.as_secs_f64() / syn.audio().as_secs_f64();
        rows.push(Row {
            what: format!("TTS real-time factor, {threads} thread(s)"),
            ours: (rtf, rtf),
            reference: Some(if threads == 1 {
                (0.11, 0.11)
            } else {
                (0.066, 0.066)
            }),
            unit: "×",
        });
        if threads == 1 {
            rows.push(Row {
                what: "TTS voice load".to_owned(),
                ours: (load.as_secs_f64() * 1000.0, load.as_secs_f64() * 1000.0),
                reference: Some((1766.0, 1817.0)),
                unit: "ms",
            });
        }
    }

    let mut md = String::from(
        "# Speech engines (2 threads, min / median of 7; reference: ../shared/REFERENCE-FIGURES.md)\n\n\
         | what | edgevoice | reference | ratio (median) |\n|---|---|---|---|\n",
    );
    for r in &rows {
        let fmt = |(a, b): (f64, f64)| {
            if r.unit == "×" {
                format!("{a:.3} / {b:.3} {}", r.unit)
            } else {
                format!("{a:.1} / {b:.1} {}", r.unit)
            }
        };
        let (reference, ratio) = match r.reference {
            Some(rf) => (fmt(rf), format!("{:.2}", r.ours.1 / rf.1)),
            None => ("".to_owned(), "".to_owned()),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.what,
            fmt(r.ours),
            reference,
            ratio
        ));
    }
    md.push_str("\nFor tok/s a ratio above 1 is faster; for ms and × below 1 is faster.\n");
    println!("{md}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("speech.md"), md);
}
