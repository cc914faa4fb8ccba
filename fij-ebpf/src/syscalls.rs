//! Syscall triggers: the raw `sys_enter` tracepoint, the cheapest syscall-entry hook here.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use fij_common::{HookKey, SeenTask};

use crate::{
    decide::{claim_due, on_hit},
    maps::{remember_task, seen_task, target, target_set_epoch},
};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn fij_sys_enter(ctx: RawTracePointContext) -> i32 {
    // sys_enter(struct pt_regs *regs, long id): the user registers, unique to the task.
    let regs: *const u8 = ctx.arg(0);
    // Read before the target set is looked up: a change in between voids what is remembered.
    let epoch = target_set_epoch();
    let task = match seen_task(regs as u64, epoch) {
        // What a task outside the target set pays for, from its second syscall on this CPU:
        // two inlined map loads, no helper call.
        Some(seen) if seen.is_target == 0 => return 0,
        Some(seen) => *seen,
        None => {
            let pid_tgid = bpf_get_current_pid_tgid();
            let tgid = (pid_tgid >> 32) as u32;
            let process = target(tgid);
            let seen = SeenTask {
                regs: regs as u64,
                epoch,
                tgid,
                tid: pid_tgid as u32,
                is_target: process.is_some() as u32,
                _pad: 0,
                process: process.copied().unwrap_or_default(),
            };
            remember_task(&seen);
            if process.is_none() {
                return 0;
            }
            seen
        }
    };
    let process = &task.process;
    let nr: i64 = ctx.arg(1);
    let key = HookKey {
        target_idx: process.target_idx,
        hook: nr as u32,
    };
    // The user registers also give the `port` filter the call's arguments.
    on_hit(process, task.tgid, task.tid, &key, nr as u64, regs);
    claim_due(process, task.tgid, task.tid);
    0
}
