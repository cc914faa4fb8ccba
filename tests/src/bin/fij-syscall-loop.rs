//! `fij-syscall-loop [--cpu C] N`: a benchmark workload (`cargo xtask bench`). Pins itself to one
//! CPU, makes a short warm-up, then N `getppid` system calls in a tight loop, timed with
//! CLOCK_MONOTONIC around the loop, and prints one line:
//!
//! ```text
//! start_monotonic_ns=123 ns_per_syscall=45.678 best_chunk_ns_per_syscall=44.1 calls=1000000 total_ns=45678000
//! ```
//!
//! `ns_per_syscall` is the whole loop's mean; the loop is timed in up to 100 chunks as well, and
//! `best_chunk_ns_per_syscall` is the fastest chunk's mean (the least disturbed by preemption).
//! `start_monotonic_ns` is CLOCK_MONOTONIC (the clock of `bpf_ktime_get_ns`) when `main` began,
//! so `fij-syscall-loop 0` tells when the process started running. Without `--cpu`, the process
//! stays on the CPU it started on.
//!
//! `--wait-for PATH` waits until PATH exists before the warm-up (the bench fills maps meanwhile).
//! `--pingpong` times N round trips of one byte between this process and a forked child over two
//! pipes, both on the same CPU, instead of `getppid`s: each round trip is two context switches
//! and four syscalls (`ns_per_syscall` is then ns per round trip).
//!
//! `--connect PORT` times N `connect`s of one UDP socket to 127.0.0.1:PORT instead (each one
//! passes the cgroup-v2 `connect4` hook: what fij's `error` hooks cost a process that is not a
//! target).
//!
//! The clock is fij's own (`fij_common::log::monotonic_ns`), the clock of the log's `ktime_ns`;
//! `syscall`, `sched_getcpu`, `sched_setaffinity` and the rest are declared here directly (the C
//! library is linked by std anyway), so every syscall of the timed loop is in this file.
use std::{ffi::c_long, hint::black_box, process::ExitCode};

use fij_common::log::monotonic_ns;

#[cfg(target_arch = "x86_64")]
const SYS_GETPPID: c_long = 110;
#[cfg(target_arch = "aarch64")]
const SYS_GETPPID: c_long = 173;

unsafe extern "C" {
    fn syscall(number: c_long, ...) -> c_long;
    fn sched_getcpu() -> i32;
    fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
    fn fork() -> i32;
    fn pipe(fds: *mut i32) -> i32;
    fn read(fd: i32, buf: *mut u8, count: usize) -> isize;
    fn write(fd: i32, buf: *const u8, count: usize) -> isize;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrIn, len: u32) -> i32;
    fn _exit(status: i32) -> !;
}

/// Pins the process to `cpu` (a 1024-CPU `cpu_set_t`).
fn pin(cpu: usize) -> Result<(), String> {
    let mut mask = [0u64; 16];
    let word = mask
        .get_mut(cpu / 64)
        .ok_or_else(|| format!("CPU {cpu} is out of range"))?;
    *word |= 1 << (cpu % 64);
    // SAFETY: the mask is a valid cpu_set_t of size_of_val(&mask) bytes.
    if unsafe { sched_setaffinity(0, size_of_val(&mask), mask.as_ptr()) } != 0 {
        return Err(format!(
            "sched_setaffinity to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `struct sockaddr_in`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port_be: u16,
    addr_be: u32,
    zero: [u8; 8],
}

/// A UDP socket that `connect`s to 127.0.0.1:port, again and again.
struct Connects {
    fd: i32,
    addr: SockaddrIn,
}

impl Connects {
    fn new(port: u16) -> Result<Self, String> {
        // SAFETY: a new socket we own (AF_INET = 2, SOCK_DGRAM = 2).
        let fd = unsafe { socket(2, 2, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let addr = SockaddrIn {
            family: 2,
            port_be: port.to_be(),
            addr_be: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            zero: [0; 8],
        };
        // SAFETY: a sockaddr_in we own.
        if unsafe { connect(fd, &addr, size_of::<SockaddrIn>() as u32) } != 0 {
            return Err(format!("connect: {}", std::io::Error::last_os_error()));
        }
        Ok(Self { fd, addr })
    }

    fn connects(&self, n: u64) {
        for _ in 0..n {
            // SAFETY: a sockaddr_in we own, on our socket.
            black_box(unsafe { connect(self.fd, &self.addr, size_of::<SockaddrIn>() as u32) });
        }
    }
}

#[inline(always)]
fn getppid_loop(n: u64) {
    for _ in 0..n {
        // SAFETY: getppid takes no arguments and cannot fail.
        black_box(unsafe { syscall(SYS_GETPPID) });
    }
}

/// Two pipes and a forked child that echoes every byte back: `round_trips(n)` makes n round
/// trips. The child is killed when this is dropped.
struct PingPong {
    to_child: i32,
    from_child: i32,
    child: i32,
}

impl PingPong {
    fn start() -> Result<Self, String> {
        let (mut there, mut back) = ([0i32; 2], [0i32; 2]);
        // SAFETY: pipe writes two fds into the arrays we own.
        if unsafe { pipe(there.as_mut_ptr()) } != 0 || unsafe { pipe(back.as_mut_ptr()) } != 0 {
            return Err(format!("pipe: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: the process is single-threaded; the child only reads, writes and exits.
        match unsafe { fork() } {
            -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
            0 => {
                let mut byte = 0u8;
                // SAFETY: one-byte buffers we own; fds from pipe above.
                while unsafe { read(there[0], &mut byte, 1) } == 1 {
                    if unsafe { write(back[1], &byte, 1) } != 1 {
                        break;
                    }
                }
                unsafe { _exit(0) }
            }
            child => Ok(Self {
                to_child: there[1],
                from_child: back[0],
                child,
            }),
        }
    }

    fn round_trips(&self, n: u64) {
        let mut byte = 0u8;
        for _ in 0..n {
            // SAFETY: one-byte buffers we own; fds from pipe.
            unsafe {
                write(self.to_child, &byte, 1);
                read(self.from_child, &mut byte, 1);
            }
        }
    }
}

impl Drop for PingPong {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe {
            kill(self.child, 9);
            waitpid(self.child, std::ptr::null_mut(), 0);
        }
    }
}

fn run() -> Result<(), String> {
    let start = monotonic_ns();
    let usage =
        "usage: fij-syscall-loop [--cpu C] [--wait-for PATH] [--pingpong | --connect PORT] N";
    let mut args = std::env::args().skip(1);
    let mut cpu = None;
    let mut n = None;
    let mut wait_for = None;
    let mut pingpong = false;
    let mut connect_port = None;
    while let Some(arg) = args.next() {
        if arg == "--connect" {
            let p = args.next().ok_or(usage)?;
            connect_port = Some(
                p.parse::<u16>()
                    .map_err(|e| format!("--connect {p}: {e}"))?,
            );
        } else if arg == "--wait-for" {
            wait_for = Some(args.next().ok_or(usage)?);
        } else if arg == "--pingpong" {
            pingpong = true;
        } else if arg == "--cpu" {
            let c = args.next().ok_or(usage)?;
            cpu = Some(c.parse::<usize>().map_err(|e| format!("--cpu {c}: {e}"))?);
        } else if n.is_none() {
            n = Some(arg.parse::<u64>().map_err(|e| format!("N = {arg}: {e}"))?);
        } else {
            return Err(usage.into());
        }
    }
    let n = n.ok_or(usage)?;
    // SAFETY: no preconditions.
    let cpu = match cpu {
        Some(c) => c,
        None => usize::try_from(unsafe { sched_getcpu() }).map_err(|_| "sched_getcpu failed")?,
    };
    pin(cpu)?;
    if let Some(path) = wait_for {
        while !std::path::Path::new(&path).exists() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    // The child inherits the pinning: every round trip switches between the two on one CPU.
    let pingpong = if pingpong {
        Some(PingPong::start()?)
    } else {
        None
    };
    let connects = connect_port.map(Connects::new).transpose()?;
    let work = |calls: u64| match (&pingpong, &connects) {
        (Some(p), _) => p.round_trips(calls),
        (None, Some(c)) => c.connects(calls),
        (None, None) => getppid_loop(calls),
    };

    work(n.min(10_000) / 10);
    // Timed in up to 100 chunks: the whole loop gives the mean, the fastest chunk the cost with
    // the least interference (preemption, other vCPUs), which varies much less between runs.
    let chunk = (n / 100).max(1);
    let mut best = f64::INFINITY;
    let mut done = 0;
    let t0 = monotonic_ns();
    while done < n {
        let calls = chunk.min(n - done);
        let c0 = monotonic_ns();
        work(calls);
        best = best.min((monotonic_ns() - c0) as f64 / calls as f64);
        done += calls;
    }
    let total = monotonic_ns() - t0;
    let (per, best) = if n == 0 {
        (0.0, 0.0)
    } else {
        (total as f64 / n as f64, best)
    };
    println!(
        "start_monotonic_ns={start} ns_per_syscall={per:.3} best_chunk_ns_per_syscall={best:.3} \
         calls={n} total_ns={total}"
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fij-syscall-loop: {e}");
            ExitCode::from(2)
        }
    }
}
