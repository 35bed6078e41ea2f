//! Voice activity detection with Silero VAD (whisper.cpp's ggml port): speech probability per
//! 32 ms window of 16 kHz audio, for the endpointer in `agent::endpoint`.
//!
//! whisper.cpp's VAD resets its LSTM state on every call and has no streaming API, so each step
//! runs on the new windows plus a short tail of what came before (the LSTM warms up on it):
//! 0.3-0.5 ms per window here (REFERENCE-FIGURES.md), a few ms per call step.

use std::path::{Path, PathBuf};

use whisper_rs::{WhisperVadContext, WhisperVadContextParams};

use super::{require_file, AsrError, VoiceActivity};

/// Silero's window: 32 ms of 16 kHz audio, one speech probability each.
pub const WINDOW_SAMPLES: usize = 512;

/// Windows of earlier audio run again before the new ones.
const CONTEXT_WINDOWS: usize = 6;

/// A per-call streaming VAD (the model is small: each call loads its own context).
pub struct SileroVad {
    ctx: WhisperVadContext,
    tail: Vec<f32>,
}

impl std::fmt::Debug for SileroVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SileroVad").finish_non_exhaustive()
    }
}

impl SileroVad {
    pub fn load(model: &Path) -> Result<Self, AsrError> {
        require_file(model, |p: PathBuf| AsrError::ModelMissing(p))?;
        let path = model.to_str().ok_or_else(|| AsrError::ModelLoad {
            path: model.to_path_buf(),
            reason: "the path is not UTF-8".to_owned(),
        })?;
        let mut params = WhisperVadContextParams::new();
        params.set_n_threads(1);
        params.set_use_gpu(false);
        let ctx = WhisperVadContext::new(path, params).map_err(|e| AsrError::ModelLoad {
            path: model.to_path_buf(),
            reason: format!("not a Silero VAD ggml model ({e})"),
        })?;
        Ok(Self {
            ctx,
            tail: Vec::new(),
        })
    }

    /// Speech probabilities for the whole 512-sample windows in `windows` (16 kHz mono; its
    /// length must be a multiple of 512).
    pub fn process(&mut self, windows: &[f32]) -> Result<Vec<f32>, AsrError> {
        VoiceActivity::process(self, windows)
    }
}

impl VoiceActivity for SileroVad {
    fn process(&mut self, windows: &[f32]) -> Result<Vec<f32>, AsrError> {
        let n_new = windows.len() / WINDOW_SAMPLES;
        if n_new == 0 {
            return Ok(Vec::new());
        }
        let mut input = Vec::with_capacity(self.tail.len() + windows.len());
        input.extend_from_slice(&self.tail);
        input.extend_from_slice(&windows[..n_new * WINDOW_SAMPLES]);
        self.ctx
            .detect_speech(&input)
            .map_err(|e| AsrError::Decode(format!("VAD: {e}")))?;
        let probs = self.ctx.probabilities();
        let out = probs[probs.len().saturating_sub(n_new)..].to_vec();
        let keep = (CONTEXT_WINDOWS * WINDOW_SAMPLES).min(input.len());
        self.tail = input[input.len() - keep..].to_vec();
        Ok(out)
    }
}
