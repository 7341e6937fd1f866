//! Append and seal: the writes whose completion publishes what readers see, and the idempotent producer's
//! answers. A write's completion runs whether or not the request still waits (see [`on_ack`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use arbor_proto::tunnel::domain::{route_key, ChannelType};
use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::engine::{self, BatchIndex, WriteOp};
use super::producers::{self, Verdict};
use super::tunnel::{now_ms, ChannelRt};
use super::types::{Appended, ChannelAppend, ProducerRef, TunnelRef};
use super::{TunnelStore, META_WRITE_BYTES};
use crate::tunnel_service::error::{ServiceError, StoreError};

impl TunnelStore {
    /// Appends records (validated: sizes and counts, the producer id's syntax), to `channel` or routed by key
    /// hash over the stream channels; answers once they are stored. With a `producer`, a retry of its last batch
    /// is answered with the original positions and stores nothing (also while the original is still being
    /// stored: the retry waits for it); the producer's new sequence number is stored in the same engine write as
    /// the records.
    ///
    /// # Errors
    /// [`ServiceError::TunnelNotFound`]; [`ServiceError::InvalidArgument`] for an unknown `channel_id`, a
    /// key-routed append to a tunnel without stream channels, or a `producer_sequence` out of order;
    /// [`ServiceError::FailedPrecondition`] for a sealed channel; [`ServiceError::StorageOverloaded`] when the
    /// engine's write queue is full (nothing changed); [`ServiceError::Storage`].
    pub async fn append(
        &self,
        tunnel: &TunnelRef,
        channel: Option<u32>,
        records: Vec<(Bytes, Bytes)>,
        producer: Option<ProducerRef>,
    ) -> Result<Appended, ServiceError> {
        let tunnel = self.find(tunnel)?;
        let routes: Vec<u32> = match channel {
            Some(c) => vec![c; records.len()],
            None => {
                if tunnel.stream_channels.is_empty() {
                    return Err(ServiceError::invalid(
                        "channel_id",
                        "required: the tunnel has no stream channels to route keys to",
                    ));
                }
                let n = tunnel.stream_channels.len() as u32;
                records
                    .iter()
                    .map(|(key, _)| tunnel.stream_channels[route_key(key, n) as usize])
                    .collect()
            }
        };
        let bytes: usize = records.iter().map(|(k, v)| k.len() + v.len()).sum();
        // Group by channel, keeping request order within each.
        let mut groups: BTreeMap<u32, Vec<(Bytes, Bytes)>> = BTreeMap::new();
        for (record, &c) in records.into_iter().zip(&routes) {
            groups.entry(c).or_default().push(record);
        }
        let append_ms = now_ms();
        let planned = {
            let mut state = tunnel.lock();
            state.live(&tunnel.id)?;
            for &c in groups.keys() {
                state.channel_index(c, "channel_id")?;
            }
            // A retry is answered from what was stored, even if the channel was sealed since.
            let verdict = match &producer {
                Some(p) => state.producers.check(&p.id, p.sequence)?,
                None => Verdict::New,
            };
            match verdict {
                Verdict::Duplicate(appends) => Planned::Duplicate(appends),
                Verdict::InFlight(outcome, appends) => Planned::AfterOriginal(outcome, appends),
                Verdict::New => {
                    for &c in groups.keys() {
                        if let Some(end) = state.channels[c as usize].meta.sealed_end {
                            return Err(ServiceError::FailedPrecondition {
                                channel: c,
                                reason: format!("sealed at sequence number {end}: it takes no more records"),
                            });
                        }
                    }
                    // Refused before anything changes: a full queue leaves no gap in the sequence numbers.
                    self.engine.admit(bytes + META_WRITE_BYTES * (groups.len() + 1))?;
                    let mut ops = Vec::with_capacity(groups.len() + 2);
                    let mut appended = Vec::with_capacity(groups.len());
                    for (c, records) in groups {
                        let ch = &mut state.channels[c as usize];
                        let count = records.len() as u64;
                        let bytes: u64 = records.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
                        let first_seq = ch.next_seq;
                        ch.next_seq += count;
                        ch.batches.push_back(BatchIndex {
                            first: first_seq,
                            count,
                            bytes,
                            append_ms,
                        });
                        ch.retained_bytes += bytes;
                        ops.push(WriteOp::Append {
                            uid: tunnel.def.uid,
                            channel: c,
                            first_seq,
                            append_ms,
                            records,
                        });
                        if let Some(trim) = tunnel.trim(&mut state, c as usize, append_ms) {
                            ops.extend(trim);
                        }
                        appended.push(ChannelAppend {
                            channel: c,
                            first_seq,
                            count: count as u32,
                        });
                    }
                    let outcome = producer.as_ref().map(|p| {
                        let (tx, rx) = watch::channel(None);
                        let (batch, forgotten) =
                            state.producers.record(&p.id, p.sequence, appended.clone(), rx);
                        ops.push(WriteOp::PutProducer {
                            uid: tunnel.def.uid,
                            producer_id: p.id.clone(),
                            batch,
                        });
                        ops.extend(forgotten.into_iter().map(|producer_id| WriteOp::DeleteProducer {
                            uid: tunnel.def.uid,
                            producer_id,
                        }));
                        tx
                    });
                    Planned::Submitted(self.engine.submit(ops), appended, outcome)
                }
            }
        };
        let appends = match planned {
            Planned::Duplicate(appends) => return duplicate(&tunnel.id, &routes, appends, producer),
            Planned::AfterOriginal(mut outcome, appends) => {
                let finished = outcome.wait_for(Option::is_some).await.map(|r| r.clone());
                match finished {
                    Ok(Some(Ok(()))) => return duplicate(&tunnel.id, &routes, appends, producer),
                    Ok(Some(Err(e))) => return Err(e),
                    _ => return Err(StoreError::Closed.into()),
                }
            }
            Planned::Submitted(ack, appended, outcome_tx) => {
                let (completed, published, producer) =
                    (Arc::clone(&tunnel), appended.clone(), producer.clone());
                let done = on_ack(ack, move |result| {
                    let mut state = completed.lock();
                    if result.is_ok() {
                        for a in &published {
                            publish(
                                &mut state.channels[a.channel as usize],
                                a.first_seq + u64::from(a.count),
                            );
                        }
                    }
                    if let Some(p) = &producer {
                        state.producers.finish(&p.id, p.sequence, result.is_ok());
                    }
                    drop(state);
                    if let Some(tx) = outcome_tx {
                        tx.send_replace(Some(result.clone()));
                    }
                });
                outcome(done).await?;
                appended
            }
        };
        let records = producers::positions(&routes, &appends).unwrap_or_default();
        Ok(Appended {
            tunnel_id: tunnel.id.clone(),
            channels: appends,
            records,
            duplicate: false,
        })
    }

    /// Seals a base channel; returns its final end. Answers once the seal is stored, and so (writes are stored
    /// in order) once every append accepted before it is stored and readable.
    ///
    /// # Errors
    /// [`ServiceError::TunnelNotFound`], [`ServiceError::InvalidArgument`] (unknown channel),
    /// [`ServiceError::FailedPrecondition`] (a stream channel), [`ServiceError::Storage`].
    pub async fn seal(&self, tunnel: &TunnelRef, channel: u32) -> Result<u64, ServiceError> {
        let tunnel = self.find(tunnel)?;
        let (ack, end) = {
            let mut state = tunnel.lock();
            state.live(&tunnel.id)?;
            let index = state.channel_index(channel, "channel_id")?;
            let ch = &mut state.channels[index];
            if ch.channel_type != ChannelType::Base {
                return Err(ServiceError::FailedPrecondition {
                    channel,
                    reason: "only BASE channels can be sealed".into(),
                });
            }
            if let Some(end) = ch.meta.sealed_end {
                return Ok(end);
            }
            // The end counts the appends in flight: they are stored before the seal (submission order).
            ch.meta.sealed_end = Some(ch.next_seq);
            let meta = ch.meta;
            let ack = self.engine.submit(vec![WriteOp::PutChannelMeta {
                uid: tunnel.def.uid,
                channel,
                meta,
            }]);
            (ack, ch.next_seq)
        };
        let sealed = Arc::clone(&tunnel);
        let done = on_ack(ack, move |result| {
            if result.is_ok() {
                let mut state = sealed.lock();
                let ch = &mut state.channels[channel as usize];
                publish(ch, end);
                ch.end_tx.send_modify(|_| {});
            }
        });
        outcome(done).await?;
        tracing::info!(tunnel = %tunnel.id, channel, end, "tunnel channel sealed");
        Ok(end)
    }
}

/// How an append goes on once the tunnel's lock is released.
enum Planned {
    /// A retry of a stored batch.
    Duplicate(Vec<ChannelAppend>),
    /// A retry of a batch still being stored: its outcome decides.
    AfterOriginal(producers::Outcome, Vec<ChannelAppend>),
    /// A new batch, submitted; the outcome's sender tells retries that wait for it.
    Submitted(
        engine::Ack,
        Vec<ChannelAppend>,
        Option<watch::Sender<Option<Result<(), ServiceError>>>>,
    ),
}

pub(super) async fn wait_ack(ack: engine::Ack) -> Result<(), ServiceError> {
    match ack.await {
        Ok(result) => result.map_err(ServiceError::from),
        Err(_) => Err(StoreError::Closed.into()),
    }
}

/// Runs `finish` with a write's result as soon as the engine acknowledges it, whether or not anyone still
/// waits for the answer: at once when the ack is already there (the memory engine), else on a task of its own.
/// Call it with no lock held (`finish` may take the tunnel's). The receiver gets the same result.
pub(super) fn on_ack<F>(mut ack: engine::Ack, finish: F) -> oneshot::Receiver<Result<(), ServiceError>>
where
    F: FnOnce(&Result<(), ServiceError>) + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let ready = match ack.try_recv() {
        Ok(result) => Some(result.map_err(ServiceError::from)),
        Err(oneshot::error::TryRecvError::Closed) => Some(Err(StoreError::Closed.into())),
        Err(oneshot::error::TryRecvError::Empty) => None,
    };
    match ready {
        Some(result) => {
            finish(&result);
            let _ = tx.send(result);
        }
        None => {
            tokio::spawn(async move {
                let result = wait_ack(ack).await;
                finish(&result);
                let _ = tx.send(result);
            });
        }
    }
    rx
}

pub(super) async fn outcome(done: oneshot::Receiver<Result<(), ServiceError>>) -> Result<(), ServiceError> {
    done.await.unwrap_or_else(|_| Err(StoreError::Closed.into()))
}

/// Moves a channel's readable end to `end` (a stored position: every lower one is stored too, as groups are
/// stored in submission order) unless a later write already moved it further.
fn publish(ch: &mut ChannelRt, end: u64) {
    if end > ch.visible_end {
        ch.visible_end = end;
        ch.end_tx.send_replace(end);
    }
}

/// The answer to a retry of a stored batch: its original positions.
fn duplicate(
    tunnel_id: &str,
    routes: &[u32],
    appends: Vec<ChannelAppend>,
    producer: Option<ProducerRef>,
) -> Result<Appended, ServiceError> {
    let Some(records) = producers::positions(routes, &appends) else {
        let sequence = producer.map_or(0, |p| p.sequence);
        return Err(ServiceError::invalid(
            "producer_sequence",
            format!("{sequence} was stored with other channels or record counts: this is not a retry of that batch"),
        ));
    };
    tracing::debug!(
        tunnel = tunnel_id,
        records = records.len(),
        "tunnel append retry answered as a duplicate"
    );
    Ok(Appended {
        tunnel_id: tunnel_id.to_string(),
        channels: appends,
        records,
        duplicate: true,
    })
}
