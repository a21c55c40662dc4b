//! Build secrets over real TCP and mutual TLS on 127.0.0.1: served from memory only to the RUN
//! step that mounts them, once per step start, and never named by value in events or errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;

use firebuild_bootstrap::{
    BootstrapClient, DirSource, Event, MAX_SECRET_BYTES, SecretBytes, StepRef,
};
use firebuild_plan::{BuildPlan, Command, Run, RunMount, Span, Step, StepContext, StepKind};
use support::*;
use tonic::Code;

const VALUE: &[u8] = b"tok-3f9a-VERY-SECRET";

fn secret_mount(id: &str) -> RunMount {
    RunMount::Secret {
        id: id.into(),
        target: Some(format!("/run/secrets/{id}")),
        env: None,
        required: false,
        mode: 0o400,
        uid: 0,
        gid: 0,
    }
}

fn run(index: usize, mounts: Vec<RunMount>) -> Step {
    Step {
        index,
        span: Span::lines(2 + index as u32, 2 + index as u32),
        context: StepContext::default(),
        kind: StepKind::Run(Run {
            mounts,
            ..Run::new(Command::Shell("cat /run/secrets/tok".into()))
        }),
    }
}

/// Step 0 mounts `tok`, step 1 mounts nothing, step 2 mounts `missing` (not given) and `big`
/// (larger than a secret may be).
fn secret_plan() -> BuildPlan {
    BuildPlan::scratch(vec![
        run(0, vec![secret_mount("tok")]),
        run(1, vec![]),
        run(2, vec![secret_mount("missing"), secret_mount("big")]),
    ])
}

fn at(step: usize) -> StepRef {
    StepRef { stage: 0, step }
}

async fn refused(h: &mut Harness, client: &BootstrapClient, id: &str, needle: &str) {
    let err = client.fetch_secret(id).await.unwrap_err();
    let status = status_of(&err);
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(status.message().contains(id), "{status}");
    assert!(status.message().contains(needle), "{status}");
    let events = h
        .events_until(|e| matches!(e, Event::Rejected { .. }))
        .await;
    let Some(Event::Rejected { reason, .. }) = events.last() else {
        unreachable!()
    };
    assert!(reason.contains(id) && reason.contains(needle), "{reason}");
}

#[tokio::test]
async fn a_secret_is_served_only_inside_the_step_that_mounts_it() {
    let ctx = context(16);
    let plan = secret_plan();
    let secrets = BTreeMap::from([
        ("tok".to_owned(), SecretBytes::new(VALUE.to_vec())),
        (
            "big".to_owned(),
            SecretBytes::new(vec![7; MAX_SECRET_BYTES as usize + 1]),
        ),
    ]);
    let source = DirSource::new(&plan, ctx.path()).with_secrets(secrets);
    let mut h = start(plan, ctx.path(), |b| b.resources(source)).await;
    let client = h.client().await;
    let commands = client.commands().await.unwrap();
    assert!(
        commands.resource_ids.contains(&"secret:tok".to_owned()),
        "{:?}",
        commands.resource_ids
    );

    // Before any step runs.
    refused(&mut h, &client, "tok", "no step runs").await;

    // Inside the RUN that mounts it: served once.
    client.step_started(at(0)).await.unwrap();
    let value = client.fetch_secret("tok").await.unwrap().unwrap();
    assert_eq!(value.expose_secret(), VALUE);
    refused(&mut h, &client, "tok", "again").await;
    client.step_finished(at(0), 0).await.unwrap();

    // After it finished, and during a step that does not mount it.
    refused(&mut h, &client, "tok", "no step runs").await;
    client.step_started(at(1)).await.unwrap();
    refused(&mut h, &client, "tok", "does not mount it").await;
    client.step_finished(at(1), 0).await.unwrap();

    // Mounted but not given: NOT_FOUND with the flag to pass, and `None` for the guest.
    client.step_started(at(2)).await.unwrap();
    let err = client
        .pull_to_memory("secret:missing", MAX_SECRET_BYTES)
        .await
        .unwrap_err();
    let status = status_of(&err);
    assert_eq!(status.code(), Code::NotFound, "{status}");
    assert_eq!(
        status.message(),
        "secret missing was not given to the build (--secret id=missing,...)"
    );
    client.step_started(at(2)).await.unwrap();
    assert!(client.fetch_secret("missing").await.unwrap().is_none());
    // Larger than a secret may be: refused by the server, without its bytes.
    let err = client.fetch_secret("big").await.unwrap_err();
    assert_eq!(status_of(&err).code(), Code::FailedPrecondition);
    assert!(status_of(&err).message().contains("1048577 bytes"), "{err}");
    client.step_finished(at(2), 0).await.unwrap();

    // A new start of the step may have it again (a retried step).
    client.step_started(at(0)).await.unwrap();
    let again = client.fetch_secret("tok").await.unwrap().unwrap();
    assert_eq!(again.expose_secret(), VALUE);
    client.step_finished(at(0), 0).await.unwrap();
    client.success().await.unwrap();

    // Events name the id and the size, never the value.
    let events = h.events_until(|e| matches!(e, Event::Succeeded)).await;
    let sent: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::ResourceSent { id, bytes, .. } => Some((id.as_str(), *bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(sent, [("secret:tok", VALUE.len() as u64)]);
    let text = format!("{events:?} {err:?} {value:?}");
    assert!(!text.contains("VERY-SECRET"), "{text}");
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_source_without_secrets_answers_not_given() {
    // The default `ResourceSource::secret` (and a DirSource given no secrets): not given.
    let ctx = context(16);
    let plan = secret_plan();
    let mut h = start(plan, ctx.path(), |b| b).await;
    let client = h.client().await;
    client.commands().await.unwrap();
    client.step_started(at(0)).await.unwrap();
    assert!(client.fetch_secret("tok").await.unwrap().is_none());
    // Not given is no way around the step check.
    client.step_started(at(1)).await.unwrap();
    refused(&mut h, &client, "tok", "does not mount it").await;
    h.server.shutdown().await.unwrap();
}
