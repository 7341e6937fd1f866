//! The errors a supervisor returns to callers and the reason it fails with.

use std::time::Duration;

use ractor::ActorId;

/// What went wrong with a request to a supervisor, or with the supervisor itself.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// No child has this id.
    #[error("no child with id {id:?}")]
    UnknownChild {
        /// The id asked for.
        id: String,
    },
    /// No child is this actor.
    #[error("no child is actor {actor}")]
    UnknownActor {
        /// The actor asked for.
        actor: ActorId,
    },
    /// A child with this id exists already.
    #[error("a child with id {id:?} exists already")]
    DuplicateChild {
        /// The id that is taken.
        id: String,
    },
    /// The child is running, so it cannot be restarted or deleted.
    #[error("child {id:?} is running")]
    AlreadyRunning {
        /// The running child's id.
        id: String,
    },
    /// The child's start closure failed.
    #[error("child {id:?} failed to start: {cause}")]
    StartFailed {
        /// The child's id.
        id: String,
        /// Why it failed, as the child reported it.
        cause: String,
    },
    /// A child spec is invalid.
    #[error("invalid child spec {id:?}: {reason}")]
    InvalidSpec {
        /// The child's id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The dynamic supervisor has `max_children` children already.
    #[error("the dynamic supervisor has its maximum of {max_children} children")]
    MaxChildren {
        /// The configured limit.
        max_children: usize,
    },
    /// More restarts than the intensity allows: the supervisor shut its children down and failed.
    #[error(
        "restart intensity exceeded: more than {max_restarts} restarts in {period:?} (last: child {child:?})"
    )]
    IntensityExceeded {
        /// The configured maximum.
        max_restarts: u32,
        /// The configured window.
        period: Duration,
        /// The child whose exit was one too many.
        child: String,
    },
    /// The supervisor did not finish stopping within the time given to `shutdown`; it goes on stopping.
    #[error("supervisor did not stop within {timeout:?}")]
    ShutdownTimedOut {
        /// The time given.
        timeout: Duration,
    },
    /// The supervisor could not be spawned.
    #[error("supervisor failed to start: {0}")]
    Spawn(String),
    /// The supervisor is not running (any more), or did not answer.
    #[error("supervisor is gone: {0}")]
    SupervisorGone(String),
}
