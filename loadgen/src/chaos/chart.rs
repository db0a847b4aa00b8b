//! The picture of a chaos run: e2e latency and throughput over time, with
//! every fault window shaded, as one standalone SVG document a browser can
//! open offline.
//!
//! Owns: the layout, the axes and the drawing of what it is given. Must not:
//! do any I/O (the caller writes the file), nor compute statistics beyond
//! placing the given buckets on the axes.

/// One second (or bucket) of a run, `t` seconds after the run's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Seconds since the run's start (bucket start).
    pub t: f64,
    /// Events sent in the bucket, per second.
    pub sent_per_sec: f64,
    /// Events stored (durably written by the daemon) in the bucket, per second.
    pub stored_per_sec: f64,
    /// e2e latency median of the events stored in the bucket, ms (NaN: none stored).
    pub p50_ms: f64,
    /// e2e latency 95th percentile of the events stored in the bucket, ms (NaN: none).
    pub p95_ms: f64,
    /// e2e latency 99th percentile of the events stored in the bucket, ms (NaN: none).
    pub p99_ms: f64,
}

/// A fault's window on the time axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Shown on the chart, e.g. "kill instance 2" (escape it for XML).
    pub label: String,
    /// Seconds since the run's start.
    pub start: f64,
    /// Seconds since the run's start (equal to start for an instant: draw a line).
    pub end: f64,
}

const W: f64 = 960.0;
const H: f64 = 560.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 940.0;
const LAT_TOP: f64 = 70.0;
const LAT_BOTTOM: f64 = 280.0;
const TP_TOP: f64 = 310.0;
const TP_BOTTOM: f64 = 500.0;
const P50: &str = "#0072B2";
const P95: &str = "#E69F00";
const P99: &str = "#D55E00";
const SENT: &str = "#009E73";
const STORED: &str = "#CC79A7";
const FAULT: &str = "#666666";
/// Latency ticks in ms with their labels: decades, then the minute and hour marks people read.
const LAT_TICKS: [(f64, &str); 8] = [
    (1.0, "1 ms"),
    (10.0, "10 ms"),
    (100.0, "100 ms"),
    (1000.0, "1 s"),
    (10_000.0, "10 s"),
    (60_000.0, "1 min"),
    (600_000.0, "10 min"),
    (3_600_000.0, "1 h"),
];

/// The SVG document: two panels sharing the time axis — on top e2e latency
/// (p50, p95 and p99 lines, logarithmic ms axis with ticks like 10 ms, 100 ms, 1 s, 10 s, 1 min),
/// below throughput (sent/s and stored/s lines, linear axis from 0) — with every
/// fault window shaded across both panels and labelled, a title, axis labels,
/// a legend, and x-axis ticks in seconds.
pub fn svg(title: &str, buckets: &[Bucket], windows: &[Window]) -> String {
    // Drawing order follows time, whatever order the caller gave; buckets without a usable time are left out.
    let mut rows: Vec<Bucket> = buckets.iter().copied().filter(|b| time(b.t).is_some()).collect();
    rows.sort_by(|a, b| a.t.total_cmp(&b.t));
    let (x0, x1, degenerate) = x_range(buckets, windows);
    let no_data = degenerate || rows.is_empty();
    let px = |t: f64| (LEFT + (t - x0) / (x1 - x0) * (RIGHT - LEFT)).clamp(LEFT, RIGHT);
    // Bucket `t` covers [t, t + 1): its value is drawn at the middle.
    let mid = |b: &Bucket| px(b.t + 0.5);

    let (l0, l1) = latency_range(&rows);
    let ly = |ms: f64| {
        let f = (ms.max(1.0).log10() - l0.log10()) / (l1.log10() - l0.log10());
        (LAT_BOTTOM - f * (LAT_BOTTOM - LAT_TOP)).clamp(LAT_TOP, LAT_BOTTOM)
    };
    let tp_max = rows.iter().map(|b| rate(b.sent_per_sec).max(rate(b.stored_per_sec))).fold(0.0, f64::max);
    let tp_step = nice_step(if tp_max > 0.0 { tp_max } else { 1.0 }, 4.0);
    let t1 = ((tp_max / tp_step).ceil() * tp_step).max(tp_step);
    let ty = |v: f64| (TP_BOTTOM - rate(v) / t1 * (TP_BOTTOM - TP_TOP)).clamp(TP_TOP, TP_BOTTOM);

    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"960\" height=\"560\" viewBox=\"0 0 960 560\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<title>{}</title>\n",
        escape(title)
    );
    o += &rect(0.0, 0.0, W, H, "fill=\"#ffffff\"");
    o += &text(W / 2.0, 26.0, "text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\"", title);
    // Panel frames, then the grid and tick labels of each axis.
    for (top, bottom) in [(LAT_TOP, LAT_BOTTOM), (TP_TOP, TP_BOTTOM)] {
        o += &rect(LEFT, top, RIGHT - LEFT, bottom - top, "fill=\"none\" stroke=\"#bbbbbb\"");
    }
    for (ms, label) in LAT_TICKS.iter().filter(|(ms, _)| *ms >= l0 && *ms <= l1) {
        o += &hgrid(ly(*ms), label);
    }
    for v in (0..=8).map(|i| tp_step * f64::from(i)).filter(|v| *v <= t1 * 1.000_001) {
        o += &hgrid(ty(v), &count(v));
    }
    let x_step = nice_step(x1 - x0, 8.0);
    let first = (x0 / x_step).ceil();
    for t in (0..=40).map(|i| (first + f64::from(i)) * x_step).take_while(|t| *t <= x1 + x_step * 1e-6) {
        o += &line(px(t), TP_BOTTOM, px(t), TP_BOTTOM + 4.0, "stroke=\"#999999\"");
        o += &text(px(t), TP_BOTTOM + 17.0, "text-anchor=\"middle\"", &num(t));
    }
    o += &text((LEFT + RIGHT) / 2.0, TP_BOTTOM + 40.0, "text-anchor=\"middle\"", "time since start (s)");
    for (label, y) in [("e2e latency", (LAT_TOP + LAT_BOTTOM) / 2.0), ("events / s", (TP_TOP + TP_BOTTOM) / 2.0)] {
        o += &text(18.0, y, &format!("text-anchor=\"middle\" transform=\"rotate(-90 18 {})\"", num(y)), label);
    }

    // Fault windows: shaded across both panels (a line for an instant), labels staggered in three rows.
    for (i, w) in windows.iter().enumerate() {
        let Some((s, e)) = window_span(w) else { continue };
        let (xs, xe) = (px(s), px(e));
        o += &if s == e {
            line(xs, LAT_TOP, xs, TP_BOTTOM, "class=\"fault\" stroke=\"#666666\" stroke-width=\"2\" stroke-dasharray=\"4 3\"")
        } else {
            rect(xs, LAT_TOP, (xe - xs).max(1.0), TP_BOTTOM - LAT_TOP, "class=\"fault\" fill=\"#666666\" fill-opacity=\"0.2\"")
        };
        let (x, anchor) = if xs > RIGHT - 160.0 { (xe - 3.0, "end") } else { (xs + 3.0, "start") };
        let attrs = format!("text-anchor=\"{anchor}\" font-size=\"11\" fill=\"#333333\"");
        o += &text(x, LAT_TOP + 14.0 + 14.0 * (i % 3) as f64, &attrs, &w.label);
    }

    // Series: latency lines break where a bucket stored nothing; throughput counts a missing value as 0.
    for (class, color, get) in
        [("p50", P50, (|b: &Bucket| b.p50_ms) as fn(&Bucket) -> f64), ("p95", P95, |b| b.p95_ms), ("p99", P99, |b| b.p99_ms)]
    {
        for seg in rows.split(|b| !get(b).is_finite()).filter(|s| !s.is_empty()) {
            o += &series(class, color, &seg.iter().map(|b| (mid(b), ly(get(b)))).collect::<Vec<_>>());
        }
    }
    for (class, color, get) in
        [("sent", SENT, (|b: &Bucket| b.sent_per_sec) as fn(&Bucket) -> f64), ("stored", STORED, |b| b.stored_per_sec)]
    {
        if !rows.is_empty() {
            o += &series(class, color, &rows.iter().map(|b| (mid(b), ty(get(b)))).collect::<Vec<_>>());
        }
    }
    if no_data {
        let attrs = "text-anchor=\"middle\" font-size=\"14\" fill=\"#666666\"";
        o += &text((LEFT + RIGHT) / 2.0, (LAT_TOP + LAT_BOTTOM) / 2.0, attrs, "no data");
    }

    // Legend along the top, under the title.
    let legend = [
        ("p50 latency", P50),
        ("p95 latency", P95),
        ("p99 latency", P99),
        ("sent/s", SENT),
        ("stored/s", STORED),
        ("fault window", FAULT),
    ];
    for (i, (label, color)) in legend.into_iter().enumerate() {
        let x = LEFT + 140.0 * i as f64;
        o += &if color == FAULT {
            rect(x, 40.0, 22.0, 12.0, &format!("fill=\"{color}\" fill-opacity=\"0.2\" stroke=\"{color}\""))
        } else {
            line(x, 46.0, x + 22.0, 46.0, &format!("stroke=\"{color}\" stroke-width=\"2\""))
        };
        o += &text(x + 28.0, 50.0, "", label);
    }
    o += "</svg>\n";
    o
}

/// The time axis: from 0 (or the earliest start) to the latest bucket end or
/// window edge. `true` when there was nothing to span and 0..1 stands in.
fn x_range(buckets: &[Bucket], windows: &[Window]) -> (f64, f64, bool) {
    let bucket_times = buckets.iter().filter_map(|b| time(b.t));
    let starts = bucket_times.clone().chain(windows.iter().filter_map(window_span).map(|(s, _)| s));
    let ends = bucket_times.map(|t| t + 1.0).chain(windows.iter().filter_map(window_span).map(|(_, e)| e));
    let lo = starts.fold(0.0, f64::min);
    let hi = ends.fold(f64::NEG_INFINITY, f64::max);
    if hi > lo { (lo, hi, false) } else { (0.0, 1.0, true) }
}

/// A window's edges in order, or `None` when its start is unusable; an
/// unusable end makes it an instant.
fn window_span(w: &Window) -> Option<(f64, f64)> {
    let start = time(w.start)?;
    let end = time(w.end).unwrap_or(start);
    Some((start.min(end), start.max(end)))
}

/// The latency axis in ms: from the tick at or under the fastest value to
/// the tick at or over the slowest, at least a decade; 1 ms..1 s without data.
fn latency_range(rows: &[Bucket]) -> (f64, f64) {
    let vals = rows.iter().flat_map(|b| [b.p50_ms, b.p99_ms]).filter(|v| v.is_finite()).map(|v| v.max(1.0));
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (1.0, 1000.0);
    }
    let l0 = LAT_TICKS.iter().rev().map(|t| t.0).find(|t| *t <= lo).unwrap_or(1.0);
    let l1 = LAT_TICKS.iter().map(|t| t.0).find(|t| *t >= hi).unwrap_or(hi);
    if l1 > l0 { (l0, l1) } else { (l0, LAT_TICKS.iter().map(|t| t.0).find(|t| *t > l0).unwrap_or(l0 * 10.0)) }
}

/// A throughput value fit to draw: negative and non-finite rates count as 0,
/// and rates past a trillion per second are capped so the axis stays finite.
fn rate(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v.min(1e12) } else { 0.0 }
}

/// A time fit for the axis: finite and within about 30 years of the start
/// (anything further is garbage, and would make unreadable tick labels).
fn time(v: f64) -> Option<f64> {
    (v.is_finite() && v.abs() <= 1e9).then_some(v)
}

/// A round tick step (1, 2 or 5 times a power of ten) giving about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = span / target;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let step = mag * [1.0, 2.0, 5.0].into_iter().find(|m| f <= *m).unwrap_or(10.0);
    if step.is_finite() && step > 0.0 { step } else { 1.0 }
}

/// A horizontal grid line across the plot with its label left of the axis.
fn hgrid(y: f64, label: &str) -> String {
    line(LEFT, y, RIGHT, y, "stroke=\"#e5e5e5\"") + &text(LEFT - 6.0, y + 4.0, "text-anchor=\"end\"", label)
}

/// A `<line>` between two points, with further attributes.
fn line(x1: f64, y1: f64, x2: f64, y2: f64, attrs: &str) -> String {
    format!("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" {attrs}/>\n", num(x1), num(y1), num(x2), num(y2))
}

/// A `<rect>` from its top-left corner and size, with further attributes.
fn rect(x: f64, y: f64, w: f64, h: f64, attrs: &str) -> String {
    format!("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" {attrs}/>\n", num(x), num(y), num(w), num(h))
}

/// A `<text>` at a point; the content is escaped here, so callers pass it raw.
fn text(x: f64, y: f64, attrs: &str, content: &str) -> String {
    format!("<text x=\"{}\" y=\"{}\" {attrs}>{}</text>\n", num(x), num(y), escape(content))
}

/// One line segment of a series; a lone point becomes a dot so it stays visible.
fn series(class: &str, color: &str, pts: &[(f64, f64)]) -> String {
    match pts {
        [(x, y)] => format!("<circle class=\"{class}\" cx=\"{}\" cy=\"{}\" r=\"2.5\" fill=\"{color}\"/>\n", num(*x), num(*y)),
        _ => {
            let points: Vec<String> = pts.iter().map(|(x, y)| format!("{},{}", num(*x), num(*y))).collect();
            format!(
                "<polyline class=\"{class}\" points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>\n",
                points.join(" ")
            )
        }
    }
}

/// A throughput tick label, shortened with k/M/G so large rates stay readable.
fn count(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{}G", num(v / 1e9)),
        v if v >= 1e6 => format!("{}M", num(v / 1e6)),
        v if v >= 1e3 => format!("{}k", num(v / 1e3)),
        v => num(v),
    }
}

/// A number with at most one decimal place and no "-0"; non-finite values become 0.
fn num(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if !r.is_finite() || r == 0.0 {
        return "0".to_string();
    }
    if r.fract() == 0.0 { format!("{r:.0}") } else { format!("{r:.1}") }
}

/// Text made safe for XML content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(t: f64, p99: f64) -> Bucket {
        Bucket { t, sent_per_sec: 100.0, stored_per_sec: 95.0, p50_ms: 20.0, p95_ms: (20.0 + p99) / 2.0, p99_ms: p99 }
    }

    fn window(label: &str, start: f64, end: f64) -> Window {
        Window { label: label.to_string(), start, end }
    }

    /// Every `<name ...>` is closed by its `</name>` in order, or closes itself with `/>`.
    fn balanced(doc: &str) -> bool {
        let mut stack = Vec::new();
        let mut rest = doc;
        while let Some(i) = rest.find('<') {
            let Some(j) = rest[i..].find('>') else { return false };
            let tag = &rest[i + 1..i + j];
            rest = &rest[i + j + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                if stack.pop() != Some(name.trim()) {
                    return false;
                }
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap_or(""));
            }
        }
        stack.is_empty()
    }

    /// How many elements of a kind (`<rect`) carry a class; the drawing writes one element a line.
    fn tagged(doc: &str, tag: &str, class: &str) -> usize {
        doc.lines().filter(|l| l.starts_with(tag) && l.contains(&format!("class=\"{class}\""))).count()
    }

    fn valid(doc: &str) {
        assert!(doc.starts_with("<svg"), "{doc}");
        assert!(doc.trim_end().ends_with("</svg>"), "{doc}");
        assert!(balanced(doc), "{doc}");
        assert!(doc.contains("xmlns=\"http://www.w3.org/2000/svg\"") && doc.contains("viewBox=\"0 0 960 560\""));
        assert!(!doc.contains("NaN") && !doc.contains("inf"), "{doc}");
        // At most one decimal place: no '.' is followed by two digits.
        let b = doc.as_bytes();
        assert!(!b.windows(3).any(|w| w[0] == b'.' && w[1].is_ascii_digit() && w[2].is_ascii_digit()), "{doc}");
    }

    #[test]
    fn a_run_is_a_balanced_document() {
        let buckets: Vec<Bucket> = (0..60).map(|t| bucket(f64::from(t), 250.0 + f64::from(t))).collect();
        let doc = svg("morning rush \"chaos\"", &buckets, &[window("kill instance 2", 20.0, 30.0)]);
        valid(&doc);
        assert!(doc.contains("morning rush &quot;chaos&quot;"));
        assert!(doc.contains("100 ms") && doc.contains("1 s"));
        assert!(!doc.contains("no data"));
        assert_eq!(tagged(&doc, "<rect", "fault"), 1);
    }

    #[test]
    fn every_label_appears_escaped() {
        let windows = [window("kill <&> 'two'", 1.0, 3.0), window("b", 1.5, 2.0), window("c", 2.0, 4.0)];
        let doc = svg("t", &[bucket(0.0, 5.0), bucket(1.0, 6.0)], &windows);
        valid(&doc);
        assert!(doc.contains(">kill &lt;&amp;&gt; &apos;two&apos;</text>"));
        assert!(doc.contains(">b</text>") && doc.contains(">c</text>"));
        // Three overlapping labels sit on three different rows.
        let ys: Vec<&str> = ["kill", ">b<", ">c<"]
            .iter()
            .filter_map(|l| doc.lines().find(|line| line.contains(l)))
            .filter_map(|line| line.split("y=\"").nth(1))
            .filter_map(|s| s.split('"').next())
            .collect();
        assert_eq!(ys, ["84", "98", "112"]);
    }

    #[test]
    fn a_nan_p99_bucket_splits_the_line() {
        let buckets: Vec<Bucket> = (0..6).map(|t| bucket(f64::from(t), if t == 2 { f64::NAN } else { 300.0 })).collect();
        let doc = svg("split", &buckets, &[]);
        valid(&doc);
        assert_eq!(tagged(&doc, "<polyline", "p99"), 2);
        assert_eq!(tagged(&doc, "<polyline", "p50"), 1);
    }

    #[test]
    fn nothing_at_all_still_draws_with_a_note() {
        let doc = svg("", &[], &[]);
        valid(&doc);
        assert!(doc.contains("no data"));
        assert_eq!(x_range(&[], &[]), (0.0, 1.0, true));
        let doc = svg("only a fault", &[], &[window("pause", 0.0, 0.0)]);
        valid(&doc);
        assert!(doc.contains("no data") && doc.contains(">pause</text>"));
    }

    #[test]
    fn windows_beyond_the_last_bucket_widen_the_axis() {
        let buckets: Vec<Bucket> = (0..10).map(|t| bucket(f64::from(t), 40.0)).collect();
        assert_eq!(x_range(&buckets, &[]), (0.0, 10.0, false));
        let windows = [window("late", 30.0, 40.0), window("early", -5.0, 2.0)];
        assert_eq!(x_range(&buckets, &windows), (-5.0, 40.0, false));
        let doc = svg("wide", &buckets, &windows);
        valid(&doc);
        assert!(doc.contains(">40</text>") && !svg("narrow", &buckets, &[]).contains(">40</text>"));
    }

    #[test]
    fn hostile_numbers_do_not_panic() {
        let odd = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 0.0, 1e300, -1e300, f64::MIN_POSITIVE, f64::MAX];
        let mut buckets = Vec::new();
        for (i, a) in odd.iter().enumerate() {
            for b in odd.iter().skip(i % 3) {
                buckets.push(Bucket { t: *a, sent_per_sec: *b, stored_per_sec: *a, p50_ms: *b, p95_ms: *a, p99_ms: *a });
                buckets.push(Bucket {
                    t: 9.0 - i as f64,
                    sent_per_sec: *a,
                    stored_per_sec: -*b,
                    p50_ms: *a,
                    p95_ms: *b,
                    p99_ms: -*b,
                });
            }
        }
        let windows: Vec<Window> = odd.iter().zip(odd.iter().rev()).map(|(s, e)| window("w", *s, *e)).collect();
        let doc = svg("odd", &buckets, &windows);
        valid(&doc);
        assert!(!doc.contains("00000000"), "absurd values make absurd labels: {doc}");
        valid(&svg("odd", &buckets[..3], &windows[..2]));
        valid(&svg("unordered", &[bucket(5.0, 10.0), bucket(-3.0, 1.0), bucket(2.0, 0.5)], &[window("back", 4.0, 1.0)]));
    }

    #[test]
    fn an_instant_window_is_a_line() {
        let doc = svg("instant", &[bucket(0.0, 50.0), bucket(1.0, 60.0)], &[window("SIGTERM", 1.0, 1.0)]);
        valid(&doc);
        assert_eq!(tagged(&doc, "<line", "fault"), 1);
        assert!(tagged(&doc, "<rect", "fault") == 0);
    }

    #[test]
    fn numbers_keep_one_decimal_at_most() {
        assert_eq!([num(1.25), num(-0.04), num(3.0), num(f64::NAN), num(12.06)], ["1.3", "0", "3", "0", "12.1"]);
        assert_eq!([count(1500.0), count(2e6), count(250.0)], ["1.5k", "2M", "250"]);
    }
}
