//! Time triggers for processes that make no syscalls: a task-clock perf event on each instance's
//! root process (1 ms of its CPU time per sample, inherited by children) runs this program in
//! the victim's own context, so a CPU-bound victim dies within about a millisecond of its due
//! time. A sleeping one runs nothing; the loader then claims the fault itself.
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::perf_event, programs::PerfEventContext};

use crate::{decide::claim_due, maps::target};

#[perf_event]
pub fn fij_tick(_ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(process) = target(tgid) {
        claim_due(process, tgid, pid_tgid as u32);
    }
    0
}
