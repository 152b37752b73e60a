//! End-to-end tests of the REST API against a real backend (embedded SQLite store, real HTTP):
//! resource CRUD with Sensu's status codes and defaults, bad input, pagination and selectors,
//! concurrency on one resource, namespaces, silences, events and proxy entities.

mod common;

use common::{expect, Client};
use kensa_backend::testing::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

async fn admin(server: &TestServer) -> Client {
    Client::login(&server.url, &server.admin_username, &server.admin_password).await
}

fn check(name: &str) -> Value {
    json!({"command": "check_load -w 1 -c 2", "interval": 60, "subscriptions": ["linux"], "publish": true, "metadata": {"name": name}})
}

#[tokio::test]
async fn check_crud_with_sensu_defaults_and_status_codes() {
    let server = TestServer::start().await.unwrap();
    let api = admin(&server).await;

    expect(
        api.put("namespaces/default/checks/cpu", &check("cpu"))
            .await,
        201,
    );
    let got = expect(api.get("namespaces/default/checks/cpu").await, 200);
    // Always-present fields come back with Sensu's defaults; the caller is recorded.
    assert_eq!(got.body["timeout"], 0);
    assert_eq!(got.body["handlers"], json!([]));
    assert_eq!(got.body["runtime_assets"], Value::Null);
    assert_eq!(got.body["round_robin"], false);
    assert_eq!(
        got.body["metadata"],
        json!({"name": "cpu", "namespace": "default", "created_by": "admin"})
    );
    assert!(got.headers.contains_key("etag"));

    // POST of an existing name is a conflict; of a new one a 201.
    expect(
        api.post("namespaces/default/checks", &check("cpu")).await,
        409,
    );
    expect(
        api.post("namespaces/default/checks", &check("mem")).await,
        201,
    );

    let list = expect(api.get("namespaces/default/checks").await, 200);
    let names: Vec<&str> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["cpu", "mem"]);

    // PATCH merges and returns the result; a stale If-Match is refused with 412.
    let etag = got.headers["etag"].to_str().unwrap().to_owned();
    let patched = expect(
        api.call_with(
            Method::PATCH,
            "namespaces/default/checks/cpu",
            Some(&json!({"interval": 30})),
            &[
                ("Content-Type", "application/merge-patch+json"),
                ("If-Match", &etag),
            ],
        )
        .await,
        200,
    );
    assert_eq!(patched.body["interval"], 30);
    assert_eq!(patched.body["command"], "check_load -w 1 -c 2");
    let stale = api
        .call_with(
            Method::PATCH,
            "namespaces/default/checks/cpu",
            Some(&json!({"interval": 10})),
            &[("If-Match", &etag)],
        )
        .await;
    expect(stale, 412);
    let json_patch = api
        .call_with(
            Method::PATCH,
            "namespaces/default/checks/cpu",
            Some(&json!([])),
            &[("Content-Type", "application/json-patch+json")],
        )
        .await;
    assert!(expect(json_patch, 400).body["message"]
        .as_str()
        .unwrap()
        .contains("JSON Patch"));

    expect(api.delete("namespaces/default/checks/cpu").await, 204);
    expect(api.get("namespaces/default/checks/cpu").await, 404);
    expect(api.delete("namespaces/default/checks/cpu").await, 404);

    // Hook sub-resources append and remove hook names.
    let hooks = json!({"critical": ["dump-ps", "dump-netstat"]});
    expect(
        api.put("namespaces/default/checks/mem/hooks/critical", &hooks)
            .await,
        201,
    );
    let with_hooks = expect(api.get("namespaces/default/checks/mem").await, 200).body;
    assert_eq!(
        with_hooks["check_hooks"],
        json!([{"critical": ["dump-ps", "dump-netstat"]}])
    );
    expect(
        api.delete("namespaces/default/checks/mem/hooks/critical/hook/dump-ps")
            .await,
        204,
    );
    let fewer = expect(api.get("namespaces/default/checks/mem").await, 200).body;
    assert_eq!(
        fewer["check_hooks"],
        json!([{"critical": ["dump-netstat"]}])
    );

    // All-namespace listing.
    let all = expect(api.get("checks").await, 200);
    assert_eq!(all.body.as_array().unwrap().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_nothing_written() {
    let server = TestServer::start_configured(|c| c.api_request_limit = 4096)
        .await
        .unwrap();
    let api = admin(&server).await;
    // (path, body, status, text the message must contain)
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "namespaces/default/checks/a",
            json!({"command": "x", "interval": "often", "metadata": {"name": "a"}}),
            400,
            "interval",
        ),
        (
            "namespaces/default/checks/a",
            json!({"command": "x", "metadata": {"name": "a"}}),
            400,
            "interval must be greater than 0",
        ),
        (
            "namespaces/default/checks/a",
            json!({"command": "x", "interval": 10, "cron": "* * * * *", "metadata": {"name": "a"}}),
            400,
            "either an interval or a cron",
        ),
        (
            "namespaces/default/checks/a",
            json!({"command": "x", "interval": 10, "metadata": {"name": "b"}}),
            400,
            "does not match the name of the URI",
        ),
        (
            "namespaces/default/checks/a",
            json!({"command": "x", "interval": 10, "metadata": {"name": "a", "namespace": "prod"}}),
            400,
            "does not match the namespace of the URI",
        ),
        (
            "namespaces/default/checks/bad%20name",
            json!({"command": "x", "interval": 10}),
            400,
            "special characters",
        ),
        (
            "namespaces/nowhere/checks/a",
            json!({"command": "x", "interval": 10}),
            404,
            "namespace \"nowhere\" does not exist",
        ),
        (
            "namespaces/default/handlers/h",
            json!({"type": "carrier-pigeon"}),
            400,
            "unknown handler type",
        ),
        (
            "namespaces/default/filters/f",
            json!({"action": "maybe", "expressions": ["true"]}),
            400,
            "action",
        ),
        ("namespaces/default/gizmos/g", json!({}), 404, "not found"),
        (
            "namespaces/default/filters/js",
            json!({"action": "allow", "expressions": ["event.check.occurrences == 1", "event.check.status = = 2"]}),
            400,
            "expressions[1]",
        ),
        (
            "namespaces/default/mutators/m",
            json!({"type": "javascript", "eval": "return {"}),
            400,
            "eval",
        ),
        (
            "namespaces/default/checks/big",
            json!({"command": "x".repeat(5000), "interval": 10}),
            413,
            "exceeds the limit",
        ),
    ];
    for (path, body, status, needle) in cases {
        let answer = api.put(path, &body).await;
        assert_eq!(answer.status.as_u16(), status, "{path}: {}", answer.text);
        let message = answer.body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{path}: {:?} lacks {needle:?}",
            answer.text
        );
    }
    let malformed = api
        .http
        .put(format!(
            "{}/api/core/v2/namespaces/default/checks/a",
            server.url
        ))
        .header("Authorization", api.auth.clone().unwrap())
        .body("{\"command\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status().as_u16(), 400);
    assert!(malformed.text().await.unwrap().contains("invalid JSON"));
    // None of it was written.
    let list = expect(api.get("namespaces/default/checks").await, 200);
    assert_eq!(list.body, json!([]));
    server.shutdown().await;
}

#[tokio::test]
async fn pagination_streams_every_item_once_in_order_and_selectors_filter() {
    let server = TestServer::start().await.unwrap();
    let api = admin(&server).await;
    for i in 0..25 {
        let mut body = check(&format!("c{i:02}"));
        body["metadata"]["labels"] = json!({"tier": if i % 5 == 0 { "gold" } else { "bronze" }});
        if i % 2 == 0 {
            body["subscriptions"] = json!(["linux", "db"]);
        }
        expect(
            api.put(&format!("namespaces/default/checks/c{i:02}"), &body)
                .await,
            201,
        );
    }
    let mut seen = Vec::new();
    let mut path = "namespaces/default/checks?limit=10".to_owned();
    let mut pages = 0;
    loop {
        let page = expect(api.get(&path).await, 200);
        pages += 1;
        seen.extend(
            page.body
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["metadata"]["name"].as_str().unwrap().to_owned()),
        );
        match page.headers.get("sensu-continue") {
            Some(token) => {
                path = format!(
                    "namespaces/default/checks?limit=10&continue={}",
                    token.to_str().unwrap()
                )
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("c{i:02}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);
    expect(
        api.get("namespaces/default/checks?continue=not-a-token")
            .await,
        400,
    );

    let gold = expect(
        api.get("namespaces/default/checks?labelSelector=tier%20%3D%3D%20gold")
            .await,
        200,
    );
    assert_eq!(gold.body.as_array().unwrap().len(), 5);
    let db = expect(
        api.get("namespaces/default/checks?fieldSelector=db%20in%20check.subscriptions")
            .await,
        200,
    );
    assert_eq!(db.body.as_array().unwrap().len(), 13);
    let both = expect(api.get("namespaces/default/checks?fieldSelector=db%20in%20check.subscriptions&labelSelector=tier%20%3D%3D%20gold&limit=2").await, 200);
    let names: Vec<&str> = both
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["c00", "c10"]);
    let bad = expect(
        api.get("namespaces/default/checks?fieldSelector=check.name%20%3D%3D")
            .await,
        400,
    );
    assert!(bad.text.contains("fieldSelector"));
    server.shutdown().await;
}

#[tokio::test]
async fn events_build_history_and_create_proxy_entities() {
    let server = TestServer::start().await.unwrap();
    let api = admin(&server).await;
    for status in [0, 2, 2] {
        let event = json!({"check": {"status": status, "output": format!("status {status}"), "interval": 60}});
        expect(
            api.put("namespaces/default/events/web1/http", &event).await,
            201,
        );
    }
    let event = expect(api.get("namespaces/default/events/web1/http").await, 200).body;
    assert_eq!(event["check"]["history"].as_array().unwrap().len(), 3);
    assert_eq!(event["check"]["occurrences"], 2);
    assert_eq!(event["check"]["state"], "failing");
    assert_eq!(event["entity"]["entity_class"], "proxy");

    let entity = expect(api.get("namespaces/default/entities/web1").await, 200).body;
    assert_eq!(entity["entity_class"], "proxy");
    assert_eq!(entity["subscriptions"], json!(["entity:web1"]));

    // Concurrent results for one entity+check never lose history.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let http = api.http.clone();
        let url = format!(
            "{}/api/core/v2/namespaces/default/events/web2/disk",
            server.url
        );
        let auth = api.auth.clone().unwrap();
        tasks.push(tokio::spawn(async move {
            let body = json!({"check": {"status": i % 3, "interval": 60, "executed": 1000 + i}});
            http.put(url)
                .header("Authorization", auth)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 201);
    }
    let event = expect(api.get("namespaces/default/events/web2/disk").await, 200).body;
    assert_eq!(event["check"]["history"].as_array().unwrap().len(), 10);

    let of_entity = expect(api.get("namespaces/default/events/web1").await, 200).body;
    assert_eq!(of_entity.as_array().unwrap().len(), 1);
    // Deleting an entity deletes its events.
    expect(api.delete("namespaces/default/entities/web1").await, 204);
    expect(api.get("namespaces/default/events/web1/http").await, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn entity_label_values_are_redacted_on_read_but_kept() {
    let server = TestServer::start().await.unwrap();
    let api = admin(&server).await;
    let entity = json!({"entity_class": "proxy", "metadata": {"name": "db1", "labels": {"password": "hunter2", "API_Key": "k-123", "role": "db"}}});
    let written = expect(
        api.put("namespaces/default/entities/db1", &entity).await,
        200,
    )
    .body;
    assert_eq!(written["metadata"]["labels"]["password"], "REDACTED");
    // A proxy entity keeps exactly the subscriptions it was given.
    assert_eq!(written["subscriptions"], Value::Null);
    let got = expect(api.get("namespaces/default/entities/db1").await, 200).body;
    assert_eq!(got["metadata"]["labels"]["role"], "db");
    assert_eq!(got["metadata"]["labels"]["password"], "REDACTED");
    assert_eq!(got["metadata"]["labels"]["API_Key"], "REDACTED");
    // The store keeps the real value (handlers and token substitution need it).
    let store = kensa_store::sqlite::SqliteStore::open(&server.state_dir.join("kensa.db"))
        .await
        .unwrap();
    use kensa_store::Store;
    let stored = store
        .get(&kensa_store::Key::new("entities", "default", "db1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.value["metadata"]["labels"]["password"], "hunter2");
    server.shutdown().await;
}

#[tokio::test]
async fn namespaces_and_silences() {
    let server = TestServer::start().await.unwrap();
    let api = admin(&server).await;
    expect(api.post("namespaces", &json!({"name": "prod"})).await, 201);
    expect(
        api.put("namespaces/prod/checks/cpu", &check("cpu")).await,
        201,
    );
    let refused = expect(api.delete("namespaces/prod").await, 409);
    assert!(refused.text.contains("not empty"));
    expect(api.delete("namespaces/prod/checks/cpu").await, 204);
    expect(api.delete("namespaces/prod").await, 204);

    let silence =
        json!({"subscription": "linux", "check": "cpu", "expire": 3600, "reason": "maintenance"});
    expect(api.post("namespaces/default/silenced", &silence).await, 201);
    let got = expect(api.get("namespaces/default/silenced/linux:cpu").await, 200).body;
    assert_eq!(got["creator"], "admin");
    assert!(got["begin"].as_i64().unwrap() > 0);
    assert_eq!(
        got["expire_at"].as_i64().unwrap(),
        got["begin"].as_i64().unwrap() + 3600
    );
    expect(api.post("namespaces/default/silenced", &silence).await, 409);
    let by_sub = expect(
        api.get("namespaces/default/silenced/subscriptions/linux")
            .await,
        200,
    )
    .body;
    assert_eq!(by_sub.as_array().unwrap().len(), 1);
    let expired = json!({"check": "old", "begin": 1000, "expire": 10});
    expect(api.post("namespaces/default/silenced", &expired).await, 201);
    expect(api.get("namespaces/default/silenced/*:old").await, 404);
    assert_eq!(
        expect(api.get("namespaces/default/silenced").await, 200)
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    server.shutdown().await;
}

#[tokio::test]
async fn public_endpoints() {
    let server = TestServer::start().await.unwrap();
    let anon = Client::anonymous(&server.url);
    let version = expect(anon.get("/version").await, 200).body;
    assert!(version["sensu_backend"].as_str().unwrap().starts_with('6'));
    expect(anon.get("/health").await, 200);
    expect(anon.get("/ready").await, 200);
    expect(anon.get("/nope").await, 404);
    let api = admin(&server).await;
    api.get("namespaces/default/checks").await;
    let metrics = expect(anon.get("/metrics").await, 200).text;
    assert!(metrics.contains("kensa_http_requests_total"), "{metrics}");
    assert!(metrics.contains("kensa_auth_logins_total 1"), "{metrics}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_api_behaves_the_same_on_postgres() {
    let Some((store, guard)) = kensa_store::testing::temp_postgres().await else {
        eprintln!("skipped: KENSA_TEST_POSTGRES_URL not set");
        return;
    };
    drop(store);
    let state_dir = tempfile::tempdir().unwrap();
    let location = kensa_backend::config::StoreLocation::Postgres(guard.url());
    let server = TestServer::start_with(location, state_dir.path().to_path_buf(), |_| {})
        .await
        .unwrap();
    let api = admin(&server).await;
    for i in 0..7 {
        expect(
            api.put(
                &format!("namespaces/default/checks/c{i}"),
                &check(&format!("c{i}")),
            )
            .await,
            201,
        );
    }
    let page = expect(api.get("namespaces/default/checks?limit=5").await, 200);
    assert_eq!(page.body.as_array().unwrap().len(), 5);
    let token = page.headers["sensu-continue"].to_str().unwrap().to_owned();
    let rest = expect(
        api.get(&format!(
            "namespaces/default/checks?limit=5&continue={token}"
        ))
        .await,
        200,
    );
    assert_eq!(rest.body.as_array().unwrap().len(), 2);
    expect(
        api.put(
            "namespaces/default/events/web1/http",
            &json!({"check": {"status": 2, "interval": 60}}),
        )
        .await,
        201,
    );
    expect(
        api.put(
            "namespaces/default/events/web1/http",
            &json!({"check": {"status": 2, "interval": 60}}),
        )
        .await,
        201,
    );
    let event = expect(api.get("namespaces/default/events/web1/http").await, 200).body;
    assert_eq!(event["check"]["occurrences"], 2);
    // A user created through this backend can log in at once (the view follows the store).
    expect(
        api.post(
            "users",
            &json!({"username": "pg-user", "password": "pg-user-pass"}),
        )
        .await,
        201,
    );
    Client::login(&server.url, "pg-user", "pg-user-pass").await;
    server.shutdown().await;
    guard.cleanup().await;
}
