//! Time triggers at run time: each selected instance's due time (drawn by the compile stage)
//! becomes a timer; when it falls due, fij marks the instance's root process due and its next
//! syscall or CPU tick fires it in its own context (the kernel "claims" it). A victim that
//! sleeps through a short grace runs no code, so fij claims and fires it itself.
use std::time::Duration;

use anyhow::Result;
use tracing::info;

use crate::{
    campaign::{ArmedInstance, Campaign, Step as TimerStep},
    kernel::Kernel,
};

/// How long a due time-triggered fault waits for its victim to claim it in kernel (next
/// syscall, or next 1 ms CPU tick) before fij fires it itself: the victim is asleep then.
const CLAIM_GRACE: Duration = Duration::from_millis(3);
/// How soon a due fault tries again while another fault is still due for the same process.
const DUE_RETRY: Duration = Duration::from_millis(1);

/// A time trigger's steps for one root process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The fault falls due: mark the process due in kernel.
    Due { fault_id: u32 },
    /// The claim grace is over: fire the fault from userspace if the victim did not claim it.
    Claim { fault_id: u32 },
}

impl Campaign<'_> {
    /// A timer for each time-triggered fault's due time on each instance it selects.
    pub(crate) fn schedule_time_faults(&mut self, armed: &[ArmedInstance]) {
        let compiled = self.compiled;
        for due in &compiled.due {
            let root = armed
                .iter()
                .find(|a| a.target_idx == due.target_idx as usize && a.instance == due.instance);
            let Some(root) = root else { continue };
            let fault = &self.scenario.faults[due.fault_id as usize];
            self.due_ktime.insert(
                (due.fault_id, root.pid),
                self.start_ns + due.after.as_nanos() as u64,
            );
            self.timers.schedule(
                self.start + due.after,
                TimerStep::TimeTrigger(Step::Due {
                    fault_id: due.fault_id,
                }),
                root.pid,
            );
            info!(fault = %fault.name, instance = due.instance, pid = root.pid, "due {:.3} s after the start", due.after.as_secs_f64());
        }
    }

    /// Carries out a time trigger's step that fell due.
    pub(crate) fn time_trigger(&mut self, kernel: &mut Kernel, step: Step, pid: u32) -> Result<()> {
        match step {
            Step::Due { fault_id } => {
                let due_ns = self.due_ktime.get(&(fault_id, pid)).copied().unwrap_or(0);
                let earlier_pending = self
                    .due_ktime
                    .iter()
                    .any(|(key, &other)| other < due_ns && !self.time_faults_done.contains(key));
                if !kernel.is_target(pid) {
                    info!(pid, "due fault not injected: the instance already exited");
                    self.time_faults_done.insert((fault_id, pid));
                } else if kernel.is_due(pid) || earlier_pending {
                    // One due fault per process at a time, and none before every earlier-due one
                    // has fired (claimed in kernel or fired by fij): when several are overdue at
                    // once (fij woke late on a loaded or slow machine), they fire in the order
                    // of their due times, the plan's, not in the order their victims run.
                    self.timers.schedule(
                        tokio::time::Instant::now() + DUE_RETRY,
                        TimerStep::TimeTrigger(step),
                        pid,
                    );
                } else {
                    kernel.set_due(pid, fault_id)?;
                    self.timers.schedule(
                        tokio::time::Instant::now() + CLAIM_GRACE,
                        TimerStep::TimeTrigger(Step::Claim { fault_id }),
                        pid,
                    );
                }
                Ok(())
            }
            Step::Claim { fault_id } => {
                self.time_faults_done.insert((fault_id, pid));
                if !kernel.claim_due(pid)? {
                    return Ok(()); // claimed in kernel: its injection event is on its way
                }
                match kernel.target_process(pid) {
                    Some(process) => self.fire_from_userspace(kernel, fault_id, pid, process),
                    None => {
                        info!(pid, "due fault not injected: the instance exited meanwhile");
                        Ok(())
                    }
                }
            }
        }
    }
}
