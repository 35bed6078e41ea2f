//! Checks that a decoded [`Config`] makes sense, collecting every problem rather than the first.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use super::{locate, Config};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `sip.max_calls`; empty when the problem has no key (a syntax error).
    pub key: String,
    /// 1-based line and column, when the key appears in the file.
    pub position: Option<(usize, usize)>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigIssue {
    fn at(text: &str, key: &str, message: String) -> Self {
        let position = locate::span_of_path(text, key).map(|s| locate::line_col(text, s.start));
        Self {
            key: key.to_owned(),
            position,
            message,
        }
    }

    /// `file:line:col: key: message` — one line, the form editors and CI logs understand.
    pub fn line_for(&self, path: &Path) -> String {
        let mut line = path.display().to_string();
        if let Some((l, c)) = self.position {
            let _ = write!(line, ":{l}:{c}");
        }
        line.push_str(": ");
        if !self.key.is_empty() {
            line.push_str(&self.key);
            line.push_str(": ");
        }
        line.push_str(&self.message);
        line
    }
}

/// Turns the TOML decoder's error (syntax, unknown key, wrong type) into an issue.
pub(super) fn decode_issue(text: &str, err: &toml::de::Error) -> ConfigIssue {
    let span = err.span();
    let position = span.as_ref().map(|s| locate::line_col(text, s.start));
    let key = span
        .as_ref()
        .and_then(|s| locate::path_at(text, s.start))
        .unwrap_or_default();
    let raw = err.message().trim().replace('\n', " ");
    let message = if let Some(rest) = raw.strip_prefix("unknown field") {
        format!("unknown key{rest}; remove it or correct its spelling (config/edgevoice.toml lists every key)")
    } else if raw.starts_with("invalid type") {
        let plain = raw
            .replace("expected u64", "expected a whole number (integer)")
            .replace("expected u32", "expected a whole number (integer)")
            .replace("expected u16", "expected a whole number (integer)");
        format!("{plain}; change the value to that type")
    } else if key.is_empty() {
        format!("TOML syntax error: {raw}")
    } else {
        raw
    };
    ConfigIssue {
        key,
        position,
        message,
    }
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

pub(super) fn valid_log_directive(d: &str) -> bool {
    let level = match d.split_once('=') {
        Some((target, level)) => {
            if target.is_empty() || target.contains(char::is_whitespace) {
                return false;
            }
            level
        }
        None => d,
    };
    LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
}

/// What is wrong with a PEM file that should hold a `marker` ("CERTIFICATE", "PRIVATE KEY").
fn pem_problem(path: &Path, marker: &str, unreadable_fix: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(pem) if pem.contains("-----BEGIN ") && pem.contains(marker) => None,
        Ok(_) => Some(format!(
            "{} is not a PEM file with a {marker}",
            path.display()
        )),
        Err(e) => Some(format!(
            "cannot read {} ({e}); {unreadable_fix}",
            path.display()
        )),
    }
}

#[allow(clippy::too_many_lines)] // one flat list of every key's check, in file order
pub(super) fn check(config: &Config, text: &str) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut problem = |key: &str, message: String| issues.push(ConfigIssue::at(text, key, message));

    let d = &config.daemon;
    if d.state_dir.as_os_str().is_empty() {
        problem(
            "daemon.state_dir",
            "must not be empty; e.g. \"/var/lib/edgevoice\"".into(),
        );
    }
    if d.runtime_dir.as_os_str().is_empty() {
        problem(
            "daemon.runtime_dir",
            "must not be empty; e.g. \"/run/edgevoice\"".into(),
        );
    }
    if d.log_level.trim().is_empty() || !d.log_level.split(',').all(valid_log_directive) {
        problem(
            "daemon.log_level",
            format!(
                "\"{}\" is not a log filter; use a level ({}) or directives like \"info,edgevoice::store=debug\"",
                d.log_level,
                LEVELS.join(", ")
            ),
        );
    }
    if d.drain_timeout_secs > 3600 {
        problem(
            "daemon.drain_timeout_secs",
            format!(
                "{} is out of range; use a value between 0 and 3600 seconds",
                d.drain_timeout_secs
            ),
        );
    }
    if d.min_free_disk_mb > 1 << 20 {
        problem(
            "daemon.min_free_disk_mb",
            format!(
                "{} is out of range; use a value between 0 and 1048576 MiB",
                d.min_free_disk_mb
            ),
        );
    }

    if config.models.dir.as_os_str().is_empty() {
        problem(
            "models.dir",
            "must not be empty; e.g. \"/var/lib/edgevoice/models\"".into(),
        );
    }

    for (key, path, ext, what) in [
        ("models.llm", &config.models.llm, "gguf", "an instruct GGUF"),
        (
            "models.asr",
            &config.models.asr,
            "bin",
            "a whisper.cpp ggml model (.bin)",
        ),
    ] {
        let wrong = path.extension().is_none_or(|e| e != ext);
        if !path.as_os_str().is_empty() && wrong {
            problem(
                key,
                format!(
                    "\"{}\" is not {what}; give its path, or \"\" for the bundled model",
                    path.display()
                ),
            );
        }
    }

    check_uplink(&config.uplink, &mut problem);
    let m = &config.metrics;
    if !m.listen.is_empty() && m.listen.parse::<SocketAddr>().is_err() {
        problem(
            "metrics.listen",
            format!(
                "\"{}\" is not an IP:PORT address; use e.g. \"127.0.0.1:9464\", or \"\" for no HTTP listener",
                m.listen
            ),
        );
    }
    if m.telemetry_interval_secs != 0 && !(5..=86_400).contains(&m.telemetry_interval_secs) {
        problem(
            "metrics.telemetry_interval_secs",
            format!(
                "{} is out of range; use 0 (off) or 5 to 86400 seconds",
                m.telemetry_interval_secs
            ),
        );
    }
    super::agent::check_agent(&config.agent, &config.speech, &mut problem);

    let sip = &config.sip;
    if sip.listen.parse::<SocketAddr>().is_err() {
        problem(
            "sip.listen",
            format!(
                "\"{}\" is not an IP:PORT address; use e.g. \"0.0.0.0:5060\"",
                sip.listen
            ),
        );
    }
    if !sip.tls_listen.is_empty() {
        if sip.tls_listen.parse::<SocketAddr>().is_err() {
            problem(
                "sip.tls_listen",
                format!(
                    "\"{}\" is not an IP:PORT address; use e.g. \"0.0.0.0:5061\" or leave it empty",
                    sip.tls_listen
                ),
            );
        }
        for (key, path, marker) in [
            ("sip.tls_cert", &sip.tls_cert, "CERTIFICATE"),
            ("sip.tls_key", &sip.tls_key, "PRIVATE KEY"),
        ] {
            if let Some(message) = pem_problem(
                path,
                marker,
                "sip.tls_listen needs a PEM certificate and key",
            ) {
                problem(key, message);
            }
        }
    }
    if !(1..=1000).contains(&sip.max_calls) {
        problem(
            "sip.max_calls",
            format!(
                "{} is out of range; use a value between 1 and 1000",
                sip.max_calls
            ),
        );
    }

    if sip.public_address.trim().is_empty() {
    } else if sip.public_address.parse::<std::net::IpAddr>().is_err() {
        problem(
            "sip.public_address",
            format!(
                "\"{}\" is not an IP address; use e.g. \"203.0.113.7\" or leave it empty",
                sip.public_address
            ),
        );
    }
    let known: Vec<String> = super::CODEC_NAMES
        .iter()
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if sip.codecs.is_empty() {
        problem(
            "sip.codecs",
            format!("must list at least one codec of {}", known.join(", ")),
        );
    }
    let mut seen: Vec<String> = Vec::new();
    for c in &sip.codecs {
        let name = c.to_ascii_lowercase();
        match super::CODEC_NAMES.contains(&name.as_str()) {
            false => problem(
                "sip.codecs",
                format!(
                    "\"{c}\" is not a supported codec; use some of \"pcmu\", \"pcma\", \"g722\""
                ),
            ),
            true if seen.contains(&name) => problem(
                "sip.codecs",
                format!("\"{c}\" is listed twice; list each codec once"),
            ),
            true => seen.push(name),
        }
    }
    if sip.caller_id.is_empty()
        || !sip
            .caller_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-._".contains(c))
    {
        problem(
            "sip.caller_id",
            format!("\"{}\" is not a usable caller id; use digits, letters and + - . _ (e.g. \"+442079460000\")", sip.caller_id),
        );
    }
    if sip.retry_after_secs > 3600 {
        problem(
            "sip.retry_after_secs",
            format!("{} is out of range; use 0 to 3600", sip.retry_after_secs),
        );
    }
    if sip.media_timeout_secs > 3600 {
        problem(
            "sip.media_timeout_secs",
            format!(
                "{} is out of range; use 0 (off) to 3600",
                sip.media_timeout_secs
            ),
        );
    }
    let mut names = Vec::new();
    for (i, trunk) in sip.trunks.iter().enumerate() {
        let key = format!("sip.trunk.{i}");
        if trunk.name.trim().is_empty() {
            problem(
                &key,
                "trunk without a name; give each [[sip.trunk]] a name".into(),
            );
        } else if names.contains(&trunk.name) {
            problem(
                &key,
                format!(
                    "trunk name \"{}\" is used twice; names must be unique",
                    trunk.name
                ),
            );
        }
        names.push(trunk.name.clone());
        if !trunk.options_uri.is_empty() && !trunk.options_uri.starts_with("sip:") {
            problem(
                &key,
                format!("trunk \"{}\": options_uri \"{}\" is not a sip: URI; use e.g. \"sip:192.0.2.10:5060\" or leave it empty", trunk.name, trunk.options_uri),
            );
        }
        if !(5..=3600).contains(&trunk.options_interval_secs) {
            problem(
                &key,
                format!(
                    "trunk \"{}\": options_interval_secs {} is out of range; use 5 to 3600",
                    trunk.name, trunk.options_interval_secs
                ),
            );
        }
        for a in &trunk.allow {
            if super::parse_net(a).is_none() {
                problem(
                    &key,
                    format!("trunk \"{}\": \"{a}\" is not an address or CIDR network; use e.g. \"192.0.2.10\" or \"10.1.0.0/16\"", trunk.name),
                );
            }
        }
    }

    let mut account_names: Vec<&str> = Vec::new();
    for (i, a) in sip.accounts.iter().enumerate() {
        let key = format!("sip.account.{i}");
        if a.name.trim().is_empty() {
            problem(
                &key,
                "account without a name; give each [[sip.account]] a name".into(),
            );
        } else if account_names.contains(&a.name.as_str()) || names.contains(&a.name) {
            problem(
                &key,
                format!(
                    "name \"{}\" is used twice; account and trunk names must be unique",
                    a.name
                ),
            );
        }
        account_names.push(&a.name);
        if a.username.trim().is_empty() {
            problem(&key, format!("account \"{}\" has no username", a.name));
        }
        for (field, value) in [
            ("registrar", &a.registrar),
            ("backup_registrar", &a.backup_registrar),
        ] {
            if field == "backup_registrar" && value.is_empty() {
                continue;
            }
            let ok = value.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                problem(
                    &key,
                    format!("account \"{}\": {field} \"{value}\" is not host:port; use e.g. \"192.0.2.10:5060\" or \"pbx.example.com:5060\"", a.name),
                );
            }
        }
        if !(60..=86_400).contains(&a.expires_secs) {
            problem(
                &key,
                format!(
                    "account \"{}\": expires_secs {} is out of range; use 60 to 86400",
                    a.name, a.expires_secs
                ),
            );
        }
    }

    let prompt = &config.media_test.prompt;
    if !prompt.as_os_str().is_empty() && !prompt.is_file() {
        problem(
            "media_test.prompt",
            format!("{} does not exist or is not a file; give a WAV file or leave it empty for the built-in tones", prompt.display()),
        );
    }
    if config.call.answer_after_ms > 30_000 {
        problem(
            "call.answer_after_ms",
            format!(
                "{} is out of range; use 0 (answer at once) to 30000 ms",
                config.call.answer_after_ms
            ),
        );
    }
    if !(5..=120).contains(&config.call.transfer_ring_secs) {
        problem(
            "call.transfer_ring_secs",
            format!(
                "{} is out of range; use 5 to 120 seconds",
                config.call.transfer_ring_secs
            ),
        );
    }
    if config.call.max_duration_secs > 86_400 {
        problem(
            "call.max_duration_secs",
            format!(
                "{} is out of range; use 0 (no limit) to 86400",
                config.call.max_duration_secs
            ),
        );
    }

    let rtp = &config.rtp;
    if rtp.port_min < 1024 {
        problem(
            "rtp.port_min",
            format!(
                "{} is a privileged port; use 1024 or above (e.g. 10000)",
                rtp.port_min
            ),
        );
    } else if rtp.port_max <= rtp.port_min {
        problem(
            "rtp.port_max",
            format!(
                "{} must be above rtp.port_min ({}); e.g. port_min = 10000, port_max = 10999",
                rtp.port_max, rtp.port_min
            ),
        );
    } else if rtp.port_pairs() < sip.max_calls {
        problem(
            "rtp.port_min",
            format!(
                "the range {}..{} holds RTP/RTCP port pairs for {} calls but sip.max_calls is {}; widen the range to at least {} ports or lower sip.max_calls",
                rtp.port_min,
                rtp.port_max,
                rtp.port_pairs(),
                sip.max_calls,
                sip.max_calls * 2
            ),
        );
    }
    issues
}

#[allow(clippy::too_many_lines)] // every uplink key's check
fn check_uplink(u: &super::UplinkConfig, problem: &mut impl FnMut(&str, String)) {
    let id_ok = |v: &str| {
        !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !id_ok(&u.site_id) {
        problem(
            "uplink.site_id",
            format!(
                "\"{}\" cannot be an MQTT topic level; use letters, digits, '-', '_' or '.'",
                u.site_id
            ),
        );
    }
    let mut names = std::collections::HashSet::new();
    for (i, entry) in u.trusted_keys.iter().enumerate() {
        let key = "uplink.trusted_keys";
        match super::parse_trusted_key(entry) {
            Ok(k) if !names.insert(k.name.clone()) => problem(
                key,
                format!(
                    "entry {}: key name \"{}\" is listed twice; give each key its own name",
                    i + 1,
                    k.name
                ),
            ),
            Ok(_) => {}
            Err(e) => problem(key, format!("entry {}: {e}", i + 1)),
        }
    }
    if !(1..=7 * 86_400).contains(&u.command_max_lifetime_secs) {
        problem(
            "uplink.command_max_lifetime_secs",
            format!(
                "{} is out of range; use 1 to 604800 (a week)",
                u.command_max_lifetime_secs
            ),
        );
    }
    if u.command_clock_skew_secs > 3600 {
        problem(
            "uplink.command_clock_skew_secs",
            format!(
                "{} is out of range; use 0 to 3600 (and fix the clocks: run NTP)",
                u.command_clock_skew_secs
            ),
        );
    }
    if !(1..=60_000).contains(&u.unverified_commands_per_min) {
        problem(
            "uplink.unverified_commands_per_min",
            format!(
                "{} is out of range; use 1 to 60000",
                u.unverified_commands_per_min
            ),
        );
    }
    if !(1..=10_000).contains(&u.unverified_commands_burst) {
        problem(
            "uplink.unverified_commands_burst",
            format!(
                "{} is out of range; use 1 to 10000",
                u.unverified_commands_burst
            ),
        );
    }
    if !u.client_id.is_empty() && !id_ok(&u.client_id) {
        problem(
            "uplink.client_id",
            format!("\"{}\" is not a portable MQTT client id; use letters, digits, '-', '_' or '.', or leave it empty", u.client_id),
        );
    }
    if !u.enabled {
        return;
    }
    if u.broker_host.trim().is_empty() {
        problem(
            "uplink.broker_host",
            "must not be empty while uplink.enabled = true; e.g. \"mqtt.example.com\"".into(),
        );
    }
    if u.broker_port == 0 {
        problem(
            "uplink.broker_port",
            "0 is not a port; use 1883 (plain) or 8883 (TLS)".into(),
        );
    }
    if super::MqttVersion::parse(&u.mqtt_version).is_none() {
        problem(
            "uplink.mqtt_version",
            format!(
                "\"{}\" is not supported; use \"5\" or \"3.1.1\"",
                u.mqtt_version
            ),
        );
    }
    if !(5..=3600).contains(&u.keepalive_secs) {
        problem(
            "uplink.keepalive_secs",
            format!("{} is out of range; use 5 to 3600", u.keepalive_secs),
        );
    }
    if !u.password.is_empty() && u.username.is_empty() {
        problem(
            "uplink.password",
            "a password without a username is never sent; set uplink.username too".into(),
        );
    }
    for (key, path, marker) in [
        ("uplink.ca_file", &u.ca_file, "CERTIFICATE"),
        ("uplink.client_cert", &u.client_cert, "CERTIFICATE"),
        ("uplink.client_key", &u.client_key, "PRIVATE KEY"),
    ] {
        if path.as_os_str().is_empty() {
            continue;
        }
        if let Some(message) = pem_problem(path, marker, "fix the path or leave it empty") {
            problem(key, message);
        }
    }
    if u.client_cert.as_os_str().is_empty() != u.client_key.as_os_str().is_empty() {
        problem(
            "uplink.client_cert",
            "client_cert and client_key go together; set both or neither".into(),
        );
    }
    if !u.client_cert.as_os_str().is_empty() && u.ca_file.as_os_str().is_empty() {
        problem(
            "uplink.ca_file",
            "a client certificate needs TLS; set uplink.ca_file to the broker's CA".into(),
        );
    }
    for (key, value) in [
        ("uplink.max_messages", u64::from(u.max_messages)),
        ("uplink.max_bytes", u.max_bytes),
        ("uplink.drain_burst", u64::from(u.drain_burst)),
        ("uplink.reconnect_min_ms", u64::from(u.reconnect_min_ms)),
    ] {
        if value == 0 {
            problem(
                key,
                "0 is not allowed; use at least 1 or leave it out for the default".into(),
            );
        }
    }
    for (key, hours) in [
        ("uplink.max_age_hours", u.max_age_hours),
        ("uplink.telemetry_max_age_hours", u.telemetry_max_age_hours),
    ] {
        if !(1..=8760).contains(&hours) {
            problem(
                key,
                format!("{hours} is out of range; use 1 to 8760 hours (a year)"),
            );
        }
    }
    if !(1..=1000).contains(&u.max_in_flight) {
        problem(
            "uplink.max_in_flight",
            format!("{} is out of range; use 1 to 1000", u.max_in_flight),
        );
    }
    if u64::from(u.reconnect_max_secs) * 1000 < u64::from(u.reconnect_min_ms) {
        problem(
            "uplink.reconnect_max_secs",
            format!(
                "{} s is below uplink.reconnect_min_ms ({} ms); raise it",
                u.reconnect_max_secs, u.reconnect_min_ms
            ),
        );
    }
}
