//! Configuration of one connection.

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::auth::{Auth, AuthError};
use super::backoff::{BackoffConfig, BackoffConfigError};
use super::target::{Target, TargetError};

/// HTTP/2 keepalive (gRPC A8). Off by default, as in gRPC: servers reject pings more often than every 5 min
/// without data by default, so enable it only against servers configured for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Ping interval.
    pub interval: Duration,
    /// How long to wait for the ping's ack before the connection is declared dead (gRPC default 20 s).
    pub timeout: Duration,
    /// Ping even with no call in flight.
    pub while_idle: bool,
}

/// An invalid configuration; names the offending part.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    /// The connection string.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Auth settings.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Backoff settings.
    #[error(transparent)]
    Backoff(#[from] BackoffConfigError),
    /// A field with a bad value.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The CA file could not be read.
    #[error("cannot read CA file `{path}`: {reason}")]
    CaFile {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Everything a connection needs. Build with [`ConnectionConfig::parse`] or [`ConnectionConfig::new`] and the
/// `with_*` setters.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Where to connect.
    pub target: Target,
    /// How calls are authenticated (derived from the target by `new`).
    pub auth: Auth,
    /// Reconnect schedule.
    pub backoff: BackoffConfig,
    /// Give up after this many consecutive failed attempts (None: never). Waiters then get
    /// [`ShutdownReason::AttemptsExhausted`](super::ShutdownReason) and the actor fails, so its supervisor decides.
    pub max_attempts: Option<u32>,
    /// Connect as soon as the actor starts, and again at once after a lost connection (Chronicle's
    /// `auto_connect`). When false the connection stays IDLE until `wait_ready`, `connect` or `reconnect`.
    pub auto_connect: bool,
    /// Service name for `grpc.health.v1.Health/Check` (empty: the whole server).
    pub health_service: String,
    /// Deadline of each health check.
    pub health_check_timeout: Duration,
    /// While READY, run a health check this often; a failure moves the connection to TRANSIENT_FAILURE. This
    /// is what detects a frozen server when keepalive is off. None disables it.
    pub probe_interval: Option<Duration>,
    /// HTTP/2 keepalive, off by default.
    pub keepalive: Option<Keepalive>,
    /// Default deadline put on calls built with [`ConnectionHandle::request`](super::ConnectionHandle::request).
    pub call_timeout: Duration,
    /// TLS handshake timeout.
    pub tls_handshake_timeout: Duration,
}

impl ConnectionConfig {
    /// Defaults for `target`, with auth taken from it (api key or OAuth2 credentials).
    pub fn new(target: Target) -> Result<ConnectionConfig, ConfigError> {
        let auth = Auth::for_target(&target)?;
        Ok(ConnectionConfig {
            target,
            auth,
            backoff: BackoffConfig::default(),
            max_attempts: None,
            auto_connect: true,
            health_service: String::new(),
            health_check_timeout: Duration::from_secs(5),
            probe_interval: Some(Duration::from_secs(10)),
            keepalive: None,
            call_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
        })
    }

    /// Parse a connection string and take the defaults.
    pub fn parse(connection_string: &str) -> Result<ConnectionConfig, ConfigError> {
        ConnectionConfig::new(connection_string.parse()?)
    }

    /// Set the backoff schedule.
    pub fn with_backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }
    /// Set `max_attempts`.
    pub fn with_max_attempts(mut self, max: Option<u32>) -> Self {
        self.max_attempts = max;
        self
    }
    /// Set `auto_connect`.
    pub fn with_auto_connect(mut self, yes: bool) -> Self {
        self.auto_connect = yes;
        self
    }
    /// Set the health-check deadline.
    pub fn with_health_check_timeout(mut self, t: Duration) -> Self {
        self.health_check_timeout = t;
        self
    }
    /// Set the health service name.
    pub fn with_health_service(mut self, name: impl Into<String>) -> Self {
        self.health_service = name.into();
        self
    }
    /// Set the READY-time probe interval.
    pub fn with_probe_interval(mut self, every: Option<Duration>) -> Self {
        self.probe_interval = every;
        self
    }
    /// Set HTTP/2 keepalive.
    pub fn with_keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }
    /// Set the default per-call deadline.
    pub fn with_call_timeout(mut self, t: Duration) -> Self {
        self.call_timeout = t;
        self
    }
    /// Set the auth.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }
    /// Set the TLS handshake timeout.
    pub fn with_tls_handshake_timeout(mut self, t: Duration) -> Self {
        self.tls_handshake_timeout = t;
        self
    }

    /// Check every field; the error names the offending one.
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

    /// The tonic endpoint for this target: TLS (with the CA file, server name and handshake timeout), keepalive.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, ConfigError> {
        let uri = self.target.endpoint_uri();
        let mut ep = Endpoint::from_shared(uri.clone()).map_err(|e| ConfigError::Invalid {
            field: "target",
            reason: format!("`{uri}` is not a valid endpoint: {e}"),
        })?;
        if self.target.tls {
            let mut tls = ClientTlsConfig::new().timeout(self.tls_handshake_timeout);
            let server_name = self
                .target
                .tls_server_name
                .clone()
                .unwrap_or_else(|| self.target.hosts[0].host.trim_matches(['[', ']']).to_string());
            tls = tls.domain_name(server_name);
            match &self.target.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| ConfigError::CaFile {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                None => tls = tls.with_native_roots(),
            }
            ep = ep.tls_config(tls).map_err(|e| ConfigError::Invalid {
                field: "tls",
                reason: e.to_string(),
            })?;
        }
        if let Some(k) = self.keepalive {
            ep = ep
                .http2_keep_alive_interval(k.interval)
                .keep_alive_timeout(k.timeout)
                .keep_alive_while_idle(k.while_idle);
        }
        Ok(ep)
    }
}

/// [`ConnectionConfig`] as a serde document (config files), durations in `humantime` form (`"250ms"`, `"20s"`).
/// Unknown fields are refused, naming the field.
///
/// ```
/// use arbor_actors::connection::{ConnectionConfig, ConnectionOptions};
/// let opts: ConnectionOptions = serde_json::from_str(r#"{
///     "connection_string": "chronicle://kernel:35000?disableTls=true",
///     "backoff": { "initial": "250ms", "max": "30s" },
///     "max_attempts": 10,
///     "probe_interval": "5s",
///     "keepalive": { "interval": "30s", "timeout": "10s" }
/// }"#).unwrap();
/// let config = ConnectionConfig::from_options(&opts).unwrap();
/// assert_eq!(config.max_attempts, Some(10));
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionOptions {
    /// The connection string (see [`Target`]); `server_address` is the alternative.
    pub connection_string: Option<String>,
    /// Chronicle's `host:port` form.
    pub server_address: Option<String>,
    /// Reconnect schedule.
    pub backoff: BackoffConfig,
    /// See [`ConnectionConfig::max_attempts`].
    pub max_attempts: Option<u32>,
    /// See [`ConnectionConfig::auto_connect`].
    pub auto_connect: bool,
    /// See [`ConnectionConfig::health_service`].
    pub health_service: String,
    /// See [`ConnectionConfig::health_check_timeout`].
    #[serde(with = "humantime_serde")]
    pub health_check_timeout: Duration,
    /// See [`ConnectionConfig::probe_interval`] (`null` disables the probe).
    #[serde(with = "humantime_serde")]
    pub probe_interval: Option<Duration>,
    /// See [`ConnectionConfig::keepalive`].
    pub keepalive: Option<KeepaliveOptions>,
    /// See [`ConnectionConfig::call_timeout`].
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// See [`ConnectionConfig::tls_handshake_timeout`].
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
}

/// [`Keepalive`] as a serde document.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveOptions {
    /// Ping interval.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Ack timeout (default 20 s).
    #[serde(with = "humantime_serde", default = "default_keepalive_timeout")]
    pub timeout: Duration,
    /// Ping with no call in flight (default false).
    #[serde(default)]
    pub while_idle: bool,
}

fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(20)
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            connection_string: None,
            server_address: None,
            backoff: BackoffConfig::default(),
            max_attempts: None,
            auto_connect: true,
            health_service: String::new(),
            health_check_timeout: Duration::from_secs(5),
            probe_interval: Some(Duration::from_secs(10)),
            keepalive: None,
            call_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectionConfig {
    /// Build from a serde document; exactly one of `connection_string` and `server_address` is required.
    pub fn from_options(opts: &ConnectionOptions) -> Result<ConnectionConfig, ConfigError> {
        let target = match (&opts.connection_string, &opts.server_address) {
            (Some(cs), None) => cs.parse()?,
            (None, Some(addr)) => Target::from_server_address(addr)?,
            _ => {
                return Err(ConfigError::Invalid {
                    field: "connection_string",
                    reason: "exactly one of connection_string and server_address is required".into(),
                })
            }
        };
        let config = ConnectionConfig::new(target)?
            .with_backoff(opts.backoff.clone())
            .with_max_attempts(opts.max_attempts)
            .with_auto_connect(opts.auto_connect)
            .with_health_service(opts.health_service.clone())
            .with_health_check_timeout(opts.health_check_timeout)
            .with_probe_interval(opts.probe_interval)
            .with_keepalive(opts.keepalive.as_ref().map(|k| Keepalive {
                interval: k.interval,
                timeout: k.timeout,
                while_idle: k.while_idle,
            }))
            .with_call_timeout(opts.call_timeout)
            .with_tls_handshake_timeout(opts.tls_handshake_timeout);
        config.validate()?;
        Ok(config)
    }
}
