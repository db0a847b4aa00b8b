//! A run's report folder: where it is by default, `report.html`, and the
//! comparison with an earlier run.
//!
//! Owns: `report.html`, one self-contained page (no script, style or font
//! from anywhere: it opens on a host without internet) with the verdict,
//! the summary, and e2e latency (p50, p95, p99) and throughput (sent and
//! stored per second) over the run as an inline SVG chart; the default
//! folder `reports/<UTC time>-<scenario>` and `reports/latest`; and
//! `--baseline`'s table. Must not: judge the run (the drivers do) or read
//! AWS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::chaos::{self, Sample};
use crate::scenario::{Restart, Scenario};

/// `reports/<UTC time>-<scenario>`: each run keeps its own reports.
pub fn default_dir(scenario: &str) -> PathBuf {
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let name: String = scenario.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    PathBuf::from("reports").join(format!("{stamp}-{name}"))
}

/// Points `reports/latest` at `dir` when `dir` is a folder of `reports/`
/// (best effort: a link that cannot be made changes nothing else).
pub fn link_latest(dir: &Path) {
    let Some(parent) = dir.parent().filter(|p| p.file_name().is_some_and(|n| n == "reports")) else { return };
    let Some(name) = dir.file_name() else { return };
    let link = parent.join("latest");
    if link.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        let _ = std::fs::remove_file(&link);
    }
    let _ = std::os::unix::fs::symlink(name, &link);
}

/// Why a scenario's restart step will not run, if it will not: it asks for
/// a restart, and no command is set (`restart_command` in the scenario or
/// `CAFE_LOADGEN_RESTART_COMMAND`). A chaos run owns its instances and
/// never restarts through the command.
pub fn skipped_restart(s: &Scenario, chaos: bool) -> Option<String> {
    if chaos || s.daemon.restart == Restart::None {
        return None;
    }
    let set = std::env::var("CAFE_LOADGEN_RESTART_COMMAND").ok().is_some_and(|c| !c.trim().is_empty())
        || !s.daemon.restart_command.trim().is_empty();
    (!set).then(|| {
        format!(
            "scenario {} asks for a restart of the daemon ({:?}), but no restart command is set \
             (restart_command in the scenario, or CAFE_LOADGEN_RESTART_COMMAND): the restart step is skipped",
            s.name, s.daemon.restart
        )
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The page: a title, the summary, and the chart of `samples`.
pub fn html(title: &str, summary_markdown: &str, samples: &[Sample]) -> String {
    let t0 = samples.iter().map(|s| s.ts).min();
    let buckets = t0.map(|t0| chaos::buckets(samples, t0)).unwrap_or_default();
    let chart = chaos::chart::svg(&format!("{title}: e2e latency and throughput per second"), &buckets, &[]);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{t}</title></head>\n\
         <body style=\"font-family: sans-serif; margin: 2em;\">\n<h1>{t}</h1>\n\
         <section id=\"chart\"><h2>Latency and throughput over the run</h2>\n{chart}</section>\n\
         <section id=\"summary\"><h2>Summary</h2>\n<pre>{summary}</pre></section>\n\
         <p>Everything on this page is in this file: it opens without a network.</p>\n</body></html>\n",
        t = escape(title),
        summary = escape(summary_markdown),
    )
}

/// Writes `dir/report.html`.
pub fn write_html(dir: &Path, title: &str, summary_markdown: &str, samples: &[Sample]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.html"), html(title, summary_markdown, samples))?;
    Ok(())
}

/// Whether a lower value of the figure `key` is better (`Some(true)`),
/// a higher one (`Some(false)`), or neither is known (`None`).
fn lower_is_better(key: &str) -> Option<bool> {
    let k = key.to_ascii_lowercase();
    if k.ends_with("per_sec") || k.ends_with("_per_s") || k.contains("ratio_to") || k.ends_with("rate") {
        Some(false)
    } else if k.ends_with("_ms")
        || k.ends_with("_secs")
        || k.ends_with("_s")
        || k.contains("lost")
        || k.contains("duplicated")
        || k.contains("failures")
        || k.contains("cpu")
        || k.contains("rss")
        || k.contains("vs_bare")
        || k.contains("vs_ceiling")
    {
        Some(true)
    } else {
        None
    }
}

/// Every number of a summary, by its dotted path.
fn numbers(v: &serde_json::Value, path: &str, out: &mut BTreeMap<String, f64>) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.insert(path.to_owned(), x);
            }
        }
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                numbers(v, &if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out);
            }
        }
        _ => {}
    }
}

fn read_summary(path: &Path) -> anyhow::Result<serde_json::Value> {
    let file = if path.is_dir() { path.join("summary.json") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a run summary", file.display()))
}

/// The table of what got better or worse from `baseline` (a report
/// folder or its `summary.json`) to `current` (a `summary.json`): every
/// figure both have, with the change and which way is better.
pub fn compare(baseline: &Path, current: &Path) -> anyhow::Result<String> {
    let (a, b) = (read_summary(baseline)?, read_summary(current)?);
    if a["scenario"] != b["scenario"] {
        anyhow::bail!("the baseline is a run of {}, this one of {}", a["scenario"], b["scenario"]);
    }
    Ok(table(&a, &b, &baseline.display().to_string()))
}

/// The comparison table of two summaries.
pub fn table(baseline: &serde_json::Value, current: &serde_json::Value, baseline_name: &str) -> String {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    numbers(baseline, "", &mut a);
    numbers(current, "", &mut b);
    let mut out = format!("Against {baseline_name}:\n\n| figure | baseline | this run | change | |\n|---|---|---|---|---|\n");
    let (mut better, mut worse) = (0, 0);
    for (key, &now) in &b {
        let Some(&was) = a.get(key) else { continue };
        if key == "seed" {
            continue;
        }
        let change = if was != 0.0 { format!("{:+.1}%", (now - was) / was.abs() * 100.0) } else { format!("{:+}", now - was) };
        let verdict = match (lower_is_better(key), now.total_cmp(&was)) {
            (_, std::cmp::Ordering::Equal) => "same",
            (Some(true), std::cmp::Ordering::Less) | (Some(false), std::cmp::Ordering::Greater) => {
                better += 1;
                "better"
            }
            (Some(_), _) => {
                worse += 1;
                "worse"
            }
            (None, _) => "changed",
        };
        out += &format!("| {key} | {} | {} | {change} | {verdict} |\n", fmt(was), fmt(now));
    }
    out += &format!("\n{better} better, {worse} worse.\n");
    out
}

fn fmt(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 { format!("{x:.0}") } else { format!("{x:.3}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::{Duration, OffsetDateTime};

    #[test]
    fn the_page_is_self_contained_and_holds_the_latency_chart() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("ts");
        let samples: Vec<Sample> = (0..300)
            .map(|i| Sample { ts: t0 + Duration::milliseconds(i * 10), stored: t0 + Duration::milliseconds(i * 10 + 200 + i) })
            .collect();
        let page = html("cold-start <PASS>", "| lost | 0 |", &samples);
        assert!(page.starts_with("<!DOCTYPE html>"));
        for series in ["class=\"p50\"", "class=\"p95\"", "class=\"p99\"", "class=\"sent\"", "class=\"stored\""] {
            assert!(page.contains(series), "{series} missing");
        }
        assert!(page.contains("cold-start &lt;PASS&gt;") && page.contains("| lost | 0 |"));
        // Nothing loaded from elsewhere: no script, no stylesheet, no URL but
        // the SVG namespace.
        assert!(!page.contains("<script") && !page.contains("<link") && !page.contains("@import"), "{page}");
        let urls: Vec<&str> = page.match_indices("http").map(|(i, _)| &page[i..(i + 30).min(page.len())]).collect();
        assert!(urls.iter().all(|u| u.starts_with("http://www.w3.org/2000/svg")), "{urls:?}");
    }

    #[test]
    fn the_default_folder_is_the_runs_own() {
        let d = default_dir("cold-start");
        let name = d.file_name().expect("name").to_string_lossy().into_owned();
        assert!(
            d.starts_with("reports") && name.ends_with("Z-cold-start") && name.len() == "20261202T120000Z-cold-start".len(),
            "{name}"
        );
    }

    #[test]
    fn the_baseline_table_says_what_got_better_and_worse() {
        let a = serde_json::json!({"scenario": "cold-start", "seed": 1, "e2e_p99_ms": 8000.0, "payments_per_sec": 800.0, "lost": 0, "notes": "x"});
        let b =
            serde_json::json!({"scenario": "cold-start", "seed": 2, "e2e_p99_ms": 6000.0, "payments_per_sec": 700.0, "lost": 0});
        let t = table(&a, &b, "reports/old");
        assert!(t.contains("| e2e_p99_ms | 8000 | 6000 | -25.0% | better |"), "{t}");
        assert!(t.contains("| payments_per_sec | 800 | 700 | -12.5% | worse |"), "{t}");
        assert!(t.contains("| lost | 0 | 0 | +0 | same |"), "{t}");
        assert!(!t.contains("| seed |"), "{t}");
        assert!(t.contains("1 better, 1 worse."), "{t}");
    }

    #[test]
    fn a_restart_with_no_command_is_a_warning() {
        let mut s: Scenario = crate::scenario::find("cold-start").expect("scenario");
        s.daemon.restart = Restart::After;
        s.daemon.restart_command = String::new();
        // SAFETY-free: the variable is not read elsewhere in these tests.
        if std::env::var("CAFE_LOADGEN_RESTART_COMMAND").is_err() {
            assert!(skipped_restart(&s, false).is_some_and(|w| w.contains("skipped")));
        }
        assert_eq!(skipped_restart(&s, true), None, "a chaos run owns its instances");
        s.daemon.restart_command = "systemctl restart cafe-streamd".into();
        assert_eq!(skipped_restart(&s, false), None);
        s.daemon.restart = Restart::None;
        s.daemon.restart_command = String::new();
        assert_eq!(skipped_restart(&s, false), None);
    }
}
