//! What a supervisor tells subscribers: every start, exit, restart and its own end, as typed events.
//!
//! Opt in with [`SupervisorBuilder::events`](super::SupervisorBuilder::events) (or the dynamic builder's): an
//! [`EventSink`] is a broadcast sender plus the label the supervisor's events carry (its path in a tree).
//! Publishing costs nothing when no sink is set, and a send to a sink nobody listens to is dropped.

use std::fmt;
use std::sync::Arc;

use ractor::ActorId;
use tokio::sync::broadcast;

use super::exit::SupervisorExit;

/// Something a supervisor did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SupervisorEvent {
    /// A child started (at the supervisor's start, by `start_child`, or by `restart_child`).
    Started {
        /// The supervisor's label.
        supervisor: Arc<str>,
        /// The child's id (`id#n` for a dynamic supervisor's children).
        child: String,
        /// The running actor.
        actor: ActorId,
    },
    /// A child exited: on its own, or stopped by the supervisor (a group restart, `terminate_child`, the
    /// supervisor's shutdown). Every `Started` / `Restarted` of a child follows the `Exited` of its previous
    /// incarnation, so a subscriber replaying the events knows what runs. A child *supervisor*'s exit also
    /// ends everything below it (its children's exits come first, unless it was killed and could not tell
    /// them).
    Exited {
        /// The supervisor's label.
        supervisor: Arc<str>,
        /// The child's id.
        child: String,
        /// The actor that exited.
        actor: ActorId,
        /// Why: `normal`, `shutdown`, `killed`, a panic message, an error; for a child supervisor that gave up,
        /// `shutdown: <cause>` (its actor's reason is plain `shutdown`).
        reason: String,
        /// Whether the exit counts as normal (OTP's `normal` / `shutdown`).
        normal: bool,
        /// Whether the supervisor restarts it.
        restart: bool,
    },
    /// A child was restarted after an exit.
    Restarted {
        /// The supervisor's label.
        supervisor: Arc<str>,
        /// The child's id.
        child: String,
        /// The new incarnation.
        actor: ActorId,
        /// How many times this supervisor restarted it.
        restarts: u32,
    },
    /// A restart failed; it is retried.
    RestartFailed {
        /// The supervisor's label.
        supervisor: Arc<str>,
        /// The child's id.
        child: String,
        /// The start error.
        error: String,
    },
    /// The supervisor itself stopped (`IntensityReached`: it gave up, an escalation to its parent).
    Stopped {
        /// The supervisor's label.
        supervisor: Arc<str>,
        /// How.
        exit: SupervisorExit,
    },
}

impl SupervisorEvent {
    /// The label of the supervisor that published it.
    pub fn supervisor(&self) -> &str {
        match self {
            SupervisorEvent::Started { supervisor, .. }
            | SupervisorEvent::Exited { supervisor, .. }
            | SupervisorEvent::Restarted { supervisor, .. }
            | SupervisorEvent::RestartFailed { supervisor, .. }
            | SupervisorEvent::Stopped { supervisor, .. } => supervisor,
        }
    }
}

/// One line for people: `started worker-3#3 under app/pool (actor 0.13)`.
impl fmt::Display for SupervisorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SupervisorEvent::Started {
                supervisor,
                child,
                actor,
            } => write!(f, "started {child} under {supervisor} (actor {actor})"),
            SupervisorEvent::Exited {
                supervisor,
                child,
                actor,
                reason,
                restart,
                ..
            } => {
                let next = if *restart {
                    "restarting it"
                } else {
                    "not restarted"
                };
                write!(
                    f,
                    "{child} under {supervisor} exited: {reason} (actor {actor}); {next}"
                )
            }
            SupervisorEvent::Restarted {
                supervisor,
                child,
                actor,
                restarts,
            } => write!(
                f,
                "restarted {child} under {supervisor} (actor {actor}, restart {restarts})"
            ),
            SupervisorEvent::RestartFailed {
                supervisor,
                child,
                error,
            } => write!(
                f,
                "restart of {child} under {supervisor} failed: {error}; retrying"
            ),
            SupervisorEvent::Stopped { supervisor, exit } => {
                write!(f, "supervisor {supervisor} stopped: {exit}")
            }
        }
    }
}

/// Where a supervisor publishes its [`SupervisorEvent`]s, and under which label.
#[derive(Debug, Clone)]
pub struct EventSink {
    label: Arc<str>,
    sender: broadcast::Sender<SupervisorEvent>,
}

impl EventSink {
    /// A sink publishing to `sender` under `label`.
    pub fn new(label: impl Into<String>, sender: broadcast::Sender<SupervisorEvent>) -> Self {
        EventSink {
            label: Arc::from(label.into()),
            sender,
        }
    }

    /// The same channel, for a child supervisor: `label/child`.
    pub fn child(&self, child: &str) -> Self {
        EventSink {
            label: Arc::from(format!("{}/{child}", self.label)),
            sender: self.sender.clone(),
        }
    }

    /// The label.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn label_arc(&self) -> Arc<str> {
        Arc::clone(&self.label)
    }

    pub(crate) fn send(&self, event: SupervisorEvent) {
        let _ = self.sender.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_event_reads_as_one_line_for_people() {
        let supervisor: Arc<str> = Arc::from("app/pool");
        let actor = ActorId::Local(13);
        let lines = [
            SupervisorEvent::Started {
                supervisor: supervisor.clone(),
                child: "worker#3".into(),
                actor,
            },
            SupervisorEvent::Exited {
                supervisor: supervisor.clone(),
                child: "worker#3".into(),
                actor,
                reason: "killed".into(),
                normal: false,
                restart: true,
            },
            SupervisorEvent::Restarted {
                supervisor: supervisor.clone(),
                child: "worker#3".into(),
                actor,
                restarts: 2,
            },
            SupervisorEvent::RestartFailed {
                supervisor: supervisor.clone(),
                child: "worker#3".into(),
                error: "refused".into(),
            },
            SupervisorEvent::Stopped {
                supervisor,
                exit: SupervisorExit::IntensityReached {
                    child: "worker#3".into(),
                    max_restarts: 3,
                    period: Duration::from_secs(5),
                },
            },
        ]
        .map(|event| event.to_string());
        assert_eq!(
            lines,
            [
                "started worker#3 under app/pool (actor 0.13)",
                "worker#3 under app/pool exited: killed (actor 0.13); restarting it",
                "restarted worker#3 under app/pool (actor 0.13, restart 2)",
                "restart of worker#3 under app/pool failed: refused; retrying",
                "supervisor app/pool stopped: reached_max_restart_intensity (child worker#3 exited once more after \
                 3 restarts within 5s)",
            ]
        );
    }
}
