//! Intents matched by meaning: what the caller said and each intent's examples as sentence
//! embeddings (`speech::SentenceEmbedding`), compared by cosine similarity. A recognizer that
//! misspells a keyword ("recepshionist", "call me bak") still lands near the examples, where the
//! word matcher (`AgentSpec::match_intent`) needs every word of an example; a caller who says it
//! in quite other words ("get me a member of staff") is matched far less often (with
//! all-MiniLM-L6-v2, about a quarter of such paraphrases: `tests/intent_meaning.rs`).
//!
//! Pure: it takes vectors, so the caller decides where and when the model runs. Wiring it:
//!
//! ```text
//! // Once per agent (an agent's 40 examples: ~0.1-0.2 s on one core):
//! let keywords = Keywords::from_examples(all examples);
//! let meanings = IntentMeanings::from_examples(MeaningRule::default(),
//!     intents.map(|i| (i.name, embedder.embed_batch(&i.examples)?)))?;
//! // Per caller turn (~5 ms an embedding):
//! let mut readings = vec![said];
//! readings.extend(keywords.respelled(said, |w| embedder.is_word(w)));
//! let matched = meanings.best_of(&embedder.embed_batch(&readings)?);
//! ```
//!
//! **The rule.** An intent's score is the highest cosine between the caller's vector and any of
//! its examples. The best intent matches when both hold:
//! - its score is at least [`MeaningRule::threshold`] (below it the caller is talking about
//!   something else: off-topic turns score 0.1–0.39 with all-MiniLM-L6-v2);
//! - it beats the best *other* intent by at least [`MeaningRule::margin`] (two intents about
//!   as close is a question the agent should not guess at: no match, the language model or a
//!   repeat prompt takes the turn).
//!
//! Equal scores are therefore never a match (with a positive margin), whatever the config
//! order.
//!
//! **Near-misses.** all-MiniLM-L6-v2 reads a misspelt keyword as other word pieces ("clinik"
//! is `cl ##ini ##k`): its cosine to "where is the clinic" falls from ~0.9 to ~0.3. So
//! [`Keywords::respelled`] offers a second reading of the caller's words with each near-miss of
//! an example's word put right (one or two letters off, or words run apart: "a point meant");
//! the caller embeds both readings and [`IntentMeanings::best_of`] takes each intent's best.

/// When a score is a match (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeaningRule {
    /// Lowest cosine similarity to an intent's closest example that counts as that intent.
    pub threshold: f32,
    /// How far the best intent must be ahead of the next one.
    pub margin: f32,
}

impl Default for MeaningRule {
    /// Measured on tests/intent_meaning.rs's clinic phrasings with all-MiniLM-L6-v2 (int8):
    /// off-topic turns scored at most 0.39, so 0.45 keeps them all out; the margin turns two
    /// near-ties into no match rather than a guess.
    fn default() -> Self {
        MeaningRule {
            threshold: 0.45,
            margin: 0.04,
        }
    }
}

/// The intent a caller's words mean.
#[derive(Debug, Clone, PartialEq)]
pub struct MeaningMatch {
    pub intent: String,
    /// Cosine similarity to the intent's closest example.
    pub score: f32,
    /// The next best intent and its score (None when there is only one intent).
    pub runner_up: Option<(String, f32)>,
}

/// Why examples could not be added.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MeaningError {
    #[error("intent {intent:?}: an example's embedding has {got} dimensions, the others {expected} (embed every example with the same model)")]
    Dimensions {
        intent: String,
        expected: usize,
        got: usize,
    },
    #[error("intent {intent:?}: an example's embedding is empty or all zeros")]
    Empty { intent: String },
}

/// Each intent's examples as unit vectors, in config order.
#[derive(Debug, Clone, PartialEq)]
pub struct IntentMeanings {
    rule: MeaningRule,
    intents: Vec<(String, Vec<Vec<f32>>)>,
    dimensions: Option<usize>,
}

impl IntentMeanings {
    pub fn new(rule: MeaningRule) -> Self {
        IntentMeanings {
            rule,
            intents: Vec::new(),
            dimensions: None,
        }
    }

    /// Built from `(intent, example embeddings)` pairs (an intent named twice gathers both
    /// lists).
    pub fn from_examples<I, S>(rule: MeaningRule, intents: I) -> Result<Self, MeaningError>
    where
        I: IntoIterator<Item = (S, Vec<Vec<f32>>)>,
        S: Into<String>,
    {
        let mut meanings = Self::new(rule);
        for (intent, examples) in intents {
            let intent = intent.into();
            for example in examples {
                meanings.add_example(&intent, example)?;
            }
        }
        Ok(meanings)
    }

    /// Adds one example's embedding to `intent` (normalised here: any length is fine).
    pub fn add_example(
        &mut self,
        intent: &str,
        mut embedding: Vec<f32>,
    ) -> Result<(), MeaningError> {
        let expected = *self.dimensions.get_or_insert(embedding.len());
        if embedding.len() != expected {
            return Err(MeaningError::Dimensions {
                intent: intent.to_owned(),
                expected,
                got: embedding.len(),
            });
        }
        if !normalise(&mut embedding) {
            if self.intents.is_empty() {
                self.dimensions = None;
            }
            return Err(MeaningError::Empty {
                intent: intent.to_owned(),
            });
        }
        match self.intents.iter_mut().find(|(name, _)| name == intent) {
            Some((_, examples)) => examples.push(embedding),
            None => self.intents.push((intent.to_owned(), vec![embedding])),
        }
        Ok(())
    }

    pub fn rule(&self) -> MeaningRule {
        self.rule
    }

    pub fn is_empty(&self) -> bool {
        self.intents.is_empty()
    }

    /// Every intent's score (cosine to its closest example), best first; equal scores keep
    /// config order. Empty when `caller` has the wrong dimensions or is all zeros.
    pub fn scores(&self, caller: &[f32]) -> Vec<(String, f32)> {
        let mut caller = caller.to_vec();
        if Some(caller.len()) != self.dimensions || !normalise(&mut caller) {
            return Vec::new();
        }
        let mut scores: Vec<(String, f32)> = self
            .intents
            .iter()
            .map(|(name, examples)| {
                let best = examples
                    .iter()
                    .map(|e| dot(e, &caller))
                    .fold(f32::NEG_INFINITY, f32::max);
                (name.clone(), best)
            })
            .collect();
        // Stable: equal scores stay in config order.
        scores.sort_by(|a, b| b.1.total_cmp(&a.1));
        scores
    }

    /// The intent `caller` (the caller's turn, embedded) means, if it clears the threshold and
    /// the margin over the next intent (the module docs' rule); None otherwise.
    pub fn best(&self, caller: &[f32]) -> Option<MeaningMatch> {
        self.best_of(std::slice::from_ref(&caller))
    }

    /// Like [`Self::best`] over several readings of one turn (what was heard and
    /// [`Keywords::respelled`]): each intent scores its best over the readings, then the same
    /// rule applies.
    pub fn best_of<V: AsRef<[f32]>>(&self, readings: &[V]) -> Option<MeaningMatch> {
        let mut best: Vec<(String, f32)> = Vec::new();
        for reading in readings {
            for (intent, score) in self.scores(reading.as_ref()) {
                match best.iter_mut().find(|(name, _)| *name == intent) {
                    Some((_, kept)) => *kept = kept.max(score),
                    None => best.push((intent, score)),
                }
            }
        }
        best.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut ranked = best.into_iter();
        let (intent, score) = ranked.next()?;
        let runner_up = ranked.next();
        let lead = score - runner_up.as_ref().map_or(f32::NEG_INFINITY, |r| r.1);
        (score >= self.rule.threshold && lead >= self.rule.margin).then_some(MeaningMatch {
            intent,
            score,
            runner_up,
        })
    }
}

/// The words of an intent's examples, to put right the caller's near-misses of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keywords {
    /// What a near-miss is put right to.
    words: Vec<String>,
    /// Every word of the examples: never "put right" ("all" is one letter from "call").
    example_words: Vec<String>,
}

/// Shortest example word a near-miss is put right to ("call", "open", "back"): shorter words
/// ("a", "to", "bye") are one letter from too many others.
const MIN_KEYWORD_CHARS: usize = 4;

/// Words too common to put anything right to ("whats" is one letter from "thats"), or to be
/// put right ("there" is one letter from "where").
const FUNCTION_WORDS: &[&str] = &[
    "about", "been", "could", "does", "from", "have", "here", "into", "just", "like", "make",
    "need", "should", "some", "than", "that", "thats", "them", "then", "there", "these", "they",
    "this", "want", "what", "whats", "when", "which", "will", "with", "would", "your", "youre",
];

/// Fewest letters of words run together to count as one ("is it" is not "visit").
const MIN_JOINED_CHARS: usize = 6;

/// Most caller words run together to make one example word ("a point meant").
const MAX_WORDS_JOINED: usize = 3;

impl Keywords {
    /// The words of `examples` (lower-case letters and digits; apostrophes dropped).
    pub fn from_examples<'a>(examples: impl IntoIterator<Item = &'a str>) -> Self {
        let mut example_words: Vec<String> = examples
            .into_iter()
            .flat_map(str::split_whitespace)
            .map(plain_word)
            .collect();
        example_words.sort();
        example_words.dedup();
        let words = example_words
            .iter()
            .filter(|w| {
                w.chars().count() >= MIN_KEYWORD_CHARS && !FUNCTION_WORDS.contains(&w.as_str())
            })
            .cloned()
            .collect();
        Keywords {
            words,
            example_words,
        }
    }

    /// `said` with the recognizer's near-misses of an example word replaced by that word: a
    /// word within [`allowed_edits`] of it (letters added, dropped, changed or swapped), or two
    /// or three words that run together are within them ("good by" → "goodbye"). None when
    /// nothing was put right. Words already an example's are left alone.
    ///
    /// `is_word` says whether a (lower-case) word is in the language (the embedding model's
    /// vocabulary): a real word is put right only when one letter from an example word of 5
    /// letters or more ("massage" → "message", "ours" → "hours"; not "sing" → "ring").
    pub fn respelled(&self, said: &str, is_word: impl Fn(&str) -> bool) -> Option<String> {
        let tokens: Vec<&str> = said.split_whitespace().collect();
        let is_keyword = |token: &str| self.words.contains(&plain_word(token));
        let is_example_word = |token: &str| self.example_words.contains(&plain_word(token));
        let mut out: Vec<String> = Vec::with_capacity(tokens.len());
        let mut changed = false;
        let mut i = 0;
        while i < tokens.len() {
            // Words run apart ("a point meant"), none of them a keyword already (else "I leave"
            // would be one edit from "leave").
            let joined = (2..=MAX_WORDS_JOINED.min(tokens.len() - i))
                .rev()
                .filter(|&n| !tokens[i..i + n].iter().any(|t| is_keyword(t)))
                .find_map(|n| {
                    let run: String = tokens[i..i + n].iter().map(|t| plain_word(t)).collect();
                    let long_enough = run.chars().count() >= MIN_JOINED_CHARS;
                    long_enough
                        .then(|| self.nearest(&run, false))
                        .flatten()
                        .map(|k| (n, k))
                });
            if joined.is_none() && is_example_word(tokens[i]) {
                out.push(tokens[i].to_owned());
                i += 1;
                continue;
            }
            let single = || {
                let word = plain_word(tokens[i]);
                if FUNCTION_WORDS.contains(&word.as_str()) {
                    return None;
                }
                self.nearest(&word, is_word(&word)).map(|k| (1, k))
            };
            match joined.or_else(single) {
                Some((n, keyword)) => {
                    // Keeps the punctuation after the last word ("bak?" → "back?").
                    let last = tokens[i + n - 1];
                    let trailing = last.trim_end_matches(|c: char| !c.is_alphanumeric());
                    out.push(format!("{keyword}{}", &last[trailing.len()..]));
                    changed = true;
                    i += n;
                }
                None => {
                    out.push(tokens[i].to_owned());
                    i += 1;
                }
            }
        }
        changed.then(|| out.join(" "))
    }

    /// The example word `word` is a near-miss of (fewest edits; the first in order on a tie).
    /// A real word (`known`) must be one letter from an example word of 5 letters or more.
    fn nearest(&self, word: &str, known: bool) -> Option<&str> {
        if word.chars().count() < 3 {
            return None;
        }
        let allowed = |k: &str| {
            if known {
                usize::from(k.chars().count() >= 5)
            } else {
                allowed_edits(k)
            }
        };
        self.words
            .iter()
            .map(|k| (edit_distance(word, k), k))
            .filter(|(d, k)| *d > 0 && *d <= allowed(k))
            .min_by_key(|(d, _)| *d)
            .map(|(_, k)| k.as_str())
    }
}

/// Edits a recognizer's spelling may be from an example word to count as it: one for words up
/// to 7 letters ("bak", "opun", "purson"), two for longer ones ("recepshionist", "apointmeant").
pub fn allowed_edits(keyword: &str) -> usize {
    if keyword.chars().count() >= 8 {
        2
    } else {
        1
    }
}

/// Lower-case letters and digits of a word ("That's," → "thats").
fn plain_word(word: &str) -> String {
    word.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbouring letters, each one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, row) in d.chunks_exact_mut(width).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[..width].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Scales `v` to unit length; false when it has none (empty, zeros, not finite).
fn normalise(v: &mut [f32]) -> bool {
    let norm = dot(v, v).sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return false;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit vector in the plane of axes 0 and 1 at `degrees` from axis 0 (cosine between two
    /// of them = cos of the angle between).
    fn at(degrees: f32) -> Vec<f32> {
        let r = degrees.to_radians();
        vec![r.cos(), r.sin(), 0.0]
    }

    fn rule() -> MeaningRule {
        MeaningRule {
            threshold: 0.5,
            margin: 0.05,
        }
    }

    fn meanings() -> IntentMeanings {
        IntentMeanings::from_examples(
            rule(),
            [
                ("hours", vec![at(0.0), at(10.0)]),
                ("address", vec![at(90.0)]),
                // Not normalised on purpose: examples are scaled to unit length.
                ("human", vec![vec![0.0, 0.0, 3.0]]),
            ],
        )
        .unwrap()
    }

    #[test]
    fn the_closest_example_decides_and_the_runner_up_is_reported() {
        let m = meanings().best(&at(12.0)).unwrap();
        assert_eq!(m.intent, "hours");
        assert!((m.score - 2f32.to_radians().cos()).abs() < 1e-5);
        let (runner, score) = m.runner_up.unwrap();
        assert_eq!(runner, "address");
        assert!((score - 78f32.to_radians().cos()).abs() < 1e-5);
        // The caller's vector need not be unit length either.
        let m = meanings().best(&[0.0, 0.0, 0.2]).unwrap();
        assert_eq!((m.intent.as_str(), m.score), ("human", 1.0));
    }

    #[test]
    fn below_the_threshold_is_no_match() {
        // Closest to hours' 0° example, at cosine 0.25: under 0.5.
        let off_topic = vec![0.25, -0.1, -0.95];
        assert!(meanings().scores(&off_topic)[0].1 < 0.5);
        assert_eq!(meanings().best(&off_topic), None);
        // Over it, far from the others: a match.
        let m = meanings().best(&[0.55, -0.4, 0.0]).unwrap();
        assert_eq!(m.intent, "hours");
    }

    #[test]
    fn two_intents_about_as_close_is_no_match_and_a_tie_never_is() {
        // Between hours' 10° example and address at 90°.
        // At 60°: 50° from hours, 30° from address (cos 0.643 vs 0.866): address.
        assert_eq!(meanings().best(&at(60.0)).unwrap().intent, "address");
        // At 53°: 43° vs 37° (0.731 vs 0.799), lead 0.068 ≥ 0.05: address.
        assert_eq!(meanings().best(&at(53.0)).unwrap().intent, "address");
        // At 52°: 42° vs 38° (0.743 vs 0.788), lead 0.045 < 0.05: none.
        assert_eq!(meanings().best(&at(52.0)), None);
        // At 50°: exactly between, equal scores: never a match, whatever the config order.
        let scores = meanings().scores(&at(50.0));
        assert!((scores[0].1 - scores[1].1).abs() < 1e-6, "{scores:?}");
        assert_eq!(meanings().best(&at(50.0)), None);
    }

    #[test]
    fn one_intent_needs_only_the_threshold() {
        let one = IntentMeanings::from_examples(rule(), [("human", vec![at(0.0)])]).unwrap();
        let m = one.best(&at(45.0)).unwrap();
        assert_eq!((m.intent.as_str(), m.runner_up), ("human", None));
        assert_eq!(one.best(&at(80.0)), None);
    }

    #[test]
    fn wrong_vectors_are_refused_or_match_nothing() {
        let mut m = meanings();
        assert!(matches!(
            m.add_example("hours", vec![1.0, 0.0]),
            Err(MeaningError::Dimensions {
                expected: 3,
                got: 2,
                ..
            })
        ));
        assert!(matches!(
            m.add_example("hours", vec![0.0; 3]),
            Err(MeaningError::Empty { .. })
        ));
        assert_eq!(m.best(&[1.0, 0.0]), None);
        assert_eq!(m.best(&[0.0, 0.0, 0.0]), None);
        assert_eq!(m.best(&[f32::NAN, 0.0, 0.0]), None);
        assert_eq!(IntentMeanings::new(rule()).best(&at(0.0)), None);
        assert!(IntentMeanings::new(rule()).is_empty());
    }

    #[test]
    fn an_intent_named_twice_gathers_its_examples() {
        let m = IntentMeanings::from_examples(
            rule(),
            [
                ("hours", vec![at(0.0)]),
                ("address", vec![at(90.0)]),
                ("hours", vec![at(30.0)]),
            ],
        )
        .unwrap();
        assert_eq!(m.scores(&at(30.0)).len(), 2);
        assert_eq!(m.best(&at(30.0)).unwrap().score, 1.0);
    }

    #[test]
    fn the_best_reading_of_a_turn_counts_for_each_intent() {
        // Heard: between hours and address (none); respelled: address.
        let m = meanings().best_of(&[at(50.0), at(88.0)]).unwrap();
        assert_eq!(m.intent, "address");
        assert!((m.score - 2f32.to_radians().cos()).abs() < 1e-5);
        assert_eq!(meanings().best_of::<Vec<f32>>(&[]), None);
    }

    fn keywords() -> Keywords {
        Keywords::from_examples([
            "talk to a person",
            "receptionist",
            "operator",
            "goodbye",
            "that's all",
            "call me back",
            "leave a message",
            "book an appointment",
            "opening hours",
            "where is the clinic",
            "ring me back",
            "reschedule my visit",
        ])
    }

    #[test]
    fn near_misses_of_example_words_are_put_right() {
        let k = keywords();
        let known = |w: &str| ["massage", "ours", "by", "point", "meant"].contains(&w);
        for (heard, meant) in [
            (
                "Can I speak to the recepshionist?",
                "Can I speak to the receptionist?",
            ),
            ("Can you call me bak?", "Can you call me back?"),
            ("Opperator please.", "operator please."),
            (
                "I want to talk to a real purson.",
                "I want to talk to a real person.",
            ),
            ("Can I leave a massage?", "Can I leave a message?"),
            (
                "What are your opening ours?",
                "What are your opening hours?",
            ),
            ("Good by.", "goodbye."),
            ("Can I make an a point meant?", "Can I make an appointment?"),
            ("Where is the clinik?", "Where is the clinic?"),
        ] {
            assert_eq!(k.respelled(heard, known).as_deref(), Some(meant), "{heard}");
        }
    }

    #[test]
    fn words_far_from_every_example_are_left_alone() {
        let k = keywords();
        for heard in [
            "Tell me a joke.",
            "What's the weather like tomorrow?",
            "Can I talk to a person?",
            "That's all, thanks.",
            "Is it a bus?",
            "Sing me a song.",
            "Is it raining?",
            "Is there anybody there?",
            "",
        ] {
            assert_eq!(k.respelled(heard, |_| true), None, "{heard}");
        }
    }

    #[test]
    fn edit_distance_counts_swaps_as_one() {
        assert_eq!(edit_distance("docter", "doctor"), 1);
        assert_eq!(edit_distance("recepshionist", "receptionist"), 2);
        assert_eq!(edit_distance("teh", "the"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
