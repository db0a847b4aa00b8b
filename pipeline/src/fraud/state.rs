//! The rules over plain values: what one key (a card fingerprint, a
//! customer, a device) remembers of its payments, and a payment's verdict
//! given the states of its three keys.
//!
//! Owns: the rules' semantics and the bounds of a key's state. Must not:
//! know where states live (the process's maps in [`super::FraudEngine`], or
//! a table several instances share), read the clock, or do I/O.
//!
//! # Which payments a payment counts
//! Velocity and device count every payment already recorded on the key,
//! whichever arrived first, whose event time is within the rule's window of
//! the payment's own, before or after it: `|t' - t| < window`. So when N
//! payments on one card fall within one window, however they arrive, the
//! first `velocity_max_per_card` scored pass and the other N minus that
//! fire: how many fire does not depend on arrival order; which ones do (a
//! decision is made when its payment arrives, and cannot wait for the
//! rest). The amount rule compares with the mean of the customer's newest
//! `amount_history` recorded amounts by event time; a customer's payments
//! share one FIFO message group, so they arrive in order.
//!
//! # Event time
//! A payment is scored and recorded at its event time, or at the deciding
//! clock's time if it is dated later (up to `pipeline.max_future_secs`
//! ahead is accepted): otherwise payments dated an hour ahead would hold a
//! key's newest places and a burst dated now would count nothing
//! ([`Rules::event_time`]).
//!
//! # A key's state
//! A key's state is a function of the set of payments recorded on it, not
//! of the order they were recorded in, and recording one twice changes
//! nothing ([`KeyState::record`]): entries sorted by (event time, payment
//! digest), one per payment (a device: one per card, its newest), the
//! newest kept. Payment ids and card fingerprints are kept as the first 16
//! bytes of their SHA-256 ([`Digest`]), so an entry's size does not depend
//! on how long the ids are. A card keeps `velocity_max_per_card + 1` entries, a device
//! `device_max_cards + 1` cards, a customer `amount_history + 1` amounts
//! (one more than a rule needs, so that a redelivered payment, which does
//! not count itself, still sees enough), and none more than `history_secs`
//! behind the key's newest. The counts are exact for a payment whose event
//! time is less than one window behind its key's newest entry; one later
//! than that may find the entries it should count already dropped, and
//! count fewer.

use std::collections::HashSet;
use std::fmt;

use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use super::config::{ConfigProblem, FraudConfig};
use super::geo::GeoTable;
use super::{Decision, Rule, Verdict};
use crate::event::PaymentRequested;

/// A payment id or a card fingerprint as a key keeps it: the first 16
/// bytes of its SHA-256 (fixed size, whatever the input; two distinct ids
/// on one key collide with a chance of about n² / 2¹²⁹).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub u128);

impl Digest {
    /// The digest of `s`.
    pub fn of(s: &str) -> Self {
        let d = Sha256::digest(s.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&d[..16]);
        Digest(u128::from_be_bytes(first))
    }

    /// From its 32 lower-case hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(Digest)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// One recorded payment, as a key keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<V> {
    /// Event time, Unix seconds ([`Rules::event_time`]).
    pub t: i64,
    /// The payment id's digest.
    pub payment: Digest,
    /// What the key's rule needs: nothing for a card, the amount in cents
    /// for a customer, the card fingerprint's digest for a device.
    pub value: V,
}

impl<V> Entry<V> {
    fn rank(&self) -> (i64, Digest) {
        (self.t, self.payment)
    }
}

/// What one key remembers: its entries, oldest first by (event time,
/// payment id), no two of one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState<V> {
    entries: Vec<Entry<V>>,
}

impl<V> Default for KeyState<V> {
    fn default() -> Self {
        KeyState { entries: Vec::new() }
    }
}

/// A card fingerprint's state.
pub type CardState = KeyState<()>;
/// A customer's state: amounts in cents.
pub type CustomerState = KeyState<u64>;
/// A device's state: card fingerprints' digests, one entry per card.
pub type DeviceState = KeyState<Digest>;

impl<V: Clone + PartialEq> KeyState<V> {
    /// The entries, oldest first.
    pub fn entries(&self) -> &[Entry<V>] {
        &self.entries
    }

    /// The newest event time recorded, if any.
    pub fn newest(&self) -> Option<i64> {
        self.entries.last().map(|e| e.t)
    }

    /// Whether `payment_id` is among the entries.
    pub fn holds(&self, payment_id: &str) -> bool {
        let d = Digest::of(payment_id);
        self.entries.iter().any(|e| e.payment == d)
    }

    /// Records `entry`, then applies `bounds`: at most `cap` entries (the
    /// newest), none `history_secs` or more behind the newest. `same`
    /// says which kept entry the new one stands for (the same payment; for
    /// a device, the same card): of the two, the newer stays.
    fn record(&mut self, entry: Entry<V>, bounds: Bounds, same: fn(&Entry<V>, &Entry<V>) -> bool) {
        if let Some(i) = self.entries.iter().position(|x| same(x, &entry)) {
            if self.entries[i].rank() >= entry.rank() {
                return;
            }
            self.entries.remove(i);
        }
        let at = self.entries.partition_point(|x| x.rank() < entry.rank());
        self.entries.insert(at, entry);
        let Some(newest) = self.newest() else { return };
        let horizon = newest.saturating_sub(i64::from(bounds.history_secs));
        let stale = self.entries.partition_point(|x| x.t <= horizon);
        let over = self.entries.len().saturating_sub(bounds.cap);
        self.entries.drain(..stale.max(over));
    }

    fn from_entries(entries: Vec<Entry<V>>, bounds: Bounds, same: fn(&Entry<V>, &Entry<V>) -> bool) -> Self {
        let mut state = KeyState::default();
        for e in entries {
            state.record(e, bounds, same);
        }
        state
    }
}

fn same_payment<V>(a: &Entry<V>, b: &Entry<V>) -> bool {
    a.payment == b.payment
}

fn same_card(a: &Entry<Digest>, b: &Entry<Digest>) -> bool {
    a.value == b.value
}

/// A key's bounds: most entries, and how far behind its newest an entry may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most entries kept.
    pub cap: usize,
    /// Entries this many seconds or more behind the newest are dropped.
    pub history_secs: u32,
}

/// The three keys a payment is scored against.
#[derive(Debug, Clone, Copy)]
pub struct Keys<'a> {
    /// Its card fingerprint's state.
    pub card: &'a CardState,
    /// Its customer's state.
    pub customer: &'a CustomerState,
    /// Its device's state.
    pub device: &'a DeviceState,
}

/// The three keys' states, to record a payment in.
#[derive(Debug)]
pub struct KeysMut<'a> {
    /// Its card fingerprint's state.
    pub card: &'a mut CardState,
    /// Its customer's state.
    pub customer: &'a mut CustomerState,
    /// Its device's state.
    pub device: &'a mut DeviceState,
}

/// The rules of a configuration, ready to score.
#[derive(Debug)]
pub struct Rules {
    config: FraudConfig,
    geo: GeoTable,
    risky_bins: HashSet<String>,
}

impl Rules {
    /// The rules of `config`, or every problem it has.
    pub fn new(config: FraudConfig) -> Result<Self, Vec<ConfigProblem>> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut unused = Vec::new();
        let geo = GeoTable::build(&config.ip_ranges, &mut unused);
        let risky_bins = config.risky_bins.iter().cloned().collect();
        Ok(Rules { config, geo, risky_bins })
    }

    /// The configuration in force.
    pub fn config(&self) -> &FraudConfig {
        &self.config
    }

    /// A card's bounds.
    pub fn card_bounds(&self) -> Bounds {
        Bounds { cap: self.config.velocity_max_per_card as usize + 1, history_secs: self.config.history_secs }
    }

    /// A customer's bounds.
    pub fn customer_bounds(&self) -> Bounds {
        Bounds { cap: self.config.amount_history.max(1) as usize + 1, history_secs: self.config.history_secs }
    }

    /// A device's bounds (in cards).
    pub fn device_bounds(&self) -> Bounds {
        Bounds { cap: self.config.device_max_cards as usize + 1, history_secs: self.config.history_secs }
    }

    /// The time a payment dated `ts` is scored and recorded at, decided at
    /// `now`: its event time, or `now` if that is earlier (see the module's
    /// doc), in Unix seconds.
    pub fn event_time(ts: OffsetDateTime, now: OffsetDateTime) -> i64 {
        ts.min(now).unix_timestamp()
    }

    /// The verdict on `p` at time `t` ([`Rules::event_time`]), against its
    /// keys' states. Entries of `p` itself (a redelivery) do not count.
    pub fn verdict(&self, p: &PaymentRequested, t: i64, keys: Keys<'_>) -> Verdict {
        let c = &self.config;
        let mut reasons = Vec::new();
        let within = |x: i64, window: u32| x.abs_diff(t) < u64::from(window);
        let me = Digest::of(&p.payment_id);
        let card = Digest::of(&p.card.fingerprint);

        let on_card = keys.card.entries.iter().filter(|e| e.payment != me && within(e.t, c.velocity_window_secs)).count();
        if on_card as u64 + 1 > u64::from(c.velocity_max_per_card) {
            reasons.push(Rule::Velocity);
        }

        let amounts: Vec<u64> = keys.customer.entries.iter().filter(|e| e.payment != me).map(|e| e.value).collect();
        let recent = &amounts[amounts.len().saturating_sub(c.amount_history.max(1) as usize)..];
        if recent.len() as u64 >= u64::from(c.amount_min_history.max(1)) {
            let mean = recent.iter().map(|&a| a as f64).sum::<f64>() / recent.len() as f64;
            if p.amount_cents as f64 > c.amount_factor * mean {
                reasons.push(Rule::Amount);
            }
        }

        if let Some(country) = self.geo.country(p.ip)
            && country != p.billing_country.as_bytes()
        {
            reasons.push(Rule::Geo);
        }

        if self.risky_bins.contains(&p.card.bin) {
            reasons.push(Rule::Bin);
        }

        let other_cards = keys.device.entries.iter().filter(|e| e.value != card && within(e.t, c.device_window_secs)).count();
        if other_cards as u64 + 1 > u64::from(c.device_max_cards) {
            reasons.push(Rule::Device);
        }

        let w = c.weights;
        let score: u32 = reasons
            .iter()
            .map(|r| match r {
                Rule::Velocity => w.velocity,
                Rule::Amount => w.amount,
                Rule::Geo => w.geo,
                Rule::Bin => w.bin,
                Rule::Device => w.device,
            })
            .sum::<u32>()
            .min(1000);
        let decision = if score >= c.decline_threshold {
            Decision::Decline
        } else if score >= c.review_threshold {
            Decision::Review
        } else {
            Decision::Approve
        };
        Verdict { score, decision, reasons }
    }

    /// Records `p` at event time `t` in its keys' states, within their
    /// bounds. Recording a payment twice changes nothing.
    pub fn record(&self, p: &PaymentRequested, t: i64, keys: KeysMut<'_>) {
        let payment = Digest::of(&p.payment_id);
        keys.card.record(Entry { t, payment, value: () }, self.card_bounds(), same_payment);
        keys.customer.record(Entry { t, payment, value: p.amount_cents }, self.customer_bounds(), same_payment);
        let entry = Entry { t, payment, value: Digest::of(&p.card.fingerprint) };
        keys.device.record(entry, self.device_bounds(), same_card);
    }

    /// A card's state from stored entries in any order, with repeats or
    /// beyond the bounds: what recording each of them gives.
    pub fn card_state(&self, entries: Vec<Entry<()>>) -> CardState {
        KeyState::from_entries(entries, self.card_bounds(), same_payment)
    }

    /// A customer's state from stored entries (see [`Rules::card_state`]).
    pub fn customer_state(&self, entries: Vec<Entry<u64>>) -> CustomerState {
        KeyState::from_entries(entries, self.customer_bounds(), same_payment)
    }

    /// A device's state from stored entries (see [`Rules::card_state`]).
    pub fn device_state(&self, entries: Vec<Entry<Digest>>) -> DeviceState {
        KeyState::from_entries(entries, self.device_bounds(), same_card)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fraud::tests::pay;

    const T0: i64 = 1_800_000_000;

    fn rules() -> Rules {
        Rules::new(FraudConfig { work_factor: 0, ..FraudConfig::default() }).expect("valid config")
    }

    #[derive(Default, Clone, Debug, PartialEq)]
    struct Three {
        card: CardState,
        customer: CustomerState,
        device: DeviceState,
    }

    impl Three {
        fn keys(&self) -> Keys<'_> {
            Keys { card: &self.card, customer: &self.customer, device: &self.device }
        }
        fn keys_mut(&mut self) -> KeysMut<'_> {
            KeysMut { card: &mut self.card, customer: &mut self.customer, device: &mut self.device }
        }
    }

    /// Scores then records each of `payments` in the order given, all keys
    /// in one state (every payment shares them or not: enough for one rule
    /// at a time); returns how many fired `rule`.
    fn fired(
        r: &Rules,
        payments: &[(PaymentRequested, i64)],
        rule: Rule,
        per_key: impl Fn(&PaymentRequested) -> String,
    ) -> usize {
        let mut states: std::collections::HashMap<String, Three> = Default::default();
        let mut n = 0;
        for (p, t) in payments {
            let s = states.entry(per_key(p)).or_default();
            if r.verdict(p, *t, s.keys()).reasons.contains(&rule) {
                n += 1;
            }
            r.record(p, *t, s.keys_mut());
        }
        n
    }

    #[test]
    fn a_card_testing_burst_fires_as_often_in_any_arrival_order() {
        // The burst: 40 payments on one card from 40 customers, 2 s apart.
        let r = rules();
        let burst: Vec<_> =
            (0..40).map(|i| (pay(&format!("p{i}"), &format!("c{i}"), "fp", &format!("d{i}"), 500), T0 + 2 * i)).collect();
        assert_eq!(fired(&r, &burst, Rule::Velocity, |_| "fp".into()), 35);
        let mut reversed = burst.clone();
        reversed.reverse();
        assert_eq!(fired(&r, &reversed, Rule::Velocity, |_| "fp".into()), 35);
        let interleaved: Vec<_> = (0..40).map(|i| burst[(i * 7) % 40].clone()).collect();
        assert_eq!(fired(&r, &interleaved, Rule::Velocity, |_| "fp".into()), 35);
    }

    #[test]
    fn the_window_counts_later_event_times_too_but_not_at_its_edge() {
        let r = rules(); // 5 per card within 600 s
        let mut s = Three::default();
        for i in 0..5 {
            r.record(&pay(&format!("p{i}"), "c", "fp", "d", 1), T0 + 599, s.keys_mut());
        }
        let v = r.verdict(&pay("late", "c", "fp", "d", 1), T0, s.keys());
        assert_eq!(v.reasons, vec![Rule::Velocity], "599 s after is within the window");
        let mut s = Three::default();
        for i in 0..5 {
            r.record(&pay(&format!("p{i}"), "c", "fp", "d", 1), T0 + 600, s.keys_mut());
        }
        assert!(r.verdict(&pay("late", "c", "fp", "d", 1), T0, s.keys()).reasons.is_empty(), "600 s is not");
    }

    #[test]
    fn a_device_fanning_out_fires_as_often_in_any_arrival_order() {
        let r = rules(); // 3 cards per device within an hour
        let fan: Vec<_> =
            (0..12).map(|i| (pay(&format!("p{i}"), &format!("c{i}"), &format!("fp{i}"), "dev", 500), T0 + 60 * i)).collect();
        assert_eq!(fired(&r, &fan, Rule::Device, |_| "dev".into()), 9);
        let mut reversed = fan.clone();
        reversed.reverse();
        assert_eq!(fired(&r, &reversed, Rule::Device, |_| "dev".into()), 9);
        // The same card again on the device is not another card.
        let same: Vec<_> = (0..12).map(|i| (pay(&format!("q{i}"), "c", "fp", "dev", 500), T0 + i)).collect();
        assert_eq!(fired(&r, &same, Rule::Device, |_| "dev".into()), 0);
    }

    #[test]
    fn a_customers_spike_fires_against_the_mean_of_their_newest_amounts() {
        let r = rules(); // 5x the mean of the last 20, once 3 exist
        let mut s = Three::default();
        // (One state stands for all three keys: only the amount rule is looked at.)
        let v = |s: &Three, id: &str, amount| {
            let mut reasons = r.verdict(&pay(id, "c", id, id, amount), T0 + 100, s.keys()).reasons;
            reasons.retain(|&x| x == Rule::Amount);
            reasons
        };
        for i in 0..2 {
            r.record(&pay(&format!("p{i}"), "c", "f", "d", 1000), T0 + i, s.keys_mut());
        }
        assert!(v(&s, "x", 50_000).is_empty(), "two amounts are not a history yet");
        r.record(&pay("p2", "c", "f", "d", 1000), T0 + 2, s.keys_mut());
        assert!(v(&s, "x", 5_000).is_empty(), "5x is not above 5x");
        assert_eq!(v(&s, "x", 5_001), vec![Rule::Amount]);
        // Only the newest 20 amounts make the mean: 21 large ones then.
        for i in 0..21 {
            r.record(&pay(&format!("big{i}"), "c", "f", "d", 10_000), T0 + 10 + i, s.keys_mut());
        }
        assert!(v(&s, "x", 50_000).is_empty());
        assert_eq!(s.customer.entries().len(), 21, "amount_history + 1 kept");
    }

    #[test]
    fn a_redelivery_does_not_count_itself_and_recording_it_again_changes_nothing() {
        let r = rules();
        let mut s = Three::default();
        for i in 0..5 {
            r.record(&pay(&format!("p{i}"), &format!("c{i}"), "fp", "d", 1), T0 + i, s.keys_mut());
        }
        let before = s.clone();
        let again = pay("p4", "c4", "fp", "d", 1);
        assert!(r.verdict(&again, T0 + 4, s.keys()).reasons.is_empty(), "four others, itself not counted");
        r.record(&again, T0 + 4, s.keys_mut());
        assert_eq!(s, before);
        assert!(s.card.holds("p4") && !s.card.holds("p5"));
        assert_eq!(s.card.entries().len(), 5);
    }

    #[test]
    fn bounds_keep_the_newest_and_forget_history_behind_the_newest() {
        let r = rules();
        let mut s = Three::default();
        for i in 0..100 {
            r.record(&pay(&format!("p{i:03}"), "c", &format!("f{i}"), "d", 1), T0 + i, s.keys_mut());
        }
        assert_eq!(s.card.entries().len(), 6);
        assert_eq!(s.card.entries()[0].payment, Digest::of("p094"));
        assert_eq!(s.device.entries().len(), 4, "device_max_cards + 1 cards");
        assert_eq!(s.device.entries()[0].value, Digest::of("f96"));
        // A day later the old entries are past history_secs.
        r.record(&pay("new", "c", "fnew", "d", 1), T0 + 99 + 86_400, s.keys_mut());
        assert_eq!(s.card.entries().len(), 1);
        assert_eq!(s.customer.entries().len(), 1);
        assert_eq!(s.device.entries().len(), 1);
    }

    #[test]
    fn payments_dated_ahead_of_the_clock_do_not_hold_a_keys_places() {
        // Six payments on a card dated an hour ahead (accepted: within
        // max_future_secs), then a burst dated now: they count at the
        // clock's time, so the burst fires as it would without them.
        let r = rules();
        let now = time::OffsetDateTime::from_unix_timestamp(T0).expect("now");
        let ahead = now + time::Duration::hours(1);
        let mut s = Three::default();
        for i in 0..6 {
            let p = pay(&format!("f{i}"), &format!("cf{i}"), "fp", &format!("df{i}"), 1);
            r.record(&p, Rules::event_time(ahead, now), s.keys_mut());
        }
        let mut fired = 0;
        for i in 0..10 {
            let p = pay(&format!("b{i}"), &format!("cb{i}"), "fp", &format!("db{i}"), 1);
            let t = Rules::event_time(now + time::Duration::seconds(i), now + time::Duration::seconds(i));
            if r.verdict(&p, t, s.keys()).reasons.contains(&Rule::Velocity) {
                fired += 1;
            }
            r.record(&p, t, s.keys_mut());
        }
        assert_eq!(fired, 10, "six recorded already: every one of the burst is past five");
        assert_eq!(Rules::event_time(ahead, now), T0);
        assert_eq!(Rules::event_time(now - time::Duration::seconds(5), now), T0 - 5);
    }

    #[test]
    fn digests_are_fixed_size_and_read_back_from_their_text() {
        let d = Digest::of(&"x".repeat(256));
        assert_eq!(d.to_string().len(), 32);
        assert_eq!(Digest::parse(&d.to_string()), Some(d));
        assert_ne!(Digest::of("p1"), Digest::of("p2"));
        for bad in ["", "0", &"g".repeat(32), &"A".repeat(32), &"0".repeat(33)] {
            assert_eq!(Digest::parse(bad), None, "{bad:?}");
        }
    }

    fn payment_strategy() -> impl Strategy<Value = Vec<(u8, u8, u8, u16, u32)>> {
        // (payment id, card, device, amount, event time offset): few keys, so they collide.
        proptest::collection::vec((0u8..40, 0u8..3, 0u8..3, 1u16..5000, 0u32..4000), 0..40)
    }

    fn as_payments(raw: &[(u8, u8, u8, u16, u32)]) -> Vec<(PaymentRequested, i64)> {
        // One payment id always has the same content, as a redelivery does.
        let mut seen = std::collections::HashMap::new();
        raw.iter()
            .map(|&(id, card, device, amount, dt)| {
                let (card, device, amount, dt) = *seen.entry(id).or_insert((card, device, amount, dt));
                (pay(&format!("p{id}"), "c", &format!("f{card}"), &format!("d{device}"), u64::from(amount)), T0 + i64::from(dt))
            })
            .collect()
    }

    proptest! {
        #[test]
        fn a_keys_state_is_a_function_of_the_set_of_payments_recorded(raw in payment_strategy(), seed in any::<u64>()) {
            let r = rules();
            let payments = as_payments(&raw);
            let mut shuffled = payments.clone();
            // A permutation from the seed, plus every payment recorded twice.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            shuffled.extend(payments.iter().cloned());
            let mut a = Three::default();
            let mut b = Three::default();
            for (p, t) in &payments { r.record(p, *t, a.keys_mut()); }
            for (p, t) in &shuffled { r.record(p, *t, b.keys_mut()); }
            prop_assert_eq!(&a, &b);
            // And stored entries in any order read back to the same state.
            let mut entries = a.card.entries().to_vec();
            entries.reverse();
            entries.extend(a.card.entries().iter().cloned());
            prop_assert_eq!(&r.card_state(entries), &a.card);
            let mut entries = a.device.entries().to_vec();
            entries.reverse();
            prop_assert_eq!(&r.device_state(entries), &a.device);
        }

        #[test]
        fn within_one_window_velocity_fires_as_often_in_any_order(n in 0usize..30, seed in any::<u64>()) {
            let r = rules();
            let mut burst: Vec<_> = (0..n)
                .map(|i| (pay(&format!("p{i}"), &format!("c{i}"), "fp", &format!("d{i}"), 1), T0 + (i as i64 * 37) % 599))
                .collect();
            let in_order = fired(&r, &burst, Rule::Velocity, |_| "fp".into());
            let mut x = seed | 1;
            for i in (1..burst.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                burst.swap(i, (x % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(fired(&r, &burst, Rule::Velocity, |_| "fp".into()), in_order);
            prop_assert_eq!(in_order, n.saturating_sub(5));
        }
    }
}
