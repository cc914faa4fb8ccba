//! The kernels of the lab: which Debian package each one is, fetching it with a private apt
//! configuration (the machine's own sources are never touched), unpacking it under
//! `<target>/vm/<kernel>/kernel/` with its modules indexed (`depmod`), and the initramfs that
//! mounts the host's root over 9p. Everything is cached: a second run reuses what is there.
use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// The guest's /stage2, which busybox's init (/init) runs; see the script's own comment.
const INIT: &str = include_str!("init.sh");

/// busybox init's table: run /stage2 once (it powers the guest off at its end).
const INITTAB: &str = "::sysinit:/bin/busybox sh /stage2\n";

/// The modules /init loads before it can mount the host's root: virtio over PCI, 9p over virtio,
/// overlayfs. Their dependencies come first (from `modules.dep`); built-in ones are skipped.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// A Debian kernel the lab boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebianKernel {
    /// The lab's name for it (`--kernel debian12`), also its directory under `<target>/vm/`.
    pub name: &'static str,
    /// The Debian suite whose `linux-image-amd64` is fetched.
    pub suite: &'static str,
}

pub const DEBIAN12: DebianKernel = DebianKernel {
    name: "debian12",
    suite: "bookworm",
};
pub const DEBIAN13: DebianKernel = DebianKernel {
    name: "debian13",
    suite: "trixie",
};

/// A kernel unpacked and ready to boot.
pub struct Prepared {
    /// `<target>/vm/<name>/kernel`: `boot/` and `lib/modules/<release>/` of the package (the 9p
    /// share `kernel`).
    pub root: PathBuf,
    /// `uname -r` of the kernel, e.g. `6.12.117+deb13-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
}

impl DebianKernel {
    fn dir(&self, vm_dir: &Path) -> PathBuf {
        vm_dir.join(self.name)
    }

    /// The unpacked kernel and its initramfs: from the cache if they are there (and `refresh` is
    /// not asked), else fetched and built.
    pub fn prepare(&self, vm_dir: &Path, refresh: bool) -> Result<Prepared> {
        let dir = self.dir(vm_dir);
        fs::create_dir_all(&dir)?;
        // Two runs at once (two worktrees sharing the cache, or `vm` beside `test`) must not
        // unpack into the same directory together: one's `depmod` failed on the other's
        // half-unpacked tree.
        let _lock = super::Lock::exclusive(dir.join("prepare.lock"))?;
        let root = dir.join("kernel");
        let stamp = dir.join("kernel.ready");
        if refresh || !stamp.is_file() {
            self.fetch(vm_dir, &root)?;
            fs::write(&stamp, "")?;
        } else {
            println!("ok: {} kernel cached in {}", self.name, root.display());
        }
        let release = release_in(&root)?;
        let initramfs = dir.join("initramfs.cpio");
        let initramfs_stamp = dir.join("initramfs.ready");
        // The stamp holds the init scripts it was built with, so a changed script rebuilds it.
        let contents = format!("{INITTAB}{INIT}");
        let current = fs::read_to_string(&initramfs_stamp).ok();
        if refresh || current.as_deref() != Some(&contents) || !initramfs.is_file() {
            build_initramfs(&root, &release, &dir.join("initramfs"), &initramfs)?;
            fs::write(&initramfs_stamp, contents)?;
        }
        Ok(Prepared {
            vmlinuz: root.join("boot").join(format!("vmlinuz-{release}")),
            root,
            release,
            initramfs,
        })
    }

    /// Downloads `linux-image-amd64`'s kernel package of the suite and unpacks it into `root`.
    fn fetch(&self, vm_dir: &Path, root: &Path) -> Result<()> {
        let apt = PrivateApt::new(&vm_dir.join(format!("apt-{}", self.suite)), self.suite)?;
        apt.update()?;
        // The metapackage depends on exactly one versioned image package.
        let show = apt.query(
            "apt-cache",
            &["show", "--no-all-versions", "linux-image-amd64"],
        )?;
        let package = show
            .lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .and_then(|deps| deps.split(',').next())
            .and_then(|dep| dep.split_whitespace().next())
            .filter(|p| p.starts_with("linux-image-"))
            .with_context(|| format!("no linux-image-* dependency in:\n{show}"))?
            .to_owned();
        println!("{}: {package} from {}", self.name, self.suite);
        let downloads = self.dir(vm_dir).join("debs");
        fs::create_dir_all(&downloads)?;
        apt.run_in(&downloads, "apt-get", &["download", &package])?;
        let deb = fs::read_dir(&downloads)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
        if root.exists() {
            fs::remove_dir_all(root)?;
        }
        fs::create_dir_all(root)?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root))?;
        // Debian 13's packages put modules under usr/lib (merged /usr); `depmod -b` and /init
        // look under lib/.
        if !root.join("lib").exists() {
            std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
        }
        let release = release_in(root)?;
        cmd::run(Command::new("depmod").arg("-b").arg(root).arg(&release))?;
        Ok(())
    }
}

/// The release of the single kernel in `root/boot/vmlinuz-*`.
fn release_in(root: &Path) -> Result<String> {
    let boot = root.join("boot");
    let mut releases: Vec<String> = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_owned))
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        n => bail!("{} has {n} vmlinuz-* files, expected one", boot.display()),
    }
}

/// An apt configuration of our own (sources, lists, cache) for one Debian suite; the machine's
/// `sources.list`, lists and dpkg status are neither read nor written.
struct PrivateApt {
    options: Vec<String>,
}

impl PrivateApt {
    fn new(dir: &Path, suite: &str) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial", "preferences.d"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let sources = dir.join("sources.list");
        fs::write(
            &sources,
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://deb.debian.org/debian {suite} main\n"
            ),
        )?;
        let d = dir.display();
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/nonexistent".to_owned(),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            "Dir::State::status=/dev/null".to_owned(),
            "Dir::Etc::Preferences=/dev/null".to_owned(),
            format!("Dir::Etc::PreferencesParts={d}/preferences.d"),
            // Downloads land in our own directory, which apt's sandbox user cannot write.
            "APT::Sandbox::User=root".to_owned(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect();
        Ok(Self { options })
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(&self.options).args(args);
        c
    }

    fn update(&self) -> Result<()> {
        cmd::run(&mut self.command("apt-get", &["-q", "update"]))
    }

    fn query(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut c = self.command(program, args);
        cmd::query(&mut c)?.with_context(|| format!("`{}` failed", cmd::display(&c)))
    }

    fn run_in(&self, dir: &Path, program: &str, args: &[&str]) -> Result<()> {
        cmd::run(self.command(program, args).current_dir(dir))
    }
}

/// Writes `<dir>/initramfs.cpio`: busybox (static, from the host's busybox-static), /init, and
/// the [`BOOT_MODULES`] with their dependencies, decompressed (busybox's insmod takes plain ELF).
fn build_initramfs(root: &Path, release: &str, staging: &Path, cpio: &Path) -> Result<()> {
    println!("building: {}", cpio.display());
    if staging.exists() {
        fs::remove_dir_all(staging)?;
    }
    for sub in ["bin", "modules"] {
        fs::create_dir_all(staging.join(sub))?;
    }
    fs::copy(BUSYBOX, staging.join("bin/busybox"))
        .with_context(|| format!("copying {BUSYBOX} (Debian package busybox-static)"))?;
    let stage2 = staging.join("stage2");
    fs::write(&stage2, INIT)?;
    fs::set_permissions(&stage2, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::os::unix::fs::symlink("bin/busybox", staging.join("init"))?;
    fs::create_dir_all(staging.join("etc"))?;
    fs::write(staging.join("etc/inittab"), INITTAB)?;
    // The kernel opens /dev/console for pid 1 before anything is mounted.
    fs::create_dir_all(staging.join("dev"))?;
    cmd::run(
        Command::new("mknod")
            .arg(staging.join("dev/console"))
            .args(["c", "5", "1"]),
    )?;

    let modules_dir = root.join("lib/modules").join(release);
    let dep = fs::read_to_string(modules_dir.join("modules.dep"))
        .context("reading modules.dep (made by depmod when the kernel was fetched)")?;
    let builtin = fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    let order = module_load_order(&dep, &builtin, BOOT_MODULES)?;
    let mut names = Vec::new();
    for path in &order {
        let name = module_name(path).to_owned() + ".ko";
        let source = modules_dir.join(path);
        let target = staging.join("modules").join(&name);
        if path.ends_with(".ko") {
            fs::copy(&source, &target)?;
        } else if path.ends_with(".ko.xz") {
            let out = Command::new(BUSYBOX)
                .arg("xzcat")
                .arg(&source)
                .output()
                .with_context(|| format!("running {BUSYBOX} xzcat"))?;
            if !out.status.success() {
                bail!("busybox xzcat {} failed", source.display());
            }
            fs::write(&target, out.stdout)?;
        } else {
            bail!("{path}: only .ko and .ko.xz modules are supported");
        }
        names.push(name);
    }
    fs::write(staging.join("modules/order"), names.join("\n") + "\n")?;

    // busybox cpio -o -H newc, fed the file list as cpio wants it (relative, parents first).
    let mut list = Vec::new();
    collect(staging, Path::new("."), &mut list)?;
    let out = fs::File::create(cpio)?;
    let mut child = Command::new(BUSYBOX)
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(staging)
        .stdin(std::process::Stdio::piped())
        .stdout(out)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all((list.join("\n") + "\n").as_bytes())?;
    }
    if !child.wait()?.success() {
        bail!("busybox cpio failed writing {}", cpio.display());
    }
    Ok(())
}

/// The static busybox of Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

fn collect(base: &Path, rel: &Path, list: &mut Vec<String>) -> Result<()> {
    list.push(rel.to_string_lossy().into_owned());
    let full = base.join(rel);
    if full.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(&full)?.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            collect(base, &rel.join(e.file_name()), list)?;
        }
    }
    Ok(())
}

/// `kernel/fs/9p/9p.ko.xz` → `9p`.
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file)
}

/// The module files (paths relative to the modules directory) to insmod for `wanted`, each after
/// its dependencies, from `modules.dep` (`path: dep dep …`). A module listed in
/// `modules.builtin` needs nothing; one in neither is an error.
fn module_load_order(dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let deps: Vec<(&str, Vec<&str>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, ds)| (m.trim(), ds.split_whitespace().collect()))
        .collect();
    let builtin: HashSet<&str> = builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit<'a>(
        path: &'a str,
        deps: &'a [(&'a str, Vec<&'a str>)],
        seen: &mut HashSet<&'a str>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(path) {
            return;
        }
        if let Some((_, ds)) = deps.iter().find(|(m, _)| *m == path) {
            for d in ds {
                visit(d, deps, seen, order);
            }
        }
        order.push(path.to_owned());
    }
    for name in wanted {
        match deps.iter().find(|(m, _)| module_name(m) == *name) {
            Some((path, _)) => visit(path, &deps, &mut seen, &mut order),
            None if builtin.contains(name) => {}
            None => bail!("module {name} is neither in modules.dep nor in modules.builtin"),
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies_and_builtins_are_skipped() {
        let dep = "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n\
                   kernel/net/9p/9pnet.ko.xz: kernel/fs/netfs/netfs.ko.xz\n\
                   kernel/fs/netfs/netfs.ko.xz:\n\
                   kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n";
        let builtin = "kernel/drivers/virtio/virtio_pci.ko\n";
        let order = module_load_order(dep, builtin, &["virtio_pci", "9pnet_virtio", "9p"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/fs/netfs/netfs.ko.xz",
                "kernel/net/9p/9pnet.ko.xz",
                "kernel/net/9p/9pnet_virtio.ko.xz",
                "kernel/fs/9p/9p.ko.xz",
            ]
        );
        assert!(module_load_order(dep, builtin, &["overlay"]).is_err());
    }
}
