//! Open MPI: a token ring (C, built by the test with `mpicc`) over the TCP BTL. Every rank prints
//! `rank R pid P`, then waits for a "go" file, so the test can adopt ranks by pid before the ring
//! starts; the TCP BTL sends each fragment with one `writev`, so "its 20th writev" is "its 20th
//! ring send".
//!
//! - One machine (4 ranks on `lo`, rank 2 failed at its 20th writev): `mpirun` is rank 2's
//!   PARENT, so it learns of the death by SIGCHLD/waitpid, not over the network, and aborts the
//!   job ("mpirun noticed that process rank 2 ... exited on signal 9") after a kill and after a
//!   crash alike, once it has given the other ranks `systems::KILL_GRACE` (5 s here, Open MPI's
//!   default 1 s) and SIGTERMed them. What differs is the surviving ranks: after a kill their
//!   connections to rank 2 get its FIN (the test samples their sockets: CLOSE_WAIT, then closed
//!   by the rank), and rank 1's reconnect is refused; after a crash every one of those
//!   connections stays ESTABLISHED for as long as its rank lives, and no rank says anything.
//!   ASSERTED. Rank 1's report of the refused reconnect ("failed to TCP connect") is printed,
//!   and asserted absent after a crash, but not asserted after a kill: it reaches mpirun's
//!   output only if it gets there before mpirun, on reaping rank 2, blocks its event loop in
//!   the sleeps between its SIGCONT, SIGTERM and SIGKILL of the others; under the kernel lab's
//!   emulation it loses that race in some runs (under 6.1 and 6.12: no report, or a cut one).
//! - Two nodes (ranks 0-2 on this network namespace, rank 3 on "node B", a namespace with its own
//!   `orted`, see [`NodeB`]): fij fails the whole node, rank 3 at its 20th writev and `orted`
//!   when it reaps it. After a kill mpirun reads the daemon's FIN and aborts at once; after a
//!   crash it notices only when its TCP keepalive on the daemon's connection gives up. ASSERTED.
use std::time::Duration;

use fij_tests::{
    TempDir,
    net::{TCP_CLOSE_WAIT, TCP_ESTABLISHED, TcpSocket, tcp_sockets_of},
    systems::{MpiJob, NodeB, OobKeepalive, Sampler, build_mpi_program, monotonic_ns},
};

use super::*;

/// The ring: rank 0 sends a token to rank 1, …, rank 3 back to rank 0, `rounds` times, 10 ms
/// apart.
const RING_C: &str = r#"
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int rounds = atoi(argv[1]);
    const char *go = argv[2];
    printf("rank %d pid %d\n", rank, (int)getpid());
    fflush(stdout);
    /* No MPI call until the test has adopted the ranks: it counts writev from then on. */
    while (access(go, F_OK) != 0) usleep(10000);
    long token = 0;
    for (int i = 0; i < rounds; i++) {
        if (rank == 0) {
            token++;
            MPI_Send(&token, 1, MPI_LONG, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(&token, 1, MPI_LONG, size - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(&token, 1, MPI_LONG, rank - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            token++;
            MPI_Send(&token, 1, MPI_LONG, (rank + 1) % size, 0, MPI_COMM_WORLD);
        }
        usleep(10000);
    }
    printf("rank %d done, token %ld\n", rank, token);
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
"#;

const NP: usize = 4;
const VICTIM: usize = 2;
/// The victim's send that fails it.
const NTH_SEND: u64 = 20;
/// Far more rounds than the test needs (about 20 s of ring): the job must not end by itself.
const ROUNDS: &str = "2000";
/// How long mpirun may take to end the job after the injection before the test gives up.
const ABORT_LIMIT: Duration = Duration::from_secs(60);

/// What a surviving rank's TCP BTL prints when it finds a peer gone (a refused reconnect, a reset
/// or closed connection). Open MPI 4.1's help texts.
const SURVIVOR_COMPLAINTS: &[&str] = &[
    "failed to TCP connect to a peer",
    "Connection reset by peer",
    "readv failed",
    "writev failed",
    "peer hung up",
];

struct Observed {
    /// How mpirun ended, and when (from the injection).
    mpirun: fij_tests::Ended,
    ended_after: Duration,
    /// mpirun's output (its own messages and the ranks' stdout/stderr).
    output: String,
    /// How each surviving rank ended, from fij's exit records: (rank, status, after).
    survivors: Vec<(usize, String, Duration)>,
    /// The surviving ranks' connections to rank 2 at the injection, and what became of each.
    links: Vec<LinkFate>,
    fij: FijOutput,
}

/// A surviving rank's connection to rank 2, established at the injection.
struct LinkFate {
    rank: usize,
    local_port: u16,
    /// The first time (from the injection) its rank, still alive, held it in another state
    /// than ESTABLISHED, and that state (`CLOSE_WAIT`, or `closed` once the rank dropped it);
    /// `None`: ESTABLISHED in every sample until the rank ended.
    heard: Option<(Duration, &'static str)>,
}

impl std::fmt::Display for LinkFate {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "rank {} (port {}): ", self.rank, self.local_port)?;
        match self.heard {
            Some((after, state)) => write!(f, "{state} after {}", ms(after)),
            None => write!(f, "ESTABLISHED until the rank ended"),
        }
    }
}

/// Every rank's TCP sockets (`None`: exited), sampled.
type SocketSample = Vec<Option<Vec<TcpSocket>>>;

/// How many of the samples just before the injection are pooled to find the connections.
const POOLED_SAMPLES: usize = 5;

/// What became of each surviving rank's connection to the victim from the injection at `t0`.
/// The connections: sockets a surviving rank held ESTABLISHED in one of the last samples before
/// `t0`, whose other end the victim held in one of them. One sample can miss a socket:
/// /proc/net/tcp is read a page at a time, and an entry is skipped when sockets of its hash
/// bucket go between two reads (likely here: earlier tests' TIME_WAIT sockets expire). Seen
/// once under 6.12: rank 1's connection was not found in the last sample. So the last samples
/// are pooled, and a connection counts as closed only when two samples in a row, its rank
/// alive, miss it.
fn link_fates(samples: &[(u64, SocketSample)], t0: u64) -> Vec<LinkFate> {
    let before: Vec<&SocketSample> = samples
        .iter()
        .rev()
        .filter(|(t, _)| *t < t0)
        .take(POOLED_SAMPLES)
        .map(|(_, sample)| sample)
        .collect();
    // Both ends are on 127.0.0.1: a connection's other end has the same ports, swapped.
    let victim_ends: Vec<(u16, u16)> = before
        .iter()
        .flat_map(|sample| sample[VICTIM].iter().flatten())
        .map(|s| (s.remote_port, s.local_port))
        .collect();
    let mut fates = Vec::new();
    for rank in (0..NP).filter(|&r| r != VICTIM) {
        let mut links: Vec<(u16, u16)> = before
            .iter()
            .flat_map(|sample| sample[rank].iter().flatten())
            .filter(|s| s.state == TCP_ESTABLISHED)
            .map(|s| (s.local_port, s.remote_port))
            .filter(|ends| victim_ends.contains(ends))
            .collect();
        links.sort_unstable();
        links.dedup();
        // Only while the rank lives: its end drops every socket.
        let after: Vec<(u64, &Vec<TcpSocket>)> = samples
            .iter()
            .filter(|(t, _)| *t >= t0)
            .map_while(|(t, sample)| Some((*t, sample[rank].as_ref()?)))
            .collect();
        for link in links {
            let state = |held: &[TcpSocket]| {
                held.iter()
                    .find(|s| (s.local_port, s.remote_port) == link)
                    .map(|s| s.state)
            };
            let heard = after.iter().enumerate().find_map(|(i, (t, held))| {
                let named = match state(held) {
                    Some(TCP_ESTABLISHED) => return None,
                    Some(TCP_CLOSE_WAIT) => "CLOSE_WAIT",
                    Some(_) => "another state",
                    None => match after.get(i + 1) {
                        Some((_, next)) if state(next).is_none() => "closed",
                        _ => return None,
                    },
                };
                Some((since(t0, *t), named))
            });
            fates.push(LinkFate {
                rank,
                local_port: link.0,
                heard,
            });
        }
    }
    fates
}

fn fail_rank(action: &str) -> Observed {
    let dir = TempDir::new(&format!("mpi-{action}"));
    let program = build_mpi_program(dir.path(), "ring", RING_C);
    let go = dir.join("go");
    let mut job = MpiJob::start(dir.path(), NP, &program, &[ROUNDS, go.to_str().unwrap()]);
    let pids = job.wait_rank_pids(Duration::from_secs(60));
    // The ranks' sockets from before the ring starts until mpirun has ended the job.
    let sockets = {
        let pids = pids.clone();
        Sampler::start(
            Duration::from_millis(20),
            Duration::from_secs(180),
            move || tcp_sockets_of(&pids),
        )
    };
    let names: Vec<String> = (0..NP).map(|r| format!("rank{r}")).collect();
    let targets: Vec<(&str, u32)> = names
        .iter()
        .map(String::as_str)
        .zip(pids.iter().copied())
        .collect();
    let scenario = adopting_scenario(
        &targets,
        &names[VICTIM],
        action,
        &format!("trigger = {{ syscall = \"writev\" }}\nnth = {NTH_SEND}"),
        "28s",
    );
    let mut fij = start_fij(&dir, &scenario);
    std::fs::write(&go, "").expect("creating the go file");
    let t0 = ktime(&wait_injection(&mut fij, Duration::from_secs(20)));
    let ended = job.mpirun.wait_end(ABORT_LIMIT);
    let waited = monotonic_ns();
    let sockets = sockets.stop();
    let output = job.output();
    // Whatever happened, nothing of the job outlives the test.
    job.mpirun.kill_all();
    let fij = end_fij(fij);
    let Some((mpirun, end_ns)) = ended else {
        panic!(
            "mpirun still running {:?} after rank 2's {action}: killed it\n{output}\n{}",
            since(t0, waited),
            fij
        );
    };
    let t0 = assert_killed(&fij.log, pids[VICTIM]);
    let injection = fij.log.injections()[0];
    assert_eq!(injection["syscall"], "writev", "{injection}");
    assert_eq!(injection["hit"], NTH_SEND, "{injection}");

    let survivors = (0..NP)
        .filter(|&r| r != VICTIM)
        .map(|r| {
            let exits = fij.log.exits_of(pids[r]);
            let (status, after) = match exits.first() {
                Some(exit) => (fij.log.exit_status(pids[r]), since(t0, ktime(exit))),
                None => ("no exit record".to_string(), Duration::ZERO),
            };
            (r, status, after)
        })
        .collect();
    let links = link_fates(&sockets, t0);
    let observed = Observed {
        mpirun,
        ended_after: since(t0, end_ns),
        output,
        survivors,
        links,
        fij,
    };
    println!(
        "mpi {action} of rank 2 at its {NTH_SEND}th writev: mpirun ended {:?} {} after the \
         injection; survivors: {}; a survivor complained: {}",
        observed.mpirun,
        ms(observed.ended_after),
        observed
            .survivors
            .iter()
            .map(|(r, s, d)| format!("rank {r} {s} after {}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", "),
        survivor_complaint(&observed.output).unwrap_or("no"),
    );
    for link in &observed.links {
        println!("  their connection to rank 2: {link}");
    }
    for line in observed
        .output
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("---"))
    {
        println!("  | {line}");
    }
    observed
}

fn survivor_complaint(output: &str) -> Option<&'static str> {
    SURVIVOR_COMPLAINTS
        .iter()
        .copied()
        .find(|c| output.contains(c))
}

/// Common to kill and crash: mpirun notices rank 2's death (it is its parent) and aborts the
/// whole job, non-zero, within seconds; every surviving rank is gone too.
fn assert_job_aborted(seen: &Observed) {
    assert!(
        matches!(seen.mpirun, fij_tests::Ended::Code(c) if c != 0)
            || matches!(seen.mpirun, fij_tests::Ended::Signal(_)),
        "mpirun must fail the job, it ended {:?}\n{}",
        seen.mpirun,
        seen.output
    );
    assert!(
        seen.output.contains("mpirun noticed that process rank 2"),
        "mpirun's output must name rank 2:\n{}",
        seen.output
    );
    assert!(
        seen.ended_after < Duration::from_secs(15),
        "mpirun took {:?} to abort the job",
        seen.ended_after
    );
    for (rank, status, _) in &seen.survivors {
        assert!(
            status.starts_with("signal") || status.starts_with("code"),
            "rank {rank}: {status}\n{}",
            seen.fij
        );
    }
    assert!(
        !seen.output.contains("done, token"),
        "no rank may finish the ring:\n{}",
        seen.output
    );
}

/// kill: rank 2's connections close: the surviving ranks' ends of them get its FIN (they leave
/// ESTABLISHED while those ranks still run). Whether rank 1 also gets its report of the refused
/// reconnect into mpirun's output is printed, not asserted (see the module's comment).
#[test]
fn mpi_kill_rank_survivors_see_the_broken_connection() {
    let seen = fail_rank("kill");
    assert_job_aborted(&seen);
    assert_links_to_both_neighbours(&seen);
    for link in &seen.links {
        assert!(
            link.heard.is_some(),
            "after a kill every surviving end of rank 2's connections gets its FIN: {link}\n{}",
            seen.output
        );
    }
    assert!(seen.fij.log.records("silenced").is_empty(), "{}", seen.fij);
}

/// crash: the job is still aborted by mpirun (which sees its child die), but no surviving rank
/// hears anything from rank 2's sockets: their connections stay ESTABLISHED for as long as
/// they live, and none reports a TCP error.
#[test]
fn mpi_crash_rank_survivors_hear_nothing() {
    if fij_tests::tcx::refused_without_tcx("action = \"crash\"") {
        return;
    }
    let seen = fail_rank("crash");
    assert_job_aborted(&seen);
    assert_links_to_both_neighbours(&seen);
    for link in &seen.links {
        assert!(
            link.heard.is_none(),
            "after a crash no surviving end of rank 2's connections may hear from it: {link}"
        );
    }
    assert_eq!(
        survivor_complaint(&seen.output),
        None,
        "after a crash no surviving rank may hear from rank 2's sockets:\n{}",
        seen.output
    );
    assert!(!seen.fij.log.records("silenced").is_empty(), "{}", seen.fij);
}

/// Rank 2's ring neighbours, ranks 1 and 3, were connected to it at the injection (the ring
/// sends over the TCP BTL), among the links the tests follow.
fn assert_links_to_both_neighbours(seen: &Observed) {
    for neighbour in [VICTIM - 1, VICTIM + 1] {
        assert!(
            seen.links.iter().any(|l| l.rank == neighbour),
            "rank {neighbour} was connected to rank 2 at the injection: {:?}",
            seen.links.iter().map(|l| l.to_string()).collect::<Vec<_>>()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Two nodes: node B loses power.

/// mpirun's keepalive on its connection to node B's daemon, shortened from Open MPI's 8 minutes:
/// probes after 1 s idle, every 1 s, 4 unanswered → the daemon is lost, 4 to 5 s after it fell
/// silent.
const KEEPALIVE: OobKeepalive = OobKeepalive {
    time_s: 1,
    intvl_s: 1,
    probes: 4,
};
/// What mpirun prints when it loses a remote daemon (whatever the cause).
const LOST_DAEMON: &str = "ORTE has lost communication with a remote daemon";

struct NodeLoss {
    /// When mpirun printed that it lost node B's daemon (from the first injection, within the
    /// 20 ms polling of its output).
    noticed_after: Duration,
    /// How mpirun ended, and when.
    mpirun: fij_tests::Ended,
    ended_after: Duration,
    output: String,
    fij: FijOutput,
}

/// The ring on two "nodes": ranks 0-2 on node A (this namespace, under mpirun), rank 3 on node B
/// (a network namespace, under its own `orted`, started through an ssh stand-in: see
/// [`NodeB`]). fij adopts node B's orted (rank 3 joins as its descendant) and fails the whole
/// node: rank 3 at its 20th send, and orted at its first `wait4` -- when it reaps rank 3, before
/// it can report the death to mpirun (its report is a writev right after). Between the two:
/// about 2 ms.
fn fail_node_b(action: &str) -> NodeLoss {
    let dir = TempDir::new(&format!("mpi-node-{action}"));
    // Node B before fij starts (crash silences the interfaces present at its start), and dropped
    // after the job.
    let node = NodeB::new(dir.path());
    let program = build_mpi_program(dir.path(), "ring", RING_C);
    let go = dir.join("go");
    let mut job = MpiJob::start_two_nodes(
        dir.path(),
        &node,
        (3, 1),
        KEEPALIVE,
        &program,
        &[ROUNDS, go.to_str().unwrap()],
    );
    let pids = job.wait_rank_pids(Duration::from_secs(60));
    let orted = job.wait_daemon_pid(Duration::from_secs(10));
    let node_b_rank = *pids.last().unwrap();
    let scenario = format!(
        "seed = 1\nduration = \"28s\"\n\n[[target]]\nname = \"node-b\"\npid = {orted}\n\n\
         [[fault]]\nname = \"rank\"\ntarget = \"node-b\"\naction = {a}\n\
         trigger = {{ syscall = \"writev\" }}\nnth = {NTH_SEND}\n\n\
         [[fault]]\nname = \"daemon\"\ntarget = \"node-b\"\naction = {a}\n\
         trigger = {{ syscall = \"wait4\" }}\nnth = 1\n",
        a = toml_str(action)
    );
    let mut fij = start_fij(&dir, &scenario);
    let log = job.mpirun.log_path().to_path_buf();
    let lost = Sampler::start(
        Duration::from_millis(20),
        Duration::from_secs(90),
        move || std::fs::read_to_string(&log).is_ok_and(|text| text.contains(LOST_DAEMON)),
    );
    std::fs::write(&go, "").expect("creating the go file");
    let first = fij.wait_for_record("the injection into rank 3", Duration::from_secs(20), |r| {
        r["event"] == "injection"
    });
    let t0 = ktime(&first);
    fij.wait_for_record("the injection into orted", Duration::from_secs(5), |r| {
        r["event"] == "injection" && r["fault"] == "daemon"
    });
    let ended = job.mpirun.wait_end(ABORT_LIMIT);
    let waited = monotonic_ns();
    let lost = lost.stop();
    let output = job.output();
    job.mpirun.kill_all();
    let fij = end_fij(fij);
    let Some((mpirun, end_ns)) = ended else {
        panic!(
            "mpirun still running {:?} after node B's {action}: killed it\n{output}\n{fij}",
            since(t0, waited)
        );
    };
    let noticed_ns = lost
        .iter()
        .find(|(_, seen)| *seen)
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("mpirun never said {LOST_DAEMON:?}:\n{output}"));
    // The node died as planned: rank 3 at its 20th writev, then orted at its first wait4.
    let injections = fij.log.injections();
    assert_eq!(injections.len(), 2, "{fij}");
    let (rank, daemon) = (injections[0], injections[1]);
    assert_eq!(
        (pid_of(rank), &rank["syscall"], &rank["hit"]),
        (node_b_rank, &"writev".into(), &NTH_SEND.into()),
        "{fij}"
    );
    assert_eq!(
        (pid_of(daemon), &daemon["syscall"]),
        (orted, &"wait4".into()),
        "{fij}"
    );
    for pid in [node_b_rank, orted] {
        assert_eq!(fij.log.exit_status(pid), "signal SIGKILL", "{fij}");
    }
    let observed = NodeLoss {
        noticed_after: since(t0, noticed_ns),
        mpirun,
        ended_after: since(t0, end_ns),
        output,
        fij,
    };
    println!(
        "mpi {action} of node B (rank 3 at its {NTH_SEND}th writev, orted at its first wait4, {} \
         later): mpirun reports the lost daemon {} after the injection and ends {:?} {} after \
         (its keepalive declares a silent peer dead after {}-{} s)",
        ms(since(t0, ktime(daemon_injection(&observed.fij)))),
        ms(observed.noticed_after),
        observed.mpirun,
        ms(observed.ended_after),
        KEEPALIVE.min_detection().as_secs(),
        KEEPALIVE.max_detection().as_secs(),
    );
    for line in observed
        .output
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("---"))
    {
        println!("  | {line}");
    }
    observed
}

fn daemon_injection(fij: &FijOutput) -> &serde_json::Value {
    fij.log.injections()[1]
}

fn assert_lost_daemon(seen: &NodeLoss) {
    assert!(
        !matches!(seen.mpirun, fij_tests::Ended::Code(0)),
        "mpirun must fail the job:\n{}",
        seen.output
    );
    assert!(seen.output.contains(LOST_DAEMON), "{}", seen.output);
    assert!(!seen.output.contains("done, token"), "{}", seen.output);
}

/// kill of node B's processes: their connections close, mpirun reads its daemon's FIN (and the
/// agent's session ends) and aborts the job at once.
#[test]
fn mpi_kill_node_mpirun_aborts_at_once() {
    let seen = fail_node_b("kill");
    assert_lost_daemon(&seen);
    assert!(
        seen.noticed_after < KEEPALIVE.min_detection() / 4,
        "mpirun took {:?} to notice that node B's processes were killed",
        seen.noticed_after
    );
    assert!(
        seen.ended_after < Duration::from_secs(5),
        "mpirun took {:?} to end the job",
        seen.ended_after
    );
    assert!(seen.fij.log.records("silenced").is_empty(), "{}", seen.fij);
}

/// crash of node B (a power loss): nothing of node B speaks again; the ranks on node A wait for
/// their token, and mpirun learns of the loss only from its own TCP keepalive on the daemon's
/// connection.
#[test]
fn mpi_crash_node_mpirun_notices_only_by_its_keepalive() {
    if fij_tests::tcx::refused_without_tcx("action = \"crash\"") {
        return;
    }
    let seen = fail_node_b("crash");
    assert_lost_daemon(&seen);
    let least = KEEPALIVE.min_detection().as_secs_f64();
    assert!(
        seen.noticed_after.as_secs_f64() >= 0.8 * least,
        "mpirun noticed node B's crash after {:?}, before its keepalive could have ({least} s \
         at least)\n{}",
        seen.noticed_after,
        seen.output
    );
    assert!(
        seen.noticed_after < KEEPALIVE.max_detection() + Duration::from_secs(10),
        "mpirun took {:?} to notice",
        seen.noticed_after
    );
    assert!(
        survivor_complaint(&seen.output).is_none(),
        "the ranks of node A must hear nothing from node B:\n{}",
        seen.output
    );
    assert!(!seen.fij.log.records("silenced").is_empty(), "{}", seen.fij);
}
