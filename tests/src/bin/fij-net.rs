//! `fij-net`: the network victim of fij's crash / stop / partition tests.
//!
//! Its one `clock_nanosleep(2)` per tick is the trigger the tests aim at (`trigger = { syscall =
//! "clock_nanosleep" }`): nothing else here sleeps (waits are `poll(2)` with a timeout), and the
//! Rust runtime makes no `clock_nanosleep` of its own, so hit N is exactly the Nth tick.
//!
//! Modes:
//!
//! - `tcp ADDR PORT_FILE [--listeners K | --ports P1,P2,..] [--unread] [--ticks N]
//!   [--interval-ms M] [--first-interval-ms F] [--progress FILE]`: binds K (default 1) TCP
//!   listeners on ADDR (an IP address; ports chosen by the kernel, or the ports given), writes
//!   their ports, space-separated, to PORT_FILE (atomically, by rename), and accepts one
//!   connection on each, in order. On each connection it reads `hello\n` (with `--unread`: only
//!   waits until data is there and leaves it unread in the receive queue), then writes
//!   `ready\n`. Then, N times (default 1): sleeps M ms (default 60000; the first sleep F ms,
//!   default M) with `clock_nanosleep`, writes `tick I\n` on every connection, and, with
//!   `--progress`, rewrites FILE with I. Finally it shuts down the sending side of every
//!   connection, reads (and discards) until each peer has closed, and exits 0.
//! - `udp ADDR PORT_FILE`: binds a UDP socket on ADDR (kernel-chosen port), writes the port to
//!   PORT_FILE, waits for one datagram `hello`, answers `ready` to its sender, then sleeps 60 s
//!   with `clock_nanosleep` and exits 0.
//!
//! Exits 100+ with a message on stderr on a usage or I/O error; gives up (exit 104) after 60 s
//! without a connection or datagram, so a forgotten victim does not linger.
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::exit,
    time::Duration,
};

const GIVE_UP_MS: i32 = 60_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["tcp", addr, port_file, opts @ ..] => tcp(addr, port_file, opts),
        ["udp", addr, port_file] => udp(addr, port_file),
        _ => fail(
            100,
            &format!("usage: see the top of fij-net.rs; got {args:?}"),
        ),
    }
}

fn fail(code: i32, message: &str) -> ! {
    eprintln!("fij-net: {message}");
    exit(code)
}

fn check<T>(r: std::io::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| fail(101, &format!("{what}: {e}")))
}

fn number(s: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|_| fail(100, &format!("not a number: {s}")))
}

fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|_| fail(100, &format!("not an IP address: {s}")))
}

/// Writes `text` to `path` through a temporary file and a rename, so a reader never sees half.
fn publish(path: &str, text: &str) {
    let tmp = format!("{path}.tmp");
    check(std::fs::write(&tmp, text), "writing the port file");
    check(std::fs::rename(&tmp, path), "renaming the port file");
}

/// Waits until `fd` is readable (poll, no sleep), at most [`GIVE_UP_MS`].
fn wait_readable(fd: i32, what: &str) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own.
    let n = unsafe { libc::poll(&mut pfd, 1, GIVE_UP_MS) };
    if n == 0 {
        fail(104, &format!("gave up waiting for {what}"));
    }
    if n < 0 {
        fail(101, &format!("poll: {}", std::io::Error::last_os_error()));
    }
}

/// The trigger: one explicit `clock_nanosleep` of `ms` milliseconds (restarted after a stop).
fn tick_sleep(ms: u64) {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as i64,
        tv_nsec: ((ms % 1000) * 1_000_000) as i64,
    };
    let mut rem = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut req = ts;
    loop {
        // SAFETY: clock_nanosleep with timespecs we own.
        let r = unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &req, &mut rem) };
        if r != libc::EINTR {
            break;
        }
        req = rem;
    }
}

fn tcp(addr: &str, port_file: &str, opts: &[&str]) {
    let addr = ip(addr);
    let (mut ports, mut unread, mut ticks, mut interval, mut first_interval, mut progress) =
        (vec![0u16], false, 1, 60_000, None, None);
    let mut rest = opts;
    while let Some((opt, tail)) = rest.split_first() {
        rest = tail;
        let mut value = || {
            let (v, tail) = rest
                .split_first()
                .unwrap_or_else(|| fail(100, &format!("{opt} needs a value")));
            rest = tail;
            *v
        };
        match *opt {
            "--listeners" => ports = vec![0; number(value()) as usize],
            "--ports" => ports = value().split(',').map(|p| number(p) as u16).collect(),
            "--unread" => unread = true,
            "--ticks" => ticks = number(value()),
            "--interval-ms" => interval = number(value()),
            "--first-interval-ms" => first_interval = Some(number(value())),
            "--progress" => progress = Some(value().to_owned()),
            other => fail(100, &format!("unknown option {other}")),
        }
    }
    let bound: Vec<TcpListener> = ports
        .iter()
        .map(|&port| check(TcpListener::bind(SocketAddr::new(addr, port)), "bind"))
        .collect();
    let ports: Vec<String> = bound
        .iter()
        .map(|l| check(l.local_addr(), "local_addr").port().to_string())
        .collect();
    publish(port_file, &ports.join(" "));
    let mut conns: Vec<TcpStream> = Vec::new();
    for listener in &bound {
        wait_readable(listener.as_raw_fd(), "a connection");
        let (mut conn, _) = check(listener.accept(), "accept");
        if unread {
            wait_readable(conn.as_raw_fd(), "the peer's data");
        } else {
            let mut hello = [0u8; 6];
            check(conn.read_exact(&mut hello), "reading hello");
            if &hello != b"hello\n" {
                fail(102, &format!("expected hello, got {hello:?}"));
            }
        }
        check(conn.write_all(b"ready\n"), "writing ready");
        conns.push(conn);
    }
    for i in 1..=ticks {
        tick_sleep(match first_interval {
            Some(first) if i == 1 => first,
            _ => interval,
        });
        for conn in &mut conns {
            check(
                conn.write_all(format!("tick {i}\n").as_bytes()),
                "writing a tick",
            );
        }
        if let Some(file) = &progress {
            publish(file, &i.to_string());
        }
    }
    for conn in &mut conns {
        check(conn.shutdown(std::net::Shutdown::Write), "shutdown");
    }
    for conn in &mut conns {
        let mut buf = [0u8; 4096];
        loop {
            wait_readable(conn.as_raw_fd(), "the peer to close");
            if check(conn.read(&mut buf), "draining") == 0 {
                break;
            }
        }
    }
    drop(conns);
    drop(bound);
}

fn udp(addr: &str, port_file: &str) {
    let socket = check(UdpSocket::bind(SocketAddr::new(ip(addr), 0)), "bind");
    publish(
        port_file,
        &check(socket.local_addr(), "local_addr").port().to_string(),
    );
    wait_readable(socket.as_raw_fd(), "a datagram");
    let mut buf = [0u8; 64];
    let (n, from) = check(socket.recv_from(&mut buf), "recv_from");
    if &buf[..n] != b"hello" {
        fail(102, &format!("expected hello, got {:?}", &buf[..n]));
    }
    check(socket.send_to(b"ready", from), "send_to");
    tick_sleep(Duration::from_secs(60).as_millis() as u64);
}
