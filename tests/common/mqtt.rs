//! A mosquitto (Debian 2.0) on 127.0.0.1 for the uplink tests, with its own config and
//! persistence dir (see ../shared/FACTS.md: autosave on every change, unlimited queue, SIGTERM
//! to stop so it saves). Needs `mod peers` (common/peers.rs) beside it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::peers::{self, PeerProcess};

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A mosquitto with persistence in its own dir; plain listener on `port`, optionally a TLS
/// listener with client certificates.
pub struct Broker {
    pub dir: PathBuf,
    pub port: u16,
    tls: Option<(u16, PathBuf)>,
    proc: Option<PeerProcess>,
    starts: u32,
    /// Appended to the generated mosquitto.conf on the next `start` (e.g. an `acl_file` line).
    pub extra_conf: String,
}

impl Broker {
    pub fn new(dir: &Path, tls: Option<(u16, PathBuf)>) -> Broker {
        let dir = dir.join("mosquitto");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        Broker {
            port: peers::free_port(),
            dir,
            tls,
            proc: None,
            starts: 0,
            extra_conf: String::new(),
        }
    }

    pub fn start(&mut self) {
        let mut conf = format!(
            "per_listener_settings false\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_on_changes true\nautosave_interval 1\nmax_queued_messages 0\nlog_dest stderr\nlog_type all\nlistener {} 127.0.0.1\n",
            self.dir.join("data").display(),
            self.port
        );
        if is_root() {
            conf.push_str("user root\n");
        }
        if let Some((port, pki)) = &self.tls {
            conf.push_str(&format!(
                "listener {port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate true\n",
                pki.display()
            ));
        }
        conf.push_str(&self.extra_conf);
        let conf_path = self.dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        self.starts += 1;
        let log = self.dir.join(format!("mosquitto-{}.log", self.starts));
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(&conf_path);
        self.proc = Some(PeerProcess::spawn("mosquitto", &mut cmd, &log));
        let port = self.port;
        peers::poll_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "mosquitto did not listen: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    }

    /// SIGTERM: mosquitto saves its store and exits.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(Signal::SIGTERM, Duration::from_secs(5));
        }
    }

    /// `mosquitto_sub -V mqttv5` on `topic` with the output format `format` (see
    /// mosquitto_sub(1): %P user properties, %C content type, %D correlation data, %p payload),
    /// line-buffered into `out`; returns once the broker has acknowledged the subscription.
    pub fn subscribe_v5(&self, id: &str, topic: &str, format: &str, out: &Path) -> PeerProcess {
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub", "-V", "mqttv5"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-i", id, "-q", "1", "-F", format, "-t", topic]);
        let proc = PeerProcess::spawn("mosquitto_sub", &mut cmd, out);
        let mark = format!("Sending SUBACK to {id}");
        peers::poll_until(Duration::from_secs(10), || {
            self.log().contains(&mark).then_some(())
        })
        .unwrap_or_else(|| panic!("{id} never subscribed: {}", self.log()));
        proc
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.log()).unwrap_or_default()
    }
}

/// Queues `payloads` on `stream` in the outbox of the (stopped) daemon whose state dir is
/// `state`, for uplink site `site`, through the library, exactly as the daemon appends; returns
/// the device id (the daemon's identity, from the store).
pub fn queue_in_outbox(
    state: &Path,
    site: &str,
    stream: edgevoice::uplink::Stream,
    payloads: impl IntoIterator<Item = Vec<u8>>,
) -> String {
    use edgevoice::uplink::{DurableOutbox, Identity, OutboxConfig};
    let payloads: Vec<Vec<u8>> = payloads.into_iter().collect();
    let store = edgevoice::store::Store::open(state).expect("open the daemon's store");
    let device = store.instance().device_id.clone();
    let identity = Identity::new(site, &device).expect("identity");
    let defaults = OutboxConfig::default();
    let config = OutboxConfig {
        max_messages: defaults.max_messages.max(payloads.len() + 1),
        ..defaults
    };
    let now = std::time::Instant::now();
    let mut outbox = DurableOutbox::open(&store, config, identity, now, edgevoice::store::now_ms())
        .expect("outbox");
    for payload in &payloads {
        outbox.append(&store, stream, payload, now).expect("append");
    }
    device
}
