//! The static `fij` of `cargo xtask dist` (`FIJ_DIST_BIN`): one file that runs on its own. The
//! ELF asks for no dynamic loader and no shared library; with no environment at all (an empty
//! `PATH`, so no `ss`, `tc`, `gzip` or anything else could be found) it crashes a server and,
//! when the campaign ends, destroys the orphaned socket the crashed server left behind.
use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr},
    process::Command,
    time::Duration,
};

use fij_tests::{
    FijOutput, TempDir, fij_dist_bin, net::*, tcx::kernel_has_tcx, wait_no_fij_programs,
};
use object::{
    Endianness,
    elf::{DT_NEEDED, PT_DYNAMIC, PT_INTERP},
    read::elf::{Dyn, ElfFile64, ProgramHeader},
};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// No `PT_INTERP` (nothing for the kernel to load before fij: no ld.so) and no `DT_NEEDED`
/// (no shared library), and `ldd` agrees.
#[test]
fn dist_binary_is_static() {
    let bin = fij_dist_bin();
    let data = std::fs::read(&bin).unwrap();
    let elf = ElfFile64::<Endianness>::parse(&*data).unwrap();
    let endian = elf.endian();
    let headers = elf.elf_program_headers();
    let interpreters: Vec<_> = headers
        .iter()
        .filter(|h| h.p_type(endian) == PT_INTERP)
        .collect();
    assert!(interpreters.is_empty(), "{} has a PT_INTERP", bin.display());
    // A static-pie binary has a dynamic section (for its own relocations), but needs nothing.
    let mut needed: Vec<&object::elf::Dyn64<Endianness>> = Vec::new();
    for header in headers.iter().filter(|h| h.p_type(endian) == PT_DYNAMIC) {
        let entries: &[object::elf::Dyn64<Endianness>] = header
            .dynamic(endian, &*data)
            .unwrap()
            .expect("PT_DYNAMIC has entries");
        needed.extend(entries.iter().filter(|d| d.d_tag(endian) == DT_NEEDED));
    }
    assert!(
        needed.is_empty(),
        "{} needs {} shared libraries",
        bin.display(),
        needed.len()
    );

    let ldd = Command::new("ldd").arg(&bin).output().expect("running ldd");
    let said = String::from_utf8_lossy(&ldd.stdout).trim().to_owned()
        + String::from_utf8_lossy(&ldd.stderr).trim();
    eprintln!("ldd {}: {said:?} ({})", bin.display(), ldd.status);
    // "statically linked" for static-pie (exit 0), "not a dynamic executable" for static (1).
    assert!(
        said == "statically linked" || said == "not a dynamic executable",
        "ldd {}: {said}",
        bin.display()
    );
}

/// The states of this network namespace's TCP sockets from local port `local` to remote port
/// `remote`.
fn tcp_states(local: u16, remote: u16) -> Vec<u8> {
    tcp_table()
        .iter()
        .filter(|s| (s.local_port, s.remote_port) == (local, remote))
        .map(|s| s.state)
        .collect()
}

/// The crash campaign of `crash_established_idle_peer_hears_nothing`, run by the static binary
/// with an empty environment but `PATH=` (empty): the victim is crashed and its peer hears
/// nothing; the victim's socket lives on as an orphan in FIN_WAIT1, its FIN held back. Ending
/// the campaign destroys that orphan (SOCK_DESTROY, no `ss`), so it is gone once fij has exited
/// and the peer's next segment meets a host with no state: RST.
///
/// On a kernel without tcx (asked of the kernel: Debian 12's 6.1 in the kernel lab), `crash` is
/// refused instead, at its key, and nothing runs.
#[test]
fn dist_binary_crash_with_empty_path_destroys_the_orphan() {
    let bin = fij_dist_bin();
    if !kernel_has_tcx() {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let release = release.trim();
        let dir = TempDir::new("dist-crash-refused");
        let marker = dir.join("ran");
        let scenario = dir.join("s.toml");
        std::fs::write(
            &scenario,
            format!(
                "[[target]]\nname = \"t\"\ncommand = [\"/bin/touch\", \"{}\"]\n\n\
                 [[fault]]\nname = \"c\"\ntarget = \"t\"\naction = \"crash\"\n\
                 trigger = {{ syscall = \"write\" }}\n",
                marker.display()
            ),
        )
        .unwrap();
        let run = Command::new(&bin)
            .arg("run")
            .arg(&scenario)
            .env_clear()
            .env("PATH", "")
            .output()
            .expect("running the dist binary");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{stderr}");
        assert_eq!(
            stderr.trim(),
            format!(
                "{}:8:10: `crash` needs tcx (kernel 6.6 or later) to silence the process's \
                 packets; this kernel is {release} (`fij doctor` lists what it supports); use \
                 `kill` instead",
                scenario.display()
            )
        );
        assert!(!marker.exists(), "a refused campaign runs nothing");
        fij_tests::tell(&format!(
            "crash refused as it must be: kernel {release} has no tcx"
        ));
        return;
    }
    let mut c = Campaign::start_configured(
        "dist-crash",
        &["tcp", "127.0.0.1"],
        "action = \"crash\"",
        |argv| argv,
        |fij| fij.bin(&bin).env_clear().env("PATH", ""),
    );
    let mut peer = connect_and_greet(c.addr(V4));
    let peer_port = peer.local_addr().unwrap().port();
    let port = c.ports[0];
    c.wait_dead();
    c.wait_silenced(2);
    let (outcome, took) = read_once(&mut peer, Duration::from_secs(1));
    eprintln!("crashed, idle peer: read → {outcome:?} after {took:?}");
    assert_eq!(
        outcome,
        ReadOutcome::TimedOut,
        "a crashed host says nothing"
    );
    assert_eq!(
        tcp_states(port, peer_port),
        [TCP_FIN_WAIT1],
        "the crashed server's socket: an orphan in FIN_WAIT1, its FIN silenced"
    );

    let (out, _dir) = c.interrupt();
    assert_crashed(&out);
    assert_eq!(
        tcp_states(port, peer_port),
        Vec::<u8>::new(),
        "the orphan is destroyed when the campaign ends\n{out}"
    );
    peer.write_all(b"ping\n").unwrap();
    let (outcome, took) = read_once(&mut peer, Duration::from_secs(1));
    eprintln!("after fij ended: read → {outcome:?} after {took:?}");
    assert_eq!(outcome, ReadOutcome::Error(libc::ECONNRESET), "{out}");
}

/// The static binary's `kill`, with the same empty environment, on every kernel fij supports
/// (6.1 included: `cargo xtask vm --all --test dist`): the victim dies by SIGKILL on its first
/// sleep, and its peer gets the FIN the kernel sends for a killed process.
#[test]
fn dist_binary_kill_with_empty_path() {
    let bin = fij_dist_bin();
    let mut c = Campaign::start_configured(
        "dist-kill",
        &["tcp", "127.0.0.1"],
        "action = \"kill\"",
        |argv| argv,
        |fij| fij.bin(&bin).env_clear().env("PATH", ""),
    );
    let mut peer = connect_and_greet(c.addr(V4));
    c.wait_dead();
    let (outcome, took) = read_once(&mut peer, Duration::from_secs(5));
    eprintln!("killed: read → {outcome:?} after {took:?}");
    assert_eq!(
        outcome,
        ReadOutcome::Eof,
        "a killed process's socket is closed"
    );
    let (out, _dir) = c.finish();
    assert_crashed(&out);
}

/// The victim died by SIGKILL, injected on its first `clock_nanosleep`.
fn assert_crashed(out: &FijOutput) {
    let victim = out.log.target_pid("victim");
    out.log
        .assert_injections("clock_nanosleep", "SIGKILL", &[(1, victim)]);
    assert_eq!(out.log.exit_status(victim), "signal SIGKILL", "{out}");
}

/// `fij doctor` of the static binary, with no environment but an empty `PATH`: every required
/// item works (its `bpf_send_signal` check kills a child entering the exec of fij's own
/// executable: no other program is needed), and it leaves no program behind.
#[test]
fn dist_binary_doctor_with_no_environment() {
    let out = Command::new(fij_dist_bin())
        .arg("doctor")
        .env_clear()
        .env("PATH", "")
        .output()
        .expect("running fij doctor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "fij doctor: {}", out.status);
    assert!(
        stdout.contains("\nfij run can work on this kernel"),
        "{stdout}"
    );
    if let Err(left) = wait_no_fij_programs(fij_tests::cleanup_timeout()) {
        panic!("fij doctor left programs behind: {left:?}");
    }
}
