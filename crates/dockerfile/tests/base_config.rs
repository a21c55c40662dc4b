//! A base image's config feeds the plan the way buildkit's `dockerfile2llb` feeds it: env,
//! workdir, user, shell, image config, ENTRYPOINT/CMD rules and ONBUILD triggers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

use firebuild_dockerfile::{PlanRequest, plan};
use firebuild_plan::{
    Base, BuildPlan, Command, EnvVar, Healthcheck, ImageConfig, Stage, Step, StepKind,
};

const BASE: &str = "registry.test/base:1";

/// A base image config like a distro's, with a server's entrypoint and metadata.
fn base_config() -> ImageConfig {
    ImageConfig {
        env: vec![
            EnvVar::new("PATH", "/usr/local/bin:/usr/bin:/bin"),
            EnvVar::new("LANG", "C.UTF-8"),
        ],
        entrypoint: Some(Command::Exec(vec!["/docker-entrypoint.sh".into()])),
        cmd: Some(Command::Exec(vec!["serve".into()])),
        workdir: Some("/srv".into()),
        user: Some("app".into()),
        exposed_ports: vec!["8080/tcp".into()],
        labels: BTreeMap::from([("org.base".into(), "yes".into()), ("v".into(), "1".into())]),
        volumes: vec!["/data".into()],
        stop_signal: Some("SIGQUIT".into()),
        healthcheck: Some(Healthcheck::Cmd {
            command: Command::Exec(vec!["/check".into()]),
            interval_ms: Some(5_000),
            timeout_ms: None,
            start_period_ms: None,
            start_interval_ms: None,
            retries: Some(3),
        }),
        ..ImageConfig::default()
    }
}

fn plan_with(dockerfile: &str, configs: &BTreeMap<String, ImageConfig>) -> BuildPlan {
    let req = PlanRequest {
        base_configs: configs,
        ..PlanRequest::new("Dockerfile", dockerfile, Path::new("."))
    };
    plan(&req).unwrap()
}

fn with_base(dockerfile: &str, config: ImageConfig) -> BuildPlan {
    plan_with(dockerfile, &BTreeMap::from([(BASE.to_owned(), config)]))
}

fn last_stage(p: &BuildPlan) -> &Stage {
    p.stages.last().unwrap()
}

fn env(step: &Step, name: &str) -> Option<String> {
    step.context
        .env
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.value.clone())
}

fn run_text(step: &Step) -> &str {
    match &step.kind {
        StepKind::Run(r) => match &r.command {
            Command::Shell(s) => s,
            Command::Exec(_) => panic!("exec-form RUN"),
        },
        other => panic!("not a RUN: {other:?}"),
    }
}

fn exec(words: &[&str]) -> Option<Command> {
    Some(Command::Exec(
        words.iter().map(|w| (*w).to_owned()).collect(),
    ))
}

#[test]
fn run_sees_the_base_path_and_env_path_expands_against_it() {
    let p = with_base(
        &format!("FROM {BASE}\nRUN which sh\nENV PATH=/opt/x/bin:$PATH\nRUN tool\n"),
        base_config(),
    );
    let stage = last_stage(&p);
    assert_eq!(
        env(&stage.steps[0], "PATH").as_deref(),
        Some("/usr/local/bin:/usr/bin:/bin")
    );
    assert_eq!(env(&stage.steps[0], "LANG").as_deref(), Some("C.UTF-8"));
    assert_eq!(
        env(&stage.steps[1], "PATH").as_deref(),
        Some("/opt/x/bin:/usr/local/bin:/usr/bin:/bin")
    );
    // The base's order is kept; a replaced variable keeps its place.
    let names: Vec<&str> = stage.config.env.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["PATH", "LANG"]);
    assert_eq!(
        stage.config.env[0].value,
        "/opt/x/bin:/usr/local/bin:/usr/bin:/bin"
    );
}

#[test]
fn base_workdir_and_user_are_in_force_and_kept_in_the_config() {
    let p = with_base(
        &format!("FROM {BASE}\nRUN pwd\nWORKDIR sub\nUSER root\nRUN id\n"),
        base_config(),
    );
    let stage = last_stage(&p);
    assert_eq!(stage.steps[0].context.workdir, "/srv");
    assert_eq!(stage.steps[0].context.user.as_deref(), Some("app"));
    // WORKDIR is relative to the base's, and made as the USER in force at its line.
    assert_eq!(stage.steps[1].kind, StepKind::Workdir);
    assert_eq!(stage.steps[1].context.workdir, "/srv/sub");
    assert_eq!(stage.steps[1].context.user.as_deref(), Some("app"));
    assert_eq!(stage.steps[2].context.workdir, "/srv/sub");
    assert_eq!(stage.steps[2].context.user.as_deref(), Some("root"));
    assert_eq!(stage.config.workdir.as_deref(), Some("/srv/sub"));
    assert_eq!(stage.config.user.as_deref(), Some("root"));

    // Untouched by the Dockerfile: the base's values stand.
    let p = with_base(&format!("FROM {BASE}\nRUN true\n"), base_config());
    assert_eq!(last_stage(&p).config.workdir.as_deref(), Some("/srv"));
    assert_eq!(last_stage(&p).config.user.as_deref(), Some("app"));
}

#[test]
fn a_base_without_workdir_starts_at_root_and_its_shell_is_used() {
    let config = ImageConfig {
        shell: Some(vec!["/bin/bash".into(), "-ec".into()]),
        ..ImageConfig::default()
    };
    let p = with_base(&format!("FROM {BASE}\nRUN echo\n"), config);
    let step = &last_stage(&p).steps[0];
    assert_eq!(step.context.workdir, "/");
    assert_eq!(step.context.user, None);
    assert_eq!(step.context.shell, ["/bin/bash", "-ec"]);
    assert_eq!(last_stage(&p).config.workdir, None);
}

#[test]
fn cmd_alone_keeps_the_base_entrypoint() {
    let p = with_base(&format!("FROM {BASE}\nCMD [\"worker\"]\n"), base_config());
    let config = &last_stage(&p).config;
    assert_eq!(config.entrypoint, exec(&["/docker-entrypoint.sh"]));
    assert_eq!(config.cmd, exec(&["worker"]));
}

#[test]
fn entrypoint_resets_the_base_cmd() {
    let p = with_base(
        &format!("FROM {BASE}\nENTRYPOINT [\"/app\"]\n"),
        base_config(),
    );
    let config = &last_stage(&p).config;
    assert_eq!(config.entrypoint, exec(&["/app"]));
    assert_eq!(config.cmd, None, "the base CMD must not survive ENTRYPOINT");
}

#[test]
fn entrypoint_and_cmd_in_the_stage_both_stand_in_either_order() {
    for dockerfile in [
        format!("FROM {BASE}\nENTRYPOINT [\"/app\"]\nCMD [\"--fast\"]\n"),
        format!("FROM {BASE}\nCMD [\"--fast\"]\nENTRYPOINT [\"/app\"]\n"),
    ] {
        let p = with_base(&dockerfile, base_config());
        let config = &last_stage(&p).config;
        assert_eq!(config.entrypoint, exec(&["/app"]), "{dockerfile}");
        assert_eq!(config.cmd, exec(&["--fast"]), "{dockerfile}");
    }
}

#[test]
fn labels_ports_volumes_merge_and_metadata_is_inherited() {
    let p = with_base(
        &format!("FROM {BASE}\nLABEL v=2 mine=x\nEXPOSE 80 8080\nVOLUME /cache\n"),
        base_config(),
    );
    let config = &last_stage(&p).config;
    let labels: Vec<(&str, &str)> = config
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(labels, [("mine", "x"), ("org.base", "yes"), ("v", "2")]);
    assert_eq!(config.exposed_ports, ["80/tcp", "8080/tcp"]);
    assert_eq!(config.volumes, ["/cache", "/data"]);
    assert_eq!(config.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(config.healthcheck, base_config().healthcheck);
}

#[test]
fn a_stage_built_from_an_image_based_stage_inherits_through() {
    let p = with_base(
        &format!(
            "FROM {BASE} AS one\nENV A=1\nCMD [\"x\"]\n\
             FROM one\nENV PATH=/two:$PATH\nRUN go\n"
        ),
        base_config(),
    );
    let two = last_stage(&p);
    assert_eq!(two.base, Base::Stage { index: 0 });
    let step = &two.steps[0];
    assert_eq!(
        env(step, "PATH").as_deref(),
        Some("/two:/usr/local/bin:/usr/bin:/bin")
    );
    assert_eq!(env(step, "A").as_deref(), Some("1"));
    assert_eq!(step.context.workdir, "/srv");
    assert_eq!(step.context.user.as_deref(), Some("app"));
    assert_eq!(two.config.entrypoint, exec(&["/docker-entrypoint.sh"]));
    assert_eq!(two.config.cmd, exec(&["x"]));
    assert_eq!(two.config.labels["org.base"], "yes");
}

#[test]
fn scratch_starts_with_the_default_path_and_unknown_bases_start_empty() {
    let configs = BTreeMap::from([(BASE.to_owned(), base_config())]);
    // buildkit's `emptyImage`: PATH, in the steps' env and in the image config, and
    // WorkingDir `/` in the config.
    let path = vec![EnvVar::new("PATH", firebuild_plan::DEFAULT_PATH)];
    for (dockerfile, env, workdir) in [
        ("FROM scratch\nRUN x\n", path.clone(), Some("/".to_owned())),
        ("FROM other/image:2\nRUN x\n", Vec::new(), None),
    ] {
        let p = plan_with(dockerfile, &configs);
        let stage = last_stage(&p);
        assert_eq!(stage.steps[0].context.env, env, "{dockerfile}");
        assert_eq!(stage.steps[0].context.workdir, "/");
        assert_eq!(stage.steps[0].context.user, None);
        let config = ImageConfig {
            env,
            workdir,
            ..ImageConfig::default()
        };
        assert_eq!(stage.config, config, "{dockerfile}");
    }
}

#[test]
fn the_reference_is_matched_after_expansion() {
    let configs = BTreeMap::from([(BASE.to_owned(), base_config())]);
    let args = [("TAG".to_owned(), "1".to_owned())];
    let req = PlanRequest {
        base_configs: &configs,
        build_args: &args,
        ..PlanRequest::new(
            "Dockerfile",
            "ARG TAG\nFROM registry.test/base:${TAG}\nRUN x\n",
            Path::new("."),
        )
    };
    let p = plan(&req).unwrap();
    assert_eq!(p.stages[0].steps[0].context.workdir, "/srv");
}

#[test]
fn base_onbuild_triggers_run_first_and_are_not_passed_on() {
    let config = ImageConfig {
        onbuild: vec!["ENV FROM_TRIGGER=$LANG".into(), "RUN echo triggered".into()],
        ..base_config()
    };
    let p = with_base(&format!("FROM {BASE}\nRUN mine\n"), config);
    let stage = last_stage(&p);
    assert_eq!(stage.steps.len(), 2);
    assert_eq!(run_text(&stage.steps[0]), "echo triggered");
    assert_eq!(
        env(&stage.steps[0], "FROM_TRIGGER").as_deref(),
        Some("C.UTF-8")
    );
    // The trigger's step points at the FROM line.
    assert_eq!(stage.steps[0].span.start_line, 1);
    assert_eq!(run_text(&stage.steps[1]), "mine");
    assert!(stage.config.onbuild.is_empty());
}

#[test]
fn a_bad_base_trigger_is_refused_naming_the_from_line() {
    for trigger in ["FROM x", "ONBUILD RUN y", "NOPE z", "RUN a\nRUN b"] {
        let config = ImageConfig {
            onbuild: vec![trigger.into()],
            ..ImageConfig::default()
        };
        let configs = BTreeMap::from([(BASE.to_owned(), config)]);
        let req = PlanRequest {
            base_configs: &configs,
            ..PlanRequest::new(
                "Dockerfile",
                "ARG X\nFROM registry.test/base:1\n",
                Path::new("."),
            )
        };
        let err = plan(&req).unwrap_err().to_string();
        assert!(
            err.starts_with("Dockerfile:2:1: FROM registry.test/base:1"),
            "{err}"
        );
        assert!(err.contains("ONBUILD trigger"), "{err}");
    }
}

#[test]
fn shell_form_cmd_and_entrypoint_keep_the_shell_in_force_at_their_line() {
    // buildkit: `CMD echo hi` is stored as `SHELL + ["echo hi"]` when the line is read; a later
    // SHELL changes RUN, not how the image starts.
    let p = with_base(
        &format!(
            "FROM {BASE}\nSHELL [\"/bin/bash\", \"-c\"]\nENTRYPOINT exec server\n\
             CMD echo first\nSHELL [\"/bin/ash\", \"-c\"]\n"
        ),
        base_config(),
    );
    let config = &last_stage(&p).config;
    assert_eq!(config.entrypoint, exec(&["/bin/bash", "-c", "exec server"]));
    assert_eq!(config.cmd, exec(&["/bin/bash", "-c", "echo first"]));
    assert_eq!(config.shell, Some(vec!["/bin/ash".into(), "-c".into()]));
}
