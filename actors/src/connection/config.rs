//! Configuration of one connection: one type, built in code or read from a serde document.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::auth::{Auth, AuthError};
use super::target::{Target, TargetError};
use crate::backoff::{BackoffConfig, BackoffConfigError};

/// HTTP/2 keepalive (gRPC A8). Off by default, as in gRPC: servers reject pings more often than every 5 min
/// without data by default (GOAWAY `ENHANCE_YOUR_CALM` / `too_many_pings`, after which the connection doubles
/// its interval), so enable it against servers configured for it.
///
/// As a document: `{ "interval": "30s", "timeout": "10s", "while_idle": false }` (`timeout` defaults to 20 s,
/// `while_idle` to false).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    /// Ping interval.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long to wait for the ping's ack before the connection is declared dead (gRPC default 20 s).
    #[serde(with = "humantime_serde", default = "default_keepalive_timeout")]
    pub timeout: Duration,
    /// Ping even with no call in flight (default false).
    #[serde(default)]
    pub while_idle: bool,
}

fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(20)
}

impl Keepalive {
    /// Ping every `interval`, 20 s ack timeout, only while calls are in flight.
    pub fn new(interval: Duration) -> Keepalive {
        Keepalive {
            interval,
            timeout: default_keepalive_timeout(),
            while_idle: false,
        }
    }

    /// Set the ack timeout (default 20 s).
    pub fn timeout(mut self, timeout: Duration) -> Keepalive {
        self.timeout = timeout;
        self
    }

    /// Ping with no call in flight too (default false).
    pub fn while_idle(mut self, yes: bool) -> Keepalive {
        self.while_idle = yes;
        self
    }
}

/// What a connection does after the server closed it *cleanly* (GOAWAY `NO_ERROR`: a graceful drain, an idle
/// timeout, a maximum connection age). Either way it leaves READY at once. A failure (reset, EOF without GOAWAY,
/// a GOAWAY with an error code, a failed health check) always reconnects at once, then with backoff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleReconnect {
    /// Stay IDLE until the next call through the connection's channel, `wait_ready` or `connect` (gRPC's
    /// behaviour, the default): a server that closes idle connections is not re-dialled for nothing.
    #[default]
    Lazy,
    /// Reconnect at once, so the next call finds a warm connection.
    Eager,
}

/// An invalid configuration; names the offending part. `source()` is the cause: the typed [`TargetError`],
/// [`AuthError`] or [`BackoffConfigError`], or the `std::io::Error` of a TLS file that could not be read.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConfigError {
    /// The connection string was refused (the source says how).
    Target(TargetError),
    /// The auth settings were refused.
    Auth(AuthError),
    /// The backoff settings were refused.
    Backoff(BackoffConfigError),
    /// A field with a bad value.
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A TLS file (`caFile`, `certFile`, `keyFile`) could not be read.
    TlsFile {
        /// The connection-string parameter.
        field: &'static str,
        /// The path.
        path: String,
        /// The read error (shared, so that the error stays `Clone`; `source()` hands out the `io::Error`).
        source: Arc<std::io::Error>,
    },
    /// A TLS file holds nothing usable: no PEM certificate (empty, garbage), no private key, or a key that does
    /// not match the certificate.
    Pem {
        /// The connection-string parameter.
        field: &'static str,
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Target(_) => f.write_str("invalid connection string"),
            ConfigError::Auth(_) => f.write_str("invalid auth settings"),
            ConfigError::Backoff(_) => f.write_str("invalid backoff settings"),
            ConfigError::Invalid { field, reason } => write!(f, "invalid `{field}`: {reason}"),
            ConfigError::TlsFile { field, path, .. } => write!(f, "cannot read the `{field}` file `{path}`"),
            ConfigError::Pem { field, path, reason } => {
                write!(f, "the `{field}` file `{path}` is unusable: {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Target(e) => Some(e),
            ConfigError::Auth(e) => Some(e),
            ConfigError::Backoff(e) => Some(e),
            ConfigError::TlsFile { source, .. } => Some(&**source),
            ConfigError::Invalid { .. } | ConfigError::Pem { .. } => None,
        }
    }
}

impl From<TargetError> for ConfigError {
    fn from(e: TargetError) -> Self {
        ConfigError::Target(e)
    }
}

impl From<AuthError> for ConfigError {
    fn from(e: AuthError) -> Self {
        ConfigError::Auth(e)
    }
}

impl From<BackoffConfigError> for ConfigError {
    fn from(e: BackoffConfigError) -> Self {
        ConfigError::Backoff(e)
    }
}

const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a connection needs. Build it with [`ConnectionConfig::parse`] (or [`new`](Self::new)) and the
/// `with_*` setters, each of which states its default, or read it from a document (any serde format), durations
/// in `humantime` form:
///
/// ```
/// use std::time::Duration;
/// use arbor_actors::connection::{ConnectionConfig, IdleReconnect};
/// let config: ConnectionConfig = serde_json::from_str(r#"{
///     "connection_string": "grpc://kernel:35000?disableTls=true",
///     "backoff": { "initial": "250ms", "max": "30s" },
///     "max_attempts": 10,
///     "idle_reconnect": "eager",
///     "probe_interval": "5s",
///     "keepalive": { "interval": "30s", "timeout": "10s" }
/// }"#).unwrap();
/// assert_eq!(config.max_attempts, Some(10));
/// assert_eq!(config.idle_reconnect, IdleReconnect::Eager);
///
/// let same = ConnectionConfig::parse("grpc://kernel:35000?disableTls=true").unwrap()
///     .with_max_attempts(Some(10))
///     .with_probe_interval(Some(Duration::from_secs(5)));
/// assert_eq!(same.target, config.target);
/// ```
///
/// A document names its target with exactly one of `connection_string` and `server_address` (Chronicle's
/// `host:port`); unknown fields and invalid values are refused, naming the field. Auth comes from the
/// connection string; a [`with_auth`](Self::with_auth) override exists in code only.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "ConnectionDocument")]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Where to connect.
    pub target: Target,
    /// How calls are authenticated; `None` (the default): as the connection string says (api key, OAuth2
    /// client credentials, or nothing).
    pub auth: Option<Auth>,
    /// Reconnect schedule (gRPC's defaults).
    pub backoff: BackoffConfig,
    /// Give up after this many consecutive failed attempts (default `None`: never). Waiters then get
    /// [`ShutdownReason::AttemptsExhausted`](super::ShutdownReason) and the actor fails, so its supervisor
    /// decides.
    pub max_attempts: Option<u32>,
    /// Connect as soon as the actor starts, and again at once after a failure (Chronicle's `auto_connect`,
    /// default true). When false the connection stays IDLE until a call, `wait_ready` or `connect`.
    pub auto_connect: bool,
    /// After a clean close by the server (GOAWAY `NO_ERROR`): reconnect lazily (default) or at once.
    pub idle_reconnect: IdleReconnect,
    /// Service name for `grpc.health.v1.Health` (default empty: the whole server).
    pub health_service: String,
    /// Deadline of each health `Check` (default 5 s).
    pub health_check_timeout: Duration,
    /// While READY, follow the server's health through a `Watch` stream, so a change to NOT_SERVING is seen at
    /// once (default false, as gRPC clients do unless the service config asks). Servers without `Watch`
    /// (UNIMPLEMENTED) fall back to the `Check`s of `probe_interval`. The stream holds one of the server's
    /// concurrent streams, and keeps the connection busy: a server that sheds idle connections
    /// (`max_connection_idle`) never sheds it.
    pub health_watch: bool,
    /// While READY, run a health `Check` this often (default `None`: off, as in gRPC clients); a failure moves
    /// the connection to TRANSIENT_FAILURE. It catches a frozen server between calls when keepalive is off (a
    /// `Watch` on a frozen server is merely silent); without it, a call that times out makes the connection
    /// check itself at once. Each `Check` resets a server's idle timer.
    pub probe_interval: Option<Duration>,
    /// HTTP/2 keepalive (default off).
    pub keepalive: Option<Keepalive>,
    /// Deadline put on calls built with [`request`](super::ConnectionHandle::request), and the longest a
    /// call without a deadline waits through the channel for the connection to be READY (default 30 s).
    pub call_timeout: Duration,
    /// TLS handshake timeout (default 10 s).
    pub tls_handshake_timeout: Duration,
}

impl ConnectionConfig {
    /// Defaults for `target`.
    pub fn new(target: Target) -> ConnectionConfig {
        ConnectionConfig {
            target,
            auth: None,
            backoff: BackoffConfig::default(),
            max_attempts: None,
            auto_connect: true,
            idle_reconnect: IdleReconnect::Lazy,
            health_service: String::new(),
            health_check_timeout: HEALTH_CHECK_TIMEOUT,
            health_watch: false,
            probe_interval: None,
            keepalive: None,
            call_timeout: CALL_TIMEOUT,
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
        }
    }

    /// Parse a connection string and take the defaults.
    pub fn parse(connection_string: &str) -> Result<ConnectionConfig, ConfigError> {
        Ok(ConnectionConfig::new(connection_string.parse()?))
    }

    /// Set the backoff schedule (default: gRPC's, 1 s x1.6 +-20 % up to 120 s).
    pub fn with_backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }
    /// Set `max_attempts` (default `None`: unlimited).
    pub fn with_max_attempts(mut self, max: Option<u32>) -> Self {
        self.max_attempts = max;
        self
    }
    /// Set `auto_connect` (default true).
    pub fn with_auto_connect(mut self, yes: bool) -> Self {
        self.auto_connect = yes;
        self
    }
    /// Set what follows a clean close by the server (default [`IdleReconnect::Lazy`]).
    pub fn with_idle_reconnect(mut self, policy: IdleReconnect) -> Self {
        self.idle_reconnect = policy;
        self
    }
    /// Set the health-check deadline (default 5 s).
    pub fn with_health_check_timeout(mut self, t: Duration) -> Self {
        self.health_check_timeout = t;
        self
    }
    /// Set the health service name (default empty: the whole server).
    pub fn with_health_service(mut self, name: impl Into<String>) -> Self {
        self.health_service = name.into();
        self
    }
    /// Follow health through a `Watch` stream while READY (default false).
    pub fn with_health_watch(mut self, yes: bool) -> Self {
        self.health_watch = yes;
        self
    }
    /// Set the READY-time probe interval (default 10 s; `None` disables it).
    pub fn with_probe_interval(mut self, every: Option<Duration>) -> Self {
        self.probe_interval = every;
        self
    }
    /// Set HTTP/2 keepalive (default off).
    pub fn with_keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }
    /// Set the default per-call deadline (default 30 s).
    pub fn with_call_timeout(mut self, t: Duration) -> Self {
        self.call_timeout = t;
        self
    }
    /// Override the auth the connection string implies.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }
    /// Set the TLS handshake timeout (default 10 s).
    pub fn with_tls_handshake_timeout(mut self, t: Duration) -> Self {
        self.tls_handshake_timeout = t;
        self
    }

    /// Check every field; the error names the offending one. (TLS files are read when the connection is
    /// prepared.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.backoff.validate()?;
        let positive = |field: &'static str, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::Invalid {
                    field,
                    reason: "must be greater than zero".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("health_check_timeout", self.health_check_timeout)?;
        positive("call_timeout", self.call_timeout)?;
        positive("tls_handshake_timeout", self.tls_handshake_timeout)?;
        if let Some(p) = self.probe_interval {
            positive("probe_interval", p)?;
        }
        if let Some(k) = self.keepalive {
            positive("keepalive.interval", k.interval)?;
            positive("keepalive.timeout", k.timeout)?;
        }
        if self.max_attempts == Some(0) {
            return Err(ConfigError::Invalid {
                field: "max_attempts",
                reason: "must be at least 1 (None for unlimited)".into(),
            });
        }
        Ok(())
    }
}

/// The document form of [`ConnectionConfig`] (private: the public type is the one users name).
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConnectionDocument {
    connection_string: Option<String>,
    server_address: Option<String>,
    backoff: BackoffConfig,
    max_attempts: Option<u32>,
    auto_connect: bool,
    idle_reconnect: IdleReconnect,
    health_service: String,
    #[serde(with = "humantime_serde")]
    health_check_timeout: Duration,
    health_watch: bool,
    #[serde(with = "humantime_serde")]
    probe_interval: Option<Duration>,
    keepalive: Option<Keepalive>,
    #[serde(with = "humantime_serde")]
    call_timeout: Duration,
    #[serde(with = "humantime_serde")]
    tls_handshake_timeout: Duration,
}

impl Default for ConnectionDocument {
    fn default() -> Self {
        ConnectionDocument {
            connection_string: None,
            server_address: None,
            backoff: BackoffConfig::default(),
            max_attempts: None,
            auto_connect: true,
            idle_reconnect: IdleReconnect::Lazy,
            health_service: String::new(),
            health_check_timeout: HEALTH_CHECK_TIMEOUT,
            health_watch: false,
            probe_interval: None,
            keepalive: None,
            call_timeout: CALL_TIMEOUT,
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
        }
    }
}

/// serde shows only the `Display` of a conversion error: put the whole chain in it.
#[derive(Debug)]
struct DocumentError(ConfigError);

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(&self.0);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl TryFrom<ConnectionDocument> for ConnectionConfig {
    type Error = DocumentError;

    fn try_from(doc: ConnectionDocument) -> Result<Self, Self::Error> {
        let target = match (&doc.connection_string, &doc.server_address) {
            (Some(cs), None) => cs.parse().map_err(ConfigError::Target),
            (None, Some(addr)) => Target::from_server_address(addr).map_err(ConfigError::Target),
            _ => Err(ConfigError::Invalid {
                field: "connection_string",
                reason: "exactly one of connection_string and server_address is required".into(),
            }),
        }
        .map_err(DocumentError)?;
        let config = ConnectionConfig {
            target,
            auth: None,
            backoff: doc.backoff,
            max_attempts: doc.max_attempts,
            auto_connect: doc.auto_connect,
            idle_reconnect: doc.idle_reconnect,
            health_service: doc.health_service,
            health_check_timeout: doc.health_check_timeout,
            health_watch: doc.health_watch,
            probe_interval: doc.probe_interval,
            keepalive: doc.keepalive,
            call_timeout: doc.call_timeout,
            tls_handshake_timeout: doc.tls_handshake_timeout,
        };
        config.validate().map_err(DocumentError)?;
        Ok(config)
    }
}
