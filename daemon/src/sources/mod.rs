//! Sources: where events come from, and where acknowledgements go back to.
//!
//! A source hands batches of raw messages downstream and acknowledges a
//! message only when the sink stage says every write it caused is durable.

pub mod kinesis;
pub mod sqs;
