//! The agent's engines: the speech engines loaded for one agent configuration, with that
//! configuration (the system prompt they were primed with, the prompts they rendered). A model
//! swap replaces both together; calls keep the pair they started with.

use std::sync::Arc;

use super::meaning::{IntentMeanings, Keywords, MeaningMatch, MeaningRule};
use super::{AgentSpec, Prompt};
use crate::config::Config;
use crate::speech::embed::{EmbedConfig, SentenceEmbedder};
use crate::speech::service::{CallSpeech, SpeechPlan, SpeechService, SpeechUnavailable};
use crate::speech::SentenceEmbedding;

#[derive(Debug)]
pub struct AgentEngines {
    pub spec: AgentSpec,
    pub speech: Arc<SpeechService>,
    /// Intents by meaning; None when the embedding model cannot be loaded (words only).
    pub meaning: Option<Arc<MeaningEngine>>,
}

impl AgentEngines {
    /// Loads the engines for `config.agent` (blocking: seconds).
    pub fn load(config: &Config) -> Result<Self, SpeechUnavailable> {
        let spec = AgentSpec::new(&config.agent);
        let speech = SpeechService::load(config, &spec.speech_plan())?;
        let meaning = match MeaningEngine::load(config, &spec) {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                tracing::warn!("intents are matched by their words only: {e}");
                None
            }
        };
        Ok(Self {
            spec,
            speech: Arc::new(speech),
            meaning,
        })
    }

    /// Admits a new call, or says why not (SIP 503).
    pub fn open_call(&self) -> Result<CallSpeech, String> {
        self.speech.open_call()
    }
}

impl std::ops::Deref for AgentEngines {
    type Target = SpeechService;

    fn deref(&self) -> &SpeechService {
        &self.speech
    }
}

/// The agent's intents as sentence embeddings, and the model that embeds a caller's words
/// (`agent::meaning`): a recognizer's misspelt keyword or another phrasing still finds its
/// intent. Runs on the recognizer's thread after each transcript (about 5 ms).
#[derive(Debug)]
pub struct MeaningEngine {
    embedder: SentenceEmbedder,
    meanings: IntentMeanings,
    keywords: Keywords,
}

impl MeaningEngine {
    pub fn load(config: &Config, spec: &AgentSpec) -> Result<Self, String> {
        let mut cfg = EmbedConfig::in_models_dir(&config.models.dir);
        if !config.speech.onnxruntime.as_os_str().is_empty() {
            cfg.onnxruntime = config.speech.onnxruntime.clone();
        }
        let embedder = SentenceEmbedder::load(cfg).map_err(|e| e.to_string())?;
        let mut intents = Vec::new();
        for intent in &config.agent.intents {
            let examples: Vec<&str> = intent.examples.iter().map(String::as_str).collect();
            let vectors = embedder.embed_batch(&examples).map_err(|e| e.to_string())?;
            intents.push((intent.name.clone(), vectors));
        }
        let meanings = IntentMeanings::from_examples(MeaningRule::default(), intents)
            .map_err(|e| e.to_string())?;
        let keywords = Keywords::from_examples(
            spec.config
                .intents
                .iter()
                .flat_map(|i| i.examples.iter().map(String::as_str)),
        );
        Ok(Self {
            embedder,
            meanings,
            keywords,
        })
    }

    /// The intent `said` means, if one is clearly closest (see `agent::meaning`).
    pub fn intent_of(&self, said: &str) -> Option<MeaningMatch> {
        if said.trim().is_empty() || self.meanings.is_empty() {
            return None;
        }
        let mut readings = vec![said.to_owned()];
        readings.extend(self.keywords.respelled(said, |w| self.embedder.is_word(w)));
        let refs: Vec<&str> = readings.iter().map(String::as_str).collect();
        match self.embedder.embed_batch(&refs) {
            Ok(vectors) => self.meanings.best_of(&vectors),
            Err(e) => {
                tracing::warn!("intent by meaning skipped: {e}");
                None
            }
        }
    }
}

impl AgentSpec {
    /// What the speech engines must prepare for this agent.
    pub fn speech_plan(&self) -> SpeechPlan {
        let c = &self.config;
        SpeechPlan {
            system_prompt: self.system_prompt(),
            prompts: Prompt::ALL.iter().map(|p| p.text(c).to_owned()).collect(),
            // Said as they are, so rendered once and cached: facts (and their sentences, said
            // alone to a narrow question), replies, and what collect intents ask.
            phrases: c
                .facts
                .iter()
                .cloned()
                .chain(c.facts.iter().flat_map(|f| super::fact_sentences(f)))
                .chain(c.intents.iter().map(|i| i.reply.clone()))
                .chain(
                    c.intents
                        .iter()
                        .flat_map(|i| i.slots.iter().map(|s| s.ask.clone())),
                )
                .chain(c.dtmf.iter().map(|d| d.reply.clone()))
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
    }
}
