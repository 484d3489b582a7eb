//! HTTPS to ClickHouse with rustls (ring): the server's certificate checked
//! against `ca_file` or the system's CAs. Built here rather than by the
//! clickhouse crate's TLS features, whose default client panics on a machine
//! without CA certificates even for plain http, and cannot take a CA file.

use std::sync::Arc;

use clickhouse::Client;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn roots(ca_file: Option<&std::path::Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(match ca_file {
            Some(path) => format!("ca_file {} holds no certificate", path.display()),
            None => "no CA certificates on this system (install ca-certificates or set ca_file)".into(),
        });
    }
    Ok(roots)
}

/// A ClickHouse client that speaks HTTPS only.
pub(crate) fn client(ca_file: Option<&std::path::Path>) -> Result<Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca_file)?)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    Ok(Client::with_http_client(HyperClient::builder(TokioExecutor::new()).build(https)))
}
