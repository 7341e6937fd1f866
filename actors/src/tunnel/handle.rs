//! Starting a tunnel worker ([`TunnelWorker::builder`]) and talking to it ([`TunnelHandle`]).

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use ractor::{Actor, ActorCell, ActorRef};
use tokio::sync::{broadcast, watch};

use super::error::TunnelError;
use super::info::{ChannelInfo, TunnelEntry, TunnelEvent, WorkerInfo, WorkerStatus};
use super::options::TunnelOptions;
use super::source::{GrpcSource, TunnelSource};
use super::subscriber::{Subscriber, SubscriberActor, SubscriberConcurrency, SubscriberRef};
use super::worker::{RunnerFactory, SourceFactory, SubscriberSpec, WorkerActor, WorkerArgs, WorkerMsg};
use crate::actor::ActorHandle;
use crate::connection::{ConnectionConfig, ConnectionHandle, ConnectionPool};
use crate::registry::Registry;
use crate::supervisor::{ChildSpec, DynamicSupervisorHandle, Restart, Shutdown};

/// How many events a slow [`TunnelHandle::events`] subscriber may fall behind.
const EVENT_BUFFER: usize = 1024;

/// The registry tunnel workers use when none is given: one per process, so one worker per tunnel per process.
pub fn default_registry() -> Registry<TunnelEntry> {
    static REGISTRY: OnceLock<Registry<TunnelEntry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry::new("tunnels")).clone()
}

/// How a worker ended, as [`TunnelHandle::wait`] reports it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TunnelExit {
    /// Stopped on request: channels checkpointed, the session shut down.
    Shutdown,
    /// Stopped on an error it cannot retry (tunnel deleted, permission denied, records lost to retention
    /// under the `stop` policy...).
    Fatal(Arc<TunnelError>),
    /// Killed, or crashed, without shutting its session down.
    Killed,
}

/// What a worker and its handles share; it outlives any one incarnation of the worker.
pub(crate) struct WorkerShared {
    pub(crate) tunnel_id: String,
    pub(crate) registry: Registry<TunnelEntry>,
    pub(crate) registry_key: String,
    pub(crate) events: broadcast::Sender<TunnelEvent>,
    pub(crate) subscriber: watch::Sender<Option<SubscriberRef>>,
    pub(crate) status: watch::Sender<WorkerStatus>,
    actor: Mutex<Option<ActorRef<WorkerMsg>>>,
    exit: Mutex<Option<TunnelExit>>,
    /// Counts the incarnations that started: [`TunnelHandle::wait`] waits on it for the next one.
    incarnations: watch::Sender<u64>,
    /// The supervisor that starts the worker from its child spec, and so restarts it after a crash.
    restarter: Mutex<Option<ActorCell>>,
}

impl WorkerShared {
    pub(crate) fn set_actor(&self, actor: Option<ActorRef<WorkerMsg>>) {
        let started = actor.is_some();
        *self.actor.lock().unwrap_or_else(|p| p.into_inner()) = actor;
        *self.exit.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if started {
            self.incarnations.send_modify(|n| *n += 1);
        }
    }

    fn set_restarter(&self, supervisor: ActorCell) {
        *self.restarter.lock().unwrap_or_else(|p| p.into_inner()) = Some(supervisor);
    }

    fn restarter(&self) -> Option<ActorCell> {
        self.restarter.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current (or last) incarnation; `None` before the first start.
    pub(crate) fn actor(&self) -> Option<ActorRef<WorkerMsg>> {
        self.actor.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_exit(&self, exit: TunnelExit) {
        let mut slot = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(exit);
        }
    }
}

enum SourceSpec {
    Source(Arc<dyn TunnelSource>),
    Connection(ConnectionHandle),
    Pool(ConnectionPool, Box<ConnectionConfig>),
}

/// Tunnel workers: consume a tunnel at-least-once, in order within each channel, under supervision.
#[derive(Debug)]
pub struct TunnelWorker;

impl TunnelWorker {
    /// A builder for a worker with these options; name its service connection and its subscriber, then
    /// `start`, `start_linked`, `start_under` or `child_spec`.
    pub fn builder(options: TunnelOptions) -> TunnelWorkerBuilder {
        TunnelWorkerBuilder {
            options,
            source: None,
            subscriber: None,
            concurrency: None,
            registry: None,
            events: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

/// Builds a tunnel worker. A connection (or source) and a subscriber are required.
#[must_use]
pub struct TunnelWorkerBuilder {
    options: TunnelOptions,
    source: Option<SourceSpec>,
    subscriber: Option<SubscriberChoice>,
    /// Set by [`TunnelWorkerBuilder::subscriber_concurrency`]: overrides what `run_subscriber*` said.
    concurrency: Option<SubscriberConcurrency>,
    registry: Option<Registry<TunnelEntry>>,
    /// Created with the builder, so that events can be subscribed to before the worker starts.
    events: broadcast::Sender<TunnelEvent>,
}

/// Makes the runner of a subscriber the worker runs itself, at a concurrency.
type RunnerMaker = Arc<dyn Fn(SubscriberConcurrency) -> RunnerFactory + Send + Sync>;

/// The subscriber as the builder was told.
enum SubscriberChoice {
    Given(SubscriberRef),
    Run(RunnerMaker, SubscriberConcurrency),
}

impl fmt::Debug for TunnelWorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelWorkerBuilder")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl TunnelWorkerBuilder {
    /// Reach the service through this connection.
    pub fn connection(mut self, connection: ConnectionHandle) -> Self {
        self.source = Some(SourceSpec::Connection(connection));
        self
    }

    /// Reach the service through a pooled connection for `config`, leased by the worker (released when it
    /// dies); every incarnation of the worker leases again.
    pub fn pool(mut self, pool: ConnectionPool, config: ConnectionConfig) -> Self {
        self.source = Some(SourceSpec::Pool(pool, Box::new(config)));
        self
    }

    /// Consume another tunnel source than arbor's protocol.
    pub fn source(mut self, source: Arc<dyn TunnelSource>) -> Self {
        self.source = Some(SourceSpec::Source(source));
        self
    }

    /// Hand the records to this actor (monitored: when it dies, delivery pauses until
    /// [`TunnelHandle::attach_subscriber`]).
    pub fn subscriber(mut self, subscriber: SubscriberRef) -> Self {
        self.subscriber = Some(SubscriberChoice::Given(subscriber));
        self
    }

    /// Run `subscriber` in an actor of the worker's, one batch at a time, under a
    /// [`Supervisor`](crate::supervisor::Supervisor) that is the worker's child: started again at once if it
    /// dies or misses the processing timeout, at most three times within one `subscriber_grace` period (the
    /// supervisor's restart intensity); past that, the worker waits for [`TunnelHandle::attach_subscriber`]
    /// as it would for a user's subscriber.
    pub fn run_subscriber<S: Subscriber>(self, subscriber: S) -> Self {
        self.run_subscriber_with(subscriber, SubscriberConcurrency::One)
    }

    /// [`Self::run_subscriber`], processing up to `concurrency` batches at once (one per channel, or a pool of
    /// N); a channel never has two batches in flight, so each channel's records stay in order. Each batch's
    /// processing timeout starts when the subscriber starts it, not while it waits for a turn.
    pub fn run_subscriber_with<S: Subscriber>(
        mut self,
        subscriber: S,
        concurrency: SubscriberConcurrency,
    ) -> Self {
        let subscriber = Arc::new(subscriber);
        let maker: RunnerMaker = Arc::new(move |concurrency| {
            let subscriber = Arc::clone(&subscriber);
            Arc::new(move |worker: ActorCell| {
                let subscriber = Arc::clone(&subscriber);
                async move { SubscriberActor::spawn_linked(subscriber, concurrency, worker).await }.boxed()
            })
        });
        self.subscriber = Some(SubscriberChoice::Run(maker, concurrency));
        self
    }

    /// How many batches the subscriber the worker runs ([`Self::run_subscriber`]) processes at once, whatever
    /// `run_subscriber*` said (the tree's `subscriber_concurrency` key sets it). Only for a subscriber the
    /// worker runs: with an actor of yours ([`Self::subscriber`]) the start fails naming
    /// `subscriber_concurrency`.
    pub fn subscriber_concurrency(mut self, concurrency: SubscriberConcurrency) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// Register the worker and its channels in this registry (default: [`default_registry`]).
    pub fn registry(mut self, registry: Registry<TunnelEntry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Every event of the worker and its channels, from its first start on: subscribe here, before `start`,
    /// to see the first session and the first assignment ([`TunnelHandle::events`] sees only what comes
    /// after it is called, and a start returns once the first session's [`TunnelEvent::Connected`] was
    /// sent). The same stream as the handle's.
    pub fn events(&self) -> broadcast::Receiver<TunnelEvent> {
        self.events.subscribe()
    }

    /// Everything a start needs, checked: options, source, subscriber.
    fn prepare(self) -> Result<Prepared, TunnelError> {
        self.options.validate()?;
        let missing = |field: &str, reason: &str| TunnelError::InvalidOptions {
            field: field.into(),
            reason: reason.into(),
        };
        let source = self
            .source
            .ok_or_else(|| missing("connection", "a connection, pool or source is required"))?;
        let subscriber = match (self.subscriber, self.concurrency) {
            (None, _) => return Err(missing("subscriber", "a subscriber is required")),
            (Some(SubscriberChoice::Given(_)), Some(concurrency)) => {
                return Err(TunnelError::InvalidOptions {
                    field: "subscriber_concurrency".into(),
                    reason: format!(
                        "{concurrency:?} applies to a subscriber the worker runs (run_subscriber), but this \
                         worker hands its records to an actor of yours, which takes them at its own pace"
                    ),
                })
            }
            (Some(SubscriberChoice::Given(subscriber)), None) => SubscriberSpec::Given(subscriber),
            (Some(SubscriberChoice::Run(make, concurrency)), chosen) => {
                SubscriberSpec::Owned(make(chosen.unwrap_or(concurrency)))
            }
        };
        let options = Arc::new(self.options);
        let call_timeout = options.call_timeout;
        let source: SourceFactory = match source {
            SourceSpec::Source(source) => Arc::new(move |_| {
                let source = Arc::clone(&source);
                async move { Ok(source) }.boxed()
            }),
            SourceSpec::Connection(connection) => Arc::new(move |_| {
                let source: Arc<dyn TunnelSource> =
                    Arc::new(GrpcSource::new(connection.clone(), call_timeout));
                async move { Ok(source) }.boxed()
            }),
            SourceSpec::Pool(pool, config) => Arc::new(move |worker: ActorCell| {
                let (pool, config) = (pool.clone(), (*config).clone());
                async move {
                    let lease = pool
                        .acquire_for(config, worker)
                        .await
                        .map_err(TunnelError::Pool)?;
                    Ok(Arc::new(GrpcSource::pooled(lease, call_timeout)) as Arc<dyn TunnelSource>)
                }
                .boxed()
            }),
        };
        let registry = self.registry.unwrap_or_else(default_registry);
        let events = self.events;
        let (subscriber_tx, _) = watch::channel(None);
        let shared = Arc::new(WorkerShared {
            tunnel_id: options.tunnel_id.clone(),
            registry_key: format!("tunnel/{}", options.tunnel_id),
            registry,
            events,
            subscriber: subscriber_tx,
            status: watch::channel(WorkerStatus::Connecting).0,
            actor: Mutex::new(None),
            exit: Mutex::new(None),
            incarnations: watch::channel(0).0,
            restarter: Mutex::new(None),
        });
        Ok(Prepared {
            options,
            source,
            subscriber,
            shared,
        })
    }

    /// Starts the worker unsupervised. Every start (this one, [`Self::start_linked`], [`Self::start_under`], a
    /// supervisor's restart) returns once the service answered the first `ConnectTunnel`, within
    /// `call_timeout`: an answer the worker cannot retry (an unknown tunnel, refused credentials) fails the
    /// start with that error ([`TunnelError::Call`], kind [`ErrorKind::Fatal`](super::ErrorKind::Fatal)); a
    /// retryable one (the service is down) is retried in the background. The first session's
    /// [`TunnelEvent::Connected`] is sent before `start` returns: [`TunnelHandle::info`] shows its client id.
    pub async fn start(self) -> Result<TunnelHandle, TunnelError> {
        let prepared = self.prepare()?;
        let handle = prepared.handle();
        prepared.spawn(None).await?;
        Ok(handle)
    }

    /// Starts the worker linked to `supervisor`.
    pub async fn start_linked(self, supervisor: ActorCell) -> Result<TunnelHandle, TunnelError> {
        let prepared = self.prepare()?;
        let handle = prepared.handle();
        prepared.spawn(Some(supervisor)).await?;
        Ok(handle)
    }

    /// Starts the worker as a child of a dynamic supervisor (the usual home of tunnel workers). A second
    /// worker for the same tunnel in the process is refused with [`TunnelError::AlreadyRunning`].
    pub async fn start_under(
        self,
        supervisor: &DynamicSupervisorHandle,
    ) -> Result<TunnelHandle, TunnelError> {
        let tunnel_id = self.options.tunnel_id.clone();
        let (spec, handle) = self.child_spec_and_handle("tunnel")?;
        match supervisor.start_child(spec).await {
            Ok(_) => Ok(handle),
            Err(crate::supervisor::SupervisorError::StartFailed { source, .. }) => {
                Err(match source.downcast::<TunnelError>() {
                    Ok(err) => *err,
                    Err(source) => TunnelError::Supervisor {
                        tunnel_id,
                        source: crate::supervisor::SupervisorError::StartFailed {
                            id: "tunnel".into(),
                            source,
                        },
                    },
                })
            }
            Err(source) => Err(TunnelError::Supervisor { tunnel_id, source }),
        }
    }

    /// The worker as a supervised child: transient (a fatal error or a shutdown is a normal exit that stays
    /// down; a crash restarts it, as a new session), with a shutdown timeout that leaves room to flush
    /// checkpoints and send `Shutdown` ([`TunnelOptions::shutdown_timeout`]). The handle follows every incarnation.
    pub fn child_spec(self, id: impl Into<String>) -> Result<(ChildSpec, TunnelHandle), TunnelError> {
        self.child_spec_and_handle(id)
    }

    fn child_spec_and_handle(self, id: impl Into<String>) -> Result<(ChildSpec, TunnelHandle), TunnelError> {
        let prepared = Arc::new(self.prepare()?);
        let handle = prepared.handle();
        let shutdown = prepared.options.shutdown_timeout();
        let spec = ChildSpec::new(id, move |supervisor| {
            let prepared = Arc::clone(&prepared);
            async move {
                prepared.shared.set_restarter(supervisor.clone());
                Ok(prepared.spawn(Some(supervisor)).await?.get_cell())
            }
        })
        .restart(Restart::Transient)
        .shutdown(Shutdown::Timeout(shutdown));
        Ok((spec, handle))
    }
}

struct Prepared {
    options: Arc<TunnelOptions>,
    source: SourceFactory,
    subscriber: SubscriberSpec,
    shared: Arc<WorkerShared>,
}

impl Prepared {
    fn handle(&self) -> TunnelHandle {
        TunnelHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    async fn spawn(&self, supervisor: Option<ActorCell>) -> Result<ActorRef<WorkerMsg>, TunnelError> {
        let args = WorkerArgs {
            options: Arc::clone(&self.options),
            source: Arc::clone(&self.source),
            subscriber: Some(self.subscriber.clone()),
            shared: Arc::clone(&self.shared),
        };
        let spawned = match supervisor {
            Some(supervisor) => Actor::spawn_linked(None, WorkerActor, args, supervisor).await,
            None => Actor::spawn(None, WorkerActor, args).await,
        };
        let tunnel_id = self.options.tunnel_id.clone();
        spawned.map(|(actor, _)| actor).map_err(|err| match err {
            ractor::SpawnErr::StartupFailed(cause) => match cause.downcast::<TunnelError>() {
                Ok(err) => *err,
                Err(cause) => TunnelError::Spawn {
                    tunnel_id,
                    source: ractor::SpawnErr::StartupFailed(cause),
                },
            },
            other => TunnelError::Spawn {
                tunnel_id,
                source: other,
            },
        })
    }
}

/// A handle to a tunnel worker; it follows the worker across restarts. Cheap to clone.
#[derive(Clone)]
pub struct TunnelHandle {
    shared: Arc<WorkerShared>,
}

impl fmt::Debug for TunnelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelHandle")
            .field("tunnel_id", &self.shared.tunnel_id)
            .field("actor", &self.shared.actor().map(|a| a.get_id()))
            .finish()
    }
}

impl TunnelHandle {
    /// The tunnel.
    pub fn tunnel_id(&self) -> &str {
        &self.shared.tunnel_id
    }

    fn actor(&self) -> Result<ActorRef<WorkerMsg>, TunnelError> {
        self.shared
            .actor()
            .filter(|a| {
                !matches!(
                    a.get_status(),
                    ractor::ActorStatus::Stopping | ractor::ActorStatus::Stopped
                )
            })
            .ok_or_else(|| TunnelError::NotRunning {
                tunnel_id: self.shared.tunnel_id.clone(),
            })
    }

    /// The worker's running incarnation (to register it, watch its id, or kill it in a test); this handle
    /// follows restarts, the [`ActorHandle`] does not. [`TunnelError::NotRunning`] while no incarnation runs.
    pub fn current(&self) -> Result<ActorHandle, TunnelError> {
        Ok(self.actor()?.into())
    }

    /// The worker's running incarnation in ractor's form; see [`current`](Self::current).
    pub fn ractor_cell(&self) -> Result<ActorCell, TunnelError> {
        Ok(self.actor()?.get_cell())
    }

    /// The worker's state: session, status, channel count.
    pub async fn info(&self) -> Result<WorkerInfo, TunnelError> {
        let actor = self.actor()?;
        ractor::call!(actor, WorkerMsg::Info).map_err(|_| TunnelError::NotRunning {
            tunnel_id: self.shared.tunnel_id.clone(),
        })
    }

    /// The channels the worker runs, from the registry.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        let prefix = format!("{}/channel/", self.shared.registry_key);
        self.shared
            .registry
            .select_prefix(&prefix)
            .into_iter()
            .filter_map(|entry| match entry.value {
                TunnelEntry::Channel(info) => Some(info),
                TunnelEntry::Worker(_) => None,
            })
            .collect()
    }

    /// The worker's status, now and as it changes (across restarts): `borrow()` it, or await one with
    /// `wait_for` (`status().wait_for(|s| *s == WorkerStatus::Active)`). `Stopping` is the last status a
    /// stopping worker shows; a killed worker's status is not updated ([`TunnelHandle::wait`] tells how it
    /// ended).
    pub fn status(&self) -> watch::Receiver<WorkerStatus> {
        self.shared.status.subscribe()
    }

    /// Every event of the worker and its channels from now on; for the events of the first session and
    /// assignment, subscribe on the builder ([`TunnelWorkerBuilder::events`]).
    pub fn events(&self) -> broadcast::Receiver<TunnelEvent> {
        self.shared.events.subscribe()
    }

    /// Attaches a subscriber, replacing the current one: paused delivery resumes, and a worker that had
    /// released its channels connects again.
    pub async fn attach_subscriber(&self, subscriber: SubscriberRef) -> Result<(), TunnelError> {
        let actor = self.actor()?;
        ractor::call!(actor, WorkerMsg::Attach, subscriber).map_err(|_| TunnelError::NotRunning {
            tunnel_id: self.shared.tunnel_id.clone(),
        })
    }

    /// Stops the worker gracefully: every channel checkpoints what the subscriber acknowledged, then the
    /// session is shut down so other consumers take the channels at once. Waits at most `timeout`. Under a
    /// supervisor the worker (transient) stays down.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), TunnelError> {
        let Ok(actor) = self.actor() else {
            return Ok(());
        };
        match actor.stop_and_wait(Some("shutdown".into()), Some(timeout)).await {
            Err(ractor::RactorErr::Timeout) => Err(TunnelError::ShutdownTimedOut {
                tunnel_id: self.shared.tunnel_id.clone(),
                timeout,
            }),
            _ => Ok(()),
        }
    }

    /// Waits until the worker is down for good, and says how it ended. A shutdown or a fatal error ends it
    /// (its supervisor keeps a transient worker down after them). A kill or a crash ends it only when nothing
    /// restarts it: a worker started without a child spec ([`TunnelWorkerBuilder::start`],
    /// [`start_linked`](TunnelWorkerBuilder::start_linked)), or one whose supervisor has exited (it gave up
    /// after too many restarts, or was stopped); otherwise `wait` follows the worker to its next incarnation,
    /// as the handle does. [`wait_incarnation`](Self::wait_incarnation) ends with the current incarnation.
    pub async fn wait(&self) -> TunnelExit {
        let mut incarnations = self.shared.incarnations.subscribe();
        loop {
            incarnations.borrow_and_update();
            let exit = self.wait_incarnation().await;
            if !matches!(exit, TunnelExit::Killed) {
                return exit;
            }
            let Some(supervisor) = self.shared.restarter() else {
                return exit;
            };
            tokio::select! {
                started = incarnations.changed() => {
                    if started.is_err() {
                        return exit;
                    }
                }
                _ = supervisor.wait(None) => {
                    // It may have started the next incarnation before it exited.
                    if !incarnations.has_changed().unwrap_or(false) {
                        return exit;
                    }
                }
            }
        }
    }

    /// Waits until the worker's current incarnation has exited, and says how it ended (under a supervisor, a
    /// killed incarnation may be followed by another: [`wait`](Self::wait) waits for the end of them all).
    pub async fn wait_incarnation(&self) -> TunnelExit {
        if let Some(actor) = self.shared.actor() {
            let _ = actor.get_cell().wait(None).await;
        }
        self.shared
            .exit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(TunnelExit::Killed)
    }
}
