//! The tunnel worker actor: one session with the service at a time, one channel actor per channel it owns.
//!
//! # States
//!
//! - **Connecting**: `ConnectTunnel` runs off the mailbox; a retryable failure is retried with backoff, a
//!   fatal one stops the worker.
//! - **Active**: a heartbeat every interval (off the mailbox, one at a time, more on demand) reports the
//!   channels' states and merges the answer ([`state::merge`]): channels are started, renewed, drained or
//!   stopped. A channel that ends reports CLOSE or TERMINATED in the next heartbeat, asked for at once.
//!   A heartbeat answer of OWNERSHIP_LOST (the client expired), or no heartbeat acknowledged among those sent
//!   in the last half of the service's heartbeat timeout (the step-down deadline, which the channels check
//!   before every delivery), ends the session: every channel is stopped, `Shutdown` is sent, and the worker
//!   connects again after a random delay with a new client id.
//! - **Paused**: the subscriber died or failed; deliveries wait (nothing past what it acknowledged is ever
//!   checkpointed). A subscriber the worker runs itself lives under a [`Supervisor`] of its own (a child of
//!   the worker), which starts it again at once, at most three times within a grace period (its restart
//!   intensity); otherwise, or once that supervisor gave up, the worker waits for [`attach_subscriber`] for
//!   the grace period.
//! - **Detached**: the grace period passed: the session was shut down cleanly (acknowledged positions
//!   checkpointed, `Shutdown` sent) so that other consumers take the channels; the worker waits for a
//!   subscriber and then connects again.
//!
//! Channel actors are linked to the worker, which is their supervisor: a channel that crashes is reported
//! CLOSE (the service reassigns it, to this worker or another) rather than restarted here, and its registry
//! entry goes with it.
//!
//! [`attach_subscriber`]: super::TunnelHandle::attach_subscriber

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arbor_proto::tunnel::domain::{ChannelStatus, ChannelType, Version};
use futures::future::{join_all, BoxFuture};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::channel::{ChannelActor, ChannelArgs, ChannelMsg, Outcome, OutcomeSlot, StopMode};
use super::error::{ErrorKind, TunnelError};
use super::handle::{TunnelExit, WorkerShared};
use super::info::{TunnelEntry, TunnelEvent, WorkerInfo, WorkerStatus};
use super::options::TunnelOptions;
use super::source::{ChannelLease, ServerChannel, Session, TunnelSource};
use super::state::{self, Decision, Local, Server};
use super::subscriber::SubscriberRef;
use crate::supervisor::{ChildSpec, Restart, Shutdown, Supervisor};

/// How many times a subscriber the worker runs itself is started again within one grace period before the
/// worker gives up on it (and releases its channels once the grace period has passed).
mod session;
mod subscribers;

pub(crate) const RUNNER_RESTARTS: u32 = 3;

/// Starts a subscriber the worker runs itself, linked to the supervisor cell it is given.
pub(crate) type RunnerFactory =
    Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<SubscriberRef, ractor::SpawnErr>> + Send + Sync>;

/// How the worker gets its subscriber.
#[derive(Clone)]
pub(crate) enum SubscriberSpec {
    /// Someone else's actor: monitored.
    Given(SubscriberRef),
    /// A [`Subscriber`](super::Subscriber) the worker runs in an actor of its own.
    Owned(RunnerFactory),
}

/// How the worker reaches the service.
pub(crate) type SourceFactory =
    Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<Arc<dyn TunnelSource>, TunnelError>> + Send + Sync>;

pub(crate) enum WorkerMsg {
    Connect,
    Connected {
        /// When the ConnectTunnel was sent: the session's first step-down deadline counts from it.
        sent_at: Instant,
        result: Result<Session, TunnelError>,
    },
    Tick,
    HeartbeatDone {
        session: u64,
        /// When the heartbeat was sent: a success moves the step-down deadline to half a timeout after it.
        sent_at: Instant,
        result: Result<Vec<ServerChannel>, TunnelError>,
    },
    SubscriberFailed {
        subscriber: ActorId,
        reason: String,
    },
    /// The runner's supervisor (this actor) started a runner.
    RunnerStarted {
        supervisor: ActorId,
        subscriber: SubscriberRef,
    },
    Attach(SubscriberRef, RpcReplyPort<()>),
    GraceExpired {
        generation: u64,
    },
    Info(RpcReplyPort<WorkerInfo>),
}

pub(crate) struct WorkerArgs {
    pub(crate) options: Arc<TunnelOptions>,
    pub(crate) source: SourceFactory,
    pub(crate) subscriber: Option<SubscriberSpec>,
    pub(crate) shared: Arc<WorkerShared>,
}

pub(crate) struct WorkerActor;

/// One channel as the worker holds it.
struct Channel {
    local: Option<Local>,
    /// The channel's actor while it runs (it may outlive `local` while it stops).
    actor: Option<ActorRef<ChannelMsg>>,
    outcome: Arc<OutcomeSlot>,
    /// Heartbeats seen while draining (a channel stuck in CLOSING is forced closed).
    closing_heartbeats: u32,
    forced: bool,
}

/// A `ConnectTunnel` in flight, between its task and the actor.
#[derive(Default)]
struct Opening {
    /// The worker is stopping: a session that opens now is shut down by the task that opened it.
    stopped: bool,
    /// A session opened and sent to the actor, not yet taken by it.
    opened: Option<Session>,
}

pub(crate) struct WorkerState {
    options: Arc<TunnelOptions>,
    source: Arc<dyn TunnelSource>,
    shared: Arc<WorkerShared>,
    session: Option<Session>,
    /// Bumped per session, so a late heartbeat answer of an old session is ignored.
    session_gen: u64,
    sessions: u64,
    connect_failures: u32,
    connecting: bool,
    /// The hand-over of a session being opened off the mailbox, so that one opened while the worker stops is
    /// shut down rather than left to expire holding channels.
    opening: Arc<Mutex<Opening>>,
    heartbeat_in_flight: bool,
    heartbeat_again: bool,
    /// The session's step-down deadline (half the service's heartbeat timeout after the last heartbeat sent
    /// that succeeded), watched by its channels, which deliver nothing past it. One per session; set to now
    /// when the session ends, so that a channel still stopping cannot deliver.
    alive: Option<watch::Sender<Instant>>,
    last_ok_wall: Option<SystemTime>,
    channels: BTreeMap<u32, Channel>,
    status: WorkerStatus,
    subscriber: Option<SubscriberRef>,
    /// The supervisor of the subscriber the worker runs itself (the crate's [`Supervisor`], so that the
    /// runner's restarts follow one mechanism and show in the tree); `None` for a user's subscriber.
    runner: Option<ActorCell>,
    grace_generation: u64,
}

impl WorkerState {
    fn tunnel_id(&self) -> &str {
        &self.options.tunnel_id
    }

    fn event(&self, event: TunnelEvent) {
        let _ = self.shared.events.send(event);
    }

    fn info(&self) -> WorkerInfo {
        WorkerInfo {
            tunnel_id: self.tunnel_id().to_string(),
            client_id: self.session.as_ref().map(|s| s.client_id.to_string()),
            status: self.status,
            channels: self.channels.values().filter(|c| c.actor.is_some()).count(),
            last_heartbeat: self.last_ok_wall,
            sessions: self.sessions,
        }
    }

    fn publish(&self) {
        let info = self.info();
        let _ = self.shared.registry.update(&self.shared.registry_key, |entry| {
            *entry = TunnelEntry::Worker(info)
        });
    }

    fn set_status(&mut self, status: WorkerStatus) {
        if self.status != status {
            debug!(from = ?self.status, to = ?status, "worker status");
            self.status = status;
            self.shared.status.send_replace(status);
            self.publish();
        }
    }

    /// Merges the service's answer, channel by channel.
    async fn apply(&mut self, myself: &ActorRef<WorkerMsg>, owned: Vec<ServerChannel>) {
        let server: BTreeMap<u32, ServerChannel> = owned.into_iter().map(|c| (c.channel_id, c)).collect();
        let ids: Vec<u32> = self.channels.keys().chain(server.keys()).copied().collect();
        let mut seen = std::collections::BTreeSet::new();
        for id in ids {
            if !seen.insert(id) {
                continue;
            }
            let s = server.get(&id);
            let local = self.channels.get(&id).and_then(|c| c.local);
            let decision = state::merge(
                local,
                s.map(|s| Server {
                    status: s.status,
                    version: s.version,
                }),
            );
            match decision {
                Decision::Keep => {}
                Decision::Start(version) => {
                    let channel_type = s.map_or(ChannelType::Stream, |s| s.channel_type);
                    self.start_channel(myself, id, version, channel_type).await;
                }
                Decision::Renew(status, version) => self.control(id, status, version),
                Decision::Drain(version) => {
                    info!(channel = id, %version, "the service moves the channel: draining");
                    self.control(id, ChannelStatus::Closing, version);
                }
                Decision::Stop => {
                    info!(channel = id, "the channel is no longer ours: stopping it");
                    if let Some(c) = self.channels.get_mut(&id) {
                        c.local = None;
                        if let Some(actor) = &c.actor {
                            let _ = actor.cast(ChannelMsg::Stop(StopMode::Abandon));
                        }
                    }
                    self.event(TunnelEvent::ChannelReleased {
                        channel_id: id,
                        reason: "no longer assigned to this consumer".into(),
                    });
                }
                Decision::Report(status, version) => {
                    let entry = self.channels.entry(id).or_insert_with(Channel::empty);
                    entry.local = Some(Local::Reported { status, version });
                    self.heartbeat_again = true;
                }
                Decision::Forget => {
                    if let Some(c) = self.channels.get_mut(&id) {
                        c.local = None;
                    }
                }
            }
        }
        self.channels
            .retain(|_, c| c.local.is_some() || c.actor.is_some());
        // A channel stuck in CLOSING (a subscriber that never acks) must not hold what the service moves.
        for (id, c) in &mut self.channels {
            if let (
                Some(Local::Running {
                    status: ChannelStatus::Closing,
                    ..
                }),
                Some(actor),
            ) = (c.local, &c.actor)
            {
                c.closing_heartbeats += 1;
                if c.closing_heartbeats > state::CLOSING_HEARTBEATS_BEFORE_FORCE && !c.forced {
                    warn!(channel = id, "channel stuck in CLOSING: forcing it closed");
                    c.forced = true;
                    let _ = actor.cast(ChannelMsg::Stop(StopMode::Flush));
                }
            }
        }
    }

    fn control(&mut self, id: u32, status: ChannelStatus, version: Version) {
        if let Some(c) = self.channels.get_mut(&id) {
            c.local = Some(Local::Running { status, version });
            if status != ChannelStatus::Closing {
                c.closing_heartbeats = 0;
            }
            if let Some(actor) = &c.actor {
                let _ = actor.cast(ChannelMsg::Control(status, version));
            }
        }
    }

    async fn start_channel(
        &mut self,
        myself: &ActorRef<WorkerMsg>,
        id: u32,
        version: Version,
        channel_type: ChannelType,
    ) {
        let (Some(session), Some(alive)) = (self.session.clone(), self.alive.as_ref().map(|a| a.subscribe()))
        else {
            return;
        };
        if self.channels.get(&id).is_some_and(|c| c.actor.is_some()) {
            // The previous actor of this channel is still stopping; its exit asks for a heartbeat, whose answer
            // starts the channel again.
            return;
        }
        let outcome = Arc::new(OutcomeSlot::default());
        let args = ChannelArgs {
            lease: ChannelLease {
                session,
                channel_id: id,
                version,
            },
            channel_type,
            source: Arc::clone(&self.source),
            options: Arc::clone(&self.options),
            subscriber: self.shared.subscriber.subscribe(),
            alive,
            worker: myself.clone(),
            registry: self.shared.registry.clone(),
            events: self.shared.events.clone(),
            outcome: Arc::clone(&outcome),
        };
        match Actor::spawn_linked(None, ChannelActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                info!(channel = id, %version, channel_type = %channel_type, actor = %actor.get_id(), "channel assigned");
                self.channels.insert(
                    id,
                    Channel {
                        local: Some(Local::Running {
                            status: ChannelStatus::Open,
                            version,
                        }),
                        actor: Some(actor),
                        outcome,
                        closing_heartbeats: 0,
                        forced: false,
                    },
                );
            }
            Err(err) => {
                // Give the channel back at once: the service assigns it again, here or elsewhere.
                error!(channel = id, error = %err, "channel failed to start; reporting it CLOSE");
                let entry = self.channels.entry(id).or_insert_with(Channel::empty);
                entry.local = Some(Local::Reported {
                    status: ChannelStatus::Close,
                    version: version.next(),
                });
                self.heartbeat_again = true;
            }
        }
    }

    /// A channel actor exited: turn its outcome into what the next heartbeat reports.
    fn on_channel_exit(&mut self, myself: &ActorRef<WorkerMsg>, id: u32, crash: Option<String>) {
        let Some(c) = self.channels.get_mut(&id) else {
            return;
        };
        c.actor = None;
        let local = c.local;
        let outcome = c.outcome.take();
        let running_version = match local {
            Some(Local::Running { version, .. }) => Some(version),
            _ => None,
        };
        let report = |c: &mut Channel, status, version| {
            c.local = Some(Local::Reported { status, version });
        };
        match (outcome, crash) {
            (Some(Outcome::Released { version, reason }), _) => {
                report(c, ChannelStatus::Close, version);
                self.event(TunnelEvent::ChannelReleased {
                    channel_id: id,
                    reason,
                });
            }
            (Some(Outcome::Terminated { version }), _) => report(c, ChannelStatus::Terminated, version),
            (Some(Outcome::OwnershipLost), _) => {
                c.local = None;
                self.event(TunnelEvent::ChannelReleased {
                    channel_id: id,
                    reason: "ownership lost".into(),
                });
            }
            (Some(Outcome::Stopped), _) if c.forced => {
                if let Some(version) = running_version {
                    report(c, ChannelStatus::Close, version.next());
                }
                self.event(TunnelEvent::ChannelReleased {
                    channel_id: id,
                    reason: "forced closed after staying CLOSING".into(),
                });
            }
            (Some(Outcome::Stopped), _) => {}
            (Some(Outcome::Fatal(err)), _) => {
                self.fail(myself, err);
                return;
            }
            (None, crash) => {
                let reason = crash.unwrap_or_else(|| "killed".into());
                warn!(channel = id, %reason, "channel actor crashed; reporting it CLOSE so that it is reassigned");
                if let Some(version) = running_version {
                    report(c, ChannelStatus::Close, version.next());
                }
                self.event(TunnelEvent::ChannelReleased {
                    channel_id: id,
                    reason: format!("the channel actor crashed: {reason}"),
                });
            }
        }
        self.channels
            .retain(|_, c| c.local.is_some() || c.actor.is_some());
        self.publish();
        self.heartbeat(myself);
    }

    /// Stops every channel; with `flush`, they checkpoint what was acknowledged first. Waits for them.
    async fn stop_channels(&mut self, mode: StopMode) {
        let actors: Vec<ActorRef<ChannelMsg>> =
            self.channels.values().filter_map(|c| c.actor.clone()).collect();
        for actor in &actors {
            let _ = actor.cast(ChannelMsg::Stop(mode));
        }
        let wait = self.options.channel_stop_wait();
        let cells: Vec<ActorCell> = actors.iter().map(|a| a.get_cell()).collect();
        join_all(cells.iter().map(|c| c.wait(Some(wait)))).await;
        for c in self.channels.values_mut() {
            c.actor = None;
            c.local = None;
        }
        self.channels.clear();
    }

    /// Stops the worker for good on an error it cannot retry (a normal exit: its supervisor does not
    /// restart it into the same error; the cause is kept for `wait`).
    fn fail(&mut self, myself: &ActorRef<WorkerMsg>, err: TunnelError) {
        error!(error = %err, cause = ?std::error::Error::source(&err), "tunnel worker stops on a fatal error");
        self.event(TunnelEvent::Fatal {
            error: err.to_string(),
        });
        let reason = format!("shutdown:fatal: {err}");
        self.shared.set_exit(TunnelExit::Fatal(Arc::new(err)));
        myself.stop(Some(reason));
    }
}

impl Channel {
    fn empty() -> Self {
        Channel {
            local: None,
            actor: None,
            outcome: Arc::new(OutcomeSlot::default()),
            closing_heartbeats: 0,
            forced: false,
        }
    }
}

/// Starts the runner under a supervisor of its own, linked to the worker: one permanent child, restarted at
/// most [`RUNNER_RESTARTS`] times per `subscriber_grace` (one more death and the supervisor gives up, and the
/// worker waits for a subscriber to be attached). Each runner it starts is reported to the worker.
async fn start_runner(
    worker: &ActorRef<WorkerMsg>,
    factory: RunnerFactory,
    options: &TunnelOptions,
) -> Result<ActorCell, ActorProcessingErr> {
    let me = worker.clone();
    let runner = ChildSpec::new("subscriber", move |supervisor: ActorCell| {
        let (factory, me) = (Arc::clone(&factory), me.clone());
        async move {
            let supervisor_id = supervisor.get_id();
            let subscriber = factory(supervisor).await?;
            let cell = subscriber.cell().clone();
            let _ = me.cast(WorkerMsg::RunnerStarted {
                supervisor: supervisor_id,
                subscriber,
            });
            Ok(cell)
        }
    })
    .restart(Restart::Permanent)
    .shutdown(Shutdown::Timeout(options.call_timeout));
    let supervisor = Supervisor::builder()
        .intensity(RUNNER_RESTARTS, options.subscriber_grace)
        .child(runner)
        .start_linked(worker.get_cell())
        .await?;
    Ok(supervisor.cell()?)
}

/// The options fitted to the limits the service advertises: a heartbeat timeout outside its bounds fails the
/// start (naming both values), read sizes above its maximum are lowered with a warning. A service that does
/// not say (an older server) leaves the options as they are; so does one unreachable now, whose error comes
/// back too (the first connect is then retried in the background rather than waited for).
async fn fit_to_service(
    source: &dyn TunnelSource,
    options: Arc<TunnelOptions>,
) -> Result<(Arc<TunnelOptions>, Option<TunnelError>), TunnelError> {
    let limits = match source.limits().await {
        Ok(Some(limits)) => limits,
        Ok(None) => return Ok((options, None)),
        Err(err) if err.kind() == ErrorKind::Fatal => return Err(err),
        Err(err) => {
            warn!(error = %err, "the service's limits are unknown for now: using the options as they are");
            return Ok((options, Some(err)));
        }
    };
    let fitted = options.fit_to(&limits)?;
    if fitted.lowered.is_empty() {
        return Ok((options, None));
    }
    for (field, configured, used) in &fitted.lowered {
        warn!(%field, %configured, %used, "option above the service's limit: lowered to it");
    }
    Ok((Arc::new(fitted.options), None))
}

impl Actor for WorkerActor {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        let shared = args.shared;
        let info = WorkerInfo {
            tunnel_id: args.options.tunnel_id.clone(),
            client_id: None,
            status: WorkerStatus::Connecting,
            channels: 0,
            last_heartbeat: None,
            sessions: 0,
        };
        shared
            .registry
            .register(
                shared.registry_key.clone(),
                myself.get_cell(),
                TunnelEntry::Worker(info),
            )
            .map_err(|err| match err {
                crate::registry::RegistryError::Duplicate { holder, .. } => {
                    Box::new(TunnelError::AlreadyRunning {
                        tunnel_id: args.options.tunnel_id.clone(),
                        actor: holder,
                    }) as ActorProcessingErr
                }
                other => Box::new(other),
            })?;
        let source = (args.source)(myself.get_cell()).await.map_err(Box::new)?;
        // The first ConnectTunnel is made here, so that a worker that can never work (an unknown tunnel, a
        // refused api key, options outside the service's limits) fails its start with the typed error rather
        // than start and stop. A retryable failure is retried in the background as any other. A restart (after
        // a crash) is not failed on a fatal answer: failed restarts count against the supervisor's intensity
        // and could take the tree's tunnels down; the incarnation stops instead, as a normal exit, which
        // `wait` reports.
        let first_start = shared.actor().is_none();
        let first_sent = Instant::now();
        let (options, first) = match fit_to_service(&*source, Arc::clone(&args.options)).await {
            Err(err) => (args.options, Err(err)),
            // The service did not answer GetLimits: do not wait for it a second time before returning.
            Ok((options, Some(unreachable))) => (options, Err(unreachable)),
            Ok((options, None)) => {
                let first = source
                    .connect(&options.tunnel_id, &options.client_tag, options.heartbeat_timeout)
                    .await;
                (options, first)
            }
        };
        let fatal = matches!(&first, Err(err) if err.kind() == ErrorKind::Fatal);
        if fatal && first_start {
            let err = first.expect_err("matched above");
            error!(error = %err, cause = ?std::error::Error::source(&err), "tunnel worker cannot start");
            shared.registry.unregister(&shared.registry_key);
            return Err(Box::new(err));
        }
        shared.set_actor(Some(myself.clone()));
        shared.status.send_replace(WorkerStatus::Connecting);
        let mut state = WorkerState {
            options,
            source,
            shared,
            session: None,
            session_gen: 0,
            sessions: 0,
            connect_failures: 0,
            // The first connect's answer is handled below, once the subscriber is attached.
            connecting: true,
            opening: Arc::default(),
            heartbeat_in_flight: false,
            heartbeat_again: false,
            alive: None,
            last_ok_wall: None,
            channels: BTreeMap::new(),
            status: WorkerStatus::Connecting,
            subscriber: None,
            runner: None,
            grace_generation: 0,
        };
        match args.subscriber {
            Some(SubscriberSpec::Given(subscriber)) => state.attach(&myself, subscriber, false),
            Some(SubscriberSpec::Owned(factory)) => {
                // The runner is attached when its supervisor's start closure reports it (RunnerStarted).
                state.runner = Some(start_runner(&myself, factory, &state.options).await?);
            }
            None => {}
        }
        if fatal {
            // A restart's fatal answer: handled once running, where stopping is a normal exit.
            let _ = myself.cast(WorkerMsg::Connected {
                sent_at: first_sent,
                result: first,
            });
        } else {
            state.on_connected(&myself, first_sent, first);
        }
        myself.send_interval(state.options.heartbeat_interval, || WorkerMsg::Tick);
        if let Some(mut changes) = state.source.assignment_changes() {
            // The source's assignment moved on its own (a Kafka rebalance): heartbeat now, not at the interval.
            let me = myself.clone();
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    if me.cast(WorkerMsg::Tick).is_err() {
                        break;
                    }
                }
            });
        }
        info!(tunnel = %state.options.tunnel_id, "tunnel worker started");
        Ok(state)
    }

    async fn post_stop(
        &self,
        _: ActorRef<WorkerMsg>,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        state.set_status(WorkerStatus::Stopping);
        state.release_session("worker stopped").await;
        // A session opened but not yet handled (its message is dropped with the mailbox): shut it down too.
        let orphan = {
            let mut opening = state.opening.lock().unwrap_or_else(|p| p.into_inner());
            opening.stopped = true;
            opening.opened.take()
        };
        if let Some(session) = orphan {
            info!(client_id = %session.client_id, "session opened as the worker stopped: shutting it down");
            if let Err(err) = state.source.shutdown(&session).await {
                warn!(error = %err, "Shutdown failed; the service releases the channels at the heartbeat timeout");
            }
        }
        if let Some(runner) = state.runner.take() {
            let _ = runner.stop_and_wait(None, Some(state.options.call_timeout)).await;
        }
        state.shared.registry.unregister(&state.shared.registry_key);
        state.shared.set_exit(TunnelExit::Shutdown);
        info!(tunnel = %state.options.tunnel_id, "tunnel worker stopped");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Connect => state.connect(&myself),
            WorkerMsg::Connected { sent_at, result } => state.on_connected(&myself, sent_at, result),
            WorkerMsg::Tick => state.on_tick(&myself),
            WorkerMsg::HeartbeatDone {
                session,
                sent_at,
                result,
            } => state.on_heartbeat(&myself, session, sent_at, result).await,
            WorkerMsg::SubscriberFailed { subscriber, reason } => {
                state.subscriber_lost(&myself, subscriber, reason, true)
            }
            WorkerMsg::RunnerStarted {
                supervisor,
                subscriber,
            } => state.runner_started(&myself, supervisor, subscriber),
            WorkerMsg::Attach(subscriber, reply) => {
                if let Some(old) = state.subscriber.take() {
                    myself.get_cell().unmonitor(old.cell().clone());
                }
                if let Some(runner) = state.runner.take() {
                    runner.stop(Some("a subscriber was attached instead".into()));
                }
                state.attach(&myself, subscriber, false);
                let _ = reply.send(());
            }
            WorkerMsg::GraceExpired { generation } => state.grace_expired(generation).await,
            WorkerMsg::Info(reply) => {
                let _ = reply.send(state.info());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<WorkerMsg>,
        event: SupervisionEvent,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, crash) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let crash = reason.filter(|r| r != "normal" && r != "shutdown");
                (cell, crash)
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        if let Some(channel) = state
            .channels
            .iter()
            .find(|(_, c)| c.actor.as_ref().is_some_and(|a| a.get_id() == id))
            .map(|(id, _)| *id)
        {
            state.on_channel_exit(&myself, channel, crash);
        } else if state.subscriber.as_ref().is_some_and(|s| s.cell().get_id() == id) {
            let reason = crash.map_or_else(
                || "the subscriber stopped".to_string(),
                |r| format!("the subscriber died: {r}"),
            );
            state.subscriber_lost(&myself, id, reason, false);
        } else if state.runner.as_ref().is_some_and(|r| r.get_id() == id) {
            state.runner_supervisor_exited(crash);
        }
        Ok(())
    }
}
