//! systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING. Outside systemd
//! (`NOTIFY_SOCKET` unset) every call is a no-op, so the daemon runs unchanged anywhere.

use std::time::Duration;

use sd_notify::NotifyState;

#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    /// Interval for WATCHDOG=1: half of `WatchdogSec`, so one late tick does not kill us.
    watchdog_interval: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Self {
        Self {
            watchdog_interval: sd_notify::watchdog_enabled().map(|d| d / 2),
        }
    }

    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn reloading(&self) {
        let now = sd_notify::NotifyState::monotonic_usec_now();
        match now {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}
