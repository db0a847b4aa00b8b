//! `cafe-loadgen check-dashboards`: proves the dashboards and rules against
//! a real Prometheus that scraped a daemon under load. Every dashboard
//! expression and every recording rule must return data; every alert rule
//! must be loaded and healthy, and each metric it reads must have series
//! (the alert itself fires only when something is wrong).
//!
//! Owns: reading `dashboards/` and querying the Prometheus HTTP API. Must
//! not: judge values (that is for the scenarios' verification).

use std::path::Path;

use anyhow::Context;
use pipeline::metric_names::promql_metric_names;
use serde_json::Value;

/// One expression to prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Where it is (file and panel or rule).
    pub place: String,
    /// PromQL.
    pub expr: String,
    /// An alert condition: prove its metrics, not the condition.
    pub alert: bool,
}

/// `expr` as Grafana sends it with "All" picked in every query variable of
/// `dashboard` (`job`, `instance`): `$name` and `${name}` become the
/// variable's `allValue` (a regular expression, `.*`).
fn all_selected(expr: &str, dashboard: &Value) -> String {
    let mut out = expr.to_owned();
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let (Some(name), Some(all)) = (v["name"].as_str(), v["allValue"].as_str()) else { continue };
        out = out.replace(&format!("${{{name}}}"), all).replace(&format!("${name}"), all);
    }
    out
}

/// Every expression of the dashboards (`*.json`) and rules (`*.yml`) in `dir`.
pub fn checks(dir: &Path) -> anyhow::Result<Vec<Check>> {
    let mut out = Vec::new();
    let mut files: Vec<_> =
        std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.collect::<Result<_, _>>()?;
    files.sort_by_key(|e| e.path());
    for e in files {
        let path = e.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(&path)?;
        if name.ends_with(".json") {
            let d: Value = serde_json::from_str(&text).with_context(|| format!("{name} is not JSON"))?;
            for p in d["panels"].as_array().into_iter().flatten() {
                for t in p["targets"].as_array().into_iter().flatten() {
                    if let Some(expr) = t["expr"].as_str() {
                        out.push(Check {
                            place: format!("{name}: {}", p["title"].as_str().unwrap_or("?")),
                            expr: all_selected(expr, &d),
                            alert: false,
                        });
                    }
                }
            }
        } else if name.ends_with(".yml") || name.ends_with(".yaml") {
            let mut current = (String::new(), false);
            for line in text.lines() {
                let l = line.trim();
                if let Some(r) = l.strip_prefix("- record: ") {
                    current = (r.to_owned(), false);
                } else if let Some(a) = l.strip_prefix("- alert: ") {
                    current = (a.to_owned(), true);
                } else if let Some(expr) = l.strip_prefix("expr: ") {
                    out.push(Check { place: format!("{name}: {}", current.0), expr: expr.to_owned(), alert: current.1 });
                }
            }
        }
    }
    Ok(out)
}

async fn query(client: &reqwest::Client, prometheus: &str, expr: &str) -> anyhow::Result<usize> {
    let resp: Value = client
        .post(format!("{prometheus}/api/v1/query"))
        .form(&[("query", expr)])
        .send()
        .await
        .with_context(|| format!("querying {prometheus}"))?
        .json()
        .await?;
    anyhow::ensure!(resp["status"] == "success", "{}", resp["error"].as_str().unwrap_or("query failed"));
    Ok(match resp["data"]["resultType"].as_str() {
        Some("scalar") | Some("string") => 1,
        _ => resp["data"]["result"].as_array().map_or(0, Vec::len),
    })
}

/// Proves every check against `prometheus`; returns one line per problem.
pub async fn run(prometheus: &str, dir: &Path) -> anyhow::Result<(usize, Vec<String>)> {
    let client = reqwest::Client::new();
    let all = checks(dir)?;
    let mut problems = Vec::new();
    for c in &all {
        let exprs: Vec<String> = if c.alert { promql_metric_names(&c.expr).into_iter().collect() } else { vec![c.expr.clone()] };
        for e in exprs {
            match query(&client, prometheus, &e).await {
                Ok(0) => problems.push(format!("{}: `{e}` returned no data", c.place)),
                Ok(_) => {}
                Err(err) => problems.push(format!("{}: `{e}` failed: {err}", c.place)),
            }
        }
    }
    let rules: Value = client.get(format!("{prometheus}/api/v1/rules")).send().await?.json().await?;
    let mut loaded = 0;
    for g in rules["data"]["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            loaded += 1;
            if r["health"] != "ok" {
                problems.push(format!("rule {} is {}: {}", r["name"], r["health"], r["lastError"]));
            }
        }
    }
    let in_files = all.iter().filter(|c| c.place.contains(".yml")).count();
    if loaded != in_files {
        problems.push(format!("Prometheus loaded {loaded} rules, the rule files hold {in_files}"));
    }
    Ok((all.len(), problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_dashboards_and_rules_are_read() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
        let all = checks(&dir).expect("checks");
        assert!(all.iter().filter(|c| c.alert).count() >= 6, "{all:?}");
        assert!(all.iter().any(|c| c.place.starts_with("cafe-stream.json: ") && c.expr.contains("cafe_queue_depth_messages")));
        assert!(all.iter().any(|c| c.place == "cafe-stream.rules.yml: CafeInstanceDown" && c.alert));
        // As Grafana sends them with every instance of every job picked.
        assert!(all.iter().all(|c| !c.expr.contains('$')), "{all:?}");
        assert!(all.iter().any(|c| c.expr.contains("cafe_build_info{job=~\".*\",instance=~\".*\"}")), "{all:?}");
    }
}
