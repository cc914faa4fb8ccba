//! Syscall triggers: the raw `sys_enter` tracepoint, the cheapest syscall-entry hook here.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use fij_common::HookKey;

use crate::{
    decide::{claim_due, on_hit},
    maps::{cpu_may_run_target, may_be_target, set_cpu_may_run_target, target, task_tgid_offset},
};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn fij_sys_enter(ctx: RawTracePointContext) -> i32 {
    // What a task outside the target set pays for: one inlined per-CPU load, no helper call.
    if !cpu_may_run_target() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(process) = target(tgid) else {
        return 0;
    };
    // sys_enter(struct pt_regs *regs, long id)
    let nr: i64 = ctx.arg(1);
    let key = HookKey {
        target_idx: process.target_idx,
        hook: nr as u32,
    };
    // sys_enter(struct pt_regs *regs, long id): the user registers, for the `port` filter.
    let regs: *const u8 = ctx.arg(0);
    on_hit(process, tgid, pid_tgid as u32, &key, nr as u64, regs);
    claim_due(process, tgid, pid_tgid as u32);
    0
}

/// Keeps `CPU_MAY_RUN_TARGET` true to the task a CPU switches to, so that `fij_sys_enter` can
/// leave non-targets at once. Attached only with `fij_sys_enter`, once the target set is filled.
/// sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn fij_sched_switch(ctx: RawTracePointContext) -> i32 {
    let next: *const u8 = ctx.arg(2);
    let offset = task_tgid_offset();
    let may = offset == u32::MAX
        || match unsafe { bpf_probe_read_kernel(next.add(offset as usize) as *const u32) } {
            Ok(tgid) => may_be_target(tgid),
            Err(_) => true, // unsure: the full check decides
        };
    set_cpu_may_run_target(may);
    0
}
