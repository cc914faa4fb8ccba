//! Campaigns across nodes (docs/multi-node.md), with one fij per node on this machine: each fij
//! runs only its node's targets, every node computes the same decisions from the seed, `start_at`
//! lines the nodes' time 0 up on the wall clock, a node crash fails every target process of the
//! planned node and no other, and `fij log merge` makes one timeline of the nodes' logs.
use std::{path::Path, time::Duration};

use fij_tests::{Fij, FijOutput, TempDir, toml_array, wait_no_fij_programs};
use serde_json::Value;

/// How far apart two nodes' time 0 may be on this machine (one clock): the documented
/// tolerance of `start_at` between nodes whose clocks agree (docs/multi-node.md).
const START_TOLERANCE_NS: u64 = 100_000_000;

/// Two nodes; `a` runs one sleeper, `b` two; a node crash of one of them (drawn from the seed)
/// 1 s after a `start_at` on the next whole 2 s.
fn scenario(dir: &TempDir, action: &str) -> std::path::PathBuf {
    let sleeper = toml_array(&fij_tests::workload!().argv(&[&"sleep", &"20000"]));
    dir.write(
        "nodes.toml",
        &format!(
            "seed = 11\nduration = \"3s\"\nstart_at = \"next 2s\"\n\
             [[node]]\nname = \"a\"\n[[node]]\nname = \"b\"\n\
             [[target]]\nname = \"on-a\"\ncommand = {sleeper}\nnode = \"a\"\n\
             [[target]]\nname = \"on-b\"\ncommand = {sleeper}\ninstances = 2\nnode = \"b\"\n\
             [[node_fault]]\nname = \"power\"\naction = \"{action}\"\nnodes = [\"a\", \"b\"]\n\
             select = \"one\"\ntrigger = {{ at = \"1s\" }}\n"
        ),
    )
}

/// `fij plan --all-nodes --json`: the node the node fault fails and when.
fn planned_node_fault(scenario: &Path) -> (String, f64) {
    let out = Fij::new_command(&[&"plan", &scenario, &"--all-nodes", &"--json"]).output();
    out.assert_exit(0);
    let plan: Value = serde_json::from_str(&out.stdout).unwrap();
    let due = &plan["node_faults"][0]["due"];
    assert_eq!(due.as_array().unwrap().len(), 1, "{plan}");
    (
        due[0]["node"].as_str().unwrap().to_string(),
        due[0]["after_s"].as_f64().unwrap(),
    )
}

/// Runs both nodes at once, each its own fij; returns their outputs by node name.
fn run_both(dir: &TempDir, scenario: &Path, round: &str) -> Vec<(String, FijOutput)> {
    let running: Vec<_> = ["a", "b"]
        .iter()
        .map(|node| {
            let log = dir.join(&format!("{round}-{node}.jsonl"));
            let fij = Fij::run_logging_to(scenario, log).arg("--node").arg(*node);
            (node.to_string(), fij.spawn())
        })
        .collect();
    let outs: Vec<_> = running
        .into_iter()
        .map(|(node, mut fij)| (node, fij.finish()))
        .collect();
    wait_no_fij_programs(Duration::from_secs(10)).expect("both fij gone: nothing left behind");
    outs
}

/// The start record's fields of a log, as JSON.
fn start(out: &FijOutput) -> Value {
    out.log.json().next().unwrap().clone()
}

/// (target, instance) of every injection, sorted.
fn injected(out: &FijOutput) -> Vec<(String, u64)> {
    let mut v: Vec<_> = out
        .log
        .injections()
        .iter()
        .map(|r| {
            (
                r["target"].as_str().unwrap().to_string(),
                r["instance"].as_u64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_node_crash_fails_every_process_of_the_planned_node_and_no_other_in_two_runs() {
    let dir = TempDir::new("multinode-crash");
    let scenario = scenario(&dir, "crash");
    let (victim, after_s) = planned_node_fault(&scenario);
    assert_eq!(after_s, 1.0);
    let expected = |node: &str| -> Vec<(String, u64)> {
        match (node == victim, node) {
            (false, _) => vec![],
            (true, "a") => vec![("on-a".into(), 0)],
            (true, _) => vec![("on-b".into(), 0), ("on-b".into(), 1)],
        }
    };
    for round in ["first", "second"] {
        let outs = run_both(&dir, &scenario, round);
        let starts: Vec<Value> = outs.iter().map(|(_, out)| start(out)).collect();
        for ((node, out), start) in outs.iter().zip(&starts) {
            eprintln!("{round} run, node {node}:\n{}", out.stderr);
            out.assert_exit(0);
            // Each fij ran its own node's targets only.
            assert_eq!(start["node"], node.as_str(), "{out}");
            let names: Vec<&str> = out.log.targets().iter().map(|t| t.name.as_str()).collect();
            assert_eq!(
                names,
                if node == "a" {
                    vec!["on-a"]
                } else {
                    vec!["on-b", "on-b"]
                }
            );
            // Injections on each node = the plan's, every one a SIGKILL by fij at its due time.
            assert_eq!(injected(out), expected(node), "{out}");
            for r in out.log.injections() {
                assert_eq!(r["signal"], "SIGKILL");
                assert_eq!(r["fault"], "power");
                assert_eq!(r["scheduled_t_ns"], 1_000_000_000u64);
                assert_eq!(
                    out.log.exit_status(r["pid"].as_u64().unwrap() as u32),
                    "signal SIGKILL"
                );
            }
            // start_at: the planned start is on a whole 2 s, and this node started on it.
            let clock = &start["clock"];
            let planned = clock["planned_unix_ns"].as_u64().unwrap();
            assert_eq!(planned % 2_000_000_000, 0, "{clock}");
            let late = clock["start_unix_ns"].as_u64().unwrap() - planned;
            eprintln!("node {node}: started {late} ns after start_at");
        }
        // Both nodes planned the same start and started within the tolerance of each other.
        let clock = |i: usize, key: &str| starts[i]["clock"][key].as_u64().unwrap();
        assert_eq!(clock(0, "planned_unix_ns"), clock(1, "planned_unix_ns"));
        let apart = clock(0, "start_unix_ns").abs_diff(clock(1, "start_unix_ns"));
        assert!(
            apart < START_TOLERANCE_NS,
            "time 0 of the two nodes {apart} ns apart"
        );

        // One timeline: every record with its node, ordered by wall clock; the crash's
        // injections at start_at + 1 s (+ how late fij fired them).
        let logs: Vec<_> = ["a", "b"]
            .iter()
            .map(|n| dir.join(&format!("{round}-{n}.jsonl")))
            .collect();
        let merged = Fij::new_command(&[&"log", &"merge", &logs[0], &logs[1]]).output();
        merged.assert_exit(0);
        let lines: Vec<Value> = merged
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let total: usize = outs.iter().map(|(_, o)| o.log.json().count()).sum();
        assert_eq!(lines.len(), total);
        assert!(
            lines
                .windows(2)
                .all(|w| w[0]["unix_ns"].as_u64() <= w[1]["unix_ns"].as_u64())
        );
        for injection in lines.iter().filter(|l| l["event"] == "injection") {
            assert_eq!(injection["node"], victim.as_str());
            let at = injection["unix_ns"].as_u64().unwrap() - clock(0, "planned_unix_ns");
            eprintln!("injection {} ms after start_at", at as f64 / 1e6);
            assert!(
                (1_000_000_000..1_000_000_000 + START_TOLERANCE_NS + 100_000_000).contains(&at)
            );
        }
    }
}

#[test]
fn a_multi_node_scenario_without_its_node_is_refused_before_anything_runs() {
    let dir = TempDir::new("multinode-which");
    let scenario = scenario(&dir, "kill");
    let out = Fij::run(&dir, &scenario).env_clear().output();
    out.assert_exit(2);
    assert!(
        out.stderr.contains(
            "the scenario has nodes (a, b): say which one this is with --node NAME or FIJ_NODE=NAME"
        ),
        "{out}"
    );
    assert!(out.log.is_empty(), "nothing ran: {out}");
    let out = Fij::run(&dir, &scenario).arg("--node").arg("c").output();
    out.assert_exit(2);
    assert!(out.stderr.contains("--node c: no such node in"), "{out}");
    // The MPI rank names the node when nothing else does: rank 1 is `b`.
    let plan = Fij::new_command(&[&"plan", &scenario, &"--json"])
        .env_clear()
        .env("OMPI_COMM_WORLD_RANK", "1")
        .output();
    plan.assert_exit(0);
    let plan: Value = serde_json::from_str(&plan.stdout).unwrap();
    let (victim, _) = planned_node_fault(&scenario);
    let takes_part = plan.get("node_faults").is_some();
    assert_eq!(takes_part, victim == "b", "{plan}");
}
