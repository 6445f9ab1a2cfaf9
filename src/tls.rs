//! TLS for doraflow's HTTP clients (PagerDuty, Alertmanager, the alert
//! webhook): the system's roots plus, if configured, a CA of one's own, and
//! a client certificate for endpoints that ask for one. rustls throughout.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// `tls` of an exporter that calls an HTTPS endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// PEM file of CA certificates to trust besides the system's (a private
    /// CA in front of Alertmanager, say).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for endpoints that require one (mTLS).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl ClientTls {
    /// Checks that the files are there and parse: a bad CA is a start-up
    /// error, not a failed page at 3 a.m.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        if self.cert_file.is_some() != self.key_file.is_some() {
            errors.push(format!(
                "{path}: cert_file and key_file go together (a client certificate needs its key)"
            ));
            return;
        }
        if let Err(e) = http_client(Some(self), Duration::from_secs(10)) {
            errors.push(format!("{path}: {e:#}"));
        }
    }
}

/// An HTTP client for `https://` and `http://` endpoints, trusting the
/// system's roots plus `tls.ca_file`, presenting `tls.cert_file` if set.
pub fn http_client(tls: Option<&ClientTls>, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(tls) = tls {
        if let Some(ca_file) = &tls.ca_file {
            let pem = std::fs::read(ca_file)
                .with_context(|| format!("cannot read ca_file {}", ca_file.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("ca_file {} is not PEM certificates", ca_file.display())
            })?;
            anyhow::ensure!(
                !certificates.is_empty(),
                "ca_file {} holds no certificate",
                ca_file.display()
            );
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) {
            let mut pem = std::fs::read(cert_file)
                .with_context(|| format!("cannot read cert_file {}", cert_file.display()))?;
            pem.extend(
                std::fs::read(key_file)
                    .with_context(|| format!("cannot read key_file {}", key_file.display()))?,
            );
            // The error names the files, never their content.
            let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
                anyhow::anyhow!(
                    "cert_file {} and key_file {} are not a PEM certificate and its key",
                    cert_file.display(),
                    key_file.display()
                )
            })?;
            builder = builder.identity(identity);
        }
    }
    builder.build().context("cannot build the HTTP client")
}

/// `tls` of a listener: serve HTTPS / gRPC over TLS with these files,
/// reloaded when they change (a renewed certificate needs no restart).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain, the listener's own certificate first.
    pub cert_file: PathBuf,
    /// PEM private key of the certificate.
    pub key_file: PathBuf,
    /// PEM CA certificates: if set, every client must present a
    /// certificate they signed (mTLS). Default: none asked.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for a change. Default `10s`.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: crate::settings::ConfigDuration,
}

fn default_reload_interval() -> crate::settings::ConfigDuration {
    crate::settings::ConfigDuration::from_secs(10)
}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl ServerTls {
    /// Checks that the files are there, parse and belong together.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        if let Err(e) = self.server_config(&[]) {
            errors.push(format!("{path}: {e:#}"));
        }
        if self.reload_interval.get().is_zero() {
            errors.push(format!("{path}.reload_interval: must be longer than 0"));
        }
    }

    /// A rustls configuration from the files, offering `alpn`.
    fn server_config(&self, alpn: &[&[u8]]) -> anyhow::Result<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certificates = CertificateDer::pem_file_iter(&self.cert_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("cert_file {}: {e}", self.cert_file.display()))?;
        anyhow::ensure!(
            !certificates.is_empty(),
            "cert_file {} holds no certificate",
            self.cert_file.display()
        );
        // The error names the file, never its content.
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| {
            anyhow::anyhow!(
                "key_file {}: not a PEM private key ({e})",
                self.key_file.display()
            )
        })?;
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca_file) => {
                let mut roots = rustls::RootCertStore::empty();
                let cas = CertificateDer::pem_file_iter(ca_file)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| anyhow::anyhow!("client_ca_file {}: {e}", ca_file.display()))?;
                for ca in cas {
                    roots.add(ca).with_context(|| {
                        format!("client_ca_file {}: a bad CA certificate", ca_file.display())
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    std::sync::Arc::new(roots),
                    provider,
                )
                .build()
                .with_context(|| format!("client_ca_file {}", ca_file.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certificates, key)
            .with_context(|| {
                format!(
                    "cert_file {} and key_file {} do not make a usable certificate",
                    self.cert_file.display(),
                    self.key_file.display()
                )
            })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// When each file last changed, to notice a renewal.
    fn stamp(&self) -> Vec<Option<std::time::SystemTime>> {
        [
            Some(&self.cert_file),
            Some(&self.key_file),
            self.client_ca_file.as_ref(),
        ]
        .into_iter()
        .map(|p| p.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()))
        .collect()
    }
}

/// ALPN for gRPC listeners.
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
/// ALPN for the HTTP/1 listeners.
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// A listener's TLS configuration, reloaded from disk when its files change;
/// a reload that fails keeps the last good one (and says why).
#[derive(Clone)]
pub struct Reloading {
    current: std::sync::Arc<std::sync::RwLock<std::sync::Arc<rustls::ServerConfig>>>,
}

impl Reloading {
    /// Loads `tls` (an error if it cannot) and watches its files until
    /// `stop` is cancelled.
    pub fn start(
        tls: &ServerTls,
        alpn: &'static [&'static [u8]],
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Reloading> {
        let current = std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(
            tls.server_config(alpn)?,
        )));
        let reloading = Reloading { current };
        let (watched, tls) = (reloading.clone(), tls.clone());
        tokio::spawn(async move {
            let mut stamp = tls.stamp();
            let mut tick = tokio::time::interval(tls.reload_interval.get());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                let now = tls.stamp();
                if now == stamp {
                    continue;
                }
                match tls.server_config(alpn) {
                    Ok(config) => {
                        *watched.current.write().unwrap_or_else(|p| p.into_inner()) =
                            std::sync::Arc::new(config);
                        stamp = now;
                        tracing::info!(cert_file = %tls.cert_file.display(), "TLS certificate reloaded");
                    }
                    // Half-written files during a renewal: try again next tick.
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "TLS files changed but do not load; keeping the previous certificate")
                    }
                }
            }
        });
        Ok(reloading)
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// A TLS connection accepted by [`incoming`].
pub type TlsConnection = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Accepts TCP connections on `listener` and completes their TLS handshakes
/// off the accept loop, each within 10 s, so that a slow or silent client
/// holds up no one; failed handshakes (plaintext, an unknown client
/// certificate) are logged at debug and counted. Ends when `stop` is
/// cancelled.
pub fn incoming(
    listener: tokio::net::TcpListener,
    tls: Reloading,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::sync::mpsc::Receiver<(TlsConnection, std::net::SocketAddr)> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.cancelled() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    Ok(Err(e)) => {
                        metrics::counter!(crate::instruments::TLS_HANDSHAKE_FAILURES, "reason" => "refused").increment(1);
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!(crate::instruments::TLS_HANDSHAKE_FAILURES, "reason" => "timeout").increment(1);
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    rx
}
