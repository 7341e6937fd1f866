//! `arbor serve`: the tunnel service standalone, until SIGINT or SIGTERM.
//!
//! Prints `arbor serve: listening on <addr> (...)` once it accepts calls (scripts and tests wait for that
//! line) and `arbor serve: stopped` after a clean shutdown: calls in flight finished (up to 5 s), the store's
//! writer drained and the data directory flushed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::tunnel_service::{
    ApiKeys, ConnectionLimits, ServerError, ServerOptions, StoreError, StoreOptions, TlsFiles, TunnelServer,
    TunnelStore,
};

/// What `arbor serve` is told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The data directory (durable), or `None` (in memory).
    pub data: Option<PathBuf>,
    /// TLS certificate and key files.
    pub tls: Option<TlsFiles>,
    /// A file of accepted api keys, one per line.
    pub api_key_file: Option<PathBuf>,
    /// Heartbeat timeout for clients that ask for none.
    pub default_heartbeat_timeout: Duration,
    /// How long a CLOSING channel waits for its owner.
    pub closing_timeout: Duration,
    /// Most live sessions per tunnel.
    pub max_sessions_per_tunnel: usize,
    /// Bounds on connections and requests.
    pub connection_limits: ConnectionLimits,
}

/// Why `arbor serve` failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened or flushed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server could not start or failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// Serves until SIGINT or SIGTERM, then shuts down cleanly.
///
/// # Errors
/// [`ServeError`] when the store or server cannot start, or the final flush fails.
pub async fn run(options: ServeOptions) -> Result<(), ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let api_keys = options
        .api_key_file
        .as_deref()
        .map(ApiKeys::from_file)
        .transpose()
        .map_err(ServerError::from)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let store_options = match &options.data {
        Some(dir) => StoreOptions::durable(dir),
        None => StoreOptions::in_memory(),
    }
    .default_heartbeat_timeout(options.default_heartbeat_timeout)
    .closing_timeout(options.closing_timeout)
    .max_sessions_per_tunnel(options.max_sessions_per_tunnel);
    let store = TunnelStore::open_async(store_options).await?;
    let server_options = ServerOptions::default()
        .listen(options.listen)
        .tls(options.tls.clone())
        .api_keys(api_keys)
        .connection_limits(options.connection_limits);
    let server = TunnelServer::start(store.clone(), server_options).await?;
    let storage = match &options.data {
        Some(dir) => format!("durable in {}", dir.display()),
        None => "in memory".to_string(),
    };
    println!(
        "arbor serve: listening on {} ({storage}{}{})",
        server.local_addr(),
        if options.tls.is_some() { ", TLS" } else { "" },
        if options.api_key_file.is_some() {
            ", api key required"
        } else {
            ""
        },
    );
    let signal = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal, "arbor serve: shutting down");
    let stopped = server.stop(Duration::from_secs(5)).await;
    let closed = store.close_async().await;
    stopped?;
    closed?;
    println!("arbor serve: stopped ({signal})");
    Ok(())
}
