//! Active work (calls) in flight, so a graceful stop can refuse new work and wait for the rest.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct ActiveWork {
    count: AtomicUsize,
    draining: AtomicBool,
    idle: Notify,
}

/// Held while one unit of work runs; dropping it ends the work.
#[derive(Debug)]
pub struct WorkGuard {
    work: Arc<ActiveWork>,
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if self.work.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.work.idle.notify_waiters();
        }
    }
}

impl ActiveWork {
    /// Starts a unit of work unless a drain has begun or `limit` units already run.
    pub fn try_begin(self: &Arc<Self>, limit: usize) -> Option<WorkGuard> {
        if self.draining.load(Ordering::Acquire) {
            return None;
        }
        let mut current = self.count.load(Ordering::Acquire);
        loop {
            if current >= limit {
                return None;
            }
            match self.count.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(WorkGuard { work: self.clone() }),
                Err(now) => current = now,
            }
        }
    }

    pub fn active(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Refuses new work from now on.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Takes new work again after [`start_drain`](Self::start_drain) (the `undrain` command).
    pub fn stop_drain(&self) {
        self.draining.store(false, Ordering::Release);
    }

    /// Waits until no work is active or `timeout` passes; true if it became idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.active() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_drain_refuse_new_work() {
        let work = Arc::new(ActiveWork::default());
        let a = work.try_begin(2).unwrap();
        let _b = work.try_begin(2).unwrap();
        assert!(work.try_begin(2).is_none(), "over the limit");
        drop(a);
        assert_eq!(work.active(), 1);
        work.start_drain();
        assert!(work.try_begin(2).is_none(), "draining");
        work.stop_drain();
        assert!(work.try_begin(2).is_some(), "resumed");
    }

    #[tokio::test(start_paused = true)]
    async fn wait_idle_returns_when_the_last_guard_drops() {
        let work = Arc::new(ActiveWork::default());
        let guard = work.try_begin(1).unwrap();
        let waiter = {
            let work = work.clone();
            tokio::spawn(async move { work.wait_idle(Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(guard);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_idle_gives_up_after_the_timeout() {
        let work = Arc::new(ActiveWork::default());
        let _guard = work.try_begin(1).unwrap();
        assert!(!work.wait_idle(Duration::from_secs(3)).await);
    }
}
