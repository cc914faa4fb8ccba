//! Syscall triggers: the raw `sys_enter` tracepoint, the cheapest syscall-entry hook here.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use fij_common::HookKey;

use crate::{
    decide::{claim_due, on_hit},
    maps::target,
};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn fij_sys_enter(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The only work a process outside the target set pays for: one hash lookup.
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
