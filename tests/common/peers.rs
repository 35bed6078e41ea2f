//! Real SIP peers for end-to-end tests: baresip (a softphone driven over ctrl_tcp), Kamailio
//! (registrar/proxy with digest auth), sipp (load and fake far ends) and a packet capture
//! (dumpcap/tshark) on the loopback interface.
//!
//! Use from a test file with `#[path = "common/peers.rs"] mod peers;` (it needs
//! `#[path = "common/audio.rs"] mod audio;` beside it: peers uses `crate::audio`).
//!
//! Every peer binds to 127.0.0.1 only, lives in its own temp dir (config, logs, recordings)
//! and its own process group, and is killed when dropped. All calls are blocking; waits take a
//! timeout and panic with what was seen (events, log tails) when it runs out.
//!
//! Debian packages: baresip (1.0.0), kamailio (5.6), sip-tester (sipp 3.6), tshark (dumpcap,
//! tshark), sox, espeak-ng. Scenario files and config templates live in `tests/peers/`.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::ops::RangeInclusive;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::audio::{self, Wav};

/// The only address any peer binds to or talks to.
pub const LOOPBACK: &str = "127.0.0.1";

/// `tests/peers/` in the checkout (sipp scenarios, Kamailio config template).
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers")
}

/// `../shared/testdata/audio/<name>` beside the checkout (harvard_8k.wav, jfk.wav).
pub fn testdata_audio(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/audio")
        .join(name);
    assert!(
        p.is_file(),
        "{} not found: tests need ../shared/testdata beside the checkout",
        p.display()
    );
    p
}

// ---------------------------------------------------------------------------------------------
// Ports

fn taken_ports() -> &'static Mutex<HashSet<u16>> {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    TAKEN.get_or_init(|| Mutex::new(HashSet::new()))
}

fn port_is_free(p: u16) -> bool {
    UdpSocket::bind((LOOPBACK, p)).is_ok() && TcpListener::bind((LOOPBACK, p)).is_ok()
}

/// The first port of `n` consecutive ports that are free on 127.0.0.1 for both UDP and TCP and
/// not handed out before in this process. Ports come from 10000–32000 (below Linux's
/// ephemeral range, so kernel-chosen ports do not collide later); the starting point depends
/// on the pid and the clock so parallel test processes spread out.
pub fn free_port_block(n: u16) -> u16 {
    assert!(n > 0 && n <= 200);
    const LO: u32 = 10_000;
    const HI: u32 = 32_000;
    let span = (HI - LO) / 200; // blocks of 200 ports
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    let mut taken = taken_ports().lock().unwrap();
    for attempt in 0..(span as u64 * 200 / n as u64 + 1) {
        let block = ((seed + attempt * 7) % span as u64) as u32;
        // Walk the sub-blocks of this 200-port block from a seeded start: test processes run in
        // parallel (nextest: one per test) and do not share `taken`, so two that land in the
        // same block must not both begin at its first port (a test whose broker is stopped
        // on purpose would find its port taken by another test's broker).
        let subs = 200 / n as u32;
        let first = ((seed >> 16) % subs as u64) as u32;
        for i in 0..subs {
            let sub = (first + i) % subs;
            let base = LO + block * 200 + sub * n as u32;
            let ports: Vec<u16> = (base..base + n as u32).map(|p| p as u16).collect();
            if ports.iter().any(|p| taken.contains(p)) {
                continue;
            }
            if ports.iter().all(|&p| port_is_free(p)) {
                taken.extend(ports.iter().copied());
                return base as u16;
            }
        }
    }
    panic!("no block of {n} free ports on 127.0.0.1");
}

/// One free port (UDP and TCP) on 127.0.0.1.
pub fn free_port() -> u16 {
    free_port_block(1)
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process in its own process group with stdout+stderr in a log file; the whole group
/// gets SIGTERM (then SIGKILL after a grace period) on drop.
pub struct PeerProcess {
    pub name: String,
    child: Child,
    pub log_path: PathBuf,
    stopped: bool,
}

impl PeerProcess {
    pub fn spawn(name: &str, cmd: &mut Command, log_path: &Path) -> PeerProcess {
        let log = fs::File::create(log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("clone log fd");
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e} (is it installed?)"));
        PeerProcess {
            name: name.to_string(),
            child,
            log_path: log_path.to_owned(),
            stopped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(exit status)` if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail_lines(&self.log(), n)
    }

    /// Sends `sig` to the process group.
    pub fn signal(&self, sig: Signal) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Sends `sig` to the group, waits up to `grace` for the leader to exit, then SIGKILLs the
    /// group. Idempotent.
    pub fn stop_with(&mut self, sig: Signal, grace: Duration) -> Option<std::process::ExitStatus> {
        if self.stopped {
            return self.child.try_wait().ok().flatten();
        }
        self.stopped = true;
        if let Some(st) = self.exited() {
            // leader gone; make sure no stray group members remain
            self.signal(Signal::SIGKILL);
            return Some(st);
        }
        self.signal(sig);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(st) = self.exited() {
                self.signal(Signal::SIGKILL);
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(Signal::SIGKILL);
        self.child.wait().ok()
    }

    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.stop_with(Signal::SIGTERM, Duration::from_secs(3))
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn short_tempdir(prefix: &str) -> tempfile::TempDir {
    // baresip's sndfile builds "<snd_path>/dump-<time>-enc.wav" in a 128-byte buffer: keep
    // paths short (/tmp/ev-xxxxxx).
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("tempdir in /tmp")
}

// ---------------------------------------------------------------------------------------------
// baresip

/// Audio codecs baresip offers (Debian 1.0.0 modules g711.so and g722.so).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Pcmu,
    Pcma,
    G722,
}

impl Codec {
    /// The name baresip's `audio_codecs=` account parameter needs. G.722 must be given as
    /// `G722/16000/1`: a bare `G722` means G722/8000/1, which is "not found" and silently
    /// falls back to all codecs.
    pub fn baresip_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU/8000/1",
            Codec::Pcma => "PCMA/8000/1",
            Codec::G722 => "G722/16000/1",
        }
    }
    /// Audio sample rate inside baresip (and of its sndfile dumps) for this codec.
    pub fn audio_rate(self) -> u32 {
        match self {
            Codec::G722 => 16000,
            _ => 8000,
        }
    }
    /// Static RTP payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
        }
    }
}

/// REGISTER settings for a baresip account.
#[derive(Clone, Debug)]
pub struct Registration {
    /// `127.0.0.1:PORT` of the registrar; REGISTERs and all requests go there as outbound proxy.
    pub registrar: String,
    pub password: String,
    /// Digest user name if it differs from the account user.
    pub auth_user: Option<String>,
    /// Registration interval (Expires) in seconds.
    pub regint_secs: u32,
}

/// How to start a [`Baresip`].
#[derive(Clone, Debug)]
pub struct BaresipOptions {
    /// Label used in panic messages.
    pub name: String,
    /// Account user: the AOR is `sip:<user>@<domain>`.
    pub user: String,
    /// AOR domain (default 127.0.0.1).
    pub domain: String,
    /// None: no registration (`regint=0`), reachable directly at [`Baresip::uri`].
    pub registration: Option<Registration>,
    /// `answermode=auto` (answers incoming calls at once, after a 180).
    pub auto_answer: bool,
    /// Offered codecs in order of preference (empty: PCMU, PCMA, G722).
    pub codecs: Vec<Codec>,
    /// Microphone: this file (any format sox reads) is converted to mono s16 at `mic_rate` and
    /// played from the start of each call. baresip hangs the call up ~0–1 s after the file
    /// ends, so `mic_silence_after` of silence is appended. None: silence only.
    pub mic_wav: Option<PathBuf>,
    /// Sample rate the microphone WAV is converted to (`ausrc_srate`; 8000 or 16000). baresip
    /// resamples it to the codec rate (8k→16k for G.722).
    pub mic_rate: u32,
    /// Silence appended after `mic_wav` (or the whole microphone when there is no WAV).
    pub mic_silence_after: Duration,
    /// Load `sndfile`: every call leaves dump-<time>-enc.wav (sent) and -dec.wav (received).
    pub record: bool,
    /// Accept REFER (`call_transfer=yes`); with `false` baresip answers REFER with 501.
    pub call_transfer: bool,
    /// baresip `-s`: SIP messages in the log.
    pub sip_trace: bool,
    /// More config lines.
    pub extra_config: Vec<String>,
    /// More account parameters, e.g. `;ptime=30` (keep the whole account line < 240 chars).
    pub extra_account_params: String,
    /// SIP port (UDP+TCP; TLS takes the next one). None: a free one.
    pub sip_port: Option<u16>,
}

impl BaresipOptions {
    pub fn new(user: &str) -> BaresipOptions {
        BaresipOptions {
            name: user.to_string(),
            user: user.to_string(),
            domain: LOOPBACK.to_string(),
            registration: None,
            auto_answer: false,
            codecs: Vec::new(),
            mic_wav: None,
            mic_rate: 8000,
            mic_silence_after: Duration::from_secs(60),
            record: true,
            call_transfer: true,
            sip_trace: false,
            extra_config: Vec::new(),
            extra_account_params: String::new(),
            sip_port: None,
        }
    }
    pub fn auto_answer(mut self, on: bool) -> Self {
        self.auto_answer = on;
        self
    }
    pub fn codecs(mut self, codecs: &[Codec]) -> Self {
        self.codecs = codecs.to_vec();
        self
    }
    /// Microphone WAV followed by `silence_after` of silence.
    pub fn mic(mut self, wav: impl AsRef<Path>, silence_after: Duration) -> Self {
        self.mic_wav = Some(wav.as_ref().to_owned());
        self.mic_silence_after = silence_after;
        self
    }
    pub fn mic_rate(mut self, rate: u32) -> Self {
        self.mic_rate = rate;
        self
    }
    /// Register at `registrar` (`127.0.0.1:PORT`) with digest `password`.
    pub fn register(mut self, registrar: &str, password: &str) -> Self {
        self.registration = Some(Registration {
            registrar: registrar.to_string(),
            password: password.to_string(),
            auth_user: None,
            regint_secs: 600,
        });
        self
    }
    pub fn record(mut self, on: bool) -> Self {
        self.record = on;
        self
    }
    pub fn call_transfer(mut self, on: bool) -> Self {
        self.call_transfer = on;
        self
    }
    pub fn sip_trace(mut self, on: bool) -> Self {
        self.sip_trace = on;
        self
    }
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
    pub fn sip_port(mut self, port: u16) -> Self {
        self.sip_port = Some(port);
        self
    }
}

/// One ctrl_tcp event from baresip, e.g. `CALL_ESTABLISHED`.
///
/// Event types seen from Debian's baresip 1.0.0: REGISTERING, REGISTER_OK (param "200 OK"),
/// REGISTER_FAIL (param e.g. "401 Unauthorized"), UNREGISTERING, CALL_INCOMING, CALL_RINGING,
/// CALL_PROGRESS, CALL_ESTABLISHED, CALL_CLOSED (param = reason: "Connection reset by peer"
/// when the peer sent BYE, "end of file" when our microphone WAV ended, "404 Not Found"...),
/// CALL_RTPESTAB, CALL_RTCP, CALL_DTMF_START (param = digit), CALL_DTMF_END (no param),
/// TRANSFER (REFER received; param = target), TRANSFER_FAILED, AUDIO_ERROR
/// ("0,end of file"), CALL_LOCAL_SDP / CALL_REMOTE_SDP (param offer/answer), SHUTDOWN, EXIT.
#[derive(Clone, Debug)]
pub struct Event {
    /// The event type ("type" in the JSON), e.g. "CALL_CLOSED".
    pub kind: String,
    pub class: String,
    pub param: Option<String>,
    /// "incoming" / "outgoing" for call events.
    pub direction: Option<String>,
    pub peer_uri: Option<String>,
    /// SIP Call-ID for call events.
    pub call_id: Option<String>,
    pub account: Option<String>,
    /// Time since the baresip was started.
    pub elapsed: Duration,
    /// Wall clock (Unix seconds) when the harness read it, to compare with packet captures.
    pub unix_time: f64,
    pub raw: serde_json::Value,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>7.3}s {}", self.elapsed.as_secs_f64(), self.kind)?;
        if let Some(p) = &self.param {
            write!(f, " [{p}]")?;
        }
        if let Some(d) = &self.direction {
            write!(f, " {d}")?;
        }
        if let Some(p) = &self.peer_uri {
            write!(f, " peer={p}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct CtrlState {
    events: Vec<(Event, bool)>, // (event, consumed by a wait)
    responses: HashMap<String, (bool, String)>,
    closed: bool,
}

struct CtrlShared {
    state: Mutex<CtrlState>,
    cond: Condvar,
}

/// A baresip sndfile recording pair of one call.
#[derive(Clone, Debug)]
pub struct Recording {
    /// What baresip sent (its microphone after resampling to the codec rate), before encoding.
    pub enc: PathBuf,
    /// What baresip received, after decoding and its jitter buffer.
    pub dec: PathBuf,
}

impl Recording {
    pub fn enc_wav(&self) -> Wav {
        Wav::read(&self.enc)
    }
    pub fn dec_wav(&self) -> Wav {
        Wav::read(&self.dec)
    }
}

/// A headless baresip softphone, controlled through ctrl_tcp (netstring-framed JSON).
pub struct Baresip {
    pub opts: BaresipOptions,
    dir: tempfile::TempDir,
    proc: PeerProcess,
    sip_port: u16,
    ctrl_port: u16,
    rtp_ports: (u16, u16),
    mic_path: PathBuf,
    ctrl: Mutex<TcpStream>,
    shared: Arc<CtrlShared>,
    reader: Option<JoinHandle<()>>,
    started: Instant,
    token: AtomicU64,
}

// Port layout of one baresip block: SIP UDP/TCP on +0, TLS on +1 (baresip binds it even
// without a certificate), ctrl_tcp on +2, RTP/RTCP in +4..+23.
const BARESIP_PORTS: u16 = 24;

impl Baresip {
    /// Starts baresip and waits until its ctrl_tcp answers and the account exists. Registration
    /// (if any) is under way on return: wait for it with [`Baresip::wait_registered`].
    pub fn start(opts: BaresipOptions) -> Baresip {
        let dir = short_tempdir("ev-bs-");
        let base = free_port_block(BARESIP_PORTS);
        let sip_port = opts.sip_port.unwrap_or(base);
        let ctrl_port = base + 2;
        let rtp_ports = (base + 4, base + BARESIP_PORTS - 1);

        // Microphone: mono s16 at mic_rate, with trailing silence.
        let mic_path = dir.path().join("mic.wav");
        let pad_ms = opts.mic_silence_after.as_millis() as u64;
        match &opts.mic_wav {
            Some(src) => {
                audio::convert_segment_with_sox(src, &mic_path, opts.mic_rate, 0, None, pad_ms)
            }
            None => audio::write_wav(
                &mic_path,
                opts.mic_rate,
                1,
                &audio::silence(opts.mic_rate, pad_ms.max(20)),
            ),
        }

        let rec_dir = dir.path().join("rec");
        fs::create_dir_all(&rec_dir).unwrap();
        let mut cfg = vec![
            "poll_method epoll".to_string(),
            format!("sip_listen {LOOPBACK}:{sip_port}"),
            "call_local_timeout 120".into(),
            "call_max_calls 4".into(),
            "audio_buffer 20-160".into(),
            format!("audio_source aufile,{}", mic_path.display()),
            // no player: received audio is decoded (and dumped by sndfile), never played
            format!("ausrc_srate {}", opts.mic_rate),
            "ausrc_format s16".into(),
            "auplay_format s16".into(),
            "auenc_format s16".into(),
            "audec_format s16".into(),
            format!("rtp_ports {}-{}", rtp_ports.0, rtp_ports.1),
            "rtp_tos 0".into(),
            "rtcp_mux no".into(),
            "jitter_buffer_delay 1-10".into(),
            "rtp_stats no".into(),
            // never ask the machine's resolver: a dead local port
            format!("dns_server {LOOPBACK}:{}", base + 3),
            format!("net_interface {LOOPBACK}"),
            "module_path /usr/lib/baresip/modules".into(),
            "module g711.so".into(),
            "module g722.so".into(),
            "module aufile.so".into(),
        ];
        if opts.record {
            cfg.push("module sndfile.so".into());
            cfg.push(format!("snd_path {}", rec_dir.display()));
        }
        cfg.extend([
            "module_tmp uuid.so".to_string(),
            "module_tmp account.so".into(),
            "module_app menu.so".into(),
            "module_app ctrl_tcp.so".into(),
            format!("ctrl_tcp_listen {LOOPBACK}:{ctrl_port}"),
            "statmode_default off".into(),
            "ringback_disabled yes".into(),
            "menu_bell no".into(),
        ]);
        cfg.extend(opts.extra_config.iter().cloned());
        fs::write(dir.path().join("config"), cfg.join("\n") + "\n").unwrap();
        // The account is created over ctrl_tcp (uanew) once we are connected, so that its
        // REGISTER events are not lost: ctrl_tcp only relays events to a connected client.
        fs::write(dir.path().join("accounts"), "").unwrap();
        fs::write(dir.path().join("contacts"), "").unwrap();

        let mut cmd = Command::new("baresip");
        cmd.arg("-f").arg(dir.path()).current_dir(dir.path());
        if opts.sip_trace {
            cmd.arg("-s");
        }
        let proc = PeerProcess::spawn(
            &format!("baresip {}", opts.name),
            &mut cmd,
            &dir.path().join("baresip.log"),
        );
        let started = Instant::now();

        // Connect to ctrl_tcp.
        let mut proc = proc;
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            if let Some(st) = proc.exited() {
                panic!(
                    "baresip {} exited at start ({st}):\n{}",
                    opts.name,
                    proc.log_tail(40)
                );
            }
            if let Ok(s) = TcpStream::connect((LOOPBACK, ctrl_port)) {
                break s;
            }
            if Instant::now() > deadline {
                panic!(
                    "baresip {}: ctrl_tcp {ctrl_port} not up after 10 s:\n{}",
                    opts.name,
                    proc.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        stream.set_nodelay(true).ok();
        let shared = Arc::new(CtrlShared {
            state: Mutex::new(CtrlState::default()),
            cond: Condvar::new(),
        });
        let reader = {
            let shared = shared.clone();
            let rs = stream.try_clone().expect("clone ctrl stream");
            std::thread::spawn(move || ctrl_reader(rs, shared, started))
        };
        let me = Baresip {
            opts,
            dir,
            proc,
            sip_port,
            ctrl_port,
            rtp_ports,
            mic_path,
            ctrl: Mutex::new(stream),
            shared,
            reader: Some(reader),
            started,
            token: AtomicU64::new(1),
        };
        // "baresip is ready." comes after all modules (and the SIP transports) are up.
        if poll_until(Duration::from_secs(10), || {
            me.proc.log().contains("baresip is ready.").then_some(())
        })
        .is_none()
        {
            panic!(
                "baresip {} never got ready:\n{}",
                me.opts.name,
                me.proc.log_tail(40)
            );
        }
        let log = me.proc.log();
        if log.contains("init failed") || log.contains("Address already in use") {
            panic!(
                "baresip {} failed to start:\n{}",
                me.opts.name,
                me.proc.log_tail(40)
            );
        }
        let line = me.account_line();
        assert!(
            line.len() < 240,
            "account line too long for ctrl_tcp (256-byte command buffer): {line}"
        );
        if let Err(e) = me.command("uanew", Some(&line)) {
            panic!(
                "baresip {}: uanew {line} failed: {e}\n{}",
                me.opts.name,
                me.diagnostics()
            );
        }
        if me.proc.log().contains("audio codec not found") {
            panic!(
                "baresip {}: an audio_codecs entry was not found:\n{}",
                me.opts.name,
                me.proc.log_tail(40)
            );
        }
        me
    }

    fn account_line(&self) -> String {
        let o = &self.opts;
        let mut l = format!("<sip:{}@{}>", o.user, o.domain);
        match &o.registration {
            Some(r) => {
                l += &format!(";auth_pass={}", r.password);
                if let Some(u) = &r.auth_user {
                    l += &format!(";auth_user={u}");
                }
                l += &format!(
                    ";outbound=\"sip:{};transport=udp\";regint={}",
                    r.registrar, r.regint_secs
                );
            }
            None => l += ";regint=0",
        }
        if o.auto_answer {
            l += ";answermode=auto";
        }
        if !o.codecs.is_empty() {
            let names: Vec<&str> = o.codecs.iter().map(|c| c.baresip_name()).collect();
            l += &format!(";audio_codecs={}", names.join(","));
        }
        if !o.call_transfer {
            l += ";call_transfer=no";
        }
        l += ";mwi=no";
        l += &o.extra_account_params;
        l
    }

    /// SIP port (UDP and TCP) on 127.0.0.1.
    pub fn sip_port(&self) -> u16 {
        self.sip_port
    }
    /// `sip:<user>@127.0.0.1:<port>`: dial this to reach it directly.
    pub fn uri(&self) -> String {
        format!("sip:{}@{LOOPBACK}:{}", self.opts.user, self.sip_port)
    }
    /// `sip:<user>@<domain>` (what a registrar knows it by).
    pub fn aor(&self) -> String {
        format!("sip:{}@{}", self.opts.user, self.opts.domain)
    }
    pub fn ctrl_port(&self) -> u16 {
        self.ctrl_port
    }
    /// The UDP ports its RTP (even) and RTCP (odd) sockets come from.
    pub fn rtp_ports(&self) -> RangeInclusive<u16> {
        self.rtp_ports.0..=self.rtp_ports.1
    }
    /// The converted microphone WAV (mono s16 at `mic_rate`, silence appended).
    pub fn mic_path(&self) -> &Path {
        &self.mic_path
    }
    /// Its temp dir (config, baresip.log, rec/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
    /// baresip's whole stdout/stderr so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }
    /// The last `n` lines of baresip's stdout/stderr.
    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }

    /// Sends one ctrl_tcp command (e.g. "dial", Some("sip:...")) and waits up to 10 s for its
    /// response: Ok(data) if baresip says ok, Err(data) otherwise.
    pub fn command(&self, command: &str, params: Option<&str>) -> Result<String, String> {
        let token = format!("t{}", self.token.fetch_add(1, Ordering::SeqCst));
        let mut msg = serde_json::json!({ "command": command, "token": token });
        if let Some(p) = params {
            msg["params"] = serde_json::Value::String(p.to_string());
        }
        let body = msg.to_string();
        let frame = format!("{}:{},", body.len(), body);
        {
            let mut s = self.ctrl.lock().unwrap();
            if let Err(e) = s.write_all(frame.as_bytes()) {
                panic!(
                    "baresip {}: ctrl_tcp write failed: {e}\n{}",
                    self.opts.name,
                    self.diagnostics()
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut st = self.shared.state.lock().unwrap();
        loop {
            if let Some((ok, data)) = st.responses.remove(&token) {
                return if ok { Ok(data) } else { Err(data) };
            }
            if st.closed {
                drop(st);
                panic!(
                    "baresip {}: ctrl_tcp closed while waiting for '{command}'\n{}",
                    self.opts.name,
                    self.diagnostics()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                panic!(
                    "baresip {}: no response to '{command}' in 10 s\n{}",
                    self.opts.name,
                    self.diagnostics()
                );
            }
            st = self.shared.cond.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    fn command_ok(&self, command: &str, params: Option<&str>) -> String {
        self.command(command, params).unwrap_or_else(|e| {
            panic!(
                "baresip {}: '{command} {}' failed: {e}\n{}",
                self.opts.name,
                params.unwrap_or(""),
                self.diagnostics()
            )
        })
    }

    /// Places a call (`dial <uri>`); follow with `wait_event("CALL_ESTABLISHED", ..)`.
    pub fn dial(&self, uri: &str) {
        self.command_ok("dial", Some(uri));
    }
    /// Hangs up the current call.
    pub fn hangup(&self) {
        self.command_ok("hangup", None);
    }
    /// Answers the current incoming call (when not auto-answering).
    pub fn accept(&self) {
        self.command_ok("accept", None);
    }
    /// Sends DTMF as RFC 4733 telephone-events, one `sndcode` per digit (start then release),
    /// `gap` apart (≥ 200 ms keeps events from overlapping; each lasts ~180 ms on the wire).
    pub fn send_dtmf(&self, digits: &str, gap: Duration) {
        for (i, d) in digits.chars().enumerate() {
            if i > 0 {
                std::thread::sleep(gap);
            }
            self.command_ok("sndcode", Some(&d.to_string()));
        }
    }
    /// Blind transfer of the current call: sends REFER with Refer-To `uri`.
    pub fn transfer(&self, uri: &str) {
        self.command_ok("transfer", Some(uri));
    }
    /// Puts the current call on hold (re-INVITE sendonly).
    pub fn hold(&self) {
        self.command_ok("hold", None);
    }
    pub fn resume(&self) {
        self.command_ok("resume", None);
    }

    /// All events so far.
    pub fn events(&self) -> Vec<Event> {
        self.shared
            .state
            .lock()
            .unwrap()
            .events
            .iter()
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// Waits for the earliest not-yet-returned event of type `kind` (so two waits for
    /// CALL_CLOSED return the first and second calls' events). Panics after `timeout` with all
    /// events seen and the tail of baresip's log.
    pub fn wait_event(&self, kind: &str, timeout: Duration) -> Event {
        self.wait_event_where(kind, timeout, |e| e.kind == kind)
    }

    /// Like [`Baresip::wait_event`] with any predicate; `what` names it in the panic message.
    pub fn wait_event_where(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        match self.try_wait_event_where(timeout, pred) {
            Some(e) => e,
            None => panic!(
                "baresip {}: no {what} event within {:?}\n{}",
                self.opts.name,
                timeout,
                self.diagnostics()
            ),
        }
    }

    /// `Some(event)` like [`Baresip::wait_event_where`], `None` on timeout.
    pub fn try_wait_event_where(
        &self,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        loop {
            if let Some((e, used)) = st.events.iter_mut().find(|(e, used)| !*used && pred(e)) {
                *used = true;
                return Some(e.clone());
            }
            let now = Instant::now();
            if now >= deadline || st.closed {
                return None;
            }
            st = self.shared.cond.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Waits for REGISTER_OK; panics (with the events, so a REGISTER_FAIL shows) otherwise.
    pub fn wait_registered(&self, timeout: Duration) -> Event {
        self.wait_event("REGISTER_OK", timeout)
    }

    /// The digits of all CALL_DTMF_START events so far (DTMF received via RFC 4733).
    pub fn received_dtmf(&self) -> String {
        self.events()
            .iter()
            .filter(|e| e.kind == "CALL_DTMF_START")
            .filter_map(|e| e.param.clone())
            .collect()
    }

    /// Waits until `n` DTMF digits were received and returns them.
    pub fn wait_dtmf(&self, n: usize, timeout: Duration) -> String {
        let ok = poll_until(timeout, || {
            (self.received_dtmf().chars().count() >= n).then_some(())
        });
        if ok.is_none() {
            panic!(
                "baresip {}: wanted {n} DTMF digits, got {:?} within {timeout:?}\n{}",
                self.opts.name,
                self.received_dtmf(),
                self.diagnostics()
            );
        }
        self.received_dtmf()
    }

    /// Recording pairs in rec/, oldest first. Each file is named by the second it was opened
    /// (two calls starting within one second overwrite each other), and the -dec.wav of a call
    /// can be opened a second after its -enc.wav, so they are paired by order, not by name.
    pub fn recordings(&self) -> Vec<Recording> {
        let rec = self.dir.path().join("rec");
        let files: Vec<PathBuf> = fs::read_dir(&rec)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        let sorted_ending = |suffix: &str| {
            let mut v: Vec<PathBuf> = files
                .iter()
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(suffix))
                })
                .cloned()
                .collect();
            v.sort();
            v
        };
        sorted_ending("-enc.wav")
            .into_iter()
            .zip(sorted_ending("-dec.wav"))
            .map(|(enc, dec)| Recording { enc, dec })
            .collect()
    }

    /// The newest recording pair once both files are closed (libsndfile writes the final
    /// sizes into the header when the call's audio is torn down, just after CALL_CLOSED).
    pub fn wait_recording(&self, timeout: Duration) -> Recording {
        let r = poll_until(timeout, || {
            let r = self.recordings().pop()?;
            (wav_finalised(&r.enc) && wav_finalised(&r.dec)).then_some(r)
        });
        r.unwrap_or_else(|| {
            panic!(
                "baresip {}: no finished recording within {timeout:?} (record={}): {:?}\n{}",
                self.opts.name,
                self.opts.record,
                self.recordings(),
                self.diagnostics()
            )
        })
    }

    /// Events and the log tail, for panic messages.
    pub fn diagnostics(&self) -> String {
        let evs: Vec<String> = self
            .events()
            .iter()
            .filter(|e| e.kind != "CALL_RTCP")
            .map(|e| format!("  {e}"))
            .collect();
        format!(
            "--- baresip {} (sip {}, ctrl {}, dir {}) events:\n{}\n--- baresip {} log tail:\n{}\n---",
            self.opts.name,
            self.sip_port,
            self.ctrl_port,
            self.dir.path().display(),
            evs.join("\n"),
            self.opts.name,
            self.proc.log_tail(40)
        )
    }

    /// Stops baresip now (SIGTERM: it sends BYE for calls and un-REGISTERs, then exits).
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Keeps the temp dir (config, log, recordings) after the test, for debugging; returns it.
    pub fn keep_dir(self) -> PathBuf {
        let mut me = self;
        me.proc.stop();
        let dir = std::mem::replace(&mut me.dir, short_tempdir("ev-bs-"));
        dir.keep()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if let Ok(s) = self.ctrl.lock() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.proc.stop();
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

/// True once a WAV file's RIFF size matches the file length (libsndfile finalised it).
fn wav_finalised(p: &Path) -> bool {
    let Ok(b) = fs::read(p) else { return false };
    if b.len() < 44 || &b[0..4] != b"RIFF" {
        return false;
    }
    let riff = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    riff + 8 == b.len()
}

fn ctrl_reader(mut s: TcpStream, shared: Arc<CtrlShared>, started: Instant) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        // netstrings: <len>:<payload>,
        while let Some(colon) = buf.iter().position(|&c| c == b':') {
            let Ok(len) = std::str::from_utf8(&buf[..colon])
                .unwrap_or("x")
                .trim()
                .parse::<usize>()
            else {
                // garbage: drop one byte and resync
                buf.remove(0);
                continue;
            };
            if buf.len() < colon + 1 + len + 1 {
                break;
            }
            let payload = buf[colon + 1..colon + 1 + len].to_vec();
            buf.drain(..colon + 1 + len + 1);
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&payload) else {
                continue;
            };
            let mut st = shared.state.lock().unwrap();
            if v.get("response").and_then(|r| r.as_bool()) == Some(true) {
                let token = v
                    .get("token")
                    .and_then(|t| t.as_str())
                    .unwrap_or("")
                    .to_string();
                let ok = v.get("ok").and_then(|t| t.as_bool()).unwrap_or(false);
                let data = v
                    .get("data")
                    .and_then(|t| t.as_str())
                    .unwrap_or("")
                    .to_string();
                st.responses.insert(token, (ok, data));
            } else if v.get("event").is_some() {
                let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(|x| x.to_string());
                let ev = Event {
                    kind: s("type").unwrap_or_default(),
                    class: s("class").unwrap_or_default(),
                    param: s("param"),
                    direction: s("direction"),
                    peer_uri: s("peeruri"),
                    call_id: s("id"),
                    account: s("accountaor"),
                    elapsed: started.elapsed(),
                    unix_time: unix_now(),
                    raw: v.clone(),
                };
                st.events.push((ev, false));
            }
            shared.cond.notify_all();
        }
    }
    shared.state.lock().unwrap().closed = true;
    shared.cond.notify_all();
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Kamailio

/// How to start a [`Kamailio`].
#[derive(Clone, Debug)]
pub struct KamailioOptions {
    /// (user, password) rows of the db_text `subscriber` table.
    pub users: Vec<(String, String)>,
    /// Digest realm (and the domain of the subscribers); default 127.0.0.1.
    pub realm: String,
    /// Challenge INVITEs from local users with 407 (proxy auth) too.
    pub invite_auth: bool,
    /// Kamailio `debug` level (2 = info; the script logs every request/reply at NOTICE).
    pub debug: i32,
}

impl KamailioOptions {
    pub fn new(users: &[(&str, &str)]) -> KamailioOptions {
        KamailioOptions {
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            realm: LOOPBACK.to_string(),
            invite_auth: false,
            debug: 2,
        }
    }
}

/// Kamailio as registrar (digest auth from db_text, usrloc in memory) and record-routing proxy
/// to registered contacts, on 127.0.0.1:PORT (UDP and TCP).
pub struct Kamailio {
    pub opts: KamailioOptions,
    dir: tempfile::TempDir,
    proc: PeerProcess,
    port: u16,
    ctl: PathBuf,
}

impl Kamailio {
    /// Starts Kamailio with these (user, password) subscribers.
    pub fn start(users: &[(&str, &str)]) -> Kamailio {
        Kamailio::start_with(KamailioOptions::new(users))
    }

    pub fn start_with(opts: KamailioOptions) -> Kamailio {
        let dir = short_tempdir("ev-kam-");
        let port = free_port_block(2);
        let db = dir.path().join("db");
        fs::create_dir_all(&db).unwrap();
        // db_text: header line of typed columns, then rows separated by ':'. ha1/ha1b are
        // not nullable in Debian's schema, so fill them; calculate_ha1 uses `password`.
        let mut sub = String::from("id(int,auto) username(string) domain(string) password(string) ha1(string) ha1b(string)\n");
        for (i, (u, p)) in opts.users.iter().enumerate() {
            assert!(
                !u.contains(':') && !p.contains(':'),
                "db_text rows cannot contain ':'"
            );
            sub += &format!("{}:{}:{}:{}:x:x\n", i + 1, u, opts.realm, p);
        }
        fs::write(db.join("subscriber"), sub).unwrap();
        fs::write(
            db.join("version"),
            "id(int,auto) table_name(string) table_version(int)\n0:subscriber:7\n0:location:9\n",
        )
        .unwrap();
        let ctl = dir.path().join("ctl.sock");
        let tmpl = fs::read_to_string(peers_dir().join("kamailio/registrar.cfg.tmpl"))
            .expect("kamailio template");
        let mpath = [
            "/usr/lib/x86_64-linux-gnu/kamailio/modules/",
            "/usr/lib/kamailio/modules/",
        ]
        .into_iter()
        .find(|p| Path::new(p).join("tm.so").exists())
        .expect("kamailio modules dir");
        let cfg = tmpl
            .replace("@@DEBUG@@", &opts.debug.to_string())
            .replace("@@PORT@@", &port.to_string())
            .replace("@@MPATH@@", mpath)
            .replace("@@CTL@@", &ctl.display().to_string())
            .replace("@@DBDIR@@", &db.display().to_string())
            .replace("@@REALM@@", &opts.realm)
            .replace("@@INVITE_AUTH@@", if opts.invite_auth { "1" } else { "0" });
        let cfg_path = dir.path().join("kamailio.cfg");
        fs::write(&cfg_path, cfg).unwrap();

        let mut cmd = Command::new("kamailio");
        cmd.args(["-DD", "-E", "-m", "32", "-M", "8", "-f"])
            .arg(&cfg_path)
            .arg("-w")
            .arg(dir.path())
            .arg("-Y")
            .arg(dir.path())
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .current_dir(dir.path());
        let mut proc = PeerProcess::spawn("kamailio", &mut cmd, &dir.path().join("kamailio.log"));
        let me_ctl = ctl.clone();
        let up = poll_until(Duration::from_secs(15), || {
            if proc.exited().is_some() {
                return Some(false);
            }
            if !me_ctl.exists() {
                return None;
            }
            let ok = Command::new("kamcmd")
                .arg("-s")
                .arg(format!("unix:{}", me_ctl.display()))
                .arg("core.version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            ok.then_some(true)
        });
        if up != Some(true) {
            panic!(
                "kamailio did not start (port {port}):\n{}",
                proc.log_tail(60)
            );
        }
        Kamailio {
            opts,
            dir,
            proc,
            port,
            ctl,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    /// `127.0.0.1:PORT` (for [`BaresipOptions::register`]).
    pub fn addr(&self) -> String {
        format!("{LOOPBACK}:{}", self.port)
    }
    /// `sip:127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("sip:{LOOPBACK}:{}", self.port)
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// Kamailio's stderr log (the script logs every request, reply, auth failure and lookup).
    pub fn log(&self) -> String {
        self.proc.log()
    }
    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }

    /// Runs `kamcmd -s unix:<ctl> <args>` and returns its stdout (panics on failure).
    pub fn kamcmd(&self, args: &[&str]) -> String {
        let out = Command::new("kamcmd")
            .arg("-s")
            .arg(format!("unix:{}", self.ctl.display()))
            .args(args)
            .output()
            .expect("run kamcmd");
        if !out.status.success() {
            panic!(
                "kamcmd {args:?} failed: {}{}\n--- kamailio log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(40)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Contact URIs registered for `user` (from `ul.dump`).
    pub fn contacts(&self, user: &str) -> Vec<String> {
        let dump = self.kamcmd(&["ul.dump"]);
        let mut cur_aor = String::new();
        let mut out = Vec::new();
        for line in dump.lines() {
            let t = line.trim();
            if let Some(a) = t.strip_prefix("AoR:") {
                cur_aor = a.trim().to_string();
            } else if let Some(c) = t.strip_prefix("Address:") {
                if cur_aor == user {
                    out.push(c.trim().to_string());
                }
            }
        }
        out
    }

    /// Waits until `user` has a registered contact; returns the contacts.
    pub fn wait_registered(&self, user: &str, timeout: Duration) -> Vec<String> {
        poll_until(timeout, || {
            let c = self.contacts(user);
            (!c.is_empty()).then_some(c)
        })
        .unwrap_or_else(|| {
            panic!(
                "kamailio: {user} not registered within {timeout:?}\nul.dump:\n{}\n--- kamailio log:\n{}",
                self.kamcmd(&["ul.dump"]),
                self.log_tail(40)
            )
        })
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        poll_until(timeout, || {
            self.log()
                .lines()
                .find(|l| l.contains(needle))
                .map(|l| l.to_string())
        })
        .unwrap_or_else(|| {
            panic!(
                "kamailio: no log line with {needle:?} within {timeout:?}:\n{}",
                self.log_tail(60)
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// sipp

/// A sipp UAC run (see [`Sipp::run_uac`]).
#[derive(Clone, Debug)]
pub struct SippUac {
    /// `127.0.0.1:PORT` to send INVITEs to.
    pub target: String,
    /// Request-URI user (`-s`).
    pub service: String,
    /// Scenario file (default tests/peers/sipp/uac_short_call.xml).
    pub scenario: PathBuf,
    /// Local SIP port (default: a free one).
    pub local_port: Option<u16>,
    /// New calls per second (`-r`, per 1000 ms).
    pub rate_cps: f64,
    /// Max simultaneous calls (`-l`).
    pub max_concurrent: u32,
    /// Total calls, then sipp exits (`-m`).
    pub calls: u32,
    /// How long each answered call is held before BYE (`-d`).
    pub call_duration: Duration,
    /// A call with no expected answer for this long fails (`-recv_timeout`).
    pub recv_timeout: Duration,
    /// The run is killed (and the test panics) after this.
    pub timeout: Duration,
    pub extra_args: Vec<String>,
}

impl SippUac {
    pub fn new(target: &str) -> SippUac {
        SippUac {
            target: target.to_string(),
            service: "edgevoice".into(),
            scenario: peers_dir().join("sipp/uac_short_call.xml"),
            local_port: None,
            rate_cps: 10.0,
            max_concurrent: 10,
            calls: 1,
            call_duration: Duration::from_millis(500),
            recv_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            extra_args: Vec::new(),
        }
    }
    pub fn calls(mut self, n: u32) -> Self {
        self.calls = n;
        self
    }
    pub fn rate(mut self, cps: f64) -> Self {
        self.rate_cps = cps;
        self
    }
    pub fn max_concurrent(mut self, n: u32) -> Self {
        self.max_concurrent = n;
        self
    }
    pub fn call_duration(mut self, d: Duration) -> Self {
        self.call_duration = d;
        self
    }
    pub fn service(mut self, user: &str) -> Self {
        self.service = user.to_string();
        self
    }
    pub fn scenario(mut self, path: impl AsRef<Path>) -> Self {
        self.scenario = path.as_ref().to_owned();
        self
    }
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
}

/// Outcome of a sipp run.
#[derive(Debug)]
pub struct SippResult {
    /// Calls that reached the end of the scenario (stat file, SuccessfulCall(C)).
    pub successful: u64,
    /// Calls that failed (unexpected answer such as a 503, timeout...) (FailedCall(C)).
    pub failed: u64,
    /// Responses to INVITE received, by status code, counted once per call (retransmissions
    /// not counted): e.g. codes[&200] answered calls, codes[&503] refusals.
    pub codes: HashMap<u16, u32>,
    /// Responses received by CSeq method then code, once per call ("BYE" → {200: n}).
    pub codes_by_method: HashMap<String, HashMap<u16, u32>>,
    pub elapsed: Duration,
    /// sipp's exit code: 0 all calls succeeded, 1 some failed, 97/99/255... see sipp(1).
    pub exit_code: Option<i32>,
    /// The final screens (scenario, statistics), for messages.
    pub screen: String,
    /// Where the logs are (kept until the result is dropped).
    pub log_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// sipp runs: a blocking UAC ([`Sipp::run_uac`]) or a background UAS (a [`SippServer`]).
pub struct Sipp;

fn sipp_common_args(cmd: &mut Command, sip_port: u16) {
    // -i/-mi/-ci: SIP, media and control sockets on loopback (sipp's defaults are the primary
    // host address for media and INADDR_ANY for the control socket).
    cmd.args(["-i", LOOPBACK, "-p", &sip_port.to_string()])
        .args(["-mi", LOOPBACK, "-mp", &(sip_port + 2).to_string()])
        .args(["-ci", LOOPBACK, "-cp", &(sip_port + 1).to_string()])
        .args(["-t", "u1", "-nostdin"])
        .args(["-trace_screen", "-screen_file", "screen.log"])
        .args(["-trace_stat", "-stf", "stat.csv", "-fd", "1"])
        .args(["-trace_shortmsg", "-shortmessage_file", "shortmsg.log"])
        .args([
            "-trace_err",
            "-error_file",
            "errors.log",
            "-trace_error_codes",
        ]);
}

// sipp port block: SIP +0, control +1, media +2..+5
const SIPP_PORTS: u16 = 6;

impl Sipp {
    /// Runs a UAC scenario to completion (sipp exits after `calls` calls) and reports the
    /// outcome. Panics if sipp cannot start or does not finish within `uac.timeout`.
    pub fn run_uac(uac: &SippUac) -> SippResult {
        let dir = short_tempdir("ev-sipp-");
        let port = uac
            .local_port
            .unwrap_or_else(|| free_port_block(SIPP_PORTS));
        let mut cmd = Command::new("sipp");
        cmd.arg(&uac.target)
            .arg("-sf")
            .arg(&uac.scenario)
            .args(["-s", &uac.service]);
        sipp_common_args(&mut cmd, port);
        cmd.args(["-r", &format!("{}", uac.rate_cps), "-rp", "1000"])
            .args(["-l", &uac.max_concurrent.to_string()])
            .args(["-m", &uac.calls.to_string()])
            .args(["-d", &uac.call_duration.as_millis().to_string()])
            .args(["-recv_timeout", &uac.recv_timeout.as_millis().to_string()])
            .args(&uac.extra_args)
            .current_dir(dir.path());
        let started = Instant::now();
        let mut proc = PeerProcess::spawn("sipp uac", &mut cmd, &dir.path().join("stdout.log"));
        let status = poll_until(uac.timeout, || proc.exited());
        let elapsed = started.elapsed();
        let Some(status) = status else {
            proc.stop_with(Signal::SIGKILL, Duration::from_secs(1));
            panic!(
                "sipp uac to {} did not finish within {:?}\n{}",
                uac.target,
                uac.timeout,
                sipp_diagnostics(dir.path())
            );
        };
        let mut r = sipp_result(dir, elapsed, status.code());
        if r.successful + r.failed == 0 && status.code() != Some(0) {
            panic!(
                "sipp uac failed to run (exit {:?})\n{}",
                status.code(),
                sipp_diagnostics(&r.log_dir)
            );
        }
        r.exit_code = status.code();
        r
    }

    /// Starts `uas_answer.xml` (answers every INVITE with 200 + SDP, waits for BYE) on a free port.
    pub fn start_uas_answer() -> SippServer {
        SippServer::start(&peers_dir().join("sipp/uas_answer.xml"), None)
    }

    /// Starts a UAS that answers every INVITE with `code reason` (e.g. 503 "Service Unavailable").
    pub fn start_uas_reject(code: u16, reason: &str) -> SippServer {
        let tmpl = fs::read_to_string(peers_dir().join("sipp/uas_reject.xml.tmpl"))
            .expect("uas_reject template");
        let dir = short_tempdir("ev-sipp-scn-");
        let path = dir.path().join("uas_reject.xml");
        fs::write(
            &path,
            tmpl.replace("@@CODE@@", &code.to_string())
                .replace("@@REASON@@", reason),
        )
        .unwrap();
        let mut s = SippServer::start(&path, None);
        s._scenario_dir = Some(dir);
        s
    }
}

/// A sipp UAS running in the background (killed on drop).
pub struct SippServer {
    dir: tempfile::TempDir,
    proc: PeerProcess,
    port: u16,
    _scenario_dir: Option<tempfile::TempDir>,
}

impl SippServer {
    /// Starts sipp with a UAS scenario on a free port (or `port`); returns once its SIP socket
    /// is bound.
    pub fn start(scenario: &Path, port: Option<u16>) -> SippServer {
        let dir = short_tempdir("ev-sipp-");
        let port = port.unwrap_or_else(|| free_port_block(SIPP_PORTS));
        let mut cmd = Command::new("sipp");
        cmd.arg("-sf").arg(scenario);
        sipp_common_args(&mut cmd, port);
        cmd.current_dir(dir.path());
        let mut proc = PeerProcess::spawn("sipp uas", &mut cmd, &dir.path().join("stdout.log"));
        // bound once we cannot bind its UDP port ourselves
        let up = poll_until(Duration::from_secs(10), || {
            if proc.exited().is_some() {
                return Some(false);
            }
            UdpSocket::bind((LOOPBACK, port)).is_err().then_some(true)
        });
        if up != Some(true) {
            panic!(
                "sipp uas did not start on {port}\n{}",
                sipp_diagnostics(dir.path())
            );
        }
        SippServer {
            dir,
            proc,
            port,
            _scenario_dir: None,
        }
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("{LOOPBACK}:{}", self.port)
    }
    /// `sip:<user>@127.0.0.1:PORT`.
    pub fn uri(&self, user: &str) -> String {
        format!("sip:{user}@{LOOPBACK}:{}", self.port)
    }
    /// Stops it and returns the counts: SIGUSR1 first (sipp's soft exit: no new calls, running
    /// calls, including their timewait, finish and count), SIGTERM after 5 s (sipp still
    /// writes its final screens/stats then).
    pub fn stop(mut self) -> SippResult {
        self.proc.signal(Signal::SIGUSR1);
        let st = match poll_until(Duration::from_secs(5), || self.proc.exited()) {
            Some(st) => {
                self.proc.stop(); // reaps/marks stopped
                Some(st)
            }
            None => self.proc.stop_with(Signal::SIGTERM, Duration::from_secs(3)),
        };
        let dir = std::mem::replace(&mut self.dir, short_tempdir("ev-sipp-"));
        sipp_result(dir, Duration::ZERO, st.and_then(|s| s.code()))
    }
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn diagnostics(&self) -> String {
        sipp_diagnostics(self.dir.path())
    }
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn sipp_diagnostics(dir: &Path) -> String {
    let errs: String = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.to_string_lossy().contains("error_codes") || p.ends_with("errors.log")
                })
                .map(|p| {
                    format!(
                        "--- {}:\n{}\n",
                        p.display(),
                        tail_lines(&read_lossy(&p), 30)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "--- sipp screen ({}):\n{}\n--- sipp stdout tail:\n{}\n{}--- sipp messages tail:\n{}",
        dir.display(),
        tail_lines(&read_lossy(&dir.join("screen.log")), 60),
        tail_lines(&read_lossy(&dir.join("stdout.log")), 15),
        errs,
        tail_lines(&read_lossy(&dir.join("shortmsg.log")), 20)
    )
}

fn sipp_result(dir: tempfile::TempDir, elapsed: Duration, exit_code: Option<i32>) -> SippResult {
    let p = dir.path();
    // stat.csv: ';'-separated, header line then one line per -fd period; the last is final.
    let stat = read_lossy(&p.join("stat.csv"));
    let mut lines = stat.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap_or("").split(';').collect();
    let last: Vec<&str> = stat
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .split(';')
        .collect();
    let col = |name: &str| -> u64 {
        header
            .iter()
            .position(|h| *h == name)
            .and_then(|i| last.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let successful = col("SuccessfulCall(C)");
    let failed = col("FailedCall(C)");
    // shortmsg.log: date \t time \t epoch \t S|R \t call-id \t "CSeq:N METHOD" \t first line
    let mut seen: HashSet<(String, String, u16)> = HashSet::new();
    let mut codes: HashMap<u16, u32> = HashMap::new();
    let mut by_method: HashMap<String, HashMap<u16, u32>> = HashMap::new();
    for line in read_lossy(&p.join("shortmsg.log")).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 7 || f[3] != "R" {
            continue;
        }
        let Some(code) = f[6]
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse::<u16>().ok())
        else {
            continue;
        };
        let cseq = f[5].trim_start_matches("CSeq:").trim().to_string();
        if !seen.insert((f[4].to_string(), cseq.clone(), code)) {
            continue; // retransmission
        }
        let method = cseq.split_whitespace().last().unwrap_or("").to_string();
        if method == "INVITE" {
            *codes.entry(code).or_default() += 1;
        }
        *by_method
            .entry(method)
            .or_default()
            .entry(code)
            .or_default() += 1;
    }
    let screen = read_lossy(&p.join("screen.log"));
    SippResult {
        successful,
        failed,
        codes,
        codes_by_method: by_method,
        elapsed,
        exit_code,
        screen,
        log_dir: p.to_owned(),
        _dir: dir,
    }
}

impl SippResult {
    /// Screen and logs, for assertion messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "successful={} failed={} codes={:?} by_method={:?} exit={:?} elapsed={:?}\n{}",
            self.successful,
            self.failed,
            self.codes,
            self.codes_by_method,
            self.exit_code,
            self.elapsed,
            sipp_diagnostics(&self.log_dir)
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Packet capture

/// One RTP packet from a capture.
#[derive(Clone, Debug, PartialEq)]
pub struct RtpPacket {
    /// Capture time, Unix seconds.
    pub time: f64,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload_type: u8,
    pub ssrc: u32,
}

/// One RFC 4733 telephone-event packet from a capture.
#[derive(Clone, Debug, PartialEq)]
pub struct RtpEvent {
    pub time: f64,
    pub src_port: u16,
    pub dst_port: u16,
    /// 0-9, 10 = '*', 11 = '#', 12-15 = A-D.
    pub event: u8,
    pub end: bool,
    pub duration: u32,
    pub rtp_timestamp: u32,
}

impl RtpEvent {
    /// The DTMF character of `event`.
    pub fn digit(&self) -> char {
        match self.event {
            0..=9 => (b'0' + self.event) as char,
            10 => '*',
            11 => '#',
            12..=15 => (b'A' + self.event - 12) as char,
            _ => '?',
        }
    }
}

/// One SIP message from a capture.
#[derive(Clone, Debug, PartialEq)]
pub struct SipMessage {
    pub time: f64,
    pub src_port: u16,
    pub dst_port: u16,
    /// Request line ("INVITE sip:b@... SIP/2.0") or status line ("SIP/2.0 200 OK").
    pub first_line: String,
    pub call_id: String,
    pub cseq: String,
}

/// A dumpcap capture on `lo` into a pcap file in a temp dir, read back with tshark.
pub struct Capture {
    dir: tempfile::TempDir,
    pcap: PathBuf,
    proc: Option<PeerProcess>,
    pub filter: String,
    marker_port: u16,
    marker: String,
}

impl Capture {
    /// Captures UDP packets to or from any of `ports` (e.g. the RTP ranges of the peers).
    pub fn start_udp_ports(ports: &[u16]) -> Capture {
        assert!(!ports.is_empty());
        let parts: Vec<String> = ports.iter().map(|p| format!("port {p}")).collect();
        Capture::start(&format!("udp and ({})", parts.join(" or ")))
    }

    /// Captures UDP packets to or from any port in these ranges (e.g. [`Baresip::rtp_ports`]
    /// plus `p..=p` for single ports).
    pub fn start_udp_port_ranges(ranges: &[RangeInclusive<u16>]) -> Capture {
        assert!(!ranges.is_empty());
        let parts: Vec<String> = ranges
            .iter()
            .map(|r| format!("portrange {}-{}", r.start(), r.end()))
            .collect();
        Capture::start(&format!("udp and ({})", parts.join(" or ")))
    }

    /// Captures packets matching a BPF `filter` on `lo`; returns once dumpcap reports that it
    /// is capturing.
    pub fn start(filter: &str) -> Capture {
        let dir = short_tempdir("ev-cap-");
        let pcap = dir.path().join("capture.pcap");
        // A marker port is captured too: stop() sends a unique datagram there and waits until
        // it is in the file, so every packet before it has been written (libpcap hands packets
        // over in blocks, and dumpcap drops what it has not received yet when it is stopped).
        let marker_port = free_port();
        let marker = format!(
            "edgevoice-capture-marker-{}-{}",
            std::process::id(),
            marker_port
        );
        let full_filter = format!("({filter}) or (udp dst port {marker_port})");
        let mut cmd = Command::new("dumpcap");
        cmd.args(["-i", "lo", "-f", &full_filter, "-P", "-w"])
            .arg(&pcap);
        let mut proc = PeerProcess::spawn("dumpcap", &mut cmd, &dir.path().join("dumpcap.log"));
        let up = poll_until(Duration::from_secs(10), || {
            if proc.exited().is_some() {
                return Some(false);
            }
            proc.log().contains("File:").then_some(true)
        });
        if up != Some(true) {
            panic!(
                "dumpcap did not start capturing (filter {full_filter:?}):\n{}",
                proc.log_tail(20)
            );
        }
        Capture {
            dir,
            pcap,
            proc: Some(proc),
            filter: filter.to_string(),
            marker_port,
            marker,
        }
    }

    /// Stops the capture once everything captured so far is in the file (see `start`).
    pub fn stop(&mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        let sock = UdpSocket::bind((LOOPBACK, 0)).expect("bind marker socket");
        let needle = self.marker.as_bytes().to_vec();
        let flushed = poll_until(Duration::from_secs(5), || {
            let _ = sock.send_to(&needle, (LOOPBACK, self.marker_port));
            std::thread::sleep(Duration::from_millis(30));
            let data = fs::read(&self.pcap).unwrap_or_default();
            data.windows(needle.len())
                .any(|w| w == needle.as_slice())
                .then_some(())
        });
        if flushed.is_none() {
            eprintln!(
                "capture: marker packet never reached {} (stopping anyway)",
                self.pcap.display()
            );
        }
        p.stop_with(Signal::SIGINT, Duration::from_secs(5));
    }

    pub fn pcap(&self) -> &Path {
        &self.pcap
    }

    /// Keeps the pcap after the test; returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.stop();
        let dir = std::mem::replace(&mut self.dir, short_tempdir("ev-cap-"));
        dir.keep().join("capture.pcap")
    }

    fn tshark_fields(
        &mut self,
        decode_as: &[String],
        display_filter: &str,
        fields: &[&str],
    ) -> Vec<Vec<String>> {
        self.stop();
        let mut cmd = Command::new("tshark");
        cmd.arg("-r").arg(&self.pcap).arg("-n");
        for d in decode_as {
            cmd.args(["-d", d]);
        }
        cmd.args([
            "-Y",
            display_filter,
            "-T",
            "fields",
            "-E",
            "separator=/t",
            "-E",
            "occurrence=f",
        ]);
        for f in fields {
            cmd.args(["-e", f]);
        }
        let out = cmd.output().expect("run tshark");
        if !out.status.success() {
            panic!(
                "tshark {cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split('\t').map(|s| s.to_string()).collect())
            .collect()
    }

    /// RTP packets on these UDP ports (decoded as RTP with `-d udp.port==P,rtp`), in capture
    /// order. Stops the capture first.
    pub fn rtp_packets(&mut self, rtp_ports: &[u16]) -> Vec<RtpPacket> {
        let decode: Vec<String> = rtp_ports
            .iter()
            .map(|p| format!("udp.port=={p},rtp"))
            .collect();
        let rows = self.tshark_fields(
            &decode,
            "rtp",
            &[
                "frame.time_epoch",
                "udp.srcport",
                "udp.dstport",
                "rtp.seq",
                "rtp.timestamp",
                "rtp.marker",
                "rtp.p_type",
                "rtp.ssrc",
            ],
        );
        rows.into_iter()
            .filter(|f| f.len() >= 8)
            .map(|f| RtpPacket {
                time: f[0].parse().unwrap_or(0.0),
                src_port: f[1].parse().unwrap_or(0),
                dst_port: f[2].parse().unwrap_or(0),
                seq: f[3].parse().unwrap_or(0),
                timestamp: f[4].parse().unwrap_or(0),
                marker: f[5] == "1" || f[5] == "True",
                payload_type: f[6].parse().unwrap_or(255),
                ssrc: parse_int(&f[7]) as u32,
            })
            .collect()
    }

    /// RFC 4733 telephone-event packets on these ports (payload type 101, baresip's choice;
    /// other dynamic types: set `rtpevent.event_payload_type_value` in `extra`).
    pub fn rtp_events(&mut self, rtp_ports: &[u16]) -> Vec<RtpEvent> {
        let decode: Vec<String> = rtp_ports
            .iter()
            .map(|p| format!("udp.port=={p},rtp"))
            .collect();
        let rows = self.tshark_fields(
            &decode,
            "rtpevent",
            &[
                "frame.time_epoch",
                "udp.srcport",
                "udp.dstport",
                "rtpevent.event_id",
                "rtpevent.end_of_event",
                "rtpevent.duration",
                "rtp.timestamp",
            ],
        );
        rows.into_iter()
            .filter(|f| f.len() >= 7)
            .map(|f| RtpEvent {
                time: f[0].parse().unwrap_or(0.0),
                src_port: f[1].parse().unwrap_or(0),
                dst_port: f[2].parse().unwrap_or(0),
                event: f[3].parse().unwrap_or(255),
                end: f[4] == "1" || f[4] == "True",
                duration: f[5].parse().unwrap_or(0),
                rtp_timestamp: f[6].parse().unwrap_or(0),
            })
            .collect()
    }

    /// SIP messages on these UDP/TCP ports (decoded as SIP), in capture order.
    pub fn sip_messages(&mut self, sip_ports: &[u16]) -> Vec<SipMessage> {
        let mut decode: Vec<String> = sip_ports
            .iter()
            .map(|p| format!("udp.port=={p},sip"))
            .collect();
        decode.extend(sip_ports.iter().map(|p| format!("tcp.port=={p},sip")));
        let rows = self.tshark_fields(
            &decode,
            "sip",
            &[
                "frame.time_epoch",
                "udp.srcport",
                "udp.dstport",
                "tcp.srcport",
                "tcp.dstport",
                "sip.Request-Line",
                "sip.Status-Line",
                "sip.Call-ID",
                "sip.CSeq",
            ],
        );
        rows.into_iter()
            .filter(|f| f.len() >= 9)
            .map(|f| {
                let (sp, dp) = if !f[1].is_empty() {
                    (&f[1], &f[2])
                } else {
                    (&f[3], &f[4])
                };
                SipMessage {
                    time: f[0].parse().unwrap_or(0.0),
                    src_port: sp.parse().unwrap_or(0),
                    dst_port: dp.parse().unwrap_or(0),
                    first_line: if !f[5].is_empty() {
                        f[5].clone()
                    } else {
                        f[6].clone()
                    },
                    call_id: f[7].clone(),
                    cseq: f[8].clone(),
                }
            })
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(Signal::SIGINT, Duration::from_secs(3));
        }
    }
}

fn parse_int(s: &str) -> u64 {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).unwrap_or(0)
    } else {
        s.parse().unwrap_or(0)
    }
}

/// Packets of one direction (`src_port` → `dst_port`) of an RTP stream.
pub fn rtp_stream(packets: &[RtpPacket], src_port: u16, dst_port: u16) -> Vec<RtpPacket> {
    packets
        .iter()
        .filter(|p| p.src_port == src_port && p.dst_port == dst_port)
        .cloned()
        .collect()
}

/// Distinct (src_port, dst_port) flows with their packet counts, busiest first.
pub fn rtp_flows(packets: &[RtpPacket]) -> Vec<((u16, u16), usize)> {
    let mut m: HashMap<(u16, u16), usize> = HashMap::new();
    for p in packets {
        *m.entry((p.src_port, p.dst_port)).or_default() += 1;
    }
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by_key(|f| std::cmp::Reverse(f.1));
    v
}

/// Inter-arrival times in ms between consecutive packets.
pub fn interarrival_ms(packets: &[RtpPacket]) -> Vec<f64> {
    packets
        .windows(2)
        .map(|w| (w[1].time - w[0].time) * 1000.0)
        .collect()
}

/// Median of a list (0 for empty).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}
