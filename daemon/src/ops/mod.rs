//! The daemon's lifecycle: start-up checks, systemd notification, signals, reload, drain.

pub mod cli;
pub mod connectivity;
pub mod logging;
pub mod metrics;
pub mod systemd;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use crate::call::work::ActiveWork;
use crate::call::SpeechEngines;
use crate::config::{self, ConfigError, LoadedConfig};
use crate::control::{self, ApplyOutcome, Phase, ReloadOutcome, Status};
use crate::store::{Store, StoreError};
use crate::uplink::events::{EventSink, SiteEventKind};
use logging::LogControl;
use systemd::Notifier;

pub use crate::VERSION;

impl crate::uplink::StoreOwner for DaemonContext {
    fn store(&self) -> &Store {
        &self.store
    }
}

/// `dir/name` → `dir/name{suffix}`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` so a crash leaves the old or the new file, never a mix: a
/// temporary file beside it (same mode), fsynced, renamed over it, the directory fsynced.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = sibling(path, ".tmp");
    let mode = std::fs::metadata(path).ok().map(|m| m.permissions());
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        if let Some(mode) = mode {
            file.set_permissions(mode)?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Marks a config file written by `config.apply` whose restart-only changes have not started
/// yet: `<file>.applied`, holding the keys.
fn applied_marker(source: &Path) -> PathBuf {
    sibling(source, ".applied")
}

/// After a start that failed: if the config was written by `config.apply` and its
/// restart-only changes never started, puts `<file>.last-good` back and says so in one line
/// (the caller exits non-zero, so systemd starts again with the good file). None otherwise.
pub fn roll_back_applied_config(source: &Path) -> Option<String> {
    let marker = applied_marker(source);
    let keys = std::fs::read_to_string(&marker).ok()?;
    let last_good = sibling(source, ".last-good");
    let good = std::fs::read(&last_good).ok()?;
    let _ = std::fs::remove_file(&marker);
    Some(match write_atomically(source, &good) {
        Ok(()) => format!(
            "the config written by config.apply (changing {keys}) did not start; {} restored from {}, start again to use it",
            source.display(),
            last_good.display()
        ),
        Err(e) => format!(
            "the config written by config.apply (changing {keys}) did not start, and restoring {} from {} failed ({e}); copy it back by hand",
            source.display(),
            last_good.display()
        ),
    })
}

/// Everything the running daemon shares between its tasks.
pub struct DaemonContext {
    started: Instant,
    config: RwLock<LoadedConfig>,
    store: Store,
    work: Arc<ActiveWork>,
    phase: AtomicU8,
    log: Option<LogControl>,
    notifier: Notifier,
    sip_listen: std::sync::OnceLock<std::net::SocketAddr>,
    live_calls: crate::call::LiveCalls,
    telephony: std::sync::OnceLock<crate::call::Telephony>,
    registrations: std::sync::OnceLock<crate::telephony::sip::registration::RegistrationBoard>,
    uplink: std::sync::OnceLock<crate::uplink::UplinkHandle>,
    uplink_error: std::sync::OnceLock<String>,
    /// Set once SIGTERM/SIGINT started the final drain: `undrain` is refused from then on.
    stopping: std::sync::atomic::AtomicBool,
    /// One `config.apply` at a time.
    applying: std::sync::Mutex<()>,
    /// The voice agent's engines (call.handler = "agent"), or why they are not there; None
    /// while they load. Replaced whole by a model swap ([`DaemonContext::reload_speech`]).
    speech: RwLock<Option<SpeechEngines>>,
    /// One engine load at a time (start-up, model swaps).
    loading_speech: std::sync::Mutex<()>,
    /// Flipped once when a drain times out: live calls hang up and record why.
    call_shutdown: tokio::sync::watch::Sender<bool>,
    metrics: metrics::Metrics,
    events: EventSink,
    unsaved_records: crate::call::record::UnsavedRecords,
}

impl crate::telephony::sip::SipHost for DaemonContext {
    fn config(&self) -> config::Config {
        DaemonContext::config(self).config
    }

    fn is_draining(&self) -> bool {
        self.work.is_draining()
    }

    fn active_calls(&self) -> usize {
        self.work.active()
    }

    fn observe_admission_refusal(&self, code: u16) {
        self.metrics.observe_refusal(code);
    }

    fn observe_sip_refused(&self, code: u16) {
        self.metrics.observe_sip_refused(code);
    }

    fn observe_sip_dropped(&self, reason: &'static str) {
        self.metrics.observe_sip_dropped(reason);
    }

    fn audit_refused_invite(self: Arc<Self>, source: std::net::IpAddr, from: &str, reason: &str) {
        let record = control::AuditRecord {
            at_ms: crate::store::now_ms(),
            channel: "sip".into(),
            who: source.to_string(),
            command: "INVITE".into(),
            args: serde_json::json!({ "from": from.chars().take(200).collect::<String>() }),
            outcome: format!("refused: 403 {reason}"),
            request_id: None,
        };
        let ctx = self;
        // The store fsyncs: keep it off the runtime's workers.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = control::write_audit(ctx.store(), &record, None) {
                tracing::error!("audit record not written: {e}");
            }
        });
    }
}

impl crate::call::CallHost for DaemonContext {
    fn config(&self) -> config::Config {
        DaemonContext::config(self).config
    }

    fn store(&self) -> &Store {
        DaemonContext::store(self)
    }

    fn uplink(&self) -> Option<&crate::uplink::UplinkHandle> {
        DaemonContext::uplink(self)
    }

    fn unsaved_records(&self) -> &crate::call::record::UnsavedRecords {
        &self.unsaved_records
    }

    fn work(&self) -> &Arc<ActiveWork> {
        &self.work
    }

    fn live_calls(&self) -> &crate::call::LiveCalls {
        &self.live_calls
    }

    fn speech(&self) -> Option<SpeechEngines> {
        DaemonContext::speech(self)
    }

    fn call_shutdown(&self) -> tokio::sync::watch::Receiver<bool> {
        self.call_shutdown.subscribe()
    }

    fn observe_call(&self, rec: &crate::call::record::CallRecord) {
        self.metrics.observe_call(rec);
    }

    fn telephony(&self) -> Option<&crate::call::Telephony> {
        self.telephony.get()
    }
}

impl control::ControlHost for DaemonContext {
    fn loaded_config(&self) -> LoadedConfig {
        DaemonContext::config(self)
    }

    fn status(&self) -> Status {
        DaemonContext::status(self)
    }

    fn phase(&self) -> Phase {
        DaemonContext::phase(self)
    }

    fn metrics_text(&self) -> String {
        DaemonContext::metrics_text(self)
    }

    fn events(&self) -> &EventSink {
        &self.events
    }

    fn drain(&self) -> usize {
        DaemonContext::drain(self)
    }

    fn undrain(&self) -> Result<(), String> {
        DaemonContext::undrain(self)
    }

    fn reload(&self) -> Result<ReloadOutcome, ConfigError> {
        DaemonContext::reload(self)
    }

    fn apply_config(&self, text: &str) -> Result<ApplyOutcome, String> {
        DaemonContext::apply_config(self, text)
    }

    fn set_log_level(&self, directives: &str) -> Result<String, String> {
        DaemonContext::set_log_level(self, directives)
    }

    fn reload_speech(&self) -> Result<String, String> {
        DaemonContext::reload_speech(self)
    }
}

impl DaemonContext {
    pub fn new(config: LoadedConfig, store: Store, log: Option<LogControl>) -> Self {
        Self {
            started: Instant::now(),
            config: RwLock::new(config),
            store,
            work: Arc::new(ActiveWork::default()),
            phase: AtomicU8::new(0),
            log,
            notifier: Notifier::from_env(),
            call_shutdown: tokio::sync::watch::channel(false).0,
            stopping: std::sync::atomic::AtomicBool::new(false),
            applying: std::sync::Mutex::new(()),
            sip_listen: std::sync::OnceLock::new(),
            live_calls: crate::call::LiveCalls::default(),
            telephony: std::sync::OnceLock::new(),
            registrations: std::sync::OnceLock::new(),
            uplink: std::sync::OnceLock::new(),
            uplink_error: std::sync::OnceLock::new(),
            speech: RwLock::new(None),
            loading_speech: std::sync::Mutex::new(()),
            metrics: metrics::Metrics::default(),
            events: EventSink::default(),
            unsaved_records: crate::call::record::UnsavedRecords::default(),
        }
    }

    /// The Prometheus text exposition of this daemon now.
    pub fn metrics_text(&self) -> String {
        metrics::render_prometheus(
            &self.metrics.counters(),
            &self.status(),
            &metrics::ProcessStats::current(),
        )
    }

    /// The telemetry snapshot published on the uplink.
    pub fn telemetry(&self) -> metrics::Telemetry {
        metrics::telemetry(
            &self.metrics.counters(),
            &self.status(),
            &metrics::ProcessStats::current(),
            crate::store::now_ms(),
        )
    }

    pub fn config(&self) -> LoadedConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The uplink, when `[uplink] enabled` and it started.
    pub fn uplink(&self) -> Option<&crate::uplink::UplinkHandle> {
        self.uplink.get()
    }

    /// The speech engines: None before they are loaded (or with media test mode), Err when they
    /// failed to load (agent calls get 503 with the reason).
    pub fn speech(&self) -> Option<SpeechEngines> {
        self.speech
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the speech engines from the model files now installed (blocking: seconds) and,
    /// if they load, puts them in place: new calls get them, calls in progress keep the engines
    /// they started with, freed when the last of those calls ends. A load that fails changes
    /// nothing that runs and says why. Returns what the agent's status now is.
    pub fn reload_speech(&self) -> Result<String, String> {
        let config = self.config().config;
        if config.call.handler != crate::config::CallHandler::Agent {
            return Ok("not loaded: call.handler is media_test".to_owned());
        }
        let _one = self
            .loading_speech
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let service = crate::agent::engines::AgentEngines::load(&config)
            .map_err(|e| format!("the engines did not load ({e}); the running ones are kept"))?;
        // An optional engine the running service has but the new one lost (a voice or model
        // file that verifies but does not load) would quietly degrade every new call: refuse.
        if let Some(Ok(running)) = self.speech() {
            let had: Vec<&str> = running.degraded().iter().map(|(e, _)| *e).collect();
            if let Some((engine, why)) = service
                .degraded()
                .into_iter()
                .find(|(e, _)| !had.contains(e))
            {
                return Err(format!(
                    "the {engine} did not load ({why}); the running engines are kept"
                ));
            }
        }
        let previous = self
            .speech
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(Ok(Arc::new(service)));
        let in_use = match &previous {
            // The swap's own reference is dropped below: what is left belongs to calls.
            Some(Ok(old)) => Arc::strong_count(old) - 1,
            _ => 0,
        };
        drop(previous);
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            calls_on_previous_engines = in_use,
            "speech engines swapped: new calls use the newly loaded models"
        );
        Ok(format!(
            "ready: loaded in {} ms; {in_use} call(s) in progress finish on the previous engines",
            started.elapsed().as_millis()
        ))
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    pub fn status(&self) -> Status {
        let loaded = self.config();
        Status {
            version: VERSION.to_owned(),
            pid: std::process::id(),
            phase: self.phase(),
            uptime_secs: self.started.elapsed().as_secs(),
            config_source: loaded.source.clone(),
            state_dir: loaded.config.daemon.state_dir.clone(),
            store_size_bytes: self.store.size_on_disk(),
            store_write_failure: self.store.write_failure(),
            unsaved_call_records: self.unsaved_records.len(),
            device_id: self.store.instance().device_id.clone(),
            active_calls: self.work.active(),
            max_calls: loaded.config.sip.max_calls,
            sip_listen: self.sip_listen.get().map(|a| a.to_string()),
            registrations: self
                .registrations
                .get()
                .map(|b| b.lock().unwrap_or_else(|p| p.into_inner()).clone())
                .unwrap_or_default(),
            trunks: self
                .telephony
                .get()
                .map(|t| {
                    t.ua.trunk_health
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                })
                .unwrap_or_default(),
            uplink: match (self.uplink.get(), self.uplink_error.get()) {
                (Some(u), _) => u.report().summary(),
                (None, Some(e)) => format!("failed: {e}"),
                (None, None) => "not configured".to_owned(),
            },
            uplink_detail: self.uplink.get().map(|u| u.report()),
            agent: match (loaded.config.call.handler, self.speech()) {
                (crate::config::CallHandler::MediaTest, _) => "media test mode".to_owned(),
                (_, None) => "loading".to_owned(),
                (_, Some(Ok(_))) => "ready".to_owned(),
                (_, Some(Err(e))) => format!("unavailable: {e}"),
            },
            speech: self.speech().and_then(|s| s.ok()).map(|s| s.status()),
        }
    }

    /// Stops taking new calls (new INVITEs get 503, OPTIONS too) while the daemon keeps running
    /// and active calls go on: the `drain` command. Returns the active call count.
    pub fn drain(&self) -> usize {
        self.work.start_drain();
        self.set_phase(Phase::Draining);
        let active = self.work.active();
        tracing::warn!(
            active,
            "draining on command: new calls are refused until `undrain`"
        );
        self.notifier.status(&self.status().summary());
        active
    }

    /// Takes calls again after [`drain`](Self::drain); refused once the daemon is stopping.
    pub fn undrain(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Acquire) {
            return Err("the daemon is stopping (SIGTERM); it cannot take calls again".into());
        }
        if self.phase() == Phase::Draining {
            self.work.stop_drain();
            self.set_phase(Phase::Ready);
            tracing::info!("drain ended on command: taking calls again");
            self.notifier.status(&self.status().summary());
        }
        Ok(())
    }

    /// Changes the log filter now (`log.level`); the running config's `daemon.log_level`
    /// follows, so `config.get` shows it, and a reload re-applies the file's value. Returns the
    /// previous value.
    pub fn set_log_level(&self, directives: &str) -> Result<String, String> {
        if !config::valid_log_level(directives) {
            return Err(format!(
                "\"{directives}\" is not a log level; use off, error, warn, info, debug or trace, or directives like \"info,edgevoice::uplink=debug\""
            ));
        }
        let log = self
            .log
            .as_ref()
            .ok_or("logging is not controllable in this process")?;
        if log.is_pinned() {
            return Err("RUST_LOG is set in the daemon's environment and pins the filter; unset it to change the level at run time".into());
        }
        log.set_level(directives)?;
        let mut running = self.config.write().unwrap_or_else(|p| p.into_inner());
        let previous =
            std::mem::replace(&mut running.config.daemon.log_level, directives.to_owned());
        tracing::info!(level = directives, previous = %previous, "log level changed");
        Ok(previous)
    }

    /// `config.apply`: validates `text` as the config file; if valid, keeps the current file as
    /// `<file>.last-good`, replaces the file atomically and applies it through [`reload`]
    /// (the SIGHUP path). If that fails, the last good file is put back. A refused text
    /// changes neither the file nor the running config.
    ///
    /// [`reload`]: Self::reload
    pub fn apply_config(&self, text: &str) -> Result<ApplyOutcome, String> {
        let _one = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let source = self.config().source;
        if let Err(e) = config::parse(text, &source) {
            return Err(format!(
                "config refused, running config and file kept: {}",
                e.lines().join("; ")
            ));
        }
        let last_good = sibling(&source, ".last-good");
        match config::load(&source) {
            Ok(_) => {
                let current = std::fs::read(&source)
                    .map_err(|e| format!("cannot read {} ({e})", source.display()))?;
                write_atomically(&last_good, &current).map_err(|e| {
                    format!(
                        "cannot keep the last good config as {} ({e}); the daemon needs write access to {}",
                        last_good.display(),
                        source.parent().unwrap_or(Path::new("/")).display()
                    )
                })?;
            }
            // The file on disk was broken by hand: an older last-good copy stays the fallback.
            Err(e) => tracing::warn!(
                "config.apply: {} does not validate ({}); keeping the older {}",
                source.display(),
                e.lines().join("; "),
                last_good.display()
            ),
        }
        write_atomically(&source, text.as_bytes()).map_err(|e| {
            format!(
                "cannot write {} ({e}); nothing changed; the daemon needs write access to it and its directory",
                source.display()
            )
        })?;
        match self.reload() {
            Ok(outcome) => {
                // Keys that only take effect at the next start have not been tried yet: that
                // start rolls the file back if it fails (roll_back_applied_config).
                let marker = applied_marker(&source);
                if outcome.restart_required.is_empty() {
                    let _ = std::fs::remove_file(&marker);
                } else if let Err(e) =
                    write_atomically(&marker, outcome.restart_required.join(",").as_bytes())
                {
                    tracing::warn!(
                        "cannot write {} ({e}): a failed restart will not roll back to {}",
                        marker.display(),
                        last_good.display()
                    );
                }
                tracing::info!(source = %source.display(), last_good = %last_good.display(), "config applied on command");
                Ok(ApplyOutcome {
                    source,
                    last_good,
                    restart_required: outcome.restart_required,
                })
            }
            Err(e) => {
                let _ = std::fs::remove_file(applied_marker(&source));
                let restored =
                    std::fs::read(&last_good).and_then(|good| write_atomically(&source, &good));
                let what = match restored {
                    Ok(()) => format!("{} restored from {}", source.display(), last_good.display()),
                    Err(r) => format!(
                        "restoring {} from {} failed too ({r}); fix the file by hand",
                        source.display(),
                        last_good.display()
                    ),
                };
                Err(format!(
                    "the new config did not apply ({}); running config kept, {what}",
                    e.lines().join("; ")
                ))
            }
        }
    }

    /// Re-reads the config file and applies it: the path shared by SIGHUP and the control
    /// socket (and later remote config pushes). A file that fails validation changes nothing.
    pub fn reload(&self) -> Result<ReloadOutcome, ConfigError> {
        self.notifier.reloading();
        let result = self.reload_inner();
        self.notifier.ready(&self.status().summary());
        result
    }

    fn reload_inner(&self) -> Result<ReloadOutcome, ConfigError> {
        let running = self.config();
        let mut fresh = config::load(&running.source)?;
        // A --state-dir given on the command line stays in force across reloads.
        fresh.config.daemon.state_dir = running.config.daemon.state_dir.clone();
        let changes = running.config.restart_only_changes(&fresh.config);
        for change in &changes {
            tracing::warn!("{change}");
        }
        let merged = running.config.merged_for_reload(&fresh.config);
        self.store.set_reserve(merged.daemon.min_free_disk_bytes());
        if merged.daemon.log_level != running.config.daemon.log_level {
            if let Some(log) = &self.log {
                if let Err(e) = log.set_level(&merged.daemon.log_level) {
                    tracing::warn!("daemon.log_level not applied: {e}");
                }
            }
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = LoadedConfig {
            config: merged,
            source: running.source.clone(),
        };
        tracing::info!(source = %running.source.display(), "configuration reloaded");
        Ok(ReloadOutcome {
            source: running.source,
            restart_required: changes.iter().map(|c| c.key.to_owned()).collect(),
        })
    }
}

/// Why the daemon could not start; each is one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot create runtime dir {}: {source}; create it for the daemon's user or set daemon.runtime_dir", path.display())]
    RuntimeDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Control(#[from] control::socket::SocketError),
    #[error("{0}")]
    Sip(#[from] crate::telephony::sip::user_agent::SipError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("stopped to reopen the store after it failed a write ({0}); the service manager starts it again (systemd: Restart=on-failure)")]
    StoreReopen(String),
}

impl StartError {
    /// Exit code: 2 for a configuration problem (systemd does not restart on it), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// Loads the config named on the command line, applying a `--state-dir` override.
pub fn load_config(path: &Path, state_dir: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    let mut loaded = config::load(path)?;
    if let Some(dir) = state_dir {
        loaded.config.daemon.state_dir = dir.to_owned();
    }
    Ok(loaded)
}

/// Runs the daemon until SIGTERM/SIGINT and a graceful drain.
pub fn run(loaded: LoadedConfig, log: Option<LogControl>) -> Result<(), StartError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("edgevoice-rt")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    runtime.block_on(run_async(loaded, log))
}

#[allow(clippy::too_many_lines)] // the daemon's start-up in order, each step a few lines
async fn run_async(loaded: LoadedConfig, log: Option<LogControl>) -> Result<(), StartError> {
    let store = Store::open(&loaded.config.daemon.state_dir)?;
    store.set_reserve(loaded.config.daemon.min_free_disk_bytes());
    // Records a previous run could not write (its store refused them) go in first.
    // Ended calls owe upstream in the same write that ends them; the uplink queues what is
    // owed when it starts.
    let upstream = match loaded.config.uplink.enabled {
        true => crate::call::record::Upstream::Send,
        false => crate::call::record::Upstream::LocalOnly,
    };
    match crate::call::record::import_unsaved_file(
        &store,
        &loaded.config.daemon.state_dir,
        upstream,
    ) {
        Ok(records) if !records.is_empty() => tracing::info!(
            "{} call records the last run could not write are now in the store",
            records.len()
        ),
        Ok(_) => {}
        Err(e) => tracing::error!("{e}"),
    }
    let interrupted = match crate::call::record::close_interrupted(&store, upstream) {
        Ok(closed) => {
            if !closed.is_empty() {
                tracing::warn!(
                    "{} call(s) were interrupted by the last stop; their records now say so",
                    closed.len()
                );
            }
            closed
        }
        Err(e) => {
            tracing::error!("cannot check for interrupted calls: {e}");
            Vec::new()
        }
    };
    let runtime_dir = loaded.config.daemon.runtime_dir.clone();
    std::fs::create_dir_all(&runtime_dir).map_err(|source| StartError::RuntimeDir {
        path: runtime_dir.clone(),
        source,
    })?;
    let socket_path = loaded.config.control_socket();
    let ctx = Arc::new(DaemonContext::new(loaded, store, log));
    let listener = control::socket::bind(&socket_path)?;

    let mut sigterm = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;

    let dispatcher = Arc::new(control::Dispatcher::new(ctx.clone()));
    let server = tokio::spawn(control::socket::serve(listener, dispatcher.clone()));
    if ctx.config().config.uplink.enabled {
        let weak = Arc::downgrade(&ctx);
        let health = Arc::new(move || match weak.upgrade() {
            // Not status(): that asks the uplink for its own state, from inside the uplink.
            Some(ctx) => {
                let mut health = format!(
                    "{}: {} active calls",
                    ctx.phase().as_str(),
                    ctx.work.active()
                );
                if let Some(e) = ctx.store.write_failure() {
                    health.push_str(&format!("; store writes failing: {e}"));
                }
                health
            }
            None => "stopping".to_owned(),
        });
        let device_id = ctx.store.instance().device_id.clone();
        let owner: Arc<dyn crate::uplink::StoreOwner> = ctx.clone();
        let commands: Arc<dyn crate::uplink::CommandHandler> = Arc::new(
            control::remote::RemoteCommands::new(ctx.clone(), dispatcher.clone()),
        );
        match crate::uplink::start(
            &ctx.config().config.uplink,
            owner,
            &device_id,
            health,
            Some(commands),
        ) {
            Ok(handle) => {
                ctx.events.start(handle.clone());
                let _ = ctx.uplink.set(handle);
            }
            Err(e) => {
                tracing::error!("uplink not started: {e}");
                let _ = ctx.uplink_error.set(e.to_string());
            }
        }
    }
    if ctx.config().config.call.handler == crate::config::CallHandler::Agent {
        // Seconds of model loading: off the runtime, before SIP takes calls.
        let config = ctx.config().config;
        let loader = ctx.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let _one = loader
                .loading_speech
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            crate::agent::engines::AgentEngines::load(&config)
        })
        .await;
        let speech = match loaded {
            Ok(Ok(s)) => Ok(Arc::new(s)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("speech engines panicked while loading: {e}")),
        };
        if let Err(e) = &speech {
            tracing::error!("voice agent unavailable, calls get 503: {e}");
        }
        let mut slot = ctx.speech.write().unwrap_or_else(|p| p.into_inner());
        // A model swap that finished during start-up already put newer engines in place.
        if slot.is_none() {
            *slot = Some(speech);
        }
    }
    if ctx.uplink.get().is_some() {
        tokio::spawn(metrics::publish_telemetry(Arc::downgrade(&ctx)));
    }
    let metrics_listen = ctx.config().config.metrics.listen;
    if !metrics_listen.is_empty() {
        // Validated as IP:PORT; a port in use is an error that names the key, not a crash.
        match tokio::net::TcpListener::bind(&metrics_listen).await {
            Ok(listener) => {
                tracing::info!(listen = %metrics_listen, "metrics served on http://{metrics_listen}/metrics");
                tokio::spawn(metrics::serve_http(listener, Arc::downgrade(&ctx)));
            }
            Err(e) => tracing::error!(
                "metrics.listen {metrics_listen}: cannot listen ({e}); metrics stay available through `edgevoice metrics`"
            ),
        }
    }
    let telephony = crate::call::start_telephony(ctx.clone()).await?;
    let sip = telephony.ua.clone();
    let _ = ctx.sip_listen.set(sip.local_addr);
    let _ = ctx.registrations.set(sip.registrations.clone());
    let _ = ctx.telephony.set(telephony);

    // A `drain` command that arrived during start-up stays in force.
    if !ctx.work.is_draining() {
        ctx.set_phase(Phase::Ready);
    }
    // Every component started with this file: an applied config is now the good one.
    let source = ctx.config().source;
    if std::fs::remove_file(applied_marker(&source)).is_ok() {
        tracing::info!(config = %source.display(), "the config written by config.apply started cleanly");
    }
    let status = ctx.status();
    let mut last_status = status.summary();
    let mut last_connectivity = connectivity::Connectivity::of(status);
    ctx.notifier.ready(&last_status);
    ctx.events.emit(SiteEventKind::Started {
        version: VERSION.to_owned(),
        config_source: source.display().to_string(),
        sip_listen: ctx.sip_listen.get().map(|a| a.to_string()),
        interrupted_calls: interrupted.len(),
    });
    tracing::info!(
        version = VERSION,
        config = %ctx.config().source.display(),
        state_dir = %ctx.config().config.daemon.state_dir.display(),
        control = %socket_path.display(),
        device_id = %ctx.store.instance().device_id,
        "edgevoiced ready"
    );

    // The watchdog is fed from this loop, so a wedged loop stops the pings and systemd restarts us.
    let watchdog_every = ctx.notifier.watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_tick = tokio::time::interval(Duration::from_secs(5));
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let signal_name = loop {
        // sled writes nothing more after a failed write of its own; once the disk has room
        // again the daemon stops (draining calls) so its restart reopens the store.
        if ctx.store.is_broken() && ctx.store.has_room() {
            tracing::error!(
                "the store failed a write ({}) and takes none until it is reopened; the disk has room again: stopping to restart",
                ctx.store.write_failure().unwrap_or_default()
            );
            break STORE_REOPEN;
        }
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => {
                let (outcome, restart_required) = match ctx.reload() {
                    Ok(done) => ("ok".to_owned(), done.restart_required),
                    Err(e) => {
                        for line in e.lines() {
                            tracing::error!("reload refused, running config kept: {line}");
                        }
                        let first = e.lines().into_iter().next().unwrap_or_default();
                        (format!("refused: {first}"), Vec::new())
                    }
                };
                ctx.events.emit(SiteEventKind::ConfigReloaded {
                    source: ctx.config().source.display().to_string(),
                    outcome,
                    restart_required,
                });
            }
            _ = watchdog.tick() => {
                if watchdog_every.is_some() {
                    ctx.notifier.watchdog();
                }
            }
            _ = status_tick.tick() => {
                crate::call::write_unsaved_records(ctx.clone()).await;
                let status = ctx.status();
                let now = status.summary();
                if now != last_status {
                    ctx.notifier.status(&now);
                    last_status = now;
                }
                let connectivity = connectivity::Connectivity::of(status);
                for change in connectivity::connectivity_changes(&last_connectivity, &connectivity) {
                    ctx.events.emit(change);
                }
                last_connectivity = connectivity;
            }
        }
    };

    ctx.stopping.store(true, Ordering::Release);
    ctx.set_phase(Phase::Draining);
    ctx.work.start_drain();
    let active = ctx.work.active();
    ctx.events.emit(SiteEventKind::Stopping {
        signal: signal_name.to_owned(),
        active_calls: active,
    });
    ctx.notifier.stopping(&format!(
        "draining: {active} active, {signal_name} received"
    ));
    let timeout = Duration::from_secs(ctx.config().config.daemon.drain_timeout_secs);
    tracing::info!(
        active,
        timeout_secs = timeout.as_secs(),
        "{signal_name}: draining"
    );
    let drain = ctx.work.wait_idle(timeout);
    tokio::pin!(drain);
    let idle = loop {
        tokio::select! {
            idle = &mut drain => break idle,
            _ = watchdog.tick() => if watchdog_every.is_some() { ctx.notifier.watchdog() },
        }
    };
    if !idle {
        tracing::warn!(
            active = ctx.work.active(),
            "drain timeout reached; hanging up the remaining calls"
        );
        ctx.call_shutdown.send_replace(true);
        // Let them send BYE and write their records.
        ctx.work.wait_idle(Duration::from_secs(3)).await;
    }
    sip.shutdown();
    crate::call::write_unsaved_records(ctx.clone()).await;
    let unsaved = ctx.unsaved_records.take_all();
    if !unsaved.is_empty() {
        let state_dir = ctx.config().config.daemon.state_dir;
        match crate::call::record::write_unsaved_file(&state_dir, &unsaved) {
            Ok(path) => tracing::warn!(
                "{} call records the store refused are in {} for the next start",
                unsaved.len(),
                path.display()
            ),
            Err(e) => {
                let ids: Vec<&str> = unsaved.iter().map(|r| r.id.as_str()).collect();
                tracing::error!(
                    "{} call records are lost: the store refused them and {} cannot be written ({e}): {}",
                    ids.len(),
                    crate::call::record::UNSAVED_FILE,
                    ids.join(", ")
                );
            }
        }
    }
    ctx.events.finish().await;
    if let Some(uplink) = ctx.uplink() {
        // What is still queued stays in the outbox for the next start.
        uplink.shutdown(Duration::from_secs(5)).await;
    }
    server.abort();
    let _ = std::fs::remove_file(&socket_path);
    if let Err(e) = ctx.store.flush() {
        tracing::error!("final store flush failed: {e}");
    }
    tracing::info!("edgevoiced stopped");
    if signal_name == STORE_REOPEN {
        return Err(StartError::StoreReopen(
            ctx.store.write_failure().unwrap_or_default(),
        ));
    }
    Ok(())
}

/// The stop cause when the store must be reopened (see the main loop).
const STORE_REOPEN: &str = "store-reopen";
