//! TLS for the backend's listeners: the server configuration (certificate, and for the agent
//! listener optional client-certificate verification), a listener that runs handshakes off the
//! accept loop, and [`Peer`], what a handler learns about the other end of its connection.
//!
//! Client certificates (mTLS, Sensu's `agent-auth-*` options): the agent listener asks for a
//! certificate but does not require one, so password agents keep working beside certificate
//! agents. A certificate that is presented is verified during the handshake against
//! `agent-auth-trusted-ca-file` and the revocation lists of `agent-auth-crl-urls` (the end
//! entity's revocation only); one that fails ends the handshake. What the session handshake
//! then does with a verified certificate's names is in `agentd.rs`. Revocation lists are read at
//! startup: a list changed later takes effect when the backend restarts, and sessions already
//! open keep running until they end.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use x509_cert::der::asn1::{Ia5StringRef, ObjectIdentifier, PrintableStringRef, Utf8StringRef};
use x509_cert::der::Decode;

use crate::config::{AgentTls, TlsFiles};

/// Subject common name (2.5.4.3).
const OID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// Subject alternative name extension (2.5.29.17).
const OID_SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");

/// The acceptor for a listener serving `files`; `option` prefixes the option names in errors
/// (`""` for `cert-file`, `"agent-auth-"` for `agent-auth-cert-file`). With `clients`, client
/// certificates are asked for and verified (see the module comment).
pub fn acceptor(
    files: &TlsFiles,
    option: &str,
    clients: Option<&AgentTls>,
) -> anyhow::Result<TlsAcceptor> {
    let cert_pem = std::fs::read(&files.cert_file)
        .with_context(|| format!("reading {option}cert-file {}", files.cert_file.display()))?;
    let key_pem = std::fs::read(&files.key_file)
        .with_context(|| format!("reading {option}key-file {}", files.key_file.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{option}cert-file {} is not PEM", files.cert_file.display()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{option}key-file {} is not PEM", files.key_file.display()))?
        .with_context(|| {
            format!(
                "{option}key-file {} holds no private key",
                files.key_file.display()
            )
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let verifier = clients
        .map(|clients| client_verifier(clients, provider))
        .transpose()?
        .flatten();
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).with_context(|| {
        format!("{option}cert-file and {option}key-file do not form a usable certificate")
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The verifier of agents' client certificates; `None` without `agent-auth-trusted-ca-file`.
fn client_verifier(
    clients: &AgentTls,
    provider: Arc<CryptoProvider>,
) -> anyhow::Result<Option<Arc<dyn ClientCertVerifier>>> {
    let Some(ca_file) = clients.client_ca_file.as_deref() else {
        return Ok(None);
    };
    let roots = read_client_cas(ca_file)?;
    let crls = read_crls(&clients.crl_files)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .allow_unauthenticated()
        .build()
        .context("agent-auth-trusted-ca-file and agent-auth-crl-urls")?;
    Ok(Some(verifier))
}

fn read_client_cas(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading agent-auth-trusted-ca-file {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert
            .with_context(|| format!("agent-auth-trusted-ca-file {} is not PEM", path.display()))?;
        roots.add(cert).with_context(|| {
            format!(
                "agent-auth-trusted-ca-file {}: unusable CA certificate",
                path.display()
            )
        })?;
    }
    if roots.is_empty() {
        bail!(
            "agent-auth-trusted-ca-file {}: no certificate found",
            path.display()
        );
    }
    Ok(roots)
}

/// Revocation lists from PEM (`-----BEGIN X509 CRL-----`) or DER files.
fn read_crls(
    files: &[std::path::PathBuf],
) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    let mut crls = Vec::new();
    for path in files {
        let bytes = std::fs::read(path)
            .with_context(|| format!("agent-auth-crl-urls: reading {}", path.display()))?;
        if bytes.starts_with(b"-----BEGIN") {
            let before = crls.len();
            for crl in rustls_pemfile::crls(&mut bytes.as_slice()) {
                crls.push(crl.with_context(|| {
                    format!("agent-auth-crl-urls: {} is not PEM", path.display())
                })?);
            }
            if crls.len() == before {
                bail!(
                    "agent-auth-crl-urls: {} holds no X509 CRL block",
                    path.display()
                );
            }
        } else {
            crls.push(CertificateRevocationListDer::from(bytes));
        }
    }
    Ok(crls)
}

/// The names a verified client certificate carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertificateNames {
    /// The subject's (first) common name.
    pub common_name: Option<String>,
    /// DNS names of the subject-alternative-name extension.
    pub dns_names: Vec<String>,
}

impl CertificateNames {
    /// Reads the names of a DER certificate; one that does not parse carries none.
    pub fn of(der: &CertificateDer<'_>) -> CertificateNames {
        let Ok(cert) = x509_cert::Certificate::from_der(der.as_ref()) else {
            return CertificateNames::default();
        };
        let tbs = &cert.tbs_certificate;
        let common_name = tbs
            .subject
            .0
            .iter()
            .flat_map(|rdn| rdn.0.iter())
            .filter(|atv| atv.oid == OID_COMMON_NAME)
            .find_map(|atv| {
                let value = &atv.value;
                value
                    .decode_as::<Utf8StringRef<'_>>()
                    .map(|s| s.as_str().to_owned())
                    .or_else(|_| {
                        value
                            .decode_as::<PrintableStringRef<'_>>()
                            .map(|s| s.as_str().to_owned())
                    })
                    .or_else(|_| {
                        value
                            .decode_as::<Ia5StringRef<'_>>()
                            .map(|s| s.as_str().to_owned())
                    })
                    .ok()
            });
        let dns_names = tbs
            .extensions
            .iter()
            .flatten()
            .filter(|ext| ext.extn_id == OID_SUBJECT_ALT_NAME)
            .filter_map(|ext| {
                x509_cert::ext::pkix::SubjectAltName::from_der(ext.extn_value.as_bytes()).ok()
            })
            .flat_map(|san| san.0)
            .filter_map(|name| match name {
                x509_cert::ext::pkix::name::GeneralName::DnsName(dns) => Some(dns.to_string()),
                _ => None,
            })
            .collect();
        CertificateNames {
            common_name,
            dns_names,
        }
    }

    /// Whether `name` is the common name or one of the DNS names.
    pub fn names(&self, name: &str) -> bool {
        self.common_name.as_deref() == Some(name) || self.dns_names.iter().any(|n| n == name)
    }
}

/// The other end of a connection, for handlers (`ConnectInfo<Peer>`).
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: SocketAddr,
    /// The names of the client certificate the TLS handshake verified, if one was presented.
    pub certificate: Option<Arc<CertificateNames>>,
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Peer {
        Peer {
            address: *stream.remote_addr(),
            certificate: None,
        }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Peer {
        let (_, session) = stream.io().get_ref();
        Peer {
            address: *stream.remote_addr(),
            certificate: session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| Arc::new(CertificateNames::of(leaf))),
        }
    }
}

/// A TLS listener for `axum::serve`: an accept task hands raw connections to per-connection
/// handshake tasks, so one slow or broken client never stalls the others. Finished handshakes
/// queue in a bounded channel (when it is full, handshakes wait: back-pressure, not loss).
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    pub fn spawn(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        shutdown: CancellationToken,
    ) -> TlsListener {
        let local_addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (tx, ready) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    );
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(err)) => tracing::debug!(%peer, %err, "tls handshake failed"),
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    }
                });
            }
        });
        TlsListener { ready, local_addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The accept task ended (shutdown): wait for graceful shutdown to stop serving.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
