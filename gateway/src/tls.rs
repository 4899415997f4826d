//! TLS with rustls (ring provider) from PEM files: the server's certificate
//! chain and key, and for clients a CA certificate to trust.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS setting that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read or parsed.
    #[error("cannot read {what} from {path}: {message}")]
    Pem {
        /// "certificate chain", "private key" or "CA certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's error.
        message: String,
    },
    /// The certificate file contains no certificate.
    #[error("{path} contains no PEM certificate; expected at least one `BEGIN CERTIFICATE` block")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// rustls rejected the configuration, for example a key that does not match the certificate.
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The ring provider, the one the workspace builds rustls with.
// NOTE: rustls 0.23.48 deprecates ring's `default_provider` because it
// offers no post-quantum key exchange; aws-lc-rs would, at the cost of a C build.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |message: String| TlsError::Pem { what, path: path.to_owned(), message };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| pem_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(error.to_string()))?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certificates)
}

/// Builds the server's TLS configuration from a PEM certificate chain and a
/// PEM private key (PKCS#8, PKCS#1 or SEC1). The server speaks HTTP/1.1,
/// which WebSocket upgrades need.
pub fn server_config(certificate: &Path, private_key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certificates(certificate, "certificate chain")?;
    let key = PrivateKeyDer::from_pem_file(private_key)
        .map_err(|error| TlsError::Pem { what: "private key", path: private_key.to_owned(), message: error.to_string() })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Builds a client configuration that trusts only the CA certificates in `ca_file`.
pub fn client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(ca_file, "CA certificate")? {
        roots.add(certificate)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
