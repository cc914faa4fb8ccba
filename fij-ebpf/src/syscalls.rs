//! Syscall triggers: the raw `sys_enter` tracepoint, the cheapest syscall-entry hook here.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use fij_common::HookKey;

use crate::{
    decide::{claim_due, on_hit},
    maps::{SEEN_TASK, target, target_set_epoch},
};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn fij_sys_enter(ctx: RawTracePointContext) -> i32 {
    // sys_enter(struct pt_regs *regs, long id): the user registers, unique to the task.
    let regs = ctx.arg::<*const u8>(0) as u64;
    // Read before the target set is looked up: a change in between voids what is remembered.
    let epoch = target_set_epoch();
    // Used in place, not copied: the call chain below must fit the verifier's 512-byte stack
    // on kernels up to 6.12. Only this program writes the slot, and it does not nest on a CPU.
    let Some(seen) = SEEN_TASK.get_ptr_mut(0) else {
        return 0;
    };
    let seen = unsafe { &mut *seen };
    if seen.regs != regs || seen.epoch != epoch {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        seen.regs = regs;
        seen.epoch = epoch;
        seen.tgid = tgid;
        seen.tid = pid_tgid as u32;
        match target(tgid) {
            Some(process) => {
                seen.process = *process;
                seen.is_target = 1;
            }
            None => seen.is_target = 0,
        }
    }
    // What a task outside the target set pays for, from its second syscall on this CPU: two
    // inlined map loads, no helper call.
    if seen.is_target == 0 {
        return 0;
    }
    let nr: i64 = ctx.arg(1);
    let key = HookKey {
        target_idx: seen.process.target_idx,
        hook: nr as u32,
    };
    // The user registers also give the `port` filter the call's arguments.
    on_hit(
        &seen.process,
        seen.tgid,
        seen.tid,
        &key,
        nr as u64,
        regs as *const u8,
    );
    claim_due(&seen.process, seen.tgid, seen.tid);
    0
}
