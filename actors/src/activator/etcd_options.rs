//! [`EtcdOptions`]: the etcd backend's settings, and their checks (feature `etcd`).

use std::fmt;
use std::time::Duration;

use super::check_segment;
use super::handle::ActivatorError;
use crate::backoff::BackoffConfig;

/// Smallest TTL accepted: etcd rounds shorter leases up to its own minimum (about 1.5 s with default
/// election timeouts), which would silently break the step-down arithmetic.
const MIN_TTL: Duration = Duration::from_secs(2);
/// Largest TTL etcd grants (`MaxLeaseTTL`, 9,000,000,000 s); a larger one fails every grant.
const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// Configuration of [`EtcdBackend`](super::EtcdBackend).
#[derive(Clone)]
pub struct EtcdOptions {
    pub(crate) endpoints: Vec<String>,
    pub(crate) node_id: String,
    pub(crate) ttl: Duration,
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) backoff: BackoffConfig,
    pub(crate) credentials: Option<(String, String)>,
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("node_id", &self.node_id)
            .field("ttl", &humantime::format_duration(self.ttl).to_string())
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("backoff", &self.backoff)
            // Never the password, not even its length.
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(u, _)| format!("{u}:<redacted>")),
            )
            .finish()
    }
}

impl EtcdOptions {
    /// Options for `endpoints` (`http://host:port` or `host:port`; https needs etcd-client's TLS, which arbor
    /// does not build); `node_id` names this process in the cluster (one visible key segment) and must be unique
    /// among the processes running activators of a name. Defaults: TTL 10 s, prefix `arbor/activator`, connect
    /// and request timeouts 2 s, backoff 100 ms .. 5 s (x1.6, +-20 %). Everything is checked by
    /// [`EtcdBackend::new`](super::EtcdBackend::new).
    pub fn new<E: Into<String>>(endpoints: impl IntoIterator<Item = E>, node_id: impl Into<String>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            node_id: node_id.into(),
            ttl: Duration::from_secs(10),
            prefix: "arbor/activator".to_string(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            backoff: BackoffConfig::new(Duration::from_millis(100), Duration::from_secs(5)),
            credentials: None,
        }
    }

    /// Lease TTL: whole seconds, from 2 s to etcd's maximum (9,000,000,000 s). A leader that cannot renew steps
    /// down after half of it. Should etcd grant a different TTL (a server-side minimum above the one asked),
    /// the session logs both and times its step-down on the shorter.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Lease TTL as a humantime string (`"10s"`, `"1m"`).
    pub fn ttl_str(self, ttl: &str) -> Result<Self, ActivatorError> {
        let parsed = humantime::parse_duration(ttl).map_err(|e| ActivatorError::InvalidConfig {
            field: "ttl",
            value: ttl.to_string(),
            reason: leak_reason(e),
        })?;
        Ok(self.ttl(parsed))
    }

    /// Key prefix under which elections and membership keys live.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Timeout of one connection attempt and of each unary request (lease grant, put, resign, revoke).
    pub fn timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    /// The schedule of session attempts while etcd is unreachable (the connection's gRPC schedule, counted
    /// from attempt starts; its `min_connect_timeout` is not used: see [`timeouts`](Self::timeouts)).
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Authenticates as `user`. The password is never printed by `Debug` or logged.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ActivatorError> {
        let bad = |field, value: String, reason| Err(ActivatorError::InvalidConfig { field, value, reason });
        if self.endpoints.is_empty() {
            return bad("endpoints", "[]".into(), "at least one endpoint is required");
        }
        for e in &self.endpoints {
            if let Err(reason) = check_endpoint(e) {
                return bad("endpoints", format!("{e:?}"), reason);
            }
        }
        if let Err(reason) = check_segment(&self.node_id) {
            return bad("node_id", format!("{:?}", self.node_id), reason);
        }
        let ttl = || humantime::format_duration(self.ttl).to_string();
        if self.ttl < MIN_TTL {
            return bad("ttl", ttl(), "must be at least 2s");
        }
        if self.ttl > MAX_TTL {
            return bad("ttl", ttl(), "must be at most 9000000000s (etcd's largest lease)");
        }
        if self.ttl.subsec_nanos() != 0 {
            return bad("ttl", ttl(), "must be whole seconds");
        }
        if self.prefix.is_empty() {
            return bad("prefix", "\"\"".into(), "must not be empty");
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return bad(
                "timeouts",
                format!("{:?}/{:?}", self.connect_timeout, self.request_timeout),
                "must be > 0",
            );
        }
        if let Err(e) = self.backoff.validate() {
            let field = match e.field {
                "initial" => "backoff.initial",
                "multiplier" => "backoff.multiplier",
                "jitter" => "backoff.jitter",
                "max" => "backoff.max",
                _ => "backoff.min_connect_timeout",
            };
            return bad(field, format!("{:?}", self.backoff), e.reason);
        }
        Ok(())
    }
}

/// An endpoint etcd-client can dial: `http://host[:port]` or `host[:port]`, nothing else.
fn check_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let e = endpoint.trim();
    if e.is_empty() {
        return Err("empty endpoint");
    }
    if e.len() != endpoint.len() || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("whitespace or control characters in an endpoint");
    }
    let full = if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    };
    let uri: http::Uri = full
        .parse()
        .map_err(|_| "not a URL (expected http://host:port)")?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https needs etcd-client's TLS, which arbor does not build: use http"),
        _ => return Err("unsupported scheme (expected http)"),
    }
    match uri.host() {
        None | Some("") => return Err("no host"),
        Some(_) => {}
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err("an endpoint has no path or query");
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("credentials go in EtcdOptions::credentials, not in the endpoint");
    }
    Ok(())
}

/// humantime's error is a value, `InvalidConfig::reason` a static str: map the few kinds.
fn leak_reason(e: humantime::DurationError) -> &'static str {
    match e {
        humantime::DurationError::InvalidCharacter(_) => "invalid character in duration",
        humantime::DurationError::NumberExpected(_) => "number expected in duration",
        humantime::DurationError::UnknownUnit { .. } => "unknown unit in duration",
        humantime::DurationError::NumberOverflow => "duration too large",
        humantime::DurationError::Empty => "empty duration",
    }
}
