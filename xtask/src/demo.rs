//! `cargo xtask demo`: what `kill` and `crash` look like to a real system.
//!
//! Runs setup (which installs Redis) and the build, then twice starts a Redis primary and its
//! replica on 127.0.0.1 (the integration tests' [`RedisPair`]: free ports, no persistence,
//! `--repl-timeout 5`), has fij fail the PRIMARY one second into the campaign (adopted by pid,
//! `trigger = { at = "1s" }`) — once with `kill`, once with `crash` — and polls the replica with
//! `redis-cli INFO replication` every 50 ms until it reports `master_link_status:down`, after
//! the primary's death (its `exit` record in fij's log). Prints both side by side.
//!
//! Everything it starts is killed when it ends, also on error; its temp dir is removed after a
//! successful demo, kept and named otherwise.
use std::{
    env, fs,
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use fij_common::log::Record;
use fij_tests::{
    Ended, Fij, send_signal,
    systems::{RedisPair, Sampler, elapsed_between, redis_link_status},
};

/// The replica's `--repl-timeout`.
const REPL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the replica is asked.
const POLL: Duration = Duration::from_millis(50);
/// The longest any wait of the demo may take.
const PATIENCE: Duration = Duration::from_secs(20);

pub fn run() -> Result<()> {
    crate::setup::run()?;
    crate::build(false)?;
    let fij = crate::fij_bin(false);
    let dir = DemoDir::create()?;

    println!();
    println!("=== fij demo: kill vs crash of a Redis primary, as its replica sees it ===");
    println!(
        "A Redis primary and its replica (--repl-timeout {}) on 127.0.0.1. One second into\n\
         the campaign fij fails the primary; every 50 ms the demo asks the replica\n\
         `redis-cli -p REPLICA INFO replication` until master_link_status is down.",
        REPL_TIMEOUT.as_secs()
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
         loss, the replica could only wait for its own repl-timeout ({} s, checked once a\n       \
         second).\n\
         Same death, different network: the difference your failure detector has to live with.\n\
         More: docs/real-systems.md (Redis, etcd, Open MPI), scenarios/redis-primary-*.toml.",
        REPL_TIMEOUT.as_secs()
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
    let pair = RedisPair::start(&run_dir, REPL_TIMEOUT);
    println!();
    println!(
        "--- {action}: primary on port {}, replica on port {} ---",
        pair.primary_port, pair.replica_port
    );
    println!("replica in sync: master_link_status:up");

    // The replica's link status, every 50 ms, each with the monotonic time it was answered: the
    // clock of the `ktime_ns` of fij's log.
    let replica_port = pair.replica_port;
    let replica = Sampler::start(POLL, PATIENCE * 2, move || redis_link_status(replica_port));

    let primary = pair.primary.pid();
    let scenario = run_dir.join("scenario.toml");
    fs::write(
        &scenario,
        format!(
            "seed = 1\nduration = \"20s\"\n\n[[target]]\nname = \"primary\"\npid = {primary}\n\n\
             [[fault]]\nname = \"{action}-the-primary\"\ntarget = \"primary\"\n\
             action = \"{action}\"\ntrigger = {{ at = \"1s\" }}\n"
        ),
    )?;
    let run = Fij::run_logging_to(&scenario, run_dir.join("fij.jsonl")).bin(fij);
    println!("+ {}", crate::cmd::display(&run.command()));
    let mut run = run.spawn();

    // The primary's death, as the kernel timed it.
    let exit = run.wait_for_typed_record(
        "the primary's exit",
        PATIENCE,
        |r| matches!(r, Record::Exit { pid, .. } if *pid == primary),
    );
    let Record::Exit { ktime_ns: died, .. } = exit else {
        unreachable!("the record waited for is an exit")
    };
    replica.wait_for(
        PATIENCE,
        "the replica to report master_link_status:down",
        |samples| {
            samples
                .iter()
                .any(|(t, s)| *t > died && s.as_deref() == Some("down"))
        },
    );
    let samples = replica.stop();

    // A crash campaign keeps the primary's sockets silent until it ends: end it now.
    if run.running() {
        send_signal(run.pid(), libc::SIGINT);
    }
    let out = run.finish();
    if out.ended != Ended::Code(0) {
        bail!("fij failed:\n{out}");
    }
    if let Some(injection) = out.log.first("injection") {
        println!("fij log: {}", injection.to_line());
    }
    let silenced = out
        .log
        .typed()
        .filter(|r| matches!(r, Record::Silenced { .. }))
        .count();
    let down = samples
        .iter()
        .position(|(t, s)| *t > died && s.as_deref() == Some("down"))
        .context("no down sample after the primary died")?;
    let last_up = samples[..down]
        .iter()
        .rev()
        .find(|(t, s)| *t > died && s.as_deref() == Some("up"))
        .map(|(t, _)| elapsed_between(died, *t));
    let replica_log = pair.replica.log_text();
    let reason = if replica_log.contains("MASTER timeout") {
        "\"MASTER timeout: no data nor PING\""
    } else if replica_log.contains("Connection with master lost") {
        "\"Connection with master lost\""
    } else {
        "(nothing about the master)"
    }
    .to_string();
    let seen = Seen {
        down_after: elapsed_between(died, samples[down].0),
        last_up,
        reason,
        silenced,
    };
    println!(
        "replica: master_link_status:down {} after the primary died (last seen up: {})",
        secs(seen.down_after),
        seen.last_up.map_or("never after".into(), secs)
    );
    Ok(seen)
}

/// One line of the side-by-side table.
fn row(label: &str, kill: &str, crash: &str) {
    println!("{label:<38} {kill:<30} {crash}");
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
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
