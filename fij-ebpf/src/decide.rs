//! The one place where a hit becomes an injection. Every trigger kind calls [`on_hit`], so the
//! conditions (`select`, `after`, `nth`, `every`, `probability`, `count`, `per`) mean the same
//! for all of them; a time-triggered fault that fell due fires through [`claim_due`]. Both end
//! in [`fire`].
use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
    bpf_send_signal,
};
use aya_log_ebpf::warn;
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use fij_common::{
    CONFIG_ARMED, CONFIG_DUE, CONFIG_FAULTS, CONFIG_SEED, CONFIG_START_NS, COUNTER_TABLE_FULL,
    CrashMark, EVENT_INJECTION, Event, FaultRule, HookKey, InjectedMark, MAX_FAULTS,
    MAX_FAULTS_PER_HOOK, PF_KTHREAD, ProcessCounter, ProcessCounterKey, RULE_CRASH,
    RULE_PER_TARGET, RULE_PORT, RULE_PROBABILITY, RULE_SELECT, SIGNAL_REFUSED, SIGSTOP, SelectKey,
    StopMark, TargetProcess,
    random::{fires_with, hit_draw, key_from_seed},
};

use crate::maps::{
    COUNTERS, CRASHED, DUE, HOOKS, INJECTED, PROCESS_COUNTERS, PROTECTED, RULES, SELECTED, STOPPED,
    config, emit, emit_quietly, layout, with_scratch_event,
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
    let Some(faults) = (unsafe { HOOKS.get(key) }) else {
        return;
    };
    if config(CONFIG_ARMED) == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let hit = Hit {
        process: *process,
        tgid,
        tid,
        now,
        since_start: now.saturating_sub(config(CONFIG_START_NS)),
        detail,
        regs: regs as u64,
    };
    let len = faults.len as usize;
    for i in 0..MAX_FAULTS_PER_HOOK {
        if i >= len {
            break;
        }
        fault_hit(faults.fault_ids[i], &hit);
    }
}

/// One hit, as [`fault_hit`] sees it (a BPF function takes at most five arguments).
#[repr(C)]
pub struct Hit {
    process: TargetProcess,
    tgid: u32,
    tid: u32,
    now: u64,
    since_start: u64,
    detail: u64,
    /// The user registers of a syscall trigger (0 for other triggers).
    regs: u64,
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
    evaluate(
        fault_id,
        &hit.process,
        hit.tgid,
        hit.tid,
        hit.now,
        hit.since_start,
        hit.detail,
        hit.regs as *const u8,
    );
    0 // the verifier wants a global function to return a scalar
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn evaluate(
    fault_id: u32,
    process: &TargetProcess,
    tgid: u32,
    tid: u32,
    now: u64,
    since_start: u64,
    detail: u64,
    regs: *const u8,
) {
    let Some(rule) = RULES.get(fault_id) else {
        return;
    };
    if !selected(rule, fault_id, process) {
        return;
    }
    // Hits before `after` are not counted at all: `nth` counts from that moment on.
    if since_start < rule.after_ns {
        return;
    }
    // A call to another port is no hit of this fault.
    if rule.flags & RULE_PORT != 0 && !port_matches(rule, regs) {
        return;
    }
    let Some(counters) = COUNTERS.get_ptr_mut(fault_id) else {
        return;
    };
    let hit = if rule.flags & RULE_PER_TARGET != 0 {
        unsafe { atomic_add(&raw mut (*counters).target_hits, 1) + 1 }
    } else {
        match process_hit(fault_id, tgid, process.generation) {
            Some(hit) => hit,
            None => {
                // Table full: say so (once per fault) rather than count from a wrong number.
                if unsafe { atomic_add(&raw mut (*counters).uncounted, 1) } == 0 {
                    with_scratch_event(|event| {
                        event.kind = EVENT_INJECTION;
                        event.fault_id = fault_id;
                        event.ktime_ns = now;
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
                return;
            }
        }
    };
    if !rule.fires_on(hit) {
        return;
    }
    // Hit k of fault f always owns draw (f, k-1): the decision depends on the seed and the hit
    // number only, never on timing, so `fij plan` computes the same one in userspace.
    let draw = if rule.flags & RULE_PROBABILITY != 0 {
        let draw = fault_hit_draw(config(CONFIG_SEED), fault_id, hit);
        if !fires_with(draw, rule.probability) {
            return;
        }
        draw
    } else {
        0
    };
    // Claim one of the fault's `count` injections; losers of a race past the cap do nothing.
    if unsafe { atomic_add(&raw mut (*counters).injections, 1) } >= rule.count {
        return;
    }
    fire(rule, fault_id, process, tgid, tid, now, hit, detail, draw);
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
/// sleeps) fires it, exactly once.
#[inline(always)]
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
    fire(rule, fault_id, process, tgid, tid, now, TIME_HIT, 0, 0);
}

/// Carries out a fault on the current task: the crash mark, the signal (none for partition:
/// the event tells the loader to act), and the event — also when fij refused.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fire(
    rule: &FaultRule,
    fault_id: u32,
    process: &TargetProcess,
    tgid: u32,
    tid: u32,
    now: u64,
    hit: u64,
    detail: u64,
    draw: u64,
) {
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
        fire_event(rule, event, tgid, hit);
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
}

/// The rest of [`fire`], on its event: the signal, the marks, the event out.
#[inline(always)]
fn fire_event(rule: &FaultRule, event: &mut Event, tgid: u32, hit: u64) {
    let fault_id = event.fault_id;
    fij_common::fire(
        rule,
        event,
        may_signal(tgid),
        |mark| {
            let _ = CRASHED.insert(&tgid, mark, 0);
        },
        |signal| {
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
pub extern "C" fn fault_hit_draw(seed: u64, fault_id: u32, hit: u64) -> u64 {
    hit_draw(&key_from_seed(seed), fault_id, hit)
}

/// Counts a hit in the current process's counter for `fault_id`; returns the hit number, or
/// None when the counter table is full.
#[inline(always)]
fn process_hit(fault_id: u32, tgid: u32, generation: u64) -> Option<u64> {
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
pub fn take_last_injection(tgid: u32, generation: u64) -> Option<(u32, u64, u64)> {
    let mark = unsafe { INJECTED.get(&tgid) }.copied()?;
    let _ = INJECTED.remove(&tgid);
    let key = ProcessCounterKey {
        fault_id: mark.fault_id,
        tgid,
    };
    let counter = unsafe { PROCESS_COUNTERS.get(&key) }?;
    (counter.generation == generation).then_some((mark.fault_id, counter.hits, mark.hit))
}

/// Deletes the per-process counters of exiting process `tgid`, for every fault of the
/// campaign (`CONFIG_FAULTS`), so the table holds live processes only.
#[inline(always)]
pub fn forget_process_counters(tgid: u32) {
    let faults = config(CONFIG_FAULTS).min(MAX_FAULTS as u64) as u32;
    for fault_id in 0..MAX_FAULTS {
        if fault_id >= faults {
            break;
        }
        forget_counter(fault_id, tgid);
    }
}

/// One deletion of [`forget_process_counters`]. A global function: the verifier checks its
/// body once, not once per iteration.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn forget_counter(fault_id: u32, tgid: u32) -> u32 {
    let _ = PROCESS_COUNTERS.remove(&ProcessCounterKey { fault_id, tgid });
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
