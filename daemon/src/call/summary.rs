//! The post-call summary: what a contact centre's dashboards want of an ended call in one small
//! message (outcome, why the caller rang, what they left, how the agent did), derived from the
//! call record alone, so it is the same on every re-send and costs no model time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::{CallDirection, CallRecord, EndReason, Party};
use crate::agent::TurnAction;
use crate::telephony::codec::Codec;

/// How the conversation ended, from the caller's side; `end_reason` says how the line ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Never answered: refused, cancelled, or (outbound) not picked up.
    NotConnected,
    /// Handed to a human: a blind transfer the caller's side completed, or the appliance's
    /// own call to the human answered and bridged. A refused or failed transfer is not this.
    Transferred,
    /// The caller left a message.
    MessageTaken,
    /// The agent gave up after repeated failures and there was no human to hand to.
    Escalated,
    /// The caller spoke and the agent answered.
    Handled,
    /// Answered, but the caller never said anything the agent heard.
    NoConversation,
}

/// Reply latency over the call's turns, milliseconds from the end of the caller's speech to
/// the first reply audio on the RTP clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyLatency {
    pub turns: u32,
    pub median_ms: u64,
    pub max_ms: u64,
}

/// How the line sounded to us.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioQuality {
    pub codec: Option<Codec>,
    /// Received packets lost, percent of those expected.
    pub loss_percent: f64,
    pub jitter_ms: f64,
    pub max_jitter_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallSummary {
    /// The call record's id (the `calls` stream carries the whole record).
    pub call_id: String,
    pub direction: CallDirection,
    /// The From and To URIs, without display name, brackets or tag.
    pub from: String,
    pub to: String,
    pub trunk: Option<String>,
    pub started_at_ms: u64,
    pub answered_at_ms: Option<u64>,
    pub ended_at_ms: u64,
    /// INVITE to answer.
    pub ring_ms: Option<u64>,
    /// Answer to end; 0 when never answered.
    pub talk_ms: u64,
    /// The call record's `end_reason.kind`.
    pub end_reason: String,
    pub hung_up_by: Option<Party>,
    pub outcome: Outcome,
    /// The caller's first words the agent heard.
    pub reason_for_call: Option<String>,
    /// Turns in which the caller said something or pressed a key.
    pub caller_turns: u32,
    /// Turns by what the agent did (fact, answer, reply, transfer, …).
    pub actions: BTreeMap<TurnAction, u32>,
    /// Intents matched, first occurrence order, without "none".
    pub intents: Vec<String>,
    /// Everything the agent collected from the caller (later turns win).
    pub slots: BTreeMap<String, String>,
    /// The message the caller left.
    pub message: Option<String>,
    /// Whom the caller was handed to; only when the transfer completed.
    pub transferred_to: Option<String>,
    /// Turns the caller spoke over the reply.
    pub interruptions: u32,
    /// Turns in which recognition, the model or synthesis failed (and was handled).
    pub turns_with_errors: u32,
    pub reply_latency: Option<ReplyLatency>,
    pub audio: Option<AudioQuality>,
    pub dtmf_received: String,
}

/// The summary of an ended call; `None` while the call is still up.
pub fn summarize(record: &CallRecord) -> Option<CallSummary> {
    let ended_at_ms = record.end_at_ms?;
    let end_reason = record.end_reason.as_ref()?;
    let turns = &record.turns;
    let given = turns.iter().filter(|t| t.turn.input.is_given()).count();
    let spoken: Vec<&str> = turns
        .iter()
        .map(|t| t.turn.input.said().trim())
        .filter(|said| !said.is_empty())
        .collect();

    let mut actions: BTreeMap<TurnAction, u32> = BTreeMap::new();
    let mut intents: Vec<String> = Vec::new();
    let mut slots = BTreeMap::new();
    for t in turns {
        *actions.entry(t.turn.action).or_default() += 1;
        let intent = &t.turn.intent;
        if !intent.is_empty() && intent != "none" && !intents.contains(intent) {
            intents.push(intent.clone());
        }
        slots.extend(t.turn.slots.clone());
    }
    let message = turns
        .iter()
        .rev()
        .find(|t| t.turn.action == TurnAction::Message)
        .map(|t| t.turn.input.said().to_owned());
    // Only a transfer that completed: the REFER's transferee reached the target, or the
    // appliance's own call to it was answered and bridged.
    let transferred_to = match end_reason {
        EndReason::Transferred { target } => Some(target.clone()),
        _ => record
            .transfer
            .as_ref()
            .filter(|t| t.state.completed())
            .map(|t| t.target.clone()),
    };

    let outcome = if record.answer_at_ms.is_none() {
        Outcome::NotConnected
    } else if transferred_to.is_some() {
        Outcome::Transferred
    } else if message.is_some() {
        Outcome::MessageTaken
    } else if actions.contains_key(&TurnAction::Escalate) {
        Outcome::Escalated
    } else if spoken.is_empty() {
        Outcome::NoConversation
    } else {
        Outcome::Handled
    };

    Some(CallSummary {
        call_id: record.id.clone(),
        direction: record.direction,
        from: bare_uri(&record.from),
        to: bare_uri(&record.to),
        trunk: record.trunk.clone(),
        started_at_ms: record.invite_at_ms,
        answered_at_ms: record.answer_at_ms,
        ended_at_ms,
        ring_ms: record
            .answer_at_ms
            .map(|a| a.saturating_sub(record.invite_at_ms)),
        talk_ms: record.duration_ms().unwrap_or(0),
        end_reason: end_reason.kind().to_owned(),
        hung_up_by: record.hung_up_by,
        outcome,
        reason_for_call: spoken.first().copied().map(str::to_owned),
        caller_turns: count(given),
        actions,
        intents,
        slots,
        message,
        transferred_to,
        interruptions: count(turns.iter().filter(|t| t.turn.interrupted).count()),
        turns_with_errors: count(turns.iter().filter(|t| !t.turn.errors.is_empty()).count()),
        reply_latency: reply_latency(
            turns
                .iter()
                .filter_map(|t| t.latency.first_reply_rtp_ms)
                .collect(),
        ),
        audio: record.rtp.as_ref().map(|rtp| AudioQuality {
            codec: record.codec,
            loss_percent: loss_percent(rtp.packets_received, rtp.packets_lost),
            jitter_ms: rtp.jitter_ms,
            max_jitter_ms: rtp.max_jitter_ms,
        }),
        dtmf_received: record.dtmf_received.clone(),
    })
}

/// `"Ann" <sip:+44123@carrier>;tag=x` → `sip:+44123@carrier`; a header without brackets loses
/// its parameters after the first `;` (a SIP URI's own parameters can only be kept inside
/// brackets).
fn bare_uri(header: &str) -> String {
    let header = header.trim();
    if let Some((_, rest)) = header.split_once('<') {
        if let Some((uri, _)) = rest.split_once('>') {
            return uri.trim().to_owned();
        }
    }
    header
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn reply_latency(mut ms: Vec<u64>) -> Option<ReplyLatency> {
    ms.sort_unstable();
    let max_ms = *ms.last()?;
    Some(ReplyLatency {
        turns: count(ms.len()),
        median_ms: ms[(ms.len() - 1) / 2],
        max_ms,
    })
}

fn loss_percent(received: u64, lost: u64) -> f64 {
    let expected = received + lost;
    if expected == 0 {
        return 0.0;
    }
    // Two decimals: a dashboard figure, and stable across re-serialisation.
    (lost as f64 * 10_000.0 / expected as f64).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{CallerInput, TurnRecord};
    use crate::call::record::{AgentTurn, RtpSummary, TurnLatency};

    fn answered_call() -> CallRecord {
        let mut r = CallRecord::new_inbound(
            ulid::Ulid::from_parts(1_795_330_000_000, 7),
            "c1@x",
            "sip:+441234@t",
            "sip:agent@x",
            "127.0.0.1:5060",
        );
        r.invite_at_ms = 1_000;
        r.answer_at_ms = Some(1_250);
        r
    }

    fn turn(caller: &str, intent: &str, action: TurnAction, reply_ms: Option<u64>) -> AgentTurn {
        AgentTurn {
            turn: TurnRecord {
                input: CallerInput::Speech(caller.into()),
                intent: intent.into(),
                action,
                ..TurnRecord::default()
            },
            latency: TurnLatency {
                first_reply_rtp_ms: reply_ms,
                ..TurnLatency::default()
            },
            ..AgentTurn::default()
        }
    }

    fn ended(mut r: CallRecord, reason: EndReason, by: Option<Party>) -> CallRecord {
        r.end(reason, by);
        r.end_at_ms = Some(31_250);
        r
    }

    #[test]
    fn from_and_to_are_bare_uris() {
        for (header, uri) in [
            (
                "\"Ann Smith\" <sip:+441234@carrier.example;user=phone>;tag=a1",
                "sip:+441234@carrier.example;user=phone",
            ),
            ("<sip:agent@127.0.0.1:5070>", "sip:agent@127.0.0.1:5070"),
            ("sip:bob@x;tag=9", "sip:bob@x"),
            ("  sip:bob@x ", "sip:bob@x"),
            ("<unterminated", "<unterminated"),
            ("", ""),
        ] {
            assert_eq!(bare_uri(header), uri, "{header}");
        }
    }

    #[test]
    fn a_live_call_has_no_summary() {
        assert_eq!(summarize(&answered_call()), None);
    }

    #[test]
    fn an_answered_conversation_is_handled_with_its_reason_intents_and_latency() {
        let mut r = answered_call();
        r.turns = vec![
            turn("", "none", TurnAction::Repeat, None),
            turn(
                " What are your opening hours? ",
                "hours",
                TurnAction::Fact,
                Some(640),
            ),
            turn("And at weekends?", "hours", TurnAction::Answer, Some(1_100)),
            turn(
                "Do you have parking?",
                "parking",
                TurnAction::Fact,
                Some(650),
            ),
        ];
        r.turns[2].turn.interrupted = true;
        r.turns[3].turn.errors = vec!["synthesis: timed out".into()];
        r.codec = Some(Codec::Pcmu);
        r.rtp = Some(RtpSummary {
            packets_received: 997,
            packets_lost: 3,
            jitter_ms: 1.5,
            max_jitter_ms: 4.0,
            ..RtpSummary::default()
        });
        let s = summarize(&ended(r, EndReason::Hangup, Some(Party::Caller))).unwrap();
        assert_eq!(s.outcome, Outcome::Handled);
        assert_eq!(s.end_reason, "hangup");
        assert_eq!(
            s.reason_for_call.as_deref(),
            Some("What are your opening hours?")
        );
        assert_eq!(s.caller_turns, 3, "the empty turn is not a caller turn");
        assert_eq!(s.intents, ["hours", "parking"]);
        assert_eq!(s.actions.get(&TurnAction::Fact), Some(&2));
        assert_eq!(s.actions.get(&TurnAction::Repeat), Some(&1));
        assert_eq!(
            s.reply_latency,
            Some(ReplyLatency {
                turns: 3,
                median_ms: 650,
                max_ms: 1_100
            })
        );
        assert_eq!((s.interruptions, s.turns_with_errors), (1, 1));
        assert_eq!((s.ring_ms, s.talk_ms), (Some(250), 30_000));
        let audio = s.audio.unwrap();
        assert_eq!(audio.loss_percent, 0.3);
        assert_eq!(audio.codec, Some(Codec::Pcmu));
    }

    #[test]
    fn outcomes_follow_what_the_conversation_did() {
        let refused = {
            let r = CallRecord::new_inbound(
                ulid::Ulid::from_parts(1_795_330_000_000, 7),
                "c",
                "a",
                "b",
                "r",
            );
            let mut r = ended(
                r,
                EndReason::Rejected {
                    code: 503,
                    reason: "busy".into(),
                },
                None,
            );
            r.answer_at_ms = None;
            r
        };
        assert_eq!(summarize(&refused).unwrap().outcome, Outcome::NotConnected);
        assert_eq!(summarize(&refused).unwrap().ring_ms, None);
        assert_eq!(summarize(&refused).unwrap().talk_ms, 0);

        let silent = ended(answered_call(), EndReason::MediaTimeout, None);
        assert_eq!(summarize(&silent).unwrap().outcome, Outcome::NoConversation);

        let mut r = answered_call();
        r.turns = vec![
            turn(
                "I'd like to leave a message",
                "message",
                TurnAction::TakeMessage,
                Some(700),
            ),
            turn(
                "Call me back about the invoice",
                "",
                TurnAction::Message,
                None,
            ),
        ];
        let s = summarize(&ended(r, EndReason::Hangup, Some(Party::Appliance))).unwrap();
        assert_eq!(s.outcome, Outcome::MessageTaken);
        assert_eq!(s.message.as_deref(), Some("Call me back about the invoice"));

        let mut r = answered_call();
        r.turns = vec![turn("mumble", "none", TurnAction::Escalate, Some(900))];
        let s = summarize(&ended(r, EndReason::Hangup, Some(Party::Appliance))).unwrap();
        assert_eq!(s.outcome, Outcome::Escalated);

        let mut r = answered_call();
        r.turns = vec![turn(
            "A human please",
            "human",
            TurnAction::Transfer,
            Some(600),
        )];
        let target = "sip:desk@pbx".to_owned();
        let s = summarize(&ended(
            r,
            EndReason::Transferred {
                target: target.clone(),
            },
            None,
        ))
        .unwrap();
        assert_eq!(s.outcome, Outcome::Transferred);
        assert_eq!(s.transferred_to, Some(target));
    }

    /// A refused REFER whose bridge failed (or was cancelled) is no transfer; one whose bridge
    /// was answered is. (Schema 1 kept a sentence in `transfer`, and any sentence made the
    /// call `transferred`, with the sentence as the target.)
    #[test]
    fn a_refused_refer_whose_bridge_failed_is_not_summarised_as_transferred() {
        use crate::call::transfer::{
            BridgeRecord, TransferRecord, TransferRequester, TransferState,
        };
        use crate::telephony::sip::DialOutcome;
        let with_transfer = |state: TransferState, dialled: Option<DialOutcome>| {
            let mut r = answered_call();
            r.turns = vec![turn(
                "A human please",
                "human",
                TurnAction::Transfer,
                Some(600),
            )];
            let mut t = TransferRecord::new("sip:desk@pbx", TransferRequester::Agent);
            t.refer_code = Some(501);
            t.state = state;
            t.bridge = Some(BridgeRecord {
                dial_outcome: dialled,
                ring_ms: Some(20_000),
            });
            r.transfer = Some(t);
            summarize(&ended(r, EndReason::Hangup, Some(Party::Appliance))).unwrap()
        };
        let failed = with_transfer(
            TransferState::Failed,
            Some(DialOutcome::NoAnswer { code: 487 }),
        );
        assert_eq!(failed.outcome, Outcome::Handled, "{failed:?}");
        assert_eq!(failed.transferred_to, None);
        let cancelled = with_transfer(TransferState::Cancelled, None);
        assert_eq!(cancelled.outcome, Outcome::Handled, "{cancelled:?}");
        assert_eq!(cancelled.transferred_to, None);
        let bridged = with_transfer(TransferState::Bridged, Some(DialOutcome::Answered));
        assert_eq!(bridged.outcome, Outcome::Transferred);
        assert_eq!(bridged.transferred_to.as_deref(), Some("sip:desk@pbx"));
    }

    #[test]
    fn key_presses_are_caller_turns_but_not_the_reason_for_the_call() {
        let mut r = answered_call();
        let mut key = turn("", "dtmf:0", TurnAction::Transfer, None);
        key.turn.input = CallerInput::Dtmf('0');
        r.turns = vec![
            key,
            turn("Leave a message", "message", TurnAction::TakeMessage, None),
        ];
        let s = summarize(&ended(r, EndReason::Hangup, Some(Party::Caller))).unwrap();
        assert_eq!(s.caller_turns, 2);
        assert_eq!(s.reason_for_call.as_deref(), Some("Leave a message"));
        assert_eq!(s.actions.get(&TurnAction::Transfer), Some(&1));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["actions"],
            serde_json::json!({"transfer": 1, "take_message": 1})
        );
    }

    #[test]
    fn slots_from_every_turn_are_kept_later_values_winning() {
        let mut r = answered_call();
        let mut first = turn("my name is Ann", "booking", TurnAction::Reply, None);
        first.turn.slots = [("name".to_owned(), "Ann".to_owned())].into();
        let mut second = turn("Anne, and Tuesday", "booking", TurnAction::Reply, None);
        second.turn.slots = [
            ("name".to_owned(), "Anne".to_owned()),
            ("day".to_owned(), "Tuesday".to_owned()),
        ]
        .into();
        r.turns = vec![first, second];
        let s = summarize(&ended(r, EndReason::Hangup, None)).unwrap();
        assert_eq!(s.slots.get("name").map(String::as_str), Some("Anne"));
        assert_eq!(s.slots.get("day").map(String::as_str), Some("Tuesday"));
        assert_eq!(s.intents, ["booking"]);
    }
}
