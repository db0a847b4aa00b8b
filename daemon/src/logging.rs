//! Logging: how lines look and where their level is decided.
//!
//! Owns: the subscriber (one line per event on stderr, as text or as JSON
//! lines), colour only when stderr is a terminal, the syslog priority
//! prefix when stderr is journald's stream, and the level filter with its
//! handle for a reload. Must not: log payloads or credentials (callers
//! decide what they log; nothing here adds fields).
//!
//! The level: `CAFE_LOG`, else `RUST_LOG`, else `log.level` (`info` by
//! default), each in tracing's filter syntax (`info,daemon::sources=debug`).
//! A level set by the environment stays for the life of the process: a
//! reload that changes `log.level` says so and changes nothing.
//!
//! Under systemd with `StandardError=journal` (the default), systemd sets
//! `JOURNAL_STREAM` to the device and inode of the stream it gave the
//! process as stderr. When stderr is that stream, each line starts with
//! `<N>`, the syslog priority of its level (`sd-daemon(3)`): journald takes
//! the prefix off and files the line at that priority, so `journalctl -p
//! err` finds the errors. Anywhere else (a terminal, a file the CloudWatch
//! agent reads, a pipe) there is no prefix.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// `[log]`: how the daemon logs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (one human-readable line per event) or `json` (one JSON
    /// object per line: `timestamp`, `level`, `target`, `fields`; what
    /// CloudWatch Logs Insights parses).
    pub format: LogFormat,
    /// The level filter, in tracing's syntax (`info`, `warn,daemon=debug`).
    /// `CAFE_LOG`, else `RUST_LOG`, takes its place when set. SIGHUP
    /// applies a changed value.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".to_owned() }
    }
}

impl LogConfig {
    /// What is wrong with these settings, as (field, why).
    pub fn problems(&self) -> Vec<(String, String)> {
        match EnvFilter::builder().parse(&self.level) {
            Ok(_) => Vec::new(),
            Err(e) => vec![("log.level".to_owned(), format!("not a level filter like \"info\" or \"warn,daemon=debug\": {e}"))],
        }
    }
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

/// Where the level came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelSource {
    /// This environment variable, for the life of the process.
    Environment(&'static str),
    /// `log.level`, which a reload may change.
    Config,
}

/// The level filter in force: the environment's, else the config's.
pub fn level(config_level: &str, env: impl Fn(&str) -> Option<String>) -> (String, LevelSource) {
    for var in ["CAFE_LOG", "RUST_LOG"] {
        if let Some(v) = env(var).filter(|v| !v.trim().is_empty()) {
            return (v, LevelSource::Environment(var));
        }
    }
    (config_level.to_owned(), LevelSource::Config)
}

/// The syslog priority journald files a line of this level at
/// (`sd-daemon(3)`'s `SD_ERR`, `SD_WARNING`, `SD_INFO`, `SD_DEBUG`).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Whether `journal_stream` (`JOURNAL_STREAM`, `<device>:<inode>`) names
/// the file whose device and inode are given: stderr is journald's.
pub fn is_journal_stream(journal_stream: Option<&str>, device: u64, inode: u64) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|s| s.split_once(':')) else {
        return false;
    };
    dev.parse::<u64>() == Ok(device) && ino.parse::<u64>() == Ok(inode)
}

/// Whether this process's stderr is journald's stream.
pub fn stderr_is_journal() -> bool {
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    if journal_stream.is_none() {
        return false;
    }
    // fstat(2) of a duplicate of fd 2 (metadata of a `File` is fstat).
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => is_journal_stream(journal_stream.as_deref(), m.dev(), m.ino()),
        Err(_) => false,
    }
}

/// Colour only on a terminal, and never with `NO_COLOR` set (no-color.org).
fn colour(stderr_is_terminal: bool, no_color: Option<String>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// An event formatter that puts `<N>` (the level's syslog priority) before
/// what `inner` writes, when `priorities` is on.
#[derive(Debug)]
pub struct Prefixed<F> {
    inner: F,
    priorities: bool,
}

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        if self.priorities {
            write!(writer, "<{}>", priority(*event.metadata().level()))?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Text or JSON.
    pub format: LogFormat,
    /// `<N>` before each line.
    pub priorities: bool,
    /// ANSI colours (text only).
    pub colour: bool,
}

/// The formatting layer for `style`, writing to `writer`.
pub fn layer<W>(style: Style, writer: W) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match style.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(style.colour)
            .event_format(Prefixed { inner: tracing_subscriber::fmt::format(), priorities: style.priorities })
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_ansi(false)
            .event_format(Prefixed { inner: tracing_subscriber::fmt::format().json(), priorities: style.priorities })
            .boxed(),
    }
}

type Reload = reload::Handle<EnvFilter, tracing_subscriber::layer::Layered<Box<dyn Layer<Registry> + Send + Sync>, Registry>>;

/// The installed subscriber's level, for a reload.
pub struct Logging {
    handle: Reload,
    source: LevelSource,
    level: std::sync::Mutex<String>,
}

impl std::fmt::Debug for Logging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logging").field("source", &self.source).field("level", &self.level).finish_non_exhaustive()
    }
}

/// What a reload did to the level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelChange {
    /// The same as before.
    Unchanged,
    /// Now this filter.
    Changed(String),
    /// `log.level` changed, but this variable set the level and stays.
    OverriddenBy(&'static str),
}

/// Why the level could not change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LevelError {
    /// The filter does not parse.
    #[error("log.level does not parse: {0}")]
    Parse(String),
    /// The subscriber refused the new filter.
    #[error("the log level cannot change: {0}")]
    Reload(String),
}

impl Logging {
    /// Applies `log.level` from a reloaded configuration.
    pub fn set_level(&self, config_level: &str) -> Result<LevelChange, LevelError> {
        let mut current = self.level.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let LevelSource::Environment(var) = self.source {
            return Ok(LevelChange::OverriddenBy(var));
        }
        if *current == config_level {
            return Ok(LevelChange::Unchanged);
        }
        let filter = EnvFilter::builder().parse(config_level).map_err(|e| LevelError::Parse(e.to_string()))?;
        self.handle.reload(filter).map_err(|e| LevelError::Reload(e.to_string()))?;
        config_level.clone_into(&mut current);
        Ok(LevelChange::Changed(config_level.to_owned()))
    }

    /// Where the level came from.
    pub fn source(&self) -> &LevelSource {
        &self.source
    }
}

/// Installs the process's subscriber: stderr, `config`'s format, colour on
/// a terminal only, priorities under journald. A level filter that does not
/// parse (from the environment; the config's is validated) falls back to
/// `info` and says so.
pub fn init(config: &LogConfig) -> Logging {
    let (level, source) = level(&config.level, |v| std::env::var(v).ok());
    let (filter, bad) = match EnvFilter::builder().parse(&level) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    let style = Style {
        format: config.format,
        priorities: stderr_is_journal(),
        colour: colour(std::io::stderr().is_terminal(), std::env::var("NO_COLOR").ok()),
    };
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry().with(layer(style, std::io::stderr)).with(filter).init();
    if let Some(e) = bad {
        tracing::warn!(filter = %level, error = %e, "Log level filter does not parse; logging at info");
    }
    Logging { handle, source, level: std::sync::Mutex::new(level) }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Lines written, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines(style: Style) -> Vec<String> {
        let out = Captured::default();
        let subscriber = tracing_subscriber::registry().with(layer(style, out.clone())).with(EnvFilter::new("debug"));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(queue = "cafe-payments.fifo", "Cannot delete");
            tracing::warn!(attempt = 2, "Retrying");
            tracing::info!("Consuming");
            tracing::debug!("Batch");
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn under_journald_each_line_starts_with_its_levels_syslog_priority() {
        let got = lines(Style { format: LogFormat::Text, priorities: true, colour: false });
        assert_eq!(got.len(), 4, "{got:?}");
        for (line, prefix) in got.iter().zip(["<3>", "<4>", "<6>", "<7>"]) {
            assert!(line.starts_with(prefix), "{line:?} should start with {prefix}");
        }
        assert!(got[0].contains("ERROR") && got[0].contains("Cannot delete") && got[0].contains("queue=\"cafe-payments.fifo\""));
        // Without journald: no prefix.
        let plain = lines(Style { format: LogFormat::Text, priorities: false, colour: false });
        assert!(plain.iter().all(|l| !l.starts_with('<')), "{plain:?}");
    }

    #[test]
    fn json_lines_carry_timestamp_level_target_and_fields() {
        for priorities in [false, true] {
            let got = lines(Style { format: LogFormat::Json, priorities, colour: true });
            assert_eq!(got.len(), 4, "{got:?}");
            let first = &got[0];
            let json = if priorities { first.strip_prefix("<3>").expect("prefix") } else { first };
            let v: serde_json::Value = serde_json::from_str(json).expect("one JSON object per line");
            assert_eq!(v["level"], "ERROR");
            assert_eq!(v["fields"]["message"], "Cannot delete");
            assert_eq!(v["fields"]["queue"], "cafe-payments.fifo");
            assert!(v["target"].as_str().is_some_and(|t| t.starts_with("daemon")), "{v}");
            let ts = v["timestamp"].as_str().expect("timestamp");
            assert!(time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(), "{ts}");
            assert!(!json.contains('\u{1b}'), "no ANSI escapes in JSON even when colour is asked for: {json}");
        }
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(String::new())), "NO_COLOR set but empty does not count (no-color.org)");
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
        let got = lines(Style { format: LogFormat::Text, priorities: false, colour: false });
        assert!(got.iter().all(|l| !l.contains('\u{1b}')), "{got:?}");
        let got = lines(Style { format: LogFormat::Text, priorities: false, colour: true });
        assert!(got.iter().any(|l| l.contains('\u{1b}')), "{got:?}");
    }

    #[test]
    fn journal_stream_must_name_stderrs_device_and_inode() {
        assert!(is_journal_stream(Some("8:1234"), 8, 1234));
        assert!(!is_journal_stream(Some("8:1234"), 8, 1235));
        assert!(!is_journal_stream(Some("9:1234"), 8, 1234));
        assert!(!is_journal_stream(Some("garbage"), 8, 1234));
        assert!(!is_journal_stream(None, 8, 1234));
    }

    #[test]
    fn the_environment_sets_the_level_before_the_config() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(level("warn", env(&[])), ("warn".to_owned(), LevelSource::Config));
        assert_eq!(level("warn", env(&[("RUST_LOG", "debug")])), ("debug".to_owned(), LevelSource::Environment("RUST_LOG")));
        assert_eq!(
            level("warn", env(&[("RUST_LOG", "debug"), ("CAFE_LOG", "trace")])),
            ("trace".to_owned(), LevelSource::Environment("CAFE_LOG"))
        );
        assert_eq!(level("warn", env(&[("CAFE_LOG", " ")])), ("warn".to_owned(), LevelSource::Config));
    }

    #[test]
    fn a_level_that_does_not_parse_is_a_named_problem() {
        assert!(LogConfig::default().problems().is_empty());
        let bad = LogConfig { level: "info,daemon=loud".into(), ..LogConfig::default() };
        let problems = bad.problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "log.level");
    }
}
