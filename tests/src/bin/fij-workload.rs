//! `fij-workload`: the deterministic target program of fij's integration tests.
//!
//! Every `write(2)` it makes is an explicit `libc::write` of one whole line, so a test knows
//! exactly which write is hit number N (Rust's runtime makes no `write` at startup or exit, and
//! nothing here uses `std::io` on the standard streams). Reports that must not count as `write`
//! hits go through `writev(2)`, a different syscall. On a usage or I/O error it exits 100+ with a
//! message on stderr (a `write`, but then the test fails anyway).
//!
//! Modes:
//!
//! - `write-lines FILE N [--sleep-ms M] [--pause-after K --pause-ms P] [--wait-for PATH]
//!   [--then-wait-for PATH2] [--udp]`:
//!   opens FILE for writing (created and truncated unless it is a FIFO), waits until PATH exists
//!   if asked, then writes `line 1` … `line N`, one `write` per line, sleeping M ms between
//!   lines, and P ms once after line K (or, with `--then-wait-for`, until PATH2 exists). With
//!   `--udp` it first binds a UDP socket on 127.0.0.1 (kernel-chosen port) and holds it until it
//!   exits: a tuple for `crash` and `partition` to silence (`socket` and `bind`, no `write`).
//!   Exits 0.
//! - `usr1-lines FILE N`: counts SIGUSR1 in a handler, writes `line I usr1=C` for I in 1..=N,
//!   where C is how many SIGUSR1 arrived before line I was formatted, then `end usr1=C`: N + 1
//!   writes. A signal injected on write W shows up as C going up on line W + 1. Exits 0.
//! - `id-lines FILE N`: writes `line I uid=U euid=E gid=G egid=H groups=K` for I in 1..=N (its
//!   ids as the kernel has them, read once at the start; K = number of supplementary groups),
//!   one `write` per line. Exits 0.
//! - `fork FILE REPORT`: writes `parent 1`, `parent 2` to FILE, forks a child that writes
//!   `child 1`, `child 2` to FILE and exits 0, waits for it, then writes (with `writev`) to
//!   REPORT `child PID exited CODE` or `child PID killed SIGNO`. Parent writes: exactly 2.
//! - `wait-for PATH`: exits 0 as soon as PATH exists (polls every 10 ms, no writes).
//! - `sleep MS`: sleeps MS milliseconds and exits 0 (no writes).
//! - `spin MS [--nice N]`: a pure CPU loop: makes no syscall at all (it reads the clock through
//!   the vDSO, every 2^16 iterations) and exits 0 after MS milliseconds. `--nice N` first sets
//!   its nice value to N (`setpriority`, before the loop), so that on a busy machine it still
//!   gets a CPU most of the time.
//! - `naps US MS`: `nanosleep`s US microseconds again and again (one syscall per nap, almost no
//!   CPU time) and exits 0 after MS milliseconds.
//!
//! - `getppid-record FILE N [--migrate-every K]`: makes N `getppid` calls, and keeps
//!   its own record in FILE (16 bytes, shared memory): the number of the call it is about to make
//!   (written before each call) and of the last call that returned (written after it). A victim
//!   killed on entering call K leaves `K K-1`: the test compares that with the hit fij logged.
//!   With `--migrate-every K`, it moves itself to the next CPU (`sched_setaffinity`, not a
//!   `getppid`) every K calls. Exits 0.
//!
//! - `connects PORT N REPORT`: N times: a new TCP socket, a blocking `connect` to
//!   127.0.0.1:PORT, close. Writes (with `writev`) to REPORT one line per call: `connect I ok`
//!   or `connect I errno E` (E: the errno the call returned, as a number). Exits 0.
//! - `connects6 PORT N REPORT`: the same over IPv6, to [::1]:PORT.
//! - `sendtos PORT N REPORT`: one UDP socket, N `sendto`s of one byte to 127.0.0.1:PORT,
//!   reported as `sendto I ok` / `sendto I errno E`. Exits 0.
//! - `sockcalls N REPORT`: N rounds of `socket(AF_INET, SOCK_DGRAM)`, `setsockopt(SO_REUSEADDR)`,
//!   `getsockopt(SO_TYPE)`, `bind(127.0.0.1:0)`, `close`, each call reported as
//!   `ROUND CALL ok` / `ROUND CALL errno E` (`writev`). Calls on a socket that failed to be
//!   created are still made (they fail with EBADF). Exits 0.
//! - `write-lines-errno FILE N REPORT`: like `write-lines` (no options), but a failed `write`
//!   does not end it: it reports each line's `write` as `write I ok` / `write I errno E` /
//!   `write I returned N` (a short count) to REPORT (`writev`) and goes on. Exits 0.
//! - `recycled-pid-writes FILE N REPORT`: two children one after the other, each doing
//!   `write-lines-errno FILE N REPORT.a` (then `.b`); the second is forked with the first's pid
//!   (reaped first, then `/proc/sys/kernel/ns_last_pid` set to it minus one, written with
//!   `writev`). Writes `a PID b PID` to REPORT: the test retries when another process took the
//!   pid meanwhile. Exits 0.
//!
//! `--wait-for` and `wait-for` give up after 60 s (exit 104), so a forgotten workload does not
//! linger; `sleep` sleeps as long as asked (the tests end such targets themselves).
use std::{
    ffi::CString,
    path::Path,
    process::exit,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

const GIVE_UP: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["write-lines", file, n, opts @ ..] => write_lines(file, count(n), opts),
        ["usr1-lines", file, n] => usr1_lines(file, count(n)),
        ["fork", file, report] => fork(file, report),
        ["id-lines", file, n] => id_lines(file, count(n)),
        ["getppid-record", file, n] => getppid_record(file, count(n), 0),
        ["getppid-record", file, n, "--migrate-every", k] => {
            getppid_record(file, count(n), count(k))
        }
        ["connects", port, n, report] => connects(count(port), count(n), report),
        ["connects6", port, n, report] => connects6(count(port), count(n), report),
        ["sendtos", port, n, report] => sendtos(count(port), count(n), report),
        ["sockcalls", n, report] => sockcalls(count(n), report),
        ["write-lines-errno", file, n, report] => write_lines_errno(file, count(n), report),
        ["recycled-pid-writes", file, n, report] => recycled_pid_writes(file, count(n), report),
        ["wait-for", path] => wait_for(path),
        ["sleep", ms] => std::thread::sleep(Duration::from_millis(count(ms))),
        ["spin", ms] => spin(Duration::from_millis(count(ms))),
        ["spin", ms, "--nice", nice] => {
            let nice: i32 = nice
                .parse()
                .unwrap_or_else(|_| fail(100, &format!("not a nice value: {nice}")));
            // SAFETY: setpriority on this process.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
                fail(103, "setpriority failed");
            }
            spin(Duration::from_millis(count(ms)))
        }
        ["naps", us, ms] => naps(
            Duration::from_micros(count(us)),
            Duration::from_millis(count(ms)),
        ),
        _ => fail(
            100,
            &format!("usage: see the top of fij-workload.rs; got {args:?}"),
        ),
    }
}

fn fail(code: i32, message: &str) -> ! {
    eprintln!("fij-workload: {message}");
    exit(code)
}

fn count(s: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|_| fail(100, &format!("not a number: {s}")))
}

fn open_for_writing(path: &str) -> i32 {
    let c = CString::new(path).unwrap_or_else(|_| fail(100, "NUL in path"));
    let is_fifo = std::fs::metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_fifo()
    });
    let flags = if is_fifo {
        libc::O_WRONLY
    } else {
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC
    };
    // SAFETY: open on a NUL-terminated path we own.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        fail(
            101,
            &format!("cannot open {path}: {}", std::io::Error::last_os_error()),
        );
    }
    fd
}

/// One `write(2)` of the whole line; anything else is an error.
fn write_line(fd: i32, line: &str) {
    // SAFETY: writing from a buffer we own.
    let n = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
    if n != line.len() as isize {
        fail(
            102,
            &format!("write returned {n}: {}", std::io::Error::last_os_error()),
        );
    }
}

fn wait_for(path: &str) {
    let give_up = Instant::now() + GIVE_UP;
    while !Path::new(path).exists() {
        if Instant::now() > give_up {
            fail(104, &format!("{path} never appeared"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn write_lines(file: &str, n: u64, opts: &[&str]) {
    let (mut sleep_ms, mut pause_after, mut pause_ms, mut wait) = (0, 0, 0, None);
    let mut then_wait = None;
    let mut udp = None;
    let mut opts = opts.iter();
    while let Some(opt) = opts.next() {
        if *opt == "--udp" {
            udp = Some(
                std::net::UdpSocket::bind("127.0.0.1:0")
                    .unwrap_or_else(|e| fail(103, &format!("binding a UDP socket: {e}"))),
            );
            continue;
        }
        let value = opts
            .next()
            .unwrap_or_else(|| fail(100, &format!("{opt} needs a value")));
        match *opt {
            "--sleep-ms" => sleep_ms = count(value),
            "--pause-after" => pause_after = count(value),
            "--pause-ms" => pause_ms = count(value),
            "--wait-for" => wait = Some(*value),
            "--then-wait-for" => then_wait = Some(*value),
            _ => fail(100, &format!("unknown option {opt}")),
        }
    }
    if let Some(path) = wait {
        wait_for(path);
    }
    let fd = open_for_writing(file);
    for i in 1..=n {
        write_line(fd, &format!("line {i}\n"));
        if i == pause_after {
            match then_wait {
                Some(path) => wait_for(path),
                None => std::thread::sleep(Duration::from_millis(pause_ms)),
            }
        }
        if sleep_ms > 0 && i < n {
            std::thread::sleep(Duration::from_millis(sleep_ms));
        }
    }
    drop(udp);
}

static USR1: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    USR1.fetch_add(1, Ordering::SeqCst);
}

fn usr1_lines(file: &str, n: u64) {
    // SAFETY: installing an async-signal-safe handler (one atomic add).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_usr1 as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()) != 0 {
            fail(103, "sigaction failed");
        }
    }
    let fd = open_for_writing(file);
    for i in 1..=n {
        write_line(
            fd,
            &format!("line {i} usr1={}\n", USR1.load(Ordering::SeqCst)),
        );
    }
    write_line(fd, &format!("end usr1={}\n", USR1.load(Ordering::SeqCst)));
}

fn fork(file: &str, report: &str) {
    let fd = open_for_writing(file);
    let report_fd = open_for_writing(report);
    write_line(fd, "parent 1\n");
    write_line(fd, "parent 2\n");
    // SAFETY: single-threaded process; the child only makes raw syscalls and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        fail(103, "fork failed");
    }
    if pid == 0 {
        for line in ["child 1\n", "child 2\n"] {
            // SAFETY: as in write_line, without allocating.
            if unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) } != line.len() as isize {
                unsafe { libc::_exit(102) };
            }
        }
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        fail(103, "waitpid failed");
    }
    let how = if libc::WIFSIGNALED(status) {
        format!("killed {}", libc::WTERMSIG(status))
    } else {
        format!("exited {}", libc::WEXITSTATUS(status))
    };
    let line = format!("child {pid} {how}\n");
    let iov = libc::iovec {
        iov_base: line.as_ptr() as *mut _,
        iov_len: line.len(),
    };
    // SAFETY: one iovec over a buffer we own. writev, not write: not a `write` hit.
    if unsafe { libc::writev(report_fd, &iov, 1) } != line.len() as isize {
        fail(102, "writev failed");
    }
}

/// One line to `fd` through `writev` (not a `write` hit).
fn writev_line(fd: i32, line: &str) {
    let iov = libc::iovec {
        iov_base: line.as_ptr() as *mut _,
        iov_len: line.len(),
    };
    // SAFETY: one iovec over a buffer we own.
    if unsafe { libc::writev(fd, &iov, 1) } != line.len() as isize {
        fail(102, "writev failed");
    }
}

/// `ok`, or `errno E` of the call that just returned `ret`.
fn outcome(ret: isize) -> String {
    if ret < 0 {
        format!(
            "errno {}",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        )
    } else {
        "ok".to_string()
    }
}

fn loopback(port: u64) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: (port as u16).to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn connects(port: u64, n: u64, report: &str) {
    let report_fd = open_for_writing(report);
    let addr = loopback(port);
    for i in 1..=n {
        // SAFETY: a socket we own, connected to a sockaddr we own, then closed.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            fail(103, "socket failed");
        }
        let ret = unsafe {
            libc::connect(
                fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        let line = format!("connect {i} {}\n", outcome(ret as isize));
        unsafe { libc::close(fd) };
        writev_line(report_fd, &line);
    }
}

fn connects6(port: u64, n: u64, report: &str) {
    let report_fd = open_for_writing(report);
    let addr = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: (port as u16).to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: std::net::Ipv6Addr::LOCALHOST.octets(),
        },
        sin6_scope_id: 0,
    };
    for i in 1..=n {
        // SAFETY: a socket we own, connected to a sockaddr we own, then closed.
        let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            fail(103, "socket failed");
        }
        let ret = unsafe {
            libc::connect(
                fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in6>() as u32,
            )
        };
        let line = format!("connect {i} {}\n", outcome(ret as isize));
        unsafe { libc::close(fd) };
        writev_line(report_fd, &line);
    }
}

fn sendtos(port: u64, n: u64, report: &str) {
    let report_fd = open_for_writing(report);
    let addr = loopback(port);
    // SAFETY: a socket we own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        fail(103, "socket failed");
    }
    for i in 1..=n {
        // SAFETY: one byte from a buffer we own, to a sockaddr we own.
        let ret = unsafe {
            libc::sendto(
                fd,
                b"x".as_ptr().cast(),
                1,
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        writev_line(report_fd, &format!("sendto {i} {}\n", outcome(ret)));
    }
}

fn sockcalls(n: u64, report: &str) {
    let report_fd = open_for_writing(report);
    let addr = loopback(0);
    let one: libc::c_int = 1;
    for round in 1..=n {
        // SAFETY: a socket we own; options and addresses from buffers we own.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        writev_line(
            report_fd,
            &format!("{round} socket {}\n", outcome(fd as isize)),
        );
        let ret = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        writev_line(
            report_fd,
            &format!("{round} setsockopt {}\n", outcome(ret as isize)),
        );
        let mut kind: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as u32;
        let ret = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&raw mut kind).cast(),
                &mut len,
            )
        };
        writev_line(
            report_fd,
            &format!("{round} getsockopt {}\n", outcome(ret as isize)),
        );
        let ret = unsafe {
            libc::bind(
                fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        writev_line(
            report_fd,
            &format!("{round} bind {}\n", outcome(ret as isize)),
        );
        if fd >= 0 {
            unsafe { libc::close(fd) };
        }
    }
}

fn write_lines_errno(file: &str, n: u64, report: &str) {
    let fd = open_for_writing(file);
    let report_fd = open_for_writing(report);
    for i in 1..=n {
        let line = format!("line {i}\n");
        // SAFETY: writing from a buffer we own.
        let ret = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
        let what = match ret {
            n if n == line.len() as isize => "ok".to_string(),
            n if n >= 0 => format!("returned {n}"),
            n => outcome(n),
        };
        writev_line(report_fd, &format!("write {i} {what}\n"));
    }
}

fn recycled_pid_writes(file: &str, n: u64, report: &str) {
    let child = |suffix: &str, pid: Option<i32>| -> i32 {
        if let Some(pid) = pid {
            let last = open_for_writing("/proc/sys/kernel/ns_last_pid");
            writev_line(last, &format!("{}", pid - 1));
            // SAFETY: closing our own fd.
            unsafe { libc::close(last) };
        }
        let child_report = format!("{report}.{suffix}");
        // SAFETY: single-threaded process; the child writes its lines and exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            fail(103, "fork failed");
        }
        if pid == 0 {
            write_lines_errno(file, n, &child_report);
            unsafe { libc::_exit(0) };
        }
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) } != pid {
            fail(103, "waitpid failed");
        }
        pid
    };
    let a = child("a", None);
    let b = child("b", Some(a));
    writev_line(open_for_writing(report), &format!("a {a} b {b}\n"));
}

/// Busy-loops for `how_long` without a syscall: `Instant::now` is `clock_gettime` through the
/// vDSO, and it is read only every 2^16 iterations.
fn spin(how_long: Duration) {
    let end = Instant::now() + how_long;
    let mut i: u64 = 0;
    loop {
        i = std::hint::black_box(i.wrapping_add(1));
        if i.trailing_zeros() >= 16 && Instant::now() >= end {
            return;
        }
    }
}

/// Sleeps `nap` at a time (one `nanosleep` each) until `how_long` has passed.
fn naps(nap: Duration, how_long: Duration) {
    let end = Instant::now() + how_long;
    let ts = libc::timespec {
        tv_sec: nap.as_secs() as libc::time_t,
        tv_nsec: nap.subsec_nanos() as libc::c_long,
    };
    while Instant::now() < end {
        // SAFETY: nanosleep with a timespec we own; an interruption just ends this nap early.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }
}

/// See `getppid-record` at the top: N getppid calls, each bracketed by a store of its number in
/// a shared mapping of FILE (`[before, after]`, two native-endian u64).
fn getppid_record(file: &str, n: u64, migrate_every: u64) {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let c = CString::new(file).unwrap_or_else(|_| fail(100, "NUL in path"));
    // SAFETY: open on a NUL-terminated path we own; read-write, as a shared mapping needs.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        fail(
            101,
            &format!("cannot open {file}: {}", std::io::Error::last_os_error()),
        );
    }
    // SAFETY: sizing and mapping a file we opened; the mapping is only used through `record`.
    let record = unsafe {
        if libc::ftruncate(fd, 16) != 0 {
            fail(103, "ftruncate failed");
        }
        let p = libc::mmap(
            std::ptr::null_mut(),
            16,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if p == libc::MAP_FAILED {
            fail(103, "mmap failed");
        }
        p.cast::<u64>()
    };
    for i in 1..=n {
        if migrate_every > 0 && i % migrate_every == 0 {
            // SAFETY: a zeroed cpu_set_t with one CPU set, for this process.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET((i / migrate_every) as usize % cpus, &mut set);
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
            }
        }
        // SAFETY: two u64 slots of the mapping above; volatile so every store happens in order
        // around the syscall.
        unsafe {
            record.write_volatile(i);
            libc::syscall(libc::SYS_getppid);
            record.add(1).write_volatile(i);
        }
    }
}

fn id_lines(file: &str, n: u64) {
    // SAFETY: the id getters have no preconditions; getgroups(0, NULL) only counts.
    let ids = unsafe {
        format!(
            "uid={} euid={} gid={} egid={} groups={}",
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
            libc::getgroups(0, std::ptr::null_mut())
        )
    };
    let fd = open_for_writing(file);
    for i in 1..=n {
        write_line(fd, &format!("line {i} {ids}\n"));
    }
}
