//! Bad input to `firebuild-host build`, case by case: each is refused before any VM boots,
//! with an error naming the file and line (or the path or value at fault), and leaves nothing
//! behind: no output, no work directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A one-file HTTP server on loopback answering every request with `body`.
fn serve(body: &'static [u8]) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
    });
    port
}

struct Case {
    name: &'static str,
    dockerfile: String,
    /// Extra context entries: (path, Some(contents)) for a file, (path, None) for a symlink to /etc.
    files: Vec<(&'static str, Option<&'static str>)>,
    /// Every one of these must be in stderr.
    expect: Vec<&'static str>,
}

fn cases(port: u16) -> Vec<Case> {
    let huge = format!(
        "FROM scratch\n{}",
        "# padding padding padding\n".repeat(700_000)
    );
    vec![
        Case {
            name: "malformed instruction",
            dockerfile: "FROM scratch\nCOPY\n".into(),
            files: vec![],
            expect: vec!["Dockerfile:2"],
        },
        Case {
            name: "unknown instruction",
            dockerfile: "FROM scratch\nCOPPY a /a\n".into(),
            files: vec![],
            expect: vec!["Dockerfile:2", "COPPY"],
        },
        Case {
            name: "unterminated heredoc",
            dockerfile: "FROM scratch\nRUN <<EOF\necho hi\n".into(),
            files: vec![],
            expect: vec!["Dockerfile:2"],
        },
        Case {
            name: "huge Dockerfile",
            dockerfile: huge,
            files: vec![],
            expect: vec!["Dockerfile is larger than"],
        },
        Case {
            name: "COPY source escaping the context with ..",
            dockerfile: "FROM scratch\nCOPY ../secret /s\n".into(),
            files: vec![],
            expect: vec!["Dockerfile:2", "../secret"],
        },
        Case {
            name: "COPY absolute source is inside the context, and missing",
            dockerfile: "FROM scratch\nCOPY /etc/passwd /p\n".into(),
            files: vec![],
            expect: vec!["Dockerfile:2", "/etc/passwd"],
        },
        Case {
            name: "COPY through a symlink that points out of the context",
            dockerfile: "FROM scratch\nCOPY link/passwd /p\n".into(),
            files: vec![("link", None)],
            expect: vec!["Dockerfile:2", "link/passwd"],
        },
        Case {
            name: "ADD --checksum mismatch",
            dockerfile: format!(
                "FROM scratch\nADD --checksum=sha256:{} http://127.0.0.1:{port}/f /f\n",
                "0".repeat(64)
            ),
            files: vec![],
            expect: vec!["Dockerfile:2", "checksum"],
        },
    ]
}

fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn each_bad_input_is_refused_with_its_place_and_leaves_nothing() {
    let port = serve(b"not what the checksum says\n");
    let mut failures = Vec::new();
    for case in cases(port) {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), &case.dockerfile).unwrap();
        for (path, contents) in &case.files {
            match contents {
                Some(text) => std::fs::write(ctx.join(path), text).unwrap(),
                None => std::os::unix::fs::symlink("/etc", ctx.join(path)).unwrap(),
            }
        }
        let out = dir.path().join("out");
        let started = Instant::now();
        let result = Command::new(env!("CARGO_BIN_EXE_firebuild-host"))
            .args(["build", "--progress=plain", "--timeout", "60", "-o"])
            .arg(&out)
            .arg(&ctx)
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        let missing: Vec<&&str> = case
            .expect
            .iter()
            .filter(|e| !stderr.contains(**e))
            .collect();
        let left = names(&out);
        let booted = stderr.contains("vm starting");
        if result.status.success() || !missing.is_empty() || !left.is_empty() || booted {
            failures.push(format!(
                "{}: exit {:?}, missing {missing:?}, left {left:?}, booted {booted}\n{stderr}",
                case.name,
                result.status.code()
            ));
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{}",
            case.name
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}
