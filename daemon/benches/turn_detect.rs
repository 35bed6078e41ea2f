//! End-of-turn benchmark: one Smart Turn v3.2 `completion()` on 8 s of 16 kHz speech (the first
//! 8 s of testdata/audio/jfk.wav), split into feature extraction (speech::mel) and inference
//! (ONNX Runtime 1.24.4), at 1 and 2 intra-op threads, p50 / p95 of `RUNS` runs after a warm-up.
//! Beside it, Pipecat's own path on the same clip, model and threads: its vendored Whisper
//! feature code (pipecat-ai 1.14.0, numpy) and onnxruntime 1.24.4 in Python, built by
//! bench/reference/build.sh; the run also checks that both give the same features and score.
//! A missing reference is said in the table (FACTS.md: 50–60 ms per call on 1 thread). Prints a
//! markdown table and writes it to target/bench/turn_detect.md.

#[path = "../../tests/common/audio.rs"]
mod audio;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use edgevoice::speech::{
    pcm_i16_to_f32, SmartTurn, SmartTurnConfig, TurnCompletion, ONNXRUNTIME_FILE, TURN_MODEL_FILE,
};

const RUNS: usize = 60;
const WARM_UP: usize = 5;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn target() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// p50 and p95 of timings in ms.
fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    if ms.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95))
}

/// One engine's timings at one thread count.
struct Timings {
    features: (f64, f64),
    inference: (f64, f64),
    total: (f64, f64),
    score: f32,
}

fn measure_ours(model: &SmartTurn, pcm: &[f32]) -> Timings {
    let mut features_ms = Vec::new();
    let mut inference_ms = Vec::new();
    let mut total_ms = Vec::new();
    let mut score = f32::NAN;
    for run in 0..WARM_UP + RUNS {
        let started = Instant::now();
        let features = model.features(pcm).expect("features");
        let middle = Instant::now();
        score = model.infer(&features).expect("inference");
        let ended = Instant::now();
        // The trait's own call, timed on its own.
        let whole = Instant::now();
        let again = model.completion(pcm).expect("completion");
        let whole = whole.elapsed();
        assert_eq!(again, score, "completion() is deterministic");
        if run >= WARM_UP {
            features_ms.push((middle - started).as_secs_f64() * 1000.0);
            inference_ms.push((ended - middle).as_secs_f64() * 1000.0);
            total_ms.push(whole.as_secs_f64() * 1000.0);
        }
    }
    Timings {
        features: percentiles(features_ms),
        inference: percentiles(inference_ms),
        total: percentiles(total_ms),
        score,
    }
}

/// Pipecat's path in Python (bench/reference/smart_turn_ref.py), or why it did not run. Also
/// returns the largest difference between its features and ours.
fn measure_reference(
    model: &Path,
    pcm: &[f32],
    ours: &[f32],
    threads: usize,
) -> Result<(Timings, f32), String> {
    let dir = target().join("bench-ref");
    let python = dir.join("smart-turn-venv/bin/python");
    if !python.exists() {
        return Err(std::fs::read_to_string(dir.join("smart-turn.error"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "not built: run `make bench-ref`".into()));
    }
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let clip = scratch.join("turn_clip.f32");
    let features_out = scratch.join("turn_features.f32");
    let bytes: Vec<u8> = pcm.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&clip, bytes).map_err(|e| e.to_string())?;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/reference/smart_turn_ref.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(model)
        .arg(&clip)
        .arg(&features_out)
        .arg(threads.to_string())
        .arg(RUNS.to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "smart_turn_ref.py failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("smart_turn_ref.py: {e}"))?;
    let ms = |key: &str| -> Vec<f64> {
        json[key]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default()
    };
    let totals: Vec<f64> = ms("features_ms")
        .iter()
        .zip(ms("inference_ms"))
        .map(|(f, i)| f + i)
        .collect();
    let theirs: Vec<f32> = std::fs::read(&features_out)
        .map_err(|e| e.to_string())?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if theirs.len() != ours.len() {
        return Err(format!("reference features: {} values", theirs.len()));
    }
    let max_diff = theirs
        .iter()
        .zip(ours)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    Ok((
        Timings {
            features: percentiles(ms("features_ms")),
            inference: percentiles(ms("inference_ms")),
            total: percentiles(totals),
            score: json["score"].as_f64().unwrap_or(f64::NAN) as f32,
        },
        max_diff,
    ))
}

fn row(md: &mut String, engine: &str, threads: usize, t: &Timings) {
    let f = |(p50, p95): (f64, f64)| format!("{p50:.2} / {p95:.2}");
    md.push_str(&format!(
        "| {engine} | {threads} | {} | {} | {} | {:.4} |\n",
        f(t.features),
        f(t.inference),
        f(t.total),
        t.score
    ));
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let models = shared().join("models");
    let model_path = models.join(TURN_MODEL_FILE);
    let jfk = audio::read_wav(shared().join("testdata/audio/jfk.wav"));
    assert_eq!(jfk.rate, 16_000, "jfk.wav is 16 kHz");
    let mono = jfk.to_mono();
    let pcm = pcm_i16_to_f32(&mono[..mono.len().min(8 * 16_000)]);

    let mut md = format!(
        "# Smart Turn v3.2: one completion() on 8 s of 16 kHz speech, ms p50 / p95 of {RUNS} runs\n\n\
         | engine | threads | features | inference | completion() | score |\n|---|---|---|---|---|---|\n"
    );
    let mut notes = Vec::new();
    for threads in [1, 2] {
        let mut config = SmartTurnConfig::new(&model_path, models.join(ONNXRUNTIME_FILE));
        config.threads = threads;
        let loading = Instant::now();
        let model = SmartTurn::load(config).expect("load Smart Turn");
        notes.push(format!(
            "ours, {threads} thread(s): loaded in {:?}",
            loading.elapsed()
        ));
        let ours = measure_ours(&model, &pcm);
        row(
            &mut md,
            "edgevoice (Rust, speech::mel + ort)",
            threads,
            &ours,
        );
        let features = model.features(&pcm).expect("features");
        match measure_reference(&model_path, &pcm, &features, threads) {
            Ok((reference, max_diff)) => {
                row(
                    &mut md,
                    "Pipecat 1.14.0 (numpy + onnxruntime, Python)",
                    threads,
                    &reference,
                );
                notes.push(format!(
                    "{threads} thread(s): features max |ours − Pipecat's| = {max_diff:.2e}; \
                     scores {:.6} vs {:.6}",
                    ours.score, reference.score
                ));
            }
            Err(why) => {
                md.push_str(&format!(
                    "| Pipecat reference: not run ({why}); FACTS.md: 50–60 ms per call on 1 thread | {threads} | | | | |\n"
                ));
            }
        }
    }
    md.push_str("\nfeatures: log-mel of the last 8 s (ours: realfft in f64; Pipecat: numpy); \
                 inference: ONNX Runtime on the [1, 80, 800] input; completion(): both, as the \
                 trait runs them (timed separately). Python timings exclude interpreter start-up.\n\n");
    for n in notes {
        md.push_str(&format!("- {n}\n"));
    }
    println!("{md}");
    let out = target().join("bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("turn_detect.md"), md);
}
