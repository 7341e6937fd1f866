//! The connection actor: owns the tonic `Channel` to one target, runs attempts off its message loop, applies the
//! backoff schedule and `max_attempts`, and watches a READY connection for loss.

use std::error::Error as StdError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tracing::{Instrument, Span};

use super::auth::AuthInterceptor;
use super::backoff::Backoff;
use super::config::ConnectionConfig;
use super::state::{ConnectionSnapshot, ConnectivityState, ShutdownReason};
use super::transport::{CloseReporter, DialOnceConnector};

/// Messages of the connection actor; users go through [`ConnectionHandle`](super::ConnectionHandle).
#[derive(Debug)]
pub(crate) enum ConnectionMsg {
    /// Connect now if IDLE (gRPC `GetState(try_to_connect = true)`).
    Connect,
    /// Connect now if IDLE or waiting in TRANSIENT_FAILURE, skipping the rest of the backoff wait.
    Reconnect,
    /// A health check right away, after a caller saw a call fail with a connection-level error.
    CheckNow {
        /// The generation the failing call used.
        generation: u64,
    },
    AttemptDone {
        seq: u64,
        generation: u64,
        result: Result<Channel, String>,
    },
    BackoffElapsed {
        seq: u64,
    },
    TransportClosed {
        generation: u64,
        reason: String,
    },
    ProbeFailed {
        generation: u64,
        reason: String,
    },
}

/// What the actor and every handle share; survives actor restarts so handles keep working.
pub(crate) struct Shared {
    pub(crate) config: Arc<ConnectionConfig>,
    pub(crate) endpoint: Endpoint,
    pub(crate) interceptor: AuthInterceptor,
    pub(crate) hosts: Arc<[(String, u16)]>,
    pub(crate) tx: watch::Sender<ConnectionSnapshot>,
    pub(crate) actor: Mutex<Option<ActorRef<ConnectionMsg>>>,
    /// Set (before READY is published) the first time the connection is READY.
    pub(crate) ever_ready: AtomicBool,
    generation: AtomicU64,
    /// Bumped (under the watch's lock) when an actor starts a new life; an old life's late `Drop` must not
    /// overwrite the new life's state.
    life: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        config: Arc<ConnectionConfig>,
        endpoint: Endpoint,
        interceptor: AuthInterceptor,
    ) -> Arc<Shared> {
        let hosts: Arc<[(String, u16)]> = config
            .target
            .hosts
            .iter()
            .map(|h| (h.host.clone(), h.port))
            .collect();
        let (tx, _rx) = watch::channel(ConnectionSnapshot::initial());
        Arc::new(Shared {
            config,
            endpoint,
            interceptor,
            hosts,
            tx,
            actor: Mutex::new(None),
            ever_ready: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            life: AtomicU64::new(0),
        })
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }
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
    /// A close report for the generation of the attempt in flight.
    closed_during_attempt: Option<String>,
    attempt: Option<JoinHandle<()>>,
    timer: Option<JoinHandle<()>>,
    probe: Option<JoinHandle<()>>,
}

impl Drop for ConnectionState {
    fn drop(&mut self) {
        self.abort_tasks();
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
        *shared.actor.lock().expect("actor slot poisoned") = Some(myself.clone());
        // A new life (first start or supervisor restart) starts at IDLE.
        let mut life = 0;
        shared.tx.send_modify(|s| {
            life = shared.life.fetch_add(1, Ordering::SeqCst) + 1;
            *s = ConnectionSnapshot::initial();
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
            closed_during_attempt: None,
            attempt: None,
            timer: None,
            probe: None,
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
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.abort_tasks();
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
}

impl ConnectionState {
    fn current(&self) -> ConnectivityState {
        self.shared.tx.borrow().state
    }

    fn abort_tasks(&mut self) {
        for task in [self.attempt.take(), self.timer.take(), self.probe.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }

    /// Publish a transition. Transitions gRPC forbids are refused (and logged): they would be a bug here.
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
        self.shared.tx.send_modify(|s| {
            s.state = to;
            s.next_attempt_at = next_attempt_at;
            s.generation = generation;
            s.channel = channel;
            s.failed_attempts = failed;
            if reason.is_some() {
                s.shutdown_reason = reason;
            }
        });
        tracing::info!(%from, %to, generation, failed_attempts = failed, "state change");
    }

    fn set_error(&self, error: &str) {
        let e: Arc<str> = Arc::from(error);
        self.shared.tx.send_modify(|s| s.last_error = Some(e));
    }

    fn on_message(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        msg: ConnectionMsg,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnectionMsg::Connect => {
                if self.current() == ConnectivityState::Idle {
                    self.start_attempt(myself);
                }
            }
            ConnectionMsg::Reconnect => match self.current() {
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
                match result {
                    Ok(_) if self.closed_during_attempt.is_some() => {
                        let why = self.closed_during_attempt.take().unwrap_or_default();
                        return self.on_attempt_failed(
                            myself,
                            format!("connection closed right after connecting: {why}"),
                        );
                    }
                    Ok(channel) => self.on_ready(myself, channel),
                    Err(error) => return self.on_attempt_failed(myself, error),
                }
            }
            ConnectionMsg::BackoffElapsed { seq } => {
                if seq == self.seq && self.current() == ConnectivityState::TransientFailure {
                    self.timer = None;
                    self.start_attempt(myself);
                }
            }
            ConnectionMsg::TransportClosed { generation, reason } => {
                if generation == self.generation && self.current() == ConnectivityState::Connecting {
                    // Closed while the attempt is finishing: its result may still say healthy.
                    self.closed_during_attempt = Some(reason);
                    return Ok(());
                }
                if generation != self.generation || self.current() != ConnectivityState::Ready {
                    tracing::debug!(generation, current = self.generation, %reason, "late close report ignored");
                    return Ok(());
                }
                tracing::warn!(generation, %reason, "connection lost");
                self.stop_probe();
                self.set_error(&reason);
                self.set_state(ConnectivityState::Idle, None, None);
                if self.shared.config.auto_connect {
                    tracing::info!("reconnecting after loss");
                    self.start_attempt(myself);
                }
            }
            ConnectionMsg::ProbeFailed { generation, reason } => {
                if generation != self.generation || self.current() != ConnectivityState::Ready {
                    return Ok(());
                }
                tracing::warn!(generation, %reason, "health probe failed on a READY connection");
                self.stop_probe();
                self.set_error(&reason);
                // Backoff was reset on READY: the next attempt starts after the initial delay.
                let at = Instant::now() + self.shared.config.backoff.initial;
                self.next_start = Some(at);
                self.set_state(ConnectivityState::TransientFailure, None, None);
                self.schedule_retry(myself, at);
            }
        }
        Ok(())
    }

    fn stop_probe(&mut self) {
        if let Some(p) = self.probe.take() {
            p.abort();
        }
    }

    fn start_attempt(&mut self, myself: &ActorRef<ConnectionMsg>) {
        self.seq += 1;
        self.closed_during_attempt = None;
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
        let report: CloseReporter = {
            let me = myself.clone();
            Arc::new(move |generation, reason| {
                let _ = me.cast(ConnectionMsg::TransportClosed { generation, reason });
            })
        };
        let shared = self.shared.clone();
        let me = myself.clone();
        let task = async move {
            let result = attempt(&shared, generation, report, plan.connect_timeout).await;
            let _ = me.cast(ConnectionMsg::AttemptDone {
                seq,
                generation,
                result,
            });
        };
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
        if let Some(every) = self.shared.config.probe_interval {
            let shared = self.shared.clone();
            let me = myself.clone();
            let generation = self.generation;
            let task = async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(reason) = health_check(&shared, channel.clone()).await {
                        let _ = me.cast(ConnectionMsg::ProbeFailed { generation, reason });
                        return;
                    }
                }
            };
            self.probe = Some(tokio::spawn(task.instrument(self.span.clone())));
        }
    }

    fn on_attempt_failed(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        error: String,
    ) -> Result<(), ActorProcessingErr> {
        self.failed += 1;
        self.set_error(&error);
        if let Some(max) = self.shared.config.max_attempts {
            if self.failed >= max {
                tracing::error!(attempts = self.failed, %error, "max_attempts exhausted: giving up");
                self.abort_tasks();
                let reason = ShutdownReason::AttemptsExhausted {
                    attempts: self.failed,
                    last_error: error.clone(),
                };
                self.set_state(ConnectivityState::Shutdown, None, Some(reason));
                return Err(format!(
                    "connection to {} failed {} attempts: {error}",
                    self.shared.config.target, self.failed
                )
                .into());
            }
        }
        let next = self.next_start.unwrap_or_else(Instant::now);
        tracing::warn!(
            attempt = self.failed,
            %error,
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
        let shared = self.shared.clone();
        let me = myself.clone();
        let generation = self.generation;
        tokio::spawn(
            async move {
                if let Err(reason) = health_check(&shared, channel).await {
                    let _ = me.cast(ConnectionMsg::ProbeFailed { generation, reason });
                }
            }
            .instrument(self.span.clone()),
        );
    }
}

/// One attempt: token (if OAuth2), dial + TLS + HTTP/2 handshake within `connect_timeout`, then a health check
/// with its own deadline. Only a passed check proves the server is alive: a frozen server accepts a connect.
async fn attempt(
    shared: &Shared,
    generation: u64,
    report: CloseReporter,
    connect_timeout: Duration,
) -> Result<Channel, String> {
    if let Some(source) = shared.config.auth.token_source() {
        match tokio::time::timeout(connect_timeout, source.token()).await {
            Err(_) => return Err(format!("access token fetch timed out after {connect_timeout:?}")),
            Ok(Err(e)) => return Err(format!("access token: {e}")),
            Ok(Ok(_)) => {}
        }
    }
    let connector = DialOnceConnector::new(shared.hosts.clone(), generation, report);
    let channel = match tokio::time::timeout(
        connect_timeout,
        shared.endpoint.connect_with_connector(connector),
    )
    .await
    {
        Err(_) => return Err(format!("connect timed out after {connect_timeout:?}")),
        Ok(Err(e)) => return Err(format!("connect failed: {}", error_chain(&e))),
        Ok(Ok(ch)) => ch,
    };
    health_check(shared, channel.clone()).await?;
    Ok(channel)
}

/// `grpc.health.v1.Health/Check` with a deadline. UNIMPLEMENTED counts as healthy: the server answered, it just
/// has no health service.
pub(crate) async fn health_check(shared: &Shared, channel: Channel) -> Result<(), String> {
    let timeout = shared.config.health_check_timeout;
    let mut client = HealthClient::with_interceptor(channel, shared.interceptor.clone());
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: shared.config.health_service.clone(),
    });
    req.set_timeout(timeout);
    // The outer timer guards against a frozen server even if the grpc-timeout machinery does not fire.
    match tokio::time::timeout(timeout + Duration::from_millis(100), client.check(req)).await {
        Err(_) => Err(format!("health check timed out after {timeout:?}")),
        Ok(Ok(resp)) => match resp.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("health check: server reports {}", other.as_str_name())),
        },
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Ok(()),
        Ok(Err(status)) => Err(format!(
            "health check failed: {:?}: {}{}",
            status.code(),
            status.message(),
            status
                .source()
                .map(|s| format!(" ({})", error_chain(s)))
                .unwrap_or_default()
        )),
    }
}

fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}
