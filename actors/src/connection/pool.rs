//! A refcounted pool of connections, after networkservicemesh's `connect` element: one connection actor per
//! key, shared by every lease on it, stopped when the last lease goes.
//!
//! - The key is the target's [`pool_key`](super::Target::pool_key): normalised `scheme://host:port` plus a
//!   hash of its TLS and auth settings, so different credentials get different connections. The first
//!   acquire's [`ConnectionConfig`] is the one the connection runs with.
//! - Acquires are serialised by the pool actor, so concurrent acquires of one key share one connection.
//! - A [`ConnectionLease`] is released when dropped, or when its holder actor (see [`ConnectionPool::acquire_for`])
//!   dies: the pool monitors holders.
//! - At zero leases the connection lingers for [`PoolOptions::linger`] (default 0) and is then stopped and
//!   removed, but only if the entry is still the same one (its generation). A connection that never reached
//!   READY is removed at once: a failed first dial is not cached.
//! - An entry whose connection is SHUTDOWN or whose actor is gone is evicted by the next acquire and recreated.
//! - The pool runs as a small one_for_all supervisor: the [`Registry`] watcher, a [`DynamicSupervisor`] owning
//!   the connections (temporary children: the pool, not the supervisor, recreates them), and the pool actor.
//!   Every connection is registered under its key with its target and live state as metadata.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tracing::Instrument;

use super::channel::ConnectionChannel;
use super::config::{ConfigError, ConnectionConfig};
use super::error::{ConnectionError, FailureClass};
use super::handle::ConnectionHandle;
use super::state::{ConnectionSnapshot, ConnectivityState};
use crate::registry::Registry;
use crate::supervisor::{
    ChildSpec, DynamicSupervisor, DynamicSupervisorHandle, DynamicSupervisorOptions, Restart, Strategy,
    Supervisor, SupervisorError, SupervisorHandle,
};

/// How long a removed connection is given to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the registry holds for each pooled connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionInfo {
    /// The target, secrets redacted.
    pub target: String,
    /// The pool key.
    pub key: String,
    /// The current state (kept up to date).
    pub state: ConnectivityState,
}

/// Pool settings. Deserializes from a document with humantime durations; missing fields take their defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolOptions {
    /// How long a connection with no lease is kept before it is stopped (default 0: at once).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Restart intensity of the pool's supervisor (default 3).
    pub max_restarts: u32,
    /// Window of the restart intensity (default 5 s).
    #[serde(with = "humantime_serde")]
    pub period: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            linger: Duration::ZERO,
            max_restarts: 3,
            period: Duration::from_secs(5),
        }
    }
}

impl PoolOptions {
    /// Set the linger time.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }
}

/// Pool errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// The pool's actors are not running (not started, or stopped).
    #[error("connection pool is not running")]
    NotRunning,
    /// The connection configuration is invalid (the source names the field).
    #[error("invalid connection configuration")]
    Config(#[from] ConfigError),
    /// The connection (or the pool itself, key `"pool"`) could not be started under its supervisor.
    #[error("could not start connection {key}")]
    Start {
        /// The pool key.
        key: String,
        /// Why.
        #[source]
        source: Arc<SupervisorError>,
    },
}

struct PoolShared {
    options: PoolOptions,
    registry: Registry<ConnectionInfo>,
    actor: Mutex<Option<ActorRef<PoolMsg>>>,
    connections: Mutex<Option<DynamicSupervisorHandle>>,
    /// The pool's own supervisor, when started with `start` / `start_linked` (for `shutdown`).
    supervisor: Mutex<Option<SupervisorHandle>>,
}

/// A handle on a pool. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionPool {
    shared: Arc<PoolShared>,
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// Counts, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Pooled connections.
    pub connections: usize,
    /// Live leases.
    pub leases: usize,
}

impl std::fmt::Display for PoolStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} connections, {} leases", self.connections, self.leases)
    }
}

impl ConnectionPool {
    /// A pool with its own registry; nothing runs until [`child_spec`](Self::child_spec) is started under a
    /// supervisor, or [`start`](Self::start) / [`start_linked`](Self::start_linked) is called.
    pub fn new(options: PoolOptions) -> ConnectionPool {
        ConnectionPool {
            shared: Arc::new(PoolShared {
                options,
                registry: Registry::new("connections"),
                actor: Mutex::new(None),
                connections: Mutex::new(None),
                supervisor: Mutex::new(None),
            }),
        }
    }

    /// The registry of the pool's connections (key: pool key; value: target and state).
    pub fn registry(&self) -> &Registry<ConnectionInfo> {
        &self.shared.registry
    }

    fn supervisor(&self) -> crate::supervisor::SupervisorBuilder {
        Supervisor::builder()
            .strategy(Strategy::OneForAll)
            .intensity(self.shared.options.max_restarts, self.shared.options.period)
            .children(self.children())
    }

    /// The pool as a supervised child: a one_for_all supervisor over the registry watcher, the connections'
    /// dynamic supervisor and the pool actor.
    pub fn child_spec(&self, id: impl Into<String>) -> ChildSpec {
        self.supervisor().child_spec(id)
    }

    /// Starts the pool under its own root supervisor (for tests and small programs; a tree uses
    /// [`child_spec`](Self::child_spec)).
    pub async fn start(&self) -> Result<(), PoolError> {
        self.started(self.supervisor().start().await)
    }

    /// Starts the pool's supervisor linked to `supervisor`.
    pub async fn start_linked(&self, supervisor: ActorCell) -> Result<(), PoolError> {
        self.started(self.supervisor().start_linked(supervisor).await)
    }

    fn started(&self, started: Result<SupervisorHandle, SupervisorError>) -> Result<(), PoolError> {
        let sup = started.map_err(|source| PoolError::Start {
            key: "pool".into(),
            source: Arc::new(source),
        })?;
        *self.shared.supervisor.lock().expect("pool slot poisoned") = Some(sup);
        Ok(())
    }

    /// Stops a pool started with [`start`](Self::start) or [`start_linked`](Self::start_linked): every
    /// connection is shut down. Waits at most `timeout`.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), PoolError> {
        let sup = self.shared.supervisor.lock().expect("pool slot poisoned").take();
        match sup {
            Some(sup) => sup.shutdown(timeout).await.map_err(|source| PoolError::Start {
                key: "pool".into(),
                source: Arc::new(source),
            }),
            None => Ok(()),
        }
    }

    fn children(&self) -> Vec<ChildSpec> {
        let registry = self.shared.registry.child_spec("registry");
        let shared = self.shared.clone();
        let dynamic_options = DynamicSupervisorOptions::default().intensity(
            self.shared.options.max_restarts.max(100),
            self.shared.options.period,
        );
        let connections = ChildSpec::new("connections", move |sup| {
            let shared = shared.clone();
            async move {
                let handle = DynamicSupervisor::start_linked(dynamic_options, sup).await?;
                *shared.connections.lock().expect("pool slot poisoned") = Some(handle.clone());
                Ok(handle.cell()?)
            }
        })
        .kind(crate::supervisor::ChildKind::DynamicSupervisor)
        .shutdown(crate::supervisor::Shutdown::Infinity);
        let shared = self.shared.clone();
        let pool = ChildSpec::new("pool", move |sup| {
            let shared = shared.clone();
            async move {
                let (actor, _) = Actor::spawn_linked(None, PoolActor, shared, sup).await?;
                Ok(actor.get_cell())
            }
        });
        vec![registry, connections, pool]
    }

    fn actor(&self) -> Result<ActorRef<PoolMsg>, PoolError> {
        self.shared
            .actor
            .lock()
            .expect("pool slot poisoned")
            .clone()
            .ok_or(PoolError::NotRunning)
    }

    /// A lease on the connection for `config`'s target, creating the connection if needed.
    pub async fn acquire(&self, config: ConnectionConfig) -> Result<ConnectionLease, PoolError> {
        self.acquire_inner(config, None).await
    }

    /// Like [`acquire`](Self::acquire), parsing a connection string with default settings.
    pub async fn acquire_str(&self, connection_string: &str) -> Result<ConnectionLease, PoolError> {
        self.acquire(ConnectionConfig::parse(connection_string)?).await
    }

    /// A lease held on behalf of `holder`: released when `holder` dies, even if the lease is never dropped.
    pub async fn acquire_for(
        &self,
        config: ConnectionConfig,
        holder: ActorCell,
    ) -> Result<ConnectionLease, PoolError> {
        self.acquire_inner(config, Some(holder)).await
    }

    async fn acquire_inner(
        &self,
        config: ConnectionConfig,
        holder: Option<ActorCell>,
    ) -> Result<ConnectionLease, PoolError> {
        let actor = self.actor()?;
        let granted = ractor::call!(actor, PoolMsg::Acquire, Box::new(config), holder)
            .map_err(|_| PoolError::NotRunning)??;
        Ok(ConnectionLease {
            pool: actor,
            key: granted.key,
            id: granted.lease_id,
            handle: granted.handle,
        })
    }

    /// Current counts.
    pub async fn stats(&self) -> Result<PoolStats, PoolError> {
        let actor = self.actor()?;
        ractor::call!(actor, PoolMsg::Stats).map_err(|_| PoolError::NotRunning)
    }
}

/// A share of a pooled connection. Dropping it releases it: the connection stops with its last lease (after
/// the pool's linger), and channels taken from it then fail with `Unavailable` (source
/// [`ConnectionError::Shutdown`]). Keep the lease as long as its channels are used.
pub struct ConnectionLease {
    pool: ActorRef<PoolMsg>,
    key: String,
    id: u64,
    handle: ConnectionHandle,
}

impl std::fmt::Debug for ConnectionLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLease")
            .field("key", &self.key)
            .field("id", &self.id)
            .field("state", &self.handle.state())
            .finish()
    }
}

impl ConnectionLease {
    /// The pool key.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// The connection's handle.
    pub fn handle(&self) -> &ConnectionHandle {
        &self.handle
    }
    /// A channel that follows the connection across reconnects, auth included: `MyClient::new(lease.channel())`
    /// (see [`ConnectionHandle::channel`]).
    pub fn channel(&self) -> ConnectionChannel {
        self.handle.channel()
    }
    /// The transport READY now, pinned to it: fails fast once it is gone (see
    /// [`ConnectionHandle::pinned_transport`]; [`channel`](Self::channel) follows reconnects instead).
    pub fn pinned_transport(&self) -> Result<Channel, ConnectionError> {
        self.handle.pinned_transport()
    }
    /// Wait for READY (see [`ConnectionHandle::wait_ready`]).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<ConnectionChannel, ConnectionError> {
        self.handle.wait_ready(timeout).await
    }
    /// `message` as a request with the connection's `call_timeout` as deadline (see
    /// [`ConnectionHandle::request`]).
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.handle.request(message)
    }
    /// `message` as a request with `timeout` as deadline.
    pub fn request_with_timeout<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        self.handle.request_with_timeout(message, timeout)
    }
    /// Report a failed call (see [`ConnectionHandle::report_failure`]).
    pub fn report_failure(&self, status: &tonic::Status) -> FailureClass {
        self.handle.report_failure(status)
    }
    /// The state watch.
    pub fn watch(&self) -> watch::Receiver<ConnectionSnapshot> {
        self.handle.watch()
    }
}

impl Drop for ConnectionLease {
    fn drop(&mut self) {
        let _ = self.pool.cast(PoolMsg::Release {
            key: std::mem::take(&mut self.key),
            lease_id: self.id,
        });
    }
}

pub(crate) struct Granted {
    key: String,
    lease_id: u64,
    handle: ConnectionHandle,
}

pub(crate) enum PoolMsg {
    Acquire(
        Box<ConnectionConfig>,
        Option<ActorCell>,
        RpcReplyPort<Result<Granted, PoolError>>,
    ),
    Release {
        key: String,
        lease_id: u64,
    },
    LingerExpired {
        key: String,
        entry_gen: u64,
    },
    Stats(RpcReplyPort<PoolStats>),
}

struct Entry {
    entry_gen: u64,
    handle: ConnectionHandle,
    actor: ActorCell,
    leases: HashMap<u64, Option<ActorId>>,
    tracker: JoinHandle<()>,
    linger: Option<JoinHandle<()>>,
}

impl Entry {
    fn is_stale(&self) -> bool {
        self.handle.state() == ConnectivityState::Shutdown
            || !matches!(
                self.actor.get_status(),
                ActorStatus::Running | ActorStatus::Starting
            )
    }
}

struct PoolActor;

struct PoolState {
    shared: Arc<PoolShared>,
    span: tracing::Span,
    entries: HashMap<String, Entry>,
    holders: HashMap<ActorId, usize>,
    next_lease: u64,
    next_gen: u64,
}

impl Actor for PoolActor {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = Arc<PoolShared>;

    async fn pre_start(
        &self,
        myself: ActorRef<PoolMsg>,
        shared: Arc<PoolShared>,
    ) -> Result<PoolState, ActorProcessingErr> {
        if shared.connections.lock().expect("pool slot poisoned").is_none() {
            return Err("the connections supervisor is not running".into());
        }
        let span = tracing::info_span!("connection_pool", actor_id = %myself.get_id());
        *shared.actor.lock().expect("pool slot poisoned") = Some(myself);
        Ok(PoolState {
            shared,
            span,
            entries: HashMap::new(),
            holders: HashMap::new(),
            next_lease: 0,
            next_gen: 0,
        })
    }

    async fn post_stop(&self, _: ActorRef<PoolMsg>, state: &mut PoolState) -> Result<(), ActorProcessingErr> {
        for (_, e) in state.entries.drain() {
            e.tracker.abort();
            if let Some(l) = e.linger {
                l.abort();
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        on_message(myself, msg, state).instrument(span).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PoolMsg>,
        evt: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        // Only monitored holders send events here: release everything a dead holder held.
        let dead = match &evt {
            SupervisionEvent::ActorTerminated(cell, _, _) | SupervisionEvent::ActorFailed(cell, _) => {
                cell.get_id()
            }
            _ => return Ok(()),
        };
        state.release_holder(&myself, dead).await;
        Ok(())
    }
}

async fn on_message(myself: ActorRef<PoolMsg>, msg: PoolMsg, state: &mut PoolState) {
    match msg {
        PoolMsg::Acquire(config, holder, reply) => {
            let r = state.acquire(&myself, *config, holder).await;
            let _ = reply.send(r);
        }
        PoolMsg::Release { key, lease_id } => state.release(&myself, &key, lease_id).await,
        PoolMsg::LingerExpired { key, entry_gen } => {
            let expired =
                matches!(state.entries.get(&key), Some(e) if e.entry_gen == entry_gen && e.leases.is_empty());
            if expired {
                tracing::info!(%key, "linger expired: closing connection");
                state.remove(&key).await;
            }
        }
        PoolMsg::Stats(reply) => {
            let _ = reply.send(PoolStats {
                connections: state.entries.len(),
                leases: state.entries.values().map(|e| e.leases.len()).sum(),
            });
        }
    }
}

impl PoolState {
    async fn acquire(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        config: ConnectionConfig,
        holder: Option<ActorCell>,
    ) -> Result<Granted, PoolError> {
        let key = config.target.pool_key();
        if self.entries.get(&key).is_some_and(Entry::is_stale) {
            tracing::info!(%key, "evicting a shut-down connection");
            self.remove(&key).await;
        }
        if !self.entries.contains_key(&key) {
            let entry = self.create(&key, config).await?;
            self.entries.insert(key.clone(), entry);
        }
        self.next_lease += 1;
        let lease_id = self.next_lease;
        let holder_id = holder.as_ref().map(|h| h.get_id());
        let entry = self.entries.get_mut(&key).expect("inserted above");
        if let Some(l) = entry.linger.take() {
            l.abort();
        }
        entry.leases.insert(lease_id, holder_id);
        let handle = entry.handle.clone();
        if let Some(holder) = holder {
            let count = self.holders.entry(holder.get_id()).or_insert(0);
            *count += 1;
            if *count == 1 {
                myself.get_cell().monitor(holder.clone());
                // Monitoring an actor that is already dead yields no event.
                if matches!(holder.get_status(), ActorStatus::Stopped | ActorStatus::Stopping) {
                    self.release_holder(myself, holder.get_id()).await;
                }
            }
        }
        tracing::debug!(%key, lease_id, "lease granted");
        Ok(Granted {
            key,
            lease_id,
            handle,
        })
    }

    async fn create(&mut self, key: &str, config: ConnectionConfig) -> Result<Entry, PoolError> {
        let connections = self
            .shared
            .connections
            .lock()
            .expect("pool slot poisoned")
            .clone()
            .ok_or(PoolError::NotRunning)?;
        let handle = ConnectionHandle::prepare(config)?;
        let spawn_handle = handle.clone();
        let spec = ChildSpec::new(key.to_string(), move |sup| {
            let h = spawn_handle.clone();
            async move { Ok(h.start_linked(sup).await?) }
        })
        .restart(Restart::Temporary);
        let failed = |source| PoolError::Start {
            key: key.to_string(),
            source: Arc::new(source),
        };
        let child = connections.start_child(spec).await.map_err(failed)?;
        // A connection can fail before this line (`max_attempts` reached at once against a refusing server):
        // the supervisor then no longer runs the temporary child, but the entry is still this connection's,
        // SHUTDOWN with its reason for the lease holder to see, and evicted by the next acquire.
        let actor = match child.cell() {
            Ok(cell) => cell,
            Err(e) => handle.actor().ok_or_else(|| failed(e))?,
        };
        let info = ConnectionInfo {
            target: handle.target().to_string(),
            key: key.to_string(),
            state: handle.state(),
        };
        if let Err(e) = self.shared.registry.register(key, actor.clone(), info) {
            tracing::warn!(%key, error = %e, "could not register connection");
        }
        // Keep the registry's state current.
        let registry = self.shared.registry.clone();
        let mut rx = handle.watch();
        let reg_key = key.to_string();
        let tracker = tokio::spawn(async move {
            loop {
                let state = rx.borrow_and_update().state;
                let _ = registry.update(&reg_key, |v| v.state = state);
                if state == ConnectivityState::Shutdown || rx.changed().await.is_err() {
                    return;
                }
            }
        });
        self.next_gen += 1;
        tracing::info!(%key, target = %handle.target(), "connection created");
        Ok(Entry {
            entry_gen: self.next_gen,
            handle,
            actor,
            leases: HashMap::new(),
            tracker,
            linger: None,
        })
    }

    async fn release(&mut self, myself: &ActorRef<PoolMsg>, key: &str, lease_id: u64) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let Some(holder) = entry.leases.remove(&lease_id) else {
            return;
        };
        if let Some(h) = holder {
            if let Some(count) = self.holders.get_mut(&h) {
                *count -= 1;
                if *count == 0 {
                    self.holders.remove(&h);
                }
            }
        }
        tracing::debug!(%key, lease_id, remaining = entry.leases.len(), "lease released");
        if !entry.leases.is_empty() {
            return;
        }
        let linger = self.shared.options.linger;
        if linger.is_zero() || !entry.handle.has_been_ready() {
            self.remove(key).await;
        } else {
            let me = myself.clone();
            let (key, entry_gen) = (key.to_string(), entry.entry_gen);
            entry.linger = Some(tokio::spawn(async move {
                tokio::time::sleep(linger).await;
                let _ = me.cast(PoolMsg::LingerExpired { key, entry_gen });
            }));
        }
    }

    async fn release_holder(&mut self, myself: &ActorRef<PoolMsg>, holder: ActorId) {
        if self.holders.remove(&holder).is_none() {
            return;
        }
        let held: Vec<(String, u64)> = self
            .entries
            .iter()
            .flat_map(|(k, e)| {
                e.leases
                    .iter()
                    .filter(|(_, h)| **h == Some(holder))
                    .map(|(id, _)| (k.clone(), *id))
                    .collect::<Vec<_>>()
            })
            .collect();
        tracing::info!(%holder, leases = held.len(), "lease holder died: releasing its leases");
        for (key, id) in held {
            self.release(myself, &key, id).await;
        }
    }

    async fn remove(&mut self, key: &str) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        if let Some(l) = entry.linger {
            l.abort();
        }
        entry.tracker.abort();
        let _ = entry.handle.shutdown(STOP_TIMEOUT).await;
        let _ = self.shared.registry.unregister(key);
        tracing::info!(%key, "connection removed from the pool");
    }
}
