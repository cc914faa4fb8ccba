//! The tc (tcx) programs behind `crash` and `partition`: every packet of a silenced tuple is
//! lost, in both directions, on every interface fij attached them to. A packet matches when
//! either of its endpoints is the silenced (local) side. A node crash silences whole addresses
//! (`SILENT_ADDRESSES`): every IPv4/IPv6 packet from or to one of them, whatever its protocol
//! (ICMP echo included), and every ARP packet that asks for or announces one, is lost — the
//! node's addresses are as silent as a powered-off machine's.
//!
//! Packets are dropped on ingress only. On egress a silenced packet is turned around into the
//! same interface's ingress and dropped there: a drop on egress would tell a local sender
//! "dropped locally", which TCP treats as congestion (no backoff, no retransmission counted,
//! keepalive never fires) — nothing like a packet lost on a cut cable.
use aya_ebpf::{helpers::bpf_redirect, macros::classifier, programs::TcContext};
use fij_common::{CONFIG_SILENCED, CONFIG_SILENT_ADDRESSES, SilenceKey};

use crate::maps::{SILENCED, SILENT_ADDRESSES, config};

/// tcx verdicts: go on to the next program / drop.
const TCX_NEXT: i32 = -1;
const TCX_DROP: i32 = 2;
/// `bpf_redirect` flag: deliver to the interface's ingress.
const BPF_F_INGRESS: u64 = 1;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

/// One endpoint pair of a packet as seen on the wire.
struct Flow {
    protocol: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn is_silenced(ctx: &TcContext) -> bool {
    // Nothing silenced: the only cost for every packet is these two array lookups.
    (config(CONFIG_SILENCED) != 0 && flow(ctx).is_some_and(|f| silenced(&f)))
        || (config(CONFIG_SILENT_ADDRESSES) != 0 && address_silenced(ctx).unwrap_or(false))
}

/// Whether the packet comes from or goes to a silent address: the IPv4/IPv6 source or
/// destination, or an (Ethernet/IPv4) ARP packet's sender or target address.
#[inline(always)]
fn address_silenced(ctx: &TcContext) -> Option<bool> {
    let silent = |addr: [u8; 16]| unsafe { SILENT_ADDRESSES.get(&addr) }.is_some();
    let (src, dst) = match u16::from_be(ctx.load::<u16>(12).ok()?) {
        ETH_P_IP => (
            mapped(ctx.load(ETH_HLEN + 12).ok()?),
            mapped(ctx.load(ETH_HLEN + 16).ok()?),
        ),
        ETH_P_IPV6 => (ctx.load(ETH_HLEN + 8).ok()?, ctx.load(ETH_HLEN + 24).ok()?),
        // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4: sender IP at 14, target IP at 24.
        ETH_P_ARP if ctx.load::<[u8; 6]>(ETH_HLEN).ok()? == [0, 1, 8, 0, 6, 4] => (
            mapped(ctx.load(ETH_HLEN + 14).ok()?),
            mapped(ctx.load(ETH_HLEN + 24).ok()?),
        ),
        _ => return None,
    };
    Some(silent(src) || silent(dst))
}

#[classifier]
pub fn fij_tc_ingress(ctx: TcContext) -> i32 {
    if is_silenced(&ctx) {
        TCX_DROP
    } else {
        TCX_NEXT
    }
}

#[classifier]
pub fn fij_tc_egress(ctx: TcContext) -> i32 {
    if !is_silenced(&ctx) {
        return TCX_NEXT;
    }
    // Sent successfully, as far as the sender can tell; lost at ingress.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    unsafe { bpf_redirect(ifindex, BPF_F_INGRESS) as i32 }
}

/// The flow a packet belongs to. An ICMP/ICMPv6 port-unreachable belongs to the datagram it
/// quotes (one level deep), so the kernel's "nobody here" answer is silenced with that datagram.
#[inline(always)]
fn flow(ctx: &TcContext) -> Option<Flow> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let v6 = match ethertype {
        ETH_P_IP => false,
        ETH_P_IPV6 => true,
        _ => return None,
    };
    let (protocol, l4, src, dst) = l3(ctx, ETH_HLEN, v6)?;
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP => ports(ctx, l4, protocol, src, dst),
        // destination unreachable / port unreachable: ICMP type 3 code 3, ICMPv6 type 1 code 4
        IPPROTO_ICMP if ctx.load::<[u8; 2]>(l4).ok()? == [3, 3] => quoted(ctx, l4 + 8, v6),
        IPPROTO_ICMPV6 if ctx.load::<[u8; 2]>(l4).ok()? == [1, 4] => quoted(ctx, l4 + 8, v6),
        _ => None,
    }
}

#[inline(always)]
fn quoted(ctx: &TcContext, off: usize, v6: bool) -> Option<Flow> {
    let (protocol, l4, src, dst) = l3(ctx, off, v6)?;
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP => ports(ctx, l4, protocol, src, dst),
        _ => None,
    }
}

#[inline(always)]
fn mapped(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// The IPv4 or IPv6 header at `off`: (protocol, offset of the L4 header, source, destination).
/// IPv6 extension headers are not followed.
#[inline(always)]
fn l3(ctx: &TcContext, off: usize, v6: bool) -> Option<(u8, usize, [u8; 16], [u8; 16])> {
    if v6 {
        let protocol = ctx.load::<u8>(off + 6).ok()?;
        Some((
            protocol,
            off + 40,
            ctx.load(off + 8).ok()?,
            ctx.load(off + 24).ok()?,
        ))
    } else {
        let ihl = (ctx.load::<u8>(off).ok()? & 0x0f) as usize * 4;
        let protocol = ctx.load::<u8>(off + 9).ok()?;
        let src = mapped(ctx.load(off + 12).ok()?);
        let dst = mapped(ctx.load(off + 16).ok()?);
        Some((protocol, off + ihl, src, dst))
    }
}

#[inline(always)]
fn ports(ctx: &TcContext, l4: usize, protocol: u8, src: [u8; 16], dst: [u8; 16]) -> Option<Flow> {
    let sport = u16::from_be(ctx.load::<u16>(l4).ok()?);
    let dport = u16::from_be(ctx.load::<u16>(l4 + 2).ok()?);
    Some(Flow {
        protocol,
        src,
        dst,
        sport,
        dport,
    })
}

/// Whether either endpoint of `f` is a silenced socket: its exact tuple, or a listening /
/// unconnected socket on that port (bound to that address or to any).
#[inline(always)]
fn silenced(f: &Flow) -> bool {
    side_silenced(f.protocol, f.src, f.sport, f.dst, f.dport)
        || side_silenced(f.protocol, f.dst, f.dport, f.src, f.sport)
}

#[inline(always)]
fn side_silenced(protocol: u8, local: [u8; 16], lport: u16, remote: [u8; 16], rport: u16) -> bool {
    let mut key = SilenceKey {
        protocol,
        _pad: 0,
        local_port: lport,
        remote_port: rport,
        _pad2: 0,
        local_addr: local,
        remote_addr: remote,
    };
    if unsafe { SILENCED.get(&key) }.is_some() {
        return true;
    }
    key.remote_port = 0;
    key.remote_addr = [0; 16];
    if unsafe { SILENCED.get(&key) }.is_some() {
        return true;
    }
    key.local_addr = [0; 16];
    unsafe { SILENCED.get(&key) }.is_some()
}
