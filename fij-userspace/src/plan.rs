//! `fij plan`: every decision that can be known before the run, computed with the very rule
//! encoding (`campaign::compile_rules`) and draw function (`fij_common::random`) the kernel uses,
//! so `fij run` with the same seed makes exactly these decisions.
use std::fmt;

use fij_common::random::{fires_with, hit_draw, key_from_seed};
use serde::Serialize;

use crate::{
    campaign::compile_rules,
    scenario::{Per, Scenario, Trigger},
    targets::signal_name,
};

/// Hits considered per fault when `--hits` is not given.
pub const DEFAULT_HITS: u64 = 20;

#[derive(Debug, Serialize)]
pub struct Plan {
    pub scenario: String,
    pub seed: u64,
    /// Hits considered per fault (per process for `per = "process"`).
    pub hits: u64,
    pub faults: Vec<FaultPlan>,
}

#[derive(Debug, Serialize)]
pub struct FaultPlan {
    pub fault: String,
    pub target: String,
    pub per: &'static str,
    pub trigger: String,
    pub signal: String,
    pub probability: Option<f64>,
    pub count: u64,
    /// The hits among the first `hits` that fire, in order, before the `count` cap.
    pub fires: Vec<PlannedHit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlannedHit {
    pub hit: u64,
    /// The draw that decided it (probabilistic faults only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draw: Option<u64>,
}

pub fn plan(scenario: &Scenario, seed: u64, hits: u64) -> Plan {
    let (rules, _) = compile_rules(scenario);
    let key = key_from_seed(seed);
    let faults = scenario
        .faults
        .iter()
        .zip(&rules)
        .enumerate()
        .map(|(id, (fault, rule))| {
            let fires = (1..=hits)
                .filter(|&hit| rule.fires_on(hit))
                .filter_map(|hit| match fault.probability {
                    None => Some(PlannedHit { hit, draw: None }),
                    Some(_) => {
                        let draw = hit_draw(&key, id as u32, hit);
                        fires_with(draw, rule.probability).then_some(PlannedHit {
                            hit,
                            draw: Some(draw),
                        })
                    }
                })
                .collect();
            let Trigger::Syscall { name, .. } = &fault.trigger;
            FaultPlan {
                fault: fault.name.clone(),
                target: scenario.targets[fault.target].name.clone(),
                per: match fault.per {
                    Per::Process => "process",
                    Per::Target => "target",
                },
                trigger: format!("syscall {name}"),
                signal: match fault.action.signal() {
                    0 => "none".into(),
                    sig => signal_name(sig),
                },
                probability: fault.probability,
                count: fault.count,
                fires,
            }
        })
        .collect();
    Plan {
        scenario: scenario.path.display().to_string(),
        seed,
        hits,
        faults,
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plan for {} with seed {}", self.scenario, self.seed)?;
        for p in &self.faults {
            let whose = if p.per == "process" {
                "of each process"
            } else {
                "of the target"
            };
            let chance = p
                .probability
                .map_or(String::new(), |p| format!(", probability {p}"));
            writeln!(
                f,
                "fault {} — {} on {} of target {} (per {}{}, count {}):",
                p.fault, p.signal, p.trigger, p.target, p.per, chance, p.count
            )?;
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
    use crate::scenario::parse_str;
    use std::path::Path;

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
            assert_eq!(h.draw, Some(hit_draw(&key, 0, h.hit)));
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
}
