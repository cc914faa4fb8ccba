//! Every map and global the programs share with the loader (`fij-userspace/src/kernel.rs`).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, Queue, RingBuf},
};
use fij_common::{
    BoundUdp, CONFIG_COUNTER_SLOTS, CONFIG_FAULTS, CONFIG_LEN, CONFIG_NEXT_COUNTER_SLOT, CrashMark,
    EVENT_RING_BYTES, FaultCounters, FaultRule, HookFaults, HookKey, InjectedMark, KernelLayout,
    MAX_CRASHED, MAX_DUE, MAX_FAULTS, MAX_PROCESS_COUNTERS, MAX_PROTECTED, MAX_SELECTIONS,
    MAX_SILENCED, MAX_SILENT_ADDRESSES, MAX_STOPPED, MAX_TARGET_PROCESSES, ProcessCounter,
    ProcessCounterKey, SYSCALL_SLOTS, SeenTasks, SelectKey, SilenceEntry, SilenceKey, StopMark,
    TARGET_SET_EPOCH_KERNEL, TARGET_SET_EPOCH_LOADER, TargetProcess,
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

/// How many times the target set changed in a way that voids a [`SEEN_TASKS`] entry:
/// `[TARGET_SET_EPOCH_KERNEL]` counts the kernel's changes (a task of a target created or
/// exiting, a selector join), `[TARGET_SET_EPOCH_LOADER]` the loader's additions. Each side only
/// writes its own counter, so neither update races the other; their sum grows at every change
/// and is the epoch a [`SEEN_TASKS`] entry is valid for.
#[map]
pub static TARGET_SET_EPOCH: Array<u64> = Array::with_max_entries(2, 0);

/// Per CPU: the last two tasks `fij_sys_enter` looked up in the target set — each by the
/// address of its user registers, unique to a live task (they sit at the top of its kernel
/// stack) — at which epoch, and what it found. While both still match, the lookup is not made
/// again: a non-target's syscall leaves after a few inlined map loads, a target's skips two
/// helper calls (a call costs ~20 ns with the "Safe RET" mitigation). Two slots, so two tasks
/// taking turns on a CPU both stay remembered. It depends on nothing but the syscall itself, so
/// no context switch, migration or missed scheduler event can leave a target unseen (an earlier
/// per-CPU flag kept at `sched_switch` did: see docs/reliability.md).
#[map]
pub static SEEN_TASKS: PerCpuArray<SeenTasks> = PerCpuArray::with_max_entries(1, 0);

/// The target set's epoch now (see [`TARGET_SET_EPOCH`]).
#[inline(always)]
pub fn target_set_epoch() -> u64 {
    let kernel = TARGET_SET_EPOCH
        .get(TARGET_SET_EPOCH_KERNEL)
        .copied()
        .unwrap_or(0);
    let loader = TARGET_SET_EPOCH
        .get(TARGET_SET_EPOCH_LOADER)
        .copied()
        .unwrap_or(0);
    kernel.wrapping_add(loader)
}

/// Counts one kernel change of the target set: every [`SEEN_TASKS`] entry made before is void.
#[inline(always)]
pub fn target_set_changed() {
    if let Some(count) = TARGET_SET_EPOCH.get_ptr_mut(TARGET_SET_EPOCH_KERNEL) {
        unsafe { crate::decide::atomic_add(count, 1) };
    }
}

/// Whether `tgid` may be in the target set, by its flag alone (pids beyond the flags: maybe).
#[inline(always)]
pub fn may_be_target(tgid: u32) -> bool {
    !matches!(TARGET_FLAGS.get(tgid), Some(&0))
}

/// Adds `tgid` to the target set with a row of per-process counters if one is free (the
/// entry's `counter_slot` is set here).
#[inline(always)]
pub fn add_target(tgid: u32, entry: &TargetProcess) -> bool {
    let mut entry = *entry;
    entry.counter_slot = take_counter_slot();
    let added = TARGETS.insert(&tgid, &entry, 0).is_ok();
    if added {
        let _ = TARGET_FLAGS.set(tgid, 1u8, 0);
        target_set_changed();
    } else {
        free_counter_slot(entry.counter_slot);
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

/// (target, hook) → the faults to evaluate, for every hook but a syscall's (tracepoints,
/// probes, the cgroup error hooks).
#[map]
pub static HOOKS: HashMap<HookKey, HookFaults> = HashMap::with_max_entries(4096, 0);

/// The syscall hooks, in arrays rather than in `HOOKS`: an array lookup is inlined by the
/// verifier, a hash lookup is a call and a hash (~10 ns of an armed target's every syscall).
/// Target index → its row in `SYSCALL_HOOKS` plus one (0: no syscall fault on the target).
/// The loader sizes it to the campaign's targets.
#[map]
pub static SYSCALL_ROWS: Array<u32> = Array::with_max_entries(1, 0);

/// Row × `SYSCALL_SLOTS` + syscall number → index into `SYSCALL_HOOK_FAULTS` (0: no fault on
/// that syscall). The loader sizes it to the rows the campaign needs.
#[map]
pub static SYSCALL_HOOKS: Array<u16> = Array::with_max_entries(1, 0);

/// The faults of one syscall hook; index 0 is never used.
#[map]
pub static SYSCALL_HOOK_FAULTS: Array<HookFaults> = Array::with_max_entries(MAX_FAULTS + 1, 0);

/// The faults watching syscall `nr` of target `target_idx`, if any.
#[inline(always)]
pub fn syscall_faults(target_idx: u32, nr: i64) -> Option<&'static HookFaults> {
    if !(0..SYSCALL_SLOTS as i64).contains(&nr) {
        return None;
    }
    let row = *SYSCALL_ROWS.get(target_idx)?;
    if row == 0 {
        return None;
    }
    let index = *SYSCALL_HOOKS.get((row - 1) * SYSCALL_SLOTS + nr as u32)?;
    if index == 0 {
        return None;
    }
    SYSCALL_HOOK_FAULTS.get(index as u32)
}

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

/// Per-process hit counters in rows, one row per target process that has one (see
/// `TargetProcess::counter_slot`): hits of fault f by the process of row s (1-based) at
/// `(s - 1) * CONFIG_FAULTS + f`. An array lookup is inlined by the verifier where the hash's
/// is a call and a hash (~17 ns of every armed syscall here). Zeroed by the exit hook before the
/// row is freed, so a row always starts at 0 for its next process. Sized by the loader.
#[map]
pub static SLOT_COUNTERS: Array<u64> = Array::with_max_entries(1, 0);

/// Rows of [`SLOT_COUNTERS`] freed by exited processes (1-based), for the next ones.
#[map]
pub static FREE_COUNTER_SLOTS: Queue<u32> = Queue::with_max_entries(1, 0);

/// A free row of per-process counters (1-based), or 0 if none is left: a freed one, else one
/// never used.
#[inline(always)]
fn take_counter_slot() -> u32 {
    if let Ok(Some(slot)) = FREE_COUNTER_SLOTS.pop() {
        return slot;
    }
    let Some(next) = CONFIG.get_ptr_mut(CONFIG_NEXT_COUNTER_SLOT) else {
        return 0;
    };
    let slot = unsafe { crate::decide::atomic_add(next, 1) };
    if slot == 0 || slot > config(CONFIG_COUNTER_SLOTS) {
        return 0;
    }
    slot as u32
}

/// Gives row `slot` back once its counters are zeroed (0: no row).
#[inline(always)]
pub fn free_counter_slot(slot: u32) {
    if slot != 0 {
        let _ = FREE_COUNTER_SLOTS.push(slot, 0);
    }
}

/// The counter of fault `fault_id` in row `slot` (1-based, not 0).
#[inline(always)]
pub fn slot_counter(slot: u32, fault_id: u32) -> Option<*mut u64> {
    let faults = config(CONFIG_FAULTS) as u32;
    if fault_id >= faults {
        return None;
    }
    SLOT_COUNTERS.get_ptr_mut((slot - 1).wrapping_mul(faults).wrapping_add(fault_id))
}

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

/// Addresses that must stay silent, whatever the packet (a crashed node's `addresses`, in the
/// 16-byte form of [`SilenceKey`]) → the mark id of the node crash that silenced it.
#[map]
pub static SILENT_ADDRESSES: HashMap<[u8; 16], u32> =
    HashMap::with_max_entries(MAX_SILENT_ADDRESSES, 0);

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
    regs_syscall_nr: u32::MAX,
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
