//! The harness of fij's integration tests: one home for finding the binaries, writing scenarios,
//! running `fij` with a timeout, reading its JSONL log and looking at the kernel with `bpftool`.
//! `cargo xtask bench` and `cargo xtask demo` use it too (running fij, its log, Redis).
//!
//! The tests load real eBPF programs and signal real processes, so they run as root and one at a
//! time: `cargo xtask test` (which sets `FIJ_BIN` and passes `--test-threads=1`). Nothing here
//! skips a test: a missing binary or tool is a failure with a message saying what to run.
use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    fmt,
    io::Read,
    os::unix::{ffi::OsStrExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use fij_common::log::{EndReason, Record, TargetRecord};
use serde_json::Value;

pub mod leftovers;
pub mod net;
pub mod soak;
pub mod systems;
pub mod tcx;

/// How long one `fij` invocation may take before the test kills it and fails, and how long a
/// test waits for fij to arm: 30 s on a real machine, times [`slowdown`] in the kernel lab, where
/// fij's first start in a fresh guest (BTF parsed under emulation, beside a busy workload) took
/// up to 52 s on 6.12 under TCG.
pub fn fij_timeout() -> Duration {
    Duration::from_secs(30).mul_f64(slowdown())
}
/// How long the kernel may take to free fij's programs after fij is gone (it releases them
/// asynchronously, after RCU grace periods, so "right after exit" can still list them): 3 s on a
/// real machine, times [`slowdown`] in the kernel lab, where a 6.1 guest beside a CPU-bound load
/// still listed fij's raw tracepoint program 3 s after fij's exit (reliability's
/// `nth_hit_is_exact_under_load`, 2026-12-06; gone before the next test).
pub fn cleanup_timeout() -> Duration {
    Duration::from_secs(3).mul_f64(slowdown())
}
/// Polling period of every `wait_until`.
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// Binaries and paths.

/// How much slower this machine's CPUs are than those the tests' bounds on lateness were set
/// for: `FIJ_TEST_SLOWDOWN`, which the kernel lab (`cargo xtask vm`) measures at each boot (a
/// shell loop timed in the guest against the host, at least 1.0), since its emulated CPUs run
/// 5–10× slower while the guest's clock is the host's; 1.0 everywhere else, so the bounds hold
/// as written on real machines. Only bounds on how late fij is, or the kernel's asynchronous
/// release of what fij held, scale by it.
pub fn slowdown() -> f64 {
    match std::env::var("FIJ_TEST_SLOWDOWN") {
        Err(_) => 1.0,
        Ok(s) => s
            .parse::<f64>()
            .ok()
            .filter(|f| *f >= 1.0)
            .unwrap_or_else(|| panic!("FIJ_TEST_SLOWDOWN={s}: a factor of 1.0 or more")),
    }
}

/// The `fij` binary under test: `FIJ_BIN`, else `fij` next to the test executable's directory
/// (`target/debug/deps/../fij`). Panics if there is none: build it with `cargo xtask test`.
pub fn fij_bin() -> PathBuf {
    let path = match std::env::var_os("FIJ_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            let exe = std::env::current_exe().expect("the test executable's path");
            exe.parent()
                .and_then(Path::parent)
                .expect("target/<profile>/deps")
                .join("fij")
        }
    };
    assert!(
        path.is_file(),
        "the fij binary {} does not exist: run the tests with `cargo xtask test` (it builds fij and \
         sets FIJ_BIN), or build fij first (`cargo build -p fij`) and set FIJ_BIN to its absolute path",
        path.display()
    );
    path
}

/// The static `fij` of `cargo xtask dist`: `FIJ_DIST_BIN` (set by `cargo xtask test`), else
/// `target/dist/fij`. Panics if there is none: build it with `cargo xtask dist`.
pub fn fij_dist_bin() -> PathBuf {
    let path = std::env::var_os("FIJ_DIST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("the test executable's path");
            exe.ancestors()
                .nth(3)
                .expect("target/<profile>/deps/<test>")
                .join("dist/fij")
        });
    assert!(
        path.is_file(),
        "the static fij binary {} does not exist: run the tests with `cargo xtask test` (it runs \
         `cargo xtask dist` and sets FIJ_DIST_BIN), or run `cargo xtask dist` first",
        path.display()
    );
    path
}

/// The test workload binary, `fij-workload` of this package (expands `env!` in the test crate,
/// where Cargo defines `CARGO_BIN_EXE_fij-workload`).
#[macro_export]
macro_rules! workload {
    () => {
        $crate::Workload::new(env!("CARGO_BIN_EXE_fij-workload"))
    };
}

/// The `fij-workload` binary (see `src/bin/fij-workload.rs` for its modes).
#[derive(Clone, Debug)]
pub struct Workload(PathBuf);

impl Workload {
    pub fn new(path: &str) -> Self {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "the workload binary {} does not exist",
            path.display()
        );
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The argv of a workload run with these arguments, for a scenario's `command`.
    pub fn argv(&self, args: &[&dyn AsRef<OsStr>]) -> Vec<String> {
        std::iter::once(self.0.as_os_str())
            .chain(args.iter().map(|a| a.as_ref()))
            .map(|s| s.to_str().expect("UTF-8 argument").to_owned())
            .collect()
    }

    /// The same as a TOML array, for `command = ...`.
    pub fn command(&self, args: &[&dyn AsRef<OsStr>]) -> String {
        toml_array(&self.argv(args))
    }

    /// A process::Command running the workload directly (a bystander, not started by fij).
    pub fn spawn(&self, args: &[&dyn AsRef<OsStr>]) -> Child {
        Command::new(&self.0)
            .args(args.iter().map(|a| a.as_ref()))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning the workload")
    }
}

/// The workspace root (scenarios/ lives there).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// Temporary directories and files.

/// A fresh directory under the system temp dir, removed on drop unless the test is failing (then
/// it is kept and its path printed, for a look at the scenario, log and output files).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let template = std::env::temp_dir().join(format!("fij-test-{label}-XXXXXX"));
        let mut bytes = template.as_os_str().as_bytes().to_vec();
        bytes.push(0);
        // SAFETY: mkdtemp rewrites the X's of the NUL-terminated template we own.
        let ok = unsafe { !libc::mkdtemp(bytes.as_mut_ptr().cast()).is_null() };
        assert!(ok, "mkdtemp: {}", std::io::Error::last_os_error());
        bytes.pop();
        Self(PathBuf::from(OsStr::from_bytes(&bytes)))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Keeps the directory (not removed) and returns its path.
    pub fn keep(self) -> PathBuf {
        let path = self.0.clone();
        std::mem::forget(self);
        path
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Makes a FIFO named `name` in the directory.
    pub fn fifo(&self, name: &str) -> PathBuf {
        let path = self.join(name);
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(
            unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
            0,
            "mkfifo {}",
            path.display()
        );
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: its files are kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A TOML basic string with the text `s` (JSON string escapes are valid TOML escapes).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// A TOML array of strings.
pub fn toml_array<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<String> = items.iter().map(|s| toml_str(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

/// The `key=value` fields of a line a `fij stap` script prints for `record` (`fij-stap RECORD
/// key=value …`, fij-userspace/src/stap/output.rs); `None` for any other line.
pub fn stap_record<'a>(line: &'a str, record: &str) -> Option<BTreeMap<&'a str, &'a str>> {
    let rest = line.strip_prefix("fij-stap ")?.strip_prefix(record)?;
    let rest = rest.strip_prefix(' ')?;
    Some(
        rest.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect(),
    )
}

/// The lines of a text file (panics if it cannot be read).
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `line 1` … `line n`, as `write-lines` writes them.
pub fn numbered_lines(n: u64) -> Vec<String> {
    (1..=n).map(|i| format!("line {i}")).collect()
}

/// Prints `message` on the test run's own stderr, past libtest's capture of `print!` and
/// `eprint!`: what a passing test must show without `--nocapture` (a skip for a missing kernel
/// feature, a refusal asserted in place of a run).
pub fn tell(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Polling.

/// Polls `check` every 20 ms until it returns `Some`, for at most `timeout`; panics naming
/// `what` if it never does.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let give_up = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < give_up,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// State letter of a process (`R`, `S`, `Z`, …) from /proc/PID/stat, or None if it is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    matches!(process_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Process group of `pid`, from /proc/PID/stat.
pub fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// SIGKILLs the process group of a target that fij spawned (it leads its own group), if it is
/// still there: the clean-up of a failed or fij-less test, so no workload is left behind.
pub fn kill_spawned_target(pid: u32) {
    if process_group(pid) == Some(pid) {
        // SAFETY: kill on a process group led by a target fij spawned.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(
        unsafe { libc::kill(pid as i32, signal) },
        0,
        "kill({pid}, {signal})"
    );
}

/// How a process ended: exit code or signal number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

impl From<std::process::ExitStatus> for Ended {
    fn from(status: std::process::ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Ended::Code(code),
            (None, Some(sig)) => Ended::Signal(sig),
            (None, None) => unreachable!("an exit status is a code or a signal"),
        }
    }
}

/// Waits (polling) for a child of the test, at most `timeout`; kills it and panics past that.
pub fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> Ended {
    let give_up = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            return status.into();
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} (pid {}) still running after {timeout:?}: killed",
                child.id()
            );
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// Running fij.

/// A `fij` command line to run: `Fij::run(dir, scenario)` or `Fij::validate(scenario)`.
pub struct Fij {
    /// The fij binary; [`fij_bin`] if not set.
    bin: Option<PathBuf>,
    /// A program (and its arguments) that runs fij by exec'ing it, e.g. `taskset -c 1`.
    through: Vec<OsString>,
    args: Vec<OsString>,
    /// Start fij with an empty environment (plus `envs` and `NO_COLOR`).
    env_clear: bool,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    log: Option<PathBuf>,
    timeout: Duration,
}

impl Fij {
    /// `fij run SCENARIO --log DIR/fij-log.jsonl`.
    pub fn run(dir: &TempDir, scenario: &Path) -> Self {
        Self::run_logging_to(scenario, dir.join("fij-log.jsonl"))
    }

    /// `fij run SCENARIO --log LOG`.
    pub fn run_logging_to(scenario: &Path, log: PathBuf) -> Self {
        let args = vec![
            "run".into(),
            scenario.into(),
            "--log".into(),
            log.clone().into(),
        ];
        Self {
            log: Some(log),
            ..Self::new(args)
        }
    }

    /// `fij validate SCENARIO`.
    pub fn validate(scenario: &Path) -> Self {
        Self::new(vec!["validate".into(), scenario.into()])
    }

    fn new(args: Vec<OsString>) -> Self {
        Self {
            bin: None,
            through: Vec::new(),
            args,
            env_clear: false,
            envs: Vec::new(),
            cwd: None,
            log: None,
            timeout: fij_timeout(),
        }
    }

    /// `fij ARGS…` (any subcommand; no log).
    pub fn new_command(args: &[&dyn AsRef<OsStr>]) -> Self {
        Self::new(args.iter().map(|a| a.as_ref().to_os_string()).collect())
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Runs this binary instead of [`fij_bin`] (the static build, say).
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = Some(bin.into());
        self
    }

    /// Starts fij with an empty environment: only what [`Fij::env`] adds (and `NO_COLOR`).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Runs fij through `program` and its `args`, which exec it (e.g. `taskset -c 1`): fij keeps
    /// the pid of the process spawned.
    pub fn through<S: Into<OsString>>(
        mut self,
        program: impl Into<OsString>,
        args: impl IntoIterator<Item = S>,
    ) -> Self {
        self.through = std::iter::once(program.into())
            .chain(args.into_iter().map(Into::into))
            .collect();
        self
    }

    /// How long the whole run may take before it is killed and fails ([`fij_timeout`] if not
    /// set).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command [`Fij::spawn`] runs (stdin from /dev/null, stdout and stderr piped).
    pub fn command(&self) -> Command {
        let bin = self.bin.clone().unwrap_or_else(fij_bin);
        let mut command = match self.through.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        if self.env_clear {
            command.env_clear();
        }
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Plain, uncoloured log lines on stderr, whatever the terminal.
        command.env("NO_COLOR", "1");
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        command
    }

    pub fn spawn(self) -> RunningFij {
        let mut command = self.command();
        let description = format!(
            "fij {}",
            self.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!("starting {}: {e}", command.get_program().to_string_lossy())
        });
        let stdout = drain(child.stdout.take().expect("piped stdout"));
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        RunningFij {
            child: Some(child),
            log: self.log,
            stdout,
            stderr,
            started: Instant::now(),
            timed_from: Instant::now(),
            timeout: self.timeout,
            description,
        }
    }

    /// Runs to the end (at most its timeout) and checks that fij left no program behind.
    pub fn output(self) -> FijOutput {
        self.spawn().wait()
    }
}

/// What a pipe of fij's delivered. Read by a thread; collected with a grace period, since a
/// target that outlives fij (fij SIGKILLed, an adopted process) may hold the pipe open.
struct Drained(Arc<(Mutex<Vec<u8>>, AtomicBool)>);

fn drain(mut pipe: impl Read + Send + 'static) -> Drained {
    let shared = Arc::new((Mutex::new(Vec::new()), AtomicBool::new(false)));
    let writer = shared.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            writer.0.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        writer.1.store(true, Ordering::SeqCst);
    });
    Drained(shared)
}

impl Drained {
    /// Everything read until EOF, or until `grace` has passed.
    fn collect(&self, grace: Duration) -> String {
        let give_up = Instant::now() + grace;
        while !self.0.1.load(Ordering::SeqCst) && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(5));
        }
        String::from_utf8_lossy(&self.0.0.lock().unwrap()).into_owned()
    }
}

/// How long to wait for fij's stdout and stderr to close after fij is gone.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// A `fij` process started by the test. Dropped without [`RunningFij::wait`] (a failing test),
/// it kills fij and the targets it spawned.
pub struct RunningFij {
    child: Option<Child>,
    log: Option<PathBuf>,
    stdout: Drained,
    stderr: Drained,
    started: Instant,
    /// The timeout counts from here: the spawn, unless [`RunningFij::restart_timeout`].
    timed_from: Instant,
    timeout: Duration,
    description: String,
}

impl RunningFij {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("fij not waited for yet").id()
    }

    /// Whether fij is still running (does not reap it).
    pub fn running(&mut self) -> bool {
        let child = self.child.as_mut().expect("fij not waited for yet");
        // waitid with WNOWAIT: look without reaping, so `wait` still gets the status.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child, writing into a siginfo we own.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        assert_eq!(r, 0, "waitid: {}", std::io::Error::last_os_error());
        // SAFETY: si_pid is valid for the WEXITED result; 0 means no child changed state.
        unsafe { info.si_pid() == 0 }
    }

    /// The records of the log so far (complete lines only).
    pub fn log(&self) -> Log {
        let path = self.log.as_ref().expect("this fij command has no --log");
        Log::read_partial(path)
    }

    /// Polls the log until a record satisfies `pred` (given the record as JSON); panics if fij
    /// exits first or after `timeout`.
    pub fn wait_for_record(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_for_entry(what, timeout, |e| pred(&e.json)).json
    }

    /// [`RunningFij::wait_for_record`], `pred` given the typed record.
    pub fn wait_for_typed_record(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Record) -> bool,
    ) -> Record {
        self.wait_for_entry(what, timeout, |e| pred(&e.record))
            .record
    }

    fn wait_for_entry(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Entry) -> bool,
    ) -> Entry {
        let give_up = Instant::now() + timeout;
        loop {
            // Whether fij runs is looked at before the log is read: if it had ended, the log
            // read is complete, and a record written just before the end is not missed.
            let running = self.running();
            if let Some(entry) = self.log().0.into_iter().find(|e| pred(e)) {
                return entry;
            }
            if !running {
                let out = self.finish();
                out.log.kill_spawned_targets();
                panic!("fij exited before the log had {what}\n{out}");
            }
            if Instant::now() > give_up {
                let log = self.log();
                // What fij said so far (it still runs: no grace to wait for its pipe's end).
                let stderr = self.stderr.collect(Duration::ZERO);
                panic!(
                    "timed out after {timeout:?} waiting for {what} in fij's log; log so far:\n{log}\n\
                     fij's stderr so far:\n{stderr}"
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits (at most [`fij_timeout`]) for the `start` record: the campaign is armed.
    pub fn wait_armed(&mut self) -> Record {
        self.wait_for_typed_record("the start record", fij_timeout(), |r| {
            matches!(r, Record::Start { .. })
        })
    }

    /// Counts the run's timeout (see [`Fij::timeout`]) from now instead of from the spawn, for a
    /// test that holds fij's targets back while it does slow work of its own (filling a kernel
    /// map with bpftool takes seconds on a real machine and minutes under the kernel lab's
    /// emulated CPUs): fij is then given its whole timeout for what is left to it.
    pub fn restart_timeout(&mut self) {
        self.timed_from = Instant::now();
    }

    /// Waits for fij to end (killing it and failing past the timeout), then checks that no fij
    /// program stays loaded.
    pub fn wait(mut self) -> FijOutput {
        let out = self.finish();
        let timeout = cleanup_timeout();
        if let Err(left) = wait_no_fij_programs(timeout) {
            // How late, or whether for ever: the difference between a slow kernel and a leak.
            let since = Instant::now();
            let later = match wait_no_fij_programs(Duration::from_secs(60)) {
                Ok(()) => format!("gone {:?} later", since.elapsed()),
                Err(_) => "still there 60 s later".to_string(),
            };
            panic!(
                "fij programs still loaded {timeout:?} after fij ended: {left:?} ({later})\n{out}"
            );
        }
        out
    }

    /// Reaps fij (after at most the timeout) and collects its output, without the cleanup check.
    pub fn finish(&mut self) -> FijOutput {
        let mut child = self.child.take().expect("fij waited for twice");
        let give_up = self.timed_from + self.timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waitpid on fij") {
                break status;
            }
            if Instant::now() > give_up {
                let _ = child.kill();
                let _ = child.wait();
                let log = self
                    .log
                    .as_deref()
                    .map(Log::read_partial)
                    .unwrap_or_default();
                log.kill_spawned_targets();
                let stderr = self.stderr.collect(PIPE_GRACE);
                panic!(
                    "`{}` still running after {:?}: killed it and its targets\nstderr:\n{stderr}\nlog:\n{log}",
                    self.description, self.timeout
                );
            }
            std::thread::sleep(POLL);
        };
        let elapsed = self.started.elapsed();
        let stdout = self.stdout.collect(PIPE_GRACE);
        let stderr = self.stderr.collect(PIPE_GRACE);
        let log = self
            .log
            .as_deref()
            .map(Log::read_partial)
            .unwrap_or_default();
        FijOutput {
            description: self.description.clone(),
            ended: status.into(),
            stdout,
            stderr,
            log,
            elapsed,
        }
    }
}

impl Drop for RunningFij {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if let Some(log) = &self.log {
                Log::read_partial(log).kill_spawned_targets();
            }
        }
    }
}

/// What a finished `fij` invocation did.
pub struct FijOutput {
    pub description: String,
    pub ended: Ended,
    pub stdout: String,
    pub stderr: String,
    /// The JSONL log (empty without `--log` or when fij wrote none).
    pub log: Log,
    pub elapsed: Duration,
}

impl FijOutput {
    /// Asserts fij's exit code (0 ok, 1 runtime failure, 2 invalid input), showing everything
    /// it said if not.
    pub fn assert_exit(&self, code: i32) -> &Self {
        assert_eq!(
            self.ended,
            Ended::Code(code),
            "unexpected end of `{}`\n{self}",
            self.description
        );
        self
    }
}

impl fmt::Display for FijOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "`{}` ended {:?} after {:?}",
            self.description, self.ended, self.elapsed
        )?;
        writeln!(f, "--- stdout:\n{}", self.stdout)?;
        writeln!(f, "--- stderr:\n{}", self.stderr)?;
        write!(f, "--- log:\n{}", self.log)
    }
}

// ---------------------------------------------------------------------------------------------
// The JSONL log.

/// The records of a fij log, in order. Every line is read through fij's own record type,
/// [`Record`] (`fij_common::log`), so a line that does not fit it fails the test, the line shown.
/// Each record is also kept as JSON (the typed record serialized again, which must give back the
/// line as written), for the tests that look at a field by name (`r["pid"]`).
#[derive(Clone, Debug, Default)]
pub struct Log(Vec<Entry>);

/// One line of the log: typed, and as JSON.
#[derive(Clone, Debug)]
struct Entry {
    record: Record,
    json: Value,
}

impl Log {
    /// Reads every complete line of the log file (a line still being written is left out; a
    /// missing file is an empty log). Panics on a line that is not a [`Record`].
    pub fn read_partial(path: &Path) -> Log {
        Log::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    /// Reads every complete line of a log's text (a last line without its newline is left out).
    /// Panics, showing the line, on one that is not a [`Record`], or whose record does not
    /// serialize back to what the line says (a field fij writes that the type does not have).
    pub fn parse(text: &str) -> Log {
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        Log(complete
            .lines()
            .enumerate()
            .map(|(i, line)| {
                let record = Record::from_line(line).unwrap_or_else(|e| {
                    panic!(
                        "log line {} is not a fij_common::log::Record ({e}): {line}",
                        i + 1
                    )
                });
                let written: Value = serde_json::from_str(line).expect("a record's line is JSON");
                let json = serde_json::to_value(&record).expect("a record serializes");
                assert_eq!(
                    json,
                    written,
                    "log line {} reads as a fij_common::log::Record that does not serialize back \
                     to it (a field the type lacks?): {line}",
                    i + 1
                );
                Entry { record, json }
            })
            .collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every record, typed, in log order.
    pub fn typed(&self) -> impl Iterator<Item = &Record> {
        self.0.iter().map(|e| &e.record)
    }

    /// Every record as JSON, in log order.
    pub fn json(&self) -> impl Iterator<Item = &Value> {
        self.0.iter().map(|e| &e.json)
    }

    /// The same records, stably sorted by `key` of their JSON.
    pub fn sorted_by_key<K: Ord>(&self, mut key: impl FnMut(&Value) -> K) -> Log {
        let mut entries = self.0.clone();
        entries.sort_by_key(|e| key(&e.json));
        Log(entries)
    }

    /// The records of kind `event`.
    fn entries(&self, event: &str) -> impl Iterator<Item = &Entry> {
        self.0.iter().filter(move |e| e.record.event() == event)
    }

    /// The only record of kind `event` (panics unless there is exactly one).
    fn one_entry(&self, event: &str) -> &Entry {
        let entries: Vec<&Entry> = self.entries(event).collect();
        assert_eq!(
            entries.len(),
            1,
            "expected exactly one `{event}` record in the log:\n{self}"
        );
        entries[0]
    }

    /// The first record of kind `event`, typed.
    pub fn first(&self, event: &str) -> Option<&Record> {
        self.entries(event).next().map(|e| &e.record)
    }

    /// Every record whose `event` is `event`, as JSON.
    pub fn records(&self, event: &str) -> Vec<&Value> {
        self.entries(event).map(|e| &e.json).collect()
    }

    /// The only record of kind `event`, as JSON (panics unless there is exactly one).
    pub fn one(&self, event: &str) -> &Value {
        &self.one_entry(event).json
    }

    /// The `start` record, as JSON.
    pub fn start(&self) -> &Value {
        self.one("start")
    }

    /// The `end` record, as JSON.
    pub fn end(&self) -> &Value {
        self.one("end")
    }

    /// Why the campaign ended, from the `end` record.
    pub fn end_reason(&self) -> EndReason {
        match self.one_entry("end").record {
            Record::End { reason, .. } => reason,
            ref other => unreachable!("an end entry holds an end record, not {other:?}"),
        }
    }

    /// The targets of the `start` record, typed.
    pub fn targets(&self) -> &[TargetRecord] {
        match &self.one_entry("start").record {
            Record::Start { targets, .. } => targets,
            other => unreachable!("a start entry holds a start record, not {other:?}"),
        }
    }

    pub fn injections(&self) -> Vec<&Value> {
        self.records("injection")
    }

    pub fn forks(&self) -> Vec<&Value> {
        self.records("fork")
    }

    /// The `exit` records of `pid`.
    fn exit_entries_of(&self, pid: u32) -> Vec<&Entry> {
        self.entries("exit")
            .filter(|e| matches!(e.record, Record::Exit { pid: p, .. } if p == pid))
            .collect()
    }

    /// The `exit` records of `pid`, as JSON.
    pub fn exits_of(&self, pid: u32) -> Vec<&Value> {
        self.exit_entries_of(pid)
            .into_iter()
            .map(|e| &e.json)
            .collect()
    }

    /// The only `exit` record of `pid` (panics unless there is exactly one).
    fn exit_entry_of(&self, pid: u32) -> &Entry {
        let exits = self.exit_entries_of(pid);
        assert_eq!(
            exits.len(),
            1,
            "expected exactly one exit record of pid {pid}:\n{self}"
        );
        exits[0]
    }

    /// The only `exit` record of `pid`, as JSON (panics unless there is exactly one).
    pub fn exit_of(&self, pid: u32) -> &Value {
        &self.exit_entry_of(pid).json
    }

    /// Pid of the target named `name` in the start record.
    pub fn target_pid(&self, name: &str) -> u32 {
        self.targets()
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no target `{name}` in the start record: {}", self.start()))
            .pid
    }

    /// `(hit, pid)` of every injection, in log order.
    pub fn injection_hits(&self) -> Vec<(u64, u32)> {
        self.typed()
            .filter_map(|r| match r {
                Record::Injection { hit, pid, .. } => Some((*hit, *pid)),
                _ => None,
            })
            .collect()
    }

    /// How process `pid` ended according to its only `exit` record: `code N` or `signal NAME`.
    pub fn exit_status(&self, pid: u32) -> String {
        let exit = self.exit_entry_of(pid);
        match &exit.record {
            Record::Exit {
                code: Some(code),
                signal: None,
                ..
            } => format!("code {code}"),
            Record::Exit {
                code: None,
                signal: Some(signal),
                ..
            } => format!("signal {signal}"),
            _ => panic!(
                "exit record with neither or both of code and signal: {}",
                exit.json
            ),
        }
    }

    /// Asserts the exact injections of the campaign: `(hit, pid)` in log order, each on
    /// `syscall`, sending `signal`, delivered, by the process's main thread; and the `end`
    /// record's totals.
    pub fn assert_injections(&self, syscall: &str, signal: &str, expected: &[(u64, u32)]) {
        assert_eq!(
            self.injection_hits(),
            expected,
            "injections (hit, pid) differ; log:\n{self}"
        );
        for entry in self.entries("injection") {
            let Record::Injection {
                syscall: on,
                signal: sent,
                delivered,
                error,
                tid,
                pid,
                ..
            } = &entry.record
            else {
                unreachable!("an injection entry holds an injection record")
            };
            let record = &entry.json;
            assert_eq!(on.as_deref(), Some(syscall), "{record}");
            assert_eq!(sent, signal, "{record}");
            assert!(*delivered, "{record}");
            assert!(error.is_none(), "{record}");
            assert_eq!(tid, pid, "{record}");
        }
        let end = self.one_entry("end");
        let Record::End {
            injections,
            failed_injections,
            ..
        } = end.record
        else {
            unreachable!("an end entry holds an end record")
        };
        assert_eq!(
            injections,
            expected.len() as u64,
            "end record: {}",
            end.json
        );
        assert_eq!(failed_injections, 0, "end record: {}", end.json);
    }

    /// Kills what is left of the spawned targets named in the start record.
    pub fn kill_spawned_targets(&self) {
        for record in self.typed() {
            if let Record::Start { targets, .. } = record {
                for target in targets.iter().filter(|t| t.spawned) {
                    kill_spawned_target(target.pid);
                }
            }
        }
    }
}

/// The `pid` field of a record.
pub fn pid_of(record: &Value) -> u32 {
    record["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {record}")) as u32
}

impl fmt::Display for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for record in self.json() {
            writeln!(f, "{record}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The kernel side, through bpftool.

/// `bpftool -j ARGS` as JSON (an empty array where bpftool prints nothing, as some of its
/// listings do when there is nothing to list).
pub fn bpftool_json(args: &[&str]) -> Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running bpftool (installed by `cargo xtask setup`): {e}"));
    assert!(
        out.status.success(),
        "bpftool -j {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Array(Vec::new());
    }
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool -j {args:?}: not JSON: {e}"))
}

/// A loaded BPF program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prog {
    pub id: u64,
    pub name: String,
}

/// Every process whose name (`/proc/PID/comm`) is `name`.
pub fn processes_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// Every loaded BPF program whose name starts with `fij_`.
pub fn fij_programs() -> Vec<Prog> {
    let progs = bpftool_json(&["prog", "show"]);
    progs
        .as_array()
        .expect("bpftool prog show: an array")
        .iter()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            name.starts_with("fij_").then(|| Prog {
                id: p["id"].as_u64().expect("prog id"),
                name: name.to_owned(),
            })
        })
        .collect()
}

/// Every BPF link (bpftool's JSON objects).
pub fn links() -> Vec<Value> {
    bpftool_json(&["link", "show"])
        .as_array()
        .expect("bpftool link show: an array")
        .clone()
}

/// Every BPF map (bpftool's JSON objects).
pub fn maps() -> Vec<Value> {
    bpftool_json(&["map", "show"])
        .as_array()
        .expect("bpftool map show: an array")
        .clone()
}

/// Programs named `fij_` that no live process holds: what a finished fij left behind.
///
/// The programs of *other* fij processes running at the same time (a developer's shell, another
/// checkout's tests on the same machine) are not leftovers. A program that outlived its fij is
/// held by no process, unless a process inherited one of fij's BPF fds: tests where a target
/// outlives fij check that separately ([`bpf_fds`] of the target).
pub fn leftover_fij_programs() -> Vec<Prog> {
    let held: Vec<u64> = all_pids()
        .into_iter()
        .flat_map(|pid| bpf_fds_of(pid).progs)
        .collect();
    fij_programs()
        .into_iter()
        .filter(|p| !held.contains(&p.id))
        .collect()
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// Polls until [`leftover_fij_programs`] is empty; returns what is left after `timeout`.
pub fn wait_no_fij_programs(timeout: Duration) -> Result<(), Vec<Prog>> {
    let give_up = Instant::now() + timeout;
    loop {
        let left = leftover_fij_programs();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > give_up {
            return Err(left);
        }
        std::thread::sleep(POLL);
    }
}

/// The BPF objects a process holds file descriptors to (from /proc/PID/fdinfo).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BpfFds {
    pub progs: Vec<u64>,
    pub maps: Vec<u64>,
    pub links: Vec<u64>,
}

pub fn bpf_fds(pid: u32) -> BpfFds {
    let dir = format!("/proc/{pid}/fdinfo");
    assert!(Path::new(&dir).is_dir(), "{dir} does not exist");
    bpf_fds_of(pid)
}

/// [`bpf_fds`], empty for a process that is gone.
pub fn bpf_fds_of(pid: u32) -> BpfFds {
    let mut fds = BpfFds::default();
    let entries = std::fs::read_dir(format!("/proc/{pid}/fdinfo"));
    for entry in entries.into_iter().flatten().flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in info.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let Ok(id) = value.trim().parse::<u64>() else {
                continue;
            };
            match key {
                "prog_id" => fds.progs.push(id),
                "map_id" => fds.maps.push(id),
                "link_id" => fds.links.push(id),
                _ => {}
            }
        }
    }
    for ids in [&mut fds.progs, &mut fds.maps, &mut fds.links] {
        ids.sort_unstable();
        ids.dedup();
    }
    fds
}

/// Id of the map named `name` among those process `pid` holds.
pub fn map_of_process(pid: u32, name: &str) -> u64 {
    let held = bpf_fds(pid).maps;
    let found: Vec<u64> = maps()
        .iter()
        .filter(|m| m["name"] == name)
        .filter_map(|m| m["id"].as_u64())
        .filter(|id| held.contains(id))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one map named {name} held by pid {pid}, found {found:?}"
    );
    found[0]
}

/// `bpftool map update id ID key hex .. value hex ..`.
pub fn map_update(id: u64, key: &[u8], value: &[u8]) {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>();
    let id = id.to_string();
    let out = Command::new("bpftool")
        .args(["map", "update", "id", &id, "key", "hex"])
        .args(hex(key))
        .args(["value", "hex"])
        .args(hex(value))
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool map update failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bpftool map delete id ID key hex ..`.
pub fn map_delete(id: u64, key: &[u8]) {
    let hex = key.iter().map(|b| format!("{b:02x}"));
    let out = Command::new("bpftool")
        .args(["map", "delete", "id", &id.to_string(), "key", "hex"])
        .args(hex)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool map delete failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
