//! Target processes: spawning commands so that they are targets before their first instruction,
//! adopting running pids, and the processes fij must never touch.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// `task_struct::flags` bit of kernel threads, as shown in field 9 of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;
/// `PF_EXITING` of `task_struct::flags` (include/linux/sched.h): set when the task begins to exit.
const PF_EXITING: u64 = 0x0000_0004;

/// fij's own pid and every ancestor up to pid 1: never signalled, checked again in kernel.
pub fn self_and_ancestors() -> Vec<u32> {
    let mut chain = vec![std::process::id()];
    while let Some(&pid) = chain.last() {
        match stat_fields(pid)
            .ok()
            .and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
        {
            Some(ppid) if ppid > 0 && !chain.contains(&ppid) => chain.push(ppid),
            _ => break,
        }
    }
    chain
}

/// Fields of /proc/PID/stat after the `(comm)` field: state, ppid, pgrp, … (0-based from state).
fn stat_fields(pid: u32) -> io::Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    Ok(after_comm.split_whitespace().map(str::to_owned).collect())
}

/// Checks that `pid` may be adopted as a target: it exists, is a process (not a thread), is not
/// a kernel thread, pid 1, fij, or an ancestor of fij.
pub fn check_adoptable(pid: u32, protected: &[u32]) -> Result<()> {
    if pid <= 1 {
        bail!("pid {pid} is never a target");
    }
    if protected.contains(&pid) {
        bail!("pid {pid} is fij itself or one of its ancestors, which fij never signals");
    }
    let fields = stat_fields(pid).with_context(|| format!("pid {pid} does not exist"))?;
    if matches!(fields.first().map(String::as_str), Some("Z" | "X")) {
        bail!("pid {pid} has exited (a zombie waiting for its parent)");
    }
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    if flags & PF_KTHREAD != 0 {
        bail!("pid {pid} is a kernel thread, which fij never signals");
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .map(str::trim);
    if tgid != Some(pid.to_string().as_str()) {
        bail!(
            "pid {pid} is a thread of process {}; name the process",
            tgid.unwrap_or("?")
        );
    }
    Ok(())
}

/// Whether process `pid` has exited: gone, or a zombie (which runs no code and sends no exit
/// event any more).
pub fn has_exited(pid: u32) -> bool {
    match stat_fields(pid) {
        Ok(fields) => matches!(fields.first().map(String::as_str), Some("Z" | "X")),
        Err(_) => true,
    }
}

/// Finds `program` like execvp would, so the child makes exactly one execve.
pub fn resolve_program(program: &str, cwd: Option<&Path>) -> Result<PathBuf> {
    if program.contains('/') {
        let path = match cwd {
            Some(dir) if Path::new(program).is_relative() => dir.join(program),
            _ => PathBuf::from(program),
        };
        if !path.is_file() {
            bail!("command `{program}` not found");
        }
        return Ok(path);
    }
    let path_var =
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .with_context(|| format!("command `{program}` not found in PATH"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A forked child that waits, before its execve, until [`GatedChild::release`] is called.
pub struct GatedChild {
    pub pid: u32,
    gate: Option<OwnedFd>,
    exec_errors: OwnedFd,
    /// The seccomp listener of a child spawned with syscalls to fail (`crate::seccomp`).
    pub listener: Option<crate::seccomp::Listener>,
    /// A notification of the command's, taken while the child was released: the first call
    /// the listener's thread must answer.
    pub pending: Option<libc::seccomp_notif>,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cstring(s: impl AsRef<[u8]>) -> Result<CString> {
    CString::new(s.as_ref()).context("argument contains a NUL byte")
}

impl GatedChild {
    /// Forks; the child puts itself in its own process group (so a Ctrl-C at fij's terminal
    /// reaches fij, which then ends the campaign), waits for the gate, then execs.
    ///
    /// `(user, group)`: the uid and gid the command runs with (supplementary groups cleared),
    /// set before the child is added to the target set, so they are none of its hits.
    pub fn spawn(
        program: &Path,
        argv: &[String],
        cwd: Option<&Path>,
        env: &[(String, String)],
        (user, group): (Option<u32>, Option<u32>),
        seccomp: &[u32],
    ) -> Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        // Everything the child needs is prepared here: after fork it may only make raw syscalls.
        let path = cstring(program.as_os_str().as_bytes())?;
        let args: Vec<CString> = argv.iter().map(cstring).collect::<Result<_>>()?;
        let mut envs: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| !env.iter().any(|(name, _)| k.as_bytes() == name.as_bytes()))
            .map(|(k, v)| cstring([k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<Result<_>>()?;
        for (k, v) in env {
            envs.push(cstring(format!("{k}={v}"))?);
        }
        let dir = cwd.map(|d| cstring(d.as_os_str().as_bytes())).transpose()?;
        let argv_ptrs: Vec<*const libc::c_char> = args
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp_ptrs: Vec<*const libc::c_char> = envs
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let filter = crate::seccomp::filter(seccomp);
        let program = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut _,
        };
        let (gate_rx, gate_tx) = pipe()?;
        let (err_rx, err_tx) = pipe()?;
        // SAFETY: getpid has no preconditions.
        let fij_pid = unsafe { libc::getpid() };

        // SAFETY: the child only calls async-signal-safe functions on memory prepared above.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            unsafe {
                libc::setpgid(0, 0);
                // `user` / `group`: no supplementary group, then the group, then the user (after
                // which the process may no longer change its group).
                if (user.is_some() || group.is_some()) && libc::setgroups(0, std::ptr::null()) != 0
                {
                    report_errno_and_exit(err_tx.as_raw_fd());
                }
                if let Some(gid) = group
                    && libc::setgid(gid) != 0
                {
                    report_errno_and_exit(err_tx.as_raw_fd());
                }
                if let Some(uid) = user
                    && libc::setuid(uid) != 0
                {
                    report_errno_and_exit(err_tx.as_raw_fd());
                }
                // Die with fij: a child still waiting at its gate must not outlive it (it would
                // wait forever), and the gate's write end is fij's alone, so EOF tells the child
                // fij is gone. The parent may have died before prctl: then getppid differs. Set
                // after the credentials, whose change clears it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                if libc::getppid() != fij_pid {
                    libc::_exit(127);
                }
                // Hold nothing of fij's: no BPF program, link or map (fij's links must die with
                // fij), no copy of the gate's write end, no log file.
                if close_fds_except(&[gate_rx.as_raw_fd(), err_tx.as_raw_fd()]).is_err() {
                    report_errno_and_exit(err_tx.as_raw_fd());
                }
                // The calls fij fails by answering them; from here on every one of them waits
                // for fij (which answers the child's own until the exec).
                if !seccomp.is_empty() && !crate::seccomp::install(&program, user.is_some()) {
                    report_errno_and_exit(err_tx.as_raw_fd());
                }
                let mut byte = 0u8;
                // EOF without a byte means fij gave up: exit without running the command.
                if libc::read(gate_rx.as_raw_fd(), (&raw mut byte).cast(), 1) != 1 {
                    libc::_exit(127);
                }
                if let Some(dir) = &dir
                    && libc::chdir(dir.as_ptr()) != 0
                {
                    report_errno_and_exit(err_tx.as_raw_fd());
                }
                libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
                report_errno_and_exit(err_tx.as_raw_fd());
            }
        }
        drop((gate_rx, err_tx));
        let mut child = Self {
            pid: pid as u32,
            gate: Some(gate_tx),
            exec_errors: err_rx,
            listener: None,
            pending: None,
        };
        wait_until_gated(pid as u32);
        // Only once the child is at its gate: until its close_range, it still holds copies of
        // fij's fds, the listeners of the instances spawned before it among them.
        if !seccomp.is_empty() {
            child.listener = Some(crate::seccomp::take_listener(pid as u32)?);
        }
        Ok(child)
    }

    /// Lets the child exec, and waits until the exec has happened (or reports why it failed).
    pub fn release(&mut self) -> Result<()> {
        let gate = self.gate.take().context("child already released")?;
        // SAFETY: writing one byte from our stack to a pipe we own.
        if unsafe { libc::write(gate.as_raw_fd(), [1u8].as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error()).context("releasing the child");
        }
        drop(gate);
        if let Some(listener) = &self.listener {
            self.pending = self.continue_until_exec(listener)?;
        }
        let mut errno = [0u8; 4];
        // The error pipe is close-on-exec: EOF means the exec succeeded.
        let n = unsafe { libc::read(self.exec_errors.as_raw_fd(), errno.as_mut_ptr().cast(), 4) };
        if n == 4 {
            let err = io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
            bail!("cannot start the command: {err}");
        }
        Ok(())
    }
}

/// Waits until the forked child `pid` sleeps in its `read` of the gate (or has died). Only then
/// may fij add it to the target set: the syscalls the child makes before it (setpgid, prctl,
/// getppid, close_range) and the entry into that read must not count as hits of the command.
/// The child gets there in microseconds; the kernel shows it in /proc/PID/syscall.
fn wait_until_gated(pid: u32) {
    let path = format!("/proc/{pid}/syscall");
    let read_nr = libc::SYS_read.to_string();
    let mut pause = std::time::Duration::from_micros(20);
    loop {
        let Ok(text) = std::fs::read_to_string(&path) else {
            return; // gone
        };
        if text.split_whitespace().next() == Some(read_nr.as_str()) || has_exited(pid) {
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(1));
    }
}

/// Closes every file descriptor but stdio and `keep` (at most 4). Async-signal-safe: no
/// allocation, only `close_range(2)` (Linux 5.9).
fn close_fds_except(keep: &[libc::c_int]) -> Result<(), ()> {
    let mut kept = [libc::c_int::MAX; 4];
    if keep.len() > kept.len() {
        return Err(());
    }
    kept[..keep.len()].copy_from_slice(keep);
    kept.sort_unstable();
    let mut first: libc::c_uint = 3;
    for &fd in kept.iter().take(keep.len()) {
        let fd = fd as libc::c_uint;
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = first.max(fd + 1);
    }
    close_range(first, libc::c_uint::MAX)
}

fn close_range(first: libc::c_uint, last: libc::c_uint) -> Result<(), ()> {
    // SAFETY: close_range only closes descriptors; nothing in the child uses the closed ones.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if r == 0 { Ok(()) } else { Err(()) }
}

unsafe fn report_errno_and_exit(fd: libc::c_int) -> ! {
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(fd, errno.to_ne_bytes().as_ptr().cast(), 4);
        libc::_exit(127)
    }
}

impl GatedChild {
    /// Lets the child's own calls before its exec run (the gate's read, chdir, execve, the
    /// report of a failed exec), not counting them, until the exec result is in: a call
    /// notified once the error pipe is closed is the command's, and is returned unanswered.
    fn continue_until_exec(
        &self,
        listener: &crate::seccomp::Listener,
    ) -> Result<Option<libc::seccomp_notif>> {
        let exec_done = || {
            let mut poll = libc::pollfd {
                fd: self.exec_errors.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own; no wait.
            unsafe { libc::poll(&mut poll, 1, 0) == 1 }
        };
        loop {
            if exec_done() {
                return Ok(None);
            }
            let fd = listener.fd.as_raw_fd();
            let Some(notif) = listener.slot.receive(fd, 10)? else {
                continue;
            };
            // The exec closes the error pipe before the command makes its first call.
            if exec_done() {
                return Ok(Some(notif));
            }
            crate::seccomp::respond(fd, notif.id, crate::seccomp::Answer::Continue)?;
        }
    }
}

impl Drop for GatedChild {
    fn drop(&mut self) {
        // Never released: closing the gate makes the child exit before running anything; reap
        // it. One with a seccomp filter may wait in a notified call that only its own copy of
        // the listener could answer: it is killed (it has run nothing of the command).
        if self.gate.take().is_some() {
            if self.listener.is_some() {
                unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            }
            unsafe { libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0) };
        }
    }
}

/// The only way fij signals a target from userspace (ending a campaign, SIGCONT after a stop):
/// the same exclusions as the kernel's — never pid ≤ 1, fij itself or an ancestor (`protected`).
/// Returns whether the signal was sent.
pub fn signal_target(pid: u32, signal: i32, protected: &[u32]) -> bool {
    signal_target_result(pid, signal, protected) == 0
}

/// [`signal_target`] as `fij_common::fire`'s send step wants it: 0, or the negative errno (as
/// `bpf_send_signal` returns them in the kernel).
pub fn signal_target_result(pid: u32, signal: i32, protected: &[u32]) -> i32 {
    if pid <= 1 || protected.contains(&pid) {
        tracing::warn!(
            pid,
            "refused to signal a protected process (pid 1, fij or its ancestor)"
        );
        return -libc::EPERM;
    }
    // SAFETY: kill has no memory preconditions; the pid is a live target by the caller's check.
    if unsafe { libc::kill(pid as i32, signal) } == 0 {
        0
    } else {
        -std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ESRCH)
    }
}

/// Reaps a child of fij once it has exited (non-blocking), returning its wait status.
pub fn try_reap(pid: u32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid on our own child with WNOHANG.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    (r == pid as i32).then_some(status)
}

/// Describes a wait status (also the kernel's `task_struct::exit_code`) as "code N" or "signal NAME".
pub fn describe_status(status: i32) -> (Option<i32>, Option<i32>) {
    if status & 0x7f == 0 {
        (Some((status >> 8) & 0xff), None)
    } else {
        (None, Some(status & 0x7f))
    }
}

/// Every process (tgid) now in /proc.
pub fn processes() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
}

/// A process as a /proc scan found it: its pid, and its start time (`starttime`, field 22 of
/// `/proc/PID/stat`, in clock ticks since boot), which tells it from a later process that got
/// the same pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub pid: u32,
    pub start: u64,
}

impl Found {
    /// Whether the process found is still there and not on its way out: not gone, not a zombie,
    /// not exiting (`PF_EXITING`, set in `do_exit` before the `sched_process_exit` tracepoint,
    /// while the process still shows as running), and its pid not taken by another process since
    /// the scan. Checked after the process was put into the target set, true means that its exit
    /// is still to come, so the kernel's exit program will find it there.
    pub fn still_running(&self) -> bool {
        stat_fields(self.pid).is_ok_and(|fields| {
            let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
            !matches!(fields.first().map(String::as_str), Some("Z" | "X"))
                && flags & PF_EXITING == 0
                && start_time(&fields) == Some(self.start)
        })
    }
}

/// `pid` as it is now, if it exists.
pub fn found(pid: u32) -> Option<Found> {
    let start = start_time(&stat_fields(pid).ok()?)?;
    Some(Found { pid, start })
}

/// `starttime` of stat fields after the comm (the state is field 3 of stat, so field 22 is the
/// 20th here).
fn start_time(fields: &[String]) -> Option<u64> {
    fields.get(19)?.parse().ok()
}

/// The current descendants of `pid` (children forked later join in kernel), `pid` itself not
/// included, each with its start time: one may exit, and its pid go to another process, at any
/// moment after the scan.
pub fn descendants(pid: u32) -> Vec<Found> {
    let processes: Vec<(Found, u32)> = processes()
        .filter_map(|p| {
            let fields = stat_fields(p).ok()?;
            let ppid = fields.get(1)?.parse().ok()?;
            let start = start_time(&fields)?;
            Some((Found { pid: p, start }, ppid))
        })
        .collect();
    let mut parents = vec![pid];
    let mut tree = Vec::new();
    let mut i = 0;
    while i < parents.len() {
        let parent = parents[i];
        for (found, _) in processes.iter().filter(|(_, ppid)| *ppid == parent) {
            parents.push(found.pid);
            tree.push(*found);
        }
        i += 1;
    }
    tree
}
