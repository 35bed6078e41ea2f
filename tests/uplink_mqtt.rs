//! The uplink against a real mosquitto (Debian 2.0) on 127.0.0.1, with its own config and
//! persistence dir per test (see ../shared/FACTS.md: autosave on every change, unlimited queue,
//! SIGTERM to stop so it saves). Producer: real calls from sipp; each ended call record goes to
//! the `calls` stream. The subscriber is mosquitto_sub with a persistent session registered
//! before the daemon ever connects, so nothing published while it is away is missed.
//! The daemon speaks MQTT 5 (the default) unless a test says `mqtt_version = "3.1.1"`.
//!
//! Debian packages: mosquitto, mosquitto-clients, sip-tester, openssl.

#[path = "common/audio.rs"]
mod audio;
mod common;
#[path = "common/mqtt.rs"]
mod mqtt;
#[path = "common/peers.rs"]
mod peers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{text, TestDaemon, TestSite};
use mqtt::Broker;
use nix::sys::signal::Signal;
use peers::{PeerProcess, Sipp, SippUac};

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", text(bytes)))
}

/// `mosquitto_sub` with a persistent session (`-c -i`), QoS 1, printing `topic payload` lines.
struct Subscriber {
    out: PathBuf,
    proc: Option<PeerProcess>,
    n: u32,
}

impl Subscriber {
    fn connect(broker: &Broker, out_dir: &Path) -> Subscriber {
        let mut s = Subscriber {
            out: out_dir.to_owned(),
            proc: None,
            n: 0,
        };
        s.start(broker);
        s
    }

    fn start(&mut self, broker: &Broker) {
        self.n += 1;
        // Line-buffered, so the file has each message as it arrives.
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-i", "edgevoice-test-counter", "-c", "-q", "1", "-v"])
            .args(["-t", "edgevoice/#"]);
        let log = self.out.join(format!("sub-{}.log", self.n));
        self.proc = Some(PeerProcess::spawn("mosquitto_sub", &mut cmd, &log));
        // Subscribed once the broker logged the SUBACK to it.
        peers::poll_until(Duration::from_secs(10), || {
            broker
                .log()
                .contains("Sending SUBACK to edgevoice-test-counter")
                .then_some(())
        })
        .expect("mosquitto_sub subscribed");
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(Signal::SIGTERM, Duration::from_secs(2));
        }
    }

    /// Every message received so far (all runs) on `.../events/{stream}`, as (topic, envelope).
    fn events(&self, stream: &str) -> Vec<(String, serde_json::Value)> {
        let suffix = format!("/events/{stream}");
        let mut out = Vec::new();
        for n in 1..=self.n {
            let log =
                std::fs::read_to_string(self.out.join(format!("sub-{n}.log"))).unwrap_or_default();
            for line in log.lines() {
                let Some((topic, payload)) = line.split_once(' ') else {
                    continue;
                };
                if topic.ends_with(&suffix) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) {
                        out.push((topic.to_owned(), v));
                    }
                }
            }
        }
        out
    }

    fn lines(&self) -> String {
        (1..=self.n)
            .map(|n| {
                std::fs::read_to_string(self.out.join(format!("sub-{n}.log"))).unwrap_or_default()
            })
            .collect()
    }
}

struct Appliance {
    site: TestSite,
    daemon: TestDaemon,
    sip_port: u16,
}

impl Appliance {
    fn start(site: TestSite) -> Appliance {
        let mut daemon = TestDaemon::spawn(&site, &[]);
        daemon.wait_ready(&site);
        Appliance::attach(site, daemon)
    }

    /// A daemon already started (and ready).
    fn attach(site: TestSite, daemon: TestDaemon) -> Appliance {
        // The control socket answers before SIP listens (a large outbox takes a moment to
        // reopen): wait for both.
        let sip_port = peers::poll_until(Duration::from_secs(20), || {
            let status = json(&site.cli(&["status", "--json"]).stdout);
            status["sip_listen"]
                .as_str()
                .and_then(|l| l.rsplit(':').next())
                .and_then(|p| p.parse().ok())
        })
        .unwrap_or_else(|| panic!("no sip_listen in status: {}", daemon.log()));
        Appliance {
            site,
            daemon,
            sip_port,
        }
    }

    fn restart(self) -> Appliance {
        let Appliance { site, daemon, .. } = self;
        drop(daemon);
        Appliance::start(site)
    }

    fn status(&self) -> serde_json::Value {
        json(&self.site.cli(&["status", "--json"]).stdout)
    }

    fn calls(&self, n: u32) {
        let r = Sipp::run_uac(
            &SippUac::new(&format!("127.0.0.1:{}", self.sip_port))
                .calls(n)
                .rate(20.0)
                .max_concurrent(10)
                .call_duration(Duration::from_millis(100)),
        );
        assert_eq!((r.successful, r.failed), (u64::from(n), 0), "{}", r.screen);
    }

    /// Waits until the outbox holds `n` messages.
    fn wait_queued(&self, n: u64) {
        peers::poll_until(Duration::from_secs(20), || {
            (self.status()["uplink_detail"]["queued_messages"].as_u64() == Some(n)).then_some(())
        })
        .unwrap_or_else(|| panic!("outbox never held {n}: {}", self.status()));
    }
}

/// The config line for a protocol version and the protocol level mosquitto logs for it.
#[derive(Clone, Copy)]
enum Version {
    Mqtt5,
    Mqtt311,
}

impl Version {
    fn config(self) -> &'static str {
        match self {
            Version::Mqtt5 => "mqtt_version = \"5\"\n",
            Version::Mqtt311 => "mqtt_version = \"3.1.1\"\n",
        }
    }

    /// mosquitto's "New client connected ... (p5, c0, k30)": p5 is MQTT 5, p2 is 3.1.1; c0: a persistent session.
    fn log_mark(self, device: &str) -> String {
        let level = match self {
            Version::Mqtt5 => "p5",
            Version::Mqtt311 => "p2",
        };
        format!("as edgevoice-s1-{device} ({level}, c0,")
    }
}

fn uplink_config(port: u16, extra: &str) -> String {
    format!(
        "[media_test]\nafter_prompt = \"listen\"\n[uplink]\nenabled = true\nbroker_host = \"127.0.0.1\"\nbroker_port = {port}\nsite_id = \"s1\"\nreconnect_min_ms = 100\nreconnect_max_secs = 1\n{extra}\n"
    )
}

/// Keys per stream in arrival order, and the distinct count.
fn keys(events: &[(String, serde_json::Value)]) -> Vec<String> {
    events
        .iter()
        .map(|(_, v)| v["key"].as_str().expect("key in envelope").to_owned())
        .collect()
}

fn expected_keys(device: &str, from: u64, to: u64) -> Vec<String> {
    stream_keys(device, "calls", from, to)
}

fn stream_keys(device: &str, stream: &str, from: u64, to: u64) -> Vec<String> {
    // Sequences start at 1.
    (from + 1..=to)
        .map(|s| format!("s1/{device}/{stream}/{s}"))
        .collect()
}

/// First occurrences in order, and a check that every repeat is a duplicate of an earlier key.
fn dedup(keys: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    keys.iter()
        .filter(|k| seen.insert((*k).clone()))
        .cloned()
        .collect()
}

#[test]
fn slow_offline_records_are_delivered_in_order_once_the_broker_starts() {
    offline_records_are_delivered_in_order_once_the_broker_starts(Version::Mqtt5);
}

#[test]
fn slow_offline_records_are_delivered_in_order_once_the_broker_starts_on_mqtt_3_1_1() {
    offline_records_are_delivered_in_order_once_the_broker_starts(Version::Mqtt311);
}

fn offline_records_are_delivered_in_order_once_the_broker_starts(version: Version) {
    let t0 = Instant::now();
    let site_dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(site_dir.path(), None);
    // Register the subscriber's persistent session, then take the broker away.
    broker.start();
    let mut sub = Subscriber::connect(&broker, site_dir.path());
    sub.stop();
    broker.stop();

    let app = Appliance::start(TestSite::new(&uplink_config(broker.port, version.config())));
    let device = app.status()["device_id"].as_str().unwrap().to_owned();
    const N: u32 = 12;
    app.calls(N);
    // Each call's record and its summary, and the daemon's `started` event.
    app.wait_queued(u64::from(2 * N + 1));
    let status = app.status();
    let line = status["uplink"].as_str().unwrap();
    assert!(
        line.starts_with("offline") || line.starts_with("connecting"),
        "{line}"
    );
    assert!(
        line.contains("25 queued") && line.contains("connection refused"),
        "{line}"
    );
    let plain = text(&app.site.cli(&["status"]).stdout);
    assert!(plain.contains("25 queued"), "{plain}");

    broker.start();
    sub.start(&broker);
    let want = expected_keys(&device, 0, u64::from(N));
    let got = peers::poll_until(Duration::from_secs(20), || {
        let k = keys(&sub.events("calls"));
        (k.len() >= want.len()).then_some(k)
    })
    .unwrap_or_else(|| panic!("not all delivered: {}\n{}", sub.lines(), app.daemon.log()));
    assert_eq!(got, want, "exactly the expected keys, in order");
    let records = sub.events("calls");
    for (_, v) in &records {
        assert!(
            v["payload"]["id"].is_string(),
            "the call record rides inside: {v}"
        );
    }
    app.wait_queued(0);
    // Each record's summary, in the same order, with its own stream's keys.
    let summaries = sub.events("summaries");
    assert_eq!(
        keys(&summaries),
        stream_keys(&device, "summaries", 0, u64::from(N))
    );
    for ((_, record), (_, summary)) in records.iter().zip(&summaries) {
        assert_eq!(summary["payload"]["call_id"], record["payload"]["id"]);
    }
    let events = sub.events("events");
    assert_eq!(
        keys(&events),
        stream_keys(&device, "events", 0, 1),
        "the start, queued while offline"
    );
    assert_eq!(events[0].1["payload"]["kind"], "started");
    let status = app.status();
    assert!(
        status["uplink"].as_str().unwrap().starts_with("connected"),
        "{status}"
    );
    // Retained online status.
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-C",
            "1",
            "-W",
            "5",
        ])
        .args(["-t", &format!("edgevoice/s1/{device}/status")])
        .output()
        .unwrap();
    let st = json(&out.stdout);
    assert_eq!(st["state"], "online", "{st}");
    assert!(st["version"].is_string());
    let log = broker.log();
    assert!(
        log.contains(&version.log_mark(&device)),
        "connected with the configured protocol: {log}"
    );
    if let Version::Mqtt5 = version {
        // One more record, seen by an MQTT 5 subscriber that prints the properties.
        let out = site_dir.path().join("props.log");
        let mut props = broker.subscribe_v5(
            "edgevoice-test-props",
            &format!("edgevoice/s1/{device}/events/calls"),
            "%P|%C|%F|%p",
            &out,
        );
        app.calls(1);
        let line = peers::poll_until(Duration::from_secs(20), || {
            std::fs::read_to_string(&out)
                .unwrap_or_default()
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no record for the MQTT 5 subscriber: {}", broker.log()));
        let mut fields = line.splitn(4, '|');
        let key = format!("s1/{device}/calls/{}", N + 1);
        assert_eq!(
            fields.next(),
            Some(format!("idempotency-key:{key}").as_str()),
            "{line}"
        );
        assert_eq!(fields.next(), Some("application/json"), "{line}");
        assert_eq!(fields.next(), Some("1"), "payload format: UTF-8: {line}");
        let body = json(fields.next().unwrap_or_default().as_bytes());
        assert_eq!(body["key"], key.as_str(), "the body keeps the key");
        props.stop_with(Signal::SIGTERM, Duration::from_secs(2));
    }
    eprintln!("offline→online: {N} records in {:?}", t0.elapsed());
    sub.stop();
    broker.stop();
}

/// The crash window between the broker's PUBACK and the durable delete, forced: the message
/// reached the broker (and the subscriber) but the appliance dies before it forgets it, so it
/// must send it again after the restart, with the SAME idempotency key, and lose nothing.
///
/// Forced by fault injection rather than by timing: `EDGEVOICE_FAULT_ABORT_BEFORE_DELETE=calls/2`
/// makes the daemon abort when the PUBACK of `calls/2` arrives, before `handle_puback`. The
/// hook is compiled into debug builds only (`cfg(debug_assertions)`, shell.rs `fault`), so the
/// release binary in the .deb has neither the code nor the variable. Killing the daemon from
/// outside (SIGSTOP after the broker logs the PUBACK, then SIGKILL) cannot be exact: the
/// daemon may already have deleted the message between the PUBACK leaving the broker and the
/// SIGSTOP landing. The records are queued while the broker is down, so both are published on
/// one connection, in order: `calls/1` is acknowledged and deleted, `calls/2` is not.
#[test]
fn slow_a_crash_between_puback_and_delete_resends_only_that_message_with_the_same_key() {
    if !cfg!(debug_assertions) {
        // The daemon built with this test has no fault injection (release profile).
        eprintln!("skipped: fault injection exists in debug builds only");
        return;
    }
    let t0 = Instant::now();
    let site_dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(site_dir.path(), None);
    broker.start();
    let mut sub = Subscriber::connect(&broker, site_dir.path());
    sub.stop();
    broker.stop();

    let site = TestSite::new(&uplink_config(broker.port, ""));
    let mut daemon =
        TestDaemon::spawn(&site, &[("EDGEVOICE_FAULT_ABORT_BEFORE_DELETE", "calls/2")]);
    daemon.wait_ready(&site);
    let app = Appliance::attach(site, daemon);
    let device = app.status()["device_id"].as_str().unwrap().to_owned();
    app.calls(2);
    // Two records, their summaries, the `started` event.
    app.wait_queued(5);
    broker.start();
    sub.start(&broker);
    let Appliance { site, daemon, .. } = app;
    let (code, log) = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(code, None, "killed by SIGABRT, not an exit: {log}");
    let key2 = format!("s1/{device}/calls/2");
    assert!(
        log.contains(&format!("fault injection: PUBACK for {key2} received")),
        "{log}"
    );
    let app = Appliance::start(site);
    app.wait_queued(0);
    let want: Vec<String> = vec![format!("s1/{device}/calls/1"), key2.clone(), key2];
    let got = peers::poll_until(Duration::from_secs(20), || {
        let k = keys(&sub.events("calls"));
        (k.len() >= want.len()).then_some(k)
    })
    .unwrap_or_else(|| panic!("not delivered: {}\n{}", sub.lines(), app.daemon.log()));
    assert_eq!(
        got, want,
        "calls/2 twice with the same key, calls/1 once, nothing lost"
    );
    let events = sub.events("calls");
    assert_eq!(events[1].1, events[2].1, "the re-send is byte-identical");
    assert_eq!(
        dedup(&keys(&sub.events("summaries"))),
        stream_keys(&device, "summaries", 0, 2),
        "the summaries too: nothing lost"
    );
    eprintln!("forced duplicate: {:?}", t0.elapsed());
    sub.stop();
    broker.stop();
}

/// A call's end and what it owes upstream are one durable fact: the daemon is crashed (abort,
/// as kill -9 would stop it) at every point between the writes that take an ended call
/// upstream, and after an audited command, and restarted each time. Every call in the store
/// then reaches the subscriber on `calls` and on `summaries`, the command on `events`, each
/// under one key only. (Before, a crash between the record's save and its queueing lost the
/// call upstream for good.) Crash points are compiled into debug builds only (src/fault.rs).
#[test]
fn slow_a_crash_at_any_point_after_a_call_ends_loses_nothing_upstream() {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: fault injection exists in debug builds only");
        return;
    }
    let t0 = Instant::now();
    let site_dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(site_dir.path(), None);
    broker.start();
    let sub = Subscriber::connect(&broker, site_dir.path());
    let site = TestSite::new(&uplink_config(broker.port, ""));
    let mut site = Some(site);
    let crash = |site: TestSite, point: &str, act: &dyn Fn(&Appliance)| -> TestSite {
        let mut daemon = TestDaemon::spawn(&site, &[("EDGEVOICE_FAULT_CRASH_AT", point)]);
        daemon.wait_ready(&site);
        let app = Appliance::attach(site, daemon);
        act(&app);
        let Appliance { site, daemon, .. } = app;
        let (code, log) = daemon.wait_exit(Duration::from_secs(20));
        assert_eq!(code, None, "{point}: aborted, not an exit: {log}");
        assert!(
            log.contains(&format!("fault injection: crash at {point}")),
            "{point}: {log}"
        );
        // A plain restart queues what the crashed run owed; then a clean stop for the next.
        let app = Appliance::start(site);
        app.wait_queued(0);
        let Appliance { site, daemon, .. } = app;
        daemon.signal(Signal::SIGTERM);
        let (code, log) = daemon.wait_exit(Duration::from_secs(20));
        assert_eq!(code, Some(0), "{log}");
        site
    };
    // Whether each crash's caller had its BYE answered: the answer waits for the ended record,
    // so a crash before that record is on disk leaves the BYE unanswered.
    let answered = std::cell::RefCell::new(Vec::new());
    let one_call = |app: &Appliance| {
        let r = Sipp::run_uac(
            &SippUac::new(&format!("127.0.0.1:{}", app.sip_port))
                .calls(1)
                .call_duration(Duration::from_millis(100)),
        );
        assert_eq!(r.successful + r.failed, 1, "{}", r.screen);
        answered.borrow_mut().push(r.successful == 1);
    };
    for point in [
        "before_ended_call_saved",
        "ended_call_saved",
        "owed_partly_queued",
    ] {
        site = Some(crash(site.take().unwrap(), point, &one_call));
    }
    assert_eq!(
        answered.borrow()[..2],
        [false, false],
        "no 200 OK to a BYE before the call's end is on disk and the call task done"
    );
    site = Some(crash(
        site.take().unwrap(),
        "audit_saved",
        &|app: &Appliance| {
            // The daemon dies inside the command: the CLI gets no answer.
            let _ = app.site.cli(&["drain"]);
        },
    ));
    let app = Appliance::start(site.take().unwrap());
    let device = app.status()["device_id"].as_str().unwrap().to_owned();
    let stored: Vec<String> = json(&app.site.cli(&["calls", "--json", "--limit", "50"]).stdout)
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored.len(), 3, "one call per crash: {stored:?}");
    let ends: Vec<String> = json(&app.site.cli(&["calls", "--json", "--limit", "50"]).stdout)
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|c| {
            c["end_reason"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        ends,
        ["interrupted", "hangup", "hangup"],
        "a crash before the ended record: interrupted (and its BYE unanswered); after: as it ended"
    );
    let arrived = |stream: &str, id_field: &str| -> Vec<(String, String)> {
        sub.events(stream)
            .iter()
            .map(|(_, v)| {
                (
                    v["payload"][id_field]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    v["key"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let all_there = |stream: &str, id_field: &str| {
        let got = arrived(stream, id_field);
        stored
            .iter()
            .all(|id| got.iter().any(|(call, _)| call == id))
    };
    peers::poll_until(Duration::from_secs(20), || {
        (all_there("calls", "id") && all_there("summaries", "call_id")).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "a stored call never reached upstream: stored {stored:?}\n{}\n{}",
            sub.lines(),
            app.daemon.log()
        )
    });
    for (stream, id_field) in [("calls", "id"), ("summaries", "call_id")] {
        for id in &stored {
            let keys: std::collections::HashSet<String> = arrived(stream, id_field)
                .into_iter()
                .filter(|(call, _)| call == id)
                .map(|(_, key)| key)
                .collect();
            assert_eq!(
                keys.len(),
                1,
                "{stream}: call {id} under one key only: {keys:?}"
            );
        }
    }
    let commands = peers::poll_until(Duration::from_secs(20), || {
        let drains: Vec<serde_json::Value> = sub
            .events("events")
            .into_iter()
            .map(|(_, v)| v)
            .filter(|v| v["payload"]["kind"] == "command" && v["payload"]["command"] == "drain")
            .collect();
        (!drains.is_empty()).then_some(drains)
    })
    .unwrap_or_else(|| panic!("the audited drain never reached upstream: {}", sub.lines()));
    assert_eq!(commands[0]["payload"]["outcome"], "ok", "{commands:?}");
    app.wait_queued(0);
    assert!(
        stream_keys(&device, "calls", 0, 3)
            .iter()
            .all(|k| keys(&sub.events("calls")).contains(k)),
        "sequences without gaps"
    );
    eprintln!(
        "crash points: 4 crashes, nothing lost, in {:?}",
        t0.elapsed()
    );
    let mut sub = sub;
    sub.stop();
    broker.stop();
}

/// A large backlog queued while the broker was down (appended through the library's
/// DurableOutbox into the daemon's own store, as the daemon appends), then, while it drains,
/// three rounds of: the broker restarted, the daemon killed with SIGKILL and started again; real
/// calls add records and summaries in between. Nothing acknowledged is lost, every stream's
/// first arrivals are in order, and a duplicate is only ever a byte-identical re-send.
#[test]
fn slow_broker_restarts_and_daemon_kills_several_times_over_lose_nothing_and_duplicate_only_by_key()
{
    const BACKLOG: u64 = 1500;
    const ROUNDS: u64 = 3;
    const CALLS_PER_ROUND: u32 = 4;
    let t0 = Instant::now();
    let site_dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(site_dir.path(), None);
    broker.start();
    let mut sub = Subscriber::connect(&broker, site_dir.path());
    sub.stop();
    broker.stop();

    // A drain slow enough for the faults to land in the middle of it.
    let site = TestSite::new(&uplink_config(
        broker.port,
        "drain_rate_per_sec = 400\ndrain_burst = 16\nmax_in_flight = 16\n",
    ));
    let device = mqtt::queue_in_outbox(
        &site.state_dir(),
        "s1",
        edgevoice::uplink::Stream::Calls,
        call_records(BACKLOG),
    );
    let mut app = Appliance::start(site);
    app.wait_queued(BACKLOG + 1); // and the `started` event
    broker.start();
    sub.start(&broker);
    let delivered = |sub: &Subscriber| dedup(&keys(&sub.events("calls"))).len() as u64;
    let mut calls = 0u64;
    for round in 1..=ROUNDS {
        let progress = |sub: &Subscriber, n: u64, what: &str| {
            peers::poll_until(Duration::from_secs(30), || {
                (delivered(sub) >= n).then_some(())
            })
            .unwrap_or_else(|| panic!("round {round}: {what}: {} delivered", delivered(sub)));
        };
        let at = delivered(&sub);
        progress(&sub, at + 150, "draining");
        sub.stop();
        broker.stop();
        app.calls(CALLS_PER_ROUND); // queued while the broker is down
        calls += u64::from(CALLS_PER_ROUND);
        broker.start();
        sub.start(&broker);
        let at = delivered(&sub);
        progress(&sub, at + 150, "draining after the broker restart");
        app.daemon.signal(Signal::SIGKILL);
        app = app.restart();
    }
    let want = expected_keys(&device, 0, BACKLOG + calls);
    peers::poll_until(Duration::from_secs(60), || {
        (delivered(&sub) >= want.len() as u64).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not all delivered: {} of {}\n{}",
            delivered(&sub),
            want.len(),
            app.daemon.log()
        )
    });
    app.wait_queued(0);
    let all = keys(&sub.events("calls"));
    let unique = dedup(&all);
    assert_eq!(unique, want, "nothing lost; first arrivals in order");
    assert_eq!(
        dedup(&keys(&sub.events("summaries"))),
        stream_keys(&device, "summaries", 0, calls),
        "no summary lost either"
    );
    // Duplicates carry a key already seen and the same payload.
    let mut events = sub.events("calls");
    events.extend(sub.events("summaries"));
    events.extend(sub.events("events"));
    let mut first: HashMap<String, &serde_json::Value> = HashMap::new();
    for (i, (_, v)) in events.iter().enumerate() {
        let key = v["key"].as_str().expect("key").to_owned();
        let seen = first.entry(key).or_insert(v);
        assert_eq!(*seen, v, "duplicate #{i} differs from its first copy");
    }
    let starts = dedup(&keys(&sub.events("events")));
    assert_eq!(
        starts,
        stream_keys(&device, "events", 0, ROUNDS + 1),
        "each start's event, once each"
    );
    eprintln!(
        "faults: {} records in {ROUNDS} rounds of broker restart + kill -9, {} deliveries ({} duplicates) in {:?}",
        want.len(),
        all.len(),
        all.len() - unique.len(),
        t0.elapsed()
    );
    sub.stop();
    broker.stop();
}

/// `n` ended call records, as a daemon queues them.
fn call_records(n: u64) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(|i| {
        let id = ulid::Ulid::from_parts(1_795_330_000_000 + i, u128::from(i));
        let mut record = edgevoice::call::record::CallRecord::new_inbound(
            id,
            &format!("{i}@127.0.0.1"),
            "<sip:caller@127.0.0.1>",
            "<sip:agent@127.0.0.1>",
            "127.0.0.1:5062",
        );
        record.end(edgevoice::call::record::EndReason::Hangup, None);
        serde_json::to_vec(&record).expect("record JSON")
    })
}

/// MQTT 5 only: a PUBACK whose reason code refuses the message (here mosquitto's ACL:
/// NotAuthorized) deletes nothing; the message stays queued, status says why, the other
/// streams go on meanwhile, and it is delivered, with its key, once the broker takes it.
#[test]
fn slow_a_refused_mqtt5_puback_keeps_the_message_and_says_why() {
    let t0 = Instant::now();
    let site_dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(site_dir.path(), None);
    // Anyone may read everything and write everything but call records (summaries and site
    // events included: they must not wait behind the refused records).
    let acl = site_dir.path().join("acl");
    std::fs::write(
        &acl,
        "topic read #\ntopic write edgevoice/+/+/status\ntopic write edgevoice/+/+/cmd-result/#\ntopic write edgevoice/+/+/events/summaries\ntopic write edgevoice/+/+/events/events\n",
    )
    .unwrap();
    broker.extra_conf = format!("acl_file {}\n", acl.display());
    broker.start();
    let mut sub = Subscriber::connect(&broker, site_dir.path());
    let app = Appliance::start(TestSite::new(&uplink_config(broker.port, "")));
    let device = app.status()["device_id"].as_str().unwrap().to_owned();
    app.calls(1);
    let error = peers::poll_until(Duration::from_secs(20), || {
        app.status()["uplink_detail"]["last_error"]
            .as_str()
            .filter(|e| e.contains("the broker refused calls/1"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| {
        panic!(
            "no refusal in status: {}\n{}",
            app.status(),
            app.daemon.log()
        )
    });
    assert!(error.contains("NotAuthorized"), "{error}");
    // Only calls/1 stays: the streams the broker takes are not stuck behind it.
    app.wait_queued(1);
    assert!(keys(&sub.events("calls")).is_empty(), "{}", sub.lines());
    assert_eq!(
        keys(&sub.events("summaries")),
        stream_keys(&device, "summaries", 0, 1),
        "{}",
        sub.lines()
    );

    // The broker takes it once its ACL does.
    sub.stop();
    broker.stop();
    broker.extra_conf.clear();
    broker.start();
    sub.start(&broker);
    app.wait_queued(0);
    let got = peers::poll_until(Duration::from_secs(20), || {
        let k = keys(&sub.events("calls"));
        (!k.is_empty()).then_some(k)
    })
    .unwrap_or_else(|| panic!("not delivered: {}\n{}", sub.lines(), app.daemon.log()));
    assert_eq!(got, expected_keys(&device, 0, 1));
    eprintln!("refused PUBACK: {:?}", t0.elapsed());
    sub.stop();
    broker.stop();
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        text(&out.stderr)
    );
}

/// CA, server certificate for 127.0.0.1, client certificate; and a second, unrelated CA.
fn make_pki(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=edgevoice test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    // rustls (webpki) refuses X.509 v1 certificates: an extension makes the client's v3.
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn, ext) in [
        ("server", "127.0.0.1", true),
        ("client", "edgevoice-device", false),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        let ext_file = if ext { "san.ext" } else { "client.ext" };
        args.extend(["-extfile".to_owned(), ext_file.to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(dir, &args);
    }
}

#[test]
fn slow_tls_with_client_certificates_and_a_wrong_ca_is_one_clear_error() {
    let t0 = Instant::now();
    let site_dir = tempfile::tempdir().unwrap();
    let pki = site_dir.path().join("pki");
    make_pki(&pki);
    let tls_port = peers::free_port();
    let mut broker = Broker::new(site_dir.path(), Some((tls_port, pki.clone())));
    broker.start();
    let mut sub = Subscriber::connect(&broker, site_dir.path());

    let tls = |ca: &str| {
        format!(
            "ca_file = \"{0}/{ca}\"\nclient_cert = \"{0}/client.pem\"\nclient_key = \"{0}/client.key\"\n",
            pki.display()
        )
    };
    let app = Appliance::start(TestSite::new(&uplink_config(tls_port, &tls("ca.pem"))));
    let device = app.status()["device_id"].as_str().unwrap().to_owned();
    app.calls(3);
    let got = peers::poll_until(Duration::from_secs(20), || {
        let k = keys(&sub.events("calls"));
        (k.len() >= 3).then_some(k)
    })
    .unwrap_or_else(|| panic!("nothing over TLS: {}\n{}", app.daemon.log(), broker.log()));
    assert_eq!(got, expected_keys(&device, 0, 3));
    let status = app.status();
    assert!(
        status["uplink_detail"]["tls"].as_bool().unwrap(),
        "{status}"
    );
    drop(app);

    // The wrong CA: one clear line, in the log and in status.
    let site = TestSite::new(&uplink_config(tls_port, &tls("other-ca.pem")));
    let app = Appliance::start(site);
    let line = peers::poll_until(Duration::from_secs(10), || {
        let s = app.status();
        s["uplink_detail"]["last_error"].as_str().map(str::to_owned)
    })
    .expect("an error in status");
    assert!(line.contains("not signed by uplink.ca_file"), "{line}");
    std::thread::sleep(Duration::from_secs(3));
    let log = app.daemon.log();
    let mentions = log.matches("not signed by uplink.ca_file").count();
    assert_eq!(mentions, 1, "logged once, not per retry:\n{log}");
    let plain = text(&app.site.cli(&["status"]).stdout);
    assert!(plain.contains("not signed by uplink.ca_file"), "{plain}");
    eprintln!("tls: {:?}", t0.elapsed());
    sub.stop();
    broker.stop();
}

/// A broker that wants a user name and password: the configured ones get in; a wrong password
/// is one clear line (log and status) that names the keys to fix, not a silent retry loop.
#[test]
fn slow_broker_credentials_are_used_and_a_wrong_password_is_one_clear_error() {
    let site_dir = tempfile::tempdir().unwrap();
    let passwords = site_dir.path().join("passwords");
    let out = Command::new("mosquitto_passwd")
        .args(["-c", "-b", passwords.to_str().unwrap(), "site-7", "s3cret"])
        .output()
        .expect("mosquitto_passwd");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut broker = Broker::new(site_dir.path(), None);
    broker.extra_conf = format!(
        "allow_anonymous false\npassword_file {}\n",
        passwords.display()
    );
    broker.start();
    let credentials =
        |password: &str| format!("username = \"site-7\"\npassword = \"{password}\"\n");

    let app = Appliance::start(TestSite::new(&uplink_config(
        broker.port,
        &credentials("s3cret"),
    )));
    peers::poll_until(Duration::from_secs(10), || {
        app.status()["uplink"]
            .as_str()
            .filter(|l| l.starts_with("connected"))
            .map(|_| ())
    })
    .unwrap_or_else(|| panic!("not connected: {}\n{}", app.status(), broker.log()));
    drop(app);

    let app = Appliance::start(TestSite::new(&uplink_config(
        broker.port,
        &credentials("wrong"),
    )));
    let line = peers::poll_until(Duration::from_secs(10), || {
        app.status()["uplink_detail"]["last_error"]
            .as_str()
            .map(str::to_owned)
    })
    .expect("an error in status");
    assert!(
        line.contains("refused the connection") && line.contains("uplink.username/password"),
        "{line}"
    );
    eprintln!("wrong password: {line}");
    std::thread::sleep(Duration::from_secs(3));
    let log = app.daemon.log();
    assert_eq!(
        log.matches("uplink.username/password").count(),
        1,
        "logged once, not per retry:\n{log}"
    );
    assert!(
        broker.log().contains("not authorised")
            || broker.log().contains("bad user name or password"),
        "{}",
        broker.log()
    );
    broker.stop();
}
