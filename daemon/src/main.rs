//! `cafe-streamd`: command line, logging, and the one place errors become
//! exit codes (0 ok, 1 runtime failure, 2 invalid configuration).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use daemon::config::{self, Config};
use daemon::topology::{self, Exit};
use tracing::{error, info};

/// mimalloc instead of glibc's malloc. The write path allocates many small
/// strings (the SDK's items, its JSON and signing), and on the orders
/// path glibc's malloc and free (with their free-list consolidation) took
/// about a third of the shard stage's CPU (`benches/benches/pipeline.rs`, under
/// perf); with mimalloc the stage took 26% less time per event, the
/// decode-and-apply kernel 17% less (`daemon::allocator` says which
/// version runs). The `system-allocator` feature leaves glibc's, for heap
/// profilers.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("CAFE_GIT_COMMIT"), ")");

/// The cafe-stream processing daemon.
#[derive(Debug, Parser)]
#[command(name = "cafe-streamd", version = VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume, decide and write until SIGTERM, then drain.
    Run(ConfigArg),
    /// Check the configuration, naming every problem; exit 2 if any.
    Validate(ValidateArgs),
    /// Print the configuration in force (the file, `CAFE_...` overrides and
    /// defaults) as TOML, secrets redacted.
    Config(ConfigArg),
    /// Create every stream, queue and table of the contract that is missing.
    Provision(ConfigArg),
    /// Print the least-privilege IAM policy for the configured resources.
    IamPolicy(IamArgs),
    /// Watch a running daemon: rates, p99, lag, leases, from its metrics.
    Top(TopArgs),
}

#[derive(Debug, clap::Args)]
struct ValidateArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Also check the account, read-only: credentials resolve, and every
    /// queue, stream and table exists with the shape the daemon needs, and
    /// the Redshift table answers through the configured transport.
    #[arg(long)]
    environment: bool,
}

#[derive(Debug, clap::Args)]
struct TopArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Metrics endpoint (default: the config's `admin.listen`).
    #[arg(long)]
    addr: Option<String>,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Print one view and exit.
    #[arg(long)]
    once: bool,
}

#[derive(Debug, clap::Args)]
struct IamArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The policy of the role that runs `provision` instead of `run`.
    #[arg(long)]
    provision: bool,
    /// AWS account id in the ARNs (default `*`).
    #[arg(long, default_value = "*")]
    account: String,
    /// Region in the ARNs (default: `aws.region`, else `*`).
    #[arg(long)]
    region: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// TOML config file. Without it, /etc/cafe-stream/cafe-streamd.toml when
    /// that exists, else the contract's defaults, with region, credentials
    /// and endpoints from the standard AWS environment.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let arg = match &cli.command {
        Command::Run(a) | Command::Provision(a) | Command::Config(a) => a,
        Command::Validate(a) => &a.config,
        Command::IamPolicy(a) => &a.config,
        Command::Top(a) => &a.config,
    };
    // Without --config, the file systemd uses when it exists, else the
    // contract's defaults.
    let path = config::resolve_path(arg.config.clone(), &config::default_path());
    let config = match config::load(path.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(problems) => {
            // Before any logging: under journald each line is an error (`<3>`).
            let p = if daemon::logging::stderr_is_journal() { "<3>" } else { "" };
            eprintln!("{p}invalid configuration ({} problems):", problems.0.len());
            for problem in &problems.0 {
                eprintln!("{p}{problem}");
            }
            return ExitCode::from(2);
        }
    };
    let logging = daemon::logging::init(&config.log);
    match cli.command {
        Command::Validate(a) if a.environment => {
            let problems = match daemon::block_on(daemon::environment::check(&config)) {
                Ok(problems) => problems,
                Err(e) => return exit(Err(e.into())),
            };
            if problems.0.is_empty() {
                println!("configuration is valid, and the account has what it needs");
                ExitCode::SUCCESS
            } else {
                eprintln!("the account does not match the configuration ({} problems):\n{problems}", problems.0.len());
                ExitCode::from(2)
            }
        }
        Command::Validate(_) => {
            println!("configuration is valid");
            for (field, why) in config.warnings() {
                eprintln!(
                    "warning: {}: {field}: {why}",
                    path.as_ref().map_or_else(|| "defaults".to_owned(), |p| p.display().to_string())
                );
            }
            ExitCode::SUCCESS
        }
        Command::Config(_) => {
            let from = path.as_ref().map_or_else(|| "the defaults".to_owned(), |p| p.display().to_string());
            match config.to_toml() {
                Ok(text) => {
                    println!(
                        "# cafe-streamd's configuration in force: {from}, CAFE_... overrides, defaults.\n\
                         # Secrets are printed as REDACTED: put them back before using this as a file.\n"
                    );
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: the configuration cannot be printed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Provision(_) => exit_after(provision(&config)),
        Command::Run(_) => exit_after(run(config, path, logging)),
        Command::Top(a) => {
            let addr = a.addr.clone().unwrap_or_else(|| config.admin.listen.to_string());
            exit_after(top(&addr, a.interval, a.once))
        }
        Command::IamPolicy(a) => {
            use daemon::iam::{Purpose, policy};
            let purpose = if a.provision { Purpose::Provision } else { Purpose::Run };
            let region = a.region.clone().or_else(|| config.aws.region.clone()).unwrap_or_else(|| "*".into());
            let doc = policy(&config, purpose, &region, &a.account);
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            ExitCode::SUCCESS
        }
    }
}

/// Runs `work` on a runtime ([`daemon::block_on`]); its outcome as the exit code.
fn exit_after(work: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    exit(daemon::block_on(work).map_err(anyhow::Error::from).and_then(|outcome| outcome))
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Logged once, to stderr, at ERROR (journald's priority 3); printed
        // plainly instead when the log level filters errors out, so a
        // failure is never silent.
        Err(e) => {
            if tracing::enabled!(tracing::Level::ERROR) {
                error!("{e:#}");
            } else {
                let p = if daemon::logging::stderr_is_journal() { "<3>" } else { "" };
                eprintln!("{p}error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn top(addr: &str, interval: f64, once: bool) -> anyhow::Result<()> {
    anyhow::ensure!(interval.is_finite() && interval >= 0.1, "--interval must be at least 0.1 s");
    let every = std::time::Duration::from_secs_f64(interval);
    let mut prev = daemon::top::scrape(addr).await?;
    loop {
        tokio::time::sleep(every).await;
        let cur = daemon::top::scrape(addr).await?;
        let view = daemon::top::render(&prev, &cur, interval);
        if once {
            print!("{view}");
            return Ok(());
        }
        // Clear the screen and draw again.
        print!("\x1b[2J\x1b[H{view}");
        prev = cur;
    }
}

async fn provision(config: &Config) -> anyhow::Result<()> {
    for p in daemon::provision::provision(config).await? {
        println!("{:<9} {:<28} {}", p.kind, p.name, if p.created { "created" } else { "exists" });
    }
    Ok(())
}

async fn run(config: Config, path: Option<PathBuf>, logging: daemon::logging::Logging) -> anyhow::Result<()> {
    // Taken before anything starts: a SIGTERM during start-up is a stop
    // that drains, not the default action, which ended the process with
    // its first long polls open at SQS (their messages then stayed
    // invisible for a visibility timeout).
    let shutdown = shutdown_signal()?;
    let allocator = daemon::allocator();
    info!(version = VERSION, allocator = allocator.as_str(), "Starting cafe-streamd");
    // From here SIGHUP no longer ends the process: it reloads.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot install the SIGHUP handler: {e}"))?;
    let control =
        topology::Control { reload: Some(daemon::reload::Reload { hangups, path }), logging: Some(std::sync::Arc::new(logging)) };
    match topology::run(config, shutdown, control).await? {
        Exit::Drained => Ok(()),
        Exit::GraceExceeded => anyhow::bail!("grace period exceeded before the pipeline drained"),
    }
}

/// SIGTERM or SIGINT: the handlers are installed when this is called (a
/// signal from then on is kept until the future is polled), not when the
/// future is first polled, which is once the admin endpoint listens, when
/// the start-up lookups begin.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| anyhow::anyhow!("cannot install the SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| anyhow::anyhow!("cannot install the SIGINT handler: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
    })
}
