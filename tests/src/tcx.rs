//! tcx, which `crash` and `partition` need (their packet filter is a tcx link, kernel ≥ 6.6),
//! detected from the running kernel itself, not from its release; and what a test of those
//! actions asserts where the kernel has none: that fij refuses the scenario at the action's key.
//!
//! fij decides from the release (`fij validate` refuses below 6.6); the tests ask the kernel, so
//! a kernel where the two disagree fails the tests instead of passing them for the wrong reason.

use crate::{Fij, TempDir, cleanup_timeout, net::victim_scenario, wait_no_fij_programs};

/// `BPF_PROG_QUERY` of `enum bpf_cmd`.
const BPF_PROG_QUERY: libc::c_long = 16;
/// `BPF_TCX_INGRESS` of `enum bpf_attach_type` (added with tcx in 6.6).
const BPF_TCX_INGRESS: u32 = 46;

/// The `query` member of `union bpf_attr` (include/uapi/linux/bpf.h), as of 6.6.
#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    count: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// Whether the kernel has tcx: asks it which programs are attached to `lo`'s tcx ingress. A
/// kernel with tcx answers (0 programs, or fij's); one without rejects the attach type (EINVAL).
/// Needs CAP_NET_ADMIN (the tests run as root); any other error fails the test.
pub fn kernel_has_tcx() -> bool {
    let mut query = ProgQuery {
        target_ifindex: 1, // lo: ifindex 1 in every network namespace
        attach_type: BPF_TCX_INGRESS,
        ..ProgQuery::default()
    };
    // SAFETY: bpf(2) with a zero-initialized attr of the size passed, which the kernel reads and
    // (for the counts) writes; it outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut query as *mut ProgQuery,
            std::mem::size_of::<ProgQuery>() as u32,
        )
    };
    if ret == 0 {
        return true;
    }
    let error = std::io::Error::last_os_error();
    assert_eq!(
        error.raw_os_error(),
        Some(libc::EINVAL),
        "BPF_PROG_QUERY of lo's tcx ingress: {error}"
    );
    false
}

/// On a kernel without tcx, checks that fij refuses a campaign whose fault is `fault` (TOML lines
/// beginning with `action = "crash"` or `action = "partition"`, as [`crate::net::Campaign`]
/// takes them): `fij validate` and `fij run` exit 2 with the message at the action's
/// `file:line:col`, and nothing runs (the target would create a file). Returns true then, and the
/// test has nothing more to do on this kernel; false on a kernel with tcx.
pub fn refused_without_tcx(fault: &str) -> bool {
    if kernel_has_tcx() {
        return false;
    }
    let action = fault
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("action = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the fault's first line is its action");
    let dir = TempDir::new(&format!("{action}-refused"));
    let marker = dir.join("ran");
    let argv = ["/bin/touch".to_owned(), marker.display().to_string()];
    let text = victim_scenario(&argv, fault, "5s");
    let release = assert_refused(&dir, &text, action, "process's", &[], &marker);
    crate::tell(&format!(
        "`{action}` refused as it must be: this kernel ({release}) has no tcx (BPF_PROG_QUERY of \
         BPF_TCX_INGRESS: EINVAL)"
    ));
    true
}

/// On a kernel without tcx, checks that fij refuses a multi-node campaign whose node fault is
/// `action` (`crash` or `partition`, which silence the nodes' addresses with tcx filters):
/// `fij validate` and `fij run --node a` exit 2 with the message at the action's
/// `file:line:col`, and nothing runs or is loaded. True then (the test asserts what it can with
/// `kill`, or has nothing more to do); false on a kernel with tcx.
pub fn node_fault_refused_without_tcx(action: &str) -> bool {
    if kernel_has_tcx() {
        return false;
    }
    let dir = TempDir::new(&format!("node-{action}-refused"));
    let marker = dir.join("ran");
    let argv = ["/bin/touch".to_owned(), marker.display().to_string()];
    let partition = if action == "partition" {
        "from = [\"b\"]\nduration = \"1s\"\n"
    } else {
        ""
    };
    let text = format!(
        "duration = \"5s\"\n[[node]]\nname = \"a\"\n[[node]]\nname = \"b\"\n\
         [[target]]\nname = \"t\"\ncommand = {}\nnode = \"a\"\n\
         [[node_fault]]\nname = \"power\"\naction = \"{action}\"\nnodes = [\"a\"]\n{partition}\
         trigger = {{ at = \"1s\" }}\n",
        crate::toml_array(&argv)
    );
    let release = assert_refused(&dir, &text, action, "nodes'", &["--node", "a"], &marker);
    crate::tell(&format!(
        "node `{action}` refused as it must be: this kernel ({release}) has no tcx"
    ));
    true
}

/// Writes the scenario `text` into `dir` and checks that fij refuses its `action` (on its
/// `action = ` line) for want of tcx, saying whose packets it would silence (`whose`): `fij
/// validate` and `fij run` (with `run_args`) exit 2 with the message at the action's
/// `file:line:col`, log nothing, run nothing (`marker` stays absent) and load nothing. Returns
/// the kernel's release.
fn assert_refused(
    dir: &TempDir,
    text: &str,
    action: &str,
    whose: &str,
    run_args: &[&str],
    marker: &std::path::Path,
) -> String {
    let scenario = dir.write("s.toml", text);
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("action = "))
        .unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let release = release.trim();
    let expected = format!(
        "{}:{line}:10: `{action}` needs tcx (kernel 6.6 or later) to silence the {whose} \
         packets; this kernel is {release} (`fij doctor` lists what it supports); use `kill` \
         instead",
        scenario.display()
    );
    let run = run_args
        .iter()
        .fold(Fij::run(dir, &scenario), |fij, arg| fij.arg(*arg));
    for fij in [Fij::validate(&scenario), run] {
        let out = fij.output();
        out.assert_exit(2);
        assert!(out.stderr.contains(&expected), "expected {expected}\n{out}");
        assert!(out.log.is_empty(), "a refused campaign logs nothing\n{out}");
    }
    assert!(!marker.exists(), "a refused campaign runs nothing");
    if let Err(left) = wait_no_fij_programs(cleanup_timeout()) {
        panic!("a refused campaign loads nothing, but the kernel has {left:?}");
    }
    release.to_owned()
}
