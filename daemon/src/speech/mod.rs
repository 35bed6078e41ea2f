//! Speech engines: speech recognition (whisper.cpp), the language model (llama.cpp) and speech
//! synthesis (Piper on ONNX Runtime), each behind a small trait so the conversation logic and its
//! tests do not depend on the engine.
//!
//! Every engine loads its model once (memory-mapped) and is shared (`Arc`) by all calls; each call
//! gets its own per-call state (a whisper state, a llama context) from it. Inference is blocking
//! CPU work: run it on dedicated threads, never on the async runtime's workers.
//!
//! whisper-rs and llama-cpp-2 link ONE ggml, built once by `packaging/build-ggml.sh` (see
//! `.cargo/config.toml`); `tests/speech_engines.rs` proves both run in one
//! process. Piper's ONNX Runtime is loaded at run time from the model bundle (`tts`).

pub mod embed;
pub mod llm;
pub mod mel;
pub mod pool;
pub mod service;
pub mod smart_turn;
pub mod text;
pub mod tts;
pub mod vad;
pub mod whisper;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use embed::{EmbedConfig, SentenceEmbedder};
pub use llm::{LlamaEngine, LlamaSession, LlmConfig};
pub use smart_turn::{SmartTurn, SmartTurnConfig};
pub use tts::{PiperConfig, PiperSynthesizer};
pub use vad::SileroVad;
pub use whisper::{WhisperConfig, WhisperRecognizer, WhisperSession};

/// Sample rate every recognizer takes (mono f32 in -1.0..=1.0).
pub const ASR_SAMPLE_RATE: u32 = 16_000;

/// Model files, relative to `models.dir` (as laid out by `models/manifest.toml`).
pub const WHISPER_MODEL_FILE: &str = "whisper/ggml-tiny.en-q8_0.bin";
pub const VAD_MODEL_FILE: &str = "vad/ggml-silero-v6.2.0.bin";
pub const LLM_MODEL_FILE: &str = "llm/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Sentence embeddings (all-MiniLM-L6-v2, int8 ONNX) and its tokenizer (`embed`).
pub const EMBED_MODEL_FILE: &str = "embed/all-MiniLM-L6-v2-int8.onnx";
pub const EMBED_TOKENIZER_FILE: &str = "embed/all-MiniLM-L6-v2.tokenizer.json";
/// The Piper voice (its `.onnx.json` config sits next to it).
pub const TTS_VOICE_FILE: &str = "piper/en_US-joe-medium.onnx";
/// Smart Turn v3.2: whether the caller's turn sounds complete (ONNX, on the same runtime as Piper).
pub const TURN_MODEL_FILE: &str = "turn/smart-turn-v3.2-cpu.onnx";
/// The ONNX Runtime library Piper runs on (loaded at run time, not linked), in a model bundle.
pub const ONNXRUNTIME_FILE: &str = "onnxruntime/libonnxruntime.so.1.24.4";
/// The same library as the .deb installs it.
pub const PACKAGED_ONNXRUNTIME: &str = "/usr/lib/edgevoice/libonnxruntime.so.1.24.4";

/// The ONNX Runtime to load when `speech.onnxruntime` is empty: the models dir's own copy when
/// it has one (a development tree, a site bundle), else the one the package ships.
pub fn default_onnxruntime(models_dir: &std::path::Path) -> std::path::PathBuf {
    let bundled = models_dir.join(ONNXRUNTIME_FILE);
    let packaged = std::path::Path::new(PACKAGED_ONNXRUNTIME);
    if !bundled.exists() && packaged.exists() {
        packaged.to_path_buf()
    } else {
        bundled
    }
}

/// One recognised word with its time span in the utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Mean token probability (0..=1).
    pub probability: f32,
}

/// A segment as whisper emits it: a span of text with its words.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub words: Vec<Word>,
    /// whisper's probability that the segment holds no speech.
    pub no_speech_probability: f32,
}

/// The result of transcribing one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// The whole text, segments joined, trimmed.
    pub text: String,
    pub segments: Vec<Segment>,
    /// Length of the audio decoded.
    pub audio: Duration,
    /// Wall time the decode took.
    pub elapsed: Duration,
    /// The encoder positions used (whisper's `audio_ctx`; 1500 = the whole 30 s window).
    pub audio_ctx: u32,
}

impl Transcript {
    pub fn words(&self) -> impl Iterator<Item = &Word> {
        self.segments.iter().flat_map(|s| s.words.iter())
    }
}

/// Speech recognition errors. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum AsrError {
    #[error("speech recognition model {} not found: install the models with `edgevoice models install` (or point models.dir at them)", .0.display())]
    ModelMissing(PathBuf),
    #[error("could not load the speech recognition model {}: {reason} (re-install it with `edgevoice models install`; `edgevoice models verify` checks the files)", path.display())]
    ModelLoad { path: PathBuf, reason: String },
    #[error("could not create a speech recognition state: {0} (out of memory?)")]
    State(String),
    #[error("speech recognition failed: {0}")]
    Decode(String),
}

/// Language model errors. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("language model {} not found: install the models with `edgevoice models install` (or point models.dir at them)", .0.display())]
    ModelMissing(PathBuf),
    #[error("could not load the language model {}: {reason} (re-install it with `edgevoice models install`; `edgevoice models verify` checks the files)", path.display())]
    ModelLoad { path: PathBuf, reason: String },
    #[error("could not initialise llama.cpp: {0}")]
    Backend(String),
    #[error("could not create a language model context of {n_ctx} tokens: {reason} (lower the context size or free memory)")]
    Context { n_ctx: u32, reason: String },
    #[error("the language model has no usable chat template ({0}): use an instruct/chat GGUF that embeds one")]
    ChatTemplate(String),
    #[error("prompt of {needed} tokens does not fit the context of {n_ctx} tokens: shorten the system prompt or raise the context size")]
    ContextFull { needed: usize, n_ctx: u32 },
    #[error("language model evaluation failed: {0}")]
    Decode(String),
}

/// Speech synthesis errors. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("voice model {} not found: install the models with `edgevoice models install` (or point models.dir at them)", .0.display())]
    VoiceMissing(PathBuf),
    #[error("voice config {} not found: it belongs next to the voice model (<voice>.onnx.json); install the models with `edgevoice models install`", .0.display())]
    VoiceConfigMissing(PathBuf),
    #[error("voice config {} is not a valid Piper voice config: {reason} (re-install it with `edgevoice models install`; `edgevoice models verify` checks the files)", path.display())]
    VoiceConfigInvalid { path: PathBuf, reason: String },
    #[error("ONNX Runtime library {} not found: speech synthesis needs it; the edgevoice package installs it under /usr/lib/edgevoice, `edgevoice models install` into models.dir (or set speech.onnxruntime)", .0.display())]
    OnnxRuntimeMissing(PathBuf),
    #[error("ONNX Runtime library {} cannot be read: {reason} (the daemon's user needs read access; `edgevoice models install` sets it up)", path.display())]
    OnnxRuntimeUnreadable { path: PathBuf, reason: String },
    #[error("could not load the ONNX Runtime library {}: {reason} (it must be ONNX Runtime 1.24 or newer for this machine; re-install it with `edgevoice models install`)", path.display())]
    OnnxRuntimeLoad { path: PathBuf, reason: String },
    #[error("espeak-ng data unusable ({reason}; looked in {searched}): install the Debian package espeak-ng-data, or set PIPER_ESPEAKNG_DATA_DIRECTORY to the directory that holds espeak-ng-data")]
    EspeakData { searched: String, reason: String },
    #[error("could not load the voice model {}: {reason} (re-install it with `edgevoice models install`; `edgevoice models verify` checks the files)", path.display())]
    Load { path: PathBuf, reason: String },
    #[error("speech synthesis failed: {0}")]
    Synthesis(String),
}

/// End-of-turn detection errors. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum TurnDetectError {
    #[error("end-of-turn model {} not found: install the models with `edgevoice models install` (or point models.dir at them)", .0.display())]
    ModelMissing(PathBuf),
    #[error("ONNX Runtime library {} not found: end-of-turn detection needs it; the edgevoice package installs it under /usr/lib/edgevoice, `edgevoice models install` into models.dir (or set speech.onnxruntime)", .0.display())]
    OnnxRuntimeMissing(PathBuf),
    #[error("could not load the ONNX Runtime library {} for end-of-turn detection: {reason} (it must be ONNX Runtime 1.24 or newer, readable by the daemon's user; re-install it with `edgevoice models install`)", path.display())]
    OnnxRuntimeLoad { path: PathBuf, reason: String },
    #[error("could not load the end-of-turn model {}: {reason} (re-install it with `edgevoice models install`; `edgevoice models verify` checks the files)", path.display())]
    ModelLoad { path: PathBuf, reason: String },
    #[error("end-of-turn detection was given unusable input: {0}")]
    InvalidAudio(String),
    #[error("end-of-turn inference failed: {0}")]
    Inference(String),
}

/// Checks that a model file exists (before handing its path to C code that would only say
/// "failed to load").
pub(crate) fn require_file<E>(path: &Path, missing: impl FnOnce(PathBuf) -> E) -> Result<(), E> {
    if path.is_file() {
        Ok(())
    } else {
        Err(missing(path.to_path_buf()))
    }
}

/// Voice activity detection: per call (it keeps state between steps), on a thread of its own.
pub trait VoiceActivity: Send {
    /// Speech probability (0..=1) of each whole window of [`vad::WINDOW_SAMPLES`] samples
    /// (16 kHz mono) in `windows`, continuing from the previous call.
    fn process(&mut self, windows: &[f32]) -> Result<Vec<f32>, AsrError>;
}

/// Semantic end of turn: does the caller's turn sound finished? A model loaded once, shared by
/// every call; blocking CPU work (tens of ms), run it off the async runtime.
pub trait TurnCompletion: Send + Sync {
    /// The probability (0..=1) that the turn in `pcm_16k` (16 kHz mono f32, the turn so far;
    /// only its last 8 s are heard) is complete.
    fn completion(&self, pcm_16k: &[f32]) -> Result<f32, TurnDetectError>;
}

/// Speech recognition: a model loaded once, shared by every call.
pub trait SpeechRecognizer: Send + Sync {
    /// A per-call state (holds the decoder's buffers; reuse it for every utterance of a call).
    fn session(&self) -> Result<Box<dyn AsrSession + '_>, AsrError>;

    /// Transcribes one utterance with a fresh state (convenience; calls should keep a session).
    fn transcribe(&self, pcm_16k: &[f32]) -> Result<Transcript, AsrError> {
        self.session()?.transcribe(pcm_16k)
    }
}

/// What the caller is expected to say, so recognition can keep what matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Listening {
    /// Anything.
    #[default]
    Speech,
    /// A number read out (a digits slot is open): every digit must survive, pauses between
    /// groups included.
    Digits,
}

/// A per-call recognition state.
pub trait AsrSession: Send {
    /// Transcribes one utterance: 16 kHz mono f32 samples. Utterances up to 30 s are decoded
    /// with the encoder sized to the audio; longer audio uses whisper's 30 s windows (cut it by
    /// VAD instead).
    fn transcribe(&mut self, pcm_16k: &[f32]) -> Result<Transcript, AsrError>;

    /// Transcribes an utterance expected to be `listening` (engines without a special mode
    /// treat every utterance alike).
    fn transcribe_for(
        &mut self,
        pcm_16k: &[f32],
        listening: Listening,
    ) -> Result<Transcript, AsrError> {
        let _ = listening;
        self.transcribe(pcm_16k)
    }
}

/// Synthesized speech.
#[derive(Debug, Clone, PartialEq)]
pub struct Synthesis {
    /// Mono 16-bit PCM at `sample_rate`.
    pub pcm: Vec<i16>,
    pub sample_rate: u32,
    /// Wall time the synthesis took.
    pub elapsed: Duration,
}

impl Synthesis {
    /// Length of the audio.
    pub fn audio(&self) -> Duration {
        Duration::from_secs_f64(self.pcm.len() as f64 / f64::from(self.sample_rate.max(1)))
    }
}

/// Speech synthesis: a voice loaded once, shared by every call. Callers split replies into
/// sentences (or clauses) and synthesize each as soon as it is known.
pub trait SpeechSynthesizer: Send + Sync {
    /// The rate of the audio this voice produces.
    fn sample_rate(&self) -> u32;

    /// Synthesizes `text` (one or more sentences) to mono PCM at `sample_rate()`.
    fn synthesize(&self, text: &str) -> Result<Synthesis, TtsError>;

    /// Like `synthesize`, handing audio to `on_audio` piece by piece as it is produced (per
    /// sentence where the engine can); `ControlFlow::Break` stops after that piece (barge-in).
    /// The result holds the audio produced.
    fn synthesize_streaming(
        &self,
        text: &str,
        on_audio: &mut dyn FnMut(&[i16]) -> ControlFlow<()>,
    ) -> Result<Synthesis, TtsError> {
        let synthesis = self.synthesize(text)?;
        let _ = on_audio(&synthesis.pcm);
        Ok(synthesis)
    }
}

/// One chat message (role "system", "user" or "assistant").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Hard limits for one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max_tokens: u32,
    /// Wall time from the call to `generate`, prompt evaluation included.
    pub max_time: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_tokens: 96,
            max_time: Duration::from_secs(10),
        }
    }
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model ended its turn.
    EndOfTurn,
    MaxTokens,
    MaxTime,
    /// The token callback asked to stop (barge-in, clause limit, ...).
    Cancelled,
}

/// The outcome of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    pub stop: StopReason,
    /// Prompt tokens in total, and those taken from the KV cache (not evaluated again).
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    /// From the call to the first generated token (None if none was generated).
    pub first_token: Option<Duration>,
    pub elapsed: Duration,
}

/// A language model: loaded once, shared by every call.
pub trait LanguageModel: Send + Sync {
    /// Renders a conversation with the model's own chat template, ending with the opening of the
    /// assistant's turn.
    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, LlmError>;
    /// A per-call context. It keeps its KV cache between turns: the longest common prefix with
    /// the previous prompt (the system prompt, earlier turns) is not evaluated again.
    fn session(&self) -> Result<Box<dyn LlmSession + '_>, LlmError>;
}

/// A per-call language model context.
pub trait LlmSession {
    /// Evaluates `prompt` into the KV cache without generating (e.g. the system prompt at call
    /// start, so the first turn only evaluates the caller's words).
    fn prime(&mut self, prompt: &str) -> Result<(), LlmError>;
    /// Generates a continuation of `prompt` (a rendered chat), streaming each piece of text to
    /// `on_token` as it is produced; `ControlFlow::Break` stops the generation.
    fn generate(
        &mut self,
        prompt: &str,
        budget: Budget,
        on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, LlmError>;
}

/// whisper's encoder positions for `samples` of 16 kHz audio: ceil(seconds / 30 × 1500) + 64,
/// at most 1500 (the whole 30 s window). FACTS.md: 7–8× faster than the full window on a phone
/// turn, same words.
pub fn audio_ctx_for(samples: usize) -> u32 {
    let positions = (samples as u64 * 1500).div_ceil(30 * ASR_SAMPLE_RATE as u64) + 64;
    positions.clamp(MIN_AUDIO_CTX, 1500) as u32
}

/// Fewest encoder positions used (4 s): on turns shorter than a second or two, a tighter
/// encoder makes whisper tiny invent words ("ask not" → "deraille resembling lost").
pub const MIN_AUDIO_CTX: u64 = 200;

/// Converts 16-bit PCM to the f32 samples the recognizers take.
pub fn pcm_i16_to_f32(pcm: &[i16]) -> Vec<f32> {
    pcm.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

/// Sentence embedding errors. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("sentence embedding model {} not found: install the models with `edgevoice models install` (or point models.dir at them)", .0.display())]
    ModelMissing(PathBuf),
    #[error("sentence embedding tokenizer {} not found: it comes with the model; install the models with `edgevoice models install`", .0.display())]
    TokenizerMissing(PathBuf),
    #[error("sentence embedding tokenizer {} is not a WordPiece tokenizer.json: {reason} (re-install it with `edgevoice models install`; `edgevoice models verify` checks the files)", path.display())]
    TokenizerInvalid { path: PathBuf, reason: String },
    #[error("sentence embeddings need ONNX Runtime: {0}")]
    OnnxRuntime(TtsError),
    #[error("could not load the sentence embedding model {}: {reason} (re-install it with `edgevoice models install`; `edgevoice models verify` checks the files)", path.display())]
    Load { path: PathBuf, reason: String },
    #[error("sentence embedding failed: {0}")]
    Inference(String),
}

/// Sentence embeddings: a model loaded once, shared by every call. Vectors are unit length, so
/// their dot product is their cosine similarity.
pub trait SentenceEmbedding: Send + Sync {
    /// The embedding of one text (a caller's turn, an intent's example).
    fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError>;

    /// The embeddings of several texts, in order (one model run where the engine can: an
    /// agent's intent examples at start-up).
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        texts.iter().map(|t| self.embed(t)).collect()
    }

    /// Whether `word` (lower-case) is a whole word of the model's vocabulary: a word of the
    /// language rather than a misspelling (`agent::meaning::Keywords::respelled` asks).
    fn is_word(&self, word: &str) -> bool {
        let _ = word;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnxruntime_comes_from_the_models_dir_when_it_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let bundled = dir.path().join(ONNXRUNTIME_FILE);
        std::fs::create_dir_all(bundled.parent().unwrap()).unwrap();
        std::fs::write(&bundled, b"x").unwrap();
        assert_eq!(default_onnxruntime(dir.path()), bundled);
        // Without one: the packaged library if installed here, else the models dir's path (so
        // the error names where `edgevoice models install` would put it).
        let empty = tempfile::tempdir().unwrap();
        let chosen = default_onnxruntime(empty.path());
        let packaged = std::path::Path::new(PACKAGED_ONNXRUNTIME);
        if packaged.exists() {
            assert_eq!(chosen, packaged);
        } else {
            assert_eq!(chosen, empty.path().join(ONNXRUNTIME_FILE));
        }
    }

    #[test]
    fn audio_ctx_matches_the_reference_figures() {
        // REFERENCE-FIGURES.md: 2.74 s → 201, jfk 11 s → 614.
        assert_eq!(audio_ctx_for(43_840), 201);
        assert_eq!(audio_ctx_for(176_000), 614);
        assert_eq!(audio_ctx_for(0), 200);
        assert_eq!(audio_ctx_for(16_000 * 29), 1500);
        assert_eq!(audio_ctx_for(16_000 * 60), 1500);
    }

    #[test]
    fn missing_model_error_names_the_file_and_the_fix() {
        let err =
            require_file(Path::new("/nonexistent/m.bin"), AsrError::ModelMissing).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/m.bin"), "{msg}");
        assert!(msg.contains("edgevoice models install"), "{msg}");
    }
}
