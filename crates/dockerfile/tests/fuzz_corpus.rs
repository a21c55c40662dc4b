//! Replays the `parse_plan` fuzz corpus on stable through the same harness as the fuzz target
//! (`fuzz/harness/parse_plan.rs`): no input may panic or break a plan invariant.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../fuzz/harness/parse_plan.rs"]
mod harness;

#[test]
fn parse_plan_corpus_never_panics() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/parse_plan");
    let ctx = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 12, "seed corpus is missing files: {files:?}");
    for file in &files {
        let data = std::fs::read(file).unwrap();
        // A panic names the file through this message.
        eprintln!("replaying {}", file.display());
        harness::run(&data, ctx.path());
    }
}

#[test]
fn seeds_reach_the_resolver() {
    // The corpus is only useful if most seeds get past parsing into plan resolution.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/parse_plan");
    let ctx = tempfile::tempdir().unwrap();
    let mut planned = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let req = firebuild_dockerfile::PlanRequest::new("Dockerfile", &text, ctx.path());
        if firebuild_dockerfile::plan(&req).is_ok() {
            planned += 1;
        }
    }
    assert!(planned >= 6, "only {planned} seeds resolve to a plan");
}
