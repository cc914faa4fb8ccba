//! `cargo xtask bench --stap`: the stap rows alone — the same campaigns through `fij run
//! --backend stap` (stap's BPF runtime) and `--backend ebpf`, side by side: a non-target's
//! syscall cost and a kill's latency (one campaign: a `sleep` target, and a loop killed on its
//! 1000th `getppid`), an armed target's syscall cost and start to armed (the loop is the target
//! of a `getppid` fault that never fires), stap's compile time apart from its load time.
//! Writes `<target>/bench-stap/results.md`. Each stap campaign compiles its script first
//! (minutes on a busy machine), hence few rounds.
use std::{fmt::Write as _, fs, time::Duration};

use anyhow::{Context, Result, ensure};
use fij_common::log::monotonic_ns;
use fij_tests::{Fij, RunningFij, processes_named};

use super::{Bench, Config, Samples, fault, kill_latency_ns, parse_loop, terminate};

/// A hit that never comes, below 2^31: stap's BPF code generator turns `hit != 4000000000` into a
/// program the verifier rejects ("unreachable insn"), found by trying.
const NEVER: u64 = 1_000_000_000;

/// Rounds of each stap campaign (one compile each).
const STAP_ROUNDS: usize = 1;
/// Loop measurements per round while a campaign runs, each between baselines.
const LOOPS_PER_ROUND: usize = 3;
/// A stap campaign's compile can take minutes on a busy 2-CPU machine.
const STAP_RUN_LIMIT: Duration = Duration::from_secs(20 * 60);

#[derive(Default)]
struct StapResults {
    /// By backend ("ebpf", "stap").
    non_target_over: [Samples; 2],
    armed_over: [Samples; 2],
    kill_us: [Samples; 2],
    start_to_armed_ms: [Samples; 2],
    compile_s: Samples,
    load_ms: Samples,
}

const BACKENDS: [&str; 2] = ["ebpf", "stap"];

pub fn run() -> Result<()> {
    crate::setup::run()?;
    crate::build(true)?;
    let mut bench = Bench::new(Config::new(true))?;
    let result = measure(&mut bench);
    let _ = fs::remove_dir_all(&bench.dir);
    let (r, calls) = result?;
    let report = markdown(&r, calls);
    let out_dir = crate::target_dir().join("bench-stap");
    fs::create_dir_all(&out_dir)?;
    let md = out_dir.join("results.md");
    fs::write(&md, &report).with_context(|| format!("cannot write {}", md.display()))?;
    println!("\n{report}\nwrote {}", md.display());
    Ok(())
}

fn fij_run(bench: &mut Bench, scenario: &std::path::Path, backend: &str) -> Fij {
    bench
        .fij_run(scenario)
        .arg("--backend")
        .arg(backend)
        .timeout(STAP_RUN_LIMIT)
}

/// stapbpf's pid (it owns the stap campaign's programs), if one runs.
fn ours(fij: &RunningFij) -> Vec<u32> {
    let mut ours = processes_named("stapbpf");
    ours.push(fij.pid());
    ours
}

fn measure(b: &mut Bench) -> Result<(StapResults, u64)> {
    let mut r = StapResults::default();
    let calls = b.cfg.loop_calls;
    let loop_argv = |b: &Bench, calls: u64| {
        let mut argv = vec![b.syscall_loop.display().to_string()];
        argv.extend(b.loop_args(calls));
        argv.iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Non-target and kill: a sleeping target, and a loop killed on its 1000th getppid.
    let other = format!(
        "seed = 1\nduration = \"10m\"\n\n[[target]]\nname = \"other\"\ncommand = [\"sleep\", \"100000\"]\n\n\
         [[target]]\nname = \"victim\"\ncommand = [{}]\n\n{}\n{}",
        loop_argv(b, calls),
        fault("never", "other", "getppid", NEVER),
        fault("kill", "victim", "getppid", 1000),
    );
    let other = b.write_scenario("stap-other", &other)?;
    let armed = format!(
        "seed = 1\nduration = \"10m\"\n\n[[target]]\nname = \"loop\"\ncommand = [{}]\n\n{}",
        loop_argv(b, calls),
        fault("never", "loop", "getppid", NEVER)
    );
    let armed = b.write_scenario("stap-armed", &armed)?;
    println!(
        "\n== stap: non-target syscall cost and kill latency (`fij run --backend ebpf|stap`: a \
         sleeping target, and a loop killed on its 1000th getppid); armed-target cost and start \
         to armed (the loop is the target of a getppid fault with nth = {NEVER}) =="
    );
    for round in 0..STAP_ROUNDS {
        for (i, backend) in BACKENDS.into_iter().enumerate() {
            let before = b.measure_loop(&[])?;
            let mut fij = fij_run(b, &other, backend).spawn();
            // A stap campaign compiles first: minutes, not wait_armed's 30 s.
            fij.wait_for_record("the start record", STAP_RUN_LIMIT, |r| {
                r["event"] == "start"
            });
            let owners = ours(&fij);
            // The victim is killed at once; its exit is in the log before the loop is measured.
            let mut during = Vec::new();
            for _ in 0..LOOPS_PER_ROUND {
                during.push(b.measure_loop(&owners)?);
            }
            let out = terminate(fij)?;
            let after = b.measure_loop(&[])?;
            let base = (before + after) / 2.0;
            for ns in &during {
                r.non_target_over[i].push(ns - base);
            }
            r.kill_us[i].push(kill_latency_ns(&out.log)? as f64 / 1e3);

            let t0 = monotonic_ns();
            let out = fij_run(b, &armed, backend).spawn().finish();
            ensure!(out.ended == fij_tests::Ended::Code(0), "{out}");
            let run = parse_loop(&out.stdout)?;
            let after = b.measure_loop(&[])?;
            r.armed_over[i].push(run.best - after);
            r.start_to_armed_ms[i].push(run.start_ns.saturating_sub(t0) as f64 / 1e6);
            if backend == "stap" {
                let field = |name: &str| -> Result<f64> {
                    out.stderr
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                        .with_context(|| format!("no {name}= in fij's stderr:\n{}", out.stderr))?
                        .parse()
                        .context(name.to_string())
                };
                r.compile_s.push(field("compile_s")?);
                r.load_ms.push(field("load_s")? * 1e3);
            }
            println!(
                "round {}/{STAP_ROUNDS} {backend}: non-target {:?} ns/syscall (baseline {base:.1}), \
                 kill {:.0} µs, armed {:.1} ns/syscall (baseline {after:.1}), start to armed {:.0} ms",
                round + 1,
                during,
                r.kill_us[i].0.last().unwrap(),
                run.best,
                r.start_to_armed_ms[i].0.last().unwrap(),
            );
        }
    }
    Ok((r, calls))
}

fn markdown(r: &StapResults, calls: u64) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## fij's eBPF backend and stap's BPF runtime (`fij run --backend ebpf|stap`)\n\n\
         Medians over {STAP_ROUNDS} campaigns per backend ({LOOPS_PER_ROUND} non-target loops \
         each; loops of {calls} getppid, fastest chunk), on a shared machine.\n\n\
         | measurement | ebpf | stap (BPF runtime) | stap / ebpf |\n|---|---|---|---|"
    );
    let row = |md: &mut String, name: &str, unit: &str, s: &[Samples; 2]| {
        let (e, t) = (s[0].median(), s[1].median());
        let _ = writeln!(
            md,
            "| {name} | {e:.1} {unit} | {t:.1} {unit} | {:.1}× |",
            t / e
        );
    };
    row(
        &mut md,
        "non-target syscall, over baseline",
        "ns",
        &r.non_target_over,
    );
    row(
        &mut md,
        "armed-target syscall, over baseline",
        "ns",
        &r.armed_over,
    );
    row(&mut md, "kill latency (injection → exit)", "µs", &r.kill_us);
    row(&mut md, "start to armed", "ms", &r.start_to_armed_ms);
    let _ = writeln!(
        md,
        "\nstap's start to armed is its compile (`stap -p4`, median {:.1} s) then its load \
         (`stapbpf` to the script's `armed` line, median {:.0} ms).",
        r.compile_s.median(),
        r.load_ms.median()
    );
    md
}
