//! Buildkit parser conformance: every `testfiles/*/Dockerfile` must dump exactly to its
//! `result`, every `testfiles-negative/*/Dockerfile` must fail, and `testfile-line` must get
//! its line numbers right. Plus here-document and span tests of our own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use firebuild_dockerfile::{Heredoc, SyntaxError, parse, parse_bytes};

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

#[test]
fn testfile_line_numbers_match_buildkit() {
    let Some(dir) = parser_dir() else { return };
    let src = std::fs::read(dir.join("testfile-line/Dockerfile")).unwrap();
    let ast = parse_bytes(&src).unwrap();
    let lines: Vec<(u32, u32)> = ast
        .nodes
        .iter()
        .map(|n| (n.span.start_line, n.span.end_line))
        .collect();
    // buildkit's TestParseIncludesLineNumbers: FROM, ENV (continued), RUN (continued across
    // blank lines up to its last line).
    assert_eq!(lines, [(5, 5), (11, 12), (17, 31)]);
    // `# ESCAPE=\` on line 1 is a (case-insensitive) directive.
    assert_eq!(ast.directive("escape"), Some("\\"));
    assert_eq!(ast.warnings.len(), 1);
    assert!(
        ast.warnings[0]
            .message
            .starts_with("Empty continuation line found in: RUN apt-get update")
    );
}

#[test]
fn empty_continuation_lines_warn_like_buildkit() {
    // buildkit's TestParseWarnsOnEmptyContinutationLine.
    let src = "\nFROM alpine:3.6\n\nRUN something \\\n\n    following \\\n\n    more\n\nRUN another \\\n\n    thing\nRUN non-indented \\\n# this is a comment\n   after-comment\n\nRUN indented \\\n    # this is an indented comment\n    comment\n\t";
    let ast = parse(src).unwrap();
    let warnings: Vec<&str> = ast.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(
        warnings,
        [
            "Empty continuation line found in: RUN something     following     more",
            "Empty continuation line found in: RUN another     thing",
        ]
    );
    assert_eq!(ast.nodes[3].args, ["non-indented    after-comment"]);
    assert_eq!(ast.nodes[4].args, ["indented     comment"]);
    assert_eq!(
        (ast.nodes[4].span.start_line, ast.nodes[4].span.end_line),
        (17, 19)
    );
}

fn doc(name: &str, content: &str, expand: bool, chomp: bool, fd: u32) -> Heredoc {
    Heredoc {
        name: name.into(),
        fd,
        expand,
        chomp,
        content: content.into(),
    }
}

#[test]
fn heredocs_are_extracted_like_buildkit() {
    // buildkit's TestParseExtractsHeredoc.
    let src = "\nFROM alpine:3.6\n\nENV NAME=me\n\nRUN ls\n\nUSER <<INVALID\nINVALID\n\nRUN <<EMPTY\nEMPTY\n\nRUN 3<<EMPTY2\nEMPTY2\n\nRUN \"<<NOHEREDOC\"\n\nRUN <<INDENT\n\tfoo\n\tbar\nINDENT\n\nRUN <<-UNINDENT\n\tbaz\n\tquux\nUNINDENT\n\nRUN <<-UNINDENT2\n\tbaz\n\tquux\n\tUNINDENT2\n\nRUN <<-EXPAND\n\texpand $NAME\nEXPAND\n\nRUN <<-'NOEXPAND'\n\tdon't expand $NAME\nNOEXPAND\n\nRUN <<COPY\necho hello world\necho foo bar\nCOPY\n\nRUN <<COMMENT\n# internal comment\necho hello world\necho foo bar # trailing comment\nCOMMENT\n\nRUN --mount=type=cache,target=/foo <<MOUNT\necho hello\nMOUNT\n\nCOPY <<FILE1 <<FILE2 /dest\ncontent 1\nFILE1\ncontent 2\nFILE2\n\nCOPY <<X <<Y /dest\nY\nX\nX\nY\n\t";
    let ast = parse(src).unwrap();
    let expected: Vec<Vec<Heredoc>> = vec![
        vec![],
        vec![],
        vec![],
        vec![],
        vec![doc("EMPTY", "", true, false, 0)],
        vec![doc("EMPTY2", "", true, false, 3)],
        vec![],
        vec![doc("INDENT", "\tfoo\n\tbar\n", true, false, 0)],
        vec![doc("UNINDENT", "\tbaz\n\tquux\n", true, true, 0)],
        vec![doc("UNINDENT2", "\tbaz\n\tquux\n", true, true, 0)],
        vec![doc("EXPAND", "\texpand $NAME\n", true, true, 0)],
        vec![doc("NOEXPAND", "\tdon't expand $NAME\n", false, true, 0)],
        vec![doc(
            "COPY",
            "echo hello world\necho foo bar\n",
            true,
            false,
            0,
        )],
        vec![doc(
            "COMMENT",
            "# internal comment\necho hello world\necho foo bar # trailing comment\n",
            true,
            false,
            0,
        )],
        vec![doc("MOUNT", "echo hello\n", true, false, 0)],
        vec![
            doc("FILE1", "content 1\n", true, false, 0),
            doc("FILE2", "content 2\n", true, false, 0),
        ],
        vec![
            doc("X", "Y\n", true, false, 0),
            doc("Y", "X\n", true, false, 0),
        ],
    ];
    assert_eq!(ast.nodes.len(), expected.len() + 1);
    for (node, want) in ast.nodes[1..].iter().zip(&expected) {
        assert_eq!(&node.heredocs, want, "{}", node.original);
    }
    // Bodies are consumed: the instruction after a heredoc starts after its delimiter.
    let spans: Vec<(u32, u32)> = ast.nodes[15..]
        .iter()
        .map(|n| (n.span.start_line, n.span.end_line))
        .collect();
    assert_eq!(spans, [(53, 55), (57, 61), (63, 67)]);
    assert_eq!(ast.nodes[9].heredocs[0].body(), "baz\nquux\n");
}

#[test]
fn json_form_and_other_instructions_take_no_heredocs() {
    let ast = parse("FROM a\nRUN [\"whoami\"]\nRUN [\"<<EOF\"]\nRUN [\"<<'EOF'\"]\nRUN '<<EOF'\n")
        .unwrap();
    assert!(ast.nodes.iter().all(|n| n.heredocs.is_empty()));
    assert_eq!(ast.nodes.len(), 5);
    let ast = parse("FROM a\nLABEL x=<<EOF\nEOF\n").unwrap();
    assert_eq!(ast.nodes[2].command, "eof");
}

#[test]
fn onbuild_heredocs_attach_to_the_onbuild_node() {
    let ast = parse("FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\nRUN b\n").unwrap();
    assert_eq!(
        ast.nodes[1].heredocs,
        [doc("EOF", "echo hi\n", true, false, 0)]
    );
    assert_eq!(ast.nodes[1].span.end_line, 4);
    assert_eq!(ast.nodes[2].args, ["b"]);
    assert_eq!(
        ast.dump(),
        "(from \"a\")\n(onbuild (run \"<<EOF\"))\n(run \"b\")\n"
    );
}

#[test]
fn heredoc_with_crlf_and_quoted_delimiters() {
    let ast = parse("FROM a\r\nRUN <<\"E O F\" cat\r\nline $x\r\nE O F\r\nRUN z\r\n").unwrap();
    assert_eq!(
        ast.nodes[1].heredocs,
        [doc("E O F", "line $x\r\n", false, false, 0)]
    );
    assert_eq!(ast.nodes[2].span.start_line, 5);
}

#[test]
fn unterminated_heredoc_is_an_error_at_its_instruction() {
    let err = parse("FROM a\nRUN <<EOF\necho hi\n").unwrap_err();
    assert_eq!(
        err.kind(),
        Some(&SyntaxError::UnterminatedHeredoc("EOF".into()))
    );
    let span = err.span().unwrap();
    assert_eq!((span.start_line, span.end_line), (2, 3));
    let err = parse("FROM a\nCOPY <<A <<B /x\na\nA\nb\n").unwrap_err();
    assert_eq!(
        err.kind(),
        Some(&SyntaxError::UnterminatedHeredoc("B".into()))
    );
    // `<<-` strips tabs from the delimiter line only when chomping.
    assert!(parse("FROM a\nRUN <<EOF\n\tEOF\n").is_err());
    assert!(parse("FROM a\nRUN <<-EOF\n\tEOF\n").is_ok());
}

#[test]
fn spans_carry_columns() {
    let ast = parse("\u{feff}FROM a\n\n   RUN x \\\n     yy\nCOPY <<EOF /d\nbody\nEOF\n").unwrap();
    let spans: Vec<(u32, u32, u32, u32)> = ast
        .nodes
        .iter()
        .map(|n| {
            (
                n.span.start_line,
                n.span.start_col,
                n.span.end_line,
                n.span.end_col,
            )
        })
        .collect();
    assert_eq!(spans, [(1, 1, 1, 7), (3, 4, 4, 8), (5, 1, 7, 4)]);
    assert_eq!(ast.nodes[0].args, ["a"]);
}

#[test]
fn errors_carry_line_and_snippet() {
    let err = parse("FROM a\n\nENV PATH\n")
        .unwrap_err()
        .with_file("Dockerfile");
    assert_eq!(
        err.to_string(),
        "Dockerfile:3:1: ENV must have two arguments\n    3 | ENV PATH\n      | ^^^^^^^^"
    );
    let err = parse("").unwrap_err();
    assert_eq!(err.kind(), Some(&SyntaxError::NoInstructions));
    let err = parse("# just a comment\n\n").unwrap_err();
    assert_eq!(err.kind(), Some(&SyntaxError::NoInstructions));
    let err = parse("FROM a\nENV a=b c\n").unwrap_err();
    assert_eq!(err.kind(), Some(&SyntaxError::MissingEquals("c".into())));
}

#[test]
fn invalid_json_falls_back_to_shell_form() {
    let ast = parse("CMD [\"a\", \"b\"\nCMD ['a']\nRUN [\"a\"] extra\nCOPY [\"a\" b\n").unwrap();
    assert_eq!(
        ast.dump(),
        "(cmd \"[\\\"a\\\", \\\"b\\\"\")\n(cmd \"['a']\")\n(run \"[\\\"a\\\"] extra\")\n(copy \"[\\\"a\\\"\" \"b\")\n"
    );
    assert!(ast.nodes.iter().all(|n| !n.json));
}

mod properties {
    use firebuild_dockerfile::parse;
    use proptest::prelude::*;

    /// Lines built from the characters the parser treats specially.
    fn dockerfile() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            "(RUN|COPY|ADD|ENV|ARG|LABEL|FROM|CMD|ONBUILD RUN|HEALTHCHECK|SHELL|run|Foo) [a-z\\[\\]\"'=<\\- \\\\`$#{}\t,]{0,24}",
            "[ \t]*#[ a-z=`\\\\]{0,12}",
            "[ \t]*\\\\?[ \t]*",
            "(<<-?)?[A-Z]{1,3}",
            "[a-zA-Z0-9 \"'\\[\\],\\\\]{0,16}",
        ];
        prop::collection::vec(line, 0..24).prop_map(|lines| {
            let mut s = lines.join("\n");
            s.push('\n');
            s
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_never_panics_and_spans_are_ordered(src in dockerfile()) {
            let total = u32::try_from(src.lines().count()).unwrap();
            if let Ok(ast) = parse(&src) {
                prop_assert!(!ast.nodes.is_empty());
                let mut last_end = 0;
                for node in &ast.nodes {
                    prop_assert!(node.span.start_line > last_end, "{:?}", node.span);
                    prop_assert!(node.span.start_line <= node.span.end_line);
                    prop_assert!(node.span.end_line <= total.max(1));
                    prop_assert!(node.span.start_col >= 1);
                    last_end = node.span.end_line;
                }
                let dump = ast.dump();
                prop_assert_eq!(dump.lines().count(), ast.nodes.len());
                // Typed instructions either build or fail with a span inside the file.
                if let Err(e) = ast.instructions() {
                    let span = e.span().unwrap();
                    prop_assert!(span.start_line >= 1 && span.start_line <= total.max(1));
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = firebuild_dockerfile::parse_bytes(&bytes);
        }
    }
}
