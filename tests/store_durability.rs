//! Durable means durable: every write that returned before a kill -9 is there after reopening.
//!
//! The writer is this same test binary re-run as a child process (selected by an environment
//! variable), so the kill hits a real process with the store open mid-write.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgevoice::store::{Record, Store, TreeName};
use serde::{Deserialize, Serialize};

const CHILD_ENV: &str = "EDGEVOICE_TEST_STORE_WRITER_DIR";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Written {
    seq: u64,
    payload: String,
}

impl Record for Written {
    const TREE: TreeName = TreeName::Transcripts;
    const SCHEMA: u32 = 1;
}

/// The child: writes records as fast as it can and prints each key once `put` has returned.
/// Runs only when the parent sets CHILD_ENV; as a normal test it returns at once.
#[test]
fn store_writer_child_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(Path::new(&dir)).expect("child opens store");
    let tree = store.tree::<Written>().expect("tree");
    for seq in 0.. {
        let key = store.new_id().to_bytes();
        let rec = Written {
            seq,
            payload: "x".repeat((seq % 512) as usize),
        };
        tree.put(key, &rec).expect("put");
        println!("ACK {} {seq}", hex::encode(key));
    }
}

fn run_writer_and_kill(dir: &Path, acks_before_kill: usize) -> Vec<(Vec<u8>, u64)> {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "store_writer_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read");
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (key, seq) = rest.split_once(' ').expect("ACK key seq");
            acked.push((hex::decode(key).expect("hex"), seq.parse().expect("seq")));
            if acked.len() >= acks_before_kill || Instant::now() > deadline {
                break;
            }
        }
    }
    // SIGKILL mid-write: no destructor, no flush, no chance to tidy up.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill writer");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "writer was killed, not finished");
    acked
}

#[test]
fn every_acknowledged_write_survives_kill_9_of_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut all_acked = Vec::new();
    // Several rounds, each reopening what the previous killed writer left.
    for round in 0..3 {
        let acked = run_writer_and_kill(dir.path(), 200 + round * 100);
        assert!(
            !acked.is_empty(),
            "writer acknowledged nothing in round {round}"
        );
        all_acked.extend(acked);
        let store = Store::open(dir.path()).expect("reopen after kill -9");
        let tree = store.tree::<Written>().unwrap();
        for (key, seq) in &all_acked {
            let rec = tree
                .get(key)
                .unwrap_or_else(|e| panic!("record {seq} unreadable after kill -9: {e}"))
                .unwrap_or_else(|| {
                    panic!("acknowledged record {seq} lost after kill -9 (round {round})")
                });
            assert_eq!(rec.seq, *seq);
            assert_eq!(rec.payload.len() as u64, seq % 512);
        }
    }
}
