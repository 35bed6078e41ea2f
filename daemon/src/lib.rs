//! edgevoice: an on-prem AI voice appliance for contact centres.
//!
//! The modules and their layers are mapped in docs/ARCHITECTURE.md: `config` and `store` at
//! the ground floor; `speech`, `telephony`, `uplink`, `models`; `agent`; `call`; `control`;
//! `ops` (daemon lifecycle) at the top.

// Product functions stay short (clippy.toml: 150 lines); unit tests may run long.
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]

/// This build's version (the package's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod agent;
pub mod call;
pub mod config;
pub mod control;
pub mod fault;
pub mod models;
pub mod ops;
pub mod speech;
pub mod store;
pub mod telephony;
pub mod uplink;
