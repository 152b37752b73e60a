//! Event history with several backends on one PostgreSQL store: results of one (entity, check)
//! that arrive through different backends — an agent that moves between backends, API posts
//! through a load balancer — all end up in the event's history, none overwritten by a backend
//! that remembered an older state.
//!
//! Two in-process backends share a fresh database; without KENSA_TEST_POSTGRES_URL the tests
//! say they were skipped.

mod common;

use std::time::Duration;

use common::fake_agent::FakeAgent;
use common::{expect, Client};
use kensa_backend::config::StoreLocation;
use kensa_backend::testing::TestServer;
use serde_json::{json, Value};

struct Pair {
    a: TestServer,
    b: TestServer,
    _database: kensa_store::testing::TempDatabaseGuard,
    _dirs: [tempfile::TempDir; 2],
}

async fn two_backends() -> Option<Pair> {
    let (store, database) = kensa_store::testing::temp_postgres().await?;
    drop(store);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut servers = Vec::new();
    for dir in &dirs {
        let location = StoreLocation::Postgres(database.url());
        let server = TestServer::start_with(location, dir.path().to_path_buf(), |_| {})
            .await
            .expect("backend starts");
        servers.push(server);
    }
    let b = servers.pop().unwrap();
    let a = servers.pop().unwrap();
    Some(Pair {
        a,
        b,
        _database: database,
        _dirs: dirs,
    })
}

async fn admin(server: &TestServer) -> Client {
    Client::login(&server.url, &server.admin_username, &server.admin_password).await
}

fn history_statuses(event: &Value) -> Vec<u64> {
    event["check"]["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|entry| entry["status"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn an_agent_moving_between_backends_keeps_its_whole_history() {
    let Some(pair) = two_backends().await else {
        return; // temp_postgres printed the skip notice
    };
    // A, A, B, A, B, A: each backend sees the agent again after the other one wrote its event.
    let visits: [(&TestServer, u32); 6] = [
        (&pair.a, 0),
        (&pair.a, 1),
        (&pair.b, 2),
        (&pair.a, 1),
        (&pair.b, 0),
        (&pair.a, 2),
    ];
    for (backend, status) in visits {
        let mut agent = FakeAgent::connect(&backend.agent_url, "mover", &["linux"]).await;
        let id = agent
            .result("disk", status, &format!("status {status}"))
            .await;
        assert!(agent.acked(id).await, "result {status} acknowledged");
        drop(agent);
        // Let the backend notice the session ended before the agent shows up elsewhere.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for backend in [&pair.a, &pair.b] {
        let api = admin(backend).await;
        let event = expect(api.get("namespaces/default/events/mover/disk").await, 200).body;
        assert_eq!(
            history_statuses(&event),
            vec![0, 1, 2, 1, 0, 2],
            "every result is in the history, in order, read through {}",
            backend.url
        );
        assert_eq!(event["check"]["output"], "status 2");
    }
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}

#[tokio::test]
async fn concurrent_results_through_two_backends_are_all_counted() {
    let Some(pair) = two_backends().await else {
        return;
    };
    const PER_BACKEND: usize = 15;
    let clients = [admin(&pair.a).await, admin(&pair.b).await];
    // A proxy entity's check reported through both backends at once, as agents behind a load
    // balancer (or API clients) do: every result must count, none overwrite another.
    let body = json!({"check": {"status": 2, "interval": 60, "output": "replication lag"}});
    let body = &body;
    let posts = clients.iter().flat_map(|client| {
        (0..PER_BACKEND).map(move |_| async move {
            client
                .put("namespaces/default/events/shared-db/replication", body)
                .await
        })
    });
    for answer in futures::future::join_all(posts).await {
        assert!(
            answer.status.is_success(),
            "event accepted: {} {}",
            answer.status,
            answer.text
        );
    }
    let event = expect(
        clients[0]
            .get("namespaces/default/events/shared-db/replication")
            .await,
        200,
    )
    .body;
    assert_eq!(
        event["check"]["occurrences"],
        json!(2 * PER_BACKEND),
        "each of the {} results counted once: {event}",
        2 * PER_BACKEND
    );
    assert_eq!(history_statuses(&event).len(), 21, "history is full");
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}
