//! Speech recognition with whisper.cpp (whisper-rs): greedy decoding, English, the encoder sized
//! to the utterance (`audio_ctx`).
//!
//! With the sized encoder the decoder runs without timestamp tokens, as whisper.cpp's own
//! streaming example does: with them it ended the segment early at a wrong time and then said
//! the utterance again ("A golden ring will please, mother. A golden ring will please, …"),
//! which cost a third more decoding and mangled the text. Word times then come from DTW over
//! the cross-attention of the top text layers (any whisper model has them), not from timestamp
//! tokens. The whole-window mode keeps timestamp tokens and uses flash attention instead
//! (whisper.cpp cannot do both; flash attention only pays off on the whole window).

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use whisper_rs::{
    DtwMode, DtwParameters, FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters,
    WhisperState,
};

use super::{
    audio_ctx_for, require_file, AsrError, AsrSession, Listening, Segment, SpeechRecognizer,
    Transcript, Word, ASR_SAMPLE_RATE,
};

/// Recognizer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhisperConfig {
    /// The ggml whisper model file.
    pub model: PathBuf,
    /// CPU threads per decode.
    pub threads: u32,
    /// Language code ("en" for the .en models).
    pub language: String,
    /// Size the encoder to the utterance (FACTS.md). Off = whisper's whole 30 s window.
    pub sized_audio_ctx: bool,
}

impl WhisperConfig {
    pub fn new(model: impl Into<PathBuf>) -> Self {
        WhisperConfig {
            model: model.into(),
            threads: 2,
            language: "en".into(),
            sized_audio_ctx: true,
        }
    }
}

/// whisper.cpp's and ggml's logs go to `tracing` (not stderr).
fn install_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(whisper_rs::install_logging_hooks);
}

/// A whisper model, loaded once (memory-mapped by whisper.cpp) and shared by all calls.
pub struct WhisperRecognizer {
    ctx: WhisperContext,
    config: WhisperConfig,
}

impl std::fmt::Debug for WhisperRecognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperRecognizer")
            .field("config", &self.config)
            .finish()
    }
}

impl WhisperRecognizer {
    /// Loads the model in `config.model`.
    pub fn load(config: WhisperConfig) -> Result<Self, AsrError> {
        install_logging();
        require_file(&config.model, AsrError::ModelMissing)?;
        let path = config.model.to_str().ok_or_else(|| AsrError::ModelLoad {
            path: config.model.clone(),
            reason: "path is not UTF-8".into(),
        })?;
        let mut params = WhisperContextParameters::default();
        if config.sized_audio_ctx {
            params.dtw_parameters(DtwParameters {
                mode: DtwMode::TopMost {
                    n_top: DTW_TOP_TEXT_LAYERS,
                },
                ..DtwParameters::default()
            });
        } else {
            // A third off the whole window's encoder (speech bench); it would disable DTW.
            params.flash_attn(true);
        }
        let ctx =
            WhisperContext::new_with_params(path, params).map_err(|e| AsrError::ModelLoad {
                path: config.model.clone(),
                reason: e.to_string(),
            })?;
        Ok(WhisperRecognizer { ctx, config })
    }

    pub fn config(&self) -> &WhisperConfig {
        &self.config
    }

    pub fn model_path(&self) -> &Path {
        &self.config.model
    }

    /// A per-call state.
    pub fn new_session(&self) -> Result<WhisperSession, AsrError> {
        let state = self
            .ctx
            .create_state()
            .map_err(|e| AsrError::State(e.to_string()))?;
        Ok(WhisperSession {
            config: self.config.clone(),
            eot: self.ctx.token_eot(),
            state,
        })
    }
}

impl SpeechRecognizer for WhisperRecognizer {
    fn session(&self) -> Result<Box<dyn AsrSession + '_>, AsrError> {
        Ok(Box::new(self.new_session()?))
    }
}

/// A per-call whisper state (its buffers are reused for every utterance of the call). It keeps
/// the model alive itself (whisper-rs counts references to the context), so a session outlives
/// a [`WhisperRecognizer`] dropped by a model swap.
pub struct WhisperSession {
    config: WhisperConfig,
    eot: i32,
    state: WhisperState,
}

/// Text layers whose attention heads DTW aligns tokens with (every whisper model has at least
/// 4; on tiny.en the words land within ~40 ms of its alignment-head preset, for less work).
const DTW_TOP_TEXT_LAYERS: i32 = 2;

/// whisper's timestamps are in 10 ms units.
fn ts_ms(t: i64) -> u64 {
    u64::try_from(t.max(0)).unwrap_or(0) * 10
}

/// Word spans from DTW token times (the moment each word starts): a word lasts until the next
/// one starts; the last one until `audio_ms` (at most `LAST_WORD_MS`).
fn spans_from_starts(words: &mut [Word], audio_ms: u64) {
    const LAST_WORD_MS: u64 = 800;
    let mut floor = 0;
    for w in words.iter_mut() {
        w.start_ms = w.start_ms.clamp(floor, audio_ms);
        floor = w.start_ms;
    }
    let starts: Vec<u64> = words.iter().map(|w| w.start_ms).collect();
    for (i, w) in words.iter_mut().enumerate() {
        w.end_ms = match starts.get(i + 1) {
            Some(&next) => next,
            None => audio_ms.min(w.start_ms + LAST_WORD_MS),
        };
    }
}

/// Most text tokens a sized-context decode may produce for `samples` of speech: fast speech is
/// about 3.5 words (4.5 tokens) a second.
fn max_tokens_for(samples: usize) -> i32 {
    let seconds = samples as f64 / f64::from(ASR_SAMPLE_RATE);
    (seconds * 6.0).ceil() as i32 + 8
}

/// Removes what the decoder said after the speech ended: it says the utterance (or its last
/// phrase) again, once or several times, the last copy perhaps cut short. Token timestamps
/// cannot tell: with a sized encoder many real words get no duration too. Returns whether
/// anything was removed.
fn drop_decoder_run_on(words: &mut Vec<Word>) -> bool {
    let before = words.len();
    // Dropping a periodic tail can leave a restart behind it, and the other way round.
    while let Some(keep) = run_on_start(words) {
        words.truncate(keep);
    }
    words.len() < before
}

/// Where the decoder's run-on starts in `words`, if it ran on.
fn run_on_start(words: &[Word]) -> Option<usize> {
    let norm: Vec<String> = words
        .iter()
        .map(|w| crate::speech::text::normalize_words(&w.text).join(" "))
        .collect();
    let n = norm.len();
    // The last word may be cut off by the token limit ("americ" for "america").
    let same = |j: usize, k: usize| {
        norm[j] == norm[k] || (j + 1 == n && !norm[j].is_empty() && norm[k].starts_with(&norm[j]))
    };
    // The longest tail that repeats itself with some period p: keep its first period only.
    let mut keep = n;
    for p in 2..n {
        let mut start = n;
        while start > p && same(start - 1, start - 1 - p) {
            start -= 1;
        }
        // `start..n` equals `start-p..n-p`: the text from start - p on is periodic.
        let repeated = n - start;
        if repeated >= p.min(3) {
            keep = keep.min(start);
        }
    }
    // A new sentence that starts the utterance over and is cut short by the end of the audio
    // ("How much no consultation card. How much"): two words are enough there.
    for k in 2..=n / 2 {
        let tail = n - k;
        let after_sentence_end = words[tail - 1].text.trim_end().ends_with(['.', '?', '!']);
        if after_sentence_end && (0..k).all(|i| same(tail + i, i)) {
            keep = keep.min(tail);
        }
    }
    (keep < n).then_some(keep)
}

/// Decodes after an early end of text: at most this many more passes per utterance.
const MAX_CONTINUATIONS: usize = 3;

/// Where speech the decoder has not written starts, if any. The decoder without timestamp
/// tokens can end its text at a pause ("What are your opening hours?" without the "Hello?"
/// after it). The first pause (≥ 160 ms below the speech level) that ends after the last word
/// written starts (DTW puts a last word up to ~300 ms late, so with that margin) and is
/// followed by at least 200 ms of speech is found; the rest is decoded from 100 ms before the
/// speech resumes.
fn untranscribed_speech_after(pcm: &[f32], last_word_start_ms: u64) -> Option<usize> {
    const FRAME: usize = ASR_SAMPLE_RATE as usize / 50; // 20 ms
    const MIN_PAUSE_FRAMES: usize = 8;
    const MIN_SPEECH_FRAMES: usize = 10;
    const DTW_LATE_MS: u64 = 300;
    let rms: Vec<f32> = pcm
        .chunks(FRAME)
        .map(|f| (f.iter().map(|x| x * x).sum::<f32>() / f.len() as f32).sqrt())
        .collect();
    let peak = rms.iter().copied().fold(0.0f32, f32::max);
    // Speech: within 30 dB of the loudest frame and above -50 dBFS.
    let level = (peak * 0.0316).max(0.00316);
    let voiced: Vec<bool> = rms.iter().map(|&r| r >= level).collect();
    // Frames where speech resumes after a pause, and how much speech follows each.
    let mut resumes = Vec::new();
    let mut quiet = 0;
    let mut heard = false;
    for (i, &v) in voiced.iter().enumerate() {
        if v {
            if heard && quiet >= MIN_PAUSE_FRAMES {
                resumes.push(i);
            }
            heard = true;
            quiet = 0;
        } else {
            quiet += 1;
        }
    }
    let resume = resumes.into_iter().find(|&i| {
        (i * 20) as u64 + DTW_LATE_MS > last_word_start_ms
            && voiced[i..].iter().filter(|&&v| v).count() >= MIN_SPEECH_FRAMES
    })?;
    Some((resume * FRAME).saturating_sub(5 * FRAME))
}

/// Appends a continuation's words, without the words it said again from the end of `words`.
/// A short piece decoded alone can also say its only word twice ("Hello? Hello?"): once.
fn append_continuation(words: &mut Vec<Word>, mut more: Vec<Word>) {
    let norm = |w: &Word| crate::speech::text::normalize_words(&w.text).join(" ");
    if more.len() > 1 && more.iter().all(|w| norm(w) == norm(&more[0])) {
        more.truncate(1);
    }
    let overlap = (1..=words.len().min(more.len()))
        .rev()
        .find(|&k| {
            words[words.len() - k..]
                .iter()
                .zip(&more[..k])
                .all(|(a, b)| norm(a) == norm(b))
        })
        .unwrap_or(0);
    words.extend(more.into_iter().skip(overlap));
}

impl WhisperSession {
    /// Transcribes one utterance of 16 kHz mono f32 audio.
    pub fn transcribe(&mut self, pcm_16k: &[f32]) -> Result<Transcript, AsrError> {
        self.transcribe_for(pcm_16k, Listening::Speech)
    }

    /// Transcribes one utterance expected to be `listening`. For digits the sized encoder is
    /// never smaller than [`DIGITS_MIN_AUDIO_CTX`] and there is no second pass over the tail:
    /// a number's groups have pauses a continuation takes for unheard speech and says again.
    pub fn transcribe_for(
        &mut self,
        pcm_16k: &[f32],
        listening: Listening,
    ) -> Result<Transcript, AsrError> {
        let started = Instant::now();
        let audio = Duration::from_secs_f64(pcm_16k.len() as f64 / f64::from(ASR_SAMPLE_RATE));
        if pcm_16k.is_empty() {
            return Ok(Transcript {
                text: String::new(),
                segments: Vec::new(),
                audio,
                elapsed: started.elapsed(),
                audio_ctx: 0,
            });
        }
        let (mut segments, audio_ctx) = self.decode(pcm_16k, listening)?;
        // Without timestamp tokens (sized encoder: one segment) the text can end at a pause
        // before the speech does: decode the rest and add it.
        if audio_ctx < 1500 && segments.len() == 1 && listening == Listening::Speech {
            for _ in 0..MAX_CONTINUATIONS {
                let Some(last) = segments[0].words.last() else {
                    break;
                };
                let Some(from) = untranscribed_speech_after(pcm_16k, last.start_ms) else {
                    break;
                };
                let offset_ms = from as u64 * 1000 / u64::from(ASR_SAMPLE_RATE);
                let (more, _) = self.decode(&pcm_16k[from..], listening)?;
                let added: Vec<Word> = more
                    .into_iter()
                    .flat_map(|s| s.words)
                    .map(|mut w| {
                        w.start_ms += offset_ms;
                        w.end_ms += offset_ms;
                        w
                    })
                    .collect();
                if added.is_empty() {
                    break;
                }
                let seg = &mut segments[0];
                let before = seg.words.len();
                append_continuation(&mut seg.words, added);
                drop_decoder_run_on(&mut seg.words);
                let audio_ms = audio.as_millis() as u64;
                spans_from_starts(&mut seg.words, audio_ms);
                seg.text = seg
                    .words
                    .iter()
                    .map(|w| w.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                seg.end_ms = seg.words.last().map_or(audio_ms, |w| w.end_ms);
                if seg.words.len() <= before {
                    break; // what it heard there was a repetition
                }
            }
        }
        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Transcript {
            text,
            segments,
            audio,
            elapsed: started.elapsed(),
            audio_ctx,
        })
    }

    /// One whisper pass over `pcm_16k` (not empty): its segments and the encoder size used.
    fn decode(
        &mut self,
        pcm_16k: &[f32],
        listening: Listening,
    ) -> Result<(Vec<Segment>, u32), AsrError> {
        let cfg = &self.config;
        let audio = Duration::from_secs_f64(pcm_16k.len() as f64 / f64::from(ASR_SAMPLE_RATE));
        // whisper.cpp refuses less than 1 s ("input is too short"): pad short clips with silence.
        let min = ASR_SAMPLE_RATE as usize + ASR_SAMPLE_RATE as usize / 10;
        let padded;
        let pcm = if pcm_16k.len() < min {
            let mut p = pcm_16k.to_vec();
            p.resize(min, 0.0);
            padded = p;
            &padded[..]
        } else {
            pcm_16k
        };
        let audio_ctx = match (cfg.sized_audio_ctx, listening) {
            (false, _) => 1500,
            (true, Listening::Speech) => audio_ctx_for(pcm.len()),
            (true, Listening::Digits) => audio_ctx_for(pcm.len()).max(DIGITS_MIN_AUDIO_CTX),
        };

        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(i32::try_from(cfg.threads.max(1)).unwrap_or(1));
        params.set_language(Some(&cfg.language));
        params.set_translate(false);
        params.set_no_context(true);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        let dtw_word_times = audio_ctx < 1500;
        params.set_token_timestamps(!dtw_word_times);
        if dtw_word_times {
            params.set_audio_ctx(i32::try_from(audio_ctx).unwrap_or(1500));
            // No timestamp tokens (module docs): the text ends where the speech does, and the
            // word times come from DTW.
            params.set_no_timestamps(true);
            // One decoding pass over the utterance (no seek-and-re-decode over the truncated
            // encoder output).
            params.set_single_segment(true);
            // Bounds a decoder that runs on past the speech (seen: 90 invented words and 6 s of
            // decoding for a 1.9 s question): about 4 tokens a second of speech is plenty.
            params.set_max_tokens(max_tokens_for(pcm_16k.len()));
        }

        self.state
            .full(params, pcm)
            .map_err(|e| AsrError::Decode(e.to_string()))?;

        let eot = self.eot;
        let mut segments = Vec::new();
        for seg in self.state.as_iter() {
            let text = seg
                .to_str_lossy()
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            let mut words: Vec<Word> = Vec::new();
            let mut probs: Vec<f32> = Vec::new();
            for i in 0..seg.n_tokens() {
                let Some(tok) = seg.get_token(i) else {
                    continue;
                };
                if tok.token_id() >= eot {
                    continue; // special and timestamp tokens
                }
                let piece = tok
                    .to_str_lossy()
                    .map(|s| s.into_owned())
                    .unwrap_or_default();
                if piece.is_empty() {
                    continue;
                }
                let data = tok.token_data();
                let starts_word = piece.starts_with(' ') || words.is_empty();
                if starts_word {
                    if let (Some(w), false) = (words.last_mut(), probs.is_empty()) {
                        w.probability = probs.iter().sum::<f32>() / probs.len() as f32;
                    }
                    probs.clear();
                    let start = if dtw_word_times { data.t_dtw } else { data.t0 };
                    words.push(Word {
                        text: piece.trim().to_string(),
                        start_ms: ts_ms(start),
                        end_ms: ts_ms(data.t1),
                        probability: 0.0,
                    });
                } else if let Some(w) = words.last_mut() {
                    w.text.push_str(&piece);
                    w.end_ms = ts_ms(data.t1);
                }
                probs.push(data.p);
            }
            if let (Some(w), false) = (words.last_mut(), probs.is_empty()) {
                w.probability = probs.iter().sum::<f32>() / probs.len() as f32;
            }
            words.retain(|w| !w.text.is_empty());
            let audio_ms = audio.as_millis() as u64;
            if dtw_word_times {
                spans_from_starts(&mut words, audio_ms);
            }
            // With the encoder sized to the utterance, the decoder can run past the speech and
            // say it again. Drop the repetition, and its text.
            let text = if audio_ctx < 1500 && drop_decoder_run_on(&mut words) {
                words
                    .iter()
                    .map(|w| w.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                text
            };
            let (start_ms, end_ms) = if dtw_word_times {
                (
                    words.first().map_or(0, |w| w.start_ms),
                    words.last().map_or(audio_ms, |w| w.end_ms),
                )
            } else {
                (ts_ms(seg.start_timestamp()), ts_ms(seg.end_timestamp()))
            };
            segments.push(Segment {
                text,
                start_ms,
                end_ms,
                words,
                no_speech_probability: seg.no_speech_probability(),
            });
        }
        Ok((segments, audio_ctx))
    }
}

impl AsrSession for WhisperSession {
    fn transcribe(&mut self, pcm_16k: &[f32]) -> Result<Transcript, AsrError> {
        WhisperSession::transcribe(self, pcm_16k)
    }

    fn transcribe_for(
        &mut self,
        pcm_16k: &[f32],
        listening: Listening,
    ) -> Result<Transcript, AsrError> {
        WhisperSession::transcribe_for(self, pcm_16k, listening)
    }
}

/// Fewest encoder positions for a number read out (tests/digit_capture.rs measures it).
pub const DIGITS_MIN_AUDIO_CTX: u32 = 300;

#[cfg(test)]
mod tests {
    use super::*;

    fn w(text: &str, start_ms: u64, end_ms: u64) -> Word {
        Word {
            text: text.to_owned(),
            start_ms,
            end_ms,
            probability: 0.9,
        }
    }

    fn speech_and_pauses(parts: &[(bool, u64)]) -> Vec<f32> {
        let mut pcm = Vec::new();
        for &(loud, ms) in parts {
            let n = ms as usize * 16;
            pcm.extend((0..n).map(|i| {
                if loud {
                    0.3 * (i as f32 * 0.07).sin()
                } else {
                    0.0005 // line noise, below the speech level
                }
            }));
        }
        pcm
    }

    #[test]
    fn speech_after_a_pause_past_the_last_word_is_found_and_a_breath_is_not() {
        // 1 s of speech, a 300 ms pause, 500 ms more: the text ended at a word at 0.5 s, or
        // DTW put that word late, into the pause or just after it.
        let pcm = speech_and_pauses(&[(true, 1000), (false, 300), (true, 500)]);
        assert_eq!(untranscribed_speech_after(&pcm, 500), Some(1200 * 16));
        assert_eq!(untranscribed_speech_after(&pcm, 1500), Some(1200 * 16));
        // The last word written starts well after the pause: nothing left.
        assert_eq!(untranscribed_speech_after(&pcm, 1700), None);
        // The first pause after the text's end counts; the later ones come in later passes.
        let pcm = speech_and_pauses(&[
            (true, 500),
            (false, 300),
            (true, 500),
            (false, 300),
            (true, 500),
        ]);
        assert_eq!(untranscribed_speech_after(&pcm, 200), Some(700 * 16));
        assert_eq!(untranscribed_speech_after(&pcm, 1200), Some(1500 * 16));
        // 100 ms of sound after the pause is not speech worth a pass.
        let pcm = speech_and_pauses(&[(true, 1000), (false, 300), (true, 100), (false, 500)]);
        assert_eq!(untranscribed_speech_after(&pcm, 500), None);
        // A pause shorter than 160 ms is inside the sentence.
        let pcm = speech_and_pauses(&[(true, 1000), (false, 100), (true, 500)]);
        assert_eq!(untranscribed_speech_after(&pcm, 500), None);
    }

    #[test]
    fn a_continuation_does_not_repeat_the_words_it_starts_with() {
        let words = |t: &str| -> Vec<Word> { t.split(' ').map(|x| w(x, 0, 0)).collect() };
        let mut said = words("What are your opening hours");
        append_continuation(&mut said, words("hours? Hello?"));
        let text: Vec<&str> = said.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(text, ["What", "are", "your", "opening", "hours", "Hello?"]);
        let mut said = words("what are you opening hours");
        append_continuation(&mut said, words("Hello? Hello?"));
        assert_eq!(said.len(), 6);
        let mut said = words("Thank you for calling.");
        append_continuation(&mut said, words("Goodbye."));
        assert_eq!(said.len(), 5);
    }

    #[test]
    fn dtw_word_starts_become_ordered_spans_within_the_audio() {
        // DTW times are starts; one may come out before its predecessor or after the audio.
        let mut words = vec![
            w("ask", 3840, 0),
            w("not", 4500, 0),
            w("what", 4400, 0),
            w("country", 12_000, 0),
        ];
        spans_from_starts(&mut words, 11_000);
        let spans: Vec<(u64, u64)> = words.iter().map(|w| (w.start_ms, w.end_ms)).collect();
        assert_eq!(
            spans,
            [(3840, 4500), (4500, 4500), (4500, 11_000), (11_000, 11_000)]
        );
        let mut words = vec![w("hello", 200, 0)];
        spans_from_starts(&mut words, 5000);
        assert_eq!((words[0].start_ms, words[0].end_ms), (200, 1000));
    }

    #[test]
    fn a_repeated_utterance_is_dropped_and_nothing_else() {
        let mut words = vec![
            w("Hello,", 100, 400),
            w("what", 460, 700),
            w("time?", 700, 900),
            w("Hello,", 950, 950),
            w("what", 950, 950),
            w("time?", 950, 950),
        ];
        assert!(drop_decoder_run_on(&mut words));
        assert_eq!(words.len(), 3);
        let mut words = vec![
            w("the", 0, 100),
            w("end", 100, 200),
            w("the", 200, 300),
            w("end.", 300, 400),
        ];
        assert!(drop_decoder_run_on(&mut words));
        assert_eq!(words.len(), 2);
        let mut words: Vec<Word> = "The grass was wet with dew. The grass was wet"
            .split(' ')
            .map(|t| w(t, 0, 0))
            .collect();
        assert!(drop_decoder_run_on(&mut words));
        assert_eq!(words.len(), 6);
        let mut words: Vec<Word> =
            "and so my fellow america and so my fellow america and so my fellow americ"
                .split(' ')
                .map(|t| w(t, 0, 0))
                .collect();
        assert!(drop_decoder_run_on(&mut words));
        assert_eq!(words.len(), 5);
        let mut words: Vec<Word> =
            "ask not what your country can do for you ask what you can do for your country"
                .split(' ')
                .map(|t| w(t, 0, 0))
                .collect();
        assert!(!drop_decoder_run_on(&mut words));
        let mut words = vec![w("no,", 0, 100), w("no.", 100, 200), w("fine", 200, 300)];
        assert!(!drop_decoder_run_on(&mut words));
        // The utterance started over after a full stop, cut short: dropped.
        let mut words: Vec<Word> = "How much no no no consultation card. How much"
            .split(' ')
            .map(|t| w(t, 0, 0))
            .collect();
        assert!(drop_decoder_run_on(&mut words));
        assert_eq!(words.len(), 7);
        // Seen: a periodic run-on whose first copy differs ("no no no"), then the restart.
        let mut words: Vec<Word> = "How much no no no consultation card. How much no no \
                                    consultation card. How much no no consultation card. How much no no"
            .split_whitespace()
            .map(|t| w(t, 0, 0))
            .collect();
        assert!(drop_decoder_run_on(&mut words));
        assert_eq!(words.len(), 7);
        // The same words again without a sentence between them are the caller's.
        let mut words: Vec<Word> = "how much is it how much"
            .split(' ')
            .map(|t| w(t, 0, 0))
            .collect();
        assert!(!drop_decoder_run_on(&mut words));
        // Words without duration are kept: real words get them too with a sized encoder.
        let mut words = vec![w("a", 0, 100), w("gold", 100, 100), w("ring", 100, 100)];
        assert!(!drop_decoder_run_on(&mut words));
    }
}
