//! Starting supervisors (builders and shorthands), and the cloneable handles users talk to them through.
//!
//! Every handle of this crate speaks one lifecycle vocabulary: `X::start(..)` (unlinked, a root),
//! `X::start_linked(.., supervisor)` (what a child spec's start closure calls), `X::child_spec(id, ..)`, and
//! `handle.shutdown(timeout)`. Optional settings are named builder calls, never positional `None`s.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorRef, ActorStatus, Message, RactorErr, SpawnErr};

use super::actor::{
    ChildSelector, Description, IncarnationInfo, Mode, SupervisorActor, SupervisorArgs, SupervisorMsg,
};
use super::children::{ChildCounts, ChildInfo};
use super::dynamic::{self, DynamicShared};
use super::error::SupervisorError;
use super::events::EventSink;
use super::exit::{ExitCell, SupervisorExit};
use super::slot::{ChildHandle, ChildRef};
use super::snapshot::{self, TreeSnapshot};
use super::spec::{
    AutoShutdown, ChildKind, ChildSpec, DynamicSupervisorOptions, Shutdown, StartContext, StartFn, Strategy,
    SupervisorOptions, TypedChildSpec,
};
use super::template::{ChildTemplate, TemplatedSupervisor};

fn spawn_error(err: SpawnErr) -> SupervisorError {
    match err {
        SpawnErr::StartupFailed(cause) => match cause.downcast::<SupervisorError>() {
            Ok(err) => *err,
            Err(cause) => SupervisorError::Spawn(SpawnErr::StartupFailed(cause)),
        },
        other => SupervisorError::Spawn(other),
    }
}

/// Validates, then spawns. Nothing is spawned when the options or a spec are invalid.
async fn spawn(
    name: Option<String>,
    args: SupervisorArgs,
    parent: Option<ActorCell>,
) -> Result<Target, SupervisorError> {
    args.validate()?;
    let exit = Arc::clone(&args.exit);
    let spawned = match parent {
        Some(parent) => Actor::spawn_linked(name, SupervisorActor, args, parent).await,
        None => Actor::spawn(name, SupervisorActor, args).await,
    };
    // The join handle is not needed: `wait` reports the end, with its reason.
    let (actor, _join) = spawned.map_err(spawn_error)?;
    Ok(Target::Fixed {
        actor,
        exit: Some(exit),
    })
}

fn spawn_args(name: Option<String>, args: SupervisorArgs) -> (Option<String>, SupervisorArgs) {
    (name, args)
}

/// The spec of a child supervisor (shutdown infinity, permanent): each start spawns a fresh incarnation and
/// tells the child's slot where that incarnation will leave its exit, so stable handles can `wait` for it.
fn supervisor_child_spec(
    id: impl Into<String>,
    kind: ChildKind,
    make: impl Fn() -> (Option<String>, SupervisorArgs) + Send + Sync + 'static,
) -> ChildSpec {
    let make = Arc::new(make);
    let start: StartFn = Arc::new(move |ctx: StartContext| {
        let (name, args) = make();
        Box::pin(async move {
            let exit = Arc::clone(&args.exit);
            let Target::Fixed { actor, .. } = spawn(name, args, Some(ctx.supervisor)).await? else {
                unreachable!("spawn gives a fixed target")
            };
            ctx.slot.set_exit_cell(exit);
            Ok(actor.get_cell())
        })
    });
    ChildSpec::from_start(id, start)
        .kind(kind)
        .shutdown(Shutdown::Infinity)
}

fn static_args(
    options: SupervisorOptions,
    children: Vec<ChildSpec>,
    events: Option<EventSink>,
) -> SupervisorArgs {
    SupervisorArgs {
        mode: Mode::Static,
        strategy: options.strategy,
        max_restarts: options.max_restarts,
        period: options.period,
        auto_shutdown: options.auto_shutdown,
        children,
        exit: ExitCell::default(),
        events,
    }
}

fn dynamic_args(options: DynamicSupervisorOptions, events: Option<EventSink>) -> SupervisorArgs {
    SupervisorArgs {
        mode: Mode::Dynamic(Arc::new(DynamicShared::new(options.max_children))),
        strategy: Strategy::OneForOne,
        max_restarts: options.max_restarts,
        period: options.period,
        auto_shutdown: AutoShutdown::Never,
        children: Vec::new(),
        exit: ExitCell::default(),
        events,
    }
}

/// A supervisor with a list of children started in order at init: OTP's `supervisor`.
///
/// Use it for the fixed parts of a service — the pieces that exist for as long as the service runs, in an
/// order where later ones may depend on earlier ones. For children that come and go at runtime (one per
/// connection, per job, per tenant), use a [`DynamicSupervisor`] instead.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use arbor_actors::supervisor::{ChildSpec, Strategy, Supervisor};
/// # use ractor::{Actor, ActorProcessingErr, ActorRef};
/// # struct Worker;
/// # impl Actor for Worker {
/// #     type Msg = (); type State = (); type Arguments = ();
/// #     async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> { Ok(()) }
/// # }
/// let sup = Supervisor::builder()
///     .name("app")
///     .strategy(Strategy::RestForOne)
///     .intensity(3, Duration::from_secs(5))
///     .child(ChildSpec::actor("db", || (Worker, ())))
///     .child(ChildSpec::actor("cache", || (Worker, ())))
///     .start()
///     .await?;
/// assert_eq!(sup.count_children().await?.active, 2);
/// sup.shutdown(Duration::from_secs(10)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Supervisor;

impl Supervisor {
    /// A builder: name, flags and children, then `start`, `start_linked` or `child_spec`.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder::default()
    }

    /// Starts an unnamed root supervisor; returns once every child has started, or with the first child's
    /// start error after the children already started were stopped again. Invalid options or specs fail
    /// before anything starts.
    pub async fn start(
        options: SupervisorOptions,
        children: impl IntoIterator<Item = ChildSpec>,
    ) -> Result<SupervisorHandle, SupervisorError> {
        Supervisor::builder()
            .options(options)
            .children(children)
            .start()
            .await
    }

    /// Starts a supervisor linked to `supervisor`, as a child spec's start closure does.
    pub async fn start_linked(
        options: SupervisorOptions,
        children: impl IntoIterator<Item = ChildSpec>,
        supervisor: ActorCell,
    ) -> Result<SupervisorHandle, SupervisorError> {
        Supervisor::builder()
            .options(options)
            .children(children)
            .start_linked(supervisor)
            .await
    }

    /// A child spec for a nested supervisor: kind supervisor, shutdown infinity (it stops its own children
    /// within their own timeouts), permanent.
    pub fn child_spec(
        id: impl Into<String>,
        options: SupervisorOptions,
        children: impl IntoIterator<Item = ChildSpec>,
    ) -> ChildSpec {
        Supervisor::builder()
            .options(options)
            .children(children)
            .child_spec(id)
    }
}

/// Builds a [`Supervisor`]; every setting has the default its setter names.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct SupervisorBuilder {
    name: Option<String>,
    options: SupervisorOptions,
    children: Vec<ChildSpec>,
    events: Option<EventSink>,
}

impl SupervisorBuilder {
    /// Registers the supervisor under this process-global ractor name (default none).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets every flag at once (default [`SupervisorOptions::default`]).
    pub fn options(mut self, options: SupervisorOptions) -> Self {
        self.options = options;
        self
    }

    /// See [`SupervisorOptions::strategy`] (default one_for_one).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.options.strategy = strategy;
        self
    }

    /// See [`SupervisorOptions::intensity`] (default 3 in 5 s).
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.options = self.options.intensity(max_restarts, period);
        self
    }

    /// See [`SupervisorOptions::auto_shutdown`] (default never).
    pub fn auto_shutdown(mut self, auto_shutdown: AutoShutdown) -> Self {
        self.options.auto_shutdown = auto_shutdown;
        self
    }

    /// Publishes the supervisor's [`SupervisorEvent`](super::SupervisorEvent)s to `sink` (default none).
    pub fn events(mut self, sink: EventSink) -> Self {
        self.events = Some(sink);
        self
    }

    /// Appends a child, started after the ones added before it.
    pub fn child(mut self, spec: impl Into<ChildSpec>) -> Self {
        self.children.push(spec.into());
        self
    }

    /// Appends children, in order.
    pub fn children(mut self, specs: impl IntoIterator<Item = impl Into<ChildSpec>>) -> Self {
        self.children.extend(specs.into_iter().map(Into::into));
        self
    }

    /// Starts it unlinked (a root).
    pub async fn start(self) -> Result<SupervisorHandle, SupervisorError> {
        let target = spawn(
            self.name,
            static_args(self.options, self.children, self.events),
            None,
        )
        .await?;
        Ok(SupervisorHandle { target })
    }

    /// Starts it linked to `supervisor`.
    pub async fn start_linked(self, supervisor: ActorCell) -> Result<SupervisorHandle, SupervisorError> {
        let target = spawn(
            self.name,
            static_args(self.options, self.children, self.events),
            Some(supervisor),
        )
        .await?;
        Ok(SupervisorHandle { target })
    }

    /// A child spec that starts it under another supervisor (kind supervisor, shutdown infinity, permanent).
    /// Reach the running child supervisor with [`SupervisorHandle::child_supervisor`].
    pub fn child_spec(self, id: impl Into<String>) -> ChildSpec {
        let name = self.name.clone();
        supervisor_child_spec(id, ChildKind::Supervisor, move || {
            spawn_args(
                name.clone(),
                static_args(self.options, self.children.clone(), self.events.clone()),
            )
        })
    }
}

/// A supervisor whose children are all started at runtime: Elixir's `DynamicSupervisor` (one_for_one,
/// `max_children`, children named `id#n` by start order).
///
/// Use it for children that come and go — one per connection, job or tenant — where a [`Supervisor`]'s
/// ordered, named list does not fit. Children are started on the caller's task (a slow `pre_start` does not
/// stall the supervisor), and stopped all at once on shutdown, each within its own timeout. A restarted
/// dynamic supervisor starts empty: its children belong to whoever started them.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use arbor_actors::supervisor::{ChildSpec, ChildTemplate, DynamicSupervisor};
/// # use ractor::{Actor, ActorProcessingErr, ActorRef};
/// # struct Job;
/// # impl Actor for Job {
/// #     type Msg = (); type State = (); type Arguments = u64;
/// #     async fn pre_start(&self, _: ActorRef<()>, _: u64) -> Result<(), ActorProcessingErr> { Ok(()) }
/// # }
/// let jobs = DynamicSupervisor::builder().max_children(1_000).start().await?;
/// let one = jobs.start_child(ChildSpec::actor("job", || (Job, 1))).await?;
/// // or with a template, so a start is one argument away (Elixir's `extra_arguments` are what it captures):
/// let jobs = jobs.with_template(ChildTemplate::actor("job", |n: u64| (Job, n)));
/// let two = jobs.start_child(2).await?;
/// assert_eq!(jobs.count_children().await?.active, 2);
/// jobs.shutdown(Duration::from_secs(5)).await?;
/// # let _ = (one, two);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DynamicSupervisor;

impl DynamicSupervisor {
    /// A builder: name and flags, then `start`, `start_linked` or `child_spec`.
    pub fn builder() -> DynamicSupervisorBuilder {
        DynamicSupervisorBuilder::default()
    }

    /// Starts an unnamed root dynamic supervisor.
    pub async fn start(
        options: DynamicSupervisorOptions,
    ) -> Result<DynamicSupervisorHandle, SupervisorError> {
        DynamicSupervisor::builder().options(options).start().await
    }

    /// Starts a dynamic supervisor linked to `supervisor`.
    pub async fn start_linked(
        options: DynamicSupervisorOptions,
        supervisor: ActorCell,
    ) -> Result<DynamicSupervisorHandle, SupervisorError> {
        DynamicSupervisor::builder()
            .options(options)
            .start_linked(supervisor)
            .await
    }

    /// A child spec for a nested dynamic supervisor (kind dynamic supervisor, shutdown infinity, permanent).
    pub fn child_spec(id: impl Into<String>, options: DynamicSupervisorOptions) -> ChildSpec {
        DynamicSupervisor::builder().options(options).child_spec(id)
    }
}

/// Builds a [`DynamicSupervisor`]; every setting has the default its setter names.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct DynamicSupervisorBuilder {
    name: Option<String>,
    options: DynamicSupervisorOptions,
    events: Option<EventSink>,
}

impl DynamicSupervisorBuilder {
    /// Registers the supervisor under this process-global ractor name (default none).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets every flag at once (default [`DynamicSupervisorOptions::default`]).
    pub fn options(mut self, options: DynamicSupervisorOptions) -> Self {
        self.options = options;
        self
    }

    /// See [`DynamicSupervisorOptions::intensity`] (default 3 in 5 s).
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.options = self.options.intensity(max_restarts, period);
        self
    }

    /// Publishes the supervisor's [`SupervisorEvent`](super::SupervisorEvent)s to `sink` (default none).
    pub fn events(mut self, sink: EventSink) -> Self {
        self.events = Some(sink);
        self
    }

    /// See [`DynamicSupervisorOptions::max_children`] (default no limit).
    pub fn max_children(mut self, max_children: usize) -> Self {
        self.options.max_children = Some(max_children);
        self
    }

    /// Starts it unlinked (a root).
    pub async fn start(self) -> Result<DynamicSupervisorHandle, SupervisorError> {
        let target = spawn(self.name, dynamic_args(self.options, self.events), None).await?;
        Ok(DynamicSupervisorHandle::new(target))
    }

    /// Starts it linked to `supervisor`.
    pub async fn start_linked(
        self,
        supervisor: ActorCell,
    ) -> Result<DynamicSupervisorHandle, SupervisorError> {
        let target = spawn(
            self.name,
            dynamic_args(self.options, self.events),
            Some(supervisor),
        )
        .await?;
        Ok(DynamicSupervisorHandle::new(target))
    }

    /// A child spec that starts it under another supervisor. Reach the running child with
    /// [`SupervisorHandle::child_dynamic_supervisor`].
    pub fn child_spec(self, id: impl Into<String>) -> ChildSpec {
        supervisor_child_spec(id, ChildKind::DynamicSupervisor, move || {
            spawn_args(self.name.clone(), dynamic_args(self.options, self.events.clone()))
        })
    }
}

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
enum Target {
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

/// A cloneable handle to a [`Supervisor`]. A handle to a child supervisor (from
/// [`child_supervisor`](Self::child_supervisor)) follows it across restarts.
#[derive(Clone)]
pub struct SupervisorHandle {
    target: Target,
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

/// A cloneable handle to a [`DynamicSupervisor`].
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
    fn new(target: Target) -> Self {
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

    /// Stops the child running as `actor` and forgets it.
    pub async fn terminate_child(&self, actor: ActorId) -> Result<(), SupervisorError> {
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
