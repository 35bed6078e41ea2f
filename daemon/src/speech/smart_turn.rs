//! Semantic end of turn with Pipecat's Smart Turn v3.2 (BSD-2-Clause): a Whisper-tiny encoder
//! and a classifier over the log-mel features of the caller's last 8 s ([`super::mel`]), run by
//! ONNX Runtime. It hears whether a turn sounds finished (words and intonation), which silence
//! alone cannot tell: "My order number is four two…" pauses like a finished sentence.
//!
//! ONNX Runtime is loaded the way Piper's voice loads it (`tts::init_onnxruntime`: the library
//! file is checked and probed first, because ort hangs on one it cannot load). The session is
//! behind a `Mutex` (ort's `run` takes `&mut`): one inference at a time per model, ~tens of ms.
//!
//! The model was trained on 16 kHz speech; phone calls bring 8 kHz G.711 upsampled to 16 kHz.
//! `tests/speech_turn_detect.rs` measures it on both.
//!
//! The CPU model is int8 with dynamic quantization (scales taken from each tensor's min/max at
//! run time): a difference of one f32 ulp in one feature can move the score by up to ~0.2 on a
//! borderline turn. Our features match Pipecat's to f32 rounding and give the same scores
//! (bench `turn_detect`); treat scores near the threshold as a coin toss, not as evidence.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ort::session::Session;
use ort::value::Tensor;

use super::mel::{LogMelExtractor, N_FRAMES, N_MELS};
use super::{require_file, TtsError, TurnCompletion, TurnDetectError};

/// The model's one input.
const INPUT_NAME: &str = "input_features";

/// End-of-turn detector settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartTurnConfig {
    /// The model (`turn/smart-turn-v3.2-cpu.onnx` in the models dir).
    pub model: PathBuf,
    /// The ONNX Runtime shared library (`libonnxruntime.so.*`), as for Piper.
    pub onnxruntime: PathBuf,
    /// ONNX Runtime's threads within an operator (Pipecat's default: 1; the bench has 1 vs 2).
    pub threads: usize,
}

impl SmartTurnConfig {
    pub fn new(model: impl Into<PathBuf>, onnxruntime: impl Into<PathBuf>) -> Self {
        SmartTurnConfig {
            model: model.into(),
            onnxruntime: onnxruntime.into(),
            threads: 1,
        }
    }
}

/// Smart Turn v3.x, loaded once and shared by every call.
pub struct SmartTurn {
    session: Mutex<Session>,
    features: LogMelExtractor,
    config: SmartTurnConfig,
}

impl std::fmt::Debug for SmartTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartTurn")
            .field("config", &self.config)
            .finish()
    }
}

impl SmartTurn {
    /// Loads the model, loading ONNX Runtime from `config.onnxruntime` if this process has not
    /// yet. Both files are checked before any C code sees them.
    pub fn load(config: SmartTurnConfig) -> Result<Self, TurnDetectError> {
        require_file(&config.model, TurnDetectError::ModelMissing)?;
        super::tts::init_onnxruntime(&config.onnxruntime)
            .map_err(|e| onnxruntime_error(&config.onnxruntime, e))?;
        let load_err = |reason: String| TurnDetectError::ModelLoad {
            path: config.model.clone(),
            reason,
        };
        let session = super::tts::onnx_session(
            &config.model,
            config.threads,
            super::tts::OnnxGraph::Optimised,
        )
        .map_err(load_err)?;
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        if inputs != [INPUT_NAME] {
            return Err(load_err(format!(
                "not a Smart Turn v3 model: inputs {inputs:?}, expected [\"{INPUT_NAME}\"]"
            )));
        }
        Ok(SmartTurn {
            session: Mutex::new(session),
            features: LogMelExtractor::new(),
            config,
        })
    }

    pub fn config(&self) -> &SmartTurnConfig {
        &self.config
    }

    /// The model's input for `pcm_16k`: the log-mel features of its last 8 s
    /// (`N_MELS × N_FRAMES`, mel-major).
    pub fn features(&self, pcm_16k: &[f32]) -> Result<Vec<f32>, TurnDetectError> {
        if let Some(at) = pcm_16k.iter().position(|s| !s.is_finite()) {
            return Err(TurnDetectError::InvalidAudio(format!(
                "sample {at} is {} (audio must be finite samples)",
                pcm_16k[at]
            )));
        }
        Ok(self.features.extract(pcm_16k))
    }

    /// Runs the model on features from [`SmartTurn::features`]: the probability that the turn is
    /// complete.
    pub fn infer(&self, features: &[f32]) -> Result<f32, TurnDetectError> {
        if features.len() != N_MELS * N_FRAMES {
            return Err(TurnDetectError::InvalidAudio(format!(
                "{} feature values, the model takes {N_MELS} × {N_FRAMES}",
                features.len()
            )));
        }
        let failed = |e: ort::Error| TurnDetectError::Inference(e.to_string());
        let input = Tensor::<f32>::from_array((
            [1usize, N_MELS, N_FRAMES],
            features.to_vec().into_boxed_slice(),
        ))
        .map_err(failed)?;
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let outputs = session
            .run(ort::inputs![INPUT_NAME => input])
            .map_err(failed)?;
        let (_, values) = outputs[0].try_extract_tensor::<f32>().map_err(failed)?;
        // The model ends in a sigmoid: one probability per batch item.
        match values.first() {
            Some(&p) if (0.0..=1.0).contains(&p) => Ok(p),
            other => Err(TurnDetectError::Inference(format!(
                "the model returned {other:?}, not a probability: is this a Smart Turn v3 model?"
            ))),
        }
    }
}

impl TurnCompletion for SmartTurn {
    fn completion(&self, pcm_16k: &[f32]) -> Result<f32, TurnDetectError> {
        let features = self.features(pcm_16k)?;
        self.infer(&features)
    }
}

/// ONNX Runtime's loading errors, worded for turn detection.
fn onnxruntime_error(library: &Path, e: TtsError) -> TurnDetectError {
    match e {
        TtsError::OnnxRuntimeMissing(path) => TurnDetectError::OnnxRuntimeMissing(path),
        TtsError::OnnxRuntimeUnreadable { path, reason }
        | TtsError::OnnxRuntimeLoad { path, reason } => {
            TurnDetectError::OnnxRuntimeLoad { path, reason }
        }
        other => TurnDetectError::OnnxRuntimeLoad {
            path: library.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_one_thread() {
        let c = SmartTurnConfig::new("/m/turn/x.onnx", "/m/ort.so");
        assert_eq!(c.threads, 1);
    }

    #[test]
    fn a_missing_model_names_the_file_and_the_fix() {
        let err = SmartTurn::load(SmartTurnConfig::new(
            "/nonexistent/turn.onnx",
            "/nonexistent/libonnxruntime.so",
        ))
        .unwrap_err();
        assert!(matches!(err, TurnDetectError::ModelMissing(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/turn.onnx"), "{msg}");
        assert!(msg.contains("edgevoice models install"), "{msg}");
    }

    #[test]
    fn a_missing_onnxruntime_is_refused_before_ort_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("turn.onnx");
        std::fs::write(&model, b"not a model").unwrap();
        let err =
            SmartTurn::load(SmartTurnConfig::new(&model, dir.path().join("none.so"))).unwrap_err();
        assert!(
            matches!(err, TurnDetectError::OnnxRuntimeMissing(_)),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("none.so"), "{msg}");
        assert!(msg.contains("end-of-turn"), "{msg}");
    }
}
