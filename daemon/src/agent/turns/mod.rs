//! The turn engine: one agent call's turn-taking, without I/O. Caller audio (16 kHz) and the
//! engines' results go in; engine jobs, audio to play, hold/flush, turn records and call
//! directives come out ([`TurnEngine::poll_output`]). Time is an argument: it never reads the
//! clock and starts nothing itself, so a whole call runs in simulated time in its tests.
//!
//! It owns: VAD windows → endpointer → utterances; speculation on a pause (recognition and
//! generation started before the turn is known to be over, adopted or dropped); the reply's
//! clauses and their audio in order ([`playout`]); barge-in as one interruption that reaches
//! held audio, queued audio, synthesis and generation; false interruptions (a cough or a
//! backchannel over the agent resumes the held reply); latency stamps; the conversation
//! ([`Conversation`]) that decides what to say.

mod playout;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::collect::Expecting;
use super::endpoint::{EndpointConfig, EndpointEvent, Endpointer, WINDOW_SAMPLES};
use super::sentences::SentenceSplitter;
use super::slots::SlotSpec;
use super::{Action, CallerInput, Conversation, ConversationState, Input, Prompt, TurnRecord};
use crate::config::{AgentConfig, BargeIn};
use crate::speech::service::PromptAudio;
use crate::speech::{
    Budget, ChatMessage, Generation, Listening, StopReason, Transcript, ASR_SAMPLE_RATE,
};
use playout::{Playout, Source};

/// VAD runs on this many new windows at a time (64 ms): barge-in reacts within a step or two.
const VAD_HOP_WINDOWS: usize = 2;
/// Caller audio kept before the current utterance (for the endpointer's pad).
const KEEP_SAMPLES: u64 = ASR_SAMPLE_RATE as u64;
/// While a number or a message is awaited, a pause must be this long (ms) to end the turn
/// (unless the words already complete the answer).
const ANSWER_PAUSE_MS: u32 = 1500;
/// The endpointer's pad after speech (7 windows of 32 ms): speech ended where it begins.
const END_PAD_SAMPLES: u64 = 7 * WINDOW_SAMPLES as u64;

/// One caller turn of a voice agent call: what was said, what the agent did, how long each
/// stage took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentTurn {
    #[serde(flatten)]
    pub turn: TurnRecord,
    /// Call time (ms since answer) when the caller's speech began and ended.
    pub caller_start_ms: Option<u64>,
    pub caller_end_ms: Option<u64>,
    /// Recognised words with times relative to the utterance start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<TurnWord>,
    pub latency: TurnLatency,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnWord {
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub probability: f32,
}

/// Milliseconds from the end of the caller's speech to each stage of the reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnLatency {
    pub endpoint_ms: Option<u64>,
    pub asr_final_ms: Option<u64>,
    pub llm_first_token_ms: Option<u64>,
    pub first_tts_audio_ms: Option<u64>,
    /// When the first reply audio was handed to the 20 ms RTP clock (sent within one frame).
    pub first_reply_rtp_ms: Option<u64>,
}

/// The engine's settings, from `[agent]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnConfig {
    pub endpoint: EndpointConfig,
    /// Speech shorter than this starts no turn while the agent listens...
    pub min_speech_ms: u32,
    /// ...and interrupts nothing while it speaks.
    pub barge_in_min_speech_ms: u32,
    pub barge_in_on_speech: bool,
    /// Wall-time budget of a slot extraction.
    pub max_reply_ms: u32,
    /// Speech over the agent holds its audio until its words are known: none, or only a
    /// backchannel, and the reply goes on.
    pub resume_after_noise: bool,
    /// Normalised (lower case, single spaces).
    pub backchannels: Vec<String>,
    /// The words at a pause decide the turn: complete (a whole question, a goodbye, all the
    /// digits asked) ends it there, unfinished ("I'd like to, um") holds it open longer. Off:
    /// only the endpoint silence ends a turn (measured against each other in
    /// `tests/cut_offs.rs`).
    pub semantic_end_of_turn: bool,
}

impl TurnConfig {
    pub fn new(agent: &AgentConfig) -> Self {
        Self {
            endpoint: EndpointConfig {
                threshold: agent.vad_threshold_percent as f32 / 100.0,
                min_speech_ms: agent.barge_in_min_speech_ms,
                endpoint_silence_ms: agent.endpoint_silence_ms,
                max_utterance_ms: agent.max_utterance_secs * 1000,
                pad_ms: 200,
            },
            min_speech_ms: agent.min_speech_ms,
            barge_in_min_speech_ms: agent.barge_in_min_speech_ms,
            barge_in_on_speech: agent.barge_in == BargeIn::Speech,
            max_reply_ms: agent.max_reply_ms,
            resume_after_noise: agent.resume_after_noise,
            backchannels: agent
                .backchannels
                .iter()
                .map(|b| normalise(b))
                .filter(|b| !b.is_empty())
                .collect(),
            semantic_end_of_turn: true,
        }
    }
}

/// Names one job from asking to its result (or cancellation).
pub type JobId = u64;

/// Work for the engines. The shell runs each and answers with an [`EngineResult`] naming the
/// same job (or [`EngineResult::Busy`] when the engine's queue is full).
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// Speech probability of each 32 ms window of these 16 kHz samples. One at a time, in
    /// the order asked: the VAD keeps state between them.
    DetectSpeech { samples: Vec<f32> },
    /// Recognise an utterance (16 kHz). A `guess` (on a pause) is for an idle engine only.
    Recognize {
        id: JobId,
        pcm: Vec<f32>,
        guess: bool,
        /// What the caller is expected to say (a number while a digits slot is open).
        listening: Listening,
    },
    /// A reply to `history`, streamed token by token. A `guess` is for an idle model only.
    Generate {
        id: JobId,
        history: Vec<ChatMessage>,
        budget: Budget,
        guess: bool,
    },
    /// `slots` taken from `said` (the model, held to a grammar).
    Extract {
        id: JobId,
        said: String,
        slots: Vec<SlotSpec>,
        budget: Budget,
    },
    /// Speech for one clause (from the cache of fixed phrases when it is one).
    Synthesize { id: JobId, text: String },
    /// A cached prompt's audio.
    Prompt { id: JobId, prompt: Prompt },
    /// Evaluate the conversation so far into the model's cache, behind live work (no result).
    Prefill { history: Vec<ChatMessage> },
}

/// What a job produced.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineResult {
    SpeechDetected(Result<Vec<f32>, String>),
    Recognized {
        id: JobId,
        result: Result<Transcript, String>,
        /// The intent the words mean (sentence embeddings), when one is clearly closest.
        meaning: Option<String>,
    },
    Token {
        id: JobId,
        text: String,
    },
    Generated {
        id: JobId,
        generation: Generation,
    },
    GenerationFailed {
        id: JobId,
        error: String,
    },
    Extracted {
        id: JobId,
        result: Result<BTreeMap<String, String>, String>,
    },
    Audio {
        id: JobId,
        result: Result<PromptAudio, String>,
    },
    /// The engine's queue was full: the job never ran.
    Busy {
        id: JobId,
    },
}

impl EngineResult {
    fn job(&self) -> Option<JobId> {
        match self {
            Self::SpeechDetected(_) => None,
            Self::Recognized { id, .. }
            | Self::Token { id, .. }
            | Self::Generated { id, .. }
            | Self::GenerationFailed { id, .. }
            | Self::Extracted { id, .. }
            | Self::Audio { id, .. }
            | Self::Busy { id } => Some(*id),
        }
    }
}

/// What the call must do for the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    Transfer(String),
    Hangup,
}

/// The engine's outputs, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnOutput {
    Run(Job),
    /// Stop a job (its result, if it still comes, is ignored).
    Cancel(JobId),
    /// Queue this audio after what is queued.
    Play(PromptAudio),
    /// Send silence and keep queued audio waiting (true), or go on (false).
    Hold(bool),
    /// Drop all queued audio (barge-in); lifts a hold.
    Flush,
    /// A caller turn, new or with more to say about it: store it, replacing the turn of the
    /// same number.
    Turn(AgentTurn),
    Directive(Directive),
}

/// What a recognition job is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recognition {
    /// A turn's utterance.
    Turn(u64),
    /// Speech over the agent: words interrupt it, none resume it.
    Overlap(u64),
    /// The audio up to a pause ([`Speculation`]).
    Guess,
}

/// Work started when the caller pauses (the endpointer's `Paused`), before the turn is known
/// to be over: recognition of the audio so far and, when the conversation would hand that
/// transcript to the model, the generation too. If the turn ends with exactly this audio, the
/// results are the turn's; if the caller goes on, they are dropped (the generation cancelled).
#[derive(Debug)]
struct Speculation {
    recognition: JobId,
    /// 16 kHz sample span of the utterance as the pause saw it.
    span: (u64, u64),
    transcript: Option<Result<Transcript, String>>,
    /// The intent its words mean, if one.
    meaning: Option<String>,
    generation: Option<GuessedGeneration>,
}

#[derive(Debug)]
struct GuessedGeneration {
    job: JobId,
    /// The `Generate` the conversation would emit for this transcript; adopted only if it
    /// emits exactly this.
    action: Action,
    /// Results before adoption, replayed in order when adopted.
    buffered: Vec<EngineResult>,
}

/// Caller speech over the agent, its words not known yet: the agent's audio is held.
#[derive(Debug, Default)]
struct Overlap {
    /// Utterances of it being recognised.
    recognising: usize,
    /// The caller is still speaking.
    in_speech: bool,
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

struct Utterance {
    pcm: Vec<f32>,
    span: (u64, u64),
}

pub struct TurnEngine {
    cfg: TurnConfig,
    conv: Conversation,
    out: VecDeque<TurnOutput>,
    /// Results to handle once the current step is done (adopted speculation, transcripts
    /// already known), in order.
    replay: VecDeque<EngineResult>,
    answered: Option<Instant>,
    next_job: JobId,
    /// Caller audio at 16 kHz from sample `audio_base` on.
    audio: Vec<f32>,
    audio_base: u64,
    /// Samples (from the stream start) handed to the VAD so far.
    vad_done: u64,
    vad_busy: bool,
    endpointer: Endpointer,
    /// The words at this pause stop mid-thought: the turn waits a longer silence.
    hold_open: bool,
    utterances: HashMap<u64, Utterance>,
    next_utterance: u64,
    /// The audio last sent to recognition (joined with the next when the caller goes on).
    last_utterance: Option<Vec<f32>>,
    recognitions: HashMap<JobId, Recognition>,
    /// Transcripts known before the conversation asked for them (an overlap that was words).
    known_transcripts: HashMap<u64, Result<Transcript, String>>,
    /// The turn's generation: (turn, job).
    generation: Option<(u64, JobId)>,
    extractions: HashMap<JobId, u64>,
    splitter: SentenceSplitter,
    playout: Playout,
    speculation: Option<Speculation>,
    overlap: Option<Overlap>,
    /// The caller hears silence while the agent's audio waits.
    held: bool,
    timing: Timing,
    words: Vec<TurnWord>,
    /// Turns recorded, as last handed out.
    turns: Vec<AgentTurn>,
    /// The last caller turn recorded that was spoken (its latency is completed as audio comes).
    last_spoken_turn: Option<u64>,
    false_interruptions: u32,
}

impl TurnEngine {
    pub fn new(cfg: TurnConfig, conv: Conversation) -> Self {
        let endpointer = Endpointer::new(cfg.endpoint);
        Self {
            cfg,
            conv,
            out: VecDeque::new(),
            replay: VecDeque::new(),
            answered: None,
            next_job: 1,
            audio: Vec::new(),
            audio_base: 0,
            vad_done: 0,
            vad_busy: false,
            endpointer,
            hold_open: false,
            utterances: HashMap::new(),
            next_utterance: 1,
            last_utterance: None,
            recognitions: HashMap::new(),
            known_transcripts: HashMap::new(),
            generation: None,
            extractions: HashMap::new(),
            splitter: SentenceSplitter::new(),
            playout: Playout::default(),
            speculation: None,
            overlap: None,
            held: false,
            timing: Timing::default(),
            words: Vec::new(),
            turns: Vec::new(),
            last_spoken_turn: None,
            false_interruptions: 0,
        }
    }

    pub fn state(&self) -> ConversationState {
        self.conv.state()
    }

    /// Speech over the agent that turned out to be no words (or a backchannel) so far.
    pub fn false_interruptions(&self) -> u32 {
        self.false_interruptions
    }

    /// The next output, oldest first. Drain after every `handle_*`.
    pub fn poll_output(&mut self) -> Option<TurnOutput> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conv.poll_timeout()
    }

    /// The call is answered: the greeting.
    pub fn start(&mut self, now: Instant) {
        self.answered = Some(now);
        self.converse(now, Input::Start);
        self.finish_step(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let actions = self.conv.handle_timeout(now);
        self.apply(actions);
        self.finish_step(now);
    }

    /// Caller audio, 16 kHz mono in -1.0..=1.0.
    pub fn handle_audio(&mut self, now: Instant, samples: &[f32]) {
        self.audio.extend_from_slice(samples);
        self.ask_vad();
        self.finish_step(now);
    }

    /// Everything queued for the caller has been played.
    pub fn handle_playout_drained(&mut self, now: Instant) {
        // Between clauses the queue can run dry while the next one is synthesized: not the end.
        if !self.playout.is_idle() {
            return;
        }
        self.converse(now, Input::PlayoutDrained);
        self.finish_step(now);
    }

    pub fn handle_dtmf(&mut self, now: Instant, digit: char) {
        self.converse(now, Input::Dtmf(digit));
        self.finish_step(now);
    }

    /// The call could not transfer the caller (`agent.when_transfer_fails` says what next).
    pub fn handle_transfer_failed(&mut self, now: Instant, error: String) {
        self.converse(now, Input::TransferFailed { error });
        self.finish_step(now);
    }

    pub fn handle_result(&mut self, now: Instant, result: EngineResult) {
        self.on_result(now, result);
        self.finish_step(now);
    }

    /// Adopted results go in after the step that adopted them, in the order they came; then
    /// the last spoken turn's latency is brought up to date.
    fn finish_step(&mut self, now: Instant) {
        while let Some(result) = self.replay.pop_front() {
            self.on_result(now, result);
        }
        self.refresh_latency();
    }

    fn job_id(&mut self) -> JobId {
        let id = self.next_job;
        self.next_job += 1;
        id
    }

    fn converse(&mut self, now: Instant, input: Input) {
        let actions = self.conv.handle(now, input);
        self.apply(actions);
    }

    fn agent_speaking(&self) -> bool {
        matches!(
            self.conv.state(),
            ConversationState::Greeting | ConversationState::Speaking
        )
    }

    fn audio_end(&self) -> u64 {
        self.audio_base + self.audio.len() as u64
    }

    fn ask_vad(&mut self) {
        let hop = (VAD_HOP_WINDOWS * WINDOW_SAMPLES) as u64;
        if self.vad_busy || self.audio_end() < self.vad_done + hop {
            return;
        }
        let windows = (self.audio_end() - self.vad_done) / WINDOW_SAMPLES as u64;
        let from = (self.vad_done - self.audio_base) as usize;
        let to = from + windows as usize * WINDOW_SAMPLES;
        let samples = self.audio[from..to].to_vec();
        self.vad_done += windows * WINDOW_SAMPLES as u64;
        self.vad_busy = true;
        self.out
            .push_back(TurnOutput::Run(Job::DetectSpeech { samples }));
    }

    fn set_hold(&mut self, hold: bool) {
        if self.held != hold {
            self.held = hold;
            self.out.push_back(TurnOutput::Hold(hold));
        }
    }

    fn on_result(&mut self, now: Instant, result: EngineResult) {
        if let Some(id) = result.job() {
            if self.is_guessed_generation(id) {
                self.on_guessed_generation(result);
                return;
            }
        }
        match result {
            EngineResult::SpeechDetected(probabilities) => {
                self.vad_busy = false;
                match probabilities {
                    Ok(p) => self.on_speech_probabilities(now, &p),
                    Err(e) => tracing::warn!("VAD failed on this chunk: {e}"),
                }
                self.ask_vad();
            }
            EngineResult::Recognized {
                id,
                result,
                meaning,
            } => self.on_recognized(now, id, result, meaning),
            EngineResult::Token { id, text } => {
                let Some(turn) = self.turn_generating(id) else {
                    return;
                };
                self.timing.first_token.get_or_insert(now);
                for text in self.splitter.push(&text) {
                    self.converse(now, Input::ReplyClause { turn, text });
                }
            }
            EngineResult::Generated { id, generation: g } => {
                let Some(turn) = self.turn_generating(id) else {
                    return;
                };
                self.generation = None;
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
                if let Some(text) = self.splitter.finish() {
                    self.converse(now, Input::ReplyClause { turn, text });
                }
                let over_budget = matches!(g.stop, StopReason::MaxTime | StopReason::MaxTokens)
                    && g.generated_tokens == 0;
                self.converse(now, Input::ReplyDone { turn, over_budget });
            }
            EngineResult::GenerationFailed { id, error } => {
                self.on_generation_failed(now, id, error)
            }
            EngineResult::Extracted { id, result } => {
                let Some(turn) = self.extractions.remove(&id) else {
                    return;
                };
                let (values, error) = match result {
                    Ok(values) => (values, None),
                    Err(e) => {
                        tracing::warn!(turn, "slot extraction failed: {e}");
                        (BTreeMap::new(), Some(e))
                    }
                };
                tracing::info!(turn, ?values, "slots extracted");
                self.converse(
                    now,
                    Input::Extracted {
                        turn,
                        values,
                        error,
                    },
                );
            }
            EngineResult::Audio { id, result } => self.on_audio(now, id, result),
            EngineResult::Busy { id } => self.on_busy(now, id),
        }
    }

    fn turn_generating(&self, id: JobId) -> Option<u64> {
        self.generation
            .filter(|(_, job)| *job == id)
            .map(|(turn, _)| turn)
    }

    fn on_generation_failed(&mut self, now: Instant, id: JobId, error: String) {
        let Some(turn) = self.turn_generating(id) else {
            return;
        };
        self.generation = None;
        tracing::warn!(turn, "reply generation failed: {error}");
        self.converse(now, Input::ReplyFailed { turn, error });
    }

    fn on_busy(&mut self, now: Instant, id: JobId) {
        let busy = "the engine's queue is full".to_owned();
        if let Some(recognition) = self.recognitions.get(&id).copied() {
            if recognition == Recognition::Guess {
                // Busy engines are for turns that are over, not for guesses.
                self.recognitions.remove(&id);
                self.speculation = None;
                return;
            }
            self.on_recognized(now, id, Err(busy), None);
        } else if self.turn_generating(id).is_some() {
            self.on_generation_failed(now, id, busy);
        } else if self.extractions.contains_key(&id) {
            self.on_result(
                now,
                EngineResult::Extracted {
                    id,
                    result: Err(busy),
                },
            );
        } else {
            self.on_audio(now, id, Err(busy));
        }
    }

    fn on_speech_probabilities(&mut self, now: Instant, probabilities: &[f32]) {
        // A number read out in groups, or a message, has pauses that are not its end.
        // So do words that stop mid-thought ("I'd like to, um").
        let long_pause = self.hold_open
            || matches!(
                self.conv.expecting(),
                Expecting::Digits(_) | Expecting::Message
            );
        let silence = if long_pause {
            self.cfg.endpoint.endpoint_silence_ms.max(ANSWER_PAUSE_MS)
        } else {
            self.cfg.endpoint.endpoint_silence_ms
        };
        self.endpointer.set_endpoint_silence_ms(silence);
        let speaking = self.agent_speaking();
        self.endpointer.set_min_speech_ms(if speaking {
            self.cfg.barge_in_min_speech_ms
        } else {
            self.cfg.min_speech_ms
        });
        for &p in probabilities {
            let event = self.endpointer.handle_window(p);
            // Speech heard over the agent: hold its audio at once; let it go on if that was only
            // a cough (not confirmed, or no words), drop it on a real interruption.
            if self.agent_speaking() && self.cfg.barge_in_on_speech {
                let hold = self.endpointer.maybe_speech() || self.overlap.is_some();
                self.set_hold(hold);
            }
            if let Some(event) = event {
                self.on_endpoint(now, event);
            }
        }
        // The caller went on after the pause: what was started on it is of no use.
        if let (Some(spec), Some(end)) = (&self.speculation, self.endpointer.pending_end()) {
            if spec.span.1 != end {
                self.drop_speculation();
            }
        }
        if !self.endpointer.in_speech() {
            self.trim_audio();
        }
    }

    fn on_endpoint(&mut self, now: Instant, event: EndpointEvent) {
        match event {
            EndpointEvent::SpeechStarted { start_sample } => {
                let behind = self.audio_end().saturating_sub(start_sample);
                // A new turn: the previous one's latency is final.
                self.last_spoken_turn = None;
                self.timing = Timing {
                    caller_start: Some(now - samples_to_duration(behind)),
                    ..Timing::default()
                };
                if let Some(overlap) = self.overlap.as_mut() {
                    overlap.in_speech = true;
                } else if self.cfg.resume_after_noise
                    && self.cfg.barge_in_on_speech
                    && self.agent_speaking()
                {
                    tracing::debug!(
                        "speech over the agent: its audio is held until the words are known"
                    );
                    self.overlap = Some(Overlap {
                        recognising: 0,
                        in_speech: true,
                    });
                    self.set_hold(true);
                } else {
                    self.converse(now, Input::SpeechStarted);
                }
            }
            EndpointEvent::Paused {
                start_sample,
                end_sample,
            } => {
                if self.overlap.is_none() {
                    self.speculate(start_sample, end_sample);
                }
            }
            EndpointEvent::SpeechEnded {
                start_sample,
                end_sample,
                ..
            } => {
                self.hold_open = false;
                let pcm = self.span_pcm(start_sample, end_sample);
                // The VAD's speech ends a little after the voice does (its probability decays
                // over a window or more): the caller's last speech sample is where the level
                // falls away for good, which is what the caller (and a capture) hears.
                let vad_end = end_sample.saturating_sub(END_PAD_SAMPLES);
                let voice_end = start_sample
                    + last_voiced_sample(&pcm, (vad_end - start_sample.min(vad_end)) as usize)
                        as u64;
                let behind = self.audio_end().saturating_sub(voice_end);
                self.timing.speech_end = Some(now - samples_to_duration(behind));
                self.timing.endpoint = Some(now);
                let utterance = self.next_utterance;
                self.next_utterance += 1;
                if let Some(overlap) = self.overlap.as_mut() {
                    overlap.in_speech = false;
                    overlap.recognising += 1;
                    let id = self.job_id();
                    self.recognitions
                        .insert(id, Recognition::Overlap(utterance));
                    self.utterances.insert(
                        utterance,
                        Utterance {
                            pcm: pcm.clone(),
                            span: (start_sample, end_sample),
                        },
                    );
                    self.out.push_back(TurnOutput::Run(Job::Recognize {
                        id,
                        pcm,
                        guess: false,
                        listening: self.listening(),
                    }));
                    return;
                }
                self.utterances.insert(
                    utterance,
                    Utterance {
                        pcm,
                        span: (start_sample, end_sample),
                    },
                );
                self.speech_ended(now, utterance);
            }
        }
    }

    fn on_recognized(
        &mut self,
        now: Instant,
        id: JobId,
        result: Result<Transcript, String>,
        meaning: Option<String>,
    ) {
        match self.recognitions.remove(&id) {
            Some(Recognition::Turn(utterance)) => {
                self.on_turn_transcript(now, utterance, result, meaning)
            }
            Some(Recognition::Overlap(utterance)) => {
                self.on_overlap_transcript(now, utterance, result)
            }
            Some(Recognition::Guess) => {
                if let Some(spec) = self.speculation.as_mut().filter(|s| s.recognition == id) {
                    let expecting = self.conv.expecting();
                    let semantic = self.cfg.semantic_end_of_turn;
                    let complete = semantic
                        && result
                            .as_ref()
                            .is_ok_and(|t| expecting.is_complete(&t.text));
                    // Words that stop mid-thought: this pause is not the end of the turn.
                    self.hold_open = semantic
                        && result
                            .as_ref()
                            .is_ok_and(|t| expecting.is_unfinished(&t.text));
                    spec.transcript = Some(result);
                    spec.meaning = meaning;
                    self.speculate_generation(now);
                    // The words at the pause are the whole answer awaited: the turn ends now,
                    // not after the endpoint silence.
                    if complete {
                        if let Some(event) = self.endpointer.end_at_pause() {
                            tracing::debug!(
                                "the answer awaited is complete: turn ended at the pause"
                            );
                            self.on_endpoint(now, event);
                        }
                    }
                }
            }
            None => {}
        }
    }

    fn on_turn_transcript(
        &mut self,
        now: Instant,
        utterance: u64,
        result: Result<Transcript, String>,
        meaning: Option<String>,
    ) {
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
                    meaning,
                }
            }
            Err(error) => {
                tracing::warn!(utterance, "recognition failed: {error}");
                Input::RecognitionFailed { utterance, error }
            }
        };
        self.converse(now, input);
        // The turn is decided: a guess still running was not what it needed.
        self.drop_speculation();
    }

    /// The words of speech over the agent: none (a cough, a noise) or a backchannel, and the
    /// held reply goes on; words (or a failed recognition), and they are a turn that
    /// interrupts it.
    fn on_overlap_transcript(
        &mut self,
        now: Instant,
        utterance: u64,
        result: Result<Transcript, String>,
    ) {
        let (text, confidence, no_speech) = match &result {
            Ok(t) => (
                clean_transcript(&t.text),
                mean_word_probability(t),
                t.segments
                    .iter()
                    .map(|s| s.no_speech_probability)
                    .fold(0.0f32, f32::max),
            ),
            Err(e) => {
                tracing::warn!(
                    utterance,
                    "recognition of speech over the agent failed: {e}"
                );
                (String::new(), 0.0, 1.0)
            }
        };
        tracing::info!(utterance, heard = %text, confidence, no_speech, "speech over the agent recognised");
        // A failed recognition is not taken for noise: the caller may have said something, and
        // the conversation asks them to say it again.
        let listening_noise = result.is_ok() && (text.is_empty() || self.is_backchannel(&text));
        if listening_noise {
            self.utterances.remove(&utterance);
            let Some(overlap) = self.overlap.as_mut() else {
                // The agent was interrupted by earlier words: this was only noise after them.
                return;
            };
            overlap.recognising = overlap.recognising.saturating_sub(1);
            if overlap.recognising == 0 && !overlap.in_speech {
                self.overlap = None;
                self.false_interruptions += 1;
                tracing::info!(heard = %text, "not an interruption: the agent goes on where it stopped");
                self.set_hold(false);
            }
            return;
        }
        tracing::info!(utterance, heard = %text, "the caller interrupts the agent");
        self.overlap = None;
        self.known_transcripts.insert(utterance, result);
        // What the conversation would have seen had it been told at once.
        self.converse(now, Input::SpeechStarted);
        self.speech_ended(now, utterance);
    }

    /// Tells the conversation the caller's turn ended (and when their speech did).
    fn speech_ended(&mut self, now: Instant, utterance: u64) {
        let ended_at = self.timing.speech_end.unwrap_or(now);
        self.converse(
            now,
            Input::SpeechEnded {
                utterance,
                ended_at,
            },
        );
    }

    fn is_backchannel(&self, text: &str) -> bool {
        let said = normalise(text);
        self.cfg.backchannels.contains(&said)
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
        let id = self.job_id();
        self.recognitions.insert(id, Recognition::Guess);
        self.out.push_back(TurnOutput::Run(Job::Recognize {
            id,
            pcm,
            guess: true,
            listening: self.listening(),
        }));
        self.speculation = Some(Speculation {
            recognition: id,
            span: (start_sample, end_sample),
            transcript: None,
            meaning: None,
            generation: None,
        });
    }

    /// The pause's transcript is in and the caller is still silent: if the conversation would
    /// hand it to the model, start that generation now (on a copy of the conversation, so
    /// nothing is decided until the turn really ends).
    fn speculate_generation(&mut self, now: Instant) {
        if self.conv.state() != ConversationState::Listening {
            return;
        }
        let Some(Speculation {
            transcript: Some(Ok(transcript)),
            generation: None,
            meaning,
            ..
        }) = &self.speculation
        else {
            return;
        };
        let said = transcript.text.clone();
        let meaning = meaning.clone();
        let mut probe = self.conv.clone();
        let utterance = self.next_utterance;
        let _ = probe.handle(
            now,
            Input::SpeechEnded {
                utterance,
                ended_at: now,
            },
        );
        let actions = probe.handle(
            now,
            Input::Transcript {
                utterance,
                text: clean_transcript(&said),
                meaning,
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
        let id = self.job_id();
        let job = Job::Generate {
            id,
            history: history.clone(),
            budget: Budget {
                max_tokens: *max_tokens,
                max_time: *max_time,
            },
            guess: true,
        };
        tracing::debug!(text = %said, "speculative reply started on the pause");
        if let Some(spec) = self.speculation.as_mut() {
            spec.generation = Some(GuessedGeneration {
                job: id,
                action,
                buffered: Vec::new(),
            });
        }
        self.out.push_back(TurnOutput::Run(job));
    }

    fn is_guessed_generation(&self, id: JobId) -> bool {
        self.speculation
            .as_ref()
            .and_then(|s| s.generation.as_ref())
            .is_some_and(|g| g.job == id)
    }

    /// A result of a generation not adopted yet: kept to replay if it is, unless the guess
    /// failed (the turn then starts its own).
    fn on_guessed_generation(&mut self, result: EngineResult) {
        let Some(spec) = self.speculation.as_mut() else {
            return;
        };
        if matches!(
            result,
            EngineResult::GenerationFailed { .. } | EngineResult::Busy { .. }
        ) {
            tracing::debug!("speculative reply not started or failed: the turn asks anew");
            spec.generation = None;
            return;
        }
        if let Some(g) = spec.generation.as_mut() {
            g.buffered.push(result);
        }
    }

    /// The turn `utterance` ended with the audio a speculation recognised: its transcript (now
    /// or when it arrives) is the turn's. False when there is no such speculation.
    fn adopt_transcript(&mut self, utterance: u64, span: Option<(u64, u64)>) -> bool {
        let Some(spec) = self.speculation.as_mut().filter(|s| Some(s.span) == span) else {
            return false;
        };
        let id = spec.recognition;
        self.recognitions.insert(id, Recognition::Turn(utterance));
        match spec.transcript.take() {
            // Its generation, if one was guessed, waits for the turn to ask for it.
            Some(result) => {
                tracing::debug!(utterance, "speculative recognition adopted");
                let meaning = spec.meaning.take();
                self.replay.push_back(EngineResult::Recognized {
                    id,
                    result,
                    meaning,
                });
            }
            // Still running: no generation was guessed, the speculation is spent.
            None => {
                tracing::debug!(utterance, "speculative recognition adopted on arrival");
                self.speculation = None;
            }
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
        self.generation = Some((turn, generation.job));
        self.replay.extend(generation.buffered);
        self.speculation = None;
        true
    }

    /// Forgets the speculation, cancelling a generation nobody adopted.
    fn drop_speculation(&mut self) {
        self.hold_open = false;
        if let Some(spec) = self.speculation.take() {
            if self.recognitions.get(&spec.recognition) == Some(&Recognition::Guess) {
                self.recognitions.remove(&spec.recognition);
            }
            if let Some(g) = spec.generation {
                self.out.push_back(TurnOutput::Cancel(g.job));
            }
        }
    }

    fn trim_audio(&mut self) {
        let keep_from = self
            .vad_done
            .saturating_sub(KEEP_SAMPLES)
            .max(self.audio_base);
        let drop = (keep_from - self.audio_base) as usize;
        if drop > 0 {
            self.audio.drain(..drop);
            self.audio_base = keep_from;
        }
    }

    fn on_audio(&mut self, now: Instant, id: JobId, result: Result<PromptAudio, String>) {
        let (audio, error) = match result {
            Ok(audio) => (Some(audio), None),
            Err(e) => (None, Some(e)),
        };
        let Some(source) = self.playout.complete(id, audio) else {
            return;
        };
        if let Some(error) = error {
            match source {
                Source::Prompt => tracing::warn!("prompt has no audio: {error}"),
                Source::Clause => {
                    tracing::warn!("reply not synthesized: {error}");
                    self.converse(now, Input::SynthesisFailed { error });
                }
            }
        }
        self.play_ready(now);
    }

    fn play_ready(&mut self, now: Instant) {
        for audio in self.playout.take_playable() {
            self.timing.first_audio.get_or_insert(now);
            if self.timing.endpoint.is_some() {
                self.timing.first_rtp.get_or_insert(now);
            }
            self.out.push_back(TurnOutput::Play(audio));
        }
    }

    /// Barge-in: one interruption for every stage that still holds some of the reply: the
    /// held and queued audio, synthesis under way, and the generation.
    fn interrupt(&mut self) {
        self.out.push_back(TurnOutput::Flush);
        self.held = false;
        for job in self.playout.interrupt() {
            self.out.push_back(TurnOutput::Cancel(job));
        }
        if let Some((_, job)) = self.generation.take() {
            self.out.push_back(TurnOutput::Cancel(job));
        }
        tracing::info!("barge-in: playback stopped");
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Play(prompt) => {
                    let id = self.job_id();
                    self.playout.expect(id, Source::Prompt);
                    self.out
                        .push_back(TurnOutput::Run(Job::Prompt { id, prompt }));
                }
                Action::Say(text) => {
                    let id = self.job_id();
                    self.playout.expect(id, Source::Clause);
                    self.out
                        .push_back(TurnOutput::Run(Job::Synthesize { id, text }));
                }
                Action::StopPlayback => self.interrupt(),
                Action::Transcribe {
                    utterance,
                    join_previous,
                } => self.transcribe(utterance, join_previous),
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
                    let id = self.job_id();
                    self.generation = Some((turn, id));
                    self.out.push_back(TurnOutput::Run(Job::Generate {
                        id,
                        history,
                        budget: Budget {
                            max_tokens,
                            max_time,
                        },
                        guess: false,
                    }));
                }
                Action::CancelGeneration { turn } => {
                    if let Some((t, job)) = self.generation {
                        if t == turn {
                            self.generation = None;
                            self.out.push_back(TurnOutput::Cancel(job));
                        }
                    }
                }
                Action::Extract { turn, said, slots } => {
                    let id = self.job_id();
                    self.extractions.insert(id, turn);
                    // Never cut the JSON (a token is at least a character); the reply budget
                    // bounds the time.
                    let budget = Budget {
                        max_tokens: super::slots::max_output_chars(&slots) + 8,
                        max_time: Duration::from_millis(u64::from(self.cfg.max_reply_ms)),
                    };
                    self.out.push_back(TurnOutput::Run(Job::Extract {
                        id,
                        said,
                        slots,
                        budget,
                    }));
                }
                Action::Transfer { target } => self
                    .out
                    .push_back(TurnOutput::Directive(Directive::Transfer(target))),
                Action::Hangup => self.out.push_back(TurnOutput::Directive(Directive::Hangup)),
                Action::RecordTurn(turn) => self.record_turn(turn),
                Action::Prefill { history } => self
                    .out
                    .push_back(TurnOutput::Run(Job::Prefill { history })),
            }
        }
    }

    /// What the caller is expected to say now, for recognition.
    fn listening(&self) -> Listening {
        match self.conv.expecting() {
            Expecting::Digits(_) => Listening::Digits,
            _ => Listening::Speech,
        }
    }

    fn transcribe(&mut self, utterance: u64, join_previous: bool) {
        let Utterance { mut pcm, span } = self.utterances.remove(&utterance).unwrap_or(Utterance {
            pcm: Vec::new(),
            span: (0, 0),
        });
        if let Some(result) = self.known_transcripts.remove(&utterance) {
            if !join_previous {
                let id = self.job_id();
                self.recognitions.insert(id, Recognition::Turn(utterance));
                self.replay.push_back(EngineResult::Recognized {
                    id,
                    result,
                    meaning: None,
                });
                self.last_utterance = Some(pcm);
                return;
            }
        }
        if !join_previous && self.adopt_transcript(utterance, Some(span)) {
            self.last_utterance = Some(pcm);
            return;
        }
        self.drop_speculation();
        if join_previous {
            if let Some(mut before) = self.last_utterance.take() {
                before.extend_from_slice(&pcm);
                pcm = before;
            }
        }
        self.last_utterance = Some(pcm.clone());
        let id = self.job_id();
        self.recognitions.insert(id, Recognition::Turn(utterance));
        self.out.push_back(TurnOutput::Run(Job::Recognize {
            id,
            pcm,
            guess: false,
            listening: self.listening(),
        }));
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
    fn refresh_latency(&mut self) {
        let Some(turn) = self.last_spoken_turn else {
            return;
        };
        let latency = self.latency();
        if let Some(entry) = self.turns.iter_mut().find(|t| t.turn.turn == turn) {
            if entry.latency != latency {
                entry.latency = latency;
                self.out.push_back(TurnOutput::Turn(entry.clone()));
            }
        }
    }

    fn record_turn(&mut self, turn: TurnRecord) {
        let since = |t: Option<Instant>| match (self.answered, t) {
            (Some(answered), Some(t)) => {
                Some(t.saturating_duration_since(answered).as_millis() as u64)
            }
            _ => None,
        };
        let spoken = matches!(turn.input, CallerInput::Speech(_));
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
        let merged = match self
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
                *existing = entry;
                existing.turn.errors = errors;
                existing.turn.interrupted = interrupted;
                existing.clone()
            }
            None => {
                self.turns.push(entry.clone());
                entry
            }
        };
        self.out.push_back(TurnOutput::Turn(merged));
    }
}

/// Where the voice in `pcm[..vad_end]` ends: the end of the last 10 ms frame within 20 dB of
/// the utterance's loudest frame, searched back from the VAD's end over at most 320 ms.
fn last_voiced_sample(pcm: &[f32], vad_end: usize) -> usize {
    const FRAME: usize = 160;
    const SEARCH: usize = 32 * FRAME;
    let vad_end = vad_end.min(pcm.len());
    let rms = |f: &[f32]| (f.iter().map(|s| s * s).sum::<f32>() / f.len().max(1) as f32).sqrt();
    let peak = pcm[..vad_end].chunks(FRAME).map(rms).fold(0.0f32, f32::max);
    if peak <= 0.0 {
        return vad_end;
    }
    let floor = peak * 0.1;
    let mut end = vad_end;
    let stop = vad_end.saturating_sub(SEARCH);
    while end >= stop + FRAME {
        if rms(&pcm[end - FRAME..end]) >= floor {
            return end;
        }
        end -= FRAME;
    }
    end
}

fn samples_to_duration(samples: u64) -> Duration {
    Duration::from_micros(samples * 1_000_000 / u64::from(ASR_SAMPLE_RATE))
}

/// whisper's mean probability of the words it wrote (0 when it wrote none).
fn mean_word_probability(t: &Transcript) -> f32 {
    let (sum, n) = t
        .words()
        .fold((0.0f32, 0usize), |(s, n), w| (s + w.probability, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f32
    }
}

/// Lower case, letters, digits and apostrophes, single spaces: "Mhm." and "mhm" are one.
fn normalise(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c.to_ascii_lowercase()
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whisper marks non-speech as "[BLANK_AUDIO]", "(coughs)", "[Music]", "*unintelligible*":
/// not words.
pub fn clean_transcript(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0i32;
    let mut starred = false;
    for c in text.chars() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth = (depth - 1).max(0),
            '*' => starred = !starred,
            _ if depth == 0 && !starred => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}
