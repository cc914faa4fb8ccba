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
/// 1 s after a `start_at` on the next whole [`start_period_s`].
fn scenario(dir: &TempDir, action: &str) -> std::path::PathBuf {
    let sleeper = toml_array(&fij_tests::workload!().argv(&[&"sleep", &"20000"]));
    let period = start_period_s();
    dir.write(
        "nodes.toml",
        &format!(
            "seed = 11\nduration = \"3s\"\nstart_at = \"next {period}s\"\n\
             [[node]]\nname = \"a\"\n[[node]]\nname = \"b\"\n\
             [[target]]\nname = \"on-a\"\ncommand = {sleeper}\nnode = \"a\"\n\
             [[target]]\nname = \"on-b\"\ncommand = {sleeper}\ninstances = 2\nnode = \"b\"\n\
             [[node_fault]]\nname = \"power\"\naction = \"{action}\"\nnodes = [\"a\", \"b\"]\n\
             select = \"one\"\ntrigger = {{ at = \"1s\" }}\n"
        ),
    )
}

/// `crash`, or where the kernel has no tcx and fij refuses a node crash (checked), `kill`: the
/// launchers' and the nodes' tests need a node fault that SIGKILLs, whichever it is.
fn crash_or_else_kill() -> &'static str {
    if fij_tests::tcx::node_fault_refused_without_tcx("crash") {
        "kill"
    } else {
        "crash"
    }
}

/// The period of the two-node scenario's `start_at`: 2 s, times the lab's slowdown. The nodes
/// (and the launchers' hosts) start one after the other, and both must wait for the same whole
/// period; under the kernel lab's TCG, Ansible started the two 4 s apart (a 6.1 guest,
/// FIJ_TEST_SLOWDOWN=16.0), so the period stretches as the launches do.
fn start_period_s() -> u64 {
    (2.0 * fij_tests::slowdown()).round() as u64
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

/// Node crash and node kill both SIGKILL every target of the node; a kernel without tcx (6.1)
/// refuses the crash (checked), and the test then runs the kill.
#[test]
fn a_node_crash_fails_every_process_of_the_planned_node_and_no_other_in_two_runs() {
    let dir = TempDir::new("multinode-crash");
    let scenario = scenario(&dir, crash_or_else_kill());
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
            // start_at: the planned start is on a whole period, and this node started on it.
            let clock = &start["clock"];
            let planned = clock["planned_unix_ns"].as_u64().unwrap();
            assert_eq!(planned % (start_period_s() * 1_000_000_000), 0, "{clock}");
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
    // `--replay` of the failed node's log reruns that node (the log names it) and matches.
    let original = dir.join(&format!("first-{victim}.jsonl"));
    let replay = Fij::new_command(&[&"run", &"--replay", &original]).output();
    replay.assert_exit(0);
    let injections = expected(&victim).len();
    assert!(
        replay.stderr.contains(&format!(
            "replay matched: the same {injections} injection(s)"
        )),
        "{replay}"
    );
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

// ---------------------------------------------------------------------------------------------
// A real 3-member etcd cluster, one member per network-namespace node, one fij per node.

mod etcd {
    use std::{net::Ipv4Addr, process::Command, time::Duration};

    use fij_tests::{
        Fij, FijOutput, RunningFij, TempDir,
        net::NetNs,
        send_signal,
        systems::{EtcdClient, EtcdCluster, Outcome, Sampler, etcd_status},
        wait_no_fij_programs,
    };
    use serde_json::Value;

    const HEARTBEAT_MS: u64 = 100;
    const ELECTION_MS: u64 = 1000;
    /// The client's timeout for a connect or an answer.
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
    /// "At once": how soon the client of a killed node must hear of it.
    const AT_ONCE: Duration = Duration::from_secs(1);
    const SEED: u64 = 5;

    /// One campaign: three namespace nodes n1..n3 each running one member, a node fault
    /// (`action`) on one node drawn from the seed, 2 s after the start; that node made the
    /// leader beforehand (the plan says which node it is). What the client and the survivors saw.
    struct Observed {
        victim: String,
        first_failure: Outcome,
        detected_after: Duration,
        elected_after: Duration,
        outs: Vec<(String, FijOutput)>,
    }

    fn scenario(nets: &[NetNs], cluster: &EtcdCluster, action: &str) -> String {
        let mut s = format!("seed = {SEED}\nduration = \"40s\"\nstart_at = \"next 2s\"\n");
        for (i, net) in nets.iter().enumerate() {
            s += &format!(
                "[[node]]\nname = \"n{}\"\naddresses = [\"{}\"]\nnetns = \"{}\"\n",
                i + 1,
                net.ns_addr,
                net.name
            );
        }
        for (i, member) in cluster.members.iter().enumerate() {
            s += &format!(
                "[[target]]\nname = \"etcd-{}\"\npid = {}\nnode = \"n{}\"\n",
                member.name,
                member.server.pid(),
                i + 1
            );
        }
        s += &format!(
            "[[node_fault]]\nname = \"power\"\naction = \"{action}\"\nnodes = [\"n1\", \"n2\", \"n3\"]\n\
             select = \"one\"\ntrigger = {{ at = \"2s\" }}\n"
        );
        s
    }

    /// `etcdctl move-leader` to member `to` (hex id), asked of every endpoint.
    fn move_leader(endpoints: &[String], to: u64) {
        let out = Command::new("etcdctl")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["--dial-timeout=2s", "--command-timeout=5s", "move-leader"])
            .arg(format!("{to:x}"))
            .output()
            .expect("etcdctl");
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        // Already the leader is fine too.
        assert!(
            out.status.success() || text.contains("already"),
            "move-leader: {text}"
        );
    }

    fn fail_a_node(action: &str) -> Observed {
        let dir = TempDir::new(&format!("multinode-etcd-{action}"));
        let nets: Vec<NetNs> = (0..3).map(|_| NetNs::new().routed()).collect();
        let hosts: Vec<(Vec<String>, Ipv4Addr)> = nets
            .iter()
            .map(|n| (n.exec_argv(Vec::new()), n.ns_addr))
            .collect();
        let cluster = EtcdCluster::start_on(dir.path(), &hosts, HEARTBEAT_MS, ELECTION_MS);
        let path = dir.write("etcd.toml", &scenario(&nets, &cluster, action));

        // The plan names the node; make its member the leader, so that its loss means an election.
        let (victim, _) = super::planned_node_fault(&path);
        let v: usize = victim[1..].parse::<usize>().unwrap() - 1;
        let endpoints = cluster.endpoints();
        let ids: Vec<u64> = cluster
            .members
            .iter()
            .map(|m| etcd_status(&[m.endpoint()])[0].member_id)
            .collect();
        move_leader(&endpoints, ids[v]);
        let leader = cluster.wait_leader(Duration::from_secs(10));
        assert_eq!(leader, v, "the planned node's member leads");
        let survivors: Vec<String> = (0..3)
            .filter(|&i| i != v)
            .map(|i| cluster.members[i].endpoint())
            .collect();

        let order: Vec<_> = std::iter::once(v)
            .chain((0..3).filter(|&i| i != v))
            .map(|i| cluster.members[i].client_addr())
            .collect();
        let client = EtcdClient::start(
            order,
            CLIENT_TIMEOUT,
            Duration::from_millis(50),
            Duration::from_secs(60),
        );
        client.wait_for(Duration::from_secs(10), "5 puts on the leader", |r| {
            r.iter()
                .filter(|r| r.member == 0 && r.outcome.is_ok())
                .count()
                >= 5
        });
        let status = Sampler::start(
            Duration::from_millis(100),
            Duration::from_secs(60),
            move || etcd_status(&survivors),
        );
        let old_leader = ids[v];

        let mut fijs: Vec<(String, RunningFij)> = (1..=3)
            .map(|i| {
                let node = format!("n{i}");
                let log = dir.join(&format!("{node}.jsonl"));
                let fij = Fij::run_logging_to(&path, log).arg("--node").arg(&node);
                (node, fij.spawn())
            })
            .collect();
        let injection = fijs[v].1.wait_for_record(
            "the node fault's injection",
            fij_tests::fij_timeout(),
            |r| r["event"] == "injection",
        );
        let t0 = injection["ktime_ns"].as_u64().unwrap();
        client.wait_for(CLIENT_TIMEOUT * 4, "a put on a survivor", |r| {
            r.iter()
                .any(|r| r.sent_ns > t0 && r.member != 0 && r.outcome.is_ok())
        });
        let new_leader = |s: &Vec<fij_tests::systems::EtcdStatus>| {
            s.len() == 2 && s.iter().all(|s| s.leader != 0 && s.leader != old_leader)
        };
        // etcd's own timers run on the machine's CPUs too: 15 s, times the lab's slowdown.
        let election = Duration::from_secs(15).mul_f64(fij_tests::slowdown());
        status.wait_for(election, "a new leader", |samples| {
            samples.iter().any(|(t, s)| *t > t0 && new_leader(s))
        });
        let requests = client.stop();
        let samples = status.stop();
        let outs: Vec<(String, FijOutput)> = fijs
            .iter_mut()
            .map(|(node, fij)| {
                if fij.running() {
                    send_signal(fij.pid(), libc::SIGINT);
                }
                (node.clone(), fij.finish())
            })
            .collect();
        wait_no_fij_programs(Duration::from_secs(10)).expect("nothing left behind");
        for (node, out) in &outs {
            eprintln!("{action}, node {node}:\n{}", out.stderr);
            out.assert_exit(0);
        }
        let failure = requests
            .iter()
            .find(|r| r.done_ns > t0 && !r.outcome.is_ok())
            .expect("a failed request after the injection");
        let elected = samples
            .iter()
            .find(|(t, s)| *t > t0 && new_leader(s))
            .expect("a new leader");
        Observed {
            victim,
            first_failure: failure.outcome.clone(),
            detected_after: Duration::from_nanos(failure.done_ns.saturating_sub(t0)),
            elected_after: Duration::from_nanos(elected.0.saturating_sub(t0)),
            outs,
        }
    }

    /// Each node's injections: exactly the plan's (the victim node's one member, SIGKILL), in
    /// both runs; the other nodes none.
    fn assert_as_planned(o: &Observed) {
        for (node, out) in &o.outs {
            let injections = out.log.injections();
            if *node == o.victim {
                assert_eq!(injections.len(), 1, "{out}");
                let pid = injections[0]["pid"].as_u64().unwrap() as u32;
                assert_eq!(injections[0]["signal"], "SIGKILL");
                assert_eq!(injections[0]["scheduled_t_ns"], 2_000_000_000u64);
                assert_eq!(out.log.exit_status(pid), "signal SIGKILL", "{out}");
            } else {
                assert!(injections.is_empty(), "node {node}: {out}");
            }
            let start: &Value = out.log.json().next().unwrap();
            assert_eq!(start["node"], node.as_str());
        }
    }

    /// Without tcx (6.1) the crash is refused (checked) and only the kill runs.
    #[test]
    fn a_node_crash_is_silence_and_a_node_kill_is_resets_with_the_same_plan() {
        let crash = (!fij_tests::tcx::node_fault_refused_without_tcx("crash")).then(|| {
            let crash = fail_a_node("crash");
            assert_crash_is_silence(&crash);
            crash
        });
        let kill = fail_a_node("kill");
        eprintln!(
            "kill of {}: client's first failure {:?} after {:?}; new leader after {:?}",
            kill.victim, kill.first_failure, kill.detected_after, kill.elected_after
        );
        // The same seed: the same node, the same injections.
        if let Some(crash) = &crash {
            assert_eq!(kill.victim, crash.victim);
        }
        assert_as_planned(&kill);
        // The client learns at once: EOF or a reset/refusal.
        assert!(
            matches!(kill.first_failure, Outcome::Eof | Outcome::Error(_)),
            "{:?}",
            kill.first_failure
        );
        assert!(kill.detected_after < AT_ONCE, "{:?}", kill.detected_after);
    }

    fn assert_crash_is_silence(crash: &Observed) {
        eprintln!(
            "crash of {}: client's first failure {:?} after {:?}; new leader after {:?}",
            crash.victim, crash.first_failure, crash.detected_after, crash.elected_after
        );
        assert_as_planned(crash);
        // The client hears nothing: it gives up at its own timeout, no reset, no EOF.
        assert_eq!(crash.first_failure, Outcome::TimedOut);
        assert!(crash.detected_after >= CLIENT_TIMEOUT - Duration::from_millis(100));
        // The survivors elect only after their election timeout (less one heartbeat).
        assert!(
            crash.elected_after >= Duration::from_millis(ELECTION_MS - HEARTBEAT_MS),
            "{:?}",
            crash.elected_after
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Launchers: Ansible and mpirun start one fij per node; the DaemonSet manifest is checked.

/// The injections of the two-node scenario's logs `logs` (node → log) are the plan's.
fn assert_launched_as_planned(scenario: &Path, logs: &[(&str, std::path::PathBuf)]) {
    let (victim, _) = planned_node_fault(scenario);
    let mut planned_starts = Vec::new();
    for (node, log) in logs {
        let log = fij_tests::Log::read_partial(log);
        let start = log
            .json()
            .next()
            .unwrap_or_else(|| panic!("no log of node {node}"));
        assert_eq!(start["node"], *node, "{log}");
        let expected = match (*node == victim, *node) {
            (false, _) => 0,
            (true, "a") => 1,
            (true, _) => 2,
        };
        assert_eq!(log.injections().len(), expected, "node {node}: {log}");
        assert!(log.injections().iter().all(|r| r["signal"] == "SIGKILL"));
        planned_starts.push(start["clock"]["planned_unix_ns"].as_u64().unwrap());
    }
    // Launched together: both waited for the same start_at.
    assert!(
        planned_starts.windows(2).all(|w| w[0] == w[1]),
        "{planned_starts:?}"
    );
}

#[test]
fn ansible_runs_one_fij_per_node_and_merges_their_logs() {
    let ansible = fij_tests::systems::require_tool("ansible-playbook", "ansible");
    let dir = TempDir::new("multinode-ansible");
    let scenario = scenario(&dir, crash_or_else_kill());
    // Two "hosts" on this machine, each with a local connection.
    let inventory = dir.write(
        "inventory.ini",
        "[fij]\na ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n\
         b ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n",
    );
    let playbook = fij_tests::workspace_root().join("launchers/ansible/fij-campaign.yml");
    let fij = fij_tests::fij_bin();
    let logs = dir.join("logs");
    let out = std::process::Command::new(ansible)
        .arg("-i")
        .arg(&inventory)
        .arg(&playbook)
        .arg("-e")
        .arg(format!(
            "fij_scenario={} fij_binary={} fij_local={} fij_dir={} fij_logs={} fij_hosts=fij \
             fij_become=false",
            scenario.display(),
            fij.display(),
            fij.display(),
            dir.join("hosts").display(),
            logs.display()
        ))
        .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
        .env("ANSIBLE_HOME", dir.join("ansible-home"))
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .expect("running ansible-playbook");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(out.status.success(), "ansible-playbook failed:\n{text}");
    wait_no_fij_programs(Duration::from_secs(10)).expect("nothing left behind");
    assert_launched_as_planned(
        &scenario,
        &[("a", logs.join("a.jsonl")), ("b", logs.join("b.jsonl"))],
    );
    // The merged timeline has every record of both logs, each with its node.
    let merged = std::fs::read_to_string(logs.join("campaign.jsonl")).unwrap();
    let total = ["a", "b"]
        .iter()
        .map(|n| {
            fij_tests::Log::read_partial(&logs.join(format!("{n}.jsonl")))
                .json()
                .count()
        })
        .sum::<usize>();
    assert_eq!(merged.lines().count(), total);
    assert!(
        merged
            .lines()
            .all(|l| l.starts_with("{\"node\":\"a\"") || l.starts_with("{\"node\":\"b\""))
    );
}

#[test]
fn mpirun_runs_one_fij_per_rank_as_the_rank_th_node() {
    let mpirun = fij_tests::systems::require_tool("mpirun", "openmpi-bin");
    let dir = TempDir::new("multinode-mpirun");
    let scenario = scenario(&dir, crash_or_else_kill());
    let out = std::process::Command::new(mpirun)
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(fij_tests::fij_bin())
        .arg("run")
        .arg(&scenario)
        .arg("--log")
        .arg(dir.join("mpi-{node}.jsonl"))
        .args(["--color", "never"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running mpirun");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(out.status.success(), "mpirun failed:\n{text}");
    wait_no_fij_programs(Duration::from_secs(10)).expect("nothing left behind");
    // Rank 0 is node a, rank 1 node b.
    assert_launched_as_planned(
        &scenario,
        &[
            ("a", dir.join("mpi-a.jsonl")),
            ("b", dir.join("mpi-b.jsonl")),
        ],
    );
}

#[test]
fn the_kubernetes_daemonset_is_privileged_in_the_host_pid_namespace_and_names_its_node() {
    use yaml_rust2::{Yaml, YamlLoader};
    let path = fij_tests::workspace_root().join("launchers/kubernetes/fij-daemonset.yaml");
    let docs = YamlLoader::load_from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let kind = |d: &Yaml| d["kind"].as_str().unwrap_or_default().to_string();
    let daemonset = docs
        .iter()
        .find(|d| kind(d) == "DaemonSet")
        .expect("a DaemonSet");
    assert_eq!(daemonset["apiVersion"].as_str(), Some("apps/v1"));
    let spec = &daemonset["spec"]["template"]["spec"];
    assert_eq!(
        daemonset["spec"]["selector"]["matchLabels"]["app"],
        daemonset["spec"]["template"]["metadata"]["labels"]["app"]
    );
    assert_eq!(spec["hostPID"].as_bool(), Some(true));
    let fij = &spec["initContainers"][0];
    assert_eq!(fij["securityContext"]["privileged"].as_bool(), Some(true));
    // The node from the downward API.
    let env = fij["env"].as_vec().unwrap();
    let node = env
        .iter()
        .find(|e| e["name"].as_str() == Some("FIJ_NODE"))
        .expect("FIJ_NODE");
    assert_eq!(
        node["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("spec.nodeName")
    );
    // `fij run` of the mounted scenario, one log per node.
    let args: Vec<&str> = fij["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args[0], "run");
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--log" && w[1].contains("{node}"))
    );
    // Every mount has its volume; the host's bpffs and tracefs are among them.
    let volumes: Vec<&str> = spec["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let mounts: Vec<(&str, &str)> = fij["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        mounts.iter().all(|(name, _)| volumes.contains(name)),
        "{mounts:?}"
    );
    for needed in ["/sys/fs/bpf", "/sys/kernel/tracing"] {
        assert!(
            mounts.iter().any(|(_, at)| *at == needed),
            "{needed} not mounted"
        );
    }
    let scenario_dir = mounts.iter().find(|(n, _)| *n == "scenario").unwrap().1;
    assert_eq!(format!("{scenario_dir}/scenario.toml"), args[1]);
    // The ConfigMap's scenario is valid, and its nodes are what FIJ_NODE will name.
    let config = docs
        .iter()
        .find(|d| kind(d) == "ConfigMap")
        .expect("a ConfigMap");
    let text = config["data"]["scenario.toml"].as_str().unwrap();
    let dir = TempDir::new("multinode-k8s");
    let scenario = dir.write("scenario.toml", text);
    let out = Fij::validate(&scenario).output();
    if !fij_tests::tcx::kernel_has_tcx() {
        // Its node crash needs tcx: a node below 6.6 refuses it at the action (6.1 in the lab).
        out.assert_exit(2);
        assert!(
            out.stderr
                .contains("`crash` needs tcx (kernel 6.6 or later)"),
            "{out}"
        );
        return;
    }
    out.assert_exit(0);
    let plan = Fij::new_command(&[&"plan", &scenario, &"--node", &"worker-2"]).output();
    plan.assert_exit(0);
}

// ---------------------------------------------------------------------------------------------
// A node partition: node `a` (a network namespace running a ticking server) cut off from node
// `b` (this machine's end of the veth, where the test's client is) for 2 s, then healed.

#[test]
fn a_node_partition_silences_the_connections_between_the_nodes_until_it_heals() {
    use std::io::{BufRead, BufReader, Write};
    use std::time::Instant;

    if fij_tests::tcx::node_fault_refused_without_tcx("partition") {
        return;
    }

    let net = fij_tests::net::NetNs::new();
    let dir = TempDir::new("multinode-partition");
    let ports = dir.join("ports");
    let server = net.exec_argv(fij_tests::net::net_victim_bin().argv(&[
        &"tcp",
        &net.ns_addr.to_string(),
        &ports,
        &"--ticks",
        &"16",
        &"--interval-ms",
        &"250",
    ]));
    let scenario = dir.write(
        "partition.toml",
        &format!(
            "seed = 3\nduration = \"15s\"\n\
             [[node]]\nname = \"a\"\naddresses = [\"{}\"]\n\
             [[node]]\nname = \"b\"\naddresses = [\"{}\"]\n\
             [[target]]\nname = \"server\"\ncommand = {}\nnode = \"a\"\n\
             [[node_fault]]\nname = \"cut\"\naction = \"partition\"\nnodes = [\"a\"]\n\
             from = [\"b\"]\nduration = \"2s\"\ntrigger = {{ at = \"2s\" }}\n",
            net.ns_addr,
            net.host_addr,
            toml_array(&server)
        ),
    );
    let mut fij = Fij::run_logging_to(&scenario, dir.join("a.jsonl"))
        .arg("--node")
        .arg("a")
        .spawn();
    fij.wait_armed();
    let port = fij_tests::net::read_port(&ports, Duration::from_secs(10));
    let mut stream =
        std::net::TcpStream::connect((net.ns_addr, port)).expect("connecting to node a");
    stream.write_all(b"hello\n").unwrap();
    let mut lines = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    // Every tick's arrival; the longest silence between two must be the partition's.
    stream
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    let mut arrivals = Vec::new();
    for _ in 0..16 {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(n) if n > 0 => arrivals.push(Instant::now()),
            other => panic!(
                "the connection broke: {other:?} after {} ticks",
                arrivals.len()
            ),
        }
    }
    let gap = arrivals.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    eprintln!("longest silence between two ticks: {gap:?}");
    drop(stream);
    let out = fij.wait();
    out.assert_exit(0);
    let partitioned = out.log.records("partitioned");
    assert_eq!(partitioned.len(), 1, "{out}");
    assert_eq!(partitioned[0]["fault"], "cut");
    assert!(partitioned[0]["tuples"].as_u64().unwrap() >= 1, "{out}");
    assert_eq!(out.log.records("healed").len(), 1, "{out}");
    // Ticks every 250 ms; nothing for the partition's 2 s (less a tick), then all of them, on
    // the same connection: silence, not a reset.
    assert!(gap >= Duration::from_millis(1700), "{gap:?}");
    assert_eq!(arrivals.len(), 16);
}

// ---------------------------------------------------------------------------------------------
// A node crash silences the node's addresses: node `a` is a network namespace with a listener
// that is no target; after the crash nothing reaches it or comes from it — a new connection
// times out (no RST), ping gets no reply — until fij ends, also when fij is SIGKILLed.

mod node_silence {
    use std::{
        net::{SocketAddr, TcpListener},
        process::{Child, Command},
        time::Duration,
    };

    use fij_tests::{
        Ended, Fij, RunningFij, TempDir,
        net::{NetNs, connect_outcome, ping, read_port},
        send_signal, toml_array,
    };

    const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

    /// A process that is no target, killed when dropped (also when the test panics).
    struct Bystander(Child);

    impl Drop for Bystander {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A TCP listener on `addr` in `net` that never accepts (the kernel completes connections
    /// into its backlog); its port.
    fn listener_in(net: &NetNs, dir: &TempDir) -> (Bystander, u16) {
        let ports = dir.join("bystander-port");
        let script = "import os, socket, sys, time\n\
                      s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(64)\n\
                      open(sys.argv[2] + '.tmp', 'w').write(str(s.getsockname()[1]))\n\
                      os.rename(sys.argv[2] + '.tmp', sys.argv[2]); time.sleep(120)\n";
        let child = Command::new("ip")
            .args(["netns", "exec", &net.name, "/usr/bin/python3", "-c", script])
            .arg(net.ns_addr.to_string())
            .arg(&ports)
            .spawn()
            .expect("starting the bystander listener");
        let bystander = Bystander(child);
        let port = read_port(&ports, Duration::from_secs(10));
        (bystander, port)
    }

    /// From inside the namespace node: a TCP connect to `to` with a 2 s timeout, as python
    /// tells it ("connected", "timed out", or the error's name).
    fn connect_from_node(net: &NetNs, to: SocketAddr) -> String {
        let script = "import socket, sys\n\
                      try:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close(); print('connected')\n\
                      except socket.timeout:\n    print('timed out')\n\
                      except OSError as e:\n    print(type(e).__name__)\n";
        let out = Command::new("ip")
            .args(["netns", "exec", &net.name, "/usr/bin/python3", "-c", script])
            .arg(to.ip().to_string())
            .arg(to.port().to_string())
            .output()
            .expect("running python3 in the namespace");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// What crosses between this machine and node `a` now: ping, a connect to the bystander
    /// listener in `a`, a connect from `a` to this machine's listener.
    #[derive(Debug, PartialEq)]
    struct Reach {
        ping: bool,
        to_node: Result<(), i32>,
        from_node: String,
    }

    fn reach(net: &NetNs, bystander: u16, host: &TcpListener) -> Reach {
        let (to_node, took) = connect_outcome(
            SocketAddr::new(net.ns_addr.into(), bystander),
            CONNECT_TIMEOUT,
        );
        let to_node = to_node.map(drop);
        if to_node == Err(libc::ETIMEDOUT) {
            assert!(
                took >= CONNECT_TIMEOUT - Duration::from_millis(100),
                "{took:?}"
            );
        }
        Reach {
            ping: ping(net.ns_addr, Duration::from_secs(1)),
            to_node,
            from_node: connect_from_node(net, host.local_addr().unwrap()),
        }
    }

    fn open() -> Reach {
        Reach {
            ping: true,
            to_node: Ok(()),
            from_node: "connected".into(),
        }
    }

    fn silent() -> Reach {
        Reach {
            ping: false,
            to_node: Err(libc::ETIMEDOUT),
            from_node: "timed out".into(),
        }
    }

    fn start(dir: &TempDir, net: &NetNs, round: &str) -> RunningFij {
        let sleeper = toml_array(&fij_tests::workload!().argv(&[&"sleep", &"20000"]));
        let scenario = dir.write(
            &format!("{round}.toml"),
            &format!(
                "seed = 1\nduration = \"60s\"\n\
                 [[node]]\nname = \"a\"\naddresses = [\"{}\"]\n\
                 [[node]]\nname = \"b\"\naddresses = [\"{}\"]\n\
                 [[target]]\nname = \"on-a\"\ncommand = {sleeper}\nnode = \"a\"\n\
                 [[node_fault]]\nname = \"power\"\naction = \"crash\"\nnodes = [\"a\"]\n\
                 trigger = {{ at = \"1s\" }}\n",
                net.ns_addr, net.host_addr
            ),
        );
        let mut fij = Fij::run_logging_to(&scenario, dir.join(&format!("{round}.jsonl")))
            .arg("--node")
            .arg("a")
            .spawn();
        let silenced = fij.wait_for_record("the node's silence", fij_tests::fij_timeout(), |r| {
            r["event"] == "node_silenced"
        });
        assert_eq!(silenced["node"], "a");
        assert_eq!(silenced["fault"], "power");
        assert_eq!(
            silenced["addresses"],
            serde_json::json!([net.ns_addr.to_string()])
        );
        fij
    }

    #[test]
    fn a_node_crash_silences_every_address_of_the_node_until_fij_ends_even_by_sigkill() {
        if fij_tests::tcx::node_fault_refused_without_tcx("crash") {
            return;
        }
        let dir = TempDir::new("multinode-node-silence");
        let net = NetNs::new();
        let (_bystander, port) = listener_in(&net, &dir);
        let host = TcpListener::bind((net.host_addr, 0)).expect("a listener on this machine");
        assert_eq!(reach(&net, port, &host), open(), "before any fij");

        // Ended by SIGINT: the node recovers at the end, with its record.
        let fij = start(&dir, &net, "sigint");
        assert_eq!(reach(&net, port, &host), silent(), "after the node crash");
        send_signal(fij.pid(), libc::SIGINT);
        let out = fij.wait();
        eprintln!("{}", out.stderr);
        out.assert_exit(0);
        let injections = out.log.injections();
        assert_eq!(injections.len(), 1, "{out}");
        assert_eq!(injections[0]["fault"], "power");
        assert_eq!(
            out.log.exit_status(out.log.target_pid("on-a")),
            "signal SIGKILL"
        );
        let recovered = out.log.one("node_recovered");
        assert_eq!(
            recovered["addresses"],
            serde_json::json!([net.ns_addr.to_string()])
        );
        assert_eq!(reach(&net, port, &host), open(), "after fij ended");

        // SIGKILLed: fij's programs go with it, and the silence with them.
        let fij = start(&dir, &net, "sigkill");
        assert_eq!(reach(&net, port, &host), silent(), "after the node crash");
        send_signal(fij.pid(), libc::SIGKILL);
        let out = fij.wait();
        assert_eq!(out.ended, Ended::Signal(libc::SIGKILL), "{out}");
        assert!(out.log.records("node_recovered").is_empty(), "{out}");
        assert_eq!(reach(&net, port, &host), open(), "after fij was SIGKILLed");
    }
}

// ---------------------------------------------------------------------------------------------
// Per-node hit streams on a real kernel (docs/determinism.md): a node's probabilistic fault
// draws from the stream of (seed, node, its position among the node's faults), as
// `fij plan --all-nodes` says, not from its global fault id's.

#[test]
fn a_nodes_probabilistic_fault_draws_from_the_nodes_stream_as_the_plan_says() {
    use rand_chacha::{
        ChaCha20Rng,
        rand_core::{Rng, SeedableRng},
    };
    const SEED: u64 = 21;
    const WRITES: u64 = 400;
    let dir = TempDir::new("multinode-draws");
    let out = dir.join("out.txt");
    let sleeper = toml_array(&fij_tests::workload!().argv(&[&"sleep", &"20000"]));
    let writer =
        toml_array(&fij_tests::workload!().argv(&[&"write-lines", &out, &WRITES.to_string()]));
    let chance = |name: &str, target: &str| {
        format!(
            "[[fault]]\nname = \"{name}\"\ntarget = \"{target}\"\naction = \"signal\"\n\
             signal = \"SIGURG\"\ntrigger = {{ syscall = \"write\" }}\nprobability = 0.3\n\
             count = 1000000\nper = \"target\"\n"
        )
    };
    let scenario = dir.write(
        "draws.toml",
        &format!(
            "seed = {SEED}\nduration = \"20s\"\n[[node]]\nname = \"a\"\n[[node]]\nname = \"b\"\n\
             [[target]]\nname = \"on-a\"\ncommand = {sleeper}\nnode = \"a\"\n\
             [[target]]\nname = \"on-b\"\ncommand = {writer}\nnode = \"b\"\n{}{}",
            chance("a-urg", "on-a"),
            chance("b-urg", "on-b")
        ),
    );
    let plan = Fij::new_command(&[
        &"plan",
        &scenario,
        &"--all-nodes",
        &"--json",
        &"--hits",
        &WRITES.to_string(),
    ])
    .output();
    plan.assert_exit(0);
    let plan: Value = serde_json::from_str(&plan.stdout).unwrap();
    let planned: Vec<(u64, u64)> = plan["faults"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fault"] == "b-urg")
        .unwrap()["fires"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["hit"].as_u64().unwrap(), h["draw"].as_u64().unwrap()))
        .collect();
    assert!(!planned.is_empty());

    let run = Fij::run_logging_to(&scenario, dir.join("b.jsonl"))
        .arg("--node")
        .arg("b")
        .spawn()
        .wait();
    run.assert_exit(0);
    let pid = run.log.target_pid("on-b");
    assert_eq!(run.log.exit_status(pid), "code 0", "{run}");
    let mut injected: Vec<(u64, u64)> = run
        .log
        .injections()
        .iter()
        .map(|r| {
            assert_eq!(r["fault"], "b-urg", "{r}");
            (r["hit"].as_u64().unwrap(), r["draw"].as_u64().unwrap())
        })
        .collect();
    injected.sort();
    assert_eq!(injected, planned, "node b's injections are the plan's");

    // The reference, from the contract alone: node b (index 1), b's first fault (0).
    let draw = |stream: u64, hit: u64| {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&SEED.to_le_bytes());
        let mut rng = ChaCha20Rng::from_seed(bytes);
        rng.set_stream(stream);
        rng.set_word_pos(2 * u128::from(hit - 1));
        rng.next_u64()
    };
    let node_stream = 6 << 32 | 1 << 16;
    for &(hit, d) in &injected {
        assert_eq!(d, draw(node_stream, hit), "hit {hit}");
    }
    let threshold = (0.3 * 18_446_744_073_709_551_616.0) as u64;
    let expected: Vec<u64> = (1..=WRITES)
        .filter(|&h| draw(node_stream, h) < threshold)
        .collect();
    let hits: Vec<u64> = injected.iter().map(|(h, _)| *h).collect();
    assert_eq!(hits, expected);
    // Not the global fault id's stream (b-urg is fault 1).
    let by_fault_id: Vec<u64> = (1..=WRITES)
        .filter(|&h| draw(1 << 32 | 1, h) < threshold)
        .collect();
    assert_ne!(hits, by_fault_id);
}
