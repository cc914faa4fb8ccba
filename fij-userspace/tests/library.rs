//! The library API used the way a user's `#[test]` would: the example's echo server crashed on
//! its 3rd reply through `fij::Campaign`, and the client's view checked. Runs as root (as every
//! privileged test, through `cargo xtask test`).
#[path = "../examples/crash_a_server.rs"]
#[allow(dead_code)]
mod example;

use fij_common::log::Record;

#[test]
fn a_crashed_server_leaves_its_client_in_silence() {
    let (seen, outcome) = example::crash_the_echo_server_on_its_third_reply().unwrap();
    // Three echoes (the 3rd reply's call completes before the SIGKILL lands), then nothing:
    // no EOF, no reset — the client's read timed out.
    assert_eq!(
        seen,
        ["line 1", "line 2", "line 3", "silence"],
        "{seen:?}\n{}",
        outcome.summary
    );
    let pid = outcome
        .target_pid("echo")
        .expect("the echo server was armed");
    let injections: Vec<_> = outcome
        .injections()
        .map(|r| match r {
            Record::Injection {
                fault,
                pid,
                hit,
                signal,
                delivered,
                ..
            } => (fault.as_str(), *pid, *hit, signal.as_str(), *delivered),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        injections,
        [("crash-on-3rd-reply", pid, 3, "SIGKILL", true)],
        "{}",
        outcome.summary
    );
    let exits: Vec<_> = outcome
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Exit { pid: p, signal, .. } if *p == pid => Some(signal.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(exits, [Some("SIGKILL".to_string())], "{}", outcome.summary);
    // The server's sockets were silenced (its listener and the client's connection).
    assert!(
        outcome
            .records
            .iter()
            .any(|r| matches!(r, Record::Silenced { pid: p, .. } if *p == pid)),
        "{}",
        outcome.summary
    );
    assert!(outcome.summary.targets[0].processes[0].by_fij);
}

#[test]
fn an_invalid_scenario_is_refused_with_its_position_before_anything_runs() {
    let err = fij::Campaign::from_toml("[[target]]\nname = \"x\"\ncomand = [\"true\"]\n")
        .err()
        .expect("a misspelt key is an error");
    assert!(
        err.to_string()
            .contains("<inline>:3:1: unknown key `comand` in [[target]]"),
        "{err}"
    );
}

/// Two nodes, a fault on each; run as node `b` only `b`'s target is spawned and only `b`'s
/// faults act on it.
const TWO_NODES: &str = r#"
duration = "10s"
[[node]]
name = "a"
[[node]]
name = "b"
[[target]]
name = "on-a"
command = ["sleep", "30"]
node = "a"
[[target]]
name = "on-b"
command = ["sleep", "30"]
node = "b"
[[fault]]
name = "kill-a"
target = "on-a"
action = "kill"
trigger = { at = "200ms" }
[[node_fault]]
name = "power"
action = "kill"
nodes = ["b"]
trigger = { at = "500ms" }
"#;

#[test]
fn a_campaign_runs_as_the_node_it_is_given() {
    let outcome = fij::Campaign::from_toml(TWO_NODES)
        .unwrap()
        .seed(3)
        .node("b")
        .run()
        .unwrap();
    // Only b's target was armed; the node kill of b, at its time, was its only injection.
    assert_eq!(outcome.target_pid("on-a"), None, "{}", outcome.summary);
    let pid = outcome.target_pid("on-b").expect("b's target armed");
    let injections: Vec<_> = outcome
        .injections()
        .map(|r| match r {
            Record::Injection {
                fault,
                pid,
                signal,
                scheduled_t_ns,
                ..
            } => (fault.as_str(), *pid, signal.as_str(), *scheduled_t_ns),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        injections,
        [("power", pid, "SIGKILL", Some(500_000_000))],
        "{}",
        outcome.summary
    );
    assert_eq!(
        outcome.reason,
        fij_common::log::EndReason::TargetsExited,
        "{}",
        outcome.summary
    );
    let node = outcome.records.iter().find_map(|r| match r {
        Record::Start { node, .. } => Some(node.clone()),
        _ => None,
    });
    assert_eq!(node, Some(Some("b".to_string())));
}

#[test]
fn a_node_that_is_not_in_the_scenario_is_refused_before_anything_runs() {
    let campaign = || fij::Campaign::from_toml(TWO_NODES).unwrap();
    let err = campaign().node("c").run().err().expect("no node c");
    assert_eq!(
        err.to_string(),
        "--node c: no such node in <inline> (its nodes: a, b)"
    );
    let faults = campaign().node("a").plan(1).expect("a's plan").faults;
    assert_eq!(faults.len(), 1, "a's plan has a's one fault");
    assert_eq!(faults[0].fault, "kill-a");
    let plan = campaign().node("b").plan(1).unwrap();
    assert!(plan.faults.is_empty());
    assert_eq!(plan.node_faults.len(), 1);
}
