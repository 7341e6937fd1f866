//! `arbor tunnel create|describe|list|delete|append|seal`: a small admin and producer client of a tunnel service.
//!
//! Each command prints words, or with `--json` one JSON document: numbers as numbers, channel types and
//! statuses in lower case, an absent owner or parent as `null`.

use std::path::PathBuf;
use std::time::Duration;

use arbor_proto::tunnel::domain::{ChannelStatus, ChannelType};
use arbor_proto::tunnel::error::{error_field, ErrorKind};
use arbor_proto::tunnel::v1;
use arbor_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// How to reach the service.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminConnection {
    /// The tunnel service: `host:port` (https when --ca-file is given), or an `http(s)://host:port` URL.
    #[arg(
        long = "addr",
        visible_alias = "server",
        global = true,
        default_value = "127.0.0.1:50051"
    )]
    pub server: String,
    /// File holding the api key to send (`api-key`; its first non-comment line).
    #[arg(long = "token-file", visible_alias = "api-key-file", global = true)]
    pub api_key_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust: connects with TLS.
    #[arg(long = "ca-file", visible_alias = "ca-cert", global = true)]
    pub ca_cert: Option<PathBuf>,
}

/// One admin command (the `arbor tunnel` subcommands).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// Create a tunnel: base channels get ids 0.., stream channels follow.
    Create {
        /// The tunnel's name ([a-z0-9._-]).
        name: String,
        /// Number of base channels.
        #[arg(long, default_value_t = 0)]
        base: u32,
        /// Number of stream channels.
        #[arg(long, default_value_t = 4)]
        stream: u32,
        /// Make stream channel i wait for base channel i to terminate.
        #[arg(long)]
        parents: bool,
        /// Trim records older than this (e.g. `7d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        max_age: Option<Duration>,
        /// Keep at most about this many bytes per channel.
        #[arg(long)]
        max_bytes: Option<u64>,
    },
    /// Describe a tunnel: channels, owners, versions, positions, clients.
    Describe {
        /// The tunnel's name.
        name: String,
    },
    /// List the tunnels.
    List,
    /// Delete a tunnel and its records.
    Delete {
        /// The tunnel's name.
        name: String,
    },
    /// Append one record per VALUE, routed by --key (or to --channel).
    Append {
        /// The tunnel's name.
        name: String,
        /// Append to this channel instead of routing by key.
        #[arg(long)]
        channel: Option<u32>,
        /// The records' key (routes them to a stream channel).
        #[arg(long, default_value = "")]
        key: String,
        /// The values.
        #[arg(required = true)]
        values: Vec<String>,
    },
    /// Seal a base channel: no more records; it finishes once read to its end.
    Seal {
        /// The tunnel's name.
        name: String,
        /// The base channel.
        channel: u32,
    },
}

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The server cannot be reached, or the address or TLS setting is unusable.
    #[error("{reason}")]
    Connect {
        /// The address.
        server: String,
        /// Why.
        reason: String,
    },
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The service refused the call.
    #[error("{}{}: {message}", crate::dial::code_words(*code), field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Rpc {
        /// The gRPC code.
        code: tonic::Code,
        /// What the client should do.
        kind: ErrorKind,
        /// The field at fault, if named.
        field: Option<String>,
        /// The server's message.
        message: String,
    },
}

impl From<Status> for AdminError {
    fn from(s: Status) -> Self {
        AdminError::Rpc {
            code: s.code(),
            kind: ErrorKind::of(&s),
            field: error_field(&s).map(str::to_string),
            message: s.message().to_string(),
        }
    }
}

type ApiKeyInterceptor = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
type Client = TunnelServiceClient<InterceptedService<Channel, ApiKeyInterceptor>>;

async fn connect(conn: &AdminConnection) -> Result<Client, AdminError> {
    let url = crate::dial::server_url(&conn.server, conn.ca_cert.is_some());
    let connect_err = |reason: String| AdminError::Connect {
        server: url.clone(),
        reason,
    };
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| AdminError::File {
            path: path.clone(),
            source,
        })
    };
    let ca_pem = conn.ca_cert.as_ref().map(read).transpose()?;
    let channel = crate::dial::connect(&url, ca_pem).await.map_err(connect_err)?;
    let key = match &conn.api_key_file {
        Some(path) => {
            let text = String::from_utf8_lossy(&read(path)?).into_owned();
            let key = crate::dial::first_secret_line(&text).map(str::to_string);
            let key = key.ok_or_else(|| connect_err(format!("no key in {}", path.display())))?;
            Some(key.parse::<tonic::metadata::AsciiMetadataValue>().map_err(|_| {
                connect_err(format!(
                    "the key in {} is not a valid header value",
                    path.display()
                ))
            })?)
        }
        None => None,
    };
    let interceptor: ApiKeyInterceptor = Box::new(move |mut request: Request<()>| {
        if let Some(key) = &key {
            request.metadata_mut().insert("api-key", key.clone());
        }
        Ok(request)
    });
    Ok(TunnelServiceClient::with_interceptor(channel, interceptor))
}

/// Runs one command and returns what to print: words, or one JSON document (and a newline) when `json`.
///
/// # Errors
/// [`AdminError`] when the service cannot be reached or refuses the call.
pub async fn run(conn: &AdminConnection, command: AdminCommand, json: bool) -> Result<String, AdminError> {
    let doc = |value: serde_json::Value| format!("{value}\n");
    let mut client = connect(conn).await?;
    match command {
        AdminCommand::Create {
            name,
            base,
            stream,
            parents,
            max_age,
            max_bytes,
        } => {
            let channels = (0..base)
                .map(|_| v1::ChannelSpec {
                    channel_type: ChannelType::Base.into(),
                    parent_channel_id: None,
                })
                .chain((0..stream).map(|i| v1::ChannelSpec {
                    channel_type: ChannelType::Stream.into(),
                    parent_channel_id: (parents && i < base).then_some(i),
                }))
                .collect();
            let retention = v1::RetentionPolicy {
                max_age_ms: max_age.map(|d| d.as_millis() as u64).unwrap_or(0),
                max_bytes_per_channel: max_bytes.unwrap_or(0),
            };
            let response = client
                .create_tunnel(v1::CreateTunnelRequest {
                    tunnel_name: name,
                    channels,
                    retention: Some(retention),
                })
                .await?
                .into_inner();
            let tunnel = response.tunnel.unwrap_or_default();
            Ok(if json {
                doc(tunnel_json(&tunnel))
            } else {
                render(&tunnel)
            })
        }
        AdminCommand::Describe { name } => {
            let response = client
                .describe_tunnel(v1::DescribeTunnelRequest {
                    tunnel_id: String::new(),
                    tunnel_name: name,
                })
                .await?
                .into_inner();
            let tunnel = response.tunnel.unwrap_or_default();
            Ok(if json {
                doc(tunnel_json(&tunnel))
            } else {
                render(&tunnel)
            })
        }
        AdminCommand::List => {
            let response = client.list_tunnels(v1::ListTunnelsRequest {}).await?.into_inner();
            if json {
                let tunnels: Vec<_> = response.tunnels.iter().map(tunnel_json).collect();
                return Ok(doc(serde_json::json!({ "tunnels": tunnels })));
            }
            if response.tunnels.is_empty() {
                return Ok("no tunnels (create one with `arbor tunnel create NAME --stream N`)\n".into());
            }
            let mut out = String::new();
            for t in response.tunnels {
                let lag: u64 = t.channels.iter().map(|c| c.lag).sum();
                out.push_str(&format!(
                    "{}  {}  {} channels  {} clients  lag {}\n",
                    t.tunnel_id,
                    t.tunnel_name,
                    t.channels.len(),
                    t.clients.len(),
                    lag
                ));
            }
            Ok(out)
        }
        AdminCommand::Delete { name } => {
            let response = client
                .delete_tunnel(v1::DeleteTunnelRequest {
                    tunnel_id: String::new(),
                    tunnel_name: name,
                })
                .await?
                .into_inner();
            if json {
                return Ok(doc(serde_json::json!({ "deleted": response.tunnel_id })));
            }
            Ok(format!("deleted {}\n", response.tunnel_id))
        }
        AdminCommand::Append {
            name,
            channel,
            key,
            values,
        } => {
            let records = values
                .into_iter()
                .map(|v| v1::AppendRecord {
                    key: key.clone().into(),
                    value: v.into(),
                })
                .collect();
            let response = client
                .append(v1::AppendRequest {
                    tunnel_id: String::new(),
                    tunnel_name: name,
                    channel_id: channel,
                    records,
                    // One batch per command: a fresh producer id makes any retry of this request (by the
                    // transport or a proxy) a duplicate, not a second copy.
                    producer_id: format!("arbor-cli-{:016x}", rand::random::<u64>()),
                    producer_sequence: 0,
                })
                .await?
                .into_inner();
            if json {
                let channels: Vec<_> = response
                    .channels
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "channel_id": c.channel_id,
                            "record_count": c.record_count,
                            "first_sequence_number": c.first_sequence_number,
                            "last_sequence_number": c.first_sequence_number + u64::from(c.record_count) - 1,
                        })
                    })
                    .collect();
                let records: Vec<_> = response
                    .records
                    .iter()
                    .map(|r| serde_json::json!({ "channel_id": r.channel_id, "sequence_number": r.sequence_number }))
                    .collect();
                return Ok(doc(serde_json::json!({
                    "tunnel_id": response.tunnel_id,
                    "channels": channels,
                    "records": records,
                    "duplicate": response.duplicate,
                })));
            }
            let mut out = String::new();
            for c in response.channels {
                let last = c.first_sequence_number + u64::from(c.record_count) - 1;
                out.push_str(&format!(
                    "channel {}: {} records, sequence numbers {}..={}\n",
                    c.channel_id, c.record_count, c.first_sequence_number, last
                ));
            }
            Ok(out)
        }
        AdminCommand::Seal { name, channel } => {
            let response = client
                .seal_channel(v1::SealChannelRequest {
                    tunnel_id: String::new(),
                    tunnel_name: name,
                    channel_id: channel,
                })
                .await?
                .into_inner();
            if json {
                return Ok(doc(serde_json::json!({
                    "channel_id": channel,
                    "end_sequence_number": response.end_sequence_number,
                })));
            }
            Ok(format!(
                "channel {channel} sealed at {}\n",
                response.end_sequence_number
            ))
        }
    }
}

/// A channel type's or status's name in lower case (`"?"` for a value this client does not know).
fn lower(name: Result<impl std::fmt::Display, impl std::error::Error>) -> String {
    name.map(|n| n.to_string().to_lowercase())
        .unwrap_or_else(|_| "?".into())
}

/// A tunnel as JSON: its fields, its channels and clients, and `lag` summed over its channels.
fn tunnel_json(t: &v1::TunnelInfo) -> serde_json::Value {
    let retention = t.retention.unwrap_or_default();
    let channels: Vec<_> = t
        .channels
        .iter()
        .map(|c| {
            serde_json::json!({
                "channel_id": c.channel_id,
                "channel_type": lower(ChannelType::from_wire(c.channel_type, "channel_type")),
                "parent_channel_id": c.parent_channel_id,
                "status": lower(ChannelStatus::from_wire(c.status, "status")),
                "sealed": c.sealed,
                "version": c.version,
                "owner_client_id": (!c.owner_client_id.is_empty()).then_some(&c.owner_client_id),
                "end_sequence_number": c.end_sequence_number,
                "first_retained_sequence_number": c.first_retained_sequence_number,
                "checkpoint_sequence_number": c.checkpoint_sequence_number,
                "lag": c.lag,
            })
        })
        .collect();
    let clients: Vec<_> = t
        .clients
        .iter()
        .map(|c| {
            serde_json::json!({
                "client_id": c.client_id,
                "client_tag": c.client_tag,
                "channel_ids": c.channel_ids,
                "since_last_heartbeat_ms": c.since_last_heartbeat_ms,
                "heartbeat_timeout_ms": c.heartbeat_timeout_ms,
            })
        })
        .collect();
    serde_json::json!({
        "tunnel_id": t.tunnel_id,
        "tunnel_name": t.tunnel_name,
        "retention": {
            "max_age_ms": retention.max_age_ms,
            "max_bytes_per_channel": retention.max_bytes_per_channel,
        },
        "lag": t.channels.iter().map(|c| c.lag).sum::<u64>(),
        "channels": channels,
        "clients": clients,
    })
}

fn render(t: &v1::TunnelInfo) -> String {
    let mut out = format!("tunnel {} (id {})\n", t.tunnel_name, t.tunnel_id);
    if let Some(r) = &t.retention {
        if r.max_age_ms > 0 || r.max_bytes_per_channel > 0 {
            out.push_str(&format!(
                "  retention: max age {} ms, max {} bytes per channel (0 = none)\n",
                r.max_age_ms, r.max_bytes_per_channel
            ));
        }
    }
    for c in &t.channels {
        let kind = ChannelType::from_wire(c.channel_type, "channel_type")
            .map(|t| t.to_string())
            .unwrap_or_else(|_| "?".into());
        let status = ChannelStatus::from_wire(c.status, "status")
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "?".into());
        out.push_str(&format!(
            "  channel {} {kind}{} {status} v{} owner {} end {} retained from {} checkpoint {} lag {}{}\n",
            c.channel_id,
            c.parent_channel_id
                .map(|p| format!(" (parent {p})"))
                .unwrap_or_default(),
            c.version,
            if c.owner_client_id.is_empty() {
                "-"
            } else {
                &c.owner_client_id
            },
            c.end_sequence_number,
            c.first_retained_sequence_number,
            c.checkpoint_sequence_number,
            c.lag,
            if c.sealed { " sealed" } else { "" },
        ));
    }
    for c in &t.clients {
        out.push_str(&format!(
            "  client {} tag \"{}\" channels [{}] last heartbeat {} ms ago (timeout {} ms)\n",
            c.client_id,
            c.client_tag,
            c.channel_ids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            c.since_last_heartbeat_ms,
            c.heartbeat_timeout_ms
        ));
    }
    out
}
