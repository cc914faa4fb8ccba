//! What each action does after the kernel (or fij) fired it, in one place: `partition` silences
//! the process's tuples and heals after its `duration`; `crash` (silenced in kernel) recovers
//! after `recover_after`, its orphaned sockets destroyed first; `stop` resumes after
//! `resume_after`; `kill` and `signal` need nothing. Also each action's end at the campaign's
//! end, and the userspace fire path for a time-triggered victim that sleeps.
//!
//! Adding an action: the model (`scenario/model.rs`), the parser (`scenario/parse.rs`), its
//! rule in `compile.rs` if the kernel treats it specially, and this module.
use anyhow::Result;
use fij_common::{Event, SilenceEntry, TargetProcess, log::monotonic_ns};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::{
    campaign::{Campaign, Step},
    events::FiredBy,
    kernel::Kernel,
    log::Record,
    node_faults,
    scenario::Action,
    sockets, targets,
};

/// When a follow-up without a time of its own falls due: never before the campaign's end.
const UNTIL_THE_END: std::time::Duration = std::time::Duration::from_secs(u32::MAX as u64);

/// An action's follow-up, due some time after its injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowUp {
    /// End of a crash's silence (`recover_after`).
    Recover,
    /// End of a partition (its `duration`).
    Heal,
    /// SIGCONT for a stopped process (`resume_after`, or the campaign's end).
    Resume,
}

impl Campaign<'_> {
    /// What a delivered injection sets in motion, by action.
    pub(crate) fn after_injection(&mut self, kernel: &mut Kernel, e: &Event) -> Result<()> {
        let fault = &self.scenario.faults[e.fault_id as usize];
        let at = self.instant_of(e.ktime_ns);
        match &fault.action {
            Action::Partition { duration, ports } => {
                let keys = sockets::process_sockets(e.tgid, ports).unwrap_or_else(|err| {
                    warn!(pid = e.tgid, "partition: cannot read its sockets: {err:#}");
                    Vec::new()
                });
                let entry = SilenceEntry {
                    tgid: e.tgid,
                    fault_id: e.fault_id,
                    ktime_ns: e.ktime_ns,
                };
                kernel.silence(&keys, entry)?;
                info!(pid = e.tgid, tuples = keys.len(), "partitioned");
                // The record's time is when the silence is in place, not the hit's (that is the
                // injection's): the difference is how long packets still passed.
                self.log.write(&Record::Partitioned {
                    t_ns: self.t_ns(),
                    pid: e.tgid,
                    fault: fault.name.clone(),
                    tuples: keys.len(),
                })?;
                if let Some(d) = duration {
                    self.follow_up_at(at + *d, FollowUp::Heal, e.tgid);
                }
            }
            Action::Crash {
                recover_after: Some(d),
            } => self.follow_up_at(at + *d, FollowUp::Recover, e.tgid),
            // Without resume_after the process stays stopped until the campaign ends.
            Action::Stop { resume_after } => {
                let at = resume_after.map_or(at + UNTIL_THE_END, |d| at + d);
                self.follow_up_at(at, FollowUp::Resume, e.tgid)
            }
            Action::Crash {
                recover_after: None,
            }
            | Action::Kill
            | Action::Signal(_)
            // The hook failed the call; nothing follows.
            | Action::Error { .. } => {}
        }
        Ok(())
    }

    fn follow_up_at(&mut self, at: Instant, follow_up: FollowUp, pid: u32) {
        self.timers.schedule(at, Step::FollowUp(follow_up), pid);
    }

    /// Carries out a follow-up that fell due.
    pub(crate) fn follow_up(
        &mut self,
        kernel: &mut Kernel,
        follow_up: FollowUp,
        pid: u32,
    ) -> Result<()> {
        match follow_up {
            FollowUp::Recover => {
                // The host comes back with no state: its orphaned sockets go before the silence.
                sockets::destroy_orphans(&kernel.silenced_of(pid))?;
                let tuples = kernel.recover(pid)?;
                info!(
                    pid,
                    tuples, "recovered: the crashed process's tuples speak again"
                );
                self.log.write(&Record::Recovered {
                    t_ns: self.t_ns(),
                    pid,
                    tuples,
                })
            }
            FollowUp::Heal => {
                let tuples = kernel.recover(pid)?;
                info!(pid, tuples, "partition healed");
                self.log.write(&Record::Healed {
                    t_ns: self.t_ns(),
                    pid,
                    tuples,
                })
            }
            FollowUp::Resume => {
                // Only a process that is still a target: never a recycled pid.
                if kernel.is_target(pid)
                    && targets::signal_target(pid, libc::SIGCONT, self.protected)
                {
                    info!(pid, "resumed (SIGCONT)");
                    self.log.write(&Record::Resumed {
                        t_ns: self.t_ns(),
                        pid,
                    })?;
                }
                Ok(())
            }
        }
    }

    /// The campaign is ending (fij no longer injects): every action still in effect ends now,
    /// with its record, as it would have at its own time — crashed hosts recover (their
    /// orphaned sockets destroyed first, or they would send their FIN once fij's programs are
    /// gone), crashed nodes' addresses speak again, partitions heal, stopped processes resume.
    pub(crate) fn end_actions(&mut self, kernel: &mut Kernel) -> Result<()> {
        // Pending follow-ups are taken over by what is in effect now.
        let pending = self.timers.take_follow_ups();
        let mut ends: Vec<(FollowUp, u32)> = Vec::new();
        for (_, entry) in kernel.silenced() {
            let follow_up = match self.scenario.faults.get(entry.fault_id as usize) {
                Some(f) if matches!(f.action, Action::Crash { .. }) => FollowUp::Recover,
                None if node_faults::is_node_crash(self.scenario, entry.fault_id) => {
                    FollowUp::Recover
                }
                _ => FollowUp::Heal,
            };
            if !ends.contains(&(follow_up, entry.tgid)) {
                ends.push((follow_up, entry.tgid));
            }
        }
        ends.extend(pending.into_iter().filter(|(f, _)| *f == FollowUp::Resume));
        for (follow_up, pid) in ends {
            self.follow_up(kernel, follow_up, pid)?;
        }
        // Crashed nodes last: their processes' orphans are destroyed while they are silent.
        self.end_node_silences(kernel)
    }

    /// A time-triggered fault fired from userspace: its victim slept through the claim grace
    /// and runs no code, so fij fires it, through the same decision record as the kernel's
    /// (`fij_common::fire`: protected check, crash mark before the signal, the event).
    pub(crate) fn fire_from_userspace(
        &mut self,
        kernel: &mut Kernel,
        fault_id: u32,
        pid: u32,
        process: TargetProcess,
    ) -> Result<()> {
        let rule = self.compiled.rules[fault_id as usize];
        let mut event = Event {
            fault_id,
            ktime_ns: monotonic_ns(),
            tgid: pid,
            tid: pid,
            target_idx: process.target_idx,
            instance: process.instance,
            ..Event::default()
        };
        let may_signal = pid > 1 && !self.protected.contains(&pid);
        let mut marked = Ok(());
        fij_common::fire(
            &rule,
            &mut event,
            may_signal,
            |mark| marked = kernel.mark_crashed(pid, *mark),
            |signal| targets::signal_target_result(pid, signal as i32, self.protected),
        );
        marked?;
        self.injection(kernel, &event, FiredBy::Fij)
    }
}
