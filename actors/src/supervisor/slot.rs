//! Stable handles to children: they follow the child across restarts, like a registered name in OTP.
//!
//! Every child a supervisor keeps has one [`ChildSlot`], created when the child is first started and kept
//! for as long as the supervisor keeps the child. The supervisor writes the running incarnation into it on
//! every (re)start and clears it on every exit, *before* it decides what to restart; handles read it on every
//! operation. So an operation through a handle reaches the incarnation that runs at that moment, or fails with
//! a clear [`ChildNotRunning`](SupervisorError::ChildNotRunning) while the child is down, and never the old
//! incarnation after a restart.
//!
//! A new incarnation never overlaps the old one: the supervisor restarts a child only on its exit event,
//! which ractor sends after the old actor's `post_stop` has returned.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorRef, ActorStatus, Message, RpcReplyPort};

use super::error::SupervisorError;
use super::exit::ExitCell;
use crate::actor::{ActorHandle, TypedActor};

/// Where a child is, as far as its handles are concerned.
enum SlotState {
    Running(ActorCell),
    Down,
    Removed,
}

/// The supervisor-side record of one child that its handles share.
pub(crate) struct ChildSlot {
    id: Arc<str>,
    /// Set for dynamic children, whose shown id is `id#order`.
    order: Option<u64>,
    state: Mutex<SlotState>,
    /// Set once the child is a supervisor: a worker's slot never has records, and its restarts take no lock
    /// to find that out.
    records: OnceLock<Mutex<IncarnationRecords>>,
}

/// What a slot keeps of a child that is a supervisor.
#[derive(Default)]
struct IncarnationRecords {
    /// Where its latest incarnation that started leaves its exit.
    exit: Option<ExitCell>,
    /// The record of its latest incarnation spawned, started or not. A start left half-done (its `pre_start`
    /// failed, was killed, or its parent died meanwhile) may have started children of its own, which ractor
    /// kills without waiting: the next start waits for them through this.
    latest: Option<ExitCell>,
}

impl ChildSlot {
    pub(crate) fn new(id: Arc<str>, order: Option<u64>) -> Arc<Self> {
        Arc::new(ChildSlot {
            id,
            order,
            state: Mutex::new(SlotState::Down),
            records: OnceLock::new(),
        })
    }

    /// The records of a child that is a supervisor, made at the first.
    fn records(&self) -> MutexGuard<'_, IncarnationRecords> {
        // Every write is a single assignment: a poisoned lock still holds whole records.
        self.records
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the records, if the child is a supervisor.
    fn read_records<T>(&self, read: impl FnOnce(&IncarnationRecords) -> T) -> Option<T> {
        let records = self.records.get()?;
        Some(read(&records.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// Records where the incarnation being started (a supervisor) will leave its exit.
    pub(crate) fn set_exit_cell(&self, exit: ExitCell) {
        self.records().exit = Some(exit);
    }

    /// Where the latest incarnation leaves its exit, if the child is a supervisor.
    pub(crate) fn exit_cell(&self) -> Option<ExitCell> {
        self.read_records(|r| r.exit.clone()).flatten()
    }

    /// Records the incarnation about to be spawned (a supervisor), before its `pre_start` starts anything.
    pub(crate) fn set_spawning(&self, exit: ExitCell) {
        self.records().latest = Some(exit);
    }

    /// The record of the latest incarnation spawned, whether its start completed or not: whose orphans a new
    /// start, or the parent's own orphan record, must cover.
    pub(crate) fn latest_incarnation(&self) -> Option<ExitCell> {
        self.read_records(|r| r.latest.clone()).flatten()
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Every write below is a single assignment: a poisoned lock still holds a whole state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_running(&self, cell: ActorCell) {
        *self.lock() = SlotState::Running(cell);
    }

    pub(crate) fn set_down(&self) {
        *self.lock() = SlotState::Down;
    }

    pub(crate) fn set_removed(&self) {
        *self.lock() = SlotState::Removed;
    }

    fn shown_id(&self) -> String {
        match self.order {
            Some(order) => format!("{}#{order}", self.id),
            None => self.id.to_string(),
        }
    }

    /// The running incarnation, or the error that says why there is none.
    fn current(&self) -> Result<ActorCell, SupervisorError> {
        match &*self.lock() {
            SlotState::Running(cell)
                if !matches!(cell.get_status(), ActorStatus::Stopping | ActorStatus::Stopped) =>
            {
                Ok(cell.clone())
            }
            SlotState::Removed => Err(SupervisorError::ChildRemoved { id: self.shown_id() }),
            _ => Err(SupervisorError::ChildNotRunning { id: self.shown_id() }),
        }
    }
}

/// A stable, untyped handle to a supervised child: it resolves the child's current incarnation on every use.
/// Cheap to clone. Get one from `start_child`, `restart_child` or
/// [`SupervisorHandle::child`](super::SupervisorHandle::child); [`typed`](Self::typed) turns it into a
/// [`ChildRef`] to send messages.
#[derive(Clone)]
pub struct ChildHandle {
    slot: Arc<ChildSlot>,
}

impl fmt::Debug for ChildHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildHandle")
            .field("id", &self.slot.shown_id())
            .field("actor", &self.cell().ok().map(|c| c.get_id()))
            .finish()
    }
}

impl ChildHandle {
    pub(crate) fn new(slot: Arc<ChildSlot>) -> Self {
        ChildHandle { slot }
    }

    pub(crate) fn slot(&self) -> &Arc<ChildSlot> {
        &self.slot
    }

    /// The child's id among its siblings (`id#n` for a dynamic supervisor's children).
    pub fn id(&self) -> String {
        self.slot.shown_id()
    }

    /// The running incarnation (what [`Registry::register`](crate::registry::Registry::register) takes);
    /// [`ChildNotRunning`](SupervisorError::ChildNotRunning) while it is down,
    /// [`ChildRemoved`](SupervisorError::ChildRemoved) once its supervisor forgot it. Unlike this handle, the
    /// [`ActorHandle`] does not follow a restart.
    pub fn current(&self) -> Result<ActorHandle, SupervisorError> {
        self.slot.current().map(ActorHandle::from)
    }

    /// The running incarnation in ractor's form; see [`current`](Self::current).
    pub fn cell(&self) -> Result<ActorCell, SupervisorError> {
        self.slot.current()
    }

    /// Whether an incarnation is running now.
    pub fn is_running(&self) -> bool {
        self.cell().is_ok()
    }

    /// Asks the current incarnation to stop with `reason`. Its supervisor then does what the child's restart
    /// type says with that exit (a permanent child is restarted; use the supervisor's `terminate_child` to
    /// keep it down).
    pub fn stop(&self, reason: Option<String>) -> Result<(), SupervisorError> {
        self.cell()?.stop(reason);
        Ok(())
    }

    /// Kills the current incarnation (no `post_stop`); an abnormal exit for its supervisor.
    pub fn kill(&self) -> Result<(), SupervisorError> {
        self.cell()?.kill();
        Ok(())
    }

    /// The typed form, for children whose actor handles `M`. Checked on every use, so this cannot fail; an
    /// operation on a child of another message type fails with
    /// [`WrongMessageType`](SupervisorError::WrongMessageType).
    pub fn typed<M: Message>(&self) -> ChildRef<M> {
        ChildRef {
            handle: self.clone(),
            _message: PhantomData,
        }
    }

    /// A weak handle, which does not keep the child's record alive once its supervisor forgot it.
    pub fn downgrade(&self) -> WeakChildHandle {
        WeakChildHandle {
            slot: Arc::downgrade(&self.slot),
        }
    }
}

/// A [`ChildHandle`] that does not keep the child's record alive; [`upgrade`](Self::upgrade) it to use it.
#[derive(Clone, Debug)]
pub struct WeakChildHandle {
    slot: Weak<ChildSlot>,
}

impl WeakChildHandle {
    /// The handle, while the child's supervisor (or another handle) still keeps the record.
    pub fn upgrade(&self) -> Option<ChildHandle> {
        self.slot.upgrade().map(ChildHandle::new)
    }
}

/// A stable, typed handle to a supervised child whose actor handles messages of type `M`: every `cast`,
/// `call`, `stop` and `kill` reaches the incarnation running at that moment. Cheap to clone.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use arbor_actors::supervisor::{ChildSpec, DynamicSupervisor};
/// # use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
/// # struct Counter;
/// # enum CounterMsg { Get(RpcReplyPort<u32>) }
/// # impl Actor for Counter {
/// #     type Msg = CounterMsg; type State = u32; type Arguments = u32;
/// #     async fn pre_start(&self, _: ActorRef<CounterMsg>, n: u32) -> Result<u32, ActorProcessingErr> { Ok(n) }
/// #     async fn handle(&self, _: ActorRef<CounterMsg>, m: CounterMsg, n: &mut u32) -> Result<(), ActorProcessingErr> {
/// #         let CounterMsg::Get(reply) = m; let _ = reply.send(*n); Ok(())
/// #     }
/// # }
/// let jobs = DynamicSupervisor::builder().start().await?;
/// let counter = jobs.start_child(ChildSpec::actor("counter", || (Counter, 7))).await?;
/// assert_eq!(counter.call(CounterMsg::Get, Duration::from_secs(1)).await?, 7);
/// counter.kill()?; // a permanent child: its supervisor starts a new incarnation, the handle follows it
/// # Ok(()) }
/// ```
pub struct ChildRef<M> {
    handle: ChildHandle,
    _message: PhantomData<fn() -> M>,
}

impl<M> Clone for ChildRef<M> {
    fn clone(&self) -> Self {
        ChildRef {
            handle: self.handle.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> fmt::Debug for ChildRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ChildRef").field(&self.handle).finish()
    }
}

impl<M: Message> ChildRef<M> {
    /// The running incarnation as a typed handle (valid until that incarnation exits; this `ChildRef` follows
    /// restarts, the [`TypedActor`] does not).
    pub fn current(&self) -> Result<TypedActor<M>, SupervisorError> {
        Ok(self.actor()?.into())
    }

    /// The running incarnation in ractor's form; see [`current`](Self::current).
    pub fn actor(&self) -> Result<ActorRef<M>, SupervisorError> {
        let cell = self.handle.cell()?;
        if cell.is_message_type_of::<M>() == Some(false) {
            return Err(SupervisorError::WrongMessageType {
                id: self.handle.id(),
                expected: std::any::type_name::<M>(),
            });
        }
        Ok(cell.into())
    }

    /// Sends `msg` to the current incarnation.
    pub fn cast(&self, msg: M) -> Result<(), SupervisorError> {
        self.actor()?
            .cast(msg)
            .map_err(|_| SupervisorError::ChildNotRunning { id: self.handle.id() })
    }

    /// Sends the message `msg` builds around a reply port to the current incarnation and waits for the reply,
    /// at most `timeout`.
    pub async fn call<R: Send + 'static>(
        &self,
        msg: impl FnOnce(RpcReplyPort<R>) -> M,
        timeout: Duration,
    ) -> Result<R, SupervisorError> {
        match self.actor()?.call(msg, Some(timeout)).await {
            Ok(CallResult::Success(reply)) => Ok(reply),
            Ok(CallResult::Timeout) => Err(SupervisorError::CallTimedOut {
                id: self.handle.id(),
                timeout,
            }),
            Ok(CallResult::SenderError) | Err(_) => {
                Err(SupervisorError::ChildNotRunning { id: self.handle.id() })
            }
        }
    }

    /// See [`ChildHandle::stop`].
    pub fn stop(&self, reason: Option<String>) -> Result<(), SupervisorError> {
        self.handle.stop(reason)
    }

    /// See [`ChildHandle::kill`].
    pub fn kill(&self) -> Result<(), SupervisorError> {
        self.handle.kill()
    }

    /// Whether an incarnation is running now.
    pub fn is_running(&self) -> bool {
        self.handle.is_running()
    }

    /// The child's id.
    pub fn id(&self) -> String {
        self.handle.id()
    }

    /// The untyped handle.
    pub fn handle(&self) -> &ChildHandle {
        &self.handle
    }

    /// A weak handle (see [`ChildHandle::downgrade`]).
    pub fn downgrade(&self) -> WeakChildRef<M> {
        WeakChildRef {
            weak: self.handle.downgrade(),
            _message: PhantomData,
        }
    }
}

/// A [`ChildRef`] that does not keep the child's record alive.
pub struct WeakChildRef<M> {
    weak: WeakChildHandle,
    _message: PhantomData<fn() -> M>,
}

impl<M> Clone for WeakChildRef<M> {
    fn clone(&self) -> Self {
        WeakChildRef {
            weak: self.weak.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> fmt::Debug for WeakChildRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WeakChildRef").field(&self.weak).finish()
    }
}

impl<M: Message> WeakChildRef<M> {
    /// The strong reference, while the child's record is kept.
    pub fn upgrade(&self) -> Option<ChildRef<M>> {
        self.weak.upgrade().map(|h| h.typed())
    }
}
