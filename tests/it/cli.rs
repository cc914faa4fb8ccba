//! What is generated from fij's CLI definition, checked against the CLI itself (the subcommands
//! `fij --help` lists): bash completion completes every subcommand, the man page renders without
//! a warning and lists every subcommand, and the CI examples of docs/ci/ invoke only
//! subcommands and options that exist. None of these load a program: no root needed.
use std::{
    path::Path,
    process::{Command, Output, Stdio},
};

use fij_tests::{TempDir, fij_bin, workspace_root};
use yaml_rust2::{Yaml, YamlLoader};

fn fij(args: &[&str]) -> Output {
    Command::new(fij_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running fij")
}

fn stdout_of(args: &[&str]) -> String {
    let out = fij(args);
    assert!(
        out.status.success(),
        "fij {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The subcommands `fij --help` lists under `Commands:` (clap's own `help` left out).
fn subcommands() -> Vec<String> {
    let help = stdout_of(&["--help"]);
    let names: Vec<String> = help
        .lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 6, "subcommands from fij --help: {names:?}");
    names
}

#[test]
fn bash_completion_completes_every_subcommand() {
    let dir = TempDir::new("completions");
    let script = dir.write("fij.bash", &stdout_of(&["completions", "bash"]));
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(syntax.success(), "bash -n: {syntax}");
    // What bash does on `fij <TAB>`: call the completion function registered for fij.
    let complete = format!(
        "source {}; complete -p fij >&2; COMP_WORDS=(fij ''); COMP_CWORD=1; COMP_LINE='fij '; \
         COMP_POINT=4; _fij fij '' fij; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &complete])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offered: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    for sub in subcommands() {
        assert!(
            offered.contains(&sub.as_str()),
            "`fij <TAB>` does not offer {sub}: {offered:?}"
        );
    }
}

#[test]
fn every_shell_gets_a_completion_naming_every_subcommand() {
    let subs = subcommands();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout_of(&["completions", shell]);
        for sub in &subs {
            assert!(
                script.contains(sub.as_str()),
                "the {shell} completion does not name {sub}"
            );
        }
    }
    let out = fij(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is invalid input"
    );
}

/// `groff -man -ww -z`: parses the page with every warning on, prints nothing if all is well.
fn groff_warnings(page: &str) -> String {
    let mut groff = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running groff (Debian package groff-base)");
    use std::io::Write;
    groff
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = groff.wait_with_output().unwrap();
    assert!(out.status.success(), "groff: {}", out.status);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn man_pages_render_cleanly_and_list_every_subcommand() {
    let version = stdout_of(&["--version"]);
    let version = version
        .trim()
        .strip_prefix("fij ")
        .expect("fij --version: fij X.Y.Z");
    let page = stdout_of(&["man"]);
    assert!(
        page.contains(&format!("\n.TH fij 1  \"fij {version}\"")),
        "{page}"
    );
    assert_eq!(groff_warnings(&page), "", "fij man");
    for sub in subcommands() {
        assert!(
            page.contains(&format!("fij\\-{sub}(1)")),
            "fij(1) does not list fij-{sub}(1)"
        );
        let sub_page = stdout_of(&["man", &sub]);
        assert!(
            sub_page.contains(&format!("\n.TH fij-{sub} 1  \"fij {version}\""))
                && sub_page.contains(".SH SYNOPSIS"),
            "fij man {sub}:\n{sub_page}"
        );
        assert!(
            sub_page.contains(&format!("\\fBfij {sub}\\fR")),
            "the synopsis of fij-{sub}(1) is `fij {sub} …`:\n{sub_page}"
        );
        assert_eq!(groff_warnings(&sub_page), "", "fij man {sub}");
    }
    assert_eq!(fij(&["man", "nope"]).status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------------
// The CI examples.

/// The shell lines of a GitHub Actions workflow (every step's `run`) or GitLab CI file (every
/// job's `before_script`, `script`, `after_script`).
fn shell_lines(doc: &Yaml) -> Vec<String> {
    let mut scripts = Vec::new();
    for (_, job) in doc["jobs"].as_hash().into_iter().flatten() {
        for step in job["steps"].as_vec().expect("a job has steps") {
            if let Some(run) = step["run"].as_str() {
                scripts.push(run.to_owned());
            }
        }
    }
    for (_, job) in doc.as_hash().expect("a mapping at the top") {
        for key in ["before_script", "script", "after_script"] {
            for line in job[key].as_vec().into_iter().flatten() {
                scripts.push(line.as_str().expect("script lines are strings").to_owned());
            }
        }
    }
    // Continued lines joined, comments dropped.
    scripts
        .iter()
        .flat_map(|s| {
            s.replace("\\\n", " ")
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect()
}

/// The paths uploaded as artifacts whatever the job's outcome: GitHub's `upload-artifact`
/// steps with `if: always()`, GitLab's `artifacts: paths` with `when: always`.
fn kept_always(doc: &Yaml) -> Vec<String> {
    let mut paths = Vec::new();
    for (_, job) in doc["jobs"].as_hash().into_iter().flatten() {
        for step in job["steps"].as_vec().into_iter().flatten() {
            let upload = step["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/upload-artifact@"));
            if upload && step["if"].as_str() == Some("always()") {
                let path = step["with"]["path"].as_str().unwrap_or_default();
                paths.extend(path.lines().map(|p| p.trim().to_owned()));
            }
        }
    }
    for (_, job) in doc.as_hash().into_iter().flatten() {
        if job["artifacts"]["when"].as_str() == Some("always") {
            let kept = job["artifacts"]["paths"].as_vec().into_iter().flatten();
            paths.extend(kept.filter_map(Yaml::as_str).map(str::to_owned));
        }
    }
    paths
}

/// The argument lists of every `fij` command in a shell line: commands are split at `&&`,
/// `||`, `;` and `|`; `sudo`, `env` and `VAR=value` before the command word are skipped; a
/// command word `fij` or `…/fij` is fij. Quotes are dropped; redirections end the arguments.
fn fij_invocations(line: &str) -> Vec<Vec<String>> {
    let mut invocations = Vec::new();
    for command in line.split(['&', '|', ';']).filter(|c| !c.trim().is_empty()) {
        let words: Vec<String> = command
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_owned())
            .collect();
        let mut words = words.into_iter().skip_while(|w| {
            w == "sudo" || w == "env" || w == "-E" || (w.contains('=') && !w.starts_with('-'))
        });
        let Some(program) = words.next() else {
            continue;
        };
        if program == "fij" || program.ends_with("/fij") {
            invocations.push(
                words
                    .take_while(|w| !w.starts_with('>') && !w.starts_with("2>") && w != "<")
                    .collect(),
            );
        }
    }
    invocations
}

#[test]
fn ci_examples_invoke_existing_subcommands_and_options() {
    let ci = workspace_root().join("docs/ci");
    let subs = subcommands();
    let mut used = Vec::new();
    for file in ["github-actions.yml", "gitlab-ci.yml"] {
        let text = std::fs::read_to_string(ci.join(file)).unwrap();
        let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(docs.len(), 1, "{file}: one YAML document");
        let lines = shell_lines(&docs[0]);
        assert!(
            lines.iter().any(|l| l.contains("cargo xtask dist")),
            "{file} builds fij with `cargo xtask dist`"
        );
        let invocations: Vec<Vec<String>> = lines.iter().flat_map(|l| fij_invocations(l)).collect();
        eprintln!("{file}: {invocations:?}");
        for args in &invocations {
            let sub = args.first().expect("fij with a subcommand");
            assert!(
                subs.contains(sub),
                "{file}: `fij {sub}` is no subcommand of fij"
            );
            // clap checks every option given before --help, and prints the help if all exist.
            let mut with_help: Vec<&str> = args.iter().map(String::as_str).collect();
            with_help.push("--help");
            let out = fij(&with_help);
            assert!(
                out.status.success(),
                "{file}: `fij {}` is not a valid command line: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            used.push((file, args.clone()));
        }
        // The recipe: the doctor, then a campaign that writes its log, which is kept.
        assert!(invocations.iter().any(|a| a == &["doctor"]), "{file}");
        let run = invocations
            .iter()
            .find(|a| a[0] == "run")
            .unwrap_or_else(|| panic!("{file} runs a campaign"));
        let log = &run[run.iter().position(|a| a == "--log").expect("run --log") + 1];
        assert!(
            kept_always(&docs[0]).iter().any(|kept| kept == log),
            "{file} keeps {log} as an artifact, also when the campaign fails"
        );
    }
    // The example campaign they run is valid.
    let campaign = Path::new(&ci).join("fij-campaign.toml");
    let out = fij(&["validate", campaign.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{used:?}");
}
