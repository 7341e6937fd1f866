//! `arbor tunnel create|describe|list|delete|append|seal`: a small admin and producer client of a tunnel service.
//!
//! Each command prints words, or with `--json` one JSON document: numbers as numbers, channel types and
//! statuses in lower case, an absent owner or parent as `null`.

use std::path::PathBuf;
use std::time::Duration;

use arbor_proto::tunnel::domain::{ChannelStatus, ChannelType};
use arbor_proto::tunnel::v1;

use crate::tunnel_service::client::{ChannelSpec, TunnelAddress, TunnelClient, TunnelClientError};

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
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file holds no certificate.
    #[error("{} holds no certificate ({})", path.display(), crate::dial::NO_CERTIFICATE_HINT)]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no key.
    #[error("no key in {path}")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key in the key file is not a valid header value.
    #[error("the key in {path} is not a valid header value")]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// The service cannot be reached or refused the call.
    #[error(transparent)]
    Client(#[from] TunnelClientError),
}

async fn connect(conn: &AdminConnection) -> Result<TunnelClient, AdminError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| AdminError::File {
            path: path.clone(),
            source,
        })
    };
    let ca_pem = conn.ca_cert.as_ref().map(read).transpose()?;
    if let (Some(pem), Some(path)) = (&ca_pem, &conn.ca_cert) {
        if !crate::dial::has_certificate(pem) {
            return Err(AdminError::NoCertificate { path: path.clone() });
        }
    }
    let key = match &conn.api_key_file {
        Some(path) => {
            let text = String::from_utf8_lossy(&read(path)?).into_owned();
            let key = crate::dial::first_secret_line(&text).map(str::to_string);
            Some(key.ok_or_else(|| AdminError::NoKey { path: path.clone() })?)
        }
        None => None,
    };
    TunnelClient::connect(&conn.server, ca_pem, key.as_deref())
        .await
        .map_err(|err| match (err, &conn.api_key_file) {
            (TunnelClientError::ApiKey, Some(path)) => AdminError::BadKey { path: path.clone() },
            (err, _) => err.into(),
        })
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
            let channels: Vec<ChannelSpec> = (0..base)
                .map(|_| ChannelSpec::base())
                .chain((0..stream).map(|i| ChannelSpec {
                    parent: (parents && i < base).then_some(i),
                    ..ChannelSpec::stream()
                }))
                .collect();
            let tunnel = client
                .create(&name, &channels, Some((max_age, max_bytes)))
                .await?;
            Ok(if json {
                doc(tunnel_json(&tunnel))
            } else {
                render(&tunnel)
            })
        }
        AdminCommand::Describe { name } => {
            let tunnel = client.describe(&TunnelAddress::Name(name)).await?;
            Ok(if json {
                doc(tunnel_json(&tunnel))
            } else {
                render(&tunnel)
            })
        }
        AdminCommand::List => {
            let tunnels = client.list().await?;
            if json {
                let tunnels: Vec<_> = tunnels.iter().map(tunnel_json).collect();
                return Ok(doc(serde_json::json!({ "tunnels": tunnels })));
            }
            if tunnels.is_empty() {
                return Ok("no tunnels (create one with `arbor tunnel create NAME --stream N`)\n".into());
            }
            let mut out = String::new();
            for t in tunnels {
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
            let tunnel_id = client.delete(&TunnelAddress::Name(name)).await?;
            if json {
                return Ok(doc(serde_json::json!({ "deleted": tunnel_id })));
            }
            Ok(format!("deleted {tunnel_id}\n"))
        }
        AdminCommand::Append {
            name,
            channel,
            key,
            values,
        } => {
            // One batch per command, from a producer id of its own: a retry of it is answered as a duplicate,
            // never stored twice.
            let tunnel = TunnelAddress::Name(name);
            let appended = match channel {
                Some(channel) => client.append_to_channel(&tunnel, channel, values).await?,
                None => {
                    let records = values.into_iter().map(|value| (key.clone(), value));
                    client.append(&tunnel, records).await?
                }
            };
            if json {
                let channels: Vec<_> = appended
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
                let records: Vec<_> = appended
                    .records
                    .iter()
                    .map(|r| serde_json::json!({ "channel_id": r.channel_id, "sequence_number": r.sequence_number }))
                    .collect();
                return Ok(doc(serde_json::json!({
                    "tunnel_id": appended.tunnel_id,
                    "channels": channels,
                    "records": records,
                    "duplicate": appended.duplicate,
                })));
            }
            let mut out = String::new();
            for c in appended.channels {
                let last = c.first_sequence_number + u64::from(c.record_count) - 1;
                out.push_str(&format!(
                    "channel {}: {} records, sequence numbers {}..={}\n",
                    c.channel_id, c.record_count, c.first_sequence_number, last
                ));
            }
            Ok(out)
        }
        AdminCommand::Seal { name, channel } => {
            let end = client.seal(&TunnelAddress::Name(name), channel).await?;
            if json {
                return Ok(doc(serde_json::json!({
                    "channel_id": channel,
                    "end_sequence_number": end,
                })));
            }
            Ok(format!("channel {channel} sealed at {end}\n"))
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
