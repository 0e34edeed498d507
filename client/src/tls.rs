//! TLS of the HTTP clients (this crate's [`crate::Client`], and the agent,
//! which re-exports it as `corral_agent::tls`): rustls with the ring
//! provider. An `https://` server is trusted through the system's root
//! certificates, plus the CA of a `ca_file` when one is given (a lab's own
//! CA); a plain `http://` server needs none of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A TLS file that cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificates in {path}: {cause}")]
    Certificates { path: String, cause: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("cannot read the private key in {path}: {cause}")]
    PrivateKey { path: String, cause: String },
    #[error("the CA certificate in {path} is not usable: {cause}")]
    BadCa { path: String, cause: String },
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// The crypto provider of every TLS end of corral.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file, in order.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = || path.display().to_string();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Certificates { path: shown(), cause: e.to_string() })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificates { path: shown(), cause: e.to_string() })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate { path: shown() });
    }
    Ok(certificates)
}

/// How an HTTP client trusts `https://` servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM file of a CA to trust besides the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl ClientTls {
    pub fn with_ca_file(ca_file: Option<PathBuf>) -> ClientTls {
        ClientTls { ca_file }
    }

    /// The rustls configuration: the system's roots and the `ca_file`'s.
    pub fn config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = RootCertStore::empty();
        let system = rustls_native_certs::load_native_certs();
        for err in &system.errors {
            tracing::debug!(cause = %err, "skipping unreadable system root certificates");
        }
        let (added, ignored) = roots.add_parsable_certificates(system.certs);
        tracing::debug!(added, ignored, "system root certificates");
        if let Some(path) = &self.ca_file {
            for certificate in read_certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|e| TlsError::BadCa { path: path.display().to_string(), cause: e.to_string() })?;
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// An HTTP client for `server` with `timeout` per call and
    /// `Authorization: Bearer token`; TLS is set up only for an `https://`
    /// server.
    pub fn http_client(&self, server: &str, token: &str, timeout: Duration) -> Result<awc::Client, TlsError> {
        self.http_client_for(server.starts_with("https://"), Some(token), timeout)
    }

    /// An HTTP client with `timeout` per call, with TLS when `https`, and
    /// `Authorization: Bearer token` on every call when there is a token.
    pub fn http_client_for(
        &self,
        https: bool,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<awc::Client, TlsError> {
        let mut builder = awc::Client::builder().timeout(timeout);
        if let Some(token) = token {
            builder = builder.add_default_header(("Authorization", format!("Bearer {token}")));
        }
        if !https {
            return Ok(builder.finish());
        }
        let connector = awc::Connector::new().rustls_0_23(self.config()?);
        Ok(builder.connector(connector).finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_are_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("corral-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = ClientTls::with_ca_file(Some(missing.clone())).config().unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = ClientTls::with_ca_file(Some(empty.clone())).config().unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate") && err.contains(&empty.display().to_string()), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plain_http_needs_no_tls_files() {
        let tls = ClientTls::with_ca_file(Some(PathBuf::from("/nonexistent/ca.pem")));
        assert!(tls.http_client("http://127.0.0.1:1", "t", Duration::from_secs(1)).is_ok());
        assert!(tls.http_client("https://127.0.0.1:1", "t", Duration::from_secs(1)).is_err());
    }
}
