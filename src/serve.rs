//! `arbor serve`: the tunnel service standalone, until SIGINT or SIGTERM.
//!
//! Prints `arbor serve: listening on <addr> (...)` once it accepts calls (scripts and tests wait for that
//! line) and `arbor serve: stopped` after a clean shutdown: calls in flight finished (up to 5 s), the store's
//! writer drained and the data directory flushed.
//!
//! A listening address beyond loopback served without TLS or without api keys is said on stderr before the
//! server starts (`arbor serve: warning: ...`), whatever `RUST_LOG` says: a log filter must not hide it.

use std::net::{SocketAddr, ToSocketAddrs};
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
    /// `--listen` is not a `host:port` that resolves.
    #[error("invalid --listen {value:?}: {reason}")]
    Listen {
        /// What was given.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// Resolves `--listen`: an address (`0.0.0.0:50051`, `[::1]:50051`) or a `host:port` (`localhost:50051`).
///
/// A name that resolves to several addresses is served on the first IPv4 one (else the first), so
/// `localhost` stays on loopback whichever order the resolver answers in.
///
/// # Errors
/// [`ServeError::Listen`] naming the value when it has no port or the host does not resolve.
pub fn resolve_listen(value: &str) -> Result<SocketAddr, ServeError> {
    let error = |reason: String| ServeError::Listen {
        value: value.to_string(),
        reason,
    };
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if value.rsplit_once(':').is_none_or(|(host, _)| host.is_empty()) {
        return Err(error(
            "expected host:port, e.g. localhost:50051 or 0.0.0.0:50051".into(),
        ));
    }
    let addrs: Vec<SocketAddr> = value
        .to_socket_addrs()
        .map_err(|err| error(err.to_string()))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| error("the host resolves to no address".into()))
}

/// What `arbor serve` says on stderr before it starts when `listen` is beyond loopback without TLS or without
/// api keys; `None` on loopback or when both are set.
#[must_use]
pub fn exposure_warning(listen: SocketAddr, tls: bool, api_keys: bool) -> Option<String> {
    if listen.ip().is_loopback() || (tls && api_keys) {
        return None;
    }
    let mut missing = Vec::new();
    if !tls {
        missing.push("without TLS (calls and api keys travel in clear text; add --tls-cert and --tls-key)");
    }
    if !api_keys {
        missing.push(
            "without api keys (anyone who reaches it may create, append to and delete tunnels; add \
             --api-key-file)",
        );
    }
    Some(format!(
        "arbor serve: warning: {listen} is beyond loopback and served {}",
        missing.join(" and ")
    ))
}

/// Serves until SIGINT or SIGTERM, then shuts down cleanly.
///
/// # Errors
/// [`ServeError`] when the store or server cannot start, or the final flush fails.
pub async fn run(options: ServeOptions) -> Result<(), ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    if let Some(warning) = exposure_warning(
        options.listen,
        options.tls.is_some(),
        options.api_key_file.is_some(),
    ) {
        eprintln!("{warning}");
    }
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
