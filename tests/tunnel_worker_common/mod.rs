//! Shared by the `tunnel_worker*`, `tunnel_channel*` and `tunnel_ledger*` tests: a real tunnel service on
//! 127.0.0.1 and workers consuming it through arbor connections, with subscribers that record what they get.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor::connection::{ConnectionConfig, ConnectionHandle};
use arbor::supervisor::BoxError;
use arbor::tunnel::{
    Batch, Delivery, Subscriber, SubscriberRef, TunnelEvent, TunnelHandle, TunnelOptions, TunnelWorker,
    WorkerInfo, WorkerStatus,
};
use tokio::sync::{broadcast, Notify};

#[path = "../tunnel_service_common/mod.rs"]
pub mod service;

pub use service::*;

/// Heartbeats fast enough for tests (the floor is lowered on purpose), with a timeout and call deadline
/// generous enough that a scheduler stall of a loaded 2-core CI machine does not end a session (the worker
/// steps down at half the timeout: 5 s); idle channels poll at least every 100 ms (a long-poll read, then at
/// most 100 ms of empty-read backoff), so that a test's new records are picked up at once.
pub fn fast_options(tunnel_id: &str) -> TunnelOptions {
    let mut options = TunnelOptions::new(tunnel_id)
        .min_heartbeat_interval(Duration::from_millis(10))
        .heartbeat(Duration::from_millis(100), Duration::from_secs(10))
        .read_batch_size(100)
        .read_wait(Duration::from_millis(100))
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(200))
        .subscriber_grace(Duration::from_secs(1))
        .call_timeout(Duration::from_secs(5));
    options.empty_read_backoff.max = Duration::from_millis(100);
    options
}

/// A connection to the service at `url` (`http://127.0.0.1:port`).
pub async fn connection(url: &str) -> ConnectionHandle {
    let target = format!("{}?disableTls=true", url.replace("http://", "grpc://"));
    ConnectionHandle::start(ConnectionConfig::parse(&target).expect("connection string"))
        .await
        .expect("connection starts")
}

/// One delivered record: channel, position, key, value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub channel: u32,
    pub sequence: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A subscriber that records every record it acknowledges, in order.
#[derive(Clone, Default)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub changed: Arc<Notify>,
}

impl Subscriber for Recorder {
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let mut seen = self.seen.lock().unwrap();
        for r in &batch.records {
            seen.push(Seen {
                channel: batch.channel_id,
                sequence: r.sequence,
                key: r.key.to_vec(),
                value: r.value.to_vec(),
            });
        }
        drop(seen);
        self.changed.notify_waiters();
        Ok(())
    }
}

impl Recorder {
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until at least `n` records were delivered (panics after [`LONG`]).
    pub async fn wait_for(&self, n: usize) {
        tokio::time::timeout(LONG, async {
            loop {
                let notified = self.changed.notified();
                if self.count() >= n {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} of {n} records delivered", self.count()));
    }

    /// Values per key in delivery order.
    pub fn by_key(&self) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
        let mut out: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
        for s in self.seen.lock().unwrap().iter() {
            out.entry(s.key.clone()).or_default().push(s.value.clone());
        }
        out
    }
}

/// Starts a worker on `tunnel_id` at `url` with a recording subscriber run by the worker.
pub async fn start_worker(
    url: &str,
    options: TunnelOptions,
    registry: arbor::registry::Registry<arbor::tunnel::TunnelEntry>,
) -> (TunnelHandle, Recorder) {
    let recorder = Recorder::default();
    let worker = TunnelWorker::builder(options)
        .connection(connection(url).await)
        .run_subscriber(recorder.clone())
        .registry(registry)
        .start()
        .await
        .expect("worker starts");
    (worker, recorder)
}

/// The next event matching `pick`, skipping others (panics after [`LONG`]).
pub async fn next_event<T>(
    events: &mut broadcast::Receiver<TunnelEvent>,
    mut pick: impl FnMut(&TunnelEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(LONG, async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(value) = pick(&event) {
                        return value;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(err) => panic!("events closed: {err}"),
            }
        }
    })
    .await
    .expect("timed out waiting for a tunnel event")
}

/// Waits until `done` holds, checking every 10 ms (panics after [`LONG`], naming `what`).
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `done` holds for the tunnel's description (panics after [`LONG`], naming `what`).
pub async fn wait_for_tunnel(
    client: &mut Client,
    tunnel_id: &str,
    what: &str,
    mut done: impl FnMut(&arbor_proto::tunnel::v1::TunnelInfo) -> bool,
) -> arbor_proto::tunnel::v1::TunnelInfo {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let info = describe(client, tunnel_id).await;
        if done(&info) {
            return info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}: {info:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The service's checkpoint of each channel, by channel id.
pub async fn checkpoints(client: &mut Client, tunnel_id: &str) -> Vec<u64> {
    describe(client, tunnel_id)
        .await
        .channels
        .iter()
        .map(|c| c.checkpoint_sequence_number)
        .collect()
}

/// `n` records with keys `k<i>` and values `<prefix><i>`, all for `channel` when named.
pub fn records(prefix: &str, n: usize) -> Vec<arbor_proto::tunnel::v1::AppendRecord> {
    (0..n)
        .map(|i| record(format!("k{i}"), format!("{prefix}{i}")))
        .collect()
}

/// What an [`ActorSubscriber`] got, shared with the test.
#[derive(Default)]
pub struct Inbox {
    /// Every delivery received, acknowledged or not: (channel, first sequence, next sequence).
    pub received: Mutex<Vec<(u32, u64, u64)>>,
    /// The lease version of each delivery in `received`, in the same order.
    pub versions: Mutex<Vec<arbor::tunnel::Version>>,
    /// The records acknowledged, in order.
    pub acked: Mutex<Vec<Seen>>,
    /// Deliveries starting at or after this sequence are kept without an answer (the acknowledgement is
    /// held, as by a subscriber that hangs).
    pub hold_from: Mutex<Option<u64>>,
    /// When set, the next delivery is refused (nack).
    pub nack_next: std::sync::atomic::AtomicBool,
    /// The acknowledgements held, with the records they would acknowledge.
    pub held: Mutex<Vec<(Arc<Batch>, arbor::tunnel::Ack)>>,
    pub changed: Notify,
}

impl Inbox {
    /// An inbox that holds every delivery from sequence `from` on.
    pub fn holding_from(from: u64) -> Arc<Inbox> {
        let inbox = Inbox::default();
        *inbox.hold_from.lock().unwrap() = Some(from);
        Arc::new(inbox)
    }

    /// Acknowledges the held deliveries (as a subscriber that was slow, not stuck).
    pub fn release(&self) {
        for (batch, ack) in self.held.lock().unwrap().drain(..) {
            self.record_acked(&batch);
            ack.ack();
        }
        self.changed.notify_waiters();
    }

    fn record_acked(&self, batch: &Batch) {
        self.acked
            .lock()
            .unwrap()
            .extend(batch.records.iter().map(|r| Seen {
                channel: batch.channel_id,
                sequence: r.sequence,
                key: r.key.to_vec(),
                value: r.value.to_vec(),
            }));
    }

    /// Waits until a delivery matching `pick` was received (panics after [`LONG`]).
    pub async fn wait_received(&self, what: &str, mut pick: impl FnMut(&(u32, u64, u64)) -> bool) {
        tokio::time::timeout(LONG, async {
            loop {
                let notified = self.changed.notified();
                if self.received.lock().unwrap().iter().any(&mut pick) {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never received {what}: {:?}", self.received()));
    }

    pub fn received(&self) -> Vec<(u32, u64, u64)> {
        self.received.lock().unwrap().clone()
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Sequences acknowledged on `channel`, in order.
    pub fn acked_on(&self, channel: u32) -> Vec<u64> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.channel == channel)
            .map(|s| s.sequence)
            .collect()
    }
}

/// A user's ractor actor as a subscriber ([`SubscriberRef::actor`]): records what it receives, acknowledges
/// unless told to hold or refuse.
pub struct ActorSubscriber;

/// The actor's hold on the acknowledgements it keeps: they go (dropped, so the channel sees the delivery
/// fail) when the actor goes, killed or stopped, as they would with a real subscriber's state.
pub struct HeldAcks(Arc<Inbox>);

impl Drop for HeldAcks {
    fn drop(&mut self) {
        self.0.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl arbor::ractor::Actor for ActorSubscriber {
    type Msg = Delivery;
    type State = (Arc<Inbox>, HeldAcks);
    type Arguments = Arc<Inbox>;

    async fn pre_start(
        &self,
        _: arbor::ractor::ActorRef<Delivery>,
        inbox: Arc<Inbox>,
    ) -> Result<Self::State, arbor::ractor::ActorProcessingErr> {
        Ok((Arc::clone(&inbox), HeldAcks(inbox)))
    }

    async fn handle(
        &self,
        _: arbor::ractor::ActorRef<Delivery>,
        delivery: Delivery,
        (inbox, _): &mut Self::State,
    ) -> Result<(), arbor::ractor::ActorProcessingErr> {
        use std::sync::atomic::Ordering::SeqCst;
        let batch = &delivery.batch;
        let mut received = inbox.received.lock().unwrap();
        received.push((batch.channel_id, batch.first_sequence(), batch.next_sequence()));
        inbox.versions.lock().unwrap().push(batch.version);
        drop(received);
        let hold = inbox
            .hold_from
            .lock()
            .unwrap()
            .is_some_and(|from| batch.first_sequence() >= from);
        if hold {
            inbox.held.lock().unwrap().push((Arc::clone(batch), delivery.ack));
        } else if inbox.nack_next.swap(false, SeqCst) {
            delivery.ack.nack("refused by the test");
        } else {
            inbox.record_acked(batch);
            delivery.ack.ack();
        }
        inbox.changed.notify_waiters();
        Ok(())
    }
}

/// Spawns an [`ActorSubscriber`] on `inbox`; returns the actor and the reference a worker takes.
pub async fn actor_subscriber(inbox: Arc<Inbox>) -> (arbor::ractor::ActorRef<Delivery>, SubscriberRef) {
    let (actor, _) = arbor::ractor::Actor::spawn(None, ActorSubscriber, inbox)
        .await
        .expect("subscriber starts");
    let subscriber = SubscriberRef::actor(&actor, |d| d);
    (actor, subscriber)
}

/// Starts a worker on `tunnel_id` at `url` with a user actor as its subscriber.
pub async fn start_worker_with(
    url: &str,
    options: TunnelOptions,
    registry: arbor::registry::Registry<arbor::tunnel::TunnelEntry>,
    subscriber: SubscriberRef,
) -> TunnelHandle {
    TunnelWorker::builder(options)
        .connection(connection(url).await)
        .subscriber(subscriber)
        .registry(registry)
        .start()
        .await
        .expect("worker starts")
}

/// Waits until the worker is in `status`; returns its state then.
pub async fn wait_for_status(worker: &TunnelHandle, status: WorkerStatus) -> WorkerInfo {
    let mut watch = worker.status();
    let reached = tokio::time::timeout(LONG, watch.wait_for(|s| *s == status))
        .await
        .map(|r| r.is_ok());
    assert!(
        reached == Ok(true),
        "the worker never reached {status:?}: {:?}",
        *worker.status().borrow()
    );
    worker.info().await.expect("the worker runs")
}

/// [`arbor::tunnel::GrpcSource`] as is, except that it asks the service for `service_timeout` whatever the
/// worker's options say (so the service's figure can differ from the worker's own), that its heartbeats
/// fail as UNAVAILABLE, without reaching the service, while `fail_heartbeats` is set, and its connects as
/// NOT_FOUND (fatal) while `fail_connects` is.
pub struct ServiceTimeout {
    pub inner: arbor::tunnel::GrpcSource,
    pub service_timeout: Duration,
    pub fail_heartbeats: Arc<std::sync::atomic::AtomicBool>,
    pub fail_connects: Arc<std::sync::atomic::AtomicBool>,
}

impl arbor::tunnel::TunnelSource for ServiceTimeout {
    fn connect<'a>(
        &'a self,
        tunnel_id: &'a str,
        client_tag: &'a str,
        _: Duration,
    ) -> futures::future::BoxFuture<'a, Result<arbor::tunnel::source::Session, arbor::tunnel::TunnelError>>
    {
        if self.fail_connects.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async {
                Err(arbor::tunnel::TunnelError::Call {
                    call: "ConnectTunnel",
                    kind: arbor::tunnel::ErrorKind::Fatal,
                    status: tonic::Status::not_found("tunnel deleted (by the test)"),
                })
            });
        }
        self.inner.connect(tunnel_id, client_tag, self.service_timeout)
    }

    fn heartbeat<'a>(
        &'a self,
        session: &'a arbor::tunnel::source::Session,
        channels: &'a [arbor::tunnel::source::ReportedChannel],
    ) -> futures::future::BoxFuture<
        'a,
        Result<Vec<arbor::tunnel::source::ServerChannel>, arbor::tunnel::TunnelError>,
    > {
        if self.fail_heartbeats.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async {
                Err(arbor::tunnel::TunnelError::Call {
                    call: "Heartbeat",
                    kind: arbor::tunnel::ErrorKind::Retryable,
                    status: tonic::Status::unavailable("heartbeats cut off by the test"),
                })
            });
        }
        self.inner.heartbeat(session, channels)
    }

    fn get_checkpoint<'a>(
        &'a self,
        lease: &'a arbor::tunnel::source::ChannelLease,
    ) -> futures::future::BoxFuture<
        'a,
        Result<arbor::tunnel::source::CheckpointInfo, arbor::tunnel::TunnelError>,
    > {
        self.inner.get_checkpoint(lease)
    }

    fn read<'a>(
        &'a self,
        lease: &'a arbor::tunnel::source::ChannelLease,
        from: u64,
        max_records: u32,
        wait: Duration,
    ) -> futures::future::BoxFuture<'a, Result<arbor::tunnel::source::ReadBatch, arbor::tunnel::TunnelError>>
    {
        self.inner.read(lease, from, max_records, wait)
    }

    fn checkpoint<'a>(
        &'a self,
        lease: &'a arbor::tunnel::source::ChannelLease,
        position: u64,
    ) -> futures::future::BoxFuture<'a, Result<(), arbor::tunnel::TunnelError>> {
        self.inner.checkpoint(lease, position)
    }

    fn shutdown<'a>(
        &'a self,
        session: &'a arbor::tunnel::source::Session,
    ) -> futures::future::BoxFuture<'a, Result<(), arbor::tunnel::TunnelError>> {
        self.inner.shutdown(session)
    }
}

/// The subscriber runner a worker runs itself: the child of its runner supervisor (the worker's children are
/// that supervisor and the channel actors).
pub fn runner_of(worker: &TunnelHandle) -> Option<arbor::ractor::ActorCell> {
    worker
        .ractor_cell()
        .ok()?
        .get_children()
        .into_iter()
        .flat_map(|child| child.get_children())
        .find(|c| c.is_message_type_of::<Delivery>() == Some(true))
}
