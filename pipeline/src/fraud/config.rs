//! `[fraud]`: the rules' settings, their defaults and their checks.
//!
//! Owns: the fraud section of the daemon's config (weights, thresholds,
//! windows, the risk lists, the IP table) and what is wrong with one. Must
//! not: score anything.

use serde::{Deserialize, Serialize};

use super::geo::GeoTable;

/// Fraud scoring configuration: the `[fraud]` section of the daemon's config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FraudConfig {
    /// Iterated SHA-256 rounds per payment: the "model inference" cost of the
    /// original scenario. 0 disables it.
    pub work_factor: u32,
    /// Velocity window per card fingerprint, in seconds of event time.
    pub velocity_window_secs: u32,
    /// More payments than this on one card within the window fire `velocity`.
    pub velocity_max_per_card: u32,
    /// `amount` fires when a payment exceeds this multiple of the customer's
    /// mean amount.
    pub amount_factor: f64,
    /// `amount` needs at least this many earlier payments of the customer.
    pub amount_min_history: u32,
    /// How many recent amounts per customer make the mean.
    pub amount_history: u32,
    /// Device fan-out window, in seconds of event time.
    pub device_window_secs: u32,
    /// More distinct cards than this on one device within the window fire `device`.
    pub device_max_cards: u32,
    /// Card BINs considered risky: fire `bin`.
    pub risky_bins: Vec<String>,
    /// IP ranges and their countries: a payment whose `ip` falls in a range of
    /// another country than `billing_country` fires `geo`. IPs in no range
    /// fire nothing.
    pub ip_ranges: Vec<IpRange>,
    /// Points each rule adds to the score (0..1000, capped at 1000).
    pub weights: RuleWeights,
    /// Scores at or above this are `review`.
    pub review_threshold: u32,
    /// Scores at or above this are `decline`.
    pub decline_threshold: u32,
    /// History older than this behind the newest event time is forgotten.
    pub history_secs: u32,
    /// Most keys any one history map holds (in process), or the shared
    /// state's cache holds (in DynamoDB).
    pub max_tracked_keys: usize,
    /// Where the rules' history lives: `dynamodb` (a table every instance
    /// shares, `sinks.dynamodb.fraud_state_table`) or `process` (this
    /// process's memory: no extra reads, for a single instance; a restart
    /// starts it empty).
    pub state: StateStore,
}

/// Where the fraud rules' history lives (`[fraud] state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateStore {
    /// In the process's memory.
    Process,
    /// In a DynamoDB table all instances share.
    DynamoDb,
}

impl StateStore {
    /// The config value.
    pub fn name(self) -> &'static str {
        match self {
            StateStore::Process => "process",
            StateStore::DynamoDb => "dynamodb",
        }
    }
}

impl Default for FraudConfig {
    fn default() -> Self {
        FraudConfig {
            work_factor: 10_000,
            velocity_window_secs: 600,
            velocity_max_per_card: 5,
            amount_factor: 5.0,
            amount_min_history: 3,
            amount_history: 20,
            device_window_secs: 3600,
            device_max_cards: 3,
            risky_bins: Vec::new(),
            ip_ranges: Vec::new(),
            weights: RuleWeights::default(),
            review_threshold: 300,
            decline_threshold: 600,
            history_secs: 86_400,
            max_tracked_keys: 200_000,
            state: StateStore::DynamoDb,
        }
    }
}

/// One entry of the IP-to-country table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IpRange {
    /// IPv4 or IPv6 network in CIDR form, e.g. `203.0.113.0/24`.
    pub cidr: String,
    /// ISO 3166 alpha-2 country.
    pub country: String,
}

/// Points per rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleWeights {
    /// Card velocity.
    pub velocity: u32,
    /// Amount far above the customer's usual.
    pub amount: u32,
    /// Billing country differs from the IP's country.
    pub geo: u32,
    /// Risky BIN.
    pub bin: u32,
    /// One device, many cards.
    pub device: u32,
}

impl Default for RuleWeights {
    fn default() -> Self {
        RuleWeights { velocity: 350, amount: 250, geo: 200, bin: 300, device: 250 }
    }
}

/// A configuration problem: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct ConfigProblem {
    /// Dotted path below `[fraud]`.
    pub field: String,
    /// What is wrong.
    pub why: String,
}

impl FraudConfig {
    /// Every problem of this configuration, with its field.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, why: String| problems.push(ConfigProblem { field: field.to_owned(), why });
        // Live on a reload: a slip of a digit must not stall the CPU pool.
        if self.work_factor > 1_000_000 {
            bad("work_factor", format!("must be 0..1000000, got {}", self.work_factor));
        }
        if self.velocity_window_secs == 0 {
            bad("velocity_window_secs", "must be greater than 0".into());
        }
        if self.device_window_secs == 0 {
            bad("device_window_secs", "must be greater than 0".into());
        }
        if !(self.amount_factor.is_finite() && self.amount_factor > 0.0) {
            bad("amount_factor", format!("must be a positive number, got {}", self.amount_factor));
        }
        if self.amount_history == 0 {
            bad("amount_history", "must be greater than 0".into());
        }
        if self.review_threshold > 1000 {
            bad("review_threshold", format!("must be 0..1000, got {}", self.review_threshold));
        }
        if self.decline_threshold > 1000 {
            bad("decline_threshold", format!("must be 0..1000, got {}", self.decline_threshold));
        }
        if self.review_threshold > self.decline_threshold {
            bad("review_threshold", format!("{} is above decline_threshold {}", self.review_threshold, self.decline_threshold));
        }
        if self.max_tracked_keys < 16 {
            bad("max_tracked_keys", format!("must be at least 16, got {}", self.max_tracked_keys));
        }
        if self.history_secs < self.velocity_window_secs.max(self.device_window_secs) {
            bad("history_secs", "must cover velocity_window_secs and device_window_secs".into());
        }
        for (i, b) in self.risky_bins.iter().enumerate() {
            if b.len() != 6 || !b.bytes().all(|c| c.is_ascii_digit()) {
                bad(&format!("risky_bins[{i}]"), format!("{b:?} is not 6 digits"));
            }
        }
        GeoTable::build(&self.ip_ranges, &mut problems);
        problems
    }
}
