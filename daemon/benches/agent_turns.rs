//! Voice agent turn latency, end to end: the release edgevoiced with the bundled models answers
//! baresip callers on 127.0.0.1; each caller asks scripted questions (Piper voice at 8 kHz,
//! 7 s apart so each reply finishes before the next question) and the daemon's own per-turn
//! stage times (stored in the call record) are collected: caller speech end → endpoint → ASR
//! final → LLM first token → first TTS audio → first reply audio on the RTP clock.
//!
//! Step 1: one caller, 20 turns: p50/p95 per stage. Then 2, 3, … 8, 10, 12, … simultaneous
//! callers (5 turns each) until turn latency p95 (to the first reply RTP) passes 1.5 s: the
//! largest count under it is reported, with CPU and RSS. BENCH_AGENT_MAX_CALLERS caps the steps
//! (default 16). The daemon runs with the product's default sip.max_calls (16), or more if more
//! callers are asked for, so admission never stops a step; each call slot holds its own KV
//! cache, so idle RSS grows with it.
//! BENCH_AGENT_BASELINE=/path/to/another/edgevoiced runs the same steps with that build first
//! (an earlier commit's, say) and prints both, for a before/after in one run on one machine.
//! BENCH_AGENT_LLM=/path/to/model.gguf runs the daemon with that language model
//! (`models.llm`): a larger model a site may bring (`make bench` fetches Qwen2.5-Coder 0.5B and
//! writes that run to target/bench/agent_turns_larger_llm.md, BENCH_AGENT_OUT names the file).
//! Prints markdown tables and writes them to target/bench/agent_turns.md.

#[path = "../../tests/common/audio.rs"]
mod audio;
#[path = "../../tests/common/peers.rs"]
mod peers;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use edgevoice::speech::{
    PiperConfig, PiperSynthesizer, SpeechSynthesizer, ONNXRUNTIME_FILE, TTS_VOICE_FILE,
};
use edgevoice::telephony::media::Resampler;
use peers::{poll_until, Baresip, BaresipOptions, PeerProcess};

const QUESTIONS: &[&str] = &[
    "What are your opening hours?",
    "Where is the clinic?",
    "Are you open on Saturday?",
    "Can I book an appointment for next week?",
    "Is there parking near the clinic?",
    "When do you close on Friday?",
    "What is your address?",
    "Do you open on Sundays?",
    "How do I find you?",
    "Are you open in the morning?",
];
const GAP_MS: u64 = 7000;
const LIMIT_MS: f64 = 1500.0;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn caller_wav(dir: &Path, turns: usize) -> PathBuf {
    let m = shared().join("models");
    let mut c = PiperConfig::new(m.join(TTS_VOICE_FILE), m.join(ONNXRUNTIME_FILE));
    c.threads = 2;
    let piper = PiperSynthesizer::load(c).expect("piper");
    let mut pcm = audio::silence(8000, 5000); // the greeting
    for i in 0..turns {
        let s = piper
            .synthesize(QUESTIONS[i % QUESTIONS.len()])
            .expect("tts");
        pcm.extend(Resampler::resample_all(&s.pcm, s.sample_rate, 8000).expect("resample"));
        pcm.extend(audio::silence(8000, GAP_MS));
    }
    let path = dir.join(format!("caller-{turns}.wav"));
    audio::write_wav(&path, 8000, 1, &pcm);
    path
}

struct Daemon {
    proc: PeerProcess,
    config: PathBuf,
    port: u16,
}

fn cli(config: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_edgevoice"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("edgevoice");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn start_daemon(binary: &Path, dir: &Path, max_calls: u32) -> Daemon {
    let config = dir.join("edgevoice.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"state\"\nruntime_dir = \"run\"\nlog_level = \"{}\"\n\
             [models]\ndir = \"{}\"\n{}[sip]\nlisten = \"127.0.0.1:0\"\nmax_calls = {max_calls}\n\
             [rtp]\nport_min = 61000\nport_max = 61999\n[call]\nhandler = \"agent\"\n",
            std::env::var("BENCH_AGENT_LOG_LEVEL").unwrap_or_else(|_| "info".to_owned()),
            shared().join("models").display(),
            std::env::var("BENCH_AGENT_LLM")
                .map(|p| format!("llm = \"{p}\"\n"))
                .unwrap_or_default()
        ),
    )
    .expect("config");
    let mut cmd = Command::new(binary);
    cmd.arg("--config").arg(&config);
    let proc = PeerProcess::spawn("edgevoiced", &mut cmd, &dir.join("edgevoiced.log"));
    let status = poll_until(Duration::from_secs(90), || {
        let s = cli(&config, &["status", "--json"]);
        (s["agent"] == "ready").then_some(s)
    })
    .unwrap_or_else(|| panic!("agent not ready:\n{}", proc.log_tail(30)));
    let port = status["sip_listen"]
        .as_str()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("port");
    Daemon { proc, config, port }
}

fn proc_stat(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|f| f.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, rss)
}

/// Runs `callers` simultaneous calls of `turns` questions; returns every turn's latency JSON,
/// the daemon's CPU % of one core and its RSS (KiB) at the end.
fn run_step(
    d: &Daemon,
    dir: &Path,
    callers: usize,
    turns: usize,
) -> (Vec<serde_json::Value>, f64, u64) {
    let wav = caller_wav(dir, turns);
    let (cpu0, _) = proc_stat(d.proc.pid());
    let t0 = Instant::now();
    let phones: Vec<Baresip> = (0..callers)
        .map(|i| {
            Baresip::start(
                BaresipOptions::new(&format!("caller{i}"))
                    .mic(&wav, Duration::from_secs(2))
                    .record(false),
            )
        })
        .collect();
    let uri = format!("sip:agent@127.0.0.1:{}", d.port);
    for (i, p) in phones.iter().enumerate() {
        // Spread the callers so their turns do not line up exactly.
        std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 1300 }));
        p.dial(&uri);
    }
    let long = Duration::from_secs(turns as u64 * (GAP_MS / 1000 + 3) + 30);
    for p in &phones {
        p.wait_event("CALL_CLOSED", long);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu1, rss) = proc_stat(d.proc.pid());
    std::thread::sleep(Duration::from_secs(1));
    let calls = cli(&d.config, &["calls", "--json"]);
    let mut turns_out = Vec::new();
    for c in calls.as_array().into_iter().flatten().take(callers) {
        let id = c["id"].as_str().unwrap_or("");
        let call = cli(&d.config, &["call", "show", id, "--json"]);
        for t in call["turns"].as_array().into_iter().flatten() {
            turns_out.push(t.clone());
        }
    }
    (turns_out, (cpu1 - cpu0) / elapsed * 100.0, rss)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn stage(turns: &[serde_json::Value], key: &str) -> Vec<f64> {
    turns
        .iter()
        .filter_map(|t| t["latency"][key].as_f64())
        .collect()
}

/// The product's default `sip.max_calls`.
const DEFAULT_MAX_CALLS: usize = 16;

/// What one build scored: one caller's reply p50/p95, and the most callers under the limit.
struct Score {
    p50: f64,
    p95: f64,
    callers: usize,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let max_callers: usize = std::env::var("BENCH_AGENT_MAX_CALLERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
        .max(1);
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_edgevoiced"));
    let mut md = String::from(
        "# Voice agent turns (release edgevoiced, bundled models, baresip callers)\n\n",
    );
    let mut scores = Vec::new();
    if let Some(baseline) = std::env::var_os("BENCH_AGENT_BASELINE").map(PathBuf::from) {
        md.push_str(&format!("# Baseline: {}\n\n", baseline.display()));
        let score = measure(&baseline, max_callers, &mut md);
        scores.push((baseline.display().to_string(), score));
        md.push_str("# This build\n\n");
    }
    let score = measure(&ours, max_callers, &mut md);
    scores.push(("this build".to_owned(), score));
    if scores.len() > 1 {
        md.push_str("\n## Before and after (same machine, same run)\n\n| build | one caller: reply p50 | reply p95 | callers at reply p95 ≤ 1.5 s |\n|---|---|---|---|\n");
        for (name, s) in &scores {
            md.push_str(&format!(
                "| {name} | {:.0} | {:.0} | {} |\n",
                s.p50, s.p95, s.callers
            ));
        }
    }
    println!("{md}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let name = std::env::var("BENCH_AGENT_OUT").unwrap_or_else(|_| "agent_turns.md".to_owned());
    let _ = std::fs::write(out.join(name), md);
}

/// Every step with one build of the daemon; its tables go into `md`.
fn measure(binary: &Path, max_callers: usize, md: &mut String) -> Score {
    let dir = tempfile::tempdir().expect("tmp");
    // BENCH_AGENT_KEEP=1 keeps the daemon's log and state for a look afterwards.
    let dir_path = if std::env::var_os("BENCH_AGENT_KEEP").is_some() {
        let kept = dir.keep();
        eprintln!("daemon dir kept: {}", kept.display());
        kept
    } else {
        dir.path().to_owned()
    };
    let d = start_daemon(binary, &dir_path, max_callers.max(DEFAULT_MAX_CALLS) as u32);
    let (_, idle_rss) = proc_stat(d.proc.pid());

    let (turns, cpu, rss) = run_step(&d, &dir_path, 1, 20);
    md.push_str(&format!(
        "## One caller, {} turns (ms from the end of the caller's speech)\n\n| stage | p50 | p95 | max |\n|---|---|---|---|\n",
        turns.len()
    ));
    for (name, key) in [
        ("endpoint decided", "endpoint_ms"),
        ("ASR final", "asr_final_ms"),
        ("LLM first token", "llm_first_token_ms"),
        ("first TTS audio", "first_tts_audio_ms"),
        ("first reply audio on the RTP clock", "first_reply_rtp_ms"),
    ] {
        let mut v = stage(&turns, key);
        let n = v.len();
        md.push_str(&format!(
            "| {name} (n={n}) | {:.0} | {:.0} | {:.0} |\n",
            pct(&mut v, 0.5),
            pct(&mut v, 0.95),
            pct(&mut v, 1.0)
        ));
    }
    let mut reply = stage(&turns, "first_reply_rtp_ms");
    let (p50, p95) = (pct(&mut reply, 0.5), pct(&mut reply, 0.95));
    let replaced = turns
        .iter()
        .filter(|t| t["errors"].to_string().contains("guardrail"))
        .count();
    md.push_str(&format!(
        "\nGuardrail replaced or cut the model's reply in {replaced} of {} turns. Daemon CPU {cpu:.0} % of one core during the call; RSS {} MiB idle with models loaded, {} MiB after.\n\n",
        turns.len(),
        idle_rss / 1024,
        rss / 1024
    ));

    md.push_str("## Simultaneous callers (5 turns each)\n\n| callers | turns | reply p50 | reply p95 | CPU % of a core | RSS MiB |\n|---|---|---|---|---|---|\n");
    let mut best = 1;
    let steps = (2..=max_callers).filter(|&n| n <= 8 || n % 2 == 0);
    for n in steps {
        let (turns, cpu, rss) = run_step(&d, &dir_path, n, 5);
        let mut v = stage(&turns, "first_reply_rtp_ms");
        let (p50, p95) = (pct(&mut v, 0.5), pct(&mut v, 0.95));
        md.push_str(&format!(
            "| {n} | {} | {p50:.0} | {p95:.0} | {cpu:.0} | {} |\n",
            turns.len(),
            rss / 1024
        ));
        eprintln!("{n} callers: p50 {p50:.0} ms p95 {p95:.0} ms");
        if p95.is_nan() || p95 > LIMIT_MS {
            break;
        }
        best = n;
    }
    md.push_str(&format!(
        "\nLargest number of simultaneous callers with reply p95 ≤ {LIMIT_MS:.0} ms: **{best}** (steps stop at the first over it, or at BENCH_AGENT_MAX_CALLERS={max_callers}).\n\n"
    ));
    Score {
        p50,
        p95,
        callers: best,
    }
}
