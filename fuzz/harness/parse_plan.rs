//! The `parse_plan` fuzz harness, shared by the cargo-fuzz target and the stable replay test
//! (`crates/dockerfile/tests/fuzz_corpus.rs`): parse, type the instructions and resolve a
//! plan against an empty context. Errors are fine; panics and broken invariants are not.
//!
//! `plan` parses and types the instructions itself, so a UTF-8 input goes through it alone
//! (parsing it first as well doubled the work per input for no new code reached); other
//! inputs go through `parse_bytes`, which must reject them.

use std::collections::HashSet;
use std::path::Path;

use firebuild_dockerfile::{PlanRequest, plan};
use firebuild_plan::Source;

/// Runs one input. `ctx` is an empty directory used as the build context.
pub fn run(data: &[u8], ctx: &Path) {
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(
            firebuild_dockerfile::parse_bytes(data).is_err(),
            "parse_bytes accepted bytes that are not UTF-8"
        );
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
        // An absolute WORKDIR is kept as written (`/a/../b`, `/.`), as buildkit's
        // `normalizeWorkdirUnix` does; the guest normalises it when it makes or enters it
        // (`firebuild_guest::step`); a relative one is joined to the current one and cleaned.
        assert!(step.context.workdir.starts_with('/'), "workdir is absolute");
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
