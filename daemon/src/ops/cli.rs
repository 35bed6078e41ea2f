//! Command-line definitions of both binaries, kept in the library so the man pages are
//! generated from the same source (`edgevoice man DIR`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// edgevoiced — the edgevoice voice-appliance daemon.
///
/// Answers and places calls on the site's SIP trunks and talks to callers with on-device speech
/// recognition, a local language model and local speech synthesis. Runs under systemd
/// (Type=notify, watchdog); SIGHUP reloads the configuration, SIGTERM drains active calls and
/// exits.
#[derive(Debug, Parser)]
#[command(name = "edgevoiced", version, about, long_about)]
pub struct DaemonArgs {
    /// Configuration file.
    #[arg(long, short, env = "EDGEVOICE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// State directory, overriding daemon.state_dir of the config.
    #[arg(long, env = "EDGEVOICE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Validate the configuration and exit: 0 when valid, 2 with one line per problem otherwise.
    #[arg(long)]
    pub check: bool,
}

/// edgevoice — operate an edgevoice appliance.
///
/// Talks to the running daemon over its control socket (daemon.runtime_dir/control.sock;
/// members of group edgevoice may use it), and works on config files, models and the store
/// directly when the daemon is stopped.
#[derive(Debug, Parser)]
#[command(name = "edgevoice", version, about, long_about)]
pub struct CliArgs {
    /// Configuration file (used to find the control socket, store and models).
    #[arg(long, short, global = true, env = "EDGEVOICE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Control socket, overriding the one derived from the config.
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Show the daemon's version, uptime, config, store size, active calls and uplink state.
    Status(JsonFlag),
    /// Print the daemon's metrics in the Prometheus text format: calls by end reason, agent
    /// turns, turn latency per stage, queues, uplink backlog, memory and CPU.
    Metrics,
    /// Stop taking calls (new INVITEs get 503) and let the active ones finish, e.g. before
    /// maintenance; the daemon keeps running. `undrain` takes calls again.
    Drain,
    /// Take calls again after `drain`.
    Undrain,
    /// Make the daemon re-read its config file (like systemctl reload edgevoice).
    Reload,
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Install and verify the models a site needs.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Inspect the state store (through the daemon, or directly when it is stopped).
    #[command(subcommand)]
    Store(StoreCommand),
    /// List recent calls, newest first.
    Calls {
        /// How many calls to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Work with one call.
    #[command(subcommand)]
    Call(CallCommand),
    /// List recent audited commands, newest first.
    Audit {
        /// How many records to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Signed remote commands: make a key pair, sign a command for mosquitto_pub.
    #[command(subcommand, name = "command")]
    Remote(RemoteCommand),
    /// Write the man pages of edgevoiced and edgevoice into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Make an Ed25519 key pair: the private key goes to --out (mode 0600, never overwritten),
    /// the `uplink.trusted_keys` line for the appliances' config is printed.
    Keygen {
        /// Private key file to create.
        #[arg(long)]
        out: PathBuf,
        /// Name of the key in uplink.trusted_keys and in the envelopes' key_id.
        #[arg(long, default_value = "operator")]
        key_id: String,
    },
    /// Print the signed envelope of one command, to publish on
    /// edgevoice/SITE/DEVICE/cmd/NAME (e.g. with mosquitto_pub -m). The target (site and
    /// device) is signed: an appliance refuses a command signed for another.
    Sign {
        /// The appliance's uplink.site_id.
        #[arg(long)]
        site: String,
        /// The appliance's device id (`edgevoice status` shows it).
        #[arg(
            long,
            required_unless_present = "all_devices",
            conflicts_with = "all_devices"
        )]
        device: Option<String>,
        /// Sign it for every device of --site instead of one (target device "*"); each device
        /// runs it once.
        #[arg(long)]
        all_devices: bool,
        /// Private key file from `edgevoice command keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The key's name in the appliances' uplink.trusted_keys.
        #[arg(long)]
        key_id: String,
        /// Command name, e.g. status, config.get, log.level.
        #[arg(long)]
        name: String,
        /// Arguments as a JSON object, e.g. '{"level":"debug"}'.
        #[arg(long)]
        args: Option<String>,
        /// Seconds the command stays valid.
        #[arg(long, default_value_t = 300)]
        ttl: u64,
        /// Request id (default: a new ULID); results arrive on cmd-result/<request id>.
        #[arg(long)]
        request_id: Option<String>,
        /// Issue time in unix seconds (default: now).
        #[arg(long)]
        issued_at: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file: prints OK, or one line per problem, and exits 0 / 2.
    Check {
        /// The file to check (default: the --config file).
        file: Option<PathBuf>,
    },
    /// Make FILE the running daemon's config, as the remote `config.apply` does: validated,
    /// the current file kept as <config>.last-good, applied like a reload, rolled back if it
    /// fails (now, or at the next start for keys that need a restart).
    Apply {
        /// The new config file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Install missing or damaged models, verifying each sha256 before moving it into place.
    Install {
        /// An offline mirror (site bundle) laid out like the manifest, e.g. ../shared/models;
        /// without it the manifest's upstream URLs are downloaded.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Models directory, overriding models.dir of the config.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Manifest, overriding models.manifest of the config.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Check every installed model against the manifest's size and sha256.
    Verify {
        /// Models directory, overriding models.dir of the config.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Manifest, overriding models.manifest of the config.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CallCommand {
    /// Everything recorded about one call (id from `edgevoice calls`).
    Show {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// End a live call (BYE).
    Hangup { id: String },
    /// Blind-transfer a live call (REFER) to a SIP URI, e.g. sip:desk@pbx.example.com.
    Transfer { id: String, target: String },
    /// Send DTMF digits (RFC 4733) on a live call.
    Dtmf { id: String, digits: String },
    /// Place an outbound call (answered in media test mode) and print how dialling ended.
    Dial {
        /// SIP URI to call, e.g. sip:+442079460000@carrier.example.com
        to: String,
        /// Seconds to ring before CANCEL (1–25).
        #[arg(long, default_value_t = 20)]
        ring_timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Path, size, schema, device id and record counts per tree.
    Info(JsonFlag),
}

/// Renders both man pages: `edgevoiced.8` and `edgevoice.1`.
pub fn render_man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (cmd, section) in [(DaemonArgs::command(), "8"), (CliArgs::command(), "1")] {
        let path = dir.join(format!("{}.{section}", cmd.get_name()));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .section(section)
            .manual("edgevoice")
            .render(&mut out)?;
        std::fs::write(&path, out)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn both_command_lines_are_well_formed() {
        DaemonArgs::command().debug_assert();
        CliArgs::command().debug_assert();
    }

    #[test]
    fn man_pages_render_with_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let pages = render_man_pages(dir.path()).unwrap();
        let cli = std::fs::read_to_string(&pages[1]).unwrap();
        for sub in [
            "status", "reload", "config", "models", "store", "audit", "calls", "call", "command",
        ] {
            assert!(cli.contains(sub), "man page lacks {sub}");
        }
        assert!(std::fs::read_to_string(&pages[0])
            .unwrap()
            .contains("\\-\\-check"));
    }
}
