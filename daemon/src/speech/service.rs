//! The daemon's speech engines: each model loaded once, inference on dedicated threads behind
//! bounded queues (`pool`), one llama context whose sequence 0 holds the system prompt and is
//! shared with every call's sequence, and the fixed prompts rendered once (and kept on disk, so a
//! voice that fails later still leaves the agent its prompts).
//!
//! Calls talk to it through [`CallSpeech`] (one per call): it holds the call's LLM sequence and
//! returns results on tokio channels, so the call task never blocks.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::pool::{Priority, QueueFull, WorkerPool};
use super::{
    AsrError, Budget, ChatMessage, Generation, Listening, LlamaEngine, LlamaSession, LlmConfig,
    LlmError, PiperConfig, PiperSynthesizer, SileroVad, SpeechSynthesizer, StopReason, Transcript,
    TtsError, WhisperConfig, WhisperRecognizer, WhisperSession, LLM_MODEL_FILE, TTS_VOICE_FILE,
    VAD_MODEL_FILE, WHISPER_MODEL_FILE,
};
use crate::config::Config;

/// What the agent layer needs of the engines, prepared by it (`agent::AgentSpec::speech_plan`):
/// the system prompt every call's context starts from, and the texts to render at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpeechPlan {
    pub system_prompt: String,
    /// Fixed prompts: without audio for each (the voice, or its cache) the agent cannot run.
    pub prompts: Vec<String>,
    /// Said often (facts, fixed replies): pre-rendered when the voice can.
    pub phrases: Vec<String>,
}

/// A prompt's audio: mono PCM and its rate.
pub type PromptAudio = Arc<(Vec<i16>, u32)>;

/// Why the agent cannot take calls.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpeechUnavailable {
    #[error("speech recognition unavailable: {0}")]
    Asr(String),
    #[error("no voice and no cached prompts: {0}")]
    Voice(String),
    #[error("could not start inference threads: {0}")]
    Threads(String),
}

/// What a caller turn's generation reports.
#[derive(Debug)]
pub enum LlmEvent {
    /// A piece of text as generated.
    Token(String),
    Done(Generation),
    Failed(String),
}

/// Lengths and memory of what was loaded, for status and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpeechStatus {
    pub asr: String,
    pub llm: String,
    pub tts: String,
    pub system_prompt_tokens: usize,
    pub agent_calls: usize,
    pub agent_call_limit: usize,
    pub asr_queue: usize,
    pub llm_queue: usize,
    pub tts_queue: usize,
}

/// The language model and the one context all calls share. A llama context borrows its model,
/// and both live here together: the engine is boxed (its address never changes), lent to the
/// context as `&'static`, and freed in [`Drop`] only after the context is gone. Nothing else
/// gets the `'static` borrow: [`LlmShared::engine`] ties it to `&self`.
struct LlmShared {
    session: ManuallyDrop<Mutex<LlamaSession<'static>>>,
    engine_box: *mut LlamaEngine,
    system: String,
    system_tokens: usize,
    per_call_tokens: usize,
}

impl LlmShared {
    fn engine(&self) -> &LlamaEngine {
        // SAFETY: the box lives until Drop, which cannot run while `&self` is borrowed.
        unsafe { &*self.engine_box }
    }
}

impl Drop for LlmShared {
    fn drop(&mut self) {
        // SAFETY: the context (which borrows the engine) goes first, then the engine, boxed
        // by load_llm and freed nowhere else; neither is used again.
        unsafe {
            ManuallyDrop::drop(&mut self.session);
            drop(Box::from_raw(self.engine_box));
        }
    }
}

// SAFETY: LlmShared holds a `LlamaEngine` (through the raw pointer, only ever read through `&`)
// and a `Mutex<LlamaSession>`; both are Send + Sync themselves (checked below), the raw pointer
// is all that hides it from the compiler.
unsafe impl Send for LlmShared {}
unsafe impl Sync for LlmShared {}
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<LlamaEngine>();
    send_sync::<Mutex<LlamaSession<'static>>>();
};

pub struct SpeechService {
    asr: Arc<WhisperRecognizer>,
    asr_sessions: Arc<Mutex<Vec<WhisperSession>>>,
    asr_pool: WorkerPool,
    llm: Option<Arc<LlmShared>>,
    llm_error: Option<String>,
    llm_pool: WorkerPool,
    free_slots: Mutex<Vec<usize>>,
    slot_count: usize,
    tts: Option<Arc<dyn SpeechSynthesizer>>,
    tts_error: Option<String>,
    tts_pool: WorkerPool,
    /// Prompts, facts and fixed replies, by their exact text.
    phrases: HashMap<String, PromptAudio>,
    vad_model: PathBuf,
}

impl std::fmt::Debug for SpeechService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeechService").finish_non_exhaustive()
    }
}

/// Calls the agent serves at once: each holds an LLM sequence (memory) and their turns share
/// the engine threads. `sip.max_calls` above it get 503 for agent calls.
pub fn agent_call_limit(config: &Config) -> usize {
    (config.sip.max_calls as usize).clamp(1, 32)
}

impl SpeechService {
    /// Loads every engine `config` names (blocking: seconds). Whisper and a voice (or cached
    /// prompts) are required; without the language model the agent answers from intents and
    /// templates only.
    pub fn load(config: &Config, plan: &SpeechPlan) -> Result<Self, SpeechUnavailable> {
        let started = Instant::now();
        let models = &config.models.dir;
        let speech = &config.speech;
        let depth = speech.queue_depth as usize;

        let mut wcfg =
            WhisperConfig::new(config.models.file(&config.models.asr, WHISPER_MODEL_FILE));
        wcfg.threads = speech.asr_threads;
        let asr =
            WhisperRecognizer::load(wcfg).map_err(|e| SpeechUnavailable::Asr(e.to_string()))?;
        let asr = Arc::new(asr);
        let vad_model = models.join(VAD_MODEL_FILE);
        SileroVad::load(&vad_model).map_err(|e| SpeechUnavailable::Asr(e.to_string()))?;

        let slot_count = agent_call_limit(config);
        let (llm, llm_error) = match load_llm(config, &plan.system_prompt, slot_count) {
            Ok(l) => (Some(Arc::new(l)), None),
            Err(e) => {
                tracing::error!("language model unavailable, the agent answers from intents and templates only: {e}");
                (None, Some(e.to_string()))
            }
        };

        let onnx = if speech.onnxruntime.as_os_str().is_empty() {
            super::default_onnxruntime(models)
        } else {
            speech.onnxruntime.clone()
        };
        let mut pcfg = PiperConfig::new(models.join(TTS_VOICE_FILE), onnx);
        pcfg.threads = speech.tts_threads as usize;
        let (tts, tts_error): (Option<Arc<dyn SpeechSynthesizer>>, _) =
            match PiperSynthesizer::load(pcfg) {
                Ok(t) => (Some(Arc::new(t)), None),
                Err(e) => {
                    tracing::error!(
                        "speech synthesis unavailable, the agent uses its cached prompts only: {e}"
                    );
                    (None, Some(e.to_string()))
                }
            };
        let cache_dir = config.daemon.state_dir.join("prompts");
        let mut phrases = render_prompts(&plan.prompts, tts.as_deref(), &cache_dir)
            .map_err(SpeechUnavailable::Voice)?;
        for (text, audio) in render_phrases(&plan.phrases, tts.as_deref(), &cache_dir) {
            phrases.entry(text).or_insert(audio);
        }

        let threads = |e: std::io::Error| SpeechUnavailable::Threads(e.to_string());
        let service = Self {
            asr,
            asr_sessions: Arc::new(Mutex::new(Vec::new())),
            asr_pool: WorkerPool::new("asr", 1, depth).map_err(threads)?,
            llm,
            llm_error,
            llm_pool: WorkerPool::new("llm", 1, depth).map_err(threads)?,
            free_slots: Mutex::new((1..=slot_count).rev().collect()),
            slot_count,
            tts,
            tts_error,
            tts_pool: WorkerPool::new("tts", 1, depth).map_err(threads)?,
            phrases,
            vad_model,
        };
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            system_prompt_tokens = service.llm.as_ref().map_or(0, |l| l.system_tokens),
            agent_calls = slot_count,
            "speech engines loaded"
        );
        Ok(service)
    }

    /// Optional engines that did not load, with why: the agent runs without them (templates
    /// instead of the model, cached prompts instead of the voice).
    pub fn degraded(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.llm.is_none() {
            let why = self.llm_error.clone().unwrap_or_default();
            out.push(("language model", why));
        }
        if self.tts.is_none() {
            let why = self.tts_error.clone().unwrap_or_default();
            out.push(("voice", why));
        }
        out
    }

    pub fn status(&self) -> SpeechStatus {
        let free = self.free_slots.lock().map_or(0, |f| f.len());
        SpeechStatus {
            asr: format!("whisper {}", self.asr.model_path().display()),
            llm: match (&self.llm, &self.llm_error) {
                (Some(l), _) => format!("llama {}", l.engine().model_path().display()),
                (None, Some(e)) => format!("unavailable: {e}"),
                (None, None) => "unavailable".to_owned(),
            },
            tts: match (&self.tts, &self.tts_error) {
                (Some(_), _) => "piper".to_owned(),
                (None, Some(e)) => format!("cached prompts only: {e}"),
                (None, None) => "cached prompts only".to_owned(),
            },
            system_prompt_tokens: self.llm.as_ref().map_or(0, |l| l.system_tokens),
            agent_calls: self.slot_count - free,
            agent_call_limit: self.slot_count,
            asr_queue: self.asr_pool.waiting(),
            llm_queue: self.llm_pool.waiting(),
            tts_queue: self.tts_pool.waiting(),
        }
    }

    /// The shared language model, or why there is none.
    fn language_model(&self) -> Result<Arc<LlmShared>, String> {
        self.llm.clone().ok_or_else(|| {
            self.llm_error
                .clone()
                .unwrap_or_else(|| "language model unavailable".to_owned())
        })
    }

    /// True while the language model has work queued or running (for any call).
    pub fn llm_busy(&self) -> bool {
        self.llm_pool.waiting() + self.llm_pool.running() > 0
    }

    /// Pre-rendered audio for this exact text (a prompt, a fact or a fixed reply), if any.
    pub fn phrase(&self, text: &str) -> Option<PromptAudio> {
        self.phrases.get(text.trim()).cloned()
    }

    /// Admits a new call, or says why not (SIP 503): every agent sequence taken, or an engine
    /// queue already full (a bot that cannot keep up is worse than a busy signal).
    pub fn open_call(self: &Arc<Self>) -> Result<CallSpeech, String> {
        for pool in [&self.asr_pool, &self.llm_pool, &self.tts_pool] {
            if pool.is_full() {
                return Err(format!("{pool:?} is full"));
            }
        }
        let slot = self
            .free_slots
            .lock()
            .map_err(|_| "speech state poisoned".to_owned())?
            .pop()
            .ok_or_else(|| format!("all {} agent calls are busy", self.slot_count))?;
        let vad = match SileroVad::load(&self.vad_model) {
            Ok(v) => v,
            Err(e) => {
                self.release_slot(slot);
                return Err(e.to_string());
            }
        };
        Ok(CallSpeech {
            service: Arc::clone(self),
            slot,
            vad: Some(vad),
        })
    }

    fn release_slot(&self, slot: usize) {
        if let Some(llm) = &self.llm {
            if let Ok(mut s) = llm.session.lock() {
                s.release(slot);
            }
        }
        if let Ok(mut f) = self.free_slots.lock() {
            f.push(slot);
        }
    }
}

fn load_llm(config: &Config, system_prompt: &str, slots: usize) -> Result<LlmShared, LlmError> {
    let mut lcfg = LlmConfig::new(config.models.file(&config.models.llm, LLM_MODEL_FILE));
    lcfg.threads = config.speech.llm_threads;
    let engine_box = Box::into_raw(Box::new(LlamaEngine::load(lcfg)?));
    // SAFETY: `engine_box` came from Box::into_raw just above and is freed only by
    // LlmShared's Drop (or below, on failure), after every session borrowing it is dropped.
    let engine: &'static LlamaEngine = unsafe { &*engine_box };
    let free_engine = || {
        // SAFETY: no session borrowing the engine was kept (the `?`s below return before one
        // is stored), and this is the only Box::from_raw for this pointer on this path.
        drop(unsafe { Box::from_raw(engine_box) });
    };
    let prepared = (|| {
        let system = engine.render_system(system_prompt)?;
        let system_tokens = engine.count_tokens(&system);
        let per_call = config.speech.llm_context_per_call as usize;
        let n_ctx = (system_tokens + slots * per_call + 64) as u32;
        let mut session = engine.new_shared_session(slots as u32 + 1, n_ctx)?;
        let t = Instant::now();
        session.prime_seq(0, &system)?;
        tracing::info!(
            tokens = system_tokens,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "system prompt evaluated once for all calls"
        );
        Ok::<_, LlmError>((session, system_tokens, per_call))
    })();
    let (session, system_tokens, per_call) = match prepared {
        Ok(p) => p,
        Err(e) => {
            free_engine();
            return Err(e);
        }
    };
    Ok(LlmShared {
        session: ManuallyDrop::new(Mutex::new(session)),
        engine_box,
        system: system_prompt.to_owned(),
        system_tokens,
        per_call_tokens: per_call,
    })
}

/// Renders each fixed prompt with the voice, or loads it from the cache a previous start wrote
/// (keyed by the text, so a changed prompt is rendered again). Every one must have audio.
fn render_prompts(
    prompts: &[String],
    tts: Option<&dyn SpeechSynthesizer>,
    cache_dir: &Path,
) -> Result<HashMap<String, PromptAudio>, String> {
    let _ = std::fs::create_dir_all(cache_dir);
    let mut out = HashMap::new();
    for text in prompts.iter().map(|t| t.trim()) {
        match render_cached(text, tts, cache_dir) {
            Ok(a) => {
                out.insert(text.to_owned(), a);
            }
            Err(e) => {
                return Err(format!(
                    "prompt \"{text}\" has no audio: {e}; install the voice with `edgevoice models install`"
                ))
            }
        }
    }
    Ok(out)
}

/// Facts and fixed replies, rendered at start-up like the prompts: the agent says them often,
/// and with cached audio the reply starts as soon as the caller's words are known.
fn render_phrases(
    phrases: &[String],
    tts: Option<&dyn SpeechSynthesizer>,
    cache_dir: &Path,
) -> HashMap<String, PromptAudio> {
    let mut out = HashMap::new();
    for text in phrases.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        match render_cached(text, tts, cache_dir) {
            Ok(a) => {
                out.insert(text.to_owned(), a);
            }
            Err(e) => tracing::warn!("\"{text}\" not pre-rendered: {e}"),
        }
    }
    out
}

/// `text` synthesized (and written to the cache), or read from the cache.
fn render_cached(
    text: &str,
    tts: Option<&dyn SpeechSynthesizer>,
    cache_dir: &Path,
) -> Result<PromptAudio, String> {
    let path = cache_dir.join(format!("{:016x}.wav", fnv1a(text)));
    if let Some(tts) = tts {
        match tts.synthesize(text) {
            Ok(s) => {
                if let Err(e) = write_wav(&path, &s.pcm, s.sample_rate) {
                    tracing::warn!("prompt cache not written ({}): {e}", path.display());
                }
                return Ok(Arc::new((s.pcm, s.sample_rate)));
            }
            Err(e) => tracing::warn!("\"{text}\" not synthesized: {e}"),
        }
    }
    read_wav(&path)
        .map(Arc::new)
        .map_err(|e| format!("no voice and no cache at {} ({e})", path.display()))
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn write_wav(path: &Path, pcm: &[i16], rate: u32) -> Result<(), String> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let tmp = path.with_extension("wav.tmp");
    let mut w = hound::WavWriter::create(&tmp, spec).map_err(|e| e.to_string())?;
    for &s in pcm {
        w.write_sample(s).map_err(|e| e.to_string())?;
    }
    w.finalize().map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

fn read_wav(path: &Path) -> Result<(Vec<i16>, u32), String> {
    let mut r = hound::WavReader::open(path).map_err(|e| e.to_string())?;
    let spec = r.spec();
    if spec.channels != 1 || spec.bits_per_sample != 16 {
        return Err("not mono 16-bit".to_owned());
    }
    let pcm = r
        .samples::<i16>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((pcm, spec.sample_rate))
}

/// One call's handle on the engines: its LLM sequence, its VAD. Dropping it frees the sequence.
pub struct CallSpeech {
    service: Arc<SpeechService>,
    slot: usize,
    vad: Option<SileroVad>,
}

impl std::fmt::Debug for CallSpeech {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSpeech")
            .field("slot", &self.slot)
            .finish()
    }
}

impl Drop for CallSpeech {
    fn drop(&mut self) {
        self.service.release_slot(self.slot);
    }
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum JobRefused {
    /// The engine's queue is full: the job never ran.
    #[error(transparent)]
    Full(#[from] QueueFull),
    /// The engine is not loaded (its error says why).
    #[error("{0}")]
    Unavailable(String),
}

impl CallSpeech {
    pub fn service(&self) -> &Arc<SpeechService> {
        &self.service
    }

    /// The call's VAD, to run off the async workers; give it back with [`Self::put_vad`].
    pub fn take_vad(&mut self) -> Option<SileroVad> {
        self.vad.take()
    }

    pub fn put_vad(&mut self, vad: SileroVad) {
        self.vad = Some(vad);
    }

    /// Queues recognition of one utterance (16 kHz); `deliver` gets the result on the
    /// recognizer's thread.
    pub fn transcribe(
        &self,
        pcm_16k: Vec<f32>,
        listening: Listening,
        deliver: impl FnOnce(Result<Transcript, AsrError>) + Send + 'static,
    ) -> Result<(), QueueFull> {
        let asr = Arc::clone(&self.service.asr);
        let sessions = Arc::clone(&self.service.asr_sessions);
        self.service.asr_pool.try_submit(
            Priority::Live,
            Box::new(move || {
                let session = sessions.lock().ok().and_then(|mut s| s.pop());
                let session = match session {
                    Some(s) => Ok(s),
                    None => asr.new_session(),
                };
                let result = session.and_then(|mut s| {
                    let r = s.transcribe_for(&pcm_16k, listening);
                    if let Ok(mut pool) = sessions.lock() {
                        pool.push(s);
                    }
                    r
                });
                deliver(result);
            }),
        )
    }

    /// Queues a reply to `history` in this call's sequence. `on_event` gets each token as it
    /// is generated, then the outcome, on the model's thread; it (or `cancel`) stops the
    /// generation at the next token.
    pub fn generate(
        &self,
        history: Vec<ChatMessage>,
        budget: Budget,
        cancel: Arc<AtomicBool>,
        mut on_event: impl FnMut(LlmEvent) -> ControlFlow<()> + Send + 'static,
    ) -> Result<(), JobRefused> {
        let llm = self
            .service
            .language_model()
            .map_err(JobRefused::Unavailable)?;
        let slot = self.slot;
        let queued = Instant::now();
        self.service.llm_pool.try_submit(
            Priority::Live,
            Box::new(move || {
                let result =
                    run_generation(&llm, slot, history, budget, queued, &cancel, &mut on_event);
                let _ = on_event(match result {
                    Ok(g) => LlmEvent::Done(g),
                    Err(e) => LlmEvent::Failed(e.to_string()),
                });
            }),
        )?;
        Ok(())
    }

    /// Queues, behind every live job, the evaluation of this call's conversation so far (the
    /// system prompt and `history`) into its sequence: the next reply then evaluates only the
    /// caller's new words. Best effort: a full queue or a failure only costs that time later.
    pub fn prefill(&self, history: Vec<ChatMessage>) -> Result<(), JobRefused> {
        let llm = self
            .service
            .language_model()
            .map_err(JobRefused::Unavailable)?;
        let slot = self.slot;
        self.service.llm_pool.try_submit(
            Priority::Background,
            Box::new(move || {
                if let Err(e) = run_prefill(&llm, slot, &history) {
                    tracing::debug!("history not evaluated ahead: {e}");
                }
            }),
        )?;
        Ok(())
    }

    /// Queues a completion of `messages` in this call's sequence, its output held to
    /// `grammar` (GBNF); `deliver` gets the text on the model's thread. The sequence is cleared
    /// afterwards, so the conversation's next reply forks the shared system prompt again
    /// instead of re-evaluating it.
    pub fn complete_constrained(
        &self,
        messages: Vec<ChatMessage>,
        grammar: String,
        budget: Budget,
        deliver: impl FnOnce(Result<String, String>) + Send + 'static,
    ) -> Result<(), JobRefused> {
        let llm = self
            .service
            .language_model()
            .map_err(JobRefused::Unavailable)?;
        let slot = self.slot;
        self.service.llm_pool.try_submit(
            Priority::Live,
            Box::new(move || deliver(run_constrained(&llm, slot, &messages, &grammar, budget))),
        )?;
        Ok(())
    }

    /// Queues synthesis of one clause; `deliver` gets the audio on the voice's thread.
    pub fn synthesize(
        &self,
        text: String,
        deliver: impl FnOnce(Result<super::Synthesis, TtsError>) + Send + 'static,
    ) -> Result<(), JobRefused> {
        let tts = self
            .service
            .tts
            .clone()
            .ok_or_else(|| JobRefused::Unavailable("no voice".to_owned()))?;
        self.service.tts_pool.try_submit(
            Priority::Live,
            Box::new(move || deliver(tts.synthesize(&text))),
        )?;
        Ok(())
    }
}

fn run_prefill(llm: &LlmShared, slot: usize, history: &[ChatMessage]) -> Result<(), LlmError> {
    let mut messages = vec![ChatMessage::system(llm.system.clone())];
    messages.extend(history.iter().cloned());
    let prompt = llm.engine().render_history(&messages)?;
    // What would not fit the call's share is trimmed by the reply itself; skip it here.
    if llm.engine().count_tokens(&prompt) > llm.system_tokens + llm.per_call_tokens / 2 {
        return Ok(());
    }
    let mut session = llm
        .session
        .lock()
        .map_err(|_| LlmError::Decode("llama context poisoned by a panic".to_owned()))?;
    if session.cached_tokens_of(slot) == 0 {
        session.fork(0, slot)?;
    }
    let before = session.cached_tokens_of(slot);
    session.prime_seq(slot, &prompt)?;
    tracing::debug!(
        slot,
        cached_before = before,
        cached_now = session.cached_tokens_of(slot),
        "the call's history is evaluated ahead of its next reply"
    );
    Ok(())
}

fn run_constrained(
    llm: &LlmShared,
    slot: usize,
    messages: &[ChatMessage],
    grammar: &str,
    budget: Budget,
) -> Result<String, String> {
    let prompt = llm
        .engine()
        .render_chat(messages)
        .map_err(|e| e.to_string())?;
    let mut session = llm
        .session
        .lock()
        .map_err(|_| "llama context poisoned by a panic".to_owned())?;
    let generated =
        session.generate_seq_constrained(slot, &prompt, Some(grammar), budget, &mut |_| {
            ControlFlow::Continue(())
        });
    session.release(slot);
    generated.map(|g| g.text).map_err(|e| e.to_string())
}

fn run_generation(
    llm: &LlmShared,
    slot: usize,
    mut history: Vec<ChatMessage>,
    budget: Budget,
    queued: Instant,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(LlmEvent) -> ControlFlow<()>,
) -> Result<Generation, LlmError> {
    // The budget counts from the caller's turn, waiting in the queue included.
    let left = budget.max_time.saturating_sub(queued.elapsed());
    if left.is_zero() {
        return Ok(over_time());
    }
    let mut session = llm
        .session
        .lock()
        .map_err(|_| LlmError::Decode("llama context poisoned by a panic".to_owned()))?;
    // Keep the conversation within this call's share of the context: oldest turns go first.
    let prompt = loop {
        let mut messages = vec![ChatMessage::system(llm.system.clone())];
        messages.extend(history.iter().cloned());
        let prompt = llm.engine().render_chat(&messages)?;
        let tokens = llm.engine().count_tokens(&prompt);
        if tokens
            <= llm.system_tokens
                + llm
                    .per_call_tokens
                    .saturating_sub(budget.max_tokens as usize)
            || history.len() <= 1
        {
            break prompt;
        }
        history.remove(0);
    };
    if session.cached_tokens_of(slot) == 0 {
        session.fork(0, slot)?;
    }
    let mut on_token = |piece: &str| {
        if on_event(LlmEvent::Token(piece.to_owned())).is_break() || cancel.load(Ordering::Relaxed)
        {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    session.generate_seq(
        slot,
        &prompt,
        Budget {
            max_tokens: budget.max_tokens,
            max_time: left,
        },
        &mut on_token,
    )
}

fn over_time() -> Generation {
    Generation {
        text: String::new(),
        stop: StopReason::MaxTime,
        prompt_tokens: 0,
        cached_tokens: 0,
        generated_tokens: 0,
        first_token: None,
        elapsed: Duration::ZERO,
    }
}
