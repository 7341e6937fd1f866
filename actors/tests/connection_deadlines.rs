//! Deadlines and connection cycling as a gRPC client keeps them, against real tonic servers: a call that waited
//! for READY sends only what is left of its deadline; a server that cycles its connections (GOAWAY NO_ERROR,
//! `max_connection_age`) never strands a caller of `pinned_transport()`.
#![cfg(feature = "connection")]

mod grpc_common;

use std::time::Duration;

use arbor_actors::connection::{ConnectionHandle, ConnectivityState};
use grpc_common::{free_port, plain_target, quick_config, InProcessServer, MetadataLog, ServerOptions, LONG};
use tokio::time::{timeout, Instant};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn parse_grpc_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().unwrap();
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        other => panic!("unit {other} in grpc-timeout {value}"),
    }
}

/// A call made while the connection is still dialling waits for READY; what it then sends as `grpc-timeout`
/// is the caller's deadline less the wait, so no call can end later than its deadline (tonic starts a fresh
/// timer from the header on both sides). Before the fix, the header went out unchanged: a 500 ms call
/// returned after 709 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_waited_for_ready_sends_only_what_is_left_of_its_deadline() {
    grpc_common::init_tracing();
    let port = free_port();
    let h = ConnectionHandle::start(quick_config(&plain_target(port)))
        .await
        .unwrap();
    let deadline = Duration::from_secs(10);
    let called = Instant::now();
    let call = tokio::spawn({
        let channel = h.channel();
        async move {
            let mut request = tonic::Request::new(HealthCheckRequest::default());
            request.set_timeout(deadline);
            request
                .metadata_mut()
                .insert("x-arbor-test", "deadline".parse().unwrap());
            HealthClient::new(channel).check(request).await
        }
    });
    // Nothing listens yet: the call waits while the connection fails twice.
    let mut rx = h.watch();
    let mut failures = 0;
    while failures < 2 {
        timeout(LONG, rx.changed()).await.unwrap().unwrap();
        if rx.borrow_and_update().state == ConnectivityState::TransientFailure {
            failures += 1;
        }
    }
    let log = MetadataLog::default();
    let server_up = Instant::now();
    let _server = InProcessServer::start_opts(ServerOptions {
        port,
        log: Some(log.clone()),
        ..Default::default()
    });
    timeout(LONG, call)
        .await
        .unwrap()
        .unwrap()
        .expect("the call succeeds once READY");
    let sent = {
        let log = log.lock().unwrap();
        let metadata = log
            .iter()
            .find(|m| m.get("x-arbor-test").is_some())
            .expect("the server saw the call");
        parse_grpc_timeout(metadata.get("grpc-timeout").unwrap().to_str().unwrap())
    };
    let waited_at_least = server_up - called;
    assert!(
        sent <= deadline - waited_at_least,
        "sent grpc-timeout {sent:?} although the call had waited at least {waited_at_least:?} of its {deadline:?}"
    );
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A server that cycles its connections (`max_connection_age`: GOAWAY NO_ERROR, then close) leaves the
/// connection IDLE. `pinned_transport()` is a use of the connection: it fails fast (nothing is queued) but asks the
/// connection to connect, so the caller's retry finds it READY. Before the fix it stayed IDLE: every later
/// `pinned_transport()` was refused (46 of 60 calls in the report).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_on_an_idle_connection_asks_it_to_connect() {
    grpc_common::init_tracing();
    let server = InProcessServer::start_opts(ServerOptions {
        max_connection_age: Some(Duration::from_millis(700)),
        ..Default::default()
    });
    let h = ConnectionHandle::start(quick_config(&plain_target(server.port())))
        .await
        .unwrap();
    h.wait_ready(LONG).await.unwrap();
    let first = h.snapshot().generation;
    let mut rx = h.watch();
    timeout(LONG, rx.wait_for(|s| s.state == ConnectivityState::Idle))
        .await
        .expect("the server's idle close")
        .unwrap();
    assert!(h.pinned_transport().is_err(), "IDLE has no transport to hand out");
    let snap = timeout(
        LONG,
        rx.wait_for(|s| s.generation > first && s.state == ConnectivityState::Ready),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "transport() did not ask the idle connection to connect: {:?}",
            h.snapshot()
        )
    })
    .unwrap()
    .clone();
    assert!(snap.generation > first);
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// By default a connection keeps no stream of its own open while READY (no health `Watch`, no periodic
/// `Check`), as gRPC clients do: every one of the server's concurrent streams is the application's, and a
/// server that sheds idle connections can shed it. Before, a default connection held a health `Watch` on one
/// of them: against a server allowing one stream, the application's own stream never opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_connection_leaves_every_stream_slot_to_the_application() {
    grpc_common::init_tracing();
    let server = InProcessServer::start_limited(1);
    let config = arbor_actors::connection::ConnectionConfig::parse(&plain_target(server.port())).unwrap();
    assert!(!config.health_watch && config.probe_interval.is_none());
    let h = ConnectionHandle::start(config).await.unwrap();
    let channel = h.wait_ready(LONG).await.unwrap();
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    request.set_timeout(Duration::from_secs(5));
    let mut stream = HealthClient::new(channel)
        .watch(request)
        .await
        .expect("the application's stream opens: the connection holds none of its own")
        .into_inner();
    let first = timeout(LONG, stream.message())
        .await
        .unwrap()
        .expect("a first status");
    assert!(first.is_some());
    drop(stream);
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}
