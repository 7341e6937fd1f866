//! Shared by the `tunnel_worker*`, `tunnel_channel*` and `tunnel_ledger*` tests: a real tunnel service on
//! 127.0.0.1 and workers consuming it through arbor connections, with subscribers that record what they get.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor::connection::{ConnectionConfig, ConnectionHandle};
use arbor::supervisor::BoxError;
use arbor::tunnel::{Batch, Subscriber, TunnelEvent, TunnelHandle, TunnelOptions, TunnelWorker};
use tokio::sync::{broadcast, Notify};

#[path = "../tunnel_service_common/mod.rs"]
pub mod service;

pub use service::*;

/// Heartbeats fast enough for tests (the floor is lowered on purpose).
pub fn fast_options(tunnel_id: &str) -> TunnelOptions {
    TunnelOptions::new(tunnel_id)
        .min_heartbeat_interval(Duration::from_millis(10))
        .heartbeat(Duration::from_millis(100), Duration::from_secs(2))
        .read_batch_size(100)
        .read_wait(Duration::from_millis(100))
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(200))
        .subscriber_grace(Duration::from_secs(1))
        .call_timeout(Duration::from_secs(2))
}

/// A connection to the service at `url` (`http://127.0.0.1:port`).
pub async fn connection(url: &str) -> ConnectionHandle {
    let target = format!("{}?disableTls=true", url.replace("http://", "grpc://"));
    ConnectionHandle::start(ConnectionConfig::parse(&target).expect("connection string"))
        .await
        .expect("connection starts")
}

/// One delivered record: channel, position, key, value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub channel: u32,
    pub sequence: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A subscriber that records every record it acknowledges, in order.
#[derive(Clone, Default)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub changed: Arc<Notify>,
}

impl Subscriber for Recorder {
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let mut seen = self.seen.lock().unwrap();
        for r in &batch.records {
            seen.push(Seen {
                channel: batch.channel_id,
                sequence: r.sequence,
                key: r.key.to_vec(),
                value: r.value.to_vec(),
            });
        }
        drop(seen);
        self.changed.notify_waiters();
        Ok(())
    }
}

impl Recorder {
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until at least `n` records were delivered (panics after [`LONG`]).
    pub async fn wait_for(&self, n: usize) {
        tokio::time::timeout(LONG, async {
            loop {
                let notified = self.changed.notified();
                if self.count() >= n {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} of {n} records delivered", self.count()));
    }

    /// Values per key in delivery order.
    pub fn by_key(&self) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
        let mut out: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
        for s in self.seen.lock().unwrap().iter() {
            out.entry(s.key.clone()).or_default().push(s.value.clone());
        }
        out
    }
}

/// Starts a worker on `tunnel_id` at `url` with a recording subscriber run by the worker.
pub async fn start_worker(
    url: &str,
    options: TunnelOptions,
    registry: arbor::registry::Registry<arbor::tunnel::TunnelEntry>,
) -> (TunnelHandle, Recorder) {
    let recorder = Recorder::default();
    let worker = TunnelWorker::builder(options)
        .connection(connection(url).await)
        .run_subscriber(recorder.clone())
        .registry(registry)
        .start()
        .await
        .expect("worker starts");
    (worker, recorder)
}

/// The next event matching `pick`, skipping others (panics after [`LONG`]).
pub async fn next_event<T>(
    events: &mut broadcast::Receiver<TunnelEvent>,
    mut pick: impl FnMut(&TunnelEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(LONG, async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(value) = pick(&event) {
                        return value;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(err) => panic!("events closed: {err}"),
            }
        }
    })
    .await
    .expect("timed out waiting for a tunnel event")
}
