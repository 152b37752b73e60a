//! `wss://` backends: the agent trusts exactly the CAs of `trusted-ca-file`, or anything with
//! `insecure-skip-tls-verify`.

mod core_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use core_support::{agent_args, eventually, FakeBackend, TestAgent};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio_rustls::rustls;

/// A CA (PEM) and a server configuration whose `localhost` certificate it signed.
fn ca_and_server() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    (ca.pem(), Arc::new(server))
}

#[tokio::test]
async fn a_backend_signed_by_the_trusted_ca_is_accepted() {
    let (ca_pem, server) = ca_and_server();
    let mut backend = FakeBackend::tls(server).await;
    let cache = tempfile::tempdir().unwrap();
    let ca_file = cache.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let mut args = agent_args(&[&backend.url], cache.path());
    args.trusted_ca_file = Some(ca_file);
    let agent = TestAgent::start(args.resolve().unwrap()).await;
    let mut session = backend.accept_ready().await;
    assert_eq!(
        session.next_keepalive().await.check.unwrap().metadata.name,
        "keepalive"
    );
    agent.stop().await;
}

#[tokio::test]
async fn an_untrusted_backend_is_refused_unless_verification_is_skipped() {
    let (_, server) = ca_and_server();
    let (other_ca, _) = ca_and_server();
    let mut backend = FakeBackend::tls(server).await;
    let cache = tempfile::tempdir().unwrap();
    let ca_file = cache.path().join("other-ca.pem");
    std::fs::write(&ca_file, other_ca).unwrap();
    let mut args = agent_args(&[&backend.url], cache.path());
    args.trusted_ca_file = Some(ca_file);
    let agent = TestAgent::start(args.resolve().unwrap()).await;
    eventually("the agent has tried twice", || {
        backend.attempts.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(
        backend.try_accept().is_none(),
        "no session with an untrusted certificate"
    );
    assert!(!*agent.agent.connected().borrow());
    agent.stop().await;

    let mut args = agent_args(&[&backend.url], cache.path());
    args.insecure_skip_tls_verify = Some(true);
    let agent = TestAgent::start(args.resolve().unwrap()).await;
    let mut session = backend.accept_ready().await;
    session.next_keepalive().await;
    agent.stop().await;
}
