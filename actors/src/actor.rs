//! arbor's handles to one running actor: [`ActorHandle`] (any message type) and [`TypedActor<M>`] (sends
//! messages of type `M`).
//!
//! They are what arbor's APIs take and give where an actor is named: [`Registry::register`] takes anything
//! that converts into an [`ActorHandle`] (a ractor `ActorRef` or `ActorCell`, a [`TypedActor`], the current
//! incarnation of a supervised child from [`ChildHandle::current`]); [`Registry::lookup`] and
//! [`Registry::lookup_typed`] give them back. A handle names one incarnation: once that actor exits, its
//! operations fail with [`ActorError::NotRunning`]. To follow a child across restarts, keep its
//! [`ChildRef`] instead.
//!
//! The ractor form stays reachable under an explicit name ([`ActorHandle::ractor_cell`],
//! [`TypedActor::ractor_ref`]) for code that needs ractor's own API.
//!
//! [`Registry::register`]: crate::registry::Registry::register
//! [`Registry::lookup`]: crate::registry::Registry::lookup
//! [`Registry::lookup_typed`]: crate::registry::Registry::lookup_typed
//! [`ChildHandle::current`]: crate::supervisor::ChildHandle::current
//! [`ChildRef`]: crate::supervisor::ChildRef

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorRef, ActorStatus, Message, RpcReplyPort};

/// An actor's id, unique in the process; printed as `0.13`.
pub use ractor::ActorId;

/// What went wrong with an operation on an [`ActorHandle`] or a [`TypedActor`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ActorError {
    /// The actor has exited (or is stopping).
    #[error("actor {actor} is not running")]
    NotRunning {
        /// The actor.
        actor: ActorId,
    },
    /// The actor does not handle messages of the type asked for.
    #[error("actor {actor} does not handle messages of type {expected}")]
    WrongType {
        /// The actor.
        actor: ActorId,
        /// The message type asked for.
        expected: &'static str,
    },
    /// A call got no reply in time.
    #[error("actor {actor} did not answer within {}", humantime::format_duration(*.timeout))]
    CallTimedOut {
        /// The actor.
        actor: ActorId,
        /// How long the call waited.
        timeout: Duration,
    },
    /// Waiting for the actor's exit took longer than asked.
    #[error("actor {actor} was still running after {}", humantime::format_duration(*.timeout))]
    WaitTimedOut {
        /// The actor.
        actor: ActorId,
        /// How long the wait lasted.
        timeout: Duration,
    },
}

/// One running actor, whatever its message type. Cheap to clone; see the [module docs](self).
#[derive(Clone)]
pub struct ActorHandle {
    pub(crate) cell: ActorCell,
}

impl fmt::Debug for ActorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ActorHandle")
            .field(&format_args!("{}", self.cell.get_id()))
            .finish()
    }
}

/// `name (0.13)`, or `0.13` for an actor without a name.
impl fmt::Display for ActorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cell.get_name() {
            Some(name) => write!(f, "{name} ({})", self.cell.get_id()),
            None => write!(f, "{}", self.cell.get_id()),
        }
    }
}

impl PartialEq for ActorHandle {
    fn eq(&self, other: &Self) -> bool {
        self.cell.get_id() == other.cell.get_id()
    }
}

impl Eq for ActorHandle {}

impl ActorHandle {
    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.cell.get_id()
    }

    /// The actor's name, if it was spawned with one.
    pub fn name(&self) -> Option<String> {
        self.cell.get_name()
    }

    /// Whether the actor still runs (not stopping, not exited).
    pub fn is_running(&self) -> bool {
        !matches!(
            self.cell.get_status(),
            ActorStatus::Stopping | ActorStatus::Stopped
        )
    }

    /// Whether the actor has fully exited (its `post_stop` has returned).
    pub fn has_exited(&self) -> bool {
        self.cell.get_status() == ActorStatus::Stopped
    }

    /// Asks the actor to stop with `reason` (a supervisor restarts it if its restart type says so).
    pub fn stop(&self, reason: Option<String>) {
        self.cell.stop(reason);
    }

    /// Kills the actor (no `post_stop`): an abnormal exit for its supervisor.
    pub fn kill(&self) {
        self.cell.kill();
    }

    /// Waits until the actor has exited, at most `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Result<(), ActorError> {
        self.cell
            .wait(Some(timeout))
            .await
            .map_err(|_| ActorError::WaitTimedOut {
                actor: self.id(),
                timeout,
            })
    }

    /// The typed form, to send messages; [`ActorError::WrongType`] if the actor does not handle `M`.
    pub fn typed<M: Message>(&self) -> Result<TypedActor<M>, ActorError> {
        match self.cell.is_message_type_of::<M>() {
            Some(false) => Err(ActorError::WrongType {
                actor: self.id(),
                expected: std::any::type_name::<M>(),
            }),
            _ => Ok(TypedActor {
                handle: self.clone(),
                _message: PhantomData,
            }),
        }
    }

    /// The ractor form, for ractor's own API (monitoring, links, process groups).
    pub fn ractor_cell(&self) -> &ActorCell {
        &self.cell
    }
}

impl From<ActorCell> for ActorHandle {
    fn from(cell: ActorCell) -> Self {
        ActorHandle { cell }
    }
}

impl From<&ActorCell> for ActorHandle {
    fn from(cell: &ActorCell) -> Self {
        ActorHandle { cell: cell.clone() }
    }
}

impl<M> From<ActorRef<M>> for ActorHandle {
    fn from(actor: ActorRef<M>) -> Self {
        ActorHandle {
            cell: actor.get_cell(),
        }
    }
}

impl<M> From<&ActorRef<M>> for ActorHandle {
    fn from(actor: &ActorRef<M>) -> Self {
        ActorHandle {
            cell: actor.get_cell(),
        }
    }
}

impl<M> From<TypedActor<M>> for ActorHandle {
    fn from(actor: TypedActor<M>) -> Self {
        actor.handle
    }
}

impl<M> From<&TypedActor<M>> for ActorHandle {
    fn from(actor: &TypedActor<M>) -> Self {
        actor.handle.clone()
    }
}

/// One running actor that handles messages of type `M`: `cast` and `call` without ractor's macros or error
/// types. Cheap to clone; see the [module docs](self).
pub struct TypedActor<M> {
    handle: ActorHandle,
    _message: PhantomData<fn() -> M>,
}

impl<M> Clone for TypedActor<M> {
    fn clone(&self) -> Self {
        TypedActor {
            handle: self.handle.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> fmt::Debug for TypedActor<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TypedActor")
            .field(&format_args!("{}", self.handle.id()))
            .finish()
    }
}

impl<M> fmt::Display for TypedActor<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.handle.fmt(f)
    }
}

impl<M: Message> TypedActor<M> {
    /// Sends `msg`.
    pub fn cast(&self, msg: M) -> Result<(), ActorError> {
        self.ractor_ref().cast(msg).map_err(|_| self.not_running())
    }

    /// Sends the message `msg` builds around a reply port and waits for the reply, at most `timeout`.
    pub async fn call<R: Send + 'static>(
        &self,
        msg: impl FnOnce(RpcReplyPort<R>) -> M,
        timeout: Duration,
    ) -> Result<R, ActorError> {
        match self.ractor_ref().call(msg, Some(timeout)).await {
            Ok(CallResult::Success(reply)) => Ok(reply),
            Ok(CallResult::Timeout) => Err(ActorError::CallTimedOut {
                actor: self.handle.id(),
                timeout,
            }),
            Ok(CallResult::SenderError) | Err(_) => Err(self.not_running()),
        }
    }

    fn not_running(&self) -> ActorError {
        ActorError::NotRunning {
            actor: self.handle.id(),
        }
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.handle.id()
    }

    /// Whether the actor still runs.
    pub fn is_running(&self) -> bool {
        self.handle.is_running()
    }

    /// See [`ActorHandle::stop`].
    pub fn stop(&self, reason: Option<String>) {
        self.handle.stop(reason);
    }

    /// See [`ActorHandle::kill`].
    pub fn kill(&self) {
        self.handle.kill();
    }

    /// The untyped handle.
    pub fn handle(&self) -> &ActorHandle {
        &self.handle
    }

    /// The ractor form, for ractor's own API.
    pub fn ractor_ref(&self) -> ActorRef<M> {
        self.handle.cell.clone().into()
    }
}

impl<M: Message> From<ActorRef<M>> for TypedActor<M> {
    fn from(actor: ActorRef<M>) -> Self {
        TypedActor {
            handle: actor.into(),
            _message: PhantomData,
        }
    }
}

impl<M: Message> From<&ActorRef<M>> for TypedActor<M> {
    fn from(actor: &ActorRef<M>) -> Self {
        TypedActor {
            handle: actor.into(),
            _message: PhantomData,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};

    struct Echo;
    impl Actor for Echo {
        type Msg = RpcReplyPort<u32>;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            reply: Self::Msg,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            let _ = reply.send(7);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_handle_calls_refuses_other_types_and_says_when_its_actor_is_gone() {
        let (actor, join) = Actor::spawn(None, Echo, ()).await.unwrap();
        let handle = ActorHandle::from(&actor);
        assert!(matches!(
            handle.typed::<String>(),
            Err(ActorError::WrongType { .. })
        ));
        let typed = handle.typed::<RpcReplyPort<u32>>().unwrap();
        assert_eq!(typed.call(|r| r, Duration::from_secs(5)).await, Ok(7));
        handle.kill();
        join.await.unwrap();
        assert!(handle.has_exited());
        assert_eq!(
            typed.call(|r| r, Duration::from_secs(5)).await,
            Err(ActorError::NotRunning { actor: handle.id() })
        );
        assert_eq!(handle.wait(Duration::from_secs(1)).await, Ok(()));
    }
}
