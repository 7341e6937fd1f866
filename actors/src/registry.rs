//! A typed registry of live actors, owned by the tree rather than by ractor's process-global names.
//!
//! Keys are unique strings; each entry holds the actor and a value of the registry's type `V` (metadata such as
//! a connection's target and state). An entry disappears by itself when its actor exits: a small watcher actor
//! monitors every registered actor (ractor's `monitors`) and removes its entries on the exit event, without
//! polling. Subscribers see every change through [`Registry::watch`].
//!
//! The table lives outside the watcher, so reads are a lock away rather than a message round trip, and a
//! watcher restarted by its supervisor re-monitors what the table holds. Any number of registries can coexist
//! in one process.
//!
//! Reads never return an entry whose actor has fully exited (`Stopped`): such entries are dropped as they are
//! met, whether or not a watcher runs (the watcher removes them without waiting for a read, and emits the
//! `Removed` event). An entry whose actor is still *stopping* (running its `post_stop`) is still listed.
//! [`Registry::register`] does not wait for that: a holder that is stopping or stopped holds nothing, and its
//! key is taken over, which is what lets a restarted actor register its predecessor's key at once.
//!
//! Events are published while the table is locked, so every subscriber sees them in the order the table
//! changed; [`Registry::watch_with_snapshot`] gives the table and the events after it atomically, so a view
//! rebuilt from them always equals the table.
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use arbor_actors::registry::Registry;
//! use arbor_actors::supervisor::{ChildSpec, DynamicSupervisor};
//! # use std::time::Duration;
//! # use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
//! # struct Db;
//! # enum DbMsg { Ping(RpcReplyPort<&'static str>) }
//! # impl Actor for Db {
//! #     type Msg = DbMsg; type State = (); type Arguments = ();
//! #     async fn pre_start(&self, _: ActorRef<DbMsg>, _: ()) -> Result<(), ActorProcessingErr> { Ok(()) }
//! #     async fn handle(&self, _: ActorRef<DbMsg>, m: DbMsg, _: &mut ()) -> Result<(), ActorProcessingErr> {
//! #         let DbMsg::Ping(reply) = m; let _ = reply.send("pong"); Ok(())
//! #     }
//! # }
//! let registry: Registry<String> = Registry::new("services");
//! registry.start().await?;
//! let pool = DynamicSupervisor::builder().start().await?;
//! let db = pool.start_child(ChildSpec::actor("db", || (Db, ()))).await?;
//! // the running incarnation; inside an actor, `register(key, &myself, value)` does the same
//! registry.register("db/primary", db.current()?, "10.0.0.1:5432".to_string())?;
//!
//! let entry = registry.lookup("db/primary").unwrap();
//! assert_eq!(entry.value, "10.0.0.1:5432");
//! let primary = registry.lookup_typed::<DbMsg>("db/primary")?; // or entry.typed::<DbMsg>()
//! assert_eq!(primary.call(DbMsg::Ping, Duration::from_secs(1)).await?, "pong");
//! # Ok(()) }
//! ```
//!
//! An entry names one incarnation ([`ActorHandle`]): a restarted actor registers again (typically in its
//! `pre_start`), and the entry of the one before is gone by then.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, Message, SupervisionEvent,
};
use tokio::sync::broadcast;
use tracing::debug;

use crate::actor::{ActorError, ActorHandle, TypedActor};
use crate::supervisor::{ChildSpec, Shutdown};

/// How many events a slow [`Registry::watch`] subscriber may fall behind before it sees `Lagged`.
const EVENT_BUFFER: usize = 1024;

/// One registered actor.
#[derive(Clone)]
pub struct RegistryEntry<V> {
    /// Its key.
    pub key: String,
    /// The actor (this incarnation).
    pub actor: ActorHandle,
    /// Its value (metadata).
    pub value: V,
    /// When it was registered.
    pub registered_at: SystemTime,
}

impl<V> RegistryEntry<V> {
    /// The actor as a typed handle, to send it messages; [`RegistryError::WrongType`] if it does not handle
    /// messages of type `M`.
    pub fn typed<M: Message>(&self) -> Result<TypedActor<M>, RegistryError> {
        self.actor.typed().map_err(|err| match err {
            ActorError::WrongType { expected, .. } => RegistryError::WrongType {
                key: self.key.clone(),
                expected,
            },
            _ => RegistryError::NotFound {
                key: self.key.clone(),
            },
        })
    }
}

impl<V: fmt::Debug> fmt::Debug for RegistryEntry<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryEntry")
            .field("key", &self.key)
            .field("actor", &format_args!("{}", self.actor.id()))
            .field("value", &self.value)
            .finish()
    }
}

/// Why an entry left the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    /// [`Registry::unregister`] was called.
    Unregistered,
    /// Its actor exited.
    ActorExited,
}

/// A change of the registry, as [`Registry::watch`] delivers it.
#[derive(Debug, Clone)]
pub enum RegistryEvent<V> {
    /// A new entry.
    Registered(RegistryEntry<V>),
    /// An entry's value changed; this is the new entry.
    Updated(RegistryEntry<V>),
    /// An entry left.
    Removed(RegistryEntry<V>, RemovalReason),
}

impl fmt::Display for RemovalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RemovalReason::Unregistered => "unregistered",
            RemovalReason::ActorExited => "its actor exited",
        })
    }
}

/// One line for people, without the value (metadata of any type): `registered worker-3 (actor 0.13)`.
impl<V> fmt::Display for RegistryEvent<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryEvent::Registered(e) => write!(f, "registered {} (actor {})", e.key, e.actor.id()),
            RegistryEvent::Updated(e) => write!(f, "updated {} (actor {})", e.key, e.actor.id()),
            RegistryEvent::Removed(e, why) => {
                write!(f, "removed {} (actor {}): {why}", e.key, e.actor.id())
            }
        }
    }
}

/// What went wrong with a registry operation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// The key is held by another actor.
    #[error("key {key:?} is already registered by actor {holder}")]
    Duplicate {
        /// The key.
        key: String,
        /// The actor holding it.
        holder: ActorId,
    },
    /// No entry has this key.
    #[error("no entry with key {key:?}")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The entry's actor does not handle messages of the type asked for.
    #[error("the actor under {key:?} does not handle messages of type {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The message type asked for.
        expected: &'static str,
    },
    /// The actor to register has already exited.
    #[error("actor {actor} registering {key:?} is not alive")]
    NotAlive {
        /// The key.
        key: String,
        /// The actor.
        actor: ActorId,
    },
    /// The watcher actor could not be started.
    #[error("registry {registry:?}: watcher failed to start: {cause}")]
    WatcherStart {
        /// The registry's name.
        registry: String,
        /// Why.
        cause: String,
    },
}

struct Table<V> {
    entries: BTreeMap<String, RegistryEntry<V>>,
    by_actor: HashMap<ActorId, BTreeSet<String>>,
}

struct Shared<V> {
    name: String,
    table: Mutex<Table<V>>,
    events: broadcast::Sender<RegistryEvent<V>>,
    watcher: Mutex<Option<ActorRef<WatcherMsg>>>,
}

/// A cloneable handle to one registry; see the [module docs](self).
pub struct Registry<V> {
    shared: Arc<Shared<V>>,
}

impl<V> Clone for Registry<V> {
    fn clone(&self) -> Self {
        Registry {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<V> fmt::Debug for Registry<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// A mutex poisoned by a panic elsewhere still holds a consistent table: every write below completes before it
/// could panic, so reading through the poison is safe.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn is_gone(actor: &ActorHandle) -> bool {
    !actor.is_running()
}

fn has_exited(cell: &ActorCell) -> bool {
    cell.get_status() == ActorStatus::Stopped
}

impl<V: Clone + Send + Sync + 'static> Registry<V> {
    /// An empty registry. Entries are removed on their actor's exit by its watcher: start it with
    /// [`Registry::child_spec`] under a supervisor, or [`Registry::start`] (reads skip exited actors anyway).
    pub fn new(name: impl Into<String>) -> Self {
        Registry::with_event_buffer(name, EVENT_BUFFER)
    }

    /// Like [`new`](Self::new), letting a [`watch`](Self::watch) subscriber fall `buffer` events behind (default
    /// 1,024) before it sees `Lagged`.
    pub fn with_event_buffer(name: impl Into<String>, buffer: usize) -> Self {
        let (events, _) = broadcast::channel(buffer.max(1));
        Registry {
            shared: Arc::new(Shared {
                name: name.into(),
                table: Mutex::new(Table {
                    entries: BTreeMap::new(),
                    by_actor: HashMap::new(),
                }),
                events,
                watcher: Mutex::new(None),
            }),
        }
    }

    /// The registry's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The watcher as a supervised child (permanent, brutal kill: it holds no state of its own).
    pub fn child_spec(&self, id: impl Into<String>) -> ChildSpec {
        let registry = self.clone();
        ChildSpec::new(id, move |sup| {
            let registry = registry.clone();
            async move {
                let (watcher, _) = Actor::spawn_linked(None, Watcher, registry.erased(), sup).await?;
                Ok(watcher.get_cell())
            }
        })
        .shutdown(Shutdown::BrutalKill)
    }

    /// Whether `other` is a handle to the same registry (not just one of the same name).
    #[cfg(feature = "activator")]
    pub(crate) fn same_as(&self, other: &Registry<V>) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Starts the watcher unsupervised (for tests and small programs).
    pub async fn start(&self) -> Result<(), RegistryError> {
        Actor::spawn(None, Watcher, self.erased())
            .await
            .map(|_| ())
            .map_err(|e| RegistryError::WatcherStart {
                registry: self.shared.name.clone(),
                cause: e.to_string(),
            })
    }

    fn erased(&self) -> Arc<dyn Erased> {
        Arc::clone(&self.shared) as Arc<dyn Erased>
    }

    /// Registers `actor` under `key` with `value`. Fails if the key is taken (naming the holder) or the actor
    /// has already exited. `actor` is any form of one running actor: `&myself` inside a ractor actor, a
    /// supervised child's [`current`](crate::supervisor::ChildRef::current) incarnation, an [`ActorHandle`] or
    /// a [`TypedActor`]. The entry goes when that incarnation exits.
    pub fn register(
        &self,
        key: impl Into<String>,
        actor: impl Into<ActorHandle>,
        value: V,
    ) -> Result<(), RegistryError> {
        let key = key.into();
        let actor: ActorHandle = actor.into();
        if is_gone(&actor) {
            return Err(RegistryError::NotAlive {
                key,
                actor: actor.id(),
            });
        }
        let entry = RegistryEntry {
            key: key.clone(),
            actor: actor.clone(),
            value,
            registered_at: SystemTime::now(),
        };
        {
            let mut table = lock(&self.shared.table);
            if let Some(holder) = table.entries.get(&key) {
                // A holder that has exited but whose exit the watcher has not processed yet holds nothing: a
                // restarted actor re-registering its key must not race its own predecessor's removal.
                if !is_gone(&holder.actor) {
                    return Err(RegistryError::Duplicate {
                        key,
                        holder: holder.actor.id(),
                    });
                }
                let stale = remove_key(&mut table, &key).expect("entry just seen");
                self.shared
                    .publish(RegistryEvent::Removed(stale, RemovalReason::ActorExited));
            }
            table.entries.insert(key.clone(), entry.clone());
            table.by_actor.entry(actor.id()).or_default().insert(key);
            self.shared.publish(RegistryEvent::Registered(entry));
        }
        // After the insert, so that either this watcher, or a new one scanning the table, monitors the actor.
        if let Some(watcher) = lock(&self.shared.watcher).as_ref() {
            let _ = watcher.cast(WatcherMsg::Watch(actor.cell));
        }
        Ok(())
    }

    /// Removes the entry under `key`, if any.
    pub fn unregister(&self, key: &str) -> Option<RegistryEntry<V>> {
        let mut table = lock(&self.shared.table);
        let entry = remove_key(&mut table, key)?;
        if !table.by_actor.contains_key(&entry.actor.id()) {
            if let Some(watcher) = lock(&self.shared.watcher).as_ref() {
                let _ = watcher.cast(WatcherMsg::Unwatch(entry.actor.cell.clone()));
            }
        }
        self.shared
            .publish(RegistryEvent::Removed(entry.clone(), RemovalReason::Unregistered));
        Some(entry)
    }

    /// Changes the value under `key` in place.
    pub fn update(&self, key: &str, change: impl FnOnce(&mut V)) -> Result<(), RegistryError> {
        let mut table = lock(&self.shared.table);
        let not_found = || RegistryError::NotFound { key: key.into() };
        let entry = table.entries.get_mut(key).ok_or_else(not_found)?;
        if entry.actor.has_exited() {
            let actor = entry.actor.id();
            self.shared.remove_actor_locked(&mut table, actor);
            return Err(not_found());
        }
        change(&mut entry.value);
        let entry = entry.clone();
        self.shared.publish(RegistryEvent::Updated(entry));
        Ok(())
    }

    /// The table, without the entries of actors that have exited (removed now, with their events).
    fn live_table(&self) -> MutexGuard<'_, Table<V>> {
        let mut table = lock(&self.shared.table);
        let exited: Vec<ActorId> = table
            .by_actor
            .keys()
            .filter(|actor| {
                let keys = &table.by_actor[*actor];
                keys.first()
                    .and_then(|k| table.entries.get(k))
                    .is_some_and(|e| e.actor.has_exited())
            })
            .cloned()
            .collect();
        for actor in exited {
            self.shared.remove_actor_locked(&mut table, actor);
        }
        table
    }

    /// The entry under `key` (never one whose actor has exited).
    pub fn lookup(&self, key: &str) -> Option<RegistryEntry<V>> {
        let mut table = lock(&self.shared.table);
        let entry = table.entries.get(key)?;
        if entry.actor.has_exited() {
            let actor = entry.actor.id();
            self.shared.remove_actor_locked(&mut table, actor);
            return None;
        }
        Some(entry.clone())
    }

    /// The actor under `key` as a typed handle, to send it messages: [`RegistryError::NotFound`] without an
    /// entry, [`RegistryError::WrongType`] if its actor does not handle messages of type `M`. Its
    /// [`ractor_ref`](TypedActor::ractor_ref) is the ractor form.
    pub fn lookup_typed<M: Message>(&self, key: &str) -> Result<TypedActor<M>, RegistryError> {
        self.lookup(key)
            .ok_or_else(|| RegistryError::NotFound { key: key.into() })?
            .typed()
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn select_prefix(&self, prefix: &str) -> Vec<RegistryEntry<V>> {
        let table = self.live_table();
        table
            .entries
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, entry)| entry.clone())
            .collect()
    }

    /// Every entry `keep` accepts, in key order.
    pub fn select(&self, mut keep: impl FnMut(&RegistryEntry<V>) -> bool) -> Vec<RegistryEntry<V>> {
        let table = self.live_table();
        table.entries.values().filter(|e| keep(e)).cloned().collect()
    }

    /// Every entry, in key order.
    pub fn list(&self) -> Vec<RegistryEntry<V>> {
        self.select(|_| true)
    }

    /// The keys `actor` is registered under.
    pub fn keys_of(&self, actor: &ActorId) -> Vec<String> {
        let table = lock(&self.shared.table);
        table
            .by_actor
            .get(actor)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many entries there are (of actors that have not exited).
    pub fn len(&self) -> usize {
        self.live_table().entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A stream of every change from now on. A subscriber more than the event buffer behind gets
    /// `RecvError::Lagged` and should start over with [`watch_with_snapshot`](Self::watch_with_snapshot).
    pub fn watch(&self) -> broadcast::Receiver<RegistryEvent<V>> {
        self.shared.events.subscribe()
    }

    /// Every entry, and a stream of every change after exactly that state, taken atomically: applying the
    /// events in order to the entries always gives the table.
    pub fn watch_with_snapshot(&self) -> (Vec<RegistryEntry<V>>, broadcast::Receiver<RegistryEvent<V>>) {
        let table = self.live_table();
        let rx = self.shared.events.subscribe();
        (table.entries.values().cloned().collect(), rx)
    }
}

impl<V: Clone> Shared<V> {
    /// Sends an event; called with the table locked, so events leave in the order of the table's changes.
    fn publish(&self, event: RegistryEvent<V>) {
        let _ = self.events.send(event);
    }

    fn remove_actor_locked(&self, table: &mut Table<V>, actor: ActorId) {
        let keys = table.by_actor.remove(&actor).unwrap_or_default();
        for key in keys {
            if let Some(entry) = table.entries.remove(&key) {
                debug!(registry = %self.name, %key, %actor, "entry removed: actor exited");
                self.publish(RegistryEvent::Removed(entry, RemovalReason::ActorExited));
            }
        }
    }
}

fn remove_key<V>(table: &mut Table<V>, key: &str) -> Option<RegistryEntry<V>> {
    let entry = table.entries.remove(key)?;
    let actor = entry.actor.id();
    if let Some(keys) = table.by_actor.get_mut(&actor) {
        keys.remove(key);
        if keys.is_empty() {
            table.by_actor.remove(&actor);
        }
    }
    Some(entry)
}

/// What the watcher needs of a registry, without its value type (so one watcher actor type serves them all).
trait Erased: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn set_watcher(&self, watcher: Option<ActorRef<WatcherMsg>>, only_if: Option<ActorId>);
    fn actors(&self) -> Vec<ActorCell>;
    fn remove_actor(&self, actor: ActorId);
}

impl<V: Clone + Send + Sync + 'static> Erased for Shared<V> {
    fn name(&self) -> &str {
        &self.name
    }

    fn set_watcher(&self, watcher: Option<ActorRef<WatcherMsg>>, only_if: Option<ActorId>) {
        let mut current = lock(&self.watcher);
        let matches = match (&*current, only_if) {
            (_, None) => true,
            (Some(w), Some(id)) => w.get_id() == id,
            (None, Some(_)) => false,
        };
        if matches {
            *current = watcher;
        }
    }

    fn actors(&self) -> Vec<ActorCell> {
        let table = lock(&self.table);
        let mut seen = BTreeSet::new();
        table
            .entries
            .values()
            .filter(|e| seen.insert(e.actor.id()))
            .map(|e| e.actor.cell.clone())
            .collect()
    }

    fn remove_actor(&self, actor: ActorId) {
        let mut table = lock(&self.table);
        self.remove_actor_locked(&mut table, actor);
    }
}

enum WatcherMsg {
    Watch(ActorCell),
    Unwatch(ActorCell),
}

/// Monitors registered actors and removes their entries when they exit.
struct Watcher;

fn watch(myself: &ActorRef<WatcherMsg>, registry: &dyn Erased, actor: ActorCell) {
    myself.get_cell().monitor(actor.clone());
    // Monitoring an actor that has already exited yields no event; one that is still stopping (in its
    // `post_stop`) sends its exit event later, and keeps its entries until then.
    if has_exited(&actor) {
        registry.remove_actor(actor.get_id());
    }
}

impl Actor for Watcher {
    type Msg = WatcherMsg;
    type State = Arc<dyn Erased>;
    type Arguments = Arc<dyn Erased>;

    async fn pre_start(
        &self,
        myself: ActorRef<WatcherMsg>,
        registry: Arc<dyn Erased>,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Publish first, then scan: an entry inserted concurrently is either seen here or sent to this watcher.
        registry.set_watcher(Some(myself.clone()), None);
        for actor in registry.actors() {
            watch(&myself, registry.as_ref(), actor);
        }
        debug!(registry = registry.name(), "registry watcher started");
        Ok(registry)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<WatcherMsg>,
        registry: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        registry.set_watcher(None, Some(myself.get_id()));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WatcherMsg>,
        msg: WatcherMsg,
        registry: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WatcherMsg::Watch(actor) => watch(&myself, registry.as_ref(), actor),
            WatcherMsg::Unwatch(actor) => myself.get_cell().unmonitor(actor),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<WatcherMsg>,
        event: SupervisionEvent,
        registry: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, ..) | SupervisionEvent::ActorFailed(cell, _) => {
                registry.remove_actor(cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}
