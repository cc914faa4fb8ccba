//! etcd: a 3-member cluster on 127.0.0.1 (`--heartbeat-interval 100 --election-timeout 1000`);
//! fij fails the LEADER one second after the campaign starts. Measured from the injection:
//!
//! - (a) the client: a client that keeps one HTTP/1.1 connection to the leader (etcd's JSON
//!   gateway, `POST /v3/kv/put` every 50 ms, [`EtcdClient`]) and fails over to the next member
//!   when a request fails or gets no answer within [`CLIENT_TIMEOUT`]. After a kill its next
//!   request meets the leader's FIN at once; after a crash it hears nothing and gives up only at
//!   its own timeout. ASSERTED. Also measured and printed: a loop of `etcdctl put` (a fresh
//!   client per put, every endpoint), which is only bounded (it looks alike for both).
//! - (b) the election: how long until both survivors report a new leader (`etcdctl endpoint
//!   status` every 100 ms). Raft acts on missing heartbeats in both cases, so it looks the same
//!   for kill and crash: only bounded.
//! - (c) the survivors' raft transport (rafthttp, their logs): after a kill it reads the leader's
//!   FIN at once ("unexpected EOF"); after a crash it gives up only at its own read timeout
//!   ("i/o timeout", about 5 s), long after the new leader was elected. ASSERTED.
use std::time::Duration;

use fij_tests::{
    TempDir,
    systems::{
        EtcdClient, EtcdCluster, EtcdStatus, Outcome, Request, Sampler, etcd_status, etcdctl_put,
        monotonic_ns,
    },
};

use super::*;

/// The client's timeout for a connect or a request's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
const HEARTBEAT_MS: u64 = 100;
/// rafthttp's read deadline on its peer streams (`ConnReadTimeout` in etcd's rafthttp/peer.go);
/// the leader's heartbeats every 100 ms renew it.
const RAFTHTTP_READ_TIMEOUT: Duration = Duration::from_secs(5);
const ELECTION_MS: u64 = 1000;

struct Observed {
    /// The client's first failed request after the injection: what it got, and when (from the
    /// injection).
    first_failure: Outcome,
    detected_after: Duration,
    /// The client's first successful put on another member.
    failed_over_after: Duration,
    /// When both survivors first reported a new leader.
    elected_after: Duration,
    /// The `etcdctl put` loop (a fresh client per put, every endpoint, the leader first): each
    /// put that failed after the injection (how long it took, its error), and when the first
    /// put that started after the injection succeeded.
    etcdctl_failures: Vec<(Duration, String)>,
    etcdctl_ok_after: Option<Duration>,
    /// Per survivor: when its raft transport (rafthttp) logged losing a stream it reads from the
    /// old leader (from the injection, within the 50 ms polling), and why (`unexpected EOF`,
    /// `i/o timeout`, …); None if it had not when the test stopped looking.
    stream_lost: Vec<Option<(Duration, String)>>,
    /// Every request of the client, and the injection's time.
    requests: Vec<Request>,
    t0: u64,
    fij: FijOutput,
}

fn fail_leader(action: &str) -> Observed {
    let dir = TempDir::new(&format!("etcd-{action}"));
    let cluster = EtcdCluster::start(dir.path(), 3, HEARTBEAT_MS, ELECTION_MS);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let old_leader = etcd_status(&[cluster.members[leader].endpoint()])
        .first()
        .expect("the leader's status")
        .member_id;
    let survivors: Vec<usize> = (0..cluster.members.len())
        .filter(|&i| i != leader)
        .collect();
    let survivor_endpoints: Vec<String> = survivors
        .iter()
        .map(|&i| cluster.members[i].endpoint())
        .collect();

    // The client, connected to the leader first, then the others in order.
    let order: Vec<_> = std::iter::once(leader)
        .chain(survivors.iter().copied())
        .map(|i| cluster.members[i].client_addr())
        .collect();
    let client = EtcdClient::start(
        order,
        CLIENT_TIMEOUT,
        Duration::from_millis(50),
        Duration::from_secs(60),
    );
    client.wait_for(Duration::from_secs(10), "5 puts on the leader", |r| {
        r.iter()
            .filter(|r| r.member == 0 && r.outcome.is_ok())
            .count()
            >= 5
    });
    let status = {
        let endpoints = survivor_endpoints.clone();
        Sampler::start(
            Duration::from_millis(100),
            Duration::from_secs(60),
            move || etcd_status(&endpoints),
        )
    };
    // The same thing with etcd's own client: a loop of `etcdctl put`, each a fresh process with
    // every endpoint, the leader first.
    let etcdctl = {
        let endpoints: Vec<String> = std::iter::once(leader)
            .chain(survivors.iter().copied())
            .map(|i| cluster.members[i].endpoint())
            .collect();
        let mut n = 0;
        Sampler::start(
            Duration::from_millis(100),
            Duration::from_secs(60),
            move || {
                n += 1;
                let sent = monotonic_ns();
                (
                    sent,
                    etcdctl_put(&endpoints, CLIENT_TIMEOUT, &n.to_string()),
                )
            },
        )
    };
    // The survivors' raft transport: when does it notice that its streams from the leader broke?
    let survivor_logs: Vec<_> = survivors
        .iter()
        .map(|&i| cluster.members[i].server.log_path().to_path_buf())
        .collect();
    let leader_hex = format!("{old_leader:x}");
    let transport = {
        let (logs, hex) = (survivor_logs.clone(), leader_hex.clone());
        Sampler::start(
            Duration::from_millis(50),
            Duration::from_secs(60),
            move || {
                logs.iter()
                    .map(|log| {
                        stream_lost_reason(&std::fs::read_to_string(log).unwrap_or_default(), &hex)
                    })
                    .collect::<Vec<_>>()
            },
        )
    };
    let new_leader = move |s: &Vec<EtcdStatus>| {
        s.len() == 2 && s.iter().all(|s| s.leader != 0 && s.leader != old_leader)
    };

    let scenario = adopting_scenario(
        &[("leader", cluster.members[leader].server.pid())],
        "leader",
        action,
        "trigger = { at = \"1s\" }",
        "28s",
    );
    let mut fij = start_fij(&dir, &scenario);
    let t0 = ktime(&wait_injection(&mut fij, Duration::from_secs(10)));
    client.wait_for(
        CLIENT_TIMEOUT * 4,
        "a successful put on another member",
        |r| {
            r.iter()
                .any(|r| r.sent_ns > t0 && r.member != 0 && r.outcome.is_ok())
        },
    );
    status.wait_for(Duration::from_secs(15), "a new leader", |samples| {
        samples.iter().any(|(t, s)| *t > t0 && new_leader(s))
    });
    etcdctl.wait_for(
        CLIENT_TIMEOUT * 4,
        "an etcdctl put after the injection",
        |puts| puts.iter().any(|(_, (sent, r))| *sent > t0 && r.is_ok()),
    );
    // Both survivors' transports have noticed by now after a kill; after a crash, wait for
    // their own read timeout.
    transport.wait_for(
        Duration::from_secs(20),
        "both survivors' rafthttp to lose the leader's streams",
        |samples| {
            samples
                .last()
                .is_some_and(|(_, lost)| lost.iter().all(Option::is_some))
        },
    );
    let requests = client.stop();
    let samples = status.stop();
    let puts = etcdctl.stop();
    let transport = transport.stop();
    let fij = end_fij(fij);
    let t0 = assert_killed(&fij.log, cluster.members[leader].server.pid());

    let failure = requests
        .iter()
        .find(|r| r.done_ns > t0 && !r.outcome.is_ok())
        .expect("a failed request after the injection");
    let recovered = requests
        .iter()
        .find(|r| r.sent_ns > t0 && r.member != 0 && r.outcome.is_ok())
        .expect("a successful put on a survivor");
    let elected = samples
        .iter()
        .find(|(t, s)| *t > t0 && new_leader(s))
        .expect("a new leader");
    let etcdctl_failures = puts
        .iter()
        .filter(|(done, (_, r))| *done > t0 && r.is_err())
        .map(|(done, (sent, r))| (since(*sent, *done), r.clone().unwrap_err()))
        .collect();
    let etcdctl_ok_after = puts
        .iter()
        .find(|(_, (sent, r))| *sent > t0 && r.is_ok())
        .map(|(done, _)| since(t0, *done));
    // When: the first sample that saw the loss. Why: the log as it is now, because rafthttp
    // logs the reason on the line after the loss, and a sample may fall between the two lines.
    let stream_lost = survivor_logs
        .iter()
        .enumerate()
        .map(|(k, log)| {
            let (t, _) = transport.iter().find(|(_, lost)| lost[k].is_some())?;
            let log = std::fs::read_to_string(log).unwrap_or_default();
            Some((since(t0, *t), stream_lost_reason(&log, &leader_hex)?))
        })
        .collect();
    let observed = Observed {
        stream_lost,
        etcdctl_failures,
        etcdctl_ok_after,
        first_failure: failure.outcome.clone(),
        detected_after: since(t0, failure.done_ns),
        failed_over_after: since(t0, recovered.done_ns),
        elected_after: since(t0, elected.0),
        requests,
        t0,
        fij,
    };
    println!(
        "etcd {action} of the leader: the client's first failure {:?} {} after the injection \
         (timeout {}), its first put on a survivor {} after; both survivors report a new leader \
         {} after (election timeout {ELECTION_MS} ms)",
        observed.first_failure,
        ms(observed.detected_after),
        ms(CLIENT_TIMEOUT),
        ms(observed.failed_over_after),
        ms(observed.elected_after),
    );
    print!("{}", after_injection(&observed));
    println!(
        "  etcdctl put loop: {} put(s) failed after the injection {:?}; first put started after \
         it succeeded {} after",
        observed.etcdctl_failures.len(),
        observed
            .etcdctl_failures
            .iter()
            .map(|(d, e)| format!("after {}: {e}", ms(*d)))
            .collect::<Vec<_>>(),
        observed.etcdctl_ok_after.map_or("never".into(), ms),
    );
    for (k, lost) in observed.stream_lost.iter().enumerate() {
        match lost {
            Some((after, why)) => println!(
                "  survivor {}'s rafthttp lost the leader's stream {} after the injection: {why}",
                cluster.members[survivors[k]].name,
                ms(*after)
            ),
            None => println!("  survivor {k}'s rafthttp never logged the loss"),
        }
    }
    observed
}

/// Why rafthttp lost a stream it reads from peer `hex`, from a member's log: the error of its
/// `failed to read HEX on stream … (ERROR)` line, once it has logged `lost the TCP streaming
/// connection with peer HEX (stream … reader)`.
fn stream_lost_reason(log: &str, hex: &str) -> Option<String> {
    let lost = format!("lost the TCP streaming connection with peer {hex}");
    log.lines()
        .find(|l| l.contains(&lost) && l.contains("reader"))?;
    let failed = format!("failed to read {hex} on stream");
    let why = log
        .lines()
        .find(|l| l.contains(&failed))
        .and_then(|l| Some(l[l.find('(')? + 1..l.rfind(')')?].to_owned()))
        .unwrap_or_else(|| "(no `failed to read` line)".into());
    Some(why)
}

/// The client's requests after the injection, for failure messages.
fn after_injection(seen: &Observed) -> String {
    let first_ok_elsewhere = seen
        .requests
        .iter()
        .position(|r| r.sent_ns > seen.t0 && r.member != 0 && r.outcome.is_ok())
        .map_or(seen.requests.len(), |i| i + 1);
    seen.requests[..first_ok_elsewhere]
        .iter()
        .filter(|r| r.done_ns > seen.t0)
        .map(|r| {
            format!(
                "  request to member #{} sent at +{} ms, {:?} at +{} ms\n",
                r.member,
                (r.sent_ns as i64 - seen.t0 as i64) / 1_000_000,
                r.outcome,
                since(seen.t0, r.done_ns).as_millis(),
            )
        })
        .collect()
}

/// Bounds common to kill and crash: the cluster elects a new leader and the client gets its puts
/// through a survivor, within a few election timeouts of the client's detection.
fn assert_recovers(seen: &Observed) {
    let etcdctl_ok = seen
        .etcdctl_ok_after
        .expect("an etcdctl put after the injection");
    assert!(
        etcdctl_ok < Duration::from_secs(15),
        "etcdctl got a put through only {etcdctl_ok:?} after the injection"
    );
    assert!(
        seen.elected_after < Duration::from_secs(10),
        "no new leader within 10 s: {:?}",
        seen.elected_after
    );
    assert!(
        seen.failed_over_after < seen.detected_after + Duration::from_secs(10),
        "the client detected the failure after {:?} but got a put through only after {:?}",
        seen.detected_after,
        seen.failed_over_after
    );
}

/// kill: the client's connection to the leader fails at once (EOF, reset or refused), long before
/// its timeout.
#[test]
fn etcd_kill_leader_client_fails_over_at_once() {
    let seen = fail_leader("kill");
    let at_once = matches!(
        seen.first_failure,
        Outcome::Eof
            | Outcome::Error(libc::ECONNRESET)
            | Outcome::Error(libc::EPIPE)
            | Outcome::Error(libc::ECONNREFUSED)
    );
    assert!(
        at_once,
        "the killed leader's connection must end with EOF/RST/refused, not {:?}\n{}",
        seen.first_failure,
        after_injection(&seen)
    );
    assert!(
        seen.detected_after < CLIENT_TIMEOUT / 3,
        "the client took {:?} to notice the killed leader (its timeout is {CLIENT_TIMEOUT:?})",
        seen.detected_after
    );
    assert_recovers(&seen);
    // The survivors' raft transport reads the dead leader's FIN at once too (raft itself still
    // waits for its election timeout: see `elected_after`).
    for lost in &seen.stream_lost {
        let (after, why) = lost
            .as_ref()
            .expect("both survivors lose the leader's stream");
        assert!(
            *after < Duration::from_secs(1) && (why.contains("EOF") || why.contains("reset")),
            "a survivor's rafthttp lost the killed leader's stream after {after:?}: {why}"
        );
    }
    assert_eq!(
        seen.fij.log.end_reason(),
        EndReason::TargetsExited,
        "{}",
        seen.fij
    );
}

/// crash: the client's request to the crashed leader gets no answer at all, no FIN, no RST; the
/// client notices only when its own timeout expires.
#[test]
fn etcd_crash_leader_client_notices_only_by_its_timeout() {
    if fij_tests::tcx::refused_without_tcx("action = \"crash\"") {
        return;
    }
    let seen = fail_leader("crash");
    assert_eq!(
        seen.first_failure,
        Outcome::TimedOut,
        "the crashed leader must say nothing\n{}",
        after_injection(&seen)
    );
    assert!(
        seen.detected_after.as_secs_f64() >= 0.8 * CLIENT_TIMEOUT.as_secs_f64(),
        "the client noticed the crash after {:?}, before 0.8 × its timeout {CLIENT_TIMEOUT:?}",
        seen.detected_after
    );
    assert_recovers(&seen);
    // The survivors' raft transport hears nothing either: it gives up on the leader's streams only
    // at its own read timeout (raft has usually elected a new leader long before).
    for lost in &seen.stream_lost {
        let (after, why) = lost
            .as_ref()
            .expect("both survivors lose the leader's stream");
        assert!(
            after.as_secs_f64() >= 0.8 * RAFTHTTP_READ_TIMEOUT.as_secs_f64()
                && why.contains("timeout"),
            "a survivor's rafthttp lost the crashed leader's stream after {after:?} ({why}); its \
             read timeout is {RAFTHTTP_READ_TIMEOUT:?}"
        );
    }
    assert!(!seen.fij.log.records("silenced").is_empty(), "{}", seen.fij);
    assert_eq!(
        seen.fij.log.end_reason(),
        EndReason::Interrupted,
        "{}",
        seen.fij
    );
}
