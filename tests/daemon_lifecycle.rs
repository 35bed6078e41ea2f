//! The daemon as systemd and an operator see it: READY only when serving, status over the
//! control socket, watchdog pings, SIGHUP reload (good and bad files), graceful SIGTERM, and the
//! one-line refusals to start.

mod common;

use std::time::Duration;

use common::{text, NotifySocket, TestDaemon, TestSite};
use nix::sys::signal::Signal;

#[test]
fn ready_status_watchdog_and_graceful_stop_under_a_systemd_like_supervisor() {
    let site = TestSite::new("");
    let notify = NotifySocket::bind(site.dir.path());
    let notify_path = notify.path.to_string_lossy().into_owned();
    let daemon = TestDaemon::spawn(
        &site,
        &[("NOTIFY_SOCKET", &notify_path), ("WATCHDOG_USEC", "600000")],
    );
    let seen = notify.wait_for("READY=1", Duration::from_secs(20));
    let ready = seen.last().unwrap();
    assert!(ready.contains("STATUS=ready: 0 calls, uplink"), "{ready}");
    // READY means serving: the control socket answers right away.
    let out = site.cli(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = text(&out.stdout);
    assert!(
        status.contains(&format!("(pid {})", daemon.pid())),
        "{status}"
    );
    assert!(status.contains("ready: 0 calls"), "{status}");
    assert!(
        status.contains(&site.config.display().to_string()),
        "{status}"
    );

    // Watchdog at half of WATCHDOG_USEC (0.6 s): several pings within 1.5 s.
    let mut pings = 0;
    let started = std::time::Instant::now();
    while pings < 3 {
        notify.wait_for("WATCHDOG=1", Duration::from_secs(2));
        pings += 1;
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "pings too slow: {:?}",
        started.elapsed()
    );

    let json = site.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status --json is JSON");
    assert_eq!(v["phase"], "ready");
    assert_eq!(v["active_calls"], 0);

    daemon.signal(Signal::SIGTERM);
    notify.wait_for("STOPPING=1", Duration::from_secs(5));
    let (code, stderr) = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!site.socket().exists(), "control socket removed on exit");
    let out = site.cli(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not running"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn sighup_applies_a_good_config_and_keeps_the_running_one_on_a_bad_file() {
    let site = TestSite::new("[sip]\nmax_calls = 4\n");
    let notify = NotifySocket::bind(site.dir.path());
    let notify_path = notify.path.to_string_lossy().into_owned();
    let mut daemon = TestDaemon::spawn(&site, &[("NOTIFY_SOCKET", &notify_path)]);
    daemon.wait_ready(&site);
    notify.wait_for("READY=1", Duration::from_secs(5));

    // A good change is applied live.
    site.write_config("[sip]\nmax_calls = 7\n");
    daemon.signal(Signal::SIGHUP);
    let seen = notify.wait_for("READY=1", Duration::from_secs(5));
    assert!(seen.iter().any(|m| m.contains("RELOADING=1")), "{seen:?}");
    let v: serde_json::Value =
        serde_json::from_slice(&site.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v["max_calls"], 7);

    // A bad file is refused; the running config stays and the daemon keeps serving.
    site.write_config("[sip]\nmax_calls = 0\n");
    daemon.signal(Signal::SIGHUP);
    notify.wait_for("READY=1", Duration::from_secs(5));
    let v: serde_json::Value =
        serde_json::from_slice(&site.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        v["max_calls"], 7,
        "bad config must not replace the running one"
    );

    // Through the control socket: the refusal comes back to the operator, with the key.
    let out = site.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("sip.max_calls") && err.contains("running config kept"),
        "{err}"
    );

    // A restart-only key is reported, not silently ignored.
    site.write_config("[sip]\nmax_calls = 7\nlisten = \"127.0.0.1:5999\"\n");
    let out = site.cli(&["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("needs a restart to take effect: sip.listen"),
        "{}",
        text(&out.stdout)
    );

    // Both state-changing commands were audited, the refusal with its reason.
    let audit = text(&site.cli(&["audit"]).stdout);
    assert!(audit.contains("config.reload"), "{audit}");
    assert!(audit.contains("failed: config refused"), "{audit}");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("config.reload") && l.trim_end().ends_with(" ok")),
        "{audit}"
    );

    daemon.signal(Signal::SIGTERM);
    let (code, stderr) = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(
        stderr.contains("reload refused, running config kept"),
        "{stderr}"
    );
    assert!(stderr.contains("sip.listen changed from"), "{stderr}");
}

#[test]
fn a_second_instance_on_the_same_store_is_refused_in_one_line() {
    let site = TestSite::new("");
    let mut first = TestDaemon::spawn(&site, &[]);
    first.wait_ready(&site);
    let second = TestDaemon::spawn(&site, &[]);
    let (code, stderr) = second.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("edgevoiced:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&format!(
            "another edgevoiced (pid {}) holds the store",
            first.pid()
        )),
        "{stderr}"
    );
    // The first one is unharmed.
    assert!(site.cli(&["status"]).status.success());
}

#[test]
fn invalid_config_refuses_to_start_with_exit_code_2() {
    let site = TestSite::new("[sip]\nmax_calls = 3\nlisten_port = 5060\n");
    let daemon = TestDaemon::spawn(&site, &[]);
    let (code, stderr) = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(":8:1: sip.listen_port: unknown key"),
        "{stderr}"
    );
}

#[test]
fn unwritable_state_dir_refuses_to_start_in_one_line() {
    let site = TestSite::new("");
    // A regular file where the state dir should be: not writable even for root.
    std::fs::write(site.dir.path().join("blocker"), b"x").unwrap();
    let cfg = std::fs::read_to_string(&site.config)
        .unwrap()
        .replace("state_dir = \"state\"", "state_dir = \"blocker/state\"");
    std::fs::write(&site.config, cfg).unwrap();
    let daemon = TestDaemon::spawn(&site, &[]);
    let (code, stderr) = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("edgevoiced:"))
        .expect(&stderr);
    assert!(
        line.contains("blocker/state") && line.contains("not writable"),
        "{line}"
    );
}

#[test]
fn killed_daemon_restarts_over_its_stale_socket_and_keeps_its_identity() {
    let site = TestSite::new("");
    let mut daemon = TestDaemon::spawn(&site, &[]);
    daemon.wait_ready(&site);
    let before: serde_json::Value =
        serde_json::from_slice(&site.cli(&["status", "--json"]).stdout).unwrap();
    daemon.signal(Signal::SIGKILL);
    let _ = daemon.wait_exit(Duration::from_secs(5));
    assert!(site.socket().exists(), "kill -9 leaves the socket behind");
    let mut again = TestDaemon::spawn(&site, &[]);
    again.wait_ready(&site);
    let after: serde_json::Value =
        serde_json::from_slice(&site.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(before["device_id"], after["device_id"]);
    assert_ne!(before["pid"], after["pid"]);
}

#[test]
fn store_info_works_through_the_daemon_and_offline() {
    let site = TestSite::new("");
    let mut daemon = TestDaemon::spawn(&site, &[]);
    daemon.wait_ready(&site);
    let online = text(&site.cli(&["store", "info"]).stdout);
    assert!(
        online.contains("calls") && !online.contains("daemon stopped"),
        "{online}"
    );
    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(10));
    let out = site.cli(&["store", "info"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let offline = text(&out.stdout);
    assert!(
        offline.contains("daemon stopped: read directly"),
        "{offline}"
    );
    assert!(offline.contains("audit"), "{offline}");
}

#[test]
fn an_applied_config_whose_restart_fails_is_rolled_back_to_the_last_good_one() {
    let site = TestSite::new("");
    let good = std::fs::read_to_string(&site.config).unwrap();
    let mut daemon = TestDaemon::spawn(&site, &[]);
    daemon.wait_ready(&site);

    // A port another process holds (UDP and TCP): SIP cannot listen there at the next start.
    let (_udp, _tcp, port) = loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            break (udp, tcp, port);
        }
    };
    let new = good.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    assert_ne!(
        new, good,
        "the test config has no sip.listen line to change"
    );
    let new_file = site.dir.path().join("new.toml");
    std::fs::write(&new_file, &new).unwrap();
    let applied = site.cli(&["config", "apply", new_file.to_str().unwrap()]);
    let said = text(&applied.stdout);
    assert!(applied.status.success(), "{said}{}", text(&applied.stderr));
    assert!(
        said.contains("needs a restart to take effect: sip.listen"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&site.config).unwrap(), new);

    // The restart fails on the port; the file goes back to the last good one, exit 1 (so
    // systemd's Restart=on-failure starts it again), and that start works.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, _) = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0));
    let failed = TestDaemon::spawn(&site, &[]);
    let (code, stderr) = failed.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.contains("config.apply")
            && l.contains("did not start")
            && l.contains("restored")),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&site.config).unwrap(), good);
    let mut again = TestDaemon::spawn(&site, &[]);
    again.wait_ready(&site);
    assert!(site.cli(&["status"]).status.success());
}
