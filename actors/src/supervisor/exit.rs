//! How a supervisor ended, and how an exit reason is read.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::ActorCell;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How a supervisor ended, as [`SupervisorHandle::wait`](super::SupervisorHandle::wait) reports it.
///
/// OTP ends a supervisor that reached its restart intensity with reason `shutdown`, so a *transient* parent
/// entry leaves it down and a *permanent* one restarts it; arbor does the same (the exit reason its parent sees
/// is exactly `"shutdown"`, a normal exit), and keeps the cause here, typed: in its
/// [`Stopped`](super::SupervisorEvent::Stopped) event, in the log, and in the parent's snapshot and `Exited`
/// event (`shutdown: reached_max_restart_intensity …`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum SupervisorExit {
    /// Stopped on request (`shutdown`, or its parent terminating it), children stopped in reverse order.
    Shutdown,
    /// Stopped itself because significant children exited ([`AutoShutdown`](super::AutoShutdown)).
    AutoShutdown {
        /// The significant child whose exit decided it.
        child: String,
    },
    /// Gave up: one restart more than its intensity allows. Its children were stopped first.
    IntensityReached {
        /// The child whose exit was one too many.
        child: String,
        /// The configured maximum number of restarts.
        max_restarts: u32,
        /// The configured window.
        #[serde(with = "humantime_serde")]
        period: Duration,
    },
    /// Killed, or crashed, without stopping its children gracefully (ractor killed them).
    Killed,
}

impl SupervisorExit {
    /// Whether the tree gave up (intensity reached) or was killed: what a service's `main` should turn into
    /// a non-zero exit code.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            SupervisorExit::IntensityReached { .. } | SupervisorExit::Killed
        )
    }

    /// The exit reason the supervisor's actor stops with: `shutdown` exactly, as OTP's (a normal exit for its
    /// parent, and what code matching `reason == "shutdown"` expects); the cause is this value itself.
    pub(crate) fn reason(&self) -> String {
        "shutdown".into()
    }
}

impl fmt::Display for SupervisorExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SupervisorExit::Shutdown => write!(f, "shutdown"),
            SupervisorExit::AutoShutdown { child } => {
                write!(f, "auto_shutdown (significant child {child} exited)")
            }
            SupervisorExit::IntensityReached {
                child,
                max_restarts,
                period,
            } => write!(
                f,
                "reached_max_restart_intensity (child {child} exited once more after {max_restarts} restarts \
                 within {})",
                humantime::format_duration(*period)
            ),
            SupervisorExit::Killed => write!(f, "killed"),
        }
    }
}

/// One supervisor incarnation's record, shared with its handles and with its parent's slot for it: the exit
/// it leaves before its actor finishes, and, if it dies without a `post_stop` (killed, or failed), the
/// children it still had running, which ractor kills without waiting for them.
#[derive(Default)]
pub(crate) struct Incarnation {
    exit: OnceLock<SupervisorExit>,
    orphans: OnceLock<Vec<Orphan>>,
    orphaned: Notify,
    /// Set when `pre_start` built the state, whose drop records the orphans from then on.
    built: AtomicBool,
}

pub(crate) type ExitCell = Arc<Incarnation>;

/// A child left running by a supervisor that died without stopping it (`cell`), and, if it is (or was) a
/// supervisor itself, its latest incarnation's record, whose own orphans may still run even if it is gone.
pub(crate) struct Orphan {
    pub(crate) cell: Option<ActorCell>,
    pub(crate) incarnation: Option<ExitCell>,
}

impl Incarnation {
    pub(crate) fn set_exit(&self, exit: SupervisorExit) {
        let _ = self.exit.set(exit);
    }

    pub(crate) fn exit(&self) -> Option<SupervisorExit> {
        self.exit.get().cloned()
    }

    /// Called once, as the incarnation's state is dropped.
    pub(crate) fn set_orphans(&self, orphans: Vec<Orphan>) {
        let _ = self.orphans.set(orphans);
        self.orphaned.notify_waiters();
    }

    /// The children this incarnation left running, once it has recorded them (as its state or its arguments
    /// are dropped); `None` if `deadline` comes first.
    pub(crate) async fn recorded(&self, deadline: Option<Instant>) -> Option<&[Orphan]> {
        loop {
            let notified = self.orphaned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(orphans) = self.orphans.get() {
                return Some(orphans);
            }
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, notified).await.ok()?,
                None => notified.await,
            }
        }
    }

    /// The state is built: its drop will record the orphans.
    pub(crate) fn set_built(&self) {
        self.built.store(true, Ordering::Release);
    }

    /// The arguments are dropped: an incarnation that never built its state (refused, or killed or dropped
    /// before its `pre_start` got that far) started nothing, and its record says so at once, so that a start
    /// waiting for its orphans does not wait in vain.
    pub(crate) fn arguments_dropped(&self) {
        if !self.built.load(Ordering::Acquire) {
            self.set_orphans(Vec::new());
        }
    }

    /// After this incarnation died without stopping its children: waits until each of them (and theirs, for
    /// child supervisors) has exited, at most until `deadline`. A restart of the incarnation must not race
    /// its old children for names, registry keys or resources.
    pub(crate) fn wait_orphans(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(orphans) = self.recorded(Some(deadline)).await else {
                return;
            };
            for orphan in orphans {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Some(cell) = &orphan.cell {
                    if cell.wait(Some(left)).await.is_err() {
                        return;
                    }
                }
                if let Some(inner) = &orphan.incarnation {
                    inner.wait_orphans(deadline).await;
                }
            }
        })
    }
}

/// Why a child exited, reduced to what the restart decision needs.
#[derive(Debug)]
pub(crate) enum Exit {
    Normal(Option<String>),
    Abnormal(String),
}

impl Exit {
    /// OTP's rule: `normal`, `shutdown` and `{shutdown, _}` are normal; so is a stop without a reason.
    pub(crate) fn from_reason(reason: Option<String>) -> Exit {
        match reason {
            None => Exit::Normal(None),
            Some(r) if r == "normal" || r == "shutdown" || r.starts_with("shutdown:") => {
                Exit::Normal(Some(r))
            }
            Some(r) => Exit::Abnormal(r),
        }
    }

    pub(crate) fn is_normal(&self) -> bool {
        matches!(self, Exit::Normal(_))
    }

    /// The reason as shown in `which_children` and snapshots.
    pub(crate) fn into_description(self) -> std::borrow::Cow<'static, str> {
        match self {
            Exit::Normal(None) => "normal".into(),
            Exit::Normal(Some(r)) | Exit::Abnormal(r) => r.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supervisor_exit_but_a_kill_reads_as_normal_to_its_parent() {
        let exits = [
            SupervisorExit::Shutdown,
            SupervisorExit::AutoShutdown { child: "a".into() },
            SupervisorExit::IntensityReached {
                child: "a".into(),
                max_restarts: 3,
                period: Duration::from_secs(5),
            },
        ];
        for exit in exits {
            assert!(Exit::from_reason(Some(exit.reason())).is_normal(), "{exit}");
        }
        assert!(!Exit::from_reason(Some("killed".into())).is_normal());
        assert!(!Exit::from_reason(Some("shutdownx".into())).is_normal());
    }
}
