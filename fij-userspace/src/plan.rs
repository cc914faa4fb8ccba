//! `fij plan`: every decision that can be known before the run, read off the compiled campaign
//! (the rules the kernel is given, the selections and due times drawn in the compile stage) with
//! the draw function the kernel uses (`fij_common::random`), so `fij run` with the same seed
//! makes exactly these decisions.
use std::fmt;

use fij_common::random::{hit_draw, key_from_seed};
use serde::Serialize;

use crate::{
    compile::CompiledCampaign,
    scenario::{Action, NodeAction, Per, Scenario, Select, Trigger},
    signals,
};

/// Hits considered per fault when `--hits` is not given.
pub const DEFAULT_HITS: u64 = 20;
/// The most hits `fij plan --hits` considers per fault (a second or so of draws; more is a
/// mistake, such as an unsigned -1).
pub const MAX_HITS: u64 = 1_000_000;

#[derive(Debug, Serialize)]
pub struct Plan {
    pub scenario: String,
    pub seed: u64,
    /// Hits considered per fault (per process for `per = "process"`).
    pub hits: u64,
    pub faults: Vec<FaultPlan>,
    /// `[[node_fault]]`: which nodes fail, and when (the same on every node).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_faults: Vec<NodeFaultPlan>,
}

#[derive(Debug, Serialize)]
pub struct NodeFaultPlan {
    pub fault: String,
    pub action: &'static str,
    /// Each node the fault fails, with its due time.
    pub due: Vec<PlannedNodeDue>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedNodeDue {
    pub node: String,
    /// Seconds after the campaign start.
    pub after_s: f64,
}

#[derive(Debug, Serialize)]
pub struct FaultPlan {
    pub fault: String,
    pub target: String,
    /// The node the target runs on (`[[node]]` scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub per: &'static str,
    pub trigger: String,
    pub signal: String,
    /// `action = "error"`: what the failed call returns (`ECONNREFUSED`, `retval 0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub returns: Option<String>,
    pub probability: Option<f64>,
    pub count: u64,
    /// The instances that take part (`select`); all of them when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<u32>>,
    /// Syscall triggers: the hits among the first `hits` that fire, in order, before `count`.
    pub fires: Vec<PlannedHit>,
    /// Time triggers: when the fault falls due for each selected instance.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub due: Vec<PlannedDue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PlannedDue {
    pub instance: u32,
    /// Seconds after the campaign start.
    pub after_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlannedHit {
    pub hit: u64,
    /// The draw that decided it (probabilistic faults only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draw: Option<u64>,
}

/// The plan of `scenario` as compiled (with its seed), over the first `hits` hits of each fault.
pub fn plan(scenario: &Scenario, compiled: &CompiledCampaign, hits: u64) -> Plan {
    let seed = compiled.seed;
    let key = key_from_seed(seed);
    let faults = scenario
        .faults
        .iter()
        .zip(&compiled.rules)
        .enumerate()
        .map(|(id, (fault, rule))| {
            let selected = compiled.selected(id as u32, scenario);
            let due = compiled
                .due
                .iter()
                .filter(|d| d.fault_id == id as u32)
                .map(|d| PlannedDue {
                    instance: d.instance,
                    after_s: d.after.as_secs_f64(),
                })
                .collect();
            let counts_hits = !matches!(fault.trigger, Trigger::Time(_));
            let fires = (1..=if counts_hits { hits } else { 0 })
                .filter_map(|hit| {
                    let draw = rule.decide(hit, || hit_draw(&key, rule.hit_stream, hit))?;
                    Some(PlannedHit {
                        hit,
                        draw: fault.probability.map(|_| draw),
                    })
                })
                .collect();
            let trigger = match &fault.trigger {
                Trigger::Syscall { name, .. } => format!("syscall {name}"),
                Trigger::Time(schedule) => format!("time {schedule}"),
                other => other.describe(),
            };
            FaultPlan {
                fault: fault.name.clone(),
                target: scenario.targets[fault.target].name.clone(),
                node: scenario
                    .cluster
                    .target_node
                    .get(fault.target)
                    .copied()
                    .flatten()
                    .map(|n| scenario.cluster.nodes[n].name.clone()),
                per: match fault.per {
                    Per::Process => "process",
                    Per::Target => "target",
                },
                trigger,
                signal: match fault.action.signal() {
                    0 => "none".into(),
                    sig => signals::name(sig),
                },
                returns: match &fault.action {
                    Action::Error { returns, .. } => Some(returns.to_string()),
                    _ => None,
                },
                probability: fault.probability,
                count: fault.count,
                instances: (fault.select != Select::All).then_some(selected),
                fires,
                due,
            }
        })
        .collect();
    Plan {
        scenario: scenario.path.display().to_string(),
        seed,
        hits,
        faults,
        node_faults: node_faults(scenario, compiled),
    }
}

/// The node faults' decisions: which nodes fail, when.
fn node_faults(scenario: &Scenario, compiled: &CompiledCampaign) -> Vec<NodeFaultPlan> {
    let cluster = &scenario.cluster;
    cluster
        .node_faults
        .iter()
        .enumerate()
        .map(|(id, fault)| NodeFaultPlan {
            fault: fault.name.clone(),
            action: fault.action.name(),
            due: compiled
                .node_due
                .iter()
                .filter(|d| d.node_fault_id == id as u32)
                .map(|d| PlannedNodeDue {
                    node: cluster.nodes[d.node].name.clone(),
                    after_s: d.after.as_secs_f64(),
                })
                .collect(),
        })
        .collect()
}

impl Plan {
    /// The part of the plan that node `node` carries out: the faults of its targets, and the
    /// node faults that fail it or cut it off (`fij plan --node NAME`).
    pub fn of_node(mut self, scenario: &Scenario, node: usize) -> Plan {
        let name = &scenario.cluster.nodes[node].name;
        self.faults.retain(|f| f.node.as_ref() == Some(name));
        let cluster = &scenario.cluster;
        let mut kept = Vec::new();
        for (fault, planned) in cluster.node_faults.iter().zip(self.node_faults) {
            let fails_it = planned.due.iter().any(|d| &d.node == name);
            let cut_off = match &fault.action {
                NodeAction::Partition { from, .. } => {
                    from.contains(&node) || (from.is_empty() && !planned.due.is_empty())
                }
                _ => false,
            };
            if fails_it || cut_off {
                kept.push(planned);
            }
        }
        self.node_faults = kept;
        self
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plan for {} with seed {}", self.scenario, self.seed)?;
        for p in &self.node_faults {
            writeln!(f, "node fault {} — node {}:", p.fault, p.action)?;
            for d in &p.due {
                writeln!(
                    f,
                    "  node {} fails {:.3} s after the start",
                    d.node, d.after_s
                )?;
            }
        }
        for p in &self.faults {
            let whose = if p.per == "process" {
                "of each process"
            } else {
                "of the target"
            };
            let chance = p
                .probability
                .map_or(String::new(), |p| format!(", probability {p}"));
            let what = match &p.returns {
                Some(returns) => format!("fails the call with {returns}"),
                None => p.signal.clone(),
            };
            writeln!(
                f,
                "fault {} — {} on {} of target {}{} (per {}{}, count {}):",
                p.fault,
                what,
                p.trigger,
                p.target,
                p.node
                    .as_ref()
                    .map_or(String::new(), |n| format!(" on node {n}")),
                p.per,
                chance,
                p.count
            )?;
            if let Some(instances) = &p.instances {
                writeln!(f, "  selects instances {instances:?}")?;
            }
            if !p.due.is_empty() || p.trigger.starts_with("time") {
                for d in &p.due {
                    writeln!(
                        f,
                        "  instance {} fails {:.3} s after the start",
                        d.instance, d.after_s
                    )?;
                }
                continue;
            }
            let hits: Vec<String> = p.fires.iter().map(|h| h.hit.to_string()).collect();
            match hits.is_empty() {
                true => writeln!(f, "  fires on none of the first {} hits {whose}", self.hits)?,
                false => writeln!(
                    f,
                    "  fires on hits {} among the first {} {whose}",
                    hits.join(", "),
                    self.hits
                )?,
            }
            if p.fires.len() as u64 > p.count {
                writeln!(
                    f,
                    "  (count = {} caps the injections: only the first {} happen)",
                    p.count, p.count
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        compile::{CompiledCampaign, compile},
        scenario::parse_str,
    };
    use fij_common::random::{stream_for_fault, stream_for_hits_on_node};
    use std::path::Path;

    fn plan(scenario: &Scenario, seed: u64, hits: u64) -> Plan {
        super::plan(scenario, &compile(scenario, seed).unwrap(), hits)
    }

    fn scenario(fault: &str) -> Scenario {
        let text = format!(
            "[[target]]\nname = \"w\"\ncommand = [\"true\"]\n[[fault]]\nname = \"f\"\ntarget = \"w\"\n\
             action = \"kill\"\ntrigger = {{ syscall = \"write\" }}\n{fault}"
        );
        parse_str(Path::new("t.toml"), &text).unwrap()
    }

    fn hits(plan: &Plan) -> Vec<u64> {
        plan.faults[0].fires.iter().map(|h| h.hit).collect()
    }

    #[test]
    fn deterministic_conditions_are_planned_exactly() {
        assert_eq!(hits(&plan(&scenario("nth = 5\n"), 1, 20)), vec![5]);
        assert_eq!(hits(&plan(&scenario("every = 4\n"), 1, 13)), vec![4, 8, 12]);
        assert_eq!(
            hits(&plan(&scenario("nth = 2\nevery = 3\n"), 1, 10)),
            vec![2, 5, 8]
        );
    }

    #[test]
    fn probabilistic_hits_use_the_kernels_draws() {
        let s = scenario("probability = 0.3\ncount = 1000\n");
        let p = plan(&s, 7, 2000);
        let key = key_from_seed(7);
        for h in &p.faults[0].fires {
            assert_eq!(h.draw, Some(hit_draw(&key, stream_for_fault(0), h.hit)));
        }
        let n = p.faults[0].fires.len() as f64;
        assert!((500.0..700.0).contains(&n), "{n} of 2000 at p = 0.3");
    }

    #[test]
    fn a_seed_determines_the_plan_and_another_seed_changes_it() {
        let s = scenario("probability = 0.5\ncount = 100\n");
        assert_eq!(hits(&plan(&s, 42, 64)), hits(&plan(&s, 42, 64)));
        assert_ne!(hits(&plan(&s, 42, 64)), hits(&plan(&s, 43, 64)));
    }

    /// A scenario without `[[node]]` draws, selects and schedules exactly what fij drew before
    /// per-node streams existed: the values below were printed by that code (seed 42).
    #[test]
    fn a_scenario_without_nodes_decides_what_it_decided_before_nodes() {
        let text = "[[target]]\nname = \"w\"\ncommand = [\"true\"]\ninstances = 4\n\
                    [[target]]\nname = \"db\"\npid = 4242\n\
                    [[fault]]\nname = \"p1\"\ntarget = \"w\"\naction = \"kill\"\ntrigger = { syscall = \"write\" }\nprobability = 0.25\n\
                    [[fault]]\nname = \"p2\"\ntarget = \"db\"\naction = \"kill\"\ntrigger = { syscall = \"read\" }\nprobability = 0.5\nper = \"target\"\n\
                    [[fault]]\nname = \"sel\"\ntarget = \"w\"\naction = \"kill\"\ntrigger = { syscall = \"write\" }\nselect = { fixed = 2 }\n\
                    [[fault]]\nname = \"t\"\ntarget = \"w\"\naction = \"kill\"\ntrigger = { after = { exponential = { mean = \"10s\" } } }\nselect = \"one\"\n";
        let s = parse_str(Path::new("g.toml"), text).unwrap();
        let c = compile(&s, 42).unwrap();
        let p = super::plan(&s, &c, 16);
        let fires = |f: usize| -> Vec<(u64, u64)> {
            p.faults[f]
                .fires
                .iter()
                .map(|h| (h.hit, h.draw.unwrap()))
                .collect()
        };
        assert_eq!(
            fires(0),
            [
                (1, 1118114754673542147),
                (4, 535314167239091945),
                (7, 190883715098687555),
                (12, 253750448324714666)
            ]
        );
        assert_eq!(
            fires(1),
            [
                (1, 9077795909077059670),
                (2, 4485570992176969048),
                (3, 1227585890075759428),
                (4, 4725123974347604009),
                (5, 5476324396555732865),
                (7, 134120943996908886),
                (12, 2695032205173027723),
                (13, 7048162688765252075),
                (15, 5907611810487428561)
            ]
        );
        assert_eq!(c.selections, [(2, 2), (2, 3), (3, 0)]);
        assert_eq!(c.due.len(), 1);
        assert_eq!(
            c.due[0].after,
            std::time::Duration::from_nanos(1_221_040_492)
        );
        // Each fault's hits draw from its own fault-id stream, as the kernel always did.
        for (id, rule) in c.rules.iter().enumerate() {
            assert_eq!(rule.hit_stream, stream_for_fault(id as u32));
        }
    }

    const TWO_NODES: &str = "seed = 9\n[[node]]\nname = \"a\"\n[[node]]\nname = \"b\"\n\
                             [[target]]\nname = \"ta\"\ncommand = [\"true\"]\ninstances = 3\nnode = \"a\"\n\
                             [[target]]\nname = \"tb\"\ncommand = [\"true\"]\ninstances = 3\nnode = \"b\"\n";

    fn chance(name: &str, target: &str, extra: &str) -> String {
        format!(
            "[[fault]]\nname = \"{name}\"\ntarget = \"{target}\"\naction = \"kill\"\n\
             trigger = {{ syscall = \"write\" }}\nprobability = 0.5\n{extra}"
        )
    }

    fn node_plan(faults: &str) -> (Scenario, CompiledCampaign, Plan) {
        let s = parse_str(Path::new("n.toml"), &format!("{TWO_NODES}{faults}")).unwrap();
        let c = compile(&s, 9).unwrap();
        let p = super::plan(&s, &c, 64);
        (s, c, p)
    }

    fn fires_of(plan: &Plan, name: &str) -> Vec<(u64, Option<u64>)> {
        let fault = plan.faults.iter().find(|f| f.fault == name).unwrap();
        fault.fires.iter().map(|h| (h.hit, h.draw)).collect()
    }

    /// With `[[node]]` a fault's hits draw from its node's stream, (seed, node, the fault's
    /// position among the node's faults): the plan's draws are those, they are not the fault-id
    /// stream's, and a fault added on another node changes none of them.
    #[test]
    fn hit_draws_come_from_the_nodes_stream_and_other_nodes_faults_do_not_move_them() {
        let (_, c, p) = node_plan(
            &(chance("a1", "ta", "") + &chance("b1", "tb", "") + &chance("a2", "ta", "")),
        );
        let streams: Vec<u64> = c.rules.iter().map(|r| r.hit_stream).collect();
        assert_eq!(
            streams,
            [
                stream_for_hits_on_node(0, 0),
                stream_for_hits_on_node(1, 0),
                stream_for_hits_on_node(0, 1)
            ]
        );
        assert_eq!(stream_for_hits_on_node(1, 0), 6 << 32 | 1 << 16);
        let key = key_from_seed(9);
        let b1 = fires_of(&p, "b1");
        assert!(!b1.is_empty());
        for (hit, draw) in &b1 {
            assert_eq!(
                *draw,
                Some(hit_draw(&key, stream_for_hits_on_node(1, 0), *hit))
            );
            assert_ne!(*draw, Some(hit_draw(&key, stream_for_fault(1), *hit)));
        }
        // Two faults added on node a, before b's: b's draws stay; a's first fault keeps its own.
        let (_, _, more) = node_plan(
            &(chance("a0", "ta", "")
                + &chance("a1", "ta", "")
                + &chance("a9", "ta", "")
                + &chance("b1", "tb", "")),
        );
        assert_eq!(fires_of(&more, "b1"), b1);
        assert_ne!(
            fires_of(&more, "a1"),
            fires_of(&p, "a1"),
            "a1 is a's 2nd fault now"
        );
        assert_eq!(
            fires_of(&more, "a0"),
            fires_of(&p, "a1"),
            "a0 took a's 1st stream"
        );
    }

    /// Decisions made before the run stay keyed by the global fault id, from the seed alone —
    /// the same on every node (every node compiles the whole scenario; compiling takes no
    /// node) — and `--all-nodes` is every node's part.
    #[test]
    fn selections_and_due_times_are_the_seeds_and_every_node_plans_alike() {
        let (s, c, p) = node_plan(
            &(chance("b1", "tb", "select = { fixed = 2 }\n")
                + "[[fault]]\nname = \"t\"\ntarget = \"ta\"\naction = \"kill\"\n\
                   trigger = { after = { uniform = { min = \"1s\", max = \"9s\" } } }\n"),
        );
        assert_eq!(
            c.selected(0, &s),
            crate::draws::selected_instances(9, 0, Select::Fixed(2), 3)
        );
        let due: Vec<_> = c
            .due
            .iter()
            .map(|d| (d.fault_id, d.instance, d.after))
            .collect();
        let expected: Vec<_> = (0..3)
            .map(|i| {
                let Trigger::Time(schedule) = &s.faults[1].trigger else {
                    unreachable!()
                };
                (1, i, crate::draws::due_after(9, 1, i, schedule))
            })
            .collect();
        assert_eq!(due, expected);
        // Each node's part (`fij plan --node`, what that node's fij carries out) is the whole
        // plan's (`--all-nodes`) for its faults; b's selected fault is b's, t is a's.
        for (node, name) in [(0, "t"), (1, "b1")] {
            let mine = super::plan(&s, &c, 64).of_node(&s, node);
            let names: Vec<&str> = mine.faults.iter().map(|f| f.fault.as_str()).collect();
            assert_eq!(names, [name]);
            let whole = p.faults.iter().find(|g| g.fault == name).unwrap();
            let f = &mine.faults[0];
            assert_eq!(
                (&f.fires, &f.due, &f.instances),
                (&whole.fires, &whole.due, &whole.instances)
            );
        }
    }
}
