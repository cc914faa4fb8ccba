//! `crash`: a crashed process's sockets never speak again. Their tuples go into `SILENCED`
//! while the process dies, in its own context and before any FIN or RST is built; the tc
//! program (`net.rs`) then drops every packet of them — FINs, RSTs from the kernel's control
//! socket, ICMP port unreachable, and peers' segments alike.
//!
//! - TCP: `tcp_close` moves the socket's state (to FIN_WAIT1, LAST_ACK or CLOSE; a listener
//!   from LISTEN to CLOSE) before it sends anything, and `sock:inet_sock_set_state` fires there
//!   with the full tuple.
//! - UDP: no state change to hook, and a `sock_release` program may not read addresses; so the
//!   address and port are recorded at bind (`post_bind4/6`) by socket cookie, and looked up at
//!   release.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{cgroup_sock, raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, SockContext, TracePointContext},
};
use fij_common::{BoundUdp, CONFIG_SILENCED, EVENT_SILENCED, Event, SilenceEntry, SilenceKey};

use crate::maps::{BOUND_UDP, CONFIG, CRASHED, SILENCED, emit, layout};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_LISTEN: i32 = 10;

/// The all-zero wildcard for "any address" in both of its spellings (`::`, `::ffff:0.0.0.0`).
#[inline(always)]
fn normalized(addr: [u8; 16]) -> [u8; 16] {
    let v4_any =
        addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff && addr[12..] == [0; 4];
    if v4_any { [0; 16] } else { addr }
}

/// Silences `key` for the crash of `tgid` and reports it.
#[inline(always)]
fn silence(key: &SilenceKey, tgid: u32, fault_id: u32, target_idx: u32) {
    let now = unsafe { bpf_ktime_get_ns() };
    let entry = SilenceEntry {
        tgid,
        fault_id,
        ktime_ns: now,
    };
    if SILENCED.insert(key, &entry, 0).is_ok() {
        let _ = CONFIG.set(CONFIG_SILENCED, 1u64, 0);
    }
    emit(&Event {
        kind: EVENT_SILENCED,
        fault_id,
        ktime_ns: now,
        tgid,
        tid: bpf_get_current_pid_tgid() as u32,
        detail: (key.protocol as u64) << 32
            | (key.local_port as u64) << 16
            | key.remote_port as u64,
        target_idx,
        ..Event::default()
    });
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn fij_tcp_state(ctx: TracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(mark) = (unsafe { CRASHED.get(&tgid) }) else {
        return 0;
    };
    let _ = tcp_state(&ctx, tgid, mark.fault_id, mark.target_idx);
    0
}

#[inline(always)]
fn tcp_state(ctx: &TracePointContext, tgid: u32, fault_id: u32, target_idx: u32) -> Option<()> {
    let l = layout();
    let read = |off: u32| {
        if off == u32::MAX {
            None
        } else {
            Some(off as usize)
        }
    };
    let protocol: u16 = unsafe { ctx.read_at(read(l.tcp_protocol)?) }.ok()?;
    if protocol != IPPROTO_TCP as u16 {
        return None;
    }
    let oldstate: i32 = unsafe { ctx.read_at(read(l.tcp_oldstate)?) }.ok()?;
    let local_port: u16 = unsafe { ctx.read_at(read(l.tcp_sport)?) }.ok()?;
    let remote_port: u16 = unsafe { ctx.read_at(read(l.tcp_dport)?) }.ok()?;
    let local: [u8; 16] = unsafe { ctx.read_at(read(l.tcp_saddr_v6)?) }.ok()?;
    let remote: [u8; 16] = unsafe { ctx.read_at(read(l.tcp_daddr_v6)?) }.ok()?;
    let listening = oldstate == TCP_LISTEN;
    let key = SilenceKey {
        protocol: IPPROTO_TCP,
        _pad: 0,
        local_port,
        remote_port: if listening { 0 } else { remote_port },
        _pad2: 0,
        local_addr: normalized(local),
        remote_addr: if listening {
            [0; 16]
        } else {
            normalized(remote)
        },
    };
    silence(&key, tgid, fault_id, target_idx);
    Some(())
}

/// The verifier only accepts `bpf_sock` reads of a field's exact width: read each word alone,
/// volatile so the compiler cannot merge two of them into one 8-byte load.
#[inline(always)]
fn word(field: &u32) -> u32 {
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
fn record_udp_bind(ctx: &SockContext, local_addr: [u8; 16]) {
    let sk = unsafe { &*ctx.sock };
    if word(&sk.protocol) as u8 != IPPROTO_UDP {
        return;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let bound = BoundUdp {
        local_addr: normalized(local_addr),
        local_port: word(&sk.src_port) as u16,
        _pad: [0; 6],
    };
    let _ = BOUND_UDP.insert(&cookie, &bound, 0);
}

#[cgroup_sock(post_bind4)]
pub fn fij_udp_bind4(ctx: SockContext) -> i32 {
    let addr = word(unsafe { &(*ctx.sock).src_ip4 }).to_ne_bytes();
    record_udp_bind(
        &ctx,
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
        ],
    );
    1 // allow: fij never changes what a socket does
}

#[cgroup_sock(post_bind6)]
pub fn fij_udp_bind6(ctx: SockContext) -> i32 {
    let ip6 = unsafe { &(*ctx.sock).src_ip6 };
    let mut addr = [0u8; 16];
    addr[0..4].copy_from_slice(&word(&ip6[0]).to_ne_bytes());
    addr[4..8].copy_from_slice(&word(&ip6[1]).to_ne_bytes());
    addr[8..12].copy_from_slice(&word(&ip6[2]).to_ne_bytes());
    addr[12..16].copy_from_slice(&word(&ip6[3]).to_ne_bytes());
    record_udp_bind(&ctx, addr);
    1
}

#[cgroup_sock(sock_release)]
pub fn fij_sock_release(ctx: SockContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(bound) = (unsafe { BOUND_UDP.get(&cookie) }).copied() else {
        return 1;
    };
    let _ = BOUND_UDP.remove(&cookie);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(mark) = unsafe { CRASHED.get(&tgid) } {
        let key = SilenceKey {
            protocol: IPPROTO_UDP,
            _pad: 0,
            local_port: bound.local_port,
            remote_port: 0,
            _pad2: 0,
            local_addr: bound.local_addr,
            remote_addr: [0; 16],
        };
        silence(&key, tgid, mark.fault_id, mark.target_idx);
    }
    1
}

/// sched_process_free(struct task_struct *p): the task is gone and reaped, so its pid may be
/// reused from now on; forget that it crashed.
#[raw_tracepoint(tracepoint = "sched_process_free")]
pub fn fij_task_free(ctx: RawTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let offset = layout().task_pid;
    if offset == u32::MAX {
        return 0;
    }
    if let Ok(pid) = unsafe { bpf_probe_read_kernel(task.add(offset as usize) as *const u32) } {
        let _ = CRASHED.remove(&pid);
    }
    0
}
