//! A tunnel worker consuming a Kafka topic (feature `kafka`): [`KafkaSource`] is a
//! [`TunnelSource`](super::TunnelSource), so the worker, its channel actors, subscribers, back-pressure,
//! checkpoint policies, registry entries and events are the same as over arbor's own tunnel service.
//!
//! # The mapping
//!
//! | tunnel worker | Kafka |
//! |---|---|
//! | a channel | a partition of [`KafkaOptions::topic`] (channel id = partition number) |
//! | the sessions sharing the channels | the members of the consumer group [`KafkaOptions::group_id`]; one session = one consumer (a new one after a session is lost) |
//! | the channels a session owns | the member's assignment, under the cooperative-sticky assignor (incremental rebalances: only moved partitions stop) |
//! | OPEN → CLOSING → CLOSE (hand-over) | a revoked partition is marked CLOSING and the worker is woken at once; its channel actor finishes the batch in delivery, commits, and reports CLOSE; the rebalance callback returns only then (bounded by [`KafkaOptions::revoke_wait`]), so the next owner starts at that commit |
//! | assigned → OPEN | the channel actor starts at the group's committed offset (the partition's first retained offset when the group has none) |
//! | checkpoint | a synchronous offset commit (on hand-over and shutdown, and per the checkpoint policy otherwise) |
//! | lease version / fence | a version per assignment of a partition in this member; a read or commit with an older version, of a partition no longer assigned, or of a member the group fenced, is "ownership lost": the channel stops without checkpointing. The group's generation fences what the broker sees: a commit refused with ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID or REBALANCE_IN_PROGRESS is ownership lost |
//! | heartbeat | the consumer's own heartbeats keep the membership; the worker's heartbeat reports its channels (CLOSE releases a revoke) and proves the membership with a commit of the current checkpoints, fenced by the generation, so that a member resumed after a freeze delivers nothing before the broker has said it still belongs |
//! | heartbeat timeout | `session.timeout.ms` (the worker's `heartbeat_timeout`; the broker's bounds apply, 6 s to 30 min by default); the worker steps down after half of it without a proven heartbeat |
//! | retention | an offset below the log start (at the start of a lease, or a jump in a read: librdkafka's reset to the log's start is compared with the offset asked for, never taken silently) is "checkpoint out of range", handled by the worker's [`OutOfRangePolicy`](super::OutOfRangePolicy) |
//! | processing timeout | `max.poll.interval.ms` semantics: a subscriber that does not acknowledge within the processing timeout pauses delivery, and after the subscriber grace period the worker shuts its session down, so the member leaves the group and its partitions move (the consumer is polled by a thread of its own, so librdkafka's own poll interval never fires for a slow subscriber) |
//! | service unavailable | a broker loss is retried with backoff by librdkafka and the channels; the group keeps its members while they heartbeat |
//!
//! Records keep their order within a partition; offsets are the records' sequence numbers (they may have
//! gaps: compaction, transaction markers). Delivery is at-least-once: after a hand-over or a crash, records
//! after a partition's last commit are delivered again.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use arbor_actors::supervisor::BoxError;
//! use arbor_actors::tunnel::kafka::{KafkaOptions, KafkaSource};
//! use arbor_actors::tunnel::{Batch, Subscriber, TunnelOptions, TunnelWorker};
//!
//! struct Print;
//! impl Subscriber for Print {
//!     async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
//!         println!("partition {}: {} records", batch.channel_id, batch.records.len());
//!         Ok(())
//!     }
//! }
//!
//! let kafka = KafkaOptions::new("127.0.0.1:9092", "orders", "billing");
//! let options = TunnelOptions::new("orders"); // the worker's name (registry keys); the topic is kafka.topic
//! let worker = TunnelWorker::builder(options.clone())
//!     .source(Arc::new(KafkaSource::new(kafka, &options)?))
//!     .run_subscriber(Print)
//!     .start()
//!     .await?;
//! // ...
//! worker.shutdown(Duration::from_secs(30)).await?; // commits flushed, the member leaves the group
//! # Ok(()) }
//! ```

mod errors;
mod options;
mod source;

pub use errors::{kind_of, KafkaRefused};
pub use options::{KafkaOptions, KafkaSasl, KafkaTls};
/// The librdkafka binding this source is built on (to produce records, create topics, ...).
pub use rdkafka;
pub use source::KafkaSource;
