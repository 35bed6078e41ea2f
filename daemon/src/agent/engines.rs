//! The agent's engines: the speech engines loaded for one agent configuration, with that
//! configuration (the system prompt they were primed with, the prompts they rendered). A model
//! swap replaces both together; calls keep the pair they started with.

use std::sync::Arc;

use super::{AgentSpec, Prompt};
use crate::config::Config;
use crate::speech::service::{CallSpeech, SpeechPlan, SpeechService, SpeechUnavailable};

#[derive(Debug)]
pub struct AgentEngines {
    pub spec: AgentSpec,
    pub speech: Arc<SpeechService>,
}

impl AgentEngines {
    /// Loads the engines for `config.agent` (blocking: seconds).
    pub fn load(config: &Config) -> Result<Self, SpeechUnavailable> {
        let spec = AgentSpec::new(&config.agent);
        let speech = SpeechService::load(config, &spec.speech_plan())?;
        Ok(Self {
            spec,
            speech: Arc::new(speech),
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

impl AgentSpec {
    /// What the speech engines must prepare for this agent.
    pub fn speech_plan(&self) -> SpeechPlan {
        let c = &self.config;
        SpeechPlan {
            system_prompt: self.system_prompt(),
            prompts: Prompt::ALL.iter().map(|p| p.text(c).to_owned()).collect(),
            phrases: c
                .facts
                .iter()
                .chain(c.intents.iter().map(|i| &i.reply))
                .chain(c.dtmf.iter().map(|d| &d.reply))
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
        }
    }
}
