//! Open MPI: a token ring on 4 ranks on this machine (`mpirun --oversubscribe -np 4`, TCP BTL on
//! loopback), built by the test with `mpicc`. Every rank prints `rank R pid P`, then waits for a
//! "go" file, so the test can adopt the ranks by pid before the ring starts. fij fails rank 2 on
//! its 20th `writev` (the TCP BTL sends each fragment with one writev, so: its 20th ring send).
//!
//! What was observed (docs/real-systems.md): on one machine `mpirun` is rank 2's PARENT, so it
//! learns of the death by SIGCHLD/waitpid, not over the network; it aborts the job ("mpirun
//! noticed that process rank 2 ... exited on signal 9") in about the same time after a kill and
//! after a crash. What differs is the surviving ranks: after a kill, rank 2's connections are
//! closed and its listening port refuses, so a survivor's TCP BTL reports the failure itself
//! before mpirun's abort reaches it; after a crash they hear nothing and say nothing.
use std::time::Duration;

use fij_tests::{
    TempDir,
    systems::{MpiJob, build_mpi_program, monotonic_ns},
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
    fij: FijOutput,
}

fn fail_rank(action: &str) -> Observed {
    let dir = TempDir::new(&format!("mpi-{action}"));
    let program = build_mpi_program(dir.path(), "ring", RING_C);
    let go = dir.join("go");
    let mut job = MpiJob::start(dir.path(), NP, &program, &[ROUNDS, go.to_str().unwrap()]);
    let pids = job.wait_rank_pids(Duration::from_secs(60));
    let names: Vec<String> = (0..NP).map(|r| format!("rank{r}")).collect();
    let targets: Vec<(&str, u32)> = names.iter().map(String::as_str).zip(pids.iter().copied()).collect();
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
    let observed = Observed {
        mpirun,
        ended_after: since(t0, end_ns),
        output,
        survivors,
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
    for line in observed.output.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("---")) {
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

/// kill: rank 2's connections close and its port refuses: a surviving rank's TCP BTL reports the
/// broken peer on its own, besides mpirun's abort.
#[test]
fn mpi_kill_rank_survivors_see_the_broken_connection() {
    let seen = fail_rank("kill");
    assert_job_aborted(&seen);
    assert!(
        survivor_complaint(&seen.output).is_some(),
        "after a kill a surviving rank should report the broken TCP connection:\n{}",
        seen.output
    );
    assert!(seen.fij.log.records("silenced").is_empty(), "{}", seen.fij);
}

/// crash: the job is still aborted by mpirun (which sees its child die), but no surviving rank
/// hears anything from rank 2's sockets: none reports a TCP error.
#[test]
fn mpi_crash_rank_survivors_hear_nothing() {
    let seen = fail_rank("crash");
    assert_job_aborted(&seen);
    assert_eq!(
        survivor_complaint(&seen.output),
        None,
        "after a crash no surviving rank may hear from rank 2's sockets:\n{}",
        seen.output
    );
    assert!(!seen.fij.log.records("silenced").is_empty(), "{}", seen.fij);
}
