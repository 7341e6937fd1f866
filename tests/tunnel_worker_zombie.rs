//! A zombie worker: a worker in a child process (this test binary, re-run with an environment variable) is
//! SIGSTOPped past its heartbeat timeout while it holds unacknowledged batches; the service expires it and
//! another consumer takes its channels and checkpoints them. SIGCONTed, the zombie's late checkpoints are
//! refused (ownership lost), nothing it writes moves, and it rejoins with a new client id, resuming from the
//! checkpoints the other consumer wrote.

mod tunnel_worker_common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use arbor::ractor::{Actor, ActorProcessingErr, ActorRef};
use arbor::registry::Registry;
use arbor::tunnel::source::{
    ChannelLease, CheckpointInfo, ReadBatch, ReportedChannel, ServerChannel, Session,
};
use arbor::tunnel::{
    Ack, CheckpointPolicy, Delivery, ErrorKind, GrpcSource, SubscriberRef, TunnelError, TunnelSource,
    TunnelWorker,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use tunnel_worker_common::*;

const CHILD_ENV: &str = "ARBOR_TEST_TUNNEL_ZOMBIE";
const ENTRY: &str = "zombie_worker_entry";
/// Records per channel; the zombie acknowledges the first batch (0..10) and holds the second (10..20).
const RECORDS: u64 = 20;
const BATCH: u64 = 10;
/// What the other consumer checkpoints while the zombie is stopped: a position the zombie never writes.
const MARKER: u64 = 12;

// ---- the child: a worker that prints what it receives, calls and sees ----

/// [`GrpcSource`] as is, except that it asks the service for `service_timeout` (so the service's view of the
/// session can be shorter than the worker's own) and prints every checkpoint call and its result.
struct Observed {
    inner: GrpcSource,
    service_timeout: Duration,
}

impl TunnelSource for Observed {
    fn connect<'a>(
        &'a self,
        tunnel_id: &'a str,
        client_tag: &'a str,
        _: Duration,
    ) -> BoxFuture<'a, Result<Session, TunnelError>> {
        self.inner.connect(tunnel_id, client_tag, self.service_timeout)
    }

    fn heartbeat<'a>(
        &'a self,
        session: &'a Session,
        channels: &'a [ReportedChannel],
    ) -> BoxFuture<'a, Result<Vec<ServerChannel>, TunnelError>> {
        self.inner.heartbeat(session, channels)
    }

    fn get_checkpoint<'a>(
        &'a self,
        lease: &'a ChannelLease,
    ) -> BoxFuture<'a, Result<CheckpointInfo, TunnelError>> {
        self.inner.get_checkpoint(lease)
    }

    fn read<'a>(
        &'a self,
        lease: &'a ChannelLease,
        from: u64,
        max_records: u32,
        wait: Duration,
    ) -> BoxFuture<'a, Result<ReadBatch, TunnelError>> {
        async move {
            let result = self.inner.read(lease, from, max_records, wait).await;
            if let Ok(batch) = &result {
                if !batch.records.is_empty() {
                    let (client, channel) = (&lease.session.client_id, lease.channel_id);
                    println!("READ {client} {channel} {from} {}", batch.next);
                }
            }
            result
        }
        .boxed()
    }

    fn checkpoint<'a>(
        &'a self,
        lease: &'a ChannelLease,
        position: u64,
    ) -> BoxFuture<'a, Result<(), TunnelError>> {
        // The call runs on a task of its own so that its answer is printed even when the worker stops
        // waiting for it (a channel abandoned as its session ends).
        let (inner, lease) = (self.inner.clone(), lease.clone());
        let call = tokio::spawn(async move {
            let (client, channel) = (&lease.session.client_id, lease.channel_id);
            println!("CHECKPOINT {client} {channel} {position} sent");
            let result = inner.checkpoint(&lease, position).await;
            match &result {
                Ok(()) => println!("CHECKPOINT {client} {channel} {position} ok"),
                Err(err) => println!(
                    "CHECKPOINT {client} {channel} {position} refused {:?}",
                    err.kind()
                ),
            }
            result
        });
        async move { call.await.expect("the checkpoint call's task") }.boxed()
    }

    fn shutdown<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<(), TunnelError>> {
        self.inner.shutdown(session)
    }
}

enum ZombieMsg {
    Deliver(Delivery),
    /// A line on stdin: acknowledge the held batches.
    Release,
}

/// Acknowledges batches before [`BATCH`] at once and holds the later ones until released.
struct ZombieSubscriber;

impl Actor for ZombieSubscriber {
    type Msg = ZombieMsg;
    type State = Vec<(u32, u64, Ack)>;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<ZombieMsg>, _: ()) -> Result<Self::State, ActorProcessingErr> {
        Ok(Vec::new())
    }

    async fn handle(
        &self,
        _: ActorRef<ZombieMsg>,
        msg: ZombieMsg,
        held: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ZombieMsg::Deliver(delivery) => {
                let batch = &delivery.batch;
                let (channel, first, next) =
                    (batch.channel_id, batch.first_sequence(), batch.next_sequence());
                println!("BATCH {channel} {first} {next}");
                if first < BATCH {
                    delivery.ack.ack();
                } else {
                    held.push((channel, next, delivery.ack));
                }
            }
            ZombieMsg::Release => {
                for (channel, next, ack) in held.drain(..) {
                    println!("ACK {channel} {next}");
                    ack.ack();
                }
            }
        }
        Ok(())
    }
}

/// Not a test: the child process's body, started by the tests below with `--include-ignored`.
#[test]
#[ignore = "the zombie worker's entry point, started by the tests themselves"]
fn zombie_worker_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let [url, tunnel, service_timeout_ms, local_timeout_ms, checkpoint_every_ms] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let checkpoint = match checkpoint_every_ms.parse().unwrap() {
        0 => CheckpointPolicy::EveryBatch,
        ms => CheckpointPolicy::Every(Duration::from_millis(ms)),
    };
    let service_timeout = Duration::from_millis(service_timeout_ms.parse().unwrap());
    let local_timeout = Duration::from_millis(local_timeout_ms.parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let options = fast_options(tunnel)
            .heartbeat(Duration::from_millis(100), local_timeout)
            .read_batch_size(BATCH as u32)
            .processing_timeout(Duration::from_secs(60))
            .subscriber_grace(Duration::from_secs(60))
            .checkpoint(checkpoint);
        let source = Observed {
            inner: GrpcSource::new(connection(url).await, options.call_timeout),
            service_timeout,
        };
        let (actor, _) = Actor::spawn(None, ZombieSubscriber, ()).await.unwrap();
        let subscriber = SubscriberRef::actor(&actor, ZombieMsg::Deliver);
        std::thread::spawn(move || {
            for _ in std::io::stdin().lock().lines().map_while(Result::ok) {
                let _ = actor.cast(ZombieMsg::Release);
            }
        });
        let worker = TunnelWorker::builder(options)
            .source(Arc::new(source))
            .subscriber(subscriber)
            .registry(Registry::new("zombie"))
            .start()
            .await
            .unwrap();
        let mut events = worker.events();
        // start() returns with the first session open: its Connected event went out before anyone could
        // subscribe, so say it from the worker's info
        if let Some(client_id) = worker.info().await.unwrap().client_id {
            println!("EVENT Connected {{ client_id: {client_id:?} }}");
        }
        while let Ok(event) = events.recv().await {
            println!("EVENT {event:?}");
        }
    });
}

// ---- the test side ----

/// The zombie process: its stdin, and its stdout lines.
struct Zombie {
    child: Child,
    stdin: ChildStdin,
    lines: std_mpsc::Receiver<String>,
    /// Every line so far, for the assertions and for failure messages.
    seen: Vec<String>,
}

impl Zombie {
    fn start(url: &str, tunnel: &str, service_timeout: Duration, local_timeout: Duration) -> Zombie {
        Self::start_with(
            url,
            tunnel,
            service_timeout,
            local_timeout,
            CheckpointPolicy::EveryBatch,
        )
    }

    fn start_with(
        url: &str,
        tunnel: &str,
        service_timeout: Duration,
        local_timeout: Duration,
        checkpoint: CheckpointPolicy,
    ) -> Zombie {
        let checkpoint_every_ms = match checkpoint {
            CheckpointPolicy::EveryBatch => 0,
            CheckpointPolicy::Every(interval) => interval.as_millis().max(1),
        };
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                ENTRY,
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!(
                    "{url} {tunnel} {} {} {checkpoint_every_ms}",
                    service_timeout.as_millis(),
                    local_timeout.as_millis()
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the zombie worker");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest's "test zombie_worker_entry ... " has no line end of its own
                let line = match line.split_once(" ... ") {
                    Some((_, rest)) => rest.to_string(),
                    None => line,
                };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Zombie {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line matching `pick` (panics after [`LONG`]).
    fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let picked = pick(&line);
                    self.seen.push(line);
                    if let Some(value) = picked {
                        return value;
                    }
                }
                Err(_) => panic!(
                    "the zombie never printed {what}; it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Lines printed so far (without waiting).
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.child.id());
    }

    /// SIGSTOP, and wait until the kernel reports the process stopped.
    fn sigstop(&self) {
        self.signal(libc::SIGSTOP);
        let stat = format!("/proc/{}/stat", self.child.id());
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            let state = text.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
            if matches!(state, Some('T' | 't')) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the zombie never stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Zombie {
    fn drop(&mut self) {
        let _ = unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_id_of(line: &str) -> Option<String> {
    let rest = line.strip_prefix("EVENT Connected { client_id: \"")?;
    Some(rest.split('"').next()?.to_string())
}

/// Runs the scenario; `service_timeout` is what the service applies, `local_timeout` the worker's own.
/// Returns the zombie (still running, rejoined) and the consumer that took its channels.
async fn zombie_scenario(
    server: &TestServer,
    service_timeout: Duration,
    local_timeout: Duration,
) -> (Zombie, Consumer, String) {
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "zombie", 2).await;
    for channel in 0..2 {
        append_to(
            &mut client,
            &tunnel,
            Some(channel),
            records("z", RECORDS as usize),
        )
        .await
        .unwrap();
    }
    let mut zombie = Zombie::start(&server.url, &tunnel, service_timeout, local_timeout);
    let old_client = zombie.expect("its first session", client_id_of);
    let held: Vec<String> = (0..2).map(|c| format!("BATCH {c} {BATCH} {RECORDS}")).collect();
    let mut waiting = held.clone();
    while !waiting.is_empty() {
        let line = zombie.expect("the held batches", |l| {
            held.contains(&l.to_string()).then(|| l.to_string())
        });
        waiting.retain(|h| *h != line);
    }
    wait_for_tunnel(&mut client, &tunnel, "the first batches checkpointed", |t| {
        t.channels.iter().all(|c| c.checkpoint_sequence_number == BATCH)
    })
    .await;

    // frozen past the service's timeout: another consumer gets both channels
    zombie.sigstop();
    let mut other = Consumer::connect(&server.url, &tunnel, Duration::from_secs(60)).await;
    heartbeat_until(std::slice::from_mut(&mut other), |c| {
        c[0].open_channels().len() == 2
    })
    .await;
    let info = describe(&mut client, &tunnel).await;
    assert!(
        !info.clients.iter().any(|c| c.client_id == old_client),
        "the zombie's session expired"
    );
    for channel in 0..2 {
        let version = other.version(channel);
        let at = other.get_checkpoint(channel, version).await.unwrap();
        assert_eq!(at.checkpoint_sequence_number, BATCH);
        other.checkpoint(channel, version, MARKER).await.unwrap();
    }

    // thawed: the zombie acknowledges its held batches and carries on as if nothing happened
    writeln!(zombie.stdin, "release").unwrap();
    zombie.signal(libc::SIGCONT);
    let new_client = zombie.expect("a new session", client_id_of);
    assert_ne!(new_client, old_client, "it rejoins with a new client id");
    // nothing it did after the thaw moved a checkpoint
    assert_eq!(checkpoints(&mut client, &tunnel).await, vec![MARKER, MARKER]);
    zombie.drain();
    let accepted: Vec<&String> = zombie
        .seen
        .iter()
        .filter(|l| l.starts_with(&format!("CHECKPOINT {old_client} ")) && l.ends_with(" ok"))
        .filter(|l| !l.ends_with(&format!(" {BATCH} ok")))
        .collect();
    assert!(accepted.is_empty(), "late checkpoints accepted: {accepted:?}");
    (zombie, other, old_client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_whose_session_the_service_expired_is_fenced_and_rejoins_with_a_new_client_id() {
    // The zombie's own heartbeat timeout (60 s) is far longer than the service's (1 s), as when a pause is
    // shorter than the worker's own figure but longer than the service's: the worker steps down by the
    // service's figure (half of it), and the service's fencing refuses whatever went out before.
    let server = TestServer::memory().await;
    let (mut zombie, mut other, old_client) =
        zombie_scenario(&server, Duration::from_secs(1), Duration::from_secs(60)).await;
    if !zombie.seen.iter().any(|l| l.starts_with("EVENT SessionLost")) {
        zombie.expect("the session lost", |l| {
            l.starts_with("EVENT SessionLost").then_some(())
        });
    }
    // its late checkpoints that went out reached the service and were refused as ownership lost (one whose
    // channel the session's step-down stopped first was never sent)
    let mut sent_late = 0;
    for channel in 0..2 {
        let sent = format!("CHECKPOINT {old_client} {channel} {RECORDS} sent");
        if !zombie.seen.contains(&sent) {
            continue;
        }
        sent_late += 1;
        let refused = format!(
            "CHECKPOINT {old_client} {channel} {RECORDS} refused {:?}",
            ErrorKind::OwnershipLost
        );
        if !zombie.seen.contains(&refused) {
            zombie.expect(&refused, |l| (l == refused).then_some(()));
        }
    }
    println!("late checkpoints sent: {sent_late}");
    let lost = zombie
        .seen
        .iter()
        .find(|l| l.starts_with("EVENT SessionLost"))
        .unwrap();
    // ended by its own step-down at half the service's figure (1 s), or by the service's answer: never by its
    // own 60 s
    assert!(
        lost.contains("half the service's heartbeat timeout of 1s")
            || lost.contains("no longer knows this client"),
        "{lost}"
    );

    // the other consumer hands a channel over: the rejoined zombie resumes at the checkpoint it wrote
    heartbeat_until(std::slice::from_mut(&mut other), |c| {
        c[0].open_channels().len() == 1
    })
    .await;
    let resumed = zombie.expect("a batch from the other consumer's checkpoint", |l| {
        let mut parts = l.split(' ');
        (parts.next() == Some("BATCH") && parts.nth(1) == Some(&MARKER.to_string())).then(|| l.to_string())
    });
    assert!(resumed.ends_with(&format!(" {MARKER} {RECORDS}")), "{resumed}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_frozen_past_its_own_timeout_stops_its_channels_without_checkpointing_and_rejoins() {
    // The plain case: one timeout for both sides. On the thaw the worker's clock or the service's answer
    // (whichever comes first) ends the session; either way no late checkpoint is accepted.
    let server = TestServer::memory().await;
    let timeout = Duration::from_secs(1);
    let (mut zombie, _other, old_client) = zombie_scenario(&server, timeout, timeout).await;
    zombie.drain();
    let lost = zombie
        .seen
        .iter()
        .find(|l| l.starts_with("EVENT SessionLost"))
        .cloned()
        .unwrap_or_else(|| {
            zombie.expect("the session lost", |l| {
                l.starts_with("EVENT SessionLost").then(|| l.to_string())
            })
        });
    println!("the zombie saw: {lost}");
    let late: Vec<&String> = zombie
        .seen
        .iter()
        .filter(|l| {
            l.starts_with(&format!("CHECKPOINT {old_client} ")) && l.contains(&format!(" {RECORDS} "))
        })
        .collect();
    println!("its late checkpoint calls: {late:?}");
    assert!(late.iter().all(|l| !l.ends_with(" ok")), "{late:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_zombie_delivers_none_of_its_read_ahead_after_the_step_down_deadline() {
    // Checkpoints on a timer (none before the freeze but the first), so that acknowledging the held batch after
    // the thaw writes nothing and the loop goes straight on to the batch read ahead before the freeze: a
    // subscriber doing last-writer-wins upserts would overwrite the new owner's newer state with it.
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "read-ahead", 1).await;
    append_to(&mut client, &tunnel, Some(0), records("z", 3 * BATCH as usize))
        .await
        .unwrap();
    let mut zombie = Zombie::start_with(
        &server.url,
        &tunnel,
        Duration::from_secs(1),
        Duration::from_secs(60),
        CheckpointPolicy::Every(Duration::from_secs(3600)),
    );
    let old_client = zombie.expect("its first session", client_id_of);
    let read_ahead = format!("READ {old_client} 0 {} {}", 2 * BATCH, 3 * BATCH);
    let stale = format!("BATCH 0 {} {}", 2 * BATCH, 3 * BATCH);
    zombie.expect("the held batch", |l| {
        (l == format!("BATCH 0 {BATCH} {}", 2 * BATCH)).then_some(())
    });
    if !zombie.seen.contains(&read_ahead) {
        zombie.expect("the batch read ahead", |l| (l == read_ahead).then_some(()));
    }

    // frozen past the service's timeout: the session expires, another consumer takes the channel
    zombie.sigstop();
    let mut other = Consumer::connect(&server.url, &tunnel, Duration::from_secs(60)).await;
    heartbeat_until(std::slice::from_mut(&mut other), |c| {
        c[0].open_channels().len() == 1
    })
    .await;

    // thawed: the held batch is acknowledged at once; the batch read ahead must not be delivered
    writeln!(zombie.stdin, "release").unwrap();
    zombie.signal(libc::SIGCONT);
    let new_client = zombie.expect("a new session", client_id_of);
    assert_ne!(new_client, old_client);
    zombie.drain();
    assert!(
        zombie.seen.iter().any(|l| l.starts_with("EVENT SessionLost")),
        "a new session without losing the old one:\n{}",
        zombie.seen.join("\n")
    );
    assert!(
        !zombie.seen.contains(&stale),
        "the zombie delivered its read-ahead after the step-down deadline:\n{}",
        zombie.seen.join("\n")
    );
    server.stop().await;
}
