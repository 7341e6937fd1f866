//! Child specifications and supervisor flags: the data a supervisor is configured with.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr};
use serde::{Deserialize, Serialize};

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
    /// Restart only the child that exited.
    #[default]
    OneForOne,
    /// Terminate every other child (in reverse start order), then restart all in start order.
    OneForAll,
    /// Terminate the children started after the one that exited, then restart it and them.
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
    /// The delay before restart number `attempt` (0 for the first restart after a stable period).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.min.saturating_mul(2u32.saturating_pow(attempt.min(31)));
        let base = base.min(self.max);
        let jitter = base.mul_f64(self.random_factor.clamp(0.0, 1.0) * rand::random::<f64>());
        base + jitter
    }
}

pub(crate) type StartFn =
    Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, ActorProcessingErr>> + Send + Sync>;

/// How to start (and restart) one child, and how its supervisor treats it.
///
/// The start closure receives the supervisor's [`ActorCell`] and must spawn the child **linked** to it, so the
/// supervisor hears of its exit:
///
/// ```
/// use arbor_actors::supervisor::{ChildSpec, Restart};
/// # use ractor::{Actor, ActorProcessingErr, ActorRef};
/// # struct Worker;
/// # impl Actor for Worker {
/// #     type Msg = (); type State = (); type Arguments = ();
/// #     async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> { Ok(()) }
/// # }
/// let spec = ChildSpec::new("worker", |sup| async move {
///     let (worker, _) = Actor::spawn_linked(None, Worker, (), sup).await?;
///     Ok(worker.get_cell())
/// })
/// .restart(Restart::Transient);
/// ```
#[derive(Clone)]
pub struct ChildSpec {
    pub(crate) id: Arc<str>,
    pub(crate) start: StartFn,
    pub(crate) restart: Restart,
    pub(crate) shutdown: Shutdown,
    pub(crate) kind: ChildKind,
    pub(crate) significant: bool,
    pub(crate) backoff: Option<Arc<RestartBackoff>>,
}

impl ChildSpec {
    /// A permanent worker named `id`, stopped with a 5 s timeout, started by `start`.
    pub fn new<F, Fut>(id: impl Into<String>, start: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, ActorProcessingErr>> + Send + 'static,
    {
        ChildSpec {
            id: Arc::from(id.into()),
            start: Arc::new(move |sup| Box::pin(start(sup))),
            restart: Restart::default(),
            shutdown: Shutdown::default(),
            kind: ChildKind::Worker,
            significant: false,
            backoff: None,
        }
    }

    /// A child that is a plain ractor actor: `make` builds a fresh handler and its arguments for every start,
    /// and the actor is spawned linked to the supervisor under `name` if one is given.
    pub fn actor<A, F>(id: impl Into<String>, name: Option<String>, make: F) -> Self
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        ChildSpec::new(id, move |sup| {
            let make = Arc::clone(&make);
            let name = name.clone();
            async move {
                let (handler, args) = make();
                let (actor, _) = Actor::spawn_linked(name, handler, args, sup).await?;
                Ok(actor.get_cell())
            }
        })
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

    /// Marks the child significant for [`AutoShutdown`]. Only transient and temporary children can be.
    pub fn significant(mut self, significant: bool) -> Self {
        self.significant = significant;
        self
    }

    /// Delays this child's restarts with an exponential backoff (off by default).
    pub fn backoff(mut self, backoff: RestartBackoff) -> Self {
        self.backoff = Some(Arc::new(backoff));
        self
    }

    /// The child's id, unique among its siblings.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("kind", &self.kind)
            .field("significant", &self.significant)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// A supervisor's flags: strategy, restart intensity and automatic shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SupervisorOptions {
    /// What to restart when a child exits.
    pub strategy: Strategy,
    /// At most this many restarts within `period`; one more and the supervisor gives up (Elixir's default 3).
    pub max_restarts: u32,
    /// The window of the restart intensity (default 5 s).
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Whether significant children shut the supervisor down.
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
    /// Sets the strategy.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the restart intensity: at most `max_restarts` within `period`.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.period = period;
        self
    }

    /// Sets the automatic shutdown.
    pub fn auto_shutdown(mut self, auto_shutdown: AutoShutdown) -> Self {
        self.auto_shutdown = auto_shutdown;
        self
    }
}

/// A dynamic supervisor's flags (Elixir's `DynamicSupervisor`: one_for_one only).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DynamicSupervisorOptions {
    /// At most this many restarts within `period` (default 3 in 5 s).
    pub max_restarts: u32,
    /// The window of the restart intensity.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// At most this many children at once; `None` for no limit.
    pub max_children: Option<usize>,
}

impl Default for DynamicSupervisorOptions {
    fn default() -> Self {
        DynamicSupervisorOptions {
            max_restarts: 3,
            period: Duration::from_secs(5),
            max_children: None,
        }
    }
}

impl DynamicSupervisorOptions {
    /// Sets the restart intensity: at most `max_restarts` within `period`.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.period = period;
        self
    }

    /// Sets the most children the supervisor accepts.
    pub fn max_children(mut self, max_children: usize) -> Self {
        self.max_children = Some(max_children);
        self
    }
}
