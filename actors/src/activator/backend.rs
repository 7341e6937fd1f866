//! The election backend trait: what an activator needs from a leader-election service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorCell, SupervisionEvent};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::callbacks::ClusterChange;
use super::handle::ActivatorInfo;
use crate::registry::Registry;

/// A boxed, sendable future (the backend traits are used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a backend reports to its activator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// This candidate won the election.
    Elected {
        /// Strictly increasing per name across leaders.
        fencing_token: u64,
    },
    /// Another candidate leads (or, with `None`, no leader is known right now).
    Following {
        /// Identity of the current leader.
        leader: Option<String>,
    },
    /// This candidate was leader and must stop acting as one (claim not renewed in time, leader key gone).
    Lost {
        /// Why.
        reason: BackendError,
    },
    /// The backend cannot reach its service; it retries after `delay`.
    Retrying {
        /// Attempt number, from 1.
        attempt: u32,
        /// Backoff before the next attempt.
        delay: Duration,
        /// The error that caused the retry.
        error: BackendError,
    },
    /// Node membership changed.
    Cluster(ClusterChange),
}

/// Delivers [`BackendEvent`]s to the activator that owns a candidacy. Cheap to clone.
#[derive(Clone)]
pub struct EventSink(Arc<dyn Fn(BackendEvent) -> bool + Send + Sync>);

impl EventSink {
    /// Wraps a delivery function; it returns `false` once the receiver is gone.
    pub fn new(f: impl Fn(BackendEvent) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Sends an event; `false` if the activator is gone (the candidacy should wind down).
    pub fn send(&self, event: BackendEvent) -> bool {
        (self.0)(event)
    }
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventSink")
    }
}

/// Everything a backend gets when an activator joins the election.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// Singleton name (validated: non-empty, no `/`, no whitespace).
    pub name: String,
    /// Identity this candidate announces as leader (`<node id>/<actor id>`).
    pub identity: String,
    /// The activator actor (the local backend registers and monitors with it).
    pub actor: ActorCell,
    /// Where to report.
    pub events: EventSink,
}

/// What a backend was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackendOperation {
    /// Connecting to the election service.
    Connect,
    /// Granting the session's lease.
    LeaseGrant,
    /// Keeping the lease alive.
    KeepAlive,
    /// Writing the node's membership key.
    Membership,
    /// Watching the membership keys.
    MembershipWatch,
    /// Campaigning for leadership.
    Campaign,
    /// Observing the current leader.
    Observe,
    /// Resigning leadership.
    Resign,
    /// Revoking the session's lease.
    Revoke,
}

impl fmt::Display for BackendOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendOperation::Connect => "connect",
            BackendOperation::LeaseGrant => "lease grant",
            BackendOperation::KeepAlive => "lease keep-alive",
            BackendOperation::Membership => "membership put",
            BackendOperation::MembershipWatch => "membership watch",
            BackendOperation::Campaign => "campaign",
            BackendOperation::Observe => "observe",
            BackendOperation::Resign => "resign",
            BackendOperation::Revoke => "lease revoke",
        })
    }
}

/// A failure of an election backend: why joining failed, why a leader stepped down ([`BackendEvent::Lost`]),
/// why the backend retries ([`BackendEvent::Retrying`], [`ActivatorInfo::backend_error`]).
///
/// `Clone`, `Eq` and serde, so that it can sit in [`ActivatorInfo`]; the election client's own error (not
/// clonable) is kept as its message in `Request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BackendError {
    /// The registry refused an operation (local backend).
    #[error("registry refused key {key:?}: {reason}")]
    Registry {
        /// The registry key.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// A request to the election service failed.
    #[error("{operation} failed: {message}")]
    Request {
        /// What was being done.
        operation: BackendOperation,
        /// The client's error message.
        message: String,
    },
    /// A request got no answer in time.
    #[error("{operation}: no answer within {timeout:?}")]
    Timeout {
        /// What was being done.
        operation: BackendOperation,
        /// The time given.
        #[serde(with = "humantime_serde")]
        timeout: Duration,
    },
    /// A stream the session depends on ended (keep-alive, observe, membership watch).
    #[error("{operation} stream ended")]
    StreamEnded {
        /// Which stream.
        operation: BackendOperation,
    },
    /// No keep-alive sent within the renew deadline was acknowledged: the claim may be lost on the server
    /// soon, so the leader steps down now.
    #[error("lease {lease:x} not renewed within {within:?}")]
    NotRenewed {
        /// The lease.
        lease: i64,
        /// The renew deadline.
        #[serde(with = "humantime_serde")]
        within: Duration,
    },
    /// The server reports the lease expired.
    #[error("lease {lease:x} expired on the server")]
    LeaseExpired {
        /// The lease.
        lease: i64,
    },
    /// Another candidate was observed leading while this one believed it led.
    #[error("observed another leader: {leader}")]
    OtherLeader {
        /// The other leader's identity.
        leader: String,
    },
    /// The service answered something the backend cannot use.
    #[error("{operation}: {reason}")]
    Protocol {
        /// What was being done.
        operation: BackendOperation,
        /// What was wrong with the answer.
        reason: String,
    },
}

/// A leader-election service (local registry, etcd, ...). One backend value can serve many activators.
pub trait Backend: Send + Sync + 'static {
    /// Short name for logs and `dump()` (`"local"`, `"etcd"`).
    fn kind(&self) -> &'static str;

    /// Identity of this node (process) in the election.
    fn node_id(&self) -> &str;

    /// The registry activators using this backend publish their [`ActivatorInfo`] in when
    /// [`ActivatorOptions::registry`](super::ActivatorOptions::registry) is not set.
    fn publish_registry(&self) -> Option<Registry<ActivatorInfo>> {
        None
    }

    /// Joins the election described by `campaign`. The returned candidacy keeps campaigning (and reporting
    /// through `campaign.events`) until it is resigned or dropped.
    fn join(&self, campaign: Campaign) -> BoxFuture<'static, Result<Box<dyn Candidacy>, BackendError>>;
}

/// One activator's participation in an election. Dropping it abandons the election without resigning
/// (what a crash does): the leader claim then ends the backend's way (registry entry removed on actor
/// death, etcd lease expiring).
pub trait Candidacy: Send + 'static {
    /// Supervision events that reach the activator actor (the local backend learns of the leader's death
    /// through a monitor).
    fn supervision_event(&mut self, event: &SupervisionEvent) {
        let _ = event;
    }

    /// Until when this candidate's leadership is certain: `None` for no time bound (the local backend, whose
    /// claim lasts as long as the activator). The activator checks it before every leader callback and steps
    /// down instead once it has passed: a process frozen past its lease must not act on resuming, whatever
    /// its timers fire first. Backends whose claims expire (etcd) must implement it.
    fn leadership_valid_until(&self) -> Option<Instant> {
        None
    }

    /// Gives leadership up at once (if held) and leaves the election.
    fn resign(&mut self) -> BoxFuture<'static, ()>;
}
