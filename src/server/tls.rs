//! HTTPS for `serve`: the server's certificate chain and private key as a TLS acceptor.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::tls::{PemError, provider, read_certificates, read_private_key};

/// Why the server's certificate and key cannot serve TLS. One line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file is missing, unreadable or not PEM.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// rustls refused the pair (a key that does not match the certificate, an unsupported key).
    #[error("cannot serve TLS with certificate {cert} and key {key}: {reason}")]
    Refused {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// rustls's reason.
        reason: String,
    },
}

/// A TLS acceptor for the chain in `cert` (leaf first) and the key in `key`, both PEM,
/// speaking HTTP/1.1 only (the server has no HTTP/2).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsSetupError> {
    let chain = read_certificates(cert)?;
    let private = read_private_key(key)?;
    let refused = |e: rustls::Error| TlsSetupError::Refused {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reason: e.to_string(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(refused)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
