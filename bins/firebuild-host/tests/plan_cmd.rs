//! `firebuild-host plan` end to end: the example context, JSON output and failure messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

fn host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firebuild-host"))
        .args(args)
        .output()
        .expect("run firebuild-host")
}

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/multistage")
        .to_string_lossy()
        .into_owned()
}

fn var<'a>(vars: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    vars.as_array()?
        .iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["value"].as_str())
}

#[test]
fn plan_json_of_the_multistage_example() {
    let out = host(&[
        "plan",
        "--json",
        "--build-arg",
        "APP_VERSION=2.5.0",
        &example(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["schema_version"], firebuild_plan::SCHEMA_VERSION);
    assert_eq!(plan["target"], 1);
    let runtime = &plan["stages"][1];
    assert_eq!(runtime["name"], "runtime");
    assert_eq!(runtime["base"]["reference"], "debian:12-slim");
    // `RUN echo "app $APP_VERSION ready in $(pwd)"`, after USER app.
    let steps = runtime["steps"].as_array().unwrap();
    let echo = steps
        .iter()
        .find(|s| {
            s["kind"]["command"]["value"]
                .as_str()
                .is_some_and(|c| c.starts_with("echo"))
        })
        .expect("the echo step");
    let ctx = &echo["context"];
    assert_eq!(var(&ctx["args"], "APP_VERSION"), Some("2.5.0"));
    assert_eq!(
        var(&ctx["env"], "PATH"),
        Some("/opt/app/bin:/usr/local/bin:/usr/bin:/bin")
    );
    assert_eq!(ctx["workdir"], "/srv/data");
    assert_eq!(ctx["user"], "app");
    assert_eq!(
        ctx["shell"],
        serde_json::json!(["/bin/bash", "-eu", "-o", "pipefail", "-c"])
    );
    assert_eq!(echo["span"]["start_line"], 26);
    assert_eq!(echo["span"]["start_col"], 1);
    // The build stage's ENV with a continuation line.
    let build_run = plan["stages"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"]["kind"] == "run")
        .unwrap();
    assert_eq!(var(&build_run["context"]["env"], "CFLAGS"), Some("-O2"));
    assert_eq!(build_run["context"]["workdir"], "/src");
    assert_eq!(
        runtime["config"]["labels"]["org.opencontainers.image.version"],
        "2.5.0"
    );
}

#[test]
fn plan_table_is_the_default_and_warns_about_unused_build_args() {
    let out = host(&["plan", "--build-arg", "NOT_DECLARED=1", &example()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(stdout.starts_with("STAGE"), "{stdout}");
    assert!(stdout.contains("1 runtime"), "{stdout}");
    assert!(stdout.contains("/srv/data"), "{stdout}");
    assert!(stderr.contains("NOT_DECLARED"), "{stderr}");
}

#[test]
fn out_of_context_copy_fails_naming_the_line() {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM alpine\nWORKDIR /app\nCOPY ../secret.txt ./\n",
    )
    .unwrap();
    let out = host(&["plan", ctx.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("Dockerfile:3:1"), "{stderr}");
    assert!(stderr.contains("outside the build context"), "{stderr}");
    assert!(stderr.contains("    3 | COPY ../secret.txt ./"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn unknown_target_fails() {
    let out = host(&["plan", "--target", "nope", &example()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("\"nope\""), "{stderr}");
}
