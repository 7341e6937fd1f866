//! Child specifications and supervisor flags: the data a supervisor is configured with.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::marker::PhantomData;

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr};
use serde::{Deserialize, Serialize};

use super::error::SupervisorError;
use super::slot::ChildSlot;

/// When a child that exited is started again (OTP's `restart` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always restarted.
    #[default]
    Permanent,
    /// Restarted only after an abnormal exit: not after a normal stop or a `shutdown` reason.
    Transient,
    /// Never restarted; its spec is forgotten once it exits.
    Temporary,
}

/// How a child is stopped when its supervisor terminates it (OTP's `shutdown` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shutdown {
    /// Killed at once; `post_stop` does not run.
    BrutalKill,
    /// Asked to stop, then killed if it has not exited within the timeout.
    Timeout(#[serde(with = "humantime_serde")] Duration),
    /// Asked to stop and waited for as long as it takes (the default for child supervisors).
    Infinity,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::Timeout(Duration::from_secs(5))
    }
}

/// What a child is, for introspection and for snapshots that descend into sub-trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildKind {
    /// A leaf actor.
    #[default]
    Worker,
    /// A [`Supervisor`](super::Supervisor) with a static child list.
    Supervisor,
    /// A [`DynamicSupervisor`](super::DynamicSupervisor).
    DynamicSupervisor,
}

/// How a supervisor reacts to one child's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Restart only the child that exited. For children that do not depend on each other: independent
    /// workers, one connection per target, a pool's members.
    #[default]
    OneForOne,
    /// Terminate every other child (in reverse start order), then restart all in start order. For children
    /// that share state or assumptions, so that one of them restarting alone would leave the others wrong:
    /// a cache and its invalidator, a producer and its consumer of one in-memory queue.
    OneForAll,
    /// Terminate the children started after the one that exited, then restart it and them. For a pipeline
    /// whose later stages depend on earlier ones (a connection, then the workers that use it): the stages
    /// before the failed one are unaffected.
    RestForOne,
}

/// When the exit of a *significant* child shuts the supervisor down (OTP 24's `auto_shutdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoShutdown {
    /// Significant children change nothing.
    #[default]
    Never,
    /// Shut down as soon as any significant child has exited for good.
    AnySignificant,
    /// Shut down once every significant child has exited for good.
    AllSignificant,
}

/// Delays the restart of a crash-looping child (Akka's `BackoffSupervisor`): the first restart waits `min`,
/// each following one twice as long up to `max`, each with up to `random_factor` of jitter added. A child that
/// has stayed up for `reset_after` starts over at `min`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RestartBackoff {
    /// Delay before the first restart.
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    /// Upper bound of the delay.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Fraction of the delay added at random, in `0.0..=1.0`.
    pub random_factor: f64,
    /// Uptime after which the next crash starts again at `min`.
    #[serde(with = "humantime_serde")]
    pub reset_after: Duration,
}

impl RestartBackoff {
    /// The longest `max` a backoff may have: a restart scheduled further out is a configuration mistake.
    pub const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

    /// The delay before restart number `attempt` (0 for the first restart after a stable period). Saturates
    /// instead of overflowing, whatever the fields hold.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = crate::backoff::exponential(self.min, 2.0, self.max, attempt);
        crate::backoff::spread(
            base,
            crate::backoff::Jitter::Additive(self.random_factor),
            rand::random::<f64>(),
        )
    }

    /// Checks the fields; the error names the first one at fault.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        if !self.random_factor.is_finite() || !(0.0..=1.0).contains(&self.random_factor) {
            return Err((
                "backoff.random_factor",
                format!("must be within 0.0..=1.0 (got {})", self.random_factor),
            ));
        }
        if self.max > Self::MAX_DELAY {
            return Err((
                "backoff.max",
                format!("must be at most {:?} (got {:?})", Self::MAX_DELAY, self.max),
            ));
        }
        if self.min > self.max {
            return Err((
                "backoff.min",
                format!("must not exceed max (got min {:?}, max {:?})", self.min, self.max),
            ));
        }
        Ok(())
    }
}

/// `now + delay`, or a far future instead of an overflow.
pub(crate) fn instant_after(delay: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(delay)
        .or_else(|| now.checked_add(RestartBackoff::MAX_DELAY))
        .unwrap_or(now)
}

/// What a start closure gets: the supervisor to link to, the name a typed spec was given, and the child's
/// slot (which a child supervisor's start fills with where it will leave its exit).
pub(crate) struct StartContext {
    pub(crate) supervisor: ActorCell,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) slot: Arc<ChildSlot>,
}

pub(crate) type StartFn =
    Arc<dyn Fn(StartContext) -> BoxFuture<'static, Result<ActorCell, ActorProcessingErr>> + Send + Sync>;

/// How to start (and restart) one child, and how its supervisor treats it (OTP's child spec).
///
/// Most children are plain ractor actors: [`ChildSpec::actor`] builds a fresh handler and arguments for every
/// start and spawns the actor linked to the supervisor, and gives back a [`TypedChildSpec`] that remembers the
/// actor's message type, so starting it returns a typed [`ChildRef`](super::ChildRef). For anything else,
/// [`ChildSpec::new`] takes a start closure that receives the supervisor's [`ActorCell`] and must spawn the
/// child **linked** to it (a child that is not linked is refused with
/// [`SupervisorError::NotLinked`](super::SupervisorError::NotLinked)):
///
/// ```
/// use arbor_actors::supervisor::{ChildSpec, Restart};
/// # use ractor::{Actor, ActorProcessingErr, ActorRef};
/// # struct Worker;
/// # impl Actor for Worker {
/// #     type Msg = (); type State = (); type Arguments = ();
/// #     async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> { Ok(()) }
/// # }
/// let by_closure = ChildSpec::new("worker", |sup| async move {
///     let (worker, _) = Actor::spawn_linked(None, Worker, (), sup).await?;
///     Ok(worker.get_cell())
/// })
/// .restart(Restart::Transient);
/// let typed = ChildSpec::actor("other", || (Worker, ())).name("other-worker");
/// ```
#[derive(Clone)]
pub struct ChildSpec {
    pub(crate) id: Arc<str>,
    pub(crate) start: StartFn,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) restart: Restart,
    pub(crate) shutdown: Shutdown,
    pub(crate) kind: ChildKind,
    pub(crate) significant: bool,
    pub(crate) backoff: Option<Arc<RestartBackoff>>,
}

impl ChildSpec {
    /// A permanent worker named `id`, stopped with a 5 s timeout, started by `start`, which must spawn the
    /// child linked to the supervisor cell it is given.
    pub fn new<F, Fut>(id: impl Into<String>, start: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, ActorProcessingErr>> + Send + 'static,
    {
        ChildSpec::from_start(
            id,
            Arc::new(move |ctx: StartContext| Box::pin(start(ctx.supervisor))),
        )
    }

    pub(crate) fn from_start(id: impl Into<String>, start: StartFn) -> Self {
        ChildSpec {
            id: Arc::from(id.into()),
            start,
            name: None,
            restart: Restart::default(),
            shutdown: Shutdown::default(),
            kind: ChildKind::Worker,
            significant: false,
            backoff: None,
        }
    }

    /// A child that is a plain ractor actor: `make` builds a fresh handler and its arguments for every start,
    /// and the actor is spawned linked to the supervisor (under the name set with [`TypedChildSpec::name`], if
    /// any). Permanent, 5 s shutdown timeout.
    pub fn actor<A, F>(id: impl Into<String>, make: F) -> TypedChildSpec<A::Msg>
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let start: StartFn = Arc::new(move |ctx: StartContext| {
            // Made here rather than in the future (a panic in `make` is a start failure either way): the future
            // then holds what it spawns, not a reference to `make`.
            let (handler, args) = make();
            let name = ctx.name.map(|n| n.to_string());
            let supervisor = ctx.supervisor;
            Box::pin(async move {
                let (actor, _) = Actor::spawn_linked(name, handler, args, supervisor).await?;
                Ok(actor.get_cell())
            })
        });
        TypedChildSpec {
            spec: ChildSpec::from_start(id, start),
            _message: PhantomData,
        }
    }

    /// Sets the restart type (default [`Restart::Permanent`]).
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Sets the shutdown (default a 5 s timeout; [`Shutdown::Infinity`] for supervisors built by this crate).
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Sets the kind (default [`ChildKind::Worker`]).
    pub fn kind(mut self, kind: ChildKind) -> Self {
        self.kind = kind;
        self
    }

    /// Marks the child significant for [`AutoShutdown`] (default not). Only transient and temporary children
    /// can be, and only under a supervisor whose `auto_shutdown` is not [`AutoShutdown::Never`].
    pub fn significant(mut self, significant: bool) -> Self {
        self.significant = significant;
        self
    }

    /// Delays this child's restarts with an exponential backoff (default: restarted at once).
    pub fn backoff(mut self, backoff: RestartBackoff) -> Self {
        self.backoff = Some(Arc::new(backoff));
        self
    }

    /// The child's id, unique among its siblings.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Checks the spec on its own and under a supervisor with `auto_shutdown`; the error names the field.
    pub(crate) fn check(&self, auto_shutdown: Option<AutoShutdown>) -> Result<(), SupervisorError> {
        let invalid = |field: &'static str, reason: String| SupervisorError::InvalidSpec {
            id: self.id.to_string(),
            field,
            reason,
        };
        if self.id.is_empty() {
            return Err(invalid("id", "must not be empty".into()));
        }
        if self.significant && self.restart == Restart::Permanent {
            return Err(invalid(
                "significant",
                "a permanent child cannot be significant (only transient or temporary ones)".into(),
            ));
        }
        if self.significant && auto_shutdown.is_none_or(|a| a == AutoShutdown::Never) {
            return Err(invalid(
                "significant",
                "a significant child needs a supervisor with auto_shutdown any_significant or all_significant"
                    .into(),
            ));
        }
        if let Some(backoff) = &self.backoff {
            backoff
                .check()
                .map_err(|(field, reason)| invalid(field, reason))?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("kind", &self.kind)
            .field("significant", &self.significant)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// A [`ChildSpec`] that knows its actor's message type `M`, from [`ChildSpec::actor`]: starting it gives a
/// typed [`ChildRef<M>`](super::ChildRef). Converts into a plain `ChildSpec` for lists of mixed children.
pub struct TypedChildSpec<M> {
    spec: ChildSpec,
    _message: PhantomData<fn() -> M>,
}

impl<M> Clone for TypedChildSpec<M> {
    fn clone(&self) -> Self {
        TypedChildSpec {
            spec: self.spec.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> fmt::Debug for TypedChildSpec<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.spec.fmt(f)
    }
}

impl<M> From<TypedChildSpec<M>> for ChildSpec {
    fn from(typed: TypedChildSpec<M>) -> ChildSpec {
        typed.spec
    }
}

impl<M> TypedChildSpec<M> {
    /// Registers the actor under this process-global ractor name (default none). A name is taken only by one
    /// live actor at a time; a restart reuses it once the old incarnation has exited.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.spec.name = Some(Arc::from(name.into()));
        self
    }

    /// See [`ChildSpec::restart`].
    pub fn restart(self, restart: Restart) -> Self {
        self.map(|s| s.restart(restart))
    }

    /// See [`ChildSpec::shutdown`].
    pub fn shutdown(self, shutdown: Shutdown) -> Self {
        self.map(|s| s.shutdown(shutdown))
    }

    /// See [`ChildSpec::kind`].
    pub fn kind(self, kind: ChildKind) -> Self {
        self.map(|s| s.kind(kind))
    }

    /// See [`ChildSpec::significant`].
    pub fn significant(self, significant: bool) -> Self {
        self.map(|s| s.significant(significant))
    }

    /// See [`ChildSpec::backoff`].
    pub fn backoff(self, backoff: RestartBackoff) -> Self {
        self.map(|s| s.backoff(backoff))
    }

    /// The child's id.
    pub fn id(&self) -> &str {
        self.spec.id()
    }

    /// The untyped spec.
    pub fn into_spec(self) -> ChildSpec {
        self.spec
    }

    fn map(mut self, f: impl FnOnce(ChildSpec) -> ChildSpec) -> Self {
        self.spec = f(self.spec);
        self
    }
}

/// A supervisor's flags: strategy, restart intensity and automatic shutdown. Deserializes from a document
/// with humantime durations (`{ strategy = "rest_for_one", max_restarts = 3, period = "5s" }`); missing
/// fields take their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorOptions {
    /// What to restart when a child exits (default [`Strategy::OneForOne`]).
    pub strategy: Strategy,
    /// At most this many restarts within `period`; one more and the supervisor gives up (default 3, Elixir's).
    pub max_restarts: u32,
    /// The window of the restart intensity (default 5 s); must not be zero.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Whether significant children shut the supervisor down (default [`AutoShutdown::Never`]).
    pub auto_shutdown: AutoShutdown,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            strategy: Strategy::OneForOne,
            max_restarts: 3,
            period: Duration::from_secs(5),
            auto_shutdown: AutoShutdown::Never,
        }
    }
}

impl SupervisorOptions {
    /// Sets the strategy (default [`Strategy::OneForOne`]).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the restart intensity: at most `max_restarts` within `period` (default 3 in 5 s). One restart more
    /// and the supervisor stops all its children and exits with a `shutdown` reason that names the cause, so
    /// its own supervisor restarts it if it is permanent (and counts that restart against *its* intensity):
    /// the failure climbs the tree one level at a time until a supervisor can cope or the root gives up.
    ///
    /// # Choosing intensity and period
    ///
    /// The pair says how much trouble a supervisor absorbs before it decides that restarting at its level does
    /// not help. Too low, and one flaky child takes its siblings (and maybe the whole service) down with it;
    /// too high, and a child that can never start crash-loops, burning CPU and flooding logs, while the level
    /// above — which might cure it by restarting a shared dependency — never hears of it.
    ///
    /// - The **period** should be longer than the time a child needs to fail again after a restart that does
    ///   not help (its start plus the time to hit the same fault), so that a hopeless loop is counted, and
    ///   short enough that unrelated failures hours apart do not add up. Seconds to a minute is usual.
    /// - **Leaves** (workers talking to the outside world): a few restarts (3–5) per 5–30 s; pair a child that
    ///   fails for external reasons (a server down) with [`RestartBackoff`] rather than a high intensity.
    /// - **Middle supervisors** (one per subsystem): fewer restarts than the sum of their children's, e.g. 2–3
    ///   per 30–60 s, so a subsystem that keeps collapsing escalates instead of looping.
    /// - **The root**: low (1–3 per minute); past it the tree has given up, [`wait`](super::SupervisorHandle::wait)
    ///   returns the cause and the service should exit non-zero and let its process manager decide.
    /// - A supervisor's intensity should allow at least one restart of each child below it per period, or a
    ///   single crash of a sub-tree escalates at once.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.period = period;
        self
    }

    /// Sets the automatic shutdown (default [`AutoShutdown::Never`]).
    pub fn auto_shutdown(mut self, auto_shutdown: AutoShutdown) -> Self {
        self.auto_shutdown = auto_shutdown;
        self
    }

    /// Checks the flags as OTP's `init` does; the error names the field at fault.
    pub fn validate(&self) -> Result<(), SupervisorError> {
        check_period(self.period)
    }
}

fn check_period(period: Duration) -> Result<(), SupervisorError> {
    if period.is_zero() {
        return Err(SupervisorError::InvalidOptions {
            field: "period",
            reason: "must be greater than zero (a zero window never counts a restart, so a crash-looping \
                     child would restart forever)"
                .into(),
        });
    }
    Ok(())
}

/// What a dynamic supervisor's restart intensity counts.
///
/// A dynamic supervisor's children are independent of one another (a pool of workers, one per job or
/// connection): that worker 3 crashed says nothing about worker 7. Counting every child's restarts against
/// one budget, as OTP and Elixir do (3 in 5 s by default), makes the budget shrink as the pool grows: a pool
/// of 100 workers is wiped after four unrelated crashes within 5 s. So arbor counts per child by default: the
/// supervisor gives up when one child crash-loops (restarting it does not help), not when several children
/// fail once each. A budget that scaled with `max_children` was the other choice; it was not taken because it
/// says nothing when there is no maximum, and it still lets one busy corner of a pool spend everyone's budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntensityScope {
    /// Each child has its own `max_restarts` within `period`; one child exceeding it makes the supervisor
    /// give up (the default).
    #[default]
    PerChild,
    /// Every restart counts against one budget for the whole supervisor (OTP's and Elixir's rule). Tune the
    /// intensity to the pool's size.
    Supervisor,
}

/// A dynamic supervisor's flags (Elixir's `DynamicSupervisor`: one_for_one only). Deserializes like
/// [`SupervisorOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicSupervisorOptions {
    /// At most this many restarts within `period` (default 3 in 5 s), per child unless `intensity_scope` says
    /// otherwise; see [`SupervisorOptions::intensity`].
    pub max_restarts: u32,
    /// The window of the restart intensity; must not be zero.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// At most this many children at once; `None` (the default) for no limit.
    pub max_children: Option<usize>,
    /// What the intensity counts (default [`IntensityScope::PerChild`]).
    pub intensity_scope: IntensityScope,
}

impl Default for DynamicSupervisorOptions {
    fn default() -> Self {
        DynamicSupervisorOptions {
            max_restarts: 3,
            period: Duration::from_secs(5),
            max_children: None,
            intensity_scope: IntensityScope::PerChild,
        }
    }
}

impl DynamicSupervisorOptions {
    /// Sets the restart intensity: at most `max_restarts` within `period` (default 3 in 5 s), per child by
    /// default (see [`IntensityScope`]); see [`SupervisorOptions::intensity`] for how to choose them.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.period = period;
        self
    }

    /// Sets what the intensity counts (default [`IntensityScope::PerChild`]).
    pub fn intensity_scope(mut self, scope: IntensityScope) -> Self {
        self.intensity_scope = scope;
        self
    }

    /// Sets the most children the supervisor accepts (default no limit).
    pub fn max_children(mut self, max_children: usize) -> Self {
        self.max_children = Some(max_children);
        self
    }

    /// Checks the flags; the error names the field at fault.
    pub fn validate(&self) -> Result<(), SupervisorError> {
        check_period(self.period)
    }
}
