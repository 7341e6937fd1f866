//! Everything a tree does, as one stream of typed events ([`TreeEvent`]), and the metrics derived from it.
//!
//! Supervisors publish into the tree's channel directly (an `EventSink` per supervisor); the pump turns
//! registry changes of the pool and of the activators into connection and leadership events; tunnel workers
//! started through the tree forward theirs. Every event also feeds the `metrics` facade (a no-op unless the
//! application installs a recorder, e.g. the introspection server's Prometheus exporter):
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `arbor_child_starts_total` | counter | `supervisor` |
//! | `arbor_restarts_total` | counter | `supervisor`, `child` |
//! | `arbor_escalations_total` | counter | `supervisor` |
//! | `arbor_connection_ready` | gauge (1 when READY) | `connection` |
//! | `arbor_connection_transitions_total` | counter | `connection`, `state` |
//! | `arbor_tunnel_checkpoint` | gauge (position) | `tunnel`, `channel` |
//! | `arbor_tunnel_delivered_total`, `arbor_tunnel_lag` | counter, gauge | `tunnel`, `channel` (from the registry, see [`record_channel_metrics`]) |
//! | `arbor_leader` | gauge (1 while this process leads) | `singleton` |

use std::collections::HashMap;
use std::fmt;

use arbor_actors::activator::{ActivatorInfo, Role};
use arbor_actors::connection::{ConnectionInfo, ConnectivityState};
use arbor_actors::registry::{Registry, RegistryEvent};
use arbor_actors::supervisor::{SupervisorEvent, SupervisorExit};
use arbor_actors::tunnel::{TunnelEntry, TunnelEvent};
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

/// Records the metrics an event stands for.
pub(crate) fn record_metrics(event: &TreeEvent) {
    match event {
        TreeEvent::Supervisor(SupervisorEvent::Started { supervisor, .. }) => {
            metrics::counter!("arbor_child_starts_total", "supervisor" => supervisor.to_string())
                .increment(1);
        }
        TreeEvent::Supervisor(SupervisorEvent::Restarted {
            supervisor, child, ..
        }) => {
            let child = child.split('#').next().unwrap_or(child).to_string();
            metrics::counter!("arbor_restarts_total", "supervisor" => supervisor.to_string(), "child" => child)
                .increment(1);
        }
        TreeEvent::Supervisor(SupervisorEvent::Stopped {
            supervisor,
            exit: SupervisorExit::IntensityReached { .. },
        }) => {
            metrics::counter!("arbor_escalations_total", "supervisor" => supervisor.to_string()).increment(1);
        }
        TreeEvent::Connection { key, state, .. } => {
            let ready = f64::from(u8::from(*state == ConnectivityState::Ready));
            metrics::gauge!("arbor_connection_ready", "connection" => key.clone()).set(ready);
            metrics::counter!("arbor_connection_transitions_total", "connection" => key.clone(), "state" => format!("{state:?}"))
                .increment(1);
        }
        TreeEvent::Tunnel {
            tunnel_id,
            event: TunnelEvent::Checkpointed { channel_id, position },
        } => {
            metrics::gauge!("arbor_tunnel_checkpoint", "tunnel" => tunnel_id.clone(), "channel" => channel_id.to_string())
                .set(*position as f64);
        }
        TreeEvent::Leadership { name, role, .. } => {
            let leads = f64::from(u8::from(*role == Role::Leader));
            metrics::gauge!("arbor_leader", "singleton" => name.clone()).set(leads);
        }
        _ => {}
    }
}

/// Per-channel delivery metrics from the tunnel registry (delivered count and lag are kept there, current).
pub fn record_channel_metrics(registry: &Registry<TunnelEntry>) {
    for entry in registry.select_prefix("tunnel/") {
        if let TunnelEntry::Channel(info) = entry.value {
            let labels = [
                ("tunnel", info.tunnel_id.clone()),
                ("channel", info.channel_id.to_string()),
            ];
            metrics::gauge!("arbor_tunnel_delivered", &labels).set(info.delivered as f64);
            if let Some(lag) = info.lag {
                metrics::gauge!("arbor_tunnel_lag", &labels).set(lag as f64);
            }
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
