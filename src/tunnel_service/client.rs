//! [`TunnelClient`]: a typed admin and producer client of a tunnel service (what `arbor tunnel` uses).
//!
//! One client dials one service ([`TunnelClient::connect`]: address, CA certificate, api key) or rides any
//! gRPC transport, such as a pooled [`ConnectionChannel`](crate::connection::ConnectionChannel)
//! ([`TunnelClient::new`]). Its appends are idempotent: each tunnel it appends to gets a random producer id,
//! each batch the previous sequence number + 1, and a batch refused as retryable (the service unavailable or
//! overloaded, the connection lost mid-call) is sent again with the same producer id and sequence number, so
//! the service stores it once whichever attempt got through.
//!
//! ```no_run
//! # async fn run() -> Result<(), arbor::tunnel_service::client::TunnelClientError> {
//! use arbor::tunnel_service::client::{ChannelSpec, TunnelAddress, TunnelClient};
//!
//! let mut client = TunnelClient::connect("127.0.0.1:50051", None, None).await?;
//! let tunnel = client.create("orders", &[ChannelSpec::stream(); 4], None).await?;
//! let orders = TunnelAddress::Id(tunnel.tunnel_id);
//! let appended = client.append(&orders, [("user-42", "order 1"), ("user-7", "order 2")]).await?;
//! for position in appended.records {
//!     println!("channel {} position {}", position.channel_id, position.sequence_number);
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::time::Duration;

use arbor_proto::tunnel::domain::ChannelType;
use arbor_proto::tunnel::error::{error_field, ErrorKind};
use arbor_proto::tunnel::v1;
use arbor_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

type StdError = Box<dyn std::error::Error + Send + Sync>;

/// Which tunnel a call is about: by name or by id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TunnelAddress {
    /// The tunnel's name.
    Name(String),
    /// The tunnel's id.
    Id(String),
}

impl TunnelAddress {
    fn fields(&self) -> (String, String) {
        match self {
            TunnelAddress::Name(name) => (String::new(), name.clone()),
            TunnelAddress::Id(id) => (id.clone(), String::new()),
        }
    }
}

/// One channel of a tunnel to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSpec {
    /// Base or stream.
    pub channel_type: ChannelType,
    /// The base channel this stream channel waits for, if any.
    pub parent: Option<u32>,
}

impl ChannelSpec {
    /// A stream channel without a parent.
    #[must_use]
    pub fn stream() -> ChannelSpec {
        ChannelSpec {
            channel_type: ChannelType::Stream,
            parent: None,
        }
    }

    /// A base channel.
    #[must_use]
    pub fn base() -> ChannelSpec {
        ChannelSpec {
            channel_type: ChannelType::Base,
            parent: None,
        }
    }

    /// This channel waits for base channel `parent` to terminate.
    #[must_use]
    pub fn parent(mut self, parent: u32) -> ChannelSpec {
        self.parent = Some(parent);
        self
    }
}

/// Where one appended record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    /// Its channel.
    pub channel_id: u32,
    /// Its sequence number in that channel.
    pub sequence_number: u64,
}

/// The records one batch stored in one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelRange {
    /// The channel.
    pub channel_id: u32,
    /// The first record's sequence number.
    pub first_sequence_number: u64,
    /// How many records.
    pub record_count: u32,
}

/// What an append stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The tunnel's id.
    pub tunnel_id: String,
    /// One entry per record, in the order given.
    pub records: Vec<RecordPosition>,
    /// One entry per channel that received records.
    pub channels: Vec<ChannelRange>,
    /// The batch had been stored already (a retry answered with the first attempt's positions).
    pub duplicate: bool,
}

/// Why a [`TunnelClient`] call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TunnelClientError {
    /// The service cannot be reached, or the address or TLS setting is unusable.
    #[error("{reason}")]
    Connect {
        /// The URL dialled.
        server: String,
        /// Why, in words.
        reason: String,
    },
    /// The api key is not a valid header value (the key itself is not shown).
    #[error("the api key is not a valid header value (visible ASCII only)")]
    ApiKey,
    /// The service refused the call.
    #[error("{}{}: {message}", crate::dial::code_words(*code), field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Rpc {
        /// The gRPC code.
        code: tonic::Code,
        /// What to do: retry, stop, re-read the checkpoint.
        kind: ErrorKind,
        /// The request field at fault, if the service named one.
        field: Option<String>,
        /// The service's message.
        message: String,
    },
}

impl TunnelClientError {
    /// The error kind of a refused call (`None` for a connection or key error).
    #[must_use]
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            TunnelClientError::Rpc { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

impl From<Status> for TunnelClientError {
    fn from(s: Status) -> Self {
        TunnelClientError::Rpc {
            code: s.code(),
            kind: ErrorKind::of(&s),
            field: error_field(&s).map(str::to_string),
            message: s.message().to_string(),
        }
    }
}

/// Adds the `api-key` header to every call when a key is set.
#[derive(Clone)]
pub struct ApiKeyHeader(Option<AsciiMetadataValue>);

impl std::fmt::Debug for ApiKeyHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ApiKeyHeader(<redacted>)"
        } else {
            "ApiKeyHeader(none)"
        })
    }
}

impl Interceptor for ApiKeyHeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(key) = &self.0 {
            request.metadata_mut().insert("api-key", key.clone());
        }
        Ok(request)
    }
}

/// A producer's place in one tunnel.
#[derive(Debug)]
struct Producer {
    id: String,
    next_sequence: u64,
}

impl Producer {
    fn fresh() -> Producer {
        Producer {
            id: format!(
                "arbor-{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            ),
            next_sequence: 0,
        }
    }
}

/// A typed admin and producer client of a tunnel service; see the [module](self) docs.
pub struct TunnelClient<T = Channel> {
    inner: TunnelServiceClient<InterceptedService<T, ApiKeyHeader>>,
    producers: HashMap<TunnelAddress, Producer>,
    attempts: u32,
}

impl<T> std::fmt::Debug for TunnelClient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelClient")
            .field("tunnels_appended_to", &self.producers.len())
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl TunnelClient<Channel> {
    /// Dials `server` (`host:port`, https when `ca_pem` is given, or an `http(s)://` URL) within 5 s, trusting
    /// the CA certificate `ca_pem` (PEM bytes), and sends `api_key` with every call.
    ///
    /// # Errors
    /// [`TunnelClientError::Connect`] (in words: refused, unreachable, TLS...), [`TunnelClientError::ApiKey`].
    pub async fn connect(
        server: &str,
        ca_pem: Option<Vec<u8>>,
        api_key: Option<&str>,
    ) -> Result<TunnelClient<Channel>, TunnelClientError> {
        let url = crate::dial::server_url(server, ca_pem.is_some());
        let channel = crate::dial::connect(&url, ca_pem)
            .await
            .map_err(|reason| TunnelClientError::Connect { server: url, reason })?;
        TunnelClient::new(channel, api_key)
    }
}

impl<T> TunnelClient<T>
where
    T: tonic::codegen::Service<
        tonic::codegen::http::Request<tonic::body::Body>,
        Response = tonic::codegen::http::Response<tonic::body::Body>,
    >,
    T::Error: Into<StdError> + Send + Sync,
{
    /// A client over `transport` (a dialled `Channel`, a pooled `ConnectionChannel`...), sending `api_key`
    /// with every call.
    ///
    /// # Errors
    /// [`TunnelClientError::ApiKey`] when the key is not a valid header value.
    pub fn new(transport: T, api_key: Option<&str>) -> Result<TunnelClient<T>, TunnelClientError> {
        let key = api_key
            .map(|key| {
                key.parse::<AsciiMetadataValue>()
                    .map_err(|_| TunnelClientError::ApiKey)
            })
            .transpose()?;
        Ok(TunnelClient {
            inner: TunnelServiceClient::with_interceptor(transport, ApiKeyHeader(key)),
            producers: HashMap::new(),
            attempts: 5,
        })
    }

    /// How many times an append refused as retryable is sent in all (with the same sequence number), waiting
    /// 100 ms, 200 ms, ... up to 2 s in between. Default 5; at least 1.
    #[must_use]
    pub fn append_attempts(mut self, attempts: u32) -> TunnelClient<T> {
        self.attempts = attempts.max(1);
        self
    }

    /// Creates tunnel `name` with `channels` (base channels get the ids their place gives) and an optional
    /// retention (`max_age`, `max_bytes_per_channel`; `None`: keep everything).
    ///
    /// # Errors
    /// [`TunnelClientError::Rpc`]: e.g. `ALREADY_EXISTS`, or `INVALID_ARGUMENT` naming the field.
    pub async fn create(
        &mut self,
        name: &str,
        channels: &[ChannelSpec],
        retention: Option<(Option<Duration>, Option<u64>)>,
    ) -> Result<v1::TunnelInfo, TunnelClientError> {
        let channels = channels
            .iter()
            .map(|c| v1::ChannelSpec {
                channel_type: c.channel_type.into(),
                parent_channel_id: c.parent,
            })
            .collect();
        let retention = retention.map(|(max_age, max_bytes)| v1::RetentionPolicy {
            max_age_ms: max_age.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            max_bytes_per_channel: max_bytes.unwrap_or(0),
        });
        let response = self
            .inner
            .create_tunnel(v1::CreateTunnelRequest {
                tunnel_name: name.to_string(),
                channels,
                retention,
            })
            .await?
            .into_inner();
        Ok(response.tunnel.unwrap_or_default())
    }

    /// Describes a tunnel: channels (status, version, owner, positions, lag) and clients.
    ///
    /// # Errors
    /// [`TunnelClientError::Rpc`]: e.g. `NOT_FOUND`.
    pub async fn describe(&mut self, tunnel: &TunnelAddress) -> Result<v1::TunnelInfo, TunnelClientError> {
        let (tunnel_id, tunnel_name) = tunnel.fields();
        let response = self
            .inner
            .describe_tunnel(v1::DescribeTunnelRequest {
                tunnel_id,
                tunnel_name,
            })
            .await?
            .into_inner();
        Ok(response.tunnel.unwrap_or_default())
    }

    /// Every tunnel, described.
    ///
    /// # Errors
    /// [`TunnelClientError::Rpc`].
    pub async fn list(&mut self) -> Result<Vec<v1::TunnelInfo>, TunnelClientError> {
        Ok(self
            .inner
            .list_tunnels(v1::ListTunnelsRequest {})
            .await?
            .into_inner()
            .tunnels)
    }

    /// Seals base channel `channel`: no more records; it finishes once read to its end. Returns its end.
    ///
    /// # Errors
    /// [`TunnelClientError::Rpc`]: e.g. `FAILED_PRECONDITION` for a stream channel.
    pub async fn seal(&mut self, tunnel: &TunnelAddress, channel: u32) -> Result<u64, TunnelClientError> {
        let (tunnel_id, tunnel_name) = tunnel.fields();
        let response = self
            .inner
            .seal_channel(v1::SealChannelRequest {
                tunnel_id,
                tunnel_name,
                channel_id: channel,
            })
            .await?
            .into_inner();
        Ok(response.end_sequence_number)
    }

    /// Deletes a tunnel and its records; returns its id.
    ///
    /// # Errors
    /// [`TunnelClientError::Rpc`]: e.g. `NOT_FOUND`.
    pub async fn delete(&mut self, tunnel: &TunnelAddress) -> Result<String, TunnelClientError> {
        let (tunnel_id, tunnel_name) = tunnel.fields();
        self.producers.remove(tunnel);
        let response = self
            .inner
            .delete_tunnel(v1::DeleteTunnelRequest {
                tunnel_id,
                tunnel_name,
            })
            .await?
            .into_inner();
        Ok(response.tunnel_id)
    }

    /// Appends one record per `(key, value)`, each routed to a stream channel by its key, as one batch.
    ///
    /// # Errors
    /// [`TunnelClientError::Rpc`]: a fatal refusal, or a retryable one on every attempt.
    pub async fn append<K, V>(
        &mut self,
        tunnel: &TunnelAddress,
        records: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Appended, TunnelClientError>
    where
        K: Into<bytes::Bytes>,
        V: Into<bytes::Bytes>,
    {
        let records = records
            .into_iter()
            .map(|(key, value)| v1::AppendRecord {
                key: key.into(),
                value: value.into(),
            })
            .collect();
        self.append_batch(tunnel, None, records).await
    }

    /// Appends one record per value to channel `channel` (a base channel, or a stream channel bypassing
    /// routing), as one batch.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub async fn append_to_channel<V: Into<bytes::Bytes>>(
        &mut self,
        tunnel: &TunnelAddress,
        channel: u32,
        values: impl IntoIterator<Item = V>,
    ) -> Result<Appended, TunnelClientError> {
        let records = values
            .into_iter()
            .map(|value| v1::AppendRecord {
                key: bytes::Bytes::new(),
                value: value.into(),
            })
            .collect();
        self.append_batch(tunnel, Some(channel), records).await
    }

    async fn append_batch(
        &mut self,
        tunnel: &TunnelAddress,
        channel: Option<u32>,
        records: Vec<v1::AppendRecord>,
    ) -> Result<Appended, TunnelClientError> {
        let producer = self
            .producers
            .entry(tunnel.clone())
            .or_insert_with(Producer::fresh);
        let (tunnel_id, tunnel_name) = tunnel.fields();
        let request = v1::AppendRequest {
            tunnel_id,
            tunnel_name,
            channel_id: channel,
            records,
            producer_id: producer.id.clone(),
            producer_sequence: producer.next_sequence,
        };
        let mut wait = Duration::from_millis(100);
        let mut attempt = 1;
        let outcome = loop {
            match self.inner.append(request.clone()).await {
                Ok(response) => break Ok(response.into_inner()),
                Err(status) if ErrorKind::of(&status) == ErrorKind::Retryable && attempt < self.attempts => {
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(status) => break Err(status),
            }
        };
        let producer = self
            .producers
            .entry(tunnel.clone())
            .or_insert_with(Producer::fresh);
        match outcome {
            Ok(response) => {
                producer.next_sequence += 1;
                Ok(Appended {
                    tunnel_id: response.tunnel_id,
                    records: response
                        .records
                        .iter()
                        .map(|r| RecordPosition {
                            channel_id: r.channel_id,
                            sequence_number: r.sequence_number,
                        })
                        .collect(),
                    channels: response
                        .channels
                        .iter()
                        .map(|c| ChannelRange {
                            channel_id: c.channel_id,
                            first_sequence_number: c.first_sequence_number,
                            record_count: c.record_count,
                        })
                        .collect(),
                    duplicate: response.duplicate,
                })
            }
            Err(status) => {
                let error = TunnelClientError::from(status);
                if error.kind() == Some(ErrorKind::Retryable) {
                    // Stored or not is unknown: the service expects either this sequence number or the next.
                    // A new producer id may start anywhere, so the next batch is never refused for it.
                    *producer = Producer::fresh();
                }
                Err(error)
            }
        }
    }
}
