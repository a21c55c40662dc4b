//! The `parse_plan` fuzz harness, shared by the cargo-fuzz target and the stable replay test
//! (`crates/dockerfile/tests/fuzz_corpus.rs`): parse, type the instructions and resolve a
//! plan against an empty context. Errors are fine; panics and broken invariants are not.

use std::collections::HashSet;
use std::path::Path;

use firebuild_dockerfile::{PlanRequest, plan};
use firebuild_plan::Source;

/// Runs one input. `ctx` is an empty directory used as the build context.
pub fn run(data: &[u8], ctx: &Path) {
    let Ok(ast) = firebuild_dockerfile::parse_bytes(data) else {
        return;
    };
    let _ = firebuild_dockerfile::instructions::from_ast(&ast);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let build_args = [("A".to_owned(), "1".to_owned())];
    let Ok(p) = plan(&PlanRequest {
        dockerfile_path: "Dockerfile",
        dockerfile: text,
        context_dir: ctx,
        build_args: &build_args,
        target: None,
        ..PlanRequest::new("Dockerfile", text, ctx)
    }) else {
        return;
    };
    assert!(
        p.target_stage().is_some(),
        "the target stage is in the plan"
    );
    let mut ids = HashSet::new();
    for (_, step) in p.steps() {
        assert!(step.context.workdir.starts_with('/'), "workdir is absolute");
        assert!(
            !step
                .context
                .workdir
                .split('/')
                .any(|c| c == ".." || c == ".")
        );
        if let firebuild_plan::StepKind::Copy(t) | firebuild_plan::StepKind::Add(t) = &step.kind {
            assert!(t.dest.starts_with('/'), "dest is absolute");
            for s in &t.sources {
                match s {
                    Source::Path { resources, .. } => {
                        for r in resources {
                            assert!(ids.insert(r.id.clone()), "duplicate id {}", r.id);
                            assert!(!r.path.split('/').any(|c| c == ".."), "{}", r.path);
                        }
                    }
                    Source::Url { id, .. } => assert!(ids.insert(id.clone()), "duplicate id"),
                    Source::Heredoc { .. } => {}
                }
            }
        }
    }
}
