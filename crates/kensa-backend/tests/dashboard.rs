//! End-to-end tests of the dashboard against a real backend: the embedded page and its
//! headers, the `/dashboard/api/…` answers (counts, order, filters, pages, RBAC), live updates
//! over Server-Sent Events, and — in a real headless Chromium driven by
//! `tests/browser/run.mjs` — the whole user scenario: log in, see a failing event appear live,
//! filter, silence, resolve, log out, a round-robin check run by real agents with its last
//! rounds on the check page, and a `view` user who cannot act.
//!
//! The browser test needs Debian's `chromium` and `tests/browser/node_modules`
//! (`scripts/browser-setup.sh` installs both). Without them it prints "skipped" and passes,
//! unless `KENSA_BROWSER_TESTS` is set (CI), where missing tools are a failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::{expect, Answer, Client};
use kensa_agent::config::StartArgs;
use kensa_agent::Agent;
use kensa_backend::testing::TestServer;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const VIEWER: &str = "viewer";
const VIEWER_PASSWORD: &str = "viewer-pass-1";

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out).unwrap();
    out
}

async fn admin(server: &TestServer) -> Client {
    Client::login(
        &server.dashboard_url,
        &server.admin_username,
        &server.admin_password,
    )
    .await
}

/// Reports a check result through the API, as an agent or a script would.
async fn report(api: &Client, ns: &str, entity: &str, check: &str, status: u32, output: &str) {
    let now = kensa_backend::api::now_unix();
    report_at(api, ns, entity, check, status, output, now).await;
}

/// Reports a series of results, one a minute, the last one now.
async fn report_history(api: &Client, entity: &str, check: &str, statuses: &[u32], output: &str) {
    let now = kensa_backend::api::now_unix();
    for (i, status) in statuses.iter().enumerate() {
        let executed = now - 60 * (statuses.len() - 1 - i) as i64;
        report_at(api, "default", entity, check, *status, output, executed).await;
    }
}

async fn report_at(
    api: &Client,
    ns: &str,
    entity: &str,
    check: &str,
    status: u32,
    output: &str,
    executed: i64,
) {
    let event = json!({
        "entity": {
            "entity_class": "proxy",
            "subscriptions": ["linux"],
            "metadata": {"name": entity, "namespace": ns, "labels": {"region": if entity.ends_with('1') { "eu" } else { "us" }}},
        },
        "check": {
            "metadata": {"name": check, "namespace": ns},
            "status": status,
            "output": output,
            "interval": 60,
            "subscriptions": ["linux"],
            "executed": executed,
        },
        "timestamp": executed,
    });
    expect(
        api.put(&format!("namespaces/{ns}/events/{entity}/{check}"), &event)
            .await,
        201,
    );
}

/// A `view`-role user bound in `default` only.
async fn create_viewer(api: &Client) {
    expect(
        api.post(
            "users",
            &json!({"username": VIEWER, "password": VIEWER_PASSWORD, "groups": ["viewers"]}),
        )
        .await,
        201,
    );
    expect(
        api.put(
            "namespaces/default/rolebindings/viewers",
            &json!({
                "metadata": {"name": "viewers", "namespace": "default"},
                "role_ref": {"type": "ClusterRole", "name": "view"},
                "subjects": [{"type": "Group", "name": "viewers"}],
            }),
        )
        .await,
        201,
    );
}

fn keys(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["entity"].as_str().unwrap(),
                e["check"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn the_page_is_embedded_with_its_assets_and_locked_down() {
    let server = TestServer::start().await.unwrap();
    // Bytes as sent: no transparent decompression, whatever features reqwest was built with.
    let http = reqwest::Client::builder().no_gzip().build().unwrap();
    let page = http.get(&server.dashboard_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    assert!(page.headers().get("content-encoding").is_none());
    let html = page.text().await.unwrap();
    assert!(html.contains("<title>Kensa</title>"));
    // Every asset the page names is served from the binary, cacheable for good; nothing is
    // fetched from another origin.
    let mut assets = 0;
    let mut compressed = 0;
    for url in html.split('"').filter(|s| s.starts_with("/assets/")) {
        let answer = http
            .get(format!("{}{url}", server.dashboard_url))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{url}");
        assert_eq!(
            answer.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert!(answer.headers().get("content-encoding").is_none());
        let plain = answer.bytes().await.unwrap();
        assert!(!plain.is_empty());
        // Compressed for a browser that accepts gzip; the same bytes once inflated.
        let packed = http
            .get(format!("{}{url}", server.dashboard_url))
            .header("accept-encoding", "gzip, deflate, br")
            .send()
            .await
            .unwrap();
        assert_eq!(packed.status(), 200, "{url}");
        assert_eq!(packed.headers()["vary"], "accept-encoding", "{url}");
        if packed.headers().get("content-encoding").is_some() {
            assert_eq!(packed.headers()["content-encoding"], "gzip", "{url}");
            let bytes = packed.bytes().await.unwrap();
            assert!(bytes.len() < plain.len(), "{url}: compressed is smaller");
            assert_eq!(gunzip(&bytes), plain, "{url}");
            compressed += 1;
        }
        assets += 1;
    }
    assert_eq!(assets, 3, "app.js, app.css and the icon");
    assert!(compressed >= 2, "app.js and app.css are served gzipped");
    let packed_page = http
        .get(&server.dashboard_url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(packed_page.headers()["content-encoding"], "gzip");
    assert_eq!(
        String::from_utf8(gunzip(&packed_page.bytes().await.unwrap())).unwrap(),
        html
    );
    assert!(!html.contains("http://") && !html.contains("https://"));
    // The same origin serves the API: the page logs in and reads core/v2 there.
    let api = admin(&server).await;
    expect(api.get("namespaces").await, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn overview_counts_and_events_come_worst_first_with_filters_and_pages() {
    let server = TestServer::start().await.unwrap();
    let api = admin(&server).await;
    report(
        &api,
        "default",
        "web-1",
        "disk",
        2,
        "DISK CRITICAL /var 97%",
    )
    .await;
    report(&api, "default", "web-1", "load", 1, "LOAD WARNING 4.2").await;
    report(&api, "default", "web-2", "disk", 0, "DISK OK").await;
    report(&api, "default", "web-2", "ntp", 3, "NTP UNKNOWN").await;
    report(
        &api,
        "default",
        "db-1",
        "keepalive",
        2,
        "no keepalive for 300 s",
    )
    .await;
    report(
        &api,
        "default",
        "db-1",
        "disk",
        2,
        "DISK CRITICAL /data 99%",
    )
    .await;
    // A silence on db-1's disk moves it out of "critical".
    expect(
        api.post(
            "namespaces/default/silenced",
            &json!({"subscription": "entity:db-1", "check": "disk", "reason": "replacing the disk"}),
        )
        .await,
        201,
    );

    let overview = expect(
        api.get("/dashboard/api/overview?namespace=default").await,
        200,
    );
    assert_eq!(
        overview.body["counts"],
        json!({"critical": 2, "warning": 1, "unknown": 1, "ok": 1, "silenced": 1, "flapping": 0,
               "total": 6, "keepalive_failures": 1, "missed_rounds": 0})
    );
    // Worst first: keepalive failures lead the criticals.
    assert_eq!(
        keys(&overview.body["problems"]["items"]),
        vec!["db-1/keepalive", "web-1/disk", "web-1/load", "web-2/ntp"]
    );
    assert_eq!(overview.body["entities"]["total"], 3);
    assert!(overview.headers.contains_key("server-timing"));

    let cases: &[(&str, &[&str])] = &[
        (
            "",
            &[
                "db-1/keepalive",
                "web-1/disk",
                "web-1/load",
                "web-2/ntp",
                "db-1/disk",
                "web-2/disk",
            ],
        ),
        ("&status=silenced", &["db-1/disk"]),
        (
            "&status=critical,ok",
            &["db-1/keepalive", "web-1/disk", "web-2/disk"],
        ),
        (
            "&status=problem",
            &["db-1/keepalive", "web-1/disk", "web-1/load", "web-2/ntp"],
        ),
        ("&entity=web-1", &["web-1/disk", "web-1/load"]),
        ("&check=disk", &["web-1/disk", "db-1/disk", "web-2/disk"]),
        ("&subscription=entity:web-2", &["web-2/ntp", "web-2/disk"]),
        (
            "&label=region%3Deu",
            &["db-1/keepalive", "web-1/disk", "web-1/load", "db-1/disk"],
        ),
        ("&q=97%25", &["web-1/disk"]),
        ("&q=DISK&status=critical", &["web-1/disk"]),
        ("&problem=keepalive", &["db-1/keepalive"]),
        ("&limit=2&offset=2", &["web-1/load", "web-2/ntp"]),
    ];
    for (query, expected) in cases {
        let page = expect(
            api.get(&format!("/dashboard/api/events?namespace=default{query}"))
                .await,
            200,
        );
        assert_eq!(keys(&page.body["items"]), *expected, "{query}");
    }
    let silenced = expect(
        api.get("/dashboard/api/events?namespace=default&status=silenced")
            .await,
        200,
    );
    assert_eq!(
        silenced.body["items"][0]["silenced_by"],
        json!(["entity:db-1:disk"])
    );
    assert_eq!(silenced.body["total"], 1);

    // Bad filters are named.
    let bad = expect(
        api.get("/dashboard/api/events?namespace=default&status=purple")
            .await,
        400,
    );
    assert!(bad.text.contains("status"), "{}", bad.text);

    // The event detail has the whole event and the silences that match it.
    let detail = expect(
        api.get("/dashboard/api/event?namespace=default&entity=db-1&check=disk")
            .await,
        200,
    );
    assert_eq!(detail.body["silenced"], true);
    assert_eq!(detail.body["silences"][0]["reason"], "replacing the disk");
    assert_eq!(
        detail.body["event"]["check"]["output"],
        "DISK CRITICAL /data 99%"
    );
    expect(
        api.get("/dashboard/api/event?namespace=default&entity=db-1&check=nope")
            .await,
        404,
    );

    // Entities with the worst state of their events.
    let entities = expect(
        api.get("/dashboard/api/entities?namespace=default").await,
        200,
    );
    let worst: Vec<(String, String)> = entities.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["worst"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        worst,
        vec![
            ("db-1".to_owned(), "critical".to_owned()),
            ("web-1".to_owned(), "critical".to_owned()),
            ("web-2".to_owned(), "unknown".to_owned()),
        ]
    );

    // Deleting an entity deletes its events; the dashboard follows at once.
    expect(api.delete("namespaces/default/entities/web-1").await, 204);
    let after = expect(
        api.get("/dashboard/api/overview?namespace=default").await,
        200,
    );
    assert_eq!(after.body["counts"]["total"], 4);
    server.shutdown().await;
}

#[tokio::test]
async fn dashboard_answers_follow_authentication_and_rbac() {
    let server = TestServer::start().await.unwrap();
    let api = admin(&server).await;
    expect(api.post("namespaces", &json!({"name": "prod"})).await, 201);
    report(&api, "prod", "pay-1", "http", 2, "HTTP 500").await;
    report(&api, "default", "web-1", "http", 2, "HTTP 502").await;
    create_viewer(&api).await;
    let viewer = Client::login(&server.dashboard_url, VIEWER, VIEWER_PASSWORD).await;
    let anonymous = Client::anonymous(&server.dashboard_url);

    let cases = [
        (&anonymous, "/dashboard/api/overview?namespace=default", 401),
        (&anonymous, "/dashboard/api/stream?namespace=default", 401),
        (&viewer, "/dashboard/api/overview?namespace=default", 200),
        (&viewer, "/dashboard/api/events?namespace=default", 200),
        (&viewer, "/dashboard/api/entities?namespace=default", 200),
        (
            &viewer,
            "/dashboard/api/event?namespace=default&entity=web-1&check=http",
            200,
        ),
        (&viewer, "/dashboard/api/overview?namespace=prod", 403),
        (&viewer, "/dashboard/api/events?namespace=prod", 403),
        (&viewer, "/dashboard/api/entities?namespace=prod", 403),
        (
            &viewer,
            "/dashboard/api/event?namespace=prod&entity=pay-1&check=http",
            403,
        ),
        (&viewer, "/dashboard/api/stream?namespace=prod", 403),
        (&api, "/dashboard/api/overview?namespace=nowhere", 404),
    ];
    for (client, path, status) in cases {
        expect(client.get(path).await, status);
    }
    // The overview lists only namespaces the caller may read.
    let mine = expect(
        viewer
            .get("/dashboard/api/overview?namespace=default")
            .await,
        200,
    );
    assert_eq!(mine.body["other_namespaces"], json!([]));
    let all = expect(
        api.get("/dashboard/api/overview?namespace=default").await,
        200,
    );
    assert_eq!(all.body["other_namespaces"][0]["name"], "prod");
    assert_eq!(all.body["other_namespaces"][0]["counts"]["critical"], 1);

    // Which buttons to show: none for the viewer, all for the admin.
    let viewer_can = expect(
        viewer
            .get("/dashboard/api/permissions?namespace=default")
            .await,
        200,
    );
    let admin_can = expect(
        api.get("/dashboard/api/permissions?namespace=default")
            .await,
        200,
    );
    for (action, allowed) in admin_can.body["can"].as_object().unwrap() {
        assert_eq!(allowed, true, "admin may {action}");
        assert_eq!(
            viewer_can.body["can"][action], false,
            "viewer may not {action}"
        );
    }
    // And the API refuses the viewer's actions anyway, on the dashboard's origin too.
    let resolve = json!({"entity": {"metadata": {"name": "web-1"}}, "check": {"metadata": {"name": "http"}, "status": 0}});
    expect(
        viewer
            .put("namespaces/default/events/web-1/http", &resolve)
            .await,
        403,
    );
    expect(
        viewer
            .post(
                "namespaces/default/silenced",
                &json!({"subscription": "entity:web-1"}),
            )
            .await,
        403,
    );
    server.shutdown().await;
}

/// Reads the stream until an event named `name` arrives; returns its data.
async fn next_event(response: &mut reqwest::Response, buffer: &mut String, name: &str) -> Value {
    let read = async {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let event = block
                    .lines()
                    .find_map(|l| l.strip_prefix("event:"))
                    .map(str::trim);
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .map(str::trim);
                if event == Some(name) {
                    return serde_json::from_str(data.unwrap_or("null")).unwrap();
                }
            }
            let chunk = response.chunk().await.unwrap().expect("stream ended");
            buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("no {name:?} event within 10 s"))
}

#[tokio::test]
async fn live_updates_tell_open_pages_when_their_namespace_changes() {
    let server = TestServer::start().await.unwrap();
    let api = admin(&server).await;
    expect(api.post("namespaces", &json!({"name": "prod"})).await, 201);
    let mut stream = api
        .http
        .get(format!(
            "{}/dashboard/api/stream?namespace=default",
            server.dashboard_url
        ))
        .header("Authorization", api.auth.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    let ready = next_event(&mut stream, &mut buffer, "ready").await;

    // A change in another namespace says nothing; one in ours is announced.
    report(&api, "prod", "pay-1", "http", 2, "HTTP 500").await;
    report(&api, "default", "web-1", "http", 2, "HTTP 502").await;
    let revision = |answer: &Answer| answer.body["revision"].as_i64().unwrap();
    let prod = revision(&expect(
        api.get("/dashboard/api/overview?namespace=prod").await,
        200,
    ));
    let default = revision(&expect(
        api.get("/dashboard/api/overview?namespace=default").await,
        200,
    ));
    assert!(default > prod && prod > ready["revision"].as_i64().unwrap());
    loop {
        let change = next_event(&mut stream, &mut buffer, "change").await;
        let announced = change["revision"].as_i64().unwrap();
        assert!(
            announced > prod,
            "announced {announced}, a change of prod only"
        );
        if announced == default {
            break;
        }
    }
    drop(stream);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The browser

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The browser and node_modules, or why they are missing.
fn browser_tools() -> Result<PathBuf, String> {
    let chromium = std::env::var_os("KENSA_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        return Err(format!("{} is missing", chromium.display()));
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|out| out.status.success()) {
        return Err("node is not installed".into());
    }
    let playwright = repo_root().join("tests/browser/node_modules/playwright-core/package.json");
    if !playwright.exists() {
        return Err("tests/browser/node_modules is missing".into());
    }
    Ok(chromium)
}

/// Data for the screenshots and the scenario: a few entities with problems of every kind.
async fn seed_for_browser(api: &Client) {
    expect(
        api.put(
            "namespaces/default/checks/disk-full",
            &json!({"command": "check-disk -w 80 -c 95", "interval": 60, "subscriptions": ["linux"], "publish": true, "metadata": {"name": "disk-full"}}),
        )
        .await,
        201,
    );
    expect(
        api.put(
            "namespaces/default/checks/http",
            &json!({"command": "check-http -u http://localhost", "interval": 30, "subscriptions": ["web"], "round_robin": true, "publish": true, "metadata": {"name": "http"}}),
        )
        .await,
        201,
    );
    expect(
        api.put(
            "namespaces/default/entities/web-1",
            &json!({
                "entity_class": "agent",
                "subscriptions": ["linux", "web"],
                "last_seen": kensa_backend::api::now_unix(),
                "sensu_agent_version": "6.14.0",
                "metadata": {"name": "web-1", "namespace": "default", "labels": {"region": "eu", "team": "shop"}},
                "system": {"hostname": "web-1.example.com", "os": "linux", "platform": "debian", "platform_family": "debian",
                           "platform_version": "12.7", "arch": "amd64",
                           "network": {"interfaces": [{"name": "eth0", "addresses": ["10.0.0.11/24"]}]}},
            }),
        )
        .await,
        200,
    );
    report_history(api, "web-1", "http", &[0; 21], "HTTP OK: 200 in 0.031 s").await;
    report_history(
        api,
        "web-1",
        "load",
        &[0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1],
        "LOAD WARNING - load average: 4.21, 3.90, 3.12",
    )
    .await;
    report_history(
        api,
        "web-2",
        "http",
        &[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2,
        ],
        "HTTP CRITICAL: 503 Service Unavailable",
    )
    .await;
    report_history(
        api,
        "db-1",
        "keepalive",
        &[0, 0, 0, 0, 0, 0, 2, 2],
        "No keepalive sent from db-1 for 320 seconds (>= 180)",
    )
    .await;
    report_history(
        api,
        "db-1",
        "backup",
        &[0, 0, 3],
        "UNKNOWN - backup catalog unreadable",
    )
    .await;
    for i in 1..=8 {
        report(
            api,
            "default",
            &format!("app-{i}"),
            "disk-full",
            0,
            "DISK OK - free space: / 61%",
        )
        .await;
    }
    expect(api.post("namespaces", &json!({"name": "prod"})).await, 201);
    report(api, "prod", "pay-1", "http", 2, "HTTP CRITICAL: 500").await;
}

/// The agents that run the round-robin check `synthetic` (subscription `probe`) during the
/// browser scenario.
const PROBE_AGENTS: [&str; 3] = ["probe-a", "probe-b", "probe-c"];

/// A round-robin check run by real agents (in process, over the agent WebSocket): the check
/// page shows its last rounds and which agent ran each.
async fn start_round_robin(api: &Client, server: &TestServer, dir: &Path) -> Vec<RunningAgent> {
    let mut agents = Vec::new();
    for name in PROBE_AGENTS {
        let config = StartArgs {
            name: Some(name.into()),
            backend_url: vec![server.agent_url.clone()],
            namespace: Some("default".into()),
            subscriptions: vec!["probe".into()],
            user: Some("agent".into()),
            password: Some("P@ssw0rd!".into()),
            cache_dir: Some(dir.join(name)),
            disable_api: Some(true),
            disable_sockets: Some(true),
            statsd_disable: Some(true),
            log_level: Some("warn".into()),
            ..StartArgs::default()
        }
        .resolve()
        .unwrap();
        let shutdown = CancellationToken::new();
        let agent = Agent::start(config, shutdown.clone()).await.unwrap();
        agents.push(RunningAgent { shutdown, agent });
    }
    expect(
        api.put(
            "namespaces/default/checks/synthetic",
            &json!({"command": "echo 'synthetic login OK'", "interval": 1, "subscriptions": ["probe"],
                    "round_robin": true, "publish": true, "metadata": {"name": "synthetic"}}),
        )
        .await,
        201,
    );
    agents
}

struct RunningAgent {
    shutdown: CancellationToken,
    agent: Agent,
}

#[tokio::test]
async fn browser_scenario() {
    let required =
        std::env::var_os("KENSA_BROWSER_TESTS").is_some_and(|v| !v.is_empty() && v != "0");
    let chromium = match browser_tools() {
        Ok(chromium) => chromium,
        Err(why) if !required => {
            println!("skipped: {why} (run scripts/browser-setup.sh, or set KENSA_BROWSER_TESTS=1 to require it)");
            return;
        }
        Err(why) => panic!("KENSA_BROWSER_TESTS is set but {why}; run scripts/browser-setup.sh"),
    };
    let server = TestServer::start().await.unwrap();
    let api = admin(&server).await;
    seed_for_browser(&api).await;
    create_viewer(&api).await;
    let agent_dir = tempfile::tempdir().unwrap();
    let agents = start_round_robin(&api, &server, agent_dir.path()).await;

    let root = repo_root();
    let screenshots = std::env::var_os("KENSA_SCREENSHOTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("docs/screenshots"));
    std::fs::create_dir_all(&screenshots).unwrap();
    let run = tokio::process::Command::new("node")
        .arg("run.mjs")
        .current_dir(root.join("tests/browser"))
        .env("DASHBOARD_URL", &server.dashboard_url)
        .env("CHROMIUM", &chromium)
        .env("ADMIN_USERNAME", &server.admin_username)
        .env("ADMIN_PASSWORD", &server.admin_password)
        .env("VIEWER_USERNAME", VIEWER)
        .env("VIEWER_PASSWORD", VIEWER_PASSWORD)
        .env("SCREENSHOT_DIR", &screenshots)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser scenario did not finish within 240 s")
        .expect("could not start node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the browser scenario failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("scenario passed"), "{stdout}");
    for running in agents {
        running.shutdown.cancel();
        running.agent.stopped().await;
    }
    server.shutdown().await;
}
