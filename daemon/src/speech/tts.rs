//! Speech synthesis with Piper voices (piper-rs: a VITS model run by ONNX Runtime, text turned
//! into phonemes by espeak-ng, which is compiled into the binary).
//!
//! - **ONNX Runtime** is not linked: `ort` loads the library named in [`PiperConfig::onnxruntime`]
//!   (the model bundle's `onnxruntime/libonnxruntime.so.*`, installed by `edgevoice models
//!   install`) at the first [`PiperSynthesizer::load`]. ort 2.0.0-rc.12 hangs forever when it
//!   cannot load that library (ort issue 560: building its error re-enters its own
//!   initialisation), whether the file is missing, not a library, or too old. So the file is
//!   checked and opened here first, and its version read, before ort sees it. ONNX Runtime can
//!   be loaded only once per process: later loads reuse the library already loaded (a different
//!   path is logged and ignored).
//! - **espeak-ng data** (phoneme tables and dictionaries) comes from the Debian package
//!   `espeak-ng-data` (`/usr/lib/<triplet>/espeak-ng-data`); `PIPER_ESPEAKNG_DATA_DIRECTORY` (the
//!   directory holding `espeak-ng-data`) overrides it. espeak-ng is one global, non-thread-safe
//!   state: it is initialised once with that path and every use takes one process-wide lock.
//! - **Threads**: piper-rs needs `&mut` to run its ONNX session, so each synthesizer keeps it in
//!   a `Mutex`: calls from several threads are served one at a time (on this appliance's 2 cores
//!   parallel syntheses would only slow each other down). Load a second synthesizer for a
//!   second voice.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use ort::session::Session;
use piper_rs::{ModelConfig, Piper};

use super::{require_file, SpeechSynthesizer, Synthesis, TtsError};

/// Synthesizer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiperConfig {
    /// The voice model (`.onnx`); its config (`.onnx.json`) sits next to it.
    pub voice: PathBuf,
    /// The ONNX Runtime shared library (`libonnxruntime.so.*`).
    pub onnxruntime: PathBuf,
    /// ONNX Runtime's threads within an operator (REFERENCE-FIGURES.md: 2 threads ≈ 1.7× faster
    /// than 1).
    pub threads: usize,
}

impl PiperConfig {
    pub fn new(voice: impl Into<PathBuf>, onnxruntime: impl Into<PathBuf>) -> Self {
        PiperConfig {
            voice: voice.into(),
            onnxruntime: onnxruntime.into(),
            threads: 2,
        }
    }

    /// The voice's config: `<voice>.json` (e.g. `en_US-joe-medium.onnx.json`).
    pub fn voice_config(&self) -> PathBuf {
        let mut name = self.voice.clone().into_os_string();
        name.push(".json");
        PathBuf::from(name)
    }
}

/// A Piper voice, loaded once and shared by every call (see the module docs on threads).
pub struct PiperSynthesizer {
    piper: Mutex<Piper>,
    config: PiperConfig,
    /// espeak-ng voice of the model (e.g. "en-us").
    espeak_voice: String,
    sample_rate: u32,
}

impl std::fmt::Debug for PiperSynthesizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperSynthesizer")
            .field("config", &self.config)
            .field("espeak_voice", &self.espeak_voice)
            .field("sample_rate", &self.sample_rate)
            .finish()
    }
}

impl PiperSynthesizer {
    /// Loads the voice in `config.voice` (and its `.onnx.json`), loading ONNX Runtime from
    /// `config.onnxruntime` if this process has not loaded it yet. Every file is checked before
    /// any C code sees it.
    pub fn load(config: PiperConfig) -> Result<Self, TtsError> {
        require_file(&config.voice, TtsError::VoiceMissing)?;
        let json_path = config.voice_config();
        let model_config = read_voice_config(&json_path)?;
        let espeak_voice = model_config.espeak.voice.clone();
        let sample_rate = model_config.audio.sample_rate;

        init_onnxruntime(&config.onnxruntime)?;
        // Fails here, not at the first call, if espeak-ng's data or the voice's language is
        // missing.
        espeak::phonemize("test", &espeak_voice)?;

        let load_err = |reason: String| TtsError::Load {
            path: config.voice.clone(),
            reason,
        };
        let session =
            onnx_session(&config.voice, config.threads, OnnxGraph::AsIs).map_err(load_err)?;
        Ok(PiperSynthesizer {
            piper: Mutex::new(Piper::from_session(session, model_config)),
            config,
            espeak_voice,
            sample_rate,
        })
    }

    pub fn config(&self) -> &PiperConfig {
        &self.config
    }

    /// Synthesizes one sentence's phonemes (as espeak-ng wrote them) to 16-bit PCM.
    fn render(&self, phonemes: &str) -> Result<Vec<i16>, TtsError> {
        let mut piper = self.piper.lock().unwrap_or_else(PoisonError::into_inner);
        let (samples, _) = piper
            .create(phonemes, true, None, None, None, None)
            .map_err(|e| TtsError::Synthesis(e.to_string()))?;
        Ok(pcm_f32_to_i16(&samples))
    }
}

impl SpeechSynthesizer for PiperSynthesizer {
    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    fn synthesize(&self, text: &str) -> Result<Synthesis, TtsError> {
        self.synthesize_streaming(text, &mut |_| ControlFlow::Continue(()))
    }

    /// Runs the model once per sentence (espeak-ng's sentence split) and hands each sentence's
    /// audio to `on_audio` as soon as it is ready.
    fn synthesize_streaming(
        &self,
        text: &str,
        on_audio: &mut dyn FnMut(&[i16]) -> ControlFlow<()>,
    ) -> Result<Synthesis, TtsError> {
        let started = Instant::now();
        let mut pcm = Vec::new();
        for sentence in espeak::phonemize(text, &self.espeak_voice)? {
            let audio = self.render(&sentence)?;
            pcm.extend_from_slice(&audio);
            if on_audio(&audio).is_break() {
                break;
            }
        }
        Ok(Synthesis {
            pcm,
            sample_rate: self.sample_rate,
            elapsed: started.elapsed(),
        })
    }
}

/// Reads and checks a Piper voice config (`.onnx.json`).
fn read_voice_config(path: &Path) -> Result<ModelConfig, TtsError> {
    require_file(path, TtsError::VoiceConfigMissing)?;
    let invalid = |reason: String| TtsError::VoiceConfigInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    parse_voice_config(&text).map_err(invalid)
}

fn parse_voice_config(text: &str) -> Result<ModelConfig, String> {
    let config: ModelConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if !(8000..=48_000).contains(&config.audio.sample_rate) {
        return Err(format!(
            "audio.sample_rate {} is not a voice's rate (8000..=48000)",
            config.audio.sample_rate
        ));
    }
    if config.espeak.voice.is_empty() || config.espeak.voice.contains('\0') {
        return Err("espeak.voice is empty or invalid".into());
    }
    if config.phoneme_id_map.is_empty() {
        return Err("phoneme_id_map is empty".into());
    }
    Ok(config)
}

/// f32 samples (nominally -1.0..=1.0) to 16-bit PCM, clipped.
fn pcm_f32_to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|&s| (s * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

/// Checks that the ONNX Runtime library is a readable file (ort hangs forever on a missing one).
fn check_onnxruntime_file(path: &Path) -> Result<(), TtsError> {
    if !path.is_file() {
        return Err(TtsError::OnnxRuntimeMissing(path.to_path_buf()));
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| TtsError::OnnxRuntimeUnreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Opens the ONNX Runtime library the way ort will and checks its API version, so that ort is
/// only given a library it can load (on any failure it would hang). Returns its version.
fn probe_onnxruntime(path: &Path) -> Result<String, TtsError> {
    let failed = |reason: String| TtsError::OnnxRuntimeLoad {
        path: path.to_path_buf(),
        reason,
    };
    // SAFETY: loading runs the library's initialisers: this is the file configured as ONNX
    // Runtime (from the model bundle, verified by `edgevoice models verify`), the same file ort
    // loads next. The symbol's type is ONNX Runtime's C API entry point.
    let version = unsafe {
        // (libloading's Display says only "dlopen failed"; its Debug has dlerror's reason.)
        let lib = libloading::Library::new(path).map_err(|e| failed(format!("{e:?}")))?;
        let get_api_base = lib
            .get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase")
            .map_err(|_| failed("not an ONNX Runtime library (no OrtGetApiBase)".into()))?;
        let base = get_api_base();
        if base.is_null() {
            return Err(failed("OrtGetApiBase returned nothing".into()));
        }
        let version = ((*base).GetVersionString)();
        if version.is_null() {
            return Err(failed("no version string".into()));
        }
        CStr::from_ptr(version).to_string_lossy().into_owned()
    };
    let minor = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if minor < ort::MINOR_VERSION {
        return Err(failed(format!(
            "version {version} is too old, 1.{}.x or newer is needed",
            ort::MINOR_VERSION
        )));
    }
    Ok(version)
}

/// How much ONNX Runtime may rewrite a model's graph at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnnxGraph {
    /// Its default optimisations.
    AsIs,
    /// Every optimisation (worth it for a model run on every pause).
    Optimised,
}

/// An ONNX Runtime session for `model` (ONNX Runtime loaded first with [`init_onnxruntime`]):
/// `threads` within an operator, one between operators, no spinning (the cores are shared
/// with the other engines). The error is ONNX Runtime's reason.
pub(crate) fn onnx_session(
    model: &Path,
    threads: usize,
    graph: OnnxGraph,
) -> Result<Session, String> {
    fn e(error: impl std::fmt::Display) -> String {
        error.to_string()
    }
    let mut builder = Session::builder().map_err(e)?;
    if graph == OnnxGraph::Optimised {
        builder = builder
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
            .map_err(e)?;
    }
    builder
        .with_intra_threads(threads.max(1))
        .map_err(e)?
        .with_inter_threads(1)
        .map_err(e)?
        .with_intra_op_spinning(false)
        .map_err(e)?
        .commit_from_file(model)
        .map_err(e)
}

/// Loads ONNX Runtime from `path` once per process (ort's own limit). A later call with another
/// library keeps the first one (logged). Every ONNX model (voice, end of turn, embeddings) goes
/// through here.
pub(crate) fn init_onnxruntime(path: &Path) -> Result<(), TtsError> {
    static LOADED: Mutex<Option<PathBuf>> = Mutex::new(None);
    check_onnxruntime_file(path)?;
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    match loaded.as_ref() {
        Some(first) if *first == canonical => {}
        Some(first) => tracing::warn!(
            requested = %canonical.display(),
            loaded = %first.display(),
            "ONNX Runtime is already loaded in this process and cannot be replaced: using the first library"
        ),
        None => {
            let version = probe_onnxruntime(path)?;
            tracing::debug!(path = %canonical.display(), %version, "loading ONNX Runtime");
            let builder = ort::init_from(&canonical).map_err(|e| TtsError::OnnxRuntimeLoad {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            // Only one environment per process; `false` = one was committed already.
            let _ = builder.with_name("edgevoice").commit();
            *loaded = Some(canonical);
        }
    }
    Ok(())
}

/// espeak-ng, compiled in (espeak-rs-sys): one global state behind one lock.
mod espeak {
    use super::*;

    use espeak_rs_sys as sys;

    /// Overrides where the `espeak-ng-data` directory is looked for (its parent directory), as
    /// piper-rs documents.
    pub(super) const DATA_ENV: &str = "PIPER_ESPEAKNG_DATA_DIRECTORY";
    const DATA_DIR_NAME: &str = "espeak-ng-data";

    /// Directories that may hold `espeak-ng-data`, best first: the override, then Debian's
    /// `espeak-ng-data` package, then other install prefixes.
    pub(super) fn data_candidates(env: Option<&str>) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(dir) = env.filter(|d| !d.is_empty()) {
            dirs.push(PathBuf::from(dir));
        }
        let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
        dirs.push(Path::new("/usr/lib").join(triplet));
        dirs.push(PathBuf::from("/usr/share"));
        dirs.push(PathBuf::from("/usr/local/share"));
        dirs
    }

    /// Whether espeak-ng is initialised; the lock also serialises every espeak-ng call.
    static STATE: Mutex<bool> = Mutex::new(false);

    fn init() -> Result<(), TtsError> {
        let env = std::env::var(DATA_ENV).ok();
        let candidates = data_candidates(env.as_deref());
        let searched = candidates
            .iter()
            .map(|d| d.join(DATA_DIR_NAME).display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        // None of them: espeak-ng's own search (ESPEAK_DATA_PATH, then the data its build
        // installed in the build tree: a development build without espeak-ng-data).
        let dir = candidates
            .iter()
            .find(|d| d.join(DATA_DIR_NAME).join("phondata").is_file());
        let path =
            match dir {
                Some(dir) => Some(CString::new(dir.as_os_str().as_encoded_bytes()).map_err(
                    |_| TtsError::EspeakData {
                        searched: searched.clone(),
                        reason: "path contains a NUL byte".into(),
                    },
                )?),
                None => None,
            };
        // SAFETY: `path` is NULL or a valid C string that outlives the call (espeak-ng copies
        // it). The caller holds STATE's lock, so no other espeak-ng call runs concurrently.
        let rate = unsafe {
            sys::espeak_Initialize(
                sys::espeak_AUDIO_OUTPUT_AUDIO_OUTPUT_RETRIEVAL,
                0,
                path.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
                sys::espeakINITIALIZE_DONT_EXIT as i32,
            )
        };
        if rate <= 0 {
            return Err(TtsError::EspeakData {
                searched: match dir {
                    Some(dir) => dir.join(DATA_DIR_NAME).display().to_string(),
                    None => searched,
                },
                reason: format!("espeak-ng could not initialise (code {rate})"),
            });
        }
        tracing::debug!(data = ?dir, "espeak-ng initialised");
        Ok(())
    }

    /// Turns `text` into IPA phonemes with the espeak-ng voice `voice`, one string per sentence
    /// (sub-clauses, e.g. after a comma, stay in their sentence).
    pub(super) fn phonemize(text: &str, voice: &str) -> Result<Vec<String>, TtsError> {
        let mut initialised = STATE.lock().unwrap_or_else(PoisonError::into_inner);
        if !*initialised {
            init()?;
            *initialised = true;
        }
        let voice_c = CString::new(voice)
            .map_err(|_| TtsError::Synthesis(format!("espeak-ng voice {voice:?} is invalid")))?;
        // SAFETY: a valid C string; STATE's lock is held.
        let set = unsafe { sys::espeak_SetVoiceByName(voice_c.as_ptr()) };
        if set != sys::espeak_ERROR_EE_OK {
            return Err(TtsError::EspeakData {
                searched: format!("the voices of espeak-ng-data (voice {voice:?})"),
                reason: format!("espeak-ng has no voice {voice:?} (code {set})"),
            });
        }

        let mut sentences = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            // Text from outside: a NUL byte cannot reach C, drop it.
            let line_c = CString::new(line.replace('\0', " "))
                .map_err(|e| TtsError::Synthesis(e.to_string()))?;
            let bytes = line_c.as_bytes();
            let base = line_c.as_ptr() as usize;
            let mut next: *const c_char = line_c.as_ptr();
            while !next.is_null() {
                let from = (next as usize).saturating_sub(base).min(bytes.len());
                // SAFETY: `next` points into `line_c` (alive for the loop) or is advanced by
                // espeak-ng to the next clause within it, or set to NULL at its end. The result
                // is espeak-ng's own buffer, copied before the next call; STATE's lock is held.
                let mut clause = unsafe {
                    let out = sys::espeak_TextToPhonemes(
                        (&mut next as *mut *const c_char).cast::<*const c_void>(),
                        sys::espeakCHARS_UTF8 as i32,
                        sys::espeakINITIALIZE_PHONEME_IPA as i32,
                    );
                    if out.is_null() {
                        break;
                    }
                    CStr::from_ptr(out).to_string_lossy().into_owned()
                };
                // This espeak-ng has no espeak_TextToPhonemesWithTerminator: take the clause's
                // punctuation from the text it consumed, as Piper puts it in the phonemes
                // (pauses, intonation) and ends sentences on it.
                let consumed = if next.is_null() {
                    &bytes[from..]
                } else {
                    let to = (next as usize)
                        .saturating_sub(base)
                        .clamp(from, bytes.len());
                    without_lookahead(&bytes[from..to])
                };
                if let Some(p) = clause_punctuation(consumed) {
                    if !clause.ends_with(['.', ',', '?', '!', ';', ':']) {
                        clause.push(p);
                    }
                }
                push_clause(&mut sentences, &mut current, &clause);
            }
            if !current.trim().is_empty() {
                sentences.push(std::mem::take(&mut current));
            }
            current.clear();
        }
        Ok(sentences)
    }

    /// espeak-ng reads ahead past a clause's end into the next one (its space and first
    /// character): drops that trailing partial word.
    pub(super) fn without_lookahead(text: &[u8]) -> &[u8] {
        let end = text
            .iter()
            .rposition(|b| b.is_ascii_whitespace())
            .unwrap_or(text.len());
        &text[..end]
    }

    /// The punctuation that ends a clause's text (closing quotes and brackets skipped).
    pub(super) fn clause_punctuation(text: &[u8]) -> Option<char> {
        let last = text
            .iter()
            .rev()
            .find(|b| !b.is_ascii_whitespace() && !matches!(b, b'"' | b'\'' | b')' | b']'))?;
        matches!(last, b'.' | b',' | b'?' | b'!' | b';' | b':').then_some(char::from(*last))
    }

    /// Appends one clause's phonemes; a clause ending in `.`, `?` or `!` ends the sentence.
    /// espeak-ng's language-switch marks such as `(fr)` are dropped.
    pub(super) fn push_clause(sentences: &mut Vec<String>, current: &mut String, clause: &str) {
        let mut depth = 0usize;
        let mut cleaned = String::with_capacity(clause.len());
        for c in clause.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ if depth == 0 => cleaned.push(c),
                _ => {}
            }
        }
        let cleaned = cleaned.trim();
        if cleaned.is_empty() {
            return;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(cleaned);
        if cleaned.ends_with(['.', '?', '!']) {
            sentences.push(std::mem::take(current));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voice_config_sits_next_to_the_voice() {
        let c = PiperConfig::new("/m/piper/en_US-joe-medium.onnx", "/m/ort.so");
        assert_eq!(
            c.voice_config(),
            Path::new("/m/piper/en_US-joe-medium.onnx.json")
        );
        assert_eq!(c.threads, 2);
    }

    #[test]
    fn missing_files_name_the_file_and_the_fix() {
        let err = PiperSynthesizer::load(PiperConfig::new("/nonexistent/v.onnx", "/nonexistent/o"))
            .unwrap_err();
        assert!(matches!(err, TtsError::VoiceMissing(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/v.onnx"), "{msg}");
        assert!(msg.contains("edgevoice models install"), "{msg}");

        let err =
            check_onnxruntime_file(Path::new("/nonexistent/libonnxruntime.so.1")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/libonnxruntime.so.1"), "{msg}");
        assert!(msg.contains("edgevoice models install"), "{msg}");
        assert!(msg.contains("ONNX Runtime"), "{msg}");
    }

    #[test]
    fn voice_config_errors_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let voice = dir.path().join("v.onnx");
        std::fs::write(&voice, b"not a model").unwrap();
        let ort = dir.path().join("none.so");

        let err = PiperSynthesizer::load(PiperConfig::new(&voice, &ort)).unwrap_err();
        assert!(matches!(err, TtsError::VoiceConfigMissing(_)), "{err:?}");
        assert!(err.to_string().contains("v.onnx.json"), "{err}");

        std::fs::write(dir.path().join("v.onnx.json"), b"{\"audio\": 1}").unwrap();
        let err = PiperSynthesizer::load(PiperConfig::new(&voice, &ort)).unwrap_err();
        assert!(
            matches!(err, TtsError::VoiceConfigInvalid { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("edgevoice models install"),
            "{err}"
        );
    }

    #[test]
    fn voice_config_is_checked() {
        let ok = r#"{"audio": {"sample_rate": 22050}, "espeak": {"voice": "en-us"},
            "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8},
            "num_speakers": 1, "speaker_id_map": {}, "phoneme_id_map": {"_": [0], "a": [14]}}"#;
        let c = parse_voice_config(ok).unwrap();
        assert_eq!(c.audio.sample_rate, 22050);
        assert_eq!(c.espeak.voice, "en-us");
        let reason = |text: &str| parse_voice_config(text).err().unwrap_or_default();
        assert!(reason(&ok.replace("22050", "0")).contains("sample_rate"));
        let no_map = ok.replace(r#"{"_": [0], "a": [14]}"#, "{}");
        assert!(reason(&no_map).contains("phoneme_id_map"));
        assert!(parse_voice_config("[]").is_err());
    }

    #[test]
    fn pcm_is_clipped() {
        assert_eq!(
            pcm_f32_to_i16(&[0.0, 0.5, 1.0, -1.0, 2.0, -2.0]),
            vec![0, 16384, 32767, -32767, 32767, -32768]
        );
    }

    #[test]
    fn clauses_make_sentences() {
        let mut sentences = Vec::new();
        let mut current = String::new();
        espeak::push_clause(&mut sentences, &mut current, "hˈaɪ,");
        assert!(sentences.is_empty());
        espeak::push_clause(&mut sentences, &mut current, "ðˈɛɹ.");
        espeak::push_clause(&mut sentences, &mut current, "(fr)bõʒˈuʁ(en)?");
        espeak::push_clause(&mut sentences, &mut current, "  ");
        assert_eq!(sentences, vec!["hˈaɪ, ðˈɛɹ.", "bõʒˈuʁ?"]);
        assert!(current.is_empty());
    }

    #[test]
    fn clause_punctuation_comes_from_the_text() {
        assert_eq!(
            espeak::clause_punctuation(b"Our opening hours, "),
            Some(',')
        );
        assert_eq!(espeak::clause_punctuation(b"He said \"hi!\" "), Some('!'));
        assert_eq!(espeak::clause_punctuation(b"Is it (open?)"), Some('?'));
        assert_eq!(espeak::clause_punctuation(b"no end"), None);
        assert_eq!(espeak::clause_punctuation(b""), None);
        // What espeak-ng consumed for the first clause of "Thank you for calling. Our ...".
        let consumed = espeak::without_lookahead(b"Thank you for calling. O");
        assert_eq!(espeak::clause_punctuation(consumed), Some('.'));
        let consumed = espeak::without_lookahead(b"nine to five, M");
        assert_eq!(espeak::clause_punctuation(consumed), Some(','));
    }

    #[test]
    fn espeak_data_override_comes_first() {
        let dirs = espeak::data_candidates(Some("/opt/espeak"));
        assert_eq!(dirs[0], Path::new("/opt/espeak"));
        assert!(dirs.iter().any(|d| d.ends_with("x86_64-linux-gnu")
            || d.ends_with("aarch64-linux-gnu")
            || d.starts_with("/usr/lib")));
        assert_eq!(espeak::data_candidates(Some("")).len(), dirs.len() - 1);
    }

    #[test]
    fn espeak_data_error_says_what_to_install() {
        let err = TtsError::EspeakData {
            searched: "/usr/lib/x86_64-linux-gnu/espeak-ng-data".into(),
            reason: "no phondata found".into(),
        };
        let msg = err.to_string();
        assert!(msg.contains("espeak-ng-data"), "{msg}");
        assert!(msg.contains(espeak::DATA_ENV), "{msg}");
    }
}
