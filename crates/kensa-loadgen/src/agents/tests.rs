use clap::Parser;
use kensa_backend::testing::TestServer;
use reqwest::Method;

use super::*;
use crate::client::ApiClient;

#[test]
fn status_mix_syntax() {
    let ok = |text: &str, expected: &[(u32, u64)]| {
        assert_eq!(
            text.parse::<StatusMix>(),
            Ok(StatusMix(expected.to_vec())),
            "{text}"
        );
    };
    ok("0:1", &[(0, 1)]);
    ok("0:90, 2:10", &[(0, 90), (2, 10)]);
    ok("2", &[(2, 1)]);
    ok("0:0,1:3", &[(1, 3)]);
    let err = |text: &str, expected: &str| {
        let err = text.parse::<StatusMix>().unwrap_err();
        assert!(
            err.contains(expected),
            "{text}: {err:?} should mention {expected:?}"
        );
    };
    err("", "no status");
    err("0:0", "no status");
    err("ok:1", "status \"ok\"");
    err("0:x", "weight \"x\"");
    err("0:1,0:2", "listed twice");
}

#[test]
fn status_mix_draws_by_weight() {
    let mix: StatusMix = "0:3,2:1".parse().unwrap();
    let drawn: Vec<usize> = (0..8).map(|roll| mix.pick(roll)).collect();
    assert_eq!(drawn, [0, 0, 0, 1, 0, 0, 0, 1]);
}

#[test]
fn outputs_are_padded_to_the_requested_size() {
    let mix: StatusMix = "0:1,2:1".parse().unwrap();
    for (bytes, expected) in [(0, None), (200, Some(200)), (1000, Some(1000))] {
        for (status, output) in output_lines(&mix, bytes) {
            match expected {
                Some(len) => assert_eq!(output.len(), len, "status {status}"),
                None => assert!(output.starts_with(["OK", "CRITICAL"][status as usize / 2])),
            }
        }
    }
}

/// `kensa-loadgen agents …` arguments, parsed as the command line would be.
fn args(agent_url: &str, extra: &[&str]) -> AgentsArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentsArgs,
    }
    let mut argv = vec!["agents", "--agent-url", agent_url];
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).args
}

/// A backend with an allow-all filter and a tcp handler `sink` pointing at a fresh sink.
async fn backend_with_sink() -> (TestServer, Sink, ApiClient) {
    let server = TestServer::start().await.unwrap();
    let sink = Sink::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let client = ApiClient::new(&server.url, "admin", "P@ssw0rd!", 2).unwrap();
    let resources = [
        (
            "filters/allow-all",
            json!({
                "metadata": {"name": "allow-all", "namespace": "default"},
                "action": "allow",
                "expressions": ["event.check.status >= 0"],
            }),
        ),
        (
            "handlers/sink",
            json!({
                "metadata": {"name": "sink", "namespace": "default"},
                "type": "tcp",
                "socket": {"host": "127.0.0.1", "port": sink.address().port()},
                "filters": ["allow-all"],
            }),
        ),
    ];
    for (path, body) in resources {
        let path = format!("/api/core/v2/namespaces/default/{path}");
        let exchange = client.send(Method::PUT, &path, Some(&body)).await.unwrap();
        assert!(
            exchange.status.is_success(),
            "PUT {path}: {}",
            exchange.status
        );
    }
    (server, sink, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_sent_is_acknowledged_stored_and_handled() {
    let (server, sink, client) = backend_with_sink().await;
    let args = args(
        &server.agent_url,
        &[
            "--agents",
            "3",
            "--checks",
            "4",
            "--window",
            "20",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--drain",
            "20",
            "--handlers",
            "sink",
            "--status-mix",
            "0:3,2:1",
        ],
    );
    let report = run_with_sink(args, Some(sink)).await.unwrap();

    assert_eq!(report["handshakes"]["succeeded"], 3, "{report}");
    assert_eq!(report["handshakes"]["failed"], 0, "{report}");
    let totals = &report["totals"];
    let sent = totals["sent"].as_u64().unwrap();
    assert!(sent > 0, "{totals}");
    assert_eq!(totals["acked"], sent, "{totals}");
    assert_eq!(totals["unacked_at_end"], 0, "{totals}");
    assert_eq!(totals["rejected"], 0, "{totals}");
    assert_eq!(totals["sessions_ended_early"], 0, "{totals}");
    assert_eq!(
        totals["handled"], sent,
        "every acked event reaches the sink: {totals}"
    );
    assert!(totals["keepalives_sent"].as_u64().unwrap() >= 3, "{totals}");
    let measure = &report["measure"];
    assert!(measure["acked_per_s"].as_f64().unwrap() > 0.0, "{measure}");
    assert!(
        measure["ack_latency"]["count"].as_u64().unwrap() > 0,
        "{measure}"
    );

    // The results are stored under the simulated agents' entities and checks.
    let path = "/api/core/v2/namespaces/default/events/loadgen-0002/loadgen-check-03";
    let exchange = client.send(Method::GET, path, None).await.unwrap();
    assert_eq!(exchange.status, reqwest::StatusCode::OK, "GET {path}");
    let event: Value = serde_json::from_slice(&exchange.body).unwrap();
    assert_eq!(event["check"]["handlers"], json!(["sink"]), "{event}");
    assert!(
        event["check"]["history"].as_array().unwrap().len() > 1,
        "{event}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_rate_is_not_exceeded() {
    let server = TestServer::start().await.unwrap();
    let args = args(
        &server.agent_url,
        &[
            "--agents",
            "2",
            "--rate",
            "40",
            "--duration",
            "2",
            "--warmup",
            "0.5",
        ],
    );
    let report = run(args).await.unwrap();
    let sent = report["totals"]["sent"].as_u64().unwrap();
    // 20 events/s per agent for 2 s, plus the one each agent sends at its start.
    assert!(
        (40..=82).contains(&sent),
        "sent {sent}: {}",
        report["totals"]
    );
    assert_eq!(report["totals"]["acked"], sent, "{}", report["totals"]);
    assert_eq!(report["measure"]["handled_per_s"], Value::Null);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_are_reported() {
    let server = TestServer::start().await.unwrap();
    let mut args = args(
        &server.agent_url,
        &["--agents", "2", "--duration", "1", "--warmup", "0"],
    );
    args.password = "wrong".into();
    let err = run(args).await.unwrap_err().to_string();
    assert!(err.contains("no agent could connect"), "{err}");
    assert!(err.contains("401"), "{err}");
    server.shutdown().await;
}

#[test]
fn each_agent_has_its_own_order_of_backends() {
    for (urls, first) in [(3, false), (3, true), (1, false), (1, true), (5, true)] {
        let orders: Vec<Vec<usize>> = (0..60).map(|i| url_order(i, urls, first)).collect();
        for order in &orders {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (0..urls).collect::<Vec<_>>(),
                "a permutation: {order:?}"
            );
            if first {
                assert_eq!(order[0], 0, "{order:?}");
            }
        }
        assert_eq!(url_order(7, urls, first), orders[7], "fixed per agent");
        if urls > 1 {
            // Agents spread: every backend comes first (or, with `first`, second) for some.
            let at = usize::from(first);
            for url in at..urls {
                assert!(
                    orders.iter().any(|o| o[at] == url),
                    "{urls} urls, first={first}: nobody has {url} at {at}"
                );
            }
        }
    }
}

/// A TCP proxy to `target`; aborting the returned task closes every connection through it
/// and the listener, as a killed backend process would.
async fn proxy(target: &str) -> (String, tokio::task::JoinHandle<()>) {
    let target = crate::sources::resolve(target).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            connections.spawn(async move {
                let mut outbound = TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_move_to_another_backend_when_theirs_goes_away() {
    let first = TestServer::start().await.unwrap();
    let second = TestServer::start().await.unwrap();
    // The first backend is reached through a proxy: an in-process server's sessions outlive its
    // shutdown, a killed process's do not.
    let (first_url, first_proxy) = proxy(&first.agent_url).await;
    let urls = format!("{first_url},{}", second.agent_url);
    let args = args(
        &urls,
        &[
            "--start-on-first-url",
            "--agents",
            "4",
            "--checks",
            "2",
            "--rate",
            "40",
            "--duration",
            "8",
            "--warmup",
            "0.5",
            "--drain",
            "20",
            "--retry-min",
            "0.1",
            "--retry-max",
            "0.5",
        ],
    );
    let run = tokio::spawn(run(args));
    // Once the four are connected (their keepalives are stored), sending starts at once.
    let client = ApiClient::new(&first.url, "admin", "P@ssw0rd!", 2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let exchange = client
            .send(Method::GET, "/api/core/v2/namespaces/default/events", None)
            .await
            .unwrap();
        let events: Vec<Value> = serde_json::from_slice(&exchange.body).unwrap();
        let keepalives = events
            .iter()
            .filter(|e| e["check"]["metadata"]["name"] == "keepalive")
            .count();
        if keepalives == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agents did not connect: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    first_proxy.abort();
    let report = run.await.unwrap().unwrap();

    assert_eq!(report["handshakes"]["succeeded"], 4, "{report}");
    let reconnects = &report["reconnects"];
    let storms = reconnects["storms"].as_array().unwrap();
    assert_eq!(storms.len(), 1, "{reconnects}");
    let storm = &storms[0];
    assert_eq!(storm["disconnects"], 4, "{storm}");
    assert_eq!(storm["disconnects_by_url"], json!([4, 0]), "{storm}");
    assert_eq!(storm["reconnects_by_url"], json!([0, 4]), "{storm}");
    assert!(
        storm["all_connected_again_after_s"].as_f64().is_some(),
        "{storm}"
    );
    assert_eq!(reconnects["downtime"]["count"], 4, "{reconnects}");
    let totals = &report["totals"];
    assert_eq!(totals["sessions_ended_early"], 4, "{totals}");
    // Everything sent was stored by one backend or the other in the end.
    assert_eq!(totals["unacked_at_end"], 0, "{totals}");
    assert!(totals["acked"].as_u64().unwrap() > 0, "{totals}");
    // The timeline shows every agent on the second backend once they moved (on a busy machine
    // that may be only in the last seconds of the run, so any second counts).
    let timeline = report["timeline"].as_array().unwrap();
    assert!(
        timeline
            .iter()
            .any(|second| second["connected_by_url"] == json!([0, 4])),
        "{timeline:?}"
    );
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_scheduled_checks_are_stored_and_timed() {
    let server = TestServer::start().await.unwrap();
    let client = ApiClient::new(&server.url, "admin", "P@ssw0rd!", 2).unwrap();
    let check = json!({
        "metadata": {"name": "scale-00", "namespace": "default"},
        "command": "true",
        "interval": 1,
        "publish": true,
        "subscriptions": ["loadgen-group-00"],
    });
    let path = "/api/core/v2/namespaces/default/checks/scale-00";
    let exchange = client.send(Method::PUT, path, Some(&check)).await.unwrap();
    assert!(
        exchange.status.is_success(),
        "PUT {path}: {}",
        exchange.status
    );
    let args = args(
        &server.agent_url,
        &[
            "--agents",
            "4",
            "--checks",
            "0",
            "--answer-requests",
            "--subscription-groups",
            "2",
            "--status-mix",
            "0:1,2:1",
            "--duration",
            "4",
            "--warmup",
            "1",
            "--backend-pid",
            &std::process::id().to_string(),
            "--series-interval",
            "0.5",
        ],
    );
    let report = run(args).await.unwrap();
    let totals = &report["totals"];
    // Agents 0 and 2 are in group 00 (the one with a check): one request per second each.
    assert!(
        totals["check_requests_answered"].as_u64().unwrap() >= 4,
        "{totals}"
    );
    assert_eq!(totals["acked"], totals["sent"], "{totals}");
    let dispatch = &report["measure"]["dispatch_latency_ms"];
    assert!(dispatch["count"].as_u64().unwrap() >= 2, "{dispatch}");
    assert_eq!(report["sources"]["spread"], true, "{}", report["sources"]);
    let series = &report["series"]["processes"][0];
    assert!(series["samples"].as_array().unwrap().len() >= 4, "{series}");
    assert!(series["measure"]["rss_trend_mib"].is_object(), "{series}");

    for (entity, stored) in [("loadgen-0000", true), ("loadgen-0001", false)] {
        let path = format!("/api/core/v2/namespaces/default/events/{entity}/scale-00");
        let exchange = client.send(Method::GET, &path, None).await.unwrap();
        assert_eq!(
            exchange.status.is_success(),
            stored,
            "GET {path}: {}",
            exchange.status
        );
        if stored {
            let event: Value = serde_json::from_slice(&exchange.body).unwrap();
            assert!(event["check"]["round"]
                .as_str()
                .unwrap()
                .starts_with("default/scale-00@"));
            let statuses: Vec<&Value> = event["check"]["history"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| &h["status"])
                .collect();
            assert!(statuses.len() >= 2, "{event}");
        }
    }
    server.shutdown().await;
}
