//! SystemTap's module runtime for the lab's Debian 13 kernel: a trixie root file system
//! (debootstrap, cached under `<target>/vm/stap-chroot/trixie/`) with trixie's SystemTap 5.1, gcc
//! and the kernel's own headers, where `fij stap --runtime module` scripts are compiled into
//! kernel modules natively, on the host, before the guest boots (`stap -p4 -r RELEASE`); the
//! guest then loads them with that root's `staprun` (tests/it/stap_module.rs).
//!
//! Two things stap 5.1 needs here that Debian does not give (docs/kernel-lab.md):
//!
//! - its tracepoint queries (`kernel.trace(…)`, pass 2) redefine `COUNT_ARGS`, which Linux ≥ 6.6
//!   defines in `linux/args.h`; stap builds them with `-Werror`, so every query object came out
//!   empty and every tracepoint failed ("resolution failed in tracepoint builder"). stap's kbuild
//!   runs get `-B CC=` a wrapper of the kernel's compiler that puts `-Wno-error` last;
//! - stap 5.1's runtime resolves `uprobe_unregister` when its module starts, on any kernel with
//!   uprobes; Linux 6.12 split it into `uprobe_unregister_nosync`/`_sync`, so every module
//!   stopped at load ("ERROR: Can't resolve uprobe_unregister!"), whatever its probes. Modules
//!   are built with `-D STAPCONF_UPROBE_UNREGISTER_EXPORTED`, which skips that lookup; a script
//!   with uprobes (`process(…).function`) still cannot be built for 6.12 with stap 5.1 (its
//!   uprobes code calls the old function), which the lab's test does not have;
//! - `kprobe.function(…)` needs the kernel's symbols: Debian's `/boot/System.map-*` is a
//!   placeholder ("The real System.map is in the linux-image-<version>-dbg package", a 1 GB
//!   download), so stap parsed 0 symbols and found "no match". [`StapChroot::kernel_symbols`]
//!   boots the kernel once and keeps its `/proc/kallsyms` (the kernel's own symbols, without
//!   modules') as the root's `/usr/lib/debug/boot/System.map-RELEASE`, where stap looks first.
//!   The addresses are one boot's (KASLR): stap only places its kprobes relative to `_stext`,
//!   which the map has from the same boot.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// The Debian suite of the root, the same as the lab's `debian13` kernel.
const SUITE: &str = "trixie";
/// What the root holds beyond minbase.
const PACKAGES: &str = "systemtap,linux-headers-amd64,gcc,make,libc6-dev,kmod";
/// The kernel's compiler with `-Wno-error` last, at this path in the root followed by
/// `-RELEASE` (each kernel's own: 6.1's is gcc-12, 6.12's gcc-14).
const KBUILD_CC: &str = "/usr/local/lib/fij/kbuild-cc";
/// Skips stap 5.1's start-up lookup of `uprobe_unregister`, which 6.12 does not have.
const UNREGISTER_LOOKUP_OFF: &str = "STAPCONF_UPROBE_UNREGISTER_EXPORTED";
/// Where scripts and modules go in the root (the guest sees it at the same host path), a
/// directory per kernel release under it: runs for two kernels do not overwrite each other's.
const WORK: &str = "work";
/// Where stap 5.1 looks first for a kernel's symbol table (then `/boot/System.map-RELEASE`).
const SYSTEM_MAP_DIR: &str = "usr/lib/debug/boot";

/// The trixie root, ready to compile modules for `release`.
pub struct StapChroot {
    pub root: PathBuf,
    pub release: String,
}

/// The root under `<vm_dir>/stap-chroot/`, made with debootstrap the first time (~80 s on an idle
/// machine, 6 min on a busy one; ~1 GB), then reused; with the headers of `release` (the lab's
/// kernel, of Debian's `suite`) installed if the root's are another release. Headers of another
/// suite than the root's (bookworm's 6.1 for the `debian12` kernel) come from that suite, added
/// to the root's apt sources: the headers and their kbuild tools run on trixie's newer libc, and
/// their compiler (bookworm's kernels are built with gcc-12) is a trixie package too.
pub fn prepare(vm_dir: &Path, release: &str, suite: &str) -> Result<StapChroot> {
    let dir = vm_dir.join("stap-chroot");
    fs::create_dir_all(&dir)?;
    // One run at a time sets the root up (debootstrap, headers, the compiler wrapper).
    let _lock = super::Lock::exclusive(dir.join("prepare.lock"))?;
    let root = dir.join(SUITE);
    if !dir.join(format!("{SUITE}.ready")).is_file() {
        let partial = dir.join(format!("{SUITE}.partial"));
        if partial.exists() {
            fs::remove_dir_all(&partial)?;
        }
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        fs::create_dir_all(&dir)?;
        let started = Instant::now();
        // debootstrap's own sources (the mirror given here), not the machine's apt sources.
        cmd::run(
            Command::new("debootstrap")
                .args(["--variant=minbase", &format!("--include={PACKAGES}"), SUITE])
                .arg(&partial)
                .arg("http://deb.debian.org/debian"),
        )?;
        fs::rename(&partial, &root)?;
        fs::write(dir.join(format!("{SUITE}.ready")), "")?;
        println!(
            "stap-chroot: debootstrap {SUITE} took {:.0} s",
            started.elapsed().as_secs_f64()
        );
    } else {
        println!("ok: {SUITE} root for stap cached in {}", root.display());
    }
    let chroot = StapChroot {
        root,
        release: release.to_owned(),
    };
    if !chroot
        .root
        .join("usr/src")
        .join(format!("linux-headers-{release}"))
        .is_dir()
    {
        if suite != SUITE {
            let list = chroot
                .root
                .join(format!("etc/apt/sources.list.d/fij-{suite}.list"));
            fs::write(
                &list,
                format!(
                    "# Written by `cargo xtask vm` (xtask/src/vm/stap_chroot.rs): the headers of \
                     the lab's {suite} kernel.\ndeb http://deb.debian.org/debian {suite} main\n"
                ),
            )?;
        }
        // The root's own apt (trixie's sources, written by debootstrap), not the machine's.
        cmd::run(&mut chroot.command(&[
            "sh",
            "-c",
            &format!("apt-get -q update && apt-get -q -y install linux-headers-{release}"),
        ]))?;
    }
    // The kernel's compiler, as its headers' Makefile names it (`CC = gcc-12` for 6.1,
    // `gcc-14` for 6.12): the wrapper runs that one.
    let compiler = kernel_compiler(&chroot.root, release)?;
    let cc = chroot.root.join(chroot.kbuild_cc().trim_start_matches('/'));
    fs::create_dir_all(cc.parent().expect("a parent"))?;
    fs::write(
        &cc,
        format!(
            "#!/bin/sh\n\
         # Written by `cargo xtask vm` (xtask/src/vm/stap_chroot.rs): the kernel's compiler with\n\
         # -Wno-error last, for stap's kbuild runs (`stap -B CC=…`). stap 5.1's tracepoint queries\n\
         # redefine COUNT_ARGS, which Linux >= 6.6 defines: under -Werror every query failed.\n\
         exec /usr/bin/{compiler} \"$@\" -Wno-error\n",
        ),
    )?;
    fs::set_permissions(&cc, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    fs::create_dir_all(chroot.root.join(chroot.work_dir().trim_start_matches('/')))?;
    Ok(chroot)
}

/// The compiler the kernel `release` was built with, from its headers' `CONFIG_CC_VERSION_TEXT`
/// (`gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0` for 6.1, `x86_64-linux-gnu-gcc-14 (Debian
/// 14.2.0-19) 14.2.0` for 6.12): its program name.
fn kernel_compiler(root: &Path, release: &str) -> Result<String> {
    let config = root.join(format!("usr/src/linux-headers-{release}/.config"));
    let text =
        fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT=\""))
        .with_context(|| format!("no CONFIG_CC_VERSION_TEXT in {}", config.display()))?;
    let program = version.split_whitespace().next().unwrap_or_default();
    let gcc = program.trim_start_matches("x86_64-linux-gnu-");
    if gcc
        .strip_prefix("gcc-")
        .is_none_or(|major| major.parse::<u32>().is_err())
    {
        bail!(
            "{}: the kernel was built with `{version}`, not a Debian gcc",
            config.display()
        );
    }
    if !root.join("usr/bin").join(program).exists() {
        // Its package is a dependency of the headers' (linux-compiler-gcc-N-x86).
        bail!("{program} is not installed in {}", root.display());
    }
    Ok(program.to_owned())
}

impl StapChroot {
    /// `ARGV` run in the root: in a mount namespace of its own (nothing stays mounted), with
    /// the host's /dev (kbuild and stap write nothing useful without it: every object came out
    /// empty) and a /proc.
    fn command(&self, argv: &[&str]) -> Command {
        let root = cmd::quote(&self.root.to_string_lossy());
        let argv: Vec<String> = argv.iter().map(|a| cmd::quote(a)).collect();
        let mut c = Command::new("unshare");
        c.args(["-m", "sh", "-c"]).arg(format!(
            "mount --make-rprivate / && mount --bind /dev {root}/dev && \
             mount -t proc proc {root}/proc && exec chroot {root} {}",
            argv.join(" ")
        ));
        c
    }

    /// The compiler wrapper of this release, as a path in the root.
    fn kbuild_cc(&self) -> String {
        format!("{KBUILD_CC}-{}", self.release)
    }

    /// The work directory of this release, as a path in the root (`/work/RELEASE`).
    pub fn work_dir(&self) -> String {
        format!("/{WORK}/{}", self.release)
    }

    /// The host path of `name` in the root's work directory.
    pub fn work_path(&self, name: &str) -> PathBuf {
        self.root
            .join(self.work_dir().trim_start_matches('/'))
            .join(name)
    }

    /// The kernel's symbol table where the root's stap finds it, for `kprobe.function` probes:
    /// the first time, `kernel` is booted (9–30 s of qemu under TCG) with a script that keeps its
    /// `/proc/kallsyms`, without the modules' symbols (`[module]` lines), as a System.map.
    /// Cached in the root; a map of fewer than 10,000 symbols or without `_stext` is an error.
    pub fn kernel_symbols(&self, vm_dir: &Path, kernel: &super::kernels::Prepared) -> Result<()> {
        let map = self
            .root
            .join(SYSTEM_MAP_DIR)
            .join(format!("System.map-{}", self.release));
        if map.is_file() {
            println!(
                "ok: the symbols of {} cached in {}",
                self.release,
                map.display()
            );
            return Ok(());
        }
        let started = Instant::now();
        let out = super::boot_script(
            vm_dir,
            kernel,
            "kallsyms",
            |out| {
                format!(
                    "# Written by `cargo xtask vm` (xtask/src/vm/stap_chroot.rs).\n\
                     export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
                     awk 'NF == 3' /proc/kallsyms > {}\n",
                    cmd::quote(&out.join("System.map").to_string_lossy())
                )
            },
            Duration::from_secs(10 * 60),
        )?;
        let text = fs::read_to_string(out.join("System.map"))?;
        let symbols = text.lines().count();
        let has_stext = text.lines().any(|l| l.ends_with(" _stext"));
        if symbols < 10_000 || !has_stext {
            bail!(
                "{}'s /proc/kallsyms gave {symbols} symbols{}: not a symbol table",
                self.release,
                if has_stext { "" } else { " and no _stext" }
            );
        }
        fs::create_dir_all(map.parent().expect("a parent"))?;
        let partial = map.with_file_name(format!("System.map-{}.partial", self.release));
        fs::write(&partial, &text)?;
        fs::rename(&partial, &map)?;
        println!(
            "stap-chroot: {symbols} symbols of {} from one boot ({:.0} s) in {}",
            self.release,
            started.elapsed().as_secs_f64(),
            map.display()
        );
        Ok(())
    }

    /// Compiles `script` (a file in the work directory) into `MODULE.ko` there with trixie's
    /// stap against the kernel's headers (`-g -p4 -r RELEASE -m MODULE`, and `-D` each of
    /// `defines`). Returns the module's host path and how long stap took.
    pub fn compile(
        &self,
        script: &str,
        module: &str,
        defines: &[&str],
    ) -> Result<(PathBuf, Duration)> {
        let ko = self.work_path(&format!("{module}.ko"));
        if ko.exists() {
            fs::remove_file(&ko)?;
        }
        let started = Instant::now();
        let work = self.work_dir();
        let script = format!("{work}/{script}");
        let cc = format!("CC={}", self.kbuild_cc());
        let mut c = self.command(&[
            "sh",
            "-c",
            &format!(
                "cd {work} && exec stap -g -p4 -B {cc} -D {UNREGISTER_LOOKUP_OFF}{} -r {} -m {module} {script}",
                defines.iter().map(|d| format!(" -D {d}")).collect::<String>(),
                self.release
            ),
        ]);
        cmd::run(&mut c).context("stap -p4 in the trixie root")?;
        if !ko.is_file() {
            bail!("stap left no {}", ko.display());
        }
        Ok((ko, started.elapsed()))
    }
}
