//! Domain types for the tunnel protocol, converted from the generated ones in one place.
//!
//! Generated enums are `i32` on the wire and carry an `UNSPECIFIED` zero value; the domain types here have
//! neither, so code past the edge never handles "unspecified". Conversions that can fail return a
//! [`ConversionError`] naming the field.

use std::fmt;

use super::v1;

/// A channel's version: an `int64` that only grows. The server bumps it by one on its transitions; the owner
/// bumps it by exactly one on its own (see the protocol's header comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version(pub i64);

impl Version {
    /// The version after this one (what a transition carries).
    pub fn next(self) -> Version {
        Version(self.0.saturating_add(1))
    }

    /// The wire value.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl From<i64> for Version {
    fn from(v: i64) -> Self {
        Version(v)
    }
}

/// A channel's status (the wire's `ChannelStatus` without `UNSPECIFIED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelStatus {
    /// Not assigned (no client, or waiting for its parent base channel to terminate).
    Wait,
    /// Owned and read by a client.
    Open,
    /// Being moved away from its owner, which drains, checkpoints and reports `Close`.
    Closing,
    /// Released; free to be assigned.
    Close,
    /// A finished base channel whose end was checkpointed; never assigned again.
    Terminated,
}

impl ChannelStatus {
    /// Whether a client owns the channel in this status (`Open` or `Closing`).
    pub fn is_owned(self) -> bool {
        matches!(self, ChannelStatus::Open | ChannelStatus::Closing)
    }
}

impl fmt::Display for ChannelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelStatus::Wait => "WAIT",
            ChannelStatus::Open => "OPEN",
            ChannelStatus::Closing => "CLOSING",
            ChannelStatus::Close => "CLOSE",
            ChannelStatus::Terminated => "TERMINATED",
        })
    }
}

impl From<ChannelStatus> for v1::ChannelStatus {
    fn from(s: ChannelStatus) -> Self {
        match s {
            ChannelStatus::Wait => v1::ChannelStatus::Wait,
            ChannelStatus::Open => v1::ChannelStatus::Open,
            ChannelStatus::Closing => v1::ChannelStatus::Closing,
            ChannelStatus::Close => v1::ChannelStatus::Close,
            ChannelStatus::Terminated => v1::ChannelStatus::Terminated,
        }
    }
}

impl From<ChannelStatus> for i32 {
    fn from(s: ChannelStatus) -> Self {
        v1::ChannelStatus::from(s) as i32
    }
}

impl ChannelStatus {
    /// The status in a wire field, or an error naming `field` when it is unspecified or unknown.
    pub fn from_wire(value: i32, field: impl Into<String>) -> Result<Self, ConversionError> {
        match v1::ChannelStatus::try_from(value) {
            Ok(v1::ChannelStatus::Wait) => Ok(ChannelStatus::Wait),
            Ok(v1::ChannelStatus::Open) => Ok(ChannelStatus::Open),
            Ok(v1::ChannelStatus::Closing) => Ok(ChannelStatus::Closing),
            Ok(v1::ChannelStatus::Close) => Ok(ChannelStatus::Close),
            Ok(v1::ChannelStatus::Terminated) => Ok(ChannelStatus::Terminated),
            Ok(v1::ChannelStatus::Unspecified) => Err(ConversionError::Unspecified { field: field.into() }),
            Err(_) => Err(ConversionError::UnknownValue {
                field: field.into(),
                value,
            }),
        }
    }
}

/// A channel's type (the wire's `ChannelType` without `UNSPECIFIED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelType {
    /// Ends when a producer seals it (base data).
    Base,
    /// Never ends (incremental changes); takes the key-routed appends.
    Stream,
}

impl fmt::Display for ChannelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelType::Base => "BASE",
            ChannelType::Stream => "STREAM",
        })
    }
}

impl From<ChannelType> for v1::ChannelType {
    fn from(t: ChannelType) -> Self {
        match t {
            ChannelType::Base => v1::ChannelType::Base,
            ChannelType::Stream => v1::ChannelType::Stream,
        }
    }
}

impl From<ChannelType> for i32 {
    fn from(t: ChannelType) -> Self {
        v1::ChannelType::from(t) as i32
    }
}

impl ChannelType {
    /// The type in a wire field, or an error naming `field` when it is unspecified or unknown.
    pub fn from_wire(value: i32, field: impl Into<String>) -> Result<Self, ConversionError> {
        match v1::ChannelType::try_from(value) {
            Ok(v1::ChannelType::Base) => Ok(ChannelType::Base),
            Ok(v1::ChannelType::Stream) => Ok(ChannelType::Stream),
            Ok(v1::ChannelType::Unspecified) => Err(ConversionError::Unspecified { field: field.into() }),
            Err(_) => Err(ConversionError::UnknownValue {
                field: field.into(),
                value,
            }),
        }
    }
}

/// One channel's state as a heartbeat carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelState {
    /// The channel's id (its index in the tunnel).
    pub channel_id: u32,
    /// Its status.
    pub status: ChannelStatus,
    /// Its version.
    pub version: Version,
}

impl ChannelState {
    /// Converts `channels[index]` of a heartbeat (request or response); errors name that path.
    pub fn from_wire(state: &v1::ChannelState, index: usize) -> Result<Self, ConversionError> {
        Ok(ChannelState {
            channel_id: state.channel_id,
            status: ChannelStatus::from_wire(state.status, format!("channels[{index}].status"))?,
            version: Version(state.version),
        })
    }

    /// The wire form (`channel_type` as given).
    pub fn to_wire(self, channel_type: ChannelType) -> v1::ChannelState {
        v1::ChannelState {
            channel_id: self.channel_id,
            status: self.status.into(),
            version: self.version.0,
            channel_type: channel_type.into(),
        }
    }
}

/// A wire value that has no domain meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    /// An enum field left at its `UNSPECIFIED` zero value.
    #[error("{field} is required (got UNSPECIFIED)")]
    Unspecified {
        /// The field's path, e.g. `channels[2].status`.
        field: String,
    },
    /// An enum field with a number this version does not know.
    #[error("{field} has unknown value {value}")]
    UnknownValue {
        /// The field's path.
        field: String,
        /// The number received.
        value: i32,
    },
}

impl ConversionError {
    /// The path of the field at fault.
    pub fn field(&self) -> &str {
        match self {
            ConversionError::Unspecified { field } | ConversionError::UnknownValue { field, .. } => field,
        }
    }
}

/// The stream channel number (0-based among the tunnel's `STREAM` channels, in id order) that a key-routed
/// record with `key` goes to: 64-bit FNV-1a of the key modulo `stream_channels`. Producers can use it to predict
/// routing. `stream_channels` must not be zero.
///
/// ```
/// use arbor_proto::tunnel::domain::route_key;
/// assert_eq!(route_key(b"", 4), (0xcbf29ce484222325u64 % 4) as u32);
/// assert!(route_key(b"user-42", 8) < 8);
/// ```
pub fn route_key(key: &[u8], stream_channels: u32) -> u32 {
    assert!(stream_channels > 0, "route_key needs at least one stream channel");
    (fnv1a64(key) % u64::from(stream_channels)) as u32
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn statuses_and_types_round_trip_and_unspecified_names_the_field() {
        for s in [
            ChannelStatus::Wait,
            ChannelStatus::Open,
            ChannelStatus::Closing,
            ChannelStatus::Close,
            ChannelStatus::Terminated,
        ] {
            assert_eq!(ChannelStatus::from_wire(i32::from(s), "status"), Ok(s));
        }
        for t in [ChannelType::Base, ChannelType::Stream] {
            assert_eq!(ChannelType::from_wire(i32::from(t), "channel_type"), Ok(t));
        }
        let err = ChannelStatus::from_wire(0, "channels[1].status").unwrap_err();
        assert_eq!(err.field(), "channels[1].status");
        let err = ChannelType::from_wire(99, "channels[0].channel_type").unwrap_err();
        assert_eq!(
            err,
            ConversionError::UnknownValue {
                field: "channels[0].channel_type".into(),
                value: 99
            }
        );
        let wire = v1::ChannelState {
            channel_id: 3,
            status: 0,
            version: 4,
            channel_type: 0,
        };
        assert_eq!(
            ChannelState::from_wire(&wire, 2).unwrap_err().field(),
            "channels[2].status"
        );
    }

    #[test]
    fn versions_grow_and_saturate() {
        assert_eq!(Version(4).next(), Version(5));
        assert_eq!(Version(i64::MAX).next(), Version(i64::MAX));
        assert!(Version(3) < Version(4));
    }
}
