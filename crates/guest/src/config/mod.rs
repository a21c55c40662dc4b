//! Guest configuration from metadata, idempotent and journaled.
//!
//! [`Configurator::apply`] takes the metadata document (`firebuild_mmds::schema::Metadata`) —
//! or `None` when the metadata service was unreachable — and configures the guest under its
//! root, step by step:
//!
//! | step | what | journaled | live part (root is `/` only) |
//! |---|---|---|---|
//! | `identity` | new `/etc/machine-id`, new SSH host keys (ed25519) | on a **new instance id** only | — |
//! | `users` | groups, users, homes (`/etc/skel`) | yes | — |
//! | `hostname` | `/etc/hostname`, `/etc/hosts` line | yes | `sethostname` every boot |
//! | `resolv` | `/etc/resolv.conf` from the interfaces' DNS | yes | — |
//! | `network` | addresses, routes, gateway, MTU, link up (netlink) | no (runtime state) | every boot |
//! | `ssh-keys` | `~/.ssh/authorized_keys` per user (0700/0600, owner) | yes | — |
//! | `files` | injected files (mode, owner, inline or by digest) | yes | — |
//! | `env` | `/etc/firebuild/env` (0600) | yes | — |
//! | `swap` | swap file with a swap header | yes | `swapon` every boot |
//! | `resize-rootfs` | — | no | ext4's online resize ioctl on `/`, when asked (no tool needed) |
//! | `firstboot` | the script, once per instance | yes (see below) | — |
//!
//! # The journal
//! `/var/lib/firebuild/journal.json` (0600) records, for the instance id it belongs to, each
//! step's name and the SHA-256 of its input. A step whose input digest is already recorded is
//! skipped ([`Outcome::Unchanged`]); a step is recorded only **after** it succeeded, so a
//! failure means it runs again next time. The records are committed together — one `syncfs`
//! of the root file system, then the journal written atomically — after the last step and
//! before the firstboot script; the steps' own files are written atomically but without a
//! `fsync` each (that is what made a first boot cost ~250 ms on a busy disk). A crash before the
//! commit re-runs the steps on the next boot, which is harmless as each step is idempotent. A new
//! instance id resets the journal: everything is applied again for the new instance, and the
//! identity is regenerated. A corrupt journal is an error, never a reason to regenerate.
//!
//! # Metadata outage
//! `apply(None)` changes nothing derived from metadata and never touches the identity (a VM
//! whose metadata service is down keeps its machine id and host keys). On the live root it
//! only restores runtime state from the guest's own files: the hostname from `/etc/hostname`
//! and the journaled swap file.
//!
//! # Firstboot re-run policy
//! The script must start with an interpreter line (`#!`). Before it starts, the journal records
//! `firstboot: started` (committed to disk); when it ends, `finished` with its exit code or signal.
//! Its output goes to `/var/log/firebuild/firstboot.log` (0600). A script that ended, with any
//! status, is never run again for this instance. A journal still saying `started` (the guest
//! crashed or lost power during the script) is **not** re-run automatically — the script may
//! not be safe to repeat — and is reported as [`Outcome::Skipped`] with that reason; delete the
//! `firstboot` entry from the journal to run it again.

mod identity;
mod journal;
pub mod netlink;

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use firebuild_mmds::schema::{self, Metadata};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

pub use identity::{SshKey, new_machine_id, new_ssh_ed25519, swap_header};
pub use journal::{FirstbootState, JOURNAL_PATH, Journal};

use crate::error::{Error, Result};
use crate::passwd::{self, NewUser, UserDb};
use crate::paths::{self, FileMeta};
use crate::step::{self, Exit, RunRequest};

/// Guest path of the env file.
pub const ENV_PATH: &str = "/etc/firebuild/env";
/// Guest path of the firstboot log.
pub const FIRSTBOOT_LOG: &str = "/var/log/firebuild/firstboot.log";
/// Guest path the firstboot script is written to.
pub const FIRSTBOOT_SCRIPT: &str = "/var/lib/firebuild/firstboot";
/// Largest injected file fetched by digest.
pub const MAX_FETCHED_FILE: usize = 64 << 20;

/// Supplies the bytes of injected files given by digest (`blake3:<hex>` or `sha256:<hex>`).
/// The content is verified against the digest after fetching.
pub trait ContentFetcher {
    /// The bytes for `digest`, or a reason.
    fn fetch(&self, digest: &str) -> std::result::Result<Vec<u8>, String>;
}

/// A fetcher that has nothing: every digest file fails its step.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoContent;

impl ContentFetcher for NoContent {
    fn fetch(&self, digest: &str) -> std::result::Result<Vec<u8>, String> {
        Err(format!("no content source for {digest}"))
    }
}

impl<F: Fn(&str) -> std::result::Result<Vec<u8>, String>> ContentFetcher for F {
    fn fetch(&self, digest: &str) -> std::result::Result<Vec<u8>, String> {
        self(digest)
    }
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and succeeded (and was journaled if it is journaled).
    Applied,
    /// The journal says it was already applied with the same input: nothing done.
    Unchanged,
    /// Not run, with the reason (section absent, not the live root, outage...).
    Skipped(String),
    /// It failed; not journaled, so it runs again next time.
    Failed(String),
}

/// One step's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    /// The step name (`hostname`, `users`...).
    pub name: &'static str,
    /// What happened.
    pub outcome: Outcome,
}

/// The result of one [`Configurator::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Steps in the order they were considered.
    pub steps: Vec<StepReport>,
    /// Whether this apply saw a new instance id (identity regenerated).
    pub new_instance: bool,
}

impl Report {
    fn push(&mut self, name: &'static str, outcome: Outcome) {
        match &outcome {
            Outcome::Failed(e) => {
                tracing::warn!(step = name, error = %e, "guest configuration step failed")
            }
            Outcome::Applied => tracing::info!(step = name, "guest configuration step applied"),
            _ => tracing::debug!(step = name, ?outcome, "guest configuration step"),
        }
        self.steps.push(StepReport { name, outcome });
    }

    /// The outcome of a step, if it was considered.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.steps
            .iter()
            .find(|s| s.name == name)
            .map(|s| &s.outcome)
    }

    /// The failed steps.
    pub fn failures(&self) -> impl Iterator<Item = &StepReport> {
        self.steps
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
    }
}

/// Applies metadata to a guest root. See the module docs.
pub struct Configurator<'a> {
    root: PathBuf,
    live: bool,
    fetcher: &'a dyn ContentFetcher,
}

impl std::fmt::Debug for Configurator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configurator")
            .field("root", &self.root)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

static NO_CONTENT: NoContent = NoContent;

impl<'a> Configurator<'a> {
    /// A configurator for `root`; live actions (hostname, netlink, swapon, online resize) are on
    /// when `root` is `/`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Configurator {
            live: paths::is_real_root(&root),
            root,
            fetcher: &NO_CONTENT,
        }
    }

    /// Where injected files given by digest come from.
    pub fn fetcher(mut self, fetcher: &'a dyn ContentFetcher) -> Self {
        self.fetcher = fetcher;
        self
    }

    /// Forces live actions on or off (they only make sense on the running guest's own root).
    pub fn live(mut self, yes: bool) -> Self {
        self.live = yes;
        self
    }

    /// Applies `metadata` (`None`: the metadata service was unreachable). Step failures are in
    /// the [`Report`]; the `Err` case is reserved for an unreadable journal or metadata that
    /// does not merge.
    pub async fn apply(&self, metadata: Option<&Metadata>) -> Result<Report> {
        let mut journal = Journal::load(&self.root)?;
        let mut report = Report::default();
        let Some(md) = metadata else {
            self.outage(&journal, &mut report);
            return Ok(report);
        };
        let md = md.effective().map_err(|e| Error::Config {
            step: "metadata",
            reason: e.to_string(),
        })?;

        // Identity: only a new instance id regenerates it.
        match (&md.instance_id, &journal.instance_id) {
            (Some(new), old) if old.as_ref() != Some(new) => match self.regenerate_identity(new) {
                Ok(()) => {
                    journal = Journal::default();
                    journal.version = 1;
                    journal.instance_id = Some(new.clone());
                    journal.record("identity", &digest("identity", new));
                    report.new_instance = true;
                    // Committed with the other steps (one syncfs); a crash before that
                    // regenerates once more on the next boot, for the same new instance.
                    report.push("identity", Outcome::Applied);
                }
                Err(e) => report.push("identity", Outcome::Failed(chain(&e))),
            },
            (Some(_), _) => report.push("identity", Outcome::Unchanged),
            (None, _) => report.push(
                "identity",
                Outcome::Skipped("no instance-id in the metadata: identity kept".into()),
            ),
        }

        let users_input = (&md.groups, &md.users);
        if md.groups.is_empty() && md.users.is_empty() {
            report.push("users", Outcome::Skipped("no users or groups".into()));
        } else {
            self.journaled(&mut journal, &mut report, "users", &users_input, || {
                self.apply_users(&md)
            });
        }

        match &md.hostname {
            Some(h) => {
                self.journaled(&mut journal, &mut report, "hostname", h, || {
                    self.apply_hostname(h)
                });
                if self.live
                    && let Err(e) = rustix::system::sethostname(h.as_bytes())
                {
                    report.push(
                        "hostname-live",
                        Outcome::Failed(format!("sethostname: {e}")),
                    );
                }
            }
            None => report.push("hostname", Outcome::Skipped("not set".into())),
        }

        let dns = collect_dns(&md);
        match &dns {
            Some(d) => self.journaled(&mut journal, &mut report, "resolv", d, || {
                self.apply_resolv(d)
            }),
            None => report.push("resolv", Outcome::Skipped("no DNS servers".into())),
        }

        match (&md.network, self.live) {
            (Some(net), true) => match netlink::apply(net) {
                Ok(()) => report.push("network", Outcome::Applied),
                Err(e) => report.push("network", Outcome::Failed(chain(&e))),
            },
            (Some(_), false) => report.push(
                "network",
                Outcome::Skipped("not the live root: network is runtime state".into()),
            ),
            (None, _) => report.push("network", Outcome::Skipped("not set".into())),
        }

        let keys: Vec<(&str, &Vec<String>)> = md
            .users
            .iter()
            .filter(|u| !u.ssh_authorized_keys.is_empty())
            .map(|u| (u.name.as_str(), &u.ssh_authorized_keys))
            .collect();
        if keys.is_empty() {
            report.push("ssh-keys", Outcome::Skipped("no authorized keys".into()));
        } else {
            self.journaled(&mut journal, &mut report, "ssh-keys", &keys, || {
                self.apply_ssh_keys(&keys)
            });
        }

        if md.files.is_empty() {
            report.push("files", Outcome::Skipped("no files".into()));
        } else {
            self.journaled(&mut journal, &mut report, "files", &md.files, || {
                self.apply_files(&md.files)
            });
        }

        if md.env.is_empty() {
            report.push("env", Outcome::Skipped("no env".into()));
        } else {
            self.journaled(&mut journal, &mut report, "env", &md.env, || {
                self.apply_env(&md.env)
            });
        }

        match &md.swap {
            Some(swap) => {
                let path = swap
                    .path
                    .clone()
                    .unwrap_or_else(|| schema::DEFAULT_SWAP_PATH.to_owned());
                let before = report.steps.len();
                self.journaled(&mut journal, &mut report, "swap", swap, || {
                    self.apply_swap(&path, swap.size_mib)
                });
                let ok = !matches!(
                    report.steps.get(before).map(|s| &s.outcome),
                    Some(Outcome::Failed(_))
                );
                if ok && journal.swap_path.as_deref() != Some(path.as_str()) {
                    journal.swap_path = Some(path.clone());
                    journal.mark_dirty();
                }
                if ok && self.live {
                    live_swapon(&mut report, &path);
                }
            }
            None => report.push("swap", Outcome::Skipped("not set".into())),
        }

        match (md.resize_rootfs, self.live) {
            (Some(true), true) => {
                let outcome = match crate::live::grow_ext4(Path::new("/")) {
                    Ok(crate::live::Grown::Unchanged) => Outcome::Unchanged,
                    Ok(crate::live::Grown::Grew { from, to }) => {
                        tracing::info!(from, to, "root file system grown (blocks)");
                        Outcome::Applied
                    }
                    Err(e) => Outcome::Failed(e),
                };
                report.push("resize-rootfs", outcome);
            }
            (Some(true), false) => {
                report.push(
                    "resize-rootfs",
                    Outcome::Skipped("not the live root".into()),
                );
            }
            _ => report.push("resize-rootfs", Outcome::Skipped("not asked".into())),
        }

        // Commit what succeeded before the firstboot script (which may reboot the guest).
        if journal.is_dirty()
            && let Err(e) = journal.save(&self.root)
        {
            report.push("journal", Outcome::Failed(chain(&e)));
            return Ok(report);
        }
        match &md.firstboot {
            Some(fb) => self.firstboot(&mut journal, &mut report, fb, &md.env).await,
            None => report.push("firstboot", Outcome::Skipped("no script".into())),
        }
        Ok(report)
    }

    fn outage(&self, journal: &Journal, report: &mut Report) {
        report.push(
            "identity",
            Outcome::Skipped("metadata unavailable: identity kept".into()),
        );
        if !self.live {
            return;
        }
        if let Ok(Some(h)) =
            paths::resolve(&self.root, "/etc/hostname").and_then(|p| paths::read_bounded(&p, 256))
        {
            let name = String::from_utf8_lossy(&h).trim().to_owned();
            if !name.is_empty()
                && let Err(e) = rustix::system::sethostname(name.as_bytes())
            {
                report.push(
                    "hostname-live",
                    Outcome::Failed(format!("sethostname: {e}")),
                );
            }
        }
        if let Some(swap) = &journal.swap_path {
            live_swapon(report, swap);
        }
    }

    /// Runs `f` unless the journal has `name` with the same input digest; journals it on
    /// success.
    fn journaled<T: Serialize + ?Sized>(
        &self,
        journal: &mut Journal,
        report: &mut Report,
        name: &'static str,
        input: &T,
        f: impl FnOnce() -> Result<()>,
    ) {
        let d = digest(name, input);
        if journal.is_applied(name, &d) {
            report.push(name, Outcome::Unchanged);
            return;
        }
        match f() {
            Ok(()) => {
                // Committed to disk at the end of `apply` (one syncfs + journal write); a crash
                // before that re-runs the step, which is idempotent.
                journal.record(name, &d);
                report.push(name, Outcome::Applied);
            }
            Err(e) => report.push(name, Outcome::Failed(chain(&e))),
        }
    }

    fn host(&self, guest: &str) -> Result<PathBuf> {
        paths::resolve(&self.root, guest)
    }

    fn regenerate_identity(&self, instance: &str) -> Result<()> {
        let id = new_machine_id()?;
        paths::create_dirs(&self.root, "/etc", 0o755, 0, 0)?;
        let meta = FileMeta {
            mode: 0o444,
            uid: 0,
            gid: 0,
        };
        paths::write_atomic_with(
            &self.host("/etc/machine-id")?,
            id.as_bytes(),
            Some(meta),
            meta,
            false,
        )?;
        let ssh_dir = self.host("/etc/ssh")?;
        if ssh_dir.is_dir() {
            let key = new_ssh_ed25519(&format!("root@{instance}"))?;
            let secret = FileMeta {
                mode: 0o600,
                uid: 0,
                gid: 0,
            };
            let public = FileMeta {
                mode: 0o644,
                ..secret
            };
            for stale in ["ssh_host_rsa_key", "ssh_host_ecdsa_key", "ssh_host_dsa_key"] {
                for suffix in ["", ".pub"] {
                    let _ = std::fs::remove_file(ssh_dir.join(format!("{stale}{suffix}")));
                }
            }
            paths::write_atomic_with(
                &ssh_dir.join("ssh_host_ed25519_key"),
                key.private.as_bytes(),
                Some(secret),
                secret,
                false,
            )?;
            paths::write_atomic_with(
                &ssh_dir.join("ssh_host_ed25519_key.pub"),
                key.public.as_bytes(),
                Some(public),
                public,
                false,
            )?;
        }
        tracing::info!(
            instance,
            "new instance: machine-id and SSH host keys regenerated"
        );
        Ok(())
    }

    fn apply_users(&self, md: &Metadata) -> Result<()> {
        let mut db = UserDb::load(&self.root)?;
        db.set_sync(false);
        for g in &md.groups {
            db.add_group(&g.name, g.gid, g.system)?;
            for m in &g.members {
                db.add_member(&g.name, m)?;
            }
        }
        for u in &md.users {
            let password = match &u.password {
                schema::Password::Hash(h) => passwd::Password::Hash(h.clone()),
                _ => passwd::Password::Locked,
            };
            if db.user(&u.name).is_some() {
                // A power cut between the database files (renamed into place one by one) may
                // have left the user without its own group or shadow entry: complete it.
                db.complete_user(&u.name, &password, u.system)?;
                for g in &u.groups {
                    db.add_member(g, &u.name)?;
                }
                continue;
            }
            let group = match u.gid {
                Some(gid) if db.groups().all(|g| g.gid != gid) => {
                    db.add_group(&u.name, Some(gid), u.system)?;
                    Some(gid.to_string())
                }
                Some(gid) => Some(gid.to_string()),
                None => None,
            };
            let nu = NewUser {
                name: u.name.clone(),
                uid: u.uid,
                group,
                groups: u.groups.clone(),
                gecos: u.gecos.clone().unwrap_or_default(),
                home: u.home.clone(),
                shell: u.shell.clone(),
                password,
                create_home: true,
                home_mode: 0o755,
                system: u.system,
            };
            db.add_user(&nu)?;
        }
        db.save()
    }

    fn apply_hostname(&self, name: &str) -> Result<()> {
        paths::create_dirs(&self.root, "/etc", 0o755, 0, 0)?;
        let public = FileMeta {
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        write_if_changed(
            &self.host("/etc/hostname")?,
            format!("{name}\n").as_bytes(),
            public,
        )?;
        let hosts_path = paths::resolve_nofollow(&self.root, "/etc/hosts")?;
        let old = paths::read_bounded(&hosts_path, 1 << 20)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|| {
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".into()
            });
        const MARK: &str = "# firebuild hostname";
        let mut text: String = old
            .lines()
            .filter(|l| !l.ends_with(MARK))
            .flat_map(|l| [l, "\n"])
            .collect();
        let short = name.split('.').next().unwrap_or(name);
        let names = if short == name {
            name.to_owned()
        } else {
            format!("{name} {short}")
        };
        text.push_str(&format!("127.0.1.1\t{names}\t{MARK}\n"));
        write_if_changed(&hosts_path, text.as_bytes(), public)
    }

    fn apply_resolv(&self, dns: &DnsConf) -> Result<()> {
        let mut text = String::from("# written by firebuild from instance metadata\n");
        for s in dns.servers.iter().take(3) {
            text.push_str(&format!("nameserver {s}\n"));
        }
        if !dns.search.is_empty() {
            text.push_str(&format!("search {}\n", dns.search.join(" ")));
        }
        paths::create_dirs(&self.root, "/etc", 0o755, 0, 0)?;
        // A symlink (systemd-resolved's stub) is replaced by the file, not written through.
        let host = paths::resolve_nofollow(&self.root, "/etc/resolv.conf")?;
        let meta = FileMeta {
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        if std::fs::symlink_metadata(&host).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_file(&host);
        }
        write_if_changed(&host, text.as_bytes(), meta)
    }

    fn apply_ssh_keys(&self, users: &[(&str, &Vec<String>)]) -> Result<()> {
        let db = UserDb::load(&self.root)?;
        for (name, keys) in users {
            let id = db.resolve(name)?;
            let bad = |reason: String| Error::Config {
                step: "ssh-keys",
                reason,
            };
            for k in keys.iter() {
                if k.contains(['\n', '\r', '\0']) {
                    return Err(bad(format!("a key of {name} contains a line break")));
                }
            }
            let home = self.host(&id.home)?;
            if !home.is_dir() {
                return Err(bad(format!("home {} of {name} does not exist", id.home)));
            }
            let ssh = home.join(".ssh");
            match std::fs::symlink_metadata(&ssh) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(bad(format!(
                        "{}/.ssh of {name} is not a directory (symlinks are refused)",
                        id.home
                    )));
                }
                Err(_) => std::fs::create_dir(&ssh).map_err(Error::io("create directory", &ssh))?,
            }
            paths::chown(&ssh, id.uid, id.gid)?;
            std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))
                .map_err(Error::io("chmod", &ssh))?;
            let mut text = keys.join("\n");
            text.push('\n');
            let meta = FileMeta {
                mode: 0o600,
                uid: id.uid,
                gid: id.gid,
            };
            write_if_changed(&ssh.join("authorized_keys"), text.as_bytes(), meta)?;
        }
        Ok(())
    }

    fn apply_files(&self, files: &std::collections::BTreeMap<String, schema::File>) -> Result<()> {
        let db = UserDb::load(&self.root)?;
        for (name, f) in files {
            let bad = |reason: String| Error::Config {
                step: "files",
                reason: format!("file {name:?} ({}): {reason}", f.path),
            };
            let content = match f.content.inline_bytes() {
                Some(Ok(b)) => b,
                Some(Err(e)) => return Err(bad(format!("base64: {e}"))),
                None => {
                    let schema::FileContent::Digest(d) = &f.content else {
                        return Err(bad("no content".into()));
                    };
                    let bytes = self.fetcher.fetch(d).map_err(&bad)?;
                    if bytes.len() > MAX_FETCHED_FILE {
                        return Err(bad("fetched content too large".into()));
                    }
                    verify_digest(d, &bytes).map_err(&bad)?;
                    bytes
                }
            };
            let (uid, gid) = match f.owner_parts() {
                None => (0, 0),
                Some((u, g)) => crate::place::resolve_owner(
                    &db,
                    Some(&firebuild_plan::Chown {
                        user: u.to_owned(),
                        group: g.map(str::to_owned),
                    }),
                )?,
            };
            let mode = f.mode.map_or(0o644, |m| m.0);
            let guest = paths::normalize(&f.path);
            if let Some(parent) = Path::new(&guest).parent() {
                paths::create_dirs(&self.root, &parent.to_string_lossy(), 0o755, 0, 0)?;
            }
            let host = paths::resolve_nofollow(&self.root, &guest)?;
            write_if_changed(&host, &content, FileMeta { mode, uid, gid })?;
        }
        Ok(())
    }

    fn apply_env(&self, env: &std::collections::BTreeMap<String, String>) -> Result<()> {
        let mut text = String::from("# written by firebuild from instance metadata\n");
        for (k, v) in env {
            let ok = k
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok || v.contains('\0') {
                return Err(Error::Config {
                    step: "env",
                    reason: format!("invalid variable {k:?}"),
                });
            }
            text.push_str(&format!("{k}='{}'\n", v.replace('\'', "'\\''")));
        }
        paths::create_dirs(&self.root, "/etc/firebuild", 0o755, 0, 0)?;
        let meta = FileMeta {
            mode: 0o600,
            uid: 0,
            gid: 0,
        };
        write_if_changed(&self.host(ENV_PATH)?, text.as_bytes(), meta)
    }

    fn apply_swap(&self, guest: &str, size_mib: u64) -> Result<()> {
        let guest = paths::normalize(guest);
        if let Some(parent) = Path::new(&guest).parent() {
            paths::create_dirs(&self.root, &parent.to_string_lossy(), 0o755, 0, 0)?;
        }
        let host = paths::resolve_nofollow(&self.root, &guest)?;
        let page = rustix::param::page_size();
        let size = size_mib.checked_mul(1 << 20).ok_or(Error::Config {
            step: "swap",
            reason: "size overflows".into(),
        })?;
        let header = swap_header(page, size / page as u64)?;
        if let Ok(m) = std::fs::symlink_metadata(&host)
            && m.is_file()
            && m.len() == size
            && m.mode() & 0o7777 == 0o600
            && m.uid() == 0
        {
            let mut first = vec![0u8; page];
            let same = std::fs::File::open(&host)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut first))
                .is_ok()
                && first[page - 10..] == header[page - 10..];
            if same {
                return Ok(());
            }
        }
        let tmp = host.with_file_name(format!(".swap.fbtmp.{}", std::process::id()));
        let result = (|| -> Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(Error::io("create", &tmp))?;
            // Swap files must not have holes: allocate every block.
            if rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, size).is_err() {
                let zeros = vec![0u8; 1 << 20];
                for _ in 0..size_mib {
                    f.write_all(&zeros).map_err(Error::io("write", &tmp))?;
                }
            }
            std::io::Seek::rewind(&mut f).map_err(Error::io("write", &tmp))?;
            f.write_all(&header).map_err(Error::io("write", &tmp))?;
            f.sync_all().map_err(Error::io("sync", &tmp))?;
            paths::chown(&tmp, 0, 0)?;
            std::fs::rename(&tmp, &host).map_err(Error::io("rename", &host))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    async fn firstboot(
        &self,
        journal: &mut Journal,
        report: &mut Report,
        fb: &schema::Firstboot,
        env: &std::collections::BTreeMap<String, String>,
    ) {
        let d = digest("firstboot", &fb.script);
        if let Some(rec) = &journal.firstboot {
            let outcome = match rec.state {
                FirstbootState::Finished => Outcome::Unchanged,
                FirstbootState::Started => Outcome::Skipped(
                    "interrupted on an earlier boot (crash or power loss): not re-run; delete the \
                     journal's firstboot entry to run it again"
                        .into(),
                ),
            };
            report.push("firstboot", outcome);
            return;
        }
        if fb.interpreter().is_none() {
            report.push(
                "firstboot",
                Outcome::Failed("the script has no interpreter line (#!...)".into()),
            );
            return;
        }
        match self.run_firstboot(journal, fb, env, &d).await {
            Ok(exit) => {
                let outcome = if exit.success() {
                    Outcome::Applied
                } else {
                    Outcome::Failed(match exit {
                        Exit::Code(c) => format!("exit code {c} (see {FIRSTBOOT_LOG})"),
                        Exit::Signal(s) => format!("killed by signal {s} (see {FIRSTBOOT_LOG})"),
                    })
                };
                report.push("firstboot", outcome);
            }
            Err(e) => report.push("firstboot", Outcome::Failed(chain(&e))),
        }
    }

    async fn run_firstboot(
        &self,
        journal: &mut Journal,
        fb: &schema::Firstboot,
        env: &std::collections::BTreeMap<String, String>,
        d: &str,
    ) -> Result<Exit> {
        paths::create_dirs(&self.root, "/var/lib/firebuild", 0o700, 0, 0)?;
        paths::create_dirs(&self.root, "/var/log/firebuild", 0o755, 0, 0)?;
        let exec = FileMeta {
            mode: 0o700,
            uid: 0,
            gid: 0,
        };
        paths::write_atomic(
            &self.host(FIRSTBOOT_SCRIPT)?,
            fb.script.as_bytes(),
            Some(exec),
            exec,
        )?;
        let log_path = paths::resolve_nofollow(&self.root, FIRSTBOOT_LOG)?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(Error::io("open", &log_path))?;

        // Committed before the script starts: a crash from here on is never re-run.
        journal.firstboot = Some(journal::Firstboot {
            state: FirstbootState::Started,
            digest: d.to_owned(),
            exit_code: None,
            signal: None,
        });
        journal.save(&self.root)?;

        let mut req = RunRequest::new(vec![FIRSTBOOT_SCRIPT.to_owned()]);
        req.env = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut log_err = None;
        let exit = step::run(&self.root, &req, |stream, line| {
            let tag: &[u8] = match stream {
                step::Stream::Stdout => b"out: ",
                step::Stream::Stderr => b"err: ",
            };
            let r = log
                .write_all(tag)
                .and_then(|()| log.write_all(line))
                .and_then(|()| log.write_all(b"\n"));
            if let Err(e) = r {
                log_err.get_or_insert(e);
            }
        })
        .await;
        let (exit_code, signal) = match &exit {
            Ok(Exit::Code(c)) => (Some(*c), None),
            Ok(Exit::Signal(s)) => (None, Some(*s)),
            Err(_) => (Some(-1), None),
        };
        let _ = writeln!(
            log,
            "firebuild: firstboot ended: {}",
            match &exit {
                Ok(e) => format!("{e:?}"),
                Err(e) => chain(e),
            }
        );
        journal.firstboot = Some(journal::Firstboot {
            state: FirstbootState::Finished,
            digest: d.to_owned(),
            exit_code,
            signal,
        });
        journal.save(&self.root)?;
        if let Some(e) = log_err {
            tracing::warn!(error = %e, "firstboot log incomplete");
        }
        exit
    }
}

/// The resolver configuration gathered from all interfaces (servers deduplicated in order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct DnsConf {
    servers: Vec<std::net::IpAddr>,
    search: Vec<String>,
}

fn collect_dns(md: &Metadata) -> Option<DnsConf> {
    let mut conf = DnsConf {
        servers: Vec::new(),
        search: Vec::new(),
    };
    for i in md.network.iter().flat_map(|n| &n.interfaces) {
        if let Some(d) = &i.dns {
            for s in &d.servers {
                if !conf.servers.contains(s) {
                    conf.servers.push(*s);
                }
            }
            for s in &d.search {
                if !conf.search.contains(s) {
                    conf.search.push(s.clone());
                }
            }
        }
    }
    (!conf.servers.is_empty()).then_some(conf)
}

/// SHA-256 (hex) of a step's name and its JSON input.
fn digest<T: Serialize + ?Sized>(name: &str, input: &T) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    // Serialising plain data into a Vec does not fail; an empty input digest would still
    // differ per step name.
    h.update(serde_json::to_vec(input).unwrap_or_default());
    hex::encode(h.finalize())
}

fn verify_digest(d: &str, bytes: &[u8]) -> std::result::Result<(), String> {
    let (alg, want) = d
        .split_once(':')
        .ok_or_else(|| format!("digest {d:?} has no algorithm"))?;
    let got = match alg {
        "blake3" => blake3::hash(bytes).to_hex().to_string(),
        "sha256" => hex::encode(Sha256::digest(bytes)),
        other => return Err(format!("unsupported digest algorithm {other:?}")),
    };
    if got.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(format!("content does not match {d}"))
    }
}

/// Writes `data` with `meta` unless the file already has exactly that content, mode and owner
/// (so an unchanged file keeps its mtime).
fn write_if_changed(host: &Path, data: &[u8], meta: FileMeta) -> Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(host)
        && m.is_file()
        && m.len() == data.len() as u64
        && m.mode() & 0o7777 == meta.mode
        && m.uid() == meta.uid
        && m.gid() == meta.gid
        && std::fs::read(host).is_ok_and(|old| old == data)
    {
        return Ok(());
    }
    paths::write_atomic_with(host, data, Some(meta), meta, false)
}

/// `swapon(2)` on the live root's `path`, reported as `swapon` (already on: unchanged).
fn live_swapon(report: &mut Report, path: &str) {
    let outcome = match crate::live::swapon(Path::new(path)) {
        Ok(true) => Outcome::Applied,
        Ok(false) => Outcome::Unchanged,
        Err(e) => Outcome::Failed(format!("swapon {path}: {e}")),
    };
    report.push("swapon", outcome);
}

/// The error and its sources on one line.
fn chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn digests_verify() {
        let b = b"hello\n";
        let d = format!("blake3:{}", blake3::hash(b).to_hex());
        assert!(verify_digest(&d, b).is_ok());
        assert!(verify_digest(&d, b"other").is_err());
        let s = format!("sha256:{}", hex::encode(Sha256::digest(b)));
        assert!(verify_digest(&s, b).is_ok());
        assert!(verify_digest("md5:00", b).is_err());
    }

    #[test]
    fn step_digests_depend_on_name_and_input() {
        assert_ne!(digest("a", "x"), digest("b", "x"));
        assert_ne!(digest("a", "x"), digest("a", "y"));
        assert_eq!(digest("a", "x"), digest("a", "x"));
    }
}
