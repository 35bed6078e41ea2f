//! What the dispatcher needs of the daemon around it ([`ControlHost`]), and the answers it
//! gets back. The daemon implements it, so control imports nothing above itself.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::call::CallHost;
use crate::config::{ConfigError, LoadedConfig};
use crate::uplink::events::EventSink;

/// The daemon as commands see it. Commands reach live calls and place calls, so it hosts
/// calls too.
pub trait ControlHost: CallHost {
    /// The running config and the file it came from.
    fn loaded_config(&self) -> LoadedConfig;
    fn status(&self) -> Status;
    fn phase(&self) -> Phase;
    /// The Prometheus text exposition now.
    fn metrics_text(&self) -> String;
    /// Site events for the uplink's `events` stream (an audited command is one).
    fn events(&self) -> &EventSink;
    /// Stops taking new calls; returns the active call count.
    fn drain(&self) -> usize;
    /// Takes calls again after a drain; refused once the daemon is stopping.
    fn undrain(&self) -> Result<(), String>;
    /// Re-reads the config file and applies it; a file that fails validation changes nothing.
    fn reload(&self) -> Result<ReloadOutcome, ConfigError>;
    /// Validates `text`, replaces the config file with it (keeping the last good one) and
    /// applies it.
    fn apply_config(&self, text: &str) -> Result<ApplyOutcome, String>;
    /// Changes the log filter now; returns the previous value.
    fn set_log_level(&self, directives: &str) -> Result<String, String>;
    /// Loads the speech engines from the model files now installed and swaps them in if they
    /// load; returns what the agent's status now is.
    fn reload_speech(&self) -> Result<String, String>;
}

/// Where the daemon is: starting, taking calls, or draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Starting,
    Ready,
    Draining,
}

impl Phase {
    /// The word `status` and the uplink's health use.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }

    /// Back from `phase as u8` (the daemon keeps its phase in one atomic byte).
    pub fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Starting,
        }
    }
}

/// What `edgevoice status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub phase: Phase,
    pub uptime_secs: u64,
    pub config_source: PathBuf,
    pub state_dir: PathBuf,
    pub store_size_bytes: u64,
    /// Why the store's last write failed (e.g. the disk below `daemon.min_free_disk_mb`),
    /// while no write has succeeded since.
    #[serde(default)]
    pub store_write_failure: Option<String>,
    /// Ended calls' records waiting in memory for the store to take writes again.
    #[serde(default)]
    pub unsaved_call_records: usize,
    pub device_id: String,
    pub active_calls: usize,
    pub max_calls: u32,
    /// Where SIP is listening (UDP and TCP), once it is.
    pub sip_listen: Option<String>,
    /// Register-mode accounts.
    #[serde(default)]
    pub registrations: Vec<crate::telephony::sip::registration::RegistrationStatus>,
    /// Trunks with an OPTIONS keepalive.
    #[serde(default)]
    pub trunks: Vec<crate::telephony::sip::keepalive::TrunkHealth>,
    /// One line: "not configured", or state, broker, queued count and last error.
    pub uplink: String,
    /// The same, structured (absent when the uplink is off).
    #[serde(default)]
    pub uplink_detail: Option<crate::uplink::UplinkReport>,
    /// The voice agent's engines: "ready", "loading", "media test mode" or why not.
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub speech: Option<crate::speech::service::SpeechStatus>,
}

impl Status {
    /// The one-line summary for systemd's STATUS=.
    pub fn summary(&self) -> String {
        let phase = self.phase.as_str();
        let calls = if self.active_calls == 1 {
            "call"
        } else {
            "calls"
        };
        let store = match &self.store_write_failure {
            Some(e) => format!(
                ", STORE WRITES FAILING ({} call records waiting): {e}",
                self.unsaved_call_records
            ),
            None => String::new(),
        };
        format!(
            "{phase}: {} {calls}{store}, uplink {}",
            self.active_calls, self.uplink
        )
    }
}

/// Result of applying a configuration file to the running daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub source: PathBuf,
    /// Keys that changed but need a restart; their running values were kept.
    pub restart_required: Vec<String>,
}

/// Result of `config.apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    pub source: PathBuf,
    /// The previous file, kept for a manual roll-back.
    pub last_good: PathBuf,
    /// Keys that changed but need a restart; their running values were kept.
    pub restart_required: Vec<String>,
}
