//! [`GrpcSource`](super::GrpcSource)'s reads: one `ReadRecords` stream per channel lease, pulled a message (a
//! batch) at a time.
//!
//! A call per batch costs the service a lease check and a stream set-up per batch, and the worker a round trip;
//! a stream opened "to the end" costs one, and HTTP/2 flow control bounds how far the service runs ahead of the
//! channel. A channel reads one batch after the other, so its stream is parked here between two reads, keyed by
//! session and channel, and taken again only by the read that continues it: the same lease version, position
//! and batch size, and opened recently enough that its deadline cannot fall in the next wait. Anything else
//! drops it (which cancels it on the service) and opens another.
//!
//! The service ends a stream at the channel's current end (after its long-poll wait if it had nothing to send),
//! and fails it with `OWNERSHIP_LOST` as soon as the reader stops being the owner, so a parked stream tells
//! nothing a fresh read would not. The streams of channels the worker reports closed at a heartbeat, and every
//! stream of a session at its shutdown or when a later session of the same tunnel parks one, are dropped at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arbor_proto::tunnel::v1;

use super::{ChannelLease, ReadBatch, Record};
use crate::tunnel::error::TunnelError;

const CALL: &str = "ReadRecords";

/// A read stream between two reads of its channel.
pub(super) struct OpenRead {
    tunnel: Arc<str>,
    version: i64,
    /// The position of its next record.
    next: u64,
    /// Records per message.
    batch: u32,
    opened: Instant,
    stream: tonic::Streaming<v1::ReadRecordsResponse>,
}

impl OpenRead {
    pub(super) fn new(
        lease: &ChannelLease,
        from: u64,
        batch: u32,
        opened: Instant,
        stream: tonic::Streaming<v1::ReadRecordsResponse>,
    ) -> Self {
        OpenRead {
            tunnel: Arc::clone(&lease.session.tunnel_id),
            version: lease.version.get(),
            next: from,
            batch,
            opened,
            stream,
        }
    }

    /// Whether this read continues the stream, with at least `fresh_for` of its deadline left.
    fn continues(&self, lease: &ChannelLease, from: u64, batch: u32, fresh_for: Duration) -> bool {
        self.version == lease.version.get()
            && self.next == from
            && self.batch == batch
            && self.opened.elapsed() < fresh_for
    }

    /// The next message as a batch, checked to follow from the stream's position; `None` once the stream ended.
    /// `failed` maps a call error.
    pub(super) async fn next_batch(
        &mut self,
        failed: impl Fn(tonic::Status) -> TunnelError,
    ) -> Result<Option<ReadBatch>, TunnelError> {
        let Some(message) = self.stream.message().await.map_err(failed)? else {
            return Ok(None);
        };
        let mut batch = ReadBatch {
            records: Vec::with_capacity(message.records.len()),
            next: self.next,
            finished: message.finished,
        };
        for record in message.records {
            // Records must follow each other from where the read started; anything else means the two sides
            // disagree on the channel's positions, and the channel resyncs (GetCheckpoint).
            if record.sequence_number != batch.next {
                return Err(TunnelError::Malformed {
                    call: CALL,
                    field: "records.sequence_number".into(),
                    reason: format!("is {} where {} was expected", record.sequence_number, batch.next),
                });
            }
            batch.next += 1;
            batch.records.push(Record {
                sequence: record.sequence_number,
                key: record.key,
                value: record.value,
                append_time: SystemTime::UNIX_EPOCH + Duration::from_millis(record.append_time_unix_ms),
            });
        }
        if message.next_sequence_number != batch.next {
            return Err(TunnelError::Malformed {
                call: CALL,
                field: "next_sequence_number".into(),
                reason: format!(
                    "is {} after records ending at {}",
                    message.next_sequence_number, batch.next
                ),
            });
        }
        self.next = batch.next;
        Ok(Some(batch))
    }
}

/// The parked streams, by session (client id) and channel.
#[derive(Default)]
pub(super) struct ParkedReads(Mutex<HashMap<(Arc<str>, u32), OpenRead>>);

impl std::fmt::Debug for ParkedReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkedReads")
            .field("streams", &self.lock().len())
            .finish()
    }
}

impl ParkedReads {
    fn lock(&self) -> MutexGuard<'_, HashMap<(Arc<str>, u32), OpenRead>> {
        // No critical section below can panic half-way.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The channel's parked stream, if this read continues it (anything else is dropped).
    pub(super) fn take(
        &self,
        lease: &ChannelLease,
        from: u64,
        batch: u32,
        fresh_for: Duration,
    ) -> Option<OpenRead> {
        let key = (Arc::clone(&lease.session.client_id), lease.channel_id);
        let open = self.lock().remove(&key)?;
        open.continues(lease, from, batch, fresh_for).then_some(open)
    }

    /// Parks the stream that read `batch` for the channel's next read, unless the channel is finished; `batch`.
    pub(super) fn keep(&self, lease: &ChannelLease, open: OpenRead, batch: ReadBatch) -> ReadBatch {
        if !batch.finished {
            self.park(lease, open);
        }
        batch
    }

    /// Parks the lease's stream until its next read. A worker has one session of a tunnel at a time: the
    /// streams of its earlier ones (expired) go. (A source shared by workers of other tunnels keeps theirs.)
    fn park(&self, lease: &ChannelLease, open: OpenRead) {
        let (client, tunnel) = (&lease.session.client_id, &lease.session.tunnel_id);
        let mut parked = self.lock();
        parked.retain(|(c, _), other| c == client || other.tunnel != *tunnel);
        parked.insert((Arc::clone(client), lease.channel_id), open);
    }

    /// Drops the streams of `channels` of the session `client_id`.
    pub(super) fn drop_channels(&self, client_id: &str, channels: impl Iterator<Item = u32>) {
        let mut parked = self.lock();
        for channel in channels {
            parked.remove(&(Arc::from(client_id), channel));
        }
    }

    /// Drops every stream of the session `client_id`.
    pub(super) fn drop_session(&self, client_id: &str) {
        self.lock().retain(|(c, _), _| &**c != client_id);
    }
}
