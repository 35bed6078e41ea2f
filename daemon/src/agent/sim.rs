//! Test support: deterministic fakes of the speech engines (behind the same traits as the real
//! ones) and a whole agent call run in simulated time: the turn engine, the real media engine
//! on the way out (RTP packets every 20 ms), a scripted caller on the way in.
//!
//! The fakes agree on a code instead of speech: the caller "says" a sentence as a tone whose
//! frequency stands for it, the recognizer hears the tone's frequency and writes the sentence
//! back; noise (a cough) has no tone and is heard as nothing, as whisper marks it "(coughs)".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::turns::{
    AgentTurn, Directive, EngineResult, Job, JobId, TurnConfig, TurnEngine, TurnOutput,
};
use super::{AgentSpec, Conversation, Prompt};
use crate::config::AgentConfig;
use crate::speech::vad::WINDOW_SAMPLES;
use crate::speech::{
    AsrError, AsrSession, Budget, ChatMessage, Generation, LanguageModel, LlmError, LlmSession,
    Segment, SpeechRecognizer, SpeechSynthesizer, StopReason, Synthesis, Transcript, TtsError,
    VoiceActivity, ASR_SAMPLE_RATE,
};
use crate::telephony::codec::{Codec, Direction, Negotiated};
use crate::telephony::media::{MediaConfig, MediaEvent, MediaSession, TransmitKind};

const FRAME: Duration = Duration::from_millis(20);
const FRAME_SAMPLES: usize = ASR_SAMPLE_RATE as usize / 50;

/// The tone that stands for sentence `index` of a script.
fn tone_hz(index: usize) -> f32 {
    400.0 + 150.0 * index as f32
}

fn tone(hz: f32, rate: u32, ms: u64, amplitude: f32) -> Vec<f32> {
    let n = (u64::from(rate) * ms / 1000) as usize;
    (0..n)
        .map(|i| amplitude * (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin())
        .collect()
}

/// Deterministic white noise (a cough, a door).
fn noise(rate: u32, ms: u64, amplitude: f32) -> Vec<f32> {
    let n = (u64::from(rate) * ms / 1000) as usize;
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            amplitude * ((x as f32 / u32::MAX as f32) * 2.0 - 1.0)
        })
        .collect()
}

fn rms(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|s| s * s).sum::<f32>() / x.len() as f32).sqrt()
}

/// VAD fake: a window is speech when it is loud.
#[derive(Debug, Default)]
pub struct EnergyVad;

impl VoiceActivity for EnergyVad {
    fn process(&mut self, windows: &[f32]) -> Result<Vec<f32>, AsrError> {
        Ok(windows
            .chunks_exact(WINDOW_SAMPLES)
            .map(|w| if rms(w) > 0.02 { 0.95 } else { 0.02 })
            .collect())
    }
}

/// Recognizer fake: each loud stretch's tone is looked up in the script's sentences; noise
/// (no steady tone) is no words.
#[derive(Debug, Clone, Default)]
pub struct ScriptedRecognizer {
    pub sentences: Vec<String>,
}

impl ScriptedRecognizer {
    fn sentence_for(&self, stretch: &[f32]) -> Option<String> {
        // Zero crossings give a tone's frequency; noise crosses far more often and unevenly.
        let crossings = stretch
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        let hz = crossings as f32 * ASR_SAMPLE_RATE as f32 / (2.0 * stretch.len() as f32);
        self.sentences
            .iter()
            .enumerate()
            .find(|(i, _)| (hz - tone_hz(*i)).abs() < 40.0)
            .map(|(_, s)| s.clone())
    }
}

impl AsrSession for ScriptedRecognizer {
    fn transcribe(&mut self, pcm_16k: &[f32]) -> Result<Transcript, AsrError> {
        let loud: Vec<bool> = pcm_16k.chunks(160).map(|c| rms(c) > 0.02).collect();
        let mut said = Vec::new();
        let mut i = 0;
        while i < loud.len() {
            if !loud[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < loud.len() && loud[i] {
                i += 1;
            }
            let stretch = &pcm_16k[start * 160..(i * 160).min(pcm_16k.len())];
            said.extend(self.sentence_for(stretch));
        }
        let text = said.join(" ");
        Ok(Transcript {
            text: if text.is_empty() {
                "(coughs)".to_owned()
            } else {
                text.clone()
            },
            segments: vec![Segment {
                text,
                start_ms: 0,
                end_ms: pcm_16k.len() as u64 / 16,
                words: Vec::new(),
                no_speech_probability: 0.0,
            }],
            audio: Duration::from_millis(pcm_16k.len() as u64 / 16),
            elapsed: Duration::ZERO,
            audio_ctx: 0,
        })
    }
}

impl SpeechRecognizer for ScriptedRecognizer {
    fn session(&self) -> Result<Box<dyn AsrSession + '_>, AsrError> {
        Ok(Box::new(self.clone()))
    }
}

/// Language model fake: the reply is the script's for the caller's last words (or a default),
/// one word a token.
#[derive(Debug, Clone, Default)]
pub struct ScriptedModel {
    pub replies: HashMap<String, String>,
    pub default_reply: String,
}

impl LanguageModel for ScriptedModel {
    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        Ok(messages
            .iter()
            .map(|m| format!("{}: {}\n", m.role, m.content))
            .collect())
    }

    fn session(&self) -> Result<Box<dyn LlmSession + '_>, LlmError> {
        Ok(Box::new(self.clone()))
    }
}

impl LlmSession for ScriptedModel {
    fn prime(&mut self, _prompt: &str) -> Result<(), LlmError> {
        Ok(())
    }

    fn generate(
        &mut self,
        prompt: &str,
        budget: Budget,
        on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, LlmError> {
        let last_user = prompt
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("user: "))
            .unwrap_or("");
        let reply = self.replies.get(last_user).unwrap_or(&self.default_reply);
        let mut text = String::new();
        let mut generated = 0;
        let mut stop = StopReason::EndOfTurn;
        for (i, word) in reply.split_whitespace().enumerate() {
            if generated == budget.max_tokens as usize {
                stop = StopReason::MaxTokens;
                break;
            }
            let piece = if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            };
            text.push_str(&piece);
            generated += 1;
            if on_token(&piece).is_break() {
                stop = StopReason::Cancelled;
                break;
            }
        }
        Ok(Generation {
            text,
            stop,
            prompt_tokens: 0,
            cached_tokens: 0,
            generated_tokens: generated,
            first_token: None,
            elapsed: Duration::ZERO,
        })
    }
}

/// Voice fake: a tone per clause, `ms_per_word` long, its pitch from the text (so the order of
/// clauses can be told on the wire).
#[derive(Debug, Clone)]
pub struct ToneVoice {
    pub ms_per_word: u64,
}

impl ToneVoice {
    pub fn pitch(text: &str) -> f32 {
        let h = text
            .bytes()
            .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        300.0 + (h % 20) as f32 * 50.0
    }
}

impl SpeechSynthesizer for ToneVoice {
    fn sample_rate(&self) -> u32 {
        8000
    }

    fn synthesize(&self, text: &str) -> Result<Synthesis, TtsError> {
        let words = text.split_whitespace().count().max(1) as u64;
        let pcm = tone(Self::pitch(text), 8000, words * self.ms_per_word, 0.3)
            .into_iter()
            .map(|s| (s * 32767.0) as i16)
            .collect();
        Ok(Synthesis {
            pcm,
            sample_rate: 8000,
            elapsed: Duration::ZERO,
        })
    }
}

/// How long each engine takes, in simulated time.
#[derive(Debug, Clone)]
pub struct Delays {
    pub vad: Duration,
    pub asr: Duration,
    pub first_token: Duration,
    pub per_token: Duration,
    /// Synthesis of the n-th clause asked for (the last entry for the rest).
    pub tts: Vec<Duration>,
    pub extract: Duration,
}

impl Default for Delays {
    fn default() -> Self {
        Self {
            vad: Duration::from_millis(2),
            asr: Duration::from_millis(150),
            first_token: Duration::from_millis(120),
            per_token: Duration::from_millis(40),
            tts: vec![Duration::from_millis(60)],
            extract: Duration::from_millis(200),
        }
    }
}

/// What the caller does, from the answer on.
#[derive(Debug, Clone)]
pub enum CallerAct {
    /// Says sentence `index` of the script (a tone) for `ms`.
    Say {
        index: usize,
        ms: u64,
    },
    /// A burst of noise.
    Cough {
        ms: u64,
    },
    Key(char),
}

/// Something that happened, with its simulated time (ms since answer).
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Job(String),
    Cancel(JobId),
    Play { pitch: u32 },
    Hold(bool),
    Flush,
    Directive(Directive),
}

/// One agent call in simulated time.
pub struct SimCall {
    pub t0: Instant,
    pub now: Instant,
    pub engine: TurnEngine,
    media: MediaSession,
    vad: EnergyVad,
    asr: ScriptedRecognizer,
    llm: ScriptedModel,
    voice: ToneVoice,
    prompts: HashMap<Prompt, String>,
    pub delays: Delays,
    /// Recognition fails from this time (ms since answer) on.
    pub asr_fails_from_ms: Option<u64>,
    /// Results due later: (due, order, result).
    due: BTreeMap<(Instant, u64), EngineResult>,
    order: u64,
    clauses_asked: usize,
    cancelled: HashSet<JobId>,
    /// The caller's audio (16 kHz) from the answer on, and what was fed so far.
    caller: Vec<f32>,
    fed: usize,
    keys: Vec<(Instant, char)>,
    next_frame: Instant,
    pub turns: Vec<AgentTurn>,
    pub seen: Vec<(u64, Seen)>,
    /// Each RTP packet sent: (ms since answer, carries audio).
    pub sent: Vec<(u64, bool)>,
    pub ended: bool,
}

pub fn sentences(script: &[&str]) -> Vec<String> {
    script.iter().map(|s| (*s).to_owned()).collect()
}

impl SimCall {
    /// A call to an agent with `config`; the caller's sentences (tone `i` stands for
    /// `sentences[i]`) and the model's replies.
    pub fn new(config: AgentConfig, sentences: Vec<String>, llm: ScriptedModel) -> Self {
        let t0 = Instant::now();
        let spec = AgentSpec::new(&config);
        let prompts = Prompt::ALL
            .iter()
            .map(|p| (*p, p.text(&config).to_owned()))
            .collect();
        let engine = TurnEngine::new(TurnConfig::new(&config), Conversation::new(spec));
        let remote: SocketAddr = "127.0.0.1:40000".parse().expect("address");
        let negotiated = Negotiated {
            codec: Codec::Pcmu,
            payload_type: 0,
            dtmf_payload_type: Some(101),
            ptime_ms: 20,
            remote_rtp: remote,
            remote_rtcp: "127.0.0.1:40001".parse().expect("address"),
            direction: Direction::SendRecv,
        };
        let media = MediaSession::new(MediaConfig::new(negotiated, 7), t0).expect("media session");
        Self {
            t0,
            now: t0,
            engine,
            media,
            vad: EnergyVad,
            asr: ScriptedRecognizer { sentences },
            llm,
            voice: ToneVoice { ms_per_word: 250 },
            prompts,
            delays: Delays::default(),
            asr_fails_from_ms: None,
            due: BTreeMap::new(),
            order: 0,
            clauses_asked: 0,
            cancelled: HashSet::new(),
            caller: Vec::new(),
            fed: 0,
            keys: Vec::new(),
            next_frame: t0,
            turns: Vec::new(),
            seen: Vec::new(),
            sent: Vec::new(),
            ended: false,
        }
    }

    /// The caller acts at `at_ms` after the answer (acts are laid out in time order).
    pub fn caller(mut self, acts: &[(u64, CallerAct)]) -> Self {
        for (at_ms, act) in acts {
            let at = (*at_ms as usize) * 16;
            if self.caller.len() < at {
                self.caller.resize(at, 0.0);
            }
            match act {
                CallerAct::Say { index, ms } => {
                    self.caller
                        .extend(tone(tone_hz(*index), ASR_SAMPLE_RATE, *ms, 0.3))
                }
                CallerAct::Cough { ms } => self.caller.extend(noise(ASR_SAMPLE_RATE, *ms, 0.3)),
                CallerAct::Key(k) => self
                    .keys
                    .push((self.t0 + Duration::from_millis(*at_ms), *k)),
            }
        }
        self
    }

    pub fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.t0).as_millis() as u64
    }

    /// Answers and runs the call until `until_ms` after the answer (or it hangs up).
    pub fn run(&mut self, until_ms: u64) {
        if self.now == self.t0 && self.seen.is_empty() {
            self.engine.start(self.now);
            self.drain();
        }
        let until = self.t0 + Duration::from_millis(until_ms);
        while !self.ended {
            let mut next = self.next_frame;
            if let Some((&(t, _), _)) = self.due.first_key_value() {
                next = next.min(t);
            }
            if let Some(t) = self.engine.poll_timeout() {
                next = next.min(t.max(self.now));
            }
            if let Some(&(t, _)) = self.keys.first() {
                next = next.min(t);
            }
            if next > until {
                self.now = until;
                return;
            }
            self.now = next;
            if self.keys.first().is_some_and(|&(t, _)| t <= self.now) {
                let (_, key) = self.keys.remove(0);
                self.engine.handle_dtmf(self.now, key);
            } else if let Some(entry) = self.due.first_entry().filter(|e| e.key().0 <= self.now) {
                let result = entry.remove();
                self.engine.handle_result(self.now, result);
            } else if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
                self.engine.handle_timeout(self.now);
            } else {
                self.frame();
            }
            self.drain();
        }
    }

    /// One 20 ms tick: the caller's frame in, the media engine's packet out.
    fn frame(&mut self) {
        let to = (self.fed + FRAME_SAMPLES).min(self.caller.len());
        let mut samples = self.caller[self.fed.min(to)..to].to_vec();
        samples.resize(FRAME_SAMPLES, 0.0);
        self.fed += FRAME_SAMPLES;
        self.engine.handle_audio(self.now, &samples);
        self.media.handle_timeout(self.now);
        while let Some(t) = self.media.poll_transmit() {
            if t.kind == TransmitKind::Rtp {
                // µ-law silence is 0xFF/0x7F; anything else is sound.
                let audio = t.data[12..].iter().any(|&b| b != 0xFF && b != 0x7F);
                self.sent.push((self.ms(self.now), audio));
            }
        }
        while let Some(event) = self.media.poll_event() {
            if matches!(event, MediaEvent::PlayoutDrained) {
                self.engine.handle_playout_drained(self.now);
            }
        }
        self.next_frame += FRAME;
    }

    fn schedule(&mut self, after: Duration, result: EngineResult) {
        self.order += 1;
        self.due.insert((self.now + after, self.order), result);
    }

    fn drain(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            let at = self.ms(self.now);
            match output {
                TurnOutput::Run(job) => self.run_job(job),
                TurnOutput::Cancel(id) => {
                    self.seen.push((at, Seen::Cancel(id)));
                    self.cancelled.insert(id);
                    // A cancelled generation stops at its next token.
                    self.due
                        .retain(|_, r| !matches!(r, EngineResult::Token { id: j, .. } if *j == id));
                }
                TurnOutput::Play(audio) => {
                    let pitch = dominant_pitch(&audio.0, audio.1);
                    self.seen.push((at, Seen::Play { pitch }));
                    self.media
                        .queue_audio(&audio.0, audio.1)
                        .expect("queue audio");
                }
                TurnOutput::Hold(h) => {
                    self.seen.push((at, Seen::Hold(h)));
                    self.media.hold_outgoing(h);
                }
                TurnOutput::Flush => {
                    self.seen.push((at, Seen::Flush));
                    self.media.flush_outgoing();
                }
                TurnOutput::Turn(turn) => {
                    match self
                        .turns
                        .iter_mut()
                        .find(|t| t.turn.turn == turn.turn.turn)
                    {
                        Some(t) => *t = turn,
                        None => self.turns.push(turn),
                    }
                }
                TurnOutput::Directive(d) => {
                    self.seen.push((at, Seen::Directive(d.clone())));
                    if d == Directive::Hangup {
                        self.ended = true;
                    }
                }
            }
        }
    }

    fn run_job(&mut self, job: Job) {
        let at = self.ms(self.now);
        let name = match &job {
            Job::DetectSpeech { .. } => None,
            Job::Recognize { guess, .. } => Some(format!("recognize guess={guess}")),
            Job::Generate { guess, .. } => Some(format!("generate guess={guess}")),
            Job::Extract { .. } => Some("extract".to_owned()),
            Job::Synthesize { text, .. } => Some(format!("say {text}")),
            Job::Prompt { prompt, .. } => Some(format!("prompt {prompt:?}")),
            Job::Prefill { .. } => Some("prefill".to_owned()),
        };
        if let Some(name) = name {
            self.seen.push((at, Seen::Job(name)));
        }
        match job {
            Job::DetectSpeech { samples } => {
                let result = self.vad.process(&samples).map_err(|e| e.to_string());
                self.schedule(self.delays.vad, EngineResult::SpeechDetected(result));
            }
            Job::Recognize { id, pcm, .. } => {
                let result = match self.asr_fails_from_ms {
                    Some(from) if at >= from => Err("the decoder failed".to_owned()),
                    _ => self.asr.transcribe(&pcm).map_err(|e| e.to_string()),
                };
                self.schedule(
                    self.delays.asr,
                    EngineResult::Recognized {
                        id,
                        result,
                        meaning: None,
                    },
                );
            }
            Job::Generate {
                id,
                history,
                budget,
                ..
            } => {
                let prompt = self.llm.chat_prompt(&history).expect("prompt");
                let mut tokens = Vec::new();
                let generation = self
                    .llm
                    .generate(&prompt, budget, &mut |t| {
                        tokens.push(t.to_owned());
                        ControlFlow::Continue(())
                    })
                    .expect("generate");
                let mut after = self.delays.first_token;
                for text in tokens {
                    self.schedule(after, EngineResult::Token { id, text });
                    after += self.delays.per_token;
                }
                self.schedule(after, EngineResult::Generated { id, generation });
            }
            Job::Extract { id, .. } => {
                self.schedule(
                    self.delays.extract,
                    EngineResult::Extracted {
                        id,
                        result: Ok(BTreeMap::new()),
                    },
                );
            }
            Job::Synthesize { id, text } => {
                let n = self.clauses_asked;
                self.clauses_asked += 1;
                let delay = *self
                    .delays
                    .tts
                    .get(n)
                    .or(self.delays.tts.last())
                    .expect("a synthesis delay");
                let result = self
                    .voice
                    .synthesize(&text)
                    .map(|s| std::sync::Arc::new((s.pcm, s.sample_rate)))
                    .map_err(|e| e.to_string());
                self.schedule(delay, EngineResult::Audio { id, result });
            }
            Job::Prompt { id, prompt } => {
                let text = self.prompts.get(&prompt).cloned().unwrap_or_default();
                let result = self
                    .voice
                    .synthesize(&text)
                    .map(|s| std::sync::Arc::new((s.pcm, s.sample_rate)))
                    .map_err(|e| e.to_string());
                // Cached: known at once.
                self.engine
                    .handle_result(self.now, EngineResult::Audio { id, result });
            }
            // Only the model's cache would change: nothing to answer.
            Job::Prefill { .. } => {}
        }
    }

    /// The jobs asked for, by name, in order.
    pub fn jobs(&self) -> Vec<&str> {
        self.seen
            .iter()
            .filter_map(|(_, s)| match s {
                Seen::Job(name) => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// When something was first seen (ms since answer).
    pub fn first(&self, what: impl Fn(&Seen) -> bool) -> Option<u64> {
        self.seen.iter().find(|(_, s)| what(s)).map(|(t, _)| *t)
    }

    /// Packets with audio sent in `from..to` ms.
    pub fn audio_packets(&self, from: u64, to: u64) -> usize {
        self.sent
            .iter()
            .filter(|(t, audio)| *audio && (from..to).contains(t))
            .count()
    }
}

/// The pitch a [`ToneVoice`] clause was made with, from its zero crossings (Hz, rounded to 50).
pub fn dominant_pitch(pcm: &[i16], rate: u32) -> u32 {
    let crossings = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    let hz = crossings as f32 * rate as f32 / (2.0 * pcm.len().max(1) as f32);
    ((hz / 50.0).round() * 50.0) as u32
}
