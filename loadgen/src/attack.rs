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
