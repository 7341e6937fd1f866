//! The tonic server: the tunnel service with gRPC health and reflection, optional TLS (rustls, PEM files) and
//! an optional api key checked on every RPC, listening on 127.0.0.1 unless told otherwise; startable on its
//! own ([`TunnelServer::start`]) or as a supervised child ([`TunnelServer::child_spec`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arbor_actors::supervisor::{ChildSpec, Shutdown};
use arbor_proto::tunnel::v1::tunnel_service_server::TunnelServiceServer;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

use super::config::Limits;
use super::error::StoreError;
use super::grpc::TunnelGrpc;
use super::store::TunnelStore;
use crate::closable::Closer;

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// The api keys a server accepts, as `api-key: <key>` or `authorization: Bearer <key>`. Debug never shows them.
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
    /// [`ServerError::ApiKeys`] when there is no key, or one is empty or not a valid header value.
    pub fn new(keys: Vec<String>) -> Result<ApiKeys, ServerError> {
        if keys.is_empty() {
            return Err(ServerError::ApiKeys {
                path: None,
                reason: "no key given".into(),
            });
        }
        for (i, key) in keys.iter().enumerate() {
            if key.is_empty() || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                return Err(ServerError::ApiKeys {
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
    /// [`ServerError::ApiKeys`] naming the file.
    pub fn from_file(path: &Path) -> Result<ApiKeys, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServerError::ApiKeys {
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
            ServerError::ApiKeys { reason, .. } => ServerError::ApiKeys {
                path: Some(path.to_path_buf()),
                reason,
            },
            other => other,
        })
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

    /// The interceptor check: `Ok` if the request carries an accepted key.
    #[allow(clippy::result_large_err)]
    fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let metadata = request.metadata();
        let api_key = metadata.get("api-key").map(|v| v.as_bytes());
        let bearer = metadata
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match api_key.or(bearer) {
            Some(presented) if self.accepts(presented) => Ok(request),
            Some(_) => Err(arbor_proto::tunnel::error::status(
                tonic::Code::Unauthenticated,
                "the api key is not accepted",
                None,
            )),
            None => Err(arbor_proto::tunnel::error::status(
                tonic::Code::Unauthenticated,
                "an api key is required (`api-key` or `authorization: Bearer` metadata)",
                None,
            )),
        }
    }
}

/// How to serve.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerOptions {
    /// The address to listen on. Default `127.0.0.1:50051`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// TLS, when set. Default none (plain HTTP/2).
    pub tls: Option<TlsFiles>,
    /// Required api keys, when set. Default none.
    pub api_keys: Option<ApiKeys>,
    /// Request limits. Default [`Limits::default`].
    pub limits: Limits,
    /// How often to expire clients and CLOSING channels and apply age retention. Default 1 s.
    pub maintenance_interval: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: DEFAULT_LISTEN.parse().expect("a valid default address"),
            tls: None,
            api_keys: None,
            limits: Limits::default(),
            maintenance_interval: Duration::from_secs(1),
        }
    }
}

impl ServerOptions {
    /// Sets the listen address (default `127.0.0.1:50051`).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Serves TLS with these PEM files (default: no TLS).
    pub fn tls(mut self, tls: impl Into<Option<TlsFiles>>) -> Self {
        self.tls = tls.into();
        self
    }

    /// Requires one of these api keys on every RPC (default: none required).
    pub fn api_keys(mut self, keys: impl Into<Option<ApiKeys>>) -> Self {
        self.api_keys = keys.into();
        self
    }

    /// Sets the request limits (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the maintenance interval (default 1 s).
    pub fn maintenance_interval(mut self, interval: Duration) -> Self {
        self.maintenance_interval = interval;
        self
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file could not be read, or tonic refused the certificate or key.
    #[error("TLS setup failed ({path})")]
    Tls {
        /// The file, or "certificate/key" when tonic refused them.
        path: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The api key setting is invalid.
    #[error("invalid api keys{}: {reason}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    ApiKeys {
        /// The key file, if keys came from one.
        path: Option<PathBuf>,
        /// Why (never the key itself).
        reason: String,
    },
    /// The reflection service could not be built from the descriptor set.
    #[error("gRPC reflection setup failed")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The HTTP/2 server failed.
    #[error("the gRPC server failed")]
    Transport(#[source] tonic::transport::Error),
    /// The store failed to flush at shutdown.
    #[error("the tunnel store failed")]
    Store(#[source] StoreError),
}

/// A running tunnel server.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    maintenance: JoinHandle<()>,
    /// Ends the connections still open when the grace period is over.
    closer: Arc<Closer>,
    /// Resolves when the serve task ends, with its error if it failed.
    exit: Option<oneshot::Receiver<Result<(), String>>>,
}

impl RunningServer {
    /// The address it listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting calls, lets calls in flight finish (up to `grace`), then closes the connections still
    /// open (long polls, streams) and stops maintenance. When it returns, nothing of the server runs or holds
    /// the store any more. The store stays open (it may outlive a server, e.g. across supervisor restarts);
    /// close it with [`TunnelStore::close`].
    ///
    /// # Errors
    /// [`ServerError::Transport`] if the server had failed.
    pub async fn stop(mut self, grace: Duration) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.maintenance.abort();
        let _ = (&mut self.maintenance).await;
        let result = match tokio::time::timeout(grace, &mut self.serve).await {
            Ok(joined) => joined,
            Err(_) => {
                // The server waits for its connections to close: close them.
                self.closer.close_all();
                match tokio::time::timeout(CLOSE_WAIT, &mut self.serve).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        self.serve.abort();
                        (&mut self.serve).await
                    }
                }
            }
        };
        match result {
            Ok(served) => served.map_err(ServerError::Transport),
            Err(_) => Ok(()),
        }
    }
}

/// How long [`RunningServer::stop`] waits for closed connections to wind down before it aborts the server.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Starts tunnel servers.
#[derive(Debug, Clone, Copy)]
pub struct TunnelServer;

impl TunnelServer {
    /// Binds `options.listen` and serves `store` with health, reflection, and the configured TLS and api
    /// keys, plus the store's maintenance every `options.maintenance_interval`. Returns once listening.
    ///
    /// # Errors
    /// [`ServerError::Bind`], [`ServerError::Tls`], [`ServerError::Reflection`].
    pub async fn start(
        store: Arc<TunnelStore>,
        options: ServerOptions,
    ) -> Result<RunningServer, ServerError> {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: options.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: options.listen,
            source,
        })?;
        let mut builder = Server::builder();
        if let Some(tls) = &options.tls {
            let read = |path: &Path| {
                std::fs::read(path).map_err(|e| ServerError::Tls {
                    path: path.display().to_string(),
                    source: Box::new(e),
                })
            };
            let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(identity))
                .map_err(|e| ServerError::Tls {
                    path: format!("{} / {}", tls.cert.display(), tls.key.display()),
                    source: Box::new(e),
                })?;
        } else if !local_addr.ip().is_loopback() {
            tracing::warn!(addr = %local_addr, "tunnel service listening beyond loopback without TLS");
        }

        let grpc = TunnelGrpc::new(Arc::clone(&store), options.limits);
        // Decoding limit above the batch limit, so an oversized batch meets the validation that names the field.
        let decode_limit = options.limits.max_batch_bytes.saturating_mul(2).max(4 << 20);
        let tunnel_service = TunnelServiceServer::new(grpc).max_decoding_message_size(decode_limit);
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<TunnelServiceServer<TunnelGrpc>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(arbor_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(ServerError::Reflection)?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(arbor_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(ServerError::Reflection)?;

        let keys = options.api_keys.clone();
        let auth = move |request: Request<()>| match &keys {
            Some(keys) => keys.check(request),
            None => Ok(request),
        };
        let router = builder
            .layer(tonic::service::InterceptorLayer::new(auth))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(tunnel_service);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let closer = Closer::new();
        let incoming = {
            use futures::StreamExt;
            let closer_for_accept = Arc::new(closer);
            let wrap = Arc::clone(&closer_for_accept);
            let incoming = TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map(move |accepted| accepted.map(|stream| wrap.wrap(stream)));
            (incoming, closer_for_accept)
        };
        let (incoming, closer) = incoming;
        let (exit_tx, exit_rx) = oneshot::channel();
        let serve = tokio::spawn(async move {
            let result = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = shutdown_rx.await;
                })
                .await;
            let _ = exit_tx.send(result.as_ref().map(|_| ()).map_err(|e| format!("{e}")));
            result
        });
        let maintenance = {
            let store = Arc::clone(&store);
            let interval = options.maintenance_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    store.maintain().await;
                }
            })
        };
        tracing::info!(
            addr = %local_addr,
            tls = options.tls.is_some(),
            api_keys = options.api_keys.is_some(),
            durable = store.is_durable(),
            "tunnel service listening"
        );
        Ok(RunningServer {
            local_addr,
            shutdown: Some(shutdown_tx),
            serve,
            maintenance,
            closer,
            exit: Some(exit_rx),
        })
    }

    /// A supervisor child that runs the server: started (bound and listening) when the child starts, stopped
    /// gracefully when the child stops, restarted by the supervisor if the server fails. The store outlives the
    /// child's restarts. `on_start` is told the bound address at every start (useful with port 0).
    pub fn child_spec(
        id: impl Into<String>,
        store: Arc<TunnelStore>,
        options: ServerOptions,
        on_start: impl Fn(SocketAddr) + Send + Sync + 'static,
    ) -> ChildSpec {
        let on_start: Arc<dyn Fn(SocketAddr) + Send + Sync> = Arc::new(on_start);
        ChildSpec::new(id, move |sup| {
            let args = ServerActorArgs {
                store: Arc::clone(&store),
                options: options.clone(),
                on_start: Arc::clone(&on_start),
            };
            async move {
                let (actor, _) = Actor::spawn_linked(None, ServerActor, args, sup).await?;
                Ok(actor.get_cell())
            }
        })
        .shutdown(Shutdown::Timeout(Duration::from_secs(10)))
    }
}

/// Runs a [`RunningServer`] as an actor, so a supervisor starts, stops and restarts it in tree order.
struct ServerActor;

struct ServerActorArgs {
    store: Arc<TunnelStore>,
    options: ServerOptions,
    on_start: Arc<dyn Fn(SocketAddr) + Send + Sync>,
}

enum ServerActorMsg {
    /// The server task ended on its own: a failure the supervisor should see.
    Exited(String),
}

impl Actor for ServerActor {
    type Msg = ServerActorMsg;
    type State = Option<RunningServer>;
    type Arguments = ServerActorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ServerActorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut server = TunnelServer::start(args.store, args.options).await?;
        (args.on_start)(server.local_addr());
        if let Some(exit) = server.exit.take() {
            tokio::spawn(async move {
                if let Ok(result) = exit.await {
                    // After a stop this reaches an actor that is gone, which is fine.
                    let reason = result
                        .err()
                        .unwrap_or_else(|| "the server stopped on its own".into());
                    let _ = myself.send_message(ServerActorMsg::Exited(reason));
                }
            });
        }
        Ok(Some(server))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ServerActorMsg::Exited(reason) => Err(format!("tunnel server exited: {reason}").into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(server) = state.take() {
            server.stop(Duration::from_secs(5)).await?;
        }
        Ok(())
    }
}
