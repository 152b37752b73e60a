//! The `kensa-agent` binary: `version`, option errors, and a graceful stop on SIGTERM.

mod core_support;

use std::process::{Command, Stdio};

use core_support::FakeBackend;

const BINARY: &str = env!("CARGO_BIN_EXE_kensa-agent");

#[test]
fn version_prints_the_crate_version() {
    let output = Command::new(BINARY).arg("version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("kensa-agent {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn invalid_options_are_named_and_fail_the_start() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--keepalive-warning-timeout", "3"],
            "keepalive-warning-timeout: must be at least 5",
        ),
        (&["--backend-url", "http://backend"], "backend-url:"),
    ];
    for (args, expected) in cases {
        let output = Command::new(BINARY)
            .arg("start")
            .args(*args)
            .env_remove("KENSA_LOG")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let output = Command::new(BINARY)
        .arg("start")
        .env("KENSA_AGENT_KEEPALIVE_INTERVAL", "0")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("keepalive-interval"));
}

#[tokio::test]
async fn sigterm_closes_the_session_and_exits_cleanly() {
    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(BINARY)
        .args([
            "start",
            "--name",
            "cli-agent",
            "--backend-url",
            &backend.url,
        ])
        .arg("--cache-dir")
        .arg(cache.path())
        .args(["--disable-api", "--disable-sockets", "--statsd-disable"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut session = backend.accept_ready().await;
    assert_eq!(session.header("Sensu-AgentName"), "cli-agent");
    session.next_keepalive().await;

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        session.next().await.is_none(),
        "the agent closes the session"
    );
    let status = tokio::time::timeout(core_support::PATIENCE, child.wait())
        .await
        .expect("the agent exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
