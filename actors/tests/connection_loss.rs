//! Loss detection against a child-process server: SIGKILL while idle and while a stream is open, SIGSTOP
//! (frozen server) caught by the health probe and by HTTP/2 keepalive; a client built once on the following
//! channel across a server restart.
#![cfg(feature = "connection")]

mod grpc_common;

use std::time::Duration;

use arbor_actors::connection::{
    classify, BackoffConfig, CloseReason, ConnectionConfig, ConnectionError, ConnectionHandle,
    ConnectivityState, FailureClass, Keepalive,
};
use grpc_common::{free_port, ChildServer, LONG};
use tokio::time::{timeout, Instant};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const ENTRY: &str = "child_server_entry";

/// Not a test: the body of the child server process, run by `ChildServer::start` with `--include-ignored`.
#[test]
#[ignore = "the child-process server's entry point, started by the tests themselves"]
fn child_server_entry() {
    grpc_common::child_server_main();
}

fn config(port: u16) -> ConnectionConfig {
    ConnectionConfig::parse(&format!("grpc://127.0.0.1:{port}?disableTls=true"))
        .unwrap()
        .with_backoff(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
            min_connect_timeout: Duration::from_secs(1),
            ..Default::default()
        })
        .with_health_check_timeout(Duration::from_millis(500))
        .with_probe_interval(None)
        // Each test names the one mechanism that must notice; a health Watch would notice some losses too.
        .with_health_watch(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_idle_is_detected_by_the_connector_and_recovers() {
    grpc_common::init_tracing();
    let port = free_port();
    let mut server = ChildServer::start(ENTRY, port);
    // No probe, no keepalive: only the drop-reporting connector can notice.
    let h = ConnectionHandle::start(config(port)).await.unwrap();
    h.wait_ready(LONG).await.unwrap();
    let gen = h.snapshot().generation;
    let mut rx = h.watch();
    server.sigkill();
    let snap = timeout(LONG, rx.wait_for(|s| s.state != ConnectivityState::Ready))
        .await
        .expect("the loss is noticed")
        .unwrap()
        .clone();
    assert!(snap.last_error.is_some());
    // The connector's report of the dead socket is what left READY. On a loaded machine the next attempt
    // (a new generation, failing against the dead port) may already show by the time this wakes: that too
    // means the loss was noticed and acted on.
    assert!(
        snap.generation > gen
            || matches!(
                snap.close_reason,
                Some(
                    CloseReason::PeerClosed
                        | CloseReason::Reset
                        | CloseReason::Dropped
                        | CloseReason::Refused
                )
            ),
        "{snap:?}"
    );
    let _server = ChildServer::start(ENTRY, port);
    h.wait_ready(LONG).await.unwrap();
    assert!(h.snapshot().generation > gen);
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_streaming_fails_the_stream_and_recovers() {
    grpc_common::init_tracing();
    let port = free_port();
    let mut server = ChildServer::start(ENTRY, port);
    let h = ConnectionHandle::start(config(port)).await.unwrap();
    h.wait_ready(LONG).await.unwrap();
    let channel = h.pinned_transport().unwrap();
    let mut stream = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    server.sigkill();
    let status = timeout(LONG, stream.message())
        .await
        .expect("the stream must not hang")
        .expect_err("the stream fails");
    assert_eq!(classify(&status), FailureClass::ConnectionLost, "{status:?}");
    h.wait_for_state_change(ConnectivityState::Ready, Instant::now() + LONG)
        .await
        .unwrap();
    // The stale transport fails fast rather than re-dialling on its own.
    let stale = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await;
    let stale = stale.expect_err("stale transport");
    assert_eq!(classify(&stale), FailureClass::ConnectionLost, "{stale:?}");
    let _server = ChildServer::start(ENTRY, port);
    let channel = h.wait_ready(LONG).await.unwrap();
    HealthClient::new(channel)
        .check(h.request(HealthCheckRequest::default()))
        .await
        .unwrap();
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_detected_by_probe_and_calls_do_not_hang() {
    grpc_common::init_tracing();
    let port = free_port();
    let server = ChildServer::start(ENTRY, port);
    let cfg = config(port)
        .with_probe_interval(Some(Duration::from_millis(200)))
        .with_call_timeout(Duration::from_millis(500));
    let h = ConnectionHandle::start(cfg).await.unwrap();
    let channel = h.wait_ready(LONG).await.unwrap();
    server.sigstop();
    h.wait_for_state_change(ConnectivityState::Ready, Instant::now() + LONG)
        .await
        .unwrap();
    // A call with the handle's per-call deadline returns instead of hanging.
    let r = timeout(
        LONG,
        HealthClient::new(channel).check(h.request(HealthCheckRequest::default())),
    )
    .await
    .expect("per-call deadline");
    assert!(r.is_err());
    // wait_ready while frozen: times out, no hang.
    assert!(h.wait_ready(Duration::from_millis(300)).await.is_err());
    server.sigcont();
    h.wait_ready(LONG).await.expect("ready again after SIGCONT");
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_detected_by_keepalive() {
    grpc_common::init_tracing();
    let port = free_port();
    let server = ChildServer::start(ENTRY, port);
    let cfg = config(port).with_keepalive(Some(Keepalive {
        interval: Duration::from_millis(300),
        timeout: Duration::from_millis(500),
        while_idle: true,
    }));
    let h = ConnectionHandle::start(cfg).await.unwrap();
    h.wait_ready(LONG).await.unwrap();
    server.sigstop();
    h.wait_for_state_change(ConnectivityState::Ready, Instant::now() + LONG)
        .await
        .unwrap();
    assert!(h.snapshot().last_error.is_some());
    server.sigcont();
    h.wait_ready(LONG).await.expect("ready again after SIGCONT");
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_failures_trigger_a_check_that_catches_a_frozen_server() {
    grpc_common::init_tracing();
    let port = free_port();
    let server = ChildServer::start(ENTRY, port);
    // No probe, no keepalive: only the caller's report can reveal the freeze.
    let h = ConnectionHandle::start(config(port).with_call_timeout(Duration::from_millis(300)))
        .await
        .unwrap();
    let channel = h.wait_ready(LONG).await.unwrap();
    let mut client = HealthClient::new(channel);
    // A server-side error says nothing about the connection.
    let not_found = client
        .check(h.request(HealthCheckRequest {
            service: "no.such.Service".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(h.report_failure(&not_found), FailureClass::Server);
    server.sigstop();
    let status = timeout(LONG, client.check(h.request(HealthCheckRequest::default())))
        .await
        .expect("per-call deadline")
        .unwrap_err();
    assert_eq!(h.report_failure(&status), FailureClass::Timeout, "{status:?}");
    h.wait_for_state_change(ConnectivityState::Ready, Instant::now() + LONG)
        .await
        .unwrap();
    server.sigcont();
    h.wait_ready(LONG).await.unwrap();
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A generated client built once on the following channel: it works, fails with `Unavailable` naming the
/// connection's state while the server is gone (within the call's deadline, not after it), and works again
/// after the server process is restarted on the same port, without re-fetching anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_the_following_channel_survives_a_server_restart() {
    grpc_common::init_tracing();
    let port = free_port();
    let mut server = ChildServer::start(ENTRY, port);
    let h = ConnectionHandle::start(config(port)).await.unwrap();
    let mut client = HealthClient::new(h.channel());
    client
        .check(h.request(HealthCheckRequest::default()))
        .await
        .expect("the first call waits for READY");
    let first_generation = h.snapshot().generation;
    server.sigkill();
    h.wait_for_state_change(ConnectivityState::Ready, Instant::now() + LONG)
        .await
        .unwrap();
    // Down: a call fails with Unavailable once its deadline is past, the connection's error as its source.
    let status = timeout(
        LONG,
        client.check(h.request_with_timeout(HealthCheckRequest::default(), Duration::from_millis(200))),
    )
    .await
    .expect("bounded by the call's deadline")
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let source = std::error::Error::source(&status)
        .and_then(|s| s.downcast_ref::<ConnectionError>())
        .unwrap_or_else(|| panic!("no ConnectionError source: {status:?}"));
    assert!(
        matches!(
            source,
            ConnectionError::NotReady { .. } | ConnectionError::Timeout { .. }
        ),
        "{source:?}"
    );
    let _server = ChildServer::start(ENTRY, port);
    timeout(LONG, async {
        loop {
            match client.check(h.request(HealthCheckRequest::default())).await {
                Ok(_) => return,
                // Calls made before the restart was noticed fail fast; try again.
                Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the same client works after the restart");
    assert!(h.snapshot().generation > first_generation);
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}
