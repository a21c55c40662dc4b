//! Metadata sources, tried in order under one overall deadline (afterburn style): each source
//! implements [`MetadataSource`] and supplies only what it has; [`Sources::resolve`] asks them in
//! order and tells three outcomes apart ([`Outcome`]):
//!
//! - [`Outcome::Found`]: a document, with the source that gave it and its revision (ETag);
//! - [`Outcome::NoMetadata`]: every source answered and none has metadata (a guest booted
//!   without any: configure nothing);
//! - [`Outcome::Unreachable`]: nothing found, and at least one source could not be asked (MMDS
//!   down, deadline passed). This is an outage, never a new instance: the caller keeps the guest's
//!   identity (machine-id, host keys) as it is.
//!
//! A document that is found but invalid, or two CPIO config devices, end the resolution with an
//! error ([`ResolveError`]): falling through to another source would hide a configuration
//! mistake.
//!
//! # Sources and their order ([`Sources::standard`])
//!
//! 1. The kernel command line override `firebuild.metadata=` ([`cmdline`] documents the value
//!    format: `off`, `base64:<json>`, `file:<path>`). When present it is the only source asked.
//! 2. The CPIO config device of the illumos metadata agent ([`CpioSource`]): a block device whose
//!    first bytes are a cpio archive (newc, odc, binary in both byte orders) with `nodename`,
//!    `authorized_keys`, `config.toml` (`[network] skip = true`), `firstboot.sh` and
//!    `metadata.json` (the full schema). More than one such device is an error, as in the
//!    reference agent.
//! 3. MMDS ([`MmdsSource`], V2 tokens), given whatever is left of the deadline. When the root
//!    holds no firebuild document, the same server is read in EC2's layout
//!    (`latest/meta-data/...`, `latest/user-data`), then OpenStack's
//!    (`openstack/latest/meta_data.json`, `user_data`, `network_data.json`), and the first found
//!    is mapped onto the schema ([`Fetch::Mapped`]): host name, instance id, SSH keys (of
//!    `root`, as the CPIO device's), a `#!` user-data as the first-boot script, OpenStack's
//!    static IPv4 networks. `#cloud-config` and other user-data formats are not run: they are
//!    reported in [`Found::notes`] and logged as warnings. User-data is bounded by
//!    [`MAX_USER_DATA`].
//!
//! The two local sources come before MMDS although the issue lists MMDS first: they answer in
//! microseconds and a config device is attached on purpose, while MMDS's failure mode is a
//! timeout; asking it first would make a CPIO-configured guest without a metadata network wait
//! for the whole deadline at every boot (the stall the issue warns about).
//!
//! Every path is resolved under a root directory (`/` in a real guest).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use firebuild_guest::source::{CpioSource, InlineSource, Outcome, Sources};
//!
//! let guest = tempfile::tempdir()?;
//! let sources = Sources::new()
//!     .with(CpioSource::scan(guest.path())) // no block devices under this root: absent
//!     .with(InlineSource::new(br#"{"instance-id": "i-1", "hostname": "web-1"}"#.to_vec()));
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! let outcome = rt.block_on(sources.resolve(Instant::now() + Duration::from_secs(5)))?;
//! let Outcome::Found(found) = outcome else { panic!("no metadata") };
//! assert_eq!(found.source, "cmdline");
//! assert_eq!(found.metadata.hostname.as_deref(), Some("web-1"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cmdline;
pub mod cpio;
pub mod device;
mod ec2;
mod files;
mod layout;
mod mmds;
mod openstack;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use firebuild_mmds::schema::Metadata;
use futures::future::BoxFuture;

pub use files::{CpioSource, FileSource, InlineSource, document_from_cpio};
pub use layout::MAX_USER_DATA;
pub use mmds::{DEFAULT_URL as DEFAULT_MMDS_URL, MmdsSource, parse_url as parse_mmds_url};

/// Largest metadata document accepted from a file, the command line or a cpio archive.
pub const MAX_DOCUMENT: usize = 1 << 20;

/// A metadata document as a source returns it, before schema validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The document (the JSON of the metadata schema).
    pub json: serde_json::Value,
    /// The revision, when the source has one (MMDS's ETag).
    pub revision: Option<String>,
    /// Where exactly it came from (`/dev/vdb`, `http://169.254.169.254`).
    pub origin: String,
}

/// One source's answer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Fetch {
    /// The source has a document.
    Found(Document),
    /// The source has metadata in another cloud's layout (EC2, OpenStack), mapped onto the
    /// schema; `notes` say what could not be mapped (already logged as warnings).
    Mapped {
        /// The mapped document.
        document: Document,
        /// What was not mapped, one sentence each (`#cloud-config` user-data, a DHCP network).
        notes: Vec<String>,
    },
    /// The source answered: it has nothing (no device, empty MMDS, 404).
    Absent,
    /// The source says: no metadata, and ask no one else (`firebuild.metadata=off`).
    Disabled,
}

/// A source could not give an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The source could not be asked (connection refused, timeout, I/O error on a device): an
    /// outage.
    #[error("{source_name}: unreachable")]
    Unreachable {
        /// The source.
        source_name: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The deadline passed before the source answered: an outage.
    #[error("{source_name}: no answer before the deadline")]
    Timeout {
        /// The source.
        source_name: String,
    },
    /// The source answered with something that is not valid metadata.
    #[error("{source_name}: invalid metadata from {origin}")]
    Invalid {
        /// The source.
        source_name: String,
        /// Where the document came from.
        origin: String,
        /// Why it is invalid.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Several CPIO config devices: which one to trust is ambiguous.
    #[error("more than one cpio config device: {}", devices.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// The candidate devices.
        devices: Vec<PathBuf>,
    },
    /// The source does not support the operation (e.g. watching a CPIO device).
    #[error("{source_name}: {operation} is not supported")]
    Unsupported {
        /// The source.
        source_name: String,
        /// The operation.
        operation: &'static str,
    },
}

impl SourceError {
    /// Whether this is an outage (the source may have metadata but could not be asked), as
    /// opposed to a definite problem with what it answered.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Timeout { .. })
    }
}

/// A place metadata can come from. Implementations supply [`name`](Self::name) and
/// [`fetch`](Self::fetch); the other methods have defaults.
pub trait MetadataSource: Send + Sync {
    /// A short name for logs (`mmds`, `cpio`, `cmdline`).
    fn name(&self) -> &str;

    /// Fetches the current document, giving up at `deadline`.
    fn fetch(&self, deadline: Instant) -> BoxFuture<'_, Result<Fetch, SourceError>>;

    /// Waits until the document differs from `revision` (or `deadline` passes: `Ok(None)`),
    /// and returns the new one. The default does not support watching.
    fn watch<'a>(
        &'a self,
        revision: Option<&'a str>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Option<Document>, SourceError>> {
        let _ = (revision, deadline);
        let name = self.name().to_owned();
        Box::pin(async move {
            Err(SourceError::Unsupported {
                source_name: name,
                operation: "watch",
            })
        })
    }

    /// Whether the source needs the guest network up (MMDS does; local sources do not).
    fn needs_network(&self) -> bool {
        false
    }
}

/// Metadata found by [`Sources::resolve`].
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The name of the source that answered.
    pub source: String,
    /// The document as the source gave it.
    pub document: Document,
    /// The document decoded, validated, and its `user-data` parts merged
    /// ([`Metadata::effective`]).
    pub metadata: Metadata,
    /// What the source found but could not map from another cloud's layout (user-data that is
    /// `#cloud-config` or of an unknown format, skipped network entries), one sentence each;
    /// empty for a firebuild document. Already logged as warnings; for the caller's report.
    pub notes: Vec<String>,
}

impl Found {
    /// Decodes and validates `document` from `source`.
    pub fn new(source: &str, document: Document) -> Result<Self, SourceError> {
        let metadata = Metadata::from_value(document.json.clone())
            .and_then(|m| m.effective())
            .map_err(|e| SourceError::Invalid {
                source_name: source.to_owned(),
                origin: document.origin.clone(),
                source: Box::new(e),
            })?;
        Ok(Self {
            source: source.to_owned(),
            document,
            metadata,
            notes: Vec::new(),
        })
    }

    /// With these notes (see [`Found::notes`]).
    #[must_use]
    pub fn with_notes(mut self, notes: Vec<String>) -> Self {
        self.notes = notes;
        self
    }
}

/// What [`Sources::resolve`] concluded.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// A source has metadata.
    Found(Box<Found>),
    /// Every source answered and none has metadata (or metadata is switched off).
    NoMetadata,
    /// Nothing was found and at least one source could not be asked: an outage. The guest's
    /// identity must be kept.
    Unreachable {
        /// The outages, per source.
        errors: Vec<SourceError>,
    },
}

/// Why [`Sources::resolve`] stopped without an [`Outcome`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// A source answered with invalid metadata, or its answer is ambiguous.
    #[error("metadata source failed")]
    Source(#[from] SourceError),
    /// The kernel command line override is malformed.
    #[error("reading the kernel command line")]
    Cmdline(#[from] cmdline::CmdlineError),
}

/// An ordered list of sources.
#[derive(Default)]
pub struct Sources {
    list: Vec<Box<dyn MetadataSource>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|s| s.name()))
            .finish()
    }
}

/// Options of [`Sources::standard`].
#[derive(Debug, Clone)]
pub struct StandardOptions {
    /// The MMDS base URL (`http://169.254.169.254`); `None` leaves MMDS out.
    pub mmds_url: Option<String>,
    /// A cpio image or device to use instead of scanning block devices (tests, or an operator
    /// who knows the device).
    pub cpio_device: Option<PathBuf>,
}

impl Default for StandardOptions {
    fn default() -> Self {
        Self {
            mmds_url: Some(mmds::DEFAULT_URL.to_owned()),
            cpio_device: None,
        }
    }
}

impl Sources {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a source (asked after the ones already there).
    #[must_use]
    pub fn with(mut self, source: impl MetadataSource + 'static) -> Self {
        self.list.push(Box::new(source));
        self
    }

    /// The names of the sources, in order.
    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|s| s.name()).collect()
    }

    /// The source named `name`, if it is in the list.
    pub fn get(&self, name: &str) -> Option<&dyn MetadataSource> {
        self.list
            .iter()
            .find(|s| s.name() == name)
            .map(|s| s.as_ref())
    }

    /// The standard order for a guest under `root` (see the module docs): the kernel command line
    /// override alone when `<root>/proc/cmdline` has one, else the CPIO device and MMDS.
    pub fn standard(root: &Path, options: &StandardOptions) -> Result<Self, ResolveError> {
        let text = read_cmdline(root);
        let cmdline = cmdline::Cmdline::parse(&text);
        if let Some(over) = cmdline.metadata_override() {
            let source = match over? {
                cmdline::Override::Off => InlineSource::disabled(),
                cmdline::Override::Inline(bytes) => InlineSource::new(bytes),
                cmdline::Override::File(path) => {
                    return Ok(Self::new().with(FileSource::new(root, path)));
                }
            };
            return Ok(Self::new().with(source));
        }
        let mut sources = Self::new().with(match &options.cpio_device {
            Some(path) => CpioSource::device(path.clone()),
            None => CpioSource::scan(root),
        });
        if let Some(url) = &options.mmds_url {
            sources = sources.with(MmdsSource::new(url.clone()));
        }
        Ok(sources)
    }

    /// Asks each source in order until one has metadata, all within `deadline`.
    pub async fn resolve(&self, deadline: Instant) -> Result<Outcome, ResolveError> {
        let mut outages = Vec::new();
        for source in &self.list {
            let name = source.name().to_owned();
            let fetched = if Instant::now() >= deadline {
                Err(SourceError::Timeout { source_name: name })
            } else {
                let until = tokio::time::Instant::from_std(deadline);
                match tokio::time::timeout_at(until, source.fetch(deadline)).await {
                    Ok(r) => r,
                    Err(_) => Err(SourceError::Timeout { source_name: name }),
                }
            };
            match fetched {
                Ok(Fetch::Found(document)) => {
                    tracing::debug!(source = source.name(), origin = %document.origin, revision = %document.revision.as_deref().unwrap_or("-"), "metadata found");
                    return Ok(Outcome::Found(Box::new(Found::new(
                        source.name(),
                        document,
                    )?)));
                }
                Ok(Fetch::Mapped { document, notes }) => {
                    tracing::debug!(source = source.name(), origin = %document.origin, revision = %document.revision.as_deref().unwrap_or("-"), notes = notes.len(), "metadata found in another cloud's layout");
                    let found = Found::new(source.name(), document)?.with_notes(notes);
                    return Ok(Outcome::Found(Box::new(found)));
                }
                Ok(Fetch::Absent) => {
                    tracing::debug!(source = source.name(), "no metadata here");
                }
                Ok(Fetch::Disabled) => {
                    tracing::info!(source = source.name(), "metadata switched off");
                    return Ok(Outcome::NoMetadata);
                }
                Err(e) if e.is_outage() => {
                    tracing::warn!(source = source.name(), error = %error_chain(&e), "metadata source unreachable");
                    outages.push(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(if outages.is_empty() {
            Outcome::NoMetadata
        } else {
            Outcome::Unreachable { errors: outages }
        })
    }
}

/// `<root>/proc/cmdline`, or empty when it cannot be read (no /proc under a test root).
pub fn read_cmdline(root: &Path) -> String {
    use std::io::Read as _;
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(root.join("proc/cmdline")) {
        let _ = f
            .take(cmdline::MAX_CMDLINE as u64)
            .read_to_string(&mut text);
    }
    text
}

/// `error: cause: cause` on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
pub(crate) mod tests_support {
    #![allow(clippy::panic)]
    /// The path of a tool the tests need: under `CI` its absence fails the test, elsewhere the
    /// test is skipped with a printed reason.
    pub(crate) fn tool(name: &str) -> Option<std::path::PathBuf> {
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        });
        if found.is_none() {
            if std::env::var_os("CI").is_some() {
                panic!("{name} is missing: scripts/test.sh installs it");
            }
            eprintln!("skipped: {name} is not installed");
        }
        found
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::time::Duration;

    struct Fixed(&'static str, fn() -> Result<Fetch, SourceError>);

    impl MetadataSource for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        fn fetch(&self, _deadline: Instant) -> BoxFuture<'_, Result<Fetch, SourceError>> {
            Box::pin(async move { (self.1)() })
        }
    }

    struct Hangs;

    impl MetadataSource for Hangs {
        fn name(&self) -> &str {
            "hangs"
        }
        fn fetch(&self, _deadline: Instant) -> BoxFuture<'_, Result<Fetch, SourceError>> {
            Box::pin(futures::future::pending())
        }
    }

    fn found() -> Result<Fetch, SourceError> {
        Ok(Fetch::Found(Document {
            json: serde_json::json!({"hostname": "h"}),
            revision: Some("\"e1\"".into()),
            origin: "test".into(),
        }))
    }

    fn down() -> Result<Fetch, SourceError> {
        Err(SourceError::Unreachable {
            source_name: "mmds".into(),
            source: "connection refused".into(),
        })
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn first_found_wins_and_absent_falls_through() {
        let s = Sources::new()
            .with(Fixed("a", || Ok(Fetch::Absent)))
            .with(Fixed("b", found))
            .with(Fixed("c", || panic!("asked after a source had metadata")));
        let Outcome::Found(f) = s.resolve(soon()).await.unwrap() else {
            panic!("not found")
        };
        assert_eq!(f.source, "b");
        assert_eq!(f.metadata.hostname.as_deref(), Some("h"));
        assert_eq!(f.document.json["hostname"], "h");
        assert_eq!(f.document.revision.as_deref(), Some("\"e1\""));
    }

    #[tokio::test]
    async fn outage_is_not_no_metadata() {
        let s = Sources::new()
            .with(Fixed("cpio", || Ok(Fetch::Absent)))
            .with(Fixed("mmds", down));
        let Outcome::Unreachable { errors } = s.resolve(soon()).await.unwrap() else {
            panic!("an outage must not look like no metadata")
        };
        assert_eq!(
            error_chain(&errors[0]),
            "mmds: unreachable: connection refused"
        );

        let s = Sources::new().with(Fixed("cpio", || Ok(Fetch::Absent)));
        assert!(matches!(
            s.resolve(soon()).await.unwrap(),
            Outcome::NoMetadata
        ));

        // An outage of a higher source does not hide metadata in a lower one.
        let s = Sources::new()
            .with(Fixed("mmds", down))
            .with(Fixed("b", found));
        assert!(matches!(
            s.resolve(soon()).await.unwrap(),
            Outcome::Found(_)
        ));
    }

    #[tokio::test]
    async fn one_deadline_for_all_sources() {
        let s = Sources::new().with(Hangs).with(Fixed("later", found));
        let out = s
            .resolve(Instant::now() + Duration::from_millis(50))
            .await
            .unwrap();
        let Outcome::Unreachable { errors } = out else {
            panic!("{out:?}")
        };
        // The hanging source used the whole deadline; the next one was not asked past it.
        assert_eq!(
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            [
                "hangs: no answer before the deadline",
                "later: no answer before the deadline"
            ]
        );
    }

    #[tokio::test]
    async fn schema_violations_are_invalid_not_outages() {
        let s = Sources::new().with(Fixed("cpio", || {
            Ok(Fetch::Found(Document {
                json: serde_json::json!({"users": [{"name": "root", "uid": "zero"}]}),
                revision: None,
                origin: "/dev/vdb".into(),
            }))
        }));
        let err = s.resolve(soon()).await.unwrap_err();
        let ResolveError::Source(e) = &err else {
            panic!("{err}")
        };
        assert!(!e.is_outage());
        let chain = error_chain(&err);
        assert!(
            chain.starts_with("metadata source failed: cpio: invalid metadata from /dev/vdb: cannot decode metadata at `users[0].uid`"),
            "{chain}"
        );
    }

    #[tokio::test]
    async fn disabled_and_invalid_stop_the_search() {
        let s = Sources::new()
            .with(Fixed("cmdline", || Ok(Fetch::Disabled)))
            .with(Fixed("b", found));
        assert!(matches!(
            s.resolve(soon()).await.unwrap(),
            Outcome::NoMetadata
        ));
        let s = Sources::new()
            .with(Fixed("cpio", || {
                Err(SourceError::Ambiguous {
                    devices: vec!["/dev/vdb".into(), "/dev/vdc".into()],
                })
            }))
            .with(Fixed("b", found));
        let err = s.resolve(soon()).await.unwrap_err();
        assert_eq!(
            error_chain(&err),
            "metadata source failed: more than one cpio config device: /dev/vdb, /dev/vdc"
        );
    }

    #[test]
    fn standard_order_and_cmdline_override() {
        let root = tempfile::tempdir().unwrap();
        let opts = StandardOptions::default();
        assert_eq!(
            Sources::standard(root.path(), &opts).unwrap().names(),
            ["cpio", "mmds"]
        );
        std::fs::create_dir(root.path().join("proc")).unwrap();
        std::fs::write(
            root.path().join("proc/cmdline"),
            "console=ttyS0 firebuild.metadata=file:/meta.json\n",
        )
        .unwrap();
        assert_eq!(
            Sources::standard(root.path(), &opts).unwrap().names(),
            ["cmdline"]
        );
        std::fs::write(root.path().join("proc/cmdline"), "firebuild.metadata=nope").unwrap();
        assert!(matches!(
            Sources::standard(root.path(), &opts),
            Err(ResolveError::Cmdline(_))
        ));
    }

    #[tokio::test]
    async fn cmdline_file_and_inline_documents() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("proc")).unwrap();
        std::fs::write(root.path().join("meta.json"), r#"{"hostname":"from-file"}"#).unwrap();
        std::fs::write(
            root.path().join("proc/cmdline"),
            "firebuild.metadata=file:/meta.json",
        )
        .unwrap();
        let s = Sources::standard(root.path(), &StandardOptions::default()).unwrap();
        let Outcome::Found(f) = s.resolve(soon()).await.unwrap() else {
            panic!()
        };
        assert_eq!(f.document.json["hostname"], "from-file");
        assert_eq!(f.document.origin, "/meta.json");

        // A named file that is missing is an outage, not "no metadata".
        std::fs::remove_file(root.path().join("meta.json")).unwrap();
        assert!(matches!(
            s.resolve(soon()).await.unwrap(),
            Outcome::Unreachable { .. }
        ));

        // base64 of {"hostname":"inline"}.
        std::fs::write(
            root.path().join("proc/cmdline"),
            "firebuild.metadata=base64:eyJob3N0bmFtZSI6ImlubGluZSJ9",
        )
        .unwrap();
        let s = Sources::standard(root.path(), &StandardOptions::default()).unwrap();
        let Outcome::Found(f) = s.resolve(soon()).await.unwrap() else {
            panic!()
        };
        assert_eq!(f.document.json["hostname"], "inline");

        std::fs::write(root.path().join("proc/cmdline"), "firebuild.metadata=off").unwrap();
        let s = Sources::standard(root.path(), &StandardOptions::default()).unwrap();
        assert!(matches!(
            s.resolve(soon()).await.unwrap(),
            Outcome::NoMetadata
        ));
    }
}
