//! A full disk: edgevoiced keeps answering calls, says in one line what is wrong (log, status,
//! the retained MQTT status), keeps the records it could not write in memory and writes them,
//! and sends them upstream, once there is room; nothing acknowledged before is lost across a
//! restart. The state dir is a small tmpfs in a private mount namespace (nothing is mounted on
//! the host); the daemon runs inside it through nsenter. Needs root, sipp and mosquitto.

#[path = "common/audio.rs"]
mod audio;
mod common;
#[path = "common/mqtt.rs"]
mod mqtt;
#[path = "common/peers.rs"]
mod peers;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{text, TestDaemon, TestSite};
use nix::sys::signal::Signal;
use peers::{Sipp, SippUac};

/// A tmpfs mounted on `dir` in a mount namespace of its own, kept alive by a holder process.
struct PrivateTmpfs {
    holder: Child,
}

impl PrivateTmpfs {
    fn mount(dir: &Path, size_mb: u32) -> PrivateTmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let script = format!(
            "mount -t tmpfs -o size={size_mb}m edgevoice-test '{}' && echo mounted && exec sleep 600",
            dir.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "mounted", "the private tmpfs was not mounted");
        PrivateTmpfs { holder }
    }

    /// The prefix that runs a command inside the namespace.
    fn enter(&self) -> Vec<String> {
        ["nsenter", "-t", &self.holder.id().to_string(), "-m", "--"]
            .map(str::to_owned)
            .to_vec()
    }

    fn run(&self, args: &[&str]) -> String {
        let enter = self.enter();
        let out = Command::new(&enter[0])
            .args(&enter[1..])
            .args(args)
            .output()
            .expect("nsenter");
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Bytes available in `dir` as seen inside the namespace.
    fn available(&self, dir: &Path) -> u64 {
        let out = self.run(&["stat", "-f", "-c", "%a %S", dir.to_str().unwrap()]);
        let mut fields = out.split_whitespace().map(|f| f.parse::<u64>().unwrap());
        fields.next().unwrap() * fields.next().unwrap()
    }
}

impl Drop for PrivateTmpfs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null)
}

fn status(site: &TestSite) -> serde_json::Value {
    json(&site.cli(&["status", "--json"]).stdout)
}

fn ended_calls(site: &TestSite) -> usize {
    json(&site.cli(&["calls", "--json"]).stdout)
        .as_array()
        .map(|calls| calls.iter().filter(|c| !c["end_at_ms"].is_null()).count())
        .unwrap_or(0)
}

fn start(site: &TestSite, tmpfs: &PrivateTmpfs) -> (TestDaemon, u16) {
    let enter = tmpfs.enter();
    let wrapper: Vec<&str> = enter.iter().map(String::as_str).collect();
    let mut daemon = TestDaemon::spawn_wrapped(site, &[], &wrapper);
    daemon.wait_ready(site);
    let port = peers::poll_until(Duration::from_secs(20), || {
        status(site)["sip_listen"]
            .as_str()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.parse().ok())
    })
    .unwrap_or_else(|| panic!("SIP never listened: {}", daemon.log()));
    (daemon, port)
}

fn calls(port: u16, n: u32, each: Duration) {
    let r = Sipp::run_uac(
        &SippUac::new(&format!("127.0.0.1:{port}"))
            .calls(n)
            .max_concurrent(1)
            .call_duration(each),
    );
    assert_eq!((r.successful, r.failed), (u64::from(n), 0), "{}", r.screen);
}

fn newest_call(site: &TestSite) -> serde_json::Value {
    json(&site.cli(&["calls", "--json"]).stdout)[0].clone()
}

/// Seconds of audio in a two-channel 16-bit 8 kHz recording (PCMU), from its size.
fn recorded_secs(tmpfs: &PrivateTmpfs, path: &str) -> f64 {
    let size: f64 = tmpfs
        .run(&["stat", "-c", "%s", path])
        .trim()
        .parse()
        .unwrap();
    (size - 44.0) / (8000.0 * 2.0 * 2.0)
}

fn require_root() {
    assert!(
        mqtt::is_root(),
        "this test mounts a private tmpfs: run the suite as root (make test does)"
    );
}

/// A site whose uplink goes to `broker`; `extra` starts with [daemon] keys.
fn uplinked_site(broker: &mqtt::Broker, extra: &str) -> TestSite {
    TestSite::new(&format!(
        "{extra}[uplink]\nenabled = true\nbroker_host = \"127.0.0.1\"\nbroker_port = {}\nsite_id = \"s1\"\nreconnect_min_ms = 100\nreconnect_max_secs = 1\n",
        broker.port
    ))
}

#[test]
fn slow_a_full_disk_keeps_calls_answered_says_why_and_writes_their_records_once_there_is_room() {
    require_root();
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = mqtt::Broker::new(broker_dir.path(), None);
    // The broker stays down until the end: everything goes through the outbox on the full disk.
    let site = uplinked_site(&broker, "min_free_disk_mb = 8\n[call]\nrecord = true\n");
    let state = site.state_dir();
    let tmpfs = PrivateTmpfs::mount(&state, 32);
    let (daemon, port) = start(&site, &tmpfs);
    let device = status(&site)["device_id"].as_str().unwrap().to_owned();

    // Room: two calls, written and recorded.
    calls(port, 2, Duration::from_millis(200));
    peers::poll_until(Duration::from_secs(10), || {
        (ended_calls(&site) == 2).then_some(())
    })
    .expect("two records");
    assert!(
        newest_call(&site)["recording"].is_string(),
        "{}",
        newest_call(&site)
    );

    // Below the reserve (4 MiB left of the 8 kept free) during an 8 s call: its recording
    // stops at the next check (every 5 s), as a complete file; the next call is not recorded.
    let long_call = std::thread::spawn(move || calls(port, 1, Duration::from_secs(8)));
    std::thread::sleep(Duration::from_millis(1500));
    let filler = state.join("filler");
    let fill = tmpfs.available(&state) - (4 << 20);
    tmpfs.run(&[
        "fallocate",
        "-l",
        &fill.to_string(),
        filler.to_str().unwrap(),
    ]);
    long_call.join().expect("the long call");
    calls(port, 1, Duration::from_millis(200));
    let full = peers::poll_until(Duration::from_secs(10), || {
        let s = status(&site);
        (s["unsaved_call_records"] == 2).then_some(s)
    })
    .unwrap_or_else(|| panic!("records not held: {}\n{}", status(&site), daemon.log()));
    let failure = full["store_write_failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("MiB free, below the 8 MiB kept free (daemon.min_free_disk_mb)"),
        "{full}"
    );
    let plain = text(&site.cli(&["status"]).stdout);
    assert!(
        plain.contains("STORE WRITES FAILING") && plain.contains("2 call records waiting"),
        "{plain}"
    );
    let log = daemon.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("call record not saved"))
        .collect();
    assert!(
        !refusals.is_empty() && refusals.iter().all(|l| l.contains("write refused")),
        "one clear line per refused write: {refusals:?}"
    );
    assert_eq!(
        ended_calls(&site),
        2,
        "the held records are not on disk yet"
    );

    // Room again: the held records are written without a restart.
    tmpfs.run(&["rm", filler.to_str().unwrap()]);
    let recovered = peers::poll_until(Duration::from_secs(15), || {
        let s = status(&site);
        (s["unsaved_call_records"] == 0 && s["store_write_failure"].is_null()).then_some(s)
    })
    .unwrap_or_else(|| panic!("never recovered: {}\n{}", status(&site), daemon.log()));
    assert_eq!(ended_calls(&site), 4, "{recovered}");
    let listed = json(&site.cli(&["calls", "--json"]).stdout);
    let (short, long) = (&listed[0], &listed[1]);
    assert!(short["recording"].is_null(), "not recorded: {short}");
    let path = long["recording"]
        .as_str()
        .expect("the long call's recording");
    let secs = recorded_secs(&tmpfs, path);
    eprintln!("the 8 s call's recording stopped after {secs:.1} s");
    assert!(
        (1.0..7.5).contains(&secs),
        "the recording stopped once the disk was below the reserve: {secs:.1} s of an 8 s call"
    );
    let log = daemon.log();
    assert!(
        log.contains("recording stopped") && log.contains("call not recorded"),
        "{log}"
    );

    // Upstream gets all four records and their summaries, once the broker is there.
    broker.start();
    let out = broker_dir.path().join("events.log");
    let mut sub = broker.subscribe_v5("disk-full", "edgevoice/+/+/events/#", "%t %p", &out);
    let streams = |stream: &str| -> Vec<String> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("/events/{stream} ")))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.split_once(' ')?.1).ok())
            .filter_map(|e| e["key"].as_str().map(str::to_owned))
            .collect()
    };
    let want = |stream: &str| -> Vec<String> {
        (1..=4)
            .map(|n| format!("s1/{device}/{stream}/{n}"))
            .collect()
    };
    peers::poll_until(Duration::from_secs(20), || {
        (streams("calls").len() >= 4 && streams("summaries").len() >= 4).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not delivered: {}\n{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            daemon.log()
        )
    });
    assert_eq!(streams("calls"), want("calls"));
    assert_eq!(streams("summaries"), want("summaries"));

    // And after a restart, in the same filesystem, all four are still there.
    daemon.signal(Signal::SIGTERM);
    let (code, log) = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    let (daemon, _) = start(&site, &tmpfs);
    assert_eq!(ended_calls(&site), 4, "{}", daemon.log());
    drop(daemon);
    sub.stop_with(Signal::SIGTERM, Duration::from_secs(2));
    broker.stop();
}

/// With no reserve (`min_free_disk_mb = 0`) the disk can fill under sled itself; sled then
/// refuses every write until it is reopened. The daemon goes on answering calls, holds their
/// records, and once the disk has room stops by itself (exit 1, so systemd's Restart=on-failure
/// starts it again), leaving the held records in a file the next start writes into the store
/// and sends upstream.
#[test]
fn slow_a_store_that_failed_a_write_is_reopened_by_a_restart_and_loses_no_record() {
    require_root();
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = mqtt::Broker::new(broker_dir.path(), None);
    broker.start();
    let out = broker_dir.path().join("calls.log");
    let mut sub = broker.subscribe_v5("store-reopen", "edgevoice/+/+/events/calls", "%p", &out);
    let site = uplinked_site(&broker, "min_free_disk_mb = 0\n");
    let state = site.state_dir();
    let tmpfs = PrivateTmpfs::mount(&state, 32);
    let (daemon, port) = start(&site, &tmpfs);
    calls(port, 1, Duration::from_millis(200));
    peers::poll_until(Duration::from_secs(10), || {
        (ended_calls(&site) == 1).then_some(())
    })
    .expect("one record");

    // Every byte taken: sled's own write fails.
    let filler = state.join("filler");
    let all = tmpfs.available(&state);
    tmpfs.run(&[
        "fallocate",
        "-l",
        &all.to_string(),
        filler.to_str().unwrap(),
    ]);
    // Which write hits the full disk first is sled's business (a record may still fit in a
    // page it has); from then on every record is held.
    calls(port, 2, Duration::from_millis(200));
    let failing = peers::poll_until(Duration::from_secs(10), || {
        let s = status(&site);
        (s["unsaved_call_records"].as_u64() >= Some(1)).then_some(s)
    })
    .unwrap_or_else(|| panic!("records not held: {}\n{}", status(&site), daemon.log()));
    let held = failing["unsaved_call_records"].as_u64().unwrap();
    assert!(
        failing["store_write_failure"]
            .as_str()
            .is_some_and(|e| e.contains("No space left on device (os error 28)")),
        "{failing}"
    );

    // Room again: the daemon stops itself to reopen the store, the held records in a file.
    tmpfs.run(&["rm", filler.to_str().unwrap()]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("stopping to restart")
            && log.contains(&format!("{held} call records the store refused are in"))
            && log.contains("stopped to reopen the store"),
        "{log}"
    );

    // Started again (systemd would): all three records are in the store and upstream.
    let (daemon, _) = start(&site, &tmpfs);
    assert_eq!(ended_calls(&site), 3, "{}", daemon.log());
    assert!(
        daemon.log().contains(&format!(
            "{held} call records the last run could not write are now in the store"
        )),
        "{}",
        daemon.log()
    );
    let ids = || -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|e| e["payload"]["id"].as_str().map(str::to_owned))
            .collect()
    };
    peers::poll_until(Duration::from_secs(20), || (ids().len() == 3).then_some(()))
        .unwrap_or_else(|| panic!("upstream has {:?}\n{}", ids(), daemon.log()));
    drop(daemon);
    sub.stop_with(Signal::SIGTERM, Duration::from_secs(2));
    broker.stop();
}
