//! Starting supervisors: the builders and shorthands of [`Supervisor`] and [`DynamicSupervisor`].
//!
//! Every handle of this crate speaks one lifecycle vocabulary: `X::start(..)` (unlinked, a root),
//! `X::start_linked(.., supervisor)` (what a child spec's start closure calls), `X::child_spec(id, ..)`, and
//! `handle.shutdown(timeout)`. Optional settings are named builder calls, never positional `None`s.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, SpawnErr};

use super::actor::{Mode, SupervisorActor, SupervisorArgs};
use super::dynamic::DynamicShared;
use super::error::SupervisorError;
use super::events::EventSink;
use super::exit::ExitCell;
use super::handle::{DynamicSupervisorHandle, SupervisorHandle, Target};
use super::spec::{
    AutoShutdown, ChildKind, ChildSpec, DynamicSupervisorOptions, IntensityScope, Shutdown, StartContext,
    StartFn, Strategy, SupervisorOptions,
};

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
            // Before the spawn: its `pre_start` starts children, and if it never completes (killed, failed, or
            // this future dropped with a parent killed meanwhile) they are orphans all the same.
            ctx.slot.set_spawning(Arc::clone(&exit));
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
        intensity_scope: IntensityScope::Supervisor,
        auto_shutdown: options.auto_shutdown,
        children,
        exit: ExitCell::default(),
        events,
    }
}

fn dynamic_args(options: DynamicSupervisorOptions, events: Option<EventSink>) -> SupervisorArgs {
    SupervisorArgs {
        mode: Mode::Dynamic(Arc::new(DynamicShared::new(
            options.max_children,
            events.is_some(),
        ))),
        strategy: Strategy::OneForOne,
        max_restarts: options.max_restarts,
        period: options.period,
        intensity_scope: options.intensity_scope,
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

    /// See [`DynamicSupervisorOptions::intensity`] (default 3 in 5 s, per child).
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

    /// See [`DynamicSupervisorOptions::intensity_scope`] (default [`IntensityScope::PerChild`]).
    pub fn intensity_scope(mut self, scope: IntensityScope) -> Self {
        self.options.intensity_scope = scope;
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
