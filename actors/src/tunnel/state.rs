//! The channel state machine as the worker sees it, and the heartbeat merge: pure functions, no actors, no
//! server.
//!
//! A channel's version only grows. The server bumps it on its transitions (assign → OPEN, move away →
//! CLOSING, expire → CLOSE); the owner bumps it by exactly one on its own (CLOSING or OPEN → CLOSE when it
//! lets the channel go, → TERMINATED when it has checkpointed the end of a finished channel) and reports them
//! in its heartbeats until the server drops the channel from its answer. Merging an answer follows the
//! reference SDKs: the higher version wins, a tie goes to the server, a stale (lower) version is ignored.
//!
//! | local (worker) | server answer | decision |
//! |---|---|---|
//! | nothing | OPEN v | [`Decision::Start`] a channel at v |
//! | nothing | CLOSING v | [`Decision::Report`] CLOSE v+1 at once (it was never ours to drain) |
//! | running at v | missing | [`Decision::Stop`]: no longer ours, do not report |
//! | running at v | any status, version < v | [`Decision::Keep`]: stale answer |
//! | running OPEN at v | CLOSING ≥ v | [`Decision::Drain`]: finish the batch, checkpoint, report CLOSE |
//! | running at v | OPEN > v, or same status ≥ v | [`Decision::Renew`] the lease at the server's version |
//! | reported CLOSE / TERMINATED at r | missing | [`Decision::Forget`]: the server took the report |
//! | reported at r | any, version = r − 1 | [`Decision::Report`] again (not taken yet) |
//! | reported at r | any, version < r − 1 | [`Decision::Report`] again (stale answer) |
//! | reported CLOSE at r | OPEN ≥ r | [`Decision::Start`] fresh: taken, then given back to us |
//! | reported CLOSE at r | CLOSING ≥ r | [`Decision::Report`] CLOSE at the new version + 1 |
//! | reported TERMINATED at r | OPEN or CLOSING ≥ r | [`Decision::Report`] TERMINATED at the new version + 1 |

use std::time::Duration;

use arbor_proto::tunnel::domain::{ChannelStatus, Version};

/// What the worker holds for a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// A channel actor runs it under a lease at `version`, in `status` (`Open` or `Closing`).
    Running {
        /// `Open` or `Closing`.
        status: ChannelStatus,
        /// The lease's version.
        version: Version,
    },
    /// The worker made a transition (`Close` or `Terminated`) at `version` and reports it until the server
    /// drops the channel from its answer.
    Reported {
        /// `Close` or `Terminated`.
        status: ChannelStatus,
        /// The server's version + 1 when the transition was made.
        version: Version,
    },
}

/// A channel in the server's heartbeat answer (status `Open` or `Closing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    /// `Open` or `Closing`.
    pub status: ChannelStatus,
    /// The server's version.
    pub version: Version,
}

/// What to do with one channel after a heartbeat answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing changes.
    Keep,
    /// Start a channel actor under a lease at this version.
    Start(Version),
    /// Tell the running channel its lease is now at this version, in this status.
    Renew(ChannelStatus, Version),
    /// Tell the running channel to finish its batch, checkpoint and report `Close`; the lease is now at
    /// this version.
    Drain(Version),
    /// Stop the running channel without reporting anything: it is no longer ours.
    Stop,
    /// Report this transition in the next heartbeat (and keep reporting it).
    Report(ChannelStatus, Version),
    /// Drop the reported transition: the server has taken it.
    Forget,
}

/// Merges one channel's local state with the server's answer for it (see the module's table).
pub fn merge(local: Option<Local>, server: Option<Server>) -> Decision {
    match (local, server) {
        (None, None) => Decision::Keep,
        (None, Some(s)) => match s.status {
            ChannelStatus::Closing => Decision::Report(ChannelStatus::Close, s.version.next()),
            _ => Decision::Start(s.version),
        },
        (Some(Local::Running { .. }), None) => Decision::Stop,
        (Some(Local::Reported { .. }), None) => Decision::Forget,
        (Some(Local::Running { status, version }), Some(s)) => {
            if s.version < version {
                Decision::Keep
            } else if s.status == ChannelStatus::Closing && status == ChannelStatus::Open {
                Decision::Drain(s.version)
            } else if s.version > version || s.status != status {
                Decision::Renew(s.status, s.version)
            } else {
                Decision::Keep
            }
        }
        (Some(Local::Reported { status, version }), Some(s)) => {
            if s.version < version {
                // Not taken yet (the server is still at version - 1), or a stale answer: report again.
                return Decision::Report(status, version);
            }
            match (status, s.status) {
                (ChannelStatus::Close, ChannelStatus::Open) => Decision::Start(s.version),
                (reported, _) => Decision::Report(reported, s.version.next()),
            }
        }
    }
}

/// How many heartbeats a channel may stay `Closing` before the worker forces it closed (the Java SDK's rule):
/// a subscriber that never acks must not hold a channel the server wants to move.
pub const CLOSING_HEARTBEATS_BEFORE_FORCE: u32 = 3;

/// How long a session is trusted after a heartbeat that was sent at a given instant succeeded: half the
/// heartbeat timeout the service applies (`service`; the worker's own `requested` figure when the service
/// gives none). Past it, with no later heartbeat acknowledged, the service may already have expired the
/// session and handed its channels on: the worker steps down before that can happen, as the etcd activator
/// does at TTL/2, and its channels deliver nothing meanwhile.
pub fn step_down_after(service: Duration, requested: Duration) -> Duration {
    let timeout = if service.is_zero() { requested } else { service };
    timeout / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChannelStatus::*;

    fn running(status: ChannelStatus, v: i64) -> Option<Local> {
        Some(Local::Running {
            status,
            version: Version(v),
        })
    }

    fn reported(status: ChannelStatus, v: i64) -> Option<Local> {
        Some(Local::Reported {
            status,
            version: Version(v),
        })
    }

    fn server(status: ChannelStatus, v: i64) -> Option<Server> {
        Some(Server {
            status,
            version: Version(v),
        })
    }

    /// The local × server × version matrix of the reference SDKs, plus the cases they leave implicit.
    #[test]
    fn the_reference_matrix() {
        let cases: &[(&str, Option<Local>, Option<Server>, Decision)] = &[
            ("nothing, nothing", None, None, Decision::Keep),
            (
                "new OPEN: start it",
                None,
                server(Open, 3),
                Decision::Start(Version(3)),
            ),
            (
                "WAIT + CLOSING: report CLOSE v+1 at once",
                None,
                server(Closing, 4),
                Decision::Report(Close, Version(5)),
            ),
            (
                "running, missing: stop without reporting",
                running(Open, 3),
                None,
                Decision::Stop,
            ),
            (
                "closing, missing: stop",
                running(Closing, 4),
                None,
                Decision::Stop,
            ),
            (
                "running OPEN, same OPEN: keep",
                running(Open, 3),
                server(Open, 3),
                Decision::Keep,
            ),
            (
                "running OPEN, stale OPEN: ignored",
                running(Open, 5),
                server(Open, 4),
                Decision::Keep,
            ),
            (
                "running OPEN, stale CLOSING: ignored",
                running(Open, 5),
                server(Closing, 4),
                Decision::Keep,
            ),
            (
                "running OPEN, higher CLOSING: drain",
                running(Open, 3),
                server(Closing, 4),
                Decision::Drain(Version(4)),
            ),
            (
                "running OPEN, tie CLOSING: the server wins, drain",
                running(Open, 4),
                server(Closing, 4),
                Decision::Drain(Version(4)),
            ),
            (
                "running OPEN, higher OPEN: renew the lease",
                running(Open, 3),
                server(Open, 6),
                Decision::Renew(Open, Version(6)),
            ),
            (
                "running CLOSING, same CLOSING: keep draining",
                running(Closing, 4),
                server(Closing, 4),
                Decision::Keep,
            ),
            (
                "running CLOSING, higher OPEN: the move was called off",
                running(Closing, 4),
                server(Open, 5),
                Decision::Renew(Open, Version(5)),
            ),
            (
                "running CLOSING, stale OPEN: ignored",
                running(Closing, 4),
                server(Open, 3),
                Decision::Keep,
            ),
            (
                "reported CLOSE, missing: taken",
                reported(Close, 5),
                None,
                Decision::Forget,
            ),
            (
                "reported TERMINATED, missing: taken",
                reported(Terminated, 5),
                None,
                Decision::Forget,
            ),
            (
                "CLOSED + OPEN at v: report CLOSE v+1 again",
                reported(Close, 5),
                server(Open, 4),
                Decision::Report(Close, Version(5)),
            ),
            (
                "CLOSED + CLOSING at v: report CLOSE v+1 again",
                reported(Close, 5),
                server(Closing, 4),
                Decision::Report(Close, Version(5)),
            ),
            (
                "CLOSED + stale answer: report again",
                reported(Close, 7),
                server(Open, 2),
                Decision::Report(Close, Version(7)),
            ),
            (
                "CLOSED, then given back at a higher version: a fresh start",
                reported(Close, 5),
                server(Open, 6),
                Decision::Start(Version(6)),
            ),
            (
                "CLOSED, then CLOSING at a higher version: report CLOSE at that version + 1",
                reported(Close, 5),
                server(Closing, 7),
                Decision::Report(Close, Version(8)),
            ),
            (
                "finished + OPEN at v: report TERMINATED v+1",
                reported(Terminated, 5),
                server(Open, 4),
                Decision::Report(Terminated, Version(5)),
            ),
            (
                "finished + CLOSING at v: report TERMINATED v+1",
                reported(Terminated, 5),
                server(Closing, 4),
                Decision::Report(Terminated, Version(5)),
            ),
            (
                "finished + OPEN at a higher version: TERMINATED at that version + 1",
                reported(Terminated, 5),
                server(Open, 9),
                Decision::Report(Terminated, Version(10)),
            ),
        ];
        for (name, local, server, expected) in cases {
            assert_eq!(merge(*local, *server), *expected, "{name}");
        }
    }

    #[test]
    fn the_session_is_trusted_for_half_the_services_timeout() {
        let secs = Duration::from_secs;
        // the service's figure wins over the worker's own, whichever is shorter
        assert_eq!(step_down_after(secs(2), secs(60)), secs(1));
        assert_eq!(step_down_after(secs(60), secs(2)), secs(30));
        // a service that says nothing: the worker's own figure
        assert_eq!(step_down_after(Duration::ZERO, secs(30)), secs(15));
    }

    #[test]
    fn versions_near_the_top_saturate_instead_of_wrapping() {
        assert_eq!(
            merge(None, server(Closing, i64::MAX)),
            Decision::Report(Close, Version(i64::MAX))
        );
    }
}
