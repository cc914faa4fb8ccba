//! Keeps the target set exact: children of targets join it when they are forked, processes
//! leave it when they exit, so a pid recycled later is never a target.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use fij_common::{
    CONFIG_SELECTORS, EVENT_EXIT, EVENT_FORK, Event, SELECTOR_CGROUP, SELECTOR_UID, TargetProcess,
};

use crate::{
    decide::{forget_process_counters, take_last_injection},
    maps::{STOPPED, add_target, config, emit, layout, remove_target, target, target_set_changed},
    selectors::{join, match_inherited},
};

#[inline(always)]
fn read_task_u32(task: *const u8, offset: u32) -> Option<u32> {
    if offset == u32::MAX {
        return None;
    }
    unsafe { bpf_probe_read_kernel(task.add(offset as usize) as *const u32) }.ok()
}

/// sched_process_fork(struct task_struct *parent, struct task_struct *child)
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn fij_fork(ctx: RawTracePointContext) -> i32 {
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let parent = target(parent_tgid);
    // A non-target parent's child joins when the parent matches a uid or cgroup selector.
    let selectors = config(CONFIG_SELECTORS) & (SELECTOR_UID | SELECTOR_CGROUP);
    let inherited = match parent {
        None if selectors != 0 => match_inherited(selectors),
        _ => None,
    };
    if parent.is_none() && inherited.is_none() {
        return 0;
    }
    if parent.is_some() {
        // A new task of a target process, thread or process, before it first runs: it may
        // reuse the kernel stack (the register address) of a task the syscall hook remembers.
        target_set_changed();
    }
    let child: *const u8 = ctx.arg(1);
    let l = layout();
    let (Some(pid), Some(tgid)) = (
        read_task_u32(child, l.task_pid),
        read_task_u32(child, l.task_tgid),
    ) else {
        return 0;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if pid != tgid {
        return 0; // a new thread: its process is already in the set
    }
    let Some(parent) = parent else {
        if let Some((idx, reason)) = inherited {
            join(pid, idx, reason);
        }
        return 0;
    };
    let entry = TargetProcess {
        target_idx: parent.target_idx,
        instance: parent.instance,
        generation: now,
        ..TargetProcess::default()
    };
    let target_idx = parent.target_idx;
    if add_target(pid, &entry) {
        emit(&Event {
            kind: EVENT_FORK,
            ktime_ns: now,
            tgid: parent_tgid,
            tid: pid,
            detail: pid as u64,
            target_idx,
            ..Event::default()
        });
    }
    0
}

/// The last thread of a target process leaves the set and reports the exit code.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn fij_exit(ctx: TracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(process) = target(tgid) else {
        return 0;
    };
    // A task of a target is leaving (a thread or the whole process): its kernel stack, and with
    // it the register address the syscall hook may remember it by, can go to a new task.
    target_set_changed();
    let l = layout();
    let group_dead = if l.exit_group_dead == u32::MAX {
        pid_tgid as u32 == tgid // older kernels: take the leader's exit as the process's
    } else {
        unsafe { ctx.read_at::<u8>(l.exit_group_dead as usize) }.is_ok_and(|b| b != 0)
    };
    if !group_dead {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let exit_code = read_task_u32(task, l.task_exit_code).map_or(-1, |c| c as i32);
    let target_idx = process.target_idx;
    let (fault_id, hits, injected_at) = take_last_injection(tgid, process).unwrap_or_default();
    forget_process_counters(tgid, process);
    let _ = STOPPED.remove(&tgid);
    remove_target(tgid);
    emit(&Event {
        kind: EVENT_EXIT,
        fault_id,
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        tgid,
        tid: pid_tgid as u32,
        hit: hits,
        draw: injected_at,
        result: exit_code,
        target_idx,
        ..Event::default()
    });
    0
}
