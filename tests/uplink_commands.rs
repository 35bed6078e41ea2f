//! Signed remote commands end to end: a real mosquitto on 127.0.0.1, the real daemon, commands
//! signed by the real `edgevoice command sign` and published with the real `mosquitto_pub`,
//! results read with `mosquitto_sub` from `edgevoice/{site}/{device}/cmd-result/{request_id}`
//! (or, for MQTT 5 requests with a response topic, from that topic). The daemon speaks MQTT 5
//! (the default) unless a test says `mqtt_version = "3.1.1"`.
//!
//! Debian packages: mosquitto, mosquitto-clients, sip-tester, python3 (http.server).

#[path = "common/audio.rs"]
mod audio;
mod common;
#[path = "common/mqtt.rs"]
mod mqtt;
#[path = "common/peers.rs"]
mod peers;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{cli_bin, text, TestDaemon, TestSite};
use mqtt::Broker;
use peers::PeerProcess;

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", text(bytes)))
}

/// `mosquitto_sub` on every command result, printing `topic payload` lines to a file.
struct Results {
    out: PathBuf,
    _proc: PeerProcess,
}

impl Results {
    fn subscribe(broker: &Broker, dir: &Path) -> Results {
        let out = dir.join("results.log");
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-i", "edgevoice-test-results", "-q", "1", "-v"])
            .args(["-t", "edgevoice/+/+/cmd-result/#"]);
        let proc = PeerProcess::spawn("mosquitto_sub", &mut cmd, &out);
        peers::poll_until(Duration::from_secs(10), || {
            broker
                .log()
                .contains("Sending SUBACK to edgevoice-test-results")
                .then_some(())
        })
        .expect("mosquitto_sub subscribed");
        Results { out, _proc: proc }
    }

    fn all(&self) -> Vec<(String, serde_json::Value)> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (topic, payload) = line.split_once(' ')?;
                Some((topic.to_owned(), serde_json::from_str(payload).ok()?))
            })
            .collect()
    }

    /// The `nth` (1-based) result for `request_id`.
    fn wait(&self, request_id: &str, nth: usize) -> serde_json::Value {
        let suffix = format!("/cmd-result/{request_id}");
        peers::poll_until(Duration::from_secs(20), || {
            let mine: Vec<_> = self
                .all()
                .into_iter()
                .filter(|(t, _)| t.ends_with(&suffix))
                .collect();
            mine.get(nth - 1).map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| {
            panic!(
                "no result #{nth} for {request_id}: {}",
                std::fs::read_to_string(&self.out).unwrap_or_default()
            )
        })
    }
}

fn edgevoice(args: &[&str]) -> String {
    let out = Command::new(cli_bin())
        .args(args)
        .env_remove("EDGEVOICE_CONFIG")
        .output()
        .expect("run edgevoice");
    assert!(
        out.status.success(),
        "edgevoice {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

/// `edgevoice command keygen`: the key file and the trusted_keys line.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.key"));
    let line = edgevoice(&[
        "command",
        "keygen",
        "--out",
        key.to_str().unwrap(),
        "--key-id",
        name,
    ]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private key file mode");
    assert!(line.starts_with(&format!("{name}:")), "{line}");
    (key, line)
}

/// `edgevoice command sign` of `name` for `device` of site s1 (`*`: every device of it).
fn sign(key: &Path, key_id: &str, device: &str, name: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "command",
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--key-id",
        key_id,
        "--site",
        "s1",
        "--name",
        name,
    ];
    if device == "*" {
        args.push("--all-devices");
    } else {
        args.extend_from_slice(&["--device", device]);
    }
    args.extend_from_slice(extra);
    edgevoice(&args)
}

/// The request id inside an envelope's (base64) payload.
fn request_id(envelope: &str) -> String {
    let env = json(envelope.as_bytes());
    let payload = base64::engine::general_purpose::STANDARD
        .decode(env["payload"].as_str().unwrap())
        .unwrap();
    json(&payload)["request_id"].as_str().unwrap().to_owned()
}

struct Appliance {
    site: TestSite,
    daemon: TestDaemon,
    device: String,
}

impl Appliance {
    /// Starts the daemon and waits until it is subscribed to its command topic.
    fn start(site: TestSite, broker: &Broker) -> Appliance {
        let subacks = || {
            broker
                .log()
                .matches("Sending SUBACK to edgevoice-s1-")
                .count()
        };
        let before = subacks();
        let mut daemon = TestDaemon::spawn(&site, &[]);
        daemon.wait_ready(&site);
        let status = json(&site.cli(&["status", "--json"]).stdout);
        let device = status["device_id"].as_str().unwrap().to_owned();
        peers::poll_until(Duration::from_secs(20), || {
            (subacks() > before).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "the daemon never subscribed: {}\n{}",
                daemon.log(),
                broker.log()
            )
        });
        Appliance {
            site,
            daemon,
            device,
        }
    }

    fn restart(self, broker: &Broker) -> Appliance {
        let Appliance { site, daemon, .. } = self;
        drop(daemon);
        Appliance::start(site, broker)
    }

    fn publish(&self, broker: &Broker, name: &str, message: &str) {
        self.publish_with(broker, name, message, &[]);
    }

    /// `mosquitto_pub` with extra arguments (e.g. `-V mqttv5 -D publish response-topic ...`).
    fn publish_with(&self, broker: &Broker, name: &str, message: &str, extra: &[&str]) {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
            .args(extra)
            .args(["-t", &format!("edgevoice/s1/{}/cmd/{name}", self.device)])
            .args(["-m", message])
            .output()
            .expect("mosquitto_pub");
        assert!(out.status.success(), "mosquitto_pub: {}", text(&out.stderr));
    }

    /// Waits until every connection the daemon has made has subscribed to its commands, and
    /// it is connected: after a broker-side disconnect, commands can be published again.
    fn wait_resubscribed(&self, broker: &Broker) {
        let subacks = format!("Sending SUBACK to edgevoice-s1-{}", self.device);
        peers::poll_until(Duration::from_secs(20), || {
            let status = json(&self.site.cli(&["status", "--json"]).stdout);
            let connects = status["uplink_detail"]["connects"].as_u64()?;
            let connected = status["uplink_detail"]["state"] == "connected";
            (connected && broker.log().matches(&subacks).count() as u64 >= connects).then_some(())
        })
        .unwrap_or_else(|| panic!("not subscribed again: {}", self.daemon.log()));
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        let out = self.site.cli(&["audit", "--json", "--limit", "200"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        json(&out.stdout).as_array().unwrap().clone()
    }
}

fn config(port: u16, trusted: &str, extra: &str) -> String {
    format!(
        "[uplink]\nenabled = true\nbroker_host = \"127.0.0.1\"\nbroker_port = {port}\nsite_id = \"s1\"\nreconnect_min_ms = 100\nreconnect_max_secs = 1\ntrusted_keys = [\"{trusted}\"]\ncommand_clock_skew_secs = 5\n{extra}\n"
    )
}

fn error_of(result: &serde_json::Value) -> String {
    assert_eq!(result["ok"], false, "{result}");
    result["error"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn slow_signed_commands_round_trip_and_every_rejection_says_why() {
    signed_commands_round_trip_and_every_rejection_says_why("5");
}

#[test]
fn slow_signed_commands_round_trip_and_every_rejection_says_why_on_mqtt_3_1_1() {
    signed_commands_round_trip_and_every_rejection_says_why("3.1.1");
}

/// `version`: `uplink.mqtt_version`.
fn signed_commands_round_trip_and_every_rejection_says_why(version: &str) {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), None);
    broker.start();
    let results = Results::subscribe(&broker, dir.path());
    let (ops, ops_line) = keygen(dir.path(), "ops");
    let (stranger, _) = keygen(dir.path(), "stranger");
    let extra = format!("mqtt_version = \"{version}\"\n");
    let app = Appliance::start(
        TestSite::new(&config(broker.port, &ops_line, &extra)),
        &broker,
    );
    // mosquitto logs "New client connected ... as <id> (p5, c0, k30)": p5 is MQTT 5, p2 is 3.1.1; c0: a persistent session.
    let level = if version == "5" { "p5" } else { "p2" };
    assert!(
        broker
            .log()
            .contains(&format!("as edgevoice-s1-{} ({level}, c0,", app.device)),
        "connected with MQTT {version}: {}",
        broker.log()
    );

    // Accepted.
    let status_cmd = sign(&ops, "ops", &app.device, "status", &[]);
    let status_id = request_id(&status_cmd);
    app.publish(&broker, "status", &status_cmd);
    let r = results.wait(&status_id, 1);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["request_id"], status_id.as_str());
    assert_eq!(r["result"]["device_id"], app.device.as_str());
    assert_eq!(r["result"]["phase"], "ready");
    assert!(
        r["key"].as_str().unwrap().contains("/command_results/"),
        "{r}"
    );

    // Unsigned: the bare payload, no envelope.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let unsigned = serde_json::json!({
        "request_id": "unsigned-1", "name": "status", "args": {},
        "issued_at": now, "expires_at": now + 60,
    })
    .to_string();
    app.publish(&broker, "status", &unsigned);
    let e = error_of(&results.wait("unsigned-1", 1));
    assert!(e.starts_with("unsigned"), "{e}");

    // Bad signature: one character of the signature changed.
    let cmd = sign(
        &ops,
        "ops",
        &app.device,
        "status",
        &["--request-id", "badsig-1"],
    );
    let mut env = json(cmd.as_bytes());
    let sig = env["signature"].as_str().unwrap().to_owned();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    env["signature"] = serde_json::Value::String(format!("{flipped}{}", &sig[1..]));
    app.publish(&broker, "status", &env.to_string());
    let e = error_of(&results.wait("badsig-1", 1));
    assert!(e.starts_with("bad signature"), "{e}");

    // A key the appliance does not trust.
    let cmd = sign(
        &stranger,
        "stranger",
        &app.device,
        "status",
        &["--request-id", "stranger-1"],
    );
    app.publish(&broker, "status", &cmd);
    let e = error_of(&results.wait("stranger-1", 1));
    assert!(
        e.starts_with("unknown key") && e.contains("stranger"),
        "{e}"
    );

    // Expired: issued 1000 s ago for 60 s.
    let issued = (now - 1000).to_string();
    let cmd = sign(
        &ops,
        "ops",
        &app.device,
        "status",
        &[
            "--request-id",
            "expired-1",
            "--issued-at",
            &issued,
            "--ttl",
            "60",
        ],
    );
    app.publish(&broker, "status", &cmd);
    let e = error_of(&results.wait("expired-1", 1));
    assert!(e.starts_with("expired"), "{e}");

    // Replayed: the accepted status command again. Refused and audited, but no result: the
    // original stays the only one on cmd-result/{request_id}.
    app.publish(&broker, "status", &status_cmd);

    // Unknown command (signed, on its own topic).
    let cmd = sign(
        &ops,
        "ops",
        &app.device,
        "reboot",
        &["--request-id", "reboot-1"],
    );
    app.publish(&broker, "reboot", &cmd);
    let e = error_of(&results.wait("reboot-1", 1));
    assert!(e.contains("unknown command `reboot`"), "{e}");
    let results_for = |id: &str| {
        let suffix = format!("/cmd-result/{id}");
        results
            .all()
            .into_iter()
            .filter(|(t, _)| t.ends_with(&suffix))
            .count()
    };
    // Results are published in order: the replay's would have come before reboot-1's.
    assert_eq!(results_for(&status_id), 1, "{:?}", results.all());

    // Everything is in the audit tree, accepted or not.
    let audit = app.audit();
    let outcome = |id: &str| -> Vec<String> {
        audit
            .iter()
            .filter(|r| r["request_id"] == id)
            .map(|r| {
                format!(
                    "{} {}",
                    r["who"].as_str().unwrap(),
                    r["outcome"].as_str().unwrap()
                )
            })
            .collect()
    };
    let mut want = outcome(&status_id);
    want.sort();
    assert_eq!(
        want,
        vec![
            "mqtt:ops ok".to_owned(),
            format!("mqtt:ops refused: replayed: request_id \"{status_id}\" was seen before"),
        ],
        "{audit:?}"
    );
    for (id, who, starts) in [
        ("unsigned-1", "mqtt:unverified", "refused: unsigned"),
        ("badsig-1", "mqtt:unverified", "refused: bad signature"),
        ("stranger-1", "mqtt:unverified", "refused: unknown key"),
        ("expired-1", "mqtt:ops", "refused: expired"),
        ("reboot-1", "mqtt:ops", "refused: unknown command"),
    ] {
        let got = outcome(id);
        assert_eq!(got.len(), 1, "{id}: {got:?}");
        assert!(
            got[0].starts_with(&format!("{who} {starts}")),
            "{id}: {got:?}"
        );
    }
    assert!(audit.iter().all(|r| r["channel"] == "mqtt"), "{audit:?}");

    // The ledger survives a restart: the replay is still refused (audited, no result).
    let app = app.restart(&broker);
    app.publish(&broker, "status", &status_cmd);
    peers::poll_until(Duration::from_secs(20), || {
        (app.audit()
            .iter()
            .filter(|r| {
                r["request_id"] == status_id.as_str()
                    && r["outcome"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with("refused: replayed")
            })
            .count()
            == 2)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("replay not refused after restart: {:?}", app.audit()));
    let cmd = sign(
        &ops,
        "ops",
        &app.device,
        "status",
        &["--request-id", "after-1"],
    );
    app.publish(&broker, "status", &cmd);
    assert_eq!(results.wait("after-1", 1)["ok"], true);
    assert_eq!(results_for(&status_id), 1, "{:?}", results.all());
    eprintln!("commands (MQTT {version}): {:?}", t0.elapsed());
    broker.stop();
}

/// MQTT 5 request/response: the result goes to the command's response topic, with its
/// correlation data and the idempotency key as user property, instead of
/// `cmd-result/{request_id}`; a response topic outside the policy is refused (not run) and
/// answered on `cmd-result/{request_id}`.
#[test]
fn slow_a_command_sent_while_the_appliance_is_offline_runs_when_it_reconnects() {
    for version in ["5", "3.1.1"] {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Broker::new(dir.path(), None);
        broker.start();
        let results = Results::subscribe(&broker, dir.path());
        let (ops, ops_line) = keygen(dir.path(), "ops");
        let extra = format!("mqtt_version = \"{version}\"\n");
        let app = Appliance::start(
            TestSite::new(&config(broker.port, &ops_line, &extra)),
            &broker,
        );
        // The appliance goes away (a clean stop); its session, subscription included, stays.
        let Appliance {
            site,
            daemon,
            device,
        } = app;
        daemon.signal(nix::sys::signal::Signal::SIGTERM);
        let (code, log) = daemon.wait_exit(Duration::from_secs(20));
        assert_eq!(code, Some(0), "{log}");
        let status_cmd = sign(&ops, "ops", &device, "status", &[]);
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
            .args(["-t", &format!("edgevoice/s1/{device}/cmd/status")])
            .args(["-m", &status_cmd])
            .output()
            .expect("mosquitto_pub");
        assert!(out.status.success(), "mosquitto_pub: {}", text(&out.stderr));

        // Back: the queued command arrives and runs.
        let mut daemon = TestDaemon::spawn(&site, &[]);
        daemon.wait_ready(&site);
        let r = results.wait(&request_id(&status_cmd), 1);
        assert_eq!(r["ok"], true, "MQTT {version}: {r}");
        assert_eq!(r["result"]["device_id"], device.as_str());
        drop(daemon);
        broker.stop();
    }
}

#[test]
fn slow_mqtt5_results_go_to_the_response_topic_with_the_correlation_data() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), None);
    // One response topic the appliance may not write to.
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "topic deny edgevoice/s1/replies/denied\ntopic readwrite #\n",
    )
    .unwrap();
    broker.extra_conf = format!("acl_file {}\n", acl.display());
    broker.start();
    let results = Results::subscribe(&broker, dir.path());
    let replies_out = dir.path().join("replies.log");
    let _replies = broker.subscribe_v5(
        "edgevoice-test-replies",
        "edgevoice/s1/replies/#",
        "%t|%D|%P|%p",
        &replies_out,
    );
    let (ops, ops_line) = keygen(dir.path(), "ops");
    let app = Appliance::start(TestSite::new(&config(broker.port, &ops_line, "")), &broker);
    let v5 = |topic: &'static str, correlation: &'static str| -> Vec<&'static str> {
        vec![
            "-V",
            "mqttv5",
            "-D",
            "publish",
            "response-topic",
            topic,
            "-D",
            "publish",
            "correlation-data",
            correlation,
        ]
    };

    let cmd = sign(
        &ops,
        "ops",
        &app.device,
        "status",
        &["--request-id", "asked-1"],
    );
    app.publish_with(
        &broker,
        "status",
        &cmd,
        &v5("edgevoice/s1/replies/ops", "job-42"),
    );
    let line = peers::poll_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&replies_out)
            .unwrap_or_default()
            .lines()
            .next()
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("no reply: {}", app.daemon.log()));
    let fields: Vec<&str> = line.splitn(4, '|').collect();
    assert_eq!(
        &fields[..2],
        ["edgevoice/s1/replies/ops", "job-42"],
        "{line}"
    );
    let r = json(fields[3].as_bytes());
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["request_id"], "asked-1");
    assert_eq!(r["result"]["device_id"], app.device.as_str());
    assert_eq!(
        fields[2],
        format!("idempotency-key:{}", r["key"].as_str().unwrap()),
        "{line}"
    );

    // A response topic the broker refuses (NotAuthorized): the result is dropped and logged,
    // and does not hold up the results behind it (the next ones below arrive). mosquitto
    // 2.0.11 also closes the connection after a denied PUBLISH, so the next command waits
    // until the daemon has subscribed again.
    let cmd = sign(
        &ops,
        "ops",
        &app.device,
        "status",
        &["--request-id", "denied-1"],
    );
    app.publish_with(
        &broker,
        "status",
        &cmd,
        &v5("edgevoice/s1/replies/denied", "d"),
    );
    peers::poll_until(Duration::from_secs(20), || {
        app.daemon
            .log()
            .contains("command result dropped: the broker refused it (NotAuthorized)")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("not dropped: {}", app.daemon.log()));
    app.wait_resubscribed(&broker);

    // A response topic outside edgevoice/{site}/: not run, answered on cmd-result.
    let cmd = sign(
        &ops,
        "ops",
        &app.device,
        "status",
        &["--request-id", "forged-1"],
    );
    app.publish_with(&broker, "status", &cmd, &v5("elsewhere/inbox", "x"));
    let e = error_of(&results.wait("forged-1", 1));
    assert!(
        e.starts_with("bad response topic") && e.contains("not inside edgevoice/s1/"),
        "{e}"
    );
    // Another device's command topic.
    let cmd = sign(
        &ops,
        "ops",
        &app.device,
        "status",
        &["--request-id", "forged-2"],
    );
    let other_cmd = "edgevoice/s1/other-device/cmd/config.apply";
    app.publish_with(&broker, "status", &cmd, &v5(other_cmd, "x"));
    let e = error_of(&results.wait("forged-2", 1));
    assert!(e.contains("cmd topic"), "{e}");
    let log = app.daemon.log();
    assert!(
        log.contains("remote command refused: bad response topic"),
        "{log}"
    );
    // Results come in order: the accepted command's was never on cmd-result.
    assert!(
        !results.all().iter().any(|(t, _)| t.ends_with("/asked-1")),
        "{:?}",
        results.all()
    );
    let audit = app.audit();
    let forged: Vec<_> = audit
        .iter()
        .filter(|r| r["request_id"] == "forged-1")
        .collect();
    assert_eq!(forged.len(), 1, "{audit:?}");
    assert!(
        forged[0]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("refused: bad response topic"),
        "{forged:?}"
    );
    peers::poll_until(Duration::from_secs(20), || {
        let s = json(&app.site.cli(&["status", "--json"]).stdout);
        (s["uplink_detail"]["queued_messages"] == 0).then_some(())
    })
    .expect("nothing left queued");
    eprintln!("response topics: {:?}", t0.elapsed());
    broker.stop();
}

/// A flood of unsigned commands: the first `burst` are answered and audited, the rest dropped
/// without a result, counted in status and logged once; a signed command still runs.
#[test]
fn slow_a_flood_of_unsigned_commands_is_rate_limited_and_signed_ones_still_run() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), None);
    broker.start();
    let results = Results::subscribe(&broker, dir.path());
    let (ops, ops_line) = keygen(dir.path(), "ops");
    // One token a minute: none comes back while the test runs.
    let app = Appliance::start(
        TestSite::new(&config(
            broker.port,
            &ops_line,
            "unverified_commands_per_min = 1\nunverified_commands_burst = 3\n",
        )),
        &broker,
    );
    const FLOOD: usize = 20;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // `mosquitto_pub -l`: one message per stdin line, on one connection.
    let lines: String = (1..=FLOOD)
        .map(|i| {
            serde_json::json!({
                "request_id": format!("flood-{i}"), "name": "status", "args": {},
                "issued_at": now, "expires_at": now + 60,
            })
            .to_string()
                + "\n"
        })
        .collect();
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-l",
        ])
        .args(["-t", &format!("edgevoice/s1/{}/cmd/status", app.device)])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(lines.as_bytes()).unwrap();
    }
    assert!(child.wait().unwrap().success());
    let status = || json(&app.site.cli(&["status", "--json"]).stdout);
    peers::poll_until(Duration::from_secs(20), || {
        (status()["uplink_detail"]["commands_rate_limited"].as_u64() == Some(FLOOD as u64 - 3))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("not counted: {}\n{}", status(), app.daemon.log()));
    let line = status()["uplink"].as_str().unwrap().to_owned();
    assert!(line.contains("17 unverified commands dropped"), "{line}");

    // 17 dropped of 20, so 3 answered: wait for their results.
    let flood_results = || -> Vec<(String, serde_json::Value)> {
        results
            .all()
            .into_iter()
            .filter(|(t, _)| t.contains("/cmd-result/flood-"))
            .collect()
    };
    peers::poll_until(Duration::from_secs(20), || {
        (flood_results().len() >= 3).then_some(())
    })
    .unwrap_or_else(|| panic!("the burst was not answered: {:?}", results.all()));
    // A signed command still runs.
    let cmd = sign(
        &ops,
        "ops",
        &app.device,
        "status",
        &["--request-id", "signed-1"],
    );
    app.publish(&broker, "status", &cmd);
    assert_eq!(results.wait("signed-1", 1)["ok"], true);
    let answered = flood_results();
    assert_eq!(answered.len(), 3, "the burst only: {answered:?}");
    for (_, r) in &answered {
        assert!(error_of(r).starts_with("unsigned"), "{r}");
    }
    let audit = app.audit();
    let refused = audit
        .iter()
        .filter(|r| {
            r["request_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("flood-"))
        })
        .count();
    assert_eq!(refused, 3, "one audit record per answered one: {audit:?}");
    let log = app.daemon.log();
    assert_eq!(
        log.matches("dropping them without audit record or result")
            .count(),
        1,
        "one warning for the window: {log}"
    );
    eprintln!("flood: {:?}", t0.elapsed());
    broker.stop();
}

/// Signs `name` with `args`, publishes it, returns its result.
fn run(
    app: &Appliance,
    broker: &Broker,
    results: &Results,
    key: &Path,
    name: &str,
    args: serde_json::Value,
) -> serde_json::Value {
    let cmd = sign(
        key,
        "ops",
        &app.device,
        name,
        &["--args", &args.to_string()],
    );
    app.publish(broker, name, &cmd);
    results.wait(&request_id(&cmd), 1)
}

#[test]
fn slow_operations_commands_run_over_mqtt_through_the_dispatcher() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), None);
    broker.start();
    let results = Results::subscribe(&broker, dir.path());
    let (ops, ops_line) = keygen(dir.path(), "ops");
    // One model installed, a new version of it served over HTTP.
    let sha = |b: &[u8]| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(b))
    };
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("models/vad.bin"), b"vad v1").unwrap();
    std::fs::write(dir.path().join("www/vad-v2.bin"), b"vad v2, better").unwrap();
    std::fs::write(
        dir.path().join("manifest.toml"),
        format!(
            "schema = 1\n[[model]]\nname = \"vad\"\nrole = \"vad\"\nfile = \"vad.bin\"\nsize = 6\nsha256 = \"{}\"\nlicense = \"MIT\"\n",
            sha(b"vad v1")
        ),
    )
    .unwrap();
    let (_http, http_port) = serve_dir(&dir.path().join("www"));
    let app = Appliance::start(
        TestSite::new(&config(
            broker.port,
            &ops_line,
            &format!(
                "username = \"dev\"\npassword = \"broker-secret\"\n[models]\ndir = \"{0}/models\"\nmanifest = \"{0}/manifest.toml\"\n",
                dir.path().display()
            ),
        )),
        &broker,
    );
    let run = |name: &str, args: serde_json::Value| run(&app, &broker, &results, &ops, name, args);

    // log.level
    let r = run("log.level", serde_json::json!({"level": "trace"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["previous"], "debug");
    let e = error_of(&run("log.level", serde_json::json!({"level": "loud"})));
    assert!(e.contains("not a log level"), "{e}");

    // drain: new INVITEs get 503 while the daemon runs on; undrain takes calls again.
    let status = || json(&app.site.cli(&["status", "--json"]).stdout);
    let sip = status()["sip_listen"].as_str().unwrap().to_owned();
    let r = run("drain", serde_json::json!({}));
    assert_eq!(r["result"]["phase"], "draining", "{r}");
    assert_eq!(status()["phase"], "draining");
    let call = || {
        peers::Sipp::run_uac(
            &peers::SippUac::new(&sip)
                .calls(1)
                .call_duration(Duration::from_millis(100)),
        )
    };
    let refused = call();
    assert_eq!(refused.codes.get(&503), Some(&1), "{:?}", refused.codes);
    let r = run("undrain", serde_json::json!({}));
    assert_eq!(r["result"]["phase"], "ready", "{r}");
    assert_eq!(status()["phase"], "ready");
    let answered = call();
    assert_eq!(answered.successful, 1, "{}", answered.screen);

    // config.get: the running config, secrets redacted.
    let r = run("config.get", serde_json::json!({}));
    assert_eq!(r["ok"], true, "{r}");
    let got = &r["result"]["config"];
    assert_eq!(got["uplink"]["password"], "(redacted)", "{got}");
    assert!(!r.to_string().contains("broker-secret"), "{r}");
    assert_eq!(got["uplink"]["site_id"], "s1");
    assert_eq!(got["daemon"]["log_level"], "trace", "log.level shows");
    assert_eq!(r["result"]["source"], app.site.config.display().to_string());

    // config.apply: a bad config is refused, file and running config unchanged.
    let file = std::fs::read_to_string(&app.site.config).unwrap();
    assert!(file.contains("log_level = \"debug\""), "{file}");
    let before = run("config.get", serde_json::json!({}))["result"].clone();
    let bad = file.replace("log_level = \"debug\"", "log_level = \"loud\"");
    let e = error_of(&run("config.apply", serde_json::json!({ "toml": bad })));
    assert!(
        e.contains("config refused") && e.contains("daemon.log_level"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&app.site.config).unwrap(), file);
    let after = run("config.get", serde_json::json!({}))["result"].clone();
    assert_eq!(before, after, "running config unchanged");
    // A good one is applied through the reload path; the old file is kept as last good.
    let good = file.replace("log_level = \"debug\"", "log_level = \"warn\"");
    let r = run("config.apply", serde_json::json!({ "toml": good }));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(std::fs::read_to_string(&app.site.config).unwrap(), good);
    let last_good = r["result"]["last_good"].as_str().unwrap();
    assert_eq!(std::fs::read_to_string(last_good).unwrap(), file);
    let now = run("config.get", serde_json::json!({}));
    assert_eq!(now["result"]["config"]["daemon"]["log_level"], "warn");
    let audit = serde_json::to_string(&app.audit()).unwrap();
    assert!(
        audit.contains("config.apply") && !audit.contains("broker-secret"),
        "{audit}"
    );

    // retention.purge: the call made above is younger than a day and stays.
    let r = run("retention.purge", serde_json::json!({"older_than_days": 1}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        (
            r["result"]["calls"].as_u64(),
            r["result"]["recordings"].as_u64()
        ),
        (Some(0), Some(0)),
        "{r}"
    );
    let calls = json(&app.site.cli(&["calls", "--json"]).stdout);
    assert!(!calls.as_array().unwrap().is_empty(), "{calls}");
    let e = error_of(&run(
        "retention.purge",
        serde_json::json!({"older_than_days": 0}),
    ));
    assert!(e.contains("older_than_days"), "{e}");

    // models.install: a wrong sha256 never replaces the installed file; the right one does.
    let url = format!("http://127.0.0.1:{http_port}/vad-v2.bin");
    let wrong = sha(b"something else");
    let e = error_of(&run(
        "models.install",
        serde_json::json!({"name": "vad", "url": url, "sha256": wrong}),
    ));
    assert!(
        e.contains("nothing was replaced") && e.contains("unchanged"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("models/vad.bin")).unwrap(),
        b"vad v1"
    );
    let r = run(
        "models.install",
        serde_json::json!({"name": "vad", "url": url, "sha256": sha(b"vad v2, better")}),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["installed"]["size"], 14);
    assert_eq!(
        std::fs::read(dir.path().join("models/vad.bin")).unwrap(),
        b"vad v2, better"
    );
    broker.stop();
}

struct HttpServer(std::process::Child);
impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `python3 -m http.server` on 127.0.0.1 serving `dir`.
fn serve_dir(dir: &Path) -> (HttpServer, u16) {
    let port = peers::free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let server = HttpServer(child);
    peers::poll_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .expect("http server started");
    (server, port)
}

impl Appliance {
    fn status(&self) -> serde_json::Value {
        json(&self.site.cli(&["status", "--json"]).stdout)
    }

    /// `mosquitto_pub -f FILE` on `cmd/{name}` (for payloads too big for a command line).
    fn publish_file(&self, broker: &Broker, name: &str, file: &Path, extra: &[&str]) {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
            .args(extra)
            .args(["-t", &format!("edgevoice/s1/{}/cmd/{name}", self.device)])
            .arg("-f")
            .arg(file)
            .output()
            .expect("mosquitto_pub");
        assert!(out.status.success(), "mosquitto_pub: {}", text(&out.stderr));
    }
}

/// Issue 13 part 2: the signed payload names its target. A command signed for device A and
/// republished unchanged on device B's topic is refused there (B does not drain), with a
/// result and an audit record; a payload without a target is refused with the fix; a command
/// signed for every device of the site runs once on each.
#[test]
fn slow_a_command_signed_for_one_device_is_refused_on_another_and_a_site_wide_one_runs_on_each() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), None);
    broker.start();
    let results = Results::subscribe(&broker, dir.path());
    let (ops, ops_line) = keygen(dir.path(), "ops");
    let a = Appliance::start(TestSite::new(&config(broker.port, &ops_line, "")), &broker);
    let b = Appliance::start(TestSite::new(&config(broker.port, &ops_line, "")), &broker);
    assert_ne!(a.device, b.device);
    let result_on = |device: &str, id: &str| {
        let topic = format!("edgevoice/s1/{device}/cmd-result/{id}");
        peers::poll_until(Duration::from_secs(20), || {
            results
                .all()
                .into_iter()
                .find(|(t, _)| *t == topic)
                .map(|(_, v)| v)
        })
        .unwrap_or_else(|| panic!("no result on {topic}: {:?}", results.all()))
    };

    let drain_a = sign(
        &ops,
        "ops",
        &a.device,
        "drain",
        &["--request-id", "drain-a"],
    );
    a.publish(&broker, "drain", &drain_a);
    let r = result_on(&a.device, "drain-a");
    assert_eq!(r["result"]["phase"], "draining", "{r}");
    // Captured and republished unchanged on B's command topic.
    b.publish(&broker, "drain", &drain_a);
    let e = error_of(&result_on(&b.device, "drain-a"));
    assert_eq!(
        e,
        format!(
            "wrong target: signed for site \"s1\" device \"{0}\", this appliance is site \"s1\" device \"{1}\"; sign it for this one with `edgevoice command sign --site s1 --device {1}`",
            a.device, b.device
        )
    );
    assert_eq!(b.status()["phase"], "ready", "B did not drain");
    let refused: Vec<_> = b
        .audit()
        .into_iter()
        .filter(|r| r["request_id"] == "drain-a")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["who"], "mqtt:ops");
    assert!(
        refused[0]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("refused: wrong target"),
        "{refused:?}"
    );

    // Signed the old way, without a target: refused with the fix.
    let key =
        edgevoice::control::remote::decode_signing_key(&std::fs::read_to_string(&ops).unwrap())
            .unwrap();
    let now = edgevoice::control::remote::now_secs();
    let old = edgevoice::control::remote::sign(
        &key,
        "ops",
        &edgevoice::control::remote::CommandPayload {
            request_id: "untargeted-1".into(),
            name: "drain".into(),
            target: None,
            args: serde_json::json!({}),
            issued_at: now,
            expires_at: now + 60,
        },
    );
    assert!(!old.contains("target"), "{old}");
    b.publish(&broker, "drain", &old);
    let e = error_of(&result_on(&b.device, "untargeted-1"));
    assert!(
        e.starts_with("no target:")
            && e.contains(&format!(
                "re-sign it with `edgevoice command sign --site s1 --device {}`",
                b.device
            )),
        "{e}"
    );
    assert_eq!(b.status()["phase"], "ready", "B did not drain");

    // Every device of site s1: runs once on each.
    let all = sign(
        &ops,
        "ops",
        "*",
        "undrain",
        &["--request-id", "undrain-all"],
    );
    a.publish(&broker, "undrain", &all);
    b.publish(&broker, "undrain", &all);
    assert_eq!(
        result_on(&a.device, "undrain-all")["result"]["phase"],
        "ready"
    );
    assert_eq!(
        result_on(&b.device, "undrain-all")["result"]["phase"],
        "ready"
    );
    assert_eq!(a.status()["phase"], "ready");
    eprintln!("targets: {:?}", t0.elapsed());
    broker.stop();
}

#[test]
fn slow_an_oversized_command_is_dropped_and_the_connection_survives_on_mqtt_3_1_1() {
    an_oversized_command_is_dropped_and_the_connection_survives("3.1.1");
}

#[test]
fn slow_an_oversized_command_is_dropped_and_the_connection_survives_on_mqtt_5() {
    an_oversized_command_is_dropped_and_the_connection_survives("5");
}

/// Issue 13 part 3: a 1 MB message on `cmd/` is acknowledged (the broker forgets it), dropped,
/// counted and audited, and the connection carries on: results flow, commands are answered,
/// also after a restart. A message too large to read at all (5 MiB): on MQTT 5 the broker
/// never sends it (the daemon advertises its maximum); on 3.1.1 the daemon resets the broker
/// session once and carries on.
fn an_oversized_command_is_dropped_and_the_connection_survives(version: &str) {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), None);
    broker.start();
    let results = Results::subscribe(&broker, dir.path());
    let (ops, ops_line) = keygen(dir.path(), "ops");
    let extra = format!("mqtt_version = \"{version}\"\n");
    let app = Appliance::start(
        TestSite::new(&config(broker.port, &ops_line, &extra)),
        &broker,
    );
    let detail = |app: &Appliance| app.status()["uplink_detail"].clone();
    assert_eq!(detail(&app)["connects"], 1);

    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b'x'; 1_000_000]).unwrap();
    app.publish_file(&broker, "status", &big, &[]);
    peers::poll_until(Duration::from_secs(20), || {
        (detail(&app)["commands_oversized"] == 1).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "MQTT {version}: not counted: {}\n{}",
            detail(&app),
            app.daemon.log()
        )
    });
    let audit = app.audit();
    assert!(
        audit.iter().any(|r| r["outcome"]
            .as_str()
            .unwrap_or_default()
            .starts_with("refused: oversized: the message is 1000000 bytes, a command may have at most 262144")),
        "{audit:?}"
    );
    let e = error_of(&results.wait("_invalid", 1));
    assert!(e.starts_with("oversized"), "{e}");
    // The connection survived: answered at once, no reconnect.
    let cmd = sign(
        &ops,
        "ops",
        &app.device,
        "status",
        &["--request-id", "after-big"],
    );
    app.publish(&broker, "status", &cmd);
    assert_eq!(results.wait("after-big", 1)["ok"], true);
    assert_eq!(detail(&app)["connects"], 1, "{}", app.daemon.log());
    assert!(
        app.daemon
            .log()
            .contains("a 1000000-byte command message was acknowledged and dropped unread"),
        "{}",
        app.daemon.log()
    );

    // Too large to read at all.
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, vec![b'x'; 5 << 20]).unwrap();
    app.publish_file(&broker, "status", &huge, &[]);
    let cmd = sign(
        &ops,
        "ops",
        &app.device,
        "status",
        &["--request-id", "after-huge"],
    );
    if version == "3.1.1" {
        peers::poll_until(Duration::from_secs(20), || {
            (detail(&app)["session_resets"] == 1).then_some(())
        })
        .unwrap_or_else(|| panic!("no session reset: {}\n{}", detail(&app), app.daemon.log()));
        app.wait_resubscribed(&broker);
        assert!(
            broker
                .log()
                .contains(&format!("as edgevoice-s1-{} (p2, c1,", app.device)),
            "one clean-session connect: {}",
            broker.log()
        );
        let audit = app.audit();
        assert!(
            audit.iter().any(|r| r["outcome"]
                .as_str()
                .unwrap_or_default()
                .starts_with("refused: too large to read: the broker delivered a 5242")),
            "{audit:?}"
        );
    } else {
        // Give the broker time to (not) deliver it.
        std::thread::sleep(Duration::from_secs(1));
    }
    app.publish(&broker, "status", &cmd);
    assert_eq!(results.wait("after-huge", 1)["ok"], true);
    // No reconnect loop: the connection stays.
    let connects = detail(&app)["connects"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(detail(&app)["connects"].as_u64().unwrap(), connects);
    assert!(connects <= 2, "MQTT {version}: {connects} connects");

    // Nothing is re-delivered after a restart, and commands are answered.
    let app = app.restart(&broker);
    let cmd = sign(
        &ops,
        "ops",
        &app.device,
        "status",
        &["--request-id", "after-restart"],
    );
    app.publish(&broker, "status", &cmd);
    assert_eq!(results.wait("after-restart", 1)["ok"], true);
    assert_eq!(detail(&app)["commands_oversized"], 0);
    assert_eq!(detail(&app)["connects"], 1);
    eprintln!("oversized (MQTT {version}): {:?}", t0.elapsed());
    broker.stop();
}

/// Issue 13 part 4: 1,000 replays of captured signed commands (one that ran, one already
/// expired), sent over about 3 s on one connection, while genuine commands are published every
/// 300 ms: every genuine one is answered within a second, the replays share the unverified
/// budget (only the burst is audited, the rest counted), and the captured command's result is
/// the only one on its cmd-result topic.
#[test]
fn slow_a_flood_of_replayed_signed_commands_is_rate_limited_and_genuine_ones_answered_within_a_second(
) {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), None);
    broker.start();
    let results = Results::subscribe(&broker, dir.path());
    let (ops, ops_line) = keygen(dir.path(), "ops");
    let app = Appliance::start(TestSite::new(&config(broker.port, &ops_line, "")), &broker);
    let captured = sign(
        &ops,
        "ops",
        &app.device,
        "status",
        &["--request-id", "captured-1"],
    );
    app.publish(&broker, "status", &captured);
    assert_eq!(results.wait("captured-1", 1)["ok"], true);
    let issued = (edgevoice::control::remote::now_secs() - 1000).to_string();
    let expired = sign(
        &ops,
        "ops",
        &app.device,
        "status",
        &[
            "--request-id",
            "expired-1",
            "--issued-at",
            &issued,
            "--ttl",
            "60",
        ],
    );
    const GENUINE: usize = 8;
    let genuine: Vec<String> = (0..GENUINE)
        .map(|i| {
            let id = format!("genuine-{i}");
            sign(&ops, "ops", &app.device, "status", &["--request-id", &id])
        })
        .collect();

    const FLOOD: usize = 1000;
    let mut flood = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-l",
        ])
        .args(["-t", &format!("edgevoice/s1/{}/cmd/status", app.device)])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    let mut stdin = flood.stdin.take().unwrap();
    let (captured_line, expired_line) = (captured.clone(), expired.clone());
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        // 20 batches of 50, 150 ms apart: about 3 s.
        for batch in 0..FLOOD / 50 {
            let mut lines = String::new();
            for i in 0..50 {
                let line = if (batch + i) % 2 == 0 {
                    &captured_line
                } else {
                    &expired_line
                };
                lines.push_str(line);
                lines.push('\n');
            }
            stdin.write_all(lines.as_bytes()).unwrap();
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(150));
        }
    });
    let flood_start = Instant::now();
    let mut latencies = Vec::new();
    for (i, cmd) in genuine.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(300));
        let id = format!("genuine-{i}");
        let sent = Instant::now();
        app.publish(&broker, "status", cmd);
        let suffix = format!("/cmd-result/{id}");
        let answered = peers::poll_until(Duration::from_secs(60), || {
            results
                .all()
                .into_iter()
                .find(|(t, _)| t.ends_with(&suffix))
                .map(|(_, v)| v)
        })
        .unwrap_or_else(|| panic!("{id} never answered: {}", app.daemon.log()));
        latencies.push(sent.elapsed());
        assert_eq!(answered["ok"], true, "{answered}");
    }
    let during = flood_start.elapsed();
    writer.join().unwrap();
    assert!(flood.wait().unwrap().success());
    eprintln!(
        "replay flood: {FLOOD} replays over {:?}; genuine answered in {latencies:?} (all sent within {during:?})",
        flood_start.elapsed()
    );
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(1)),
        "genuine commands answered in {latencies:?}"
    );

    // Every replay refused: at most the burst (20, plus what refilled meanwhile at 10/min)
    // audited, the rest dropped and counted.
    let replays_audited = || {
        app.audit()
            .iter()
            .filter(|r| {
                (r["request_id"] == "captured-1" || r["request_id"] == "expired-1")
                    && r["outcome"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with("refused")
            })
            .count()
    };
    let counted = peers::poll_until(Duration::from_secs(30), || {
        let dropped = app.status()["uplink_detail"]["commands_rate_limited"]
            .as_u64()
            .unwrap_or(0) as usize;
        let audited = replays_audited();
        (dropped + audited == FLOOD).then_some((dropped, audited))
    })
    .unwrap_or_else(|| {
        panic!(
            "not all replays accounted for: {} dropped, {} audited",
            app.status()["uplink_detail"],
            replays_audited()
        )
    });
    assert!(counted.1 <= 25, "audited {counted:?}");
    // The captured command's result is still the only one on its topic.
    let on_captured: Vec<_> = results
        .all()
        .into_iter()
        .filter(|(t, _)| t.ends_with("/cmd-result/captured-1"))
        .collect();
    assert_eq!(on_captured.len(), 1, "{on_captured:?}");
    assert_eq!(on_captured[0].1["ok"], true);
    eprintln!("replay flood test: {:?}", t0.elapsed());
    broker.stop();
}
