//! Shard checkpoints: where a shard's reading resumes, and the order of
//! Kinesis sequence numbers.
//!
//! Owns: the checkpoint value and its encoding in the lease table (the
//! Kinesis Client Library's `checkpoint` and `checkpointSubSequenceNumber`).
//! Must not: write the lease table (`leases` does, fenced on the lease).

use std::cmp::Ordering;

/// Where a shard's reading resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Nothing processed: start at the oldest record.
    TrimHorizon,
    /// Nothing processed: start at the tip. Never read from: a holder
    /// first pins it to [`Checkpoint::AtTimestamp`] (see `shard::pin_latest`).
    Latest,
    /// Nothing processed: start at the first record that arrived at or
    /// after this time (milliseconds since the epoch). What `LATEST`
    /// becomes once a holder takes the lease, so that every later holder
    /// (after a crash, a release with nothing read, a lost lease) starts
    /// where the first one did instead of at a new tip, skipping what
    /// arrived in between.
    AtTimestamp {
        /// Milliseconds since the Unix epoch.
        millis: i64,
    },
    /// The shard is closed and every record of it is processed.
    ShardEnd,
    /// Everything up to and including this record (and sub-record) is processed.
    At {
        /// Kinesis sequence number.
        sequence: String,
        /// Index inside a KPL aggregate; 0 for a plain record.
        sub: u64,
    },
}

/// The prefix of a pinned `LATEST` in the lease table's `checkpoint`
/// (`AT_TIMESTAMP:<millis>`; an extension of the KCL's sentinels).
const AT_TIMESTAMP: &str = "AT_TIMESTAMP:";

impl Checkpoint {
    pub(super) fn encode(&self) -> (String, u64) {
        match self {
            Checkpoint::TrimHorizon => ("TRIM_HORIZON".into(), 0),
            Checkpoint::Latest => ("LATEST".into(), 0),
            Checkpoint::AtTimestamp { millis } => (format!("{AT_TIMESTAMP}{millis}"), 0),
            Checkpoint::ShardEnd => ("SHARD_END".into(), 0),
            Checkpoint::At { sequence, sub } => (sequence.clone(), *sub),
        }
    }

    pub(super) fn decode(value: &str, sub: u64) -> Checkpoint {
        match value {
            "TRIM_HORIZON" => Checkpoint::TrimHorizon,
            "LATEST" => Checkpoint::Latest,
            "SHARD_END" => Checkpoint::ShardEnd,
            v if v.starts_with(AT_TIMESTAMP) => match v[AT_TIMESTAMP.len()..].parse() {
                Ok(millis) => Checkpoint::AtTimestamp { millis },
                // Unreadable: read too much rather than too little.
                Err(_) => Checkpoint::TrimHorizon,
            },
            seq => Checkpoint::At { sequence: seq.to_owned(), sub },
        }
    }
}

/// Compares Kinesis sequence numbers: decimal strings of up to 128 digits.
pub fn compare_sequence(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}
