//! `action = "error"`: which kernel mechanism can fail which call, on this machine. One table
//! for the parser (which refuses, at the trigger, a call no path can fail), the compile stage
//! (which hook a fault's hits are counted at), `fij doctor` and the docs.
//!
//! - **cgroup-v2 socket hooks** (`bpf_set_retval`, kernel ≥ 5.18): the kernel decides in the
//!   caller's context, for any target. Attached to the cgroup-v2 root, so every process passes
//!   through them; the program leaves at once for a process outside the target set.
//! - **seccomp user notification** (`crate::seccomp`): any syscall, for targets fij spawns
//!   (the filter is installed before their exec); each listed call of a target is a round
//!   trip to fij.
//! - **BPF LSM** (`CONFIG_BPF_LSM`, `bpf` among the kernel's active LSMs): for adopted and
//!   selected targets (no filter can be put into a running process), the calls that pass an LSM
//!   hook before doing anything: the read/write family (`file_permission`) and the open family
//!   (`file_open`). The program runs for every process's calls through that hook and leaves at
//!   once for non-targets; for a target it evaluates the faults on the syscall the task is in.
//! - **bpf_override_return** (kprobes with `CONFIG_BPF_KPROBE_OVERRIDE`) and **fmod_ret** (BPF
//!   trampolines) would fail any syscall; fij has no program for them yet, and `fij doctor`
//!   says whether this kernel has them.
use fij_common::{
    ERRNO_HOOK_BIND, ERRNO_HOOK_CONNECT, ERRNO_HOOK_GETSOCKOPT, ERRNO_HOOK_SETSOCKOPT,
    ERRNO_HOOK_SOCKET, ERRNO_HOOK_UDP_SEND,
};

/// Syscalls a cgroup-v2 hook can fail, with the hook (`ERRNO_HOOK_*`) and what one hit is.
pub const CGROUP_CALLS: [(&str, u32, &str); 7] = [
    (
        "connect",
        ERRNO_HOOK_CONNECT,
        "a connect(2) of an AF_INET/AF_INET6 socket that is not yet connecting",
    ),
    (
        "bind",
        ERRNO_HOOK_BIND,
        "a bind(2) of an AF_INET/AF_INET6 socket",
    ),
    (
        "sendto",
        ERRNO_HOOK_UDP_SEND,
        "a UDP datagram sent with an explicit address (sendto, sendmsg, each message of sendmmsg)",
    ),
    (
        "sendmsg",
        ERRNO_HOOK_UDP_SEND,
        "a UDP datagram sent with an explicit address (sendto, sendmsg, each message of sendmmsg)",
    ),
    ("getsockopt", ERRNO_HOOK_GETSOCKOPT, "a getsockopt(2)"),
    ("setsockopt", ERRNO_HOOK_SETSOCKOPT, "a setsockopt(2)"),
    (
        "socket",
        ERRNO_HOOK_SOCKET,
        "a socket(2) of family AF_INET or AF_INET6",
    ),
];

/// The cgroup hook (`ERRNO_HOOK_*`) that fails `syscall`, if one does.
pub fn cgroup_hook(syscall: &str) -> Option<u32> {
    CGROUP_CALLS
        .iter()
        .find(|(name, _, _)| *name == syscall)
        .map(|(_, hook, _)| *hook)
}

/// Syscalls a BPF LSM hook can fail, with the hook (its name in the kernel, `bpf_lsm_<hook>`).
pub const LSM_CALLS: [(&str, &str); 14] = [
    ("read", "file_permission"),
    ("write", "file_permission"),
    ("readv", "file_permission"),
    ("writev", "file_permission"),
    ("pread64", "file_permission"),
    ("pwrite64", "file_permission"),
    ("preadv", "file_permission"),
    ("pwritev", "file_permission"),
    ("preadv2", "file_permission"),
    ("pwritev2", "file_permission"),
    ("open", "file_open"),
    ("openat", "file_open"),
    ("openat2", "file_open"),
    ("creat", "file_open"),
];

/// The BPF LSM hook that fails `syscall`, if one does.
pub fn lsm_hook(syscall: &str) -> Option<&'static str> {
    LSM_CALLS
        .iter()
        .find(|(name, _)| *name == syscall)
        .map(|(_, hook)| *hook)
}

/// The mechanism that fails a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A cgroup-v2 hook (`ERRNO_HOOK_*`), for any target.
    Cgroup(u32),
    /// seccomp user notification, for a target fij spawns.
    Seccomp,
    /// A BPF LSM hook, for an adopted or selected target (where the kernel has BPF LSM).
    Lsm(&'static str),
}

/// Which mechanism fails `syscall` of a target (`spawned`: a `command` target), whatever
/// this kernel has (the parser refuses a route it lacks, see [`refusal`]). Pure.
pub fn route(syscall: &str, spawned: bool) -> Option<Route> {
    if let Some(hook) = cgroup_hook(syscall) {
        return Some(Route::Cgroup(hook));
    }
    if spawned {
        return Some(Route::Seccomp);
    }
    lsm_hook(syscall).map(Route::Lsm)
}

/// Why fij cannot fail `syscall` on this machine (None: a path exists). `retval`: the fault
/// asks for a return value rather than an errno; `spawned`: its target is a command fij
/// spawns, whose calls the seccomp path can fail.
pub fn refusal(syscall: &str, retval: bool, spawned: bool) -> Option<Refusal> {
    let lsm = match route(syscall, spawned) {
        Some(Route::Cgroup(_)) => {
            return retval.then(|| Refusal {
                why: format!(
                    "`retval`: fij fails `{syscall}` in a cgroup-v2 hook, which can make the call \
                     return -1 with an errno but not another value; use `errno`"
                ),
                at_retval: true,
            });
        }
        Some(Route::Seccomp) => return None, // installed before the command's exec
        Some(Route::Lsm(hook)) => match bpf_lsm() {
            (true, _) => {
                return retval.then(|| Refusal {
                    why: format!(
                        "`retval`: fij fails `{syscall}` of this target in the BPF LSM hook \
                         `{hook}`, which can make the call return -1 with an errno but not \
                         another value; use `errno`"
                    ),
                    at_retval: true,
                });
            }
            (false, why) => format!(" (BPF LSM, `{hook}`: {why})"),
        },
        None => String::new(),
    };
    let cgroup_list = CGROUP_CALLS
        .iter()
        .map(|(name, _, _)| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let recv = if matches!(syscall, "recvmsg" | "recvfrom") {
        " (the cgroup recvmsg hooks cannot fail a call: the kernel ignores their verdict)"
    } else {
        ""
    };
    Some(Refusal {
        why: format!(
            "fij cannot fail `{syscall}` of this target{recv}{lsm}: for calls other than \
         {cgroup_list}, a target fij spawns (`command`) gets a seccomp filter before its exec, \
         but an adopted or selected process needs BPF LSM (the read, write and open families), \
         or bpf_override_return (kprobes with CONFIG_BPF_KPROBE_OVERRIDE: {}) or fmod_ret (BPF \
         trampolines), which fij has no program for yet (`fij doctor` shows what this kernel has)",
            kprobe_override().1
        ),
        at_retval: false,
    })
}

/// Why fij refuses an `error` fault, and whether that is said at its `retval` (a route exists
/// but cannot return a value) rather than at its trigger (no route).
pub struct Refusal {
    pub why: String,
    pub at_retval: bool,
}

/// Whether this kernel runs BPF LSM programs, and that in words. As root, tried for real
/// (`doctor::try_bpf_lsm`: a kernel may list `bpf` among its LSMs and still refuse the load);
/// otherwise read: `bpf` among the active LSMs (`/sys/kernel/security/lsm`; where securityfs
/// is not mounted, the `lsm=` of the kernel command line or else `CONFIG_LSM`, with
/// `CONFIG_BPF_LSM=y`). Also needs x86_64 (where fij knows the syscall number's register).
/// Found once per process.
pub fn bpf_lsm() -> (bool, String) {
    static FOUND: std::sync::OnceLock<(bool, String)> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let (listed, why) = bpf_lsm_listed();
            // SAFETY: geteuid has no preconditions.
            if !listed || unsafe { libc::geteuid() } != 0 {
                return (listed, why);
            }
            match crate::doctor::try_bpf_lsm() {
                Ok(done) => (true, format!("{why}; {done}")),
                Err(e) => (false, format!("{why}, but {e:#}")),
            }
        })
        .clone()
}

fn bpf_lsm_listed() -> (bool, String) {
    if !cfg!(target_arch = "x86_64") {
        return (
            false,
            "fij reads the syscall number from x86_64 registers only".into(),
        );
    }
    if let Ok(active) = std::fs::read_to_string("/sys/kernel/security/lsm") {
        return match active.trim().split(',').any(|l| l == "bpf") {
            true => (
                true,
                format!("active LSMs (/sys/kernel/security/lsm): {}", active.trim()),
            ),
            false => (
                false,
                format!("`bpf` is not among the active LSMs: {}", active.trim()),
            ),
        };
    }
    let Some((_, config)) = crate::doctor::kernel_config() else {
        return (false, "this kernel's config does not say".into());
    };
    if crate::doctor::config_option(&config, "CONFIG_BPF_LSM").as_deref() != Some("y") {
        return (false, "this kernel is built without CONFIG_BPF_LSM".into());
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (list, from) = match cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("lsm="))
    {
        Some(list) => (list.to_string(), "the kernel command line's lsm="),
        None => (
            crate::doctor::config_option(&config, "CONFIG_LSM")
                .unwrap_or_default()
                .trim_matches('"')
                .to_string(),
            "CONFIG_LSM",
        ),
    };
    match list.split(',').any(|l| l == "bpf") {
        true => (true, format!("CONFIG_BPF_LSM=y, `bpf` in {from}")),
        false => (false, format!("`bpf` is not in {from} ({list})")),
    }
}

/// Whether this kernel has kprobes with `bpf_override_return`, and that in words.
pub fn kprobe_override() -> (bool, String) {
    if !std::path::Path::new(crate::scenario::KPROBE_PMU).exists() {
        return (false, "this kernel has no kprobes".into());
    }
    match crate::doctor::kernel_config()
        .and_then(|(_, text)| crate::doctor::config_option(&text, "CONFIG_BPF_KPROBE_OVERRIDE"))
    {
        Some(v) if v == "y" => (true, "this kernel has them".into()),
        Some(_) => (
            false,
            "this kernel is built without CONFIG_BPF_KPROBE_OVERRIDE".into(),
        ),
        None => (false, "this kernel's config does not say".into()),
    }
}
