//! The compile stage: a validated [`Scenario`] and a seed in, a [`CompiledCampaign`] out — everything a backend is given, decided before anything is loaded:
//! the kernel rule of each fault, the hook table, what to attach, which instances each fault
//! selects, and when each time-triggered fault falls due. Every limit a map capacity implies is
//! checked here, as an input error at the position of the key that crosses it.
//!
//! Pure: no aya, no I/O. `fij validate`, `fij plan`, `fij run` and `fij doctor` all go through
//! it, so what one of them accepts the others accept too.
use std::{collections::BTreeMap, path::Path, time::Duration};

use fij_common::{
    FaultRule, HOOK_ERRNO, HOOK_LSM, HOOK_PROBE, HOOK_TRACEPOINT, HookKey, MAX_DUE, MAX_FAULTS,
    MAX_FAULTS_PER_HOOK, MAX_KPROBES, MAX_SELECTIONS, MAX_SELECTORS_PER_KIND, MAX_TARGET_PROCESSES,
    MAX_TRACEPOINTS, RULE_CRASH, RULE_ERROR, RULE_PER_TARGET, RULE_PORT, RULE_PROBABILITY,
    RULE_SELECT, random,
};

use crate::{
    draws, error_paths,
    scenario::{
        Action, Diagnostic, Diagnostics, NodeAction, PORT_SYSCALLS, Per, Probe, ProbeKind, Returns,
        Scenario, Select, Selector, SourcePos, TargetSource, Trigger,
    },
};

/// Everything a backend is given to run a scenario with one seed. Fault id = index of the fault
/// in the scenario (and in `rules`).
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledCampaign {
    pub seed: u64,
    /// The kernel rule of each fault.
    pub rules: Vec<FaultRule>,
    /// (target, hook) → the faults evaluated there, in scenario order.
    pub hooks: BTreeMap<HookKey, Vec<u32>>,
    /// What to attach.
    pub attach: Attachments,
    /// (fault id, instance) of every instance that a fault with `select` lets take part.
    pub selections: Vec<(u32, u32)>,
    /// Each time-triggered fault's due time for each instance it selects, in fault order.
    pub due: Vec<DueTime>,
    /// Each node fault's due time for each node it fails, in node fault order: the same on
    /// every node, from the seed alone (docs/multi-node.md).
    pub node_due: Vec<NodeDue>,
}

/// When a node fault falls due for one node, counted from the campaign start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeDue {
    pub node_fault_id: u32,
    /// Index into `Scenario::cluster.nodes`.
    pub node: usize,
    pub after: Duration,
}

/// The hooks and programs a campaign needs; nothing else is attached.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attachments {
    /// `sys_enter` (some fault has a syscall trigger).
    pub syscalls: bool,
    /// Distinct tracepoints (category, name); tracepoint `i` uses program slot `i` and hook id
    /// `HOOK_TRACEPOINT | i`.
    pub tracepoints: Vec<(String, String)>,
    /// Distinct probes; probe `i` counts under hook id `HOOK_PROBE | i`.
    pub probes: Vec<Probe>,
    /// The exec hook that lets processes join selector targets.
    pub exec: bool,
    /// The crash hooks (socket state, release, task free) that fill the silence table.
    pub crash: bool,
    /// The tc programs that drop silenced tuples (`crash`, `partition`).
    pub silencer: bool,
    /// The task-clock tick on each instance's root process (time triggers).
    pub tick: bool,
    /// The cgroup-v2 hooks that fail calls (`ERRNO_HOOK_*`, ascending; `action = "error"`).
    pub errno_hooks: Vec<u32>,
    /// The BPF LSM hooks that fail calls of adopted and selected targets (kernel names,
    /// ascending; `action = "error"`).
    pub lsm_hooks: Vec<&'static str>,
}

/// When a time-triggered fault falls due for one instance, counted from the campaign start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DueTime {
    pub fault_id: u32,
    pub target_idx: u32,
    pub instance: u32,
    pub after: Duration,
}

impl CompiledCampaign {
    /// The instances (ascending) that fault `fault_id` lets take part.
    pub fn selected(&self, fault_id: u32, scenario: &Scenario) -> Vec<u32> {
        let fault = &scenario.faults[fault_id as usize];
        match fault.select {
            Select::All => (0..scenario.targets[fault.target].source.instances()).collect(),
            _ => self
                .selections
                .iter()
                .filter(|(id, _)| *id == fault_id)
                .map(|(_, instance)| *instance)
                .collect(),
        }
    }
}

/// Compiles `scenario` for a run with `seed`; every limit crossed is reported at its key, as
/// `fij validate` reports the scenario's own errors. (What a single key needs of this machine —
/// a file, a tracepoint, kprobes — the parser checks where it reads the key.)
pub fn compile(scenario: &Scenario, seed: u64) -> Result<CompiledCampaign, Diagnostics> {
    let mut errors = Errors {
        file: &scenario.path,
        found: Vec::new(),
    };
    check_targets(scenario, &mut errors);
    if let Some(node) = scenario.cluster.nodes.get(draws::MAX_NODES) {
        errors.at(
            node.at,
            format!(
                "too many nodes: a scenario may have at most {} (the nodes' hit streams)",
                draws::MAX_NODES
            ),
        );
    }
    if scenario.faults.len() > MAX_FAULTS as usize {
        errors.at(
            scenario.faults[MAX_FAULTS as usize].at,
            format!(
                "too many faults: a scenario may have at most {MAX_FAULTS} (the kernel's rule table)"
            ),
        );
    }
    let (hooks, attach) = hook_table(scenario, &mut errors);
    let selections = selections(scenario, seed, &mut errors);
    let due = due_times(scenario, seed, &mut errors);
    if !errors.found.is_empty() {
        errors.found.sort_by_key(|d| (d.line, d.col));
        return Err(Diagnostics(errors.found));
    }
    Ok(CompiledCampaign {
        seed,
        rules: rules(scenario),
        hooks,
        attach,
        selections,
        due,
        node_due: node_due_times(scenario, seed),
    })
}

/// Each node fault's selected nodes and their due times, drawn from the seed in the node
/// faults' own streams (so adding a node fault changes no other decision).
fn node_due_times(scenario: &Scenario, seed: u64) -> Vec<NodeDue> {
    let mut due = Vec::new();
    for (id, fault) in scenario.cluster.node_faults.iter().enumerate() {
        let picked = draws::selected_nodes(seed, id as u32, fault.select, fault.nodes.len() as u32);
        due.extend(picked.into_iter().map(|candidate| NodeDue {
            node_fault_id: id as u32,
            node: fault.nodes[candidate as usize],
            after: draws::node_due_after(seed, id as u32, candidate, &fault.schedule),
        }));
    }
    due
}

/// The diagnostics found so far, all in one file.
struct Errors<'a> {
    file: &'a Path,
    found: Vec<Diagnostic>,
}

impl Errors<'_> {
    fn at(&mut self, pos: SourcePos, message: String) {
        self.found.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: pos.line,
            col: pos.col,
            message,
        });
    }
}

/// Spawned instances fit the target set; selectors of one kind fit their table.
fn check_targets(scenario: &Scenario, errors: &mut Errors<'_>) {
    let mut instances = 0u64;
    for target in &scenario.targets {
        instances += u64::from(target.source.instances());
        if instances > u64::from(MAX_TARGET_PROCESSES) {
            errors.at(
                target.at,
                format!(
                    "target `{}`: the targets' instances add up to more than {MAX_TARGET_PROCESSES} \
                     processes (the kernel's target set)",
                    target.name
                ),
            );
            break;
        }
    }
    for kind in ["comm", "exe", "uid", "cgroup"] {
        let of_kind = scenario
            .targets
            .iter()
            .filter(|t| matches!(&t.source, TargetSource::Selector(s) if selector_kind(s) == kind));
        if let Some(over) = of_kind.clone().nth(MAX_SELECTORS_PER_KIND as usize) {
            errors.at(
                over.at,
                format!(
                    "target `{}`: at most {MAX_SELECTORS_PER_KIND} targets may select by `{kind}`",
                    over.name
                ),
            );
        }
    }
}

fn selector_kind(selector: &Selector) -> &'static str {
    match selector {
        Selector::Comm(_) => "comm",
        Selector::Exe(_) => "exe",
        Selector::Uid(_) => "uid",
        Selector::Cgroup(_) => "cgroup",
    }
}

/// The hook table and the attach set; a fault that would cross a hook's or a program table's
/// capacity is reported at its `trigger`.
fn hook_table(
    scenario: &Scenario,
    errors: &mut Errors<'_>,
) -> (BTreeMap<HookKey, Vec<u32>>, Attachments) {
    let mut table: BTreeMap<HookKey, Vec<u32>> = BTreeMap::new();
    let mut attach = Attachments::default();
    let mut kprobes = 0;
    for (id, fault) in scenario.faults.iter().enumerate() {
        let hook = match &fault.trigger {
            // A failed call is decided in the cgroup hook that can fail it (the parser refused
            // any other), never at sys_enter too.
            Trigger::Syscall { name, nr, .. } if matches!(fault.action, Action::Error { .. }) => {
                let spawned = matches!(
                    scenario.targets[fault.target].source,
                    TargetSource::Command { .. }
                );
                match error_paths::route(name, spawned) {
                    Some(error_paths::Route::Cgroup(errno_hook)) => {
                        if !attach.errno_hooks.contains(&errno_hook) {
                            attach.errno_hooks.push(errno_hook);
                            attach.errno_hooks.sort_unstable();
                        }
                        HOOK_ERRNO | errno_hook
                    }
                    Some(error_paths::Route::Lsm(lsm_hook)) => {
                        if !attach.lsm_hooks.contains(&lsm_hook) {
                            attach.lsm_hooks.push(lsm_hook);
                            attach.lsm_hooks.sort_unstable();
                        }
                        HOOK_LSM | *nr
                    }
                    // Decided in fij itself (`crate::seccomp`); none other (the parser refused).
                    Some(error_paths::Route::Seccomp) | None => continue,
                }
            }
            Trigger::Syscall { nr, .. } => {
                attach.syscalls = true;
                *nr
            }
            Trigger::Tracepoint { category, name } => {
                let tracepoint = (category.clone(), name.clone());
                let slot = match attach.tracepoints.iter().position(|t| *t == tracepoint) {
                    Some(slot) => slot,
                    None if attach.tracepoints.len() == MAX_TRACEPOINTS => {
                        errors.at(
                            fault.trigger_at,
                            format!(
                                "fault `{}`: a scenario may use at most {MAX_TRACEPOINTS} distinct \
                                 tracepoints (fij's tracepoint program slots); this is the {}th",
                                fault.name,
                                MAX_TRACEPOINTS + 1
                            ),
                        );
                        continue;
                    }
                    None => {
                        attach.tracepoints.push(tracepoint);
                        attach.tracepoints.len() - 1
                    }
                };
                HOOK_TRACEPOINT | slot as u32
            }
            Trigger::Probe(probe) => {
                let kernel_probe = matches!(probe.kind, ProbeKind::Kprobe | ProbeKind::Kretprobe);
                let index = match attach.probes.iter().position(|p| p == probe) {
                    Some(index) => index,
                    None => {
                        if kernel_probe {
                            kprobes += 1;
                            if kprobes > MAX_KPROBES {
                                errors.at(
                                    fault.trigger_at,
                                    format!(
                                        "fault `{}`: a scenario may use at most {MAX_KPROBES} \
                                         distinct kprobes and kretprobes",
                                        fault.name
                                    ),
                                );
                                continue;
                            }
                        }
                        attach.probes.push(probe.clone());
                        attach.probes.len() - 1
                    }
                };
                HOOK_PROBE | index as u32
            }
            Trigger::Time(_) => {
                attach.tick = true;
                continue;
            }
        };
        let key = HookKey {
            target_idx: fault.target as u32,
            hook,
        };
        let faults = table.entry(key).or_default();
        if faults.len() == MAX_FAULTS_PER_HOOK {
            errors.at(
                fault.trigger_at,
                format!(
                    "fault `{}`: more than {MAX_FAULTS_PER_HOOK} faults on one trigger ({}) of target \
                     `{}`: the kernel evaluates at most {MAX_FAULTS_PER_HOOK} per hook",
                    fault.name,
                    fault.trigger.describe(),
                    scenario.targets[fault.target].name
                ),
            );
            continue;
        }
        faults.push(id as u32);
    }
    attach.exec = scenario
        .targets
        .iter()
        .any(|t| matches!(t.source, TargetSource::Selector(_)));
    let node_faults = &scenario.cluster.node_faults;
    attach.crash = scenario
        .faults
        .iter()
        .any(|f| matches!(f.action, Action::Crash { .. }))
        || node_faults
            .iter()
            .any(|f| matches!(f.action, NodeAction::Crash { .. }));
    attach.silencer = attach.crash
        || scenario
            .faults
            .iter()
            .any(|f| matches!(f.action, Action::Partition { .. }))
        || node_faults
            .iter()
            .any(|f| matches!(f.action, NodeAction::Partition { .. }));
    (table, attach)
}

/// The instances each fault with `select` lets take part, drawn from the seed.
fn selections(scenario: &Scenario, seed: u64, errors: &mut Errors<'_>) -> Vec<(u32, u32)> {
    let mut selections = Vec::new();
    for (id, fault) in scenario.faults.iter().enumerate() {
        if fault.select == Select::All {
            continue;
        }
        let instances = scenario.targets[fault.target].source.instances();
        let picked = draws::selected_instances(seed, id as u32, fault.select, instances);
        if selections.len() + picked.len() > MAX_SELECTIONS as usize {
            errors.at(
                fault.at,
                format!(
                    "fault `{}`: the faults with `select` pick more than {MAX_SELECTIONS} \
                     (fault, instance) pairs in all (the kernel's selection table)",
                    fault.name
                ),
            );
            break;
        }
        selections.extend(picked.into_iter().map(|instance| (id as u32, instance)));
    }
    selections
}

/// Each time-triggered fault's due time for each instance it selects, drawn from the seed.
fn due_times(scenario: &Scenario, seed: u64, errors: &mut Errors<'_>) -> Vec<DueTime> {
    let mut due = Vec::new();
    for (id, fault) in scenario.faults.iter().enumerate() {
        let Trigger::Time(schedule) = &fault.trigger else {
            continue;
        };
        let instances = scenario.targets[fault.target].source.instances();
        let selected = draws::selected_instances(seed, id as u32, fault.select, instances);
        if due.len() + selected.len() > MAX_DUE as usize {
            errors.at(
                fault.trigger_at,
                format!(
                    "fault `{}`: time triggers fail more than {MAX_DUE} instances in all (the \
                     kernel's due table)",
                    fault.name
                ),
            );
            break;
        }
        due.extend(selected.into_iter().map(|instance| DueTime {
            fault_id: id as u32,
            target_idx: fault.target as u32,
            instance,
            after: draws::due_after(seed, id as u32, instance, schedule),
        }));
    }
    due
}

/// The kernel rule of each fault (fault id = index in `scenario.faults`).
fn rules(scenario: &Scenario) -> Vec<FaultRule> {
    let flag = |on: bool, flag: u32| if on { flag } else { 0 };
    scenario
        .faults
        .iter()
        .zip(draws::hit_streams(scenario))
        .map(|(fault, hit_stream)| {
            let port = port_filter(&fault.trigger);
            FaultRule {
                nth: fault.nth.unwrap_or(0),
                every: fault.every.unwrap_or(0),
                after_ns: fault.after.map_or(0, |d| d.as_nanos() as u64),
                count: fault.count,
                probability: fault.probability.map_or(0, random::probability_threshold),
                hit_stream,
                signal: fault.action.signal() as u32,
                port: port.map_or(0, |(port, _)| port),
                port_arg: port.map_or(0, |(_, arg)| arg),
                errno: match fault.action {
                    Action::Error {
                        returns: Returns::Errno(errno),
                        ..
                    } => errno as u32,
                    _ => 0,
                },
                _pad: 0,
                flags: flag(port.is_some(), RULE_PORT)
                    | flag(matches!(fault.action, Action::Error { .. }), RULE_ERROR)
                    | flag(fault.per == Per::Target, RULE_PER_TARGET)
                    | flag(matches!(fault.action, Action::Crash { .. }), RULE_CRASH)
                    | flag(fault.probability.is_some(), RULE_PROBABILITY)
                    | flag(fault.select != Select::All, RULE_SELECT),
            }
        })
        .collect()
}

/// The `port` filter of a syscall trigger: (port, the argument that holds the sockaddr).
fn port_filter(trigger: &Trigger) -> Option<(u32, u32)> {
    let Trigger::Syscall {
        name,
        port: Some(port),
        ..
    } = trigger
    else {
        return None;
    };
    let (_, arg) = PORT_SYSCALLS.iter().find(|(n, _)| n == name)?;
    Some((*port as u32, *arg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse_str;
    use std::fmt::Write;

    /// Syscall hooks live in arrays with `SYSCALL_SLOTS` slots per target (kernel.rs): every
    /// syscall a trigger can name on this architecture must have one.
    #[test]
    fn every_syscall_of_this_arch_has_a_slot_in_the_syscall_hook_table() {
        let over: Vec<_> = syscalls::Sysno::iter()
            .filter(|s| s.id() as u32 >= fij_common::SYSCALL_SLOTS)
            .collect();
        assert!(over.is_empty(), "{over:?}");
    }

    const TARGETS: &str = "[[target]]\nname = \"w\"\ncommand = [\"true\"]\ninstances = 4\n\
                           [[target]]\nname = \"db\"\npid = 4242\n";

    fn scenario(faults: &str) -> Scenario {
        parse_str(Path::new("t.toml"), &format!("{TARGETS}{faults}")).unwrap()
    }

    fn fault(name: &str, target: &str, rest: &str) -> String {
        format!("[[fault]]\nname = \"{name}\"\ntarget = \"{target}\"\n{rest}\n")
    }

    fn errors(scenario: &Scenario) -> Vec<String> {
        compile(scenario, 1)
            .unwrap_err()
            .0
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn rules_hooks_and_attachments_of_a_mixed_scenario() {
        let s = scenario(
            &[
                fault(
                    "a",
                    "w",
                    "action = \"crash\"\ntrigger = { syscall = \"write\" }\nnth = 3",
                ),
                fault(
                    "b",
                    "w",
                    "action = \"kill\"\ntrigger = { syscall = \"write\" }\nprobability = 0.5\nper = \"target\"",
                ),
                fault(
                    "c",
                    "db",
                    "action = \"stop\"\ntrigger = { tracepoint = \"sched:sched_process_fork\" }",
                ),
                fault(
                    "d",
                    "w",
                    "action = \"kill\"\ntrigger = { at = \"2s\" }\nselect = { fixed = 2 }",
                ),
            ]
            .concat(),
        );
        let c = compile(&s, 9).unwrap();
        let write = libc::SYS_write as u32;
        assert_eq!(
            c.hooks,
            BTreeMap::from([
                (
                    HookKey {
                        target_idx: 0,
                        hook: write
                    },
                    vec![0, 1]
                ),
                (
                    HookKey {
                        target_idx: 1,
                        hook: HOOK_TRACEPOINT
                    },
                    vec![2]
                ),
            ])
        );
        assert_eq!(
            c.attach,
            Attachments {
                syscalls: true,
                tracepoints: vec![("sched".into(), "sched_process_fork".into())],
                probes: vec![],
                exec: false,
                crash: true,
                silencer: true,
                tick: true,
                errno_hooks: vec![],
                lsm_hooks: vec![],
            }
        );
        assert_eq!(c.rules[0].nth, 3);
        assert_eq!(c.rules[0].flags, RULE_CRASH);
        assert_eq!(c.rules[0].signal, libc::SIGKILL as u32);
        assert_eq!(c.rules[1].flags, RULE_PER_TARGET | RULE_PROBABILITY);
        assert_eq!(c.rules[2].signal, libc::SIGSTOP as u32);
        assert_eq!(c.rules[3].flags, RULE_SELECT);
        // `select = { fixed = 2 }` of 4 instances, drawn from the seed; one due time each.
        let picked = draws::selected_instances(9, 3, Select::Fixed(2), 4);
        assert_eq!(c.selections, vec![(3, picked[0]), (3, picked[1])]);
        assert_eq!(c.selected(3, &s), picked);
        assert_eq!(c.selected(0, &s), vec![0, 1, 2, 3]);
        assert_eq!(
            c.due,
            picked
                .iter()
                .map(|&instance| DueTime {
                    fault_id: 3,
                    target_idx: 0,
                    instance,
                    after: Duration::from_secs(2)
                })
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_error_fault_is_counted_at_its_cgroup_hook_not_at_sys_enter() {
        let s = scenario(
            &[
                fault(
                    "refuse",
                    "w",
                    "action = \"error\"\nerrno = \"ECONNREFUSED\"\ntrigger = { syscall = \"connect\", port = 80 }\nnth = 3",
                ),
                fault(
                    "drop",
                    "db",
                    "action = \"error\"\nerrno = 105\ntrigger = { syscall = \"sendmsg\" }",
                ),
                fault(
                    "kill",
                    "w",
                    "action = \"kill\"\ntrigger = { syscall = \"connect\" }",
                ),
            ]
            .concat(),
        );
        let c = compile(&s, 1).unwrap();
        let connect = libc::SYS_connect as u32;
        assert_eq!(
            c.hooks,
            BTreeMap::from([
                (
                    HookKey {
                        target_idx: 0,
                        hook: connect
                    },
                    vec![2]
                ),
                (
                    HookKey {
                        target_idx: 0,
                        hook: HOOK_ERRNO | fij_common::ERRNO_HOOK_CONNECT
                    },
                    vec![0]
                ),
                (
                    HookKey {
                        target_idx: 1,
                        hook: HOOK_ERRNO | fij_common::ERRNO_HOOK_UDP_SEND
                    },
                    vec![1]
                ),
            ])
        );
        assert_eq!(
            c.attach.errno_hooks,
            [
                fij_common::ERRNO_HOOK_CONNECT,
                fij_common::ERRNO_HOOK_UDP_SEND
            ]
        );
        assert!(
            c.attach.syscalls,
            "the kill on connect still needs sys_enter"
        );
        assert_eq!(c.rules[0].flags, RULE_ERROR | RULE_PORT);
        assert_eq!(
            (c.rules[0].errno, c.rules[0].signal, c.rules[0].port),
            (111, 0, 80)
        );
        assert_eq!(c.rules[1].errno, 105);
        assert_eq!(c.rules[2].errno, 0);
    }

    #[test]
    fn a_time_only_campaign_attaches_no_syscall_hook() {
        let s = scenario(&fault(
            "t",
            "w",
            "action = \"kill\"\ntrigger = { at = \"1s\" }",
        ));
        let c = compile(&s, 1).unwrap();
        assert!(!c.attach.syscalls && c.attach.tick && c.hooks.is_empty());
        assert_eq!(c.due.len(), 4);
    }

    #[test]
    fn more_faults_on_one_hook_than_the_kernel_evaluates_is_an_error_at_the_trigger() {
        let text: String = (0..=MAX_FAULTS_PER_HOOK)
            .map(|i| {
                fault(
                    &format!("f{i}"),
                    "w",
                    "action = \"kill\"\ntrigger = { syscall = \"write\" }",
                )
            })
            .collect();
        let s = scenario(&text);
        let last = s.faults.last().unwrap().trigger_at;
        assert_eq!(
            errors(&s),
            vec![format!(
                "t.toml:{}:{}: fault `f16`: more than 16 faults on one trigger (write) of target \
                 `w`: the kernel evaluates at most 16 per hook",
                last.line, last.col
            )]
        );
        // The same faults spread over two targets fit.
        let mut spread = text.clone();
        spread = spread.replacen("target = \"w\"", "target = \"db\"", 1);
        assert!(compile(&scenario(&spread), 1).is_ok());
    }

    #[test]
    fn a_ninth_tracepoint_is_an_error_at_its_trigger() {
        let names = [
            "sched_process_fork",
            "sched_process_exec",
            "sched_process_exit",
            "sched_wakeup",
            "sched_switch",
            "sched_waking",
            "sched_migrate_task",
            "sched_process_free",
            "sched_stat_runtime",
        ];
        let mut text = String::new();
        for (i, name) in names.iter().enumerate() {
            write!(
                text,
                "{}",
                fault(
                    &format!("f{i}"),
                    "w",
                    &format!("action = \"kill\"\ntrigger = {{ tracepoint = \"sched:{name}\" }}")
                )
            )
            .unwrap();
        }
        let s = scenario(&text);
        let errors = errors(&s);
        let at = s.faults[8].trigger_at;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!(
                "t.toml:{}:{}: fault `f8`: a scenario may use at most 8 distinct tracepoints",
                at.line, at.col
            )),
            "{errors:?}"
        );
    }

    #[test]
    fn more_faults_than_the_rule_table_holds_is_an_error_at_the_first_one_too_many() {
        let text: String = (0..=MAX_FAULTS)
            .map(|i| {
                fault(
                    &format!("f{i}"),
                    if i % 2 == 0 { "w" } else { "db" },
                    &format!(
                        "action = \"kill\"\ntrigger = {{ syscall = \"write\" }}\nnth = {}",
                        i + 1
                    ),
                )
            })
            .collect();
        let s = scenario(&text);
        let errors = errors(&s);
        let at = s.faults[MAX_FAULTS as usize].at;
        assert!(
            errors.contains(&format!(
                "t.toml:{}:{}: too many faults: a scenario may have at most 1024 (the kernel's rule table)",
                at.line, at.col
            )),
            "{errors:?}"
        );
    }

    #[test]
    fn selections_beyond_the_selection_table_are_an_error_at_the_fault() {
        let targets: String = (0..5)
            .map(|i| {
                format!("[[target]]\nname = \"t{i}\"\ncommand = [\"true\"]\ninstances = 1024\n")
            })
            .collect();
        let faults: String = (0..5)
            .map(|i| {
                fault(
                    &format!("f{i}"),
                    &format!("t{i}"),
                    "action = \"kill\"\ntrigger = { syscall = \"write\" }\nselect = { percent = 100 }",
                )
            })
            .collect();
        let s = parse_str(Path::new("t.toml"), &format!("{targets}{faults}")).unwrap();
        let errors = errors(&s);
        let at = s.faults[4].at;
        assert_eq!(
            errors,
            vec![format!(
                "t.toml:{}:{}: fault `f4`: the faults with `select` pick more than 4096 (fault, \
                 instance) pairs in all (the kernel's selection table)",
                at.line, at.col
            )]
        );
    }
}
