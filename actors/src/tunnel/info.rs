//! What the registry holds for tunnel workers and channels, and the events they publish.

use std::time::SystemTime;

use arbor_proto::tunnel::domain::ChannelStatus;
use serde::Serialize;

/// A registry entry of the tunnel module: a worker (`tunnel/<tunnel id>`) or one of its channels
/// (`tunnel/<tunnel id>/channel/<channel id>`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TunnelEntry {
    /// A worker.
    Worker(WorkerInfo),
    /// A channel.
    Channel(ChannelInfo),
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    /// Opening a session (or waiting to, after a failure).
    Connecting,
    /// In a session: heartbeating, running its channels.
    Active,
    /// Delivery paused: the subscriber is gone or failed, waiting for one to be attached.
    Paused,
    /// No session: the subscriber did not come back within the grace period; waiting for one to be attached.
    Detached,
    /// Shutting down.
    Stopping,
}

/// A worker, as its registry entry and [`TunnelHandle::info`](super::TunnelHandle::info) describe it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerInfo {
    /// The tunnel.
    pub tunnel_id: String,
    /// The current session's client id.
    pub client_id: Option<String>,
    /// Where the worker is.
    pub status: WorkerStatus,
    /// How many channels it runs.
    pub channels: usize,
    /// When its last heartbeat succeeded (serialized as RFC 3339, to the millisecond).
    #[serde(serialize_with = "rfc3339_millis")]
    pub last_heartbeat: Option<SystemTime>,
    /// Sessions opened so far (each has a new client id).
    pub sessions: u64,
}

/// A channel, as its registry entry describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelInfo {
    /// The tunnel.
    pub tunnel_id: String,
    /// The session's client id.
    pub client_id: String,
    /// The channel.
    pub channel_id: u32,
    /// `Open` or `Closing`.
    #[serde(serialize_with = "status_name")]
    pub status: ChannelStatus,
    /// The lease's version.
    pub version: i64,
    /// The last checkpoint written: every record below it was delivered.
    pub checkpoint: u64,
    /// Records acknowledged by the subscriber in this lease.
    pub delivered: u64,
    /// Records appended but not yet delivered, as of the last time the service said.
    pub lag: Option<u64>,
    /// Records trimmed by retention before they could be delivered (skipped per the out-of-range policy).
    pub lost_to_retention: u64,
}

fn rfc3339_millis<S: serde::Serializer>(at: &Option<SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serializer.collect_str(&humantime::format_rfc3339_millis(*at)),
        None => serializer.serialize_none(),
    }
}

fn status_name<S: serde::Serializer>(status: &ChannelStatus, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(status)
}

/// Something a worker or one of its channels did, for [`TunnelHandle::events`](super::TunnelHandle::events).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TunnelEvent {
    /// A session opened with this client id.
    Connected {
        /// The client id.
        client_id: String,
    },
    /// The session ended without a graceful shutdown (heartbeat timeout, client expired); the worker starts
    /// over with a new client id.
    SessionLost {
        /// The session's client id.
        client_id: String,
        /// Why.
        reason: String,
    },
    /// The service gave this worker a channel.
    ChannelAssigned {
        /// The channel.
        channel_id: u32,
        /// The lease's version.
        version: i64,
        /// Where reading resumes.
        position: u64,
    },
    /// A channel left this worker.
    ChannelReleased {
        /// The channel.
        channel_id: u32,
        /// Why (drained for a rebalance, no longer owned, crashed, gave up after errors...).
        reason: String,
    },
    /// A base channel was read and checkpointed to its end.
    ChannelTerminated {
        /// The channel.
        channel_id: u32,
    },
    /// A checkpoint was written.
    Checkpointed {
        /// The channel.
        channel_id: u32,
        /// Every record below it was delivered.
        position: u64,
    },
    /// Retention trimmed records before they were delivered; reading resumed after them.
    RecordsLostToRetention {
        /// The channel.
        channel_id: u32,
        /// How many.
        records: u64,
    },
    /// Delivery paused: the subscriber died, or did not acknowledge within the processing timeout.
    SubscriberLost {
        /// Why.
        reason: String,
    },
    /// A subscriber was attached; delivery resumes.
    SubscriberAttached,
    /// The worker stopped for good on an error it cannot retry.
    Fatal {
        /// The error, rendered with its causes.
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn a_heartbeat_time_serializes_as_rfc3339() {
        let info = WorkerInfo {
            tunnel_id: "t".into(),
            client_id: None,
            status: WorkerStatus::Active,
            channels: 0,
            last_heartbeat: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            sessions: 1,
        };
        let json = serde_json::to_value(TunnelEntry::Worker(info)).unwrap();
        assert_eq!(json["last_heartbeat"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["status"], "active");
    }
}
