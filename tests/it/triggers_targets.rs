//! Trigger kinds beyond syscalls (tracepoints, uprobes, uretprobes, kprobes) and selector
//! targets (`comm`, `exe`, `uid`, `cgroup`), on real processes: which hit fires, in which
//! process, and what the program had done by then; who joins the target set, and who does not.
//!
//! The probed program is a small C program (`PROGRAM_C`) that each test builds with `gcc -O0`
//! into its temp dir. Its output goes to a file, one `write(2)` per line, so the tests know
//! exactly which write is hit N and what a killed process had completed.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use fij_common::log::EndReason;
use fij_tests::{
    Ended, Fij, FijOutput, Log, RunningFij, TempDir, fij_bin, pid_of, read_lines, send_signal,
    toml_array, toml_str, wait_child,
};
use serde_json::Value;

/// How long a process the test starts itself may run.
const CHILD_TIMEOUT: Duration = Duration::from_secs(20);

/// The target program. `prog MODE OUT N [GO]`: appends its lines to OUT (one `write` each, as
/// `WHAT I usr1=C`, C = how many SIGUSR1 it handled so far); with GO, first waits (nanosleep
/// polls, no writes) until the file GO exists. Modes:
///
/// - `calls`: for I in 1..=N, calls `step(I)` (noinline; writes `call I`), then writes
///   `returned I`: 2N writes, N calls of `step`.
/// - `pid-calls`: writes `pid P` (its pid as it sees it), then does `calls`.
/// - `puts`: `puts("puts I")` + `fflush` for I in 1..=N on stdout reopened on OUT (no usr1).
/// - `forks`: N times: forks a child that writes `child pid P` (its own pid) and exits 0, waits
///   for it, writes `forked I`. The parent forks exactly N times.
/// - `fork-calls`: forks one child that does `calls`, waits for it, then writes
///   `child exited CODE` or `child killed by SIGNO`.
///
/// Exits 0; 100+ on a usage or I/O error (104: GO never appeared).
const PROGRAM_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t usr1;
static int out = -1;

static void on_usr1(int sig) { (void)sig; usr1++; }

static void line(const char *what, int i) {
    char buf[64];
    int n = snprintf(buf, sizeof buf, "%s %d usr1=%d\n", what, i, (int)usr1);
    if (write(out, buf, n) != n) _exit(101);
}

__attribute__((noinline)) int step(int i) {
    line("call", i);
    return i;
}

static void calls(int n) {
    for (int i = 1; i <= n; i++) { step(i); line("returned", i); }
}

int main(int argc, char **argv) {
    if (argc < 4) return 100;
    signal(SIGUSR1, on_usr1);
    out = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0) return 102;
    int n = atoi(argv[3]);
    if (argc > 4) {
        struct timespec nap = {0, 5000000};
        for (int i = 0; access(argv[4], F_OK) != 0; i++) {
            if (i > 12000) return 104;
            nanosleep(&nap, NULL);
        }
    }
    if (!strcmp(argv[1], "calls")) {
        calls(n);
    } else if (!strcmp(argv[1], "pid-calls")) {
        line("pid", getpid());
        calls(n);
    } else if (!strcmp(argv[1], "puts")) {
        if (!freopen(argv[2], "a", stdout)) return 103;
        char buf[32];
        for (int i = 1; i <= n; i++) {
            snprintf(buf, sizeof buf, "puts %d", i);
            puts(buf);
            fflush(stdout);
        }
    } else if (!strcmp(argv[1], "forks")) {
        for (int i = 1; i <= n; i++) {
            pid_t c = fork();
            if (c < 0) return 105;
            if (c == 0) { line("child pid", getpid()); _exit(0); }
            int st;
            waitpid(c, &st, 0);
            line("forked", i);
        }
    } else if (!strcmp(argv[1], "fork-calls")) {
        pid_t c = fork();
        if (c < 0) return 105;
        if (c == 0) { calls(n); _exit(0); }
        int st;
        waitpid(c, &st, 0);
        if (WIFSIGNALED(st)) line("child killed by", WTERMSIG(st));
        else line("child exited", WEXITSTATUS(st));
    } else {
        return 100;
    }
    return 0;
}
"#;

/// Builds [`PROGRAM_C`] as `DIR/name` (gcc -O0: `step` stays a plain function, no clones).
fn build(dir: &TempDir, name: &str) -> PathBuf {
    let source = dir.write("prog.c", PROGRAM_C);
    let binary = dir.join(name);
    let out = Command::new("gcc")
        .args(["-O0", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("running gcc (apt-get install gcc): {e}"));
    assert!(
        out.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    binary
}

/// A copy of `binary` at `to` (same code, another path and name).
fn copy_to(binary: &Path, to: PathBuf) -> PathBuf {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::copy(binary, &to).unwrap_or_else(|e| panic!("copying to {}: {e}", to.display()));
    to
}

/// `call 1 usr1=0`, `returned 1 usr1=0`, … up to call `k`: what `calls` writes for `k` calls.
fn calls_done(k: u32) -> Vec<String> {
    (1..=k)
        .flat_map(|i| [format!("call {i} usr1=0"), format!("returned {i} usr1=0")])
        .collect()
}

/// `calls_done(k)` followed by `more`.
fn calls_then(k: u32, more: &[&str]) -> Vec<String> {
    let mut lines = calls_done(k);
    lines.extend(more.iter().map(|s| s.to_string()));
    lines
}

fn program_argv(program: &Path, args: &[&str]) -> String {
    let mut argv = vec![program.to_str().expect("UTF-8 path").to_owned()];
    argv.extend(args.iter().map(|s| s.to_string()));
    toml_array(&argv)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A `[[target]]` running `argv` (a TOML array).
fn command_target(name: &str, argv: &str) -> String {
    format!("[[target]]\nname = \"{name}\"\ncommand = {argv}\n\n")
}

/// A `[[fault]]` named `name` on `target`, with the TOML lines `rest` (action, trigger, …).
fn fault(name: &str, target: &str, rest: &str) -> String {
    format!("[[fault]]\nname = \"{name}\"\ntarget = \"{target}\"\n{rest}\n\n")
}

/// `action = "kill"` with `trigger = { KIND = "SPEC" }` and `nth = N`.
fn kill_on(kind: &str, spec: &str, nth: u32) -> String {
    format!(
        "action = \"kill\"\ntrigger = {{ {kind} = {} }}\nnth = {nth}",
        toml_str(spec)
    )
}

/// What one injection record says, for exact comparison: (fault, trigger, hit, pid, signal).
type Injection = (String, String, u64, u32, String);

fn injection(fault: &str, trigger: &str, hit: u64, pid: u32, signal: &str) -> Injection {
    (fault.into(), trigger.into(), hit, pid, signal.into())
}

/// Asserts the campaign's injections exactly, in log order; each delivered in the kernel by
/// the main thread of the process that hit the trigger, with a `syscall` field only for syscall
/// triggers; and the `end` record's totals.
fn assert_injections(log: &Log, expected: &[Injection]) {
    let got: Vec<Injection> = log
        .injections()
        .iter()
        .map(|r| {
            (
                r["fault"].as_str().expect("fault").to_owned(),
                r["trigger"].as_str().expect("trigger").to_owned(),
                r["hit"].as_u64().expect("hit"),
                pid_of(r),
                r["signal"].as_str().expect("signal").to_owned(),
            )
        })
        .collect();
    assert_eq!(got, expected, "injections differ; log:\n{log}");
    for record in log.injections() {
        assert_eq!(record["delivered"], true, "{record}");
        assert_eq!(record["by"], "kernel", "{record}");
        assert_eq!(record["tid"], record["pid"], "{record}");
        assert!(record.get("error").is_none(), "{record}");
        let is_syscall = !record["trigger"]
            .as_str()
            .is_some_and(|t| t.contains(':') || t.contains(' '));
        match is_syscall {
            true => assert_eq!(record["syscall"], record["trigger"], "{record}"),
            false => assert!(record.get("syscall").is_none(), "{record}"),
        }
    }
    let end = log.end();
    assert_eq!(end["injections"], expected.len(), "end record: {end}");
    assert_eq!(end["failed_injections"], 0, "end record: {end}");
}

/// `(pid, by)` of every `joined` record of target `target`, in log order.
fn joined(log: &Log, target: &str) -> Vec<(u32, String)> {
    log.records("joined")
        .iter()
        .map(|r| {
            assert_eq!(r["target"], target, "{r}");
            (pid_of(r), r["by"].as_str().expect("by").to_owned())
        })
        .collect()
}

/// Asserts that no record of the log is about process `pid`.
fn assert_untouched(log: &Log, pid: u32, who: &str) {
    let about: Vec<&Value> = log
        .json()
        .filter(|r| r["pid"] == pid || r["parent_pid"] == pid)
        .collect();
    assert!(
        about.is_empty(),
        "{who} (pid {pid}) must not be a target, but the log has {about:?}\n{log}"
    );
}

/// Starts a process the test owns (not fij's), output to the test's.
fn start(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting a process")
}

/// `fij run` of a campaign with selector targets: started, and armed once this returns.
fn start_fij(dir: &TempDir, scenario: &Path) -> RunningFij {
    let mut fij = Fij::run(dir, scenario).spawn();
    fij.wait_armed();
    fij
}

/// Waits until the log has the `exit` record of `pid`.
fn wait_exit_record(fij: &mut RunningFij, pid: u32) {
    fij.wait_for_record(
        &format!("the exit record of pid {pid}"),
        CHILD_TIMEOUT,
        |r| r["event"] == "exit" && r["pid"] == pid,
    );
}

/// Ends a selector campaign (it never ends on its own) with SIGINT, as Ctrl-C would.
fn interrupt(fij: RunningFij) -> FijOutput {
    send_signal(fij.pid(), libc::SIGINT);
    let out = fij.wait();
    out.assert_exit(0);
    assert_eq!(out.log.end_reason(), EndReason::Interrupted, "{out}");
    out
}

/// A short random tag for names (comm, cgroup, uid).
fn random_tag() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into the buffer we own.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 4, 0) };
    assert_eq!(n, 4, "getrandom");
    u32::from_le_bytes(bytes)
}

// ---------------------------------------------------------------------------------------------
// Tracepoint and probe triggers.

/// Test 1: `sched:sched_process_fork` fires in the forking parent, after the child exists and
/// before it runs. Killed on its 3rd fork, the parent never writes `forked 3`; the 3rd child
/// (already created, and a target through the fork) still runs and exits 0.
#[test]
fn tracepoint_kills_the_parent_on_its_nth_fork() {
    let dir = TempDir::new("tp-fork");
    let program = build(&dir, "prog");
    let out = dir.join("out.txt");
    let scenario = command_target(
        "w",
        &program_argv(&program, &["forks", path_str(&out), "5"]),
    ) + &fault(
        "f",
        "w",
        &kill_on("tracepoint", "sched:sched_process_fork", 3),
    );
    let scenario = dir.write("s.toml", &scenario);

    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let parent = run.log.target_pid("w");
    let forks = run.log.forks();
    assert_eq!(forks.len(), 3, "exactly 3 forks before the kill:\n{run}");
    assert!(forks.iter().all(|f| f["parent_pid"] == parent), "{run}");
    let children: Vec<u32> = forks.iter().map(|f| pid_of(f)).collect();
    assert_injections(
        &run.log,
        &[injection(
            "f",
            "sched:sched_process_fork",
            3,
            parent,
            "SIGKILL",
        )],
    );
    assert_eq!(run.log.exit_status(parent), "signal SIGKILL", "{run}");
    for &child in &children {
        assert_eq!(run.log.exit_status(child), "code 0", "{run}");
    }
    assert_eq!(run.log.end_reason(), EndReason::TargetsExited, "{run}");
    let expected: Vec<String> = vec![
        format!("child pid {} usr1=0", children[0]),
        "forked 1 usr1=0".into(),
        format!("child pid {} usr1=0", children[1]),
        "forked 2 usr1=0".into(),
        format!("child pid {} usr1=0", children[2]),
    ];
    assert_eq!(read_lines(&out), expected, "{run}");
}

/// Test 2: a uprobe fires on entry, before the body: killed on the 3rd call of `step`, the
/// program printed calls 1-2 and their returns, and never the 3rd call's line.
#[test]
fn uprobe_kills_on_entry_of_the_nth_call() {
    let dir = TempDir::new("uprobe");
    let program = build(&dir, "prog");
    let out = dir.join("out.txt");
    let spec = format!("{}:step", program.display());
    let scenario = command_target(
        "w",
        &program_argv(&program, &["calls", path_str(&out), "5"]),
    ) + &fault("f", "w", &kill_on("uprobe", &spec, 3));
    let scenario = dir.write("s.toml", &scenario);

    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    assert_injections(
        &run.log,
        &[injection("f", &format!("uprobe {spec}"), 3, pid, "SIGKILL")],
    );
    assert_eq!(run.log.exit_status(pid), "signal SIGKILL", "{run}");
    assert_eq!(read_lines(&out), calls_done(2), "{run}");
}

/// Test 3: a uprobe on a library function named by library (`libc:puts`, resolved through
/// ld.so.cache): killed on entry of the 3rd `puts`, the file has the first two.
#[test]
fn uprobe_on_a_libc_function_by_library_name() {
    let dir = TempDir::new("uprobe-libc");
    let program = build(&dir, "prog");
    let out = dir.join("out.txt");
    let scenario = command_target("w", &program_argv(&program, &["puts", path_str(&out), "5"]))
        + &fault("f", "w", &kill_on("uprobe", "libc:puts", 3));
    let scenario = dir.write("s.toml", &scenario);

    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    assert_injections(
        &run.log,
        &[injection("f", "uprobe libc:puts", 3, pid, "SIGKILL")],
    );
    assert_eq!(run.log.exit_status(pid), "signal SIGKILL", "{run}");
    assert_eq!(read_lines(&out), ["puts 1", "puts 2"], "{run}");
}

/// Test 4: a uretprobe fires on return, after the body: killed on the 3rd return of `step`, the
/// 3rd call's line is there, and its caller never continues (no `returned 3`).
#[test]
fn uretprobe_kills_on_the_nth_return() {
    let dir = TempDir::new("uretprobe");
    let program = build(&dir, "prog");
    let out = dir.join("out.txt");
    let spec = format!("{}:step", program.display());
    let scenario = command_target(
        "w",
        &program_argv(&program, &["calls", path_str(&out), "5"]),
    ) + &fault("f", "w", &kill_on("uretprobe", &spec, 3));
    let scenario = dir.write("s.toml", &scenario);

    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    assert_injections(
        &run.log,
        &[injection(
            "f",
            &format!("uretprobe {spec}"),
            3,
            pid,
            "SIGKILL",
        )],
    );
    assert_eq!(run.log.exit_status(pid), "signal SIGKILL", "{run}");
    assert_eq!(read_lines(&out), calls_then(2, &["call 3 usr1=0"]), "{run}");
}

/// Runs `tool args` and returns its stdout (panics on failure).
fn tool_output(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {tool} (binutils): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or_else(|_| panic!("not hex: {s}"))
}

/// File offset of `step` (`PATH:0xADDR` takes a file offset): its address from `nm`, moved
/// from `.text`'s address to `.text`'s file offset (`objdump -h`).
fn step_file_offset(program: &Path) -> u64 {
    let nm = tool_output("nm", &[path_str(program)]);
    let address = nm
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == "step").then(|| hex(f[0]))
        })
        .unwrap_or_else(|| panic!("no symbol step in nm's output:\n{nm}"));
    let headers = tool_output("objdump", &["-h", path_str(program)]);
    // "Idx Name Size VMA LMA File-off Algn"
    let (vma, file_off) = headers
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && f[1] == ".text").then(|| (hex(f[3]), hex(f[5])))
        })
        .unwrap_or_else(|| panic!("no .text in objdump -h:\n{headers}"));
    address - vma + file_off
}

/// Offset, from `step`'s start, of the instruction right after its call of `line` (that is,
/// once the `call N` line is written), from `objdump -d`.
fn offset_after_the_write(program: &Path) -> u64 {
    let text = tool_output(
        "objdump",
        &[
            "-d",
            "--no-show-raw-insn",
            "--disassemble=step",
            path_str(program),
        ],
    );
    // Instruction lines: "    1283:\tmov    %edi,-0x4(%rbp)".
    let insns: Vec<(u64, &str)> = text
        .lines()
        .skip_while(|l| !l.ends_with("<step>:"))
        .skip(1)
        .filter_map(|l| {
            let (address, insn) = l.trim().split_once(':')?;
            Some((u64::from_str_radix(address, 16).ok()?, insn.trim()))
        })
        .collect();
    let start = insns.first().expect("step has instructions").0;
    let call = insns
        .iter()
        .position(|(_, i)| i.starts_with("call") && i.contains("<line>"))
        .unwrap_or_else(|| panic!("no call of line in step:\n{text}"));
    insns[call + 1].0 - start
}

/// Test 5: the address forms. `PATH:0xOFFSET` at `step`'s entry (nm + section offsets) kills on
/// entry of the 3rd call, like `PATH:step`; `PATH:step+OFF` just after step's write kills the
/// 3rd call after its line was written, before it returns.
#[test]
fn uprobe_by_file_offset_and_by_symbol_plus_offset() {
    let dir = TempDir::new("uprobe-offsets");
    let program = build(&dir, "prog");
    let (entry_out, inside_out) = (dir.join("entry.txt"), dir.join("inside.txt"));
    let entry = format!("{}:{:#x}", program.display(), step_file_offset(&program));
    let inside = format!(
        "{}:step+{}",
        program.display(),
        offset_after_the_write(&program)
    );
    let scenario = command_target(
        "entry",
        &program_argv(&program, &["calls", path_str(&entry_out), "5"]),
    ) + &command_target(
        "inside",
        &program_argv(&program, &["calls", path_str(&inside_out), "5"]),
    ) + &fault("by-offset", "entry", &kill_on("uprobe", &entry, 3))
        + &fault("by-symbol-offset", "inside", &kill_on("uprobe", &inside, 3));
    let scenario = dir.write("s.toml", &scenario);

    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let (entry_pid, inside_pid) = (run.log.target_pid("entry"), run.log.target_pid("inside"));
    // The two targets run at once: compare the injections in a fixed order.
    let log = run
        .log
        .sorted_by_key(|r| (r["event"] != "injection", r["fault"] != "by-offset"));
    let (offset, step_off) = (
        entry.rsplit_once(':').unwrap().1,
        inside.rsplit_once('+').unwrap().1,
    );
    assert_injections(
        &log,
        &[
            injection(
                "by-offset",
                &format!("uprobe {}:{offset}", program.display()),
                3,
                entry_pid,
                "SIGKILL",
            ),
            injection(
                "by-symbol-offset",
                // Logged with the offset in hex.
                &format!(
                    "uprobe {}:step+{:#x}",
                    program.display(),
                    step_off.parse::<u64>().unwrap()
                ),
                3,
                inside_pid,
                "SIGKILL",
            ),
        ],
    );
    assert_eq!(run.log.exit_status(entry_pid), "signal SIGKILL", "{run}");
    assert_eq!(run.log.exit_status(inside_pid), "signal SIGKILL", "{run}");
    assert_eq!(read_lines(&entry_out), calls_done(2), "{run}");
    assert_eq!(
        read_lines(&inside_out),
        calls_then(2, &["call 3 usr1=0"]),
        "{run}"
    );
}

/// Test 12: two faults with different trigger kinds on one target count their own hits, and
/// `count` caps each on its own. SIGUSR1 (handled) on `step` calls 2 and 4 (`every = 2`,
/// `count = 2`), and on write 5 (`nth = 5`): the uprobe's signal is handled before the call's
/// body (`call 2 usr1=1`), the write's after that write (`returned 3` sees it).
#[test]
fn two_trigger_kinds_on_one_target_count_independently() {
    let dir = TempDir::new("two-kinds");
    let program = build(&dir, "prog");
    let out = dir.join("out.txt");
    let spec = format!("{}:step", program.display());
    let usr1 = "action = \"signal\"\nsignal = \"SIGUSR1\"";
    let scenario = command_target(
        "w",
        &program_argv(&program, &["calls", path_str(&out), "4"]),
    ) + &fault(
        "on-calls",
        "w",
        &format!(
            "{usr1}\ntrigger = {{ uprobe = {} }}\nevery = 2\ncount = 2",
            toml_str(&spec)
        ),
    ) + &fault(
        "on-writes",
        "w",
        &format!("{usr1}\ntrigger = {{ syscall = \"write\" }}\nnth = 5"),
    );
    let scenario = dir.write("s.toml", &scenario);

    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    let uprobe = format!("uprobe {spec}");
    assert_injections(
        &run.log,
        &[
            injection("on-calls", &uprobe, 2, pid, "SIGUSR1"),
            injection("on-writes", "write", 5, pid, "SIGUSR1"),
            injection("on-calls", &uprobe, 4, pid, "SIGUSR1"),
        ],
    );
    assert_eq!(run.log.exit_status(pid), "code 0", "{run}");
    assert_eq!(
        read_lines(&out),
        [
            "call 1 usr1=0",
            "returned 1 usr1=0",
            "call 2 usr1=1",
            "returned 2 usr1=1",
            "call 3 usr1=1",
            "returned 3 usr1=2",
            "call 4 usr1=3",
            "returned 4 usr1=3",
        ],
        "{run}"
    );
}

// ---------------------------------------------------------------------------------------------
// kprobes and invalid triggers.

/// Present when the kernel can create kprobes through perf (what fij checks too).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// Test 6: on a kernel with kprobes (the kernel lab's Debian 13 guest, `cargo xtask vm --kernel
/// debian13 -- kprobe`), `fij doctor` shows them usable, and a kprobe and a kretprobe fault each
/// fire on their hit: on entry the 3rd `ksys_write` dies before writing, on return after. On a
/// kernel without kprobes, `fij validate` refuses kprobe and kretprobe triggers at the trigger's
/// position, and `fij doctor` shows the kprobe program loaded (verifier passed) but its attach
/// failing. On either kernel, `fij stap` and `fij plan` take the scenario (their output may be
/// for another machine: `fij stap`'s script is compiled with `stap -r RELEASE`).
#[test]
fn kprobes_fire_or_are_refused_on_a_kernel_without_them() {
    let dir = TempDir::new("kprobe");
    let program = build(&dir, "prog");
    let out = dir.join("out.txt");
    let argv = program_argv(&program, &["calls", path_str(&out), "5"]);
    // Lines: target 1-3, blank, fault 5-10 (trigger on 9), blank, fault 12-17 (trigger on 16).
    let scenario = command_target("w", &argv)
        + &fault("k", "w", &kill_on("kprobe", "ksys_write", 3))
        + &fault("r", "w", &kill_on("kretprobe", "ksys_write", 3));
    let scenario = dir.write("s.toml", &scenario);

    let doctor = Command::new(fij_bin())
        .arg("doctor")
        .env("NO_COLOR", "1")
        .output()
        .expect("running fij doctor");
    let doctor_out = String::from_utf8_lossy(&doctor.stdout);
    let kprobe_line = doctor_out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("kprobe"))
        .unwrap_or_else(|| panic!("no kprobe line in fij doctor's output:\n{doctor_out}"));
    // kprobes are optional: their absence does not fail the doctor.
    assert_eq!(doctor.status.code(), Some(0), "{doctor_out}");

    let stap = Command::new(fij_bin())
        .args(["stap", "--runtime", "module", "--seed", "1"])
        .arg(&scenario)
        .output()
        .expect("running fij stap");
    let script = String::from_utf8_lossy(&stap.stdout);
    let stap_err = String::from_utf8_lossy(&stap.stderr);
    assert_eq!(stap.status.code(), Some(0), "fij stap: {stap_err}");
    for probe in [
        "probe kprobe.function(\"ksys_write\") {",
        "probe kprobe.function(\"ksys_write\").return {",
    ] {
        assert!(script.contains(probe), "no `{probe}` in:\n{script}");
    }
    let plan = Command::new(fij_bin())
        .args(["plan", "--seed", "1"])
        .arg(&scenario)
        .output()
        .expect("running fij plan");
    assert_eq!(
        plan.status.code(),
        Some(0),
        "fij plan: {}",
        String::from_utf8_lossy(&plan.stderr)
    );

    if Path::new(KPROBE_PMU).exists() {
        let validate = Fij::validate(&scenario).output();
        validate.assert_exit(0);
        assert!(kprobe_line.starts_with("ok "), "{kprobe_line}");
        // Each `calls` iteration writes two lines ("call i", "returned i"): the 3rd write is
        // "call 2". A kprobe kills it on entry (nothing written), a kretprobe on return (written).
        for (kind, written) in [
            ("kprobe", calls_done(1)),
            ("kretprobe", calls_then(1, &["call 2 usr1=0"])),
        ] {
            let _ = std::fs::remove_file(&out);
            let one = dir.write(
                &format!("{kind}.toml"),
                &(command_target("w", &argv) + &fault("k", "w", &kill_on(kind, "ksys_write", 3))),
            );
            let run = Fij::run(&dir, &one).output();
            run.assert_exit(0);
            let pid = run.log.target_pid("w");
            assert_injections(
                &run.log,
                &[injection(
                    "k",
                    &format!("{kind} ksys_write"),
                    3,
                    pid,
                    "SIGKILL",
                )],
            );
            assert_eq!(read_lines(&out), written, "{kind}: {run}");
        }
        return;
    }

    let validate = Fij::validate(&scenario).output();
    validate.assert_exit(2);
    let message = "kprobe triggers need a kernel with kprobes (CONFIG_KPROBES); this kernel has \
                   none (`fij doctor` lists what it supports); use a tracepoint or uprobe trigger \
                   instead";
    let file = scenario.display();
    assert_eq!(
        validate.stderr.lines().collect::<Vec<_>>(),
        [
            format!("{file}:9:22: {message}"),
            format!("{file}:16:25: {message}"),
        ],
        "{validate}"
    );
    assert!(!out.exists(), "validate must run nothing");

    let fields: Vec<&str> = kprobe_line.split_whitespace().collect();
    assert_eq!(fields[..2], ["missing", "kprobe"], "{kprobe_line}");
    let detail = kprobe_line
        .split_once("kprobe")
        .map(|(_, rest)| rest.trim_start())
        .unwrap();
    assert!(
        detail.starts_with("loaded, but attach to "),
        "the kprobe program must pass the verifier and fail to attach: {kprobe_line}"
    );
    assert!(
        detail.contains(&format!(
            " failed: `{KPROBE_PMU}`: No such file or directory"
        )),
        "the attach error must be in the line: {kprobe_line}"
    );
    assert!(
        detail.contains("disables: kprobe/kretprobe triggers"),
        "{kprobe_line}"
    );
    fij_tests::tell(&format!(
        "skipping kprobe attach: kernel without CONFIG_KPROBES ({KPROBE_PMU} does not exist)"
    ));
}

/// Test 7: invalid triggers, each refused at its value: a `syscalls:*` tracepoint (pointing to
/// the syscall trigger), an interrupt-context category, a tracepoint the kernel does not have,
/// a uprobe on a missing file. `fij run` refuses the same file the same way and runs nothing.
#[test]
fn invalid_triggers_are_refused_at_their_position() {
    let dir = TempDir::new("bad-triggers");
    let marker = dir.join("ran");
    let argv = toml_array(&["touch", path_str(&marker)]);
    let trigger = |kind: &str, spec: &str| {
        format!(
            "action = \"kill\"\ntrigger = {{ {kind} = {} }}",
            toml_str(spec)
        )
    };
    // Lines: target 1-3, blank; faults of 5 lines + blank from line 5: triggers on 9, 15, 21, 27.
    let scenario = command_target("w", &argv)
        + &fault("a", "w", &trigger("tracepoint", "syscalls:sys_enter_write"))
        + &fault("b", "w", &trigger("tracepoint", "irq:irq_handler_entry"))
        + &fault(
            "c",
            "w",
            &trigger("tracepoint", "sched:sched_no_such_event"),
        )
        + &fault(
            "d",
            "w",
            &trigger("uprobe", "/nonexistent/fij-test/prog:main"),
        );
    let scenario = dir.write("s.toml", &scenario);
    let file = scenario.display();
    let expected = [
        format!(
            "{file}:9:26: use `trigger = {{ syscall = \"write\" }}` for syscalls: BPF programs on \
             `syscalls:*` tracepoints cannot tell which one fired"
        ),
        format!(
            "{file}:15:26: tracepoints of `irq` fire in interrupt context, where the current task \
             is whichever one was interrupted: fij refuses them as triggers"
        ),
        format!(
            "{file}:21:26: no tracepoint `sched:sched_no_such_event` on this kernel (see \
             /sys/kernel/tracing/events)"
        ),
        format!("{file}:27:22: `trigger.uprobe`: no file /nonexistent/fij-test/prog"),
    ];

    let validate = Fij::validate(&scenario).output();
    validate.assert_exit(2);
    assert_eq!(
        validate.stderr.lines().collect::<Vec<_>>(),
        expected,
        "{validate}"
    );
    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(2);
    for line in &expected {
        assert!(run.stderr.lines().any(|l| l == line), "{line}\n{run}");
    }
    assert!(run.log.is_empty(), "nothing may run:\n{run}");
    assert!(!marker.exists(), "the target must not have run");
}

// ---------------------------------------------------------------------------------------------
// Selector targets.

/// The scenario of a selector target `sel` (the TOML line `selector`) killed on its 3rd write;
/// `count` injections at most. `duration` is a safety net: the test ends it with SIGINT.
fn selector_scenario(dir: &TempDir, selector: &str, count: u32) -> PathBuf {
    let text = format!(
        "duration = \"25s\"\n\n[[target]]\nname = \"sel\"\n{selector}\n\n{}",
        fault(
            "f",
            "sel",
            &format!("{}\ncount = {count}", kill_on("syscall", "write", 3))
        )
    );
    dir.write("s.toml", &text)
}

/// Tests 8 and 9: a selector-matching program started by the test after fij is armed joins in
/// the kernel at its exec and is killed on its 3rd write; a bystander running the same code
/// under another name (`bystander`) is untouched.
fn selector_joins_at_exec(
    dir: &TempDir,
    selector: &str,
    by: &str,
    matching: &Path,
    bystander: &Path,
) {
    let scenario = selector_scenario(dir, selector, 1);
    let (target_out, bystander_out) = (dir.join("target.txt"), dir.join("bystander.txt"));
    let mut fij = start_fij(dir, &scenario);

    let mut target = start(matching, &["calls", path_str(&target_out), "5"]);
    let pid = target.id();
    let ended = wait_child(&mut target, CHILD_TIMEOUT, "the matching program");
    let mut other = start(bystander, &["calls", path_str(&bystander_out), "5"]);
    let other_pid = other.id();
    let other_ended = wait_child(&mut other, CHILD_TIMEOUT, "the bystander");
    wait_exit_record(&mut fij, pid);

    let run = interrupt(fij);
    assert_eq!(ended, Ended::Signal(libc::SIGKILL), "{run}");
    assert_eq!(other_ended, Ended::Code(0), "{run}");
    assert_eq!(joined(&run.log, "sel"), [(pid, by.to_owned())], "{run}");
    assert_injections(&run.log, &[injection("f", "write", 3, pid, "SIGKILL")]);
    assert_eq!(run.log.exit_status(pid), "signal SIGKILL", "{run}");
    assert_untouched(&run.log, other_pid, "the bystander");
    assert_eq!(
        run.log.start()["targets"],
        serde_json::json!([]),
        "a selector target has no spawned or adopted root: {run}"
    );
    assert_eq!(read_lines(&target_out), calls_done(1), "{run}");
    assert_eq!(read_lines(&bystander_out), calls_done(5), "{run}");
}

/// Test 8: `comm = NAME`: a copy of the program named `fijt-XXXXXXXX` joins by comm; the same
/// code named `fijb-XXXXXXXX` does not.
#[test]
fn comm_target_started_after_fij_joins_and_is_killed() {
    let dir = TempDir::new("comm");
    let program = build(&dir, "prog");
    let tag = random_tag();
    let name = format!("fijt-{tag:08x}");
    let matching = copy_to(&program, dir.join(&name));
    let bystander = copy_to(&program, dir.join(&format!("fijb-{tag:08x}")));
    let selector = format!("comm = {}", toml_str(&name));
    selector_joins_at_exec(&dir, &selector, "comm", &matching, &bystander);
}

/// Test 9: `exe = PATH`: the program at DIR/a/fijprog joins by exe; the same program at
/// DIR/b/fijprog (same code, same comm) does not.
#[test]
fn exe_target_started_after_fij_joins_and_is_killed() {
    let dir = TempDir::new("exe");
    let program = build(&dir, "prog");
    let matching = copy_to(&program, dir.join("a/fijprog"));
    let bystander = copy_to(&program, dir.join("b/fijprog"));
    let selector = format!("exe = {}", toml_str(path_str(&matching)));
    selector_joins_at_exec(&dir, &selector, "exe", &matching, &bystander);
}

/// Test 11: `uid = N`: a program run as uid N (setpriv, started after fij) joins by uid at its
/// exec and is killed; the same program run as root is untouched.
#[test]
fn uid_target_started_after_fij_joins_and_is_killed() {
    let dir = TempDir::new("uid");
    let program = build(&dir, "prog");
    // An unused uid (no passwd entry needed), so no process of the machine matches.
    let uid = (200_000..)
        .map(|base| base + random_tag() % 1_000_000)
        .find(|uid| !running_uids().contains(uid))
        .unwrap();
    // The other uid must reach the program and write its file.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (target_out, root_out) = (dir.join("target.txt"), dir.join("root.txt"));
    std::fs::write(&target_out, "").unwrap();
    std::os::unix::fs::chown(&target_out, Some(uid), Some(uid)).unwrap();
    let scenario = selector_scenario(&dir, &format!("uid = {uid}"), 1);
    let mut fij = start_fij(&dir, &scenario);

    let ids = [format!("--reuid={uid}"), format!("--regid={uid}")];
    let mut target = start(
        "setpriv",
        &[
            &ids[0],
            &ids[1],
            "--clear-groups",
            path_str(&program),
            "calls",
            path_str(&target_out),
            "5",
        ],
    );
    let pid = target.id();
    let ended = wait_child(
        &mut target,
        CHILD_TIMEOUT,
        &format!("the program run as uid {uid}"),
    );
    let mut root = start(&program, &["calls", path_str(&root_out), "5"]);
    let root_pid = root.id();
    let root_ended = wait_child(&mut root, CHILD_TIMEOUT, "the program run as root");
    wait_exit_record(&mut fij, pid);

    let run = interrupt(fij);
    assert_eq!(ended, Ended::Signal(libc::SIGKILL), "{run}");
    assert_eq!(root_ended, Ended::Code(0), "{run}");
    // setpriv (root) execs the program after setting the uid: the exec is where it joins.
    assert_eq!(joined(&run.log, "sel"), [(pid, "uid".to_owned())], "{run}");
    assert_injections(&run.log, &[injection("f", "write", 3, pid, "SIGKILL")]);
    assert_eq!(run.log.exit_status(pid), "signal SIGKILL", "{run}");
    assert_untouched(&run.log, root_pid, "the root process");
    assert_eq!(read_lines(&target_out), calls_done(1), "{run}");
    assert_eq!(read_lines(&root_out), calls_done(5), "{run}");
}

/// The real uids of every process now running.
fn running_uids() -> Vec<u32> {
    fij_tests::all_pids()
        .into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo.
fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            // "... mount_point options - fstype source super_options"
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("a cgroup v2 hierarchy mounted (see /proc/self/mountinfo)")
}

/// A cgroup the test creates; on drop, kills what is left in it and removes it.
struct Cgroup(PathBuf);

impl Cgroup {
    fn create(name: &str) -> Self {
        let path = cgroup2_root().join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self(path)
    }

    /// Moves process `pid` into the cgroup.
    fn add(&self, pid: u32) {
        let procs = self.0.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("writing {pid} to {}: {e}", procs.display()));
    }

    fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.0.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for pid in self.procs() {
            // SAFETY: kill on processes of the cgroup this test created.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // Its processes take a moment to leave; never panic here (this may run in a panic).
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.0).is_err() && std::time::Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Test 10: `cgroup = PATH`. Before fij starts, a waiting process is moved into a new cgroup:
/// fij's start scan picks it up (it is killed on its 3rd write once released). After fij is
/// armed, a non-target process is moved in and forks a child: the child joins in the kernel at
/// the fork (`by: cgroup`) and is killed; the forking parent, which exec'd outside the cgroup,
/// stays out (processes join at exec or fork). The same program outside the cgroup is untouched.
#[test]
fn cgroup_target_catches_processes_in_the_cgroup_only() {
    let dir = TempDir::new("cgroup");
    let program = build(&dir, "prog");
    let cgroup = Cgroup::create(&format!("fij-test-{:08x}", random_tag()));
    let (go_early, go_late) = (dir.join("go-early"), dir.join("go-late"));
    let (early_out, parent_out, outside_out) = (
        dir.join("early.txt"),
        dir.join("parent.txt"),
        dir.join("outside.txt"),
    );
    let mut early = start(
        &program,
        &["calls", path_str(&early_out), "5", path_str(&go_early)],
    );
    let early_pid = early.id();
    cgroup.add(early_pid);
    let scenario = selector_scenario(
        &dir,
        &format!("cgroup = {}", toml_str(path_str(&cgroup.0))),
        2,
    );
    let mut fij = start_fij(&dir, &scenario);

    let mut parent = start(
        &program,
        &["fork-calls", path_str(&parent_out), "5", path_str(&go_late)],
    );
    let parent_pid = parent.id();
    cgroup.add(parent_pid);
    let mut outside = start(
        &program,
        &["calls", path_str(&outside_out), "5", path_str(&go_late)],
    );
    let outside_pid = outside.id();

    std::fs::write(&go_early, "").unwrap();
    let early_ended = wait_child(&mut early, CHILD_TIMEOUT, "the process moved in before fij");
    wait_exit_record(&mut fij, early_pid);
    std::fs::write(&go_late, "").unwrap();
    let parent_ended = wait_child(&mut parent, CHILD_TIMEOUT, "the forking parent");
    let outside_ended = wait_child(&mut outside, CHILD_TIMEOUT, "the process outside");
    let child = pid_of(
        &fij.wait_for_record("the child's joined record", CHILD_TIMEOUT, |r| {
            r["event"] == "joined" && r["pid"].as_u64() != Some(early_pid as u64)
        }),
    );
    wait_exit_record(&mut fij, child);

    let run = interrupt(fij);
    assert_eq!(early_ended, Ended::Signal(libc::SIGKILL), "{run}");
    assert_eq!(parent_ended, Ended::Code(0), "{run}");
    assert_eq!(outside_ended, Ended::Code(0), "{run}");
    // The start scan logs the process it found (t_ns 0); the child joins later, in kernel.
    assert_eq!(
        joined(&run.log, "sel"),
        [
            (early_pid, "cgroup".to_owned()),
            (child, "cgroup".to_owned())
        ],
        "{run}"
    );
    assert_injections(
        &run.log,
        &[
            injection("f", "write", 3, early_pid, "SIGKILL"),
            injection("f", "write", 3, child, "SIGKILL"),
        ],
    );
    assert_eq!(run.log.exit_status(early_pid), "signal SIGKILL", "{run}");
    assert_eq!(run.log.exit_status(child), "signal SIGKILL", "{run}");
    assert_untouched(
        &run.log,
        parent_pid,
        "the parent that exec'd outside the cgroup",
    );
    assert_untouched(&run.log, outside_pid, "the process outside the cgroup");
    assert_eq!(read_lines(&early_out), calls_done(1), "{run}");
    assert_eq!(
        read_lines(&parent_out),
        calls_then(1, &["child killed by 9 usr1=0"]),
        "{run}"
    );
    assert_eq!(read_lines(&outside_out), calls_done(5), "{run}");
}

// ---------------------------------------------------------------------------------------------
// Pid namespaces.

/// Test 13: targets inside a new pid namespace (`unshare --pid --fork --mount-proc`). The log
/// has init-namespace pids (those of the fork records), while the processes see their namespace
/// pids; faults fire both on the namespace's init (pid 1 inside: a kernel-sent SIGKILL does end
/// it) and on a process it forks.
#[test]
fn targets_in_a_pid_namespace_are_logged_with_init_namespace_pids() {
    let dir = TempDir::new("pidns");
    let program = build(&dir, "prog");
    let (init_out, inner_out) = (dir.join("init.txt"), dir.join("inner.txt"));
    let unshare = |args: &[&str]| {
        let mut argv = vec![
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            path_str(&program),
        ];
        argv.extend(args);
        toml_array(&argv)
    };
    let scenario = command_target("init", &unshare(&["pid-calls", path_str(&init_out), "5"]))
        + &command_target("inner", &unshare(&["forks", path_str(&inner_out), "3"]))
        + &fault("on-init", "init", &kill_on("syscall", "write", 3))
        + &fault("on-inner", "inner", &kill_on("syscall", "write", 1));
    let scenario = dir.write("s.toml", &scenario);

    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let forks_of = |parent: u32| -> Vec<u32> {
        run.log
            .forks()
            .iter()
            .filter(|f| f["parent_pid"] == parent)
            .map(|f| pid_of(f))
            .collect()
    };
    // `init`: unshare forks the namespace's init, which runs the program.
    let unshare_a = run.log.target_pid("init");
    let [ns_init] = forks_of(unshare_a)[..] else {
        panic!("unshare forks once:\n{run}")
    };
    // `inner`: unshare → the namespace's init running `forks` → 3 children (ns pids 2, 3, 4).
    let unshare_b = run.log.target_pid("inner");
    let [inner_init] = forks_of(unshare_b)[..] else {
        panic!("unshare forks once:\n{run}")
    };
    let children = forks_of(inner_init);
    assert_eq!(children.len(), 3, "{run}");
    let log = run
        .log
        .sorted_by_key(|r| (r["event"] != "injection", r["fault"] != "on-init"));
    assert_injections(
        &log,
        &[
            injection("on-init", "write", 3, ns_init, "SIGKILL"),
            injection("on-inner", "write", 1, children[0], "SIGKILL"),
        ],
    );
    // Not the pids the processes see (1 for the namespace's init, 3 and 4 for its children).
    assert!(
        ns_init != 1 && children[1] != 3 && children[2] != 4,
        "{run}"
    );
    assert_eq!(run.log.exit_status(ns_init), "signal SIGKILL", "{run}");
    // util-linux's unshare re-raises its child's signal, which it cannot do with SIGKILL: it
    // says so and exits 1.
    assert_eq!(run.log.exit_status(unshare_a), "code 1", "{run}");
    assert_eq!(run.log.exit_status(children[0]), "signal SIGKILL", "{run}");
    for &pid in &children[1..] {
        assert_eq!(run.log.exit_status(pid), "code 0", "{run}");
    }
    assert_eq!(run.log.exit_status(inner_init), "code 0", "{run}");
    assert_eq!(run.log.exit_status(unshare_b), "code 0", "{run}");
    // The namespace's init sees itself as pid 1; it died on its 3rd write (`returned 1`).
    assert_eq!(
        read_lines(&init_out),
        ["pid 1 usr1=0", "call 1 usr1=0"],
        "{run}"
    );
    // The first child (ns pid 2) died on its only write; the next two see ns pids 3 and 4.
    assert_eq!(
        read_lines(&inner_out),
        [
            "forked 1 usr1=0",
            "child pid 3 usr1=0",
            "forked 2 usr1=0",
            "child pid 4 usr1=0",
            "forked 3 usr1=0",
        ],
        "{run}"
    );
}

/// Test 14: the `port` filter of syscall triggers, in kernel. A client connects alternately to
/// two listeners (B, then A, four times); the fault `connect` with `port = A`, `nth = 2` counts
/// only the connects to A, so the client dies entering its 2nd connect to A — after connecting
/// to B twice and to A once — whatever its connects to B.
#[test]
fn port_filter_counts_only_calls_to_that_port() {
    let dir = TempDir::new("port-filter");
    let listen = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = l.local_addr().unwrap().port();
        (l, port)
    };
    let ((_a, port_a), (_b, port_b)) = (listen(), listen());
    let out_file = dir.join("out.txt");
    let client = dir.write(
        "client.py",
        &format!(
            "import socket\nout = open({out:?}, 'w', buffering=1)\n\
             for i in range(1, 5):\n    for port in ({port_b}, {port_a}):\n        \
             s = socket.socket(); s.connect(('127.0.0.1', port)); out.write(f'{{port}} #{{i}}\\n'); s.close()\n\
             out.write('done\\n')\n",
            out = path_str(&out_file)
        ),
    );
    let scenario = dir.write(
        "s.toml",
        &format!(
            "[[target]]\nname = \"client\"\ncommand = [\"python3\", {client}]\n\n\
             [[fault]]\nname = \"second-connect-to-a\"\ntarget = \"client\"\naction = \"kill\"\n\
             trigger = {{ syscall = \"connect\", port = {port_a} }}\nnth = 2\n",
            client = toml_str(path_str(&client))
        ),
    );
    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let injections = run.log.records("injection");
    assert_eq!(injections.len(), 1, "{run}");
    assert_eq!(injections[0]["hit"], 2, "{run}");
    assert_eq!(injections[0]["syscall"], "connect", "{run}");
    assert_eq!(
        injections[0]["trigger"],
        format!("connect port {port_a}"),
        "{run}"
    );
    let pid = run.log.target_pid("client");
    assert_eq!(run.log.exit_status(pid), "signal SIGKILL", "{run}");
    assert_eq!(
        read_lines(&out_file),
        [
            format!("{port_b} #1"),
            format!("{port_a} #1"),
            format!("{port_b} #2")
        ],
        "{run}"
    );
}
