//! `cafe-loadgen`: replays cafe-stream's named stress scenarios against a
//! running daemon and verifies that nothing was lost or double counted.
//!
//! Exit codes: 0 when every threshold and the verification pass, 1 when the
//! run failed them, 2 when the run could not be made.

/// The daemon's allocator (daemon/src/main.rs): menu-sync times the menu
/// kernel in this process for its CPU-bound ceiling, and with glibc's
/// malloc the JSON rounds' allocations made it slower than the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod attack;
mod backlog;
mod bare;
mod ceiling;
mod chaos;
mod coldstart;
mod dashcheck;
mod menusync;
mod menuthroughput;
mod morningrush;
mod payload;
mod paythroughput;
mod progress;
mod report;
mod scenario;
mod throughput;
mod tipreader;
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
    /// Chaos profiles (`scenarios/chaos/*.toml`).
    #[command(subcommand)]
    Chaos(ChaosCommand),
    /// Run a scenario, verify the outputs and report.
    Run(RunArgs),
    /// Measure the orders/s one daemon sustains against a bare GetRecords
    /// reader on the same stream: put a backlog, read it bare, then start
    /// the daemon and time it.
    OrdersThroughput(throughput::ThroughputArgs),
    /// The payments path's floor: a bare client drains a burst of payments
    /// from a scratch FIFO queue into a scratch table (the daemon's SQS and
    /// DynamoDB calls, no processing) and is timed.
    PaymentsThroughput(paythroughput::PaymentsThroughputArgs),
    /// The menu path's floor: a bare client drains the menu-sync catalogue
    /// from a scratch queue into a scratch table as it is sent (the
    /// daemon's SQS and DynamoDB calls, no processing) and is timed.
    MenuThroughput(menuthroughput::MenuThroughputArgs),
    /// The daemon's memory under a backlog: puts `--records` order events
    /// on the stream, runs the start command, and samples the daemon's
    /// resident memory from its admin endpoint every second while it works
    /// through them (the caller stops the daemon).
    OrdersBacklog(backlog::BacklogArgs),
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

/// `cafe-loadgen chaos ...`.
#[derive(Debug, Subcommand)]
enum ChaosCommand {
    /// List the chaos profiles and what each proves.
    List,
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
    /// Where the run's reports go: `report.html` (self-contained: the
    /// summary and the latency and throughput charts), `summary.json`,
    /// `summary.md` and goose's JSON and Markdown reports. Default: a folder
    /// of its own, `reports/<UTC time>-<scenario>` (and `reports/latest`
    /// links to it).
    #[arg(long, default_value = "")]
    pub report_dir: PathBuf,
    /// An earlier run's report folder (or its `summary.json`): prints what
    /// got better or worse in this run against it.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Run id put into every identifier (default: from the clock).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Run under this chaos profile (see `chaos list`): the loadgen starts
    /// the daemon instances itself, behind fault proxies in front of every
    /// AWS endpoint, and breaks things on the profile's schedule.
    #[arg(long)]
    pub chaos: Option<String>,
    /// Daemon instances of a chaos run (default: the profile's).
    #[arg(long, requires = "chaos")]
    pub instances: Option<usize>,
    /// Shell command that starts one daemon instance in a chaos run
    /// (default: the `cafe-streamd` next to this binary, with `run`).
    #[arg(long, env = "CAFE_LOADGEN_DAEMON_COMMAND")]
    pub daemon_command: Option<String>,
    /// How long an instance may drain after SIGTERM in a chaos run: given
    /// to each as `CAFE_SHUTDOWN__GRACE_PERIOD_SECS`, 1 to 3600.
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
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
    /// The rejected queue (a chaos run's bad events must arrive there).
    #[arg(long, env = "CAFE_LOADGEN_REJECTED_QUEUE", default_value = "cafe-rejected")]
    pub rejected_queue: String,
    /// The orders stream's lease table (a chaos run reads who holds which shard).
    #[arg(long, env = "CAFE_LOADGEN_LEASE_TABLE", default_value = "cafe-orders-leases")]
    pub lease_table: String,
    /// The Redshift table.
    #[arg(long, env = "CAFE_LOADGEN_REDSHIFT_TABLE", default_value = "cafe_store_minute")]
    pub redshift_table: String,
    /// The daemon's admin endpoint (its `admin.listen`), whose CPU counter
    /// a local CPU-bound target reads (menu-sync's `drain_vs_ceiling`) and
    /// whose last-write stamp orders-throughput times the daemon by.
    #[arg(long, env = "CAFE_LOADGEN_DAEMON_ADMIN", default_value = "127.0.0.1:9464")]
    pub daemon_admin: String,
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

    fn samples(&self) -> &[chaos::Sample] {
        match self {
            Report::Burst(s) => &s.samples,
            Report::Orders(s) => &s.samples,
            Report::Menu(s) => &s.samples,
        }
    }
}

/// Runs scenario `s` with the driver its kind names.
async fn drive(s: scenario::Scenario, args: &RunArgs) -> anyhow::Result<Report> {
    if s.menu.is_some() {
        menusync::run(s, args, &args.targets).await.map(Report::Menu)
    } else if s.orders.is_some() {
        morningrush::run(s, args, &args.targets).await.map(Report::Orders)
    } else {
        coldstart::run(s, args, &args.targets).await.map(Report::Burst)
    }
}

/// The command of one instance when `--daemon-command` is not given: the
/// `cafe-streamd` next to this binary (else on the PATH), with `run`.
fn default_daemon_command() -> String {
    let sibling = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("cafe-streamd")));
    match sibling.filter(|p| p.is_file()) {
        Some(p) => format!("'{}' run", p.display().to_string().replace('\'', "'\\''")),
        None => "cafe-streamd run".into(),
    }
}

/// Runs scenario `s` under chaos profile `name`: sets up the proxies and
/// the instances, starts the schedule as the load begins, and judges.
async fn run_chaos(mut s: scenario::Scenario, name: &str, args: &RunArgs) -> anyhow::Result<(Report, chaos::ChaosReport)> {
    let profile = chaos::profile::find(name)?;
    // The e2e target holds before the first fault; under faults the
    // figures are reported per phase, and the faults' own rules judge.
    let p99_before = s.thresholds.e2e_p99_ms.take();
    // A drain under faults is the faults' figure, not the daemon's.
    s.thresholds.local = scenario::LocalTargets::default();
    // The loadgen owns the instances: no restart command.
    s.daemon.restart = scenario::Restart::None;
    let mut args = args.clone();
    let run_id = args.run_id.clone().unwrap_or_else(coldstart::new_run_id);
    args.run_id = Some(run_id.clone());
    std::fs::create_dir_all(&args.report_dir)?;
    let setup = chaos::Setup {
        instances: args.instances.unwrap_or(profile.instances),
        daemon_command: args.daemon_command.clone().unwrap_or_else(default_daemon_command),
        lease_table: args.targets.lease_table.clone(),
        log_dir: args.report_dir.join("instances"),
        run_id,
        grace: std::time::Duration::from_secs(args.grace_secs),
        scenario: s.name.clone(),
        time_scale: args.time_scale,
        stream: args.targets.orders_stream.clone(),
        payments_queue: args.targets.payments_queue.clone(),
        menu_queue: args.targets.menu_queue.clone(),
        rejected_queue: args.targets.rejected_queue.clone(),
    };
    let mut run = chaos::Chaos::setup(profile, setup).await?;
    run.begin();
    let stores = s.load.as_ref().map(|l| l.stores).or(s.orders.as_ref().map(|o| o.stores));
    let report = drive(s, &args).await?;
    // After every fault, while the instances still run: the mirror equals
    // DynamoDB (menu-sync checks it itself).
    run.faults_done().await?;
    let mut mirror = None;
    if let (Some(n), Some(url), Some(run_id)) = (stores, &args.targets.redshift_url, &args.run_id) {
        let stores: Vec<String> = (0..n).map(|k| payload::store_id(run_id, k)).collect();
        mirror = Some(menusync::mirror_equal(&args.targets, url, &stores, std::time::Duration::from_secs(60)).await);
    }
    let verdict = run.finish(report.samples(), p99_before, &args.report_dir, mirror).await?;
    Ok((report, verdict))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAFE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,goose=warn")),
        )
        .with_writer(std::io::stderr)
        // Colour on a terminal only (not in a CI log or a file), and never with NO_COLOR.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr()) && !std::env::var("NO_COLOR").is_ok_and(|v| !v.is_empty()),
        )
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
        Command::PaymentsThroughput(args) => measurement(paythroughput::run(&args, 1), |t| {
            println!(
                "bare consumer ({} receivers; the daemon's batches and transactions, {} of them{}; deletes): {} payments in {:.2} s, {:.0} payments/s",
                args.receivers,
                t.transactions,
                t.fraud_history.said(),
                t.payments,
                t.bare_secs,
                t.bare_payments_per_sec
            );
        }),
        Command::MenuThroughput(args) => measurement(menuthroughput::run(&args), |t| {
            println!(
                "bare consumer ({} receivers; the daemon's batches and chunks: a read of the skus and a transaction each, {} of each; deletes): {} items in {:.2} s from the first send (sending took {:.2} s), {:.0} items/s",
                args.receivers, t.transactions, t.items, t.bare_secs, t.send_secs, t.bare_items_per_sec
            );
        }),
        Command::OrdersBacklog(args) => measurement(backlog::run(&args, 1), |b| {
            println!(
                    "backlog: {} records ({} orders) put in {:.1} s
                         daemon over {} s: {:.0} records acknowledged; resident memory peak {:.1} MiB                          (first half {:.1}, second half {:.1}: growth {:.2})",
                    b.records,
                    b.orders,
                    b.put_secs,
                    args.watch_secs,
                    b.acked,
                    b.peak_rss_mib,
                    b.first_half_peak_mib,
                    b.second_half_peak_mib,
                    b.growth
                );
        }),
        Command::OrdersThroughput(args) => measurement(throughput::run(&args, 1), |t| {
            let own = match (t.daemon_own_secs, t.daemon_own_records_per_sec, t.own_ratio_to_writes, t.own_ratio_to_reads_writes)
            {
                (Some(secs), Some(rate), Some(writes), Some(both)) => format!(
                    "\nby the daemon's own clock (first write begun to last write durable, as the bare writers' clocks run): {secs:.2} s, {rate:.0} records/s\n\
                         ratio to the bare writer: {writes:.2}; to the bare reader and writer at once: {both:.2}"
                ),
                _ => format!(
                    "\nby the daemon's own clock: no figure ({})",
                    t.daemon_own_clock_refused.as_deref().unwrap_or("none made")
                ),
            };
            println!(
                "backlog: {} orders, {} records\nbare GetRecords reader: {:.2} s, {:.0} records/s\n\
                     daemon: {:.2} s from start ({:.2} s to the first event applied, then a {:.2} s drain as seen, its writes begun over {:.2} s of it): {:.1} orders/s, {:.0} records/s over the drain\nratio daemon/bare reader: {:.3}\n\
                     bare DynamoDB writer (the daemon's item writes, 99 orders and their row per transaction, 16 at once): {:.2} s, {:.0} writes/s\n\
                     ratio daemon records/s to bare writer writes/s: {:.2}\n\
                     bare reader and writer at once: {:.2} s, {:.0} records/s\n\
                     ratio daemon records/s to bare reader and writer at once: {:.2}{own}",
                t.orders,
                t.records,
                t.bare_read_secs,
                t.bare_records_per_sec,
                t.daemon_secs,
                t.daemon_start_secs,
                t.daemon_drain_secs,
                t.daemon_writes_secs,
                t.daemon_orders_per_sec,
                t.daemon_records_per_sec,
                t.ratio,
                t.bare_write_secs,
                t.bare_write_items_per_sec,
                t.ratio_to_writes,
                t.bare_read_write_secs,
                t.bare_read_write_records_per_sec,
                t.ratio_to_reads_writes
            );
        }),
        Command::Chaos(ChaosCommand::List) => match chaos::profile::dir().and_then(|d| chaos::profile::list(&d)) {
            Ok(all) => {
                for p in all {
                    println!("{:<18} {}\n{:<18} proves: {}", p.name, p.description, "", p.proves);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Run(mut args) => {
            if args.report_dir.as_os_str().is_empty() {
                args.report_dir = report::default_dir(&args.name);
            }
            if !(args.scale > 0.0 && args.scale.is_finite() && args.time_scale > 0.0 && args.time_scale.is_finite()) {
                return fail(anyhow::anyhow!("--scale and --time-scale must be positive numbers"));
            }
            if args.instances.is_some_and(|n| n == 0 || n > chaos::profile::MAX_INSTANCES) {
                return fail(anyhow::anyhow!("--instances must be 1 to {}", chaos::profile::MAX_INSTANCES));
            }
            if !(1..=3600).contains(&args.grace_secs) {
                return fail(anyhow::anyhow!("--grace-secs must be 1 to 3600"));
            }
            let result = scenario::find(&args.name).and_then(|s| {
                if let Some(warning) = report::skipped_restart(&s, args.chaos.is_some()) {
                    eprintln!("warning: {warning}");
                }
                let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                rt.block_on(async {
                    let (stop, stopped) = tokio::sync::oneshot::channel();
                    let ticker = tokio::spawn(progress::ticker(stopped));
                    let out = match &args.chaos {
                        None => drive(s, &args).await.map(|r| (r, None)),
                        Some(name) => run_chaos(s, name, &args).await.map(|(r, c)| (r, Some(c))),
                    };
                    let _ = stop.send(());
                    let _ = ticker.await;
                    out
                })
            });
            match result {
                Ok((summary, chaos)) => {
                    println!("{}", summary.markdown());
                    let mut passed = summary.passed();
                    if let Some(c) = &chaos {
                        println!("{}", c.markdown());
                        println!("chaos report: {}", args.report_dir.join("chaos.html").display());
                        passed &= c.passed();
                    }
                    let title = format!("{} ({})", args.name, if passed { "PASS" } else { "FAIL" });
                    if let Err(e) = report::write_html(&args.report_dir, &title, &summary.markdown(), summary.samples()) {
                        eprintln!("warning: report.html not written: {e:#}");
                    }
                    report::link_latest(&args.report_dir);
                    if let Some(baseline) = &args.baseline {
                        match report::compare(baseline, &args.report_dir.join("summary.json")) {
                            Ok(table) => println!("\n{table}"),
                            Err(e) => eprintln!("warning: no comparison with {}: {e:#}", baseline.display()),
                        }
                    }
                    println!("\nreport: {}", args.report_dir.join("report.html").display());
                    if passed { ExitCode::SUCCESS } else { ExitCode::from(1) }
                }
                Err(e) => fail(e),
            }
        }
    }
}

/// Runs a measurement on a runtime of its own; `said` prints what it
/// measured for a reader, then its figures follow as one line of JSON (the
/// last such line is what scripts/bench.sh reads).
fn measurement<T: serde::Serialize>(
    run: impl std::future::Future<Output = anyhow::Result<T>>,
    said: impl FnOnce(&T),
) -> ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run));
    match result {
        Ok(t) => {
            said(&t);
            match serde_json::to_string(&t) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.into()),
            }
        }
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(2)
}
