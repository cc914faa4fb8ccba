//! `cargo xtask demo`: what `kill` and `crash` look like to a real system.
//!
//! Runs setup (which installs Redis) and the build, then twice starts a Redis primary and its
//! replica on 127.0.0.1 (free ports, no persistence, `--repl-timeout 5`), has fij fail the
//! PRIMARY one second into the campaign (adopted by pid, `trigger = { at = "1s" }`) — once with
//! `kill`, once with `crash` — and polls the replica with `redis-cli INFO replication` every
//! 50 ms until it reports `master_link_status:down`. Prints both side by side.
//!
//! Self-contained (std and anyhow only): everything it starts is killed, and its temp dir removed,
//! when it ends, also on error.
use std::{
    env, fs,
    io::Write,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The replica's `--repl-timeout`, in seconds.
const REPL_TIMEOUT_S: u64 = 5;
/// How often the replica is asked.
const POLL: Duration = Duration::from_millis(50);
/// The longest any wait of the demo may take.
const PATIENCE: Duration = Duration::from_secs(20);

pub fn run() -> Result<()> {
    crate::setup::run()?;
    crate::build(false)?;
    let fij = crate::fij_bin(false);
    for tool in ["redis-server", "redis-cli"] {
        if !on_path(tool) {
            bail!(
                "`{tool}` is not on PATH even after setup (Debian packages redis-server, redis-tools)"
            );
        }
    }
    let dir = DemoDir::create()?;

    println!();
    println!("=== fij demo: kill vs crash of a Redis primary, as its replica sees it ===");
    println!(
        "A Redis primary and its replica (--repl-timeout {REPL_TIMEOUT_S}) on 127.0.0.1. One second into\n\
         the campaign fij fails the primary; every 50 ms the demo asks the replica\n\
         `redis-cli -p REPLICA INFO replication` until master_link_status is down."
    );
    let kill = contrast(&fij, &dir.path, "kill")?;
    let crash = contrast(&fij, &dir.path, "crash")?;

    println!();
    row("", "kill", "crash");
    row(
        "replica's master_link_status:down",
        &format!("{} after the primary died", secs(kill.down_after)),
        &format!("{} after the primary died", secs(crash.down_after)),
    );
    let last_up = |seen: &Seen| seen.last_up.map_or("-".into(), secs);
    row("link last seen up", &last_up(&kill), &last_up(&crash));
    row("the replica's log says", &kill.reason, &crash.reason);
    row(
        "sockets fij silenced",
        &kill.silenced.to_string(),
        &crash.silenced.to_string(),
    );
    println!();
    println!(
        "kill:  the kernel closed the dead primary's sockets; the replica read EOF on its\n       \
         replication link and knew at once.\n\
         crash: fij SIGKILLed the primary too, but first marked it crashed: its sockets went\n       \
         silent (no FIN, no RST; the replica's ACKs and reconnects vanish). Like after a power\n       \
         loss, the replica could only wait for its own repl-timeout ({REPL_TIMEOUT_S} s, checked once a\n       \
         second).\n\
         Same death, different network: the difference your failure detector has to live with.\n\
         More: docs/real-systems.md (Redis, etcd, Open MPI), scenarios/redis-primary-*.toml."
    );
    dir.remove();
    Ok(())
}

/// What the replica saw in one run.
struct Seen {
    down_after: Duration,
    last_up: Option<Duration>,
    reason: String,
    silenced: usize,
}

fn contrast(fij: &Path, dir: &Path, action: &str) -> Result<Seen> {
    let run_dir = dir.join(action);
    fs::create_dir_all(&run_dir)?;
    let (primary_port, replica_port) = free_ports()?;
    println!();
    println!("--- {action}: primary on port {primary_port}, replica on port {replica_port} ---");

    let primary = Proc::spawn(
        redis(primary_port, &run_dir, &[]),
        &run_dir.join("primary.log"),
    )?;
    wait("the primary to answer PING", || {
        Ok(redis_cli(primary_port, &["PING"])?.is_some_and(|out| out.trim() == "PONG"))
    })?;
    let replicaof = [
        "--replicaof".to_string(),
        "127.0.0.1".into(),
        primary_port.to_string(),
    ];
    let replica = Proc::spawn(
        redis(replica_port, &run_dir, &replicaof),
        &run_dir.join("replica.log"),
    )?;
    wait("the replica's link to the primary", || {
        Ok(link_status(replica_port)?.as_deref() == Some("up"))
    })?;
    println!("replica in sync: master_link_status:up");

    // The primary's death, timed by a thread that reaps it as soon as it dies.
    let died: Arc<Mutex<Option<Instant>>> = Arc::default();
    let watcher = {
        let (died, primary) = (died.clone(), primary.child.clone());
        thread::spawn(move || {
            let give_up = Instant::now() + PATIENCE * 2;
            while Instant::now() < give_up {
                if let Ok(Some(_)) = primary.lock().unwrap().try_wait() {
                    *died.lock().unwrap() = Some(Instant::now());
                    return;
                }
                thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let scenario = run_dir.join("scenario.toml");
    fs::write(
        &scenario,
        format!(
            "seed = 1\nduration = \"20s\"\n\n[[target]]\nname = \"primary\"\npid = {}\n\n\
             [[fault]]\nname = \"{action}-the-primary\"\ntarget = \"primary\"\n\
             action = \"{action}\"\ntrigger = {{ at = \"1s\" }}\n",
            primary.pid
        ),
    )?;
    let log = run_dir.join("fij.jsonl");
    let mut run = Command::new(fij);
    run.args(["run"])
        .arg(&scenario)
        .arg("--log")
        .arg(&log)
        .env("NO_COLOR", "1");
    println!("+ {}", crate::cmd::display(&run));
    let fij_out = run_dir.join("fij.out");
    let mut fij_proc = Proc::spawn(run, &fij_out)?;

    // Poll the replica until it reports the link down.
    let mut samples: Vec<(Instant, Option<String>)> = Vec::new();
    let give_up = Instant::now() + PATIENCE;
    let down_at = loop {
        let status = link_status(replica_port)?;
        let now = Instant::now();
        let down = status.as_deref() == Some("down") && died.lock().unwrap().is_some();
        samples.push((now, status));
        if down {
            break now;
        }
        if Instant::now() > give_up {
            bail!(
                "the replica did not report the link down within {PATIENCE:?}; fij said:\n{}",
                fs::read_to_string(&fij_out).unwrap_or_default()
            );
        }
        if let Some(status) = fij_proc.child.lock().unwrap().try_wait()?
            && !status.success()
        {
            bail!(
                "fij failed ({status}):\n{}",
                fs::read_to_string(&fij_out).unwrap_or_default()
            );
        }
        thread::sleep(POLL);
    };
    let _ = watcher.join();
    let died = died
        .lock()
        .unwrap()
        .context("the primary's death was not seen")?;

    // A crash campaign keeps the primary's sockets silent until it ends: end it now.
    fij_proc.interrupt_and_wait(Duration::from_secs(10))?;
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    if let Some(injection) = log_text
        .lines()
        .find(|l| l.contains("\"event\":\"injection\""))
    {
        println!("fij log: {injection}");
    }
    let silenced = log_text
        .lines()
        .filter(|l| l.contains("\"event\":\"silenced\""))
        .count();
    let last_up = samples
        .iter()
        .rev()
        .find(|(t, s)| *t > died && s.as_deref() == Some("up"))
        .map(|(t, _)| t.duration_since(died));
    let replica_log = replica.log_text();
    let reason = if replica_log.contains("MASTER timeout") {
        "\"MASTER timeout: no data nor PING\""
    } else if replica_log.contains("Connection with master lost") {
        "\"Connection with master lost\""
    } else {
        "(nothing about the master)"
    }
    .to_string();
    let seen = Seen {
        down_after: down_at.duration_since(died),
        last_up,
        reason,
        silenced,
    };
    println!(
        "replica: master_link_status:down {} after the primary died (last seen up: {})",
        secs(seen.down_after),
        seen.last_up.map_or("never after".into(), secs)
    );
    drop(replica);
    drop(primary);
    Ok(seen)
}

/// `redis-server` without persistence on 127.0.0.1:`port`, the primary pinging every second.
fn redis(port: u16, dir: &Path, extra: &[String]) -> Command {
    let mut c = Command::new("redis-server");
    c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .args(["--repl-ping-replica-period", "1"])
        .args(["--repl-timeout", &REPL_TIMEOUT_S.to_string()])
        .args([
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ])
        .args(["--repl-diskless-load", "on-empty-db"])
        .args(extra);
    c
}

/// `redis-cli -h 127.0.0.1 -p PORT ARGS`: its stdout, or None if it failed.
fn redis_cli(port: u16, args: &[&str]) -> Result<Option<String>> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("cannot run redis-cli")?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The replica's `master_link_status`.
fn link_status(port: u16) -> Result<Option<String>> {
    Ok(redis_cli(port, &["INFO", "replication"])?.and_then(|info| {
        info.lines()
            .find_map(|l| l.trim_end().strip_prefix("master_link_status:"))
            .map(str::to_owned)
    }))
}

/// Two ports of 127.0.0.1 that were free a moment ago.
fn free_ports() -> Result<(u16, u16)> {
    let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let b = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

fn wait(what: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let give_up = Instant::now() + PATIENCE;
    while !ready()? {
        if Instant::now() > give_up {
            bail!("timed out after {PATIENCE:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    env::split_paths(&env::var_os("PATH").unwrap_or_default()).any(|d| d.join(program).is_file())
}

/// One line of the side-by-side table.
fn row(label: &str, kill: &str, crash: &str) {
    println!("{label:<38} {kill:<30} {crash}");
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// A process the demo started, its output in a file; SIGKILLed and reaped when dropped.
struct Proc {
    child: Arc<Mutex<Child>>,
    pid: u32,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut command: Command, log: &Path) -> Result<Self> {
        let file = fs::File::create(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", crate::cmd::display(&command)))?;
        Ok(Proc {
            pid: child.id(),
            child: Arc::new(Mutex::new(child)),
            log: log.to_path_buf(),
        })
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGINT (through `kill`, std has no signal API), then waits at most `timeout` for it to
    /// exit successfully.
    fn interrupt_and_wait(&mut self, timeout: Duration) -> Result<()> {
        if self.child.lock().unwrap().try_wait()?.is_none() {
            Command::new("kill")
                .args(["-INT", &self.pid.to_string()])
                .status()
                .context("cannot run kill")?;
        }
        let give_up = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.lock().unwrap().try_wait()? {
                if !status.success() {
                    bail!("fij failed ({status}):\n{}", self.log_text());
                }
                return Ok(());
            }
            if Instant::now() > give_up {
                bail!(
                    "fij did not end within {timeout:?} of SIGINT:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The demo's temp dir: removed at the end of a successful demo, kept (and named) after an error.
struct DemoDir {
    path: PathBuf,
    keep: bool,
}

impl DemoDir {
    fn create() -> Result<Self> {
        let path = env::temp_dir().join(format!("fij-demo-{}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(DemoDir { path, keep: true })
    }

    fn remove(mut self) {
        self.keep = false;
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        if self.keep {
            let _ = writeln!(
                std::io::stderr(),
                "the demo's files (scenarios, fij's logs, Redis's logs) are in {}",
                self.path.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
