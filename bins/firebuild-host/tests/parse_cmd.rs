//! `firebuild-host parse` end to end: a buildkit testfile dumps to its `result`, and errors
//! exit 1 with the location and the source line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn host(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_firebuild-host"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run firebuild-host");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn testfiles() -> Option<PathBuf> {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/conformance/buildkit/frontend/dockerfile/parser/testfiles"
    ));
    if dir.is_dir() {
        return Some(dir.to_path_buf());
    }
    if std::env::var_os("CI").is_some() {
        panic!("conformance data missing at {}", dir.display());
    }
    eprintln!("skipping: conformance data not found at {}", dir.display());
    None
}

#[test]
fn parse_prints_buildkit_dump_of_a_testfile() {
    let Some(dir) = testfiles() else { return };
    let case = dir.join("lk4d4-the-edge-case-generator");
    let file = case.join("Dockerfile");
    let out = host(&["parse", file.to_str().unwrap()], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = std::fs::read_to_string(case.join("result")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
}

#[test]
fn parse_reads_stdin_and_warns_on_empty_continuation_lines() {
    let out = host(&["parse", "-"], "FROM a\nRUN x \\\n\n  y\n");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "(from \"a\")\n(run \"x   y\")\n"
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("warning: <stdin>:4:1: Empty continuation line found in: RUN x   y"),
        "{err}"
    );
}

#[test]
fn parse_errors_exit_1_with_location_and_snippet() {
    let out = host(&["parse"], "FROM a\nCMD [\"a\", [\"b\"]]\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: <stdin>:2:1: when using JSON array syntax"),
        "{err}"
    );
    assert!(err.contains("    2 | CMD [\"a\", [\"b\"]]\n"), "{err}");
    assert_eq!(
        err.matches("JSON array").count(),
        1,
        "chain printed once: {err}"
    );
}

#[test]
fn check_reports_unknown_instructions_with_a_caret() {
    let out = host(&["parse", "--check"], "FROM a\nRUNN make\n");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err,
        "error: <stdin>:2:1: unknown instruction: RUNN (did you mean RUN?)\n    2 | RUNN make\n      | ^^^^\n"
    );
    let out = host(&["parse"], "FROM a\nRUNN make\n");
    assert!(
        out.status.success(),
        "without --check the tree is printed as buildkit does"
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "(from \"a\")\n(runn \"\")\n"
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = host(&["parse", "/nonexistent/Dockerfile"], "");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: opening /nonexistent/Dockerfile\n  caused by: "),
        "{err}"
    );
}

#[test]
fn empty_input_has_no_instructions() {
    let out = host(&["parse"], "# only a comment\n\n");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "error: <stdin>: file with no instructions\n"
    );
}
