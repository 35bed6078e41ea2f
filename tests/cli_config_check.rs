//! `edgevoice config check` and `edgevoiced --check`: OK / one line per problem, exit 0 / 2.

mod common;

use common::{cli_bin, daemon_bin, repo_root, text};
use std::process::Command;

#[test]
fn shipped_configs_check_ok() {
    for name in ["edgevoice.toml", "dev.toml"] {
        let path = repo_root().join("config").join(name);
        let out = Command::new(cli_bin())
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stdout));
        assert!(
            text(&out.stdout).starts_with("OK: "),
            "{}",
            text(&out.stdout)
        );
        let out = Command::new(daemon_bin())
            .arg("--check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
    }
}

#[test]
fn broken_config_lists_every_problem_with_position_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[daemon]\nlog_level = \"chatty\"\n\n[sip]\nmax_calls = 64\n\n[rtp]\nport_min = 30000\nport_max = 30020\n",
    )
    .unwrap();
    let out = Command::new(cli_bin())
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let file = path.display().to_string();
    assert!(
        lines[0].starts_with(&format!("{file}:2:13: daemon.log_level:")),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(&format!("{file}:8:12: rtp.port_min:")),
        "{stdout}"
    );
    assert!(lines[1].contains("at least 128 ports"), "{stdout}");

    let out = Command::new(daemon_bin())
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr).lines().count(),
        2,
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn missing_config_file_is_one_line_naming_it() {
    let out = Command::new(daemon_bin())
        .args(["--check", "--config", "/nonexistent/edgevoice.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/edgevoice.toml"), "{err}");
}
