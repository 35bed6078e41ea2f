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
//! Per stream: inter-departure intervals, jitter = |interval − 20 ms|, late frames (interval
//! > 40 ms, or missing sequence numbers), bursts (interval < 10 ms), drift. CPU is the daemon's
//! utime+stime over the window (/proc), RSS its VmRSS at the window's end.
//!
//! Reference beside ours: sipp's own UAS answering the same load with `-rtp_echo` (a
//! recvfrom/sendto loop on one socket: no codec, no jitter buffer, no clock, no recording). Its
//! outgoing pacing is the callers' pacing plus one hop of scheduling, i.e. the noise floor of
//! the load generator, loopback and capture.
//!
//! Steps 10, 25, 50, 100, 150, 200, 300, 400 calls (BENCH_MEDIA_STEPS="10,25,..." overrides),
//! stopping after the first step that fails; window BENCH_MEDIA_WINDOW_SECS (default 8 s).
//! Prints markdown tables and writes them to target/bench/media_calls.md.

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
/// Calls set up per second by sipp.
const SETUP_RATE: f64 = 100.0;
/// After all calls are up: the prompt (1.5 s of tones) ends and echo runs everywhere.
const SETTLE: Duration = Duration::from_secs(2);
/// Whole-run budget for starting new steps (the brief: ~6 minutes in all).
const STEP_BUDGET: Duration = Duration::from_secs(290);
/// Pass criteria.
const P99_LIMIT_MS: f64 = 2.0;
const LATE_MS: f64 = 40.0;
const BURST_MS: f64 = 10.0;
/// Whole-machine CPU (both cores) above this during the window counts as saturated.
const SATURATED_PCT: f64 = 95.0;

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
        if pt >= 72 && pt <= 76 {
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
    /// Median and worst |rate error| of the streams against the capture clock, ppm.
    drift_med_ppm: f64,
    drift_max_ppm: f64,
    /// Share of packets in the busiest 0.1 ms slice of the (wall-clock) millisecond; 10 % if
    /// departures were spread evenly over the millisecond.
    ms_phase_peak: f64,
    /// Share of packets carrying audio (not G.711 silence).
    audible: f64,
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
    let mut phase = [0usize; 10];
    let mut audible = 0usize;
    // Streams with only a few packets are strays (a call ending or starting at the edge).
    let min_packets = ((w1 - w0) * 1000.0 / PTIME_MS * 0.5) as usize;
    for (_, mut v) in by {
        if v.len() < min_packets.max(2) {
            continue;
        }
        v.sort_by(|a, b| a.t.partial_cmp(&b.t).unwrap());
        r.streams += 1;
        r.packets += v.len();
        for p in &v {
            let us = (p.t * 1e6).round() as u64;
            phase[((us % 1000) / 100) as usize] += 1;
            audible += usize::from(p.audible);
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
        let (first, last) = (v[0], v[v.len() - 1]);
        let frames = f64::from(last.seq.wrapping_sub(first.seq));
        if frames > 50.0 {
            let ppm = ((last.t - first.t) * 1000.0 / (frames * PTIME_MS) - 1.0) * 1e6;
            drifts.push(ppm.abs());
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
    r.drift_max_ppm = drifts.last().copied().unwrap_or(0.0);
    r.ms_phase_peak = *phase.iter().max().unwrap() as f64 / r.packets.max(1) as f64;
    r.audible = audible as f64 / r.packets.max(1) as f64;
    r
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
    recordings: usize,
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
    st.rss_idle_kib = proc_status_kb(pid, "VmRSS").unwrap_or(0);
    let ramp = Duration::from_secs_f64(f64::from(n) / SETUP_RATE);
    // Every call is held long enough that all N overlap for the whole window.
    let hold = ramp + Duration::from_secs(5) + SETTLE + cx.window + Duration::from_millis(1500);
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
    let filter = match engine {
        Engine::Ours => {
            format!("udp and (src portrange {RTP_MIN}-{RTP_MAX} or src port {uac_media})")
        }
        Engine::Reference => format!(
            "udp and (src port {} or src port {uac_media})",
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

    let pkts = read_pcap(cap.pcap());
    let (out, input): (Vec<&Pkt>, Vec<&Pkt>) = pkts.iter().partition(|p| p.src != uac_media);
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
    drop(cap);

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
        "| {} | {} | {}/{} | {:.2} / {:.2} / {:.2} | {} / {} | {} | {:.1} % | {} | {:.1} MiB | {:.0} % | {:.2} / {:.2} | {} |",
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
        s.input.p99,
        s.input.max,
        if ok {
            "pass".to_string()
        } else {
            format!("FAIL: {}", why.join("; "))
        }
    )
}

fn fmt_diag(engine: &str, s: &Step) -> String {
    format!(
        "| {} | {} | {:.2} | {} | {:.0} / {:.0} | {:.0} % | {:.0} % | {:.0} % | {:.0} | {:.0} % | {:.1} % | {:.1} % | {:.0} % | {} |",
        s.calls,
        engine,
        s.out.p999,
        s.out.ts_jumps,
        s.out.drift_med_ppm,
        s.out.drift_max_ppm,
        s.out.ms_phase_peak * 100.0,
        s.input.ms_phase_peak * 100.0,
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

fn main() {
    let started = Instant::now();
    let steps: Vec<u32> = std::env::var("BENCH_MEDIA_STEPS")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 25, 50, 100, 150, 200, 300, 400]);
    let window = Duration::from_secs_f64(
        std::env::var("BENCH_MEDIA_WINDOW_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(8.0),
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
    };

    let mut results: Vec<(Step, Step)> = Vec::new();
    let mut stopped_by = String::new();
    for &n in &steps {
        if started.elapsed() > STEP_BUDGET {
            stopped_by = format!(
                "time budget: steps from {n} calls on were not run ({:.0} s used)",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        eprintln!("step {n} calls: edgevoiced ...");
        let ours = run_step(&cx, Engine::Ours, n);
        eprintln!(
            "  edgevoiced: {} streams, p99 {:.2} ms, max {:.2} ms, late {} gaps {}, CPU {:.1} %, machine {:.0} %{}",
            ours.out.streams, ours.out.p99, ours.out.max, ours.out.late, ours.out.gaps,
            ours.cpu_pct, ours.machine_pct,
            if ours.note.is_empty() { String::new() } else { format!(" ({})", ours.note) }
        );
        eprintln!("step {n} calls: sipp rtp_echo ...");
        let theirs = run_step(&cx, Engine::Reference, n);
        eprintln!(
            "  sipp echo: {} streams, p99 {:.2} ms, max {:.2} ms, late {} gaps {}, CPU {:.1} %",
            theirs.out.streams,
            theirs.out.p99,
            theirs.out.max,
            theirs.out.late,
            theirs.out.gaps,
            theirs.cpu_pct
        );
        let failed = !ours.verdict().0;
        results.push((ours, theirs));
        if failed {
            stopped_by = format!("first failing step: {n} calls");
            break;
        }
    }
    if stopped_by.is_empty() {
        stopped_by = "every step passed: the limit is above the largest step".into();
    }
    let rss_end = proc_status_kb(daemon.proc.pid(), "VmRSS").unwrap_or(0);
    let hwm = proc_status_kb(daemon.proc.pid(), "VmHWM").unwrap_or(0);
    let daemon_alive = daemon.proc.exited().is_none();
    daemon.proc.stop();
    reference.proc.stop();

    let best = results
        .iter()
        .filter(|(o, _)| o.verdict().0)
        .map(|(o, _)| o)
        .max_by_key(|o| o.calls);
    let limit = results
        .iter()
        .map(|(o, _)| o)
        .find(|o| !o.verdict().0)
        .map(|o| o.verdict().1.join("; "))
        .unwrap_or_else(|| "nothing within the steps run".into());

    let mut md = String::new();
    md.push_str(&format!(
        "## Media calls on the real daemon: echo + recording, 20 ms PCMU, sipp callers on loopback\n\n\
{} cores; each step: N calls set up at {SETUP_RATE:.0}/s by one sipp UAC streaming RTP (rtp_stream) on every call; \
after all N are up, {:.0} s settle (prompt ends, echo everywhere), then a {:.0} s window captured on lo. \
Jitter = |inter-departure interval − 20 ms| over every outgoing interval of every stream; late = intervals \
> 40 ms / missing sequence numbers; bursts = intervals < 10 ms. CPU = the engine process's utime+stime \
(100 % = one core); machine = both cores busy, load generator and capture included. \
Caller input = the same statistics for the sipp callers' own RTP (what both engines receive). \
Pass: all streams up, p99 < {P99_LIMIT_MS} ms, no late or missing frames, machine < {SATURATED_PCT:.0} %.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        SETTLE.as_secs_f64(),
        window.as_secs_f64(),
    ));
    md.push_str("| calls | engine | streams | out jitter p50 / p99 / max (ms) | late / missing | bursts | CPU | CPU per call | RSS | machine | caller input p99 / max (ms) | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (o, r) in &results {
        md.push_str(&fmt_row("edgevoiced", o));
        md.push('\n');
        md.push_str(&fmt_row("sipp UAS -rtp_echo (reference)", r));
        md.push('\n');
    }
    md.push_str("\n### Diagnostics\n\n\
p99.9 of jitter; RTP timestamp jumps (skipped ticks); drift of the streams' rate against the capture clock (median / worst, ppm); \
ms-phase peak = share of packets in the busiest 0.1 ms slice of the wall-clock millisecond (10 % = spread evenly; \
near 100 % = every departure on a common 1 ms grid); busiest thread of the engine; involuntary context switches of \
the engine per second; softirq share of the machine; sipp UAC and dumpcap CPU; share of outgoing frames with audio \
(echo working); RSS growth per call over the idle daemon.\n\n\
| calls | engine | p99.9 (ms) | ts jumps | drift (ppm) | ms-phase peak out | ms-phase peak in | busiest thread | invol. cs/s | softirq | sipp UAC | dumpcap | audible frames | RSS per call |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
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
        "Limit: {limit} ({stopped_by}). Daemon RSS: {:.1} MiB idle at start, {:.1} MiB at the end, peak {:.1} MiB; {}.\n",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        hwm as f64 / 1024.0,
        if daemon_alive { "daemon alive throughout" } else { "DAEMON EXITED during the run" }
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
