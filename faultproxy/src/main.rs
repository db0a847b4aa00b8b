//! `cafe-faultproxy`: runs named [`faultproxy::Proxy`]s and their control API until
//! SIGTERM or SIGINT.
//!
//! At start it prints one JSON line per bound address on stdout, so a script that asked
//! for port 0 can read what it got; logs go to stderr to keep stdout machine-readable.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use faultproxy::Proxy;
use faultproxy::control::serve_control;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// Fault-injecting proxy for AWS endpoints, for tests and chaos scenarios.
#[derive(Parser, Debug)]
#[command(name = "cafe-faultproxy")]
struct Args {
    /// NAME=LISTEN=UPSTREAM, e.g. dynamodb=127.0.0.1:4600=http://127.0.0.1:4566 (port 0 picks one). Repeatable.
    #[arg(long = "proxy", value_parser = parse_proxy, required = true)]
    proxies: Vec<ProxySpec>,
    /// Address of the control API; keep it on loopback, it has no authentication.
    #[arg(long, default_value = "127.0.0.1:4610")]
    control: SocketAddr,
}

#[derive(Clone, Debug)]
struct ProxySpec {
    name: String,
    listen: SocketAddr,
    upstream: String,
}

fn parse_proxy(spec: &str) -> Result<ProxySpec, String> {
    let mut parts = spec.splitn(3, '=');
    let (Some(name), Some(listen), Some(upstream)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{spec:?} is not NAME=LISTEN=UPSTREAM"));
    };
    if name.is_empty() || name.contains('/') {
        return Err(format!("proxy name {name:?} must be non-empty and without '/'"));
    }
    let listen = listen.parse().map_err(|e| format!("listen address {listen:?}: {e}"))?;
    Ok(ProxySpec { name: name.to_owned(), listen, upstream: upstream.to_owned() })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cafe-faultproxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut proxies = BTreeMap::new();
    for spec in args.proxies {
        if proxies.contains_key(&spec.name) {
            bail!("proxy {:?} is given twice", spec.name);
        }
        let proxy = Proxy::start(spec.listen, &spec.upstream)
            .await
            .with_context(|| format!("cannot start proxy {} on {}", spec.name, spec.listen))?;
        println!("{}", json!({ "name": spec.name, "listen": proxy.addr(), "upstream": proxy.upstream() }));
        proxies.insert(spec.name, proxy);
    }
    let listener =
        TcpListener::bind(args.control).await.with_context(|| format!("cannot bind control API on {}", args.control))?;
    println!("{}", json!({ "control": listener.local_addr()? }));
    tokio::select! {
        () = serve_control(listener, Arc::new(proxies)) => {}
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("Shutting down");
    Ok(())
}
