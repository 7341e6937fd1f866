//! The cloneable handles users talk to supervisors through: [`SupervisorHandle`] and
//! [`DynamicSupervisorHandle`], each on one incarnation (fixed) or following a child supervisor through its
//! slot across restarts.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{ActorCell, ActorId, ActorRef, ActorStatus, Message, RactorErr};

use super::actor::{ChildSelector, Description, IncarnationInfo, SupervisorMsg};
use super::children::{ChildCounts, ChildInfo};
use super::dynamic::{self, DynamicShared};
use super::error::SupervisorError;
use super::exit::{ExitCell, SupervisorExit};
use super::slot::{ChildHandle, ChildRef};
use super::snapshot::{self, TreeSnapshot};
use super::spec::{ChildKind, ChildSpec, TypedChildSpec};
use super::template::{ChildTemplate, TemplatedSupervisor};

/// What `start_child` returns for a spec: a [`ChildRef<M>`] for a [`TypedChildSpec<M>`] (the spec knows the
/// message type), a [`ChildHandle`] for a plain [`ChildSpec`].
pub trait StartSpec: Into<ChildSpec> + sealed::Sealed {
    /// The handle `start_child` gives back.
    type Handle;
    #[doc(hidden)]
    fn wrap(handle: ChildHandle) -> Self::Handle;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ChildSpec {}
    impl<M> Sealed for super::TypedChildSpec<M> {}
}

impl StartSpec for ChildSpec {
    type Handle = ChildHandle;
    fn wrap(handle: ChildHandle) -> ChildHandle {
        handle
    }
}

impl<M: Message> StartSpec for TypedChildSpec<M> {
    type Handle = ChildRef<M>;
    fn wrap(handle: ChildHandle) -> ChildRef<M> {
        handle.typed()
    }
}

/// The supervisor a handle talks to.
#[derive(Clone)]
pub(super) enum Target {
    /// One incarnation: a supervisor this handle's creator started, or one given by its cell.
    Fixed {
        actor: ActorRef<SupervisorMsg>,
        /// Known when the handle started it; otherwise asked for.
        exit: Option<ExitCell>,
    },
    /// A child supervisor, followed across its restarts.
    Child(ChildHandle),
}

impl Target {
    fn resolve(&self) -> Result<ActorRef<SupervisorMsg>, SupervisorError> {
        match self {
            Target::Fixed { actor, .. } => match actor.get_status() {
                ActorStatus::Stopping | ActorStatus::Stopped => {
                    Err(SupervisorError::NotRunning { which: self.which() })
                }
                _ => Ok(actor.clone()),
            },
            Target::Child(child) => child
                .cell()
                .map(Into::into)
                .map_err(|_| SupervisorError::NotRunning { which: self.which() }),
        }
    }

    fn which(&self) -> String {
        match self {
            Target::Fixed { actor, .. } => actor.get_name().unwrap_or_else(|| actor.get_id().to_string()),
            Target::Child(child) => child.id(),
        }
    }

    fn from_cell(cell: ActorCell, expected: &'static str) -> Result<Target, SupervisorError> {
        // `None` is a remote actor: it cannot be one of ours either.
        if cell.is_message_type_of::<SupervisorMsg>() != Some(true) {
            return Err(SupervisorError::NotASupervisor {
                actor: cell.get_id(),
                expected,
            });
        }
        Ok(Target::Fixed {
            actor: cell.into(),
            exit: None,
        })
    }

    async fn call<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<T>) -> SupervisorMsg,
    ) -> Result<T, SupervisorError> {
        match self.resolve()?.call(msg, None).await {
            Ok(ractor::rpc::CallResult::Success(answer)) => Ok(answer),
            _ => Err(SupervisorError::NotRunning { which: self.which() }),
        }
    }

    async fn info(&self) -> Result<IncarnationInfo, SupervisorError> {
        self.call(SupervisorMsg::Info).await
    }

    async fn shutdown(&self, timeout: Duration) -> Result<(), SupervisorError> {
        let Ok(actor) = self.resolve() else {
            return Ok(()); // already stopped: the outcome asked for
        };
        match actor.stop_and_wait(Some("shutdown".into()), Some(timeout)).await {
            Err(RactorErr::Timeout) => Err(SupervisorError::ShutdownTimedOut { timeout }),
            _ => Ok(()),
        }
    }

    /// Waits for the current incarnation's exit; for a child supervisor that is down, the last one's.
    async fn wait(&self) -> Result<SupervisorExit, SupervisorError> {
        let (cell, exit) = match self {
            Target::Fixed {
                actor,
                exit: Some(exit),
            } => (Some(actor.get_cell()), Some(Arc::clone(exit))),
            Target::Fixed { actor, exit: None } => {
                let exit = self.info().await?.exit;
                (Some(actor.get_cell()), Some(exit))
            }
            Target::Child(child) => (child.cell().ok(), child.slot().exit_cell()),
        };
        if let Some(cell) = cell {
            let _ = cell.wait(None).await;
        }
        Ok(exit.and_then(|e| e.exit()).unwrap_or(SupervisorExit::Killed))
    }
}

/// The calls both kinds of supervisor answer.
macro_rules! common_calls {
    () => {
        /// The running supervisor's actor (a handle to a child supervisor resolves its current incarnation).
        pub fn cell(&self) -> Result<ActorCell, SupervisorError> {
            Ok(self.target.resolve()?.get_cell())
        }

        /// Whether the supervisor is running now.
        pub fn is_running(&self) -> bool {
            self.target.resolve().is_ok()
        }

        /// Every child, in start order.
        pub async fn which_children(&self) -> Result<Vec<ChildInfo>, SupervisorError> {
            Ok(self.describe().await?.children)
        }

        /// How many children there are, by kind and by whether they run.
        pub async fn count_children(&self) -> Result<ChildCounts, SupervisorError> {
            self.target.call(SupervisorMsg::CountChildren).await
        }

        /// A snapshot of this supervisor and everything below it.
        pub async fn snapshot(&self) -> Result<TreeSnapshot, SupervisorError> {
            snapshot::of_supervisor(self.cell()?).await
        }

        /// Stops the supervisor: its children are stopped (see the type's docs for the order), each within
        /// its shutdown, then it exits. Waits at most `timeout`; [`ShutdownTimedOut`] if it had not exited by
        /// then (it goes on stopping). Stopping a child supervisor this way is a normal exit for its parent,
        /// which restarts it if it is permanent: terminate it through the parent to keep it down.
        ///
        /// [`ShutdownTimedOut`]: SupervisorError::ShutdownTimedOut
        pub async fn shutdown(&self, timeout: Duration) -> Result<(), SupervisorError> {
            self.target.shutdown(timeout).await
        }

        /// Waits until the supervisor (its current incarnation) has exited, and says how it ended: a
        /// service's `main` can await its root and exit non-zero when
        /// [`is_failure`](SupervisorExit::is_failure) — the tree gave up.
        pub async fn wait(&self) -> Result<SupervisorExit, SupervisorError> {
            self.target.wait().await
        }

        pub(crate) async fn describe(&self) -> Result<Description, SupervisorError> {
            self.target.call(SupervisorMsg::Describe).await
        }
    };
}

/// A cloneable handle to a [`Supervisor`](super::Supervisor). A handle to a child supervisor (from
/// [`child_supervisor`](Self::child_supervisor)) follows it across restarts.
#[derive(Clone)]
pub struct SupervisorHandle {
    pub(super) target: Target,
}

impl fmt::Debug for SupervisorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorHandle")
            .field("supervisor", &self.target.which())
            .finish()
    }
}

impl SupervisorHandle {
    /// A handle to the supervisor running as `cell`; [`NotASupervisor`](SupervisorError::NotASupervisor) if it
    /// is not one.
    pub fn from_cell(cell: ActorCell) -> Result<Self, SupervisorError> {
        Ok(SupervisorHandle {
            target: Target::from_cell(cell, "supervisor")?,
        })
    }

    /// Starts a new child after the existing ones; its spec is kept (unless temporary). Returns a stable
    /// handle, typed when the spec knows the child's message type ([`ChildSpec::actor`]). An id in use gives
    /// [`AlreadyStarted`](SupervisorError::AlreadyStarted) (with the running child) or
    /// [`AlreadyPresent`](SupervisorError::AlreadyPresent).
    pub async fn start_child<S: StartSpec>(&self, spec: S) -> Result<S::Handle, SupervisorError> {
        let handle = self
            .target
            .call(|reply| SupervisorMsg::StartChild(spec.into(), reply))
            .await??;
        Ok(S::wrap(handle))
    }

    /// Stops a child as its shutdown says (or cancels its pending restart); its spec is kept (unless
    /// temporary) for `restart_child`.
    pub async fn terminate_child(&self, id: &str) -> Result<(), SupervisorError> {
        self.target
            .call(|reply| SupervisorMsg::TerminateChild(ChildSelector::Id(id.into()), reply))
            .await?
    }

    /// Starts a terminated child again from its kept spec.
    /// [`AlreadyRunning`](SupervisorError::AlreadyRunning) if it runs, [`Restarting`](SupervisorError::Restarting)
    /// if a restart is pending.
    pub async fn restart_child(&self, id: &str) -> Result<ChildHandle, SupervisorError> {
        self.target
            .call(|reply| SupervisorMsg::RestartChild(id.into(), reply))
            .await?
    }

    /// Forgets a terminated child's spec.
    pub async fn delete_child(&self, id: &str) -> Result<(), SupervisorError> {
        self.target
            .call(|reply| SupervisorMsg::DeleteChild(id.into(), reply))
            .await?
    }

    /// The stable handle of the child `id`: it resolves whichever incarnation runs.
    pub async fn child(&self, id: &str) -> Result<ChildHandle, SupervisorError> {
        Ok(self.child_of_kind(id).await?.0)
    }

    /// The stable, typed handle of the child `id`, whose actor handles `M`.
    pub async fn child_ref<M: Message>(&self, id: &str) -> Result<ChildRef<M>, SupervisorError> {
        let handle = self.child(id).await?;
        let typed = handle.typed::<M>();
        if let Err(err @ SupervisorError::WrongMessageType { .. }) = typed.actor() {
            return Err(err);
        }
        Ok(typed)
    }

    /// A handle to the child supervisor `id` that keeps working across its restarts (and answers
    /// [`NotRunning`](SupervisorError::NotRunning) while it is down).
    pub async fn child_supervisor(&self, id: &str) -> Result<SupervisorHandle, SupervisorError> {
        let handle = self
            .child_handle_of_kind(id, ChildKind::Supervisor, "supervisor")
            .await?;
        Ok(SupervisorHandle {
            target: Target::Child(handle),
        })
    }

    /// A handle to the child dynamic supervisor `id` that keeps working across its restarts.
    pub async fn child_dynamic_supervisor(
        &self,
        id: &str,
    ) -> Result<DynamicSupervisorHandle, SupervisorError> {
        let handle = self
            .child_handle_of_kind(id, ChildKind::DynamicSupervisor, "dynamic supervisor")
            .await?;
        Ok(DynamicSupervisorHandle::new(Target::Child(handle)))
    }

    async fn child_of_kind(&self, id: &str) -> Result<(ChildHandle, ChildKind), SupervisorError> {
        self.target
            .call(|reply| SupervisorMsg::Child(id.into(), reply))
            .await?
    }

    async fn child_handle_of_kind(
        &self,
        id: &str,
        kind: ChildKind,
        expected: &'static str,
    ) -> Result<ChildHandle, SupervisorError> {
        let (handle, actual) = self.child_of_kind(id).await?;
        if actual != kind {
            return Err(SupervisorError::WrongChildKind {
                id: id.into(),
                expected,
                actual,
            });
        }
        Ok(handle)
    }

    common_calls!();
}

/// The state shared with one incarnation of a dynamic supervisor, and which incarnation that is.
type SharedOf = (ActorId, Arc<DynamicShared>);

/// A cloneable handle to a [`DynamicSupervisor`](super::DynamicSupervisor).
#[derive(Clone)]
pub struct DynamicSupervisorHandle {
    target: Target,
    /// The counters shared with the current incarnation, fetched once per incarnation.
    shared: Arc<Mutex<Option<SharedOf>>>,
}

impl fmt::Debug for DynamicSupervisorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamicSupervisorHandle")
            .field("supervisor", &self.target.which())
            .finish()
    }
}

impl DynamicSupervisorHandle {
    pub(super) fn new(target: Target) -> Self {
        DynamicSupervisorHandle {
            target,
            shared: Arc::default(),
        }
    }

    /// A handle to the dynamic supervisor running as `cell`;
    /// [`NotASupervisor`](SupervisorError::NotASupervisor) if it is not a supervisor at all (a static one is
    /// refused at the first `start_child`).
    pub fn from_cell(cell: ActorCell) -> Result<Self, SupervisorError> {
        Ok(DynamicSupervisorHandle::new(Target::from_cell(
            cell,
            "dynamic supervisor",
        )?))
    }

    async fn shared(&self, actor: &ActorRef<SupervisorMsg>) -> Result<Arc<DynamicShared>, SupervisorError> {
        let cached = self.shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((id, shared)) = cached {
            if id == actor.get_id() {
                return Ok(shared);
            }
        }
        let shared = self
            .target
            .info()
            .await?
            .dynamic
            .ok_or(SupervisorError::NotASupervisor {
                actor: actor.get_id(),
                expected: "dynamic supervisor",
            })?;
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some((actor.get_id(), Arc::clone(&shared)));
        Ok(shared)
    }

    /// Starts a child on the calling task, linked to the supervisor, which then owns it: it is running and
    /// known to the supervisor when this returns, and it is stopped gracefully if the supervisor shuts down,
    /// however soon. Its id is the spec's id with `#n` appended. Fails with
    /// [`MaxChildren`](SupervisorError::MaxChildren) when the supervisor is full and
    /// [`ShuttingDown`](SupervisorError::ShuttingDown) once it is stopping.
    pub async fn start_child<S: StartSpec>(&self, spec: S) -> Result<S::Handle, SupervisorError> {
        let actor = self.target.resolve()?;
        let shared = self.shared(&actor).await?;
        let handle = dynamic::start_child(&actor, &shared, spec.into()).await?;
        Ok(S::wrap(handle))
    }

    /// Stops the child `id` (`spec-id#n`: what [`child`](Self::child) takes and what `start_child`'s handle's
    /// `id()` says) as its shutdown says, and forgets it.
    /// [`UnknownChild`](SupervisorError::UnknownChild) if there is no such child (any more).
    pub async fn terminate_child(&self, id: &str) -> Result<(), SupervisorError> {
        self.target
            .call(|reply| SupervisorMsg::TerminateChild(ChildSelector::Id(id.into()), reply))
            .await?
    }

    /// Stops the child running as `actor` and forgets it (OTP's `terminate_child` with a pid).
    /// [`UnknownActor`](SupervisorError::UnknownActor) if no current child runs as `actor`.
    pub async fn terminate_actor(&self, actor: ActorId) -> Result<(), SupervisorError> {
        self.target
            .call(|reply| SupervisorMsg::TerminateChild(ChildSelector::Actor(actor), reply))
            .await?
    }

    /// The stable handle of the child shown as `id` (`spec-id#n`).
    pub async fn child(&self, id: &str) -> Result<ChildHandle, SupervisorError> {
        let (handle, _) = self
            .target
            .call(|reply| SupervisorMsg::Child(id.into(), reply))
            .await??;
        Ok(handle)
    }

    /// This supervisor with a child template, so that a start takes just the template's argument.
    pub fn with_template<A, M>(&self, template: ChildTemplate<A, M>) -> TemplatedSupervisor<A, M> {
        TemplatedSupervisor::new(self.clone(), template)
    }

    common_calls!();
}
