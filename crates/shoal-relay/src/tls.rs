//! TLS for the relay: the server's certificate and key, and the roots a device trusts.
//!
//! Owns: [`server_config`] (a rustls server configuration from PEM files) and
//! [`client_config`] (the web's public roots, plus the certificates of the PEM file named
//! by [`EXTRA_ROOTS_ENV`], for a relay with a private or self-signed certificate).
//!
//! Invariants: only rustls with the `ring` provider; TLS 1.2 and 1.3 with rustls's safe
//! defaults. A certificate is never accepted unverified: there is no "insecure" switch.
//!
//! Never: logs key material, or reads a file other than the ones named.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The environment variable naming a PEM file of extra trusted roots for `wss://` relays.
pub const EXTRA_ROOTS_ENV: &str = "SHOAL_RELAY_CA";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let bad = |e: rustls::pki_types::pem::Error| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not a PEM certificate file: {e}", path.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(bad)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    if certs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: holds no certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// The server's TLS configuration: the certificate chain in `cert`, the private key in
/// `key` (PEM). Errors name the file.
pub fn server_config(cert: &Path, key: &Path) -> std::io::Result<Arc<rustls::ServerConfig>> {
    let chain = certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not a PEM private key: {e}", key.display()),
        )
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} and {}: {e}", cert.display(), key.display()),
            )
        })?;
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The device's TLS configuration: the web's public roots, and those of the PEM file
/// `extra_roots` (when `None`: the file named by [`EXTRA_ROOTS_ENV`], if set).
pub fn client_config(extra_roots: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let from_env = std::env::var_os(EXTRA_ROOTS_ENV).map(std::path::PathBuf::from);
    if let Some(path) = extra_roots.or(from_env.as_deref()) {
        for c in certs(path).map_err(|e| e.to_string())? {
            roots.add(c).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
