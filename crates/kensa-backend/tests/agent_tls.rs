//! `wss://` end to end against the backend's own agent listener: the backend serves TLS on the
//! agent port with the same certificate options as the API (`--cert-file`, `--key-file`), and
//! a real agent connects only when it trusts the certificate's CA (`--trusted-ca-file`) or is
//! told not to verify (`--insecure-skip-tls-verify`). With `--agent-auth-trusted-ca-file`,
//! agents authenticate with client certificates (mTLS) instead of a password: the certificate
//! must name the agent, be signed by that CA and not be revoked (`--agent-auth-crl-urls`).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{expect, poll_until, Client};
use kensa_agent::config::StartArgs;
use kensa_agent::Agent;
use kensa_backend::config::{AgentTls, TlsFiles};
use kensa_backend::testing::TestServer;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use serde_json::json;
use tokio_tungstenite::tungstenite;
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

/// An API client of `server` (HTTPS, trusting `ca_pem`) logged in as the admin.
async fn https_api(server: &TestServer, ca_pem: &str) -> Client {
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
    Client {
        http,
        base: server.url.clone(),
        auth: Some(format!("Bearer {token}")),
    }
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
    let api = https_api(&server, &ca_pem).await;
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

/// A CA that issues agent (client) certificates and revokes them.
struct AgentCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl AgentCa {
    fn new(name: &str) -> AgentCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        AgentCa { cert, key }
    }

    /// Writes `<stem>.pem` and `<stem>-key.pem`: a client certificate with the given common
    /// name (none when `None`) and DNS names.
    fn issue(
        &self,
        dir: &Path,
        stem: &str,
        common_name: Option<&str>,
        dns_names: &[&str],
        serial: u64,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = dns_names
            .iter()
            .map(|n| SanType::DnsName((*n).try_into().unwrap()))
            .collect();
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_file, key_file) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}-key.pem")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    /// Writes a revocation list of the given serial numbers.
    fn revoke(&self, file: &Path, serials: &[u64]) {
        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2036, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: rcgen::date_time_ymd(2026, 1, 2),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
        .unwrap();
        std::fs::write(file, crl.pem().unwrap()).unwrap();
    }
}

/// How a raw agent handshake ended: the HTTP status and body the backend answered, or the TLS
/// (or connection) error that ended it before HTTP.
#[derive(Debug)]
enum Handshake {
    Http(u16, String),
    Failed(String),
}

/// One agent WebSocket handshake as `agent`, trusting `server_ca`, presenting `client` (a
/// certificate and its key) and/or Basic credentials.
async fn handshake(
    url: &str,
    agent: &str,
    server_ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
    password: Option<&str>,
) -> Handshake {
    use tungstenite::client::IntoClientRequest;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::fs::read(server_ca).unwrap().as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let certs = rustls_pemfile::certs(&mut std::fs::read(cert_file).unwrap().as_slice())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls_pemfile::private_key(&mut std::fs::read(key_file).unwrap().as_slice())
                .unwrap()
                .unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
    };
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(kensa_proto::HEADER_AGENT_NAME, agent.parse().unwrap());
    headers.insert(kensa_proto::HEADER_NAMESPACE, "default".parse().unwrap());
    if let Some(password) = password {
        use base64::Engine;
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("agent:{password}"));
        headers.insert(
            "authorization",
            format!("Basic {credentials}").parse().unwrap(),
        );
    }
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(config));
    match tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
        .await
    {
        Ok((_socket, response)) => Handshake::Http(response.status().as_u16(), String::new()),
        Err(tungstenite::Error::Http(response)) => Handshake::Http(
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(err) => Handshake::Failed(err.to_string()),
    }
}

#[tokio::test]
async fn agents_authenticate_with_client_certificates_the_backend_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_pem = write_certificates(d);
    let agents = AgentCa::new("Kensa agents");
    std::fs::write(d.join("agents-ca.pem"), agents.cert.pem()).unwrap();
    let web1 = agents.issue(d, "web-1", Some("web-1"), &[], 11);
    let by_san = agents.issue(d, "by-san", None, &["db-7", "db-7.example.com"], 12);
    let revoked = agents.issue(d, "revoked", Some("web-2"), &[], 13);
    let disabled = agents.issue(d, "disabled", Some("web-9"), &[], 14);
    agents.revoke(&d.join("agents.crl"), &[13]);
    let rogue = AgentCa::new("someone else").issue(d, "rogue", Some("web-3"), &[], 15);

    let server = TestServer::start_configured(|c| {
        c.tls = Some(TlsFiles {
            cert_file: d.join("cert.pem"),
            key_file: d.join("key.pem"),
            trusted_ca_file: None,
        });
        c.agent_tls = AgentTls {
            cert: None,
            client_ca_file: Some(d.join("agents-ca.pem")),
            crl_files: vec![d.join("agents.crl")],
        };
    })
    .await
    .unwrap();
    let api = https_api(&server, &ca_pem).await;
    expect(
        api.put(
            "namespaces/default/checks/mtls-probe",
            &json!({"metadata": {"name": "mtls-probe", "namespace": "default"},
                    "command": "echo 'over mtls'", "interval": 1,
                    "subscriptions": ["linux"], "publish": true}),
        )
        .await,
        201,
    );
    // A user named like a certificate authenticates as that user — and not while disabled.
    expect(
        api.post(
            "users",
            &json!({"username": "web-9", "password": "web-9-password", "groups": ["system:agents"]}),
        )
        .await,
        201,
    );
    expect(api.delete("users/web-9").await, 204);

    // A real agent with its certificate runs the check; its password is wrong and unused.
    let _web1 = start_agent(
        &server,
        d,
        "web-1",
        StartArgs {
            trusted_ca_file: Some(d.join("ca.pem")),
            cert_file: Some(web1.0.clone()),
            key_file: Some(web1.1.clone()),
            password: Some("not-the-password".into()),
            ..StartArgs::default()
        },
    )
    .await;
    let (event, _) = poll_until(
        &api,
        "namespaces/default/events/web-1/mtls-probe",
        Duration::from_secs(15),
        |e| e["check"]["status"] == 0,
    )
    .await
    .expect("the certificate agent's result arrives");
    assert_eq!(event["check"]["output"], "over mtls\n");

    let url = server.agent_url.as_str();
    let ca = d.join("ca.pem");
    // A certificate speaks only for the names it carries.
    match handshake(url, "db-1", &ca, Some(&web1), None).await {
        Handshake::Http(403, body) => {
            assert!(body.contains("does not name agent \"db-1\""), "{body}")
        }
        other => panic!("web-1's certificate reporting as db-1: {other:?}"),
    }
    match handshake(url, "db-7", &ca, Some(&by_san), None).await {
        Handshake::Http(101, _) => {}
        other => panic!("a DNS name of the certificate names the agent: {other:?}"),
    }
    // Revoked, or signed by a CA the backend does not trust: no TLS session at all.
    match handshake(url, "web-2", &ca, Some(&revoked), None).await {
        Handshake::Failed(err) => assert!(err.contains("Revoked"), "{err}"),
        other => panic!("a revoked certificate: {other:?}"),
    }
    match handshake(url, "web-3", &ca, Some(&rogue), None).await {
        Handshake::Failed(_) => {}
        other => panic!("a certificate of an untrusted CA: {other:?}"),
    }
    match handshake(url, "web-9", &ca, Some(&disabled), None).await {
        Handshake::Http(401, body) => assert!(body.contains("disabled"), "{body}"),
        other => panic!("the certificate of a disabled user: {other:?}"),
    }
    // Without a certificate the password still works, and nothing at all is refused.
    match handshake(url, "pw-agent", &ca, None, Some("P@ssw0rd!")).await {
        Handshake::Http(101, _) => {}
        other => panic!("a password agent beside certificate agents: {other:?}"),
    }
    match handshake(url, "nobody", &ca, None, None).await {
        Handshake::Http(401, body) => assert!(body.contains("missing credentials"), "{body}"),
        other => panic!("neither certificate nor password: {other:?}"),
    }
    expect(api.get("namespaces/default/entities/db-1").await, 404);
    expect(api.get("namespaces/default/entities/web-2").await, 404);
    server.shutdown().await;
}
