//! `action = "error"`: calls that fail with a chosen errno, decided in the cgroup-v2 socket hooks
//! (`bpf_set_retval`). The victim (`fij-workload connects` / `sendtos`) prints the errno each of
//! its calls returned; the tests read that, not fij's log alone. Bystanders (the test process
//! itself and a workload fij does not target) make the same calls meanwhile and must not fail.
use std::{
    net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::Command,
    time::Duration,
};

use fij_tests::{
    Fij, Log, TempDir, fij_bin, fij_timeout, read_lines, toml_str, wait_until, workload,
};
use serde_json::Value;

/// A listening loopback TCP port; connections complete in its backlog (never accepted).
fn listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a listener");
    let port = listener.local_addr().expect("listener address").port();
    (listener, port)
}

/// `call I ok` for every call of `calls`, `call I errno E` for those in `failed`.
fn expected_report(call: &str, calls: u64, failed: &[u64], errno: i32) -> Vec<String> {
    (1..=calls)
        .map(|i| match failed.contains(&i) {
            true => format!("{call} {i} errno {errno}"),
            false => format!("{call} {i} ok"),
        })
        .collect()
}

/// The injection records of fault `name`.
fn injections_of<'a>(log: &'a Log, name: &str) -> Vec<&'a Value> {
    log.injections()
        .into_iter()
        .filter(|r| r["fault"] == name)
        .collect()
}

fn hits(records: &[&Value]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r["hit"].as_u64().expect("hit"))
        .collect()
}

/// A target that does nothing until `go` exists: it keeps the campaign running while the test
/// checks bystanders.
fn idle_target(go: &Path) -> String {
    format!(
        "[[target]]\nname = \"idle\"\ncommand = {}\n",
        workload!().command(&[&"wait-for", &go])
    )
}

/// The 3rd connect of a target fails with ECONNREFUSED, its four others succeed; while the
/// hooks are attached, the test's own connects and a workload that is not a target all succeed;
/// the log has the one injection, with its hit and errno.
#[test]
fn the_third_connect_of_a_target_is_refused_and_no_one_elses() {
    let dir = TempDir::new("errno-connect");
    let (_listener, port) = listener();
    let report = dir.join("client-report");
    let go = dir.join("go");
    let client = workload!().command(&[&"connects", &port.to_string(), &"5", &report]);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "seed = 1\n[[target]]\nname = \"client\"\ncommand = {client}\n{}\n\
             [[fault]]\nname = \"refused\"\ntarget = \"client\"\naction = \"error\"\n\
             errno = \"ECONNREFUSED\"\ntrigger = {{ syscall = \"connect\" }}\nnth = 3\n",
            idle_target(&go)
        ),
    );
    let mut fij = Fij::run(&dir, &scenario).spawn();
    fij.wait_armed();
    wait_until(fij_timeout(), "the client's 5 connects", || {
        (lines_so_far(&report).len() == 5).then_some(())
    });
    // Bystanders while the hooks are attached: this process, and a workload fij does not target.
    for i in 1..=5 {
        TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .unwrap_or_else(|e| panic!("the test's connect {i} failed: {e}"));
    }
    let bystander_report = dir.join("bystander-report");
    let status = workload!()
        .spawn(&[&"connects", &port.to_string(), &"5", &bystander_report])
        .wait()
        .expect("waiting for the bystander");
    assert!(status.success(), "bystander: {status:?}");
    std::fs::write(&go, "").expect("creating the go file");
    let out = fij.wait();
    out.assert_exit(0);

    assert_eq!(
        read_lines(&report),
        expected_report("connect", 5, &[3], libc::ECONNREFUSED),
        "{out}"
    );
    assert_eq!(
        read_lines(&bystander_report),
        expected_report("connect", 5, &[], 0),
        "{out}"
    );
    let injections = injections_of(&out.log, "refused");
    assert_eq!(hits(&injections), [3], "{out}");
    let client_pid = out.log.target_pid("client");
    assert_eq!(injections[0]["pid"], client_pid, "{out}");
    assert_eq!(injections[0]["errno"], "ECONNREFUSED", "{out}");
    assert_eq!(injections[0]["signal"], "none", "{out}");
    assert_eq!(injections[0]["delivered"], true, "{out}");
    assert_eq!(out.log.exit_status(client_pid), "code 0", "{out}");
    assert!(
        out.stderr
            .contains("1 injection(s), trigger connect, the call returned ECONNREFUSED"),
        "the summary names the errno:\n{out}"
    );
}

/// The same over IPv6 (the `connect6` hook): the 3rd of five connects to [::1]:PORT (`port`
/// set) is refused with ECONNREFUSED, as the victim prints; connects to [::1] on another
/// listening port are no hits; the test's own connects and a bystander's all succeed.
#[test]
fn the_third_ipv6_connect_of_a_target_is_refused_and_no_one_elses() {
    let dir = TempDir::new("errno-connect6");
    let listen = || {
        let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("binding [::1]");
        let port = listener.local_addr().expect("listener address").port();
        (listener, port)
    };
    let ((_listener, port), (_other, other_port)) = (listen(), listen());
    let report = dir.join("client-report");
    let other_report = dir.join("other-report");
    let go = dir.join("go");
    let client = workload!().command(&[&"connects6", &port.to_string(), &"5", &report]);
    let other = workload!().command(&[&"connects6", &other_port.to_string(), &"3", &other_report]);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "seed = 1\n[[target]]\nname = \"client\"\ncommand = {client}\n\
             [[target]]\nname = \"other\"\ncommand = {other}\n{}\n\
             [[fault]]\nname = \"refused\"\ntarget = \"client\"\naction = \"error\"\n\
             errno = \"ECONNREFUSED\"\ntrigger = {{ syscall = \"connect\", port = {port} }}\n\
             nth = 3\n\
             [[fault]]\nname = \"other-port\"\ntarget = \"other\"\naction = \"error\"\n\
             errno = \"ECONNREFUSED\"\ntrigger = {{ syscall = \"connect\", port = {port} }}\n",
            idle_target(&go)
        ),
    );
    let mut fij = Fij::run(&dir, &scenario).spawn();
    fij.wait_armed();
    wait_until(fij_timeout(), "the client's 5 connects", || {
        (lines_so_far(&report).len() == 5).then_some(())
    });
    for i in 1..=5 {
        TcpStream::connect((Ipv6Addr::LOCALHOST, port))
            .unwrap_or_else(|e| panic!("the test's connect {i} to [::1] failed: {e}"));
    }
    let bystander_report = dir.join("bystander-report");
    let status = workload!()
        .spawn(&[&"connects6", &port.to_string(), &"5", &bystander_report])
        .wait()
        .expect("waiting for the bystander");
    assert!(status.success(), "bystander: {status:?}");
    std::fs::write(&go, "").expect("creating the go file");
    let out = fij.wait();
    out.assert_exit(0);

    assert_eq!(
        read_lines(&report),
        expected_report("connect", 5, &[3], libc::ECONNREFUSED),
        "{out}"
    );
    assert_eq!(
        read_lines(&other_report),
        expected_report("connect", 3, &[], 0),
        "connects to another port are no hits\n{out}"
    );
    assert_eq!(
        read_lines(&bystander_report),
        expected_report("connect", 5, &[], 0),
        "{out}"
    );
    let injections = injections_of(&out.log, "refused");
    assert_eq!(hits(&injections), [3], "{out}");
    assert_eq!(injections[0]["pid"], out.log.target_pid("client"), "{out}");
    assert_eq!(injections[0]["errno"], "ECONNREFUSED", "{out}");
    assert!(injections_of(&out.log, "other-port").is_empty(), "{out}");
}

/// UDP `sendto`s with an address, `every = 2`, `port` set: the 2nd and 4th of six fail with the
/// errno asked for (ENETUNREACH); a datagram to another port is no hit; the test's own sendtos
/// to the same port go through.
#[test]
fn udp_sendto_fails_with_the_errno_asked_for() {
    let dir = TempDir::new("errno-sendto");
    let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a UDP receiver");
    let port = receiver.local_addr().expect("receiver address").port();
    let report = dir.join("sender-report");
    let go = dir.join("go");
    let other_report = dir.join("other-port-report");
    let sender = workload!().command(&[&"sendtos", &port.to_string(), &"6", &report]);
    // The same target sending to another port first: not a hit of the port-filtered fault.
    let other = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding another receiver");
    let other_port = other.local_addr().expect("address").port();
    let sender_elsewhere =
        workload!().command(&[&"sendtos", &other_port.to_string(), &"3", &other_report]);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "seed = 1\n[[target]]\nname = \"elsewhere\"\ncommand = {sender_elsewhere}\n\
             [[target]]\nname = \"sender\"\ncommand = {sender}\n{}\n\
             [[fault]]\nname = \"dropped\"\ntarget = \"sender\"\naction = \"error\"\n\
             errno = \"ENETUNREACH\"\ntrigger = {{ syscall = \"sendto\", port = {port} }}\n\
             every = 2\ncount = 10\n\
             [[fault]]\nname = \"not-this-port\"\ntarget = \"elsewhere\"\naction = \"error\"\n\
             errno = \"ENETUNREACH\"\ntrigger = {{ syscall = \"sendto\", port = {port} }}\n",
            idle_target(&go)
        ),
    );
    let mut fij = Fij::run(&dir, &scenario).spawn();
    fij.wait_armed();
    wait_until(fij_timeout(), "the sender's 6 sendtos", || {
        (lines_so_far(&report).len() == 6 && lines_so_far(&other_report).len() == 3).then_some(())
    });
    let me = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the test's socket");
    for i in 1..=4 {
        me.send_to(b"y", (Ipv4Addr::LOCALHOST, port))
            .unwrap_or_else(|e| panic!("the test's sendto {i} failed: {e}"));
    }
    std::fs::write(&go, "").expect("creating the go file");
    let out = fij.wait();
    out.assert_exit(0);

    assert_eq!(
        read_lines(&report),
        expected_report("sendto", 6, &[2, 4, 6], libc::ENETUNREACH),
        "{out}"
    );
    assert_eq!(
        read_lines(&other_report),
        expected_report("sendto", 3, &[], 0),
        "{out}"
    );
    assert_eq!(
        hits(&injections_of(&out.log, "dropped")),
        [2, 4, 6],
        "{out}"
    );
    assert!(injections_of(&out.log, "not-this-port").is_empty(), "{out}");
    // What was let through arrived: 3 of the sender's datagrams and the test's 4.
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut arrived = 0;
    let mut buf = [0u8; 8];
    while receiver.recv_from(&mut buf).is_ok() {
        arrived += 1;
    }
    assert_eq!(arrived, 3 + 4, "datagrams received\n{out}");
}

/// `fij plan SCENARIO --json --seed SEED --hits HITS`: the hits fault 0 fires on.
fn planned_hits(scenario: &Path, seed: u64, hits: u64) -> Vec<u64> {
    let out = Command::new(fij_bin())
        .arg("plan")
        .arg(scenario)
        .args(["--json", "--seed", &seed.to_string()])
        .args(["--hits", &hits.to_string()])
        .output()
        .expect("running fij plan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(plan["faults"][0]["returns"], "ECONNREFUSED", "{plan}");
    plan["faults"][0]["fires"]
        .as_array()
        .expect("fires")
        .iter()
        .map(|h| h["hit"].as_u64().expect("hit"))
        .collect()
}

/// `probability = 0.3` on 30 connects, three seeds: the connects that failed in the victim are
/// the hits `fij plan` listed for that seed, and the log's injections are the same hits.
#[test]
fn probabilistic_connect_failures_match_the_plan_for_three_seeds() {
    const CONNECTS: u64 = 30;
    let (_listener, port) = listener();
    for seed in [1u64, 2, 3] {
        let dir = TempDir::new(&format!("errno-plan-{seed}"));
        let report = dir.join("report");
        let client = workload!().command(&[
            &"connects",
            &port.to_string(),
            &CONNECTS.to_string(),
            &report,
        ]);
        let scenario = dir.write(
            "s.toml",
            &format!(
                "[[target]]\nname = \"client\"\ncommand = {client}\n\
                 [[fault]]\nname = {}\ntarget = \"client\"\naction = \"error\"\n\
                 errno = \"ECONNREFUSED\"\ntrigger = {{ syscall = \"connect\" }}\n\
                 probability = 0.3\ncount = 1000\n",
                toml_str("maybe-refused")
            ),
        );
        let planned = planned_hits(&scenario, seed, CONNECTS);
        assert!(
            !planned.is_empty() && planned.len() < CONNECTS as usize,
            "seed {seed}: a plan that tells something: {planned:?}"
        );
        let out = Fij::run(&dir, &scenario)
            .arg("--seed")
            .arg(seed.to_string())
            .spawn()
            .wait();
        out.assert_exit(0);
        assert_eq!(
            read_lines(&report),
            expected_report("connect", CONNECTS, &planned, libc::ECONNREFUSED),
            "seed {seed}: the victim's failed connects are the plan's\n{out}"
        );
        assert_eq!(
            hits(&injections_of(&out.log, "maybe-refused")),
            planned,
            "seed {seed}\n{out}"
        );
        println!("seed {seed}: connects {planned:?} refused, as planned");
    }
}

/// A call no mechanism of fij can fail for a process fij does not spawn (`mkdir` of a `comm`
/// selector target: no cgroup hook; no BPF LSM hook of fij's, whereas `write` has one, which
/// kernels running BPF LSM (the lab's 6.1 and 6.12) accept; no program of fij's for kprobe override
/// or trampolines; and no exec of fij's to put a seccomp filter before) is refused by `fij
/// validate` and `fij run` at the trigger, with the reason, exit 2, and nothing armed.
#[test]
fn a_call_this_kernel_cannot_fail_is_refused_at_its_trigger() {
    let dir = TempDir::new("errno-refused");
    let scenario = dir.write(
        "s.toml",
        "[[target]]\nname = \"w\"\ncomm = \"fij-workload\"\n\
         [[fault]]\nname = \"eio\"\ntarget = \"w\"\naction = \"error\"\nerrno = \"EIO\"\n\
         trigger = { syscall = \"mkdir\" }\nnth = 2\n",
    );
    let expected = format!(
        "{}:9:11: fault `eio`: fij cannot fail `mkdir` of this target",
        scenario.display()
    );
    let validate = Fij::validate(&scenario).output();
    validate.assert_exit(2);
    assert!(validate.stderr.contains(&expected), "{validate}");
    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(2);
    assert!(run.stderr.contains(&expected), "{run}");
    assert!(run.log.is_empty(), "nothing may run: {run}");
}

/// socket, setsockopt, getsockopt and bind fail through their hooks, each on the hit asked
/// for, with its errno; a call on a socket that was never created fails with EBADF before any
/// hook and is no hit (so bind's 2nd hit is in round 3, not round 2).
#[test]
fn socket_sockopt_and_bind_fail_on_their_hits() {
    let dir = TempDir::new("errno-sockcalls");
    let report = dir.join("report");
    let command = workload!().command(&[&"sockcalls", &"3", &report]);
    let fault = |name: &str, syscall: &str, errno: &str, nth: u32| {
        format!(
            "[[fault]]\nname = \"{name}\"\ntarget = \"w\"\naction = \"error\"\n\
             errno = \"{errno}\"\ntrigger = {{ syscall = \"{syscall}\" }}\nnth = {nth}\n"
        )
    };
    let scenario = dir.write(
        "s.toml",
        &format!(
            "seed = 1\n[[target]]\nname = \"w\"\ncommand = {command}\n{}{}{}{}",
            fault("no-socket", "socket", "EMFILE", 2),
            fault("no-set", "setsockopt", "EINVAL", 1),
            fault("no-get", "getsockopt", "ENOPROTOOPT", 2),
            fault("no-bind", "bind", "EADDRINUSE", 2),
        ),
    );
    let out = Fij::run(&dir, &scenario).spawn().wait();
    out.assert_exit(0);
    let (emfile, einval, enoprotoopt, eaddrinuse, ebadf) = (
        libc::EMFILE,
        libc::EINVAL,
        libc::ENOPROTOOPT,
        libc::EADDRINUSE,
        libc::EBADF,
    );
    assert_eq!(
        read_lines(&report),
        [
            "1 socket ok".to_string(),
            format!("1 setsockopt errno {einval}"),
            "1 getsockopt ok".into(),
            "1 bind ok".into(),
            format!("2 socket errno {emfile}"),
            format!("2 setsockopt errno {ebadf}"),
            format!("2 getsockopt errno {ebadf}"),
            format!("2 bind errno {ebadf}"),
            "3 socket ok".into(),
            "3 setsockopt ok".into(),
            format!("3 getsockopt errno {enoprotoopt}"),
            format!("3 bind errno {eaddrinuse}"),
        ],
        "{out}"
    );
    for (fault, hit, errno) in [
        ("no-socket", 2, "EMFILE"),
        ("no-set", 1, "EINVAL"),
        ("no-get", 2, "ENOPROTOOPT"),
        ("no-bind", 2, "EADDRINUSE"),
    ] {
        let injections = injections_of(&out.log, fault);
        assert_eq!(hits(&injections), [hit], "{fault}\n{out}");
        assert_eq!(injections[0]["errno"], errno, "{fault}\n{out}");
    }
}

/// A spawned target's calls that no cgroup hook can fail go through its seccomp filter: its
/// 3rd `write` to a file fails with EIO (the victim says so), the data of that call never
/// lands, the other writes do; `retval = 0` makes the 5th return 0 without writing; the log
/// says fij answered (`by = "seccomp"`) on those hits.
#[test]
fn a_spawned_targets_third_write_fails_with_eio_and_its_data_never_lands() {
    let dir = TempDir::new("errno-seccomp-write");
    let file = dir.join("out");
    let report = dir.join("report");
    let command = workload!().command(&[&"write-lines-errno", &file, &"6", &report]);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "seed = 1\n[[target]]\nname = \"w\"\ncommand = {command}\n\
             [[fault]]\nname = \"eio\"\ntarget = \"w\"\naction = \"error\"\nerrno = \"EIO\"\n\
             trigger = {{ syscall = \"write\" }}\nnth = 3\n\
             [[fault]]\nname = \"nothing-written\"\ntarget = \"w\"\naction = \"error\"\n\
             retval = 0\ntrigger = {{ syscall = \"write\" }}\nnth = 5\n"
        ),
    );
    let out = Fij::run(&dir, &scenario).spawn().wait();
    out.assert_exit(0);
    assert_eq!(
        read_lines(&report),
        [
            "write 1 ok".to_string(),
            "write 2 ok".into(),
            format!("write 3 errno {}", libc::EIO),
            "write 4 ok".into(),
            "write 5 returned 0".into(),
            "write 6 ok".into(),
        ],
        "{out}"
    );
    assert_eq!(
        read_lines(&file),
        ["line 1", "line 2", "line 4", "line 6"],
        "the failed and the faked writes wrote nothing\n{out}"
    );
    for (fault, hit, returned) in [("eio", 3, "EIO"), ("nothing-written", 5, "retval 0")] {
        let injections = injections_of(&out.log, fault);
        assert_eq!(hits(&injections), [hit], "{fault}\n{out}");
        assert_eq!(injections[0]["errno"], returned, "{fault}\n{out}");
        assert_eq!(injections[0]["by"], "seccomp", "{fault}\n{out}");
        assert_eq!(
            injections[0]["pid"],
            out.log.target_pid("w"),
            "{fault}\n{out}"
        );
    }
}

/// The seccomp path decides with the kernel's rules and seeded stream: two spawned targets
/// (faults 0 and 1: two streams), 30 writes each, `probability = 0.3`: the writes that failed in
/// each victim are the hits `fij plan` lists for its fault, the log's injections are the same,
/// and exactly those lines are missing from its file.
#[test]
fn probabilistic_write_failures_on_the_seccomp_path_match_the_plan() {
    const SEED: u64 = 5;
    let dir = TempDir::new("errno-seccomp-plan");
    let target = |name: &str| {
        let report = dir.join(&format!("{name}-report"));
        let file = dir.join(&format!("{name}-out"));
        (
            format!(
                "[[target]]\nname = \"{name}\"\ncommand = {}\n",
                workload!().command(&[&"write-lines-errno", &file, &"30", &report])
            ),
            report,
            file,
        )
    };
    let (a, a_report, a_file) = target("a");
    let (b, b_report, b_file) = target("b");
    let fault = |name: &str, target: &str| {
        format!(
            "[[fault]]\nname = \"{name}\"\ntarget = \"{target}\"\naction = \"error\"\n\
             errno = \"ENOSPC\"\ntrigger = {{ syscall = \"write\" }}\nprobability = 0.3\n\
             count = 1000\n"
        )
    };
    let scenario = dir.write(
        "s.toml",
        &format!("{a}{b}{}{}", fault("fa", "a"), fault("fb", "b")),
    );
    let out = Command::new(fij_bin())
        .arg("plan")
        .arg(&scenario)
        .args(["--json", "--seed", &SEED.to_string(), "--hits", "30"])
        .output()
        .expect("fij plan");
    assert!(out.status.success());
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let planned = |i: usize| -> Vec<u64> {
        plan["faults"][i]["fires"]
            .as_array()
            .expect("fires")
            .iter()
            .map(|h| h["hit"].as_u64().expect("hit"))
            .collect()
    };
    let run = Fij::run(&dir, &scenario)
        .arg("--seed")
        .arg(SEED.to_string())
        .spawn()
        .wait();
    run.assert_exit(0);
    for (i, (fault, report, file)) in [("fa", &a_report, &a_file), ("fb", &b_report, &b_file)]
        .into_iter()
        .enumerate()
    {
        let planned = planned(i);
        assert!(!planned.is_empty(), "{fault}: a plan that tells something");
        assert_eq!(
            read_lines(report),
            expected_report("write", 30, &planned, libc::ENOSPC),
            "{fault}: the victim's failed writes are the plan's\n{run}"
        );
        assert_eq!(
            hits(&injections_of(&run.log, fault)),
            planned,
            "{fault}\n{run}"
        );
        let landed: Vec<String> = (1..=30u64)
            .filter(|k| !planned.contains(k))
            .map(|k| format!("line {k}"))
            .collect();
        assert_eq!(read_lines(file), landed, "{fault}\n{run}");
        println!("{fault}: writes {planned:?} failed with ENOSPC, as planned");
    }
}

/// An adopted process (no seccomp filter can be put into it) through the BPF LSM path: its 3rd
/// `write` fails with EIO (the victim prints it) and that line never lands, in the
/// `file_permission` hook; its `writev`s (the report), which pass the same hook, are no hits;
/// a bystander writing meanwhile is not failed. On a kernel without BPF LSM (this machine's
/// host: the load is refused with EPERM) `fij validate` refuses the fault at its trigger, with
/// the reason, and the test prints a skip; under `cargo xtask vm --kernel debian13` it runs.
#[test]
fn an_adopted_targets_third_write_fails_with_eio_through_bpf_lsm() {
    let dir = TempDir::new("errno-lsm");
    let (go, file, report) = (dir.join("go"), dir.join("out"), dir.join("report"));
    let victim = workload!().argv(&[&"write-lines-errno", &file, &"6", &report]);
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.01; done; exec {}",
        go.display(),
        victim.join(" ")
    );
    let mut adopted = Command::new("/bin/sh")
        .args(["-c", &script])
        .spawn()
        .expect("spawning the process to adopt");
    let scenario = dir.write(
        "s.toml",
        &format!(
            "seed = 1\n[[target]]\nname = \"w\"\npid = {}\n\
             [[fault]]\nname = \"eio\"\ntarget = \"w\"\naction = \"error\"\nerrno = \"EIO\"\n\
             trigger = {{ syscall = \"write\" }}\nnth = 3\n",
            adopted.id()
        ),
    );
    let validate = Command::new(fij_bin())
        .arg("validate")
        .arg(&scenario)
        .output()
        .expect("fij validate");
    let stderr = String::from_utf8_lossy(&validate.stderr);
    if !validate.status.success() {
        let _ = adopted.kill();
        let _ = adopted.wait();
        assert_eq!(validate.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("s.toml:10:11: fault `eio`: fij cannot fail `write` of this target (BPF LSM, `file_permission`: "),
            "refused at the trigger, with the reason:\n{stderr}"
        );
        fij_tests::tell(&format!(
            "skipping the BPF LSM error path: this kernel has no usable BPF LSM ({})",
            stderr.trim()
        ));
        return;
    }
    let mut fij = Fij::run(&dir, &scenario).spawn();
    fij.wait_armed();
    std::fs::write(&go, "").expect("creating the go file");
    let bystander_report = dir.join("bystander-report");
    let status = workload!()
        .spawn(&[
            &"write-lines-errno",
            &dir.join("bystander-out"),
            &"6",
            &bystander_report,
        ])
        .wait()
        .expect("waiting for the bystander");
    assert!(status.success(), "bystander: {status:?}");
    adopted.wait().expect("waiting for the adopted process");
    let out = fij.wait();
    out.assert_exit(0);
    assert_eq!(
        read_lines(&report),
        expected_report("write", 6, &[3], libc::EIO),
        "{out}"
    );
    assert_eq!(
        read_lines(&file),
        ["line 1", "line 2", "line 4", "line 5", "line 6"],
        "the failed write wrote nothing\n{out}"
    );
    assert_eq!(
        read_lines(&bystander_report),
        expected_report("write", 6, &[], 0),
        "{out}"
    );
    let injections = injections_of(&out.log, "eio");
    assert_eq!(hits(&injections), [3], "{out}");
    assert_eq!(injections[0]["errno"], "EIO", "{out}");
    assert_eq!(injections[0]["pid"], adopted.id(), "{out}");
    println!("BPF LSM: the adopted process's 3rd write failed with EIO; its writevs were no hits");
}

/// `per = "process"` on the seccomp path means what it means in the kernel: a new process
/// starts at hit 0, also one that got the pid of a process that exited (the kernel's counters are
/// deleted at the exit). The workload forks a child that writes 3 lines and exits, then a second
/// child with the same pid (`ns_last_pid`) that writes 3 lines: `nth = 3` fails the 3rd write of
/// each, and the log has two injections at hit 3 with the same pid.
#[test]
fn a_recycled_pid_starts_at_hit_zero_on_the_seccomp_path() {
    for attempt in 1..=5 {
        let dir = TempDir::new("errno-seccomp-recycled");
        let report = dir.join("report");
        let command =
            workload!().command(&[&"recycled-pid-writes", &dir.join("out"), &"3", &report]);
        let scenario = dir.write(
            "s.toml",
            &format!(
                "seed = 1\n[[target]]\nname = \"r\"\ncommand = {command}\n\
                 [[fault]]\nname = \"eio\"\ntarget = \"r\"\naction = \"error\"\n\
                 errno = \"EIO\"\ntrigger = {{ syscall = \"write\" }}\nnth = 3\n\
                 per = \"process\"\ncount = 2\n"
            ),
        );
        let out = Fij::run(&dir, &scenario).spawn().wait();
        out.assert_exit(0);
        let pids = read_lines(&report);
        let words: Vec<&str> = pids[0].split_whitespace().collect();
        let (a, b) = (words[1], words[3]);
        if a != b {
            println!("attempt {attempt}: another process took pid {a} (the second child got {b})");
            continue;
        }
        let expected = expected_report("write", 3, &[3], libc::EIO);
        for child in ["a", "b"] {
            assert_eq!(
                read_lines(&dir.join(&format!("report.{child}"))),
                expected,
                "child {child} (pid {a})\n{out}"
            );
        }
        let injections = injections_of(&out.log, "eio");
        assert_eq!(hits(&injections), [3, 3], "{out}");
        for injection in &injections {
            assert_eq!(injection["pid"].to_string(), a, "{out}");
        }
        println!("pid {a}, twice: the 3rd write of each process failed");
        return;
    }
    panic!("5 attempts, and the second child never got the first one's pid");
}

/// fij SIGKILLed while it answers seccomp notifications (and fails connects in the cgroup
/// hooks), 30 times, at a random point of a busy writer's calls: every time its programs and
/// links go with it (`Fij::wait` checks), the spawned target `w` dies with it (its parent-death
/// signal) without one of its writes failing with ENOSYS (the guardian holds a duplicate of the
/// listener, so the kernel never answers for a missing one), and the descendant of target `sh`
/// (which fij does not kill when it dies, as for any spawned target's descendants) runs on: its
/// writes all succeed (the guardian lets them run) until it finishes, and the guardian exits
/// after it.
#[test]
fn a_sigkilled_fij_leaves_no_hook_its_target_dies_and_no_listed_call_fails_with_enosys() {
    const ROUNDS: usize = 30;
    const LINES: u64 = 20_000;
    let enosys = format!("errno {}", libc::ENOSYS);
    let mut fij_pids = Vec::new();
    for round in 1..=ROUNDS {
        let dir = TempDir::new("errno-sigkill");
        let report = dir.join("report");
        let child_report = dir.join("child-report");
        let command = workload!().command(&[
            &"write-lines-errno",
            &dir.join("out"),
            &"100000000",
            &report,
        ]);
        let child = workload!().argv(&[
            &"write-lines-errno",
            &dir.join("child-out"),
            &LINES.to_string(),
            &child_report,
        ]);
        let script = format!("{}; true", child.join(" "));
        let scenario = dir.write(
            "s.toml",
            &format!(
                "[[target]]\nname = \"w\"\ncommand = {command}\n\
                 [[target]]\nname = \"sh\"\ncommand = [\"/bin/sh\", \"-c\", {}]\n\
                 [[fault]]\nname = \"eio\"\ntarget = \"w\"\naction = \"error\"\n\
                 errno = \"EIO\"\ntrigger = {{ syscall = \"write\" }}\nevery = 1000\n\
                 count = 1000000\n\
                 [[fault]]\nname = \"child-eio\"\ntarget = \"sh\"\naction = \"error\"\n\
                 errno = \"EIO\"\ntrigger = {{ syscall = \"write\" }}\nnth = 2\n\
                 [[fault]]\nname = \"refused\"\ntarget = \"w\"\naction = \"error\"\n\
                 errno = \"ECONNREFUSED\"\ntrigger = {{ syscall = \"connect\" }}\n",
                toml_str(&script)
            ),
        );
        let mut fij = Fij::run(&dir, &scenario).spawn();
        fij.wait_armed();
        fij_pids.push(fij.pid());
        let target = fij.log().target_pid("w");
        // A random point of the writer's life: after its first failed write, and up to a few
        // thousand calls later (the descendant is then well into its writes too).
        wait_until(Duration::from_secs(20), "a failed write", || {
            lines_so_far(&report)
                .iter()
                .any(|l| l.ends_with(&format!("errno {}", libc::EIO)))
                .then_some(())
        });
        wait_until(
            Duration::from_secs(20),
            "the descendant's failed write",
            || (read_lines(&child_report).len() >= 2).then_some(()),
        );
        std::thread::sleep(Duration::from_micros((round as u64 * 7919) % 20_000));
        fij_tests::send_signal(fij.pid(), libc::SIGKILL);
        let out = fij.wait(); // fails unless every fij program is gone
        assert_eq!(out.ended, fij_tests::Ended::Signal(libc::SIGKILL), "{out}");
        wait_until(
            Duration::from_secs(10),
            "the target to die with fij",
            || (!fij_tests::alive(target)).then_some(()),
        );
        let lines = read_lines(&report);
        assert!(
            !lines.iter().any(|l| l.ends_with(&enosys)),
            "round {round}: the target saw ENOSYS: {:?}\n{out}",
            lines.iter().find(|l| l.ends_with(&enosys))
        );
        wait_until(Duration::from_secs(60), "the descendant's writes", || {
            (lines_so_far(&child_report).len() == LINES as usize).then_some(())
        });
        assert_eq!(
            read_lines(&child_report),
            expected_report("write", LINES, &[2], libc::EIO),
            "round {round}: the descendant's writes after fij died ran\n{out}"
        );
        println!(
            "round {round}: target died after {} writes, none ENOSYS; descendant's {LINES} \
             writes ran",
            lines.len()
        );
    }
    // Each guardian (`fij __guardian FIJ_PID`) ended with the last user of its listeners.
    wait_until(Duration::from_secs(10), "the guardians to exit", || {
        let guardians: Vec<u32> = fij_tests::processes_named("fij")
            .into_iter()
            .filter(|&p| {
                let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
                args.get(1) == Some(&&b"__guardian"[..])
                    && args.get(2).is_some_and(|pid| {
                        fij_pids.iter().any(|f| f.to_string().as_bytes() == *pid)
                    })
            })
            .collect();
        guardians.is_empty().then_some(())
    });
}

/// The lines of a file a workload is writing (none before it exists).
fn lines_so_far(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}
