use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use fij::{
    campaign::{self, InvalidInput, RunOptions},
    scenario,
};

/// fij — kernel-level failure injection for distributed systems tests.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// Write one JSON object per event to this file.
        #[arg(long)]
        log: Option<PathBuf>,
        /// Rerun the campaign of this log (its scenario and seed) and report whether the
        /// injections match.
        #[arg(long, conflicts_with = "scenario")]
        replay: Option<PathBuf>,
    },
    /// Print every decision that can be known before the run: which hits fire.
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
    },
    /// Check a scenario file; print every error as file:line:col: message.
    Validate { scenario: PathBuf },
    /// Report what this kernel supports, found by trying it.
    Doctor,
}

/// Writes a command's output; a closed pipe (`fij doctor | head`) is not an error.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Exit statuses: the campaign ran as written / runtime failure / invalid input.
const EXIT_RUNTIME: u8 = 1;
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FIJ_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
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
    match cli.command {
        Command::Validate { scenario } => match scenario::load(&scenario) {
            Ok(_) => {
                eprintln!("{}: ok", scenario.display());
                ExitCode::SUCCESS
            }
            Err(diagnostics) => {
                eprintln!("{diagnostics}");
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::Plan {
            scenario,
            seed,
            hits,
            json,
        } => {
            let scenario = match scenario::load(&scenario) {
                Ok(s) => s,
                Err(diagnostics) => {
                    eprintln!("{diagnostics}");
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            let Some(seed) = seed.or(scenario.seed) else {
                eprintln!(
                    "fij plan: no seed: give --seed N (or `seed` in the scenario), and run with the same seed"
                );
                return ExitCode::from(EXIT_INVALID);
            };
            let plan = fij::plan::plan(&scenario, seed, hits);
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
        } => {
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
            let scenario = match scenario::load(&scenario) {
                Ok(s) => s,
                Err(diagnostics) => {
                    eprintln!("{diagnostics}");
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let options = RunOptions {
                seed,
                log: log.clone(),
            };
            let result = runtime
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(campaign::run(&scenario, &options)));
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
