//! The models a site needs: the manifest, installing from an offline mirror or upstream, and
//! verifying what is installed. A file is checked against its sha256 while it is copied into a
//! temporary name and only renamed into place when it matches, so a bad or partial download
//! never replaces a good model.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Asr,
    Vad,
    Llm,
    TtsVoice,
    TtsVoiceConfig,
    RuntimeLibrary,
    /// Sentence embeddings (intents matched by meaning) and their tokenizer.
    SentenceEmbedding,
    SentenceEmbeddingTokenizer,
    /// The semantic end-of-turn model (Smart Turn).
    TurnDetector,
}

/// One file of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    pub role: Role,
    /// Path relative to the models dir (and to a mirror dir).
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub license: String,
    /// Where a site with internet access downloads it; absent when there is no verified source.
    #[serde(default)]
    pub url: Option<String>,
    /// Size and sha256 of the upstream file when its bytes differ from the site bundle's
    /// (both are accepted as installed).
    #[serde(default)]
    pub url_size: Option<u64>,
    #[serde(default)]
    pub url_sha256: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

impl ModelEntry {
    fn upstream_expectation(&self) -> (u64, &str) {
        (
            self.url_size.unwrap_or(self.size),
            self.url_sha256.as_deref().unwrap_or(&self.sha256),
        )
    }

    fn accepts(&self, size: u64, sha256: &str) -> bool {
        (size == self.size && sha256 == self.sha256)
            || (self.url_sha256.as_deref() == Some(sha256)
                && size == self.url_size.unwrap_or(self.size))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read models manifest {}: {source}; check models.manifest in the config", path.display())]
    ManifestRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("models manifest {} is not valid: {reason}", path.display())]
    ManifestInvalid { path: PathBuf, reason: String },
    #[error("{name}: {} is missing; expected {size} bytes with sha256 {sha256}{hint}", path.display())]
    Missing {
        name: String,
        path: PathBuf,
        size: u64,
        sha256: String,
        hint: String,
    },
    #[error("{name}: {} has sha256 {actual} ({actual_size} bytes) but the manifest expects {expected} ({expected_size} bytes); the file is corrupt or a different version: replace it from a trusted mirror", path.display())]
    Mismatch {
        name: String,
        path: PathBuf,
        expected: String,
        expected_size: u64,
        actual: String,
        actual_size: u64,
    },
    #[error("{name}: no upstream URL is known; install it from a site bundle with `edgevoice models install --from DIR`")]
    NoUpstream { name: String },
    #[error("{name}: download from {url} failed: {reason}")]
    Download {
        name: String,
        url: String,
        reason: String,
    },
    #[error("{name}: cannot write {}: {source}; check models.dir is writable", path.display())]
    Write {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: cannot read {}: {source}", path.display())]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::ManifestRead {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, origin: &Path) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::ManifestInvalid {
            path: origin.to_owned(),
            reason,
        };
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
        if manifest.schema != 1 {
            return Err(invalid(format!(
                "schema {} is not supported (expected 1)",
                manifest.schema
            )));
        }
        for m in &manifest.models {
            let file = Path::new(&m.file);
            if file.is_absolute()
                || file
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(invalid(format!(
                    "{}: file must be a relative path inside the models dir",
                    m.name
                )));
            }
            for sha in std::iter::once(&m.sha256).chain(m.url_sha256.as_ref()) {
                if sha.len() != 64
                    || !sha
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    return Err(invalid(format!(
                        "{}: sha256 must be 64 lowercase hex digits",
                        m.name
                    )));
                }
            }
        }
        Ok(manifest)
    }

    pub fn entry(&self, role: Role) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.role == role)
    }
}

/// What happened to one model during install or verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Already there with the right hash.
    Present,
    Installed,
}

/// Reports progress of long copies and downloads (a progress bar in the CLI).
pub trait Progress {
    fn start(&mut self, name: &str, total: u64);
    fn advance(&mut self, bytes: u64);
    fn finish(&mut self);
}

/// Progress that shows nothing.
pub struct Silent;
impl Progress for Silent {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// sha256 (lowercase hex) and size of a file.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    hash_reader(&mut file, &mut std::io::sink(), &mut Silent, u64::MAX)
}

/// Streams `from` into `to` while hashing, up to `limit` bytes (+1 to detect overlong input).
fn hash_reader(
    from: &mut dyn Read,
    to: &mut dyn Write,
    progress: &mut dyn Progress,
    limit: u64,
) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut from = from.take(limit.saturating_add(1));
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
        progress.advance(n as u64);
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// Checks one installed model.
pub fn verify_entry(entry: &ModelEntry, models_dir: &Path) -> Result<(), ModelError> {
    let path = models_dir.join(&entry.file);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ModelError::Missing {
                name: entry.name.clone(),
                path,
                size: entry.size,
                sha256: entry.sha256.clone(),
                hint: "; install it with `edgevoice models install`".into(),
            })
        }
        Err(source) => {
            return Err(ModelError::Read {
                name: entry.name.clone(),
                path,
                source,
            })
        }
    };
    // A size mismatch is decided without reading the whole file.
    if meta.len() != entry.size && Some(meta.len()) != entry.url_size {
        return Err(ModelError::Mismatch {
            name: entry.name.clone(),
            path,
            expected: entry.sha256.clone(),
            expected_size: entry.size,
            actual: "(not computed: wrong size)".into(),
            actual_size: meta.len(),
        });
    }
    let (sha, size) = hash_file(&path).map_err(|source| ModelError::Read {
        name: entry.name.clone(),
        path: path.clone(),
        source,
    })?;
    if entry.accepts(size, &sha) {
        Ok(())
    } else {
        Err(ModelError::Mismatch {
            name: entry.name.clone(),
            path,
            expected: entry.sha256.clone(),
            expected_size: entry.size,
            actual: sha,
            actual_size: size,
        })
    }
}

/// Verifies every model; one result per entry, in manifest order.
pub fn verify(manifest: &Manifest, models_dir: &Path) -> Vec<(String, Result<(), ModelError>)> {
    manifest
        .models
        .iter()
        .map(|m| (m.name.clone(), verify_entry(m, models_dir)))
        .collect()
}

/// Where install reads from.
pub enum Source<'a> {
    /// An offline mirror laid out like the models dir (e.g. ../shared/models).
    Mirror(&'a Path),
    /// The manifest's upstream URLs.
    Upstream,
}

/// Installs every model of the manifest that is not already present and correct.
/// Continues past failures so one run reports every problem; one result per entry.
pub fn install(
    manifest: &Manifest,
    models_dir: &Path,
    source: &Source<'_>,
    progress: &mut dyn Progress,
) -> Vec<(String, Result<Outcome, ModelError>)> {
    manifest
        .models
        .iter()
        .map(|m| {
            let result = if verify_entry(m, models_dir).is_ok() {
                Ok(Outcome::Present)
            } else {
                install_entry(m, models_dir, source, progress).map(|()| Outcome::Installed)
            };
            (m.name.clone(), result)
        })
        .collect()
}

fn install_entry(
    entry: &ModelEntry,
    models_dir: &Path,
    source: &Source<'_>,
    progress: &mut dyn Progress,
) -> Result<(), ModelError> {
    let dest = models_dir.join(&entry.file);
    let write_err = |source| ModelError::Write {
        name: entry.name.clone(),
        path: dest.clone(),
        source,
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(write_err)?;
    }
    let tmp = partial_path(&dest);
    let mut out = File::create(&tmp).map_err(write_err)?;
    let copied = match source {
        Source::Mirror(dir) => copy_from_mirror(entry, dir, &mut out, progress),
        Source::Upstream => download(entry, &mut out, progress),
    };
    let result = copied.and_then(|(sha, size, from)| {
        if entry.accepts(size, &sha) {
            out.sync_all().map_err(write_err)?;
            std::fs::rename(&tmp, &dest).map_err(write_err)?;
            if let Some(parent) = dest.parent() {
                if let Ok(d) = File::open(parent) {
                    let _ = d.sync_all();
                }
            }
            Ok(())
        } else {
            let (expected_size, expected) = match source {
                Source::Mirror(_) => (entry.size, entry.sha256.as_str()),
                Source::Upstream => entry.upstream_expectation(),
            };
            Err(ModelError::Mismatch {
                name: entry.name.clone(),
                path: from,
                expected: expected.to_owned(),
                expected_size,
                actual: sha,
                actual_size: size,
            })
        }
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Largest file `models.install` downloads.
pub const MAX_REMOTE_MODEL_BYTES: u64 = 32 * 1024 * 1024 * 1024;

/// What `models.install` put in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// The file it replaced, kept beside it ([`previous_path`]) so a model that does not load
    /// can be put back ([`restore_previous`]); None when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PathBuf>,
}

/// The `models.install` command: downloads `url` for the manifest entry `name` into a
/// temporary name beside the installed file, hashing while it writes, and renames it into
/// place only when its sha256 is `sha256`. A mismatch, a failed or partial download leaves the
/// installed file untouched. Engines that already mapped the old file keep it (a rename does
/// not change an open file); the daemon then loads the new one ([`crate::ops::DaemonContext::reload_speech`])
/// and puts the previous back with [`restore_previous`] if it does not load.
pub fn install_from_url(
    manifest: &Manifest,
    models_dir: &Path,
    name: &str,
    url: &str,
    sha256: &str,
) -> Result<InstalledFile, ModelError> {
    let entry = manifest
        .models
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| ModelError::Download {
            name: name.to_owned(),
            url: url.to_owned(),
            reason: format!(
                "no model named \"{name}\" in the manifest; known: {}",
                manifest
                    .models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
    let fail = |reason: String| ModelError::Download {
        name: name.to_owned(),
        url: url.to_owned(),
        reason,
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(fail("only http:// and https:// URLs are downloaded".into()));
    }
    let sha256 = sha256.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(fail("sha256 must be 64 hex digits".into()));
    }
    let dest = models_dir.join(&entry.file);
    let write_err = |source| ModelError::Write {
        name: name.to_owned(),
        path: dest.clone(),
        source,
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(write_err)?;
    }
    let tmp = partial_path(&dest);
    let result = (|| {
        let response = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
        let mut reader = response.into_body().into_reader();
        let mut out = File::create(&tmp).map_err(write_err)?;
        let (actual, size) =
            hash_reader(&mut reader, &mut out, &mut Silent, MAX_REMOTE_MODEL_BYTES)
                .map_err(|e| fail(e.to_string()))?;
        if size > MAX_REMOTE_MODEL_BYTES {
            return Err(fail(format!(
                "more than {MAX_REMOTE_MODEL_BYTES} bytes; refused"
            )));
        }
        if actual != sha256 {
            return Err(fail(format!(
                "the file has sha256 {actual} ({size} bytes), not the {sha256} asked for; nothing was replaced"
            )));
        }
        out.sync_all().map_err(write_err)?;
        // The installed file stays reachable under a second name: a hard link, so nothing is
        // copied and the rename below still replaces `dest` atomically.
        let previous = if dest.exists() {
            let previous = previous_path(&dest);
            let _ = std::fs::remove_file(&previous);
            std::fs::hard_link(&dest, &previous).map_err(write_err)?;
            Some(previous)
        } else {
            None
        };
        std::fs::rename(&tmp, &dest).map_err(write_err)?;
        if let Some(parent) = dest.parent() {
            if let Ok(d) = File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(InstalledFile {
            name: name.to_owned(),
            path: dest.clone(),
            size,
            sha256: actual,
            previous,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn copy_from_mirror(
    entry: &ModelEntry,
    mirror: &Path,
    out: &mut File,
    progress: &mut dyn Progress,
) -> Result<(String, u64, PathBuf), ModelError> {
    let from = mirror.join(&entry.file);
    let mut input = File::open(&from).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::Missing {
                name: entry.name.clone(),
                path: from.clone(),
                size: entry.size,
                sha256: entry.sha256.clone(),
                hint: " in the mirror; copy the site bundle there or fix --from".into(),
            }
        } else {
            ModelError::Read {
                name: entry.name.clone(),
                path: from.clone(),
                source,
            }
        }
    })?;
    progress.start(&entry.name, entry.size);
    let result = hash_reader(&mut input, out, progress, entry.size);
    progress.finish();
    let (sha, size) = result.map_err(|source| ModelError::Read {
        name: entry.name.clone(),
        path: from.clone(),
        source,
    })?;
    Ok((sha, size, from))
}

fn download(
    entry: &ModelEntry,
    out: &mut File,
    progress: &mut dyn Progress,
) -> Result<(String, u64, PathBuf), ModelError> {
    let url = entry.url.as_deref().ok_or_else(|| ModelError::NoUpstream {
        name: entry.name.clone(),
    })?;
    let fail = |reason: String| ModelError::Download {
        name: entry.name.clone(),
        url: url.to_owned(),
        reason,
    };
    let response = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
    let (expected_size, _) = entry.upstream_expectation();
    let body = response.into_body();
    let total = body.content_length().unwrap_or(expected_size);
    let mut reader = body.into_reader();
    progress.start(&entry.name, total);
    let result = hash_reader(&mut reader, out, progress, expected_size);
    progress.finish();
    let (sha, size) = result.map_err(|e| fail(e.to_string()))?;
    Ok((sha, size, PathBuf::from(url)))
}

/// Where a model is written while it is checked: a hidden name beside its final place, renamed
/// into place only when size and sha256 match.
/// Where [`install_from_url`] keeps the file it replaced: `<file>.previous`.
pub fn previous_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_owned();
    name.push(".previous");
    dest.with_file_name(name)
}

/// Undoes [`install_from_url`]: the replaced file goes back in place, or, when there was none,
/// the new file is removed. Returns a sentence for the operator.
pub fn restore_previous(installed: &InstalledFile) -> String {
    let result = match &installed.previous {
        Some(previous) => std::fs::rename(previous, &installed.path),
        None => std::fs::remove_file(&installed.path),
    };
    match (result, &installed.previous) {
        (Ok(()), Some(p)) => format!(
            "{} was put back from {}",
            installed.path.display(),
            p.display()
        ),
        (Ok(()), None) => format!("the new {} was removed", installed.path.display()),
        (Err(e), _) => format!(
            "putting the previous {} back failed ({e}); run `edgevoice models install` to restore it",
            installed.path.display()
        ),
    }
}

fn partial_path(dest: &Path) -> PathBuf {
    dest.with_file_name(format!(
        ".{}.partial",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("model")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../../models/manifest.toml");

    fn entry_for(dir: &Path, name: &str, bytes: &[u8]) -> ModelEntry {
        std::fs::write(dir.join(name), bytes).unwrap();
        let (sha256, size) = hash_file(&dir.join(name)).unwrap();
        ModelEntry {
            name: name.into(),
            role: Role::Vad,
            file: name.into(),
            size,
            sha256,
            license: "MIT".into(),
            url: None,
            url_size: None,
            url_sha256: None,
            note: None,
        }
    }

    #[test]
    fn shipped_manifest_parses_and_names_every_role() {
        let m = Manifest::parse(SHIPPED, Path::new("models/manifest.toml")).unwrap();
        for role in [
            Role::Asr,
            Role::Vad,
            Role::Llm,
            Role::TtsVoice,
            Role::TtsVoiceConfig,
            Role::RuntimeLibrary,
            Role::SentenceEmbedding,
            Role::SentenceEmbeddingTokenizer,
            Role::TurnDetector,
        ] {
            assert!(m.entry(role).is_some(), "{role:?} missing");
        }
    }

    #[test]
    fn manifest_rejects_paths_outside_the_models_dir_and_bad_hashes() {
        let bad_path = "schema = 1\n[[model]]\nname='x'\nrole='asr'\nfile='../x'\nsize=1\nsha256='00'\nlicense='MIT'\n";
        assert!(Manifest::parse(bad_path, Path::new("m")).is_err());
        let bad_sha = "schema = 1\n[[model]]\nname='x'\nrole='asr'\nfile='x'\nsize=1\nsha256='00'\nlicense='MIT'\n";
        let err = Manifest::parse(bad_sha, Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("64 lowercase hex"), "{err}");
    }

    #[test]
    fn install_from_mirror_copies_verifies_and_is_idempotent() {
        let mirror = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let manifest = Manifest {
            schema: 1,
            models: vec![entry_for(mirror.path(), "a.bin", b"model bytes")],
        };
        let first = install(
            &manifest,
            models.path(),
            &Source::Mirror(mirror.path()),
            &mut Silent,
        );
        assert!(matches!(first[0].1, Ok(Outcome::Installed)), "{first:?}");
        let second = install(
            &manifest,
            models.path(),
            &Source::Mirror(mirror.path()),
            &mut Silent,
        );
        assert!(matches!(second[0].1, Ok(Outcome::Present)), "{second:?}");
        assert!(verify(&manifest, models.path())[0].1.is_ok());
    }

    #[test]
    fn corrupt_mirror_file_is_refused_and_leaves_nothing_behind() {
        let mirror = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let entry = entry_for(mirror.path(), "a.bin", b"good bytes");
        std::fs::write(mirror.path().join("a.bin"), b"evil bytes").unwrap();
        let manifest = Manifest {
            schema: 1,
            models: vec![entry.clone()],
        };
        let result = install(
            &manifest,
            models.path(),
            &Source::Mirror(mirror.path()),
            &mut Silent,
        );
        let err = result[0].1.as_ref().unwrap_err().to_string();
        assert!(
            err.contains("a.bin") && err.contains(&entry.sha256),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(models.path()).unwrap().count(),
            0,
            "no partial file left"
        );
    }

    /// Serves `body` to each of `n` HTTP requests on 127.0.0.1; returns the URL.
    fn serve(body: &'static [u8], n: usize) -> String {
        use std::io::BufRead as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(n) {
                let mut stream = stream.unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            }
        });
        format!("http://127.0.0.1:{port}/model.bin")
    }

    #[test]
    fn install_from_url_swaps_in_only_a_file_with_the_given_sha256() {
        let mirror = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let entry = entry_for(mirror.path(), "a.bin", b"version one");
        std::fs::copy(mirror.path().join("a.bin"), models.path().join("a.bin")).unwrap();
        let manifest = Manifest {
            schema: 1,
            models: vec![entry],
        };
        let url = serve(b"version two", 2);
        let good = hex::encode(Sha256::digest(b"version two"));
        let wrong = hex::encode(Sha256::digest(b"something else"));
        let err = install_from_url(&manifest, models.path(), "a.bin", &url, &wrong).unwrap_err();
        assert!(err.to_string().contains("not the"), "{err}");
        assert_eq!(
            std::fs::read(models.path().join("a.bin")).unwrap(),
            b"version one"
        );
        assert!(!models.path().join(".a.bin.partial").exists());
        let done = install_from_url(&manifest, models.path(), "a.bin", &url, &good).unwrap();
        assert_eq!(done.size, 11);
        assert_eq!(
            std::fs::read(models.path().join("a.bin")).unwrap(),
            b"version two"
        );
        let err = install_from_url(&manifest, models.path(), "nope", &url, &good).unwrap_err();
        assert!(err.to_string().contains("no model named"), "{err}");
        let err = install_from_url(
            &manifest,
            models.path(),
            "a.bin",
            "file:///etc/passwd",
            &good,
        )
        .unwrap_err();
        assert!(err.to_string().contains("http"), "{err}");
    }

    #[test]
    fn a_bad_file_never_replaces_a_good_installed_one() {
        let mirror = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let entry = entry_for(mirror.path(), "a.bin", b"version one");
        let manifest = Manifest {
            schema: 1,
            models: vec![entry],
        };
        install(
            &manifest,
            models.path(),
            &Source::Mirror(mirror.path()),
            &mut Silent,
        );
        // The installed copy gets corrupted; the mirror is corrupt too: the reinstall fails...
        std::fs::write(models.path().join("a.bin"), b"version one!").unwrap();
        std::fs::write(mirror.path().join("a.bin"), b"garbage").unwrap();
        let r = install(
            &manifest,
            models.path(),
            &Source::Mirror(mirror.path()),
            &mut Silent,
        );
        assert!(r[0].1.is_err());
        // ...and what is in place is untouched rather than replaced by the garbage.
        assert_eq!(
            std::fs::read(models.path().join("a.bin")).unwrap(),
            b"version one!"
        );
    }

    #[test]
    fn verify_reports_missing_and_corrupt_files_by_name_and_hash() {
        let mirror = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let a = entry_for(mirror.path(), "a.bin", b"aaaa");
        let b = entry_for(mirror.path(), "b.bin", b"bbbb");
        std::fs::write(models.path().join("b.bin"), b"bbbc").unwrap();
        let manifest = Manifest {
            schema: 1,
            models: vec![a.clone(), b.clone()],
        };
        let results = verify(&manifest, models.path());
        let missing = results[0].1.as_ref().unwrap_err().to_string();
        assert!(
            missing.contains("a.bin") && missing.contains("missing") && missing.contains(&a.sha256),
            "{missing}"
        );
        let corrupt = results[1].1.as_ref().unwrap_err().to_string();
        assert!(
            corrupt.contains("b.bin") && corrupt.contains(&b.sha256),
            "{corrupt}"
        );
    }

    #[test]
    fn missing_upstream_url_says_to_use_a_mirror() {
        let mirror = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let manifest = Manifest {
            schema: 1,
            models: vec![entry_for(mirror.path(), "a.bin", b"x")],
        };
        let r = install(&manifest, models.path(), &Source::Upstream, &mut Silent);
        let err = r[0].1.as_ref().unwrap_err().to_string();
        assert!(err.contains("--from"), "{err}");
    }
}
