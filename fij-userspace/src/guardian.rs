//! fij's guardian: a tiny process that resumes the processes fij stopped if fij dies without
//! resuming them (SIGKILL, a crash of fij), so that no target stays frozen because its
//! injector died — also when fij dies between the kernel's SIGSTOP and reading its event.
//!
//! The kernel records every SIGSTOP it injects in the `STOPPED` map (tgid → fault and the
//! process's start time) *before* sending it, and deletes the entry when the process exits.
//! fij starts the guardian before it loads anything ([`Guardian::start`]: fork, then exec of
//! fij's own executable as `fij __guardian`), and hands it a duplicate of that map's fd over a
//! socket once the map exists ([`Guardian::watch`]), and a duplicate of each spawned target's
//! seccomp listener with its shared slot ([`Guardian::hold_listener`], `crate::seccomp`). The
//! guardian holds that socket, the map and those listeners and nothing else (every other fd is
//! closed before its exec; a map or a listener keeps no program or link alive). Then:
//!
//! - fij ends normally, having resumed its stopped targets itself: it tells the guardian to
//!   exit quietly ([`Guardian::dismiss`]);
//! - fij dies (the socket reaches EOF): the guardian waits until fij's exit is complete (so
//!   fij's programs are detached and no new stop can come), then sends SIGCONT to every process
//!   in the map that is still the same process — its start time in /proc/PID/stat is the one
//!   the kernel recorded, so a recycled pid is never signalled — and exits.
//!
//! In both cases, before it exits, it lets every call that comes to a listener it holds run
//! (`seccomp::let_calls_run_until_unused`) until no process uses the filter: the calls of a
//! process that outlives fij then run as if fij had never been there, rather than fail.
//!
//! The guardian also removes the work directories fij tells it of ([`Guardian::remove_on_death`]:
//! `fij run --backend stap`'s script and compiled program) once fij has died, so a SIGKILLed fij
//! leaves no directory behind either; fij removes them itself when it ends normally.
//!
//! The guardian signals nothing else, ever; it is in fij's protected set, so no fault fires on it.
use std::{
    ffi::OsStr,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use fij_common::StopMark;

use crate::seccomp::Slot;

/// argv[1] of the guardian process (`fij __guardian`), checked first thing in `main`.
pub const ARG: &str = "__guardian";
/// The guardian's end of its socket to fij, as its exec leaves it.
const SOCKET_FD: RawFd = 3;
/// Messages from fij: here is the map (with the fd attached), remove this directory (its path
/// follows the byte) if fij dies, and exit quietly.
const MSG_MAP: u8 = b'M';
const MSG_REMOVE_DIR: u8 = b'D';
const MSG_QUIT: u8 = b'Q';
/// A spawned target's seccomp listener, then (`MSG_SLOT`) the memfd of its shared slot.
const MSG_LISTENER: u8 = b'L';
const MSG_SLOT: u8 = b'S';
/// The longest message: its byte and a path.
const MSG_MAX: usize = 1 + libc::PATH_MAX as usize;
/// What every directory the guardian removes is named, in the temporary directory: it removes
/// nothing else, whatever it is told.
pub const WORK_DIR_PREFIX: &str = "fij-";

/// fij's handle on its guardian.
pub struct Guardian {
    pid: u32,
    socket: Option<OwnedFd>,
}

impl Guardian {
    /// Starts the guardian (call before loading anything, before targets exist).
    pub fn start() -> Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills two fds that we then own.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return Err(io::Error::last_os_error()).context("guardian: socketpair");
        }
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let exe = c"/proc/self/exe";
        let argv0 = c"fij";
        let arg1 = c"__guardian";
        // fij's pid, told rather than read with getppid(): if fij dies before the guardian runs,
        // its parent is already someone else.
        let fij_pid =
            std::ffi::CString::new(std::process::id().to_string()).expect("a pid has no NUL");
        let argv = [
            argv0.as_ptr(),
            arg1.as_ptr(),
            fij_pid.as_ptr(),
            std::ptr::null(),
        ];
        // The environment as it is (for FIJ_LOG and the like), prepared before the fork.
        let env: Vec<std::ffi::CString> = std::env::vars_os()
            .filter_map(|(k, v)| {
                use std::os::unix::ffi::OsStrExt;
                std::ffi::CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).ok()
            })
            .collect();
        let envp: Vec<*const libc::c_char> = env
            .iter()
            .map(|e| e.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        // SAFETY: the child makes raw syscalls only, on memory prepared above, then execs.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error()).context("guardian: fork");
        }
        if pid == 0 {
            unsafe {
                // Out of fij's process group: a Ctrl-C at fij's terminal is for fij.
                libc::setpgid(0, 0);
                if libc::dup2(theirs.as_raw_fd(), SOCKET_FD) != SOCKET_FD {
                    libc::_exit(127);
                }
                // Hold nothing of fij's but the socket: no program, link, map or log file.
                libc::syscall(libc::SYS_close_range, SOCKET_FD + 1, libc::c_uint::MAX, 0);
                libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        drop(theirs);
        Ok(Self {
            pid: pid as u32,
            socket: Some(ours),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Hands the guardian the kernel's map of stopped processes.
    pub fn watch(&mut self, stopped: BorrowedFd<'_>) -> Result<()> {
        let socket = self.socket.as_ref().context("guardian dismissed")?;
        send(socket.as_raw_fd(), MSG_MAP, Some(stopped.as_raw_fd()))
            .context("handing the stopped-process map to the guardian")
    }

    /// Has the guardian remove `dir` (fij's own, `$TMPDIR/fij-…`) if fij dies.
    pub fn remove_on_death(&mut self, dir: &Path) -> Result<()> {
        let socket = self.socket.as_ref().context("guardian dismissed")?;
        if !is_work_dir(dir) {
            anyhow::bail!(
                "{}: the guardian removes only {WORK_DIR_PREFIX}* directories of the temporary directory",
                dir.display()
            );
        }
        send_bytes(
            socket.as_raw_fd(),
            &[&[MSG_REMOVE_DIR], dir.as_os_str().as_bytes()].concat(),
            None,
        )
        .context("telling the guardian of the work directory")
    }

    /// Hands the guardian a duplicate of a spawned target's seccomp listener and its slot,
    /// before the target runs: while the guardian holds it, the kernel never answers the
    /// target's listed calls with ENOSYS (see `crate::seccomp`).
    pub fn hold_listener(&mut self, listener: &crate::seccomp::Listener) -> Result<()> {
        let socket = self.socket.as_ref().context("guardian dismissed")?;
        send(
            socket.as_raw_fd(),
            MSG_LISTENER,
            Some(listener.fd.as_raw_fd()),
        )
        .and_then(|()| {
            send(
                socket.as_raw_fd(),
                MSG_SLOT,
                Some(listener.slot.memfd().as_raw_fd()),
            )
        })
        .context("handing a seccomp listener to the guardian")
    }

    /// fij ends normally (its stopped targets resumed, its spawned targets ended): the guardian
    /// exits without acting, once no process uses a seccomp listener it holds (normally at
    /// once: a process that survived fij's end has its listed calls let run meanwhile).
    pub fn dismiss(mut self) {
        if let Some(socket) = self.socket.take() {
            let _ = send(socket.as_raw_fd(), MSG_QUIT, None);
        }
        // Reaped if it exits soon (it does, unless a filter still has users); otherwise it
        // outlives fij, reparented, and ends with the last of them.
        let give_up = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < give_up {
            // SAFETY: waiting for our own child, without blocking.
            let r = unsafe { libc::waitpid(self.pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
            if r != 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Guardian {
    /// Not dismissed (fij fails): closing the socket is fij's death as far as the guardian is
    /// concerned; it acts once fij has exited. Not waited for (it waits for fij).
    fn drop(&mut self) {
        self.socket.take();
    }
}

fn send(socket: RawFd, byte: u8, fd: Option<RawFd>) -> io::Result<()> {
    send_bytes(socket, &[byte], fd)
}

/// One message: `data` (its first byte says what it is), with `fd` attached if given.
fn send_bytes(socket: RawFd, data: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // Room for one fd of ancillary data, aligned as cmsghdr wants.
    let mut control = [0u64; 4];
    // SAFETY: msghdr/cmsghdr built over buffers we own, as cmsg(3) describes.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
        if libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) != data.len() as isize {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One message from fij: its bytes and the fd it carried; None at EOF (fij is gone).
fn receive(socket: RawFd) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    let mut data = vec![0u8; MSG_MAX];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: as in `send`; a received fd is ours to own.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        let n = loop {
            let n = libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break n;
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(None);
        }
        let mut fd = None;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if !cmsg.is_null()
            && (*cmsg).cmsg_level == libc::SOL_SOCKET
            && (*cmsg).cmsg_type == libc::SCM_RIGHTS
        {
            let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
            fd = Some(OwnedFd::from_raw_fd(raw));
        }
        data.truncate(n as usize);
        Ok(Some((data, fd)))
    }
}

/// The guardian process (`fij __guardian`): returns its exit status.
pub fn main() -> u8 {
    // SAFETY: ignoring signals has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let Some(fij) = std::env::args()
        .nth(2)
        .and_then(|pid| pid.parse::<libc::pid_t>().ok())
    else {
        eprintln!("fij guardian: started without fij's pid (fij starts it; do not run it by hand)");
        return 2;
    };
    let mut map = None;
    let mut listeners = Vec::new();
    let mut listener = None;
    let mut dirs = Vec::new();
    while let Ok(Some((msg, fd))) = receive(SOCKET_FD) {
        match (msg.first(), fd) {
            (Some(&MSG_MAP), Some(fd)) => map = Some(fd),
            (Some(&MSG_REMOVE_DIR), _) => dirs.push(PathBuf::from(OsStr::from_bytes(&msg[1..]))),
            (Some(&MSG_LISTENER), Some(fd)) => listener = Some(fd),
            (Some(&MSG_SLOT), Some(memfd)) => match (listener.take(), Slot::open(memfd)) {
                (Some(fd), Ok(slot)) => listeners.push((fd, slot)),
                (_, Err(e)) => eprintln!("fij guardian: mapping a seccomp slot: {e}"),
                (None, _) => {}
            },
            (Some(&MSG_QUIT), _) => {
                crate::seccomp::let_calls_run_until_unused(listeners);
                return 0;
            }
            _ => {}
        }
    }
    // fij is gone or going: wait until its exit is complete (it is then no longer our parent),
    // so that its programs are detached and the map gets no new entry after we read it.
    // SAFETY: getppid has no preconditions.
    while unsafe { libc::getppid() } == fij {
        std::thread::sleep(Duration::from_millis(1));
    }
    for dir in dirs.iter().filter(|d| is_work_dir(d)) {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => eprintln!("fij guardian: fij died; removed its {}", dir.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("fij guardian: removing {}: {e}", dir.display()),
        }
    }
    // Its spawned targets got their parent-death SIGKILL with that exit.
    let status = match map.map(resume_stopped) {
        None | Some(Ok(())) => 0, // None: fij died before it loaded anything
        Some(Err(e)) => {
            eprintln!("fij guardian: {e:#}");
            1
        }
    };
    crate::seccomp::let_calls_run_until_unused(listeners);
    status
}

/// Whether `dir` is one the guardian may remove: `$TMPDIR/fij-…`, absolute, no `..`.
fn is_work_dir(dir: &Path) -> bool {
    dir.is_absolute()
        && dir.parent() == Some(std::env::temp_dir().as_path())
        && dir
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(WORK_DIR_PREFIX.as_bytes()) && n != "..")
}

/// SIGCONT to every process in the map that is still the process the kernel stopped.
fn resume_stopped(map: OwnedFd) -> Result<()> {
    let data = aya::maps::MapData::from_fd(map).context("opening the stopped-process map")?;
    let stopped: aya::maps::HashMap<_, u32, StopMark> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))
            .context("the stopped-process map has an unexpected type")?;
    for (pid, mark) in stopped.iter().filter_map(Result::ok) {
        if pid <= 1 || !same_process(pid, mark.start_boottime_ns) {
            continue;
        }
        // SAFETY: kill has no memory preconditions; the pid is the process fij stopped.
        if unsafe { libc::kill(pid as i32, libc::SIGCONT) } == 0 {
            eprintln!("fij guardian: fij died; resumed pid {pid} (SIGCONT), which it had stopped");
        }
    }
    Ok(())
}

/// Whether `pid` is alive and started at `start_boottime_ns` (as the kernel recorded it), by
/// /proc/PID/stat's start time (clock ticks since boot). Unknown start time: not resumed.
fn same_process(pid: u32, start_boottime_ns: u64) -> bool {
    if start_boottime_ns == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let start_ticks = start_boottime_ns / (1_000_000_000 / ticks_per_s);
    // fields[0] is the state (field 3 of stat), so starttime (field 22) is fields[19].
    !matches!(fields.first(), Some(&("Z" | "X")))
        && fields.get(19).and_then(|f| f.parse::<u64>().ok()) == Some(start_ticks)
}
