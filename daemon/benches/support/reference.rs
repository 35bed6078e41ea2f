//! The reference engines, run beside ours in the same bench run on the same models, audio and
//! threads: whisper.cpp 1.8.5's `whisper-cli`, llama.cpp's `llama-bench` (llama-cpp-python
//! 0.3.36's tree) and Piper 1.8.0 on ONNX Runtime 1.24.4. `make bench` builds them into
//! target/bench-ref (bench/reference/build.sh); when one is missing its rows fall back to
//! ../shared/REFERENCE-FIGURES.md and the table says why.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (min, median) in the row's unit.
pub type MinMedian = (f64, f64);

/// Where a reference figure came from.
pub struct Figure {
    pub value: MinMedian,
    pub source: String,
}

impl Figure {
    /// The measured figure, or the one from REFERENCE-FIGURES.md with the reason it was not
    /// measured.
    pub fn measured_or(measured: Result<Figure, String>, fallback: MinMedian) -> Figure {
        measured.unwrap_or_else(|why| Figure {
            value: fallback,
            source: format!("REFERENCE-FIGURES.md ({why})"),
        })
    }
}

pub fn min_median(mut v: Vec<f64>) -> Result<MinMedian, String> {
    if v.is_empty() {
        return Err("no samples".into());
    }
    v.sort_by(f64::total_cmp);
    Ok((v[0], v[v.len() / 2]))
}

pub struct ReferenceEngines {
    dir: PathBuf,
}

impl ReferenceEngines {
    pub fn new(workspace_target: &Path) -> Self {
        ReferenceEngines {
            dir: workspace_target.join("bench-ref"),
        }
    }

    fn tool(&self, part: &str, bin: &Path) -> Result<PathBuf, String> {
        if bin.exists() {
            return Ok(bin.to_path_buf());
        }
        let why = std::fs::read_to_string(self.dir.join(format!("{part}.error")))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "not built: run `make bench`".to_owned());
        Err(why)
    }

    pub fn scratch(&self) -> PathBuf {
        let d = self.dir.join("scratch");
        let _ = std::fs::create_dir_all(&d);
        d
    }

    /// whisper-cli's own compute time for one file (mel + sample + encode + decode + batched
    /// decode + prompt, as whisper.cpp reports them; model load excluded), `runs` fresh
    /// processes after one warm-up. Greedy with one candidate and the given audio_ctx (0: the
    /// whole 30 s window), as our recognizer decodes; whisper-cli's other defaults kept.
    pub fn whisper_cli(
        &self,
        model: &Path,
        wav: &Path,
        audio_ctx: u32,
        threads: u32,
        runs: usize,
    ) -> Result<Figure, String> {
        let bin = self.tool("whisper", &self.dir.join("bin/whisper-cli"))?;
        let run = || -> Result<f64, String> {
            let out = Command::new(&bin)
                .arg("-m")
                .arg(model)
                .arg("-f")
                .arg(wav)
                .args([
                    "-t",
                    &threads.to_string(),
                    "-l",
                    "en",
                    "-bs",
                    "1",
                    "-bo",
                    "1",
                ])
                .args(["-nt", "-ac", &audio_ctx.to_string()])
                .output()
                .map_err(|e| format!("whisper-cli: {e}"))?;
            if !out.status.success() {
                return Err(format!("whisper-cli failed: {}", out.status));
            }
            whisper_compute_ms(&String::from_utf8_lossy(&out.stderr))
        };
        run()?;
        let samples = (0..runs).map(|_| run()).collect::<Result<Vec<_>, _>>()?;
        Ok(Figure {
            value: min_median(samples)?,
            source: "whisper-cli 1.8.5, this run".into(),
        })
    }

    /// llama-bench's per-repetition times for one test: `prompt` tokens evaluated on top of
    /// `depth` tokens already in the KV cache, then `gen` tokens generated. Returns the samples
    /// in ms.
    pub fn llama_bench_ms(
        &self,
        model: &Path,
        prompt: usize,
        gen: usize,
        depth: usize,
        threads: u32,
        runs: usize,
    ) -> Result<Vec<f64>, String> {
        let bin = self.tool("llama", &self.dir.join("bin/llama-bench"))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-m")
            .arg(model)
            .args([
                "-t",
                &threads.to_string(),
                "-r",
                &runs.to_string(),
                "-o",
                "json",
            ])
            .args(["-p", &prompt.to_string(), "-n", &gen.to_string()])
            .args(["-d", &depth.to_string()]);
        let tests = json_output(cmd, "llama-bench")?;
        let test = tests
            .as_array()
            .and_then(|a| a.first())
            .ok_or("llama-bench printed no test")?;
        let samples = test["samples_ns"]
            .as_array()
            .ok_or("llama-bench test without samples_ns")?;
        Ok(samples
            .iter()
            .filter_map(|v| v.as_f64())
            .map(|ns| ns / 1e6)
            .collect())
    }

    /// Piper 1.8.0 itself (Python, ONNX Runtime 1.24.4 from PyPI): voice load, first audio of
    /// `sentence` over `runs` runs after a warm-up, and the real-time factor.
    pub fn piper(
        &self,
        voice: &Path,
        sentence: &str,
        threads: u32,
        runs: usize,
    ) -> Result<PiperFigures, String> {
        let python = self.tool("piper", &self.dir.join("piper-venv/bin/python"))?;
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/reference/piper_ref.py");
        let mut cmd = Command::new(python);
        cmd.arg(script)
            .arg(voice)
            .arg(threads.to_string())
            .arg(runs.to_string())
            .arg(sentence);
        let v = json_output(cmd, "piper")?;
        let firsts: Vec<f64> = v["first_audio_ms"]
            .as_array()
            .ok_or("piper output without first_audio_ms")?
            .iter()
            .filter_map(|x| x.as_f64())
            .collect();
        let source = format!(
            "Piper {} on ONNX Runtime {}, this run",
            v["versions"]["piper-tts"].as_str().unwrap_or("?"),
            v["versions"]["onnxruntime"].as_str().unwrap_or("?")
        );
        Ok(PiperFigures {
            load_ms: v["load_ms"]
                .as_f64()
                .ok_or("piper output without load_ms")?,
            first_audio: min_median(firsts)?,
            rtf: v["rtf"].as_f64().ok_or("piper output without rtf")?,
            source,
        })
    }
}

pub struct PiperFigures {
    pub load_ms: f64,
    pub first_audio: MinMedian,
    pub rtf: f64,
    pub source: String,
}

/// Runs a reference tool that prints JSON on stdout; on failure, the last line it printed on
/// stderr says why.
fn json_output(mut cmd: Command, name: &str) -> Result<serde_json::Value, String> {
    let out = cmd.output().map_err(|e| format!("{name}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{name} output is not JSON: {e}"))
}

/// Sums whisper_print_timings' compute stages from whisper-cli's stderr.
fn whisper_compute_ms(stderr: &str) -> Result<f64, String> {
    let stages = [
        "mel time",
        "sample time",
        "encode time",
        "decode time",
        "batchd time",
        "prompt time",
    ];
    let mut total = 0.0;
    let mut found = 0;
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix("whisper_print_timings:") else {
            continue;
        };
        let rest = rest.trim();
        if !stages.iter().any(|s| rest.starts_with(s)) {
            continue;
        }
        let ms = rest
            .split('=')
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("unreadable whisper timing line: {line}"))?;
        total += ms;
        found += 1;
    }
    if found != stages.len() {
        return Err(format!(
            "whisper-cli printed {found} of {} timing stages",
            stages.len()
        ));
    }
    Ok(total)
}
