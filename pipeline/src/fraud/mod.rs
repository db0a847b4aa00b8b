//! Fraud scoring of `payment.requested`: deterministic rules over bounded
//! history, plus the "model inference" work factor of the original story.
//!
//! Owns: the score, the decision, and the in-process history. Must not:
//! read the clock (all windows are event time, so the same events arriving
//! in the same order give the same scores), or grow without bound.
//!
//! Scoring is split in two so that the expensive part parallelises:
//! [`model_work`] is pure and runs per payment on any thread; the rules
//! ([`Rules`] in `state.rs`: which payments a payment counts, and what a
//! key remembers) run where the keys' states are, in arrival order: in
//! this process ([`FraudEngine`]), or against a table every instance
//! shares.
//!
//! # Memory bound (in process)
//! History is keyed by card fingerprint, customer and device, each key
//! bounded as `state.rs` says. Keys not seen within `history_secs` of the
//! newest event time are dropped, and no map holds more than
//! `max_tracked_keys` keys: past that the least recently seen keys are
//! evicted first. So memory is O(max_tracked_keys) whatever the backlog.
//!
//! Files: `config.rs` (the `[fraud]` settings and their checks), `geo.rs`
//! (the IP-to-country table), `model.rs` (the pure work factor),
//! `state.rs` (the rules and a key's state), and here the verdict's types
//! and the in-process engine.

mod config;
mod geo;
mod model;
pub mod state;

use std::collections::{HashMap, HashSet, VecDeque};

use time::OffsetDateTime;

pub use config::{ConfigProblem, FraudConfig, IpRange, RuleWeights, StateStore};
pub use model::{LANES, model_work, model_work_many};
pub use state::Rules;
use state::{CardState, CustomerState, DeviceState, KeyState, Keys, KeysMut};

use crate::event::PaymentRequested;

/// What the engine decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Let it through.
    Approve,
    /// Hold for a person.
    Review,
    /// Refuse.
    Decline,
}

impl Decision {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Review => "review",
            Decision::Decline => "decline",
        }
    }
}

/// The rules, by the names written to `reasons`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Many payments on one card in a short time.
    Velocity,
    /// Amount far above the customer's usual.
    Amount,
    /// Billing country differs from the IP's country.
    Geo,
    /// BIN on the risk list.
    Bin,
    /// One device used with many cards.
    Device,
}

impl Rule {
    /// The name written to `reasons`.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Velocity => "velocity",
            Rule::Amount => "amount",
            Rule::Geo => "geo",
            Rule::Bin => "bin",
            Rule::Device => "device",
        }
    }
}

/// A score, its decision and the rules that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// 0..=1000.
    pub score: u32,
    /// Follows the configured thresholds.
    pub decision: Decision,
    /// Each rule that fired, in rule order.
    pub reasons: Vec<Rule>,
}

impl<V: Clone + PartialEq> KeyState<V> {
    /// For the sweep: the newest event time, or never.
    fn last_seen(&self) -> i64 {
        self.newest().unwrap_or(i64::MIN)
    }
}

/// Drops keys not seen since `horizon`; if more than `cap` remain, drops the
/// least recently seen down to 90% of `cap`, so sweeps stay rare.
fn bound<V: Clone + PartialEq>(map: &mut HashMap<String, KeyState<V>>, horizon: i64, cap: usize) -> usize {
    let before = map.len();
    map.retain(|_, v| v.last_seen() >= horizon);
    if map.len() > cap {
        let mut seen: Vec<i64> = map.values().map(KeyState::last_seen).collect();
        let drop = map.len() - cap * 9 / 10;
        seen.select_nth_unstable(drop - 1);
        let cutoff = seen[drop - 1];
        let mut dropped = 0;
        map.retain(|_, v| {
            if dropped < drop && v.last_seen() <= cutoff {
                dropped += 1;
                false
            } else {
                true
            }
        });
    }
    before - map.len()
}

/// The in-process scorer: the [`Rules`] over states kept in this process's
/// maps. One per process; feed payments in arrival order.
#[derive(Debug)]
pub struct FraudEngine {
    rules: Rules,
    cards: HashMap<String, CardState>,
    customers: HashMap<String, CustomerState>,
    devices: HashMap<String, DeviceState>,
    /// Payment ids already applied, so a redelivery does not count twice
    /// even after its keys were swept.
    applied: HashSet<String>,
    applied_order: VecDeque<String>,
    watermark: i64,
    since_sweep: usize,
}

impl FraudEngine {
    /// Builds an engine, or names every problem of the configuration.
    pub fn new(config: FraudConfig) -> Result<Self, Vec<ConfigProblem>> {
        Ok(FraudEngine {
            rules: Rules::new(config)?,
            cards: HashMap::new(),
            customers: HashMap::new(),
            devices: HashMap::new(),
            applied: HashSet::new(),
            applied_order: VecDeque::new(),
            watermark: i64::MIN,
            since_sweep: 0,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &FraudConfig {
        self.rules.config()
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// From the next payment on, score by `rules` (a reload): the history
    /// so far stays, and is bounded by the new rules as keys are next
    /// recorded.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    /// Keys tracked across all history maps (for the memory-bound metric).
    pub fn tracked_keys(&self) -> usize {
        self.cards.len() + self.customers.len() + self.devices.len()
    }

    /// Scores `p`, dated `ts` and decided at `now`, against the history so
    /// far, then records it ([`Rules::event_time`]: a payment dated ahead
    /// of `now` counts at `now`). A payment id scored before is scored
    /// again without being recorded twice.
    pub fn score(&mut self, p: &PaymentRequested, ts: OffsetDateTime, now: OffsetDateTime) -> Verdict {
        let t = Rules::event_time(ts, now);
        let card = self.cards.entry(p.card.fingerprint.clone()).or_default();
        let customer = self.customers.entry(p.customer_id.clone()).or_default();
        let device = self.devices.entry(p.device_id.clone()).or_default();
        let verdict = self.rules.verdict(p, t, Keys { card, customer, device });
        if !self.applied.contains(&p.payment_id) {
            self.rules.record(p, t, KeysMut { card, customer, device });
            self.remember(&p.payment_id);
            self.watermark = self.watermark.max(t);
            self.since_sweep += 1;
            if self.since_sweep >= 4096 || self.over_cap() {
                self.sweep();
            }
        }
        verdict
    }

    fn remember(&mut self, payment_id: &str) {
        self.applied.insert(payment_id.to_owned());
        self.applied_order.push_back(payment_id.to_owned());
        while self.applied_order.len() > self.config().max_tracked_keys {
            if let Some(old) = self.applied_order.pop_front() {
                self.applied.remove(&old);
            }
        }
    }

    fn over_cap(&self) -> bool {
        let cap = self.config().max_tracked_keys;
        self.cards.len() > cap || self.customers.len() > cap || self.devices.len() > cap
    }

    fn sweep(&mut self) {
        self.since_sweep = 0;
        let horizon = self.watermark.saturating_sub(i64::from(self.config().history_secs));
        let cap = self.config().max_tracked_keys;
        bound(&mut self.cards, horizon, cap);
        bound(&mut self.customers, horizon, cap);
        bound(&mut self.devices, horizon, cap);
    }
}

#[cfg(test)]
mod tests {
    use super::geo::GeoTable;
    use super::*;
    use crate::event::Card;
    use time::Duration;

    /// A payment for the rules' tests (here and in `state.rs`).
    pub(crate) fn pay(id: &str, customer: &str, fp: &str, device: &str, amount: u64) -> PaymentRequested {
        PaymentRequested {
            payment_id: id.into(),
            order_id: format!("o-{id}"),
            customer_id: customer.into(),
            amount_cents: amount,
            currency: "USD".into(),
            card: Card { bin: "411111".into(), last4: "0000".into(), fingerprint: fp.into() },
            ip: "198.51.100.7".parse().expect("ip"),
            device_id: device.into(),
            billing_country: "US".into(),
        }
    }

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("ts")
    }

    /// A deciding clock later than every payment here.
    fn far() -> OffsetDateTime {
        t0() + Duration::days(365)
    }

    fn engine(f: impl FnOnce(&mut FraudConfig)) -> FraudEngine {
        let mut c = FraudConfig { work_factor: 0, ..FraudConfig::default() };
        f(&mut c);
        FraudEngine::new(c).expect("valid config")
    }

    #[test]
    fn new_rules_score_the_next_payment_against_the_history_so_far() {
        let mut e = engine(|c| c.velocity_max_per_card = 5);
        for i in 0..4 {
            let v = e.score(&pay(&format!("p{i}"), "c1", "fp1", &format!("d{i}"), 100), t0(), far());
            assert!(v.reasons.is_empty(), "{v:?}");
        }
        // A reload lowers the card's limit: the fifth payment on the card
        // fires on the four recorded under the old rules.
        let lower = FraudConfig { work_factor: 0, velocity_max_per_card: 2, ..FraudConfig::default() };
        e.set_rules(Rules::new(lower.clone()).expect("valid"));
        assert_eq!(e.config(), &lower);
        let v = e.score(&pay("p4", "c1", "fp1", "d4", 100), t0(), far());
        assert_eq!(v.reasons, vec![Rule::Velocity], "{v:?}");
    }

    #[test]
    fn a_plain_payment_is_approved_with_no_reasons() {
        let mut e = engine(|_| {});
        let v = e.score(&pay("p1", "c1", "fp1", "d1", 500), t0(), far());
        assert_eq!(v, Verdict { score: 0, decision: Decision::Approve, reasons: vec![] });
    }

    #[test]
    fn velocity_fires_past_the_limit_inside_the_window_only() {
        let mut e = engine(|c| c.velocity_max_per_card = 3);
        for i in 0..3 {
            let v = e.score(&pay(&format!("p{i}"), &format!("c{i}"), "fp", &format!("d{i}"), 500), t0(), far());
            assert!(v.reasons.is_empty(), "payment {i}: {v:?}");
        }
        let v = e.score(&pay("p3", "c3", "fp", "d3", 500), t0() + Duration::seconds(10), far());
        assert_eq!(v.reasons, vec![Rule::Velocity]);
        // Eleven minutes later the earlier ones are outside the 10-minute window.
        let v = e.score(&pay("p4", "c4", "fp", "d4", 500), t0() + Duration::minutes(11), far());
        assert!(v.reasons.is_empty(), "{v:?}");
    }

    #[test]
    fn amount_fires_far_above_the_customers_mean() {
        let mut e = engine(|_| {});
        for i in 0..3 {
            e.score(&pay(&format!("p{i}"), "c", &format!("fp{i}"), &format!("d{i}"), 1000), t0(), far());
        }
        assert!(e.score(&pay("p3", "c", "fpx", "dx", 4900), t0(), far()).reasons.is_empty());
        assert_eq!(e.score(&pay("p4", "c", "fpy", "dy", 50_000), t0(), far()).reasons, vec![Rule::Amount]);
    }

    #[test]
    fn geo_uses_the_configured_table_including_nested_ranges() {
        let mut e = engine(|c| {
            c.ip_ranges = vec![
                IpRange { cidr: "198.51.100.0/24".into(), country: "US".into() },
                IpRange { cidr: "198.51.100.0/28".into(), country: "NL".into() },
                IpRange { cidr: "2001:db8::/32".into(), country: "DE".into() },
            ];
        });
        // 198.51.100.7 is in the nested /28 (NL), billing US.
        assert_eq!(e.score(&pay("p1", "c1", "f1", "d1", 100), t0(), far()).reasons, vec![Rule::Geo]);
        let mut p = pay("p2", "c2", "f2", "d2", 100);
        p.ip = "198.51.100.200".parse().expect("ip");
        assert!(e.score(&p, t0(), far()).reasons.is_empty());
        p = pay("p3", "c3", "f3", "d3", 100);
        p.ip = "2001:db8::1".parse().expect("ip");
        assert_eq!(e.score(&p, t0(), far()).reasons, vec![Rule::Geo]);
        p = pay("p4", "c4", "f4", "d4", 100);
        p.ip = "192.0.2.1".parse().expect("ip");
        assert!(e.score(&p, t0(), far()).reasons.is_empty(), "unknown ranges fire nothing");
    }

    #[test]
    fn nested_networks_resolve_to_the_innermost_on_both_sides() {
        let mut problems = Vec::new();
        let t = GeoTable::build(
            &[
                IpRange { cidr: "10.0.0.0/8".into(), country: "US".into() },
                IpRange { cidr: "10.1.0.0/16".into(), country: "NL".into() },
                IpRange { cidr: "10.1.2.0/24".into(), country: "DE".into() },
                IpRange { cidr: "0.0.0.0/0".into(), country: "ZZ".into() },
            ],
            &mut problems,
        );
        assert!(problems.is_empty());
        let at = |s: &str| t.country(s.parse().expect("ip")).map(|c| String::from_utf8_lossy(&c).into_owned());
        for (ip, want) in [
            ("9.255.255.255", "ZZ"),
            ("10.0.0.1", "US"),
            ("10.1.0.0", "NL"),
            ("10.1.2.9", "DE"),
            ("10.1.3.0", "NL"),
            ("10.2.0.0", "US"),
            ("11.0.0.0", "ZZ"),
            ("255.255.255.255", "ZZ"),
            ("::ffff:10.1.2.3", "DE"),
        ] {
            assert_eq!(at(ip).as_deref(), Some(want), "{ip}");
        }
        assert_eq!(at("2001:db8::1"), None);
    }

    #[test]
    fn bin_and_device_fire_and_weights_sum_to_a_decision() {
        let mut e = engine(|c| {
            c.risky_bins = vec!["411111".into()];
            c.device_max_cards = 2;
        });
        let v = e.score(&pay("p1", "c1", "f1", "dev", 100), t0(), far());
        assert_eq!((v.reasons.clone(), v.score, v.decision), (vec![Rule::Bin], 300, Decision::Review));
        e.score(&pay("p2", "c2", "f2", "dev", 100), t0(), far());
        let v = e.score(&pay("p3", "c3", "f3", "dev", 100), t0(), far());
        assert_eq!(v.reasons, vec![Rule::Bin, Rule::Device]);
        assert_eq!((v.score, v.decision), (550, Decision::Review));
    }

    #[test]
    fn scores_are_deterministic_and_redeliveries_do_not_count_twice() {
        let run = || {
            let mut e = engine(|c| c.velocity_max_per_card = 2);
            let mut out = Vec::new();
            for i in 0..6 {
                let p = pay(&format!("p{}", i % 3), "c", "fp", "d", 100 + i);
                out.push(e.score(&p, t0() + Duration::seconds(i as i64), far()));
            }
            out
        };
        let a = run();
        assert_eq!(a, run());
        // p0,p1,p2 then redeliveries of the same three: only 3 distinct
        // payments are on the card, so velocity (max 2) fires from the third on.
        assert!(a[..2].iter().all(|v| v.reasons.is_empty()));
        assert!(a[2..].iter().all(|v| v.reasons == vec![Rule::Velocity]));
    }

    #[test]
    fn history_stays_bounded_under_any_number_of_keys() {
        let mut e = engine(|c| c.max_tracked_keys = 100);
        for i in 0..10_000 {
            e.score(&pay(&format!("p{i}"), &format!("c{i}"), &format!("f{i}"), &format!("d{i}"), 100), t0(), far());
        }
        assert!(e.cards.len() <= 100 && e.customers.len() <= 100 && e.devices.len() <= 100);
        assert!(e.applied.len() <= 100);
        // Time bound: a day later, one payment sweeps all the old keys eventually.
        for i in 0..4096 {
            e.score(&pay(&format!("q{i}"), "cq", "fq", "dq", 100), t0() + Duration::days(2), far());
        }
        assert!(e.tracked_keys() <= 3 + 3 * 100 * 9 / 10);
    }

    #[test]
    fn every_config_problem_is_named() {
        let c = FraudConfig {
            review_threshold: 900,
            decline_threshold: 800,
            risky_bins: vec!["12".into()],
            ip_ranges: vec![IpRange { cidr: "10.0.0.0/40".into(), country: "us".into() }],
            velocity_window_secs: 0,
            ..FraudConfig::default()
        };
        let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["velocity_window_secs", "review_threshold", "risky_bins[0]", "ip_ranges[0].country"]);
        let c2 = FraudConfig {
            ip_ranges: vec![IpRange { cidr: "10.0.0.0/40".into(), country: "US".into() }],
            ..FraudConfig::default()
        };
        assert_eq!(c2.problems()[0].field, "ip_ranges[0].cidr");
    }

    #[test]
    fn model_work_many_is_model_work_per_payment() {
        // Every count of chunks of eight, four, two and one up to 19.
        let ps: Vec<_> = (0..19).map(|i| pay(&format!("p{i}"), "c", &format!("fp{}", i % 3), "d", 1)).collect();
        for n in 0..=ps.len() {
            let batch: Vec<_> = ps[..n].iter().collect();
            let want: Vec<_> = batch.iter().map(|p| model_work(p, 50)).collect();
            assert_eq!(model_work_many(&batch, 50), want, "{n} payments");
        }
    }

    #[test]
    fn model_work_depends_on_rounds_and_identity() {
        let p = pay("p1", "c", "fp", "d", 1);
        assert_ne!(model_work(&p, 1), model_work(&p, 2));
        assert_eq!(model_work(&p, 100), model_work(&p, 100));
        assert_ne!(model_work(&p, 100), model_work(&pay("p2", "c", "fp", "d", 1), 100));
    }
}
