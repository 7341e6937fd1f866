//! The user side of an activator: the [`Singleton`] callbacks and the events they receive.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use ractor::ActorProcessingErr;
use serde::{Deserialize, Serialize};

/// A node joining or leaving the set of nodes that run an activator for the same name.
///
/// For the local backend every activator of the name is its own "node" (identified by its node id and actor
/// id); for etcd a node is a process with a membership key under the election prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterChange {
    /// A node appeared.
    NodeUp(String),
    /// A node went away (stopped, crashed, or its lease expired).
    NodeDown(String),
}

/// What happened to an activator; handed to [`Singleton::on_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivatorEvent {
    /// This activator has just become the leader. `fencing_token` is strictly greater than the token of every
    /// earlier leader of the same name (with etcd: the create revision of the leader key), so resources that
    /// remember the highest token they have seen can refuse a deposed leader.
    NowLeader {
        /// Token to attach to side effects so they can be fenced.
        fencing_token: u64,
    },
    /// A node joined or left. Delivered to the leader only.
    ClusterChange(ClusterChange),
    /// The timer requested by [`Singleton::next_timer_in`] fired. Delivered to the leader only, unless
    /// [`ActivatorOptions::timers_on_followers`](super::ActivatorOptions::timers_on_followers) is set.
    Timer,
    /// The activator is stopping gracefully. The reason is the one given to
    /// [`ActivatorHandle::shutdown`](super::ActivatorHandle::shutdown), or `"stopped"` when the actor was
    /// stopped otherwise (by its supervisor, `ActorCell::stop`): ractor's `post_stop` does not see the stop
    /// reason. Leadership is resigned right after this callback returns, so a leader can still finish its
    /// work here without a second leader running yet. Not delivered after a kill or a crash.
    Shutdown(String),
    /// This activator was the leader and no longer is (the backend could not renew its claim in time, or
    /// another leader was observed). Stop acting as leader now.
    LostLeadership,
}

/// The callbacks of a cluster singleton (Stoker's `init` / `event` / `next_timer_in`).
///
/// One value of the implementing type lives in every activator of the name, leader or not; its
/// [`State`](Singleton::State) is per process, not shared between nodes: a new leader starts from whatever
/// its own state is.
///
/// An `Err` from a callback fails the activator actor (its supervisor restarts it, as with any crash); a
/// failing leader does not resign gracefully, so with etcd the next leader comes after the lease TTL.
pub trait Singleton: Send + Sync + 'static {
    /// Per-activator state.
    type State: Send + 'static;

    /// Builds the initial state. Runs in every activator, before it takes part in the election.
    fn init(&self) -> Result<Self::State, ActorProcessingErr>;

    /// Reacts to an event. Runs inside the activator actor: while it runs, the activator processes nothing
    /// else (so a long `NowLeader` delays a `LostLeadership` that comes after it).
    fn on_event(
        &self,
        state: &mut Self::State,
        event: ActivatorEvent,
    ) -> impl Future<Output = Result<(), ActorProcessingErr>> + Send;

    /// How long until the next [`ActivatorEvent::Timer`]; `None` for no timer. Asked after leadership is
    /// gained and after every timer event.
    fn next_timer_in(&self, state: &Self::State) -> Option<Duration> {
        let _ = state;
        None
    }
}

/// Where an activator stands in the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Not (yet) known: the backend has not answered, e.g. etcd is unreachable.
    Unknown,
    /// Another activator is the leader; this one waits to take over.
    Follower,
    /// This activator is the leader.
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Unknown => "unknown",
            Role::Follower => "follower",
            Role::Leader => "leader",
        })
    }
}
