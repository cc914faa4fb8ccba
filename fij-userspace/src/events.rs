//! Kernel events → log records (and the human-readable lines on stderr). An injection's
//! action-specific consequences are [`crate::actions`]'; this module only says what happened.
use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use fij_common::{
    EVENT_EXIT, EVENT_FORK, EVENT_INJECTION, EVENT_JOINED, EVENT_SILENCED, Event, SIGNAL_REFUSED,
};
use tracing::{info, warn};

use crate::{
    campaign::Campaign,
    kernel::Kernel,
    log::Record,
    scenario::{Action, Trigger},
    signals,
    targets::{self},
};

/// Who fired an injection: the kernel in the victim's context, or fij for a time-triggered
/// victim that slept through its due time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FiredBy {
    Kernel,
    Fij,
    /// fij's answer to a seccomp notification (`action = "error"` on a spawned target).
    Seccomp,
}

impl FiredBy {
    fn as_str(self) -> &'static str {
        match self {
            FiredBy::Kernel => "kernel",
            FiredBy::Fij => "fij",
            FiredBy::Seccomp => "seccomp",
        }
    }
}

impl Campaign<'_> {
    /// Handles every event waiting in the ring.
    pub(crate) fn drain(&mut self, kernel: &mut Kernel, ring: &mut RingBuf<MapData>) -> Result<()> {
        while let Some(item) = ring.next() {
            if item.len() < size_of::<Event>() {
                warn!(len = item.len(), "short event record ignored");
                continue;
            }
            // SAFETY: the kernel wrote an `Event` (same repr(C) definition, same build).
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            self.handle(kernel, &event)?;
        }
        Ok(())
    }

    fn handle(&mut self, kernel: &mut Kernel, e: &Event) -> Result<()> {
        let t_ns = e.ktime_ns.saturating_sub(self.start_ns);
        let target = self.scenario.target_name(e.target_idx).to_string();
        match e.kind {
            EVENT_INJECTION => self.injection(kernel, e, FiredBy::Kernel),
            EVENT_EXIT => {
                self.tally.exits += 1;
                // Its seccomp counters go, as the kernel's did at the exit (not those of a
                // later process with its pid, counted since).
                self.seccomp
                    .lock()
                    .expect("the supervisor lock")
                    .exited(e.tgid);
                let (code, signal) = if e.result < 0 {
                    (None, None)
                } else {
                    targets::describe_status(e.result)
                };
                let signal = signal.map(signals::name);
                info!(
                    target,
                    pid = e.tgid,
                    ?code,
                    signal = signal.as_deref().unwrap_or("-"),
                    "exited"
                );
                self.log.write(&Record::Exit {
                    t_ns,
                    ktime_ns: e.ktime_ns,
                    target,
                    pid: e.tgid,
                    code,
                    signal,
                    hits_after_injection: hits_after_injection(self.scenario, e),
                })
            }
            EVENT_SILENCED => {
                let fault = crate::node_faults::fault_name(self.scenario, e.fault_id).to_string();
                let protocol = if e.detail >> 32 == 6 { "tcp" } else { "udp" };
                let (local_port, remote_port) = ((e.detail >> 16) as u16, e.detail as u16);
                info!(
                    target,
                    pid = e.tgid,
                    protocol,
                    local_port,
                    remote_port,
                    "silenced"
                );
                self.log.write(&Record::Silenced {
                    t_ns,
                    target,
                    pid: e.tgid,
                    fault,
                    protocol: protocol.to_string(),
                    local_port,
                    remote_port,
                })
            }
            EVENT_JOINED => {
                let by = match e.detail {
                    fij_common::SELECTOR_COMM => "comm",
                    fij_common::SELECTOR_EXE => "exe",
                    fij_common::SELECTOR_UID => "uid",
                    _ => "cgroup",
                };
                info!(target, pid = e.tgid, by, "joined");
                self.log.write(&Record::Joined {
                    t_ns,
                    target,
                    pid: e.tgid,
                    by: by.to_string(),
                })
            }
            EVENT_FORK => {
                info!(target, parent = e.tgid, pid = e.detail, "forked");
                self.log.write(&Record::Fork {
                    t_ns,
                    target,
                    parent_pid: e.tgid,
                    pid: e.detail as u32,
                })
            }
            other => {
                warn!(kind = other, "unknown event kind");
                Ok(())
            }
        }
    }

    /// An injection, fired in kernel or by fij: its action's consequences, then its record.
    pub(crate) fn injection(&mut self, kernel: &mut Kernel, e: &Event, by: FiredBy) -> Result<()> {
        let t_ns = e.ktime_ns.saturating_sub(self.start_ns);
        let fault = &self.scenario.faults[e.fault_id as usize];
        let target = self.scenario.target_name(e.target_idx).to_string();
        let syscall = match &fault.trigger {
            Trigger::Syscall { name, .. } => Some(name.clone()),
            _ => None,
        };
        let due = self.due_ktime.get(&(e.fault_id, e.tgid)).copied();
        let signal = match e.signal {
            0 => "none".to_string(),
            sig => signals::name(sig as i32),
        };
        let errno = match &fault.action {
            Action::Error { returns, .. } => Some(returns.to_string()),
            _ => None,
        };
        // What the injection did, for the stderr line.
        let done = errno
            .as_ref()
            .map_or(signal.clone(), |e| format!("{e} returned"));
        let delivered = e.result == 0;
        let error = (!delivered).then(|| injection_error(e.result));
        if delivered {
            self.after_injection(kernel, e)?;
        }
        let what = match &fault.trigger {
            Trigger::Time(_) => format!("its due time ({})", by.as_str()),
            trigger => format!("{} #{}", trigger.describe(), e.hit),
        };
        self.tally.injections += 1;
        if let Some(error) = &error {
            self.tally.failed_injections += 1;
            warn!(fault = %fault.name, target, pid = e.tgid, "{done} on {what} not done: {error}");
        } else {
            info!(fault = %fault.name, target, pid = e.tgid, tid = e.tid, "{done} on {what}");
        }
        self.log.write(&Record::Injection {
            t_ns,
            ktime_ns: e.ktime_ns,
            fault: fault.name.clone(),
            target,
            pid: e.tgid,
            tid: e.tid,
            instance: e.instance,
            hit: e.hit,
            syscall,
            trigger: fault.trigger.describe(),
            signal,
            errno,
            by: by.as_str().to_string(),
            scheduled_t_ns: due.map(|d| d.saturating_sub(self.start_ns)),
            late_ns: due.map(|d| e.ktime_ns.saturating_sub(d)),
            draw: fault.probability.map(|_| e.draw),
            delivered,
            error,
        })
    }
}

fn injection_error(result: i32) -> String {
    if result == SIGNAL_REFUSED {
        "refused: the process is protected (pid 1, a kernel thread, fij or its ancestor)".into()
    } else if result == fij_common::COUNTER_TABLE_FULL {
        counter_table_full_error()
    } else {
        format!(
            "bpf_send_signal failed: {}",
            std::io::Error::from_raw_os_error(-result)
        )
    }
}

/// For an exit event: how many hits of the fault that last fired on the process (by a
/// per-process hit trigger) it made after that injection; warns when that fault's signal was
/// SIGKILL, which should have ended the process on its hit (a late delivery, issue 18).
fn hits_after_injection(
    scenario: &crate::scenario::Scenario,
    e: &fij_common::Event,
) -> Option<u64> {
    if e.hit == 0 {
        return None;
    }
    let after = e.hit.saturating_sub(e.draw);
    let fault = scenario.faults.get(e.fault_id as usize)?;
    if after > 0 && fault.action.signal() == libc::SIGKILL {
        tracing::warn!(
            fault = %fault.name,
            pid = e.tgid,
            "the SIGKILL of hit {} landed late: the process made {after} more hits before it died",
            e.draw
        );
    }
    Some(after)
}

/// The error of an injection event with result `COUNTER_TABLE_FULL` (sent once per fault).
fn counter_table_full_error() -> String {
    format!(
        "a hit was not counted: the table of per-process hit counters is full ({} live \
         (fault, process) pairs); while it stays full, hits of processes that have no counter \
         yet are not counted (reported once per fault)",
        fij_common::MAX_PROCESS_COUNTERS
    )
}
