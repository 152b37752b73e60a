//! Running external commands — the only place in Kensa that spawns processes (checks and hooks
//! on the agent, pipe handlers and mutators on the backend).
//!
//! Why this is more than `Command::output()`: a monitoring command is untrusted in shape. It may
//! fork grandchildren that outlive it, print gigabytes, never read its stdin, or hang. So every
//! command runs in its own process group (a timeout or a cancelled caller kills the whole group,
//! not just `sh`), stdout and stderr share ONE pipe (the Nagios convention: the output reads in
//! the order it was written; [`run_split`] keeps them apart for commands whose stdout is data,
//! such as pipe mutators), output past the cap is read and thrown away (the child never
//! blocks on a full pipe), and a background grandchild that keeps the pipe open after the
//! command exited cannot hold the caller for longer than [`EOF_GRACE`].

use std::io;
use std::os::fd::OwnedFd;
use std::pin::pin;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::time::{sleep_until, timeout_at, Instant};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// Run as `sh -c <command>`.
    pub command: String,
    /// Added to (and overriding) the inherited environment.
    pub env: Vec<(String, String)>,
    /// Written to the child's stdin, which is then closed. `None`: stdin is `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// Kill the whole process group after this long. `None` means [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// Keep at most this many bytes of combined stdout+stderr; 0 means [`DEFAULT_OUTPUT_LIMIT`].
    pub output_limit: usize,
}

/// When a command sets no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default cap on captured output.
pub const DEFAULT_OUTPUT_LIMIT: usize = 1024 * 1024;
/// How long to wait for the output pipe to close once the command itself has exited. Longer
/// than a well-behaved command needs to flush; short enough that `cmd &` cannot stall a check.
pub const EOF_GRACE: Duration = Duration::from_millis(500);
/// Status of a command that timed out (Sensu's convention).
pub const TIMEOUT_STATUS: i32 = 2;
/// Status of a command killed by a signal or whose status cannot be determined.
pub const UNKNOWN_STATUS: i32 = 3;
/// Prefix of the output of a command that timed out.
pub const TIMEOUT_OUTPUT: &str = "Execution timed out\n";

/// Bound on waiting for a SIGKILLed child to be reaped (a process stuck in uninterruptible I/O
/// cannot be killed; we stop waiting rather than hang the caller — tokio reaps it later).
const REAP_AFTER_KILL: Duration = Duration::from_secs(2);
/// Read buffer size for the output pipe.
const READ_CHUNK: usize = 64 * 1024;

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The exit code; 2 on timeout; 3 when killed by a signal or undeterminable.
    pub status: i32,
    /// Combined stdout and stderr (lossy UTF-8), at most `output_limit` bytes; prefixed with
    /// `Execution timed out\n` on timeout.
    pub output: String,
    /// How many bytes of output were dropped by the cap.
    pub truncated_bytes: u64,
    pub duration: Duration,
    pub timed_out: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("could not start command: {0}")]
    Spawn(std::io::Error),
}

/// Like [`Outcome`], for [`run_split`]: stdout kept apart from stderr, as raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitOutcome {
    /// As [`Outcome::status`].
    pub status: i32,
    /// What the command wrote to stdout, at most `output_limit` bytes, unconverted.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr (lossy UTF-8), at most `output_limit` bytes; prefixed with
    /// `Execution timed out\n` on timeout.
    pub stderr: String,
    /// How many bytes of stdout were dropped by the cap (a caller treating stdout as data
    /// should refuse a truncated result).
    pub stdout_truncated_bytes: u64,
    pub duration: Duration,
    pub timed_out: bool,
}

/// Runs `spec` to completion (or its timeout).
///
/// Dropping the returned future before it completes SIGKILLs the command's process group.
pub async fn run(spec: &Spec) -> Result<Outcome, ExecError> {
    let raw = execute(spec, Streams::Combined).await?;
    let (status, output) = raw.status_and_text(&raw.primary);
    Ok(Outcome {
        status,
        output,
        truncated_bytes: raw.primary.truncated_bytes,
        duration: raw.duration,
        timed_out: raw.timed_out,
    })
}

/// Runs `spec` like [`run`], but keeps stdout (the data, e.g. a pipe mutator's new payload)
/// apart from stderr (diagnostics). Each stream has its own `output_limit`.
pub async fn run_split(spec: &Spec) -> Result<SplitOutcome, ExecError> {
    let raw = execute(spec, Streams::Split).await?;
    let (status, stderr) = raw.status_and_text(&raw.secondary);
    Ok(SplitOutcome {
        status,
        stdout: raw.primary.bytes,
        stderr,
        stdout_truncated_bytes: raw.primary.truncated_bytes,
        duration: raw.duration,
        timed_out: raw.timed_out,
    })
}

/// Whether stderr shares stdout's pipe.
#[derive(Clone, Copy, PartialEq)]
enum Streams {
    /// One pipe for both (Nagios convention: output reads in the order it was written).
    Combined,
    /// stdout and stderr on separate pipes.
    Split,
}

/// What [`execute`] observed.
struct RawOutcome {
    exit: Option<ExitStatus>,
    timed_out: bool,
    /// stdout (and stderr when combined).
    primary: Capture,
    /// stderr when split; empty otherwise.
    secondary: Capture,
    duration: Duration,
}

impl RawOutcome {
    /// The status, and `capture` as text with the timeout prefix when it timed out.
    fn status_and_text(&self, capture: &Capture) -> (i32, String) {
        if self.timed_out {
            (
                TIMEOUT_STATUS,
                format!("{TIMEOUT_OUTPUT}{}", capture.text()),
            )
        } else {
            let status = self.exit.and_then(|s| s.code()).unwrap_or(UNKNOWN_STATUS);
            (status, capture.text())
        }
    }
}

/// One output pipe being read into its capture; `pipe` is `None` once at end of file.
struct OutputStream {
    pipe: Option<pipe::Receiver>,
    capture: Capture,
    buf: Vec<u8>,
}

impl OutputStream {
    fn new(pipe: Option<pipe::Receiver>, limit: usize) -> OutputStream {
        let buf = if pipe.is_some() {
            vec![0u8; READ_CHUNK]
        } else {
            Vec::new()
        };
        OutputStream {
            pipe,
            capture: Capture::new(limit),
            buf,
        }
    }

    fn is_open(&self) -> bool {
        self.pipe.is_some()
    }

    /// Reads one chunk. Cancel-safe: the only await is the pipe read, which is.
    async fn read_chunk(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return std::future::pending().await;
        };
        match pipe.read(&mut self.buf).await {
            Ok(0) => self.pipe = None,
            Ok(n) => self.capture.push(&self.buf[..n]),
            Err(err) => {
                tracing::debug!(%err, "reading command output failed; treating as end of output");
                self.pipe = None;
            }
        }
    }

    /// Reads what is left until end of file or `deadline`.
    async fn drain(&mut self, deadline: Instant) {
        while self.is_open() {
            if timeout_at(deadline, self.read_chunk()).await.is_err() {
                self.pipe = None;
            }
        }
    }
}

async fn execute(spec: &Spec, streams: Streams) -> Result<RawOutcome, ExecError> {
    let started = Instant::now();
    let deadline = started + spec.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let limit = match spec.output_limit {
        0 => DEFAULT_OUTPUT_LIMIT,
        n => n,
    };

    let (primary_pipe, secondary_pipe, mut child) =
        spawn(spec, streams).map_err(ExecError::Spawn)?;
    // From here on, leaving this function by any path (including the future being dropped)
    // kills the group unless the command finished on its own.
    let mut group = GroupGuard::new(&child);
    let mut primary = OutputStream::new(Some(primary_pipe), limit);
    let mut secondary = OutputStream::new(secondary_pipe, limit);

    let stdin_data = spec.stdin.as_deref().unwrap_or_default();
    let stdin_pipe = child.stdin.take();
    let mut feed_stdin = pin!(async move {
        if let Some(mut pipe) = stdin_pipe {
            // EPIPE (the command does not read its stdin) is not an error of the command.
            let _ = pipe.write_all(stdin_data).await;
            // `pipe` dropped here: the child sees EOF.
        }
    });

    let mut stdin_done = false;
    let mut exit: Option<ExitStatus> = None;
    // Set when the command exited but a pipe is still open (a background grandchild).
    let mut grace_deadline: Option<Instant> = None;
    let mut timed_out = false;
    let finished = |primary: &OutputStream, secondary: &OutputStream, exit: Option<ExitStatus>| {
        exit.is_some() && !primary.is_open() && !secondary.is_open()
    };

    while !finished(&primary, &secondary, exit) {
        tokio::select! {
            () = primary.read_chunk(), if primary.is_open() => {}
            () = secondary.read_chunk(), if secondary.is_open() => {}
            status = child.wait(), if exit.is_none() => {
                // An error here means the status cannot be determined: status 3.
                exit = Some(status.unwrap_or_else(|_| unknown_exit()));
                grace_deadline = Some(Instant::now() + EOF_GRACE);
            }
            () = &mut feed_stdin, if !stdin_done => stdin_done = true,
            () = sleep_until(deadline) => {
                timed_out = true;
                break;
            }
            () = sleep_until(grace_deadline.unwrap_or(deadline)), if grace_deadline.is_some() => {
                tracing::debug!(command = %spec.command, "command exited but its output pipe stayed open; killing its process group");
                break;
            }
        }
    }

    if !finished(&primary, &secondary, exit) {
        // Timed out, or a leftover grandchild holds a pipe: kill everything, then collect what
        // was already written (every writer is dead, so EOF comes at once — unless a process
        // left the group, which the deadline bounds).
        group.kill();
        if exit.is_none() {
            exit = timeout_at(Instant::now() + REAP_AFTER_KILL, child.wait())
                .await
                .ok()
                .and_then(Result::ok);
        }
        let drain_deadline = Instant::now() + EOF_GRACE;
        primary.drain(drain_deadline).await;
        secondary.drain(drain_deadline).await;
    }
    group.disarm();

    Ok(RawOutcome {
        exit,
        timed_out,
        primary: primary.capture,
        secondary: secondary.capture,
        duration: started.elapsed(),
    })
}

/// Starts `sh -c` in a new process group; returns the stdout pipe (which also carries stderr
/// when combined) and, when split, the stderr pipe.
fn spawn(
    spec: &Spec,
    streams: Streams,
) -> io::Result<(pipe::Receiver, Option<pipe::Receiver>, Child)> {
    let (reader, writer) = io::pipe()?;
    let (stderr_reader, stderr_writer) = match streams {
        Streams::Combined => (None, writer.try_clone()?),
        Streams::Split => {
            let (reader, writer) = io::pipe()?;
            (Some(reader), writer)
        }
    };
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&spec.command)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(writer)
        .stderr(stderr_writer)
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn()?;
    // The command still owns our copies of the pipe's write end: drop it, or EOF never comes.
    drop(command);
    let reader = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    let stderr_reader = stderr_reader
        .map(|reader| pipe::Receiver::from_owned_fd(OwnedFd::from(reader)))
        .transpose()?;
    Ok((reader, stderr_reader, child))
}

/// An exit status for "could not be determined" (mapped to [`UNKNOWN_STATUS`]).
fn unknown_exit() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    // Raw wait status 9 = "killed by SIGKILL": `code()` is None.
    ExitStatus::from_raw(9)
}

/// SIGKILLs the command's process group when dropped while armed.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn new(child: &Child) -> GroupGuard {
        // `id()` is None only after the child was reaped, which cannot have happened yet. The
        // child called setpgid(0, 0), so its pid is its group id. Pid 1 is never our child, and
        // `from_raw` refuses 0 — so this can never signal "every process" or "our own group".
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .filter(|&id| id > 1)
            .and_then(Pid::from_raw);
        GroupGuard { pgid }
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH: the group is already gone, which is what we want.
            if let Err(err) = kill_process_group(pgid, Signal::KILL) {
                if err != rustix::io::Errno::SRCH {
                    tracing::warn!(%err, pgid = pgid.as_raw_nonzero().get(), "could not kill process group");
                }
            }
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output kept up to a byte limit; the rest is counted.
struct Capture {
    bytes: Vec<u8>,
    limit: usize,
    truncated_bytes: u64,
}

impl Capture {
    fn new(limit: usize) -> Capture {
        Capture {
            bytes: Vec::new(),
            limit,
            truncated_bytes: 0,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        let room = self.limit.saturating_sub(self.bytes.len());
        let kept = chunk.len().min(room);
        self.bytes.extend_from_slice(&chunk[..kept]);
        self.truncated_bytes += (chunk.len() - kept) as u64;
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}
