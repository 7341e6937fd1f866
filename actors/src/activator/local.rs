//! In-process backend: the registry is the mutex (as Stoker uses `:global` names).
//!
//! The activator whose *claim* registers `activator/<name>` is the leader. The claim is a tiny actor linked to
//! its activator as a child, started when the activator joins: it is stopped after the activator resigned
//! (graceful stop: after its `Shutdown` callback returned) and killed with it (crash, kill), never earlier.
//! Registering the activator itself would not do: the registry treats an actor that is *stopping* as holding
//! nothing (its key may be taken over, its entries dropped), and a leader stopping gracefully is still running
//! its `Shutdown` callback, still the leader. The claim stays running until leadership really ends.
//!
//! The others monitor the claim (ractor monitors) and try to register again when it exits; a watch on the
//! registry covers the cases a monitor cannot see (the entry outliving its actor for a moment, a graceful
//! resign that unregisters before the claim stops).
//!
//! A free key goes to the candidates in the order they joined (first come, first served, as etcd's election
//! orders them by create revision): a candidate registers only when no candidate of the same election that
//! joined before it is still waiting. So when a leader goes and its supervisor restarts it at once, the
//! follower that was already waiting takes over and the restarted activator, a new candidate, queues behind
//! it, rather than the two racing for the key (which the restart, already under way, usually won).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::SystemTime;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, ActorStatus, SupervisionEvent};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::backend::{Backend, BackendError, BackendEvent, BoxFuture, Campaign, Candidacy};
use super::callbacks::{ClusterChange, Role};
use super::handle::{ActivatorHandle, ActivatorInfo};
use super::{leader_key, member_prefix};
use crate::registry::{Registry, RegistryError, RegistryEvent};

/// Process-wide, so tokens increase across leaders of a name even when several `LocalBackend`s share one
/// registry. Starts at 1: 0 never fences anything.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Every candidate of the process, in the order they joined (see the module docs). Entries of candidates
/// that left are pruned when someone leaves.
static LINE: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

fn line() -> MutexGuard<'static, Vec<Weak<Shared>>> {
    // Pushes and retains only: a panic elsewhere cannot leave the list half-changed.
    LINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// How often `try_acquire` re-reads the registry when the holder it found died in between. Past that, the
/// registry's `Removed` event for the stale entry triggers the next attempt.
const ACQUIRE_ATTEMPTS: usize = 4;

/// Leadership among the activators of one process, through a [`Registry`].
#[derive(Clone)]
pub struct LocalBackend {
    registry: Registry<ActivatorInfo>,
    node_id: String,
}

impl LocalBackend {
    /// A backend electing through `registry`; the node id is `local-<pid>`.
    pub fn new(registry: Registry<ActivatorInfo>) -> Self {
        Self {
            registry,
            node_id: format!("local-{}", std::process::id()),
        }
    }

    /// Sets the node id reported in `dump()` and leader identities.
    pub fn with_node_id(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = node_id.into();
        self
    }

    /// The registry used as the mutex.
    pub fn registry(&self) -> &Registry<ActivatorInfo> {
        &self.registry
    }

    /// The leader of `name`, if one holds the claim (`activator/<name>` in the registry holds its claim actor,
    /// whose parent is the activator).
    pub fn leader(&self, name: &str) -> Option<ActivatorHandle> {
        let entry = self.registry.lookup(&leader_key(name))?;
        ActivatorHandle::from_cell(name, entry.actor.cell.try_get_supervisor()?)
    }
}

/// Holds the leader key for its activator; see the module docs.
struct Claim;

impl Actor for Claim {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn publish_registry(&self) -> Option<Registry<ActivatorInfo>> {
        Some(self.registry.clone())
    }

    fn join(&self, campaign: Campaign) -> BoxFuture<'static, Result<Box<dyn Candidacy>, BackendError>> {
        let registry = self.registry.clone();
        let node_id = self.node_id.clone();
        Box::pin(async move {
            let key = leader_key(&campaign.name);
            let (claim, _) = Actor::spawn_linked(None, Claim, (), campaign.actor.clone())
                .await
                .map_err(|e| BackendError::Registry {
                    key: key.clone(),
                    reason: format!("could not start the claim actor: {e}"),
                })?;
            let shared = Arc::new(Shared {
                key,
                members: member_prefix(&campaign.name),
                registry,
                node_id,
                campaign,
                claim: claim.get_cell(),
                waiting: AtomicBool::new(true),
                state: Mutex::new(LocalState::default()),
            });
            line().push(Arc::downgrade(&shared));
            // Subscribe before the first attempt so no `Removed` between the attempt and the subscription
            // can be missed.
            let rx = shared.registry.watch();
            let watcher = tokio::spawn(watch_registry(shared.clone(), rx));
            shared.try_acquire();
            Ok(Box::new(LocalCandidacy { shared, watcher }) as Box<dyn Candidacy>)
        })
    }
}

#[derive(Default)]
struct LocalState {
    leader: bool,
    resigned: bool,
    monitored: Option<ActorCell>,
}

struct Shared {
    registry: Registry<ActivatorInfo>,
    key: String,
    members: String,
    node_id: String,
    campaign: Campaign,
    /// Holds the leader key while this candidate leads.
    claim: ActorCell,
    /// Whether it waits for the key: from its join until it leads or leaves. Read by other candidates
    /// without taking `state` (see [`Shared::someone_ahead`]).
    waiting: AtomicBool,
    state: Mutex<LocalState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, LocalState> {
        // A panic while holding this lock cannot leave the state half-updated in a way that matters: every
        // field is re-derived from the registry on the next attempt.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn me(&self) -> &ActorCell {
        &self.campaign.actor
    }

    /// Whether this candidate still waits for the key, as the others see it.
    fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire)
            && !matches!(
                self.me().get_status(),
                ActorStatus::Draining | ActorStatus::Stopping | ActorStatus::Stopped
            )
    }

    fn same_election(&self, other: &Shared) -> bool {
        other.key == self.key && other.registry.same_as(&self.registry)
    }

    /// Whether a candidate of the same election joined before this one and still waits: the free key is its.
    fn someone_ahead(&self) -> bool {
        for other in line().iter().filter_map(Weak::upgrade) {
            if std::ptr::eq(&*other, self) {
                return false;
            }
            if self.same_election(&other) && other.is_waiting() {
                return true;
            }
        }
        false
    }

    /// Tells the other waiting candidates of this election to look again: the key was just taken (they
    /// follow its holder) or a candidate ahead of them left (the key may be theirs now).
    fn wake_the_line(&self) {
        let others: Vec<Arc<Shared>> = line()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|other| !std::ptr::eq(&**other, self) && self.same_election(other) && other.is_waiting())
            .collect();
        for other in others {
            other.try_acquire();
        }
    }

    /// Leaves the line of candidates for good.
    fn leave_the_line(&self) {
        self.waiting.store(false, Ordering::Release);
        line().retain(|entry| entry.upgrade().is_some_and(|other| !std::ptr::eq(&*other, self)));
        self.wake_the_line();
    }

    /// Registers the leader key or, failing that, follows its holder; then, once it leads, tells the others
    /// to follow it.
    fn try_acquire(&self) {
        if self.try_acquire_locked() {
            self.wake_the_line();
        }
    }

    /// Registers the leader key or, failing that, monitors its holder; `true` when it was elected. Events are
    /// sent while the lock is held so that the activator sees them in the order the decisions were taken.
    fn try_acquire_locked(&self) -> bool {
        let mut st = self.lock();
        if st.leader || st.resigned {
            return false;
        }
        for _ in 0..ACQUIRE_ATTEMPTS {
            if let Some(holder) = self.registry.lookup(&self.key) {
                if holder.actor.id() == self.claim.get_id() {
                    // Cannot happen through this type (`leader` would be set); refuse to report
                    // leadership twice rather than guess.
                    return false;
                }
                match holder.actor.cell.get_status() {
                    // Dead for good: `register` below replaces the stale entry.
                    ActorStatus::Stopped => {}
                    // A claim stops only after its activator resigned or died. Its resignation (`Removed`)
                    // or its exit (monitor) calls us again.
                    _ => {
                        self.follow(&mut st, &holder.actor.cell);
                        // A monitor set on an actor that has already exited never fires: look again.
                        if holder.actor.cell.get_status() == ActorStatus::Stopped {
                            continue;
                        }
                        // A leader that is stopping (running its `Shutdown` callback) still leads, but is on
                        // its way out: name no leader.
                        let activator = holder.actor.cell.try_get_supervisor();
                        let stepping_down = activator.is_none_or(|a| {
                            matches!(a.get_status(), ActorStatus::Stopping | ActorStatus::Stopped)
                        });
                        let leader = (!stepping_down).then(|| holder.value.identity.clone());
                        self.campaign.events.send(BackendEvent::Following { leader });
                        return false;
                    }
                }
            }
            if self.someone_ahead() {
                // The key is free, but not ours yet: the first in line takes it and then wakes us.
                self.campaign
                    .events
                    .send(BackendEvent::Following { leader: None });
                return false;
            }
            let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
            let now = SystemTime::now();
            let info = ActivatorInfo {
                name: self.campaign.name.clone(),
                role: Role::Leader,
                node_id: self.node_id.clone(),
                identity: self.campaign.identity.clone(),
                backend: "local".to_string(),
                created_at: now,
                active_from: Some(now),
                leader: Some(self.campaign.identity.clone()),
                fencing_token: Some(token),
                next_timer_at: None,
                backend_error: None,
            };
            match self.registry.register(self.key.clone(), self.claim.clone(), info) {
                Ok(()) => {
                    st.leader = true;
                    self.waiting.store(false, Ordering::Release);
                    if let Some(old) = st.monitored.take() {
                        self.me().unmonitor(old);
                    }
                    tracing::debug!(key = %self.key, token, "registered leader key");
                    self.campaign
                        .events
                        .send(BackendEvent::Elected { fencing_token: token });
                    return true;
                }
                // Someone registered between the lookup and now: look again.
                Err(RegistryError::Duplicate { .. }) => continue,
                Err(err) => {
                    // `NotAlive`: this activator itself is stopping; nothing to campaign for.
                    tracing::debug!(key = %self.key, %err, "not campaigning");
                    return false;
                }
            }
        }
        // Still contended after several attempts; the next `Removed` or monitor event calls us again.
        self.campaign
            .events
            .send(BackendEvent::Following { leader: None });
        false
    }

    /// Monitors `holder` (once) so that its exit triggers the next attempt.
    fn follow(&self, st: &mut LocalState, holder: &ActorCell) {
        if st
            .monitored
            .as_ref()
            .is_some_and(|m| m.get_id() == holder.get_id())
        {
            return;
        }
        if let Some(old) = st.monitored.take() {
            self.me().unmonitor(old);
        }
        self.me().monitor(holder.clone());
        st.monitored = Some(holder.clone());
    }

    fn on_down(&self, who: &ActorCell) {
        let ours = {
            let mut st = self.lock();
            let ours = st.monitored.as_ref().is_some_and(|m| m.get_id() == who.get_id());
            if ours {
                st.monitored = None;
            }
            ours
        };
        if ours {
            tracing::debug!(leader = %who.get_id(), "leader actor down, campaigning");
            self.try_acquire();
        }
    }

    fn resign(&self) {
        self.resign_locked();
        self.leave_the_line();
    }

    fn resign_locked(&self) {
        let mut st = self.lock();
        st.resigned = true;
        if let Some(old) = st.monitored.take() {
            self.me().unmonitor(old);
        }
        if st.leader {
            st.leader = false;
            // Only remove the entry if it is still ours: never someone else's claim.
            if self
                .registry
                .lookup(&self.key)
                .is_some_and(|e| e.actor.id() == self.claim.get_id())
            {
                self.registry.unregister(&self.key);
                tracing::info!(key = %self.key, "resigned leadership");
            }
        }
        self.claim.stop(Some("resigned".into()));
    }
}

async fn watch_registry(
    shared: Arc<Shared>,
    mut rx: tokio::sync::broadcast::Receiver<RegistryEvent<ActivatorInfo>>,
) {
    loop {
        match rx.recv().await {
            Ok(RegistryEvent::Removed(entry, _)) if entry.key == shared.key => shared.try_acquire(),
            Ok(RegistryEvent::Registered(entry)) => {
                if let Some(node) = entry.key.strip_prefix(&shared.members) {
                    shared
                        .campaign
                        .events
                        .send(BackendEvent::Cluster(ClusterChange::NodeUp(node.to_string())));
                }
            }
            Ok(RegistryEvent::Removed(entry, _)) => {
                if let Some(node) = entry.key.strip_prefix(&shared.members) {
                    shared
                        .campaign
                        .events
                        .send(BackendEvent::Cluster(ClusterChange::NodeDown(node.to_string())));
                }
            }
            Ok(_) => {}
            // Missed events may include the leader's removal: check the registry itself.
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "registry watch lagged");
                shared.try_acquire();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

struct LocalCandidacy {
    shared: Arc<Shared>,
    watcher: JoinHandle<()>,
}

impl Candidacy for LocalCandidacy {
    fn supervision_event(&mut self, event: &SupervisionEvent) {
        match event {
            SupervisionEvent::ActorTerminated(who, _, _) | SupervisionEvent::ActorFailed(who, _) => {
                self.shared.on_down(who)
            }
            _ => {}
        }
    }

    fn resign(&mut self) -> BoxFuture<'static, ()> {
        self.watcher.abort();
        self.shared.resign();
        Box::pin(async {})
    }
}

impl Drop for LocalCandidacy {
    fn drop(&mut self) {
        self.watcher.abort();
        // Abandoned without resigning (the activator crashed): the claim goes, the key with it. ractor would
        // kill the linked claim when the activator exits; this also covers a candidacy dropped earlier.
        self.shared.claim.stop(Some("abandoned".into()));
        self.shared.leave_the_line();
    }
}
