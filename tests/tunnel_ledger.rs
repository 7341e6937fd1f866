//! The ledger test: producers append 100,000 keyed records (each value carries its key's sequence number) to a
//! durable tunnel service running as a child process, while three workers consume the tunnel and the test, on
//! a schedule, kills a random channel actor, kills a worker (its supervisor starts it again, the others take
//! its channels meanwhile), kills a subscriber, and SIGKILLs the service and starts it again on the same data
//! directory and port (the workers reconnect through their connections).
//!
//! At the end: every acknowledged append was delivered at least once; per channel, deliveries never skip a
//! position and go back only to where a new lease resumed, never below a checkpoint already written; per key,
//! the values of first deliveries only grow; 0 lost. The test prints produced / delivered / duplicates / lost.

mod tunnel_worker_common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor::connection::{BackoffConfig, ConnectionConfig, ConnectionHandle};
use arbor::registry::Registry;
use arbor::supervisor::{BoxError, DynamicSupervisor, DynamicSupervisorHandle};
use arbor::tunnel::{
    Batch, CheckpointPolicy, Subscriber, TunnelEntry, TunnelEvent, TunnelHandle, TunnelWorker,
};
use arbor_proto::tunnel::v1;
use tunnel_worker_common::*;

const RECORDS: u64 = 100_000;
const PRODUCERS: u64 = 4;
const KEYS_PER_PRODUCER: u64 = 16;
const APPEND_BATCH: u64 = 250;
const CHANNELS: u32 = 8;
const WORKERS: usize = 3;
/// Production is paced over about this long, so that every fault lands while records flow.
const PRODUCTION: Duration = Duration::from_secs(12);
/// Time between two faults.
const FAULT_EVERY: Duration = Duration::from_millis(900);

fn key_name(key: u64) -> String {
    format!("p{}-k{}", key / KEYS_PER_PRODUCER, key % KEYS_PER_PRODUCER)
}

fn key_index(name: &[u8]) -> u64 {
    let name = std::str::from_utf8(name).unwrap();
    let (p, k) = name[1..].split_once("-k").unwrap();
    p.parse::<u64>().unwrap() * KEYS_PER_PRODUCER + k.parse::<u64>().unwrap()
}

/// One line of the ledger, in the order things happened (as far as the test can see).
#[derive(Debug, Clone)]
enum Entry {
    /// A batch a subscriber took: channel, positions, and each record's (key, per-key sequence).
    Delivered {
        worker: usize,
        channel: u32,
        /// The lease version it was delivered under.
        version: i64,
        first: u64,
        next: u64,
        records: Vec<(u64, u64)>,
    },
    /// A worker's channel lease began at this position (its checkpoint).
    Assigned { channel: u32, position: u64 },
    /// A checkpoint was written.
    Checkpointed { channel: u32, position: u64 },
}

#[derive(Default)]
struct Ledger {
    entries: Mutex<Vec<Entry>>,
    /// Worker events the ledger missed (its receiver fell behind).
    lagged: AtomicU64,
}

/// The subscriber each worker runs: writes what it takes to the ledger.
struct LedgerSubscriber {
    ledger: Arc<Ledger>,
    worker: usize,
}

impl Subscriber for LedgerSubscriber {
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let records = batch
            .records
            .iter()
            .map(|r| {
                let seq = std::str::from_utf8(&r.value).unwrap().parse().unwrap();
                (key_index(&r.key), seq)
            })
            .collect::<Vec<_>>();
        self.ledger.entries.lock().unwrap().push(Entry::Delivered {
            worker: self.worker,
            channel: batch.channel_id,
            version: batch.version.get(),
            first: batch.first_sequence(),
            next: batch.next_sequence(),
            records,
        });
        Ok(())
    }
}

/// What the producers know.
#[derive(Default)]
struct Produced {
    /// (key, sequence) of every record whose append was acknowledged.
    acknowledged: Mutex<HashSet<(u64, u64)>>,
    /// Records of appends that failed (the service died under them): they may or may not be stored.
    unknown: AtomicU64,
}

/// A producer: appends batches over its keys, each value the key's next sequence number. A failed append is
/// not retried with the same values (its outcome is unknown); the next batch carries new sequence numbers.
async fn produce(url: String, tunnel: String, producer: u64, produced: Arc<Produced>) {
    let endpoint = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(1));
    let mut client = v1::tunnel_service_client::TunnelServiceClient::new(endpoint.connect_lazy());
    let batches = RECORDS / PRODUCERS / APPEND_BATCH;
    let pause = PRODUCTION / batches as u32;
    let mut next_seq = vec![0u64; KEYS_PER_PRODUCER as usize];
    let mut acked = 0;
    while acked < batches {
        let batch: Vec<(u64, u64)> = (0..APPEND_BATCH)
            .map(|i| {
                let k = (i % KEYS_PER_PRODUCER) as usize;
                next_seq[k] += 1;
                (producer * KEYS_PER_PRODUCER + k as u64, next_seq[k])
            })
            .collect();
        let request = v1::AppendRequest {
            tunnel_id: tunnel.clone(),
            tunnel_name: String::new(),
            channel_id: None,
            records: batch
                .iter()
                .map(|&(key, seq)| record(key_name(key), seq.to_string()))
                .collect(),
            ..Default::default()
        };
        match client.append(request).await {
            Ok(_) => {
                produced.acknowledged.lock().unwrap().extend(batch);
                acked += 1;
                tokio::time::sleep(pause).await;
            }
            Err(_) => {
                produced.unknown.fetch_add(APPEND_BATCH, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A connection that comes back quickly after the service restarts.
async fn quick_connection(url: &str) -> ConnectionHandle {
    let target = format!("{}?disableTls=true", url.replace("http://", "grpc://"));
    let config = ConnectionConfig::parse(&target)
        .unwrap()
        .with_backoff(BackoffConfig::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
        ));
    ConnectionHandle::start(config).await.unwrap()
}

struct Consumer {
    tree: DynamicSupervisorHandle,
    worker: TunnelHandle,
    registry: Registry<TunnelEntry>,
}

async fn start_consumer(url: &str, tunnel: &str, index: usize, ledger: &Arc<Ledger>) -> Consumer {
    let mut options = fast_options(tunnel)
        .client_tag(format!("ledger-{index}"))
        .read_batch_size(500)
        .subscriber_grace(Duration::from_secs(5));
    if index == 2 {
        // one worker checkpoints on a timer (and always on close and hand-over)
        options = options.checkpoint(CheckpointPolicy::Every(Duration::from_millis(300)));
    }
    let registry = Registry::new(format!("ledger-{index}"));
    let tree = DynamicSupervisor::builder()
        .intensity(100, Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let worker = TunnelWorker::builder(options)
        .connection(quick_connection(url).await)
        .run_subscriber(LedgerSubscriber {
            ledger: Arc::clone(ledger),
            worker: index,
        })
        .registry(registry.clone())
        .start_under(&tree)
        .await
        .unwrap();
    // the worker's events, in the ledger (the handle follows the worker across restarts)
    let mut events = worker.events();
    let ledger = Arc::clone(ledger);
    tokio::spawn(async move {
        loop {
            let entry = match events.recv().await {
                Ok(TunnelEvent::ChannelAssigned {
                    channel_id, position, ..
                }) => Entry::Assigned {
                    channel: channel_id,
                    position,
                },
                Ok(TunnelEvent::Checkpointed { channel_id, position }) => Entry::Checkpointed {
                    channel: channel_id,
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
        tree,
        worker,
        registry,
    }
}

/// The faults, in turn.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillChannel,
    KillSubscriber,
    KillWorker,
    RestartService,
}

const SCHEDULE: [Fault; 4] = [
    Fault::KillChannel,
    Fault::KillSubscriber,
    Fault::KillWorker,
    Fault::RestartService,
];

fn pick<T>(items: &[T]) -> Option<&T> {
    (!items.is_empty()).then(|| &items[rand::random_range(0..items.len())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_is_delivered_in_order_per_key_through_kills_and_service_restarts() {
    init_tracing();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let service_args = ["--data", data.as_str(), "--closing-timeout", "5s"];
    let mut service = ServeProcess::start(&service_args);
    let url = service.url.clone();
    let listen = url.trim_start_matches("http://").to_string();
    let mut admin = client(&url).await;
    let tunnel = create_streams(&mut admin, "ledger", CHANNELS).await;

    let ledger = Arc::new(Ledger::default());
    let mut consumers = Vec::new();
    for index in 0..WORKERS {
        consumers.push(start_consumer(&url, &tunnel, index, &ledger).await);
    }
    let produced = Arc::new(Produced::default());
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| tokio::spawn(produce(url.clone(), tunnel.clone(), p, Arc::clone(&produced))))
        .collect();

    // faults while the records flow
    let mut faults: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut turn = 0;
    while producers.iter().any(|p| !p.is_finished()) {
        tokio::time::sleep(FAULT_EVERY).await;
        let fault = SCHEDULE[turn % SCHEDULE.len()];
        turn += 1;
        let consumer = pick(&consumers).unwrap();
        let done = match fault {
            Fault::KillChannel => {
                let channels = consumer
                    .registry
                    .select_prefix(&format!("tunnel/{tunnel}/channel/"));
                pick(&channels).map(|entry| entry.actor.kill()).is_some()
            }
            Fault::KillSubscriber => runner_of(&consumer.worker).map(|runner| runner.kill()).is_some(),
            Fault::KillWorker => consumer.worker.current().map(|w| w.kill()).is_ok(),
            Fault::RestartService => {
                service.sigkill();
                service = ServeProcess::start_at(&listen, &service_args);
                true
            }
        };
        if done {
            *faults.entry(fault_name(fault)).or_default() += 1;
        }
    }
    for p in producers {
        p.await.unwrap();
    }
    let produced_at = started.elapsed();

    // every acknowledged record delivered
    let acknowledged = produced.acknowledged.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: HashSet<(u64, u64)> = delivered_records(&ledger);
        let missing = acknowledged.difference(&delivered).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged records never delivered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Before the graceful shutdowns, every channel is owned, and checkpointed to its end or delivered to it (and
    // so acknowledged) under its current lease: what the shutdowns must then flush. A channel whose owner was
    // killed by one of the last faults is first taken over, and its unflushed tail delivered again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = describe(&mut client(&url).await, &tunnel).await;
        let behind: Vec<u32> = info
            .channels
            .iter()
            .filter(|c| {
                c.owner_client_id.is_empty()
                    || c.checkpoint_sequence_number < c.end_sequence_number
                        && !delivered_to_end(&ledger, c.channel_id, c.version, c.end_sequence_number)
            })
            .map(|c| c.channel_id)
            .collect();
        if behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "channels {behind:?} never owned and delivered to their end"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // then stop the consumers gracefully
    for consumer in &consumers {
        consumer.tree.shutdown(Duration::from_secs(20)).await.unwrap();
    }
    let duration = started.elapsed();
    // the graceful shutdowns flushed every channel's checkpoint to its end, and no session outlived them (a
    // killed worker's Drop shuts its session down)
    let mut admin = client(&url).await;
    let info = describe(&mut admin, &tunnel).await;
    assert!(
        info.clients.is_empty(),
        "sessions open after the shutdowns: {:?}",
        info.clients
    );
    for c in &info.channels {
        assert_eq!(
            c.checkpoint_sequence_number, c.end_sequence_number,
            "channel {}",
            c.channel_id
        );
    }

    let report = check(&ledger.entries.lock().unwrap(), &acknowledged)
        .unwrap_or_else(|violation| panic!("{violation}"));
    println!(
        "ledger: produced {} (acknowledged; {} more in appends that failed, of unknown outcome), delivered {} \
         ({} distinct records), duplicates {}, lost {}; faults {faults:?}; produced in {produced_at:.1?}, all \
         delivered in {duration:.1?}",
        acknowledged.len(),
        produced.unknown.load(Ordering::Relaxed),
        report.delivered,
        report.unique,
        report.duplicates,
        report.lost,
    );
    assert_eq!(
        ledger.lagged.load(Ordering::Relaxed),
        0,
        "the ledger missed worker events"
    );
    assert_eq!(report.lost, 0);
    assert_eq!(acknowledged.len() as u64, RECORDS);
    for fault in SCHEDULE {
        assert!(
            faults.get(fault_name(fault)).copied().unwrap_or(0) >= 1,
            "fault {fault:?} never happened: {faults:?}"
        );
    }
    service.sigterm();
}

fn fault_name(fault: Fault) -> &'static str {
    match fault {
        Fault::KillChannel => "channel actor killed",
        Fault::KillSubscriber => "subscriber killed",
        Fault::KillWorker => "worker killed",
        Fault::RestartService => "service SIGKILLed and restarted",
    }
}

fn delivered_records(ledger: &Ledger) -> HashSet<(u64, u64)> {
    ledger
        .entries
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Entry::Delivered { records, .. } => Some(records.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Whether a batch ending at `end` of `channel` was delivered under the lease `version`.
fn delivered_to_end(ledger: &Ledger, channel: u32, version: i64, end: u64) -> bool {
    ledger.entries.lock().unwrap().iter().any(|e| {
        matches!(e, Entry::Delivered { channel: c, version: v, next, .. }
            if *c == channel && *v == version && *next == end)
    })
}

/// `assert!` for [`check`]: the violation as an error.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

#[derive(Debug)]
struct Report {
    delivered: u64,
    unique: u64,
    duplicates: u64,
    lost: u64,
}

/// Walks the ledger and checks the delivery guarantees; the first violation is the error.
fn check(entries: &[Entry], acknowledged: &HashSet<(u64, u64)>) -> Result<Report, String> {
    // per channel: the first position never delivered yet, the highest checkpoint written so far, and where
    // the leases began
    let mut high: BTreeMap<u32, u64> = BTreeMap::new();
    let mut checkpoint: BTreeMap<u32, u64> = BTreeMap::new();
    let mut lease_starts: BTreeMap<u32, HashSet<u64>> = BTreeMap::new();
    // per key: the last sequence number delivered for the first time
    let mut last_new: BTreeMap<u64, u64> = BTreeMap::new();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let (mut delivered, mut duplicates) = (0u64, 0u64);
    let mut rewinds = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match entry {
            Entry::Assigned { channel, position } => {
                let floor = checkpoint.get(channel).copied().unwrap_or(0);
                ensure!(
                    *position >= floor,
                    "entry {i}: channel {channel} resumed at {position}, below its checkpoint {floor}"
                );
                lease_starts.entry(*channel).or_default().insert(*position);
            }
            Entry::Checkpointed { channel, position } => {
                let c = checkpoint.entry(*channel).or_default();
                *c = (*c).max(*position);
            }
            Entry::Delivered {
                worker,
                channel,
                first,
                next,
                records,
                ..
            } => {
                ensure!(
                    *next - *first == records.len() as u64,
                    "entry {i}: a batch of the wrong length"
                );
                let hw = high.entry(*channel).or_default();
                ensure!(
                    *first <= *hw,
                    "entry {i}: channel {channel} skipped from {hw} to {first} (worker {worker})"
                );
                if *first < *hw {
                    // delivered again: only from where a lease resumed, at or above the last checkpoint
                    let floor = checkpoint.get(channel).copied().unwrap_or(0);
                    ensure!(
                        *first >= floor,
                        "entry {i}: channel {channel} delivered again from {first}, below its checkpoint {floor}"
                    );
                    rewinds.push((i, *channel, *first));
                }
                for (offset, &(key, seq)) in records.iter().enumerate() {
                    delivered += 1;
                    let position = first + offset as u64;
                    if position < *hw {
                        duplicates += 1;
                        ensure!(
                            seen.contains(&(key, seq)),
                            "entry {i}: a record delivered again that was never delivered"
                        );
                        continue;
                    }
                    // a first delivery: the key's values only grow (a failed append leaves a gap)
                    let last = last_new.entry(key).or_default();
                    ensure!(
                        seq > *last,
                        "entry {i}: key {} went from {last} to {seq} on a first delivery",
                        key_name(key)
                    );
                    *last = seq;
                    ensure!(
                        seen.insert((key, seq)),
                        "entry {i}: a new position repeats a record"
                    );
                }
                *hw = (*hw).max(*next);
            }
        }
    }
    // every rewind started where a lease resumed (the lease's event may be logged after its first batch)
    for (i, channel, first) in rewinds {
        ensure!(
            lease_starts.get(&channel).is_some_and(|s| s.contains(&first)),
            "entry {i}: channel {channel} delivered again from {first}, where no lease resumed"
        );
    }
    let lost = acknowledged.difference(&seen).count() as u64;
    Ok(Report {
        delivered,
        unique: seen.len() as u64,
        duplicates,
        lost,
    })
}

/// The checker itself: it accepts a clean history and catches each kind of violation.
#[test]
fn the_checker_catches_skips_rewinds_below_a_checkpoint_reordered_keys_and_losses() {
    let batch = |channel, first: u64, records: &[(u64, u64)]| Entry::Delivered {
        worker: 0,
        channel,
        version: 1,
        first,
        next: first + records.len() as u64,
        records: records.to_vec(),
    };
    let acked: HashSet<(u64, u64)> = [(1, 1), (1, 2), (1, 3), (2, 1)].into();
    let clean = vec![
        Entry::Assigned {
            channel: 0,
            position: 0,
        },
        batch(0, 0, &[(1, 1), (2, 1)]),
        Entry::Checkpointed {
            channel: 0,
            position: 2,
        },
        batch(0, 2, &[(1, 2)]),
        // a new lease at the checkpoint: position 2 again
        batch(0, 2, &[(1, 2), (1, 3)]),
        Entry::Assigned {
            channel: 0,
            position: 2,
        },
    ];
    let report = check(&clean, &acked).unwrap();
    assert_eq!((report.delivered, report.duplicates, report.lost), (5, 1, 0));

    let mut skip = clean.clone();
    skip[3] = batch(0, 3, &[(1, 3)]);
    assert!(check(&skip, &acked).unwrap_err().contains("skipped"));
    let mut below = clean.clone();
    below[4] = batch(0, 1, &[(2, 1), (1, 2), (1, 3)]);
    assert!(check(&below, &acked)
        .unwrap_err()
        .contains("below its checkpoint"));
    let mut no_lease = clean.clone();
    no_lease.pop();
    assert!(check(&no_lease, &acked).unwrap_err().contains("no lease resumed"));
    let mut reordered = clean.clone();
    reordered[3] = batch(0, 2, &[(1, 1)]);
    assert!(check(&reordered, &acked).unwrap_err().contains("went from"));
    let mut lost = clean.clone();
    lost.truncate(4);
    lost.push(Entry::Assigned {
        channel: 0,
        position: 2,
    });
    assert_eq!(check(&lost, &acked).unwrap().lost, 1);
}
