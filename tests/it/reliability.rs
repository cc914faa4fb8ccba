//! What fij promises when it, a target or the machine misbehaves (docs/reliability.md).
//!
//! The hit-count check runs many campaigns under load; `FIJ_STRESS_RUNS=N` runs it N times
//! instead of the default (the figure in docs/reliability.md came from such a run).
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use fij_tests::{Fij, TempDir, workload};

/// Campaigns of the hit-count check in a normal test run.
const DEFAULT_STRESS_RUNS: u64 = 12;
/// Campaigns of the every-write-counted check in a normal test run: with the old per-CPU flag,
/// 3–6 % of them lost writes, so 100 of them passed by chance about once in 50 runs.
const DEFAULT_COUNTED_RUNS: u64 = 100;

/// Load that runs beside the checked campaigns until dropped: processes that switch all the
/// time, a stream of short-lived processes, and a second fij campaign that
/// starts and stops again and again (attaching and detaching its own `sys_enter` program).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    nappers: Vec<std::process::Child>,
    second_campaigns: Arc<AtomicU64>,
    processes: Arc<AtomicU64>,
}

impl Load {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let second_campaigns = Arc::new(AtomicU64::new(0));
        let processes = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        // Processes that switch all the time: each naps 20 µs again and again (a busier load,
        // such as pipe ping-pong on both CPUs, stalls RCU grace periods on this VM for seconds,
        // and with them fij's exit, which waits for some).
        let nappers = (0..3)
            .map(|_| workload!().spawn(&[&"naps", &"20", &"600000"]))
            .collect();
        // Short-lived bystanders.
        {
            let (stop, processes) = (stop.clone(), processes.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::process::Command::new("true").status();
                    processes.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // A second campaign, started and stopped in a loop.
        {
            let (stop, runs) = (stop.clone(), second_campaigns.clone());
            threads.push(std::thread::spawn(move || {
                let dir = TempDir::new("stress-second");
                let command = workload!().command(&[&"sleep", &"60000"]);
                let scenario = dir.write(
                    "s.toml",
                    &format!(
                        "duration = \"300ms\"\n[[target]]\nname = \"s\"\ncommand = {command}\n\n\
                         [[fault]]\nname = \"never\"\ntarget = \"s\"\naction = \"kill\"\n\
                         trigger = {{ syscall = \"getppid\" }}\nnth = 1000000\n"
                    ),
                );
                while !stop.load(Ordering::Relaxed) {
                    let _ = Fij::run(&dir, &scenario).spawn().wait();
                    runs.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        Self {
            stop,
            threads,
            nappers,
            second_campaigns,
            processes,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for napper in &mut self.nappers {
            let _ = napper.kill();
            let _ = napper.wait();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Issue 18, item 3: "kill on the 5000th getppid" under load — CPU migrations (the victim moves
/// itself every 700 calls in half the runs), context switches on both CPUs, short-lived
/// processes, and a second fij campaign attaching and detaching all the while. The victim keeps
/// its own count in shared memory around every call; the hit fij logged, the call the victim
/// died in and 5000 must agree in every run.
#[test]
fn nth_hit_is_exact_under_load() {
    let runs: u64 = std::env::var("FIJ_STRESS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_STRESS_RUNS);
    let load = Load::start();
    let mut wrong = Vec::new();
    let mut gaps = Vec::new();
    for run in 0..runs {
        let dir = TempDir::new("stress-nth");
        let record = dir.join("record");
        let migrate: &[&dyn AsRef<std::ffi::OsStr>] = if run % 2 == 1 {
            &[&"--migrate-every", &"700"]
        } else {
            &[]
        };
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"getppid-record", &record, &"20000"];
        args.extend_from_slice(migrate);
        let command = workload!().command(&args);
        let scenario = dir.write(
            "s.toml",
            &format!(
                "[[target]]\nname = \"v\"\ncommand = {command}\n\n[[fault]]\nname = \"k\"\n\
                 target = \"v\"\naction = \"kill\"\ntrigger = {{ syscall = \"getppid\" }}\n\
                 nth = 5000\n"
            ),
        );
        let out = Fij::run(&dir, &scenario).output();
        out.assert_exit(0);
        let pid = out.log.target_pid("v");
        let hits = out.log.injection_hits();
        let bytes = std::fs::read(&record).unwrap_or_default();
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
        };
        let (before, after) = (word(0), word(1));
        let status = out.log.exit_status(pid);
        // From the injection to the victim's exit, in kernel time: how late the signal landed.
        let ktime = |r: &serde_json::Value| r["ktime_ns"].as_u64().unwrap_or(0);
        if let ([injection], [exit]) = (&out.log.injections()[..], &out.log.exits_of(pid)[..]) {
            gaps.push(ktime(exit).saturating_sub(ktime(injection)));
        }
        // fij's own account: no getppid of the victim's after the one that fired.
        let after_injection = out
            .log
            .exits_of(pid)
            .first()
            .and_then(|e| e["hits_after_injection"].as_u64());
        let ok = hits == [(5000, pid)]
            && before == Some(5000)
            && after == Some(4999)
            && status == "signal SIGKILL"
            && after_injection == Some(0);
        if !ok {
            eprintln!(
                "run {run}: logged {hits:?}, victim entered call {before:?} (last returned {after:?}), {status}, hits after the injection {after_injection:?}\n{out}"
            );
            wrong.push((run, hits, before, after, status));
        }
    }
    let (second, processes) = (
        load.second_campaigns.load(Ordering::Relaxed),
        load.processes.load(Ordering::Relaxed),
    );
    drop(load);
    gaps.sort_unstable();
    let gap = |q: f64| {
        gaps.get(((gaps.len() as f64 - 1.0) * q) as usize)
            .map(|g| g / 1000)
    };
    eprintln!(
        "{runs} campaigns checked, {} wrong; meanwhile {second} second campaigns and {processes} short-lived processes; injection to exit: median {:?} µs, p99 {:?} µs, max {:?} µs",
        wrong.len(),
        gap(0.5),
        gap(0.99),
        gap(1.0)
    );
    assert!(
        second > 0 && processes > 0,
        "the load did not run: {second} second campaigns, {processes} processes"
    );
    assert!(wrong.is_empty(), "hit counts that lied: {wrong:?}");
}

/// What the forked child does before its exec (setpgid, prctl, getppid, close_range, entering
/// the gate's read) is not the command's: fij adds the child to the target set only once it
/// waits at the gate, so "the 1st getppid" is the command's own first one.
/// Issue 18, item 3, the cause: a per-CPU "may the running task be a target" flag, kept at
/// `sched_switch`, was found stale on this VM's kernel — a target ran on a CPU whose last
/// switch event was to another process, so its syscalls were not counted until the campaign
/// ended (3–6 % of such runs; see docs/reliability.md). A target that takes signals on its
/// writes (each one a trip through the signal code and often a switch) writes 3000 lines; its
/// last write must be hit 3000 in every run: one uncounted write and the `last` fault never
/// fires.
#[test]
fn every_write_is_counted_while_signals_land() {
    const WRITES: u64 = 3000;
    let runs: u64 = std::env::var("FIJ_STRESS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_COUNTED_RUNS);
    let mut wrong = Vec::new();
    let mut signalled = 0;
    for run in 0..runs {
        let dir = TempDir::new("stress-counted");
        let command = workload!().command(&[&"write-lines", &"/dev/null", &WRITES.to_string()]);
        let scenario = dir.write(
            "s.toml",
            &format!(
                "seed = {run}\n\n[[target]]\nname = \"w\"\ncommand = {command}\n\n\
                 [[fault]]\nname = \"urg\"\ntarget = \"w\"\naction = \"signal\"\n\
                 signal = \"SIGURG\"\ntrigger = {{ syscall = \"write\" }}\nprobability = 0.3\n\
                 count = 1000000\nper = \"target\"\n\n\
                 [[fault]]\nname = \"last\"\ntarget = \"w\"\naction = \"signal\"\n\
                 signal = \"SIGWINCH\"\ntrigger = {{ syscall = \"write\" }}\nnth = {WRITES}\n"
            ),
        );
        let out = Fij::run(&dir, &scenario).output();
        out.assert_exit(0);
        let pid = out.log.target_pid("w");
        let of = |fault: &str| -> Vec<u64> {
            out.log
                .injections()
                .iter()
                .filter(|r| r["fault"] == fault)
                .filter_map(|r| r["hit"].as_u64())
                .collect()
        };
        let (urg, last) = (of("urg"), of("last"));
        signalled += urg.len();
        let status = out.log.exit_status(pid);
        if last != [WRITES] || urg.last().is_some_and(|&h| h > WRITES) || status != "code 0" {
            eprintln!(
                "run {run}: `last` fired on {last:?}; SIGURG on {} writes, the highest {:?}; {status}",
                urg.len(),
                urg.last()
            );
            wrong.push((run, last, urg.last().copied()));
        }
    }
    eprintln!(
        "{runs} campaigns of {WRITES} writes, {signalled} SIGURGs landed, {} with writes uncounted",
        wrong.len()
    );
    assert!(signalled > 0, "no signal landed: the check did not run");
    assert!(wrong.is_empty(), "writes that were not counted: {wrong:?}");
}

#[test]
fn syscalls_before_the_exec_are_not_hits() {
    let dir = TempDir::new("pre-exec");
    let record = dir.join("record");
    let command = workload!().command(&[&"getppid-record", &record, &"3"]);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "[[target]]\nname = \"v\"\ncommand = {command}\n\n[[fault]]\nname = \"k\"\n\
             target = \"v\"\naction = \"kill\"\ntrigger = {{ syscall = \"getppid\" }}\nnth = 1\n"
        ),
    );
    for _ in 0..5 {
        let out = Fij::run(&dir, &scenario).output();
        out.assert_exit(0);
        let pid = out.log.target_pid("v");
        assert_eq!(out.log.injection_hits(), [(1, pid)], "{out}");
        assert_eq!(out.log.exit_status(pid), "signal SIGKILL", "{out}");
        let bytes = std::fs::read(&record).unwrap();
        let before = u64::from_ne_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(
            before, 1,
            "the victim died in its call {before}, not its first"
        );
    }
}

/// Writes counters `first..first + n` of a fault id no scenario has (999) into the per-process
/// counter table of the fij process `fij_pid`, in one `bpftool batch`; returns bpftool's error.
fn fill_process_counters(dir: &TempDir, fij_pid: u32, first: u32, n: u32) -> Result<(), String> {
    let id = fij_tests::map_of_process(fij_pid, "PROCESS_COUNTER");
    let hex = |bytes: &[u8]| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut batch = String::new();
    for tgid in first..first + n {
        let key = [999u32.to_le_bytes(), (5_000_000 + tgid).to_le_bytes()].concat();
        let value = [1u64.to_le_bytes(), 0u64.to_le_bytes()].concat();
        batch += &format!(
            "map update id {id} key hex {} value hex {}\n",
            hex(&key),
            hex(&value)
        );
    }
    let file = dir.write("fill.batch", &batch);
    let out = std::process::Command::new("bpftool")
        .arg("batch")
        .arg("file")
        .arg(&file)
        .output()
        .expect("running bpftool");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Issue 18, item 3: a full counter table never makes a count restart. With the table filled
/// by other counters, the victim's first hit finds no room: fij reports it (an injection record
/// with an error, exit status 1) and kills nobody, where an LRU table evicted a counter and
/// counted on from a wrong number.
#[test]
fn a_full_counter_table_is_reported_not_evicted() {
    let dir = TempDir::new("counters-full");
    let (out, go) = (dir.join("out.txt"), dir.join("go"));
    let command = workload!().command(&[&"write-lines", &out, &"6", &"--wait-for", &go]);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "[[target]]\nname = \"w\"\ncommand = {command}\n\n[[fault]]\nname = \"k\"\n\
             target = \"w\"\naction = \"kill\"\ntrigger = {{ syscall = \"write\" }}\nnth = 3\n"
        ),
    );
    // With the kernel's diagnostics on: it says why it skipped the hit. No counter rows: the
    // victim counts in the hash (with a row, the hash's state would not concern it).
    let mut fij = Fij::run(&dir, &scenario)
        .arg("--kernel-log")
        .env(COUNTER_SLOTS_ENV, "0")
        .spawn();
    fij.wait_armed();
    let capacity = 65536;
    fill_process_counters(&dir, fij.pid(), 0, capacity).expect("the table takes its capacity");
    let full = fill_process_counters(&dir, fij.pid(), capacity, 1);
    assert!(
        full.as_ref()
            .is_err_and(|e| e.contains("Argument list too long")),
        "one more counter than its capacity: {full:?}"
    );
    std::fs::write(&go, "").unwrap();
    let run = fij.wait();
    run.assert_exit(1);
    let pid = run.log.target_pid("w");
    let injections = run.log.injections();
    assert_eq!(injections.len(), 1, "{run}");
    assert_eq!(injections[0]["delivered"], false, "{run}");
    let error = injections[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("counters is full"), "{run}");
    assert!(
        run.stderr.contains(&format!(
            "fault 0 skipped a hit of pid {pid}: the per-process counter table is full"
        )),
        "--kernel-log shows the kernel's reason: {run}"
    );
    assert_eq!(run.log.exit_status(pid), "code 0", "{run}");
    assert_eq!(fij_tests::read_lines(&out), fij_tests::numbered_lines(6));
}

/// A process's counters go with it: the table holds live target processes only, so a campaign
/// whose targets fork and exit for hours never fills it.
#[test]
fn counters_are_deleted_when_their_process_exits() {
    let dir = TempDir::new("counters-exit");
    let (out, go) = (dir.join("out.txt"), dir.join("go"));
    let short = workload!().command(&[&"write-lines", &out, &"2"]);
    let long = workload!().command(&[&"wait-for", &go]);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "[[target]]\nname = \"short\"\ncommand = {short}\n\n[[target]]\nname = \"long\"\n\
             command = {long}\n\n[[fault]]\nname = \"k\"\ntarget = \"short\"\naction = \"kill\"\n\
             trigger = {{ syscall = \"write\" }}\nnth = 100\n"
        ),
    );
    // No counter rows: the hash is the table whose entries must go.
    let mut fij = Fij::run(&dir, &scenario)
        .env(COUNTER_SLOTS_ENV, "0")
        .spawn();
    fij.wait_armed();
    let short_pid = fij.log().target_pid("short");
    fij.wait_for_record("the exit of `short`", fij_tests::fij_timeout(), |r| {
        r["event"] == "exit" && fij_tests::pid_of(r) == short_pid
    });
    let id = fij_tests::map_of_process(fij.pid(), "PROCESS_COUNTER");
    let dump = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "id", &id.to_string()])
        .output()
        .expect("bpftool map dump");
    let entries: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    std::fs::write(&go, "").unwrap();
    let run = fij.wait();
    run.assert_exit(0);
    assert_eq!(fij_tests::read_lines(&out), fij_tests::numbered_lines(2));
    assert_eq!(
        entries.as_array().map(Vec::len),
        Some(0),
        "counters left after their process exited: {entries}"
    );
}

/// A live process's counter survives any number of other counters: the victim makes 2 of its
/// writes, four tables' worth of other counters are then written (the table is full after the
/// first), and the victim goes on: it dies on its 4th write, as written. (The LRU table of
/// before passed this too — it evicts unreferenced entries first — but it gave no guarantee.)
#[test]
fn a_live_counter_survives_a_full_table() {
    let dir = TempDir::new("counters-survive");
    let (out, go) = (dir.join("out.txt"), dir.join("go"));
    let command = workload!().command(&[
        &"write-lines",
        &out,
        &"8",
        &"--pause-after",
        &"2",
        &"--then-wait-for",
        &go,
    ]);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "[[target]]\nname = \"w\"\ncommand = {command}\n\n[[fault]]\nname = \"k\"\n\
             target = \"w\"\naction = \"kill\"\ntrigger = {{ syscall = \"write\" }}\nnth = 4\n"
        ),
    );
    // No counter rows: the victim counts in the hash that the test fills.
    let mut fij = Fij::run(&dir, &scenario)
        .env(COUNTER_SLOTS_ENV, "0")
        .spawn();
    fij.wait_armed();
    // The victim may not have created its file yet when fij says it is armed (seen under TCG).
    fij_tests::wait_until(
        fij_tests::fij_timeout(),
        "the victim's first 2 writes",
        || {
            let written = std::fs::read_to_string(&out).unwrap_or_default();
            (written.lines().count() == 2).then_some(())
        },
    );
    // Four tables' worth of other counters (the first fills it, the others find it full).
    let filling = Instant::now();
    for round in 0..4 {
        let _ = fill_process_counters(&dir, fij.pid(), round * 65536, 65536);
    }
    eprintln!("the four fills took {:?}", filling.elapsed());
    // fij waited for the test until now (its victim waits for `go`): its timeout is for what
    // follows, the victim's last writes and its death.
    fij.restart_timeout();
    std::fs::write(&go, "").unwrap();
    let run = fij.wait();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    run.log.assert_injections("write", "SIGKILL", &[(4, pid)]);
    assert_eq!(fij_tests::read_lines(&out), fij_tests::numbered_lines(3));
}

/// The loader's limit on rows of per-process counters (`fij-userspace/src/kernel.rs`): 0 sends
/// every process to the `PROCESS_COUNTERS` hash, 1 leaves one row, the kernel's, for forks.
const COUNTER_SLOTS_ENV: &str = "FIJ_COUNTER_SLOTS";

/// A row of per-process counters starts from 0 for every process it serves: with one row
/// (`FIJ_COUNTER_SLOTS=1`, which goes to the kernel's allocator) and the hash filled to capacity
/// by the test, a shell (no row; it makes no write) runs five workers one after the other, the
/// first waiting for the test's go. Each takes the row its predecessor freed at exit, and each
/// writer is signalled on its own 2nd write. A row handed on with its count would give writer 2
/// hits 4-6 and no injection; a row never freed would leave the later workers to the full hash,
/// whose hits are reported as uncounted (exit status 1).
#[test]
fn a_counter_row_starts_from_zero_for_each_process() {
    let dir = TempDir::new("counter-rows");
    let script = "\"$0\" wait-for \"$1/go\"; \
                  for i in 1 2 3 4; do \"$0\" write-lines \"$1/out$i.txt\" 3; done";
    let command = fij_tests::toml_array(&[
        "sh",
        "-c",
        script,
        workload!().path().to_str().expect("UTF-8 path"),
        dir.path().to_str().expect("UTF-8 path"),
    ]);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "[[target]]\nname = \"w\"\ncommand = {command}\n\n[[fault]]\nname = \"second\"\n\
             target = \"w\"\naction = \"signal\"\nsignal = \"SIGWINCH\"\n\
             trigger = {{ syscall = \"write\" }}\nnth = 2\ncount = 10\n"
        ),
    );
    let mut fij = Fij::run(&dir, &scenario)
        .env(COUNTER_SLOTS_ENV, "1")
        .spawn();
    fij.wait_armed();
    fill_process_counters(&dir, fij.pid(), 0, 65536).expect("the hash takes its capacity");
    std::fs::write(dir.join("go"), "").unwrap();
    let run = fij.wait();
    run.assert_exit(0);
    let workers: Vec<u32> = run
        .log
        .forks()
        .iter()
        .map(|f| fij_tests::pid_of(f))
        .collect();
    assert_eq!(workers.len(), 5, "five workers expected:\n{run}");
    let writers = &workers[1..];
    let expected: Vec<(u64, u32)> = writers.iter().map(|&pid| (2, pid)).collect();
    run.log.assert_injections("write", "SIGWINCH", &expected);
    for (i, pid) in writers.iter().enumerate() {
        assert_eq!(run.log.exit_status(*pid), "code 0", "{run}");
        let out = dir.join(&format!("out{}.txt", i + 1));
        assert_eq!(fij_tests::read_lines(&out), fij_tests::numbered_lines(3));
    }
}

/// fij's guardian: the `fij __guardian` process of the fij process `fij_pid`, if any.
fn guardian_of(fij_pid: u32) -> Option<u32> {
    fij_tests::all_pids().into_iter().find(|&p| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        ppid == Some(fij_pid)
            && std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"__guardian"))
    })
}

/// Issue 18, item 2: an adopted target that a `stop` fault froze is resumed when fij is
/// SIGKILLed — here even before fij could read the stop's event — by fij's guardian, which holds
/// no program or link of fij's, and is gone after.
#[test]
fn a_stopped_target_is_resumed_when_fij_is_sigkilled() {
    let dir = TempDir::new("guardian-sigkill");
    let (out, go) = (dir.join("out.txt"), dir.join("go"));
    let mut victim = workload!().spawn(&[&"write-lines", &out, &"5", &"--wait-for", &go]);
    let pid = victim.id();
    let scenario = dir.write(
        "s.toml",
        &format!(
            "[[target]]\nname = \"v\"\npid = {pid}\n\n[[fault]]\nname = \"s\"\ntarget = \"v\"\n\
             action = \"stop\"\ntrigger = {{ syscall = \"write\" }}\nnth = 2\n"
        ),
    );
    let mut fij = Fij::run(&dir, &scenario).spawn();
    fij.wait_armed();
    let guardian = guardian_of(fij.pid()).expect("fij's guardian");
    let held = fij_tests::bpf_fds(guardian);
    assert!(
        held.progs.is_empty() && held.links.is_empty() && held.maps.len() == 1,
        "the guardian holds only the stopped-process map: {held:?}"
    );
    // fij is frozen before the stop fires, so it never reads the stop's event: it dies between
    // the kernel's SIGSTOP and its own bookkeeping, the hardest moment.
    fij_tests::send_signal(fij.pid(), libc::SIGSTOP);
    std::fs::write(&go, "").unwrap();
    fij_tests::wait_until(fij_tests::fij_timeout(), "the victim to stop", || {
        (fij_tests::process_state(pid) == Some('T')).then_some(())
    });
    fij_tests::send_signal(fij.pid(), libc::SIGKILL);
    let out_fij = fij.finish();
    assert_eq!(out_fij.ended, fij_tests::Ended::Signal(libc::SIGKILL));
    let ended = fij_tests::wait_child(&mut victim, fij_tests::fij_timeout(), "the resumed victim");
    assert_eq!(ended, fij_tests::Ended::Code(0), "{out_fij}");
    assert_eq!(fij_tests::read_lines(&out), fij_tests::numbered_lines(5));
    fij_tests::wait_until(fij_tests::cleanup_timeout(), "the guardian to exit", || {
        (!fij_tests::alive(guardian)).then_some(())
    });
}

/// The exit record says how many hits of the fault that fired came after its injection: 0 for a
/// kill that landed on its hit (checked in every run of `nth_hit_is_exact_under_load`), the
/// calls a process made after a signal it survives. Here SIGUSR1 on the 3rd of 6 writes, then
/// the 4th to 6th and the `end` line: 4 writes after it.
#[test]
fn the_exit_record_counts_the_hits_after_an_injection() {
    let dir = TempDir::new("hits-after");
    let out = dir.join("out.txt");
    let command = workload!().command(&[&"usr1-lines", &out, &"6"]);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "[[target]]\nname = \"w\"\ncommand = {command}\n\n[[fault]]\nname = \"u\"\n\
             target = \"w\"\naction = \"signal\"\nsignal = \"SIGUSR1\"\n\
             trigger = {{ syscall = \"write\" }}\nnth = 3\n"
        ),
    );
    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    assert_eq!(run.log.injection_hits(), [(3, pid)], "{run}");
    assert_eq!(run.log.exit_of(pid)["hits_after_injection"], 4, "{run}");
    assert_eq!(run.log.exit_status(pid), "code 0", "{run}");
}

/// An adopted process whose children come and go while fij adopts it: fij reads the process
/// tree from /proc, then puts each process into the target set, and a child that exits in
/// between must not stay there — no exit event would ever take it out, and the campaign would
/// wait for it for ever (first seen in the kernel lab: fij still running 8 minutes after an
/// adopted shell's last process exited). The shell runs `true` again and again until the test
/// tells it to stop (four at a time: the more children come and go, the likelier one exits in
/// that window); then every target is gone and fij must end on its own, 30 times. With the old
/// adoption (no check after the insert), 2 of 3 runs of 20 rounds hung on this machine.
#[test]
fn children_that_exit_while_fij_adopts_do_not_keep_the_campaign_alive() {
    use std::process::Command;
    for round in 1..=30 {
        let dir = TempDir::new("adopt-churn");
        let stop = dir.join("stop");
        let mut shell = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "while [ ! -e {} ]; do /bin/true & /bin/true & /bin/true & /bin/true & wait; done",
                stop.display()
            ))
            .spawn()
            .expect("spawning the shell");
        let scenario = dir.write(
            "s.toml",
            &format!(
                "[[target]]\nname = \"shell\"\npid = {}\n\n[[fault]]\nname = \"never\"\n\
                 target = \"shell\"\naction = \"kill\"\ntrigger = {{ syscall = \"getppid\" }}\n\
                 nth = 1000000\n",
                shell.id()
            ),
        );
        let mut fij = Fij::run(&dir, &scenario).spawn();
        fij.wait_armed();
        std::fs::write(&stop, "").unwrap();
        let ended = fij_tests::wait_child(&mut shell, fij_tests::fij_timeout(), "the shell");
        assert_eq!(ended, fij_tests::Ended::Code(0));
        let out = fij.wait();
        out.assert_exit(0);
        assert_eq!(
            out.log.end_reason(),
            fij_common::log::EndReason::TargetsExited,
            "round {round}: {out}"
        );
    }
}
