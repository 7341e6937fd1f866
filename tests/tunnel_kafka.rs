//! Tunnel workers on a real Apache Kafka broker (one per test binary, started by `scripts/kafka.sh`): the
//! group's assignment is what the workers own; a join moves only the partitions it must, each committed by its
//! old owner before the new one starts; a worker that goes away hands its partitions on; bad options,
//! unreachable brokers, a missing topic and records deleted before they were delivered give typed errors; a
//! stuck subscriber (`max.poll.interval.ms` semantics) makes its worker leave the group; a fenced member's late
//! commit is refused.
#![cfg(feature = "kafka")]

mod tunnel_kafka_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor::tunnel::kafka::rdkafka::admin::{AdminClient, AdminOptions};
use arbor::tunnel::kafka::rdkafka::client::DefaultClientContext;
use arbor::tunnel::kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use arbor::tunnel::kafka::rdkafka::{Offset, TopicPartitionList};
use arbor::tunnel::kafka::{KafkaOptions, KafkaSource};
use arbor::tunnel::{
    CheckpointPolicy, Delivery, ErrorKind, OutOfRangePolicy, SubscriberRef, TunnelError, TunnelEvent,
    TunnelExit, TunnelSource, TunnelWorker, WorkerStatus,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tunnel_kafka_common::*;

const PARTITIONS: u32 = 8;

fn balanced(sets: &[BTreeSet<u32>]) -> bool {
    let total: usize = sets.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<u32> = sets.iter().flatten().copied().collect();
    let (min, max) = (
        PARTITIONS as usize / sets.len(),
        (PARTITIONS as usize).div_ceil(sets.len()),
    );
    total == PARTITIONS as usize
        && union.len() == PARTITIONS as usize
        && sets.iter().all(|s| s.len() >= min && s.len() <= max)
}

/// (channel, position) of each event of a kind.
fn positions(events: &[TunnelEvent], assigned: bool) -> Vec<(u32, u64)> {
    events
        .iter()
        .filter_map(|e| match (e, assigned) {
            (
                TunnelEvent::ChannelAssigned {
                    channel_id, position, ..
                },
                true,
            ) => Some((*channel_id, *position)),
            (TunnelEvent::Checkpointed { channel_id, position }, false) => Some((*channel_id, *position)),
            _ => None,
        })
        .collect()
}

fn released(events: &[TunnelEvent]) -> BTreeSet<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            TunnelEvent::ChannelReleased { channel_id, .. } => Some(*channel_id),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_eight_partitions_a_join_moves_only_what_it_must_and_a_leaver_hands_on() {
    let broker = Broker::shared();
    let topic = "balance";
    broker.create_topic(topic, PARTITIONS as i32, &[]).await;
    let producer = broker.producer();
    for p in 0..PARTITIONS as i32 {
        produce(&producer, topic, p, "a", 50).await;
    }
    // Commits only at hand-overs and shutdowns: a new owner that started before its old owner's commit would
    // begin at an older one and deliver records again.
    let options = kafka_worker_options(topic).checkpoint(CheckpointPolicy::Every(Duration::from_secs(3600)));
    let journal = Journal::default();
    let mut workers = Vec::new();
    let mut logs = Vec::new();
    for i in 0..3 {
        workers
            .push(start_kafka_worker(options.clone(), broker.options(topic, "balance-g"), &journal, i).await);
        logs.push(EventLog::follow(&workers[i]));
    }
    let settled = |workers: &[arbor::tunnel::TunnelHandle], logs: &[EventLog]| {
        balanced(&workers.iter().map(owned).collect::<Vec<_>>())
            && workers.iter().zip(logs).all(|(w, log)| log.started() == owned(w))
    };
    wait_until(
        "3 workers balanced over 8 partitions, every channel started",
        || settled(&workers, &logs),
    )
    .await;
    journal.wait_distinct(400).await;
    assert!(
        journal.duplicates().is_empty(),
        "hand-overs while starting delivered again: {:?}",
        journal.duplicates()
    );
    // Records each owner delivers and does not commit (yet): a hand-over must commit them.
    for p in 0..PARTITIONS as i32 {
        produce(&producer, topic, p, "a", 10).await;
    }
    journal.wait_distinct(480).await;
    let before: Vec<BTreeSet<u32>> = workers.iter().map(owned).collect();
    println!("balanced: {before:?}");

    // A fourth joins: 2 each; only the partitions it takes stop, each after its old owner committed.
    let marks: Vec<usize> = logs.iter().map(EventLog::len).collect();
    workers.push(start_kafka_worker(options.clone(), broker.options(topic, "balance-g"), &journal, 3).await);
    logs.push(EventLog::follow(&workers[3]));
    wait_until(
        "4 workers balanced over 8 partitions, every channel started",
        || settled(&workers, &logs),
    )
    .await;
    let after: Vec<BTreeSet<u32>> = workers.iter().map(owned).collect();
    println!("after the join: {after:?}");
    let joined: Vec<Vec<TunnelEvent>> = logs
        .iter()
        .enumerate()
        .map(|(i, log)| log.since(marks.get(i).copied().unwrap_or(0)))
        .collect();
    let mut committed_at: BTreeMap<u32, u64> = BTreeMap::new();
    for i in 0..3 {
        assert!(
            after[i].is_subset(&before[i]),
            "worker {i} was given a partition: {:?} -> {:?}",
            before[i],
            after[i]
        );
        let moved: BTreeSet<u32> = before[i].difference(&after[i]).copied().collect();
        assert_eq!(
            released(&joined[i]),
            moved,
            "worker {i} stopped only the partitions that moved"
        );
        assert!(
            positions(&joined[i], true).is_empty(),
            "worker {i} restarted a channel: {:?}",
            joined[i]
        );
        for (channel, position) in positions(&joined[i], false) {
            committed_at.insert(channel, position);
        }
    }
    assert_eq!(
        committed_at.keys().copied().collect::<BTreeSet<_>>(),
        after[3],
        "each moved partition committed"
    );
    let started = positions(&joined[3], true);
    assert_eq!(started.len(), after[3].len(), "{:?}", joined[3]);
    for (channel, position) in started {
        assert_eq!(
            committed_at.get(&channel),
            Some(&position),
            "the new owner of {channel} starts at its old owner's hand-over commit"
        );
        assert_eq!(
            position, 60,
            "everything delivered before the hand-over was committed by it"
        );
    }
    for p in 0..PARTITIONS as i32 {
        produce(&producer, topic, p, "b", 20).await;
    }
    journal.wait_distinct(640).await;
    assert!(
        journal.duplicates().is_empty(),
        "a clean hand-over delivers nothing twice: {:?}",
        journal.duplicates()
    );

    // The fourth is killed (no flush): its partitions go back to the others, who resume at the last commits.
    let leaving = owned(&workers[3]);
    let killed_at = Instant::now();
    workers[3].ractor_cell().unwrap().kill();
    let w3 = workers.pop().unwrap();
    assert!(matches!(w3.wait().await, TunnelExit::Killed));
    wait_until("the killed worker's partitions taken over", || {
        balanced(&workers.iter().map(owned).collect::<Vec<_>>())
    })
    .await;
    println!(
        "partitions {leaving:?} of the killed worker moved after {} (session timeout 10s)",
        humantime::format_duration(Duration::from_millis(killed_at.elapsed().as_millis() as u64))
    );
    for p in 0..PARTITIONS as i32 {
        produce(&producer, topic, p, "c", 10).await;
    }
    journal.wait_distinct(720).await;
    // Duplicates only on the killed worker's partitions, from their last commit (60) on.
    for ((partition, offset), _) in journal.duplicates() {
        assert!(
            leaving.contains(&partition) && offset >= 60,
            "duplicate {partition}/{offset}"
        );
    }
    for w in &workers {
        w.shutdown(Duration::from_secs(60)).await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_unreachable_brokers_and_a_missing_topic_are_typed_errors() {
    let options = kafka_worker_options("errors");
    // Bad options: refused before anything runs, naming the field.
    match KafkaSource::new(KafkaOptions::new("127.0.0.1:9092", "no spaces", "g"), &options) {
        Err(TunnelError::InvalidOptions { field, .. }) => assert_eq!(field, "topic"),
        other => panic!("expected InvalidOptions, got {other:?}"),
    }
    match KafkaSource::new(
        KafkaOptions::new("127.0.0.1:9092", "t", "g").property("session.timeout.ms", "1"),
        &options,
    ) {
        Err(TunnelError::InvalidOptions { field, .. }) => {
            assert_eq!(field, "properties.\"session.timeout.ms\"")
        }
        other => panic!("expected InvalidOptions, got {other:?}"),
    }

    // Unreachable brokers: connecting fails with a retryable error within the call timeout, and a worker keeps
    // retrying (connecting), without a panic, until it is shut down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("127.0.0.1:{port}");
    let options = options.call_timeout(Duration::from_secs(2));
    let source = KafkaSource::new(KafkaOptions::new(&nowhere, "t", "g"), &options).unwrap();
    let err = source
        .connect("errors", "test", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Retryable, "{err}");
    let worker = TunnelWorker::builder(options.clone())
        .source(Arc::new(source))
        .run_subscriber(Journal::default().writer(0))
        .registry(arbor::registry::Registry::new("errors"))
        .start()
        .await
        .expect("a worker whose brokers are unreachable starts and retries");
    assert!(worker.channels().is_empty());
    worker.shutdown(Duration::from_secs(30)).await.expect("shutdown");

    // A missing topic: the worker does not start, and says why.
    let broker = Broker::shared();
    let err = TunnelWorker::builder(options.clone())
        .source(Arc::new(
            KafkaSource::new(broker.options("no-such-topic", "g"), &options).unwrap(),
        ))
        .run_subscriber(Journal::default().writer(0))
        .registry(arbor::registry::Registry::new("missing"))
        .start()
        .await
        .expect_err("no topic, no worker");
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
    assert!(
        err.to_string().contains("no-such-topic") || format!("{err:?}").contains("no-such-topic"),
        "{err:?}"
    );
}

/// Commits `offset` on every partition of `topic` for `group`, as an earlier consumer would have.
fn commit_for_group(broker: &Broker, topic: &str, group: &str, partitions: i32, offset: i64) {
    let consumer: BaseConsumer = broker.config().set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(offset))
            .unwrap();
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .expect("commit for the group");
}

async fn delete_before(broker: &Broker, topic: &str, partitions: i32, offset: i64) {
    let admin: AdminClient<DefaultClientContext> = broker.config().create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(offset))
            .unwrap();
    }
    admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .expect("delete records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_before_they_were_delivered_are_out_of_range_stopped_or_skipped_loudly() {
    let broker = Broker::shared();
    let topic = "retention";
    broker.create_topic(topic, 2, &[]).await;
    let producer = broker.producer();
    for p in 0..2 {
        produce(&producer, topic, p, "r", 100).await;
    }
    // The groups committed 10; records below 50 are gone.
    commit_for_group(broker, topic, "ret-stop", 2, 10);
    commit_for_group(broker, topic, "ret-skip", 2, 10);
    delete_before(broker, topic, 2, 50).await;

    let options = kafka_worker_options(topic).on_out_of_range(OutOfRangePolicy::Stop);
    let journal = Journal::default();
    let worker = start_kafka_worker(options, broker.options(topic, "ret-stop"), &journal, 0).await;
    match worker.wait().await {
        TunnelExit::Fatal(err) => match &*err {
            TunnelError::OutOfRange {
                position,
                first_retained,
                ..
            } => {
                assert_eq!((*position, *first_retained), (10, 50), "{err}");
            }
            other => panic!("expected OutOfRange, got {other:?}"),
        },
        other => panic!("expected a fatal exit, got {other:?}"),
    }
    assert_eq!(journal.len(), 0, "nothing delivered past a gap");

    let options = kafka_worker_options(topic).on_out_of_range(OutOfRangePolicy::SkipToRetained);
    let journal = Journal::default();
    let worker = start_kafka_worker(options, broker.options(topic, "ret-skip"), &journal, 0).await;
    journal.wait_distinct(100).await;
    let offsets: BTreeSet<u64> = journal.distinct().iter().map(|(_, o)| *o).collect();
    assert_eq!(offsets.first(), Some(&50), "resumed at the first retained record");
    assert_eq!(journal.distinct().len(), 100);
    let lost: u64 = worker.channels().iter().map(|c| c.lost_to_retention).sum();
    assert_eq!(
        lost, 80,
        "the 40 records of each partition lost to retention are counted"
    );
    worker.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_starts_a_worker_on_a_kafka_target_and_refuses_bad_kafka_options_at_start() {
    let broker = Broker::shared();
    let topic = "tree";
    broker.create_topic(topic, 2, &[]).await;
    let producer = broker.producer();
    for p in 0..2 {
        produce(&producer, topic, p, "t", 10).await;
    }
    let tree = arbor::tree::Tree::builder()
        .name("kafka-tree")
        .start()
        .await
        .unwrap();
    let journal = Journal::default();
    let worker = tree
        .tunnel(kafka_worker_options(topic), broker.options(topic, "tree-g"))
        .run_subscriber(journal.writer(0))
        .start()
        .await
        .expect("a Kafka worker under the tree");
    journal.wait_distinct(20).await;
    assert!(tree.tunnels().contains_key(topic));
    let bad = tree
        .tunnel(
            kafka_worker_options("bad"),
            KafkaOptions::new("127.0.0.1:9092", "a topic", "g"),
        )
        .run_subscriber(journal.writer(1))
        .start()
        .await
        .expect_err("bad options");
    assert!(
        matches!(&bad, arbor::tree::TreeError::Tunnel(TunnelError::InvalidOptions { field, .. }) if field == "topic"),
        "{bad:?}"
    );
    drop(worker);
    tree.shutdown(Duration::from_secs(60)).await.unwrap();

    // The same from TOML: `source = "kafka"` and a `[tunnels.kafka]` table instead of a connection.
    let toml = format!(
        r#"
        [[tunnels]]
        source = "kafka"
        subscriber = "discard"
        [tunnels.options]
        tunnel_id = "{topic}"
        heartbeat_interval = "300ms"
        min_heartbeat_interval = "10ms"
        heartbeat_timeout = "10s"
        [tunnels.kafka]
        bootstrap_servers = ["{}"]
        topic = "{topic}"
        group_id = "tree-toml-g"
        "#,
        broker.bootstrap
    );
    let config = arbor::tree::TreeConfig::from_toml(&toml).expect("a Kafka tunnel in TOML");
    let tree = arbor::tree::Tree::from_config(config)
        .start()
        .await
        .expect("the tree starts it");
    let worker = tree.tunnels()[topic].clone();
    wait_until("the TOML worker owns both partitions", || {
        owned(&worker).len() == 2
    })
    .await;
    tree.shutdown(Duration::from_secs(60)).await.unwrap();
    let bad = toml.replace("group_id = \"tree-toml-g\"", "group_id = \"\"");
    let err = arbor::tree::TreeConfig::from_toml(&bad).expect_err("an empty group id");
    assert!(err.to_string().contains("tunnels[0].kafka"), "{err}");
}

/// `arbor demo --source kafka`: the demo's two nodes, subscribers, ledger and faults on a topic of the broker
/// (every fault but a service restart: the broker is not the demo's).
#[cfg(feature = "cli")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_runs_on_a_kafka_topic_and_loses_nothing() {
    let broker = Broker::shared();
    let report = arbor::demo::run(arbor::demo::DemoOptions {
        duration: Duration::from_secs(8),
        rate: 500,
        source: arbor::demo::DemoSource::Kafka {
            bootstrap: broker.bootstrap.clone(),
        },
        ..Default::default()
    })
    .await
    .expect("the demo runs");
    assert!(report.passed(), "{report:?}");
    assert!(report.totals.produced > 0, "{report:?}");
    assert_eq!(report.lost(), 0);
    assert!(
        report.faults.keys().all(|kind| kind.to_string() != "service"),
        "{:?}",
        report.faults
    );
}

/// A subscriber of the user's that takes its first batch and never answers (its `Ack` is kept, not dropped).
struct Stuck;

impl Actor for Stuck {
    type Msg = Delivery;
    type State = Vec<Delivery>;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Delivery>, _: ()) -> Result<Vec<Delivery>, ActorProcessingErr> {
        Ok(Vec::new())
    }

    async fn handle(
        &self,
        _: ActorRef<Delivery>,
        delivery: Delivery,
        held: &mut Vec<Delivery>,
    ) -> Result<(), ActorProcessingErr> {
        held.push(delivery);
        Ok(())
    }
}

/// Kafka's `max.poll.interval.ms`, in the worker's terms: a subscriber that holds a batch past the processing
/// timeout is lost, delivery pauses, and when no subscriber came back within the grace period the worker leaves
/// the group, so the other member takes its partitions and delivers them from the last commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_makes_its_worker_leave_the_group_and_its_partitions_move() {
    let broker = Broker::shared();
    let topic = "stuck";
    broker.create_topic(topic, 4, &[]).await;
    let options = kafka_worker_options(topic).processing_timeout(Duration::from_secs(1));
    let group = "stuck-g";

    let (stuck, _) = Actor::spawn(None, Stuck, ()).await.unwrap();
    let stuck_options = options.clone().client_tag("stuck");
    let source = KafkaSource::new(broker.options(topic, group), &stuck_options).unwrap();
    let stuck_worker = TunnelWorker::builder(stuck_options)
        .source(Arc::new(source))
        .subscriber(SubscriberRef::actor(&stuck, |d| d))
        .registry(arbor::registry::Registry::new("kafka-stuck"))
        .start()
        .await
        .expect("worker starts");
    let stuck_log = EventLog::follow(&stuck_worker);
    let journal = Journal::default();
    let healthy = start_kafka_worker(options, broker.options(topic, group), &journal, 1).await;
    wait_until("2 workers balanced over 4 partitions", || {
        owned(&stuck_worker).len() == 2 && owned(&healthy).len() == 2
    })
    .await;
    let stuck_partitions = owned(&stuck_worker);

    let producer = broker.producer();
    for p in 0..4 {
        produce(&producer, topic, p, "a", 10).await;
    }
    let mut status = stuck_worker.status();
    tokio::time::timeout(LONG, status.wait_for(|s| *s == WorkerStatus::Detached))
        .await
        .expect("the stuck subscriber's worker let its partitions go")
        .unwrap();
    wait_until("the healthy worker owns all 4 partitions", || {
        owned(&healthy).len() == 4
    })
    .await;
    journal.wait_distinct(40).await;
    let taken_over: BTreeSet<u32> = journal
        .distinct()
        .into_iter()
        .map(|(partition, _)| partition)
        .filter(|p| stuck_partitions.contains(p))
        .collect();
    assert_eq!(
        taken_over, stuck_partitions,
        "the stuck worker's records delivered by the other"
    );
    assert!(
        stuck_log
            .since(0)
            .iter()
            .any(|e| matches!(e, TunnelEvent::SubscriberLost { .. })),
        "the stuck subscriber was reported lost: {:?}",
        stuck_log.since(0)
    );
    assert!(owned(&stuck_worker).is_empty());
    stuck_worker
        .shutdown(Duration::from_secs(60))
        .await
        .expect("shutdown");
    healthy.shutdown(Duration::from_secs(60)).await.expect("shutdown");
    stuck.stop(None);
}

/// Heartbeats `source`'s session until it owns partition 0; its lease there.
async fn lease_of_partition_0(
    source: &KafkaSource,
    session: &arbor::tunnel::source::Session,
) -> arbor::tunnel::source::ChannelLease {
    let deadline = Instant::now() + LONG;
    loop {
        let owned = source.heartbeat(session, &[]).await;
        if let Ok(channels) = owned {
            if let Some(c) = channels.iter().find(|c| c.channel_id == 0) {
                return arbor::tunnel::source::ChannelLease {
                    session: session.clone(),
                    channel_id: 0,
                    version: c.version,
                };
            }
        }
        assert!(Instant::now() < deadline, "partition 0 never assigned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A member fenced by the group (here: a second consumer with the same `group.instance.id`, as during a rolling
/// restart gone wrong) has its late commit refused, and the group's offset stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_members_late_commit_is_refused_and_moves_no_offset() {
    let broker = Broker::shared();
    let (topic, group) = ("fenced", "fenced-g");
    broker.create_topic(topic, 1, &[]).await;
    produce(&broker.producer(), topic, 0, "a", 10).await;
    let options = kafka_worker_options(topic);
    let kafka = broker
        .options(topic, group)
        .property("group.instance.id", "static-1");

    let first = KafkaSource::new(kafka.clone(), &options).unwrap();
    let first_session = first
        .connect(topic, "first", Duration::from_secs(10))
        .await
        .unwrap();
    let first_lease = lease_of_partition_0(&first, &first_session).await;
    first
        .checkpoint(&first_lease, 4)
        .await
        .expect("the owner commits");

    let second = KafkaSource::new(kafka, &options).unwrap();
    let second_session = second
        .connect(topic, "second", Duration::from_secs(10))
        .await
        .unwrap();
    let second_lease = lease_of_partition_0(&second, &second_session).await;

    let late = first
        .checkpoint(&first_lease, 9)
        .await
        .expect_err("the fenced member's commit");
    println!("late commit: {late} ({:?})", late.kind());
    assert_eq!(late.kind(), ErrorKind::OwnershipLost, "{late}");
    let reader: BaseConsumer = broker.config().set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let committed = reader.committed_offsets(tpl, Duration::from_secs(30)).unwrap();
    assert_eq!(
        committed.find_partition(topic, 0).unwrap().offset(),
        Offset::Offset(4),
        "the late commit moved nothing"
    );
    second
        .checkpoint(&second_lease, 6)
        .await
        .expect("the new owner commits");
    second.shutdown(&second_session).await.unwrap();
}
