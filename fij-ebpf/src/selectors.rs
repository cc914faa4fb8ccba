//! Selector targets (`comm`, `exe`, `uid`, `cgroup`): processes that match join the target set
//! in the kernel when they exec, or when a non-target parent that matches forks them (uid and
//! cgroup are inherited); the loader adds those already running at the start.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use fij_common::{
    COMM_KEY_LEN, CONFIG_SELECTORS, EVENT_JOINED, EXE_KEY_LEN, Event, MAX_SELECTORS_PER_KIND,
    SELECTOR_CGROUP, SELECTOR_COMM, SELECTOR_EXE, SELECTOR_UID, TargetProcess,
};

use crate::maps::{add_target, config, emit, layout, target};

#[map]
pub static COMM_TARGETS: HashMap<[u8; COMM_KEY_LEN], u32> =
    HashMap::with_max_entries(MAX_SELECTORS_PER_KIND, 0);
#[map]
pub static EXE_TARGETS: HashMap<[u8; EXE_KEY_LEN], u32> =
    HashMap::with_max_entries(MAX_SELECTORS_PER_KIND, 0);
#[map]
pub static UID_TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SELECTORS_PER_KIND, 0);
#[map]
pub static CGROUP_TARGETS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_SELECTORS_PER_KIND, 0);

/// The selector target the current task matches by its inherited attributes (uid, cgroup).
#[inline(always)]
pub fn match_inherited(selectors: u64) -> Option<(u32, u64)> {
    if selectors & SELECTOR_UID != 0 {
        let uid = bpf_get_current_uid_gid() as u32;
        if let Some(&idx) = unsafe { UID_TARGETS.get(&uid) } {
            return Some((idx, SELECTOR_UID));
        }
    }
    if selectors & SELECTOR_CGROUP != 0 {
        let id = unsafe { bpf_get_current_cgroup_id() };
        if let Some(&idx) = unsafe { CGROUP_TARGETS.get(&id) } {
            return Some((idx, SELECTOR_CGROUP));
        }
    }
    None
}

/// Adds `pid` to the target set as a member of target `target_idx` and reports it.
#[inline(always)]
pub fn join(pid: u32, target_idx: u32, reason: u64) {
    let now = unsafe { bpf_ktime_get_ns() };
    let entry = TargetProcess {
        target_idx,
        instance: 0,
        generation: now,
        ..TargetProcess::default()
    };
    if add_target(pid, &entry) {
        emit(&Event {
            kind: EVENT_JOINED,
            ktime_ns: now,
            tgid: pid,
            tid: pid,
            detail: reason,
            target_idx,
            ..Event::default()
        });
    }
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn fij_exec(ctx: TracePointContext) -> u32 {
    let selectors = config(CONFIG_SELECTORS);
    if selectors == 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if target(tgid).is_some() {
        return 0;
    }
    if let Some((idx, reason)) = match_exec(&ctx, selectors).or_else(|| match_inherited(selectors))
    {
        // `add_target` moves the target set's epoch on: this task's next syscall is looked at
        // afresh, although it may have been remembered as a non-target.
        join(tgid, idx, reason);
    }
    0
}

/// The selector target the just-exec'd task matches by name or executable path.
#[inline(always)]
fn match_exec(ctx: &TracePointContext, selectors: u64) -> Option<(u32, u64)> {
    if selectors & SELECTOR_COMM != 0
        && let Ok(comm) = bpf_get_current_comm()
        && let Some(&idx) = unsafe { COMM_TARGETS.get(&comm) }
    {
        return Some((idx, SELECTOR_COMM));
    }
    if selectors & SELECTOR_EXE != 0 {
        let offset = layout().exec_filename;
        if offset == u32::MAX {
            return None;
        }
        // __data_loc: low 16 bits = offset of the string in the record.
        let loc: u32 = unsafe { ctx.read_at(offset as usize) }.ok()?;
        let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
        let mut path = [0u8; EXE_KEY_LEN];
        unsafe { bpf_probe_read_kernel_str_bytes(src, &mut path) }.ok()?;
        if let Some(&idx) = unsafe { EXE_TARGETS.get(&path) } {
            return Some((idx, SELECTOR_EXE));
        }
    }
    None
}
