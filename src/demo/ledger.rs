//! The demo's books: what the producers had acknowledged, and what the subscribers were handed.
//!
//! Records carry their key's sequence number (`key-07` → `41`), and each key is produced by one task that
//! awaits every append, so a key's records sit in the tunnel in sequence order. The ledger can then tell,
//! per key:
//! - **lost**: acknowledged by the service, never delivered (must stay 0: delivery is at-least-once);
//! - **duplicates**: delivered again (expected after a crash or a hand-over: the new owner resumes at the
//!   last checkpoint, which is at or behind what was delivered);
//! - **out of order**: a first delivery that skipped ahead of an undelivered record (must stay 0: order
//!   holds within a channel, and a key always maps to one channel).

use std::fmt;

/// Key `index` as it travels in records.
pub fn key_name(index: usize) -> String {
    format!("key-{index:02}")
}

/// The key index and sequence number a record carries, if it is one of the demo's.
pub fn parse_record(key: &[u8], value: &[u8]) -> Option<(usize, u64)> {
    let key = std::str::from_utf8(key)
        .ok()?
        .strip_prefix("key-")?
        .parse()
        .ok()?;
    let sequence = std::str::from_utf8(value).ok()?.parse().ok()?;
    Some((key, sequence))
}

#[derive(Debug, Clone, Default)]
struct KeyBook {
    /// Records `0..produced` were acknowledged by the service.
    produced: u64,
    /// `seen[s]`: record `s` was delivered at least once.
    seen: Vec<bool>,
    /// One past the highest record delivered for the first time.
    fresh_end: u64,
}

/// Per-key books of production and delivery.
#[derive(Debug, Clone)]
pub struct Ledger {
    keys: Vec<KeyBook>,
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    foreign: u64,
}

/// The ledger's totals at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Records the service acknowledged.
    pub produced: u64,
    /// Deliveries, duplicates included.
    pub delivered: u64,
    /// Distinct acknowledged records delivered.
    pub unique: u64,
    /// Deliveries of a record delivered before.
    pub duplicates: u64,
    /// First deliveries that skipped an undelivered record of their key.
    pub out_of_order: u64,
    /// Acknowledged records not delivered (yet; at the end: lost).
    pub missing: u64,
    /// Records that were not the demo's (cannot happen unless someone appends to the demo's tunnel).
    pub foreign: u64,
}

impl Ledger {
    /// Books for `keys` keys.
    pub fn new(keys: usize) -> Self {
        Ledger {
            keys: vec![KeyBook::default(); keys],
            delivered: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
        }
    }

    /// The service acknowledged every record of `key` below `end`.
    pub fn produced(&mut self, key: usize, end: u64) {
        if let Some(book) = self.keys.get_mut(key) {
            book.produced = book.produced.max(end);
        }
    }

    /// A subscriber was handed this record.
    pub fn delivered(&mut self, key: &[u8], value: &[u8]) {
        self.delivered += 1;
        let Some((book, sequence)) =
            parse_record(key, value).and_then(|(key, sequence)| Some((self.keys.get_mut(key)?, sequence)))
        else {
            self.foreign += 1;
            return;
        };
        let Ok(index) = usize::try_from(sequence) else {
            self.foreign += 1;
            return;
        };
        if book.seen.len() <= index {
            book.seen.resize(index + 1, false);
        }
        if book.seen[index] {
            self.duplicates += 1;
            return;
        }
        book.seen[index] = true;
        if sequence != book.fresh_end {
            self.out_of_order += 1;
        }
        book.fresh_end = book.fresh_end.max(sequence + 1);
    }

    /// The totals now.
    pub fn totals(&self) -> Totals {
        let mut totals = Totals {
            delivered: self.delivered,
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            foreign: self.foreign,
            ..Totals::default()
        };
        for book in &self.keys {
            totals.produced += book.produced;
            let acknowledged = book.seen.iter().take(book.produced as usize);
            let unique = acknowledged.filter(|seen| **seen).count() as u64;
            totals.unique += unique;
            totals.missing += book.produced - unique;
        }
        totals
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "produced {}  delivered {}  duplicates {}  missing {}  out of order {}",
            self.produced, self.delivered, self.duplicates, self.missing, self.out_of_order
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(ledger: &mut Ledger, key: usize, sequence: u64) {
        ledger.delivered(key_name(key).as_bytes(), sequence.to_string().as_bytes());
    }

    #[test]
    fn records_round_trip_through_their_encoding() {
        assert_eq!(parse_record(b"key-07", b"41"), Some((7, 41)));
        assert_eq!(parse_record(b"key-x", b"41"), None);
        assert_eq!(parse_record(b"other", b"41"), None);
        assert_eq!(parse_record(b"key-01", b"-1"), None);
    }

    #[test]
    fn an_undelivered_acknowledged_record_is_missing() {
        let mut ledger = Ledger::new(2);
        ledger.produced(0, 3);
        deliver(&mut ledger, 0, 0);
        deliver(&mut ledger, 0, 1);
        let totals = ledger.totals();
        assert_eq!((totals.produced, totals.unique, totals.missing), (3, 2, 1));
        deliver(&mut ledger, 0, 2);
        assert_eq!(ledger.totals().missing, 0);
    }

    #[test]
    fn a_redelivery_after_a_checkpoint_rewind_is_a_duplicate_not_a_disorder() {
        let mut ledger = Ledger::new(1);
        ledger.produced(0, 4);
        for s in [0, 1, 2, 1, 2, 3] {
            deliver(&mut ledger, 0, s);
        }
        let totals = ledger.totals();
        assert_eq!(totals.delivered, 6);
        assert_eq!(totals.duplicates, 2);
        assert_eq!(totals.out_of_order, 0);
        assert_eq!(totals.missing, 0);
    }

    #[test]
    fn a_first_delivery_that_skips_a_record_is_out_of_order() {
        let mut ledger = Ledger::new(1);
        ledger.produced(0, 3);
        deliver(&mut ledger, 0, 0);
        deliver(&mut ledger, 0, 2);
        deliver(&mut ledger, 0, 1);
        let totals = ledger.totals();
        assert_eq!(totals.out_of_order, 2, "2 skipped ahead, then 1 came late");
        assert_eq!(totals.missing, 0);
    }

    #[test]
    fn a_record_delivered_before_its_acknowledgement_counts_once_acknowledged() {
        let mut ledger = Ledger::new(1);
        deliver(&mut ledger, 0, 0);
        assert_eq!(ledger.totals().produced, 0);
        ledger.produced(0, 1);
        let totals = ledger.totals();
        assert_eq!((totals.produced, totals.unique, totals.missing), (1, 1, 0));
    }

    #[test]
    fn records_that_are_not_the_demos_are_counted_apart() {
        let mut ledger = Ledger::new(1);
        ledger.delivered(b"key-05", b"1");
        ledger.delivered(b"elsewhere", b"1");
        assert_eq!(ledger.totals().foreign, 2);
    }
}
