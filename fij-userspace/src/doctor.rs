//! `fij doctor`: what this kernel supports, found by trying each item — loading and attaching
//! the real programs, and killing a throwaway child from the kernel — rather than by reading the
//! kernel's configuration (which only backs up an explanation).
//!
//! Every check is a small function returning a [`Check`]. Whatever a check creates (programs,
//! links, a qdisc, a child process) is owned by a value whose `Drop` removes it, so nothing is
//! left behind, also when a check fails halfway.
use std::{
    ffi::CString,
    fmt,
    io::{self, Read},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{
        FEntry, KProbe, LinkOrder, SchedClassifier, TcAttachType, TcError, UProbe,
        tc::{NlOptions, TcAttachOptions, qdisc_add_clsact},
        uprobe::UProbeScope,
    },
};
use fij_common::{
    EVENT_EXIT, EVENT_INJECTION, EVENT_RING_BYTES, Event, KernelLayout, SIGNAL_REFUSED,
    TargetProcess, log::monotonic_ns,
};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle, TcMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::{
    compile::{CompiledCampaign, compile},
    kernel::{self, Kernel},
    layout::{self, TRACEFS, VMLINUX_BTF},
    scenario::{Scenario, TargetSource},
    signals,
    targets::{self, GatedChild},
};

/// The no-op programs of `fij-ebpf/src/probes.rs`, only ever loaded by the doctor.
const PROBE_UPROBE: &str = "fij_probe_uprobe";
const PROBE_KPROBE: &str = "fij_probe_kprobe";
const PROBE_TC: &str = "fij_probe_tc";
const PROBE_FENTRY: &str = "fij_probe_fentry";

/// Where the probes are attached: a libc function, a kernel function, an interface that exists
/// everywhere.
const UPROBE_SYMBOL: &str = "getpid";
const KPROBE_FUNCTION: &str = "do_sys_openat2";
const TC_INTERFACE: &str = "lo";
const BPFFS: &str = "/sys/fs/bpf";
/// The running kernel's configuration, gzipped (CONFIG_IKCONFIG_PROC).
const PROC_CONFIG_GZ: &str = "/proc/config.gz";

/// How long the throwaway child of the `bpf_send_signal` check may take to die.
const CHILD_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Tried, and it works.
    Ok,
    /// Tried, and it does not work.
    Missing,
    /// Not tried: something it depends on is missing.
    Skipped,
    /// fij does not use it; not tried.
    NotUsed,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Skipped => "skipped",
            Status::NotUsed => "n/a",
        }
    }
}

/// One line of the report.
#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// The fij features that do not work without this item (shown unless it is ok).
    pub disables: &'static str,
    /// Whether a feature fij has today needs it: only those decide [`Report::all_ok`].
    pub required: bool,
}

impl Check {
    fn new(
        name: &'static str,
        required: bool,
        disables: &'static str,
        result: Result<String>,
    ) -> Self {
        let (status, detail) = match result {
            Ok(detail) => (Status::Ok, detail),
            Err(e) => (Status::Missing, one_line(&format!("{e:#}"))),
        };
        Self {
            name,
            status,
            detail,
            disables,
            required,
        }
    }

    fn skipped(name: &'static str, required: bool, disables: &'static str, why: &str) -> Self {
        Self {
            name,
            status: Status::Skipped,
            detail: why.to_owned(),
            disables,
            required,
        }
    }
}

/// A multi-line error (a verifier log) as one line: its first line and its last lines, where the
/// verifier says what it rejected.
fn one_line(text: &str) -> String {
    const TAIL: usize = 3;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [] => String::new(),
        [first, rest @ ..] if rest.len() > TAIL => {
            format!("{first} … {}", rest[rest.len() - TAIL..].join(" | "))
        }
        all => all.join(" | "),
    }
}

pub struct Report {
    /// `uname -r` and `uname -m`.
    pub kernel: (String, String),
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether everything fij's current features need is present (optional items may be missing).
    pub fn all_ok(&self) -> bool {
        self.checks
            .iter()
            .all(|c| !c.required || c.status == Status::Ok)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(
            f,
            "fij doctor — kernel {} ({})",
            self.kernel.0, self.kernel.1
        )?;
        for c in &self.checks {
            write!(f, "{:<8} {:<17} {}", c.status.label(), c.name, c.detail)?;
            if c.status == Status::Missing && !c.disables.is_empty() {
                write!(f, " → disables: {}", c.disables)?;
            }
            writeln!(f)?;
        }
        let verdict = if self.all_ok() {
            "fij run can work on this kernel"
        } else {
            "fij run cannot work here"
        };
        let mut summary = vec![verdict.to_owned()];
        for (required, status, what) in [
            (true, Status::Missing, "missing"),
            (true, Status::Skipped, "not checked"),
            (false, Status::Missing, "optional, missing"),
            (false, Status::Skipped, "optional, not checked"),
        ] {
            let names: Vec<_> = self
                .checks
                .iter()
                .filter(|c| c.required == required && c.status == status)
                .map(|c| c.name)
                .collect();
            if !names.is_empty() {
                summary.push(format!("{what}: {}", names.join(", ")));
            }
        }
        writeln!(f, "{}", summary.join("; "))
    }
}

/// Runs every check, in order; a check that needs something missing is reported as skipped.
pub fn run() -> Report {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut checks = vec![check_root(root)];
    let (btf, layout) = check_btf();
    checks.push(btf);
    checks.push(check_tracefs(root));
    checks.push(check_bpffs());
    match (root, &layout) {
        (true, Some(layout)) => checks.extend(check_fij_programs(layout)),
        (false, _) => checks.extend(skip_fij_programs("needs root")),
        (true, None) => checks.extend(skip_fij_programs(
            "needs the kernel layout (see BTF and tracefs above)",
        )),
    }
    checks.extend(if root {
        check_probes()
    } else {
        skip_probes("needs root")
    });
    checks.extend(check_stap_runtimes());
    let (lsm, why) = crate::error_paths::bpf_lsm();
    checks.push(Check {
        name: "error: BPF LSM",
        status: if lsm { Status::Ok } else { Status::Missing },
        detail: why,
        disables: DISABLES_LSM_ERRORS,
        required: false,
    });
    let (override_return, why) = crate::error_paths::kprobe_override();
    checks.push(Check {
        name: "bpf_override_return",
        status: if override_return {
            Status::Ok
        } else {
            Status::Missing
        },
        detail: format!(
            "kprobes with CONFIG_BPF_KPROBE_OVERRIDE: {why}; fij has no program for it yet"
        ),
        disables: DISABLES_OTHER_ERRORS,
        required: false,
    });
    Report {
        kernel: uname(),
        checks,
    }
}

/// One line per SystemTap runtime: whether `fij run --backend stap` (BPF) and a `fij stap`
/// script run with `stap -g` (module) can run here. Not tried by running a script: stap takes
/// minutes to compile one; what is checked is everything the run needs from the machine.
fn check_stap_runtimes() -> Vec<Check> {
    use crate::stap::bpf_runtime::{Toolchain, modules_loadable};
    let toolchain = Toolchain::find();
    let module = toolchain
        .as_ref()
        .map_err(|e| anyhow!("{e:#}"))
        .and_then(|t| {
            modules_loadable()?;
            Ok(format!(
                "{} against headers {} (their kernel must be the running one)",
                t.stap.display(),
                t.headers_release
            ))
        });
    let bpf = toolchain.as_ref().map_err(|e| anyhow!("{e:#}")).and_then(|t| {
        if !Path::new("/sys/kernel/debug").is_dir() {
            bail!("no /sys/kernel/debug to mount debugfs on (stapbpf's uprobes need it)");
        }
        Ok(format!(
            "{} and {} against headers {}: `fij run --backend stap` (debugfs mounted privately, \
             RLIMIT_MEMLOCK raise made a no-op; docs/stap.md)",
            t.stap.display(),
            t.stapbpf.display(),
            t.headers_release
        ))
    });
    vec![
        Check::new(
            "stap module",
            false,
            "running `fij stap` scripts with `stap -g` here",
            module,
        ),
        Check::new("stap bpf", false, "fij run --backend stap", bpf),
    ]
}

fn uname() -> (String, String) {
    // SAFETY: uname fills the struct we own; its fields are NUL-terminated.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return ("?".into(), "?".into());
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&u.release), field(&u.machine))
}

// ---------------------------------------------------------------------------------------------
// Environment: root, BTF, tracefs, bpffs.

fn check_root(root: bool) -> Check {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let result = if root {
        Ok("euid 0".to_owned())
    } else {
        Err(anyhow!(
            "euid {euid}: the checks that load eBPF programs cannot run (run as root)"
        ))
    };
    Check::new("root", true, "fij run (it loads eBPF programs)", result)
}

/// The offsets fij's programs need, through `layout::discover()` (which also reads tracefs).
fn check_btf() -> (Check, Option<KernelLayout>) {
    const DISABLES: &str =
        "fij run (task_struct offsets for fork/exit tracking and kernel-thread protection)";
    match layout::discover() {
        Ok(l) => {
            let exit_code = offset_or_unknown(l.task_exit_code);
            let detail = format!(
                "{VMLINUX_BTF}; task_struct: pid@{} tgid@{} flags@{} exit_code@{exit_code}",
                l.task_pid, l.task_tgid, l.task_flags
            );
            (Check::new("BTF", true, DISABLES, Ok(detail)), Some(l))
        }
        // discover() also reads a tracepoint format: tell whether the BTF half is what failed.
        Err(discover_error) => {
            let result = btf_task_offsets().map(|offsets| {
                format!(
                    "{VMLINUX_BTF}; task_struct: {offsets} (tracepoint part of the layout: see tracefs)"
                )
            });
            let result = result.map_err(|_| discover_error);
            (Check::new("BTF", true, DISABLES, result), None)
        }
    }
}

fn offset_or_unknown(offset: u32) -> String {
    if offset == u32::MAX {
        "? (exit codes not reported)".into()
    } else {
        offset.to_string()
    }
}

/// `pid@N tgid@N flags@N` read from BTF alone.
fn btf_task_offsets() -> Result<String> {
    let btf = btf_rs::Btf::from_file(VMLINUX_BTF)
        .with_context(|| format!("cannot read {VMLINUX_BTF}"))?;
    let mut found = Vec::new();
    for member in ["pid", "tgid", "flags"] {
        let offset = layout::member_offset(&btf, "task_struct", member)?
            .with_context(|| format!("task_struct has no member `{member}`"))?;
        found.push(format!("{member}@{offset}"));
    }
    Ok(found.join(" "))
}

fn check_tracefs(root: bool) -> Check {
    const DISABLES: &str = "fij run (tracepoints are attached through tracefs)";
    let events = Path::new(TRACEFS).join("events");
    let categories = match std::fs::read_dir(&events) {
        Ok(dir) => dir
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .count(),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !root => {
            return Check::skipped(
                "tracefs",
                true,
                DISABLES,
                &format!("{}: {e} (needs root)", events.display()),
            );
        }
        Err(e) => {
            let mounted = if is_fs(TRACEFS, TRACEFS_MAGIC) {
                "tracefs is mounted"
            } else {
                "tracefs not mounted"
            };
            let err = anyhow!(
                "cannot read {}: {e}; {mounted} (mount -t tracefs nodev {TRACEFS})",
                events.display()
            );
            return Check::new("tracefs", true, DISABLES, Err(err));
        }
    };
    let group_dead =
        match layout::tracepoint_field_offset("sched", "sched_process_exit", "group_dead") {
            Ok(Some(offset)) => format!("sched_process_exit.group_dead@{offset}"),
            Ok(None) => {
                "sched_process_exit has no group_dead (exits are taken from thread-group leaders)"
                    .into()
            }
            Err(e) => return Check::new("tracefs", true, DISABLES, Err(e)),
        };
    Check::new(
        "tracefs",
        true,
        DISABLES,
        Ok(format!(
            "{TRACEFS}: {categories} event categories; {group_dead}"
        )),
    )
}

const TRACEFS_MAGIC: i64 = 0x7472_6163;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is the root of a mounted file system of type `magic` (statfs).
fn is_fs(path: &str, magic: i64) -> bool {
    let Ok(c_path) = CString::new(path) else {
        return false;
    };
    // SAFETY: statfs fills the struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c_path.as_ptr(), &mut st) == 0 && st.f_type as i64 == magic }
}

fn check_bpffs() -> Check {
    let result = if is_fs(BPFFS, BPF_FS_MAGIC) {
        Ok(format!("{BPFFS} (not required: fij pins nothing)"))
    } else {
        Err(anyhow!(
            "no bpf file system at {BPFFS} (not required: fij pins nothing)"
        ))
    };
    Check::new("bpffs", false, "nothing", result)
}

// ---------------------------------------------------------------------------------------------
// fij's own programs, through `Kernel`: exactly what `fij run` loads.

const DISABLES_RING: &str =
    "fij run (fij's maps, and the event stream of injections, forks and exits)";
const DISABLES_RAW_TP: &str = "fij run (syscall triggers and fork tracking)";
const DISABLES_TP: &str = "fij run (exit tracking)";
const DISABLES_SIGNAL: &str = "fij run (every action: kill and signal are sent from the kernel)";

fn skip_fij_programs(why: &str) -> Vec<Check> {
    vec![
        Check::skipped("ring buffer", true, DISABLES_RING, why),
        Check::skipped("raw tracepoint", true, DISABLES_RAW_TP, why),
        Check::skipped("tracepoint", true, DISABLES_TP, why),
        Check::skipped("bpf_send_signal", true, DISABLES_SIGNAL, why),
        Check::skipped("crash / partition", false, DISABLES_CRASH, why),
        Check::skipped("error: cgroup hooks", false, DISABLES_CGROUP_ERRORS, why),
    ]
}

/// What a kernel without the cgroup hooks that fail calls loses.
const DISABLES_CGROUP_ERRORS: &str =
    "`action = \"error\"` (connect, bind, UDP sendto/sendmsg, get/setsockopt, socket)";

/// What a kernel without the silencing hooks loses.
const DISABLES_CRASH: &str = "the crash and partition actions (kill, stop and signal still work)";

/// Loads fij's object and attaches its programs; they are detached when `kernel` is dropped.
fn check_fij_programs(layout: &KernelLayout) -> Vec<Check> {
    // The silencing hooks are attached below, and the signal check writes one syscall hook of
    // one target (`kill_on_execve`).
    let all_tables = kernel::TableSizes {
        silences: true,
        syscall_targets: 1,
        syscall_rows: 1,
        faults: 1,
        counter_slots: fij_common::counter_slots(1),
    };
    let mut kernel = match Kernel::load(layout, false, &all_tables) {
        Ok(kernel) => kernel,
        Err(e) => {
            let mut checks = skip_fij_programs("fij's eBPF object did not load (see ring buffer)");
            checks[0] = Check::new("ring buffer", true, DISABLES_RING, Err(e));
            return checks;
        }
    };
    let ring = Check::new(
        "ring buffer",
        true,
        DISABLES_RING,
        Ok(format!(
            "EVENTS ring map ({} KiB) and fij's other maps created",
            EVENT_RING_BYTES / 1024
        )),
    );
    let raw_tp = Check::new(
        "raw tracepoint",
        true,
        DISABLES_RAW_TP,
        kernel
            .attach_syscalls()
            .map(|()| format!("{} attached to sys_enter", kernel::PROG_SYS_ENTER)),
    );
    let tp = Check::new(
        "tracepoint",
        true,
        DISABLES_TP,
        kernel.attach_lifecycle().map(|()| {
            format!(
                "{} attached to sched:sched_process_exit ({} to raw sched_process_fork)",
                kernel::PROG_EXIT,
                kernel::PROG_FORK
            )
        }),
    );
    let signal = if raw_tp.status == Status::Ok {
        Check::new(
            "bpf_send_signal",
            true,
            DISABLES_SIGNAL,
            prove_send_signal(&mut kernel),
        )
    } else {
        Check::skipped(
            "bpf_send_signal",
            true,
            DISABLES_SIGNAL,
            "needs the sys_enter hook (see raw tracepoint)",
        )
    };
    // The silencing hooks, attached for real (nothing is silenced, so no packet is touched), in
    // an object of their own: the signal check above has consumed this one's event ring.
    let crash = Check::new(
        "crash / partition",
        false,
        DISABLES_CRASH,
        Kernel::load(layout, false, &all_tables)
            .and_then(|mut fresh| {
                fresh.attach_crash(layout)?;
                fresh.attach_silencer()
            })
            .map(|interfaces| {
                format!(
                    "sock:inet_sock_set_state, cgroup v2 sock hooks, sched_process_free attached; \
                     tcx ingress/egress on {}",
                    interfaces.join(", ")
                )
            }),
    );
    // In an object of its own, as the silencing hooks above.
    let errors = Check::new(
        "error: cgroup hooks",
        false,
        DISABLES_CGROUP_ERRORS,
        Kernel::load(layout, false, &all_tables).and_then(|mut fresh| {
            let all: Vec<u32> = (0..kernel::PROGS_ERRNO.len() as u32).collect();
            fresh.attach_errno_hooks(&all)?;
            Ok(format!(
                "{} attached to the cgroup v2 root (bpf_set_retval)",
                kernel::PROGS_ERRNO.concat().join(", ")
            ))
        }),
    );
    vec![ring, raw_tp, tp, signal, crash, errors]
}

/// A scenario of one spawned program killed on its first `execve`, read and compiled the
/// same way `fij run` does.
fn kill_on_execve(program: &Path) -> Result<(Scenario, CompiledCampaign)> {
    let text = format!(
        "[[target]]\nname = \"true\"\ncommand = [{:?}]\n\
         [[fault]]\nname = \"kill-on-execve\"\ntarget = \"true\"\naction = \"kill\"\n\
         trigger = {{ syscall = \"execve\" }}\nnth = 1\n",
        program.display().to_string()
    );
    let scenario = crate::scenario::parse_str(Path::new("<fij doctor>"), &text)?;
    let compiled = compile(&scenario, 0)?;
    Ok((scenario, compiled))
}

/// End to end: a gated child about to exec a program is made a target with a rule "SIGKILL on the
/// first execve", released, and must die by SIGKILL — sent by the kernel program, not by fij.
fn prove_send_signal(kernel: &mut Kernel) -> Result<String> {
    // Any executable does: the victim is killed entering its execve, before it runs a thing.
    // fij's own needs no PATH and no other program on the machine.
    let program = std::env::current_exe().context("finding fij's own executable")?;
    let (scenario, compiled) = kill_on_execve(&program)?;
    kernel.write_decisions(&compiled, &targets::self_and_ancestors())?;
    kernel.arm(monotonic_ns(), compiled.seed)?;

    let TargetSource::Command { argv, .. } = &scenario.targets[0].source else {
        unreachable!()
    };
    let mut child = Victim::spawn(&program, argv)?;
    kernel.add_target(
        child.pid(),
        TargetProcess {
            target_idx: 0,
            instance: 0,
            generation: monotonic_ns(),
            ..TargetProcess::default()
        },
    )?;
    child.release()?;
    let status = child.wait(CHILD_TIMEOUT)?;
    kernel.disarm()?;
    let seen = drain_events(kernel);

    let pid = child.pid();
    match targets::describe_status(status) {
        (_, Some(sig)) if sig == libc::SIGKILL => {
            let injections = kernel.counters(0).map_or(0, |c| c.injections);
            if injections == 0 {
                bail!(
                    "{} died by SIGKILL, but not from fij: the kernel counted no injection; events: {seen}",
                    program.display()
                );
            }
            Ok(format!(
                "{} (pid {pid}) killed by SIGKILL from fij_sys_enter on its execve ({injections} injection); events: {seen}",
                program.display()
            ))
        }
        (_, Some(sig)) => bail!(
            "{} died by {} instead of SIGKILL; events: {seen}",
            program.display(),
            signals::name(sig)
        ),
        (Some(code), _) => bail!(
            "{} exited with code {code}: no signal was delivered; events: {seen}",
            program.display()
        ),
        (None, None) => bail!("unexpected wait status {status:#x}"),
    }
}

/// The ring's records after the child is gone, summarised ("injection (bpf_send_signal → 0), exit (SIGKILL)").
fn drain_events(kernel: &mut Kernel) -> String {
    let Some(mut ring) = kernel.take_events() else {
        return "ring already taken".into();
    };
    let mut seen = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() < size_of::<Event>() {
            continue;
        }
        // SAFETY: the kernel wrote an `Event` (same repr(C) definition, same build).
        let e = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
        seen.push(match e.kind {
            EVENT_INJECTION if e.result == SIGNAL_REFUSED => {
                "injection (refused: protected)".to_owned()
            }
            EVENT_INJECTION => format!("injection (bpf_send_signal → {})", e.result),
            EVENT_EXIT if e.result < 0 => "exit (status unknown)".to_owned(),
            EVENT_EXIT => match targets::describe_status(e.result) {
                (_, Some(sig)) => format!("exit ({})", signals::name(sig)),
                (code, _) => format!("exit (code {})", code.unwrap_or(-1)),
            },
            other => format!("event kind {other}"),
        });
    }
    if seen.is_empty() {
        "none".into()
    } else {
        seen.join(", ")
    }
}

/// A gated child that is killed and reaped whatever happens, unless it was reaped already.
struct Victim {
    child: GatedChild,
    reaped: bool,
}

impl Victim {
    fn spawn(program: &Path, argv: &[String]) -> Result<Self> {
        Ok(Self {
            child: GatedChild::spawn(program, argv, None, &[], (None, None), &[])?,
            reaped: false,
        })
    }

    fn pid(&self) -> u32 {
        self.child.pid
    }

    fn release(&mut self) -> Result<()> {
        self.child.release()
    }

    /// Waits for the child's exit and reaps it; its wait status.
    fn wait(&mut self, timeout: Duration) -> Result<i32> {
        let pid = self.child.pid as i32;
        let give_up = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child with WNOHANG.
            match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
                0 if Instant::now() > give_up => {
                    bail!("the child (pid {pid}) was still running after {timeout:?}")
                }
                0 => std::thread::sleep(Duration::from_millis(5)),
                r if r == pid => {
                    self.reaped = true;
                    return Ok(status);
                }
                _ => {
                    // Not our child any more (reaped elsewhere): never signal that pid.
                    self.reaped = true;
                    return Err(io::Error::last_os_error()).context("waiting for the child");
                }
            }
        }
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: our own unreaped child, so the pid cannot have been reused.
            unsafe {
                libc::kill(self.child.pid as i32, libc::SIGKILL);
                libc::waitpid(self.child.pid as i32, std::ptr::null_mut(), 0);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Probe program types: the no-op programs of `probes.rs` try what triggers need.

const DISABLES_UPROBE: &str = "uprobe/uretprobe triggers";
const DISABLES_KPROBE: &str = "kprobe/kretprobe triggers";
const DISABLES_KPROBE_NOT_BUILT: &str =
    "kprobe/kretprobe triggers (kernel built without CONFIG_KPROBES)";
const DISABLES_TC: &str =
    "the planned `crash`/`partition` actions (packet filtering on target traffic)";

fn check_probes() -> Vec<Check> {
    // A second copy of the object: loading it only creates maps, programs load one by one below.
    // Everything it holds is detached and unloaded when `probes` is dropped.
    let mut probes = match Ebpf::load(kernel::OBJECT).context("loading fij's eBPF object") {
        Ok(probes) => probes,
        Err(e) => return skip_probes(&one_line(&format!("{e:#}"))),
    };
    vec![
        Check::new("uprobe", false, DISABLES_UPROBE, check_uprobe(&mut probes)),
        check_kprobe(&mut probes),
        Check::new("tc / tcx", false, DISABLES_TC, check_tc(&mut probes)),
        Check::new(
            "fentry / fmod_ret",
            false,
            DISABLES_OTHER_ERRORS,
            check_fentry(&mut probes),
        ),
    ]
}

/// What a kernel without bpf_override_return and BPF trampolines loses (fij has no program for
/// either yet, so today it loses nothing more).
const DISABLES_OTHER_ERRORS: &str = "`action = \"error\"` on calls neither the cgroup hooks nor BPF LSM can fail, of \
     adopted or selected targets (not built in fij yet; `command` targets use seccomp)";

const DISABLES_LSM_ERRORS: &str =
    "`action = \"error\"` on the read, write and open families of adopted or selected targets";

/// BPF LSM, tried for real: fij's `file_open` program loaded and attached, then detached (with
/// the object's layout unpatched and its target set empty, it lets every call through).
/// Kernels that list `bpf` among their LSMs may still refuse the load (EPERM on some hosts).
pub(crate) fn try_bpf_lsm() -> Result<String> {
    let mut ebpf = Ebpf::load(kernel::OBJECT).context("loading fij's eBPF object")?;
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let (hook, name) = kernel::PROGS_LSM[1];
    let program: &mut aya::programs::Lsm = program(&mut ebpf, name)?;
    program
        .load(hook, &btf)
        .with_context(|| format!("loading {name} on bpf_lsm_{hook}"))?;
    let link = program
        .attach()
        .with_context(|| format!("attaching {name}"))?;
    program
        .detach(link)
        .with_context(|| format!("detaching {name}"))?;
    Ok(format!("{name} loaded and attached to the LSM hook {hook}"))
}

/// BPF trampolines, tried with a no-op fentry program (fmod_ret needs the same trampolines).
fn check_fentry(ebpf: &mut Ebpf) -> Result<String> {
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let program: &mut FEntry = program(ebpf, PROBE_FENTRY)?;
    program
        .load(KPROBE_FUNCTION, &btf)
        .with_context(|| format!("loading {PROBE_FENTRY} on {KPROBE_FUNCTION}"))?;
    let link = program
        .attach()
        .with_context(|| format!("attaching {PROBE_FENTRY}"))?;
    program
        .detach(link)
        .with_context(|| format!("detaching {PROBE_FENTRY}"))?;
    Ok(format!(
        "{PROBE_FENTRY} attached to {KPROBE_FUNCTION}: trampolines (fentry, fmod_ret) work; fij has no fmod_ret program yet"
    ))
}

fn skip_probes(why: &str) -> Vec<Check> {
    vec![
        Check::skipped("uprobe", false, DISABLES_UPROBE, why),
        Check::skipped("kprobe", false, DISABLES_KPROBE, why),
        Check::skipped("tc / tcx", false, DISABLES_TC, why),
        Check::skipped("fentry / fmod_ret", false, DISABLES_OTHER_ERRORS, why),
    ]
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?;
    program
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

fn check_uprobe(ebpf: &mut Ebpf) -> Result<String> {
    let program: &mut UProbe = program(ebpf, PROBE_UPROBE)?;
    program
        .load()
        .with_context(|| format!("loading {PROBE_UPROBE} (verifier)"))?;
    let libc = loaded_libc().unwrap_or_else(|| PathBuf::from("libc"));
    let link = program
        .attach(UPROBE_SYMBOL, &libc, UProbeScope::CallingProcess)
        .with_context(|| {
            format!(
                "attaching {PROBE_UPROBE} to {UPROBE_SYMBOL} in {}",
                libc.display()
            )
        })?;
    // SAFETY: getpid has no preconditions; it runs the probe once.
    unsafe { libc::getpid() };
    program
        .detach(link)
        .with_context(|| format!("detaching {PROBE_UPROBE}"))?;
    Ok(format!(
        "{PROBE_UPROBE} attached to {UPROBE_SYMBOL} in {}",
        libc.display()
    ))
}

/// The C library this process has mapped, from /proc/self/maps.
fn loaded_libc() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(PathBuf::from)
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libc.so") || n.starts_with("libc-"))
        })
}

fn check_kprobe(ebpf: &mut Ebpf) -> Check {
    let program: &mut KProbe = match program(ebpf, PROBE_KPROBE) {
        Ok(program) => program,
        Err(e) => return Check::new("kprobe", false, DISABLES_KPROBE, Err(e)),
    };
    if let Err(e) = program.load() {
        let e = anyhow::Error::from(e).context(format!("loading {PROBE_KPROBE} (verifier)"));
        return Check::new("kprobe", false, DISABLES_KPROBE, Err(e));
    }
    match program.attach(KPROBE_FUNCTION, 0) {
        Ok(link) => {
            let result = program
                .detach(link)
                .map(|()| format!("{PROBE_KPROBE} attached to {KPROBE_FUNCTION}"))
                .with_context(|| format!("detaching {PROBE_KPROBE}"));
            Check::new("kprobe", false, DISABLES_KPROBE, result)
        }
        Err(e) => {
            let (why, not_built) = kprobe_support();
            let e = anyhow::Error::from(e);
            let detail = anyhow!("loaded, but attach to {KPROBE_FUNCTION} failed: {e:#}; {why}");
            let disables = if not_built {
                DISABLES_KPROBE_NOT_BUILT
            } else {
                DISABLES_KPROBE
            };
            Check::new("kprobe", false, disables, Err(detail))
        }
    }
}

/// Why kprobes may be missing, from the kernel's own files (supporting detail only); and
/// whether the kernel was built without them.
fn kprobe_support() -> (String, bool) {
    let (config, not_built) = match kernel_config() {
        Some((source, text)) => match config_option(&text, "CONFIG_KPROBES") {
            Some(value) if value == "n" => (format!("CONFIG_KPROBES is not set ({source})"), true),
            Some(value) => (format!("CONFIG_KPROBES={value} ({source})"), false),
            None => (format!("CONFIG_KPROBES absent from {source}"), true),
        },
        None => ("kernel config not found".to_owned(), false),
    };
    let events = Path::new(TRACEFS).join("kprobe_events");
    let events = if events.exists() {
        "exists"
    } else {
        "does not exist"
    };
    (
        format!("{config}; {TRACEFS}/kprobe_events {events}"),
        not_built,
    )
}

/// The running kernel's build configuration: /boot/config-RELEASE or /proc/config.gz.
pub(crate) fn kernel_config() -> Option<(String, String)> {
    let boot = format!("/boot/config-{}", uname().0);
    if let Ok(text) = std::fs::read_to_string(&boot) {
        return Some((boot, text));
    }
    let gz = std::fs::File::open(PROC_CONFIG_GZ).ok()?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .ok()?;
    Some((PROC_CONFIG_GZ.to_owned(), text))
}

/// The value of `option` in a kernel .config: `y`, `m`, a string…, or `n` for "is not set".
pub(crate) fn config_option(config: &str, option: &str) -> Option<String> {
    config.lines().find_map(|line| {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# ") {
            return (rest.strip_prefix(option)? == " is not set").then(|| "n".to_owned());
        }
        line.strip_prefix(option)?
            .strip_prefix('=')
            .map(str::to_owned)
    })
}

/// tcx first (kernel ≥ 6.6, what aya uses there); the legacy clsact qdisc when tcx fails.
fn check_tc(ebpf: &mut Ebpf) -> Result<String> {
    let program: &mut SchedClassifier = program(ebpf, PROBE_TC)?;
    program
        .load()
        .with_context(|| format!("loading {PROBE_TC} (verifier)"))?;
    let tcx = program
        .attach_with_options(
            TC_INTERFACE,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .context("tcx attach");
    match tcx {
        Ok(link) => {
            program.detach(link).context("tcx detach")?;
            Ok(format!(
                "tcx: {PROBE_TC} attached to {TC_INTERFACE} ingress, detached"
            ))
        }
        Err(tcx_error) => match legacy_clsact(program) {
            Ok(detail) => Ok(format!("tcx unavailable ({tcx_error:#}); {detail}")),
            Err(e) => Err(e.context(format!("tcx unavailable ({tcx_error:#}); legacy clsact"))),
        },
    }
}

fn legacy_clsact(program: &mut SchedClassifier) -> Result<String> {
    let qdisc = AddedClsact::add(TC_INTERFACE)?;
    let link = program
        .attach_with_options(
            TC_INTERFACE,
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .context("netlink attach")?;
    program.detach(link).context("netlink detach")?;
    let qdisc = match qdisc {
        Some(qdisc) => {
            qdisc
                .remove()
                .context("removing the clsact qdisc fij added")?;
            "clsact qdisc added and removed"
        }
        None => "the existing clsact qdisc left as found",
    };
    Ok(format!(
        "legacy clsact: {PROBE_TC} attached to {TC_INTERFACE} ingress, detached; {qdisc}"
    ))
}

/// A clsact qdisc that this process added, removed again when dropped. A qdisc that was already
/// there is never represented, so it is never removed.
struct AddedClsact {
    ifindex: u32,
    removed: bool,
}

impl AddedClsact {
    /// Adds clsact to `iface`: `None` when it already had one.
    fn add(iface: &str) -> Result<Option<Self>> {
        let c_iface = CString::new(iface)?;
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c_iface.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("interface {iface}"));
        }
        match qdisc_add_clsact(iface) {
            Ok(()) => Ok(Some(Self {
                ifindex,
                removed: false,
            })),
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("adding a clsact qdisc to {iface}")),
        }
    }

    fn remove(mut self) -> io::Result<()> {
        self.removed = true;
        delete_clsact(self.ifindex)
    }
}

impl Drop for AddedClsact {
    fn drop(&mut self) {
        if !self.removed {
            let _ = delete_clsact(self.ifindex);
        }
    }
}

/// `tc qdisc del dev IFACE clsact` over rtnetlink (aya 0.14 can add clsact but not remove it).
fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let mut qdisc = TcMessage::with_index(ifindex as i32);
    qdisc.header.parent = TcHandle::CLSACT;
    qdisc.header.handle = TcHandle {
        major: u16::MAX,
        minor: 0,
    };
    qdisc.attributes.push(TcAttribute::Kind("clsact".into()));
    rtnetlink(
        RouteNetlinkMessage::DelQueueDiscipline(qdisc),
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .map(drop)
}

/// Whether interface `ifindex` has a clsact qdisc: `tc qdisc show dev IFACE` over rtnetlink.
#[cfg(test)]
fn has_clsact(ifindex: u32) -> io::Result<bool> {
    use netlink_packet_core::NLM_F_DUMP;
    let qdiscs = rtnetlink(
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
    )?;
    Ok(qdiscs.iter().any(|message| {
        matches!(message, RouteNetlinkMessage::NewQueueDiscipline(q)
            if q.header.index == ifindex as i32
                && q.attributes.contains(&TcAttribute::Kind("clsact".into())))
    }))
}

/// Sends one rtnetlink request and reads its answer to the end: the messages of a dump (up to
/// NLMSG_DONE), or the acknowledgement of a change (an error message with code 0).
fn rtnetlink(request: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut answers = Vec::new();
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        let mut rest = &datagram[..];
        while !rest.is_empty() {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            // Messages are 4-byte aligned within a datagram.
            let length = (message.header.length as usize).next_multiple_of(4);
            match message.payload {
                NetlinkPayload::InnerMessage(answer) => answers.push(answer),
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::Error(e) if e.code.is_none() => return Ok(answers),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                _ => {}
            }
            if length == 0 {
                break;
            }
            rest = rest.get(length..).unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "# Kernel config\nCONFIG_UPROBES=y\n# CONFIG_KPROBES is not set\nCONFIG_KPROBES_ON_FTRACE=y\n\
                          CONFIG_LOCALVERSION=\"-fc\"\n# CONFIG_KPROBE_EVENTS is not set\n";

    #[test]
    fn config_options_are_read_exactly() {
        assert_eq!(
            config_option(CONFIG, "CONFIG_KPROBES").as_deref(),
            Some("n")
        );
        assert_eq!(
            config_option(CONFIG, "CONFIG_UPROBES").as_deref(),
            Some("y")
        );
        assert_eq!(
            config_option(CONFIG, "CONFIG_KPROBES_ON_FTRACE").as_deref(),
            Some("y")
        );
        assert_eq!(
            config_option(CONFIG, "CONFIG_KPROBE_EVENTS").as_deref(),
            Some("n")
        );
        assert_eq!(
            config_option(CONFIG, "CONFIG_LOCALVERSION").as_deref(),
            Some("\"-fc\"")
        );
        assert_eq!(config_option(CONFIG, "CONFIG_KPROBE"), None);
        assert_eq!(config_option(CONFIG, "CONFIG_BPF"), None);
    }

    fn check(name: &'static str, status: Status, required: bool) -> Check {
        Check {
            name,
            status,
            detail: String::new(),
            disables: "x",
            required,
        }
    }

    #[test]
    fn only_required_items_decide_all_ok() {
        let report = |checks| Report {
            kernel: ("6.18".into(), "x86_64".into()),
            checks,
        };
        let optional_missing = report(vec![
            check("root", Status::Ok, true),
            check("kprobe", Status::Missing, false),
        ]);
        assert!(optional_missing.all_ok());
        assert!(
            optional_missing
                .to_string()
                .ends_with("\nfij run can work on this kernel; optional, missing: kprobe\n")
        );
        assert!(!report(vec![check("root", Status::Missing, true)]).all_ok());
        assert!(!report(vec![check("bpf_send_signal", Status::Skipped, true)]).all_ok());
    }

    #[test]
    fn multi_line_errors_become_one_line() {
        assert_eq!(one_line("attach failed: ENOENT"), "attach failed: ENOENT");
        assert_eq!(
            one_line("load: Verifier output:\n0: r0 = 0\n\n1: exit\n"),
            "load: Verifier output: | 0: r0 = 0 | 1: exit"
        );
        let log = "load failed: Verifier output:\n0: a\n1: b\n2: c\n3: d\nR0 !read_ok\n";
        assert_eq!(
            one_line(log),
            "load failed: Verifier output: … 2: c | 3: d | R0 !read_ok"
        );
    }

    /// The legacy path is not taken on kernels with tcx; this runs it directly.
    #[test]
    #[ignore = "needs root; adds and removes a clsact qdisc on lo"]
    fn legacy_clsact_leaves_no_qdisc_behind() {
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        let clsact_on_lo = || has_clsact(lo).unwrap();
        let had_clsact = clsact_on_lo();
        let mut ebpf = Ebpf::load(kernel::OBJECT).unwrap();
        let program: &mut SchedClassifier = program(&mut ebpf, PROBE_TC).unwrap();
        program.load().unwrap();
        let detail = legacy_clsact(program).unwrap();
        let expected = if had_clsact {
            "left as found"
        } else {
            "added and removed"
        };
        assert!(detail.contains(expected), "{detail}");
        assert_eq!(clsact_on_lo(), had_clsact);
        // The qdisc listing sees a clsact that is there, and its removal.
        if !had_clsact {
            let added = AddedClsact::add(TC_INTERFACE).unwrap().unwrap();
            assert!(clsact_on_lo());
            added.remove().unwrap();
            assert!(!clsact_on_lo());
        }
    }
}
