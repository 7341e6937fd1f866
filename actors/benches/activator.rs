//! Failover time of the activator: leader killed -> the new leader's `NowLeader` callback runs.
//!
//! `cargo bench -p arbor-actors --bench activator` (local backend only), or with `--features etcd` and an
//! `etcd` binary on PATH for the etcd rows too. Prints median and max over 20 runs per backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor_actors::activator::{
    Activator, ActivatorEvent, ActivatorHandle, ActivatorOptions, Backend, LocalBackend, Singleton,
};
use arbor_actors::registry::Registry;
use ractor::ActorProcessingErr;
use tokio::sync::mpsc;

const RUNS: usize = 20;

/// Sends (who, when) as the first thing `NowLeader` does.
#[derive(Clone)]
struct Stopwatch {
    idx: usize,
    tx: mpsc::UnboundedSender<(usize, Instant)>,
}

impl Singleton for Stopwatch {
    type State = ();

    fn init(&self) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn on_event(&self, _: &mut (), event: ActivatorEvent) -> Result<(), ActorProcessingErr> {
        if let ActivatorEvent::NowLeader { .. } = event {
            let _ = self.tx.send((self.idx, Instant::now()));
        }
        Ok(())
    }
}

struct Row {
    backend: String,
    samples: Vec<Duration>,
}

impl Row {
    fn print(&mut self) {
        self.samples.sort();
        let median = self.samples[self.samples.len() / 2];
        let max = *self.samples.last().expect("samples");
        let min = self.samples[0];
        println!(
            "| {:<28} | {:>4} | {:>12?} | {:>12?} | {:>12?} |",
            self.backend,
            self.samples.len(),
            min,
            median,
            max
        );
    }
}

/// Keeps `followers + 1` activators of one name; each run kills the leader and times the hand-over.
async fn measure(label: &str, backend: impl Fn(usize) -> Arc<dyn Backend>, followers: usize) -> Row {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut handles: Vec<Option<ActivatorHandle>> = Vec::new();
    let start = |idx: usize| {
        let probe = Stopwatch { idx, tx: tx.clone() };
        let b = backend(idx);
        async move {
            let h = Activator::start(probe, ActivatorOptions::new("bench"), b)
                .await
                .expect("activator starts");
            Some(h)
        }
    };
    for i in 0..=followers {
        handles.push(start(i).await);
    }
    let (mut leader, _) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("first leader")
        .expect("channel");
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let victim = handles[leader].take().expect("leader alive");
        let killed_at = Instant::now();
        victim.cell().kill();
        let (new, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("a new leader")
            .expect("channel");
        assert_ne!(new, leader);
        samples.push(at - killed_at);
        leader = new;
        // Keep the number of followers constant (and wait for the victim to be gone for good).
        let _ = victim.cell().wait(Some(Duration::from_secs(10))).await;
        let idx = handles.len();
        handles.push(start(idx).await);
    }
    for h in handles.into_iter().flatten() {
        h.cell().kill();
    }
    Row {
        backend: label.to_string(),
        samples,
    }
}

#[cfg(feature = "etcd")]
mod etcd_rows {
    use super::*;
    use arbor_actors::activator::{EtcdBackend, EtcdOptions};
    use std::process::{Child, Command, Stdio};

    pub struct Etcd(Child, std::path::PathBuf);

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }

    fn port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    pub async fn start() -> Option<(Etcd, String)> {
        let found = Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            println!("(etcd rows skipped: no `etcd` binary on PATH)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("arbor-bench-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (cp, pp) = (port(), port());
        let client = format!("http://127.0.0.1:{cp}");
        let peer = format!("http://127.0.0.1:{pp}");
        let child = Command::new("etcd")
            .args(["--data-dir", dir.to_str().unwrap()])
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        let etcd = Etcd(child, dir);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = async {
                let mut c = etcd_client::Client::connect([client.as_str()], None).await.ok()?;
                c.status().await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(1), ok)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return Some((etcd, client));
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn rows(rows: &mut Vec<Row>) {
        let Some((_etcd, endpoint)) = start().await else {
            return;
        };
        for ttl in [2u64, 5] {
            let ep = endpoint.clone();
            let row = measure(
                &format!("etcd, TTL {ttl}s"),
                move |idx| {
                    Arc::new(
                        EtcdBackend::new(
                            EtcdOptions::new([ep.clone()], format!("bench-{idx}"))
                                .ttl(Duration::from_secs(ttl)),
                        )
                        .expect("options"),
                    )
                },
                2,
            )
            .await;
            rows.push(row);
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut rows = Vec::new();
        for followers in [1usize, 4] {
            let registry = Registry::new("bench");
            registry.start().await.expect("registry");
            let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(registry));
            rows.push(
                measure(
                    &format!("local, {followers} follower(s)"),
                    move |_| backend.clone(),
                    followers,
                )
                .await,
            );
        }
        #[cfg(feature = "etcd")]
        etcd_rows::rows(&mut rows).await;
        println!("\nactivator failover: leader killed -> new leader's NowLeader runs ({RUNS} runs each)\n");
        println!(
            "| {:<28} | {:>4} | {:>12} | {:>12} | {:>12} |",
            "backend", "runs", "min", "median", "max"
        );
        println!("|{:-<30}|{:-<6}|{:-<14}|{:-<14}|{:-<14}|", "", "", "", "", "");
        for r in &mut rows {
            r.print();
        }
    });
}
