//! [`ConnectionHandle`]: the API of a connection, hiding the actor's messages.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorRef};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::actor::{ConnectionActor, ConnectionMsg, Shared};
use super::auth::AuthInterceptor;
use super::config::{ConfigError, ConnectionConfig};
use super::error::{classify, ConnectionError, FailureClass};
use super::state::{ConnectionSnapshot, ConnectivityState};
use super::target::Target;

/// A handle on one connection. Cheap to clone; every clone observes the same state.
#[derive(Clone)]
pub struct ConnectionHandle {
    shared: Arc<Shared>,
    rx: watch::Receiver<ConnectionSnapshot>,
}

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("target", &self.shared.config.target.to_string())
            .field("state", &self.state())
            .finish()
    }
}

impl ConnectionHandle {
    /// Validate `config` and prepare a handle; no actor yet (see [`start`](Self::start),
    /// [`start_linked`](Self::start_linked), [`child_spec`](Self::child_spec)).
    pub fn prepare(config: ConnectionConfig) -> Result<ConnectionHandle, ConfigError> {
        config.validate()?;
        let endpoint = config.endpoint()?;
        let interceptor = AuthInterceptor::new(&config.auth)?;
        let shared = Shared::new(Arc::new(config), endpoint, interceptor);
        let rx = shared.tx.subscribe();
        Ok(ConnectionHandle { shared, rx })
    }

    /// Start an unsupervised connection actor.
    pub async fn start(config: ConnectionConfig) -> Result<ConnectionHandle, ConnectionError> {
        let handle = Self::prepare(config).map_err(|e| ConnectionError::Config(e.to_string()))?;
        Actor::spawn(None, ConnectionActor, handle.shared.clone())
            .await
            .map_err(|e| ConnectionError::Spawn(e.to_string()))?;
        Ok(handle)
    }

    /// Start the actor (again) linked to `supervisor`: what a `ChildSpec`'s start function calls. A restarted
    /// actor keeps serving the same handles.
    pub async fn start_linked(&self, supervisor: ActorCell) -> Result<ActorCell, ConnectionError> {
        let (actor, _join) = Actor::spawn_linked(None, ConnectionActor, self.shared.clone(), supervisor)
            .await
            .map_err(|e| ConnectionError::Spawn(e.to_string()))?;
        Ok(actor.get_cell())
    }

    /// This connection as a supervised child, transient: after `max_attempts` the actor *fails* and the
    /// supervisor restarts it (the restarted actor serves the same handles, starting a new life at IDLE), while
    /// [`shutdown`](Self::shutdown) is a normal exit that stays down. Override with `.restart(..)`.
    pub fn child_spec(&self, id: impl Into<String>) -> crate::supervisor::ChildSpec {
        let handle = self.clone();
        crate::supervisor::ChildSpec::new(id, move |sup| {
            let handle = handle.clone();
            async move { Ok(handle.start_linked(sup).await?) }
        })
        .restart(crate::supervisor::Restart::Transient)
    }

    /// The target (its `Display` redacts secrets).
    pub fn target(&self) -> &Target {
        &self.shared.config.target
    }

    /// The configuration.
    pub fn config(&self) -> &ConnectionConfig {
        &self.shared.config
    }

    /// The current actor, if one has started (a supervisor restart replaces it).
    pub fn actor(&self) -> Option<ActorCell> {
        self.actor_ref().map(|a| a.get_cell())
    }

    fn actor_ref(&self) -> Option<ActorRef<ConnectionMsg>> {
        self.shared.actor.lock().expect("actor slot poisoned").clone()
    }

    fn send(&self, msg: ConnectionMsg) {
        if let Some(a) = self.actor_ref() {
            let _ = a.cast(msg);
        }
    }

    /// Whether the connection has been READY at least once.
    pub fn has_been_ready(&self) -> bool {
        self.shared.ever_ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The current state.
    pub fn state(&self) -> ConnectivityState {
        self.rx.borrow().state
    }

    /// The current snapshot (state, generation, failed attempts, last error).
    pub fn snapshot(&self) -> ConnectionSnapshot {
        self.rx.borrow().clone()
    }

    /// A receiver of every state change.
    pub fn watch(&self) -> watch::Receiver<ConnectionSnapshot> {
        self.shared.tx.subscribe()
    }

    /// The channel if READY, else a fast [`ConnectionError::NotReady`]: nothing is queued (as in Spear and
    /// Chronicle). Take a fresh channel per call or per batch: a channel from an older generation fails fast
    /// with `Unavailable` once its connection is gone, instead of re-dialling on its own.
    pub fn channel(&self) -> Result<Channel, ConnectionError> {
        let snap = self.rx.borrow();
        match (&snap.channel, snap.state) {
            (Some(ch), ConnectivityState::Ready) => Ok(ch.clone()),
            (_, state) => Err(self.not_ready(state, &snap)),
        }
    }

    /// [`channel`](Self::channel) wrapped with the auth interceptor, ready for a generated client's `new`.
    pub fn authed_channel(&self) -> Result<InterceptedService<Channel, AuthInterceptor>, ConnectionError> {
        Ok(InterceptedService::new(
            self.channel()?,
            self.shared.interceptor.clone(),
        ))
    }

    /// The interceptor adding this connection's credentials (`Client::with_interceptor`).
    pub fn interceptor(&self) -> AuthInterceptor {
        self.shared.interceptor.clone()
    }

    fn not_ready(&self, state: ConnectivityState, snap: &ConnectionSnapshot) -> ConnectionError {
        match (state, &snap.shutdown_reason) {
            (ConnectivityState::Shutdown, Some(reason)) => ConnectionError::Shutdown {
                target: self.shared.config.target.to_string(),
                reason: reason.clone(),
            },
            _ => ConnectionError::NotReady {
                target: self.shared.config.target.to_string(),
                state,
            },
        }
    }

    /// Wait until READY and return the channel, at most `timeout`. Each caller has its own timer. An IDLE
    /// connection is asked to connect. Fails at once with [`ConnectionError::Shutdown`] when the connection is
    /// or becomes shut down (including `max_attempts` exhausted).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Channel, ConnectionError> {
        let mut rx = self.shared.tx.subscribe();
        let wait = async {
            loop {
                {
                    let snap = rx.borrow_and_update();
                    match snap.state {
                        ConnectivityState::Ready => {
                            if let Some(ch) = &snap.channel {
                                return Ok(ch.clone());
                            }
                        }
                        ConnectivityState::Shutdown => return Err(self.not_ready(snap.state, &snap)),
                        ConnectivityState::Idle => self.send(ConnectionMsg::Connect),
                        _ => {}
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(ConnectionError::ActorGone {
                        target: self.shared.config.target.to_string(),
                    });
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(ConnectionError::Timeout {
                target: self.shared.config.target.to_string(),
                state: self.state(),
                waited: timeout,
            }),
        }
    }

    /// gRPC `WaitForStateChange`: wait until the state differs from `from`, or `deadline`; returns the new
    /// state.
    pub async fn wait_for_state_change(
        &self,
        from: ConnectivityState,
        deadline: Instant,
    ) -> Result<ConnectivityState, ConnectionError> {
        let mut rx = self.shared.tx.subscribe();
        let started = Instant::now();
        let result = tokio::time::timeout_at(deadline, rx.wait_for(|s| s.state != from))
            .await
            .map(|r| r.map(|s| s.state));
        match result {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(_)) => Err(ConnectionError::ActorGone {
                target: self.shared.config.target.to_string(),
            }),
            Err(_) => Err(ConnectionError::Timeout {
                target: self.shared.config.target.to_string(),
                state: self.state(),
                waited: deadline.saturating_duration_since(started),
            }),
        }
    }

    /// Ask an IDLE connection to connect (gRPC `GetState(try_to_connect)`); returns the state before.
    pub fn connect(&self) -> ConnectivityState {
        let s = self.state();
        self.send(ConnectionMsg::Connect);
        s
    }

    /// Connect now, skipping the rest of the backoff wait.
    pub fn reconnect(&self) {
        self.send(ConnectionMsg::Reconnect);
    }

    /// Tell the connection a call failed. For a connection-level failure or a missed deadline (a frozen server
    /// looks like the latter) a health check with its own deadline runs at once; if it fails too, the connection
    /// leaves READY. A server-side error does nothing. Returns the classification ([`classify`]).
    pub fn report_failure(&self, status: &tonic::Status) -> FailureClass {
        let class = classify(status);
        if matches!(class, FailureClass::ConnectionLost | FailureClass::Timeout) {
            self.send(ConnectionMsg::CheckNow {
                generation: self.rx.borrow().generation,
            });
        }
        class
    }

    /// Wrap `message` in a request carrying the configured per-call deadline (`call_timeout`), so no call made
    /// through this connection can hang forever on a frozen server.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.request_with_timeout(message, self.shared.config.call_timeout)
    }

    /// Like [`request`](Self::request) with an explicit deadline.
    pub fn request_with_timeout<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(timeout);
        r
    }

    /// Stop the actor: waiters fail with [`ConnectionError::Shutdown`], the channel is dropped. Waits at most
    /// `timeout` for the actor to exit ([`ConnectionError::ShutdownTimedOut`] after that; it goes on stopping).
    /// A stopped connection is a normal exit for its supervisor: under [`child_spec`](Self::child_spec)
    /// (transient) it stays down.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), ConnectionError> {
        let Some(actor) = self.actor_ref() else {
            return Ok(());
        };
        match actor.stop_and_wait(Some("shutdown".into()), Some(timeout)).await {
            Err(ractor::RactorErr::Timeout) => Err(ConnectionError::ShutdownTimedOut {
                target: self.shared.config.target.to_string(),
                timeout,
            }),
            _ => Ok(()),
        }
    }
}
