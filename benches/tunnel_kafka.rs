//! Kafka as a tunnel source, side by side with rdkafka's own consumer and with arbor's reference service, in
//! one run (feature `kafka`; the broker is a real one-node Apache Kafka started by `scripts/kafka.sh`, which
//! needs Java 17 and Maven).
//!
//! `cargo bench --features kafka --bench tunnel_kafka` prints medians over `RUNS` runs (sides alternate):
//! - **Read through arbor vs rdkafka**: `PARTITIONS` partitions of `RECORDS_PER_PARTITION` pre-produced
//!   200-byte records, drained from offset 0 by
//!   - rdkafka's `StreamConsumer` in a fresh group (auto commit off), a loop that only counts: the baseline,
//!     once with a synchronous commit after every 1,000 records and once without commits;
//!   - a `TunnelWorker` over `KafkaSource` in a fresh group, its subscriber only counting and acknowledging,
//!     with a commit after every batch of 1,000 (the default checkpoint policy; against the committing
//!     consumer) and with one every second (against the consumer that never commits).
//!
//!   Both sides are timed from the consumer's creation to the last record, so both include joining the group
//!   (the broker runs with `group.initial.rebalance.delay.ms=0`).
//! - **The reference service vs the broker**, the same records (`PARTITIONS` producers, one per channel /
//!   partition, batches of `BATCH` records, one batch in flight per producer):
//!   - append: arbor's durable service (`TunnelClient::append_to_channel`; the store fsyncs every write group
//!     before it acknowledges) vs an idempotent rdkafka producer with `acks=all` (one replica; Kafka does not
//!     fsync before acknowledging by default, it leaves flushing to the OS and relies on replication);
//!   - read: the same `TunnelWorker` and counting subscriber over each.
//!
//! Everything runs on 127.0.0.1; the broker is a separate JVM process, the rest shares one tokio runtime.

#[path = "../tests/tunnel_kafka_common/mod.rs"]
mod kafka_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor::connection::{ConnectionConfig, ConnectionHandle};
use arbor::registry::Registry;
use arbor::supervisor::BoxError;
use arbor::tunnel::kafka::rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use arbor::tunnel::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use arbor::tunnel::kafka::KafkaSource;
use arbor::tunnel::{Batch, CheckpointPolicy, Subscriber, TunnelHandle, TunnelOptions, TunnelWorker};
use arbor::tunnel_service::client::{ChannelSpec, TunnelAddress, TunnelClient};
use arbor::tunnel_service::{ServerOptions, StoreOptions, TunnelServer, TunnelStore};
use bytes::Bytes;
use futures::future::try_join_all;
use tokio::sync::Notify;

use kafka_common::Broker;

const RECORD_BYTES: usize = 200;
const BATCH: usize = 1_000;
const PARTITIONS: usize = 4;
const RECORDS_PER_PARTITION: usize = 50_000;
const TOTAL: usize = PARTITIONS * RECORDS_PER_PARTITION;
const RUNS: usize = 3;
/// The bound of every wait.
const LIMIT: Duration = Duration::from_secs(300);

fn payload(i: usize) -> Bytes {
    let mut v = format!("record-{i}-").into_bytes();
    v.resize(RECORD_BYTES, b'.');
    Bytes::from(v)
}

/// The keys of partition `p`'s records (all of a partition's records share one, as a keyed producer would).
fn key(p: usize) -> String {
    format!("key-{p}")
}

/// A subscriber that counts records and acknowledges every batch; `done` is notified at `target`.
#[derive(Clone)]
struct Counter {
    records: Arc<AtomicUsize>,
    target: usize,
    done: Arc<Notify>,
}

impl Counter {
    fn new(target: usize) -> Self {
        Counter {
            records: Arc::default(),
            target,
            done: Arc::default(),
        }
    }
}

impl Subscriber for Counter {
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let n = batch.records.len();
        if self.records.fetch_add(n, Ordering::Relaxed) + n >= self.target {
            self.done.notify_one();
        }
        Ok(())
    }
}

/// Appends every record to the broker: one producer task per partition, `BATCH` records in flight, then the
/// next batch. Returns records/s.
async fn kafka_append(producer: &FutureProducer, topic: &str) -> f64 {
    let started = Instant::now();
    let partitions = (0..PARTITIONS).map(|p| async move {
        let key = key(p);
        for b in 0..RECORDS_PER_PARTITION / BATCH {
            let values: Vec<Bytes> = (b * BATCH..(b + 1) * BATCH).map(payload).collect();
            let sends = values.iter().map(|value| {
                let record = FutureRecord::to(topic)
                    .partition(p as i32)
                    .key(&key)
                    .payload(value.as_ref());
                async move {
                    producer
                        .send(record, Duration::from_secs(60))
                        .await
                        .map_err(|(e, _)| e)
                }
            });
            try_join_all(sends).await?;
        }
        Ok::<_, arbor::tunnel::kafka::rdkafka::error::KafkaError>(())
    });
    try_join_all(partitions)
        .await
        .expect("the broker took every record");
    TOTAL as f64 / started.elapsed().as_secs_f64()
}

/// Appends every record to the reference service: one client per channel, one batch of `BATCH` records per
/// call. Returns records/s.
async fn service_append(server: &str, tunnel: &TunnelAddress) -> f64 {
    let started = Instant::now();
    let channels = (0..PARTITIONS).map(|c| async move {
        let mut client = TunnelClient::connect(server, None, None).await?;
        for b in 0..RECORDS_PER_PARTITION / BATCH {
            let values = (b * BATCH..(b + 1) * BATCH).map(payload);
            client.append_to_channel(tunnel, c as u32, values).await?;
        }
        Ok::<_, arbor::tunnel_service::client::TunnelClientError>(())
    });
    try_join_all(channels)
        .await
        .expect("the service took every record");
    TOTAL as f64 / started.elapsed().as_secs_f64()
}

/// rdkafka's `StreamConsumer` drains `topic` in group `group`, committing synchronously after every `BATCH`
/// records when `commit` (as the worker does after every batch by default). Returns records/s.
async fn stream_consumer_rate(broker: &Broker, topic: &str, group: &str, commit: bool) -> f64 {
    let started = Instant::now();
    let consumer: StreamConsumer = broker
        .config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("stream consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut seen = 0;
    tokio::time::timeout(LIMIT, async {
        while seen < TOTAL {
            consumer.recv().await.expect("a message");
            seen += 1;
            if commit && seen % BATCH == 0 {
                consumer.commit_consumer_state(CommitMode::Sync).expect("commit");
            }
        }
    })
    .await
    .expect("the stream consumer read every record");
    TOTAL as f64 / started.elapsed().as_secs_f64()
}

/// Starts a worker (the Kafka source when `kafka` is given, else the service's connection), waits until its
/// subscriber acknowledged every record, and stops it. Returns records/s from the start to the last ack.
async fn worker_rate(
    options: TunnelOptions,
    kafka: Option<(&Broker, &str)>,
    connection: Option<&ConnectionHandle>,
) -> f64 {
    let counter = Counter::new(TOTAL);
    let started = Instant::now();
    let builder = TunnelWorker::builder(options.clone())
        .run_subscriber(counter.clone())
        .registry(Registry::new("bench"));
    let builder = match (kafka, connection) {
        (Some((broker, group)), _) => {
            let topic = options.tunnel_id.clone();
            let source = KafkaSource::new(broker.options(&topic, group), &options).expect("kafka options");
            builder.source(Arc::new(source))
        }
        (None, Some(connection)) => builder.connection(connection.clone()),
        (None, None) => unreachable!("a source or a connection"),
    };
    let worker: TunnelHandle = builder.start().await.expect("worker starts");
    tokio::time::timeout(LIMIT, counter.done.notified())
        .await
        .expect("the worker acknowledged every record");
    let rate = TOTAL as f64 / started.elapsed().as_secs_f64();
    worker
        .shutdown(Duration::from_secs(60))
        .await
        .expect("the worker stops");
    rate
}

/// Worker options for tunnel (or topic) `name`: batches of `BATCH`, the given checkpoint policy.
fn worker_options(name: &str, checkpoint: CheckpointPolicy) -> TunnelOptions {
    TunnelOptions::new(name)
        .client_tag("bench")
        .read_batch_size(BATCH as u32)
        .checkpoint(checkpoint)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn row(what: &str, baseline: &str, base: f64, ours: &str, rate: f64) {
    println!(
        "{what:<34} {baseline:>16} {base:>12.0}/s   {ours:>22} {rate:>12.0}/s   {:>5.2}x",
        rate / base
    );
}

#[tokio::main]
async fn main() {
    let every_second = CheckpointPolicy::Every(Duration::from_secs(1));
    println!("starting a one-node Kafka broker (scripts/kafka.sh)...");
    let broker = Broker::start();
    let producer = broker.producer();

    let dir = tempfile::tempdir().expect("temp dir");
    let store = TunnelStore::open(StoreOptions::durable(dir.path())).expect("store");
    let server = TunnelServer::start(store, ServerOptions::default())
        .await
        .expect("service");
    let address = server.local_addr().to_string();
    let mut admin = TunnelClient::connect(&address, None, None).await.expect("client");
    let target = format!("grpc://{address}?disableTls=true");
    let connection = ConnectionHandle::start(ConnectionConfig::parse(&target).unwrap())
        .await
        .expect("connection");

    let mut rates: [Vec<f64>; 7] = Default::default();
    let [kafka_append_rates, service_append_rates, consumer, consumer_no_commit, on_kafka, on_kafka_every_second, on_service] =
        &mut rates;
    for run in 0..RUNS {
        // A topic and a tunnel of their own each run, filled with the same records.
        let topic = format!("bench-{run}");
        broker.create_topic(&topic, PARTITIONS as i32, &[]).await;
        let created = admin
            .create(&topic, &[ChannelSpec::stream(); PARTITIONS], None)
            .await
            .expect("tunnel created");
        let tunnel = TunnelAddress::Name(topic.clone());
        if run % 2 == 0 {
            kafka_append_rates.push(kafka_append(&producer, &topic).await);
            service_append_rates.push(service_append(&address, &tunnel).await);
        } else {
            service_append_rates.push(service_append(&address, &tunnel).await);
            kafka_append_rates.push(kafka_append(&producer, &topic).await);
        }

        let baseline = stream_consumer_rate(&broker, &topic, "plain-committing", true);
        let worker = worker_rate(
            worker_options(&topic, CheckpointPolicy::EveryBatch),
            Some((&broker, "arbor")),
            None,
        );
        if run % 2 == 0 {
            consumer.push(baseline.await);
            on_kafka.push(worker.await);
        } else {
            on_kafka.push(worker.await);
            consumer.push(baseline.await);
        }
        consumer_no_commit.push(stream_consumer_rate(&broker, &topic, "plain", false).await);
        on_kafka_every_second.push(
            worker_rate(
                worker_options(&topic, every_second),
                Some((&broker, "arbor-every-second")),
                None,
            )
            .await,
        );
        on_service.push(
            worker_rate(
                worker_options(&created.tunnel_id, CheckpointPolicy::EveryBatch),
                None,
                Some(&connection),
            )
            .await,
        );
    }
    let [kafka_appended, service_appended, consumer, consumer_no_commit, on_kafka, on_kafka_every_second, on_service] =
        rates.map(median);
    println!(
        "\n{TOTAL} records of {RECORD_BYTES} bytes in {PARTITIONS} partitions, medians of {RUNS} runs\n"
    );
    println!(
        "{:<34} {:>16} {:>14}   {:>22} {:>14}   ratio",
        "", "baseline", "", "arbor", ""
    );
    row(
        "read, commit every 1,000 records",
        "StreamConsumer",
        consumer,
        "worker on Kafka",
        on_kafka,
    );
    row(
        "read, commit every second / never",
        "StreamConsumer",
        consumer_no_commit,
        "worker on Kafka",
        on_kafka_every_second,
    );
    row(
        "append (4 producers, 1,000/batch)",
        "Kafka acks=all",
        kafka_appended,
        "arbor service (fsync)",
        service_appended,
    );
    row(
        "read through the same worker",
        "worker on Kafka",
        on_kafka,
        "worker on service",
        on_service,
    );
}
