//! Handing a call to a human, as a state machine without I/O. The call's shell sends a REFER
//! and feeds this machine what comes back ([`TransferEvent`]: the REFER's answer, the
//! transferee's NOTIFYs, how the appliance's own call to the human went, the caller hanging up)
//! with the time; it answers with [`TransferOutput`]s (call the human, ringback to the caller,
//! connect the two legs, cancel the ringing leg, leave the call) and keeps a typed
//! [`TransferRecord`] for the call record.
//!
//! ```text
//! Referring ─2xx─► ReferAccepted ─final NOTIFY 2xx / caller leaves / grace─► Transferred
//!     │                  └─final NOTIFY failure─► Failed
//!     └─refused─► Bridging (caller hears ringback) ─answered─► Bridged
//!                     ├─busy / failed / not answered in time─► Failed (back to the agent)
//!                     └─caller hangs up─► Cancelled (the ringing leg is cancelled at once)
//! ```
//!
//! Only `Transferred` and `Bridged` are a completed transfer: the summary's `transferred`
//! outcome comes from [`TransferState::completed`], never from prose.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::record::{EndReason, Party};
use crate::telephony::sip::DialOutcome;

/// After an accepted REFER our leg is done once the transferee says so, hangs up, or this
/// passes: a transferee that never sends its final NOTIFY (or BYE) must not keep the call open.
pub const TRANSFER_GRACE: Duration = Duration::from_secs(5);

/// Who asked for the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferRequester {
    /// The voice agent (a transfer intent or key, or too many failures).
    Agent,
    /// An operator (`edgevoice call transfer`).
    Operator,
}

/// Where a transfer stands; once the call has ended, how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// REFER sent, not answered yet.
    Referring,
    /// The caller's side accepted the REFER and is calling the target itself.
    ReferAccepted,
    /// The caller's side reached the target (its final NOTIFY said 2xx, or it hung up after
    /// accepting, or said nothing more within the grace time): our leg has left.
    Transferred,
    /// The REFER was refused: the appliance calls the target itself; the caller hears ringback.
    Bridging,
    /// The target answered the appliance's call: caller and target talk through the appliance.
    Bridged,
    /// Neither worked (`error` says why): the caller is back with the agent (or, for an
    /// operator's transfer, the call goes on as before).
    Failed,
    /// The call ended before the transfer completed (the caller hung up while it rang).
    Cancelled,
}

impl TransferState {
    /// The serde name (`bridged`, `failed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Referring => "referring",
            TransferState::ReferAccepted => "refer_accepted",
            TransferState::Transferred => "transferred",
            TransferState::Bridging => "bridging",
            TransferState::Bridged => "bridged",
            TransferState::Failed => "failed",
            TransferState::Cancelled => "cancelled",
        }
    }

    /// The caller reached the target.
    pub fn completed(self) -> bool {
        matches!(self, TransferState::Transferred | TransferState::Bridged)
    }
}

/// The appliance's own call to the target (after a refused REFER). It is part of the caller's
/// call and its record: it has no call record of its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BridgeRecord {
    /// How dialling ended; null while it rings (or when it was cancelled first).
    pub dial_outcome: Option<DialOutcome>,
    /// How long it rang: from dialling to the answer, the failure or the cancel.
    pub ring_ms: Option<u64>,
}

/// The transfer of a call (the call record's `transfer`; the last one when there were several).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferRecord {
    /// The SIP URI the call was handed to.
    pub target: String,
    pub requested_by: TransferRequester,
    pub state: TransferState,
    /// The SIP status the caller's side answered our REFER with; null before an answer.
    pub refer_code: Option<u16>,
    /// The status of the transferee's own call to the target, from its last NOTIFY.
    pub notify_code: Option<u16>,
    /// The appliance's own call to the target, when the REFER was refused.
    pub bridge: Option<BridgeRecord>,
    /// Why it failed, one line; null unless `state` is `failed`.
    pub error: Option<String>,
}

impl TransferRecord {
    pub fn new(target: &str, requested_by: TransferRequester) -> Self {
        Self {
            target: target.to_owned(),
            requested_by,
            state: TransferState::Referring,
            refer_code: None,
            notify_code: None,
            bridge: None,
            error: None,
        }
    }
}

/// One line for operators (`edgevoice call transfer`, logs).
impl fmt::Display for TransferRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = &self.target;
        match self.refer_code {
            Some(code) if (200..300).contains(&code) => {
                write!(f, "REFER to {target} accepted ({code})")?
            }
            Some(code) => write!(f, "REFER to {target} refused ({code})")?,
            // Its NOTIFYs overtook its answer.
            None if self.notify_code.is_some() => write!(f, "REFER to {target} accepted")?,
            None => write!(f, "REFER to {target} sent")?,
        }
        if let Some(code) = self.notify_code {
            write!(f, "; transferee reports {code}")?;
        }
        if let Some(bridge) = &self.bridge {
            match &bridge.dial_outcome {
                None => write!(f, "; calling {target}")?,
                Some(DialOutcome::Answered) => write!(f, "; bridged to {target}")?,
                Some(other) => write!(f, "; bridge to {target}: {}", dial_outcome_text(other))?,
            }
        }
        match self.state {
            TransferState::Transferred => write!(f, "; transferred")?,
            TransferState::Cancelled => write!(f, "; cancelled: the call ended first")?,
            TransferState::Failed => {
                if let Some(e) = &self.error {
                    write!(f, "; failed: {e}")?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn dial_outcome_text(o: &DialOutcome) -> String {
    match o {
        DialOutcome::Answered => "answered".to_owned(),
        DialOutcome::Busy { code } => format!("busy ({code})"),
        DialOutcome::NoAnswer { code } => format!("no answer ({code})"),
        DialOutcome::Rejected { code } => format!("rejected ({code})"),
        DialOutcome::Failed {
            code: Some(code),
            reason,
        } => format!("failed ({code} {reason})"),
        DialOutcome::Failed { code: None, reason } => format!("failed ({reason})"),
    }
}

/// What happened to the transfer, fed in by the shell.
#[derive(Debug, Clone, PartialEq)]
pub enum TransferEvent {
    /// The final response to our REFER.
    ReferAnswered { code: u16 },
    /// A NOTIFY from the transferee: the status of its call to the target.
    ReferProgress { code: u16, done: bool },
    /// How the appliance's call to the target ended ringing (a leg that could not even be
    /// started is `Failed` with no code).
    Dialled(DialOutcome),
    /// The target's leg hung up (after it was bridged).
    BridgeEnded,
    /// The caller hung up.
    CallerHungUp,
    /// The call ended for another reason (shutdown, media timeout, maximum duration).
    CallEnded,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum TransferOutput {
    /// Call the target; CANCEL when told ([`TransferOutput::CancelDial`]) or after
    /// `ring_timeout`.
    Dial {
        target: String,
        ring_timeout: Duration,
    },
    /// Play ringback to the caller until [`TransferOutput::StopRingback`].
    StartRingback,
    /// Stop the ringback (drop what is queued): the caller hears what comes next.
    StopRingback,
    /// The target answered: relay audio between the caller and the target's leg.
    Connect,
    /// Hang up the target's leg while it still rings.
    CancelDial,
    /// The transfer is settled for whoever asked: `Ok` (REFER accepted, or bridged) or failed
    /// (`Err` with why). A REFER accepted and then failed settles twice (`Ok`, then `Err`).
    Settled(Result<(), String>),
    /// Our leg is done: end the call with this reason.
    Leave {
        reason: EndReason,
        by: Party,
        send_bye: bool,
    },
}

/// One transfer of one call.
#[derive(Debug, Clone)]
pub struct Transfer {
    record: TransferRecord,
    ring_timeout: Duration,
    /// When the grace after an accepted REFER, or the ring time of the bridge, runs out.
    deadline: Option<Instant>,
    dialled_at: Option<Instant>,
    out: VecDeque<TransferOutput>,
}

impl Transfer {
    /// A transfer whose REFER the shell has just sent. `ring_timeout`: how long the target
    /// may ring when the appliance calls it itself.
    pub fn new(target: &str, requested_by: TransferRequester, ring_timeout: Duration) -> Self {
        Self {
            record: TransferRecord::new(target, requested_by),
            ring_timeout,
            deadline: None,
            dialled_at: None,
            out: VecDeque::new(),
        }
    }

    pub fn record(&self) -> &TransferRecord {
        &self.record
    }

    pub fn state(&self) -> TransferState {
        self.record.state
    }

    pub fn requested_by(&self) -> TransferRequester {
        self.record.requested_by
    }

    /// Still under way: the call's own events (hang-up, the bridge) are the transfer's.
    pub fn is_active(&self) -> bool {
        matches!(
            self.record.state,
            TransferState::Referring
                | TransferState::ReferAccepted
                | TransferState::Bridging
                | TransferState::Bridged
        )
    }

    /// The caller's audio goes to the target's leg (not the agent).
    pub fn is_bridged(&self) -> bool {
        self.record.state == TransferState::Bridged
    }

    /// The next time [`Transfer::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn poll_output(&mut self) -> Option<TransferOutput> {
        self.out.pop_front()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_none_or(|d| now < d) {
            return;
        }
        self.deadline = None;
        match self.record.state {
            TransferState::ReferAccepted => {
                // Accepted, then silence: the transferee has the call; ours is done.
                self.record.state = TransferState::Transferred;
                self.leave_transferred(Party::Appliance, true);
            }
            TransferState::Bridging => {
                self.out.push_back(TransferOutput::CancelDial);
                self.ring_ended(now);
                self.fail(format!(
                    "{} did not answer within {} s",
                    self.record.target,
                    self.ring_timeout.as_secs()
                ));
            }
            _ => {}
        }
    }

    pub fn handle_event(&mut self, now: Instant, event: TransferEvent) {
        use TransferState as S;
        match (self.record.state, event) {
            (S::Referring, TransferEvent::ReferAnswered { code }) => {
                self.record.refer_code = Some(code);
                if (200..300).contains(&code) {
                    self.record.state = S::ReferAccepted;
                    self.deadline = Some(now + TRANSFER_GRACE);
                    self.out.push_back(TransferOutput::Settled(Ok(())));
                } else {
                    // The caller's side will not transfer: call the target ourselves, and let
                    // the caller hear it ring meanwhile.
                    self.record.state = S::Bridging;
                    self.record.bridge = Some(BridgeRecord::default());
                    self.dialled_at = Some(now);
                    self.deadline = Some(now + self.ring_timeout);
                    self.out.push_back(TransferOutput::StartRingback);
                    self.out.push_back(TransferOutput::Dial {
                        target: self.record.target.clone(),
                        ring_timeout: self.ring_timeout,
                    });
                }
            }
            (S::Referring, TransferEvent::ReferProgress { code, done }) => {
                // The transferee's NOTIFYs can overtake its answer to the REFER: it is acting
                // on it, so it accepted.
                self.record.state = S::ReferAccepted;
                self.deadline = Some(now + TRANSFER_GRACE);
                self.out.push_back(TransferOutput::Settled(Ok(())));
                self.handle_event(now, TransferEvent::ReferProgress { code, done });
            }
            (S::ReferAccepted | S::Transferred, TransferEvent::ReferAnswered { code }) => {
                // The answer after the NOTIFYs (or the BYE) that overtook it.
                if self.record.refer_code.is_none() {
                    self.record.refer_code = Some(code);
                }
            }
            (S::ReferAccepted, TransferEvent::ReferProgress { code, done }) => {
                self.record.notify_code = Some(code);
                if !done {
                    return;
                }
                self.deadline = None;
                if (200..300).contains(&code) {
                    self.record.state = S::Transferred;
                    self.leave_transferred(Party::Appliance, true);
                } else {
                    self.fail(format!(
                        "the caller's side could not reach {} ({code})",
                        self.record.target
                    ));
                }
            }
            (S::Referring | S::ReferAccepted, TransferEvent::CallerHungUp) => {
                // A transferee usually leaves as soon as its new call is up, often before its
                // final NOTIFY reaches us, sometimes before its answer to the REFER: presumed
                // complete (the REFER's answer takes a round trip; a caller who really hangs
                // up within it cannot be told apart).
                self.deadline = None;
                self.record.state = S::Transferred;
                self.leave_transferred(Party::Caller, false);
            }
            (S::Bridging, TransferEvent::Dialled(outcome)) => {
                self.deadline = None;
                self.ring_ended(now);
                let answered = outcome == DialOutcome::Answered;
                let text = dial_outcome_text(&outcome);
                if let Some(b) = self.record.bridge.as_mut() {
                    b.dial_outcome = Some(outcome);
                }
                if answered {
                    self.record.state = S::Bridged;
                    self.out.push_back(TransferOutput::StopRingback);
                    self.out.push_back(TransferOutput::Connect);
                    self.out.push_back(TransferOutput::Settled(Ok(())));
                } else {
                    self.fail(format!("calling {}: {text}", self.record.target));
                }
            }
            (S::Bridging, TransferEvent::CallerHungUp) => {
                self.deadline = None;
                self.ring_ended(now);
                self.record.state = S::Cancelled;
                self.out.push_back(TransferOutput::CancelDial);
                self.leave(EndReason::Hangup, Party::Caller, false);
            }
            (S::Bridged, TransferEvent::BridgeEnded) => {
                self.leave(EndReason::Hangup, Party::Appliance, true);
            }
            (S::Bridged, TransferEvent::CallerHungUp) => {
                self.leave(EndReason::Hangup, Party::Caller, false);
            }
            (S::Referring | S::Bridging, TransferEvent::CallEnded) => {
                if self.record.state == S::Bridging {
                    self.ring_ended(now);
                    self.out.push_back(TransferOutput::CancelDial);
                }
                self.deadline = None;
                self.record.state = S::Cancelled;
            }
            (state, event) => {
                tracing::debug!(?state, ?event, "transfer event ignored in this state");
            }
        }
    }

    fn ring_ended(&mut self, now: Instant) {
        if let (Some(at), Some(b)) = (self.dialled_at.take(), self.record.bridge.as_mut()) {
            b.ring_ms = Some(now.saturating_duration_since(at).as_millis() as u64);
        }
    }

    fn fail(&mut self, error: String) {
        if self.record.state == TransferState::Bridging {
            self.out.push_back(TransferOutput::StopRingback);
        }
        self.deadline = None;
        self.record.state = TransferState::Failed;
        self.record.error = Some(error.clone());
        self.out.push_back(TransferOutput::Settled(Err(error)));
    }

    fn leave_transferred(&mut self, by: Party, send_bye: bool) {
        let target = self.record.target.clone();
        self.leave(EndReason::Transferred { target }, by, send_bye);
    }

    fn leave(&mut self, reason: EndReason, by: Party, send_bye: bool) {
        self.out.push_back(TransferOutput::Leave {
            reason,
            by,
            send_bye,
        });
    }
}

/// One cycle of UK ringback at `rate`: 400+450 Hz, 0.4 s on, 0.2 s off, 0.4 s on, 2 s off.
/// The shell queues the next cycle when the last has nearly played.
pub fn ringback_cycle(rate: u32) -> Vec<i16> {
    let samples = |ms: u32| (rate as usize * ms as usize) / 1000;
    let mut pcm = Vec::with_capacity(samples(3000));
    let tone = |pcm: &mut Vec<i16>, ms: u32| {
        for n in 0..samples(ms) {
            let t = n as f32 / rate as f32;
            let s = (2.0 * std::f32::consts::PI * 400.0 * t).sin()
                + (2.0 * std::f32::consts::PI * 450.0 * t).sin();
            // About -16 dBFS per tone: clearly heard, never clipped.
            pcm.push((s * 5000.0) as i16);
        }
    };
    tone(&mut pcm, 400);
    pcm.extend(std::iter::repeat_n(0i16, samples(200)));
    tone(&mut pcm, 400);
    pcm.extend(std::iter::repeat_n(0i16, samples(2000)));
    pcm
}

#[cfg(test)]
mod tests {
    use super::*;

    const RING: Duration = Duration::from_secs(20);

    fn drain(t: &mut Transfer) -> Vec<TransferOutput> {
        std::iter::from_fn(|| t.poll_output()).collect()
    }

    fn refused(t0: Instant) -> Transfer {
        let mut t = Transfer::new("sip:desk@pbx", TransferRequester::Agent, RING);
        t.handle_event(t0, TransferEvent::ReferAnswered { code: 501 });
        assert_eq!(
            drain(&mut t),
            [
                TransferOutput::StartRingback,
                TransferOutput::Dial {
                    target: "sip:desk@pbx".into(),
                    ring_timeout: RING
                }
            ],
            "a refused REFER: the caller hears ringback while the appliance calls the human"
        );
        assert_eq!(t.state(), TransferState::Bridging);
        assert_eq!(t.poll_timeout(), Some(t0 + RING));
        t
    }

    #[test]
    fn an_accepted_refer_completes_on_the_final_notify() {
        let t0 = Instant::now();
        let mut t = Transfer::new("sip:desk@pbx", TransferRequester::Operator, RING);
        t.handle_event(t0, TransferEvent::ReferAnswered { code: 202 });
        assert_eq!(drain(&mut t), [TransferOutput::Settled(Ok(()))]);
        assert_eq!(
            t.record().to_string(),
            "REFER to sip:desk@pbx accepted (202)"
        );
        t.handle_event(
            t0,
            TransferEvent::ReferProgress {
                code: 180,
                done: false,
            },
        );
        assert!(drain(&mut t).is_empty());
        t.handle_event(
            t0,
            TransferEvent::ReferProgress {
                code: 200,
                done: true,
            },
        );
        assert_eq!(
            drain(&mut t),
            [TransferOutput::Leave {
                reason: EndReason::Transferred {
                    target: "sip:desk@pbx".into()
                },
                by: Party::Appliance,
                send_bye: true
            }]
        );
        assert!(t.state().completed());
        assert_eq!(t.record().notify_code, Some(200));
    }

    #[test]
    fn an_accepted_refer_completes_when_the_caller_leaves_or_the_grace_passes() {
        let t0 = Instant::now();
        let mut t = Transfer::new("sip:desk@pbx", TransferRequester::Agent, RING);
        t.handle_event(t0, TransferEvent::ReferAnswered { code: 202 });
        drain(&mut t);
        t.handle_event(t0, TransferEvent::CallerHungUp);
        assert!(matches!(
            drain(&mut t)[..],
            [TransferOutput::Leave {
                reason: EndReason::Transferred { .. },
                by: Party::Caller,
                send_bye: false
            }]
        ));
        assert_eq!(t.state(), TransferState::Transferred);

        let mut t = Transfer::new("sip:desk@pbx", TransferRequester::Agent, RING);
        t.handle_event(t0, TransferEvent::ReferAnswered { code: 202 });
        drain(&mut t);
        t.handle_timeout(t0 + TRANSFER_GRACE - Duration::from_millis(1));
        assert!(drain(&mut t).is_empty(), "not before the grace passes");
        t.handle_timeout(t0 + TRANSFER_GRACE);
        assert!(matches!(
            drain(&mut t)[..],
            [TransferOutput::Leave {
                reason: EndReason::Transferred { .. },
                by: Party::Appliance,
                send_bye: true
            }]
        ));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn notifies_or_a_bye_that_overtake_the_refers_answer_count_as_accepted() {
        let t0 = Instant::now();
        let mut t = Transfer::new("sip:desk@pbx", TransferRequester::Agent, RING);
        t.handle_event(
            t0,
            TransferEvent::ReferProgress {
                code: 100,
                done: false,
            },
        );
        assert_eq!(drain(&mut t), [TransferOutput::Settled(Ok(()))]);
        assert_eq!(t.state(), TransferState::ReferAccepted);
        assert_eq!(
            t.record().to_string(),
            "REFER to sip:desk@pbx accepted; transferee reports 100"
        );
        t.handle_event(t0, TransferEvent::ReferAnswered { code: 202 });
        assert_eq!(t.record().refer_code, Some(202));
        t.handle_event(
            t0,
            TransferEvent::ReferProgress {
                code: 200,
                done: true,
            },
        );
        assert!(matches!(
            drain(&mut t)[..],
            [TransferOutput::Leave {
                reason: EndReason::Transferred { .. },
                ..
            }]
        ));

        let mut t = Transfer::new("sip:desk@pbx", TransferRequester::Agent, RING);
        t.handle_event(t0, TransferEvent::CallerHungUp);
        assert!(matches!(
            drain(&mut t)[..],
            [TransferOutput::Leave {
                reason: EndReason::Transferred { .. },
                by: Party::Caller,
                send_bye: false
            }]
        ));
        assert_eq!(t.state(), TransferState::Transferred);
    }

    #[test]
    fn an_accepted_refer_whose_call_fails_goes_back_to_whoever_asked() {
        let t0 = Instant::now();
        let mut t = Transfer::new("sip:desk@pbx", TransferRequester::Agent, RING);
        t.handle_event(t0, TransferEvent::ReferAnswered { code: 202 });
        drain(&mut t);
        t.handle_event(
            t0,
            TransferEvent::ReferProgress {
                code: 486,
                done: true,
            },
        );
        let out = drain(&mut t);
        assert!(
            matches!(&out[..], [TransferOutput::Settled(Err(e))] if e.contains("486")),
            "{out:?}"
        );
        assert_eq!(t.state(), TransferState::Failed);
        assert!(!t.state().completed());
        assert_eq!(t.poll_timeout(), None, "no grace left to run");
    }

    #[test]
    fn a_refused_refer_bridges_when_the_human_answers() {
        let t0 = Instant::now();
        let mut t = refused(t0);
        t.handle_event(
            t0 + Duration::from_secs(4),
            TransferEvent::Dialled(DialOutcome::Answered),
        );
        assert_eq!(
            drain(&mut t),
            [
                TransferOutput::StopRingback,
                TransferOutput::Connect,
                TransferOutput::Settled(Ok(()))
            ]
        );
        assert!(t.is_bridged() && t.state().completed());
        assert_eq!(t.poll_timeout(), None);
        let bridge = t.record().bridge.clone().unwrap();
        assert_eq!(bridge.ring_ms, Some(4000));
        let said = t.record().to_string();
        assert!(
            said.contains("refused (501)") && said.contains("bridged to sip:desk@pbx"),
            "{said}"
        );
        // The human hangs up: so does the caller's leg.
        t.handle_event(t0, TransferEvent::BridgeEnded);
        assert_eq!(
            drain(&mut t),
            [TransferOutput::Leave {
                reason: EndReason::Hangup,
                by: Party::Appliance,
                send_bye: true
            }]
        );
        assert_eq!(
            t.state(),
            TransferState::Bridged,
            "still a completed transfer"
        );
    }

    #[test]
    fn a_bridge_that_fails_or_is_not_answered_in_time_goes_back_to_the_agent() {
        let t0 = Instant::now();
        let mut t = refused(t0);
        t.handle_event(t0, TransferEvent::Dialled(DialOutcome::Busy { code: 486 }));
        let out = drain(&mut t);
        assert_eq!(out[0], TransferOutput::StopRingback, "{out:?}");
        assert!(
            matches!(&out[1..], [TransferOutput::Settled(Err(e))] if e.contains("busy (486)")),
            "{out:?}"
        );
        assert_eq!(t.state(), TransferState::Failed);
        assert!(!t.is_active());

        let mut t = refused(t0);
        t.handle_timeout(t0 + RING);
        let out = drain(&mut t);
        assert_eq!(
            out[..2],
            [TransferOutput::CancelDial, TransferOutput::StopRingback]
        );
        assert!(
            matches!(&out[2..], [TransferOutput::Settled(Err(e))] if e.contains("did not answer within 20 s")),
            "{out:?}"
        );
        assert_eq!(t.record().bridge.as_ref().unwrap().ring_ms, Some(20_000));
        // A late answer from the cancelled leg changes nothing.
        t.handle_event(t0 + RING, TransferEvent::Dialled(DialOutcome::Answered));
        assert!(drain(&mut t).is_empty());
        assert_eq!(t.state(), TransferState::Failed);
    }

    #[test]
    fn the_caller_hanging_up_while_the_bridge_rings_cancels_it_at_once() {
        let t0 = Instant::now();
        let mut t = refused(t0);
        t.handle_event(t0 + Duration::from_secs(3), TransferEvent::CallerHungUp);
        assert_eq!(
            drain(&mut t),
            [
                TransferOutput::CancelDial,
                TransferOutput::Leave {
                    reason: EndReason::Hangup,
                    by: Party::Caller,
                    send_bye: false
                }
            ]
        );
        assert_eq!(t.state(), TransferState::Cancelled);
        assert_eq!(t.poll_timeout(), None);
        assert!(!t.state().completed());

        // Any other end of the call cancels it too.
        let mut t = refused(t0);
        t.handle_event(t0, TransferEvent::CallEnded);
        assert_eq!(drain(&mut t), [TransferOutput::CancelDial]);
        assert_eq!(t.state(), TransferState::Cancelled);
    }

    #[test]
    fn the_record_is_typed_json() {
        let t0 = Instant::now();
        let mut t = refused(t0);
        t.handle_event(t0, TransferEvent::Dialled(DialOutcome::Answered));
        let json = serde_json::to_value(t.record()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "target": "sip:desk@pbx",
                "requested_by": "agent",
                "state": "bridged",
                "refer_code": 501,
                "notify_code": null,
                "bridge": {"dial_outcome": {"outcome": "answered"}, "ring_ms": 0},
                "error": null
            })
        );
        let back: TransferRecord = serde_json::from_value(json).unwrap();
        assert_eq!(&back, t.record());
    }

    #[test]
    fn state_names_are_the_serde_names() {
        for state in [
            TransferState::Referring,
            TransferState::ReferAccepted,
            TransferState::Transferred,
            TransferState::Bridging,
            TransferState::Bridged,
            TransferState::Failed,
            TransferState::Cancelled,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }

    #[test]
    fn ringback_is_uk_cadence_three_seconds_a_cycle() {
        let pcm = ringback_cycle(8000);
        assert_eq!(pcm.len(), 24_000);
        let energy = |from_ms: usize, to_ms: usize| {
            pcm[from_ms * 8..to_ms * 8]
                .iter()
                .map(|&s| f64::from(s).powi(2))
                .sum::<f64>()
        };
        assert!(energy(0, 400) > 1e9, "tone first");
        assert_eq!(energy(420, 580), 0.0, "short gap");
        assert!(energy(600, 1000) > 1e9, "second tone");
        assert_eq!(energy(1000, 3000), 0.0, "long gap");
    }
}
