use super::*;
use crate::agent::sim::{sentences, CallerAct, ScriptedModel, Seen, SimCall};
use crate::call::transfer::TransferState;
use crate::config::AgentConfig;
use crate::telephony::sip::DialOutcome;

const RING: Duration = Duration::from_secs(20);

fn drain(core: &mut CallCore) -> Vec<CallOutput> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

fn ending(outputs: &[CallOutput]) -> Option<&Ending> {
    outputs.iter().find_map(|o| match o {
        CallOutput::End(e) => Some(e),
        _ => None,
    })
}

fn agent_call(t0: Instant) -> CallCore {
    CallCore::new(t0, Handler::Agent, Some(Duration::from_secs(600)), RING)
}

#[test]
fn the_maximum_duration_ends_the_call_from_our_side() {
    let t0 = Instant::now();
    let mut core = agent_call(t0);
    assert_eq!(core.poll_timeout(), Some(t0 + Duration::from_secs(600)));
    core.handle_timeout(t0 + Duration::from_secs(599));
    assert!(drain(&mut core).is_empty());
    core.handle_timeout(t0 + Duration::from_secs(600));
    let out = drain(&mut core);
    assert_eq!(
        ending(&out),
        Some(&Ending {
            reason: EndReason::MaxDuration,
            by: Some(Party::Appliance),
            send_bye: true
        })
    );
    assert_eq!(core.poll_timeout(), None);
}

#[test]
fn a_drain_that_runs_out_ends_live_calls_and_nothing_after_counts() {
    let t0 = Instant::now();
    let mut core = agent_call(t0);
    core.handle_event(t0, CallEvent::Shutdown);
    core.handle_event(t0, CallEvent::CallerHungUp);
    let out = drain(&mut core);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(ending(&out).map(|e| &e.reason), Some(&EndReason::Shutdown));
}

#[test]
fn the_agent_hangs_up_after_the_tail_of_silence() {
    let t0 = Instant::now();
    let mut core = agent_call(t0);
    core.handle_event(t0, CallEvent::Directive(Directive::Hangup));
    assert_eq!(core.poll_timeout(), Some(t0 + FINAL_AUDIO_TAIL));
    core.handle_timeout(t0 + FINAL_AUDIO_TAIL - Duration::from_millis(1));
    assert!(drain(&mut core).is_empty());
    core.handle_timeout(t0 + FINAL_AUDIO_TAIL);
    let out = drain(&mut core);
    assert_eq!(ending(&out).map(|e| &e.reason), Some(&EndReason::Hangup));
}

#[test]
fn the_media_test_echoes_or_hangs_up_once_its_prompt_is_played() {
    let t0 = Instant::now();
    let mut echo = CallCore::new(t0, Handler::MediaTest(AfterPrompt::Echo), None, RING);
    assert!(!echo.echoing());
    echo.handle_event(t0, CallEvent::PlayoutDrained);
    assert!(echo.echoing());
    assert_eq!(echo.poll_timeout(), None);

    let mut hangup = CallCore::new(t0, Handler::MediaTest(AfterPrompt::Hangup), None, RING);
    hangup.handle_event(t0, CallEvent::PlayoutDrained);
    assert!(!hangup.echoing());
    hangup.handle_timeout(t0 + FINAL_AUDIO_TAIL);
    assert!(ending(&drain(&mut hangup)).is_some());
}

#[test]
fn an_accepted_refer_ends_our_leg_as_transferred_and_answers_the_operator() {
    let t0 = Instant::now();
    let mut core = agent_call(t0);
    core.transfer_for_operator("sip:desk@pbx".into())
        .expect("started");
    assert_eq!(
        core.transfer_for_operator("sip:other@pbx".into()),
        Err(TransferRefused::InProgress)
    );
    let out = drain(&mut core);
    assert!(out.contains(&CallOutput::Refer {
        target: "sip:desk@pbx".into()
    }));
    core.handle_event(
        t0,
        CallEvent::Transfer(TransferEvent::ReferAnswered { code: 202 }),
    );
    core.handle_event(
        t0,
        CallEvent::Transfer(TransferEvent::ReferProgress {
            code: 200,
            done: true,
        }),
    );
    let out = drain(&mut core);
    let settled = out.iter().find_map(|o| match o {
        CallOutput::OperatorTransferSettled(r) => Some(r.clone()),
        _ => None,
    });
    assert!(matches!(settled, Some(Ok(_))), "{out:?}");
    assert_eq!(
        ending(&out).map(|e| &e.reason),
        Some(&EndReason::Transferred {
            target: "sip:desk@pbx".into()
        })
    );
}

#[test]
fn the_caller_hanging_up_while_the_bridge_rings_cancels_it_at_once() {
    let t0 = Instant::now();
    let mut core = agent_call(t0);
    core.handle_event(
        t0,
        CallEvent::Directive(Directive::Transfer("sip:desk@pbx".into())),
    );
    core.handle_event(
        t0,
        CallEvent::Transfer(TransferEvent::ReferAnswered { code: 403 }),
    );
    let out = drain(&mut core);
    assert!(out.contains(&CallOutput::Ringback(true)), "{out:?}");
    assert!(out.iter().any(|o| matches!(o, CallOutput::Dial { .. })));
    // Ringback plays: the agent is not told the caller's queue ran dry.
    core.handle_event(t0, CallEvent::PlayoutDrained);
    assert!(!drain(&mut core).contains(&CallOutput::AgentPlayoutDrained));
    core.handle_event(t0 + Duration::from_secs(3), CallEvent::CallerHungUp);
    let out = drain(&mut core);
    assert!(out.contains(&CallOutput::CancelDial), "{out:?}");
    let e = ending(&out).expect("ended");
    assert_eq!((e.by, e.send_bye), (Some(Party::Caller), false));
    let record = out.iter().rev().find_map(|o| match o {
        CallOutput::TransferRecord(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(record.map(|r| r.state), Some(TransferState::Cancelled));
}

/// The whole way back, with the real conversation: the agent hands over on key 0, the REFER is
/// refused, the human does not answer the bridge, the caller hears ringback and then the agent
/// again, asking for a message.
#[test]
fn a_refused_refer_and_an_unanswered_bridge_bring_the_caller_back_to_the_agent() {
    let config = AgentConfig {
        human_target: "sip:desk@pbx".into(),
        ..AgentConfig::default()
    };
    let mut call = SimCall::new(config, sentences(&["hello"]), ScriptedModel::default())
        .caller(&[(3_500, CallerAct::Key('0'))]);
    call.run(8_000);
    let target = call
        .seen
        .iter()
        .find_map(|(_, s)| match s {
            Seen::Directive(Directive::Transfer(t)) => Some(t.clone()),
            _ => None,
        })
        .expect("the agent transfers on key 0");
    assert!(
        call.jobs().contains(&"prompt Transfer"),
        "{:?}",
        call.jobs()
    );
    let now = call.now;
    let mut core = CallCore::new(now, Handler::Agent, None, RING);
    core.handle_event(now, CallEvent::Directive(Directive::Transfer(target)));
    core.handle_event(
        now,
        CallEvent::Transfer(TransferEvent::ReferAnswered { code: 403 }),
    );
    let rang = drain(&mut core);
    assert!(rang.contains(&CallOutput::Ringback(true)), "{rang:?}");
    core.handle_event(
        now,
        CallEvent::Transfer(TransferEvent::Dialled(DialOutcome::NoAnswer { code: 408 })),
    );
    let out = drain(&mut core);
    assert!(out.contains(&CallOutput::Ringback(false)), "{out:?}");
    assert!(ending(&out).is_none(), "the caller stays: {out:?}");
    let error = out
        .iter()
        .find_map(|o| match o {
            CallOutput::AgentTransferFailed(e) => Some(e.clone()),
            _ => None,
        })
        .expect("the agent is told");
    call.engine.handle_transfer_failed(now, error);
    call.run(14_000);
    assert!(
        call.jobs().contains(&"prompt TakeMessage"),
        "the caller is asked for a message: {:?}",
        call.jobs()
    );
}
