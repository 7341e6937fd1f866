//! Auth: api-key and bearer headers arrive at a real tonic server; OAuth2 client credentials against a real local
//! HTTP token endpoint (refresh, retry interval, default lifetime); secrets stay out of Debug output and logs.

mod grpc_common;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arbor_actors::connection::{
    Auth, AuthError, AuthInterceptor, ConnectionHandle, OAuth2Config, Secret, TokenSource,
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
    let mut client = HealthClient::new(h.authed_channel().unwrap());
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
    let ch = h.wait_ready(LONG).await.unwrap();
    HealthClient::with_interceptor(ch, h.interceptor())
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
    assert_eq!(err, AuthError::InvalidHeaderValue { which: "api key" });
}

/// A real HTTP/1.1 token endpoint: `POST /connect/token`, tokens `tok-1`, `tok-2`, ...
struct TokenEndpoint {
    port: u16,
    hits: Arc<AtomicUsize>,
    forms: Arc<Mutex<Vec<String>>>,
}

async fn token_endpoint(expires_in: Option<u64>, fail: bool) -> TokenEndpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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
                        let resp = if fail {
                            hyper::Response::builder()
                                .status(500)
                                .body(Full::new(Bytes::from("down")))
                        } else {
                            let json = match expires_in {
                                Some(e) => format!(
                                    r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":{e}}}"#
                                ),
                                None => format!(r#"{{"access_token":"tok-{n}","token_type":"Bearer"}}"#),
                            };
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(json)))
                        };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_client_credentials_token_sent_and_refreshed_before_expiry() {
    log_buffer();
    // 60 s lifetime with the 60 s refresh margin: every token is due for refresh as soon as it is fetched.
    let tokens = token_endpoint(Some(60), false).await;
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
            let mut client = HealthClient::new(h.authed_channel().unwrap());
            client
                .check(h.request(HealthCheckRequest::default()))
                .await
                .unwrap();
            // Any refreshed token will do: every token is due at once, so under load the refresh spawned by
            // one call can finish, and the next one too, before a call reads the cache: tok-2 may never be sent.
            if header(&log, "authorization")
                .iter()
                .any(|a| a.starts_with("Bearer tok-") && a != "Bearer tok-1")
            {
                return;
            }
            tokio::task::yield_now().await;
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
    assert!(matches!(source.token().await, Err(AuthError::Fetch { .. })));
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
