//! `action = "error"` of adopted and selected targets, where the kernel has BPF LSM: programs
//! on LSM hooks that a call passes before it does anything, returning the fault's `-errno`.
//! fij spawns no filter into such a process, so this is its path for calls no cgroup hook sees.
//!
//! An LSM hook serves several syscalls (`file_permission`: read, write, their vector and
//! positional forms, …), so the program reads the number of the syscall the task is in from
//! its user registers and evaluates the faults on that syscall only (`HOOK_LSM | nr`): a hit is
//! one call of the named syscall that reaches the hook — as `sys_enter` counts it, less the
//! calls that fail before (a bad descriptor, a file not open for writing).
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::lsm,
    programs::LsmContext,
};
use fij_common::{HOOK_LSM, HookKey};

use crate::{
    decide::on_error_hit,
    maps::{layout, target},
};

/// The verdict on the current task's call, given the verdict `earlier` of the BPF LSM programs
/// before this one (which stands).
#[inline(always)]
fn verdict(earlier: i32) -> i32 {
    if earlier != 0 {
        return earlier;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(process) = target(tgid) else {
        return 0;
    };
    let offset = layout().regs_syscall_nr;
    if offset == u32::MAX {
        return 0;
    }
    // SAFETY: helpers on the current task; the registers are read with probe_read.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8 };
    if regs.is_null() {
        return 0;
    }
    let Ok(nr) = (unsafe { bpf_probe_read_kernel(regs.add(offset as usize) as *const u64) }) else {
        return 0;
    };
    if nr >= 0x1_0000 {
        return 0; // not in a syscall (orig_ax is -1 then), or not one a fault can name
    }
    let key = HookKey {
        target_idx: process.target_idx,
        hook: HOOK_LSM | nr as u32,
    };
    let errno = on_error_hit(process, tgid, pid_tgid as u32, &key, 0);
    // An LSM program must return 0 or an errno in [-4095, -1] (the verifier checks it).
    if errno == 0 || errno > 4095 {
        return 0;
    }
    -(errno as i32)
}

/// `security_file_permission(file, mask)`: every read and write of an open file.
#[lsm(hook = "file_permission")]
pub fn fij_errno_file_permission(ctx: LsmContext) -> i32 {
    verdict(unsafe { ctx.arg(2) })
}

/// `security_file_open(file)`: every open.
#[lsm(hook = "file_open")]
pub fn fij_errno_file_open(ctx: LsmContext) -> i32 {
    verdict(unsafe { ctx.arg(1) })
}
