//! The voice agent's shell inside a call: caller audio → 16 kHz → the turn engine
//! ([`crate::agent::turns`]), whose jobs go to the speech engines' pools and whose results come
//! back on one bounded channel that the call's select loop polls with everything else; its
//! audio, holds and flushes go to the media session, its turns into the call record.

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::record::CallRecord;
use crate::agent::engines::AgentEngines;
use crate::agent::turns::{
    clean_transcript, EngineResult, Job, JobId, TurnConfig, TurnEngine, TurnOutput,
};
use crate::agent::{slots, Conversation};
use crate::config::Config;
use crate::speech::service::{CallSpeech, JobRefused, LlmEvent};
use crate::speech::{AsrError, SileroVad, TtsError};
use crate::telephony::media::{MediaSession, Resampler};

pub use crate::agent::turns::Directive;

/// Results in flight to one call at most: a reply's tokens, a few clauses' audio, a VAD step.
/// A full channel makes the engine thread wait for this call (never drops a result).
const RESULTS_DEPTH: usize = 256;

/// Work finished for the call, back on its task.
pub enum AgentEvent {
    Engine(EngineResult),
    /// The VAD comes back with its result: it keeps state between chunks.
    Vad {
        vad: SileroVad,
        result: Result<Vec<f32>, AsrError>,
    },
}

pub struct AgentRun {
    engine: TurnEngine,
    engines: Arc<AgentEngines>,
    speech: CallSpeech,
    results_tx: mpsc::Sender<AgentEvent>,
    results: mpsc::Receiver<AgentEvent>,
    /// Results known at once (cached audio, a refused job): handed back in the same step.
    immediate: VecDeque<EngineResult>,
    /// Generations that can still be stopped.
    cancels: HashMap<JobId, Arc<AtomicBool>>,
    to_asr: Option<Resampler>,
    scratch: Vec<i16>,
    samples: Vec<f32>,
    /// Turns recorded since the call last saved its record.
    pub dirty: bool,
}

impl AgentRun {
    /// `engines` are the ones `speech` was taken from, with the agent they were loaded for
    /// (their system prompt and prompts).
    pub fn new(config: &Config, engines: Arc<AgentEngines>, speech: CallSpeech) -> Self {
        let (results_tx, results) = mpsc::channel(RESULTS_DEPTH);
        let conv = Conversation::new(engines.spec.clone());
        Self {
            engine: TurnEngine::new(TurnConfig::new(&config.agent), conv),
            engines,
            speech,
            results_tx,
            results,
            immediate: VecDeque::new(),
            cancels: HashMap::new(),
            to_asr: None,
            scratch: Vec::new(),
            samples: Vec::new(),
            dirty: false,
        }
    }

    /// Starts the conversation (the greeting).
    pub fn start(&mut self, session: &mut MediaSession, rec: &mut CallRecord) -> Option<Directive> {
        self.engine.start(Instant::now());
        self.drain(session, rec)
    }

    pub async fn next_event(&mut self) -> Option<AgentEvent> {
        self.results.recv().await
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.engine.poll_timeout()
    }

    pub fn handle_timeout(
        &mut self,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        self.engine.handle_timeout(Instant::now());
        self.drain(session, rec)
    }

    /// One frame of caller audio at the codec rate.
    pub fn on_caller_audio(
        &mut self,
        pcm: &[i16],
        rate: u32,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        if self.to_asr.as_ref().is_none_or(|r| r.input_rate() != rate) {
            match Resampler::to_asr(rate) {
                Ok(r) => self.to_asr = Some(r),
                Err(e) => {
                    tracing::warn!("caller audio not usable for recognition: {e}");
                    return None;
                }
            }
        }
        self.scratch.clear();
        if let Some(r) = self.to_asr.as_mut() {
            if r.process(pcm, &mut self.scratch).is_err() {
                return None;
            }
        }
        self.samples.clear();
        self.samples
            .extend(self.scratch.iter().map(|&s| f32::from(s) / 32768.0));
        self.engine.handle_audio(Instant::now(), &self.samples);
        self.drain(session, rec)
    }

    pub fn on_playout_drained(
        &mut self,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        self.engine.handle_playout_drained(Instant::now());
        self.drain(session, rec)
    }

    pub fn on_dtmf(
        &mut self,
        digit: char,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        self.engine.handle_dtmf(Instant::now(), digit);
        self.drain(session, rec)
    }

    pub fn on_transfer_failed(
        &mut self,
        error: String,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        self.engine.handle_transfer_failed(Instant::now(), error);
        self.drain(session, rec)
    }

    pub fn handle_event(
        &mut self,
        event: AgentEvent,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        let result = match event {
            AgentEvent::Engine(result) => result,
            AgentEvent::Vad { vad, result } => {
                self.speech.put_vad(vad);
                EngineResult::SpeechDetected(result.map_err(|e| e.to_string()))
            }
        };
        if let EngineResult::Generated { id, .. } | EngineResult::GenerationFailed { id, .. } =
            &result
        {
            self.cancels.remove(id);
        }
        self.engine.handle_result(Instant::now(), result);
        self.drain(session, rec)
    }

    /// Carries out the engine's outputs; the first directive among them is the call's.
    fn drain(&mut self, session: &mut MediaSession, rec: &mut CallRecord) -> Option<Directive> {
        let mut directive = None;
        loop {
            while let Some(output) = self.engine.poll_output() {
                match output {
                    TurnOutput::Run(job) => self.run(job),
                    TurnOutput::Cancel(job) => {
                        if let Some(cancel) = self.cancels.remove(&job) {
                            cancel.store(true, Ordering::Relaxed);
                        }
                    }
                    TurnOutput::Play(audio) => {
                        if let Err(e) = session.queue_audio(&audio.0, audio.1) {
                            tracing::warn!("agent audio not queued: {e}");
                        }
                    }
                    TurnOutput::Hold(hold) => session.hold_outgoing(hold),
                    TurnOutput::Flush => session.flush_outgoing(),
                    TurnOutput::Turn(turn) => {
                        match rec.turns.iter_mut().find(|t| t.turn.turn == turn.turn.turn) {
                            Some(existing) => *existing = turn,
                            None => rec.turns.push(turn),
                        }
                        self.dirty = true;
                    }
                    TurnOutput::Directive(d) => {
                        directive.get_or_insert(d);
                    }
                }
            }
            let Some(result) = self.immediate.pop_front() else {
                return directive;
            };
            self.engine.handle_result(Instant::now(), result);
        }
    }

    /// Hands one job to the engines. What is known at once (cached audio, a refusal) comes
    /// back through `immediate`; the rest through the results channel.
    fn run(&mut self, job: Job) {
        match job {
            Job::DetectSpeech { samples } => {
                let Some(mut vad) = self.speech.take_vad() else {
                    self.immediate.push_back(EngineResult::SpeechDetected(Err(
                        "the VAD is busy".to_owned()
                    )));
                    return;
                };
                let tx = self.results_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let result = vad.process(&samples);
                    let _ = tx.blocking_send(AgentEvent::Vad { vad, result });
                });
            }
            Job::Recognize {
                id, pcm, listening, ..
            } => {
                let tx = self.results_tx.clone();
                let meaning_engine = self.engines.meaning.clone();
                let queued = self.speech.transcribe(pcm, listening, move |result| {
                    // On the recognizer's thread, a few ms: the intent the words mean.
                    let meaning = match (&result, &meaning_engine) {
                        (Ok(t), Some(engine)) => engine.intent_of(&clean_transcript(&t.text)).map(|m| {
                            tracing::debug!(intent = %m.intent, score = m.score, "intent by meaning");
                            m.intent
                        }),
                        _ => None,
                    };
                    let result = result.map_err(|e| e.to_string());
                    let _ = tx.blocking_send(AgentEvent::Engine(EngineResult::Recognized {
                        id,
                        result,
                        meaning,
                    }));
                });
                if queued.is_err() {
                    self.immediate.push_back(EngineResult::Busy { id });
                }
            }
            Job::Generate {
                id,
                history,
                budget,
                guess,
            } => {
                // A guess must not delay another call's turn: only on an idle model.
                if guess && self.speech.service().llm_busy() {
                    self.immediate.push_back(EngineResult::Busy { id });
                    return;
                }
                let cancel = Arc::new(AtomicBool::new(false));
                let tx = self.results_tx.clone();
                let queued =
                    self.speech
                        .generate(history, budget, Arc::clone(&cancel), move |event| {
                            let result = match event {
                                LlmEvent::Token(text) => EngineResult::Token { id, text },
                                LlmEvent::Done(generation) => {
                                    EngineResult::Generated { id, generation }
                                }
                                LlmEvent::Failed(error) => {
                                    EngineResult::GenerationFailed { id, error }
                                }
                            };
                            match tx.blocking_send(AgentEvent::Engine(result)) {
                                Ok(()) => ControlFlow::Continue(()),
                                // The call is over.
                                Err(_) => ControlFlow::Break(()),
                            }
                        });
                match queued {
                    Ok(()) => {
                        self.cancels.insert(id, cancel);
                    }
                    Err(why) => self.immediate.push_back(refused(id, why, |error| {
                        EngineResult::GenerationFailed { id, error }
                    })),
                }
            }
            Job::Extract {
                id,
                said,
                slots,
                budget,
            } => {
                let tx = self.results_tx.clone();
                let messages = slots::prompt(&said, &slots);
                let grammar = slots::grammar(&slots);
                let queued =
                    self.speech
                        .complete_constrained(messages, grammar, budget, move |output| {
                            // Values the caller did not say are dropped (`agent::slots`).
                            let result = output.and_then(|text| {
                                slots::extract(&text, &said, &slots).map_err(|e| e.to_string())
                            });
                            let _ = tx.blocking_send(AgentEvent::Engine(EngineResult::Extracted {
                                id,
                                result,
                            }));
                        });
                if let Err(why) = queued {
                    self.immediate
                        .push_back(refused(id, why, |error| EngineResult::Extracted {
                            id,
                            result: Err(error),
                        }));
                }
            }
            Job::Prefill { history } => {
                // Best effort: a full queue only means the next reply evaluates it itself.
                let _ = self.speech.prefill(history);
            }
            Job::Synthesize { id, text } => {
                if let Some(audio) = self.speech.service().phrase(&text) {
                    self.immediate.push_back(EngineResult::Audio {
                        id,
                        result: Ok(audio),
                    });
                    return;
                }
                let tx = self.results_tx.clone();
                let queued = self.speech.synthesize(text, move |result| {
                    let result = result
                        .map(|s| Arc::new((s.pcm, s.sample_rate)))
                        .map_err(|e: TtsError| e.to_string());
                    let _ =
                        tx.blocking_send(AgentEvent::Engine(EngineResult::Audio { id, result }));
                });
                if let Err(why) = queued {
                    self.immediate
                        .push_back(refused(id, why, |error| EngineResult::Audio {
                            id,
                            result: Err(error),
                        }));
                }
            }
            Job::Prompt { id, prompt } => {
                let result = self
                    .speech
                    .service()
                    .phrase(prompt.text(&self.engines.spec.config))
                    .ok_or_else(|| format!("prompt {prompt:?} has no audio"));
                self.immediate.push_back(EngineResult::Audio { id, result });
            }
        }
    }
}

/// What a job the engines would not take comes back as: busy (the engine's queue is full), or
/// `failed` with why the engine is not there.
fn refused(
    id: JobId,
    why: JobRefused,
    failed: impl FnOnce(String) -> EngineResult,
) -> EngineResult {
    match why {
        JobRefused::Full(_) => EngineResult::Busy { id },
        JobRefused::Unavailable(error) => failed(error),
    }
}
