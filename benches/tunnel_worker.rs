//! The tunnel worker end to end, side by side with a raw tonic baseline and the service's own reads, plus
//! hand-over and failover times, in one run.
//!
//! `cargo bench --bench tunnel_worker` prints three tables, medians over `RUNS` runs (every side once per run,
//! the worker's right after the baseline's; 1 s of rest between runs); the goals also as the median of each
//! run's own ratio:
//! - Throughput: 4 channels of 100,000 pre-appended 200-byte records (batches of 1,000), drained by:
//!   - raw tonic, same service (the baseline of the goal): a plain generated client reads arbor's tunnel
//!     service, one server stream per channel from 0 to the end in messages of 1,000 records, 4 concurrent
//!     streams on one HTTP/2 connection, and only counts. The same service, store, records and batch size as
//!     the worker's, with none of its machinery: no per-batch call, no checkpoint, no actor, no subscriber;
//!   - raw tonic, from a `Vec`: the same proto messages (the same records: keys, values, append times, 1,000
//!     per message) served by a bare tonic server from memory: tonic's own ceiling, no store and no fencing;
//!   - the service read directly in the worker's call pattern (one ReadRecords per 1,000 records, with and
//!     without a Checkpoint per batch, no read-ahead), which separates the service's cost from the worker's;
//!   - a `TunnelWorker` whose subscriber only counts and acknowledges: from `start()` (connect, session,
//!     assignment and GetCheckpoint included) until every record was acknowledged (a `Notify`), with the
//!     default options (batches of 1,000, checkpoint every batch) and one subscriber for all channels, then a
//!     subscriber per channel (`SubscriberConcurrency::PerChannel`), then checkpointing every second, with
//!     batches of 1,000 and of 10,000. Checkpoints are reset to 0 between runs.
//!
//!   In memory, and durable (fjall) for the direct reads and the worker with batches of 1,000. Run 0 is a
//!   warm-up.
//! - Per channel: each channel's records over the time from the side's start until that channel's last
//!   record was counted (acknowledged, for a worker), the median over the 4 channels, for the raw streams and
//!   the worker with one subscriber or a subscriber per channel.
//! - Hand-over and failover, 8 channels, heartbeat 250 ms / timeout 1 s, channels idle or with records
//!   flowing (10,000 records/s), `TRIALS` trials: a worker owns all 8, a second one starts (at a different
//!   phase of the first one's heartbeats in each trial); the hand-over time runs from its `start()` until the
//!   first worker released 4 channels and the second was assigned 4 (`TunnelHandle` events; `info()` then
//!   checks 4/4). Then one of the two is killed (its actor, no graceful shutdown, again at a varied phase);
//!   the failover time runs from the kill until the survivor was assigned the 4 others (`info()` checks 8).
//!   Expected: a hand-over takes 1 to 2 heartbeat intervals. A killed worker's actor shuts its session down
//!   as it goes (its state's `Drop`), so a failover does not wait for the heartbeat timeout: it takes the
//!   Shutdown call plus at most 1 interval (the survivor is assigned the freed channels at its next
//!   heartbeat). Only a worker whose process dies, or is frozen, leaves its session to the timeout.
//!
//! Everything runs on 127.0.0.1 in one process; clients, workers and servers share tokio's multi-threaded
//! runtime. Every wait is bounded (`LIMIT`).
//!
//! `TUNNEL_WORKER_BENCH_PROFILE=N` runs only the worker with the defaults (memory), N times, for a profiler
//! (`perf record -g` on the bench binary).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arbor::connection::{ConnectionConfig, ConnectionHandle};
use arbor::registry::Registry;
use arbor::supervisor::BoxError;
use arbor::tunnel::{
    Batch, CheckpointPolicy, Subscriber, SubscriberConcurrency, TunnelEvent, TunnelHandle, TunnelOptions,
    TunnelWorker,
};
use arbor::tunnel_service::{ServerOptions, StoreOptions, TunnelServer, TunnelStore};
use arbor_proto::tunnel::domain::ChannelType;
use arbor_proto::tunnel::v1;
use arbor_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use arbor_proto::tunnel::v1::tunnel_service_server::{TunnelService, TunnelServiceServer};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, Notify};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

const RECORD_BYTES: usize = 200;
const BATCH: usize = 1_000;
const CHANNELS: u32 = 4;
const RECORDS_PER_CHANNEL: usize = 100_000;
const TOTAL: usize = CHANNELS as usize * RECORDS_PER_CHANNEL;
const RUNS: usize = 5;
/// Hand-over and failover: channels, trials (alternately idle and flowing), heartbeat settings.
const SHARED_CHANNELS: u32 = 8;
const TRIALS: usize = 10;
const HEARTBEAT: Duration = Duration::from_millis(250);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
/// A pause between runs, so that one run's leftovers (the durable store's background work) do not fall on
/// the next one's first side.
const SETTLE: Duration = Duration::from_secs(1);
/// The bound of every wait.
const LIMIT: Duration = Duration::from_secs(60);

type Client = TunnelServiceClient<Channel>;
type ReadStream = Pin<Box<dyn Stream<Item = Result<v1::ReadRecordsResponse, Status>> + Send>>;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key-{}", i % 64))
}

fn payload(i: usize) -> Bytes {
    let mut v = format!("record-{i}-").into_bytes();
    v.resize(RECORD_BYTES, b'.');
    Bytes::from(v)
}

/// The baseline: the same service trait, answering ReadRecords from prebuilt messages; nothing else.
struct RawTonic {
    messages: Arc<Vec<v1::ReadRecordsResponse>>,
}

macro_rules! raw_tonic_service {
    ($($rpc:ident($request:ident) -> $response:ident;)*) => {
        #[tonic::async_trait]
        impl TunnelService for RawTonic {
            type ReadRecordsStream = ReadStream;

            async fn read_records(
                &self,
                _: Request<v1::ReadRecordsRequest>,
            ) -> Result<Response<ReadStream>, Status> {
                let messages = Arc::clone(&self.messages);
                let stream = futures::stream::iter(0..messages.len()).map(move |i| Ok(messages[i].clone()));
                Ok(Response::new(Box::pin(stream)))
            }

            $(async fn $rpc(&self, _: Request<v1::$request>) -> Result<Response<v1::$response>, Status> {
                Err(Status::unimplemented("baseline"))
            })*
        }
    };
}

raw_tonic_service! {
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

async fn start_raw() -> String {
    // The records the service holds: the keys and values `append` writes, an append time of now.
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let messages: Vec<v1::ReadRecordsResponse> = (0..RECORDS_PER_CHANNEL / BATCH)
        .map(|m| v1::ReadRecordsResponse {
            records: (0..BATCH)
                .map(|i| v1::Record {
                    sequence_number: (m * BATCH + i) as u64,
                    append_time_unix_ms: now.as_millis() as u64,
                    key: key(m * BATCH + i),
                    value: payload(m * BATCH + i),
                })
                .collect(),
            next_sequence_number: ((m + 1) * BATCH) as u64,
            finished: false,
        })
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TunnelServiceServer::new(RawTonic {
        messages: Arc::new(messages),
    });
    tokio::spawn(
        Server::builder().add_service(service).serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        ),
    );
    format!("http://{addr}")
}

async fn connect(url: &str) -> Client {
    let endpoint = Endpoint::from_shared(url.to_string()).unwrap();
    let channel = endpoint.connect().await.unwrap();
    TunnelServiceClient::new(channel).max_decoding_message_size(64 << 20)
}

/// An arbor connection, as a worker takes it.
async fn connection(url: &str) -> ConnectionHandle {
    let target = format!("{}?disableTls=true", url.replace("http://", "grpc://"));
    ConnectionHandle::start(ConnectionConfig::parse(&target).unwrap())
        .await
        .expect("connection starts")
}

struct Service {
    store: Arc<TunnelStore>,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn start_service(durable: bool) -> Service {
    let dir = durable.then(|| tempfile::tempdir().unwrap());
    let options = match &dir {
        Some(d) => StoreOptions::durable(d.path()),
        None => StoreOptions::in_memory(),
    };
    let store = TunnelStore::open(options).unwrap();
    let server = TunnelServer::start(
        store.clone(),
        ServerOptions::default().listen("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let url = format!("http://{}", server.local_addr());
    std::mem::forget(server); // serves until the process ends
    Service {
        store,
        url,
        _dir: dir,
    }
}

async fn create(client: &mut Client, name: &str, channels: u32) -> String {
    let channels = (0..channels)
        .map(|_| v1::ChannelSpec {
            channel_type: ChannelType::Stream.into(),
            parent_channel_id: None,
        })
        .collect();
    let request = v1::CreateTunnelRequest {
        tunnel_name: name.into(),
        channels,
        retention: None,
    };
    let reply = client.create_tunnel(request).await.unwrap().into_inner();
    reply.tunnel.unwrap().tunnel_id
}

/// Records `range` (keys spread over 64), to `channel` or routed by key.
fn append(tunnel: &str, channel_id: Option<u32>, range: std::ops::Range<usize>) -> v1::AppendRequest {
    let records = range
        .map(|i| v1::AppendRecord {
            key: key(i),
            value: payload(i),
        })
        .collect();
    v1::AppendRequest {
        tunnel_id: tunnel.into(),
        tunnel_name: String::new(),
        channel_id,
        records,
        ..Default::default()
    }
}

/// A tunnel of `CHANNELS` channels with `RECORDS_PER_CHANNEL` records each.
async fn filled(client: &mut Client, name: &str) -> String {
    let tunnel = create(client, name, CHANNELS).await;
    for channel in 0..CHANNELS {
        for b in 0..RECORDS_PER_CHANNEL / BATCH {
            let request = append(&tunnel, Some(channel), b * BATCH..(b + 1) * BATCH);
            client.append(request).await.unwrap();
        }
    }
    tunnel
}

fn checkpoint(
    tunnel: &str,
    (consumer, token): (&str, &str),
    (channel_id, channel_version): (u32, i64),
    at: u64,
) -> v1::CheckpointRequest {
    v1::CheckpointRequest {
        tunnel_id: tunnel.into(),
        client_id: consumer.into(),
        session_token: token.into(),
        channel_id,
        channel_version,
        sequence_number: at,
    }
}

/// A consumer session of our own that owns every channel of `tunnel`: its (client id, session token) and
/// (channel, version)s.
async fn take_all(client: &mut Client, tunnel: &str) -> ((String, String), Vec<(u32, i64)>) {
    let request = v1::ConnectTunnelRequest {
        tunnel_id: tunnel.into(),
        client_tag: "bench".into(),
        heartbeat_timeout_ms: 600_000,
    };
    let reply = client.connect_tunnel(request).await.unwrap().into_inner();
    let (consumer, token) = (reply.client_id, reply.session_token);
    let deadline = Instant::now() + LIMIT;
    loop {
        let request = v1::HeartbeatRequest {
            tunnel_id: tunnel.into(),
            client_id: consumer.clone(),
            session_token: token.clone(),
            channels: vec![],
        };
        let owned = client.heartbeat(request).await.unwrap().into_inner().channels;
        if owned.len() == CHANNELS as usize {
            let versions = owned.iter().map(|c| (c.channel_id, c.version)).collect();
            return ((consumer, token), versions);
        }
        assert!(Instant::now() < deadline, "never got every channel of {tunnel}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Moves every checkpoint of `tunnel` back to 0 (so the next worker reads it all again).
async fn reset(client: &mut Client, tunnel: &str) {
    let (consumer, versions) = take_all(client, tunnel).await;
    for lease in versions {
        client
            .checkpoint(checkpoint(tunnel, (&consumer.0, &consumer.1), lease, 0))
            .await
            .unwrap();
    }
    let (tunnel_id, (client_id, session_token)) = (tunnel.into(), consumer);
    client
        .shutdown(v1::ShutdownRequest {
            tunnel_id,
            client_id,
            session_token,
        })
        .await
        .unwrap();
}

/// How a direct reader calls ReadRecords.
#[derive(Clone, Copy)]
enum Read {
    /// One stream per channel, from 0 to the end.
    Stream,
    /// One call per `BATCH` records (the worker's reads), then a Checkpoint when `checkpoint`.
    PerBatch { checkpoint: bool },
}

/// A side's rate: records/s over all channels, and the median channel's records/s (each channel's records
/// over the time from the start until its last record).
#[derive(Clone, Copy)]
struct Rate {
    total: f64,
    per_channel: f64,
}

fn per_channel_median(started: Instant, ends: &[Instant]) -> f64 {
    let rates = ends
        .iter()
        .map(|end| RECORDS_PER_CHANNEL as f64 / end.duration_since(started).as_secs_f64())
        .collect();
    median(rates)
}

/// Drains every channel of `versions` concurrently (one task each, one shared HTTP/2 connection).
async fn drain(
    client: &Client,
    tunnel: &str,
    (consumer, token): (&str, &str),
    versions: &[(u32, i64)],
    read: Read,
) -> Rate {
    let started = Instant::now();
    let tasks: Vec<_> = versions
        .iter()
        .map(|&(channel_id, channel_version)| {
            let (mut client, tunnel) = (client.clone(), tunnel.to_string());
            let (consumer, token) = (consumer.to_string(), token.to_string());
            tokio::spawn(async move {
                let mut from = 0;
                while from < RECORDS_PER_CHANNEL as u64 {
                    let max_records = match read {
                        Read::Stream => 0,
                        Read::PerBatch { .. } => BATCH as u64,
                    };
                    let request = v1::ReadRecordsRequest {
                        tunnel_id: tunnel.clone(),
                        client_id: consumer.clone(),
                        session_token: token.clone(),
                        channel_id,
                        channel_version,
                        from_sequence_number: from,
                        max_records_per_message: BATCH as u32,
                        max_records,
                        max_wait_ms: 0,
                    };
                    let mut stream = client.read_records(request).await.unwrap().into_inner();
                    while let Some(m) = stream.message().await.unwrap() {
                        from += m.records.len() as u64;
                    }
                    if let Read::PerBatch { checkpoint: true } = read {
                        let request =
                            checkpoint(&tunnel, (&consumer, &token), (channel_id, channel_version), from);
                        client.checkpoint(request).await.unwrap();
                    }
                }
                (from, Instant::now())
            })
        })
        .collect();
    let (mut records, mut ends) = (0, Vec::new());
    for task in tasks {
        let (read, end) = task.await.unwrap();
        records += read;
        ends.push(end);
    }
    assert_eq!(records as usize, versions.len() * RECORDS_PER_CHANNEL);
    Rate {
        total: records as f64 / started.elapsed().as_secs_f64(),
        per_channel: per_channel_median(started, &ends),
    }
}

/// A subscriber that counts records and acknowledges every batch; `done` is notified at `target`, and each
/// of the first `CHANNELS` channels notes when its `RECORDS_PER_CHANNEL`th record came.
#[derive(Clone)]
struct Counter {
    records: Arc<AtomicUsize>,
    target: usize,
    done: Arc<Notify>,
    channels: Arc<Vec<(AtomicUsize, OnceLock<Instant>)>>,
}

impl Counter {
    fn new(target: usize) -> Self {
        let (records, done) = (Arc::default(), Arc::default());
        let channels = Arc::new((0..CHANNELS).map(|_| Default::default()).collect());
        Counter {
            records,
            target,
            done,
            channels,
        }
    }

    /// When each channel's last record came.
    fn ends(&self) -> Vec<Instant> {
        self.channels
            .iter()
            .map(|(_, end)| *end.get().expect("channel finished"))
            .collect()
    }
}

impl Subscriber for Counter {
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let n = batch.records.len();
        if let Some((records, end)) = self.channels.get(batch.channel_id as usize) {
            if records.fetch_add(n, Ordering::Relaxed) + n >= RECORDS_PER_CHANNEL {
                end.get_or_init(Instant::now);
            }
        }
        if self.records.fetch_add(n, Ordering::Relaxed) + n >= self.target {
            self.done.notify_one();
        }
        Ok(())
    }
}

/// A worker's read batch size, checkpoint policy and subscriber concurrency.
type Tuning = (u32, CheckpointPolicy, SubscriberConcurrency);
const DEFAULTS: Tuning = (
    BATCH as u32,
    CheckpointPolicy::EveryBatch,
    SubscriberConcurrency::One,
);
const PER_CHANNEL: Tuning = (
    BATCH as u32,
    CheckpointPolicy::EveryBatch,
    SubscriberConcurrency::PerChannel,
);
const EVERY_SECOND: CheckpointPolicy = CheckpointPolicy::Every(Duration::from_secs(1));

/// A worker drains the tunnel (from its checkpoints at 0); records/s from its start to the last ack.
async fn worker_rate(
    connection: &ConnectionHandle,
    client: &mut Client,
    tunnel: &str,
    tuning: Tuning,
) -> Rate {
    let (batch, checkpoint, concurrency) = tuning;
    let options = TunnelOptions::new(tunnel).client_tag("throughput");
    let options = options.read_batch_size(batch).checkpoint(checkpoint);
    let counter = Counter::new(TOTAL);
    let started = Instant::now();
    let worker = TunnelWorker::builder(options)
        .connection(connection.clone())
        .run_subscriber_with(counter.clone(), concurrency)
        .registry(Registry::new("throughput"))
        .start()
        .await
        .expect("worker starts");
    tokio::time::timeout(LIMIT, counter.done.notified())
        .await
        .expect("the worker acknowledged every record");
    let rate = Rate {
        total: TOTAL as f64 / started.elapsed().as_secs_f64(),
        per_channel: per_channel_median(started, &counter.ends()),
    };
    worker.shutdown(Duration::from_secs(30)).await.unwrap();
    reset(client, tunnel).await;
    rate
}

/// Waits until `n` events matching `pick` came on `events`.
async fn count_events(
    mut events: broadcast::Receiver<TunnelEvent>,
    n: usize,
    pick: fn(&TunnelEvent) -> bool,
) {
    let counted = async {
        let mut seen = 0;
        while seen < n {
            match events.recv().await {
                Ok(event) => seen += usize::from(pick(&event)),
                Err(err) => panic!("worker events: {err}"),
            }
        }
    };
    tokio::time::timeout(LIMIT, counted).await.expect("events");
}

fn assigned(event: &TunnelEvent) -> bool {
    matches!(event, TunnelEvent::ChannelAssigned { .. })
}

fn released(event: &TunnelEvent) -> bool {
    matches!(event, TunnelEvent::ChannelReleased { .. })
}

/// A worker of the hand-over tunnel (its own connection and registry: one process' worth).
async fn shared_worker(connection: ConnectionHandle, tunnel: &str, tag: &str) -> TunnelHandle {
    let options = TunnelOptions::new(tunnel)
        .client_tag(tag)
        .min_heartbeat_interval(HEARTBEAT)
        .heartbeat(HEARTBEAT, HEARTBEAT_TIMEOUT);
    TunnelWorker::builder(options)
        .connection(connection)
        .run_subscriber(Counter::new(usize::MAX))
        .registry(Registry::new(tag))
        .start()
        .await
        .expect("worker starts")
}

/// Appends 100 records every 10 ms, routed by key over every channel, until aborted.
async fn produce(mut client: Client, tunnel: String) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for i in 0usize.. {
        tick.tick().await;
        client
            .append(append(&tunnel, None, i * 100..(i + 1) * 100))
            .await
            .unwrap();
    }
}

/// One hand-over then one failover on `tunnel`; returns both times.
async fn trial(url: &str, client: &Client, tunnel: &str, n: usize, flowing: bool) -> (Duration, Duration) {
    let producer = flowing.then(|| tokio::spawn(produce(client.clone(), tunnel.to_string())));
    let (first, second) = (connection(url).await, connection(url).await);
    let a = shared_worker(first, tunnel, &format!("a{n}")).await;
    let deadline = Instant::now() + LIMIT;
    while a.channels().len() != SHARED_CHANNELS as usize {
        assert!(Instant::now() < deadline, "the first worker got every channel");
        tokio::time::sleep(Duration::from_millis(5)).await; // setup, not timed
    }
    // The second worker starts at another phase of the first one's heartbeats in each trial (untimed).
    tokio::time::sleep(HEARTBEAT * n as u32 / TRIALS as u32).await;
    // Hand-over: from the second worker's start to 4 channels released by the first and assigned to it.
    let a_events = a.events();
    let started = Instant::now();
    let b = shared_worker(second, tunnel, &format!("b{n}")).await;
    let half = SHARED_CHANNELS as usize / 2;
    tokio::join!(
        count_events(a_events, half, released),
        count_events(b.events(), half, assigned)
    );
    let handover = started.elapsed();
    let spread = (a.info().await.unwrap().channels, b.info().await.unwrap().channels);
    assert_eq!(spread, (half, half), "balanced after the hand-over");
    // Failover: kill one outright (no Shutdown: the service waits for its heartbeat timeout), at another
    // phase of their heartbeats in each trial (the wait is untimed).
    let (victim, survivor) = if (n / 2).is_multiple_of(2) { (a, b) } else { (b, a) };
    tokio::time::sleep(HEARTBEAT * ((3 * n + 1) % TRIALS) as u32 / TRIALS as u32).await;
    let survivor_events = survivor.events();
    let killed = Instant::now();
    victim.current().unwrap().kill();
    count_events(survivor_events, half, assigned).await;
    let failover = killed.elapsed();
    assert_eq!(survivor.info().await.unwrap().channels, SHARED_CHANNELS as usize);
    let _ = victim.wait().await;
    survivor.shutdown(Duration::from_secs(30)).await.unwrap();
    if let Some(producer) = producer {
        producer.abort();
    }
    (handover, failover)
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn timing_row(what: &str, spread: &str, times: &[Duration], expected: &str) {
    let (min, max) = (ms(*times.iter().min().unwrap()), ms(*times.iter().max().unwrap()));
    let median = ms(median(times.to_vec()));
    println!("| {what} | {spread} | {median} | {min} | {max} | {expected} |");
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// One store's sides: a tunnel read directly (by a session of ours) and a tunnel for workers.
struct Sides {
    client: Client,
    direct: (String, (String, String), Vec<(u32, i64)>),
    worker_tunnel: String,
    connection: ConnectionHandle,
}

async fn sides(service: &Service) -> Sides {
    let mut client = connect(&service.url).await;
    let direct = filled(&mut client, "direct").await;
    let (consumer, versions) = take_all(&mut client, &direct).await;
    let worker_tunnel = filled(&mut client, "worker").await;
    Sides {
        client,
        direct: (direct, consumer, versions),
        worker_tunnel,
        connection: connection(&service.url).await,
    }
}

impl Sides {
    async fn direct(&self, read: Read) -> Rate {
        let (tunnel, consumer, versions) = &self.direct;
        drain(&self.client, tunnel, (&consumer.0, &consumer.1), versions, read).await
    }

    async fn worker(&mut self, tuning: Tuning) -> Rate {
        worker_rate(&self.connection, &mut self.client, &self.worker_tunnel, tuning).await
    }
}

#[tokio::main]
async fn main() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let raw_url = start_raw().await;
    let raw_client = connect(&raw_url).await;
    let raw_versions: Vec<(u32, i64)> = (0..CHANNELS).map(|c| (c, 0)).collect();
    let (memory, durable) = (start_service(false).await, start_service(true).await);
    let mut mem = sides(&memory).await;
    if let Some(n) = std::env::var("TUNNEL_WORKER_BENCH_PROFILE")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        for _ in 0..n {
            let rate = mem.worker(DEFAULTS).await;
            println!("worker, memory, defaults: {:.0}k/s", rate.total / 1e3);
        }
        return;
    }
    let mut dur = sides(&durable).await;
    println!(
        "tunnel worker bench: {CHANNELS} channels x {RECORDS_PER_CHANNEL} records of {RECORD_BYTES} B \
         (appended in batches of {BATCH}), medians of {RUNS} runs, loopback, {cpus} CPUs"
    );

    const LABELS: [&str; 12] = [
        "raw tonic, same service (memory): 1 stream per channel, messages of 1,000",
        "TunnelWorker, memory: defaults (batch 1,000, checkpoint every batch, one subscriber)",
        "TunnelWorker, memory: defaults, a subscriber per channel",
        "raw tonic from a Vec: 4 streams of the same messages, no store",
        "direct ReadRecords, memory: 1 call per 1,000",
        "direct ReadRecords + Checkpoint, memory: per 1,000",
        "TunnelWorker, memory: batch 1,000, checkpoint every 1 s",
        "TunnelWorker, memory: batch 10,000, checkpoint every 1 s",
        "raw tonic, same service (durable): 1 stream per channel",
        "direct ReadRecords + Checkpoint, durable: per 1,000",
        "TunnelWorker, durable: defaults",
        "TunnelWorker, durable: batch 1,000, checkpoint every 1 s",
    ];
    // The worker's sides come right after the baseline, so that each run compares sides measured moments apart.
    const WORKER: usize = 1;
    const WORKER_PER_CHANNEL: usize = 2;
    const VEC: usize = 3;
    const DURABLE: usize = 8; // the first durable row
    let mut rates: Vec<Vec<Rate>> = vec![Vec::new(); LABELS.len()];
    for run in 0..=RUNS {
        let (stream, per_batch) = (Read::Stream, Read::PerBatch { checkpoint: false });
        let with_checkpoint = Read::PerBatch { checkpoint: true };
        let sample = [
            mem.direct(stream).await,
            mem.worker(DEFAULTS).await,
            mem.worker(PER_CHANNEL).await,
            drain(&raw_client, "", ("", ""), &raw_versions, stream).await,
            mem.direct(per_batch).await,
            mem.direct(with_checkpoint).await,
            mem.worker((BATCH as u32, EVERY_SECOND, SubscriberConcurrency::One))
                .await,
            mem.worker((10 * BATCH as u32, EVERY_SECOND, SubscriberConcurrency::One))
                .await,
            dur.direct(stream).await,
            dur.direct(with_checkpoint).await,
            dur.worker(DEFAULTS).await,
            dur.worker((BATCH as u32, EVERY_SECOND, SubscriberConcurrency::One))
                .await,
        ];
        if run > 0 {
            // run 0 warms every side up
            for (side, rate) in rates.iter_mut().zip(sample) {
                side.push(rate);
            }
        }
        // The durable store's background work after the last sides must not fall on the next run's baseline.
        tokio::time::sleep(SETTLE).await;
    }
    let totals: Vec<Vec<f64>> = rates
        .iter()
        .map(|r| r.iter().map(|r| r.total).collect())
        .collect();
    let medians: Vec<f64> = totals.iter().cloned().map(median).collect();
    let (mem_raw, vec_raw, dur_raw) = (medians[0], medians[VEC], medians[DURABLE]);
    println!();
    println!(
        "| throughput | records/s, median | min..max | / raw tonic, same service | / raw tonic from a Vec |"
    );
    println!("|---|---|---|---|---|");
    for (i, (label, rate)) in LABELS.iter().zip(&medians).enumerate() {
        let min = totals[i].iter().copied().fold(f64::INFINITY, f64::min) / 1e3;
        let max = totals[i].iter().copied().fold(0.0, f64::max) / 1e3;
        let same_service = if i >= DURABLE { dur_raw } else { mem_raw };
        let vs_service = if i == VEC {
            "-".to_string()
        } else {
            format!("{:.2}x", rate / same_service)
        };
        let (rate_k, vs_vec) = (rate / 1e3, rate / vec_raw);
        println!("| {label} | {rate_k:.0}k/s | {min:.0}k..{max:.0}k | {vs_service} | {vs_vec:.2}x |");
    }
    let per_channel = |i: usize| median(rates[i].iter().map(|r| r.per_channel).collect());
    println!();
    println!("| per channel (4 at once) | records/s of the median channel, median of runs | / raw tonic, same service |");
    println!("|---|---|---|");
    for i in [0, VEC, WORKER, WORKER_PER_CHANNEL] {
        let rate = per_channel(i);
        println!(
            "| {} | {:.0}k/s | {:.2}x |",
            LABELS[i],
            rate / 1e3,
            rate / per_channel(0)
        );
    }
    // The goals, also as the median of each run's own ratio (the worker against the baseline of its run, a few
    // hundred milliseconds apart), which a machine's changing load moves less.
    let paired = |i: usize, pick: fn(&Rate) -> f64| {
        median(
            rates[i]
                .iter()
                .zip(&rates[0])
                .map(|(w, b)| pick(w) / pick(b))
                .collect(),
        )
    };
    let (one, each) = (
        medians[WORKER] / mem_raw,
        per_channel(WORKER_PER_CHANNEL) / per_channel(0),
    );
    let (one_paired, each_paired) = (
        paired(WORKER, |r| r.total),
        paired(WORKER_PER_CHANNEL, |r| r.per_channel),
    );
    let verdict = |ratio: f64| if ratio >= 0.8 { "met" } else { "NOT met" };
    println!();
    println!(
        "goal: worker (memory, defaults, one subscriber) >= 0.8x raw tonic, same service: {one:.2}x \
         (per run: {one_paired:.2}x), {}",
        verdict(one.min(one_paired))
    );
    println!(
        "goal: worker (memory, defaults, a subscriber per channel) >= 0.8x per channel: {each:.2}x \
         (per run: {each_paired:.2}x), {}",
        verdict(each.min(each_paired))
    );

    // Hand-over and failover, on a tunnel of its own.
    let shared = start_service(false).await;
    let mut client = connect(&shared.url).await;
    let tunnel = create(&mut client, "shared", SHARED_CHANNELS).await;
    let (mut handover, mut failover) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for n in 0..TRIALS {
        let flowing = n % 2 == 1;
        let (h, f) = trial(&shared.url, &client, &tunnel, n, flowing).await;
        handover[usize::from(flowing)].push(h);
        failover[usize::from(flowing)].push(f);
    }
    let half = SHARED_CHANNELS / 2;
    println!();
    println!(
        "hand-over and failover: {SHARED_CHANNELS} channels, heartbeat interval {} / timeout {}, \
         {} trials each (idle channels, or 10,000 records/s flowing)",
        ms(HEARTBEAT),
        ms(HEARTBEAT_TIMEOUT),
        TRIALS / 2
    );
    println!();
    println!("| measure | channels | median | min | max | expected |");
    println!("|---|---|---|---|---|---|");
    let expect_handover = format!(
        "1 to 2 heartbeat intervals ({}..{})",
        ms(HEARTBEAT),
        ms(2 * HEARTBEAT)
    );
    // The killed actor's session is shut down as it goes, so the heartbeat timeout plays no part here.
    let expect_failover = format!(
        "the victim's Shutdown call + at most 1 interval ({}), by heartbeat phases",
        ms(HEARTBEAT)
    );
    for (i, mode) in ["idle", "flowing"].iter().enumerate() {
        let handover_spread = format!("{SHARED_CHANNELS}/0 -> {half}/{half}");
        let failover_spread = format!("{half}/{half} -> {SHARED_CHANNELS}");
        timing_row(
            &format!("hand-over: a 2nd worker joins, {mode}"),
            &handover_spread,
            &handover[i],
            &expect_handover,
        );
        timing_row(
            &format!("failover: 1 of 2 killed, {mode}"),
            &failover_spread,
            &failover[i],
            &expect_failover,
        );
    }
    durable.store.close().unwrap();
    memory.store.close().unwrap();
    shared.store.close().unwrap();
}
