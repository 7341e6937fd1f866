//! The tunnel service as the worker and its channels see it: the [`TunnelSource`] trait, in domain types,
//! and [`GrpcSource`], its implementation over arbor's tunnel protocol. This is the only module that knows the
//! RPCs: another source (a hosted tunnel service, a log engine) is another implementation of the trait, and
//! the actors do not change.

mod stream;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arbor_proto::tunnel::domain::{ChannelStatus, ChannelType, ConversionError, Version};
use arbor_proto::tunnel::error::ErrorKind;
use arbor_proto::tunnel::v1;
use arbor_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::error::TunnelError;
use crate::connection::{ConnectionChannel, ConnectionHandle, ConnectionLease, FailureClass};

/// A consumer session: the client id and secret the service gave at `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The tunnel.
    pub tunnel_id: Arc<str>,
    /// The client id; every call of the session carries it. Public: the service shows it to anyone.
    pub client_id: Arc<str>,
    /// The session's secret; every call of the session carries it, and only it proves the call is this
    /// session's. Debug redacts it.
    pub session_token: SessionToken,
    /// The heartbeat timeout the service applies to this client.
    pub heartbeat_timeout: Duration,
}

/// A session's secret (`session_token` in the protocol). Debug never shows it; [`SessionToken::expose`] is
/// for the requests that carry it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(Arc<str>);

impl SessionToken {
    /// Wraps the token the service gave.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        SessionToken(token.into())
    }

    /// The token itself, to put in a request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(redacted)")
    }
}

/// The right to read and checkpoint one channel: a session, the channel, and the version of the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelLease {
    /// The session.
    pub session: Session,
    /// The channel.
    pub channel_id: u32,
    /// The lease's version (fences reads and checkpoints).
    pub version: Version,
}

/// A channel as the service lists it in a heartbeat answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerChannel {
    /// The channel.
    pub channel_id: u32,
    /// `Open` or `Closing`.
    pub status: ChannelStatus,
    /// The service's version.
    pub version: Version,
    /// Base or stream.
    pub channel_type: ChannelType,
}

/// A channel as the worker reports it in a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedChannel {
    /// The channel.
    pub channel_id: u32,
    /// Its status: `Open` or `Closing` (informative), or a transition (`Close`, `Terminated`).
    pub status: ChannelStatus,
    /// Its version (for a transition, the service's version + 1).
    pub version: Version,
}

/// Where a channel resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The first record not yet delivered.
    pub position: u64,
    /// The first record the service still keeps.
    pub first_retained: u64,
    /// The position the next appended record will get.
    pub end: u64,
    /// Base or stream.
    pub channel_type: ChannelType,
    /// The channel is sealed and the checkpoint is at its end.
    pub finished: bool,
}

/// One record of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its position in the channel.
    pub sequence: u64,
    /// The key it was appended with.
    pub key: Bytes,
    /// Its payload.
    pub value: Bytes,
    /// When the service accepted it.
    pub append_time: SystemTime,
}

/// What one read returned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadBatch {
    /// Consecutive records from the position asked for.
    pub records: Vec<Record>,
    /// Where the next read continues.
    pub next: u64,
    /// The channel is sealed and `next` is its end: nothing will ever follow.
    pub finished: bool,
}

/// What the service accepts, as far as a worker's options go (`arbor.tunnel.v1.ServiceLimits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLimits {
    /// Most records one read message may carry (a read asks for at most this many).
    pub max_records_per_message: u32,
    /// Longest long-poll wait of a read.
    pub max_read_wait: Duration,
    /// Shortest heartbeat timeout a client may ask for.
    pub min_heartbeat_timeout: Duration,
    /// Longest heartbeat timeout a client may ask for.
    pub max_heartbeat_timeout: Duration,
    /// Largest response message the service sends, in bytes (the client's decode limit must be at least this).
    pub max_response_bytes: u64,
}

impl ServiceLimits {
    fn from_wire(limits: &v1::ServiceLimits) -> Self {
        ServiceLimits {
            max_records_per_message: limits.max_records_per_message,
            max_read_wait: Duration::from_millis(limits.max_read_wait_ms),
            min_heartbeat_timeout: Duration::from_millis(limits.min_heartbeat_timeout_ms),
            max_heartbeat_timeout: Duration::from_millis(limits.max_heartbeat_timeout_ms),
            max_response_bytes: limits.max_response_bytes,
        }
    }
}

/// The calls a tunnel worker makes. Every error carries its [`ErrorKind`] (see [`TunnelError::kind`]).
pub trait TunnelSource: Send + Sync + 'static {
    /// Opens a session on `tunnel_id` (a new client id each time).
    fn connect<'a>(
        &'a self,
        tunnel_id: &'a str,
        client_tag: &'a str,
        heartbeat_timeout: Duration,
    ) -> BoxFuture<'a, Result<Session, TunnelError>>;

    /// Keeps the session alive, reports the channels, and returns the ones the session owns.
    fn heartbeat<'a>(
        &'a self,
        session: &'a Session,
        channels: &'a [ReportedChannel],
    ) -> BoxFuture<'a, Result<Vec<ServerChannel>, TunnelError>>;

    /// Where the lease's channel resumes.
    fn get_checkpoint<'a>(
        &'a self,
        lease: &'a ChannelLease,
    ) -> BoxFuture<'a, Result<CheckpointInfo, TunnelError>>;

    /// Reads up to `max_records` from `from`, waiting up to `wait` for a first record.
    fn read<'a>(
        &'a self,
        lease: &'a ChannelLease,
        from: u64,
        max_records: u32,
        wait: Duration,
    ) -> BoxFuture<'a, Result<ReadBatch, TunnelError>>;

    /// Records that every record below `position` was delivered.
    fn checkpoint<'a>(
        &'a self,
        lease: &'a ChannelLease,
        position: u64,
    ) -> BoxFuture<'a, Result<(), TunnelError>>;

    /// Ends the session: the service releases its channels at once.
    fn shutdown<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<(), TunnelError>>;

    /// The service's limits, asked once at the worker's start so that its options fit them; `None` when the
    /// service does not say (an older server), and the options are used as they are.
    fn limits(&self) -> BoxFuture<'_, Result<Option<ServiceLimits>, TunnelError>> {
        Box::pin(async { Ok(None) })
    }

    /// For a source whose assignment changes on its own, between heartbeats (a Kafka rebalance): a counter
    /// bumped at each change. The worker heartbeats at once when it moves, so that a revoked channel is
    /// drained and an assigned one started without waiting for the heartbeat interval. `None` (the default):
    /// changes are learnt at the heartbeats. The worker stops watching when the sender is dropped.
    fn assignment_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// How [`GrpcSource`] reaches the service.
#[derive(Debug, Clone)]
enum Connection {
    Handle(ConnectionHandle),
    Pooled(Arc<ConnectionLease>),
}

impl Connection {
    fn handle(&self) -> &ConnectionHandle {
        match self {
            Connection::Handle(h) => h,
            Connection::Pooled(lease) => lease.handle(),
        }
    }
}

/// [`TunnelSource`] over arbor's tunnel protocol (`arbor.tunnel.v1`), through an arbor connection: calls
/// inherit its backoff, health checks and loss detection, and carry its credentials.
#[derive(Debug, Clone)]
pub struct GrpcSource {
    connection: Connection,
    call_timeout: Duration,
    /// The largest response message decoded: the service's `max_response_bytes` once it said (tonic's 4 MiB
    /// default before); shared by the clones.
    decode_limit: Arc<AtomicUsize>,
    /// Each channel's read stream between two of its reads (see [`stream`]); shared by the clones.
    reads: Arc<stream::ParkedReads>,
}

/// tonic's default decode limit.
const DEFAULT_DECODE_LIMIT: usize = 4 << 20;

type Client = TunnelServiceClient<ConnectionChannel>;

impl GrpcSource {
    /// A source on a connection this worker uses alone (or shares by cloning the handle).
    pub fn new(connection: ConnectionHandle, call_timeout: Duration) -> Self {
        GrpcSource {
            connection: Connection::Handle(connection),
            call_timeout,
            decode_limit: Arc::new(AtomicUsize::new(DEFAULT_DECODE_LIMIT)),
            reads: Arc::default(),
        }
    }

    /// A source on a pooled connection; the lease is released when the last clone of the source goes.
    pub fn pooled(lease: ConnectionLease, call_timeout: Duration) -> Self {
        GrpcSource {
            connection: Connection::Pooled(Arc::new(lease)),
            call_timeout,
            decode_limit: Arc::new(AtomicUsize::new(DEFAULT_DECODE_LIMIT)),
            reads: Arc::default(),
        }
    }

    /// A client on the connection's following channel: each call goes to the current transport, carries the
    /// credentials, and waits (within its deadline) while the connection connects.
    async fn client(&self) -> Result<Client, TunnelError> {
        Ok(TunnelServiceClient::new(self.connection.handle().channel())
            .max_decoding_message_size(self.decode_limit.load(Ordering::Relaxed)))
    }

    /// Takes the service's limits: decodes responses up to its `max_response_bytes`.
    fn adopt(&self, limits: &v1::ServiceLimits) -> ServiceLimits {
        let limits = ServiceLimits::from_wire(limits);
        if limits.max_response_bytes > 0 {
            let bytes = usize::try_from(limits.max_response_bytes).unwrap_or(usize::MAX);
            self.decode_limit
                .store(bytes.max(DEFAULT_DECODE_LIMIT), Ordering::Relaxed);
        }
        limits
    }

    fn request<T>(&self, message: T, extra: Duration) -> tonic::Request<T> {
        self.connection
            .handle()
            .request_with_timeout(message, self.call_timeout + extra)
    }

    /// The error for a failed call. A transport failure can surface under any code (a dropped connection is
    /// often `UNKNOWN`), so the connection classifies first: lost connections and missed deadlines are
    /// retryable whatever the code says, and the connection checks its health at once.
    fn failed(&self, call: &'static str, status: tonic::Status) -> TunnelError {
        let kind = match self.connection.handle().report_failure(&status) {
            FailureClass::ConnectionLost | FailureClass::Timeout => ErrorKind::Retryable,
            FailureClass::Server => ErrorKind::of(&status),
        };
        TunnelError::Call { call, kind, status }
    }

    fn malformed(call: &'static str) -> impl Fn(ConversionError) -> TunnelError {
        move |err| TunnelError::Malformed {
            call,
            field: err.field().to_string(),
            reason: err.to_string(),
        }
    }

    /// Reads the next batch: from the channel's parked stream when this read continues it, else from a stream
    /// opened here, "to the end" in messages of `max_records` (see [`stream`]).
    async fn do_read(
        &self,
        lease: &ChannelLease,
        from: u64,
        max_records: u32,
        wait: Duration,
    ) -> Result<ReadBatch, TunnelError> {
        const CALL: &str = "ReadRecords";
        // A parked stream is used while at least half its deadline (call timeout + wait) is left, more than a
        // next message needs.
        if let Some(mut open) = self.reads.take(lease, from, max_records, self.call_timeout / 2) {
            if let Some(batch) = open.next_batch(|s| self.failed(CALL, s)).await? {
                return Ok(self.reads.keep(lease, open, batch));
            }
            // It ended at the channel's end: a fresh stream waits there for what comes next.
        }
        let request = v1::ReadRecordsRequest {
            tunnel_id: lease.session.tunnel_id.to_string(),
            client_id: lease.session.client_id.to_string(),
            session_token: lease.session.session_token.expose().to_string(),
            channel_id: lease.channel_id,
            channel_version: lease.version.get(),
            from_sequence_number: from,
            max_records_per_message: max_records,
            max_records: 0,
            max_wait_ms: wait.as_millis() as u64,
        };
        let opened = Instant::now();
        let stream = self
            .client()
            .await?
            .read_records(self.request(request, wait))
            .await
            .map_err(|s| self.failed(CALL, s))?
            .into_inner();
        let mut open = stream::OpenRead::new(lease, from, max_records, opened, stream);
        match open.next_batch(|s| self.failed(CALL, s)).await? {
            Some(batch) => Ok(self.reads.keep(lease, open, batch)),
            // Nothing came within the wait.
            None => Ok(ReadBatch {
                records: Vec::new(),
                next: from,
                finished: false,
            }),
        }
    }
}

impl TunnelSource for GrpcSource {
    fn connect<'a>(
        &'a self,
        tunnel_id: &'a str,
        client_tag: &'a str,
        heartbeat_timeout: Duration,
    ) -> BoxFuture<'a, Result<Session, TunnelError>> {
        async move {
            let request = v1::ConnectTunnelRequest {
                tunnel_id: tunnel_id.to_string(),
                client_tag: client_tag.to_string(),
                heartbeat_timeout_ms: heartbeat_timeout.as_millis() as u64,
            };
            let reply = self
                .client()
                .await?
                .connect_tunnel(self.request(request, Duration::ZERO))
                .await
                .map_err(|s| self.failed("ConnectTunnel", s))?
                .into_inner();
            if let Some(limits) = &reply.limits {
                self.adopt(limits);
            }
            if reply.client_id.is_empty() {
                return Err(TunnelError::Malformed {
                    call: "ConnectTunnel",
                    field: "client_id".into(),
                    reason: "is empty".into(),
                });
            }
            Ok(Session {
                tunnel_id: Arc::from(tunnel_id),
                client_id: Arc::from(reply.client_id),
                session_token: SessionToken::new(reply.session_token),
                heartbeat_timeout: Duration::from_millis(reply.heartbeat_timeout_ms),
            })
        }
        .boxed()
    }

    fn heartbeat<'a>(
        &'a self,
        session: &'a Session,
        channels: &'a [ReportedChannel],
    ) -> BoxFuture<'a, Result<Vec<ServerChannel>, TunnelError>> {
        async move {
            const CALL: &str = "Heartbeat";
            // A channel reported ended reads no more: its parked stream goes now, not at its next read.
            let ended = channels
                .iter()
                .filter(|c| matches!(c.status, ChannelStatus::Close | ChannelStatus::Terminated))
                .map(|c| c.channel_id);
            self.reads.drop_channels(&session.client_id, ended);
            let request = v1::HeartbeatRequest {
                tunnel_id: session.tunnel_id.to_string(),
                client_id: session.client_id.to_string(),
                session_token: session.session_token.expose().to_string(),
                channels: channels
                    .iter()
                    .map(|c| v1::ChannelState {
                        channel_id: c.channel_id,
                        status: c.status.into(),
                        version: c.version.get(),
                        // Set by the service only.
                        channel_type: v1::ChannelType::Unspecified as i32,
                    })
                    .collect(),
            };
            let reply = self
                .client()
                .await?
                .heartbeat(self.request(request, Duration::ZERO))
                .await
                .map_err(|s| self.failed(CALL, s))?
                .into_inner();
            reply
                .channels
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let status = ChannelStatus::from_wire(c.status, format!("channels[{i}].status"))
                        .map_err(Self::malformed(CALL))?;
                    if !status.is_owned() {
                        return Err(TunnelError::Malformed {
                            call: CALL,
                            field: format!("channels[{i}].status"),
                            reason: format!("is {status}, where an owned channel is OPEN or CLOSING"),
                        });
                    }
                    Ok(ServerChannel {
                        channel_id: c.channel_id,
                        status,
                        version: Version(c.version),
                        channel_type: ChannelType::from_wire(
                            c.channel_type,
                            format!("channels[{i}].channel_type"),
                        )
                        .map_err(Self::malformed(CALL))?,
                    })
                })
                .collect()
        }
        .boxed()
    }

    fn get_checkpoint<'a>(
        &'a self,
        lease: &'a ChannelLease,
    ) -> BoxFuture<'a, Result<CheckpointInfo, TunnelError>> {
        async move {
            const CALL: &str = "GetCheckpoint";
            let request = v1::GetCheckpointRequest {
                tunnel_id: lease.session.tunnel_id.to_string(),
                client_id: lease.session.client_id.to_string(),
                session_token: lease.session.session_token.expose().to_string(),
                channel_id: lease.channel_id,
                channel_version: lease.version.get(),
            };
            let reply = self
                .client()
                .await?
                .get_checkpoint(self.request(request, Duration::ZERO))
                .await
                .map_err(|s| self.failed(CALL, s))?
                .into_inner();
            Ok(CheckpointInfo {
                position: reply.checkpoint_sequence_number,
                first_retained: reply.first_retained_sequence_number,
                end: reply.end_sequence_number,
                channel_type: ChannelType::from_wire(reply.channel_type, "channel_type")
                    .map_err(Self::malformed(CALL))?,
                finished: reply.finished,
            })
        }
        .boxed()
    }

    fn read<'a>(
        &'a self,
        lease: &'a ChannelLease,
        from: u64,
        max_records: u32,
        wait: Duration,
    ) -> BoxFuture<'a, Result<ReadBatch, TunnelError>> {
        self.do_read(lease, from, max_records, wait).boxed()
    }

    fn checkpoint<'a>(
        &'a self,
        lease: &'a ChannelLease,
        position: u64,
    ) -> BoxFuture<'a, Result<(), TunnelError>> {
        async move {
            let request = v1::CheckpointRequest {
                tunnel_id: lease.session.tunnel_id.to_string(),
                client_id: lease.session.client_id.to_string(),
                session_token: lease.session.session_token.expose().to_string(),
                channel_id: lease.channel_id,
                channel_version: lease.version.get(),
                sequence_number: position,
            };
            self.client()
                .await?
                .checkpoint(self.request(request, Duration::ZERO))
                .await
                .map_err(|s| self.failed("Checkpoint", s))?;
            Ok(())
        }
        .boxed()
    }

    fn shutdown<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<(), TunnelError>> {
        async move {
            self.reads.drop_session(&session.client_id);
            let request = v1::ShutdownRequest {
                tunnel_id: session.tunnel_id.to_string(),
                client_id: session.client_id.to_string(),
                session_token: session.session_token.expose().to_string(),
            };
            self.client()
                .await?
                .shutdown(self.request(request, Duration::ZERO))
                .await
                .map_err(|s| self.failed("Shutdown", s))?;
            Ok(())
        }
        .boxed()
    }

    fn limits(&self) -> BoxFuture<'_, Result<Option<ServiceLimits>, TunnelError>> {
        async move {
            let reply = self
                .client()
                .await?
                .get_limits(self.request(v1::GetLimitsRequest {}, Duration::ZERO))
                .await;
            match reply {
                Ok(reply) => Ok(reply.into_inner().limits.map(|l| self.adopt(&l))),
                // A server from before GetLimits: nothing to fit.
                Err(status) if status.code() == tonic::Code::Unimplemented => Ok(None),
                Err(status) => Err(self.failed("GetLimits", status)),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sessions_debug_shows_its_client_id_but_never_its_token() {
        let session = Session {
            tunnel_id: Arc::from("t-1"),
            client_id: Arc::from("c-0123"),
            session_token: SessionToken::new("9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
            heartbeat_timeout: Duration::from_secs(10),
        };
        let lease = ChannelLease {
            session: session.clone(),
            channel_id: 0,
            version: Version(3),
        };
        for shown in [
            format!("{session:?}"),
            format!("{lease:?}"),
            format!("{session:#?}"),
        ] {
            assert!(shown.contains("c-0123"), "{shown}");
            assert!(!shown.contains("9f8e7d6c"), "{shown}");
        }
        assert_eq!(session.session_token.expose(), "9f8e7d6c5b4a39281706f5e4d3c2b1a0");
    }
}
