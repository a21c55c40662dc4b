//! Dockerfile parsing and plan resolution, against the `parse-dockerfile` crate (syntax only)
//! on the same inputs: buildkit's 33 parser testfiles (read from ../shared/conformance at bench
//! time) and a generated Dockerfile of ~5000 instructions with ARG/ENV use and a context.
//!
//! Run: `cargo bench -p firebuild-benches --bench dockerfile -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use firebuild_dockerfile::{PlanRequest, plan};

const STAGES: usize = 100;
const FILES: usize = 8;

fn conformance_testfiles() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/buildkit/frontend/dockerfile/parser/testfiles");
    let Ok(rd) = std::fs::read_dir(&root) else {
        eprintln!(
            "note: {} not found: the buildkit testfiles group is skipped",
            root.display()
        );
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = rd
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let text = std::fs::read_to_string(dir.join("Dockerfile")).ok()?;
            Some((dir.file_name()?.to_string_lossy().into_owned(), text))
        })
        .collect();
    out.sort();
    out
}

/// A realistic large multi-stage Dockerfile: `STAGES` independent stages of 50 instructions
/// (ARG, ENV referencing ARGs and earlier ENVs, WORKDIR, RUN, COPY from the context, LABEL,
/// USER, EXPOSE), and a final stage copying from every one of them, so nothing is pruned.
fn generated() -> String {
    let mut d = String::from(
        "# syntax=docker/dockerfile:1\nARG BASE=debian\nARG TAG=12\nARG VERSION=1.0.0\n",
    );
    for i in 0..STAGES {
        let _ = writeln!(d, "\nFROM ${{BASE}}:${{TAG}} AS s{i}");
        let _ = writeln!(d, "ARG VERSION\nARG N{i}=v{i}\nARG JOBS=4");
        let _ = writeln!(
            d,
            "ENV HOME_{i}=/opt/s{i} \\\n    PATH=/opt/s{i}/bin:/usr/bin:/bin"
        );
        let _ = writeln!(d, "WORKDIR $HOME_{i}\nWORKDIR src");
        for j in 0..15 {
            let _ = writeln!(d, "ENV K{j}=\"${{N{i}}}-{j}\" L{j}=${{K{j}:-unset}}/x");
            let _ = writeln!(
                d,
                "RUN echo \"$K{j}\" && make -j$JOBS target{j} \\\n    && install -m 0755 out/{j} $HOME_{i}/bin/"
            );
            if j % 3 == 0 {
                let _ = writeln!(d, "COPY --chmod=0644 files/f{}.txt ./data/", j % FILES);
            }
        }
        let _ = writeln!(d, "COPY files/ conf/");
        let _ = writeln!(d, "LABEL stage{i}.version=$VERSION stage{i}.name=\"s{i}\"");
        let _ = writeln!(d, "USER u{i}:g{i}\nEXPOSE {}/tcp", 8000 + i);
    }
    d.push_str("\nFROM scratch AS final\n");
    for i in 0..STAGES {
        let _ = writeln!(d, "COPY --from=s{i} /opt/s{i} /opt/s{i}");
    }
    d.push_str("ENTRYPOINT [\"/opt/s0/bin/app\"]\n");
    d
}

fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("files")).unwrap();
    for f in 0..FILES {
        std::fs::write(dir.path().join(format!("files/f{f}.txt")), "data\n").unwrap();
    }
    dir
}

/// A context holding every plain COPY/ADD source a Dockerfile names (as empty-ish files), so
/// that its plan resolves instead of stopping at the first missing source.
fn context_for(text: &str) -> tempfile::TempDir {
    use firebuild_dockerfile::instructions::{InstructionKind, SourceArg};
    let dir = tempfile::tempdir().unwrap();
    let Ok(ast) = firebuild_dockerfile::parse(text) else {
        return dir;
    };
    let Ok(instructions) = firebuild_dockerfile::instructions::from_ast(&ast) else {
        return dir;
    };
    for ins in instructions {
        let (InstructionKind::Copy(t) | InstructionKind::Add(t)) = &ins.kind else {
            continue;
        };
        if t.from.is_some() {
            continue;
        }
        for src in &t.sources {
            let SourceArg::Path(p) = src else { continue };
            let rel = p.trim_start_matches("./");
            if rel.is_empty()
                || rel == "."
                || rel.contains(['$', '*', '?', '[', '\\'])
                || rel.contains("://")
                || rel.starts_with('/')
                || rel.split('/').any(|c| c == "..")
            {
                continue;
            }
            let full = dir.path().join(rel);
            if let Some(parent) = full.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::write(full, "data\n");
        }
    }
    dir
}

fn ours_plan(text: &str, ctx: &Path) -> usize {
    let req = PlanRequest::new("Dockerfile", text, ctx);
    match plan(&req) {
        Ok(p) => p.stages.iter().map(|s| s.steps.len()).sum(),
        Err(_) => 0,
    }
}

fn bench(c: &mut Criterion) {
    let ctx = context();
    let big = generated();
    let instructions = firebuild_dockerfile::parse(&big).unwrap().nodes.len();
    eprintln!(
        "generated Dockerfile: {} bytes, {instructions} instructions, {STAGES} stages",
        big.len()
    );
    let steps = ours_plan(&big, ctx.path());
    assert!(steps > 0, "the generated Dockerfile must resolve to a plan");

    let mut g = c.benchmark_group("generated-5000");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("parse-dockerfile/parse", |b| {
        b.iter(|| parse_dockerfile::parse(black_box(&big)).map(|d| d.instructions.len()))
    });
    g.bench_function("firebuild/parse", |b| {
        b.iter(|| firebuild_dockerfile::parse(black_box(&big)).map(|a| a.nodes.len()))
    });
    g.bench_function("firebuild/parse+instructions", |b| {
        b.iter(|| {
            let ast = firebuild_dockerfile::parse(black_box(&big)).unwrap();
            firebuild_dockerfile::instructions::from_ast(&ast).map(|v| v.len())
        })
    });
    g.bench_function("firebuild/plan", |b| {
        b.iter(|| ours_plan(black_box(&big), ctx.path()))
    });
    // The floor the owned plan model sets: building and dropping the output alone (every
    // step owns its env, args, workdir and shell), without parsing or resolving anything.
    let built = plan(&PlanRequest::new("Dockerfile", &big, ctx.path())).unwrap();
    g.bench_function("firebuild/plan-output-clone+drop", |b| {
        b.iter(|| black_box(&built).clone().stages.len())
    });
    g.finish();

    let files = conformance_testfiles();
    if files.is_empty() {
        return;
    }
    let contexts: Vec<tempfile::TempDir> = files.iter().map(|(_, t)| context_for(t)).collect();
    let total: usize = files.iter().map(|(_, t)| t.len()).sum();
    let planned = files
        .iter()
        .zip(&contexts)
        .filter(|((_, t), c)| ours_plan(t, c.path()) > 0)
        .count();
    eprintln!(
        "buildkit testfiles: {} files, {total} bytes, {planned} resolve to a plan with steps (the others are rejected by instruction checks buildkit also applies, e.g. unknown flags, or have no steps)",
        files.len()
    );
    let mut g = c.benchmark_group("buildkit-testfiles");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("parse-dockerfile/parse", |b| {
        b.iter(|| {
            files
                .iter()
                .filter(|(_, t)| parse_dockerfile::parse(black_box(t)).is_ok())
                .count()
        })
    });
    g.bench_function("firebuild/parse", |b| {
        b.iter(|| {
            files
                .iter()
                .filter(|(_, t)| firebuild_dockerfile::parse(black_box(t)).is_ok())
                .count()
        })
    });
    g.bench_function("firebuild/plan", |b| {
        b.iter(|| {
            files
                .iter()
                .zip(&contexts)
                .map(|((_, t), c)| ours_plan(black_box(t), c.path()))
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
