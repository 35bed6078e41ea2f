//! Whole agent calls in simulated time (`agent::sim`): fakes for the engines, the real media
//! engine on the way out. Each runs in milliseconds of wall time.

use super::*;
use crate::agent::sim::{sentences, CallerAct, ScriptedModel, Seen, SimCall, ToneVoice};

/// The default greeting (11 words) lasts 2.75 s with the fake voice.
const AFTER_GREETING_MS: u64 = 3_200;
const QUESTION: &str = "Can you tell me about the services at the clinic";
const LONG_REPLY: &str = "The clinic offers checkups for adults and children. \
     Appointments at the clinic can be made by phone on weekdays. \
     The services of the clinic include vaccinations and blood tests.";

fn model(reply: &str) -> ScriptedModel {
    ScriptedModel {
        replies: HashMap::new(),
        default_reply: reply.to_owned(),
    }
}

fn agent() -> AgentConfig {
    AgentConfig::default()
}

/// Sentence 0 is the question; 1 more words; 2 a backchannel.
fn script() -> Vec<String> {
    sentences(&[QUESTION, "No wait where is the clinic", "mhm"])
}

/// A call where the question is asked after the greeting, and the reply is under way at
/// `reply_ms` (the caller's next act goes there).
fn call_with(config: AgentConfig, then: &[(u64, CallerAct)]) -> SimCall {
    let mut acts = vec![(AFTER_GREETING_MS, CallerAct::Say { index: 0, ms: 1500 })];
    acts.extend_from_slice(then);
    SimCall::new(config, script(), model(LONG_REPLY)).caller(&acts)
}

/// When the reply's first audio went out on the wire.
fn reply_start(call: &SimCall) -> u64 {
    call.sent
        .iter()
        .find(|(t, audio)| *audio && *t > AFTER_GREETING_MS + 1500)
        .map(|(t, _)| *t)
        .expect("the reply was heard")
}

fn reply_packets(call: &SimCall) -> usize {
    call.audio_packets(AFTER_GREETING_MS + 1500, u64::MAX)
}

/// Every word of the reply went out on the wire, none twice (250 ms a word, 50 packets a
/// second).
fn assert_whole_reply_heard(call: &SimCall) {
    let expected = LONG_REPLY.split_whitespace().count() * 250 / 20;
    let heard = reply_packets(call);
    assert!(
        heard.abs_diff(expected) <= 3,
        "heard {heard} packets, expected {expected}"
    );
}

#[test]
fn a_question_is_answered_by_the_model_and_the_turn_carries_its_latency() {
    let mut call = call_with(agent(), &[]);
    call.run(20_000);
    assert_eq!(call.turns.len(), 1, "{:?}", call.turns);
    let turn = &call.turns[0];
    assert_eq!(turn.turn.input.text(), QUESTION);
    assert!(
        turn.turn.agent.starts_with("The clinic offers"),
        "{}",
        turn.turn.agent
    );
    let l = &turn.latency;
    let endpoint = l.endpoint_ms.expect("endpoint stamp");
    let rtp = l.first_reply_rtp_ms.expect("first reply RTP stamp");
    assert!((600..700).contains(&endpoint), "{l:?}");
    assert!(rtp > endpoint, "{l:?}");
    assert_whole_reply_heard(&call);
}

#[test]
fn barge_in_mid_clause_stops_the_audio_within_one_frame_and_cancels_generation() {
    // The model is slow, so the reply is still being generated when the caller cuts in.
    let config = AgentConfig {
        resume_after_noise: false,
        ..agent()
    };
    let mut call = call_with(config, &[]);
    call.delays.per_token = Duration::from_millis(150);
    call.run(6_500);
    let speaking_from = reply_start(&call);
    // The caller cuts in 1 s into the reply.
    let cut_in = speaking_from + 1_000;
    let mut call = {
        let config = AgentConfig {
            resume_after_noise: false,
            ..agent()
        };
        let mut c = call_with(config, &[(cut_in, CallerAct::Say { index: 1, ms: 1200 })]);
        c.delays.per_token = Duration::from_millis(150);
        c
    };
    call.run(14_000);
    let flushed = call
        .first(|s| *s == Seen::Flush)
        .expect("the reply was stopped");
    assert!(
        flushed >= cut_in && flushed <= cut_in + 400,
        "stopped at {flushed} ms, cut in at {cut_in}"
    );
    // Held from the first speech-like window; not a packet of the reply after it.
    let held = call.first(|s| *s == Seen::Hold(true)).expect("held");
    assert!(held <= cut_in + 100, "held at {held} ms");
    assert_eq!(call.audio_packets(held + 20, flushed + 1), 0);
    // The generation still running was cancelled at the same moment.
    let cancelled = call
        .first(|s| matches!(s, Seen::Cancel(_)))
        .expect("cancelled");
    assert_eq!(cancelled, flushed);
    assert!(call.turns[0].turn.interrupted, "{:?}", call.turns[0]);
    // The interruption is the next turn, and it is answered.
    assert_eq!(call.turns.len(), 2, "{:?}", call.turns);
    assert_eq!(
        call.turns[1].turn.input.text(),
        "No wait where is the clinic"
    );
}

/// Runs the call once to find when the reply plays, then again with `act` 1 s into it.
fn over_the_reply(config: AgentConfig, act: impl Fn(u64) -> CallerAct) -> (SimCall, u64) {
    let mut probe = call_with(config.clone(), &[]);
    probe.run(8_000);
    let at = reply_start(&probe) + 1_000;
    let mut call = call_with(config, &[(at, act(at))]);
    call.run(20_000);
    (call, at)
}

#[test]
fn a_cough_over_the_reply_holds_it_and_the_reply_goes_on_where_it_stopped() {
    let (call, at) = over_the_reply(agent(), |_| CallerAct::Cough { ms: 500 });
    let held = call.first(|s| *s == Seen::Hold(true)).expect("held");
    let resumed = call.first(|s| *s == Seen::Hold(false)).expect("resumed");
    assert!(
        held >= at && held <= at + 100,
        "held at {held}, cough at {at}"
    );
    assert!(resumed > held, "resumed at {resumed}");
    assert_eq!(
        call.audio_packets(held + 20, resumed),
        0,
        "silence while held"
    );
    assert!(
        call.first(|s| *s == Seen::Flush).is_none(),
        "nothing dropped"
    );
    assert_eq!(call.engine.false_interruptions(), 1);
    assert_whole_reply_heard(&call);
    assert_eq!(
        call.turns.len(),
        1,
        "a cough is not a turn: {:?}",
        call.turns
    );
    assert!(!call.turns[0].turn.interrupted);
}

#[test]
fn a_backchannel_over_the_reply_does_not_interrupt_it() {
    let (call, _) = over_the_reply(agent(), |_| CallerAct::Say { index: 2, ms: 500 });
    assert!(
        call.first(|s| *s == Seen::Flush).is_none(),
        "nothing dropped"
    );
    assert_eq!(call.engine.false_interruptions(), 1);
    assert_whole_reply_heard(&call);
    assert_eq!(call.turns.len(), 1, "{:?}", call.turns);
}

#[test]
fn a_cough_interrupts_for_good_when_resuming_is_off() {
    let config = AgentConfig {
        resume_after_noise: false,
        ..agent()
    };
    let (call, _) = over_the_reply(config, |_| CallerAct::Cough { ms: 500 });
    assert!(call.first(|s| *s == Seen::Flush).is_some());
    assert_eq!(call.engine.false_interruptions(), 0);
    assert!(call.turns[0].turn.interrupted);
}

#[test]
fn words_over_the_reply_are_held_then_interrupt_it_once_they_are_known() {
    let (call, at) = over_the_reply(agent(), |_| CallerAct::Say { index: 1, ms: 1200 });
    let held = call.first(|s| *s == Seen::Hold(true)).expect("held");
    let flushed = call.first(|s| *s == Seen::Flush).expect("stopped");
    assert!(held <= at + 100);
    // Silent from the hold on: the caller never hears the reply go on over them.
    assert_eq!(call.audio_packets(held + 20, flushed + 1), 0);
    // Decided once the words were known: after the caller stopped and was recognised.
    assert!(flushed >= at + 1200, "stopped at {flushed}");
    assert!(call.turns[0].turn.interrupted);
    assert_eq!(
        call.turns[1].turn.input.text(),
        "No wait where is the clinic"
    );
    assert_eq!(call.engine.false_interruptions(), 0);
}

#[test]
fn speech_over_the_reply_that_cannot_be_recognised_interrupts_and_the_caller_is_asked_again() {
    let mut probe = call_with(agent(), &[]);
    probe.run(8_000);
    let at = reply_start(&probe) + 1_000;
    let mut call = call_with(agent(), &[(at, CallerAct::Say { index: 1, ms: 1200 })]);
    call.asr_fails_from_ms = Some(at);
    call.run(20_000);
    assert!(
        call.first(|s| *s == Seen::Flush).is_some(),
        "the reply stopped"
    );
    assert_eq!(call.engine.false_interruptions(), 0);
    assert!(
        call.jobs().contains(&"prompt Repeat"),
        "the caller is asked to say it again: {:?}",
        call.jobs()
    );
}

#[test]
fn speculation_started_on_the_pause_is_adopted_when_the_turn_ends_there() {
    let mut call = call_with(agent(), &[]);
    call.run(9_000);
    let jobs = call.jobs();
    let recognitions: Vec<&str> = jobs
        .iter()
        .copied()
        .filter(|j| j.starts_with("recognize"))
        .collect();
    let generations: Vec<&str> = jobs
        .iter()
        .copied()
        .filter(|j| j.starts_with("generate"))
        .collect();
    assert_eq!(recognitions, ["recognize guess=true"], "{jobs:?}");
    assert_eq!(generations, ["generate guess=true"], "{jobs:?}");
    assert!(call.first(|s| matches!(s, Seen::Cancel(_))).is_none());
    assert_eq!(call.turns[0].turn.input.text(), QUESTION);
    // The endpoint silence was spent on the work: the reply's first token came before it.
    let l = &call.turns[0].latency;
    assert!(
        l.llm_first_token_ms.expect("token") <= l.endpoint_ms.expect("endpoint") + 20,
        "{l:?}"
    );
}

#[test]
fn speculation_is_dropped_when_the_caller_goes_on_after_the_pause() {
    // The question, a 450 ms pause (past the pad, short of the 600 ms endpoint), then more.
    let start = AFTER_GREETING_MS + 1500 + 450;
    let mut call = call_with(agent(), &[(start, CallerAct::Say { index: 1, ms: 1200 })]);
    call.run(12_000);
    let jobs = call.jobs();
    // A guess on the first pause, its generation cancelled when the caller went on; a new
    // guess on the second pause covers both parts and is the turn's.
    let guesses = jobs
        .iter()
        .filter(|j| **j == "recognize guess=true")
        .count();
    assert_eq!(guesses, 2, "{jobs:?}");
    assert!(jobs.contains(&"generate guess=true"), "{jobs:?}");
    let cancelled = call
        .first(|s| matches!(s, Seen::Cancel(_)))
        .expect("the guess was cancelled");
    assert!(
        cancelled >= start && cancelled < start + 400,
        "cancelled at {cancelled}"
    );
    assert!(!jobs.contains(&"recognize guess=false"), "{jobs:?}");
    assert_eq!(call.turns.len(), 1, "{:?}", call.turns);
    assert_eq!(
        call.turns[0].turn.input.text(),
        format!("{QUESTION} No wait where is the clinic")
    );
    // Both parts heard as one question: the address fact answers it.
    assert!(
        call.turns[0].turn.agent.contains("River Street"),
        "{:?}",
        call.turns[0]
    );
}

#[test]
fn clauses_synthesized_out_of_order_are_played_in_order() {
    let mut call = call_with(agent(), &[]);
    // The first clause takes longest; the later ones are back before it.
    call.delays.tts = vec![
        Duration::from_millis(700),
        Duration::from_millis(20),
        Duration::from_millis(20),
    ];
    call.run(20_000);
    let said: Vec<u32> = call
        .jobs()
        .iter()
        .filter_map(|j| j.strip_prefix("say "))
        .map(|text| ((ToneVoice::pitch(text) / 50.0).round() * 50.0) as u32)
        .collect();
    assert_eq!(said.len(), 3, "{:?}", call.jobs());
    let played: Vec<u32> = call
        .seen
        .iter()
        .filter_map(|(t, s)| match s {
            Seen::Play { pitch } if *t > AFTER_GREETING_MS => Some(*pitch),
            _ => None,
        })
        .collect();
    assert_eq!(played, said);
}

#[test]
fn the_filler_is_said_when_no_reply_audio_is_ready_in_time() {
    let mut call = call_with(agent(), &[]);
    call.delays.first_token = Duration::from_millis(2_500);
    call.run(12_000);
    // Counted from the caller's last speech, as the caller counts their silence (not from
    // the endpoint, 600 ms later).
    let speech_end = AFTER_GREETING_MS + 1500;
    let filler = call
        .first(|s| *s == Seen::Job("prompt OneMoment".to_owned()))
        .expect("the filler");
    let after = filler - speech_end;
    assert!(
        (950..1100).contains(&after),
        "filler {after} ms after the caller stopped"
    );
    // And the reply still comes after it.
    assert!(call.turns[0].turn.agent.starts_with("The clinic offers"));
}

#[test]
fn a_silent_caller_is_asked_twice_then_told_goodbye_and_the_call_hangs_up() {
    let mut call = SimCall::new(agent(), script(), model(LONG_REPLY));
    call.run(120_000);
    let prompts: Vec<&str> = call
        .jobs()
        .into_iter()
        .filter(|j| j.starts_with("prompt"))
        .collect();
    assert_eq!(
        prompts,
        [
            "prompt Greeting",
            "prompt StillThere",
            "prompt StillThere",
            "prompt Goodbye"
        ]
    );
    let asked = call
        .first(|s| *s == Seen::Job("prompt StillThere".to_owned()))
        .expect("asked");
    // no_input_secs after the greeting ended.
    assert!((12_500..13_000).contains(&asked), "asked at {asked}");
    assert!(call.ended);
    assert!(call
        .first(|s| *s == Seen::Directive(Directive::Hangup))
        .is_some());
}

#[test]
fn backchannels_match_the_whole_utterance_whatever_its_case_and_punctuation() {
    let engine = TurnEngine::new(
        TurnConfig::new(&agent()),
        Conversation::new(crate::agent::AgentSpec::new(&agent())),
    );
    assert!(engine.is_backchannel("Mhm."));
    assert!(engine.is_backchannel(" Uh-huh"));
    assert!(!engine.is_backchannel("okay so where are you"));
    assert!(!engine.is_backchannel("yes"));
}

#[test]
fn whisper_non_speech_markers_are_not_caller_words() {
    assert_eq!(clean_transcript(" [BLANK_AUDIO] "), "");
    assert_eq!(
        clean_transcript("(coughs) When are you open?"),
        "When are you open?"
    );
    assert_eq!(clean_transcript("Hello [Music] there"), "Hello there");
    assert_eq!(clean_transcript("*unintelligible*"), "");
    assert_eq!(clean_transcript("*coughs* Yes."), "Yes.");
}

#[test]
fn a_whole_question_ends_at_the_pause_not_after_the_endpoint_silence() {
    let script = sentences(&["Can I book an appointment for my son?"]);
    let mut call = SimCall::new(agent(), script, model(LONG_REPLY))
        .caller(&[(AFTER_GREETING_MS, CallerAct::Say { index: 0, ms: 1500 })]);
    call.run(12_000);
    let endpoint = call.turns[0].latency.endpoint_ms.expect("endpoint stamp");
    // The pause's guess (200 ms pad + 150 ms recognition) decides, not 600 ms of silence.
    assert!(
        (300..500).contains(&endpoint),
        "ended {endpoint} ms after the caller stopped"
    );
}

#[test]
fn words_that_stop_mid_thought_keep_the_turn_open_over_a_long_pause() {
    let script = sentences(&["I'd like to um", "book an appointment for my son"]);
    let mut call = SimCall::new(agent(), script, model(LONG_REPLY)).caller(&[
        (AFTER_GREETING_MS, CallerAct::Say { index: 0, ms: 1000 }),
        // 900 ms of silence: longer than the 600 ms endpoint.
        (
            AFTER_GREETING_MS + 1900,
            CallerAct::Say { index: 1, ms: 1500 },
        ),
    ]);
    call.run(14_000);
    assert_eq!(call.turns.len(), 1, "{:?}", call.turns);
    assert_eq!(
        call.turns[0].turn.input.text(),
        "I'd like to um book an appointment for my son"
    );
}
