//! The `allow-list` end to end: an agent started with an allow-list file runs the checks and
//! hooks it allows — including an asset's executable checked by its SHA-512 — and answers
//! everything else with a failure saying why; a bad file stops the start naming the file and
//! the field.

mod assets_support;
mod core_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use assets_support::{asset, script_archive, sha512_hex, AssetServer};
use core_support::{agent_args, check_request, FakeBackend, Session, TestAgent};
use kensa_types::resources::check::Check;
use kensa_types::resources::hook::{HookConfig, HookList};

async fn result(session: &mut Session) -> Check {
    let event = session.next_event().await;
    session.ack(&event).await;
    event.check.expect("a check result")
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn only_allowed_commands_run_and_denials_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("report.sh");
    write_script(&script, "echo \"report $* FOO=$FOO\"");
    let server = AssetServer::start().await;
    let script_body = "echo \"asset says $1 FOO=$FOO\"";
    let archive = script_archive("asset-tool", script_body);
    let archive_sha512 = sha512_hex(&archive);
    let tool = asset(
        "acme/tool",
        &server.serve("tool.tar.gz", archive),
        &archive_sha512,
    );
    // The executable inside the asset, as the allow-list pins it.
    let tool_sha512 = sha512_hex(format!("#!/bin/sh\n{script_body}\n").as_bytes());
    let allow_list = dir.path().join("allow.yml");
    std::fs::write(
        &allow_list,
        format!(
            "- exec: {}\n  args: ['--disk /', '--verbose']\n\
             - exec: asset-tool\n  args: ['hi']\n  sha512: {tool_sha512}\n  enable_env: true\n",
            script.display()
        ),
    )
    .unwrap();

    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut args = agent_args(&[&backend.url], cache.path());
    args.allow_list = Some(allow_list.clone());
    let agent = TestAgent::start(args.resolve().unwrap()).await;
    let mut session = backend.accept_ready().await;

    let with_env = |name: &str, command: &str| {
        let mut request = check_request(name, command, "r1");
        request.config.env_vars = vec!["FOO=bar".into()];
        request
    };
    // Allowed; its entry does not enable env, so FOO is dropped.
    let report = format!("{} --verbose --disk /", script.display());
    session.send_check(with_env("allowed", &report)).await;
    let check = result(&mut session).await;
    assert_eq!(
        (check.status, check.output.as_str()),
        (0, "report --verbose --disk / FOO=\n")
    );

    // An asset's executable, found on the check's PATH and matching its sha512.
    let mut request = with_env("from-asset", "asset-tool hi");
    request.assets = vec![tool.clone()];
    session.send_check(request).await;
    let check = result(&mut session).await;
    assert_eq!(
        (check.status, check.output.as_str()),
        (0, "asset says hi FOO=bar\n")
    );

    let denied = [
        (
            format!("{} --disk /tmp", script.display()),
            format!(
                "no entry for \"{}\" allows these arguments",
                script.display()
            ),
        ),
        (
            format!(
                "{} --verbose; touch {}/pwned",
                script.display(),
                dir.path().display()
            ),
            "the command uses shell syntax the allow list cannot check (';')".to_owned(),
        ),
        (
            "/bin/true".to_owned(),
            "no entry for \"/bin/true\"".to_owned(),
        ),
        // Without the asset, `asset-tool` is not on PATH: its sha512 cannot be checked.
        (
            "asset-tool hi".to_owned(),
            "\"asset-tool\" was not found on PATH, so its sha512 cannot be checked".to_owned(),
        ),
    ];
    for (index, (command, why)) in denied.iter().enumerate() {
        session
            .send_check(check_request(&format!("denied-{index}"), command, "r1"))
            .await;
        let check = result(&mut session).await;
        assert_eq!(check.status, 3, "{command}");
        assert_eq!(
            check.output,
            format!("check command denied by the agent allow list: {why}")
        );
        assert_eq!(&check.command, command);
    }
    assert!(!dir.path().join("pwned").exists());

    // `allow_list_on_deny_status` sets the status of a denial.
    let mut request = check_request("quiet-denial", "/bin/true", "r1");
    request
        .config
        .metadata
        .annotations
        .insert("allow_list_on_deny_status".into(), "1".into());
    session.send_check(request).await;
    assert_eq!(result(&mut session).await.status, 1);

    // Hooks go through the allow-list too.
    let mut request = check_request("hooked", &report, "r1");
    request.config.check_hooks = vec![HookList {
        hook_type: "ok".into(),
        hooks: vec!["allowed-hook".into(), "denied-hook".into()],
    }];
    let hook = |name: &str, command: &str| {
        let mut hook = HookConfig {
            command: command.into(),
            timeout: 10,
            ..HookConfig::default()
        };
        hook.metadata.name = name.into();
        hook.metadata.namespace = "default".into();
        hook
    };
    request.hooks = vec![
        hook("allowed-hook", &format!("{} --disk /", script.display())),
        hook("denied-hook", "echo gotcha"),
    ];
    session.send_check(request).await;
    let check = result(&mut session).await;
    let hooks: Vec<_> = check
        .hooks
        .iter()
        .map(|hook| {
            (
                hook.config.metadata.name.as_str(),
                hook.status,
                hook.output.as_str(),
            )
        })
        .collect();
    assert_eq!(
        hooks,
        [
            ("allowed-hook", 0, "report --disk / FOO=\n"),
            (
                "denied-hook",
                3,
                "check hook command denied by the agent allow list: no entry for \"echo\""
            ),
        ]
    );
    agent.stop().await;
}

#[test]
fn a_bad_allow_list_stops_the_start_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "allow.yml",
            "- exec: /bin/true\n  args: ['']\n  sha512: 1234\n",
            "[0].sha512: must be 128 hexadecimal characters",
        ),
        (
            "allow.json",
            "[{\"exec\": \"/bin/true\", \"args\": [\"\"], \"enable-env\": true}]",
            "unknown field `enable-env`",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_kensa-agent"))
            .args(["start", "--allow-list"])
            .arg(&path)
            .env_remove("KENSA_LOG")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{name}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let prefix = format!("allow-list: {}: ", path.display());
        assert!(
            stderr.contains(&prefix) && stderr.contains(expected),
            "{name}: {stderr}"
        );
    }
}
