//! The call core: an answered call's decisions, without I/O. Events go in (the caller's
//! playout drained, the agent's directives, the operator's commands, signalling, the transfer's
//! progress, time); what the call must do comes out ([`CallCore::poll_output`]): send a REFER,
//! dial a bridge, play ringback, tell the agent, and how and when the call ends.
//!
//! It owns: the handler's end of the call (the media test's prompt, then echo, listen or hang
//! up; the agent's hang-up with its tail of silence), the transfer ([`Transfer`]: REFER →
//! accepted / refused → bridge → bridged / failed, back to whoever asked), the maximum
//! duration and drain, and the typed ending. `media::MediaRun` is its shell.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::record::{EndReason, Party};
use super::transfer::{Transfer, TransferEvent, TransferOutput, TransferRecord, TransferRequester};
use crate::agent::turns::Directive;
use crate::config::AfterPrompt;

/// After the last audio before hanging up, this much silence goes out before the BYE: the
/// far end's jitter buffer (up to ~200 ms) still holds the end of "Goodbye", and a BYE right
/// after the last packet would cut it off.
pub const FINAL_AUDIO_TAIL: Duration = Duration::from_millis(400);

/// Who talks to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    Agent,
    /// The media test: a prompt, then this.
    MediaTest(AfterPrompt),
    /// Another leg (a transfer's bridge placed by this appliance): audio is relayed.
    Bridge,
}

/// How a call ended, as its core saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub reason: EndReason,
    pub by: Option<Party>,
    /// Whether we still have to send BYE.
    pub send_bye: bool,
}

impl Ending {
    fn by_appliance(reason: EndReason) -> Self {
        Self {
            reason,
            by: Some(Party::Appliance),
            send_bye: true,
        }
    }
}

/// Events from outside the core.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// Everything queued for the caller has been played.
    PlayoutDrained,
    Directive(Directive),
    /// The caller hung up (BYE).
    CallerHungUp,
    /// The caller gave up before the answer went through (CANCEL).
    Cancelled,
    /// Signalling failed (the reason) or is gone.
    Terminated(String),
    /// No RTP for the media timeout.
    MediaTimeout,
    /// The operator asked to hang up.
    OperatorHangup,
    /// The daemon's drain ran out of time: live calls end.
    Shutdown,
    /// The REFER's answer, its NOTIFYs, the bridge leg's outcome.
    Transfer(TransferEvent),
    /// The bridged leg's audio ended (it hung up).
    BridgeLegEnded,
}

/// What the call's shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutput {
    /// Send a REFER to `target`.
    Refer {
        target: String,
    },
    /// Call `target` on a leg of its own; CANCEL it on [`CallOutput::CancelDial`].
    Dial {
        target: String,
        ring_timeout: Duration,
    },
    /// Ringback to the caller (true) until stopped (false); either way drop what is queued.
    Ringback(bool),
    /// The bridge leg answered: relay audio between it and the caller.
    Connect,
    CancelDial,
    /// The agent's queued audio has been played.
    AgentPlayoutDrained,
    /// The transfer the agent asked for failed: the agent takes the caller back.
    AgentTransferFailed(String),
    /// The transfer an operator asked for settled: what to answer them.
    OperatorTransferSettled(Result<String, String>),
    /// The call record's transfer, as it now stands.
    TransferRecord(TransferRecord),
    /// The call is over.
    End(Ending),
}

/// Why an operator's transfer was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferRefused {
    #[error("a transfer is already in progress")]
    InProgress,
    #[error("the call is ending")]
    Ending,
}

#[derive(Debug)]
pub struct CallCore {
    handler: Handler,
    deadline: Option<Instant>,
    transfer_ring: Duration,
    transfer: Option<Transfer>,
    /// The media test's prompt has been played.
    prompt_done: bool,
    /// The last words are on the wire: the call ends once this passes.
    hang_up_at: Option<Instant>,
    ended: bool,
    out: VecDeque<CallOutput>,
}

impl CallCore {
    /// A call answered at `now`; `max_duration` ends it (drained or not).
    pub fn new(
        now: Instant,
        handler: Handler,
        max_duration: Option<Duration>,
        transfer_ring: Duration,
    ) -> Self {
        Self {
            handler,
            deadline: max_duration.map(|d| now + d),
            transfer_ring,
            transfer: None,
            prompt_done: false,
            hang_up_at: None,
            ended: false,
            out: VecDeque::new(),
        }
    }

    pub fn poll_output(&mut self) -> Option<CallOutput> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        [
            self.deadline,
            self.hang_up_at,
            self.transfer.as_ref().and_then(Transfer::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A transfer is under way (REFER, bridge ringing or bridged).
    pub fn transferring(&self) -> bool {
        self.transfer.as_ref().is_some_and(Transfer::is_active)
    }

    /// The media test sends the caller's audio back.
    pub fn echoing(&self) -> bool {
        self.prompt_done && self.handler == Handler::MediaTest(AfterPrompt::Echo)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.end(Ending::by_appliance(EndReason::MaxDuration));
            return;
        }
        if self.hang_up_at.is_some_and(|t| now >= t) {
            self.end(Ending::by_appliance(EndReason::Hangup));
            return;
        }
        if let Some(t) = self.transfer.as_mut() {
            if t.poll_timeout().is_some_and(|at| now >= at) {
                t.handle_timeout(now);
                self.apply_transfer();
            }
        }
    }

    /// An operator asks to transfer the call to `target`.
    pub fn transfer_for_operator(&mut self, target: String) -> Result<(), TransferRefused> {
        if self.ended {
            return Err(TransferRefused::Ending);
        }
        if self.transferring() {
            return Err(TransferRefused::InProgress);
        }
        self.start_transfer(target, TransferRequester::Operator);
        Ok(())
    }

    pub fn handle_event(&mut self, now: Instant, event: CallEvent) {
        if self.ended {
            return;
        }
        match event {
            CallEvent::PlayoutDrained => self.on_playout_drained(now),
            CallEvent::Directive(Directive::Hangup) => {
                self.hang_up_at.get_or_insert(now + FINAL_AUDIO_TAIL);
            }
            CallEvent::Directive(Directive::Transfer(target)) => {
                if self.transferring() {
                    tracing::debug!(%target, "transfer asked for while one is under way");
                } else {
                    tracing::info!(%target, "agent transfers the call");
                    self.start_transfer(target, TransferRequester::Agent);
                }
            }
            CallEvent::CallerHungUp => {
                if self.transferring() {
                    self.transfer_event(now, TransferEvent::CallerHungUp);
                }
                self.end(Ending {
                    reason: EndReason::Hangup,
                    by: Some(Party::Caller),
                    send_bye: false,
                });
            }
            CallEvent::Cancelled => self.end(Ending {
                reason: EndReason::Cancelled,
                by: Some(Party::Caller),
                send_bye: false,
            }),
            CallEvent::Terminated(error) => self.end(Ending {
                reason: EndReason::Failed { error },
                by: None,
                send_bye: false,
            }),
            CallEvent::MediaTimeout => {
                tracing::warn!("no RTP for the media timeout; ending the call");
                self.end(Ending::by_appliance(EndReason::MediaTimeout));
            }
            CallEvent::OperatorHangup => self.end(Ending::by_appliance(EndReason::Hangup)),
            CallEvent::Shutdown => self.end(Ending::by_appliance(EndReason::Shutdown)),
            CallEvent::Transfer(event) => self.transfer_event(now, event),
            CallEvent::BridgeLegEnded => {
                tracing::info!("the bridged leg ended");
                if self.transferring() {
                    self.transfer_event(now, TransferEvent::BridgeEnded);
                }
                self.end(Ending::by_appliance(EndReason::Hangup));
            }
        }
    }

    /// The call is over (whatever ended it): a transfer still under way is cancelled, a
    /// ringing bridge leg with it, and its record says how it ended.
    pub fn finish(&mut self, now: Instant) {
        if let Some(t) = self.transfer.as_mut() {
            t.handle_event(now, TransferEvent::CallEnded);
        }
        self.apply_transfer();
        self.ended = true;
    }

    fn on_playout_drained(&mut self, now: Instant) {
        match self.handler {
            // While a transfer is under way (ringback playing) the agent waits.
            Handler::Agent if !self.transferring() => {
                self.out.push_back(CallOutput::AgentPlayoutDrained);
            }
            Handler::MediaTest(after) if !self.prompt_done => {
                self.prompt_done = true;
                tracing::debug!("prompt played");
                if after == AfterPrompt::Hangup {
                    self.hang_up_at.get_or_insert(now + FINAL_AUDIO_TAIL);
                }
            }
            _ => {}
        }
    }

    fn start_transfer(&mut self, target: String, requested_by: TransferRequester) {
        let transfer = Transfer::new(&target, requested_by, self.transfer_ring);
        self.out
            .push_back(CallOutput::TransferRecord(transfer.record().clone()));
        self.transfer = Some(transfer);
        self.out.push_back(CallOutput::Refer { target });
    }

    fn transfer_event(&mut self, now: Instant, event: TransferEvent) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        t.handle_event(now, event);
        self.apply_transfer();
    }

    fn apply_transfer(&mut self) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let mut changed = false;
        while let Some(output) = t.poll_output() {
            changed = true;
            match output {
                TransferOutput::Dial {
                    target,
                    ring_timeout,
                } => self.out.push_back(CallOutput::Dial {
                    target,
                    ring_timeout,
                }),
                TransferOutput::StartRingback => self.out.push_back(CallOutput::Ringback(true)),
                TransferOutput::StopRingback => self.out.push_back(CallOutput::Ringback(false)),
                TransferOutput::Connect => self.out.push_back(CallOutput::Connect),
                TransferOutput::CancelDial => self.out.push_back(CallOutput::CancelDial),
                TransferOutput::Settled(result) => {
                    let said = t.record().to_string();
                    tracing::info!("{said}");
                    match t.requested_by() {
                        TransferRequester::Operator => {
                            self.out.push_back(CallOutput::OperatorTransferSettled(
                                result.map(|()| said.clone()).map_err(|_| said),
                            ));
                        }
                        TransferRequester::Agent => {
                            if let Err(error) = result {
                                self.out.push_back(CallOutput::AgentTransferFailed(error));
                            }
                        }
                    }
                }
                TransferOutput::Leave {
                    reason,
                    by,
                    send_bye,
                } => {
                    if !self.ended {
                        self.ended = true;
                        self.out.push_back(CallOutput::End(Ending {
                            reason,
                            by: Some(by),
                            send_bye,
                        }));
                    }
                }
            }
        }
        if changed {
            self.out
                .push_back(CallOutput::TransferRecord(t.record().clone()));
        }
    }

    fn end(&mut self, ending: Ending) {
        if !self.ended {
            self.ended = true;
            self.out.push_back(CallOutput::End(ending));
        }
    }
}

#[cfg(test)]
mod tests;
