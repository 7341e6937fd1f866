//! The tree's types as the wire carries them (`arbor.inspect.v1`), and back where a client wants the tree's own
//! types ([`TreeSnapshot`]). Generated types stay here and at the gRPC edges.

use std::time::{Duration, SystemTime};

use arbor_actors::activator::Role;
use arbor_actors::connection::ConnectivityState;
use arbor_actors::supervisor::{
    ChildInfo, ChildKind, ChildStatus, Restart, RestartBackoff, Shutdown, SupervisorEvent, SupervisorExit,
    TreeSnapshot,
};
use arbor_actors::tunnel::{ChannelInfo, TunnelEvent};
use arbor_proto::inspect::v1 as pb;

use super::journal::{Lifecycle, LifecycleRecord, Recorded};
use crate::tree::{RegistryRow, TreeEvent};

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn kind(kind: ChildKind) -> pb::NodeKind {
    match kind {
        ChildKind::Worker => pb::NodeKind::Worker,
        ChildKind::Supervisor => pb::NodeKind::Supervisor,
        ChildKind::DynamicSupervisor => pb::NodeKind::DynamicSupervisor,
    }
}

fn restart(restart: Restart) -> pb::RestartType {
    match restart {
        Restart::Permanent => pb::RestartType::Permanent,
        Restart::Transient => pb::RestartType::Transient,
        Restart::Temporary => pb::RestartType::Temporary,
    }
}

/// A snapshot node and everything below it.
pub(crate) fn node(node: &TreeSnapshot) -> pb::Node {
    pb::Node {
        id: node.id.clone(),
        path: node.path.clone(),
        name: node.name.clone(),
        kind: kind(node.kind).into(),
        actor_id: node.actor_id.clone(),
        status: match node.status {
            ChildStatus::Running => pb::NodeStatus::Running,
            ChildStatus::Restarting => pb::NodeStatus::Restarting,
            ChildStatus::Terminated => pb::NodeStatus::Terminated,
        }
        .into(),
        restart: node.restart.map_or(pb::RestartType::Unspecified, restart).into(),
        restart_count: node.restart_count,
        uptime_ms: node.uptime.map(millis),
        last_exit: node.last_exit.clone(),
        children: node.children.iter().map(self::node).collect(),
    }
}

/// A child's spec, as its supervisor reports it.
pub(crate) fn spec(info: &ChildInfo) -> pb::ChildSpec {
    let (shutdown, timeout) = match info.shutdown {
        Shutdown::BrutalKill => (pb::ShutdownKind::BrutalKill, 0),
        Shutdown::Timeout(t) => (pb::ShutdownKind::Timeout, millis(t)),
        Shutdown::Infinity => (pb::ShutdownKind::Infinity, 0),
    };
    pb::ChildSpec {
        restart: restart(info.restart).into(),
        shutdown: shutdown.into(),
        shutdown_timeout_ms: timeout,
        kind: kind(info.kind).into(),
        significant: info.significant,
        backoff: info
            .backoff
            .as_ref()
            .map(|b: &RestartBackoff| pb::RestartBackoff {
                min_ms: millis(b.min),
                max_ms: millis(b.max),
                random_factor: b.random_factor,
                reset_after_ms: millis(b.reset_after),
            }),
    }
}

/// A record of a node's history.
pub(crate) fn lifecycle(record: &LifecycleRecord) -> pb::LifecycleRecord {
    pb::LifecycleRecord {
        sequence: record.sequence,
        at_unix_ms: unix_ms(record.at),
        kind: match record.kind {
            Lifecycle::Started => pb::LifecycleKind::Started,
            Lifecycle::Exited => pb::LifecycleKind::Exited,
            Lifecycle::Restarted => pb::LifecycleKind::Restarted,
            Lifecycle::RestartFailed => pb::LifecycleKind::RestartFailed,
            Lifecycle::Stopped => pb::LifecycleKind::Stopped,
        }
        .into(),
        actor_id: record.actor_id.clone(),
        reason: record.reason.clone(),
        normal: record.normal,
        will_restart: record.will_restart,
        restart_count: record.restart_count,
    }
}

/// A registry row, with the channel's progress when it is a tunnel channel's entry.
pub(crate) fn registry_entry(row: &RegistryRow, channel: Option<&ChannelInfo>) -> pb::RegistryEntry {
    pb::RegistryEntry {
        registry: row.registry.clone(),
        key: row.key.clone(),
        actor_id: row.actor.clone(),
        value_json: row.value.to_string(),
        channel: channel.map(|c| pb::ChannelProgress {
            tunnel_id: c.tunnel_id.clone(),
            channel_id: c.channel_id,
            status: c.status.to_string(),
            checkpoint: c.checkpoint,
            delivered: c.delivered,
            lag: c.lag,
            lost_to_retention: c.lost_to_retention,
        }),
    }
}

fn supervisor_exit(exit: &SupervisorExit) -> pb::SupervisorStopped {
    let (kind, child) = match exit {
        SupervisorExit::Shutdown => (pb::SupervisorExitKind::Shutdown, String::new()),
        SupervisorExit::AutoShutdown { child } => (pb::SupervisorExitKind::AutoShutdown, child.clone()),
        SupervisorExit::IntensityReached { child, .. } => {
            (pb::SupervisorExitKind::IntensityReached, child.clone())
        }
        SupervisorExit::Killed => (pb::SupervisorExitKind::Killed, String::new()),
        _ => (pb::SupervisorExitKind::Unspecified, String::new()),
    };
    pb::SupervisorStopped {
        exit: kind.into(),
        description: exit.to_string(),
        child,
    }
}

fn supervisor_event(event: &SupervisorEvent) -> Option<pb::SupervisorEvent> {
    use pb::supervisor_event::Kind;
    let (supervisor, child, kind) = match event {
        SupervisorEvent::Started {
            supervisor,
            child,
            actor,
        } => (
            supervisor,
            child.clone(),
            Kind::Started(pb::ChildStarted {
                actor_id: actor.to_string(),
            }),
        ),
        SupervisorEvent::Exited {
            supervisor,
            child,
            actor,
            reason,
            normal,
            restart,
        } => (
            supervisor,
            child.clone(),
            Kind::Exited(pb::ChildExited {
                actor_id: actor.to_string(),
                reason: reason.clone(),
                normal: *normal,
                will_restart: *restart,
            }),
        ),
        SupervisorEvent::Restarted {
            supervisor,
            child,
            actor,
            restarts,
        } => (
            supervisor,
            child.clone(),
            Kind::Restarted(pb::ChildRestarted {
                actor_id: actor.to_string(),
                restart_count: *restarts,
            }),
        ),
        SupervisorEvent::RestartFailed {
            supervisor,
            child,
            error,
        } => (
            supervisor,
            child.clone(),
            Kind::RestartFailed(pb::ChildRestartFailed { error: error.clone() }),
        ),
        SupervisorEvent::Stopped { supervisor, exit } => {
            (supervisor, String::new(), Kind::Stopped(supervisor_exit(exit)))
        }
        _ => return None,
    };
    Some(pb::SupervisorEvent {
        supervisor_path: supervisor.to_string(),
        child,
        kind: Some(kind),
    })
}

fn tunnel_event(tunnel_id: &str, event: &TunnelEvent) -> Option<pb::TunnelEvent> {
    use pb::tunnel_event::Kind;
    let kind = match event.clone() {
        TunnelEvent::Connected { client_id } => Kind::Connected(pb::TunnelConnected { client_id }),
        TunnelEvent::SessionLost { client_id, reason } => {
            Kind::SessionLost(pb::TunnelSessionLost { client_id, reason })
        }
        TunnelEvent::ChannelAssigned {
            channel_id,
            version,
            position,
        } => Kind::ChannelAssigned(pb::TunnelChannelAssigned {
            channel_id,
            version,
            position,
        }),
        TunnelEvent::ChannelReleased { channel_id, reason } => {
            Kind::ChannelReleased(pb::TunnelChannelReleased { channel_id, reason })
        }
        TunnelEvent::ChannelTerminated { channel_id } => {
            Kind::ChannelTerminated(pb::TunnelChannelTerminated { channel_id })
        }
        TunnelEvent::Checkpointed { channel_id, position } => {
            Kind::Checkpointed(pb::TunnelCheckpointed { channel_id, position })
        }
        TunnelEvent::RecordsLostToRetention { channel_id, records } => {
            Kind::RecordsLost(pb::TunnelRecordsLost { channel_id, records })
        }
        TunnelEvent::SubscriberLost { reason } => Kind::SubscriberLost(pb::TunnelSubscriberLost { reason }),
        TunnelEvent::SubscriberAttached => Kind::SubscriberAttached(pb::TunnelSubscriberAttached {}),
        TunnelEvent::Fatal { error } => Kind::Fatal(pb::TunnelFatal { error }),
        _ => return None,
    };
    Some(pb::TunnelEvent {
        tunnel_id: tunnel_id.to_string(),
        kind: Some(kind),
    })
}

fn connectivity(state: ConnectivityState) -> pb::ConnectivityState {
    match state {
        ConnectivityState::Idle => pb::ConnectivityState::Idle,
        ConnectivityState::Connecting => pb::ConnectivityState::Connecting,
        ConnectivityState::Ready => pb::ConnectivityState::Ready,
        ConnectivityState::TransientFailure => pb::ConnectivityState::TransientFailure,
        ConnectivityState::Shutdown => pb::ConnectivityState::Shutdown,
    }
}

fn role(role: Role) -> pb::Role {
    match role {
        Role::Unknown => pb::Role::Unknown,
        Role::Follower => pb::Role::Follower,
        Role::Leader => pb::Role::Leader,
    }
}

/// A recorded event. An event of a kind this protocol version has no message for goes as `other`, in words.
pub(crate) fn event(recorded: &Recorded) -> pb::Event {
    use pb::event::Kind;
    let other = || Kind::Other(format!("{:?}", recorded.event));
    let kind = match &recorded.event {
        TreeEvent::Supervisor(event) => supervisor_event(event).map_or_else(other, Kind::Supervisor),
        TreeEvent::Connection { key, target, state } => Kind::Connection(pb::ConnectionEvent {
            key: key.clone(),
            target: target.clone(),
            state: connectivity(*state).into(),
        }),
        TreeEvent::Tunnel { tunnel_id, event } => {
            tunnel_event(tunnel_id, event).map_or_else(other, Kind::Tunnel)
        }
        TreeEvent::Leadership {
            name,
            identity,
            role: r,
            fencing_token,
        } => Kind::Leadership(pb::LeadershipEvent {
            name: name.clone(),
            identity: identity.clone(),
            role: role(*r).into(),
            fencing_token: *fencing_token,
        }),
    };
    pb::Event {
        sequence: recorded.sequence,
        at_unix_ms: unix_ms(recorded.at),
        kind: Some(kind),
    }
}

/// The wire's node as the tree's own snapshot type (what `TreeHandle::snapshot` gives, to the millisecond).
pub fn snapshot(node: &pb::Node) -> TreeSnapshot {
    TreeSnapshot {
        id: node.id.clone(),
        path: node.path.clone(),
        name: node.name.clone(),
        kind: match node.kind() {
            pb::NodeKind::Supervisor => ChildKind::Supervisor,
            pb::NodeKind::DynamicSupervisor => ChildKind::DynamicSupervisor,
            pb::NodeKind::Worker | pb::NodeKind::Unspecified => ChildKind::Worker,
        },
        actor_id: node.actor_id.clone(),
        status: match node.status() {
            pb::NodeStatus::Restarting => ChildStatus::Restarting,
            pb::NodeStatus::Terminated => ChildStatus::Terminated,
            pb::NodeStatus::Running | pb::NodeStatus::Unspecified => ChildStatus::Running,
        },
        restart: match node.restart() {
            pb::RestartType::Unspecified => None,
            pb::RestartType::Permanent => Some(Restart::Permanent),
            pb::RestartType::Transient => Some(Restart::Transient),
            pb::RestartType::Temporary => Some(Restart::Temporary),
        },
        restart_count: node.restart_count,
        uptime: node.uptime_ms.map(Duration::from_millis),
        last_exit: node.last_exit.clone(),
        children: node.children.iter().map(snapshot).collect(),
    }
}
