//! Where the network side of `crash` attaches: the cgroup v2 hierarchy and the interfaces of
//! fij's network namespace.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// Mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on unified systems,
/// `/sys/fs/cgroup/unified` on hybrid ones), found in /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            // "... mount_point options - fstype source super_options"
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup v2 hierarchy is mounted (crash needs it: mount -t cgroup2 none /sys/fs/cgroup/unified)")
}

/// Every network interface of fij's network namespace, `lo` included.
pub fn interfaces() -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .context("listing /sys/class/net")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no network interface found in /sys/class/net");
    }
    Ok(names)
}
