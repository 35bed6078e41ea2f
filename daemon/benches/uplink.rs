//! Uplink benchmark against a real mosquitto on 127.0.0.1 and the real edgevoiced:
//!
//! - backlog drain: N call records (BENCH_UPLINK_N, default 5000) queued in the daemon's outbox
//!   while its broker is down (appended through the library's DurableOutbox into the daemon's
//!   own store, exactly as the daemon appends; the daemon then starts against the closed port
//!   and reports them queued), then the broker starts and a mosquitto_sub subscriber
//!   timestamps every arrival. Once with `drain_rate_per_sec = 0` (unlimited), once with the
//!   default 50/s (BENCH_UPLINK_LIMITED_N messages, default 500) to show the limiter holds.
//!   Reference: `mosquitto_pub -q 1 -l` publishing the same N envelopes to the same broker.
//! - call end → record and summary at a subscriber, online: BENCH_UPLINK_CALLS (default 20) sipp
//!   calls one after another; "call end" is when sipp sent its BYE (the caller hanging up, from
//!   sipp's own message log), the record's end_at_ms shown beside it.
//!
//! Durable appends per second are benches/outbox.rs. Prints a table and writes it to
//! target/bench/uplink.md. Debian packages: mosquitto, mosquitto-clients, sip-tester.

#[path = "../../tests/common/audio.rs"]
mod audio;
#[path = "../../tests/common/mqtt.rs"]
mod mqtt;
#[path = "../../tests/common/peers.rs"]
mod peers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgevoice::call::record::{CallRecord, EndReason, Party, RtpSummary};
use edgevoice::telephony::codec::Codec;
use edgevoice::uplink::Stream;
use mqtt::Broker;
use nix::sys::signal::Signal;
use peers::{poll_until, PeerProcess, Sipp, SippUac};

const SITE: &str = "bench";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A finished inbound call's record, as the daemon sends it (~600 bytes of JSON).
fn call_record(i: usize) -> Vec<u8> {
    let id = ulid::Ulid::from_parts(1_795_330_000_000 + i as u64, i as u128);
    let mut r = CallRecord::new_inbound(
        id,
        &format!("{i}-4711@192.0.2.10"),
        "<sip:+442079460012@192.0.2.10>;tag=as1f2e",
        "<sip:support@edgevoice.example>",
        "192.0.2.10:5060",
    );
    r.answer_at_ms = Some(r.invite_at_ms + 40);
    r.codec = Some(Codec::Pcmu);
    r.rtp = Some(RtpSummary {
        packets_sent: 3050,
        packets_received: 3049,
        packets_lost: 1,
        jitter_ms: 0.42,
        max_jitter_ms: 3.1,
        ..RtpSummary::default()
    });
    r.dtmf_received = "12#".into();
    r.recording = Some(format!("/var/lib/edgevoice/recordings/{id}.wav").into());
    r.end(EndReason::Hangup, Some(Party::Caller));
    serde_json::to_vec(&r).expect("record JSON")
}

/// `mosquitto_sub` printing `unix-time topic payload-length` per message.
struct Arrivals {
    file: PathBuf,
    proc: Option<PeerProcess>,
    client_id: String,
    runs: u32,
    /// The topic filter subscribed to.
    topic: String,
}

impl Arrivals {
    /// A subscriber to the call records (`stream` "calls") or every outbox stream ("#").
    fn new(dir: &Path, client_id: &str, stream: &str) -> Arrivals {
        Arrivals {
            file: dir.join(format!("{client_id}.log")),
            proc: None,
            client_id: client_id.to_owned(),
            runs: 0,
            topic: format!("edgevoice/+/+/events/{stream}"),
        }
    }

    /// Connects (persistent session, QoS 1, `format` per line) and waits for the SUBACK.
    fn connect(&mut self, broker: &Broker, format: &str) {
        self.runs += 1;
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-i", &self.client_id, "-c", "-q", "1"])
            .args(["-t", &self.topic, "-F", format]);
        let log = self.file.with_extension(format!("{}.log", self.runs));
        self.proc = Some(PeerProcess::spawn("mosquitto_sub", &mut cmd, &log));
        // Each broker start logs to a new file, so one SUBACK there is this connection's.
        let suback = format!("Sending SUBACK to {}", self.client_id);
        poll_until(Duration::from_secs(10), || {
            broker.log().contains(&suback).then_some(())
        })
        .expect("mosquitto_sub subscribed");
    }

    fn disconnect(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(Signal::SIGTERM, Duration::from_secs(2));
        }
    }

    fn lines(&self) -> Vec<String> {
        (1..=self.runs)
            .flat_map(|n| {
                std::fs::read_to_string(self.file.with_extension(format!("{n}.log")))
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Unix times (s) of every arrival so far.
    fn times(&self) -> Vec<f64> {
        self.lines()
            .iter()
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect()
    }

    /// Waits until `n` messages arrived; their times, sorted.
    fn wait_for(&self, n: usize, timeout: Duration) -> Vec<f64> {
        let mut times = poll_until(timeout, || {
            let t = self.times();
            (t.len() >= n).then_some(t)
        })
        .unwrap_or_else(|| panic!("only {} of {n} messages arrived", self.times().len()));
        times.sort_by(f64::total_cmp);
        times
    }
}

/// A running edgevoiced on a config in `dir`.
struct Daemon {
    proc: PeerProcess,
    config: PathBuf,
}

impl Daemon {
    fn write_config(dir: &Path, broker_port: u16, uplink: &str) -> PathBuf {
        let config = dir.join("edgevoice.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nstate_dir = \"{0}/state\"\nruntime_dir = \"{0}/run\"\nlog_level = \"warn\"\n\
                 [sip]\nlisten = \"127.0.0.1:0\"\n\
                 [call]\nhandler = \"media_test\"\n[rtp]\nport_min = 40000\nport_max = 44999\n\
                 [media_test]\nafter_prompt = \"listen\"\n\
                 [uplink]\nenabled = true\nbroker_host = \"127.0.0.1\"\nbroker_port = {broker_port}\n\
                 site_id = \"{SITE}\"\n{uplink}\n",
                dir.display()
            ),
        )
        .expect("config");
        config
    }

    fn start(dir: &Path, config: PathBuf) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgevoiced"));
        cmd.arg("--config").arg(&config);
        let proc = PeerProcess::spawn("edgevoiced", &mut cmd, &dir.join("edgevoiced.log"));
        let d = Daemon { proc, config };
        poll_until(Duration::from_secs(20), || d.status())
            .unwrap_or_else(|| panic!("edgevoiced did not come up:\n{}", d.proc.log_tail(20)));
        d
    }

    fn status(&self) -> Option<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_edgevoice"))
            .arg("--config")
            .arg(&self.config)
            .args(["status", "--json"])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn sip_addr(&self) -> String {
        let status = self.status().expect("status");
        status["sip_listen"]
            .as_str()
            .expect("sip_listen")
            .to_owned()
    }

    fn stop(mut self) {
        self.proc.stop_with(Signal::SIGTERM, Duration::from_secs(5));
    }
}

struct Drain {
    n: usize,
    /// First to last arrival.
    span: f64,
    /// Broker start to last arrival (includes the daemon's reconnect back-off).
    from_broker_start: f64,
    /// Rate after the first `burst` messages (the limiter's steady state).
    steady_rate: f64,
    /// Whether the subscriber was subscribed before the daemon connected.
    subscriber_first: bool,
}

impl Drain {
    fn rate(&self) -> f64 {
        (self.n - 1) as f64 / self.span
    }
}

fn arrival_stats(times: &[f64], skip: usize) -> (f64, f64) {
    let span = times[times.len() - 1] - times[0];
    let tail = &times[skip.min(times.len() - 2)..];
    let steady = (tail.len() - 1) as f64 / (tail[tail.len() - 1] - tail[0]);
    (span, steady)
}

/// The daemon drains `n` queued records at `rate` (0: unlimited) once the broker starts.
fn drain(root: &Path, name: &str, n: usize, rate: u32, burst: usize) -> Drain {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut broker = Broker::new(&dir, None);
    // Register the subscriber's persistent session, then take the broker away.
    broker.start();
    let mut sub = Arrivals::new(&dir, &format!("bench-{name}"), "calls");
    sub.connect(&broker, "%U %t %l");
    sub.disconnect();
    broker.stop();

    // Back-off of at least a second: the subscriber is back before the daemon's next try.
    let config = Daemon::write_config(
        &dir,
        broker.port,
        &format!(
            "drain_rate_per_sec = {rate}\ndrain_burst = {burst}\nreconnect_min_ms = 1000\nreconnect_max_secs = 2\n"
        ),
    );
    let device = mqtt::queue_in_outbox(
        &dir.join("state"),
        SITE,
        Stream::Calls,
        (0..n).map(call_record),
    );
    let daemon = Daemon::start(&dir, config);
    // The prefilled records and the daemon's own `started` event.
    let queued = poll_until(Duration::from_secs(10), || {
        let s = daemon.status()?;
        (s["uplink_detail"]["queued_messages"].as_u64() == Some(n as u64 + 1)).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "the daemon does not report {n} queued: {:?}",
            daemon.status()
        )
    });
    assert!(
        !queued["uplink"]
            .as_str()
            .unwrap_or_default()
            .starts_with("connected"),
        "the broker is down: {queued}"
    );

    let broker_start = unix_now();
    broker.start();
    sub.connect(&broker, "%U %t %l");
    let timeout = Duration::from_secs(
        60 + if rate == 0 {
            0
        } else {
            3 * n as u64 / u64::from(rate)
        },
    );
    let times = sub.wait_for(n, timeout);
    let log = broker.log();
    let suback = log
        .find(&format!("Sending SUBACK to bench-{name}"))
        .unwrap_or(0);
    let daemon_in = log
        .find(&format!("as edgevoice-{SITE}-{device}"))
        .unwrap_or(usize::MAX);
    let (span, steady_rate) = arrival_stats(&times, burst);
    let result = Drain {
        n,
        span,
        from_broker_start: times[n - 1] - broker_start,
        steady_rate,
        subscriber_first: suback < daemon_in,
    };
    daemon.stop();
    sub.disconnect();
    broker.stop();
    result
}

/// `mosquitto_pub -q 1 -l`: the same `n` envelopes, one per line, to the same kind of broker.
fn reference(root: &Path, name: &str, n: usize) -> Drain {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut broker = Broker::new(&dir, None);
    broker.start();
    let mut sub = Arrivals::new(&dir, &format!("bench-{name}"), "calls");
    sub.connect(&broker, "%U %t %l");
    let mut lines = String::new();
    for i in 0..n {
        let record: serde_json::Value = serde_json::from_slice(&call_record(i)).expect("JSON");
        let envelope = serde_json::json!({
            "key": format!("{SITE}/dev/calls/{}", i + 1),
            "site": SITE, "device": "dev", "stream": "calls", "seq": i + 1,
            "payload": record,
        });
        lines.push_str(&envelope.to_string());
        lines.push('\n');
    }
    let input = dir.join("envelopes.jsonl");
    std::fs::write(&input, &lines).expect("envelopes");
    let start = unix_now();
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-l",
        ])
        // The daemon's window (uplink.max_in_flight default 16), so both pipeline alike.
        .args(["-M", "16"])
        .args([
            "-i",
            "bench-reference-pub",
            "-t",
            &format!("edgevoice/{SITE}/dev/events/calls"),
        ])
        .stdin(std::fs::File::open(&input).expect("input"))
        .status()
        .expect("mosquitto_pub");
    assert!(status.success(), "mosquitto_pub failed");
    let times = sub.wait_for(n, Duration::from_secs(120));
    let (span, steady_rate) = arrival_stats(&times, 0);
    sub.disconnect();
    broker.stop();
    Drain {
        n,
        span,
        from_broker_start: times[n - 1] - start,
        steady_rate,
        subscriber_first: true,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Latency {
    calls: usize,
    /// sipp's BYE sent → record at the subscriber, ms, sorted.
    from_bye: Vec<f64>,
    /// The record's end_at_ms → record at the subscriber, ms, sorted.
    from_end_at: Vec<f64>,
    /// sipp's BYE sent → the call's summary at the subscriber, ms, sorted.
    summary_from_bye: Vec<f64>,
}

/// Sequential sipp calls with the broker up; each call's record and summary timed to the
/// subscriber.
fn end_to_record(root: &Path, calls: usize) -> Latency {
    let dir = root.join("latency");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut broker = Broker::new(&dir, None);
    broker.start();
    let mut sub = Arrivals::new(&dir, "bench-latency", "#");
    sub.connect(&broker, "%U %t %p");
    let config = Daemon::write_config(&dir, broker.port, "reconnect_min_ms = 100\n");
    let daemon = Daemon::start(&dir, config);
    poll_until(Duration::from_secs(10), || {
        daemon.status()?["uplink"]
            .as_str()?
            .starts_with("connected")
            .then_some(())
    })
    .expect("uplink connected");
    let r = Sipp::run_uac(
        &SippUac::new(&daemon.sip_addr())
            .calls(calls as u32)
            .rate(2.0)
            .max_concurrent(1)
            .call_duration(Duration::from_millis(200))
            .timeout(Duration::from_secs(30 + calls as u64)),
    );
    assert_eq!((r.successful, r.failed), (calls as u64, 0), "{}", r.screen);
    // shortmsg.log: date \t time \t epoch \t S|R \t call-id \t CSeq \t first line.
    let mut bye_sent: HashMap<String, f64> = HashMap::new();
    let shortmsg = std::fs::read_to_string(r.log_dir.join("shortmsg.log")).expect("shortmsg.log");
    for line in shortmsg.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() >= 7 && f[3] == "S" && f[6].starts_with("BYE ") {
            if let Ok(t) = f[2].trim().parse::<f64>() {
                bye_sent.entry(f[4].trim().to_owned()).or_insert(t);
            }
        }
    }
    let summaries = || {
        sub.lines()
            .iter()
            .filter(|l| l.contains("/events/summaries "))
            .count()
    };
    poll_until(Duration::from_secs(30), || {
        (summaries() >= calls).then_some(())
    })
    .unwrap_or_else(|| panic!("only {} of {calls} summaries arrived", summaries()));
    let mut from_bye = Vec::new();
    let mut from_end_at = Vec::new();
    // Call record id → when its BYE was sent, for the summaries (which name the record).
    let mut bye_of_record: HashMap<String, f64> = HashMap::new();
    let mut summary_arrivals: Vec<(f64, String)> = Vec::new();
    for line in sub.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(t), Some(_topic), Some(payload)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(arrived) = t.parse::<f64>() else {
            continue;
        };
        let Ok(envelope) = serde_json::from_str::<serde_json::Value>(payload) else {
            continue;
        };
        let record = &envelope["payload"];
        if envelope["stream"] == "summaries" {
            if let Some(id) = record["call_id"].as_str() {
                summary_arrivals.push((arrived, id.to_owned()));
            }
            continue;
        }
        if envelope["stream"] != "calls" {
            continue;
        }
        if let Some(bye) = record["sip_call_id"].as_str().and_then(|c| bye_sent.get(c)) {
            from_bye.push((arrived - bye) * 1000.0);
            if let Some(id) = record["id"].as_str() {
                bye_of_record.insert(id.to_owned(), *bye);
            }
        }
        if let Some(end) = record["end_at_ms"].as_f64() {
            from_end_at.push(arrived * 1000.0 - end);
        }
    }
    assert_eq!(
        from_bye.len(),
        calls,
        "every record matched to its call by Call-ID (sipp log: {} BYEs)",
        bye_sent.len()
    );
    let mut summary_from_bye: Vec<f64> = summary_arrivals
        .iter()
        .filter_map(|(arrived, id)| Some((arrived - bye_of_record.get(id)?) * 1000.0))
        .collect();
    assert_eq!(
        summary_from_bye.len(),
        calls,
        "every summary matched to its call's record"
    );
    from_bye.sort_by(f64::total_cmp);
    from_end_at.sort_by(f64::total_cmp);
    summary_from_bye.sort_by(f64::total_cmp);
    daemon.stop();
    sub.disconnect();
    broker.stop();
    Latency {
        calls,
        from_bye,
        from_end_at,
        summary_from_bye,
    }
}

fn main() {
    let n = env_or("BENCH_UPLINK_N", 5000);
    let limited_n = env_or("BENCH_UPLINK_LIMITED_N", 500);
    let calls = env_or("BENCH_UPLINK_CALLS", 20);
    let repeats = env_or("BENCH_UPLINK_REPEAT", 3).max(1);
    let root = tempfile::tempdir().expect("temp dir");
    let record_bytes = call_record(0).len();
    let t0 = Instant::now();

    // Interleaved, so both see the same load of this shared machine; the median run of each
    // goes in the table, the spread beside it.
    let mut floors = Vec::new();
    let mut drains = Vec::new();
    for run in 1..=repeats {
        let floor = reference(root.path(), &format!("reference-{run}"), n);
        let ours = drain(root.path(), &format!("unlimited-{run}"), n, 0, 50);
        eprintln!(
            "run {run}: edgevoiced {:.0} /s, mosquitto_pub {:.0} /s",
            ours.rate(),
            floor.rate()
        );
        floors.push(floor);
        drains.push(ours);
    }
    let by_rate = |runs: &mut Vec<Drain>| {
        runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        let spread = format!(
            "{:.0}–{:.0} /s over {} runs",
            runs[0].rate(),
            runs[runs.len() - 1].rate(),
            runs.len()
        );
        (runs.remove(runs.len() / 2), spread)
    };
    let (floor, floor_spread) = by_rate(&mut floors);
    let (unlimited, unlimited_spread) = by_rate(&mut drains);
    let limited = drain(root.path(), "limited", limited_n, 50, 50);
    eprintln!("limited: {:.1} /s steady", limited.steady_rate);
    let latency = end_to_record(root.path(), calls);

    let order_note = |d: &Drain| {
        if d.subscriber_first {
            ""
        } else {
            " (the daemon connected before the subscriber: some arrivals were queued by the broker)"
        }
    };
    let table = format!(
        "## uplink to a local mosquitto (Debian 2.0; persistence saved after every change and log_type all, as in the tests), call records of {record_bytes} bytes each, sent in the event envelope\n\n\
| what | edgevoice | reference | ratio (ours / reference) |\n|---|---|---|---|\n\
| backlog drain, {n} queued while the broker was down, drain_rate_per_sec = 0, max_in_flight 16 | median {:.0} /s (first→last arrival {:.2} s; broker start→last {:.2} s; {unlimited_spread}){} | mosquitto_pub -q 1 -M 16 -l, same {n} envelopes: median {:.0} /s ({:.2} s; {floor_spread}) | {:.2} |\n\
| backlog drain, {limited_n} queued, drain_rate_per_sec = 50, drain_burst = 50 | configured 50 /s: measured {:.1} /s after the burst ({:.1} /s overall, {:.2} s){} | | |\n\
| call end (sipp sends BYE) → record at a subscriber, online, {} sequential calls | p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms | from the record's end_at_ms: p50 {:.1} ms, p95 {:.1} ms | |\n\
| call end (sipp sends BYE) → the call's summary at a subscriber (queued right after the record) | p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms | | |\n\n\
Durable appends per second: benches/outbox.rs (target/bench/outbox.md).\n",
        unlimited.rate(),
        unlimited.span,
        unlimited.from_broker_start,
        order_note(&unlimited),
        floor.rate(),
        floor.span,
        unlimited.rate() / floor.rate(),
        limited.steady_rate,
        limited.rate(),
        limited.span,
        order_note(&limited),
        latency.calls,
        percentile(&latency.from_bye, 0.5),
        percentile(&latency.from_bye, 0.95),
        latency.from_bye[latency.from_bye.len() - 1],
        percentile(&latency.from_end_at, 0.5),
        percentile(&latency.from_end_at, 0.95),
        percentile(&latency.summary_from_bye, 0.5),
        percentile(&latency.summary_from_bye, 0.95),
        latency.summary_from_bye[latency.summary_from_bye.len() - 1],
    );
    println!("{table}");
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir).expect("bench dir");
    std::fs::write(out_dir.join("uplink.md"), &table).expect("write results");
    println!(
        "written to target/bench/uplink.md ({:.0} s)",
        t0.elapsed().as_secs_f64()
    );
}
