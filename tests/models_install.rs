//! `edgevoice models install/verify` with the real site bundle in ../shared/models, and the
//! download path against a local HTTP server (127.0.0.1) standing in for upstream.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cli_bin, repo_root, shared_dir, text};

fn models_cmd(args: &[&str], dir: &Path, manifest: &Path) -> std::process::Output {
    Command::new(cli_bin())
        .arg("models")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .arg("--manifest")
        .arg(manifest)
        .output()
        .expect("run edgevoice models")
}

#[test]
fn site_bundle_installs_verifies_and_a_corrupt_model_is_named_with_its_hash() {
    let manifest = repo_root().join("models/manifest.toml");
    let models = tempfile::tempdir().unwrap();
    let mirror = shared_dir().join("models");

    let out = models_cmd(
        &["install", "--from", mirror.to_str().unwrap()],
        models.path(),
        &manifest,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).matches("installed  ").count(),
        7,
        "{}",
        text(&out.stdout)
    );

    let out = models_cmd(&["verify"], models.path(), &manifest);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).matches("ok ").count(), 7);

    // Installing again copies nothing.
    let out = models_cmd(
        &["install", "--from", mirror.to_str().unwrap()],
        models.path(),
        &manifest,
    );
    assert_eq!(text(&out.stdout).matches("already installed").count(), 7);

    // Flip one byte of the VAD model: verify names the file and the expected hash, exit 1.
    let vad = models.path().join("vad/ggml-silero-v6.2.0.bin");
    let mut bytes = std::fs::read(&vad).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&vad, &bytes).unwrap();
    let out = models_cmd(&["verify"], models.path(), &manifest);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let line = err.lines().find(|l| l.contains("silero")).expect(&err);
    assert!(line.contains("vad/ggml-silero-v6.2.0.bin"), "{line}");
    assert!(
        line.contains("2aa269b785eeb53a82983a20501ddf7c1d9c48e33ab63a41391ac6c9f7fb6987"),
        "{line}"
    );

    // Install repairs it from the mirror.
    let out = models_cmd(
        &["install", "--from", mirror.to_str().unwrap()],
        models.path(),
        &manifest,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("installed  silero-vad-v6.2.0"));
}

#[test]
fn missing_file_in_the_mirror_is_named_and_others_still_install() {
    let manifest = repo_root().join("models/manifest.toml");
    let mirror = tempfile::tempdir().unwrap();
    let src = shared_dir().join("models");
    // A partial bundle: only the small files.
    for f in [
        "vad/ggml-silero-v6.2.0.bin",
        "piper/en_US-joe-medium.onnx.json",
    ] {
        let to = mirror.path().join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(f), to).unwrap();
    }
    let models = tempfile::tempdir().unwrap();
    let out = models_cmd(
        &["install", "--from", mirror.path().to_str().unwrap()],
        models.path(),
        &manifest,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("whisper/ggml-tiny.en-q8_0.bin is missing"),
        "{err}"
    );
    assert!(
        err.contains("d243ee7babe91b651f98b9fcffb3ea732be9e063f041dec8a0b2bc6bed25927c"),
        "{err}"
    );
    assert!(err.contains("5 of 7 models failed"), "{err}");
    assert!(text(&out.stdout).contains("installed  silero-vad-v6.2.0"));
    assert!(models
        .path()
        .join("piper/en_US-joe-medium.onnx.json")
        .exists());
}

struct HttpServer(Child);
impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_dir(dir: &Path) -> (HttpServer, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let server = HttpServer(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "http server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

#[test]
fn upstream_download_verifies_and_refuses_a_tampered_file() {
    let upstream = tempfile::tempdir().unwrap();
    let src = shared_dir().join("models");
    std::fs::copy(
        src.join("vad/ggml-silero-v6.2.0.bin"),
        upstream.path().join("vad.bin"),
    )
    .unwrap();
    std::fs::write(upstream.path().join("voice.json"), b"{\"tampered\": true}").unwrap();
    let (_server, port) = serve_dir(upstream.path());
    let manifest_text = format!(
        r#"schema = 1
[[model]]
name = "vad"
role = "vad"
file = "vad/ggml-silero-v6.2.0.bin"
size = 885098
sha256 = "2aa269b785eeb53a82983a20501ddf7c1d9c48e33ab63a41391ac6c9f7fb6987"
license = "MIT"
url = "http://127.0.0.1:{port}/vad.bin"

[[model]]
name = "voice-config"
role = "tts_voice_config"
file = "piper/en_US-joe-medium.onnx.json"
size = 4794
sha256 = "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33"
license = "MIT"
url = "http://127.0.0.1:{port}/voice.json"

[[model]]
name = "gone"
role = "llm"
file = "llm/gone.gguf"
size = 10
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
license = "MIT"
url = "http://127.0.0.1:{port}/gone.gguf"
"#
    );
    let manifest = upstream.path().join("manifest.toml");
    std::fs::write(&manifest, manifest_text).unwrap();
    let models = tempfile::tempdir().unwrap();
    let out = models_cmd(&["install"], models.path(), &manifest);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(stdout.contains("installed  vad"), "{stdout}{stderr}");
    assert!(
        stderr.contains("voice-config")
            && stderr.contains("3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33"),
        "{stderr}"
    );
    assert!(
        stderr.contains("gone: download from") && stderr.contains("404"),
        "{stderr}"
    );
    assert!(
        !models
            .path()
            .join("piper/en_US-joe-medium.onnx.json")
            .exists(),
        "tampered file not installed"
    );
    let leftovers: Vec<_> = walk(models.path())
        .into_iter()
        .filter(|p| p.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}
