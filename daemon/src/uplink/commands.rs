//! Remote commands as the uplink sees them: what arrives on `cmd/{name}`, what the handler
//! answers, the limits, and the lanes commands wait and run in (see `shell`).

use std::sync::Arc;
use std::time::Duration;

use super::shell::{MAX_COMMANDS_QUEUED, MAX_COMMANDS_RUNNING};

/// Largest command message handed to the [`CommandHandler`] (commands are small; the biggest,
/// `config.apply`, carries one config file). A bigger one is acknowledged (so the broker
/// forgets it), dropped unread, counted and refused like an unverified command
/// ([`InboundProblem::Oversized`]).
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// Largest MQTT packet the uplink reads (rumqttc's incoming limit; on MQTT 5 also advertised
/// to the broker as the maximum packet size, so it sends nothing bigger). Well above
/// [`MAX_COMMAND_BYTES`], so that an oversized command is read and acknowledged rather than
/// breaking the connection. An MQTT 3.1.1 broker cannot be told any maximum: a bigger packet
/// ends the connection mid-read, and since the session is persistent the broker would send it
/// again on every connect; the shell then resets the session once
/// ([`InboundProblem::TooLargeToRead`]).
pub const MAX_INCOMING_PACKET_BYTES: usize = 4 * 1024 * 1024;

/// Where an MQTT 5 requester asked for the result: its `response_topic` and
/// `correlation_data`, as received (the handler decides whether to use them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRoute {
    pub topic: String,
    pub correlation_data: Option<Vec<u8>>,
}

/// One message received on `cmd/{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandMessage {
    pub name: String,
    pub payload: Vec<u8>,
    /// MQTT 5 only.
    pub response: Option<ResponseRoute>,
}

/// A message on `cmd/` that the shell did not hand over whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundProblem {
    /// More than [`MAX_COMMAND_BYTES`] on `cmd/{name}`: acknowledged and dropped unread.
    Oversized {
        name: String,
        bytes: usize,
        max: usize,
    },
    /// More than [`MAX_INCOMING_PACKET_BYTES`]: the connection broke reading it, and the broker
    /// session was reset so that the broker forgets it.
    TooLargeToRead { bytes: usize, max: usize },
}

/// What to do after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandReply {
    /// Queue `result` (JSON) for publishing; on `route` when set, else on
    /// `cmd-result/{request_id}`.
    Publish {
        result: Vec<u8>,
        route: Option<ResponseRoute>,
    },
    /// Publish nothing (rate-limited); counted in the uplink report.
    Dropped,
    /// Refused and audited, but nothing to publish (a replay: its request id already has its
    /// result).
    NoResult,
}

/// What to do with a message before it is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Triage {
    /// Queue it for [`CommandHandler::handle`].
    Handle,
    /// A copy of a message handled before (a replay), still within the refusal budget:
    /// queue it, but run it in a lane of its own (one at a time), so that copies never take
    /// the slots genuine commands run in.
    HandleCopy,
    /// Drop it now (rate-limited); counted like [`CommandReply::Dropped`].
    Drop,
}

/// How many copies ([`Triage::HandleCopy`]) and [`InboundProblem`]s may wait for their lane;
/// more are dropped (counted as rate-limited).
pub(super) const MAX_COPIES_QUEUED: usize = 4;

/// The queues and the running slots for commands: [`MAX_COMMANDS_QUEUED`] running or waiting,
/// [`MAX_COMMANDS_RUNNING`] running; and apart from them, for copies ([`Triage::HandleCopy`])
/// and [`InboundProblem`]s, a queue of their own ([`MAX_COPIES_QUEUED`]) and one slot, so a
/// flood of copies never takes a place a genuine command waits in.
pub(super) struct CommandLanes {
    pub(super) queue: Arc<tokio::sync::Semaphore>,
    pub(super) slots: Arc<tokio::sync::Semaphore>,
    pub(super) copy_queue: Arc<tokio::sync::Semaphore>,
    pub(super) copy_slot: Arc<tokio::sync::Semaphore>,
}

impl CommandLanes {
    pub(super) fn new() -> Self {
        Self {
            queue: Arc::new(tokio::sync::Semaphore::new(MAX_COMMANDS_QUEUED)),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_COMMANDS_RUNNING)),
            copy_queue: Arc::new(tokio::sync::Semaphore::new(MAX_COPIES_QUEUED)),
            copy_slot: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }
}

/// Turns one message from `cmd/{name}` into the result to publish (verification, replay
/// check, audit, execution). Called on a blocking thread.
pub trait CommandHandler: Send + Sync + 'static {
    fn handle(&self, message: CommandMessage) -> CommandReply;
    /// Called on the event loop before a message is queued: must be cheap (no store, no
    /// signature check). Lets a flood of cheap-to-recognise messages (byte-identical replays)
    /// be dropped before it fills the queue that genuine commands wait in.
    fn triage(&self, _message: &CommandMessage) -> Triage {
        Triage::Handle
    }
    /// A message the shell dropped ([`InboundProblem`]): audit it (within a budget).
    fn refuse(&self, _problem: InboundProblem) -> CommandReply {
        CommandReply::NoResult
    }
    /// Called every few seconds on a blocking thread while connected, for work that is due
    /// without a message (e.g. closing a rate-limit window in the audit).
    fn housekeeping(&self) {}
}

/// How often [`CommandHandler::housekeeping`] runs.
pub(super) const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);
