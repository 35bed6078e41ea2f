//! Intents matched by meaning (all-MiniLM-L6-v2 embeddings, `agent::meaning`) against the word
//! matcher (`AgentSpec::match_intent`) on the same labelled caller phrasings for a clinic's
//! receptionist: plain wordings, recognizer errors (misspelt or merged keywords, as whisper
//! tiny writes them) and paraphrases sharing no word with any example, plus off-topic turns
//! that must match nothing. Prints accuracy (per kind of phrasing), the confusion per intent,
//! the false matches on off-topic turns, a sweep of thresholds and margins, and asserts the
//! floors measured (the real model and ONNX Runtime from ../shared/models, never downloaded).

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use edgevoice::agent::meaning::{IntentMeanings, Keywords, MeaningRule};
use edgevoice::agent::AgentSpec;
use edgevoice::config::{AgentAction, AgentConfig, IntentConfig};
use edgevoice::speech::{EmbedConfig, SentenceEmbedder, SentenceEmbedding};

/// The intents as a site would configure them: 3–6 short examples each.
const INTENTS: &[(&str, &[&str])] = &[
    (
        "human",
        &[
            "talk to a person",
            "speak to someone",
            "speak to a human",
            "real person",
            "operator",
            "receptionist",
        ],
    ),
    (
        "goodbye",
        &[
            "that's all",
            "goodbye",
            "bye",
            "nothing else",
            "thanks, that's everything",
        ],
    ),
    (
        "hours",
        &[
            "opening hours",
            "when are you open",
            "what time do you close",
            "are you open today",
        ],
    ),
    (
        "address",
        &[
            "where are you",
            "what is your address",
            "how do I get to the clinic",
            "where is the clinic",
        ],
    ),
    (
        "callback",
        &[
            "call me back",
            "callback",
            "can someone ring me back",
            "return my call",
        ],
    ),
    (
        "message",
        &[
            "leave a message",
            "take a message",
            "pass on a message",
            "leave a note for the doctor",
        ],
    ),
    (
        "appointment",
        &[
            "book an appointment",
            "change my appointment",
            "cancel my appointment",
            "see a doctor",
            "reschedule my visit",
        ],
    ),
];

/// How a phrasing relates to the examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Shares the examples' words.
    Plain,
    /// A recognizer's error in a keyword: misspelt, merged, a near-homophone.
    Asr,
    /// The same request in other words (no word in common with any example of the intent).
    Paraphrase,
    /// Off-topic: must match no intent.
    OffTopic,
}

use Kind::{Asr, OffTopic, Paraphrase, Plain};

/// No intent.
const NONE: &str = "none";

/// (expected intent, kind, what the recognizer wrote).
const PHRASINGS: &[(&str, Kind, &str)] = &[
    // --- human
    ("human", Plain, "Can I talk to a person please?"),
    ("human", Plain, "I'd like to speak to someone."),
    (
        "human",
        Plain,
        "Could you put me through to the receptionist?",
    ),
    ("human", Asr, "Can I speak to the recepshionist?"),
    ("human", Asr, "I want to talk to a real purson."),
    ("human", Asr, "Opperator please."),
    ("human", Asr, "Can I speak to a humane?"),
    (
        "human",
        Paraphrase,
        "I'd rather deal with an actual human being.",
    ),
    ("human", Paraphrase, "Get me a member of staff."),
    (
        "human",
        Paraphrase,
        "Stop, you're a robot, I need a live agent.",
    ),
    (
        "human",
        Paraphrase,
        "Is there anybody there I could chat with?",
    ),
    ("human", Paraphrase, "Transfer me to the front desk."),
    // --- goodbye
    ("goodbye", Plain, "Okay, that's all, thanks."),
    ("goodbye", Plain, "No, nothing else, goodbye."),
    ("goodbye", Plain, "Bye now."),
    ("goodbye", Asr, "Thats al thank you."),
    ("goodbye", Asr, "Good by."),
    ("goodbye", Asr, "Nothing els thanks."),
    (
        "goodbye",
        Paraphrase,
        "Great, you've been very helpful, have a nice day.",
    ),
    ("goodbye", Paraphrase, "I think I'm done here, cheers."),
    ("goodbye", Paraphrase, "No more questions, see you later."),
    ("goodbye", Paraphrase, "Perfect, I'll hang up now."),
    // --- hours
    ("hours", Plain, "What are your opening hours?"),
    ("hours", Plain, "When are you open on Monday?"),
    ("hours", Plain, "What time do you close today?"),
    ("hours", Asr, "What are your opening ours?"),
    ("hours", Asr, "When are you opun?"),
    ("hours", Asr, "What are your openinghours?"),
    ("hours", Asr, "What time do you clothes?"),
    (
        "hours",
        Paraphrase,
        "Until when can I come in this afternoon?",
    ),
    ("hours", Paraphrase, "Are you working on Saturdays?"),
    (
        "hours",
        Paraphrase,
        "How late does the practice stay staffed?",
    ),
    ("hours", Paraphrase, "What's your schedule during the week?"),
    // --- address
    ("address", Plain, "Where are you located?"),
    ("address", Plain, "What is your address?"),
    (
        "address",
        Plain,
        "How do I get to the clinic from the station?",
    ),
    ("address", Asr, "What is your adress?"),
    ("address", Asr, "Were are you?"),
    ("address", Asr, "Where is the clinik?"),
    ("address", Paraphrase, "Which street is the surgery on?"),
    ("address", Paraphrase, "Can you give me directions?"),
    ("address", Paraphrase, "What's the postcode for my sat nav?"),
    (
        "address",
        Paraphrase,
        "I'm lost, which building do I go to?",
    ),
    // --- callback
    ("callback", Plain, "Can you call me back later?"),
    (
        "callback",
        Plain,
        "Could someone ring me back this afternoon?",
    ),
    ("callback", Plain, "Please return my call."),
    ("callback", Asr, "Can you call me bak?"),
    ("callback", Asr, "I'd like a call back."),
    ("callback", Asr, "Could you ring me bag tomorrow?"),
    ("callback", Asr, "Please cal me back."),
    ("callback", Paraphrase, "I'm busy now, phone me later on."),
    (
        "callback",
        Paraphrase,
        "Get the doctor to give me a ring when she's free.",
    ),
    (
        "callback",
        Paraphrase,
        "Have somebody contact me on my mobile.",
    ),
    (
        "callback",
        Paraphrase,
        "I'd prefer that you reach me by telephone tomorrow.",
    ),
    // --- message
    ("message", Plain, "Can I leave a message for Doctor Patel?"),
    ("message", Plain, "Could you take a message please?"),
    ("message", Plain, "Please pass on a message to the nurse."),
    ("message", Asr, "Can I leave a massage?"),
    ("message", Asr, "I want to leave a messege for the doctor."),
    ("message", Asr, "Take a mesage please."),
    (
        "message",
        Paraphrase,
        "Tell Doctor Jones that her patient rang.",
    ),
    (
        "message",
        Paraphrase,
        "Let the nurse know my results came through.",
    ),
    (
        "message",
        Paraphrase,
        "Could you write something down for the GP?",
    ),
    (
        "message",
        Paraphrase,
        "I'd like to record a voicemail for my doctor.",
    ),
    // --- appointment
    ("appointment", Plain, "I'd like to book an appointment."),
    (
        "appointment",
        Plain,
        "I need to change my appointment to Friday.",
    ),
    ("appointment", Plain, "Can I cancel my appointment?"),
    ("appointment", Plain, "I need to see a doctor this week."),
    ("appointment", Asr, "I want to book an apointment."),
    ("appointment", Asr, "Can I make an a point meant?"),
    ("appointment", Asr, "I need to re schedule my visit."),
    ("appointment", Asr, "Can I see a docter tomorrow?"),
    (
        "appointment",
        Paraphrase,
        "Is there a free slot with the GP on Thursday?",
    ),
    (
        "appointment",
        Paraphrase,
        "I'd like to get a check-up arranged.",
    ),
    (
        "appointment",
        Paraphrase,
        "Move my booking to next week please.",
    ),
    ("appointment", Paraphrase, "Can I come in for my flu jab?"),
    // --- off-topic: nothing matches
    (
        NONE,
        OffTopic,
        "What's the weather going to be like tomorrow?",
    ),
    (NONE, OffTopic, "Is it going to rain this weekend?"),
    (NONE, OffTopic, "Tell me a joke."),
    (NONE, OffTopic, "Who won the football last night?"),
    (NONE, OffTopic, "What is the capital of France?"),
    (NONE, OffTopic, "How tall is Mount Everest?"),
    (NONE, OffTopic, "What's two plus two?"),
    (
        NONE,
        OffTopic,
        "Is this the pizza place? I want a large pepperoni.",
    ),
    (NONE, OffTopic, "I'd like to order a taxi to the airport."),
    (NONE, OffTopic, "How much is a flight to Spain?"),
    (NONE, OffTopic, "Do you sell car insurance?"),
    (
        NONE,
        OffTopic,
        "My internet is down, is this the phone company?",
    ),
    (NONE, OffTopic, "I'm calling about my electricity bill."),
    (NONE, OffTopic, "Can you recommend a good restaurant?"),
    (NONE, OffTopic, "Play some music."),
    (NONE, OffTopic, "What's in the news today?"),
    (NONE, OffTopic, "Sing me a song."),
    (NONE, OffTopic, "Can you help me with my homework?"),
    (NONE, OffTopic, "Is this the bank? I need my balance."),
    (NONE, OffTopic, "What year did the Second World War end?"),
];

/// The agent config holding `INTENTS`, for the word matcher.
fn word_matcher() -> AgentSpec {
    let config = AgentConfig {
        intents: INTENTS
            .iter()
            .map(|(name, examples)| IntentConfig {
                name: (*name).to_owned(),
                examples: examples.iter().map(|e| (*e).to_owned()).collect(),
                action: AgentAction::Reply,
                reply: "ok".to_owned(),
                ..IntentConfig::default()
            })
            .collect(),
        ..AgentConfig::default()
    };
    AgentSpec::new(&config)
}

/// Per-phrasing outcome of one matcher.
struct Outcomes {
    got: Vec<String>,
}

impl Outcomes {
    fn correct(&self, kind: Option<Kind>) -> (usize, usize) {
        let picked = PHRASINGS
            .iter()
            .zip(&self.got)
            .filter(|((_, k, _), _)| kind.is_none_or(|want| *k == want));
        let (mut right, mut total) = (0, 0);
        for ((expected, _, _), got) in picked {
            total += 1;
            right += usize::from(expected == got);
        }
        (right, total)
    }

    /// Off-topic turns that matched an intent.
    fn false_matches(&self) -> Vec<(&'static str, &str)> {
        PHRASINGS
            .iter()
            .zip(&self.got)
            .filter(|((expected, _, _), got)| *expected == NONE && got.as_str() != NONE)
            .map(|((_, _, said), got)| (*said, got.as_str()))
            .collect()
    }

    /// Turns for an intent that matched another intent (worse than none: the wrong action).
    fn wrong_intent(&self) -> usize {
        PHRASINGS
            .iter()
            .zip(&self.got)
            .filter(|((e, _, _), g)| *e != NONE && g.as_str() != NONE && e != g)
            .count()
    }
}

fn percent((right, total): (usize, usize)) -> String {
    format!(
        "{right}/{total} ({:.0} %)",
        100.0 * right as f64 / total.max(1) as f64
    )
}

/// Each turn's readings: what was heard, and its respelling when near-misses were put right.
fn meaning_outcomes(meanings: &IntentMeanings, readings: &[Vec<Vec<f32>>]) -> Outcomes {
    Outcomes {
        got: readings
            .iter()
            .map(|r| meanings.best_of(r).map_or(NONE.to_owned(), |m| m.intent))
            .collect(),
    }
}

fn print_confusion(title: &str, outcomes: &Outcomes) {
    let labels: Vec<&str> = INTENTS.iter().map(|(n, _)| *n).chain([NONE]).collect();
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for ((expected, _, _), got) in PHRASINGS.iter().zip(&outcomes.got) {
        let got = labels
            .iter()
            .find(|l| **l == got.as_str())
            .copied()
            .unwrap_or(NONE);
        *counts.entry((expected, got)).or_default() += 1;
    }
    eprintln!("\n{title}: rows = expected, columns = matched");
    let header: Vec<String> = labels.iter().map(|l| format!("{:>6.6}", l)).collect();
    eprintln!("{:>12} {}", "", header.join(" "));
    for expected in &labels {
        let row: Vec<String> = labels
            .iter()
            .map(|got| format!("{:>6}", counts.get(&(expected, got)).copied().unwrap_or(0)))
            .collect();
        eprintln!("{expected:>12} {}", row.join(" "));
    }
}

/// Each intent's best score over the readings, best first.
fn rank_over(meanings: &IntentMeanings, readings: &[Vec<f32>]) -> Vec<(String, f32)> {
    let mut best: Vec<(String, f32)> = Vec::new();
    for r in readings {
        for (name, score) in meanings.scores(r) {
            match best.iter_mut().find(|(n, _)| *n == name) {
                Some((_, kept)) => *kept = kept.max(score),
                None => best.push((name, score)),
            }
        }
    }
    best.sort_by(|a, b| b.1.total_cmp(&a.1));
    best
}

fn report(title: &str, outcomes: &Outcomes) {
    eprintln!(
        "{title:>8}: all {}  plain {}  recognizer errors {}  paraphrases {}  off-topic {}  \
         wrong intent {}",
        percent(outcomes.correct(None)),
        percent(outcomes.correct(Some(Plain))),
        percent(outcomes.correct(Some(Asr))),
        percent(outcomes.correct(Some(Paraphrase))),
        percent(outcomes.correct(Some(OffTopic))),
        outcomes.wrong_intent(),
    );
}

#[test]
fn intents_by_meaning_beat_words_on_recognizer_errors_and_paraphrases() {
    assert!(PHRASINGS.len() >= 80, "{} phrasings", PHRASINGS.len());
    let models = common::shared_dir().join("models");
    let mut config = EmbedConfig::in_models_dir(&models);
    config.threads = 2;
    let started = Instant::now();
    let embedder = SentenceEmbedder::load(config).expect("load the sentence embedding model");
    let loaded = started.elapsed();

    let started = Instant::now();
    let mut examples = Vec::new();
    for (name, texts) in INTENTS {
        examples.push((*name, embedder.embed_batch(texts).expect("embed examples")));
    }
    let examples_took = started.elapsed();
    let rule = MeaningRule::default();
    let meanings = IntentMeanings::from_examples(rule, examples).expect("intent meanings");

    let keywords = Keywords::from_examples(INTENTS.iter().flat_map(|(_, e)| e.iter().copied()));
    let respelled: Vec<Option<String>> = PHRASINGS
        .iter()
        .map(|(_, _, said)| keywords.respelled(said, |w| embedder.is_word(w)))
        .collect();
    let started = Instant::now();
    let heard: Vec<Vec<f32>> = PHRASINGS
        .iter()
        .map(|(_, _, said)| embedder.embed(said).expect("embed caller"))
        .collect();
    let heard_took = started.elapsed();
    let readings: Vec<Vec<Vec<f32>>> = heard
        .iter()
        .zip(&respelled)
        .map(|(vector, respelling)| {
            let mut r = vec![vector.clone()];
            if let Some(text) = respelling {
                r.push(embedder.embed(text).expect("embed respelling"));
            }
            r
        })
        .collect();
    let heard_only: Vec<Vec<Vec<f32>>> = heard.iter().map(|v| vec![v.clone()]).collect();
    eprintln!(
        "model loaded in {loaded:?}; {} examples embedded in {examples_took:?}; {} phrasings \
         embedded in {heard_took:?}; {} respelled",
        INTENTS.iter().map(|(_, e)| e.len()).sum::<usize>(),
        PHRASINGS.len(),
        respelled.iter().flatten().count()
    );

    // Every phrasing's scores (over both readings), for reading the misses.
    eprintln!("\nexpected     matched      best (score)            runner-up            phrasing");
    for (((expected, _, said), r), respelling) in PHRASINGS.iter().zip(&readings).zip(&respelled) {
        let m = meanings.best_of(r);
        let matched = m.as_ref().map_or(NONE, |m| m.intent.as_str());
        let ranked = rank_over(&meanings, r);
        let mark = if matched == *expected { " " } else { "✗" };
        let respelling = respelling
            .as_deref()
            .map_or(String::new(), |t| format!("  → {t}"));
        eprintln!(
            "{mark}{expected:<11} {matched:<12} {:<12} {:.3}   {:<12} {:.3}   {said}{respelling}",
            ranked[0].0, ranked[0].1, ranked[1].0, ranked[1].1
        );
    }

    let spec = word_matcher();
    let words = Outcomes {
        got: PHRASINGS
            .iter()
            .map(|(_, _, said)| {
                spec.match_intent(said)
                    .map_or(NONE.to_owned(), |i| i.name.clone())
            })
            .collect(),
    };
    let meaning_heard = meaning_outcomes(&meanings, &heard_only);
    let meaning = meaning_outcomes(&meanings, &readings);

    eprintln!(
        "\nthreshold / margin sweep (accuracy on all, false matches on off-topic, wrong intent):"
    );
    for threshold in [0.35, 0.4, 0.45, 0.5, 0.55, 0.6] {
        let row: Vec<String> = [0.0, 0.02, 0.04, 0.06, 0.08]
            .iter()
            .map(|&margin| {
                let swept = IntentMeanings::from_examples(
                    MeaningRule { threshold, margin },
                    INTENTS.iter().map(|(name, texts)| {
                        (*name, embedder.embed_batch(texts).expect("embed examples"))
                    }),
                )
                .expect("intent meanings");
                let o = meaning_outcomes(&swept, &readings);
                let (right, total) = o.correct(None);
                format!(
                    "m {margin:.2}: {:>3.0} % {} fm {} wi",
                    100.0 * right as f64 / total as f64,
                    o.false_matches().len(),
                    o.wrong_intent()
                )
            })
            .collect();
        eprintln!("  t {threshold:.2}  {}", row.join(" | "));
    }

    eprintln!(
        "\nchosen rule: threshold {:.2}, margin {:.2}",
        rule.threshold, rule.margin
    );
    report("words", &words);
    report("heard", &meaning_heard);
    report("meaning", &meaning);
    eprintln!("  (heard: embeddings of what was heard only; meaning: and of its respelling)");
    print_confusion("words", &words);
    print_confusion("meaning", &meaning);
    eprintln!(
        "\noff-topic turns matched by words: {:?}",
        words.false_matches()
    );
    eprintln!(
        "off-topic turns matched by meaning: {:?}",
        meaning.false_matches()
    );

    // Floors, a few points under what was measured (December 2026, threshold 0.45, margin
    // 0.04: all 73/96, recognizer errors 23/25, paraphrases 8/29, off-topic 0 matched, 2 wrong
    // intents; words 43/96). The rule was chosen on this same set: the numbers are optimistic
    // for other sites' phrasings, which is why the floors only guard against regressions (the
    // tokenizer, the pooling, the respelling, the rule).
    let (right, total) = meaning.correct(None);
    let (word_right, _) = words.correct(None);
    assert!(
        right as f64 >= 0.72 * total as f64,
        "meaning accuracy {}",
        percent((right, total))
    );
    assert!(
        right >= word_right + 25,
        "meaning {right} vs words {word_right}: the embeddings should fix recognizer errors"
    );
    let (asr_right, asr_total) = meaning.correct(Some(Asr));
    assert!(
        asr_right as f64 >= 0.88 * asr_total as f64,
        "recognizer errors: {}",
        percent((asr_right, asr_total))
    );
    assert!(
        meaning.false_matches().len() <= 1,
        "off-topic matched: {:?}",
        meaning.false_matches()
    );
    assert!(
        meaning.wrong_intent() <= 3,
        "wrong intents: {}",
        meaning.wrong_intent()
    );
}
