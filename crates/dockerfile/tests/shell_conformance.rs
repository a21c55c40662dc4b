//! Buildkit's shell-lexer conformance files (`envVarTest`, `wordsTest`) run against
//! [`firebuild_dockerfile::shell::Lexer`], plus property tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use firebuild_dockerfile::shell::{ExpandError, Lexer};
use proptest::prelude::*;

fn shell_dir() -> Option<PathBuf> {
    let root = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/conformance"
    ));
    if root.is_dir() {
        return Some(root.join("buildkit/frontend/dockerfile/shell"));
    }
    if std::env::var_os("CI").is_some() {
        panic!("conformance data missing at {}", root.display());
    }
    println!("skipped: conformance data not found at {}", root.display());
    None
}

fn env_var_test_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
}

#[test]
fn env_var_test() {
    let Some(dir) = shell_dir() else { return };
    let text = std::fs::read_to_string(dir.join("envVarTest")).unwrap();
    let env = env_var_test_env();
    let lexer = Lexer::new('\\');
    let (mut total, mut passed) = (0, 0);
    let mut failures = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(
            fields.len(),
            3,
            "line {}: malformed test line {line:?}",
            n + 1
        );
        let (platform, input, expected) = (fields[0].trim(), fields[1].trim(), fields[2].trim());
        if platform == "W" {
            continue;
        }
        total += 1;
        let got = lexer.expand_word(input, &env);
        let ok = match (&got, expected) {
            (Err(_), "error") => true,
            (Ok(v), e) => v == e,
            (Err(_), _) => false,
        };
        if ok {
            passed += 1;
        } else {
            failures.push(format!(
                "line {}: input {input:?} expected {expected:?} got {got:?}",
                n + 1
            ));
        }
    }
    println!("envVarTest: {passed}/{total}");
    for f in &failures {
        println!("  FAIL {f}");
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(total, 228, "the Linux run of envVarTest has 228 cases");
}

#[test]
fn words_test() {
    let Some(dir) = shell_dir() else { return };
    let text = std::fs::read_to_string(dir.join("wordsTest")).unwrap();
    let lexer = Lexer::new('\\');
    let mut env: Vec<(String, String)> = Vec::new();
    let (mut total, mut passed) = (0, 0);
    let mut failures = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(def) = line.strip_prefix("ENV ") {
            let def = def.trim_start_matches(' ');
            let (k, v) = def.split_once('=').unwrap_or((def, ""));
            env.push((k.to_owned(), v.to_owned()));
            continue;
        }
        let (input, expected) = line.split_once('|').unwrap();
        let input = input.trim();
        let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();
        total += 1;
        let got = lexer.expand_words(input, &env);
        let ok = match &got {
            Err(_) => expected == ["error"],
            Ok(words) => *words == expected,
        };
        if ok {
            passed += 1;
        } else {
            failures.push(format!(
                "line {}: input {input:?} expected {expected:?} got {got:?}",
                n + 1
            ));
        }
    }
    println!("wordsTest: {passed}/{total}");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(total, 24, "wordsTest has 24 cases");
}

#[test]
fn required_error_carries_message_and_offset() {
    let env = env_var_test_env();
    let err = Lexer::new('\\')
        .expand_word("x${MISSING:?set MISSING to the tag}", &env)
        .unwrap_err();
    assert_eq!(err.to_string(), "MISSING: set MISSING to the tag");
    assert_eq!(err.offset(), 1);
    assert!(matches!(err, ExpandError::Required { .. }));
}

#[test]
fn backtick_escape_lexer_matches_backslash_behaviour() {
    let env = env_var_test_env();
    let lexer = Lexer::new('`');
    assert_eq!(lexer.expand_word("he`$PWD", &env).unwrap(), "he$PWD");
    assert_eq!(
        lexer.expand_word("c:\\dir\\$PWD", &env).unwrap(),
        "c:\\dir\\/home"
    );
    assert_eq!(lexer.expand_words("a` b c", &env).unwrap(), ["a b", "c"]);
}

proptest! {
    // A leading U+FEFF is dropped, as Go's text/scanner drops a byte-order mark.
    #[test]
    fn words_without_specials_expand_to_themselves(word in "[^$'\"\\\\\u{feff}]{0,64}") {
        let env = env_var_test_env();
        let lexer = Lexer::new('\\');
        prop_assert_eq!(lexer.expand_word(&word, &env).unwrap(), word.clone());
        let fields: Vec<String> = word.split(char::is_whitespace)
            .filter(|w| !w.is_empty()).map(str::to_owned).collect();
        prop_assert_eq!(lexer.expand_words(&word, &env).unwrap(), fields);
    }

    #[test]
    fn single_quoted_text_is_literal(body in "[^']{0,64}") {
        let env = env_var_test_env();
        let word = format!("'{body}'");
        prop_assert_eq!(Lexer::new('\\').expand_word(&word, &env).unwrap(), body);
    }
}

/// Backtracking match of a buildkit shell pattern (`*`, `?`, literals) against a whole string.
fn naive(p: &[char], s: &[char]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some(('*', rest)) => (0..=s.len()).any(|i| naive(rest, &s[i..])),
        Some(('?', rest)) => !s.is_empty() && naive(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && naive(rest, &s[1..]),
    }
}

proptest! {
    #[test]
    fn prefix_and_suffix_removal_agree_with_backtracking(p in "[ab*?]{0,6}", v in "[ab]{0,8}") {
        let env = vec![("V", v.as_str())];
        let lexer = Lexer::new('\\');
        let pc: Vec<char> = p.chars().collect();
        let vc: Vec<char> = v.chars().collect();
        let n = vc.len();
        let prefixes: Vec<usize> = (0..=n).filter(|&k| naive(&pc, &vc[..k])).collect();
        let suffixes: Vec<usize> = (0..=n).filter(|&k| naive(&pc, &vc[n - k..])).collect();
        let cut = |k: Option<&usize>| v[k.copied().unwrap_or(0)..].to_owned();
        let cut_end = |k: Option<&usize>| v[..n - k.copied().unwrap_or(0)].to_owned();
        prop_assert_eq!(lexer.expand_word(&format!("${{V#{p}}}"), &env).unwrap(), cut(prefixes.first()));
        prop_assert_eq!(lexer.expand_word(&format!("${{V##{p}}}"), &env).unwrap(), cut(prefixes.last()));
        prop_assert_eq!(lexer.expand_word(&format!("${{V%{p}}}"), &env).unwrap(), cut_end(suffixes.first()));
        prop_assert_eq!(lexer.expand_word(&format!("${{V%%{p}}}"), &env).unwrap(), cut_end(suffixes.last()));
        // First replacement: leftmost start, longest match there.
        let first = (0..=n).find_map(|s| (s..=n).rev().find(|&e| naive(&pc, &vc[s..e])).map(|e| (s, e)));
        let want = match first {
            Some((s, e)) => format!("{}X{}", &v[..s], &v[e..]),
            None => v.clone(),
        };
        // (`${V//X}` would be a replace-all, so the pattern must not be empty here.)
        if !p.is_empty() {
            prop_assert_eq!(lexer.expand_word(&format!("${{V/{p}/X}}"), &env).unwrap(), want);
        }
    }
}
