//! The in-memory engine: records in a `VecDeque` per channel. Nothing survives the process.

use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;

use tokio::sync::oneshot;

use super::engine::{Ack, Engine, RecoveredTunnel, StoredRecord, WriteOp};
use crate::tunnel_service::error::StoreError;

/// Records of every channel, keyed by (tunnel uid, channel).
#[derive(Default)]
pub struct MemoryEngine {
    channels: RwLock<HashMap<(u64, u32), VecDeque<StoredRecord>>>,
}

impl std::fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner()).len();
        f.debug_struct("MemoryEngine")
            .field("channels", &channels)
            .finish()
    }
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        MemoryEngine::default()
    }
}

impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn is_durable(&self) -> bool {
        false
    }

    fn reads_block(&self) -> bool {
        false
    }

    fn recover(&self) -> Result<Vec<RecoveredTunnel>, StoreError> {
        Ok(Vec::new())
    }

    fn submit(&self, ops: Vec<WriteOp>) -> Ack {
        let (tx, rx) = oneshot::channel();
        // A poisoned lock only means a panic elsewhere mid-write of plain collections; the data is still usable.
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        for op in ops {
            match op {
                WriteOp::PutTunnel(def) => {
                    for channel in 0..def.channels.len() as u32 {
                        channels.insert((def.uid, channel), VecDeque::new());
                    }
                }
                WriteOp::DeleteTunnel { uid, channels: count } => {
                    for channel in 0..count {
                        channels.remove(&(uid, channel));
                    }
                }
                WriteOp::Append {
                    uid,
                    channel,
                    first_seq,
                    append_ms,
                    records,
                } => {
                    let log = channels.entry((uid, channel)).or_default();
                    log.extend(
                        records
                            .into_iter()
                            .enumerate()
                            .map(|(i, (key, value))| StoredRecord {
                                seq: first_seq + i as u64,
                                append_ms,
                                key,
                                value,
                            }),
                    );
                }
                // Nothing outlives the process, so there is nothing to recover these from.
                WriteOp::PutChannelMeta { .. }
                | WriteOp::PutProducer { .. }
                | WriteOp::DeleteProducer { .. } => {}
                WriteOp::Trim {
                    uid, channel, below, ..
                } => {
                    if let Some(log) = channels.get_mut(&(uid, channel)) {
                        while log.front().is_some_and(|r| r.seq < below) {
                            log.pop_front();
                        }
                    }
                }
            }
        }
        let _ = tx.send(Ok(()));
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
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        let Some(log) = channels.get(&(uid, channel)) else {
            return Ok(Vec::new());
        };
        let Some(first) = log.front().map(|r| r.seq) else {
            return Ok(Vec::new());
        };
        let start = from.saturating_sub(first) as usize;
        let mut out = Vec::with_capacity(max_records.min(log.len().saturating_sub(start)));
        let mut bytes = 0;
        for record in log.range(start.min(log.len())..).take(max_records) {
            bytes += record.key.len() + record.value.len();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(record.clone());
        }
        Ok(out)
    }

    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
