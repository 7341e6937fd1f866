//! TLS against a tonic server with a freshly generated self-signed certificate (rcgen).

mod grpc_common;

use std::time::Duration;

use arbor_actors::connection::{BackoffConfig, ConnectionConfig, ConnectionHandle, ConnectivityState};
use grpc_common::{InProcessServer, LONG};
use tonic::transport::{Identity, ServerTlsConfig};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn tls_server() -> (InProcessServer, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["arbor.test".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    let key_pem = ck.signing_key.serialize_pem();
    let dir = std::env::temp_dir().join(format!(
        "arbor-tls-{}-{}",
        std::process::id(),
        grpc_common::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
    (InProcessServer::start_with(0, None, Some(tls)), ca)
}

fn config(cs: &str) -> ConnectionConfig {
    ConnectionConfig::parse(cs)
        .unwrap()
        .with_backoff(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
            min_connect_timeout: Duration::from_secs(2),
            ..Default::default()
        })
        .with_probe_interval(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_custom_ca_connects_and_unknown_ca_fails() {
    grpc_common::init_tracing();
    let (server, ca) = tls_server();
    let cs = format!(
        "grpc://127.0.0.1:{}?caFile={}&tlsServerName=arbor.test",
        server.port(),
        ca.display()
    );
    let h = ConnectionHandle::spawn(config(&cs)).await.unwrap();
    let ch = h.wait_ready(LONG).await.expect("TLS with the generated CA");
    HealthClient::new(ch)
        .check(h.request(HealthCheckRequest::default()))
        .await
        .unwrap();
    h.shutdown().await;

    // Same server, system roots only: the self-signed certificate is refused.
    let cs = format!("grpc://127.0.0.1:{}?tlsServerName=arbor.test", server.port());
    let h = ConnectionHandle::spawn(config(&cs).with_max_attempts(Some(1)))
        .await
        .unwrap();
    assert!(h.wait_ready(LONG).await.is_err());
    let err = h.snapshot().last_error.unwrap();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    h.shutdown().await;

    // Wrong name: refused too.
    let cs = format!(
        "grpc://127.0.0.1:{}?caFile={}&tlsServerName=other.test",
        server.port(),
        ca.display()
    );
    let h = ConnectionHandle::spawn(config(&cs).with_max_attempts(Some(1)))
        .await
        .unwrap();
    assert!(h.wait_ready(LONG).await.is_err());
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(ca.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_timeout_against_a_silent_peer() {
    grpc_common::init_tracing();
    // Accepts TCP and never says a word: only the TLS handshake timeout ends the attempt.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            held.push(s);
        }
    });
    let cs = format!("grpc://127.0.0.1:{port}?tlsServerName=arbor.test");
    let mut cfg = config(&cs)
        .with_tls_handshake_timeout(Duration::from_millis(200))
        .with_max_attempts(Some(1));
    cfg.backoff.min_connect_timeout = Duration::from_secs(10);
    let h = ConnectionHandle::spawn(cfg).await.unwrap();
    // min_connect_timeout is 10 s: failing well before it shows the handshake timeout at work. The bound is
    // generous, not a performance assertion.
    let started = tokio::time::Instant::now();
    assert!(h.wait_ready(LONG).await.is_err());
    assert_eq!(h.state(), ConnectivityState::Shutdown);
    let err = h.snapshot().last_error.unwrap();
    assert!(!err.contains("connect timed out"), "{err}");
    assert!(err.contains("timed out") || err.contains("timeout"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?} {err}",
        started.elapsed()
    );
    println!("handshake timeout error: {err}");
    holder.abort();
}

#[test]
fn missing_ca_file_is_a_typed_error() {
    let err = ConnectionHandle::prepare(config("grpc://h:1?caFile=/nonexistent/arbor-ca.pem")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/nonexistent/arbor-ca.pem"), "{text}");
}
