//! The journal: the tree's events as the introspection server saw them, numbered, with the recent ones held for
//! watchers that resume, and a bounded lifecycle history per node (supervisors keep only a restart count and
//! the last exit).
//!
//! One task consumes the tree's event stream into the journal; every change to the held events happens under
//! one lock that also publishes to the live watchers, so a watcher that reads the held events and subscribes
//! under that lock sees every event exactly once, in order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arbor_actors::supervisor::SupervisorEvent;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::tree::TreeEvent;

/// How far a live watcher may fall behind before it is told it lagged.
const LIVE_BUFFER: usize = 1024;

/// How many nodes the journal keeps a history for; the least recently changed are forgotten first (dynamic
/// children come and go by the thousand).
const MAX_NODES: usize = 4096;

/// An event with its place in the journal.
#[derive(Debug)]
pub(crate) struct Recorded {
    /// Consecutive from 1.
    pub(crate) sequence: u64,
    /// When the journal recorded it.
    pub(crate) at: SystemTime,
    /// The event.
    pub(crate) event: TreeEvent,
}

/// What the journal holds and publishes.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// An event.
    Event(Arc<Recorded>),
    /// The journal fell behind the tree and missed this many events before `next_sequence`.
    Missed { missed: u64, next_sequence: u64 },
}

/// What happened to a node, as its history records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    Started,
    Exited,
    Restarted,
    RestartFailed,
    Stopped,
}

/// One record of a node's history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LifecycleRecord {
    pub(crate) sequence: u64,
    pub(crate) at: SystemTime,
    pub(crate) kind: Lifecycle,
    pub(crate) actor_id: Option<String>,
    pub(crate) reason: String,
    pub(crate) normal: bool,
    pub(crate) will_restart: bool,
    pub(crate) restart_count: u32,
}

/// A node's history, oldest first, and how many older records were dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct NodeHistory {
    pub(crate) records: VecDeque<LifecycleRecord>,
    pub(crate) dropped: u64,
    touched: u64,
}

/// Bounded histories: at most `per_node` records for each of at most `max_nodes` nodes.
#[derive(Debug)]
pub(crate) struct NodeHistories {
    per_node: usize,
    max_nodes: usize,
    nodes: HashMap<String, NodeHistory>,
    /// Nodes by when they last changed, for forgetting the stalest first.
    by_touch: BTreeMap<u64, String>,
    clock: u64,
}

impl NodeHistories {
    pub(crate) fn new(per_node: usize, max_nodes: usize) -> Self {
        NodeHistories {
            per_node: per_node.max(1),
            max_nodes: max_nodes.max(1),
            nodes: HashMap::new(),
            by_touch: BTreeMap::new(),
            clock: 0,
        }
    }

    pub(crate) fn record(&mut self, path: &str, record: LifecycleRecord) {
        self.clock += 1;
        let clock = self.clock;
        if !self.nodes.contains_key(path) && self.nodes.len() >= self.max_nodes {
            if let Some((_, stalest)) = self.by_touch.pop_first() {
                self.nodes.remove(&stalest);
            }
        }
        let node = self.nodes.entry(path.to_string()).or_default();
        self.by_touch.remove(&node.touched);
        node.touched = clock;
        self.by_touch.insert(clock, path.to_string());
        if node.records.len() == self.per_node {
            node.records.pop_front();
            node.dropped += 1;
        }
        node.records.push_back(record);
    }

    pub(crate) fn get(&self, path: &str) -> Option<&NodeHistory> {
        self.nodes.get(path)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// The node an event concerns and the record it adds to that node's history, if it is a supervisor's event.
pub(crate) fn lifecycle_of(
    sequence: u64,
    at: SystemTime,
    event: &TreeEvent,
) -> Option<(String, LifecycleRecord)> {
    let TreeEvent::Supervisor(event) = event else {
        return None;
    };
    let record = |kind, actor_id: Option<String>, reason: String| LifecycleRecord {
        sequence,
        at,
        kind,
        actor_id,
        reason,
        normal: false,
        will_restart: false,
        restart_count: 0,
    };
    let child_path = |supervisor: &str, child: &str| format!("{supervisor}/{child}");
    Some(match event {
        SupervisorEvent::Started {
            supervisor,
            child,
            actor,
        } => (
            child_path(supervisor, child),
            record(Lifecycle::Started, Some(actor.to_string()), String::new()),
        ),
        SupervisorEvent::Exited {
            supervisor,
            child,
            actor,
            reason,
            normal,
            restart,
        } => (
            child_path(supervisor, child),
            LifecycleRecord {
                normal: *normal,
                will_restart: *restart,
                ..record(Lifecycle::Exited, Some(actor.to_string()), reason.clone())
            },
        ),
        SupervisorEvent::Restarted {
            supervisor,
            child,
            actor,
            restarts,
        } => (
            child_path(supervisor, child),
            LifecycleRecord {
                restart_count: *restarts,
                ..record(Lifecycle::Restarted, Some(actor.to_string()), String::new())
            },
        ),
        SupervisorEvent::RestartFailed {
            supervisor,
            child,
            error,
        } => (
            child_path(supervisor, child),
            record(Lifecycle::RestartFailed, None, error.clone()),
        ),
        SupervisorEvent::Stopped { supervisor, exit } => (
            supervisor.to_string(),
            record(Lifecycle::Stopped, None, exit.to_string()),
        ),
        _ => return None,
    })
}

struct JournalState {
    next_sequence: u64,
    held: VecDeque<Item>,
    capacity: usize,
    histories: NodeHistories,
    incomplete: bool,
}

/// The journal of one tree.
pub(crate) struct Journal {
    stream_id: String,
    since: SystemTime,
    state: Mutex<JournalState>,
    live: broadcast::Sender<Item>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("stream_id", &self.stream_id)
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

/// Where a watch starts: what to send first, and the live feed after it.
pub(crate) struct Subscription {
    pub(crate) stream_id: String,
    pub(crate) next_sequence: u64,
    pub(crate) oldest_sequence: u64,
    /// Sent before the replay: why the replay does not start where the watcher asked.
    pub(crate) gap: Option<(u64, String)>,
    pub(crate) replay: Vec<Item>,
    pub(crate) live: broadcast::Receiver<Item>,
}

impl Journal {
    /// A journal consuming `events` from now on, holding `replay_events` events and `history_per_node`
    /// records per node; returns it with the task that feeds it (abort the task to stop recording).
    pub(crate) fn start(
        events: broadcast::Receiver<TreeEvent>,
        replay_events: usize,
        history_per_node: usize,
    ) -> (Arc<Journal>, JoinHandle<()>) {
        let journal = Arc::new(Journal {
            stream_id: format!("{:016x}", rand::random::<u64>()),
            since: SystemTime::now(),
            state: Mutex::new(JournalState {
                next_sequence: 1,
                held: VecDeque::new(),
                capacity: replay_events.max(1),
                histories: NodeHistories::new(history_per_node, MAX_NODES),
                incomplete: false,
            }),
            live: broadcast::channel(LIVE_BUFFER).0,
        });
        let task = tokio::spawn(Arc::clone(&journal).consume(events));
        (journal, task)
    }

    async fn consume(self: Arc<Self>, mut events: broadcast::Receiver<TreeEvent>) {
        loop {
            match events.recv().await {
                Ok(event) => self.record(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "introspection journal fell behind the tree's events");
                    self.record_missed(missed);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, JournalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record(&self, event: TreeEvent) {
        let mut state = self.lock();
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        let at = SystemTime::now();
        if let Some((path, record)) = lifecycle_of(sequence, at, &event) {
            state.histories.record(&path, record);
        }
        let item = Item::Event(Arc::new(Recorded { sequence, at, event }));
        Self::hold(&mut state, item.clone());
        // Under the lock, so the order of the live feed is the order of `held`.
        let _ = self.live.send(item);
    }

    fn record_missed(&self, missed: u64) {
        let mut state = self.lock();
        state.incomplete = true;
        let item = Item::Missed {
            missed,
            next_sequence: state.next_sequence,
        };
        Self::hold(&mut state, item.clone());
        let _ = self.live.send(item);
    }

    fn hold(state: &mut JournalState, item: Item) {
        if state.held.len() == state.capacity {
            state.held.pop_front();
        }
        state.held.push_back(item);
    }

    /// The journal's identity: sequence numbers mean something only within it.
    #[cfg(test)]
    pub(crate) fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// When recording started.
    pub(crate) fn since(&self) -> SystemTime {
        self.since
    }

    /// A node's history (a copy), and whether the journal may have missed events.
    pub(crate) fn history(&self, path: &str) -> (NodeHistory, bool) {
        let state = self.lock();
        (
            state.histories.get(path).cloned().unwrap_or_default(),
            state.incomplete,
        )
    }

    /// Starts a watch: live events only (`after` unset), or the held events after sequence `after` first. A
    /// `stream_id` of another journal (the server restarted) or a position no longer held starts with a gap.
    pub(crate) fn subscribe(&self, stream_id: &str, after: Option<u64>) -> Subscription {
        let state = self.lock();
        let oldest_sequence = state
            .held
            .iter()
            .find_map(|item| match item {
                Item::Event(e) => Some(e.sequence),
                Item::Missed { .. } => None,
            })
            .unwrap_or(state.next_sequence);
        let foreign = !stream_id.is_empty() && stream_id != self.stream_id;
        let (gap, replay) = match after {
            None => (
                foreign.then(|| (0, format!("stream {stream_id} is gone (the server restarted)"))),
                Vec::new(),
            ),
            Some(after) => {
                let after = if foreign { 0 } else { after };
                let gap = if foreign {
                    Some((0, format!("stream {stream_id} is gone (the server restarted); replaying what this one holds")))
                } else if after < oldest_sequence.saturating_sub(1) {
                    // Events after..oldest are gone. Written without `after + 1`: a client may send any
                    // position, u64::MAX included.
                    Some((
                        oldest_sequence - after - 1,
                        "the events after the position asked for are no longer held".to_string(),
                    ))
                } else {
                    None
                };
                let replay = state
                    .held
                    .iter()
                    .filter(|item| match item {
                        Item::Event(e) => e.sequence > after,
                        Item::Missed { next_sequence, .. } => *next_sequence > after,
                    })
                    .cloned()
                    .collect();
                (gap, replay)
            }
        };
        Subscription {
            stream_id: self.stream_id.clone(),
            next_sequence: state.next_sequence,
            oldest_sequence,
            gap,
            replay,
            live: self.live.subscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(reason: &str) -> LifecycleRecord {
        LifecycleRecord {
            sequence: 0,
            at: SystemTime::UNIX_EPOCH,
            kind: Lifecycle::Exited,
            actor_id: None,
            reason: reason.into(),
            normal: false,
            will_restart: true,
            restart_count: 0,
        }
    }

    #[test]
    fn a_node_keeps_its_latest_records_and_counts_the_dropped() {
        let mut histories = NodeHistories::new(2, 10);
        for reason in ["a", "b", "c"] {
            histories.record("t/x", exited(reason));
        }
        let node = histories.get("t/x").unwrap();
        let reasons: Vec<_> = node.records.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, ["b", "c"]);
        assert_eq!(node.dropped, 1);
    }

    #[test]
    fn the_stalest_node_is_forgotten_first() {
        let mut histories = NodeHistories::new(4, 2);
        histories.record("t/a", exited("1"));
        histories.record("t/b", exited("2"));
        histories.record("t/a", exited("3"));
        histories.record("t/c", exited("4"));
        assert_eq!(histories.len(), 2);
        assert!(histories.get("t/b").is_none(), "b changed least recently");
        assert_eq!(histories.get("t/a").unwrap().records.len(), 2);
        assert!(histories.get("t/c").is_some());
    }

    fn exit_of(child: &str) -> TreeEvent {
        TreeEvent::Supervisor(SupervisorEvent::Exited {
            supervisor: Arc::from("t"),
            child: child.into(),
            actor: arbor_actors::ractor::ActorId::Local(7),
            reason: "killed".into(),
            normal: false,
            restart: true,
        })
    }

    fn sequences(items: &[Item]) -> Vec<u64> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e.sequence),
                Item::Missed { .. } => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_watch_resumes_after_its_position_and_learns_of_what_was_dropped() {
        let (tx, rx) = broadcast::channel(16);
        let (journal, task) = Journal::start(rx, 3, 8);
        drop(tx);
        let _ = task.await;
        for child in ["a", "b", "c", "d", "e"] {
            journal.record(exit_of(child));
        }
        // Held: 3, 4, 5.
        let live_only = journal.subscribe("", None);
        assert!(live_only.replay.is_empty() && live_only.gap.is_none());
        assert_eq!(live_only.next_sequence, 6);
        assert_eq!(live_only.oldest_sequence, 3);

        let resumed = journal.subscribe(journal.stream_id(), Some(3));
        assert_eq!(sequences(&resumed.replay), [4, 5]);
        assert!(resumed.gap.is_none());

        let too_old = journal.subscribe(journal.stream_id(), Some(0));
        assert_eq!(too_old.gap.as_ref().map(|g| g.0), Some(2), "1 and 2 were dropped");
        assert_eq!(sequences(&too_old.replay), [3, 4, 5]);

        let foreign = journal.subscribe("another-server", Some(4));
        assert!(foreign.gap.is_some());
        assert_eq!(
            sequences(&foreign.replay),
            [3, 4, 5],
            "a foreign position means nothing here"
        );

        let mut live = journal.subscribe(journal.stream_id(), Some(5)).live;
        journal.record(exit_of("f"));
        match live.recv().await.unwrap() {
            Item::Event(e) => assert_eq!(e.sequence, 6),
            other => panic!("{other:?}"),
        }
        let (history, incomplete) = journal.history("t/e");
        assert_eq!(history.records.len(), 1);
        assert_eq!(history.records[0].kind, Lifecycle::Exited);
        assert!(!incomplete);
    }

    #[tokio::test]
    async fn a_position_at_the_end_of_the_sequence_space_resumes_with_nothing_to_replay() {
        let (tx, rx) = broadcast::channel(16);
        let (journal, task) = Journal::start(rx, 3, 8);
        drop(tx);
        let _ = task.await;
        for child in ["a", "b"] {
            journal.record(exit_of(child));
        }
        let resumed = journal.subscribe(journal.stream_id(), Some(u64::MAX));
        assert!(resumed.gap.is_none(), "{:?}", resumed.gap);
        assert!(resumed.replay.is_empty());
        let empty = Journal::start(broadcast::channel(1).1, 3, 8).0;
        let resumed = empty.subscribe(empty.stream_id(), Some(u64::MAX));
        assert!(resumed.gap.is_none() && resumed.replay.is_empty());
    }

    /// A watch that replays what is held while events keep coming sees every event once: the replay ends where
    /// its live feed begins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_and_the_live_feed_meet_without_a_gap_or_a_repeat() {
        const EVENTS: u64 = 400;
        let (journal, _task) = Journal::start(broadcast::channel(1).1, EVENTS as usize, 8);
        let writer = {
            let journal = Arc::clone(&journal);
            std::thread::spawn(move || {
                for _ in 0..EVENTS {
                    journal.record(exit_of("a"));
                }
            })
        };
        // Subscribe while the writer records (it may not have begun, or be done: both ends are covered too).
        let mut subscription = journal.subscribe("", Some(0));
        writer.join().unwrap();
        let mut seen = sequences(&subscription.replay);
        while let Ok(item) = subscription.live.try_recv() {
            seen.extend(sequences(&[item]));
        }
        assert_eq!(seen, (1..=EVENTS).collect::<Vec<_>>());
    }
}
