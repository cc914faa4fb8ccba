//! fij's kernel side as seen from userspace: loads the embedded object, attaches the programs a
//! scenario needs, and writes the rules into the maps. All links are owned by file descriptors of
//! this process, so they go away with it — also when fij is killed.
use std::collections::BTreeMap;

use crate::{
    InvalidInput,
    compile::CompiledCampaign,
    scenario::{Probe, ProbeKind, ProbeLocation},
    selectors::Resolved,
};
use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, Queue, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSock, KProbe, PerfEvent, RawTracePoint, SchedClassifier,
        TcAttachType, TracePoint, UProbe,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use fij_common::{
    COMM_KEY_LEN, CONFIG_ARMED, CONFIG_COUNTER_SLOTS, CONFIG_DUE, CONFIG_FAULTS,
    CONFIG_NEXT_COUNTER_SLOT, CONFIG_SEED, CONFIG_SELECTORS, CONFIG_SILENCED,
    CONFIG_SILENT_ADDRESSES, CONFIG_START_NS, CrashMark, EXE_KEY_LEN, FaultCounters, FaultRule,
    HookFaults, HookKey, KernelLayout, MAX_FAULTS_PER_HOOK, SELECTOR_CGROUP, SELECTOR_COMM,
    SELECTOR_EXE, SELECTOR_UID, SYSCALL_SLOTS, SelectKey, SilenceEntry, SilenceKey,
    TARGET_SET_EPOCH_LOADER, TargetProcess, counter_slots, loader_counter_slots,
};

/// The eBPF object built from `fij-ebpf` by this crate's build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fij-ebpf.o"));

/// Program names in the object, one per hook.
pub const PROG_SYS_ENTER: &str = "fij_sys_enter";
pub const PROG_FORK: &str = "fij_fork";
pub const PROG_EXIT: &str = "fij_exit";
pub const PROG_SOCK_RELEASE: &str = "fij_sock_release";
pub const PROG_UDP_BIND4: &str = "fij_udp_bind4";
pub const PROG_UDP_BIND6: &str = "fij_udp_bind6";
pub const PROG_TCP_STATE: &str = "fij_tcp_state";
pub const PROG_TASK_FREE: &str = "fij_task_free";
pub const PROG_TC_INGRESS: &str = "fij_tc_ingress";
pub const PROG_TC_EGRESS: &str = "fij_tc_egress";
pub const PROG_TICK: &str = "fij_tick";
pub const PROG_EXEC: &str = "fij_exec";
pub const PROG_TRACEPOINT: &str = "fij_tracepoint";
pub const PROG_UPROBE: &str = "fij_uprobe";
pub const PROG_URETPROBE: &str = "fij_uretprobe";
pub const PROG_KPROBE: &str = "fij_kprobe";
pub const PROG_KRETPROBE: &str = "fij_kretprobe";
/// The cgroup hooks that fail calls, per `ERRNO_HOOK_*` (index): one or two programs each.
pub const PROGS_ERRNO: [&[&str]; 6] = [
    &["fij_errno_connect4", "fij_errno_connect6"],
    &["fij_errno_bind4", "fij_errno_bind6"],
    &["fij_errno_sendmsg4", "fij_errno_sendmsg6"],
    &["fij_errno_getsockopt"],
    &["fij_errno_setsockopt"],
    &["fij_errno_socket"],
];

/// The BPF LSM hooks that fail calls (kernel hook name, program).
pub const PROGS_LSM: [(&str, &str); 2] = [
    ("file_permission", "fij_errno_file_permission"),
    ("file_open", "fij_errno_file_open"),
];

/// Task-clock sampling period of the time-trigger tick: 1 ms of the target's own CPU time.
const TICK_PERIOD_NS: u64 = 1_000_000;

pub struct Kernel {
    ebpf: Ebpf,
    targets: HashMap<MapData, u32, TargetProcess>,
    target_flags: Array<MapData, u8>,
    protected: HashMap<MapData, u32, u8>,
    hooks: HashMap<MapData, HookKey, HookFaults>,
    syscall_rows: Array<MapData, u32>,
    syscall_hooks: Array<MapData, u16>,
    syscall_hook_faults: Array<MapData, HookFaults>,
    rules: Array<MapData, FaultRule>,
    counters: Array<MapData, FaultCounters>,
    config: Array<MapData, u64>,
    lost: Array<MapData, u64>,
    crashed: HashMap<MapData, u32, CrashMark>,
    stopped: HashMap<MapData, u32, fij_common::StopMark>,
    selected: HashMap<MapData, SelectKey, u8>,
    due: HashMap<MapData, u32, u32>,
    kprobe_hooks: HashMap<MapData, u64, u32>,
    kretprobe_hooks: HashMap<MapData, u64, u32>,
    silenced: HashMap<MapData, SilenceKey, SilenceEntry>,
    silent_addresses: HashMap<MapData, [u8; 16], u32>,
    events: Option<RingBuf<MapData>>,
    target_set_epoch: Array<MapData, u64>,
    /// How many targets the loader added: its own counter in `TARGET_SET_EPOCH`, of which it
    /// is the only writer.
    loader_additions: u64,
    free_counter_slots: Queue<MapData, u32>,
    /// Rows of `SLOT_COUNTERS`, and how many of the loader's range it gave out.
    counter_slots: u32,
    loader_counter_slots_taken: u32,
}

/// Whether `key` is a syscall trigger's hook (its id is the raw syscall number).
fn is_syscall_hook(key: &HookKey) -> bool {
    key.hook < SYSCALL_SLOTS
}

/// How large the tables whose need depends on the campaign are made at load: their entries
/// are preallocated, and an unused 65,536-entry table costs ~1 ms of every start.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableSizes {
    /// The silence tables at full size (crash, partition, the silencer); else one entry.
    pub silences: bool,
    /// Targets indexable in `SYSCALL_ROWS`: the highest target index with a syscall hook + 1.
    pub syscall_targets: u32,
    /// Targets with a syscall hook: the rows of `SYSCALL_HOOKS`.
    pub syscall_rows: u32,
    /// The campaign's faults: the width of a row of `SLOT_COUNTERS`.
    pub faults: u32,
    /// Rows of `SLOT_COUNTERS` (per-process counters without a hash lookup): see
    /// `fij_common::counter_slots`. Processes beyond them count in the `PROCESS_COUNTERS` hash.
    pub counter_slots: u32,
}

/// `FIJ_COUNTER_SLOTS=N`: at most N rows of per-process counters (fewer than the campaign
/// would have), so that tests can send processes down the hash path, which otherwise needs
/// thousands of live target processes to reach.
const COUNTER_SLOTS_ENV: &str = "FIJ_COUNTER_SLOTS";

impl TableSizes {
    pub fn for_campaign(compiled: &CompiledCampaign) -> Self {
        let syscall_targets: std::collections::BTreeSet<u32> = compiled
            .hooks
            .keys()
            .filter(|key| is_syscall_hook(key))
            .map(|key| key.target_idx)
            .collect();
        let faults = compiled.rules.len() as u32;
        let most = std::env::var(COUNTER_SLOTS_ENV)
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(u32::MAX);
        Self {
            silences: compiled.attach.crash || compiled.attach.silencer,
            syscall_targets: syscall_targets.last().map_or(0, |last| last + 1),
            syscall_rows: syscall_targets.len() as u32,
            faults,
            counter_slots: counter_slots(faults).min(most),
        }
    }
}

/// An `EbpfLoader` made without parsing the kernel's BTF. aya 0.14's `EbpfLoader::new()` always
/// parses `/sys/kernel/btf/vmlinux` (15–45 ms here, the largest part of start to armed), even
/// when `.btf(None)` follows (aya-rs/aya#1172). fij needs no kernel BTF to load its object: the
/// BTF is only for CO-RE relocations, which Rust eBPF does not emit (offsets come in `LAYOUT`).
/// So the loader is made on a short-lived thread with its own mount namespace, in which
/// `/sys/kernel/btf` is an empty tmpfs and the parse fails at once. Nothing is mounted in fij's
/// namespace or the host's, and the namespace goes away with the thread, also if fij is killed.
/// Where a step is refused (no CAP_SYS_ADMIN, a locked-down mount namespace), the plain
/// constructor is used: slower, same result.
fn loader_without_kernel_btf() -> EbpfLoader<'static> {
    std::thread::spawn(|| {
        hide_kernel_btf_from_this_thread()
            .ok()
            .map(|()| EbpfLoader::new())
    })
    .join()
    .ok()
    .flatten()
    .unwrap_or_else(EbpfLoader::new)
}

/// Gives the calling thread a mount namespace of its own in which `/sys/kernel/btf` is empty.
fn hide_kernel_btf_from_this_thread() -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: unshare and mount take no pointers besides the NUL-terminated literals passed.
    unsafe {
        // CLONE_NEWNS implies CLONE_FS: only this thread moves to the new namespace.
        check(libc::unshare(libc::CLONE_NEWNS))?;
        // Private before anything is mounted, so no mount propagates back to fij's namespace.
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            c"fij-no-btf".as_ptr(),
            c"/sys/kernel/btf".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ))
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<T> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Kernel {
    /// Loads the object (maps are created; no program is loaded or attached yet), its tables
    /// sized by `sizes`. With `kernel_log`, the programs' diagnostics (why an injection was
    /// refused or skipped, a lost event) are on: read them with [`Kernel::take_kernel_log`].
    pub fn load(layout: &KernelLayout, kernel_log: bool, sizes: &TableSizes) -> Result<Self> {
        let mut loader = loader_without_kernel_btf();
        // aya-log's level in the programs: 0 turns every log statement into one global load.
        let log_level: u8 = if kernel_log { 5 } else { 0 };
        loader.override_global(aya_log::LEVEL, &log_level, true);
        // No kernel BTF for the loader (see `loader_without_kernel_btf`).
        loader.btf(None);
        loader.override_global("LAYOUT", layout, true);
        // One flag byte per possible pid (pids above a later-raised pid_max use the hash alone).
        loader.map_max_entries("TARGET_FLAGS", pid_max());
        if !sizes.silences {
            loader.map_max_entries("SILENCED", 1);
            loader.map_max_entries("BOUND_UDP", 1);
        }
        loader.map_max_entries("SYSCALL_ROWS", sizes.syscall_targets.max(1));
        loader.map_max_entries("SYSCALL_HOOKS", (sizes.syscall_rows * SYSCALL_SLOTS).max(1));
        loader.map_max_entries("SLOT_COUNTERS", (sizes.counter_slots * sizes.faults).max(1));
        loader.map_max_entries("FREE_COUNTER_SLOTS", sizes.counter_slots.max(1));
        // FIJ_VERIFIER_LOG=1: the verifier's full trace in load errors, for debugging programs.
        if std::env::var_os("FIJ_VERIFIER_LOG").is_some() {
            loader
                .verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
        }
        let mut ebpf = loader.load(OBJECT).context("loading fij's eBPF object")?;
        let mut config: Array<MapData, u64> = take(&mut ebpf, "CONFIG")?;
        // The kernel hands out the rows after the loader's.
        config
            .set(CONFIG_COUNTER_SLOTS, sizes.counter_slots as u64, 0)
            .context("writing the number of counter rows")?;
        config
            .set(
                CONFIG_NEXT_COUNTER_SLOT,
                loader_counter_slots(sizes.counter_slots) as u64 + 1,
                0,
            )
            .context("writing the kernel's first counter row")?;
        Ok(Self {
            targets: take(&mut ebpf, "TARGETS")?,
            target_flags: take(&mut ebpf, "TARGET_FLAGS")?,
            protected: take(&mut ebpf, "PROTECTED")?,
            hooks: take(&mut ebpf, "HOOKS")?,
            syscall_rows: take(&mut ebpf, "SYSCALL_ROWS")?,
            syscall_hooks: take(&mut ebpf, "SYSCALL_HOOKS")?,
            syscall_hook_faults: take(&mut ebpf, "SYSCALL_HOOK_FAULTS")?,
            rules: take(&mut ebpf, "RULES")?,
            counters: take(&mut ebpf, "COUNTERS")?,
            config,
            free_counter_slots: take(&mut ebpf, "FREE_COUNTER_SLOTS")?,
            counter_slots: sizes.counter_slots,
            loader_counter_slots_taken: 0,
            lost: take(&mut ebpf, "EVENTS_LOST")?,
            crashed: take(&mut ebpf, "CRASHED")?,
            stopped: take(&mut ebpf, "STOPPED")?,
            selected: take(&mut ebpf, "SELECTED")?,
            due: take(&mut ebpf, "DUE")?,
            kprobe_hooks: take(&mut ebpf, "KPROBE_HOOKS")?,
            kretprobe_hooks: take(&mut ebpf, "KRETPROBE_HOOKS")?,
            silenced: take(&mut ebpf, "SILENCED")?,
            silent_addresses: take(&mut ebpf, "SILENT_ADDRESSES")?,
            events: Some(take(&mut ebpf, "EVENTS")?),
            target_set_epoch: take(&mut ebpf, "TARGET_SET_EPOCH")?,
            loader_additions: 0,
            ebpf,
        })
    }

    fn raw_tracepoint(&mut self, prog: &str, tracepoint: &str) -> Result<()> {
        let program: &mut RawTracePoint = self.program(prog)?.try_into()?;
        program
            .load()
            .with_context(|| format!("loading {prog} (verifier)"))?;
        program
            .attach(tracepoint)
            .with_context(|| format!("attaching {prog} to raw tracepoint {tracepoint}"))?;
        Ok(())
    }

    fn tracepoint(&mut self, prog: &str, category: &str, name: &str) -> Result<()> {
        let program: &mut TracePoint = self.program(prog)?.try_into()?;
        program
            .load()
            .with_context(|| format!("loading {prog} (verifier)"))?;
        program
            .attach(category, name)
            .with_context(|| format!("attaching {prog} to tracepoint {category}:{name}"))?;
        Ok(())
    }

    /// Installs a compiled campaign: attaches what it needs (and nothing else) and writes its
    /// rules, hook table and selections, the selector targets (resolved, with their target
    /// index) and the protected pids. Nothing is armed yet. Returns the interfaces the
    /// silencer is attached to (none without crash or partition faults).
    pub fn install(
        &mut self,
        compiled: &CompiledCampaign,
        layout: &KernelLayout,
        selectors: &[(u32, &Resolved)],
        protected: &[u32],
    ) -> Result<Vec<String>> {
        let attach = &compiled.attach;
        self.attach_lifecycle()?;
        if attach.syscalls {
            self.attach_syscalls()?;
        }
        self.attach_tracepoints(&attach.tracepoints)?;
        // A symbol or library that cannot be found is the scenario's fault, not fij's.
        self.attach_probes(&attach.probes)
            .map_err(|e| InvalidInput(format!("{e:#}")))?;
        for (target_idx, selector) in selectors {
            self.add_selector(selector, *target_idx)?;
        }
        if attach.exec {
            self.attach_exec()?;
        }
        if !attach.errno_hooks.is_empty() {
            self.attach_errno_hooks(&attach.errno_hooks)
                .context("setting up error injection (fij doctor tells what is missing)")?;
        }
        if !attach.lsm_hooks.is_empty() {
            self.attach_lsm_hooks(&attach.lsm_hooks).context(
                "setting up error injection in BPF LSM hooks (fij doctor tells what is missing)",
            )?;
        }
        if attach.crash {
            self.attach_crash(layout)
                .context("setting up crash (fij doctor tells what is missing)")?;
        }
        let mut interfaces = Vec::new();
        if attach.silencer {
            interfaces = self
                .attach_silencer()
                .context("setting up the silencer (fij doctor tells what is missing)")?;
        }
        self.write_decisions(compiled, protected)?;
        Ok(interfaces)
    }

    /// Writes a compiled campaign's decisions (rules, hook table, selections) and the protected
    /// pids into the maps; attaches nothing.
    pub fn write_decisions(
        &mut self,
        compiled: &CompiledCampaign,
        protected: &[u32],
    ) -> Result<()> {
        for pid in protected {
            self.protect(*pid)?;
        }
        for (id, rule) in compiled.rules.iter().enumerate() {
            self.rules
                .set(id as u32, rule, 0)
                .with_context(|| format!("writing rule {id}"))?;
        }
        // The exit hook deletes a process's counters of faults 0..CONFIG_FAULTS.
        self.config
            .set(CONFIG_FAULTS, compiled.rules.len() as u64, 0)
            .context("writing the number of faults")?;
        self.set_hooks(&compiled.hooks)?;
        for &(fault_id, instance) in &compiled.selections {
            self.selected
                .insert(SelectKey { fault_id, instance }, 1, 0)
                .context("writing a selection")?;
        }
        Ok(())
    }

    /// Fork and exit tracking: always needed, they keep the target set exact.
    pub fn attach_lifecycle(&mut self) -> Result<()> {
        self.raw_tracepoint(PROG_FORK, "sched_process_fork")?;
        self.tracepoint(PROG_EXIT, "sched", "sched_process_exit")
    }

    /// The syscall-entry hook: only attached when a fault has a syscall trigger.
    pub fn attach_syscalls(&mut self) -> Result<()> {
        self.raw_tracepoint(PROG_SYS_ENTER, "sys_enter")
    }

    /// Tracepoint triggers: tracepoint `i` gets program slot `fij_tracepoint_i`.
    pub fn attach_tracepoints(&mut self, tracepoints: &[(String, String)]) -> Result<()> {
        for (slot, (category, name)) in tracepoints.iter().enumerate() {
            self.tracepoint(&format!("{PROG_TRACEPOINT}_{slot}"), category, name)?;
        }
        Ok(())
    }

    /// Probe triggers; probe `i` of `probes` counts under hook `HOOK_PROBE | i` (the attach
    /// cookie for uprobes, `KPROBE_HOOKS[function address]` for kprobes and `KRETPROBE_HOOKS`
    /// for kretprobes).
    pub fn attach_probes(&mut self, probes: &[Probe]) -> Result<()> {
        for (index, probe) in probes.iter().enumerate() {
            match probe.kind {
                ProbeKind::Uprobe | ProbeKind::Uretprobe => {
                    self.attach_uprobe(index as u64, probe)?
                }
                ProbeKind::Kprobe | ProbeKind::Kretprobe => {
                    self.attach_kprobe(index as u32, probe)?
                }
            }
        }
        Ok(())
    }

    /// Loads a program attached more than once (probes, the tick) the first time it is needed:
    /// a program without an fd is not loaded yet.
    fn load_once(&mut self, name: &str) -> Result<()> {
        let program = self.program(name)?;
        if program.fd().is_err() {
            match program {
                aya::programs::Program::UProbe(p) => p.load()?,
                aya::programs::Program::KProbe(p) => p.load()?,
                aya::programs::Program::PerfEvent(p) => p.load()?,
                _ => anyhow::bail!("{name} is not loaded more than once"),
            }
        }
        Ok(())
    }

    fn attach_uprobe(&mut self, cookie: u64, probe: &Probe) -> Result<()> {
        let name = if probe.kind == ProbeKind::Uprobe {
            PROG_UPROBE
        } else {
            PROG_URETPROBE
        };
        self.load_once(name)
            .with_context(|| format!("loading {name} (verifier)"))?;
        let program: &mut UProbe = self.program(name)?.try_into()?;
        let location = match &probe.location {
            ProbeLocation::Symbol(s) => UProbeAttachLocation::Symbol(s),
            ProbeLocation::SymbolOffset(s, o) => UProbeAttachLocation::SymbolOffset(s, *o),
            ProbeLocation::Address(a) => UProbeAttachLocation::AbsoluteOffset(*a),
        };
        program
            .attach(
                UProbeAttachPoint {
                    location,
                    cookie: Some(cookie),
                },
                &probe.binary,
                UProbeScope::AllProcesses,
            )
            .with_context(|| format!("attaching {probe}"))?;
        Ok(())
    }

    fn attach_kprobe(&mut self, index: u32, probe: &Probe) -> Result<()> {
        anyhow::ensure!(
            std::path::Path::new(crate::scenario::KPROBE_PMU).exists(),
            "{probe}: this kernel has no kprobes (CONFIG_KPROBES is off); `fij doctor` lists what it supports"
        );
        let (function, offset) = match &probe.location {
            ProbeLocation::Symbol(s) => (s.as_str(), 0),
            ProbeLocation::SymbolOffset(s, o) => (s.as_str(), *o),
            ProbeLocation::Address(_) => anyhow::bail!("{probe}: kprobes take a function name"),
        };
        let address = kallsyms_address(function)?;
        let (hooks, name) = if probe.kind == ProbeKind::Kprobe {
            (&mut self.kprobe_hooks, PROG_KPROBE)
        } else {
            (&mut self.kretprobe_hooks, PROG_KRETPROBE)
        };
        hooks
            .insert(address + offset, index, 0)
            .context("writing the kprobe table")?;
        self.load_once(name)
            .with_context(|| format!("loading {name} (verifier)"))?;
        let program: &mut KProbe = self.program(name)?.try_into()?;
        program
            .attach(function, offset)
            .with_context(|| format!("attaching {probe}"))?;
        Ok(())
    }

    /// `crash`: the TCP state tracepoint, the UDP bind/release hooks on the cgroup v2 root (so
    /// they see every process's sockets) and the task-free hook, which together fill `SILENCED`.
    pub fn attach_crash(&mut self, layout: &KernelLayout) -> Result<()> {
        anyhow::ensure!(
            [layout.tcp_oldstate, layout.tcp_sport, layout.tcp_saddr_v6]
                .iter()
                .all(|&o| o != u32::MAX),
            "crash needs the sock:inet_sock_set_state tracepoint, whose format was not found in tracefs"
        );
        self.tracepoint(PROG_TCP_STATE, "sock", "inet_sock_set_state")?;
        let root = crate::net::cgroup2_root()?;
        let cgroup = std::fs::File::open(&root)
            .with_context(|| format!("opening cgroup {}", root.display()))?;
        for name in [PROG_UDP_BIND4, PROG_UDP_BIND6, PROG_SOCK_RELEASE] {
            let program: &mut CgroupSock = self.program(name)?.try_into()?;
            program
                .load()
                .with_context(|| format!("loading {name} (verifier)"))?;
            // Single = link flags 0: cgroup links are always multi-attach, other programs stay.
            program
                .attach(&cgroup, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to cgroup {}", root.display()))?;
        }
        self.raw_tracepoint(PROG_TASK_FREE, "sched_process_free")
    }

    /// `action = "error"`: the cgroup hooks `errno_hooks` (`ERRNO_HOOK_*`) on the cgroup-v2
    /// root, so they see every process's calls (the programs leave at once for non-targets).
    pub fn attach_errno_hooks(&mut self, errno_hooks: &[u32]) -> Result<()> {
        let root = crate::net::cgroup2_root()?;
        let cgroup = std::fs::File::open(&root)
            .with_context(|| format!("opening cgroup {}", root.display()))?;
        for &hook in errno_hooks {
            let names = PROGS_ERRNO
                .get(hook as usize)
                .ok_or_else(|| anyhow!("no program for error hook {hook}"))?;
            for name in names.iter() {
                let program = self.program(name)?;
                let loaded = match program {
                    aya::programs::Program::CgroupSockAddr(p) => p
                        .load()
                        .and_then(|()| p.attach(&cgroup, CgroupAttachMode::Single).map(drop)),
                    aya::programs::Program::CgroupSockopt(p) => p
                        .load()
                        .and_then(|()| p.attach(&cgroup, CgroupAttachMode::Single).map(drop)),
                    aya::programs::Program::CgroupSock(p) => p
                        .load()
                        .and_then(|()| p.attach(&cgroup, CgroupAttachMode::Single).map(drop)),
                    _ => anyhow::bail!("{name} is not a cgroup program"),
                };
                loaded.with_context(|| {
                    format!("loading and attaching {name} to cgroup {}", root.display())
                })?;
            }
        }
        Ok(())
    }

    /// `action = "error"` of adopted and selected targets: the BPF LSM programs on `hooks`
    /// (kernel hook names, `PROGS_LSM`), which see every process's calls through them.
    pub fn attach_lsm_hooks(&mut self, hooks: &[&str]) -> Result<()> {
        let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
        for &hook in hooks {
            let (_, name) = PROGS_LSM
                .iter()
                .find(|(h, _)| *h == hook)
                .ok_or_else(|| anyhow!("no program for the LSM hook {hook}"))?;
            let program: &mut aya::programs::Lsm = self.program(name)?.try_into()?;
            program
                .load(hook, &btf)
                .with_context(|| format!("loading {name} on bpf_lsm_{hook} (verifier)"))?;
            program
                .attach()
                .with_context(|| format!("attaching {name} to the LSM hook {hook}"))?;
        }
        Ok(())
    }

    /// The tc program that drops silenced tuples (`crash`, `partition`), on ingress and egress
    /// of every interface of fij's network namespace. Returns those interfaces.
    pub fn attach_silencer(&mut self) -> Result<Vec<String>> {
        let interfaces = crate::net::interfaces()?;
        for (name, direction) in [
            (PROG_TC_INGRESS, TcAttachType::Ingress),
            (PROG_TC_EGRESS, TcAttachType::Egress),
        ] {
            let program: &mut SchedClassifier = self.program(name)?.try_into()?;
            program
                .load()
                .with_context(|| format!("loading {name} (verifier)"))?;
            for iface in &interfaces {
                program.attach(iface, direction).with_context(|| {
                    format!("attaching {name} to {iface} {direction:?} (tcx, kernel ≥ 6.6)")
                })?;
            }
        }
        Ok(interfaces)
    }

    /// Registers a selector target: processes that match join the set in kernel (exec, fork).
    pub fn add_selector(&mut self, selector: &Resolved, target_idx: u32) -> Result<()> {
        let bit = match selector {
            Resolved::Comm(name) => {
                let mut key = [0u8; COMM_KEY_LEN];
                key[..name.len()].copy_from_slice(name.as_bytes());
                HashMap::<_, [u8; COMM_KEY_LEN], u32>::try_from(self.map("COMM_TARGETS")?)?
                    .insert(key, target_idx, 0)?;
                SELECTOR_COMM
            }
            Resolved::Exe(path) => {
                let mut key = [0u8; EXE_KEY_LEN];
                key[..path.len()].copy_from_slice(path.as_bytes());
                HashMap::<_, [u8; EXE_KEY_LEN], u32>::try_from(self.map("EXE_TARGETS")?)?
                    .insert(key, target_idx, 0)?;
                SELECTOR_EXE
            }
            Resolved::Uid(uid) => {
                HashMap::<_, u32, u32>::try_from(self.map("UID_TARGETS")?)?
                    .insert(uid, target_idx, 0)?;
                SELECTOR_UID
            }
            Resolved::Cgroup(id, _) => {
                HashMap::<_, u64, u32>::try_from(self.map("CGROUP_TARGETS")?)?
                    .insert(id, target_idx, 0)?;
                SELECTOR_CGROUP
            }
        };
        let bits = self.config.get(&CONFIG_SELECTORS, 0).unwrap_or(0) | bit;
        self.config.set(CONFIG_SELECTORS, bits, 0)?;
        Ok(())
    }

    /// The exec hook that catches processes matching a selector target.
    pub fn attach_exec(&mut self) -> Result<()> {
        self.tracepoint(PROG_EXEC, "sched", "sched_process_exec")
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
    }

    /// The time-trigger tick on process `pid` and its future children: lets a CPU-bound root
    /// process claim its due fault in its own context.
    pub fn attach_tick(&mut self, pid: u32) -> Result<()> {
        self.load_once(PROG_TICK)
            .with_context(|| format!("loading {PROG_TICK} (verifier)"))?;
        let program: &mut PerfEvent = self.program(PROG_TICK)?.try_into()?;
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::TaskClock),
                PerfEventScope::OneProcess { pid, cpu: None },
                SamplePolicy::Period(TICK_PERIOD_NS),
                true,
            )
            .with_context(|| {
                format!("attaching {PROG_TICK} to pid {pid} (task-clock perf event)")
            })?;
        Ok(())
    }

    /// Marks fault `fault_id` due for root process `pid`: its next syscall or tick fires it.
    pub fn set_due(&mut self, pid: u32, fault_id: u32) -> Result<()> {
        self.due
            .insert(pid, fault_id, 0)
            .context("marking a fault due")?;
        self.config.set(CONFIG_DUE, 1, 0)?;
        Ok(())
    }

    /// Whether a fault is due for `pid` and not claimed yet.
    pub fn is_due(&self, pid: u32) -> bool {
        self.due.get(&pid, 0).is_ok()
    }

    /// Claims the fault due for `pid` if the kernel has not: true when fij must fire it itself.
    pub fn claim_due(&mut self, pid: u32) -> Result<bool> {
        let claimed = self.due.remove(&pid).is_ok();
        if self.due.keys().next().is_none() {
            self.config.set(CONFIG_DUE, 0, 0)?;
        }
        Ok(claimed)
    }

    /// Marks `pid` crashed before fij itself kills it (a sleeping victim of a time trigger).
    pub fn mark_crashed(&mut self, pid: u32, mark: CrashMark) -> Result<()> {
        self.crashed.insert(pid, mark, 0).context("marking a crash")
    }

    /// Silences `keys` on behalf of `entry` (a partition; crashes are silenced in kernel).
    pub fn silence(&mut self, keys: &[SilenceKey], entry: SilenceEntry) -> Result<()> {
        for key in keys {
            self.silenced
                .insert(key, entry, 0)
                .context("silencing a tuple")?;
        }
        if !keys.is_empty() {
            self.config.set(CONFIG_SILENCED, 1, 0)?;
        }
        Ok(())
    }

    fn program(&mut self, name: &str) -> Result<&mut aya::programs::Program> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))
    }

    /// The silenced tuples held for process `tgid`.
    pub fn silenced_of(&self, tgid: u32) -> Vec<SilenceKey> {
        self.silenced
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, entry)| entry.tgid == tgid)
            .map(|(key, _)| key)
            .collect()
    }

    /// Lets the silenced tuples of `tgid` speak again. Returns how many were freed.
    pub fn recover(&mut self, tgid: u32) -> Result<usize> {
        let keys = self.silenced_of(tgid);
        for key in &keys {
            self.silenced
                .remove(key)
                .context("removing a silenced tuple")?;
        }
        if self.silenced.keys().next().is_none() {
            self.config.set(CONFIG_SILENCED, 0, 0)?;
        }
        Ok(keys.len())
    }

    /// Every silenced tuple, with why it is silent.
    pub fn silenced(&self) -> Vec<(SilenceKey, SilenceEntry)> {
        self.silenced.iter().filter_map(Result::ok).collect()
    }

    /// Whether any tuple or address is silenced (a crash is in effect).
    pub fn silence_active(&self) -> bool {
        self.silenced.keys().next().is_some() || self.silent_addresses.keys().next().is_some()
    }

    /// Silences every packet from or to `addresses` (16-byte form) on behalf of node crash
    /// `mark_id`, on every interface the silencer is attached to.
    pub fn silence_addresses(&mut self, addresses: &[[u8; 16]], mark_id: u32) -> Result<()> {
        for address in addresses {
            self.silent_addresses
                .insert(address, mark_id, 0)
                .context("silencing an address")?;
        }
        if !addresses.is_empty() {
            self.config.set(CONFIG_SILENT_ADDRESSES, 1, 0)?;
        }
        Ok(())
    }

    /// The silent addresses, with the mark id of the node crash that silenced each.
    pub fn silent_addresses(&self) -> Vec<([u8; 16], u32)> {
        self.silent_addresses
            .iter()
            .filter_map(Result::ok)
            .collect()
    }

    /// Lets the addresses node crash `mark_id` silenced speak again. Returns them.
    pub fn lift_addresses(&mut self, mark_id: u32) -> Result<Vec<[u8; 16]>> {
        let lifted: Vec<[u8; 16]> = self
            .silent_addresses()
            .into_iter()
            .filter(|(_, id)| *id == mark_id)
            .map(|(address, _)| address)
            .collect();
        for address in &lifted {
            self.silent_addresses
                .remove(address)
                .context("lifting an address's silence")?;
        }
        if self.silent_addresses.keys().next().is_none() {
            self.config.set(CONFIG_SILENT_ADDRESSES, 0, 0)?;
        }
        Ok(lifted)
    }

    /// Crashed processes whose task is not freed yet (their sockets may still be closing); the
    /// kernel drops each mark in `sched_process_free`.
    pub fn crashed(&self) -> Vec<u32> {
        self.crashed.keys().filter_map(Result::ok).collect()
    }

    pub fn protect(&mut self, pid: u32) -> Result<()> {
        self.protected
            .insert(pid, 1, 0)
            .with_context(|| format!("protecting pid {pid}"))
    }

    /// Adds `pid` to the target set (the hash, then its flag, then the epoch, as the kernel
    /// does): at any time, also while `pid` runs and makes syscalls.
    pub fn add_target(&mut self, pid: u32, mut entry: TargetProcess) -> Result<()> {
        entry.counter_slot = self.take_counter_slot();
        if let Err(e) = self.targets.insert(pid, entry, 0) {
            if entry.counter_slot != 0 {
                let _ = self.free_counter_slots.push(entry.counter_slot, 0);
            }
            return Err(e).with_context(|| format!("adding pid {pid} to the target set"));
        }
        if pid < self.target_flags.len() {
            self.target_flags
                .set(pid, 1, 0)
                .with_context(|| format!("flagging pid {pid}"))?;
        }
        // Voids every "not a target" that `fij_sys_enter` remembered, `pid`'s among them.
        self.loader_additions += 1;
        self.target_set_epoch
            .set(TARGET_SET_EPOCH_LOADER, self.loader_additions, 0)
            .context("moving the target set's epoch on")?;
        Ok(())
    }

    /// Takes `pid` out of the target set: a process the loader added after it had exited (no
    /// exit event will ever take it out), or whose pid went to another process meanwhile. Its
    /// row of counters is not given back: the process may also have exited just after the
    /// insert, and the kernel's exit program then freed the row already (a row lost in that
    /// rare race, rather than one row shared by two processes). The campaign is not armed yet,
    /// so nothing was counted in it.
    pub fn remove_target(&mut self, pid: u32) -> Result<()> {
        if pid < self.target_flags.len() {
            self.target_flags
                .set(pid, 0, 0)
                .with_context(|| format!("unflagging pid {pid}"))?;
        }
        let _ = self.targets.remove(&pid);
        // Voids what `fij_sys_enter` remembered of the entry: a new process with that pid may
        // have made a syscall meanwhile and been taken for a target.
        self.loader_additions += 1;
        self.target_set_epoch
            .set(TARGET_SET_EPOCH_LOADER, self.loader_additions, 0)
            .context("moving the target set's epoch on")?;
        Ok(())
    }

    /// A free row of per-process counters (1-based; 0: none left): from the loader's own range
    /// (`fij_common::loader_counter_slots`), else one that an exited process freed.
    fn take_counter_slot(&mut self) -> u32 {
        if self.loader_counter_slots_taken < loader_counter_slots(self.counter_slots) {
            self.loader_counter_slots_taken += 1;
            return self.loader_counter_slots_taken;
        }
        self.free_counter_slots.pop(0).unwrap_or(0)
    }

    /// Whether `pid` is in the target set now (a recycled pid is not).
    pub fn is_target(&self, pid: u32) -> bool {
        self.targets.get(&pid, 0).is_ok()
    }

    /// The target-set entry of `pid`, if it is a target now.
    pub fn target_process(&self, pid: u32) -> Option<TargetProcess> {
        self.targets.get(&pid, 0).ok()
    }

    /// Live target processes (tgid → entry), as the kernel sees them now.
    pub fn target_processes(&self) -> Vec<(u32, TargetProcess)> {
        self.targets.iter().filter_map(Result::ok).collect()
    }

    /// Installs the hook table: for each (target, syscall), the faults to evaluate in order.
    /// Writes the hook table: syscall hooks into the syscall arrays (rows in the order of
    /// [`TableSizes::for_campaign`]), every other hook into `HOOKS`.
    fn set_hooks(&mut self, hooks: &BTreeMap<HookKey, Vec<u32>>) -> Result<()> {
        let mut rows: BTreeMap<u32, u32> = BTreeMap::new();
        let mut syscall_hooks = 0u32;
        for (key, ids) in hooks {
            // The compile stage refuses more, at the fault's position.
            assert!(
                ids.len() <= MAX_FAULTS_PER_HOOK,
                "compile checks faults per hook"
            );
            let mut value = HookFaults {
                len: ids.len() as u32,
                fault_ids: [0; MAX_FAULTS_PER_HOOK],
            };
            value.fault_ids[..ids.len()].copy_from_slice(ids);
            if !is_syscall_hook(key) {
                self.hooks
                    .insert(key, value, 0)
                    .context("writing the hook table")?;
                continue;
            }
            let next_row = rows.len() as u32;
            let row = *rows.entry(key.target_idx).or_insert(next_row);
            // One hook per (target, syscall), each with a fault: fewer than `MAX_FAULTS`.
            syscall_hooks += 1;
            let index = u16::try_from(syscall_hooks).context("more syscall hooks than faults")?;
            self.syscall_hook_faults
                .set(u32::from(index), value, 0)
                .context("writing the syscall hook table")?;
            self.syscall_hooks
                .set(row * SYSCALL_SLOTS + key.hook, index, 0)
                .context("writing the syscall hook table")?;
            self.syscall_rows
                .set(key.target_idx, row + 1, 0)
                .context("writing the syscall hook table")?;
        }
        Ok(())
    }

    /// Sets the seed, starts the campaign clock and allows injections.
    pub fn arm(&mut self, start_ns: u64, seed: u64) -> Result<()> {
        self.config.set(CONFIG_SEED, seed, 0)?;
        self.config.set(CONFIG_START_NS, start_ns, 0)?;
        self.config.set(CONFIG_ARMED, 1, 0)?;
        Ok(())
    }

    /// Stops injecting at once (the programs stay attached until `Kernel` is dropped).
    pub fn disarm(&mut self) -> Result<()> {
        self.config.set(CONFIG_ARMED, 0, 0)?;
        Ok(())
    }

    pub fn counters(&self, fault_id: u32) -> Result<FaultCounters> {
        Ok(self.counters.get(&fault_id, 0)?)
    }

    /// The map of processes an injection stopped (`STOPPED`), for fij's guardian.
    pub fn stopped_map(&self) -> std::os::fd::BorrowedFd<'_> {
        use aya::maps::IterableMap;
        use std::os::fd::AsFd;
        self.stopped.map().fd().as_fd()
    }

    pub fn events_lost(&self) -> u64 {
        self.lost.get(&0, 0).unwrap_or(0)
    }

    /// The programs' diagnostics (`fij run --kernel-log`), forwarded to fij's log lines under
    /// the target `fij::kernel` (taken once, by the event loop).
    pub fn take_kernel_log(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).context("reading the programs' log ring")
    }

    /// The event ring buffer (taken once, by the event loop).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }
}

/// The kernel's pid_max (the size of the target flags), 4194304 (PID_MAX_LIMIT) if unreadable.
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(4_194_304, |n| n + 1)
}

/// The address of kernel function `name`, from /proc/kallsyms (as root it shows addresses).
fn kallsyms_address(name: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
    text.lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (address, _kind, symbol) = (fields.next()?, fields.next()?, fields.next()?);
            (symbol == name)
                .then(|| u64::from_str_radix(address, 16).ok())
                .flatten()
        })
        .filter(|&a| a != 0)
        .with_context(|| format!("kernel function `{name}` not found in /proc/kallsyms"))
}
