//! TLS for the connector and the token endpoint: rustls with ring, the target's `caFile` (or the system's
//! roots), an optional client certificate (`certFile` + `keyFile`), ALPN.
//!
//! The connector does TLS itself instead of leaving it to tonic, so that it reads the plaintext HTTP/2 frames
//! (GOAWAY, see `frames.rs`) and can tell a TLS alert from a reset. Every file is read and checked when the
//! configuration is prepared: a file that cannot be read or holds no PEM item of the right kind is refused
//! there, naming the connection-string parameter, not at the first handshake.

use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::config::ConfigError;
use super::target::Target;

/// The rustls crypto provider of every TLS client and server arbor makes: the process's default provider when
/// the application installed one (`CryptoProvider::install_default`, e.g. aws-lc-rs for post-quantum key
/// exchange), otherwise *ring*, which arbor builds with (a C compiler is all it needs). rustls 0.23.48
/// deprecates *ring*'s provider for its lack of post-quantum algorithms; the fallback stays here, in one place,
/// so an application chooses for all of arbor by installing its default.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    if let Some(installed) = rustls::crypto::CryptoProvider::get_default() {
        return Arc::clone(installed);
    }
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// ALPN protocol ids.
pub(crate) const ALPN_H2: &[u8] = b"h2";
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Everything a handshake needs; built once per connection configuration.
#[derive(Clone)]
pub(crate) struct TlsSettings {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    handshake_timeout: Duration,
    /// The ALPN protocol the server must pick (`h2` for gRPC), if any.
    require_alpn: Option<&'static [u8]>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("server_name", &self.server_name)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// TLS towards `target` offering and requiring `alpn`, with the target's files.
    pub(crate) fn for_target(
        target: &Target,
        alpn: &'static [u8],
        handshake_timeout: Duration,
    ) -> Result<TlsSettings, ConfigError> {
        let name = target
            .tls_server_name
            .clone()
            .unwrap_or_else(|| target.hosts[0].host.trim_matches(['[', ']']).to_string());
        let identity = target.cert_file.as_deref().zip(target.key_file.as_deref());
        let config = client_config(target.ca_file.as_deref(), identity)?;
        TlsSettings::new(config, &name, alpn, true, handshake_timeout)
    }

    /// TLS with `config` towards the host `name`, offering `alpn` (and requiring the server to pick it when
    /// `require` is set: HTTP/2 must be negotiated, HTTP/1.1 is the default without ALPN).
    pub(crate) fn new(
        mut config: rustls::ClientConfig,
        name: &str,
        alpn: &'static [u8],
        require: bool,
        handshake_timeout: Duration,
    ) -> Result<TlsSettings, ConfigError> {
        let server_name = ServerName::try_from(name.to_string()).map_err(|e| ConfigError::Invalid {
            field: "tlsServerName",
            reason: format!("`{name}` is not a TLS server name: {e}"),
        })?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(TlsSettings {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            handshake_timeout,
            require_alpn: require.then_some(alpn),
        })
    }

    /// The handshake on `tcp`, within the handshake timeout. The server must pick the required ALPN protocol
    /// (a gRPC server that does not speak HTTP/2 over TLS is refused here, as tonic does).
    pub(crate) async fn handshake(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let connect = self.connector.connect(self.server_name.clone(), tcp);
        let tls = tokio::time::timeout(self.handshake_timeout, connect)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TLS handshake timed out after {:?}", self.handshake_timeout),
                )
            })??;
        if let Some(want) = self.require_alpn {
            if tls.get_ref().1.alpn_protocol() != Some(want) {
                return Err(io::Error::other(format!(
                    "the server did not negotiate {} (ALPN)",
                    String::from_utf8_lossy(want)
                )));
            }
        }
        Ok(tls)
    }
}

/// A rustls client configuration trusting `ca_file` (or the system's roots), presenting `identity` (certificate
/// chain and key files) if given; no ALPN yet.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, ConfigError> {
    let roots = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certificates("caFile", path)? {
                roots.add(cert).map_err(|e| ConfigError::Pem {
                    field: "caFile",
                    path: path.display().to_string(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            roots
        }
        None => native_roots().clone(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid {
            field: "tls",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => {
            let chain = read_certificates("certFile", cert)?;
            let key_der = read_private_key(key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ConfigError::Pem {
                    field: "keyFile",
                    path: key.display().to_string(),
                    reason: format!("does not match `certFile`: {e}"),
                })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The system's trust anchors, loaded once per process (reading them takes a few milliseconds).
fn native_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "could not load a system trust anchor");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!(ignored, "no system trust anchors: TLS targets need a caFile");
        }
        roots
    })
}

fn read_pem_file(field: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::TlsFile {
        field,
        path: path.display().to_string(),
        source: Arc::new(e),
    })
}

/// Every certificate of a PEM file; none at all (an empty or garbage file) is an error naming `field`.
pub(crate) fn read_certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = read_pem_file(field, path)?;
    let pem_error = |reason: String| ConfigError::Pem {
        field,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error("holds no PEM certificate".into()));
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bytes = read_pem_file("keyFile", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| ConfigError::Pem {
        field: "keyFile",
        path: path.display().to_string(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "holds no PEM private key".into(),
            e => format!("malformed PEM: {e}"),
        },
    })
}
