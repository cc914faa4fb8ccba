//! `fij run` with the eBPF backend: a compiled campaign installed in the kernel → targets armed
//! → kernel events and timed steps handled until the end → a clean end. This module is the
//! order of those steps and the state they share ([`Campaign`]); what the events mean is
//! [`crate::events`], what each action does after its injection is [`crate::actions`], when
//! time-triggered faults fall due is [`crate::time_faults`].
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use aya::maps::{MapData, RingBuf};
use fij_common::{TargetProcess, log::monotonic_ns};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep, sleep_until},
};
use tracing::{info, warn};

use crate::{
    InvalidInput, actions, caps,
    compile::CompiledCampaign,
    events::FiredBy,
    guardian::Guardian,
    kernel::{Kernel, TableSizes},
    layout,
    log::{EndReason, EventLog, Record, TargetRecord},
    node_faults, nodes,
    report::Summary,
    scenario::{Scenario, Target, TargetSource},
    selectors, status, targets,
    targets::GatedChild,
    time_faults,
};

#[derive(Default)]
pub struct RunOptions {
    /// Write the log to this file.
    pub log: Option<PathBuf>,
    /// Keep every record in memory too, for [`Report::records`] (the library API).
    pub keep_records: bool,
    /// Told once the campaign is wholly armed (targets released).
    pub armed: Option<std::sync::mpsc::Sender<()>>,
    /// Ends the campaign (as SIGINT would) when it turns true.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Show the live status line while the campaign runs (if stderr is a terminal).
    pub status_line: bool,
    /// Turn on the kernel programs' diagnostics (why an injection was refused or skipped, a
    /// lost event) and show them as fij's log lines (target `fij::kernel`).
    pub kernel_log: bool,
    /// Start fij's guardian (`fij __guardian`, an exec of this executable), which resumes the
    /// targets fij stopped if fij dies. Only the `fij` binary can be its own guardian: the
    /// library API runs without one.
    pub guardian: bool,
    /// The node this fij runs as (`--node`, an index into the scenario's `[[node]]`): only its
    /// targets are spawned, adopted or selected. None without `[[node]]`.
    pub node: Option<usize>,
}

/// What happened: the summary, the totals for the exit status, and the records if kept.
pub struct Report {
    pub reason: EndReason,
    pub injections: u64,
    pub failed_injections: u64,
    pub summary: Summary,
    pub records: Vec<Record>,
}

/// How long spawned targets get between SIGTERM and SIGKILL when the campaign ends early.
const TERMINATE_GRACE: Duration = Duration::from_secs(2);

/// One instance of a target as armed: its root process, and whether fij spawned it (then fij
/// also ends it).
pub(crate) struct ArmedInstance {
    pub target_idx: usize,
    pub instance: u32,
    pub pid: u32,
    pub spawned: bool,
}

/// A spawned instance's seccomp listener (`crate::seccomp`), taken at its release: (target,
/// instance, listener, the command's first notified call if it came during the release).
type SeccompListener = (
    usize,
    u32,
    crate::seccomp::Listener,
    Option<libc::seccomp_notif>,
);

/// The running campaign: what the event handlers, the actions' follow-ups and the time
/// triggers share.
pub(crate) struct Campaign<'a> {
    pub scenario: &'a Scenario,
    pub compiled: &'a CompiledCampaign,
    /// The kernel clock at the start (`t_ns` 0 in the log), and the same moment for timers.
    pub start_ns: u64,
    pub start: Instant,
    pub log: EventLog,
    pub tally: Tally,
    pub timers: Timers,
    /// fij and its ancestors: never signalled from userspace either.
    pub protected: &'a [u32],
    /// (fault, root pid) → kernel time the time-triggered fault was due, for the log.
    pub due_ktime: std::collections::HashMap<(u32, u32), u64>,
    /// (fault, root pid) of the time-triggered faults that fired (claimed in kernel or fired by
    /// fij) or were dropped (their instance had exited): a fault waits for every earlier-due one
    /// of `due_ktime` to be here, so faults fire in due order.
    pub time_faults_done: std::collections::HashSet<(u32, u32)>,
    /// The node this fij runs as (`RunOptions::node`).
    pub node: Option<usize>,
    /// The seccomp path's counters (told of each target process's exit).
    pub seccomp: Arc<Mutex<crate::seccomp::Supervisor>>,
}

impl Campaign<'_> {
    /// Nanoseconds since the campaign start, now.
    pub fn t_ns(&self) -> u64 {
        monotonic_ns().saturating_sub(self.start_ns)
    }

    /// The `Instant` at which the kernel time `ktime_ns` was (in the past), for timers that
    /// count from an event rather than from when fij read it.
    pub fn instant_of(&self, ktime_ns: u64) -> Instant {
        Instant::now() - Duration::from_nanos(monotonic_ns().saturating_sub(ktime_ns))
    }
}

#[derive(Default)]
pub(crate) struct Tally {
    /// Injections seen (delivered or not), from the events: one per injection record.
    pub injections: u64,
    pub failed_injections: u64,
    pub exits: u64,
}

/// Steps fij takes at a later time, for one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// An action's follow-up (lift a crash's silence, heal a partition, resume a stop).
    FollowUp(actions::FollowUp),
    /// A time-triggered fault falls due, or its claim grace ends.
    TimeTrigger(time_faults::Step),
    /// A node fault falls due for a node (`pid` unused).
    NodeFault(node_faults::Step),
    /// A crashed node's `recover_after` passed: its addresses speak again (`pid` unused).
    NodeRecover(node_faults::Step),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Timer {
    pub at: Instant,
    pub step: Step,
    pub pid: u32,
}

/// The pending timed steps.
#[derive(Default)]
pub(crate) struct Timers {
    pending: Vec<Timer>,
}

impl Timers {
    pub fn schedule(&mut self, at: Instant, step: Step, pid: u32) {
        self.pending.push(Timer { at, step, pid });
    }

    fn next_at(&self) -> Option<Instant> {
        self.pending.iter().map(|t| t.at).min()
    }

    /// The steps due at `now`, removed from the queue, earliest first (in the order they were
    /// scheduled when due at the same instant): when fij's loop wakes late (a loaded or slow
    /// machine), several time faults can be overdue at once, and they must still fire in the
    /// order of their due times, the plan's, not in the order they happened to be scheduled.
    fn take_due(&mut self, now: Instant) -> Vec<Timer> {
        let (mut due, rest): (Vec<Timer>, Vec<Timer>) =
            self.pending.iter().partition(|t| t.at <= now);
        self.pending = rest;
        due.sort_by_key(|t| t.at);
        due
    }

    /// Every pending follow-up, removed from the queue (the campaign is ending).
    pub fn take_follow_ups(&mut self) -> Vec<(actions::FollowUp, u32)> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .filter_map(|t| match t.step {
                Step::FollowUp(follow_up) => Some((follow_up, t.pid)),
                // A node still crashed recovers through `end_node_silences`.
                Step::TimeTrigger(_) | Step::NodeFault(_) | Step::NodeRecover(_) => None,
            })
            .collect()
    }
}

/// Runs a compiled campaign to its end. The scenario has been validated and compiled; what can
/// still be wrong with the input (a program that does not exist, a pid that cannot be adopted)
/// is checked before anything is loaded.
pub async fn run(
    scenario: &Scenario,
    compiled: &CompiledCampaign,
    opts: &RunOptions,
) -> Result<Report> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(anyhow!(
            "fij run needs root: it loads eBPF programs and signals processes from the kernel (try sudo)"
        ));
    }
    let mut protected = targets::self_and_ancestors();
    let sources = prepare(scenario, opts.node, &protected)?;
    // Root without the capabilities fij needs is told which, before anything is loaded.
    caps::check(scenario)?;
    let faults = scenario
        .faults
        .iter()
        .map(|f| (f.name.as_str(), f.trigger.describe()))
        .chain(scenario.cluster.node_faults.iter().map(|f| {
            let what = format!("node {} {}", f.action.name(), f.schedule);
            (f.name.as_str(), what)
        }));
    let mut log = EventLog::create(
        opts.log.as_deref(),
        Summary::with_faults(faults),
        opts.keep_records,
    )?;

    // Started before anything is loaded: it resumes the processes fij stopped if fij dies.
    let mut guardian = opts.guardian.then(Guardian::start).transpose()?;
    if let Some(guardian) = &guardian {
        protected.push(guardian.pid());
    }
    let layout = layout::discover()?;
    let mut kernel = Kernel::load(
        &layout,
        opts.kernel_log,
        &TableSizes::for_campaign(compiled),
    )?;
    let selectors: Vec<(u32, &selectors::Resolved)> = sources
        .iter()
        .enumerate()
        .filter_map(|(idx, source)| match source {
            Source::Select(selector) => Some((idx as u32, selector)),
            _ => None,
        })
        .collect();
    let interfaces = kernel.install(compiled, &layout, &selectors, &protected)?;
    if let Some(guardian) = &mut guardian {
        guardian.watch(kernel.stopped_map())?;
    }
    if !interfaces.is_empty() {
        info!(interfaces = %interfaces.join(","), "silencer attached");
    }

    // Every target in the set, spawned ones waiting at their gates, before time 0: how long
    // spawning takes (instances, a slow exec, a loaded machine) is not taken from the first
    // due times, and with `start_at` every node's targets start at the same moment.
    let (armed, running, gated) = arm_targets(
        &mut kernel,
        scenario,
        &sources,
        compiled.attach.tick,
        &protected,
        guardian.as_mut(),
    )?;

    // `start_at`: time 0 is the same wall-clock moment on every node.
    let planned = scenario
        .cluster
        .start_at
        .map(|at| nodes::planned_start(at, std::time::SystemTime::now()));
    if let Some(planned) = planned {
        match planned.duration_since(std::time::SystemTime::now()) {
            Ok(wait) => {
                info!("start_at: waiting {:.3} s", wait.as_secs_f64());
                sleep(wait).await;
            }
            Err(late) => warn!(
                "start_at has passed {:.3} s ago: starting now, late",
                late.duration().as_secs_f64()
            ),
        }
    }
    let start_ns = monotonic_ns();
    let start = Instant::now();
    let start_wall = std::time::SystemTime::now();
    kernel.arm(start_ns, compiled.seed)?;
    let listeners = release_targets(scenario, gated)?;
    let node_name = opts.node.map(|n| scenario.cluster.nodes[n].name.clone());
    let clock = nodes::clock(start_wall, planned);

    // Absolute, so `fij run --replay LOG` finds the scenario from any directory.
    let scenario_path =
        std::fs::canonicalize(&scenario.path).unwrap_or_else(|_| scenario.path.clone());
    let scenario_path = scenario_path.display().to_string();
    log.write(&Record::Start {
        seed: compiled.seed,
        scenario: scenario_path.clone(),
        start_ktime_ns: start_ns,
        targets: armed
            .iter()
            .map(|a| TargetRecord {
                name: scenario.targets[a.target_idx].name.clone(),
                instance: a.instance,
                pid: a.pid,
                spawned: a.spawned,
            })
            .collect(),
        node: node_name.clone(),
        clock: Some(clock),
    })?;
    for (pid, target_idx, by) in running {
        log.write(&Record::Joined {
            t_ns: 0,
            target: scenario.target_name(target_idx as u32).to_string(),
            pid,
            by: by.to_string(),
        })?;
    }
    info!(seed = compiled.seed, scenario = %scenario_path, node = node_name.as_deref().unwrap_or("-"), "campaign armed");
    if node_name.is_some() {
        info!(
            start_unix_ns = clock.start_unix_ns,
            late_ns = clock
                .planned_unix_ns
                .map(|p| clock.start_unix_ns.saturating_sub(p)),
            synchronized = clock.synchronized,
            max_error_us = clock.max_error_us,
            "wall clock at the start"
        );
    }
    if let Some(armed) = &opts.armed {
        let _ = armed.send(());
    }
    // The seccomp listeners of spawned targets: one thread each answers their calls; what it
    // injects comes to the event loop as an event.
    let (seccomp_events, mut seccomp_rx) = tokio::sync::mpsc::unbounded_channel();
    let supervisor = Arc::new(Mutex::new(crate::seccomp::Supervisor::new(
        scenario, compiled, start_ns,
    )));
    let listener_threads = listeners
        .into_iter()
        .map(|(target_idx, instance, listener, pending)| {
            crate::seccomp::ListenerThread::start(
                listener,
                target_idx,
                instance,
                pending,
                supervisor.clone(),
                seccomp_events.clone(),
            )
        })
        .collect::<Result<Vec<_>>>()?;

    let ring = kernel.take_events().context("event ring already taken")?;
    // SAFETY: the ring owns its fd and keeps it open for as long as the AsyncFd holds it.
    let mut events =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow!("polling the event ring: {e}"))?;
    let mut kernel_log = match opts.kernel_log {
        true => Some(
            // SAFETY: the logger owns its ring's fd and keeps it open while the AsyncFd holds it.
            unsafe {
                AsyncFd::register_with_interest(
                    kernel.take_kernel_log()?,
                    tokio::io::Interest::READABLE,
                )
            }
            .map_err(|e| anyhow!("polling the programs' log ring: {e}"))?,
        ),
        false => None,
    };
    let mut campaign = Campaign {
        scenario,
        compiled,
        start_ns,
        start,
        log,
        tally: Tally::default(),
        timers: Timers::default(),
        protected: &protected,
        due_ktime: Default::default(),
        time_faults_done: Default::default(),
        node: opts.node,
        seccomp: supervisor.clone(),
    };
    campaign.schedule_time_faults(&armed);
    campaign.schedule_node_faults();
    if opts.status_line {
        status::start();
    }
    let selector_targets = !selectors.is_empty();
    let reason = event_loop(
        &mut campaign,
        &mut kernel,
        &mut events,
        &armed,
        selector_targets,
        opts.stop.clone(),
        &mut kernel_log,
        &mut seccomp_rx,
    )
    .await?;
    // No call fails any more: the targets' calls run while fij ends them; what was injected
    // is logged.
    supervisor
        .lock()
        .expect("the supervisor lock")
        .stop_deciding();
    while let Ok(event) = seccomp_rx.try_recv() {
        campaign.injection(&mut kernel, &event, FiredBy::Seccomp)?;
    }
    if let Some(kernel_log) = &mut kernel_log {
        kernel_log.get_mut().flush();
    }
    let report = finish(campaign, kernel, events, &armed, reason).await?;
    // The guardian answers what comes to the listeners from now on.
    drop(listener_threads);
    if let Some(guardian) = guardian {
        guardian.dismiss(); // every stop was resumed by `finish`
    }
    Ok(report)
}

/// The programs' diagnostics, read from their log ring (`--kernel-log`).
type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// A running process a selector matched at the start: (pid, target index, selector kind).
type RunningMatch = (u32, usize, &'static str);

/// How each target is brought in, found before anything is loaded.
enum Source {
    /// A command, resolved like execvp would.
    Spawn(std::path::PathBuf),
    /// A running process, checked adoptable.
    Adopt(u32),
    /// A selector, resolved (cgroup path → id).
    Select(selectors::Resolved),
    /// A target of another node: this fij leaves it alone.
    Elsewhere,
}

/// Checks what about the targets can only be known by looking at the machine (the program to
/// spawn, the process to adopt, the cgroup to select), before anything is loaded.
fn prepare(scenario: &Scenario, node: Option<usize>, protected: &[u32]) -> Result<Vec<Source>> {
    scenario
        .targets
        .iter()
        .enumerate()
        .map(|(idx, target)| {
            if !scenario.cluster.is_on(idx, node) {
                return Ok(Source::Elsewhere);
            }
            let invalid =
                |e: anyhow::Error| InvalidInput(format!("target `{}`: {e:#}", target.name));
            Ok(match &target.source {
                TargetSource::Command { argv, cwd, .. } => Source::Spawn(
                    targets::resolve_program(&argv[0], cwd.as_deref()).map_err(invalid)?,
                ),
                TargetSource::Pid(pid) => {
                    targets::check_adoptable(*pid, protected).map_err(invalid)?;
                    Source::Adopt(*pid)
                }
                TargetSource::Selector(selector) => {
                    Source::Select(selectors::resolve(selector).map_err(invalid)?)
                }
            })
        })
        .collect()
}

/// Brings every target into the kernel's target set, before it is armed: spawns commands (each
/// instance a target before its first instruction, waiting at its gate), adopts pids with their
/// descendants, adds running processes that match selectors. Returns the instances' root
/// processes, the running processes that joined by matching a selector (pid, target, selector
/// kind), and the spawned instances, still at their gates ([`release_targets`], once armed).
fn arm_targets<'s>(
    kernel: &mut Kernel,
    scenario: &'s Scenario,
    sources: &[Source],
    tick: bool,
    protected: &[u32],
    mut guardian: Option<&mut Guardian>,
) -> Result<(Vec<ArmedInstance>, Vec<RunningMatch>, Vec<Gated<'s>>)> {
    let mut armed = Vec::new();
    let mut running = Vec::new();
    // Spawned instances wait at their gate until fij is wholly armed: attaching a program
    // patches kernel text on every CPU, which would slow a target that already runs.
    let mut gated = Vec::new();
    for (target_idx, (target, source)) in scenario.targets.iter().zip(sources).enumerate() {
        let entry = |instance, generation| TargetProcess {
            target_idx: target_idx as u32,
            instance,
            generation,
            ..TargetProcess::default()
        };
        match (&target.source, source) {
            (
                TargetSource::Command {
                    argv,
                    cwd,
                    env,
                    instances,
                    user,
                    group,
                },
                Source::Spawn(program),
            ) => {
                let seccomp = crate::seccomp::syscalls_of(scenario, target_idx);
                for instance in 0..*instances {
                    let child = GatedChild::spawn(
                        program,
                        argv,
                        cwd.as_deref(),
                        env,
                        (*user, *group),
                        &seccomp,
                    )
                    .with_context(|| format!("target `{}`", target.name))?;
                    if let (Some(listener), Some(guardian)) = (&child.listener, &mut guardian) {
                        guardian.hold_listener(listener)?;
                    }
                    kernel.add_target(child.pid, entry(instance, monotonic_ns()))?;
                    if tick {
                        kernel.attach_tick(child.pid)?;
                    }
                    armed.push(ArmedInstance {
                        target_idx,
                        instance,
                        pid: child.pid,
                        spawned: true,
                    });
                    gated.push((child, target, instance, argv.as_slice()));
                }
            }
            (_, Source::Adopt(pid)) => {
                let found = targets::found(*pid);
                kernel.add_target(*pid, entry(0, monotonic_ns()))?;
                add_descendants(kernel, *pid, || entry(0, monotonic_ns()))?;
                if tick {
                    kernel.attach_tick(*pid)?;
                }
                // It may have exited between the check and the insert: then no exit event comes.
                if !found.is_some_and(|f| f.still_running()) {
                    return Err(anyhow!(
                        "target `{}`: pid {pid} exited before it was armed",
                        target.name
                    ));
                }
                info!(target = %target.name, pid, "adopted");
                armed.push(ArmedInstance {
                    target_idx,
                    instance: 0,
                    pid: *pid,
                    spawned: false,
                });
            }
            (_, Source::Select(selector)) => {
                let matching: Vec<targets::Found> = targets::processes()
                    .filter(|&pid| targets::check_adoptable(pid, protected).is_ok())
                    .filter(|&pid| selectors::matches(pid, selector))
                    .filter_map(targets::found)
                    .collect();
                for found in &matching {
                    let pid = found.pid;
                    kernel.add_target(pid, entry(0, monotonic_ns()))?;
                    if !found.still_running() {
                        kernel.remove_target(pid)?; // gone since the scan (see add_descendants)
                        continue;
                    }
                    running.push((pid, target_idx, selector.kind()));
                    for joined in add_descendants(kernel, pid, || entry(0, monotonic_ns()))? {
                        running.push((joined, target_idx, selector.kind()));
                    }
                }
                info!(target = %target.name, running = matching.len(), "selector armed: {selector:?}");
            }
            (_, Source::Elsewhere) => {}
            (_, Source::Spawn(_)) => unreachable!("only command targets are spawned"),
        }
    }
    Ok((armed, running, gated))
}

/// Adds the current descendants of `parent` (just added) to the target set, and returns the
/// pids added. A descendant that exits between the /proc scan and its insert would stay in the
/// set for ever, as no exit event comes for it: the campaign would never see every target gone
/// (a `sleep` child of an adopted shell did this in the kernel lab, under TCG), and a new
/// process given that pid would be taken for a target. So each is checked after its insert,
/// and taken out again if it is no longer the process the scan found, or is exiting: a
/// process whose exit was traced an instant before the insert still shows as running (measured:
/// the insert 8 µs after the exit program ran, the process not yet a zombie), but already has
/// `PF_EXITING`.
fn add_descendants(
    kernel: &mut Kernel,
    parent: u32,
    entry: impl Fn() -> TargetProcess,
) -> Result<Vec<u32>> {
    let mut added = Vec::new();
    for found in targets::descendants(parent) {
        kernel.add_target(found.pid, entry())?;
        if found.still_running() {
            added.push(found.pid);
        } else {
            kernel.remove_target(found.pid)?;
        }
    }
    Ok(added)
}

/// A spawned instance waiting at its gate: the child, its target, instance and argv.
type Gated<'s> = (GatedChild, &'s Target, u32, &'s [String]);

/// Opens the gates of the spawned instances (once the kernel is armed); returns their seccomp
/// listeners.
fn release_targets(scenario: &Scenario, gated: Vec<Gated<'_>>) -> Result<Vec<SeccompListener>> {
    let mut listeners = Vec::new();
    for (mut child, target, instance, argv) in gated {
        child
            .release()
            .with_context(|| format!("target `{}`", target.name))?;
        info!(target = %target.name, instance, pid = child.pid, "spawned {}", argv.join(" "));
        if let Some(listener) = child.listener.take() {
            let target_idx = scenario
                .targets
                .iter()
                .position(|t| std::ptr::eq(t, target))
                .expect("a target of the scenario");
            listeners.push((target_idx, instance, listener, child.pending.take()));
        }
    }
    Ok(listeners)
}

/// Waits for events (the ring's, the seccomp listeners'), timed steps, the deadline or a
/// signal; returns why the campaign ends.
#[allow(clippy::too_many_arguments)]
async fn event_loop(
    campaign: &mut Campaign<'_>,
    kernel: &mut Kernel,
    events: &mut AsyncFd<RingBuf<MapData>>,
    armed: &[ArmedInstance],
    selector_targets: bool,
    mut stop: Option<tokio::sync::watch::Receiver<bool>>,
    kernel_log: &mut Option<AsyncFd<KernelLog>>,
    seccomp: &mut tokio::sync::mpsc::UnboundedReceiver<fij_common::Event>,
) -> Result<EndReason> {
    let deadline = campaign.scenario.duration.map(|d| campaign.start + d);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut waiting_told = false;
    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard?;
                campaign.drain(kernel, guard.get_inner_mut())?;
                guard.clear_ready();
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => return Ok(EndReason::Duration),
            _ = sleep_until(campaign.timers.next_at().unwrap_or_else(Instant::now)), if campaign.timers.next_at().is_some() => {
                // The kernel's events first: when fij wakes late, injections the kernel made
                // before these steps are logged before the ones the steps make (a time fault
                // fired from here after an earlier-due one its victim claimed in kernel).
                campaign.drain(kernel, events.get_mut())?;
                for timer in campaign.timers.take_due(Instant::now()) {
                    match timer.step {
                        Step::FollowUp(follow_up) => campaign.follow_up(kernel, follow_up, timer.pid)?,
                        Step::TimeTrigger(step) => campaign.time_trigger(kernel, step, timer.pid)?,
                        Step::NodeFault(step) => campaign.node_fault(kernel, step)?,
                        Step::NodeRecover(step) => campaign.node_recover(kernel, step)?,
                    }
                }
            }
            guard = async {
                match kernel_log.as_mut() {
                    Some(log) => log.readable_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Some(event) = seccomp.recv() => campaign.injection(kernel, &event, FiredBy::Seccomp)?,
            _ = sigint.recv() => return Ok(EndReason::Interrupted),
            _ = sigterm.recv() => return Ok(EndReason::Interrupted),
            Ok(()) = async { stop.as_mut().expect("guarded").wait_for(|s| *s).await.map(|_| ()) }, if stop.is_some() => return Ok(EndReason::Interrupted),
            // Exits are seen as events; this is the backstop for a target that died unseen. It
            // also drains injections the kernel emits without a wakeup (a signalled victim that
            // survives, e.g. SIGSTOP or a handled signal, sends no exit event to wake fij).
            _ = sleep(Duration::from_millis(100)) => campaign.drain(kernel, events.get_mut())?,
        }
        reap(armed);
        let alive = kernel.target_processes().len();
        status::update(
            campaign.start.elapsed(),
            campaign.scenario.duration,
            campaign.tally.injections,
            alive,
        );
        // Selector targets may gain processes at any time: only duration or Ctrl-C ends those.
        if alive > 0 || selector_targets {
            continue;
        }
        // A crashed host stays silent until recover_after, duration or Ctrl-C, even when every
        // target is gone: ending now would "reboot" it at once. A crashed process reports its
        // exit before it releases its sockets; its mark stays until the task is freed, so wait
        // for that before deciding whether silence holds.
        if kernel.crashed().is_empty() && !kernel.silence_active() {
            return Ok(EndReason::TargetsExited);
        }
        if !waiting_told {
            info!(
                "every target exited; crashed sockets stay silent until recover_after, duration or Ctrl-C"
            );
            waiting_told = true;
        }
    }
}

/// Stops injecting, ends every action still in effect, ends what fij spawned (unless they all
/// exited), logs the last events and the totals, and detaches everything.
async fn finish(
    mut campaign: Campaign<'_>,
    mut kernel: Kernel,
    mut events: AsyncFd<RingBuf<MapData>>,
    armed: &[ArmedInstance],
    reason: EndReason,
) -> Result<Report> {
    kernel.disarm()?;
    // Injections fired just before the end (a stop, a partition) are in the ring: their
    // follow-ups must exist before every action in effect is ended.
    campaign.drain(&mut kernel, events.get_mut())?;
    campaign.end_actions(&mut kernel)?;
    if reason != EndReason::TargetsExited {
        terminate_spawned(&kernel, campaign.scenario, campaign.protected).await;
    }
    // Exits of the terminated targets, and anything still in the ring.
    campaign.drain(&mut kernel, events.get_mut())?;
    reap(armed);
    let events_lost = kernel.events_lost();
    if events_lost > 0 {
        warn!(
            events_lost,
            "the kernel dropped events: the ring buffer was full"
        );
    }
    let tally = &campaign.tally;
    let (injections, failed_injections) = (tally.injections, tally.failed_injections);
    let end = Record::End {
        t_ns: campaign.t_ns(),
        reason,
        injections,
        failed_injections,
        exits: tally.exits,
        events_lost,
    };
    campaign.log.write(&end)?;
    info!(
        ?reason,
        injections,
        failed = failed_injections,
        "campaign ended"
    );
    drop(kernel); // detaches every program: silenced tuples speak again
    Ok(Report {
        reason,
        injections,
        failed_injections,
        summary: campaign.log.summary().clone(),
        records: campaign.log.take_records(),
    })
}

/// Ends what fij spawned: SIGTERM to every live process of a spawned target, SIGKILL after a grace.
async fn terminate_spawned(kernel: &Kernel, scenario: &Scenario, protected: &[u32]) {
    let spawned = |tp: &TargetProcess| {
        matches!(
            scenario.targets[tp.target_idx as usize].source,
            TargetSource::Command { .. }
        )
    };
    let live = || {
        kernel
            .target_processes()
            .into_iter()
            .filter(|(pid, tp)| spawned(tp) && !protected.contains(pid))
            .map(|(pid, _)| pid)
    };
    for pid in live() {
        info!(pid, "campaign over: terminating");
        targets::signal_target(pid, libc::SIGTERM, protected);
    }
    let give_up = Instant::now() + TERMINATE_GRACE;
    while live().next().is_some() && Instant::now() < give_up {
        sleep(Duration::from_millis(20)).await;
    }
    for pid in live() {
        warn!(pid, "still running after SIGTERM: SIGKILL");
        targets::signal_target(pid, libc::SIGKILL, protected);
    }
    let give_up = Instant::now() + TERMINATE_GRACE;
    while live().next().is_some() && Instant::now() < give_up {
        sleep(Duration::from_millis(20)).await;
    }
}

fn reap(armed: &[ArmedInstance]) {
    for target in armed.iter().filter(|t| t.spawned) {
        targets::try_reap(target.pid);
    }
}

/// A seed for a campaign that names none (printed and logged, so the run can be replayed).
pub fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom fills the buffer we own.
    unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    u64::from_ne_bytes(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overdue_steps_are_taken_in_due_order() {
        let start = Instant::now();
        let due = |fault_id| Step::TimeTrigger(time_faults::Step::Due { fault_id });
        let mut timers = Timers::default();
        // Scheduled in another order than their due times (as a campaign's instances are).
        timers.schedule(start + Duration::from_millis(560), due(1), 11);
        timers.schedule(start + Duration::from_millis(880), due(2), 12);
        timers.schedule(start + Duration::from_millis(370), due(0), 10);
        timers.schedule(start + Duration::from_millis(560), due(3), 13);
        timers.schedule(start + Duration::from_secs(5), due(4), 14);
        // fij's loop wakes late: four are overdue at once.
        let taken: Vec<u32> = timers
            .take_due(start + Duration::from_secs(2))
            .iter()
            .map(|t| t.pid)
            .collect();
        assert_eq!(taken, [10, 11, 13, 12]);
        assert_eq!(timers.next_at(), Some(start + Duration::from_secs(5)));
    }
}
