//! Real distributed systems for the `real_systems` tests: a Redis primary/replica pair, a
//! 3-member etcd cluster and an Open MPI job, each started by the test on 127.0.0.1, on free
//! ports, with its data in the test's temp dir.
//!
//! Every process started here is owned by a guard ([`Server`], [`MpiJob`]) that SIGKILLs it and
//! all its descendants when dropped, also when the test panics. Every loop is bounded. A missing
//! program (redis-server, etcd, mpirun, …) is a test failure that says which Debian package
//! `cargo xtask setup` installs it from; nothing is skipped.
use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub use fij_common::log::monotonic_ns;
use serde_json::Value;

use crate::{Ended, wait_until};

// ---------------------------------------------------------------------------------------------
// Tools, ports, clocks.

/// The absolute path of `program` on PATH; panics, naming the Debian package, if it is missing.
pub fn require_tool(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{program}` is not installed: run `cargo xtask setup` (it installs the Debian \
                 package {package}), or `apt-get install {package}`"
            )
        })
}

/// `n` distinct TCP ports of 127.0.0.1 that were free a moment ago (all bound at once, then
/// released, so they differ from each other).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// `to - from` (monotonic nanoseconds) as a Duration, 0 if `to` is earlier.
pub fn elapsed_between(from_ns: u64, to_ns: u64) -> Duration {
    Duration::from_nanos(to_ns.saturating_sub(from_ns))
}

/// Runs `command` to completion with its output captured, killing it after `timeout` (then
/// `None`).
pub fn output_within(command: &mut Command, timeout: Duration) -> Option<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    // Drain both pipes in threads so a chatty command cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let give_up = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            break Some(status);
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// Parent pid of `pid`, from /proc/PID/stat.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every live descendant of `pid` (children, grandchildren, …), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = crate::all_pids()
        .into_iter()
        .filter_map(|p| Some((p, parent_of(p)?)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

fn sigkill(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions; the pid is one of our own processes.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// A long-running program started by a test (a server, mpirun), its stdout and stderr going to a
/// log file. Dropping it SIGKILLs it and all its descendants.
pub struct Server {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    /// Pids to SIGKILL too on drop (processes that may have been reparented away from us), each
    /// with the program it must still be running (checked against /proc/PID/exe, so a recycled
    /// pid is never killed).
    extra: Arc<Mutex<Vec<(u32, PathBuf)>>>,
}

impl Server {
    /// Starts `command` (in its own process group) with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Self {
        let file = File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = file.try_clone().expect("dup of the log file");
        command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        Server {
            name: name.to_owned(),
            child: Some(child),
            log,
            extra: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server reaped").id()
    }

    /// Everything the program wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Also SIGKILL `pid` (a process that may outlive this one's tree, e.g. reparented) on drop,
    /// if it still runs the program it runs now.
    pub fn also_kill(&self, pid: u32) {
        if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            self.extra.lock().unwrap().push((pid, exe));
        }
    }

    /// How it ended, if it has (reaps it).
    pub fn try_ended(&mut self) -> Option<Ended> {
        let child = self.child.as_mut().expect("server reaped");
        child.try_wait().expect("waitpid").map(Ended::from)
    }

    /// Waits at most `timeout` for it to end: how, and when (monotonic ns, within the 5 ms
    /// polling period). `None` if it is still running.
    pub fn wait_end(&mut self, timeout: Duration) -> Option<(Ended, u64)> {
        let give_up = Instant::now() + timeout;
        loop {
            if let Some(ended) = self.try_ended() {
                return Some((ended, monotonic_ns()));
            }
            if Instant::now() > give_up {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILLs it and every descendant, and reaps it.
    pub fn kill_all(&mut self) {
        if let Some(mut child) = self.child.take() {
            for pid in descendants(child.id()) {
                sigkill(pid);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for (pid, exe) in self.extra.lock().unwrap().drain(..) {
            if std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .as_deref()
                == Some(&exe)
            {
                sigkill(pid);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            eprintln!("{}: its output is in {}", self.name, self.log.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling.

/// A thread that calls a probe every `period` until stopped (or for at most `max`), keeping
/// each result with the monotonic time at which the probe returned.
pub struct Sampler<T: Clone + Send + 'static> {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(u64, T)>>>,
    handle: Option<JoinHandle<()>>,
}

impl<T: Clone + Send + 'static> Sampler<T> {
    pub fn start(
        period: Duration,
        max: Duration,
        mut probe: impl FnMut() -> T + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stopped, shared) = (stop.clone(), samples.clone());
        let handle = std::thread::spawn(move || {
            let give_up = Instant::now() + max;
            while !stopped.load(Ordering::SeqCst) && Instant::now() < give_up {
                let value = probe();
                shared.lock().unwrap().push((monotonic_ns(), value));
                std::thread::sleep(period);
            }
        });
        Sampler {
            stop,
            samples,
            handle: Some(handle),
        }
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<(u64, T)> {
        self.samples.lock().unwrap().clone()
    }

    /// Polls (every 20 ms, at most `timeout`) until `done` holds for the samples so far.
    pub fn wait_for(&self, timeout: Duration, what: &str, done: impl Fn(&[(u64, T)]) -> bool) {
        wait_until(timeout, what, || {
            done(&self.samples.lock().unwrap()).then_some(())
        });
    }

    /// Stops the thread and returns every sample.
    pub fn stop(mut self) -> Vec<(u64, T)> {
        self.halt();
        self.samples()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl<T: Clone + Send + 'static> Drop for Sampler<T> {
    fn drop(&mut self) {
        self.halt();
    }
}

// ---------------------------------------------------------------------------------------------
// Redis.

/// A Redis primary and its replica on 127.0.0.1, without persistence (`--save ""`,
/// `--appendonly no`, diskless sync both ways), the replica with `--repl-timeout`.
pub struct RedisPair {
    pub primary: Server,
    pub replica: Server,
    pub primary_port: u16,
    pub replica_port: u16,
    pub repl_timeout: Duration,
}

/// The arguments of a Redis server without persistence, listening on `port` of 127.0.0.1,
/// with `dir` as its working directory (nothing is written there with these settings).
pub fn redis_args(port: u16, dir: &Path, repl_timeout_s: u64) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir.to_str().expect("UTF-8 temp dir"),
        // The primary pings its replicas every second (default 10 s, more than the timeout).
        "--repl-ping-replica-period",
        "1",
        "--repl-timeout",
        &repl_timeout_s.to_string(),
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
        "--repl-diskless-load",
        "on-empty-db",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl RedisPair {
    /// Starts the pair (logs `redis-primary.log`, `redis-replica.log` in `dir`) and waits until
    /// the replica reports `master_link_status:up`.
    pub fn start(dir: &Path, repl_timeout: Duration) -> Self {
        let server = require_tool("redis-server", "redis-server");
        require_tool("redis-cli", "redis-tools");
        let ports = free_ports(2);
        let (primary_port, replica_port) = (ports[0], ports[1]);
        let timeout_s = repl_timeout.as_secs().max(1);
        let mut command = Command::new(&server);
        command.args(redis_args(primary_port, dir, timeout_s));
        let primary = Server::spawn("redis primary", command, dir.join("redis-primary.log"));
        wait_until(
            Duration::from_secs(10),
            "the Redis primary to answer",
            || redis_info(primary_port).filter(|i| i.contains("role:master")),
        );
        let mut command = Command::new(&server);
        command
            .args(redis_args(replica_port, dir, timeout_s))
            .args(["--replicaof", "127.0.0.1", &primary_port.to_string()]);
        let replica = Server::spawn("redis replica", command, dir.join("redis-replica.log"));
        let pair = RedisPair {
            primary,
            replica,
            primary_port,
            replica_port,
            repl_timeout,
        };
        wait_until(
            Duration::from_secs(15),
            "the replica's master_link_status:up",
            || (pair.link_status().as_deref() == Some("up")).then_some(()),
        );
        pair
    }

    /// The replica's `master_link_status` (`up`, `down`), or None if it did not answer.
    pub fn link_status(&self) -> Option<String> {
        redis_link_status(self.replica_port)
    }
}

/// `redis-cli -p PORT INFO replication` (None if it fails or takes more than 2 s).
pub fn redis_info(port: u16) -> Option<String> {
    let out = output_within(
        Command::new("redis-cli").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "INFO",
            "replication",
        ]),
        Duration::from_secs(2),
    )?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of `key` in `INFO` output (`key:value` lines).
pub fn info_field(info: &str, key: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(key)?.strip_prefix(':'))
        .map(str::to_owned)
}

/// The replica's `master_link_status` on `port`.
pub fn redis_link_status(port: u16) -> Option<String> {
    info_field(&redis_info(port)?, "master_link_status")
}

// ---------------------------------------------------------------------------------------------
// etcd.

/// One member of a test cluster.
pub struct EtcdMember {
    pub name: String,
    /// The address it listens on (127.0.0.1, or its network namespace's).
    pub ip: Ipv4Addr,
    pub client_port: u16,
    pub peer_port: u16,
    pub server: Server,
}

impl EtcdMember {
    /// `IP:CLIENT_PORT`, as etcdctl's `--endpoints` takes it.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.ip, self.client_port)
    }

    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.client_port))
    }
}

/// What `etcdctl endpoint status` says of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdStatus {
    pub endpoint: String,
    pub member_id: u64,
    pub leader: u64,
    pub raft_term: u64,
}

/// An etcd cluster on 127.0.0.1, every member with its own data dir under the test's dir.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
}

impl EtcdCluster {
    /// Starts `n` members `m1`…`mN` with the given raft timing (ms) and waits until every member
    /// reports the same leader.
    pub fn start(dir: &Path, n: usize, heartbeat_ms: u64, election_ms: u64) -> Self {
        let hosts = vec![(Vec::new(), Ipv4Addr::LOCALHOST); n];
        Self::start_on(dir, &hosts, heartbeat_ms, election_ms)
    }

    /// Starts one member per host: (a command prefix that runs it there, e.g. `ip netns exec
    /// NS`, and the address it listens on), and waits for a leader.
    pub fn start_on(
        dir: &Path,
        hosts: &[(Vec<String>, Ipv4Addr)],
        heartbeat_ms: u64,
        election_ms: u64,
    ) -> Self {
        let n = hosts.len();
        let etcd = require_tool("etcd", "etcd-server");
        require_tool("etcdctl", "etcd-client");
        let ports = free_ports(2 * n);
        let peer_url = |i: usize| format!("http://{}:{}", hosts[i].1, ports[2 * i + 1]);
        let client_url = |i: usize| format!("http://{}:{}", hosts[i].1, ports[2 * i]);
        let initial_cluster: Vec<String> = (0..n)
            .map(|i| format!("m{}={}", i + 1, peer_url(i)))
            .collect();
        let token = format!("fij-test-{}", dir.file_name().unwrap().to_string_lossy());
        let members = (0..n)
            .map(|i| {
                let name = format!("m{}", i + 1);
                let mut command = match hosts[i].0.split_first() {
                    Some((program, args)) => {
                        let mut c = Command::new(program);
                        c.args(args).arg(&etcd);
                        c
                    }
                    None => Command::new(&etcd),
                };
                command
                    .args(["--name", &name, "--data-dir"])
                    .arg(dir.join(format!("{name}.etcd")))
                    .args(["--listen-peer-urls", &peer_url(i)])
                    .args(["--initial-advertise-peer-urls", &peer_url(i)])
                    .args(["--listen-client-urls", &client_url(i)])
                    .args(["--advertise-client-urls", &client_url(i)])
                    .args(["--initial-cluster", &initial_cluster.join(",")])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", &token])
                    .args(["--heartbeat-interval", &heartbeat_ms.to_string()])
                    .args(["--election-timeout", &election_ms.to_string()]);
                let server = Server::spawn(
                    &format!("etcd {name}"),
                    command,
                    dir.join(format!("etcd-{name}.log")),
                );
                EtcdMember {
                    name,
                    ip: hosts[i].1,
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    server,
                }
            })
            .collect();
        let cluster = EtcdCluster { members };
        cluster.wait_leader(Duration::from_secs(30));
        cluster
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::endpoint).collect()
    }

    /// Index of the member every member agrees is the leader, waiting at most `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let endpoints = self.endpoints();
        wait_until(
            timeout,
            "every etcd member to report the same leader",
            || {
                let status = etcd_status(&endpoints);
                if status.len() != self.members.len() {
                    return None;
                }
                let leader = status[0].leader;
                if leader == 0 || status.iter().any(|s| s.leader != leader) {
                    return None;
                }
                status.iter().position(|s| s.member_id == leader)
            },
        )
    }
}

/// `etcdctl endpoint status -w json` of `endpoints`: the endpoints that answered within 1 s.
pub fn etcd_status(endpoints: &[String]) -> Vec<EtcdStatus> {
    let Some(out) = output_within(
        Command::new("etcdctl")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["--dial-timeout=1s", "--command-timeout=1s"])
            .args(["endpoint", "status", "--write-out=json"]),
        Duration::from_secs(5),
    ) else {
        return Vec::new();
    };
    parse_etcd_status(&String::from_utf8_lossy(&out.stdout))
}

/// The statuses in `etcdctl endpoint status --write-out=json` output (an array of
/// `{"Endpoint": …, "Status": {"header": {"member_id": …}, "leader": …, "raftTerm": …}}`).
pub fn parse_etcd_status(json: &str) -> Vec<EtcdStatus> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(json.trim()) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let status = &item["Status"];
            Some(EtcdStatus {
                endpoint: item["Endpoint"].as_str()?.to_owned(),
                member_id: status["header"]["member_id"].as_u64()?,
                leader: status["leader"].as_u64()?,
                raft_term: status["raftTerm"].as_u64()?,
            })
        })
        .collect()
}

/// `etcdctl --endpoints=E1,E2,… --command-timeout=T put KEY VALUE`, a fresh client process (it
/// dials every endpoint and picks one): Ok, or Err with the last line of its stderr.
pub fn etcdctl_put(endpoints: &[String], timeout: Duration, value: &str) -> Result<(), String> {
    let out = output_within(
        Command::new("etcdctl")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--command-timeout={}ms", timeout.as_millis()))
            .args(["--dial-timeout=2s", "put", "fij-etcdctl-key", value]),
        timeout + Duration::from_secs(10),
    )
    .ok_or_else(|| "etcdctl did not end".to_string())?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(stderr.lines().last().unwrap_or("").to_owned())
}

/// What one request of [`EtcdClient`] ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// HTTP 200.
    Ok,
    /// Another HTTP status (etcd's error in the body).
    Http(u16, String),
    /// The connection was closed by the server (read returned 0): its FIN.
    Eof,
    /// An error from the stack: ECONNRESET, ECONNREFUSED, EPIPE, …
    Error(i32),
    /// No answer within the client's timeout (connect or read).
    TimedOut,
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        *self == Outcome::Ok
    }

    fn from_io(e: &std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::ETIMEDOUT) => Outcome::TimedOut,
            Some(errno) => Outcome::Error(errno),
            None if e.kind() == std::io::ErrorKind::TimedOut => Outcome::TimedOut,
            None if e.kind() == std::io::ErrorKind::UnexpectedEof => Outcome::Eof,
            None => Outcome::Error(0),
        }
    }
}

/// One request of [`EtcdClient`]: when it was sent and answered (monotonic ns), to which member,
/// with what outcome.
#[derive(Clone, Debug)]
pub struct Request {
    pub sent_ns: u64,
    pub done_ns: u64,
    pub member: usize,
    pub outcome: Outcome,
}

/// A tiny etcd client, the way a real one behaves: it keeps ONE connection (HTTP/1.1 keep-alive,
/// etcd's JSON gateway `POST /v3/kv/put`) to its current member, puts a key every `period`, and
/// only when a request fails (or gets no answer within `timeout`) does it drop the connection
/// and move on to the next member, in order.
pub struct EtcdClient {
    sampler: Sampler<Request>,
}

impl EtcdClient {
    /// Starts the client thread on `members` (client addresses), beginning with the first;
    /// it runs for at most `max`.
    pub fn start(
        members: Vec<SocketAddr>,
        timeout: Duration,
        period: Duration,
        max: Duration,
    ) -> Self {
        let mut current = 0usize;
        let mut conn: Option<TcpStream> = None;
        let mut n = 0u64;
        let sampler = Sampler::start(period, max, move || {
            n += 1;
            let sent_ns = monotonic_ns();
            let member = current;
            let outcome = put_once(&mut conn, members[member], timeout, n);
            if !outcome.is_ok() {
                conn = None;
                current = (current + 1) % members.len();
            }
            Request {
                sent_ns,
                done_ns: monotonic_ns(),
                member,
                outcome,
            }
        });
        EtcdClient { sampler }
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Request> {
        self.sampler.samples().into_iter().map(|(_, r)| r).collect()
    }

    /// Polls (every 20 ms, at most `timeout`) until `done` holds for the requests so far.
    pub fn wait_for(&self, timeout: Duration, what: &str, done: impl Fn(&[Request]) -> bool) {
        wait_until(timeout, what, || done(&self.requests()).then_some(()));
    }

    pub fn stop(self) -> Vec<Request> {
        self.sampler.stop().into_iter().map(|(_, r)| r).collect()
    }
}

fn put_once(conn: &mut Option<TcpStream>, addr: SocketAddr, timeout: Duration, n: u64) -> Outcome {
    if conn.is_none() {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                stream.set_read_timeout(Some(timeout)).unwrap();
                stream.set_write_timeout(Some(timeout)).unwrap();
                stream.set_nodelay(true).unwrap();
                *conn = Some(stream);
            }
            Err(e) => return Outcome::from_io(&e),
        }
    }
    let stream = conn.as_mut().unwrap();
    // key "fij", value "n" (base64 by the gateway's JSON mapping of bytes).
    let body = format!(
        "{{\"key\":\"{}\",\"value\":\"{}\"}}",
        base64("fij-test-key".as_bytes()),
        base64(n.to_string().as_bytes())
    );
    let request = format!(
        "POST /v3/kv/put HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return Outcome::from_io(&e);
    }
    read_http_response(stream)
}

/// Reads one HTTP/1.1 response (Content-Length or chunked body).
fn read_http_response(stream: &mut TcpStream) -> Outcome {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Outcome::Eof,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Outcome::from_io(&e),
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    let complete = |buf: &[u8]| -> bool {
        let body = &buf[header_end..];
        match length {
            Some(n) => body.len() >= n,
            None if chunked => find(body, b"0\r\n\r\n").is_some(),
            None => true,
        }
    };
    while !complete(&buf) {
        match stream.read(&mut chunk) {
            Ok(0) => return Outcome::Eof,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Outcome::from_io(&e),
        }
    }
    if status == 200 {
        Outcome::Ok
    } else {
        Outcome::Http(
            status,
            String::from_utf8_lossy(&buf[header_end..]).into_owned(),
        )
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Open MPI.

/// Compiles the C `source` with `mpicc -O2` into `dir/name` and returns the binary's path.
pub fn build_mpi_program(dir: &Path, name: &str, source: &str) -> PathBuf {
    let mpicc = require_tool("mpicc", "libopenmpi-dev");
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let bin = dir.join(name);
    let out = output_within(
        Command::new(mpicc).arg("-O2").arg("-o").arg(&bin).arg(&src),
        Duration::from_secs(120),
    )
    .expect("mpicc took more than 2 minutes");
    assert!(
        out.status.success(),
        "mpicc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// An `mpirun` job over the TCP BTL (`--mca btl tcp,self --mca pml ob1`): on loopback
/// ([`MpiJob::start`]) or across two "nodes" ([`MpiJob::start_two_nodes`]). The program must
/// print `rank R pid P` once per rank.
pub struct MpiJob {
    pub mpirun: Server,
    pub program: PathBuf,
    pub np: usize,
}

/// How long mpirun lets the surviving ranks of a one-machine job run after one died, before it
/// SIGTERMs them (`odls_base_sigkill_timeout`; Open MPI's default is 1 s). What the survivors
/// report in that time is what the tests compare between a kill and a crash; with 1 s, a slow
/// machine (the kernel lab's guests, ~17× slower) had a survivor's report cut by the SIGTERM
/// (mpirun: "ORTE_ERROR_LOG: Data unpack had inadequate space in file … show_help.c").
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// The `mpirun` options of a job on this machine over loopback (the rank program follows).
pub fn mpirun_args(np: usize) -> Vec<String> {
    [
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &np.to_string(),
        "--mca",
        "btl",
        "tcp,self",
        "--mca",
        "btl_tcp_if_include",
        "lo",
        "--mca",
        "oob_tcp_if_include",
        "lo",
        "--mca",
        "pml",
        "ob1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// mpirun's TCP keepalive on its connections to remote daemons (`oob_tcp_keepalive_*`; Open
/// MPI's defaults are 300 s, 20 s, 9 probes: about 8 minutes to notice a dead node).
#[derive(Clone, Copy, Debug)]
pub struct OobKeepalive {
    pub time_s: u32,
    pub intvl_s: u32,
    pub probes: u32,
}

impl OobKeepalive {
    /// The least time a silent peer takes to be declared dead: the unanswered probes (the first
    /// one goes out up to `time_s` after the last traffic).
    pub fn min_detection(&self) -> Duration {
        Duration::from_secs((self.intvl_s * self.probes).into())
    }

    /// About the most it takes: idle time and the probes, plus one interval of timer slack
    /// (observed: 4.2-5.0 s for 1 s / 1 s / 4 probes).
    pub fn max_detection(&self) -> Duration {
        Duration::from_secs((self.time_s + self.intvl_s * (self.probes + 1)).into())
    }
}

impl MpiJob {
    /// `np` ranks on this machine, over loopback. When a rank dies, mpirun gives the others
    /// [`KILL_GRACE`] before its SIGTERM (Open MPI's default: 1 s).
    pub fn start(dir: &Path, np: usize, program: &Path, args: &[&str]) -> Self {
        let mut mpirun = mpirun_args(np);
        mpirun.extend([
            "--mca".into(),
            "odls_base_sigkill_timeout".into(),
            KILL_GRACE.as_secs().to_string(),
        ]);
        Self::spawn(dir, mpirun, &[], np, program, args)
    }

    /// `slots_a` ranks on node A (this network namespace) and `slots_b` on node B (`node`'s
    /// namespace, where mpirun starts an `orted` through [`NodeB`]'s agent), by slot: ranks
    /// 0..slots_a on A, the rest on B.
    pub fn start_two_nodes(
        dir: &Path,
        node: &NodeB,
        slots: (usize, usize),
        keepalive: OobKeepalive,
        program: &Path,
        args: &[&str],
    ) -> Self {
        let hostfile = dir.join("hostfile");
        std::fs::write(
            &hostfile,
            format!(
                "{} slots={}\n{} slots={}\n",
                node.host_addr, slots.0, node.ns_addr, slots.1
            ),
        )
        .expect("writing the hostfile");
        let np = slots.0 + slots.1;
        let net = node.cidr();
        let mut mpirun: Vec<String> = [
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            &np.to_string(),
            "--hostfile",
            hostfile.to_str().unwrap(),
            "--mca",
            "plm_rsh_agent",
            node.agent.to_str().unwrap(),
            "--mca",
            "btl",
            "tcp,self",
            "--mca",
            "btl_tcp_if_include",
            &net,
            "--mca",
            "oob_tcp_if_include",
            &net,
            "--mca",
            "pml",
            "ob1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (name, value) in [
            ("oob_tcp_keepalive_time", keepalive.time_s),
            ("oob_tcp_keepalive_intvl", keepalive.intvl_s),
            ("oob_tcp_keepalive_probes", keepalive.probes),
        ] {
            mpirun.extend(["--mca".into(), name.into(), value.to_string()]);
        }
        let env = [
            ("FIJ_NODE_NETNS", node.netns.clone()),
            ("FIJ_NODE_ADDR", node.host_addr.to_string()),
        ];
        Self::spawn(dir, mpirun, &env, np, program, args)
    }

    fn spawn(
        dir: &Path,
        mpirun_args: Vec<String>,
        env: &[(&str, String)],
        np: usize,
        program: &Path,
        args: &[&str],
    ) -> Self {
        let mpirun = require_tool("mpirun", "openmpi-bin");
        let mut command = Command::new(mpirun);
        command
            .args(mpirun_args)
            .arg(program)
            .args(args)
            .current_dir(dir)
            // Open MPI's session directory (and PMIx's sockets) in the test's dir, not in /tmp.
            .env("TMPDIR", dir)
            .envs(env.iter().map(|(k, v)| (k, v)));
        MpiJob {
            mpirun: Server::spawn("mpirun", command, dir.join("mpirun.log")),
            program: program.to_path_buf(),
            np,
        }
    }

    /// The pid of the `orted` mpirun started on node B (through the agent), once it runs. It and
    /// the agent are also killed when the job is dropped.
    pub fn wait_daemon_pid(&self, timeout: Duration) -> u32 {
        let mpirun = self.mpirun.pid();
        let pid = wait_until(timeout, "the orted of node B", || {
            descendants(mpirun).into_iter().find(|&p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "orted")
            })
        });
        self.mpirun.also_kill(pid);
        let agent = parent_of(pid).unwrap_or(0);
        self.mpirun.also_kill(agent);
        // The agent's child must be orted itself (bash exec'd it): then only orted holds the
        // agent's connection, and node B's "sshd" dies with it.
        assert_eq!(
            parent_of(agent),
            Some(mpirun),
            "orted {pid} must be the node agent's own child, under mpirun {mpirun}"
        );
        pid
    }

    /// The pid of every rank, by rank (from the `rank R pid P` lines), once all have printed
    /// theirs. Each is also killed when the job is dropped.
    pub fn wait_rank_pids(&self, timeout: Duration) -> Vec<u32> {
        let pids = wait_until(timeout, "every rank's `rank R pid P` line", || {
            let mut pids = vec![0u32; self.np];
            for line in self.mpirun.log_text().lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if let ["rank", rank, "pid", pid] = words[..] {
                    let (rank, pid): (usize, u32) = (rank.parse().ok()?, pid.parse().ok()?);
                    *pids.get_mut(rank)? = pid;
                }
            }
            pids.iter().all(|&p| p != 0).then_some(pids)
        });
        for &pid in &pids {
            self.mpirun.also_kill(pid);
        }
        pids
    }

    pub fn output(&self) -> String {
        self.mpirun.log_text()
    }
}

// ---------------------------------------------------------------------------------------------
// A second node for MPI.

/// The ssh stand-in of [`NodeB`], C compiled with `mpicc`: mpirun runs it as `AGENT HOST CMD…`
/// (`plm_rsh_agent`) to start its daemon on HOST. It listens on node A's address, starts
/// `ip netns exec NETNS unshare --uts AGENT --remote ADDR PORT NAME CMD` (the same binary, in
/// node B's namespace, with its own hostname), which connects back to it and then becomes CMD
/// (orted; bash execs the last command of mpirun's shell list), so the connection is orted's. Then the agent only reads that connection, like
/// an ssh client its session: it exits when the connection ends (0 if the daemon exited 0, else
/// 255: mpirun then declares the daemon lost), and never because its child died -- a node that
/// loses power takes its sshd with it, and the ssh client on the other node hears nothing.
const NODE_AGENT_C: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static char *join(int n, char **words) {
    size_t len = 1;
    for (int i = 0; i < n; i++) len += strlen(words[i]) + 1;
    char *s = calloc(len, 1);
    for (int i = 0; i < n; i++) { if (i) strcat(s, " "); strcat(s, words[i]); }
    return s;
}

int main(int argc, char **argv) {
    if (argc >= 6 && strcmp(argv[1], "--remote") == 0) {
        if (sethostname(argv[4], strlen(argv[4])) != 0) perror("node-agent: sethostname");
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
        inet_pton(AF_INET, argv[2], &a.sin_addr);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("node-agent: connect"); return 255; }
        /* mpirun's command is a shell list ("PATH=...; export PATH; ...; /usr/bin/orted ...");
           bash runs its last command by exec, so orted holds the connection, alone. */
        execl("/bin/bash", "bash", "-c", join(argc - 5, argv + 5), (char *)NULL);
        perror("node-agent: exec bash");
        return 255;
    }
    if (argc < 3) { fprintf(stderr, "usage: node-agent HOST CMD...\n"); return 255; }
    const char *ns = getenv("FIJ_NODE_NETNS"), *addr = getenv("FIJ_NODE_ADDR");
    if (!ns || !addr) { fprintf(stderr, "node-agent: FIJ_NODE_NETNS and FIJ_NODE_ADDR must be set\n"); return 255; }
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    inet_pton(AF_INET, addr, &a.sin_addr);
    socklen_t alen = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1) != 0) { perror("node-agent: listen"); return 255; }
    getsockname(l, (struct sockaddr *)&a, &alen);
    char port[16];
    snprintf(port, sizeof port, "%d", ntohs(a.sin_port));
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return 255;
    self[n] = 0;
    pid_t child = fork();
    if (child == 0) {
        close(l);
        execlp("ip", "ip", "netns", "exec", ns, "unshare", "--uts", self, "--remote", addr, port,
               "fij-node-b", join(argc - 2, argv + 2), (char *)NULL);
        perror("node-agent: exec ip");
        _exit(255);
    }
    struct pollfd p = { .fd = l, .events = POLLIN };
    if (poll(&p, 1, 30000) != 1) { fprintf(stderr, "node-agent: node B never connected\n"); return 255; }
    int c = accept(l, NULL, NULL);
    close(l);
    char buf[256];
    while (read(c, buf, sizeof buf) > 0) {}
    int status = 0;
    waitpid(child, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 255;
}
"#;

static NODE_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Node B of a two-node MPI job: a network namespace joined to this one by a veth pair (node A's
/// end `host_addr`, node B's `ns_addr`, a /24), and the agent mpirun starts its daemon there
/// with. Dropped: the pair and the namespace are deleted (after the processes in it are gone:
/// drop the job first).
pub struct NodeB {
    pub netns: String,
    pub host_if: String,
    pub host_addr: Ipv4Addr,
    pub ns_addr: Ipv4Addr,
    pub agent: PathBuf,
}

impl NodeB {
    /// Creates the namespace and the pair, and builds the agent into `dir`. Create it before
    /// starting fij: fij's `crash` silences traffic on the interfaces present when it starts.
    pub fn new(dir: &Path) -> Self {
        require_tool("ip", "iproute2");
        require_tool("unshare", "util-linux");
        let seq = NODE_SEQ.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // 10.233.X.0/24 (the crash tests use 10.231/16); interface names at most 15 characters.
        let third = ((pid * 7 + seq) % 250) as u8;
        let tag = format!("{}{}", pid % 100_000, seq % 100);
        let node = NodeB {
            netns: format!("fij-mpi-{pid}-{seq}"),
            host_if: format!("fjma{tag}"),
            host_addr: Ipv4Addr::new(10, 233, third, 1),
            ns_addr: Ipv4Addr::new(10, 233, third, 2),
            agent: build_mpi_program(dir, "node-agent", NODE_AGENT_C),
        };
        let ns_if = format!("fjmb{tag}");
        let (host, nsa) = (
            format!("{}/24", node.host_addr),
            format!("{}/24", node.ns_addr),
        );
        // The guard exists before anything is created, so a failure half-way is cleaned up.
        let steps: [&[&str]; 8] = [
            &["netns", "add", &node.netns],
            &[
                "link",
                "add",
                &node.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns_if,
            ],
            &["link", "set", &ns_if, "netns", &node.netns],
            &["addr", "add", &host, "dev", &node.host_if],
            &["link", "set", &node.host_if, "up"],
            &["-n", &node.netns, "addr", "add", &nsa, "dev", &ns_if],
            &["-n", &node.netns, "link", "set", &ns_if, "up"],
            &["-n", &node.netns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if let Err(e) = ip(step) {
                panic!("creating node B: {e}");
            }
        }
        node
    }

    /// The /24 of both nodes, for `btl_tcp_if_include` / `oob_tcp_if_include`.
    pub fn cidr(&self) -> String {
        let [a, b, c, _] = self.host_addr.octets();
        format!("{a}.{b}.{c}.0/24")
    }
}

impl Drop for NodeB {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn parses_etcdctl_status() {
        let json = r#"[{"Endpoint":"127.0.0.1:23791","Status":{"header":{"cluster_id":1,"member_id":13510015062231200447,"revision":1,"raft_term":2},"version":"3.4.23","leader":13510015062231200447,"raftTerm":2}}]"#;
        assert_eq!(
            parse_etcd_status(json),
            [EtcdStatus {
                endpoint: "127.0.0.1:23791".into(),
                member_id: 13510015062231200447,
                leader: 13510015062231200447,
                raft_term: 2,
            }]
        );
    }

    #[test]
    fn reads_info_fields() {
        let info = "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n";
        assert_eq!(
            info_field(info, "master_link_status").as_deref(),
            Some("up")
        );
        assert_eq!(info_field(info, "role").as_deref(), Some("slave"));
        assert_eq!(info_field(info, "nope"), None);
    }
}
