//! The agent protocol against a real backend, with a scripted agent (see
//! `common/fake_agent.rs`): handshake rules, keepalives, acknowledged and deduplicated
//! events, bad frames, and keepalive failure timing — including across a backend restart.

mod common;

use std::time::{Duration, Instant};

use common::fake_agent::{handshake_status, FakeAgent};
use common::{expect, poll_until, Client};
use kensa_backend::config::StoreLocation;
use kensa_backend::testing::TestServer;
use kensa_proto::BackendMessage;
use serde_json::{json, Value};

async fn admin(server: &TestServer) -> Client {
    Client::login(&server.url, &server.admin_username, &server.admin_password).await
}

#[tokio::test]
async fn handshake_checks_credentials_rbac_namespace_and_name() {
    let server = TestServer::start().await.unwrap();
    let client = admin(&server).await;
    // A user with no role binding may not create events.
    expect(
        client
            .post(
                "users",
                &json!({"username": "nobody", "password": "P@ssw0rd!12", "groups": []}),
            )
            .await,
        201,
    );
    let url = &server.agent_url;
    let cases = [
        ("web-1", "default", "agent", "P@ssw0rd!", 101),
        ("web-1", "default", "agent", "wrong", 401),
        ("web-1", "default", "ghost", "P@ssw0rd!", 401),
        ("web-1", "nowhere", "agent", "P@ssw0rd!", 404),
        ("web-1", "default", "nobody", "P@ssw0rd!12", 403),
        ("bad name!", "default", "agent", "P@ssw0rd!", 400),
    ];
    for (name, namespace, user, password, status) in cases {
        assert_eq!(
            handshake_status(url, name, namespace, user, password).await,
            status,
            "{name} in {namespace} as {user}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn keepalive_registers_the_agent_and_results_are_acked_stored_and_deduplicated() {
    let server = TestServer::start().await.unwrap();
    let client = admin(&server).await;
    let mut agent = FakeAgent::connect(&server.agent_url, "web-1", &["linux"]).await;
    // No stored entity yet: the backend says so first.
    match agent.next(Duration::from_secs(5)).await {
        Some(BackendMessage::EntityConfig(None)) => {}
        other => panic!("expected an empty entity_config, got {other:?}"),
    }
    agent.keepalive(120, 180).await;
    let (entity, _) = poll_until(
        &client,
        "namespaces/default/entities/web-1",
        Duration::from_secs(5),
        |_| true,
    )
    .await
    .expect("the keepalive registers the entity");
    assert_eq!(entity["entity_class"], "agent");
    assert!(entity["subscriptions"]
        .as_array()
        .unwrap()
        .contains(&json!("entity:web-1")));
    assert!(entity["last_seen"].as_i64().unwrap() > 0);
    let (keepalive, _) = poll_until(
        &client,
        "namespaces/default/events/web-1/keepalive",
        Duration::from_secs(5),
        |_| true,
    )
    .await
    .expect("the keepalive event is stored");
    assert_eq!(keepalive["check"]["status"], 0);
    assert_eq!(keepalive["check"]["timeout"], 120);

    let id = agent.result("disk", 2, "DISK CRITICAL").await;
    assert!(agent.acked(id).await, "the result is acknowledged");
    let event = expect(
        client.get("namespaces/default/events/web-1/disk").await,
        200,
    )
    .body;
    assert_eq!(event["check"]["status"], 2);
    assert_eq!(event["check"]["occurrences"], 1);

    // Re-sending the same event (as after a lost ack) is acknowledged but not counted twice.
    agent.result_with_id(id, "disk", 2, "DISK CRITICAL").await;
    assert!(agent.acked(id).await);
    let second = agent.result("disk", 2, "DISK CRITICAL").await;
    assert!(agent.acked(second).await);
    let event = expect(
        client.get("namespaces/default/events/web-1/disk").await,
        200,
    )
    .body;
    assert_eq!(event["check"]["occurrences"], 2, "{event}");
    assert_eq!(event["check"]["history"].as_array().unwrap().len(), 2);

    // An invalid event is refused through its acknowledgement, the session stays up.
    let bad = uuid::Uuid::new_v4();
    agent.result_with_id(bad, "no spaces allowed", 0, "").await;
    match agent.next(Duration::from_secs(5)).await {
        Some(BackendMessage::Ack(ack)) => {
            assert_eq!(ack.rejected.len(), 1);
            assert_eq!(ack.rejected[0].id, bad);
            assert!(
                ack.rejected[0].reason.contains("name"),
                "{:?}",
                ack.rejected
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let after = agent.result("disk", 0, "DISK OK").await;
    assert!(agent.acked(after).await);
    server.shutdown().await;
}

#[tokio::test]
async fn a_malformed_frame_closes_only_that_session() {
    let server = TestServer::start().await.unwrap();
    let mut bad = FakeAgent::connect(&server.agent_url, "bad", &["linux"]).await;
    let mut good = FakeAgent::connect(&server.agent_url, "good", &["linux"]).await;
    bad.send_raw(b"this is not a frame".to_vec()).await;
    assert!(bad.closed_within(Duration::from_secs(5)).await);
    let mut oversized = FakeAgent::connect(&server.agent_url, "big", &["linux"]).await;
    // The backend may reset the connection before the frame is even fully written.
    let sent = oversized
        .try_send_raw(vec![b'x'; kensa_proto::MAX_FRAME_BYTES + 10])
        .await;
    assert!(sent.is_err() || oversized.closed_within(Duration::from_secs(5)).await);
    let id = good.result("disk", 0, "ok").await;
    assert!(good.acked(id).await, "the other session is unaffected");
    server.shutdown().await;
}

fn keepalive_status(body: &Value) -> u64 {
    body["check"]["status"].as_u64().unwrap_or(99)
}

#[tokio::test]
async fn a_silent_agent_raises_warning_then_critical_at_their_deadlines() {
    let server = TestServer::start().await.unwrap();
    let client = admin(&server).await;
    let mut agent = FakeAgent::connect(&server.agent_url, "db-1", &["db"]).await;
    // (Sensu's minimum critical timeout is 5 s.)
    agent.keepalive(2, 5).await;
    let sent = Instant::now();
    drop(agent); // killed: no more keepalives
    let path = "namespaces/default/events/db-1/keepalive";
    let (warning, warned_at) = poll_until(&client, path, Duration::from_secs(10), |e| {
        keepalive_status(e) == 1
    })
    .await
    .expect("warning raised");
    let warned_after = warned_at - sent;
    assert!(
        warned_after >= Duration::from_millis(1900) && warned_after < Duration::from_secs(3),
        "warning after {warned_after:?}"
    );
    assert!(warning["check"]["output"]
        .as_str()
        .unwrap()
        .starts_with("No keepalive sent from db-1 for"));
    let (_, critical_at) = poll_until(&client, path, Duration::from_secs(10), |e| {
        keepalive_status(e) == 2
    })
    .await
    .expect("critical raised");
    let critical_after = critical_at - sent;
    assert!(
        critical_after >= Duration::from_millis(4900) && critical_after < Duration::from_secs(6),
        "critical after {critical_after:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_result_resent_to_a_restarted_backend_is_stored_once() {
    // The backend that stored a result and whose ack was lost is not the one the agent re-sends
    // it to (here: the same backend after a restart, so nothing of it is in memory; in a
    // cluster, another backend). The stored event's id says it is already there.
    let dir = tempfile::tempdir().unwrap();
    let location = StoreLocation::Sqlite(dir.path().join("kensa.db"));
    let server = TestServer::start_with(location.clone(), dir.path().to_path_buf(), |_| {})
        .await
        .unwrap();
    let mut agent = FakeAgent::connect(&server.agent_url, "web-1", &["linux"]).await;
    agent.keepalive(120, 180).await;
    let id = agent.result("disk", 2, "DISK CRITICAL").await;
    assert!(agent.acked(id).await, "the result is acknowledged");
    drop(agent);
    server.shutdown().await;

    let server = TestServer::start_with(location, dir.path().to_path_buf(), |_| {})
        .await
        .unwrap();
    let mut agent = FakeAgent::connect(&server.agent_url, "web-1", &["linux"]).await;
    agent.result_with_id(id, "disk", 2, "DISK CRITICAL").await;
    assert!(
        agent.acked(id).await,
        "the re-sent copy is acknowledged too"
    );
    let client = admin(&server).await;
    let event = expect(
        client.get("namespaces/default/events/web-1/disk").await,
        200,
    )
    .body;
    assert_eq!(event["check"]["occurrences"], 1, "{event}");
    assert_eq!(event["check"]["history"].as_array().unwrap().len(), 1);
    // The next result is a new one.
    let next = agent.result("disk", 2, "DISK CRITICAL").await;
    assert!(agent.acked(next).await);
    let event = expect(
        client.get("namespaces/default/events/web-1/disk").await,
        200,
    )
    .body;
    assert_eq!(event["check"]["occurrences"], 2, "{event}");
    server.shutdown().await;
}

#[tokio::test]
async fn liveness_survives_a_backend_restart_without_false_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let location = StoreLocation::Sqlite(dir.path().join("kensa.db"));
    let server = TestServer::start_with(location.clone(), dir.path().to_path_buf(), |_| {})
        .await
        .unwrap();
    let mut dying = FakeAgent::connect(&server.agent_url, "dying", &["linux"]).await;
    let mut healthy = FakeAgent::connect(&server.agent_url, "healthy", &["linux"]).await;
    dying.keepalive(3, 0).await;
    healthy.keepalive(3, 0).await;
    let client = admin(&server).await;
    for name in ["dying", "healthy"] {
        poll_until(
            &client,
            &format!("namespaces/default/events/{name}/keepalive"),
            Duration::from_secs(5),
            |_| true,
        )
        .await
        .expect("keepalive stored");
    }
    drop(dying);
    drop(healthy);
    server.shutdown().await;
    // Both deadlines pass while the backend is down.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let server = TestServer::start_with(location, dir.path().to_path_buf(), |_| {})
        .await
        .unwrap();
    let started = Instant::now();
    // The healthy agent reconnects at once (before the test's own login, whose password
    // hashing can take a while on a busy machine): well within the warning timeout.
    let mut healthy = FakeAgent::connect(&server.agent_url, "healthy", &["linux"]).await;
    let keep_alive = tokio::spawn(async move {
        loop {
            healthy.keepalive(3, 0).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let client = admin(&server).await;
    let (_, alerted_at) = poll_until(
        &client,
        "namespaces/default/events/dying/keepalive",
        Duration::from_secs(10),
        |e| keepalive_status(e) == 1,
    )
    .await
    .expect("the agent that died while the backend was down still alerts");
    assert!(
        alerted_at - started >= Duration::from_millis(2500),
        "a restarted backend gives agents one warning timeout to reconnect"
    );
    let healthy_event = expect(
        client
            .get("namespaces/default/events/healthy/keepalive")
            .await,
        200,
    )
    .body;
    let statuses: Vec<u64> = healthy_event["check"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_u64().unwrap())
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 0),
        "the healthy agent never alerted: {statuses:?}"
    );
    keep_alive.abort();
    server.shutdown().await;
}
