//! Redis replication: fij fails the PRIMARY one second after the campaign starts (`at = "1s"`);
//! the test polls the replica's `INFO replication` every 50 ms for `master_link_status`.
//!
//! - kill: the primary's sockets are closed by the OS; the replica reads EOF and reports the link
//!   down at once ("Connection with master lost").
//! - crash: nothing arrives any more, not even a FIN; the replica notices only when no data nor
//!   PING has come for `--repl-timeout` seconds ("MASTER timeout: no data nor PING received"),
//!   checked once a second by its replicationCron.
use std::time::Duration;

use fij_tests::{
    TempDir,
    systems::{RedisPair, Sampler},
};

use super::*;

/// The replica's `--repl-timeout` (the primary pings it every second).
const REPL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the test asks the replica.
const POLL: Duration = Duration::from_millis(50);

/// What the replica saw after the primary was failed.
struct Observed {
    /// From the injection to the first `master_link_status:down`.
    down_after: Duration,
    /// From the injection to the last `up` before that.
    last_up_after: Option<Duration>,
    replica_log: String,
    fij: FijOutput,
}

fn fail_primary(action: &str) -> Observed {
    let dir = TempDir::new(&format!("redis-{action}"));
    let pair = RedisPair::start(dir.path(), REPL_TIMEOUT);
    let port = pair.replica_port;
    let sampler = Sampler::start(POLL, Duration::from_secs(40), move || {
        fij_tests::systems::redis_link_status(port)
    });

    let scenario = adopting_scenario(
        &[("primary", pair.primary.pid())],
        "primary",
        action,
        "trigger = { at = \"1s\" }",
        "25s",
    );
    let mut fij = start_fij(&dir, &scenario);
    let t0 = ktime(&wait_injection(&mut fij, Duration::from_secs(10)));
    sampler.wait_for(
        REPL_TIMEOUT * 3,
        "the replica's master_link_status:down",
        |samples| {
            samples
                .iter()
                .any(|(t, s)| *t > t0 && s.as_deref() == Some("down"))
        },
    );
    let samples = sampler.stop();
    let fij = end_fij(fij);
    let t0 = assert_killed(&fij.log, pair.primary.pid());

    let down = samples
        .iter()
        .position(|(t, s)| *t > t0 && s.as_deref() == Some("down"))
        .expect("a down sample after the injection");
    let last_up = samples[..down]
        .iter()
        .rev()
        .find(|(_, s)| s.as_deref() == Some("up"))
        .map(|(t, _)| since(t0, *t));
    let observed = Observed {
        down_after: since(t0, samples[down].0),
        last_up_after: last_up,
        replica_log: pair.replica.log_text(),
        fij,
    };
    println!(
        "redis {action} of the primary: replica reports master_link_status:down {} after the \
         injection (last `up` {}), --repl-timeout {} s",
        ms(observed.down_after),
        observed
            .last_up_after
            .map_or("never".into(), |d| format!("{} after", ms(d))),
        REPL_TIMEOUT.as_secs()
    );
    observed
}

/// kill: the replica reads the primary's FIN and reports the link down well before its
/// repl-timeout, as a lost connection, not a timeout.
#[test]
fn redis_kill_primary_replica_sees_link_down_at_once() {
    let seen = fail_primary("kill");
    assert!(
        seen.down_after < REPL_TIMEOUT / 4,
        "the replica took {:?} to report the killed primary's link down (repl-timeout {:?})\n{}",
        seen.down_after,
        REPL_TIMEOUT,
        seen.replica_log
    );
    assert!(
        seen.replica_log.contains("Connection with master lost"),
        "{}",
        seen.replica_log
    );
    assert!(
        !seen.replica_log.contains("MASTER timeout"),
        "a kill must not be detected by the timeout:\n{}",
        seen.replica_log
    );
    assert_eq!(
        seen.fij.log.end_reason(),
        EndReason::TargetsExited,
        "{}",
        seen.fij
    );
    assert!(seen.fij.log.records("silenced").is_empty(), "{}", seen.fij);
}

/// crash: the link stays `up` for most of repl-timeout after the primary is gone, and goes down
/// only by the replica's own timeout (about repl-timeout, checked once a second).
#[test]
fn redis_crash_primary_replica_sees_link_down_only_after_repl_timeout() {
    if fij_tests::tcx::refused_without_tcx("action = \"crash\"") {
        return;
    }
    let seen = fail_primary("crash");
    let timeout = REPL_TIMEOUT.as_secs_f64();
    assert!(
        seen.down_after.as_secs_f64() >= 0.8 * timeout,
        "the replica reported the crashed primary's link down after {:?}, before 0.8 × \
         repl-timeout ({:?})\n{}",
        seen.down_after,
        REPL_TIMEOUT,
        seen.replica_log
    );
    let last_up = seen
        .last_up_after
        .expect("an `up` sample after the injection");
    assert!(
        last_up.as_secs_f64() >= 0.7 * timeout,
        "the link was last seen up {last_up:?} after the crash: it must stay up for most of \
         repl-timeout ({REPL_TIMEOUT:?})"
    );
    assert!(
        seen.down_after < REPL_TIMEOUT + Duration::from_secs(3),
        "the replica took {:?} (repl-timeout {:?})",
        seen.down_after,
        REPL_TIMEOUT
    );
    assert!(
        seen.replica_log
            .contains("MASTER timeout: no data nor PING received"),
        "the replica must detect the crash by its timeout:\n{}",
        seen.replica_log
    );
    // The primary's sockets were silenced: its listener and its connection to the replica.
    assert!(seen.fij.log.records("silenced").len() >= 2, "{}", seen.fij);
    assert_eq!(
        seen.fij.log.end_reason(),
        EndReason::Interrupted,
        "{}",
        seen.fij
    );
}
