//! What a user sees after a campaign: the summary `fij run` prints and `fij report LOG` (text and
//! `--json`) tells from the log, and fij's terminal manners (`--color`).
use fij_tests::{Fij, TempDir, workload};
use serde_json::Value;

/// A writer stopped on its 2nd write for 300 ms, then killed on its 6th.
fn stop_then_kill(dir: &TempDir) -> std::path::PathBuf {
    let out = dir.join("out.txt");
    let command = workload!().command(&[&"write-lines", &out, &"10"]);
    dir.write(
        "s.toml",
        &format!(
            "seed = 3\n[[target]]\nname = \"w\"\ncommand = {command}\n\n\
             [[fault]]\nname = \"pause\"\ntarget = \"w\"\naction = \"stop\"\n\
             trigger = {{ syscall = \"write\" }}\nnth = 2\nresume_after = \"300ms\"\n\n\
             [[fault]]\nname = \"end\"\ntarget = \"w\"\naction = \"kill\"\n\
             trigger = {{ syscall = \"write\" }}\nnth = 6\n\n\
             [[fault]]\nname = \"never\"\ntarget = \"w\"\naction = \"kill\"\n\
             trigger = {{ syscall = \"fsync\" }}\n"
        ),
    )
}

#[test]
fn the_summary_tells_injections_endings_and_windows_and_report_tells_the_same() {
    let dir = TempDir::new("report");
    let scenario = stop_then_kill(&dir);
    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    let log = dir.join("fij-log.jsonl");

    let json = Fij::new_command(&[&"report", &log, &"--json"]).output();
    json.assert_exit(0);
    let summary: Value = serde_json::from_str(&json.stdout).expect("report --json is JSON");
    assert_eq!(summary["seed"], 3, "{summary}");
    assert_eq!(summary["ended"], "targets_exited", "{summary}");
    let faults: Vec<(String, u64, u64)> = summary["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["fault"].as_str().unwrap().to_string(),
                f["injections"].as_u64().unwrap(),
                f["failed"].as_u64().unwrap(),
            )
        })
        .collect();
    // `fij report` knows only the faults that fired: the log does not list the others.
    assert_eq!(
        faults,
        [("pause".to_string(), 1, 0), ("end".to_string(), 1, 0)],
        "{summary}"
    );
    let processes = summary["targets"][0]["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 1, "{summary}");
    assert_eq!(processes[0]["pid"], pid);
    assert_eq!(processes[0]["ended"], "signal SIGKILL");
    assert_eq!(processes[0]["by_fij"], true);
    let windows = summary["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 1, "{summary}");
    assert_eq!(windows[0]["kind"], "stop");
    assert_eq!(windows[0]["pid"], pid);
    let (start, end) = (
        windows[0]["start_s"].as_f64().unwrap(),
        windows[0]["end_s"].as_f64().unwrap(),
    );
    assert!(end - start >= 0.3, "stopped {start} → {end}: {summary}");
    assert_eq!(
        summary["replay"],
        format!("fij run --replay {}", log.display())
    );

    // `fij run` printed the same summary at its end, and listed the fault that never fired.
    let text = Fij::new_command(&[&"report", &log]).output();
    text.assert_exit(0);
    let never = "  never                         0 injection(s), trigger fsync\n";
    let printed = run.stderr.replace(never, "");
    assert!(run.stderr.contains(never), "{run}");
    assert!(
        printed.ends_with(&text.stdout),
        "fij run's summary differs from fij report's:\n{}\n--- report:\n{}",
        run.stderr,
        text.stdout
    );
    assert!(
        text.stdout
            .contains(&format!("pid {pid:<8} ended: signal SIGKILL, by fij")),
        "{}",
        text.stdout
    );
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let dir = TempDir::new("colour");
    let scenario = stop_then_kill(&dir);
    let piped = Fij::run(&dir, &scenario).output();
    piped.assert_exit(0);
    assert!(
        !piped.stderr.contains('\x1b'),
        "piped output has colour:\n{piped}"
    );
    let always = Fij::run(&dir, &scenario)
        .arg("--color")
        .arg("always")
        .output();
    always.assert_exit(0);
    assert!(
        always.stderr.contains("\x1b["),
        "--color always has none:\n{always}"
    );
    let never = Fij::run(&dir, &scenario)
        .arg("--color")
        .arg("never")
        .env("NO_COLOR", "")
        .output();
    never.assert_exit(0);
    assert!(!never.stderr.contains('\x1b'), "{never}");
}

#[test]
fn report_refuses_what_is_not_a_fij_log() {
    let dir = TempDir::new("report-bad");
    let not_a_log = dir.write("x.jsonl", "{\"hello\": 1}\n");
    let out = Fij::new_command(&[&"report", &not_a_log]).output();
    out.assert_exit(2);
    assert!(
        out.stderr
            .contains(&format!("{}:1: not a fij log record", not_a_log.display())),
        "{out}"
    );
}

/// `fij report LOG --html FILE`: one self-contained page whose SVG timeline is well-formed XML
/// with a lane per target process, the injections and the stop band; a real browser (Debian's
/// headless Chromium) renders it to a screenshot and its DOM shows the lanes.
#[test]
fn the_html_report_is_a_timeline_a_browser_renders() {
    let dir = TempDir::new("report-html");
    let scenario = stop_then_kill(&dir);
    let run = Fij::run(&dir, &scenario).output();
    run.assert_exit(0);
    let pid = run.log.target_pid("w");
    let log = dir.join("fij-log.jsonl");
    let page = dir.join("report.html");
    let report = Fij::new_command(&[&"report", &log, &"--html", &page]).output();
    report.assert_exit(0);
    let html = std::fs::read_to_string(&page).expect("the page was written");
    assert!(
        !html.contains("http://") || html.matches("http://").count() == 1,
        "the page may name only the SVG namespace, never fetch anything"
    );
    assert!(!html.contains("<script"), "no script in the page");

    let svg = &html[html.find("<svg").expect("an <svg>")..html.find("</svg>").unwrap() + 6];
    let doc = roxmltree::Document::parse(svg).expect("the SVG is well-formed XML");
    let class = |name: &str| {
        doc.descendants()
            .filter(|n| {
                n.attribute("class")
                    .is_some_and(|c| c.split(' ').any(|c| c == name))
            })
            .collect::<Vec<_>>()
    };
    let lanes: Vec<String> = class("lane")
        .iter()
        .map(|n| n.attribute("data-pid").unwrap().to_string())
        .collect();
    assert_eq!(lanes, [pid.to_string()], "{html}");
    let injections: Vec<String> = class("injection")
        .iter()
        .map(|n| {
            n.descendants()
                .filter(|t| t.is_text())
                .filter_map(|t| t.text())
                .collect::<String>()
        })
        .collect();
    assert_eq!(injections, ["pause #2", "end #6"], "{html}");
    assert_eq!(class("stop").len(), 1, "one stop band: {html}");
    assert_eq!(class("exit").len(), 1, "{html}");

    let chromium = fij_tests::systems::require_tool("chromium", "chromium");
    let browser = |extra: &[&str]| {
        let profile = dir.join(&format!("chromium-{}", extra.len()));
        std::process::Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1150,500",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("running chromium")
    };
    let dom = browser(&["--dump-dom"]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(
        dom.matches("class=\"lane\"").count(),
        1,
        "the rendered DOM shows the lane:\n{dom}"
    );
    let png = dir.join("report.png");
    let shot = browser(&[&format!("--screenshot={}", png.display())]);
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    // A blank 1150×500 page compresses to a few hundred bytes; the timeline does not.
    assert!(bytes.len() > 10_000, "screenshot of {} bytes", bytes.len());
}

/// On a terminal `fij run` shows a live status line (elapsed / duration, injections, processes
/// alive); piped, it shows none.
#[test]
fn a_status_line_on_a_terminal_and_none_when_piped() {
    let dir = TempDir::new("status-line");
    let command = workload!().command(&[&"sleep", &"5000"]);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "duration = \"1500ms\"\n[[target]]\nname = \"w\"\ncommand = {command}\n\n\
             [[fault]]\nname = \"f\"\ntarget = \"w\"\naction = \"kill\"\n\
             trigger = {{ syscall = \"fsync\" }}\n"
        ),
    );
    let status = "fij: ";
    let piped = Fij::run(&dir, &scenario).output();
    piped.assert_exit(0);
    assert!(!piped.stderr.contains(status), "{piped}");

    // `script` gives fij a terminal (a pty) and copies what fij drew on it. The terminal's type
    // is the test's to say, not the caller's: with `TERM` unset or `dumb` (CI runners, the kernel
    // lab's guest) indicatif rightly draws nothing, as a dumb terminal cannot redraw a line.
    let fij = fij_tests::fij_bin();
    let tty = std::process::Command::new("script")
        .env("TERM", "xterm")
        .arg("-qec")
        .arg(format!("{} run {}", fij.display(), scenario.display()))
        .arg("/dev/null")
        .output()
        .expect("running script (util-linux)");
    assert!(tty.status.success(), "{tty:?}");
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert!(
        screen.contains(" / 1.5 s · 0 injection(s) · 1 target process(es) alive"),
        "no status line on the terminal:\n{screen}"
    );
    assert!(
        screen.contains("ended because its duration passed"),
        "{screen}"
    );
}
