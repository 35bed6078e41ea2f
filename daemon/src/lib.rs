//! edgevoice: an on-prem AI voice appliance for contact centres.
//!
//! Module map (see ARCHITECTURE.md): `config` (TOML → validated config), `store` (sled, typed
//! trees), `ops` (daemon lifecycle, systemd, logging, CLI definitions), `control` (commands to the
//! running daemon, local socket), `models` (manifest, install, verify). Telephony, call, speech,
//! agent and uplink arrive with their issues.

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
