//! Syscall triggers: the raw `sys_enter` tracepoint, the cheapest syscall-entry hook here.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use fij_common::HookKey;

use crate::{
    decide::{claim_due, on_hit},
    maps::{known_non_target, remember_non_target, target, target_set_epoch},
};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn fij_sys_enter(ctx: RawTracePointContext) -> i32 {
    // sys_enter(struct pt_regs *regs, long id): the user registers, unique to the task.
    let regs: *const u8 = ctx.arg(0);
    // Read before the target set is looked up: a join in between voids what is remembered.
    let epoch = target_set_epoch();
    // What a task outside the target set pays for, from its second syscall on this CPU: two
    // inlined map loads, no helper call.
    if known_non_target(regs as u64, epoch) {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(process) = target(tgid) else {
        remember_non_target(regs as u64, epoch);
        return 0;
    };
    let nr: i64 = ctx.arg(1);
    let key = HookKey {
        target_idx: process.target_idx,
        hook: nr as u32,
    };
    // The user registers also give the `port` filter the call's arguments.
    on_hit(process, tgid, pid_tgid as u32, &key, nr as u64, regs);
    claim_due(process, tgid, pid_tgid as u32);
    0
}
