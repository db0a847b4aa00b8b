//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.
//!
//! Owns: serving what `Metrics` and `Health` say, and the state of each
//! component (`Components`: an input that cannot read, a sink whose writes
//! fail), which the internal events report. Must not: do work on the data
//! path or expose anything but metrics and health (it binds loopback by
//! default).
//!
//! - `/healthz` (liveness): 200 while the health loop, the one that pings
//!   systemd's watchdog, has run within [`STALL`]; 503 once it has not (the
//!   runtime is stalled). Before the first start it says `starting`, 200.
//! - `/readyz` (readiness): 200 once the inputs are connected, until the
//!   drain begins, and while no component has been failing for longer than
//!   `admin.unready_after_secs`; 503 otherwise, and back to 200 when the
//!   component recovers. A component with no call at all for that long
//!   (a shard whose lease moved away, a sink with nothing to write) is
//!   `stale`, not failed: it no longer counts. The Redshift mirror is shown
//!   but never counts: it buffers in DynamoDB through an outage by design
//!   (`CafeRedshiftMirrorBehind` alerts on it).
//!
//! Both answer JSON naming each component's state, with the error's code
//! only (messages, which may name an account or a principal, stay in the
//! log).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::metrics::Metrics;

/// How long the health loop may go without running before `/healthz`
/// says the process is stalled.
pub const STALL: Duration = Duration::from_secs(10);

/// The state of each input and sink, as the internal events report it: a
/// failed call marks its component failing (from then, until a call of
/// the same component succeeds).
#[derive(Debug, Default)]
pub struct Components {
    /// kind (`source`, `sink`) -> name -> state.
    by_kind: Mutex<BTreeMap<&'static str, BTreeMap<String, Component>>>,
}

#[derive(Debug, Clone)]
struct Component {
    failing_since: Option<Instant>,
    last_error: Option<String>,
    /// The last call, ok or failed.
    last_call: Instant,
}

impl Component {
    fn new() -> Self {
        Component { failing_since: None, last_error: None, last_call: Instant::now() }
    }

    /// Failing for longer than `limit`, and still called within it.
    fn failed(&self, limit: Duration) -> bool {
        self.failing_since.is_some_and(|t| t.elapsed() > limit) && self.last_call.elapsed() <= limit
    }
}

/// Whether a component's state counts for readiness.
fn counts_for_readiness(kind: &str, name: &str) -> bool {
    !(kind == "sink" && name == "redshift")
}

/// An error's call, code and status, without the service's message:
/// `reading fraud state: ThrottlingException (HTTP 400)` of `reading fraud
/// state: ThrottlingException (HTTP 400): Rate exceeded for arn:...`; an
/// error without an HTTP status keeps its first part.
fn brief(error: &str) -> String {
    let head = match error.find(" (HTTP ").and_then(|i| error[i..].find(')').map(|j| i + j + 1)) {
        Some(end) => &error[..end],
        None => error.split(": ").next().unwrap_or(error),
    };
    head.chars().take(160).collect()
}

/// Failing at least this long before a recovery is worth a log line.
const RECOVERY_WORTH_LOGGING: Duration = Duration::from_secs(5);

impl Components {
    /// A call of the `kind` component `name` succeeded (no allocation
    /// once the component is known: this runs per request).
    pub fn ok(&self, kind: &'static str, name: &str) {
        let mut by_kind = self.by_kind.lock().unwrap_or_else(PoisonError::into_inner);
        let names = by_kind.entry(kind).or_default();
        match names.get_mut(name) {
            Some(c) if c.failing_since.is_some() => {
                let failed_for = c.failing_since.map(|t| t.elapsed()).unwrap_or_default();
                *c = Component::new();
                if failed_for >= RECOVERY_WORTH_LOGGING {
                    tracing::info!(component = %format!("{kind} {name}"), failed_secs = failed_for.as_secs_f64(), "Component recovered");
                }
            }
            Some(c) => c.last_call = Instant::now(),
            None => {
                names.insert(name.to_owned(), Component::new());
            }
        }
    }

    /// A call of the `kind` component `name` failed with `error`
    /// (credential-free).
    pub fn failed(&self, kind: &'static str, name: &str, error: &str) {
        let mut by_kind = self.by_kind.lock().unwrap_or_else(PoisonError::into_inner);
        let c = by_kind.entry(kind).or_default().entry(name.to_owned()).or_insert_with(Component::new);
        c.failing_since.get_or_insert_with(Instant::now);
        c.last_call = Instant::now();
        let error = brief(error);
        if c.last_error.as_deref() != Some(error.as_str()) {
            c.last_error = Some(error);
        }
    }

    /// The components that count for readiness and have been failing for
    /// longer than `limit` (and were still called within it), as `kind name`.
    pub fn failing_longer_than(&self, limit: Duration) -> Vec<String> {
        let by_kind = self.by_kind.lock().unwrap_or_else(PoisonError::into_inner);
        by_kind
            .iter()
            .flat_map(|(kind, names)| {
                names
                    .iter()
                    .filter(|(n, c)| counts_for_readiness(kind, n) && c.failed(limit))
                    .map(move |(n, _)| format!("{kind} {n}"))
            })
            .collect()
    }

    /// Every component as (kind, name, seconds failing; 0 while it works).
    pub fn failing_seconds(&self) -> Vec<(&'static str, String, f64)> {
        let by_kind = self.by_kind.lock().unwrap_or_else(PoisonError::into_inner);
        by_kind
            .iter()
            .flat_map(|(kind, names)| {
                names.iter().map(move |(n, c)| (*kind, n.clone(), c.failing_since.map_or(0.0, |t| t.elapsed().as_secs_f64())))
            })
            .collect()
    }

    /// Each component's state, as JSON: `{"sink": {"dynamodb": {"state": ...}}}`.
    pub fn report(&self, limit: Duration) -> serde_json::Value {
        let by_kind = self.by_kind.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = serde_json::Map::new();
        for (kind, names) in by_kind.iter() {
            let states: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .map(|(name, c)| {
                    let mut state = match c.failing_since {
                        None => json!({ "state": "ok" }),
                        Some(t) => json!({
                            "state": if c.last_call.elapsed() > limit {
                                "stale"
                            } else if t.elapsed() > limit {
                                "failed"
                            } else {
                                "failing"
                            },
                            "failing_secs": (t.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                            "error": c.last_error,
                        }),
                    };
                    if !counts_for_readiness(kind, name) {
                        state["counts_for_readiness"] = json!(false);
                    }
                    (name.clone(), state)
                })
                .collect();
            out.insert((*kind).to_owned(), serde_json::Value::Object(states));
        }
        serde_json::Value::Object(out)
    }
}

/// Whether the daemon is alive, ready for work, and draining.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    draining: AtomicBool,
    /// When the health loop last ran.
    beat: Mutex<Option<Instant>>,
    components: Arc<Components>,
    unready_after: Duration,
}

impl Health {
    /// Health over `components`, not ready while one has been failing for
    /// longer than `unready_after`.
    pub fn new(components: Arc<Components>, unready_after: Duration) -> Self {
        Health {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            beat: Mutex::new(None),
            components,
            unready_after,
        }
    }

    /// Sources are connected.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Shutdown has begun.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The health loop ran.
    pub fn beat(&self) {
        *self.beat.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// How long ago the health loop last ran.
    fn since_beat(&self) -> Option<Duration> {
        self.beat.lock().unwrap_or_else(PoisonError::into_inner).map(|t| t.elapsed())
    }

    /// Alive for the watchdog: started (ready at least once). Draining is
    /// alive too: the stop has its own timeout.
    pub fn is_alive(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Ready, not draining, and no component failing for too long.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
            && self.components.failing_longer_than(self.unready_after).is_empty()
    }

    /// `/healthz`: status and body.
    pub fn liveness(&self) -> (StatusCode, serde_json::Value) {
        let since = self.since_beat();
        let (code, status) = if !self.is_alive() {
            (StatusCode::OK, "starting")
        } else if since.is_none_or(|s| s > STALL) {
            (StatusCode::SERVICE_UNAVAILABLE, "stalled")
        } else {
            (StatusCode::OK, "alive")
        };
        let body = json!({
            "status": status,
            "health_loop_secs_ago": since.map(|s| (s.as_secs_f64() * 10.0).round() / 10.0),
            "components": self.components.report(self.unready_after),
        });
        (code, body)
    }

    /// `/readyz`: status and body.
    pub fn readiness(&self) -> (StatusCode, serde_json::Value) {
        let started = self.ready.load(Ordering::SeqCst);
        let draining = self.draining.load(Ordering::SeqCst);
        let failed = self.components.failing_longer_than(self.unready_after);
        let ready = started && !draining && failed.is_empty();
        let reason = if !started {
            "starting".to_owned()
        } else if draining {
            "draining".to_owned()
        } else if !failed.is_empty() {
            format!("failing for over {} s: {}", self.unready_after.as_secs(), failed.join(", "))
        } else {
            String::new()
        };
        let body = json!({
            "status": if ready { "ready" } else { "not ready" },
            "reason": reason,
            "components": self.components.report(self.unready_after),
        });
        (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The admin router.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(live_handler))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { metrics, health })
}

/// OpenMetrics for clients that ask for it (Prometheus does), the classic
/// text format otherwise.
async fn metrics_handler(State(s): State<AppState>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains("application/openmetrics-text") {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode())
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.encode_text())
    }
}

fn json_response((code, body): (StatusCode, serde_json::Value)) -> impl IntoResponse {
    (code, [(header::CONTENT_TYPE, "application/json")], format!("{body}\n"))
}

async fn live_handler(State(s): State<AppState>) -> impl IntoResponse {
    json_response(s.health.liveness())
}

async fn ready_handler(State(s): State<AppState>) -> impl IntoResponse {
    json_response(s.health.readiness())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_failing_too_long_makes_the_daemon_unready_until_it_recovers() {
        let components = Arc::new(Components::default());
        let health = Health::new(Arc::clone(&components), Duration::from_millis(50));
        assert_eq!(health.readiness().0, StatusCode::SERVICE_UNAVAILABLE, "not ready before the start");
        health.set_ready();
        components.ok("source", "payments");
        assert_eq!(health.readiness().0, StatusCode::OK);
        components.failed("sink", "dynamodb", "ThrottlingException");
        // Failing, but not for long yet: still ready.
        let (code, body) = health.readiness();
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["components"]["sink"]["dynamodb"]["state"], "failing");
        std::thread::sleep(Duration::from_millis(80));
        // Retried, and failing still: failed, so the daemon is not ready.
        components.failed(
            "sink",
            "dynamodb",
            "ThrottlingException (HTTP 400): Rate exceeded for arn:aws:iam::123456789012:role/x",
        );
        let (code, body) = health.readiness();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["components"]["sink"]["dynamodb"]["state"], "failed");
        assert_eq!(
            body["components"]["sink"]["dynamodb"]["error"], "ThrottlingException (HTTP 400)",
            "the message stays in the log"
        );
        components.ok("source", "payments");
        assert_eq!(body["components"]["source"]["payments"]["state"], "ok");
        assert!(body["reason"].as_str().is_some_and(|r| r.contains("sink dynamodb")), "{body}");
        // Failing again does not restart the clock; a success ends it.
        components.failed("sink", "dynamodb", "ThrottlingException");
        assert_eq!(health.readiness().0, StatusCode::SERVICE_UNAVAILABLE);
        components.ok("sink", "dynamodb");
        let (code, body) = health.readiness();
        assert_eq!(code, StatusCode::OK, "{body}");
        health.set_draining();
        let (code, body) = health.readiness();
        assert_eq!((code, body["reason"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("draining")));
    }

    #[test]
    fn a_failure_with_no_call_since_goes_stale_and_the_mirror_never_counts() {
        let components = Arc::new(Components::default());
        let health = Health::new(Arc::clone(&components), Duration::from_millis(50));
        health.set_ready();
        // One failed call, then nothing (a shard whose lease moved away, a
        // startup probe): failing at first, then stale, never unready.
        components.failed("source", "orders/shardId-000000000001", "ExpiredIteratorException (HTTP 400)");
        components.failed("sink", "redshift", "connection failed");
        std::thread::sleep(Duration::from_millis(80));
        let (code, body) = health.readiness();
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["components"]["source"]["orders/shardId-000000000001"]["state"], "stale");
        // The mirror, failing and still called: shown as failed, not counted.
        components.failed("sink", "redshift", "connection failed");
        let (code, body) = health.readiness();
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["components"]["sink"]["redshift"]["state"], "failed");
        assert_eq!(body["components"]["sink"]["redshift"]["counts_for_readiness"], false);
    }

    #[test]
    fn errors_keep_their_call_code_and_status_but_not_the_message() {
        assert_eq!(
            brief(
                "reading fraud state: ProvisionedThroughputExceededException (HTTP 400): The level of configured provisioned throughput"
            ),
            "reading fraud state: ProvisionedThroughputExceededException (HTTP 400)"
        );
        assert_eq!(
            brief("AccessDeniedException (HTTP 400): User: arn:aws:sts::123456789012:assumed-role/x"),
            "AccessDeniedException (HTTP 400)"
        );
        assert_eq!(brief("connection failed: error performing TLS handshake"), "connection failed");
        assert_eq!(brief("timeout"), "timeout");
    }

    #[test]
    fn liveness_follows_the_health_loop() {
        let health = Health::new(Arc::default(), Duration::from_secs(60));
        assert_eq!(health.liveness().0, StatusCode::OK, "starting counts as alive");
        assert_eq!(health.liveness().1["status"], "starting");
        health.set_ready();
        assert_eq!(health.liveness().0, StatusCode::SERVICE_UNAVAILABLE, "started, and the loop never ran");
        health.beat();
        let (code, body) = health.liveness();
        assert_eq!((code, body["status"].as_str()), (StatusCode::OK, Some("alive")));
        *health.beat.lock().expect("lock") = Instant::now().checked_sub(STALL + Duration::from_secs(1));
        let (code, body) = health.liveness();
        assert_eq!((code, body["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("stalled")));
    }
}
