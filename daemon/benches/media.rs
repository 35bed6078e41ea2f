//! Media engine benchmark: CPU time per call-second of one `MediaSession` doing everything a
//! live call does (agent audio queued at 22050 Hz and resampled to the codec rate, encoded and
//! sent every 20 ms; the caller's RTP received with network jitter, jitter-buffered, decoded
//! and handed out as frames; RTCP), for PCMU and G.722, and how many such calls one core keeps
//! up with in real time, checked by running that many interleaved on one thread.
//! Prints a table and writes it to target/bench/media.md.
//!
//! CPU time is the thread's own (Linux schedstat, ns), so other load on a shared machine
//! does not count against us; wall time is the fallback elsewhere.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edgevoice::telephony::codec::{Codec, Direction, Negotiated};
use edgevoice::telephony::media::{MediaConfig, MediaEvent, MediaSession, Resampler, TransmitKind};

const TTS_RATE: u32 = 22050;
const PEER: &str = "192.0.2.10:40000";

fn negotiated(codec: Codec) -> Negotiated {
    Negotiated {
        codec,
        payload_type: codec.static_payload_type(),
        dtmf_payload_type: Some(101),
        ptime_ms: 20,
        remote_rtp: PEER.parse().unwrap(),
        remote_rtcp: "192.0.2.10:40001".parse().unwrap(),
        direction: Direction::SendRecv,
    }
}

/// Thread CPU time, from /proc (ns resolution); wall time where that is missing.
struct CpuClock {
    wall: Instant,
}

impl CpuClock {
    fn start() -> Self {
        CpuClock {
            wall: Instant::now(),
        }
    }

    fn thread_cpu_ns() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        s.split_whitespace().next()?.parse().ok()
    }

    fn measure<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
        let c = CpuClock::start();
        let cpu0 = Self::thread_cpu_ns();
        let out = f();
        let wall = c.wall.elapsed();
        let cpu = match (cpu0, Self::thread_cpu_ns()) {
            (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
            _ => wall,
        };
        (out, cpu, wall)
    }
}

/// Speech-like test signal at the TTS rate: a gliding, amplitude-modulated harmonic tone.
fn tts_audio(secs: u32) -> Vec<i16> {
    let n = (TTS_RATE * secs) as usize;
    let mut phase = 0f64;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(TTS_RATE);
            let f0 = 120.0 + 40.0 * (t * 0.7).sin();
            phase += 2.0 * std::f64::consts::PI * f0 / f64::from(TTS_RATE);
            let env = 0.5 + 0.5 * (t * 3.0).sin().abs();
            let s: f64 = (1..8)
                .map(|h| (phase * f64::from(h)).sin() / f64::from(h))
                .sum();
            (6000.0 * env * s) as i16
        })
        .collect()
}

/// The caller's RTP for `secs` seconds, made by a peer session: (send offset, datagram).
fn peer_stream(codec: Codec, secs: u32) -> Vec<(Duration, Vec<u8>)> {
    let t0 = Instant::now();
    let mut cfg = MediaConfig::new(negotiated(codec), 7);
    cfg.media_timeout = None;
    let mut peer = MediaSession::new(cfg, t0).unwrap();
    let audio = tts_audio(secs);
    peer.queue_audio(&audio, TTS_RATE).unwrap();
    let mut out = Vec::new();
    let end = t0 + Duration::from_secs(u64::from(secs));
    while let Some(t) = peer.poll_timeout() {
        if t >= end {
            break;
        }
        peer.handle_timeout(t);
        while let Some(tx) = peer.poll_transmit() {
            if tx.kind == TransmitKind::Rtp {
                out.push((t - t0, tx.data));
            }
        }
        while peer.poll_event().is_some() {}
    }
    out
}

/// One simulated call: its session, the caller's packets (arrival offset, index into the shared
/// stream) and progress. Packets and TTS audio are shared, so thousands of calls fit in memory.
struct Call<'a> {
    s: MediaSession,
    stream: &'a [(Duration, Vec<u8>)],
    arrivals: Vec<(Duration, usize)>,
    next: usize,
    tts: &'a [i16],
    tts_pos: usize,
    frames: u64,
    from: SocketAddr,
}

impl<'a> Call<'a> {
    fn new(
        codec: Codec,
        t0: Instant,
        seed: u64,
        stream: &'a [(Duration, Vec<u8>)],
        tts: &'a [i16],
    ) -> Self {
        let mut cfg = MediaConfig::new(negotiated(codec), seed);
        cfg.media_timeout = Some(Duration::from_secs(30));
        // Deterministic 20-60 ms network delay: exercises reordering and adaptation.
        let mut state = seed;
        let mut arrivals: Vec<(Duration, usize)> = stream
            .iter()
            .enumerate()
            .map(|(i, (at, _))| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let delay = 20 + (state >> 33) % 41;
                (*at + Duration::from_millis(delay), i)
            })
            .collect();
        arrivals.sort_by_key(|a| a.0);
        Call {
            s: MediaSession::new(cfg, t0).unwrap(),
            stream,
            arrivals,
            next: 0,
            tts,
            tts_pos: 0,
            frames: 0,
            from: PEER.parse().unwrap(),
        }
    }

    /// Advances the call to `now` (offset `at` from its start), as the shell would.
    fn step(&mut self, t0: Instant, at: Duration) {
        let now = t0 + at;
        // The agent "speaks" a 1 s sentence whenever less than 200 ms is left.
        if self.s.queued_ms() < 200 && self.tts_pos < self.tts.len() {
            let end = (self.tts_pos + TTS_RATE as usize).min(self.tts.len());
            self.s
                .queue_audio(&self.tts[self.tts_pos..end], TTS_RATE)
                .unwrap();
            self.tts_pos = end;
        }
        while let Some(&(arr, i)) = self.arrivals.get(self.next) {
            if arr > at {
                break;
            }
            self.s.handle_rtp(t0 + arr, self.from, &self.stream[i].1);
            self.next += 1;
        }
        while self.s.poll_timeout().is_some_and(|d| d <= now) {
            self.s.handle_timeout(now);
        }
        while let Some(tx) = self.s.poll_transmit() {
            std::hint::black_box(&tx);
        }
        while let Some(e) = self.s.poll_event() {
            if let MediaEvent::AudioFrame { pcm, .. } = &e {
                self.frames += 1;
                std::hint::black_box(pcm);
            }
        }
    }
}

/// Counts live heap bytes, for the memory each call holds.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Run {
    cpu: Duration,
    frames: u64,
    /// Heap the calls hold, per call.
    kib_per_call: usize,
}

/// Runs `n` calls interleaved on this thread for `secs` simulated seconds, in 20 ms steps
/// (every call is stepped at every tick, as a shell serving them all would).
fn run_calls(
    codec: Codec,
    n: usize,
    secs: u32,
    stream: &[(Duration, Vec<u8>)],
    tts: &[i16],
) -> Run {
    let t0 = Instant::now();
    let heap0 = LIVE_BYTES.load(Ordering::Relaxed);
    let mut calls: Vec<Call> = (0..n)
        .map(|i| Call::new(codec, t0, 1000 + i as u64, stream, tts))
        .collect();
    // Step once so every session has allocated its working buffers.
    for c in calls.iter_mut() {
        c.step(t0, Duration::ZERO);
    }
    // Minus this harness's own per-call packet schedule.
    let harness: usize = calls
        .iter()
        .map(|c| c.arrivals.capacity() * std::mem::size_of::<(Duration, usize)>())
        .sum();
    let kib_per_call = LIVE_BYTES
        .load(Ordering::Relaxed)
        .saturating_sub(heap0 + harness)
        / n
        / 1024;
    let ticks = secs * 50;
    let ((), cpu, _) = CpuClock::measure(|| {
        for k in 1..=ticks {
            let at = Duration::from_millis(20 * u64::from(k));
            for c in calls.iter_mut() {
                c.step(t0, at);
            }
        }
    });
    let frames = calls.iter().map(|c| c.frames).sum();
    Run {
        cpu,
        frames,
        kib_per_call,
    }
}

fn resampler_cost(to: u32, secs: u32, tts: &[i16]) -> Duration {
    let (_, cpu, _) = CpuClock::measure(|| {
        let mut r = Resampler::new(TTS_RATE, to).unwrap();
        let mut out = Vec::new();
        for _ in 0..secs {
            for chunk in tts[..TTS_RATE as usize].chunks(441) {
                out.clear();
                r.process(chunk, &mut out).unwrap();
                std::hint::black_box(&out);
            }
        }
    });
    cpu
}

fn main() {
    // Enough call-seconds that the CPU clock's granularity does not matter.
    let (cost_calls, cost_secs) = (50, 30);
    let check_secs = 5;
    let tts = tts_audio(cost_secs);
    let mut rows = Vec::new();

    for codec in [Codec::Pcmu, Codec::G722] {
        let stream = peer_stream(codec, cost_secs);
        run_calls(codec, 5, 2, &stream, &tts); // warm-up: page faults, FFT plans
        let cost = run_calls(codec, cost_calls, cost_secs, &stream, &tts);
        let call_seconds = (cost_calls * cost_secs as usize) as u32;
        assert!(
            cost.frames >= u64::from(call_seconds) * 50,
            "every tick handed out a frame"
        );
        let per_call_second = cost.cpu / call_seconds;
        let capacity = (1.0 / per_call_second.as_secs_f64()).floor() as usize;
        // Check at 80% of that, all on one thread (capped to fit memory and time here).
        let n = (capacity * 4 / 5).clamp(1, 3000);
        let check = run_calls(codec, n, check_secs, &stream, &tts);
        let core_per_second = check.cpu.as_secs_f64() / f64::from(check_secs);
        let resample = resampler_cost(codec.sample_rate(), 300, &tts) / 300;
        rows.push((
            codec,
            per_call_second,
            capacity,
            n,
            core_per_second,
            check.kib_per_call,
            resample,
        ));
    }

    let mut table = String::new();
    table.push_str("# Media engine benchmark\n\n");
    table.push_str(
        "One `MediaSession` per call: agent audio at 22050 Hz resampled to the codec rate, encoded \
         and sent every 20 ms; caller RTP with 20-60 ms network jitter received, jitter-buffered, \
         decoded and handed out as 20 ms frames; RTCP. CPU time is this thread's own \
         (release build, one thread).\n\n",
    );
    table.push_str(
        "| codec | CPU per call-second | of which resampling | calls per core (computed) | check: calls on one thread | core time per real second | memory per call |\n",
    );
    table.push_str("|---|---|---|---|---|---|---|\n");
    for (codec, per, cap, n, rt, kib, resample) in &rows {
        table.push_str(&format!(
            "| {codec} | {:.0} µs | {:.0} µs | {cap} | {n} | {rt:.2} s | {kib} KiB |\n",
            per.as_secs_f64() * 1e6,
            resample.as_secs_f64() * 1e6,
        ));
    }
    table.push_str(
        "\nComputed: one core's second divided by the CPU per call-second. Check: 80% of that many \
         calls stepped together for 5 simulated seconds; a core time per real second under 1.00 s \
         means they keep up in real time. ASR, LLM and TTS are not included.\n",
    );
    print!("{table}");
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("media.md"), &table).unwrap();
    println!("written to target/bench/media.md");
}
