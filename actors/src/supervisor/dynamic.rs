//! Starting a dynamic supervisor's children on the caller's task, and handing them over.
//!
//! OTP's `start_child` is a call: the supervisor spawns the child itself, so every start costs a round trip
//! and a slow child `init` stalls the supervisor. A dynamic supervisor's children have no order to respect and
//! no ids to check, so here the caller spawns the child linked to the supervisor and hands it over with a
//! cast (`Adopt`). What the call made atomic is kept by state shared with the supervisor ([`DynamicShared`]):
//!
//! - `reserved` (children plus starts under way) enforces `max_children` before anything is spawned;
//! - a start is *in flight* from its reservation until it is handed over or undone; a child is *pending*
//!   from its hand-over until the supervisor has adopted it. The supervisor adopts every pending child before
//!   it handles any message or exit event, so every request (`terminate_child`, `which_children`, a snapshot,
//!   a count) and every exit sees the children whose start returned. It is woken to adopt (an `Adopt` cast)
//!   at the first pending child when it publishes events (its `Started` events follow the starts), and
//!   otherwise once `ADOPT_BATCH` (64) children are pending: a burst of starts does not wake it once per start.
//!   While a start is in flight or pending, an exit from an actor the supervisor does not know yet may be such
//!   a child (exit events overtake ordinary messages), so the supervisor holds that exit until the adoption
//!   instead of ignoring it;
//! - `closed` is set, under the same lock, when the supervisor starts shutting down. From then on no start
//!   is acknowledged: a start that spawned its child after that stops the child itself before it returns an
//!   error. The supervisor's `post_stop` waits until no start is in flight, then stops the pending children
//!   with the adopted ones. So every child whose `start_child` returned `Ok` is stopped gracefully, however
//!   soon the stop follows, and none is alive when the shutdown returns (as with OTP, where `start_child` and
//!   the shutdown are both calls into the supervisor, one after the other).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ractor::{ActorCell, ActorRef, ActorStatus};
use tokio::sync::Notify;

use super::actor::SupervisorMsg;
use super::error::SupervisorError;
use super::lifecycle::{start_one, terminate_cell};
use super::slot::{ChildHandle, ChildSlot};
use super::spec::ChildSpec;

/// A child handed over by a caller and not adopted yet.
pub(crate) struct Pending {
    pub(crate) order: u64,
    pub(crate) spec: ChildSpec,
    pub(crate) cell: ActorCell,
    pub(crate) slot: Arc<ChildSlot>,
    /// When its start completed (its uptime counts from here, not from its adoption).
    pub(crate) started_at: Instant,
}

/// How many children may wait for adoption before a supervisor nobody listens to is told to adopt them: one
/// wake-up of the supervisor per this many starts in a burst, and a bound on the records waiting.
const ADOPT_BATCH: usize = 64;

#[derive(Default)]
struct Handover {
    closed: bool,
    in_flight: usize,
    /// Adopted in batches: the supervisor takes them all before its next message or exit event.
    pending: Vec<Pending>,
}

pub(crate) struct DynamicShared {
    pub(crate) max_children: Option<usize>,
    /// Whether the supervisor publishes events: then it is told of every start at once, so that its `Started`
    /// events follow the starts; otherwise it adopts at its next message or exit event (see the module docs).
    announce: bool,
    reserved: AtomicUsize,
    next_order: AtomicU64,
    handover: Mutex<Handover>,
    /// Signalled when the last in-flight start of a closed supervisor is done.
    settled: Notify,
}

impl std::fmt::Debug for DynamicShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicShared")
            .field("max_children", &self.max_children)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

impl DynamicShared {
    pub(crate) fn new(max_children: Option<usize>, announce: bool) -> Self {
        DynamicShared {
            max_children,
            announce,
            reserved: AtomicUsize::new(0),
            next_order: AtomicU64::new(0),
            handover: Mutex::new(Handover::default()),
            settled: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Handover> {
        // Every critical section below finishes its writes before anything that could panic.
        self.handover.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reserve(&self) -> Result<(), SupervisorError> {
        let max = self.max_children.unwrap_or(usize::MAX);
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| SupervisorError::MaxChildren { max_children: max })
    }

    /// A child left the supervisor for good.
    pub(crate) fn release(&self) {
        self.reserved.fetch_sub(1, Ordering::AcqRel);
    }

    /// Begins a start: refused once the supervisor is closing, or when it is full.
    fn begin(&self) -> Result<(), SupervisorError> {
        let mut handover = self.lock();
        if handover.closed {
            return Err(SupervisorError::ShuttingDown);
        }
        self.reserve()?;
        handover.in_flight += 1;
        Ok(())
    }

    /// Ends an in-flight start that will not be handed over (failed, refused, or dropped).
    fn abandon(&self) {
        self.release();
        let mut handover = self.lock();
        handover.in_flight -= 1;
        if handover.closed && handover.in_flight == 0 {
            self.settled.notify_one();
        }
    }

    /// Hands a started child over; `Err` gives the pending record back when the supervisor is closing.
    /// `Ok(true)` when the supervisor must be told now: an `Adopt` already on its way takes every child handed
    /// over before the supervisor reads it, so a burst of starts sends one message, not one each.
    fn hand_over(&self, pending: Pending) -> Result<bool, Pending> {
        let mut handover = self.lock();
        if handover.closed {
            return Err(pending);
        }
        handover.in_flight -= 1;
        let waiting = handover.pending.len();
        handover.pending.push(pending);
        Ok(if self.announce {
            waiting == 0
        } else {
            waiting + 1 == ADOPT_BATCH
        })
    }

    /// The supervisor takes every handed-over child at once.
    pub(crate) fn adopt_all(&self) -> Vec<Pending> {
        std::mem::take(&mut self.lock().pending)
    }

    /// Whether an exit of an actor that is not a known child may belong to a start not adopted yet.
    pub(crate) fn may_be_starting(&self) -> bool {
        !self.quiet()
    }

    /// Whether no start is in flight or pending (held early exits can be dropped).
    pub(crate) fn quiet(&self) -> bool {
        let handover = self.lock();
        handover.in_flight == 0 && handover.pending.is_empty()
    }

    /// The children handed over but not adopted, taken without waiting (the supervisor is gone).
    pub(crate) fn take_pending(&self) -> Vec<Pending> {
        let mut handover = self.lock();
        handover.closed = true;
        std::mem::take(&mut handover.pending)
    }

    /// Closes the supervisor to new starts, waits for the starts in flight to finish, and returns the children
    /// handed over but not adopted: the supervisor stops them with its own.
    pub(crate) async fn close(&self) -> Vec<Pending> {
        loop {
            {
                let mut handover = self.lock();
                handover.closed = true;
                if handover.in_flight == 0 {
                    return std::mem::take(&mut handover.pending);
                }
            }
            // `notify_one` keeps a permit if it comes before this wait, so no wake-up is lost.
            self.settled.notified().await;
        }
    }
}

/// Undoes a start's bookkeeping if it does not reach the hand-over (its future dropped mid-way).
struct StartGuard<'a> {
    shared: &'a DynamicShared,
    child: Option<ActorCell>,
    armed: bool,
}

impl Drop for StartGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(child) = &self.child {
                child.kill();
            }
            self.shared.abandon();
        }
    }
}

pub(crate) async fn start_child(
    supervisor: &ActorRef<SupervisorMsg>,
    shared: &DynamicShared,
    spec: ChildSpec,
) -> Result<ChildHandle, SupervisorError> {
    spec.check(None)?;
    // A start can complete without ever waiting; a caller starting children in a loop must still let the
    // supervisor (and everything else on its worker thread) run, or a shutdown could never get in.
    tokio::task::consume_budget().await;
    shared.begin()?;
    let mut guard = StartGuard {
        shared,
        child: None,
        armed: true,
    };
    let order = shared.next_order.fetch_add(1, Ordering::Relaxed);
    let slot = ChildSlot::new(Arc::clone(&spec.id), Some(order));
    // No supervisor state here: a child found unlinked is stopped on this task before the error returns.
    let cell = match start_one(&spec, &supervisor.get_cell(), &slot, None).await {
        Ok(cell) => cell,
        Err(err) => {
            // The link is refused once the supervisor is stopping (even before its post_stop closed the
            // hand-over): say so rather than blame the child.
            let stopping = matches!(
                supervisor.get_status(),
                ActorStatus::Draining | ActorStatus::Stopping | ActorStatus::Stopped
            );
            let closed = stopping || shared.lock().closed;
            return Err(if closed {
                SupervisorError::ShuttingDown
            } else {
                err
            });
        }
    };
    guard.child = Some(cell.clone());
    slot.set_running(cell.clone());
    let handle = ChildHandle::new(Arc::clone(&slot));
    let pending = Pending {
        order,
        spec,
        cell: cell.clone(),
        slot,
        started_at: Instant::now(),
    };
    match shared.hand_over(pending) {
        Ok(tell) => {
            guard.armed = false;
            if tell && supervisor.cast(SupervisorMsg::Adopt).is_err() {
                // Killed (a graceful stop would have closed the hand-over first): ractor kills what was linked
                // to it, this child included.
                cell.kill();
                return Err(SupervisorError::NotRunning {
                    which: supervisor.get_id().to_string(),
                });
            }
            Ok(handle)
        }
        Err(pending) => {
            // Closing: the supervisor's post_stop waits for this start, so stopping the child here keeps
            // "nothing alive after shutdown" true.
            Box::pin(terminate_cell(&pending.cell, pending.spec.shutdown)).await;
            pending.slot.set_removed();
            drop(guard); // abandon: releases the reservation, ends the in-flight start
            Err(SupervisorError::ShuttingDown)
        }
    }
}
