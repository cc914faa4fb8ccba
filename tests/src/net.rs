//! Network helpers of the crash / stop / partition tests: the peer's view of a connection
//! (read outcomes, `TCP_INFO`), a packet capture on an interface (an `AF_PACKET` socket of the
//! test process), bystander connections, and throw-away network namespaces joined to the init
//! namespace by a veth pair.
//!
//! Everything a test creates here is removed when its guard is dropped, also when the test
//! panics.
use std::{
    ffi::CString,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{Fij, FijOutput, RunningFij, TempDir, send_signal, wait_until};

/// The `fij-net` binary next to the test executable's directory (`target/<profile>/deps/..`),
/// where Cargo builds the bins of this package for its integration tests.
pub fn net_victim_bin() -> crate::Workload {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    crate::Workload::new(dir.join("fij-net").to_str().expect("UTF-8 path"))
}

/// The ports a `fij-net` victim wrote to `path` (space-separated), once it is there.
pub fn read_ports(path: &Path, timeout: Duration) -> Vec<u16> {
    wait_until(
        timeout,
        &format!("the victim's port file {}", path.display()),
        || {
            let text = std::fs::read_to_string(path).ok()?;
            text.split_whitespace()
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u16>>>()
        },
    )
}

/// The one port in a port file.
pub fn read_port(path: &Path, timeout: Duration) -> u16 {
    let ports = read_ports(path, timeout);
    assert_eq!(ports.len(), 1, "one port expected in {}", path.display());
    ports[0]
}

// ---------------------------------------------------------------------------------------------
// What the peer observes.

/// What one `read`/`recv` returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(Vec<u8>),
    /// `read` returned 0: the other side's FIN.
    Eof,
    /// Nothing arrived within the timeout (`SO_RCVTIMEO` expired: EAGAIN).
    TimedOut,
    /// The call failed with this errno (ECONNRESET, ECONNREFUSED, ETIMEDOUT from the stack, …).
    Error(i32),
}

impl ReadOutcome {
    pub fn from_result(r: std::io::Result<usize>, buf: &[u8]) -> Self {
        match r {
            Ok(0) => ReadOutcome::Eof,
            Ok(n) => ReadOutcome::Data(buf[..n].to_vec()),
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => ReadOutcome::TimedOut,
                Some(errno) => ReadOutcome::Error(errno),
                None => panic!("read failed without an errno: {e}"),
            },
        }
    }
}

/// One `read` on `stream` with a timeout: what it returned and how long it took.
pub fn read_once(stream: &mut TcpStream, timeout: Duration) -> (ReadOutcome, Duration) {
    stream.set_read_timeout(Some(timeout)).expect("SO_RCVTIMEO");
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    let r = stream.read(&mut buf);
    (ReadOutcome::from_result(r, &buf), started.elapsed())
}

/// Reads until exactly `expected` has arrived (or panics after `timeout`).
pub fn read_exact_text(stream: &mut TcpStream, expected: &str, timeout: Duration) {
    let give_up = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let left = give_up.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {expected:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
        match read_once(stream, left) {
            (ReadOutcome::Data(d), _) => got.extend(d),
            (other, _) => panic!(
                "waiting for {expected:?} (got {:?} so far): {other:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

/// Connects to a `fij-net tcp` victim and does its handshake (`hello` → `ready`).
pub fn connect_and_greet(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to the victim at {addr}: {e}"));
    stream.write_all(b"hello\n").expect("sending hello");
    read_exact_text(&mut stream, "ready\n", Duration::from_secs(5));
    stream
}

/// The `connect()` of a new connection: how it ended and how long it took.
pub fn connect_outcome(addr: SocketAddr, timeout: Duration) -> (Result<TcpStream, i32>, Duration) {
    let started = Instant::now();
    let r = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        match (e.raw_os_error(), e.kind()) {
            (Some(errno), _) => errno,
            // std reports its own poll timeout without an errno.
            (None, std::io::ErrorKind::TimedOut) => libc::ETIMEDOUT,
            (None, _) => panic!("connect to {addr} failed without an errno: {e}"),
        }
    });
    (r, started.elapsed())
}

/// One ICMP echo request to `addr` (a raw socket of the test process, as root): whether its
/// reply came within `timeout`.
pub fn ping(addr: Ipv4Addr, timeout: Duration) -> bool {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert!(
        fd >= 0,
        "raw ICMP socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    static SEQ: AtomicU64 = AtomicU64::new(1);
    let id = (std::process::id() & 0xffff) as u16;
    let seq = (SEQ.fetch_add(1, Ordering::SeqCst) & 0xffff) as u16;
    let mut request = [0u8; 16];
    request[0] = 8; // echo request
    request[4..6].copy_from_slice(&id.to_be_bytes());
    request[6..8].copy_from_slice(&seq.to_be_bytes());
    request[8..].copy_from_slice(b"fij-ping");
    let sum = request
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    request[2..4].copy_from_slice(&sum.to_be_bytes());
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sendto reads the request and the address we own, with their sizes.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&to as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(
        sent,
        16,
        "sending an echo request: {}",
        std::io::Error::last_os_error()
    );
    let give_up = Instant::now() + timeout;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        if unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) } <= 0 {
            continue;
        }
        let mut buf = [0u8; 1500];
        // SAFETY: recv writes at most buf.len() bytes into the buffer we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 28 {
            continue;
        }
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        let reply = &buf[ihl..n as usize];
        // An echo reply (type 0) from `addr` to this request.
        if buf[12..16] == addr.octets()
            && reply.len() >= 8
            && reply[0] == 0
            && reply[4..6] == id.to_be_bytes()
            && reply[6..8] == seq.to_be_bytes()
        {
            return true;
        }
    }
}

/// The fields of `struct tcp_info` (linux/tcp.h) the tests look at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// `TCP_ESTABLISHED` = 1, `TCP_CLOSE` = 7, …
    pub state: u8,
    /// Consecutive RTO retransmissions of the head segment (resets on progress).
    pub retransmits: u8,
    /// Zero-window / persist probes sent without an answer.
    pub probes: u8,
    /// RTO backoff exponent.
    pub backoff: u8,
    pub rto_us: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Retransmitted segments over the connection's life.
    pub total_retrans: u32,
}

/// `getsockopt(TCP_INFO)` on `fd`.
pub fn tcp_info(fd: &impl AsRawFd) -> TcpInfo {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the buffer we own.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(
        r,
        0,
        "getsockopt(TCP_INFO): {}",
        std::io::Error::last_os_error()
    );
    assert!(len >= 104, "tcp_info too short: {len}");
    let u32_at = |off: usize| u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap());
    TcpInfo {
        state: buf[0],
        retransmits: buf[2],
        probes: buf[3],
        backoff: buf[4],
        rto_us: u32_at(8),
        unacked: u32_at(24),
        total_retrans: u32_at(100),
    }
}

/// `setsockopt(level, name, value)` with an int value.
pub fn set_int_opt(fd: &impl AsRawFd, level: i32, name: i32, value: i32) {
    // SAFETY: setsockopt reads one int we own.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        r,
        0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
}

// ---------------------------------------------------------------------------------------------
// Packet capture.

/// What a captured packet is, for counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PacketKind {
    Tcp {
        flags: u8,
        payload: usize,
    },
    Udp {
        payload: usize,
    },
    /// ICMP type 3 code 3 / ICMPv6 type 1 code 4, with the ports of the datagram it quotes.
    PortUnreachable {
        quoted_protocol: u8,
        quoted_sport: u16,
        quoted_dport: u16,
    },
    Other,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// One frame seen by a [`Capture`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// When the capture read it.
    pub at: Instant,
    /// `PACKET_OUTGOING`: the copy of a frame this host sent (on `lo` every frame is seen twice,
    /// once going out and once coming in).
    pub outgoing: bool,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub kind: PacketKind,
}

impl Packet {
    /// Whether `port` is the source or destination port of this packet or of the datagram an
    /// ICMP error quotes.
    pub fn involves_port(&self, port: u16) -> bool {
        match self.kind {
            PacketKind::PortUnreachable {
                quoted_sport,
                quoted_dport,
                ..
            } => quoted_sport == port || quoted_dport == port,
            _ => self.src.port() == port || self.dst.port() == port,
        }
    }

    pub fn tcp_flags(&self) -> Option<u8> {
        match self.kind {
            PacketKind::Tcp { flags, .. } => Some(flags),
            _ => None,
        }
    }

    /// A FIN, an RST or an ICMP port unreachable: how a dead process's host says so.
    pub fn is_farewell(&self) -> bool {
        matches!(self.tcp_flags(), Some(f) if f & (TCP_FIN | TCP_RST) != 0)
            || matches!(self.kind, PacketKind::PortUnreachable { .. })
    }
}

/// Counts of one port's packets in a capture (incoming copies only, so each frame once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: usize,
    pub fin: usize,
    pub rst: usize,
    pub syn_ack: usize,
    pub port_unreachable: usize,
}

impl Counts {
    pub fn farewells(&self) -> usize {
        self.fin + self.rst + self.port_unreachable
    }
}

/// An `AF_PACKET` socket of the test process on one interface, read by a thread until
/// [`Capture::stop`]. It sees every frame from the moment `start` returns.
pub struct Capture {
    stop: Arc<AtomicBool>,
    packets: Arc<Mutex<Vec<Packet>>>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Captures on `interface` of the test's network namespace.
    pub fn start(interface: &str) -> Self {
        let name = CString::new(interface).unwrap();
        // SAFETY: if_nametoindex on a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "no interface {interface}");
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                proto as i32,
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set below make it an address.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: bind with a sockaddr_ll we own and its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            r,
            0,
            "binding the capture to {interface}: {}",
            std::io::Error::last_os_error()
        );
        set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: setsockopt reads the timeval we own.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        let stop = Arc::new(AtomicBool::new(false));
        let packets = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, packets) = (stop.clone(), packets.clone());
            std::thread::spawn(move || capture_loop(fd, &stop, &packets))
        };
        Capture {
            stop,
            packets,
            thread: Some(thread),
        }
    }

    /// Everything captured so far.
    pub fn packets(&self) -> Vec<Packet> {
        self.packets.lock().unwrap().clone()
    }

    /// Stops and returns every packet captured.
    pub fn stop(mut self) -> Vec<Packet> {
        self.halt();
        self.packets()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.halt();
    }
}

fn capture_loop(fd: OwnedFd, stop: &AtomicBool, packets: &Mutex<Vec<Packet>>) {
    let mut buf = vec![0u8; 65536];
    loop {
        // Once asked to stop, read what is queued without waiting, then end.
        let stopping = stop.load(Ordering::SeqCst);
        let flags = if stopping { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: an all-zero sockaddr_ll is valid to be written into.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: recvfrom into the buffer and address we own.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            if stopping {
                return;
            }
            continue; // SO_RCVTIMEO: look at the stop flag again
        }
        let at = Instant::now();
        let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
        if let Some((src, dst, kind)) = parse_frame(&buf[..n as usize]) {
            packets.lock().unwrap().push(Packet {
                at,
                outgoing,
                src,
                dst,
                kind,
            });
        }
    }
}

/// Ethernet + IPv4/IPv6 (no extension headers) + TCP/UDP/ICMP.
fn parse_frame(frame: &[u8]) -> Option<(SocketAddr, SocketAddr, PacketKind)> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let (protocol, l4, src, dst) = parse_ip(frame, 14, ethertype)?;
    let port = |off: usize| -> Option<u16> {
        Some(u16::from_be_bytes(
            frame.get(off..off + 2)?.try_into().ok()?,
        ))
    };
    let kind = match protocol {
        6 => {
            let data_off = (*frame.get(l4 + 12)? >> 4) as usize * 4;
            PacketKind::Tcp {
                flags: *frame.get(l4 + 13)?,
                payload: frame.len().saturating_sub(l4 + data_off),
            }
        }
        17 => PacketKind::Udp {
            payload: frame.len().saturating_sub(l4 + 8),
        },
        1 | 58 => {
            let (t, c) = (*frame.get(l4)?, *frame.get(l4 + 1)?);
            if (protocol == 1 && (t, c) == (3, 3)) || (protocol == 58 && (t, c) == (1, 4)) {
                let (qp, ql4, _, _) = parse_ip(frame, l4 + 8, ethertype)?;
                PacketKind::PortUnreachable {
                    quoted_protocol: qp,
                    quoted_sport: port(ql4)?,
                    quoted_dport: port(ql4 + 2)?,
                }
            } else {
                PacketKind::Other
            }
        }
        _ => PacketKind::Other,
    };
    let (sport, dport) = match kind {
        PacketKind::Tcp { .. } | PacketKind::Udp { .. } => (port(l4)?, port(l4 + 2)?),
        _ => (0, 0),
    };
    Some((
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
        kind,
    ))
}

fn parse_ip(frame: &[u8], off: usize, ethertype: u16) -> Option<(u8, usize, IpAddr, IpAddr)> {
    match ethertype {
        0x0800 => {
            let ihl = (*frame.get(off)? & 0x0f) as usize * 4;
            let a = |o: usize| -> Option<IpAddr> {
                let b: [u8; 4] = frame.get(off + o..off + o + 4)?.try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(b)))
            };
            Some((*frame.get(off + 9)?, off + ihl, a(12)?, a(16)?))
        }
        0x86dd => {
            let a = |o: usize| -> Option<IpAddr> {
                let b: [u8; 16] = frame.get(off + o..off + o + 16)?.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            };
            Some((*frame.get(off + 6)?, off + 40, a(8)?, a(24)?))
        }
        _ => None,
    }
}

/// Which copies of a frame a count looks at. On `lo` every transmitted frame is seen twice
/// (sent, then received), so either kind alone counts each once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copies {
    /// Frames transmitted ("on the wire"). fij turns silenced frames around before they are
    /// transmitted, so they never show up here.
    Sent,
    /// Frames received on the captured interface (tapped before fij's ingress drop).
    Received,
}

/// Counts the packets of `port` in `packets` from `since` on, among `copies`.
pub fn count(packets: &[Packet], port: u16, since: Instant, copies: Copies) -> Counts {
    let mut c = Counts::default();
    for p in packets.iter().filter(|p| {
        p.at >= since && p.outgoing == (copies == Copies::Sent) && p.involves_port(port)
    }) {
        c.packets += 1;
        if let Some(flags) = p.tcp_flags() {
            c.fin += usize::from(flags & TCP_FIN != 0);
            c.rst += usize::from(flags & TCP_RST != 0);
            c.syn_ack += usize::from(flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK);
        }
        c.port_unreachable += usize::from(matches!(p.kind, PacketKind::PortUnreachable { .. }));
    }
    c
}

// ---------------------------------------------------------------------------------------------
// Bystanders.

/// A TCP echo connection between two threads of the test process (neither is a target):
/// the client sends 8 bytes and waits for their echo, over and over, every 10 ms.
pub struct Bystander {
    pub port: u16,
    stop: Arc<AtomicBool>,
    round_trips: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Bystander {
    pub fn start(ip: IpAddr) -> Self {
        Self::start_on(SocketAddr::new(ip, 0))
    }

    pub fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).expect("bystander listener");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let round_trips = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let server = {
            let (stop, errors) = (stop.clone(), errors.clone());
            std::thread::spawn(move || {
                let (mut conn, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(e) => return errors.lock().unwrap().push(format!("accept: {e}")),
                };
                conn.set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::SeqCst) {
                    match conn.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if let Err(e) = conn.write_all(&buf[..n]) {
                                return errors.lock().unwrap().push(format!("server write: {e}"));
                            }
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                        Err(e) => return errors.lock().unwrap().push(format!("server read: {e}")),
                    }
                }
            })
        };
        let client = {
            let (stop, errors, round_trips) = (stop.clone(), errors.clone(), round_trips.clone());
            let target = SocketAddr::new(addr.ip(), port);
            std::thread::spawn(move || {
                let mut conn = match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                    Ok(c) => c,
                    Err(e) => return errors.lock().unwrap().push(format!("connect: {e}")),
                };
                conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let msg = i.to_be_bytes();
                    let mut echo = [0u8; 8];
                    if let Err(e) = conn
                        .write_all(&msg)
                        .and_then(|_| conn.read_exact(&mut echo))
                    {
                        return errors.lock().unwrap().push(format!("round trip {i}: {e}"));
                    }
                    if echo != msg {
                        return errors
                            .lock()
                            .unwrap()
                            .push(format!("round trip {i}: wrong echo"));
                    }
                    round_trips.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let b = Bystander {
            port,
            stop,
            round_trips,
            errors,
            threads: vec![server, client],
        };
        wait_until(
            Duration::from_secs(3),
            "the bystander's first round trip",
            || (b.round_trips() > 0 || !b.errors().is_empty()).then_some(()),
        );
        b.assert_healthy();
        b
    }

    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::SeqCst)
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    pub fn assert_healthy(&self) {
        let errors = self.errors();
        assert!(
            errors.is_empty(),
            "the bystander connection failed: {errors:?}"
        );
    }

    /// Asserts that `n` more round trips complete within `timeout` (polling), and returns how long
    /// they took.
    pub fn assert_flows(&self, n: u64, timeout: Duration, when: &str) -> Duration {
        let started = Instant::now();
        let from = self.round_trips();
        wait_until(
            timeout,
            &format!("{n} bystander round trips {when}"),
            || (self.round_trips() >= from + n || !self.errors().is_empty()).then_some(()),
        );
        self.assert_healthy();
        started.elapsed()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Network namespaces.

/// A network namespace of the test, joined to the init namespace by a veth pair with a /30 in
/// 10.231.0.0/16: `host_addr` on `host_if` here, `ns_addr` on `ns_if` inside. Names are unique
/// per process and guard; dropping the guard deletes the namespace and the veth pair.
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_addr: Ipv4Addr,
    pub ns_addr: Ipv4Addr,
}

static NETNS_SEQ: AtomicU64 = AtomicU64::new(0);

fn ip_cmd(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    pub fn new() -> Self {
        let pid = std::process::id();
        let seq = NETNS_SEQ.fetch_add(1, Ordering::SeqCst);
        // IFNAMSIZ: at most 15 characters.
        let tag = format!("{}{}", pid % 1_000_000, seq % 100);
        let third = ((pid as u64 * 7 + seq) % 250) as u8;
        let fourth = ((seq % 63) * 4) as u8;
        let ns = NetNs {
            name: format!("fij-test-{pid}-{seq}"),
            host_if: format!("fjh{tag}"),
            ns_if: format!("fjn{tag}"),
            host_addr: Ipv4Addr::new(10, 231, third, fourth + 1),
            ns_addr: Ipv4Addr::new(10, 231, third, fourth + 2),
        };
        // The guard exists before anything is created, so a failure half-way is cleaned up too.
        ip_cmd(&["netns", "add", &ns.name]);
        ip_cmd(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ]);
        ip_cmd(&["link", "set", &ns.ns_if, "netns", &ns.name]);
        ip_cmd(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_addr),
            "dev",
            &ns.host_if,
        ]);
        ip_cmd(&["link", "set", &ns.host_if, "up"]);
        ip_cmd(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/30", ns.ns_addr),
            "dev",
            &ns.ns_if,
        ]);
        ip_cmd(&["-n", &ns.name, "link", "set", &ns.ns_if, "up"]);
        ip_cmd(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Makes the namespace a host that reaches the other namespaces' addresses through this
    /// machine: a default route via the host end, and forwarding on the host end only (the
    /// machine's own `ip_forward` is left as it is). Traffic between two such namespaces crosses
    /// the host's interfaces, where fij's silencer sees it.
    pub fn routed(self) -> Self {
        ip_cmd(&[
            "-n",
            &self.name,
            "route",
            "add",
            "default",
            "via",
            &self.host_addr.to_string(),
        ]);
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/forwarding", self.host_if),
            "1",
        )
        .expect("forwarding on the host end of the veth");
        self
    }

    /// `ip netns exec NAME` + `argv`, for a scenario's `command`.
    pub fn exec_argv(&self, argv: Vec<String>) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|s| s.to_string())
            .chain(argv)
            .collect()
    }

    /// Whether the namespace and the host end of the veth exist.
    pub fn exists(name: &str, host_if: &str) -> (bool, bool) {
        (
            Path::new("/run/netns").join(name).exists(),
            Path::new("/sys/class/net").join(host_if).exists(),
        )
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// `tc qdisc show dev DEV`, to compare before and after.
pub fn tc_qdiscs(dev: &str) -> String {
    let out = Command::new("tc")
        .args(["qdisc", "show", "dev", dev])
        .output()
        .expect("running tc");
    assert!(
        out.status.success(),
        "tc qdisc show dev {dev}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The raw fd of anything that has one (for the socket option helpers).
pub fn raw(fd: &impl AsRawFd) -> RawFd {
    fd.as_raw_fd()
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// A scenario with one target `victim` running `argv` and one fault `f` on it, fired by the
/// victim's first `clock_nanosleep` (its first tick); `fault` holds the action's TOML lines.
pub fn victim_scenario(argv: &[String], fault: &str, duration: &str) -> String {
    format!(
        "duration = {duration:?}\n\n[[target]]\nname = \"victim\"\ncommand = {}\n\n[[fault]]\nname = \"f\"\n\
         target = \"victim\"\n{fault}\ntrigger = {{ syscall = \"clock_nanosleep\" }}\nnth = 1\n",
        crate::toml_array(argv)
    )
}

/// A TCP port that is free on `ip` now (bound and released; the kernel does not hand it out
/// again at once).
pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind(SocketAddr::new(ip, 0))
        .expect("binding port 0")
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// Campaigns on a `fij-net` victim.

/// The scenario `duration` of [`Campaign`]s: longer than any test, so a crash's silence lasts
/// until the test interrupts fij.
pub const DURATION: &str = "25s";
/// Time allowed for the victim to start and publish its ports.
pub const STARTUP: Duration = Duration::from_secs(10);

/// A campaign with one `fij-net` victim under one fault.
pub struct Campaign {
    pub fij: RunningFij,
    /// Pid of the target `victim`.
    pub victim: u32,
    /// The ports it published.
    pub ports: Vec<u16>,
    pub dir: TempDir,
}

impl Campaign {
    /// Starts fij on `fij-net ARGS` (the port file is added after the mode and address; `{dir}`
    /// in an argument is the campaign's temp dir) under `fault`, with `duration` = [`DURATION`],
    /// and waits until the victim has published its ports.
    pub fn start(label: &str, args: &[&str], fault: &str) -> Self {
        Self::start_wrapped(label, args, fault, |argv| argv)
    }

    /// The same, with the victim's argv rewritten by `wrap` (e.g. `ip netns exec NS ...`).
    pub fn start_wrapped(
        label: &str,
        args: &[&str],
        fault: &str,
        wrap: impl FnOnce(Vec<String>) -> Vec<String>,
    ) -> Self {
        Self::start_configured(label, args, fault, wrap, |fij| fij)
    }

    /// The same, with the `fij run` command changed by `configure` (another binary, a cleared
    /// environment).
    pub fn start_configured(
        label: &str,
        args: &[&str],
        fault: &str,
        wrap: impl FnOnce(Vec<String>) -> Vec<String>,
        configure: impl FnOnce(Fij) -> Fij,
    ) -> Self {
        let dir = TempDir::new(label);
        let port_file = dir.join("ports");
        let port_file = port_file.to_str().unwrap();
        let dir_text = dir.path().to_str().unwrap().to_owned();
        let mut full: Vec<String> = args[..2].iter().map(|a| a.to_string()).collect();
        full.push(port_file.to_owned());
        full.extend(args[2..].iter().map(|a| a.replace("{dir}", &dir_text)));
        let argv: Vec<&dyn AsRef<std::ffi::OsStr>> = full
            .iter()
            .map(|a| a as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        let argv = wrap(net_victim_bin().argv(&argv));
        let scenario = dir.write("s.toml", &victim_scenario(&argv, fault, DURATION));
        let mut fij = configure(Fij::run(&dir, &scenario)).spawn();
        fij.wait_armed();
        let victim = fij.log().target_pid("victim");
        let ports = read_ports(&dir.join("ports"), STARTUP);
        Campaign {
            fij,
            victim,
            ports,
            dir,
        }
    }

    pub fn addr(&self, ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, self.ports[0])
    }

    /// Waits for the injection and the victim's death in the log.
    /// Waits for the victim's `exit` record and then for the process to be gone (a zombie or
    /// reaped): the record comes from `sched_process_exit`, before the dying process has closed
    /// its files, so its sockets may still be open when the record arrives.
    pub fn wait_dead(&mut self) {
        let victim = self.victim;
        self.fij
            .wait_for_record("the victim's exit", Duration::from_secs(5), |r| {
                r["event"] == "exit" && r["pid"] == victim
            });
        let give_up = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{victim}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        }) {
            assert!(
                Instant::now() < give_up,
                "victim {victim} still running after its exit record"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until `n` tuples are silenced.
    pub fn wait_silenced(&mut self, n: usize) {
        let give_up = Instant::now() + Duration::from_secs(5);
        while self.fij.log().records("silenced").len() < n {
            assert!(
                Instant::now() < give_up,
                "fewer than {n} silenced records:\n{}",
                self.fij.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ends a crash campaign, whose silence would hold until `duration`: SIGINT, then the usual
    /// checks (exit 0, reason `interrupted`, no fij program left).
    pub fn interrupt(self) -> (FijOutput, TempDir) {
        send_signal(self.fij.pid(), libc::SIGINT);
        let out = self.fij.wait();
        out.assert_exit(0);
        assert_eq!(out.log.end()["reason"], "interrupted", "{out}");
        (out, self.dir)
    }

    /// Waits for a kill campaign to end by itself (every target exited).
    pub fn finish(self) -> (FijOutput, TempDir) {
        let out = self.fij.wait();
        out.assert_exit(0);
        assert_eq!(out.log.end()["reason"], "targets_exited", "{out}");
        (out, self.dir)
    }
}

/// One TCP socket of this network namespace, as /proc/net/tcp (or tcp6) shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local_port: u16,
    pub remote_port: u16,
    /// The kernel's state number (`TCP_ESTABLISHED` = 1, `TCP_FIN_WAIT1` = 4, `TCP_CLOSE_WAIT`
    /// = 8, `TCP_LISTEN` = 10).
    pub state: u8,
    /// 0 for a socket no file refers to (an orphan, a TIME_WAIT socket).
    pub inode: u64,
}

/// /proc/net/tcp's state number of an established connection.
pub const TCP_ESTABLISHED: u8 = 1;
/// /proc/net/tcp's state number of a connection whose FIN is sent and not yet acknowledged.
pub const TCP_FIN_WAIT1: u8 = 4;
/// /proc/net/tcp's state number of a connection whose peer has closed its side (its FIN came).
pub const TCP_CLOSE_WAIT: u8 = 8;
/// /proc/net/tcp's state number of a listening socket.
pub const TCP_LISTEN: u8 = 10;

/// Every TCP socket (IPv4 and IPv6) of this network namespace. The tables are read a page at a
/// time, so an entry can be missed when sockets come and go meanwhile.
pub fn tcp_table() -> Vec<TcpSocket> {
    let port = |endpoint: &str| {
        endpoint
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    // No tcp6 table on a kernel without IPv6.
    let tables =
        ["/proc/net/tcp", "/proc/net/tcp6"].map(|t| std::fs::read_to_string(t).unwrap_or_default());
    tables
        .iter()
        .flat_map(|table| table.lines().skip(1))
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(TcpSocket {
                local_port: port(f.get(1)?)?,
                remote_port: port(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The TCP sockets (IPv4 and IPv6) that each of `pids` holds open, by its file descriptors;
/// `None` for one that has exited (a zombie has no descriptors). One read of the tables serves
/// every process, so a sample of several sees both ends of a connection from the same reading.
pub fn tcp_sockets_of(pids: &[u32]) -> Vec<Option<Vec<TcpSocket>>> {
    let table = tcp_table();
    pids.iter()
        .map(|&pid| {
            let inodes = socket_inodes(pid)?;
            Some(
                table
                    .iter()
                    .filter(|s| s.inode != 0 && inodes.contains(&s.inode))
                    .copied()
                    .collect(),
            )
        })
        .collect()
}

/// The inodes of the sockets process `pid` has descriptors to; `None` once it has exited.
fn socket_inodes(pid: u32) -> Option<Vec<u64>> {
    let links: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .collect();
    // A zombie's descriptor table is empty: it no longer holds anything.
    if links.is_empty() {
        return None;
    }
    Some(
        links
            .iter()
            .filter_map(|link| {
                let link = link.to_str()?;
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .collect(),
    )
}

/// Whether a TCP socket listens on `port` (any address, IPv4 or IPv6) in this namespace.
pub fn listening(port: u16) -> bool {
    tcp_table()
        .iter()
        .any(|s| s.state == TCP_LISTEN && s.local_port == port)
}
