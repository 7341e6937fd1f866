//! The tonic server: the tunnel service with gRPC health and reflection, optional TLS (rustls, PEM files) and
//! an optional api key checked on every RPC, listening on 127.0.0.1 unless told otherwise; startable on its
//! own ([`TunnelServer::start`]) or as a supervised child ([`TunnelServer::child_spec`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arbor_actors::supervisor::ChildSpec;
use arbor_proto::tunnel::v1::tunnel_service_server::TunnelServiceServer;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::serving::{self, BoundGrpc, BringUpError, GrpcServing, SecurityError, ServingFailed};

use super::config::Limits;
use super::error::StoreError;
use super::grpc::TunnelGrpc;
use super::request_cap::RequestCap;
use super::status_kind::KindedStatus;
use super::store::TunnelStore;

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

pub use crate::connection_limits::ConnectionLimits;
pub use crate::serving::{ApiKeys, Role, TlsFiles};

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
    /// Bounds on connections and requests. Default [`ConnectionLimits::default`]; its request timeout must
    /// exceed `limits.max_wait` (long polls are not cut).
    pub connection_limits: ConnectionLimits,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: DEFAULT_LISTEN.parse().expect("a valid default address"),
            tls: None,
            api_keys: None,
            limits: Limits::default(),
            maintenance_interval: Duration::from_secs(1),
            connection_limits: ConnectionLimits::default(),
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

    /// Sets the bounds on connections and requests (default [`ConnectionLimits::default`]).
    pub fn connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.connection_limits = limits;
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
    /// A TLS file could not be read, the certificate or key was refused, or the api key setting is invalid.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// An option is out of bounds.
    #[error("invalid server option {field}: {reason}")]
    InvalidOptions {
        /// The option's path, e.g. `connection_limits.request_timeout`.
        field: String,
        /// Why, with the value.
        reason: String,
    },
    /// The reflection service could not be built from the descriptor set.
    #[error("gRPC reflection setup failed")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The HTTP/2 server failed.
    #[error("the gRPC server failed")]
    Transport(#[source] ServingFailed),
    /// The store failed to flush at shutdown.
    #[error("the tunnel store failed")]
    Store(#[source] StoreError),
}

impl BringUpError for ServerError {
    fn bind(addr: SocketAddr, source: std::io::Error) -> Self {
        ServerError::Bind { addr, source }
    }

    fn reflection(source: tonic_reflection::server::Error) -> Self {
        ServerError::Reflection(source)
    }
}

/// A running tunnel server.
#[derive(Debug)]
pub struct RunningServer {
    grpc: GrpcServing,
    maintenance: JoinHandle<()>,
}

impl RunningServer {
    /// The address it listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.grpc.local_addr()
    }

    /// Stops accepting calls, lets calls in flight finish (up to `grace`), then closes the connections still
    /// open (long polls, streams) and stops maintenance. When it returns, nothing of the server runs or holds
    /// the store any more. The store stays open (it may outlive a server, e.g. across supervisor restarts);
    /// close it with [`TunnelStore::close`].
    ///
    /// # Errors
    /// [`ServerError::Transport`] if the server had failed.
    pub async fn stop(mut self, grace: Duration) -> Result<(), ServerError> {
        self.maintenance.abort();
        let _ = (&mut self.maintenance).await;
        self.grpc.stop(grace).await.map_err(ServerError::Transport)
    }
}

/// Starts tunnel servers.
#[derive(Debug, Clone, Copy)]
pub struct TunnelServer;

impl TunnelServer {
    /// Binds `options.listen` and serves `store` with health, reflection, and the configured TLS and api
    /// keys, plus the store's maintenance every `options.maintenance_interval`. Returns once listening.
    ///
    /// # Errors
    /// [`ServerError::InvalidOptions`], [`ServerError::Bind`], [`ServerError::Security`],
    /// [`ServerError::Reflection`].
    pub async fn start(
        store: Arc<TunnelStore>,
        options: ServerOptions,
    ) -> Result<RunningServer, ServerError> {
        options
            .connection_limits
            .validate(options.limits.max_wait)
            .map_err(|e| {
                let e = e.within("connection_limits");
                ServerError::InvalidOptions {
                    field: e.field,
                    reason: e.reason,
                }
            })?;
        let (tls, connection_limits) = (options.tls.as_ref(), &options.connection_limits);
        let bound =
            BoundGrpc::bind::<ServerError>("tunnel service", options.listen, tls, connection_limits).await?;
        let local_addr = bound.local_addr();
        // The service itself, its request fields capped and the framework's own statuses given an error kind.
        let tunnel_service = TunnelServiceServer::new(TunnelGrpc::new(Arc::clone(&store), options.limits))
            .max_decoding_message_size(options.limits.max_request_bytes())
            .max_encoding_message_size(options.limits.max_response_bytes());
        let capped = KindedStatus::new(RequestCap::new(tunnel_service, &options.limits));
        let keys = options.api_keys.clone();
        let grpc = bound
            .serve::<ServerError>(TunnelServiceServer::<TunnelGrpc>::NAME, Routes::new(capped), keys)
            .await?;
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
            max_connections = options.connection_limits.max_connections,
            request_timeout = %humantime::format_duration(options.connection_limits.request_timeout),
            tls = options.tls.is_some(),
            api_keys = options.api_keys.is_some(),
            durable = store.is_durable(),
            "tunnel service listening"
        );
        Ok(RunningServer { grpc, maintenance })
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
        let start: serving::StartServer<RunningServer> = Arc::new(move || {
            let (store, options, on_start) = (Arc::clone(&store), options.clone(), Arc::clone(&on_start));
            Box::pin(async move {
                let server = TunnelServer::start(store, options).await?;
                on_start(server.local_addr());
                Ok(server)
            })
        });
        serving::serve_child_spec(id, "tunnel server", start)
    }
}

impl serving::Serving for RunningServer {
    type StopError = ServerError;

    fn grpc(&mut self) -> &mut GrpcServing {
        &mut self.grpc
    }

    async fn stop(self, grace: Duration) -> Result<(), ServerError> {
        RunningServer::stop(self, grace).await
    }
}
