//! Dockerfile → build plan resolution, on contexts built in temporary directories.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

use firebuild_dockerfile::{Error, PlanRequest, plan};
use firebuild_plan::{
    Base, BuildPlan, Chmod, Command, EnvVar, Network, Origin, Resource, ResourceKind, RunMount,
    Sharing, Source, Step, StepKind, Transfer,
};

/// A context directory with the given files (`path`, `content`).
fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let full = dir.path().join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, content).unwrap();
    }
    dir
}

fn resolve_with(
    dockerfile: &str,
    ctx: &Path,
    build_args: &[(&str, &str)],
    target: Option<&str>,
) -> Result<BuildPlan, Error> {
    let args: Vec<(String, String)> = build_args
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    plan(&PlanRequest {
        build_args: &args,
        target,
        ..PlanRequest::new("Dockerfile", dockerfile, ctx)
    })
}

fn resolve(dockerfile: &str, ctx: &Path) -> BuildPlan {
    resolve_with(dockerfile, ctx, &[], None).unwrap()
}

fn fail(dockerfile: &str, ctx: &Path) -> String {
    resolve_with(dockerfile, ctx, &[], None)
        .expect_err("plan should fail")
        .to_string()
}

fn env(step: &Step, name: &str) -> Option<String> {
    step.context
        .env
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.value.clone())
}

fn arg(step: &Step, name: &str) -> Option<String> {
    step.context
        .args
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.value.clone())
}

fn transfer(step: &Step) -> &Transfer {
    match &step.kind {
        StepKind::Copy(t) | StepKind::Add(t) => t,
        StepKind::Run(_) | StepKind::Workdir => panic!("not a transfer: {step:?}"),
    }
}

fn resources(step: &Step) -> Vec<&Resource> {
    transfer(step)
        .sources
        .iter()
        .flat_map(|s| match s {
            Source::Path { resources, .. } => resources.iter().collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect()
}

fn targets(step: &Step) -> Vec<(String, String)> {
    resources(step)
        .into_iter()
        .map(|r| (r.path.clone(), r.target.clone()))
        .collect()
}

fn shell(step: &Step) -> &str {
    match &step.kind {
        StepKind::Run(run) => match &run.command {
            Command::Shell(s) => s,
            Command::Exec(_) => panic!("exec form"),
        },
        _ => panic!("not a RUN"),
    }
}

#[test]
fn multi_stage_build_with_copy_from_name_and_index() {
    let ctx = context(&[("main.c", "int main(){}")]);
    let p = resolve(
        "FROM gcc:13 AS build\n\
         WORKDIR /src\n\
         COPY main.c .\n\
         RUN cc -o app main.c\n\
         FROM debian:12\n\
         COPY --from=build /src/app /usr/local/bin/app\n\
         COPY --from=0 /src/main.c /usr/share/doc/\n",
        ctx.path(),
    );
    assert_eq!(p.target, 1);
    assert_eq!(p.stages.len(), 2);
    assert_eq!(p.stages[0].name.as_deref(), Some("build"));
    assert_eq!(
        p.stages[0].base,
        Base::Image {
            reference: "gcc:13".into()
        }
    );
    // steps[0] is the WORKDIR.
    let copy = &p.stages[0].steps[1];
    assert_eq!(targets(copy), [("main.c".into(), "/src/main.c".into())]);
    let from_name = transfer(&p.stages[1].steps[0]);
    assert_eq!(from_name.origin, Origin::Stage { index: 0 });
    assert_eq!(from_name.dest, "/usr/local/bin/app");
    assert_eq!(
        transfer(&p.stages[1].steps[1]).origin,
        Origin::Stage { index: 0 }
    );
    let from_image = resolve(
        "FROM scratch\nCOPY --from=busybox:1.36 /bin/busybox /busybox\n",
        ctx.path(),
    );
    assert_eq!(
        transfer(&from_image.stages[0].steps[0]).origin,
        Origin::Image {
            reference: "busybox:1.36".into()
        }
    );
    assert_eq!(from_image.stages[0].base, Base::Scratch);
}

#[test]
fn global_arg_in_from_needs_redeclaration_inside_the_stage() {
    let ctx = context(&[]);
    let df = "ARG TAG=12\nARG UNUSED_GLOBAL=x\n\
              FROM debian:${TAG} AS a\nRUN echo $TAG\n\
              FROM a\nARG TAG\nRUN echo $TAG\n";
    let p = resolve(df, ctx.path());
    assert_eq!(
        p.stages[0].base,
        Base::Image {
            reference: "debian:12".into()
        }
    );
    // Not re-declared: not in scope.
    assert_eq!(arg(&p.stages[0].steps[0], "TAG"), None);
    // Re-declared: the global value.
    assert_eq!(arg(&p.stages[1].steps[0], "TAG").as_deref(), Some("12"));
    assert_eq!(p.stages[1].base, Base::Stage { index: 0 });

    // --build-arg overrides the global default, in FROM and in the stage.
    let p = resolve_with(df, ctx.path(), &[("TAG", "13")], None).unwrap();
    assert_eq!(
        p.stages[0].base,
        Base::Image {
            reference: "debian:13".into()
        }
    );
    assert_eq!(arg(&p.stages[1].steps[0], "TAG").as_deref(), Some("13"));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn arg_env_interplay_and_unused_build_arg_warning() {
    let ctx = context(&[]);
    let df = "FROM alpine\n\
              ARG V=default\n\
              ARG W\n\
              ENV FROM_ARG=${V}-x\n\
              RUN step1\n\
              ENV V=env-wins\n\
              RUN step2\n";
    let p = resolve_with(df, ctx.path(), &[("V", "cli"), ("NOPE", "1")], None).unwrap();
    let s = &p.stages[0].steps;
    assert_eq!(arg(&s[0], "V").as_deref(), Some("cli"));
    assert_eq!(env(&s[0], "FROM_ARG").as_deref(), Some("cli-x"));
    // ARG without default or build arg has no value and is not listed.
    assert_eq!(arg(&s[0], "W"), None);
    // ENV wins over ARG for the process environment.
    let process = s[1].context.process_env();
    assert!(process.contains(&EnvVar::new("V", "env-wins")));
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("NOPE") && w.contains("not consumed")),
        "{:?}",
        p.warnings
    );
    assert!(!p.warnings.iter().any(|w| w.contains(" V")));

    // An undeclared variable in FROM expands to nothing, with a warning naming the line.
    let p = resolve("ARG A=x\nFROM img${A}${NOPE}\n", ctx.path());
    assert_eq!(
        p.stages[0].base,
        Base::Image {
            reference: "imgx".into()
        }
    );
    assert!(
        p.warnings
            .iter()
            .any(|w| w.starts_with("Dockerfile:2:1:") && w.contains("\"NOPE\"")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn one_env_instruction_sees_the_environment_from_before_it() {
    let ctx = context(&[]);
    // The example of Docker's ENV documentation.
    let p = resolve(
        "FROM alpine\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\nRUN env\n",
        ctx.path(),
    );
    let run = &p.stages[0].steps[0];
    assert_eq!(env(run, "def").as_deref(), Some("hello"));
    assert_eq!(env(run, "ghi").as_deref(), Some("bye"));
    assert_eq!(
        p.stages[0].config.env,
        [
            EnvVar::new("abc", "bye"),
            EnvVar::new("def", "hello"),
            EnvVar::new("ghi", "bye")
        ]
    );
}

#[test]
fn workdir_user_env_and_shell_inherit_from_a_stage_base() {
    let ctx = context(&[]);
    let p = resolve(
        "FROM alpine AS base\n\
         ENV A=1\n\
         WORKDIR /app\n\
         WORKDIR src\n\
         USER nobody\n\
         SHELL [\"/bin/ash\", \"-c\"]\n\
         RUN pwd\n\
         FROM base\n\
         ENV B=$A-2\n\
         WORKDIR ../lib\n\
         RUN ls\n",
        ctx.path(),
    );
    // Each WORKDIR is a step (made as the user in force), before the RUN.
    assert_eq!(p.stages[0].steps[0].context.workdir, "/app");
    assert_eq!(p.stages[0].steps[1].context.workdir, "/app/src");
    let first = &p.stages[0].steps[2];
    assert_eq!(first.context.workdir, "/app/src");
    assert_eq!(first.context.user.as_deref(), Some("nobody"));
    assert_eq!(first.context.shell, ["/bin/ash", "-c"]);
    let second = &p.stages[1].steps[1];
    assert_eq!(second.context.workdir, "/app/lib");
    assert_eq!(second.context.user.as_deref(), Some("nobody"));
    assert_eq!(second.context.shell, ["/bin/ash", "-c"]);
    assert_eq!(env(second, "A").as_deref(), Some("1"));
    assert_eq!(env(second, "B").as_deref(), Some("1-2"));
    // Shell form stays unexpanded: the shell expands it at run time.
    assert_eq!(shell(second), "ls");
    let cfg = &p.stages[1].config;
    assert_eq!(cfg.workdir.as_deref(), Some("/app/lib"));
    assert_eq!(cfg.user.as_deref(), Some("nobody"));
}

#[test]
fn dockerignore_and_exclude_filter_sources() {
    let ctx = context(&[
        ("app/main.rs", "fn main(){}"),
        ("app/lib.rs", "//"),
        ("app/debug.log", "log"),
        ("app/target/out", "bin"),
        ("notes.txt", "n"),
        (".dockerignore", "**/*.log\napp/target\n"),
    ]);
    let p = resolve("FROM scratch\nCOPY app /app\n", ctx.path());
    let got = targets(&p.stages[0].steps[0]);
    assert_eq!(
        got,
        [
            ("app".into(), "/app".into()),
            ("app/lib.rs".into(), "/app/lib.rs".into()),
            ("app/main.rs".into(), "/app/main.rs".into()),
        ]
    );
    let p = resolve("FROM scratch\nCOPY --exclude=lib.rs app /app\n", ctx.path());
    let paths: Vec<String> = targets(&p.stages[0].steps[0])
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(paths, ["app", "app/main.rs"]);
    assert_eq!(transfer(&p.stages[0].steps[0]).exclude, ["lib.rs"]);
    // An ignored file cannot be copied at all.
    let msg = fail("FROM scratch\nCOPY app/debug.log /x\n", ctx.path());
    assert!(msg.contains("Dockerfile:2:1"), "{msg}");
    assert!(msg.contains("not found"), "{msg}");
}

#[test]
fn dockerignore_exception_reincludes_a_file_under_an_ignored_directory() {
    let ctx = context(&[
        ("cache/big.bin", "x"),
        ("cache/keep.txt", "k"),
        ("cache/sub/deep.txt", "d"),
        (".dockerignore", "cache\n!cache/keep.txt\n"),
    ]);
    let p = resolve("FROM scratch\nCOPY . /ctx/\n", ctx.path());
    let paths: Vec<String> = targets(&p.stages[0].steps[0])
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(paths, [".", ".dockerignore", "cache/keep.txt"]);
}

#[test]
fn globbed_sources_land_in_the_destination_directory() {
    let ctx = context(&[
        ("a.txt", "a"),
        ("b.txt", "b"),
        ("c.md", "c"),
        ("sub/d.txt", "d"),
    ]);
    let p = resolve("FROM scratch\nWORKDIR /w\nCOPY *.txt out/\n", ctx.path());
    assert_eq!(p.stages[0].steps[0].kind, StepKind::Workdir);
    assert_eq!(
        targets(&p.stages[0].steps[1]),
        [
            ("a.txt".into(), "/w/out/a.txt".into()),
            ("b.txt".into(), "/w/out/b.txt".into()),
        ]
    );
    // A single file to a path without '/' is the file itself.
    let p = resolve("FROM scratch\nCOPY c.md /doc\n", ctx.path());
    assert_eq!(
        targets(&p.stages[0].steps[0]),
        [("c.md".into(), "/doc".into())]
    );
    // Several sources need a directory destination.
    let msg = fail("FROM scratch\nCOPY a.txt b.txt /dst\n", ctx.path());
    assert!(msg.contains("must be a directory"), "{msg}");
    // --parents keeps the matched path.
    let p = resolve("FROM scratch\nCOPY --parents sub/*.txt /p/\n", ctx.path());
    assert_eq!(
        targets(&p.stages[0].steps[0]),
        [("sub/d.txt".into(), "/p/sub/d.txt".into())]
    );
}

#[test]
fn out_of_context_sources_fail_naming_the_line() {
    let ctx = context(&[("ok.txt", "ok")]);
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), "s").unwrap();
    std::os::unix::fs::symlink(outside.path(), ctx.path().join("escape")).unwrap();
    for (src, what) in [
        ("../etc/passwd", "outside the build context"),
        ("/etc/passwd", "absolute"),
        ("escape/secret", "points outside the build context"),
    ] {
        let msg = fail(
            &format!("FROM scratch\nCOPY ok.txt /ok\n  COPY {src} /x\n"),
            ctx.path(),
        );
        assert!(msg.starts_with("Dockerfile:3:3: "), "{msg}");
        assert!(msg.contains(what), "{src}: {msg}");
        assert!(
            msg.contains("    3 |   COPY"),
            "caret snippet missing: {msg}"
        );
        assert!(msg.contains("^"), "{msg}");
    }
}

#[test]
fn missing_source_and_unknown_stage_fail() {
    let ctx = context(&[]);
    let msg = fail("FROM scratch\nCOPY nothing.txt /\n", ctx.path());
    assert!(
        msg.contains("Dockerfile:2:1") && msg.contains("not found"),
        "{msg}"
    );
    let msg = fail("FROM scratch\nCOPY --from=3 /x /y\n", ctx.path());
    assert!(
        msg.contains("Dockerfile:2:1") && msg.contains("index 3"),
        "{msg}"
    );
    let df = "FROM scratch AS a\nCOPY --from=b /x /y\nFROM scratch AS b\n";
    let msg = resolve_with(df, ctx.path(), &[], Some("a"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("defined later"), "{msg}");
    // Not needed by the default target (b): pruned, as buildkit does.
    assert!(resolve_with(df, ctx.path(), &[], None).is_ok());
    let msg = fail("FROM a AS a\n", ctx.path());
    assert!(msg.contains("circular"), "{msg}");
}

#[test]
fn security_is_rejected_network_is_kept() {
    let ctx = context(&[]);
    let msg = fail("FROM alpine\nRUN --security=insecure make\n", ctx.path());
    assert!(
        msg.starts_with("Dockerfile:2:1:") && msg.contains("--security"),
        "{msg}"
    );
    let msg = fail("FROM alpine\nRUN --mount=type=ssh make\n", ctx.path());
    assert!(
        msg.starts_with("Dockerfile:2:1:") && msg.contains("type=ssh"),
        "{msg}"
    );
    let p = resolve("FROM alpine\nRUN --network=none make\n", ctx.path());
    match &p.stages[0].steps[0].kind {
        StepKind::Run(run) => assert_eq!(run.network, Network::None),
        other => panic!("{other:?}"),
    }
}

fn mounts(step: &Step) -> &[RunMount] {
    match &step.kind {
        StepKind::Run(run) => &run.mounts,
        other => panic!("{other:?}"),
    }
}

#[test]
fn run_mounts_resolve_with_buildkit_defaults() {
    let ctx = context(&[("go.mod", "module x"), ("src/a.c", "int a;"), ("skip", "s")]);
    std::fs::write(ctx.path().join(".dockerignore"), "skip\n").unwrap();
    let df = "FROM alpine AS build\nRUN true\nFROM alpine\nARG V=cache\nWORKDIR /w\n\
              RUN --mount=type=cache,target=/var/$V/apt,sharing=locked \\\n\
                  --mount=type=cache,id=go,target=gocache,uid=1000,mode=0700 \\\n\
                  --mount=type=secret,id=tok \\\n\
                  --mount=type=secret,id=k,env=KEY \\\n\
                  --mount=type=tmpfs,target=/scratch,size=64m \\\n\
                  --mount=type=bind,source=.,target=/ctx \\\n\
                  --mount=type=bind,from=build,source=/usr/../etc,target=/e,rw make\n";
    let p = resolve(df, ctx.path());
    let m = mounts(&p.stages[1].steps[1]);
    assert_eq!(
        m[0],
        RunMount::Cache {
            target: "/var/cache/apt".into(),
            id: "/var/cache/apt".into(),
            sharing: Sharing::Locked,
            readonly: false,
            uid: 0,
            gid: 0,
            mode: 0o755,
        }
    );
    assert!(
        matches!(&m[1], RunMount::Cache { id, target, uid: 1000, mode: 0o700, .. } if id == "go" && target == "/w/gocache")
    );
    assert_eq!(
        m[2],
        RunMount::Secret {
            id: "tok".into(),
            target: Some("/run/secrets/tok".into()),
            env: None,
            required: false,
            mode: 0o400,
            uid: 0,
            gid: 0,
        }
    );
    assert!(matches!(&m[3], RunMount::Secret { target: None, env: Some(e), .. } if e == "KEY"));
    assert_eq!(
        m[4],
        RunMount::Tmpfs {
            target: "/scratch".into(),
            size: Some(64 << 20)
        }
    );
    let RunMount::Bind {
        target,
        from: Origin::Context,
        source,
        rw: false,
        resources,
    } = &m[5]
    else {
        panic!("{:?}", m[5]);
    };
    assert_eq!((target.as_str(), source.as_str()), ("/ctx", ""));
    let mut found: Vec<&str> = resources.iter().map(|r| r.target.as_str()).collect();
    found.sort();
    assert!(
        found.contains(&"/go.mod") && found.contains(&"/src/a.c"),
        "{found:?}"
    );
    assert!(!found.iter().any(|t| t.ends_with("skip")), "{found:?}");
    assert!(resources.iter().all(|r| r.id.starts_with('r')));
    assert!(
        matches!(&m[6], RunMount::Bind { from: Origin::Stage { index: 0 }, source, rw: true, .. } if source == "etc")
    );
    assert_eq!(p.stages[1].disks().len(), 3, "{:?}", p.stages[1].disks());
}

#[test]
fn target_selects_and_prunes_stages() {
    let ctx = context(&[("f", "x")]);
    let df = "FROM alpine AS deps\nRUN fetch\n\
              FROM alpine AS unused\nCOPY missing-file /\n\
              FROM deps AS build\nRUN make\n\
              FROM scratch AS out\nCOPY --from=build /app /app\n\
              FROM alpine AS test\nCOPY f /f\n";
    let p = resolve_with(df, ctx.path(), &[], Some("out")).unwrap();
    let kept: Vec<usize> = p.stages.iter().map(|s| s.index).collect();
    assert_eq!(kept, [0, 2, 3]);
    assert_eq!(p.target, 3);
    assert_eq!(p.target_stage().unwrap().name.as_deref(), Some("out"));
    // The default target is the last stage; the broken unused stage is never checked.
    let p = resolve_with(df, ctx.path(), &[], None).unwrap();
    assert_eq!(p.stages.iter().map(|s| s.index).collect::<Vec<_>>(), [4]);
    // ... but it is when targeted.
    let err = resolve_with(df, ctx.path(), &[], Some("unused")).unwrap_err();
    assert!(err.to_string().contains("Dockerfile:4:1"), "{err}");
    let err = resolve_with(df, ctx.path(), &[], Some("nope")).unwrap_err();
    assert!(
        err.to_string()
            .contains("target stage \"nope\" could not be found"),
        "{err}"
    );
}

#[test]
fn chmod_and_chown_are_parsed() {
    let ctx = context(&[("run.sh", "#!/bin/sh")]);
    let p = resolve(
        "FROM scratch\nARG MODE=0750\n\
         COPY --chmod=$MODE --chown=app:staff run.sh /bin/\n\
         COPY --chmod=u+x,go-w run.sh /bin/b\n",
        ctx.path(),
    );
    let a = transfer(&p.stages[0].steps[0]);
    assert_eq!(a.chmod, Some(Chmod::Octal(0o750)));
    let chown = a.chown.as_ref().unwrap();
    assert_eq!(
        (chown.user.as_str(), chown.group.as_deref()),
        ("app", Some("staff"))
    );
    assert_eq!(
        transfer(&p.stages[0].steps[1]).chmod,
        Some(Chmod::Symbolic("u+x,go-w".into()))
    );
    let msg = fail("FROM scratch\nCOPY --chmod=u+q run.sh /\n", ctx.path());
    assert!(msg.contains("invalid --chmod"), "{msg}");
    let msg = fail("FROM scratch\nCOPY --chmod=999 run.sh /\n", ctx.path());
    assert!(msg.contains("invalid --chmod"), "{msg}");
}

#[test]
fn add_url_checksum_is_validated() {
    let ctx = context(&[]);
    let sum = "ab".repeat(32);
    let p = resolve(
        &format!(
            "FROM scratch\nADD --checksum=sha256:{sum} https://example.invalid/pkg/tool.tar.gz /opt/\n"
        ),
        ctx.path(),
    );
    match &transfer(&p.stages[0].steps[0]).sources[0] {
        Source::Url {
            url,
            checksum,
            id,
            target,
        } => {
            assert_eq!(url, "https://example.invalid/pkg/tool.tar.gz");
            assert_eq!(checksum.as_deref(), Some(format!("sha256:{sum}").as_str()));
            assert!(!id.is_empty());
            assert_eq!(target, "/opt/tool.tar.gz");
        }
        other => panic!("{other:?}"),
    }
    let msg = fail(
        "FROM scratch\nADD --checksum=sha256:1234 https://example.invalid/x /x\n",
        ctx.path(),
    );
    assert!(msg.contains("invalid --checksum"), "{msg}");
    let msg = fail(
        "FROM scratch\nCOPY https://example.invalid/x /x\n",
        ctx.path(),
    );
    assert!(msg.contains("URL"), "{msg}");
}

#[test]
fn add_detects_archives_by_content_not_name() {
    let mut tar = vec![0u8; 1024];
    tar[..8].copy_from_slice(b"file.txt");
    tar[257..262].copy_from_slice(b"ustar");
    let ctx = context(&[("plain.tar.gz", "not an archive at all")]);
    fs::write(ctx.path().join("bundle.bin"), &tar).unwrap();
    fs::write(ctx.path().join("data.gz"), [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
    let p = resolve(
        "FROM scratch\nADD bundle.bin /opt/\nADD plain.tar.gz /opt/\nADD data.gz /d/\nCOPY bundle.bin /c/\n",
        ctx.path(),
    );
    let s = &p.stages[0].steps;
    let r = resources(&s[0]);
    assert!(r[0].extract, "tar by magic bytes");
    assert_eq!(r[0].target, "/opt");
    assert!(!resources(&s[1])[0].extract, "name alone is not enough");
    assert_eq!(resources(&s[1])[0].target, "/opt/plain.tar.gz");
    assert!(resources(&s[2])[0].extract, "gzip by magic bytes");
    assert!(!resources(&s[3])[0].extract, "COPY never extracts");
}

#[test]
fn resource_ids_are_unique_and_steps_keep_spans() {
    let ctx = context(&[("a", "1"), ("d/b", "2"), ("d/c", "3")]);
    let p = resolve(
        "FROM scratch AS one\nCOPY a d /x/\nFROM scratch\nCOPY --from=one /x /x\n\nCOPY a \\\n  /y\n",
        ctx.path(),
    );
    let mut ids: Vec<&str> = p
        .stages
        .iter()
        .flat_map(|s| &s.steps)
        .flat_map(resources)
        .map(|r| r.id.as_str())
        .collect();
    let n = ids.len();
    assert_eq!(n, 5);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "ids must be unique");
    let last = &p.stages[1].steps[1];
    assert_eq!((last.span.start_line, last.span.end_line), (6, 7));
    assert_eq!(
        resources(&p.stages[0].steps[0])
            .iter()
            .map(|r| r.kind)
            .collect::<Vec<_>>(),
        [
            ResourceKind::File,
            ResourceKind::Dir,
            ResourceKind::File,
            ResourceKind::File
        ]
    );
}

#[test]
fn image_config_is_collected() {
    let ctx = context(&[]);
    let p = resolve(
        "FROM alpine AS base\nCMD [\"sh\"]\nEXPOSE 80 53/UDP\n\
         FROM base\nARG PORT=8080\nEXPOSE $PORT 80/tcp\n\
         LABEL a=1 \"b c\"=\"2 3\"\nVOLUME /data /cache\nVOLUME [\"/data\"]\n\
         STOPSIGNAL SIGINT\nHEALTHCHECK --interval=5s --retries=2 CMD curl -f localhost\n\
         ONBUILD RUN echo triggered\nENTRYPOINT [\"/app\"]\n",
        ctx.path(),
    );
    let c = &p.stages[1].config;
    assert_eq!(c.exposed_ports, ["53/udp", "80/tcp", "8080/tcp"]);
    assert_eq!(c.labels.get("b c").map(String::as_str), Some("2 3"));
    assert_eq!(c.volumes, ["/cache", "/data"]);
    assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    // ENTRYPOINT resets the CMD inherited from the base stage.
    assert_eq!(c.entrypoint, Some(Command::Exec(vec!["/app".into()])));
    assert_eq!(c.cmd, None);
    assert_eq!(c.onbuild, ["RUN echo triggered"]);
    match &c.healthcheck {
        Some(firebuild_plan::Healthcheck::Cmd {
            interval_ms,
            retries,
            ..
        }) => assert_eq!((*interval_ms, *retries), (Some(5000), Some(2))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn onbuild_triggers_run_in_a_stage_built_from_the_stage() {
    let ctx = context(&[]);
    let p = resolve(
        "FROM alpine AS base\nONBUILD RUN echo triggered\nRUN first\nFROM base\nRUN second\n",
        ctx.path(),
    );
    assert_eq!(p.stages[0].config.onbuild, ["RUN echo triggered"]);
    let child = &p.stages[1];
    let cmds: Vec<&str> = child.steps.iter().map(shell).collect();
    assert_eq!(cmds, ["echo triggered", "second"]);
    assert_eq!(
        child.steps[0].span.start_line, 2,
        "the trigger keeps its ONBUILD line"
    );
    assert!(
        child.config.onbuild.is_empty(),
        "triggers are not passed on"
    );
}

#[test]
fn copy_heredoc_is_expanded_unless_quoted() {
    let ctx = context(&[]);
    let p = resolve(
        "FROM scratch\nENV WHO=world\nCOPY <<EOF /hello\nhello $WHO\nEOF\nCOPY <<'RAW' /raw\nkeep $WHO\nRAW\n",
        ctx.path(),
    );
    let doc = |i: usize| match &transfer(&p.stages[0].steps[i]).sources[0] {
        Source::Heredoc { heredoc } => heredoc.content.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(doc(0), "hello world\n");
    assert_eq!(doc(1), "keep $WHO\n");
}

#[test]
fn no_from_is_an_error() {
    let ctx = context(&[]);
    let msg = fail("ARG A=1\n", ctx.path());
    assert!(msg.contains("no stages"), "{msg}");
    let msg = fail("RUN true\nFROM alpine\n", ctx.path());
    assert!(
        msg.contains("Dockerfile:1:1") && msg.contains("before the first FROM"),
        "{msg}"
    );
}

#[test]
fn the_multistage_example_resolves() {
    let ex = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/multistage");
    let text = fs::read_to_string(format!("{ex}/Dockerfile")).unwrap();
    let p = plan(&PlanRequest::new("Dockerfile", &text, Path::new(ex))).unwrap();
    assert_eq!(p.stages.len(), 2);
    let copy_docs = p.stages[1]
        .steps
        .iter()
        .find(|s| matches!(&s.kind, StepKind::Copy(t) if t.dest == "/srv/docs/"))
        .unwrap();
    // docs/draft-*.md is in .dockerignore.
    assert_eq!(
        targets(copy_docs),
        [("docs/usage.md".into(), "/srv/docs/usage.md".into())]
    );
    let copy_src = &p.stages[0].steps[1];
    let paths: Vec<String> = targets(copy_src).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        ["src", "src/Makefile", "src/main.c"],
        "*.tmp is ignored"
    );
}

/// `ARG V=xxxxxxxxxxxxxxxx` and then `ARG V=$V$V` on each of `doublings` lines.
fn doubling(first: &str, doublings: usize, then: &str) -> String {
    let mut df = format!("{first}\nARG V=xxxxxxxxxxxxxxxx\n");
    for _ in 0..doublings {
        df.push_str("ARG V=$V$V\n");
    }
    df.push_str(then);
    df
}

#[test]
fn variable_expansion_is_bounded_per_word_and_in_all() {
    let ctx = context(&[]);
    // Each word is bounded: 16 bytes doubled 20 times is 16 MiB, the limit; the 21st doubling
    // (line 23) fails, naming its line, instead of asking for gigabytes as buildkit does.
    let msg = fail(&doubling("FROM scratch", 40, ""), ctx.path());
    assert!(msg.starts_with("Dockerfile:23:"), "{msg}");
    assert!(
        msg.contains("ARG: expansion at offset") && msg.contains("more than 16777216 bytes"),
        "{msg}"
    );
    // So is `${V//pattern/replacement}`, which multiplies rather than adds.
    let msg = fail(
        &doubling("FROM scratch", 10, "ARG W=${V//x/$V}\n"),
        ctx.path(),
    );
    assert!(msg.starts_with("Dockerfile:13:"), "{msg}");
    assert!(msg.contains("more than 16777216 bytes"), "{msg}");
    // A value under the word limit copied into many steps is bounded in all: 8 MiB of ENV and
    // 8 MiB of ARG in each of 40 RUN steps is 640 MiB, past the 256 MiB; the step that crosses
    // it fails, some way into the RUN lines (23 to 62).
    let runs = "ENV V=$V\n".to_owned() + &"RUN true\n".repeat(40);
    let msg = fail(&doubling("FROM scratch", 19, &runs), ctx.path());
    assert!(
        msg.contains("RUN: variable expansion produces more than 268435456 bytes in all"),
        "{msg}"
    );
    let line: usize = msg.split(':').nth(1).unwrap().parse().unwrap();
    assert!((30..62).contains(&line), "{msg}");
    // Below both limits the same shape plans: 1 MiB of ENV in 40 steps.
    let plan = resolve(&doubling("FROM scratch", 16, &runs), ctx.path());
    let step = plan.stages[0].steps.last().unwrap();
    assert_eq!(env(step, "V").map(|v| v.len()), Some(1 << 20));
}

#[test]
fn pattern_matching_work_is_bounded_in_all() {
    let ctx = context(&[]);
    // `${V#*y}` on 64 KiB reads every character against two pattern positions before it
    // finds no `y`: 196,608 steps a line, so the plan's 4,194,304 steps run out at the 22nd
    // such line (line 36), long before the output (1.4 MiB) nears its own bound.
    let trims = "ENV W=${V#*y}\n".repeat(30);
    let msg = fail(&doubling("FROM scratch", 12, &trims), ctx.path());
    assert!(msg.starts_with("Dockerfile:36:"), "{msg}");
    assert!(
        msg.contains(
            "ENV: pattern matching at offset 0 takes more than its budget of 4194304 steps"
        ),
        "{msg}"
    );
    // One `${V//p/r}` on a large value runs out on its own (buildkit would scan 16 MiB).
    let msg = fail(
        &doubling("FROM scratch", 20, "ARG W=${V//*y/z}\n"),
        ctx.path(),
    );
    assert!(msg.starts_with("Dockerfile:23:"), "{msg}");
    assert!(msg.contains("ARG: pattern matching at offset 0"), "{msg}");
    // Below the budget the same shape plans, and matches as buildkit does.
    let plan = resolve(&doubling("FROM scratch", 12, &trims[..14 * 20]), ctx.path());
    let step_env = &plan.stages[0].config.env;
    // No match: `#` leaves the value as it was.
    assert!(
        step_env
            .iter()
            .any(|e| e.name == "W" && e.value.len() == 1 << 16)
    );
}
