//! Reloading the configuration while the daemon runs (SIGHUP).
//!
//! Owns: which fields a reload applies, and applying them. Live: the log
//! level (`log.level`), the fraud rules and thresholds (every `fraud.*`
//! field but `state` and `max_tracked_keys`, and with the history shared
//! in DynamoDB, but the four that bound what each key's state keeps:
//! `velocity_max_per_card`, `amount_history`, `device_max_cards` and
//! `history_secs`; instances with different bounds would trim each other's
//! shared states, so those change with a restart of the whole fleet), and
//! the work factors (`fraud.work_factor`, `pipeline.menu_json_rounds`,
//! `pipeline.max_future_secs`) and the pacing (`pipeline.linger_ms`, each
//! stream's `poll_interval_ms` and `idle_poll_interval_ms`, which wake the
//! readers waiting out the old ones). Every other changed field is named in
//! the log and left as it was until a restart: it sizes a channel, a pool
//! or a cache, names a resource, or is read once at start. A configuration
//! that is not valid, or an empty file (one being rewritten), changes
//! nothing.
//! Must not: read signals (`main` installs the handler) or stop any task.
//! A batch takes the work factors when it is decided, and the shared
//! state's rules when it is written; nothing under way is dropped.

use std::path::PathBuf;
use std::sync::Arc;

use pipeline::fraud::{FraudConfig, Rules, StateStore};
use serde_json::Value;
use tracing::{error, info, warn};

use crate::config::{Config, Problem, Problems};
use crate::logging::{LevelChange, Logging};
use crate::notify::Notifier;
use crate::route::{Router, Tuned, Work};

/// What a reload reads: SIGHUP, and the file the daemon started with (or
/// none: the defaults), with the process's `CAFE_...` environment.
#[derive(Debug)]
pub struct Reload {
    /// The signal, installed before the run starts.
    pub hangups: tokio::signal::unix::Signal,
    /// The configuration file.
    pub path: Option<PathBuf>,
}

/// The configuration read again, as `config::load` reads it, the file
/// read without blocking a runtime worker.
async fn read(path: Option<&std::path::Path>) -> Result<Config, Problems> {
    let origin = path.map_or_else(|| "defaults".to_owned(), |p| p.display().to_string());
    let refuse = |why: String| Problems(vec![Problem { origin: origin.clone(), field: "-".into(), why }]);
    let text = match path {
        Some(p) => tokio::fs::read_to_string(p).await.map_err(|e| refuse(format!("cannot read: {e}")))?,
        None => String::new(),
    };
    // A file caught while it is rewritten would read as all defaults.
    if path.is_some() && text.trim().is_empty() {
        return Err(refuse("is empty (being rewritten?); a reload needs the whole file".into()));
    }
    // Validation may read files (a Redshift root certificate): not on a
    // runtime worker's time.
    tokio::task::block_in_place(|| crate::config::parse(&text, &origin, std::env::vars()))
}

/// The fraud fields that bound what a key's state keeps: restart-only when
/// the state is shared.
const STATE_BOUNDS: [&str; 4] =
    ["fraud.velocity_max_per_card", "fraud.amount_history", "fraud.device_max_cards", "fraud.history_secs"];

/// Whether a reload applies `field` (a dotted path) while the daemon runs,
/// with the fraud history kept in `state`.
pub fn is_live(field: &str, state: StateStore) -> bool {
    matches!(field, "log.level" | "pipeline.menu_json_rounds" | "pipeline.max_future_secs" | "pipeline.linger_ms")
        || (field.starts_with("sources.") && (field.ends_with(".poll_interval_ms") || field.ends_with(".idle_poll_interval_ms")))
        || (field.starts_with("fraud.")
            && !matches!(field, "fraud.state" | "fraud.max_tracked_keys")
            && !(state == StateStore::DynamoDb && STATE_BOUNDS.contains(&field)))
}

/// Dotted paths of every field whose value differs between `a` and `b`
/// (a list or a table of inputs that differs is named as a whole).
pub fn changed_fields(a: &Config, b: &Config) -> Vec<String> {
    let (a, b) = (serde_json::to_value(a).unwrap_or(Value::Null), serde_json::to_value(b).unwrap_or(Value::Null));
    let mut out = Vec::new();
    diff(&a, &b, "", &mut out);
    out
}

fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff(x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), &sub, out);
            }
        }
        _ if a != b => out.push(path.to_owned()),
        _ => {}
    }
}

/// What a reload does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Changed fields it applies.
    pub applied: Vec<String>,
    /// Changed fields that need a restart; they keep their running values.
    pub kept: Vec<String>,
    /// The configuration in force after it: `running` with the live fields
    /// of the one read.
    pub next: Config,
}

/// The reload from `running` to `wanted`.
pub fn plan(running: &Config, wanted: &Config) -> Plan {
    let state = running.fraud.state;
    let (applied, kept): (Vec<String>, Vec<String>) =
        changed_fields(running, wanted).into_iter().partition(|f| is_live(f, state));
    let mut next = running.clone();
    next.log.level.clone_from(&wanted.log.level);
    next.pipeline.menu_json_rounds = wanted.pipeline.menu_json_rounds;
    next.pipeline.max_future_secs = wanted.pipeline.max_future_secs;
    next.pipeline.linger_ms = wanted.pipeline.linger_ms;
    for (name, input) in &mut next.sources.inputs {
        if let (crate::config::SourceConfig::Kinesis(k), Some(crate::config::SourceConfig::Kinesis(w))) =
            (input, wanted.sources.inputs.get(name))
        {
            k.poll_interval_ms = w.poll_interval_ms;
            k.idle_poll_interval_ms = w.idle_poll_interval_ms;
        }
    }
    let r = &running.fraud;
    next.fraud = FraudConfig { state, max_tracked_keys: r.max_tracked_keys, ..wanted.fraud.clone() };
    if state == StateStore::DynamoDb {
        next.fraud.velocity_max_per_card = r.velocity_max_per_card;
        next.fraud.amount_history = r.amount_history;
        next.fraud.device_max_cards = r.device_max_cards;
        next.fraud.history_secs = r.history_secs;
    }
    Plan { applied, kept, next }
}

/// The values batches read, of a configuration, with the shared state's `rules`.
pub fn tuned(config: &Config, rules: Rules) -> Tuned {
    Tuned { work: work(config), linger: std::time::Duration::from_millis(config.pipeline.linger_ms), rules: Arc::new(rules) }
}

/// The work factors of a configuration.
pub fn work(config: &Config) -> Work {
    Work {
        fraud_work_factor: config.fraud.work_factor,
        menu_json_rounds: config.pipeline.menu_json_rounds,
        max_future_secs: config.pipeline.max_future_secs,
    }
}

/// Everything a reload changes.
#[derive(Debug)]
pub struct Targets {
    /// The configuration in force.
    pub running: Config,
    /// Its work factors and fraud rules.
    pub router: Router,
    /// The log level, when this process installed the subscriber.
    pub logging: Option<Arc<Logging>>,
    /// systemd, told of a reload through `STATUS=`.
    pub notifier: Arc<Notifier>,
    /// Each stream's live pacing, by input name.
    pub pacings: Vec<(String, crate::sources::kinesis::source::LivePacing)>,
}

/// On each SIGHUP, reads the configuration again and applies it (or logs
/// why it was refused), until the task is stopped.
pub async fn reload_loop(mut reload: Reload, mut targets: Targets) {
    while reload.hangups.recv().await.is_some() {
        info!("SIGHUP received: reading the configuration again");
        match read(reload.path.as_deref()).await {
            Ok(wanted) => apply(&mut targets, &wanted).await,
            Err(problems) => {
                let named: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
                error!(problems = %named.join("; "), "Reload refused; the running configuration stays");
            }
        }
    }
}

async fn apply(targets: &mut Targets, wanted: &Config) {
    let Plan { applied, kept, next } = plan(&targets.running, wanted);
    // Checked whole before anything changes: all of it applies, or none.
    let rules = match (Rules::new(next.fraud.clone()), Rules::new(next.fraud.clone())) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(p), _) | (_, Err(p)) => {
            let named: Vec<String> = p.iter().map(ToString::to_string).collect();
            error!(problems = %named.join("; "), "Reload refused; the running configuration stays");
            return;
        }
    };
    // The engine first: if that fails nothing has changed.
    let (for_engine, shared) = rules;
    if !targets.router.retune(tuned(&next, shared), for_engine).await {
        error!("Reload refused: setting the in-process fraud rules failed; the running configuration stays");
        return;
    }
    if let Some(logging) = &targets.logging {
        match logging.set_level(&next.log.level) {
            Ok(LevelChange::OverriddenBy(var)) if applied.iter().any(|f| f == "log.level") => {
                warn!(variable = var, "log.level changed, but the environment sets the level; unchanged");
            }
            Ok(_) => {}
            Err(e) => error!(error = %e, "Reload: log.level not applied; the rest is"),
        }
    }
    for (name, pacing) in &targets.pacings {
        if let Some(k) = next.sources.kinesis_input(name) {
            pacing.set(k);
        }
    }
    targets.running = next;
    if applied.is_empty() {
        info!("Configuration reloaded: nothing to apply");
    } else {
        info!(fields = %applied.join(", "), "Configuration reloaded");
    }
    if !kept.is_empty() {
        warn!(fields = %kept.join(", "), "Changed fields need a restart; they keep their running values");
    }
    targets.notifier.send(&format!("STATUS=configuration reloaded ({} fields applied)", applied.len()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(text, "test.toml", Vec::new()).expect("valid")
    }

    #[test]
    fn changed_fields_are_named_by_their_dotted_path() {
        let a = config("");
        let b = config(
            "[fraud]\nreview_threshold = 100\nweights = { bin = 10 }\nrisky_bins = [\"400000\"]\n[sources.payments]\nreceivers = 3\n[log]\nlevel = \"debug\"",
        );
        assert_eq!(
            changed_fields(&a, &b),
            vec!["fraud.review_threshold", "fraud.risky_bins", "fraud.weights.bin", "log.level", "sources.payments.receivers"]
        );
        assert!(changed_fields(&a, &a.clone()).is_empty());
    }

    #[test]
    fn a_plan_applies_the_live_fields_and_keeps_the_rest() {
        let running = config("[fraud]\nstate = \"process\"");
        let wanted = config(
            "[fraud]\nstate = \"dynamodb\"\nmax_tracked_keys = 100\ndecline_threshold = 900\nwork_factor = 5\n\
             [pipeline]\nmenu_json_rounds = 3\nsink_concurrency = 2\nmax_future_secs = 60\n[admin]\nlisten = \"127.0.0.1:1\"\n\
             [log]\nlevel = \"warn\"\nformat = \"json\"",
        );
        let p = plan(&running, &wanted);
        assert_eq!(
            p.applied,
            vec![
                "fraud.decline_threshold",
                "fraud.work_factor",
                "log.level",
                "pipeline.max_future_secs",
                "pipeline.menu_json_rounds"
            ]
        );
        assert_eq!(
            p.kept,
            vec!["admin.listen", "fraud.max_tracked_keys", "fraud.state", "log.format", "pipeline.sink_concurrency"]
        );
        // What changes between the running and the next configuration is
        // exactly what was applied.
        assert_eq!(changed_fields(&running, &p.next), p.applied);
        assert_eq!(changed_fields(&p.next, &wanted), p.kept);
    }

    #[test]
    fn with_shared_state_the_bounds_of_a_keys_state_need_a_restart() {
        let running = config("[fraud]\nstate = \"dynamodb\"");
        let wanted =
            config("[fraud]\nstate = \"dynamodb\"\nvelocity_max_per_card = 9\nhistory_secs = 3600\nvelocity_window_secs = 60");
        let p = plan(&running, &wanted);
        assert_eq!(p.applied, vec!["fraud.velocity_window_secs"]);
        assert_eq!(p.kept, vec!["fraud.history_secs", "fraud.velocity_max_per_card"]);
        assert_eq!(changed_fields(&running, &p.next), p.applied);
        // In the process, the same fields apply live.
        let running = config("[fraud]\nstate = \"process\"");
        let wanted = config("[fraud]\nstate = \"process\"\nvelocity_max_per_card = 9\nhistory_secs = 3600");
        assert_eq!(plan(&running, &wanted).kept, Vec::<String>::new());
    }

    #[test]
    fn the_pacing_applies_live() {
        let running = config("");
        let wanted = config(
            "[pipeline]\nlinger_ms = 5\n[sources.orders]\npoll_interval_ms = 500\nidle_poll_interval_ms = 3000\nshards = 2",
        );
        let p = plan(&running, &wanted);
        assert_eq!(
            p.applied,
            vec!["pipeline.linger_ms", "sources.orders.idle_poll_interval_ms", "sources.orders.poll_interval_ms"]
        );
        assert_eq!(p.kept, vec!["sources.orders.shards"]);
        assert_eq!(p.next.pipeline.linger_ms, 5);
        assert_eq!(p.next.sources.kinesis_input("orders").map(|k| k.poll_interval_ms), Some(500));
        assert_eq!(p.next.sources.kinesis_input("orders").map(|k| k.idle_poll_interval_ms), Some(3000));
        assert_eq!(tuned(&p.next, Rules::new(p.next.fraud.clone()).expect("rules")).linger, std::time::Duration::from_millis(5));
    }

    #[test]
    fn live_fields_are_the_documented_ones() {
        for f in ["log.level", "fraud.review_threshold", "fraud.weights.bin", "fraud.work_factor", "pipeline.menu_json_rounds"] {
            assert!(is_live(f, StateStore::DynamoDb) && is_live(f, StateStore::Process), "{f}");
        }
        for f in STATE_BOUNDS {
            assert!(!is_live(f, StateStore::DynamoDb) && is_live(f, StateStore::Process), "{f}");
        }
        for f in [
            "fraud.state",
            "fraud.max_tracked_keys",
            "log.format",
            "pipeline.sink_concurrency",
            "admin.listen",
            "sources.payments.queue",
        ] {
            assert!(!is_live(f, StateStore::Process), "{f}");
        }
    }
}
