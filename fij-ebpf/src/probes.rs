//! No-op programs that only `fij doctor` loads and attaches, to find out whether this kernel
//! offers a program type or attach point (uprobes, kprobes, tc) that fij does not use yet.
//! They touch no map and have no effect where they run.
use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{classifier, fentry, kprobe, uprobe},
    programs::{FEntryContext, ProbeContext, TcContext},
};

#[uprobe]
pub fn fij_probe_uprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[kprobe]
pub fn fij_probe_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

/// A BPF trampoline program: where fentry loads, fmod_ret (which could fail any syscall with an
/// errno) has the trampolines it needs.
#[fentry(function = "do_sys_openat2")]
pub fn fij_probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}

/// Lets every packet through unchanged.
#[classifier]
pub fn fij_probe_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}
