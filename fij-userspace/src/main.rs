use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use fij::{
    InvalidInput,
    campaign::{self, RunOptions},
    compile::{CompiledCampaign, compile},
    scenario::{self, KernelFeatures, Scenario},
};

/// fij — kernel-level failure injection for distributed systems tests.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Colour in fij's messages: `auto` (on a terminal, unless NO_COLOR is set), `always`, `never`.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    color: Color,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

impl Color {
    /// Whether fij's messages (on stderr) carry ANSI colours.
    fn on_stderr(self) -> bool {
        use std::io::IsTerminal;
        match self {
            Color::Always => true,
            Color::Never => false,
            // https://no-color.org: set and not empty means no colour.
            Color::Auto => {
                std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Ebpf,
    Stap,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario: spawn or adopt its targets and inject its faults from the kernel.
    Run {
        /// The scenario file (not needed with --replay).
        #[arg(required_unless_present = "replay")]
        scenario: Option<PathBuf>,
        /// Seed of the campaign (overrides the scenario's `seed`).
        #[arg(long, conflicts_with = "replay")]
        seed: Option<u64>,
        /// Write one JSON object per event to this file (`{node}` in it: the node's name).
        #[arg(long)]
        log: Option<PathBuf>,
        /// Rerun the campaign of this log (its scenario and seed) and report whether the
        /// injections match.
        #[arg(long, conflicts_with = "scenario")]
        replay: Option<PathBuf>,
        /// Show why the kernel side refused or skipped an injection (a protected process, a
        /// full table, a failed bpf_send_signal, a lost event), as `fij::kernel` log lines.
        #[arg(long)]
        kernel_log: bool,
        /// The `[[node]]` this machine is (else `$FIJ_NODE`, else the `$OMPI_COMM_WORLD_RANK`-th
        /// node; with --replay, the log's node): only its targets are run.
        #[arg(long)]
        node: Option<String>,
        /// Who injects: `ebpf` (fij's own programs) or `stap` (the script `fij stap --runtime
        /// bpf` prints, run by stap's BPF runtime; docs/stap.md).
        #[arg(long, value_enum, default_value_t = Backend::Ebpf)]
        backend: Backend,
    },
    /// Print every decision that can be known before the run: which hits fire. The plan may be
    /// for another machine: what this kernel lacks (kprobes, tcx) is not asked.
    Plan {
        scenario: PathBuf,
        /// Seed to plan with (overrides the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// How many hits to consider per fault (per process for `per = "process"`).
        #[arg(long, default_value_t = fij::plan::DEFAULT_HITS,
              value_parser = clap::value_parser!(u64).range(1..=fij::plan::MAX_HITS))]
        hits: u64,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// Only the decisions of this `[[node]]` (else `$FIJ_NODE`, else the MPI rank's node).
        #[arg(long, conflicts_with = "all_nodes")]
        node: Option<String>,
        /// Every node's decisions: the whole campaign, as every node computes it.
        #[arg(long)]
        all_nodes: bool,
    },
    /// Work with campaign logs.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Check a scenario file; print every error as file:line:col: message.
    Validate { scenario: PathBuf },
    /// Summarize a campaign from its log: injections per fault, how each target process ended,
    /// crash silences, partitions and stops, and the command that replays it.
    Report {
        log: PathBuf,
        /// Print the summary as JSON (stable for scripts).
        #[arg(long)]
        json: bool,
        /// Also write the campaign's timeline as one self-contained HTML page to this file.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Report what this kernel supports, found by trying it.
    Doctor,
    /// Print a shell completion script for fij (bash: `fij completions bash >
    /// /etc/bash_completion.d/fij`).
    Completions {
        /// The shell to complete in.
        shell: Shell,
    },
    /// Print fij's manual page (roff): `fij man > fij.1`, and `fij man run > fij-run.1` for
    /// each subcommand it lists.
    Man {
        /// A subcommand whose page to print (`fij-SUBCOMMAND(1)`) instead of fij's.
        subcommand: Option<String>,
    },
    /// Print the scenario as a SystemTap script that injects the same faults (docs/stap.md). The
    /// script may be for another kernel (`stap -r RELEASE`): what this kernel lacks (kprobes,
    /// tcx) is not asked.
    Stap {
        scenario: PathBuf,
        /// Seed of the campaign (overrides the scenario's `seed`; without either, fij picks one
        /// and says which).
        #[arg(long)]
        seed: Option<u64>,
        /// The SystemTap runtime to write for: `module` (classic guru mode, `stap -g`) or `bpf`
        /// (`stap --runtime=bpf`).
        #[arg(long, value_enum, default_value_t = fij::stap::Runtime::Module)]
        runtime: fij::stap::Runtime,
        /// Write the script to this file instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Merge the logs of a campaign's nodes into one timeline, ordered by wall-clock time, each
    /// record with its node (`node`) and Unix time (`unix_ns`).
    Merge {
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        /// Write the merged log to this file instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
}

/// The node a command runs as, or exit 2 with why not.
fn this_node(scenario: &Scenario, flag: Option<&str>) -> Result<Option<usize>, ExitCode> {
    fij::nodes::this_node(scenario, flag).map_err(|e| {
        eprintln!("fij: {e}");
        ExitCode::from(EXIT_INVALID)
    })
}

/// Writes a command's output; a closed pipe (`fij doctor | head`) is not an error.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Exit statuses: the campaign ran as written / runtime failure / invalid input.
const EXIT_RUNTIME: u8 = 1;
const EXIT_INVALID: u8 = 2;

/// Prints every error of a scenario (`file:line:col: message`): exit status 2.
fn invalid(diagnostics: scenario::Diagnostics) -> ExitCode {
    eprintln!("{diagnostics}");
    ExitCode::from(EXIT_INVALID)
}

/// Reads and validates a scenario file (checking this kernel's features or not), then compiles
/// it with `seed` (the scenario's own unless given).
fn load_and_compile(
    path: &std::path::Path,
    kernel: KernelFeatures,
    seed: impl FnOnce(&Scenario) -> Result<u64, ExitCode>,
) -> Result<(Scenario, CompiledCampaign), ExitCode> {
    let scenario = scenario::load_for(path, kernel).map_err(invalid)?;
    let compiled = compile(&scenario, seed(&scenario)?).map_err(invalid)?;
    Ok((scenario, compiled))
}

fn main() -> ExitCode {
    // `fij __guardian`: the process a campaign starts to resume its stops if it dies.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == fij::guardian::ARG)
    {
        return ExitCode::from(fij::guardian::main());
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_INVALID)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tracing_subscriber::fmt()
        .with_writer(|| fij::status::Stderr)
        .with_target(false)
        .with_ansi(cli.color.on_stderr())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FIJ_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match cli.command {
        // Validation is the whole of the input check a run makes before it loads anything: the
        // file, then the compile stage's limits for this machine (with any seed: limits do not
        // depend on it).
        Command::Validate { scenario: path } => {
            match load_and_compile(&path, KernelFeatures::Checked, |_| Ok(0)) {
                Ok(_) => {
                    eprintln!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Plan {
            scenario,
            seed,
            hits,
            json,
            node,
            all_nodes,
        } => {
            let seed = |scenario: &Scenario| {
                seed.or(scenario.seed).ok_or_else(|| {
                    eprintln!(
                        "fij plan: no seed: give --seed N (or `seed` in the scenario), and run with the same seed"
                    );
                    ExitCode::from(EXIT_INVALID)
                })
            };
            let (scenario, compiled) =
                match load_and_compile(&scenario, KernelFeatures::NotChecked, seed) {
                    Ok(loaded) => loaded,
                    Err(code) => return code,
                };
            let mut plan = fij::plan::plan(&scenario, &compiled, hits);
            if !all_nodes {
                match this_node(&scenario, node.as_deref()) {
                    Ok(Some(node)) => plan = plan.of_node(&scenario, node),
                    Ok(None) => {}
                    Err(code) => return code,
                }
            }
            if json {
                out(&(serde_json::to_string_pretty(&plan).expect("plan serializes") + "\n"));
            } else {
                out(&plan.to_string());
            }
            ExitCode::SUCCESS
        }
        Command::Run {
            scenario,
            seed,
            log,
            replay,
            kernel_log,
            node,
            backend,
        } => {
            let node = match (&replay, node) {
                (Some(original), None) => fij::replay::origin_node(original).ok().flatten(),
                (_, node) => node,
            };
            let (scenario, seed, log) = match &replay {
                Some(original) => match fij::replay::origin(original) {
                    Ok((path, seed)) => {
                        let log = log.unwrap_or_else(|| original.with_extension("replay.jsonl"));
                        (path, Some(seed), Some(log))
                    }
                    Err(e) => {
                        eprintln!("fij: {e:#}");
                        return ExitCode::from(EXIT_INVALID);
                    }
                },
                None => (
                    scenario.expect("clap requires a scenario without --replay"),
                    seed,
                    log,
                ),
            };
            let seed = |scenario: &Scenario| {
                Ok(seed.or(scenario.seed).unwrap_or_else(campaign::random_seed))
            };
            let (scenario, compiled) =
                match load_and_compile(&scenario, KernelFeatures::Checked, seed) {
                    Ok(loaded) => loaded,
                    Err(code) => return code,
                };
            let node = match this_node(&scenario, node.as_deref()) {
                Ok(node) => node,
                Err(code) => return code,
            };
            let node_name = node.map(|n| scenario.cluster.nodes[n].name.as_str());
            let log = log.map(|path| fij::nodes::per_node_path(&path, node_name));
            // What the BPF runtime cannot express is refused here, at its key, before anything runs.
            if backend == Backend::Stap
                && let Err(refused) =
                    fij::stap::generate(&scenario, &compiled, fij::stap::Runtime::Bpf)
            {
                return invalid(refused);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let options = RunOptions {
                log: log.clone(),
                status_line: true,
                guardian: true,
                kernel_log,
                node,
                ..RunOptions::default()
            };
            let result = runtime.map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(async {
                    match backend {
                        Backend::Stap => fij::stap::run::run(&scenario, &compiled, &options).await,
                        Backend::Ebpf => campaign::run(&scenario, &compiled, &options).await,
                    }
                })
            });
            fij::status::finish();
            if let Ok(report) = &result {
                eprint!("{}", report.summary);
            }
            if let (Ok(_), Some(original), Some(replayed)) = (&result, &replay, &log) {
                return match fij::replay::compare(original, replayed) {
                    Ok(n) => {
                        eprintln!(
                            "fij: replay matched: the same {n} injection(s) as {}",
                            original.display()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("fij: {e:#}");
                        ExitCode::from(EXIT_RUNTIME)
                    }
                };
            }
            match result {
                Ok(report) if report.failed_injections == 0 => ExitCode::SUCCESS,
                Ok(report) => {
                    eprintln!(
                        "fij: {} injection(s) could not be delivered",
                        report.failed_injections
                    );
                    ExitCode::from(EXIT_RUNTIME)
                }
                Err(e) if e.is::<InvalidInput>() => {
                    eprintln!("fij: {e:#}");
                    ExitCode::from(EXIT_INVALID)
                }
                Err(e) => {
                    eprintln!("fij: {e:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Report { log, json, html } => {
            let records = match fij::report::read_log(&log) {
                Ok(records) => records,
                Err(e) => {
                    eprintln!("fij: {e:#}");
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            let summary = fij::report::Summary::of_records(&log, &records);
            if let Some(page) = html {
                let text = fij::timeline::html(&records, &summary);
                if let Err(e) = fij::log::write_new_file(&page, text.as_bytes()) {
                    eprintln!("fij: {e:#}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            }
            match json {
                true => out(
                    &(serde_json::to_string_pretty(&summary).expect("summary serializes") + "\n"),
                ),
                false => out(&summary.to_string()),
            }
            ExitCode::SUCCESS
        }
        Command::Log {
            command: LogCommand::Merge { logs, output },
        } => {
            let merged = match fij::merge::merge(&logs) {
                Ok(merged) => merged,
                Err(e) => {
                    eprintln!("fij log merge: {e:#}");
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            match output {
                Some(path) => {
                    if let Err(e) = fij::log::write_new_file(&path, merged.as_bytes()) {
                        eprintln!("fij log merge: {e:#}");
                        return ExitCode::from(EXIT_RUNTIME);
                    }
                }
                None => out(&merged),
            }
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "fij", &mut script);
            out(&String::from_utf8_lossy(&script));
            ExitCode::SUCCESS
        }
        Command::Man { subcommand } => {
            let mut cli = Cli::command();
            // Sets every subcommand's name as typed ("fij run") for its page's synopsis.
            cli.build();
            let command = match subcommand {
                None => cli,
                Some(name) => match cli.find_subcommand(&name) {
                    // Named as fij's page refers to it: fij-run(1).
                    Some(sub) => sub.clone().name(format!("fij-{name}")),
                    None => {
                        eprintln!("fij man: fij has no subcommand `{name}` (see `fij --help`)");
                        return ExitCode::from(EXIT_INVALID);
                    }
                },
            };
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                // Every page's footer: the fij it comes from (subcommands have no version).
                .source(concat!("fij ", env!("CARGO_PKG_VERSION")))
                .render(&mut page)
                .expect("rendering to memory does not fail");
            out(&String::from_utf8_lossy(&page));
            ExitCode::SUCCESS
        }
        Command::Stap {
            scenario,
            seed,
            runtime,
            output,
        } => {
            let seed = |scenario: &Scenario| {
                Ok(seed.or(scenario.seed).unwrap_or_else(|| {
                    let seed = campaign::random_seed();
                    eprintln!("fij stap: seed {seed} (the scenario has none)");
                    seed
                }))
            };
            let (scenario, compiled) =
                match load_and_compile(&scenario, KernelFeatures::NotChecked, seed) {
                    Ok(loaded) => loaded,
                    Err(code) => return code,
                };
            let script = match fij::stap::generate(&scenario, &compiled, runtime) {
                Ok(script) => script,
                Err(refused) => return invalid(refused),
            };
            match output {
                Some(path) => {
                    if let Err(e) = fij::log::write_new_file(&path, script.as_bytes()) {
                        eprintln!("fij stap: {e:#}");
                        return ExitCode::from(EXIT_RUNTIME);
                    }
                }
                None => out(&script),
            }
            ExitCode::SUCCESS
        }
        Command::Doctor => {
            let report = fij::doctor::run();
            out(&report.to_string());
            if report.all_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    }
}
