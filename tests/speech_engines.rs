//! The speech engines with the real models (../shared/models) and real audio
//! (../shared/testdata): whisper on 16 kHz and 8 kHz telephone audio, the language model, and
//! the ONE-ggml proof (issue 4): real whisper and real llama inference in one process.
//!
//! The engines load once per test process and are shared; the tests take a lock so their
//! timings are not skewed by each other on a 2-core machine.

#[path = "common/audio.rs"]
mod audio;
mod common;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use edgevoice::speech::text::word_error_rate;
use edgevoice::speech::{
    pcm_i16_to_f32, Budget, ChatMessage, LanguageModel, LlamaEngine, LlmConfig, SileroVad,
    SpeechRecognizer, StopReason, WhisperConfig, WhisperRecognizer, LLM_MODEL_FILE, VAD_MODEL_FILE,
    WHISPER_MODEL_FILE,
};
use edgevoice::telephony::media::Resampler;

const JFK_REF: &str = "And so my fellow Americans, ask not what your country can do for you, \
                       ask what you can do for your country.";
const HARVARD_REF: &str = "A gold ring will please most any girl. The long journey home took a \
    year. She saw a cat in the neighbor's house. A pink shell was found on the sandy beach. Small \
    children came to see him. The grass and bushes were wet with dew. The blind man counted his \
    old coins. A severe storm tore down the barn. She called his name many times. When you hear \
    the bell, come quickly.";

fn models_dir() -> PathBuf {
    common::shared_dir().join("models")
}

fn testdata(name: &str) -> PathBuf {
    common::shared_dir().join("testdata/audio").join(name)
}

/// One heavy test at a time (2 cores: parallel decodes would skew every timing).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn whisper() -> &'static WhisperRecognizer {
    static W: OnceLock<WhisperRecognizer> = OnceLock::new();
    W.get_or_init(|| {
        let t = Instant::now();
        let w = WhisperRecognizer::load(WhisperConfig::new(models_dir().join(WHISPER_MODEL_FILE)))
            .expect("load whisper");
        eprintln!("whisper model loaded in {:?}", t.elapsed());
        w
    })
}

fn llama() -> &'static LlamaEngine {
    static L: OnceLock<LlamaEngine> = OnceLock::new();
    L.get_or_init(|| {
        let t = Instant::now();
        let l = LlamaEngine::load(LlmConfig::new(models_dir().join(LLM_MODEL_FILE)))
            .expect("load llama");
        eprintln!("llama model loaded in {:?}", t.elapsed());
        l
    })
}

fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// 8 kHz telephone audio → 16 kHz with the product's resampler, optionally through G.711 µ-law.
fn telephone_to_asr(pcm_8k: &[i16], mulaw: bool) -> Vec<i16> {
    let pcm: Vec<i16> = if mulaw {
        use audio_codec::{Decoder as _, Encoder as _};
        let mut enc = audio_codec::pcmu::PcmuEncoder::new();
        let mut dec = audio_codec::pcmu::PcmuDecoder::new();
        let mut out = Vec::with_capacity(pcm_8k.len());
        for frame in pcm_8k.chunks(160) {
            let mut bytes = vec![0u8; enc.max_encode_bytes(frame.len())];
            let n = enc.encode_into(frame, &mut bytes).expect("encode");
            let mut samples = vec![0i16; dec.max_decode_samples(n)];
            let m = dec.decode_into(&bytes[..n], &mut samples).expect("decode");
            out.extend_from_slice(&samples[..m]);
        }
        out
    } else {
        pcm_8k.to_vec()
    };
    Resampler::resample_all(&pcm, 8000, 16_000).expect("resample")
}

/// 16 kHz wideband telephone audio (G.722 round trip), as a G.722 call delivers it.
fn wideband_to_asr(pcm_16k: &[i16]) -> Vec<i16> {
    use audio_codec::{Decoder as _, Encoder as _};
    let mut enc = audio_codec::g722::G722Encoder::new();
    let mut dec = audio_codec::g722::G722Decoder::new();
    let mut out = Vec::with_capacity(pcm_16k.len());
    for frame in pcm_16k.chunks(320) {
        let mut bytes = vec![0u8; enc.max_encode_bytes(frame.len())];
        let n = enc.encode_into(frame, &mut bytes).expect("encode");
        let mut samples = vec![0i16; dec.max_decode_samples(n)];
        let m = dec.decode_into(&bytes[..n], &mut samples).expect("decode");
        out.extend_from_slice(&samples[..m]);
    }
    out
}

/// Cuts 16 kHz audio into utterances the way a call does: the product's Silero VAD and
/// endpointer with the default agent settings (a turn ends after 600 ms of silence), and, as the
/// conversation does, a caller who starts again before the reply can begin (within
/// `REPLY_START_MS` of the endpoint: recognition + first clause) is heard together with the part
/// before the pause.
fn cut_like_a_call(pcm: &[i16]) -> Vec<Vec<i16>> {
    use edgevoice::agent::endpoint::{EndpointConfig, EndpointEvent, Endpointer, WINDOW_SAMPLES};
    const REPLY_START_MS: u64 = 1000;
    let agent = edgevoice::config::AgentConfig::default();
    let mut vad = SileroVad::load(&models_dir().join(VAD_MODEL_FILE)).expect("load VAD");
    let mut ep = Endpointer::new(EndpointConfig {
        threshold: agent.vad_threshold_percent as f32 / 100.0,
        min_speech_ms: agent.min_speech_ms,
        endpoint_silence_ms: agent.endpoint_silence_ms,
        max_utterance_ms: agent.max_utterance_secs * 1000,
        pad_ms: 200,
    });
    let f = pcm_i16_to_f32(pcm);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut last_end_window: Option<u64> = None;
    let mut join = false;
    // Two windows at a time, as a call feeds it; then a second of silence to end the last turn.
    let mut padded = f.clone();
    padded.extend(std::iter::repeat_n(0.0, 16_000));
    for chunk in padded.chunks_exact(2 * WINDOW_SAMPLES) {
        for p in vad.process(chunk).expect("VAD") {
            match ep.handle_window(p) {
                Some(EndpointEvent::SpeechStarted { .. }) => {
                    join = last_end_window.is_some_and(|w| {
                        (ep.windows() - w) * u64::from(edgevoice::agent::endpoint::WINDOW_MS)
                            < REPLY_START_MS
                    });
                }
                Some(EndpointEvent::SpeechEnded {
                    start_sample,
                    end_sample,
                    ..
                }) => {
                    let end = end_sample.min(pcm.len() as u64);
                    match out.last_mut() {
                        Some(last) if join => last.1 = end,
                        _ => out.push((start_sample, end)),
                    }
                    last_end_window = Some(ep.windows());
                }
                // Speculation is the shell's business; the turns are what this test checks.
                Some(EndpointEvent::Paused { .. }) | None => {}
            }
        }
    }
    out.into_iter()
        .map(|(a, b)| pcm[a as usize..b as usize].to_vec())
        .collect()
}

#[test]
fn whisper_transcribes_jfk_16k() {
    let _g = serial();
    let wav = audio::read_wav(testdata("jfk.wav"));
    assert_eq!(wav.rate, 16_000);
    let pcm = pcm_i16_to_f32(&wav.to_mono());
    let w = whisper();
    let mut session = w.session().unwrap();
    let t = session.transcribe(&pcm).unwrap();
    let wer = word_error_rate(JFK_REF, &t.text);
    eprintln!(
        "jfk.wav ({:.1} s): {:?} in {:?} (audio_ctx {}), WER {:.1} %",
        t.audio.as_secs_f64(),
        t.text,
        t.elapsed,
        t.audio_ctx,
        wer * 100.0
    );
    assert!(wer <= 0.10, "WER {wer} for {:?}", t.text);
    assert_eq!(t.audio_ctx, 614);
    // Word timestamps: in order, within the clip, and "country" is the last word.
    let words: Vec<_> = t.words().collect();
    assert!(words.len() >= 20, "{words:?}");
    let end_ms = t.audio.as_millis() as u64 + 100;
    for pair in words.windows(2) {
        assert!(pair[0].start_ms <= pair[1].start_ms, "{pair:?}");
    }
    assert!(
        words
            .iter()
            .all(|w| w.end_ms <= end_ms && w.start_ms <= w.end_ms),
        "{words:?}"
    );
    assert!(words
        .last()
        .unwrap()
        .text
        .to_lowercase()
        .contains("country"));
    // Where the words are in the audio (jfk: "ask not" follows a pause at about 3.9 s; the
    // last "country" is said at about 10.5–10.9 s).
    let ask = words
        .iter()
        .find(|w| w.text.to_lowercase().starts_with("ask"))
        .unwrap();
    assert!(
        (3300..=4300).contains(&ask.start_ms),
        "\"ask\" at {} ms: {words:?}",
        ask.start_ms
    );
    let country = words.last().unwrap();
    assert!(
        (10_000..=11_000).contains(&country.start_ms),
        "\"country\" at {} ms: {words:?}",
        country.start_ms
    );
}

fn transcribe_pieces(w: &WhisperRecognizer, pieces: &[Vec<i16>]) -> (String, Duration) {
    let mut session = w.session().unwrap();
    let started = Instant::now();
    let mut text = Vec::new();
    for piece in pieces {
        let t = session.transcribe(&pcm_i16_to_f32(piece)).unwrap();
        eprintln!(
            "  {:.2} s, audio_ctx {}: {:?}",
            piece.len() as f64 / 16_000.0,
            t.audio_ctx,
            t.text
        );
        text.push(t.text);
    }
    (text.join(" "), started.elapsed())
}

/// harvard_8k and jfk through the telephone path (G.711 µ-law at 8 kHz, and for the 16 kHz jfk
/// also G.722 at 16 kHz; the product's resampler; audio longer than whisper's window cut into
/// turns by the product's VAD and endpointer; the encoder sized to each turn):
/// - against the same whisper model on the same telephone audio with its whole window (what
///   our pipeline adds): within 3 points of word error rate, always;
/// - against the model directly on the file: within 3 points for harvard_8k (an 8 kHz file) and
///   for jfk through G.722. jfk through the 8 kHz band is printed, not asserted: the band itself
///   loses the plural "s" of "Americans" (1 word of 22 = 4.5 points) even with the whole window.
#[test]
fn slow_whisper_telephone_path_is_within_3_points_of_the_model_on_the_file() {
    let _g = serial();
    let w = whisper();
    let mut cfg = WhisperConfig::new(models_dir().join(WHISPER_MODEL_FILE));
    cfg.sized_audio_ctx = false;
    let full = WhisperRecognizer::load(cfg).unwrap();
    let whole_window = |pcm16: &[i16]| -> String {
        let mut session = full.session().unwrap();
        pcm16
            .chunks(16_000 * 30)
            .map(|c| session.transcribe(&pcm_i16_to_f32(c)).unwrap().text)
            .collect::<Vec<_>>()
            .join(" ")
    };

    for (name, reference, path) in [
        ("harvard_8k.wav", HARVARD_REF, "G.711"),
        ("jfk.wav", JFK_REF, "G.711"),
        ("jfk.wav", JFK_REF, "G.722"),
    ] {
        let wav = audio::read_wav(testdata(name));
        let mono = wav.to_mono();
        let direct16 = Resampler::resample_all(&mono, wav.rate, 16_000).expect("resample");
        let direct_wer = word_error_rate(reference, &whole_window(&direct16));
        let pcm16 = if path == "G.711" {
            let pcm8 = Resampler::resample_all(&mono, wav.rate, 8000).expect("resample");
            telephone_to_asr(&pcm8, true)
        } else {
            wideband_to_asr(&direct16)
        };
        let band_wer = word_error_rate(reference, &whole_window(&pcm16));
        // jfk (11 s) is one turn, as when the caller does not pause longer than the endpoint.
        let turns = if pcm16.len() > 16_000 * 29 {
            cut_like_a_call(&pcm16)
        } else {
            vec![pcm16.clone()]
        };
        let (text, time) = transcribe_pieces(w, &turns);
        let wer = word_error_rate(reference, &text);
        eprintln!(
            "{name} via {path}: file directly {:.1} %, the same telephone audio with the whole window {:.1} %, our path ({} turns, sized audio_ctx, {time:?}) {:.1} % WER: {text:?}",
            direct_wer * 100.0,
            band_wer * 100.0,
            turns.len(),
            wer * 100.0
        );
        assert!(
            wer <= band_wer + 0.03,
            "{name} via {path}: {:.1} % vs {:.1} % on the same audio: {text:?}",
            wer * 100.0,
            band_wer * 100.0
        );
        if name == "jfk.wav" && path == "G.711" {
            // For the record: jfk cut where it pauses longer than the endpoint (1.4 s after
            // "Americans") makes two turns.
            let cut = cut_like_a_call(&pcm16);
            let (text, _) = transcribe_pieces(w, &cut);
            eprintln!(
                "{name} via {path}, cut by the endpointer into {} turns: {:.1} % WER: {text:?}",
                cut.len(),
                word_error_rate(reference, &text) * 100.0
            );
        } else {
            assert!(
                wer <= direct_wer + 0.03,
                "{name} via {path}: {:.1} % vs {:.1} % directly: {text:?}",
                wer * 100.0,
                direct_wer * 100.0
            );
        }
    }
}

/// espeak-ng questions a caller asks the agent, through the 8 kHz µ-law path and cut by the
/// endpointer like a call: whisper may mishear robotic 8 kHz speech (FACTS.md), but it must not
/// say the question twice. Seen on a real call: "what are you opening hour and. what are you
/// opening hour and. hello"; before the decoder ran without timestamp tokens, four of these
/// ended in such run-ons ("How much no no no consultation card. How much").
#[test]
fn slow_espeak_questions_on_the_telephone_path_are_not_repeated() {
    let _g = serial();
    let w = whisper();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for question in [
        "What are your opening hours?",
        "Hello, what are your opening hours?",
        "Where are you located?",
        "I would like to talk to a person, please.",
        "Can I book an appointment for Monday?",
        "What are your opening hours and where are you?",
        "Hi. What time do you open tomorrow?",
        "What are your opening hours? Hello?",
        "Are you open on Saturday?",
        "What is your address?",
        "I want to speak to someone.",
        "How much does a consultation cost?",
        "Hello, hello, what are your opening hours?",
    ] {
        let wav = dir.path().join("q.wav");
        audio::make_speech(question, &wav, 8000);
        let mut pcm8 = audio::silence(8000, 300);
        pcm8.extend(audio::read_wav(&wav).to_mono());
        pcm8.extend(audio::silence(8000, 1200));
        let turns = cut_like_a_call(&telephone_to_asr(&pcm8, true));
        let (text, _) = transcribe_pieces(w, &turns);
        let words = edgevoice::speech::text::normalize_words(&text);
        eprintln!("{question:?} -> {text:?}");
        // Three words said twice, a word twice at the end, or the end saying the beginning
        // again.
        let n = words.len();
        let repeated = words
            .windows(3)
            .enumerate()
            .find(|(i, tri)| words[i + 3..].windows(3).any(|later| later == *tri))
            .map(|(_, tri)| tri.join(" "))
            .or_else(|| (n >= 2 && words[n - 1] == words[n - 2]).then(|| words[n - 1].clone()))
            .or_else(|| {
                (2..=words.len() / 2)
                    .find(|&k| words[words.len() - k..] == words[..k])
                    .map(|k| words[..k].join(" "))
            });
        if let Some(again) = repeated {
            failures.push(format!("{question:?} -> {text:?} says {again:?} again"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn one_ggml_whisper_and_llama_infer_in_one_process() {
    let _g = serial();
    // Real whisper inference...
    let wav = audio::read_wav(testdata("jfk.wav"));
    let t = whisper()
        .transcribe(&pcm_i16_to_f32(&wav.to_mono()))
        .unwrap();
    assert!(word_error_rate(JFK_REF, &t.text) <= 0.10, "{:?}", t.text);
    // ...then real llama inference, same process, same ggml...
    let llm = llama();
    let prompt = llm
        .chat_prompt(&[
            ChatMessage::system("You are a helpful assistant. Answer briefly."),
            ChatMessage::user("What is 2+2?"),
        ])
        .unwrap();
    let mut session = llm.session().unwrap();
    let mut streamed = String::new();
    let g = session
        .generate(
            &prompt,
            Budget {
                max_tokens: 32,
                max_time: Duration::from_secs(60),
            },
            &mut |piece| {
                streamed.push_str(piece);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    eprintln!(
        "llama: {:?} ({} tokens, first token {:?}, total {:?}, {:?})",
        g.text, g.generated_tokens, g.first_token, g.elapsed, g.stop
    );
    assert!(!g.text.trim().is_empty());
    assert_eq!(streamed, g.text);
    // ...and whisper again after llama (both still work).
    let again = whisper()
        .transcribe(&pcm_i16_to_f32(&wav.to_mono()))
        .unwrap();
    assert_eq!(again.text, t.text);
    let (rss, hwm) = rss_mb();
    eprintln!("RSS with both models loaded: {rss:.0} MB (peak {hwm:.0} MB)");
}

const SYSTEM_PROMPT: &str = "You are the telephone assistant of Northwind Dental Clinic, \
    answering callers on the clinic's main line. Speak in short, friendly sentences that sound \
    natural when read aloud, one or two sentences at a time, and never use lists, markdown, \
    emoji or abbreviations that a speech synthesizer would read badly. Facts you may use: the \
    clinic is at 42 Harbour Street, Springfield, on the second floor above the pharmacy, with \
    free parking behind the building. Opening hours are Monday to Friday from eight in the \
    morning to six in the evening, and Saturday from nine to one; the clinic is closed on \
    Sundays and public holidays. New patients are welcome and should bring a photo ID and their \
    insurance card. A routine check-up with cleaning takes about forty-five minutes. Emergency \
    appointments for pain or a broken tooth are kept free every weekday morning; callers with \
    an emergency should say so and you will transfer them to the front desk. Cancellations need \
    twenty-four hours notice, otherwise a fee of thirty dollars applies. The clinic accepts all \
    major insurance plans and card payments, but not cheques. Dr. Alvarez and Dr. Chen are the \
    dentists; Maria is the hygienist. You cannot book, move or cancel appointments yourself: \
    when a caller wants to, collect their full name, date of birth and a phone number, confirm \
    them back, and say that the front desk will call back within one working day. Never invent \
    prices, medical advice or availability. If you do not know something, say so and offer to \
    take a message. If the caller asks for a person, transfer them to the front desk. Stay on \
    the topic of the clinic; politely decline anything else. Keep every answer under forty \
    words. End the call politely when the caller says goodbye.";

#[test]
fn llm_second_turn_first_token_is_faster_with_the_kept_kv_cache() {
    let _g = serial();
    let llm = llama();
    let budget = Budget {
        max_tokens: 12,
        max_time: Duration::from_secs(60),
    };
    let mut turn1 = vec![
        ChatMessage::system(SYSTEM_PROMPT),
        ChatMessage::user("Hello, what are your opening hours on Saturday?"),
    ];

    // The product's call: prime the system prompt at call start, then the turns.
    let mut call = llm.new_session().unwrap();
    let t = Instant::now();
    call.prime(&llm.render_system(SYSTEM_PROMPT).unwrap())
        .unwrap();
    let prime_time = t.elapsed();
    let system_tokens = call.cached_tokens();
    let g1 = call
        .generate(&llm.render_chat(&turn1).unwrap(), budget, &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    turn1.push(ChatMessage::assistant(g1.text.trim()));
    turn1.push(ChatMessage::user(
        "And where do I park my car when I come in?",
    ));
    let prompt2 = llm.render_chat(&turn1).unwrap();
    let cached = call
        .generate(&prompt2, budget, &mut |_| ControlFlow::Continue(()))
        .unwrap();

    // The same second turn with nothing cached: the whole prompt evaluated.
    let mut fresh = llm.new_session().unwrap();
    let uncached = fresh
        .generate(&prompt2, budget, &mut |_| ControlFlow::Continue(()))
        .unwrap();

    eprintln!(
        "system prompt: {system_tokens} tokens, primed in {prime_time:?}; turn 1 first token \
         {:?} ({} of {} prompt tokens cached)",
        g1.first_token, g1.cached_tokens, g1.prompt_tokens
    );
    eprintln!(
        "turn 2 first token: cached {:?} ({} of {} prompt tokens from the KV cache) vs uncached \
         {:?} ({} tokens evaluated)",
        cached.first_token,
        cached.cached_tokens,
        cached.prompt_tokens,
        uncached.first_token,
        uncached.prompt_tokens
    );
    assert!(
        system_tokens >= 250,
        "system prompt only {system_tokens} tokens"
    );
    assert!(
        g1.cached_tokens >= system_tokens,
        "turn 1 did not reuse the primed system prompt"
    );
    assert!(cached.cached_tokens > system_tokens);
    assert_eq!(uncached.cached_tokens, 0);
    assert_eq!(
        cached.text, uncached.text,
        "greedy output must not depend on the cache"
    );
    let (c, u) = (cached.first_token.unwrap(), uncached.first_token.unwrap());
    assert!(
        c < u,
        "cached first token {c:?} not faster than uncached {u:?}"
    );
}

#[test]
fn llm_budgets_and_cancellation_stop_generation() {
    let _g = serial();
    let llm = llama();
    let prompt = llm
        .render_chat(&[
            ChatMessage::system("You are a storyteller."),
            ChatMessage::user("Tell me a long story about a lighthouse keeper."),
        ])
        .unwrap();
    let mut s = llm.new_session().unwrap();
    let g = s
        .generate(
            &prompt,
            Budget {
                max_tokens: 5,
                max_time: Duration::from_secs(60),
            },
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!(g.stop, StopReason::MaxTokens);
    assert_eq!(g.generated_tokens, 5);
    let mut n = 0;
    let g = s
        .generate(&prompt, Budget::default(), &mut |_| {
            n += 1;
            if n == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(g.stop, StopReason::Cancelled);
    assert!(g.generated_tokens <= 4, "{g:?}");
}

#[test]
fn llm_slot_extraction_is_always_the_grammar_s_json_with_the_slots_keys() {
    use edgevoice::agent::slots::{self, SlotKind, SlotSpec};
    let _g = serial();
    let llm = llama();
    let spec = vec![
        SlotSpec {
            name: "name".into(),
            description: "the caller's full name".into(),
            kind: SlotKind::Text,
        },
        SlotSpec {
            name: "day".into(),
            description: "the day they want to come".into(),
            kind: SlotKind::Text,
        },
        SlotSpec {
            name: "phone".into(),
            description: "their phone number".into(),
            kind: SlotKind::Digits,
        },
    ];
    let grammar = slots::grammar(&spec);
    let mut s = llm.new_session().unwrap();
    let mut filled_per_saying = Vec::new();
    for said in [
        "Hi, my name is John Smith and I would like to come in on Monday.",
        "It's Mary Jones, you can call me back on 0 7 7 0 0 9 0 0 1 2 3.",
        "What are your opening hours?",
    ] {
        let prompt = llm.render_chat(&slots::prompt(said, &spec)).unwrap();
        let g = s
            .generate_seq_constrained(
                0,
                &prompt,
                Some(&grammar),
                Budget {
                    max_tokens: 96,
                    max_time: Duration::from_secs(30),
                },
                &mut |_| ControlFlow::Continue(()),
            )
            .unwrap();
        eprintln!("{said:?} -> {} ({} ms)", g.text, g.elapsed.as_millis());
        // The grammar decides the shape: one object, exactly these keys in this order.
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&g.text).unwrap_or_else(|e| panic!("{e}: {}", g.text));
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(keys, ["day", "name", "phone"], "{}", g.text);
        let phone = &object["phone"];
        assert!(
            phone.is_null()
                || phone.as_str().is_some_and(|p| p
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ' ' || c == '+')),
            "{phone}"
        );
        let filled = slots::extract(&g.text, said, &spec).unwrap();
        eprintln!("  kept: {filled:?}");
        filled_per_saying.push(filled);
    }
    // What the caller said survives; what the model made up (a phone number for a caller who
    // gave none) does not.
    let first = &filled_per_saying[0];
    assert_eq!(
        first.get("name").map(String::as_str),
        Some("John Smith"),
        "{first:?}"
    );
    assert_eq!(
        first.get("day").map(String::as_str),
        Some("Monday"),
        "{first:?}"
    );
    assert_eq!(first.get("phone"), None, "{first:?}");
    assert_eq!(
        filled_per_saying[1].get("name").map(String::as_str),
        Some("Mary Jones")
    );
    assert_eq!(filled_per_saying[2].get("phone"), None);
}

#[test]
fn missing_models_are_named_with_the_install_command() {
    let err = WhisperRecognizer::load(WhisperConfig::new("/nonexistent/ggml-tiny.en-q8_0.bin"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/ggml-tiny.en-q8_0.bin")
            && err.contains("edgevoice models install"),
        "{err}"
    );
    let err = LlamaEngine::load(LlmConfig::new("/nonexistent/model.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/model.gguf") && err.contains("edgevoice models install"),
        "{err}"
    );
}
