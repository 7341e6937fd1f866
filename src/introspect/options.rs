//! [`IntrospectionOptions`]: where the introspection server listens, how it is secured, what it keeps; the
//! `[introspection]` section of a tree's TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::connection_limits::{ConnectionLimits, InvalidOption};
use crate::serving::{ApiKeys, SecurityError, TlsFiles};

/// The default gRPC listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50052";

/// The default Prometheus listen address: loopback only, the port commonly used for Prometheus exporters.
pub const DEFAULT_PROMETHEUS_LISTEN: &str = "127.0.0.1:9464";

/// How the introspection server runs. As TOML (every key optional):
///
/// ```toml
/// [introspection]
/// listen = "127.0.0.1:50052"                      # port 0 picks a free port
/// tls = { cert = "inspect.pem", key = "inspect.key" }
/// token_file = "/etc/arbor/inspect.tokens"        # one token a line; every call must carry one
/// history_per_node = 32
/// replay_events = 1024
///
/// [introspection.prometheus]                      # the Prometheus exporter (off without this table)
/// listen = "127.0.0.1:9464"
///
/// [introspection.connections]                     # bounds on both listeners (ConnectionLimits)
/// max_connections = 1024
/// request_timeout = "60s"
/// handshake_timeout = "10s"                       # also bounds a scrape's request headers
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct IntrospectionOptions {
    /// The gRPC listen address. Default `127.0.0.1:50052`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Serve TLS with these PEM files (and the Prometheus listener too). Default none.
    pub tls: Option<TlsFiles>,
    /// A file of accepted tokens, one a line (`#` comments): every call must then carry one, as
    /// `authorization: Bearer <token>` or `api-key: <token>` (the Prometheus listener too). Read at each start
    /// of the server. Default none.
    pub token_file: Option<PathBuf>,
    /// Accepted tokens given in code (added to those of `token_file`). Debug never shows them.
    #[serde(skip)]
    pub tokens: Option<ApiKeys>,
    /// The Prometheus exporter, when set. Default none.
    pub prometheus: Option<PrometheusOptions>,
    /// How many lifecycle records (exits, restarts) the server keeps per node. Default 32.
    pub history_per_node: usize,
    /// How many of the most recent events the server holds for watchers that resume or replay. Default 1024.
    pub replay_events: usize,
    /// Bounds on the connections and requests of both listeners (each listener has its own connection count);
    /// on the Prometheus listener the handshake timeout also bounds the reading of a request's headers.
    /// Default [`ConnectionLimits::default`].
    pub connections: ConnectionLimits,
}

impl Default for IntrospectionOptions {
    fn default() -> Self {
        IntrospectionOptions {
            listen: DEFAULT_LISTEN.parse().expect("a valid default address"),
            tls: None,
            token_file: None,
            tokens: None,
            prometheus: None,
            history_per_node: 32,
            replay_events: 1024,
            connections: ConnectionLimits::default(),
        }
    }
}

/// The Prometheus exporter: the `metrics` facade's recorder for this process, served as Prometheus text at
/// `GET /metrics` on its own HTTP/1.1 listener, with the gRPC listener's TLS and token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PrometheusOptions {
    /// The listen address. Default `127.0.0.1:9464`; port 0 picks a free port.
    pub listen: SocketAddr,
}

impl Default for PrometheusOptions {
    fn default() -> Self {
        PrometheusOptions {
            listen: DEFAULT_PROMETHEUS_LISTEN
                .parse()
                .expect("a valid default address"),
        }
    }
}

impl PrometheusOptions {
    /// Listens on `addr` (default `127.0.0.1:9464`).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }
}

impl IntrospectionOptions {
    /// Listens on `addr` (default `127.0.0.1:50052`).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Serves TLS with these PEM files (default: no TLS).
    pub fn tls(mut self, tls: impl Into<Option<TlsFiles>>) -> Self {
        self.tls = tls.into();
        self
    }

    /// Requires one of the tokens in this file on every call (default: none required).
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// Requires one of these tokens on every call (default: none required).
    pub fn tokens(mut self, tokens: impl Into<Option<ApiKeys>>) -> Self {
        self.tokens = tokens.into();
        self
    }

    /// Serves Prometheus metrics (default: no exporter).
    pub fn prometheus(mut self, prometheus: impl Into<Option<PrometheusOptions>>) -> Self {
        self.prometheus = prometheus.into();
        self
    }

    /// Keeps this many lifecycle records per node (default 32, at least 1).
    pub fn history_per_node(mut self, records: usize) -> Self {
        self.history_per_node = records;
        self
    }

    /// Holds this many recent events for watchers that resume (default 1024, at least 1).
    pub fn replay_events(mut self, events: usize) -> Self {
        self.replay_events = events;
        self
    }

    /// Bounds the connections and requests (default [`ConnectionLimits::default`]).
    pub fn connections(mut self, limits: ConnectionLimits) -> Self {
        self.connections = limits;
        self
    }

    /// Checks what the types cannot; the error names the field (`history_per_node`, `connections.<field>`).
    ///
    /// # Errors
    /// [`InvalidOption`] for the first option at fault.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        self.connections
            .validate(std::time::Duration::ZERO)
            .map_err(|e| e.within("connections"))?;
        if self.history_per_node == 0 {
            return Err(InvalidOption::new("history_per_node", "must be at least 1"));
        }
        if self.replay_events == 0 {
            return Err(InvalidOption::new("replay_events", "must be at least 1"));
        }
        Ok(())
    }

    /// The tokens to require: those of `token_file` (read now) and `tokens`; `None` when neither is set.
    pub(crate) fn accepted_tokens(&self) -> Result<Option<ApiKeys>, SecurityError> {
        let from_file = self.token_file.as_deref().map(ApiKeys::from_file).transpose()?;
        Ok(match (from_file, &self.tokens) {
            (Some(a), Some(b)) => Some(a.union(b)),
            (a, b) => a.or_else(|| b.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_read_from_toml_with_durations_in_words_and_are_checked_by_name() {
        let options: IntrospectionOptions =
            toml::from_str("[connections]\nmax_connections = 8\nrequest_timeout = \"5s\"\n").unwrap();
        assert_eq!(options.connections.max_connections, 8);
        assert_eq!(
            options.connections.request_timeout,
            std::time::Duration::from_secs(5)
        );
        assert_eq!(
            options.connections.handshake_timeout,
            ConnectionLimits::default().handshake_timeout,
            "keys left out keep their defaults"
        );
        assert!(options.validate().is_ok());

        let options: IntrospectionOptions =
            toml::from_str("[connections]\nrequest_timeout = \"0s\"\n").unwrap();
        let InvalidOption { field, .. } = options.validate().unwrap_err();
        assert_eq!(field, "connections.request_timeout");
        assert!(toml::from_str::<IntrospectionOptions>("[connections]\nmax_conections = 8\n").is_err());
    }
}
