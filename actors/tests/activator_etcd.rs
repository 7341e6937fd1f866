//! Activator with the etcd backend against a real etcd started by the test on loopback.
//!
//! Without an `etcd` binary on PATH these tests print a loud skip message and pass, unless `CI` is set: then
//! a missing etcd fails them, so CI can never skip silently.
#![cfg(feature = "etcd")]

#[macro_use]
mod etcd_common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor_actors::activator::{
    Activator, ActivatorError, ActivatorEvent, ActivatorHandle, ActivatorOptions, Backend, BackendError,
    BackendOperation, ClusterChange, EtcdBackend, EtcdOptions, Role, Singleton,
};
use arbor_actors::backoff::BackoffConfig;
use arbor_actors::supervisor::{Supervisor, SupervisorHandle, SupervisorOptions};
use ractor::ActorProcessingErr;
use tokio::sync::mpsc;
use tokio::time::timeout;

use etcd_common::{Etcd, WAIT};

const TTL: Duration = Duration::from_secs(2);

/// etcd instances and timing-sensitive assertions do not share the two cores well: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------------------
// Probe and trees

type Events = mpsc::UnboundedSender<(usize, ActivatorEvent, Instant)>;

/// Records callbacks and checks, at every `NowLeader`, that no other activator of the test currently
/// believes it leads.
#[derive(Clone)]
struct Probe {
    idx: usize,
    tx: Events,
    acting: Arc<Mutex<BTreeSet<usize>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl Singleton for Probe {
    type State = ();

    fn init(&self) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn on_event(&self, _: &mut (), event: ActivatorEvent) -> Result<(), ActorProcessingErr> {
        {
            let mut acting = self.acting.lock().unwrap();
            match &event {
                ActivatorEvent::NowLeader { .. } => {
                    if !acting.is_empty() {
                        self.violations.lock().unwrap().push(format!(
                            "{} became leader while {:?} still acted as leader",
                            self.idx, acting
                        ));
                    }
                    acting.insert(self.idx);
                }
                ActivatorEvent::LostLeadership | ActivatorEvent::Shutdown(_) => {
                    acting.remove(&self.idx);
                }
                _ => {}
            }
        }
        let _ = self.tx.send((self.idx, event, Instant::now()));
        Ok(())
    }
}

struct World {
    etcd: Etcd,
    tx: Events,
    rx: mpsc::UnboundedReceiver<(usize, ActivatorEvent, Instant)>,
    acting: Arc<Mutex<BTreeSet<usize>>>,
    violations: Arc<Mutex<Vec<String>>>,
    trees: Vec<Option<SupervisorHandle>>,
}

fn options(endpoint: &str, node: usize, ttl: Duration) -> EtcdOptions {
    EtcdOptions::new([endpoint.to_string()], format!("n{node}"))
        .ttl(ttl)
        .timeouts(Duration::from_millis(500), Duration::from_millis(500))
        .backoff(BackoffConfig::new(
            Duration::from_millis(50),
            Duration::from_millis(400),
        ))
}

impl World {
    fn new(etcd: Etcd) -> Self {
        // RUST_LOG=arbor_actors=debug shows the sessions' campaign / step-down / retry events.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (tx, rx) = mpsc::unbounded_channel();
        World {
            etcd,
            tx,
            rx,
            acting: Arc::default(),
            violations: Arc::default(),
            trees: Vec::new(),
        }
    }

    /// A separate tree (supervisor + activator) with its own etcd connection, as another node would have.
    async fn add_tree(&mut self, ttl: Duration) -> usize {
        let opts = options(&self.etcd.endpoint(), self.trees.len(), ttl);
        self.add_tree_with(opts).await
    }

    async fn add_tree_with(&mut self, opts: EtcdOptions) -> usize {
        let idx = self.trees.len();
        let backend: Arc<dyn Backend> = Arc::new(EtcdBackend::new(opts).expect("valid options"));
        let probe = Probe {
            idx,
            tx: self.tx.clone(),
            acting: self.acting.clone(),
            violations: self.violations.clone(),
        };
        let spec = Activator::child_spec(
            "activator",
            probe,
            ActivatorOptions::new("etcd-singleton"),
            backend,
        );
        let sup = Supervisor::start(SupervisorOptions::default(), vec![spec])
            .await
            .expect("tree starts");
        self.trees.push(Some(sup));
        idx
    }

    async fn activator(&self, idx: usize) -> ActivatorHandle {
        let sup = self.trees[idx].as_ref().expect("tree alive");
        let cell = sup.which_children().await.unwrap()[0]
            .cell
            .clone()
            .expect("activator runs");
        ActivatorHandle::from_cell("etcd-singleton", cell).unwrap()
    }

    async fn next_where(
        &mut self,
        what: &str,
        pred: impl Fn(usize, &ActivatorEvent) -> bool,
    ) -> (usize, ActivatorEvent, Instant) {
        timeout(WAIT, async {
            loop {
                let (i, e, at) = self.rx.recv().await.expect("channel open");
                if pred(i, &e) {
                    return (i, e, at);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    async fn next_leader(&mut self) -> (usize, u64, Instant) {
        match self
            .next_where("NowLeader", |_, e| matches!(e, ActivatorEvent::NowLeader { .. }))
            .await
        {
            (i, ActivatorEvent::NowLeader { fencing_token }, at) => (i, fencing_token, at),
            _ => unreachable!(),
        }
    }

    /// Kills a whole tree (supervisor and activator, no graceful anything) and forgets it acted.
    async fn kill_tree(&mut self, idx: usize) {
        let sup = self.trees[idx].take().expect("tree alive");
        sup.cell()
            .unwrap()
            .kill_and_wait(Some(WAIT))
            .await
            .expect("tree dies");
        self.acting.lock().unwrap().remove(&idx);
    }

    /// Waits until the live activators agree on one leader; returns its index.
    async fn settled(&self) -> usize {
        timeout(WAIT, async {
            loop {
                let mut dumps = Vec::new();
                for (i, t) in self.trees.iter().enumerate() {
                    if t.is_some() {
                        if let Ok(d) = self.activator(i).await.dump().await {
                            dumps.push((i, d));
                        }
                    }
                }
                let leaders: Vec<_> = dumps.iter().filter(|(_, d)| d.role == Role::Leader).collect();
                if let [(li, l)] = leaders.as_slice() {
                    if dumps.iter().all(|(_, d)| d.leader.as_ref() == Some(&l.identity)) {
                        return *li;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("activators did not settle on one leader")
    }

    fn assert_no_violations(&self) {
        let v = self.violations.lock().unwrap();
        assert!(v.is_empty(), "two leaders at once: {v:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_trees_elect_one_leader_sampled_continuously() {
    require_etcd!("three_trees_elect_one_leader_sampled_continuously");
    let _serial = SERIAL.lock().await;
    let mut w = World::new(Etcd::start().await);
    for _ in 0..3 {
        w.add_tree(TTL).await;
    }
    let (leader, _, _) = w.next_leader().await;
    assert_eq!(w.settled().await, leader);
    // Sample every activator's role for a while (two lease renewals and then some): never two leaders, and
    // always the same one.
    let until = Instant::now() + TTL + Duration::from_secs(1);
    let mut samples = 0;
    while Instant::now() < until {
        let mut leaders = Vec::new();
        for i in 0..3 {
            if w.activator(i).await.role().await.unwrap() == Role::Leader {
                leaders.push(i);
            }
        }
        assert_eq!(leaders, vec![leader], "sample {samples}");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(samples > 20);
    w.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leaders_tree_elects_a_new_leader_within_the_ttl() {
    require_etcd!("killing_the_leaders_tree_elects_a_new_leader_within_the_ttl");
    let _serial = SERIAL.lock().await;
    let mut w = World::new(Etcd::start().await);
    for _ in 0..3 {
        w.add_tree(TTL).await;
    }
    let (old, old_token, _) = w.next_leader().await;
    w.settled().await;
    let killed_at = Instant::now();
    w.kill_tree(old).await;
    let (new, new_token, at) = w.next_leader().await;
    let took = at - killed_at;
    eprintln!("etcd failover after killing the leader's tree: {took:?} (TTL {TTL:?})");
    assert_ne!(new, old);
    assert!(new_token > old_token, "fencing token {old_token} -> {new_token}");
    // The killed leader's lease has to expire on the server: TTL, plus a generous margin for a busy host.
    assert!(took < TTL + Duration::from_secs(3), "failover took {took:?}");
    assert_eq!(w.settled().await, new);
    w.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_etcd_makes_the_leader_step_down_before_its_ttl() {
    require_etcd!("a_frozen_etcd_makes_the_leader_step_down_before_its_ttl");
    let _serial = SERIAL.lock().await;
    let mut w = World::new(Etcd::start().await);
    for _ in 0..3 {
        w.add_tree(TTL).await;
    }
    let (leader, token, _) = w.next_leader().await;
    w.settled().await;
    let frozen_at = Instant::now();
    w.etcd.freeze();
    let (_, _, lost_at) = w
        .next_where("LostLeadership", |i, e| {
            i == leader && *e == ActivatorEvent::LostLeadership
        })
        .await;
    let after = lost_at - frozen_at;
    eprintln!("leader stepped down {after:?} after etcd froze (TTL {TTL:?})");
    // The lease was renewed last before the freeze, so it cannot expire on the server before
    // `frozen_at + TTL`: stepping down earlier is the guarantee.
    assert!(
        after < TTL,
        "leader stepped down {after:?} after the freeze; TTL is {TTL:?}"
    );
    let d = w.activator(leader).await.dump().await.unwrap();
    assert_ne!(d.role, Role::Leader);
    assert_eq!(d.fencing_token, None);
    w.etcd.thaw();
    let (_, new_token, _) = w.next_leader().await;
    assert!(new_token > token);
    w.settled().await;
    w.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_ends_with_one_leader_again() {
    require_etcd!("an_etcd_restart_ends_with_one_leader_again");
    let _serial = SERIAL.lock().await;
    let mut w = World::new(Etcd::start().await);
    for _ in 0..3 {
        w.add_tree(TTL).await;
    }
    let (leader, token, _) = w.next_leader().await;
    w.settled().await;
    w.etcd.kill();
    w.next_where("LostLeadership", |i, e| {
        i == leader && *e == ActivatorEvent::LostLeadership
    })
    .await;
    // While etcd is down every activator is alive, retrying, and none leads.
    for i in 0..3 {
        let a = w.activator(i).await;
        assert!(a.is_alive());
        assert_ne!(a.role().await.unwrap(), Role::Leader);
    }
    w.etcd.launch().await;
    let (_, new_token, _) = w.next_leader().await;
    assert!(new_token > token, "fencing token {token} -> {new_token}");
    w.settled().await;
    w.assert_no_violations();
}

/// etcd down for longer than the TTL: the lease the failed session held could not be revoked then, and a
/// restarted etcd restores it with a fresh TTL, so the old leader key would hold the election for another TTL.
/// The next session revokes it as soon as etcd answers: the election does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_etcd_outage_the_old_lease_is_revoked_and_the_election_does_not_wait_for_it() {
    require_etcd!("after_an_etcd_outage_the_old_lease_is_revoked_and_the_election_does_not_wait_for_it");
    let _serial = SERIAL.lock().await;
    let ttl = Duration::from_secs(8);
    let mut w = World::new(Etcd::start().await);
    w.add_tree(ttl).await;
    let (leader, token, _) = w.next_leader().await;
    w.etcd.kill();
    w.next_where("LostLeadership", |i, e| {
        i == leader && *e == ActivatorEvent::LostLeadership
    })
    .await;
    // Down for longer than the TTL (the scenario, not a wait for an event).
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    w.etcd.launch().await;
    let back = Instant::now();
    let (i, new_token, at) = w.next_leader().await;
    assert_eq!(i, leader);
    assert!(new_token > token);
    // Waiting for the old lease would take a whole TTL after etcd's return; revoking it takes a round trip.
    // The bound is half the TTL: generous on a loaded machine, and far below what the old lease would cost.
    assert!(
        at - back < ttl / 2,
        "re-elected {:?} after etcd came back (TTL {ttl:?})",
        at - back
    );
    w.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_joining_and_leaving_produce_cluster_changes_on_the_leader() {
    require_etcd!("nodes_joining_and_leaving_produce_cluster_changes_on_the_leader");
    let _serial = SERIAL.lock().await;
    let mut w = World::new(Etcd::start().await);
    w.add_tree(TTL).await;
    let (leader, _, _) = w.next_leader().await;
    assert_eq!(leader, 0);
    let joined = w.add_tree(TTL).await;
    let (i, e, _) = w
        .next_where("NodeUp", |_, e| matches!(e, ActivatorEvent::ClusterChange(_)))
        .await;
    assert_eq!(
        (i, e),
        (
            0,
            ActivatorEvent::ClusterChange(ClusterChange::NodeUp(format!("n{joined}")))
        )
    );
    // Graceful leave: the lease is revoked at once.
    let a = w.activator(joined).await;
    w.trees[joined].take().unwrap().shutdown(WAIT).await.unwrap();
    assert!(!a.is_alive());
    let (i, e, _) = w
        .next_where("NodeDown", |_, e| matches!(e, ActivatorEvent::ClusterChange(_)))
        .await;
    assert_eq!(
        (i, e),
        (
            0,
            ActivatorEvent::ClusterChange(ClusterChange::NodeDown(format!("n{joined}")))
        )
    );
    // A crash: the node disappears when its lease expires.
    let crashed = w.add_tree(TTL).await;
    let (_, e, _) = w
        .next_where("NodeUp", |_, e| matches!(e, ActivatorEvent::ClusterChange(_)))
        .await;
    assert_eq!(
        e,
        ActivatorEvent::ClusterChange(ClusterChange::NodeUp(format!("n{crashed}")))
    );
    w.kill_tree(crashed).await;
    let (i, e, _) = w
        .next_where("NodeDown", |_, e| matches!(e, ActivatorEvent::ClusterChange(_)))
        .await;
    assert_eq!(
        (i, e),
        (
            0,
            ActivatorEvent::ClusterChange(ClusterChange::NodeDown(format!("n{crashed}")))
        )
    );
    w.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_strictly_increase_and_graceful_stops_hand_over_at_once() {
    require_etcd!("fencing_tokens_strictly_increase_and_graceful_stops_hand_over_at_once");
    let _serial = SERIAL.lock().await;
    let mut w = World::new(Etcd::start().await);
    // A long TTL: a hand-over that waited for the lease to expire would blow the bound below.
    let ttl = Duration::from_secs(20);
    for _ in 0..5 {
        w.add_tree(ttl).await;
    }
    let (mut leader, mut token, _) = w.next_leader().await;
    let mut tokens = vec![token];
    for _ in 0..4 {
        // The whole tree stops gracefully (as a deploy would): the activator's Shutdown runs, then it
        // resigns.
        let stopped_at = Instant::now();
        w.trees[leader].take().unwrap().shutdown(WAIT).await.unwrap();
        w.next_where("Shutdown", |i, e| {
            i == leader && matches!(e, ActivatorEvent::Shutdown(_))
        })
        .await;
        let (new, new_token, at) = w.next_leader().await;
        assert_ne!(new, leader);
        assert!(
            at - stopped_at < ttl / 2,
            "hand-over took {:?}: resign did not happen",
            at - stopped_at
        );
        assert!(new_token > token, "fencing token {token} -> {new_token}");
        eprintln!("graceful hand-over: {:?} (TTL {ttl:?})", at - stopped_at);
        tokens.push(new_token);
        (leader, token) = (new, new_token);
    }
    assert!(tokens.windows(2).all(|p| p[0] < p[1]), "{tokens:?}");
    w.assert_no_violations();
}

/// Seen flaking under load: a leader whose session had just failed was stopped between sessions, and its
/// old lease (whose leader key still held the election) was left to expire, so the hand-over took the TTL.
/// Staged here with an etcd restart (which renews every lease it restores) and a long backoff, so the stop
/// lands between sessions for certain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_between_sessions_revokes_the_lease_a_failed_session_left() {
    require_etcd!("a_graceful_stop_between_sessions_revokes_the_lease_a_failed_session_left");
    let _serial = SERIAL.lock().await;
    let mut w = World::new(Etcd::start().await);
    let ttl = Duration::from_secs(20);
    // The first node waits a long time before it tries again, the others retry at once.
    let slow_retry = options(&w.etcd.endpoint(), 0, ttl).backoff(BackoffConfig::new(
        Duration::from_secs(60),
        Duration::from_secs(60),
    ));
    w.add_tree_with(slow_retry).await;
    let (leader, _, _) = w.next_leader().await;
    assert_eq!(leader, 0);
    w.add_tree(ttl).await;
    w.add_tree(ttl).await;
    for i in [1, 2] {
        let a = w.activator(i).await;
        timeout(WAIT, async {
            while a.dump().await.unwrap().role != Role::Follower {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the other nodes follow");
    }

    // Every session fails; node 0's lease comes back with a fresh TTL and its leader key still holds the
    // election, while node 0 itself sits in its backoff.
    w.etcd.kill();
    w.next_where("LostLeadership", |i, e| {
        i == 0 && matches!(e, ActivatorEvent::LostLeadership)
    })
    .await;
    w.etcd.launch().await;

    let stopped_at = Instant::now();
    w.trees[0].take().unwrap().shutdown(WAIT).await.unwrap();
    let (new, _, at) = w.next_leader().await;
    assert_ne!(new, 0);
    assert!(
        at - stopped_at < ttl / 2,
        "hand-over took {:?}: the stale lease was left to expire",
        at - stopped_at
    );
    w.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_at_start_means_unknown_and_retries_not_a_crash_loop() {
    require_etcd!("etcd_unreachable_at_start_means_unknown_and_retries_not_a_crash_loop");
    let _serial = SERIAL.lock().await;
    let mut w = World::new(Etcd::prepare());
    w.add_tree(TTL).await;
    let a = w.activator(0).await;
    // Attempts fail (backoff 50..400 ms) and the dump says why; the activator stays the same actor.
    let d = timeout(WAIT, async {
        loop {
            let d = a.dump().await.unwrap();
            if d.backend_error.is_some() {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the activator reports the unreachable etcd");
    assert_eq!(d.role, Role::Unknown);
    assert_eq!(d.backend, "etcd");
    // Typed: what failed, not a string to parse. (etcd-client connects lazily: the first request fails.)
    assert!(
        matches!(
            d.backend_error,
            Some(
                BackendError::Request {
                    operation: BackendOperation::Connect | BackendOperation::LeaseGrant,
                    ..
                } | BackendError::Timeout {
                    operation: BackendOperation::Connect | BackendOperation::LeaseGrant,
                    ..
                }
            )
        ),
        "{:?}",
        d.backend_error
    );
    assert!(a.is_alive());
    w.etcd.launch().await;
    let (i, _, _) = w.next_leader().await;
    assert_eq!(i, 0);
    let b = w.activator(0).await;
    assert_eq!(
        a.cell().get_id(),
        b.cell().get_id(),
        "the activator was never restarted"
    );
    assert_eq!(b.dump().await.unwrap().backend_error, None);
    let info = w.trees[0].as_ref().unwrap().which_children().await.unwrap();
    assert_eq!(info[0].restart_count, 0);
}

#[tokio::test]
async fn bad_etcd_options_are_typed_errors_and_secrets_stay_out_of_debug() {
    let ok = || EtcdOptions::new(["http://127.0.0.1:1"], "n0");
    let field = |r: Result<EtcdBackend, ActivatorError>| match r {
        Err(ActivatorError::InvalidConfig { field, .. }) => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    assert_eq!(field(EtcdBackend::new(ok().ttl(Duration::from_secs(1)))), "ttl");
    assert_eq!(
        field(EtcdBackend::new(ok().ttl(Duration::from_millis(2500)))),
        "ttl"
    );
    assert_eq!(
        field(EtcdBackend::new(EtcdOptions::new(Vec::<String>::new(), "n0"))),
        "endpoints"
    );
    assert_eq!(
        field(EtcdBackend::new(EtcdOptions::new(["http://x:1"], "a/b"))),
        "node_id"
    );
    // A TTL that does not fit etcd's lease (cast to a negative TTL, or above etcd's maximum) is refused here
    // rather than granted as 2 s or failing every grant.
    assert_eq!(
        field(EtcdBackend::new(ok().ttl(Duration::from_secs(u64::MAX)))),
        "ttl"
    );
    assert_eq!(
        field(EtcdBackend::new(ok().ttl(Duration::from_secs(9_000_000_001)))),
        "ttl"
    );
    assert!(EtcdBackend::new(ok().ttl(Duration::from_secs(9_000_000_000))).is_ok());
    // Malformed endpoints and node ids that would leave the activator retrying forever.
    for bad in [
        "not a url",
        "http://",
        "http://[::1",
        "ftp://127.0.0.1:2379",
        "https://127.0.0.1:2379",
        " http://h:1",
        "http://u:p@h:1",
        "http://h:1/path",
    ] {
        assert_eq!(
            field(EtcdBackend::new(EtcdOptions::new([bad], "n0"))),
            "endpoints",
            "{bad:?}"
        );
    }
    for good in [
        "http://127.0.0.1:2379",
        "127.0.0.1:2379",
        "http://[::1]:2379",
        "etcd.internal:2379",
    ] {
        assert!(
            EtcdBackend::new(EtcdOptions::new([good], "n0")).is_ok(),
            "{good:?}"
        );
    }
    for bad in ["", "node 1", "n\n1", "n\t", "n\u{202E}1", "n\u{200B}1"] {
        assert_eq!(
            field(EtcdBackend::new(EtcdOptions::new(["http://x:1"], bad))),
            "node_id",
            "{bad:?}"
        );
    }
    assert_eq!(
        field(EtcdBackend::new(ok().backoff(BackoffConfig::new(
            Duration::ZERO,
            Duration::from_secs(1)
        )))),
        "backoff.initial"
    );
    match ok().ttl_str("ten seconds") {
        Err(ActivatorError::InvalidConfig { field, value, .. }) => {
            assert_eq!((field, value.as_str()), ("ttl", "ten seconds"))
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    let parsed = ok().ttl_str("3s").unwrap();
    assert!(EtcdBackend::new(parsed).is_ok());
    let with_secret = ok().credentials("root", "hunter2-very-secret");
    let dbg = format!("{with_secret:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(dbg.contains("root"), "{dbg}");
    let backend = EtcdBackend::new(with_secret).unwrap();
    assert!(!format!("{backend:?}").contains("hunter2"));
}
