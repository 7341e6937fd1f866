//! Activator with the etcd backend against a real etcd started by the test on loopback.
//!
//! Without an `etcd` binary on PATH these tests print a loud skip message and pass, unless `CI` is set: then
//! a missing etcd fails them, so CI can never skip silently.
#![cfg(feature = "etcd")]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor_actors::activator::{
    Activator, ActivatorError, ActivatorEvent, ActivatorHandle, ActivatorOptions, Backend, ClusterChange,
    EtcdBackend, EtcdOptions, Role, Singleton,
};
use arbor_actors::supervisor::{Supervisor, SupervisorHandle, SupervisorOptions};
use ractor::ActorProcessingErr;
use tokio::sync::mpsc;
use tokio::time::timeout;

const TTL: Duration = Duration::from_secs(2);
/// Outer bound of any single wait.
const WAIT: Duration = Duration::from_secs(30);

/// etcd instances and timing-sensitive assertions do not share the two cores well: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------------------
// etcd harness

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

fn etcd_on_path() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `None` (after a loud message) when etcd is missing and `CI` is unset.
fn etcd_available(test: &str) -> bool {
    if etcd_on_path() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but no `etcd` binary is on PATH: the etcd activator tests cannot be skipped in CI");
    }
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPED {test}: no `etcd` binary on PATH (apt-get install etcd-server)\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    false
}

/// A private etcd on loopback: free ports, its own data dir, killed by pid on drop.
struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Reserves ports and a data dir without starting etcd (for the "unreachable at start" test).
    fn prepare() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("arbor-etcd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create etcd data dir");
        Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
        }
    }

    async fn start() -> Self {
        let mut e = Self::prepare();
        e.launch().await;
        e
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts (or restarts, on the same data dir and ports) and waits until a client call succeeds.
    async fn launch(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd log file");
        let child = Command::new("etcd")
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let endpoint = self.endpoint();
        timeout(WAIT, async {
            loop {
                let ok = async {
                    let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
                        .await
                        .ok()?;
                    c.status().await.ok()
                };
                if timeout(Duration::from_secs(1), ok).await.ok().flatten().is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("etcd did not become ready");
    }

    fn pid(&self) -> String {
        self.child.as_ref().expect("etcd running").id().to_string()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.pid())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} etcd failed");
    }

    fn freeze(&self) {
        self.signal("-STOP");
    }

    fn thaw(&self) {
        self.signal("-CONT");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // Continue a frozen etcd so that it exits cleanly and releases its ports and data dir at once.
            let _ = Command::new("kill").arg("-CONT").arg(c.id().to_string()).status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
        .backoff(Duration::from_millis(50), Duration::from_millis(400))
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
        let idx = self.trees.len();
        let backend: Arc<dyn Backend> =
            Arc::new(EtcdBackend::new(options(&self.etcd.endpoint(), idx, ttl)).expect("valid options"));
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

macro_rules! require_etcd {
    ($name:expr) => {
        if !etcd_available($name) {
            return;
        }
    };
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
