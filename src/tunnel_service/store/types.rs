//! The store's public data types: how requests name tunnels and what the store answers.

use std::time::Duration;

use arbor_proto::tunnel::domain::{ChannelStatus, ChannelType, Version};

use super::engine::{ChannelDef, Retention, StoredRecord};

/// How a request names a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelRef {
    /// By id.
    Id(String),
    /// By name.
    Name(String),
}

impl std::fmt::Display for TunnelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TunnelRef::Id(id) => write!(f, "id {id}"),
            TunnelRef::Name(name) => write!(f, "named {name}"),
        }
    }
}

/// A tunnel to create (already validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTunnel {
    /// The name.
    pub name: String,
    /// The channels.
    pub channels: Vec<ChannelDef>,
    /// Retention.
    pub retention: Retention,
}

/// A tunnel as DescribeTunnel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelDescription {
    /// The id.
    pub id: String,
    /// The name.
    pub name: String,
    /// Creation time, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Retention.
    pub retention: Retention,
    /// The channels, by id.
    pub channels: Vec<ChannelDescription>,
    /// The connected clients, by id.
    pub clients: Vec<ClientDescription>,
}

/// A channel as DescribeTunnel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelDescription {
    /// The id.
    pub id: u32,
    /// Its type.
    pub channel_type: ChannelType,
    /// Its parent base channel.
    pub parent: Option<u32>,
    /// Its status.
    pub status: ChannelStatus,
    /// Its version.
    pub version: Version,
    /// Its owner, when OPEN or CLOSING.
    pub owner: Option<String>,
    /// One past the last acknowledged record.
    pub end: u64,
    /// The first retained sequence number.
    pub first_retained: u64,
    /// The checkpoint.
    pub checkpoint: u64,
    /// Whether sealed.
    pub sealed: bool,
}

/// A client as DescribeTunnel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientDescription {
    /// The id.
    pub id: String,
    /// Its tag.
    pub tag: String,
    /// Its heartbeat timeout.
    pub heartbeat_timeout: Duration,
    /// Time since its last heartbeat.
    pub since_last_heartbeat: Duration,
    /// The channels it owns.
    pub channels: Vec<u32>,
}

/// Where one channel's records of an append went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelAppend {
    /// The channel.
    pub channel: u32,
    /// The first record's sequence number.
    pub first_seq: u64,
    /// How many records.
    pub count: u32,
}

/// An idempotent producer's batch: who sends it and its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRef {
    /// The producer's id (validated: 1 to 64 of `[A-Za-z0-9._-]`).
    pub id: String,
    /// The batch's sequence number.
    pub sequence: u64,
}

/// Append's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The tunnel's id.
    pub tunnel_id: String,
    /// Where each channel's records went, by channel id.
    pub channels: Vec<ChannelAppend>,
    /// Each record's (channel, sequence number), in request order.
    pub records: Vec<(u32, u64)>,
    /// A retry of a stored batch: nothing was stored again.
    pub duplicate: bool,
}

/// GetCheckpoint's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointState {
    /// The checkpoint.
    pub checkpoint: u64,
    /// The first retained sequence number.
    pub first_retained: u64,
    /// One past the last acknowledged record.
    pub end: u64,
    /// The channel's type.
    pub channel_type: ChannelType,
    /// Sealed and checkpointed to the end.
    pub finished: bool,
}

/// One read of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// Consecutive records.
    pub records: Vec<StoredRecord>,
    /// Where the next read continues.
    pub next: u64,
    /// The channel is sealed and `next` is its end.
    pub finished: bool,
}

/// A fenced consumer position: who asks, for which channel, under which version. Debug leaves out the session
/// token.
#[derive(Clone, Copy)]
pub struct LeaseClaim<'a> {
    /// The tunnel id.
    pub tunnel_id: &'a str,
    /// The client id.
    pub client_id: &'a str,
    /// The session's secret, as the request carries it (checked in constant time, never shown).
    pub session_token: &'a str,
    /// The channel.
    pub channel: u32,
    /// The version of the client's lease.
    pub version: Version,
}

impl std::fmt::Debug for LeaseClaim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseClaim")
            .field("tunnel_id", &self.tunnel_id)
            .field("client_id", &self.client_id)
            .field("channel", &self.channel)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A consumer session as ConnectTunnel opens it. Debug leaves out the token.
#[derive(Clone)]
pub struct NewSession {
    /// The client id: names the session, shown to anyone who describes the tunnel.
    pub client_id: String,
    /// The session's secret: every later call of the session must carry it.
    pub session_token: String,
    /// The heartbeat timeout in force.
    pub heartbeat_timeout: Duration,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("client_id", &self.client_id)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .finish_non_exhaustive()
    }
}
