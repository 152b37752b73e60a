//! `wss://` end to end against the backend's own agent listener: the backend serves TLS on the
//! agent port with the same certificate options as the API (`--cert-file`, `--key-file`), and
//! a real agent connects only when it trusts the certificate's CA (`--trusted-ca-file`) or is
//! told not to verify (`--insecure-skip-tls-verify`).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{expect, poll_until, Client};
use kensa_agent::config::StartArgs;
use kensa_agent::Agent;
use kensa_backend::config::TlsFiles;
use kensa_backend::testing::TestServer;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Writes a CA and a `localhost` certificate it signed; returns the CA's PEM.
fn write_certificates(dir: &Path) -> String {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    ca.pem()
}

struct RunningAgent {
    shutdown: CancellationToken,
    _agent: Agent,
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_agent(server: &TestServer, dir: &Path, name: &str, tls: StartArgs) -> RunningAgent {
    let config = StartArgs {
        name: Some(name.into()),
        backend_url: vec![server.agent_url.clone()],
        namespace: Some("default".into()),
        subscriptions: vec!["linux".into()],
        user: Some("agent".into()),
        password: Some("P@ssw0rd!".into()),
        cache_dir: Some(dir.join(name)),
        keepalive_interval: Some(1),
        disable_api: Some(true),
        disable_sockets: Some(true),
        statsd_disable: Some(true),
        retry_max: Some("1s".into()),
        log_level: Some("warn".into()),
        ..tls
    }
    .resolve()
    .expect("agent configuration");
    let shutdown = CancellationToken::new();
    let agent = Agent::start(config, shutdown.clone()).await.unwrap();
    RunningAgent {
        shutdown,
        _agent: agent,
    }
}

#[tokio::test]
async fn agents_reach_the_tls_agent_listener_only_when_they_trust_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = write_certificates(dir.path());
    let server = TestServer::start_configured(|c| {
        c.tls = Some(TlsFiles {
            cert_file: dir.path().join("cert.pem"),
            key_file: dir.path().join("key.pem"),
            trusted_ca_file: None,
        })
    })
    .await
    .unwrap();
    assert!(
        server.agent_url.starts_with("wss://"),
        "{}",
        server.agent_url
    );
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let token = http
        .get(format!("{}/auth", server.url))
        .basic_auth(&server.admin_username, Some(&server.admin_password))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let api = Client {
        http,
        base: server.url.clone(),
        auth: Some(format!("Bearer {token}")),
    };
    expect(
        api.put(
            "namespaces/default/checks/tls-probe",
            &json!({"metadata": {"name": "tls-probe", "namespace": "default"},
                    "command": "echo 'over wss'", "interval": 1,
                    "subscriptions": ["linux"], "publish": true}),
        )
        .await,
        201,
    );

    let trusted = StartArgs {
        trusted_ca_file: Some(dir.path().join("ca.pem")),
        ..StartArgs::default()
    };
    let untrusting = StartArgs::default();
    let insecure = StartArgs {
        insecure_skip_tls_verify: Some(true),
        ..StartArgs::default()
    };
    let _trusted = start_agent(&server, dir.path(), "trusting", trusted).await;
    let _untrusting = start_agent(&server, dir.path(), "untrusting", untrusting).await;
    let _insecure = start_agent(&server, dir.path(), "insecure", insecure).await;

    // The agent that trusts the CA runs the check over wss and its result is stored.
    let (event, _) = poll_until(
        &api,
        "namespaces/default/events/trusting/tls-probe",
        Duration::from_secs(15),
        |e| e["check"]["status"] == 0,
    )
    .await
    .expect("the trusting agent's result arrives over wss");
    assert_eq!(event["check"]["output"], "over wss\n");
    // So does the one told not to verify (Sensu's insecure-skip-tls-verify).
    poll_until(
        &api,
        "namespaces/default/events/insecure/keepalive",
        Duration::from_secs(10),
        |e| e["check"]["status"] == 0,
    )
    .await
    .expect("the insecure agent connects");
    // The one that does not trust the certificate never gets a session: no entity, no events,
    // however long it retries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    expect(api.get("namespaces/default/entities/untrusting").await, 404);
    expect(
        api.get("namespaces/default/events/untrusting/keepalive")
            .await,
        404,
    );
    server.shutdown().await;
}
