//! The storage engine interface: what must survive a crash, and the records themselves.
//!
//! The [`TunnelStore`](super::TunnelStore) keeps the consumer sessions (clients, owners, versions) in memory
//! and calls an [`Engine`] for everything that must outlive the process: tunnel definitions, records, channel
//! metadata (checkpoint, seal, retained range). Writes are submitted as ordered groups of [`WriteOp`]s; the
//! returned [`Ack`] resolves once the group is stored (on the durable engine: fsynced). The store submits while
//! holding the tunnel's lock, so an engine sees a channel's writes in sequence order and must apply them in the
//! order submitted.

use std::fmt;

use arbor_proto::tunnel::domain::ChannelType;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::types::ChannelAppend;
use crate::tunnel_service::error::StoreError;

/// A tunnel's definition, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelDef {
    /// Internal number; the tunnel id is its 16-digit hex form. Random, never reused.
    pub uid: u64,
    /// The name.
    pub name: String,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// The channels, by id.
    pub channels: Vec<ChannelDef>,
    /// Retention.
    pub retention: Retention,
}

/// One channel's definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelDef {
    /// BASE or STREAM.
    pub channel_type: ChannelType,
    /// The parent base channel, if any.
    pub parent: Option<u32>,
}

/// A tunnel's retention policy; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Maximum record age in ms.
    pub max_age_ms: u64,
    /// Maximum bytes (keys + values) per channel.
    pub max_bytes_per_channel: u64,
}

/// A channel's durable metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelMeta {
    /// The first retained sequence number.
    pub first_retained: u64,
    /// The checkpoint (first record not yet delivered).
    pub checkpoint: u64,
    /// The channel version the checkpoint was written under.
    pub checkpoint_version: i64,
    /// The end sequence number at which the channel was sealed, if it was.
    pub sealed_end: Option<u64>,
    /// TERMINATED (a sealed channel whose end was checkpointed and reported).
    pub terminated: bool,
}

/// A stored record.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its sequence number.
    pub seq: u64,
    /// When it was accepted, ms since the Unix epoch.
    pub append_ms: u64,
    /// Its key.
    pub key: Bytes,
    /// Its value.
    pub value: Bytes,
}

impl fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredRecord")
            .field("seq", &self.seq)
            .field("append_ms", &self.append_ms)
            .field("key_len", &self.key.len())
            .field("value_len", &self.value.len())
            .finish()
    }
}

/// One write; a group of them is stored atomically.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Store a new tunnel's definition (its channels start empty).
    PutTunnel(TunnelDef),
    /// Remove a tunnel, its channels' metadata and all its records.
    DeleteTunnel {
        /// The tunnel.
        uid: u64,
        /// Its channel count.
        channels: u32,
    },
    /// Append records with consecutive sequence numbers from `first_seq`.
    Append {
        /// The tunnel.
        uid: u64,
        /// The channel.
        channel: u32,
        /// The first record's sequence number.
        first_seq: u64,
        /// When the batch was accepted.
        append_ms: u64,
        /// Keys and values.
        records: Vec<(Bytes, Bytes)>,
    },
    /// Replace a channel's metadata.
    PutChannelMeta {
        /// The tunnel.
        uid: u64,
        /// The channel.
        channel: u32,
        /// The new metadata.
        meta: ChannelMeta,
    },
    /// Remember an idempotent producer's last batch (staged with that batch's `Append`s, so both are stored
    /// or neither is).
    PutProducer {
        /// The tunnel.
        uid: u64,
        /// The producer's id.
        producer_id: String,
        /// Its last batch.
        batch: ProducerBatch,
    },
    /// Forget an idempotent producer (the least recently used beyond the tunnel's limit).
    DeleteProducer {
        /// The tunnel.
        uid: u64,
        /// The producer's id.
        producer_id: String,
    },
    /// Remove the records `from..below` of a channel (retention).
    Trim {
        /// The tunnel.
        uid: u64,
        /// The channel.
        channel: u32,
        /// The first removed sequence number.
        from: u64,
        /// The first kept one.
        below: u64,
    },
}

/// An idempotent producer's last stored batch: its sequence number and where its records went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerBatch {
    /// The batch's `producer_sequence`.
    pub sequence: u64,
    /// Where its records went, one entry per channel, by channel id.
    pub appends: Vec<ChannelAppend>,
    /// When the producer was last used, in the tunnel's use order (larger is more recent).
    pub used: u64,
}

/// Resolves once a submitted group of writes is stored, or failed.
pub type Ack = oneshot::Receiver<Result<(), StoreError>>;

/// An append batch as the retention bookkeeping sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchIndex {
    /// Its first sequence number.
    pub first: u64,
    /// How many records.
    pub count: u64,
    /// Their keys and values, in bytes.
    pub bytes: u64,
    /// When it was accepted.
    pub append_ms: u64,
}

/// A tunnel as found in storage at start.
#[derive(Debug, Clone)]
pub struct RecoveredTunnel {
    /// Its definition.
    pub def: TunnelDef,
    /// Its channels, by id.
    pub channels: Vec<RecoveredChannel>,
    /// Its idempotent producers' last batches, by producer id.
    pub producers: Vec<(String, ProducerBatch)>,
}

/// A channel as found in storage at start.
#[derive(Debug, Clone, Default)]
pub struct RecoveredChannel {
    /// Its metadata.
    pub meta: ChannelMeta,
    /// The next sequence number (one past the last stored record).
    pub end: u64,
    /// Its retained records, grouped into batches.
    pub batches: Vec<BatchIndex>,
}

/// Where tunnels, records and channel metadata are kept.
pub trait Engine: Send + Sync + 'static {
    /// A short name for logs ("memory", "fjall").
    fn name(&self) -> &'static str;

    /// Whether [`Engine::submit`]'s acks mean the data survives a crash of the process (and of the machine,
    /// within the engine's fsync policy).
    fn is_durable(&self) -> bool;

    /// Whether [`Engine::read`] may block on I/O (then the store calls it off the async runtime's threads).
    fn reads_block(&self) -> bool;

    /// Every stored tunnel, to rebuild the store's state at start.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on an I/O failure, [`StoreError::Corrupt`] when stored bytes do not decode.
    fn recover(&self) -> Result<Vec<RecoveredTunnel>, StoreError>;

    /// Called once when a store opens, before anything else is written: a number larger than every earlier
    /// open's of the same storage, stored before it returns. The store derives channel versions from it, so that
    /// versions keep growing across restarts. An engine that keeps nothing across restarts answers 0.
    ///
    /// # Errors
    /// [`StoreError::Engine`] when the number cannot be stored.
    fn start_epoch(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Whether a write of about `bytes` may be queued now: [`StoreError::QueueFull`] when the engine's queue of
    /// writes not yet stored is at its limit. The store asks before it changes any state for a write it may
    /// refuse (appends, checkpoints), so a refused request leaves nothing behind.
    ///
    /// # Errors
    /// [`StoreError::QueueFull`].
    fn admit(&self, bytes: usize) -> Result<(), StoreError> {
        let _ = bytes;
        Ok(())
    }

    /// Submits a group of writes, stored atomically and after every group submitted before it: an `Ok` ack
    /// also means every group submitted earlier is stored. Never blocks on I/O; the returned [`Ack`] resolves
    /// when the group is stored.
    fn submit(&self, ops: Vec<WriteOp>) -> Ack;

    /// Up to `max_records` records of a channel from `from` on (fewer if they would exceed `max_bytes`, but
    /// at least one), in order. Records are readable once their write was acknowledged.
    ///
    /// # Errors
    /// [`StoreError::Engine`] or [`StoreError::Corrupt`].
    fn read(
        &self,
        uid: u64,
        channel: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StoreError>;

    /// Waits for every submitted write and every read in progress, flushes, stops taking writes and lets go of
    /// the storage (another store may open it as soon as this returns).
    ///
    /// # Errors
    /// [`StoreError::Engine`] if the final flush failed.
    fn close(&self) -> Result<(), StoreError>;
}
