//! Request validation: every check names the field at fault, before anything is stored.

use arbor_proto::tunnel::domain::{ChannelState, ChannelType};
use arbor_proto::tunnel::v1;
use bytes::Bytes;

use super::config::Limits;
use super::error::ServiceError;
use super::store::{ChannelDef, NewTunnel, ProducerRef, Retention, TunnelRef};

/// Longest tunnel name.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a tunnel name: 1 to 64 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn tunnel_name(name: &str, field: &str) -> Result<(), ServiceError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ServiceError::invalid(
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters (got {})", name.len()),
        ));
    }
    let first_ok = name.as_bytes()[0].is_ascii_lowercase() || name.as_bytes()[0].is_ascii_digit();
    let all_ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if !first_ok || !all_ok {
        return Err(ServiceError::invalid(
            field,
            format!("{name:?} must be [a-z0-9._-] starting with a letter or digit"),
        ));
    }
    Ok(())
}

/// A required string field.
pub fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, ServiceError> {
    if value.is_empty() {
        Err(ServiceError::invalid(field, "is required"))
    } else {
        Ok(value)
    }
}

/// Exactly one of `tunnel_id` and `tunnel_name`.
pub fn tunnel_ref(tunnel_id: &str, name: &str) -> Result<TunnelRef, ServiceError> {
    match (tunnel_id.is_empty(), name.is_empty()) {
        (false, true) => Ok(TunnelRef::Id(tunnel_id.to_string())),
        (true, false) => {
            tunnel_name(name, "tunnel_name")?;
            Ok(TunnelRef::Name(name.to_string()))
        }
        (true, true) => Err(ServiceError::invalid(
            "tunnel_id",
            "one of tunnel_id and tunnel_name is required",
        )),
        (false, false) => Err(ServiceError::invalid(
            "tunnel_name",
            "set only one of tunnel_id and tunnel_name",
        )),
    }
}

/// CreateTunnel's request.
pub fn create(req: v1::CreateTunnelRequest, limits: &Limits) -> Result<NewTunnel, ServiceError> {
    tunnel_name(&req.tunnel_name, "tunnel_name")?;
    if req.channels.is_empty() {
        return Err(ServiceError::invalid(
            "channels",
            "at least one channel is required",
        ));
    }
    if req.channels.len() > limits.max_channels as usize {
        return Err(ServiceError::invalid(
            "channels",
            format!(
                "{} channels exceed the limit of {}",
                req.channels.len(),
                limits.max_channels
            ),
        ));
    }
    let types = req
        .channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            ChannelType::from_wire(c.channel_type, format!("channels[{i}].channel_type"))
                .map_err(|e| ServiceError::invalid(e.field(), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut channels = Vec::with_capacity(types.len());
    for (i, (spec, &channel_type)) in req.channels.iter().zip(&types).enumerate() {
        if let Some(parent) = spec.parent_channel_id {
            let field = format!("channels[{i}].parent_channel_id");
            if channel_type != ChannelType::Stream {
                return Err(ServiceError::invalid(field, "only STREAM channels have a parent"));
            }
            match types.get(parent as usize) {
                Some(ChannelType::Base) => {}
                Some(ChannelType::Stream) => {
                    return Err(ServiceError::invalid(
                        field,
                        format!("channel {parent} is not a BASE channel"),
                    ))
                }
                None => {
                    return Err(ServiceError::invalid(
                        field,
                        format!("no channel {parent} (the tunnel has {})", types.len()),
                    ))
                }
            }
        }
        channels.push(ChannelDef {
            channel_type,
            parent: spec.parent_channel_id,
        });
    }
    let retention = req.retention.unwrap_or_default();
    Ok(NewTunnel {
        name: req.tunnel_name,
        channels,
        retention: Retention {
            max_age_ms: retention.max_age_ms,
            max_bytes_per_channel: retention.max_bytes_per_channel,
        },
    })
}

/// Append's records: count, per-record and batch sizes.
pub fn records(records: Vec<v1::AppendRecord>, limits: &Limits) -> Result<Vec<(Bytes, Bytes)>, ServiceError> {
    if records.is_empty() {
        return Err(ServiceError::invalid(
            "records",
            "at least one record is required",
        ));
    }
    if records.len() > limits.max_batch_records {
        return Err(ServiceError::invalid(
            "records",
            format!(
                "{} records exceed the batch limit of {}",
                records.len(),
                limits.max_batch_records
            ),
        ));
    }
    let mut total = 0usize;
    for (i, r) in records.iter().enumerate() {
        let size = r.key.len() + r.value.len();
        if size > limits.max_record_bytes {
            return Err(ServiceError::invalid(
                format!("records[{i}].value"),
                format!(
                    "key + value is {size} bytes, over the record limit of {}",
                    limits.max_record_bytes
                ),
            ));
        }
        total += size;
    }
    if total > limits.max_batch_bytes {
        return Err(ServiceError::invalid(
            "records",
            format!(
                "the batch is {total} bytes, over the limit of {}",
                limits.max_batch_bytes
            ),
        ));
    }
    Ok(records.into_iter().map(|r| (r.key, r.value)).collect())
}

/// Longest idempotent producer id.
pub const MAX_PRODUCER_ID_LEN: usize = 64;

/// Append's idempotent producer: none when `producer_id` is empty (then `producer_sequence` must be 0), else an
/// id of 1 to 64 of `[A-Za-z0-9._-]`.
pub fn producer(producer_id: &str, sequence: u64) -> Result<Option<ProducerRef>, ServiceError> {
    if producer_id.is_empty() {
        if sequence != 0 {
            return Err(ServiceError::invalid(
                "producer_id",
                format!("is required with producer_sequence ({sequence})"),
            ));
        }
        return Ok(None);
    }
    let ok_chars = producer_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if producer_id.len() > MAX_PRODUCER_ID_LEN || !ok_chars {
        return Err(ServiceError::invalid(
            "producer_id",
            format!("{producer_id:?} must be 1 to {MAX_PRODUCER_ID_LEN} of [A-Za-z0-9._-]"),
        ));
    }
    Ok(Some(ProducerRef {
        id: producer_id.to_string(),
        sequence,
    }))
}

/// A heartbeat's channel reports: at most [`Limits::max_heartbeat_reports`], each well-formed.
pub fn reports(channels: &[v1::ChannelState], limits: &Limits) -> Result<Vec<ChannelState>, ServiceError> {
    if channels.len() > limits.max_heartbeat_reports() {
        return Err(ServiceError::invalid(
            "channels",
            format!(
                "{} reports exceed the limit of {}",
                channels.len(),
                limits.max_heartbeat_reports()
            ),
        ));
    }
    channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            ChannelState::from_wire(c, i).map_err(|e| ServiceError::invalid(e.field(), e.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "orders", "orders.v2", "0-x_y", &"a".repeat(64)] {
            assert!(tunnel_name(ok, "tunnel_name").is_ok(), "{ok}");
        }
        for bad in ["", "Orders", "-x", ".x", "a b", "é", &"a".repeat(65)] {
            let err = tunnel_name(bad, "tunnel_name").unwrap_err();
            assert_eq!(err.field(), Some("tunnel_name"), "{bad}");
        }
    }

    #[test]
    fn producer_ids() {
        assert_eq!(producer("", 0).unwrap(), None);
        assert_eq!(producer("", 3).unwrap_err().field(), Some("producer_id"));
        let p = producer("demo-p1.A_b", 7).unwrap().unwrap();
        assert_eq!((p.id.as_str(), p.sequence), ("demo-p1.A_b", 7));
        for bad in ["a b", "é", "x/y", &"a".repeat(65)] {
            assert_eq!(
                producer(bad, 1).unwrap_err().field(),
                Some("producer_id"),
                "{bad}"
            );
        }
    }

    #[test]
    fn parents_must_be_base_and_children_stream() {
        let spec = |t: ChannelType, parent| v1::ChannelSpec {
            channel_type: t.into(),
            parent_channel_id: parent,
        };
        let req = |channels| v1::CreateTunnelRequest {
            tunnel_name: "t".into(),
            channels,
            retention: None,
        };
        let limits = Limits::default();
        assert!(create(
            req(vec![
                spec(ChannelType::Base, None),
                spec(ChannelType::Stream, Some(0))
            ]),
            &limits
        )
        .is_ok());
        let err = create(
            req(vec![
                spec(ChannelType::Stream, None),
                spec(ChannelType::Stream, Some(0)),
            ]),
            &limits,
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("channels[1].parent_channel_id"));
        let err = create(req(vec![spec(ChannelType::Base, Some(0))]), &limits).unwrap_err();
        assert_eq!(err.field(), Some("channels[0].parent_channel_id"));
        let err = create(req(vec![spec(ChannelType::Stream, Some(5))]), &limits).unwrap_err();
        assert_eq!(err.field(), Some("channels[0].parent_channel_id"));
    }
}
