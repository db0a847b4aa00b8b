//! What every scenario's goose attack shares: the configuration (one
//! iteration per user, all users at once, reports in three formats, the
//! scenario's thresholds) and reading goose's verdict.
//!
//! Owns: the goose settings cafe-loadgen relies on. Must not: know any
//! scenario's transactions.

use std::path::Path;

use goose::config::GooseConfiguration;
use goose::prelude::{GooseError, GooseMetrics};

/// A goose configuration for `users` users that each run once, against a
/// non-HTTP `host` (named for goose's report), with `thresholds` and the
/// HTML, JSON and Markdown reports in `report_dir`.
pub fn config(host: String, users: usize, thresholds: &[String], report_dir: &Path) -> GooseConfiguration {
    let mut config = GooseConfiguration::default();
    config.host = Some(host);
    config.users = Some(users);
    config.increase_rate = Some(users.to_string());
    config.iterations = Some(1);
    config.no_telnet = true;
    config.no_print_metrics = true;
    config.quiet = 1;
    config.threshold = thresholds.to_vec();
    config.report_file =
        ["html", "json", "md"].iter().map(|ext| report_dir.join(format!("goose-report.{ext}")).display().to_string()).collect();
    config
}

/// The thresholds that failed, or the error that kept the attack from running.
pub fn failed_thresholds(result: Result<GooseMetrics, GooseError>) -> anyhow::Result<Vec<String>> {
    match result {
        Ok(_) => Ok(Vec::new()),
        Err(GooseError::ThresholdsFailed { failed, .. }) => {
            Ok(failed.iter().map(|t| format!("goose threshold {} (observed {})", t.rule, t.observed)).collect())
        }
        Err(e) => Err(anyhow::anyhow!("goose: {e}")),
    }
}

/// The scenario's e2e p99 target, as a failure line if `p99_ms` misses it
/// (a NaN p99, from no samples, misses it too).
pub fn p99_target(p99_ms: f64, limit: Option<u64>) -> Option<String> {
    let limit = limit?;
    (!(p99_ms <= limit as f64)).then(|| format!("e2e p99 {p99_ms:.0} ms is above the target {limit} ms"))
}

/// Writes a run's `summary.json` and `summary.md` into `dir`.
pub fn write_summary<S: serde::Serialize>(dir: &Path, summary: &S, markdown: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(summary)?)?;
    std::fs::write(dir.join("summary.md"), markdown)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::p99_target;

    #[test]
    fn the_p99_target_fails_above_the_limit_and_without_samples() {
        assert_eq!(p99_target(1500.0, Some(2000)), None);
        assert_eq!(p99_target(2500.0, Some(2000)).as_deref(), Some("e2e p99 2500 ms is above the target 2000 ms"));
        assert!(p99_target(f64::NAN, Some(2000)).is_some());
        assert_eq!(p99_target(1e9, None), None);
    }
}
