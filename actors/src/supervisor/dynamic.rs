//! Starting a dynamic supervisor's children on the caller's task.
//!
//! OTP's `start_child` is a call: the supervisor spawns the child itself, so every start costs a round trip
//! and a slow child `init` stalls the supervisor. A dynamic supervisor's children have no order and no ids to
//! check, so here the caller spawns the child linked to the supervisor and then hands it over with a cast
//! (`Adopt`). What the call used to make atomic is kept by two counters shared with the supervisor:
//!
//! - `reserved` (children plus starts under way) enforces `max_children` before anything is spawned;
//! - `in_flight` (starts under way) tells the supervisor that an exit from an actor it does not know yet may
//!   be a child whose `Adopt` is still queued (exit events overtake ordinary messages), so it keeps that exit
//!   until the `Adopt` arrives instead of ignoring it. With nothing in flight such exits are ignored as before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ractor::{ActorCell, ActorRef, ActorStatus};

use super::actor::{start_one, validate, SupervisorMsg};
use super::error::SupervisorError;
use super::spec::ChildSpec;

#[derive(Debug)]
pub(crate) struct DynamicShared {
    pub(crate) max_children: Option<usize>,
    reserved: AtomicUsize,
    in_flight: AtomicUsize,
}

impl DynamicShared {
    pub(crate) fn new(max_children: Option<usize>) -> Self {
        DynamicShared {
            max_children,
            reserved: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        }
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

    /// The supervisor took over a child started on a caller's task.
    pub(crate) fn adopted(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn starts_in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// Undoes a start's bookkeeping if it does not reach `Adopt` (start failed, or the caller's future dropped).
struct StartGuard<'a> {
    shared: &'a DynamicShared,
    armed: bool,
}

impl Drop for StartGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.shared.release();
        }
    }
}

pub(crate) async fn start_child(
    supervisor: &ActorRef<SupervisorMsg>,
    shared: &DynamicShared,
    spec: ChildSpec,
) -> Result<ActorCell, SupervisorError> {
    validate(&spec)?;
    if !matches!(supervisor.get_status(), ActorStatus::Running) {
        return Err(SupervisorError::SupervisorGone(
            "the dynamic supervisor is not running".into(),
        ));
    }
    shared.reserve()?;
    shared.in_flight.fetch_add(1, Ordering::AcqRel);
    let mut guard = StartGuard { shared, armed: true };
    let cell = start_one(&spec, supervisor.get_cell()).await?;
    guard.armed = false;
    if supervisor.cast(SupervisorMsg::Adopt(spec, cell.clone())).is_err() {
        // The supervisor died after the child linked to it; ractor kills linked children as their supervisor
        // exits, but this one may have linked too late to be among them.
        guard.armed = true;
        cell.kill();
        return Err(SupervisorError::SupervisorGone(
            "stopped while the child started".into(),
        ));
    }
    Ok(cell)
}

pub(crate) type SharedSlot = Arc<tokio::sync::OnceCell<Arc<DynamicShared>>>;
