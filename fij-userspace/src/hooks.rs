//! Which hooks a scenario needs, and the hook id each trigger counts under: the hook table the
//! kernel looks faults up in (`HookKey` → fault ids), and the list of things to attach.
use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use fij_common::{HOOK_PROBE, HOOK_TRACEPOINT, HookKey, MAX_TRACEPOINTS};

use crate::scenario::{Probe, Scenario, Trigger};

#[derive(Debug, Default)]
pub struct HookPlan {
    /// (target, hook) → the faults to evaluate there, in scenario order.
    pub table: BTreeMap<HookKey, Vec<u32>>,
    /// Whether any fault has a syscall trigger (then `sys_enter` is attached).
    pub syscalls: bool,
    /// Distinct tracepoints to attach (category, name); tracepoint `i` uses program slot `i`.
    pub tracepoints: Vec<(String, String)>,
    /// Distinct probes to attach; a probe's index here is its hook id's low bits.
    pub probes: Vec<Probe>,
    /// Whether any fault has a time trigger (then each instance's root gets a tick).
    pub timed: bool,
}

pub fn plan_hooks(scenario: &Scenario) -> Result<HookPlan> {
    let mut plan = HookPlan::default();
    for (id, fault) in scenario.faults.iter().enumerate() {
        let hook = match &fault.trigger {
            Trigger::Syscall { nr, .. } => {
                plan.syscalls = true;
                *nr
            }
            Trigger::Tracepoint { category, name } => {
                let tp = (category.clone(), name.clone());
                let slot = match plan.tracepoints.iter().position(|t| *t == tp) {
                    Some(slot) => slot,
                    None => {
                        plan.tracepoints.push(tp);
                        plan.tracepoints.len() - 1
                    }
                };
                ensure!(
                    slot < MAX_TRACEPOINTS,
                    "a scenario may use at most {MAX_TRACEPOINTS} distinct tracepoints"
                );
                HOOK_TRACEPOINT | slot as u32
            }
            Trigger::Probe(probe) => {
                let index = match plan.probes.iter().position(|p| p == probe) {
                    Some(i) => i,
                    None => {
                        plan.probes.push(probe.clone());
                        plan.probes.len() - 1
                    }
                };
                HOOK_PROBE | index as u32
            }
            Trigger::Time(_) => {
                plan.timed = true;
                continue;
            }
        };
        let key = HookKey {
            target_idx: fault.target as u32,
            hook,
        };
        plan.table.entry(key).or_default().push(id as u32);
    }
    Ok(plan)
}
