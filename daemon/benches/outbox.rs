//! Uplink outbox benchmark: durable appends per second (each on disk before it returns) against
//! the floor this disk allows (appending the same bytes to a file with fdatasync after each),
//! durable publish + PUBACK cycles (payload read, durable delete), recovery time, and the state
//! machine alone in memory. Prints a table and writes it to target/bench/outbox.md.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use edgevoice::store::Store;
use edgevoice::uplink::{DurableOutbox, Identity, Outbox, OutboxConfig, Stream};

const WALL_MS: u64 = 1_700_000_000_000;

fn payload(i: u64) -> Vec<u8> {
    format!(
        r#"{{"call_id":"01hx{i:022}","from":"+4420794600{:02}","to":"support","started_at_ms":{},"duration_s":61,"end_reason":"caller_hung_up","summary":"{}"}}"#,
        i % 100,
        WALL_MS + i,
        "x".repeat(200)
    )
    .into_bytes()
}

fn config() -> OutboxConfig {
    OutboxConfig {
        drain_rate: None,
        max_in_flight: 100,
        ..OutboxConfig::default()
    }
}

fn per_second(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn ms_each(n: u64, d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0 / n as f64
}

fn main() {
    let n: u64 = std::env::var("BENCH_OUTBOX_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let cycles: u64 = 200_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = Identity::new("bench-site", "bench-device").expect("identity");
    let sample_len = payload(0).len();

    let store = Store::open(dir.path()).expect("open store");
    let t0 = Instant::now();
    let mut outbox =
        DurableOutbox::open(&store, config(), identity.clone(), t0, WALL_MS).expect("open outbox");

    let t = Instant::now();
    for i in 0..n {
        let stream = if i % 4 == 3 {
            Stream::Telemetry
        } else {
            Stream::Calls
        };
        outbox
            .append(&store, stream, &payload(i), t0)
            .expect("append");
    }
    let appends = t.elapsed();

    drop(outbox);
    let t = Instant::now();
    let mut outbox =
        DurableOutbox::open(&store, config(), identity, t0, WALL_MS).expect("reopen outbox");
    let recovery = t.elapsed();
    assert_eq!(outbox.status(t0).queued_messages as u64, n);

    // Publish and PUBACK with a full window, as over a link with some latency.
    outbox.handle_connected();
    let t = Instant::now();
    let mut acked = 0;
    while acked < n {
        let mut sent = Vec::new();
        while let Some(p) = outbox.poll_publish(&store, t0).expect("publish") {
            sent.push(p.packet_id);
        }
        for packet_id in sent {
            outbox
                .handle_puback(&store, packet_id)
                .expect("puback")
                .expect("in flight");
            acked += 1;
        }
    }
    let durable_cycles = t.elapsed();
    assert_eq!(outbox.status(t0).queued_messages, 0);

    // The state machine alone: append, publish, PUBACK.
    let mut machine = Outbox::new(config(), t0, WALL_MS).expect("outbox");
    machine.handle_connected();
    let t = Instant::now();
    for i in 0..cycles {
        let now = t0 + Duration::from_micros(i);
        machine
            .append(Stream::Events, sample_len as u64, now)
            .expect("append");
        let p = machine.poll_publish(now).expect("publish");
        machine.handle_puback(p.packet_id).expect("puback");
    }
    let memory = t.elapsed();

    // The floor: the same bytes appended to a file with fdatasync after each write.
    let path = dir.path().join("floor.log");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("floor file");
    let bytes = payload(0);
    let t = Instant::now();
    for _ in 0..n {
        file.write_all(&bytes).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let floor = t.elapsed();

    let append_rate = per_second(n, appends);
    let floor_rate = per_second(n, floor);
    let table = format!(
        "## uplink outbox (sled 0.34.7), {n} messages of {sample_len} bytes\n\n\
| what | edgevoice | reference | ratio (our rate / reference rate) |\n|---|---|---|---|\n\
| durable append (on disk before it returns) | {:.0} /s ({:.3} ms each) | file append + fdatasync: {:.0} /s ({:.3} ms each) | {:.2} |\n\
| durable publish + PUBACK (payload read, delete flushed), window 100 | {:.0} /s ({:.3} ms each) | | |\n\
| reopen: rebuild the outbox from {n} stored messages | {:.1} ms | | |\n\
| state machine alone: append + publish + PUBACK, in memory | {:.0} /s ({:.2} µs each) | | |\n",
        append_rate,
        ms_each(n, appends),
        floor_rate,
        ms_each(n, floor),
        append_rate / floor_rate,
        per_second(n, durable_cycles),
        ms_each(n, durable_cycles),
        recovery.as_secs_f64() * 1000.0,
        per_second(cycles, memory),
        memory.as_secs_f64() * 1e6 / cycles as f64,
    );
    println!("{table}");
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir).expect("bench dir");
    std::fs::write(out_dir.join("outbox.md"), &table).expect("write results");
    println!("written to target/bench/outbox.md");
}
