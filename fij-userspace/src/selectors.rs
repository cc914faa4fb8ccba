//! Selector targets (`comm`, `exe`, `uid`, `cgroup`): resolving them, and finding the processes
//! that already match when the campaign starts (the kernel catches later ones at exec and fork).
use std::{os::unix::fs::MetadataExt, path::Path};

use anyhow::{Context, Result, bail};

use crate::scenario::{CgroupRef, Selector};

/// A selector in the form the kernel matches: cgroups by id, the rest as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    Comm(String),
    Exe(String),
    Uid(u32),
    /// Cgroup v2 id, and the cgroup's path relative to the hierarchy's root (`/x/y`), if known.
    Cgroup(u64, Option<String>),
}

impl Resolved {
    /// The scenario key it came from, as the log's `joined.by` says it.
    pub fn kind(&self) -> &'static str {
        match self {
            Resolved::Comm(_) => "comm",
            Resolved::Exe(_) => "exe",
            Resolved::Uid(_) => "uid",
            Resolved::Cgroup(..) => "cgroup",
        }
    }
}

pub fn resolve(selector: &Selector) -> Result<Resolved> {
    Ok(match selector {
        Selector::Comm(c) => Resolved::Comm(c.clone()),
        Selector::Exe(p) => Resolved::Exe(p.display().to_string()),
        Selector::Uid(u) => Resolved::Uid(*u),
        Selector::Cgroup(CgroupRef::Id(id)) => Resolved::Cgroup(*id, None),
        Selector::Cgroup(CgroupRef::Path(path)) => {
            let root = crate::net::cgroup2_root()?;
            let relative = path.strip_prefix(&root).with_context(|| {
                format!(
                    "{} is not inside the cgroup v2 hierarchy at {}",
                    path.display(),
                    root.display()
                )
            })?;
            let meta =
                std::fs::metadata(path).with_context(|| format!("cgroup {}", path.display()))?;
            if !meta.is_dir() {
                bail!("cgroup {} is not a directory", path.display());
            }
            // On cgroup2, a directory's inode number is the cgroup id bpf_get_current_cgroup_id gives.
            Resolved::Cgroup(meta.ino(), Some(format!("/{}", relative.display())))
        }
    })
}

/// Whether running process `pid` matches the selector now.
pub fn matches(pid: u32, selector: &Resolved) -> bool {
    let proc = Path::new("/proc").join(pid.to_string());
    let read = |name: &str| std::fs::read_to_string(proc.join(name)).unwrap_or_default();
    match selector {
        Resolved::Comm(c) => read("comm").trim_end() == c,
        Resolved::Exe(p) => std::fs::read_link(proc.join("exe")).is_ok_and(|e| e == Path::new(p)),
        Resolved::Uid(u) => {
            read("status")
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
                == Some(*u)
        }
        Resolved::Cgroup(_, Some(path)) => read("cgroup")
            .lines()
            .any(|l| l.strip_prefix("0::") == Some(path)),
        Resolved::Cgroup(_, None) => false, // by id only: the kernel catches it at its next fork or exec
    }
}
