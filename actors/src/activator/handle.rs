//! [`ActivatorHandle`]: talking to an activator without ractor messages, and what `dump()` returns.

use std::time::{Duration, SystemTime};

use ractor::{ActorCell, ActorRef, ActorStatus, RpcReplyPort};
use serde::{Deserialize, Serialize};

use super::actor::ActivatorMsg;
use super::backend::BackendError;
use super::callbacks::Role;
use crate::actor::ActorHandle;

/// A snapshot of an activator (Stoker's `dump/1`); also its metadata in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivatorInfo {
    /// Singleton name.
    pub name: String,
    /// Leader, follower or unknown.
    pub role: Role,
    /// Node (process) this activator runs on.
    pub node_id: String,
    /// This activator's identity in the election: `<node id>/<actor id>`.
    pub identity: String,
    /// Backend kind (`"local"`, `"etcd"`).
    pub backend: String,
    /// When the activator started (leader or not).
    pub created_at: SystemTime,
    /// When it last became leader; `None` while not leader.
    pub active_from: Option<SystemTime>,
    /// Identity of the current leader, when known.
    pub leader: Option<String>,
    /// The fencing token of this activator's current leadership; `None` while not leader.
    pub fencing_token: Option<u64>,
    /// When the next [`ActivatorEvent::Timer`](super::ActivatorEvent::Timer) fires, if one is armed.
    pub next_timer_at: Option<SystemTime>,
    /// The last error of the backend while it retries (e.g. etcd unreachable); `None` once it answers.
    pub backend_error: Option<BackendError>,
}

/// Errors from an [`ActivatorHandle`] or from starting an activator.
#[derive(Debug, thiserror::Error)]
pub enum ActivatorError {
    /// The singleton name is unusable as a registry / etcd key segment.
    #[error("invalid activator name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A backend configuration value is out of range.
    #[error("invalid {field}: {value} ({reason})")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Its value, rendered.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The actor could not be spawned (its `init`, or joining the election, failed: see the source).
    #[error("activator {name:?} failed to start")]
    Spawn {
        /// Singleton name.
        name: String,
        /// ractor's error, which holds the cause.
        #[source]
        source: ractor::SpawnErr,
    },
    /// A node id is unusable in the election (empty, a `/`, whitespace, control or invisible characters).
    #[error("invalid node id {node_id:?}: {reason}")]
    InvalidNodeId {
        /// The node id given.
        node_id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The activator is not running (any more).
    #[error("activator {name:?} is not running")]
    NotRunning {
        /// Singleton name.
        name: String,
    },
    /// The activator did not answer in time.
    #[error("activator {name:?} did not answer within {timeout:?}")]
    Timeout {
        /// Singleton name.
        name: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// How long `dump()` waits for an answer; a leader busy in a long callback answers only afterwards.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle to a running activator.
#[derive(Debug, Clone)]
pub struct ActivatorHandle {
    name: String,
    actor: ActorRef<ActivatorMsg>,
}

impl ActivatorHandle {
    pub(crate) fn new(name: String, actor: ActorRef<ActivatorMsg>) -> Self {
        Self { name, actor }
    }

    /// Wraps the cell of an activator started through a [`ChildSpec`](crate::supervisor::ChildSpec) (or
    /// found in the registry). `None` if the cell is not an activator.
    pub fn from_cell(name: impl Into<String>, cell: ActorCell) -> Option<Self> {
        // `is_message_type_of` answers `None` for remote actors and `Some(false)` for other local types.
        if cell.is_message_type_of::<ActivatorMsg>() != Some(true) {
            return None;
        }
        Some(Self {
            name: name.into(),
            actor: cell.into(),
        })
    }

    /// The singleton name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The activator's actor (to register, wait for, or kill it).
    pub fn actor(&self) -> ActorHandle {
        ActorHandle::from(&self.actor)
    }

    /// The activator's actor in ractor's form (to link or monitor it).
    pub fn cell(&self) -> ActorCell {
        self.actor.get_cell()
    }

    /// Whether the actor is still running.
    pub fn is_alive(&self) -> bool {
        !matches!(
            self.actor.get_status(),
            ActorStatus::Stopping | ActorStatus::Stopped
        )
    }

    /// Current state of the activator.
    pub async fn dump(&self) -> Result<ActivatorInfo, ActivatorError> {
        self.call(ActivatorMsg::Dump).await
    }

    /// Current role (a `dump()` reduced to the role).
    pub async fn role(&self) -> Result<Role, ActivatorError> {
        Ok(self.dump().await?.role)
    }

    /// Stops the activator gracefully: runs the `Shutdown("shutdown")` callback, resigns leadership at once
    /// (so a follower takes over without waiting for a timeout) and waits until the actor has exited, at most
    /// `timeout`. Under a supervisor a permanent child is restarted after this, and the restarted activator
    /// competes for the leadership like any follower: with the local backend it often claims it again before a
    /// waiting follower does (there is no queue of candidates). Stop it through its supervisor to keep it down
    /// and let a follower lead.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), ActivatorError> {
        self.shutdown_with_reason("shutdown", timeout).await
    }

    /// Like [`shutdown`](Self::shutdown), passing `reason` to the `Shutdown` callback.
    pub async fn shutdown_with_reason(
        &self,
        reason: impl Into<String>,
        timeout: Duration,
    ) -> Result<(), ActivatorError> {
        let reason = reason.into();
        self.actor
            .send_message(ActivatorMsg::Shutdown(reason))
            .map_err(|_| self.not_running())?;
        self.actor
            .get_cell()
            .wait(Some(timeout))
            .await
            .map_err(|_| ActivatorError::Timeout {
                name: self.name.clone(),
                timeout,
            })
    }

    async fn call<T: Send + 'static>(
        &self,
        msg: impl FnOnce(RpcReplyPort<T>) -> ActivatorMsg,
    ) -> Result<T, ActivatorError> {
        match self.actor.call(msg, Some(CALL_TIMEOUT)).await {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            Ok(ractor::rpc::CallResult::Timeout) => Err(ActivatorError::Timeout {
                name: self.name.clone(),
                timeout: CALL_TIMEOUT,
            }),
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err(self.not_running()),
        }
    }

    fn not_running(&self) -> ActivatorError {
        ActivatorError::NotRunning {
            name: self.name.clone(),
        }
    }
}
