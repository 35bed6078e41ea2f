//! Media capacity benchmark of the real daemon: the most concurrent calls in media test mode
//! (built-in prompt, then echo, every call recorded) that edgevoiced holds on this machine with
//! its outgoing 20 ms RTP pacing jitter p99 under 2 ms and no late frames, and the CPU and
//! memory each call costs.
//!
//! Callers: one sipp UAC per step (tests/peers/sipp/uac_media_stream.xml.tmpl) that sets up N
//! calls and streams PCMU RTP on every call for the whole call (sipp's rtp_stream, 20 ms
//! packets from its media socket). The daemon's outgoing RTP, and the callers' RTP for
//! comparison, are captured on `lo` (the harness `Capture`, dumpcap) during a steady window in
//! which all N calls are up and echoing; the pcap is read here (Ethernet/IPv4/UDP/RTP).
//! Per stream: inter-departure intervals, jitter = |interval − 20 ms|, late frames (intervals
//! over 40 ms, or missing sequence numbers), bursts (intervals under 10 ms), lateness against
//! the stream's own ideal grid, drift. CPU is the daemon's utime+stime over the window
//! (/proc), RSS its VmRSS at the window's end.
//!
//! Reference beside ours: sipp's own UAS answering the same load with `-rtp_echo` (a
//! recvfrom/sendto loop on one socket: no codec, no jitter buffer, no clock, no recording). Its
//! outgoing pacing is the callers' pacing plus one hop of scheduling. And a noise floor in
//! every window: one plain thread pacing one stream with absolute-deadline sleeps (`Probe`).
//!
//! Steps 10, 100, 200, 400, 600, 800 calls (BENCH_MEDIA_STEPS="10,100,..." overrides), up to
//! the first failing step, then one step halfway between it and the last passing one; each
//! step is started only if it fits the time budget. Window BENCH_MEDIA_WINDOW_SECS (default
//! 6 s); BENCH_MEDIA_KEEP_PCAP=1 keeps the captures. Prints markdown tables and writes them to
//! target/bench/media_calls.md.

#[path = "../../tests/common/audio.rs"]
mod audio;
#[path = "../../tests/common/peers.rs"]
mod peers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use peers::{free_port_block, poll_until, Capture, PeerProcess, Sipp, SippUac, LOOPBACK};

/// The daemon's RTP range: above Linux's ephemeral ports (32768–60999) and the harness's
/// free_port_block range (10000–32000), so nothing else takes ports from it.
const RTP_MIN: u16 = 61000;
const RTP_MAX: u16 = 62999;
const PTIME_MS: f64 = 20.0;
/// Calls set up per second by sipp. Not a divisor of 50: sipp starts calls on a 1 ms grid, and
/// each call's 20 ms send clock starts when it is answered, so at 100/s (one call every 10 ms)
/// every call would send in one of two phases 10 ms apart. 111/s (every 9 ms) spreads the
/// calls over all 20 phases of the 20 ms cycle, as independent callers would be.
const SETUP_RATE: f64 = 111.0;
/// After all calls are up: the prompt (1.5 s of tones) ends and echo runs everywhere.
const SETTLE: Duration = Duration::from_secs(2);
/// A step is started only if it is expected to end within this time from the start (the
/// whole run should stay under ~6 minutes).
const STEP_BUDGET: Duration = Duration::from_secs(330);
/// Pass criteria.
const P99_LIMIT_MS: f64 = 2.0;
const LATE_MS: f64 = 40.0;
const BURST_MS: f64 = 10.0;
/// Whole-machine CPU (both cores) above this during the window counts as saturated.
const SATURATED_PCT: f64 = 95.0;
/// A failing step run while other people's work took more than this share of the machine is
/// run once more (this is a shared machine).
const FOREIGN_RETRY_PCT: f64 = 20.0;

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Caller audio: 10 s of a speech-like harmonic signal (never silent), G.711 µ-law, raw.

fn ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

fn caller_audio(path: &Path) {
    let rate = 8000.0f64;
    let mut phase = 0f64;
    let bytes: Vec<u8> = (0..80_000)
        .map(|i| {
            let t = f64::from(i) / rate;
            let f0 = 140.0 + 50.0 * (t * 0.9).sin();
            phase += 2.0 * std::f64::consts::PI * f0 / rate;
            let env = 0.35 + 0.65 * (t * 2.7).sin().abs();
            let s: f64 = (1..6)
                .map(|h| (phase * f64::from(h)).sin() / f64::from(h))
                .sum();
            ulaw((5000.0 * env * s) as i16)
        })
        .collect();
    std::fs::write(path, bytes).expect("caller audio");
}

// ---------------------------------------------------------------------------------------------
// /proc

#[derive(Clone, Copy, Default)]
struct ProcCpu {
    /// utime + stime, seconds (USER_HZ = 100).
    cpu_s: f64,
}

fn proc_cpu(pid: u32) -> Option<ProcCpu> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ProcCpu {
        cpu_s: ticks as f64 / 100.0,
    })
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Per thread: (tid, ns on CPU from schedstat, involuntary context switches).
fn threads(pid: u32) -> HashMap<u32, (u64, u64)> {
    let mut m = HashMap::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return m;
    };
    for e in rd.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let ns = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let invol = std::fs::read_to_string(e.path().join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("nonvoluntary_ctxt_switches"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        m.insert(tid, (ns, invol));
    }
    m
}

/// (busy, softirq, total) jiffies of the whole machine.
fn machine_cpu() -> (u64, u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    if f.len() < 8 {
        return (0, 0, 1);
    }
    let total: u64 = f.iter().take(8).sum();
    let idle = f[3] + f[4];
    (total - idle, f[6], total)
}

/// Our children named `comm` (sipp UAC, dumpcap), except `except`.
fn child_pids(comm: &str, except: &[u32]) -> Vec<u32> {
    let me = std::process::id();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if except.contains(&pid) {
            continue;
        }
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(a), Some(b)) = (s.find('('), s.rfind(')')) else {
            continue;
        };
        let name = &s[a + 1..b];
        let ppid: u32 = s[b + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if name == comm && ppid == me {
            v.push(pid);
        }
    }
    v
}

fn cpu_sum(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| proc_cpu(*p))
        .map(|c| c.cpu_s)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// pcap (dumpcap -P on lo: libpcap format, Ethernet link type)

struct Pkt {
    t: f64,
    src: u16,
    dst: u16,
    seq: u16,
    ts: u32,
    ssrc: u32,
    /// Payload is anything but µ-law/A-law silence.
    audible: bool,
}

fn read_pcap(path: &Path) -> Vec<Pkt> {
    let data = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    if data.len() < 24 {
        return out;
    }
    let magic = u32::from_le_bytes(data[0..4].try_into().unwrap());
    let (le, nanos) = match magic {
        0xa1b2c3d4 => (true, false),
        0xa1b23c4d => (true, true),
        0xd4c3b2a1 => (false, false),
        0x4d3cb2a1 => (false, true),
        _ => panic!("{}: not a libpcap file", path.display()),
    };
    let rd32 = |b: &[u8]| {
        let a: [u8; 4] = b[..4].try_into().unwrap();
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = rd32(&data[20..24]);
    let l2 = match linktype {
        1 => 14,   // Ethernet (what lo gives)
        113 => 16, // Linux cooked
        276 => 20, // Linux cooked v2
        0 => 4,    // BSD loopback
        101 => 0,  // raw IP
        other => panic!("{}: link type {other} not handled", path.display()),
    };
    let mut pos = 24;
    while pos + 16 <= data.len() {
        let sec = rd32(&data[pos..]);
        let frac = rd32(&data[pos + 4..]);
        let incl = rd32(&data[pos + 8..]) as usize;
        let body = pos + 16;
        pos = body + incl;
        if pos > data.len() {
            break;
        }
        let t = f64::from(sec) + f64::from(frac) / if nanos { 1e9 } else { 1e6 };
        let p = &data[body..body + incl];
        if p.len() < l2 + 20 {
            continue;
        }
        let ip = &p[l2..];
        if ip[0] >> 4 != 4 || ip[9] != 17 {
            continue;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip.len() < ihl + 8 + 12 {
            continue;
        }
        let udp = &ip[ihl..];
        let src = u16::from_be_bytes([udp[0], udp[1]]);
        let dst = u16::from_be_bytes([udp[2], udp[3]]);
        let rtp = &udp[8..];
        if rtp[0] >> 6 != 2 {
            continue;
        }
        let pt = rtp[1] & 0x7f;
        if (72..=76).contains(&pt) {
            continue; // RTCP
        }
        let hdr = 12 + 4 * usize::from(rtp[0] & 0x0f);
        let payload = rtp.get(hdr..).unwrap_or(&[]);
        out.push(Pkt {
            t,
            src,
            dst,
            seq: u16::from_be_bytes([rtp[2], rtp[3]]),
            ts: u32::from_be_bytes(rtp[4..8].try_into().unwrap()),
            ssrc: u32::from_be_bytes(rtp[8..12].try_into().unwrap()),
            audible: payload
                .iter()
                .any(|&b| b != 0xff && b != 0x7f && b != 0xd5 && b != 0x55),
        });
    }
    out
}

/// Pacing of a set of streams inside a window.
#[derive(Default, Clone)]
struct Pacing {
    streams: usize,
    packets: usize,
    intervals: usize,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    /// Intervals over 40 ms.
    late: usize,
    /// Sequence numbers missing.
    gaps: usize,
    /// Intervals under 10 ms (two frames back to back).
    bursts: usize,
    /// RTP timestamp steps other than one frame between consecutive sequence numbers.
    ts_jumps: usize,
    /// Rate error of the streams against the capture clock (regression slope), ppm: the
    /// median (signed: + = slower than 20 ms) and the worst magnitude.
    drift_med_ppm: f64,
    drift_max_ppm: f64,
    /// Departure lateness against each stream's own ideal 20 ms grid (a line fitted through
    /// its departures, shifted onto the earliest one): p50, p99, max in ms.
    late_p50: f64,
    late_p99: f64,
    late_max: f64,
    /// Share of packets carrying audio (not G.711 silence).
    audible: f64,
    /// Share of all packets that leave in the busiest 1 ms of the 20 ms cycle (wall clock):
    /// 5 % when the streams' phases are spread evenly.
    phase_peak: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn pacing(pkts: &[&Pkt], w0: f64, w1: f64, key: impl Fn(&Pkt) -> (u16, u32)) -> Pacing {
    let mut by: HashMap<(u16, u32), Vec<&Pkt>> = HashMap::new();
    for p in pkts.iter().filter(|p| p.t >= w0 && p.t <= w1) {
        by.entry(key(p)).or_default().push(p);
    }
    let mut r = Pacing::default();
    let mut jit = Vec::new();
    let mut drifts = Vec::new();
    let mut lateness = Vec::new();
    let mut audible = 0usize;
    let mut phases = [0usize; 20];
    // Streams with only a few packets are strays (a call ending or starting at the edge).
    let min_packets = ((w1 - w0) * 1000.0 / PTIME_MS * 0.5) as usize;
    for (_, mut v) in by {
        if v.len() < min_packets.max(2) {
            continue;
        }
        v.sort_by(|a, b| a.t.partial_cmp(&b.t).unwrap());
        r.streams += 1;
        r.packets += v.len();
        audible += v.iter().filter(|p| p.audible).count();
        for p in &v {
            phases[((p.t * 1000.0) as u64 % 20) as usize] += 1;
        }
        for w in v.windows(2) {
            let dt = (w[1].t - w[0].t) * 1000.0;
            jit.push((dt - PTIME_MS).abs());
            if dt > LATE_MS {
                r.late += 1;
            }
            if dt < BURST_MS {
                r.bursts += 1;
            }
            let ds = w[1].seq.wrapping_sub(w[0].seq);
            if (2..1000).contains(&ds) {
                r.gaps += usize::from(ds - 1);
            }
            if ds == 1 && w[1].ts.wrapping_sub(w[0].ts) != 160 {
                r.ts_jumps += 1;
            }
        }
        // Least-squares line t = a + b·frame through the departures (frame = unwrapped
        // sequence number): b is the stream's real frame period on the capture clock, the
        // residuals are each departure's offset from its ideal slot.
        let mut x = Vec::with_capacity(v.len());
        let mut frame = 0f64;
        for (i, p) in v.iter().enumerate() {
            if i > 0 {
                frame += f64::from(p.seq.wrapping_sub(v[i - 1].seq));
            }
            x.push(frame);
        }
        let t0 = v[0].t;
        let y: Vec<f64> = v.iter().map(|p| p.t - t0).collect();
        let k = x.len() as f64;
        let (mx, my) = (x.iter().sum::<f64>() / k, y.iter().sum::<f64>() / k);
        let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
        let sxy: f64 = x.iter().zip(&y).map(|(a, b)| (a - mx) * (b - my)).sum();
        if sxx > 0.0 && frame > 50.0 {
            let b = sxy / sxx;
            let a = my - b * mx;
            drifts.push((b * 1000.0 / PTIME_MS - 1.0) * 1e6);
            let res: Vec<f64> = x.iter().zip(&y).map(|(xi, yi)| yi - (a + b * xi)).collect();
            let lo = res.iter().cloned().fold(f64::INFINITY, f64::min);
            lateness.extend(res.iter().map(|r| (r - lo) * 1000.0));
        }
    }
    r.intervals = jit.len();
    jit.sort_by(|a, b| a.partial_cmp(b).unwrap());
    r.p50 = percentile(&jit, 0.50);
    r.p99 = percentile(&jit, 0.99);
    r.p999 = percentile(&jit, 0.999);
    r.max = jit.last().copied().unwrap_or(0.0);
    drifts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    r.drift_med_ppm = percentile(&drifts, 0.5);
    r.drift_max_ppm = drifts.iter().fold(0.0, |m: f64, d| m.max(d.abs()));
    lateness.sort_by(|a, b| a.partial_cmp(b).unwrap());
    r.late_p50 = percentile(&lateness, 0.5);
    r.late_p99 = percentile(&lateness, 0.99);
    r.late_max = lateness.last().copied().unwrap_or(0.0);
    r.audible = audible as f64 / r.packets.max(1) as f64;
    r.phase_peak = *phases.iter().max().unwrap() as f64 / r.packets.max(1) as f64;
    r
}

/// The noise floor beside the engines: one OS thread sending one 20 ms RTP stream to a sink
/// socket, sleeping to absolute deadlines (nanosleep, hrtimers), captured in the same pcap
/// under the same load. What a plain thread pacer and the capture can do on this machine.
struct Probe {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn start() -> Probe {
        use std::sync::atomic::Ordering;
        let port = peers::free_port();
        let sock = std::net::UdpSocket::bind((LOOPBACK, port)).expect("probe socket");
        let sink = std::net::UdpSocket::bind((LOOPBACK, 0)).expect("probe sink");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let dest = sink.local_addr().unwrap();
            let start = Instant::now();
            let mut pkt = [0xffu8; 172];
            pkt[0] = 0x80;
            pkt[1] = 0;
            pkt[8..12].copy_from_slice(&0x5052_4f42u32.to_be_bytes());
            let mut k: u32 = 0;
            while !flag.load(Ordering::Relaxed) {
                let due = start + Duration::from_millis(20) * k;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                pkt[2..4].copy_from_slice(&(k as u16).to_be_bytes());
                pkt[4..8].copy_from_slice(&k.wrapping_mul(160).to_be_bytes());
                let _ = sock.send_to(&pkt, dest);
                k += 1;
            }
            drop(sink);
        });
        Probe {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The two engines

struct Daemon {
    proc: PeerProcess,
    config: PathBuf,
    state: PathBuf,
    addr: String,
}

impl Daemon {
    fn status(&self) -> Option<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_edgevoice"))
            .arg("--config")
            .arg(&self.config)
            .args(["status", "--json"])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }
    fn active_calls(&self) -> Option<u64> {
        self.status()?["active_calls"].as_u64()
    }
    fn recordings(&self) -> usize {
        std::fs::read_dir(self.state.join("recordings"))
            .map(|rd| rd.count())
            .unwrap_or(0)
    }
}

fn start_daemon(dir: &Path) -> Daemon {
    let config = dir.join("edgevoice.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"state\"\nruntime_dir = \"run\"\nlog_level = \"warn\"\n\
             [sip]\nlisten = \"127.0.0.1:0\"\nmax_calls = 1000\n\
             [rtp]\nport_min = {RTP_MIN}\nport_max = {RTP_MAX}\n\
             [call]\nrecord = true\n\
             [media_test]\nafter_prompt = \"echo\"\n"
        ),
    )
    .expect("config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgevoiced"));
    cmd.arg("--config").arg(&config);
    let proc = PeerProcess::spawn("edgevoiced", &mut cmd, &dir.join("edgevoiced.log"));
    let mut d = Daemon {
        proc,
        config,
        state: dir.join("state"),
        addr: String::new(),
    };
    let port = poll_until(Duration::from_secs(20), || {
        d.status()?["sip_listen"]
            .as_str()
            .and_then(|s| s.rsplit(':').next()?.parse::<u16>().ok())
    })
    .unwrap_or_else(|| panic!("edgevoiced did not come up:\n{}", d.proc.log_tail(20)));
    d.addr = format!("{LOOPBACK}:{port}");
    d
}

/// sipp's UAS (tests/peers/sipp/uas_answer.xml) with `-rtp_echo` on its media port.
struct Reference {
    proc: PeerProcess,
    addr: String,
    media_port: u16,
    _dir: tempfile::TempDir,
}

fn start_reference() -> Reference {
    let dir = tempfile::Builder::new()
        .prefix("ev-ref-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let port = free_port_block(6);
    let mut cmd = Command::new("sipp");
    cmd.arg("-sf")
        .arg(peers::peers_dir().join("sipp/uas_answer.xml"))
        .args(["-i", LOOPBACK, "-p", &port.to_string()])
        .args(["-mi", LOOPBACK, "-mp", &(port + 2).to_string()])
        .args(["-ci", LOOPBACK, "-cp", &(port + 1).to_string()])
        .args(["-t", "u1", "-nostdin", "-rtp_echo"])
        .current_dir(dir.path());
    let mut proc = PeerProcess::spawn(
        "sipp uas rtp_echo",
        &mut cmd,
        &dir.path().join("stdout.log"),
    );
    let up = poll_until(Duration::from_secs(10), || {
        if proc.exited().is_some() {
            return Some(false);
        }
        std::net::UdpSocket::bind((LOOPBACK, port))
            .is_err()
            .then_some(true)
    });
    assert_eq!(
        up,
        Some(true),
        "sipp UAS did not start:\n{}",
        proc.log_tail(20)
    );
    Reference {
        proc,
        addr: format!("{LOOPBACK}:{port}"),
        media_port: port + 2,
        _dir: dir,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Ours,
    Reference,
}

#[derive(Default, Clone)]
struct Step {
    calls: u32,
    up: u64,
    sipp_ok: u64,
    sipp_failed: u64,
    out: Pacing,
    input: Pacing,
    /// The noise floor: one plain thread pacing one stream (see `Probe`), same window.
    probe: Pacing,
    window_s: f64,
    cpu_pct: f64,
    busiest_thread_pct: f64,
    invol_per_s: f64,
    rss_kib: u64,
    rss_idle_kib: u64,
    machine_pct: f64,
    softirq_pct: f64,
    sipp_uac_pct: f64,
    dumpcap_pct: f64,
    /// CPU used on the machine by processes other than the engine, the sipp UAC and dumpcap
    /// (other people's work on a shared machine), % of the machine like `machine_pct`.
    foreign_pct: f64,
    recordings: usize,
    pcap: Option<PathBuf>,
    /// A remark that does not fail the step.
    info: String,
    note: String,
}

impl Step {
    fn verdict(&self) -> (bool, Vec<String>) {
        let mut why = Vec::new();
        if self.out.streams < self.calls as usize || self.sipp_failed > 0 {
            why.push(format!(
                "{} of {} streams, {} failed calls",
                self.out.streams, self.calls, self.sipp_failed
            ));
        }
        if self.out.p99 >= P99_LIMIT_MS {
            why.push(format!("p99 {:.2} ms ≥ {P99_LIMIT_MS} ms", self.out.p99));
        }
        if self.out.late + self.out.gaps > 0 {
            why.push(format!(
                "{} late frames (>40 ms) and {} missing",
                self.out.late, self.out.gaps
            ));
        }
        if self.machine_pct >= SATURATED_PCT {
            why.push(format!("machine CPU {:.0} % (saturated)", self.machine_pct));
        }
        if !self.note.is_empty() {
            why.push(self.note.clone());
        }
        (why.is_empty(), why)
    }
}

struct Ctx<'a> {
    daemon: &'a Daemon,
    reference: &'a Reference,
    scenario: &'a Path,
    window: Duration,
    keep_pcap: bool,
    /// The daemon's RSS before the first call (memory is kept by the allocator between steps).
    daemon_rss_start_kib: u64,
}

fn run_step(cx: &Ctx, engine: Engine, n: u32) -> Step {
    let mut st = Step {
        calls: n,
        ..Default::default()
    };
    let (target, pid) = match engine {
        Engine::Ours => (cx.daemon.addr.clone(), cx.daemon.proc.pid()),
        Engine::Reference => (cx.reference.addr.clone(), cx.reference.proc.pid()),
    };
    st.rss_idle_kib = match engine {
        Engine::Ours => cx.daemon_rss_start_kib,
        Engine::Reference => proc_status_kb(pid, "VmRSS").unwrap_or(0),
    };
    let ramp = Duration::from_secs_f64(f64::from(n) / SETUP_RATE);
    // Every call is held long enough that all N overlap for the whole window.
    let hold =
        ramp + Duration::from_millis(2500) + SETTLE + cx.window + Duration::from_millis(1500);
    let uac_port = free_port_block(6);
    let uac_media = uac_port + 2;
    let mut uac = SippUac::new(&target)
        .scenario(cx.scenario)
        .calls(n)
        .rate(SETUP_RATE)
        .max_concurrent(n)
        .call_duration(hold)
        .timeout(hold + ramp + Duration::from_secs(40));
    uac.local_port = Some(uac_port);
    let sipp = std::thread::spawn(move || Sipp::run_uac(&uac));

    // All calls up?
    let t_start = Instant::now();
    match engine {
        Engine::Ours => {
            let up = poll_until(ramp * 2 + Duration::from_secs(8), || {
                let a = cx.daemon.active_calls()?;
                (a >= u64::from(n)).then_some(a)
            });
            if up.is_none() {
                st.note = format!(
                    "only {:?} calls came up within {:?}",
                    cx.daemon.active_calls(),
                    t_start.elapsed()
                );
            }
        }
        Engine::Reference => std::thread::sleep(ramp + Duration::from_millis(800)),
    }
    let probe = Probe::start();
    let probe_port = probe.port;
    let filter = match engine {
        Engine::Ours => format!(
            "udp and (src portrange {RTP_MIN}-{RTP_MAX} or src port {uac_media} or src port {probe_port})"
        ),
        Engine::Reference => format!(
            "udp and (src port {} or src port {uac_media} or src port {probe_port})",
            cx.reference.media_port
        ),
    };
    let mut cap = Capture::start(&filter);
    std::thread::sleep(SETTLE);

    // The window.
    let sipp_pids = child_pids("sipp", &[cx.reference.proc.pid()]);
    let dump_pids = child_pids("dumpcap", &[]);
    let w0 = now_epoch();
    let i0 = Instant::now();
    let c0 = proc_cpu(pid).unwrap_or_default();
    let th0 = threads(pid);
    let m0 = machine_cpu();
    let s0 = cpu_sum(&sipp_pids);
    let d0 = cpu_sum(&dump_pids);
    std::thread::sleep(cx.window);
    let c1 = proc_cpu(pid).unwrap_or_default();
    let th1 = threads(pid);
    let m1 = machine_cpu();
    let s1 = cpu_sum(&sipp_pids);
    let d1 = cpu_sum(&dump_pids);
    let w1 = now_epoch();
    let secs = i0.elapsed().as_secs_f64();
    st.rss_kib = proc_status_kb(pid, "VmRSS").unwrap_or(0);
    if engine == Engine::Ours {
        st.up = cx.daemon.active_calls().unwrap_or(0);
        if st.up < u64::from(n) && st.note.is_empty() {
            st.note = format!("only {} calls up at the window's end", st.up);
        }
    }
    cap.stop();
    probe.stop();
    st.window_s = secs;
    st.cpu_pct = (c1.cpu_s - c0.cpu_s) / secs * 100.0;
    st.busiest_thread_pct = th1
        .iter()
        .map(|(tid, (ns, _))| ns - th0.get(tid).map(|t| t.0).unwrap_or(0))
        .max()
        .unwrap_or(0) as f64
        / 1e9
        / secs
        * 100.0;
    let invol: u64 = th1
        .iter()
        .map(|(tid, (_, c))| c - th0.get(tid).map(|t| t.1).unwrap_or(0).min(*c))
        .sum();
    st.invol_per_s = invol as f64 / secs;
    let (busy, soft, total) = (m1.0 - m0.0, m1.1 - m0.1, (m1.2 - m0.2).max(1));
    st.machine_pct = busy as f64 / total as f64 * 100.0;
    st.softirq_pct = soft as f64 / total as f64 * 100.0;
    st.sipp_uac_pct = (s1 - s0) / secs * 100.0;
    st.dumpcap_pct = (d1 - d0) / secs * 100.0;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    st.foreign_pct = ((st.machine_pct * cores
        - st.cpu_pct
        - st.sipp_uac_pct
        - st.dumpcap_pct
        - st.softirq_pct * cores)
        / cores)
        .max(0.0);

    let pkts = read_pcap(cap.pcap());
    let input: Vec<&Pkt> = pkts.iter().filter(|p| p.src == uac_media).collect();
    let probe_pkts: Vec<&Pkt> = pkts.iter().filter(|p| p.src == probe_port).collect();
    let out: Vec<&Pkt> = pkts
        .iter()
        .filter(|p| match engine {
            Engine::Ours => (RTP_MIN..=RTP_MAX).contains(&p.src),
            Engine::Reference => p.src == cx.reference.media_port,
        })
        .collect();
    // Skip a few ms at the edges so the capture start/stop cannot cut an interval.
    let (a, b) = (w0 + 0.005, w1 - 0.005);
    st.out = match engine {
        // Ours: one flow per call (daemon port → sipp's media port); RTP ports are even.
        Engine::Ours => pacing(
            &out.into_iter()
                .filter(|p| p.src % 2 == 0)
                .collect::<Vec<_>>(),
            a,
            b,
            |p| (p.src, p.ssrc),
        ),
        // sipp echoes every call through one socket: calls differ by SSRC.
        Engine::Reference => pacing(&out, a, b, |p| (0, p.ssrc)),
    };
    st.input = pacing(&input, a, b, |p| (p.dst, p.ssrc));
    st.probe = pacing(&probe_pkts, a, b, |p| (p.src, p.ssrc));
    drop(pkts);
    if cx.keep_pcap {
        st.pcap = Some(cap.keep());
    } else {
        drop(cap);
    }

    match sipp.join() {
        Ok(r) => {
            st.sipp_ok = r.successful;
            st.sipp_failed = r.failed;
            if r.successful + r.failed < u64::from(n) && st.note.is_empty() {
                st.note = format!("sipp finished only {} calls", r.successful + r.failed);
            }
        }
        Err(_) => {
            st.note = "sipp run failed (see its panic above)".into();
            st.sipp_failed = u64::from(n);
        }
    }
    if engine == Engine::Ours {
        // Calls (and their recordings) end before the next step.
        let idle = poll_until(Duration::from_secs(20), || {
            (cx.daemon.active_calls()? == 0).then_some(())
        });
        if idle.is_none() && st.note.is_empty() {
            st.note = "calls still up 20 s after the callers left".into();
        }
        st.recordings = cx.daemon.recordings();
    }
    st
}

fn fmt_row(engine: &str, s: &Step) -> String {
    let (ok, why) = s.verdict();
    format!(
        "| {} | {} | {}/{} | {:.2} / {:.2} / {:.2} | {} / {} | {} | {:.1} % | {} | {:.1} MiB | {:.0} % ({:.0} % other) | {:.2} / {:.2} / {} | {:.2} / {:.2} | {} |",
        s.calls,
        engine,
        s.out.streams,
        s.calls,
        s.out.p50,
        s.out.p99,
        s.out.max,
        s.out.late,
        s.out.gaps,
        s.out.bursts,
        s.cpu_pct,
        if s.calls > 0 {
            format!("{:.2} %", s.cpu_pct / f64::from(s.calls))
        } else {
            "-".into()
        },
        s.rss_kib as f64 / 1024.0,
        s.machine_pct,
        s.foreign_pct,
        s.input.p99,
        s.input.max,
        s.input.bursts,
        s.probe.p99,
        s.probe.max,
        match (ok, s.info.is_empty()) {
            (true, true) => "pass".to_string(),
            (true, false) => format!("pass ({})", s.info),
            (false, true) => format!("FAIL: {}", why.join("; ")),
            (false, false) => format!("FAIL: {} ({})", why.join("; "), s.info),
        }
    )
}

fn fmt_diag(engine: &str, s: &Step) -> String {
    format!(
        "| {} | {} | {:.2} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} | {} | {:+.0} / {:.0} | {:+.0} | {:.0} % / {:.0} % | {:.0} % | {:.0} | {:.1} % | {:.1} % | {:.1} % | {:.0} % | {} |",
        s.calls,
        engine,
        s.out.p999,
        s.out.late_p50,
        s.out.late_p99,
        s.out.late_max,
        s.probe.late_p99,
        s.probe.late_max,
        s.out.ts_jumps,
        s.out.drift_med_ppm,
        s.out.drift_max_ppm,
        s.input.drift_med_ppm,
        s.out.phase_peak * 100.0,
        s.input.phase_peak * 100.0,
        s.busiest_thread_pct,
        s.invol_per_s,
        s.softirq_pct,
        s.sipp_uac_pct,
        s.dumpcap_pct,
        s.out.audible * 100.0,
        if engine == "edgevoiced" {
            format!(
                "{:.0} KiB",
                (s.rss_kib as f64 - s.rss_idle_kib as f64) / f64::from(s.calls.max(1))
            )
        } else {
            "-".into()
        },
    )
}

/// One step: our daemon, then the reference, under the same load.
fn run_pair(cx: &Ctx, n: u32) -> (Step, Step) {
    eprintln!("step {n} calls: edgevoiced ...");
    let mut ours = run_step(cx, Engine::Ours, n);
    if !ours.verdict().0 && ours.foreign_pct > FOREIGN_RETRY_PCT {
        eprintln!(
            "  failed with {:.0} % of the machine busy with other work; retrying once",
            ours.foreign_pct
        );
        if let Some(p) = &ours.pcap {
            eprintln!(
                "pcap kept: {n} calls, edgevoiced, first run: {}",
                p.display()
            );
        }
        let retry = run_step(cx, Engine::Ours, n);
        ours = Step {
            info: format!(
                "second run; the first failed ({}) with {:.0} % of the machine busy with other work",
                ours.verdict().1.join("; "),
                ours.foreign_pct
            ),
            ..retry
        };
    }
    eprintln!(
        "  edgevoiced: {} streams, p99 {:.2} ms, max {:.2} ms, late {} gaps {}, CPU {:.1} %, machine {:.0} %{}",
        ours.out.streams,
        ours.out.p99,
        ours.out.max,
        ours.out.late,
        ours.out.gaps,
        ours.cpu_pct,
        ours.machine_pct,
        if ours.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", ours.note)
        }
    );
    eprintln!("step {n} calls: sipp rtp_echo ...");
    let theirs = run_step(cx, Engine::Reference, n);
    eprintln!(
        "  sipp echo: {} streams, p99 {:.2} ms, max {:.2} ms, late {} gaps {}, CPU {:.1} %",
        theirs.out.streams,
        theirs.out.p99,
        theirs.out.max,
        theirs.out.late,
        theirs.out.gaps,
        theirs.cpu_pct
    );
    (ours, theirs)
}

fn main() {
    let started = Instant::now();
    let steps: Vec<u32> = std::env::var("BENCH_MEDIA_STEPS")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 200, 400, 600, 800]);
    let window = Duration::from_secs_f64(
        std::env::var("BENCH_MEDIA_WINDOW_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(6.0),
    );
    let dir = tempfile::Builder::new()
        .prefix("ev-media-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let audio_path = dir.path().join("caller.ulaw");
    caller_audio(&audio_path);
    let scenario = dir.path().join("uac_media_stream.xml");
    let tmpl = std::fs::read_to_string(peers::peers_dir().join("sipp/uac_media_stream.xml.tmpl"))
        .expect("scenario template");
    std::fs::write(
        &scenario,
        tmpl.replace("@@AUDIO@@", &audio_path.to_string_lossy()),
    )
    .expect("scenario");

    let mut daemon = start_daemon(dir.path());
    let mut reference = start_reference();
    let rss_start = proc_status_kb(daemon.proc.pid(), "VmRSS").unwrap_or(0);
    eprintln!(
        "edgevoiced pid {} on {}, RSS {} KiB; sipp UAS rtp_echo on {} (media {})",
        daemon.proc.pid(),
        daemon.addr,
        rss_start,
        reference.addr,
        reference.media_port
    );
    let cx = Ctx {
        daemon: &daemon,
        reference: &reference,
        scenario: &scenario,
        window,
        keep_pcap: std::env::var_os("BENCH_MEDIA_KEEP_PCAP").is_some(),
        daemon_rss_start_kib: rss_start,
    };

    let mut results: Vec<(Step, Step)> = Vec::new();
    let mut stopped_by = String::new();
    let mut queue: std::collections::VecDeque<u32> = steps.iter().copied().collect();
    let mut refined = false;
    while let Some(n) = queue.pop_front() {
        // Both runs of a step: two ramps up and down, settle, window, call teardown.
        let estimate = Duration::from_secs_f64(
            2.0 * (2.0 * f64::from(n) / SETUP_RATE + window.as_secs_f64() + 8.0),
        );
        if started.elapsed() + estimate > STEP_BUDGET {
            stopped_by = format!(
                "time budget: {n} calls and above were not run ({:.0} s used)",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        let (ours, theirs) = run_pair(&cx, n);
        let failed = !ours.verdict().0;
        let last_pass = results
            .iter()
            .filter(|(o, _)| o.verdict().0)
            .map(|(o, _)| o.calls)
            .max();
        results.push((ours, theirs));
        if failed {
            stopped_by = format!("first failing step: {n} calls");
            // One refinement halfway between the last passing step and this one.
            if let Some(p) = last_pass.filter(|p| !refined && n - p >= 100) {
                let mid = (p + n) / 2 / 50 * 50;
                if mid > p {
                    refined = true;
                    queue.clear();
                    queue.push_back(mid);
                    continue;
                }
            }
            break;
        }
        if refined {
            break;
        }
    }
    if stopped_by.is_empty() {
        stopped_by = "every step passed: the limit is above the largest step".into();
    }
    results.sort_by_key(|(o, _)| o.calls);
    for (o, r) in &results {
        for (name, st) in [("edgevoiced", o), ("sipp echo", r)] {
            if let Some(p) = &st.pcap {
                eprintln!("pcap kept: {} calls, {name}: {}", st.calls, p.display());
            }
        }
    }
    let rss_end = proc_status_kb(daemon.proc.pid(), "VmRSS").unwrap_or(0);
    let hwm = proc_status_kb(daemon.proc.pid(), "VmHWM").unwrap_or(0);
    let daemon_alive = daemon.proc.exited().is_none();
    let (rec_files, rec_bytes) = std::fs::read_dir(daemon.state.join("recordings"))
        .map(|rd| {
            rd.flatten().fold((0usize, 0u64), |(n, b), e| {
                (n + 1, b + e.metadata().map(|m| m.len()).unwrap_or(0))
            })
        })
        .unwrap_or((0, 0));
    let calls_made: u32 = results.iter().map(|(o, _)| o.calls).sum();
    daemon.proc.stop();
    reference.proc.stop();

    let best = results
        .iter()
        .filter(|(o, _)| o.verdict().0)
        .map(|(o, _)| o)
        .max_by_key(|o| o.calls);
    let best_calls = best.map(|b| b.calls).unwrap_or(0);
    let limit = results
        .iter()
        .map(|(o, _)| o)
        .filter(|o| !o.verdict().0 && o.calls > best_calls)
        .min_by_key(|o| o.calls)
        .map(|o| {
            format!(
                "the limit lies between {best_calls} (pass) and {} calls (fail: {})",
                o.calls,
                o.verdict().1.join("; ")
            )
        })
        .unwrap_or_else(|| "no failing step above the largest passing one".into());

    let mut md = String::new();
    md.push_str(&format!(
        "## Media calls on the real daemon: echo + recording, 20 ms PCMU, sipp callers on loopback\n\n\
{} cores; each step: N calls set up at {SETUP_RATE:.0}/s by one sipp UAC streaming RTP (rtp_stream) on every call; \
after all N are up, {:.0} s settle (prompt ends, echo everywhere), then a {:.0} s window captured on lo. \
Jitter = |inter-departure interval − 20 ms| over every outgoing interval of every stream; late = intervals \
> 40 ms / missing sequence numbers; bursts = intervals < 10 ms. CPU = the engine process's utime+stime \
(100 % = one core); machine = both cores busy, load generator and capture included. \
Caller input = the same statistics for the sipp callers' own RTP (what both engines receive). \
Noise floor = one plain OS thread pacing one 20 ms stream with sleeps to absolute deadlines, captured in the same \
window under the same load (what the machine, loopback and capture allow). \
Pass: all streams up, p99 < {P99_LIMIT_MS} ms, no late or missing frames, machine < {SATURATED_PCT:.0} %.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        SETTLE.as_secs_f64(),
        window.as_secs_f64(),
    ));
    md.push_str("| calls | engine | streams | out jitter p50 / p99 / max (ms) | late / missing | bursts | CPU | CPU per call | RSS | machine (other people's load) | caller input jitter p99 / max (ms) / bursts | noise floor jitter p99 / max (ms) | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (o, r) in &results {
        md.push_str(&fmt_row("edgevoiced", o));
        md.push('\n');
        md.push_str(&fmt_row("sipp UAS -rtp_echo (reference)", r));
        md.push('\n');
    }
    md.push_str("\n### Diagnostics\n\n\
p99.9 of jitter; lateness = how far each departure is behind its stream's ideal slot (a line fitted through \
the stream's departures, shifted onto its earliest one; timer granularity shows as a uniform 0–1 ms spread); RTP timestamp \
jumps (skipped ticks); drift = the streams' frame period against the capture clock (regression, signed median / worst \
magnitude, ppm; + = slower than 20 ms; the callers' for comparison); phase peak = share of all departures in the busiest \
1 ms of the 20 ms cycle (5 % = phases spread evenly; out / caller input); busiest thread of the engine; involuntary context switches of \
the engine per second; softirq share of the machine; sipp UAC and dumpcap CPU; share of outgoing frames with audio \
(echo working); RSS growth per call over the idle daemon.\n\n\
| calls | engine | jitter p99.9 (ms) | lateness vs own 20 ms grid p50 / p99 / max (ms) | noise floor lateness p99 / max (ms) | ts jumps | drift out median / worst (ppm) | drift in (ppm) | phase peak out / in | busiest thread | invol. cs/s | softirq | sipp UAC | dumpcap | audible frames | RSS per call |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (o, r) in &results {
        md.push_str(&fmt_diag("edgevoiced", o));
        md.push('\n');
        md.push_str(&fmt_diag("sipp echo", r));
        md.push('\n');
    }
    md.push('\n');
    match best {
        Some(b) => md.push_str(&format!(
            "**Largest passing concurrency: {} calls** (p99 {:.2} ms, max {:.2} ms; CPU {:.1} % of one core = {:.2} % per call; RSS {:.1} MiB, {:.0} KiB per call over idle).\n\n",
            b.calls,
            b.out.p99,
            b.out.max,
            b.cpu_pct,
            b.cpu_pct / f64::from(b.calls),
            b.rss_kib as f64 / 1024.0,
            (b.rss_kib as f64 - b.rss_idle_kib as f64) / f64::from(b.calls)
        )),
        None => md.push_str("**No step passed.**\n\n"),
    }
    md.push_str(&format!(
        "Limit: {limit} ({stopped_by}). Daemon RSS: {:.1} MiB idle at start, {:.1} MiB at the end, peak {:.1} MiB; {}. \
Recordings: {rec_files} WAV files ({:.0} MiB) for the {calls_made} calls of the steps shown.\n",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        hwm as f64 / 1024.0,
        if daemon_alive {
            "daemon alive throughout"
        } else {
            "DAEMON EXITED during the run"
        },
        rec_bytes as f64 / 1048576.0
    ));
    println!("{md}");
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir).expect("bench dir");
    std::fs::write(out_dir.join("media_calls.md"), &md).expect("write results");
    println!(
        "written to target/bench/media_calls.md ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
}
