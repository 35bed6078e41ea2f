//! tracing set-up: journald when systemd connected our stderr to the journal, readable lines on
//! stderr otherwise. The filter comes from the config (`daemon.log_level`), overridden by
//! `RUST_LOG`, and can be changed live on reload.

use std::os::fd::AsFd;

use nix::sys::stat::fstat;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    env_override: bool,
}

impl LogControl {
    /// True when `RUST_LOG` pins the filter (level changes are then not applied).
    pub fn is_pinned(&self) -> bool {
        self.env_override
    }

    /// Applies a new `daemon.log_level` unless `RUST_LOG` pins the filter.
    pub fn set_level(&self, directives: &str) -> Result<(), String> {
        if self.env_override {
            return Ok(());
        }
        let filter =
            EnvFilter::try_new(with_library_defaults(directives)).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
impl LogControl {
    /// A control over a filter that is not installed globally; keep the returned subscriber
    /// alive while the control is used.
    pub(crate) fn detached(
        level: &str,
    ) -> (LogControl, Box<dyn tracing::Subscriber + Send + Sync>) {
        let (filter, handle) = reload::Layer::new(EnvFilter::new(level));
        let subscriber = tracing_subscriber::registry().with(filter);
        (
            LogControl {
                handle,
                env_override: false,
            },
            Box::new(subscriber),
        )
    }
}

/// True when systemd's `JOURNAL_STREAM` names the file our stderr is.
pub fn stderr_is_journal() -> bool {
    let Ok(var) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = var.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match fstat(std::io::stderr().as_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// rsipstack logs every datagram at INFO, sled every log-segment write at DEBUG, ONNX Runtime
/// (target `ort`) every arena allocation at INFO (~100 lines a start), whisper.cpp and
/// llama.cpp every model and context parameter at INFO (~190 lines a start, thousands at DEBUG)
/// and rumqttc every packet at DEBUG; their warnings are what an operator needs, unless a
/// directive names them.
const LIBRARIES_HELD_TO_WARN: [&str; 6] = [
    "rsipstack",
    "sled",
    "ort",
    "whisper_rs",
    "llama-cpp-2",
    "rumqttc",
];

fn with_library_defaults(directives: &str) -> String {
    let mut out = directives.to_owned();
    let named = |library: &str| {
        directives.split(',').any(|d| {
            let target = d.split('=').next().unwrap_or("").trim();
            target == library || target.starts_with(&format!("{library}::"))
        })
    };
    for library in LIBRARIES_HELD_TO_WARN {
        if !named(library) {
            out.push_str(&format!(",{library}=warn"));
        }
    }
    out
}

/// Installs the global subscriber. Call once, first thing in a binary.
pub fn init(level: &str) -> LogControl {
    let env = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let env_override = env.is_some();
    let directives = with_library_defaults(&env.unwrap_or_else(|| level.to_owned()));
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let journald = if stderr_is_journal() {
        tracing_journald::layer().ok()
    } else {
        None
    };
    match journald {
        Some(layer) => registry.with(layer).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false),
            )
            .init(),
    }
    LogControl {
        handle,
        env_override,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatty_libraries_log_warnings_only_unless_a_directive_names_them() {
        const REST: &str = "whisper_rs=warn,llama-cpp-2=warn,rumqttc=warn";
        assert_eq!(
            with_library_defaults("debug"),
            format!("debug,rsipstack=warn,sled=warn,ort=warn,{REST}")
        );
        assert_eq!(
            with_library_defaults("info,ort=info"),
            format!("info,ort=info,rsipstack=warn,sled=warn,{REST}")
        );
        // A target that merely contains a library's name does not count.
        assert_eq!(
            with_library_defaults("info,edgevoice::transport=debug,sled::tree=info"),
            format!(
                "info,edgevoice::transport=debug,sled::tree=info,rsipstack=warn,ort=warn,{REST}"
            )
        );
    }

    #[test]
    fn the_default_directives_parse_so_the_configured_level_is_not_replaced() {
        // init() falls back to plain "info" when the directives do not parse.
        for level in ["info", "debug", "warn,edgevoice=debug"] {
            let directives = with_library_defaults(level);
            assert!(
                EnvFilter::try_new(&directives).is_ok(),
                "{directives} does not parse"
            );
        }
    }
}
