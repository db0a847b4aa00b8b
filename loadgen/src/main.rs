//! `cafe-loadgen`: replays cafe-stream's named stress scenarios against a
//! running daemon and verifies that nothing was lost or double counted.
//!
//! Exit codes: 0 when every threshold and the verification pass, 1 when the
//! run failed them, 2 when the run could not be made.

mod attack;
mod coldstart;
mod dashcheck;
mod menusync;
mod morningrush;
mod payload;
mod scenario;
mod throughput;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Replays cafe-stream's stress scenarios.
#[derive(Debug, Parser)]
#[command(name = "cafe-loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the scenarios.
    List,
    /// Run a scenario, verify the outputs and report.
    Run(RunArgs),
    /// Measure the orders/s one daemon sustains against a bare GetRecords
    /// reader on the same stream: put a backlog, read it bare, then start
    /// the daemon and time it.
    OrdersThroughput(throughput::ThroughputArgs),
    /// Prove the dashboards and rules against a Prometheus that scraped a
    /// daemon under load: every expression returns data, every rule is healthy.
    CheckDashboards {
        /// Prometheus base URL.
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        prometheus: String,
        /// Folder of dashboard JSON and rule files.
        #[arg(long, default_value = "dashboards")]
        dir: PathBuf,
    },
}

/// `cafe-loadgen run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Scenario name (see `list`).
    pub name: String,
    /// Payload seed: the same seed and run id give the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Multiplies the scenario's event counts (a burst's size, a stage's rate).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Multiplies the length of an orders scenario's stages.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Where goose's HTML/JSON/Markdown reports and the summary go.
    #[arg(long, default_value = "reports")]
    pub report_dir: PathBuf,
    /// Run id put into every identifier (default: from the clock).
    #[arg(long)]
    pub run_id: Option<String>,
    #[command(flatten)]
    pub targets: Targets,
}

/// The daemon's resources (the contract's defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct Targets {
    /// The payments FIFO queue.
    #[arg(long, env = "CAFE_LOADGEN_PAYMENTS_QUEUE", default_value = "cafe-payments.fifo")]
    pub payments_queue: String,
    /// The payments table.
    #[arg(long, env = "CAFE_LOADGEN_PAYMENTS_TABLE", default_value = "cafe-payments")]
    pub payments_table: String,
    /// The aggregates table.
    #[arg(long, env = "CAFE_LOADGEN_AGGREGATES_TABLE", default_value = "cafe-aggregates")]
    pub aggregates_table: String,
    /// The orders stream.
    #[arg(long, env = "CAFE_LOADGEN_ORDERS_STREAM", default_value = "cafe-orders")]
    pub orders_stream: String,
    /// The orders table.
    #[arg(long, env = "CAFE_LOADGEN_ORDERS_TABLE", default_value = "cafe-orders")]
    pub orders_table: String,
    /// The menu queue.
    #[arg(long, env = "CAFE_LOADGEN_MENU_QUEUE", default_value = "cafe-menu-sync")]
    pub menu_queue: String,
    /// The menu table.
    #[arg(long, env = "CAFE_LOADGEN_MENU_TABLE", default_value = "cafe-menu")]
    pub menu_table: String,
    /// Redshift (or PostgreSQL for it) as `postgres://user@host:port/db`, to
    /// check `cafe_store_minute` against `cafe-aggregates`; unset: not checked.
    #[arg(long, env = "CAFE_LOADGEN_REDSHIFT_URL")]
    pub redshift_url: Option<String>,
    /// The Redshift table.
    #[arg(long, env = "CAFE_LOADGEN_REDSHIFT_TABLE", default_value = "cafe_store_minute")]
    pub redshift_table: String,
}

/// What a run reports, whichever driver ran it.
enum Report {
    Burst(coldstart::Summary),
    Orders(morningrush::Summary),
    Menu(menusync::Summary),
}

impl Report {
    fn markdown(&self) -> String {
        match self {
            Report::Burst(s) => s.markdown(),
            Report::Orders(s) => s.markdown(),
            Report::Menu(s) => s.markdown(),
        }
    }

    fn passed(&self) -> bool {
        match self {
            Report::Burst(s) => s.passed(),
            Report::Orders(s) => s.passed(),
            Report::Menu(s) => s.passed(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAFE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,goose=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::List => match scenario::scenarios_dir().and_then(|d| scenario::list(&d)) {
            Ok(all) => {
                for s in all {
                    println!("{:<14} {}", s.name, s.description);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::CheckDashboards { prometheus, dir } => {
            let result = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(dashcheck::run(&prometheus, &dir)));
            match result {
                Ok((n, problems)) if problems.is_empty() => {
                    println!("{n} dashboard and rule expressions return data; every rule is healthy");
                    ExitCode::SUCCESS
                }
                Ok((n, problems)) => {
                    println!("{} of {n} checks failed:", problems.len());
                    for p in problems {
                        println!("- {p}");
                    }
                    ExitCode::from(1)
                }
                Err(e) => fail(e),
            }
        }
        Command::OrdersThroughput(args) => {
            let result = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(throughput::run(&args, 1)));
            match result {
                Ok(t) => {
                    println!(
                        "backlog: {} orders, {} records\nbare GetRecords reader: {:.2} s, {:.0} records/s\n\
                         daemon (from start): {:.2} s, {:.1} orders/s, {:.0} records/s\nratio daemon/bare reader: {:.3}\n\
                         bare DynamoDB writer (the same item writes, 24 orders + 1 row per transaction, 16 at once): {:.2} s, {:.0} writes/s\n\
                         ratio daemon records/s to bare writer writes/s: {:.2}",
                        t.orders,
                        t.records,
                        t.bare_read_secs,
                        t.bare_records_per_sec,
                        t.daemon_secs,
                        t.daemon_orders_per_sec,
                        t.daemon_records_per_sec,
                        t.ratio,
                        t.bare_write_secs,
                        t.bare_write_items_per_sec,
                        t.ratio_to_writes
                    );
                    match serde_json::to_string(&t) {
                        Ok(json) => println!("{json}"),
                        Err(e) => return fail(e.into()),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Run(args) => {
            if !(args.scale > 0.0 && args.scale.is_finite() && args.time_scale > 0.0 && args.time_scale.is_finite()) {
                return fail(anyhow::anyhow!("--scale and --time-scale must be positive numbers"));
            }
            let result = scenario::find(&args.name).and_then(|s| {
                let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                if s.menu.is_some() {
                    rt.block_on(menusync::run(s, &args, &args.targets)).map(Report::Menu)
                } else if s.orders.is_some() {
                    rt.block_on(morningrush::run(s, &args, &args.targets)).map(Report::Orders)
                } else {
                    rt.block_on(coldstart::run(s, &args, &args.targets)).map(Report::Burst)
                }
            });
            match result {
                Ok(summary) => {
                    println!("{}", summary.markdown());
                    println!("\nreports: {}", args.report_dir.join("goose-report.html").display());
                    if summary.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) }
                }
                Err(e) => fail(e),
            }
        }
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(2)
}
