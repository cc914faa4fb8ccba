//! Syscall triggers: the raw `sys_enter` tracepoint, the cheapest syscall-entry hook here.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};

use fij_common::CONFIG_DUE;

use crate::{
    decide::{claim_due, on_hook_hit},
    maps::{SEEN_TASKS, config, syscall_faults, target, target_set_epoch},
};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn fij_sys_enter(ctx: RawTracePointContext) -> i32 {
    // sys_enter(struct pt_regs *regs, long id): the user registers, unique to the task.
    let regs = ctx.arg::<*const u8>(0) as u64;
    // Read before the target set is looked up: a change in between voids what is remembered.
    let epoch = target_set_epoch();
    // Used in place, not copied: the call chain below must fit the verifier's 512-byte stack
    // on kernels up to 6.12. Only this program writes the slots, and it does not nest on a CPU.
    let Some(seen) = SEEN_TASKS.get_ptr_mut(0) else {
        return 0;
    };
    let seen = unsafe { &mut *seen };
    let seen = if seen.slots[0].regs == regs && seen.slots[0].epoch == epoch {
        &mut seen.slots[0]
    } else if seen.slots[1].regs == regs && seen.slots[1].epoch == epoch {
        &mut seen.slots[1]
    } else {
        let victim = if seen.next_victim == 0 {
            seen.next_victim = 1;
            &mut seen.slots[0]
        } else {
            seen.next_victim = 0;
            &mut seen.slots[1]
        };
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        victim.regs = regs;
        victim.epoch = epoch;
        victim.tgid = tgid;
        victim.tid = pid_tgid as u32;
        match target(tgid) {
            Some(process) => {
                victim.process = *process;
                victim.is_target = 1;
            }
            None => victim.is_target = 0,
        }
        victim
    };
    // What a task outside the target set pays for, from its second syscall on this CPU: a few
    // inlined map loads, no helper call.
    if seen.is_target == 0 {
        return 0;
    }
    let nr: i64 = ctx.arg(1);
    if let Some(faults) = syscall_faults(seen.process.target_idx, nr) {
        // The user registers also give the `port` filter the call's arguments.
        on_hook_hit(
            faults,
            &seen.process,
            seen.tgid,
            seen.tid,
            nr as u64,
            regs as *const u8,
        );
    }
    // Checked here, not only in `claim_due`: a call to it (a BPF-to-BPF call, and a `ret` through
    // the return thunk on CPUs with SRSO "Safe RET") at every syscall of a target that has no
    // time-triggered fault cost ~5 ns of the armed path.
    if config(CONFIG_DUE) != 0 {
        claim_due(&seen.process, seen.tgid, seen.tid);
    }
    0
}
