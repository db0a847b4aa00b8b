//! cafe-stream's domain logic: the contract's events and their validation,
//! fraud scoring, the order state machine, event-time windows and the metric
//! catalogue.
//!
//! Invariant: this crate does no I/O, spawns nothing and cannot fail on
//! infrastructure. Everything here is a function of its inputs, so the daemon,
//! the loadgen and the benchmarks share one definition of the contract.

pub mod decided;
pub mod event;
pub mod fraud;
pub mod kpl;
pub mod menu;
pub mod metric_names;
pub mod orders;
pub mod window;

pub use event::{Body, Event, RejectReason, Rejection, decode};
