//! Metrics as an operator reads them: `edgevoice metrics` (Prometheus text over the control
//! socket) and telemetry snapshots on the uplink, against a real mosquitto on 127.0.0.1 and
//! real calls from sipp. The HTTP listener and the voice agent's turn latencies are checked
//! in agent_calls.rs, where the turns happen.
//!
//! Debian packages: mosquitto, mosquitto-clients, sip-tester.

#[path = "common/audio.rs"]
mod audio;
mod common;
#[path = "common/mqtt.rs"]
mod mqtt;
#[path = "common/peers.rs"]
mod peers;

use std::process::Command;
use std::time::Duration;

use common::{text, TestDaemon, TestSite};
use mqtt::Broker;
use peers::{PeerProcess, Sipp, SippUac};

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null)
}

#[test]
fn slow_telemetry_and_metrics_count_calls_and_refusals_while_draining() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), None);
    broker.start();
    let sub_log = dir.path().join("sub.log");
    let mut sub_cmd = Command::new("stdbuf");
    sub_cmd
        .args(["-oL", "mosquitto_sub"])
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-v", "-t", "edgevoice/#"]);
    let mut sub = PeerProcess::spawn("mosquitto_sub", &mut sub_cmd, &sub_log);

    let site = TestSite::new(&format!(
        "[media_test]\nafter_prompt = \"listen\"\n[uplink]\nenabled = true\nbroker_host = \"127.0.0.1\"\nbroker_port = {}\nsite_id = \"s1\"\nreconnect_min_ms = 100\nreconnect_max_secs = 1\n[metrics]\ntelemetry_interval_secs = 5\n",
        broker.port
    ));
    let mut daemon = TestDaemon::spawn(&site, &[]);
    daemon.wait_ready(&site);
    let status = json(&site.cli(&["status", "--json"]).stdout);
    let target = status["sip_listen"]
        .as_str()
        .expect("sip_listen")
        .to_owned();

    let r = Sipp::run_uac(
        &SippUac::new(&target)
            .calls(2)
            .call_duration(Duration::from_millis(200)),
    );
    assert_eq!((r.successful, r.failed), (2, 0), "{}", r.screen);

    // Draining: the next INVITE gets 503 at admission, which leaves no call record but counts.
    let drained = site.cli(&["drain"]);
    assert!(drained.status.success(), "{}", text(&drained.stderr));
    let r = Sipp::run_uac(&SippUac::new(&target).calls(1));
    assert_eq!((r.successful, r.failed), (0, 1), "{}", r.screen);
    let undrained = site.cli(&["undrain"]);
    assert!(undrained.status.success(), "{}", text(&undrained.stderr));

    let metrics = text(&site.cli(&["metrics"]).stdout);
    for expected in [
        "edgevoice_calls_ended_total{reason=\"hangup\"} 2",
        "edgevoice_calls_rejected_total{status=\"503\"} 1",
        "edgevoice_ready 1",
        "edgevoice_uplink_connected 1",
        "process_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }

    // A snapshot taken after the calls reaches the broker as JSON on the telemetry topic.
    let snapshot = peers::poll_until(Duration::from_secs(20), || {
        let log = std::fs::read_to_string(&sub_log).unwrap_or_default();
        log.lines().rev().find_map(|line| {
            let (topic, payload) = line.split_once(' ')?;
            if !topic.ends_with("/telemetry") {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(payload).ok()?;
            // Events carry the snapshot in an envelope; the plain topic carries it as is.
            let t = if v["payload"].is_object() {
                v["payload"].clone()
            } else {
                v
            };
            (t["calls_ended"]["hangup"] == 2).then_some((topic.to_owned(), t))
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "no telemetry with both calls:\n{}\n{}",
            std::fs::read_to_string(&sub_log).unwrap_or_default(),
            daemon.log()
        )
    });
    let (topic, t) = snapshot;
    assert!(topic.starts_with("edgevoice/s1/"), "{topic}");
    assert!(t["rss_bytes"].as_u64().is_some_and(|b| b > 1 << 20), "{t}");
    assert!(t["uptime_secs"].is_u64() && t["at_ms"].is_u64(), "{t}");
    assert_eq!(t["phase"], "ready", "{t}");

    // A clean stop says "offline" itself (retained), not through the last will.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, log) = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    let said = peers::poll_until(Duration::from_secs(5), || {
        let log = std::fs::read_to_string(&sub_log).unwrap_or_default();
        log.lines()
            .rev()
            .find(|l| l.contains("/status ") && l.contains("\"offline\""))
            .map(str::to_owned)
    })
    .expect("an offline status after SIGTERM");
    assert!(said.contains("\"health\":\"stopped\""), "{said}");
    sub.stop();
    broker.stop();
}
