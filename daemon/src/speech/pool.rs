//! Dedicated inference threads behind a bounded queue: engines never run on the async runtime's
//! workers. Live turns go before background work (post-call); when the queue is full a job is
//! refused at once (the caller of `try_submit` decides: a new call gets 503).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A caller is waiting.
    Live,
    /// Post-call work.
    Background,
}

pub type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {engine} queue is full ({depth} jobs waiting)")]
pub struct QueueFull {
    pub engine: &'static str,
    pub depth: usize,
}

#[derive(Default)]
struct Queues {
    live: VecDeque<Job>,
    background: VecDeque<Job>,
    running: usize,
}

struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
    stop: AtomicBool,
}

/// A fixed set of threads taking jobs from two queues (live first).
pub struct WorkerPool {
    name: &'static str,
    depth: usize,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("name", &self.name)
            .field("depth", &self.depth)
            .finish()
    }
}

impl WorkerPool {
    /// `workers` threads named `ev-<name>-<i>`; at most `depth` jobs waiting (both queues).
    pub fn new(name: &'static str, workers: usize, depth: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let shared = Arc::clone(&shared);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ev-{name}-{i}"))
                    .spawn(move || worker(&shared))?,
            );
        }
        Ok(Self {
            name,
            depth: depth.max(1),
            shared,
            threads,
        })
    }

    /// Queues `job`, or refuses it when `depth` jobs are already waiting.
    pub fn try_submit(&self, priority: Priority, job: Job) -> Result<(), QueueFull> {
        let mut q = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
        if q.live.len() + q.background.len() >= self.depth {
            return Err(QueueFull {
                engine: self.name,
                depth: self.depth,
            });
        }
        match priority {
            Priority::Live => q.live.push_back(job),
            Priority::Background => q.background.push_back(job),
        }
        drop(q);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Jobs waiting (not running).
    pub fn waiting(&self) -> usize {
        let q = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
        q.live.len() + q.background.len()
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.shared
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .running
    }

    /// True when a new job would be refused.
    pub fn is_full(&self) -> bool {
        self.waiting() >= self.depth
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(shared: &Shared) {
    loop {
        let job = {
            let mut q = shared.queues.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(job) = q.live.pop_front().or_else(|| q.background.pop_front()) {
                    q.running += 1;
                    break job;
                }
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        // A panicking engine call must not take the thread (and the queue) with it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("an inference job panicked; the worker goes on");
        }
        shared
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .running -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn live_jobs_run_before_background_jobs_and_a_full_queue_refuses() {
        let pool = WorkerPool::new("test", 1, 3).unwrap();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel::<&'static str>();
        // Occupy the only worker until the gate opens.
        let d = done_tx.clone();
        pool.try_submit(
            Priority::Live,
            Box::new(move || {
                gate_rx.recv().unwrap();
                d.send("first").unwrap();
            }),
        )
        .unwrap();
        while pool.running() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for (prio, name) in [
            (Priority::Background, "background"),
            (Priority::Background, "background2"),
            (Priority::Live, "live"),
        ] {
            let d = done_tx.clone();
            pool.try_submit(prio, Box::new(move || d.send(name).unwrap()))
                .unwrap();
        }
        let refused = pool.try_submit(Priority::Live, Box::new(|| {}));
        assert_eq!(
            refused,
            Err(QueueFull {
                engine: "test",
                depth: 3
            })
        );
        assert!(pool.is_full());
        gate_tx.send(()).unwrap();
        let order: Vec<_> = (0..4).map(|_| done_rx.recv().unwrap()).collect();
        assert_eq!(order, ["first", "live", "background", "background2"]);
    }

    #[test]
    fn a_panicking_job_does_not_stop_the_worker() {
        let pool = WorkerPool::new("test", 1, 4).unwrap();
        pool.try_submit(Priority::Live, Box::new(|| panic!("engine bug")))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        pool.try_submit(Priority::Live, Box::new(move || tx.send(1).unwrap()))
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
    }
}
