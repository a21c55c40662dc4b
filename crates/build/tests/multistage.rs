//! A real multi-stage Dockerfile built through the library in real VMs (QEMU microvm, TCG here)
//! without Docker: a compile stage on the Debian 12 base that installs gcc with apt under
//! `type=cache` mounts, compiles a static C program from a `type=bind` context mount with a
//! `type=secret` mount and a `tmpfs`, checks `--network=none`; an unused stage that would
//! fail; and a `FROM scratch` stage that gets the binary with `COPY --from`. The image is
//! booted and its output checked, and the secret is searched for in every output byte. A
//! second build re-runs apt (its command changed) and finds every package in the cache mount.
//!
//! Needs what `bash scripts/test.sh` provides; outside CI a missing tool skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Mutex;

mod support;

use firebuild_build::{BuildOptions, BuildRequest, Builder, Event, RunRequest, Runner};
use support::{collector, debugfs, guest, prerequisites};

/// The secret; random per run so a match cannot come from anywhere but this build.
fn secret() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("fb-secret-{nanos:x}-{}", std::process::id())
}

const HELLO_C: &str = r#"#include <stdio.h>
int main(void) { printf("hello from a static binary, token of %d bytes\n", TOKEN_LEN); return 0; }
"#;

const APT: &str = "--mount=type=cache,target=/var/cache/apt,sharing=locked \\\n    \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked";

/// Serves `body` to every request on a loopback port, in a thread; returns the URL.
fn serve(body: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/data.txt", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

const DATA: &str = "fetched on the host\n";

fn dockerfile(base: &str, url: &str) -> String {
    use sha2::Digest;
    let sum = hex::encode(sha2::Sha256::digest(DATA.as_bytes()));
    format!(
        "FROM {base} AS unused\n\
         RUN echo this stage is not needed && exit 1\n\
         \n\
         FROM {base} AS build\n\
         RUN {APT} \\\n    \
             apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev\n\
         RUN --mount=type=bind,source=hello.c,target=/src/hello.c \\\n    \
             --mount=type=secret,id=token,required \\\n    \
             --mount=type=secret,id=token,env=TOKEN \\\n    \
             --mount=type=tmpfs,target=/scratch \\\n    \
             mkdir -p /out && sha256sum < /run/secrets/token > /out/token.sha256 \\\n    \
             && echo \"${{#TOKEN}}\" > /out/token.len && touch /scratch/gone && (echo x >> /src/hello.c) 2>/out/bind.err; \\\n    \
             gcc -static -O2 -DTOKEN_LEN=$(cat /out/token.len) -o /out/hello /src/hello.c \\\n    \
             && ls /scratch > /out/scratch.ls\n\
         RUN --network=none bash -c 'exec 3<>/dev/tcp/169.254.0.2/9' 2> /out/net-none.err; \\\n    \
             tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' > /out/net-none.ifs; true\n\
         RUN bash -c 'exec 3<>/dev/tcp/169.254.0.2/9' 2> /out/net-default.err; true\n\
         ADD --checksum=sha256:{sum} --chmod=0640 {url} /out/\n\
         \n\
         FROM scratch\n\
         COPY --from=build /out/ /\n\
         COPY --from=build --chown=7:8 --chmod=0750 /out/hello /bin/hello2\n\
         CMD [\"/hello\"]\n"
    )
}

fn outputs(seen: &Mutex<Vec<Event>>) -> String {
    seen.lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Output { line, .. } | Event::Console { line } => Some(format!("{line}\n")),
            _ => None,
        })
        .collect()
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn a_multi_stage_build_with_mounts_runs_without_docker() {
    let Some((vminit, layout)) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ctx, out, cache) = (
        dir.path().join("ctx"),
        dir.path().join("out"),
        dir.path().join("cache"),
    );
    std::fs::create_dir_all(&ctx).unwrap();
    let base = format!("oci:{}", layout.display());
    std::fs::write(ctx.join("Dockerfile"), dockerfile(&base, &serve(DATA))).unwrap();
    std::fs::write(ctx.join("hello.c"), HELLO_C).unwrap();
    let secret = secret();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let builder = Builder::new(BuildOptions::new(guest(&vminit), &cache));
    let mut req = BuildRequest::new(&ctx, "multi", &out);
    req.secrets = vec![("token".to_owned(), secret.as_bytes().to_vec().into())];
    let (sink, seen) = collector();
    let built = match rt.block_on(builder.build(&req, sink)) {
        Ok(b) => b,
        Err(e) => panic!("{e}\n{}", outputs(&seen)),
    };
    let image = &built.image;
    let log = outputs(&seen);
    let events = seen.lock().unwrap().clone();

    // Only the stages the target needs were built, in order; the unused one never ran.
    let stages: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::StageStarted { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(stages, [1, 2], "{events:?}");
    assert!(!log.contains("this stage is not needed"), "{log}");
    assert!(
        events.iter().any(
            |e| matches!(e, Event::StepStarted { stage, instruction, .. }
            if stage == "build" && instruction.starts_with("RUN --mount=type=cache"))
        ),
        "{events:?}"
    );

    // COPY --from kept the compile stage's owners and modes, or applied --chown/--chmod.
    let hello = debugfs(image, "stat /hello");
    assert!(
        hello.contains("Mode:  0755") && hello.contains("User:     0   Group:     0"),
        "{hello}"
    );
    let hello2 = debugfs(image, "stat /bin/hello2");
    assert!(
        hello2.contains("Mode:  0750") && hello2.contains("User:     7   Group:     8"),
        "{hello2}"
    );
    let root = debugfs(image, "ls -p /");
    assert!(
        !root.contains("/usr/"),
        "the compile stage's files stayed there: {root}"
    );

    // The secret reached the step as a file and as env, read-only bind, tmpfs, no network.
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(secret.as_bytes()))
    };
    assert_eq!(debugfs(image, "cat /token.sha256"), format!("{sha}  -\n"));
    assert_eq!(
        debugfs(image, "cat /token.len").trim(),
        secret.len().to_string()
    );
    assert!(
        debugfs(image, "cat /bind.err").contains("Read-only file system"),
        "{log}"
    );
    assert_eq!(debugfs(image, "cat /scratch.ls"), "gone\n");
    assert!(
        debugfs(image, "cat /net-none.err").contains("Network is unreachable"),
        "{log}"
    );
    assert_eq!(debugfs(image, "cat /net-none.ifs"), "lo\n");
    assert!(
        debugfs(image, "cat /net-default.err").contains("Connection refused"),
        "{log}"
    );

    // ADD <url>: fetched on the host, checksum verified, --chmod applied.
    assert_eq!(debugfs(image, "cat /data.txt"), DATA);
    assert!(debugfs(image, "stat /data.txt").contains("Mode:  0640"));

    // The image boots and runs its CMD.
    let runner = Runner::new(guest(&vminit));
    let (sink, ran_seen) = collector();
    let ran = rt
        .block_on(runner.run(&RunRequest::new(image), sink))
        .unwrap();
    let console = outputs(&ran_seen);
    assert_eq!(ran.exit_code, 0, "{console}");
    assert!(
        console.contains(&format!(
            "hello from a static binary, token of {} bytes",
            secret.len()
        )),
        "{console}"
    );

    // The secret is in no output: image, manifest, configs, logs, events.
    let needle = secret.as_bytes();
    assert!(
        files_containing(&out, needle).is_empty(),
        "{:?}",
        files_containing(&out, needle)
    );
    assert!(!format!("{events:?}").contains(&secret) && !log.contains(&secret));
    assert!(!console.contains(&secret));

    // A second build re-runs apt (its command changed): every package is in the cache mount.
    std::fs::write(
        ctx.join("Dockerfile.again"),
        format!(
            "FROM {base}\nRUN {APT} \\\n    apt-get install -y --download-only --no-install-recommends gcc libc6-dev\n"
        ),
    )
    .unwrap();
    let mut again = BuildRequest::new(&ctx, "again", &out);
    again.dockerfile = Some(ctx.join("Dockerfile.again"));
    let (sink, seen) = collector();
    if let Err(e) = rt.block_on(builder.build(&again, sink)) {
        panic!("{e}\n{}", outputs(&seen));
    }
    let log = outputs(&seen);
    assert!(log.contains("Need to get 0 B/"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("Get:")), "{log}");
    let listed = firebuild_build::cache_mounts::list(&cache).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
}
