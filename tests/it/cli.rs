//! What is generated from fij's CLI definition, checked against the CLI itself (the subcommands
//! `fij --help` lists): bash completion completes every subcommand, the man page renders without
//! a warning and lists every subcommand. None of these load a program: no root needed.
use std::process::{Command, Output, Stdio};

use fij_tests::{TempDir, fij_bin};

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
