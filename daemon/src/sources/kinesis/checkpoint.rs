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
    /// Nothing processed: start at the tip.
    Latest,
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

impl Checkpoint {
    pub(super) fn encode(&self) -> (String, u64) {
        match self {
            Checkpoint::TrimHorizon => ("TRIM_HORIZON".into(), 0),
            Checkpoint::Latest => ("LATEST".into(), 0),
            Checkpoint::ShardEnd => ("SHARD_END".into(), 0),
            Checkpoint::At { sequence, sub } => (sequence.clone(), *sub),
        }
    }

    pub(super) fn decode(value: &str, sub: u64) -> Checkpoint {
        match value {
            "TRIM_HORIZON" => Checkpoint::TrimHorizon,
            "LATEST" => Checkpoint::Latest,
            "SHARD_END" => Checkpoint::ShardEnd,
            seq => Checkpoint::At { sequence: seq.to_owned(), sub },
        }
    }
}

/// Compares Kinesis sequence numbers: decimal strings of up to 128 digits.
pub fn compare_sequence(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}
