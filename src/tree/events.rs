//! Everything a tree does, as one stream of typed events ([`TreeEvent`]), and the pumps that feed it.
//!
//! Supervisors publish into the tree's channel directly (an `EventSink` per supervisor); the pump turns
//! registry changes of the pool and of the activators into connection and leadership events; tunnel workers
//! started through the tree forward theirs. Every event also feeds the metrics (see [`super::metrics`]).

use std::collections::HashMap;
use std::fmt;

use arbor_actors::activator::{ActivatorInfo, Role};
use arbor_actors::connection::{ConnectionInfo, ConnectivityState};
use arbor_actors::registry::{Registry, RegistryEvent};

use super::metrics::record_metrics;
use arbor_actors::supervisor::{SupervisorEvent, SupervisorExit};
use arbor_actors::tunnel::TunnelEvent;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Something the tree did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TreeEvent {
    /// A supervisor started, lost, restarted a child, or stopped (an escalation when it gave up).
    Supervisor(SupervisorEvent),
    /// A pooled connection changed state (a reconnect is CONNECTING → READY).
    Connection {
        /// The pool key.
        key: String,
        /// The target, secrets redacted.
        target: String,
        /// The new state.
        state: ConnectivityState,
    },
    /// A tunnel worker's event: sessions, assignments and hand-overs (rebalances), checkpoints.
    Tunnel {
        /// The tunnel.
        tunnel_id: String,
        /// What happened.
        event: TunnelEvent,
    },
    /// An activator's role changed.
    Leadership {
        /// The singleton.
        name: String,
        /// This activator's identity.
        identity: String,
        /// Its new role.
        role: Role,
        /// Its fencing token while it leads.
        fencing_token: Option<u64>,
    },
}

/// One line for people: `started worker-3#3 under app/pool (actor 0.13)`, `connection orders (grpc://…) is
/// READY`, `tunnel orders: channel 2 checkpointed at 118`, `node-1 is leader of janitor (fencing token 7)`.
impl fmt::Display for TreeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeEvent::Supervisor(event) => event.fmt(f),
            TreeEvent::Connection { key, target, state } => {
                write!(f, "connection {key} ({target}) is {state}")
            }
            TreeEvent::Tunnel { tunnel_id, event } => {
                write!(f, "tunnel {tunnel_id}: ")?;
                tunnel_words(f, event)
            }
            TreeEvent::Leadership {
                name,
                identity,
                role,
                fencing_token,
            } => {
                write!(f, "{identity} is {role} of {name}")?;
                match fencing_token {
                    Some(token) => write!(f, " (fencing token {token})"),
                    None => Ok(()),
                }
            }
        }
    }
}

fn tunnel_words(f: &mut fmt::Formatter<'_>, event: &TunnelEvent) -> fmt::Result {
    match event {
        TunnelEvent::Connected { client_id } => write!(f, "connected as client {client_id}"),
        TunnelEvent::SessionLost { client_id, reason } => {
            write!(f, "session of client {client_id} lost: {reason}")
        }
        TunnelEvent::ChannelAssigned {
            channel_id,
            version,
            position,
        } => write!(
            f,
            "channel {channel_id} assigned (version {version}, from position {position})"
        ),
        TunnelEvent::ChannelReleased { channel_id, reason } => {
            write!(f, "channel {channel_id} released: {reason}")
        }
        TunnelEvent::ChannelTerminated { channel_id } => write!(f, "channel {channel_id} terminated"),
        TunnelEvent::Checkpointed { channel_id, position } => {
            write!(f, "channel {channel_id} checkpointed at {position}")
        }
        TunnelEvent::RecordsLostToRetention { channel_id, records } => {
            write!(f, "channel {channel_id} lost {records} records to retention")
        }
        TunnelEvent::SubscriberLost { reason } => write!(f, "subscriber lost: {reason}"),
        TunnelEvent::SubscriberAttached => write!(f, "subscriber attached"),
        TunnelEvent::Fatal { error } => write!(f, "stopped for good: {error}"),
        _ => write!(f, "worker event"),
    }
}

impl TreeEvent {
    /// The escalation this event stands for, if it is one: a supervisor of the tree gave up (one restart more
    /// than its intensity allows), with its path in the tree and the typed cause. Its children were stopped;
    /// its parent restarts it if it is permanent (a dynamic supervisor comes back *empty*: the children
    /// started in it are gone) and counts that restart against its own intensity. A program that started
    /// children in a dynamic supervisor watches for this to start them again, or to stop.
    pub fn escalation(&self) -> Option<(&str, &SupervisorExit)> {
        match self {
            TreeEvent::Supervisor(SupervisorEvent::Stopped { supervisor, exit })
                if matches!(exit, SupervisorExit::IntensityReached { .. }) =>
            {
                Some((supervisor, exit))
            }
            _ => None,
        }
    }
}

/// The tasks that feed a tree's events: the tree's own, for its whole life, and one per tunnel worker started
/// through it. A worker's pump is replaced when a worker of the same tunnel starts again, and let go when the
/// worker is stopped (it still forwards the events of the worker's shutdown, then ends with the worker's
/// handles), so starting and stopping workers does not pile tasks up in the tree.
#[derive(Debug, Default)]
pub(crate) struct Pumps {
    tree: Vec<JoinHandle<()>>,
    tunnels: HashMap<String, JoinHandle<()>>,
}

impl Pumps {
    pub(crate) fn new(tree: Vec<JoinHandle<()>>) -> Self {
        Pumps {
            tree,
            tunnels: HashMap::new(),
        }
    }

    /// The pump of the worker of `tunnel_id`; a previous one of the same tunnel is stopped, and pumps of
    /// workers whose events have ended are dropped.
    pub(crate) fn add_tunnel(&mut self, tunnel_id: String, pump: JoinHandle<()>) {
        self.tunnels.retain(|_, pump| !pump.is_finished());
        if let Some(previous) = self.tunnels.insert(tunnel_id, pump) {
            previous.abort();
        }
    }

    /// Lets the pump of a stopped worker go (not aborted: the events of its shutdown still go through).
    pub(crate) fn release_tunnel(&mut self, tunnel_id: &str) {
        self.tunnels.remove(tunnel_id);
    }

    /// How many pumps the tree holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tree.len() + self.tunnels.len()
    }

    pub(crate) fn abort_all(&mut self) {
        for pump in self
            .tree
            .drain(..)
            .chain(self.tunnels.drain().map(|(_, pump)| pump))
        {
            pump.abort();
        }
    }
}

/// Publishes `event` to the tree's subscribers and records its metrics.
pub(crate) fn publish(events: &broadcast::Sender<TreeEvent>, event: TreeEvent) {
    record_metrics(&event);
    let _ = events.send(event);
}

/// Forwards supervisor events into the tree's stream.
pub(crate) fn pump_supervisors(
    mut from: broadcast::Receiver<SupervisorEvent>,
    to: broadcast::Sender<TreeEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match from.recv().await {
                Ok(event) => publish(&to, TreeEvent::Supervisor(event)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "tree event pump fell behind the supervisors' events")
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// Turns the pool registry's state updates into connection events.
pub(crate) fn pump_connections(
    registry: Registry<ConnectionInfo>,
    to: broadcast::Sender<TreeEvent>,
) -> JoinHandle<()> {
    let mut from = registry.watch();
    tokio::spawn(async move {
        let mut last: HashMap<String, ConnectivityState> = HashMap::new();
        loop {
            let info = match from.recv().await {
                Ok(RegistryEvent::Registered(entry) | RegistryEvent::Updated(entry)) => entry.value,
                Ok(RegistryEvent::Removed(entry, _)) => {
                    last.remove(&entry.key);
                    continue;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if last.insert(info.key.clone(), info.state) != Some(info.state) {
                publish(
                    &to,
                    TreeEvent::Connection {
                        key: info.key,
                        target: info.target,
                        state: info.state,
                    },
                );
            }
        }
    })
}

/// Turns the activator registry's updates into leadership events (one per role change).
pub(crate) fn pump_leadership(
    registry: Registry<ActivatorInfo>,
    node_id: String,
    to: broadcast::Sender<TreeEvent>,
) -> JoinHandle<()> {
    let mut from = registry.watch();
    tokio::spawn(async move {
        let mut last: HashMap<String, Role> = HashMap::new();
        loop {
            let (key, info) = match from.recv().await {
                Ok(RegistryEvent::Registered(entry) | RegistryEvent::Updated(entry)) => {
                    if entry.value.node_id != node_id {
                        continue; // another tree's activator, in a shared registry
                    }
                    (entry.key, entry.value)
                }
                Ok(RegistryEvent::Removed(entry, _)) => {
                    last.remove(&entry.key);
                    continue;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if last.insert(key, info.role) != Some(info.role) {
                publish(
                    &to,
                    TreeEvent::Leadership {
                        name: info.name,
                        identity: info.identity,
                        role: info.role,
                        fencing_token: info.fencing_token,
                    },
                );
            }
        }
    })
}

/// Forwards one tunnel worker's events.
pub(crate) fn pump_tunnel(
    tunnel_id: String,
    mut from: broadcast::Receiver<TunnelEvent>,
    to: broadcast::Sender<TreeEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match from.recv().await {
                Ok(event) => publish(
                    &to,
                    TreeEvent::Tunnel {
                        tunnel_id: tunnel_id.clone(),
                        event,
                    },
                ),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pumps_stay_one_per_tunnel_through_many_worker_starts_and_stops() {
        let mut pumps = Pumps::new(vec![tokio::spawn(std::future::pending())]);
        let forwarding = || tokio::spawn(std::future::pending::<()>());
        // 500 workers of distinct tunnels started and stopped, one after the other
        for cycle in 0..500 {
            let tunnel = format!("t{cycle}");
            pumps.add_tunnel(tunnel.clone(), forwarding());
            pumps.release_tunnel(&tunnel);
            assert_eq!(pumps.len(), 1, "cycle {cycle}");
        }
        // 500 restarts of one tunnel's worker, never stopped through the tree
        for cycle in 0..500 {
            pumps.add_tunnel("again".into(), forwarding());
            assert_eq!(pumps.len(), 2, "cycle {cycle}");
        }
        pumps.abort_all();
        assert_eq!(pumps.len(), 0);
    }

    #[test]
    fn tree_events_read_as_one_line_without_debug_formatting() {
        let lines = [
            TreeEvent::Connection {
                key: "orders".into(),
                target: "grpc://10.0.0.1:443".into(),
                state: ConnectivityState::Ready,
            },
            TreeEvent::Tunnel {
                tunnel_id: "orders".into(),
                event: TunnelEvent::Checkpointed {
                    channel_id: 2,
                    position: 118,
                },
            },
            TreeEvent::Leadership {
                name: "janitor".into(),
                identity: "node-1".into(),
                role: Role::Leader,
                fencing_token: Some(7),
            },
        ]
        .map(|event| event.to_string());
        assert_eq!(
            lines,
            [
                "connection orders (grpc://10.0.0.1:443) is READY",
                "tunnel orders: channel 2 checkpointed at 118",
                "node-1 is leader of janitor (fencing token 7)",
            ]
        );
    }
}
