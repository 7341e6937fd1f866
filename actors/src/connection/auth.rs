//! Authentication as a tonic interceptor: an `api-key` header, or `authorization: Bearer <token>` from a
//! [`TokenSource`] (a static token, or OAuth2 client credentials against `POST /connect/token`).
//!
//! # OAuth2 tokens
//!
//! - A token is refreshed once, at a margin before its expiry that is proportional to its lifetime: a fifth of
//!   it, at most [`OAuth2Config::refresh_before`] (60 s, Chronicle's margin). A 30 s token is refreshed after
//!   24 s, an hour-long one a minute before it expires; a fixed 60 s margin would make every short-lived token
//!   due at once and fetch one per call.
//! - Fetches are single-flight: callers that find the token due wait for the one fetch in progress.
//! - Failed fetches are not retried more often than [`OAuth2Config::min_retry_interval`] (5 s); a still valid
//!   token is used meanwhile.
//! - `expires_in` must be a whole number of seconds (a number or a numeric string); a negative or otherwise
//!   unreadable one fails the fetch ([`AuthError::BadResponse`]).
//! - `expires_in` missing, or `0`, means the server gave no lifetime (RFC 6749 makes the field optional, and
//!   servers such as Keycloak use 0 for "no expiry"): [`OAuth2Config::default_lifetime`] (3600 s) is assumed,
//!   so the token is still refreshed on a schedule. A huge `expires_in` (up to `u64::MAX` seconds) saturates.
//! - A call through the connection's [`ConnectionChannel`](super::ConnectionChannel) is authenticated after
//!   the connection is READY, and waits (within its deadline) for a token being fetched; the connection
//!   fetches the first token before it reports READY. A call that cannot get a token fails with
//!   `Unauthenticated` naming why (the endpoint's HTTP status, a bad answer, a timeout).
//! - The [`AuthInterceptor`] for a raw transport is synchronous (tonic's design): it reads the cached token
//!   and, when the token is due, starts the refresh in the background.
//!
//! Written here rather than with the `oauth2` crate: the client-credentials grant is one form POST and a JSON
//! answer; `oauth2` would bring its own HTTP client stack (or an adapter to write), `url`, `chrono`, `sha2`,
//! `base64` and `rand` for flows arbor does not use, and none of the caching, refresh margin or retry spacing
//! above, which is where the work is.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::config::ConfigError;
use super::error::ErrorChain;
use super::target::{Secret, Target};
use super::tls::{self, TlsSettings};
use super::transport::{dial, Io};

/// Why a token could not be had, or an auth setting is invalid. Never carries a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A secret has characters a header cannot carry.
    #[error("the {which} contains characters not allowed in a header")]
    InvalidHeaderValue {
        /// "api key" or "token".
        which: &'static str,
    },
    /// The token endpoint URL is invalid.
    #[error("invalid token endpoint `{url}`: {reason}")]
    InvalidTokenUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The TLS settings for an https token endpoint were refused (the target's `caFile`, ...).
    #[error("unusable TLS settings for the token endpoint")]
    Tls(#[source] Arc<ConfigError>),
    /// The last fetch failed less than `min_retry_interval` ago.
    #[error("token fetch failed recently; next try in {retry_in:?}")]
    RetryLater {
        /// Time left before a fetch is allowed.
        retry_in: Duration,
        /// The last fetch's error.
        #[source]
        last_error: Box<AuthError>,
    },
    /// The token endpoint could not be reached (dial, TLS, HTTP exchange).
    #[error("token endpoint {url} unreachable")]
    Unreachable {
        /// The token endpoint.
        url: String,
        /// What failed.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The token endpoint did not answer in time.
    #[error("token endpoint {url} did not answer within {after:?}")]
    Timeout {
        /// The token endpoint.
        url: String,
        /// The time given.
        after: Duration,
    },
    /// The token endpoint answered with an error status.
    #[error("token endpoint {url} answered HTTP {status}")]
    Status {
        /// The token endpoint.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The answer is not a token response.
    #[error("bad token response from {url}: {reason}")]
    BadResponse {
        /// The token endpoint.
        url: String,
        /// What is wrong (never the token).
        reason: String,
    },
}

/// OAuth2 client-credentials settings.
#[derive(Clone)]
pub struct OAuth2Config {
    /// The token endpoint, e.g. `http://host:8080/connect/token`.
    pub token_url: String,
    /// The client id (the connection string's user).
    pub client_id: String,
    /// The client secret (the connection string's password).
    pub client_secret: Secret,
    /// The largest refresh margin (60 s); shorter-lived tokens are refreshed a fifth of their lifetime early.
    pub refresh_before: Duration,
    /// At least this long between failed fetches (5 s).
    pub min_retry_interval: Duration,
    /// Lifetime assumed when the response has no `expires_in`, or `0` (3600 s).
    pub default_lifetime: Duration,
    /// Longest wait for one token fetch (30 s).
    pub fetch_timeout: Duration,
    /// Trust anchors for an https token endpoint instead of the system roots (the target's `caFile`).
    pub ca_file: Option<std::path::PathBuf>,
}

impl fmt::Debug for OAuth2Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Config")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("refresh_before", &self.refresh_before)
            .field("min_retry_interval", &self.min_retry_interval)
            .field("default_lifetime", &self.default_lifetime)
            .field("fetch_timeout", &self.fetch_timeout)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl OAuth2Config {
    /// Chronicle's endpoint for a target with credentials: `http(s)://<first host>:<authPort or 8080>/connect/token`.
    pub fn for_target(target: &Target) -> Option<OAuth2Config> {
        let creds = target.credentials.as_ref()?;
        let scheme = if target.tls { "https" } else { "http" };
        let host = &target.hosts[0].host;
        let port = target.auth_port.unwrap_or(8080);
        Some(OAuth2Config {
            token_url: format!("{scheme}://{host}:{port}/connect/token"),
            client_id: creds.username.clone(),
            client_secret: creds.password.clone(),
            refresh_before: Duration::from_secs(60),
            min_retry_interval: Duration::from_secs(5),
            default_lifetime: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(30),
            ca_file: target.ca_file.clone(),
        })
    }

    /// When a token fetched at `at` with `lifetime` expires and when it is due for refresh. Never panics: a
    /// lifetime too long for the clock saturates to a century.
    fn schedule(&self, at: Instant, lifetime: Duration) -> (Instant, Instant) {
        let lifetime = lifetime.min(CENTURY);
        let margin = (lifetime / 5).min(self.refresh_before);
        (
            saturating_add(at, lifetime),
            saturating_add(at, lifetime - margin),
        )
    }
}

const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn saturating_add(at: Instant, d: Duration) -> Instant {
    at.checked_add(d.min(CENTURY)).unwrap_or(at)
}

/// A mutex that stays usable after a panic elsewhere: the token cache is consistent between statements (each
/// write is one assignment), so a poisoned lock holds nothing half-done.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct OAuth2 {
    config: OAuth2Config,
    uri: http::Uri,
    host: String,
    port: u16,
    tls: Option<TlsSettings>,
    cache: Mutex<TokenCache>,
    fetch_lock: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

struct CachedToken {
    token: Secret,
    expires_at: Instant,
    refresh_at: Instant,
}

#[derive(Default)]
struct TokenCache {
    token: Option<CachedToken>,
    last_failure: Option<(Instant, AuthError)>,
    refreshing: bool,
}

enum SourceKind {
    Static(Secret),
    OAuth2(Box<OAuth2>),
}

/// Where bearer tokens come from. Cheap to clone (shared).
#[derive(Clone)]
pub struct TokenSource(Arc<SourceKind>);

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            SourceKind::Static(_) => f.write_str("TokenSource::Static(***)"),
            SourceKind::OAuth2(o) => f.debug_tuple("TokenSource::OAuth2").field(&o.config).finish(),
        }
    }
}

impl TokenSource {
    /// A fixed token.
    pub fn fixed(token: Secret) -> TokenSource {
        TokenSource(Arc::new(SourceKind::Static(token)))
    }

    /// OAuth2 client credentials. The URL, and for https the CA file, are checked here.
    pub fn oauth2(config: OAuth2Config) -> Result<TokenSource, AuthError> {
        let invalid = |reason: String| AuthError::InvalidTokenUrl {
            url: config.token_url.clone(),
            reason,
        };
        let uri: http::Uri = config
            .token_url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid("the scheme must be http or https".into())),
        };
        let host = uri
            .host()
            .ok_or_else(|| invalid("no host".into()))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let tls_error = |e| AuthError::Tls(Arc::new(e));
            let rustls_config = tls::client_config(config.ca_file.as_deref(), None).map_err(tls_error)?;
            let handshake = config.fetch_timeout;
            Some(
                TlsSettings::new(rustls_config, &host, tls::ALPN_HTTP1, false, handshake)
                    .map_err(tls_error)?,
            )
        } else {
            None
        };
        Ok(TokenSource(Arc::new(SourceKind::OAuth2(Box::new(OAuth2 {
            config,
            uri,
            host,
            port,
            tls,
            cache: Mutex::new(TokenCache::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        })))))
    }

    /// The cached token if it has not expired (without fetching).
    pub fn current(&self) -> Option<Secret> {
        match &*self.0 {
            SourceKind::Static(t) => Some(t.clone()),
            SourceKind::OAuth2(o) => {
                let cache = lock(&o.cache);
                match &cache.token {
                    Some(t) if Instant::now() < t.expires_at => Some(t.token.clone()),
                    _ => None,
                }
            }
        }
    }

    /// Why the last fetch failed, if the last fetch failed.
    pub fn last_failure(&self) -> Option<AuthError> {
        match &*self.0 {
            SourceKind::Static(_) => None,
            SourceKind::OAuth2(o) => lock(&o.cache).last_failure.as_ref().map(|(_, e)| e.clone()),
        }
    }

    /// How many HTTP fetches were made (0 for a static token).
    pub fn fetch_count(&self) -> u64 {
        match &*self.0 {
            SourceKind::Static(_) => 0,
            SourceKind::OAuth2(o) => o.fetches.load(Ordering::Relaxed),
        }
    }

    /// A valid token, fetching one when none is cached or the cached one is due for refresh.
    pub async fn token(&self) -> Result<Secret, AuthError> {
        let o = match &*self.0 {
            SourceKind::Static(t) => return Ok(t.clone()),
            SourceKind::OAuth2(o) => o,
        };
        if let Some(t) = o.fresh() {
            return Ok(t);
        }
        let _single_flight = o.fetch_lock.lock().await;
        // The fetch that held the lock may have refreshed the token.
        if let Some(t) = o.fresh() {
            return Ok(t);
        }
        {
            let cache = lock(&o.cache);
            if let Some((at, err)) = &cache.last_failure {
                let now = Instant::now();
                let next = saturating_add(*at, o.config.min_retry_interval);
                if now < next {
                    if let Some(t) = cache.token.as_ref().filter(|t| now < t.expires_at) {
                        return Ok(t.token.clone());
                    }
                    return Err(AuthError::RetryLater {
                        retry_in: next - now,
                        last_error: Box::new(err.clone()),
                    });
                }
            }
        }
        o.fetches.fetch_add(1, Ordering::Relaxed);
        let fetched_at = Instant::now();
        let result = o.fetch().await;
        let mut cache = lock(&o.cache);
        match result {
            Ok((token, lifetime)) => {
                let (expires_at, refresh_at) = o.config.schedule(fetched_at, lifetime);
                tracing::debug!(url = %o.config.token_url, ?lifetime, "access token fetched");
                cache.token = Some(CachedToken {
                    token: token.clone(),
                    expires_at,
                    refresh_at,
                });
                cache.last_failure = None;
                Ok(token)
            }
            Err(e) => {
                tracing::warn!(url = %o.config.token_url, error = %ErrorChain(&e), "access token fetch failed");
                cache.last_failure = Some((Instant::now(), e.clone()));
                match &cache.token {
                    // Still valid, just due: keep using it until the next allowed try.
                    Some(t) if Instant::now() < t.expires_at => Ok(t.token.clone()),
                    _ => Err(e),
                }
            }
        }
    }

    /// Start a background refresh if the token is due and none is running (called from the interceptor).
    fn refresh_in_background_if_due(&self) {
        let SourceKind::OAuth2(o) = &*self.0 else {
            return;
        };
        if o.fresh().is_some() {
            return;
        }
        {
            let mut cache = lock(&o.cache);
            if cache.refreshing {
                return;
            }
            cache.refreshing = true;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            lock(&o.cache).refreshing = false;
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            let _ = me.token().await;
            if let SourceKind::OAuth2(o) = &*me.0 {
                lock(&o.cache).refreshing = false;
            }
        });
    }
}

impl OAuth2 {
    /// The cached token if it is not yet due for refresh.
    fn fresh(&self) -> Option<Secret> {
        let cache = lock(&self.cache);
        match &cache.token {
            Some(t) if Instant::now() < t.refresh_at => Some(t.token.clone()),
            _ => None,
        }
    }

    /// One client-credentials grant: a form POST over a fresh HTTP/1.1 connection (a fetch per token
    /// lifetime does not need a pool), within `fetch_timeout`.
    async fn fetch(&self) -> Result<(Secret, Duration), AuthError> {
        let after = self.config.fetch_timeout;
        match tokio::time::timeout(after, self.exchange()).await {
            Err(_) => Err(AuthError::Timeout {
                url: self.config.token_url.clone(),
                after,
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok((status, body))) => self.parse(status, &body),
        }
    }

    async fn exchange(&self) -> Result<(http::StatusCode, Bytes), AuthError> {
        let unreachable = |e: Box<dyn std::error::Error + Send + Sync>| AuthError::Unreachable {
            url: self.config.token_url.clone(),
            source: Arc::from(e),
        };
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("client_secret", self.config.client_secret.expose())
            .finish();
        let tcp = dial(&[(self.host.clone(), self.port)])
            .await
            .map_err(|e| unreachable(e.into()))?;
        let io = match &self.tls {
            None => Io::Plain(tcp),
            Some(tls) => Io::Tls(Box::new(
                tls.handshake(tcp).await.map_err(|e| unreachable(e.into()))?,
            )),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| unreachable(e.into()))?;
        let driver = tokio::spawn(connection);
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = self.uri.authority().map_or(self.host.as_str(), |a| a.as_str());
        let req = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unreachable(e.into()))?;
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(e.into()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.into()))?
                .to_bytes();
            Ok((status, bytes))
        }
        .await;
        driver.abort();
        result
    }

    fn parse(&self, status: http::StatusCode, body: &[u8]) -> Result<(Secret, Duration), AuthError> {
        let bad = |reason: String| AuthError::BadResponse {
            url: self.config.token_url.clone(),
            reason,
        };
        if !status.is_success() {
            return Err(AuthError::Status {
                url: self.config.token_url.clone(),
                status: status.as_u16(),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            #[serde(default)]
            expires_in: Option<serde_json::Value>,
        }
        // Only where and what kind of error: serde_json's messages can quote a value, and a value may be a token.
        let parsed: TokenResponse = serde_json::from_slice(body).map_err(|e| {
            bad(format!(
                "not a token response ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        if parsed.access_token.is_empty() {
            return Err(bad("empty access_token".into()));
        }
        // Some servers send the number as a string. Anything but a whole number of seconds (negative, a
        // fraction, a word) is refused: guessing a lifetime for it would use a token the server considers
        // expired, or refresh one that is not.
        let not_seconds = || bad("expires_in is not a whole, non-negative number of seconds".into());
        let expires_in = match parsed.expires_in {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => Some(n.as_u64().ok_or_else(not_seconds)?),
            Some(serde_json::Value::String(s)) => Some(s.trim().parse::<u64>().map_err(|_| not_seconds())?),
            Some(_) => return Err(not_seconds()),
        };
        let lifetime = match expires_in {
            None | Some(0) => self.config.default_lifetime,
            Some(secs) => Duration::from_secs(secs),
        };
        Ok((Secret::new(parsed.access_token), lifetime))
    }
}

/// How calls are authenticated.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// `api-key: <key>`.
    ApiKey(Secret),
    /// `authorization: Bearer <token>`.
    Bearer(TokenSource),
}

impl Auth {
    /// What a connection string asks for: `apiKey` → api-key header, `user:pass@` → OAuth2 client credentials.
    pub fn for_target(target: &Target) -> Result<Auth, AuthError> {
        if let Some(key) = &target.api_key {
            return Ok(Auth::ApiKey(key.clone()));
        }
        match OAuth2Config::for_target(target) {
            Some(cfg) => Ok(Auth::Bearer(TokenSource::oauth2(cfg)?)),
            None => Ok(Auth::None),
        }
    }

    /// The token source, if any.
    pub fn token_source(&self) -> Option<&TokenSource> {
        match self {
            Auth::Bearer(t) => Some(t),
            _ => None,
        }
    }
}

/// A tonic interceptor adding the configured credentials to every call. The connection's
/// [`ConnectionChannel`](super::ConnectionChannel) applies it as a layer; use it directly with a raw
/// [`pinned_transport`](super::ConnectionHandle::pinned_transport) channel.
#[derive(Clone)]
pub struct AuthInterceptor {
    api_key: Option<AsciiMetadataValue>,
    bearer: Option<TokenSource>,
}

/// A status for a call that has no token to send, naming why (the token source's last failure).
fn no_token(cause: Option<AuthError>) -> Status {
    match cause {
        Some(e) => Status::unauthenticated(format!("no valid access token: {}", ErrorChain(&e))),
        None => Status::unauthenticated("no valid access token yet"),
    }
}

impl fmt::Debug for AuthInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthInterceptor")
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("bearer", &self.bearer)
            .finish()
    }
}

impl AuthInterceptor {
    /// Build the interceptor; an api key that cannot be a header value is an error.
    pub fn new(auth: &Auth) -> Result<AuthInterceptor, AuthError> {
        Ok(match auth {
            Auth::None => AuthInterceptor {
                api_key: None,
                bearer: None,
            },
            Auth::ApiKey(key) => {
                let mut v: AsciiMetadataValue = MetadataValue::try_from(key.expose())
                    .map_err(|_| AuthError::InvalidHeaderValue { which: "api key" })?;
                v.set_sensitive(true);
                AuthInterceptor {
                    api_key: Some(v),
                    bearer: None,
                }
            }
            Auth::Bearer(source) => AuthInterceptor {
                api_key: None,
                bearer: Some(source.clone()),
            },
        })
    }
}

impl AuthInterceptor {
    /// Adds the credentials to a call about to go out, waiting (at most until `deadline`) for a token fetch
    /// when no valid token is cached: what [`ConnectionChannel`](super::ConnectionChannel) does once the
    /// connection is READY, so a call made while CONNECTING or while the token is being refreshed waits
    /// instead of failing. A failure names its cause (the token endpoint's status, a bad answer, a timeout).
    pub(crate) async fn authorize(
        &self,
        headers: &mut http::HeaderMap,
        deadline: Instant,
    ) -> Result<(), Status> {
        if let Some(key) = &self.api_key {
            headers.insert("api-key", sensitive_header(key.as_encoded_bytes())?);
        }
        if let Some(source) = &self.bearer {
            let token = match tokio::time::timeout_at(deadline, source.token()).await {
                Ok(Ok(token)) => token,
                Ok(Err(e)) => return Err(no_token(Some(e))),
                Err(_) => {
                    return Err(Status::deadline_exceeded(
                        "the call's deadline passed while an access token was being fetched",
                    ))
                }
            };
            let value = format!("Bearer {}", token.expose());
            headers.insert(http::header::AUTHORIZATION, sensitive_header(value.as_bytes())?);
        }
        Ok(())
    }
}

fn sensitive_header(bytes: &[u8]) -> Result<http::HeaderValue, Status> {
    let mut value = http::HeaderValue::from_bytes(bytes)
        .map_err(|_| Status::unauthenticated("the credentials are not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// For a raw [`pinned_transport`](super::ConnectionHandle::pinned_transport): synchronous (tonic's interceptors are), so it
/// uses the cached token and starts a refresh when one is due; without a valid token the call fails with the
/// token source's last failure as the reason.
impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(key) = &self.api_key {
            request.metadata_mut().insert("api-key", key.clone());
        }
        if let Some(source) = &self.bearer {
            source.refresh_in_background_if_due();
            let token = source.current().ok_or_else(|| no_token(source.last_failure()))?;
            let mut v: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {}", token.expose()))
                .map_err(|_| Status::unauthenticated("access token is not a valid header value"))?;
            v.set_sensitive(true);
            request.metadata_mut().insert("authorization", v);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OAuth2Config {
        let target: Target = "grpc://c:p@127.0.0.1:1?disableTls=true".parse().unwrap();
        OAuth2Config::for_target(&target).unwrap()
    }

    #[test]
    fn refresh_margin_is_a_fifth_of_the_lifetime_at_most_a_minute() {
        let cfg = config();
        let t0 = Instant::now();
        let (exp, refresh) = cfg.schedule(t0, Duration::from_secs(30));
        assert_eq!(
            (exp - t0, refresh - t0),
            (Duration::from_secs(30), Duration::from_secs(24))
        );
        let (exp, refresh) = cfg.schedule(t0, Duration::from_secs(3600));
        assert_eq!(exp - refresh, Duration::from_secs(60));
        let (exp, refresh) = cfg.schedule(t0, Duration::from_millis(500));
        assert!(refresh > t0 && refresh < exp);
    }

    #[test]
    fn an_endless_lifetime_saturates_instead_of_panicking() {
        let cfg = config();
        let t0 = Instant::now();
        let (exp, refresh) = cfg.schedule(t0, Duration::from_secs(u64::MAX));
        assert!(exp > t0 + Duration::from_secs(50 * 365 * 24 * 3600));
        assert!(refresh < exp);
    }

    #[test]
    fn expires_in_zero_missing_string_and_huge() {
        let source = TokenSource::oauth2(config()).unwrap();
        let SourceKind::OAuth2(o) = &*source.0 else {
            unreachable!()
        };
        let ok = http::StatusCode::OK;
        let lifetime = |body: &str| o.parse(ok, body.as_bytes()).unwrap().1;
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":0}"#),
            Duration::from_secs(3600)
        );
        assert_eq!(lifetime(r#"{"access_token":"t"}"#), Duration::from_secs(3600));
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"30"}"#),
            Duration::from_secs(30)
        );
        for refused in [
            r#""expires_in":-5"#,
            r#""expires_in":"-5""#,
            r#""expires_in":1.5"#,
            r#""expires_in":"soon""#,
        ] {
            let body = format!(r#"{{"access_token":"t",{refused}}}"#);
            assert!(
                matches!(o.parse(ok, body.as_bytes()), Err(AuthError::BadResponse { .. })),
                "{refused}"
            );
        }
        let max = format!(r#"{{"access_token":"t","expires_in":{}}}"#, u64::MAX);
        assert_eq!(lifetime(&max), Duration::from_secs(u64::MAX));
        assert!(matches!(
            o.parse(ok, b"{\"access_token\":\"\"}"),
            Err(AuthError::BadResponse { .. })
        ));
        // A malformed answer is refused without quoting it: its values may be secrets.
        match o.parse(ok, br#"{"access_token": 987654321}"#) {
            Err(e @ AuthError::BadResponse { .. }) => assert!(!e.to_string().contains("987654321"), "{e}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(matches!(
            o.parse(http::StatusCode::INTERNAL_SERVER_ERROR, b""),
            Err(AuthError::Status { status: 500, .. })
        ));
    }
}
