//! Runtime assets end to end: a fake backend sends check requests carrying assets, a real HTTP
//! server serves real tar.gz archives built here, and the agent downloads, verifies, unpacks
//! and runs the scripts inside.

mod assets_support;
mod core_support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use assets_support::{asset, ca_and_server, script_archive, sha512_hex, AssetServer};
use core_support::{agent_args, check_request, FakeBackend, Session, TestAgent};
use kensa_types::resources::asset::AssetBuild;
use kensa_types::resources::check::Check;
use kensa_types::resources::event::Event;

fn check_of(event: &Event) -> &Check {
    event.check.as_ref().expect("a check result")
}

/// The next `count` check results, by check name (concurrent checks finish in any order).
async fn results(session: &mut Session, count: usize) -> HashMap<String, Check> {
    let mut by_name = HashMap::new();
    while by_name.len() < count {
        let event = session.next_event().await;
        session.ack(&event).await;
        let check = check_of(&event).clone();
        by_name.insert(check.metadata.name.clone(), check);
    }
    by_name
}

#[tokio::test]
async fn a_check_runs_with_its_asset_and_the_cache_serves_later_requests_and_restarts() {
    let server = AssetServer::start().await;
    let archive = script_archive("hello-asset", "echo \"hello from asset $1\"");
    let sha512 = sha512_hex(&archive);
    let url = server.serve("hello.tar.gz", archive);
    let mut hello = asset("acme/hello", &url, &sha512);
    hello.headers = BTreeMap::from([
        ("Authorization".to_owned(), "Bearer {{ .name }}".to_owned()),
        ("X-Multi".to_owned(), "a, b".to_owned()),
    ]);

    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let config = agent_args(&[&backend.url], cache.path()).resolve().unwrap();
    let agent = TestAgent::start(config.clone()).await;
    let mut session = backend.accept_ready().await;

    let request = |round: &str, command: &str| {
        let mut request = check_request("hello", command, round);
        request.config.runtime_assets = vec!["acme/hello".into()];
        request.assets = vec![hello.clone()];
        request
    };
    session
        .send_check(request(
            "r1",
            "hello-asset world; echo \"$ACME_HELLO_PATH\"",
        ))
        .await;
    let check = results(&mut session, 1).await.remove("hello").unwrap();
    let install_dir = cache.path().join("assets").join(&sha512);
    assert_eq!(
        (check.status, check.output.as_str()),
        (
            0,
            format!("hello from asset world\n{}\n", install_dir.display()).as_str()
        ),
        "the asset's bin/ is on PATH and <NAME>_PATH is its directory"
    );
    assert!(install_dir.join("bin/hello-asset").is_file());
    let headers = server.request_headers();
    assert_eq!(
        headers[0]["authorization"], "Bearer test-agent",
        "tokens in headers"
    );
    let multi: Vec<_> = headers[0].get_all("x-multi").iter().collect();
    assert_eq!(
        multi,
        ["a", "b"],
        "a comma-separated value is several values"
    );

    // The assetPath token, and the second request uses the cache.
    session
        .send_check(request(
            "r2",
            "\"${{ assetPath \"acme/hello\" }}/bin/hello-asset\" again",
        ))
        .await;
    let check = results(&mut session, 1).await.remove("hello").unwrap();
    assert_eq!(
        (check.status, check.output.as_str()),
        (0, "hello from asset again\n")
    );
    assert_eq!(server.hits("hello.tar.gz"), 1, "installed once");

    // A restarted agent on the same cache-dir does not download it again either.
    drop(session);
    agent.stop().await;
    let agent = TestAgent::start(config).await;
    let mut session = backend.accept_ready().await;
    session
        .send_check(request("r3", "hello-asset restarted"))
        .await;
    // (The outbox may re-send a result whose ack the stopped agent did not process.)
    let check = loop {
        let check = results(&mut session, 1).await.remove("hello").unwrap();
        if check.round == "r3" {
            break check;
        }
    };
    assert_eq!(
        (check.status, check.output.as_str()),
        (0, "hello from asset restarted\n")
    );
    assert_eq!(
        server.hits("hello.tar.gz"),
        1,
        "the cache survives restarts"
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_bad_asset_fails_only_its_check_names_the_reason_and_is_retried() {
    let server = AssetServer::start().await;
    let good = script_archive("tool", "echo tool ok");
    let good_sha512 = sha512_hex(&good);
    // At first the server has something else at the URL.
    let url = server.serve("tool.tar.gz", script_archive("tool", "echo tampered"));

    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let agent =
        TestAgent::start(agent_args(&[&backend.url], cache.path()).resolve().unwrap()).await;
    let mut session = backend.accept_ready().await;

    let with_asset = |name: &str, asset: kensa_types::resources::asset::Asset, round: &str| {
        let mut request = check_request(name, "tool", round);
        request.config.runtime_assets = vec![asset.metadata.name.clone()];
        request.assets = vec![asset];
        request
    };
    session
        .send_check(with_asset(
            "uses-tool",
            asset("acme/tool", &url, &good_sha512),
            "r1",
        ))
        .await;
    let missing = asset("acme/missing", &server.url("missing.tar.gz"), &good_sha512);
    session
        .send_check(with_asset("uses-missing", missing, "r1"))
        .await;
    // An asset the backend could not resolve (it does not exist): said so, not "not found".
    let mut ghost = check_request("uses-ghost", "ghost-tool", "r1");
    ghost.config.runtime_assets = vec!["acme/ghost".into()];
    session.send_check(ghost).await;
    session
        .send_check(check_request("plain", "echo fine", "r1"))
        .await;

    let results1 = results(&mut session, 4).await;
    let tool = &results1["uses-tool"];
    assert_eq!(tool.status, 3);
    assert!(
        tool.output
            .starts_with("error getting assets for check: asset \"acme/tool\": sha512 mismatch")
            && tool.output.contains(&good_sha512),
        "{:?}",
        tool.output
    );
    assert_eq!(
        tool.command, "tool",
        "the failure carries the check's command"
    );
    let missing = &results1["uses-missing"];
    assert_eq!(missing.status, 3);
    assert!(
        missing.output.contains("asset \"acme/missing\"") && missing.output.contains("HTTP 404"),
        "{:?}",
        missing.output
    );
    let ghost = &results1["uses-ghost"];
    assert_eq!(
        (ghost.status, ghost.output.as_str()),
        (
            3,
            "error getting assets for check: asset \"acme/ghost\" does not exist"
        )
    );
    let plain = &results1["plain"];
    assert_eq!(
        (plain.status, plain.output.as_str()),
        (0, "fine\n"),
        "other checks unaffected"
    );
    assert!(
        !cache.path().join("assets").join(&good_sha512).exists(),
        "nothing unpacked from a download that failed verification"
    );

    // Fixed on the server: the next request downloads again and runs.
    server.serve("tool.tar.gz", good);
    session
        .send_check(with_asset(
            "uses-tool",
            asset("acme/tool", &url, &good_sha512),
            "r2",
        ))
        .await;
    let tool = results(&mut session, 1).await.remove("uses-tool").unwrap();
    assert_eq!((tool.status, tool.output.as_str()), (0, "tool ok\n"));
    assert_eq!(
        server.hits("tool.tar.gz"),
        2,
        "the failure was not remembered"
    );
    agent.stop().await;
}

#[tokio::test]
async fn builds_are_chosen_by_their_filters_against_the_entity() {
    let server = AssetServer::start().await;
    let plan9 = script_archive("which-build", "echo plan9 build");
    let linux = script_archive("which-build", "echo linux build");
    let build = |path: &str, archive: Vec<u8>, filters: &[&str]| AssetBuild {
        sha512: sha512_hex(&archive),
        url: server.serve(path, archive),
        filters: filters.iter().map(|filter| filter.to_string()).collect(),
        ..AssetBuild::default()
    };
    let mut multi = asset("acme/multi", "", "");
    multi.builds = vec![
        build("plan9.tar.gz", plan9, &["entity.system.os == 'plan9'"]),
        build(
            "linux.tar.gz",
            linux,
            &[
                "entity.system.os == 'linux'",
                "entity.name === 'test-agent'",
            ],
        ),
    ];
    let mut broken = asset("acme/broken", "", "");
    broken.builds = vec![build(
        "broken.tar.gz",
        script_archive("x", "true"),
        &["entity.system.nothing.here == 1"],
    )];

    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let agent =
        TestAgent::start(agent_args(&[&backend.url], cache.path()).resolve().unwrap()).await;
    let mut session = backend.accept_ready().await;
    let mut request = check_request("multi", "which-build", "r1");
    request.assets = vec![multi];
    session.send_check(request).await;
    let mut request = check_request("broken", "x", "r1");
    request.assets = vec![broken];
    session.send_check(request).await;

    let results = results(&mut session, 2).await;
    let multi = &results["multi"];
    assert_eq!((multi.status, multi.output.as_str()), (0, "linux build\n"));
    assert_eq!(
        server.hits("plan9.tar.gz"),
        0,
        "a build whose filters fail is not fetched"
    );
    let broken = &results["broken"];
    assert_eq!(broken.status, 3);
    assert!(
        broken
            .output
            .contains("asset \"acme/broken\": builds[0]: filter")
            && broken.output.contains("entity.system.nothing.here"),
        "a filter error names the asset, the build and the filter: {:?}",
        broken.output
    );
    assert_eq!(server.hits("broken.tar.gz"), 0);
    agent.stop().await;
}

#[tokio::test]
async fn concurrent_requests_for_one_asset_download_it_once() {
    let server = AssetServer::start().await;
    let archive = script_archive("shared", "echo shared $1");
    let shared = asset(
        "acme/shared",
        &server.serve("shared.tar.gz", archive.clone()),
        &sha512_hex(&archive),
    );
    server.set_delay(Duration::from_millis(300));

    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let agent =
        TestAgent::start(agent_args(&[&backend.url], cache.path()).resolve().unwrap()).await;
    let mut session = backend.accept_ready().await;
    for name in ["one", "two", "three"] {
        let mut request = check_request(name, &format!("shared {name}"), "r1");
        request.assets = vec![shared.clone()];
        session.send_check(request).await;
    }
    let results = results(&mut session, 3).await;
    for name in ["one", "two", "three"] {
        assert_eq!(
            (results[name].status, results[name].output.clone()),
            (0, format!("shared {name}\n"))
        );
    }
    assert_eq!(server.hits("shared.tar.gz"), 1);
    agent.stop().await;
}

#[tokio::test]
async fn with_disable_assets_a_check_needing_assets_fails_saying_so() {
    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut args = agent_args(&[&backend.url], cache.path());
    args.disable_assets = Some(true);
    let agent = TestAgent::start(args.resolve().unwrap()).await;
    let mut session = backend.accept_ready().await;
    let mut request = check_request("needs-asset", "true", "r1");
    request.assets = vec![asset(
        "acme/x",
        "http://127.0.0.1:9/x.tar.gz",
        &"a".repeat(128),
    )];
    session.send_check(request).await;
    let check = results(&mut session, 1)
        .await
        .remove("needs-asset")
        .unwrap();
    assert_eq!(check.status, 3);
    assert_eq!(
        check.output,
        "check requested assets, but they are disabled on this agent"
    );
    assert!(!cache.path().join("assets").exists());
    agent.stop().await;
}

#[tokio::test]
async fn https_downloads_trust_the_agents_trusted_ca() {
    let (ca_pem, tls) = ca_and_server();
    let server = AssetServer::start_tls(tls).await;
    let archive = script_archive("secure", "echo secure ok");
    let secure = asset(
        "acme/secure",
        &server.serve("secure.tar.gz", archive.clone()),
        &sha512_hex(&archive),
    );
    let cache = tempfile::tempdir().unwrap();
    let ca_file = cache.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();

    for trusted in [false, true] {
        let mut backend = FakeBackend::start().await;
        let agent_cache = tempfile::tempdir().unwrap();
        let mut args = agent_args(&[&backend.url], agent_cache.path());
        args.trusted_ca_file = trusted.then(|| ca_file.clone());
        let agent = TestAgent::start(args.resolve().unwrap()).await;
        let mut session = backend.accept_ready().await;
        let mut request = check_request("secure", "secure", "r1");
        request.assets = vec![secure.clone()];
        session.send_check(request).await;
        let check = results(&mut session, 1).await.remove("secure").unwrap();
        if trusted {
            assert_eq!((check.status, check.output.as_str()), (0, "secure ok\n"));
        } else {
            assert_eq!(check.status, 3);
            assert!(
                check
                    .output
                    .contains("asset \"acme/secure\": GET https://localhost:")
                    && check.output.to_lowercase().contains("certificate"),
                "an untrusted certificate is the reason: {:?}",
                check.output
            );
        }
        agent.stop().await;
    }
}
