//! A leader frozen past its lease and then resumed must step down before it runs any leader callback.
//!
//! The leader runs in a child process (this test binary re-run with `ARBOR_CHILD_ETCD_ENDPOINT` set) with a fast
//! timer; the test SIGSTOPs it until a follower in the test process has taken over (its lease expired on the
//! server), SIGCONTs it, and reads what it did after resuming: its timer and its step-down deadline both fire at
//! once on resume, and `LostLeadership` must come before any `Timer`. Several rounds, since the two race.
#![cfg(feature = "etcd")]

#[macro_use]
mod etcd_common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use arbor_actors::activator::{
    Activator, ActivatorEvent, ActivatorHandle, ActivatorOptions, Backend, EtcdBackend, EtcdOptions,
    Singleton,
};
use arbor_actors::backoff::BackoffConfig;
use etcd_common::{Etcd, WAIT};
use ractor::ActorProcessingErr;
use tokio::sync::mpsc;
use tokio::time::timeout;

const CHILD_ENV: &str = "ARBOR_CHILD_ETCD_ENDPOINT";
const ENTRY: &str = "child_activator_entry";
const NAME: &str = "frozen-singleton";
const TTL: Duration = Duration::from_secs(2);
const ROUNDS: usize = 6;

fn options(endpoint: &str, node: &str) -> EtcdOptions {
    EtcdOptions::new([endpoint.to_string()], node)
        .ttl(TTL)
        .timeouts(Duration::from_millis(500), Duration::from_millis(500))
        .backoff(BackoffConfig::new(
            Duration::from_millis(50),
            Duration::from_millis(400),
        ))
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in both processes.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn event_name(e: &ActivatorEvent) -> String {
    match e {
        ActivatorEvent::NowLeader { fencing_token } => format!("NowLeader {fencing_token}"),
        ActivatorEvent::ClusterChange(_) => "ClusterChange".into(),
        ActivatorEvent::Timer => "Timer".into(),
        ActivatorEvent::Shutdown(_) => "Shutdown".into(),
        ActivatorEvent::LostLeadership => "LostLeadership".into(),
    }
}

/// The child's singleton: prints every callback with its monotonic time; ticks every 20 ms while leading.
#[derive(Clone)]
struct Printer;

impl Singleton for Printer {
    type State = ();

    fn init(&self) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn on_event(&self, _: &mut (), event: ActivatorEvent) -> Result<(), ActorProcessingErr> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "EVENT {} {}", mono_ns(), event_name(&event))?;
        out.flush()?;
        Ok(())
    }

    fn next_timer_in(&self, _: &()) -> Option<Duration> {
        Some(Duration::from_millis(20))
    }
}

/// Not a test: the child process's body, started by the test below with `--include-ignored`.
#[test]
#[ignore = "the child-process leader's entry point, started by the test itself"]
fn child_activator_entry() {
    let Ok(endpoint) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let backend: Arc<dyn Backend> = Arc::new(EtcdBackend::new(options(&endpoint, "child")).unwrap());
        let _handle = Activator::start(Printer, ActivatorOptions::new(NAME), backend)
            .await
            .unwrap();
        println!("READY");
        std::future::pending::<()>().await;
    });
}

/// The child process and the lines it prints.
struct ChildLeader {
    child: Child,
    lines: std::sync::Mutex<std_mpsc::Receiver<(u64, String)>>,
}

impl ChildLeader {
    fn start(endpoint: &str) -> ChildLeader {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                ENTRY,
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, endpoint)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child leader");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut parts = line.splitn(3, ' ');
                if parts.next() == Some("EVENT") {
                    let ns = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    let _ = tx.send((ns, parts.next().unwrap_or("").to_string()));
                }
            }
        });
        ChildLeader {
            child,
            lines: std::sync::Mutex::new(lines),
        }
    }

    /// The next event matching `pred`, skipping others (on a blocking thread: the channel is std's).
    fn next_where(&self, what: &str, pred: impl Fn(u64, &str) -> bool) -> (u64, String) {
        let deadline = std::time::Instant::now() + WAIT;
        let lines = self.lines.lock().unwrap();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok((ns, e)) if pred(ns, &e) => return (ns, e),
                Ok(_) => {}
                Err(_) => panic!("the child did not report {what} in time"),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.child.id());
    }

    /// SIGSTOP, then wait until the kernel reports the child stopped.
    fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let stat = format!("/proc/{}/stat", self.child.id());
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            if matches!(
                text.rsplit_once(") ").and_then(|(_, r)| r.chars().next()),
                Some('T' | 't')
            ) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the child never stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for ChildLeader {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A follower in this process; its callbacks go to `tx`.
#[derive(Clone)]
struct Follower(mpsc::UnboundedSender<ActivatorEvent>);

impl Singleton for Follower {
    type State = ();
    fn init(&self) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn on_event(&self, _: &mut (), event: ActivatorEvent) -> Result<(), ActorProcessingErr> {
        let _ = self.0.send(event);
        Ok(())
    }
}

async fn follower(
    endpoint: &str,
    round: usize,
) -> (ActivatorHandle, mpsc::UnboundedReceiver<ActivatorEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backend: Arc<dyn Backend> =
        Arc::new(EtcdBackend::new(options(endpoint, &format!("parent-{round}"))).unwrap());
    let handle = Activator::start(Follower(tx), ActivatorOptions::new(NAME), backend)
        .await
        .unwrap();
    (handle, rx)
}

fn token(event: &str) -> u64 {
    event.strip_prefix("NowLeader ").unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_lease_steps_down_before_any_callback_on_resume() {
    require_etcd!("a_leader_frozen_past_its_lease_steps_down_before_any_callback_on_resume");
    let etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    let child = Arc::new(ChildLeader::start(&endpoint));
    let c = child.clone();
    let (_, first) =
        tokio::task::spawn_blocking(move || c.next_where("NowLeader", |_, e| e.starts_with("NowLeader")))
            .await
            .unwrap();
    let mut last_token = token(&first);
    for round in 0..ROUNDS {
        let (parent, mut parent_events) = follower(&endpoint, round).await;
        // The child leads and ticks.
        let c = child.clone();
        tokio::task::spawn_blocking(move || c.next_where("a Timer", |_, e| e == "Timer"))
            .await
            .unwrap();
        child.freeze();
        // Frozen until its lease expired on the server: the follower here is elected.
        let taken = timeout(WAIT, async {
            loop {
                if let Some(ActivatorEvent::NowLeader { fencing_token }) = parent_events.recv().await {
                    return fencing_token;
                }
            }
        })
        .await
        .expect("the follower takes over from the frozen leader");
        assert!(taken > last_token, "round {round}: token {last_token} -> {taken}");
        let resumed_at = mono_ns();
        child.signal(libc::SIGCONT);
        // Everything the child does after resuming, up to its step-down: no leader callback before it.
        let c = child.clone();
        let after: Vec<String> = tokio::task::spawn_blocking(move || {
            let mut seen = Vec::new();
            loop {
                let (_, e) = c.next_where("LostLeadership", |ns, _| ns > resumed_at);
                let done = e == "LostLeadership";
                seen.push(e);
                if done {
                    return seen;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(
            after,
            vec!["LostLeadership".to_string()],
            "round {round}: callbacks after resuming, up to the step-down"
        );
        // Hand leadership back to the child for the next round: the follower resigns gracefully.
        parent.shutdown(WAIT).await.unwrap();
        let c = child.clone();
        let (_, again) =
            tokio::task::spawn_blocking(move || c.next_where("NowLeader", |_, e| e.starts_with("NowLeader")))
                .await
                .unwrap();
        assert!(token(&again) > taken);
        last_token = token(&again);
    }
    drop(child);
    drop(etcd);
}
