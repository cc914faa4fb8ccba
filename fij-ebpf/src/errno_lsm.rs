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
    programs::LsmContext,
};
use fij_common::{HOOK_LSM, HookKey};

use crate::{
    decide::on_error_hit,
    maps::{layout, target},
};

/// The verdict on the current task's call, given the verdict `earlier` of the BPF LSM programs
/// before this one (which stands). 64 bits wide: the verifier (6.12) checks the whole register
/// against [-4095, 0], and an `i32` return leaves a negative value zero-extended.
#[inline(always)]
fn verdict(earlier: i64) -> i64 {
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
    // The verifier of 6.12 keeps no bounds through a negation: the negated value is read back
    // (volatile, so the compiler cannot move the check before the negation) and clamped.
    let ret = -(errno as i64);
    unsafe { core::ptr::read_volatile(&ret) }.clamp(-4095, 0)
}

// The programs are written out rather than with `#[lsm]`, whose wrapper returns an `i32`.

/// `security_file_permission(file, mask)`: every read and write of an open file.
#[unsafe(no_mangle)]
#[unsafe(link_section = "lsm/file_permission")]
pub fn fij_errno_file_permission(ctx: *mut core::ffi::c_void) -> i64 {
    verdict(unsafe { LsmContext::new(ctx).arg::<i32>(2) } as i64)
}

/// `security_file_open(file)`: every open.
#[unsafe(no_mangle)]
#[unsafe(link_section = "lsm/file_open")]
pub fn fij_errno_file_open(ctx: *mut core::ffi::c_void) -> i64 {
    verdict(unsafe { LsmContext::new(ctx).arg::<i32>(1) } as i64)
}
