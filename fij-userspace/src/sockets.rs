//! The sockets a process holds, read from /proc: its fds (`socket:[INODE]`) matched against
//! the socket tables of its network namespace (`/proc/PID/net/{tcp,tcp6,udp,udp6}`).
//! `partition` silences these tuples.
use std::collections::HashSet;

use anyhow::{Context, Result};
use fij_common::SilenceKey;

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
/// late FIN. Uses SOCK_DESTROY through iproute2's `ss -K` (needs CONFIG_INET_DIAG_DESTROY);
/// matches on the port pair. Listening and UDP tuples have no socket left to destroy.
pub fn destroy_orphans(keys: &[SilenceKey]) -> Result<()> {
    for key in keys
        .iter()
        .filter(|k| k.protocol == 6 && k.remote_port != 0)
    {
        let filter = format!(
            "( sport = :{} and dport = :{} )",
            key.local_port, key.remote_port
        );
        let status = std::process::Command::new("ss")
            .args(["-K", "-t", "-n", "state", "all", &filter])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running `ss -K` (iproute2) to destroy a crashed process's sockets")?;
        anyhow::ensure!(status.success(), "`ss -K {filter}` failed: {status}");
    }
    Ok(())
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
