//! `RUN --mount` in build mode: what a step mounts is set up before it runs and taken down
//! after it, whatever its outcome, as BuildKit's executor does:
//! - `bind` from the context: its files pulled into a tmpfs, bound on the target (read-only
//!   unless `rw`; writes are discarded with the tmpfs);
//! - `bind` from a stage or an image: that disk's directory bound read-only, or copied into a
//!   tmpfs for `rw`;
//! - `cache`: the cache disk's `data` directory (created with `uid`/`gid`/`mode`) bound on the
//!   target;
//! - `tmpfs`: a tmpfs on the target;
//! - `secret`: pulled over the mutual-TLS channel into a tmpfs (memory only) and bound on the
//!   target file, or handed to the step as an environment variable.
//!
//! Mount targets that do not exist are created and removed again afterwards when still empty
//! (BuildKit's mount stub cleanup, `executor/stubs.go`), so a step's mounts leave nothing in
//! the image.

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use firebuild_bootstrap::BootstrapClient;
use firebuild_guest::paths;
use firebuild_guest::place::Placer;
use firebuild_plan::{DiskRole, EnvVar, Origin, RunMount, Transfer};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags, mount, mount_bind, unmount};

use crate::disks::{self, Mounted};

/// Scratch space for a step's mounts: a tmpfs in the devtmpfs, not in the image.
const SCRATCH: &str = "/dev/.firebuild/mounts";

/// The mounts of one running step; [`StepMounts::teardown`] undoes them.
#[derive(Debug, Default)]
pub struct StepMounts {
    /// Mount points in the image, in mount order.
    targets: Vec<PathBuf>,
    /// Paths created as mount points, in creation order.
    stubs: Vec<PathBuf>,
    /// Disks mounted for the step, by serial.
    disks: BTreeMap<String, Mounted>,
    /// Whether the scratch tmpfs is mounted.
    scratch: bool,
    /// Environment variables the step gets (secret `env=`).
    pub env: Vec<EnvVar>,
    /// Secrets fetched for the step (the host serves each once per step), by id.
    secrets: BTreeMap<String, Option<firebuild_bootstrap::SecretBytes>>,
}

impl StepMounts {
    /// Mounts everything `mounts` asks for under `root`.
    pub async fn setup(
        root: &Path,
        client: &BootstrapClient,
        mounts: &[RunMount],
    ) -> anyhow::Result<Self> {
        let mut this = StepMounts::default();
        if mounts.is_empty() {
            return Ok(this);
        }
        let result = this.mount_all(root, client, mounts).await;
        if let Err(e) = result {
            this.teardown();
            return Err(e);
        }
        Ok(this)
    }

    async fn mount_all(
        &mut self,
        root: &Path,
        client: &BootstrapClient,
        mounts: &[RunMount],
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(SCRATCH).with_context(|| format!("creating {SCRATCH}"))?;
        mount(
            "tmpfs",
            SCRATCH,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            c"mode=0700",
        )
        .with_context(|| format!("mounting a tmpfs on {SCRATCH}"))?;
        self.scratch = true;
        for (n, m) in mounts.iter().enumerate() {
            let what = m.target().unwrap_or("(env)").to_owned();
            self.mount_one(root, client, n, m)
                .await
                .with_context(|| format!("RUN --mount target {what}"))?;
        }
        Ok(())
    }

    async fn mount_one(
        &mut self,
        root: &Path,
        client: &BootstrapClient,
        n: usize,
        m: &RunMount,
    ) -> anyhow::Result<()> {
        let scratch = Path::new(SCRATCH).join(n.to_string());
        match m {
            RunMount::Bind {
                target,
                from: Origin::Context,
                rw,
                resources,
                ..
            } => {
                std::fs::create_dir(&scratch)?;
                let placer = Placer::with(&scratch, None, None);
                let staging = Path::new(SCRATCH).join(format!("{n}.staging"));
                std::fs::create_dir(&staging)?;
                let mut file = None;
                for r in resources {
                    let staged = crate::place::pull(client, &staging, &r.id).await?;
                    let placed = placer
                        .place_resource(r, &staged)
                        .with_context(|| format!("placing {}", r.path))?;
                    if resources.len() == 1 && r.kind == firebuild_plan::ResourceKind::File {
                        file = Some(placed);
                    }
                }
                let source = file.unwrap_or(scratch);
                self.bind(root, &source, target, !rw)
            }
            RunMount::Bind {
                target,
                from,
                source,
                rw,
                ..
            } => {
                let role = disks::role_of(from).context("a bind from the context")?;
                let dir = self.disk(&role)?.to_path_buf();
                let found = paths::resolve(&dir, &format!("/{source}"))?;
                if *rw {
                    // Writes must be discarded: work on a copy in memory.
                    std::fs::create_dir(&scratch)?;
                    let t = copy_all(source);
                    firebuild_guest::copy_from::copy(&dir, &scratch, &t)?;
                    let copied = if found.is_dir() {
                        scratch
                    } else {
                        scratch.join(found.file_name().unwrap_or_default())
                    };
                    return self.bind(root, &copied, target, false);
                }
                self.bind(root, &found, target, true)
            }
            RunMount::Cache {
                target,
                id,
                readonly,
                uid,
                gid,
                mode,
                ..
            } => {
                let dir = self.disk(&DiskRole::Cache(id.clone()))?.join("data");
                if !dir.exists() {
                    std::fs::create_dir(&dir)?;
                    chown(&dir, Some(*uid), Some(*gid))?;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(*mode))?;
                }
                self.bind(root, &dir, target, *readonly)
            }
            RunMount::Tmpfs { target, size } => {
                let host = self.mount_point(root, target, false)?;
                let data = match size {
                    Some(s) => std::ffi::CString::new(format!("size={s}"))?,
                    None => std::ffi::CString::default(),
                };
                mount(
                    "tmpfs",
                    &host,
                    "tmpfs",
                    MountFlags::NOSUID | MountFlags::NODEV,
                    data.as_c_str(),
                )
                .with_context(|| format!("mounting a tmpfs on {target}"))?;
                self.targets.push(host);
                Ok(())
            }
            RunMount::Secret {
                id,
                target,
                env,
                required,
                mode,
                uid,
                gid,
            } => {
                if !self.secrets.contains_key(id) {
                    let value = client.fetch_secret(id).await?;
                    self.secrets.insert(id.clone(), value);
                }
                let Some(value) = self.secrets[id].clone() else {
                    anyhow::ensure!(
                        !required,
                        "secret {id} is required but was not given to the build (firebuild-host build --secret id={id},src=FILE)"
                    );
                    tracing::info!("secret {id} not given: the step runs without it");
                    return Ok(());
                };
                if let Some(name) = env {
                    let text = std::str::from_utf8(value.expose_secret())
                        .with_context(|| format!("secret {id} for env {name} is not UTF-8"))?;
                    self.env.push(EnvVar {
                        name: name.clone(),
                        value: text.to_owned(),
                    });
                }
                if let Some(target) = target {
                    let file = scratch.with_extension("secret");
                    std::fs::write(&file, value.expose_secret())?;
                    chown(&file, Some(*uid), Some(*gid))?;
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))?;
                    self.bind(root, &file, target, true)?;
                }
                Ok(())
            }
        }
    }

    /// The directory of the disk of `role`, mounted once for the step.
    fn disk(&mut self, role: &DiskRole) -> anyhow::Result<&Path> {
        let serial = role.serial();
        if !self.disks.contains_key(&serial) {
            self.disks.insert(serial.clone(), Mounted::mount(role)?);
        }
        Ok(self.disks[&serial].dir())
    }

    /// Binds `source` on the guest path `target` (created if missing), read-only if asked.
    fn bind(&mut self, root: &Path, source: &Path, target: &str, ro: bool) -> anyhow::Result<()> {
        let host = self.mount_point(root, target, !source.is_dir())?;
        mount_bind(source, &host)
            .with_context(|| format!("binding {} on {target}", source.display()))?;
        self.targets.push(host.clone());
        let _ = rustix::mount::mount_change(&host, MountPropagationFlags::PRIVATE);
        if ro {
            rustix::mount::mount_remount(&host, MountFlags::BIND | MountFlags::RDONLY, "")
                .with_context(|| format!("making {target} read-only"))?;
        }
        Ok(())
    }

    /// The host path of the mount point `target`, created (a directory, or an empty file
    /// when `file`) with its missing parents, each remembered as a stub.
    fn mount_point(&mut self, root: &Path, target: &str, file: bool) -> anyhow::Result<PathBuf> {
        let target = paths::normalize(target);
        let mut guest = String::new();
        let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            guest.push('/');
            guest.push_str(part);
            let host = paths::resolve(root, &guest)?;
            if std::fs::symlink_metadata(&host).is_ok() {
                continue;
            }
            if file && i + 1 == parts.len() {
                std::fs::File::create(&host)
                    .with_context(|| format!("creating the mount point {guest}"))?;
            } else {
                std::fs::create_dir(&host)
                    .with_context(|| format!("creating the mount point {guest}"))?;
            }
            self.stubs.push(host);
        }
        Ok(paths::resolve(root, &target)?)
    }

    /// Unmounts everything, innermost first, removes the stubs that stayed empty and the
    /// scratch tmpfs (secrets with it).
    pub fn teardown(&mut self) {
        for host in self.targets.drain(..).rev() {
            if let Err(e) = unmount(&host, UnmountFlags::empty()) {
                tracing::warn!("unmounting {}: {e}; detaching", host.display());
                let _ = unmount(&host, UnmountFlags::DETACH);
            }
        }
        for stub in self.stubs.drain(..).rev() {
            let removed = match std::fs::symlink_metadata(&stub) {
                Ok(m) if m.is_dir() => std::fs::remove_dir(&stub),
                Ok(m) if m.len() == 0 => std::fs::remove_file(&stub),
                _ => Ok(()),
            };
            if let Err(e) = removed {
                tracing::debug!("mount point {} kept: {e}", stub.display());
            }
        }
        self.disks.clear();
        self.secrets.clear();
        if self.scratch {
            if let Err(e) = unmount(SCRATCH, UnmountFlags::DETACH) {
                tracing::warn!("unmounting {SCRATCH}: {e}");
            }
            self.scratch = false;
        }
        self.env.clear();
    }
}

impl Drop for StepMounts {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A COPY of `source` (relative to an origin's root) into a directory.
fn copy_all(source: &str) -> Transfer {
    let source = firebuild_plan::Source::Path {
        pattern: format!("/{source}"),
        resources: Vec::new(),
    };
    Transfer::new(Origin::Stage { index: 0 }, vec![source], "/")
}
