//! On-disk encoding of tunnel definitions, channel metadata, idempotent producers and the start epoch: protobuf
//! messages private to the store, so fields can be added without breaking existing data directories.
//!
//! Format history (each step opens every older data directory):
//! - producers (`p` keys, [`StoredProducer`]) and the start epoch (`e` key, [`StoredEpoch`]) were added with the
//!   idempotent producer; a directory without them has no producers and epoch 0.

use arbor_proto::tunnel::domain::ChannelType;
use prost::Message;

use super::engine::{ChannelDef, ChannelMeta, ProducerBatch, Retention, TunnelDef};
use super::types::ChannelAppend;
use crate::tunnel_service::error::StoreError;

#[derive(Clone, PartialEq, Message)]
struct StoredTunnel {
    #[prost(uint64, tag = "1")]
    uid: u64,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(uint64, tag = "3")]
    created_ms: u64,
    #[prost(message, repeated, tag = "4")]
    channels: Vec<StoredChannelDef>,
    #[prost(uint64, tag = "5")]
    max_age_ms: u64,
    #[prost(uint64, tag = "6")]
    max_bytes_per_channel: u64,
}

#[derive(Clone, PartialEq, Message)]
struct StoredChannelDef {
    /// The wire enum's number (BASE = 1, STREAM = 2).
    #[prost(int32, tag = "1")]
    channel_type: i32,
    #[prost(uint32, optional, tag = "2")]
    parent: Option<u32>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredChannelMeta {
    #[prost(uint64, tag = "1")]
    first_retained: u64,
    #[prost(uint64, tag = "2")]
    checkpoint: u64,
    #[prost(int64, tag = "3")]
    checkpoint_version: i64,
    #[prost(uint64, optional, tag = "4")]
    sealed_end: Option<u64>,
    #[prost(bool, tag = "5")]
    terminated: bool,
}

/// An idempotent producer's last batch.
#[derive(Clone, PartialEq, Message)]
struct StoredProducer {
    #[prost(uint64, tag = "1")]
    sequence: u64,
    #[prost(message, repeated, tag = "2")]
    appends: Vec<StoredChannelAppend>,
    #[prost(uint64, tag = "3")]
    used: u64,
}

#[derive(Clone, PartialEq, Message)]
struct StoredChannelAppend {
    #[prost(uint32, tag = "1")]
    channel: u32,
    #[prost(uint64, tag = "2")]
    first_seq: u64,
    #[prost(uint32, tag = "3")]
    count: u32,
}

/// How many times the store was opened (see `Engine::start_epoch`).
#[derive(Clone, PartialEq, Message)]
struct StoredEpoch {
    #[prost(uint64, tag = "1")]
    epoch: u64,
}

pub(crate) fn encode_producer(batch: &ProducerBatch) -> Vec<u8> {
    StoredProducer {
        sequence: batch.sequence,
        appends: batch
            .appends
            .iter()
            .map(|a| StoredChannelAppend {
                channel: a.channel,
                first_seq: a.first_seq,
                count: a.count,
            })
            .collect(),
        used: batch.used,
    }
    .encode_to_vec()
}

pub(crate) fn decode_producer(bytes: &[u8]) -> Result<ProducerBatch, StoreError> {
    let stored = StoredProducer::decode(bytes).map_err(|e| StoreError::Corrupt {
        what: "producer",
        reason: e.to_string(),
    })?;
    Ok(ProducerBatch {
        sequence: stored.sequence,
        appends: stored
            .appends
            .into_iter()
            .map(|a| ChannelAppend {
                channel: a.channel,
                first_seq: a.first_seq,
                count: a.count,
            })
            .collect(),
        used: stored.used,
    })
}

pub(crate) fn encode_epoch(epoch: u64) -> Vec<u8> {
    StoredEpoch { epoch }.encode_to_vec()
}

pub(crate) fn decode_epoch(bytes: &[u8]) -> Result<u64, StoreError> {
    StoredEpoch::decode(bytes)
        .map(|e| e.epoch)
        .map_err(|e| StoreError::Corrupt {
            what: "start epoch",
            reason: e.to_string(),
        })
}

pub(crate) fn encode_tunnel(def: &TunnelDef) -> Vec<u8> {
    StoredTunnel {
        uid: def.uid,
        name: def.name.clone(),
        created_ms: def.created_ms,
        channels: def
            .channels
            .iter()
            .map(|c| StoredChannelDef {
                channel_type: c.channel_type.into(),
                parent: c.parent,
            })
            .collect(),
        max_age_ms: def.retention.max_age_ms,
        max_bytes_per_channel: def.retention.max_bytes_per_channel,
    }
    .encode_to_vec()
}

pub(crate) fn decode_tunnel(bytes: &[u8]) -> Result<TunnelDef, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "tunnel definition",
        reason,
    };
    let stored = StoredTunnel::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    let channels = stored
        .channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Ok(ChannelDef {
                channel_type: ChannelType::from_wire(c.channel_type, format!("channels[{i}].channel_type"))
                    .map_err(|e| corrupt(e.to_string()))?,
                parent: c.parent,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(TunnelDef {
        uid: stored.uid,
        name: stored.name,
        created_ms: stored.created_ms,
        channels,
        retention: Retention {
            max_age_ms: stored.max_age_ms,
            max_bytes_per_channel: stored.max_bytes_per_channel,
        },
    })
}

pub(crate) fn encode_channel_meta(meta: &ChannelMeta) -> Vec<u8> {
    StoredChannelMeta {
        first_retained: meta.first_retained,
        checkpoint: meta.checkpoint,
        checkpoint_version: meta.checkpoint_version,
        sealed_end: meta.sealed_end,
        terminated: meta.terminated,
    }
    .encode_to_vec()
}

pub(crate) fn decode_channel_meta(bytes: &[u8]) -> Result<ChannelMeta, StoreError> {
    let stored = StoredChannelMeta::decode(bytes).map_err(|e| StoreError::Corrupt {
        what: "channel metadata",
        reason: e.to_string(),
    })?;
    Ok(ChannelMeta {
        first_retained: stored.first_retained,
        checkpoint: stored.checkpoint,
        checkpoint_version: stored.checkpoint_version,
        sealed_end: stored.sealed_end,
        terminated: stored.terminated,
    })
}
