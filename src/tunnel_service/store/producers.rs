//! Idempotent producers of one tunnel: each producer id's last batch (sequence number and positions), the
//! least recently used forgotten beyond a limit. Pure bookkeeping under the tunnel's lock; the store persists
//! every change in the same engine write as the batch's records.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::watch;

use super::engine::ProducerBatch;
use super::types::ChannelAppend;
use crate::tunnel_service::error::ServiceError;

/// How a batch still being stored ends, for retries that arrive meanwhile: `None` until it is known.
pub(crate) type Outcome = watch::Receiver<Option<Result<(), ServiceError>>>;

/// A producer's entry.
#[derive(Debug, Clone)]
struct Entry {
    batch: ProducerBatch,
    /// Set while the last batch is submitted but not yet acknowledged.
    in_flight: Option<Outcome>,
    /// What the entry was before the batch in flight, to restore if that batch fails.
    before: Option<ProducerBatch>,
}

/// What to do with a producer's batch.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// A new batch: store it.
    New,
    /// A retry of the last batch, stored: answer with these positions.
    Duplicate(Vec<ChannelAppend>),
    /// A retry of the last batch while it is still being stored: wait for it, then answer with these positions.
    InFlight(Outcome, Vec<ChannelAppend>),
}

/// The producers of one tunnel.
#[derive(Debug)]
pub(crate) struct Producers {
    entries: HashMap<String, Entry>,
    /// `used` → producer id: the least recently used first.
    by_use: BTreeMap<u64, String>,
    next_use: u64,
    capacity: usize,
}

impl Producers {
    /// The producers found in storage (any order), keeping at most `capacity`.
    pub(crate) fn new(recovered: Vec<(String, ProducerBatch)>, capacity: usize) -> Producers {
        let mut producers = Producers {
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            next_use: 0,
            capacity: capacity.max(1),
        };
        for (id, batch) in recovered {
            producers.next_use = producers.next_use.max(batch.used + 1);
            producers.by_use.insert(batch.used, id.clone());
            producers.entries.insert(
                id,
                Entry {
                    batch,
                    in_flight: None,
                    before: None,
                },
            );
        }
        producers
    }

    /// How many producers are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Checks batch `sequence` of `producer` against its last one: the first batch of an unknown producer and
    /// the last one + 1 are new, the last one again is a retry (a use too, though its recency is kept in memory
    /// only), anything else is refused naming `producer_sequence`.
    pub(crate) fn check(&mut self, producer: &str, sequence: u64) -> Result<Verdict, ServiceError> {
        let Some(entry) = self.entries.get_mut(producer) else {
            return Ok(Verdict::New);
        };
        let last = entry.batch.sequence;
        if sequence == last {
            self.by_use.remove(&entry.batch.used);
            entry.batch.used = self.next_use;
            self.by_use.insert(self.next_use, producer.to_string());
            self.next_use += 1;
            let appends = entry.batch.appends.clone();
            return Ok(match &entry.in_flight {
                Some(outcome) => Verdict::InFlight(outcome.clone(), appends),
                None => Verdict::Duplicate(appends),
            });
        }
        if last.checked_add(1) == Some(sequence) {
            return Ok(Verdict::New);
        }
        Err(ServiceError::invalid(
            "producer_sequence",
            format!(
                "{sequence} for producer {producer}: its last batch was {last}, so the next is {} (or {last} again \
                 to retry)",
                last.saturating_add(1)
            ),
        ))
    }

    /// Records a new batch of `producer`, in flight until [`Producers::finish`]. Returns the batch to persist
    /// and the producers forgotten to stay within the capacity (to delete from storage).
    pub(crate) fn record(
        &mut self,
        producer: &str,
        sequence: u64,
        appends: Vec<ChannelAppend>,
        outcome: Outcome,
    ) -> (ProducerBatch, Vec<String>) {
        let used = self.next_use;
        self.next_use += 1;
        let batch = ProducerBatch {
            sequence,
            appends,
            used,
        };
        let before = self.entries.remove(producer).map(|old| {
            self.by_use.remove(&old.batch.used);
            old.batch
        });
        self.by_use.insert(used, producer.to_string());
        self.entries.insert(
            producer.to_string(),
            Entry {
                batch: batch.clone(),
                in_flight: Some(outcome),
                before,
            },
        );
        let mut forgotten = Vec::new();
        while self.entries.len() > self.capacity {
            // The least recently used that is not being stored (the one just recorded is the most recent).
            let Some((&used, id)) = self
                .by_use
                .iter()
                .find(|(_, id)| self.entries.get(*id).is_some_and(|e| e.in_flight.is_none()))
            else {
                break;
            };
            let id = id.clone();
            self.by_use.remove(&used);
            self.entries.remove(&id);
            forgotten.push(id);
        }
        (batch, forgotten)
    }

    /// The batch `sequence` of `producer` was stored (`stored`) or failed: a stored one becomes the retry
    /// answer; a failed one is forgotten, restoring the entry before it (its retry is then new again).
    pub(crate) fn finish(&mut self, producer: &str, sequence: u64, stored: bool) {
        let Some(entry) = self.entries.get_mut(producer) else {
            return;
        };
        if entry.batch.sequence != sequence || entry.in_flight.is_none() {
            return;
        }
        entry.in_flight = None;
        if stored {
            entry.before = None;
            return;
        }
        let used = entry.batch.used;
        match entry.before.take() {
            Some(before) => entry.batch = ProducerBatch { used, ..before },
            None => {
                self.entries.remove(producer);
                self.by_use.remove(&used);
            }
        }
    }
}

/// Each record's (channel, sequence number), in request order, given the channel each went to and where each
/// channel's records start. `None` when the counts per channel do not match the appends (a "retry" that is
/// not the same batch).
pub(crate) fn positions(routes: &[u32], appends: &[ChannelAppend]) -> Option<Vec<(u32, u64)>> {
    let mut next: BTreeMap<u32, (u64, u64)> = appends
        .iter()
        .map(|a| (a.channel, (a.first_seq, a.first_seq + u64::from(a.count))))
        .collect();
    let mut out = Vec::with_capacity(routes.len());
    for &channel in routes {
        let (at, end) = next.get_mut(&channel)?;
        if *at >= *end {
            return None;
        }
        out.push((channel, *at));
        *at += 1;
    }
    next.values().all(|(at, end)| at == end).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appends(first_seq: u64) -> Vec<ChannelAppend> {
        vec![ChannelAppend {
            channel: 0,
            first_seq,
            count: 2,
        }]
    }

    fn outcome() -> (watch::Sender<Option<Result<(), ServiceError>>>, Outcome) {
        watch::channel(None)
    }

    #[test]
    fn sequences_are_first_any_then_consecutive_and_retries_are_duplicates() {
        let mut p = Producers::new(Vec::new(), 10);
        assert!(matches!(p.check("a", 7), Ok(Verdict::New)));
        let (_tx, rx) = outcome();
        p.record("a", 7, appends(0), rx);
        assert!(matches!(p.check("a", 7), Ok(Verdict::InFlight(_, _))));
        p.finish("a", 7, true);
        match p.check("a", 7) {
            Ok(Verdict::Duplicate(a)) => assert_eq!(a, appends(0)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(p.check("a", 8), Ok(Verdict::New)));
        for bad in [6, 9, 0, u64::MAX] {
            let err = p.check("a", bad).unwrap_err();
            assert_eq!(err.field(), Some("producer_sequence"), "{bad}");
        }
    }

    #[test]
    fn a_failed_batch_restores_the_entry_before_it() {
        let mut p = Producers::new(Vec::new(), 10);
        let (_tx, rx) = outcome();
        p.record("a", 1, appends(0), rx.clone());
        p.finish("a", 1, true);
        p.record("a", 2, appends(2), rx.clone());
        p.finish("a", 2, false);
        assert!(matches!(p.check("a", 1), Ok(Verdict::Duplicate(_))));
        assert!(matches!(p.check("a", 2), Ok(Verdict::New)));
        p.record("b", 5, appends(4), rx);
        p.finish("b", 5, false);
        assert_eq!(p.len(), 1);
        assert!(matches!(p.check("b", 99), Ok(Verdict::New)));
    }

    #[test]
    fn the_least_recently_used_is_forgotten_beyond_the_capacity() {
        let recovered = vec![
            (
                "old".to_string(),
                ProducerBatch {
                    sequence: 1,
                    appends: appends(0),
                    used: 3,
                },
            ),
            (
                "older".to_string(),
                ProducerBatch {
                    sequence: 1,
                    appends: appends(2),
                    used: 1,
                },
            ),
        ];
        let mut p = Producers::new(recovered, 2);
        let (_tx, rx) = outcome();
        let (batch, forgotten) = p.record("new", 1, appends(4), rx);
        assert_eq!(batch.used, 4, "use order continues after the recovered ones");
        assert_eq!(forgotten, vec!["older".to_string()]);
        assert_eq!(p.len(), 2);
        assert!(matches!(p.check("older", 50), Ok(Verdict::New)));
    }

    #[test]
    fn positions_follow_routes_and_refuse_a_different_batch() {
        let appends = vec![
            ChannelAppend {
                channel: 1,
                first_seq: 10,
                count: 2,
            },
            ChannelAppend {
                channel: 3,
                first_seq: 0,
                count: 1,
            },
        ];
        assert_eq!(
            positions(&[1, 3, 1], &appends),
            Some(vec![(1, 10), (3, 0), (1, 11)])
        );
        assert_eq!(positions(&[1, 3], &appends), None);
        assert_eq!(positions(&[1, 1, 1], &appends), None);
        assert_eq!(positions(&[1, 3, 2], &appends), None);
    }
}
