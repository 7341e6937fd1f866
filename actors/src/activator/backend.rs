//! The election backend trait: what an activator needs from a leader-election service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorCell, SupervisionEvent};

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
        /// Why, for logs.
        reason: String,
    },
    /// The backend cannot reach its service; it retries after `delay`.
    Retrying {
        /// Attempt number, from 1.
        attempt: u32,
        /// Backoff before the next attempt.
        delay: Duration,
        /// The error that caused the retry.
        error: String,
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

/// Failure to join an election.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The registry refused an operation.
    #[error("registry error for key {key:?}: {reason}")]
    Registry {
        /// The registry key.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// Backend-specific failure.
    #[error("{0}")]
    Other(String),
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

    /// Gives leadership up at once (if held) and leaves the election.
    fn resign(&mut self) -> BoxFuture<'static, ()>;
}
