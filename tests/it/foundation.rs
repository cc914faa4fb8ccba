//! What a fault does in the kernel: which hit fires, on which process, with which effect on the
//! process and on the data of the syscall it hit; and who is never touched.
//!
//! Every test runs `fij run` on a scenario written to its own temp dir, with the workload
//! `fij-workload` (src/bin) as the target, and checks fij's exit status, its JSONL log, and what
//! the workload wrote.
use std::{
    fs::File,
    io::Read,
    os::unix::fs::OpenOptionsExt,
    path::Path,
    time::{Duration, Instant},
};

use fij_common::log::EndReason;
use fij_tests::{
    Ended, Fij, FijOutput, RunningFij, TempDir, alive, map_delete, map_of_process, map_update,
    numbered_lines, pid_of, read_lines, toml_str, wait_child, wait_until, workload,
};

/// A scenario with one target `w` running `command` (a TOML array) and one fault `f` on it,
/// whose other keys are the TOML lines `fault`.
fn one_fault(command: &str, fault: &str) -> String {
    format!(
        "[[target]]\nname = \"w\"\ncommand = {command}\n\n[[fault]]\nname = \"f\"\ntarget = \"w\"\n{fault}\n"
    )
}

const KILL_ON_WRITE: &str = "action = \"kill\"\ntrigger = { syscall = \"write\" }";
const USR1_ON_WRITE: &str =
    "action = \"signal\"\nsignal = \"SIGUSR1\"\ntrigger = { syscall = \"write\" }";

/// Test 1: the Nth write to a regular file is where the process dies, and that write's data
/// never lands (generic_perform_write checks fatal_signal_pending before copying).
#[test]
fn kill_on_nth_write_to_a_regular_file() {
    let dir = TempDir::new("nth-file");
    let out = dir.join("out.txt");
    let command = workload!().command(&[&"write-lines", &out, &"10"]);
    let scenario = dir.write(
        "s.toml",
        &one_fault(&command, &format!("{KILL_ON_WRITE}\nnth = 5")),
    );

    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    run.log.assert_injections("write", "SIGKILL", &[(5, pid)]);
    assert_eq!(run.log.exit_status(pid), "signal SIGKILL", "{run}");
    assert_eq!(run.log.end_reason(), EndReason::TargetsExited, "{run}");
    assert_eq!(
        read_lines(&out),
        numbered_lines(4),
        "the file must hold exactly lines 1-4"
    );
}

/// Test 1, pipe case: pipe_write copies without checking for a fatal signal first, so the data
/// of the killed 5th write does reach the reader.
#[test]
fn kill_on_nth_write_to_a_pipe_still_delivers_that_write() {
    let dir = TempDir::new("nth-pipe");
    let fifo = dir.fifo("pipe");
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            File::open(&fifo)
                .and_then(|mut f| f.read_to_string(&mut text))
                .expect("reading the FIFO");
            text
        })
    };
    let command = workload!().command(&[&"write-lines", &fifo, &"10"]);
    let scenario = dir.write(
        "s.toml",
        &one_fault(&command, &format!("{KILL_ON_WRITE}\nnth = 5")),
    );

    let run = Fij::run(&dir, &scenario).output();
    unblock_fifo_reader(&fifo);
    let text = reader.join().expect("the reader thread");
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    run.log.assert_injections("write", "SIGKILL", &[(5, pid)]);
    assert_eq!(run.log.exit_status(pid), "signal SIGKILL", "{run}");
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        numbered_lines(5),
        "the pipe must carry exactly lines 1-5"
    );
}

/// If the workload never opened the FIFO, the reader is still blocked in open(): a writer that
/// opens and closes it lets the reader see EOF. (Fails harmlessly with ENXIO otherwise.)
fn unblock_fifo_reader(fifo: &Path) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo);
}
/// Test 2: `every` + `count` with a handled signal: SIGUSR1 arrives right after writes 3 and 6
/// and never again; the workload carries on and exits 0.
#[test]
fn every_with_count_signals_exactly_count_times() {
    let dir = TempDir::new("every-count");
    let out = dir.join("out.txt");
    let command = workload!().command(&[&"usr1-lines", &out, &"10"]);
    let scenario = dir.write(
        "s.toml",
        &one_fault(&command, &format!("{USR1_ON_WRITE}\nevery = 3\ncount = 2")),
    );

    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    run.log
        .assert_injections("write", "SIGUSR1", &[(3, pid), (6, pid)]);
    assert_eq!(run.log.exit_status(pid), "code 0", "{run}");
    // Line i shows the signals received before it was written: +1 after writes 3 and 6.
    assert_eq!(read_lines(&out), usr1_lines(10, &[3, 6]));
}

/// What `usr1-lines FILE n` writes when SIGUSR1 arrives right after each write in `after`.
fn usr1_lines(n: u64, after: &[u64]) -> Vec<String> {
    let received = |i: u64| after.iter().filter(|&&w| w < i).count();
    (1..=n)
        .map(|i| format!("line {i} usr1={}", received(i)))
        .chain(std::iter::once(format!("end usr1={}", received(n + 1))))
        .collect()
}

/// Test 3: `nth` and `every` together are strace's first+step: hits 2, 5, 8; `count = 3` stops
/// hit 11 (the `end` line, which the series would match).
#[test]
fn nth_plus_every_is_first_plus_step() {
    let dir = TempDir::new("nth-every");
    let out = dir.join("out.txt");
    let command = workload!().command(&[&"usr1-lines", &out, &"10"]);
    let fault = format!("{USR1_ON_WRITE}\nnth = 2\nevery = 3\ncount = 3");
    let scenario = dir.write("s.toml", &one_fault(&command, &fault));

    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    run.log
        .assert_injections("write", "SIGUSR1", &[(2, pid), (5, pid), (8, pid)]);
    assert_eq!(run.log.exit_status(pid), "code 0", "{run}");
    assert_eq!(read_lines(&out), usr1_lines(10, &[2, 5, 8]));
}

/// Test 4: hits before `after` are not counted: 3 writes at once, a 1.5 s pause, 3 more;
/// `after = "700ms"`, `nth = 2` fires on the 5th write, logged as hit 2.
#[test]
fn after_starts_counting_late() {
    let dir = TempDir::new("after");
    let out = dir.join("out.txt");
    let command = workload!().command(&[
        &"write-lines",
        &out,
        &"6",
        &"--pause-after",
        &"3",
        &"--pause-ms",
        &"1500",
    ]);
    let fault = format!("{KILL_ON_WRITE}\nafter = \"700ms\"\nnth = 2");
    let scenario = dir.write("s.toml", &one_fault(&command, &fault));

    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    run.log.assert_injections("write", "SIGKILL", &[(2, pid)]);
    let t_ns = run.log.injections()[0]["t_ns"].as_u64().expect("t_ns");
    assert!(t_ns >= 700_000_000, "injected at {t_ns} ns, before `after`");
    assert_eq!(run.log.exit_status(pid), "signal SIGKILL", "{run}");
    assert_eq!(read_lines(&out), numbered_lines(4));
}

/// The per-process / per-target scenario: the workload's `fork` mode (parent writes 2 lines,
/// its child 2 more, then the parent reports how the child ended, with writev).
fn fork_run(per: &str) -> (fij_tests::FijOutput, Vec<String>, Vec<String>) {
    let dir = TempDir::new(&format!("per-{per}"));
    let (out, report) = (dir.join("out.txt"), dir.join("report.txt"));
    let command = workload!().command(&[&"fork", &out, &report]);
    let fault = format!("{KILL_ON_WRITE}\nnth = 3\nper = {}", toml_str(per));
    let scenario = dir.write("s.toml", &one_fault(&command, &fault));
    let run = Fij::run(&dir, &scenario).output();
    let (out, report) = (read_lines(&out), read_lines(&report));
    (run, out, report)
}

/// Test 5a: `per = "target"` counts the writes of the parent and its forked child together, so
/// the child's first write is hit 3 and the child is the one killed; the parent lives on.
#[test]
fn per_target_counts_across_forked_children() {
    let (run, out, report) = fork_run("target");
    run.assert_exit(0);
    let parent = run.log.target_pid("w");
    let forks = run.log.forks();
    assert_eq!(forks.len(), 1, "one fork record expected:\n{run}");
    assert_eq!(forks[0]["parent_pid"], parent, "{run}");
    let child = pid_of(forks[0]);
    run.log.assert_injections("write", "SIGKILL", &[(3, child)]);
    assert_eq!(run.log.exit_status(child), "signal SIGKILL", "{run}");
    assert_eq!(run.log.exit_status(parent), "code 0", "{run}");
    assert_eq!(
        out,
        ["parent 1", "parent 2"],
        "the child's killed write must not land"
    );
    assert_eq!(report, [format!("child {child} killed 9")]);
}

/// Test 5b: with the default `per = "process"`, each process has its own counter: 2 writes
/// each never reach `nth = 3`, nobody is killed.
#[test]
fn per_process_counts_each_process_on_its_own() {
    let (run, out, report) = fork_run("process");
    run.assert_exit(0);
    let parent = run.log.target_pid("w");
    let forks = run.log.forks();
    assert_eq!(forks.len(), 1, "one fork record expected:\n{run}");
    assert_eq!(forks[0]["parent_pid"], parent, "{run}");
    let child = pid_of(forks[0]);
    run.log.assert_injections("write", "SIGKILL", &[]);
    assert_eq!(run.log.exit_status(child), "code 0", "{run}");
    assert_eq!(run.log.exit_status(parent), "code 0", "{run}");
    assert_eq!(out, ["parent 1", "parent 2", "child 1", "child 2"]);
    assert_eq!(report, [format!("child {child} exited 0")]);
}

/// Test 6: a fault on `fsync` never fires on `write`.
#[test]
fn fault_on_one_syscall_ignores_others() {
    let dir = TempDir::new("other-syscall");
    let out = dir.join("out.txt");
    let command = workload!().command(&[&"write-lines", &out, &"5"]);
    let fault = "action = \"kill\"\ntrigger = { syscall = \"fsync\" }\nnth = 1";
    let scenario = dir.write("s.toml", &one_fault(&command, fault));

    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    run.log.assert_injections("fsync", "SIGKILL", &[]);
    assert_eq!(run.log.exit_status(pid), "code 0", "{run}");
    assert_eq!(read_lines(&out), numbered_lines(5));
}

/// Test 7: a process the test starts itself, running the same program while the campaign is
/// armed, is never signalled; the target, released afterwards, is killed on its first write.
#[test]
fn bystanders_are_never_signalled() {
    let dir = TempDir::new("bystander");
    let (target_out, bystander_out, go) = (
        dir.join("target.txt"),
        dir.join("bystander.txt"),
        dir.join("go"),
    );
    let w = workload!();
    let command = w.command(&[&"write-lines", &target_out, &"3", &"--wait-for", &go]);
    let scenario = dir.write(
        "s.toml",
        &one_fault(&command, &format!("{KILL_ON_WRITE}\nnth = 1")),
    );

    let mut fij = Fij::run(&dir, &scenario).spawn();
    fij.wait_armed();
    let mut bystander = w.spawn(&[&"write-lines", &bystander_out, &"20", &"--sleep-ms", &"5"]);
    let bystander_pid = bystander.id();
    assert_eq!(
        wait_child(&mut bystander, Duration::from_secs(10), "the bystander"),
        Ended::Code(0)
    );
    assert_eq!(read_lines(&bystander_out), numbered_lines(20));
    std::fs::write(&go, "").unwrap();

    let run = fij.wait();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    assert_ne!(pid, bystander_pid);
    run.log.assert_injections("write", "SIGKILL", &[(1, pid)]);
    assert_eq!(run.log.exit_status(pid), "signal SIGKILL", "{run}");
    assert!(
        run.log.exits_of(bystander_pid).is_empty(),
        "the bystander was seen as a target:\n{run}"
    );
    assert_eq!(read_lines(&target_out), Vec::<String>::new());
}

/// Test 8: when target A exits, its pid leaves the target set: a bystander that gets the same
/// pid (forced through ns_last_pid) writes freely although a fault would kill A's first write.
#[test]
fn a_recycled_pid_is_never_a_target() {
    let dir = TempDir::new("recycled-pid");
    let (bystander_out, go, end) = (dir.join("bystander.txt"), dir.join("go"), dir.join("end"));
    let w = workload!();
    let scenario = dir.write(
        "s.toml",
        &format!(
            "[[target]]\nname = \"a\"\ncommand = {}\n\n[[target]]\nname = \"b\"\ncommand = {}\n\n\
             [[fault]]\nname = \"f\"\ntarget = \"a\"\n{KILL_ON_WRITE}\nnth = 1\n",
            w.command(&[&"sleep", &"0"]),
            w.command(&[&"wait-for", &end]),
        ),
    );

    let mut fij = Fij::run(&dir, &scenario).spawn();
    fij.wait_armed();
    let log = fij.log();
    let (a, b) = (log.target_pid("a"), log.target_pid("b"));
    // A exits at once; fij reaps it, which frees its pid.
    wait_until(Duration::from_secs(10), "target A to be reaped", || {
        (!Path::new(&format!("/proc/{a}")).exists()).then_some(())
    });
    assert!(alive(b), "target B must keep the campaign running");

    let mut bystander = None;
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", a - 1))
            .expect("writing ns_last_pid");
        let mut child = w.spawn(&[&"write-lines", &bystander_out, &"5", &"--wait-for", &go]);
        if child.id() == a {
            bystander = Some(child);
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut bystander =
        bystander.unwrap_or_else(|| panic!("could not get pid {a} again in 50 tries"));
    std::fs::write(&go, "").unwrap();
    let ended = wait_child(
        &mut bystander,
        Duration::from_secs(10),
        "the bystander with A's pid",
    );
    assert_eq!(
        ended,
        Ended::Code(0),
        "the bystander with A's recycled pid {a} was signalled"
    );
    assert_eq!(read_lines(&bystander_out), numbered_lines(5));
    std::fs::write(&end, "").unwrap();

    let run = fij.wait();
    run.assert_exit(0);
    run.log.assert_injections("write", "SIGKILL", &[]);
    assert_eq!(
        run.log.exit_status(a),
        "code 0",
        "only A's own exit is logged for pid {a}:\n{run}"
    );
    assert_eq!(run.log.exit_status(b), "code 0", "{run}");
    assert_eq!(run.log.end_reason(), EndReason::TargetsExited, "{run}");
}

/// The syscall fij makes while it waits for events (checked with strace).
const FIJ_WAIT_SYSCALL: &str = if cfg!(target_arch = "x86_64") {
    "epoll_wait"
} else {
    "epoll_pwait"
};

/// Starts a campaign with a fault (SIGUSR1, count 1) on the syscall fij itself waits in, aimed
/// at a sleeping workload; once armed, slips fij's own pid into the kernel's target set behind
/// its back (`TARGETS`: tgid → `TargetProcess { target_idx: 0, instance: 0, generation: 0,
/// counter_slot: 0 }` (no counter row: it counts in the hash),
/// and its byte in `TARGET_FLAGS`, the syscall hook's filter), so the fault hits fij. Checks that the kernel refused to signal it and that fij lives on.
/// Returns the running fij and the id of its TARGETS map.
fn fij_in_its_own_target_set(dir: &TempDir) -> (RunningFij, u64) {
    let command = workload!().command(&[&"sleep", &"60000"]);
    let fault = format!(
        "action = \"signal\"\nsignal = \"SIGUSR1\"\ntrigger = {{ syscall = \"{FIJ_WAIT_SYSCALL}\" }}"
    );
    let scenario = dir.write(
        "s.toml",
        &format!("duration = \"3s\"\n{}", one_fault(&command, &fault)),
    );
    let mut fij = Fij::run(dir, &scenario).spawn();
    fij.wait_armed();
    let fij_pid = fij.pid();
    let targets = map_of_process(fij_pid, "TARGETS");
    map_update(
        targets,
        &fij_pid.to_le_bytes(),
        &[0; size_of::<fij_common::TargetProcess>()],
    );
    let flags = map_of_process(fij_pid, "TARGET_FLAGS");
    map_update(flags, &fij_pid.to_le_bytes(), &[1]);
    // As the loader does after an addition: move the target set's epoch on (its own counter,
    // index 1), or the syscall hook may go on trusting that fij's threads are no targets.
    let epoch = map_of_process(fij_pid, "TARGET_SET_EPOC"); // names are cut at 15 bytes
    map_update(epoch, &1u32.to_le_bytes(), &(1u64 << 40).to_le_bytes());
    let injection = fij.wait_for_record("the refused injection", Duration::from_secs(2), |r| {
        r["event"] == "injection"
    });
    assert!(fij.running(), "fij must survive a fault aimed at itself");
    assert_eq!(pid_of(&injection), fij_pid, "{injection}");
    assert_eq!(injection["syscall"], FIJ_WAIT_SYSCALL, "{injection}");
    assert_eq!(injection["signal"], "SIGUSR1", "{injection}");
    assert_eq!(injection["delivered"], false, "{injection}");
    let error = injection["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {injection}"));
    assert!(error.contains("refused"), "{injection}");
    (fij, targets)
}

/// The end of the campaigns of test 9: by `duration`, one failed injection (exit 1), the
/// sleeping workload terminated.
fn assert_ended_with_one_refused_injection(run: &FijOutput) {
    run.assert_exit(1);
    assert_eq!(
        run.log.injections().len(),
        1,
        "count = 1 allows one attempt:\n{run}"
    );
    let end = run.log.end();
    assert_eq!(end["reason"], "duration", "{run}");
    assert_eq!(end["failed_injections"], 1, "{run}");
    assert_eq!(end["injections"], 1, "{run}");
    let sleeper = run.log.target_pid("w");
    assert_eq!(run.log.exit_status(sleeper), "signal SIGTERM", "{run}");
}

/// Test 9: the protection of fij itself is in the kernel, not only in userspace: with fij's own
/// pid in the target set, a fault on the syscall fij waits in hits fij and the kernel refuses to
/// signal it. fij keeps running, logs the failed injection, and exits 1. (fij is taken back out
/// of the set once the refusal is seen: what fij then does with its own pid in the set is the
/// next test.)
#[test]
fn kernel_refuses_to_signal_fij_itself() {
    let dir = TempDir::new("protect-self");
    let (fij, targets) = fij_in_its_own_target_set(&dir);
    map_delete(targets, &fij.pid().to_le_bytes());
    assert_ended_with_one_refused_injection(&fij.wait());
}

/// fij never signals itself, also not from userspace: with its own pid left in the target set
/// (as a process of a spawned target), ending the campaign must not SIGTERM/SIGKILL fij.
#[test]
fn fij_never_signals_itself_when_ending_a_campaign() {
    let dir = TempDir::new("protect-self-end");
    let (fij, _) = fij_in_its_own_target_set(&dir);
    assert_ended_with_one_refused_injection(&fij.wait());
}

/// Test 13: `duration` ends a campaign whose target would run forever: the target gets SIGTERM,
/// fij logs `reason: "duration"` and exits 0 soon after.
#[test]
fn duration_ends_the_campaign_and_terminates_spawned_targets() {
    let dir = TempDir::new("duration");
    let command = workload!().command(&[&"sleep", &"1000000"]);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "duration = \"1s\"\n{}",
            one_fault(&command, &format!("{KILL_ON_WRITE}\nnth = 1"))
        ),
    );

    let started = Instant::now();
    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    let end = run.log.end();
    assert_eq!(end["reason"], "duration", "{run}");
    let t_ns = end["t_ns"].as_u64().expect("end.t_ns");
    assert!(
        (1_000_000_000..4_000_000_000).contains(&t_ns),
        "campaign lasted {t_ns} ns:\n{run}"
    );
    run.log.assert_injections("write", "SIGKILL", &[]);
    assert_eq!(run.log.exit_status(pid), "signal SIGTERM", "{run}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fij took {:?}",
        started.elapsed()
    );
}

/// A process that is already running, busy in a syscall loop on one CPU when fij adopts it by
/// pid, is hit from fij's start on. It runs SCHED_FIFO (started through `chrt`), so nothing
/// preempts it on its CPU while it lives (~0.6 s, under the 0.95 s RT throttle): the per-CPU
/// "may run a target" flags that spare non-targets `fij_sys_enter`'s work must say "maybe" for
/// a CPU until its next context switch, or this loop would never be seen. Its 1000th getppid
/// after fij armed kills it.
#[test]
fn a_busy_process_adopted_by_pid_is_killed_on_its_nth_syscall() {
    let dir = TempDir::new("adopt-busy");
    // A first campaign fills fij's per-boot layout cache, so this one arms well within the
    // loop's life.
    let warm_up = dir.write(
        "warm-up.toml",
        "[[target]]\nname = \"t\"\ncommand = [\"true\"]\n\n[[fault]]\nname = \"f\"\n\
         target = \"t\"\naction = \"kill\"\ntrigger = { syscall = \"getppid\" }\n",
    );
    Fij::run(&dir, &warm_up).output().assert_exit(0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = (cpus - 1).to_string();
    let mut busy = std::process::Command::new("chrt")
        .args(["--fifo", "10", env!("CARGO_BIN_EXE_fij-syscall-loop")])
        // Long enough (seconds) to outlive fij's start on a loaded machine; killed at its
        // 1000th call once adopted.
        .args(["--cpu", &cpu, "20000000"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawning chrt fij-syscall-loop");
    let pid = busy.id(); // chrt execs the loop: same pid
    wait_until(Duration::from_secs(5), "the loop to run", || {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        exe.ends_with("fij-syscall-loop").then_some(())
    });
    let scenario = dir.write(
        "s.toml",
        &format!(
            "[[target]]\nname = \"busy\"\npid = {pid}\n\n[[fault]]\nname = \"f\"\n\
             target = \"busy\"\naction = \"kill\"\ntrigger = {{ syscall = \"getppid\" }}\n\
             nth = 1000\n"
        ),
    );

    let run = Fij::run(&dir, &scenario).output();
    let ended = wait_child(&mut busy, Duration::from_secs(10), "the busy loop");
    run.assert_exit(0);
    run.log
        .assert_injections("getppid", "SIGKILL", &[(1000, pid)]);
    assert_eq!(ended, Ended::Signal(9), "{run}");
    assert_eq!(run.log.exit_status(pid), "signal SIGKILL", "{run}");
}

/// Issue 18, item 7: `user = "nobody"` runs the command as nobody (uid and gid 65534, no
/// supplementary group) from its exec on, and it is still armed from its first instruction:
/// killed on its 3rd write, which never lands.
#[test]
fn a_command_runs_as_its_user_and_is_still_killed_on_its_nth_write() {
    let dir = TempDir::new("user-nobody");
    // nobody must be able to create its file there.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = dir.join("out.txt");
    let command = workload!().command(&[&"id-lines", &out, &"5"]);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "[[target]]\nname = \"w\"\ncommand = {command}\nuser = \"nobody\"\n\n[[fault]]\n\
             name = \"f\"\ntarget = \"w\"\n{KILL_ON_WRITE}\nnth = 3\n"
        ),
    );
    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    run.log.assert_injections("write", "SIGKILL", &[(3, pid)]);
    assert_eq!(run.log.exit_status(pid), "signal SIGKILL", "{run}");
    let ids = "uid=65534 euid=65534 gid=65534 egid=65534 groups=0";
    assert_eq!(
        read_lines(&out),
        [format!("line 1 {ids}"), format!("line 2 {ids}")],
        "{run}"
    );
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
}
