//! The voice agent: what it knows (facts, intents, DTMF rules from `[agent]`), the per-call
//! conversation state machine, endpointing, clause splitting and the turn engine that ties them
//! to the speech engines ([`turns`]). No I/O here: `call::agent` is the shell that feeds audio,
//! runs the engines' jobs and plays the replies.

pub mod collect;
pub mod conversation;
pub mod endpoint;
pub mod engines;
pub mod meaning;
pub mod sentences;
#[cfg(test)]
pub mod sim;
pub mod slots;
pub mod spoken;
pub mod triage;
pub mod turns;

use crate::config::{AgentAction, AgentConfig};
use crate::speech::text::normalize_words;

pub use conversation::{
    Action, CallerInput, Conversation, ConversationState, Input, Prompt, TurnAction, TurnRecord,
};

/// Words that carry no intent ("to", "a", "please"): ignored when matching examples.
const FILLER_WORDS: &[&str] = &[
    "a", "an", "the", "to", "with", "i", "i'd", "i'm", "me", "my", "please", "can", "could",
    "would", "like", "want", "just", "um", "uh", "so", "and", "is", "it", "do", "you", "for", "of",
    "some",
];

/// Replies that claim an action the agent cannot take (it only talks; transfers and hang-ups are
/// done by rules, never by the model). Sentences containing these are dropped.
const CLAIMED_ACTIONS: &[&str] = &[
    "i have booked",
    "i've booked",
    "i booked",
    "i have scheduled",
    "i've scheduled",
    "i have cancelled",
    "i've cancelled",
    "i have canceled",
    "i have sent",
    "i've sent",
    "i have transferred",
    "i've transferred",
    "i am transferring",
    "i'm transferring",
    "i will transfer",
    "i'll transfer",
    "i have made",
    "i've made",
    "i have updated",
    "i've updated",
    "i have noted",
    "i have passed",
    "is booked",
    "is confirmed",
    "has been booked",
    "has been scheduled",
    "has been cancelled",
];

/// Words any helpful reply may use, whatever the topic ("sorry", "help", "call"): they never
/// make a clause on or off topic.
const CONVERSATION_WORDS: &[&str] = &[
    "sorry",
    "help",
    "helping",
    "call",
    "calling",
    "thank",
    "thanks",
    "welcome",
    "question",
    "questions",
    "information",
    "know",
    "sure",
    "happy",
    "glad",
    "assist",
    "anything",
    "else",
    "today",
    "contact",
    "person",
    "staff",
    "team",
    "speak",
    "talk",
    "ask",
    "tell",
    "okay",
    "ok",
    "hello",
    "hi",
    "good",
    "great",
    "course",
    "answer",
    "don't",
    "can't",
    "cannot",
    "unable",
    "afraid",
    "unfortunately",
    "please",
    "let",
    "more",
    "details",
    "detail",
    "someone",
    "find",
    "out",
    "check",
    "need",
    "may",
    "might",
    "they",
    "them",
    "your",
    "yours",
    "their",
    "you're",
    "we're",
    "it's",
    "that's",
    "there's",
    "about",
    "any",
    "other",
    "only",
    "one",
    "moment",
    "again",
    "repeat",
    "understand",
    "mean",
    "said",
    "say",
    "does",
    "did",
    "get",
    "give",
    "time",
    "way",
    "thing",
    "things",
    "well",
    "really",
    "very",
    "much",
    "many",
    "would",
    "should",
];

/// Content words a clause must have before it can be judged off topic: "I can't say." is not.
const OFF_TOPIC_MIN_WORDS: usize = 3;

/// An intent ready for matching.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    pub name: String,
    pub action: AgentAction,
    pub reply: String,
    /// For `collect`: what to ask for.
    pub slots: Vec<crate::config::SlotConfig>,
    examples: Vec<Vec<String>>,
}

/// Words that tie a question to a fact beyond the words they share.
const RELATED_WORDS: &[(&str, &[&str])] = &[
    ("hours", &["open", "opening", "close", "closed"]),
    ("opening", &["open", "hours"]),
    ("open", &["opening", "hours", "close", "closed"]),
    ("closed", &["open", "close"]),
    ("close", &["closed", "open", "hours"]),
    ("when", &["open", "hours"]),
    ("where", &["street", "road", "address", "next", "located"]),
    ("address", &["street", "road", "where"]),
    ("located", &["street", "road", "where"]),
    ("find", &["street", "road", "address"]),
];

/// Words too weak to tie a question to a fact on their own.
const WEAK_WORDS: &[&str] = &[
    "next", "near", "also", "we", "are", "our", "us", "at", "on", "in", "from", "be", "there",
    "here", "this", "that", "have", "has", "will", "all", "not", "no", "yes", "what", "how",
];

/// Words naming a day, month or time: a reply may only use those the facts use.
const TIME_WORDS: &[&str] = &[
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "weekend",
    "weekends",
    "am",
    "pm",
    "noon",
    "midnight",
    "january",
    "february",
    "march",
    "april",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// The agent as configured: prompt text, intents and key rules.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    pub config: AgentConfig,
    pub intents: Vec<Intent>,
    /// Every word of the facts, persona and prompts: what a reply may state as numbers/times.
    grounded: std::collections::HashSet<String>,
    facts: Vec<(String, Vec<String>)>,
    /// Word stems of everything the agent is configured to talk about (topics, facts, persona,
    /// intents, prompts): a reply clause must touch one of them or the caller's question.
    topical: std::collections::HashSet<String>,
}

impl AgentSpec {
    pub fn new(config: &AgentConfig) -> Self {
        let intents = config
            .intents
            .iter()
            .map(|i| Intent {
                name: i.name.clone(),
                action: i.action,
                reply: i.reply.clone(),
                slots: i.slots.clone(),
                examples: i
                    .examples
                    .iter()
                    .map(|e| content_words(e))
                    .filter(|w| !w.is_empty())
                    .collect(),
            })
            .collect();
        let mut grounded = std::collections::HashSet::new();
        for text in
            config
                .facts
                .iter()
                .chain([&config.persona, &config.organisation, &config.topics])
        {
            grounded.extend(normalize_words(text));
        }
        // A fact is found by its own words: not the organisation's name ("clinic" is in every
        // question about it) and not words that say nothing alone ("next" to the library).
        let common: Vec<String> = content_words(&config.organisation)
            .into_iter()
            .chain(WEAK_WORDS.iter().map(|w| (*w).to_owned()))
            .collect();
        // A fact is said as a reply, not a speech: a fact of several sentences answers with the
        // one the question is about (each is matched alone).
        let facts = config
            .facts
            .iter()
            .flat_map(|f| {
                let sentences = fact_sentences(f);
                if sentences.is_empty() {
                    vec![f.trim().to_owned()]
                } else {
                    sentences
                }
            })
            .map(|f| {
                let words = content_words(&f)
                    .into_iter()
                    .filter(|w| !common.contains(w))
                    .collect();
                (f, words)
            })
            .collect();
        let topical = config
            .facts
            .iter()
            .chain([
                &config.persona,
                &config.organisation,
                &config.topics,
                &config.greeting,
                &config.take_message,
            ])
            .chain(
                config
                    .intents
                    .iter()
                    .flat_map(|i| i.examples.iter().chain([&i.reply])),
            )
            .flat_map(|t| content_words(t))
            .map(|w| stem(&w))
            .collect();
        Self {
            config: config.clone(),
            intents,
            grounded,
            facts,
            topical,
        }
    }

    /// The clause's topical words if it has several and none belongs to the configured topics,
    /// the facts or the caller's `question` (the model wandered off: "The capital of France is
    /// Paris."); None when it is on topic or too short to judge.
    pub fn off_topic(&self, clause: &str, question: &str) -> Option<Vec<String>> {
        let asked: std::collections::HashSet<String> =
            content_words(question).iter().map(|w| stem(w)).collect();
        let words: Vec<String> = content_words(clause)
            .into_iter()
            .filter(|w| {
                !WEAK_WORDS.contains(&w.as_str())
                    && !CONVERSATION_WORDS.contains(&w.as_str())
                    && !w.chars().any(|c| c.is_ascii_digit())
            })
            .collect();
        if words.len() < OFF_TOPIC_MIN_WORDS {
            return None;
        }
        let on_topic = words.iter().any(|w| {
            let s = stem(w);
            self.topical.contains(&s) || asked.contains(&s)
        });
        (!on_topic).then_some(words)
    }

    /// The word belongs to what the agent is configured to talk about.
    pub fn is_topical(&self, word: &str) -> bool {
        self.topical.contains(&stem(&word.to_lowercase()))
    }

    /// Some word of `said` (not filler, not conversation) is one of the agent's topics.
    pub fn touches_topics(&self, said: &str) -> bool {
        content_words(said).iter().any(|w| {
            !WEAK_WORDS.contains(&w.as_str())
                && !CONVERSATION_WORDS.contains(&w.as_str())
                && self.topical.contains(&stem(w))
        })
    }

    /// The fact that best answers `question` (shared or related words), if any.
    pub fn relevant_fact(&self, question: &str) -> Option<&str> {
        let mut words = content_words(question);
        let related: Vec<String> = words
            .iter()
            .flat_map(|w| {
                RELATED_WORDS
                    .iter()
                    .filter(move |(k, _)| k == w)
                    .flat_map(|(_, r)| r.iter().map(|s| (*s).to_owned()))
            })
            .collect();
        words.extend(related);
        // The first of the best (config order), not the last.
        let mut best: Option<(&str, usize)> = None;
        for (fact, fw) in &self.facts {
            let n = fw.iter().filter(|w| words.contains(w)).count();
            if n > 0 && best.is_none_or(|(_, m)| n > m) {
                best = Some((fact, n));
            }
        }
        best.map(|(f, _)| f)
    }

    /// A number, day or time in `clause` that no fact states (the model made it up).
    pub fn ungrounded_word(&self, clause: &str) -> Option<String> {
        normalize_words(clause).into_iter().find(|w| {
            let factual = w.chars().any(|c| c.is_ascii_digit()) || TIME_WORDS.contains(&w.as_str());
            factual && !self.grounded.contains(w)
        })
    }

    /// Applies every guardrail to one clause of a reply to `question` (see [`guard_clause`]):
    /// refuses numbers, days and times that are not in the facts, and clauses off the
    /// configured topics.
    pub fn guard(
        &self,
        clause: &str,
        question: &str,
        said_words: usize,
        max_words: usize,
    ) -> Guarded {
        if let Some(word) = self.ungrounded_word(clause) {
            return Guarded::Ungrounded(word);
        }
        if let Some(words) = self.off_topic(clause, question) {
            return Guarded::OffTopic(words);
        }
        guard_clause(clause, said_words, max_words)
    }

    /// The system prompt: persona, topics, facts and the rules the model must keep.
    pub fn system_prompt(&self) -> String {
        let c = &self.config;
        let mut p = c.persona.trim().to_owned();
        p.push_str("\n\nFacts:\n");
        for f in &c.facts {
            p.push_str("- ");
            p.push_str(f.trim());
            p.push('\n');
        }
        // Short and plain: a small model follows three rules, not ten (the guardrails check
        // the rest).
        p.push_str(&format!(
            "\nOnly talk about {}. Never say you booked or changed anything. Answer in one short sentence of at most {} words.",
            c.topics.trim(),
            c.max_reply_words
        ));
        p
    }

    /// The intent whose example best matches what the caller said: every content word of an
    /// example must appear; the example with the most words wins.
    pub fn match_intent(&self, said: &str) -> Option<&Intent> {
        let words = content_words(said);
        if words.is_empty() {
            return None;
        }
        let mut best: Option<(&Intent, usize)> = None;
        for intent in &self.intents {
            for example in &intent.examples {
                if example.iter().all(|w| words.contains(w))
                    && best.is_none_or(|(_, n)| example.len() > n)
                {
                    best = Some((intent, example.len()));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// The rule for a key press, if any.
    pub fn dtmf_rule(&self, digit: char) -> Option<(AgentAction, &str)> {
        self.config
            .dtmf
            .iter()
            .find(|r| r.digit.starts_with(digit))
            .map(|r| (r.action, r.reply.as_str()))
    }

    /// The fallback said when the model fails for a caller turn: the matched answer intent's
    /// template, else `one_moment`-style holding text is not enough, so the repeat prompt.
    pub fn answer_template<'a>(&'a self, intent: Option<&'a Intent>) -> Option<&'a str> {
        intent
            .filter(|i| i.action == AgentAction::Answer && !i.reply.trim().is_empty())
            .map(|i| i.reply.as_str())
    }
}

/// The sentences of a fact of more than one ("… 5 pm. On Saturdays …"); empty for a fact of
/// one sentence. Abbreviations with a full stop inside ("9 a.m.") do not split it.
pub fn fact_sentences(fact: &str) -> Vec<String> {
    const ABBREVIATIONS: &[&str] = &["dr", "mr", "mrs", "ms", "st", "no", "nr", "approx", "etc"];
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = fact.char_indices().collect();
    for (k, &(i, c)) in chars.iter().enumerate() {
        if !matches!(c, '.' | '?' | '!') {
            continue;
        }
        let next = chars.get(k + 1).map(|&(_, n)| n);
        let after = chars.get(k + 2).map(|&(_, n)| n);
        let ends = next.is_none_or(char::is_whitespace)
            && after.is_none_or(|a| a.is_uppercase() || a.is_ascii_digit());
        let word_before = fact[start..i]
            .rsplit(|ch: char| !ch.is_alphanumeric())
            .next()
            .unwrap_or("")
            .to_lowercase();
        if ends && !ABBREVIATIONS.contains(&word_before.as_str()) {
            out.push(fact[start..=i].trim().to_owned());
            start = i + c.len_utf8();
        }
    }
    let rest = fact[start..].trim();
    if !rest.is_empty() {
        out.push(rest.to_owned());
    }
    if out.len() < 2 {
        return Vec::new();
    }
    out
}

/// A crude stem for topic matching: "dogs" and "dog", "hours" and "hour" are the same topic.
fn stem(word: &str) -> String {
    let w = word.trim_end_matches("'s");
    match w.strip_suffix('s') {
        Some(base) if base.len() >= 3 && !base.ends_with('s') => base.to_owned(),
        _ => w.to_owned(),
    }
}

/// Lower-case words without punctuation and filler words.
fn content_words(text: &str) -> Vec<String> {
    normalize_words(text)
        .into_iter()
        .filter(|w| !FILLER_WORDS.contains(&w.as_str()))
        .collect()
}

/// What a guard did to a clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guarded {
    /// Say it (possibly shortened to the word limit; `last` when nothing more may follow).
    Say { text: String, last: bool },
    /// Dropped: it claimed an action the agent did not take.
    Dropped,
    /// Dropped: it states a number, day or time no fact gives (this word).
    Ungrounded(String),
    /// Dropped: none of these words is about the configured topics or the question.
    OffTopic(Vec<String>),
    /// The word limit was already reached.
    OverLimit,
}

/// Applies the guardrails to one clause of a reply: no claimed actions, at most `max_words`
/// words per reply (`said_words` already said this turn).
pub fn guard_clause(clause: &str, said_words: usize, max_words: usize) -> Guarded {
    let lower = clause.to_lowercase().replace('’', "'");
    if CLAIMED_ACTIONS.iter().any(|c| lower.contains(c)) {
        return Guarded::Dropped;
    }
    if said_words >= max_words {
        return Guarded::OverLimit;
    }
    let words: Vec<&str> = clause.split_whitespace().collect();
    let room = max_words - said_words;
    if words.len() <= room {
        return Guarded::Say {
            text: clause.to_owned(),
            last: words.len() == room,
        };
    }
    // A fragment of two or three words sounds broken: stop at the last whole clause instead.
    if room < 4 {
        return Guarded::OverLimit;
    }
    let mut text = words[..room].join(" ");
    text = text.trim_end_matches([',', ';', ':']).to_owned();
    if !text.ends_with(['.', '!', '?']) {
        text.push('.');
    }
    Guarded::Say { text, last: true }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AgentSpec {
        AgentSpec::new(&AgentConfig::default())
    }

    #[test]
    fn intents_match_on_content_words_in_any_phrasing() {
        let s = spec();
        for said in [
            "Can I talk to a person please?",
            "I'd like to speak to someone.",
            "Could I speak with a real person?",
            "Operator.",
        ] {
            assert_eq!(
                s.match_intent(said).map(|i| i.name.as_str()),
                Some("human"),
                "{said}"
            );
        }
        assert_eq!(
            s.match_intent("Okay, that's all, thanks.")
                .map(|i| i.name.as_str()),
            Some("goodbye")
        );
        assert_eq!(s.match_intent("What are your opening hours?"), None);
        assert_eq!(s.match_intent(""), None);
    }

    #[test]
    fn a_fact_of_several_sentences_answers_with_the_one_asked_about() {
        let config = AgentConfig {
            facts: vec![
                "We are open Monday to Friday, from 9 am to 5 pm. Parking is free behind the building."
                    .into(),
            ],
            ..AgentConfig::default()
        };
        let spec = AgentSpec::new(&config);
        assert_eq!(
            spec.relevant_fact("Is there any parking?"),
            Some("Parking is free behind the building.")
        );
        assert_eq!(
            AgentSpec::new(&AgentConfig::default()).relevant_fact("What time do you close today?"),
            Some("We are open Monday to Friday, from 9 am to 5 pm, and closed at weekends.")
        );
        assert_eq!(
            spec.relevant_fact("When are you open?"),
            Some("We are open Monday to Friday, from 9 am to 5 pm.")
        );
        assert!(fact_sentences("One sentence, with a comma.").is_empty());
        assert_eq!(
            fact_sentences("Ask for Dr. Patel at 9 a.m. Parking is free."),
            ["Ask for Dr. Patel at 9 a.m.", "Parking is free."]
        );
    }

    #[test]
    fn dtmf_rules_come_from_config() {
        let s = spec();
        assert_eq!(s.dtmf_rule('0').map(|r| r.0), Some(AgentAction::Transfer));
        assert_eq!(s.dtmf_rule('5'), None);
    }

    #[test]
    fn system_prompt_carries_facts_topics_and_limits() {
        let p = spec().system_prompt();
        assert!(p.contains("9 am to 5 pm"), "{p}");
        assert!(p.contains("12 River Street"), "{p}");
        assert!(p.contains("opening hours, address"), "{p}");
        assert!(p.contains("at most 40 words"), "{p}");
        assert!(p.contains("Never say you booked"), "{p}");
    }

    #[test]
    fn questions_find_their_fact_and_made_up_times_are_refused() {
        let s = spec();
        assert!(s
            .relevant_fact("Hello, what are your opening hours?")
            .is_some_and(|f| f.contains("Monday to Friday")));
        assert!(s
            .relevant_fact("Where is the clinic?")
            .is_some_and(|f| f.contains("River Street")));
        assert_eq!(s.relevant_fact("Do you like football?"), None);
        // Sharing only the organisation's name or a weak word is no match.
        assert_eq!(s.relevant_fact("Is there parking near the clinic?"), None);
        assert_eq!(
            s.relevant_fact("Can I book an appointment for next week?"),
            None
        );
        assert!(s
            .relevant_fact("Are you open in the morning?")
            .is_some_and(|f| f.contains("Monday")));
        assert_eq!(
            s.guard(
                "We are open on Saturday mornings.",
                "when are you open",
                0,
                40
            ),
            Guarded::Ungrounded("saturday".into())
        );
        assert_eq!(
            s.guard("We close at 12:00 PM.", "when do you close", 0, 40),
            Guarded::Ungrounded("1200".into())
        );
        assert!(matches!(
            s.guard(
                "We are open Monday to Friday, 9 am to 5 pm.",
                "when are you open",
                0,
                40
            ),
            Guarded::Say { .. }
        ));
    }

    #[test]
    fn replies_off_the_configured_topics_are_refused_but_answers_to_the_question_pass() {
        let s = spec();
        let q = "do you do vaccinations";
        assert_eq!(
            s.guard("The capital of France is Paris.", q, 0, 40),
            Guarded::OffTopic(vec!["capital".into(), "france".into(), "paris".into()])
        );
        // The caller's own words are on topic ("dog" in the question, "dogs" in the reply)...
        assert!(matches!(
            s.guard(
                "Dogs are welcome in the waiting room.",
                "can I bring my dog",
                0,
                40
            ),
            Guarded::Say { .. }
        ));
        // ...and so are the topics and facts, and short or merely polite clauses.
        for clause in [
            "We offer appointments for vaccinations.",
            "Sorry, I don't know that.",
            "I can't say.",
            "Please call us again later.",
        ] {
            assert!(
                matches!(s.guard(clause, q, 0, 40), Guarded::Say { .. }),
                "{clause}: {:?}",
                s.guard(clause, q, 0, 40)
            );
        }
    }

    #[test]
    fn guard_drops_claimed_actions_and_cuts_long_replies() {
        assert_eq!(
            guard_clause("I have booked you in for Monday.", 0, 40),
            Guarded::Dropped
        );
        assert_eq!(
            guard_clause("Your appointment is confirmed.", 0, 40),
            Guarded::Dropped
        );
        assert_eq!(
            guard_clause("We are open nine to five.", 0, 40),
            Guarded::Say {
                text: "We are open nine to five.".into(),
                last: false
            }
        );
        assert_eq!(
            guard_clause("We are open from nine, until five,", 36, 40),
            Guarded::Say {
                text: "We are open from.".into(),
                last: true
            }
        );
        assert_eq!(guard_clause("More.", 40, 40), Guarded::OverLimit);
    }
}
