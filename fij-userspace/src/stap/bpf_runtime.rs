//! stap's BPF runtime on this kind of machine: finding `stap`, `stapbpf` and the kernel headers
//! stap translates against, compiling a script to a `.bo` (stap's passes 1–4), and starting
//! `stapbpf` with the two work-arounds it needs here (docs/stap.md, "Running the BPF runtime"):
//!
//! - `stapbpf` raises RLIMIT_MEMLOCK to infinity and exits when it cannot, which it cannot
//!   without CAP_SYS_RESOURCE. Since Linux 5.11 BPF memory is charged to the memory cgroup and
//!   that limit is not consulted, so the raise is made a no-op: a seccomp filter in `stapbpf`
//!   alone answers its `setrlimit`/`prlimit64(RLIMIT_MEMLOCK, new)` with success without
//!   running it. (The same effect as an `LD_PRELOAD` library, with no file to build or leave.)
//! - its uprobes and 4.1-style tracepoints are found under `/sys/kernel/debug/tracing`: debugfs
//!   is mounted there in a mount namespace of `stapbpf`'s own, so the machine's mounts stay as
//!   they are and the mount goes away with the process.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

/// Where the 4.1 tracepoint behaviour and uprobes look for tracefs.
const DEBUGFS: &str = "/sys/kernel/debug";

/// The programs and headers a BPF-runtime run needs, found on this machine.
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub stap: PathBuf,
    pub stapbpf: PathBuf,
    /// The release of installed kernel headers stap translates against (`-r`).
    pub headers_release: String,
}

impl Toolchain {
    /// Finds `stap`, `stapbpf` and headers, or says which is missing and how to get it.
    pub fn find() -> Result<Self> {
        let stap = which("stap").context(
            "stap not found in PATH: install SystemTap (`apt-get install systemtap`, or `cargo xtask setup`)",
        )?;
        let stapbpf = which("stapbpf").context(
            "stapbpf not found in PATH: stap's BPF runtime is not installed (Debian's `systemtap` package has it)",
        )?;
        let headers_release = headers_release().context(
            "no kernel headers for stap (/lib/modules/RELEASE/build): install them (`apt-get install linux-headers-amd64`)",
        )?;
        Ok(Self {
            stap,
            stapbpf,
            headers_release,
        })
    }

    /// Compiles `script` (passes 1–4) into `dir/NAME.bo`. Returns the `.bo` and how long stap
    /// took.
    pub fn compile(&self, script: &Path, dir: &Path) -> Result<(PathBuf, Duration)> {
        const MODULE: &str = "fij_campaign";
        let started = Instant::now();
        let mut command = std::process::Command::new(&self.stap);
        command
            .current_dir(dir)
            .args([
                "--runtime=bpf",
                "--compatible=4.1",
                "-g",
                "-p4",
                "-m",
                MODULE,
            ])
            .args(["-r", &self.headers_release]);
        // SAFETY: the closure makes one raw syscall. The compile stops if fij dies.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let output = command
            .arg(script)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.stap.display()))?;
        let bo = dir.join(format!("{MODULE}.bo"));
        if !output.status.success() || !bo.is_file() {
            bail!(
                "stap could not compile the script ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
        }
        Ok((bo, started.elapsed()))
    }

    /// `stapbpf BO` with its output on a pipe, in its own mount namespace with debugfs mounted,
    /// its RLIMIT_MEMLOCK raise made a no-op, and SIGTERM when fij dies (it then detaches its
    /// probes and exits).
    pub fn stapbpf(&self, bo: &Path) -> Result<tokio::process::Command> {
        let filter = memlock_raise_is_a_no_op()?;
        let debugfs = CString::new(DEBUGFS).expect("no NUL");
        let fstype = CString::new("debugfs").expect("no NUL");
        let root = CString::new("/").expect("no NUL");
        let mount_debugfs = !Path::new(DEBUGFS).join("tracing").is_dir();
        // Line-buffered output when stdbuf (coreutils) is there: fij reads the script's lines
        // as they come (`armed` releases the targets), and stdio fully buffers a pipe.
        let mut command = match which("stdbuf") {
            Some(stdbuf) => {
                let mut command = tokio::process::Command::new(stdbuf);
                command.arg("-oL").arg(&self.stapbpf);
                command
            }
            None => tokio::process::Command::new(&self.stapbpf),
        };
        command
            .arg(bo)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: between fork and exec the closure makes only raw syscalls on data prepared
        // before the fork (no allocation).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if mount_debugfs
                    && (libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            std::ptr::null(),
                            root.as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0
                        || libc::mount(
                            fstype.as_ptr(),
                            debugfs.as_ptr(),
                            fstype.as_ptr(),
                            0,
                            std::ptr::null(),
                        ) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                seccompiler::apply_filter(&filter)
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))
            });
        }
        Ok(command)
    }
}

/// A seccomp program under which `setrlimit(RLIMIT_MEMLOCK, …)` and `prlimit64(_,
/// RLIMIT_MEMLOCK, new, _)` return 0 without running; every other call runs.
fn memlock_raise_is_a_no_op() -> Result<seccompiler::BpfProgram> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen::Dword, SeccompCmpArgLen::Qword, SeccompCmpOp,
        SeccompCondition, SeccompFilter, SeccompRule,
    };
    let memlock = libc::RLIMIT_MEMLOCK as u64;
    let rules = [
        (
            libc::SYS_prlimit64,
            vec![SeccompRule::new(vec![
                SeccompCondition::new(1, Dword, SeccompCmpOp::Eq, memlock)?,
                SeccompCondition::new(2, Qword, SeccompCmpOp::Ne, 0)?, // a new limit: a raise
            ])?],
        ),
        #[cfg(target_arch = "x86_64")]
        (
            libc::SYS_setrlimit,
            vec![SeccompRule::new(vec![SeccompCondition::new(
                0,
                Dword,
                SeccompCmpOp::Eq,
                memlock,
            )?])?],
        ),
    ];
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| anyhow!("seccomp on {}: {e}", std::env::consts::ARCH))?;
    let filter = SeccompFilter::new(
        rules.into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(0), // errno 0: the call returns 0, "done"
        arch,
    )?;
    Ok(filter.try_into()?)
}

/// The first executable `name` in PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The release of installed kernel headers stap can translate against (`/lib/modules/R/build`):
/// the running kernel's if installed, else the newest.
pub fn headers_release() -> Option<String> {
    let running = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut releases: Vec<String> = std::fs::read_dir("/lib/modules")
        .ok()?
        .flatten()
        .filter(|e| e.path().join("build").is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    releases.sort();
    if releases.iter().any(|r| r == running.trim()) {
        return Some(running.trim().to_string());
    }
    releases.pop()
}

/// Whether this kernel can load modules (the module runtime's need): `/proc/modules` exists
/// only with CONFIG_MODULES, and `kernel.modules_disabled` turns loading off for good.
pub fn modules_loadable() -> Result<()> {
    if !Path::new("/proc/modules").exists() {
        bail!("this kernel cannot load modules (built without CONFIG_MODULES: no /proc/modules)");
    }
    let disabled = std::fs::read_to_string("/proc/sys/kernel/modules_disabled").unwrap_or_default();
    if disabled.trim() == "1" {
        bail!("module loading is disabled (kernel.modules_disabled = 1)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// Under the filter, `ulimit -l unlimited` (setrlimit → prlimit64) succeeds and changes
    /// nothing; reading the limit still works. Without CAP_SYS_RESOURCE the raise itself fails.
    #[test]
    fn the_memlock_raise_succeeds_without_running() {
        let script = "before=$(ulimit -l); ulimit -l unlimited && echo \"$before $(ulimit -l)\"";
        let filter = memlock_raise_is_a_no_op().unwrap();
        let mut command = std::process::Command::new("sh");
        command.args(["-c", script]);
        // SAFETY: the closure only makes the seccomp and prctl calls.
        unsafe {
            command.pre_exec(move || {
                seccompiler::apply_filter(&filter)
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))
            });
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let limits: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(limits.len(), 2, "{text}");
        assert_eq!(limits[0], limits[1], "the limit changed: {text}");
    }
}
