//! A zombie on Kafka: a worker in a child process is SIGSTOPped past the consumer group's session timeout while
//! records keep coming; another worker takes its partitions; the child is resumed (SIGCONT). It delivers
//! nothing before it has started over (its session is lost, a new member joins), its late commits do not move
//! the group's offsets back, and no record is lost.
#![cfg(feature = "kafka")]

mod tunnel_kafka_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor::supervisor::BoxError;
use arbor::tunnel::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use arbor::tunnel::kafka::rdkafka::{Offset, TopicPartitionList};
use arbor::tunnel::kafka::{KafkaOptions, KafkaSource};
use arbor::tunnel::{Batch, Subscriber, TunnelEvent, TunnelWorker};
use tunnel_kafka_common::*;

const CHILD_ENV: &str = "ARBOR_TEST_KAFKA_ZOMBIE";
const ENTRY: &str = "zombie_kafka_worker_entry";
const PARTITIONS: i32 = 4;

/// The child's subscriber: one line per record, `D partition offset`.
struct Print;

impl Subscriber for Print {
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let mut out = std::io::stdout().lock();
        for r in &batch.records {
            writeln!(out, "@@D {} {}", batch.channel_id, r.sequence)?;
        }
        out.flush()?;
        Ok(())
    }
}

/// Not a test: the child process's body, started by the test below with `--include-ignored`.
#[test]
#[ignore = "the zombie worker's entry point, started by the test itself"]
fn zombie_kafka_worker_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let [bootstrap, topic, group] = spec.split(' ').collect::<Vec<_>>()[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = kafka_worker_options(topic).client_tag("zombie");
        let source = KafkaSource::new(KafkaOptions::new(bootstrap, topic, group), &options).unwrap();
        let worker = TunnelWorker::builder(options)
            .source(Arc::new(source))
            .run_subscriber(Print)
            .registry(arbor::registry::Registry::new("zombie"))
            .start()
            .await
            .unwrap();
        let mut events = worker.events();
        loop {
            let line = match events.recv().await {
                Ok(TunnelEvent::Connected { client_id }) => format!("S {client_id}"),
                Ok(TunnelEvent::SessionLost { reason, .. }) => format!("L {reason}"),
                Ok(TunnelEvent::Checkpointed { channel_id, position }) => {
                    format!("C {channel_id} {position}")
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "@@{line}");
            let _ = out.flush();
        }
    });
}

/// The child's lines, as they come.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn since(&self, from: usize) -> Vec<String> {
        self.0.lock().unwrap()[from..].to_vec()
    }
    fn delivered(&self) -> Vec<(u32, u64)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let mut parts = l.strip_prefix("D ")?.split(' ');
                Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
            })
            .collect()
    }
}

fn signal(pid: u32, signal: i32) {
    assert_eq!(
        unsafe { libc::kill(pid as i32, signal) },
        0,
        "signal {signal} to {pid}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_frozen_past_the_session_timeout_delivers_nothing_when_resumed_and_moves_no_offset_back() {
    let broker = Broker::shared();
    let (topic, group) = ("zombie", "zombie-g");
    broker.create_topic(topic, PARTITIONS, &[]).await;
    let producer = broker.producer();
    for p in 0..PARTITIONS {
        produce(&producer, topic, p, "a", 40).await;
    }

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            ENTRY,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{} {topic} {group}", broker.bootstrap))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let lines = Lines::default();
    {
        let (stdout, lines) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            // The test harness prints on the same lines ("test ... "): what the child says follows "@@".
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((_, said)) = line.split_once("@@") {
                    lines.0.lock().unwrap().push(said.to_string());
                }
            }
        });
    }
    wait_until("the child delivered the first records", || {
        lines.delivered().len() >= 160
    })
    .await;

    // A second worker joins and takes half.
    let journal = Journal::default();
    let options = kafka_worker_options(topic);
    let other = start_kafka_worker(options, broker.options(topic, group), &journal, 1).await;
    let log = EventLog::follow(&other);
    wait_until("the second worker owns two partitions", || {
        owned(&other).len() == 2
    })
    .await;

    // Frozen past the session timeout (10 s) while records keep coming: the group expels it, the other takes all.
    signal(pid, libc::SIGSTOP);
    for p in 0..PARTITIONS {
        produce(&producer, topic, p, "b", 20).await;
    }
    wait_until("the other worker took every partition", || {
        owned(&other).len() == PARTITIONS as usize
    })
    .await;
    wait_until("the other worker delivered the new records", || {
        journal.distinct().iter().filter(|(_, o)| *o >= 40).count() == 80
    })
    .await;
    let mark = lines.len();
    signal(pid, libc::SIGCONT);
    wait_until("the resumed child started over", || {
        lines.since(mark).iter().any(|l| l.starts_with("S "))
    })
    .await;
    let after = lines.since(mark);
    let restart = after.iter().position(|l| l.starts_with("S ")).unwrap();
    let before_restart = &after[..restart];
    println!("the resumed child, until its new session: {before_restart:?}");
    assert!(
        before_restart.iter().any(|l| l.starts_with("L ")),
        "the resumed child lost its session: {before_restart:?}"
    );
    assert!(
        !before_restart
            .iter()
            .any(|l| l.starts_with("D ") || l.starts_with("C ")),
        "the resumed child delivered or committed before starting over: {before_restart:?}"
    );

    // More records; the two share them again; nothing lost, and the group's offsets never went back.
    for p in 0..PARTITIONS {
        produce(&producer, topic, p, "c", 10).await;
    }
    let all = || {
        let mut seen: std::collections::BTreeSet<(u32, u64)> = journal.distinct();
        seen.extend(lines.delivered());
        seen.len()
    };
    wait_until("every record delivered by one or the other", || all() == 280).await;
    let mut last_commit: BTreeMap<u32, u64> = BTreeMap::new();
    for event in log.since(0) {
        if let TunnelEvent::Checkpointed { channel_id, position } = event {
            last_commit.insert(channel_id, position);
        }
    }
    other.shutdown(Duration::from_secs(60)).await.unwrap();
    signal(pid, libc::SIGKILL);
    let _ = child.wait();
    let reader: BaseConsumer = broker.config().set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = reader.committed_offsets(tpl, Duration::from_secs(30)).unwrap();
    for (partition, position) in last_commit {
        let now = match committed
            .find_partition(topic, partition as i32)
            .unwrap()
            .offset()
        {
            Offset::Offset(o) => o as u64,
            other => panic!("partition {partition}: no committed offset ({other:?})"),
        };
        assert!(
            now >= position,
            "partition {partition}: committed {now} went back below {position}"
        );
    }
}
