//! How a supervisor ended, and how an exit reason is read.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a supervisor ended, as [`SupervisorHandle::wait`](super::SupervisorHandle::wait) reports it.
///
/// OTP ends a supervisor that reached its restart intensity with reason `shutdown`, so a *transient* parent
/// entry leaves it down and a *permanent* one restarts it; arbor does the same (the exit reason its parent sees
/// is `"shutdown:reached_max_restart_intensity …"`, a normal exit), and keeps the cause here, in the log and in
/// the parent's snapshot (`last_exit`).
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

    /// The exit reason the supervisor's actor stops with; every one but a kill is a normal exit for its
    /// parent, as in OTP.
    pub(crate) fn reason(&self) -> String {
        match self {
            SupervisorExit::Shutdown => "shutdown".into(),
            other => format!("shutdown:{other}"),
        }
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

/// Where a supervisor incarnation leaves its [`SupervisorExit`] before its actor finishes.
pub(crate) type ExitCell = Arc<OnceLock<SupervisorExit>>;

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
    pub(crate) fn describe(&self) -> String {
        match self {
            Exit::Normal(None) => "normal".into(),
            Exit::Normal(Some(r)) | Exit::Abnormal(r) => r.clone(),
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
