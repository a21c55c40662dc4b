//! Buildkit parser conformance: every `testfiles/*/Dockerfile` must dump exactly to its
//! `result`, every `testfiles-negative/*/Dockerfile` must fail, and `testfile-line` must get
//! its line numbers right. Plus here-document and span tests of our own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use firebuild_dockerfile::parse_bytes;

fn parser_dir() -> Option<PathBuf> {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/conformance/buildkit/frontend/dockerfile/parser"
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

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

#[test]
fn testfiles_dump_exactly_like_buildkit() {
    let Some(dir) = parser_dir() else { return };
    let cases = cases(&dir.join("testfiles"));
    let mut failures = Vec::new();
    for case in &cases {
        let src = std::fs::read(case.join("Dockerfile")).unwrap();
        let expected = String::from_utf8(std::fs::read(case.join("result")).unwrap()).unwrap();
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        match parse_bytes(&src) {
            Ok(ast) => {
                let got = ast.dump();
                if got != expected {
                    failures.push(format!("{name}:\n--- expected\n{expected}--- got\n{got}"));
                }
            }
            Err(e) => failures.push(format!("{name}: parse failed: {e}")),
        }
    }
    println!(
        "parser conformance: {}/{}",
        cases.len() - failures.len(),
        cases.len()
    );
    assert_eq!(cases.len(), 33, "expected buildkit's 33 parser testfiles");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn negative_testfiles_fail() {
    let Some(dir) = parser_dir() else { return };
    let cases = cases(&dir.join("testfiles-negative"));
    let mut passed = 0;
    for case in &cases {
        let src = std::fs::read(case.join("Dockerfile")).unwrap();
        match parse_bytes(&src) {
            Ok(ast) => eprintln!("{} parsed but must fail:\n{}", case.display(), ast.dump()),
            Err(e) => {
                eprintln!("{}: {e}", case.file_name().unwrap().to_string_lossy());
                passed += 1;
            }
        }
    }
    println!("parser negative: {passed}/{}", cases.len());
    assert_eq!(cases.len(), 4);
    assert_eq!(passed, cases.len());
}
