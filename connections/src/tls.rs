//! TLS trust shared by the Postgres and ClickHouse connections: a CA file
//! given in the settings is the whole trust store (as libpq's
//! `sslrootcert`), not an addition to the system's CAs.

use openssl::ssl::SslConnectorBuilder;
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::ErrorKind),
    #[error("{0} holds no PEM certificate")]
    Empty(String),
    #[error(transparent)]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

/// Makes the certificates of the PEM file `ca_file` the only ones
/// `builder` trusts; with `None`, the system's CAs.
pub fn trust(builder: &mut SslConnectorBuilder, ca_file: Option<&str>) -> Result<(), TrustError> {
    let Some(file) = ca_file else {
        builder.set_default_verify_paths()?;
        return Ok(());
    };
    let pem = std::fs::read(file).map_err(|e| TrustError::Read(file.to_owned(), e.kind()))?;
    let certs = X509::stack_from_pem(&pem).map_err(|_| TrustError::Empty(file.to_owned()))?;
    if certs.is_empty() {
        return Err(TrustError::Empty(file.to_owned()));
    }
    let mut store = X509StoreBuilder::new()?;
    for cert in certs {
        store.add_cert(cert)?;
    }
    builder.set_verify_cert_store(store.build())?;
    Ok(())
}

/// Checks `ca_file` loads (for settings validation: exit 2 early).
pub fn check_ca_file(ca_file: &str) -> Result<(), String> {
    let mut builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
        .map_err(|e| e.to_string())?;
    trust(&mut builder, Some(ca_file)).map_err(|e| e.to_string())
}
