//! Auth: api-key and bearer headers arrive at a real tonic server; OAuth2 client credentials against a real local
//! HTTP token endpoint (refresh, retry interval, default lifetime, hostile answers); secrets stay out of Debug
//! output and logs.
#![cfg(feature = "connection")]

mod grpc_common;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arbor_actors::connection::{
    Auth, AuthError, AuthInterceptor, CloseReason, ConnectionHandle, ConnectivityState, OAuth2Config, Secret,
    TokenSource,
};
use bytes::Bytes;
use grpc_common::{quick_config, InProcessServer, MetadataLog, LONG};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::time::timeout;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SECRETS: [&str; 3] = ["pa55-SECRET", "key-SECRET", "static-SECRET"];

/// Every log line of this test binary, at every level, to check that no secret is ever logged.
fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || BufWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

struct BufWriter(Arc<Mutex<Vec<u8>>>);
impl Write for BufWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_no_secret_logged() {
    let logs = String::from_utf8_lossy(&log_buffer().lock().unwrap()).to_string();
    assert!(!logs.is_empty(), "the test subscriber captured nothing");
    for s in SECRETS {
        assert!(!logs.contains(s), "secret {s} logged");
    }
}

fn header(log: &MetadataLog, name: &str) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|m| m.get(name).map(|v| v.to_str().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_and_static_bearer_headers_arrive() {
    log_buffer();
    let log = MetadataLog::default();
    let server = InProcessServer::start(0, Some(log.clone()));
    let h = ConnectionHandle::start(quick_config(&format!(
        "grpc://127.0.0.1:{}?disableTls=true&apiKey=key-SECRET",
        server.port()
    )))
    .await
    .unwrap();
    h.wait_ready(LONG).await.unwrap();
    let mut client = HealthClient::new(h.channel());
    client
        .check(h.request(HealthCheckRequest::default()))
        .await
        .unwrap();
    let keys = header(&log, "api-key");
    assert!(keys.len() >= 2, "attempt's check and the call: {keys:?}");
    assert!(keys.iter().all(|k| k == "key-SECRET"));
    assert!(header(&log, "authorization").is_empty());
    assert!(!format!("{h:?} {:?}", h.interceptor()).contains("SECRET"));
    h.shutdown(Duration::from_secs(5)).await.unwrap();

    let log = MetadataLog::default();
    let server = InProcessServer::start(0, Some(log.clone()));
    let cfg = quick_config(&format!("grpc://127.0.0.1:{}?disableTls=true", server.port()))
        .with_auth(Auth::Bearer(TokenSource::fixed(Secret::new("static-SECRET"))));
    assert!(!format!("{cfg:?}").contains("SECRET"));
    let h = ConnectionHandle::start(cfg).await.unwrap();
    h.wait_ready(LONG).await.unwrap();
    // The raw transport with the interceptor, as before the following channel existed.
    HealthClient::with_interceptor(h.pinned_transport().unwrap(), h.interceptor())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    let auth = header(&log, "authorization");
    assert!(
        !auth.is_empty() && auth.iter().all(|a| a == "Bearer static-SECRET"),
        "{auth:?}"
    );
    h.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_no_secret_logged();
}

#[test]
fn api_key_that_cannot_be_a_header_is_a_typed_error() {
    let err = AuthInterceptor::new(&Auth::ApiKey(Secret::new("bad\nkey"))).unwrap_err();
    assert!(
        matches!(err, AuthError::InvalidHeaderValue { which: "api key" }),
        "{err:?}"
    );
}

/// A real HTTP/1.1 token endpoint: `POST /connect/token`; the `n`-th request gets `reply(n)` (status, body).
struct TokenEndpoint {
    port: u16,
    hits: Arc<AtomicUsize>,
    forms: Arc<Mutex<Vec<String>>>,
}

type Reply = fn(usize) -> (u16, String);

async fn token_endpoint_with(reply: Reply) -> TokenEndpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    token_endpoint_on(listener, reply)
}

/// A token endpoint answering on a listener bound earlier (connections made before it starts wait).
fn token_endpoint_on(listener: tokio::net::TcpListener, reply: Reply) -> TokenEndpoint {
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let forms = Arc::new(Mutex::new(Vec::new()));
    let (h, f) = (hits.clone(), forms.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (hits, forms) = (h.clone(), f.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (hits, forms) = (hits.clone(), forms.clone());
                    async move {
                        assert_eq!(req.method(), hyper::Method::POST);
                        assert_eq!(req.uri().path(), "/connect/token");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        forms
                            .lock()
                            .unwrap()
                            .push(String::from_utf8(body.to_vec()).unwrap());
                        let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                        let (status, body) = reply(n);
                        let resp = hyper::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)));
                        Ok::<_, std::convert::Infallible>(resp.unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TokenEndpoint { port, hits, forms }
}

/// Tokens `tok-1`, `tok-2`, ... with `expires_in` as given (or none), or HTTP 500 when `fail`.
async fn token_endpoint(expires_in: Option<u64>, fail: bool) -> TokenEndpoint {
    let reply: Reply = match (fail, expires_in) {
        (true, _) => |_| (500, "down".into()),
        (false, None) => |n| {
            (
                200,
                format!(r#"{{"access_token":"tok-{n}","token_type":"Bearer"}}"#),
            )
        },
        (false, Some(5)) => |n| (200, format!(r#"{{"access_token":"tok-{n}","expires_in":5}}"#)),
        (false, Some(30)) => |n| (200, format!(r#"{{"access_token":"tok-{n}","expires_in":30}}"#)),
        (false, Some(3600)) => |n| (200, format!(r#"{{"access_token":"tok-{n}","expires_in":3600}}"#)),
        (false, Some(other)) => panic!("no endpoint for expires_in {other}"),
    };
    token_endpoint_with(reply).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_client_credentials_token_sent_and_refreshed_before_expiry() {
    log_buffer();
    // A 5 s lifetime: due for refresh after 4 s (a fifth of the lifetime early), valid for 1 s more.
    let tokens = token_endpoint(Some(5), false).await;
    let log = MetadataLog::default();
    let server = InProcessServer::start(0, Some(log.clone()));
    let cfg = quick_config(&format!(
        "grpc://client-1:pa55-SECRET@127.0.0.1:{}?disableTls=true&authPort={}",
        server.port(),
        tokens.port
    ));
    assert!(!format!("{cfg:?}").contains("pa55"));
    let h = ConnectionHandle::start(cfg).await.unwrap();
    h.wait_ready(LONG).await.unwrap();
    let form = tokens.forms.lock().unwrap()[0].clone();
    assert!(form.contains("grant_type=client_credentials"), "{form}");
    assert!(form.contains("client_id=client-1"), "{form}");
    assert!(form.contains("client_secret=pa55-SECRET"), "{form}");
    assert_eq!(header(&log, "authorization")[0], "Bearer tok-1");

    // Calls go on with the still-valid token while a refresh runs in the background; then the new one is used.
    timeout(LONG, async {
        loop {
            let mut client = HealthClient::new(h.channel());
            client
                .check(h.request(HealthCheckRequest::default()))
                .await
                .unwrap();
            // Any refreshed token will do: on a loaded machine more than one lifetime can pass between two
            // calls, so tok-2 may never be sent.
            if header(&log, "authorization")
                .iter()
                .any(|a| a.starts_with("Bearer tok-") && a != "Bearer tok-1")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("refreshed token used");
    h.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_no_secret_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_expiry_lasts_an_hour_and_failed_fetches_are_spaced() {
    log_buffer();
    let tokens = token_endpoint(None, false).await;
    let target = format!(
        "grpc://c:pa55-SECRET@127.0.0.1:1?disableTls=true&authPort={}",
        tokens.port
    )
    .parse()
    .unwrap();
    let cfg = OAuth2Config::for_target(&target).unwrap();
    assert_eq!(
        cfg.token_url,
        format!("http://127.0.0.1:{}/connect/token", tokens.port)
    );
    assert!(!format!("{cfg:?}").contains("pa55"));
    let source = TokenSource::oauth2(cfg).unwrap();
    assert_eq!(source.token().await.unwrap().expose(), "tok-1");
    assert_eq!(
        source.token().await.unwrap().expose(),
        "tok-1",
        "3600 s assumed: not due"
    );
    assert_eq!(tokens.hits.load(Ordering::SeqCst), 1);

    let failing = token_endpoint(Some(3600), true).await;
    let mut cfg = OAuth2Config::for_target(&target).unwrap();
    cfg.token_url = format!("http://127.0.0.1:{}/connect/token", failing.port);
    let source = TokenSource::oauth2(cfg).unwrap();
    assert!(matches!(
        source.token().await,
        Err(AuthError::Status { status: 500, .. })
    ));
    match source.token().await {
        Err(AuthError::RetryLater { retry_in, .. }) => assert!(retry_in <= Duration::from_secs(5)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        failing.hits.load(Ordering::SeqCst),
        1,
        "no second fetch within 5 s"
    );
    assert!(source.current().is_none());

    // The interceptor refuses calls it has no token for, with UNAUTHENTICATED.
    let mut i = AuthInterceptor::new(&Auth::Bearer(source)).unwrap();
    let status = tonic::service::Interceptor::call(&mut i, tonic::Request::new(())).unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_no_secret_logged();
}

/// A tonic server logging metadata, and a connection to it with OAuth2 credentials against `tokens`.
async fn oauth2_connection(tokens: &TokenEndpoint, log: &MetadataLog) -> (InProcessServer, ConnectionHandle) {
    let server = InProcessServer::start(0, Some(log.clone()));
    let h = ConnectionHandle::start(quick_config(&format!(
        "grpc://c:pa55-SECRET@127.0.0.1:{}?disableTls=true&authPort={}",
        server.port(),
        tokens.port
    )))
    .await
    .unwrap();
    h.wait_ready(LONG).await.unwrap();
    (server, h)
}

/// 200 calls through the connection's channel with a 30 s token: one fetch (a fixed 60 s refresh margin made
/// every short-lived token due at once: one fetch per call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_token_is_fetched_once_not_once_per_call() {
    log_buffer();
    let tokens = token_endpoint(Some(30), false).await;
    let log = MetadataLog::default();
    let (_server, h) = oauth2_connection(&tokens, &log).await;
    let mut client = HealthClient::new(h.channel());
    for _ in 0..200 {
        client
            .check(h.request(HealthCheckRequest::default()))
            .await
            .unwrap();
    }
    assert_eq!(tokens.hits.load(Ordering::SeqCst), 1, "one fetch for 200 calls");
    assert!(header(&log, "authorization").iter().all(|a| a == "Bearer tok-1"));
    h.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_no_secret_logged();
}

/// `expires_in: 0` (no lifetime given) and `expires_in: u64::MAX` (an overflow that used to panic under the
/// token cache's lock, poisoning it) both give a READY connection whose calls carry the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_in_zero_and_u64_max_give_a_ready_connection() {
    log_buffer();
    let replies: [Reply; 2] = [
        |n| (200, format!(r#"{{"access_token":"tok-{n}","expires_in":0}}"#)),
        |n| {
            (
                200,
                format!(r#"{{"access_token":"tok-{n}","expires_in":18446744073709551615}}"#),
            )
        },
    ];
    for reply in replies {
        let tokens = token_endpoint_with(reply).await;
        let log = MetadataLog::default();
        let (_server, h) = oauth2_connection(&tokens, &log).await;
        for _ in 0..5 {
            grpc_common::check_via(&h).await.unwrap();
        }
        assert_eq!(tokens.hits.load(Ordering::SeqCst), 1);
        assert!(header(&log, "authorization").iter().all(|a| a == "Bearer tok-1"));
        h.shutdown(Duration::from_secs(5)).await.unwrap();
    }
    assert_no_secret_logged();
}

/// Garbage, an empty token, HTTP 500, and an endpoint that never answers: every attempt fails with a typed
/// `Auth` reason, the connection goes to TRANSIENT_FAILURE with `last_error` set, and tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_token_endpoints_fail_attempts_which_are_retried() {
    log_buffer();
    let replies: [Reply; 3] = [
        |_| (200, "<html>not json</html>".into()),
        |_| (200, r#"{"access_token":"","expires_in":60}"#.into()),
        |_| (500, "down".into()),
    ];
    let mut ports = Vec::new();
    for reply in replies {
        let tokens = token_endpoint_with(reply).await;
        ports.push((tokens.port, tokens.hits));
    }
    // Accepts and never answers: only the attempt's connect timeout ends the fetch.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(silent.accept().await.unwrap());
        }
    });
    ports.push((silent_port, Arc::new(AtomicUsize::new(0))));
    let server = InProcessServer::start(0, None);
    for (port, hits) in ports {
        let mut cfg = quick_config(&format!(
            "grpc://c:pa55-SECRET@127.0.0.1:{}?disableTls=true&authPort={port}",
            server.port()
        ));
        cfg.backoff.min_connect_timeout = Duration::from_millis(500);
        cfg.backoff.initial = Duration::from_millis(100);
        let h = ConnectionHandle::start(cfg).await.unwrap();
        let mut rx = h.watch();
        // Two failed attempts: the second proves the first one's failure was reported and retried.
        let snap = timeout(LONG, rx.wait_for(|s| s.failed_attempts >= 2))
            .await
            .expect("attempts fail and are retried")
            .unwrap()
            .clone();
        assert!(
            matches!(snap.close_reason, Some(CloseReason::Auth { .. })),
            "{snap:?}"
        );
        assert!(snap.last_error.is_some());
        assert_ne!(snap.state, ConnectivityState::Ready);
        if port != silent_port {
            assert!(hits.load(Ordering::SeqCst) >= 1);
        }
        h.shutdown(Duration::from_secs(5)).await.unwrap();
    }
    holder.abort();
    assert_no_secret_logged();
}

/// A call made while the connection is still CONNECTING because its token endpoint is slow to start waits
/// for READY and for the token, then goes out with it. Before the fix the auth interceptor ran before the
/// channel waited for READY: such calls failed at once with `Unauthenticated` ("no valid access token").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_before_the_first_token_waits_for_it() {
    log_buffer();
    // Bound but not answering yet: the connection's first fetch waits in the listener's backlog.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_port = listener.local_addr().unwrap().port();
    let log = MetadataLog::default();
    let server = InProcessServer::start(0, Some(log.clone()));
    let h = ConnectionHandle::start(quick_config(&format!(
        "grpc://c:pa55-SECRET@127.0.0.1:{}?disableTls=true&authPort={token_port}",
        server.port()
    )))
    .await
    .unwrap();
    let mut call = tokio::spawn({
        let channel = h.channel();
        async move {
            let mut request = tonic::Request::new(HealthCheckRequest::default());
            request.set_timeout(LONG);
            HealthClient::new(channel).check(request).await
        }
    });
    // No token can exist yet: the call must still be waiting, not failed.
    if let Ok(early) = timeout(Duration::from_millis(300), &mut call).await {
        panic!(
            "the call ended before any token existed: {:?}",
            early.unwrap().map(|_| ())
        );
    }
    let tokens = token_endpoint_on(listener, |n| {
        (200, format!(r#"{{"access_token":"tok-{n}","expires_in":3600}}"#))
    });
    timeout(LONG, call)
        .await
        .expect("the call ends once READY")
        .unwrap()
        .expect("the call succeeds with the token");
    assert_eq!(tokens.hits.load(Ordering::SeqCst), 1);
    assert!(header(&log, "authorization").iter().any(|a| a == "Bearer tok-1"));
    h.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_no_secret_logged();
}

/// A token that expires while its endpoint answers HTTP 500: calls fail `Unauthenticated` with a message that
/// names the cause (the endpoint and its status), not a guess ("token endpoint unreachable?").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_is_named_in_the_calls_it_fails() {
    log_buffer();
    let tokens = token_endpoint_with(|n| match n {
        1 => (200, r#"{"access_token":"tok-1","expires_in":1}"#.into()),
        _ => (500, "down".into()),
    })
    .await;
    let log = MetadataLog::default();
    let (_server, h) = oauth2_connection(&tokens, &log).await;
    // Calls succeed until the one-second token expires, then fail: wait for the first failure (bounded).
    let started = tokio::time::Instant::now();
    let status = loop {
        assert!(started.elapsed() < LONG, "no call failed after the token expired");
        match grpc_common::check_via(&h).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("HTTP 500") && status.message().contains(&tokens.port.to_string()),
        "the message names the endpoint and its answer: {}",
        status.message()
    );
    h.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_no_secret_logged();
}
