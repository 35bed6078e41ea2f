//! The voice agent's shell inside a call: caller audio → 16 kHz → Silero VAD → endpointer →
//! recognition → the conversation state machine → generation → clause splitter → synthesis →
//! the media engine's outgoing queue. Engines run on their own threads (`speech::service`);
//! results come back on one channel that the call's select loop polls with everything else.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::record::{AgentTurn, CallRecord, TurnLatency, TurnWord};
use crate::agent::endpoint::{EndpointConfig, EndpointEvent, Endpointer, WINDOW_SAMPLES};
use crate::agent::sentences::SentenceSplitter;
use crate::agent::{Action, Conversation, ConversationState, Input, Prompt};
use crate::config::Config;
use crate::speech::service::{CallSpeech, LlmEvent};
use crate::speech::{
    AsrError, Budget, SileroVad, StopReason, Synthesis, Transcript, TtsError, ASR_SAMPLE_RATE,
};
use crate::telephony::media::MediaSession;
use crate::telephony::media::Resampler;

/// VAD runs on this many new windows at a time (64 ms): barge-in reacts within a step or two.
const VAD_HOP_WINDOWS: usize = 2;
/// Caller audio kept before the current utterance (for the endpointer's pad).
const KEEP_SAMPLES: usize = ASR_SAMPLE_RATE as usize;

/// What the call must do for the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    Transfer(String),
    Hangup,
}

/// Results of engine work, back on the call task.
pub enum AgentEvent {
    Vad {
        vad: SileroVad,
        result: Result<Vec<f32>, AsrError>,
    },
    Asr {
        utterance: u64,
        result: Result<Transcript, AsrError>,
    },
    Llm {
        turn: u64,
        event: LlmEvent,
    },
    Tts {
        epoch: u64,
        seq: u64,
        result: Result<Synthesis, TtsError>,
    },
    /// Slot extraction for a `collect` turn.
    Extracted {
        turn: u64,
        result: Result<std::collections::BTreeMap<String, String>, String>,
    },
    /// Recognition started on a pause ([`Speculation`]).
    SpeculativeAsr {
        id: u64,
        result: Result<Transcript, AsrError>,
    },
    /// Generation started on a pause's transcript ([`Speculation`]).
    SpeculativeLlm {
        id: u64,
        event: LlmEvent,
    },
}

/// Work started when the caller pauses (the endpointer's `Paused`), before the turn is known
/// to be over: recognition of the audio so far and, when the conversation would hand that
/// transcript to the model, the generation too. The endpoint silence (hundreds of ms) is spent
/// on them instead of waiting. If the turn ends with exactly this audio, the results are the
/// turn's; if the caller goes on, they are dropped (the generation cancelled).
struct Speculation {
    id: u64,
    /// 16 kHz sample span of the utterance as the pause saw it.
    span: (u64, u64),
    transcript: Option<Result<Transcript, AsrError>>,
    /// The utterance that ended with this audio while recognition was still running.
    adopted_by: Option<u64>,
    generation: Option<SpeculativeGeneration>,
}

struct SpeculativeGeneration {
    /// The `Generate` the conversation would emit for this transcript; adopted only if it
    /// emits exactly this.
    action: Action,
    cancel: Arc<AtomicBool>,
    /// Events before adoption, replayed in order when adopted.
    buffered: Vec<LlmEvent>,
}

#[derive(Debug, Default, Clone)]
struct Timing {
    caller_start: Option<Instant>,
    speech_end: Option<Instant>,
    endpoint: Option<Instant>,
    asr_final: Option<Instant>,
    first_token: Option<Instant>,
    first_audio: Option<Instant>,
    first_rtp: Option<Instant>,
}

pub struct AgentRun {
    conv: Conversation,
    speech: CallSpeech,
    tx: mpsc::UnboundedSender<AgentEvent>,
    rx: mpsc::UnboundedReceiver<AgentEvent>,
    answered: Instant,
    to_asr: Option<Resampler>,
    scratch: Vec<i16>,
    /// Caller audio at 16 kHz from sample `audio_base` on.
    audio: Vec<f32>,
    audio_base: u64,
    /// Samples (from the stream start) handed to the VAD so far.
    vad_done: u64,
    vad_busy: bool,
    endpointer: Endpointer,
    min_speech_ms: u32,
    barge_in_min_speech_ms: u32,
    max_reply_ms: u32,
    barge_in_on_speech: bool,
    utterances: HashMap<u64, Vec<f32>>,
    next_utterance: u64,
    /// The audio last sent to recognition (joined with the next when the caller goes on).
    last_utterance: Option<Vec<f32>>,
    generation: Option<(u64, Arc<AtomicBool>)>,
    splitter: SentenceSplitter,
    /// Bumped on barge-in: synthesis results of an older epoch are dropped.
    epoch: u64,
    tts_next: u64,
    tts_play: u64,
    tts_ready: BTreeMap<u64, Option<(Vec<i16>, u32)>>,
    timing: Timing,
    words: Vec<TurnWord>,
    /// Turns recorded since the call last saved its record.
    pub dirty: bool,
    /// The last caller turn recorded that was spoken (its latency is completed as audio comes).
    last_spoken_turn: Option<u64>,
    /// A directive that came up while saying something (handed out by `take_directive`).
    directive_from_say: Option<Directive>,
    speculation: Option<Speculation>,
    next_speculation: u64,
    /// Sample spans of utterances handed to the conversation, to match a speculation.
    utterance_spans: HashMap<u64, (u64, u64)>,
    /// A speculative generation that became a turn's: (speculation id, turn).
    adopted_generation: Option<(u64, u64)>,
    /// Adopted events to hand to the conversation once the current step is done.
    replay: std::collections::VecDeque<AgentEvent>,
}

impl AgentRun {
    pub fn new(config: &Config, speech: CallSpeech) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let agent = &config.agent;
        let endpointer = Endpointer::new(EndpointConfig {
            threshold: agent.vad_threshold_percent as f32 / 100.0,
            min_speech_ms: agent.barge_in_min_speech_ms,
            endpoint_silence_ms: agent.endpoint_silence_ms,
            max_utterance_ms: agent.max_utterance_secs * 1000,
            pad_ms: 200,
        });
        let conv = Conversation::new(speech.service().spec().clone());
        Self {
            conv,
            speech,
            tx,
            rx,
            answered: Instant::now(),
            to_asr: None,
            scratch: Vec::new(),
            audio: Vec::new(),
            audio_base: 0,
            vad_done: 0,
            vad_busy: false,
            endpointer,
            min_speech_ms: agent.min_speech_ms,
            max_reply_ms: agent.max_reply_ms,
            barge_in_min_speech_ms: agent.barge_in_min_speech_ms,
            barge_in_on_speech: agent.barge_in == crate::config::BargeIn::Speech,
            utterances: HashMap::new(),
            next_utterance: 1,
            last_utterance: None,
            generation: None,
            splitter: SentenceSplitter::new(),
            epoch: 0,
            tts_next: 0,
            tts_play: 0,
            tts_ready: BTreeMap::new(),
            timing: Timing::default(),
            words: Vec::new(),
            dirty: false,
            directive_from_say: None,
            last_spoken_turn: None,
            speculation: None,
            next_speculation: 1,
            utterance_spans: HashMap::new(),
            adopted_generation: None,
            replay: std::collections::VecDeque::new(),
        }
    }

    pub fn state(&self) -> ConversationState {
        self.conv.state()
    }

    /// A directive raised inside a nested step (a synthesis failure while applying actions).
    pub fn take_directive(&mut self) -> Option<Directive> {
        self.directive_from_say.take()
    }

    /// Starts the conversation (the greeting).
    pub fn start(&mut self, session: &mut MediaSession, rec: &mut CallRecord) -> Option<Directive> {
        self.answered = Instant::now();
        let actions = self.conv.handle(Instant::now(), Input::Start);
        self.apply(actions, session, rec)
    }

    pub async fn next_event(&mut self) -> Option<AgentEvent> {
        self.rx.recv().await
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conv.poll_timeout()
    }

    pub fn handle_timeout(
        &mut self,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        let actions = self.conv.handle_timeout(Instant::now());
        let directive = self.apply(actions, session, rec);
        directive.or(self.drain_replay(session, rec))
    }

    /// One frame of caller audio at the codec rate.
    pub fn on_caller_audio(&mut self, pcm: &[i16], rate: u32) {
        if self.to_asr.as_ref().is_none_or(|r| r.input_rate() != rate) {
            match Resampler::to_asr(rate) {
                Ok(r) => self.to_asr = Some(r),
                Err(e) => {
                    tracing::warn!("caller audio not usable for recognition: {e}");
                    return;
                }
            }
        }
        self.scratch.clear();
        if let Some(r) = self.to_asr.as_mut() {
            if r.process(pcm, &mut self.scratch).is_err() {
                return;
            }
        }
        self.audio
            .extend(self.scratch.iter().map(|&s| f32::from(s) / 32768.0));
        self.kick_vad();
    }

    fn audio_end(&self) -> u64 {
        self.audio_base + self.audio.len() as u64
    }

    fn kick_vad(&mut self) {
        if self.vad_busy {
            return;
        }
        let hop = (VAD_HOP_WINDOWS * WINDOW_SAMPLES) as u64;
        if self.audio_end() < self.vad_done + hop {
            return;
        }
        let Some(mut vad) = self.speech.take_vad() else {
            return;
        };
        let windows = ((self.audio_end() - self.vad_done) / WINDOW_SAMPLES as u64) as usize;
        let from = (self.vad_done - self.audio_base) as usize;
        let chunk = self.audio[from..from + windows * WINDOW_SAMPLES].to_vec();
        self.vad_done += (windows * WINDOW_SAMPLES) as u64;
        self.vad_busy = true;
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = vad.process(&chunk);
            let _ = tx.send(AgentEvent::Vad { vad, result });
        });
    }

    pub fn on_playout_drained(
        &mut self,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        // Between clauses the queue can run dry while the next one is synthesized: not the end.
        if self.tts_play < self.tts_next {
            return None;
        }
        let actions = self.conv.handle(Instant::now(), Input::PlayoutDrained);
        self.apply(actions, session, rec)
    }

    pub fn on_dtmf(
        &mut self,
        digit: char,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        let actions = self.conv.handle(Instant::now(), Input::Dtmf(digit));
        let directive = self.apply(actions, session, rec);
        directive.or(self.drain_replay(session, rec))
    }

    pub fn on_transfer_failed(
        &mut self,
        error: String,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        let actions = self
            .conv
            .handle(Instant::now(), Input::TransferFailed { error });
        self.apply(actions, session, rec)
    }

    pub fn handle_event(
        &mut self,
        event: AgentEvent,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        let directive = self.handle_event_inner(event, session, rec);
        let directive = directive.or(self.drain_replay(session, rec));
        self.refresh_latency(rec);
        directive
    }

    /// Adopted speculative events go to the conversation after the step that adopted them, in
    /// the order they were produced.
    fn drain_replay(
        &mut self,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        let mut directive = None;
        while let Some(event) = self.replay.pop_front() {
            let d = self.handle_event_inner(event, session, rec);
            directive = directive.or(d);
        }
        directive
    }

    fn handle_event_inner(
        &mut self,
        event: AgentEvent,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        let now = Instant::now();
        match event {
            AgentEvent::Vad { vad, result } => {
                self.speech.put_vad(vad);
                self.vad_busy = false;
                let probs = match result {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!("VAD failed on this chunk: {e}");
                        return None;
                    }
                };
                let speaking = matches!(
                    self.conv.state(),
                    ConversationState::Greeting | ConversationState::Speaking
                );
                self.endpointer.set_min_speech_ms(if speaking {
                    self.barge_in_min_speech_ms
                } else {
                    self.min_speech_ms
                });
                let mut directive = None;
                for p in probs {
                    let ev = self.endpointer.handle_window(p);
                    // Speech heard over the agent: hold the agent's audio at once, and let it go
                    // on if it was only a cough (not confirmed), or drop it on a confirmed start.
                    if speaking && self.barge_in_on_speech {
                        session.hold_outgoing(self.endpointer.maybe_speech());
                    }
                    let Some(ev) = ev else {
                        continue;
                    };
                    let d = self.on_endpoint(ev, now, session, rec);
                    directive = directive.or(d);
                }
                // The caller went on after the pause: what was started on it is of no use.
                if let (Some(spec), Some(end)) = (&self.speculation, self.endpointer.pending_end())
                {
                    if spec.span.1 != end && spec.adopted_by.is_none() {
                        self.drop_speculation();
                    }
                }
                if !self.endpointer.in_speech() {
                    self.trim_audio();
                }
                self.kick_vad();
                directive
            }
            AgentEvent::Asr { utterance, result } => {
                self.timing.asr_final.get_or_insert(now);
                let input = match result {
                    Ok(t) => {
                        tracing::info!(utterance, text = %t.text, decode_ms = t.elapsed.as_millis() as u64, audio_ctx = t.audio_ctx, "caller said");
                        self.words = t
                            .words()
                            .map(|w| TurnWord {
                                text: w.text.clone(),
                                start_ms: w.start_ms,
                                end_ms: w.end_ms,
                                probability: w.probability,
                            })
                            .collect();
                        Input::Transcript {
                            utterance,
                            text: clean_transcript(&t.text),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(utterance, "recognition failed: {e}");
                        Input::RecognitionFailed {
                            utterance,
                            error: e.to_string(),
                        }
                    }
                };
                let actions = self.conv.handle(now, input);
                let directive = self.apply(actions, session, rec);
                // The turn is decided: a guess still running was not what it needed.
                self.drop_speculation();
                directive
            }
            AgentEvent::Llm { turn, event } => {
                if self.generation.as_ref().is_none_or(|(t, _)| *t != turn) {
                    return None;
                }
                let mut inputs = Vec::new();
                match event {
                    LlmEvent::Token(piece) => {
                        self.timing.first_token.get_or_insert(now);
                        for text in self.splitter.push(&piece) {
                            inputs.push(Input::ReplyClause { turn, text });
                        }
                    }
                    LlmEvent::Done(g) => {
                        self.generation = None;
                        if let Some(text) = self.splitter.finish() {
                            inputs.push(Input::ReplyClause { turn, text });
                        }
                        tracing::info!(
                            turn,
                            prompt_tokens = g.prompt_tokens,
                            cached_tokens = g.cached_tokens,
                            generated = g.generated_tokens,
                            first_token_ms = g.first_token.map(|d| d.as_millis() as u64),
                            elapsed_ms = g.elapsed.as_millis() as u64,
                            stop = ?g.stop,
                            "reply generated"
                        );
                        inputs.push(Input::ReplyDone {
                            turn,
                            over_budget: matches!(
                                g.stop,
                                StopReason::MaxTime | StopReason::MaxTokens
                            ) && g.generated_tokens == 0,
                        });
                    }
                    LlmEvent::Failed(error) => {
                        self.generation = None;
                        tracing::warn!(turn, "reply generation failed: {error}");
                        inputs.push(Input::ReplyFailed { turn, error });
                    }
                }
                let mut directive = None;
                for input in inputs {
                    let actions = self.conv.handle(now, input);
                    directive = directive.or(self.apply(actions, session, rec));
                }
                directive
            }
            AgentEvent::Extracted { turn, result } => {
                let (values, error) = match result {
                    Ok(values) => (values, None),
                    Err(e) => {
                        tracing::warn!(turn, "slot extraction failed: {e}");
                        (Default::default(), Some(e))
                    }
                };
                tracing::info!(turn, ?values, "slots extracted");
                let actions = self.conv.handle(
                    now,
                    Input::Extracted {
                        turn,
                        values,
                        error,
                    },
                );
                self.apply(actions, session, rec)
            }
            AgentEvent::SpeculativeAsr { id, result } => {
                let spec = self.speculation.as_mut().filter(|s| s.id == id)?;
                if let Some(utterance) = spec.adopted_by.take() {
                    tracing::debug!(utterance, "speculative recognition adopted on arrival");
                    return self.handle_event_inner(
                        AgentEvent::Asr { utterance, result },
                        session,
                        rec,
                    );
                }
                spec.transcript = Some(result);
                self.speculate_generation(now);
                None
            }
            AgentEvent::SpeculativeLlm { id, event } => {
                if let Some((adopted, turn)) = self.adopted_generation {
                    if adopted == id {
                        return self.handle_event_inner(
                            AgentEvent::Llm { turn, event },
                            session,
                            rec,
                        );
                    }
                }
                if let Some(g) = self
                    .speculation
                    .as_mut()
                    .filter(|s| s.id == id)
                    .and_then(|s| s.generation.as_mut())
                {
                    g.buffered.push(event);
                }
                None
            }
            AgentEvent::Tts { epoch, seq, result } => {
                if epoch != self.epoch {
                    return None;
                }
                let audio = match result {
                    Ok(s) => Some((s.pcm, s.sample_rate)),
                    Err(e) => {
                        tracing::warn!("synthesis failed: {e}");
                        let actions = self.conv.handle(
                            now,
                            Input::SynthesisFailed {
                                error: e.to_string(),
                            },
                        );
                        if let Some(d) = self.apply(actions, session, rec) {
                            self.directive_from_say = Some(d);
                        }
                        None
                    }
                };
                self.tts_ready.insert(seq, audio);
                self.play_ready(session);
                None
            }
        }
    }

    fn on_endpoint(
        &mut self,
        ev: EndpointEvent,
        now: Instant,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        match ev {
            EndpointEvent::SpeechStarted { start_sample } => {
                let behind = self.audio_end().saturating_sub(start_sample);
                // A new turn: the previous one's latency is final.
                self.last_spoken_turn = None;
                self.timing = Timing {
                    caller_start: Some(now - samples_to_duration(behind)),
                    ..Timing::default()
                };
                let actions = self.conv.handle(now, Input::SpeechStarted);
                self.apply(actions, session, rec)
            }
            EndpointEvent::Paused {
                start_sample,
                end_sample,
            } => {
                self.speculate(start_sample, end_sample);
                None
            }
            EndpointEvent::SpeechEnded {
                start_sample,
                end_sample,
                ..
            } => {
                let pcm = self.span_pcm(start_sample, end_sample);
                // The speech ended where the pad begins: now minus the audio after it.
                let pad = 7 * WINDOW_SAMPLES as u64;
                let behind = self
                    .audio_end()
                    .saturating_sub(end_sample.saturating_sub(pad));
                self.timing.speech_end = Some(now - samples_to_duration(behind));
                self.timing.endpoint = Some(now);
                let utterance = self.next_utterance;
                self.next_utterance += 1;
                self.utterances.insert(utterance, pcm);
                self.utterance_spans
                    .insert(utterance, (start_sample, end_sample));
                let actions = self.conv.handle(now, Input::SpeechEnded { utterance });
                self.apply(actions, session, rec)
            }
        }
    }

    fn span_pcm(&self, start_sample: u64, end_sample: u64) -> Vec<f32> {
        let from = start_sample.max(self.audio_base);
        let to = end_sample.min(self.audio_end()).max(from);
        self.audio[(from - self.audio_base) as usize..(to - self.audio_base) as usize].to_vec()
    }

    /// The caller paused: recognise what they said so far, in case the turn ends here.
    fn speculate(&mut self, start_sample: u64, end_sample: u64) {
        if self
            .speculation
            .as_ref()
            .is_some_and(|s| s.span == (start_sample, end_sample))
        {
            return;
        }
        self.drop_speculation();
        let pcm = self.span_pcm(start_sample, end_sample);
        // Busy engines are for turns that are over, not for guesses.
        let Ok(rx) = self.speech.transcribe(pcm) else {
            return;
        };
        let id = self.next_speculation;
        self.next_speculation += 1;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = rx
                .await
                .unwrap_or_else(|_| Err(AsrError::Decode("recognizer thread gone".to_owned())));
            let _ = tx.send(AgentEvent::SpeculativeAsr { id, result });
        });
        self.speculation = Some(Speculation {
            id,
            span: (start_sample, end_sample),
            transcript: None,
            adopted_by: None,
            generation: None,
        });
    }

    /// The pause's transcript is in and the caller is still silent: if the conversation would
    /// hand it to the model, start that generation now (on a copy of the conversation, so
    /// nothing is decided until the turn really ends). Only when the model is idle: a guess
    /// must not delay another call's turn.
    fn speculate_generation(&mut self, now: Instant) {
        if self.conv.state() != ConversationState::Listening || self.speech.service().llm_busy() {
            tracing::debug!(state = ?self.conv.state(), "no speculative reply: not listening, or the model is busy");
            return;
        }
        let Some(spec) = self.speculation.as_mut() else {
            return;
        };
        let Some(Ok(transcript)) = &spec.transcript else {
            return;
        };
        let mut probe = self.conv.clone();
        let utterance = self.next_utterance;
        let _ = probe.handle(now, Input::SpeechEnded { utterance });
        let actions = probe.handle(
            now,
            Input::Transcript {
                utterance,
                text: clean_transcript(&transcript.text),
            },
        );
        let Some(action) = actions
            .into_iter()
            .find(|a| matches!(a, Action::Generate { .. }))
        else {
            tracing::debug!("no speculative reply: the turn would not go to the model");
            return;
        };
        let Action::Generate {
            history,
            max_tokens,
            max_time,
            ..
        } = &action
        else {
            return;
        };
        let budget = Budget {
            max_tokens: *max_tokens,
            max_time: *max_time,
        };
        let Ok(mut handle) = self.speech.generate(history.clone(), budget) else {
            return;
        };
        tracing::debug!(text = %transcript.text, "speculative reply started on the pause");
        let id = spec.id;
        let tx = self.tx.clone();
        let cancel = Arc::clone(&handle.cancel);
        tokio::spawn(async move {
            while let Some(event) = handle.events.recv().await {
                if tx.send(AgentEvent::SpeculativeLlm { id, event }).is_err() {
                    handle.cancel.store(true, Ordering::Relaxed);
                    break;
                }
            }
        });
        spec.generation = Some(SpeculativeGeneration {
            action,
            cancel,
            buffered: Vec::new(),
        });
    }

    /// The turn `utterance` ended with the audio a speculation recognised: its transcript (now
    /// or when it arrives) is the turn's. False when there is no such speculation.
    fn adopt_transcript(&mut self, utterance: u64, span: Option<(u64, u64)>) -> bool {
        let Some(spec) = self.speculation.as_mut().filter(|s| Some(s.span) == span) else {
            return false;
        };
        match spec.transcript.take() {
            Some(result) => {
                tracing::debug!(utterance, "speculative recognition adopted");
                let _ = self.tx.send(AgentEvent::Asr { utterance, result });
            }
            None => spec.adopted_by = Some(utterance),
        }
        true
    }

    /// The conversation asks for exactly the generation a speculation already started: it
    /// becomes the turn's, with what it produced so far.
    fn adopt_generation(&mut self, turn: u64, action: &Action) -> bool {
        let Some(spec) = self.speculation.as_mut() else {
            return false;
        };
        let Some(generation) = spec.generation.take_if(|g| g.action == *action) else {
            if let Some(g) = &spec.generation {
                tracing::debug!(speculated = ?g.action, asked = ?action, "speculative reply not adopted: the turn asks for another");
            }
            return false;
        };
        tracing::debug!(
            turn,
            buffered = generation.buffered.len(),
            "speculative reply adopted"
        );
        self.adopted_generation = Some((spec.id, turn));
        self.generation = Some((turn, generation.cancel));
        self.replay.extend(
            generation
                .buffered
                .into_iter()
                .map(|event| AgentEvent::Llm { turn, event }),
        );
        self.speculation = None;
        true
    }

    /// Forgets the speculation, cancelling a generation nobody adopted.
    fn drop_speculation(&mut self) {
        if let Some(spec) = self.speculation.take() {
            if let Some(g) = spec.generation {
                g.cancel.store(true, Ordering::Relaxed);
            }
        }
    }

    fn trim_audio(&mut self) {
        let keep_from = self
            .vad_done
            .saturating_sub(KEEP_SAMPLES as u64)
            .max(self.audio_base);
        let drop = (keep_from - self.audio_base) as usize;
        if drop > 0 {
            self.audio.drain(..drop);
            self.audio_base = keep_from;
        }
    }

    fn play_ready(&mut self, session: &mut MediaSession) {
        while let Some(audio) = self.tts_ready.remove(&self.tts_play) {
            self.tts_play += 1;
            if let Some((pcm, rate)) = audio {
                self.timing.first_audio.get_or_insert_with(Instant::now);
                self.queue(session, &pcm, rate);
            }
        }
    }

    fn queue(&mut self, session: &mut MediaSession, pcm: &[i16], rate: u32) {
        if let Err(e) = session.queue_audio(pcm, rate) {
            tracing::warn!("agent audio not queued: {e}");
            return;
        }
        if self.timing.endpoint.is_some() {
            self.timing.first_rtp.get_or_insert_with(Instant::now);
        }
    }

    fn apply(
        &mut self,
        actions: Vec<Action>,
        session: &mut MediaSession,
        rec: &mut CallRecord,
    ) -> Option<Directive> {
        let mut directive = None;
        for action in actions {
            match action {
                Action::Play(prompt) => self.play_prompt(prompt, session),
                Action::Say(text) => self.say(text, session, rec),
                Action::StopPlayback => {
                    session.flush_outgoing();
                    self.epoch += 1;
                    self.tts_ready.clear();
                    self.tts_play = self.tts_next;
                    tracing::info!("barge-in: playback stopped");
                }
                Action::Transcribe {
                    utterance,
                    join_previous,
                } => {
                    let mut pcm = self.utterances.remove(&utterance).unwrap_or_default();
                    let span = self.utterance_spans.remove(&utterance);
                    if !join_previous && self.adopt_transcript(utterance, span) {
                        self.last_utterance = Some(pcm);
                        continue;
                    }
                    self.drop_speculation();
                    if join_previous {
                        if let Some(mut before) = self.last_utterance.take() {
                            before.extend_from_slice(&pcm);
                            pcm = before;
                        }
                    }
                    self.last_utterance = Some(pcm.clone());
                    match self.speech.transcribe(pcm) {
                        Ok(rx) => {
                            let tx = self.tx.clone();
                            tokio::spawn(async move {
                                let result = rx.await.unwrap_or_else(|_| {
                                    Err(AsrError::Decode("recognizer thread gone".to_owned()))
                                });
                                let _ = tx.send(AgentEvent::Asr { utterance, result });
                            });
                        }
                        Err(full) => {
                            let _ = self.tx.send(AgentEvent::Asr {
                                utterance,
                                result: Err(AsrError::Decode(full.to_string())),
                            });
                        }
                    }
                }
                Action::Generate { turn, .. } if self.adopt_generation(turn, &action) => {
                    self.splitter = SentenceSplitter::new();
                }
                Action::Generate {
                    turn,
                    history,
                    max_tokens,
                    max_time,
                } => {
                    self.drop_speculation();
                    self.splitter = SentenceSplitter::new();
                    let budget = Budget {
                        max_tokens,
                        max_time,
                    };
                    match self.speech.generate(history, budget) {
                        Ok(mut handle) => {
                            self.generation = Some((turn, Arc::clone(&handle.cancel)));
                            let tx = self.tx.clone();
                            tokio::spawn(async move {
                                while let Some(event) = handle.events.recv().await {
                                    if tx.send(AgentEvent::Llm { turn, event }).is_err() {
                                        handle.cancel.store(true, Ordering::Relaxed);
                                        break;
                                    }
                                }
                            });
                        }
                        Err(full) => {
                            self.generation = Some((turn, Arc::new(AtomicBool::new(false))));
                            let _ = self.tx.send(AgentEvent::Llm {
                                turn,
                                event: LlmEvent::Failed(full.to_string()),
                            });
                        }
                    }
                }
                Action::CancelGeneration { turn } => {
                    if let Some((t, cancel)) = &self.generation {
                        if *t == turn {
                            cancel.store(true, Ordering::Relaxed);
                            self.generation = None;
                        }
                    }
                }
                Action::Extract { turn, said, slots } => {
                    // Small outputs: a few tokens a slot; the reply budget bounds the time.
                    let budget = Budget {
                        max_tokens: 24 * slots.len() as u32 + 8,
                        max_time: std::time::Duration::from_millis(u64::from(self.max_reply_ms)),
                    };
                    let tx = self.tx.clone();
                    match self.speech.extract(said, slots, budget) {
                        Ok(rx) => {
                            tokio::spawn(async move {
                                let result = rx
                                    .await
                                    .unwrap_or_else(|_| Err("model thread gone".to_owned()));
                                let _ = tx.send(AgentEvent::Extracted { turn, result });
                            });
                        }
                        Err(full) => {
                            let _ = tx.send(AgentEvent::Extracted {
                                turn,
                                result: Err(full.to_string()),
                            });
                        }
                    }
                }
                Action::Transfer { target } => directive = Some(Directive::Transfer(target)),
                Action::Hangup => directive = Some(Directive::Hangup),
                Action::RecordTurn(turn) => self.record_turn(turn, rec),
            }
        }
        directive
    }

    fn play_prompt(&mut self, prompt: Prompt, session: &mut MediaSession) {
        match self.speech.service().prompt(prompt) {
            Some(audio) => {
                // After queued clauses: a prompt is in order with what is already being said.
                if self.tts_play < self.tts_next {
                    let seq = self.tts_next;
                    self.tts_next += 1;
                    self.tts_ready.insert(seq, Some((audio.0.clone(), audio.1)));
                    self.play_ready(session);
                } else {
                    self.queue(session, &audio.0, audio.1);
                }
            }
            None => tracing::warn!("prompt {prompt:?} has no audio"),
        }
    }

    fn say(&mut self, text: String, session: &mut MediaSession, rec: &mut CallRecord) {
        let seq = self.tts_next;
        self.tts_next += 1;
        let epoch = self.epoch;
        if let Some(audio) = self.speech.service().phrase(&text) {
            self.tts_ready.insert(seq, Some((audio.0.clone(), audio.1)));
            self.timing.first_audio.get_or_insert_with(Instant::now);
            self.play_ready(session);
            return;
        }
        match self.speech.synthesize(text) {
            Some(Ok(rx)) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let result = rx.await.unwrap_or_else(|_| {
                        Err(TtsError::Synthesis("synthesis thread gone".to_owned()))
                    });
                    let _ = tx.send(AgentEvent::Tts { epoch, seq, result });
                });
            }
            failed => {
                let why = match failed {
                    Some(Err(full)) => full.to_string(),
                    _ => "no voice".to_owned(),
                };
                tracing::warn!("reply not synthesized: {why}");
                self.tts_ready.insert(seq, None);
                let actions = self
                    .conv
                    .handle(Instant::now(), Input::SynthesisFailed { error: why });
                if let Some(d) = self.apply(actions, session, rec) {
                    self.directive_from_say = Some(d);
                }
                self.play_ready(session);
            }
        }
    }

    fn latency(&self) -> TurnLatency {
        let from_end = |t: Option<Instant>| match (self.timing.speech_end, t) {
            (Some(end), Some(t)) => Some(t.saturating_duration_since(end).as_millis() as u64),
            _ => None,
        };
        TurnLatency {
            endpoint_ms: from_end(self.timing.endpoint),
            asr_final_ms: from_end(self.timing.asr_final),
            llm_first_token_ms: from_end(self.timing.first_token),
            first_tts_audio_ms: from_end(self.timing.first_audio),
            first_reply_rtp_ms: from_end(self.timing.first_rtp),
        }
    }

    /// The reply's audio often comes after its turn was recorded: complete its latency then.
    fn refresh_latency(&mut self, rec: &mut CallRecord) {
        let Some(turn) = self.last_spoken_turn else {
            return;
        };
        let latency = self.latency();
        if let Some(entry) = rec.turns.iter_mut().find(|t| t.turn.turn == turn) {
            if entry.latency != latency {
                entry.latency = latency;
                self.dirty = true;
            }
        }
    }

    fn record_turn(&mut self, turn: crate::agent::TurnRecord, rec: &mut CallRecord) {
        let since = |t: Option<Instant>| {
            t.map(|t| t.saturating_duration_since(self.answered).as_millis() as u64)
        };
        let spoken = matches!(turn.input, crate::agent::CallerInput::Speech(_));
        let entry = AgentTurn {
            caller_start_ms: if spoken {
                since(self.timing.caller_start)
            } else {
                None
            },
            caller_end_ms: if spoken {
                since(self.timing.speech_end)
            } else {
                None
            },
            words: if spoken {
                std::mem::take(&mut self.words)
            } else {
                Vec::new()
            },
            latency: if spoken {
                self.latency()
            } else {
                TurnLatency::default()
            },
            turn,
        };
        self.last_spoken_turn = spoken.then_some(entry.turn.turn);
        tracing::info!(
            turn = entry.turn.turn,
            caller = %entry.turn.input.text(),
            agent = %entry.turn.agent,
            intent = %entry.turn.intent,
            action = entry.turn.action.as_str(),
            latency = ?entry.latency,
            "turn"
        );
        match rec
            .turns
            .iter_mut()
            .find(|t| t.turn.turn == entry.turn.turn)
        {
            Some(existing) => {
                // The same turn again, with more to say about it (interrupted, failed, ended).
                // Records can arrive out of order (a failure inside a nested step): keep every
                // error either one names.
                let mut errors = existing.turn.errors.clone();
                for e in &entry.turn.errors {
                    if !errors.contains(e) {
                        errors.push(e.clone());
                    }
                }
                let interrupted = existing.turn.interrupted || entry.turn.interrupted;
                existing.turn = entry.turn;
                existing.turn.errors = errors;
                existing.turn.interrupted = interrupted;
            }
            None => rec.turns.push(entry),
        }
        self.dirty = true;
    }
}

fn samples_to_duration(samples: u64) -> std::time::Duration {
    std::time::Duration::from_micros(samples * 1_000_000 / u64::from(ASR_SAMPLE_RATE))
}

/// Whisper marks non-speech as "[BLANK_AUDIO]", "(coughs)", "[Music]": not words.
fn clean_transcript(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0i32;
    for c in text.chars() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth = (depth - 1).max(0),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whisper_non_speech_markers_are_not_caller_words() {
        assert_eq!(clean_transcript(" [BLANK_AUDIO] "), "");
        assert_eq!(
            clean_transcript("(coughs) When are you open?"),
            "When are you open?"
        );
        assert_eq!(clean_transcript("Hello [Music] there"), "Hello there");
    }
}
