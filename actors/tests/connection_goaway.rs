//! GOAWAY, keepalive and clean closes as gRPC specifies them, and close/connect, against real servers: a tonic
//! server that drains its connections (`max_connection_age`), one shut down gracefully, and a frame-level HTTP/2
//! server that answers pings with GOAWAY `ENHANCE_YOUR_CALM` / `too_many_pings`.
#![cfg(feature = "connection")]

mod grpc_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use arbor_actors::connection::{
    CloseReason, ConnectionError, ConnectionHandle, ConnectivityState, IdleReconnect, Keepalive,
};
use grpc_common::{
    check_via, plain_target, quick_config, InProcessServer, ServerOptions, TooManyPingsServer, LONG,
};
use tokio::time::{timeout, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn wait_until(
    h: &ConnectionHandle,
    what: &str,
    pred: impl FnMut(&arbor_actors::connection::ConnectionSnapshot) -> bool,
) -> arbor_actors::connection::ConnectionSnapshot {
    let mut rx = h.watch();
    let snap = timeout(LONG, rx.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}; now {:?}", h.snapshot()))
        .expect("watch open")
        .clone();
    snap
}

fn graceful_goaway(snap: &arbor_actors::connection::ConnectionSnapshot) -> bool {
    matches!(&snap.close_reason, Some(CloseReason::GoAway(g)) if g.is_graceful())
}

/// A server draining a connection (GOAWAY NO_ERROR) while a stream is open on it: the connection leaves READY
/// at once, new calls go to a new connection, and the open stream goes on on the old one until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_moves_new_calls_to_a_new_connection_while_old_streams_finish() {
    grpc_common::init_tracing();
    let server = InProcessServer::start_opts(ServerOptions {
        max_connection_age: Some(Duration::from_secs(1)),
        ..Default::default()
    });
    let h = ConnectionHandle::start(quick_config(&plain_target(server.port())))
        .await
        .unwrap();
    let channel = h.wait_ready(LONG).await.unwrap();
    let first = h.snapshot().generation;
    // A stream on the first connection, through the following channel.
    let mut stream = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    // The server drains the first connection after 1 s: GOAWAY, seen by the transport, not by a failed call.
    let snap = wait_until(&h, "the first connection's GOAWAY", |s| {
        s.generation == first && s.state != ConnectivityState::Ready
    })
    .await;
    assert_eq!(snap.state, ConnectivityState::Idle);
    assert!(graceful_goaway(&snap), "{snap:?}");
    // A new call through the same channel: a new connection serves it.
    HealthClient::new(channel)
        .check(h.request(HealthCheckRequest::default()))
        .await
        .expect("a new connection serves new calls");
    assert!(h.snapshot().generation > first);
    // The old stream still lives on its draining connection and sees the next status change.
    server
        .reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let msg = timeout(LONG, stream.message())
        .await
        .expect("the old stream is served")
        .expect("the old stream did not fail")
        .expect("the old stream is still open");
    assert_eq!(msg.status(), ServingStatus::NotServing);
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A clean close of an idle connection by the server: IDLE (lazily, gRPC's default) until the next call, or a
/// reconnect at once with `IdleReconnect::Eager`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_idle_close_goes_idle_and_reconnects_lazily_or_eagerly() {
    grpc_common::init_tracing();
    let server = InProcessServer::start_opts(ServerOptions {
        max_connection_age: Some(Duration::from_millis(700)),
        ..Default::default()
    });
    let cs = plain_target(server.port());

    let h = ConnectionHandle::start(quick_config(&cs)).await.unwrap();
    let channel = h.wait_ready(LONG).await.unwrap();
    let first = h.snapshot().generation;
    let snap = wait_until(&h, "the idle close", |s| s.state == ConnectivityState::Idle).await;
    assert!(graceful_goaway(&snap), "{snap:?}");
    assert_eq!(snap.generation, first);
    // Lazy: no attempt of its own. (A bounded wait that can only pass more easily on a slow machine.)
    let stayed = h
        .wait_for_state_change(
            ConnectivityState::Idle,
            Instant::now() + Duration::from_millis(500),
        )
        .await;
    assert!(
        matches!(stayed, Err(ConnectionError::Timeout { .. })),
        "{stayed:?}"
    );
    assert_eq!(h.snapshot().generation, first, "no reconnect before a call");
    // The next call reconnects.
    drop(channel);
    check_via(&h).await.expect("the call reconnects");
    assert!(h.snapshot().generation > first);
    h.shutdown(Duration::from_secs(5)).await.unwrap();

    let h = ConnectionHandle::start(quick_config(&cs).with_idle_reconnect(IdleReconnect::Eager))
        .await
        .unwrap();
    h.wait_ready(LONG).await.unwrap();
    let first = h.snapshot().generation;
    // Eager: READY again on a new connection with no call made.
    let snap = wait_until(&h, "an eager reconnect", |s| {
        s.generation > first && s.state == ConnectivityState::Ready
    })
    .await;
    assert!(snap.close_reason.is_none(), "cleared on READY: {snap:?}");
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// gRFC A8: a GOAWAY `ENHANCE_YOUR_CALM` / `too_many_pings` doubles the connection's keepalive interval; the
/// connection reconnects with it rather than churning at the old rate. The reason is in the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_pings_doubles_the_keepalive_interval() {
    grpc_common::init_tracing();
    let server = TooManyPingsServer::start().await;
    let cfg = quick_config(&plain_target(server.port))
        .with_health_watch(false)
        .with_keepalive(Some(Keepalive::new(Duration::from_millis(300)).while_idle(true)));
    let h = ConnectionHandle::start(cfg).await.unwrap();
    h.wait_ready(LONG).await.unwrap();
    assert_eq!(h.snapshot().keepalive_interval, Some(Duration::from_millis(300)));
    let snap = wait_until(&h, "a first doubling", |s| {
        s.keepalive_interval == Some(Duration::from_millis(600))
    })
    .await;
    match &snap.close_reason {
        Some(CloseReason::GoAway(g)) => {
            assert!(g.is_too_many_pings(), "{g}");
            assert_eq!(
                (g.code, g.code_name(), g.debug_data.as_str()),
                (0xb, "ENHANCE_YOUR_CALM", "too_many_pings")
            );
        }
        other => panic!("expected the too_many_pings GOAWAY, got {other:?}"),
    }
    wait_until(&h, "a second doubling", |s| {
        s.keepalive_interval == Some(Duration::from_millis(1200))
    })
    .await;
    // Each connection was pinged once, at its own interval: connections follow the doublings, no churn.
    let (connections, pings) = (
        server.connections.load(Ordering::SeqCst),
        server.pings.load(Ordering::SeqCst),
    );
    assert!(pings >= 2, "{pings}");
    assert!(
        connections <= pings + 1,
        "{connections} connections for {pings} pings"
    );
    // The connection keeps serving between the GOAWAYs.
    check_via(&h).await.expect("served");
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// close(): the transport is torn down (an open stream on it fails), calls and waits fail at once with a typed
/// "closed" error, nothing reconnects; connect(): back to connecting, READY on a new transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fails_calls_at_once_and_connect_reopens() {
    grpc_common::init_tracing();
    let server = InProcessServer::start(0, None);
    let h = ConnectionHandle::start(quick_config(&plain_target(server.port())))
        .await
        .unwrap();
    let channel = h.wait_ready(LONG).await.unwrap();
    let mut client = HealthClient::new(channel);
    let mut stream = client
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let generation = h.snapshot().generation;

    h.close().await.unwrap();
    let snap = h.snapshot();
    assert!(snap.closed);
    assert_eq!(snap.state, ConnectivityState::Idle);
    assert_eq!(snap.close_reason, Some(CloseReason::Closed));
    let ended = timeout(LONG, stream.message()).await.expect("the stream ends");
    assert!(ended.is_err(), "{ended:?}");
    assert!(matches!(
        h.pinned_transport(),
        Err(ConnectionError::Closed { .. })
    ));
    assert!(matches!(
        timeout(LONG, h.wait_ready(LONG)).await.expect("at once"),
        Err(ConnectionError::Closed { .. })
    ));
    // A call with a long deadline fails at once rather than waiting.
    let status = timeout(
        LONG,
        client.check(h.request_with_timeout(HealthCheckRequest::default(), Duration::from_secs(600))),
    )
    .await
    .expect("fails at once")
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let source = std::error::Error::source(&status).and_then(|s| s.downcast_ref::<ConnectionError>());
    assert!(
        matches!(source, Some(ConnectionError::Closed { .. })),
        "{status:?}"
    );
    assert_eq!(h.snapshot().generation, generation, "closed: no attempt");

    assert_eq!(h.connect(), ConnectivityState::Idle);
    h.wait_ready(LONG).await.expect("connect() reopens");
    assert!(h.snapshot().generation > generation);
    assert!(!h.snapshot().closed);
    client
        .check(h.request(HealthCheckRequest::default()))
        .await
        .expect("the same client works again");
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// The health Watch, when asked for, reports NOT_SERVING at once, with no polling configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watch_sees_not_serving_without_polling() {
    grpc_common::init_tracing();
    let server = InProcessServer::start(0, None);
    let cfg = quick_config(&plain_target(server.port()))
        .with_probe_interval(None)
        .with_health_watch(true);
    let h = ConnectionHandle::start(cfg).await.unwrap();
    h.wait_ready(LONG).await.unwrap();
    server
        .reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let snap = wait_until(&h, "the Watch to report NOT_SERVING", |s| {
        s.state == ConnectivityState::TransientFailure
    })
    .await;
    match &snap.close_reason {
        Some(CloseReason::Health { reason }) => assert!(reason.contains("NOT_SERVING"), "{reason}"),
        other => panic!("{other:?}"),
    }
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}
