//! moby/patternmatcher conformance cases (`matches.tsv`, `multi.tsv`) run against
//! [`firebuild_dockerfile::dockerignore`], plus the `.dockerignore` reading rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use firebuild_dockerfile::dockerignore::{
    IgnoreFile, MatchInfo, PatternError, PatternMatcher, glob_match,
};

fn data_dir() -> Option<PathBuf> {
    let root = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/conformance"
    ));
    if root.is_dir() {
        return Some(root.join("dockerignore"));
    }
    if std::env::var_os("CI").is_some() {
        panic!("conformance data missing at {}", root.display());
    }
    println!("skipped: conformance data not found at {}", root.display());
    None
}

/// Rows of a TSV file: (line number, pattern(s), path, expected).
fn rows(text: &str) -> Vec<(usize, String, String, bool)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(n, l)| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 3, "line {}: {l:?}", n + 1);
            let expected = match f[2] {
                "true" => true,
                "false" => false,
                other => panic!("line {}: bad expected {other:?}", n + 1),
            };
            (n + 1, f[0].to_owned(), f[1].to_owned(), expected)
        })
        .collect()
}

#[test]
fn patternmatcher_cases() {
    let Some(dir) = data_dir() else { return };
    let single = rows(&std::fs::read_to_string(dir.join("matches.tsv")).unwrap());
    let multi = rows(&std::fs::read_to_string(dir.join("multi.tsv")).unwrap());
    let (mut total, mut passed) = (0, 0);
    let mut failures = Vec::new();
    let cases = single
        .iter()
        .map(|(n, p, path, e)| ("matches.tsv", *n, vec![p.as_str()], path, *e))
        .chain(
            multi
                .iter()
                .map(|(n, p, path, e)| ("multi.tsv", *n, p.split(',').collect(), path, *e)),
        );
    for (file, n, patterns, path, expected) in cases {
        total += 1;
        let m = PatternMatcher::new(&patterns).unwrap();
        let got = m.matches(path);
        // The walker entry point must agree when fed parent results top-down.
        let mut info = MatchInfo::default();
        let mut walked = false;
        let clean = firebuild_dockerfile::dockerignore::clean_path(path);
        let mut prefix = String::new();
        for (i, part) in clean.split('/').enumerate() {
            if i > 0 {
                prefix.push('/');
            }
            prefix.push_str(part);
            (walked, info) = m.matches_using_parent_results(&prefix, &info);
        }
        if got == expected && (clean.starts_with('/') || walked == expected) {
            passed += 1;
        } else {
            failures.push(format!(
                "{file}:{n}: patterns {patterns:?} path {path:?} expected {expected} got {got} (walker {walked})"
            ));
        }
    }
    println!("dockerignore: {passed}/{total}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The conformance README announces 69 + 4 cases; matches.tsv holds 68 data rows (its
    // header is the 69th line), so a full run is 72 cases.
    assert_eq!(total, 72, "68 single-pattern and 4 multi-pattern cases");
}

#[test]
fn lone_exclusion_is_an_error_naming_the_line() {
    let err = IgnoreFile::parse("a\n\n!\n", ".dockerignore").unwrap_err();
    assert!(
        matches!(err, PatternError::LoneExclusion { line: Some(3), .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        ".dockerignore:3: illegal exclusion pattern \"!\""
    );
    assert!(PatternMatcher::new(["!"]).is_err());
}

#[test]
fn malformed_pattern_is_an_error_naming_pattern_and_line() {
    let err = IgnoreFile::parse("# c\n[\n", "ctx/.dockerignore").unwrap_err();
    match &err {
        PatternError::Malformed { pattern, line, .. } => {
            assert_eq!(pattern, "[");
            assert_eq!(*line, Some(2));
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.starts_with("ctx/.dockerignore:2: "), "{msg}");
    assert!(msg.contains("\"[\""), "{msg}");
    assert!(PatternMatcher::new(["ok", "a[b"]).is_err());
    assert!(PatternMatcher::new(["!x["]).is_err());
}

#[test]
fn bom_comments_and_leading_slash() {
    let m = IgnoreFile::parse(
        "\u{feff}/build\n# secret\n  # kept: not a comment after indentation\n\t*.tmp  \r\n!/build/keep\n",
        ".dockerignore",
    )
    .unwrap();
    assert!(m.matches("build"));
    assert!(m.matches("build/out/x"));
    assert!(!m.matches("build/keep"));
    assert!(!m.matches("build/keep/inner"));
    assert!(m.matches("a.tmp"));
    assert!(!m.matches("# secret"));
    assert!(m.matches("# kept: not a comment after indentation"));
    let lines: Vec<_> = IgnoreFile::read("\u{feff}#x\n/a//b/../c/\n")
        .lines
        .into_iter()
        .map(|l| (l.line, l.pattern))
        .collect();
    assert_eq!(lines, [(2, "a/c".to_owned())]);
}

#[test]
fn dot_never_matches_and_no_patterns_match_nothing() {
    let all = PatternMatcher::new(["**", "*", "."]).unwrap();
    assert!(!all.matches("."));
    assert!(!all.matches("./"));
    assert!(all.matches("x"));
    let none = IgnoreFile::parse("# only comments\n\n", ".dockerignore").unwrap();
    assert!(none.patterns().is_empty());
    assert!(!none.matches("anything"));
    assert!(!none.exclusions());
}

#[test]
fn glob_match_for_copy_sources() {
    assert!(glob_match("*.go", "main.go").unwrap());
    assert!(!glob_match("*.go", "cmd/main.go").unwrap());
    assert!(glob_match("cmd/*/main.go", "cmd/app/main.go").unwrap());
    assert!(glob_match("file[0-9].txt", "file7.txt").unwrap());
    assert!(!glob_match("file[^0-9].txt", "file7.txt").unwrap());
    let err = glob_match("src/[", "src/x").unwrap_err();
    assert!(matches!(err, PatternError::Malformed { .. }), "{err:?}");
    assert!(glob_match("a\\", "a").is_err());
}

/// Straightforward backtracking `filepath.Match` over patterns without brackets or escapes,
/// as an oracle for the automaton on small inputs.
fn naive_glob(p: &[char], s: &[char]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some(('*', rest)) => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != '/')
            .any(|i| naive_glob(rest, &s[i..])),
        Some(('?', rest)) => s.first().is_some_and(|&c| c != '/') && naive_glob(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && naive_glob(rest, &s[1..]),
    }
}

proptest::proptest! {
    #[test]
    fn glob_match_agrees_with_backtracking(p in "[ab/*?]{0,8}", s in "[ab/]{0,8}") {
        let pc: Vec<char> = p.chars().collect();
        let sc: Vec<char> = s.chars().collect();
        proptest::prop_assert_eq!(glob_match(&p, &s).unwrap(), naive_glob(&pc, &sc));
    }
}
