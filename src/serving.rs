//! What every server arbor runs shares — the tunnel service, the introspection server and its Prometheus
//! listener: TLS from PEM files, api keys (tokens) checked on every call and never shown, gRPC reflection, and a
//! loopback default.
//!
//! Each server binds `127.0.0.1` unless told otherwise and warns when it listens beyond loopback without TLS.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::codegen::http;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// Certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "tree", derive(serde::Deserialize), serde(deny_unknown_fields))]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Why a server's TLS or keys could not be set up. Never carries a key.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A TLS file could not be read, or the certificate or key was refused.
    #[error("TLS setup failed ({path})")]
    Tls {
        /// The file, or both files when the pair was refused.
        path: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The api key (token) setting is invalid.
    #[error("invalid api keys{}: {reason}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    ApiKeys {
        /// The key file, if keys came from one.
        path: Option<PathBuf>,
        /// Why (never the key itself).
        reason: String,
    },
}

/// The api keys (tokens) a server accepts, as `api-key: <key>` or `authorization: Bearer <key>`. Debug never
/// shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeys(Arc<Vec<String>>);

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} redacted)", self.0.len())
    }
}

impl ApiKeys {
    /// Accepts any of `keys` (at least one, none empty).
    ///
    /// # Errors
    /// [`SecurityError::ApiKeys`] when there is no key, or one is empty or not a valid header value.
    pub fn new(keys: Vec<String>) -> Result<ApiKeys, SecurityError> {
        if keys.is_empty() {
            return Err(SecurityError::ApiKeys {
                path: None,
                reason: "no key given".into(),
            });
        }
        for (i, key) in keys.iter().enumerate() {
            if key.is_empty() || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                return Err(SecurityError::ApiKeys {
                    path: None,
                    reason: format!("key {} is empty or has characters a header cannot carry", i + 1),
                });
            }
        }
        Ok(ApiKeys(Arc::new(keys)))
    }

    /// Reads the keys from a file: one per line, blank lines and `#` comments ignored (several keys allow
    /// rotation).
    ///
    /// # Errors
    /// [`SecurityError::ApiKeys`] naming the file.
    pub fn from_file(path: &Path) -> Result<ApiKeys, SecurityError> {
        let text = std::fs::read_to_string(path).map_err(|e| SecurityError::ApiKeys {
            path: Some(path.to_path_buf()),
            reason: e.to_string(),
        })?;
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        ApiKeys::new(keys).map_err(|e| match e {
            SecurityError::ApiKeys { reason, .. } => SecurityError::ApiKeys {
                path: Some(path.to_path_buf()),
                reason,
            },
            other => other,
        })
    }

    /// The keys of both.
    #[cfg(feature = "introspection")]
    pub(crate) fn union(&self, other: &ApiKeys) -> ApiKeys {
        ApiKeys(Arc::new(self.0.iter().chain(other.0.iter()).cloned().collect()))
    }

    fn accepts(&self, presented: &[u8]) -> bool {
        // Compare every key in constant time for its length, so timing tells nothing about a key's content.
        self.0.iter().fold(false, |found, key| {
            let key = key.as_bytes();
            let same = key.len() == presented.len()
                && key.iter().zip(presented).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            found | same
        })
    }

    /// Checks the `api-key` or `authorization: Bearer` header of a request (gRPC metadata or plain HTTP).
    ///
    /// # Errors
    /// Why the request is refused, in words that show no key.
    pub(crate) fn verify(&self, headers: &http::HeaderMap) -> Result<(), &'static str> {
        let api_key = headers.get("api-key").map(|v| v.as_bytes());
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match api_key.or(bearer) {
            Some(presented) if self.accepts(presented) => Ok(()),
            Some(_) => Err("the api key is not accepted"),
            None => Err("an api key is required (`api-key` or `authorization: Bearer` metadata)"),
        }
    }

    /// The interceptor check: `Ok` if the request carries an accepted key, else UNAUTHENTICATED (with the
    /// tunnel protocol's FATAL kind in the metadata, which other clients ignore).
    #[allow(clippy::result_large_err)]
    pub(crate) fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.verify(request.metadata().as_ref()) {
            Ok(()) => Ok(request),
            Err(why) => Err(arbor_proto::tunnel::error::status(
                tonic::Code::Unauthenticated,
                why,
                None,
            )),
        }
    }
}

/// An interceptor for [`Server::layer`](tonic::transport::Server::layer): every call needs one of `keys` when
/// set.
#[allow(clippy::result_large_err)]
pub(crate) fn interceptor(
    keys: Option<ApiKeys>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |request: Request<()>| match &keys {
        Some(keys) => keys.check(request),
        None => Ok(request),
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|e| SecurityError::Tls {
        path: path.display().to_string(),
        source: Box::new(e),
    })
}

/// tonic's TLS settings for a gRPC server, from the PEM files.
///
/// # Errors
/// [`SecurityError::Tls`] naming the file that cannot be read.
pub(crate) fn grpc_tls(tls: &TlsFiles) -> Result<ServerTlsConfig, SecurityError> {
    let identity = Identity::from_pem(read_pem(&tls.cert)?, read_pem(&tls.key)?);
    Ok(ServerTlsConfig::new().identity(identity))
}

/// A tonic server builder with `limits`, serving TLS with `tls` when given (its handshake bounded by
/// `limits.handshake_timeout`).
///
/// # Errors
/// [`SecurityError::Tls`] naming the files when they cannot be read or tonic refuses them.
pub(crate) fn grpc_builder(
    tls: Option<&TlsFiles>,
    limits: &crate::connection_limits::ConnectionLimits,
) -> Result<tonic::transport::Server, SecurityError> {
    let builder = limits.grpc_builder();
    let Some(tls) = tls else {
        return Ok(builder);
    };
    builder
        .tls_config(grpc_tls(tls)?.timeout(limits.handshake_timeout))
        .map_err(|e| SecurityError::Tls {
            path: format!("{} / {}", tls.cert.display(), tls.key.display()),
            source: Box::new(e),
        })
}

/// A rustls server configuration for a plain HTTP/1.1 listener (ALPN `http/1.1`), from the PEM files.
///
/// # Errors
/// [`SecurityError::Tls`] naming the file that cannot be read or parsed, or both when rustls refuses the pair.
#[cfg(feature = "introspection")]
pub(crate) fn http1_tls(tls: &TlsFiles) -> Result<rustls::ServerConfig, SecurityError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let refused = |path: &Path, source: Box<dyn std::error::Error + Send + Sync>| SecurityError::Tls {
        path: path.display().to_string(),
        source,
    };
    let certs = CertificateDer::pem_slice_iter(&read_pem(&tls.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(&tls.cert, Box::new(e)))?;
    if certs.is_empty() {
        return Err(refused(&tls.cert, "holds no PEM certificate".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&read_pem(&tls.key)?).map_err(|e| refused(&tls.key, Box::new(e)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| SecurityError::Tls {
            path: format!("{} / {}", tls.cert.display(), tls.key.display()),
            source: Box::new(e),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The gRPC reflection services (v1 and v1alpha, as clients ask for either) over `descriptor_sets` and the
/// health service's.
pub(crate) fn reflection(
    descriptor_sets: &[&'static [u8]],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        descriptor_sets.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |b, set| b.register_encoded_file_descriptor_set(set),
        )
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// Logs a warning when `addr` is beyond loopback and nothing encrypts the traffic.
pub(crate) fn warn_if_exposed(what: &str, addr: SocketAddr, tls: bool) {
    if !tls && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "{what} listening beyond loopback without TLS");
    }
}

/// A server that runs until stopped, as [`serve_child_spec`] runs it under a supervisor.
pub(crate) trait Serving: Send + Sync + 'static {
    /// Resolves once when the server ends on its own (with why it failed, if it did).
    fn exited(&mut self) -> Option<tokio::sync::oneshot::Receiver<Result<(), String>>>;
    /// Stops it gracefully within `grace`.
    fn stop(self, grace: std::time::Duration) -> futures::future::BoxFuture<'static, Result<(), BoxError>>;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a supervised server starts (at each incarnation).
pub(crate) type StartServer<S> =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<S, BoxError>> + Send + Sync>;

/// A supervisor child running a server: started (bound and listening) when the child starts, stopped gracefully
/// when it stops, and failing — for its supervisor to restart it — when the server ends on its own.
pub(crate) fn serve_child_spec<S: Serving>(
    id: impl Into<String>,
    what: &'static str,
    start: StartServer<S>,
) -> arbor_actors::supervisor::ChildSpec {
    use arbor_actors::supervisor::{ChildSpec, Shutdown};
    ChildSpec::new(id, move |sup| {
        let start = Arc::clone(&start);
        async move {
            let (actor, _) = ractor::Actor::spawn_linked(
                None,
                ServeActor::<S>(std::marker::PhantomData),
                (what, start),
                sup,
            )
            .await?;
            Ok(actor.get_cell())
        }
    })
    .shutdown(Shutdown::Timeout(std::time::Duration::from_secs(10)))
}

/// Runs a [`Serving`] as an actor, so a supervisor starts, stops and restarts it in tree order.
struct ServeActor<S>(std::marker::PhantomData<fn() -> S>);

impl<S: Serving> ractor::Actor for ServeActor<S> {
    /// The server ended on its own: a failure the supervisor should see.
    type Msg = String;
    type State = (&'static str, Option<S>);
    type Arguments = (&'static str, StartServer<S>);

    async fn pre_start(
        &self,
        myself: ractor::ActorRef<String>,
        (what, start): Self::Arguments,
    ) -> Result<Self::State, ractor::ActorProcessingErr> {
        let mut server = start().await?;
        if let Some(exited) = server.exited() {
            tokio::spawn(async move {
                if let Ok(result) = exited.await {
                    // After a stop this reaches an actor that is gone, which is fine.
                    let reason = result
                        .err()
                        .unwrap_or_else(|| "the server stopped on its own".into());
                    let _ = myself.send_message(reason);
                }
            });
        }
        Ok((what, Some(server)))
    }

    async fn handle(
        &self,
        _myself: ractor::ActorRef<String>,
        reason: String,
        state: &mut Self::State,
    ) -> Result<(), ractor::ActorProcessingErr> {
        Err(format!("{} exited: {reason}", state.0).into())
    }

    async fn post_stop(
        &self,
        _myself: ractor::ActorRef<String>,
        state: &mut Self::State,
    ) -> Result<(), ractor::ActorProcessingErr> {
        if let Some(server) = state.1.take() {
            server.stop(std::time::Duration::from_secs(5)).await?;
        }
        Ok(())
    }
}
