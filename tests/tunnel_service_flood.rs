//! The tunnel service's connection bounds and a flood: connections beyond the limit are refused, silent ones
//! closed, the request timeout never cuts a long poll; and a flood of hostile requests against `arbor serve`
//! (sessions, huge heartbeats and records, malformed requests, idle connections) leaves it answering a real
//! client, within bounded memory.
#![cfg(feature = "tunnel-service")]

mod tunnel_service_common;

use std::time::Duration;

use arbor::tunnel_service::{Limits, ServerOptions, StoreOptions};
use arbor_proto::tunnel::domain::ChannelType;
use arbor_proto::tunnel::error::ErrorKind;
use arbor_proto::tunnel::v1;
use prost::Message;
use tonic::Code;
use tunnel_service_common::raw::*;
use tunnel_service_common::*;

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_until_one_closes() {
    let limits = arbor::tunnel_service::ConnectionLimits::default().max_connections(3);
    let server = TestServer::start(
        StoreOptions::in_memory(),
        ServerOptions::default().connection_limits(limits),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = server.client().await;
        get_limits(&mut c).await;
        held.push(c);
    }
    // The fourth is closed as it is accepted: its call fails (retryable), wherever the client notices.
    let fourth = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(LONG)
        .connect()
        .await;
    if let Ok(channel) = fourth {
        let refused = v1::tunnel_service_client::TunnelServiceClient::new(channel)
            .get_limits(v1::GetLimitsRequest {})
            .await
            .expect_err("a fourth connection is refused");
        assert_eq!(ErrorKind::of(&refused), ErrorKind::Retryable, "{refused:?}");
    }
    for c in &mut held {
        get_limits(c).await;
    }

    // Closing one frees its slot (once the server has seen it close).
    held.pop();
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let attempt = tonic::transport::Endpoint::from_shared(server.url.clone())
            .unwrap()
            .connect()
            .await;
        if let Ok(channel) = attempt {
            v1::tunnel_service_client::TunnelServiceClient::new(channel)
                .get_limits(v1::GetLimitsRequest {})
                .await
                .expect("a call on the freed slot");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_speaks_is_closed_at_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let limits =
        arbor::tunnel_service::ConnectionLimits::default().handshake_timeout(Duration::from_millis(300));
    let server = TestServer::start(
        StoreOptions::in_memory(),
        ServerOptions::default().connection_limits(limits),
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(LONG, silent.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "a silent connection is still open after {LONG:?}");
    // A client that speaks is served as before.
    get_limits(&mut server.client().await).await;
    server.stop().await;
}

#[tokio::test]
async fn a_tls_handshake_that_stalls_is_closed_at_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = arbor::tunnel_service::TlsFiles {
        cert: cert_path,
        key: key_path,
    };
    let limits =
        arbor::tunnel_service::ConnectionLimits::default().handshake_timeout(Duration::from_millis(300));
    let server = TestServer::start(
        StoreOptions::in_memory(),
        ServerOptions::default().tls(tls).connection_limits(limits),
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_string();
    // The first bytes of a ClientHello record, then nothing: past the first-bytes check, stuck in TLS.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(LONG, stalled.read_to_end(&mut sink)).await;
    assert!(
        read.is_ok(),
        "a stalled TLS handshake is still open after {LONG:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_request_timeout_must_exceed_the_long_poll_and_does_not_cut_it() {
    let short = arbor::tunnel_service::ConnectionLimits::default().request_timeout(Duration::from_secs(1));
    let store = arbor::tunnel_service::TunnelStore::open(StoreOptions::in_memory()).unwrap();
    let refused = arbor::tunnel_service::TunnelServer::start(
        store.clone(),
        ServerOptions::default()
            .listen("127.0.0.1:0".parse().unwrap())
            .connection_limits(short),
    )
    .await
    .expect_err("a request timeout within the 30 s long poll");
    match refused {
        arbor::tunnel_service::ServerError::InvalidOptions { field, .. } => {
            assert_eq!(field, "connection_limits.request_timeout")
        }
        other => panic!("{other:?}"),
    }
    store.close().unwrap();

    // A long poll of the whole max_wait, under a request timeout just above it, ends normally.
    let mut limits = Limits::default();
    limits.max_wait = Duration::from_millis(800);
    let server = TestServer::start(
        StoreOptions::in_memory(),
        ServerOptions::default().limits(limits).connection_limits(short),
    )
    .await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "poll", 1).await;
    let session = connect(&mut client, &tunnel).await.unwrap();
    let version = wait_for_open_channel(&mut client, &tunnel, &session).await;
    let mut stream = client
        .read_records(v1::ReadRecordsRequest {
            tunnel_id: tunnel.clone(),
            client_id: session.client_id.clone(),
            channel_id: 0,
            channel_version: version,
            max_wait_ms: 800,
            session_token: session.session_token.clone(),
            ..Default::default()
        })
        .await
        .expect("a long poll within the request timeout")
        .into_inner();
    assert!(stream.message().await.expect("ends normally").is_none());
    server.stop().await;
}

/// The resident set of process `pid`, in KiB (VmRSS in /proc/PID/status).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The time since `start`, in words.
fn since(start: std::time::Instant) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(start.elapsed().as_millis() as u64))
}

/// `call`'s answer; panics if it takes longer than [`LONG`].
async fn within<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LONG, call)
        .await
        .unwrap_or_else(|_| panic!("no answer within {LONG:?} during the flood"))
}

/// A real producer and consumer on their own tunnel: each round appends a record, reads it back and
/// heartbeats, every call bounded by [`LONG`]. Runs until `stop` (10 rounds at least); returns the rounds done.
async fn real_client(url: String, stop: tokio::sync::watch::Receiver<bool>) -> u64 {
    let mut client = client(&url).await;
    let tunnel = create(&mut client, "real", vec![spec(ChannelType::Base, None)], None).await;
    let session = connect(&mut client, &tunnel)
        .await
        .expect("the real client's session");
    let version = wait_for_open_channel(&mut client, &tunnel, &session).await;
    let mut rounds = 0u64;
    // At least a few rounds however early the flood ends, so that an answer was seen during it.
    while rounds < 10 || !*stop.borrow() {
        let appended = within(append_to(
            &mut client,
            &tunnel,
            Some(0),
            vec![record("", rounds.to_string())],
        ))
        .await
        .expect("the real client's append");
        let at = appended.channels[0].first_sequence_number;
        let read = within(client.read_records(v1::ReadRecordsRequest {
            tunnel_id: tunnel.clone(),
            client_id: session.client_id.clone(),
            channel_id: 0,
            channel_version: version,
            from_sequence_number: at,
            max_records: 1,
            session_token: session.session_token.clone(),
            ..Default::default()
        }))
        .await
        .expect("the real client's read");
        let message = read.into_inner().message().await.expect("the read's message");
        let records = message.map(|m| m.records).unwrap_or_default();
        assert_eq!(records.len(), 1, "the record just appended");
        assert_eq!(records[0].value, rounds.to_string().into_bytes());
        within(heartbeat(&mut client, &tunnel, &session, Vec::new()))
            .await
            .expect("the real client's heartbeat");
        rounds += 1;
    }
    rounds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hostile_requests_leaves_the_service_answering_within_bounded_memory() {
    init_tracing();
    let mut serve = ServeProcess::start(&[]);
    let pid = serve.child.id();
    let url = serve.url.clone();
    let started = std::time::Instant::now();
    let rss_at_start = rss_kib(pid).expect("the server's RSS");

    // The server's RSS, sampled until the flood ends.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return peak.max(rss_kib(pid).unwrap_or(0)),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
    };
    let real = tokio::spawn(real_client(url.clone(), stop_rx.clone()));

    let mut admin = client(&url).await;
    let flood_tunnel = create_streams(&mut admin, "flood", 4).await;

    // 500 connections that never speak (closed by the server at its handshake timeout).
    let addr = url.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("an idle connection"),
        );
    }

    // 1,100 Connects with the longest timeout on one tunnel, 8 at a time: 1,024 sessions, then RESOURCE_EXHAUSTED.
    let connects = {
        let (url, tunnel) = (url.clone(), flood_tunnel.clone());
        tokio::spawn(async move {
            use futures::StreamExt;
            let client = client(&url).await;
            let answers: Vec<_> = futures::stream::iter(0..1_100)
                .map(|_| {
                    let (mut client, tunnel) = (client.clone(), tunnel.clone());
                    async move { connect(&mut client, &tunnel).await }
                })
                .buffer_unordered(8)
                .collect()
                .await;
            let (mut accepted, mut exhausted) = (0, 0);
            let mut first = None;
            for answer in answers {
                match answer {
                    Ok(session) => {
                        accepted += 1;
                        first.get_or_insert(session);
                    }
                    Err(status) if status.code() == Code::ResourceExhausted => exhausted += 1,
                    Err(status) => panic!("connect: {status:?}"),
                }
            }
            (accepted, exhausted, first.expect("a session"))
        })
    };

    // 10,000 malformed requests on 4 connections, 16 at a time on each.
    let malformed = (0..4)
        .map(|task| {
            let url = url.clone();
            tokio::spawn(async move {
                use futures::StreamExt;
                let channel = tonic::transport::Endpoint::from_shared(url)
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let refused = futures::stream::iter(0..2_500u32)
                    .map(|i| {
                        let mut grpc = tonic::client::Grpc::new(channel.clone());
                        async move {
                            grpc.ready().await.expect("ready");
                            let garbage = vec![0xff; 8 + (i + task) as usize % 64];
                            let path = "/arbor.tunnel.v1.TunnelService/Append".parse().unwrap();
                            let status = grpc
                                .unary(tonic::Request::new(garbage), path, RawCodec)
                                .await
                                .expect_err("malformed");
                            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                        }
                    })
                    .buffer_unordered(16)
                    .count()
                    .await;
                assert_eq!(refused, 2_500);
            })
        })
        .collect::<Vec<_>>();

    // 64 MiB records: refused undecoded.
    let huge = {
        let (url, tunnel) = (url.clone(), flood_tunnel.clone());
        tokio::spawn(async move {
            let mut client = client(&url).await;
            let value = bytes::Bytes::from(vec![0x5a; 64 << 20]);
            for _ in 0..4 {
                let refused = append_to(
                    &mut client,
                    &tunnel,
                    Some(0),
                    vec![v1::AppendRecord {
                        key: Default::default(),
                        value: value.clone(),
                    }],
                )
                .await
                .expect_err("a 64 MiB record");
                assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
                assert_eq!(ErrorKind::of(&refused), ErrorKind::Fatal);
            }
        })
    };

    let (accepted, exhausted, session) = connects.await.unwrap();
    println!(
        "flood: {accepted} sessions accepted, {exhausted} refused (RESOURCE_EXHAUSTED) after {}",
        since(started)
    );
    assert_eq!((accepted, exhausted), (1_024, 76), "the default session limit");

    // Heartbeats of 2 million reports (about 12 MB each, under the Append decode limit): refused undecoded.
    let reports = v1::HeartbeatRequest {
        tunnel_id: flood_tunnel.clone(),
        client_id: session.client_id.clone(),
        channels: vec![report(1); 2_000_000],
        session_token: session.session_token.clone(),
    }
    .encode_to_vec();
    for _ in 0..4 {
        let refused = raw_call(&url, "Heartbeat", reports.clone())
            .await
            .expect_err("2 million reports");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert_eq!(ErrorKind::of(&refused), ErrorKind::Fatal);
    }
    drop(reports);
    println!(
        "flood: 4 heartbeats of 2 million reports refused after {}",
        since(started)
    );
    huge.await.unwrap();
    println!("flood: 4 records of 64 MiB refused after {}", since(started));
    for task in malformed {
        task.await.unwrap();
    }
    println!(
        "flood: 10,000 malformed requests refused after {}",
        since(started)
    );

    let _ = stop_tx.send(true);
    let rounds = real.await.expect("the real client ran throughout");
    let peak = sampler.await.unwrap();
    println!(
        "flood: {} in all; the real client did {rounds} append + read + heartbeat rounds meanwhile; server RSS \
         {} MiB at start, {} MiB at peak",
        since(started),
        rss_at_start / 1024,
        peak / 1024
    );
    assert!(peak < 1 << 20, "server RSS peaked at {} MiB", peak / 1024);
    assert!(
        serve.child.try_wait().unwrap().is_none(),
        "the server is still running"
    );
    get_limits(&mut client(&url).await).await;
    drop(idle);
}

#[tokio::test]
async fn arbor_serve_takes_the_limits_as_flags() {
    let serve = ServeProcess::start(&["--max-sessions-per-tunnel", "2", "--max-connections", "64"]);
    let mut client = client(&serve.url).await;
    let tunnel = create_streams(&mut client, "flags", 1).await;
    assert_eq!(get_limits(&mut client).await.max_sessions_per_tunnel, 2);
    for _ in 0..2 {
        connect(&mut client, &tunnel)
            .await
            .expect("a session within the flag's limit");
    }
    let refused = connect(&mut client, &tunnel).await.expect_err("a third session");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    drop(serve);

    // A request timeout that would cut the 30 s long poll is refused at start, naming the option.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--request-timeout", "10s"])
        .output()
        .expect("run arbor serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("connection_limits.request_timeout"), "{stderr}");
}
