//! [`ConnectionHandle`]: the API of a connection, hiding the actor's messages.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{AbortHandle, Abortable};
use ractor::{Actor, ActorCell, ActorRef, ActorStatus, Message};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use super::actor::{ConnectionActor, ConnectionMsg, Shared};
use super::auth::{Auth, AuthInterceptor};
use super::channel::ConnectionChannel;
use super::config::{ConfigError, ConnectionConfig};
use super::error::{classify, ConnectionError, FailureClass};
use super::state::{ConnectionSnapshot, ConnectivityState};
use super::target::Target;
use super::tied::{deliver_end, EndOnce, StreamEnd, StreamEvent, Tied, TiedCall};
use super::tls::{TlsSettings, ALPN_H2};

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
    /// [`start_linked`](Self::start_linked), [`child_spec`](Self::child_spec)). TLS files (`caFile`,
    /// `certFile`, `keyFile`) are read and checked here.
    pub fn prepare(config: ConnectionConfig) -> Result<ConnectionHandle, ConfigError> {
        config.validate()?;
        let target = &config.target;
        // The connector does TLS (see `tls.rs`): tonic dials plain `http://`, and the origin keeps the
        // requests' `:scheme` right.
        let uri = format!("http://{}", target.hosts[0]);
        let invalid = |e: tonic::transport::Error| ConfigError::Invalid {
            field: "target",
            reason: format!("`{uri}` is not a valid endpoint: {e}"),
        };
        let mut endpoint = Endpoint::from_shared(uri.clone()).map_err(invalid)?;
        let tls = if target.tls {
            let origin = target.endpoint_uri();
            let origin = origin.parse().map_err(|e| ConfigError::Invalid {
                field: "target",
                reason: format!("`{origin}` is not a valid origin: {e}"),
            })?;
            endpoint = endpoint.origin(origin);
            Some(TlsSettings::for_target(
                target,
                ALPN_H2,
                config.tls_handshake_timeout,
            )?)
        } else {
            None
        };
        let auth = match &config.auth {
            Some(auth) => auth.clone(),
            None => Auth::for_target(target)?,
        };
        let interceptor = AuthInterceptor::new(&auth)?;
        let token = auth.token_source().cloned();
        let shared = Shared::new(Arc::new(config), endpoint, tls, interceptor, token);
        let rx = shared.tx.subscribe();
        Ok(ConnectionHandle { shared, rx })
    }

    /// Start an unsupervised connection actor.
    pub async fn start(config: ConnectionConfig) -> Result<ConnectionHandle, ConnectionError> {
        let handle = Self::prepare(config)?;
        Actor::spawn(None, ConnectionActor, handle.shared.clone())
            .await
            .map_err(|e| handle.spawn_error(e))?;
        Ok(handle)
    }

    /// Start the actor (again) linked to `supervisor`: what a `ChildSpec`'s start function calls. A restarted
    /// actor keeps serving the same handles.
    pub async fn start_linked(&self, supervisor: ActorCell) -> Result<ActorCell, ConnectionError> {
        let (actor, _join) = Actor::spawn_linked(None, ConnectionActor, self.shared.clone(), supervisor)
            .await
            .map_err(|e| self.spawn_error(e))?;
        Ok(actor.get_cell())
    }

    fn spawn_error(&self, e: ractor::SpawnErr) -> ConnectionError {
        ConnectionError::Spawn {
            target: self.shared.config.target.to_string(),
            source: Arc::new(e),
        }
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
        self.shared.actor().map(|a| a.get_cell())
    }

    /// Whether the connection has been READY at least once.
    pub fn has_been_ready(&self) -> bool {
        self.shared.ever_ready.load(Ordering::SeqCst)
    }

    /// The current state. Why it is not READY: [`snapshot`](Self::snapshot)`().close_reason`.
    pub fn state(&self) -> ConnectivityState {
        self.rx.borrow().state
    }

    /// The current snapshot (state, generation, why not READY, failed attempts, last error).
    pub fn snapshot(&self) -> ConnectionSnapshot {
        self.rx.borrow().clone()
    }

    /// A receiver of every state change.
    pub fn watch(&self) -> watch::Receiver<ConnectionSnapshot> {
        self.shared.tx.subscribe()
    }

    /// A channel that follows this connection across reconnects: what tonic clients are built on
    /// (`MyClient::new(conn.channel())`); auth included. Each call goes to whatever transport is current when it
    /// is made, and waits (within its deadline) while the connection is connecting. See [`ConnectionChannel`]
    /// for how each call waits or fails. Unlike [`pinned_transport`](Self::pinned_transport), it never goes
    /// stale.
    pub fn channel(&self) -> ConnectionChannel {
        ConnectionChannel::new(self.shared.clone())
    }

    /// The raw tonic `Channel` of the transport READY now, pinned to it, else a fast error:
    /// [`ConnectionError::NotReady`] (with the reason), [`Closed`](ConnectionError::Closed) or
    /// [`Shutdown`](ConnectionError::Shutdown); nothing is queued (as in Spear and Chronicle). Pinned: it
    /// belongs to this one connection generation, and once that transport is gone its calls fail fast with
    /// `Unavailable` instead of re-dialling or following the next one. No auth is applied (see
    /// [`interceptor`](Self::interceptor)). Most code wants [`channel`](Self::channel), which follows.
    ///
    /// Asking an IDLE connection for its transport asks it to connect (as any use of an idle gRPC channel
    /// does), so a caller that retries after the server cycled its connection (GOAWAY NO_ERROR,
    /// `max_connection_age`) finds it READY again instead of IDLE for good.
    pub fn pinned_transport(&self) -> Result<Channel, ConnectionError> {
        if let Some((ch, _)) = self.shared.ready_transport() {
            return Ok(ch);
        }
        let snap = self.rx.borrow().clone();
        if snap.state == ConnectivityState::Idle && !snap.closed {
            self.shared.send(ConnectionMsg::Connect { reopen: false });
        }
        Err(self.shared.not_ready(&snap))
    }

    /// The interceptor adding this connection's credentials (for a raw [`pinned_transport`](Self::pinned_transport)).
    pub fn interceptor(&self) -> AuthInterceptor {
        self.shared.interceptor.clone()
    }

    /// Wait until READY, at most `timeout`, and return the following channel. Each caller has its own timer.
    /// An IDLE connection is asked to connect. Fails at once with [`ConnectionError::Closed`] on a closed
    /// connection and with [`ConnectionError::Shutdown`] when it is or becomes shut down (including
    /// `max_attempts` exhausted).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<ConnectionChannel, ConnectionError> {
        let mut rx = self.shared.tx.subscribe();
        let wait = async {
            loop {
                {
                    let snap = rx.borrow_and_update();
                    if snap.closed {
                        return Err(self.shared.closed_error());
                    }
                    match snap.state {
                        ConnectivityState::Ready => return Ok(self.channel()),
                        ConnectivityState::Shutdown => return Err(self.shared.not_ready(&snap)),
                        ConnectivityState::Idle => self.shared.send(ConnectionMsg::Connect { reopen: false }),
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
            Err(_) => {
                let snap = self.rx.borrow();
                Err(ConnectionError::Timeout {
                    target: self.shared.config.target.to_string(),
                    state: snap.state,
                    waited: timeout,
                    reason: snap.close_reason.clone(),
                })
            }
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
            Err(_) => {
                let snap = self.rx.borrow();
                Err(ConnectionError::Timeout {
                    target: self.shared.config.target.to_string(),
                    state: snap.state,
                    waited: deadline.saturating_duration_since(started),
                    reason: snap.close_reason.clone(),
                })
            }
        }
    }

    /// Connect: an IDLE connection starts an attempt (gRPC `GetState(try_to_connect)`), and a
    /// [closed](Self::close) one leaves the closed state and goes back to its backoff loop (Spear's
    /// `connect`). Returns the state before.
    pub fn connect(&self) -> ConnectivityState {
        let s = self.state();
        let Some(actor) = self.shared.actor() else {
            return s;
        };
        // Published at once so that a `wait_ready` right after this does not see the closed state: its own
        // connect request reaches the actor after this one.
        self.shared
            .tx
            .send_if_modified(|snap| std::mem::replace(&mut snap.closed, false));
        let _ = actor.cast(ConnectionMsg::Connect { reopen: true });
        s
    }

    /// Close the connection until [`connect`](Self::connect) (Spear's `close`): the transport is torn down
    /// (calls on it fail), tied calls end with [`StreamEnd::Closed`], the state goes IDLE with
    /// `snapshot().closed` set, and from then on calls, [`pinned_transport`](Self::pinned_transport) and
    /// [`wait_ready`](Self::wait_ready) fail at once with [`ConnectionError::Closed`]; no attempt is made.
    /// Returns once the actor has closed.
    pub async fn close(&self) -> Result<(), ConnectionError> {
        let actor = self.actor_ref()?;
        match actor.call(ConnectionMsg::Close, None).await {
            Ok(ractor::rpc::CallResult::Success(())) => Ok(()),
            _ => Err(self.shared.not_ready(&self.rx.borrow())),
        }
    }

    fn actor_ref(&self) -> Result<ActorRef<ConnectionMsg>, ConnectionError> {
        self.shared.actor().ok_or_else(|| ConnectionError::ActorGone {
            target: self.shared.config.target.to_string(),
        })
    }

    /// Connect now, skipping the rest of the backoff wait.
    pub fn reconnect(&self) {
        self.shared.send(ConnectionMsg::Reconnect);
    }

    /// Tell the connection a call failed. For a connection-level failure or a missed deadline (a frozen server
    /// looks like the latter) a health check with its own deadline runs at once; if it fails too, the connection
    /// leaves READY. A server-side error does nothing. Returns the classification ([`classify`]). Calls through
    /// [`channel`](Self::channel) that fail at the transport level do this by themselves.
    pub fn report_failure(&self, status: &tonic::Status) -> FailureClass {
        let class = classify(status);
        if matches!(class, FailureClass::ConnectionLost | FailureClass::Timeout) {
            self.shared.send(ConnectionMsg::CheckNow {
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

    /// Open a server stream on behalf of `caller` and deliver it to `caller` as messages: every item as
    /// [`StreamEvent::Item`], then one [`StreamEvent::End`] (the server finished it, it failed, or the connection
    /// was closed). The connection monitors `caller`: when it dies the stream is cancelled (an HTTP/2 reset the
    /// server sees). `open` gets the connection's [`channel`](Self::channel) and makes the call:
    ///
    /// ```no_run
    /// # use arbor_actors::connection::{ConnectionHandle, StreamEvent};
    /// # use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest, HealthCheckResponse};
    /// # fn run(conn: ConnectionHandle, me: ractor::ActorRef<StreamEvent<HealthCheckResponse>>) {
    /// conn.stream_for(&me, |channel| async move {
    ///     HealthClient::new(channel).watch(HealthCheckRequest::default()).await
    /// }, |event| event)
    /// .unwrap();
    /// # }
    /// ```
    ///
    /// Fails with [`ConnectionError::CallerGone`] if `caller` has already exited, and with
    /// [`ConnectionError::ActorGone`] if the connection actor is not running.
    pub fn stream_for<T, M, F, Fut>(
        &self,
        caller: &ActorRef<M>,
        open: F,
        to_message: impl Fn(StreamEvent<T>) -> M + Send + Sync + 'static,
    ) -> Result<TiedCall, ConnectionError>
    where
        T: Send + 'static,
        M: Message,
        F: FnOnce(ConnectionChannel) -> Fut + Send + 'static,
        Fut: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>> + Send + 'static,
    {
        let to_message = Arc::new(to_message);
        let deliver = {
            let (caller, to_message) = (caller.clone(), to_message.clone());
            move |event| caller.send_message(to_message(event)).is_ok()
        };
        let end_to = {
            let (caller, to_message) = (caller.clone(), to_message);
            move |end| {
                let _ = caller.send_message(to_message(StreamEvent::End(end)));
            }
        };
        let channel = self.channel();
        self.tie(
            caller.get_cell(),
            Box::new(end_to),
            move |end: EndOnce| async move {
                let finished = match open(channel).await {
                    Err(status) => StreamEnd::Failed(status),
                    Ok(resp) => {
                        let mut stream = resp.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(item)) => {
                                    if !deliver(StreamEvent::Item(item)) {
                                        // The caller is gone; its monitor cancels us too.
                                        return;
                                    }
                                }
                                Ok(None) => break StreamEnd::Finished,
                                Err(status) => break StreamEnd::Failed(status),
                            }
                        }
                    }
                };
                deliver_end(&end, finished);
            },
        )
    }

    /// Make one (long) call on behalf of `caller` and deliver its outcome to `caller` as a message. When
    /// `caller` dies first the call is cancelled; when the connection is [closed](Self::close) the outcome is
    /// an `Unavailable` status whose source is [`ConnectionError::Closed`].
    pub fn call_for<T, M, F, Fut>(
        &self,
        caller: &ActorRef<M>,
        call: F,
        to_message: impl FnOnce(Result<tonic::Response<T>, tonic::Status>) -> M + Send + 'static,
    ) -> Result<TiedCall, ConnectionError>
    where
        T: Send + 'static,
        M: Message,
        F: FnOnce(ConnectionChannel) -> Fut + Send + 'static,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
    {
        type Outcome<T> = Result<tonic::Response<T>, tonic::Status>;
        let slot: Arc<Mutex<Option<Outcome<T>>>> = Arc::new(Mutex::new(None));
        let closed = self.shared.closed_error();
        let end_to = {
            let (caller, slot) = (caller.clone(), slot.clone());
            move |end: StreamEnd| {
                let outcome = match end {
                    StreamEnd::Closed => Err(closed.to_status()),
                    _ => slot
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take()
                        .unwrap_or_else(|| Err(closed.to_status())),
                };
                let _ = caller.send_message(to_message(outcome));
            }
        };
        let channel = self.channel();
        self.tie(
            caller.get_cell(),
            Box::new(end_to),
            move |end: EndOnce| async move {
                let outcome = call(channel).await;
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
                deliver_end(&end, StreamEnd::Finished);
            },
        )
    }

    /// Registers a tied call with the actor (which monitors `caller`), then starts it.
    fn tie<F, Fut>(
        &self,
        caller: ActorCell,
        end: Box<dyn FnOnce(StreamEnd) + Send>,
        run: F,
    ) -> Result<TiedCall, ConnectionError>
    where
        F: FnOnce(EndOnce) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let target = || self.shared.config.target.to_string();
        if matches!(caller.get_status(), ActorStatus::Stopping | ActorStatus::Stopped) {
            return Err(ConnectionError::CallerGone { target: target() });
        }
        let actor = self.actor_ref()?;
        let id = self.shared.next_tied.fetch_add(1, Ordering::Relaxed) + 1;
        let end: EndOnce = Arc::new(Mutex::new(Some(end)));
        let (abort, registration) = AbortHandle::new_pair();
        let task = Abortable::new(run(end.clone()), registration);
        let call = Tied {
            caller,
            abort: abort.clone(),
            end,
        };
        // Registered before it starts, so its `TiedDone` always comes after its `Tie`.
        actor
            .cast(ConnectionMsg::Tie { id, call })
            .map_err(|_| ConnectionError::ActorGone { target: target() })?;
        tokio::spawn(async move {
            let _ = task.await;
            let _ = actor.cast(ConnectionMsg::TiedDone { id });
        });
        Ok(TiedCall::new(id, abort))
    }

    /// Stop the actor: waiters fail with [`ConnectionError::Shutdown`], the channel is dropped, tied calls end
    /// with [`StreamEnd::Closed`]. Waits at most `timeout` for the actor to exit
    /// ([`ConnectionError::ShutdownTimedOut`] after that; it goes on stopping). A stopped connection is a normal
    /// exit for its supervisor: under [`child_spec`](Self::child_spec) (transient) it stays down.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), ConnectionError> {
        let Some(actor) = self.shared.actor() else {
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
