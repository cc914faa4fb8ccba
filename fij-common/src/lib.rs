//! The contract between fij's kernel programs (`fij-ebpf`) and its loader (`fij-userspace`).
//!
//! Everything here is `#[repr(C)]` plain data: the loader writes rules into maps with these
//! layouts, the kernel programs read them and write [`Event`]s back. Change a layout on both
//! sides at once; the kernel object is always built from this same source in the same build.
#![no_std]

#[cfg(feature = "log")]
pub mod log;
pub mod random;

/// Upper bound of faults in one scenario (size of the per-fault arrays).
pub const MAX_FAULTS: u32 = 1024;
/// Upper bound of faults that share one hook (same target and syscall); bounds the kernel loop.
pub const MAX_FAULTS_PER_HOOK: usize = 16;
/// Capacity of the target-process set (tgids, plus tids of their threads).
pub const MAX_TARGET_PROCESSES: u32 = 65536;
/// Capacity of the per-process hit counters: (fault, process) pairs of live target processes
/// (a process's counters are deleted when it exits). Never evicted: a hit that finds the table
/// full is reported (`COUNTER_TABLE_FULL`), not counted in a counter that restarts from 0.
pub const MAX_PROCESS_COUNTERS: u32 = 65536;
/// Capacity of the protected-pid set (fij and its ancestors).
pub const MAX_PROTECTED: u32 = 256;
/// Ring buffer size for events (bytes, a power of two multiple of the page size).
pub const EVENT_RING_BYTES: u32 = 1 << 20;

/// Index of the kernel's count of additions to the target set in `TARGET_SET_EPOCH`.
pub const TARGET_SET_EPOCH_KERNEL: u32 = 0;
/// Index of the loader's count of additions to the target set in `TARGET_SET_EPOCH`.
pub const TARGET_SET_EPOCH_LOADER: u32 = 1;

/// Per CPU: the last two tasks the syscall path looked up in the target set (see
/// `fij-ebpf/src/maps.rs`). Two, because two tasks taking turns on a CPU (a client and its
/// server, the ends of a pipe) are the common case: with one slot, each of their syscalls after
/// a context switch would look the task up again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeenTasks {
    pub slots: [SeenTask; 2],
    /// The slot the next lookup overwrites (0 or 1): they take turns.
    pub next_victim: u32,
    pub _pad: u32,
}

/// One task the syscall path looked up in the target set: by the address of its user
/// registers, the target-set epoch of that lookup and what it found.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeenTask {
    pub regs: u64,
    pub epoch: u64,
    pub tgid: u32,
    pub tid: u32,
    /// Non-zero when the task belongs to a target process: then `process` is its entry.
    pub is_target: u32,
    pub _pad: u32,
    pub process: TargetProcess,
}

/// Value of the target set, keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetProcess {
    /// Index of the scenario's `[[target]]` this process belongs to.
    pub target_idx: u32,
    /// Which instance of that target (`instances = N`): descendants inherit it.
    pub instance: u32,
    /// Kernel time at which this process joined the set. Per-process counters carry it, so a
    /// counter left by a dead process is never reused by a later process with the same pid.
    pub generation: u64,
    /// The process's row of per-process hit counters in `SLOT_COUNTERS`, plus one; 0: it has
    /// none (no free row when it joined), and its counters are in the `PROCESS_COUNTERS` hash.
    /// Set by whoever adds the process to the set (the kernel's `add_target`, the loader's),
    /// freed by the exit hook.
    pub counter_slot: u32,
    pub _pad: u32,
}

/// Rows of per-process counters (`SLOT_COUNTERS`) for a campaign of `faults` faults: as many
/// counters as the `PROCESS_COUNTERS` hash holds, so the two together never take more than
/// twice the hash's memory. A process without a row falls back to the hash.
pub const fn counter_slots(faults: u32) -> u32 {
    if faults == 0 {
        return 0;
    }
    let slots = MAX_PROCESS_COUNTERS / faults;
    if slots < MAX_TARGET_PROCESSES {
        slots
    } else {
        MAX_TARGET_PROCESSES
    }
}

/// Of `slots` counter rows, those the loader hands out itself (1..=this): it cannot take a row
/// from the kernel's allocator atomically, so each side allocates from its own range; rows that
/// exited processes freed are shared through the `FREE_COUNTER_SLOTS` queue, which both pop.
pub const fn loader_counter_slots(slots: u32) -> u32 {
    let half = slots / 2;
    if half < 1024 { half } else { 1024 }
}

/// Key of the hook table: which faults watch this hook of this target.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HookKey {
    pub target_idx: u32,
    /// Which hook: a syscall number (the raw `sys_enter` id), `HOOK_TRACEPOINT | event id`, or
    /// `HOOK_PROBE | probe index`.
    pub hook: u32,
}

/// Syscall numbers the syscall hook table has a slot for (a target's row in `SYSCALL_HOOKS`):
/// every native syscall of x86-64 and arm64 is below it. The compile stage refuses others.
pub const SYSCALL_SLOTS: u32 = 1024;

/// Hook ids of tracepoint triggers: `HOOK_TRACEPOINT | slot`, one program slot per distinct
/// tracepoint of a scenario.
pub const HOOK_TRACEPOINT: u32 = 0x1_0000;
/// Distinct tracepoints one scenario may use (program slots `fij_tracepoint_0..8`).
pub const MAX_TRACEPOINTS: usize = 8;
/// Hook ids of uprobe/uretprobe/kprobe/kretprobe triggers: the probe's index (its attach cookie
/// for uprobes, `KPROBE_HOOKS`/`KRETPROBE_HOOKS[function address]` for kprobes/kretprobes).
pub const HOOK_PROBE: u32 = 0x2_0000;
/// Hook ids of the cgroup-v2 socket hooks that fail a call (`action = "error"`):
/// `HOOK_ERRNO | ERRNO_HOOK_*`. Distinct from the syscall's own id, so an `error` fault on
/// `connect` is evaluated by the cgroup hook only, never by `sys_enter` too.
pub const HOOK_ERRNO: u32 = 0x4_0000;
/// `connect(2)` of an AF_INET/AF_INET6 socket (cgroup `connect4`/`connect6`).
pub const ERRNO_HOOK_CONNECT: u32 = 0;
/// `bind(2)` of an AF_INET/AF_INET6 socket (cgroup `bind4`/`bind6`).
pub const ERRNO_HOOK_BIND: u32 = 1;
/// A UDP datagram sent with an explicit address: `sendto(2)`, `sendmsg(2)`, each message of
/// `sendmmsg(2)` (cgroup `sendmsg4`/`sendmsg6`).
pub const ERRNO_HOOK_UDP_SEND: u32 = 2;
/// `getsockopt(2)` (cgroup `getsockopt`, which runs after the kernel's own getsockopt).
pub const ERRNO_HOOK_GETSOCKOPT: u32 = 3;
/// `setsockopt(2)` (cgroup `setsockopt`, before the kernel's).
pub const ERRNO_HOOK_SETSOCKOPT: u32 = 4;
/// `socket(2)` of AF_INET/AF_INET6 (cgroup `sock_create`).
pub const ERRNO_HOOK_SOCKET: u32 = 5;
/// Hook ids of the BPF LSM programs that fail a call (`action = "error"` of adopted or selected
/// targets): `HOOK_LSM | syscall nr`, the syscall the LSM hook runs in (read from the task's
/// user registers), so a fault on `write` counts the writes, not the `writev`s that pass the
/// same `file_permission` hook.
pub const HOOK_LSM: u32 = 0x8_0000;

/// Value of the hook table: the fault ids (indices into the rule array) to evaluate, in order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookFaults {
    pub len: u32,
    pub fault_ids: [u32; MAX_FAULTS_PER_HOOK],
}

/// `FaultRule::flags`: hits are counted per target (shared by all its processes), not per process.
pub const RULE_PER_TARGET: u32 = 1 << 0;
/// `FaultRule::flags`: only the target instances in `SELECTED` take part (`select`).
pub const RULE_SELECT: u32 = 1 << 3;
/// `FaultRule::flags`: only calls whose sockaddr argument (`FaultRule::port_arg`) names
/// `FaultRule::port` are hits (`trigger = { syscall = "connect", port = N }`).
pub const RULE_PORT: u32 = 1 << 4;
/// `FaultRule::flags`: an eligible hit fires only when its draw passes `probability`.
pub const RULE_PROBABILITY: u32 = 1 << 2;
/// `FaultRule::flags`: the action is `crash`: before the signal, the victim is marked crashed so
/// that every socket it releases while dying is silenced (see [`SilenceKey`]).
pub const RULE_CRASH: u32 = 1 << 1;
/// `FaultRule::flags`: the action is `error`: nothing is signalled; the hook that evaluated the
/// rule fails the call with `FaultRule::errno` (the cgroup hooks, `bpf_set_retval`).
pub const RULE_ERROR: u32 = 1 << 5;

/// One fault's firing conditions, all combined with AND. Zero means "not set" for
/// `nth`, `every` and `after_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FaultRule {
    /// Fire on exactly this hit (1-based); with `every`, the first of the series.
    pub nth: u64,
    /// Fire every this many hits (`nth` + k·`every` when both are set).
    pub every: u64,
    /// Only hits at least this long after the campaign start are counted.
    pub after_ns: u64,
    /// At most this many injections for this fault over the whole campaign.
    pub count: u64,
    /// With `RULE_PROBABILITY`: the threshold a hit's draw must pass
    /// (`random::fires_with`; `random::probability_threshold(p)` on the loader's side).
    pub probability: u64,
    /// With `RULE_PROBABILITY`: the stream of the fault's hit draws (`random::hit_draw`),
    /// chosen by the compile stage (docs/determinism.md).
    pub hit_stream: u64,
    /// Signal sent on fire (0: none, the event alone tells the loader to act).
    pub signal: u32,
    pub flags: u32,
    /// With `RULE_PORT`: the port (host order), and which syscall argument holds the sockaddr
    /// (2 or 5).
    pub port: u32,
    pub port_arg: u32,
    /// With `RULE_ERROR`: the errno (positive) the failed call returns.
    pub errno: u32,
    pub _pad: u32,
}

impl FaultRule {
    /// Whether hit number `hit` (1-based, among counted hits) is one the rule fires on.
    /// Shared by the kernel and by `fij plan`, so both agree by construction.
    #[inline(always)]
    pub fn fires_on(&self, hit: u64) -> bool {
        match (self.nth, self.every) {
            (0, 0) => true,
            (n, 0) => hit == n,
            (0, e) => hit.is_multiple_of(e),
            (n, e) => hit >= n && (hit - n).is_multiple_of(e),
        }
    }

    /// Whether counted hit `hit` fires, before `count`: `nth`/`every`, then `probability`
    /// with the hit's seeded draw (`draw` is only called when the rule has one). Returns the
    /// draw that decided (0 without probability). The one decision of the kernel's programs
    /// and of the seccomp supervisor in userspace, so both count and draw alike.
    #[inline(always)]
    pub fn decide(&self, hit: u64, draw: impl FnOnce() -> u64) -> Option<u64> {
        if !self.fires_on(hit) {
            return None;
        }
        if self.flags & RULE_PROBABILITY == 0 {
            return Some(0);
        }
        let draw = draw();
        random::fires_with(draw, self.probability).then_some(draw)
    }
}

/// Hit and injection counters of one fault (the per-target counter lives here too).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FaultCounters {
    /// Counted hits, used when the rule is `per = "target"`.
    pub target_hits: u64,
    /// Injections attempted so far (bounded by `FaultRule::count`).
    pub injections: u64,
    /// Hits not counted because the per-process counter table was full.
    pub uncounted: u64,
}

/// Key of the set of target instances a fault selected (`select`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SelectKey {
    pub fault_id: u32,
    pub instance: u32,
}

/// Key of the per-process hit counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessCounterKey {
    pub fault_id: u32,
    pub tgid: u32,
}

/// Per-process hit counter; only valid while `generation` matches the process's entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProcessCounter {
    pub generation: u64,
    pub hits: u64,
}

/// Value of the last-injection set, keyed by tgid: the hit a per-process hit trigger last fired
/// on in this process, so that its exit can tell how many hits of that fault came after it (a
/// kill that landed late shows as hits after it). Deleted at exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InjectedMark {
    pub fault_id: u32,
    pub _pad: u32,
    pub hit: u64,
}

/// Capacity of the set of processes fij stopped (`StopMark`).
pub const MAX_STOPPED: u32 = 4096;

/// SIGSTOP, whose injections the kernel records in `STOPPED` (x86-64 and arm64 alike).
pub const SIGSTOP: u32 = 19;

/// Value of the set of processes an injection stopped, keyed by tgid: written in kernel before
/// the SIGSTOP is sent, deleted when the process exits. fij's guardian resumes every process in
/// it that is still the same process (same start time) when fij dies without resuming them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StopMark {
    pub fault_id: u32,
    pub _pad: u32,
    /// `task_struct::start_boottime` of the stopped process (ns), 0 when unknown.
    pub start_boottime_ns: u64,
}

/// Capacity of the set of crashed processes and of silenced socket tuples.
pub const MAX_CRASHED: u32 = 1024;
pub const MAX_SILENCED: u32 = 65536;
/// Capacity of the set of silent addresses (a crashed node's `addresses`).
pub const MAX_SILENT_ADDRESSES: u32 = 256;

/// Value of the crashed-process set, keyed by tgid: set in kernel when a `crash` fires, before
/// the signal, and removed by the loader once the process is a zombie (its sockets are released).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CrashMark {
    pub fault_id: u32,
    pub target_idx: u32,
    pub ktime_ns: u64,
}

/// A socket tuple that must stay silent: no packet matching it passes fij's tc programs, in
/// either direction. Addresses are 16-byte IPv6 form (IPv4 as `::ffff:a.b.c.d`), in network
/// byte order; ports in host byte order. An all-zero `remote_*` (listening or unconnected
/// sockets) and an all-zero `local_addr` (bound to any address) are wildcards.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SilenceKey {
    /// IPPROTO_TCP (6) or IPPROTO_UDP (17).
    pub protocol: u8,
    pub _pad: u8,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad2: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// A bound UDP socket, by socket cookie: recorded at bind (where its address is readable) so
/// that its release — where it is not — can still silence it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BoundUdp {
    pub local_addr: [u8; 16],
    pub local_port: u16,
    pub _pad: [u8; 6],
}

/// Why a tuple is silent: which crash, of which process, since when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SilenceEntry {
    pub tgid: u32,
    pub fault_id: u32,
    pub ktime_ns: u64,
}

/// Index of campaign-wide settings in the `CONFIG` array map.
pub const CONFIG_START_NS: u32 = 0;
/// Non-zero while injecting is allowed; userspace clears it to stop injecting before detaching.
pub const CONFIG_ARMED: u32 = 1;
/// Non-zero while any tuple is silenced: the tc program skips parsing while it is 0.
pub const CONFIG_SILENCED: u32 = 2;
/// The campaign seed (key of every in-kernel draw, see `random`).
pub const CONFIG_SEED: u32 = 3;
/// Non-zero while a time-triggered fault is due (`DUE` not empty): lets the syscall hook skip
/// the `DUE` lookup otherwise.
pub const CONFIG_DUE: u32 = 4;
/// `SELECTOR_*` bits of the selector targets a scenario has (`comm`, `exe`, `uid`, `cgroup`):
/// the exec and fork hooks skip matching while it is 0.
pub const CONFIG_SELECTORS: u32 = 5;
/// Number of faults (rules) of the campaign: the exit hook deletes the exiting process's
/// per-process counters of faults `0..CONFIG_FAULTS`.
pub const CONFIG_FAULTS: u32 = 6;
/// Non-zero while any address is silent (a node crash, `SILENT_ADDRESSES` not empty): the tc
/// programs skip the address lookups while it is 0.
pub const CONFIG_SILENT_ADDRESSES: u32 = 7;
/// Rows of `SLOT_COUNTERS` (see [`counter_slots`]): the kernel allocates rows up to it.
pub const CONFIG_COUNTER_SLOTS: u32 = 8;
/// The next row the kernel's `add_target` takes if no freed row is queued (it starts after the
/// loader's range, [`loader_counter_slots`]); moved on atomically.
pub const CONFIG_NEXT_COUNTER_SLOT: u32 = 9;
pub const CONFIG_LEN: u32 = 10;

/// Selector kinds, as `CONFIG_SELECTORS` bits and as the `detail` of `EVENT_JOINED`.
pub const SELECTOR_COMM: u64 = 1 << 0;
pub const SELECTOR_EXE: u64 = 1 << 1;
pub const SELECTOR_UID: u64 = 1 << 2;
pub const SELECTOR_CGROUP: u64 = 1 << 3;
/// Capacity of each selector table (`comm`, `exe`, `uid`, `cgroup`): targets of one kind.
pub const MAX_SELECTORS_PER_KIND: u32 = 64;
/// Capacity of the kprobe table (function address → probe index): distinct kprobes.
pub const MAX_KPROBES: u32 = 256;
/// Capacity of the `select` table: (fault, instance) pairs that take part in a fault.
pub const MAX_SELECTIONS: u32 = MAX_FAULTS * 4;
/// Bytes of an `exe` selector key: the executable's path, zero-padded.
pub const EXE_KEY_LEN: usize = 128;
/// Bytes of a `comm` selector key (TASK_COMM_LEN), zero-padded.
pub const COMM_KEY_LEN: usize = 16;

/// Capacity of the set of instance root processes whose time-triggered fault is due.
pub const MAX_DUE: u32 = 4096;

/// Layout facts of the running kernel, found by the loader (BTF, tracefs formats) and handed
/// to the programs as a read-only global, since Rust eBPF has no CO-RE relocations.
/// `u32::MAX` marks an offset the loader could not find; the programs then do without it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// `struct task_struct` member offsets.
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_flags: u32,
    pub task_exit_code: u32,
    /// `task_struct::start_boottime` (u64 ns; /proc/PID/stat's start time is derived from it).
    pub task_start_boottime: u32,
    /// Offset of `group_dead` in the `sched/sched_process_exit` record.
    pub exit_group_dead: u32,
    /// Offset of the `filename` `__data_loc` in the `sched/sched_process_exec` record.
    pub exec_filename: u32,
    /// Offsets in `struct pt_regs` of the syscall arguments 2 and 5 (x86_64: `si`, `r8`), where
    /// connect/bind and sendto pass their sockaddr (the `port` filter).
    pub regs_arg2: u32,
    pub regs_arg5: u32,
    /// Offset in `struct pt_regs` of the syscall number of the current call (x86_64:
    /// `orig_ax`): the BPF LSM hooks fail only calls of the syscall a fault names.
    pub regs_syscall_nr: u32,
    /// Offsets in the `sock/inet_sock_set_state` record (all must be known for `crash`).
    pub tcp_oldstate: u32,
    pub tcp_sport: u32,
    pub tcp_dport: u32,
    pub tcp_protocol: u32,
    pub tcp_saddr_v6: u32,
    pub tcp_daddr_v6: u32,
}

/// `task_struct::flags` bit of kernel threads.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// `Event::result` when fij's own in-kernel check refused to signal (pid 1, kernel thread, fij or
/// its ancestor). Outside the errno range, so it never reads as a `bpf_send_signal` error.
pub const SIGNAL_REFUSED: i32 = -4096;

/// `Event::result` of an injection event that reports, once per fault, a hit that could not be
/// counted: the per-process counter table (`MAX_PROCESS_COUNTERS`) was full. Nothing was sent;
/// `Event::hit` is 0.
pub const COUNTER_TABLE_FULL: i32 = -4097;

pub const EVENT_INJECTION: u32 = 1;
pub const EVENT_EXIT: u32 = 2;
pub const EVENT_FORK: u32 = 3;
/// A socket of a crashed process was silenced (`detail` = protocol << 32 | local_port << 16 |
/// remote_port).
pub const EVENT_SILENCED: u32 = 4;
/// A process joined the target set by matching a selector target (`detail` = `SELECTOR_*`).
pub const EVENT_JOINED: u32 = 5;

/// Fires a fault on a process: the one decision record of an injection, for both places that
/// fire — the kernel in its victim's context (`fij-ebpf`'s `decide::fire`) and the loader for
/// a time-triggered victim that slept through its due time. `event` comes filled in but for
/// `signal`, `errno` and `result`, which this sets. A protected process (`may_signal` false: pid 1, a
/// kernel thread, fij or its ancestor) is refused: nothing is marked or sent. A `crash` marks
/// the process before the signal, so the sockets it releases while dying are silenced. A rule
/// without a signal (`partition`) sends nothing. The result is the send's (0 = queued).
#[inline(always)]
pub fn fire(
    rule: &FaultRule,
    event: &mut Event,
    may_signal: bool,
    mark_crashed: impl FnOnce(&CrashMark),
    send_signal: impl FnOnce(u32) -> i32,
) {
    event.kind = EVENT_INJECTION;
    event.signal = rule.signal;
    if rule.flags & RULE_ERROR != 0 {
        event.errno = rule.errno;
    }
    event.result = if !may_signal {
        SIGNAL_REFUSED
    } else if rule.signal == 0 {
        0
    } else {
        if rule.flags & RULE_CRASH != 0 {
            mark_crashed(&CrashMark {
                fault_id: event.fault_id,
                target_idx: event.target_idx,
                ktime_ns: event.ktime_ns,
            });
        }
        send_signal(rule.signal)
    };
}

/// A record in the event ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// `EVENT_*`.
    pub kind: u32,
    /// Fault that fired (injection events).
    pub fault_id: u32,
    /// `bpf_ktime_get_ns()` when the event happened.
    pub ktime_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    /// Hit number that fired (injection); for an exit after an injection by a per-process hit
    /// trigger, the process's hits of that fault (`fault_id`) at its exit; 0 otherwise.
    pub hit: u64,
    /// Syscall number of the hit (injection); the new process's pid (fork).
    pub detail: u64,
    /// Signal sent (injection).
    pub signal: u32,
    /// Return value of `bpf_send_signal` (injection, 0 = queued); `exit_code` of the task (exit).
    pub result: i32,
    /// Index of the target the process belongs to.
    pub target_idx: u32,
    /// Which instance of that target.
    pub instance: u32,
    /// The draw that decided a probabilistic injection (0 when the rule has no probability);
    /// for an exit whose `hit` is set, the hit the last injection fired on.
    pub draw: u64,
    /// The errno a failed call returned (injection of an `error` fault), 0 otherwise.
    pub errno: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C) plain data without padding holes that matter to the kernel.
    unsafe impl aya::Pod for TargetProcess {}
    unsafe impl aya::Pod for HookKey {}
    unsafe impl aya::Pod for HookFaults {}
    unsafe impl aya::Pod for FaultRule {}
    unsafe impl aya::Pod for FaultCounters {}
    unsafe impl aya::Pod for ProcessCounterKey {}
    unsafe impl aya::Pod for ProcessCounter {}
    unsafe impl aya::Pod for KernelLayout {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for CrashMark {}
    unsafe impl aya::Pod for SilenceKey {}
    unsafe impl aya::Pod for SilenceEntry {}
    unsafe impl aya::Pod for BoundUdp {}
    unsafe impl aya::Pod for SelectKey {}
    unsafe impl aya::Pod for StopMark {}
    unsafe impl aya::Pod for InjectedMark {}
    unsafe impl aya::Pod for SeenTask {}
    unsafe impl aya::Pod for SeenTasks {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(nth: u64, every: u64) -> FaultRule {
        FaultRule {
            nth,
            every,
            ..Default::default()
        }
    }

    #[test]
    fn nth_alone_fires_once() {
        let r = rule(5, 0);
        let fired: [bool; 8] = core::array::from_fn(|i| r.fires_on(i as u64 + 1));
        assert_eq!(
            fired,
            [false, false, false, false, true, false, false, false]
        );
    }

    #[test]
    fn every_alone_fires_on_multiples() {
        let r = rule(0, 3);
        let fired: [bool; 7] = core::array::from_fn(|i| r.fires_on(i as u64 + 1));
        assert_eq!(fired, [false, false, true, false, false, true, false]);
    }

    #[test]
    fn nth_and_every_is_strace_first_plus_step() {
        let r = rule(2, 3);
        let fired: [bool; 9] = core::array::from_fn(|i| r.fires_on(i as u64 + 1));
        assert_eq!(
            fired,
            [false, true, false, false, true, false, false, true, false]
        );
    }

    #[test]
    fn no_condition_fires_on_every_hit() {
        assert!(rule(0, 0).fires_on(1) && rule(0, 0).fires_on(17));
    }
}
