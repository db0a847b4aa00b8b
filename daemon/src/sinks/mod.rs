//! Sinks: durable writes. A sink reports, per record, whether the write is
//! durable (or was already), so that sources acknowledge only that.

pub mod dynamodb;
pub mod redshift;
pub mod rejected;

/// The outcome of one record's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written now, durably.
    Written,
    /// Already written before (a replay): nothing changed.
    Duplicate,
    /// Not written; give the message back to its source.
    Failed,
}
