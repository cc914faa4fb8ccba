//! Node faults at run time (`[[node_fault]]`, docs/multi-node.md): at the due time the compile
//! stage drew from the seed — the same on every node — each node does its own part. A crashed
//! or killed node fails every target process it runs at once; a crashed node's addresses also
//! go silent (every packet from or to them, whatever process sent it) until it recovers; in a
//! partition each node on either side silences its target processes' connections to the other
//! side's addresses.
//!
//! A node fault's id in crash marks, silences and the log is `faults.len() + i` for the `i`-th
//! `[[node_fault]]`, so kernel marks and follow-ups tell node faults from faults.
use anyhow::Result;
use fij_common::{Event, FaultRule, RULE_CRASH, SilenceEntry, log::monotonic_ns};
use tracing::{info, warn};

use crate::{
    actions::FollowUp,
    campaign::{Campaign, Step as TimerStep},
    compile::NodeDue,
    kernel::Kernel,
    log::Record,
    scenario::{NodeAction, Scenario},
    signals, sockets, targets,
};

/// A node fault's step on this node: `node` (the node the fault fails) fails now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub node_fault_id: u32,
    pub node: usize,
}

/// The id of node fault `node_fault_id` in marks and silences: after every fault's.
pub fn mark_id(scenario: &Scenario, node_fault_id: u32) -> u32 {
    scenario.faults.len() as u32 + node_fault_id
}

/// The name of fault or node fault `id` (as marks carry it), or "?".
pub fn fault_name(scenario: &Scenario, id: u32) -> &str {
    let id = id as usize;
    match scenario.faults.get(id) {
        Some(fault) => &fault.name,
        None => scenario
            .cluster
            .node_faults
            .get(id - scenario.faults.len())
            .map_or("?", |f| f.name.as_str()),
    }
}

/// Whether the silence of mark `id` is a crash's (which recovers, orphans destroyed first).
pub fn is_node_crash(scenario: &Scenario, id: u32) -> bool {
    let Some(i) = (id as usize).checked_sub(scenario.faults.len()) else {
        return false;
    };
    scenario
        .cluster
        .node_faults
        .get(i)
        .is_some_and(|f| matches!(f.action, NodeAction::Crash { .. }))
}

/// An address in the 16-byte form of silence keys and silent addresses (IPv4 as `::ffff:a.b.c.d`).
fn wire_form(ip: &std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// How a node fault reads in logs: `node crash n2 at 5s`.
fn describe(scenario: &Scenario, due: Step) -> String {
    let fault = &scenario.cluster.node_faults[due.node_fault_id as usize];
    format!(
        "node {} {} {}",
        fault.action.name(),
        scenario.cluster.nodes[due.node].name,
        fault.schedule
    )
}

impl Campaign<'_> {
    /// Whether this node takes part when node fault `due` fails its node.
    fn takes_part(&self, due: &NodeDue) -> bool {
        let Some(me) = self.node else { return false };
        let fault = &self.scenario.cluster.node_faults[due.node_fault_id as usize];
        match &fault.action {
            NodeAction::Crash { .. } | NodeAction::Kill => due.node == me,
            NodeAction::Partition { .. } => due.node == me || self.other_side(due).contains(&me),
        }
    }

    /// The nodes a partition cuts `due.node` off from: `from`, else every node it does not fail.
    fn other_side(&self, due: &NodeDue) -> Vec<usize> {
        let fault = &self.scenario.cluster.node_faults[due.node_fault_id as usize];
        let NodeAction::Partition { from, .. } = &fault.action else {
            return Vec::new();
        };
        if !from.is_empty() {
            return from.clone();
        }
        let failed: Vec<usize> = self
            .compiled
            .node_due
            .iter()
            .filter(|d| d.node_fault_id == due.node_fault_id)
            .map(|d| d.node)
            .collect();
        (0..self.scenario.cluster.nodes.len())
            .filter(|n| !failed.contains(n))
            .collect()
    }

    /// A timer for each node fault this node takes part in.
    pub(crate) fn schedule_node_faults(&mut self) {
        let compiled = self.compiled;
        let mine: Vec<&NodeDue> = compiled
            .node_due
            .iter()
            .filter(|d| self.takes_part(d))
            .collect();
        for due in mine {
            let step = Step {
                node_fault_id: due.node_fault_id,
                node: due.node,
            };
            info!(
                "{}: due {:.3} s after the start",
                describe(self.scenario, step),
                due.after.as_secs_f64()
            );
            self.timers
                .schedule(self.start + due.after, TimerStep::NodeFault(step), 0);
        }
    }

    /// Carries out this node's part of a node fault that fell due.
    pub(crate) fn node_fault(&mut self, kernel: &mut Kernel, step: Step) -> Result<()> {
        let fault = &self.scenario.cluster.node_faults[step.node_fault_id as usize];
        let scheduled = self
            .compiled
            .node_due
            .iter()
            .find(|d| d.node_fault_id == step.node_fault_id && d.node == step.node)
            .map_or(0, |d| d.after.as_nanos() as u64);
        match &fault.action {
            NodeAction::Crash { recover_after } => {
                // The addresses first: nothing a dying process or a bystander sends gets out.
                self.silence_node(kernel, step)?;
                let rule = FaultRule {
                    signal: libc::SIGKILL as u32,
                    flags: RULE_CRASH,
                    ..FaultRule::default()
                };
                let pids = self.fail_every_process(kernel, step, &rule, scheduled)?;
                if let Some(d) = recover_after {
                    let at = tokio::time::Instant::now() + *d;
                    for pid in pids {
                        self.timers
                            .schedule(at, TimerStep::FollowUp(FollowUp::Recover), pid);
                    }
                    // After the processes' recoveries (timers due together run in order):
                    // their orphaned sockets are destroyed while the node is still silent.
                    self.timers.schedule(at, TimerStep::NodeRecover(step), 0);
                }
            }
            NodeAction::Kill => {
                let rule = FaultRule {
                    signal: libc::SIGKILL as u32,
                    ..FaultRule::default()
                };
                self.fail_every_process(kernel, step, &rule, scheduled)?;
            }
            NodeAction::Partition { duration, .. } => {
                let me = self.node.expect("only nodes take part");
                let due = NodeDue {
                    node_fault_id: step.node_fault_id,
                    node: step.node,
                    after: std::time::Duration::ZERO,
                };
                let far: Vec<usize> = match step.node == me {
                    true => self.other_side(&due),
                    false => vec![step.node],
                };
                let addresses: Vec<[u8; 16]> = far
                    .iter()
                    .flat_map(|&n| &self.scenario.cluster.nodes[n].addresses)
                    .map(wire_form)
                    .collect();
                let ktime_ns = monotonic_ns();
                for (pid, _) in kernel.target_processes() {
                    let keys: Vec<_> = sockets::process_sockets(pid, &[])
                        .unwrap_or_else(|err| {
                            warn!(pid, "node partition: cannot read its sockets: {err:#}");
                            Vec::new()
                        })
                        .into_iter()
                        .filter(|k| addresses.contains(&k.remote_addr))
                        .collect();
                    let entry = SilenceEntry {
                        tgid: pid,
                        fault_id: mark_id(self.scenario, step.node_fault_id),
                        ktime_ns,
                    };
                    kernel.silence(&keys, entry)?;
                    info!(
                        pid,
                        tuples = keys.len(),
                        "{}",
                        describe(self.scenario, step)
                    );
                    self.log.write(&Record::Partitioned {
                        t_ns: self.t_ns(),
                        pid,
                        fault: fault.name.clone(),
                        tuples: keys.len(),
                    })?;
                    if let Some(d) = duration {
                        self.timers.schedule(
                            tokio::time::Instant::now() + *d,
                            TimerStep::FollowUp(FollowUp::Heal),
                            pid,
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// A node crash's silence: every packet from or to the node's `addresses`, on every
    /// interface fij's silencer is attached to, whatever process sent it (a bystander's, the
    /// kernel's own replies: ping, RST, ARP). Until [`Campaign::node_recover`]; gone with fij's
    /// programs if fij dies.
    fn silence_node(&mut self, kernel: &mut Kernel, step: Step) -> Result<()> {
        let node = &self.scenario.cluster.nodes[step.node];
        if node.addresses.is_empty() {
            return Ok(());
        }
        let wire: Vec<[u8; 16]> = node.addresses.iter().map(wire_form).collect();
        kernel.silence_addresses(&wire, mark_id(self.scenario, step.node_fault_id))?;
        let addresses: Vec<String> = node.addresses.iter().map(|a| a.to_string()).collect();
        info!(node = %node.name, addresses = %addresses.join(","), "node silenced");
        self.log.write(&Record::NodeSilenced {
            t_ns: self.t_ns(),
            node: node.name.clone(),
            fault: self.scenario.cluster.node_faults[step.node_fault_id as usize]
                .name
                .clone(),
            addresses,
        })
    }

    /// A crashed node comes back (`recover_after`, or the campaign's end): its addresses speak
    /// again. Its processes' own silences are lifted by their `Recover` follow-ups.
    pub(crate) fn node_recover(&mut self, kernel: &mut Kernel, step: Step) -> Result<()> {
        let lifted = kernel.lift_addresses(mark_id(self.scenario, step.node_fault_id))?;
        if lifted.is_empty() {
            return Ok(());
        }
        let node = &self.scenario.cluster.nodes[step.node];
        let addresses: Vec<String> = node
            .addresses
            .iter()
            .filter(|a| lifted.contains(&wire_form(a)))
            .map(|a| a.to_string())
            .collect();
        info!(node = %node.name, addresses = %addresses.join(","), "node recovered: its addresses speak again");
        self.log.write(&Record::NodeRecovered {
            t_ns: self.t_ns(),
            node: node.name.clone(),
            fault: self.scenario.cluster.node_faults[step.node_fault_id as usize]
                .name
                .clone(),
            addresses,
        })
    }

    /// The campaign is ending: every node crash still in effect on this node recovers.
    pub(crate) fn end_node_silences(&mut self, kernel: &mut Kernel) -> Result<()> {
        let Some(node) = self.node else {
            return Ok(());
        };
        let mut marks: Vec<u32> = kernel.silent_addresses().iter().map(|(_, m)| *m).collect();
        marks.sort_unstable();
        marks.dedup();
        for mark in marks {
            let Some(node_fault_id) = mark.checked_sub(self.scenario.faults.len() as u32) else {
                continue;
            };
            self.node_recover(
                kernel,
                Step {
                    node_fault_id,
                    node,
                },
            )?;
        }
        Ok(())
    }

    /// Fails every target process of this node with `rule` at once: every crash mark first,
    /// then every signal, so no process of the node outlives the others' marks. Returns the
    /// pids signalled.
    fn fail_every_process(
        &mut self,
        kernel: &mut Kernel,
        step: Step,
        rule: &FaultRule,
        scheduled_t_ns: u64,
    ) -> Result<Vec<u32>> {
        let id = mark_id(self.scenario, step.node_fault_id);
        let processes: Vec<_> = kernel
            .target_processes()
            .into_iter()
            .filter(|(pid, _)| *pid > 1 && !self.protected.contains(pid))
            .collect();
        let ktime_ns = monotonic_ns();
        let mut events: Vec<Event> = processes
            .iter()
            .map(|(pid, process)| Event {
                fault_id: id,
                ktime_ns,
                tgid: *pid,
                tid: *pid,
                target_idx: process.target_idx,
                instance: process.instance,
                ..Event::default()
            })
            .collect();
        if rule.flags & RULE_CRASH != 0 {
            for event in &events {
                kernel.mark_crashed(
                    event.tgid,
                    fij_common::CrashMark {
                        fault_id: id,
                        target_idx: event.target_idx,
                        ktime_ns,
                    },
                )?;
            }
        }
        for event in &mut events {
            let pid = event.tgid;
            fij_common::fire(
                &FaultRule {
                    flags: 0, // marked above
                    ..*rule
                },
                event,
                true,
                |_| {},
                |signal| targets::signal_target_result(pid, signal as i32, self.protected),
            );
        }
        let fault = &self.scenario.cluster.node_faults[step.node_fault_id as usize];
        let trigger = describe(self.scenario, step);
        info!(processes = events.len(), "{trigger}");
        for event in &events {
            let delivered = event.result == 0;
            self.tally.injections += 1;
            if !delivered {
                self.tally.failed_injections += 1;
            }
            self.log.write(&Record::Injection {
                t_ns: ktime_ns.saturating_sub(self.start_ns),
                ktime_ns,
                fault: fault.name.clone(),
                target: self.scenario.target_name(event.target_idx).to_string(),
                pid: event.tgid,
                tid: event.tid,
                instance: event.instance,
                hit: 0,
                syscall: None,
                trigger: trigger.clone(),
                signal: signals::name(rule.signal as i32),
                by: "fij".into(),
                scheduled_t_ns: Some(scheduled_t_ns),
                late_ns: Some(
                    ktime_ns
                        .saturating_sub(self.start_ns)
                        .saturating_sub(scheduled_t_ns),
                ),
                draw: None,
                errno: None,
                delivered,
                error: (!delivered).then(|| "the process was gone".to_string()),
            })?;
        }
        Ok(events.iter().map(|e| e.tgid).collect())
    }
}
