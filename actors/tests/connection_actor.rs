//! The connection actor against real tonic servers on 127.0.0.1.
#![cfg(feature = "connection")]

mod grpc_common;

use std::time::Duration;

use arbor_actors::connection::{
    classify, BackoffConfig, CloseReason, ConnectionConfig, ConnectionError, ConnectionHandle,
    ConnectivityState, FailureClass, ShutdownReason,
};
use grpc_common::{free_port, InProcessServer, LONG};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::time::{timeout, Instant};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn fast_backoff(initial_ms: u64) -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_millis(initial_ms),
        multiplier: 1.6,
        jitter: 0.2,
        max: Duration::from_secs(2),
        min_connect_timeout: Duration::from_secs(2),
    }
}

fn config(port: u16, initial_ms: u64) -> ConnectionConfig {
    ConnectionConfig::parse(&format!("grpc://127.0.0.1:{port}?disableTls=true"))
        .unwrap()
        .with_backoff(fast_backoff(initial_ms))
        .with_health_check_timeout(Duration::from_secs(2))
        .with_probe_interval(None)
}

async fn wait_state(h: &ConnectionHandle, want: ConnectivityState) {
    let mut rx = h.watch();
    timeout(LONG, rx.wait_for(|s| s.state == want))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {want}; now {:?}", h.snapshot()))
        .expect("watch closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_at_start_backoff_schedule_then_ready() {
    grpc_common::init_tracing();
    let port = free_port();
    let cfg = config(port, 100);
    let schedule = cfg.backoff.clone();
    let h = ConnectionHandle::start(cfg).await.unwrap();

    // Record each attempt's start time (one generation per attempt).
    let mut rx = h.watch();
    let mut starts: Vec<(u64, Instant)> = Vec::new();
    timeout(LONG, async {
        while starts.len() < 6 {
            {
                let s = rx.borrow_and_update();
                if let Some(at) = s.attempt_started_at {
                    if starts.last().map(|(g, _)| *g) != Some(s.generation) {
                        starts.push((s.generation, at));
                    }
                }
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("six attempts");
    for w in starts.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "an attempt went unobserved: {starts:?}");
    }
    for (n, w) in starts.windows(2).enumerate() {
        let gap = w[1].1 - w[0].1;
        let (lo, hi) = schedule.gap_bounds(n as u32);
        // Timers never fire early; allow generous lateness on a loaded machine.
        assert!(
            gap + Duration::from_millis(2) >= lo && gap <= hi + Duration::from_millis(250),
            "gap {n} = {gap:?}, expected within [{lo:?}, {hi:?}]"
        );
    }
    assert!(matches!(
        h.pinned_transport(),
        Err(ConnectionError::NotReady {
            reason: Some(CloseReason::Refused),
            ..
        })
    ));

    let err = h.wait_ready(Duration::from_millis(150)).await.unwrap_err();
    assert!(matches!(err, ConnectionError::Timeout { .. }), "{err:?}");

    let _server = InProcessServer::start(port, None);
    let channel = h.wait_ready(LONG).await.expect("ready once the server is up");
    let mut client = HealthClient::new(channel);
    client
        .check(h.request(HealthCheckRequest::default()))
        .await
        .unwrap();
    assert_eq!(h.state(), ConnectivityState::Ready);
    assert_eq!(h.snapshot().failed_attempts, 0);
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connect_storm_while_server_refuses() {
    grpc_common::init_tracing();
    // A peer that accepts and closes at once: tonic alone re-dials on every call (thousands per second).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepts.clone();
    let acceptor = tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    let cfg = config(port, 100);
    let schedule = cfg.backoff.clone();
    let h = ConnectionHandle::start(cfg).await.unwrap();
    let started = Instant::now();
    // Hammer the handle meanwhile: transport() must fail fast and never dial.
    let mut not_ready = 0u32;
    let mut rx = h.watch();
    timeout(LONG, async {
        loop {
            for _ in 0..100 {
                if h.pinned_transport().is_err() {
                    not_ready += 1;
                }
            }
            if rx.borrow_and_update().generation >= 6 {
                break;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();
    let dials = accepts.load(std::sync::atomic::Ordering::SeqCst);
    // Attempts that can fit in `elapsed` under the schedule's lower bounds, plus the one at t=0.
    let mut budget = 1usize;
    let mut t = Duration::ZERO;
    for n in 0.. {
        t += schedule.gap_bounds(n).0;
        if t > elapsed {
            break;
        }
        budget += 1;
    }
    assert!(not_ready >= 600);
    assert!(dials >= 5, "dials {dials}");
    assert!(
        dials <= budget + 1,
        "{dials} dials in {elapsed:?}, schedule allows {budget}"
    );
    h.shutdown(Duration::from_secs(5)).await.unwrap();
    acceptor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_not_serving_is_not_ready_unimplemented_is_ready() {
    grpc_common::init_tracing();
    let server = InProcessServer::start(0, None);
    server
        .reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let h = ConnectionHandle::start(config(server.port(), 50)).await.unwrap();
    wait_state(&h, ConnectivityState::TransientFailure).await;
    assert!(h.snapshot().last_error.unwrap().contains("NOT_SERVING"));
    server
        .reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    h.wait_ready(LONG).await.unwrap();
    h.shutdown(Duration::from_secs(5)).await.unwrap();

    // A named service the server does not know: tonic-health answers NOT_FOUND, a failed attempt.
    let h = ConnectionHandle::start(config(server.port(), 50).with_health_service("no.such.Service"))
        .await
        .unwrap();
    wait_state(&h, ConnectivityState::TransientFailure).await;
    h.shutdown(Duration::from_secs(5)).await.unwrap();

    // A server without the health service at all answers UNIMPLEMENTED: healthy.
    let port = unimplemented_server().await;
    let h = ConnectionHandle::start(config(port, 50)).await.unwrap();
    h.wait_ready(LONG).await.expect("UNIMPLEMENTED counts as healthy");
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A tonic server whose only service is not the health service.
async fn unimplemented_server() -> u16 {
    #[derive(Clone)]
    struct Other;
    impl tonic::server::NamedService for Other {
        const NAME: &'static str = "test.Other";
    }
    impl tower::Service<http::Request<tonic::body::Body>> for Other {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
            std::future::ready(Ok(tonic::Status::unimplemented("other").into_http()))
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Other)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_mid_stream_then_recovery() {
    grpc_common::init_tracing();
    let mut server = InProcessServer::start(0, None);
    let port = server.port();
    let cfg = config(port, 100).with_probe_interval(Some(Duration::from_millis(200)));
    let h = ConnectionHandle::start(cfg).await.unwrap();
    let channel = h.wait_ready(LONG).await.unwrap();
    let gen_before = h.snapshot().generation;
    let mut stream = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        stream.message().await.unwrap().is_some(),
        "Watch sends the current status first"
    );

    server.graceful_shutdown();
    // GOAWAY: the connection leaves READY at once, and says why; a clean close waits for the next call.
    let next = h
        .wait_for_state_change(ConnectivityState::Ready, Instant::now() + LONG)
        .await
        .unwrap();
    assert_eq!(next, ConnectivityState::Idle);
    match h.snapshot().close_reason {
        Some(CloseReason::GoAway(g)) => assert!(g.is_graceful(), "{g}"),
        other => panic!("expected a GOAWAY NO_ERROR, got {other:?}"),
    }
    // The open stream ends once the old server is gone for good.
    server.kill();
    let end = timeout(LONG, stream.message())
        .await
        .expect("stream must not hang");
    if let Err(status) = &end {
        assert_eq!(classify(status), FailureClass::ConnectionLost, "{status:?}");
    }
    let _server2 = InProcessServer::start(port, None);
    h.wait_ready(LONG).await.unwrap();
    assert!(h.snapshot().generation > gen_before);
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_skips_backoff_and_auto_connect_off_stays_idle() {
    grpc_common::init_tracing();
    let port = free_port();
    let mut backoff = fast_backoff(100);
    backoff.initial = Duration::from_secs(60);
    backoff.max = Duration::from_secs(60);
    let h = ConnectionHandle::start(config(port, 100).with_backoff(backoff))
        .await
        .unwrap();
    wait_state(&h, ConnectivityState::TransientFailure).await;
    let _server = InProcessServer::start(port, None);
    // Without reconnect() the next attempt is a minute away.
    h.reconnect();
    h.wait_ready(Duration::from_secs(10))
        .await
        .expect("reconnect skips the wait");
    h.shutdown(Duration::from_secs(5)).await.unwrap();

    let h = ConnectionHandle::start(config(port, 100).with_auto_connect(false))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_millis(300);
    let r = h.wait_for_state_change(ConnectivityState::Idle, deadline).await;
    assert!(matches!(r, Err(ConnectionError::Timeout { .. })), "{r:?}");
    assert_eq!(h.state(), ConnectivityState::Idle);
    h.wait_ready(LONG)
        .await
        .expect("wait_ready asks an IDLE connection to connect");
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_parked_waiters() {
    grpc_common::init_tracing();
    let port = free_port();
    let mut cfg = config(port, 5_000);
    cfg.backoff.max = Duration::from_secs(5);
    let h = ConnectionHandle::start(cfg).await.unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.wait_ready(LONG).await })
        })
        .collect();
    wait_state(&h, ConnectivityState::TransientFailure).await;
    h.shutdown(Duration::from_secs(5)).await.unwrap();
    for w in waiters {
        let r = timeout(LONG, w).await.unwrap().unwrap();
        assert!(
            matches!(
                &r,
                Err(ConnectionError::Shutdown {
                    reason: ShutdownReason::Requested,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    assert_eq!(h.state(), ConnectivityState::Shutdown);
    assert!(h.wait_ready(LONG).await.is_err());
}

/// A parent that records its child's supervision events.
struct Parent;
impl Actor for Parent {
    type Msg = ();
    type State = tokio::sync::mpsc::UnboundedSender<String>;
    type Arguments = tokio::sync::mpsc::UnboundedSender<String>;
    async fn pre_start(
        &self,
        _: ActorRef<()>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }
    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        evt: SupervisionEvent,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(match evt {
            SupervisionEvent::ActorFailed(_, e) => format!("failed: {e}"),
            SupervisionEvent::ActorTerminated(..) => "terminated".into(),
            _ => return Ok(()),
        });
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_exhausted_fails_waiters_and_the_actor() {
    grpc_common::init_tracing();
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let (parent, _) = Actor::spawn(None, Parent, tx).await.unwrap();
    let port = free_port();
    let h = ConnectionHandle::prepare(config(port, 50).with_max_attempts(Some(3))).unwrap();
    let waiter = {
        let h = h.clone();
        tokio::spawn(async move { h.wait_ready(LONG).await })
    };
    h.start_linked(parent.get_cell()).await.unwrap();
    let r = timeout(LONG, waiter).await.unwrap().unwrap();
    match r {
        Err(ConnectionError::Shutdown {
            reason: ShutdownReason::AttemptsExhausted { attempts, .. },
            ..
        }) => assert_eq!(attempts, 3),
        other => panic!("{other:?}"),
    }
    let evt = timeout(LONG, events.recv()).await.unwrap().unwrap();
    assert!(evt.starts_with("failed:") && evt.contains("3 attempts"), "{evt}");
    assert_eq!(h.state(), ConnectivityState::Shutdown);
    parent.stop(None);
}

#[test]
fn classification_reads_the_source_chain() {
    // From the server (trailers): no source, the connection is fine whatever the code.
    assert_eq!(
        classify(&tonic::Status::unavailable("busy")),
        FailureClass::Server
    );
    assert_eq!(
        classify(&tonic::Status::deadline_exceeded("slow")),
        FailureClass::Timeout
    );
    // A deadline that tonic's own timer enforced: bare from the server's side (its trailers), wrapped from
    // the client's. Both say the call's deadline passed, so the connection checks itself.
    let from_server = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
    assert_eq!(from_server.code(), tonic::Code::Cancelled);
    assert_eq!(classify(&from_server), FailureClass::Timeout, "{from_server:?}");
    assert_eq!(
        classify(&tonic::Status::cancelled("Timeout expired")),
        FailureClass::Timeout
    );
    assert_eq!(
        classify(&tonic::Status::cancelled("the client went away")),
        FailureClass::Server
    );
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
    let s = tonic::Status::from_error(Box::new(io));
    assert_eq!(classify(&s), FailureClass::ConnectionLost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_connection_restarted_after_exhaustion_serves_the_same_handle() {
    use arbor_actors::supervisor::{ChildStatus, Supervisor, SupervisorOptions};
    grpc_common::init_tracing();
    let port = free_port();
    let h = ConnectionHandle::prepare(config(port, 50).with_max_attempts(Some(2))).unwrap();
    let opts = SupervisorOptions::default().intensity(1000, Duration::from_secs(60));
    let sup = Supervisor::start(opts, vec![h.child_spec("conn")]).await.unwrap();
    // Gives up, fails, is restarted: wait for a restart to show in the tree.
    timeout(LONG, async {
        loop {
            if sup.snapshot().await.unwrap().total_restarts() >= 1 {
                return;
            }
            let mut rx = h.watch();
            let _ = rx.wait_for(|s| s.state == ConnectivityState::Shutdown).await;
        }
    })
    .await
    .expect("restarted by the supervisor");
    let _server = InProcessServer::start(port, None);
    // The same handle sees the restarted actor reach READY.
    timeout(LONG, async {
        loop {
            if h.wait_ready(LONG).await.is_ok() {
                return;
            }
            let mut rx = h.watch();
            let _ = rx.wait_for(|s| s.state != ConnectivityState::Shutdown).await;
        }
    })
    .await
    .expect("ready under supervision");
    // shutdown() is a normal exit: the transient child stays down.
    h.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(h.state(), ConnectivityState::Shutdown);
    let restarts = sup.snapshot().await.unwrap().total_restarts();
    // Once the supervisor has handled the exit, the child is Terminated (not Restarting, not a new Running).
    let status = timeout(LONG, async {
        loop {
            let child = sup.which_children().await.unwrap().remove(0);
            if child.status != ChildStatus::Running || child.actor_id() != h.actor().map(|a| a.get_id()) {
                return child.status;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        status,
        ChildStatus::Terminated,
        "the transient child stays down after a normal exit"
    );
    assert_eq!(sup.snapshot().await.unwrap().total_restarts(), restarts);
    sup.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_answers_while_a_dial_hangs_and_hosts_are_tried_in_order() {
    grpc_common::init_tracing();
    // A peer that accepts TCP and never speaks: the HTTP/2 handshake hangs until the connect timeout (10 s).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(listener.accept().await.unwrap().0);
        }
    });
    let mut cfg = config(silent, 100);
    cfg.backoff.min_connect_timeout = Duration::from_secs(10);
    let h = ConnectionHandle::start(cfg).await.unwrap();
    wait_state(&h, ConnectivityState::Connecting).await;
    // The attempt runs off the message loop: shutdown is handled at once, not after the 10 s dial.
    timeout(Duration::from_secs(5), h.shutdown(Duration::from_secs(5)))
        .await
        .expect("the actor answers during a dial")
        .unwrap();
    assert_eq!(h.state(), ConnectivityState::Shutdown);
    holder.abort();

    // First host refuses, second serves: one attempt gets READY.
    let server = InProcessServer::start(0, None);
    let dead = free_port();
    let cs = format!(
        "grpc://127.0.0.1:{dead},127.0.0.1:{}?disableTls=true",
        server.port()
    );
    let h = ConnectionHandle::start(
        ConnectionConfig::parse(&cs)
            .unwrap()
            .with_backoff(fast_backoff(100))
            .with_probe_interval(None),
    )
    .await
    .unwrap();
    h.wait_ready(LONG).await.unwrap();
    assert_eq!(h.snapshot().generation, 1, "READY on the first attempt");
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_channel_never_redials() {
    grpc_common::init_tracing();
    let mut server = InProcessServer::start(0, None);
    let port = server.port();
    let h = ConnectionHandle::start(config(port, 200)).await.unwrap();
    h.wait_ready(LONG).await.unwrap();
    let stale = h.pinned_transport().unwrap();
    server.kill();
    drop(server);
    h.wait_for_state_change(ConnectivityState::Ready, Instant::now() + LONG)
        .await
        .unwrap();
    // Same port, now a peer that accepts and closes: count every dial.
    let listener = grpc_common::bind_loopback(port);
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let accepts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepts.clone();
    let acceptor = tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    let gen_before = h.snapshot().generation;
    let mut client = HealthClient::new(stale);
    for _ in 0..200 {
        let status = client.check(HealthCheckRequest::default()).await.unwrap_err();
        assert_eq!(classify(&status), FailureClass::ConnectionLost, "{status:?}");
    }
    let attempts = h.snapshot().generation - gen_before;
    let dials = accepts.load(std::sync::atomic::Ordering::SeqCst) as u64;
    // Only the actor's own scheduled attempts dial (a plain tonic channel would have dialled 200 times).
    assert!(dials <= attempts + 1, "{dials} dials, {attempts} actor attempts");
    h.shutdown(Duration::from_secs(5)).await.unwrap();
    acceptor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_exhausted_calls_time_out_and_a_new_connection_serves() {
    grpc_common::init_tracing();
    // hyper #3559: with the server's stream limit taken by open streams, a new call queues forever.
    let server = InProcessServer::start_limited(2);
    // No health Watch: it would hold one of the two streams.
    let cfg = config(server.port(), 100)
        .with_health_watch(false)
        .with_probe_interval(Some(Duration::from_millis(200)))
        .with_health_check_timeout(Duration::from_millis(300))
        .with_call_timeout(Duration::from_millis(300));
    let h = ConnectionHandle::start(cfg).await.unwrap();
    h.wait_ready(LONG).await.unwrap();
    // The raw transport of the first connection, so that every stream below stays on it.
    let first = h.pinned_transport().unwrap();
    let gen = h.snapshot().generation;
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut s = HealthClient::new(first.clone())
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(s.message().await.unwrap().is_some());
        streams.push(s);
    }
    // The per-call deadline turns the queued call into an error instead of a hang.
    let r = timeout(
        LONG,
        HealthClient::new(first).check(h.request(HealthCheckRequest::default())),
    )
    .await
    .expect("no hang");
    assert!(r.is_err());
    // The probe times out the same way: the actor moves to a new connection, which has its own stream budget.
    h.wait_for_state_change(ConnectivityState::Ready, Instant::now() + LONG)
        .await
        .unwrap();
    let fresh = h.wait_ready(LONG).await.unwrap();
    assert!(h.snapshot().generation > gen);
    HealthClient::new(fresh)
        .check(h.request(HealthCheckRequest::default()))
        .await
        .expect("a new connection serves");
    // The old streams live on, on their own connection.
    server
        .reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    for s in &mut streams {
        let msg = timeout(LONG, s.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(
            msg.status(),
            tonic_health::pb::health_check_response::ServingStatus::NotServing
        );
    }
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_actor_fails_parked_waiters() {
    grpc_common::init_tracing();
    let mut cfg = config(free_port(), 5_000);
    cfg.backoff.max = Duration::from_secs(5);
    let h = ConnectionHandle::start(cfg).await.unwrap();
    wait_state(&h, ConnectivityState::TransientFailure).await;
    let waiter = {
        let h = h.clone();
        tokio::spawn(async move { h.wait_ready(LONG).await })
    };
    h.actor().unwrap().kill();
    let r = timeout(LONG, waiter).await.unwrap().unwrap();
    assert!(
        matches!(
            &r,
            Err(ConnectionError::Shutdown {
                reason: ShutdownReason::ActorStopped,
                ..
            })
        ),
        "{r:?}"
    );
}
