//! The tree: builder and file are the same tree; its events; a graceful shutdown flushes tunnel checkpoints
//! and shuts the sessions down.

mod tunnel_worker_common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arbor::activator::{ActivatorEvent, ActivatorOptions, Role, Singleton};
use arbor::connection::ConnectionConfig;
use arbor::ractor::{Actor, ActorProcessingErr, ActorRef};
use arbor::supervisor::BoxError;
use arbor::supervisor::{ChildKind, ChildSpec, SupervisorEvent, SupervisorExit, TreeSnapshot};
use arbor::tree::{DynamicConfig, Tree, TreeConfig, TreeEvent};
use arbor::tunnel::{Batch, CheckpointPolicy, Subscriber, TunnelEvent, TunnelExit};
use arbor_proto::tunnel::v1;
use arbor_proto::tunnel::v1::tunnel_service_server::{TunnelService, TunnelServiceServer};
use tokio::sync::broadcast;
use tunnel_worker_common::*;

#[derive(Clone)]
struct Janitor;

impl Singleton for Janitor {
    type State = ();
    fn init(&self) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn on_event(&self, _: &mut (), _: ActivatorEvent) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

struct Job;

impl Actor for Job {
    type Msg = ();
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

fn target(url: &str) -> ConnectionConfig {
    let target = format!("{}?disableTls=true", url.replace("http://", "grpc://"));
    ConnectionConfig::parse(&target).unwrap()
}

/// The tree's shape: every node's path and kind, without actor ids or timings.
fn shape(snapshot: &TreeSnapshot) -> Vec<(String, ChildKind)> {
    let mut nodes: Vec<(String, ChildKind)> = snapshot
        .nodes()
        .iter()
        .map(|n| (n.path.clone(), n.kind))
        .collect();
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_and_file_are_the_same_tree() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "same", 2).await;
    let toml = format!(
        r#"
name = "orders"
[root]
strategy = "one_for_one"
max_restarts = 5
period = "10s"
[connections.tunnels]
connection_string = "{}?disableTls=true"
[[tunnels]]
connection = "tunnels"
subscriber = "log"
[tunnels.options]
tunnel_id = "{tunnel}"
min_heartbeat_interval = "10ms"
heartbeat_interval = "100ms"
heartbeat_timeout = "2s"
[[activators.singletons]]
name = "janitor"
kind = "janitor"
[[dynamic]]
name = "jobs"
max_children = 10
"#,
        server.url.replace("http://", "grpc://")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tree.toml");
    std::fs::write(&path, toml).unwrap();
    let from_file = Tree::from_file(&path).unwrap().singleton_kind("janitor", Janitor);

    let dynamic = DynamicConfig::new("jobs").max_children(10);
    let from_code = Tree::builder()
        .name("orders")
        .root(arbor::supervisor::SupervisorOptions::default().intensity(5, Duration::from_secs(10)))
        .connection("tunnels", target(&server.url))
        .tunnel(
            "tunnels",
            "log",
            arbor::tunnel::TunnelOptions::new(&tunnel)
                .min_heartbeat_interval(Duration::from_millis(10))
                .heartbeat(Duration::from_millis(100), Duration::from_secs(2)),
        )
        .singleton_kind("janitor", Janitor)
        .activator("janitor", "janitor")
        .dynamic(dynamic);
    assert_eq!(
        format!("{:?}", from_file.config()),
        format!("{:?}", from_code.config())
    );

    // Started, they are the same tree (two trees on one tunnel share its two channels: one each).
    let a = from_file.start().await.unwrap();
    let b = from_code.start().await.unwrap();
    tokio::time::timeout(LONG, async {
        loop {
            let spread: Vec<usize> = [&a, &b]
                .iter()
                .flat_map(|t| t.tunnels().into_values().map(|w| w.channels().len()))
                .collect();
            if spread == [1, 1] && a.activator("janitor").is_some() && b.activator("janitor").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both trees run their worker and activator");
    assert_eq!(
        shape(&a.snapshot().await.unwrap()),
        shape(&b.snapshot().await.unwrap())
    );
    a.shutdown(Duration::from_secs(30)).await.unwrap();
    b.shutdown(Duration::from_secs(30)).await.unwrap();
    server.stop().await;
}

async fn event(
    rx: &mut broadcast::Receiver<TreeEvent>,
    mut pick: impl FnMut(&TreeEvent) -> bool,
) -> TreeEvent {
    tokio::time::timeout(LONG, async {
        loop {
            match rx.recv().await {
                Ok(e) if pick(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the event comes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cover_starts_restarts_reconnects_rebalances_checkpoints_and_leadership() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "events", 2).await;
    let tree = Tree::builder()
        .dynamic(DynamicConfig::new("jobs"))
        .start()
        .await
        .unwrap();
    let mut events = tree.subscribe_events();

    let job = tree
        .start_child("jobs", ChildSpec::actor("job", || (Job, ())))
        .await
        .unwrap();
    event(&mut events, |e| matches!(e, TreeEvent::Supervisor(SupervisorEvent::Started { supervisor, child, .. }) if &**supervisor == "arbor/jobs" && child.starts_with("job#"))).await;
    job.kill().unwrap();
    event(&mut events, |e| matches!(e, TreeEvent::Supervisor(SupervisorEvent::Restarted { child, restarts: 1, .. }) if child.starts_with("job#"))).await;

    let recorder = Recorder::default();
    let mut first_session = tree.subscribe_events();
    tree.tunnel(fast_options(&tunnel), target(&server.url))
        .run_subscriber(recorder.clone())
        .start()
        .await
        .unwrap();
    // the worker's first session is told too (it is sent before the start returns)
    event(&mut first_session, |e| {
        matches!(
            e,
            TreeEvent::Tunnel {
                event: TunnelEvent::Connected { .. },
                ..
            }
        )
    })
    .await;
    event(&mut events, |e| {
        matches!(
            e,
            TreeEvent::Connection {
                state: arbor::connection::ConnectivityState::Ready,
                ..
            }
        )
    })
    .await;
    event(&mut events, |e| {
        matches!(
            e,
            TreeEvent::Tunnel {
                event: TunnelEvent::ChannelAssigned { .. },
                ..
            }
        )
    })
    .await;
    append_to(&mut client, &tunnel, None, vec![record("k", "v")])
        .await
        .unwrap();
    event(&mut events, |e| {
        matches!(
            e,
            TreeEvent::Tunnel {
                event: TunnelEvent::Checkpointed { position: 1, .. },
                ..
            }
        )
    })
    .await;

    tree.start_activator(Janitor, ActivatorOptions::new("janitor"))
        .await
        .unwrap();
    event(&mut events, |e| matches!(e, TreeEvent::Leadership { name, role: Role::Leader, fencing_token: Some(_), .. } if name == "janitor")).await;
    tree.shutdown(Duration::from_secs(30)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_tunnel_checkpoints_and_shuts_sessions_down() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "flush", 4).await;
    append_to(
        &mut client,
        &tunnel,
        None,
        (0..500)
            .map(|i| record(format!("k{i}"), format!("{i}")))
            .collect(),
    )
    .await
    .unwrap();
    let tree = Tree::builder().start().await.unwrap();
    let recorder = Recorder::default();
    // Checkpoints only on close: what the service holds after the shutdown is what the shutdown flushed.
    let options = fast_options(&tunnel).checkpoint(CheckpointPolicy::Every(Duration::from_secs(3600)));
    tree.tunnel(options, target(&server.url))
        .run_subscriber(recorder.clone())
        .start()
        .await
        .unwrap();
    recorder.wait_for(500).await;
    tree.shutdown(Duration::from_secs(30)).await.unwrap();
    let info = describe(&mut client, &tunnel).await;
    assert!(
        info.clients.is_empty(),
        "the session was shut down: {:?}",
        info.clients
    );
    for c in &info.channels {
        assert_eq!(
            c.checkpoint_sequence_number, c.end_sequence_number,
            "channel {} flushed",
            c.channel_id
        );
    }
    // a new consumer resumes exactly after them: it gets only what comes next
    append_to(
        &mut client,
        &tunnel,
        None,
        (500..600)
            .map(|i| record(format!("k{i}"), format!("{i}")))
            .collect(),
    )
    .await
    .unwrap();
    let next = Tree::builder().start().await.unwrap();
    let fresh = Recorder::default();
    next.tunnel(fast_options(&tunnel), target(&server.url))
        .run_subscriber(fresh.clone())
        .start()
        .await
        .unwrap();
    fresh.wait_for(100).await;
    let values: std::collections::BTreeSet<u32> = fresh
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| String::from_utf8(s.value.clone()).unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        values,
        (500..600).collect(),
        "nothing before the checkpoints was delivered again"
    );
    next.shutdown(Duration::from_secs(30)).await.unwrap();
    server.stop().await;
}

/// A dynamic supervisor of the tree as a pool: a hundred workers survive twenty quick crashes of different
/// workers (the default intensity is per child); one worker crash-looping makes it give up, and the tree says
/// which supervisor gave up and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_survives_unrelated_crashes_and_a_crash_loop_is_told_as_an_escalation() {
    let tree = Tree::builder()
        .name("pools")
        .dynamic(DynamicConfig::new("jobs"))
        .start()
        .await
        .unwrap();
    let mut events = tree.subscribe_events();
    let mut jobs = Vec::new();
    for _ in 0..100 {
        jobs.push(
            tree.start_child("jobs", ChildSpec::actor("job", || (Job, ())))
                .await
                .unwrap(),
        );
    }
    for job in jobs.iter().step_by(5) {
        job.kill().unwrap();
        let id = job.id();
        event(
            &mut events,
            |e| matches!(e, TreeEvent::Supervisor(SupervisorEvent::Restarted { child, .. }) if *child == id),
        )
        .await;
    }
    let counts = tree.supervisor("jobs").unwrap().count_children().await.unwrap();
    assert_eq!((counts.specs, counts.active), (100, 100));

    let looping = &jobs[1];
    let id = looping.id();
    for _ in 0..3 {
        looping.kill().unwrap();
        event(
            &mut events,
            |e| matches!(e, TreeEvent::Supervisor(SupervisorEvent::Restarted { child, .. }) if *child == id),
        )
        .await;
    }
    looping.kill().unwrap();
    let escalation = event(&mut events, |e| e.escalation().is_some()).await;
    let (supervisor, cause) = escalation.escalation().unwrap();
    assert_eq!(supervisor, "pools/jobs");
    assert!(
        matches!(cause, SupervisorExit::IntensityReached { child, max_restarts: 3, .. } if *child == id),
        "{cause:?}"
    );
    tree.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_activator_resigns_and_keeps_it_down() {
    let tree = Tree::builder().name("stopper").start().await.unwrap();
    let mut events = tree.subscribe_events();
    tree.start_activator(Janitor, ActivatorOptions::new("janitor"))
        .await
        .unwrap();
    event(
        &mut events,
        |e| matches!(e, TreeEvent::Leadership { name, role: Role::Leader, .. } if name == "janitor"),
    )
    .await;
    tree.stop_activator("janitor").await.unwrap();
    event(&mut events, |e| matches!(e, TreeEvent::Supervisor(SupervisorEvent::Exited { supervisor, child, restart: false, .. }) if &**supervisor == "stopper/activators" && child.starts_with("janitor#"))).await;
    assert!(tree.activator("janitor").is_none());
    let parts = tree.root().child_dynamic_supervisor("activators").await.unwrap();
    assert_eq!(parts.count_children().await.unwrap().specs, 0, "not restarted");
    assert!(matches!(
        tree.stop_activator("janitor").await,
        Err(arbor::tree::TreeError::UnknownActivator { name }) if name == "janitor"
    ));
    tree.shutdown(Duration::from_secs(30)).await.unwrap();
}

/// A singleton that cannot start: the last step of a tree's start fails.
#[derive(Clone)]
struct Broken;

impl Singleton for Broken {
    type State = ();
    fn init(&self) -> Result<(), ActorProcessingErr> {
        Err("broken on purpose".into())
    }
    async fn on_event(&self, _: &mut (), _: ActivatorEvent) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// An application child that tells the test which actor is its supervisor (the tree's root) and when it
/// stops gracefully.
struct Witness;

type WitnessLog = tokio::sync::mpsc::UnboundedSender<Option<arbor::ractor::ActorCell>>;

impl Actor for Witness {
    type Msg = ();
    type State = WitnessLog;
    type Arguments = WitnessLog;
    async fn pre_start(&self, _: ActorRef<()>, tx: WitnessLog) -> Result<WitnessLog, ActorProcessingErr> {
        Ok(tx)
    }
    async fn post_stop(&self, _: ActorRef<()>, tx: &mut WitnessLog) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(None);
        Ok(())
    }
}

fn witness(tx: WitnessLog) -> ChildSpec {
    ChildSpec::new("witness", move |supervisor: arbor::ractor::ActorCell| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Some(supervisor.clone()));
            let (actor, _) = Actor::spawn_linked(None, Witness, tx, supervisor).await?;
            Ok(actor.get_cell())
        }
    })
}

/// Waits for the witness's start (giving the root) and its graceful stop, then for the root to exit.
async fn everything_stopped(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Option<arbor::ractor::ActorCell>>) {
    let root = tokio::time::timeout(LONG, rx.recv())
        .await
        .expect("the witness started")
        .flatten()
        .expect("the witness has a supervisor");
    assert!(
        tokio::time::timeout(LONG, rx.recv())
            .await
            .expect("the witness stopped")
            .is_some(),
        "the witness was stopped gracefully"
    );
    root.wait(Some(LONG)).await.expect("the root stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_at_its_last_step_leaves_nothing_running() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let result = Tree::builder()
        .name("doomed")
        .dynamic(DynamicConfig::new("jobs"))
        .child(witness(tx))
        .singleton_kind("broken", Broken)
        .activator("broken", "broken")
        .start()
        .await;
    let err = result.expect_err("the singleton cannot start");
    assert!(err.to_string().contains("broken"), "{err}");
    everything_stopped(&mut rx).await;
}

#[cfg(feature = "introspection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_introspection_port_is_taken_leaves_nothing_running_and_no_port_bound() {
    use arbor::introspect::{IntrospectionOptions, PrometheusOptions};
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    drop(grpc);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let result = Tree::builder()
        .name("taken")
        .child(witness(tx))
        .introspection(
            IntrospectionOptions::default()
                .listen(grpc_addr)
                .prometheus(PrometheusOptions::default().listen(taken.local_addr().unwrap())),
        )
        .start()
        .await;
    assert!(result.is_err(), "the Prometheus port is taken");
    everything_stopped(&mut rx).await;
    std::net::TcpListener::bind(grpc_addr).expect("the gRPC port is free again");
}

/// `GET /metrics` over plain HTTP/1.1.
#[cfg(feature = "introspection")]
async fn metrics_text(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: arbor\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(LONG, stream.read_to_string(&mut response))
        .await
        .expect("the exporter answers")
        .unwrap();
    response
}

/// Children of many ids come and go: the restart counter's `child` label keeps to its budget (a recorder keeps
/// every series it is given for the life of the process).
#[cfg(feature = "introspection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_keep_a_bounded_number_of_series_through_many_child_start_stop_cycles() {
    use arbor::introspect::{IntrospectionOptions, PrometheusOptions};
    let tree = Tree::builder()
        .name("labels")
        .dynamic(DynamicConfig::new("jobs"))
        .introspection(
            IntrospectionOptions::default()
                .listen("127.0.0.1:0".parse().unwrap())
                .prometheus(PrometheusOptions::default().listen("127.0.0.1:0".parse().unwrap())),
        )
        .start()
        .await
        .unwrap();
    let mut events = tree.subscribe_events();
    let jobs = tree.supervisor("jobs").unwrap().clone();
    let cycles = arbor::tree::LABEL_BUDGET + 100;
    for i in 0..cycles {
        let job = jobs
            .start_child(ChildSpec::actor(format!("job-{i}"), || (Job, ())))
            .await
            .unwrap();
        let id = job.id();
        job.kill().unwrap();
        event(
            &mut events,
            |e| matches!(e, TreeEvent::Supervisor(SupervisorEvent::Restarted { child, .. }) if *child == id),
        )
        .await;
        jobs.terminate_child(&id).await.unwrap();
    }
    assert_eq!(jobs.count_children().await.unwrap().specs, 0);
    let addr = tree.introspection_addrs().unwrap().prometheus.unwrap();
    let text = metrics_text(addr).await;
    let children: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("arbor_restarts_total{"))
        .filter_map(|l| l.split("child=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        children.len() <= arbor::tree::LABEL_BUDGET + 1,
        "{} child series",
        children.len()
    );
    assert!(children.contains("other"), "the rest are counted as other");
    tree.shutdown(Duration::from_secs(30)).await.unwrap();
}

/// A subscriber that notes how many batches it holds at once: each batch waits (at most 5 s) for a batch of
/// another channel to come in alongside it.
#[derive(Clone, Default)]
struct Overlap {
    inside: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    together: Arc<tokio::sync::Notify>,
}

impl Subscriber for Overlap {
    async fn handle(&self, _: &Batch) -> Result<(), BoxError> {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        if now >= 2 {
            self.together.notify_waiters();
        } else {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.together.notified()).await;
        }
        self.inside.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// `subscriber_concurrency = "per_channel"` in the file is what the worker runs: two channels' batches are in
/// the kind's subscriber at once (with the default, one batch at a time, never). A kind that hands the
/// records to an actor of its own cannot take the key: the start fails naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_concurrency_from_the_file_is_what_the_worker_runs() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "concurrency", 2).await;
    for channel in 0..2 {
        append_to(&mut client, &tunnel, Some(channel), records("c", 20))
            .await
            .unwrap();
    }
    let toml = |kind: &str| {
        format!(
            r#"
[connections.tunnels]
connection_string = "{}?disableTls=true"
[[tunnels]]
connection = "tunnels"
subscriber = "{kind}"
subscriber_concurrency = "per_channel"
[tunnels.options]
tunnel_id = "{tunnel}"
min_heartbeat_interval = "10ms"
heartbeat_interval = "100ms"
heartbeat_timeout = "10s"
read_batch_size = 5
"#,
            server.url.replace("http://", "grpc://")
        )
    };
    let overlap = Overlap::default();
    let kind = overlap.clone();
    let config = TreeConfig::from_toml(&toml("overlap")).unwrap();
    let tree = Tree::from_config(config)
        .subscriber_kind("overlap", move |b| b.run_subscriber(kind.clone()))
        .start()
        .await
        .unwrap();
    wait_until("two channels' batches in the subscriber at once", || {
        overlap.most.load(Ordering::SeqCst) >= 2
    })
    .await;
    tree.shutdown(Duration::from_secs(30)).await.unwrap();

    let (_actor, subscriber) = actor_subscriber(Inbox::holding_from(u64::MAX)).await;
    let config = TreeConfig::from_toml(&toml("actor")).unwrap();
    let started = Tree::from_config(config)
        .subscriber_kind("actor", move |b| b.subscriber(subscriber.clone()))
        .start()
        .await;
    let Err(refused) = started else {
        panic!("an actor of the kind's own cannot take subscriber_concurrency");
    };
    assert!(
        refused.to_string().contains("subscriber_concurrency"),
        "{refused}"
    );
    server.stop().await;
}

/// A real tonic service on 127.0.0.1 in front of the tunnel service: forwards every call, and while `slow` is
/// set holds each Checkpoint and Shutdown for `delay` first (within the worker's call timeout). Counts the
/// Shutdowns the service answered, and the ReadRecords calls.
#[derive(Clone)]
struct SlowService {
    upstream: Client,
    slow: Arc<AtomicBool>,
    delay: Duration,
    shutdowns: Arc<AtomicUsize>,
    reads: Arc<AtomicUsize>,
}

type ReadStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::ReadRecordsResponse, tonic::Status>> + Send>>;

macro_rules! forward {
    ($($rpc:ident($request:ident) -> $response:ident;)*) => {
        #[tonic::async_trait]
        impl TunnelService for SlowService {
            type ReadRecordsStream = ReadStream;

            async fn read_records(
                &self,
                request: tonic::Request<v1::ReadRecordsRequest>,
            ) -> Result<tonic::Response<ReadStream>, tonic::Status> {
                self.reads.fetch_add(1, Ordering::SeqCst);
                let stream = self.upstream.clone().read_records(request.into_inner()).await?.into_inner();
                Ok(tonic::Response::new(Box::pin(stream)))
            }

            $(async fn $rpc(
                &self,
                request: tonic::Request<v1::$request>,
            ) -> Result<tonic::Response<v1::$response>, tonic::Status> {
                let call = stringify!($rpc);
                if self.slow.load(Ordering::SeqCst) && matches!(call, "checkpoint" | "shutdown") {
                    tokio::time::sleep(self.delay).await;
                }
                let reply = self.upstream.clone().$rpc(request.into_inner()).await?.into_inner();
                if call == "shutdown" {
                    self.shutdowns.fetch_add(1, Ordering::SeqCst);
                }
                Ok(tonic::Response::new(reply))
            })*
        }
    };
}

forward! {
    append(AppendRequest) -> AppendResponse;
    create_tunnel(CreateTunnelRequest) -> CreateTunnelResponse;
    describe_tunnel(DescribeTunnelRequest) -> DescribeTunnelResponse;
    list_tunnels(ListTunnelsRequest) -> ListTunnelsResponse;
    delete_tunnel(DeleteTunnelRequest) -> DeleteTunnelResponse;
    seal_channel(SealChannelRequest) -> SealChannelResponse;
    connect_tunnel(ConnectTunnelRequest) -> ConnectTunnelResponse;
    heartbeat(HeartbeatRequest) -> HeartbeatResponse;
    get_checkpoint(GetCheckpointRequest) -> GetCheckpointResponse;
    checkpoint(CheckpointRequest) -> CheckpointResponse;
    shutdown(ShutdownRequest) -> ShutdownResponse;
    get_limits(GetLimitsRequest) -> GetLimitsResponse;
}

impl SlowService {
    /// Serves on 127.0.0.1 until the test ends; returns its URL.
    async fn serve(self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TunnelServiceServer::new(self))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        url
    }
}

/// Batches once `slow` is set take `delay` each (within the worker's call timeout, so a graceful stop lets the
/// one in hand finish); the first slow batch (channel, next position), and what each channel handled.
#[derive(Clone, Default)]
struct SlowSubscriber {
    slow: Arc<AtomicBool>,
    delay: Duration,
    holding: Arc<tokio::sync::Notify>,
    held: Arc<std::sync::OnceLock<(u32, u64)>>,
    handled: Arc<std::sync::Mutex<std::collections::BTreeMap<u32, u64>>>,
}

impl Subscriber for SlowSubscriber {
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        if self.slow.load(Ordering::SeqCst) {
            let _ = self.held.set((batch.channel_id, batch.next_sequence()));
            self.holding.notify_one();
            tokio::time::sleep(self.delay).await;
        }
        let mut handled = self.handled.lock().unwrap();
        handled.insert(batch.channel_id, batch.next_sequence());
        Ok(())
    }
}

/// A tree shut down while the service is slow (each Checkpoint and Shutdown held most of the call timeout)
/// and its subscriber is in the middle of a slow batch lets its tunnel worker stop gracefully within the
/// budget the worker's child spec gives it: the batch in hand is finished and checkpointed (after the
/// checkpoint write in flight), the session is shut down (the service answered the Shutdown), and the worker
/// ended as shut down, not killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_shutdown_against_a_slow_service_lets_the_worker_stop_gracefully() {
    const CALL_TIMEOUT: Duration = Duration::from_secs(2);
    const DELAY: Duration = Duration::from_millis(1_500);
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "slow", 2).await;
    for channel in 0..2 {
        append_to(&mut client, &tunnel, Some(channel), records("s", 200))
            .await
            .unwrap();
    }
    let slow = Arc::new(AtomicBool::new(false));
    let proxy = SlowService {
        upstream: server.client().await,
        slow: Arc::clone(&slow),
        delay: DELAY,
        shutdowns: Arc::default(),
        reads: Arc::default(),
    };
    let shutdowns = Arc::clone(&proxy.shutdowns);
    let url = proxy.serve().await;
    let subscriber = SlowSubscriber {
        slow: Arc::clone(&slow),
        delay: DELAY,
        ..SlowSubscriber::default()
    };
    let tree = Tree::builder().start().await.unwrap();
    let options = fast_options(&tunnel)
        .call_timeout(CALL_TIMEOUT)
        .read_batch_size(10)
        .checkpoint(CheckpointPolicy::EveryBatch);
    let worker = tree
        .tunnel(options, target(&url))
        .run_subscriber(subscriber.clone())
        .start()
        .await
        .unwrap();
    wait_until("both channels delivered", || {
        subscriber.handled.lock().unwrap().len() == 2
    })
    .await;
    slow.store(true, Ordering::SeqCst);
    // More records, so that a batch comes to the slow subscriber even if the first ones were all delivered.
    for channel in 0..2 {
        append_to(&mut client, &tunnel, Some(channel), records("t", 20))
            .await
            .unwrap();
    }
    tokio::time::timeout(LONG, subscriber.holding.notified())
        .await
        .expect("a batch in the slow subscriber's hands");

    tree.shutdown(Duration::from_secs(120)).await.unwrap();
    let exit = worker.wait().await;
    assert!(
        matches!(exit, TunnelExit::Shutdown),
        "the worker stopped gracefully, not killed: {exit:?}"
    );
    assert_eq!(
        shutdowns.load(Ordering::SeqCst),
        1,
        "the service answered the worker's Shutdown"
    );
    let info = describe(&mut client, &tunnel).await;
    assert!(info.clients.is_empty(), "the session is gone: {:?}", info.clients);
    // The batch in the subscriber's hands when the shutdown began was finished and checkpointed; nothing is
    // checkpointed past what the subscriber handled (a batch another channel had queued behind it may be
    // handled after its channel stopped: it is delivered again, at-least-once).
    let (held_channel, held_next) = *subscriber.held.get().expect("a slow batch");
    let handled = subscriber.handled.lock().unwrap().clone();
    for c in &info.channels {
        if c.channel_id == held_channel {
            assert_eq!(
                c.checkpoint_sequence_number, held_next,
                "channel {held_channel}: the batch in hand at the shutdown is checkpointed"
            );
        }
        assert!(
            Some(&c.checkpoint_sequence_number) <= handled.get(&c.channel_id),
            "channel {}: checkpoint {} past what was handled {handled:?}",
            c.channel_id,
            c.checkpoint_sequence_number
        );
    }
    server.stop().await;
}

/// A channel catching up reads one ReadRecords stream, a message per batch, not a call per batch: 100 batches of
/// 10 records come through a handful of calls (the worker's throughput, `cargo bench --bench tunnel_worker`,
/// rests on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_catching_up_reads_one_stream_not_a_call_per_batch() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "catch-up", 1).await;
    append_to(&mut client, &tunnel, Some(0), records("r", 1_000))
        .await
        .unwrap();
    let proxy = SlowService {
        upstream: server.client().await,
        slow: Arc::default(),
        delay: Duration::ZERO,
        shutdowns: Arc::default(),
        reads: Arc::default(),
    };
    let reads = Arc::clone(&proxy.reads);
    let url = proxy.serve().await;
    let subscriber = SlowSubscriber::default();
    let tree = Tree::builder().start().await.unwrap();
    let options = fast_options(&tunnel).read_batch_size(10);
    tree.tunnel(options, target(&url))
        .run_subscriber(subscriber.clone())
        .start()
        .await
        .unwrap();
    wait_until("all 1,000 records handled", || {
        subscriber.handled.lock().unwrap().get(&0) == Some(&1_000)
    })
    .await;
    let calls = reads.load(Ordering::SeqCst);
    assert!(calls <= 5, "{calls} ReadRecords calls for 100 batches");
    tree.shutdown(Duration::from_secs(60)).await.unwrap();
    server.stop().await;
}
