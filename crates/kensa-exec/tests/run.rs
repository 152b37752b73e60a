//! Runs real processes through `kensa_exec::run` and checks what a check, hook or pipe handler
//! would see: statuses, combined output, timeouts that leave no process behind, output caps.

use std::path::Path;
use std::time::Duration;

use kensa_exec::{run, Outcome, Spec};

fn spec(command: &str) -> Spec {
    Spec {
        command: command.to_string(),
        ..Default::default()
    }
}

async fn run_ok(spec: &Spec) -> Outcome {
    run(spec).await.expect("command starts")
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; only count processes that are not dead yet.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

async fn wait_gone(pid: u32) -> bool {
    // SIGKILL delivery is asynchronous; give the kernel a moment.
    for _ in 0..100 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn exit_codes_become_status() {
    let cases = [
        ("exit 0", 0),
        ("exit 1", 1),
        ("exit 2", 2),
        ("exit 3", 3),
        ("no-such-command-kensa-test", 127),
        ("exit 200", 200),
        // Killed by a signal: status cannot be an exit code.
        ("kill -9 $$", 3),
    ];
    for (command, want) in cases {
        let outcome = run_ok(&spec(command)).await;
        assert_eq!(outcome.status, want, "{command}: {outcome:?}");
        assert!(!outcome.timed_out, "{command}");
    }
}

#[tokio::test]
async fn stdout_and_stderr_share_one_buffer_in_order() {
    let outcome = run_ok(&spec("echo one; echo two >&2; echo three; echo four >&2")).await;
    assert_eq!(outcome.output, "one\ntwo\nthree\nfour\n");
    assert_eq!(outcome.status, 0);
    assert_eq!(outcome.truncated_bytes, 0);
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let command = format!(
        "sleep 30 & echo $! > {}; echo started; sleep 30",
        pid_file.display()
    );
    let outcome = run_ok(&Spec {
        timeout: Some(Duration::from_millis(500)),
        ..spec(&command)
    })
    .await;

    assert!(outcome.timed_out);
    assert_eq!(outcome.status, 2);
    assert_eq!(outcome.output, "Execution timed out\nstarted\n");
    assert!(
        outcome.duration < Duration::from_secs(10),
        "{:?}",
        outcome.duration
    );
    let grandchild: u32 = read_pid(&pid_file);
    assert!(
        wait_gone(grandchild).await,
        "grandchild {grandchild} survived the timeout"
    );
}

#[tokio::test]
async fn background_grandchild_holding_the_pipe_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let command = format!("sleep 30 & echo $! > {}; echo done", pid_file.display());
    let outcome = run_ok(&Spec {
        timeout: Some(Duration::from_secs(20)),
        ..spec(&command)
    })
    .await;

    assert!(!outcome.timed_out);
    assert_eq!(outcome.status, 0);
    assert_eq!(outcome.output, "done\n");
    assert!(
        outcome.duration < Duration::from_secs(10),
        "{:?}",
        outcome.duration
    );
    let grandchild = read_pid(&pid_file);
    assert!(
        wait_gone(grandchild).await,
        "grandchild {grandchild} holding the pipe was not killed"
    );
}

#[tokio::test]
async fn daemonized_grandchild_that_closed_the_pipe_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let command = format!("sleep 5 >/dev/null 2>&1 & echo $! > {}", pid_file.display());
    let outcome = run_ok(&spec(&command)).await;
    assert_eq!(outcome.status, 0);
    let grandchild = read_pid(&pid_file);
    assert!(
        alive(grandchild),
        "a grandchild detached from the output was killed"
    );
    let _ = std::process::Command::new("kill")
        .arg(grandchild.to_string())
        .status();
}

#[tokio::test]
async fn large_output_is_capped_and_counted() {
    let outcome = run_ok(&Spec {
        output_limit: 1000,
        ..spec("head -c 10485760 /dev/zero; echo tail >&2")
    })
    .await;
    assert_eq!(outcome.status, 0);
    assert_eq!(outcome.output.len(), 1000);
    assert_eq!(outcome.truncated_bytes, 10485760 + 5 - 1000);
    assert!(!outcome.timed_out);
}

#[tokio::test]
async fn default_cap_applies_when_limit_is_zero() {
    let outcome = run_ok(&spec("head -c 2000000 /dev/zero")).await;
    assert_eq!(outcome.output.len(), kensa_exec::DEFAULT_OUTPUT_LIMIT);
    assert_eq!(
        outcome.truncated_bytes,
        2000000 - kensa_exec::DEFAULT_OUTPUT_LIMIT as u64
    );
}

#[tokio::test]
async fn binary_output_is_lossy_text() {
    let outcome = run_ok(&spec("head -c 1000 /dev/urandom; printf '\\377\\376 end'")).await;
    assert_eq!(outcome.status, 0);
    assert!(
        outcome.output.ends_with("\u{fffd}\u{fffd} end"),
        "{:?}",
        outcome.output
    );
}

#[tokio::test]
async fn stdin_is_delivered_and_closed() {
    let outcome = run_ok(&Spec {
        stdin: Some(b"{\"hello\":\"world\"}".to_vec()),
        ..spec("cat; echo; cat")
    })
    .await;
    assert_eq!(outcome.output, "{\"hello\":\"world\"}\n");
    assert_eq!(outcome.status, 0);
}

#[tokio::test]
async fn large_stdin_is_delivered() {
    let data = vec![b'x'; 3 * 1024 * 1024];
    let outcome = run_ok(&Spec {
        stdin: Some(data),
        ..spec("wc -c")
    })
    .await;
    assert_eq!(outcome.output.trim(), "3145728");
}

#[tokio::test]
async fn command_ignoring_its_stdin_still_completes() {
    let outcome = run_ok(&Spec {
        stdin: Some(vec![b'x'; 3 * 1024 * 1024]),
        ..spec("echo ignored")
    })
    .await;
    assert_eq!(outcome.status, 0);
    assert_eq!(outcome.output, "ignored\n");
}

#[tokio::test]
async fn without_stdin_the_command_reads_eof() {
    let outcome = run_ok(&spec("cat; echo end")).await;
    assert_eq!(outcome.output, "end\n");
}

#[tokio::test]
async fn env_vars_are_set_and_override() {
    let outcome = run_ok(&Spec {
        env: vec![
            ("KENSA_TEST_VAR".into(), "hello world".into()),
            ("HOME".into(), "/kensa-home".into()),
        ],
        ..spec("echo \"$KENSA_TEST_VAR|$HOME\"")
    })
    .await;
    assert_eq!(outcome.output, "hello world|/kensa-home\n");
}

#[tokio::test]
async fn dropping_the_future_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let command = format!("sleep 30 & echo $! > {}; sleep 30", pid_file.display());
    let spec = spec(&command);
    let pending = run(&spec);
    // Cancel the run once the grandchild is known to exist.
    let pid_file_for_wait = pid_file.clone();
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            _ = pending => panic!("command finished on its own"),
            () = wait_for_file(&pid_file_for_wait) => {}
        }
    })
    .await;
    result.expect("pid file written");
    let grandchild = read_pid(&pid_file);
    assert!(
        wait_gone(grandchild).await,
        "grandchild {grandchild} survived cancellation"
    );
}

#[tokio::test]
async fn duration_is_measured() {
    let outcome = run_ok(&spec("sleep 0.2")).await;
    assert!(
        outcome.duration >= Duration::from_millis(200),
        "{:?}",
        outcome.duration
    );
}

async fn wait_for_file(path: &Path) {
    loop {
        if std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n')) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .trim()
        .parse()
        .expect("pid")
}

#[tokio::test]
async fn split_keeps_stdout_apart_from_stderr() {
    let outcome = kensa_exec::run_split(&Spec {
        stdin: Some(b"payload".to_vec()),
        ..spec("echo diagnostics >&2; cat; printf '\\377'; exit 4")
    })
    .await
    .unwrap();
    assert_eq!(outcome.stdout, b"payload\xff");
    assert_eq!(outcome.stderr, "diagnostics\n");
    assert_eq!(outcome.status, 4);
    assert_eq!(outcome.stdout_truncated_bytes, 0);
}

#[tokio::test]
async fn split_caps_stdout_and_times_out() {
    let outcome = kensa_exec::run_split(&Spec {
        output_limit: 10,
        ..spec("head -c 100 /dev/zero; echo tail >&2")
    })
    .await
    .unwrap();
    assert_eq!(outcome.stdout.len(), 10);
    assert_eq!(outcome.stdout_truncated_bytes, 90);
    assert_eq!(outcome.stderr, "tail\n");

    let outcome = kensa_exec::run_split(&Spec {
        timeout: Some(Duration::from_millis(300)),
        ..spec("echo partial; sleep 30")
    })
    .await
    .unwrap();
    assert!(outcome.timed_out);
    assert_eq!(outcome.status, 2);
    assert_eq!(outcome.stdout, b"partial\n");
    assert_eq!(outcome.stderr, "Execution timed out\n");
}
