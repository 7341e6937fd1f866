//! Starting supervisors, and the cloneable handles users talk to them through.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorRef, RactorErr, SpawnErr};

use super::actor::{ChildRef, Description, Mode, SupervisorActor, SupervisorArgs, SupervisorMsg};
use super::children::{ChildCounts, ChildInfo};
use super::dynamic::{self, DynamicShared, SharedSlot};
use super::error::SupervisorError;
use super::snapshot::{self, TreeSnapshot};
use super::spec::{ChildKind, ChildSpec, DynamicSupervisorOptions, Shutdown, Strategy, SupervisorOptions};

fn spawn_error(err: SpawnErr) -> SupervisorError {
    match err {
        SpawnErr::StartupFailed(cause) => match cause.downcast::<SupervisorError>() {
            Ok(err) => *err,
            Err(cause) => SupervisorError::Spawn(cause.to_string()),
        },
        other => SupervisorError::Spawn(other.to_string()),
    }
}

fn gone<T>(err: RactorErr<T>) -> SupervisorError {
    SupervisorError::SupervisorGone(err.to_string())
}

async fn spawn(
    name: Option<String>,
    args: SupervisorArgs,
    parent: Option<ActorCell>,
) -> Result<(ActorRef<SupervisorMsg>, tokio::task::JoinHandle<()>), SupervisorError> {
    let spawned = match parent {
        Some(parent) => Actor::spawn_linked(name, SupervisorActor, args, parent).await,
        None => Actor::spawn(name, SupervisorActor, args).await,
    };
    spawned.map_err(spawn_error)
}

/// A supervisor with a list of children started in order at init: OTP's `supervisor`.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use arbor_actors::supervisor::{ChildSpec, Strategy, Supervisor, SupervisorOptions};
/// # use ractor::{Actor, ActorProcessingErr, ActorRef};
/// # struct Worker;
/// # impl Actor for Worker {
/// #     type Msg = (); type State = (); type Arguments = ();
/// #     async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> { Ok(()) }
/// # }
/// let children = vec![
///     ChildSpec::actor("db", None, || (Worker, ())),
///     ChildSpec::actor("cache", None, || (Worker, ())),
/// ];
/// let opts = SupervisorOptions::default().strategy(Strategy::RestForOne);
/// let (sup, _join) = Supervisor::start(Some("app".into()), opts, children).await?;
/// assert_eq!(sup.count_children().await?.active, 2);
/// sup.shutdown(None).await?;
/// # Ok(()) }
/// ```
pub struct Supervisor;

impl Supervisor {
    /// Starts an unlinked (root) supervisor; returns once every child has started, or with the first child's
    /// start error after the children already started were stopped again.
    pub async fn start(
        name: Option<String>,
        options: SupervisorOptions,
        children: Vec<ChildSpec>,
    ) -> Result<(SupervisorHandle, tokio::task::JoinHandle<()>), SupervisorError> {
        let (actor, join) = spawn(name, static_args(options, children), None).await?;
        Ok((SupervisorHandle { actor }, join))
    }

    /// Starts a supervisor linked to `parent`, as a child spec's start closure does.
    pub async fn start_linked(
        name: Option<String>,
        options: SupervisorOptions,
        children: Vec<ChildSpec>,
        parent: ActorCell,
    ) -> Result<SupervisorHandle, SupervisorError> {
        let (actor, _) = spawn(name, static_args(options, children), Some(parent)).await?;
        Ok(SupervisorHandle { actor })
    }

    /// A child spec for a nested supervisor: kind supervisor, shutdown infinity (it stops its own children
    /// within their own timeouts), permanent.
    pub fn child_spec(
        id: impl Into<String>,
        options: SupervisorOptions,
        children: Vec<ChildSpec>,
    ) -> ChildSpec {
        ChildSpec::new(id, move |parent| {
            let children = children.clone();
            async move {
                let sup = Supervisor::start_linked(None, options, children, parent).await?;
                Ok(sup.cell())
            }
        })
        .kind(ChildKind::Supervisor)
        .shutdown(Shutdown::Infinity)
    }
}

fn static_args(options: SupervisorOptions, children: Vec<ChildSpec>) -> SupervisorArgs {
    SupervisorArgs {
        mode: Mode::Static,
        strategy: options.strategy,
        max_restarts: options.max_restarts,
        period: options.period,
        auto_shutdown: options.auto_shutdown,
        children,
    }
}

fn dynamic_args(options: DynamicSupervisorOptions) -> SupervisorArgs {
    SupervisorArgs {
        mode: Mode::Dynamic(Arc::new(DynamicShared::new(options.max_children))),
        strategy: Strategy::OneForOne,
        max_restarts: options.max_restarts,
        period: options.period,
        auto_shutdown: Default::default(),
        children: Vec::new(),
    }
}

/// A supervisor whose children are all started at runtime: Elixir's `DynamicSupervisor` (one_for_one,
/// `max_children`, children named by their actor).
pub struct DynamicSupervisor;

impl DynamicSupervisor {
    /// Starts an unlinked (root) dynamic supervisor.
    pub async fn start(
        name: Option<String>,
        options: DynamicSupervisorOptions,
    ) -> Result<(DynamicSupervisorHandle, tokio::task::JoinHandle<()>), SupervisorError> {
        let (actor, join) = spawn(name, dynamic_args(options), None).await?;
        Ok((DynamicSupervisorHandle::from_ref(actor), join))
    }

    /// Starts a dynamic supervisor linked to `parent`.
    pub async fn start_linked(
        name: Option<String>,
        options: DynamicSupervisorOptions,
        parent: ActorCell,
    ) -> Result<DynamicSupervisorHandle, SupervisorError> {
        let (actor, _) = spawn(name, dynamic_args(options), Some(parent)).await?;
        Ok(DynamicSupervisorHandle::from_ref(actor))
    }

    /// A child spec for a nested dynamic supervisor.
    pub fn child_spec(id: impl Into<String>, options: DynamicSupervisorOptions) -> ChildSpec {
        ChildSpec::new(id, move |parent| async move {
            let sup = DynamicSupervisor::start_linked(None, options, parent).await?;
            Ok(sup.cell())
        })
        .kind(ChildKind::DynamicSupervisor)
        .shutdown(Shutdown::Infinity)
    }
}

/// The calls both kinds of supervisor answer.
macro_rules! common_calls {
    () => {
        /// The supervisor's actor.
        pub fn cell(&self) -> ActorCell {
            self.actor.get_cell()
        }

        /// Every child, in start order.
        pub async fn which_children(&self) -> Result<Vec<ChildInfo>, SupervisorError> {
            Ok(self.describe().await?.children)
        }

        /// How many children there are, by kind and by whether they run.
        pub async fn count_children(&self) -> Result<ChildCounts, SupervisorError> {
            ractor::call!(self.actor, SupervisorMsg::CountChildren).map_err(gone)
        }

        /// A snapshot of this supervisor and everything below it.
        pub async fn snapshot(&self) -> Result<TreeSnapshot, SupervisorError> {
            snapshot::of_supervisor(self.cell()).await
        }

        /// Stops the supervisor: its children are stopped in reverse start order, each within its shutdown,
        /// then it exits. Waits at most `timeout` (forever if `None`).
        pub async fn shutdown(&self, timeout: Option<Duration>) -> Result<(), SupervisorError> {
            match self
                .actor
                .stop_and_wait(Some("shutdown".into()), timeout)
                .await
            {
                Ok(()) => Ok(()),
                Err(RactorErr::Timeout) => Err(SupervisorError::ShutdownTimedOut {
                    timeout: timeout.unwrap_or_default(),
                }),
                // Already stopped: the outcome asked for.
                Err(_) => Ok(()),
            }
        }

        pub(crate) async fn describe(&self) -> Result<Description, SupervisorError> {
            ractor::call!(self.actor, SupervisorMsg::Describe).map_err(gone)
        }
    };
}

/// A cloneable handle to a [`Supervisor`].
#[derive(Clone, Debug)]
pub struct SupervisorHandle {
    actor: ActorRef<SupervisorMsg>,
}

impl SupervisorHandle {
    /// A handle to the supervisor running as `cell`. Calls fail with [`SupervisorError::SupervisorGone`] if it
    /// is not a supervisor.
    pub fn from_cell(cell: ActorCell) -> Self {
        SupervisorHandle { actor: cell.into() }
    }

    /// Starts a new child after the existing ones; its spec is kept (unless temporary).
    pub async fn start_child(&self, spec: ChildSpec) -> Result<ActorCell, SupervisorError> {
        ractor::call!(self.actor, SupervisorMsg::StartChild, spec).map_err(gone)?
    }

    /// Stops a child as its shutdown says; its spec is kept (unless temporary) for `restart_child`.
    pub async fn terminate_child(&self, id: &str) -> Result<(), SupervisorError> {
        ractor::call!(self.actor, SupervisorMsg::TerminateChild, ChildRef::Id(id.into())).map_err(gone)?
    }

    /// Starts a terminated child again from its kept spec.
    pub async fn restart_child(&self, id: &str) -> Result<ActorCell, SupervisorError> {
        ractor::call!(self.actor, SupervisorMsg::RestartChild, id.into()).map_err(gone)?
    }

    /// Forgets a terminated child's spec.
    pub async fn delete_child(&self, id: &str) -> Result<(), SupervisorError> {
        ractor::call!(self.actor, SupervisorMsg::DeleteChild, id.into()).map_err(gone)?
    }

    common_calls!();
}

/// A cloneable handle to a [`DynamicSupervisor`].
#[derive(Clone, Debug)]
pub struct DynamicSupervisorHandle {
    actor: ActorRef<SupervisorMsg>,
    /// The counters shared with the supervisor, fetched once per handle.
    shared: SharedSlot,
}

impl DynamicSupervisorHandle {
    /// A handle to the dynamic supervisor running as `cell`.
    pub fn from_cell(cell: ActorCell) -> Self {
        DynamicSupervisorHandle::from_ref(cell.into())
    }

    fn from_ref(actor: ActorRef<SupervisorMsg>) -> Self {
        DynamicSupervisorHandle {
            actor,
            shared: SharedSlot::default(),
        }
    }

    /// Starts a child on the calling task, linked to the supervisor, which then owns it: it is running and
    /// known to the supervisor when this returns. Its id is the spec's id with a sequence number appended.
    /// Fails with [`SupervisorError::MaxChildren`] when the supervisor is full.
    pub async fn start_child(&self, spec: ChildSpec) -> Result<ActorCell, SupervisorError> {
        let shared = self
            .shared
            .get_or_try_init(|| async {
                ractor::call!(self.actor, SupervisorMsg::DynamicShared)
                    .map_err(gone)?
                    .ok_or_else(|| SupervisorError::SupervisorGone("not a dynamic supervisor".into()))
            })
            .await?;
        dynamic::start_child(&self.actor, shared, spec).await
    }

    /// Stops the child running as `actor` and forgets it.
    pub async fn terminate_child(&self, actor: ActorId) -> Result<(), SupervisorError> {
        ractor::call!(self.actor, SupervisorMsg::TerminateChild, ChildRef::Actor(actor)).map_err(gone)?
    }

    common_calls!();
}
