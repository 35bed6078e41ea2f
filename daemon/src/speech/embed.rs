//! Sentence embeddings with all-MiniLM-L6-v2 (sentence-transformers) on ONNX Runtime: a
//! caller's words become a 384-d unit vector, so that phrasings with the same meaning lie close
//! together (`agent::meaning` matches intents with them).
//!
//! - **Tokenizer**: BERT's uncased tokenizer, written here instead of the `tokenizers` crate (a
//!   large dependency for ~150 lines): clean the text, lower-case, strip accents, split on
//!   whitespace and punctuation, then greedy longest-match WordPiece with `##` continuations;
//!   `[CLS] … [SEP]`, at most [`MAX_TOKENS`]. The vocabulary comes from the Hugging Face
//!   `tokenizer.json` shipped with the model.
//! - **Model**: the int8 ONNX export (inputs `input_ids`, `attention_mask`, `token_type_ids`;
//!   output `last_hidden_state`), mean-pooled over the attention mask and L2-normalised, as
//!   sentence-transformers does. ONNX Runtime is loaded once per process (`tts::init_onnxruntime`).
//! - **Threads**: ort needs `&mut` to run a session, so it sits in a `Mutex`: embeddings from
//!   several threads are served one at a time (~10 ms each).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ort::session::Session;
use ort::value::Tensor;
use unicode_general_category::{get_general_category, GeneralCategory};
use unicode_normalization::UnicodeNormalization;

use super::{require_file, EmbedError, SentenceEmbedding};

/// Most tokens the model is given, `[CLS]` and `[SEP]` included (the tokenizer's truncation;
/// all-MiniLM-L6-v2 was trained on 128).
pub const MAX_TOKENS: usize = 128;

/// A word longer than this (in chars) is one `[UNK]` (BERT's `max_input_chars_per_word`).
const MAX_CHARS_PER_WORD: usize = 100;

/// The model's output: one vector per token.
const HIDDEN_STATE_OUTPUT: &str = "last_hidden_state";

/// BERT uncased basic tokenizer + WordPiece, with the vocabulary of a `tokenizer.json`.
#[derive(Debug, Clone)]
pub struct WordPieceTokenizer {
    vocab: HashMap<String, i64>,
    unk: i64,
    cls: i64,
    sep: i64,
}

/// The parts of a Hugging Face `tokenizer.json` this tokenizer reads.
#[derive(serde::Deserialize)]
struct TokenizerJson {
    model: WordPieceModelJson,
}

#[derive(serde::Deserialize)]
struct WordPieceModelJson {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, i64>,
    #[serde(default)]
    continuing_subword_prefix: Option<String>,
}

impl WordPieceTokenizer {
    /// Reads the vocabulary from a Hugging Face `tokenizer.json` (a WordPiece model with `##`
    /// continuations and the `[UNK]`, `[CLS]`, `[SEP]` tokens).
    pub fn from_file(path: &Path) -> Result<Self, EmbedError> {
        require_file(path, EmbedError::TokenizerMissing)?;
        let text = std::fs::read_to_string(path).map_err(|e| EmbedError::TokenizerInvalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text).map_err(|reason| EmbedError::TokenizerInvalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Like [`Self::from_file`], from the JSON text; the error says what is wrong with it.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let parsed: TokenizerJson = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let model = parsed.model;
        if model.kind != "WordPiece" {
            return Err(format!("model type {:?}, expected WordPiece", model.kind));
        }
        if let Some(prefix) = model.continuing_subword_prefix.as_deref() {
            if prefix != "##" {
                return Err(format!("continuation prefix {prefix:?}, expected \"##\""));
            }
        }
        let id = |token: &str| {
            model
                .vocab
                .get(token)
                .copied()
                .ok_or_else(|| format!("the vocabulary has no {token} token"))
        };
        Ok(WordPieceTokenizer {
            unk: id("[UNK]")?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            vocab: model.vocab,
        })
    }

    /// Whether `word` (lower-case) is a whole word of the vocabulary, i.e. a word of the
    /// language rather than a misspelling the model would cut into pieces.
    pub fn is_word(&self, word: &str) -> bool {
        !word.starts_with("##") && self.vocab.contains_key(word)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Token ids of `text`: `[CLS]`, its word pieces (cut so the whole is at most
    /// [`MAX_TOKENS`]), `[SEP]`.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids = vec![self.cls];
        'words: for word in basic_tokens(text) {
            for id in self.word_pieces(&word) {
                if ids.len() == MAX_TOKENS - 1 {
                    break 'words;
                }
                ids.push(id);
            }
        }
        ids.push(self.sep);
        ids
    }

    /// Greedy longest-match-first WordPiece of one word; a word with any part not in the
    /// vocabulary is one `[UNK]` (as BERT does).
    fn word_pieces(&self, word: &str) -> Vec<i64> {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > MAX_CHARS_PER_WORD {
            return vec![self.unk];
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                let mut candidate: String = chars[start..end].iter().collect();
                if start > 0 {
                    candidate.insert_str(0, "##");
                }
                if let Some(&id) = self.vocab.get(&candidate) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => pieces.push(id),
                None => return vec![self.unk],
            }
            start = end;
        }
        pieces
    }
}

/// BERT's basic tokenizer (uncased): drops control characters, puts spaces around CJK
/// ideographs, lower-cases, strips accents, and splits on whitespace and punctuation (each
/// punctuation character is a token of its own).
pub fn basic_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, tokens: &mut Vec<String>| {
        if !current.is_empty() {
            tokens.push(std::mem::take(current));
        }
    };
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || is_control(c) {
            continue;
        }
        if c.is_whitespace() {
            flush(&mut current, &mut tokens);
            continue;
        }
        if is_cjk_ideograph(c) {
            flush(&mut current, &mut tokens);
            tokens.push(c.to_string());
            continue;
        }
        // Lower-case, then decompose and drop the combining marks: "Café" -> "cafe".
        for lower in c.to_lowercase() {
            for base in std::iter::once(lower).nfd() {
                if get_general_category(base) == GeneralCategory::NonspacingMark {
                    continue;
                }
                if is_punctuation(base) {
                    flush(&mut current, &mut tokens);
                    tokens.push(base.to_string());
                } else {
                    current.push(base);
                }
            }
        }
    }
    flush(&mut current, &mut tokens);
    tokens
}

/// BERT's `_is_control`: control and format characters, except the whitespace ones.
fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    matches!(
        get_general_category(c),
        GeneralCategory::Control | GeneralCategory::Format
    )
}

/// BERT's `_is_punctuation`: every non-alphanumeric ASCII symbol ("$", "^", "`" too) and the
/// Unicode punctuation categories.
fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_punctuation();
    }
    matches!(
        get_general_category(c),
        GeneralCategory::ConnectorPunctuation
            | GeneralCategory::DashPunctuation
            | GeneralCategory::OpenPunctuation
            | GeneralCategory::ClosePunctuation
            | GeneralCategory::InitialPunctuation
            | GeneralCategory::FinalPunctuation
            | GeneralCategory::OtherPunctuation
    )
}

/// BERT's `_is_chinese_char`: the CJK Unified Ideographs blocks.
fn is_cjk_ideograph(c: char) -> bool {
    matches!(u32::from(c),
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// Embedder settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedConfig {
    /// The ONNX model (`all-MiniLM-L6-v2-int8.onnx`).
    pub model: PathBuf,
    /// Its Hugging Face `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// The ONNX Runtime shared library (`libonnxruntime.so.*`).
    pub onnxruntime: PathBuf,
    /// ONNX Runtime's threads within an operator (daemon/benches/embed.rs measures 1 and 2).
    pub threads: usize,
}

impl EmbedConfig {
    pub fn new(
        model: impl Into<PathBuf>,
        tokenizer: impl Into<PathBuf>,
        onnxruntime: impl Into<PathBuf>,
    ) -> Self {
        EmbedConfig {
            model: model.into(),
            tokenizer: tokenizer.into(),
            onnxruntime: onnxruntime.into(),
            threads: 1,
        }
    }

    /// The bundle's model and tokenizer in `models_dir` (laid out as `models/manifest.toml`),
    /// with the ONNX Runtime [`super::default_onnxruntime`] picks.
    pub fn in_models_dir(models_dir: &Path) -> Self {
        Self::new(
            models_dir.join(super::EMBED_MODEL_FILE),
            models_dir.join(super::EMBED_TOKENIZER_FILE),
            super::default_onnxruntime(models_dir),
        )
    }
}

/// all-MiniLM-L6-v2 on ONNX Runtime: loaded once, shared by every call (see the module docs
/// on threads).
pub struct SentenceEmbedder {
    session: Mutex<Session>,
    tokenizer: WordPieceTokenizer,
    /// The inputs the model declares (some exports have no `token_type_ids`).
    wants_token_types: bool,
    config: EmbedConfig,
}

impl std::fmt::Debug for SentenceEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEmbedder")
            .field("config", &self.config)
            .field("vocab", &self.tokenizer.vocab_size())
            .finish()
    }
}

impl SentenceEmbedder {
    /// Loads the tokenizer and the model in `config`, loading ONNX Runtime from
    /// `config.onnxruntime` if this process has not loaded it yet. Every file is checked before
    /// any C code sees it.
    pub fn load(config: EmbedConfig) -> Result<Self, EmbedError> {
        require_file(&config.model, EmbedError::ModelMissing)?;
        let tokenizer = WordPieceTokenizer::from_file(&config.tokenizer)?;
        super::tts::init_onnxruntime(&config.onnxruntime).map_err(EmbedError::OnnxRuntime)?;

        let load_err = |reason: String| EmbedError::Load {
            path: config.model.clone(),
            reason,
        };
        let session =
            super::tts::onnx_session(&config.model, config.threads, super::tts::OnnxGraph::AsIs)
                .map_err(load_err)?;
        let input_names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for needed in ["input_ids", "attention_mask"] {
            if !input_names.contains(&needed) {
                return Err(load_err(format!(
                    "the model has no input {needed} (inputs: {input_names:?}): not a BERT sentence encoder"
                )));
            }
        }
        let wants_token_types = input_names.contains(&"token_type_ids");
        if !session
            .outputs()
            .iter()
            .any(|o| o.name() == HIDDEN_STATE_OUTPUT)
        {
            return Err(load_err(format!(
                "the model has no output {HIDDEN_STATE_OUTPUT}"
            )));
        }
        Ok(SentenceEmbedder {
            session: Mutex::new(session),
            tokenizer,
            wants_token_types,
            config,
        })
    }

    pub fn config(&self) -> &EmbedConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &WordPieceTokenizer {
        &self.tokenizer
    }

    /// Runs the model on `batch` (token ids, each with `[CLS]`/`[SEP]`), padded to the longest,
    /// and mean-pools each over its own tokens.
    fn run(&self, batch: &[Vec<i64>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let rows = batch.len();
        let width = batch.iter().map(Vec::len).max().unwrap_or(0);
        if rows == 0 || width == 0 {
            return Ok(Vec::new());
        }
        let mut ids = vec![0i64; rows * width];
        let mut mask = vec![0i64; rows * width];
        for (row, tokens) in batch.iter().enumerate() {
            ids[row * width..row * width + tokens.len()].copy_from_slice(tokens);
            mask[row * width..row * width + tokens.len()].fill(1);
        }
        let shape = [rows as i64, width as i64];
        let failed = |e: ort::Error| EmbedError::Inference(e.to_string());
        let mut inputs = ort::inputs![
            "input_ids" => Tensor::from_array((shape, ids)).map_err(failed)?,
            "attention_mask" => Tensor::from_array((shape, mask.clone())).map_err(failed)?,
        ];
        if self.wants_token_types {
            let types = Tensor::from_array((shape, vec![0i64; rows * width])).map_err(failed)?;
            inputs.push(("token_type_ids".into(), types.into()));
        }
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let outputs = session.run(inputs).map_err(failed)?;
        let (out_shape, hidden) = outputs[HIDDEN_STATE_OUTPUT]
            .try_extract_tensor::<f32>()
            .map_err(failed)?;
        let dims: &[i64] = out_shape;
        let [out_rows, out_width, size] = *dims else {
            return Err(EmbedError::Inference(format!(
                "{HIDDEN_STATE_OUTPUT} has shape {dims:?}, expected [batch, tokens, hidden]"
            )));
        };
        if out_rows as usize != rows || out_width as usize != width || size <= 0 {
            return Err(EmbedError::Inference(format!(
                "{HIDDEN_STATE_OUTPUT} has shape {dims:?} for a batch of [{rows}, {width}]"
            )));
        }
        let size = size as usize;
        Ok((0..rows)
            .map(|row| {
                let states = &hidden[row * width * size..(row + 1) * width * size];
                mean_pool(states, &mask[row * width..(row + 1) * width], size)
            })
            .collect())
    }
}

/// sentence-transformers' pooling: the mean of the token vectors the mask keeps, L2-normalised.
fn mean_pool(states: &[f32], mask: &[i64], size: usize) -> Vec<f32> {
    let mut sum = vec![0f32; size];
    let mut kept = 0f32;
    for (token, _) in states
        .chunks_exact(size)
        .zip(mask)
        .filter(|(_, &keep)| keep != 0)
    {
        for (s, v) in sum.iter_mut().zip(token) {
            *s += v;
        }
        kept += 1.0;
    }
    let kept = kept.max(1e-9);
    sum.iter_mut().for_each(|s| *s /= kept);
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    sum.iter_mut().for_each(|s| *s /= norm);
    sum
}

impl SentenceEmbedding for SentenceEmbedder {
    fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        self.run(&[self.tokenizer.encode(text)])?
            .pop()
            .ok_or_else(|| EmbedError::Inference("the model returned no vector".into()))
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let batch: Vec<Vec<i64>> = texts.iter().map(|t| self.tokenizer.encode(t)).collect();
        self.run(&batch)
    }

    fn is_word(&self, word: &str) -> bool {
        self.tokenizer.is_word(word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary with the ids of the real one (all-MiniLM-L6-v2's `tokenizer.json`, i.e.
    /// bert-base-uncased), for the tokens these tests need.
    fn tokenizer() -> WordPieceTokenizer {
        let vocab = serde_json::json!({
            "[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102,
            "hello": 7592, "world": 2088, ",": 1010, ".": 1012, "?": 1029, "'": 1005, "!": 999,
            "s": 1055, "that": 2008, "all": 2035, "cafe": 7668, "call": 2655, "me": 2033,
            "back": 2067, "ba": 8670, "##k": 2243, "re": 2128, "##ception": 24422,
            "##ist": 2923, "rec": 28667, "##ep": 13699, "##sh": 4095, "##shi": 6182,
            "##ion": 3258, "##onis": 27296, "##t": 2102, "-": 1011,
        });
        let json = serde_json::json!({
            "model": {
                "type": "WordPiece", "unk_token": "[UNK]",
                "continuing_subword_prefix": "##", "vocab": vocab,
            }
        });
        WordPieceTokenizer::from_json(&json.to_string()).unwrap()
    }

    #[test]
    fn words_map_to_their_vocabulary_ids_between_cls_and_sep() {
        assert_eq!(tokenizer().encode("hello world"), [101, 7592, 2088, 102]);
        assert_eq!(
            tokenizer().encode("  Hello\tWORLD\n"),
            [101, 7592, 2088, 102]
        );
        assert_eq!(tokenizer().encode(""), [101, 102]);
    }

    #[test]
    fn punctuation_is_split_off_and_accents_are_stripped() {
        assert_eq!(
            tokenizer().encode("Hello, world!"),
            [101, 7592, 1010, 2088, 999, 102]
        );
        // "that's" -> that ' s (BERT splits the apostrophe).
        assert_eq!(
            tokenizer().encode("That's all."),
            [101, 2008, 1005, 1055, 2035, 1012, 102]
        );
        assert_eq!(tokenizer().encode("Café?"), [101, 7668, 1029, 102]);
        assert_eq!(
            basic_tokens("Où\u{0}  est-il?\u{200b}"),
            ["ou", "est", "-", "il", "?"]
        );
    }

    #[test]
    fn unknown_words_become_pieces_or_one_unk() {
        // "recepshionist" (a misspelt "receptionist"): longest match first ("##shi" before
        // "##sh"), continuations with ##: rec ##ep ##shi ##onis ##t, as the real vocabulary.
        assert_eq!(
            tokenizer().encode("recepshionist"),
            [101, 28667, 13699, 6182, 27296, 2102, 102]
        );
        assert_eq!(
            tokenizer().encode("call me bak"),
            [101, 2655, 2033, 8670, 2243, 102]
        );
        // A word with a part not in the vocabulary ("##z" here) is one [UNK], not a partial
        // split.
        assert_eq!(
            tokenizer().encode("call me bakz"),
            [101, 2655, 2033, 100, 102]
        );
        assert_eq!(tokenizer().encode(&"a".repeat(101)), [101, 100, 102]);
    }

    #[test]
    fn long_text_is_cut_to_the_model_length_keeping_sep() {
        let ids = tokenizer().encode(&"hello ".repeat(300));
        assert_eq!(ids.len(), MAX_TOKENS);
        assert_eq!(ids[0], 101);
        assert_eq!(ids[MAX_TOKENS - 1], 102);
        assert!(ids[1..MAX_TOKENS - 1].iter().all(|&id| id == 7592));
    }

    #[test]
    fn a_tokenizer_json_without_special_tokens_is_refused_with_the_reason() {
        let json = r#"{"model": {"type": "WordPiece", "vocab": {"hello": 1}}}"#;
        let err = WordPieceTokenizer::from_json(json).unwrap_err();
        assert!(err.contains("[UNK]"), "{err}");
        let bpe = r#"{"model": {"type": "BPE", "vocab": {}}}"#;
        assert!(WordPieceTokenizer::from_json(bpe)
            .unwrap_err()
            .contains("WordPiece"));
    }

    #[test]
    fn the_bundled_tokenizer_gives_bert_ids() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/models")
            .join(crate::speech::EMBED_TOKENIZER_FILE);
        if !path.is_file() {
            eprintln!("skipped: {} not found", path.display());
            return;
        }
        let t = WordPieceTokenizer::from_file(&path).unwrap();
        assert_eq!(t.vocab_size(), 30522);
        assert!(t.is_word("massage") && !t.is_word("clinik") && !t.is_word("##ist"));
        assert_eq!(t.encode("hello world"), [101, 7592, 2088, 102]);
        assert_eq!(t.encode("Hello, world!"), [101, 7592, 1010, 2088, 999, 102]);
        assert_eq!(
            t.encode("recepshionist"),
            [101, 28667, 13699, 6182, 27296, 2102, 102]
        );
    }

    #[test]
    fn mean_pool_averages_the_kept_tokens_and_normalises() {
        // Two tokens kept ([3,0] and [1,0] -> [2,0] -> [1,0]), the padding one ignored.
        let v = mean_pool(&[3.0, 0.0, 1.0, 0.0, 0.0, 50.0], &[1, 1, 0], 2);
        assert_eq!(v, [1.0, 0.0]);
        let v = mean_pool(&[3.0, 4.0], &[1], 2);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn missing_files_fail_before_onnx_runtime_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbedConfig::in_models_dir(dir.path());
        let err = SentenceEmbedder::load(config.clone()).unwrap_err();
        assert!(matches!(err, EmbedError::ModelMissing(_)), "{err}");
        assert!(
            err.to_string().contains("edgevoice models install"),
            "{err}"
        );
        std::fs::create_dir_all(config.model.parent().unwrap()).unwrap();
        std::fs::write(&config.model, b"x").unwrap();
        let err = SentenceEmbedder::load(config).unwrap_err();
        assert!(matches!(err, EmbedError::TokenizerMissing(_)), "{err}");
    }
}
