//! The validated scenario: what `fij run` and `fij plan` work from. Everything here has been
//! checked against the scenario file (see `parse.rs`); nothing here refers back to TOML.
use std::{path::PathBuf, time::Duration};

#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The file it was read from, as given on the command line.
    pub path: PathBuf,
    /// `seed`: absent means fij picks one (and prints and logs it).
    pub seed: Option<u64>,
    /// `duration`: the campaign ends after this long even if targets are still running.
    pub duration: Option<Duration>,
    pub targets: Vec<Target>,
    pub faults: Vec<Fault>,
    /// `[[node]]`, `node = …` on targets, `[[node_fault]]`, `start_at`: a campaign across
    /// machines (docs/multi-node.md). Empty for a campaign on one machine.
    pub cluster: Cluster,
}

impl Scenario {
    /// The name of target `idx` (as the kernel reports it), or "?" for an unknown index.
    pub fn target_name(&self, idx: u32) -> &str {
        self.targets
            .get(idx as usize)
            .map_or("?", |t| t.name.as_str())
    }
}

/// Where something was written in the scenario file: 1-based line and column (in characters).
/// Later stages (the compile stage, the backends) report what they refuse at the key's position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourcePos {
    pub line: usize,
    pub col: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// `name`: unique among targets.
    pub name: String,
    pub source: TargetSource,
    /// The `[[target]]` table's header.
    pub at: SourcePos,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TargetSource {
    /// `command = [..]` (non-empty), with optional `cwd` and `env` (a table of strings), spawned
    /// `instances` times (default 1). Relative `cwd` is relative to the scenario file's directory.
    Command {
        argv: Vec<String>,
        cwd: Option<PathBuf>,
        env: Vec<(String, String)>,
        instances: u32,
        /// `user` / `group`, resolved to ids: the command runs with these (supplementary
        /// groups cleared); None keeps fij's.
        user: Option<u32>,
        group: Option<u32>,
    },
    /// `pid = N`: adopt a running process (N > 1).
    Pid(u32),
    /// `comm = "name"`, `exe = "/path"`, `uid = N`, `cgroup = "/sys/fs/cgroup/…"`: every process
    /// that matches, now or later (on exec, or when forked by a matching parent), and its
    /// descendants.
    Selector(Selector),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The task name (comm, at most 15 bytes), as set by exec.
    Comm(String),
    /// The executable's absolute path, as passed to exec (at most 127 bytes).
    Exe(PathBuf),
    Uid(u32),
    /// A cgroup v2 directory, or its id.
    Cgroup(CgroupRef),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupRef {
    Path(PathBuf),
    Id(u64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// `name`: unique among faults.
    pub name: String,
    /// `target`: index into `Scenario::targets`.
    pub target: usize,
    pub action: Action,
    pub trigger: Trigger,
    /// `nth`: fire on this hit (1-based, ≥ 1).
    pub nth: Option<u64>,
    /// `every`: fire every this many hits (≥ 1); with `nth`, on nth, nth+every, …
    pub every: Option<u64>,
    /// `after`: only hits at least this long after the campaign start are counted.
    pub after: Option<Duration>,
    /// `count`: at most this many injections (≥ 1); default 1.
    pub count: u64,
    /// `probability`: an eligible hit fires when its seeded draw passes (0 < p ≤ 1).
    pub probability: Option<f64>,
    /// `select`: the instances of the target that take part.
    pub select: Select,
    /// `per`: "process" (default) or "target".
    pub per: Per,
    /// The `[[fault]]` table's header.
    pub at: SourcePos,
    /// The `trigger` value.
    pub trigger_at: SourcePos,
    /// The values of the hit-condition keys given (`nth`, `every`, `after`, `count`): a backend
    /// that cannot hold a value refuses it there.
    pub conditions_at: ConditionsAt,
}

/// Where each hit-condition key of a fault was written (None: not given).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConditionsAt {
    pub nth: Option<SourcePos>,
    pub every: Option<SourcePos>,
    pub after: Option<SourcePos>,
    pub count: Option<SourcePos>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `action = "kill"`: SIGKILL; the OS then closes the victim's connections as usual.
    Kill,
    /// `action = "signal"` with `signal = "SIGTERM"` (name with or without SIG, or a number).
    Signal(i32),
    /// `action = "crash"`: SIGKILL, and the victim's sockets go silent (no FIN, RST or ICMP
    /// leaves for them, nothing reaches them) until the campaign ends or `recover_after`.
    Crash { recover_after: Option<Duration> },
    /// `action = "stop"`: SIGSTOP; SIGCONT after `resume_after` (else the process stays stopped
    /// until the campaign ends, when fij resumes it).
    Stop { resume_after: Option<Duration> },
    /// `action = "partition"`: nothing is signalled; the process's connections (those on
    /// `ports`, when given) go silent both ways for `duration` (else until the campaign ends).
    Partition {
        duration: Option<Duration>,
        ports: Vec<u16>,
    },
    /// `action = "error"`: nothing is signalled; the call that is the hit fails, with `errno`
    /// (a name such as "ECONNREFUSED" or a number), or returns `retval` without running.
    Error { returns: Returns, at: SourcePos },
}

/// What a call failed by an `error` fault returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returns {
    /// `errno = "EIO"`: -1 with this errno (1..=4095).
    Errno(i32),
    /// `retval = N`: this value, the call not run (the seccomp path only).
    Value(i64),
}

impl std::fmt::Display for Returns {
    /// `ECONNREFUSED`, `errno 531` (a number without a name), `retval 0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Returns::Errno(n) => match syscalls::Errno::new(*n).name() {
                Some(name) => f.write_str(name),
                None => write!(f, "errno {n}"),
            },
            Returns::Value(v) => write!(f, "retval {v}"),
        }
    }
}

impl Action {
    /// The signal sent in kernel, or 0 for none (`partition`).
    pub fn signal(&self) -> i32 {
        match self {
            Action::Kill | Action::Crash { .. } => libc::SIGKILL,
            Action::Signal(sig) => *sig,
            Action::Stop { .. } => libc::SIGSTOP,
            Action::Partition { .. } | Action::Error { .. } => 0,
        }
    }
}

impl TargetSource {
    /// How many instances the target has: `instances` of a command, 1 otherwise.
    pub fn instances(&self) -> u32 {
        match self {
            TargetSource::Command { instances, .. } => *instances,
            TargetSource::Pid(_) | TargetSource::Selector(_) => 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// `trigger = { syscall = "write" }`: the name as in the host's syscall table, and its number;
    /// `port` (connect, bind, sendto): only calls whose address names this port are hits.
    Syscall {
        name: String,
        nr: u32,
        port: Option<u16>,
    },
    /// `trigger = { tracepoint = "sched:sched_process_fork" }`: a hit is the tracepoint firing
    /// in the context of a target process.
    Tracepoint { category: String, name: String },
    /// `trigger = { uprobe = "PATH:SYMBOL" }` (and uretprobe, kprobe, kretprobe).
    Probe(Probe),
    /// `trigger = { at = "5s" }` or `trigger = { after = { exponential = { mean = "10s" } } }`:
    /// each selected instance fails once, at a time drawn for it from the seed.
    Time(Schedule),
}

impl Trigger {
    /// How the trigger reads in logs and plans: `write`, `sched:sched_switch`, `uprobe /bin/x:f`.
    pub fn describe(&self) -> String {
        match self {
            Trigger::Syscall {
                name, port: None, ..
            } => name.clone(),
            Trigger::Syscall {
                name,
                port: Some(port),
                ..
            } => format!("{name} port {port}"),
            Trigger::Tracepoint { category, name } => format!("{category}:{name}"),
            Trigger::Probe(p) => p.to_string(),
            Trigger::Time(schedule) => schedule.to_string(),
        }
    }
}

/// A uprobe, uretprobe, kprobe or kretprobe.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Probe {
    pub kind: ProbeKind,
    /// The binary or library (uprobes): a path, or a name like `libc` resolved as aya does.
    /// Empty for kprobes.
    pub binary: String,
    pub location: ProbeLocation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Uprobe,
    Uretprobe,
    Kprobe,
    Kretprobe,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProbeLocation {
    /// `SYMBOL`
    Symbol(String),
    /// `SYMBOL+OFFSET`
    SymbolOffset(String, u64),
    /// `0xADDR`: an offset in the file (uprobes only).
    Address(u64),
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            ProbeKind::Uprobe => "uprobe",
            ProbeKind::Uretprobe => "uretprobe",
            ProbeKind::Kprobe => "kprobe",
            ProbeKind::Kretprobe => "kretprobe",
        };
        let location = match &self.location {
            ProbeLocation::Symbol(s) => s.clone(),
            ProbeLocation::SymbolOffset(s, o) => format!("{s}+{o:#x}"),
            ProbeLocation::Address(a) => format!("{a:#x}"),
        };
        match self.binary.is_empty() {
            true => write!(f, "{kind} {location}"),
            false => write!(f, "{kind} {}:{location}", self.binary),
        }
    }
}

/// When a time-triggered fault falls due for an instance, counted from the campaign start.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `at = "5s"`.
    At(Duration),
    /// `after = { exponential = { mean = "10s" } }`.
    Exponential { mean: Duration },
    /// `after = { weibull = { scale = "10s", shape = 1.5 } }`.
    Weibull { scale: Duration, shape: f64 },
    /// `after = { uniform = { min = "1s", max = "10s" } }`.
    Uniform { min: Duration, max: Duration },
}

impl std::fmt::Display for Schedule {
    /// As written in the scenario: `at 5s`, `after exponential(mean 10s)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::At(at) => write!(f, "at {at:?}"),
            Schedule::Exponential { mean } => write!(f, "after exponential(mean {mean:?})"),
            Schedule::Weibull { scale, shape } => {
                write!(f, "after weibull(scale {scale:?}, shape {shape})")
            }
            Schedule::Uniform { min, max } => write!(f, "after uniform({min:?}..{max:?})"),
        }
    }
}

/// `select`: which instances of the target take part in a fault, drawn from the seed.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Select {
    /// `select = "all"` (default).
    #[default]
    All,
    /// `select = "one"`.
    One,
    /// `select = { fixed = N }`.
    Fixed(u32),
    /// `select = { percent = P }`: ⌈P % of the instances⌉, at least one.
    Percent(f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Per {
    #[default]
    Process,
    Target,
}

/// The multi-node part of a scenario: every node runs the same file, acts on its own targets,
/// and computes every decision from the seed alone (docs/multi-node.md).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cluster {
    /// `[[node]]`, in file order.
    pub nodes: Vec<Node>,
    /// The node of each target (`node = "…"`), by target index; None when the scenario has no
    /// `[[node]]` (then every target is local).
    pub target_node: Vec<Option<usize>>,
    /// `[[node_fault]]`, in file order: node fault id `i` is the `i`-th.
    pub node_faults: Vec<NodeFault>,
    /// `start_at`: when the campaign's time 0 is, on every node's wall clock.
    pub start_at: Option<StartAt>,
}

impl Cluster {
    /// Whether target `target_idx` runs on node `node` (always, without `[[node]]`).
    pub fn is_on(&self, target_idx: usize, node: Option<usize>) -> bool {
        match (self.target_node.get(target_idx).copied().flatten(), node) {
            (Some(of_target), Some(node)) => of_target == node,
            _ => self.nodes.is_empty(),
        }
    }

    /// The index of the node named `name`.
    pub fn node(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}

/// `[[node]]`: one machine (or network namespace) of the campaign.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// `name`: unique among nodes; what `--node`/`FIJ_NODE` name.
    pub name: String,
    /// `addresses`: the node's IP addresses (a partition drops traffic to and from them, a node
    /// crash silences them).
    pub addresses: Vec<std::net::IpAddr>,
    /// `netns`: the network namespace (under /run/netns) that is this node on a test machine
    /// (parsed, not used yet: docs/multi-node.md).
    pub netns: Option<String>,
    pub at: SourcePos,
}

/// `[[node_fault]]`: a failure of whole nodes, at a time drawn from the seed.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFault {
    pub name: String,
    pub action: NodeAction,
    /// `nodes`: the candidate nodes, by index, in file order.
    pub nodes: Vec<usize>,
    /// `select`: which of the candidates fail (default: all).
    pub select: Select,
    /// `trigger = { at = … }` or `{ after = … }`: when each selected node fails.
    pub schedule: Schedule,
    pub at: SourcePos,
    pub trigger_at: SourcePos,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeAction {
    /// `action = "crash"` (a node crash): every target process of the node is crashed at once
    /// (fij's `crash`: SIGKILL, nothing it owned speaks again), and a `netns` node's links go
    /// down, until `recover_after` or the campaign's end.
    Crash { recover_after: Option<Duration> },
    /// `action = "kill"`: every target process of the node is SIGKILLed at once; the OS closes
    /// their connections (peers see resets and EOFs), as when every process is killed.
    Kill,
    /// `action = "partition"` (a node partition): the selected nodes are cut off from the nodes
    /// in `from` (default: every other node) both ways for `duration` (else until the end).
    Partition {
        from: Vec<usize>,
        duration: Option<Duration>,
    },
}

impl NodeAction {
    pub fn name(&self) -> &'static str {
        match self {
            NodeAction::Crash { .. } => "crash",
            NodeAction::Kill => "kill",
            NodeAction::Partition { .. } => "partition",
        }
    }
}

/// `start_at`: the wall-clock moment that is time 0 of the campaign on every node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StartAt {
    /// `start_at = "2026-12-04T19:00:00Z"` (RFC 3339).
    Wall(std::time::SystemTime),
    /// `start_at = "next 10s"`: the next whole multiple of this period since the Unix epoch
    /// (at least a second after fij reads the scenario), the same on every node started within
    /// one period.
    Next(Duration),
}
