//! [`ConnectionLimits`]: what bounds a server's connections and requests, whatever clients send — shared by the
//! tunnel service, the introspection server and its Prometheus listener.
//!
//! Memory held for requests is bounded by connections × requests handled at once per connection × the decode
//! limit (the HTTP/2 flow-control windows hold back what a connection sends beyond that); time by the request
//! timeout, the keepalives (a peer that stops answering is dropped) and the handshake timeout (a connection
//! that never speaks is closed).

use std::time::Duration;

/// An option that cannot work, naming it by its path (`request_timeout`, `connections.max_connections`) and
/// saying why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidOption {
    /// The option's path.
    pub field: String,
    /// Why it cannot work.
    pub reason: String,
}

impl InvalidOption {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidOption {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error with its path under `section` (`connections` → `connections.request_timeout`).
    pub fn within(self, section: &str) -> Self {
        InvalidOption {
            field: format!("{section}.{}", self.field),
            reason: self.reason,
        }
    }
}

/// Bounds on a server's connections and requests, each setter stating its default. As TOML (the
/// `[introspection.connections]` table; every key optional):
///
/// ```toml
/// max_connections = 1024
/// max_concurrent_streams = 2048
/// concurrency_limit_per_connection = 2048
/// request_timeout = "60s"
/// handshake_timeout = "10s"
/// http2_keepalive_interval = "30s"
/// http2_keepalive_timeout = "20s"
/// tcp_keepalive = "60s"
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "tree",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// Most connections open at once; one more is closed as soon as it is accepted (the client sees the
    /// connection reset: UNAVAILABLE, retryable). Keep it below the process's open-file limit. Default 1,024.
    pub max_connections: usize,
    /// Most HTTP/2 streams (calls) open at once on one connection; the client waits for a free one. Above the
    /// tunnel channel limit, so one worker can long-poll every channel of a tunnel on one connection.
    /// Default 2,048.
    pub max_concurrent_streams: u32,
    /// Most requests of one connection handled at once; the others wait for a slot. Default 2,048.
    pub concurrency_limit_per_connection: usize,
    /// Longest a request may take until its answer starts (a stream's later messages are not bounded by it):
    /// `CANCELLED` (retryable) beyond it. It must exceed the longest long poll (the tunnel service's
    /// `Limits::max_wait`). Default 60 s.
    #[cfg_attr(feature = "tree", serde(with = "humantime_serde"))]
    pub request_timeout: Duration,
    /// Longest a new connection may take to send its first bytes, and then to complete its TLS handshake (the
    /// Prometheus listener: to send a request's headers); it is closed beyond. Default 10 s.
    #[cfg_attr(feature = "tree", serde(with = "humantime_serde"))]
    pub handshake_timeout: Duration,
    /// How often an HTTP/2 connection is pinged. Default 30 s.
    #[cfg_attr(feature = "tree", serde(with = "humantime_serde"))]
    pub http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed. Default 20 s.
    #[cfg_attr(feature = "tree", serde(with = "humantime_serde"))]
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive idle time of accepted sockets (the kernel drops peers that vanished). Default 60 s.
    #[cfg_attr(feature = "tree", serde(with = "humantime_serde"))]
    pub tcp_keepalive: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1_024,
            max_concurrent_streams: 2_048,
            concurrency_limit_per_connection: 2_048,
            request_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            tcp_keepalive: Duration::from_secs(60),
        }
    }
}

impl ConnectionLimits {
    /// Sets the most connections open at once (default 1,024).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// Sets the most streams open at once per connection (default 2,048).
    pub fn max_concurrent_streams(mut self, streams: u32) -> Self {
        self.max_concurrent_streams = streams;
        self
    }

    /// Sets the most requests handled at once per connection (default 2,048).
    pub fn concurrency_limit_per_connection(mut self, requests: usize) -> Self {
        self.concurrency_limit_per_connection = requests;
        self
    }

    /// Sets the request timeout (default 60 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the handshake timeout (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the HTTP/2 keepalive ping interval and timeout (defaults 30 s and 20 s).
    pub fn http2_keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.http2_keepalive_interval = interval;
        self.http2_keepalive_timeout = timeout;
        self
    }

    /// Sets the TCP keepalive idle time (default 60 s).
    pub fn tcp_keepalive(mut self, idle: Duration) -> Self {
        self.tcp_keepalive = idle;
        self
    }

    /// Checks what the types cannot: every bound is at least 1 (a zero would refuse everything), and the request
    /// timeout exceeds `longest_wait` (the longest long poll the server allows). The error names the field.
    pub fn validate(&self, longest_wait: Duration) -> Result<(), InvalidOption> {
        let zero = [
            ("max_connections", self.max_connections == 0),
            ("max_concurrent_streams", self.max_concurrent_streams == 0),
            (
                "concurrency_limit_per_connection",
                self.concurrency_limit_per_connection == 0,
            ),
            ("request_timeout", self.request_timeout.is_zero()),
            ("handshake_timeout", self.handshake_timeout.is_zero()),
            (
                "http2_keepalive_interval",
                self.http2_keepalive_interval.is_zero(),
            ),
            ("http2_keepalive_timeout", self.http2_keepalive_timeout.is_zero()),
            ("tcp_keepalive", self.tcp_keepalive.is_zero()),
        ];
        if let Some((field, _)) = zero.iter().find(|(_, zero)| *zero) {
            return Err(InvalidOption::new(*field, "must be above 0"));
        }
        if self.request_timeout <= longest_wait {
            return Err(InvalidOption::new(
                "request_timeout",
                format!(
                    "{} must exceed the longest long poll ({}), or long polls would be cut",
                    humantime::format_duration(self.request_timeout),
                    humantime::format_duration(longest_wait)
                ),
            ));
        }
        Ok(())
    }

    /// A tonic server builder with these bounds.
    pub(crate) fn grpc_builder(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .concurrency_limit_per_connection(self.concurrency_limit_per_connection)
            .max_concurrent_streams(self.max_concurrent_streams)
            .timeout(self.request_timeout)
            .http2_keepalive_interval(Some(self.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(self.http2_keepalive_timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_leave_room_for_the_default_long_poll() {
        assert_eq!(
            ConnectionLimits::default().validate(Duration::from_secs(30)),
            Ok(())
        );
    }

    #[test]
    fn a_request_timeout_within_the_long_poll_is_refused_by_name() {
        let limits = ConnectionLimits::default().request_timeout(Duration::from_secs(30));
        let InvalidOption { field, reason } = limits.validate(Duration::from_secs(30)).unwrap_err();
        assert_eq!(field, "request_timeout");
        assert!(reason.contains("30s"), "{reason}");
    }

    #[test]
    fn zero_bounds_are_refused_by_name() {
        let InvalidOption { field, .. } = ConnectionLimits::default()
            .max_connections(0)
            .validate(Duration::ZERO)
            .unwrap_err();
        assert_eq!(field, "max_connections");
        let InvalidOption { field, .. } = ConnectionLimits::default()
            .handshake_timeout(Duration::ZERO)
            .validate(Duration::ZERO)
            .unwrap_err();
        assert_eq!(field, "handshake_timeout");
    }
}
