//! The ledger test on Kafka: producers (rdkafka, acks=all, idempotent) append keyed records (each value is its
//! key's sequence number) to an 8-partition topic of a real broker, while three workers under a supervisor
//! consume it and the test, on a schedule, kills a channel actor, a subscriber, a worker (its supervisor starts
//! it again), and SIGKILLs the broker and starts it again on the same data directory.
//!
//! 100,000 records, produced over about 12 s; the broker is restarted once (a restart alone takes ~15 s on a
//! loaded 2-core machine), so the test takes under a minute.
//!
//! At the end: 0 lost (every acknowledged record delivered); per key, first deliveries in order; per partition,
//! every lease starts at or above every commit made before it (duplicates only after a partition's last
//! commit). Prints produced / delivered / duplicates / lost.
#![cfg(feature = "kafka")]

mod tunnel_kafka_common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor::registry::Registry;
use arbor::supervisor::{BoxError, DynamicSupervisor, DynamicSupervisorHandle};
use arbor::tunnel::kafka::rdkafka::producer::FutureRecord;
use arbor::tunnel::kafka::KafkaSource;
use arbor::tunnel::{
    Batch, CheckpointPolicy, Delivery, Subscriber, TunnelEntry, TunnelEvent, TunnelHandle, TunnelWorker,
};
use tunnel_kafka_common::*;

const RECORDS: u64 = 100_000;
const PRODUCERS: u64 = 4;
const KEYS_PER_PRODUCER: u64 = 8;
const CHUNK: u64 = 100;
const PARTITIONS: i32 = 8;
const WORKERS: usize = 3;
/// Production is paced over about this long, so that the faults land while records flow.
const PRODUCTION: Duration = Duration::from_secs(12);
const FAULT_EVERY: Duration = Duration::from_millis(1500);

fn key_name(key: u64) -> String {
    format!("p{}-k{}", key / KEYS_PER_PRODUCER, key % KEYS_PER_PRODUCER)
}

#[derive(Debug, Clone)]
enum Entry {
    Delivered {
        partition: u32,
        records: Vec<(u64, String, u64)>,
    },
    Assigned {
        partition: u32,
        position: u64,
    },
    Checkpointed {
        partition: u32,
        position: u64,
    },
}

#[derive(Default)]
struct Ledger {
    entries: Mutex<Vec<Entry>>,
    lagged: AtomicU64,
}

struct LedgerSubscriber(Arc<Ledger>);

impl Subscriber for LedgerSubscriber {
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let records = batch
            .records
            .iter()
            .map(|r| {
                let key = String::from_utf8(r.key.to_vec()).unwrap();
                let seq = std::str::from_utf8(&r.value).unwrap().parse().unwrap();
                (r.sequence, key, seq)
            })
            .collect();
        self.0.entries.lock().unwrap().push(Entry::Delivered {
            partition: batch.channel_id,
            records,
        });
        Ok(())
    }
}

struct Consumer {
    _tree: DynamicSupervisorHandle,
    worker: TunnelHandle,
    registry: Registry<TunnelEntry>,
}

async fn start_consumer(broker: &Broker, index: usize, ledger: &Arc<Ledger>) -> Consumer {
    let mut options = kafka_worker_options("ledger")
        .client_tag(format!("ledger-{index}"))
        .read_batch_size(500)
        .subscriber_grace(Duration::from_secs(5));
    if index == 2 {
        options = options.checkpoint(CheckpointPolicy::Every(Duration::from_millis(300)));
    }
    let registry = Registry::new(format!("kledger-{index}"));
    let tree = DynamicSupervisor::builder()
        .intensity(100, Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let source = KafkaSource::new(broker.options("ledger", "ledger-g"), &options).unwrap();
    let worker = TunnelWorker::builder(options)
        .source(Arc::new(source))
        .run_subscriber(LedgerSubscriber(Arc::clone(ledger)))
        .registry(registry.clone())
        .start_under(&tree)
        .await
        .unwrap();
    let mut events = worker.events();
    let ledger = Arc::clone(ledger);
    tokio::spawn(async move {
        loop {
            let entry = match events.recv().await {
                Ok(TunnelEvent::ChannelAssigned {
                    channel_id, position, ..
                }) => Entry::Assigned {
                    partition: channel_id,
                    position,
                },
                Ok(TunnelEvent::Checkpointed { channel_id, position }) => Entry::Checkpointed {
                    partition: channel_id,
                    position,
                },
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    ledger.lagged.fetch_add(n, Ordering::Relaxed);
                    continue;
                }
                Err(_) => return,
            };
            ledger.entries.lock().unwrap().push(entry);
        }
    });
    Consumer {
        _tree: tree,
        worker,
        registry,
    }
}

/// The subscriber runner a worker runs itself (a child of its runner supervisor).
fn runner_of(worker: &TunnelHandle) -> Option<arbor::ractor::ActorCell> {
    worker
        .ractor_cell()
        .ok()?
        .get_children()
        .into_iter()
        .flat_map(|child| child.get_children())
        .find(|c| c.is_message_type_of::<Delivery>() == Some(true))
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillChannel,
    KillSubscriber,
    KillWorker,
    RestartBroker,
}

const SCHEDULE: [Fault; 4] = [
    Fault::KillChannel,
    Fault::KillSubscriber,
    Fault::KillWorker,
    Fault::RestartBroker,
];

fn pick<T>(items: &[T]) -> Option<&T> {
    (!items.is_empty()).then(|| &items[rand::random_range(0..items.len())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_record_is_delivered_in_order_per_key_through_kills_and_broker_restarts() {
    init_tracing();
    let started = Instant::now();
    let broker = Arc::new(Broker::start());
    broker.create_topic("ledger", PARTITIONS, &[]).await;
    let ledger = Arc::new(Ledger::default());
    let mut consumers = Vec::new();
    for i in 0..WORKERS {
        consumers.push(start_consumer(&broker, i, &ledger).await);
    }

    // producers: each key's values are its sequence numbers; only acknowledged sends count as produced
    let produced = Arc::new(Mutex::new(HashSet::<(String, u64)>::new()));
    let per_producer = RECORDS / PRODUCERS;
    let chunks = per_producer / CHUNK;
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (producer, produced) = (broker.producer(), Arc::clone(&produced));
        producers.push(tokio::spawn(async move {
            for chunk in 0..chunks {
                let items: Vec<(String, u64, String)> = (0..CHUNK)
                    .map(|i| {
                        let n = chunk * CHUNK + i;
                        let seq = n / KEYS_PER_PRODUCER;
                        (
                            key_name(p * KEYS_PER_PRODUCER + n % KEYS_PER_PRODUCER),
                            seq,
                            seq.to_string(),
                        )
                    })
                    .collect();
                // Enqueued in order (join_all polls them in turn); the idempotent producer keeps each
                // partition's order through retries.
                let sends = items.iter().map(|(key, _, value)| {
                    producer.send(
                        FutureRecord::to("ledger").key(key).payload(value),
                        Duration::from_secs(120),
                    )
                });
                let results = futures::future::join_all(sends).await;
                for ((key, seq, _), result) in items.iter().zip(results) {
                    if result.is_ok() {
                        produced.lock().unwrap().insert((key.clone(), *seq));
                    }
                }
                tokio::time::sleep(PRODUCTION / chunks as u32).await;
            }
        }));
    }

    let mut faults: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut turn = 0;
    while producers.iter().any(|p| !p.is_finished()) {
        tokio::time::sleep(FAULT_EVERY).await;
        let mut fault = SCHEDULE[turn % SCHEDULE.len()];
        turn += 1;
        if matches!(fault, Fault::RestartBroker) && faults.contains_key("RestartBroker") {
            // Once: a restart takes ~15 s, the suite's budget is minutes.
            fault = Fault::KillChannel;
        }
        let consumer = pick(&consumers).unwrap();
        let done = match fault {
            Fault::KillChannel => {
                let channels = consumer.registry.select_prefix("tunnel/ledger/channel/");
                pick(&channels).map(|entry| entry.actor.kill()).is_some()
            }
            Fault::KillSubscriber => runner_of(&consumer.worker).map(|r| r.kill()).is_some(),
            Fault::KillWorker => consumer.worker.ractor_cell().map(|w| w.kill()).is_ok(),
            Fault::RestartBroker => {
                let broker = Arc::clone(&broker);
                tokio::task::spawn_blocking(move || {
                    broker.kill();
                    broker.restart();
                })
                .await
                .unwrap();
                true
            }
        };
        if done {
            *faults.entry(format!("{fault:?}").leak()).or_default() += 1;
        }
    }
    for p in producers {
        p.await.unwrap();
    }
    let produced = produced.lock().unwrap().clone();
    let delivered = || -> HashSet<(String, u64)> {
        ledger
            .entries
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Entry::Delivered { records, .. } => Some(records.iter().map(|(_, k, s)| (k.clone(), *s))),
                _ => None,
            })
            .flatten()
            .collect()
    };
    wait_until("every acknowledged record delivered", || {
        produced.is_subset(&delivered())
    })
    .await;
    for c in &consumers {
        c.worker.shutdown(Duration::from_secs(60)).await.unwrap();
    }
    broker.kill();

    // the ledger
    let entries = ledger.entries.lock().unwrap().clone();
    let mut total = 0u64;
    let mut first_seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut committed: BTreeMap<u32, u64> = BTreeMap::new();
    for entry in &entries {
        match entry {
            Entry::Delivered { partition, records } => {
                assert!(
                    records.windows(2).all(|w| w[0].0 < w[1].0),
                    "partition {partition}: a batch out of offset order"
                );
                for (_, key, seq) in records {
                    total += 1;
                    if seen.insert((key.clone(), *seq)) {
                        first_seen.entry(key.clone()).or_default().push(*seq);
                    }
                }
            }
            Entry::Checkpointed { partition, position } => {
                let c = committed.entry(*partition).or_default();
                *c = (*c).max(*position);
            }
            Entry::Assigned { partition, position } => {
                let last = committed.get(partition).copied().unwrap_or(0);
                assert!(
                    *position >= last,
                    "partition {partition}: a lease started at {position}, below the commit {last} made before it"
                );
            }
        }
    }
    for (key, seqs) in &first_seen {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key}: first deliveries out of order: {seqs:?}"
        );
    }
    let lost = produced.difference(&seen).count();
    println!(
        "kafka ledger: produced {} delivered {} duplicates {} lost {} (faults {faults:?}; lagged events {}; {})",
        produced.len(),
        seen.len(),
        total - seen.len() as u64,
        lost,
        ledger.lagged.load(Ordering::Relaxed),
        humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
    );
    assert_eq!(lost, 0);
    assert!(faults.len() >= 3, "faults injected: {faults:?}");
}
