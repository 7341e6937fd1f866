//! Calls and server streams tied to a caller actor (Spear's monitored requests), against a real tonic server
//! whose health `Watch` implementation records when the client cancels it: a killed subscriber's stream is
//! cancelled at the server, and every way a stream ends reaches the subscriber as a message.
#![cfg(feature = "connection")]

mod grpc_common;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arbor_actors::connection::{
    classify, ConnectionError, ConnectionHandle, FailureClass, StreamEnd, StreamEvent,
};
use grpc_common::{quick_config, LONG};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// A Watch stream that sends what the test pushes and tells the test when the server drops it (the client
/// cancelled, or the connection died).
struct Watched {
    rx: mpsc::UnboundedReceiver<Option<HealthCheckResponse>>,
    dropped: Arc<watch::Sender<usize>>,
}

impl futures::Stream for Watched {
    type Item = Result<HealthCheckResponse, tonic::Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            // `None` pushed by the test: end the stream with OK.
            Poll::Ready(Some(Some(msg))) => Poll::Ready(Some(Ok(msg))),
            Poll::Ready(Some(None)) | Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.dropped.send_modify(|n| *n += 1);
    }
}

/// Health with a scriptable Watch: each Watch call hands the test a sender for its stream.
#[derive(Clone)]
struct ScriptedHealth {
    streams: mpsc::UnboundedSender<mpsc::UnboundedSender<Option<HealthCheckResponse>>>,
    dropped: Arc<watch::Sender<usize>>,
}

fn serving() -> HealthCheckResponse {
    HealthCheckResponse {
        status: ServingStatus::Serving as i32,
    }
}

#[tonic::async_trait]
impl Health for ScriptedHealth {
    async fn check(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(serving()))
    }

    type WatchStream = Watched;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Watched>, tonic::Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.streams.send(tx);
        Ok(tonic::Response::new(Watched {
            rx,
            dropped: self.dropped.clone(),
        }))
    }
}

struct ScriptedServer {
    port: u16,
    streams: mpsc::UnboundedReceiver<mpsc::UnboundedSender<Option<HealthCheckResponse>>>,
    /// How many Watch streams the server has dropped.
    dropped: Arc<watch::Sender<usize>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ScriptedServer {
    /// On its own runtime, so that dropping the runtime is the server dying.
    fn start() -> ScriptedServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, streams) = mpsc::unbounded_channel();
        let dropped = Arc::new(watch::Sender::new(0));
        let svc = ScriptedHealth {
            streams: tx,
            dropped: dropped.clone(),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = tonic::transport::Server::builder()
                .add_service(HealthServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        ScriptedServer {
            port,
            streams,
            dropped,
            runtime: Some(runtime),
        }
    }

    /// The next Watch call's sender (our connection's own health Watch comes first; it is skipped by the
    /// tests below, which disable it).
    async fn next_stream(&mut self) -> mpsc::UnboundedSender<Option<HealthCheckResponse>> {
        timeout(LONG, self.streams.recv())
            .await
            .expect("a Watch call arrives")
            .unwrap()
    }

    /// Waits until the server has dropped more Watch streams than `before`.
    async fn dropped_after(&self, before: usize) {
        let mut rx = self.dropped.subscribe();
        timeout(LONG, rx.wait_for(|n| *n > before))
            .await
            .expect("the server sees the stream cancelled")
            .unwrap();
    }

    fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An actor that forwards every message it receives to the test.
struct Forwarder<M>(std::marker::PhantomData<fn() -> M>);

impl<M: ractor::Message> Forwarder<M> {
    async fn spawn() -> (ActorRef<M>, mpsc::UnboundedReceiver<M>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (actor, _) = Actor::spawn(None, Forwarder(std::marker::PhantomData), tx)
            .await
            .unwrap();
        (actor, rx)
    }
}

impl<M: ractor::Message> Actor for Forwarder<M> {
    type Msg = M;
    type State = mpsc::UnboundedSender<M>;
    type Arguments = mpsc::UnboundedSender<M>;

    async fn pre_start(
        &self,
        _: ActorRef<M>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(&self, _: ActorRef<M>, msg: M, tx: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(msg);
        Ok(())
    }
}

async fn connect(server: &ScriptedServer) -> ConnectionHandle {
    let cfg =
        quick_config(&format!("grpc://127.0.0.1:{}?disableTls=true", server.port)).with_health_watch(false);
    let h = ConnectionHandle::start(cfg).await.unwrap();
    h.wait_ready(LONG).await.unwrap();
    h
}

type Events = mpsc::UnboundedReceiver<StreamEvent<HealthCheckResponse>>;

async fn subscribe(h: &ConnectionHandle) -> (ActorRef<StreamEvent<HealthCheckResponse>>, Events) {
    let (sub, rx) = Forwarder::spawn().await;
    h.stream_for(
        &sub,
        |channel| async move {
            HealthClient::new(channel)
                .watch(HealthCheckRequest::default())
                .await
        },
        |event| event,
    )
    .unwrap();
    (sub, rx)
}

async fn next(rx: &mut Events) -> StreamEvent<HealthCheckResponse> {
    timeout(LONG, rx.recv())
        .await
        .expect("an event arrives")
        .expect("subscriber alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_cancels_its_stream_at_the_server() {
    grpc_common::init_tracing();
    let mut server = ScriptedServer::start();
    let h = connect(&server).await;
    let (sub, mut events) = subscribe(&h).await;
    let push = server.next_stream().await;
    push.send(Some(serving())).unwrap();
    assert!(matches!(next(&mut events).await, StreamEvent::Item(m) if m.status() == ServingStatus::Serving));
    let before = *server.dropped.borrow();
    sub.get_cell().kill();
    server.dropped_after(before).await;
    // The connection itself is untouched.
    HealthClient::new(h.channel())
        .check(h.request(HealthCheckRequest::default()))
        .await
        .unwrap();
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_end_reaches_the_subscriber_as_a_message() {
    grpc_common::init_tracing();
    let mut server = ScriptedServer::start();
    let h = connect(&server).await;

    // The server finishes the stream.
    let (_sub, mut events) = subscribe(&h).await;
    let push = server.next_stream().await;
    push.send(Some(serving())).unwrap();
    push.send(None).unwrap();
    assert!(matches!(next(&mut events).await, StreamEvent::Item(_)));
    assert!(matches!(
        next(&mut events).await,
        StreamEvent::End(StreamEnd::Finished)
    ));
    server.dropped_after(0).await;

    // The connection is closed: the stream is cancelled and the subscriber told.
    let (_sub, mut events) = subscribe(&h).await;
    let push = server.next_stream().await;
    push.send(Some(serving())).unwrap();
    assert!(matches!(next(&mut events).await, StreamEvent::Item(_)));
    let before = *server.dropped.borrow();
    h.close().await.unwrap();
    assert!(matches!(
        next(&mut events).await,
        StreamEvent::End(StreamEnd::Closed)
    ));
    server.dropped_after(before).await;
    // A tied stream opened while closed ends at once.
    let (_sub, mut events) = subscribe(&h).await;
    match next(&mut events).await {
        StreamEvent::End(StreamEnd::Closed) => {}
        StreamEvent::End(StreamEnd::Failed(status)) => {
            let source = std::error::Error::source(&status).and_then(|s| s.downcast_ref::<ConnectionError>());
            assert!(
                matches!(source, Some(ConnectionError::Closed { .. })),
                "{status:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    h.connect();
    h.wait_ready(LONG).await.unwrap();

    // The server dies: the stream fails as a lost connection.
    let (_sub, mut events) = subscribe(&h).await;
    let push = server.next_stream().await;
    push.send(Some(serving())).unwrap();
    assert!(matches!(next(&mut events).await, StreamEvent::Item(_)));
    server.kill();
    match next(&mut events).await {
        StreamEvent::End(StreamEnd::Failed(status)) => {
            assert_eq!(classify(&status), FailureClass::ConnectionLost, "{status:?}")
        }
        other => panic!("expected a failed end, got {other:?}"),
    }
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A long unary call made for an actor delivers its outcome as a message; a subscriber that is already gone
/// is refused with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tied_call_delivers_its_outcome_and_a_dead_caller_is_refused() {
    grpc_common::init_tracing();
    let server = ScriptedServer::start();
    let h = connect(&server).await;

    let (caller, mut outcomes) =
        Forwarder::<Result<tonic::Response<HealthCheckResponse>, tonic::Status>>::spawn().await;
    let request = h.request(HealthCheckRequest::default());
    h.call_for(
        &caller,
        |channel| async move { HealthClient::new(channel).check(request).await },
        |outcome| outcome,
    )
    .unwrap();
    let outcome = timeout(LONG, outcomes.recv()).await.unwrap().unwrap();
    assert_eq!(outcome.unwrap().into_inner().status(), ServingStatus::Serving);

    caller.stop(None);
    caller.get_cell().wait(Some(LONG)).await.unwrap();
    let refused = h.call_for(
        &caller,
        |channel| async move {
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
        },
        |outcome| outcome,
    );
    assert!(
        matches!(refused, Err(ConnectionError::CallerGone { .. })),
        "{refused:?}"
    );
    h.shutdown(Duration::from_secs(5)).await.unwrap();
}
