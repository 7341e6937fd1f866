//! One tunnel's live state: channels (status, version, owner, positions), clients, and the assignment
//! history. Everything here runs under the tunnel's lock; the checks and the state change happen together,
//! which is what makes fencing a storage invariant.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arbor_proto::tunnel::domain::{ChannelState, ChannelStatus, ChannelType, Version};
use tokio::sync::watch;

use super::engine::{BatchIndex, ChannelMeta, ProducerBatch, RecoveredChannel, TunnelDef, WriteOp};
use super::producers::Producers;
use super::types::{ChannelDescription, ClientDescription, LeaseClaim, TunnelDescription};
use crate::tunnel_service::assign::{self, ChannelView, Move};
use crate::tunnel_service::error::ServiceError;

/// One change of a channel's status, owner or version, as the server made or accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentEvent {
    /// Position in the tunnel's history (from 0, gap-free while within the history capacity).
    pub event: u64,
    /// When, in ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// The channel.
    pub channel_id: u32,
    /// Its new status.
    pub status: ChannelStatus,
    /// Its new version.
    pub version: Version,
    /// Its owner after the change (set for OPEN and CLOSING).
    pub owner: Option<String>,
    /// Why it changed.
    pub reason: AssignmentReason,
}

/// Why a channel's assignment changed (the assignment history's and the log's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AssignmentReason {
    /// The service balanced the channels over the live clients (OPEN to a new owner, or CLOSING to move it).
    Rebalance,
    /// The owner gave the channel up (its CLOSE report).
    Released,
    /// The owner checkpointed the end of a finished channel (its TERMINATED report).
    Terminated,
    /// The owner was silent past its heartbeat timeout.
    ClientExpired,
    /// The owner shut its session down.
    ClientShutdown,
    /// A CLOSING channel's owner did not release it within the closing timeout.
    ClosingTimeout,
}

impl AssignmentReason {
    /// The reason as the logs and the history print it: `rebalance`, `released`, `terminated`,
    /// `client-expired`, `client-shutdown`, `closing-timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentReason::Rebalance => "rebalance",
            AssignmentReason::Released => "released",
            AssignmentReason::Terminated => "terminated",
            AssignmentReason::ClientExpired => "client-expired",
            AssignmentReason::ClientShutdown => "client-shutdown",
            AssignmentReason::ClosingTimeout => "closing-timeout",
        }
    }
}

impl std::fmt::Display for AssignmentReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for AssignmentReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A channel's state in memory.
pub(crate) struct ChannelRt {
    pub channel_type: ChannelType,
    pub parent: Option<u32>,
    pub status: ChannelStatus,
    pub version: Version,
    pub owner: Option<String>,
    /// The version at which the current owner was given the channel: its lease covers lease..=version.
    pub lease_version: Version,
    pub closing_since: Option<Instant>,
    /// The next sequence number to assign (appends in flight included).
    pub next_seq: u64,
    /// One past the last acknowledged record: what readers may see.
    pub visible_end: u64,
    pub meta: ChannelMeta,
    pub batches: VecDeque<BatchIndex>,
    pub retained_bytes: u64,
    /// Publishes `visible_end` to long-polling readers.
    pub end_tx: watch::Sender<u64>,
    /// Counts changes of status, owner or version (and the tunnel's deletion), so a long-polling reader
    /// whose lease ends learns it at once instead of at the end of its wait.
    pub lease_tx: watch::Sender<u64>,
}

impl ChannelRt {
    /// A channel as recovered; its version starts at `version_floor` at least (see `TunnelStore::with_engine`).
    pub(crate) fn new(
        def_type: ChannelType,
        parent: Option<u32>,
        recovered: RecoveredChannel,
        version_floor: i64,
    ) -> ChannelRt {
        let status = if recovered.meta.terminated {
            ChannelStatus::Terminated
        } else {
            ChannelStatus::Wait
        };
        let retained_bytes = recovered.batches.iter().map(|b| b.bytes).sum();
        let end = recovered.end.max(recovered.meta.first_retained);
        ChannelRt {
            channel_type: def_type,
            parent,
            status,
            // Versions grow across restarts: past any version a checkpoint was written under, and past every
            // version handed out before the restart (the floor).
            version: Version(recovered.meta.checkpoint_version.max(version_floor)),
            owner: None,
            lease_version: Version(0),
            closing_since: None,
            next_seq: end,
            visible_end: end,
            meta: recovered.meta,
            batches: recovered.batches.into(),
            retained_bytes,
            end_tx: watch::Sender::new(end),
            lease_tx: watch::Sender::new(0),
        }
    }

    /// Sealed, and every record up to the seal is acknowledged and checkpointed.
    pub(crate) fn checkpointed_to_end(&self) -> bool {
        self.meta
            .sealed_end
            .is_some_and(|end| self.visible_end == end && self.meta.checkpoint == end)
    }
}

/// A connected consumer.
pub(crate) struct Client {
    pub tag: String,
    pub timeout: Duration,
    pub last_seen: Instant,
    /// The session's secret: the client id is shown to anyone who describes the tunnel, so only this proves
    /// that a call comes from the session.
    pub token: SessionToken,
}

/// A session's secret: 256 bits from the thread's CSPRNG, hex-encoded. Debug never shows it, and it is
/// compared in constant time.
pub(crate) struct SessionToken(String);

impl SessionToken {
    /// A new unguessable token.
    pub(crate) fn generate() -> SessionToken {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        // ThreadRng is a CSPRNG (ChaCha, seeded and periodically reseeded from the OS).
        rand::rng().fill_bytes(&mut bytes);
        SessionToken(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The token, to hand to the client once (ConnectTunnel's answer).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token. Constant time over the token's bytes (its length is public), so
    /// the time taken tells nothing about how much of a guess was right.
    pub(crate) fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(redacted)")
    }
}

/// Everything about a tunnel that changes, behind its lock.
pub(crate) struct TunnelState {
    pub deleted: bool,
    /// Idempotent producers' last batches.
    pub producers: Producers,
    pub channels: Vec<ChannelRt>,
    pub clients: BTreeMap<String, Client>,
    pub history: VecDeque<AssignmentEvent>,
    pub next_event: u64,
    pub history_capacity: usize,
}

impl TunnelState {
    pub(crate) fn new(def: &TunnelDef, recovered: Recovered, limits: TunnelLimits) -> Self {
        let mut channels_found = recovered.channels.into_iter();
        let channels = def
            .channels
            .iter()
            .map(|c| {
                ChannelRt::new(
                    c.channel_type,
                    c.parent,
                    channels_found.next().unwrap_or_default(),
                    recovered.version_floor,
                )
            })
            .collect();
        let history_capacity = limits.history_capacity;
        TunnelState {
            deleted: false,
            producers: Producers::new(recovered.producers, limits.max_producers),
            channels,
            clients: BTreeMap::new(),
            history: VecDeque::new(),
            next_event: 0,
            history_capacity,
        }
    }

    /// Refuses any change to a deleted tunnel: a request that found it before its deletion must not write
    /// anything for it after the deletion's write.
    pub(crate) fn live(&self, tunnel_id: &str) -> Result<(), ServiceError> {
        if self.deleted {
            return Err(ServiceError::TunnelNotFound {
                tunnel: tunnel_id.to_string(),
            });
        }
        Ok(())
    }

    /// The channel `channel` (the request's `field`), or an error naming that field.
    pub(crate) fn channel_index(&self, channel: u32, field: &str) -> Result<usize, ServiceError> {
        if (channel as usize) < self.channels.len() {
            Ok(channel as usize)
        } else {
            Err(ServiceError::invalid(
                field,
                format!("no channel {channel} (the tunnel has {})", self.channels.len()),
            ))
        }
    }

    /// The connected client `client`, if `token` is its session's secret: the first check of every session
    /// call.
    pub(crate) fn session(
        &self,
        tunnel_id: &str,
        client: &str,
        token: &str,
    ) -> Result<&Client, ServiceError> {
        let Some(found) = self.clients.get(client) else {
            return Err(ServiceError::ClientUnknown {
                tunnel_id: tunnel_id.to_string(),
                client_id: client.to_string(),
            });
        };
        if !found.token.matches(token) {
            return Err(ServiceError::NotSession {
                tunnel_id: tunnel_id.to_string(),
                client_id: client.to_string(),
            });
        }
        Ok(found)
    }

    /// Checks that the lease's session (client id and secret) owns its channel under its version: the fence of
    /// ReadRecords, GetCheckpoint and Checkpoint, and of a waiting long poll.
    pub(crate) fn fence(&self, tunnel_id: &str, lease: &LeaseClaim<'_>) -> Result<usize, ServiceError> {
        let (client, channel, version) = (lease.client_id, lease.channel, lease.version);
        self.session(tunnel_id, client, lease.session_token)?;
        let index = self.channel_index(channel, "channel_id")?;
        let ch = &self.channels[index];
        if ch.owner.as_deref() != Some(client) || !ch.status.is_owned() {
            return Err(ServiceError::NotOwner {
                channel,
                reason: format!(
                    "client {client} does not own it (status {}, {}, owner {})",
                    ch.status,
                    ch.version,
                    ch.owner.as_deref().unwrap_or("none")
                ),
            });
        }
        if version < ch.lease_version || version > ch.version {
            return Err(ServiceError::NotOwner {
                channel,
                reason: format!(
                    "{version} is outside the owner's lease ({}..={})",
                    ch.lease_version, ch.version
                ),
            });
        }
        Ok(index)
    }

    fn record(&mut self, channel: usize, reason: AssignmentReason, tunnel_id: &str) {
        let ch = &self.channels[channel];
        let event = AssignmentEvent {
            event: self.next_event,
            at_unix_ms: now_ms(),
            channel_id: channel as u32,
            status: ch.status,
            version: ch.version,
            owner: ch.owner.clone(),
            reason,
        };
        tracing::info!(
            tunnel = tunnel_id,
            channel = channel,
            status = %event.status,
            version = event.version.get(),
            owner = event.owner.as_deref().unwrap_or(""),
            reason = reason.as_str(),
            "tunnel channel assignment changed"
        );
        self.next_event += 1;
        if self.history.len() == self.history_capacity {
            self.history.pop_front();
        }
        self.history.push_back(event);
    }

    fn set(
        &mut self,
        channel: usize,
        status: ChannelStatus,
        version: Version,
        owner: Option<String>,
        reason: AssignmentReason,
        tunnel_id: &str,
    ) {
        let ch = &mut self.channels[channel];
        ch.status = status;
        ch.version = version;
        ch.closing_since = (status == ChannelStatus::Closing).then(Instant::now);
        if status == ChannelStatus::Open && ch.owner != owner {
            ch.lease_version = version;
        }
        ch.owner = owner;
        ch.lease_tx.send_modify(|changes| *changes += 1);
        self.record(channel, reason, tunnel_id);
    }

    /// Takes every channel of `client` back (→ CLOSE, version + 1) and forgets the client.
    pub(crate) fn remove_client(&mut self, client: &str, reason: AssignmentReason, tunnel_id: &str) {
        self.clients.remove(client);
        for i in 0..self.channels.len() {
            let ch = &self.channels[i];
            if ch.owner.as_deref() == Some(client) && ch.status.is_owned() {
                let version = ch.version.next();
                self.set(i, ChannelStatus::Close, version, None, reason, tunnel_id);
            }
        }
    }

    /// Expires clients past their heartbeat timeout and takes back CLOSING channels past `closing_timeout`.
    /// Returns whether anything changed.
    pub(crate) fn expire(&mut self, now: Instant, closing_timeout: Duration, tunnel_id: &str) -> bool {
        let expired: Vec<(String, Duration)> = self
            .clients
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_seen) > c.timeout)
            .map(|(id, c)| (id.clone(), c.timeout))
            .collect();
        let mut changed = !expired.is_empty();
        for (client, timeout) in expired {
            tracing::warn!(
                tunnel = tunnel_id,
                client = %client,
                timeout = ?timeout,
                "tunnel client expired: no heartbeat within its timeout"
            );
            self.remove_client(&client, AssignmentReason::ClientExpired, tunnel_id);
        }
        for i in 0..self.channels.len() {
            let ch = &self.channels[i];
            if ch.status == ChannelStatus::Closing
                && ch
                    .closing_since
                    .is_some_and(|t| now.saturating_duration_since(t) > closing_timeout)
            {
                let version = ch.version.next();
                self.set(
                    i,
                    ChannelStatus::Close,
                    version,
                    None,
                    AssignmentReason::ClosingTimeout,
                    tunnel_id,
                );
                changed = true;
            }
        }
        changed
    }

    /// Applies one heartbeat report of `client`. Reports whose version is not the server's + 1 are stale and
    /// ignored, as are echoes of the server's own state.
    pub(crate) fn apply_report(
        &mut self,
        client: &str,
        report: ChannelState,
        index: usize,
        tunnel_id: &str,
    ) -> Result<(), ServiceError> {
        let channel = self.channel_index(report.channel_id, &format!("channels[{index}].channel_id"))?;
        let ch = &self.channels[channel];
        if ch.owner.as_deref() != Some(client) || report.version != ch.version.next() {
            return Ok(());
        }
        match report.status {
            ChannelStatus::Close if ch.status.is_owned() => {
                self.set(
                    channel,
                    ChannelStatus::Close,
                    report.version,
                    None,
                    AssignmentReason::Released,
                    tunnel_id,
                );
            }
            ChannelStatus::Terminated if ch.status.is_owned() => {
                if !ch.checkpointed_to_end() {
                    return Err(ServiceError::FailedPrecondition {
                        channel: report.channel_id,
                        reason: format!(
                            "TERMINATED reported but the channel is not finished (sealed at {:?}, checkpoint {}, \
                             end {})",
                            ch.meta.sealed_end, ch.meta.checkpoint, ch.visible_end
                        ),
                    });
                }
                self.channels[channel].meta.terminated = true;
                self.set(
                    channel,
                    ChannelStatus::Terminated,
                    report.version,
                    None,
                    AssignmentReason::Terminated,
                    tunnel_id,
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs the assignment plan over the live clients and applies it (versions + 1 on every move).
    pub(crate) fn rebalance(&mut self, tunnel_id: &str) {
        let clients: Vec<String> = self.clients.keys().cloned().collect();
        let views: Vec<ChannelView> = self
            .channels
            .iter()
            .enumerate()
            .map(|(i, ch)| ChannelView {
                id: i as u32,
                status: ch.status,
                owner: ch
                    .owner
                    .as_ref()
                    .and_then(|o| clients.iter().position(|c| c == o)),
                assignable: ch.status != ChannelStatus::Terminated
                    && ch
                        .parent
                        .is_none_or(|p| self.channels[p as usize].status == ChannelStatus::Terminated),
            })
            .collect();
        for m in assign::plan(&views, clients.len()) {
            match m {
                Move::Open { channel, client } => {
                    let version = self.channels[channel as usize].version.next();
                    let owner = Some(clients[client].clone());
                    self.set(
                        channel as usize,
                        ChannelStatus::Open,
                        version,
                        owner,
                        AssignmentReason::Rebalance,
                        tunnel_id,
                    );
                }
                Move::Close { channel } => {
                    let ch = &self.channels[channel as usize];
                    let (version, owner) = (ch.version.next(), ch.owner.clone());
                    self.set(
                        channel as usize,
                        ChannelStatus::Closing,
                        version,
                        owner,
                        AssignmentReason::Rebalance,
                        tunnel_id,
                    );
                }
            }
        }
    }

    /// The channels `client` owns, as a heartbeat answers them.
    pub(crate) fn owned_by(&self, client: &str) -> Vec<(ChannelState, ChannelType)> {
        self.channels
            .iter()
            .enumerate()
            .filter(|(_, ch)| ch.owner.as_deref() == Some(client) && ch.status.is_owned())
            .map(|(i, ch)| {
                (
                    ChannelState {
                        channel_id: i as u32,
                        status: ch.status,
                        version: ch.version,
                    },
                    ch.channel_type,
                )
            })
            .collect()
    }
}

/// What storage held for a tunnel when the store opened (empty for a new tunnel).
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub channels: Vec<RecoveredChannel>,
    pub producers: Vec<(String, ProducerBatch)>,
    /// The least version of every channel (versions handed out before the store opened are below it).
    pub version_floor: i64,
}

/// The store's limits a tunnel applies itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TunnelLimits {
    pub history_capacity: usize,
    pub max_producers: usize,
}

/// A tunnel: its fixed definition and its state behind one lock.
pub(crate) struct Tunnel {
    pub def: TunnelDef,
    pub id: String,
    /// The STREAM channels' ids in id order: where key-routed appends go.
    pub stream_channels: Vec<u32>,
    pub state: Mutex<TunnelState>,
}

impl Tunnel {
    pub(crate) fn lock(&self) -> MutexGuard<'_, TunnelState> {
        // A panic while holding the lock leaves plain data; later requests still see a consistent enough view
        // (each change is a few field assignments) rather than failing forever.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Tunnel {
    pub(crate) fn from_def(def: TunnelDef, recovered: Recovered, limits: TunnelLimits) -> Tunnel {
        let stream_channels = def
            .channels
            .iter()
            .enumerate()
            .filter(|(_, c)| c.channel_type == ChannelType::Stream)
            .map(|(i, _)| i as u32)
            .collect();
        let state = TunnelState::new(&def, recovered, limits);
        Tunnel {
            id: format!("{:016x}", def.uid),
            def,
            stream_channels,
            state: Mutex::new(state),
        }
    }

    /// Applies the retention policy to channel `c` at `now_ms`: drops whole batches from the front (by size,
    /// always keeping the newest; by age, all that are too old) and returns the writes that store it. Only
    /// acknowledged batches go: the retained range never starts past the readable end, where a caught-up
    /// reader stands.
    pub(crate) fn trim(&self, state: &mut TunnelState, c: usize, now_ms: u64) -> Option<Vec<WriteOp>> {
        let retention = self.def.retention;
        let ch = &mut state.channels[c];
        let from = ch.meta.first_retained;
        let mut below = from;
        while let Some(front) = ch.batches.front() {
            if front.first + front.count > ch.visible_end {
                break;
            }
            let too_big = retention.max_bytes_per_channel > 0
                && ch.retained_bytes > retention.max_bytes_per_channel
                && ch.batches.len() > 1;
            let too_old =
                retention.max_age_ms > 0 && front.append_ms.saturating_add(retention.max_age_ms) < now_ms;
            if !(too_big || too_old) {
                break;
            }
            below = front.first + front.count;
            ch.retained_bytes -= front.bytes;
            ch.batches.pop_front();
        }
        if below == from {
            return None;
        }
        ch.meta.first_retained = below;
        tracing::debug!(
            tunnel = %self.id,
            channel = c,
            first_retained = below,
            checkpoint = ch.meta.checkpoint,
            "tunnel channel trimmed by retention"
        );
        Some(vec![
            WriteOp::Trim {
                uid: self.def.uid,
                channel: c as u32,
                from,
                below,
            },
            WriteOp::PutChannelMeta {
                uid: self.def.uid,
                channel: c as u32,
                meta: ch.meta,
            },
        ])
    }

    pub(crate) fn describe(&self) -> TunnelDescription {
        let state = self.lock();
        let now = Instant::now();
        TunnelDescription {
            id: self.id.clone(),
            name: self.def.name.clone(),
            created_unix_ms: self.def.created_ms,
            retention: self.def.retention,
            channels: state
                .channels
                .iter()
                .enumerate()
                .map(|(i, ch)| ChannelDescription {
                    id: i as u32,
                    channel_type: ch.channel_type,
                    parent: ch.parent,
                    status: ch.status,
                    version: ch.version,
                    owner: ch.owner.clone().filter(|_| ch.status.is_owned()),
                    end: ch.visible_end,
                    first_retained: ch.meta.first_retained,
                    checkpoint: ch.meta.checkpoint,
                    sealed: ch.meta.sealed_end.is_some(),
                })
                .collect(),
            clients: state
                .clients
                .iter()
                .map(|(id, c)| ClientDescription {
                    id: id.clone(),
                    tag: c.tag.clone(),
                    heartbeat_timeout: c.timeout,
                    since_last_heartbeat: now.saturating_duration_since(c.last_seen),
                    channels: state
                        .channels
                        .iter()
                        .enumerate()
                        .filter(|(_, ch)| ch.owner.as_deref() == Some(id.as_str()) && ch.status.is_owned())
                        .map(|(i, _)| i as u32)
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SessionToken;

    #[test]
    fn session_tokens_are_long_distinct_hidden_and_matched_whole() {
        let (a, b) = (SessionToken::generate(), SessionToken::generate());
        assert_eq!(a.expose().len(), 64, "256 bits in hex");
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.expose(), b.expose());
        assert!(a.matches(a.expose()));
        assert!(!a.matches(b.expose()));
        assert!(!a.matches(""));
        assert!(!a.matches(&a.expose()[..63]), "a prefix is not the token");
        assert!(!a.matches(&format!("{}0", a.expose())), "nor an extension");
        assert_eq!(format!("{a:?}"), "SessionToken(redacted)");
    }
}
