//! The introspection server's token and TLS, and its Prometheus exporter: with a token every RPC (health
//! included) needs it, as Bearer or api-key, and so does `/metrics`; TLS with rcgen-made certificates on both
//! listeners; secrets never in Debug. One test binary holds the exporter's tests: the recorder is per process.

mod inspect_common;

use std::time::Duration;

use arbor::introspect::{ClientError, ClientOptions, InspectClient, PrometheusOptions};
use arbor::serving::{ApiKeys, TlsFiles};
use inspect_common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic::metadata::MetadataValue;

/// One HTTP/1.1 GET over `stream`; the status code and the body.
async fn get(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // A TLS peer may close without close_notify; what was read is the response.
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn plain(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

fn write_token(dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("# the inspect token\n{token}\n")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_on_every_call_and_on_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_token(dir.path(), "s3cret-token");
    let options = options()
        .token_file(&tokens)
        .tokens(ApiKeys::new(vec!["second-token".into()]).unwrap())
        .prometheus(PrometheusOptions::default().listen("127.0.0.1:0".parse().unwrap()));
    assert!(
        !format!("{options:?}").contains("second-token"),
        "Debug never shows a token"
    );
    let tree = start_tree(options).await;
    let addrs = tree.introspection_addrs().unwrap();

    let refused = InspectClient::connect(&ClientOptions::new(addrs.grpc.to_string()))
        .await
        .unwrap()
        .tree()
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ClientError::Rpc {
                code: tonic::Code::Unauthenticated,
                ..
            }
        ),
        "{refused}"
    );
    let elsewhere = dir.path().join("wrong");
    std::fs::create_dir(&elsewhere).unwrap();
    let wrong = write_token(&elsewhere, "guess");
    let wrong = InspectClient::connect(&ClientOptions::new(addrs.grpc.to_string()).token_file(&wrong))
        .await
        .unwrap()
        .registry("", "")
        .await
        .unwrap_err();
    assert!(
        matches!(wrong, ClientError::Rpc { code: tonic::Code::Unauthenticated, ref message } if !message.contains("s3cret")),
        "{wrong}"
    );

    let mut client = InspectClient::connect(&ClientOptions::new(addrs.grpc.to_string()).token_file(&tokens))
        .await
        .unwrap();
    assert_eq!(
        client.tree().await.unwrap().name,
        "orders",
        "the file's token, as Bearer"
    );

    // Health needs it too; `api-key` is as good as Bearer, and so is the token given in code.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", addrs.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let check = tonic_health::pb::HealthCheckRequest::default();
    let status = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(check.clone())
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::Unauthenticated,
        "health needs the token"
    );
    let key: MetadataValue<_> = "second-token".parse().unwrap();
    let mut with_key = tonic_health::pb::health_client::HealthClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("api-key", key.clone());
            Ok(r)
        },
    );
    with_key.check(check).await.expect("api-key carries a token");

    let metrics = addrs.prometheus.expect("the exporter listens");
    assert!(metrics.ip().is_loopback());
    let (status, body) = get(plain(metrics).await, "/metrics", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = get(plain(metrics).await, "/metrics", Some("guess")).await;
    assert_eq!(status, 401);
    let (status, body) = get(plain(metrics).await, "/metrics", Some("s3cret-token")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("arbor_child_starts_total"), "{body}");
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_exports_the_tree_metrics_in_text_format() {
    let options = options().prometheus(PrometheusOptions::default().listen("127.0.0.1:0".parse().unwrap()));
    let tree = start_tree(options).await;
    let mut client = client(&tree).await;
    let mut watch = client.watch(arbor::introspect::WatchFrom::Now).await.unwrap();
    let job = start_job(&tree, 1).await;
    job.kill().unwrap();
    next_event(&mut watch, |e| {
        matches!(
            supervisor_kind(e, "orders/jobs", "job#"),
            Some(arbor_proto::inspect::v1::supervisor_event::Kind::Restarted(_))
        )
    })
    .await;

    let metrics = tree.introspection_addrs().unwrap().prometheus.unwrap();
    let (status, body) = get(plain(metrics).await, "/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("# TYPE arbor_restarts_total counter"), "{body}");
    let restarts = body
        .lines()
        .find(|l| {
            l.starts_with("arbor_restarts_total{")
                && l.contains("supervisor=\"orders/jobs\"")
                && l.contains("child=\"job\"")
        })
        .unwrap_or_else(|| panic!("the job's restarts: {body}"));
    let count: f64 = restarts.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{restarts}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("arbor_supervisor_children{supervisor=\"orders/jobs\"} 1")),
        "children per supervisor, read at the scrape: {body}"
    );
    let (status, _) = get(plain(metrics).await, "/other", None).await;
    assert_eq!(status, 404);
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_listeners_with_the_same_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = TlsFiles {
        cert: cert_path.clone(),
        key: key_path,
    };
    let options = options()
        .tls(tls)
        .prometheus(PrometheusOptions::default().listen("127.0.0.1:0".parse().unwrap()));
    let tree = start_tree(options).await;
    let addrs = tree.introspection_addrs().unwrap();
    let port = addrs.grpc.port();

    // Plain text is refused; TLS trusting the CA works.
    let plain_text = InspectClient::connect(&ClientOptions::new(format!("http://127.0.0.1:{port}"))).await;
    let failed = match plain_text {
        Err(err) => Some(err.to_string()),
        Ok(mut client) => client.tree().await.err().map(|e| e.to_string()),
    };
    assert!(
        failed.is_some(),
        "a plain-text client gets nothing from a TLS listener"
    );
    let mut client =
        InspectClient::connect(&ClientOptions::new(format!("localhost:{port}")).ca_file(&cert_path))
            .await
            .expect("TLS with the server's CA");
    assert_eq!(client.tree().await.unwrap().name, "orders");

    // The exporter: HTTPS (ALPN http/1.1) with the same certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(arbor::connection::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let metrics = addrs.prometheus.unwrap();
    let stream = connector
        .connect("localhost".try_into().unwrap(), plain(metrics).await)
        .await
        .expect("a TLS handshake with the exporter");
    let (status, body) = get(stream, "/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    let mut stream = plain(metrics).await;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP is not answered on the TLS listener"
    );
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[test]
fn token_files_and_tls_files_are_checked_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# no token yet\n").unwrap();
    let err = ApiKeys::from_file(&empty).unwrap_err().to_string();
    assert!(err.contains("empty") && err.contains("no key"), "{err}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let err = runtime.block_on(async {
        let tree = arbor::tree::Tree::builder()
            .name("bad")
            .introspection(options().tls(TlsFiles {
                cert: dir.path().join("missing-cert.pem"),
                key: dir.path().join("missing-key.pem"),
            }))
            .start()
            .await;
        tree.map(|_| ()).unwrap_err()
    });
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(
        chain.contains("missing-cert.pem"),
        "the start fails naming the file: {chain}"
    );
}

/// Reads `stream` until the server closes it; panics if it is still open after [`LONG`].
async fn closed_by_the_server(mut stream: tokio::net::TcpStream, what: &str) {
    let mut sink = Vec::new();
    let read = tokio::time::timeout(LONG, stream.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "{what}: still open after {LONG:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_and_slow_scrape_headers_are_closed_at_the_handshake_timeout() {
    let limits =
        arbor::connection_limits::ConnectionLimits::default().handshake_timeout(Duration::from_millis(300));
    let options = options()
        .connections(limits)
        .prometheus(PrometheusOptions::default().listen("127.0.0.1:0".parse().unwrap()));
    let tree = start_tree(options).await;
    let addrs = tree.introspection_addrs().unwrap();

    // A scrape whose headers never end.
    let mut slow = plain(addrs.prometheus.unwrap()).await;
    slow.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    closed_by_the_server(slow, "a scrape with unfinished headers").await;
    // A gRPC connection that never sends its preface.
    closed_by_the_server(plain(addrs.grpc).await, "a silent gRPC connection").await;

    // Both listeners still serve.
    let (status, body) = get(plain(addrs.prometheus.unwrap()).await, "/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(client(&tree).await.tree().await.unwrap().name, "orders");
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}
