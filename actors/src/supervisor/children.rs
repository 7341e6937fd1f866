//! The children of one supervisor, in start order, with the two indexes its operations need.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ractor::{ActorCell, ActorId};
use serde::{Deserialize, Serialize};

use super::intensity::RestartIntensity;
use super::slot::ChildSlot;
use super::spec::{ChildKind, ChildSpec, Restart, RestartBackoff, Shutdown};

/// Where a child is in its life, as `which_children` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildStatus {
    /// Started and not known to have exited.
    Running,
    /// Exited and waiting to be started again (a backoff delay, or a retry after a failed restart).
    Restarting,
    /// Not running; the spec is kept so `restart_child` can start it again.
    Terminated,
}

/// One child as `which_children` reports it.
#[derive(Debug, Clone)]
pub struct ChildInfo {
    /// The child's id among its siblings.
    pub id: String,
    /// The running actor, if any.
    pub cell: Option<ActorCell>,
    /// Where the child is in its life.
    pub status: ChildStatus,
    /// Its restart type.
    pub restart: Restart,
    /// Worker or supervisor.
    pub kind: ChildKind,
    /// How it is stopped.
    pub shutdown: Shutdown,
    /// Whether it is significant for `auto_shutdown`.
    pub significant: bool,
    /// Its restart backoff, if it has one.
    pub backoff: Option<RestartBackoff>,
    /// How often it has been restarted by this supervisor.
    pub restart_count: u32,
    /// When the running incarnation started.
    pub started_at: Option<SystemTime>,
    /// Why its last incarnation exited (`None` if it never did): a panic message, `"killed"`, or the cause a
    /// child supervisor gave up with.
    pub last_exit: Option<String>,
}

impl ChildInfo {
    /// The running actor's id, if any.
    pub fn actor_id(&self) -> Option<ActorId> {
        self.cell.as_ref().map(ActorCell::get_id)
    }
}

/// What `count_children` reports (OTP's `count_children`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildCounts {
    /// Every child spec the supervisor keeps.
    pub specs: usize,
    /// Children that are running.
    pub active: usize,
    /// Children that are supervisors.
    pub supervisors: usize,
    /// Children that are workers.
    pub workers: usize,
}

#[derive(Debug)]
pub(crate) enum ChildState {
    Running(ActorCell),
    Restarting { due: Instant },
    Terminated,
}

/// One child. Kept small: a dynamic supervisor holds 100k of them.
pub(crate) struct Child {
    pub(crate) spec: ChildSpec,
    pub(crate) state: ChildState,
    /// What this child's handles resolve; kept true by [`Children::set_state`].
    pub(crate) slot: Arc<ChildSlot>,
    pub(crate) restart_count: u32,
    /// How many backoff steps the next restart waits (reset after a stable period).
    pub(crate) backoff_step: u32,
    pub(crate) started_at: Option<Instant>,
    pub(crate) last_exit: Option<Cow<'static, str>>,
    /// Its own restart intensity, under [`IntensityScope::PerChild`](super::IntensityScope::PerChild); made at
    /// its first restart, so children that never restart cost a pointer.
    pub(crate) intensity: Option<Box<RestartIntensity>>,
}

impl Child {
    /// A child whose first incarnation runs as `cell`.
    pub(crate) fn new(spec: ChildSpec, cell: ActorCell, slot: Arc<ChildSlot>) -> Self {
        slot.set_running(cell.clone());
        Child {
            spec,
            state: ChildState::Running(cell),
            slot,
            restart_count: 0,
            backoff_step: 0,
            started_at: Some(Instant::now()),
            last_exit: None,
            intensity: None,
        }
    }

    pub(crate) fn is_alive(&self) -> bool {
        !matches!(self.state, ChildState::Terminated)
    }
}

/// FxHash (rustc's hasher): the indexes are keyed by actor ids and child ids, which come from the program, not
/// from outside, so SipHash's flooding resistance buys nothing here and costs on every exit and restart.
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, byte: u8) {
        self.write_u64(u64::from(byte));
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The id a child is shown under, without building a string: the spec's id, with `#order` for a dynamic
/// supervisor's children.
#[derive(Clone)]
pub(crate) struct ShownId {
    id: Arc<str>,
    order: Option<u64>,
}

impl fmt::Display for ShownId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.order {
            Some(order) => write!(f, "{}#{order}", self.id),
            None => f.write_str(&self.id),
        }
    }
}

/// Children keyed by start order (a sequence number that a restart keeps), plus the indexes the operations
/// need, so that an exit, a lookup, a removal and a restart are O(log n) even with 100k children.
///
/// A static supervisor's children are named by their spec's id (unique, indexed); a dynamic supervisor's by
/// their actor, and shown as `id#order`.
#[derive(Default)]
pub(crate) struct Children {
    dynamic: bool,
    /// Boxed: a B-tree fills its nodes by about half when keys only grow (a dynamic supervisor's), and a
    /// node of boxes wastes pointers where a node of children would waste whole children.
    by_order: BTreeMap<u64, Box<Child>>,
    by_id: FxMap<Arc<str>, u64>,
    by_actor: FxMap<ActorId, u64>,
    restarting: BTreeSet<u64>,
    next_order: u64,
}

impl Children {
    pub(crate) fn new(dynamic: bool) -> Self {
        Children {
            dynamic,
            ..Children::default()
        }
    }

    pub(crate) fn order_of_id(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    pub(crate) fn order_of_actor(&self, actor: &ActorId) -> Option<u64> {
        self.by_actor.get(actor).copied()
    }

    /// The id the child is shown under.
    pub(crate) fn id_of(&self, order: u64) -> ShownId {
        ShownId {
            id: self
                .by_order
                .get(&order)
                .map_or_else(|| Arc::from(""), |child| Arc::clone(&child.spec.id)),
            order: self.dynamic.then_some(order),
        }
    }

    fn shown_id(&self, order: u64, child: &Child) -> String {
        if self.dynamic {
            format!("{}#{order}", child.spec.id)
        } else {
            child.spec.id.to_string()
        }
    }

    /// Every child as `which_children` reports it, in start order.
    pub(crate) fn infos(&self) -> Vec<ChildInfo> {
        let now = SystemTime::now();
        self.by_order
            .iter()
            .map(|(&order, child)| {
                let (cell, status) = match &child.state {
                    ChildState::Running(cell) => (Some(cell.clone()), ChildStatus::Running),
                    ChildState::Restarting { .. } => (None, ChildStatus::Restarting),
                    ChildState::Terminated => (None, ChildStatus::Terminated),
                };
                ChildInfo {
                    id: self.shown_id(order, child),
                    cell,
                    status,
                    restart: child.spec.restart,
                    kind: child.spec.kind,
                    shutdown: child.spec.shutdown,
                    significant: child.spec.significant,
                    backoff: child.spec.backoff.as_deref().copied(),
                    restart_count: child.restart_count,
                    started_at: child.started_at.map(|at| now - at.elapsed()),
                    last_exit: child.last_exit.as_deref().map(str::to_string),
                }
            })
            .collect()
    }

    /// Appends a child after all others.
    pub(crate) fn push(&mut self, child: Child) -> u64 {
        let order = self.next_order;
        self.push_at(order, child);
        order
    }

    /// Inserts a child at a start order handed out elsewhere (a dynamic supervisor's, see `dynamic.rs`).
    pub(crate) fn push_at(&mut self, order: u64, child: Child) {
        self.next_order = self.next_order.max(order + 1);
        if !self.dynamic {
            self.by_id.insert(Arc::clone(&child.spec.id), order);
        }
        if let ChildState::Running(cell) = &child.state {
            self.by_actor.insert(cell.get_id(), order);
        }
        self.by_order.insert(order, Box::new(child));
    }

    pub(crate) fn get(&self, order: u64) -> Option<&Child> {
        self.by_order.get(&order).map(|child| &**child)
    }

    pub(crate) fn get_mut(&mut self, order: u64) -> Option<&mut Child> {
        self.by_order.get_mut(&order).map(|child| &mut **child)
    }

    /// A new incarnation of child `order` runs as `cell`; its start began at `started_at` (a restart reads the
    /// clock once, when it decides).
    pub(crate) fn set_running(&mut self, order: u64, cell: ActorCell, started_at: Instant) {
        self.set_state(order, ChildState::Running(cell));
        if let Some(child) = self.by_order.get_mut(&order) {
            child.started_at = Some(started_at);
        }
    }

    /// Moves a child to a new state, keeping the indexes true; returns the cell it was running as. A new
    /// incarnation goes through [`set_running`](Self::set_running), which says when it started.
    pub(crate) fn set_state(&mut self, order: u64, state: ChildState) -> Option<ActorCell> {
        let child = self.by_order.get_mut(&order)?;
        match &state {
            ChildState::Running(cell) => {
                self.by_actor.insert(cell.get_id(), order);
                child.slot.set_running(cell.clone());
            }
            ChildState::Restarting { .. } => {
                self.restarting.insert(order);
                child.slot.set_down();
            }
            ChildState::Terminated => child.slot.set_down(),
        }
        let old = std::mem::replace(&mut child.state, state);
        match old {
            ChildState::Running(cell) => {
                self.by_actor.remove(&cell.get_id());
                Some(cell)
            }
            ChildState::Restarting { .. } => {
                if !matches!(child.state, ChildState::Restarting { .. }) {
                    self.restarting.remove(&order);
                }
                None
            }
            ChildState::Terminated => None,
        }
    }

    pub(crate) fn remove(&mut self, order: u64) -> Option<Child> {
        let child = self.by_order.remove(&order)?;
        child.slot.set_removed();
        if !self.dynamic {
            self.by_id.remove(&child.spec.id);
        }
        self.restarting.remove(&order);
        if let ChildState::Running(cell) = &child.state {
            self.by_actor.remove(&cell.get_id());
        }
        Some(*child)
    }

    /// Start order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &Child)> {
        self.by_order.iter().map(|(order, child)| (*order, &**child))
    }

    /// The first child waiting for a restart from start order `from` on, with when it is due.
    pub(crate) fn restarting_from(&self, from: u64) -> Option<(u64, Instant)> {
        self.restarting
            .range(from..)
            .find_map(|order| match self.by_order.get(order)?.state {
                ChildState::Restarting { due } => Some((*order, due)),
                _ => None,
            })
    }

    /// The children waiting for a restart, in start order, with when each is due.
    pub(crate) fn restarting(&self) -> Vec<(u64, Instant)> {
        self.restarting
            .iter()
            .filter_map(|order| match self.by_order.get(order)?.state {
                ChildState::Restarting { due } => Some((*order, due)),
                _ => None,
            })
            .collect()
    }

    /// Start orders of every child from `from` on, in reverse start order.
    pub(crate) fn orders_from_reversed(&self, from: u64) -> Vec<u64> {
        self.by_order
            .range(from..)
            .rev()
            .map(|(order, _)| *order)
            .collect()
    }

    /// Start orders of the running children from `from` on, in reverse start order (the order to stop them).
    pub(crate) fn running_from_reversed(&self, from: u64) -> Vec<u64> {
        self.by_order
            .range(from..)
            .rev()
            .filter(|(_, child)| matches!(child.state, ChildState::Running(_)))
            .map(|(order, _)| *order)
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_order.len()
    }

    pub(crate) fn counts(&self) -> ChildCounts {
        let mut counts = ChildCounts {
            specs: self.by_order.len(),
            ..ChildCounts::default()
        };
        for child in self.by_order.values() {
            if matches!(child.state, ChildState::Running(_)) {
                counts.active += 1;
            }
            match child.spec.kind {
                ChildKind::Worker => counts.workers += 1,
                ChildKind::Supervisor | ChildKind::DynamicSupervisor => counts.supervisors += 1,
            }
        }
        counts
    }
}
