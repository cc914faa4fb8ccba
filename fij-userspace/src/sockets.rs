//! The sockets a process holds, read from /proc: its fds (`socket:[INODE]`) matched against
//! the socket tables of its network namespace (`/proc/PID/net/{tcp,tcp6,udp,udp6}`).
//! `partition` silences these tuples. And the end of a crashed process's orphaned TCP sockets,
//! through sock_diag netlink.
use std::{collections::HashSet, io};

use anyhow::{Context, Result};
use fij_common::SilenceKey;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, SockDiagDestroy, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use tracing::{debug, warn};

const TCP_LISTEN: u8 = 0x0a;

/// Silence keys for every TCP and UDP socket `pid` holds now. Listening and unconnected
/// sockets get a wildcard remote side; a socket bound to any address a wildcard local address.
/// `ports`, when not empty, keeps only sockets whose local or remote port is in it.
pub fn process_sockets(pid: u32, ports: &[u16]) -> Result<Vec<SilenceKey>> {
    let inodes: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing the fds of pid {pid}"))?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let mut keys = Vec::new();
    for (table, protocol) in [("tcp", 6u8), ("tcp6", 6), ("udp", 17), ("udp6", 17)] {
        let path = format!("/proc/{pid}/net/{table}");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        }; // no IPv6, say
        for line in text.lines().skip(1) {
            if let Some((inode, key)) = parse_line(line, protocol)
                && inodes.contains(&inode)
                && (ports.is_empty()
                    || ports.contains(&key.local_port)
                    || ports.contains(&key.remote_port))
            {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

/// One line of /proc/net/{tcp,udp}[6]: `sl local rem st tx:rx tr:when retr uid timeout inode …`.
fn parse_line(line: &str, protocol: u8) -> Option<(u64, SilenceKey)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (local_addr, local_port) = parse_endpoint(fields.get(1)?)?;
    let (remote_addr, remote_port) = parse_endpoint(fields.get(2)?)?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    // A listener's "remote" is all zeros already; a UDP socket may be connected or not.
    let listening = protocol == 6 && state == TCP_LISTEN;
    let key = SilenceKey {
        protocol,
        local_port,
        remote_port: if listening { 0 } else { remote_port },
        local_addr,
        remote_addr: if listening { [0; 16] } else { remote_addr },
        ..SilenceKey::default()
    };
    Some((inode, key))
}

/// `0100007F:1F90` (IPv4) or 32 hex digits + port (IPv6): the address is printed as 32-bit
/// words in host (little-endian) order. Returns the 16-byte form fij uses (IPv4 v4-mapped;
/// any-address as all zeros) and the port.
fn parse_endpoint(text: &str) -> Option<([u8; 16], u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = [0u8; 16];
    match addr.len() {
        8 => {
            let v4 = u32::from_str_radix(addr, 16).ok()?.to_le_bytes();
            if v4 != [0; 4] {
                bytes[10..12].copy_from_slice(&[0xff, 0xff]);
                bytes[12..].copy_from_slice(&v4);
            }
        }
        32 => {
            for i in 0..4 {
                let word = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            if bytes[..10] == [0; 10] && bytes[10..12] == [0xff, 0xff] && bytes[12..] == [0; 4] {
                bytes = [0; 16];
            }
        }
        _ => return None,
    }
    Some((bytes, port))
}

/// Destroys the sockets still holding the silenced TCP tuples of a crashed process (the orphans
/// that outlive it in FIN_WAIT or LAST_ACK, retransmitting their FIN), so that lifting the
/// silence lets peers meet a host with no state — RST for their next segment — instead of a
/// late FIN. Uses sock_diag's SOCK_DESTROY (needs CONFIG_INET_DIAG_DESTROY) on every TCP socket
/// of fij's network namespace, IPv4 and IPv6, in any state, whose port pair matches — what
/// `ss -K -t state all '( sport = :L and dport = :R )'` did. Listening and UDP tuples have no
/// socket left to destroy.
pub fn destroy_orphans(keys: &[SilenceKey]) -> Result<()> {
    let pairs: Vec<(u16, u16)> = keys
        .iter()
        .filter(|k| k.protocol == 6 && k.remote_port != 0)
        .map(|k| (k.local_port, k.remote_port))
        .collect();
    if pairs.is_empty() {
        return Ok(());
    }
    let mut diag = SockDiag::open().context("opening a sock_diag netlink socket")?;
    for family in [AF_INET, AF_INET6] {
        let sockets = diag
            .tcp_sockets(family)
            .with_context(|| format!("listing TCP sockets (address family {family})"))?;
        for id in sockets
            .iter()
            .filter(|id| pairs.contains(&(id.source_port, id.destination_port)))
        {
            match diag.destroy_tcp(family, id) {
                Ok(()) => debug!(
                    local = %id.source_address, local_port = id.source_port,
                    remote = %id.destination_address, remote_port = id.destination_port,
                    "destroyed a crashed process's socket"
                ),
                // Gone since the dump (it finished closing), as `ss -K` treats it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                // A kernel without CONFIG_INET_DIAG_DESTROY: the orphan lives on and may send
                // its FIN once the silence is lifted. `ss -K` ignored this silently.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => warn!(
                    local_port = id.source_port,
                    remote_port = id.destination_port,
                    "cannot destroy a crashed process's socket: this kernel has no SOCK_DESTROY \
                     (CONFIG_INET_DIAG_DESTROY)"
                ),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "destroying the TCP socket {}:{} → {}:{} (SOCK_DESTROY)",
                            id.source_address,
                            id.source_port,
                            id.destination_address,
                            id.destination_port
                        )
                    });
                }
            }
        }
    }
    Ok(())
}

/// A NETLINK_SOCK_DIAG socket: answers about, and acts on, the sockets of the caller's network
/// namespace. Requests go one at a time, each read to its end before the next.
struct SockDiag {
    socket: Socket,
    sequence: u32,
}

impl SockDiag {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// The ids of every TCP socket of `family` (`AF_INET` or `AF_INET6`), in any state.
    fn tcp_sockets(&mut self, family: u8) -> io::Result<Vec<SocketId>> {
        let request = SockDiagMessage::InetRequest(tcp_request(family, empty_id(family)));
        self.send(NLM_F_REQUEST | NLM_F_DUMP, request)?;
        let mut ids = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            for payload in parse_all(&datagram)? {
                match payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        ids.push(response.header.socket_id)
                    }
                    NetlinkPayload::Done(_) => return Ok(ids),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    _ => {}
                }
            }
        }
    }

    /// SOCK_DESTROY of the TCP socket `id` (as a dump reported it, cookie included): the kernel
    /// aborts it (`tcp_abort`: no FIN, no RST is sent for an orphan) and frees it.
    fn destroy_tcp(&mut self, family: u8, id: &SocketId) -> io::Result<()> {
        let request = SockDiagDestroy::new(SockDiagMessage::InetRequest(tcp_request(
            family,
            id.clone(),
        )));
        self.send(NLM_F_REQUEST | NLM_F_ACK, request)?;
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            for payload in parse_all(&datagram)? {
                if let NetlinkPayload::Error(e) = payload {
                    // An error message with code 0 is the acknowledgement.
                    return match e.code {
                        None => Ok(()),
                        Some(_) => Err(e.to_io()),
                    };
                }
            }
        }
    }

    fn send<M: NetlinkSerializable>(&mut self, flags: u16, payload: M) -> io::Result<()> {
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(())
    }
}

fn tcp_request(family: u8, socket_id: SocketId) -> InetRequest {
    InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id,
    }
}

fn empty_id(family: u8) -> SocketId {
    if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    }
}

/// The netlink messages of one datagram, in order.
fn parse_all(datagram: &[u8]) -> io::Result<Vec<NetlinkPayload<SockDiagMessage>>> {
    let mut payloads = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(rest)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        // Messages are 4-byte aligned within a datagram.
        let length = (message.header.length as usize).next_multiple_of(4);
        if length == 0 {
            break;
        }
        payloads.push(message.payload);
        rest = rest.get(length..).unwrap_or_default();
    }
    Ok(payloads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_endpoint_is_v4_mapped() {
        let (addr, port) = parse_endpoint("0100007F:1F90").unwrap();
        assert_eq!(port, 8080);
        assert_eq!(
            addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
        );
        assert_eq!(parse_endpoint("00000000:0000").unwrap(), ([0; 16], 0));
    }

    #[test]
    fn ipv6_endpoint_words_are_little_endian() {
        // ::1 port 443
        let (addr, port) = parse_endpoint("00000000000000000000000001000000:01BB").unwrap();
        assert_eq!(port, 443);
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        assert_eq!(addr, loopback);
        // ::ffff:0.0.0.0 (a dual-stack wildcard) is the all-zero wildcard
        assert_eq!(
            parse_endpoint("0000000000000000FFFF000000000000:0050")
                .unwrap()
                .0,
            [0; 16]
        );
    }

    #[test]
    fn listener_line_gets_a_wildcard_remote() {
        let line = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0";
        let (inode, key) = parse_line(line, 6).unwrap();
        assert_eq!(inode, 4242);
        assert_eq!(
            (key.protocol, key.local_port, key.remote_port),
            (6, 8080, 0)
        );
        assert_eq!(key.remote_addr, [0; 16]);
    }
}
