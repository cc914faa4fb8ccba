//! `fij run --backend stap`: the same campaign through stap's BPF runtime. The script is the one
//! `fij stap --runtime bpf` prints; fij spawns the targets at their gate (as the eBPF backend
//! does), compiles the script with their pids (`-G fij_root_T_I=PID`: stapbpf takes no globals
//! of its own), runs it under `stapbpf`, releases the targets once the script says `armed`
//! (its probes are attached), and turns every line it prints into the log's records, so that a
//! stap run's log compares line by line with an eBPF run's.
use std::{collections::HashSet, path::PathBuf, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use fij_common::{
    SIGNAL_REFUSED,
    log::monotonic_ns,
    random::{hit_draw, key_from_seed},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep, timeout},
};
use tracing::{info, warn};

use super::{
    bpf_runtime::Toolchain,
    output::{self, Line},
};
use crate::{
    InvalidInput,
    campaign::{Report, RunOptions},
    compile::CompiledCampaign,
    guardian::Guardian,
    log::{EndReason, EventLog, Record, TargetRecord},
    report::Summary,
    scenario::{Scenario, TargetSource, Trigger},
    signals, status, targets,
    targets::GatedChild,
};

/// How long stapbpf may take to load and attach a compiled script.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long stapbpf gets to run `probe end` and detach after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Spawned targets still running when the campaign ends early: SIGTERM, then SIGKILL after this.
const TERMINATE_GRACE: Duration = Duration::from_secs(2);

/// A directory of fij's own for the script and stap's output, removed when dropped, and by the
/// guardian if fij dies (SIGKILL) before that.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "{}stap-{}-{}",
            crate::guardian::WORK_DIR_PREFIX,
            std::process::id(),
            monotonic_ns()
        ));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running `stapbpf`: stopped with SIGINT (it runs `probe end`, detaches and exits) when
/// dropped, never with SIGKILL, which would leave its uprobe events behind.
struct Stapbpf {
    child: tokio::process::Child,
    stderr: tokio::process::ChildStderr,
}

impl Stapbpf {
    fn interrupt(&self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
        }
    }

    /// Its stderr so far (why it failed).
    async fn stderr(&mut self) -> String {
        let mut text = String::new();
        let _ = timeout(
            Duration::from_secs(1),
            self.stderr.read_to_string(&mut text),
        )
        .await;
        text.trim_end().to_string()
    }
}

impl Drop for Stapbpf {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.interrupt();
        }
    }
}

/// One instance's root process.
struct Root {
    target_idx: usize,
    instance: u32,
    pid: u32,
    spawned: bool,
}

/// Runs the campaign's BPF-runtime script through stapbpf to the campaign's end. What the
/// runtime cannot express has been refused (`stap::generate`, exit 2) before.
pub async fn run(
    scenario: &Scenario,
    compiled: &CompiledCampaign,
    opts: &RunOptions,
) -> Result<Report> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(anyhow!(
            "fij run --backend stap needs root: stapbpf loads BPF programs and the script signals processes (try sudo)"
        ));
    }
    let toolchain = Toolchain::find().map_err(|e| InvalidInput(format!("{e:#}")))?;
    let mut protected = targets::self_and_ancestors();
    // What about the targets can only be known on the machine, before anything is started.
    for target in &scenario.targets {
        let invalid = |e: anyhow::Error| InvalidInput(format!("target `{}`: {e:#}", target.name));
        match &target.source {
            TargetSource::Command { argv, cwd, .. } => {
                targets::resolve_program(&argv[0], cwd.as_deref()).map_err(invalid)?;
            }
            TargetSource::Pid(pid) => {
                targets::check_adoptable(*pid, &protected).map_err(invalid)?
            }
            TargetSource::Selector(_) => {}
        }
    }
    let faults = scenario
        .faults
        .iter()
        .map(|f| (f.name.as_str(), f.trigger.describe()));
    let mut log = EventLog::create(
        opts.log.as_deref(),
        Summary::with_faults(faults),
        opts.keep_records,
    )?;
    // Started before anything is made: a SIGKILLed fij leaves its work directory to the
    // guardian (stap and stapbpf get SIGTERM with fij's death and detach themselves; spawned
    // targets die with fij).
    let mut guardian = opts.guardian.then(Guardian::start).transpose()?;
    if let Some(guardian) = &guardian {
        protected.push(guardian.pid());
    }
    let dir = WorkDir::create()?;
    if let Some(guardian) = &mut guardian {
        guardian.remove_on_death(&dir.0)?;
    }
    let script_path = dir.0.join("campaign.stp");

    // The targets wait at their gate through stap's compile: their pids go into the script.
    let mut roots = Vec::new();
    let mut gated = Vec::new();
    for (target_idx, target) in scenario.targets.iter().enumerate() {
        match &target.source {
            TargetSource::Command {
                argv,
                cwd,
                env,
                instances,
                user,
                group,
            } => {
                let program = targets::resolve_program(&argv[0], cwd.as_deref())?;
                for instance in 0..*instances {
                    let child = GatedChild::spawn(
                        &program,
                        argv,
                        cwd.as_deref(),
                        env,
                        (*user, *group),
                        &[],
                    )
                    .with_context(|| format!("target `{}`", target.name))?;
                    roots.push(Root {
                        target_idx,
                        instance,
                        pid: child.pid,
                        spawned: true,
                    });
                    gated.push((child, target_idx, instance));
                }
            }
            TargetSource::Pid(pid) => roots.push(Root {
                target_idx,
                instance: 0,
                pid: *pid,
                spawned: false,
            }),
            TargetSource::Selector(_) => {}
        }
    }

    let known: Vec<(usize, u32, u32)> = roots
        .iter()
        .filter(|r| r.spawned)
        .map(|r| (r.target_idx, r.instance, r.pid))
        .collect();
    let script = super::generate_with_roots(scenario, compiled, super::Runtime::Bpf, &known)
        .map_err(|refused| InvalidInput(refused.to_string()))?;
    std::fs::write(&script_path, script).context("writing the script")?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    info!(release = %toolchain.headers_release, "stap: compiling the script (passes 1-4)");
    let compiling = {
        let (toolchain, script_path, dir) = (toolchain.clone(), script_path.clone(), dir.0.clone());
        tokio::task::spawn_blocking(move || toolchain.compile(&script_path, &dir))
    };
    let (bo, compile_time) = tokio::select! {
        done = compiling => done.context("stap's compile")??,
        _ = sigint.recv() => bail!("interrupted while stap compiled the script"),
        _ = sigterm.recv() => bail!("interrupted while stap compiled the script"),
    };
    info!(seconds = compile_time.as_secs_f64(), "stap: compiled");

    let load_started = Instant::now();
    let mut command = toolchain.stapbpf(&bo)?;
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", toolchain.stapbpf.display()))?;
    let stdout = child.stdout.take().context("stapbpf's stdout")?;
    let stderr = child.stderr.take().context("stapbpf's stderr")?;
    let mut stapbpf = Stapbpf { child, stderr };
    let mut lines = BufReader::new(stdout).lines();

    // Released only once the probes are live: the script prints `armed` from `probe begin`,
    // which stapbpf runs after attaching every probe.
    let armed_ktime = loop {
        let line = tokio::select! {
            line = timeout(LOAD_TIMEOUT, lines.next_line()) => line,
            _ = sigint.recv() => bail!("interrupted while stapbpf loaded the script"),
            _ = sigterm.recv() => bail!("interrupted while stapbpf loaded the script"),
        };
        match line {
            Err(_) => bail!("stapbpf did not arm the script within {LOAD_TIMEOUT:?}"),
            Ok(Ok(Some(line))) => match output::parse(&line) {
                Some(Ok(Line::Armed { ktime_ns })) => break ktime_ns,
                Some(Ok(other)) => warn!("stap: {other:?} before `armed`"),
                Some(Err(e)) => return Err(e),
                None => info!("stapbpf: {line}"),
            },
            Ok(_) => {
                let status = stapbpf.child.wait().await?;
                bail!(
                    "stapbpf ended before arming the script ({status}):\n{}",
                    stapbpf.stderr().await
                );
            }
        }
    };
    let load_time = load_started.elapsed();
    for (mut child, target_idx, instance) in gated {
        let name = &scenario.targets[target_idx].name;
        child
            .release()
            .with_context(|| format!("target `{name}`"))?;
        info!(target = %name, instance, pid = child.pid, "spawned");
    }
    let scenario_path =
        std::fs::canonicalize(&scenario.path).unwrap_or_else(|_| scenario.path.clone());
    log.write(&Record::Start {
        // One machine: the stap backend has no `--node` (docs/multi-node.md).
        node: None,
        clock: None,
        seed: compiled.seed,
        scenario: scenario_path.display().to_string(),
        start_ktime_ns: armed_ktime,
        targets: roots
            .iter()
            .map(|r| TargetRecord {
                name: scenario.targets[r.target_idx].name.clone(),
                instance: r.instance,
                pid: r.pid,
                spawned: r.spawned,
            })
            .collect(),
    })?;
    info!(
        seed = compiled.seed,
        compile_s = compile_time.as_secs_f64(),
        load_s = load_time.as_secs_f64(),
        "campaign armed (stap)"
    );
    if let Some(armed) = &opts.armed {
        let _ = armed.send(());
    }
    if opts.status_line {
        status::start();
    }

    let mut campaign = StapCampaign {
        scenario,
        compiled,
        start_ns: armed_ktime,
        log,
        live: roots.iter().map(|r| r.pid).collect(),
        roots: &roots,
        injections: 0,
        failed_injections: 0,
        exits: 0,
        reason: None,
    };
    let selector_targets = scenario
        .targets
        .iter()
        .any(|t| matches!(t.source, TargetSource::Selector(_)));
    // A backstop for the script's own `duration` timer.
    let deadline = scenario
        .duration
        .map(|d| Instant::now() + d + Duration::from_secs(5));
    let mut stop = opts.stop.clone();
    let mut stopping = false;
    let mut stop_deadline = None;
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => {
                    if let Some(ended) = campaign.line(&line)? && ended {
                        break;
                    }
                }
                None => break, // stapbpf has exited
            },
            _ = sigint.recv() => campaign.end_for(EndReason::Interrupted),
            _ = sigterm.recv() => campaign.end_for(EndReason::Interrupted),
            Ok(()) = async { stop.as_mut().expect("guarded").wait_for(|s| *s).await.map(|_| ()) }, if stop.is_some() => {
                stop = None;
                campaign.end_for(EndReason::Interrupted);
            }
            _ = sleep(Duration::from_millis(100)) => campaign.reap(),
        }
        if campaign.live.is_empty() && !selector_targets {
            campaign.end_for(EndReason::TargetsExited);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            campaign.end_for(EndReason::Duration);
        }
        status::update(
            Instant::now() - load_started,
            scenario.duration,
            campaign.injections,
            campaign.live.len(),
        );
        if campaign.reason.is_some() && !stopping {
            stopping = true;
            stapbpf.interrupt();
            stop_deadline = Some(Instant::now() + STOP_TIMEOUT);
        }
        if stop_deadline.is_some_and(|d| Instant::now() >= d) {
            warn!("stapbpf did not end within {STOP_TIMEOUT:?} of SIGINT");
            break;
        }
    }
    let status = match timeout(STOP_TIMEOUT, stapbpf.child.wait()).await {
        Ok(status) => Some(status?),
        Err(_) => None,
    };
    match status {
        Some(status) if status.success() => {}
        Some(status) => warn!("stapbpf: {status}: {}", stapbpf.stderr().await),
        None => warn!("stapbpf still running after SIGINT"),
    }
    let reason = campaign.reason.unwrap_or(EndReason::Interrupted);
    if reason != EndReason::TargetsExited {
        terminate_spawned(&campaign.live, &roots, &protected).await;
    }
    campaign.reap();
    let end = Record::End {
        t_ns: monotonic_ns().saturating_sub(campaign.start_ns),
        reason,
        injections: campaign.injections,
        failed_injections: campaign.failed_injections,
        exits: campaign.exits,
        events_lost: 0,
    };
    campaign.log.write(&end)?;
    info!(
        ?reason,
        injections = campaign.injections,
        failed = campaign.failed_injections,
        "campaign ended (stap)"
    );
    drop(stapbpf);
    drop(dir);
    if let Some(guardian) = guardian {
        guardian.dismiss();
    }
    Ok(Report {
        reason,
        injections: campaign.injections,
        failed_injections: campaign.failed_injections,
        summary: campaign.log.summary().clone(),
        records: campaign.log.take_records(),
    })
}

/// The campaign as its records are written.
struct StapCampaign<'a> {
    scenario: &'a Scenario,
    compiled: &'a CompiledCampaign,
    /// The kernel time the script armed at: `t_ns` 0.
    start_ns: u64,
    log: EventLog,
    /// The target processes not seen to exit yet.
    live: HashSet<u32>,
    roots: &'a [Root],
    injections: u64,
    failed_injections: u64,
    exits: u64,
    /// Set once the campaign is ending, and why.
    reason: Option<EndReason>,
}

impl StapCampaign<'_> {
    fn end_for(&mut self, reason: EndReason) {
        self.reason.get_or_insert(reason);
    }

    fn target_name(&self, idx: u32) -> String {
        self.scenario.target_name(idx).to_string()
    }

    /// One line of stapbpf's output; `Some(true)` once the script has ended.
    fn line(&mut self, line: &str) -> Result<Option<bool>> {
        let parsed = match output::parse(line) {
            None => {
                info!("stapbpf: {line}");
                return Ok(None);
            }
            Some(parsed) => parsed?,
        };
        let t_ns = |ktime: u64| ktime.saturating_sub(self.start_ns);
        match parsed {
            Line::Armed { .. } => {}
            Line::Injection {
                fault: fault_id,
                target,
                instance,
                pid,
                tid,
                hit,
                signal,
                result,
                ktime_ns,
            } => {
                let fault = self
                    .scenario
                    .faults
                    .get(fault_id as usize)
                    .with_context(|| format!("stap printed fault {fault_id}"))?;
                let delivered = result == 0;
                let error = (!delivered).then(|| match result {
                    SIGNAL_REFUSED => "refused: the process is protected (pid 1)".to_string(),
                    r => format!(
                        "bpf_send_signal failed: {}",
                        std::io::Error::from_raw_os_error(-r)
                    ),
                });
                self.injections += 1;
                if let Some(error) = &error {
                    self.failed_injections += 1;
                    warn!(fault = %fault.name, pid, "not sent: {error}");
                } else {
                    info!(fault = %fault.name, pid, tid, hit, "{}", signals::name(signal));
                }
                // The BPF runtime decides from the compile stage's draws: the draw is that one.
                let draw = fault.probability.map(|_| {
                    let stream = self.compiled.rules[fault_id as usize].hit_stream;
                    hit_draw(&key_from_seed(self.compiled.seed), stream, hit)
                });
                self.log.write(&Record::Injection {
                    t_ns: t_ns(ktime_ns),
                    ktime_ns,
                    fault: fault.name.clone(),
                    target: self.target_name(target),
                    pid,
                    tid,
                    instance,
                    hit,
                    syscall: match &fault.trigger {
                        Trigger::Syscall { name, .. } => Some(name.clone()),
                        _ => None,
                    },
                    trigger: fault.trigger.describe(),
                    signal: signals::name(signal),
                    by: "kernel".into(),
                    scheduled_t_ns: None,
                    late_ns: None,
                    draw,
                    errno: None,
                    delivered,
                    error,
                })?;
            }
            Line::Fork {
                parent,
                child,
                target,
                ktime_ns,
            } => {
                self.live.insert(child);
                self.log.write(&Record::Fork {
                    t_ns: t_ns(ktime_ns),
                    target: self.target_name(target),
                    parent_pid: parent,
                    pid: child,
                })?;
            }
            Line::Joined {
                pid,
                target,
                by,
                ktime_ns,
            } => {
                self.live.insert(pid);
                self.log.write(&Record::Joined {
                    t_ns: t_ns(ktime_ns),
                    target: self.target_name(target),
                    pid,
                    by,
                })?;
            }
            Line::Exit {
                pid,
                target,
                status,
                ktime_ns,
            } => self.exit(pid, target, status, ktime_ns)?,
            Line::End { reason, .. } => {
                if reason == "duration" {
                    self.end_for(EndReason::Duration);
                }
                self.end_for(EndReason::Interrupted);
                return Ok(Some(true));
            }
        }
        Ok(Some(false))
    }

    /// A target process exited. The BPF runtime's exit event has no status: for the roots fij
    /// spawned, fij's wait gives it.
    fn exit(&mut self, pid: u32, target: u32, status: i32, ktime_ns: u64) -> Result<()> {
        if !self.live.remove(&pid) {
            return Ok(());
        }
        self.exits += 1;
        let mut status = (status >= 0).then_some(status);
        if self.roots.iter().any(|r| r.pid == pid && r.spawned) {
            // The exit tracepoint comes just before the process turns zombie.
            for _ in 0..200 {
                if let Some(s) = targets::try_reap(pid) {
                    status = Some(s);
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let (code, signal) = match status.map(targets::describe_status) {
            Some((code, signal)) => (code, signal.map(signals::name)),
            None => (None, None),
        };
        info!(pid, ?code, ?signal, "exited");
        self.log.write(&Record::Exit {
            t_ns: ktime_ns.saturating_sub(self.start_ns),
            ktime_ns,
            target: self.target_name(target),
            pid,
            code,
            signal,
            hits_after_injection: None,
        })
    }

    /// Roots that exited without the script's exit line (a backstop, as the eBPF backend's).
    fn reap(&mut self) {
        let exited: Vec<&Root> = self
            .roots
            .iter()
            .filter(|r| self.live.contains(&r.pid))
            // A spawned root is fij's child: a zombie until the exit record reaps it.
            .filter(|r| targets::has_exited(r.pid))
            .collect();
        let exited: Vec<(u32, u32)> = exited
            .iter()
            .map(|r| (r.pid, r.target_idx as u32))
            .collect();
        for (pid, target) in exited {
            let _ = self.exit(pid, target, -1, monotonic_ns());
        }
    }
}

/// Ends what fij spawned and is still running: SIGTERM, SIGKILL after a grace.
async fn terminate_spawned(live: &HashSet<u32>, roots: &[Root], protected: &[u32]) {
    let spawned: Vec<u32> = roots
        .iter()
        .filter(|r| r.spawned && live.contains(&r.pid))
        .map(|r| r.pid)
        .collect();
    let running = || {
        spawned
            .iter()
            .copied()
            .filter(|&pid| !targets::has_exited(pid))
            .collect::<Vec<_>>()
    };
    for pid in running() {
        info!(pid, "campaign over: terminating");
        targets::signal_target(pid, libc::SIGTERM, protected);
    }
    let give_up = Instant::now() + TERMINATE_GRACE;
    while !running().is_empty() && Instant::now() < give_up {
        sleep(Duration::from_millis(20)).await;
    }
    for pid in running() {
        warn!(pid, "still running after SIGTERM: SIGKILL");
        targets::signal_target(pid, libc::SIGKILL, protected);
    }
}
