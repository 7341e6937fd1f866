//! Shared by the `tunnel_service_store*` tests: an engine that holds acknowledgements back until a gate
//! opens (the real engine underneath stores at once), and a server over any store.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arbor::tunnel_service::error::StoreError;
use arbor::tunnel_service::store::engine::{Ack, RecoveredTunnel, WriteOp};
use arbor::tunnel_service::store::{Engine, StoredRecord};
use arbor::tunnel_service::{ServerOptions, TunnelServer, TunnelStore};
use tokio::sync::{oneshot, watch};

use crate::tunnel_service_common::{init_tracing, TestServer, LONG};

/// Wraps a real engine; while the gate is closed, every acknowledgement waits for it to open (the write itself
/// is stored by the inner engine at once, as a slow disk would store it and answer late).
pub struct Gated {
    inner: Arc<dyn Engine>,
    open: watch::Sender<bool>,
    submitted: watch::Sender<u64>,
    /// Held acknowledgements fail when the gate opens (a disk that failed the write).
    fail_held: Arc<AtomicBool>,
}

impl Gated {
    pub fn new(inner: Arc<dyn Engine>) -> Arc<Gated> {
        Arc::new(Gated {
            inner,
            open: watch::Sender::new(true),
            submitted: watch::Sender::new(0),
            fail_held: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn close_gate(&self) {
        self.open.send_replace(false);
    }

    /// Held acknowledgements report a failed write when the gate opens.
    pub fn fail_held(&self) {
        self.fail_held.store(true, Ordering::SeqCst);
    }

    pub fn open_gate(&self) {
        self.open.send_replace(true);
    }

    /// Groups submitted so far.
    pub fn submitted(&self) -> u64 {
        *self.submitted.borrow()
    }

    /// Waits until at least `n` groups were submitted.
    pub async fn wait_submitted(&self, n: u64) {
        let mut rx = self.submitted.subscribe();
        tokio::time::timeout(LONG, rx.wait_for(|s| *s >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} groups not submitted within {LONG:?}"))
            .unwrap();
    }
}

impl Engine for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }

    fn is_durable(&self) -> bool {
        self.inner.is_durable()
    }

    fn reads_block(&self) -> bool {
        self.inner.reads_block()
    }

    fn recover(&self) -> Result<Vec<RecoveredTunnel>, StoreError> {
        self.inner.recover()
    }

    fn start_epoch(&self) -> Result<u64, StoreError> {
        self.inner.start_epoch()
    }

    fn admit(&self, bytes: usize) -> Result<(), StoreError> {
        self.inner.admit(bytes)
    }

    fn submit(&self, ops: Vec<WriteOp>) -> Ack {
        let ack = self.inner.submit(ops);
        self.submitted.send_modify(|n| *n += 1);
        if *self.open.borrow() {
            return ack;
        }
        let (tx, rx) = oneshot::channel();
        let mut gate = self.open.subscribe();
        let fail = Arc::clone(&self.fail_held);
        tokio::spawn(async move {
            let _ = gate.wait_for(|open| *open).await;
            let stored = ack.await.unwrap_or(Err(StoreError::Closed));
            let _ = tx.send(if fail.load(Ordering::SeqCst) {
                Err(StoreError::Poisoned {
                    first_error: "the test's disk failed".into(),
                })
            } else {
                stored
            });
        });
        rx
    }

    fn read(
        &self,
        uid: u64,
        channel: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.inner.read(uid, channel, from, max_records, max_bytes)
    }

    fn close(&self) -> Result<(), StoreError> {
        self.inner.close()
    }
}

/// A server on a free loopback port over `store`, maintenance every 20 ms.
pub async fn serve(store: Arc<TunnelStore>) -> TestServer {
    init_tracing();
    let options = ServerOptions::default()
        .listen("127.0.0.1:0".parse().unwrap())
        .maintenance_interval(Duration::from_millis(20));
    let server = TunnelServer::start(store.clone(), options)
        .await
        .expect("start server");
    let url = format!("http://{}", server.local_addr());
    TestServer {
        store,
        server: Some(server),
        url,
    }
}
