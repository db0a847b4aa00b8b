//! The Kinesis source: a stream shared by every instance through a lease
//! table, as the Kinesis Client Library does.
//!
//! Owns, one file each: `source` (ListShards, paced shard readers,
//! iterators, KPL de-aggregation), `budget` (the instance's bytes read and
//! not yet durable), `leases` (the lease table: renew, take,
//! steal, fenced checkpoints, release), `shard` (one leased shard's records
//! through the router, and its checkpoints), `checkpoint` (the checkpoint
//! value and sequence-number order). Imports run one way, without a loop:
//! `shard` uses `leases`, `source`, `budget` and `checkpoint`; `leases` uses `source`
//! (ListShards) and `checkpoint`; `source` uses `checkpoint` and `budget`;
//! nothing uses
//! `shard` but topology.

pub mod budget;
pub mod checkpoint;
pub mod component;
pub mod config;
pub mod leases;
pub mod shard;
pub mod source;

pub use checkpoint::Checkpoint;
pub use source::KinesisSource;
