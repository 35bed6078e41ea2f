//! The edgevoice daemon.

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
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("config OK: {}", loaded.source.display());
        return ExitCode::SUCCESS;
    }
    let log = ops::logging::init(&loaded.config.daemon.log_level);
    match ops::run(loaded, Some(log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, where the operator looks: the journal under systemd, else the terminal.
            if ops::logging::stderr_is_journal() {
                tracing::error!("{e}");
            } else {
                eprintln!("edgevoiced: {e}");
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
