//! The generated `TunnelService` trait over the store: validate, call the store, map the result. Thin on
//! purpose; the rules live in `store/` and `assign.rs`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arbor_proto::tunnel::domain::Version;
use arbor_proto::tunnel::v1;
use arbor_proto::tunnel::v1::tunnel_service_server::TunnelService;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::config::Limits;
use super::error::ServiceError;
use super::store::{LeaseClaim, TunnelDescription, TunnelStore, READ_MESSAGE_MAX_BYTES};
use super::validate;
use crate::serving::{Granted, Role};

/// Refuses the call unless the request's api key holds `role`.
fn authorize<T>(request: &Request<T>, call: &'static str, role: Role) -> Result<(), ServiceError> {
    let granted = request
        .extensions()
        .get::<Granted>()
        .copied()
        .unwrap_or(Granted::ALL);
    if granted.allows(role) {
        Ok(())
    } else {
        Err(ServiceError::PermissionDenied { call, role })
    }
}

/// The gRPC face of a [`TunnelStore`].
///
/// Each call checks the role it needs ([`Role`]) against the [`Granted`] roles the server's interceptor put in
/// the request's extensions (from the caller's api key); a request without them (the service served without
/// arbor's interceptor, so without api keys) may call anything.
#[derive(Debug, Clone)]
pub struct TunnelGrpc {
    store: Arc<TunnelStore>,
    limits: Limits,
}

impl TunnelGrpc {
    /// Serves `store` with `limits`.
    pub fn new(store: Arc<TunnelStore>, limits: Limits) -> Self {
        TunnelGrpc { store, limits }
    }

    /// What the service accepts, as ConnectTunnel and GetLimits advertise it.
    fn service_limits(&self) -> v1::ServiceLimits {
        let store = self.store.options();
        v1::ServiceLimits {
            max_record_bytes: self.limits.max_record_bytes as u64,
            max_append_records: u32::try_from(self.limits.max_batch_records).unwrap_or(u32::MAX),
            max_append_bytes: self.limits.max_batch_bytes as u64,
            max_channels: self.limits.max_channels,
            max_records_per_message: self.limits.max_records_per_message,
            max_read_message_bytes: READ_MESSAGE_MAX_BYTES as u64,
            max_read_wait_ms: millis(self.limits.max_wait),
            min_heartbeat_timeout_ms: millis(store.min_heartbeat_timeout),
            max_heartbeat_timeout_ms: millis(store.max_heartbeat_timeout),
            default_heartbeat_timeout_ms: millis(store.default_heartbeat_timeout),
            max_request_bytes: self.limits.max_request_bytes() as u64,
            max_response_bytes: self.limits.max_response_bytes() as u64,
            max_control_request_bytes: self.limits.max_control_request_bytes() as u64,
            max_sessions_per_tunnel: u32::try_from(store.max_sessions_per_tunnel).unwrap_or(u32::MAX),
            max_heartbeat_reports: u32::try_from(self.limits.max_heartbeat_reports()).unwrap_or(u32::MAX),
            max_client_tag_bytes: u32::try_from(self.limits.max_client_tag_bytes).unwrap_or(u32::MAX),
            max_producers_per_tunnel: u32::try_from(store.max_producers_per_tunnel).unwrap_or(u32::MAX),
        }
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn tunnel_info(t: TunnelDescription) -> v1::TunnelInfo {
    v1::TunnelInfo {
        tunnel_id: t.id,
        tunnel_name: t.name,
        created_at_unix_ms: t.created_unix_ms,
        retention: Some(v1::RetentionPolicy {
            max_age_ms: t.retention.max_age_ms,
            max_bytes_per_channel: t.retention.max_bytes_per_channel,
        }),
        channels: t
            .channels
            .into_iter()
            .map(|c| v1::ChannelInfo {
                channel_id: c.id,
                channel_type: c.channel_type.into(),
                parent_channel_id: c.parent,
                status: c.status.into(),
                version: c.version.get(),
                owner_client_id: c.owner.unwrap_or_default(),
                end_sequence_number: c.end,
                first_retained_sequence_number: c.first_retained,
                checkpoint_sequence_number: c.checkpoint,
                sealed: c.sealed,
                lag: c.end.saturating_sub(c.checkpoint),
            })
            .collect(),
        clients: t
            .clients
            .into_iter()
            .map(|c| v1::ClientInfo {
                client_id: c.id,
                client_tag: c.tag,
                heartbeat_timeout_ms: millis(c.heartbeat_timeout),
                since_last_heartbeat_ms: millis(c.since_last_heartbeat),
                channel_ids: c.channels,
            })
            .collect(),
    }
}

fn record(r: super::store::StoredRecord) -> v1::Record {
    v1::Record {
        sequence_number: r.seq,
        append_time_unix_ms: r.append_ms,
        key: r.key,
        value: r.value,
    }
}

/// The fenced position a consumer request names, its ids checked as required. A missing session token is
/// left to the fence, which refuses it as it refuses a wrong one (ownership lost).
fn lease<'a>(
    tunnel_id: &'a str,
    client_id: &'a str,
    session_token: &'a str,
    channel: u32,
    version: i64,
) -> Result<LeaseClaim<'a>, ServiceError> {
    Ok(LeaseClaim {
        tunnel_id: validate::required(tunnel_id, "tunnel_id")?,
        client_id: validate::required(client_id, "client_id")?,
        session_token,
        channel,
        version: Version(version),
    })
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<v1::ReadRecordsResponse, Status>> + Send>>;

/// A ReadRecords stream's progress.
struct ReadState {
    store: Arc<TunnelStore>,
    req: v1::ReadRecordsRequest,
    per_message: usize,
    next: u64,
    /// Records still allowed (`u64::MAX` when unlimited).
    remaining: u64,
    max_wait: Duration,
    sent_any: bool,
    waited: bool,
    done: bool,
}

impl ReadState {
    async fn step(mut self) -> Option<(Result<v1::ReadRecordsResponse, Status>, ReadState)> {
        loop {
            if self.done {
                return None;
            }
            let lease = LeaseClaim {
                tunnel_id: &self.req.tunnel_id,
                client_id: &self.req.client_id,
                session_token: &self.req.session_token,
                channel: self.req.channel_id,
                version: Version(self.req.channel_version),
            };
            let max = (self.per_message as u64).min(self.remaining) as usize;
            let batch = match self.store.read(lease, self.next, max).await {
                Ok(batch) => batch,
                Err(e) => {
                    self.done = true;
                    return Some((Err(e.into()), self));
                }
            };
            if batch.records.is_empty() && !batch.finished {
                if !self.sent_any && !self.waited && !self.max_wait.is_zero() {
                    self.waited = true;
                    let lease = LeaseClaim {
                        tunnel_id: &self.req.tunnel_id,
                        client_id: &self.req.client_id,
                        session_token: &self.req.session_token,
                        channel: self.req.channel_id,
                        version: Version(self.req.channel_version),
                    };
                    self.store.wait_for_records(lease, self.next, self.max_wait).await;
                    continue;
                }
                return None;
            }
            self.sent_any = true;
            self.next = batch.next;
            self.remaining -= batch.records.len() as u64;
            self.done = batch.finished || self.remaining == 0;
            let message = v1::ReadRecordsResponse {
                records: batch.records.into_iter().map(record).collect(),
                next_sequence_number: batch.next,
                finished: batch.finished,
            };
            return Some((Ok(message), self));
        }
    }
}

#[tonic::async_trait]
impl TunnelService for TunnelGrpc {
    async fn create_tunnel(
        &self,
        request: Request<v1::CreateTunnelRequest>,
    ) -> Result<Response<v1::CreateTunnelResponse>, Status> {
        authorize(&request, "CreateTunnel", Role::Admin)?;
        let new = validate::create(request.into_inner(), &self.limits)?;
        let tunnel = self.store.create_tunnel(new).await?;
        Ok(Response::new(v1::CreateTunnelResponse {
            tunnel: Some(tunnel_info(tunnel)),
        }))
    }

    async fn describe_tunnel(
        &self,
        request: Request<v1::DescribeTunnelRequest>,
    ) -> Result<Response<v1::DescribeTunnelResponse>, Status> {
        let req = request.into_inner();
        let tunnel = validate::tunnel_ref(&req.tunnel_id, &req.tunnel_name)?;
        Ok(Response::new(v1::DescribeTunnelResponse {
            tunnel: Some(tunnel_info(self.store.describe(&tunnel)?)),
        }))
    }

    async fn list_tunnels(
        &self,
        _request: Request<v1::ListTunnelsRequest>,
    ) -> Result<Response<v1::ListTunnelsResponse>, Status> {
        Ok(Response::new(v1::ListTunnelsResponse {
            tunnels: self.store.list().into_iter().map(tunnel_info).collect(),
        }))
    }

    async fn delete_tunnel(
        &self,
        request: Request<v1::DeleteTunnelRequest>,
    ) -> Result<Response<v1::DeleteTunnelResponse>, Status> {
        authorize(&request, "DeleteTunnel", Role::Admin)?;
        let req = request.into_inner();
        let tunnel = validate::tunnel_ref(&req.tunnel_id, &req.tunnel_name)?;
        let tunnel_id = self.store.delete_tunnel(&tunnel).await?;
        Ok(Response::new(v1::DeleteTunnelResponse { tunnel_id }))
    }

    async fn append(
        &self,
        request: Request<v1::AppendRequest>,
    ) -> Result<Response<v1::AppendResponse>, Status> {
        authorize(&request, "Append", Role::Produce)?;
        let req = request.into_inner();
        let tunnel = validate::tunnel_ref(&req.tunnel_id, &req.tunnel_name)?;
        let records = validate::records(req.records, &self.limits)?;
        let producer = validate::producer(&req.producer_id, req.producer_sequence)?;
        let appended = self
            .store
            .append(&tunnel, req.channel_id, records, producer)
            .await?;
        Ok(Response::new(v1::AppendResponse {
            tunnel_id: appended.tunnel_id,
            channels: appended
                .channels
                .into_iter()
                .map(|a| v1::ChannelAppend {
                    channel_id: a.channel,
                    first_sequence_number: a.first_seq,
                    record_count: a.count,
                })
                .collect(),
            records: appended
                .records
                .into_iter()
                .map(|(channel_id, sequence_number)| v1::RecordPosition {
                    channel_id,
                    sequence_number,
                })
                .collect(),
            duplicate: appended.duplicate,
        }))
    }

    async fn seal_channel(
        &self,
        request: Request<v1::SealChannelRequest>,
    ) -> Result<Response<v1::SealChannelResponse>, Status> {
        authorize(&request, "SealChannel", Role::Admin)?;
        let req = request.into_inner();
        let tunnel = validate::tunnel_ref(&req.tunnel_id, &req.tunnel_name)?;
        let end = self.store.seal(&tunnel, req.channel_id).await?;
        Ok(Response::new(v1::SealChannelResponse {
            end_sequence_number: end,
        }))
    }

    async fn connect_tunnel(
        &self,
        request: Request<v1::ConnectTunnelRequest>,
    ) -> Result<Response<v1::ConnectTunnelResponse>, Status> {
        authorize(&request, "ConnectTunnel", Role::Consume)?;
        let req = request.into_inner();
        let tunnel_id = validate::required(&req.tunnel_id, "tunnel_id")?;
        if req.client_tag.len() > self.limits.max_client_tag_bytes {
            return Err(ServiceError::invalid(
                "client_tag",
                format!(
                    "{} bytes, over the limit of {}",
                    req.client_tag.len(),
                    self.limits.max_client_tag_bytes
                ),
            )
            .into());
        }
        let timeout = (req.heartbeat_timeout_ms > 0).then(|| Duration::from_millis(req.heartbeat_timeout_ms));
        let session = self.store.connect(tunnel_id, &req.client_tag, timeout)?;
        Ok(Response::new(v1::ConnectTunnelResponse {
            client_id: session.client_id,
            heartbeat_timeout_ms: millis(session.heartbeat_timeout),
            session_token: session.session_token,
            limits: Some(self.service_limits()),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        authorize(&request, "Heartbeat", Role::Consume)?;
        let req = request.into_inner();
        let tunnel_id = validate::required(&req.tunnel_id, "tunnel_id")?;
        let client_id = validate::required(&req.client_id, "client_id")?;
        let reports = validate::reports(&req.channels, &self.limits)?;
        let owned = self
            .store
            .heartbeat(tunnel_id, client_id, &req.session_token, &reports)?;
        Ok(Response::new(v1::HeartbeatResponse {
            channels: owned.into_iter().map(|(state, t)| state.to_wire(t)).collect(),
        }))
    }

    async fn get_checkpoint(
        &self,
        request: Request<v1::GetCheckpointRequest>,
    ) -> Result<Response<v1::GetCheckpointResponse>, Status> {
        authorize(&request, "GetCheckpoint", Role::Consume)?;
        let req = request.into_inner();
        let lease = lease(
            &req.tunnel_id,
            &req.client_id,
            &req.session_token,
            req.channel_id,
            req.channel_version,
        )?;
        let info = self.store.get_checkpoint(lease)?;
        Ok(Response::new(v1::GetCheckpointResponse {
            checkpoint_sequence_number: info.checkpoint,
            first_retained_sequence_number: info.first_retained,
            end_sequence_number: info.end,
            channel_type: info.channel_type.into(),
            finished: info.finished,
        }))
    }

    type ReadRecordsStream = ReadStream;

    async fn read_records(
        &self,
        request: Request<v1::ReadRecordsRequest>,
    ) -> Result<Response<Self::ReadRecordsStream>, Status> {
        authorize(&request, "ReadRecords", Role::Consume)?;
        let req = request.into_inner();
        lease(
            &req.tunnel_id,
            &req.client_id,
            &req.session_token,
            req.channel_id,
            req.channel_version,
        )?;
        let per_message = match req.max_records_per_message {
            0 => self.limits.default_records_per_message,
            n if n > self.limits.max_records_per_message => {
                return Err(ServiceError::invalid(
                    "max_records_per_message",
                    format!("{n} is over the limit of {}", self.limits.max_records_per_message),
                )
                .into())
            }
            n => n,
        };
        let max_wait = Duration::from_millis(req.max_wait_ms);
        if max_wait > self.limits.max_wait {
            return Err(ServiceError::invalid(
                "max_wait_ms",
                format!(
                    "{} is over the limit of {} ms",
                    req.max_wait_ms,
                    self.limits.max_wait.as_millis()
                ),
            )
            .into());
        }
        let state = ReadState {
            store: Arc::clone(&self.store),
            per_message: per_message as usize,
            next: req.from_sequence_number,
            remaining: if req.max_records == 0 {
                u64::MAX
            } else {
                req.max_records
            },
            max_wait,
            sent_any: false,
            waited: false,
            done: false,
            req,
        };
        // The first step runs before the call is answered, so a refused read (not the owner, out of range) is
        // the call's status rather than an error inside an open stream.
        let stream: ReadStream = match state.step().await {
            None => Box::pin(futures::stream::empty()),
            Some((Err(status), _)) => return Err(status),
            Some((Ok(first), state)) => Box::pin(
                futures::stream::once(async move { Ok(first) })
                    .chain(futures::stream::unfold(state, ReadState::step)),
            ),
        };
        Ok(Response::new(stream))
    }

    async fn checkpoint(
        &self,
        request: Request<v1::CheckpointRequest>,
    ) -> Result<Response<v1::CheckpointResponse>, Status> {
        authorize(&request, "Checkpoint", Role::Consume)?;
        let req = request.into_inner();
        let lease = lease(
            &req.tunnel_id,
            &req.client_id,
            &req.session_token,
            req.channel_id,
            req.channel_version,
        )?;
        self.store.checkpoint(lease, req.sequence_number).await?;
        Ok(Response::new(v1::CheckpointResponse {}))
    }

    async fn shutdown(
        &self,
        request: Request<v1::ShutdownRequest>,
    ) -> Result<Response<v1::ShutdownResponse>, Status> {
        authorize(&request, "Shutdown", Role::Consume)?;
        let req = request.into_inner();
        let tunnel_id = validate::required(&req.tunnel_id, "tunnel_id")?;
        let client_id = validate::required(&req.client_id, "client_id")?;
        self.store
            .shutdown_client(tunnel_id, client_id, &req.session_token)?;
        Ok(Response::new(v1::ShutdownResponse {}))
    }

    async fn get_limits(
        &self,
        _: Request<v1::GetLimitsRequest>,
    ) -> Result<Response<v1::GetLimitsResponse>, Status> {
        Ok(Response::new(v1::GetLimitsResponse {
            limits: Some(self.service_limits()),
        }))
    }
}
