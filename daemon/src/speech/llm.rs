//! The language model with llama.cpp (llama-cpp-2): the model's own chat template, greedy
//! sampling, streamed tokens, hard budgets, and a per-call context that keeps its KV cache so the
//! system prompt (and earlier turns) are evaluated once, not every turn (REFERENCE-FIGURES.md:
//! first token 2.2 s → 0.22 s).

use std::num::NonZeroU32;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::{
    require_file, Budget, ChatMessage, Generation, LanguageModel, LlmError, LlmSession, StopReason,
};

/// Language model settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmConfig {
    /// The GGUF model file.
    pub model: PathBuf,
    /// Context size (tokens) of each per-call context.
    pub n_ctx: u32,
    /// CPU threads for generation and prompt processing.
    pub threads: u32,
}

impl LlmConfig {
    pub fn new(model: impl Into<PathBuf>) -> Self {
        LlmConfig {
            model: model.into(),
            n_ctx: 2048,
            threads: 2,
        }
    }
}

/// llama.cpp's process-wide backend: initialised once, never freed.
fn backend() -> Result<&'static LlamaBackend, LlmError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LlmError::Backend(e.clone()))
}

/// A GGUF model, loaded once (memory-mapped) and shared by all calls.
pub struct LlamaEngine {
    model: LlamaModel,
    template: LlamaChatTemplate,
    config: LlmConfig,
}

impl std::fmt::Debug for LlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEngine")
            .field("config", &self.config)
            .finish()
    }
}

impl LlamaEngine {
    /// Loads the model in `config.model` and its embedded chat template.
    pub fn load(config: LlmConfig) -> Result<Self, LlmError> {
        let backend = backend()?;
        require_file(&config.model, LlmError::ModelMissing)?;
        let params = LlamaModelParams::default().with_use_mmap(true);
        let model = LlamaModel::load_from_file(backend, &config.model, &params).map_err(|e| {
            LlmError::ModelLoad {
                path: config.model.clone(),
                reason: e.to_string(),
            }
        })?;
        let template = model
            .chat_template(None)
            .map_err(|e| LlmError::ChatTemplate(e.to_string()))?;
        Ok(LlamaEngine {
            model,
            template,
            config,
        })
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    pub fn model_path(&self) -> &Path {
        &self.config.model
    }

    /// Renders `messages` with the model's chat template, ending with the assistant's opening.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        self.render(messages, true)
    }

    /// `messages` rendered without the assistant's opening: a prefix of the next turn's prompt
    /// (the caller's next words and the opening follow), to evaluate ahead of it.
    pub fn render_history(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        self.render(messages, false)
    }

    /// The rendered system message alone: a prefix of every conversation that starts with it,
    /// to [`LlamaSession::prime`] a call's context before the caller speaks.
    pub fn render_system(&self, system_prompt: &str) -> Result<String, LlmError> {
        self.render(&[ChatMessage::system(system_prompt)], false)
    }

    fn render(&self, messages: &[ChatMessage], add_assistant: bool) -> Result<String, LlmError> {
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LlmError::ChatTemplate(e.to_string()))?;
        self.model
            .apply_chat_template(&self.template, &chat, add_assistant)
            .map_err(|e| LlmError::ChatTemplate(e.to_string()))
    }

    /// A per-call context with an empty KV cache.
    pub fn new_session(&self) -> Result<LlamaSession<'_>, LlmError> {
        self.new_shared_session(1, self.config.n_ctx)
    }

    /// One context holding `n_seq` conversations (sequence 0 and up) in a unified KV cache of
    /// `n_ctx` cells: sequence 0 can hold the system prompt once, and [`LlamaSession::fork`]
    /// shares it with each call's sequence without copying or evaluating it again.
    pub fn new_shared_session(&self, n_seq: u32, n_ctx: u32) -> Result<LlamaSession<'_>, LlmError> {
        let backend = backend()?;
        let n_ctx = n_ctx.max(64);
        let n_seq = n_seq.max(1);
        let threads = i32::try_from(self.config.threads.max(1)).unwrap_or(1);
        let n_batch = n_ctx.min(512);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_batch)
            .with_n_seq_max(n_seq)
            .with_kv_unified(true)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = self
            .model
            .new_context(backend, params)
            .map_err(|e| LlmError::Context {
                n_ctx,
                reason: e.to_string(),
            })?;
        Ok(LlamaSession {
            engine: self,
            ctx,
            cached: vec![Vec::new(); n_seq as usize],
            batch: LlamaBatch::new(n_batch as usize, 1),
            n_batch: n_batch as usize,
        })
    }

    /// Tokens `text` makes (special tokens parsed, as in a rendered chat).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.tokenize(text).len()
    }

    fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        // The chat template writes the special tokens as text: parse them; BOS as the model says.
        let vocab = self.model.vocab();
        vocab.tokenize(text.as_bytes(), vocab.should_add_bos(), true)
    }
}

impl LanguageModel for LlamaEngine {
    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        self.render_chat(messages)
    }

    fn session(&self) -> Result<Box<dyn LlmSession + '_>, LlmError> {
        Ok(Box::new(self.new_session()?))
    }
}

/// A llama context. For each sequence its KV cache holds `cached[seq]` (the tokens evaluated so
/// far, in order); each new prompt reuses the longest common prefix and evaluates only the rest.
/// The single-conversation methods use sequence 0.
pub struct LlamaSession<'m> {
    engine: &'m LlamaEngine,
    ctx: LlamaContext<'m>,
    cached: Vec<Vec<LlamaToken>>,
    batch: LlamaBatch<'static>,
    n_batch: usize,
}

impl LlamaSession<'_> {
    /// Tokens currently in sequence 0's KV cache.
    pub fn cached_tokens(&self) -> usize {
        self.cached[0].len()
    }

    /// Sequences this context holds.
    pub fn sequences(&self) -> usize {
        self.cached.len()
    }

    /// Drops the KV cache (the next prompt is evaluated whole).
    pub fn clear(&mut self) {
        self.ctx.clear_kv_cache();
        self.cached.iter_mut().for_each(Vec::clear);
    }

    /// Makes sequence `dst` share sequence `src`'s cache (e.g. the system prompt) without
    /// evaluating it again: the unified KV cache references the same cells.
    pub fn fork(&mut self, src: usize, dst: usize) -> Result<(), LlmError> {
        if src >= self.cached.len() || dst >= self.cached.len() || src == dst {
            return Err(LlmError::Decode(format!("no sequence pair {src} → {dst}")));
        }
        self.release(dst);
        self.ctx
            .kv_cache_seq_cp(seq_id(src), seq_id(dst), None, None)
            .map_err(|e| LlmError::Decode(e.to_string()))?;
        self.cached[dst] = self.cached[src].clone();
        Ok(())
    }

    /// Empties sequence `seq` (a call ended).
    pub fn release(&mut self, seq: usize) {
        if seq < self.cached.len() {
            let _ = self.ctx.kv_cache_seq_rm(seq_id(seq), None, None);
            self.cached[seq].clear();
        }
    }

    /// Tokens cached for `seq`.
    pub fn cached_tokens_of(&self, seq: usize) -> usize {
        self.cached.get(seq).map_or(0, Vec::len)
    }

    /// Makes the KV cache hold exactly `tokens`, evaluating only what differs from what it holds;
    /// with `logits_last`, the last token's logits are computed (and it is evaluated even when
    /// cached). Returns how many tokens came from the cache.
    fn sync(
        &mut self,
        seq: usize,
        tokens: &[LlamaToken],
        logits_last: bool,
    ) -> Result<usize, LlmError> {
        let n_ctx = self.ctx.n_ctx();
        if tokens.len() >= n_ctx as usize {
            return Err(LlmError::ContextFull {
                needed: tokens.len(),
                n_ctx,
            });
        }
        let mut keep = self.cached[seq]
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        if logits_last && keep == tokens.len() && keep > 0 {
            keep -= 1; // re-evaluate the last token for its logits
        }
        if keep < self.cached[seq].len() {
            let p0 = u32::try_from(keep).unwrap_or(u32::MAX);
            if self
                .ctx
                .kv_cache_seq_rm(seq_id(seq), Some(p0), None)
                .is_err()
            {
                let _ = self.ctx.kv_cache_seq_rm(seq_id(seq), None, None);
                keep = 0;
            }
            self.cached[seq].truncate(keep);
        }
        let rest = &tokens[keep..];
        for (chunk_i, chunk) in rest.chunks(self.n_batch).enumerate() {
            self.batch.clear();
            let base = keep + chunk_i * self.n_batch;
            for (i, &tok) in chunk.iter().enumerate() {
                let pos = base + i;
                let last = logits_last && pos + 1 == tokens.len();
                self.batch
                    .add(tok, pos as i32, &[seq_id(seq)], last)
                    .map_err(|e| LlmError::Decode(e.to_string()))?;
            }
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| LlmError::Decode(e.to_string()))?;
            self.cached[seq].extend_from_slice(chunk);
        }
        Ok(keep)
    }

    /// Evaluates `prompt` into the KV cache (see [`LlmSession::prime`]).
    pub fn prime(&mut self, prompt: &str) -> Result<(), LlmError> {
        self.prime_seq(0, prompt)
    }

    /// Evaluates `prompt` into sequence `seq`'s KV cache.
    pub fn prime_seq(&mut self, seq: usize, prompt: &str) -> Result<(), LlmError> {
        let tokens = self.engine.tokenize(prompt);
        self.sync(seq, &tokens, false)?;
        Ok(())
    }

    /// Generates a continuation of `prompt` (see [`LlmSession::generate`]).
    pub fn generate(
        &mut self,
        prompt: &str,
        budget: Budget,
        on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, LlmError> {
        self.generate_seq(0, prompt, budget, on_token)
    }

    /// Generates a continuation of `prompt` in sequence `seq` (see [`LlmSession::generate`]).
    pub fn generate_seq(
        &mut self,
        seq: usize,
        prompt: &str,
        budget: Budget,
        on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, LlmError> {
        self.generate_seq_constrained(seq, prompt, None, budget, on_token)
    }

    /// [`Self::generate_seq`] whose output must match the GBNF `grammar` (root rule `root`):
    /// tokens the grammar does not allow are never sampled, so the text parses by construction
    /// (a budget can still cut it short).
    pub fn generate_seq_constrained(
        &mut self,
        seq: usize,
        prompt: &str,
        grammar: Option<&str>,
        budget: Budget,
        on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, LlmError> {
        if seq >= self.cached.len() {
            return Err(LlmError::Decode(format!("no sequence {seq}")));
        }
        let mut sampler = match grammar {
            None => LlamaSampler::greedy(),
            Some(g) => LlamaSampler::chain_simple([
                LlamaSampler::grammar(&self.engine.model, g, "root")
                    .map_err(|e| LlmError::Decode(format!("grammar refused: {e}")))?,
                LlamaSampler::greedy(),
            ]),
        };
        let started = Instant::now();
        let tokens = self.engine.tokenize(prompt);
        let cached_tokens = self.sync(seq, &tokens, true)?;
        let vocab = self.engine.model.vocab();
        let n_ctx = self.ctx.n_ctx() as usize;

        let mut text = String::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut generated = 0usize;
        let mut first_token: Option<Duration> = None;
        // Logits of the last evaluated token are at the batch's last index.
        let mut logits_idx = self.batch.n_tokens() - 1;
        let stop = loop {
            if generated >= budget.max_tokens as usize {
                break StopReason::MaxTokens;
            }
            if started.elapsed() >= budget.max_time {
                break StopReason::MaxTime;
            }
            // llama_sampler_sample also accepts the token into the sampler's state.
            let tok = sampler.sample(&self.ctx, logits_idx);
            if vocab.is_eog(tok) {
                break StopReason::EndOfTurn;
            }
            generated += 1;
            first_token.get_or_insert_with(|| started.elapsed());
            pending.extend_from_slice(&vocab.token_to_piece(tok, false, None));
            // Emit the longest valid UTF-8 prefix (a character may span tokens).
            let valid = match std::str::from_utf8(&pending) {
                Ok(s) => s.len(),
                Err(e) => e.valid_up_to(),
            };
            let mut cancelled = false;
            if valid > 0 {
                let piece = String::from_utf8_lossy(&pending[..valid]).into_owned();
                pending.drain(..valid);
                text.push_str(&piece);
                cancelled = on_token(&piece).is_break();
            }
            if cancelled {
                break StopReason::Cancelled;
            }
            // Feed the token back.
            let pos = self.cached[seq].len();
            if pos + 1 >= n_ctx {
                break StopReason::MaxTokens;
            }
            self.batch.clear();
            self.batch
                .add(tok, pos as i32, &[seq_id(seq)], true)
                .map_err(|e| LlmError::Decode(e.to_string()))?;
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| LlmError::Decode(e.to_string()))?;
            self.cached[seq].push(tok);
            logits_idx = 0;
        };
        if !pending.is_empty() {
            let piece = String::from_utf8_lossy(&pending).into_owned();
            text.push_str(&piece);
            let _ = on_token(&piece);
        }
        Ok(Generation {
            text,
            stop,
            prompt_tokens: tokens.len(),
            cached_tokens,
            generated_tokens: generated,
            first_token,
            elapsed: started.elapsed(),
        })
    }
}

fn seq_id(seq: usize) -> i32 {
    i32::try_from(seq).unwrap_or(i32::MAX)
}

impl LlmSession for LlamaSession<'_> {
    fn prime(&mut self, prompt: &str) -> Result<(), LlmError> {
        LlamaSession::prime(self, prompt)
    }

    fn generate(
        &mut self,
        prompt: &str,
        budget: Budget,
        on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, LlmError> {
        LlamaSession::generate(self, prompt, budget, on_token)
    }
}
