//! The tunnel store: tunnels, channels with versions, owners and checkpoints, over a storage [`Engine`].
//!
//! Consumer sessions (clients, owners, versions, the assignment history) are soft state kept here, in memory;
//! what must survive a crash (tunnel definitions, records, checkpoints, seals, retained ranges) goes through
//! the engine. Every consumer operation takes the tunnel's lock, checks the fence and changes the state under
//! it, and submits its durable writes before releasing it, so writes reach the engine in the order the state
//! changed; the answer waits for the engine's acknowledgement.
//!
//! After a restart of a durable store every client id is unknown (sessions are not persisted): old clients get
//! the ownership-lost kind, reconnect, and resume from the durable checkpoints. Channel versions only grow,
//! across restarts too: each open of a durable store takes a new start epoch from the engine (stored before it
//! serves), and every recovered channel's version starts at `epoch << 40`, above every version handed out
//! before (a channel would need 2^40 transitions in one run to reach the next epoch's range). No version is
//! written on the hot path.
//!
//! What a write makes visible (an append's records, a seal's end) is published by the write's completion, on
//! a task of its own, not by the request's task: a client that gives up (deadline, reset stream) drops its
//! request's future, and the records it was told nothing about are stored and become readable all the same.

mod append;
mod codec;
pub mod durable;
pub mod engine;
pub mod memory;
mod producers;
mod tunnel;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arbor_proto::tunnel::domain::{ChannelState, ChannelType};

use self::append::{on_ack, outcome, wait_ack};
pub use self::durable::{DurableEngine, DurableOptions};
pub use self::engine::{ChannelDef, Engine, Retention, StoredRecord};
use self::engine::{RecoveredChannel, TunnelDef, WriteOp};
pub use self::memory::MemoryEngine;
use self::tunnel::{now_ms, Client, Recovered, SessionToken, Tunnel, TunnelLimits};
pub use self::tunnel::{AssignmentEvent, AssignmentReason};
pub use self::types::{
    Appended, ChannelAppend, ChannelDescription, CheckpointState, ClientDescription, LeaseClaim, NewSession,
    NewTunnel, ProducerRef, StoredBatch, TunnelDescription, TunnelRef,
};
use super::config::StoreOptions;
use super::error::{ServiceError, StoreError};

/// Largest ReadRecords message, in bytes of keys and values: below tonic's default 4 MiB decoding limit.
pub const READ_MESSAGE_MAX_BYTES: usize = 3 << 20;

/// Each start epoch owns the versions `epoch << 40 ..`: 2^40 transitions per channel and run, 2^23 restarts.
pub const VERSION_EPOCH_SHIFT: u32 = 40;

/// The least version of every recovered channel in a run with start epoch `epoch`.
pub fn version_floor(epoch: u64) -> i64 {
    i64::try_from(u128::from(epoch) << VERSION_EPOCH_SHIFT).unwrap_or(i64::MAX)
}

/// What a queued write of metadata weighs for [`Engine::admit`].
const META_WRITE_BYTES: usize = 64;

#[derive(Default)]
struct Catalog {
    by_id: HashMap<String, Arc<Tunnel>>,
    by_name: BTreeMap<String, String>,
}

/// Tunnels, their channels and consumers, over a storage engine. Shared as `Arc<TunnelStore>` by the gRPC
/// service and whoever embeds it (tests read [`TunnelStore::assignment_history`]).
pub struct TunnelStore {
    engine: Arc<dyn Engine>,
    /// Shared with the completions of writes (a failed creation takes its tunnel out again).
    catalog: Arc<RwLock<Catalog>>,
    options: StoreOptions,
}

impl std::fmt::Debug for TunnelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStore")
            .field("engine", &self.engine.name())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn new_uid() -> u64 {
    loop {
        let uid: u64 = rand::random();
        if uid != 0 {
            return uid;
        }
    }
}

impl TunnelStore {
    /// Opens the store: durable in `options.data_dir` (recovering what is there), else in memory.
    ///
    /// # Errors
    /// [`StoreError`] when the data directory cannot be opened or its contents do not decode.
    /// This blocks on I/O (recovery reads the whole data directory): on an async runtime, use
    /// [`TunnelStore::open_async`].
    pub fn open(options: StoreOptions) -> Result<Arc<TunnelStore>, StoreError> {
        let engine: Arc<dyn Engine> = match &options.data_dir {
            Some(dir) => Arc::new(DurableEngine::open_with(
                dir,
                DurableOptions {
                    max_queued_bytes: options.max_queued_write_bytes,
                    on_sync: None,
                },
            )?),
            None => Arc::new(MemoryEngine::new()),
        };
        TunnelStore::with_engine(engine, options)
    }

    /// [`TunnelStore::open`] on a blocking thread, off the async runtime's workers.
    ///
    /// # Errors
    /// What [`TunnelStore::open`] returns.
    pub async fn open_async(options: StoreOptions) -> Result<Arc<TunnelStore>, StoreError> {
        tokio::task::spawn_blocking(move || TunnelStore::open(options))
            .await
            .map_err(|e| StoreError::Engine {
                operation: "open (blocking task)",
                source: Box::new(e),
            })?
    }

    /// A store over any engine (recovering what it holds).
    ///
    /// # Errors
    /// What [`Engine::recover`] returns.
    pub fn with_engine(
        engine: Arc<dyn Engine>,
        options: StoreOptions,
    ) -> Result<Arc<TunnelStore>, StoreError> {
        let mut catalog = Catalog::default();
        let epoch = engine.start_epoch()?;
        let floor = version_floor(epoch);
        let recovered = engine.recover()?;
        let limits = TunnelLimits::of(&options);
        for t in recovered {
            let found = Recovered {
                channels: t.channels,
                producers: t.producers,
                version_floor: floor,
            };
            let tunnel = Tunnel::from_def(t.def, found, limits);
            tracing::info!(tunnel = %tunnel.id, name = %tunnel.def.name, "tunnel recovered");
            catalog.by_name.insert(tunnel.def.name.clone(), tunnel.id.clone());
            catalog.by_id.insert(tunnel.id.clone(), Arc::new(tunnel));
        }
        tracing::info!(
            engine = engine.name(),
            epoch,
            version_floor = floor,
            tunnels = catalog.by_id.len(),
            "tunnel store opened"
        );
        Ok(Arc::new(TunnelStore {
            engine,
            catalog: Arc::new(RwLock::new(catalog)),
            options,
        }))
    }

    /// Whether acknowledged writes survive a crash.
    pub fn is_durable(&self) -> bool {
        self.engine.is_durable()
    }

    /// The options in force.
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner())
    }

    fn find(&self, tunnel: &TunnelRef) -> Result<Arc<Tunnel>, ServiceError> {
        let catalog = self.catalog();
        let found = match tunnel {
            TunnelRef::Id(id) => catalog.by_id.get(id),
            TunnelRef::Name(name) => catalog.by_name.get(name).and_then(|id| catalog.by_id.get(id)),
        };
        found.cloned().ok_or_else(|| ServiceError::TunnelNotFound {
            tunnel: tunnel.to_string(),
        })
    }

    fn find_id(&self, tunnel_id: &str) -> Result<Arc<Tunnel>, ServiceError> {
        self.find(&TunnelRef::Id(tunnel_id.to_string()))
    }

    async fn wait(&self, ack: engine::Ack) -> Result<(), ServiceError> {
        wait_ack(ack).await
    }

    /// Creates a tunnel (the request already validated: name syntax, channel count, parents).
    ///
    /// # Errors
    /// [`ServiceError::TunnelExists`], or [`ServiceError::Storage`].
    pub async fn create_tunnel(&self, new: NewTunnel) -> Result<TunnelDescription, ServiceError> {
        let (tunnel, ack) = {
            let mut catalog = self.catalog.write().unwrap_or_else(|e| e.into_inner());
            if let Some(id) = catalog.by_name.get(&new.name) {
                return Err(ServiceError::TunnelExists {
                    name: new.name,
                    tunnel_id: id.clone(),
                });
            }
            let mut uid = new_uid();
            while catalog.by_id.contains_key(&format!("{uid:016x}")) {
                uid = new_uid();
            }
            let def = TunnelDef {
                uid,
                name: new.name,
                created_ms: now_ms(),
                channels: new.channels,
                retention: new.retention,
            };
            let ack = self.engine.submit(vec![WriteOp::PutTunnel(def.clone())]);
            let count = def.channels.len();
            let new = Recovered {
                channels: vec![RecoveredChannel::default(); count],
                ..Recovered::default()
            };
            let tunnel = Arc::new(Tunnel::from_def(def, new, TunnelLimits::of(&self.options)));
            catalog.by_name.insert(tunnel.def.name.clone(), tunnel.id.clone());
            catalog.by_id.insert(tunnel.id.clone(), Arc::clone(&tunnel));
            (tunnel, ack)
        };
        // The rollback runs when the write fails even if this request is gone by then.
        let (catalog, created) = (Arc::clone(&self.catalog), Arc::clone(&tunnel));
        let done = on_ack(ack, move |result| {
            if result.is_ok() {
                return;
            }
            let mut catalog = catalog.write().unwrap_or_else(|e| e.into_inner());
            if catalog
                .by_id
                .get(&created.id)
                .is_some_and(|t| Arc::ptr_eq(t, &created))
            {
                catalog.by_id.remove(&created.id);
                catalog.by_name.remove(&created.def.name);
            }
        });
        outcome(done).await?;
        tracing::info!(tunnel = %tunnel.id, name = %tunnel.def.name, channels = tunnel.def.channels.len(), "tunnel created");
        Ok(tunnel.describe())
    }

    /// Describes a tunnel.
    ///
    /// # Errors
    /// [`ServiceError::TunnelNotFound`].
    pub fn describe(&self, tunnel: &TunnelRef) -> Result<TunnelDescription, ServiceError> {
        Ok(self.find(tunnel)?.describe())
    }

    /// Every live tunnel, by name.
    pub fn list(&self) -> Vec<TunnelDescription> {
        let tunnels: Vec<Arc<Tunnel>> = {
            let catalog = self.catalog();
            catalog
                .by_name
                .values()
                .filter_map(|id| catalog.by_id.get(id).cloned())
                .collect()
        };
        tunnels.iter().map(|t| t.describe()).collect()
    }

    /// Deletes a tunnel and its records; returns its id.
    ///
    /// # Errors
    /// [`ServiceError::TunnelNotFound`], or [`ServiceError::Storage`].
    pub async fn delete_tunnel(&self, tunnel: &TunnelRef) -> Result<String, ServiceError> {
        let (found, ack) = {
            let mut catalog = self.catalog.write().unwrap_or_else(|e| e.into_inner());
            let id = match tunnel {
                TunnelRef::Id(id) => id.clone(),
                TunnelRef::Name(name) => catalog.by_name.get(name).cloned().unwrap_or_default(),
            };
            let Some(found) = catalog.by_id.remove(&id) else {
                return Err(ServiceError::TunnelNotFound {
                    tunnel: tunnel.to_string(),
                });
            };
            catalog.by_name.remove(&found.def.name);
            let mut state = found.lock();
            state.deleted = true;
            for ch in &state.channels {
                ch.lease_tx.send_modify(|changes| *changes += 1);
            }
            let ack = self.engine.submit(vec![WriteOp::DeleteTunnel {
                uid: found.def.uid,
                channels: found.def.channels.len() as u32,
            }]);
            drop(state);
            (found, ack)
        };
        self.wait(ack).await?;
        tracing::info!(tunnel = %found.id, name = %found.def.name, "tunnel deleted");
        Ok(found.id.clone())
    }

    /// Registers a consumer; returns its new session: the client id (shown to anyone), the session's secret
    /// (for the client alone) and the heartbeat timeout.
    ///
    /// # Errors
    /// [`ServiceError::TunnelNotFound`]; [`ServiceError::InvalidArgument`] for a timeout out of bounds;
    /// [`ServiceError::ResourceExhausted`] when the tunnel has `max_sessions_per_tunnel` live sessions.
    pub fn connect(
        &self,
        tunnel_id: &str,
        tag: &str,
        heartbeat_timeout: Option<Duration>,
    ) -> Result<NewSession, ServiceError> {
        let timeout = heartbeat_timeout.unwrap_or(self.options.default_heartbeat_timeout);
        if timeout < self.options.min_heartbeat_timeout || timeout > self.options.max_heartbeat_timeout {
            return Err(ServiceError::invalid(
                "heartbeat_timeout_ms",
                format!(
                    "{} ms is outside {}..={} ms",
                    timeout.as_millis(),
                    self.options.min_heartbeat_timeout.as_millis(),
                    self.options.max_heartbeat_timeout.as_millis()
                ),
            ));
        }
        let tunnel = self.find_id(tunnel_id)?;
        let client_id = format!("c-{:016x}", rand::random::<u64>());
        let token = SessionToken::generate();
        let session_token = token.expose().to_string();
        let mut state = tunnel.lock();
        let now = Instant::now();
        state.expire(now, self.options.closing_timeout, &tunnel.id);
        if state.clients.len() >= self.options.max_sessions_per_tunnel {
            return Err(ServiceError::ResourceExhausted {
                resource: format!("sessions of tunnel {}", tunnel.id),
                used: state.clients.len(),
                limit: self.options.max_sessions_per_tunnel,
            });
        }
        state.clients.insert(
            client_id.clone(),
            Client {
                tag: tag.to_string(),
                timeout,
                last_seen: now,
                token,
            },
        );
        tracing::info!(tunnel = %tunnel.id, client = %client_id, tag, timeout = %humantime::format_duration(timeout), "tunnel client connected");
        state.rebalance(&tunnel.id);
        Ok(NewSession {
            client_id,
            session_token,
            heartbeat_timeout: timeout,
        })
    }

    /// A heartbeat: keeps the client alive, applies its reports, rebalances, and returns the channels it owns.
    ///
    /// # Errors
    /// [`ServiceError::TunnelNotFound`], [`ServiceError::ClientUnknown`], [`ServiceError::NotSession`],
    /// [`ServiceError::InvalidArgument`] for an unknown channel id or more reports than channels (`channels`),
    /// [`ServiceError::FailedPrecondition`] for TERMINATED before the end.
    pub fn heartbeat(
        &self,
        tunnel_id: &str,
        client_id: &str,
        session_token: &str,
        reports: &[ChannelState],
    ) -> Result<Vec<(ChannelState, ChannelType)>, ServiceError> {
        let tunnel = self.find_id(tunnel_id)?;
        let mut state = tunnel.lock();
        // A client reports each of its channels at most once: more reports than channels is a broken request,
        // refused before any work under the lock.
        if reports.len() > state.channels.len() {
            return Err(ServiceError::invalid(
                "channels",
                format!(
                    "{} reports, more than the tunnel's {} channels",
                    reports.len(),
                    state.channels.len()
                ),
            ));
        }
        let now = Instant::now();
        state.expire(now, self.options.closing_timeout, &tunnel.id);
        state.session(&tunnel.id, client_id, session_token)?;
        if let Some(client) = state.clients.get_mut(client_id) {
            client.last_seen = now;
        }
        let mut result = Ok(());
        for (i, report) in reports.iter().enumerate() {
            // Apply every valid report even if one is refused, then refuse the call: the accepted transitions
            // stay accepted.
            if let Err(e) = state.apply_report(client_id, *report, i, &tunnel.id) {
                result = result.and(Err(e));
            }
        }
        let mut reported = vec![false; state.channels.len()];
        for report in reports {
            if let Some(seen) = reported.get_mut(report.channel_id as usize) {
                *seen = true;
            }
        }
        let mut terminated_meta = Vec::new();
        for (i, ch) in state.channels.iter().enumerate() {
            if ch.meta.terminated && reported[i] {
                terminated_meta.push((i as u32, ch.meta));
            }
        }
        state.rebalance(&tunnel.id);
        if !terminated_meta.is_empty() && !state.deleted {
            // TERMINATED is remembered across restarts; losing it would only re-assign a finished channel,
            // whose reader finds it finished at once, so there is no need to wait for the write.
            let ops = terminated_meta
                .into_iter()
                .map(|(channel, meta)| WriteOp::PutChannelMeta {
                    uid: tunnel.def.uid,
                    channel,
                    meta,
                })
                .collect();
            drop(self.engine.submit(ops));
        }
        result?;
        Ok(state.owned_by(client_id))
    }

    /// Where the owner of a channel resumes reading (fenced).
    ///
    /// # Errors
    /// [`ServiceError::TunnelNotFound`], [`ServiceError::ClientUnknown`], [`ServiceError::NotOwner`],
    /// [`ServiceError::InvalidArgument`] for an unknown channel.
    pub fn get_checkpoint(&self, lease: LeaseClaim<'_>) -> Result<CheckpointState, ServiceError> {
        let tunnel = self.find_id(lease.tunnel_id)?;
        let state = tunnel.lock();
        let index = state.fence(&tunnel.id, &lease)?;
        let ch = &state.channels[index];
        Ok(CheckpointState {
            checkpoint: ch.meta.checkpoint,
            first_retained: ch.meta.first_retained,
            end: ch.visible_end,
            channel_type: ch.channel_type,
            finished: ch.checkpointed_to_end(),
        })
    }

    /// Stores a checkpoint (fenced); answers once it is stored.
    ///
    /// # Errors
    /// The fence's errors; [`ServiceError::OutOfRange`] below the retained range;
    /// [`ServiceError::InvalidArgument`] beyond the end; [`ServiceError::Storage`].
    pub async fn checkpoint(&self, lease: LeaseClaim<'_>, sequence_number: u64) -> Result<(), ServiceError> {
        let tunnel = self.find_id(lease.tunnel_id)?;
        let ack = {
            let mut state = tunnel.lock();
            state.live(&tunnel.id)?;
            let index = state.fence(&tunnel.id, &lease)?;
            let ch = &mut state.channels[index];
            if sequence_number < ch.meta.first_retained {
                return Err(ServiceError::OutOfRange {
                    channel: lease.channel,
                    field: "sequence_number",
                    requested: sequence_number,
                    first_retained: ch.meta.first_retained,
                });
            }
            if sequence_number > ch.visible_end {
                return Err(ServiceError::invalid(
                    "sequence_number",
                    format!("{sequence_number} is beyond the channel's end {}", ch.visible_end),
                ));
            }
            self.engine.admit(META_WRITE_BYTES)?;
            let ch = &mut state.channels[index];
            ch.meta.checkpoint = sequence_number;
            ch.meta.checkpoint_version = ch.meta.checkpoint_version.max(lease.version.get());
            let meta = ch.meta;
            self.engine.submit(vec![WriteOp::PutChannelMeta {
                uid: tunnel.def.uid,
                channel: lease.channel,
                meta,
            }])
        };
        self.wait(ack).await?;
        tracing::debug!(
            tunnel = %tunnel.id,
            channel = lease.channel,
            client = lease.client_id,
            version = lease.version.get(),
            sequence_number,
            "tunnel checkpoint stored"
        );
        Ok(())
    }

    /// Reads up to `max_records` records from `from` (fenced).
    ///
    /// # Errors
    /// The fence's errors; [`ServiceError::OutOfRange`] below the retained range;
    /// [`ServiceError::InvalidArgument`] beyond the end; [`ServiceError::Storage`].
    pub async fn read(
        &self,
        lease: LeaseClaim<'_>,
        from: u64,
        max_records: usize,
    ) -> Result<StoredBatch, ServiceError> {
        let tunnel = self.find_id(lease.tunnel_id)?;
        let (end, sealed_end) = {
            let state = tunnel.lock();
            let index = state.fence(&tunnel.id, &lease)?;
            let ch = &state.channels[index];
            if from < ch.meta.first_retained {
                return Err(out_of_range(lease.channel, from, ch.meta.first_retained));
            }
            if from > ch.visible_end {
                return Err(ServiceError::invalid(
                    "from_sequence_number",
                    format!("{from} is beyond the channel's end {}", ch.visible_end),
                ));
            }
            (ch.visible_end, ch.meta.sealed_end)
        };
        let n = (end - from).min(max_records as u64) as usize;
        let records = if n == 0 {
            Vec::new()
        } else if self.engine.reads_block() {
            let (engine, uid, channel) = (Arc::clone(&self.engine), tunnel.def.uid, lease.channel);
            tokio::task::spawn_blocking(move || engine.read(uid, channel, from, n, READ_MESSAGE_MAX_BYTES))
                .await
                .map_err(|e| StoreError::Engine {
                    operation: "read records",
                    source: Box::new(e),
                })??
        } else {
            self.engine
                .read(tunnel.def.uid, lease.channel, from, n, READ_MESSAGE_MAX_BYTES)?
        };
        if records.first().is_some_and(|r| r.seq != from) || (n > 0 && records.is_empty()) {
            // Trimmed between the check and the read.
            let first_retained = tunnel.lock().channels[lease.channel as usize].meta.first_retained;
            return Err(out_of_range(lease.channel, from, first_retained));
        }
        let next = from + records.len() as u64;
        Ok(StoredBatch {
            records,
            next,
            finished: sealed_end == Some(next) && next == end,
        })
    }

    /// Waits until the lease's channel has a record at `from` or is sealed, until the lease no longer passes
    /// the fence (the reader stopped being the owner, its version was fenced, the tunnel was deleted), or
    /// until `timeout` passes; the caller's next read tells which.
    pub async fn wait_for_records(&self, lease: LeaseClaim<'_>, from: u64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let Ok(tunnel) = self.find_id(lease.tunnel_id) else {
            return;
        };
        // Subscribed under the lock that the check runs under, so no change between the check and the wait
        // goes unseen.
        let (mut end_rx, mut lease_rx) = {
            let state = tunnel.lock();
            match state.channels.get(lease.channel as usize) {
                Some(ch) => (ch.end_tx.subscribe(), ch.lease_tx.subscribe()),
                None => return,
            }
        };
        loop {
            {
                let state = tunnel.lock();
                let fenced = state.deleted || state.fence(&tunnel.id, &lease).is_err();
                let ch = &state.channels[lease.channel as usize];
                if fenced || ch.meta.sealed_end.is_some() || ch.visible_end > from {
                    return;
                }
            }
            tokio::select! {
                changed = end_rx.changed() => if changed.is_err() { return },
                changed = lease_rx.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// How many ReadRecords calls are waiting for records of `channel` (long polls): for observability, and
    /// for tests that act once a read waits.
    pub fn long_polls(&self, tunnel_id: &str, channel: u32) -> usize {
        let Ok(tunnel) = self.find_id(tunnel_id) else {
            return 0;
        };
        let state = tunnel.lock();
        state
            .channels
            .get(channel as usize)
            .map_or(0, |ch| ch.lease_tx.receiver_count())
    }

    /// Releases all the client's channels at once and forgets it.
    ///
    /// # Errors
    /// [`ServiceError::TunnelNotFound`], [`ServiceError::ClientUnknown`], [`ServiceError::NotSession`].
    pub fn shutdown_client(
        &self,
        tunnel_id: &str,
        client_id: &str,
        session_token: &str,
    ) -> Result<(), ServiceError> {
        let tunnel = self.find_id(tunnel_id)?;
        let mut state = tunnel.lock();
        state.session(&tunnel.id, client_id, session_token)?;
        state.remove_client(client_id, AssignmentReason::ClientShutdown, &tunnel.id);
        tracing::info!(tunnel = %tunnel.id, client = client_id, "tunnel client shut down");
        state.rebalance(&tunnel.id);
        Ok(())
    }

    /// The tunnel's assignment history, oldest first (at most the history capacity).
    ///
    /// # Errors
    /// [`ServiceError::TunnelNotFound`].
    pub fn assignment_history(&self, tunnel_id: &str) -> Result<Vec<AssignmentEvent>, ServiceError> {
        let tunnel = self.find_id(tunnel_id)?;
        let state = tunnel.lock();
        Ok(state.history.iter().cloned().collect())
    }

    /// Periodic upkeep: expires clients and CLOSING channels past their timeouts, rebalances, and trims
    /// records past their tunnel's retention age. The server runs it every maintenance interval.
    pub async fn maintain(&self) {
        let tunnels: Vec<Arc<Tunnel>> = self.catalog().by_id.values().cloned().collect();
        let now_ms = now_ms();
        let mut acks = Vec::new();
        for tunnel in tunnels {
            let mut state = tunnel.lock();
            if state.deleted {
                continue;
            }
            if state.expire(Instant::now(), self.options.closing_timeout, &tunnel.id) {
                state.rebalance(&tunnel.id);
            }
            // By size too: batches acknowledged after the append that would have trimmed them.
            let retention = tunnel.def.retention;
            if retention.max_age_ms > 0 || retention.max_bytes_per_channel > 0 {
                let mut ops = Vec::new();
                for c in 0..state.channels.len() {
                    if let Some(trim) = tunnel.trim(&mut state, c, now_ms) {
                        ops.extend(trim);
                    }
                }
                if !ops.is_empty() {
                    acks.push(self.engine.submit(ops));
                }
            }
        }
        for ack in acks {
            if let Err(e) = self.wait(ack).await {
                tracing::error!(error = %e, "tunnel retention trim failed");
            }
        }
    }

    /// Stops taking writes, waits for those in flight and for reads in progress, flushes (durable state on
    /// disk) and lets go of the data directory: it can be opened again as soon as this returns, even while
    /// someone still holds this store. Blocks on I/O: on an async runtime, use [`TunnelStore::close_async`].
    ///
    /// # Errors
    /// The engine's final flush failed.
    pub fn close(&self) -> Result<(), StoreError> {
        self.engine.close()
    }

    /// [`TunnelStore::close`] on a blocking thread, off the async runtime's workers.
    ///
    /// # Errors
    /// What [`TunnelStore::close`] returns.
    pub async fn close_async(self: &Arc<Self>) -> Result<(), StoreError> {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| StoreError::Engine {
                operation: "close (blocking task)",
                source: Box::new(e),
            })?
    }
}

impl TunnelLimits {
    fn of(options: &StoreOptions) -> TunnelLimits {
        TunnelLimits {
            history_capacity: options.history_capacity,
            max_producers: options.max_producers_per_tunnel,
        }
    }
}

fn out_of_range(channel: u32, from: u64, first_retained: u64) -> ServiceError {
    ServiceError::OutOfRange {
        channel,
        field: "from_sequence_number",
        requested: from,
        first_retained,
    }
}
