//! Speech engine benchmark: our pipeline's engines on the bundled models, 2 threads, each figure
//! min / median of 7 runs, beside the reference engines run in the same process tree on the
//! same models, audio and threads (whisper.cpp 1.8.5's whisper-cli, llama.cpp's llama-bench
//! from llama-cpp-python 0.3.36, Piper 1.8.0 on ONNX Runtime 1.24.4; built by
//! bench/reference/build.sh), as a ratio (ours / reference; under 1 is faster). A reference that
//! is not built falls back to ../shared/REFERENCE-FIGURES.md, and the table says so. Prints a
//! markdown table and writes it to target/bench/speech.md.

#[path = "../../tests/common/audio.rs"]
mod audio;
#[path = "support/reference.rs"]
mod reference;

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
use reference::{Figure, ReferenceEngines};

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
    reference: Option<Figure>,
    unit: &'static str,
}

fn figures_file(value: (f64, f64)) -> Option<Figure> {
    Some(Figure {
        value,
        source: "REFERENCE-FIGURES.md".into(),
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut rows: Vec<Row> = Vec::new();
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let refs = ReferenceEngines::new(&target);
    let threads = 2;

    // --- ASR: whisper tiny.en q8_0, encoder sized to the audio (our default) and whole window.
    let mut wcfg = WhisperConfig::new(models().join(WHISPER_MODEL_FILE));
    wcfg.threads = threads;
    let whisper = WhisperRecognizer::load(wcfg.clone()).expect("whisper");
    wcfg.sized_audio_ctx = false;
    let whisper_full = WhisperRecognizer::load(wcfg).expect("whisper");
    let harvard = audio::read_wav(shared().join("testdata/audio/harvard_8k.wav"));
    let harvard16 = Resampler::resample_all(&harvard.to_mono(), 8000, 16_000).expect("resample");
    let first = pcm_i16_to_f32(&harvard16[..(2.74 * 16_000.0) as usize]);
    let jfk_path = shared().join("testdata/audio/jfk.wav");
    let jfk = pcm_i16_to_f32(&audio::read_wav(&jfk_path).to_mono());
    // whisper-cli reads the very samples we decode: the resampled clip is written as a WAV.
    let first_path = refs.scratch().join("harvard_first_2_74s_16k.wav");
    audio::write_wav(
        &first_path,
        16_000,
        1,
        &harvard16[..(2.74 * 16_000.0) as usize],
    );
    let whisper_model = models().join(WHISPER_MODEL_FILE);
    let mut jfk_row = 0;
    for (what, pcm, path, sized, fallback) in [
        (
            "ASR 2.74 s phone utterance, audio_ctx sized",
            &first,
            &first_path,
            true,
            (161.0, 165.0),
        ),
        (
            "ASR 2.74 s phone utterance, whole 30 s window",
            &first,
            &first_path,
            false,
            (1176.0, 1360.0),
        ),
        (
            "ASR jfk 11 s, audio_ctx sized",
            &jfk,
            &jfk_path,
            true,
            (537.0, 598.0),
        ),
        (
            "ASR jfk 11 s, whole 30 s window",
            &jfk,
            &jfk_path,
            false,
            (1309.0, 1448.0),
        ),
    ] {
        let rec = if sized { &whisper } else { &whisper_full };
        let mut session = rec.new_session().expect("state");
        let warm = session.transcribe(pcm).expect("transcribe");
        let t = time_ms(|| session.transcribe(pcm).expect("transcribe").elapsed);
        // The same encoder size on both sides: the one our recognizer chose for this audio.
        let audio_ctx = if sized { warm.audio_ctx } else { 0 };
        let reference = Figure::measured_or(
            refs.whisper_cli(&whisper_model, path, audio_ctx, threads, RUNS),
            fallback,
        );
        if sized && std::ptr::eq(pcm, &jfk) {
            jfk_row = rows.len();
        }
        rows.push(Row {
            what: format!(
                "{what} (audio_ctx {})",
                if sized { audio_ctx } else { 1500 }
            ),
            ours: t,
            reference: Some(reference),
            unit: "ms",
        });
    }
    let secs = jfk.len() as f64 / 16_000.0;
    let rtf = |(a, b): (f64, f64)| (a / 1000.0 / secs, b / 1000.0 / secs);
    rows.push(Row {
        what: "ASR real-time factor (jfk, sized)".to_owned(),
        ours: rtf(rows[jfk_row].ours),
        reference: rows[jfk_row].reference.as_ref().map(|f| Figure {
            value: rtf(f.value),
            source: f.source.clone(),
        }),
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
        reference: figures_file((8.0 * 0.3, 8.0 * 0.5)),
        unit: "ms",
    });

    // --- LLM: SmolLM2-135M Q4_1 with the agent's system prompt.
    let mut lcfg = LlmConfig::new(models().join(LLM_MODEL_FILE));
    lcfg.threads = threads;
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
    let system_tokens = llm.count_tokens(&llm.render_system(&system).expect("system"));
    let turn_tokens = prompt_tokens.saturating_sub(system_tokens);
    // llama-bench: the whole prompt on an empty cache, and the turn on top of the system
    // prompt's tokens already in the cache (`-d`), as our shared sequence 0 gives it.
    let llm_model = models().join(LLM_MODEL_FILE);
    let ref_whole = refs.llama_bench_ms(&llm_model, prompt_tokens, 0, 0, threads, RUNS);
    let ref_kept = refs.llama_bench_ms(&llm_model, turn_tokens, 0, system_tokens, threads, RUNS);
    let bench_source = "llama-bench (llama-cpp-python 0.3.36's llama.cpp), this run";
    let as_figure = |samples: &Result<Vec<f64>, String>, per: Option<usize>| {
        let samples = samples.clone()?;
        let values = match per {
            // tokens per second from each repetition's time
            Some(tokens) => samples
                .iter()
                .map(|ms| tokens as f64 * 1000.0 / ms)
                .collect(),
            None => samples,
        };
        Ok::<_, String>(Figure {
            value: reference::min_median(values)?,
            source: bench_source.into(),
        })
    };
    rows.push(Row {
        what: format!("LLM first token, whole prompt ({prompt_tokens} tokens) each turn"),
        ours: whole,
        reference: Some(Figure::measured_or(
            as_figure(&ref_whole, None),
            (2240.0, 2522.0),
        )),
        unit: "ms",
    });
    rows.push(Row {
        what: format!(
            "LLM first token, system prompt ({system_tokens} tokens) shared from sequence 0, \
             turn {turn_tokens} tokens"
        ),
        ours: kept,
        reference: Some(Figure::measured_or(
            as_figure(&ref_kept, None),
            (223.0, 224.0),
        )),
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
        what: format!("LLM prompt processing ({prompt_tokens} tokens)"),
        ours: (pp, pp),
        reference: Some(Figure::measured_or(
            as_figure(&ref_whole, Some(prompt_tokens)),
            (150.0, 185.0),
        )),
        unit: "tok/s",
    });
    let g_med = gen_rates.get(gen_rates.len() / 2).copied().unwrap_or(0.0);
    let g_min = gen_rates.first().copied().unwrap_or(0.0);
    let ref_gen = refs.llama_bench_ms(&llm_model, 0, 64, prompt_tokens, threads, RUNS);
    rows.push(Row {
        what: "LLM generation (after the prompt)".to_owned(),
        ours: (g_min, g_med),
        reference: Some(Figure::measured_or(
            as_figure(&ref_gen, Some(64)),
            (65.0, 69.0),
        )),
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
    let voice = models().join(TTS_VOICE_FILE);
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
        let (ref_first, ref_rtf, ref_load) = match refs.piper(&voice, ten, threads as u32, RUNS) {
            Ok(p) => {
                let figure = |value| Figure {
                    value,
                    source: p.source.clone(),
                };
                (
                    figure(p.first_audio),
                    figure((p.rtf, p.rtf)),
                    figure((p.load_ms, p.load_ms)),
                )
            }
            Err(why) => {
                let (first, rtf) = if threads == 1 {
                    ((322.0, 336.0), 0.11)
                } else {
                    ((193.0, 203.0), 0.066)
                };
                (
                    Figure::measured_or(Err(why.clone()), first),
                    Figure::measured_or(Err(why.clone()), (rtf, rtf)),
                    Figure::measured_or(Err(why), (1766.0, 1817.0)),
                )
            }
        };
        rows.push(Row {
            what: format!("TTS first audio, 10-word sentence, {threads} thread(s)"),
            ours: first,
            reference: Some(ref_first),
            unit: "ms",
        });
        let syn = piper.synthesize(ten).expect("tts");
        let rtf = syn.elapsed.as_secs_f64() / syn.audio().as_secs_f64();
        rows.push(Row {
            what: format!("TTS real-time factor, {threads} thread(s)"),
            ours: (rtf, rtf),
            reference: Some(ref_rtf),
            unit: "×",
        });
        rows.push(Row {
            what: format!("TTS voice load, {threads} thread(s)"),
            ours: (load.as_secs_f64() * 1000.0, load.as_secs_f64() * 1000.0),
            reference: Some(ref_load),
            unit: "ms",
        });
    }

    let mut md = String::from(
        "# Speech engines (2 threads unless said, min / median of 7, reference engines run beside ours)\n\n\
         | what | edgevoice | reference | ratio (median) | reference engine |\n|---|---|---|---|---|\n",
    );
    for r in &rows {
        let fmt = |(a, b): (f64, f64)| {
            if r.unit == "×" {
                format!("{a:.3} / {b:.3} {}", r.unit)
            } else {
                format!("{a:.1} / {b:.1} {}", r.unit)
            }
        };
        let (reference, ratio, source) = match &r.reference {
            Some(rf) => (
                fmt(rf.value),
                format!("{:.2}", r.ours.1 / rf.value.1),
                rf.source.clone(),
            ),
            None => ("".to_owned(), "".to_owned(), "".to_owned()),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.what,
            fmt(r.ours),
            reference,
            ratio,
            source
        ));
    }
    md.push_str(
        "\nFor tok/s a ratio above 1 is faster; for ms and × below 1 is faster.\n\
         whisper-cli: greedy, one candidate, the same audio_ctx, no timestamps, its own compute \
         stages (model load excluded), one fresh process per run. Ours, sized, also aligns every \
         word in time (DTW), which whisper-cli does not; on the whole window both use flash \
         attention. llama-bench: `-p`/`-n`/`-d` as the row says; \
         Piper: its Python engine with the same intra-op threads.\n",
    );
    println!("{md}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("speech.md"), md);
}
