//! fij's development tasks, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! Every task that builds or runs fij first runs `setup`, so a fresh Debian 12 machine (root,
//! rustup's cargo on PATH) needs nothing but `cargo xtask test`; that is what `.ci/run` does.
//!
//! `bench` and `demo` run fij, read its log and start Redis with the integration tests' harness
//! (`fij-tests`), which panics on a failure with a message saying what failed; what they started
//! is killed on the way out. `soak` runs the harness's soak (`fij_tests::soak`, the same code as
//! the privileged test `tests/it/soak.rs`) for minutes. xtask depends on `fij-tests` and
//! `fij-common`, never on `fij` itself, whose build needs the eBPF toolchain that `setup`
//! installs.
mod bench;
mod cmd;
mod demo;
mod setup;
mod soak;
mod vm;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "fij's development tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing fij needs (Debian packages, bpf-linker, tracefs and
    /// bpffs mounts); does only what is missing. Must run as root.
    Setup,
    /// Run setup, then build the `fij` binary and the test binaries (`fij-tests`).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Run setup, build and dist, then `cargo test --workspace` one test at a time, with
    /// `FIJ_BIN` set to the built `fij` binary and `FIJ_DIST_BIN` to the static one; then the
    /// kernel lab's bounded subset (`cargo xtask vm` under Debian 12 and 13, see
    /// docs/kernel-lab.md).
    Test,
    /// Install the build tools (setup without test packages and mounts), then build `fij` as one
    /// static executable (release, glibc linked in with `+crt-static`, the eBPF object
    /// embedded) into <target>/dist/fij; print its path and size.
    Dist,
    /// Run setup and build, then crash and kill a Redis primary and show what its replica saw.
    Demo,
    /// Run setup and a release build, then measure fij against its floor and its peers
    /// (bpftrace, strace); writes bench/results.md and bench/results.json.
    Bench {
        /// A tiny configuration (a smoke test, well under a minute); writes to
        /// <target>/bench-quick/ instead of bench/.
        #[arg(long)]
        quick: bool,
        /// Run one part alone and print its rows, writing no results file: `errno`.
        #[arg(long)]
        only: Option<String>,
        /// Only the stap rows: the same campaigns through `fij run --backend stap` and
        /// `--backend ebpf`; writes <target>/bench-stap/results.md.
        #[arg(long, conflicts_with = "quick")]
        stap: bool,
        /// fij beside SystemTap's module runtime in the kernel lab's Debian 13 guest (qemu):
        /// armed and non-target syscall costs, launch times, kill latency, the module's compile;
        /// writes <target>/bench-stap-module/results.md.
        #[arg(long, conflicts_with_all = ["quick", "stap"])]
        stap_module: bool,
    },
    /// Run setup and build, then randomized campaigns for minutes (kill, crash, stop, partition,
    /// signals; forking, adopted targets; bystanders; fij SIGKILLed and SIGTERMed at random
    /// moments; pid_max lowered), each checked against `fij plan` and for leftovers; writes
    /// bench/soak.md. Not part of `test` (which runs its short version, tests/it/soak.rs).
    Soak {
        /// Ten campaigns (seconds); writes to <target>/soak-quick/ instead of bench/.
        #[arg(long)]
        quick: bool,
        /// Seed of the soak's stream: the scenarios, fij's seeds, when fij is killed.
        #[arg(long, default_value_t = 18)]
        seed: u64,
        /// How long to start campaigns for.
        #[arg(long, default_value_t = 8.0)]
        minutes: f64,
    },
    /// The kernel lab: run setup (with qemu), build fij, its static binary and the test
    /// executables, then run the integration tests (all, or the filtered ones) under a Debian
    /// kernel booted with qemu, with the host's root file system shared read-only. See
    /// docs/kernel-lab.md.
    Vm {
        /// The kernel to run under (repeatable).
        #[arg(long, value_enum, default_values_t = [vm::Kernel::Debian13])]
        kernel: Vec<vm::Kernel>,
        /// Every kernel of the matrix: debian12, debian13, host.
        #[arg(long, conflicts_with = "kernel")]
        all: bool,
        /// Only this test file of tests/it (repeatable), e.g. `--test dist`. Without it, every
        /// file; under debian12/debian13 every file but `stap` and `stap_run` (the host's stap:
        /// they run on the host).
        #[arg(long = "test")]
        tests: Vec<String>,
        /// Fetch the kernel packages again and rebuild the initramfs, even if cached.
        #[arg(long)]
        refresh: bool,
        /// Kill a guest still running after this many minutes.
        #[arg(long, default_value_t = 60)]
        timeout_minutes: u64,
        /// Run each test executable this many times in one boot (how often does it fail?).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
        /// Passed to each test executable: libtest's filter and options.
        #[arg(last = true)]
        test_args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Build { release } => setup::run().and_then(|()| build(release)),
        Task::Test => test(),
        Task::Dist => setup::run_build_only().and_then(|()| dist().map(drop)),
        Task::Demo => demo::run(),
        Task::Bench {
            stap_module: true, ..
        } => bench::stap_module::run(),
        Task::Bench { stap: true, .. } => bench::stap::run(),
        Task::Bench { quick, only, .. } => bench::run(quick, only.as_deref()),
        Task::Soak {
            quick,
            seed,
            minutes,
        } => soak::run(quick, seed, minutes),
        Task::Vm {
            kernel,
            all,
            tests,
            refresh,
            timeout_minutes,
            repeat,
            test_args,
        } => vm::run(&vm::Request {
            selections: (if all {
                vm::Kernel::ALL.to_vec()
            } else {
                kernel
            })
            .into_iter()
            .map(|kernel| vm::Selection {
                kernel,
                tests: tests.clone(),
                test_args: test_args.clone(),
            })
            .collect(),
            refresh,
            timeout: std::time::Duration::from_secs(timeout_minutes * 60),
            repeat,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = e
                .downcast_ref::<cmd::Failed>()
                .map_or(1, cmd::Failed::exit_code);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

/// `cargo build [--release] --package fij --package fij-tests --bins`: fij itself and the test
/// workload binaries. Does not run setup.
fn build(release: bool) -> Result<()> {
    let mut c = cargo_command();
    c.arg("build").args(release.then_some("--release")).args([
        "--package",
        "fij",
        "--package",
        "fij-tests",
        "--bins",
    ]);
    cmd::run(&mut c)?;
    let fij = fij_bin(release);
    if !fij.is_file() {
        bail!("the build succeeded but {} does not exist", fij.display());
    }
    Ok(())
}

/// setup, build, dist, then `FIJ_BIN=<target>/debug/fij FIJ_DIST_BIN=<target>/dist/fij cargo
/// test --workspace -- --test-threads=1`, then the kernel lab's subset ([`vm::ci_subset`]). The privileged integration tests run one at a time:
/// each checks that no fij program is left in the kernel, which a concurrent test would break.
fn test() -> Result<()> {
    setup::run()?;
    build(false)?;
    let dist_bin = dist()?;
    let mut c = cargo_command();
    c.env("FIJ_BIN", fij_bin(false))
        .env("FIJ_DIST_BIN", &dist_bin)
        .args(["test", "--workspace", "--", "--test-threads=1"]);
    cmd::run(&mut c)?;
    // The kernel lab's bounded subset: the same binaries under Debian 12's and 13's kernels.
    vm::run_built(
        &vm::Request {
            selections: vm::ci_subset(),
            refresh: false,
            timeout: std::time::Duration::from_secs(20 * 60),
            repeat: 1,
        },
        &dist_bin,
    )
}

/// The target the static `fij` is built for: the host's glibc target, named explicitly so that
/// `RUSTFLAGS` reaches only the target's artifacts, not build scripts and proc-macros (which
/// cannot be static: proc-macros are shared objects loaded by rustc).
fn dist_target() -> String {
    format!("{}-unknown-linux-gnu", env::consts::ARCH)
}

/// `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --package fij --bin fij
/// --target <host>-unknown-linux-gnu`, copied to <target>/dist/fij. glibc's static archive
/// (libc6-dev's libc.a) is linked in; fij calls none of glibc's NSS or dlopen functions, which
/// are what a static glibc cannot provide. Does not run setup. Returns the binary's path.
fn dist() -> Result<PathBuf> {
    let started = Instant::now();
    let target = dist_target();
    let mut c = cargo_command();
    c.env("RUSTFLAGS", "-C target-feature=+crt-static").args([
        "build",
        "--release",
        "--package",
        "fij",
        "--bin",
        "fij",
        "--target",
        &target,
    ]);
    cmd::run(&mut c)?;
    let built = target_dir().join(&target).join("release").join("fij");
    let dist_dir = target_dir().join("dist");
    std::fs::create_dir_all(&dist_dir)
        .with_context(|| format!("creating {}", dist_dir.display()))?;
    let dist_bin = dist_dir.join("fij");
    std::fs::copy(&built, &dist_bin)
        .with_context(|| format!("copying {} to {}", built.display(), dist_bin.display()))?;
    let size = std::fs::metadata(&dist_bin)?.len();
    println!(
        "{}: {size} bytes ({:.1} MiB), static, built in {:.0} s",
        dist_bin.display(),
        size as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64()
    );
    Ok(dist_bin)
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// The cargo that runs xtask (`CARGO`, set by `cargo run`), else `cargo` from PATH.
fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A cargo command run in the workspace root, with `CARGO_TARGET_DIR` (if set) made absolute so
/// it means what it meant where xtask was started.
fn cargo_command() -> Command {
    let mut c = Command::new(cargo());
    c.current_dir(workspace_root());
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR") {
        c.env("CARGO_TARGET_DIR", absolute(PathBuf::from(dir)));
    }
    c
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(|dir| absolute(PathBuf::from(dir)))
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Where the build puts binaries: `<target>/debug` or `<target>/release`.
fn bin_dir(release: bool) -> PathBuf {
    target_dir().join(if release { "release" } else { "debug" })
}

/// The built `fij` binary (absolute path).
fn fij_bin(release: bool) -> PathBuf {
    bin_dir(release).join("fij")
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}
