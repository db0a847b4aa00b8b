//! Fault rules: what to inject, for which operation, how often, and which rule decides.
//!
//! Rules are plain data so that the control API, scenario files and tests can all write
//! them as JSON. This module decides which requests a rule hits but does no I/O.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One fault to inject. In JSON: `{"operation": "GetItem", "probability": 0.5, "fault": {"kind": "throttle"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The operation it applies to, e.g. "TransactWriteItems", "GetRecords",
    /// "DeleteMessageBatch"; absent means every operation.
    #[serde(default)]
    pub operation: Option<String>,
    /// Share of matching requests it hits, 0.0..=1.0; absent means 1.0. Spread
    /// evenly and not drawn at random: of the first n requests it judges, the
    /// rule hits round(n × share), the first one already when the share is at
    /// least a half. So a short window of few requests still gets its share
    /// (a random draw left a window of three requests unhit one time in eight).
    #[serde(default = "always")]
    pub probability: f64,
    pub fault: Fault,
}

fn always() -> f64 {
    1.0
}

/// What happens to a request a rule hits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// The service's own throttling error for the operation (status 400).
    Throttle,
    /// Any AWS error in the service's shape, e.g. 400 "TransactionCanceledException" with
    /// `extra: {"CancellationReasons": [...]}` merged into the JSON body. For SQS, `code`
    /// is the query-compatible code the SDK matches on (e.g. "AWS.SimpleQueueService.NonExistentQueue").
    Error {
        status: u16,
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        extra: Option<Value>,
    },
    /// The service's own internal error (status 500).
    ServerError,
    /// Forward, but only after this delay (a client that gives up first
    /// cancels the request: it never reaches the upstream).
    Latency { millis: u64 },
    /// Forward at once, whatever the client does, and hold the answer this
    /// long: the upstream acts on the request while its client times out,
    /// the ambiguous outcome that retries and conditional writes must
    /// survive (a write that landed though its caller saw a failure).
    LateAnswer { millis: u64 },
    /// Close the connection with a TCP reset instead of answering.
    Reset,
    /// Never answer; the request is held until its client gives up.
    BlackHole,
}

/// A fault's kind, as counted in [`crate::Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultKind {
    Throttle,
    Error,
    ServerError,
    Latency,
    LateAnswer,
    Reset,
    BlackHole,
}

impl Fault {
    pub(crate) fn kind(&self) -> FaultKind {
        match self {
            Fault::Throttle => FaultKind::Throttle,
            Fault::Error { .. } => FaultKind::Error,
            Fault::ServerError => FaultKind::ServerError,
            Fault::Latency { .. } => FaultKind::Latency,
            Fault::LateAnswer { .. } => FaultKind::LateAnswer,
            Fault::Reset => FaultKind::Reset,
            Fault::BlackHole => FaultKind::BlackHole,
        }
    }
}

/// A rule that cannot be applied; rules are checked as a whole before any replaces the active set.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum InvalidRule {
    /// `probability` is NaN or outside 0.0..=1.0.
    #[error("rule {index}: probability {probability} is not within 0.0..=1.0")]
    Probability { index: usize, probability: f64 },
    /// An `error` fault whose status is not 400..=599, which no client would read as an error.
    #[error("rule {index}: status {status} is not an error status (400..=599)")]
    Status { index: usize, status: u16 },
    /// An `error` fault with an empty code, or an `extra` that is not a JSON object.
    #[error("rule {index}: {problem}")]
    ErrorShape { index: usize, problem: &'static str },
}

/// Checks every rule, naming the first bad one by its position in the list.
pub fn validate(rules: &[Rule]) -> Result<(), InvalidRule> {
    for (index, rule) in rules.iter().enumerate() {
        if !(0.0..=1.0).contains(&rule.probability) {
            return Err(InvalidRule::Probability { index, probability: rule.probability });
        }
        if let Fault::Error { status, code, extra, .. } = &rule.fault {
            if !(400..=599).contains(status) {
                return Err(InvalidRule::Status { index, status: *status });
            }
            if code.is_empty() {
                return Err(InvalidRule::ErrorShape { index, problem: "error code is empty" });
            }
            if extra.as_ref().is_some_and(|e| !e.is_object()) {
                return Err(InvalidRule::ErrorShape { index, problem: "extra must be a JSON object" });
            }
        }
    }
    Ok(())
}

/// A rule set in force: the rules and how many requests each has judged.
#[derive(Debug, Default)]
pub(crate) struct Active {
    rules: Vec<Rule>,
    judged: Vec<AtomicU64>,
}

impl Active {
    pub(crate) fn new(rules: Vec<Rule>) -> Self {
        let judged = rules.iter().map(|_| AtomicU64::new(0)).collect();
        Active { rules, judged }
    }

    pub(crate) fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The fault of the first rule, in list order, that matches `operation` and
    /// hits it. Each matching rule judges the request in turn, so later rules
    /// see (and count) only the earlier ones' misses.
    pub(crate) fn pick(&self, operation: &str) -> Option<&Fault> {
        self.rules
            .iter()
            .zip(&self.judged)
            .filter(|(rule, _)| rule.operation.as_deref().is_none_or(|op| op == operation))
            .find(|(rule, judged)| hits(rule.probability, judged.fetch_add(1, Ordering::Relaxed)))
            .map(|(rule, _)| &rule.fault)
    }
}

/// Whether a rule of share `p` hits the `n`-th request it judges (from 0):
/// round(k × p) of its first k requests are hit, for every k.
fn hits(p: f64, n: u64) -> bool {
    ((n + 1) as f64 * p + 0.5).floor() > (n as f64 * p + 0.5).floor()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_json() {
        let rules: Vec<Rule> = serde_json::from_str(
            r#"[{"operation": "GetItem", "probability": 0.5, "fault": {"kind": "throttle"}},
                {"fault": {"kind": "latency", "millis": 20}},
                {"fault": {"kind": "error", "status": 400, "code": "TransactionCanceledException",
                           "extra": {"CancellationReasons": [{"Code": "ConditionalCheckFailed"}]}}}]"#,
        )
        .expect("valid rules");
        assert_eq!(rules[0].operation.as_deref(), Some("GetItem"));
        assert_eq!(rules[1].probability, 1.0);
        assert_eq!(rules[1].fault, Fault::Latency { millis: 20 });
        assert!(validate(&rules).is_ok());
        // A misspelt field fails loudly instead of quietly becoming a default.
        let typo = serde_json::from_str::<Rule>(r#"{"fault": {"kind": "latency", "milis": 3}}"#);
        assert!(typo.is_err_and(|e| e.to_string().contains("milis")));
        assert!(serde_json::from_str::<Rule>(r#"{"probabilty": 0.1, "fault": {"kind": "reset"}}"#).is_err());
    }

    #[test]
    fn rejects_bad_rules_by_position() {
        let ok = Rule { operation: None, probability: 1.0, fault: Fault::Reset };
        let bad = Rule { probability: 1.5, ..ok.clone() };
        assert_eq!(validate(&[ok.clone(), bad]), Err(InvalidRule::Probability { index: 1, probability: 1.5 }));
        let nan = Rule { probability: f64::NAN, ..ok.clone() };
        assert!(validate(&[nan]).is_err());
        let fault = Fault::Error { status: 200, code: "X".into(), message: String::new(), extra: None };
        assert_eq!(validate(&[Rule { fault, ..ok }]), Err(InvalidRule::Status { index: 0, status: 200 }));
    }

    #[test]
    fn first_hitting_rule_decides() {
        let rules = vec![
            Rule { operation: Some("PutItem".into()), probability: 1.0, fault: Fault::Reset },
            Rule { operation: None, probability: 0.0, fault: Fault::BlackHole },
            Rule { operation: None, probability: 1.0, fault: Fault::Throttle },
        ];
        let active = Active::new(rules.clone());
        assert_eq!(active.pick("PutItem"), Some(&Fault::Reset));
        assert_eq!(active.pick("GetItem"), Some(&Fault::Throttle));
        assert_eq!(Active::new(rules[..2].to_vec()).pick("GetItem"), None);
    }

    #[test]
    fn a_share_is_spread_evenly_from_the_first_request() {
        let hit = |p: f64, k: u64| (0..k).filter(|&n| hits(p, n)).count();
        // A half hits the first request, then every other one.
        assert_eq!((0..6).map(|n| hits(0.5, n)).collect::<Vec<_>>(), [true, false, true, false, true, false]);
        for (p, k, want) in [(0.5, 400, 200), (0.3, 1000, 300), (0.02, 400, 8), (1.0, 50, 50), (0.0, 50, 0)] {
            assert_eq!(hit(p, k), want, "share {p} over {k}");
        }
        // Every prefix holds its share, rounded.
        for k in 1..200 {
            assert_eq!(hit(0.3, k) as f64, (k as f64 * 0.3).round(), "first {k}");
        }
        // Later rules judge only what the earlier ones let through.
        let active = Active::new(vec![
            Rule { operation: None, probability: 0.5, fault: Fault::Throttle },
            Rule { operation: None, probability: 0.5, fault: Fault::Reset },
        ]);
        let picked: Vec<_> = (0..4).map(|_| active.pick("GetItem").cloned()).collect();
        assert_eq!(picked, [Some(Fault::Throttle), Some(Fault::Reset), Some(Fault::Throttle), None]);
    }
}
