//! The edgevoice daemon.

// Functions stay short (clippy.toml: 150 lines).
#![warn(clippy::too_many_lines)]

use std::process::ExitCode;

use clap::Parser;
use edgevoice::ops::{self, cli::DaemonArgs};

fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    let loaded = match ops::load_config(&args.config, args.state_dir.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            for line in e.lines() {
                eprintln!("edgevoiced: {line}");
            }
            if let Some(rolled_back) = ops::roll_back_applied_config(&args.config) {
                eprintln!("edgevoiced: {rolled_back}");
                // Not 2: systemd does not restart on 2, and the restored file should run.
                return ExitCode::from(1);
            }
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("config OK: {}", loaded.source.display());
        return ExitCode::SUCCESS;
    }
    let log = ops::logging::init(&loaded.config.daemon.log_level);
    let source = loaded.source.clone();
    match ops::run(loaded, Some(log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let rolled_back = ops::roll_back_applied_config(&source);
            // One line each, where the operator looks: the journal under systemd, else the
            // terminal.
            for line in std::iter::once(e.to_string()).chain(rolled_back.clone()) {
                if ops::logging::stderr_is_journal() {
                    tracing::error!("{line}");
                } else {
                    eprintln!("edgevoiced: {line}");
                }
            }
            if rolled_back.is_some() {
                return ExitCode::from(1);
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
