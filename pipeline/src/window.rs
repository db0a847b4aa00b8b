//! Event-time windows: one row of counters per store and UTC minute.
//!
//! Owns: window keys and the counters of `cafe-aggregates` and
//! `cafe_store_minute`. Must not: decide when a window is written (sinks do)
//! or look at the wall clock: everything here is event time.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use time::macros::format_description;

/// The start of the event-time minute of `ts`, in UTC.
pub fn minute_start(ts: OffsetDateTime) -> OffsetDateTime {
    let unix = ts.unix_timestamp();
    let floored = unix - unix.rem_euclid(60);
    OffsetDateTime::from_unix_timestamp(floored).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The sort key of `cafe-aggregates`: `2026-11-22T08:15:00Z`.
pub fn window_key(ts: OffsetDateTime) -> String {
    let m = minute_start(ts);
    let Some(year) = u32::try_from(m.year()).ok().filter(|y| *y <= 9999) else {
        let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
        return m.format(&fmt).unwrap_or_default();
    };
    // Written digit by digit: the format description's interpreter took
    // about a tenth of the orders path's own time (one key per event).
    let mut key = String::with_capacity(20);
    push_digits(&mut key, year, 4);
    key.push('-');
    push_digits(&mut key, u32::from(u8::from(m.month())), 2);
    key.push('-');
    push_digits(&mut key, u32::from(m.day()), 2);
    key.push('T');
    push_digits(&mut key, u32::from(m.hour()), 2);
    key.push(':');
    push_digits(&mut key, u32::from(m.minute()), 2);
    key.push_str(":00Z");
    key
}

/// `n`'s last `width` decimal digits, zero-padded.
fn push_digits(s: &mut String, n: u32, width: u32) {
    for p in (0..width).rev() {
        s.push(char::from(b'0' + (n / 10u32.pow(p) % 10) as u8));
    }
}

/// A (store, window) row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WindowId {
    /// Store id.
    pub store: String,
    /// Window key, as [`window_key`] formats it.
    pub window: String,
}

impl WindowId {
    /// The row for an event of `store` at event time `ts`.
    pub fn of(store: &str, ts: OffsetDateTime) -> Self {
        WindowId { store: store.to_owned(), window: window_key(ts) }
    }
}

/// The counters of one (store, window) row. A missing attribute means 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Orders placed.
    pub orders: i64,
    /// Sum of line quantities of orders placed.
    pub order_items: i64,
    /// Sum of order totals.
    pub revenue_cents: i64,
    /// Orders cancelled.
    pub orders_cancelled: i64,
    /// Payments decided.
    pub payments: i64,
    /// Payments approved.
    pub payments_approved: i64,
    /// Payments sent to review.
    pub payments_review: i64,
    /// Payments declined.
    pub payments_declined: i64,
    /// Sum of payment amounts.
    pub payment_amount_cents: i64,
    /// Menu items upserted.
    pub menu_items: i64,
    /// Menu images whose SHA-256 differed from the declared one.
    pub menu_hash_mismatches: i64,
}

impl Counters {
    /// The attribute names of the contract, in contract order.
    pub const NAMES: [&'static str; 11] = [
        "orders",
        "order_items",
        "revenue_cents",
        "orders_cancelled",
        "payments",
        "payments_approved",
        "payments_review",
        "payments_declined",
        "payment_amount_cents",
        "menu_items",
        "menu_hash_mismatches",
    ];

    /// The values, in the order of [`Counters::NAMES`].
    pub fn values(&self) -> [i64; 11] {
        [
            self.orders,
            self.order_items,
            self.revenue_cents,
            self.orders_cancelled,
            self.payments,
            self.payments_approved,
            self.payments_review,
            self.payments_declined,
            self.payment_amount_cents,
            self.menu_items,
            self.menu_hash_mismatches,
        ]
    }

    /// Builds counters from values in the order of [`Counters::NAMES`].
    pub fn from_values(v: [i64; 11]) -> Self {
        Counters {
            orders: v[0],
            order_items: v[1],
            revenue_cents: v[2],
            orders_cancelled: v[3],
            payments: v[4],
            payments_approved: v[5],
            payments_review: v[6],
            payments_declined: v[7],
            payment_amount_cents: v[8],
            menu_items: v[9],
            menu_hash_mismatches: v[10],
        }
    }

    /// The non-zero counters as (name, value).
    pub fn non_zero(&self) -> impl Iterator<Item = (&'static str, i64)> + '_ {
        Counters::NAMES.into_iter().zip(self.values()).filter(|(_, v)| *v != 0)
    }

    /// Adds `other` into `self`, saturating at the ends of `i64` (inputs
    /// are bounded by the contract; no sum of them may wrap or panic).
    pub fn add(&mut self, other: &Counters) {
        let mut v = self.values();
        for (a, b) in v.iter_mut().zip(other.values()) {
            *a = a.saturating_add(b);
        }
        *self = Counters::from_values(v);
    }

    /// True when every counter is 0.
    pub fn is_zero(&self) -> bool {
        self.values().iter().all(|v| *v == 0)
    }
}

/// Counter deltas for many rows, in a stable order.
pub type Deltas = BTreeMap<WindowId, Counters>;

#[cfg(test)]
mod tests {
    use super::*;
    use time::format_description::well_known::Rfc3339;

    fn ts(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &Rfc3339).expect("ts")
    }

    #[test]
    fn window_key_is_the_utc_minute_start() {
        assert_eq!(window_key(ts("2026-11-22T08:15:30.123Z")), "2026-11-22T08:15:00Z");
        assert_eq!(window_key(ts("2026-11-22T09:15:59.999+01:00")), "2026-11-22T08:15:00Z");
        assert_eq!(window_key(ts("2026-11-22T08:16:00Z")), "2026-11-22T08:16:00Z");
        assert_eq!(window_key(ts("1969-12-31T23:59:30Z")), "1969-12-31T23:59:00Z");
    }

    #[test]
    fn window_key_writes_what_the_format_description_writes() {
        let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
        let year_0 = ts("0000-01-01T00:00:00Z").unix_timestamp();
        let (first, last) = (year_0 - 2 * 86_400, ts("9999-12-31T23:59:59Z").unix_timestamp());
        // Every 7 s around the edges (year -1 to 0, the epoch, the last
        // year), then a stride through the whole range that lands on every
        // second of a minute.
        let edges = [year_0 - 3600, -3600, last - 7200];
        let swept = edges.iter().flat_map(|&e| (0..7200).step_by(7).map(move |d| e + d));
        for unix in swept.chain((first..=last).step_by(86_400 * 37 + 4_243)) {
            let t = OffsetDateTime::from_unix_timestamp(unix).expect("in range");
            assert_eq!(window_key(t), minute_start(t).format(&fmt).expect("formats"), "{t}");
        }
    }

    #[test]
    fn counters_saturate_instead_of_wrapping() {
        let mut a = Counters { payment_amount_cents: i64::MAX - 1, orders_cancelled: i64::MIN + 1, ..Counters::default() };
        a.add(&Counters { payment_amount_cents: 5, orders_cancelled: -5, ..Counters::default() });
        assert_eq!((a.payment_amount_cents, a.orders_cancelled), (i64::MAX, i64::MIN));
    }

    #[test]
    fn counters_add_and_list_non_zero() {
        let mut a = Counters { payments: 1, payment_amount_cents: 500, ..Counters::default() };
        a.add(&Counters { payments: 2, payments_declined: 1, ..Counters::default() });
        let nz: Vec<_> = a.non_zero().collect();
        assert_eq!(nz, vec![("payments", 3), ("payments_declined", 1), ("payment_amount_cents", 500)]);
        assert_eq!(Counters::from_values(a.values()), a);
    }
}
