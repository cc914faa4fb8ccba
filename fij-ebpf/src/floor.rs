//! The floor for `cargo xtask bench`: an empty program on the same hook as `fij_sys_enter`, so
//! the benchmark can tell the cost of fij's own work from the cost of having any program on
//! `sys_enter` at all. fij never attaches it; only the bench's `fij-floor` helper does.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn fij_floor(_ctx: RawTracePointContext) -> i32 {
    0
}
