//! Store benchmark: durable writes (flushed before they return) against the floor this disk
//! allows — appending the same bytes to a plain file with fdatasync after each — plus lazy
//! writes and newest-first listing. Prints a table and writes it to target/bench/store.md.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use edgevoice::store::{Record, Store, TreeName};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct CallLike {
    from: String,
    to: String,
    started_at_ms: u64,
    ended_at_ms: u64,
    end_reason: String,
    notes: String,
}

impl Record for CallLike {
    const TREE: TreeName = TreeName::Calls;
    const SCHEMA: u32 = 1;
}

fn record(i: u64) -> CallLike {
    CallLike {
        from: format!("sip:+4420794600{i:02}@trunk.example"),
        to: "sip:support@site.example".into(),
        started_at_ms: 1_700_000_000_000 + i,
        ended_at_ms: 1_700_000_060_000 + i,
        end_reason: "caller_hung_up".into(),
        notes: "x".repeat(200),
    }
}

fn per_second(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let n: u64 = std::env::var("BENCH_STORE_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open store");
    let tree = store.tree::<CallLike>().expect("tree");
    let sample_len = serde_json::to_vec(&record(0)).expect("encode").len();

    let t = Instant::now();
    for i in 0..n {
        tree.put(store.new_id().to_bytes(), &record(i))
            .expect("put");
    }
    let durable = t.elapsed();

    let t = Instant::now();
    for i in 0..n {
        tree.put_lazy(store.new_id().to_bytes(), &record(i))
            .expect("put_lazy");
    }
    let lazy = t.elapsed();

    let t = Instant::now();
    let mut listed = 0;
    for _ in 0..100 {
        listed += tree.newest(50).len();
    }
    let listing = t.elapsed();
    assert_eq!(listed, 5000);

    // The floor: the same bytes appended to a file with fdatasync after each write.
    let path = dir.path().join("floor.log");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("floor file");
    let bytes = serde_json::to_vec(&record(0)).expect("encode");
    let t = Instant::now();
    for _ in 0..n {
        file.write_all(&bytes).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let floor = t.elapsed();

    let durable_rate = per_second(n, durable);
    let floor_rate = per_second(n, floor);
    let table = format!(
        "## store (sled 0.34.7), {n} records of ~{sample_len} bytes\n\n\
| what | edgevoice | reference | ratio (our rate / reference rate) |\n|---|---|---|---|\n\
| durable put (flushed before return) | {:.0} /s ({:.3} ms each) | file append + fdatasync: {:.0} /s ({:.3} ms each) | {:.2} |\n\
| lazy put (no flush) | {:.0} /s | | |\n\
| newest 50 records | {:.3} ms a listing | | |\n\
| store size on disk | {:.1} MiB for {} records | | |\n",
        durable_rate,
        durable.as_secs_f64() * 1000.0 / n as f64,
        floor_rate,
        floor.as_secs_f64() * 1000.0 / n as f64,
        durable_rate / floor_rate,
        per_second(n, lazy),
        listing.as_secs_f64() * 1000.0 / 100.0,
        store.size_on_disk() as f64 / 1_048_576.0,
        2 * n
    );
    println!("{table}");
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir).expect("bench dir");
    std::fs::write(out_dir.join("store.md"), &table).expect("write results");
    println!("written to target/bench/store.md");
}
