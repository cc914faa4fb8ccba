//! `cargo xtask bench --stap-module`: fij's eBPF backend beside SystemTap's module runtime (the
//! one the paper used), in the kernel lab's Debian 13 guest (6.12 under qemu; this machine's
//! kernel loads no modules). The same two campaigns as `bench --stap`'s, once through `fij run`
//! and once as the module that trixie's stap 5.1 compiles from `fij stap --runtime module` of the
//! same scenario (on the host, in the lab's trixie root), loaded with `staprun -c` in the guest:
//!
//! - **armed**: a `getppid` loop (`fij-syscall-loop`) is the target of a fault that never fires:
//!   its cost per syscall over the same loop untraced, and the time from launch until the loop
//!   runs (fij: start to armed; stap: the module's load, its compile apart);
//! - **non-target**: a sleeping `sleep` is the target; the loop, no target, pays what every
//!   other process pays;
//! - **kill**: the loop is killed on its 1000th `getppid`: the time from the injection to the
//!   victim's exit, as each backend records both (fij's log; the module's `injection` and `exit`
//!   lines, `ktime_ns` of the same clock).
//!
//! Under TCG the guest's CPUs are ~16× slower than the host's, so the nanoseconds are the
//! guest's, not this machine's: the ratios between the columns are the result. Writes
//! `<target>/bench-stap-module/results.md`.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

use super::{Samples, fault};
use crate::{cmd, vm};

/// A hit that never comes (the same as `bench --stap`'s).
const NEVER: u64 = 1_000_000_000;
/// getppid calls per loop: ~1 µs each in the guest, so well under a second a loop.
const CALLS: u64 = 300_000;
/// Rounds in the guest, each measuring every configuration once.
const ROUNDS: usize = 5;
/// The guest's CPU the loops run on (of two).
const CPU: u32 = 1;
/// Sleeps no one else runs, so the script can end them by their arguments.
const FIJ_SLEEPER: &str = "999998";
const STAP_SLEEPER: &str = "999997";
/// Turns off the module runtime's overload protection. Without it the module stops itself in the
/// first round ("ERROR: probe overhead (547268167 cycles) exceeded threshold (500000000 cycles)
/// in last 1000000000 cycles", armed and non-target alike): in the guest, a loop of syscalls
/// spends more than half its cycles in stap's probe (not tried on real hardware: this machine
/// loads no modules). The bench measures the cost with the protection off and says so.
const NO_OVERLOAD: &str = "STP_NO_OVERLOAD";
/// The modules' names (and their scripts', in the root's work directory).
const ARMED: &str = "fij_bench_armed";
const OTHER: &str = "fij_bench_other";
const KILL: &str = "fij_bench_kill";
/// The kill campaign's hit (as `bench`'s kill latency).
const KILL_NTH: u64 = 1000;

pub fn run() -> Result<()> {
    crate::setup::run_vm()?;
    crate::build(true)?;
    let vm_dir = crate::target_dir().join("vm");
    fs::create_dir_all(&vm_dir)?;
    let kernel = vm::DEBIAN13.prepare(&vm_dir, false)?;
    let root = vm::stap_chroot::prepare(&vm_dir, &kernel.release, vm::DEBIAN13.suite)?;

    let bin = crate::bin_dir(true);
    let host_loop = bin.join("fij-syscall-loop");
    let fij = crate::fij_bin(true);
    // The loop in the root, for staprun's `-c` (the root has trixie's libc, newer than the
    // host's, which the loop is linked against).
    fs::copy(&host_loop, root.work_path("fij-syscall-loop"))?;
    let loop_argv = |exe: &str| format!("{exe} --cpu {CPU} {CALLS}");

    let dir = crate::target_dir().join("bench-stap-module");
    fs::create_dir_all(&dir)?;
    let toml_argv = |argv: &str| {
        argv.split(' ')
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // A campaign on the loop `exe`: `fault` (a `[[fault]]` table) is its one fault.
    let loop_campaign = |exe: &str, fault: String| {
        format!(
            "seed = 1\nduration = \"10m\"\n\n[[target]]\nname = \"loop\"\ncommand = [{}]\n\n{fault}",
            toml_argv(&loop_argv(exe))
        )
    };
    let host_exe = host_loop.display().to_string();
    let armed = dir.join("armed.toml");
    fs::write(
        &armed,
        loop_campaign(&host_exe, fault("never", "loop", "getppid", NEVER)),
    )?;
    let other = |sleeper: &str| {
        format!(
            "seed = 1\nduration = \"10m\"\n\n[[target]]\nname = \"other\"\n\
             command = [\"sleep\", \"{sleeper}\"]\n\n{}",
            fault("never", "other", "getppid", NEVER)
        )
    };
    let fij_other = dir.join("other.toml");
    fs::write(&fij_other, other(FIJ_SLEEPER))?;
    let stap_other = dir.join("other-stap.toml");
    fs::write(&stap_other, other(STAP_SLEEPER))?;

    let kill = dir.join("kill.toml");
    let kill_fault = || fault("kill", "loop", "getppid", KILL_NTH);
    fs::write(&kill, loop_campaign(&host_exe, kill_fault()))?;
    // The same campaign with the loop the root runs (staprun's `-c`), for the module.
    let stap_kill = dir.join("kill-stap.toml");
    fs::write(
        &stap_kill,
        loop_campaign(
            &format!("{}/fij-syscall-loop", root.work_dir()),
            kill_fault(),
        ),
    )?;

    let mut compile_s = Vec::new();
    for (scenario, module) in [(&armed, ARMED), (&stap_other, OTHER), (&stap_kill, KILL)] {
        let script = format!("{module}.stp");
        cmd::run(
            std::process::Command::new(&fij)
                .arg("stap")
                .arg(scenario)
                .args(["--runtime", "module", "-o"])
                .arg(root.work_path(&script)),
        )?;
        let (_, took) = root.compile(&script, module, &[NO_OVERLOAD])?;
        println!(
            "stap-chroot: {module}.ko compiled in {:.1} s",
            took.as_secs_f64()
        );
        compile_s.push(took.as_secs_f64());
    }

    let script = |out: &Path| {
        guest_script(
            out,
            &fij.display().to_string(),
            &host_loop.display().to_string(),
            &root.root.display().to_string(),
            &root.work_dir(),
            &FijScenarios {
                armed: armed.clone(),
                other: fij_other.clone(),
                kill: kill.clone(),
            },
        )
    };
    let out = vm::boot_script(
        &vm_dir,
        &kernel,
        "bench-stap-module",
        script,
        Duration::from_secs(30 * 60),
    )?;
    let text = fs::read_to_string(out.join("results.txt"))
        .with_context(|| format!("the guest left no {}", out.join("results.txt").display()))?;
    let mut results = Results::parse(&text)?;
    for round in 1..=ROUNDS {
        let fij_log = out.join(format!("kill-fij-{round}.jsonl"));
        let log = fij_tests::Log::read_partial(&fij_log);
        results
            .fij_kill_us
            .push(super::kill_latency_ns(&log)? as f64 / 1e3);
        let module_out = out.join(format!("kill-stap-{round}.out"));
        let lines = fs::read_to_string(&module_out)
            .with_context(|| format!("the guest left no {}", module_out.display()))?;
        results
            .stap_kill_us
            .push(module_kill_latency_ns(&lines)? as f64 / 1e3);
    }
    let report = markdown(&results, &kernel.release, &compile_s);
    let md = dir.join("results.md");
    fs::write(&md, &report).with_context(|| format!("cannot write {}", md.display()))?;
    println!("\n{report}\nwrote {}", md.display());
    Ok(())
}

/// The guest's run.sh: [`ROUNDS`] rounds of: the loop untraced; the armed campaign through fij,
/// then through the module; the loop as a non-target beside each; one `KEY=VALUE …` line per
/// measurement in `<out>/results.txt`. Exits non-zero if a step fails.
fn guest_script(
    out: &Path,
    fij: &str,
    host_loop: &str,
    root: &str,
    work: &str,
    scenarios: &FijScenarios,
) -> String {
    let q = |s: &str| cmd::quote(s);
    format!(
        r#"# Written by `cargo xtask bench --stap-module`.
set -eu
# On a failure, what fij and staprun printed.
trap 'rc=$?; [ $rc -eq 0 ] || for f in /tmp/*.err; do echo "== $f"; cat "$f"; done' EXIT
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
res={res}
out={out}
fij={fij}
loop={host_loop}
root={root}
work={work}
: > "$res"
# A loop's result line, and CLOCK_MONOTONIC now (as a loop's start).
run_loop() {{ "$loop" --cpu {CPU} {CALLS}; }}
now() {{ "$loop" 0 | sed -n 's/.*start_monotonic_ns=\([0-9]*\).*/\1/p'; }}
# staprun -o WORK/OUTPUT -c COMMAND WORK/MODULE.ko in the trixie root (its own mounts), WORK
# being the release's work directory in the root.
staprun_in_root() {{
  unshare -m sh -c 'mount --make-rprivate / && mount --bind /dev "$1/dev" &&
    mount -t proc proc "$1/proc" && mount -t sysfs sys "$1/sys" &&
    mount -t debugfs debugfs "$1/sys/kernel/debug" &&
    exec chroot "$1" staprun -o "$5/$2" -c "$4" "$5/$3.ko"' sh "$root" "$@" "$work"
}}
wait_for() {{  # FILE PATTERN: until FILE has a line matching PATTERN (at most 120 s)
  i=0
  until grep -q "$2" "$1" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 1200 ] || {{ echo "no '$2' in $1"; exit 1; }}
    sleep 0.1
  done
}}
for round in $(seq {ROUNDS}); do
  echo "== round $round of {ROUNDS}"
  echo "round=$round config=base $(run_loop)" >> "$res"
  t0=$(now)
  line=$("$fij" run {armed} --log /tmp/armed-$round.jsonl 2>/tmp/armed-$round.err | grep best_chunk)
  echo "round=$round config=fij-armed t0=$t0 $line" >> "$res"
  echo "round=$round config=base $(run_loop)" >> "$res"
  t0=$(now)
  line=$(staprun_in_root armed-$round.out {ARMED} "$work/fij-syscall-loop --cpu {CPU} {CALLS}" 2>/tmp/stap-armed-$round.err | grep best_chunk)
  grep -q '^fij-stap armed' "$root$work/armed-$round.out"
  echo "round=$round config=stap-armed t0=$t0 $line" >> "$res"
  echo "round=$round config=base $(run_loop)" >> "$res"

  "$fij" run {other} --log /tmp/other-$round.jsonl 2>/tmp/other-$round.err &
  fij_pid=$!
  wait_for /tmp/other-$round.jsonl '"event":"start"'
  echo "round=$round config=fij-other $(run_loop)" >> "$res"
  kill -TERM $fij_pid; wait $fij_pid
  echo "round=$round config=base $(run_loop)" >> "$res"
  staprun_in_root other-$round.out {OTHER} "sleep {STAP_SLEEPER}" 2>/tmp/stap-other-$round.err &
  stap_pid=$!
  wait_for "$root$work/other-$round.out" '^fij-stap armed'
  echo "round=$round config=stap-other $(run_loop)" >> "$res"
  pkill -x -f "sleep {STAP_SLEEPER}"
  wait $stap_pid || true  # stapio exits 1 when -c's command dies of a signal
  grep -q '^fij-stap end' "$root$work/other-$round.out"
  echo "round=$round config=base $(run_loop)" >> "$res"

  # The kill: each backend's records of the injection and the exit, kept for xtask.
  "$fij" run {kill} --log "$out/kill-fij-$round.jsonl" >/dev/null 2>/tmp/kill-$round.err
  staprun_in_root kill-$round.out {KILL} "$work/fij-syscall-loop --cpu {CPU} {CALLS}" \
    >/dev/null 2>/tmp/stap-kill-$round.err || true  # stapio exits 1: -c's command was killed
  cp "$root$work/kill-$round.out" "$out/kill-stap-$round.out"
done
echo "== bench done"
"#,
        res = q(&out.join("results.txt").display().to_string()),
        out = q(&out.display().to_string()),
        kill = q(&scenarios.kill.display().to_string()),
        fij = q(fij),
        host_loop = q(host_loop),
        root = q(root),
        work = q(work),
        armed = q(&scenarios.armed.display().to_string()),
        other = q(&scenarios.other.display().to_string()),
    )
}

/// The scenarios the guest runs with `fij run`.
struct FijScenarios {
    armed: PathBuf,
    other: PathBuf,
    kill: PathBuf,
}

/// The guest's measurements, by configuration.
#[derive(Default)]
struct Results {
    /// ns/syscall of the untraced loop (fastest chunk), in order.
    base: Vec<f64>,
    /// Over the mean of the baselines just before and after.
    fij_armed_over: Samples,
    stap_armed_over: Samples,
    fij_other_over: Samples,
    stap_other_over: Samples,
    /// From launch (`fij run` / `staprun`) until the loop ran, ms.
    fij_start_ms: Samples,
    stap_start_ms: Samples,
    /// From the kill's injection to the victim's exit, µs.
    fij_kill_us: Samples,
    stap_kill_us: Samples,
}

impl Results {
    fn parse(text: &str) -> Result<Self> {
        let mut r = Results::default();
        // (config, best, start_ns, t0), in the order measured.
        let mut rows = Vec::new();
        for line in text.lines() {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            };
            let config = field("config").with_context(|| format!("no config= in `{line}`"))?;
            let best: f64 = field("best_chunk_ns_per_syscall")
                .with_context(|| format!("no loop result in `{line}`"))?
                .parse()?;
            let start: u64 = field("start_monotonic_ns").unwrap_or("0").parse()?;
            let t0: u64 = field("t0").unwrap_or("0").parse()?;
            rows.push((config.to_owned(), best, start, t0));
        }
        ensure!(!rows.is_empty(), "no measurement in results.txt");
        for (i, (config, best, start, t0)) in rows.iter().enumerate() {
            if config == "base" {
                r.base.push(*best);
                continue;
            }
            let neighbour = |j: Option<usize>| -> Result<f64> {
                match j.and_then(|j| rows.get(j)) {
                    Some((c, b, _, _)) if c == "base" => Ok(*b),
                    _ => bail!("{config} (line {}) is not between two baselines", i + 1),
                }
            };
            let base = (neighbour(i.checked_sub(1))? + neighbour(Some(i + 1))?) / 2.0;
            let start_ms = start.saturating_sub(*t0) as f64 / 1e6;
            match config.as_str() {
                "fij-armed" => {
                    r.fij_armed_over.push(best - base);
                    r.fij_start_ms.push(start_ms);
                }
                "stap-armed" => {
                    r.stap_armed_over.push(best - base);
                    r.stap_start_ms.push(start_ms);
                }
                "fij-other" => r.fij_other_over.push(best - base),
                "stap-other" => r.stap_other_over.push(best - base),
                other => bail!("unknown configuration {other}"),
            }
        }
        Ok(r)
    }
}

/// The module's kill latency: from its first `injection` line's `ktime_ns` to the `exit` line of
/// the same pid (stap's `ktime_get_ns`, as fij's `bpf_ktime_get_ns`).
fn module_kill_latency_ns(output: &str) -> Result<u64> {
    // stap prints `ktime_ns` in decimal (the parser in fij's stap/output.rs also takes 0x).
    let number = |fields: &std::collections::BTreeMap<&str, &str>, name: &str| -> Option<u64> {
        let value = fields.get(name)?;
        match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => value.parse().ok(),
        }
    };
    let records = |record: &'static str| {
        output
            .lines()
            .filter_map(move |l| fij_tests::stap_record(l, record))
    };
    let injection = records("injection")
        .next()
        .with_context(|| format!("no injection line in the module's output:\n{output}"))?;
    let (pid, injected) = number(&injection, "pid")
        .zip(number(&injection, "ktime_ns"))
        .with_context(|| format!("no pid and ktime_ns in the injection line {injection:?}"))?;
    let exited = records("exit")
        .find(|exit| number(exit, "pid") == Some(pid))
        .and_then(|exit| number(&exit, "ktime_ns"))
        .with_context(|| format!("no exit line of pid {pid} in the module's output:\n{output}"))?;
    Ok(exited.saturating_sub(injected))
}

fn markdown(r: &Results, release: &str, compile_s: &[f64]) -> String {
    let mut base = Samples::default();
    for b in &r.base {
        base.push(*b);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## fij's eBPF backend and SystemTap's module runtime, in the kernel lab's guest\n\n\
         Kernel {release} under qemu (single-threaded TCG: the guest's nanoseconds, ~16× the \
         host's); medians of {ROUNDS} rounds; loops of {CALLS} getppid, fastest chunk; the \
         untraced loop: {:.1} ns/syscall (median of {}).\n\n\
         | measurement | fij (eBPF) | stap module | stap / fij |\n|---|---|---|---|",
        base.median(),
        r.base.len()
    );
    let row = |md: &mut String, name: &str, unit: &str, f: &Samples, s: &Samples| {
        let (f, s) = (f.median(), s.median());
        let _ = writeln!(
            md,
            "| {name} | {f:.1} {unit} | {s:.1} {unit} | {:.1}× |",
            s / f
        );
    };
    row(
        &mut md,
        "armed-target syscall, over the untraced loop",
        "ns",
        &r.fij_armed_over,
        &r.stap_armed_over,
    );
    row(
        &mut md,
        "non-target syscall, over the untraced loop",
        "ns",
        &r.fij_other_over,
        &r.stap_other_over,
    );
    row(
        &mut md,
        "launch to the target running (fij: start to armed; stap: staprun's load)",
        "ms",
        &r.fij_start_ms,
        &r.stap_start_ms,
    );
    row(
        &mut md,
        &format!("kill on the {KILL_NTH}th getppid: injection to the victim's exit"),
        "µs",
        &r.fij_kill_us,
        &r.stap_kill_us,
    );
    // Under TCG a kill's few microseconds of work spread over milliseconds of emulation and
    // scheduling: the rounds' spread says whether the medians differ at all.
    let _ = writeln!(
        md,
        "\nKill latency, every round: fij {:.0}–{:.0} µs, the module {:.0}–{:.0} µs.",
        r.fij_kill_us.min(),
        r.fij_kill_us.max(),
        r.stap_kill_us.min(),
        r.stap_kill_us.max()
    );
    let _ = writeln!(
        md,
        "\nThe module is compiled on the host before the boot (`stap -g -p4 -D {NO_OVERLOAD}` \
         in the trixie root, against {release}'s headers; without `{NO_OVERLOAD}` the module \
         stops itself in a syscall loop, its probe taking over half the cycles): {} s for the \
         armed script, {} s for the other \
         (stap's cache kept from earlier compiles counts: its first compile for a kernel builds \
         the tracepoint queries, minutes).",
        compile_s.first().map_or("?".into(), |s| format!("{s:.1}")),
        compile_s.get(1).map_or("?".into(), |s| format!("{s:.1}")),
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modules_kill_latency_is_its_injection_to_the_exit_of_the_same_pid() {
        let output = "fij-stap armed ktime_ns=0x100\n\
                      fij-stap injection fault=0 target=0 instance=0 pid=42 tid=42 hit=1000 \
                      draw=0 signal=9 result=0 by=hit scheduled_ns=0 ktime_ns=0x1000\n\
                      fij-stap exit pid=43 target=0 status=0 ktime_ns=0x1100\n\
                      fij-stap exit pid=42 target=0 status=9 ktime_ns=0x1800\n";
        assert_eq!(module_kill_latency_ns(output).unwrap(), 0x800);
        assert!(module_kill_latency_ns("fij-stap armed ktime_ns=0x100\n").is_err());
    }

    #[test]
    fn the_guest_script_measures_every_configuration_between_two_baselines() {
        let script = guest_script(
            Path::new("/out"),
            "/fij",
            "/loop",
            "/root",
            "/work/6.12",
            &FijScenarios {
                armed: "/a.toml".into(),
                other: "/o.toml".into(),
                kill: "/k.toml".into(),
            },
        );
        let configs: Vec<&str> = script
            .lines()
            .filter_map(|l| l.split("config=").nth(1)?.split_whitespace().next())
            .collect();
        assert_eq!(configs.first(), Some(&"base"));
        assert_eq!(configs.last(), Some(&"base"));
        for pair in configs.windows(2) {
            assert!(
                pair.contains(&"base"),
                "{pair:?} without a baseline between"
            );
        }
        for config in ["fij-armed", "stap-armed", "fij-other", "stap-other"] {
            assert!(configs.contains(&config), "{config} not measured");
        }
    }

    #[test]
    fn each_measurement_is_taken_over_the_baselines_around_it() {
        let text = "round=1 config=base start_monotonic_ns=1 ns_per_syscall=1 best_chunk_ns_per_syscall=100 calls=1\n\
                    round=1 config=fij-armed t0=1000000 start_monotonic_ns=21000000 ns_per_syscall=1 best_chunk_ns_per_syscall=150\n\
                    round=1 config=base start_monotonic_ns=1 ns_per_syscall=1 best_chunk_ns_per_syscall=110\n\
                    round=1 config=stap-other start_monotonic_ns=1 ns_per_syscall=1 best_chunk_ns_per_syscall=120\n\
                    round=1 config=base start_monotonic_ns=1 ns_per_syscall=1 best_chunk_ns_per_syscall=100\n";
        let r = Results::parse(text).unwrap();
        assert_eq!(r.base, [100.0, 110.0, 100.0]);
        assert_eq!(r.fij_armed_over.median(), 45.0);
        assert_eq!(r.fij_start_ms.median(), 20.0);
        assert_eq!(r.stap_other_over.median(), 15.0);
        assert!(Results::parse("round=1 config=fij-other best_chunk_ns_per_syscall=1\n").is_err());
    }
}
