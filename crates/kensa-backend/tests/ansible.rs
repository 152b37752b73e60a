//! Compatibility test: the `sensu.sensu_go` Ansible collection (1.14, shipped in
//! `ansible==8.7.0`) must work unmodified against Kensa.
//!
//! Runs `tests/ansible/playbook.yml` (workspace root) against an in-process backend. The
//! collection's API contract is written down in `tests/ansible/API_NOTES.md`.
//!
//! Needs `ansible-playbook` from the venv made by `scripts/ansible-venv.sh`:
//!
//! ```sh
//! KENSA_ANSIBLE_PLAYBOOK="$(scripts/ansible-venv.sh)" cargo test -p kensa-backend --test ansible
//! ```
//!
//! Without `KENSA_ANSIBLE_PLAYBOOK` the test is skipped (it passes, printing why).
//! `KENSA_ANSIBLE_VERBOSE=1` adds `-vvv` to the run; the request log of the collection
//! (`SENSU_ANSIBLE_DEBUG`) is printed whenever the playbook fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use kensa_backend::testing::TestServer;

/// Upper bound for the whole playbook run (it normally takes a minute or two).
const PLAYBOOK_TIMEOUT: Duration = Duration::from_secs(15 * 60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensu_go_ansible_collection_playbook() -> anyhow::Result<()> {
    let playbook_bin = match std::env::var_os("KENSA_ANSIBLE_PLAYBOOK") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => {
            println!("skipped: KENSA_ANSIBLE_PLAYBOOK not set (run scripts/ansible-venv.sh)");
            return Ok(());
        }
    };
    anyhow::ensure!(
        playbook_bin.is_file(),
        "KENSA_ANSIBLE_PLAYBOOK={} is not a file (run scripts/ansible-venv.sh)",
        playbook_bin.display()
    );

    let root = workspace_root();
    let ansible_dir = root.join("tests").join("ansible");
    let playbook = ansible_dir.join("playbook.yml");
    anyhow::ensure!(playbook.is_file(), "missing {}", playbook.display());

    // Everything Ansible writes goes into this directory.
    let scratch = tempfile::tempdir()?;
    let sub = |name: &str| -> anyhow::Result<PathBuf> {
        let dir = scratch.path().join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    };
    let (home, local_tmp, remote_tmp, tmp, collections) = (
        sub("home")?,
        sub("local-tmp")?,
        sub("remote-tmp")?,
        sub("tmp")?,
        sub("collections")?,
    );

    let server = TestServer::start().await?;
    let result = run_playbook(
        &playbook_bin,
        &ansible_dir,
        &playbook,
        &server,
        [&home, &local_tmp, &remote_tmp, &tmp, &collections],
    )
    .await;
    server.shutdown().await;
    let (success, code, output) = result?;

    if !success {
        let log = std::fs::read_to_string(tmp.join("sensu-ansible.log")).unwrap_or_default();
        panic!(
            "ansible-playbook failed (exit status {code})\n\
             ===== ansible-playbook output =====\n{output}\n\
             ===== sensu.sensu_go request log (last 200 lines) =====\n{}\n",
            tail(&log, 200)
        );
    }
    println!("{output}");
    Ok(())
}

async fn run_playbook(
    playbook_bin: &Path,
    ansible_dir: &Path,
    playbook: &Path,
    server: &TestServer,
    [home, local_tmp, remote_tmp, tmp, collections]: [&PathBuf; 5],
) -> anyhow::Result<(bool, String, String)> {
    let mut cmd = tokio::process::Command::new(playbook_bin);
    cmd.arg("-i")
        .arg("localhost,")
        .arg(playbook)
        .arg("-e")
        .arg(format!("sensu_url={}", server.url))
        .arg("-e")
        .arg(format!("sensu_user={}", server.admin_username))
        .arg("-e")
        .arg(format!("sensu_password={}", server.admin_password));
    if std::env::var_os("KENSA_ANSIBLE_VERBOSE").is_some_and(|v| !v.is_empty() && v != "0") {
        cmd.arg("-vvv");
    }
    cmd.current_dir(ansible_dir)
        // Only our settings: no user/system ansible.cfg, no user collections.
        .env("ANSIBLE_CONFIG", ansible_dir.join("ansible.cfg"))
        .env("ANSIBLE_HOME", home)
        .env("ANSIBLE_LOCAL_TEMP", local_tmp)
        .env("ANSIBLE_REMOTE_TEMP", remote_tmp)
        .env("ANSIBLE_COLLECTIONS_PATH", collections)
        .env("ANSIBLE_NOCOWS", "1")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("ANSIBLE_HOST_KEY_CHECKING", "0")
        .env("ANSIBLE_LOCALHOST_WARNING", "0")
        .env("ANSIBLE_GATHERING", "explicit")
        .env("ANSIBLE_PIPELINING", "1")
        .env("ANSIBLE_STDOUT_CALLBACK", "default")
        .env("ANSIBLE_LOG_PATH", tmp.join("ansible.log"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // The collection logs every request and response to $TMPDIR/sensu-ansible.log.
        .env("SENSU_ANSIBLE_DEBUG", "yes")
        .env("TMPDIR", tmp)
        // Never let the modules fall back on ambient Sensu settings.
        .env_remove("SENSU_URL")
        .env_remove("SENSU_USER")
        .env_remove("SENSU_PASSWORD")
        .env_remove("SENSU_API_KEY")
        .env_remove("SENSU_NAMESPACE")
        .env_remove("SENSU_VERIFY")
        .env_remove("SENSU_CA_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);

    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", playbook_bin.display()))?;
    let output = tokio::time::timeout(PLAYBOOK_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| {
            format!("ansible-playbook did not finish within {PLAYBOOK_TIMEOUT:?}")
        })??;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        text.push_str("\n----- stderr -----\n");
        text.push_str(&stderr);
    }
    let code = output
        .status
        .code()
        .map_or_else(|| format!("{:?}", output.status), |c| c.to_string());
    Ok((output.status.success(), code, text))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
