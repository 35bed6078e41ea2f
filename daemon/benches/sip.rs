//! Signalling benchmark: call setups per second (INVITE → 200 → ACK → BYE) that edgevoiced
//! sustains with zero failures, driven by sipp on 127.0.0.1, beside sipp's own UAS answering
//! the same load (the reference: what the load generator and loopback allow).
//! Prints a table and writes it to target/bench/sip.md.

#[path = "../../tests/common/audio.rs"]
mod audio;
#[path = "../../tests/common/peers.rs"]
mod peers;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peers::{Sipp, SippUac};

fn run(target: &str, rate: f64, calls: u32) -> peers::SippResult {
    Sipp::run_uac(
        &SippUac::new(target)
            .calls(calls)
            .rate(rate)
            .max_concurrent(400)
            .call_duration(Duration::from_millis(0))
            .timeout(Duration::from_secs(120)),
    )
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("edgevoice.toml");
    std::fs::write(
        &config,
        "[daemon]\nstate_dir = \"state\"\nruntime_dir = \"run\"\nlog_level = \"warn\"\n\
         [sip]\nlisten = \"127.0.0.1:0\"\nmax_calls = 400\n\
         [rtp]\nport_min = 30000\nport_max = 31999\n\
         [media_test]\nafter_prompt = \"listen\"\n",
    )
    .expect("config");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_edgevoiced"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("edgevoiced");
    let cli = env!("CARGO_BIN_EXE_edgevoice");
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = loop {
        let out = Command::new(cli)
            .args(["--config"])
            .arg(&config)
            .args(["status", "--json"])
            .output()
            .expect("edgevoice status");
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            if let Some(p) = v["sip_listen"]
                .as_str()
                .and_then(|s| s.rsplit(':').next()?.parse::<u16>().ok())
            {
                break p;
            }
        }
        assert!(Instant::now() < deadline, "edgevoiced did not come up");
        std::thread::sleep(Duration::from_millis(100));
    };
    let ours = format!("127.0.0.1:{port}");
    let reference = Sipp::start_uas_answer();
    let reference_target = reference.addr();

    let calls_per_step = std::env::var("BENCH_SIP_CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600u32);
    let mut rows = Vec::new();
    let mut best_ours = 0.0f64;
    for rate in [50.0, 100.0, 200.0, 400.0, 800.0, 1600.0] {
        // At least 3 s at each rate, so "sustained" means something.
        let calls = calls_per_step.max((rate * 3.0) as u32);
        let r_ours = run(&ours, rate, calls);
        let r_ref = run(&reference_target, rate, calls);
        let cps = |r: &peers::SippResult| r.successful as f64 / r.elapsed.as_secs_f64();
        if r_ours.failed == 0 {
            best_ours = best_ours.max(cps(&r_ours));
        }
        rows.push(format!(
            "| {rate:.0} | {} / {} | {:.0} | {} / {} | {:.0} | {:.2} |",
            r_ours.successful,
            r_ours.failed,
            cps(&r_ours),
            r_ref.successful,
            r_ref.failed,
            cps(&r_ref),
            cps(&r_ours) / cps(&r_ref).max(1e-9)
        ));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let table = format!(
        "## SIP call setups (INVITE → 200 → ACK → BYE, no hold time), at least {calls_per_step} calls and 3 s per step, sipp on loopback\n\n\
| offered cps | edgevoiced ok / failed | edgevoiced achieved cps | sipp UAS ok / failed | sipp UAS cps | ratio |\n|---|---|---|---|---|---|\n{}\n\n\
Highest rate edgevoiced sustained with 0 failures: {best_ours:.0} setups/s.\n",
        rows.join("\n")
    );
    println!("{table}");
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir).expect("bench dir");
    std::fs::write(out_dir.join("sip.md"), &table).expect("write results");
    println!("written to target/bench/sip.md");
}
