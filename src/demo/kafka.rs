//! The demo on a Kafka topic (`arbor demo --source kafka --bootstrap HOST:PORT`, feature `kafka`): the same
//! nodes, subscribers, ledger and faults, but the records live in a topic of the user's broker and the nodes'
//! workers are members of one consumer group. The broker is the user's, so the demo does not restart it (the
//! `service` fault is left out); the topic is created for the run and deleted after it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use arbor_actors::tunnel::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use arbor_actors::tunnel::kafka::rdkafka::client::DefaultClientContext;
use arbor_actors::tunnel::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use arbor_actors::tunnel::kafka::rdkafka::error::KafkaError;
use arbor_actors::tunnel::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use arbor_actors::tunnel::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use arbor_actors::tunnel::kafka::KafkaOptions;
use tokio::task::JoinHandle;

use super::ledger::key_name;
use super::service::Production;
use super::{DemoError, CHANNELS};

/// How long a broker call may take.
const CALL: Duration = Duration::from_secs(30);

/// The run's topic on the user's broker, and the consumer group the nodes join.
pub struct KafkaTopic {
    bootstrap: String,
    pub topic: String,
    group: String,
}

fn failed(what: &'static str) -> impl FnOnce(KafkaError) -> DemoError {
    move |source| DemoError::Kafka { what, source }
}

impl KafkaTopic {
    /// Creates a topic of `CHANNELS` partitions for this run on the broker at `bootstrap`.
    pub async fn create(bootstrap: &str) -> Result<KafkaTopic, DemoError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let topic = format!("arbor-demo-{}-{nanos}", std::process::id());
        let admin = admin(bootstrap)?;
        let new = NewTopic::new(&topic, CHANNELS as i32, TopicReplication::Fixed(1));
        let results = admin
            .create_topics(&[new], &AdminOptions::new().operation_timeout(Some(CALL)))
            .await
            .map_err(failed("creating the demo's topic"))?;
        for result in results {
            result.map_err(|(_, code)| DemoError::Kafka {
                what: "creating the demo's topic",
                source: KafkaError::AdminOp(code),
            })?;
        }
        Ok(KafkaTopic {
            bootstrap: bootstrap.to_string(),
            group: format!("{topic}-nodes"),
            topic,
        })
    }

    /// Where the nodes' workers read: this topic, their consumer group.
    pub fn options(&self) -> KafkaOptions {
        KafkaOptions::new(&self.bootstrap, &self.topic, &self.group).revoke_wait(Duration::from_secs(10))
    }

    /// Starts `producers` tasks producing to the topic (idempotent, `acks=all`), `rate` records per second in
    /// all, each key from one task that waits for every record of a round before the next (a key's records
    /// enter its partition in sequence order); as the service's producers, a failed record is sent again
    /// until the broker acknowledges it.
    pub fn start_producers(
        &self,
        (keys, producers): (usize, usize),
        rate: u32,
        max_records: u64,
        production: &Production,
    ) -> Result<Vec<JoinHandle<()>>, DemoError> {
        let producer: FutureProducer = client(&self.bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .map_err(failed("creating the demo's producer"))?;
        let mut tasks = Vec::new();
        for p in 0..producers {
            let my_keys: Vec<usize> = (0..keys).filter(|k| k % producers == p).collect();
            let per_second = f64::from(rate.max(1)) / producers as f64;
            let every = Duration::from_secs_f64(my_keys.len() as f64 / per_second);
            let (producer, topic, production) = (producer.clone(), self.topic.clone(), production.clone());
            let max_records = max_records / producers as u64;
            tasks.push(tokio::spawn(async move {
                let mut next = vec![0u64; my_keys.len()];
                let mut sent = 0u64;
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !production.stop.load(Ordering::Relaxed) && sent < max_records {
                    tick.tick().await;
                    let round = my_keys.iter().zip(&next).map(|(&key, &sequence)| {
                        let (producer, topic, production) = (&producer, &topic, &production);
                        async move {
                            let (key, value) = (key_name(key), sequence.to_string());
                            let record = || FutureRecord::to(topic).key(&key).payload(&value);
                            while let Err((err, _)) = producer.send(record(), CALL).await {
                                tracing::debug!(%err, "demo produce failed; retrying");
                                production.retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    });
                    futures::future::join_all(round).await;
                    let mut ledger = production.ledger.lock().unwrap_or_else(|p| p.into_inner());
                    for (i, &key) in my_keys.iter().enumerate() {
                        next[i] += 1;
                        ledger.produced(key, next[i]);
                    }
                    sent += my_keys.len() as u64;
                }
            }));
        }
        Ok(tasks)
    }

    /// How many partitions the group committed to their end, of how many.
    pub fn checkpointed(&self) -> (usize, usize) {
        let consumer: BaseConsumer = match client(&self.bootstrap).set("group.id", &self.group).create() {
            Ok(consumer) => consumer,
            Err(err) => {
                tracing::warn!(%err, "demo: cannot read the group's commits");
                return (0, CHANNELS);
            }
        };
        let mut partitions = TopicPartitionList::new();
        for p in 0..CHANNELS as i32 {
            partitions.add_partition(&self.topic, p);
        }
        let Ok(committed) = consumer.committed_offsets(partitions, CALL) else {
            return (0, CHANNELS);
        };
        let done = committed
            .elements()
            .iter()
            .filter(|e| {
                let high = consumer
                    .fetch_watermarks(&self.topic, e.partition(), CALL)
                    .map_or(i64::MAX, |(_, high)| high);
                matches!(e.offset(), Offset::Offset(o) if o >= high)
            })
            .count();
        (done, CHANNELS)
    }

    /// Deletes the run's topic (its records and the group's commits go with it).
    pub async fn delete(self) -> Result<(), DemoError> {
        admin(&self.bootstrap)?
            .delete_topics(&[&self.topic], &AdminOptions::new().operation_timeout(Some(CALL)))
            .await
            .map_err(failed("deleting the demo's topic"))?;
        Ok(())
    }

    /// What the demo prints about where the records are.
    pub fn describe(&self) -> String {
        format!(
            "Kafka topic {} on {} ({CHANNELS} partitions), consumer group {}",
            self.topic, self.bootstrap, self.group
        )
    }
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>, DemoError> {
    client(bootstrap)
        .create()
        .map_err(failed("connecting to the broker"))
}
