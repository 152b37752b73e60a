//! End-to-end tests: the real `kensactl` binary against a real in-process backend
//! (`kensa_backend::testing::TestServer`, SQLite in a temp dir, port 0). Each test gets its own
//! backend and its own configuration directory, and runs kensactl with a scrubbed environment
//! so that a developer's `KENSA_*`/`SENSU_*` variables cannot leak in.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use kensa_backend::testing::TestServer;
use kensa_cli::documents::{parse_source, Source};
use serde_json::Value;

/// A backend, a config dir and a scratch dir; the backend is shut down on drop.
struct Harness {
    runtime: tokio::runtime::Runtime,
    server: Option<TestServer>,
    config_dir: tempfile::TempDir,
    scratch: tempfile::TempDir,
}

impl Harness {
    fn start() -> Harness {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime
            .block_on(TestServer::start())
            .expect("backend starts");
        Harness {
            runtime,
            server: Some(server),
            config_dir: tempfile::tempdir().unwrap(),
            scratch: tempfile::tempdir().unwrap(),
        }
    }

    fn server(&self) -> &TestServer {
        self.server.as_ref().unwrap()
    }

    fn url(&self) -> &str {
        &self.server().url
    }

    /// `kensactl` with only PATH/HOME/TMPDIR kept and this harness's config dir.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kensactl"));
        command.env_clear();
        for keep in ["PATH", "HOME", "TMPDIR"] {
            if let Ok(value) = std::env::var(keep) {
                command.env(keep, value);
            }
        }
        command
            .env("KENSA_CONFIG_DIR", self.config_dir.path())
            .args(args)
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.run(args))
    }

    /// Runs and requires failure with exit status 1; returns stderr.
    fn fail(&self, args: &[&str]) -> String {
        failed(args, self.run(args))
    }

    fn configure(&self) {
        let server = self.server();
        let out = self.ok(&[
            "configure",
            "-n",
            "--url",
            &server.url,
            "--username",
            &server.admin_username,
            "--password",
            &server.admin_password,
        ]);
        assert!(out.contains("Configured"), "{out}");
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let out = self.ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("kensactl {args:?}: not JSON ({e}): {out}"))
    }

    fn names(&self, args: &[&str]) -> Vec<String> {
        let Value::Array(items) = self.json(args) else {
            panic!("{args:?} did not list")
        };
        items
            .iter()
            .map(|i| {
                i["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.scratch.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
    }
}

fn succeeded(args: &[&str], output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kensactl {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    stdout
}

fn failed(args: &[&str], output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "kensactl {args:?} should fail:\nstdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(stderr.starts_with("Error: "), "{stderr}");
    stderr
}

fn fixture(name: &str) -> String {
    format!("{}/testdata/e2e/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A dump as `(type, namespace, name) -> document`, without what a replay legitimately changes,
/// so that two backends' dumps can be compared: `created_by` (the server sets it on every
/// write) and the `sensu.io/managed_by` label (`create` adds it, also to the seeded RBAC
/// resources that did not have it).
fn dump_index(text: &str) -> BTreeMap<(String, String, String), Value> {
    let (documents, errors) = parse_source(&Source {
        origin: "dump".into(),
        text: text.into(),
    });
    assert!(errors.is_empty(), "dump does not parse: {errors:?}");
    let mut index = BTreeMap::new();
    for document in documents {
        let mut value = document.value;
        if let Some(meta) = value["metadata"].as_object_mut() {
            meta.remove("created_by");
            if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
                labels.remove("sensu.io/managed_by");
                if labels.is_empty() {
                    meta.remove("labels");
                }
            }
        }
        let key = (
            value["type"].as_str().unwrap().to_owned(),
            value["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            value["metadata"]["name"]
                .as_str()
                .or(value["spec"]["name"].as_str())
                .unwrap()
                .to_owned(),
        );
        assert!(
            index.insert(key.clone(), value).is_none(),
            "{key:?} dumped twice"
        );
    }
    index
}

#[test]
fn create_list_info_dump_delete_and_restore_on_an_empty_backend() {
    let h = Harness::start();
    h.configure();
    let out = h.ok(&["create", "-f", &fixture("resources.yaml")]);
    assert!(out.contains("Created 7 resources"), "{out}");

    // list and info in every format
    let table = h.ok(&["check", "list"]);
    let header = table.lines().next().unwrap();
    for column in [
        "Name",
        "Command",
        "Interval",
        "Cron",
        "Timeout",
        "TTL",
        "Subscriptions",
        "Handlers",
        "Hooks",
        "Publish?",
    ] {
        assert!(header.contains(column), "missing column {column}: {table}");
    }
    assert!(
        table.contains("check-cpu")
            && table.contains("linux,system")
            && table.contains("critical: ps-aux"),
        "{table}"
    );
    assert!(
        !table.contains("check-http"),
        "dev's check listed in default: {table}"
    );

    let checks = h.json(&["check", "list", "--all-namespaces"]);
    let by_name: BTreeMap<&str, &Value> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["metadata"]["name"].as_str().unwrap(), c))
        .collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        ["check-cpu", "check-http"]
    );
    assert_eq!(
        by_name["check-cpu"]["metadata"]["labels"]["sensu.io/managed_by"],
        "kensactl"
    );
    assert_eq!(by_name["check-cpu"]["metadata"]["labels"]["team"], "ops");
    assert_eq!(by_name["check-http"]["metadata"]["namespace"], "dev");
    assert_eq!(by_name["check-http"]["cron"], "*/5 * * * *");

    let all_ns_table = h.ok(&["handler", "list", "--all-namespaces"]);
    assert!(
        all_ns_table.lines().next().unwrap().contains("Namespace"),
        "{all_ns_table}"
    );
    assert!(
        all_ns_table.contains("10.0.0.5:514") && all_ns_table.contains("slack-notify"),
        "{all_ns_table}"
    );

    let yaml = h.ok(&["check", "list", "--format", "yaml"]);
    assert!(
        yaml.starts_with("type: CheckConfig\napi_version: core/v2\nmetadata:"),
        "{yaml}"
    );
    let wrapped = h.ok(&["filter", "list", "--format", "wrapped-json"]);
    let wrapped: Value = serde_json::from_str(&wrapped).unwrap();
    assert_eq!(wrapped["type"], "EventFilter");
    assert_eq!(wrapped["spec"]["action"], "allow");

    let info = h.ok(&["check", "info", "check-cpu"]);
    assert!(
        info.contains("check-cpu.sh -w 75 -c 90") && info.contains("team=ops"),
        "{info}"
    );
    let info = h.json(&["check", "info", "check-http", "--namespace", "dev"]);
    assert_eq!(info["subscriptions"], serde_json::json!(["web"]));
    let info = h.ok(&["hook", "info", "ps-aux", "--format", "yaml"]);
    assert!(
        info.contains("type: HookConfig") && info.contains("command: ps aux"),
        "{info}"
    );
    let info = h.ok(&[
        "handler",
        "info",
        "syslog",
        "--namespace",
        "dev",
        "--format",
        "wrapped-json",
    ]);
    assert!(info.contains("\"port\": 514"), "{info}");
    assert!(h.ok(&["namespace", "list"]).contains("dev"));

    // dump everything, through a file and through a pipe
    let dump_path = h.scratch.path().join("dump.yaml");
    h.ok(&[
        "dump",
        "all",
        "--all-namespaces",
        "-f",
        dump_path.to_str().unwrap(),
    ]);
    let dump = std::fs::read_to_string(&dump_path).unwrap();
    assert_eq!(dump, h.ok(&["dump", "all", "--all-namespaces"]));
    let index = dump_index(&dump);
    for key in [
        ("CheckConfig", "default", "check-cpu"),
        ("Handler", "dev", "syslog"),
        ("Namespace", "", "dev"),
    ] {
        assert!(
            index.contains_key(&(key.0.into(), key.1.into(), key.2.into())),
            "{key:?} not dumped:\n{dump}"
        );
    }
    assert!(
        !index
            .keys()
            .any(|(t, _, _)| t == "User" || t == "APIKey" || t == "Event"),
        "dump all must skip them"
    );
    let positions: Vec<usize> = [
        "type: Namespace",
        "type: HookConfig",
        "type: CheckConfig",
        "type: Handler",
    ]
    .iter()
    .map(|t| dump.find(t).unwrap_or_else(|| panic!("{t} missing")))
    .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "dump is not in dependency order"
    );

    // delete what was created, then bring it back from the dump
    let out = h.ok(&["delete", "-f", &fixture("resources.yaml")]);
    assert!(out.contains("Deleted 7 resources"), "{out}");
    assert!(h.names(&["check", "list", "--all-namespaces"]).is_empty());
    assert!(h.names(&["handler", "list", "--all-namespaces"]).is_empty());
    assert!(!h.ok(&["namespace", "list"]).contains("dev"));
    h.ok(&["create", "-f", dump_path.to_str().unwrap()]);
    assert_eq!(
        dump_index(&h.ok(&["dump", "all", "--all-namespaces"])),
        index
    );

    // the same dump piped into a brand-new backend reproduces the same resources
    let fresh = Harness::start();
    fresh.configure();
    let output = fresh.run_with_stdin(&["create", "-f", "-"], &dump);
    succeeded(&["create", "-f", "-"], output);
    let restored = dump_index(&fresh.ok(&["dump", "all", "--all-namespaces"]));
    assert_eq!(
        restored.keys().collect::<Vec<_>>(),
        index.keys().collect::<Vec<_>>()
    );
    for (key, value) in &index {
        assert_eq!(&restored[key], value, "{key:?} differs after restore");
    }
}

#[test]
fn an_invalid_document_stops_the_batch_before_any_write() {
    let h = Harness::start();
    h.configure();
    let stderr = h.fail(&["create", "-f", &fixture("bad-batch.yaml")]);
    assert!(
        stderr.contains("1 of 4 documents are invalid; nothing was written"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "bad-batch.yaml: document 3 (line 17): CheckConfig \"broken\": spec.interval:"
        ),
        "{stderr}"
    );
    assert!(
        h.names(&["check", "list"]).is_empty(),
        "the good checks before it were written"
    );
    assert!(h.names(&["handler", "list"]).is_empty());

    // an unwrapped document without a type is refused with a hint
    let path = h.write(
        "untyped.json",
        r#"{"metadata": {"name": "x"}, "command": "true", "interval": 10}"#,
    );
    let stderr = h.fail(&["create", "-f", path.to_str().unwrap()]);
    assert!(
        stderr.contains("document 1 (line 1): the document has no \"type\""),
        "{stderr}"
    );
}

#[test]
fn a_failed_write_reports_what_was_applied() {
    let h = Harness::start();
    h.configure();
    let stderr = h.fail(&["create", "-f", &fixture("midway-failure.yaml")]);
    let (headline, rest) = stderr
        .split_once("\napplied before the failure (1):")
        .expect(&stderr);
    let (applied, not_applied) = rest.split_once("\nnot applied (2):").expect(&stderr);
    assert!(
        headline.contains("HookConfig \"orphan-hook\" in namespace \"no-such-namespace\"")
            && headline.contains("midway-failure.yaml: document 2, line 8")
            && headline.contains("(HTTP 404 Not Found)"),
        "the failed write, where it is, and the server's answer: {stderr}"
    );
    assert!(
        applied.contains("HookConfig \"applied-hook\" in namespace \"default\""),
        "{stderr}"
    );
    assert!(
        !applied.contains("orphan-hook") && !applied.contains("never-attempted"),
        "{stderr}"
    );
    assert!(
        not_applied.contains("\"orphan-hook\" in namespace \"no-such-namespace\" (")
            && not_applied.contains("<- failed")
    );
    assert!(
        not_applied.contains("\"never-attempted\"") && not_applied.contains("<- not attempted"),
        "{stderr}"
    );
    assert_eq!(h.names(&["hook", "list"]), ["applied-hook"]);
}

/// Writes an executable editor script into the scratch dir.
fn editor_script(h: &Harness, name: &str, body: &str) -> PathBuf {
    let path = h.write(name, &format!("#!/bin/sh\n{body}\n"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    path
}

#[test]
fn edit_saves_what_the_editor_changed() {
    let h = Harness::start();
    h.configure();
    h.ok(&["create", "-f", &fixture("resources.yaml")]);

    let rewrite = editor_script(
        &h,
        "rewrite.sh",
        r#"sed -i.bak -e 's/interval: 60/interval: 120/' "$1""#,
    );
    let out = succeeded(
        &["edit"],
        h.command(&["edit", "check", "check-cpu"])
            .env("EDITOR", &rewrite)
            .output()
            .unwrap(),
    );
    assert!(out.contains("Updated CheckConfig \"check-cpu\""), "{out}");
    let check = h.json(&["check", "info", "check-cpu"]);
    assert_eq!(check["interval"], 120);
    assert_eq!(
        check["command"], "check-cpu.sh -w 75 -c 90",
        "other fields untouched"
    );

    // VISUAL wins over EDITOR; an editor that changes nothing writes nothing
    let untouched = editor_script(&h, "noop.sh", "exit 0");
    let out = succeeded(
        &["edit"],
        h.command(&["edit", "checks", "check-cpu"])
            .env("VISUAL", &untouched)
            .env("EDITOR", &rewrite)
            .output()
            .unwrap(),
    );
    assert!(out.contains("no changes"), "{out}");

    // an edit that breaks the resource is refused and the file kept
    let breaking = editor_script(
        &h,
        "break.sh",
        r#"sed -i.bak -e 's/interval: 120/interval: soon/' "$1""#,
    );
    let stderr = failed(
        &["edit"],
        h.command(&["edit", "check", "check-cpu"])
            .env("EDITOR", &breaking)
            .output()
            .unwrap(),
    );
    assert!(
        stderr.contains("spec.interval") && stderr.contains("your changes are saved in"),
        "{stderr}"
    );
    assert_eq!(h.json(&["check", "info", "check-cpu"])["interval"], 120);
}

#[test]
fn api_keys_are_granted_used_and_revoked() {
    let h = Harness::start();
    h.configure();
    let out = h.ok(&["api-key", "grant", "admin"]);
    let location = out
        .trim()
        .strip_prefix("Created: ")
        .unwrap_or_else(|| panic!("{out}"));
    let key = location
        .strip_prefix("/api/core/v2/apikeys/")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(key.len(), 36, "a UUID: {key}");
    assert!(h.ok(&["api-key", "list"]).contains(key));

    // another user's machine: no configuration at all, only the key
    let elsewhere = tempfile::tempdir().unwrap();
    let with_key = |args: &[&str]| {
        let mut command = h.command(args);
        command.env("KENSA_CONFIG_DIR", elsewhere.path());
        command.output().unwrap()
    };
    let listing = ["namespace", "list", "--api-url", h.url(), "--api-key", key];
    assert!(succeeded(&listing, with_key(&listing)).contains("default"));
    let mut by_env = h.command(&["namespace", "list", "--api-url", h.url()]);
    by_env
        .env("KENSA_CONFIG_DIR", elsewhere.path())
        .env("SENSU_API_KEY", key);
    succeeded(
        &["namespace", "list (SENSU_API_KEY)"],
        by_env.output().unwrap(),
    );

    assert!(h
        .ok(&["api-key", "revoke", key, "--skip-confirm"])
        .contains("Revoked"));
    let stderr = failed(&listing, with_key(&listing));
    assert!(stderr.contains("HTTP 401"), "{stderr}");
}

#[test]
fn completion_prints_scripts() {
    let scratch = tempfile::tempdir().unwrap();
    let run = |shell: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_kensactl"))
            .env("KENSA_CONFIG_DIR", scratch.path())
            .args(["completion", shell])
            .output()
            .unwrap();
        succeeded(&["completion", shell], output)
    };
    let bash = run("bash");
    assert!(
        bash.contains("_kensactl()")
            && bash.contains("complete -F _kensactl")
            && bash.contains("api-key"),
        "{bash}"
    );
    assert!(run("zsh").starts_with("#compdef kensactl"));
}

#[test]
fn errors_carry_the_server_message_and_status() {
    let h = Harness::start();
    let stderr = h.fail(&["check", "list"]);
    assert!(stderr.contains("kensactl configure"), "{stderr}");

    let stderr = h.fail(&[
        "configure",
        "-n",
        "--url",
        h.url(),
        "--username",
        "admin",
        "--password",
        "wrong-password",
    ]);
    assert!(stderr.contains("HTTP 401"), "{stderr}");

    h.configure();
    let stderr = h.fail(&["check", "info", "does-not-exist"]);
    assert!(stderr.contains("(HTTP 404 Not Found)"), "{stderr}");
    let stderr = h.fail(&["handler", "list", "--label-selector", "a ==="]);
    assert!(stderr.contains("(HTTP 400 Bad Request)"), "{stderr}");
}

#[test]
fn deleting_asks_for_confirmation() {
    let h = Harness::start();
    h.configure();
    h.ok(&["create", "-f", &fixture("resources.yaml")]);
    let stderr = h.fail(&["check", "delete", "check-cpu"]);
    assert!(stderr.contains("--skip-confirm"), "{stderr}");
    assert_eq!(h.names(&["check", "list"]), ["check-cpu"]);
    assert!(h
        .ok(&["check", "delete", "check-cpu", "--skip-confirm"])
        .contains("Deleted"));
    assert!(h.names(&["check", "list"]).is_empty());
}

#[test]
fn checks_events_and_paging() {
    let h = Harness::start();
    h.configure();
    h.ok(&["create", "-f", &fixture("resources.yaml")]);
    assert!(h
        .ok(&["check", "execute", "check-cpu", "--reason", "testing"])
        .contains("Issued"));
    let stderr = h.fail(&["check", "execute", "no-such-check"]);
    assert!(stderr.contains("HTTP 404"), "{stderr}");

    // selectors are passed to the server
    let labelled = h.names(&["check", "list", "--label-selector", "team == ops"]);
    assert_eq!(labelled, ["check-cpu"]);
    let by_field = h.names(&[
        "check",
        "list",
        "--all-namespaces",
        "--field-selector",
        "web in check.subscriptions",
    ]);
    assert_eq!(by_field, ["check-http"]);

    // more checks than one page holds
    let mut many = String::new();
    for i in 0..7 {
        many.push_str(&format!(
            "---\ntype: CheckConfig\nmetadata: {{name: paged-{i}}}\nspec: {{command: 'true', interval: 10, subscriptions: [x]}}\n"
        ));
    }
    h.ok(&[
        "create",
        "-f",
        h.write("many.yaml", &many).to_str().unwrap(),
    ]);
    let mut all = h.names(&["check", "list"]);
    let mut paged = h.names(&["check", "list", "--chunk-size", "3"]);
    all.sort();
    paged.sort();
    assert_eq!(all.len(), 8);
    assert_eq!(paged, all);

    // an event, created from a file, listed, resolved and deleted
    let event = r#"{"type": "Event", "api_version": "core/v2", "metadata": {},
      "spec": {"entity": {"entity_class": "proxy", "metadata": {"name": "web1", "namespace": "default"}},
               "check": {"metadata": {"name": "check-cpu", "namespace": "default"}, "status": 2,
                         "output": "CPU CRITICAL: 97%", "interval": 60, "command": "check-cpu.sh"}}}"#;
    h.ok(&[
        "create",
        "-f",
        h.write("event.json", event).to_str().unwrap(),
    ]);
    let events = poll(|| {
        let list = h.ok(&["event", "list"]);
        list.contains("web1").then_some(list)
    });
    let header = events.lines().next().unwrap();
    for column in [
        "Entity",
        "Check",
        "Output",
        "Status",
        "Silenced",
        "Timestamp",
        "UUID",
    ] {
        assert!(header.contains(column), "{events}");
    }
    assert!(events.contains("CPU CRITICAL: 97%"), "{events}");
    assert!(h
        .ok(&["event", "resolve", "web1", "check-cpu"])
        .contains("Resolved"));
    poll(|| {
        (h.json(&["event", "info", "web1", "check-cpu"])["check"]["status"] == 0).then_some(())
    });
    assert!(h
        .ok(&["event", "delete", "web1", "check-cpu", "--skip-confirm"])
        .contains("Deleted"));
    poll(|| {
        h.json(&["event", "list"])
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    });
}

/// Events are processed asynchronously by the backend: retries for up to 10 s.
fn poll<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn users_and_namespaces() {
    let h = Harness::start();
    h.configure();
    assert!(h
        .ok(&["namespace", "create", "staging"])
        .contains("Created"));
    assert!(h.ok(&["namespace", "list"]).contains("staging"));
    h.ok(&["namespace", "delete", "staging", "--skip-confirm"]);
    assert!(!h.ok(&["namespace", "list"]).contains("staging"));

    let stderr = h.fail(&["user", "create", "bob", "--password", "short"]);
    assert!(stderr.contains("at least 8"), "{stderr}");
    h.ok(&[
        "user",
        "create",
        "bob",
        "--password",
        "first-Passw0rd",
        "--groups",
        "ops,dev",
    ]);
    let users = h.ok(&["user", "list"]);
    assert!(
        users.contains("bob") && users.contains("ops,dev"),
        "{users}"
    );
    h.ok(&["user", "add-group", "bob", "oncall"]);
    h.ok(&["user", "remove-group", "bob", "dev"]);
    assert_eq!(
        h.json(&["user", "info", "bob"])["groups"],
        serde_json::json!(["ops", "oncall"])
    );

    h.ok(&[
        "user",
        "change-password",
        "bob",
        "--current-password",
        "first-Passw0rd",
        "--new-password",
        "second-Passw0rd",
    ]);
    // bob logs in with the new password, from his own configuration
    let bob = tempfile::tempdir().unwrap();
    let login = |password: &str| {
        let args = [
            "configure",
            "-n",
            "--url",
            h.url(),
            "--username",
            "bob",
            "--password",
            password,
        ];
        let mut command = h.command(&args);
        command.env("KENSA_CONFIG_DIR", bob.path());
        command.output().unwrap()
    };
    assert!(!login("first-Passw0rd").status.success());
    assert!(login("second-Passw0rd").status.success());

    h.ok(&["user", "disable", "bob", "--skip-confirm"]);
    assert_eq!(h.json(&["user", "info", "bob"])["disabled"], true);
    assert!(
        !login("second-Passw0rd").status.success(),
        "a disabled user cannot log in"
    );
    h.ok(&["user", "reinstate", "bob"]);
    assert!(login("second-Passw0rd").status.success());
}

#[test]
fn configuration_from_sensu_variables_and_token_refresh() {
    let h = Harness::start();
    let server = h.server();
    let mut command = h.command(&["configure", "-n", "--namespace", "dev", "--format", "json"]);
    command
        .env("SENSU_URL", &server.url)
        .env("SENSU_USERNAME", &server.admin_username)
        .env("SENSU_PASSWORD", &server.admin_password);
    succeeded(&["configure (SENSU_*)"], command.output().unwrap());
    let profile: Value =
        serde_json::from_slice(&std::fs::read(h.config_dir.path().join("profile")).unwrap())
            .unwrap();
    assert_eq!(profile["namespace"], "dev");
    assert_eq!(profile["format"], "json");

    // the stored format and namespace apply: check-cpu names no namespace, so it lands in dev
    h.ok(&["namespace", "create", "dev"]);
    h.ok(&["create", "-f", &fixture("resources.yaml")]);
    let listed: Value = serde_json::from_str(&h.ok(&["check", "list"])).unwrap();
    let listed: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["metadata"]["name"].as_str().unwrap(),
                c["metadata"]["namespace"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [("check-cpu", "dev"), ("check-http", "dev")]);
    // the flag beats the profile
    assert!(h.ok(&["check", "list", "--namespace", "default"]).trim() == "[]");

    // an expired access token is refreshed and the new session saved
    let cluster_path = h.config_dir.path().join("cluster");
    let mut cluster: Value =
        serde_json::from_slice(&std::fs::read(&cluster_path).unwrap()).unwrap();
    let old_access = cluster["access_token"].clone();
    cluster["expires_at"] = Value::from(1);
    std::fs::write(&cluster_path, serde_json::to_vec(&cluster).unwrap()).unwrap();
    h.ok(&["check", "list"]);
    let cluster: Value = serde_json::from_slice(&std::fs::read(&cluster_path).unwrap()).unwrap();
    assert_ne!(cluster["access_token"], old_access);
    assert!(cluster["expires_at"].as_i64().unwrap() > 1);
    let view: Value = serde_json::from_str(&h.ok(&["config", "view"])).unwrap();
    assert_eq!(view["api-url"], h.url());
    assert!(
        !h.ok(&["config", "view"])
            .contains(cluster["access_token"].as_str().unwrap()),
        "no secrets shown"
    );
}

/// Serves `body` to exactly one HTTP request on a port-0 listener; returns the URL.
fn serve_once(body: String) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/resources.yaml", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    });
    (url, handle)
}

#[test]
fn sources_directories_urls_and_stdin() {
    let h = Harness::start();
    h.configure();
    let dir = h.scratch.path().join("configs");
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    let hook = |name: &str| {
        format!(
            "type: HookConfig\nmetadata: {{name: {name}}}\nspec: {{command: 'true', timeout: 5}}\n"
        )
    };
    std::fs::write(dir.join("top.yaml"), hook("top")).unwrap();
    std::fs::write(dir.join("nested/deep.yml"), hook("deep")).unwrap();
    std::fs::write(dir.join("README.md"), "not a resource").unwrap();
    let dir_arg = dir.to_str().unwrap();
    h.ok(&["create", "-f", dir_arg]);
    assert_eq!(h.names(&["hook", "list"]), ["top"]);
    h.ok(&["create", "-r", "-f", dir_arg]);
    let mut names = h.names(&["hook", "list"]);
    names.sort();
    assert_eq!(names, ["deep", "top"]);

    // an http URL and stdin (no -f) in the same session
    let (url, server) = serve_once(hook("from-url"));
    h.ok(&["create", "-f", &url]);
    server.join().unwrap();
    succeeded(
        &["create (stdin)"],
        h.run_with_stdin(&["create"], &hook("from-stdin")),
    );
    let mut names = h.names(&["hook", "list"]);
    names.sort();
    assert_eq!(names, ["deep", "from-stdin", "from-url", "top"]);

    // wrapped-json dumps read back as JSON streams, and delete takes them
    let dump = h.ok(&["dump", "hooks", "--format", "wrapped-json"]);
    assert!(dump.trim_start().starts_with('{'), "{dump}");
    let out = succeeded(
        &["delete (stdin)"],
        h.run_with_stdin(&["delete", "-f", "-"], &dump),
    );
    assert!(out.contains("Deleted 4 resources"), "{out}");
    assert!(h.names(&["hook", "list"]).is_empty());
}

#[test]
fn every_resource_command_lists_in_every_format() {
    let h = Harness::start();
    h.configure();
    let commands = [
        "asset",
        "check",
        "cluster-role",
        "cluster-role-binding",
        "entity",
        "event",
        "filter",
        "handler",
        "hook",
        "mutator",
        "namespace",
        "pipeline",
        "role",
        "role-binding",
        "silenced",
        "user",
        "api-key",
    ];
    for command in commands {
        let table = h.ok(&[command, "list"]);
        assert!(
            table.lines().nth(1).is_some_and(|l| l.contains('─')),
            "{command}: {table}"
        );
        let json: Value =
            serde_json::from_str(&h.ok(&[command, "list", "--format", "json"])).unwrap();
        assert!(json.is_array(), "{command}");
        h.ok(&[command, "list", "--format", "yaml"]);
        h.ok(&[
            command,
            "list",
            "--format",
            "wrapped-json",
            "--all-namespaces",
        ]);
    }
    // seeded resources render in every format, and a YAML list reads back as documents
    let yaml = h.ok(&["cluster-role", "list", "--format", "yaml"]);
    let index = dump_index(&yaml);
    assert!(
        index.contains_key(&("ClusterRole".into(), String::new(), "cluster-admin".into())),
        "{yaml}"
    );
    let info = h.ok(&["user", "info", "admin"]);
    assert!(info.contains("cluster-admins"), "{info}");
    let info = h.ok(&[
        "cluster-role-binding",
        "info",
        "cluster-admin",
        "--format",
        "wrapped-json",
    ]);
    assert!(info.contains("\"type\": \"ClusterRoleBinding\""), "{info}");
}
