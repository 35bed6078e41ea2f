//! The edgevoice operator CLI.

// Functions stay short (clippy.toml: 150 lines).
#![warn(clippy::too_many_lines)]

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use edgevoice::call::record::CallRecord;
use edgevoice::config::{self, LoadedConfig};
use edgevoice::control::client::{self, ClientError};
use edgevoice::control::protocol::Request;
use edgevoice::control::AuditRecord;
use edgevoice::control::Status;
use edgevoice::models::{self, Manifest, Outcome, Progress, Source};
use edgevoice::ops::cli::{
    CallCommand, CliArgs, CliCommand, ConfigCommand, ModelsCommand, RemoteCommand, StoreCommand,
};
use edgevoice::store::{Store, StoreInfo};

/// Exit codes: 0 done, 1 failed, 2 invalid config or input.
fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so `edgevoice calls | head` would panic writing to a closed pipe;
    // a command-line tool should just stop, as cat does.
    // SAFETY: first thing in main, before any thread exists; SIG_DFL installs no handler code.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    let args = CliArgs::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgevoice: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[allow(clippy::too_many_lines)] // one arm per CLI command
fn run(args: CliArgs) -> Result<ExitCode> {
    match &args.command {
        CliCommand::Config(ConfigCommand::Check { file }) => {
            Ok(config_check(file.as_deref().unwrap_or(&args.config)))
        }
        CliCommand::Config(ConfigCommand::Apply { file }) => {
            let toml = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let value = daemon_call(&args, "config.apply", serde_json::json!({ "toml": toml }))?;
            println!(
                "applied to {} (previous kept as {})",
                value["source"].as_str().unwrap_or("the config"),
                value["last_good"].as_str().unwrap_or("<config>.last-good")
            );
            if let Some(keys) = value["restart_required"]
                .as_array()
                .filter(|k| !k.is_empty())
            {
                let keys: Vec<&str> = keys.iter().filter_map(|k| k.as_str()).collect();
                println!(
                    "needs a restart to take effect: {} (if that start fails, the previous file is put back)",
                    keys.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Man { dir } => {
            for page in edgevoice::ops::cli::render_man_pages(dir)? {
                println!("{}", page.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Status(json) => {
            let value = daemon_call(&args, "status", serde_json::Value::Null)?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print_status(&serde_json::from_value(value)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Drain => {
            let value = daemon_call(&args, "drain", serde_json::Value::Null)?;
            println!(
                "draining: new calls get 503; {} active call(s) go on (`edgevoice undrain` takes calls again)",
                value["active_calls"].as_u64().unwrap_or(0)
            );
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Undrain => {
            daemon_call(&args, "undrain", serde_json::Value::Null)?;
            println!("taking calls");
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Metrics => {
            let value = daemon_call(&args, "metrics", serde_json::Value::Null)?;
            print!("{}", value["text"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Reload => {
            let value = daemon_call(&args, "config.reload", serde_json::Value::Null)?;
            println!("reloaded {}", value["source"].as_str().unwrap_or("config"));
            if let Some(keys) = value["restart_required"]
                .as_array()
                .filter(|k| !k.is_empty())
            {
                let keys: Vec<&str> = keys.iter().filter_map(|k| k.as_str()).collect();
                println!("needs a restart to take effect: {}", keys.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Store(StoreCommand::Info(json)) => {
            let (info, offline) = match daemon_call(&args, "store.info", serde_json::Value::Null) {
                Ok(v) => (serde_json::from_value::<StoreInfo>(v)?, false),
                Err(e) if is_not_running(&e) => (open_store_offline(&args)?.info(), true),
                Err(e) => return Err(e),
            };
            if json.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_store_info(&info, offline);
            }
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Audit { limit, json } => {
            if *limit > edgevoice::control::MAX_LISTING {
                anyhow::bail!(
                    "--limit {limit}: at most {} audit records at a time",
                    edgevoice::control::MAX_LISTING
                );
            }
            let records = listing::<AuditRecord>(&args, "audit.list", *limit)?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                print_audit(&records);
            }
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Calls { limit, json } => {
            let records = calls_listing(&args, *limit)?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                print_calls(&records);
            }
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Call(CallCommand::Show { id, json }) => {
            let value = match daemon_call(&args, "call.get", serde_json::json!({ "id": id })) {
                Ok(v) => v,
                Err(e) if is_not_running(&e) => {
                    let store = open_store_offline(&args)?;
                    match edgevoice::call::record::get(&store, id)? {
                        Some(rec) => serde_json::to_value(rec)?,
                        None => anyhow::bail!("no call with id {id}; `edgevoice calls` lists them"),
                    }
                }
                Err(e) => return Err(e),
            };
            if json.json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print_call(&serde_json::from_value(value)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Call(CallCommand::Hangup { id }) => {
            daemon_call(&args, "call.hangup", serde_json::json!({ "id": id }))?;
            println!("hangup requested for {id}");
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Call(CallCommand::Transfer { id, target }) => {
            let v = daemon_call(
                &args,
                "call.transfer",
                serde_json::json!({ "id": id, "target": target }),
            )?;
            println!(
                "{id}: {}",
                v["outcome"].as_str().unwrap_or("transfer requested")
            );
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Call(CallCommand::Dtmf { id, digits }) => {
            daemon_call(
                &args,
                "call.dtmf",
                serde_json::json!({ "id": id, "digits": digits }),
            )?;
            println!("{id}: sending {digits}");
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Call(CallCommand::Dial { to, ring_timeout }) => {
            let v = daemon_call(
                &args,
                "call.dial",
                serde_json::json!({ "to": to, "ring_timeout_secs": ring_timeout }),
            )?;
            let result = &v["result"];
            println!(
                "{}: {}{}",
                v["id"].as_str().unwrap_or("?"),
                result["outcome"].as_str().unwrap_or("?"),
                result
                    .get("code")
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            );
            Ok(if result["outcome"] == "answered" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        CliCommand::Models(cmd) => models_command(&args, cmd),
        CliCommand::Remote(cmd) => remote_command(cmd),
    }
}

/// `edgevoice command keygen|sign`: offline, no config or daemon needed.
fn remote_command(cmd: &RemoteCommand) -> Result<ExitCode> {
    use edgevoice::control::remote;
    match cmd {
        RemoteCommand::Keygen { out, key_id } => {
            if !remote::valid_id(key_id) {
                anyhow::bail!("--key-id {key_id:?}: use 1-64 letters, digits, '-', '_' or '.'");
            }
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed)
                .map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(out)
                .with_context(|| {
                    format!(
                        "cannot create {} (an existing key is never overwritten; choose another --out)",
                        out.display()
                    )
                })?;
            file.write_all(remote::encode_signing_key(&key).as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "private key written to {} (mode 0600); add this line to uplink.trusted_keys:",
                out.display()
            );
            println!("{}", remote::public_key_line(key_id, &key.verifying_key()));
            Ok(ExitCode::SUCCESS)
        }
        RemoteCommand::Sign {
            site,
            device,
            all_devices,
            key,
            key_id,
            name,
            args,
            ttl,
            request_id,
            issued_at,
        } => {
            let text = std::fs::read_to_string(key)
                .with_context(|| format!("cannot read key file {}", key.display()))?;
            let signing = remote::decode_signing_key(&text)
                .map_err(|e| anyhow::anyhow!("key file {}: {e}", key.display()))?;
            let args = match args {
                Some(a) => {
                    let v: serde_json::Value = serde_json::from_str(a)
                        .with_context(|| format!("--args is not JSON: {a}"))?;
                    if !v.is_object() {
                        anyhow::bail!("--args must be a JSON object, e.g. '{{\"limit\":5}}'");
                    }
                    v
                }
                None => serde_json::json!({}),
            };
            let request_id = request_id.clone().unwrap_or_else(|| {
                ulid::Ulid::from_datetime(std::time::SystemTime::now())
                    .to_string()
                    .to_lowercase()
            });
            if !remote::valid_id(&request_id) || request_id.starts_with('_') {
                anyhow::bail!("--request-id {request_id:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with '_'");
            }
            let device = match (device, all_devices) {
                (Some(d), false) => d.clone(),
                (None, true) => remote::ALL_DEVICES.to_owned(),
                _ => anyhow::bail!("give either --device DEVICE or --all-devices"),
            };
            for (flag, value) in [("--site", site.as_str()), ("--device", device.as_str())] {
                if value.is_empty() || value.contains(['/', '+', '#']) {
                    anyhow::bail!(
                        "{flag} {value:?}: use the appliance's uplink.site_id / device id (`edgevoice status` shows both)"
                    );
                }
            }
            let issued_at = issued_at.unwrap_or_else(remote::now_secs);
            let payload = remote::CommandPayload {
                request_id,
                name: name.clone(),
                target: Some(remote::Target {
                    site: site.clone(),
                    device,
                }),
                args,
                issued_at,
                expires_at: issued_at.saturating_add(*ttl),
            };
            println!("{}", remote::sign(&signing, key_id, &payload));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn config_check(file: &Path) -> ExitCode {
    match config::load(file) {
        Ok(_) => {
            println!("OK: {}", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.lines() {
                println!("{line}");
            }
            ExitCode::from(2)
        }
    }
}

fn load_config(args: &CliArgs) -> Result<LoadedConfig> {
    config::load(&args.config).map_err(|e| anyhow::anyhow!(e.lines().join("\n")))
}

fn daemon_call(args: &CliArgs, command: &str, a: serde_json::Value) -> Result<serde_json::Value> {
    let socket = match &args.socket {
        Some(s) => s.clone(),
        None => match config::load(&args.config) {
            Ok(loaded) => loaded.config.control_socket(),
            Err(e) => {
                let socket = config::control_socket_hint(&args.config);
                eprintln!(
                    "edgevoice: warning: {} has errors ({} problem(s); see `edgevoice config check`); trying {}",
                    args.config.display(),
                    e.lines().len(),
                    socket.display()
                );
                socket
            }
        },
    };
    Ok(client::call(&socket, &Request::new(command, a))?)
}

fn is_not_running(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::NotRunning { .. })
    )
}

/// The newest records of a tree: through the daemon, or from the store when it is stopped.
fn listing<R: edgevoice::store::Record>(
    args: &CliArgs,
    command: &str,
    limit: usize,
) -> Result<Vec<serde_json::Value>> {
    match daemon_call(args, command, serde_json::json!({ "limit": limit })) {
        Ok(v) => Ok(serde_json::from_value(v)?),
        Err(e) if is_not_running(&e) => {
            Ok(open_store_offline(args)?.tree::<R>()?.newest_json(limit))
        }
        Err(e) => Err(e),
    }
}

/// The newest `limit` calls: through the daemon page by page (it returns at most
/// [`edgevoice::control::MAX_LISTING`] a request), or from the store when it is stopped.
fn calls_listing(args: &CliArgs, limit: usize) -> Result<Vec<serde_json::Value>> {
    let mut records: Vec<serde_json::Value> = Vec::new();
    let mut before: Option<String> = None;
    while records.len() < limit {
        let page = (limit - records.len()).min(edgevoice::control::MAX_LISTING);
        let request = serde_json::json!({ "limit": page, "before": before });
        let got: Vec<serde_json::Value> = match daemon_call(args, "calls.list", request) {
            Ok(v) => serde_json::from_value(v)?,
            Err(e) if is_not_running(&e) && records.is_empty() => {
                return Ok(open_store_offline(args)?
                    .tree::<CallRecord>()?
                    .newest_json(limit));
            }
            Err(e) => return Err(e),
        };
        let last_id = got
            .last()
            .and_then(|r| r.get("id"))
            .and_then(|id| id.as_str())
            .map(str::to_owned);
        let full = got.len() == page;
        records.extend(got);
        match (full, last_id) {
            (true, Some(id)) => before = Some(id),
            _ => break,
        }
    }
    Ok(records)
}

fn open_store_offline(args: &CliArgs) -> Result<Store> {
    let loaded = load_config(args)?;
    Ok(Store::open(&loaded.config.daemon.state_dir)?)
}

fn print_status(s: &Status) {
    println!("edgevoiced {} (pid {}): {}", s.version, s.pid, s.summary());
    println!(
        "  uptime        {}",
        humantime::format_duration(std::time::Duration::from_secs(s.uptime_secs))
    );
    println!("  config        {}", s.config_source.display());
    println!("  state dir     {}", s.state_dir.display());
    println!("  store size    {}", human_bytes(s.store_size_bytes));
    if let Some(e) = &s.store_write_failure {
        println!("  store         WRITES FAILING: {e}");
        println!(
            "                {} call records waiting in memory",
            s.unsaved_call_records
        );
    }
    println!("  device id     {}", s.device_id);
    println!("  active calls  {} of {}", s.active_calls, s.max_calls);
    println!(
        "  sip           {}",
        s.sip_listen.as_deref().unwrap_or("not listening")
    );
    for t in &s.trunks {
        let state = if t.up { "up" } else { "DOWN" };
        println!(
            "  trunk         {} {state} ({}: {})",
            t.trunk, t.target, t.last
        );
    }
    for r in &s.registrations {
        let state = if r.registered {
            "registered"
        } else {
            "NOT registered"
        };
        println!("  account       {} {state} at {}", r.account, r.registrar);
        if let Some(e) = &r.last_error {
            println!("                last error: {e}");
        }
    }
    println!("  uplink        {}", s.uplink);
    println!("  agent         {}", s.agent);
    if let Some(sp) = &s.speech {
        println!(
            "                {} of {} agent calls; queues asr {} llm {} tts {}",
            sp.agent_calls, sp.agent_call_limit, sp.asr_queue, sp.llm_queue, sp.tts_queue
        );
    }
}

fn print_store_info(info: &StoreInfo, offline: bool) {
    let how = if offline {
        " (daemon stopped: read directly)"
    } else {
        ""
    };
    println!("store {}{how}", info.path.display());
    println!("  size on disk  {}", human_bytes(info.size_on_disk));
    println!("  schema        {}", info.schema);
    println!("  device id     {}", info.device_id);
    for (tree, len) in &info.trees {
        println!("  {tree:<13} {len} records");
    }
}

fn print_audit(records: &[serde_json::Value]) {
    if records.is_empty() {
        println!("no audited commands");
    }
    for r in records {
        if let Some(err) = r.get("error") {
            println!("(unreadable record: {err})");
            continue;
        }
        let at = r["at_ms"].as_u64().unwrap_or(0);
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(at),
        );
        println!(
            "{when}  {:<14} {:<20} {:<16} {}",
            r["channel"].as_str().unwrap_or("?"),
            r["who"].as_str().unwrap_or("?"),
            r["command"].as_str().unwrap_or("?"),
            r["outcome"].as_str().unwrap_or("?")
        );
    }
}

fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn print_calls(records: &[serde_json::Value]) {
    if records.is_empty() {
        println!("no calls");
        return;
    }
    println!(
        "{:<26}  {:<20}  {:<8}  {:>7}  {:<6}  {:<28}  from",
        "id", "started", "dir", "secs", "codec", "end"
    );
    for r in records {
        let Ok(c) = serde_json::from_value::<CallRecord>(r.clone()) else {
            println!("(unreadable record: {r})");
            continue;
        };
        let secs = c
            .duration_ms()
            .map(|d| format!("{:.1}", d as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let end = match (&c.end_reason, &c.hung_up_by) {
            (None, _) => "live".to_owned(),
            (Some(r), by) => {
                let r = serde_json::to_value(r)
                    .ok()
                    .and_then(|v| {
                        let kind = v["kind"].as_str()?.to_owned();
                        Some(match v.get("code") {
                            Some(code) => format!("{kind} {code}"),
                            None => kind,
                        })
                    })
                    .unwrap_or_default();
                match by {
                    Some(p) => format!("{r} by {}", format!("{p:?}").to_lowercase()),
                    None => r,
                }
            }
        };
        let codec = c.codec.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        let dir = format!("{:?}", c.direction).to_lowercase();
        println!(
            "{:<26}  {:<20}  {:<8}  {:>7}  {:<6}  {:<28}  {}",
            c.id,
            when(c.invite_at_ms),
            dir,
            secs,
            codec,
            end,
            c.from
        );
    }
}

fn print_call(c: &CallRecord) {
    println!("call {}", c.id);
    println!("  direction     {:?}", c.direction);
    println!("  from          {}", c.from);
    println!("  to            {}", c.to);
    println!("  sip call-id   {}", c.sip_call_id);
    println!("  remote        {}", c.remote);
    println!("  trunk         {}", c.trunk.as_deref().unwrap_or("-"));
    println!("  invite        {}", when(c.invite_at_ms));
    println!(
        "  answered      {}",
        c.answer_at_ms.map(when).unwrap_or_else(|| "-".into())
    );
    println!(
        "  ended         {}",
        c.end_at_ms.map(when).unwrap_or_else(|| "live".into())
    );
    if let Some(d) = c.duration_ms() {
        println!("  duration      {:.1} s", d as f64 / 1000.0);
    }
    println!(
        "  end reason    {}",
        c.end_reason
            .as_ref()
            .map(|r| format!("{r:?}"))
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "  hung up by    {}",
        c.hung_up_by
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "  codec         {}",
        c.codec.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
    );
    if let Some(r) = &c.rtp {
        println!(
            "  rtp           sent {} received {} lost {} jitter {:.1} ms (max {:.1}) malformed {} late/dup {}",
            r.packets_sent, r.packets_received, r.packets_lost, r.jitter_ms, r.max_jitter_ms, r.malformed, r.late_or_duplicate
        );
    }
    println!(
        "  dtmf received {}",
        if c.dtmf_received.is_empty() {
            "-"
        } else {
            &c.dtmf_received
        }
    );
    println!(
        "  dtmf sent     {}",
        if c.dtmf_sent.is_empty() {
            "-"
        } else {
            &c.dtmf_sent
        }
    );
    match &c.transfer {
        Some(t) => println!("  transfer      {} · {t}", t.state.as_str()),
        None => println!("  transfer      -"),
    }
    println!(
        "  recording     {}",
        c.recording
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into())
    );
    for t in &c.turns {
        let ms = |v: Option<u64>| v.map(|v| format!("{v}")).unwrap_or_else(|| "-".into());
        println!(
            "  turn {:<3}     {}\n                agent:  {}\n                intent {} · action {}{}",
            t.turn.turn,
            match &t.turn.input {
                edgevoice::agent::CallerInput::Speech(said) => format!("caller: {said}"),
                edgevoice::agent::CallerInput::Dtmf(key) => format!("key:    {key}"),
                edgevoice::agent::CallerInput::Keys(keys) => format!("keys:   {keys}"),
            },
            t.turn.agent,
            t.turn.intent,
            t.turn.action.as_str(),
            if t.turn.interrupted { " · interrupted" } else { "" }
        );
        let l = &t.latency;
        println!(
            "                ms after the caller stopped: endpoint {} · ASR {} · LLM first token {} · first TTS audio {} · first reply RTP {}",
            ms(l.endpoint_ms),
            ms(l.asr_final_ms),
            ms(l.llm_first_token_ms),
            ms(l.first_tts_audio_ms),
            ms(l.first_reply_rtp_ms)
        );
        for e in &t.turn.errors {
            println!("                note: {e}");
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

struct Bar(Option<indicatif::ProgressBar>);

impl Progress for Bar {
    fn start(&mut self, name: &str, total: u64) {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(name.to_owned());
        self.0 = Some(bar);
    }
    fn advance(&mut self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc(bytes);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
    }
}

fn models_command(args: &CliArgs, cmd: &ModelsCommand) -> Result<ExitCode> {
    let (dir, manifest_path) = match cmd {
        ModelsCommand::Install { dir, manifest, .. } | ModelsCommand::Verify { dir, manifest } => {
            (dir.clone(), manifest.clone())
        }
    };
    let (dir, manifest_path) = match (dir, manifest_path) {
        (Some(d), Some(m)) => (d, m),
        (d, m) => {
            let loaded = load_config(args)?;
            (
                d.unwrap_or(loaded.config.models.dir),
                m.unwrap_or(loaded.config.models.manifest),
            )
        }
    };
    let manifest = Manifest::load(&manifest_path)?;
    let mut failed = 0;
    match cmd {
        ModelsCommand::Install { from, .. } => {
            let source = match from {
                Some(mirror) => Source::Mirror(mirror),
                None => Source::Upstream,
            };
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create models dir {}", dir.display()))?;
            for (name, result) in models::install(&manifest, &dir, &source, &mut Bar(None)) {
                match result {
                    Ok(Outcome::Present) => println!("ok         {name} (already installed)"),
                    Ok(Outcome::Installed) => println!("installed  {name}"),
                    Err(e) => {
                        failed += 1;
                        eprintln!("edgevoice: {e}");
                    }
                }
            }
        }
        ModelsCommand::Verify { .. } => {
            for (name, result) in models::verify(&manifest, &dir) {
                match result {
                    Ok(()) => println!("ok         {name}"),
                    Err(e) => {
                        failed += 1;
                        eprintln!("edgevoice: {e}");
                    }
                }
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "edgevoice: {failed} of {} models failed",
            manifest.models.len()
        );
        Ok(ExitCode::from(1))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}
