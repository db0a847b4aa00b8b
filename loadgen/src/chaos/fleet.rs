//! The daemon instances a chaos run owns: started with `--daemon-command`,
//! each with its own admin port and worker id, their AWS endpoints pointed
//! at the run's fault proxies; killed, terminated and started again on the
//! profile's schedule.
//!
//! Owns: the instances' processes and logs, and reading the lease table to
//! tell which instance holds which shard (to pick whom to kill and to time
//! a failover). Must not: decide when anything happens (the run does).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::process::{Child, Command};
use tracing::{info, warn};

/// One instance slot: the process now running in it, if any.
struct Instance {
    admin: String,
    worker_id: String,
    pid: u32,
    child: Option<Child>,
    generation: u32,
}

/// How the instances are started.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Shell command of one instance (run as `sh -c 'exec COMMAND'`, so the
    /// process signalled is the daemon).
    pub command: String,
    /// Added to every instance's environment (the proxies' endpoints).
    pub env: Vec<(String, String)>,
    /// Where the instances' logs go.
    pub log_dir: PathBuf,
    /// The lease table (to see who holds which shard).
    pub lease_table: String,
    /// A prefix of the worker ids, unique to the run.
    pub run_id: String,
}

/// What one kill did.
#[derive(Debug, Clone, Serialize)]
pub struct Killed {
    /// Which slot.
    pub instance: usize,
    /// The process killed with SIGKILL.
    pub pid: u32,
    /// Its worker id in the lease table.
    pub worker_id: String,
    /// The leases it held when killed.
    pub leases: Vec<String>,
    /// When.
    #[serde(serialize_with = "rfc3339")]
    pub at: OffsetDateTime,
    /// From the kill until every lease it held was held by another worker
    /// (None: it held none, or they had not moved when the run gave up).
    pub failover_secs: Option<f64>,
    /// The process that replaced it.
    pub restarted_pid: Option<u32>,
}

/// What one SIGTERM did.
#[derive(Debug, Clone, Serialize)]
pub struct Terminated {
    /// Which slot.
    pub instance: usize,
    /// The process.
    pub pid: u32,
    /// Its exit code (None: killed by a signal, or it never exited).
    pub exit_code: Option<i32>,
    /// From SIGTERM to exit.
    pub drain_secs: f64,
    /// The process that replaced it, if it was started again.
    pub restarted_pid: Option<u32>,
}

/// Reads the lease table: who holds which shard.
#[derive(Debug, Clone)]
pub struct LeaseWatch {
    ddb: aws_sdk_dynamodb::Client,
    table: String,
}

impl LeaseWatch {
    /// Lease key -> owner, as the table says now.
    pub async fn owners(&self) -> anyhow::Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        let mut start = None;
        loop {
            let resp = self
                .ddb
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("scanning {}: {e}", self.table))?;
            for item in resp.items() {
                let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
                if let (Some(key), Some(owner)) = (text("leaseKey"), text("leaseOwner")) {
                    out.insert(key, owner);
                }
            }
            match resp.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// Waits until every lease `killed` held is held by another worker (any
    /// other instance, or its own restart, which is a new worker: either
    /// way the shards are read again), up to `within`; the time since the kill.
    pub async fn failover(&self, killed: &Killed, within: Duration) -> Option<f64> {
        if killed.leases.is_empty() {
            return None;
        }
        let deadline = Instant::now() + within;
        loop {
            if let Ok(owners) = self.owners().await
                && killed.leases.iter().all(|l| owners.get(l).is_some_and(|o| *o != killed.worker_id))
            {
                return Some((OffsetDateTime::now_utc() - killed.at).as_seconds_f64());
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The run's instances.
pub struct Fleet {
    launch: Launch,
    leases: LeaseWatch,
    http: reqwest::Client,
    instances: Vec<Instance>,
    last_killed: Option<usize>,
}

/// Sends `signal` to the process group `pid` leads (each instance's).
async fn signal_group(signal: &str, pid: u32) {
    if pid > 0 {
        let _ = Command::new("kill").arg(format!("-{signal}")).arg("--").arg(format!("-{pid}")).status().await;
    }
}

fn rfc3339<S: serde::Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    let text = t.format(&time::format_description::well_known::Rfc3339).map_err(serde::ser::Error::custom)?;
    s.serialize_str(&text)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Fleet {
    /// Starts `n` instances and waits until each is ready.
    pub async fn start(n: usize, launch: Launch, ddb: aws_sdk_dynamodb::Client) -> anyhow::Result<Fleet> {
        std::fs::create_dir_all(&launch.log_dir)?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let leases = LeaseWatch { ddb, table: launch.lease_table.clone() };
        let mut fleet = Fleet { launch, leases, http, instances: Vec::new(), last_killed: None };
        for k in 0..n {
            let admin = format!("127.0.0.1:{}", free_port()?);
            fleet.instances.push(Instance { admin, worker_id: String::new(), pid: 0, child: None, generation: 0 });
            fleet.spawn(k)?;
        }
        for k in 0..n {
            fleet.wait_ready(k).await?;
        }
        Ok(fleet)
    }

    /// How many slots.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    fn spawn(&mut self, k: usize) -> anyhow::Result<()> {
        let launch = &self.launch;
        let slot = &mut self.instances[k];
        slot.generation += 1;
        slot.worker_id = format!("chaos-{}-i{k}-g{}", launch.run_id, slot.generation);
        let log_path = launch.log_dir.join(format!("instance-{k}.log"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        // Its own process group: a signal reaches the daemon even when the
        // command is not a single exec (a wrapper, a `cargo run`).
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {}", launch.command))
            .process_group(0)
            .envs(launch.env.iter().cloned())
            .env("CAFE_ADMIN__LISTEN", &slot.admin)
            .env("CAFE_SOURCES__ORDERS__WORKER_ID", &slot.worker_id)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting instance {k}: sh -c 'exec {}'", launch.command))?;
        slot.pid = child.id().unwrap_or(0);
        slot.child = Some(child);
        info!(instance = k, pid = slot.pid, worker_id = %slot.worker_id, log = %log_path.display(), "Instance started");
        Ok(())
    }

    async fn wait_ready(&mut self, k: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://{}/readyz", self.instances[k].admin);
        loop {
            if let Some(child) = self.instances[k].child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("instance {k} exited before it was ready ({status}); see {}", self.log_path(k).display());
            }
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("instance {k} was not ready within 60 s; see {}", self.log_path(k).display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_path(&self, k: usize) -> PathBuf {
        self.launch.log_dir.join(format!("instance-{k}.log"))
    }

    /// The lease table's reader.
    pub fn leases(&self) -> LeaseWatch {
        self.leases.clone()
    }

    /// The running instance holding the most leases; on a tie, the first
    /// one after the last killed.
    fn busiest(&self, owners: &HashMap<String, String>) -> usize {
        let n = self.instances.len();
        let first = self.last_killed.map_or(0, |k| (k + 1) % n);
        let held = |k: usize| owners.values().filter(|o| **o == self.instances[k].worker_id).count();
        (0..n)
            .map(|i| (first + i) % n)
            .filter(|&k| self.instances[k].child.is_some())
            .max_by_key(|&k| (held(k), n - (k + n - first) % n))
            .unwrap_or(first)
    }

    /// `kill -9` of the busiest instance's process group; waits until the
    /// process is gone.
    pub async fn kill_one(&mut self) -> anyhow::Result<Killed> {
        let owners = self.leases.owners().await?;
        let k = self.busiest(&owners);
        self.last_killed = Some(k);
        let slot = &mut self.instances[k];
        let mut leases: Vec<String> = owners.into_iter().filter(|(_, o)| *o == slot.worker_id).map(|(key, _)| key).collect();
        leases.sort();
        let mut child = slot.child.take().context("instance not running")?;
        let at = OffsetDateTime::now_utc();
        signal_group("KILL", slot.pid).await;
        child.start_kill()?;
        let _ = child.wait().await?;
        warn!(instance = k, pid = slot.pid, leases = leases.len(), "Instance killed with SIGKILL");
        Ok(Killed {
            instance: k,
            pid: slot.pid,
            worker_id: slot.worker_id.clone(),
            leases,
            at,
            failover_secs: None,
            restarted_pid: None,
        })
    }

    /// Starts slot `k` again and waits until it is ready; its new pid.
    pub async fn restart(&mut self, k: usize) -> anyhow::Result<u32> {
        self.spawn(k)?;
        self.wait_ready(k).await?;
        Ok(self.instances[k].pid)
    }

    /// SIGTERM to slot `k`; waits up to `within` for it to exit (then kills it).
    pub async fn terminate(&mut self, k: usize, within: Duration) -> anyhow::Result<Terminated> {
        let slot = &mut self.instances[k];
        let mut child = slot.child.take().context("instance not running")?;
        let started = Instant::now();
        signal_group("TERM", slot.pid).await;
        let exit: Option<ExitStatus> = match tokio::time::timeout(within, child.wait()).await {
            Ok(s) => Some(s?),
            Err(_) => {
                warn!(instance = k, pid = slot.pid, "Instance ignored SIGTERM; killing it");
                signal_group("KILL", slot.pid).await;
                child.start_kill()?;
                let _ = child.wait().await;
                None
            }
        };
        Ok(Terminated {
            instance: k,
            pid: slot.pid,
            exit_code: exit.and_then(|s| s.code()),
            drain_secs: started.elapsed().as_secs_f64(),
            restarted_pid: None,
        })
    }

    /// SIGTERM to every running instance, at once; what each did.
    pub async fn stop_all(&mut self, within: Duration) -> Vec<Terminated> {
        let running: Vec<usize> = (0..self.instances.len()).filter(|&k| self.instances[k].child.is_some()).collect();
        for &k in &running {
            signal_group("TERM", self.instances[k].pid).await;
        }
        let started = Instant::now();
        let mut out = Vec::new();
        for k in running {
            let slot = &mut self.instances[k];
            let Some(mut child) = slot.child.take() else { continue };
            let left = within.saturating_sub(started.elapsed());
            let exit = match tokio::time::timeout(left, child.wait()).await {
                Ok(Ok(s)) => Some(s),
                _ => {
                    signal_group("KILL", slot.pid).await;
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    None
                }
            };
            out.push(Terminated {
                instance: k,
                pid: slot.pid,
                exit_code: exit.and_then(|s| s.code()),
                drain_secs: started.elapsed().as_secs_f64(),
                restarted_pid: None,
            });
        }
        out
    }
}
