//! The service's settings: request limits and store options, each setter with its default.

use std::path::PathBuf;
use std::time::Duration;

/// Request limits, checked before anything is stored; exceeding one is `INVALID_ARGUMENT` naming the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest record (key + value), in bytes. Default 1 MiB.
    pub max_record_bytes: usize,
    /// Most records in one Append. Default 10,000.
    pub max_batch_records: usize,
    /// Largest Append batch (keys + values), in bytes. Default 8 MiB.
    pub max_batch_bytes: usize,
    /// Most channels in one tunnel. Default 1,024.
    pub max_channels: u32,
    /// Most records in one ReadRecords message. Default 10,000.
    pub max_records_per_message: u32,
    /// Records per ReadRecords message when the request says 0. Default 1,000.
    pub default_records_per_message: u32,
    /// Longest ReadRecords long-poll wait. Default 30 s.
    pub max_wait: Duration,
    /// Longest client tag, in bytes. Default 256.
    pub max_client_tag_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: 1 << 20,
            max_batch_records: 10_000,
            max_batch_bytes: 8 << 20,
            max_channels: 1_024,
            max_records_per_message: 10_000,
            default_records_per_message: 1_000,
            max_wait: Duration::from_secs(30),
            max_client_tag_bytes: 256,
        }
    }
}

impl Limits {
    /// The largest Append message the server decodes: above the batch limit, so an oversized batch meets the
    /// validation that names the field rather than the framework's size check. Other requests are capped at
    /// [`Limits::max_control_request_bytes`].
    pub fn max_request_bytes(&self) -> usize {
        self.max_batch_bytes.saturating_mul(2).max(4 << 20)
    }

    /// The largest request message other than Append the server takes: 64 KiB plus 32 bytes per channel of the
    /// channel limit (a Heartbeat reports, a CreateTunnel lists, each channel at most once, in under 32 bytes).
    /// Only Append carries data; a larger request is refused before it is decoded.
    pub fn max_control_request_bytes(&self) -> usize {
        (64 << 10) + (self.max_channels as usize).saturating_mul(32)
    }

    /// The most channel reports one Heartbeat may carry: a client reports each of its channels at most once,
    /// so the channel limit ([`Limits::max_channels`]).
    pub fn max_heartbeat_reports(&self) -> usize {
        self.max_channels as usize
    }

    /// The largest response message the server encodes (its encoding limit): a ReadRecords message holds
    /// about [`READ_MESSAGE_MAX_BYTES`](super::store::READ_MESSAGE_MAX_BYTES) of keys and values or one record
    /// of up to `max_record_bytes`, plus at most 64 bytes of framing per record; never below gRPC's default
    /// 4 MiB receive limit, which clients have anyway. A larger answer (a ListTunnels of very many tunnels) is
    /// refused with `RESOURCE_EXHAUSTED`.
    pub fn max_response_bytes(&self) -> usize {
        let payload = self.max_record_bytes.max(super::store::READ_MESSAGE_MAX_BYTES);
        let framing = (self.max_records_per_message as usize).saturating_mul(64);
        payload
            .saturating_add(framing)
            .saturating_add(64 << 10)
            .max(4 << 20)
    }

    /// Sets the largest record, key + value (default 1 MiB).
    pub fn max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// Sets the most records per Append (default 10,000).
    pub fn max_batch_records(mut self, records: usize) -> Self {
        self.max_batch_records = records;
        self
    }

    /// Sets the largest Append batch (default 8 MiB).
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// Sets the most channels per tunnel (default 1,024).
    pub fn max_channels(mut self, channels: u32) -> Self {
        self.max_channels = channels;
        self
    }
}

/// Where and how the store keeps tunnels, and the consumer-session timings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreOptions {
    /// The data directory: durable when set, in memory when `None` (the default).
    pub data_dir: Option<PathBuf>,
    /// Heartbeat timeout for a client that asks for 0. Default 30 s.
    pub default_heartbeat_timeout: Duration,
    /// Smallest heartbeat timeout a client may ask for. Default 100 ms.
    pub min_heartbeat_timeout: Duration,
    /// Largest heartbeat timeout a client may ask for. Default 1 h.
    pub max_heartbeat_timeout: Duration,
    /// How long a CLOSING channel waits for its owner's CLOSE before the server takes it back. Default 60 s.
    pub closing_timeout: Duration,
    /// Most live sessions (connected clients) per tunnel; a ConnectTunnel beyond it is `RESOURCE_EXHAUSTED`
    /// until a session shuts down or expires (each holds its slot up to its heartbeat timeout). Default 1,024.
    pub max_sessions_per_tunnel: usize,
    /// How many assignment events each tunnel keeps for [`TunnelStore::assignment_history`](super::TunnelStore::assignment_history).
    /// Default 10,000.
    pub history_capacity: usize,
    /// Most idempotent producers (`producer_id`s) whose last batch a tunnel remembers; the least recently used
    /// is forgotten beyond it (its next batch is then taken as its first). Default 1,000.
    pub max_producers_per_tunnel: usize,
    /// Most bytes of writes waiting for the durable engine's writer (acknowledged ones excluded). An Append or
    /// Checkpoint arriving while the queue is at this limit is refused with `RESOURCE_EXHAUSTED` (retryable)
    /// before anything changes, instead of queueing without bound when the disk does not keep up. A write
    /// larger than the limit is taken when the queue is empty. Default 256 MiB.
    pub max_queued_write_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            data_dir: None,
            default_heartbeat_timeout: Duration::from_secs(30),
            min_heartbeat_timeout: Duration::from_millis(100),
            max_heartbeat_timeout: Duration::from_secs(3_600),
            closing_timeout: Duration::from_secs(60),
            max_sessions_per_tunnel: 1_024,
            history_capacity: 10_000,
            max_producers_per_tunnel: 1_000,
            max_queued_write_bytes: 256 << 20,
        }
    }
}

impl StoreOptions {
    /// In memory (the default): nothing survives the process.
    pub fn in_memory() -> Self {
        StoreOptions::default()
    }

    /// Durable in `dir` (created if missing): whatever was acknowledged survives a crash.
    pub fn durable(dir: impl Into<PathBuf>) -> Self {
        StoreOptions {
            data_dir: Some(dir.into()),
            ..StoreOptions::default()
        }
    }

    /// Sets the heartbeat timeout used when a client asks for 0 (default 30 s).
    pub fn default_heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.default_heartbeat_timeout = timeout;
        self
    }

    /// Sets the closing timeout (default 60 s).
    pub fn closing_timeout(mut self, timeout: Duration) -> Self {
        self.closing_timeout = timeout;
        self
    }

    /// Sets the most live sessions per tunnel (default 1,024).
    pub fn max_sessions_per_tunnel(mut self, sessions: usize) -> Self {
        self.max_sessions_per_tunnel = sessions;
        self
    }

    /// Sets how many idempotent producers each tunnel remembers (default 1,000; at least 1).
    pub fn max_producers_per_tunnel(mut self, producers: usize) -> Self {
        self.max_producers_per_tunnel = producers.max(1);
        self
    }

    /// Sets the most bytes of writes waiting for the durable engine's writer (default 256 MiB).
    pub fn max_queued_write_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_write_bytes = bytes;
        self
    }
}
