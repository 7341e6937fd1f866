//! The demo's tunnel service (in-process, durable in a temporary directory) and the producers that feed it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor_actors::connection::{ConnectionConfig, ConnectionLease};
use arbor_proto::tunnel::v1;
use arbor_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use tokio::task::JoinHandle;

use super::ledger::{key_name, Ledger};
use super::DemoError;
use crate::tree::TreeHandle;
use crate::tunnel_service::{RunningServer, ServerOptions, StoreOptions, TunnelServer, TunnelStore};

/// A temporary directory removed on drop (the demo's data must not outlive it, even on an error).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Result<TempDir, DemoError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("arbor-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| DemoError::TempDir {
            path: path.clone(),
            source,
        })?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tunnel service the demo runs and restarts: a store in `dir`, served on one loopback address.
pub struct ServiceHost {
    dir: TempDir,
    addr: SocketAddr,
    /// `None` only while restarting (the old store must be gone before the directory opens again).
    store: Option<Arc<TunnelStore>>,
    server: Option<RunningServer>,
    /// How many times it was restarted.
    pub restarts: u64,
}

impl ServiceHost {
    /// Opens a durable store in a new temporary directory and serves it on a free loopback port.
    pub async fn start() -> Result<ServiceHost, DemoError> {
        let dir = TempDir::new()?;
        let store = TunnelStore::open_async(store_options(dir.path())).await?;
        let server = TunnelServer::start(
            Arc::clone(&store),
            server_options("127.0.0.1:0".parse().expect("an address")),
        )
        .await?;
        Ok(ServiceHost {
            dir,
            addr: server.local_addr(),
            store: Some(store),
            server: Some(server),
            restarts: 0,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The store (`None` only if a restart failed half-way).
    pub fn store(&self) -> Option<&Arc<TunnelStore>> {
        self.store.as_ref()
    }

    /// Stops the server, closes the store, opens it again from disk and serves it on the same address: what
    /// clients see of a service redeployed (their streams break, their sessions must be found again).
    pub async fn restart(&mut self) -> Result<Duration, DemoError> {
        let began = Instant::now();
        if let Some(server) = self.server.take() {
            server.stop(Duration::from_millis(500)).await?;
        }
        // A closed store has let go of the directory (it waited for the stopped server's last reads), so it
        // opens again at once.
        if let Some(store) = self.store.take() {
            store.close_async().await?;
        }
        let store = TunnelStore::open_async(store_options(self.dir.path())).await?;
        self.store = Some(Arc::clone(&store));
        // The port was just released; the kernel may take a moment before it can be bound again.
        let mut attempts = 0;
        let server = loop {
            match TunnelServer::start(Arc::clone(&store), server_options(self.addr)).await {
                Ok(server) => break server,
                Err(err) if attempts < 50 => {
                    attempts += 1;
                    tracing::debug!(%err, "rebinding the demo's service");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => return Err(err.into()),
            }
        };
        self.server = Some(server);
        self.restarts += 1;
        Ok(began.elapsed())
    }

    /// Stops the server and flushes the store.
    pub async fn stop(mut self) -> Result<(), DemoError> {
        if let Some(server) = self.server.take() {
            server.stop(Duration::from_secs(2)).await?;
        }
        if let Some(store) = self.store.take() {
            store.close_async().await?;
        }
        Ok(())
    }
}

fn store_options(dir: &std::path::Path) -> StoreOptions {
    // A channel whose owner died is taken back after a few seconds, so hand-overs show within the demo.
    StoreOptions::durable(dir).closing_timeout(Duration::from_secs(5))
}

fn server_options(listen: SocketAddr) -> ServerOptions {
    ServerOptions::default()
        .listen(listen)
        .maintenance_interval(Duration::from_millis(100))
}

/// What the producers share with the demo.
#[derive(Clone)]
pub struct Production {
    pub ledger: Arc<Mutex<Ledger>>,
    /// Set to stop producing (the producers finish the batch in flight first).
    pub stop: Arc<AtomicBool>,
    /// Appends that failed and were retried.
    pub retries: Arc<AtomicU64>,
}

/// Starts `producers` tasks appending to `tunnel_id`, each through its own lease on the pooled connection to
/// `target` (one connection for them all), `rate` records per second in all, keys
/// spread over the tasks (each key has one producer, which awaits every append: a key's records enter the
/// tunnel in sequence order). Each task stops when told or after `max_records` of its own, whichever is
/// first; an append that fails is retried as it was (same sequence numbers) until it is acknowledged.
pub async fn start_producers(
    tree: &TreeHandle,
    target: &ConnectionConfig,
    tunnel_id: &str,
    (keys, producers): (usize, usize),
    rate: u32,
    max_records: u64,
    production: &Production,
) -> Result<Vec<JoinHandle<()>>, DemoError> {
    let mut tasks = Vec::new();
    for p in 0..producers {
        let lease = tree.acquire(target.clone()).await?;
        tasks.push({
            let my_keys: Vec<usize> = (0..keys).filter(|k| k % producers == p).collect();
            let per_second = f64::from(rate.max(1)) / producers as f64;
            let every = Duration::from_secs_f64(my_keys.len() as f64 / per_second);
            let task = Producer {
                lease,
                tunnel_id: tunnel_id.to_string(),
                keys: my_keys,
                every,
                max_records: max_records / producers as u64,
                production: production.clone(),
            };
            tokio::spawn(task.run())
        });
    }
    Ok(tasks)
}

struct Producer {
    lease: ConnectionLease,
    tunnel_id: String,
    keys: Vec<usize>,
    every: Duration,
    max_records: u64,
    production: Production,
}

impl Producer {
    async fn run(self) {
        let mut client = TunnelServiceClient::new(self.lease.channel());
        // An idempotent producer: a retry of a batch the service stored before the failure is answered as a
        // duplicate instead of being stored twice.
        let producer_id = format!("demo-{:016x}", rand::random::<u64>());
        let mut producer_sequence = 0u64;
        let mut next = vec![0u64; self.keys.len()];
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.production.stop.load(Ordering::Relaxed) && sent < self.max_records {
            tick.tick().await;
            let records: Vec<v1::AppendRecord> = self
                .keys
                .iter()
                .zip(&next)
                .map(|(&key, &sequence)| v1::AppendRecord {
                    key: key_name(key).into_bytes().into(),
                    value: sequence.to_string().into_bytes().into(),
                })
                .collect();
            let request = v1::AppendRequest {
                tunnel_id: self.tunnel_id.clone(),
                tunnel_name: String::new(),
                channel_id: None,
                records,
                producer_id: producer_id.clone(),
                producer_sequence,
            };
            producer_sequence += 1;
            // Retried as it was (same producer sequence) until acknowledged: stored once, whatever failed.
            loop {
                let call = self
                    .lease
                    .request_with_timeout(request.clone(), Duration::from_secs(2));
                match client.append(call).await {
                    Ok(_) => break,
                    Err(status) => {
                        tracing::debug!(%status, "demo append failed; retrying");
                        self.production.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            let mut ledger = self.production.ledger.lock().unwrap_or_else(|p| p.into_inner());
            for (i, &key) in self.keys.iter().enumerate() {
                next[i] += 1;
                ledger.produced(key, next[i]);
            }
            sent += self.keys.len() as u64;
        }
    }
}
