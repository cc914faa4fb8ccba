//! `cargo xtask setup`: makes this Debian 12 machine able to build and test fij, doing only what
//! is missing. One line per step: `ok: ...` when it is already there, `installing: ...` when it
//! acts (followed by the commands it runs).
//!
//! - the eBPF toolchain used by `fij-userspace/build.rs`: Debian's rustc-web, cargo-web and
//!   rust-web-src (`/usr/bin/{rustc,cargo}` with the core sources for `-Z build-std=core`), and
//!   bpf-linker, built against the LLVM that rustc-web itself uses;
//! - bpftool and gcc, plus the tools the integration tests use ([`TEST_PACKAGES`]);
//! - tracefs and bpffs mounted where fij expects them.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Debian packages for building fij: the toolchain for the eBPF programs, and the host tools
/// (libc6-dev's static libc.a for `cargo xtask dist`). The LLVM development packages are added
/// by [`llvm_packages`] once the LLVM version is known.
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "bpftool",
    "gcc",
    "libc6-dev",
];

/// Debian packages the integration tests (`tests/`) and `cargo xtask bench` (which compares fij
/// with strace and bpftrace) need at run time; the real systems of `tests/it/real_systems.rs`
/// and `cargo xtask demo` (Redis, etcd, Open MPI with its compiler wrapper); iproute2's `ip`
/// and `tc` for the network tests' namespaces and qdisc checks; groff to render `fij man`;
/// SystemTap and the kernel headers it elaborates `fij stap`'s scripts against
/// (`tests/it/stap.rs`: Debian's headers are 6.1 whatever the running kernel, so the test passes
/// their release with `-r`). `fij` itself runs no other program.
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "groff-base",
    "strace",
    "bpftrace",
    "redis-server",
    "redis-tools",
    "etcd-server",
    "etcd-client",
    "openmpi-bin",
    "libopenmpi-dev",
    // tests/it/multinode.rs runs launchers/ansible/fij-campaign.yml.
    "ansible",
    // tests/it/report.rs renders `fij report --html` in a real browser.
    "chromium",
    // The library example's echo server (fij-userspace/examples/crash_a_server.rs).
    "python3",
    "systemtap",
    "linux-headers-amd64",
];

/// Debian packages of the kernel lab (`cargo xtask vm`): qemu, the static busybox of its
/// initramfs, and kmod (`depmod` indexes a fetched kernel's modules; in the guest, whose root is
/// the host's, `modprobe` loads the modules the tests need, e.g. veth).
pub const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "kmod", "debootstrap"];

/// The rustc from rustc-web, which builds the eBPF programs; bpf-linker must use its LLVM.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// Filesystems fij needs: (type, mount point).
const MOUNTS: &[(&str, &str)] = &[("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")];

/// Everything building, testing and running fij needs: packages, bpf-linker, mounts.
pub fn run() -> Result<()> {
    install(TEST_PACKAGES)?;
    for (fstype, dir) in MOUNTS {
        ensure_mounted(fstype, dir)?;
    }
    Ok(())
}

/// [`run`] and the kernel lab's packages.
pub fn run_vm() -> Result<()> {
    let packages: Vec<&str> = TEST_PACKAGES.iter().chain(VM_PACKAGES).copied().collect();
    install(&packages)?;
    for (fstype, dir) in MOUNTS {
        ensure_mounted(fstype, dir)?;
    }
    Ok(())
}

/// Only what building fij needs (`cargo xtask dist`): no test packages, no mounts, so that it
/// also works in an unprivileged build container (still as root, for apt).
pub fn run_build_only() -> Result<()> {
    install(&[])
}

/// The build packages, `extra` packages, the LLVM packages and bpf-linker.
fn install(extra: &[&str]) -> Result<()> {
    ensure_root()?;
    let mut apt = Apt::default();

    // rustc-web first (with everything else that does not depend on the LLVM version), since the
    // LLVM packages to install are read from its rustc.
    let packages: Vec<&str> = BUILD_PACKAGES.iter().chain(extra).copied().collect();
    apt.ensure(&packages)?;
    let llvm = llvm_major()?;
    println!("ok: {DEBIAN_RUSTC} uses LLVM {llvm}");
    apt.ensure(
        &llvm_packages(llvm)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )?;

    ensure_bpf_linker(llvm)
}

fn ensure_root() -> Result<()> {
    let euid = effective_uid().context("cannot determine the effective user id")?;
    if euid != 0 {
        bail!(
            "this must run as root (effective uid is {euid}): setup installs Debian packages and \
             mounts tracefs and bpffs, and fij needs root to load its eBPF programs"
        );
    }
    Ok(())
}

/// The effective uid: the second field of `Uid:` in /proc/self/status.
fn effective_uid() -> Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .context("no Uid: line in /proc/self/status")?;
    let euid = line
        .split_whitespace()
        .nth(1)
        .context("malformed Uid: line")?;
    Ok(euid.parse()?)
}

/// Installs Debian packages, running `apt-get update` at most once per setup and only when some
/// package is actually missing.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn ensure(&mut self, packages: &[&str]) -> Result<()> {
        let mut missing = Vec::new();
        for &package in packages {
            if is_installed(package)? {
                println!("ok: Debian package {package}");
            } else {
                println!("installing: Debian package {package}");
                missing.push(package);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if !self.updated {
            cmd::run(Command::new("apt-get").arg("update"))?;
            self.updated = true;
        }
        cmd::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing),
        )?;
        for package in missing {
            if !is_installed(package)? {
                bail!(
                    "apt-get install succeeded but Debian package {package} is still not installed"
                );
            }
        }
        Ok(())
    }
}

fn is_installed(package: &str) -> Result<bool> {
    let status = cmd::query(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))?;
    Ok(status.is_some_and(|s| s.trim() == "install ok installed"))
}

/// The LLVM major version of Debian's rustc, from the `LLVM version: 22.1.8` line of `rustc -vV`.
fn llvm_major() -> Result<u32> {
    let out = cmd::query(Command::new(DEBIAN_RUSTC).arg("-vV"))?
        .with_context(|| format!("`{DEBIAN_RUSTC} -vV` failed"))?;
    parse_llvm_major(&out)
        .with_context(|| format!("no `LLVM version: N.N.N` line in `{DEBIAN_RUSTC} -vV`:\n{out}"))
}

fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    let version = rustc_vv
        .lines()
        .find_map(|l| l.trim().strip_prefix("LLVM version:"))?;
    version.trim().split('.').next()?.parse().ok()
}

/// What bpf-linker's build needs to link against LLVM `major` (llvm-config and the static
/// libraries, which reference Polly).
fn llvm_packages(major: u32) -> Vec<String> {
    vec![format!("llvm-{major}-dev"), format!("libpolly-{major}-dev")]
}

/// `$CARGO_HOME/bin`, by default `~/.cargo/bin`: where `cargo install` puts binaries and where
/// `fij-userspace/build.rs` looks for bpf-linker.
pub fn cargo_bin_dir() -> Result<PathBuf> {
    let home = match env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?)
            .join(".cargo"),
    };
    Ok(home.join("bin"))
}

fn ensure_bpf_linker(llvm: u32) -> Result<()> {
    let linker = cargo_bin_dir()?.join("bpf-linker");
    let present = linker.is_file();
    // A binary that no longer starts (say its LLVM library was removed) is reinstalled.
    if present && cmd::query(Command::new(&linker).arg("--version"))?.is_some() {
        println!("ok: bpf-linker ({})", linker.display());
        return Ok(());
    }
    println!(
        "installing: bpf-linker for LLVM {llvm} into {} (takes a few minutes)",
        linker.display()
    );
    let prefix = format!("/usr/lib/llvm-{llvm}");
    // llvm-config of that LLVM first on PATH, for the llvm-sys crate's build script.
    let path = env::join_paths(
        std::iter::once(Path::new(&prefix).join("bin"))
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    let install = |locked: bool| {
        let mut c = Command::new(crate::cargo());
        c.env("LLVM_PREFIX", &prefix)
            .env("PATH", &path)
            .args(["install", "bpf-linker"])
            .args(locked.then_some("--locked"))
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{llvm}"))
            .args(present.then_some("--force"));
        c
    };
    // The versions in bpf-linker's own Cargo.lock are the tested ones; fall back to fresh
    // resolution only if that fails (e.g. a locked dependency was yanked or needs a newer rustc).
    if !cmd::status(&mut install(true))?.success() {
        println!("bpf-linker did not install with --locked; retrying without it");
        cmd::run(&mut install(false))?;
    }
    if !linker.is_file() {
        bail!(
            "`cargo install bpf-linker` succeeded but {} does not exist",
            linker.display()
        );
    }
    Ok(())
}

fn ensure_mounted(fstype: &str, dir: &str) -> Result<()> {
    let mounted = Command::new("mountpoint")
        .args(["-q", dir])
        .status()
        .with_context(|| format!("cannot run `mountpoint -q {dir}`"))?
        .success();
    if mounted {
        println!("ok: {dir} is mounted");
        return Ok(());
    }
    println!("installing: mount {fstype} at {dir}");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    cmd::run(Command::new("mount").args(["-t", fstype, fstype, dir]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_major_from_rustc_vv() {
        let out = "rustc 1.96.0 (ac68faa20 2026-05-25) (built from a source tarball)\n\
                   binary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.96.0\n\
                   LLVM version: 22.1.8\n";
        assert_eq!(parse_llvm_major(out), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.96.0\n"), None);
    }

    #[test]
    fn llvm_packages_follow_the_major() {
        assert_eq!(llvm_packages(23), ["llvm-23-dev", "libpolly-23-dev"]);
    }
}
