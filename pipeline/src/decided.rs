//! What the pipeline decided about events, in domain terms: the types the
//! stages hand to sinks. A sink turns them into its own writes.
//!
//! Owns: the sink-neutral shape of a decided payment, a decided menu item,
//! a change to an order and a rejected event. Must not: name a table, an
//! attribute or a queue; those belong to the sinks.

use smallvec::SmallVec;
use time::OffsetDateTime;

use crate::menu::MenuDigest;
use crate::orders::OrderState;
use crate::window::{Counters, WindowId};

/// A scored `payment.requested`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecidedPayment {
    /// Event id (idempotency key of the event).
    pub event_id: String,
    /// Payment id: the payment's key.
    pub payment_id: String,
    /// Order paid for.
    pub order_id: String,
    /// Who paid.
    pub customer_id: String,
    /// Store.
    pub store: String,
    /// Amount.
    pub amount_cents: u64,
    /// 0..1000.
    pub score: u32,
    /// approve | review | decline.
    pub decision: &'static str,
    /// Rules that fired.
    pub reasons: Vec<&'static str>,
    /// Event time as sent.
    pub ts: String,
    /// Event time, parsed (for end-to-end latency).
    pub event_time: OffsetDateTime,
    /// When the daemon decided, RFC 3339 UTC.
    pub decided_at: String,
    /// The aggregate row it counts in.
    pub window: WindowId,
    /// Its counter deltas.
    pub counters: Counters,
}

/// A `menu.item.upserted` with what the menu stage computed.
#[derive(Debug, Clone, PartialEq)]
pub struct DecidedMenuItem {
    /// Event id: the key that makes a redelivery count once.
    pub event_id: String,
    /// The item's key.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Category.
    pub category: String,
    /// Price.
    pub price_cents: u64,
    /// What the menu stage computed.
    pub digest: MenuDigest,
    /// Event time as sent.
    pub ts: String,
    /// Event time, parsed (for end-to-end latency).
    pub event_time: OffsetDateTime,
    /// The aggregate row it counts in.
    pub window: WindowId,
    /// Its counter deltas.
    pub counters: Counters,
}

impl DecidedMenuItem {
    /// Orders syncs of one sku: by event time, then event id, as a string
    /// (zero-padded event-time nanoseconds, `/`, event id).
    pub fn sync_version(&self) -> String {
        let ns = self.event_time.unix_timestamp_nanos().max(0);
        format!("{ns:020}/{}", self.event_id)
    }
}

/// One order's change: its state before (as read) and after applying the
/// events of a batch, and the counters those events add.
#[derive(Debug, Clone)]
pub struct OrderChange {
    /// The order.
    pub order_id: String,
    /// History length read (the order's version); `None` when it did not exist.
    pub before: Option<usize>,
    /// The state after applying the events.
    pub after: OrderState,
    /// Who placed a new order and how: (customer_id, channel).
    pub placed_by: Option<(String, String)>,
    /// Counter deltas of the applied events, by row: each row once, in
    /// row order (nearly always one row, held inline: no allocation for
    /// it, where a map would allocate a node of eleven rows).
    pub rows: SmallVec<[(WindowId, Counters); 1]>,
}

/// An event that breaks the contract, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedEvent {
    /// The event exactly as received, byte for byte (the sink encodes it
    /// for its queue when the queue cannot carry it as it is).
    pub body: Vec<u8>,
    /// Reason code.
    pub reason: &'static str,
    /// Human detail (no payload contents).
    pub detail: String,
    /// Input name.
    pub source: String,
    /// Shard and sequence number, or SQS message id.
    pub position: String,
}
