//! The one place where a hit becomes an injection. Every trigger kind calls [`on_hit`], so the
//! conditions (`select`, `after`, `nth`, `every`, `probability`, `count`, `per`) mean the same
//! for all of them; a time-triggered fault that fell due fires through [`claim_due`]. Both end
//! in [`fire`].
use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_ktime_get_ns, bpf_loop, bpf_probe_read_kernel, bpf_probe_read_user,
    bpf_send_signal,
};
use aya_log_ebpf::warn;
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};
use fij_common::{
    CONFIG_ARMED, CONFIG_DUE, CONFIG_FAULTS, CONFIG_SEED, CONFIG_START_NS, COUNTER_TABLE_FULL,
    EVENT_INJECTION, Event, FaultRule, HookFaults, HookKey, InjectedMark, MAX_FAULTS,
    MAX_FAULTS_PER_HOOK, PF_KTHREAD, ProcessCounter, ProcessCounterKey, RULE_ERROR,
    RULE_PER_TARGET, RULE_PORT, RULE_SELECT, SIGNAL_REFUSED, SIGSTOP, SelectKey, StopMark,
    TargetProcess,
    random::{hit_draw, key_from_seed},
};

use crate::maps::{
    COUNTERS, CRASHED, DUE, HOOKS, INJECTED, PROCESS_COUNTERS, PROTECTED, RULES, SELECTED, STOPPED,
    config, emit, emit_quietly, free_counter_slot, layout, slot_counter, with_scratch_event,
};

/// `Event::hit` of an injection fired by a time trigger (it has no hit number).
pub const TIME_HIT: u64 = 0;

/// Atomically adds `n` to `*ptr` and returns the previous value.
///
/// SeqCst on purpose: with Relaxed, LLVM 22's BPF backend emits a plain `lock add` (no
/// BPF_FETCH) even though the result is used, so every caller would read a made-up value.
/// BPF fetch instructions are full barriers anyway, so this costs nothing.
///
/// # Safety
/// `ptr` must point into a map value that lives for the duration of the program.
#[inline(always)]
pub unsafe fn atomic_add(ptr: *mut u64, n: u64) -> u64 {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(ptr, n) }
}

/// A hit of hook `key` by the current task, which belongs to target process `process`.
/// `regs` are the user registers of a syscall trigger (null for other triggers).
#[inline(always)]
pub fn on_hit(
    process: &TargetProcess,
    tgid: u32,
    tid: u32,
    key: &HookKey,
    detail: u64,
    regs: *const u8,
) {
    if let Some(faults) = unsafe { HOOKS.get(key) } {
        on_hook_hit(faults, process, tgid, tid, detail, regs);
    }
}

/// A hit of a hook watched by `faults` (from `HOOKS`, or for syscalls `syscall_faults`).
#[inline(always)]
pub fn on_hook_hit(
    faults: &HookFaults,
    process: &TargetProcess,
    tgid: u32,
    tid: u32,
    detail: u64,
    regs: *const u8,
) {
    let Some(hit) = armed_hit(process, tgid, tid, detail, regs as u64, PORT_IN_REGS) else {
        return;
    };
    let len = faults.len as usize;
    for i in 0..MAX_FAULTS_PER_HOOK {
        if i >= len {
            break;
        }
        fault_hit(faults.fault_ids[i], &hit);
    }
}

/// A hit of a cgroup hook that can fail the call (`action = "error"`) by the current task:
/// the same conditions as [`on_hit`], but nothing is signalled. `port` is the call's port
/// (host order; 0 when it has none). Returns the errno of the first fault that fired (0: let
/// the call through); every fault on the hook counts the hit either way.
#[inline(always)]
pub fn on_error_hit(process: &TargetProcess, tgid: u32, tid: u32, key: &HookKey, port: u32) -> u32 {
    let Some(faults) = (unsafe { HOOKS.get(key) }) else {
        return 0;
    };
    let Some(hit) = armed_hit(process, tgid, tid, key.hook as u64, 0, port) else {
        return 0;
    };
    let len = faults.len as usize;
    let mut errno = 0;
    for i in 0..MAX_FAULTS_PER_HOOK {
        if i >= len {
            break;
        }
        let fired = fault_error_hit(faults.fault_ids[i], &hit);
        if errno == 0 {
            errno = fired;
        }
    }
    errno
}

/// `Hit::port` of a syscall trigger: the port is read from the sockaddr in its registers.
const PORT_IN_REGS: u32 = u32::MAX;

/// The hit to evaluate, if the campaign is armed.
#[inline(always)]
fn armed_hit(
    process: &TargetProcess,
    tgid: u32,
    tid: u32,
    detail: u64,
    regs: u64,
    port: u32,
) -> Option<Hit> {
    if config(CONFIG_ARMED) == 0 {
        return None;
    }
    // No clock here: a helper call that only `after` and an injection need.
    Some(Hit {
        process: *process,
        tgid,
        tid,
        detail,
        regs,
        port,
    })
}

/// One hit, as [`fault_hit`] sees it (a BPF function takes at most five arguments).
#[repr(C)]
pub struct Hit {
    process: TargetProcess,
    tgid: u32,
    tid: u32,
    detail: u64,
    /// The user registers of a syscall trigger (0 for other triggers).
    regs: u64,
    /// The call's port, from a cgroup hook; `PORT_IN_REGS` for a syscall trigger.
    port: u32,
}

/// Evaluates fault `fault_id` for `hit`. A global, not inlined function: the verifier checks
/// its body once, not once per fault slot of the caller's loop (which made the syscall
/// program ~70k verified instructions and ~150 ms to load).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fault_hit(fault_id: u32, hit: *const Hit) -> u32 {
    // A global function's pointer arguments may be null as far as the verifier knows.
    let Some(hit) = (unsafe { hit.as_ref() }) else {
        return 0;
    };
    evaluate::<true>(fault_id, hit)
}

/// [`fault_hit`] for the cgroup hooks, whose program types may not call `bpf_send_signal` or
/// read the task: the same evaluation with signals compiled out. Returns the errno to fail the
/// call with (0: none).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fault_error_hit(fault_id: u32, hit: *const Hit) -> u32 {
    let Some(hit) = (unsafe { hit.as_ref() }) else {
        return 0;
    };
    evaluate::<false>(fault_id, hit)
}

/// The conditions, then [`fire`]. Returns the errno of an `error` fault that fired on a
/// process that may be failed, else 0.
#[inline(always)]
fn evaluate<const SIGNALS: bool>(fault_id: u32, hit: &Hit) -> u32 {
    let (process, tgid, tid) = (&hit.process, hit.tgid, hit.tid);
    let Some(rule) = RULES.get(fault_id) else {
        return 0;
    };
    if !selected(rule, fault_id, process) {
        return 0;
    }
    // Hits before `after` are not counted at all: `nth` counts from that moment on.
    if rule.after_ns != 0 {
        let since_start = unsafe { bpf_ktime_get_ns() }.saturating_sub(config(CONFIG_START_NS));
        if since_start < rule.after_ns {
            return 0;
        }
    }
    // A call to another port is no hit of this fault.
    if rule.flags & RULE_PORT != 0 {
        let matches = if hit.port == PORT_IN_REGS {
            port_matches(rule, hit.regs as *const u8)
        } else {
            hit.port == rule.port
        };
        if !matches {
            return 0;
        }
    }
    let Some(counters) = COUNTERS.get_ptr_mut(fault_id) else {
        return 0;
    };
    let number = if rule.flags & RULE_PER_TARGET != 0 {
        unsafe { atomic_add(&raw mut (*counters).target_hits, 1) + 1 }
    } else {
        match process_hit(fault_id, tgid, process) {
            Some(number) => number,
            None => {
                // Table full: say so (once per fault) rather than count from a wrong number.
                if unsafe { atomic_add(&raw mut (*counters).uncounted, 1) } == 0 {
                    with_scratch_event(|event| {
                        event.kind = EVENT_INJECTION;
                        event.fault_id = fault_id;
                        event.ktime_ns = unsafe { bpf_ktime_get_ns() };
                        event.tgid = tgid;
                        event.tid = tid;
                        event.signal = rule.signal;
                        event.result = COUNTER_TABLE_FULL;
                        event.target_idx = process.target_idx;
                        event.instance = process.instance;
                        emit(event);
                    });
                }
                warn!(
                    &(),
                    target: "fij::kernel",
                    "fault {} skipped a hit of pid {}: the per-process counter table is full",
                    fault_id,
                    tgid
                );
                return 0;
            }
        }
    };
    // Hit k of fault f always owns draw k-1 of f's hit stream: the decision depends on the seed
    // and the hit number only, never on timing, so `fij plan` computes the same one in userspace.
    let Some(draw) = rule.decide(number, || {
        fault_hit_draw(config(CONFIG_SEED), rule.hit_stream, number)
    }) else {
        return 0;
    };
    // Claim one of the fault's `count` injections; losers of a race past the cap do nothing.
    if unsafe { atomic_add(&raw mut (*counters).injections, 1) } >= rule.count {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let fired = fire::<SIGNALS>(
        rule, fault_id, process, tgid, tid, now, number, hit.detail, draw,
    );
    if fired && rule.flags & RULE_ERROR != 0 {
        rule.errno
    } else {
        0
    }
}

/// Whether the sockaddr argument of the current syscall (an IPv4 or IPv6 address) names the
/// rule's port. The argument is read from the user registers, the sockaddr from user memory.
#[inline(always)]
fn port_matches(rule: &FaultRule, regs: *const u8) -> bool {
    let l = layout();
    let offset = if rule.port_arg == 5 {
        l.regs_arg5
    } else {
        l.regs_arg2
    };
    if regs.is_null() || offset == u32::MAX {
        return false;
    }
    let Ok(address) = (unsafe { bpf_probe_read_kernel(regs.add(offset as usize) as *const u64) })
    else {
        return false;
    };
    if address == 0 {
        return false; // sendto on a connected socket: no address, so no port to match
    }
    // struct sockaddr_in / sockaddr_in6 start alike: u16 family, then the port in network order.
    let Ok(head) = (unsafe { bpf_probe_read_user(address as *const [u8; 4]) }) else {
        return false;
    };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    (family == AF_INET || family == AF_INET6)
        && u16::from_be_bytes([head[2], head[3]]) as u32 == rule.port
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Whether the process's target instance takes part in the fault (`select`).
#[inline(always)]
fn selected(rule: &FaultRule, fault_id: u32, process: &TargetProcess) -> bool {
    let key = SelectKey {
        fault_id,
        instance: process.instance,
    };
    rule.flags & RULE_SELECT == 0 || unsafe { SELECTED.get(&key) }.is_some()
}

/// A time-triggered fault fires in the context of the instance's root process when the loader
/// marked it due: whoever removes the `DUE` entry first (this task, or the loader when the task
/// sleeps) fires it, exactly once. Not inlined: its frame then stays off the stack of the hit
/// path's call chain, which must fit 512 bytes on kernels up to 6.12.
#[inline(never)]
pub fn claim_due(process: &TargetProcess, tgid: u32, tid: u32) {
    if config(CONFIG_DUE) == 0 || config(CONFIG_ARMED) == 0 {
        return;
    }
    let Some(&fault_id) = (unsafe { DUE.get(&tgid) }) else {
        return;
    };
    if DUE.remove(&tgid).is_err() {
        return; // the loader claimed it in the meantime
    }
    let Some(rule) = RULES.get(fault_id) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    fire::<true>(rule, fault_id, process, tgid, tid, now, TIME_HIT, 0, 0);
}

/// Carries out a fault on the current task: the crash mark, the signal (none for partition
/// and error: the event tells the loader to act, the hook fails the call), and the event — also
/// when fij refused. Returns whether it was carried out (not refused, the signal queued).
/// Without `SIGNALS` (the cgroup hooks) no signal can be sent and the task is not read.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fire<const SIGNALS: bool>(
    rule: &FaultRule,
    fault_id: u32,
    process: &TargetProcess,
    tgid: u32,
    tid: u32,
    now: u64,
    hit: u64,
    detail: u64,
    draw: u64,
) -> bool {
    // The event is built in a per-CPU slot, not on the stack: the syscall program's call chain
    // must fit the verifier's 512-byte combined stack on kernels up to 6.12 (see
    // `maps::with_scratch_event`).
    let mut fired = false;
    let built = with_scratch_event(|event| {
        event.fault_id = fault_id;
        event.ktime_ns = now;
        event.tgid = tgid;
        event.tid = tid;
        event.hit = hit;
        event.detail = detail;
        event.target_idx = process.target_idx;
        event.instance = process.instance;
        event.draw = draw;
        fired = fire_event::<SIGNALS>(rule, event, tgid, hit);
    });
    if !built {
        warn!(
            &(),
            target: "fij::kernel",
            "fault {} on pid {} (hit {}) not fired: no free event slot on this CPU",
            fault_id,
            tgid,
            hit
        );
    }
    fired
}

/// The rest of [`fire`], on its event: the signal, the marks, the event out.
#[inline(always)]
fn fire_event<const SIGNALS: bool>(
    rule: &FaultRule,
    event: &mut Event,
    tgid: u32,
    hit: u64,
) -> bool {
    let fault_id = event.fault_id;
    let allowed = if SIGNALS {
        may_signal(tgid)
    } else {
        // A cgroup hook cannot read the task; kernel threads never join the target set, and
        // the rest of the exclusions are checked here as everywhere.
        tgid > 1 && unsafe { PROTECTED.get(&tgid) }.is_none()
    };
    fij_common::fire(
        rule,
        event,
        allowed,
        |mark| {
            let _ = CRASHED.insert(&tgid, mark, 0);
        },
        |signal| {
            if !SIGNALS {
                return -22; // EINVAL: no rule with a signal is evaluated without signals
            }
            // Recorded before the signal: if fij dies before it reads the event, its guardian
            // still finds the process to resume.
            let stops = signal == SIGSTOP;
            if stops {
                record_stop(fault_id, tgid);
            }
            let result = unsafe { bpf_send_signal(signal) as i32 };
            if stops && result != 0 {
                let _ = STOPPED.remove(&tgid);
            }
            result
        },
    );
    // Why an injection did not happen, for `fij run --kernel-log` (off otherwise: one global
    // load on these failure paths only).
    if event.result == SIGNAL_REFUSED {
        warn!(
            &(),
            target: "fij::kernel",
            "fault {} refused on pid {} (hit {}): the process is protected (pid 1, a kernel thread, fij or its ancestor)",
            fault_id,
            tgid,
            hit
        );
    } else if event.result != 0 {
        warn!(
            &(),
            target: "fij::kernel",
            "fault {} on pid {} (hit {}): bpf_send_signal({}) failed with {}",
            fault_id,
            tgid,
            hit,
            rule.signal,
            event.result
        );
    }
    // Per-process hit triggers: remembered until the exit, which reports the hits after it.
    if event.result == 0 && hit != TIME_HIT && rule.flags & RULE_PER_TARGET == 0 {
        let mark = InjectedMark {
            fault_id,
            _pad: 0,
            hit,
        };
        let _ = INJECTED.insert(&tgid, &mark, 0);
    }
    // Signalled victims die and report it; a partition (signal 0) needs fij at once.
    if rule.signal != 0 && event.result == 0 {
        emit_quietly(event)
    } else {
        emit(event)
    }
    event.result == 0
}

/// Records that the current process `tgid` is being stopped by `fault_id`, with its start time
/// (so that a recycled pid is never resumed in its place).
#[inline(always)]
fn record_stop(fault_id: u32, tgid: u32) {
    let offset = layout().task_start_boottime;
    let start_boottime_ns = if offset == u32::MAX {
        0
    } else {
        let task = unsafe { bpf_get_current_task() } as *const u8;
        unsafe { bpf_probe_read_kernel(task.add(offset as usize) as *const u64) }.unwrap_or(0)
    };
    let mark = StopMark {
        fault_id,
        _pad: 0,
        start_boottime_ns,
    };
    let _ = STOPPED.insert(&tgid, &mark, 0);
}

/// One ChaCha20 draw. A global, not inlined function: the verifier checks it once instead of
/// at every call site (one draw is ~3k verified instructions).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fault_hit_draw(seed: u64, stream: u64, hit: u64) -> u64 {
    hit_draw(&key_from_seed(seed), stream, hit)
}

/// Counts a hit in the current process's counter for `fault_id`; returns the hit number, or
/// None when the counter table is full. The counter is in the process's row of
/// `SLOT_COUNTERS` if it has one, else in the `PROCESS_COUNTERS` hash.
#[inline(always)]
fn process_hit(fault_id: u32, tgid: u32, process: &TargetProcess) -> Option<u64> {
    if process.counter_slot != 0 {
        let counter = slot_counter(process.counter_slot, fault_id)?;
        return Some(unsafe { atomic_add(counter, 1) + 1 });
    }
    let generation = process.generation;
    let key = ProcessCounterKey { fault_id, tgid };
    if let Some(counter) = PROCESS_COUNTERS.get_ptr_mut(&key) {
        // A counter left by an earlier process with this pid (whose exit fij missed) has
        // another generation: replaced below.
        if unsafe { (*counter).generation } == generation {
            return Some(unsafe { atomic_add(&raw mut (*counter).hits, 1) + 1 });
        }
    }
    let first = ProcessCounter {
        generation,
        hits: 1,
    };
    PROCESS_COUNTERS
        .insert(&key, &first, 0)
        .is_ok()
        .then_some(1)
}

/// For the exit event of `tgid`: (fault, the process's hits of it now, the hit its last
/// injection fired on), if a per-process hit trigger fired on it. Forgets the injection.
#[inline(always)]
pub fn take_last_injection(tgid: u32, process: &TargetProcess) -> Option<(u32, u64, u64)> {
    let mark = unsafe { INJECTED.get(&tgid) }.copied()?;
    let _ = INJECTED.remove(&tgid);
    if process.counter_slot != 0 {
        let hits = unsafe { *slot_counter(process.counter_slot, mark.fault_id)? };
        return Some((mark.fault_id, hits, mark.hit));
    }
    let generation = process.generation;
    let key = ProcessCounterKey {
        fault_id: mark.fault_id,
        tgid,
    };
    let counter = unsafe { PROCESS_COUNTERS.get(&key) }?;
    (counter.generation == generation).then_some((mark.fault_id, counter.hits, mark.hit))
}

/// Forgets the per-process counters of exiting process `tgid`, for every fault of the
/// campaign (`CONFIG_FAULTS`): zeroes its row of `SLOT_COUNTERS` and frees the row, or deletes
/// its entries of the hash, so the tables hold live processes only. Through `bpf_loop`
/// (5.17+): an open-coded loop bounded by `MAX_FAULTS` made the verifier walk all 1024
/// iterations, ~8 ms of every start; `bpf_loop`'s callback is verified once.
#[inline(always)]
pub fn forget_process_counters(tgid: u32, process: &TargetProcess) {
    let faults = config(CONFIG_FAULTS).min(MAX_FAULTS as u64) as u32;
    let mut whose = ProcessCounterKey {
        fault_id: process.counter_slot,
        tgid,
    };
    unsafe {
        bpf_loop(
            faults,
            forget_counter as *mut c_void,
            &mut whose as *mut ProcessCounterKey as *mut c_void,
            0,
        )
    };
    free_counter_slot(process.counter_slot);
}

/// `bpf_loop`'s callback for [`forget_process_counters`]: forgets counter `fault_id` of the
/// process `ctx` points to (its tgid, and in `fault_id` its counter row, 0 for none). Returns
/// 0: go on with the next fault.
#[inline(never)]
extern "C" fn forget_counter(fault_id: u64, ctx: *mut c_void) -> i64 {
    let whose = unsafe { *(ctx as *const ProcessCounterKey) };
    let (slot, tgid) = (whose.fault_id, whose.tgid);
    if slot != 0 {
        if let Some(counter) = slot_counter(slot, fault_id as u32) {
            unsafe { *counter = 0 };
        }
    } else {
        let _ = PROCESS_COUNTERS.remove(&ProcessCounterKey {
            fault_id: fault_id as u32,
            tgid,
        });
    }
    0
}

/// The absolute exclusions, checked here in the kernel whatever userspace put in the maps:
/// pid 1, the idle task, kernel threads, fij itself and its ancestors.
#[inline(always)]
fn may_signal(tgid: u32) -> bool {
    if tgid <= 1 || unsafe { PROTECTED.get(&tgid) }.is_some() {
        return false;
    }
    let offset = layout().task_flags;
    if offset == u32::MAX {
        return false; // cannot tell a kernel thread apart: refuse rather than guess
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let flags = unsafe { bpf_probe_read_kernel(task.add(offset as usize) as *const u32) };
    matches!(flags, Ok(f) if f & PF_KTHREAD == 0)
}
