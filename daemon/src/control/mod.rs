//! Commands to the running daemon: parsed, authorized, executed, audited. The local control
//! socket and signed remote commands over MQTT ([`remote`]) go through the same dispatcher.

pub mod client;
mod host;
pub mod protocol;
pub mod rejection_budget;
pub mod remote;
pub mod socket;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::call::CallHost;
use crate::store::{self, Record, Store, TreeName};
pub use host::{ApplyOutcome, ControlHost, Phase, ReloadOutcome, Status};
use protocol::{Request, Response};

/// Who sent a command, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// `control-socket` or `mqtt`.
    pub channel: String,
    /// e.g. `uid 1000 pid 4242`, `mqtt:<key id>`, `mqtt:unverified`.
    pub who: String,
}

impl Principal {
    /// Remote commands are all audited, queries too.
    fn is_remote(&self) -> bool {
        self.channel == remote::CHANNEL
    }
}

/// One audited command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at_ms: u64,
    pub channel: String,
    pub who: String,
    pub command: String,
    pub args: serde_json::Value,
    /// `ok`, or `refused: …` / `failed: …` with the reason.
    pub outcome: String,
    /// The remote command's request id (MQTT), when it had a usable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Record for AuditRecord {
    const TREE: TreeName = TreeName::Audit;
    const SCHEMA: u32 = 1;
}

#[derive(Debug, Clone, PartialEq)]
enum Command {
    Status,
    Metrics,
    StoreInfo,
    AuditList {
        limit: usize,
    },
    ConfigReload,
    CallsList {
        limit: usize,
        before: Option<String>,
    },
    CallGet {
        id: String,
    },
    CallHangup {
        id: String,
    },
    CallTransfer {
        id: String,
        target: String,
    },
    CallDtmf {
        id: String,
        digits: String,
    },
    CallDial {
        to: String,
        ring_timeout_secs: u64,
    },
    LogLevel {
        level: String,
    },
    Drain,
    Undrain,
    ConfigGet,
    ConfigApply {
        toml: String,
    },
    RetentionPurge {
        older_than_days: u32,
    },
    ModelsInstall {
        name: String,
        url: String,
        sha256: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsInstallArgs {
    name: String,
    url: String,
    sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionPurgeArgs {
    older_than_days: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigApplyArgs {
    /// The whole config file.
    toml: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLevelArgs {
    level: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallDialArgs {
    to: String,
    #[serde(default = "default_ring_timeout")]
    ring_timeout_secs: u64,
}

fn default_ring_timeout() -> u64 {
    20
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallTransferArgs {
    id: String,
    target: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallDtmfArgs {
    id: String,
    digits: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallsListArgs {
    #[serde(default = "default_audit_limit")]
    limit: usize,
    /// Only calls older than this call id (the last of the previous page).
    #[serde(default)]
    before: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallGetArgs {
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditListArgs {
    #[serde(default = "default_audit_limit")]
    limit: usize,
}

fn default_audit_limit() -> usize {
    20
}

/// The most records one listing request returns; more are refused with a word on paging
/// rather than cut silently.
pub const MAX_LISTING: usize = 1000;

fn listing_limit(command: &str, limit: usize, paging: &str) -> Result<usize, String> {
    match limit {
        0 => Err(format!("bad arguments for `{command}`: limit must be at least 1")),
        l if l > MAX_LISTING => Err(format!(
            "bad arguments for `{command}`: limit {l} is over the {MAX_LISTING} one request returns; {paging}"
        )),
        l => Ok(l),
    }
}

const COMMANDS: &[&str] = &[
    "status",
    "metrics",
    "store.info",
    "audit.list",
    "config.reload",
    "calls.list",
    "call.get",
    "call.hangup",
    "call.transfer",
    "call.dtmf",
    "call.dial",
    "log.level",
    "drain",
    "undrain",
    "config.get",
    "config.apply",
    "retention.purge",
    "models.install",
];

impl Command {
    fn parse(req: &Request) -> Result<Command, String> {
        let args = if req.args.is_null() {
            serde_json::json!({})
        } else {
            req.args.clone()
        };
        let no_args = |cmd: Command| -> Result<Command, String> {
            match args.as_object() {
                Some(map) if map.is_empty() => Ok(cmd),
                _ => Err(format!("`{}` takes no arguments", req.command)),
            }
        };
        match req.command.as_str() {
            "status" => no_args(Command::Status),
            "metrics" => no_args(Command::Metrics),
            "store.info" => no_args(Command::StoreInfo),
            "config.reload" => no_args(Command::ConfigReload),
            "drain" => no_args(Command::Drain),
            "config.get" => no_args(Command::ConfigGet),
            "models.install" => {
                let a: ModelsInstallArgs = serde_json::from_value(args)
                    .map_err(|e| format!("bad arguments for `models.install`: {e}"))?;
                Ok(Command::ModelsInstall {
                    name: a.name,
                    url: a.url,
                    sha256: a.sha256,
                })
            }
            "retention.purge" => {
                let a: RetentionPurgeArgs = serde_json::from_value(args)
                    .map_err(|e| format!("bad arguments for `retention.purge`: {e}"))?;
                if !(1..=36_500).contains(&a.older_than_days) {
                    return Err("older_than_days must be 1 to 36500".into());
                }
                Ok(Command::RetentionPurge {
                    older_than_days: a.older_than_days,
                })
            }
            "config.apply" => {
                let a: ConfigApplyArgs = serde_json::from_value(args)
                    .map_err(|e| format!("bad arguments for `config.apply`: {e}"))?;
                Ok(Command::ConfigApply { toml: a.toml })
            }
            "undrain" => no_args(Command::Undrain),
            "audit.list" => {
                let a: AuditListArgs = serde_json::from_value(args)
                    .map_err(|e| format!("bad arguments for `audit.list`: {e}"))?;
                Ok(Command::AuditList {
                    limit: listing_limit("audit.list", a.limit, "ask for fewer")?,
                })
            }
            "calls.list" => {
                let a: CallsListArgs = serde_json::from_value(args)
                    .map_err(|e| format!("bad arguments for `calls.list`: {e}"))?;
                Ok(Command::CallsList {
                    limit: listing_limit(
                        "calls.list",
                        a.limit,
                        "page with `before` set to the last call id of the previous page",
                    )?,
                    before: a.before,
                })
            }
            "call.get" => {
                let a: CallGetArgs = serde_json::from_value(args)
                    .map_err(|e| format!("bad arguments for `call.get`: {e}"))?;
                Ok(Command::CallGet { id: a.id })
            }
            "call.hangup" => {
                let a: CallGetArgs = serde_json::from_value(args)
                    .map_err(|e| format!("bad arguments for `call.hangup`: {e}"))?;
                Ok(Command::CallHangup { id: a.id })
            }
            "call.transfer" => {
                let a: CallTransferArgs = serde_json::from_value(args)
                    .map_err(|e| format!("bad arguments for `call.transfer`: {e}"))?;
                if !a.target.starts_with("sip:") && !a.target.starts_with("sips:") {
                    return Err(format!("transfer target `{}` must be a sip: URI", a.target));
                }
                Ok(Command::CallTransfer {
                    id: a.id,
                    target: a.target,
                })
            }
            "call.dial" => {
                let a: CallDialArgs = serde_json::from_value(args)
                    .map_err(|e| format!("bad arguments for `call.dial`: {e}"))?;
                if !a.to.starts_with("sip:") && !a.to.starts_with("sips:") {
                    return Err(format!("`{}` must be a sip: URI", a.to));
                }
                if !(1..=25).contains(&a.ring_timeout_secs) {
                    return Err("ring_timeout_secs must be 1 to 25".into());
                }
                Ok(Command::CallDial {
                    to: a.to,
                    ring_timeout_secs: a.ring_timeout_secs,
                })
            }
            "call.dtmf" => {
                let a: CallDtmfArgs = serde_json::from_value(args)
                    .map_err(|e| format!("bad arguments for `call.dtmf`: {e}"))?;
                let valid = |c: char| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D');
                if a.digits.is_empty() || a.digits.len() > 32 || !a.digits.chars().all(valid) {
                    return Err("digits must be 1 to 32 of 0-9 * # A-D".into());
                }
                Ok(Command::CallDtmf {
                    id: a.id,
                    digits: a.digits,
                })
            }
            "log.level" => {
                let a: LogLevelArgs = serde_json::from_value(args)
                    .map_err(|e| format!("bad arguments for `log.level`: {e}"))?;
                Ok(Command::LogLevel { level: a.level })
            }
            other => Err(format!(
                "unknown command `{other}`; known commands: {}",
                COMMANDS.join(", ")
            )),
        }
    }

    /// Commands that change the daemon are audited; queries are not.
    fn changes_state(&self) -> bool {
        matches!(
            self,
            Command::ConfigReload
                | Command::CallHangup { .. }
                | Command::CallTransfer { .. }
                | Command::CallDtmf { .. }
                | Command::CallDial { .. }
                | Command::LogLevel { .. }
                | Command::Drain
                | Command::Undrain
                | Command::ConfigApply { .. }
                | Command::RetentionPurge { .. }
                | Command::ModelsInstall { .. }
        )
    }
}

/// The arguments as the audit tree keeps them: a config pushed with `config.apply` holds
/// passwords, so only its size and sha256 are kept.
fn audited_args(command: &str, args: &serde_json::Value) -> serde_json::Value {
    match (command, args.get("toml")) {
        ("config.apply", Some(toml)) => {
            use sha2::Digest as _;
            let text = toml.as_str().unwrap_or_default();
            serde_json::json!({
                "toml": format!(
                    "({} bytes, sha256 {})",
                    text.len(),
                    hex::encode(sha2::Sha256::digest(text.as_bytes()))
                )
            })
        }
        _ => args.clone(),
    }
}

pub struct Dispatcher {
    host: Arc<dyn ControlHost>,
}

impl Dispatcher {
    pub fn new(host: Arc<dyn ControlHost>) -> Self {
        Self { host }
    }

    /// Executes one request. Refused and state-changing commands are written to the audit
    /// tree before the response is returned.
    pub fn handle(&self, principal: &Principal, req: Request) -> Response {
        let id = req.id.clone();
        let command = match Command::parse(&req) {
            Ok(c) => c,
            Err(reason) => {
                self.audit(principal, &req, format!("refused: {reason}"));
                return Response::error(id, reason);
            }
        };
        let result = self.execute(&command);
        if command.changes_state() || principal.is_remote() {
            let outcome = match &result {
                Ok(_) => "ok".to_owned(),
                Err(e) => format!("failed: {e}"),
            };
            self.audit(principal, &req, outcome);
        }
        match result {
            Ok(value) => Response::ok(id, value),
            Err(e) => Response::error(id, e),
        }
    }

    #[allow(clippy::too_many_lines)] // one arm per command
    fn execute(&self, command: &Command) -> Result<serde_json::Value, String> {
        let to_json =
            |v: Result<serde_json::Value, serde_json::Error>| v.map_err(|e| e.to_string());
        match command {
            Command::Status => to_json(serde_json::to_value(self.host.status())),
            Command::Metrics => Ok(serde_json::json!({ "text": self.host.metrics_text() })),
            Command::StoreInfo => to_json(serde_json::to_value(self.host.store().info())),
            Command::AuditList { limit } => Ok(serde_json::Value::Array(
                self.host
                    .store()
                    .tree::<AuditRecord>()
                    .map_err(|e| e.to_string())?
                    .newest_json(*limit),
            )),
            Command::CallsList { limit, before } => {
                let before = match before {
                    Some(id) => Some(
                        id.parse::<ulid::Ulid>()
                            .map_err(|_| format!("`before`: {id:?} is not a call id"))?
                            .to_bytes()
                            .to_vec(),
                    ),
                    None => None,
                };
                Ok(serde_json::Value::Array(
                    self.host
                        .store()
                        .tree::<crate::call::record::CallRecord>()
                        .map_err(|e| e.to_string())?
                        .newest_json_before(before.as_deref(), *limit),
                ))
            }
            Command::CallGet { id } => match crate::call::record::get(self.host.store(), id) {
                Ok(Some(rec)) => to_json(serde_json::to_value(rec)),
                Ok(None) => Err(format!(
                    "no call with id {id}; `edgevoice calls` lists them"
                )),
                Err(e) => Err(e.to_string()),
            },
            Command::CallHangup { id } => {
                let call = self.live_call(id)?;
                call.blocking_send(crate::call::CallControl::Hangup)
                    .map_err(|_| format!("call {id} has just ended"))?;
                Ok(serde_json::json!({ "id": id, "hangup": "requested" }))
            }
            Command::CallDtmf { id, digits } => {
                let call = self.live_call(id)?;
                call.blocking_send(crate::call::CallControl::SendDtmf {
                    digits: digits.clone(),
                })
                .map_err(|_| format!("call {id} has just ended"))?;
                Ok(serde_json::json!({ "id": id, "dtmf": digits }))
            }
            Command::CallTransfer { id, target } => {
                let call = self.live_call(id)?;
                let (reply, answer) = tokio::sync::oneshot::channel();
                call.blocking_send(crate::call::CallControl::Transfer {
                    target: target.clone(),
                    reply,
                })
                .map_err(|_| format!("call {id} has just ended"))?;
                match answer.blocking_recv() {
                    Ok(Ok(outcome)) => {
                        Ok(serde_json::json!({ "id": id, "target": target, "outcome": outcome }))
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(format!("call {id} ended before the transfer was answered")),
                }
            }
            Command::CallDial {
                to,
                ring_timeout_secs,
            } => {
                let telephony = self.host.telephony().ok_or("telephony is not running")?;
                let (tx, rx) = tokio::sync::oneshot::channel();
                let req = crate::call::session::DialRequest {
                    to: to.clone(),
                    ring_timeout: std::time::Duration::from_secs(*ring_timeout_secs),
                    bridge: None,
                    cancel: None,
                };
                let calls: Arc<dyn CallHost> = self.host.clone();
                telephony.dial(&calls, req, tx)?;
                match rx.blocking_recv() {
                    Ok((id, outcome)) => {
                        Ok(serde_json::json!({ "id": id, "to": to, "result": outcome }))
                    }
                    Err(_) => Err("the call task ended without an outcome".into()),
                }
            }
            Command::LogLevel { level } => {
                let previous = self.host.set_log_level(level)?;
                Ok(serde_json::json!({ "level": level, "previous": previous }))
            }
            Command::ConfigGet => {
                let loaded = self.host.loaded_config();
                Ok(serde_json::json!({
                    "source": loaded.source,
                    "config": to_json(serde_json::to_value(loaded.config.redacted()))?,
                }))
            }
            Command::ConfigApply { toml } => {
                to_json(serde_json::to_value(self.host.apply_config(toml)?))
            }
            Command::RetentionPurge { older_than_days } => {
                let cutoff_ms =
                    store::now_ms().saturating_sub(u64::from(*older_than_days) * 86_400_000);
                let purged = crate::call::record::purge_ended_before(self.host.store(), cutoff_ms)
                    .map_err(|e| e.to_string())?;
                tracing::info!(
                    older_than_days,
                    calls = purged.calls,
                    recordings = purged.recordings,
                    "retention.purge"
                );
                Ok(serde_json::json!({
                    "older_than_days": older_than_days,
                    "cutoff_ms": cutoff_ms,
                    "calls": purged.calls,
                    "recordings": purged.recordings,
                }))
            }
            Command::ModelsInstall { name, url, sha256 } => {
                let config = self.host.config();
                let manifest = crate::models::Manifest::load(&config.models.manifest)
                    .map_err(|e| e.to_string())?;
                let installed = crate::models::install_from_url(
                    &manifest,
                    &config.models.dir,
                    name,
                    url,
                    sha256,
                )
                .map_err(|e| format!("{e}; the installed model is unchanged"))?;
                tracing::info!(model = %name, path = %installed.path.display(), "model installed on command; loading it");
                // Verified is not yet usable: the engines load from the new file beside the
                // running ones, and only a load that works replaces them.
                match self.host.reload_speech() {
                    Ok(agent) => Ok(serde_json::json!({
                        "installed": installed,
                        "agent": agent,
                    })),
                    Err(e) => {
                        let restored = crate::models::restore_previous(&installed);
                        tracing::error!(model = %name, "new model refused: {e}; {restored}");
                        Err(format!("{name}: the new file verified but {e}; {restored}"))
                    }
                }
            }
            Command::Drain => {
                let active = self.host.drain();
                Ok(serde_json::json!({ "phase": "draining", "active_calls": active }))
            }
            Command::Undrain => {
                self.host.undrain()?;
                Ok(serde_json::json!({ "phase": self.host.phase() }))
            }
            Command::ConfigReload => match self.host.reload() {
                Ok(outcome) => to_json(serde_json::to_value(outcome)),
                Err(e) => Err(format!(
                    "config refused, running config kept: {}",
                    e.lines().join("; ")
                )),
            },
        }
    }

    fn live_call(
        &self,
        id: &str,
    ) -> Result<tokio::sync::mpsc::Sender<crate::call::CallControl>, String> {
        self.host
            .live_calls()
            .get(id)
            .ok_or_else(|| format!("no live call with id {id}; `edgevoice calls` lists calls"))
    }

    /// Writes one audit record (logged, not returned, if the store refuses).
    pub(crate) fn audit(&self, principal: &Principal, req: &Request, outcome: String) {
        let record = AuditRecord {
            at_ms: store::now_ms(),
            channel: principal.channel.clone(),
            who: principal.who.clone(),
            command: req.command.chars().take(200).collect(),
            args: audited_args(&req.command, &req.args),
            outcome,
            request_id: if principal.is_remote() {
                req.id.clone()
            } else {
                None
            },
        };
        let event = crate::uplink::events::SiteEvent {
            at_ms: record.at_ms,
            kind: crate::uplink::events::SiteEventKind::Command {
                channel: record.channel.clone(),
                who: record.who.clone(),
                command: record.command.clone(),
                outcome: record.outcome.clone(),
                request_id: record.request_id.clone(),
            },
        };
        // With the uplink on, the audit record and its event upstream are one write: a crash
        // after it loses neither.
        let owes_event = self.host.uplink().is_some();
        let written = write_audit(self.host.store(), &record, owes_event.then_some(&event));
        match written {
            Ok(()) if owes_event => {
                crate::fault::crash_point("audit_saved");
                self.host.events().queue_owed();
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!("audit record not written: {e}");
                self.host.events().emit(event.kind);
            }
        }
    }
}

/// Writes one audit record, and with `event` the site event it owes upstream, as one durable
/// write: the one place audit records are written.
pub fn write_audit(
    store: &Store,
    record: &AuditRecord,
    event: Option<&crate::uplink::events::SiteEvent>,
) -> Result<(), store::StoreError> {
    let id = store.new_id();
    let mut writes = store::Writes::default();
    writes.put(id.to_bytes(), record)?;
    if let Some(event) = event {
        crate::uplink::events::owe(&mut writes, &id.to_string(), event)?;
    }
    store.apply(writes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::DaemonContext;

    fn req(command: &str, args: serde_json::Value) -> Request {
        Request::new(command, args)
    }

    #[test]
    fn a_listing_over_one_page_is_refused_with_how_to_page_not_cut() {
        let err =
            Command::parse(&req("calls.list", serde_json::json!({"limit": 5000}))).unwrap_err();
        assert!(
            err.contains("limit 5000") && err.contains("`before`"),
            "{err}"
        );
        assert!(Command::parse(&req("audit.list", serde_json::json!({"limit": 1001}))).is_err());
        assert_eq!(
            Command::parse(&req(
                "calls.list",
                serde_json::json!({"limit": 1000, "before": "01J0000000000000000000000A"})
            )),
            Ok(Command::CallsList {
                limit: 1000,
                before: Some("01J0000000000000000000000A".into())
            })
        );
    }

    #[test]
    fn parses_known_commands_and_their_args() {
        assert_eq!(
            Command::parse(&req("status", serde_json::Value::Null)),
            Ok(Command::Status)
        );
        assert_eq!(
            Command::parse(&req("audit.list", serde_json::json!({"limit": 5}))),
            Ok(Command::AuditList { limit: 5 })
        );
        assert_eq!(
            Command::parse(&req("audit.list", serde_json::Value::Null)),
            Ok(Command::AuditList { limit: 20 })
        );
    }

    fn context(
        dir: &std::path::Path,
        log: Option<crate::ops::logging::LogControl>,
    ) -> (Dispatcher, Arc<DaemonContext>) {
        let mut config = crate::config::Config::default();
        config.daemon.state_dir = dir.join("state");
        config.daemon.runtime_dir = dir.join("run");
        let loaded = crate::config::LoadedConfig {
            config,
            source: dir.join("edgevoice.toml"),
        };
        let store = crate::store::Store::open(&dir.join("state")).unwrap();
        let ctx = Arc::new(DaemonContext::new(loaded, store, log));
        (Dispatcher::new(ctx.clone()), ctx)
    }

    fn local() -> Principal {
        Principal {
            channel: "control-socket".into(),
            who: "test".into(),
        }
    }

    #[test]
    fn log_level_changes_the_filter_and_the_running_config() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _subscriber) = crate::ops::logging::LogControl::detached("info");
        let (d, ctx) = context(dir.path(), Some(log));
        let r = d.handle(
            &local(),
            req("log.level", serde_json::json!({"level": "debug,sled=warn"})),
        );
        assert!(r.ok, "{r:?}");
        assert_eq!(r.result.unwrap()["previous"], "info");
        assert_eq!(ctx.config().config.daemon.log_level, "debug,sled=warn");
        let r = d.handle(
            &local(),
            req("log.level", serde_json::json!({"level": "loud"})),
        );
        assert!(!r.ok && r.error.unwrap().contains("not a log level"));
        assert_eq!(ctx.config().config.daemon.log_level, "debug,sled=warn");
        let r = d.handle(&local(), req("log.level", serde_json::json!({})));
        assert!(!r.ok);
        // State-changing: audited, refusals too.
        let audit = ctx.store().tree::<AuditRecord>().unwrap().newest_json(10);
        assert_eq!(audit.len(), 3, "{audit:?}");
    }

    #[test]
    fn drain_refuses_new_calls_until_undrain() {
        let dir = tempfile::tempdir().unwrap();
        let (d, ctx) = context(dir.path(), None);
        let r = d.handle(&local(), req("drain", serde_json::Value::Null));
        assert!(r.ok, "{r:?}");
        assert_eq!(r.result.unwrap()["phase"], "draining");
        assert_eq!(ctx.status().phase, Phase::Draining);
        assert!(ctx.work().try_begin(10).is_none(), "new calls refused");
        let r = d.handle(&local(), req("undrain", serde_json::Value::Null));
        assert!(r.ok, "{r:?}");
        assert_eq!(ctx.status().phase, Phase::Ready);
        assert!(ctx.work().try_begin(10).is_some(), "calls taken again");
    }

    #[test]
    fn config_get_shows_the_running_config_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.uplink.username = "dev".into();
        config.uplink.password = "hunter2".into();
        let loaded = crate::config::LoadedConfig {
            config,
            source: dir.path().join("edgevoice.toml"),
        };
        let store = crate::store::Store::open(&dir.path().join("state")).unwrap();
        let d = Dispatcher::new(Arc::new(DaemonContext::new(loaded, store, None)));
        let r = d.handle(&local(), req("config.get", serde_json::Value::Null));
        assert!(r.ok, "{r:?}");
        let v = r.result.unwrap();
        assert_eq!(v["config"]["uplink"]["username"], "dev");
        assert_eq!(v["config"]["uplink"]["password"], crate::config::REDACTED);
        assert!(!v.to_string().contains("hunter2"));
        assert_eq!(
            v["source"],
            dir.path().join("edgevoice.toml").display().to_string()
        );
    }

    #[test]
    fn config_apply_validates_replaces_the_file_and_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let (d, ctx) = context(dir.path(), None);
        let source = dir.path().join("edgevoice.toml");
        let old = format!(
            "[daemon]\nstate_dir = \"{}\"\nruntime_dir = \"run\"\n",
            dir.path().join("state").display()
        );
        std::fs::write(&source, &old).unwrap();
        let apply = |text: &str| {
            d.handle(
                &local(),
                req("config.apply", serde_json::json!({ "toml": text })),
            )
        };
        // Invalid: refused, file and running config untouched.
        let r = apply(&format!("{old}log_level = \"loud\"\n"));
        let e = r.error.unwrap();
        assert!(
            e.contains("config refused") && e.contains("daemon.log_level"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&source).unwrap(), old);
        assert!(!dir.path().join("edgevoice.toml.last-good").exists());
        let r = apply("[daemon\n");
        assert!(!r.ok);
        // Valid: applied, the old file kept as last good.
        let new = format!("{old}log_level = \"debug\"\n");
        let r = apply(&new);
        assert!(r.ok, "{r:?}");
        assert_eq!(std::fs::read_to_string(&source).unwrap(), new);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("edgevoice.toml.last-good")).unwrap(),
            old
        );
        assert_eq!(ctx.config().config.daemon.log_level, "debug");
        assert!(!dir.path().join("edgevoice.toml.tmp").exists());
        // The audit keeps neither text nor secrets of the pushed files, only size and hash.
        let audit = ctx.store().tree::<AuditRecord>().unwrap().newest_json(10);
        assert_eq!(audit.len(), 3, "{audit:?}");
        for r in &audit {
            let kept = r["args"]["toml"].as_str().unwrap();
            assert!(
                kept.contains("bytes, sha256") && !kept.contains("state_dir"),
                "{kept}"
            );
        }
    }

    #[test]
    fn unknown_command_lists_the_known_ones() {
        let err = Command::parse(&req("reboot", serde_json::Value::Null)).unwrap_err();
        assert!(
            err.contains("unknown command `reboot`") && err.contains("status"),
            "{err}"
        );
    }

    #[test]
    fn unexpected_arguments_are_refused() {
        assert!(Command::parse(&req("status", serde_json::json!({"x": 1}))).is_err());
        assert!(Command::parse(&req("audit.list", serde_json::json!({"limit": "many"}))).is_err());
        assert!(Command::parse(&req("audit.list", serde_json::json!({"lmit": 3}))).is_err());
    }
}
