//! `action = "error"` on calls no kernel hook here can fail (write, fsync, …), for targets fij
//! spawns: seccomp user notification. The gated child installs, before its exec, a filter that
//! sends only the scenario's syscalls of this kind to a listener; fij takes the listener (with
//! `pidfd_getfd`) and answers each call: fail it with the fault's errno (or `retval`), or let it
//! run (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`). The filter is inherited by the target's
//! descendants, so their calls come to the same listener.
//!
//! Counting is the kernel's (`FaultRule::decide`, the same per-process / per-target counters,
//! `select`, `after`, `count`): one hit per entry into the syscall, as `sys_enter` counts it.
//! Only calls of the listed syscalls leave the target's kernel context at all; every other
//! call, and every process that is not a target, costs nothing.
//!
//! fij's guardian holds a duplicate of every listener from the spawn on, so the kernel never
//! answers a listed call with ENOSYS (it does once no listener is left): when fij stops deciding
//! (its campaign ends) its threads let every call run while it ends its targets; when fij dies,
//! a spawned target dies with it (its parent-death signal), and the guardian lets the calls of
//! what outlives fij (the target's descendants) run until no process uses the filter
//! ([`let_calls_run_until_unused`]).
use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context, Result, bail};
use fij_common::{EVENT_INJECTION, Event, FaultRule, random};

use crate::{
    compile::CompiledCampaign,
    scenario::{Action, Returns, Scenario, Trigger},
};

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64

/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

/// The classic-BPF filter that notifies fij of syscalls `nrs` (and of nothing else, nor of a
/// call made through another ABI).
pub fn filter(nrs: &[u32]) -> Vec<libc::sock_filter> {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let n = nrs.len();
    let mut program = vec![
        stmt(load, DATA_ARCH),
        // Another ABI: allow (its numbers mean other calls).
        jump(AUDIT_ARCH, 0, (n + 1) as u8),
        stmt(load, DATA_NR),
    ];
    for (i, &nr) in nrs.iter().enumerate() {
        // Match: jump to the notify return, past the remaining comparisons and the allow.
        program.push(jump(nr, (n - i) as u8, 0));
    }
    program.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    program.push(stmt(ret, libc::SECCOMP_RET_USER_NOTIF));
    program
}

/// In the forked child, before exec: installs `program` with a new listener (left open,
/// close-on-exec, for fij to take). Async-signal-safe. Without `CAP_SYS_ADMIN` (a `user`
/// target), `no_new_privs` is set first, as the kernel requires.
///
/// # Safety
/// `program` must point to a valid `sock_fprog` that outlives the call.
pub unsafe fn install(program: *const libc::sock_fprog, no_new_privs: bool) -> bool {
    unsafe {
        if no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return false;
        }
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            program,
        ) >= 0
    }
}

/// A target's seccomp listener as fij holds it: the descriptor, and the page where the call
/// fij last received is written (shared with the guardian, see [`Slot`]).
pub struct Listener {
    pub fd: OwnedFd,
    pub slot: Slot,
}

/// Takes the seccomp listener the gated child `pid` installed: the descriptor
/// `anon_inode:seccomp notify` among its fds, duplicated into fij with `pidfd_getfd`.
pub fn take_listener(pid: u32) -> Result<Listener> {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(fd) = listener_fd_of(pid) {
            // SAFETY: plain syscalls; the returned fds are new and ours.
            let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if pidfd < 0 {
                return Err(io::Error::last_os_error()).context("pidfd_open");
            }
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error()).context("pidfd_getfd");
            }
            return Ok(Listener {
                fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
                slot: Slot::new().context("the seccomp listener's shared page")?,
            });
        }
        if crate::targets::has_exited(pid) || std::time::Instant::now() > give_up {
            bail!("the child (pid {pid}) did not install its seccomp filter");
        }
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

fn listener_fd_of(pid: u32) -> Option<RawFd> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:seccomp notify")
        })
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}

/// One page of a memfd, mapped shared, into which fij receives each notification of one
/// listener: the kernel writes the call's id there inside the `RECV` ioctl, so if fij dies
/// between receiving a call and answering it (a SIGKILL lands only once the ioctl returned),
/// the guardian, which maps the same memfd, knows which call waits and answers it. A received
/// call is no longer offered to another reader of the listener: without this, its caller would
/// wait forever.
pub struct Slot {
    memfd: OwnedFd,
    page: std::ptr::NonNull<libc::seccomp_notif>,
}

// SAFETY: the page is only accessed through the raw pointer, by one thread at a time in fij
// (the slot moves into its listener's thread), read-only in the guardian.
unsafe impl Send for Slot {}

const SLOT_LEN: usize = 4096;

impl Slot {
    fn new() -> io::Result<Self> {
        // SAFETY: memfd_create with a static name; the fd is ours.
        let fd = unsafe { libc::memfd_create(c"fij-seccomp-slot".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sizing our own memfd.
        if unsafe { libc::ftruncate(memfd.as_raw_fd(), SLOT_LEN as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(memfd, libc::PROT_READ | libc::PROT_WRITE)
    }

    /// The guardian's view of a slot fij handed it (read-only).
    pub fn open(memfd: OwnedFd) -> io::Result<Self> {
        Self::map(memfd, libc::PROT_READ)
    }

    fn map(memfd: OwnedFd, prot: libc::c_int) -> io::Result<Self> {
        // SAFETY: a new shared mapping of a memfd of SLOT_LEN bytes; unmapped in Drop.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SLOT_LEN,
                prot,
                libc::MAP_SHARED,
                memfd.as_raw_fd(),
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            memfd,
            page: std::ptr::NonNull::new(page.cast()).expect("mmap returned a page"),
        })
    }

    pub fn memfd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.memfd.as_fd()
    }

    /// The id of the call last received through this slot (0: none, or being received).
    pub fn last_id(&self) -> u64 {
        // SAFETY: the page is mapped for our lifetime; the id is the struct's first field.
        unsafe { std::ptr::read_volatile(&raw const (*self.page.as_ptr()).id) }
    }

    /// [`receive`] into this slot.
    pub fn receive(
        &self,
        listener: RawFd,
        timeout_ms: i32,
    ) -> io::Result<Option<libc::seccomp_notif>> {
        // SAFETY: the mapped page holds a seccomp_notif; only this thread writes it.
        unsafe { receive_into(listener, timeout_ms, self.page.as_ptr()) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: unmapping the page we mapped.
        unsafe { libc::munmap(self.page.as_ptr().cast(), SLOT_LEN) };
    }
}

/// Waits up to `timeout_ms` for a notification on `listener`, and receives it. None: nothing
/// came; an error: the listener is done (every process using the filter is gone).
pub fn receive(listener: RawFd, timeout_ms: i32) -> io::Result<Option<libc::seccomp_notif>> {
    // SAFETY: the kernel fills the zeroed struct we own.
    let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    unsafe { receive_into(listener, timeout_ms, &mut notif) }
}

/// # Safety
/// `buffer` must be valid for writes of a `seccomp_notif`, written by no one else meanwhile.
unsafe fn receive_into(
    listener: RawFd,
    timeout_ms: i32,
    buffer: *mut libc::seccomp_notif,
) -> io::Result<Option<libc::seccomp_notif>> {
    let mut poll = libc::pollfd {
        fd: listener,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
    if ready < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if ready == 0 {
        return Ok(None);
    }
    if poll.revents & libc::POLLIN == 0 {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "no process uses the filter any more",
        ));
    }
    // SAFETY: the caller's buffer; the kernel wants it zeroed.
    unsafe { std::ptr::write_bytes(buffer, 0, 1) };
    if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_RECV, buffer) } != 0 {
        let e = io::Error::last_os_error();
        // ENOENT: the caller died (or was interrupted) before we took the call.
        return if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: filled by the kernel.
    Ok(Some(unsafe { std::ptr::read(buffer) }))
}

/// What fij answers a notified call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Let the call run.
    Continue,
    /// Fail it with this errno (positive).
    Errno(i32),
    /// Return this value without running it.
    Value(i64),
}

/// Answers notification `id`. A call whose caller died meanwhile (ENOENT) is no error.
pub fn respond(listener: RawFd, id: u64, answer: Answer) -> io::Result<()> {
    let (val, error, flags) = match answer {
        Answer::Continue => (0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
        Answer::Errno(errno) => (0, -errno, 0),
        Answer::Value(value) => (value, 0, 0),
    };
    let mut resp = libc::seccomp_notif_resp {
        id,
        val,
        error,
        flags,
    };
    // SAFETY: a response struct we own.
    if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
    }
    Ok(())
}

/// The syscalls the seccomp path fails for target `target_idx` (ascending, distinct).
pub fn syscalls_of(scenario: &Scenario, target_idx: usize) -> Vec<u32> {
    let mut nrs: Vec<u32> = scenario
        .faults
        .iter()
        .filter(|f| f.target == target_idx)
        .filter_map(|f| match (&f.action, &f.trigger) {
            (Action::Error { .. }, Trigger::Syscall { name, nr, .. })
                if crate::error_paths::cgroup_hook(name).is_none() =>
            {
                Some(*nr)
            }
            _ => None,
        })
        .collect();
    nrs.sort_unstable();
    nrs.dedup();
    nrs
}

/// The counters and rules every listener's thread decides with (one lock: per-target counters
/// are shared by all instances).
pub struct Supervisor {
    seed_key: [u32; 8],
    start_ns: u64,
    /// fault id → (rule, what a failed call returns, target index, syscall nr), for seccomp
    /// faults only.
    faults: Vec<(u32, FaultRule, Returns, usize, u32)>,
    /// (fault, instance) pairs that take part (`select`).
    selections: Vec<(u32, u32)>,
    process_hits: HashMap<(u32, u32), u64>,
    target_hits: HashMap<u32, u64>,
    injections: HashMap<u32, u64>,
    /// tid → tgid of the threads seen (per-process counting is by tgid).
    tgids: HashMap<u32, u32>,
    /// tgid → a pidfd of the process counted under it: it says whether that process has
    /// exited, so a process that got its pid starts at hit 0, even before fij has handled the
    /// exit event (the kernel deletes its own counters synchronously at the exit).
    pidfds: HashMap<u32, OwnedFd>,
    /// False once the campaign stopped injecting: every call is let run, none counted.
    deciding: bool,
}

impl Supervisor {
    pub fn new(scenario: &Scenario, compiled: &CompiledCampaign, start_ns: u64) -> Self {
        let faults = scenario
            .faults
            .iter()
            .enumerate()
            .filter_map(|(id, f)| match (&f.action, &f.trigger) {
                (Action::Error { returns, .. }, Trigger::Syscall { name, nr, .. })
                    if crate::error_paths::cgroup_hook(name).is_none() =>
                {
                    Some((id as u32, compiled.rules[id], *returns, f.target, *nr))
                }
                _ => None,
            })
            .collect();
        Self {
            seed_key: random::key_from_seed(compiled.seed),
            start_ns,
            faults,
            selections: compiled.selections.clone(),
            process_hits: HashMap::new(),
            target_hits: HashMap::new(),
            injections: HashMap::new(),
            tgids: HashMap::new(),
            pidfds: HashMap::new(),
            deciding: true,
        }
    }

    /// The campaign stops injecting: from now on every call runs, uncounted (the targets'
    /// calls while fij ends them, SIGTERM first, must not wait nor fail). Once this returns,
    /// no listener thread sends another injection event.
    pub fn stop_deciding(&mut self) {
        self.deciding = false;
    }

    /// Decides a notified call of target `target_idx`, instance `instance`: every fault on
    /// that syscall counts the hit; the first that fires answers. Returns the answer and the
    /// injection events (at most one).
    pub fn decide(
        &mut self,
        target_idx: usize,
        instance: u32,
        notif: &libc::seccomp_notif,
    ) -> (Answer, Option<Event>) {
        if !self.deciding {
            return (Answer::Continue, None);
        }
        let now = fij_common::log::monotonic_ns();
        let tid = notif.pid;
        let tgid = self.process_of(tid);
        let nr = notif.data.nr as u32;
        let mut answer = Answer::Continue;
        let mut event = None;
        for i in 0..self.faults.len() {
            let (fault_id, rule, returns, target, fault_nr) = self.faults[i];
            if target != target_idx || fault_nr != nr {
                continue;
            }
            if rule.flags & fij_common::RULE_SELECT != 0
                && !self.selections.contains(&(fault_id, instance))
            {
                continue;
            }
            if now.saturating_sub(self.start_ns) < rule.after_ns {
                continue;
            }
            let counter = if rule.flags & fij_common::RULE_PER_TARGET != 0 {
                self.target_hits.entry(fault_id).or_default()
            } else {
                self.process_hits.entry((fault_id, tgid)).or_default()
            };
            *counter += 1;
            let hit = *counter;
            let key = &self.seed_key;
            let Some(draw) = rule.decide(hit, || random::hit_draw(key, rule.hit_stream, hit))
            else {
                continue;
            };
            let injections = self.injections.entry(fault_id).or_default();
            if *injections >= rule.count {
                continue;
            }
            *injections += 1;
            if answer != Answer::Continue {
                continue; // an earlier fault answers this call
            }
            answer = match returns {
                Returns::Errno(errno) => Answer::Errno(errno),
                Returns::Value(value) => Answer::Value(value),
            };
            event = Some(Event {
                kind: EVENT_INJECTION,
                fault_id,
                ktime_ns: now,
                tgid,
                tid,
                hit,
                detail: u64::from(nr),
                target_idx: target_idx as u32,
                instance,
                draw,
                errno: rule.errno,
                ..Event::default()
            });
        }
        (answer, event)
    }

    /// The process (tgid) of thread `tid`, its counters forgotten if the process once counted
    /// under that tgid (or the one `tid` was cached in) has exited since.
    fn process_of(&mut self, tid: u32) -> u32 {
        if let Some(&tgid) = self.tgids.get(&tid) {
            if !self.has_exited(tgid) {
                return tgid;
            }
            self.forget(tgid);
        }
        let tgid = tgid_of(tid);
        if self.has_exited(tgid) {
            self.forget(tgid);
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.pidfds.entry(tgid) {
            // SAFETY: pidfd_open returns a new fd that we own (or fails: the process is then
            // counted without one, until its exit event).
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid, 0) };
            if fd >= 0 {
                e.insert(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
            }
        }
        self.tgids.insert(tid, tgid);
        tgid
    }

    /// Whether the process fij counted under `tgid` has exited (its pidfd is readable).
    fn has_exited(&self, tgid: u32) -> bool {
        self.pidfds.get(&tgid).is_some_and(|pidfd| {
            let mut poll = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own; no wait.
            unsafe { libc::poll(&mut poll, 1, 0) == 1 }
        })
    }

    /// The kernel reported process `tgid`'s exit: its counters go, unless those counted under
    /// `tgid` are already a later process's. The exit event comes through fij's event loop, which
    /// may run after a process that got the pid has made calls (counted afresh, since
    /// [`Self::process_of`] found the first one exited): forgetting then would restart that
    /// process's count mid-way. Measured: `errno::a_recycled_pid_starts_at_hit_zero_on_the_seccomp_path`
    /// failed on a loaded host, the second process's 3rd write running uncounted as its 1st.
    pub fn exited(&mut self, tgid: u32) {
        let counted_process_lives = self.pidfds.contains_key(&tgid) && !self.has_exited(tgid);
        if !counted_process_lives {
            self.forget(tgid);
        }
    }

    /// Forgets the counters of exited process `tgid` (a later process may get its pid).
    fn forget(&mut self, tgid: u32) {
        self.process_hits.retain(|(_, pid), _| *pid != tgid);
        self.tgids.retain(|_, pid| *pid != tgid);
        self.pidfds.remove(&tgid);
    }
}

/// The thread group of thread `tid`, from /proc (the thread itself when unreadable).
fn tgid_of(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(tid)
}

/// One listener's thread: receives, decides, answers; sends injection events to the campaign.
pub struct ListenerThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl ListenerThread {
    /// Starts answering `listener` (target `target_idx`, instance `instance`), first the
    /// notification `pending` taken while the child was released, if any.
    pub fn start(
        listener: Listener,
        target_idx: usize,
        instance: u32,
        pending: Option<libc::seccomp_notif>,
        supervisor: Arc<Mutex<Supervisor>>,
        events: tokio::sync::mpsc::UnboundedSender<Event>,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("fij-seccomp-{target_idx}-{instance}"))
            .spawn(move || {
                let fd = listener.fd.as_raw_fd();
                let mut next = pending;
                while !stopping.load(Ordering::Relaxed) {
                    let notif = match next.take() {
                        Some(notif) => notif,
                        None => match listener.slot.receive(fd, 100) {
                            Ok(Some(notif)) => notif,
                            Ok(None) => continue,
                            Err(_) => break, // every process using the filter is gone
                        },
                    };
                    // The event is sent under the lock: `stop_deciding` is then a barrier.
                    let mut deciding = supervisor.lock().expect("the supervisor lock");
                    let (answer, event) = deciding.decide(target_idx, instance, &notif);
                    if let Some(event) = event {
                        let _ = events.send(event);
                    }
                    drop(deciding);
                    if let Err(e) = respond(fd, notif.id, answer) {
                        tracing::warn!(target_idx, instance, "answering a seccomp call: {e}");
                    }
                }
            })
            .context("starting a seccomp listener thread")?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for ListenerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The guardian's part, once fij is gone or has ended its campaign: let every call of the
/// targets' filters run until no process uses them. First the call fij last received on each
/// listener, which it may have died before answering (its slot names it; an answered or gone
/// call is refused by the kernel, harmlessly); then every new one. Without this, a process
/// that outlives fij (a spawned target's descendant: only the target itself dies with fij) would
/// see ENOSYS for each listed call, as the kernel answers once no listener is left.
pub fn let_calls_run_until_unused(listeners: Vec<(OwnedFd, Slot)>) {
    let mut open: Vec<OwnedFd> = Vec::new();
    for (fd, slot) in listeners {
        let _ = respond(fd.as_raw_fd(), slot.last_id(), Answer::Continue);
        open.push(fd);
    }
    while !open.is_empty() {
        let mut polls: Vec<libc::pollfd> = open
            .iter()
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: pollfds we own.
        if unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) } < 0 {
            continue; // EINTR
        }
        let mut unused = Vec::new();
        for (i, p) in polls.iter().enumerate() {
            if p.revents & libc::POLLIN != 0 {
                if let Ok(Some(notif)) = receive(p.fd, 0) {
                    let _ = respond(p.fd, notif.id, Answer::Continue);
                }
            } else if p.revents != 0 {
                unused.push(i); // POLLHUP: every process using the filter is gone
            }
        }
        for i in unused.into_iter().rev() {
            open.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supervisor() -> Supervisor {
        Supervisor {
            seed_key: [0; 8],
            start_ns: 0,
            faults: Vec::new(),
            selections: Vec::new(),
            process_hits: HashMap::new(),
            target_hits: HashMap::new(),
            injections: HashMap::new(),
            tgids: HashMap::new(),
            pidfds: HashMap::new(),
            deciding: true,
        }
    }

    #[test]
    fn a_late_exit_event_does_not_forget_the_counters_of_the_pids_next_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawning sleep");
        let pid = child.id();
        let mut supervisor = supervisor();
        // The counters are the process's now running under `pid` (as if a new process got it
        // and made a call before the previous one's exit event came).
        assert_eq!(supervisor.process_of(pid), pid);
        supervisor.process_hits.insert((0, pid), 2);
        supervisor.exited(pid);
        assert_eq!(supervisor.process_hits.get(&(0, pid)), Some(&2));

        child.kill().expect("killing sleep");
        child.wait().expect("reaping sleep");
        supervisor.exited(pid);
        assert!(supervisor.process_hits.is_empty());
        assert!(supervisor.pidfds.is_empty() && supervisor.tgids.is_empty());
    }

    #[test]
    fn the_filter_jumps_to_notify_for_each_listed_call_and_allows_the_rest() {
        let program = filter(&[1, 74]);
        // arch check, load nr, two comparisons, allow, notify.
        assert_eq!(program.len(), 7);
        assert_eq!(program[1].jf, 3, "another ABI jumps to allow");
        assert_eq!((program[3].k, program[3].jt), (1, 2));
        assert_eq!((program[4].k, program[4].jt), (74, 1));
        assert_eq!(program[5].k, libc::SECCOMP_RET_ALLOW);
        assert_eq!(program[6].k, libc::SECCOMP_RET_USER_NOTIF);
    }
}
