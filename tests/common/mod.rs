//! Helpers shared by the end-to-end tests: paths, a daemon started on a temp config, the CLI.
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("daemon/ has a parent")
        .to_owned()
}

/// ../shared beside the checkout: the models and test data.
pub fn shared_dir() -> PathBuf {
    let dir = repo_root().join("../shared");
    assert!(
        dir.join("models").is_dir(),
        "{} not found: the tests need ../shared (models, testdata) beside the checkout",
        dir.display()
    );
    dir
}

pub fn daemon_bin() -> &'static str {
    env!("CARGO_BIN_EXE_edgevoiced")
}

pub fn cli_bin() -> &'static str {
    env!("CARGO_BIN_EXE_edgevoice")
}

pub fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(cli_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("EDGEVOICE_CONFIG")
        .output()
        .expect("run edgevoice")
}

pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A config file in a temp dir with state and runtime dirs beside it.
pub struct TestSite {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl TestSite {
    pub fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("edgevoice.toml");
        let site = Self { dir, config };
        site.write_config(extra);
        site
    }

    /// Rewrites the config: state/runtime under the temp dir, SIP on loopback, plus `extra`
    /// (which may add keys to [daemon] and later sections).
    /// Calls are answered in media test mode unless `extra` sets call.handler.
    /// SIP listens on an ephemeral loopback port unless `extra` sets sip.listen, so tests
    /// run in parallel (`edgevoice status --json` tells the port); RTP uses 40000–44999
    /// unless `extra` has an [rtp] section.
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "[daemon]\nstate_dir = \"state\"\nruntime_dir = \"run\"\nlog_level = \"debug\"\ndrain_timeout_secs = 2\n{extra}\n"
        );
        let text = match text.parse::<toml_edit::DocumentMut>() {
            Ok(mut doc) => {
                if doc.get("sip").and_then(|s| s.get("listen")).is_none() {
                    doc["sip"]["listen"] = toml_edit::value("127.0.0.1:0");
                }
                // Media test mode unless the test asks for the voice agent (which loads models).
                let call_table = doc.get("call").is_some();
                if call_table && doc["call"].get("handler").is_none() {
                    doc["call"]["handler"] = toml_edit::value("media_test");
                }
                // RTP away from the 10000–32000 range the peer harness hands out to baresip,
                // sipp and kamailio; the daemon skips ports another test holds.
                let mut text = doc.to_string();
                if doc.get("rtp").is_none() {
                    // Appended as text: the lines above keep their numbers for error tests.
                    text.push_str("\n[rtp]\nport_min = 40000\nport_max = 44999\n");
                }
                if !call_table {
                    text.push_str("\n[call]\nhandler = \"media_test\"\n");
                }
                text
            }
            // Deliberately invalid TOML: leave it as written.
            Err(_) => text,
        };
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/control.sock")
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.config, args)
    }
}

/// A running edgevoiced, killed on drop if the test did not stop it. Its stderr goes to a
/// file (a pipe nobody drains would fill up and block the daemon's logging).
pub struct TestDaemon {
    pub child: Child,
    pub log_path: PathBuf,
}

impl TestDaemon {
    pub fn spawn(site: &TestSite, env: &[(&str, &str)]) -> Self {
        Self::spawn_wrapped(site, env, &[])
    }

    /// [`Self::spawn`] through `wrapper` (a command that execs its arguments, e.g.
    /// `nsenter -t PID -m`), so the daemon's pid is still the child's.
    pub fn spawn_wrapped(site: &TestSite, env: &[(&str, &str)], wrapper: &[&str]) -> Self {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(daemon_bin());
                cmd
            }
            None => Command::new(daemon_bin()),
        };
        cmd.arg("--config")
            .arg(&site.config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log_path = site.dir.path().join(format!("edgevoiced-{}.log", unique()));
        let log = std::fs::File::create(&log_path).expect("daemon log file");
        cmd.stderr(Stdio::from(log));
        Self {
            child: cmd.spawn().expect("spawn edgevoiced"),
            log_path,
        }
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until `edgevoice status` answers; panics with the daemon's output if it exits.
    pub fn wait_ready(&mut self, site: &TestSite) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let out = self.collect_output();
                panic!("edgevoiced exited early ({status}): {out}");
            }
            if site.cli(&["status"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("edgevoiced did not answer status within 20 s");
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal daemon");
    }

    /// Waits for exit; returns (exit code, stderr).
    pub fn wait_exit(mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let out = self.collect_output();
                return (status.code(), out);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let out = self.collect_output();
                panic!("edgevoiced did not exit within {timeout:?}: {out}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn collect_output(&mut self) -> String {
        self.log()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in for systemd's notify socket: collects what the daemon sends.
pub struct NotifySocket {
    pub path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Self { path, socket }
    }

    /// Waits until a message containing `needle` arrives; returns every message seen so far.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.contains(needle);
                seen.push(msg);
                if hit {
                    return seen;
                }
            }
        }
        panic!("no notify message with {needle:?} within {timeout:?}; got {seen:?}");
    }
}
