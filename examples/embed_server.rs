//! Embed the firebuild bootstrap server in a VMM tool, and play the guest with the client.
//!
//! `cargo run -p firebuild-examples --example embed_server`

use firebuild_bootstrap::{
    BootstrapClient, BootstrapConfig, BootstrapServer, ClientKey, DirSource, OutputOptions,
    OutputStream, StepRef,
};
use firebuild_pki::{BuildId, BuildPki, Validity};
use firebuild_plan::{BuildPlan, StepKind};

const PLAN: &str = r#"{"schema_version":1,"dockerfile":"Dockerfile","target":0,"stages":[{
  "index":0,"base":{"kind":"scratch"},"span":{"start_line":1,"start_col":1,"end_line":1,"end_col":1},
  "config":{},"steps":[
  {"index":0,"span":{"start_line":2,"start_col":1,"end_line":2,"end_col":1},
   "context":{"env":[],"args":[],"workdir":"/","shell":["/bin/sh","-c"]},
   "kind":{"kind":"copy","origin":{"kind":"context"},"dest":"/etc/motd","sources":[{"type":"path",
     "pattern":"motd","resources":[{"id":"ctx:motd","path":"motd","kind":"file","target":"/etc/motd"}]}]}},
  {"index":1,"span":{"start_line":3,"start_col":1,"end_line":3,"end_col":1},
   "context":{"env":[],"args":[],"workdir":"/","shell":["/bin/sh","-c"]},
   "kind":{"kind":"run","command":{"form":"shell","value":"cat /etc/motd"}}}]}]}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Host: a plan, a build context, a per-build PKI, and the server.
    let plan: BuildPlan = serde_json::from_str(PLAN)?;
    let context = tempfile::tempdir()?;
    std::fs::write(context.path().join("motd"), "hello from the host\n")?;
    let build = BuildId::new("example-1")?;
    let pki = BuildPki::generate(build.clone(), &["127.0.0.1"], &Validity::default())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (mut server, mut events) = BootstrapServer::builder()
        .resources(DirSource::new(&plan, context.path()))
        .plan(plan)
        .tls(pki.server.clone())
        .expected_client(build)
        .serve(listener)
        .await?;
    let printer = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            println!("host event: {event:?}");
        }
    });

    // Guest: what vminit does with the MMDS `bootstrap` section.
    let config = BootstrapConfig {
        grpc_host_port: server.local_addr().to_string(),
        tls_ca_cert: pki.client.ca_cert_pem().to_owned(),
        tls_cert: pki.client.cert_pem().to_owned(),
        tls_key: ClientKey::new(pki.client.key_pem().expose_secret().to_owned()),
    };
    let rootfs = tempfile::tempdir()?;
    let client = BootstrapClient::connect(&config).await?;
    let _heartbeat = client.spawn_heartbeat(None);
    let commands = client.commands().await?;
    let output = client.output(OutputOptions::default());
    for (stage, step) in commands.plan.steps() {
        let at = StepRef {
            stage: stage.index,
            step: step.index,
        };
        client.step_started(at).await?;
        match &step.kind {
            StepKind::Run(run) => {
                // A real guest spawns the command; here we just echo it.
                let line = format!("would run {:?}", run.command.argv(&step.context.shell));
                output.line(at, OutputStream::Stdout, line).await?;
            }
            StepKind::Workdir => {
                let dir = rootfs
                    .path()
                    .join(step.context.workdir.trim_start_matches('/'));
                std::fs::create_dir_all(dir)?;
            }
            StepKind::Copy(t) | StepKind::Add(t) => {
                for source in &t.sources {
                    let firebuild_plan::Source::Path { resources, .. } = source else {
                        continue;
                    };
                    for r in resources {
                        let dest = rootfs.path().join(r.target.trim_start_matches('/'));
                        let mut sink = firebuild_transfer::DirSink::new(&dest);
                        let done = client.pull(&r.id, &mut sink).await?;
                        println!("guest placed {} ({} bytes)", r.target, done.bytes);
                    }
                }
            }
        }
        client.step_finished(at, 0).await?;
    }
    output.finish().await?;
    client.success().await?;

    println!("outcome: {:?}", server.wait().await);
    print!(
        "{}",
        std::fs::read_to_string(rootfs.path().join("etc/motd"))?
    );
    server.shutdown().await?;
    printer.abort();
    Ok(())
}
