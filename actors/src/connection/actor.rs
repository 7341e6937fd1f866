//! The connection actor: owns the transports to one target, runs attempts off its message loop, applies the
//! backoff schedule and `max_attempts`, watches a READY connection for loss (GOAWAY, close, health), and tracks
//! the calls tied to callers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::{Instrument, Span};

pub(crate) use super::shared::Shared;

use super::attempt::{Attempt, AttemptReport};
use super::config::IdleReconnect;
use super::state::{CloseReason, ConnectionSnapshot, ConnectivityState, GoAway, ShutdownReason};
use super::tied::{StreamEnd, Tied, TiedCalls};
use super::transport::{KillSwitch, TransportEvent, TransportReporter};
use crate::backoff::Backoff;

/// Messages of the connection actor; users go through [`ConnectionHandle`](super::ConnectionHandle).
pub(crate) enum ConnectionMsg {
    /// Connect now if IDLE (gRPC `GetState(try_to_connect = true)`); with `reopen`, also leave the closed
    /// state ([`ConnectionHandle::connect`](super::ConnectionHandle::connect)).
    Connect {
        reopen: bool,
    },
    /// Connect now if IDLE or waiting in TRANSIENT_FAILURE, skipping the rest of the backoff wait.
    Reconnect,
    /// Close the connection and stay closed until `Connect { reopen: true }`.
    Close(RpcReplyPort<()>),
    /// A health check right away, after a caller saw a call fail with a connection-level error.
    CheckNow {
        /// The generation the failing call used.
        generation: u64,
    },
    AttemptDone {
        seq: u64,
        generation: u64,
        result: Result<Channel, CloseReason>,
    },
    BackoffElapsed {
        seq: u64,
    },
    Transport {
        generation: u64,
        event: TransportEvent,
    },
    HealthFailed {
        generation: u64,
        reason: String,
    },
    /// Track a call tied to a caller.
    Tie {
        id: u64,
        call: Tied,
    },
    /// A tied call ended by itself.
    TiedDone {
        id: u64,
    },
}

/// The actor. Spawn it through [`ConnectionHandle`](super::ConnectionHandle).
pub(crate) struct ConnectionActor;

/// The actor's state.
pub(crate) struct ConnectionState {
    shared: Arc<Shared>,
    life: u64,
    span: Span,
    backoff: Backoff,
    next_start: Option<Instant>,
    seq: u64,
    generation: u64,
    failed: u32,
    /// A GOAWAY or close reported for the generation of the attempt in flight: the attempt fails.
    interrupted: Option<CloseReason>,
    attempt: Option<JoinHandle<()>>,
    timer: Option<JoinHandle<()>>,
    health: Option<JoinHandle<()>>,
    /// Thrown by `close()`: fails every transport of this life made since the last `close()`, draining
    /// ones included.
    kill: Arc<KillSwitch>,
    keepalive_interval: Option<Duration>,
    closed: bool,
    tied: TiedCalls,
}

impl Drop for ConnectionState {
    fn drop(&mut self) {
        self.abort_tasks();
        self.kill.kill();
        self.tied.end_all(None, StreamEnd::Closed);
        // Killed, or failed in a handler: post_stop does not run, so make sure observers see the end, unless a
        // supervisor already started the next life (this drop can run after the new actor's pre_start).
        let (shared, life) = (&self.shared, self.life);
        shared.tx.send_if_modified(|s| {
            if shared.life.load(Ordering::SeqCst) != life || s.state == ConnectivityState::Shutdown {
                return false;
            }
            s.state = ConnectivityState::Shutdown;
            s.channel = None;
            s.shutdown_reason = Some(ShutdownReason::ActorStopped);
            true
        });
    }
}

impl Actor for ConnectionActor {
    type Msg = ConnectionMsg;
    type State = ConnectionState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Arc<Shared>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let span = tracing::info_span!(
            "connection",
            actor_id = %myself.get_id(),
            actor_name = myself.get_name().as_deref().unwrap_or(""),
            target = %shared.config.target,
        );
        *shared.actor.lock().unwrap_or_else(|e| e.into_inner()) = Some(myself.clone());
        let keepalive_interval = shared.config.keepalive.map(|k| k.interval);
        // A new life (first start or supervisor restart) starts at IDLE.
        let mut life = 0;
        shared.tx.send_modify(|s| {
            life = shared.life.fetch_add(1, Ordering::SeqCst) + 1;
            *s = ConnectionSnapshot::initial(keepalive_interval);
        });
        span.in_scope(|| tracing::info!("connection actor started"));
        Ok(ConnectionState {
            backoff: Backoff::new(shared.config.backoff.clone()),
            shared,
            life,
            span,
            next_start: None,
            seq: 0,
            generation: 0,
            failed: 0,
            interrupted: None,
            attempt: None,
            timer: None,
            health: None,
            kill: Arc::default(),
            keepalive_interval,
            closed: false,
            tied: TiedCalls::default(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.shared.config.auto_connect {
            let span = state.span.clone();
            span.in_scope(|| state.start_attempt(&myself));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.abort_tasks();
        state.tied.end_all(Some(&myself), StreamEnd::Closed);
        if state.shared.tx.borrow().state != ConnectivityState::Shutdown {
            let span = state.span.clone();
            span.in_scope(|| {
                state.set_state(ConnectivityState::Shutdown, None, Some(ShutdownReason::Requested))
            });
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        let _enter = span.enter();
        state.on_message(&myself, msg)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The connection has no children: these are the monitors on the callers of tied calls. Never stop on
        // them (ractor's default would).
        if let SupervisionEvent::ActorTerminated(who, ..) | SupervisionEvent::ActorFailed(who, _) = &event {
            if state.tied.is_caller(&who.get_id()) {
                let _enter = state.span.enter();
                state.tied.caller_died(&myself, who.get_id());
            }
        }
        Ok(())
    }
}

impl ConnectionState {
    fn current(&self) -> ConnectivityState {
        self.shared.tx.borrow().state
    }

    fn abort_tasks(&mut self) {
        for task in [self.attempt.take(), self.timer.take(), self.health.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }

    /// Publish a transition with why the connection is not READY (cleared on READY). Transitions gRPC forbids
    /// are refused (and logged): they would be a bug here.
    fn set_state(&mut self, to: ConnectivityState, channel: Option<Channel>, reason: Option<ShutdownReason>) {
        let from = self.current();
        if !from.can_become(to) {
            tracing::error!(%from, %to, "refused connectivity transition");
            return;
        }
        let generation = self.generation;
        let failed = self.failed;
        let next_attempt_at = self
            .next_start
            .filter(|_| to == ConnectivityState::TransientFailure);
        let (closed, keepalive_interval) = (self.closed, self.keepalive_interval);
        let mut why = None;
        self.shared.tx.send_modify(|s| {
            s.state = to;
            s.next_attempt_at = next_attempt_at;
            s.generation = generation;
            s.channel = channel;
            s.failed_attempts = failed;
            s.closed = closed;
            s.keepalive_interval = keepalive_interval;
            if to == ConnectivityState::Ready {
                s.close_reason = None;
            }
            if reason.is_some() {
                s.shutdown_reason = reason;
            }
            why = s.close_reason.clone();
        });
        match why {
            Some(why) => {
                tracing::info!(%from, %to, generation, failed_attempts = failed, %why, "state change")
            }
            None => tracing::info!(%from, %to, generation, failed_attempts = failed, "state change"),
        }
    }

    /// Record why the connection is not READY (published with the next state change).
    fn set_reason(&self, reason: &CloseReason) {
        let text: Arc<str> = Arc::from(reason.to_string());
        let reason = reason.clone();
        self.shared.tx.send_modify(|s| {
            s.last_error = Some(text);
            s.close_reason = Some(reason);
        });
    }

    fn on_message(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        msg: ConnectionMsg,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnectionMsg::Connect { reopen } => {
                if self.closed {
                    if !reopen {
                        return Ok(());
                    }
                    self.closed = false;
                    self.kill = Arc::default();
                    self.backoff.reset();
                    self.failed = 0;
                    tracing::info!("connect: leaving the closed state");
                    self.shared.tx.send_modify(|s| s.closed = false);
                }
                if self.current() == ConnectivityState::Idle {
                    self.start_attempt(myself);
                }
            }
            ConnectionMsg::Reconnect => match self.current() {
                _ if self.closed => {}
                ConnectivityState::Idle => self.start_attempt(myself),
                ConnectivityState::TransientFailure => {
                    if let Some(t) = self.timer.take() {
                        t.abort();
                    }
                    tracing::info!("reconnect requested: skipping the backoff wait");
                    self.start_attempt(myself);
                }
                _ => {}
            },
            ConnectionMsg::Close(reply) => {
                self.close(myself);
                let _ = reply.send(());
            }
            ConnectionMsg::CheckNow { generation } => {
                if self.current() == ConnectivityState::Ready && generation == self.generation {
                    self.spawn_check_once(myself);
                }
            }
            ConnectionMsg::AttemptDone {
                seq,
                generation,
                result,
            } => {
                if seq != self.seq || self.current() != ConnectivityState::Connecting {
                    tracing::debug!(seq, generation, "stale attempt result ignored");
                    return Ok(());
                }
                self.attempt = None;
                return match (result, self.interrupted.take()) {
                    (Ok(channel), None) => {
                        self.on_ready(myself, channel);
                        Ok(())
                    }
                    (Ok(_), Some(why)) | (Err(why), _) => self.on_attempt_failed(myself, why),
                };
            }
            ConnectionMsg::BackoffElapsed { seq } => {
                if seq == self.seq && self.current() == ConnectivityState::TransientFailure {
                    self.timer = None;
                    self.start_attempt(myself);
                }
            }
            ConnectionMsg::Transport { generation, event } => self.on_transport(myself, generation, event),
            ConnectionMsg::HealthFailed { generation, reason } => {
                if generation != self.generation || self.current() != ConnectivityState::Ready {
                    return Ok(());
                }
                tracing::warn!(generation, %reason, "health check failed on a READY connection");
                self.stop_health();
                self.set_reason(&CloseReason::Health { reason });
                // Backoff was reset on READY: the next attempt starts after the initial delay.
                let at = Instant::now() + self.shared.config.backoff.initial;
                self.next_start = Some(at);
                self.set_state(ConnectivityState::TransientFailure, None, None);
                self.schedule_retry(myself, at);
            }
            ConnectionMsg::Tie { id, call } => {
                if self.closed {
                    call.abort.abort();
                    super::tied::deliver_end(&call.end, StreamEnd::Closed);
                } else {
                    self.tied.add(myself, id, call);
                }
            }
            ConnectionMsg::TiedDone { id } => self.tied.done(myself, id),
        }
        Ok(())
    }

    fn on_transport(&mut self, myself: &ActorRef<ConnectionMsg>, generation: u64, event: TransportEvent) {
        let reason = match event {
            TransportEvent::GoAway(g) => {
                if generation == self.generation {
                    self.heed_goaway(&g);
                }
                CloseReason::GoAway(g)
            }
            TransportEvent::Closed(reason) => reason,
        };
        if generation == self.generation && self.current() == ConnectivityState::Connecting {
            // Gone while the attempt is finishing: its result may still say healthy.
            self.interrupted.get_or_insert(reason);
            return;
        }
        if generation != self.generation || self.current() != ConnectivityState::Ready {
            tracing::debug!(generation, current = self.generation, %reason, "late transport report ignored");
            return;
        }
        self.on_lost(myself, reason);
    }

    /// gRFC A8: `too_many_pings` doubles the keepalive interval for this connection, from the next transport on.
    fn heed_goaway(&mut self, g: &GoAway) {
        if !g.is_too_many_pings() {
            return;
        }
        if let Some(interval) = self.keepalive_interval {
            let doubled = interval.saturating_mul(2);
            tracing::warn!(
                from = ?interval,
                to = ?doubled,
                "server answered too_many_pings: keepalive interval doubled"
            );
            self.keepalive_interval = Some(doubled);
        }
    }

    /// A READY connection is gone (or going: GOAWAY). It leaves READY at once: calls already on the old
    /// transport finish there, new ones wait for the next transport. A clean close reconnects per
    /// `idle_reconnect`; a failure at once (when `auto_connect`).
    fn on_lost(&mut self, myself: &ActorRef<ConnectionMsg>, reason: CloseReason) {
        let clean = reason.is_clean();
        if clean {
            tracing::info!(generation = self.generation, %reason, "server closed the connection cleanly");
        } else {
            tracing::warn!(generation = self.generation, %reason, "connection lost");
        }
        // Also ends the health Watch stream, so a draining server is not kept waiting for it.
        self.stop_health();
        self.set_reason(&reason);
        self.set_state(ConnectivityState::Idle, None, None);
        let reconnect = if clean {
            self.shared.config.idle_reconnect == IdleReconnect::Eager
        } else {
            self.shared.config.auto_connect
        };
        if reconnect {
            tracing::info!("reconnecting");
            self.start_attempt(myself);
        }
    }

    fn close(&mut self, myself: &ActorRef<ConnectionMsg>) {
        if self.closed {
            return;
        }
        tracing::info!(
            tied_calls = self.tied.len(),
            "closing the connection: no attempt until connect()"
        );
        self.closed = true;
        self.seq += 1;
        self.abort_tasks();
        self.kill.kill();
        self.tied.end_all(Some(myself), StreamEnd::Closed);
        self.set_reason(&CloseReason::Closed);
        if self.current() == ConnectivityState::Idle {
            self.shared.tx.send_modify(|s| s.closed = true);
        } else {
            self.set_state(ConnectivityState::Idle, None, None);
        }
    }

    fn stop_health(&mut self) {
        if let Some(p) = self.health.take() {
            p.abort();
        }
    }

    fn start_attempt(&mut self, myself: &ActorRef<ConnectionMsg>) {
        self.seq += 1;
        self.interrupted = None;
        self.generation = self.shared.next_generation();
        let plan = self.backoff.begin_attempt(Instant::now());
        self.next_start = Some(plan.next_start);
        let now = Instant::now();
        self.shared.tx.send_modify(|s| s.attempt_started_at = Some(now));
        self.set_state(ConnectivityState::Connecting, None, None);
        let (seq, generation) = (self.seq, self.generation);
        tracing::info!(
            attempt = self.failed + 1,
            generation,
            connect_timeout = ?plan.connect_timeout,
            "connect attempt"
        );
        let report: TransportReporter = {
            let me = myself.clone();
            Arc::new(move |generation, event| {
                let _ = me.cast(ConnectionMsg::Transport { generation, event });
            })
        };
        let attempt = Attempt {
            shared: self.shared.clone(),
            generation,
            report,
            kill: self.kill.clone(),
            keepalive_interval: self.keepalive_interval,
            connect_timeout: plan.connect_timeout,
        };
        let me = myself.clone();
        let done = AttemptReport::new(move |result| {
            let _ = me.cast(ConnectionMsg::AttemptDone {
                seq,
                generation,
                result,
            });
        });
        let task = done.run(attempt.run());
        self.attempt = Some(tokio::spawn(task.instrument(self.span.clone())));
    }

    fn on_ready(&mut self, myself: &ActorRef<ConnectionMsg>, channel: Channel) {
        let attempts = self.failed + 1;
        self.failed = 0;
        self.backoff.reset();
        self.next_start = None;
        self.shared.ever_ready.store(true, Ordering::SeqCst);
        self.set_state(ConnectivityState::Ready, Some(channel.clone()), None);
        tracing::info!(generation = self.generation, attempts, "connection ready");
        let config = &self.shared.config;
        if config.health_watch || config.probe_interval.is_some() {
            let health = self.shared.health();
            let (watch, probe) = (config.health_watch, config.probe_interval);
            let me = myself.clone();
            let generation = self.generation;
            let task = async move {
                let reason = health.monitor(channel, watch, probe).await;
                let _ = me.cast(ConnectionMsg::HealthFailed { generation, reason });
            };
            self.health = Some(tokio::spawn(task.instrument(self.span.clone())));
        }
    }

    fn on_attempt_failed(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        why: CloseReason,
    ) -> Result<(), ActorProcessingErr> {
        self.failed += 1;
        self.set_reason(&why);
        if let Some(max) = self.shared.config.max_attempts {
            if self.failed >= max {
                tracing::error!(attempts = self.failed, error = %why, "max_attempts exhausted: giving up");
                self.abort_tasks();
                let reason = ShutdownReason::AttemptsExhausted {
                    attempts: self.failed,
                    last_error: why.to_string(),
                };
                self.set_state(ConnectivityState::Shutdown, None, Some(reason));
                return Err(format!(
                    "connection to {} failed {} attempts: {why}",
                    self.shared.config.target, self.failed
                )
                .into());
            }
        }
        let next = self.next_start.unwrap_or_else(Instant::now);
        tracing::warn!(
            attempt = self.failed,
            error = %why,
            retry_in = ?next.saturating_duration_since(Instant::now()),
            "connect attempt failed"
        );
        self.set_state(ConnectivityState::TransientFailure, None, None);
        self.schedule_retry(myself, next);
        Ok(())
    }

    fn schedule_retry(&mut self, myself: &ActorRef<ConnectionMsg>, at: Instant) {
        self.seq += 1;
        let seq = self.seq;
        let me = myself.clone();
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        self.timer = Some(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let _ = me.cast(ConnectionMsg::BackoffElapsed { seq });
        }));
    }

    fn spawn_check_once(&mut self, myself: &ActorRef<ConnectionMsg>) {
        let Some(channel) = self.shared.tx.borrow().channel.clone() else {
            return;
        };
        let health = self.shared.health();
        let me = myself.clone();
        let generation = self.generation;
        tokio::spawn(
            async move {
                if let Err(reason) = health.check(channel).await {
                    let _ = me.cast(ConnectionMsg::HealthFailed { generation, reason });
                }
            }
            .instrument(self.span.clone()),
        );
    }
}
