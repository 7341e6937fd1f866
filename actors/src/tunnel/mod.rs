//! Tunnel workers: consume a change-stream tunnel at-least-once, in order within each channel, under
//! supervision.
//!
//! A *tunnel* is a change stream split into *channels* (partitions), served by a tunnel service (arbor
//! brings one: `arbor serve`). Consumers in any number of processes share its channels: the service gives
//! each channel to one consumer at a time and moves channels between consumers as they come and go. A
//! [`TunnelWorker`] is one consumer: it keeps a session with the service (a client id, heartbeats), runs one
//! channel actor per channel it is given, and hands the records to a subscriber.
//!
//! # Guarantees
//!
//! - **At-least-once, in order within a channel.** A channel hands the subscriber one batch at a time and
//!   checkpoints only what the subscriber acknowledged; whoever owns the channel next resumes at the
//!   checkpoint, so records after it may be delivered again, never skipped (except records trimmed by the
//!   service's retention before anyone read them, which the [`OutOfRangePolicy`] makes loud).
//! - **Fenced.** Reads and checkpoints carry the channel's lease version: a worker that lost a channel (it
//!   froze, its session expired) can neither read nor move its checkpoint.
//! - **Hand-over in two steps.** A channel the service moves away is drained (the batch in delivery is
//!   finished and checkpointed) and reported CLOSE before anyone else gets it.
//! - **Nothing stalls silently.** A crashed channel actor is reported CLOSE and reassigned; a subscriber that
//!   dies or stops acknowledging (processing timeout) pauses delivery, and if no subscriber is attached
//!   within the grace period the worker shuts its session down so other consumers take the channels; a
//!   worker that cannot reach the service for half its heartbeat timeout delivers nothing more and starts over
//!   with a new client id.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use arbor_actors::connection::{ConnectionConfig, ConnectionHandle};
//! use arbor_actors::supervisor::BoxError;
//! use arbor_actors::tunnel::{Batch, Subscriber, TunnelOptions, TunnelWorker};
//!
//! struct Print;
//! impl Subscriber for Print {
//!     async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
//!         println!("channel {}: {} records", batch.channel_id, batch.records.len());
//!         Ok(()) // acknowledged: these records may be checkpointed
//!     }
//! }
//!
//! let service = ConnectionHandle::start(ConnectionConfig::parse("grpc://127.0.0.1:7700?disableTls=true")?).await?;
//! let worker = TunnelWorker::builder(TunnelOptions::new("t-1234"))
//!     .connection(service)
//!     .run_subscriber(Print)
//!     .start()
//!     .await?;
//! // ...
//! worker.shutdown(Duration::from_secs(30)).await?; // checkpoints flushed, session shut down
//! # Ok(()) }
//! ```
//!
//! Under a tree, start workers under a [`DynamicSupervisor`](crate::supervisor::DynamicSupervisor)
//! ([`TunnelWorkerBuilder::start_under`]); the worker reaches the service through a pooled connection
//! ([`TunnelWorkerBuilder::pool`]) and registers itself and its channels, with their positions, in a
//! [`Registry`](crate::registry::Registry) ([`TunnelEntry`]).
//!
//! # Layout
//!
//! [`state`] holds the channel state machine's merge rules as pure functions; [`source`] is the only code
//! that knows the RPCs ([`TunnelSource`] is the seam for other services); the worker and channel actors are
//! in `worker/` and `channel/`, the subscriber side in `subscriber.rs`.

mod backoff;
mod channel;
mod error;
mod handle;
mod info;
#[cfg(feature = "kafka")]
pub mod kafka;
mod options;
pub mod source;
pub mod state;
mod subscriber;
mod worker;

pub use arbor_proto::tunnel::domain::{ChannelStatus, ChannelType, Version};
pub use backoff::ChannelBackoff;
pub use error::{ErrorKind, TunnelError};
pub use handle::{default_registry, TunnelExit, TunnelHandle, TunnelWorker, TunnelWorkerBuilder};
pub use info::{ChannelInfo, TunnelEntry, TunnelEvent, WorkerInfo, WorkerStatus};
pub use options::{CheckpointPolicy, OutOfRangePolicy, TunnelOptions};
pub use source::{GrpcSource, Record, TunnelSource};
pub use subscriber::{Ack, Batch, Delivery, Nack, Subscriber, SubscriberConcurrency, SubscriberRef};
