//! fij as a library, for tests written in Rust: a scenario from a file or a string, run to its
//! end ([`Campaign::run`]) or in the background while the test drives its workload
//! ([`Campaign::start`] → [`Running::stop`] / [`Running::wait`]); the outcome is the typed log
//! records and the summary `fij run` prints. The same code path as `fij run`: parse, compile,
//! install, arm, events. Needs root, as `fij run` does. One difference: no guardian (only the
//! `fij` binary can exec itself as one), so a test process SIGKILLed while a `stop` fault holds
//! a target leaves it stopped (`fij run` resumes it even then; docs/reliability.md).
//!
//! ```no_run
//! let campaign = fij::Campaign::from_toml(r#"
//!     [[target]]
//!     name = "server"
//!     command = ["python3", "server.py"]
//!     [[fault]]
//!     name = "crash-on-3rd-send"
//!     target = "server"
//!     action = "crash"
//!     trigger = { syscall = "sendto" }
//!     nth = 3
//! "#)?;
//! let running = campaign.seed(7).start()?;
//! // … drive the server as a client would …
//! let outcome = running.stop()?;
//! assert_eq!(outcome.injections().count(), 1);
//! # Ok::<(), anyhow::Error>(())
//! ```
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use fij_common::log::{EndReason, Record};

use crate::{
    campaign::{self, RunOptions},
    compile::{CompiledCampaign, compile},
    nodes,
    plan::{Plan, plan},
    report::Summary,
    scenario::{self, Diagnostics, Scenario},
};

/// A scenario to run, with its seed, log file and node.
pub struct Campaign {
    scenario: Scenario,
    seed: Option<u64>,
    log: Option<PathBuf>,
    node: Option<String>,
}

/// What a campaign did: every log record, in order, and the summary told from them.
pub struct Outcome {
    pub reason: EndReason,
    pub seed: u64,
    pub records: Vec<Record>,
    pub summary: Summary,
}

impl Outcome {
    /// The injection records, in order.
    pub fn injections(&self) -> impl Iterator<Item = &Record> {
        self.records
            .iter()
            .filter(|r| matches!(r, Record::Injection { .. }))
    }

    /// The pid of target `name`'s instance 0, as armed.
    pub fn target_pid(&self, name: &str) -> Option<u32> {
        self.records.iter().find_map(|r| match r {
            Record::Start { targets, .. } => targets
                .iter()
                .find(|t| t.name == name && t.instance == 0)
                .map(|t| t.pid),
            _ => None,
        })
    }
}

impl Campaign {
    /// The scenario in the file at `path` (relative `cwd`s are relative to its directory).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, Diagnostics> {
        Ok(Self::new(scenario::load(path.as_ref())?))
    }

    /// A scenario written inline (relative `cwd`s are relative to the current directory; errors
    /// are reported at `<inline>:line:col`).
    pub fn from_toml(text: &str) -> Result<Self, Diagnostics> {
        Ok(Self::new(scenario::parse_str(Path::new("<inline>"), text)?))
    }

    fn new(scenario: Scenario) -> Self {
        Campaign {
            seed: scenario.seed,
            scenario,
            log: None,
            node: None,
        }
    }

    /// The campaign's seed (instead of the scenario's, or a random one).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Also write the JSONL log to `path` (`{node}` in it: the node's name, as for `fij run`).
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// The `[[node]]` this campaign runs as, by name (as `fij run --node NAME`): only that
    /// node's targets are run, and it carries out only its node's part of the node faults.
    /// Without it, a scenario with `[[node]]` takes the node from `$FIJ_NODE` or
    /// `$OMPI_COMM_WORLD_RANK`, as `fij run` does, and is refused without them.
    pub fn node(mut self, name: impl Into<String>) -> Self {
        self.node = Some(name.into());
        self
    }

    /// What the campaign will decide, for the first `hits` hits of each fault (as `fij plan`;
    /// with [`Campaign::node`], only that node's part, as `fij plan --node`).
    pub fn plan(&self, hits: u64) -> Result<Plan> {
        let seed = self.seed.unwrap_or(0);
        let compiled = compile(&self.scenario, seed)
            .map_err(|d| anyhow!(crate::InvalidInput(d.to_string())))?;
        let plan = plan(&self.scenario, &compiled, hits);
        Ok(match self.this_node()? {
            Some(node) => plan.of_node(&self.scenario, node),
            None => plan,
        })
    }

    /// The node's index in the scenario's `[[node]]`, or the input error that refuses it.
    fn this_node(&self) -> Result<Option<usize>> {
        nodes::this_node(&self.scenario, self.node.as_deref())
            .map_err(|e| anyhow!(crate::InvalidInput(e)))
    }

    /// The log path, `{node}` replaced by the node's name.
    fn log_path(&self, node: Option<usize>) -> Option<PathBuf> {
        let name = node.map(|n| self.scenario.cluster.nodes[n].name.as_str());
        self.log.as_deref().map(|p| nodes::per_node_path(p, name))
    }

    fn compiled(&self) -> Result<CompiledCampaign> {
        let seed = self.seed.unwrap_or_else(campaign::random_seed);
        compile(&self.scenario, seed).map_err(|d| anyhow!(crate::InvalidInput(d.to_string())))
    }

    /// Runs the campaign to its end (its targets exit, its `duration` passes).
    pub fn run(self) -> Result<Outcome> {
        let compiled = self.compiled()?;
        let node = self.this_node()?;
        let options = RunOptions {
            log: self.log_path(node),
            keep_records: true,
            node,
            ..RunOptions::default()
        };
        run_blocking(&self.scenario, &compiled, options)
    }

    /// Starts the campaign in the background and returns once it is wholly armed (every target
    /// spawned or adopted, every program attached), or with the error that kept it from arming.
    pub fn start(self) -> Result<Running> {
        let compiled = self.compiled()?;
        let node = self.this_node()?;
        let (armed_tx, armed_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let options = RunOptions {
            log: self.log_path(node),
            keep_records: true,
            armed: Some(armed_tx),
            stop: Some(stop_rx),
            status_line: false,
            guardian: false,
            kernel_log: false,
            node,
        };
        let scenario = self.scenario;
        let thread = std::thread::Builder::new()
            .name("fij-campaign".into())
            .spawn(move || run_blocking(&scenario, &compiled, options))
            .context("starting the campaign's thread")?;
        match armed_rx.recv() {
            Ok(()) => Ok(Running {
                stop: stop_tx,
                thread,
            }),
            // The campaign ended before it armed: its error says why.
            Err(_) => Err(thread
                .join()
                .map_err(|_| anyhow!("the campaign's thread panicked"))?
                .err()
                .unwrap_or_else(|| anyhow!("the campaign ended before it was armed"))),
        }
    }
}

/// A campaign running in the background.
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<Result<Outcome>>,
}

impl Running {
    /// Ends the campaign now (as Ctrl-C ends `fij run`: every action still in effect ends,
    /// spawned targets are terminated) and returns what it did.
    pub fn stop(self) -> Result<Outcome> {
        let _ = self.stop.send(true);
        self.wait()
    }

    /// Waits for the campaign to end by itself.
    pub fn wait(self) -> Result<Outcome> {
        self.thread
            .join()
            .map_err(|_| anyhow!("the campaign's thread panicked"))?
    }
}

fn run_blocking(
    scenario: &Scenario,
    compiled: &CompiledCampaign,
    options: RunOptions,
) -> Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(campaign::run(scenario, compiled, &options))?;
    Ok(Outcome {
        reason: report.reason,
        seed: compiled.seed,
        records: report.records,
        summary: report.summary,
    })
}
