//! TLS and api keys on the tunnel service: a plain-text client cannot talk to a TLS server, a client trusting
//! the server's CA can; with api keys every RPC (health included) needs one, as `api-key` or
//! `authorization: Bearer` (what arbor's connection actor sends); a wrong or missing key is UNAUTHENTICATED
//! (fatal). Also: the server as a supervised child.
#![cfg(feature = "tunnel-service")]

mod tunnel_service_common;

use std::time::Duration;

use arbor::tunnel_service::{ApiKeys, ServerOptions, StoreOptions, TlsFiles, TunnelServer, TunnelStore};
use arbor_proto::tunnel::error::ErrorKind;
use arbor_proto::tunnel::v1;
use arbor_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::Code;
use tunnel_service_common::*;

#[tokio::test]
async fn tls_refuses_plain_text_and_serves_clients_that_trust_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = TlsFiles {
        cert: cert_path.clone(),
        key: key_path,
    };
    let server = TestServer::start(StoreOptions::in_memory(), ServerOptions::default().tls(tls)).await;
    let port = server.url.rsplit(':').next().unwrap().to_string();

    // Plain text against the TLS listener: the call fails (the handshake never completes).
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect_lazy();
    let refused = TunnelServiceClient::new(plain)
        .list_tunnels(v1::ListTunnelsRequest {})
        .await
        .unwrap_err();
    assert_ne!(refused.code(), Code::Ok);

    // TLS without trusting the self-signed certificate: refused by the client.
    let untrusted = Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(ClientTlsConfig::new())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    assert!(
        untrusted.is_err(),
        "a certificate nobody vouches for is not accepted"
    );

    let tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(&cert_path).unwrap()));
    let channel = Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS with the server's CA");
    let mut client = TunnelServiceClient::new(channel);
    let tunnel = create_streams(&mut client, "secure", 1).await;
    append_to(&mut client, &tunnel, None, vec![record("k", "v")])
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn api_keys_are_required_on_every_rpc_as_header_or_bearer() {
    let keys = ApiKeys::new(vec!["old-key".into(), "s3cret-key".into()]).unwrap();
    assert!(!format!("{keys:?}").contains("s3cret"), "Debug never shows a key");
    let server = TestServer::start(StoreOptions::in_memory(), ServerOptions::default().api_keys(keys)).await;
    let channel = Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut anonymous = TunnelServiceClient::new(channel.clone());
    let refused = anonymous
        .list_tunnels(v1::ListTunnelsRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(kind(&refused), ErrorKind::Fatal);
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let refused = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "health needs the key too");

    let with = |header: &'static str, value: &'static str| {
        let value: MetadataValue<_> = value.parse().unwrap();
        TunnelServiceClient::with_interceptor(channel.clone(), move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert(header, value.clone());
            Ok(r)
        })
    };
    let wrong = with("api-key", "guess")
        .list_tunnels(v1::ListTunnelsRequest {})
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert!(!wrong.message().contains("s3cret"));
    let wrong = with("authorization", "Bearer guess")
        .list_tunnels(v1::ListTunnelsRequest {})
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let wrong = with("authorization", "Basic s3cret-key")
        .list_tunnels(v1::ListTunnelsRequest {})
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "only Bearer carries a key");

    let mut by_header = with("api-key", "s3cret-key");
    let tunnel = by_header
        .create_tunnel(v1::CreateTunnelRequest {
            tunnel_name: "guarded".into(),
            channels: vec![spec(arbor_proto::tunnel::domain::ChannelType::Stream, None)],
            retention: None,
        })
        .await
        .expect("the api-key header is accepted")
        .into_inner();
    let mut by_bearer = with("authorization", "Bearer old-key");
    let listed = by_bearer
        .list_tunnels(v1::ListTunnelsRequest {})
        .await
        .expect("a Bearer token is accepted, any of the keys")
        .into_inner();
    assert_eq!(listed.tunnels[0].tunnel_id, tunnel.tunnel.unwrap().tunnel_id);
    server.stop().await;
}

#[test]
fn api_key_files_are_checked_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# no key yet\n\n").unwrap();
    let err = ApiKeys::from_file(&empty).unwrap_err().to_string();
    assert!(err.contains("empty") && err.contains("no key"), "{err}");
    let missing = ApiKeys::from_file(&dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("missing"), "{missing}");
    let two = dir.path().join("two");
    std::fs::write(&two, "first\n# comment\n  second  \n").unwrap();
    assert!(ApiKeys::from_file(&two).is_ok());
}

#[tokio::test]
async fn the_server_runs_as_a_supervised_child() {
    use arbor::supervisor::{Supervisor, SupervisorOptions};
    init_tracing();
    let store = TunnelStore::open(StoreOptions::in_memory()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let spec = TunnelServer::child_spec(
        "tunnels",
        store.clone(),
        ServerOptions::default().listen("127.0.0.1:0".parse().unwrap()),
        move |addr| {
            let _ = tx.send(addr);
        },
    );
    let root = Supervisor::start(SupervisorOptions::default(), vec![spec])
        .await
        .unwrap();
    let addr = rx.recv().await.unwrap();
    let mut client = client(&format!("http://{addr}")).await;
    create_streams(&mut client, "supervised", 1).await;
    root.shutdown(Duration::from_secs(10)).await.unwrap();
    // Stopped with the tree: new connections are refused.
    let gone = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    assert!(gone.is_err(), "the listener closed when the child stopped");
    assert_eq!(store.list().len(), 1, "the store outlives the server");
}

/// A client whose every call carries `key` as `api-key`.
async fn keyed(
    url: &str,
    key: &'static str,
) -> TunnelServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone,
    >,
> {
    let channel = Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let value: MetadataValue<_> = key.parse().unwrap();
    TunnelServiceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("api-key", value.clone());
        Ok(r)
    })
}

fn assert_denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, role: &str, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert_eq!(kind(&status), ErrorKind::Fatal, "{what}");
    assert!(
        status.message().contains(role),
        "{what}: the message names the role {role}: {}",
        status.message()
    );
}

#[tokio::test]
async fn api_keys_act_only_in_their_roles() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(
        &file,
        "# role-scoped keys\nadmin-key admin\nproducer-key produce\nconsumer-key  consume\n\
         pipeline-key produce, consume\nlegacy,key\n",
    )
    .unwrap();
    let keys = ApiKeys::from_file(&file).unwrap();
    assert!(
        !format!("{keys:?}").contains("admin-key"),
        "Debug never shows a key"
    );
    let server = TestServer::start(StoreOptions::in_memory(), ServerOptions::default().api_keys(keys)).await;

    let mut admin = keyed(&server.url, "admin-key").await;
    let tunnel = admin
        .create_tunnel(v1::CreateTunnelRequest {
            tunnel_name: "scoped".into(),
            channels: vec![spec(arbor_proto::tunnel::domain::ChannelType::Base, None)],
            retention: None,
        })
        .await
        .expect("admin creates")
        .into_inner()
        .tunnel
        .unwrap()
        .tunnel_id;
    let append = |tunnel: &str| v1::AppendRequest {
        tunnel_id: tunnel.into(),
        channel_id: Some(0),
        records: vec![record("k", "v")],
        ..Default::default()
    };
    let connect = |tunnel: &str| v1::ConnectTunnelRequest {
        tunnel_id: tunnel.into(),
        client_tag: "scoped".into(),
        heartbeat_timeout_ms: 0,
    };
    let by_id = |tunnel: &str| v1::DeleteTunnelRequest {
        tunnel_id: tunnel.into(),
        tunnel_name: String::new(),
    };
    assert_denied(admin.append(append(&tunnel)).await, "produce", "admin appends");
    assert_denied(
        admin.connect_tunnel(connect(&tunnel)).await,
        "consume",
        "admin connects",
    );

    let mut producer = keyed(&server.url, "producer-key").await;
    producer.append(append(&tunnel)).await.expect("producer appends");
    producer
        .describe_tunnel(v1::DescribeTunnelRequest {
            tunnel_id: tunnel.clone(),
            tunnel_name: String::new(),
        })
        .await
        .expect("producer describes");
    producer
        .list_tunnels(v1::ListTunnelsRequest {})
        .await
        .expect("producer lists");
    producer
        .get_limits(v1::GetLimitsRequest {})
        .await
        .expect("producer reads the limits");
    assert_denied(
        producer.delete_tunnel(by_id(&tunnel)).await,
        "admin",
        "producer deletes",
    );
    assert_denied(
        producer
            .seal_channel(v1::SealChannelRequest {
                tunnel_id: tunnel.clone(),
                tunnel_name: String::new(),
                channel_id: 0,
            })
            .await,
        "admin",
        "producer seals",
    );
    assert_denied(
        producer.connect_tunnel(connect(&tunnel)).await,
        "consume",
        "producer connects",
    );
    assert_denied(
        producer
            .checkpoint(v1::CheckpointRequest {
                tunnel_id: tunnel.clone(),
                client_id: "c-anyone".into(),
                ..Default::default()
            })
            .await,
        "consume",
        "producer moves a checkpoint",
    );

    let mut consumer = keyed(&server.url, "consumer-key").await;
    let session = consumer
        .connect_tunnel(connect(&tunnel))
        .await
        .expect("consumer connects")
        .into_inner();
    consumer
        .heartbeat(v1::HeartbeatRequest {
            tunnel_id: tunnel.clone(),
            client_id: session.client_id.clone(),
            session_token: session.session_token.clone(),
            channels: vec![],
        })
        .await
        .expect("consumer heartbeats");
    consumer
        .list_tunnels(v1::ListTunnelsRequest {})
        .await
        .expect("consumer lists");
    assert_denied(
        consumer.append(append(&tunnel)).await,
        "produce",
        "consumer appends",
    );
    assert_denied(
        consumer.delete_tunnel(by_id(&tunnel)).await,
        "admin",
        "consumer deletes",
    );

    let mut pipeline = keyed(&server.url, "pipeline-key").await;
    pipeline
        .append(append(&tunnel))
        .await
        .expect("a key may hold several roles");
    pipeline
        .connect_tunnel(connect(&tunnel))
        .await
        .expect("a key may hold several roles");
    assert_denied(
        pipeline.delete_tunnel(by_id(&tunnel)).await,
        "admin",
        "pipeline deletes",
    );

    // Health and reflection need any valid key.
    let channel = Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let value: MetadataValue<_> = "producer-key".parse().unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("api-key", value.clone());
            Ok(r)
        },
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health with a producer's key");

    // A line without roles keeps its old meaning: every role.
    let mut legacy = keyed(&server.url, "legacy,key").await;
    legacy.append(append(&tunnel)).await.expect("legacy appends");
    legacy
        .connect_tunnel(connect(&tunnel))
        .await
        .expect("legacy connects");
    legacy
        .delete_tunnel(by_id(&tunnel))
        .await
        .expect("legacy deletes");

    // A key is the whole key: its prefixes and extensions are other keys.
    for guess in ["admin-ke", "admin-key2", "admin"] {
        let refused = keyed(&server.url, guess)
            .await
            .list_tunnels(v1::ListTunnelsRequest {})
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{guess}");
    }
    server.stop().await;
}

#[test]
fn a_key_file_naming_an_unknown_role_is_refused_naming_the_line_not_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "fine-key consume\nhidden-s3cret admin,superuser\n").unwrap();
    let err = ApiKeys::from_file(&file).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("superuser"), "{err}");
    assert!(!err.contains("hidden-s3cret"), "{err}");
}
