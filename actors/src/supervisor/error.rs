//! The errors a supervisor, its handles and its child handles return.
//!
//! Each variant names the state the caller has to react to, as OTP's answers do: `AlreadyStarted` (a live
//! child holds the id) is not `AlreadyPresent` (the spec is kept, the child is down: `restart_child` it), and
//! `Restarting` (wait) is neither. `Display` says what failed; the cause, where there is one, is the
//! [`source`](std::error::Error::source).

use std::time::Duration;

use ractor::{ActorCell, ActorId};

/// A cause kept as the error's `source()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong with a request to a supervisor, with one of its children, or with the supervisor itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// Two specs in the list given at start share an id (OTP `duplicate_child_name`).
    #[error("two children have the id {id:?}")]
    DuplicateChild {
        /// The id used twice.
        id: String,
    },
    /// `start_child` with an id whose child is running (OTP `{already_started, Pid}`).
    #[error("child {id:?} is already started as actor {}", .actor.get_id())]
    AlreadyStarted {
        /// The id.
        id: String,
        /// The running child.
        actor: ActorCell,
    },
    /// `start_child` with an id whose spec is kept but whose child is not running (OTP `already_present`):
    /// `restart_child` starts it, `delete_child` frees the id.
    #[error("child {id:?} is already present (not running); restart or delete it")]
    AlreadyPresent {
        /// The id.
        id: String,
    },
    /// The child is running, so it cannot be restarted or deleted (OTP `running`).
    #[error("child {id:?} is running")]
    AlreadyRunning {
        /// The running child's id.
        id: String,
    },
    /// The child's restart failed and is pending a retry (OTP `restarting`): it cannot be restarted or
    /// deleted by hand meanwhile.
    #[error("child {id:?} is restarting")]
    Restarting {
        /// The child's id.
        id: String,
    },
    /// The child's start failed: its start closure returned an error or panicked, or its `pre_start` failed.
    /// The cause is the `source()`.
    #[error("child {id:?} failed to start")]
    StartFailed {
        /// The child's id.
        id: String,
        /// Why: the error `pre_start` or the start closure returned, or the panic message.
        #[source]
        source: BoxError,
    },
    /// The start closure returned an actor that is not linked to the supervisor, so its exits would go
    /// unnoticed. The actor was stopped.
    #[error("child {id:?} started actor {actor}, which is not linked to its supervisor")]
    NotLinked {
        /// The child's id.
        id: String,
        /// The actor the closure returned.
        actor: ActorId,
    },
    /// A child spec is invalid.
    #[error("invalid child spec {id:?}: {field} {reason}")]
    InvalidSpec {
        /// The child's id.
        id: String,
        /// The setting at fault (`"id"`, `"significant"`, `"backoff.max"`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A supervisor flag is invalid (OTP `invalid_period` and friends).
    #[error("invalid supervisor options: {field} {reason}")]
    InvalidOptions {
        /// The flag at fault (`"period"`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The dynamic supervisor has `max_children` children already.
    #[error("the dynamic supervisor has its maximum of {max_children} children")]
    MaxChildren {
        /// The configured limit.
        max_children: usize,
    },
    /// The supervisor did not finish stopping within the time given to `shutdown`; it goes on stopping.
    #[error("supervisor did not stop within {timeout:?}")]
    ShutdownTimedOut {
        /// The time given.
        timeout: Duration,
    },
    /// The supervisor could not be spawned.
    #[error("supervisor failed to start")]
    Spawn(#[source] ractor::SpawnErr),
    /// The supervisor is not running (any more): stopped, or down between two incarnations.
    #[error("supervisor {which} is not running")]
    NotRunning {
        /// Its id, name or actor id.
        which: String,
    },
    /// The supervisor is shutting down and takes no new children.
    #[error("supervisor is shutting down")]
    ShuttingDown,
    /// The actor is not a supervisor of this crate (or not one of the kind asked for).
    #[error("actor {actor} is not a {expected}")]
    NotASupervisor {
        /// The actor.
        actor: ActorId,
        /// What was expected (`"supervisor"`, `"dynamic supervisor"`).
        expected: &'static str,
    },
    /// The child is not of the kind asked for (a worker where a supervisor was expected, ...).
    #[error("child {id:?} is a {actual:?}, not a {expected}")]
    WrongChildKind {
        /// The child's id.
        id: String,
        /// What was asked for.
        expected: &'static str,
        /// What it is.
        actual: super::ChildKind,
    },
    /// The child is not running right now (it is restarting, or terminated with its spec kept).
    #[error("child {id:?} is not running")]
    ChildNotRunning {
        /// The child's id.
        id: String,
    },
    /// The child is gone for good: a temporary child that exited, a dynamic child that was terminated, or a
    /// deleted spec. Handles to it will never resolve again.
    #[error("child {id:?} is gone (removed from its supervisor)")]
    ChildRemoved {
        /// The child's id.
        id: String,
    },
    /// The child does not handle messages of the type asked for.
    #[error("child {id:?} does not handle messages of type {expected}")]
    WrongMessageType {
        /// The child's id.
        id: String,
        /// The message type asked for.
        expected: &'static str,
    },
    /// A call to a child got no answer in time.
    #[error("child {id:?} did not answer within {timeout:?}")]
    CallTimedOut {
        /// The child's id.
        id: String,
        /// How long the caller waited.
        timeout: Duration,
    },
}

/// The cause of a [`SupervisorError::StartFailed`] when the start closure panicked.
#[derive(Debug, thiserror::Error)]
#[error("the start closure panicked: {message}")]
pub struct StartPanic {
    /// The panic message.
    pub message: String,
}
