//! Sentence embedding benchmark (all-MiniLM-L6-v2 int8 on ONNX Runtime, `speech::embed`): ms per
//! embedding of a typical 8-word caller sentence at 1 and 2 threads (p50 / p95 of `RUNS`), and
//! the start-up cost of an agent's intents (model load, then 40 examples one by one and as one
//! batch). Beside ours, the Python reference (Hugging Face `tokenizers` + ONNX Runtime 1.24.4,
//! bench/reference/embed_ref.py, built by bench/reference/build.sh into target/bench-ref) on the
//! same files and threads: its time per embedding and the cosine between its vectors and ours
//! (and whether the token ids agree). Prints a markdown table and writes it to
//! target/bench/embed.md.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgevoice::speech::{EmbedConfig, SentenceEmbedder, SentenceEmbedding};

const RUNS: usize = 200;
const WARM_UP: usize = 10;
/// Eight words, as a caller says them.
const SENTENCE: &str = "Could I book an appointment for next Tuesday?";

/// 40 intent examples, as a site configures them (the start-up cost of an agent).
const EXAMPLES: [&str; 40] = [
    "talk to a person",
    "speak to someone",
    "speak to a human",
    "real person",
    "operator",
    "receptionist",
    "that's all",
    "goodbye",
    "bye",
    "nothing else",
    "thanks, that's everything",
    "opening hours",
    "when are you open",
    "what time do you close",
    "are you open today",
    "where are you",
    "what is your address",
    "how do I get to the clinic",
    "where is the clinic",
    "call me back",
    "callback",
    "can someone ring me back",
    "return my call",
    "leave a message",
    "take a message",
    "pass on a message",
    "leave a note for the doctor",
    "book an appointment",
    "change my appointment",
    "cancel my appointment",
    "see a doctor",
    "reschedule my visit",
    "do you take new patients",
    "register with the practice",
    "repeat prescription",
    "order my medication",
    "test results",
    "are my blood results back",
    "is there parking",
    "do you have wheelchair access",
];

/// Extra texts for the comparison with the reference: punctuation, accents, misspellings,
/// a long turn.
const TRICKY: [&str; 5] = [
    "Café? Où est-il… «vite»!",
    "Can I speak to the recepshionist?",
    "I want to make an a point meant, ASAP!!",
    "",
    "So basically what happened is that I called last week about my mother's prescription and \
     nobody rang me back, and now she has run out, and I really need someone to sort it out \
     today because the pharmacy says they have nothing on file for her at all, can you help?",
];

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/models")
}

fn target() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (p50, p95) of samples in ms.
fn p50_p95(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95))
}

/// What the Python reference measured at one thread count.
struct Reference {
    ms: (f64, f64),
    ids: Vec<Vec<i64>>,
    embeddings: Vec<Vec<f32>>,
    version: String,
}

/// Runs bench/reference/embed_ref.py in target/bench-ref/embed-venv; Err says why not.
fn reference(config: &EmbedConfig, texts: &[&str], threads: usize) -> Result<Reference, String> {
    let python = target().join("bench-ref/embed-venv/bin/python");
    if !python.exists() {
        return Err(
            std::fs::read_to_string(target().join("bench-ref/embed.error"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "not built: run `make bench-ref`".to_owned()),
        );
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/reference/embed_ref.py");
    let request = serde_json::json!({
        "model": config.model, "tokenizer": config.tokenizer, "threads": threads,
        "runs": RUNS + WARM_UP, "texts": texts,
    });
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("embed_ref.py: {e}"))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().ok_or("embed_ref.py: no stdin")?;
        stdin
            .write_all(request.to_string().as_bytes())
            .map_err(|e| format!("embed_ref.py: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("embed_ref.py: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "embed_ref.py failed: {}",
            stderr.lines().last().unwrap_or_default()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("embed_ref.py output: {e}"))?;
    let numbers = |x: &serde_json::Value| -> Vec<f64> {
        x.as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    let rows = |key: &str| -> Vec<Vec<f64>> {
        v[key]
            .as_array()
            .map(|a| a.iter().map(numbers).collect())
            .unwrap_or_default()
    };
    let timings = numbers(&v["ms"]);
    if timings.len() <= WARM_UP {
        return Err("embed_ref.py returned no timings".into());
    }
    Ok(Reference {
        ms: p50_p95(timings[WARM_UP..].to_vec()),
        ids: rows("ids")
            .into_iter()
            .map(|r| r.into_iter().map(|x| x as i64).collect())
            .collect(),
        embeddings: rows("embeddings")
            .into_iter()
            .map(|r| r.into_iter().map(|x| x as f32).collect())
            .collect(),
        version: v["version"].as_str().unwrap_or("?").to_owned(),
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-12)
}

struct Row {
    what: String,
    ours: String,
    reference: String,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let compared: Vec<&str> = std::iter::once(SENTENCE)
        .chain(EXAMPLES)
        .chain(TRICKY)
        .collect();

    for threads in [1usize, 2] {
        let mut config = EmbedConfig::in_models_dir(&models());
        config.threads = threads;
        let t0 = Instant::now();
        let embedder = SentenceEmbedder::load(config.clone()).expect("load the embedding model");
        let load = t0.elapsed();
        // Start-up: the first embeddings pay ONNX Runtime's lazy set-up; both counted.
        let t0 = Instant::now();
        for e in EXAMPLES {
            embedder.embed(e).expect("embed");
        }
        let one_by_one = t0.elapsed();
        let t0 = Instant::now();
        embedder.embed_batch(&EXAMPLES).expect("embed batch");
        let batch = t0.elapsed();

        for _ in 0..WARM_UP {
            embedder.embed(SENTENCE).expect("embed");
        }
        let samples: Vec<f64> = (0..RUNS)
            .map(|_| {
                let t0 = Instant::now();
                embedder.embed(SENTENCE).expect("embed");
                ms(t0.elapsed())
            })
            .collect();
        let ours = p50_p95(samples);

        let reference = reference(&config, &compared, threads);
        let ref_cell = match &reference {
            Ok(r) => format!(
                "{:.2} / {:.2} ms (Python tokenizers + ONNX Runtime {}, this run)",
                r.ms.0, r.ms.1, r.version
            ),
            Err(why) => format!("not run: {why}"),
        };
        rows.push(Row {
            what: format!("embed one 8-word sentence, {threads} thread(s), p50 / p95 of {RUNS}"),
            ours: format!("{:.2} / {:.2} ms", ours.0, ours.1),
            reference: ref_cell,
        });
        rows.push(Row {
            what: format!("model + tokenizer load, {threads} thread(s)"),
            ours: format!("{:.0} ms", ms(load)),
            reference: String::new(),
        });
        rows.push(Row {
            what: format!(
                "40 intent examples, one by one (first use included), {threads} thread(s)"
            ),
            ours: format!("{:.0} ms", ms(one_by_one)),
            reference: String::new(),
        });
        rows.push(Row {
            what: format!("40 intent examples, one batch, {threads} thread(s)"),
            ours: format!("{:.0} ms", ms(batch)),
            reference: String::new(),
        });

        if let Ok(r) = reference {
            let ours: Vec<Vec<f32>> = compared
                .iter()
                .map(|t| embedder.embed(t).expect("embed"))
                .collect();
            let worst = ours
                .iter()
                .zip(&r.embeddings)
                .map(|(a, b)| cosine(a, b))
                .fold(f32::INFINITY, f32::min);
            let same_ids = compared
                .iter()
                .zip(&r.ids)
                .filter(|(t, ids)| embedder.tokenizer().encode(t) == **ids)
                .count();
            let verdict = if worst >= 0.99 && same_ids == compared.len() {
                "ok"
            } else {
                "MISMATCH"
            };
            rows.push(Row {
                what: format!(
                    "agreement with the reference, {} texts, {threads} thread(s)",
                    compared.len()
                ),
                ours: format!(
                    "lowest cosine {worst:.5}; token ids equal on {same_ids}/{}: {verdict}",
                    compared.len()
                ),
                reference: "Hugging Face tokenizers + mean pooling in numpy".into(),
            });
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    notes.push(format!(
        "Load average during the run: {} (other work on the machine skews p95 and the \
         2-thread rows most).",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    notes.push(format!(
        "Sentence: \"{SENTENCE}\". ONNX Runtime 1.24.4 in both (ours through ort 2.0.0-rc.12, \
         intra-op threads as the row says, no spinning). The reference's time includes its \
         tokenizer, as ours does."
    ));

    let mut md = String::from(
        "# Sentence embeddings (all-MiniLM-L6-v2 int8, ONNX Runtime)\n\n\
         | what | edgevoice | reference |\n|---|---|---|\n",
    );
    for r in &rows {
        md.push_str(&format!("| {} | {} | {} |\n", r.what, r.ours, r.reference));
    }
    for n in notes {
        md.push_str(&format!("\n{n}\n"));
    }
    println!("{md}");
    let out = target().join("bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("embed.md"), md);
}
