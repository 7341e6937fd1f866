//! The durable engine's writer thread: group commit (stage per key, one fjall batch, one fsync, then the
//! acknowledgements) and the poisoning after a failed write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, PersistMode};

use super::{
    channel_key, encode_batch, engine_err, producer_key, producer_prefix, record_key, tunnel_key, Request,
    SyncHook, GROUP_COMMIT_MAX_BYTES,
};
use crate::tunnel_service::error::StoreError;
use crate::tunnel_service::store::codec;
use crate::tunnel_service::store::engine::WriteOp;

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) db: Database,
    pub(super) records: Keyspace,
    pub(super) meta: Keyspace,
    pub(super) poisoned: Arc<Mutex<Option<String>>>,
    pub(super) queued_bytes: Arc<AtomicU64>,
    pub(super) on_sync: Option<SyncHook>,
}

/// One group commit's writes, last write per key winning, before they go into one fjall batch. A key written
/// earlier in the same group is not yet in the keyspaces, so deletes (trim, tunnel deletion) must find it here.
#[derive(Default)]
struct Staged {
    /// Record keys: `Some` inserts, `None` removes (weakly: every record key is written once).
    records: BTreeMap<[u8; 20], Option<Vec<u8>>>,
    /// Metadata keys: `Some` inserts, `None` removes.
    meta: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Staged {
    /// Removes the records in `from..=to`: committed ones by a weak tombstone, staged ones by never writing them.
    fn remove_records(
        &mut self,
        committed: &Keyspace,
        from: [u8; 20],
        to: [u8; 20],
    ) -> Result<(), StoreError> {
        for guard in committed.range(from..=to) {
            let key = guard.key().map_err(engine_err("scan records to remove"))?;
            let key: [u8; 20] = key.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                what: "record key",
                reason: format!("{} bytes, expected 20", key.len()),
            })?;
            self.records.insert(key, None);
        }
        let staged: Vec<[u8; 20]> = self
            .records
            .range(from..=to)
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect();
        for key in staged {
            self.records.remove(&key);
        }
        Ok(())
    }

    /// Removes every metadata key starting with `prefix`, committed or staged.
    fn remove_meta_prefix(&mut self, committed: &Keyspace, prefix: &[u8]) -> Result<(), StoreError> {
        for guard in committed.prefix(prefix) {
            let key = guard.key().map_err(engine_err("scan metadata to remove"))?;
            self.meta.insert(key.to_vec(), None);
        }
        for (_, value) in self
            .meta
            .range_mut(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            *value = None;
        }
        Ok(())
    }
}

impl Writer {
    pub(super) fn run(self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            let mut bytes = op_bytes(&group[0].0);
            while bytes < GROUP_COMMIT_MAX_BYTES {
                match rx.try_recv() {
                    Ok(next) => {
                        bytes += op_bytes(&next.0);
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            self.queued_bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
            let poisoned = self.poisoned.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let result = match poisoned {
                Some(first_error) => Err(first_error),
                None => self.commit(&group).map_err(|e| {
                    let text = crate::tunnel_service::error::chain(&e);
                    tracing::error!(error = %text, "tunnel store write failed; refusing writes until restart");
                    *self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) = Some(text.clone());
                    text
                }),
            };
            for (_, ack) in group {
                let _ = ack.send(
                    result
                        .clone()
                        .map_err(|first_error| StoreError::Poisoned { first_error }),
                );
            }
        }
    }

    /// Writes the group as one atomic batch, then fsyncs the journal once: nothing is acknowledged before the
    /// fsync that covers it.
    fn commit(&self, group: &[Request]) -> Result<(), StoreError> {
        let mut staged = Staged::default();
        for (ops, _) in group {
            for op in ops {
                self.stage(&mut staged, op)?;
            }
        }
        let mut batch = self.db.batch();
        for (key, value) in staged.records {
            match value {
                Some(value) => batch.insert(&self.records, key, value),
                None => batch.remove_weak(&self.records, key),
            }
        }
        for (key, value) in staged.meta {
            match value {
                Some(value) => batch.insert(&self.meta, key, value),
                None => batch.remove(&self.meta, key),
            }
        }
        batch.commit().map_err(engine_err("commit"))?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(engine_err("fsync"))?;
        if let Some(on_sync) = &self.on_sync {
            on_sync(group.len());
        }
        Ok(())
    }

    fn stage(&self, staged: &mut Staged, op: &WriteOp) -> Result<(), StoreError> {
        match op {
            WriteOp::PutTunnel(def) => {
                staged
                    .meta
                    .insert(tunnel_key(def.uid).to_vec(), Some(codec::encode_tunnel(def)));
            }
            WriteOp::DeleteTunnel { uid, channels } => {
                staged.meta.insert(tunnel_key(*uid).to_vec(), None);
                for channel in 0..*channels {
                    staged.meta.insert(channel_key(*uid, channel).to_vec(), None);
                }
                staged.remove_meta_prefix(&self.meta, &producer_prefix(*uid))?;
                staged.remove_records(
                    &self.records,
                    record_key(*uid, 0, 0),
                    record_key(*uid, u32::MAX, u64::MAX),
                )?;
            }
            WriteOp::Append {
                uid,
                channel,
                first_seq,
                append_ms,
                records,
            } => {
                staged.records.insert(
                    record_key(*uid, *channel, *first_seq),
                    Some(encode_batch(*append_ms, records)),
                );
            }
            WriteOp::PutChannelMeta { uid, channel, meta } => {
                staged.meta.insert(
                    channel_key(*uid, *channel).to_vec(),
                    Some(codec::encode_channel_meta(meta)),
                );
            }
            WriteOp::PutProducer {
                uid,
                producer_id,
                batch,
            } => {
                staged.meta.insert(
                    producer_key(*uid, producer_id),
                    Some(codec::encode_producer(batch)),
                );
            }
            WriteOp::DeleteProducer { uid, producer_id } => {
                staged.meta.insert(producer_key(*uid, producer_id), None);
            }
            WriteOp::Trim {
                uid,
                channel,
                from,
                below,
            } => {
                // The store trims whole append batches, so every batch key in from..below goes.
                if below > from {
                    staged.remove_records(
                        &self.records,
                        record_key(*uid, *channel, *from),
                        record_key(*uid, *channel, below - 1),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// What a group of writes weighs in the queue: record bytes, plus a fixed cost per operation.
pub(crate) fn op_bytes(ops: &[WriteOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            WriteOp::Append { records, .. } => records.iter().map(|(k, v)| k.len() + v.len() + 32).sum(),
            _ => 64,
        })
        .sum()
}
