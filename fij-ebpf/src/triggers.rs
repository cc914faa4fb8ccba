//! Triggers beyond syscalls. Each program finds which hook fired, then goes through the same
//! decision as syscalls (`decide::on_hit`), so conditions mean the same for every trigger kind.
//! The hit is counted for the task in whose context the hook runs ("current").
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_get_func_ip},
    macros::{kprobe, kretprobe, map, tracepoint, uprobe, uretprobe},
    maps::HashMap,
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use fij_common::{HOOK_PROBE, HOOK_TRACEPOINT, HookKey, MAX_KPROBES};

use crate::{decide::on_hit, maps::target};

/// Function address → probe index, for kprobes (aya attaches them without a cookie).
#[map]
pub static KPROBE_HOOKS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_KPROBES, 0);
/// The same for kretprobes: a kprobe and a kretprobe on one function are two probes with one
/// address (`bpf_get_func_ip` gives the function's in both), so one table would make them one.
#[map]
pub static KRETPROBE_HOOKS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_KPROBES, 0);

/// A hit of `hook` by the current task, if it is a target.
#[inline(always)]
fn hit(hook: u32, detail: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(process) = target(tgid) else {
        return;
    };
    let key = HookKey {
        target_idx: process.target_idx,
        hook,
    };
    on_hit(
        process,
        tgid,
        pid_tgid as u32,
        &key,
        detail,
        core::ptr::null(),
    );
}

/// Tracepoint slots: slot `i` serves the scenario's `i`-th distinct tracepoint, under hook
/// `HOOK_TRACEPOINT | i`. A program cannot tell which tracepoint fired (the kernel overwrites
/// the record's header with a pt_regs pointer, and aya attaches tracepoints without a cookie),
/// so each tracepoint gets its own program.
macro_rules! tracepoint_slots {
    ($($name:ident = $slot:literal),*) => {$(
        #[tracepoint]
        pub fn $name(_ctx: TracePointContext) -> u32 {
            hit(HOOK_TRACEPOINT | $slot, $slot);
            0
        }
    )*};
}

tracepoint_slots!(
    fij_tracepoint_0 = 0,
    fij_tracepoint_1 = 1,
    fij_tracepoint_2 = 2,
    fij_tracepoint_3 = 3,
    fij_tracepoint_4 = 4,
    fij_tracepoint_5 = 5,
    fij_tracepoint_6 = 6,
    fij_tracepoint_7 = 7
);

#[inline(always)]
fn cookie_hit(ctx: *mut core::ffi::c_void) {
    let index = unsafe { bpf_get_attach_cookie(ctx) } as u32;
    hit(HOOK_PROBE | index, index as u64);
}

#[uprobe]
pub fn fij_uprobe(ctx: ProbeContext) -> u32 {
    cookie_hit(ctx.as_ptr());
    0
}

#[uretprobe]
pub fn fij_uretprobe(ctx: RetProbeContext) -> u32 {
    cookie_hit(ctx.as_ptr());
    0
}

#[inline(always)]
fn function_hit(ctx: *mut core::ffi::c_void, hooks: &HashMap<u64, u32>) {
    let ip = unsafe { bpf_get_func_ip(ctx) };
    if let Some(&index) = unsafe { hooks.get(&ip) } {
        hit(HOOK_PROBE | index, index as u64);
    }
}

#[kprobe]
pub fn fij_kprobe(ctx: ProbeContext) -> u32 {
    function_hit(ctx.as_ptr(), &KPROBE_HOOKS);
    0
}

#[kretprobe]
pub fn fij_kretprobe(ctx: RetProbeContext) -> u32 {
    function_hit(ctx.as_ptr(), &KRETPROBE_HOOKS);
    0
}
