//! The run flow: [`Runner::run`] boots a built image and returns its workload's exit code.
//!
//! The image's config (ENTRYPOINT, CMD, ENV, WORKDIR, USER) comes from the manifest beside it
//! and reaches the agent in the initramfs, so the image holds nothing of firebuild. Without
//! metadata the guest is told so on its command line (`firebuild.metadata=off`) and starts the
//! workload at once; with metadata (our schema), the embedded MMDS serves it and the agent
//! configures the guest (hostname, users and keys, files, network, first-boot script) first.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use firebuild_plan::{Command, ImageConfig};
use firebuild_rootfs::Manifest;
use firebuild_vmm::RunOutcome;

use crate::boot;
use crate::error::{Error, Result};
use crate::event::{Event, EventSink};
use crate::options::{GuestOptions, RunRequest, read_bounded};
use crate::vm::{self, VmRequest};

/// Largest manifest read.
const MAX_MANIFEST: u64 = 1 << 20;

/// Boots built images.
#[derive(Debug, Clone)]
pub struct Runner {
    guest: GuestOptions,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Ran {
    /// The workload's exit code (128 + signal when killed), as the guest reported it.
    pub exit_code: i32,
}

/// Reads the manifest beside an image.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let bytes = read_bounded(path, MAX_MANIFEST, "manifest")?;
    let text = String::from_utf8_lossy(&bytes);
    Manifest::from_json(&text).map_err(Error::image(path))
}

/// The image config with `args` replacing CMD (`docker run IMAGE ARGS...`).
pub fn with_args(mut config: ImageConfig, args: &[String]) -> ImageConfig {
    if !args.is_empty() {
        config.cmd = Some(Command::Exec(args.to_vec()));
    }
    config
}

/// Checks a metadata document against the schema before it is served.
fn check_metadata(doc: &serde_json::Value) -> Result<()> {
    // EC2's or OpenStack's layout (only `latest` / `openstack` at the root): vminit maps it onto
    // the schema itself, and reports what it cannot use.
    if let Some(root) = doc.as_object()
        && !root.is_empty()
        && root.keys().all(|k| k == "latest" || k == "openstack")
    {
        return Ok(());
    }
    let bytes = serde_json::to_vec(doc).map_err(|e| Error::Invalid {
        what: "metadata",
        reason: e.to_string(),
    })?;
    firebuild_mmds::Metadata::from_json_slice(&bytes)
        .map(|_| ())
        .map_err(|e| Error::Invalid {
            what: "metadata",
            reason: e.to_string(),
        })
}

/// Follows the console log as the VM writes it, one [`Event::Console`] per line; remembers the
/// exit code the agent reported.
struct Tail {
    done: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Option<i32>>,
}

impl Tail {
    fn start(path: PathBuf, events: EventSink) -> Self {
        use tokio::io::AsyncReadExt as _;
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let task = tokio::spawn(async move {
            let mut file = None;
            let mut pending = Vec::new();
            let mut code = None;
            loop {
                let finished = flag.load(Ordering::SeqCst);
                if file.is_none() {
                    file = tokio::fs::File::open(&path).await.ok();
                }
                if let Some(f) = file.as_mut() {
                    let _ = f.read_to_end(&mut pending).await;
                }
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim_end_matches(['\r', '\n']);
                    code = firebuild_vmm::parse_exit_code(line).map(i32::from).or(code);
                    events(Event::Console {
                        line: line.to_owned(),
                    });
                }
                if finished {
                    return code;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { done, task }
    }

    async fn finish(self) -> Result<Option<i32>> {
        self.done.store(true, Ordering::SeqCst);
        Ok(self.task.await?)
    }
}

/// Emits [`Event::GuestStatus`] each time the guest's status document changes.
async fn follow_guest_status(
    mut changes: tokio::sync::watch::Receiver<firebuild_mmds::store::Snapshot>,
    events: EventSink,
) {
    let mut last = None;
    loop {
        let current = changes
            .borrow_and_update()
            .data
            .pointer(firebuild_mmds::schema::GUEST_STATUS_POINTER)
            .cloned();
        if current != last {
            if let Some(status) = current.clone().and_then(|v| serde_json::from_value(v).ok()) {
                events(Event::GuestStatus { status });
            }
            last = current;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

impl Runner {
    /// A runner booting with these guest options.
    pub fn new(guest: GuestOptions) -> Self {
        Self { guest }
    }

    /// Boots `req.image` and waits for its workload; the console's lines arrive as
    /// [`Event::Console`], the workload's exit code as [`Event::Exited`] and in the result.
    pub async fn run(&self, req: &RunRequest, events: EventSink) -> Result<Ran> {
        let manifest = read_manifest(&req.manifest_path())?;
        let config = with_args(manifest.image, &req.args);
        if let Some(doc) = &req.metadata {
            check_metadata(doc)?;
        }
        let work = tempfile::Builder::new()
            .prefix("firebuild-run-")
            .tempdir()
            .map_err(Error::io("create", std::env::temp_dir()))?;
        let boot = boot::prepare(&self.guest, Some(&config), work.path()).await?;
        let mmds = match &req.metadata {
            Some(doc) => Some(
                firebuild_mmds::server::Server::builder()
                    .initial_data(doc.clone())
                    .require_relay_key(true)
                    .guest_writes(true)
                    .start()
                    .await
                    .map_err(Error::Metadata)?,
            ),
            None => None,
        };
        let vm_req = VmRequest {
            name: "run".to_owned(),
            dir: &work.path().join("vm"),
            rootfs: &req.image,
            disks: Vec::new(),
            boot: &boot,
            metadata: mmds.as_ref().map(|m| m.local_addr()),
            host_ports: Vec::new(),
            metadata_key: mmds
                .as_ref()
                .and_then(|m| m.relay_key().map(<[u8]>::to_vec)),
            extra_cmdline: if mmds.is_some() {
                ""
            } else {
                "firebuild.metadata=off"
            },
            take: None,
        };
        std::fs::create_dir_all(vm_req.dir).map_err(Error::io("create", vm_req.dir))?;
        events(Event::VmStarting { driver: "qemu" });
        let tail = Tail::start(vm::console_path(&vm_req), events.clone());
        let status = mmds
            .as_ref()
            .map(|m| tokio::spawn(follow_guest_status(m.subscribe(), events.clone())));
        let result = vm::run(&self.guest, &vm_req, req.timeout).await;
        let exit_code = tail.finish().await?;
        if let Some(task) = status {
            // The last write may still be in flight when the VM powers off: a short grace.
            tokio::time::sleep(Duration::from_millis(100)).await;
            task.abort();
        }
        for consumed in mmds.as_ref().map(|m| m.consumed()).unwrap_or_default() {
            events(Event::MetadataConsumed {
                pointer: consumed.pointer,
            });
        }
        let result = result?;
        let console_path = vm::console_path(&vm_req);
        match result.outcome {
            Ok(RunOutcome::Exited(_)) => {}
            Ok(RunOutcome::TimedOut) => {
                return Err(Error::Timeout {
                    timeout: req.timeout,
                    console: console_path,
                });
            }
            Ok(RunOutcome::Cancelled) => {
                return Err(Error::Cancelled {
                    removed: Vec::new(),
                });
            }
            Ok(_) => {}
            Err(source) => {
                return Err(Error::Vm {
                    console: console_path,
                    source,
                });
            }
        }
        let Some(exit_code) = exit_code else {
            return Err(Error::NoResult {
                what: "the agent reported no exit code".to_owned(),
                console: console_path,
            });
        };
        events(Event::Exited { code: exit_code });
        Ok(Ran { exit_code })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn args_replace_cmd_and_keep_the_entrypoint() {
        let config = ImageConfig {
            entrypoint: Some(Command::Exec(vec!["/app".into()])),
            cmd: Some(Command::Shell("serve".into())),
            ..ImageConfig::default()
        };
        let c = with_args(config.clone(), &["check".into()]);
        assert_eq!(c.cmd, Some(Command::Exec(vec!["check".into()])));
        assert_eq!(c.entrypoint, config.entrypoint);
        assert_eq!(with_args(config.clone(), &[]), config);
    }

    #[test]
    fn bad_metadata_names_the_field() {
        let e = check_metadata(&serde_json::json!({"users": [{"name": "a", "uid": "x"}]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("users[0].uid"), "{e}");
    }
}
