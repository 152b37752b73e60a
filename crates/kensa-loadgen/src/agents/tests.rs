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
