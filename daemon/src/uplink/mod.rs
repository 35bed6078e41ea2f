//! Uplink: store-and-forward of everything that goes upstream.
//!
//! - [`Outbox`]: the sans-I/O state machine. Streams with priorities, per-stream sequences,
//!   limits with an explicit policy when full, the in-flight window, the drain rate, expiry.
//! - [`DurableOutbox`]: the same on the store: durable before acknowledged, deleted only after
//!   the PUBACK, rebuilt from disk on open.
//! - [`Reconnect`]: when to (re)connect: exponential back-off with jitter.
//!
//! - [`start`] / [`UplinkHandle`]: the MQTT shell (rumqttc, `shell.rs`; MQTT 5 or 3.1.1 behind
//!   `wire.rs`); it owns the socket and drives them: see the docs on each `handle_*` / `poll_*`
//!   method.
//! - [`events`]: site events on the `events` stream, and the sink that queues them in order.

mod backoff;
mod commands;
mod durable;
pub mod events;
mod messages;
#[cfg(test)]
mod model_tests;
mod outbox;
mod shell;
mod wire;

use serde::{Deserialize, Serialize};

pub use backoff::{
    ConnectionPhase, Reconnect, ReconnectConfig, ReconnectConfigError, ReconnectStatus,
};
pub use commands::{
    CommandHandler, CommandMessage, CommandReply, InboundProblem, ResponseRoute, Triage,
    MAX_COMMAND_BYTES, MAX_INCOMING_PACKET_BYTES,
};
pub use durable::{
    owe, DurableOutbox, Identity, IdentityError, OutboxError, OutgoingPublish, OwedMessages,
    QueuedMessage,
};
pub use outbox::{
    AppendError, AppendPlan, Appended, MessageId, Outbox, OutboxConfig, OutboxConfigError,
    OutboxStatus, Priority, PriorityPolicy, Publish, Sequence, Stream, StreamCounters,
    StreamStatus, WhenFull,
};
pub use shell::{
    start, StoreOwner, UplinkHandle, UplinkReport, UplinkStartError, MAX_COMMANDS_RUNNING,
};
pub use wire::MqttVersion;

/// What `edgevoice status` shows of the uplink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub connection: ReconnectStatus,
    pub outbox: OutboxStatus,
}
