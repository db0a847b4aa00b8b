//! The dashboards and rules name only metrics the daemon exports: every
//! metric in every expression of `dashboards/` is in the exposition of a
//! fresh `Metrics` (the catalogue, as encoded: counters with `_total`,
//! histograms with `_bucket`/`_sum`/`_count`) or is a recording rule of
//! `dashboards/cafe-stream.rules.yml` (or Prometheus's own `up`). The
//! dashboard has a stable uid and takes its data source from a variable.

use std::collections::BTreeSet;
use std::path::Path;

use daemon::metrics::Metrics;
use pipeline::metric_names::promql_metric_names as metric_names;

/// Every expression of the dashboards and the rules, with where it is.
pub fn expressions() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("dashboards/") {
        let path = e.expect("entry").path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(&path).expect("read");
        if name.ends_with(".json") {
            let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
            for p in d["panels"].as_array().expect("panels") {
                for t in p["targets"].as_array().expect("targets") {
                    out.push((
                        format!("{name}: {}", p["title"].as_str().unwrap_or("")),
                        t["expr"].as_str().expect("expr").to_owned(),
                    ));
                }
            }
        } else if name.ends_with(".yml") {
            for (i, line) in text.lines().enumerate() {
                if let Some(expr) = line.trim().strip_prefix("expr: ") {
                    out.push((format!("{name}:{}", i + 1), expr.to_owned()));
                }
            }
        }
    }
    out
}

/// Recording rule names.
pub fn recorded() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/cafe-stream.rules.yml"))
        .expect("rules");
    rules.lines().filter_map(|l| l.trim().strip_prefix("- record: ").map(str::to_owned)).collect()
}

#[test]
fn every_metric_the_dashboards_use_is_exported() {
    // The catalogue: every `pub const NAME: &str = "...";` of
    // pipeline/src/metric_names.rs, as exposed (counters end in `_total`,
    // histograms have `_bucket`, `_sum` and `_count`).
    let catalogue = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipeline/src/metric_names.rs"))
        .expect("catalogue");
    let names: Vec<String> = catalogue
        .lines()
        .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \""))
        .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
        .collect();
    assert!(names.len() > 30, "{names:?}");
    // Every catalogue name is registered: a family with a series shows in the exposition.
    let m = Metrics::new();
    let mut config = daemon::config::Config::default();
    config.sinks.redshift.enabled = true;
    for component in daemon::components::list(&config) {
        component.init_metrics(&m);
    }
    let exposed = m.encode();
    let mut known: BTreeSet<String> = recorded();
    known.insert("up".into());
    for n in &names {
        for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
            known.insert(format!("{n}{suffix}"));
        }
        assert!(!exposed.contains(&format!("# TYPE {n} ")) || exposed.contains(&format!("# HELP {n} ")), "{n} has no help text");
    }
    let exprs = expressions();
    assert!(exprs.len() > 20, "{exprs:?}");
    for (place, expr) in &exprs {
        for name in metric_names(expr) {
            assert!(known.contains(&name), "{place}: {name} (in {expr}) is not exported; known: {known:?}");
        }
    }
}

#[test]
fn the_dashboard_has_a_stable_uid_and_a_datasource_variable() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/cafe-stream.json")).expect("dashboard");
    let d: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(d["uid"], "cafe-stream-overview");
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"));
    for p in d["panels"].as_array().expect("panels") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }
}

/// For a fleet: `job` and `instance` variables, and every metric of every
/// panel selected by both, so one dashboard shows one instance, several, or
/// all of them.
#[test]
fn every_panel_is_scoped_by_the_job_and_instance_variables() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/cafe-stream.json")).expect("dashboard");
    let d: serde_json::Value = serde_json::from_str(&text).expect("json");
    let vars = d["templating"]["list"].as_array().expect("templating");
    for name in ["job", "instance"] {
        let v = vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no {name} variable"));
        assert_eq!(v["type"], "query", "{v}");
        assert_eq!((v["multi"].as_bool(), v["includeAll"].as_bool()), (Some(true), Some(true)), "{v}");
        assert!(v["definition"].as_str().is_some_and(|q| q.starts_with("label_values(cafe_build_info")), "{v}");
    }
    let mut selectors = 0;
    for (place, expr) in expressions().iter().filter(|(p, _)| p.starts_with("cafe-stream.json")) {
        assert!(!expr.contains("cafe:"), "{place}: a recording rule has no instance label: {expr}");
        for name in metric_names(expr) {
            // Each occurrence of the metric is followed by its matchers.
            for (i, _) in expr.match_indices(&name) {
                let after = &expr[i + name.len()..];
                if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                selectors += 1;
                assert!(after.starts_with("{job=~\"$job\",instance=~\"$instance\""), "{place}: {name} is not scoped in {expr}");
            }
        }
    }
    assert!(selectors > 25, "{selectors}");
}

/// Every alert carries a runbook line and a `runbook_url` whose anchor is an
/// entry of the runbook in docs/operations.md (a heading named after the
/// alert), where the package installs that page.
#[test]
fn every_alert_links_its_runbook_entry() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = std::fs::read_to_string(dir.join("dashboards/cafe-stream.rules.yml")).expect("rules");
    let readme = std::fs::read_to_string(dir.join("docs/operations.md")).expect("docs/operations.md");
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ')
                .collect::<String>()
                .replace(' ', "-")
        })
        .collect();
    let mut alerts = 0;
    for block in rules.split("- alert: ").skip(1) {
        let name = block.split_whitespace().next().expect("name");
        alerts += 1;
        assert!(block.contains("runbook: \""), "{name} has no runbook line");
        let url = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .unwrap_or_else(|| panic!("{name} has no runbook_url"))
            .trim_matches('"');
        let anchor =
            url.strip_prefix("file:///usr/share/doc/cafe-stream/docs/operations.md#").unwrap_or_else(|| panic!("{name}: {url}"));
        assert_eq!(anchor, name.to_lowercase(), "{name}: {url}");
        assert!(anchors.contains(anchor), "{name}: docs/operations.md has no heading for #{anchor}");
    }
    assert!(alerts >= 12, "{alerts}");
}
