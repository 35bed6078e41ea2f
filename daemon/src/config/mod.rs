//! Configuration: raw TOML → typed, validated [`Config`].
//!
//! Start-up, SIGHUP reload and (later) a config pushed over MQTT all go through [`load`] /
//! [`parse`], so a file that fails here never replaces the running configuration.
//! Every key's default lives in the `Default` impls below and is documented, with units, in
//! `config/edgevoice.toml`; a unit test keeps the two equal.

mod agent;
mod keys;
mod locate;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use agent::{
    valid_slot_name, AgentAction, AgentConfig, BargeIn, DtmfRuleConfig, IntentConfig, SlotConfig,
    SlotKind, SpeechConfig, WhenTransferFails,
};
pub use keys::{parse_trusted_key, valid_id, TrustedKey, NO_REQUEST_ID};
pub use validate::ConfigIssue;

/// True when `directives` is a valid `daemon.log_level` (a level, or comma-separated
/// `target=level` directives).
pub fn valid_log_level(directives: &str) -> bool {
    !directives.trim().is_empty() && directives.split(',').all(validate::valid_log_directive)
}

/// Where the packaged daemon looks for its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/edgevoice/edgevoice.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub models: ModelsConfig,
    pub sip: SipConfig,
    pub rtp: RtpConfig,
    pub call: CallConfig,
    pub media_test: MediaTestConfig,
    pub agent: AgentConfig,
    pub speech: SpeechConfig,
    pub uplink: UplinkConfig,
    pub metrics: MetricsConfig,
}

/// `[metrics]`: the Prometheus exposition over HTTP and telemetry snapshots on the uplink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `IP:PORT` of an HTTP listener serving `GET /metrics`; empty: none (`edgevoice metrics`
    /// reads the same text over the control socket).
    pub listen: String,
    /// Seconds between telemetry snapshots queued on the uplink; 0: none.
    pub telemetry_interval_secs: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            telemetry_interval_secs: 60,
        }
    }
}

/// `[uplink]`: store-and-forward to an MQTT broker (see README "Uplink").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    pub enabled: bool,
    pub broker_host: String,
    pub broker_port: u16,
    /// Empty: `edgevoice-{site_id}-{device id}`.
    pub client_id: String,
    pub site_id: String,
    /// Empty: no username/password.
    pub username: String,
    pub password: String,
    /// PEM CA bundle; non-empty turns TLS on.
    pub ca_file: PathBuf,
    /// PEM client certificate and key (both or neither), for TLS client authentication.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub keepalive_secs: u16,
    /// "5" (default: idempotency key as user property, response topics) or "3.1.1".
    pub mqtt_version: String,
    pub max_messages: u32,
    pub max_bytes: u64,
    pub max_in_flight: u16,
    /// Publishes per second while draining a backlog; 0 = unlimited.
    pub drain_rate_per_sec: u32,
    pub drain_burst: u32,
    /// Unsent command results and events older than this many hours are dropped (counted);
    /// call records never expire.
    pub max_age_hours: u32,
    /// The same for analytics and telemetry (the lowest priority).
    pub telemetry_max_age_hours: u32,
    pub reconnect_min_ms: u32,
    pub reconnect_max_secs: u32,
    /// Public keys whose signed commands (`cmd/{name}`) are accepted: `name:base64` entries.
    pub trusted_keys: Vec<String>,
    /// Longest allowed `expires_at - issued_at` of a command; bounds the replay ledger.
    pub command_max_lifetime_secs: u64,
    /// Clock difference tolerated when checking `issued_at` / `expires_at`.
    pub command_clock_skew_secs: u64,
    /// Refused commands that did not verify (malformed, unsigned, unknown key, bad signature)
    /// answered per minute, with this burst; beyond it they are dropped without audit record
    /// or result, and counted.
    pub unverified_commands_per_min: u32,
    pub unverified_commands_burst: u32,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            broker_host: "localhost".to_owned(),
            broker_port: 1883,
            client_id: String::new(),
            site_id: "site".to_owned(),
            username: String::new(),
            password: String::new(),
            ca_file: PathBuf::new(),
            client_cert: PathBuf::new(),
            client_key: PathBuf::new(),
            keepalive_secs: 30,
            mqtt_version: "5".to_owned(),
            max_messages: 200_000,
            max_bytes: 256 * 1024 * 1024,
            max_in_flight: 16,
            drain_rate_per_sec: 50,
            drain_burst: 50,
            max_age_hours: 168,
            telemetry_max_age_hours: 24,
            reconnect_min_ms: 1000,
            reconnect_max_secs: 300,
            trusted_keys: Vec::new(),
            command_max_lifetime_secs: 900,
            command_clock_skew_secs: 60,
            unverified_commands_per_min: 10,
            unverified_commands_burst: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// sled database and other durable state.
    pub state_dir: PathBuf,
    /// Control socket and other files that live only while the daemon runs.
    pub runtime_dir: PathBuf,
    /// tracing filter directive: a level (`info`) or per-module directives (`info,edgevoice::store=debug`).
    pub log_level: String,
    /// How long a SIGTERM waits for active work (calls) to finish before exiting anyway.
    pub drain_timeout_secs: u64,
    /// Free disk space (MiB) the store keeps on its filesystem: below it, writes are refused
    /// (calls go on, their records wait in memory) instead of failing inside sled.
    pub min_free_disk_mb: u64,
}

impl DaemonConfig {
    /// `min_free_disk_mb` in bytes, as the store takes it.
    pub fn min_free_disk_bytes(&self) -> u64 {
        self.min_free_disk_mb.saturating_mul(1 << 20)
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/edgevoice"),
            runtime_dir: PathBuf::from("/run/edgevoice"),
            log_level: "info".to_owned(),
            drain_timeout_secs: 30,
            min_free_disk_mb: 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Installed model files, laid out as the manifest's `file` paths.
    pub dir: PathBuf,
    /// The manifest listing the models a site needs (role, file, size, sha256, license, URL).
    pub manifest: PathBuf,
    /// A language model of the site's own (an instruct GGUF with its chat template) instead of
    /// the bundled one; empty: the bundle's. Relative paths are under `dir`.
    pub llm: PathBuf,
    /// A whisper.cpp model (ggml) of the site's own instead of the bundled one; empty: the
    /// bundle's. Relative paths are under `dir`.
    pub asr: PathBuf,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/edgevoice/models"),
            manifest: PathBuf::from("/usr/share/edgevoice/models/manifest.toml"),
            llm: PathBuf::new(),
            asr: PathBuf::new(),
        }
    }
}

impl ModelsConfig {
    /// `chosen` if set (under `dir` when relative), else the bundle's `bundled` file.
    pub fn file(&self, chosen: &std::path::Path, bundled: &str) -> PathBuf {
        if chosen.as_os_str().is_empty() {
            self.dir.join(bundled)
        } else {
            self.dir.join(chosen)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// Address the SIP user agent listens on (UDP and TCP).
    pub listen: String,
    /// Calls handled at once; further INVITEs are refused with 486/503.
    pub max_calls: u32,
    /// Address for SIP over TLS (e.g. "0.0.0.0:5061"); empty = no TLS.
    pub tls_listen: String,
    /// PEM certificate chain and private key for TLS.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// IP put in Contact and SDP; empty = the listen IP, or for a wildcard listen the local
    /// address that routes to the peer.
    pub public_address: String,
    /// Audio codecs in order of preference: "pcmu", "pcma", "g722".
    pub codecs: Vec<String>,
    /// Retry-After (seconds) sent with 503 when the appliance is at capacity.
    pub retry_after_secs: u32,
    /// A call whose RTP stops for this many seconds is ended with BYE. 0 disables.
    pub media_timeout_secs: u32,
    /// Trunks (PBXs, carriers) allowed to send INVITEs, by source address.
    #[serde(rename = "trunk")]
    pub trunks: Vec<TrunkConfig>,
    /// User part of From on outbound calls (the caller id the far end sees).
    pub caller_id: String,
    /// Also send P-Asserted-Identity with the caller id (trunks that require it).
    pub assert_identity: bool,
    /// Accounts registered with a registrar (register mode); INVITEs from their registrars
    /// are accepted like a trunk's.
    #[serde(rename = "account")]
    pub accounts: Vec<AccountConfig>,
}

/// Register mode: one SIP account kept registered with a registrar (PBX extension, carrier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountConfig {
    pub name: String,
    /// The user part of the address of record.
    pub username: String,
    pub password: String,
    /// Digest user name when it differs from `username`.
    pub auth_username: String,
    /// host:port of the registrar (an IP address or a DNS name).
    pub registrar: String,
    /// host:port tried when the registrar does not answer.
    pub backup_registrar: String,
    /// Registration lifetime asked for, in seconds (the registrar may grant less).
    pub expires_secs: u32,
}

impl Default for AccountConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            username: String::new(),
            password: String::new(),
            auth_username: String::new(),
            registrar: String::new(),
            backup_registrar: String::new(),
            expires_secs: 300,
        }
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:5060".to_owned(),
            max_calls: 16,
            tls_listen: String::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            public_address: String::new(),
            codecs: vec!["pcmu".into(), "pcma".into(), "g722".into()],
            retry_after_secs: 30,
            media_timeout_secs: 30,
            trunks: vec![TrunkConfig::default()],
            caller_id: "edgevoice".to_owned(),
            assert_identity: false,
            accounts: Vec::new(),
        }
    }
}

/// A trunk in trunk mode: INVITEs are accepted only from these addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    pub name: String,
    /// Source addresses or networks (CIDR), e.g. "192.0.2.10" or "10.1.0.0/16".
    pub allow: Vec<String>,
    /// SIP URI to send OPTIONS to as a keepalive (e.g. "sip:192.0.2.10:5060"); empty = none.
    #[serde(default)]
    pub options_uri: String,
    /// Seconds between keepalive OPTIONS.
    #[serde(default = "default_options_interval")]
    pub options_interval_secs: u32,
}

fn default_options_interval() -> u32 {
    30
}

impl Default for TrunkConfig {
    fn default() -> Self {
        Self {
            name: "local".into(),
            allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
            options_uri: String::new(),
            options_interval_secs: default_options_interval(),
        }
    }
}

impl TrunkConfig {
    /// The allow list as networks; valid after [`parse`] succeeded.
    pub fn networks(&self) -> Vec<ipnet::IpNet> {
        self.allow.iter().filter_map(|a| parse_net(a)).collect()
    }
}

/// "10.0.0.0/8" or a bare address (a /32 or /128).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// `uplink.mqtt_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    V311,
    V5,
}

impl MqttVersion {
    /// The config spelling: "3.1.1" or "5".
    pub fn parse(s: &str) -> Option<MqttVersion> {
        match s {
            "3.1.1" => Some(MqttVersion::V311),
            "5" => Some(MqttVersion::V5),
            _ => None,
        }
    }
}

/// The codecs `sip.codecs` may name (lower case; telephony::codec maps each to its codec).
pub const CODEC_NAMES: [&str; 3] = ["pcmu", "pcma", "g722"];

impl SipConfig {
    pub fn public_ip(&self) -> Option<std::net::IpAddr> {
        self.public_address.parse().ok()
    }
}

/// What answers an inbound call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallHandler {
    /// The voice agent (`[agent]`): speech recognition, language model, speech synthesis.
    Agent,
    /// Media test mode (commissioning): play a prompt, then echo or record.
    MediaTest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallConfig {
    pub handler: CallHandler,
    /// Record every call to a two-channel WAV (caller left, appliance right) under
    /// `<state_dir>/recordings`; the path is kept in the call record.
    pub record: bool,
    /// Hang up calls that last longer than this. 0 = no limit.
    pub max_duration_secs: u32,
    /// Ring (180) this long before answering; 0 answers at once.
    pub answer_after_ms: u32,
    /// A transfer's bridge (the appliance calling the target itself after a refused REFER)
    /// rings this long at most; then the caller goes back to the agent.
    pub transfer_ring_secs: u32,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            handler: CallHandler::Agent,
            record: false,
            max_duration_secs: 3600,
            answer_after_ms: 0,
            transfer_ring_secs: 20,
        }
    }
}

/// After the prompt, what media test mode does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterPrompt {
    /// Send the caller's audio back (about 100 ms later, after the jitter buffer).
    Echo,
    /// Listen silently (recording, if enabled) until the caller hangs up.
    Listen,
    /// End the call.
    Hangup,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaTestConfig {
    /// WAV file played when the call is answered (mono or stereo PCM, any common rate).
    /// Empty: a short built-in tone sequence.
    pub prompt: PathBuf,
    pub after_prompt: AfterPrompt,
}

impl Default for MediaTestConfig {
    fn default() -> Self {
        Self {
            prompt: PathBuf::new(),
            after_prompt: AfterPrompt::Echo,
        }
    }
}

impl SipConfig {
    /// The listen address; valid after [`parse`] succeeded.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtpConfig {
    /// First UDP port for RTP (even); each call uses an even RTP port and the odd RTCP port above it.
    pub port_min: u16,
    /// Last UDP port for RTP/RTCP (inclusive).
    pub port_max: u16,
}

impl Default for RtpConfig {
    fn default() -> Self {
        Self {
            port_min: 10000,
            port_max: 10999,
        }
    }
}

impl RtpConfig {
    /// How many calls' worth of RTP/RTCP port pairs the range holds.
    pub fn port_pairs(&self) -> u32 {
        let first_even = u32::from(self.port_min) + u32::from(self.port_min) % 2;
        let last = u32::from(self.port_max);
        if last < first_even + 1 {
            0
        } else {
            // Only whole (even RTP, odd RTCP) pairs count.
            let ports = last - first_even + 1;
            ports / 2
        }
    }
}

/// A configuration loaded from a file, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedConfig {
    pub config: Config,
    pub source: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}; check the path or pass --config FILE", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors, unknown keys and wrong types: all found by the TOML decoder.
    #[error("{}", format_issues(path, std::slice::from_ref(issue)))]
    Decode { path: PathBuf, issue: ConfigIssue },
    /// Values that decode but are out of range or inconsistent with each other.
    #[error("{}", format_issues(path, issues))]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// Every problem found, each as one line `file:line:col: key: what is wrong; fix`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Decode { path, issue } => vec![issue.line_for(path)],
            ConfigError::Invalid { path, issues } => {
                issues.iter().map(|i| i.line_for(path)).collect()
            }
        }
    }
}

fn format_issues(path: &Path, issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| i.line_for(path))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads, decodes and validates the file at `path`. Relative paths inside it are resolved
/// against the file's own directory, so a config works wherever the daemon is started from.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut config = parse(&text, path)?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    config.resolve_relative_paths(base);
    Ok(LoadedConfig {
        config,
        source: path.to_owned(),
    })
}

/// Decodes and validates TOML text; `origin` names it in error messages.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| ConfigError::Decode {
        path: origin.to_owned(),
        issue: validate::decode_issue(text, &e),
    })?;
    let issues = validate::check(&config, text);
    if issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            path: origin.to_owned(),
            issues,
        })
    }
}

/// `a/b/../c` → `a/c`, without touching the file system (the paths may not exist yet).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The control socket named by the file at `path`, even when the file fails validation, so the
/// CLI can still reach a daemon whose config file was since broken. Falls back to the default.
pub fn control_socket_hint(path: &Path) -> PathBuf {
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let runtime_dir = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            let doc = toml_edit::Document::parse(text).ok()?;
            let dir = doc.get("daemon")?.get("runtime_dir")?.as_str()?.to_owned();
            Some(PathBuf::from(dir))
        })
        .unwrap_or_else(|| DaemonConfig::default().runtime_dir);
    base.join(runtime_dir).join("control.sock")
}

/// What `config.get` shows in place of a secret.
pub const REDACTED: &str = "(redacted)";

impl Config {
    /// This config with its secrets (passwords) replaced by [`REDACTED`]; empty ones stay
    /// empty, so "none set" remains visible.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let hide = |s: &mut String| {
            if !s.is_empty() {
                *s = REDACTED.to_owned();
            }
        };
        hide(&mut c.uplink.password);
        for account in &mut c.sip.accounts {
            hide(&mut account.password);
        }
        c
    }

    fn resolve_relative_paths(&mut self, base: &Path) {
        for p in [
            &mut self.daemon.state_dir,
            &mut self.daemon.runtime_dir,
            &mut self.models.dir,
            &mut self.models.manifest,
            &mut self.media_test.prompt,
            &mut self.speech.onnxruntime,
            &mut self.sip.tls_cert,
            &mut self.sip.tls_key,
            &mut self.uplink.ca_file,
            &mut self.uplink.client_cert,
            &mut self.uplink.client_key,
        ] {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = normalize(&base.join(&*p));
            }
        }
    }

    /// The control socket's path.
    pub fn control_socket(&self) -> PathBuf {
        self.daemon.runtime_dir.join("control.sock")
    }

    /// Keys whose new value cannot take effect without a restart, with old → new.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<RestartOnlyChange> {
        let mut changes = Vec::new();
        let mut check = |key: &'static str, old: String, new: String| {
            if old != new {
                changes.push(RestartOnlyChange { key, old, new });
            }
        };
        check(
            "daemon.state_dir",
            self.daemon.state_dir.display().to_string(),
            new.daemon.state_dir.display().to_string(),
        );
        check(
            "daemon.runtime_dir",
            self.daemon.runtime_dir.display().to_string(),
            new.daemon.runtime_dir.display().to_string(),
        );
        check(
            "sip.listen",
            self.sip.listen.clone(),
            new.sip.listen.clone(),
        );
        check(
            "metrics.listen",
            self.metrics.listen.clone(),
            new.metrics.listen.clone(),
        );
        check(
            "rtp.port_min",
            self.rtp.port_min.to_string(),
            new.rtp.port_min.to_string(),
        );
        check(
            "rtp.port_max",
            self.rtp.port_max.to_string(),
            new.rtp.port_max.to_string(),
        );
        changes
    }

    /// `new` with every restart-only key kept at its running value: what a live reload applies.
    pub fn merged_for_reload(&self, new: &Config) -> Config {
        let mut merged = new.clone();
        merged.daemon.state_dir = self.daemon.state_dir.clone();
        merged.daemon.runtime_dir = self.daemon.runtime_dir.clone();
        merged.sip.listen = self.sip.listen.clone();
        merged.sip.tls_listen = self.sip.tls_listen.clone();
        merged.sip.tls_cert = self.sip.tls_cert.clone();
        merged.sip.tls_key = self.sip.tls_key.clone();
        merged.metrics.listen = self.metrics.listen.clone();
        merged.rtp.port_min = self.rtp.port_min;
        merged.rtp.port_max = self.rtp.port_max;
        merged
    }
}

/// A changed key that a live reload cannot apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOnlyChange {
    pub key: &'static str,
    pub old: String,
    pub new: String,
}

impl fmt::Display for RestartOnlyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} changed from {} to {}: it takes effect only after a restart (systemctl restart edgevoice); the running value stays",
            self.key, self.old, self.new
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> &'static Path {
        Path::new("test.toml")
    }

    #[test]
    fn shipped_default_config_equals_the_built_in_defaults() {
        let text = include_str!("../../../config/edgevoice.toml");
        let parsed = parse(text, origin()).expect("config/edgevoice.toml must be valid");
        assert_eq!(parsed, Config::default());
    }

    /// Every key of the built-in config appears (uncommented) in the shipped file, so the file
    /// really documents all of them.
    #[test]
    fn shipped_default_config_lists_every_key() {
        fn leaves(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
            match value {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let p = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        leaves(&p, v, out);
                    }
                }
                toml::Value::Array(a) if a.iter().all(|v| v.is_table()) && !a.is_empty() => {
                    leaves(&format!("{prefix}.0"), &a[0], out)
                }
                _ => out.push(prefix.to_owned()),
            }
        }
        let text = include_str!("../../../config/edgevoice.toml");
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let shipped: toml::Value = toml::from_str(text).unwrap();
        let (mut want, mut have) = (Vec::new(), Vec::new());
        leaves("", &defaults, &mut want);
        leaves("", &shipped, &mut have);
        for key in want {
            // Lists that are empty by default are documented by a commented example.
            let commented = text.contains(&format!("# [[{key}]]"));
            assert!(
                have.contains(&key) || commented,
                "config/edgevoice.toml does not document {key}"
            );
        }
        let account = toml::Value::try_from(AccountConfig::default()).unwrap();
        for field in account.as_table().unwrap().keys() {
            assert!(
                text.contains(&format!("# {field} = ")),
                "the [[sip.account]] example lacks {field}"
            );
        }
    }

    #[test]
    fn redacted_hides_every_password_and_nothing_else() {
        let mut c = Config::default();
        c.uplink.username = "u".into();
        c.uplink.password = "hunter2".into();
        c.sip.accounts.push(AccountConfig {
            name: "a".into(),
            password: "s3cret".into(),
            ..AccountConfig::default()
        });
        let r = c.redacted();
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
        assert_eq!(r.uplink.password, REDACTED);
        assert_eq!(r.sip.accounts[0].password, REDACTED);
        assert_eq!(r.uplink.username, "u");
        assert_eq!(
            Config::default().redacted(),
            Config::default(),
            "empty stays empty"
        );
    }

    #[test]
    fn trunk_and_codec_errors_name_the_entry() {
        let text = "[sip]\ncodecs = [\"pcmu\", \"opus\"]\n\n[[sip.trunk]]\nname = \"pbx\"\nallow = [\"10.0.0.0/33\"]\n";
        let lines = parse(text, origin()).unwrap_err().lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("test.toml:2:10: sip.codecs:") && lines[0].contains("opus"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("test.toml:4:1: sip.trunk.0:") && lines[1].contains("10.0.0.0/33"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn dev_config_is_valid() {
        let text = include_str!("../../../config/dev.toml");
        parse(text, origin()).expect("config/dev.toml must be valid");
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("", origin()).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_key_line_and_column() {
        let text = "[daemon]\nlog_level = \"info\"\n\n[sip]\nmax_calls = 4\nlisten_port = 5060\n";
        let err = parse(text, origin()).unwrap_err();
        let lines = err.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("test.toml:6:1: sip.listen_port:"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("unknown key"), "{}", lines[0]);
        assert!(
            lines[0].contains("listen"),
            "suggests the valid keys: {}",
            lines[0]
        );
    }

    #[test]
    fn unknown_section_is_an_error() {
        let err = parse("[telephony]\nx = 1\n", origin()).unwrap_err();
        assert!(
            err.lines()[0].starts_with("test.toml:1:2: telephony:"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_key_and_expected_type() {
        let text = "[sip]\nmax_calls = \"many\"\n";
        let line = parse(text, origin()).unwrap_err().lines().remove(0);
        assert!(line.starts_with("test.toml:2:13: sip.max_calls:"), "{line}");
        assert!(line.contains("integer"), "{line}");
    }

    #[test]
    fn syntax_error_has_position() {
        let line = parse("[sip\nmax_calls = 3\n", origin())
            .unwrap_err()
            .lines()
            .remove(0);
        assert!(line.starts_with("test.toml:1:"), "{line}");
    }

    #[test]
    fn out_of_range_value_names_key_position_and_fix() {
        let text = "[sip]\nmax_calls = 0\n";
        let line = parse(text, origin()).unwrap_err().lines().remove(0);
        assert!(line.starts_with("test.toml:2:13: sip.max_calls:"), "{line}");
        assert!(line.contains("between 1 and"), "{line}");
    }

    #[test]
    fn outbox_age_limits_are_hours_within_a_year() {
        let e = parse(
            "[uplink]\nenabled = true\nbroker_host = \"b\"\nmax_age_hours = 0\ntelemetry_max_age_hours = 9000\n",
            origin(),
        )
        .unwrap_err();
        let lines = e.lines();
        assert!(
            lines[0].contains("uplink.max_age_hours") && lines[0].contains("1 to 8760"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("uplink.telemetry_max_age_hours"),
            "{lines:?}"
        );
        let ok = parse(
            "[uplink]\nenabled = true\nbroker_host = \"b\"\nmax_age_hours = 24\n",
            origin(),
        )
        .unwrap();
        assert_eq!(ok.uplink.max_age_hours, 24);
    }

    #[test]
    fn uplink_problems_name_key_line_and_fix() {
        let text = "[uplink]\nenabled = true\nsite_id = \"a/b\"\nmqtt_version = \"5.0\"\nclient_cert = \"/nonexistent/c.pem\"\n";
        let lines = parse(text, origin()).unwrap_err().lines();
        let has = |start: &str, word: &str| {
            lines
                .iter()
                .any(|l| l.starts_with(start) && l.contains(word))
        };
        assert!(
            has("test.toml:3:11: uplink.site_id:", "letters, digits"),
            "{lines:?}"
        );
        assert!(
            has(
                "test.toml:4:16: uplink.mqtt_version:",
                "use \"5\" or \"3.1.1\""
            ),
            "{lines:?}"
        );
        assert!(
            has("test.toml:5:15: uplink.client_cert:", "cannot read"),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("uplink.ca_file") && l.contains("needs TLS")),
            "{lines:?}"
        );
        // Off: only the identity keys are checked.
        assert!(parse("[uplink]\nmqtt_version = \"4\"\n", origin()).is_ok());
        for version in ["5", "3.1.1"] {
            let text = format!("[uplink]\nenabled = true\nmqtt_version = \"{version}\"\n");
            assert!(parse(&text, origin()).is_ok(), "{version}");
        }
    }

    #[test]
    fn the_unverified_command_rate_limit_must_be_at_least_one() {
        let text = "[uplink]\nunverified_commands_per_min = 0\nunverified_commands_burst = 10001\n";
        let lines = parse(text, origin()).unwrap_err().lines();
        assert!(
            lines.iter().any(|l| l
                .starts_with("test.toml:2:31: uplink.unverified_commands_per_min:")
                && l.contains("use 1 to 60000")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l
                .starts_with("test.toml:3:29: uplink.unverified_commands_burst:")
                && l.contains("use 1 to 10000")),
            "{lines:?}"
        );
        let defaults = UplinkConfig::default();
        assert_eq!(
            (
                defaults.mqtt_version.as_str(),
                defaults.unverified_commands_per_min,
                defaults.unverified_commands_burst
            ),
            ("5", 10, 20)
        );
    }

    #[test]
    fn trusted_keys_and_command_limits_are_checked_one_line_each() {
        let good = "ops:4QeTNedNSmYlH40NnDGh9osGIbqHYoPfw8d6Z4vBnWU=";
        assert!(parse(
            &format!("[uplink]\ntrusted_keys = [\"{good}\"]\n"),
            origin()
        )
        .is_ok());
        let text = format!(
            "[uplink]\ntrusted_keys = [\"{good}\", \"{good}\", \"nocolon\", \"x:AAAA\"]\ncommand_max_lifetime_secs = 0\ncommand_clock_skew_secs = 99999\n"
        );
        let lines = parse(&text, origin()).unwrap_err().lines();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "test.toml:2:16: uplink.trusted_keys: entry 2: key name \"ops\" is listed twice"
            ),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("entry 3") && lines[1].contains("keygen"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("entry 4") && lines[2].contains("32"),
            "{lines:?}"
        );
        assert!(
            lines[3].contains("uplink.command_max_lifetime_secs"),
            "{lines:?}"
        );
        assert!(
            lines[4].contains("uplink.command_clock_skew_secs"),
            "{lines:?}"
        );
    }

    #[test]
    fn rtp_range_too_small_for_max_calls_is_inconsistent() {
        let text = "[sip]\nmax_calls = 16\n[rtp]\nport_min = 20000\nport_max = 20009\n";
        let lines = parse(text, origin()).unwrap_err().lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("test.toml:4:12: rtp.port_min:"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("5 calls"), "{}", lines[0]);
        assert!(lines[0].contains("max_calls is 16"), "{}", lines[0]);
    }

    #[test]
    fn every_problem_is_reported_not_only_the_first() {
        let text = "[daemon]\nlog_level = \"loud\"\ndrain_timeout_secs = 99999\n[sip]\nlisten = \"nowhere\"\n";
        let lines = parse(text, origin()).unwrap_err().lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("daemon.log_level")));
        assert!(lines
            .iter()
            .any(|l| l.contains("daemon.drain_timeout_secs")));
        assert!(lines.iter().any(|l| l.contains("sip.listen")));
    }

    #[test]
    fn inverted_port_range_is_rejected() {
        let text = "[rtp]\nport_min = 30000\nport_max = 20000\n";
        let lines = parse(text, origin()).unwrap_err().lines();
        assert!(lines[0].contains("rtp.port_max"), "{lines:?}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.toml");
        std::fs::write(&path, "[daemon]\nstate_dir = \"var/state\"\n").unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.config.daemon.state_dir, dir.path().join("var/state"));
        assert_eq!(
            loaded.config.daemon.runtime_dir,
            PathBuf::from("/run/edgevoice")
        );
    }

    #[test]
    fn relative_paths_are_normalized() {
        assert_eq!(
            normalize(Path::new("config/../var/state")),
            PathBuf::from("var/state")
        );
        assert_eq!(
            normalize(Path::new("/etc/./edgevoice/../x")),
            PathBuf::from("/etc/x")
        );
        assert_eq!(normalize(Path::new("../var")), PathBuf::from("../var"));
    }

    #[test]
    fn missing_file_says_which_and_what_to_do() {
        let err = load(Path::new("/nonexistent/e.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/e.toml") && msg.contains("--config"),
            "{msg}"
        );
    }

    #[test]
    fn reload_keeps_restart_only_keys_and_reports_them() {
        let old = Config::default();
        let mut new = Config::default();
        new.sip.listen = "127.0.0.1:5070".into();
        new.daemon.log_level = "debug".into();
        let changes = old.restart_only_changes(&new);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].key, "sip.listen");
        assert!(changes[0].to_string().contains("restart"));
        let merged = old.merged_for_reload(&new);
        assert_eq!(merged.sip.listen, old.sip.listen);
        assert_eq!(merged.daemon.log_level, "debug");
    }

    #[test]
    fn control_socket_hint_reads_an_invalid_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.toml");
        std::fs::write(
            &path,
            "[daemon]\nruntime_dir = \"run\"\n[sip]\nmax_calls = 0\n",
        )
        .unwrap();
        assert!(load(&path).is_err());
        assert_eq!(
            control_socket_hint(&path),
            dir.path().join("run/control.sock")
        );
        let missing = dir.path().join("missing.toml");
        assert_eq!(
            control_socket_hint(&missing),
            PathBuf::from("/run/edgevoice/control.sock")
        );
    }

    #[test]
    fn port_pairs_count_even_rtp_ports() {
        let r = |a, b| RtpConfig {
            port_min: a,
            port_max: b,
        };
        assert_eq!(r(10000, 10001).port_pairs(), 1);
        assert_eq!(r(10000, 10002).port_pairs(), 1);
        assert_eq!(r(10001, 10004).port_pairs(), 1);
        assert_eq!(r(10000, 10999).port_pairs(), 500);
        assert_eq!(r(10000, 10000).port_pairs(), 0);
    }
}
