//! One child's start and stop: running a start closure (its failures, its link), and stopping a child
//! within its shutdown.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ractor::{ActorCell, ActorProcessingErr, ActorStatus, SpawnErr};
use tracing::{error, warn};

use super::error::{BoxError, StartPanic, SupervisorError};
use super::exit::Orphan;
use super::slot::ChildSlot;
use super::spec::{ChildSpec, Shutdown, StartContext};

/// The cause inside ractor's "panicked during startup" wrapper: what `pre_start` returned, or its panic.
pub(super) fn startup_cause(err: ActorProcessingErr) -> BoxError {
    match err.downcast::<SpawnErr>() {
        Ok(spawn) => match *spawn {
            SpawnErr::StartupFailed(inner) => inner,
            other => Box::new(other),
        },
        Err(err) => err,
    }
}

/// Whether `cell` is linked to `supervisor`. An actor that has exited already is unlinked by ractor after its
/// exit event went to its supervisor, so it is given the benefit of the doubt.
pub(super) fn linked_to(cell: &ActorCell, supervisor: &ActorCell) -> bool {
    match cell.try_get_supervisor() {
        Some(parent) => parent.get_id() == supervisor.get_id(),
        None => matches!(cell.get_status(), ActorStatus::Stopping | ActorStatus::Stopped),
    }
}

/// Runs a start closure; a panic (in the closure or in its future), an error and an actor that escaped
/// supervision are all start failures.
///
/// Before a child supervisor starts again, the children its previous incarnation may have left running are
/// waited for (bounded): a supervisor killed outright, or one of its own child supervisors killed while it
/// stopped them, leaves children to ractor, which kills them without waiting; so does an incarnation whose own
/// start was left half-done (killed in its `pre_start`, or dropped there with a parent killed meanwhile). So the
/// new incarnation's children never race the old ones for names, registry keys or resources. (Workers have no
/// such record.)
///
/// A child found unlinked is stopped before the error returns. It may be one this supervisor did link, taken
/// away since by ractor because the supervisor is being killed (an ancestor's kill takes the whole sub-tree's
/// links at once): then it is an orphan of this incarnation, so it is in `stopping` (the supervisor's list of
/// children being stopped) while it is stopped, and the incarnation's record has it if that stop is cut short.
pub(crate) async fn start_one(
    spec: &ChildSpec,
    supervisor: &ActorCell,
    slot: &Arc<ChildSlot>,
    mut stopping: Option<&mut Vec<Orphan>>,
) -> Result<ActorCell, SupervisorError> {
    if let Some(previous) = slot.latest_incarnation() {
        previous
            .wait_orphans(tokio::time::Instant::now() + KILL_WAIT)
            .await;
    }
    let ctx = StartContext {
        supervisor: supervisor.clone(),
        name: spec.name.clone(),
        slot: Arc::clone(slot),
    };
    let failed = |source: BoxError| SupervisorError::StartFailed {
        id: spec.id.to_string(),
        source,
    };
    let panicked = |panic: Box<dyn std::any::Any + Send>| {
        failed(Box::new(StartPanic {
            message: crate::report::panic_message(panic.as_ref()),
        }))
    };
    // A closure may panic before it returns its future (reading its configuration, say) as well as in it.
    let start = match std::panic::catch_unwind(AssertUnwindSafe(|| (spec.start)(ctx))) {
        Ok(start) => start,
        Err(panic) => return Err(panicked(panic)),
    };
    match AssertUnwindSafe(start).catch_unwind().await {
        Ok(Ok(cell)) if linked_to(&cell, supervisor) => Ok(cell),
        Ok(Ok(cell)) => {
            warn!(child = %spec.id, actor = %cell.get_id(), "start closure returned an actor not linked to the supervisor; stopping it");
            if let Some(stopping) = stopping.as_deref_mut() {
                stopping.push(Orphan {
                    cell: Some(cell.clone()),
                    incarnation: slot.latest_incarnation(),
                });
            }
            // Boxed: a rare path that would otherwise make every start's future larger.
            Box::pin(terminate_cell(&cell, spec.shutdown)).await;
            if let Some(stopping) = stopping {
                stopping.retain(|o| o.cell.as_ref().is_none_or(|c| c.get_id() != cell.get_id()));
            }
            Err(SupervisorError::NotLinked {
                id: spec.id.to_string(),
                actor: cell.get_id(),
            })
        }
        Ok(Err(err)) => Err(failed(startup_cause(err))),
        Err(panic) => Err(panicked(panic)),
    }
}

/// How long a kill is waited for. A kill takes effect at the child's next `.await`; a child stuck in blocking
/// code never gets there, and the supervisor must not hang with it.
pub(super) const KILL_WAIT: Duration = Duration::from_secs(10);

/// Stops one child as its shutdown says: ask, wait up to the timeout, then kill.
///
/// ractor takes one stop request per actor: if someone else asked first, asking again fails at once, and
/// the child is then waited for just the same (that stop is under way), within the same timeout.
///
/// Returns how it ended, as its exit is told: `shutdown`, or `killed` once the timeout passed.
pub(crate) async fn terminate_cell(cell: &ActorCell, shutdown: Shutdown) -> &'static str {
    let reason = Some("shutdown".to_string());
    let stopped = match shutdown {
        Shutdown::BrutalKill => false,
        Shutdown::Infinity => {
            if cell.stop_and_wait(reason, None).await.is_err() {
                let _ = cell.wait(None).await;
            }
            true
        }
        Shutdown::Timeout(timeout) => {
            let stopped = match cell.stop_and_wait(reason, Some(timeout)).await {
                Ok(()) => true,
                Err(ractor::RactorErr::Timeout) => false,
                Err(_) => cell.wait(Some(timeout)).await.is_ok(),
            };
            if !stopped {
                warn!(child = %cell.get_id(), timeout = %humantime::format_duration(timeout), "child did not stop in time, killing it");
            }
            stopped
        }
    };
    if !stopped {
        if let Err(ractor::RactorErr::Timeout) = cell.kill_and_wait(Some(KILL_WAIT)).await {
            error!(child = %cell.get_id(), wait = %humantime::format_duration(KILL_WAIT), "child did not die when killed (blocking code?); going on without it");
        }
        return "killed";
    }
    "shutdown"
}
