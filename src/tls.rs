//! TLS pieces shared by the client and the server: rustls with *ring* as its crypto provider,
//! and PEM files read into certificates and keys.
//!
//! *ring* rather than rustls's default aws-lc-rs: aws-lc-sys's build wants cmake (and more)
//! on some machines, while *ring* builds with the C compiler any Rust install already uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key file that cannot be used. Each message is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read.
    // The reason is in the message, not a `source`: one line without repeats under anyhow.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not PEM, or holds no item of the kind wanted.
    #[error("{} holds no PEM {what} ({reason})", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was looked for: "certificate" or "private key".
        what: &'static str,
        /// The PEM parser's reason.
        reason: String,
    },
}

/// The crypto provider every TLS config of this program uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes *ring* the process-wide default provider, which the HTTP client (reqwest, built
/// without a provider of its own) needs before building any client, plain HTTP included.
/// Call it before building a `reqwest` client; calling it again does nothing.
pub fn install_provider() {
    // Err means a provider is installed already (by an earlier call): that one serves.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate of a PEM file (at least one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = read(path)?;
    let parse = |reason: String| PemError::Parse {
        path: path.to_path_buf(),
        what: "certificate",
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse(e.to_string()))?;
    if certs.is_empty() {
        return Err(parse("no BEGIN CERTIFICATE section".to_owned()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| PemError::Parse {
        path: path.to_path_buf(),
        what: "private key",
        reason: e.to_string(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|error| PemError::Read {
        path: path.to_path_buf(),
        error,
    })
}
