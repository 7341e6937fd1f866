//! Authentication as a tonic interceptor: an `api-key` header, or `authorization: Bearer <token>` from a
//! [`TokenSource`] (a static token, or OAuth2 client credentials against `POST /connect/token`).
//!
//! OAuth2 follows Chronicle's rules: a token is refreshed [`OAuth2Config::refresh_before`] (60 s) before it
//! expires, fetches that failed are not retried more often than [`OAuth2Config::min_retry_interval`] (5 s), and a
//! response without `expires_in` is taken to last [`OAuth2Config::default_lifetime`] (3600 s). The interceptor is
//! synchronous (tonic's design), so it reads the cached token and, when the token is due, starts a refresh in the
//! background; the connection actor fetches the first token before it reports READY.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::target::{Secret, Target};

/// Why a token could not be had, or an auth setting is invalid. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// The last fetch failed less than `min_retry_interval` ago.
    #[error("token fetch failed recently ({last_error}); next try in {retry_in:?}")]
    RetryLater {
        /// Time left before a fetch is allowed.
        retry_in: Duration,
        /// The last fetch's error.
        last_error: String,
    },
    /// The CA file for an https token endpoint could not be used.
    #[error("cannot use CA file `{path}` for the token endpoint: {reason}")]
    CaFile {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The fetch failed.
    #[error("token fetch from {url} failed: {reason}")]
    Fetch {
        /// The token endpoint.
        url: String,
        /// Why.
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
    /// Refresh this long before expiry (60 s).
    pub refresh_before: Duration,
    /// At least this long between failed fetches (5 s).
    pub min_retry_interval: Duration,
    /// Lifetime assumed when the response has no `expires_in` (3600 s).
    pub default_lifetime: Duration,
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
            ca_file: target.ca_file.clone(),
        })
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

struct OAuth2 {
    config: OAuth2Config,
    uri: http::Uri,
    client: HttpsClient,
    cache: Mutex<TokenCache>,
    fetch_lock: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

#[derive(Default)]
struct TokenCache {
    token: Option<(Secret, Instant)>,
    last_failure: Option<(Instant, String)>,
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

    /// OAuth2 client credentials.
    pub fn oauth2(config: OAuth2Config) -> Result<TokenSource, AuthError> {
        let uri: http::Uri =
            config
                .token_url
                .parse()
                .map_err(|e: http::uri::InvalidUri| AuthError::InvalidTokenUrl {
                    url: config.token_url.clone(),
                    reason: e.to_string(),
                })?;
        let connector = if uri.scheme_str() == Some("https") {
            let builder = match &config.ca_file {
                None => hyper_rustls::HttpsConnectorBuilder::new()
                    .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
                    .map_err(|e| AuthError::InvalidTokenUrl {
                        url: config.token_url.clone(),
                        reason: format!("no TLS trust roots: {e}"),
                    })?,
                Some(path) => {
                    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(ca_file_tls_config(path)?)
                }
            };
            builder.https_or_http().enable_http1().build()
        } else {
            let mut http = HttpConnector::new();
            http.enforce_http(true);
            hyper_rustls::HttpsConnector::from((http, Arc::new(empty_tls_config())))
        };
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(TokenSource(Arc::new(SourceKind::OAuth2(Box::new(OAuth2 {
            config,
            uri,
            client,
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
                let cache = o.cache.lock().expect("token cache poisoned");
                match &cache.token {
                    Some((t, expires)) if Instant::now() < *expires => Some(t.clone()),
                    _ => None,
                }
            }
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
        let _guard = o.fetch_lock.lock().await;
        // Another caller may have refreshed while this one waited for the lock.
        if let Some(t) = o.fresh() {
            return Ok(t);
        }
        let now = Instant::now();
        {
            let cache = o.cache.lock().expect("token cache poisoned");
            if let Some((at, err)) = &cache.last_failure {
                let next = *at + o.config.min_retry_interval;
                if now < next {
                    if let Some((t, exp)) = &cache.token {
                        if now < *exp {
                            return Ok(t.clone());
                        }
                    }
                    return Err(AuthError::RetryLater {
                        retry_in: next - now,
                        last_error: err.clone(),
                    });
                }
            }
        }
        o.fetches.fetch_add(1, Ordering::Relaxed);
        let result = o.fetch().await;
        let mut cache = o.cache.lock().expect("token cache poisoned");
        match result {
            Ok((token, lifetime)) => {
                tracing::debug!(url = %o.config.token_url, ?lifetime, "access token fetched");
                cache.token = Some((token.clone(), Instant::now() + lifetime));
                cache.last_failure = None;
                Ok(token)
            }
            Err(e) => {
                tracing::warn!(url = %o.config.token_url, error = %e, "access token fetch failed");
                cache.last_failure = Some((Instant::now(), e.to_string()));
                match &cache.token {
                    // Still valid, just due: keep using it until the next allowed try.
                    Some((t, exp)) if Instant::now() < *exp => Ok(t.clone()),
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
            let mut cache = o.cache.lock().expect("token cache poisoned");
            if cache.refreshing {
                return;
            }
            cache.refreshing = true;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            o.cache.lock().expect("token cache poisoned").refreshing = false;
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            let _ = me.token().await;
            if let SourceKind::OAuth2(o) = &*me.0 {
                o.cache.lock().expect("token cache poisoned").refreshing = false;
            }
        });
    }
}

impl OAuth2 {
    /// The cached token if it is not yet due for refresh.
    fn fresh(&self) -> Option<Secret> {
        let cache = self.cache.lock().expect("token cache poisoned");
        match &cache.token {
            Some((t, expires)) if Instant::now() + self.config.refresh_before < *expires => Some(t.clone()),
            _ => None,
        }
    }

    async fn fetch(&self) -> Result<(Secret, Duration), AuthError> {
        let fail = |reason: String| AuthError::Fetch {
            url: self.config.token_url.clone(),
            reason,
        };
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("client_secret", self.config.client_secret.expose())
            .finish();
        let req = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| fail("timed out after 30s".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(fail(format!("HTTP {status}")));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| fail(format!("bad token response: {e}")))?;
        if parsed.access_token.is_empty() {
            return Err(fail("empty access_token".into()));
        }
        let lifetime = parsed
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(self.config.default_lifetime);
        Ok((Secret::new(parsed.access_token), lifetime))
    }
}

/// Trust exactly the certificates of a PEM file (the connection string's `caFile`).
fn ca_file_tls_config(path: &std::path::Path) -> Result<rustls::ClientConfig, AuthError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |reason: String| AuthError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The `HttpsConnector` type wants a TLS config even for a plain-http token endpoint; this one trusts nothing,
/// and `enforce_http(true)` keeps it from ever being used.
fn empty_tls_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
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

/// A tonic interceptor adding the configured credentials to every call.
#[derive(Clone)]
pub struct AuthInterceptor {
    api_key: Option<AsciiMetadataValue>,
    bearer: Option<TokenSource>,
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

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(key) = &self.api_key {
            request.metadata_mut().insert("api-key", key.clone());
        }
        if let Some(source) = &self.bearer {
            source.refresh_in_background_if_due();
            let token = source.current().ok_or_else(|| {
                Status::unauthenticated("no valid access token (token endpoint unreachable?)")
            })?;
            let mut v: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {}", token.expose()))
                .map_err(|_| Status::unauthenticated("access token is not a valid header value"))?;
            v.set_sensitive(true);
            request.metadata_mut().insert("authorization", v);
        }
        Ok(request)
    }
}
