//! Scenario file parsing and validation: TOML text in, a [`Scenario`] out, or every error in the
//! file, each with its `file:line:col` position.
//!
//! The TOML is parsed with `toml_edit` (which keeps the byte span of every key and value) and the
//! tree is walked by hand rather than with serde, so that one pass reports all errors, not only
//! the first. A TOML syntax error is the exception: nothing after it can be trusted, so parsing
//! stops there. The format is documented in `docs/scenarios.md`.
use std::{
    fmt, fs,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use toml_edit::{Array, ImDocument, Item, TableLike, Value};

use crate::{
    error_paths,
    signals::{self, SIGNAL_MAX},
};

mod cluster;

use super::model::{
    Action, CgroupRef, Cluster, ConditionsAt, Fault, Per, Probe, ProbeKind, ProbeLocation, Returns,
    Scenario, Schedule, Select, Selector, SourcePos, Target, TargetSource, Trigger,
};

/// One error in a scenario file. `line` and `col` are 1-based; `col` counts characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Every error found in a scenario file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Whether reading a scenario also checks that the running kernel has what it needs (kprobes for
/// kprobe triggers, tcx for `crash` and `partition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFeatures {
    /// The campaign runs here (`fij run`, `fij validate`): what this kernel lacks is an error at
    /// the key that needs it.
    Checked,
    /// The output may be for another machine (`fij stap`'s script, compiled with `stap -r
    /// RELEASE` for another kernel; `fij plan`): this kernel's features are not asked. What the
    /// other kernel lacks is said where the script is built or the campaign runs.
    NotChecked,
}

/// Reads and validates the scenario file at `path` for a campaign on this kernel.
pub fn load(path: &Path) -> Result<Scenario, Diagnostics> {
    load_for(path, KernelFeatures::Checked)
}

/// Reads and validates the scenario file at `path`, checking this kernel's features or not.
pub fn load_for(path: &Path, kernel: KernelFeatures) -> Result<Scenario, Diagnostics> {
    let fail = |message: String| {
        Err(Diagnostics(vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message,
        }]))
    };
    match read_bounded(path) {
        Ok(Some(text)) => parse_str_for(path, &text, kernel),
        Ok(None) => fail(format!(
            "the scenario file is larger than {} bytes (1 MiB), fij's limit; \
             is it the right file?",
            MAX_SCENARIO_BYTES
        )),
        Err(err) => fail(format!("cannot read the scenario file: {err}")),
    }
}

/// The largest scenario file fij reads (a scenario of 1000 faults is ~200 KB).
pub const MAX_SCENARIO_BYTES: u64 = 1 << 20;

/// Reads at most `MAX_SCENARIO_BYTES + 1` bytes of `path` — also from a device or a pipe, which
/// may never end (`/dev/zero`): None when there is more than the limit.
fn read_bounded(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(MAX_SCENARIO_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SCENARIO_BYTES {
        return Ok(None);
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()))
}

/// Validates the scenario `text`, read from `path` (used in diagnostics, as `Scenario::path`, and
/// to resolve relative `cwd`s), for a campaign on this kernel.
pub fn parse_str(path: &Path, text: &str) -> Result<Scenario, Diagnostics> {
    parse_str_for(path, text, KernelFeatures::Checked)
}

/// [`parse_str`], checking this kernel's features or not.
pub fn parse_str_for(
    path: &Path,
    text: &str,
    kernel: KernelFeatures,
) -> Result<Scenario, Diagnostics> {
    let mut cx = Cx {
        file: path,
        text,
        diags: Vec::new(),
        kernel,
    };
    let scenario = match ImDocument::parse(text) {
        Ok(doc) => scenario(&mut cx, doc.as_table()),
        Err(err) => {
            let at = err.span().map_or(0, |span| span.start);
            let message = err
                .message()
                .trim()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ");
            cx.error(at, format!("TOML syntax error: {message}"));
            None
        }
    };
    match scenario {
        Some(scenario) if cx.diags.is_empty() => Ok(scenario),
        _ => {
            if cx.diags.is_empty() {
                // Every path that yields no scenario reports why; this is only a safety net.
                cx.error(
                    0,
                    "internal error: the scenario was rejected without a reason",
                );
            }
            cx.diags.sort_by_key(|d| (d.line, d.col));
            Err(Diagnostics(cx.diags))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario tables.

fn scenario(cx: &mut Cx<'_>, root: &toml_edit::Table) -> Option<Scenario> {
    let mut r = Reader::new(root, "at the top level", "", 0);
    let seed = r.get("seed").and_then(|e| cx.uint(&e, 0));
    let duration = r.get("duration").and_then(|e| {
        let d = cx.duration(&e)?;
        if d.is_zero() {
            cx.error(e.at, format!("`{}` must be greater than 0", e.label));
            return None;
        }
        Some(d)
    });
    let target_entry = r.get("target");
    let fault_entry = r.get("fault");
    let node_entry = r.get("node");
    let node_fault_entry = r.get("node_fault");
    let start_at = r.get("start_at").map(|e| cluster::start_at(cx, &e));
    r.finish(cx);

    // Nodes first: targets name them.
    let (nodes, nodes_ok) = node_entry
        .as_ref()
        .map_or((Vec::new(), true), |e| cluster::nodes(cx, e));
    let mut target_node = Vec::new();

    // Targets. `names[i]` is the name of the i-th [[target]] table, if it has a valid one.
    let mut targets = Vec::new();
    let mut names: Option<Vec<Option<String>>> = None;
    let mut targets_ok = true;
    match &target_entry {
        None => cx.error(
            0,
            "no [[target]] defined: a scenario needs at least one target (a `command` to spawn \
             or a `pid` to adopt)",
        ),
        Some(e) => match cx.tables(e, "[[target]]") {
            None => targets_ok = false,
            Some(tables) if tables.is_empty() => cx.error(
                e.at,
                "no [[target]] defined: a scenario needs at least one target",
            ),
            Some(tables) => {
                let dir = cx.file.parent().unwrap_or(Path::new(""));
                let mut seen = Seen::default();
                let names = names.insert(Vec::new());
                for (table, at) in tables {
                    let (name, target, node) = target(cx, table, at, dir, &mut seen);
                    // With an invalid [[node]], references to it are not checked.
                    let node = match nodes_ok {
                        true => cluster::target_node(cx, node.as_ref(), &nodes),
                        false => node.map(|_| None),
                    };
                    if node.is_none() && !nodes.is_empty() && nodes_ok {
                        cx.error(
                            at,
                            format!(
                                "target `{}` needs `node = \"…\"`: in a scenario with [[node]], \
                                 every target runs on one node",
                                name.as_deref().unwrap_or("?")
                            ),
                        );
                        targets_ok = false;
                    }
                    targets_ok &= node.is_none_or(|n| n.is_some());
                    target_node.push(node.flatten());
                    targets_ok &= target.is_some();
                    names.push(name);
                    targets.extend(target);
                }
            }
        },
    }

    let mut faults = Vec::new();
    let mut faults_ok = true;
    if let Some(e) = &fault_entry {
        match cx.tables(e, "[[fault]]") {
            None => faults_ok = false,
            Some(tables) => {
                // Without any [[target]] table, every reference would be undefined: that is
                // already reported above.
                let names = names.as_deref();
                let mut seen = Seen::default();
                for (table, at) in tables {
                    let fault = fault(cx, table, at, names, &mut seen);
                    // A time trigger fails an instance's root process: selectors have none.
                    if let Some(f) = &fault
                        && matches!(f.trigger, Trigger::Time(_))
                        && targets_ok
                        && matches!(
                            targets.get(f.target).map(|t: &Target| &t.source),
                            Some(TargetSource::Selector(_))
                        )
                    {
                        cx.error(
                            at,
                            format!(
                                "fault `{}`: a time trigger needs a `command` or `pid` target (it fails an \
                                 instance's root process); `{}` is a selector target",
                                f.name, targets[f.target].name
                            ),
                        );
                        faults_ok = false;
                    }
                    // A call no mechanism of this kernel can fail: said at the trigger.
                    // (A `retval` that only the call's path refuses, at the `retval`.)
                    if let Some(f) = &fault
                        && let (Action::Error { returns, at }, Trigger::Syscall { name, .. }) =
                            (&f.action, &f.trigger)
                        && let Some(why) = error_paths::refusal(
                            name,
                            matches!(returns, Returns::Value(_)),
                            matches!(
                                targets.get(f.target).map(|t: &Target| &t.source),
                                Some(TargetSource::Command { .. })
                            ),
                        )
                    {
                        let pos = if why.at_retval { *at } else { f.trigger_at };
                        cx.error_at_pos(pos, format!("fault `{}`: {}", f.name, why.why));
                        faults_ok = false;
                    }
                    faults_ok &= fault.is_some();
                    faults.extend(fault);
                }
            }
        }
    }

    let mut node_faults = Vec::new();
    let mut node_faults_ok = true;
    if let Some(e) = &node_fault_entry
        && let Some(tables) = cx.tables(e, "[[node_fault]]")
    {
        if nodes.is_empty() && nodes_ok {
            cx.error(
                e.key_at,
                "[[node_fault]] needs [[node]]: a node fault fails whole nodes",
            );
        }
        let mut seen = Seen::default();
        for (table, at) in tables {
            let fault = cluster::node_fault(cx, table, at, &nodes, &mut seen);
            node_faults_ok &= fault.is_some();
            node_faults.extend(fault);
        }
    } else {
        node_faults_ok = node_fault_entry.is_none();
    }
    let start_at_ok = start_at.as_ref().is_none_or(Option::is_some);

    (target_entry.is_some() && targets_ok && faults_ok && nodes_ok && node_faults_ok && start_at_ok)
        .then(|| Scenario {
            path: cx.file.to_path_buf(),
            seed,
            duration,
            targets,
            faults,
            cluster: Cluster {
                target_node: if nodes.is_empty() {
                    Vec::new()
                } else {
                    target_node
                },
                nodes,
                node_faults,
                start_at: start_at.flatten(),
            },
        })
}

/// Names already used by one kind of table, with the line each was first defined on.
#[derive(Default)]
struct Seen(Vec<(String, usize)>);

impl Seen {
    /// Checks that the `name` entry is a non-empty string not seen before, and records it.
    fn name(&mut self, cx: &mut Cx<'_>, e: &Entry<'_>, kind: &str) -> Option<String> {
        let name = cx.string(e)?;
        if name.is_empty() {
            cx.error(e.at, format!("{kind} `name` must not be empty"));
            return None;
        }
        if let Some((_, line)) = self.0.iter().find(|(n, _)| n == name) {
            cx.error(
                e.at,
                format!("duplicate {kind} name `{name}` (first defined on line {line})"),
            );
            return None;
        }
        self.0.push((name.to_string(), cx.line_col(e.at).0));
        Some(name.to_string())
    }
}

/// One [[target]] table: its name (if valid, even when the rest is not) and the target.
fn target<'d>(
    cx: &mut Cx<'_>,
    table: &'d dyn TableLike,
    at: usize,
    dir: &Path,
    seen: &mut Seen,
) -> (Option<String>, Option<Target>, Option<Entry<'d>>) {
    let mut r = Reader::new(table, "in [[target]]", "", at);
    let node = r.get("node");
    let name = r
        .required(cx, "name")
        .and_then(|e| seen.name(cx, &e, "target"));
    let command = r.get("command");
    let pid = r.get("pid");
    let cwd = r.get("cwd");
    let env = r.get("env");
    let instances = r.get("instances");
    let user = r.get("user");
    let group = r.get("group");
    let selectors = [r.get("comm"), r.get("exe"), r.get("uid"), r.get("cgroup")];
    r.finish(cx);
    let mut given = selectors.into_iter().flatten();
    if let Some(first) = given.next() {
        let second = given.next();
        let others = [&command, &pid, &cwd, &env, &instances, &user, &group]
            .into_iter()
            .flatten()
            .chain(second.as_ref());
        let mut ok = true;
        for e in others {
            cx.error(
                e.key_at,
                format!(
                    "`{}` cannot be combined with `{}`: a target has one source",
                    e.label, first.label
                ),
            );
            ok = false;
        }
        let selector = selector(cx, &first);
        let target = match (&name, selector) {
            (Some(name), Some(selector)) if ok => Some(Target {
                name: name.clone(),
                source: TargetSource::Selector(selector),
                at: cx.pos(at),
            }),
            _ => None,
        };
        return (name, target, node);
    }
    let instances_value = instances.as_ref().and_then(|e| {
        let n = cx.uint(e, 1)?;
        if n > MAX_INSTANCES {
            cx.error(
                e.at,
                format!("`instances` must be at most {MAX_INSTANCES}, found {n}"),
            );
            return None;
        }
        Some(n as u32)
    });

    let argv = command.as_ref().map(|e| argv(cx, e));
    let pid_value = pid.as_ref().map(|e| pid_number(cx, e));
    let cwd_value = cwd.as_ref().and_then(|e| {
        let s = cx.non_empty_string(e)?;
        Some(dir.join(s))
    });
    let env_value = env.as_ref().and_then(|e| environment(cx, e));
    let user_value = user.as_ref().map(|e| account(cx, e, Account::User));
    let group_value = group.as_ref().map(|e| account(cx, e, Account::Group));

    let source = match (&command, &pid) {
        (Some(c), Some(p)) => {
            let later = if p.key_at > c.key_at { p } else { c };
            cx.error(
                later.key_at,
                "`command` and `pid` cannot both be given: a target is either spawned \
                 (`command`) or adopted (`pid`)",
            );
            None
        }
        (None, None) => {
            cx.error(
                at,
                "missing `command` or `pid` in [[target]]: give either the program to spawn \
                 or the pid of a running process to adopt",
            );
            None
        }
        (Some(_), None) => {
            // The user's primary group unless `group` says otherwise.
            let user_id = user_value.flatten();
            let group_id = match (&group_value, user_id) {
                (Some(g), _) => g.map(|(gid, _)| gid),
                (None, Some((_, primary))) => Some(primary),
                (None, None) => None,
            };
            let resolved =
                user_value.is_none_or(|u| u.is_some()) && group_value.is_none_or(|g| g.is_some());
            argv.flatten()
                .filter(|_| resolved)
                .map(|argv| TargetSource::Command {
                    argv,
                    cwd: cwd_value,
                    env: env_value.unwrap_or_default(),
                    instances: instances_value.unwrap_or(1),
                    user: user_id.map(|(uid, _)| uid),
                    group: group_id,
                })
        }
        (None, Some(_)) => {
            for e in [&cwd, &env, &instances, &user, &group]
                .into_iter()
                .flatten()
            {
                cx.error(
                    e.key_at,
                    format!(
                        "`{}` is only allowed with `command`: an adopted process (`pid`) keeps \
                         its own",
                        e.label
                    ),
                );
            }
            pid_value.flatten().map(TargetSource::Pid)
        }
    };
    let target = match (&name, source) {
        (Some(name), Some(source)) => Some(Target {
            name: name.clone(),
            source,
            at: cx.pos(at),
        }),
        _ => None,
    };
    (name, target, node)
}

/// `comm = "etcd"`, `exe = "/usr/bin/etcd"`, `uid = 1000`, `cgroup = "/sys/fs/cgroup/x"` (or an id).
#[derive(Clone, Copy)]
enum Account {
    User,
    Group,
}

/// `user = "name" | uid` or `group = "name" | gid`, looked up in the system's user and group
/// databases: (id, primary group id of a user; the gid again for a group). A name must exist;
/// a number is taken as is (a user without a passwd entry keeps gid = uid as its group).
fn account(cx: &mut Cx<'_>, e: &Entry<'_>, kind: Account) -> Option<(u32, u32)> {
    let what = match kind {
        Account::User => "user",
        Account::Group => "group",
    };
    if let Some(n) = e.item.as_integer() {
        return match u32::try_from(n) {
            Ok(id) if id != u32::MAX => Some(match kind {
                Account::User => (id, lookup_user_by_id(id).unwrap_or(id)),
                Account::Group => (id, id),
            }),
            _ => {
                cx.error(e.at, format!("`{what}` {n} is not a valid {what} id"));
                None
            }
        };
    }
    let name = cx.non_empty_string(e)?;
    let found = match kind {
        Account::User => lookup_user(name),
        Account::Group => lookup_group(name).map(|gid| (gid, gid)),
    };
    if found.is_none() {
        let db = match kind {
            Account::User => "passwd",
            Account::Group => "group",
        };
        cx.error(
            e.at,
            format!("unknown {what} `{name}`: not in this system's {db} database"),
        );
    }
    found
}

/// (uid, primary gid) of user `name`.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getpwnam_r writes into the passwd and buffer we own; `found` points into them.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut found = std::ptr::null_mut();
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        (!found.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
    }
}

/// Primary gid of user id `uid`, if it has a passwd entry.
fn lookup_user_by_id(uid: u32) -> Option<u32> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: as in `lookup_user`.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut found = std::ptr::null_mut();
        libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found);
        (!found.is_null()).then_some(pwd.pw_gid)
    }
}

/// gid of group `name`.
fn lookup_group(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: as in `lookup_user`, for getgrnam_r.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut found = std::ptr::null_mut();
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        (!found.is_null()).then_some(grp.gr_gid)
    }
}

fn selector(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<Selector> {
    match e.label.as_str() {
        "comm" => {
            let name = cx.non_empty_string(e)?;
            if name.len() > 15 {
                cx.error(
                    e.at,
                    format!(
                        "`comm` is at most 15 bytes (the kernel's task name), found {}",
                        name.len()
                    ),
                );
                return None;
            }
            Some(Selector::Comm(name.to_string()))
        }
        "exe" => {
            let path = cx.non_empty_string(e)?;
            if !path.starts_with('/') || path.len() >= fij_common::EXE_KEY_LEN {
                cx.error(
                    e.at,
                    format!(
                        "`exe` must be an absolute path shorter than {} bytes",
                        fij_common::EXE_KEY_LEN
                    ),
                );
                return None;
            }
            Some(Selector::Exe(PathBuf::from(path)))
        }
        "uid" => cx.uint(e, 0).and_then(|n| match u32::try_from(n) {
            Ok(uid) => Some(Selector::Uid(uid)),
            Err(_) => {
                cx.error(e.at, format!("`uid` {n} is out of range"));
                None
            }
        }),
        _ => match e.item.as_integer() {
            Some(id) if id > 0 => Some(Selector::Cgroup(CgroupRef::Id(id as u64))),
            _ => cx
                .non_empty_string(e)
                .map(|p| Selector::Cgroup(CgroupRef::Path(PathBuf::from(p)))),
        },
    }
}

/// `ports = [6379, 2380]`: TCP/UDP port numbers (1..=65535).
fn ports(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<Vec<u16>> {
    let array = cx.array(e, "an array of port numbers such as [6379, 2380]")?;
    let mut ports = Vec::new();
    let mut ok = true;
    for (i, value) in array.iter().enumerate() {
        let at = value.span().map_or(e.at, |s| s.start);
        match value.as_integer().map(u16::try_from) {
            Some(Ok(port)) if port > 0 => ports.push(port),
            _ => {
                cx.error(
                    at,
                    format!("`{}[{i}]`: expected a port number from 1 to 65535", e.label),
                );
                ok = false;
            }
        }
    }
    ok.then_some(ports)
}

fn argv(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<Vec<String>> {
    let array = cx.array(
        e,
        "an array of strings such as [\"python3\", \"worker.py\"]",
    )?;
    if array.is_empty() {
        cx.error(
            e.at,
            format!(
                "`{}` must not be empty: give at least the program to run",
                e.label
            ),
        );
        return None;
    }
    let mut argv = Vec::new();
    let mut ok = true;
    for (i, value) in array.iter().enumerate() {
        let at = value.span().map_or(e.at, |s| s.start);
        let label = format!("{}[{i}]", e.label);
        match value.as_str() {
            None => {
                cx.error(
                    at,
                    format!(
                        "`{label}`: expected a string, found {}",
                        describe_value(value)
                    ),
                );
                ok = false;
            }
            Some("") if i == 0 => {
                cx.error(
                    at,
                    format!("`{label}` (the program to run) must not be empty"),
                );
                ok = false;
            }
            Some(s) => {
                ok &= cx.no_nul(at, &label, s);
                argv.push(s.to_string());
            }
        }
    }
    ok.then_some(argv)
}

/// Highest pid the kernel can hand out (`PID_MAX_LIMIT` on 64-bit).
const PID_MAX_LIMIT: i64 = 4 * 1024 * 1024;

fn pid_number(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<u32> {
    let pid = cx.integer(e)?;
    if pid <= 1 {
        cx.error(
            e.at,
            format!("`{}` must be greater than 1, found {pid}", e.label),
        );
        None
    } else if pid > PID_MAX_LIMIT {
        cx.error(
            e.at,
            format!(
                "`{}` must be at most {PID_MAX_LIMIT} (the kernel's limit), found {pid}",
                e.label
            ),
        );
        None
    } else {
        Some(pid as u32)
    }
}

fn environment(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<Vec<(String, String)>> {
    let table = cx.table(e, "a table of strings such as { KEY = \"value\" }")?;
    let mut env = Vec::new();
    let mut ok = true;
    for (key, item) in table.iter() {
        let key_at = table
            .key(key)
            .and_then(|k| k.span())
            .map_or(e.at, |s| s.start);
        let at = item.span().map_or(key_at, |s| s.start);
        let label = format!("{}.{key}", e.label);
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            cx.error(
                key_at,
                format!("invalid environment variable name `{key}`: it must be non-empty and contain no `=` or NUL"),
            );
            ok = false;
        }
        match item.as_str() {
            Some(value) => {
                ok &= cx.no_nul(at, &label, value);
                env.push((key.to_string(), value.to_string()));
            }
            None => {
                cx.error(
                    at,
                    format!("`{label}`: expected a string, found {}", describe(item)),
                );
                ok = false;
            }
        }
    }
    ok.then_some(env)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ActionKind {
    Kill,
    Signal,
    Crash,
    Stop,
    Partition,
    Error,
}

impl ActionKind {
    const NAMES: [&'static str; 6] = ["kill", "signal", "crash", "stop", "partition", "error"];

    fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// One [[fault]] table. `targets` has the name of each [[target]] table (`None` where it has no
/// valid name); with no [[target]] tables at all, `target` references are not checked.
fn fault(
    cx: &mut Cx<'_>,
    table: &dyn TableLike,
    at: usize,
    targets: Option<&[Option<String>]>,
    seen: &mut Seen,
) -> Option<Fault> {
    let mut r = Reader::new(table, "in [[fault]]", "", at);
    let name = r
        .required(cx, "name")
        .and_then(|e| seen.name(cx, &e, "fault"));
    let target = r.required(cx, "target").and_then(|e| {
        let name = cx.string(&e)?;
        let targets = targets?;
        if let Some(i) = targets.iter().position(|t| t.as_deref() == Some(name)) {
            return Some(i);
        }
        let defined: Vec<&str> = targets.iter().flatten().map(String::as_str).collect();
        let list = match &defined[..] {
            [] => "no [[target]] has a valid name".to_string(),
            _ => {
                let names = defined.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>();
                format!("defined targets: {}", names.join(", "))
            }
        };
        cx.error(
            e.at,
            format!(
                "undefined target `{name}` ({list}){}",
                did_you_mean(name, defined.iter().copied())
            ),
        );
        None
    });
    let action = r.required(cx, "action").and_then(|e| {
        let action = cx.string(&e)?;
        match action {
            "kill" => Some(ActionKind::Kill),
            "signal" => Some(ActionKind::Signal),
            "crash" | "partition" if let Some(refusal) = without_tcx(cx, action, "process's") => {
                cx.error(e.at, refusal);
                None
            }
            "crash" => Some(ActionKind::Crash),
            "stop" => Some(ActionKind::Stop),
            "partition" => Some(ActionKind::Partition),
            "error" => Some(ActionKind::Error),
            _ => {
                cx.error(
                    e.at,
                    format!(
                        "unknown action `{action}`: expected `kill`, `signal`, `crash`, `stop`, \
                         `partition` or `error`{}",
                        did_you_mean(action, ActionKind::NAMES)
                    ),
                );
                None
            }
        }
    });
    let signal_entry = r.get("signal");
    let signal = signal_entry.as_ref().and_then(|e| signal(cx, e));
    // Keys that belong to one action only: (key, action, its value if valid).
    let recover_entry = r.get("recover_after");
    let recover_after = recover_entry.as_ref().and_then(|e| cx.duration(e));
    let resume_entry = r.get("resume_after");
    let resume_after = resume_entry.as_ref().and_then(|e| cx.duration(e));
    let heal_entry = r.get("duration");
    let heal_after = heal_entry.as_ref().and_then(|e| cx.duration(e));
    let ports_entry = r.get("ports");
    let ports = ports_entry.as_ref().and_then(|e| ports(cx, e));
    let errno_entry = r.get("errno");
    let errno = errno_entry.as_ref().and_then(|e| errno(cx, e));
    let retval_entry = r.get("retval");
    let retval = retval_entry.as_ref().and_then(|e| cx.integer(e));
    if let Some(kind) = action {
        for (entry, key, owner) in [
            (&recover_entry, "recover_after", ActionKind::Crash),
            (&resume_entry, "resume_after", ActionKind::Stop),
            (&heal_entry, "duration", ActionKind::Partition),
            (&ports_entry, "ports", ActionKind::Partition),
            (&errno_entry, "errno", ActionKind::Error),
            (&retval_entry, "retval", ActionKind::Error),
        ] {
            if let Some(e) = entry.as_ref().filter(|_| kind != owner) {
                cx.error(
                    e.key_at,
                    format!(
                        "`{key}` only applies to `action = \"{}\"`, not `{}`",
                        owner.name(),
                        kind.name()
                    ),
                );
            }
        }
    }
    let trigger_entry = r.required(cx, "trigger");
    let trigger_at = trigger_entry.as_ref().map_or(at, |e| e.at);
    let trigger = trigger_entry.and_then(|e| trigger(cx, &e));
    let nth = r.get("nth").and_then(|e| {
        let n = cx.integer(&e)?;
        if n < 1 {
            cx.error(
                e.at,
                format!("`nth` must be at least 1, found {n}: nth is 1-based (`nth = 1` is the first hit)"),
            );
            return None;
        }
        Some(n as u64)
    });
    let every = r.get("every").and_then(|e| cx.uint(&e, 1));
    let after = r.get("after").and_then(|e| cx.duration(&e));
    let count = r.get("count").and_then(|e| cx.uint(&e, 1));
    let select_entry = r.get("select");
    let select_value = select_entry.as_ref().and_then(|e| select(cx, e));
    let probability = r.get("probability").and_then(|e| {
        let p = e
            .item
            .as_float()
            .or_else(|| e.item.as_integer().map(|n| n as f64));
        match p {
            None => {
                cx.type_error(&e, "a number such as 0.25");
                None
            }
            Some(p) if p > 0.0 && p <= 1.0 => Some(p),
            Some(p) => {
                cx.error(e.at, format!("`probability` must be in (0, 1], found {p}"));
                None
            }
        }
    });
    let per = r.get("per").and_then(|e| {
        let per = cx.string(&e)?;
        match per {
            "process" => Some(Per::Process),
            "target" => Some(Per::Target),
            _ => {
                cx.error(
                    e.at,
                    format!(
                        "unknown value `{per}` for `per`: expected `process` or `target`{}",
                        did_you_mean(per, ["process", "target"])
                    ),
                );
                None
            }
        }
    });
    let r_at = r.at;
    let count_given = r.get("count").is_some();
    let mut value_at = |key: &'static str| r.get(key).map(|e| e.at);
    let conditions_at = [
        value_at("nth"),
        value_at("every"),
        value_at("after"),
        value_at("count"),
    ];
    r.finish(cx);
    let [nth_at, every_at, after_at, count_at] = conditions_at.map(|at| at.map(|a| cx.pos(a)));

    // A time trigger fires once per selected instance: hit conditions have no meaning there.
    if matches!(trigger, Some(Trigger::Time(_)))
        && (nth.is_some()
            || every.is_some()
            || after.is_some()
            || probability.is_some()
            || count_given
            || per.is_some())
    {
        cx.error(
            r_at,
            "`nth`, `every`, `after`, `count`, `probability` and `per` count hits of syscall, \
             tracepoint and probe triggers; a time trigger (`at` / `after`) fires once per \
             selected instance",
        );
    }

    // A failed call is a call: only a syscall trigger names one.
    if action == Some(ActionKind::Error)
        && let Some(t) = trigger
            .as_ref()
            .filter(|t| !matches!(t, Trigger::Syscall { .. }))
    {
        cx.error(
            trigger_at,
            format!(
                "`action = \"error\"` fails the call that is the hit, so it needs a syscall \
                 trigger such as `{{ syscall = \"connect\" }}`, not `{}`",
                t.describe()
            ),
        );
    }

    let action = match (action, &signal_entry) {
        (Some(ActionKind::Error), None) => match (&errno_entry, &retval_entry) {
            (Some(_), None) => errno.map(Returns::Errno),
            (None, Some(_)) => retval.map(Returns::Value),
            (Some(_), Some(e)) => {
                cx.error(
                    e.key_at,
                    "`errno` and `retval` cannot both be given: a failed call returns -1 with \
                     `errno`, or `retval` without running",
                );
                None
            }
            (None, None) => {
                cx.error(
                    r_at,
                    "missing required key `errno` in [[fault]]: `action = \"error\"` needs one, \
                     e.g. `errno = \"ECONNREFUSED\"` (or `retval = N`)",
                );
                None
            }
        }
        .map(|returns| Action::Error {
            returns,
            at: cx.pos(
                errno_entry
                    .as_ref()
                    .or(retval_entry.as_ref())
                    .map_or(r_at, |e| e.at),
            ),
        }),
        (Some(ActionKind::Kill), None) => Some(Action::Kill),
        (Some(ActionKind::Crash), None) => Some(Action::Crash { recover_after }),
        (Some(ActionKind::Stop), None) => Some(Action::Stop { resume_after }),
        (Some(ActionKind::Partition), None) => Some(Action::Partition {
            duration: heal_after,
            ports: ports.unwrap_or_default(),
        }),
        (
            Some(
                kind @ (ActionKind::Kill
                | ActionKind::Crash
                | ActionKind::Stop
                | ActionKind::Partition
                | ActionKind::Error),
            ),
            Some(e),
        ) => {
            cx.error(
                e.key_at,
                format!(
                    "`signal` cannot be used with `action = \"{}\"`, whose signal is fixed; \
                     use `action = \"signal\"` to send another signal",
                    kind.name()
                ),
            );
            None
        }
        (Some(ActionKind::Signal), None) => {
            cx.error(
                r_at,
                "missing required key `signal` in [[fault]]: `action = \"signal\"` needs one, \
                 e.g. `signal = \"SIGTERM\"`",
            );
            None
        }
        (Some(ActionKind::Signal), Some(_)) => signal.map(Action::Signal),
        (None, _) => None,
    };

    Some(Fault {
        name: name?,
        target: target?,
        action: action?,
        trigger: trigger?,
        nth,
        every,
        after,
        count: count.unwrap_or(1),
        probability,
        select: select_value.unwrap_or_default(),
        per: per.unwrap_or_default(),
        at: cx.pos(at),
        trigger_at: cx.pos(trigger_at),
        conditions_at: ConditionsAt {
            nth: nth_at,
            every: every_at,
            after: after_at,
            count: count_at,
        },
    })
}

fn trigger(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<Trigger> {
    let table = cx.table(e, "a table such as `{ syscall = \"write\" }`")?;
    let mut r = Reader::new(table, "in `trigger`", "trigger.", e.at);
    let kinds = [
        r.get("syscall"),
        r.get("at"),
        r.get("after"),
        r.get("tracepoint"),
        r.get("uprobe"),
        r.get("uretprobe"),
        r.get("kprobe"),
        r.get("kretprobe"),
    ];
    let port = r.get("port");
    r.finish(cx);
    let mut given = kinds.into_iter().flatten();
    let (Some(one), None) = (given.next(), given.next()) else {
        cx.error(
            e.at,
            "`trigger` needs exactly one of `syscall`, `at`, `after`, `tracepoint`, `uprobe`, \
             `uretprobe`, `kprobe` or `kretprobe`, e.g. `{ syscall = \"write\" }` or `{ at = \"5s\" }`",
        );
        return None;
    };
    let kind = one.label.rsplit('.').next().unwrap_or_default().to_string();
    let syscall = match kind.as_str() {
        "syscall" => one,
        "at" => return cx.duration(&one).map(|d| Trigger::Time(Schedule::At(d))),
        "after" => return schedule_after(cx, &one).map(Trigger::Time),
        "tracepoint" => return tracepoint(cx, &one),
        _ => return probe(cx, &one, &kind),
    };
    let name = cx.string(&syscall)?;
    // `port`: only calls whose sockaddr argument names it count as hits.
    let port = match port {
        None => None,
        Some(e) if !PORT_SYSCALLS.iter().any(|(n, _)| *n == name) => {
            cx.error(
                e.key_at,
                format!(
                    "`port` filters only {} triggers, which take an address",
                    PORT_SYSCALLS.map(|(n, _)| format!("`{n}`")).join(", ")
                ),
            );
            return None;
        }
        Some(e) => match e.item.as_integer().map(u16::try_from) {
            Some(Ok(p)) if p > 0 => Some(p),
            _ => {
                cx.error(e.at, "`port`: expected a port number from 1 to 65535");
                return None;
            }
        },
    };
    match syscalls::Sysno::from_str(name) {
        Ok(sysno) => Some(Trigger::Syscall {
            name: name.to_string(),
            nr: sysno.id() as u32,
            port,
        }),
        Err(()) => {
            cx.error(
                syscall.at,
                format!(
                    "unknown syscall `{name}` on {}{}",
                    std::env::consts::ARCH,
                    did_you_mean(name, syscalls::Sysno::iter().map(|s| s.name()))
                ),
            );
            None
        }
    }
}

/// Syscalls whose `port` filter fij understands, with the argument (1-based) that holds the
/// sockaddr.
pub const PORT_SYSCALLS: [(&str, u32); 3] = [("connect", 2), ("bind", 2), ("sendto", 5)];

/// Tracepoint categories whose events fire in interrupt context, where "current" is whatever
/// task was interrupted: a fault there would hit a random process.
const INTERRUPT_CATEGORIES: [&str; 3] = ["irq", "irq_vectors", "napi"];

/// `tracepoint = "category:name"`, checked against tracefs when it is mounted.
fn tracepoint(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<Trigger> {
    let text = cx.string(e)?;
    let Some((category, name)) = text
        .split_once(':')
        .filter(|(c, n)| !c.is_empty() && !n.is_empty())
    else {
        cx.error(
            e.at,
            format!(
                "`{}`: expected \"category:name\", e.g. \"sched:sched_process_fork\"",
                e.label
            ),
        );
        return None;
    };
    if category == "syscalls" {
        let syscall = name
            .strip_prefix("sys_enter_")
            .or(name.strip_prefix("sys_exit_"))
            .unwrap_or(name);
        cx.error(
            e.at,
            format!(
                "use `trigger = {{ syscall = \"{syscall}\" }}` for syscalls: BPF programs on \
                 `syscalls:*` tracepoints cannot tell which one fired"
            ),
        );
        return None;
    }
    if INTERRUPT_CATEGORIES.contains(&category) {
        cx.error(
            e.at,
            format!(
                "tracepoints of `{category}` fire in interrupt context, where the current task is \
                 whichever one was interrupted: fij refuses them as triggers"
            ),
        );
        return None;
    }
    let events = Path::new(crate::layout::TRACEFS).join("events");
    if events.is_dir() && !events.join(category).join(name).join("id").is_file() {
        cx.error(
            e.at,
            format!(
                "no tracepoint `{category}:{name}` on this kernel (see {})",
                events.display()
            ),
        );
        return None;
    }
    Some(Trigger::Tracepoint {
        category: category.to_string(),
        name: name.to_string(),
    })
}

/// Whether the ELF file `path` defines `symbol`, looking where the uprobe attach looks: its
/// dynamic and static symbol tables, then those of its `.gnu_debuglink` debug file.
fn elf_has_symbol(path: &Path, symbol: &str) -> Result<(), String> {
    use object::{Object, ObjectSymbol};
    use std::os::unix::ffi::OsStrExt;
    let defines = |data: &[u8]| -> Result<bool, String> {
        let file = object::File::parse(data).map_err(|e| format!("not an ELF file: {e}"))?;
        Ok(file
            .dynamic_symbols()
            .chain(file.symbols())
            .any(|s| s.is_definition() && s.name() == Ok(symbol)))
    };
    let data = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if defines(&data).map_err(|e| format!("{}: {e}", path.display()))? {
        return Ok(());
    }
    let debug = object::File::parse(&*data)
        .ok()
        .and_then(|f| {
            f.gnu_debuglink()
                .ok()
                .flatten()
                .map(|(name, _)| name.to_vec())
        })
        .map(|name| {
            let name = Path::new(std::ffi::OsStr::from_bytes(&name)).to_path_buf();
            path.parent().map_or(name.clone(), |dir| dir.join(&name))
        });
    let in_debug = debug
        .as_ref()
        .and_then(|p| fs::read(p).ok())
        .is_some_and(|d| defines(&d).unwrap_or(false));
    if in_debug {
        return Ok(());
    }
    Err(match debug {
        Some(d) => format!(
            "no symbol `{symbol}` in {} (nor in its debug file {})",
            path.display(),
            d.display()
        ),
        None => format!("no symbol `{symbol}` in {}", path.display()),
    })
}

/// `uprobe = "PATH:SYMBOL"`, `"PATH:SYMBOL+OFFSET"`, `"PATH:0xADDR"` (and `uretprobe`);
/// `kprobe = "function"` (and `kretprobe`).
fn probe(cx: &mut Cx<'_>, e: &Entry<'_>, kind: &str) -> Option<Trigger> {
    let text = cx.string(e)?;
    let kind = match kind {
        "uprobe" => ProbeKind::Uprobe,
        "uretprobe" => ProbeKind::Uretprobe,
        "kprobe" => ProbeKind::Kprobe,
        _ => ProbeKind::Kretprobe,
    };
    let user = matches!(kind, ProbeKind::Uprobe | ProbeKind::Uretprobe);
    let (binary, location) = if user {
        match text.rsplit_once(':') {
            Some((binary, location)) if !binary.is_empty() && !location.is_empty() => {
                (binary, location)
            }
            _ => {
                cx.error(
                    e.at,
                    format!(
                        "`{}`: expected \"PATH:SYMBOL\", \"PATH:SYMBOL+OFFSET\" or \"PATH:0xADDR\"",
                        e.label
                    ),
                );
                return None;
            }
        }
    } else {
        ("", text)
    };
    let parse_offset = |o: &str| match o.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => o.parse().ok(),
    };
    let location = if let Some(address) = location.strip_prefix("0x") {
        match (user, u64::from_str_radix(address, 16)) {
            (true, Ok(a)) => ProbeLocation::Address(a),
            _ => {
                cx.error(
                    e.at,
                    format!(
                        "`{}`: `{location}` is not a file offset of a uprobe",
                        e.label
                    ),
                );
                return None;
            }
        }
    } else if let Some((symbol, offset)) = location.split_once('+') {
        match parse_offset(offset) {
            Some(o) if !symbol.is_empty() => ProbeLocation::SymbolOffset(symbol.to_string(), o),
            _ => {
                cx.error(e.at, format!("`{}`: bad offset in `{location}`", e.label));
                return None;
            }
        }
    } else {
        ProbeLocation::Symbol(location.to_string())
    };
    if user && binary.contains('/') && !binary.starts_with('/') {
        cx.error(
            e.at,
            format!(
                "`{}`: give an absolute path or a library name such as `libc`, not `{binary}`",
                e.label
            ),
        );
        return None;
    }
    if user && binary.starts_with('/') && !Path::new(binary).is_file() {
        cx.error(e.at, format!("`{}`: no file {binary}", e.label));
        return None;
    }
    // What `fij run` would find missing when it attaches, said here at the key's position.
    if let (true, ProbeLocation::Symbol(symbol) | ProbeLocation::SymbolOffset(symbol, _)) =
        (user && binary.starts_with('/'), &location)
        && let Err(why) = elf_has_symbol(Path::new(binary), symbol)
    {
        cx.error(e.at, format!("`{}`: {why}", e.label));
        return None;
    }
    if !user && cx.kernel == KernelFeatures::Checked && !Path::new(KPROBE_PMU).exists() {
        cx.error(
            e.at,
            "kprobe triggers need a kernel with kprobes (CONFIG_KPROBES); this kernel has none \
             (`fij doctor` lists what it supports); use a tracepoint or uprobe trigger instead",
        );
        return None;
    }
    Some(Trigger::Probe(Probe {
        kind,
        binary: binary.to_string(),
        location,
    }))
}

/// Why `crash` or `partition` (`action`) cannot run on this kernel, if it is older than 6.6
/// (see [`kernel_without_tcx`]) and the kernel's features are checked; `whose` packets they
/// would silence.
fn without_tcx(cx: &Cx<'_>, action: &str, whose: &str) -> Option<String> {
    if cx.kernel == KernelFeatures::NotChecked {
        return None;
    }
    kernel_without_tcx().map(|release| {
        format!(
            "`{action}` needs tcx (kernel 6.6 or later) to silence the {whose} packets; this \
             kernel is {release} (`fij doctor` lists what it supports); use `kill` instead"
        )
    })
}

/// The running kernel's release when it is older than 6.6, which has no tcx: `crash` and
/// `partition` attach their packet filter as tcx links (owned by fij's file descriptors, so
/// nothing stays behind when fij dies; a legacy clsact filter would). Measured in the kernel
/// lab: on 6.1 the attach fails with "Parent Qdisc doesn't exists".
fn kernel_without_tcx() -> Option<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    let (major, minor) = (numbers.next()??, numbers.next()??);
    ((major, minor) < (6, 6)).then(|| release.to_owned())
}

/// Present when the kernel can create kprobes through perf (what aya uses).
pub const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// Upper bound of `instances` on one target.
const MAX_INSTANCES: u64 = 1024;

/// `trigger.after`: one distribution table.
fn schedule_after(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<Schedule> {
    let table = cx.table(e, "a table such as `{ exponential = { mean = \"10s\" } }`")?;
    let mut r = Reader::new(table, "in `trigger.after`", "trigger.after.", e.at);
    let kinds = [r.get("exponential"), r.get("weibull"), r.get("uniform")];
    r.finish(cx);
    let given: Vec<&Entry<'_>> = kinds.iter().flatten().collect();
    let [d] = given.as_slice() else {
        cx.error(
            e.at,
            "`trigger.after` needs exactly one distribution: `exponential`, `weibull` or `uniform`",
        );
        return None;
    };
    let table = cx.table(d, "a table of the distribution's parameters")?;
    let kind = d.label.rsplit('.').next().unwrap_or_default();
    let prefix = match kind {
        "exponential" => "trigger.after.exponential.",
        "weibull" => "trigger.after.weibull.",
        _ => "trigger.after.uniform.",
    };
    let mut r = Reader::new(table, "in the distribution", prefix, d.at);
    let schedule = match kind {
        "exponential" => {
            let mean = r.required(cx, "mean").and_then(|e| positive(cx, &e));
            Some(Schedule::Exponential { mean: mean? })
        }
        "weibull" => {
            let scale = r.required(cx, "scale").and_then(|e| positive(cx, &e));
            let shape = r.required(cx, "shape").and_then(|e| {
                let v = number(cx, &e)?;
                (v > 0.0).then_some(v).or_else(|| {
                    cx.error(e.at, format!("`shape` must be greater than 0, found {v}"));
                    None
                })
            });
            match (scale, shape) {
                (Some(scale), Some(shape)) => Some(Schedule::Weibull { scale, shape }),
                _ => None,
            }
        }
        _ => {
            let min = r.required(cx, "min").and_then(|e| cx.duration(&e));
            let max = r
                .required(cx, "max")
                .and_then(|e| cx.duration(&e).map(|d| (d, e.at)));
            match (min, max) {
                (Some(min), Some((max, _))) if max > min => Some(Schedule::Uniform { min, max }),
                (Some(_), Some((_, at))) => {
                    cx.error(at, "`max` must be later than `min`");
                    None
                }
                _ => None,
            }
        }
    };
    r.finish(cx);
    schedule
}

/// A duration that must be greater than zero.
fn positive(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<Duration> {
    let d = cx.duration(e)?;
    if d.is_zero() {
        cx.error(e.at, format!("`{}` must be greater than 0", e.label));
        return None;
    }
    Some(d)
}

/// A float or an integer.
fn number(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<f64> {
    let v = e
        .item
        .as_float()
        .or_else(|| e.item.as_integer().map(|n| n as f64));
    if v.is_none() {
        cx.type_error(e, "a number");
    }
    v
}

/// `select = "all" | "one" | { fixed = N } | { percent = P }`.
fn select(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<Select> {
    if let Some(word) = e.item.as_str() {
        return match word {
            "all" => Some(Select::All),
            "one" => Some(Select::One),
            _ => {
                cx.error(e.at, format!("unknown `select` value `{word}`: expected \"all\", \"one\", {{ fixed = N }} or {{ percent = P }}"));
                None
            }
        };
    }
    let table = cx.table(e, "\"all\", \"one\", { fixed = N } or { percent = P }")?;
    let mut r = Reader::new(table, "in `select`", "select.", e.at);
    let fixed = r.get("fixed");
    let percent = r.get("percent");
    r.finish(cx);
    match (fixed, percent) {
        (Some(f), None) => cx
            .uint(&f, 1)
            .map(|n| Select::Fixed(n.min(u32::MAX as u64) as u32)),
        (None, Some(p)) => {
            let v = number(cx, &p)?;
            if v > 0.0 && v <= 100.0 {
                Some(Select::Percent(v))
            } else {
                cx.error(p.at, format!("`percent` must be in (0, 100], found {v}"));
                None
            }
        }
        _ => {
            cx.error(e.at, "`select` needs exactly one of `fixed` or `percent`");
            None
        }
    }
}

/// `errno = "ECONNREFUSED"` or a number from 1 to 4095 (the kernel's MAX_ERRNO).
fn errno(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<i32> {
    const MAX_ERRNO: i64 = 4095;
    let names =
        || (1..=MAX_ERRNO as i32).filter_map(|n| Some((syscalls::Errno::new(n).name()?, n)));
    match e.item.as_value() {
        Some(Value::Integer(n)) => {
            let n = *n.value();
            if (1..=MAX_ERRNO).contains(&n) {
                Some(n as i32)
            } else {
                cx.error(
                    e.at,
                    format!("`errno` must be between 1 and {MAX_ERRNO}, found {n}"),
                );
                None
            }
        }
        Some(Value::String(s)) => {
            let name = s.value();
            if let Some((_, n)) = names().find(|(known, _)| *known == name) {
                return Some(n);
            }
            let suggestion = did_you_mean(name, names().map(|(known, _)| known));
            cx.error(
                e.at,
                format!(
                    "unknown errno `{name}` on {}: use a name such as \"ECONNREFUSED\" or a \
                     number from 1 to {MAX_ERRNO}{suggestion}",
                    std::env::consts::ARCH
                ),
            );
            None
        }
        _ => {
            cx.type_error(e, "an errno name such as \"ECONNREFUSED\" or a number");
            None
        }
    }
}

/// Signal names without the `SIG` prefix, as understood by `signal = "..."`.
fn signal(cx: &mut Cx<'_>, e: &Entry<'_>) -> Option<i32> {
    match e.item.as_value() {
        Some(Value::Integer(n)) => {
            let n = *n.value();
            if (1..=SIGNAL_MAX as i64).contains(&n) {
                Some(n as i32)
            } else {
                cx.error(
                    e.at,
                    format!("`signal` must be between 1 and {SIGNAL_MAX}, found {n}"),
                );
                None
            }
        }
        Some(Value::String(s)) => {
            let name = s.value();
            if let Some(n) = signals::number(name) {
                return Some(n);
            }
            let upper = name.to_ascii_uppercase();
            let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
            let suggestion = suggest(bare, signals::known().map(|(n, _)| n))
                .map(|n| format!(" (did you mean `SIG{n}`?)"))
                .unwrap_or_default();
            cx.error(
                e.at,
                format!(
                    "unknown signal `{name}`: use a name such as \"SIGTERM\" or a number from 1 \
                     to {SIGNAL_MAX}{suggestion}"
                ),
            );
            None
        }
        _ => {
            cx.type_error(e, "a signal name such as \"SIGTERM\" or a number");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Durations.

/// Parses durations such as "500ms", "2s", "1.5s", "1m", "1h", "250us", "100ns" and sums such as
/// "1m 30s". Zero is accepted here; callers that need a positive duration check for it.
fn parse_duration(text: &str) -> Result<Duration, String> {
    const UNITS: &str = "use ns, us, ms, s, m or h";
    let text = text.trim();
    if text.is_empty() {
        return Err(format!(
            "it is empty; write a number and a unit such as \"30s\" ({UNITS})"
        ));
    }
    if text.starts_with('-') {
        return Err("it must not be negative".to_string());
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_len];
        rest = rest[num_len..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();

        if number.is_empty() {
            return match unit {
                "" => Err(format!(
                    "unexpected `{}`",
                    rest.chars().next().unwrap_or(' ')
                )),
                _ => Err(format!("expected a number before `{unit}`")),
            };
        }
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if frac.contains('.') || number.ends_with('.') || (whole.is_empty() && frac.is_empty()) {
            return Err(format!("`{number}` is not a number"));
        }
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" | "min" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(format!(
                    "`{number}` has no unit ({UNITS}, e.g. \"{number}s\")"
                ));
            }
            _ => return Err(format!("unknown unit `{unit}` ({UNITS})")),
        };
        let too_large = || "it is too large".to_string();
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        // Digits past the 20th are far below a nanosecond for every unit.
        let frac = &frac[..frac.len().min(20)];
        let frac_ns = if frac.is_empty() {
            0
        } else {
            frac.parse::<u128>().map_err(|_| too_large())? * unit_ns / 10u128.pow(frac.len() as u32)
        };
        total = whole
            .checked_mul(unit_ns)
            .and_then(|ns| ns.checked_add(frac_ns))
            .and_then(|ns| ns.checked_add(total))
            .ok_or_else(too_large)?;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| "it is too large".to_string())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

// ---------------------------------------------------------------------------------------------
// Reading tables: positions, typed values, unknown keys.

/// The state of one parse: the file and every diagnostic reported so far.
struct Cx<'a> {
    file: &'a Path,
    text: &'a str,
    diags: Vec<Diagnostic>,
    kernel: KernelFeatures,
}

impl Cx<'_> {
    /// 1-based line and column (in characters) of byte offset `at`.
    fn line_col(&self, at: usize) -> (usize, usize) {
        let mut at = at.min(self.text.len());
        while !self.text.is_char_boundary(at) {
            at -= 1;
        }
        let before = &self.text[..at];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (
            before.matches('\n').count() + 1,
            before[line_start..].chars().count() + 1,
        )
    }

    /// The position of byte offset `at`, for the model.
    fn pos(&self, at: usize) -> SourcePos {
        let (line, col) = self.line_col(at);
        SourcePos { line, col }
    }

    /// An error at a position the model kept (checks that need more than one table).
    fn error_at_pos(&mut self, pos: SourcePos, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        });
    }

    fn error(&mut self, at: usize, message: impl Into<String>) {
        let (line, col) = self.line_col(at);
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        });
    }

    fn type_error(&mut self, e: &Entry<'_>, expected: &str) {
        self.error(
            e.at,
            format!(
                "`{}`: expected {expected}, found {}",
                e.label,
                describe(e.item)
            ),
        );
    }

    fn string<'d>(&mut self, e: &Entry<'d>) -> Option<&'d str> {
        let s = e.item.as_str();
        if s.is_none() {
            self.type_error(e, "a string");
        }
        s
    }

    fn non_empty_string<'d>(&mut self, e: &Entry<'d>) -> Option<&'d str> {
        let s = self.string(e)?;
        if s.is_empty() {
            self.error(e.at, format!("`{}` must not be empty", e.label));
            return None;
        }
        self.no_nul(e.at, &e.label, s).then_some(s)
    }

    fn no_nul(&mut self, at: usize, label: &str, s: &str) -> bool {
        if s.contains('\0') {
            self.error(at, format!("`{label}` must not contain a NUL character"));
        }
        !s.contains('\0')
    }

    fn integer(&mut self, e: &Entry<'_>) -> Option<i64> {
        let n = e.item.as_integer();
        if n.is_none() {
            self.type_error(e, "an integer");
        }
        n
    }

    /// An integer that is at least `min`.
    fn uint(&mut self, e: &Entry<'_>, min: u64) -> Option<u64> {
        let n = self.integer(e)?;
        match u64::try_from(n) {
            Ok(n) if n >= min => Some(n),
            _ if min == 0 => {
                self.error(
                    e.at,
                    format!("`{}` must not be negative, found {n}", e.label),
                );
                None
            }
            _ => {
                self.error(
                    e.at,
                    format!("`{}` must be at least {min}, found {n}", e.label),
                );
                None
            }
        }
    }

    fn duration(&mut self, e: &Entry<'_>) -> Option<Duration> {
        let Some(text) = e.item.as_str() else {
            self.type_error(e, "a duration string such as \"30s\"");
            return None;
        };
        match parse_duration(text) {
            Ok(d) => Some(d),
            Err(why) => {
                self.error(
                    e.at,
                    format!("invalid duration \"{text}\" for `{}`: {why}", e.label),
                );
                None
            }
        }
    }

    fn array<'d>(&mut self, e: &Entry<'d>, expected: &str) -> Option<&'d Array> {
        let array = e.item.as_array();
        if array.is_none() {
            self.type_error(e, expected);
        }
        array
    }

    fn table<'d>(&mut self, e: &Entry<'d>, expected: &str) -> Option<&'d dyn TableLike> {
        let table = e.item.as_table_like();
        if table.is_none() {
            self.type_error(e, expected);
        }
        table
    }

    /// An array of tables (`[[name]]`, or an inline array of inline tables), each with the
    /// position of its header (or opening brace).
    fn tables<'d>(
        &mut self,
        e: &Entry<'d>,
        header: &str,
    ) -> Option<Vec<(&'d dyn TableLike, usize)>> {
        match e.item {
            Item::ArrayOfTables(array) => Some(
                array
                    .iter()
                    .map(|t| (t as &dyn TableLike, t.span().map_or(e.at, |s| s.start)))
                    .collect(),
            ),
            Item::Value(Value::Array(array)) if array.iter().all(Value::is_inline_table) => Some(
                array
                    .iter()
                    .filter_map(|v| {
                        let at = v.span().map_or(e.at, |s| s.start);
                        v.as_inline_table().map(|t| (t as &dyn TableLike, at))
                    })
                    .collect(),
            ),
            _ => {
                self.type_error(e, &format!("an array of tables, written {header}"));
                None
            }
        }
    }
}

/// A key found in a table.
#[derive(Clone)]
struct Entry<'d> {
    /// How messages name it: `nth`, `trigger.syscall`.
    label: String,
    /// Where the key is.
    key_at: usize,
    /// Where the value is (for a `[header]` table, its header; for a dotted-key table, its key).
    at: usize,
    item: &'d Item,
}

/// Takes the keys of one table by name; `finish` then reports every key never asked for.
struct Reader<'d> {
    table: &'d dyn TableLike,
    /// Where messages say the table is: "in [[fault]]", "at the top level".
    what: &'static str,
    /// Prefix for key labels: "trigger." for keys of the trigger table.
    prefix: &'static str,
    /// Where the table is (header, opening brace, or key): where missing keys are reported.
    at: usize,
    /// Every key this table understands, present or not.
    known: Vec<&'static str>,
}

impl<'d> Reader<'d> {
    fn new(table: &'d dyn TableLike, what: &'static str, prefix: &'static str, at: usize) -> Self {
        Reader {
            table,
            what,
            prefix,
            at,
            known: Vec::new(),
        }
    }

    /// The entry for `key`, if present. Every key of the table must be asked for (even if its
    /// value is then ignored), as `finish` reports the ones that were not as unknown.
    fn get(&mut self, key: &'static str) -> Option<Entry<'d>> {
        self.known.push(key);
        let (k, item) = self.table.get_key_value(key)?;
        if item.is_none() {
            return None;
        }
        let key_at = k.span().map_or(self.at, |s| s.start);
        Some(Entry {
            label: format!("{}{key}", self.prefix),
            key_at,
            at: item.span().map_or(key_at, |s| s.start),
            item,
        })
    }

    /// Like `get`, reporting a missing key at the table's position.
    fn required(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<Entry<'d>> {
        let entry = self.get(key);
        if entry.is_none() {
            cx.error(
                self.at,
                format!("missing required key `{key}` {}", self.what),
            );
        }
        entry
    }

    /// Reports every key of the table that was never asked for.
    fn finish(self, cx: &mut Cx<'_>) {
        for (key, _) in self.table.iter() {
            if self.known.contains(&key) {
                continue;
            }
            let at = self
                .table
                .key(key)
                .and_then(|k| k.span())
                .map_or(self.at, |s| s.start);
            cx.error(
                at,
                format!(
                    "unknown key `{key}` {}{}",
                    self.what,
                    did_you_mean(key, self.known.iter().copied())
                ),
            );
        }
    }
}

fn describe(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(value) => describe_value(value),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn describe_value(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

/// " (did you mean `x`?)" if some candidate is close to `word`, else "".
fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    suggest(word, candidates)
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

/// The candidate closest to `word` (ignoring ASCII case), if it is close enough to be a typo.
fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word: Vec<char> = word.to_ascii_lowercase().chars().collect();
    candidates
        .into_iter()
        .filter_map(|c| {
            let lower: Vec<char> = c.to_ascii_lowercase().chars().collect();
            let mut d = edit_distance(&word, &lower);
            // An abbreviation ("proc" for "process") counts as a near miss too.
            if word.len() >= 3 && lower.starts_with(&word) {
                d = d.min(1);
            }
            (d <= (lower.len() / 3).max(1)).then_some((d, c))
        })
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and transpositions
/// of adjacent characters each cost 1.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines 1–3: a valid target named `w`; faults can follow from line 4.
    const TARGET: &str = "[[target]]\nname = \"w\"\ncommand = [\"true\"]\n";

    fn parse(text: &str) -> Result<Scenario, Diagnostics> {
        parse_str(Path::new("x.toml"), text)
    }

    fn errors(text: &str) -> Vec<Diagnostic> {
        match parse(text) {
            Ok(scenario) => panic!("expected errors, parsed {scenario:#?}"),
            Err(diags) => diags.0,
        }
    }

    /// The single error in `text`, as (line, col, message).
    fn error(text: &str) -> (usize, usize, String) {
        match &errors(text)[..] {
            [d] => (d.line, d.col, d.message.clone()),
            diags => panic!("expected one error, got {}", Diagnostics(diags.to_vec())),
        }
    }

    /// Asserts that `text` has exactly one error, at `line:col`, whose message contains `fragment`.
    #[track_caller]
    fn assert_error(text: &str, line: usize, col: usize, fragment: &str) {
        let (l, c, message) = error(text);
        assert_eq!((l, c), (line, col), "position of: {message}");
        assert!(
            message.contains(fragment),
            "{message:?} does not contain {fragment:?}"
        );
    }

    #[test]
    fn kprobes_and_crash_are_taken_for_another_kernel_whatever_this_one_has() {
        let text = format!(
            "{TARGET}\n[[fault]]\nname = \"k\"\ntarget = \"w\"\naction = \"crash\"\n\
             trigger = {{ kprobe = \"ksys_write\" }}\n"
        );
        let scenario = parse_str_for(Path::new("x.toml"), &text, KernelFeatures::NotChecked)
            .expect("not checked against this kernel");
        assert_eq!(scenario.faults.len(), 1);
    }

    fn fault(body: &str) -> String {
        format!("{TARGET}[[fault]]\nname = \"f\"\ntarget = \"w\"\n{body}")
    }

    #[test]
    fn full_scenario_parses_to_expected_value() {
        let text = r#"
seed = 42
duration = "30s"

[[target]]
name = "worker"
command = ["python3", "worker.py"]
cwd = "dir"
env = { KEY = "value", OTHER = "2" }

[[target]]
name = "db"
pid = 1234

[[fault]]
name = "kill-on-5th-write"
target = "worker"
action = "kill"
trigger = { syscall = "write" }
nth = 5

[[fault]]
name = "term-db"
target = "db"
action = "signal"
signal = "SIGTERM"
nth = 3
every = 2
after = "1.5s"
count = 4
per = "target"
[fault.trigger]
syscall = "openat"
"#;
        let scenario = parse_str(Path::new("scenarios/full.toml"), text).unwrap();
        let expected = Scenario {
            path: PathBuf::from("scenarios/full.toml"),
            seed: Some(42),
            duration: Some(Duration::from_secs(30)),
            targets: vec![
                Target {
                    name: "worker".into(),
                    source: TargetSource::Command {
                        argv: vec!["python3".into(), "worker.py".into()],
                        cwd: Some(PathBuf::from("scenarios/dir")),
                        env: vec![("KEY".into(), "value".into()), ("OTHER".into(), "2".into())],
                        instances: 1,
                        user: None,
                        group: None,
                    },
                    at: SourcePos { line: 5, col: 1 },
                },
                Target {
                    name: "db".into(),
                    source: TargetSource::Pid(1234),
                    at: SourcePos { line: 11, col: 1 },
                },
            ],
            faults: vec![
                Fault {
                    name: "kill-on-5th-write".into(),
                    target: 0,
                    action: Action::Kill,
                    trigger: Trigger::Syscall {
                        name: "write".into(),
                        nr: libc::SYS_write as u32,
                        port: None,
                    },
                    nth: Some(5),
                    every: None,
                    after: None,
                    count: 1,
                    probability: None,
                    select: Select::All,
                    per: Per::Process,
                    at: SourcePos { line: 15, col: 1 },
                    trigger_at: SourcePos { line: 19, col: 11 },
                    conditions_at: ConditionsAt {
                        nth: Some(SourcePos { line: 20, col: 7 }),
                        ..ConditionsAt::default()
                    },
                },
                Fault {
                    name: "term-db".into(),
                    target: 1,
                    action: Action::Signal(libc::SIGTERM),
                    trigger: Trigger::Syscall {
                        name: "openat".into(),
                        nr: libc::SYS_openat as u32,
                        port: None,
                    },
                    nth: Some(3),
                    every: Some(2),
                    after: Some(Duration::from_millis(1500)),
                    count: 4,
                    probability: None,
                    select: Select::All,
                    per: Per::Target,
                    at: SourcePos { line: 22, col: 1 },
                    trigger_at: SourcePos { line: 32, col: 1 },
                    conditions_at: ConditionsAt {
                        nth: Some(SourcePos { line: 27, col: 7 }),
                        every: Some(SourcePos { line: 28, col: 9 }),
                        after: Some(SourcePos { line: 29, col: 9 }),
                        count: Some(SourcePos { line: 30, col: 9 }),
                    },
                },
            ],
            cluster: Default::default(),
        };
        assert_eq!(scenario, expected);
    }

    #[test]
    fn minimal_scenario_and_other_spellings() {
        // No seed, duration or faults; targets as an inline array; trigger as a dotted key.
        let text = r#"
target = [{ name = "a", command = ["/bin/a"] }, { name = "b", pid = 99 }]
[[fault]]
name = "f"
target = "b"
action = "signal"
signal = 10
trigger.syscall = "read"
"#;
        let scenario = parse(text).unwrap();
        assert_eq!(scenario.seed, None);
        assert_eq!(scenario.duration, None);
        assert_eq!(
            scenario.targets[0].source,
            TargetSource::Command {
                argv: vec!["/bin/a".into()],
                cwd: None,
                env: vec![],
                instances: 1,
                user: None,
                group: None,
            }
        );
        assert_eq!(scenario.targets[1].source, TargetSource::Pid(99));
        let f = &scenario.faults[0];
        assert_eq!(
            (f.target, f.action.clone(), f.count, f.per),
            (1, Action::Signal(10), 1, Per::Process)
        );
        assert_eq!(
            f.trigger,
            Trigger::Syscall {
                name: "read".into(),
                nr: libc::SYS_read as u32,
                port: None,
            }
        );
        assert_eq!((f.nth, f.every, f.after), (None, None, None));

        assert!(parse(TARGET).unwrap().faults.is_empty());
    }

    #[test]
    fn syscall_write_resolves_to_host_number() {
        let scenario = parse(&fault(
            "action = \"kill\"\ntrigger = { syscall = \"write\" }\n",
        ))
        .unwrap();
        assert_eq!(
            scenario.faults[0].trigger,
            Trigger::Syscall {
                name: "write".into(),
                nr: libc::SYS_write as u32,
                port: None,
            }
        );
    }

    #[test]
    fn port_filter_on_address_syscalls_only() {
        let trigger = |t: &str| {
            parse(&fault(&format!("action = \"kill\"\ntrigger = {t}\n")))
                .map(|s| s.faults[0].trigger.clone())
        };
        assert_eq!(
            trigger("{ syscall = \"connect\", port = 2379 }"),
            Ok(Trigger::Syscall {
                name: "connect".into(),
                nr: libc::SYS_connect as u32,
                port: Some(2379)
            })
        );
        assert_error(
            &fault("action = \"kill\"\ntrigger = { syscall = \"write\", port = 80 }\n"),
            8,
            32,
            "`port` filters only `connect`, `bind`, `sendto` triggers",
        );
        assert_error(
            &fault("action = \"kill\"\ntrigger = { syscall = \"bind\", port = 0 }\n"),
            8,
            38,
            "`port`: expected a port number from 1 to 65535",
        );
    }

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.25s", Duration::from_millis(250)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("250us", Duration::from_micros(250)),
            ("100ns", Duration::from_nanos(100)),
            ("1m 30s", Duration::from_secs(90)),
            ("1h30m", Duration::from_secs(5400)),
            (" 2 s ", Duration::from_secs(2)),
            ("0s", Duration::ZERO),
        ];
        for (text, expected) in ok {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
        let bad = [
            ("", "empty"),
            ("   ", "empty"),
            ("-1s", "negative"),
            ("30", "no unit"),
            ("3x", "unknown unit `x`"),
            ("1.2.3s", "not a number"),
            ("1.s", "not a number"),
            ("s", "expected a number"),
            ("1s!", "unexpected `!`"),
            ("99999999999999999999999h", "too large"),
        ];
        for (text, fragment) in bad {
            let err = parse_duration(text).unwrap_err();
            assert!(
                err.contains(fragment),
                "{text:?}: {err:?} does not contain {fragment:?}"
            );
        }
    }

    #[test]
    fn duration_errors_in_file() {
        assert_error(
            &format!("duration = \"0s\"\n{TARGET}"),
            1,
            12,
            "`duration` must be greater than 0",
        );
        assert_error(
            &format!("duration = \"abc\"\n{TARGET}"),
            1,
            12,
            "invalid duration \"abc\" for `duration`",
        );
        assert_error(
            &format!("duration = 30\n{TARGET}"),
            1,
            12,
            "expected a duration string such as \"30s\", found an integer",
        );
        let (line, col, message) = error(&fault(
            "action = \"kill\"\ntrigger = { syscall = \"write\" }\nafter = \"-2s\"\n",
        ));
        assert_eq!((line, col), (9, 9));
        assert!(message.contains("negative"), "{message}");
    }

    #[test]
    fn unknown_keys_with_suggestions() {
        let text = fault("action = \"kill\"\ntrigger = { syscall = \"write\" }\nnht = 5\n");
        let diags = errors(&text);
        assert_eq!(diags.len(), 1);
        assert_eq!(
            diags[0].to_string(),
            "x.toml:9:1: unknown key `nht` in [[fault]] (did you mean `nth`?)"
        );
        assert_error(
            &format!("sed = 1\n{TARGET}"),
            1,
            1,
            "unknown key `sed` at the top level (did you mean `seed`?)",
        );
        assert_error(
            &format!("{TARGET}colour = \"blue\"\n"),
            4,
            1,
            "unknown key `colour` in [[target]]",
        );
        assert!(
            !error(&format!("{TARGET}colour = 1\n"))
                .2
                .contains("did you mean")
        );
        assert_error(
            &fault("action = \"kill\"\ntrigger = { syscall = \"write\", sycall = 1 }\n"),
            8,
            32,
            "unknown key `sycall` in `trigger` (did you mean `syscall`?)",
        );
        assert_error(
            &format!("[[targets]]\n{TARGET}"),
            1,
            3,
            "unknown key `targets` at the top level (did you mean `target`?)",
        );
    }

    #[test]
    fn wrong_types() {
        let text = fault("action = \"kill\"\ntrigger = { syscall = \"write\" }\nnth = \"5\"\n");
        assert_error(&text, 9, 7, "`nth`: expected an integer, found a string");
        assert_error(
            &format!("seed = 1.5\n{TARGET}"),
            1,
            8,
            "`seed`: expected an integer, found a float",
        );
        assert_error(
            "[[target]]\nname = \"w\"\ncommand = \"true\"\n",
            3,
            11,
            "`command`: expected an array of strings",
        );
        assert_error(
            "[[target]]\nname = \"w\"\ncommand = [\"a\", 1]\n",
            3,
            17,
            "`command[1]`: expected a string, found an integer",
        );
        assert_error(
            "[[target]]\nname = \"w\"\ncommand = [\"a\"]\nenv = { A = true }\n",
            4,
            13,
            "`env.A`: expected a string, found a boolean",
        );
        assert_error(
            &fault("action = \"kill\"\ntrigger = \"write\"\n"),
            8,
            11,
            "`trigger`: expected a table",
        );
        assert_error(
            "[target]\nname = \"w\"\ncommand = [\"a\"]\n",
            1,
            1,
            "`target`: expected an array of tables, written [[target]], found a table",
        );
        assert_error(&format!("{TARGET}name2 = 1\n"), 4, 1, "unknown key `name2`");
    }

    #[test]
    fn missing_required_keys_at_table_header() {
        let text = format!("{TARGET}\n[[fault]]\nname = \"f\"\n");
        let diags = errors(&text);
        let got: Vec<_> = diags
            .iter()
            .map(|d| (d.line, d.col, d.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (5, 1, "missing required key `target` in [[fault]]"),
                (5, 1, "missing required key `action` in [[fault]]"),
                (5, 1, "missing required key `trigger` in [[fault]]"),
            ]
        );
        assert_error(
            "[[target]]\ncommand = [\"a\"]\n",
            1,
            1,
            "missing required key `name` in [[target]]",
        );
        assert_error(
            "[[target]]\nname = \"w\"\n",
            1,
            1,
            "missing `command` or `pid` in [[target]]",
        );
        assert_error(
            &fault("action = \"kill\"\n[fault.trigger]\n"),
            8,
            1,
            "`trigger` needs exactly one of `syscall`, `at`, `after`, `tracepoint`",
        );
        assert_error(
            &fault("action = \"kill\"\ntrigger = {}\n"),
            8,
            11,
            "`trigger` needs exactly one of `syscall`, `at`, `after`, `tracepoint`",
        );
    }

    #[test]
    fn duplicate_and_empty_names() {
        assert_error(
            &format!("{TARGET}{TARGET}"),
            5,
            8,
            "duplicate target name `w` (first defined on line 2)",
        );
        let f = "[[fault]]\nname = \"f\"\ntarget = \"w\"\naction = \"kill\"\ntrigger.syscall = \"read\"\n";
        assert_error(
            &format!("{TARGET}{f}{f}"),
            10,
            8,
            "duplicate fault name `f` (first defined on line 5)",
        );
        assert_error(
            "[[target]]\nname = \"\"\npid = 5\n",
            2,
            8,
            "target `name` must not be empty",
        );
    }

    #[test]
    fn at_least_one_target() {
        assert_error("seed = 1\n", 1, 1, "no [[target]] defined");
        assert_error("", 1, 1, "no [[target]] defined");
        assert_error("target = []\n", 1, 10, "no [[target]] defined");
    }

    #[test]
    fn undefined_target_lists_defined_names() {
        let text = format!(
            "{TARGET}[[target]]\nname = \"db\"\npid = 42\n[[fault]]\nname = \"f\"\ntarget = \"wx\"\n\
             action = \"kill\"\ntrigger.syscall = \"read\"\n"
        );
        assert_error(
            &text,
            9,
            10,
            "undefined target `wx` (defined targets: `w`, `db`)",
        );
    }

    #[test]
    fn nth_every_count_ranges() {
        let base = "action = \"kill\"\ntrigger = { syscall = \"write\" }\n";
        assert_error(&fault(&format!("{base}nth = 0\n")), 9, 7, "nth is 1-based");
        assert_error(
            &fault(&format!("{base}nth = -2\n")),
            9,
            7,
            "`nth` must be at least 1, found -2",
        );
        assert_error(
            &fault(&format!("{base}every = 0\n")),
            9,
            9,
            "`every` must be at least 1, found 0",
        );
        assert_error(
            &fault(&format!("{base}count = 0\n")),
            9,
            9,
            "`count` must be at least 1, found 0",
        );
        assert_error(
            &format!("seed = -1\n{TARGET}"),
            1,
            8,
            "`seed` must not be negative, found -1",
        );
        assert_error(
            &fault(&format!("{base}per = \"proc\"\n")),
            9,
            7,
            "(did you mean `process`?)",
        );
    }

    #[test]
    fn signal_rules() {
        let signal = |value: &str| {
            parse(&fault(&format!(
                "action = \"signal\"\nsignal = {value}\ntrigger.syscall = \"read\"\n"
            )))
            .map(|s| s.faults[0].action.clone())
        };
        for name in ["\"SIGTERM\"", "\"sigterm\"", "\"TERM\"", "\"term\"", "15"] {
            assert_eq!(signal(name), Ok(Action::Signal(libc::SIGTERM)), "{name}");
        }
        assert_eq!(signal("\"SIGUSR1\""), Ok(Action::Signal(libc::SIGUSR1)));
        assert_eq!(signal("64"), Ok(Action::Signal(64)));

        let with = |value: &str| {
            error(&fault(&format!(
                "action = \"signal\"\nsignal = {value}\n\
                                                       trigger.syscall = \"read\"\n"
            )))
        };
        assert_eq!(with("0").2, "`signal` must be between 1 and 64, found 0");
        assert_eq!((with("65").0, with("65").1), (8, 10));
        assert!(with("\"SIGTERN\"").2.contains("unknown signal `SIGTERN`"));
        assert!(with("\"SIGTERN\"").2.ends_with("(did you mean `SIGTERM`?)"));
        assert!(with("1.0").2.contains("found a float"));

        assert_error(
            &fault("action = \"signal\"\ntrigger.syscall = \"read\"\n"),
            4,
            1,
            "missing required key `signal` in [[fault]]",
        );
        assert_error(
            &fault("action = \"kill\"\nsignal = \"SIGTERM\"\ntrigger.syscall = \"read\"\n"),
            8,
            1,
            "`signal` cannot be used with `action = \"kill\"`",
        );
    }

    #[test]
    fn crash_stop_partition_and_unknown_actions() {
        let action = |body: &str| parse(&fault(body)).map(|s| s.faults[0].action.clone());
        assert_eq!(
            action("action = \"crash\"\nrecover_after = \"2s\"\ntrigger.syscall = \"read\"\n"),
            Ok(Action::Crash {
                recover_after: Some(Duration::from_secs(2))
            })
        );
        assert_eq!(
            action("action = \"stop\"\ntrigger.syscall = \"read\"\n"),
            Ok(Action::Stop { resume_after: None })
        );
        assert_eq!(
            action(
                "action = \"partition\"\nduration = \"3s\"\nports = [80]\ntrigger.syscall = \"read\"\n"
            ),
            Ok(Action::Partition {
                duration: Some(Duration::from_secs(3)),
                ports: vec![80]
            })
        );
        assert_error(
            &fault("action = \"kill\"\nrecover_after = \"2s\"\ntrigger.syscall = \"read\"\n"),
            8,
            1,
            "`recover_after` only applies to `action = \"crash\"`, not `kill`",
        );
        assert_error(
            &fault("action = \"partition\"\nports = [0]\ntrigger.syscall = \"read\"\n"),
            8,
            10,
            "`ports[0]`: expected a port number from 1 to 65535",
        );
        assert_error(
            &fault("action = \"kil\"\ntrigger.syscall = \"read\"\n"),
            7,
            10,
            "unknown action `kil`: expected `kill`, `signal`, `crash`, `stop`, `partition` or `error` (did you mean `kill`?)",
        );
    }

    #[test]
    fn error_action_errno_retval_and_its_paths() {
        let action = |body: &str| parse(&fault(body)).map(|s| s.faults[0].action.clone());
        let returns = |body: &str| match action(body) {
            Ok(Action::Error { returns, .. }) => Ok(returns),
            other => Err(format!("{other:?}")),
        };
        let connect = "action = \"error\"\ntrigger.syscall = \"connect\"\n";
        assert_eq!(
            returns(&format!("{connect}errno = \"ECONNREFUSED\"\n")),
            Ok(Returns::Errno(libc::ECONNREFUSED))
        );
        assert_eq!(
            returns(&format!("{connect}errno = 5\n")),
            Ok(Returns::Errno(libc::EIO))
        );
        assert_eq!(Returns::Errno(libc::EIO).to_string(), "EIO");
        assert_eq!(Returns::Errno(4000).to_string(), "errno 4000");
        let at = |body: &str| {
            let e = error(&fault(body));
            (e.0, e.1, e.2)
        };
        let (_, _, message) = at(&format!("{connect}errno = \"ECONREFUSED\"\n"));
        assert!(
            message.contains("unknown errno `ECONREFUSED`") && message.contains("`ECONNREFUSED`"),
            "{message}"
        );
        assert_eq!(
            at(&format!("{connect}errno = 0\n")).2,
            "`errno` must be between 1 and 4095, found 0"
        );
        assert!(
            at(connect)
                .2
                .starts_with("missing required key `errno` in [[fault]]"),
        );
        assert!(
            at(&format!("{connect}errno = 5\nretval = 0\n"))
                .2
                .starts_with("`errno` and `retval` cannot both be given")
        );
        assert!(
            at("action = \"kill\"\nerrno = 5\ntrigger.syscall = \"connect\"\n")
                .2
                .starts_with("`errno` only applies to `action = \"error\"`, not `kill`")
        );
        assert!(
            at("action = \"error\"\nerrno = 5\ntrigger = { at = \"1s\" }\n")
                .2
                .contains("needs a syscall trigger")
        );
        // A cgroup hook cannot return a value: refused at `retval`, on line 9.
        let (line, _, message) = at(&format!("{connect}retval = 0\n"));
        assert_eq!(line, 9, "{message}");
        assert!(
            message.contains("return -1 with an errno but not another value"),
            "{message}"
        );
        // `write` of a spawned target: the seccomp path; `retval` is fine there.
        let write = "action = \"error\"\ntrigger = { syscall = \"write\" }\n";
        assert_eq!(
            returns(&format!("{write}retval = 0\n")),
            Ok(Returns::Value(0))
        );
        // Of an adopted process, on a kernel without kprobe override (this one): refused at
        // the trigger.
        let adopted = format!(
            "[[target]]\nname = \"w\"\npid = 4242\n[[fault]]\nname = \"f\"\ntarget = \"w\"\n\
             {write}errno = 5\n"
        );
        if error_paths::refusal("write", false, false).is_some() {
            assert_error(&adopted, 8, 11, "fij cannot fail `write` of this target");
        }
    }

    #[test]
    fn command_pid_cwd_env_rules() {
        assert_error(
            "[[target]]\nname = \"w\"\ncommand = [\"a\"]\npid = 5\n",
            4,
            1,
            "`command` and `pid` cannot both be given",
        );
        assert_error(
            "[[target]]\nname = \"w\"\ncommand = []\n",
            3,
            11,
            "`command` must not be empty",
        );
        assert_error(
            "[[target]]\nname = \"w\"\ncommand = [\"\"]\n",
            3,
            12,
            "`command[0]` (the program to run)",
        );
        assert_error(
            "[[target]]\nname = \"w\"\npid = 1\n",
            3,
            7,
            "`pid` must be greater than 1, found 1",
        );
        assert_error(
            "[[target]]\nname = \"w\"\npid = -5\n",
            3,
            7,
            "`pid` must be greater than 1",
        );
        assert_error(
            "[[target]]\nname = \"w\"\npid = 99999999\n",
            3,
            7,
            "`pid` must be at most 4194304",
        );
        assert_error(
            "[[target]]\nname = \"w\"\npid = 7\ncwd = \"/tmp\"\n",
            4,
            1,
            "`cwd` is only allowed with `command`",
        );
        assert_error(
            "[[target]]\nname = \"w\"\npid = 7\nenv = { A = \"1\" }\n",
            4,
            1,
            "`env` is only allowed with `command`",
        );
        assert_error(
            "[[target]]\nname = \"w\"\ncommand = [\"a\"]\nenv = { \"A=B\" = \"1\" }\n",
            4,
            9,
            "invalid environment variable name `A=B`",
        );
        // An absolute cwd stays as is; a relative one is relative to the scenario's directory.
        let cwd =
            |text: &str| match parse_str(Path::new("/s/x.toml"), text).unwrap().targets[0].source {
                TargetSource::Command { ref cwd, .. } => cwd.clone(),
                _ => unreachable!(),
            };
        assert_eq!(
            cwd(&format!("{TARGET}cwd = \"/abs\"\n")),
            Some(PathBuf::from("/abs"))
        );
        assert_eq!(
            cwd(&format!("{TARGET}cwd = \"../d\"\n")),
            Some(PathBuf::from("/s/../d"))
        );
    }

    #[test]
    fn uprobe_symbols_are_looked_up_in_the_elf_file() {
        let exe = std::env::current_exe().unwrap();
        assert_eq!(elf_has_symbol(&exe, "main"), Ok(()));
        let err = elf_has_symbol(&exe, "no_such_symbol_fij").unwrap_err();
        assert!(
            err.starts_with("no symbol `no_such_symbol_fij` in "),
            "{err}"
        );
        let err = elf_has_symbol(Path::new("/etc/hostname"), "main").unwrap_err();
        assert!(err.contains("not an ELF file"), "{err}");
    }

    #[test]
    fn user_and_group_of_a_command() {
        let ids =
            |text: &str| match parse_str(Path::new("/s/x.toml"), text).unwrap().targets[0].source {
                TargetSource::Command { user, group, .. } => (user, group),
                _ => unreachable!(),
            };
        // A user's primary group comes with it; `group` overrides it; numbers are taken as is.
        assert_eq!(
            ids(&format!("{TARGET}user = \"root\"\n")),
            (Some(0), Some(0))
        );
        assert_eq!(
            ids(&format!("{TARGET}user = \"root\"\ngroup = 65534\n")),
            (Some(0), Some(65534))
        );
        assert_eq!(ids(&format!("{TARGET}group = \"root\"\n")), (None, Some(0)));
        assert_eq!(
            ids(&format!("{TARGET}user = 4321\n")),
            (Some(4321), Some(4321))
        );
        assert_eq!(ids(TARGET), (None, None));
        assert_error(
            "[[target]]\nname = \"w\"\ncommand = [\"a\"]\nuser = \"no-such-user-fij\"\n",
            4,
            8,
            "unknown user `no-such-user-fij`: not in this system's passwd database",
        );
        assert_error(
            "[[target]]\nname = \"w\"\ncommand = [\"a\"]\ngroup = \"no-such-group-fij\"\n",
            4,
            9,
            "unknown group `no-such-group-fij`",
        );
        assert_error(
            "[[target]]\nname = \"w\"\ncommand = [\"a\"]\nuser = -1\n",
            4,
            8,
            "`user` -1 is not a valid user id",
        );
        assert_error(
            "[[target]]\nname = \"w\"\npid = 7\nuser = \"root\"\n",
            4,
            1,
            "`user` is only allowed with `command`",
        );
        assert_error(
            "[[target]]\nname = \"w\"\ncomm = \"x\"\ngroup = 0\n",
            4,
            1,
            "`group` cannot be combined with `comm`",
        );
    }

    #[test]
    fn unknown_syscall_at_value_position() {
        let (line, col, message) = error(&fault(
            "action = \"kill\"\ntrigger = { syscall = \"wrte\" }\n",
        ));
        assert_eq!((line, col), (8, 23));
        assert!(message.starts_with("unknown syscall `wrte`"), "{message}");
        assert!(message.ends_with("(did you mean `write`?)"), "{message}");
    }

    #[test]
    fn toml_syntax_error_stops_at_its_position() {
        let diags = errors("seed = 1\n[[target]\nname = \"w\"\nbogus = 1\n");
        assert_eq!(diags.len(), 1);
        assert_eq!((diags[0].line, diags[0].col), (2, 9));
        assert!(
            diags[0].message.starts_with("TOML syntax error: "),
            "{}",
            diags[0].message
        );
        assert!(!diags[0].message.contains('\n'));

        let diags = errors("seed = 1\nseed = 2\n");
        assert_eq!((diags.len(), diags[0].line, diags[0].col), (1, 2, 1));
        assert!(
            diags[0].message.contains("duplicate key `seed`"),
            "{}",
            diags[0].message
        );
    }

    #[test]
    fn three_separate_errors_are_all_reported() {
        let text = format!(
            "seed = -3\n{TARGET}[[fault]]\nname = \"f\"\ntarget = \"nope\"\naction = \"kill\"\n\
             trigger = {{ syscall = \"write\" }}\nevry = 2\n"
        );
        let diags = errors(&text);
        let got: Vec<_> = diags.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            got,
            [
                "x.toml:1:8: `seed` must not be negative, found -3",
                "x.toml:7:10: undefined target `nope` (defined targets: `w`)",
                "x.toml:10:1: unknown key `evry` in [[fault]] (did you mean `every`?)",
            ]
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // `5` is the 17th character of line 3 but its 18th byte.
        assert_error(
            "[[target]]\nname = \"é\"\ncommand = [\"é\", 5]\n",
            3,
            17,
            "`command[1]`",
        );
    }

    #[test]
    fn unreadable_file_is_one_diagnostic_at_1_1() {
        let path = Path::new("/nonexistent/fij-scenario.toml");
        let diags = load(path).unwrap_err();
        assert_eq!(diags.0.len(), 1);
        let d = &diags.0[0];
        assert_eq!((d.file.as_path(), d.line, d.col), (path, 1, 1));
        assert!(
            d.message.starts_with("cannot read the scenario file: "),
            "{}",
            d.message
        );
        assert!(d.message.contains("No such file"), "{}", d.message);
    }

    #[test]
    fn display_formats() {
        let d = |line, message: &str| Diagnostic {
            file: PathBuf::from("s/x.toml"),
            line,
            col: 3,
            message: message.into(),
        };
        assert_eq!(d(7, "boom").to_string(), "s/x.toml:7:3: boom");
        let all = Diagnostics(vec![d(1, "a"), d(2, "b")]);
        assert_eq!(all.to_string(), "s/x.toml:1:3: a\ns/x.toml:2:3: b");
        let _: &dyn std::error::Error = &all;
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("nht", ["nth", "every"]), Some("nth"));
        assert_eq!(suggest("NTH", ["nth"]), Some("nth"));
        assert_eq!(suggest("xyz", ["nth", "every"]), None);
        assert_eq!(suggest("proc", ["process", "target"]), Some("process"));
    }
}
