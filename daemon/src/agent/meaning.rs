//! Intents matched by meaning: what the caller said and each intent's examples as sentence
//! embeddings (`speech::SentenceEmbedding`), compared by cosine similarity. A recognizer that
//! misspells a keyword ("recepshionist", "call me bak") or a caller who says it in other words
//! ("I'd rather deal with an actual human") still lands near the examples, where the word
//! matcher (`AgentSpec::match_intent`) needs every word of an example.
//!
//! Pure: it takes vectors, so the caller decides where and when the model runs.
//!
//! **The rule.** An intent's score is the highest cosine between the caller's vector and any of
//! its examples. The best intent matches when both hold:
//! - its score is at least [`MeaningRule::threshold`] (below it the caller is talking about
//!   something else: off-topic turns score 0.1–0.4 with all-MiniLM-L6-v2);
//! - it beats the best *other* intent by at least [`MeaningRule::margin`] (two intents about
//!   as close is a question the agent should not guess at: no match, the language model or a
//!   repeat prompt takes the turn).
//!
//! Equal scores are therefore never a match (with a positive margin), whatever the config
//! order.

/// When a score is a match (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeaningRule {
    /// Lowest cosine similarity to an intent's closest example that counts as that intent.
    pub threshold: f32,
    /// How far the best intent must be ahead of the next one.
    pub margin: f32,
}

impl Default for MeaningRule {
    /// Measured on tests/intent_meaning.rs's clinic phrasings with all-MiniLM-L6-v2 (int8).
    fn default() -> Self {
        MeaningRule {
            threshold: 0.5,
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
        let mut ranked = self.scores(caller).into_iter();
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
}
