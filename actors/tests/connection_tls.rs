//! TLS against a tonic server with a freshly generated self-signed certificate (rcgen): the connector's own
//! TLS (custom CA, system roots, server name, client certificates), TLS files checked when prepared.
#![cfg(feature = "connection")]

mod grpc_common;

use std::time::Duration;

use arbor_actors::connection::{
    CloseReason, ConfigError, ConnectionError, ConnectionHandle, ConnectivityState,
};
use grpc_common::{quick_config, InProcessServer, LONG};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_custom_ca_connects_and_unknown_ca_fails() {
    grpc_common::init_tracing();
    let (server, ca) = tls_server();
    let cs = format!(
        "grpc://127.0.0.1:{}?caFile={}&tlsServerName=arbor.test",
        server.port(),
        ca.display()
    );
    let h = ConnectionHandle::start(quick_config(&cs)).await.unwrap();
    let ch = h.wait_ready(LONG).await.expect("TLS with the generated CA");
    HealthClient::new(ch)
        .check(h.request(HealthCheckRequest::default()))
        .await
        .unwrap();
    h.shutdown(Duration::from_secs(5)).await.unwrap();

    // Same server, system roots only: the self-signed certificate is refused.
    let cs = format!("grpc://127.0.0.1:{}?tlsServerName=arbor.test", server.port());
    let h = ConnectionHandle::start(quick_config(&cs).with_max_attempts(Some(1)))
        .await
        .unwrap();
    assert!(h.wait_ready(LONG).await.is_err());
    let err = h.snapshot().last_error.unwrap();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(
        matches!(h.snapshot().close_reason, Some(CloseReason::Tls { .. })),
        "{:?}",
        h.snapshot()
    );
    h.shutdown(Duration::from_secs(5)).await.unwrap();

    // Wrong name: refused too.
    let cs = format!(
        "grpc://127.0.0.1:{}?caFile={}&tlsServerName=other.test",
        server.port(),
        ca.display()
    );
    let h = ConnectionHandle::start(quick_config(&cs).with_max_attempts(Some(1)))
        .await
        .unwrap();
    assert!(h.wait_ready(LONG).await.is_err());
    h.shutdown(Duration::from_secs(5)).await.unwrap();
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
    let mut cfg = quick_config(&cs)
        .with_tls_handshake_timeout(Duration::from_millis(200))
        .with_max_attempts(Some(1));
    cfg.backoff.min_connect_timeout = Duration::from_secs(10);
    let h = ConnectionHandle::start(cfg).await.unwrap();
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
    let err =
        ConnectionHandle::prepare(quick_config("grpc://h:1?caFile=/nonexistent/arbor-ca.pem")).unwrap_err();
    match &err {
        ConfigError::TlsFile { field, path, .. } => {
            assert_eq!((*field, path.as_str()), ("caFile", "/nonexistent/arbor-ca.pem"))
        }
        other => panic!("expected TlsFile, got {other:?}"),
    }
    let source = std::error::Error::source(&err).expect("the io error is the source");
    assert!(source.downcast_ref::<std::io::Error>().is_some(), "{source:?}");
}

/// caFile, certFile and keyFile that hold no PEM item of the right kind (empty, garbage, a key where a
/// certificate belongs, a key that does not match the certificate) are refused when the configuration is
/// prepared, naming the parameter; `ConnectionHandle::start` keeps the typed error as its source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_without_pem_are_refused_naming_the_field() {
    let dir = std::env::temp_dir().join(format!(
        "arbor-pem-{}-{}",
        std::process::id(),
        grpc_common::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["arbor.test".to_string()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["other.test".to_string()]).unwrap();
    let file = |name: &str, content: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let empty = file("empty.pem", b"");
    let garbage = file("garbage.pem", b"\x00\x01 this is not PEM at all \xff");
    let cert = file("cert.pem", ck.cert.pem().as_bytes());
    let key = file("key.pem", ck.signing_key.serialize_pem().as_bytes());
    let other_key = file("other-key.pem", other.signing_key.serialize_pem().as_bytes());
    let cases = [
        (format!("caFile={empty}"), "caFile"),
        (format!("caFile={garbage}"), "caFile"),
        (format!("caFile={key}"), "caFile"),
        (
            format!("caFile={cert}&certFile={garbage}&keyFile={key}"),
            "certFile",
        ),
        (
            format!("caFile={cert}&certFile={cert}&keyFile={empty}"),
            "keyFile",
        ),
        (format!("caFile={cert}&certFile={cert}&keyFile={cert}"), "keyFile"),
        (
            format!("caFile={cert}&certFile={cert}&keyFile={other_key}"),
            "keyFile",
        ),
    ];
    for (params, want) in cases {
        let cs = format!("grpc://127.0.0.1:1?tlsServerName=arbor.test&{params}");
        match ConnectionHandle::prepare(quick_config(&cs)) {
            Err(ConfigError::Pem { field, .. }) => assert_eq!(field, want, "{params}"),
            other => panic!("{params}: expected a Pem error on {want}, got {other:?}"),
        }
        match ConnectionHandle::start(quick_config(&cs)).await {
            Err(ConnectionError::Config(ConfigError::Pem { field, .. })) => assert_eq!(field, want),
            other => panic!("{params}: expected Config(Pem), got {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Mutual TLS: a server that requires a client certificate admits the connection that presents
/// certFile/keyFile and refuses (with a TLS reason) the one that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_for_mutual_tls() {
    grpc_common::init_tracing();
    let server_ck = rcgen::generate_simple_self_signed(vec!["arbor.test".to_string()]).unwrap();
    let client_ck = rcgen::generate_simple_self_signed(vec!["client.arbor.test".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "arbor-mtls-{}-{}",
        std::process::id(),
        grpc_common::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, content: String| {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let ca = write("ca.pem", server_ck.cert.pem());
    let cert = write("client.pem", client_ck.cert.pem());
    let key = write("client-key.pem", client_ck.signing_key.serialize_pem());
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            server_ck.cert.pem(),
            server_ck.signing_key.serialize_pem(),
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(client_ck.cert.pem()));
    let server = InProcessServer::start_with(0, None, Some(tls));
    let base = format!(
        "grpc://127.0.0.1:{}?tlsServerName=arbor.test&caFile={ca}",
        server.port()
    );
    let h = ConnectionHandle::start(quick_config(&format!("{base}&certFile={cert}&keyFile={key}")))
        .await
        .unwrap();
    HealthClient::new(
        h.wait_ready(LONG)
            .await
            .expect("the client certificate is accepted"),
    )
    .check(h.request(HealthCheckRequest::default()))
    .await
    .unwrap();
    h.shutdown(Duration::from_secs(5)).await.unwrap();

    let h = ConnectionHandle::start(quick_config(&base).with_max_attempts(Some(1)))
        .await
        .unwrap();
    assert!(h.wait_ready(LONG).await.is_err());
    // TLS 1.3 reports a missing client certificate as an alert on the first read after the handshake: the
    // attempt fails either in the handshake (Tls) or when the peer closes.
    assert!(h.snapshot().close_reason.is_some(), "{:?}", h.snapshot());
    h.shutdown(Duration::from_secs(5)).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// An https token endpoint (tokio-rustls + hyper) serving `tok-<n>`; returns its port.
async fn https_token_endpoint(cert_der: Vec<u8>, key_der: Vec<u8>) -> u16 {
    use http_body_util::Full;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let config = rustls::ServerConfig::builder_with_provider(arbor_actors::connection::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut n = 0u32;
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            n += 1;
            let body = format!(r#"{{"access_token":"tls-tok-{n}","expires_in":3600}}"#);
            let svc = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                let body = body.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from(
                        body,
                    ))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc),
            );
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_over_https_with_the_ca_file_and_tls_grpc() {
    grpc_common::init_tracing();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "arbor-tls-oauth-{}-{}",
        std::process::id(),
        grpc_common::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let token_port = https_token_endpoint(ck.cert.der().to_vec(), ck.signing_key.serialize_der()).await;
    let log = grpc_common::MetadataLog::default();
    let tls =
        ServerTlsConfig::new().identity(Identity::from_pem(ck.cert.pem(), ck.signing_key.serialize_pem()));
    let server = InProcessServer::start_with(0, Some(log.clone()), Some(tls));
    let cs = format!(
        "grpc://client:s3cret@127.0.0.1:{}?caFile={}&authPort={token_port}",
        server.port(),
        ca.display()
    );
    let h = ConnectionHandle::start(quick_config(&cs)).await.unwrap();
    h.wait_ready(LONG)
        .await
        .expect("token over https and gRPC over TLS, both trusting caFile");
    let auth: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|m| m.get("authorization").map(|v| v.to_str().unwrap().to_string()))
        .collect();
    assert_eq!(auth.first().map(String::as_str), Some("Bearer tls-tok-1"));
    h.shutdown(Duration::from_secs(5)).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
