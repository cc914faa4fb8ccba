//! What a fij process can leave behind on the machine, looked up one kind at a time: programs,
//! links, tc/tcx filters, cgroup programs, `SILENCED` tuples, stopped processes, files in bpffs
//! and `/run/fij`. Each function lists what is there now, described in one line per object, so a
//! caller compares it with what was there before fij started (`Snapshot`) and reports the rest.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::{all_pids, bpf_fds_of, bpftool_json, fij_programs, links, maps, process_state};

/// One object on the machine, described in one line (`kind` and what identifies it).
pub type Description = String;

/// The objects on the machine that fij could leave behind, each kind as a set of descriptions.
/// Taken before a campaign (what was already there, e.g. programs of the kernel's own bpffs
/// preload) and after it: [`Snapshot::new_since`] is what the campaign left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `fij_*` programs: `prog ID NAME`.
    pub programs: BTreeSet<Description>,
    /// Links of `fij_*` programs: `link ID TYPE prog ID`.
    pub links: BTreeSet<Description>,
    /// tc and tcx filters of `fij_*` programs: what `bpftool net show` lists, and the tcx links
    /// of `fij_*` programs (bpftool 7.1, Debian 12's, lists no tcx in `net show` and shows a
    /// tcx link's type as its number, 11). A tcx link is counted here and under `links`.
    pub net_filters: BTreeSet<Description>,
    /// `fij_*` programs attached to a cgroup (`bpftool cgroup tree`).
    pub cgroup_programs: BTreeSet<Description>,
    /// Entries of maps named `SILENCED` (fij's silenced tuples): `map ID: N tuples`.
    pub silenced_tuples: BTreeSet<Description>,
    /// Every path under /sys/fs/bpf.
    pub bpffs: BTreeSet<Description>,
    /// Every entry of /run/fij that is not the layout cache ([`is_layout_cache`]).
    pub run_fij: BTreeSet<Description>,
}

/// The kinds of a [`Snapshot`], in the order they are reported.
pub const KINDS: [&str; 7] = [
    "fij programs",
    "fij links",
    "tc/tcx filters",
    "cgroup programs",
    "silenced tuples",
    "bpffs entries",
    "/run/fij entries (not the layout cache)",
];

impl Snapshot {
    /// What is on the machine now.
    pub fn take() -> Snapshot {
        let programs = fij_programs();
        let prog_ids: BTreeSet<u64> = programs.iter().map(|p| p.id).collect();
        let links = links();
        let tcx_links = links.iter().filter(|l| {
            l["prog_id"]
                .as_u64()
                .is_some_and(|id| prog_ids.contains(&id))
                && (l["type"] == "tcx" || l["type"] == BPF_LINK_TYPE_TCX)
        });
        let tcx_links = tcx_links.map(|l| {
            let name = programs
                .iter()
                .find(|p| l["prog_id"] == p.id)
                .map_or("?", |p| p.name.as_str());
            format!("tcx link {} prog {} {name}", l["id"], l["prog_id"])
        });
        Snapshot {
            programs: programs
                .iter()
                .map(|p| format!("prog {} {}", p.id, p.name))
                .collect(),
            links: links
                .iter()
                .filter(|l| {
                    l["prog_id"]
                        .as_u64()
                        .is_some_and(|id| prog_ids.contains(&id))
                })
                .map(|l| format!("link {} {} prog {}", l["id"], l["type"], l["prog_id"]))
                .collect(),
            net_filters: fij_net_filters().into_iter().chain(tcx_links).collect(),
            cgroup_programs: fij_cgroup_programs().into_iter().collect(),
            silenced_tuples: silenced_tuples().into_iter().collect(),
            bpffs: files_under(Path::new("/sys/fs/bpf")).into_iter().collect(),
            run_fij: run_fij_entries().into_iter().collect(),
        }
    }

    /// Each kind's objects, in [`KINDS`] order.
    pub fn kinds(&self) -> [(&'static str, &BTreeSet<Description>); 7] {
        [
            (KINDS[0], &self.programs),
            (KINDS[1], &self.links),
            (KINDS[2], &self.net_filters),
            (KINDS[3], &self.cgroup_programs),
            (KINDS[4], &self.silenced_tuples),
            (KINDS[5], &self.bpffs),
            (KINDS[6], &self.run_fij),
        ]
    }

    /// What is in `self` and was not in `before`, kind by kind (kinds with nothing new left out).
    pub fn new_since(&self, before: &Snapshot) -> Vec<(&'static str, Vec<Description>)> {
        self.kinds()
            .into_iter()
            .zip(before.kinds())
            .filter_map(|((kind, now), (_, then))| {
                let new: Vec<Description> = now.difference(then).cloned().collect();
                (!new.is_empty()).then_some((kind, new))
            })
            .collect()
    }
}

/// `BPF_LINK_TYPE_TCX` of the kernel's UAPI, which older bpftools print as a number.
const BPF_LINK_TYPE_TCX: u64 = 11;

/// Every JSON object under `value` with a `name` starting with `fij_`, described with the
/// nearest enclosing `devname` / `cgroup` / `kind` / `attach_type` fields.
fn fij_named_objects(value: &Value, context: &str, found: &mut Vec<Description>) {
    match value {
        Value::Array(items) => {
            for item in items {
                fij_named_objects(item, context, found);
            }
        }
        Value::Object(fields) => {
            let mut context = context.to_owned();
            for key in ["devname", "cgroup", "kind", "attach_type", "attach_flags"] {
                if let Some(v) = fields.get(key).filter(|v| !v.is_null()) {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    context = format!("{context} {key}={v}");
                }
            }
            if let Some(name) = fields
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| n.starts_with("fij_"))
            {
                let id = fields.get("id").or_else(|| fields.get("prog_id"));
                let id = id.map_or_else(String::new, |id| format!(" prog {id}"));
                found.push(format!("{name}{id}:{context}"));
            }
            for v in fields.values() {
                if v.is_array() || v.is_object() {
                    fij_named_objects(v, &context, found);
                }
            }
        }
        _ => {}
    }
}

/// The tc and tcx filters (and any other `bpftool net` attachment) of `fij_*` programs.
pub fn fij_net_filters() -> Vec<Description> {
    let mut found = Vec::new();
    fij_named_objects(&bpftool_json(&["net", "show"]), "", &mut found);
    found
}

/// The `fij_*` programs attached to any cgroup of the cgroup v2 hierarchy.
pub fn fij_cgroup_programs() -> Vec<Description> {
    let mut found = Vec::new();
    fij_named_objects(&bpftool_json(&["cgroup", "tree"]), "", &mut found);
    found
}

/// The entries of every map named `SILENCED` that has any (`map ID: N tuples`).
pub fn silenced_tuples() -> Vec<Description> {
    maps()
        .iter()
        .filter(|m| m["name"] == "SILENCED")
        .filter_map(|m| m["id"].as_u64())
        .filter_map(|id| {
            let dump = Command::new("bpftool")
                .args(["-j", "map", "dump", "id", &id.to_string()])
                .output()
                .ok()?;
            // The map may be gone between the listing and the dump.
            let entries: Value = serde_json::from_slice(&dump.stdout).ok()?;
            let n = entries.as_array().map_or(0, Vec::len);
            (n > 0).then(|| format!("map {id}: {n} tuples"))
        })
        .collect()
}

/// Every path under `dir` (recursively), or none if it does not exist.
pub fn files_under(dir: &Path) -> Vec<Description> {
    let mut found = Vec::new();
    let mut todo = vec![PathBuf::from(dir)];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path.clone());
            }
            found.push(path.display().to_string());
        }
    }
    found
}

/// Whether a name in /run/fij is a layout cache file as `layout.rs` names it:
/// `layout-BOOT_ID-EXE_LEN-MTIME_NS` (a `.tmpPID` file is a write that never finished).
pub fn is_layout_cache(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("layout-") else {
        return false;
    };
    let mut parts = rest.rsplitn(3, '-');
    let (Some(mtime), Some(len), Some(boot)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    number(mtime) && number(len) && boot.len() == 36
}

/// The entries of /run/fij other than the layout cache.
pub fn run_fij_entries() -> Vec<Description> {
    std::fs::read_dir("/run/fij")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !is_layout_cache(&e.file_name().to_string_lossy()))
        .map(|e| e.path().display().to_string())
        .collect()
}

/// Every process whose environment (as it was at its exec, `/proc/PID/environ`) has `entry`
/// (`NAME=value`): how a soak finds the processes of one campaign — fij, the children it forked
/// and not exec'd yet, the targets and their descendants — whatever their pids.
pub fn processes_with_env(entry: &str) -> Vec<u32> {
    let entry = entry.as_bytes();
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == entry))
        })
        .collect()
}

/// One line about a process: `pid P (ppid Q, state S): CMDLINE`.
pub fn describe_process(pid: u32) -> Description {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ppid = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let state = process_state(pid).unwrap_or('?');
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    format!(
        "pid {pid} (ppid {ppid}, state {state}): {}",
        cmdline.join(" ")
    )
}

/// Among `pids`, the processes that are stopped (state `T`), described.
pub fn stopped_processes(pids: &[u32]) -> Vec<Description> {
    pids.iter()
        .filter(|&&pid| process_state(pid) == Some('T'))
        .map(|&pid| describe_process(pid))
        .collect()
}

/// Among `pids`, the processes holding a file descriptor to a BPF program, map or link,
/// described with what they hold.
pub fn bpf_holders(pids: &[u32]) -> Vec<Description> {
    pids.iter()
        .filter_map(|&pid| {
            let fds = bpf_fds_of(pid);
            let n = fds.progs.len() + fds.maps.len() + fds.links.len();
            (n > 0).then(|| {
                format!(
                    "{} holds {} programs, {} maps, {} links",
                    describe_process(pid),
                    fds.progs.len(),
                    fds.maps.len(),
                    fds.links.len()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::is_layout_cache;

    #[test]
    fn layout_cache_names_are_told_from_other_files() {
        assert!(is_layout_cache(
            "layout-e7d896fd-0806-4b8d-87b7-2b9b6a3909e2-100251720-1796399725939948602"
        ));
        assert!(!is_layout_cache(
            "layout-e7d896fd-0806-4b8d-87b7-2b9b6a3909e2-100251720-1796399725939948602.tmp42"
        ));
        assert!(!is_layout_cache("state"));
    }
}
