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
