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

/// Why fij cannot fail `syscall` on this machine (None: a path exists). `retval`: the fault
/// asks for a return value rather than an errno; `spawned`: its target is a command fij
/// spawns, whose calls the seccomp path can fail.
pub fn refusal(syscall: &str, retval: bool, spawned: bool) -> Option<String> {
    if cgroup_hook(syscall).is_some() {
        return retval.then(|| {
            format!(
                "`retval`: fij fails `{syscall}` in a cgroup-v2 hook, which can make the call \
                 return -1 with an errno but not another value; use `errno`"
            )
        });
    }
    if spawned {
        return None; // seccomp user notification, installed before the command's exec
    }
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
    Some(format!(
        "fij cannot fail `{syscall}` of this target{recv}: for calls other than {cgroup_list}, \
         a target fij spawns (`command`) gets a seccomp filter before its exec, but an adopted or \
         selected process needs bpf_override_return (kprobes with CONFIG_BPF_KPROBE_OVERRIDE: {}) \
         or fmod_ret (BPF trampolines), which fij has no program for yet (`fij doctor` shows \
         what this kernel has)",
        kprobe_override().1
    ))
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
