//! `[agent]` (what the voice agent says and does) and `[speech]` (engine threads and queues).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What an intent, a DTMF rule or a fallback does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentAction {
    /// Answer with the language model, from the configured facts.
    Answer,
    /// Say the intent's reply (or the transfer prompt) and hand the call to `agent.human_target`.
    Transfer,
    /// Say the intent's reply (or the goodbye prompt) and hang up.
    EndCall,
    /// Ask the caller for a message, record what they say next as the message, then say goodbye.
    TakeMessage,
    /// Say the intent's fixed reply, then listen again.
    Reply,
    /// Ask for the intent's `slots` one by one (each value taken from the caller's words by
    /// the model, held to a grammar), then say `reply` with `{slot}` filled in and listen again.
    Collect,
}

/// What a slot holds; each kind has its own grammar rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlotKind {
    /// Free words ("next Monday", "the blue one"), at most 48 characters: the language model
    /// takes them from the caller's words, held to a grammar.
    #[default]
    Text,
    /// The caller's name, by rule: after "my name is", "it's", or a short answer; spelled
    /// letters ("B-A-K-E-R") win.
    Name,
    /// A whole number, by rule ("forty two", "42").
    Number,
    /// A string of digits (a phone, order or reference number), by rule: spoken digits, "oh",
    /// "double five", groups over pauses, corrections; key presses too (# ends, * clears).
    Digits,
    /// Yes or no, by rule.
    YesNo,
    /// An e-mail address read out ("jo dot smith at example dot com"), by rule.
    Email,
    /// A day ("tomorrow", "next Tuesday", "the 5th of March"), by rule.
    Date,
    /// A time of day ("half past two", "3 pm", "15:30"), by rule.
    Time,
    /// An amount of money ("forty two pounds fifty", "$12.99"), by rule.
    Amount,
    /// The caller's next words, whole (a message).
    Message,
}

impl SlotKind {
    /// Read back and confirmed unless the slot says otherwise: what is easily misheard.
    pub fn confirmed_by_default(self) -> bool {
        matches!(
            self,
            SlotKind::Digits | SlotKind::Name | SlotKind::Email | SlotKind::Amount
        )
    }
}

/// True when `name` can be a slot (and so a JSON key and grammar literal without escaping).
pub fn valid_slot_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 32
}

/// One value a `collect` intent asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlotConfig {
    /// Lower-case letters, digits, '_': the key in the turn record and `{name}` in `reply`.
    pub name: String,
    /// What it is, for the model ("the caller's full name").
    pub description: String,
    /// What the agent asks when it is missing ("May I have your name?").
    pub ask: String,
    /// text, name, number, digits, yes_no, email, message.
    pub kind: SlotKind,
    /// Digits slots: how many digits a value has (an order number: 4 and 4; unset: 3 to 20).
    /// A turn answering one ends as soon as `max_digits` were said or keyed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_digits: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_digits: Option<u32>,
    /// Read the value back ("I have four two seven nine. Is that right?") and take a
    /// correction. Unset: on for digits, name and email.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm: Option<bool>,
}

impl SlotConfig {
    /// Fewest and most digits a digits slot's value has.
    pub fn digit_range(&self) -> (u32, u32) {
        let min = self.min_digits.unwrap_or(3);
        (min, self.max_digits.unwrap_or(min.max(20)))
    }

    pub fn confirms(&self) -> bool {
        self.confirm
            .unwrap_or_else(|| self.kind.confirmed_by_default())
    }
}

impl Default for SlotConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            description: String::new(),
            ask: String::new(),
            kind: SlotKind::Text,
            min_digits: None,
            max_digits: None,
            confirm: None,
        }
    }
}

/// Listening noises that do not interrupt the agent. Not "yes" or "no": said over a question,
/// those are answers.
pub const DEFAULT_BACKCHANNELS: &[&str] = &[
    "mhm", "mm", "hmm", "uh huh", "okay", "ok", "yeah", "right", "i see", "sure",
];

/// When the caller may interrupt the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BargeIn {
    /// Never: the agent finishes what it says.
    Off,
    /// Caller speech (at least `agent.barge_in_min_speech_ms`) or a key press.
    Speech,
    /// Only a key press.
    Dtmf,
}

/// What the agent does when a transfer to `human_target` fails (the REFER refused and the
/// appliance's own call not answered in `call.transfer_ring_secs`, busy or failing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenTransferFails {
    /// Play `take_message` and take the caller's message.
    TakeMessage,
    /// Say `goodbye` and hang up.
    Goodbye,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntentConfig {
    pub name: String,
    /// Phrases a caller might say for this intent (matched on words, not with the LLM).
    pub examples: Vec<String>,
    pub action: AgentAction,
    /// Fixed reply for `reply`, `transfer`, `end_call`, `take_message`; for `answer`, the
    /// template said when the language model fails or runs over its budget; for `collect`, the
    /// confirmation with `{slot}` placeholders.
    pub reply: String,
    /// For `collect`: the values to ask for, in order.
    pub slots: Vec<SlotConfig>,
}

impl Default for IntentConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            examples: Vec::new(),
            action: AgentAction::Answer,
            reply: String::new(),
            slots: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DtmfRuleConfig {
    /// One of 0-9 * # A-D.
    pub digit: String,
    pub action: AgentAction,
    pub reply: String,
}

impl Default for DtmfRuleConfig {
    fn default() -> Self {
        Self {
            digit: String::new(),
            action: AgentAction::Transfer,
            reply: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The organisation the agent answers for.
    pub organisation: String,
    /// Who the agent is and how it speaks (the start of the system prompt).
    pub persona: String,
    /// What the agent may talk about; it declines anything else.
    pub topics: String,
    /// Business facts the agent answers from (opening hours, address, policies).
    pub facts: Vec<String>,
    /// Fixed prompts, rendered once at start-up.
    pub greeting: String,
    pub one_moment: String,
    pub repeat: String,
    pub goodbye: String,
    pub transfer: String,
    pub still_there: String,
    pub take_message: String,
    pub message_taken: String,
    /// A key with no rule was pressed.
    pub invalid_key: String,
    /// Asked for something off the agent's topics (general knowledge, jokes, weather, other
    /// companies) or to drop its instructions.
    pub off_topic: String,
    /// A question on topic that no fact answers.
    pub dont_know: String,
    /// The caller stopped mid-thought ("I'd like to, um").
    pub go_on: String,
    /// A slot's value read back: `{value}` is replaced.
    pub confirm: String,
    /// SIP URI calls are handed to for a human (REFER, or a bridge when REFER is refused).
    pub human_target: String,
    /// When the transfer to `human_target` fails: take a message, or say goodbye.
    pub when_transfer_fails: WhenTransferFails,
    pub barge_in: BargeIn,
    pub barge_in_min_speech_ms: u32,
    /// Speech over the agent holds its audio; when that speech holds no words (a cough, a
    /// noise) or only a backchannel, the held reply goes on where it stopped instead of being
    /// dropped. Off: any speech of `barge_in_min_speech_ms` interrupts at once.
    pub resume_after_noise: bool,
    /// What a caller says while listening ("mhm", "okay"): said over the agent, it does not
    /// interrupt it. Lower-case words; an entry matches the whole of what was said.
    pub backchannels: Vec<String>,
    /// Silence after speech that ends the caller's turn.
    pub endpoint_silence_ms: u32,
    /// Speech shorter than this is ignored (a cough, a click).
    pub min_speech_ms: u32,
    /// Silero speech probability (percent) above which a 32 ms window counts as speech.
    pub vad_threshold_percent: u32,
    /// Longest caller turn; longer speech is cut and answered.
    pub max_utterance_secs: u32,
    /// Say `one_moment` when no reply audio is ready this long after the caller stopped.
    pub filler_after_ms: u32,
    /// Ask `still_there` after this much silence from the caller, twice, then say goodbye.
    pub no_input_secs: u32,
    /// Hard limits for one language model reply.
    pub max_reply_tokens: u32,
    pub max_reply_ms: u32,
    /// Replies are cut to this many words.
    pub max_reply_words: u32,
    /// Recognition or generation failures in a row before the call goes to a human (or ends).
    pub max_failures: u32,
    pub intents: Vec<IntentConfig>,
    pub dtmf: Vec<DtmfRuleConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            organisation: "Riverside Clinic".to_owned(),
            persona: "You are Sam, the receptionist of Riverside Clinic, answering the phone. \
                      Answer in one or two short, friendly sentences, using only the facts below."
                .to_owned(),
            topics: "the clinic's opening hours, address, appointments and services".to_owned(),
            facts: vec![
                "We are open Monday to Friday, from 9 am to 5 pm, and closed at weekends."
                    .to_owned(),
                "The clinic is at 12 River Street, next to the library.".to_owned(),
            ],
            greeting: "Hello, you are through to Riverside Clinic. How can I help you?".to_owned(),
            one_moment: "One moment, please.".to_owned(),
            repeat: "Sorry, I did not catch that. Could you say it again?".to_owned(),
            goodbye: "Thank you for calling. Goodbye.".to_owned(),
            transfer: "Let me put you through to a colleague.".to_owned(),
            still_there: "Are you still there?".to_owned(),
            take_message: "Please leave your message after this, and we will call you back."
                .to_owned(),
            message_taken: "Thank you, I have taken your message. Goodbye.".to_owned(),
            invalid_key: "Sorry, that key does nothing here. Press 0 to speak to a person, or \
                          just tell me how I can help."
                .to_owned(),
            off_topic: "Sorry, I can only help with questions about the clinic. I can take a \
                        message, or put you through to a colleague."
                .to_owned(),
            dont_know: "I'm sorry, I don't know that. I can take a message, or put you through \
                        to a colleague."
                .to_owned(),
            go_on: "Go on, I'm listening.".to_owned(),
            confirm: "I have {value}. Is that right?".to_owned(),
            human_target: String::new(),
            when_transfer_fails: WhenTransferFails::TakeMessage,
            barge_in: BargeIn::Speech,
            barge_in_min_speech_ms: 300,
            resume_after_noise: true,
            backchannels: DEFAULT_BACKCHANNELS
                .iter()
                .map(|b| (*b).to_owned())
                .collect(),
            endpoint_silence_ms: 600,
            min_speech_ms: 200,
            vad_threshold_percent: 50,
            max_utterance_secs: 20,
            filler_after_ms: 1000,
            no_input_secs: 10,
            max_reply_tokens: 60,
            max_reply_ms: 4000,
            max_reply_words: 40,
            max_failures: 2,
            intents: vec![
                IntentConfig {
                    name: "human".to_owned(),
                    examples: vec![
                        "talk to a person".to_owned(),
                        "speak to someone".to_owned(),
                        "speak to a human".to_owned(),
                        "real person".to_owned(),
                        "operator".to_owned(),
                        "receptionist".to_owned(),
                    ],
                    action: AgentAction::Transfer,
                    reply: String::new(),
                    slots: Vec::new(),
                },
                IntentConfig {
                    name: "callback".to_owned(),
                    examples: vec![
                        "call me back".to_owned(),
                        "callback".to_owned(),
                        "ring me back".to_owned(),
                        "call back".to_owned(),
                    ],
                    action: AgentAction::Collect,
                    reply: "Thank you, {name}. We will call you back on {phone} within one \
                            working day."
                        .to_owned(),
                    slots: vec![name_slot(), phone_slot()],
                },
                IntentConfig {
                    name: "message".to_owned(),
                    examples: vec![
                        "leave a message".to_owned(),
                        "take a message".to_owned(),
                        "pass on a message".to_owned(),
                    ],
                    action: AgentAction::Collect,
                    reply: "Thank you, {name}. I have your message, and we will call you back \
                            on {phone} within one working day."
                        .to_owned(),
                    slots: vec![
                        name_slot(),
                        phone_slot(),
                        SlotConfig {
                            name: "message".to_owned(),
                            description: "the caller's message".to_owned(),
                            ask: "What is your message?".to_owned(),
                            kind: SlotKind::Message,
                            ..SlotConfig::default()
                        },
                    ],
                },
                IntentConfig {
                    name: "goodbye".to_owned(),
                    examples: vec![
                        "that's all".to_owned(),
                        "goodbye".to_owned(),
                        "bye".to_owned(),
                        "nothing else".to_owned(),
                    ],
                    action: AgentAction::EndCall,
                    reply: String::new(),
                    slots: Vec::new(),
                },
            ],
            dtmf: vec![DtmfRuleConfig {
                digit: "0".to_owned(),
                action: AgentAction::Transfer,
                reply: String::new(),
            }],
        }
    }
}

fn name_slot() -> SlotConfig {
    SlotConfig {
        name: "name".to_owned(),
        description: "the caller's full name".to_owned(),
        ask: "May I have your name, please?".to_owned(),
        kind: SlotKind::Name,
        ..SlotConfig::default()
    }
}

fn phone_slot() -> SlotConfig {
    SlotConfig {
        name: "phone".to_owned(),
        description: "the caller's phone number".to_owned(),
        ask: "What number can we call you back on?".to_owned(),
        kind: SlotKind::Digits,
        min_digits: Some(7),
        max_digits: Some(15),
        ..SlotConfig::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeechConfig {
    /// CPU threads each engine uses for one job.
    pub asr_threads: u32,
    pub llm_threads: u32,
    pub tts_threads: u32,
    /// Jobs each engine queues (all calls together) before new calls are refused with 503.
    pub queue_depth: u32,
    /// Language model context tokens per call (on top of the shared system prompt).
    pub llm_context_per_call: u32,
    /// ONNX Runtime library for the voice; empty: the one `edgevoice models install` puts in
    /// models.dir.
    pub onnxruntime: PathBuf,
}

impl Default for SpeechConfig {
    fn default() -> Self {
        Self {
            asr_threads: 2,
            llm_threads: 2,
            tts_threads: 2,
            queue_depth: 8,
            llm_context_per_call: 1024,
            onnxruntime: PathBuf::new(),
        }
    }
}

/// A `collect` intent needs slots with plain names, a question each, and a reply that only
/// names its own slots; other actions take none.
fn check_slots(intent: &IntentConfig, problem: &mut impl FnMut(&str, String)) {
    let name = &intent.name;
    if intent.action != AgentAction::Collect {
        if !intent.slots.is_empty() {
            problem(
                "agent.intents",
                format!("intent \"{name}\" has slots but its action is not \"collect\""),
            );
        }
        return;
    }
    if intent.slots.is_empty() {
        problem(
            "agent.intents",
            format!("intent \"{name}\" has action \"collect\" but no slots to ask for"),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for slot in &intent.slots {
        if !valid_slot_name(&slot.name) {
            problem(
                "agent.intents",
                format!(
                    "intent \"{name}\": slot \"{}\" must be lower-case letters, digits and '_' (starting with a letter, at most 32)",
                    slot.name
                ),
            );
        } else if !seen.insert(slot.name.as_str()) {
            problem(
                "agent.intents",
                format!("intent \"{name}\": slot \"{}\" is listed twice", slot.name),
            );
        }
        let (min_digits, max_digits) = slot.digit_range();
        let digits_ok = min_digits >= 1 && min_digits <= max_digits && max_digits <= 32;
        if slot.kind == SlotKind::Digits && !digits_ok {
            problem(
                "agent.intents",
                format!(
                    "intent \"{name}\": slot \"{}\" needs 1 <= min_digits <= max_digits <= 32 (it has {} and {})",
                    slot.name, min_digits, max_digits
                ),
            );
        }
        if slot.ask.trim().is_empty() {
            problem(
                "agent.intents",
                format!(
                    "intent \"{name}\": slot \"{}\" has no `ask` (what the agent says to get it)",
                    slot.name
                ),
            );
        }
    }
    let mut rest = intent.reply.as_str();
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let placeholder = &rest[open + 1..open + close];
        if !intent.slots.iter().any(|s| s.name == placeholder) {
            problem(
                "agent.intents",
                format!(
                    "intent \"{name}\": reply names {{{placeholder}}}, which is not one of its slots"
                ),
            );
        }
        rest = &rest[open + close + 1..];
    }
}

#[allow(clippy::too_many_lines)] // every agent key's check
pub(super) fn check_agent(
    agent: &AgentConfig,
    speech: &SpeechConfig,
    problem: &mut impl FnMut(&str, String),
) {
    let ranges: [(&str, u32, u32, u32); 10] = [
        (
            "agent.barge_in_min_speech_ms",
            agent.barge_in_min_speech_ms,
            50,
            5000,
        ),
        (
            "agent.endpoint_silence_ms",
            agent.endpoint_silence_ms,
            200,
            5000,
        ),
        ("agent.min_speech_ms", agent.min_speech_ms, 32, 5000),
        ("agent.max_utterance_secs", agent.max_utterance_secs, 2, 29),
        ("agent.filler_after_ms", agent.filler_after_ms, 200, 10_000),
        ("agent.no_input_secs", agent.no_input_secs, 2, 600),
        ("agent.max_reply_tokens", agent.max_reply_tokens, 8, 1000),
        ("agent.max_reply_ms", agent.max_reply_ms, 1, 60_000),
        ("agent.max_reply_words", agent.max_reply_words, 3, 500),
        ("agent.max_failures", agent.max_failures, 1, 10),
    ];
    for (key, value, min, max) in ranges {
        if !(min..=max).contains(&value) {
            problem(key, format!("{value} is out of range; use {min} to {max}"));
        }
    }
    if !(5..=95).contains(&agent.vad_threshold_percent) {
        problem(
            "agent.vad_threshold_percent",
            format!(
                "{} is out of range; use 5 to 95 (50 suits most lines)",
                agent.vad_threshold_percent
            ),
        );
    }
    for (key, text) in [
        ("agent.greeting", &agent.greeting),
        ("agent.one_moment", &agent.one_moment),
        ("agent.repeat", &agent.repeat),
        ("agent.goodbye", &agent.goodbye),
        ("agent.transfer", &agent.transfer),
        ("agent.still_there", &agent.still_there),
        ("agent.invalid_key", &agent.invalid_key),
        ("agent.off_topic", &agent.off_topic),
        ("agent.dont_know", &agent.dont_know),
        ("agent.go_on", &agent.go_on),
        ("agent.persona", &agent.persona),
    ] {
        if text.trim().is_empty() {
            problem(
                key,
                "is empty; the agent needs something to say here".to_owned(),
            );
        }
    }
    if !agent.confirm.contains("{value}") {
        problem(
            "agent.confirm",
            "must contain {value} (where the value read back goes)".to_owned(),
        );
    }
    for phrase in &agent.backchannels {
        let plain = phrase
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == ' ' || c == '\'');
        if phrase.trim().is_empty() || !plain {
            problem(
                "agent.backchannels",
                format!("\"{phrase}\" must be lower-case words (letters, spaces, apostrophes)"),
            );
        }
    }
    let target = agent.human_target.trim();
    if !(target.is_empty() || target.starts_with("sip:") || target.starts_with("sips:")) {
        problem(
            "agent.human_target",
            format!("\"{target}\" is not a SIP URI; use e.g. \"sip:reception@192.0.2.10:5060\""),
        );
    }
    let mut names = std::collections::HashSet::new();
    for intent in &agent.intents {
        if intent.name.trim().is_empty() {
            problem(
                "agent.intents",
                "an intent has no name; give each a name".to_owned(),
            );
        } else if !names.insert(intent.name.as_str()) {
            problem(
                "agent.intents",
                format!(
                    "intent \"{}\" is defined twice; names must be unique",
                    intent.name
                ),
            );
        }
        if intent.examples.iter().all(|e| e.trim().is_empty()) {
            problem(
                "agent.intents",
                format!(
                    "intent \"{}\" has no examples; list phrases a caller would say",
                    intent.name
                ),
            );
        }
        if intent.action == AgentAction::Reply && intent.reply.trim().is_empty() {
            problem(
                "agent.intents",
                format!(
                    "intent \"{}\" has action \"reply\" but no reply text",
                    intent.name
                ),
            );
        }
        check_slots(intent, problem);
    }
    for rule in &agent.dtmf {
        let ok = rule.digit.len() == 1
            && rule
                .digit
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'));
        if !ok {
            problem(
                "agent.dtmf",
                format!(
                    "digit \"{}\" is not one DTMF key; use one of 0-9 * # A-D",
                    rule.digit
                ),
            );
        }
        if rule.action == AgentAction::Collect {
            problem(
                "agent.dtmf",
                format!(
                    "digit \"{}\" cannot \"collect\": a key press carries no words; use an intent",
                    rule.digit
                ),
            );
        }
        if rule.action == AgentAction::Reply && rule.reply.trim().is_empty() {
            problem(
                "agent.dtmf",
                format!(
                    "digit \"{}\" has action \"reply\" but no reply text",
                    rule.digit
                ),
            );
        }
    }
    for (key, value, min, max) in [
        ("speech.asr_threads", speech.asr_threads, 1, 64),
        ("speech.llm_threads", speech.llm_threads, 1, 64),
        ("speech.tts_threads", speech.tts_threads, 1, 64),
        ("speech.queue_depth", speech.queue_depth, 1, 1000),
        (
            "speech.llm_context_per_call",
            speech.llm_context_per_call,
            256,
            8192,
        ),
    ] {
        if !(min..=max).contains(&value) {
            problem(key, format!("{value} is out of range; use {min} to {max}"));
        }
    }
}
