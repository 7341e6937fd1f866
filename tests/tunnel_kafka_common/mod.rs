//! Shared by the `tunnel_kafka*` tests: a real one-node Apache Kafka (KRaft) started through
//! `scripts/kafka.sh` in a temp dir and killed by pid, topics, producers, and workers with recording
//! subscribers.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arbor::registry::Registry;
use arbor::supervisor::BoxError;
use arbor::tunnel::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use arbor::tunnel::kafka::rdkafka::client::DefaultClientContext;
use arbor::tunnel::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use arbor::tunnel::kafka::rdkafka::ClientConfig;
use arbor::tunnel::kafka::{KafkaOptions, KafkaSource};
use arbor::tunnel::{Batch, Subscriber, TunnelEvent, TunnelHandle, TunnelOptions, TunnelWorker};
use tokio::sync::{broadcast, Notify};

/// Logs with `RUST_LOG` (off otherwise).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The bound of every wait (generous: a loaded 2-core machine, a JVM broker).
pub const LONG: Duration = Duration::from_secs(120);

/// A broker in a temp dir, started by `scripts/kafka.sh`; a watchdog process kills it (by the pid in its
/// directory) when the test process exits, so that a shared broker never outlives its test binary.
pub struct Broker {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub bootstrap: String,
    /// The extra listeners `kafka.sh` was asked for (`ssl`, `mtls`, `sasl`, `sasl_ssl`), by name.
    pub listeners: BTreeMap<String, String>,
    /// The environment `kafka.sh start` was run with (again at a restart).
    env: Vec<(String, String)>,
    pid: Mutex<u32>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh")
}

fn start_in(dir: &Path, env: &[(String, String)]) -> (String, u32, BTreeMap<String, String>) {
    let out = Command::new("bash")
        .arg(script())
        .arg("start")
        .arg(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run scripts/kafka.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kafka.sh start failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("bootstrap="))
        .expect("bootstrap= line");
    let mut bootstrap = String::new();
    let mut pid = 0;
    for part in line.split_whitespace() {
        if let Some(b) = part.strip_prefix("bootstrap=") {
            bootstrap = b.to_string();
        } else if let Some(p) = part.strip_prefix("pid=") {
            pid = p.parse().expect("pid");
        }
    }
    // The extra listeners: the line after, `name=host:port` each.
    let listeners = stdout
        .lines()
        .skip_while(|l| !l.starts_with("bootstrap="))
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|part| part.split_once('='))
        .map(|(name, address)| (name.to_string(), address.to_string()))
        .collect();
    (bootstrap, pid, listeners)
}

impl Broker {
    /// Starts a broker of its own in a new temp dir.
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// Starts a broker of its own with `kafka.sh`'s environment `env` (`KAFKA_TLS_DIR`, `KAFKA_SASL_USERS`).
    pub fn start_with(env: &[(&str, &str)]) -> Broker {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let (bootstrap, pid, listeners) = start_in(&dir, &env);
        // The watchdog: kills whatever broker runs on DIR once this process is gone.
        let watchdog = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -9 $(cat {dir}/pid) 2>/dev/null; rm -rf {dir}",
            me = std::process::id(),
            dir = dir.display()
        );
        // Not waited for: it outlives this process on purpose (that is its job).
        #[allow(clippy::zombie_processes)]
        Command::new("bash")
            .arg("-c")
            .arg(watchdog)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("watchdog");
        Broker {
            dir,
            _temp: Some(temp),
            bootstrap,
            listeners,
            env,
            pid: Mutex::new(pid),
        }
    }

    /// One broker for every test of this binary (startup takes ~15 s); tests use topics and groups of their own.
    pub fn shared() -> &'static Broker {
        init_tracing();
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(Broker::start)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&self) {
        let pid = *self.pid.lock().unwrap();
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        // Reaped by nobody (not our child): wait until it is gone.
        while unsafe { libc::kill(pid as i32, 0) } == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same data directory and ports.
    pub fn restart(&self) {
        let (bootstrap, pid, listeners) = start_in(&self.dir, &self.env);
        assert_eq!(bootstrap, self.bootstrap, "same ports after a restart");
        assert_eq!(listeners, self.listeners, "same extra listeners after a restart");
        *self.pid.lock().unwrap() = pid;
    }

    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// Creates `topic` with `partitions` partitions and the given topic configs.
    pub async fn create_topic(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().expect("admin client");
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        for (k, v) in configs {
            new = new.set(k, v);
        }
        let results = admin
            .create_topics(
                &[new],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("create_topics");
        for r in results {
            r.expect("topic created");
        }
    }

    /// An idempotent producer waiting for every replica (acks=all).
    pub fn producer(&self) -> FutureProducer {
        self.config()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "120000")
            .create()
            .expect("producer")
    }

    pub fn options(&self, topic: &str, group: &str) -> KafkaOptions {
        KafkaOptions::new(&self.bootstrap, topic, group).revoke_wait(Duration::from_secs(30))
    }
}

/// Sends `count` records to `partition` of `topic`, keys `k{partition}`, values `{prefix}{i}`; waits for each.
pub async fn produce(producer: &FutureProducer, topic: &str, partition: i32, prefix: &str, count: usize) {
    let key = format!("k{partition}");
    for i in 0..count {
        let value = format!("{prefix}{i}");
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(partition)
                    .key(&key)
                    .payload(&value),
                Duration::from_secs(60),
            )
            .await
            .unwrap_or_else(|(err, _)| panic!("produce to {topic}/{partition}: {err}"));
    }
}

/// Worker options for tests: heartbeats every 300 ms, a 10 s session timeout (the broker's minimum is 6 s),
/// idle channels polled at least every 100 ms.
pub fn kafka_worker_options(name: &str) -> TunnelOptions {
    let mut options = TunnelOptions::new(name)
        .min_heartbeat_interval(Duration::from_millis(10))
        .heartbeat(Duration::from_millis(300), Duration::from_secs(10))
        .read_batch_size(100)
        .read_wait(Duration::from_millis(100))
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(200))
        .subscriber_grace(Duration::from_secs(1))
        .call_timeout(Duration::from_secs(10));
    options.empty_read_backoff.max = Duration::from_millis(100);
    options
}

/// One delivered record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub worker: usize,
    pub partition: u32,
    pub offset: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A subscriber recording what it acknowledges, shared by several workers.
#[derive(Clone, Default)]
pub struct Journal {
    pub got: Arc<Mutex<Vec<Got>>>,
    pub changed: Arc<Notify>,
}

/// The subscriber of worker `worker`, writing to a [`Journal`].
#[derive(Clone)]
pub struct Writer {
    pub journal: Journal,
    pub worker: usize,
}

impl Subscriber for Writer {
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let mut got = self.journal.got.lock().unwrap();
        for r in &batch.records {
            got.push(Got {
                worker: self.worker,
                partition: batch.channel_id,
                offset: r.sequence,
                key: r.key.to_vec(),
                value: r.value.to_vec(),
            });
        }
        drop(got);
        self.journal.changed.notify_waiters();
        Ok(())
    }
}

impl Journal {
    pub fn writer(&self, worker: usize) -> Writer {
        Writer {
            journal: self.clone(),
            worker,
        }
    }

    /// Distinct (partition, offset) delivered.
    pub fn distinct(&self) -> BTreeSet<(u32, u64)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|g| (g.partition, g.offset))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits until `n` distinct records were delivered.
    pub async fn wait_distinct(&self, n: usize) {
        wait_until(&format!("{n} distinct records delivered"), || {
            self.distinct().len() >= n
        })
        .await;
    }

    /// (partition, offset) delivered more than once.
    pub fn duplicates(&self) -> BTreeMap<(u32, u64), usize> {
        let mut count: BTreeMap<(u32, u64), usize> = BTreeMap::new();
        for g in self.got.lock().unwrap().iter() {
            *count.entry((g.partition, g.offset)).or_default() += 1;
        }
        count.retain(|_, n| *n > 1);
        count
    }
}

/// Starts a worker consuming `kafka` with a journal writer as its subscriber, in a registry of its own.
pub async fn start_kafka_worker(
    options: TunnelOptions,
    kafka: KafkaOptions,
    journal: &Journal,
    index: usize,
) -> TunnelHandle {
    let options = options.client_tag(format!("w{index}"));
    let source = KafkaSource::new(kafka, &options).expect("kafka options");
    TunnelWorker::builder(options)
        .source(Arc::new(source))
        .run_subscriber(journal.writer(index))
        .registry(Registry::new(format!("kafka-w{index}")))
        .start()
        .await
        .expect("worker starts")
}

/// The partitions a worker runs channels for.
pub fn owned(worker: &TunnelHandle) -> BTreeSet<u32> {
    worker.channels().iter().map(|c| c.channel_id).collect()
}

/// Waits until `done` holds, checking every 20 ms (panics after [`LONG`], naming `what`).
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker's events as they come, kept in order (the handle's receiver would miss those sent before it was
/// taken, and lag).
#[derive(Clone, Default)]
pub struct EventLog(pub Arc<Mutex<Vec<TunnelEvent>>>);

impl EventLog {
    /// Follows `worker`'s events from now on.
    pub fn follow(worker: &TunnelHandle) -> EventLog {
        let log = EventLog::default();
        let mut events = worker.events();
        let sink = log.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => sink.0.lock().unwrap().push(event),
                    Err(broadcast::error::RecvError::Lagged(n)) => panic!("event log lagged by {n}"),
                    Err(_) => return,
                }
            }
        });
        log
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The events from index `from` on.
    pub fn since(&self, from: usize) -> Vec<TunnelEvent> {
        self.0.lock().unwrap()[from..].to_vec()
    }

    /// The channels whose start (ChannelAssigned) was seen and not followed by a release.
    pub fn started(&self) -> BTreeSet<u32> {
        let mut started = BTreeSet::new();
        for event in self.0.lock().unwrap().iter() {
            match event {
                TunnelEvent::ChannelAssigned { channel_id, .. } => {
                    started.insert(*channel_id);
                }
                TunnelEvent::ChannelReleased { channel_id, .. } => {
                    started.remove(channel_id);
                }
                _ => {}
            }
        }
        started
    }
}

/// Everything received on `events` so far, without waiting.
pub fn drain(events: &mut broadcast::Receiver<TunnelEvent>) -> Vec<TunnelEvent> {
    let mut out = Vec::new();
    loop {
        match events.try_recv() {
            Ok(e) => out.push(e),
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => return out,
        }
    }
}
