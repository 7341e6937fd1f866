//! What the demo sees of its nodes: their tree events merged into one stream, counted (restarts, hand-overs,
//! failovers, reconnects, checkpoints), and matched against the faults waiting to be recovered from.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use arbor_actors::activator::Role;
use arbor_actors::connection::ConnectivityState;
use arbor_actors::supervisor::SupervisorEvent;
use arbor_actors::tunnel::TunnelEvent;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use super::faults::{FaultKind, Injected};
use crate::tree::{TreeEvent, TreeHandle};

/// How long a fault may take to be recovered from before the view says it was not seen.
pub(super) const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

/// How many lines of history the view keeps.
const RECENT: usize = 8;

/// Counters over every node.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Children restarted by a supervisor of either tree.
    pub restarts: u64,
    /// Channels that moved to another node (rebalances and failovers of consumers).
    pub hand_overs: u64,
    /// Leaderships taken over by another node.
    pub failovers: u64,
    /// Pooled connections that became ready again after their first time.
    pub reconnects: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
}

/// A fault whose recovery has not been seen yet.
struct Pending {
    kind: FaultKind,
    node: Option<usize>,
    channel: Option<u32>,
    since: Instant,
    what: String,
}

/// Watches the nodes' events.
pub struct Observer {
    events: mpsc::UnboundedReceiver<(usize, TreeEvent)>,
    pumps: Vec<JoinHandle<()>>,
    began: Instant,
    names: Vec<String>,
    pub counts: Counts,
    /// Which node owns each channel, as far as assignments tell.
    owners: HashMap<u32, usize>,
    leader: Option<usize>,
    ready_once: HashSet<(usize, String)>,
    pending: Vec<Pending>,
    /// The slowest recovery seen per kind of fault.
    pub slowest: BTreeMap<FaultKind, Duration>,
    /// Faults whose recovery was not seen within the limit.
    pub unrecovered: u64,
    /// The last lines of history, newest last.
    pub recent: VecDeque<String>,
    /// Lines not printed yet (plain output prints them as they come).
    pub fresh: Vec<String>,
}

impl Observer {
    /// Subscribes to every tree's events (node `i` is `trees[i]`).
    pub fn new(trees: &[(String, TreeHandle)], began: Instant) -> Observer {
        let (tx, events) = mpsc::unbounded_channel();
        let names = trees.iter().map(|(name, _)| name.clone()).collect();
        let pumps = trees
            .iter()
            .enumerate()
            .map(|(i, (_, tree))| {
                let mut rx = tree.subscribe_events();
                let tx = tx.clone();
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(event) => {
                                if tx.send((i, event)).is_err() {
                                    return;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                    }
                })
            })
            .collect();
        Observer::with(events, pumps, names, began)
    }

    fn with(
        events: mpsc::UnboundedReceiver<(usize, TreeEvent)>,
        pumps: Vec<JoinHandle<()>>,
        names: Vec<String>,
        began: Instant,
    ) -> Observer {
        Observer {
            events,
            pumps,
            began,
            names,
            counts: Counts::default(),
            owners: HashMap::new(),
            leader: None,
            ready_once: HashSet::new(),
            pending: Vec::new(),
            slowest: BTreeMap::new(),
            unrecovered: 0,
            recent: VecDeque::new(),
            fresh: Vec::new(),
        }
    }

    /// Notes an injected fault; its recovery is looked for in the events from now on.
    pub fn injected(&mut self, fault: &Injected) {
        self.log(fault.what.clone());
        self.pending.push(Pending {
            kind: fault.kind,
            node: fault.node,
            channel: fault.channel,
            since: Instant::now(),
            what: fault.what.clone(),
        });
    }

    /// Takes every event that has arrived, and gives up on recoveries older than the limit.
    pub fn drain(&mut self) {
        while let Ok((node, event)) = self.events.try_recv() {
            self.see(node, &event);
        }
        let (late, waiting): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.since.elapsed() > RECOVERY_LIMIT);
        self.pending = waiting;
        for p in late {
            self.unrecovered += 1;
            self.log(format!(
                "no recovery seen within {} after: {}",
                millis(RECOVERY_LIMIT),
                p.what
            ));
        }
    }

    fn see(&mut self, node: usize, event: &TreeEvent) {
        match event {
            TreeEvent::Supervisor(SupervisorEvent::Restarted { .. }) => self.counts.restarts += 1,
            TreeEvent::Connection {
                key,
                state: ConnectivityState::Ready,
                ..
            } if !self.ready_once.insert((node, key.clone())) => self.counts.reconnects += 1,
            TreeEvent::Tunnel { event, .. } => self.see_tunnel(node, event),
            TreeEvent::Leadership {
                role: Role::Leader,
                fencing_token,
                ..
            } => {
                // A failover is a leadership taken by another node: after the leader this observer saw, or,
                // when it saw none (the first leader was elected before it subscribed), after a killed one.
                let previous = self.leader.or_else(|| {
                    self.pending
                        .iter()
                        .find(|p| p.kind == FaultKind::Leader)
                        .and_then(|p| p.node)
                });
                if previous.is_some_and(|before| before != node) {
                    self.counts.failovers += 1;
                }
                self.leader = Some(node);
                let token = fencing_token.map_or_else(String::new, |t| format!(" (fencing token {t})"));
                self.recovered(
                    |p| p.kind == FaultKind::Leader,
                    &format!("{} leads{token}", self.names[node]),
                );
            }
            _ => {}
        }
    }

    fn see_tunnel(&mut self, node: usize, event: &TunnelEvent) {
        match event {
            TunnelEvent::ChannelAssigned { channel_id, .. } => {
                if let Some(before) = self.owners.insert(*channel_id, node) {
                    if before != node {
                        self.counts.hand_overs += 1;
                    }
                }
                let text = format!("channel {channel_id} assigned to {}", self.names[node]);
                self.recovered(
                    |p| p.kind == FaultKind::Channel && p.channel == Some(*channel_id),
                    &text,
                );
            }
            TunnelEvent::Connected { .. } => {
                let text = format!("{} has a new session", self.names[node]);
                self.recovered(|p| p.kind == FaultKind::Worker && p.node == Some(node), &text);
            }
            TunnelEvent::SubscriberAttached => {
                let text = format!("{}'s subscriber attached again", self.names[node]);
                self.recovered(|p| p.kind == FaultKind::Subscriber && p.node == Some(node), &text);
            }
            TunnelEvent::Checkpointed { .. } => {
                self.counts.checkpoints += 1;
                let text = format!("{} checkpoints again", self.names[node]);
                self.recovered(|p| p.kind == FaultKind::Service, &text);
            }
            _ => {}
        }
    }

    /// Resolves the oldest pending fault `matches` picks.
    fn recovered(&mut self, matches: impl Fn(&Pending) -> bool, how: &str) {
        let Some(i) = self.pending.iter().position(matches) else {
            return;
        };
        let p = self.pending.remove(i);
        let took = p.since.elapsed();
        let slowest = self.slowest.entry(p.kind).or_default();
        *slowest = (*slowest).max(took);
        self.log(format!("  recovered in {}: {how}", millis(took)));
    }

    fn log(&mut self, line: String) {
        let line = format!("{:>6.1}s  {line}", self.began.elapsed().as_secs_f64());
        self.fresh.push(line.clone());
        self.recent.push_back(line);
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        for pump in &self.pumps {
            pump.abort();
        }
    }
}

/// A duration for people, to the millisecond: `1s 178ms`, `52ms`.
pub fn millis(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observer() -> Observer {
        let (_tx, events) = mpsc::unbounded_channel();
        Observer::with(
            events,
            Vec::new(),
            vec!["node-a".into(), "node-b".into()],
            Instant::now(),
        )
    }

    fn fault(kind: FaultKind, node: usize, channel: Option<u32>) -> Injected {
        Injected {
            kind,
            node: Some(node),
            channel,
            what: format!("{kind} on {node}"),
        }
    }

    fn leads(node: usize) -> (usize, TreeEvent) {
        let event = TreeEvent::Leadership {
            name: "janitor".into(),
            identity: format!("node-{node}"),
            role: Role::Leader,
            fencing_token: None,
        };
        (node, event)
    }

    #[test]
    fn the_first_failover_is_counted_although_the_first_leader_was_elected_unseen() {
        let mut o = observer();
        o.injected(&fault(FaultKind::Leader, 0, None));
        let (node, event) = leads(1);
        o.see(node, &event);
        assert_eq!(o.counts.failovers, 1);
        assert!(o.pending.is_empty(), "the leader fault is recovered");
        o.injected(&fault(FaultKind::Leader, 1, None));
        let (node, event) = leads(0);
        o.see(node, &event);
        assert_eq!(o.counts.failovers, 2);
    }

    #[test]
    fn a_channel_fault_is_recovered_only_by_its_own_channel() {
        let mut o = observer();
        o.injected(&fault(FaultKind::Channel, 0, Some(6)));
        let assigned = |channel_id| TreeEvent::Tunnel {
            tunnel_id: "t".into(),
            event: TunnelEvent::ChannelAssigned {
                channel_id,
                version: 1,
                position: 0,
            },
        };
        o.see(1, &assigned(7));
        assert_eq!(o.pending.len(), 1, "channel 7 does not recover channel 6");
        o.see(1, &assigned(6));
        assert!(o.pending.is_empty());
        assert!(o
            .recent
            .iter()
            .any(|l| l.contains("recovered") && l.contains("channel 6")));
    }
}
