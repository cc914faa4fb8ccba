//! `action = "error"`: the cgroup-v2 socket hooks that fail a call with a chosen errno
//! (`bpf_set_retval`, kernel ≥ 5.18). Attached to the cgroup-v2 root, so every process's
//! calls pass through them; a process outside the target set leaves at the flag check, and a
//! target's hit goes through the same conditions as every trigger (`decide::on_error_hit`).
//!
//! Each hook runs once per call it can fail, in the caller's context, before the call does
//! anything (but getsockopt, whose hook runs after the kernel's getsockopt, which has no side
//! effect): one hit per connect(2) that reaches the protocol (not a retry of a non-blocking
//! connect in progress), per bind(2), per UDP datagram sent with an address, per
//! get/setsockopt(2), per socket(2) of an inet family.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_set_retval},
    macros::{cgroup_sock, cgroup_sock_addr, cgroup_sockopt},
    programs::{SockAddrContext, SockContext, SockoptContext},
};
use fij_common::{
    ERRNO_HOOK_BIND, ERRNO_HOOK_CONNECT, ERRNO_HOOK_GETSOCKOPT, ERRNO_HOOK_SETSOCKOPT,
    ERRNO_HOOK_SOCKET, ERRNO_HOOK_UDP_SEND, HOOK_ERRNO, HookKey,
};

use crate::{decide::on_error_hit, maps::target};

/// Cgroup verdicts: let the call through / fail it (with the errno set by `bpf_set_retval`).
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

/// The verdict on the current task's call at `errno_hook`; `port` in host order (0: none).
#[inline(always)]
fn verdict(errno_hook: u32, port: u32) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(process) = target(tgid) else {
        return ALLOW;
    };
    let key = HookKey {
        target_idx: process.target_idx,
        hook: HOOK_ERRNO | errno_hook,
    };
    match on_error_hit(process, tgid, pid_tgid as u32, &key, port) {
        0 => ALLOW,
        errno => {
            unsafe { bpf_set_retval(-(errno as i32)) };
            REJECT
        }
    }
}

/// The destination (connect, sendmsg) or local (bind) port of a sock_addr hook, host order.
#[inline(always)]
fn user_port(ctx: &SockAddrContext) -> u32 {
    // A 4-byte read, as the verifier wants; the port is the first two bytes, network order.
    let word = unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).user_port) };
    u16::from_be(word as u16) as u32
}

#[cgroup_sock_addr(connect4)]
pub fn fij_errno_connect4(ctx: SockAddrContext) -> i32 {
    verdict(ERRNO_HOOK_CONNECT, user_port(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn fij_errno_connect6(ctx: SockAddrContext) -> i32 {
    verdict(ERRNO_HOOK_CONNECT, user_port(&ctx))
}

#[cgroup_sock_addr(bind4)]
pub fn fij_errno_bind4(ctx: SockAddrContext) -> i32 {
    verdict(ERRNO_HOOK_BIND, user_port(&ctx))
}

#[cgroup_sock_addr(bind6)]
pub fn fij_errno_bind6(ctx: SockAddrContext) -> i32 {
    verdict(ERRNO_HOOK_BIND, user_port(&ctx))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn fij_errno_sendmsg4(ctx: SockAddrContext) -> i32 {
    verdict(ERRNO_HOOK_UDP_SEND, user_port(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn fij_errno_sendmsg6(ctx: SockAddrContext) -> i32 {
    verdict(ERRNO_HOOK_UDP_SEND, user_port(&ctx))
}

#[cgroup_sockopt(getsockopt)]
pub fn fij_errno_getsockopt(_ctx: SockoptContext) -> i32 {
    verdict(ERRNO_HOOK_GETSOCKOPT, 0)
}

#[cgroup_sockopt(setsockopt)]
pub fn fij_errno_setsockopt(_ctx: SockoptContext) -> i32 {
    verdict(ERRNO_HOOK_SETSOCKOPT, 0)
}

#[cgroup_sock(sock_create)]
pub fn fij_errno_socket(_ctx: SockContext) -> i32 {
    verdict(ERRNO_HOOK_SOCKET, 0)
}
