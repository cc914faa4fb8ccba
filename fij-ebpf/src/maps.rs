//! Every map and global the programs share with the loader (`fij-userspace/src/kernel.rs`).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use fij_common::{
    BoundUdp, CONFIG_LEN, CrashMark, EVENT_RING_BYTES, FaultCounters, FaultRule, HookFaults,
    HookKey, InjectedMark, KernelLayout, MAX_CRASHED, MAX_DUE, MAX_FAULTS, MAX_PROCESS_COUNTERS,
    MAX_PROTECTED, MAX_SELECTIONS, MAX_SILENCED, MAX_STOPPED, MAX_TARGET_PROCESSES, ProcessCounter,
    ProcessCounterKey, SelectKey, SilenceEntry, SilenceKey, StopMark, TargetProcess,
};

/// The target set: tgid → which target it belongs to. The source of truth; change it only
/// through [`add_target`] and [`remove_target`], which keep [`TARGET_FLAGS`] in step.
#[map]
pub static TARGETS: HashMap<u32, TargetProcess> =
    HashMap::with_max_entries(MAX_TARGET_PROCESSES, 0);

/// One byte per pid (the loader sizes it to `pid_max`): non-zero while that tgid is in
/// `TARGETS`. An array lookup is inlined by the verifier, so a process outside the target set
/// pays no hash on the syscall path; pids beyond the array fall back to the hash.
#[map]
pub static TARGET_FLAGS: Array<u8> = Array::with_max_entries(1, 0);

/// The target-set entry of `tgid`, looked up through the flags first.
#[inline(always)]
pub fn target(tgid: u32) -> Option<&'static TargetProcess> {
    if !may_be_target(tgid) {
        return None;
    }
    unsafe { TARGETS.get(&tgid) }
}

/// Per CPU: non-zero while the task running there may belong to a target process. Kept by
/// `fij_sched_switch` at every context switch (the loader writes 1 everywhere before attaching
/// it), so that `fij_sys_enter` decides for a non-target without a single helper call: a per-CPU
/// array lookup is inlined by the verifier, while a call costs ~20 ns with the "Safe RET"
/// mitigation, more than the rest of the path. 1 when unsure; 0 only when surely not.
#[map]
pub static CPU_MAY_RUN_TARGET: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Whether the task running on this CPU may be a target (see [`CPU_MAY_RUN_TARGET`]).
#[inline(always)]
pub fn cpu_may_run_target() -> bool {
    !matches!(CPU_MAY_RUN_TARGET.get(0), Some(&0))
}

/// Records whether the task this CPU switches to may be a target.
#[inline(always)]
pub fn set_cpu_may_run_target(may: bool) {
    if let Some(flag) = CPU_MAY_RUN_TARGET.get_ptr_mut(0) {
        unsafe { *flag = may as u32 };
    }
}

/// Whether `tgid` may be in the target set, by its flag alone (pids beyond the flags: maybe).
#[inline(always)]
pub fn may_be_target(tgid: u32) -> bool {
    !matches!(TARGET_FLAGS.get(tgid), Some(&0))
}

#[inline(always)]
pub fn add_target(tgid: u32, entry: &TargetProcess) -> bool {
    let added = TARGETS.insert(&tgid, entry, 0).is_ok();
    if added {
        let _ = TARGET_FLAGS.set(tgid, 1u8, 0);
    }
    added
}

#[inline(always)]
pub fn remove_target(tgid: u32) {
    let _ = TARGET_FLAGS.set(tgid, 0u8, 0);
    let _ = TARGETS.remove(&tgid);
}

/// fij itself and its ancestors: never signalled, whatever the rules say.
#[map]
pub static PROTECTED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PROTECTED, 0);

/// (target, syscall) → the faults to evaluate.
#[map]
pub static HOOKS: HashMap<HookKey, HookFaults> = HashMap::with_max_entries(4096, 0);

/// Fault id → rule.
#[map]
pub static RULES: Array<FaultRule> = Array::with_max_entries(MAX_FAULTS, 0);

/// Fault id → per-target hits and injections.
#[map]
pub static COUNTERS: Array<FaultCounters> = Array::with_max_entries(MAX_FAULTS, 0);

/// (fault, instance) present: the instance takes part in the fault (`select`).
#[map]
pub static SELECTED: HashMap<SelectKey, u8> = HashMap::with_max_entries(MAX_SELECTIONS, 0);

/// Root process (tgid) of an instance → the time-triggered fault now due for it. Whoever
/// removes the entry first fires it: the victim itself in kernel, or the loader if it sleeps.
#[map]
pub static DUE: HashMap<u32, u32> = HashMap::with_max_entries(MAX_DUE, 0);

/// (fault, tgid) → hits of one process. A plain hash, not an LRU: an LRU evicts entries before
/// it is full (its free nodes sit in per-CPU lists) and whenever it is, and an evicted counter
/// would silently restart from 0 — a late injection. Entries are deleted when their process
/// exits (`lifecycle.rs`); a hit that finds the table full is reported instead.
#[map]
pub static PROCESS_COUNTERS: HashMap<ProcessCounterKey, ProcessCounter> =
    HashMap::with_max_entries(MAX_PROCESS_COUNTERS, 0);

/// Target process (tgid) → the last injection a per-process hit trigger fired on it, until it
/// exits: its exit reports how many hits of that fault came after (see `InjectedMark`).
#[map]
pub static INJECTED: HashMap<u32, InjectedMark> =
    HashMap::with_max_entries(MAX_TARGET_PROCESSES, 0);

/// Processes an injection stopped (tgid → which fault, and the process's start time), from
/// just before the SIGSTOP until the process exits: what fij's guardian resumes if fij dies.
#[map]
pub static STOPPED: HashMap<u32, StopMark> = HashMap::with_max_entries(MAX_STOPPED, 0);

/// Processes a `crash` fired on, until their task is freed (tgid → which crash).
#[map]
pub static CRASHED: HashMap<u32, CrashMark> = HashMap::with_max_entries(MAX_CRASHED, 0);

/// Socket tuples that must stay silent (filled at socket release of a crashed process).
#[map]
pub static SILENCED: HashMap<SilenceKey, SilenceEntry> = HashMap::with_max_entries(MAX_SILENCED, 0);

/// Bound UDP sockets by socket cookie (for `crash`; see `crash.rs`).
#[map]
pub static BOUND_UDP: HashMap<u64, BoundUdp> = HashMap::with_max_entries(MAX_SILENCED, 0);

/// Campaign settings written by the loader (`CONFIG_*` indices).
#[map]
pub static CONFIG: Array<u64> = Array::with_max_entries(CONFIG_LEN, 0);

/// Events for the loader; `EVENTS_LOST[0]` counts records the ring had no room for.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);
#[map]
pub static EVENTS_LOST: Array<u64> = Array::with_max_entries(1, 0);

/// Offsets of the running kernel, set by the loader before load (no CO-RE in Rust eBPF).
#[unsafe(no_mangle)]
pub static LAYOUT: KernelLayout = KernelLayout {
    task_pid: u32::MAX,
    task_tgid: u32::MAX,
    task_flags: u32::MAX,
    task_exit_code: u32::MAX,
    task_start_boottime: u32::MAX,
    exit_group_dead: u32::MAX,
    exec_filename: u32::MAX,
    regs_arg2: u32::MAX,
    regs_arg5: u32::MAX,
    tcp_oldstate: u32::MAX,
    tcp_sport: u32::MAX,
    tcp_dport: u32::MAX,
    tcp_protocol: u32::MAX,
    tcp_saddr_v6: u32::MAX,
    tcp_daddr_v6: u32::MAX,
};

#[inline(always)]
pub fn layout() -> KernelLayout {
    // Volatile: the value is patched into the object at load time, not known to the compiler.
    unsafe { core::ptr::read_volatile(&LAYOUT) }
}

/// `task_struct.tgid`'s offset alone (cheaper than a whole [`layout`] on a hot path).
#[inline(always)]
pub fn task_tgid_offset() -> u32 {
    unsafe { core::ptr::read_volatile(&raw const LAYOUT.task_tgid) }
}

#[inline(always)]
pub fn config(index: u32) -> u64 {
    CONFIG.get(index).copied().unwrap_or(0)
}

/// Slots of [`EVENT_SCRATCH`]: one per program that can run on a CPU while another one is in
/// the middle of building an event there (a perf or kprobe program interrupting the syscall
/// program; the kernel runs none of those nested in each other).
const EVENT_SCRATCH_SLOTS: u32 = 4;

/// Where an injection's event is built, per CPU, instead of on the BPF stack: the syscall
/// program's call chain (`fij_sys_enter` → `fault_hit` → `fault_hit_draw`) must fit the
/// verifier's 512-byte combined stack, and with a 64-byte event in two of its frames it did not
/// on kernels up to 6.12 ("combined stack size of 3 calls is 560. Too large" on Debian 12 and
/// 13; 6.18 loaded it). [`EVENT_SCRATCH_DEPTH`] says which slot is free.
#[map]
static EVENT_SCRATCH: PerCpuArray<fij_common::Event> =
    PerCpuArray::with_max_entries(EVENT_SCRATCH_SLOTS, 0);

/// How many programs on this CPU are building an event in [`EVENT_SCRATCH`] now.
#[map]
static EVENT_SCRATCH_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Runs `build` on a zeroed event of this CPU's next free [`EVENT_SCRATCH`] slot, which stays
/// taken until `build` returns. Returns false (and runs nothing) when no slot is free, which
/// needs more nested programs than the kernel runs.
#[inline(always)]
pub fn with_scratch_event(build: impl FnOnce(&mut fij_common::Event)) -> bool {
    let Some(depth) = EVENT_SCRATCH_DEPTH.get_ptr_mut(0) else {
        return false;
    };
    // A program that interrupts this one between the load and the store below finishes (and
    // puts the depth back) before this one goes on, so the slot is still free for it.
    let slot = unsafe { *depth };
    let Some(event) = EVENT_SCRATCH.get_ptr_mut(slot) else {
        return false;
    };
    unsafe {
        *depth = slot + 1;
        core::ptr::write_bytes(event, 0, 1);
        build(&mut *event);
        *depth = slot;
    }
    true
}

/// `bpf_ringbuf_output` flag: do not wake the reader now.
const BPF_RB_NO_WAKEUP: u64 = 1;

#[inline(always)]
pub fn emit(event: &fij_common::Event) {
    emit_with(event, 0);
}

/// Emits an event without waking fij: for an injection whose victim is about to die, waking fij
/// now would let it preempt the victim on a shared CPU; the victim's exit event wakes it.
#[inline(always)]
pub fn emit_quietly(event: &fij_common::Event) {
    emit_with(event, BPF_RB_NO_WAKEUP);
}

#[inline(always)]
fn emit_with(event: &fij_common::Event, flags: u64) {
    if EVENTS.output::<fij_common::Event>(event, flags).is_err() {
        if let Some(lost) = EVENTS_LOST.get_ptr_mut(0) {
            unsafe { crate::decide::atomic_add(lost, 1) };
        }
        aya_log_ebpf::warn!(
            &(),
            target: "fij::kernel",
            "event of kind {} (pid {}) lost: the event ring is full",
            event.kind,
            event.tgid
        );
    }
}
