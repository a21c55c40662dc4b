//! Where the server finds the bytes of a resource id: the [`ResourceSource`] trait and the ready
//! [`DirSource`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use firebuild_plan::{BuildPlan, Origin, Resource, ResourceKind, RunMount, Source, StepKind};
use sha2::{Digest, Sha256};

use crate::SecretBytes;

/// A filter over the entries of a directory resource: `(path relative to the resource root,
/// is_dir) -> keep`. Returning `false` for a directory skips its subtree (`.dockerignore`,
/// `--exclude`).
pub type EntryFilter = Arc<dyn Fn(&Path, bool) -> bool + Send + Sync>;

/// A resource resolved to a host path the encoder may walk.
#[derive(Clone)]
pub struct ResolvedResource {
    /// The file, symlink or directory to send. Inside the source's root.
    pub path: PathBuf,
    /// Entries to leave out of a directory resource.
    pub filter: Option<EntryFilter>,
}

impl fmt::Debug for ResolvedResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedResource")
            .field("path", &self.path)
            .field("filter", &self.filter.is_some())
            .finish()
    }
}

/// Why a resource id cannot be served.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The id is not a resource this source serves (answered with gRPC `NOT_FOUND`).
    #[error("unknown resource {id:?}")]
    NotFound {
        /// The requested id.
        id: String,
    },
    /// The resource path leaves its root (`..`, an absolute path, or a symlink pointing out).
    #[error("resource {id:?} resolves outside its root: {path:?}")]
    Outside {
        /// The requested id.
        id: String,
        /// The offending relative path.
        path: String,
    },
    /// A host-fetched file does not match the checksum the Dockerfile gave.
    #[error(
        "resource {id:?} does not match its checksum: expected {expected}, got sha256:{actual}"
    )]
    ChecksumMismatch {
        /// The requested id.
        id: String,
        /// `sha256:<hex>` as written.
        expected: String,
        /// Hex digest of the file.
        actual: String,
    },
    /// The checksum is not `sha256:<64 hex digits>`.
    #[error("resource {id:?} has an unsupported checksum {checksum:?}")]
    BadChecksum {
        /// The requested id.
        id: String,
        /// The checksum as written.
        checksum: String,
    },
    /// Reading the source failed.
    #[error("cannot read resource {id:?} at {path}")]
    Io {
        /// The requested id.
        id: String,
        /// The host path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Resolves resource ids to host paths. Called on a blocking thread, once per `ResourceChunk`
/// request (also for each resumed request), so it may read files.
///
/// Implementations must confine what they return: an id that is not part of the build is
/// [`SourceError::NotFound`], and no id may resolve to a host path outside the roots the
/// embedder gave.
pub trait ResourceSource: Send + Sync + 'static {
    /// The host path (and filter) of resource `id`.
    fn resolve(&self, id: &str) -> Result<ResolvedResource, SourceError>;

    /// The value of build secret `id` (the `id=` of `--secret` and of `RUN
    /// --mount=type=secret`), `None` when the build was not given it (the default).
    ///
    /// The server asks only while the running step mounts that secret, and serves it from
    /// memory: it never reaches [`ResourceSource::resolve`] or the disk.
    fn secret(&self, id: &str) -> Option<SecretBytes> {
        let _ = id;
        None
    }
}

#[derive(Debug, Clone)]
enum Entry {
    /// A path relative to the context root; `true` for a directory.
    Context(String, bool),
    /// A path relative to a stage output directory; `true` for a directory.
    Stage(usize, String, bool),
    /// A host-fetched URL file with its optional `sha256:` checksum.
    Url(Option<String>),
}

/// A [`ResourceSource`] that serves exactly the resources named in a [`BuildPlan`]:
/// context files, stage outputs (directories the embedder registers) and files the host fetched
/// for `ADD <url>` (verified against the plan's `--checksum` before they are served).
///
/// Paths are confined: a resource path that is absolute, contains `..`, or whose parent
/// directories resolve (through symlinks) outside the root is refused. The resource itself may be
/// a symlink: it is sent as a link, never followed.
///
/// ```
/// use firebuild_bootstrap::{DirSource, ResourceSource};
/// use firebuild_plan::BuildPlan;
///
/// let plan: BuildPlan = serde_json::from_str(r#"{"schema_version":1,"dockerfile":"Dockerfile",
///     "target":0,"stages":[]}"#)?;
/// let source = DirSource::new(&plan, "/srv/context");
/// assert!(source.resolve("ctx:anything").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DirSource {
    context: PathBuf,
    stages: HashMap<usize, PathBuf>,
    urls: HashMap<String, PathBuf>,
    secrets: BTreeMap<String, SecretBytes>,
    entries: HashMap<String, Entry>,
    filter: Option<EntryFilter>,
    walk_dirs: bool,
    verified: Mutex<HashSet<String>>,
}

impl fmt::Debug for DirSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirSource")
            .field("context", &self.context)
            .field("stages", &self.stages)
            .field("urls", &self.urls)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("resources", &self.entries.len())
            .finish()
    }
}

impl DirSource {
    /// Serves the resources of `plan` from the build context directory `context`.
    pub fn new(plan: &BuildPlan, context: impl Into<PathBuf>) -> Self {
        let mut entries = HashMap::new();
        let add =
            |entries: &mut HashMap<String, Entry>, origin: &Origin, resources: &[Resource]| {
                for r in resources {
                    let dir = r.kind == ResourceKind::Dir;
                    let entry = match origin {
                        Origin::Context => Entry::Context(r.path.clone(), dir),
                        Origin::Stage { index } => Entry::Stage(*index, r.path.clone(), dir),
                        Origin::Image { .. } => continue,
                    };
                    entries.insert(r.id.clone(), entry);
                }
            };
        for (_, step) in plan.steps() {
            match &step.kind {
                StepKind::Copy(t) | StepKind::Add(t) => {
                    for source in &t.sources {
                        match source {
                            Source::Path { resources, .. } => {
                                add(&mut entries, &t.origin, resources);
                            }
                            Source::Url { checksum, id, .. } => {
                                entries.insert(id.clone(), Entry::Url(checksum.clone()));
                            }
                            Source::Heredoc { .. } => {}
                        }
                    }
                }
                // `RUN --mount=type=bind` from the context lists its files as resources.
                StepKind::Run(run) => {
                    for m in &run.mounts {
                        if let RunMount::Bind {
                            from, resources, ..
                        } = m
                        {
                            add(&mut entries, from, resources);
                        }
                    }
                }
                StepKind::Workdir => {}
            }
        }
        Self {
            context: context.into(),
            stages: HashMap::new(),
            urls: HashMap::new(),
            secrets: BTreeMap::new(),
            entries,
            filter: None,
            walk_dirs: false,
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Sends a directory resource with its whole subtree (through [`DirSource::filter`]).
    ///
    /// By default a directory resource is sent alone, as [`firebuild_plan::ResourceKind::Dir`]
    /// specifies: a plan from `firebuild-dockerfile` lists every entry a directory keeps (after
    /// `.dockerignore` and `--exclude`) as a resource of its own, so walking the directory would
    /// send those entries twice and the ignored ones too. Turn this on for plans that name a
    /// whole tree with one directory resource.
    pub fn walk_directories(mut self) -> Self {
        self.walk_dirs = true;
        self
    }

    /// Filters entries of context directory resources (`.dockerignore`) when directories are
    /// walked ([`DirSource::walk_directories`]).
    pub fn filter(mut self, filter: impl Fn(&Path, bool) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// Registers the output directory of stage `index` for `COPY --from=<stage>` resources.
    pub fn stage_output(mut self, index: usize, dir: impl Into<PathBuf>) -> Self {
        self.stages.insert(index, dir.into());
        self
    }

    /// Registers the file the host downloaded for the `ADD <url>` resource `id`.
    pub fn url_file(mut self, id: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        self.urls.insert(id.into(), path.into());
        self
    }

    /// Registers the files the host downloaded for `ADD <url>`, by resource id (what
    /// `firebuild_build::fetch_urls` returns). Each is sent as a regular file with its mode on
    /// disk (the download cache writes 0600, as buildkit gives a downloaded file; the guest
    /// applies `--chmod`/`--chown`), after a check against the plan's `--checksum`. Ids that
    /// are not `ADD <url>` resources of the plan stay unknown.
    pub fn with_urls(mut self, files: BTreeMap<String, PathBuf>) -> Self {
        self.urls.extend(files);
        self
    }

    /// The build's secrets by id (`--secret id=...`). The server hands secret `id` to the guest
    /// only while a RUN step that mounts it runs, once per step start; see
    /// [`ResourceSource::secret`].
    pub fn with_secrets(mut self, secrets: BTreeMap<String, SecretBytes>) -> Self {
        self.secrets.extend(secrets);
        self
    }

    fn verify_checksum(&self, id: &str, path: &Path, checksum: &str) -> Result<(), SourceError> {
        if self.verified.lock().is_ok_and(|v| v.contains(id)) {
            return Ok(());
        }
        let bad = || SourceError::BadChecksum {
            id: id.to_owned(),
            checksum: checksum.to_owned(),
        };
        let expected = checksum.strip_prefix("sha256:").ok_or_else(bad)?;
        if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let io = |source| SourceError::Io {
            id: id.to_owned(),
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let actual = hex::encode(hasher.finalize());
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(SourceError::ChecksumMismatch {
                id: id.to_owned(),
                expected: checksum.to_owned(),
                actual,
            });
        }
        if let Ok(mut v) = self.verified.lock() {
            v.insert(id.to_owned());
        }
        Ok(())
    }
}

/// The filter that keeps a directory resource's root and none of its entries.
fn dir_alone() -> EntryFilter {
    Arc::new(|_: &Path, _: bool| false)
}

/// `root/rel` if `rel` is a normalised relative path whose parent directories stay inside `root`
/// once symlinks are resolved. The last component is not resolved (a symlink is sent as a link).
fn confine(id: &str, root: &Path, rel: &str) -> Result<PathBuf, SourceError> {
    let outside = || SourceError::Outside {
        id: id.to_owned(),
        path: rel.to_owned(),
    };
    let rel_path = Path::new(rel);
    let mut clean = PathBuf::new();
    for c in rel_path.components() {
        match c {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(outside());
            }
        }
    }
    let io = |path: &Path, source| SourceError::Io {
        id: id.to_owned(),
        path: path.to_owned(),
        source,
    };
    let root = root.canonicalize().map_err(|e| io(root, e))?;
    let Some(name) = clean.file_name() else {
        // The context root itself (`COPY . /dst`).
        return Ok(root);
    };
    let parent = root.join(clean.parent().unwrap_or(Path::new("")));
    let parent = parent.canonicalize().map_err(|e| io(&parent, e))?;
    if !parent.starts_with(&root) {
        return Err(outside());
    }
    Ok(parent.join(name))
}

impl ResourceSource for DirSource {
    fn secret(&self, id: &str) -> Option<SecretBytes> {
        self.secrets.get(id).cloned()
    }

    fn resolve(&self, id: &str) -> Result<ResolvedResource, SourceError> {
        let not_found = || SourceError::NotFound { id: id.to_owned() };
        match self.entries.get(id).ok_or_else(not_found)? {
            // A plan lists what a directory keeps as resources of their own: the directory
            // resource itself is sent alone, never its subtree (which would bypass
            // `.dockerignore`/`--exclude` and send the kept entries twice).
            Entry::Context(rel, true) if !self.walk_dirs => Ok(ResolvedResource {
                path: confine(id, &self.context, rel)?,
                filter: Some(dir_alone()),
            }),
            Entry::Context(rel, _) => Ok(ResolvedResource {
                path: confine(id, &self.context, rel)?,
                filter: self.filter.clone(),
            }),
            Entry::Stage(index, rel, dir) => {
                let root = self.stages.get(index).ok_or_else(not_found)?;
                Ok(ResolvedResource {
                    path: confine(id, root, rel)?,
                    filter: (*dir && !self.walk_dirs).then(dir_alone),
                })
            }
            Entry::Url(checksum) => {
                let path = self.urls.get(id).ok_or_else(not_found)?;
                if let Some(checksum) = checksum {
                    self.verify_checksum(id, path, checksum)?;
                }
                Ok(ResolvedResource {
                    path: path.clone(),
                    filter: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebuild_plan::{
        Base, ImageConfig, Resource, ResourceKind, Span, Stage, Step, StepContext, Transfer,
    };

    fn plan(resources: Vec<(&str, &str)>, url: Option<(&str, Option<String>)>) -> BuildPlan {
        let mut sources = vec![Source::Path {
            pattern: "*".into(),
            resources: resources
                .into_iter()
                .map(|(id, path)| Resource {
                    id: id.into(),
                    path: path.into(),
                    kind: ResourceKind::File,
                    target: "/x".into(),
                    extract: false,
                })
                .collect(),
        }];
        if let Some((id, checksum)) = url {
            sources.push(Source::Url {
                url: "https://example.invalid/f".into(),
                checksum,
                id: id.into(),
                target: "/f".into(),
            });
        }
        BuildPlan {
            schema_version: 1,
            dockerfile: "Dockerfile".into(),
            target: 0,
            stages: vec![Stage {
                index: 0,
                name: None,
                base: Base::Scratch,
                platform: None,
                span: Span::lines(1, 1),
                steps: vec![Step {
                    index: 0,
                    span: Span::lines(2, 2),
                    context: StepContext::default(),
                    kind: StepKind::Add(Transfer {
                        origin: Origin::Context,
                        sources,
                        dest: "/x".into(),
                        chown: None,
                        chmod: None,
                        link: false,
                        parents: false,
                        exclude: vec![],
                        keep_git_dir: false,
                    }),
                }],
                config: ImageConfig::default(),
            }],
            warnings: vec![],
        }
    }

    #[test]
    fn serves_only_plan_resources_inside_the_root() {
        let ctx = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("a.txt"), b"a").unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path(), ctx.path().join("escape")).unwrap();
        let p = plan(
            vec![
                ("ok", "a.txt"),
                ("dotdot", "../secret"),
                ("abs", "/etc/passwd"),
                ("via-link", "escape/secret"),
                ("link-itself", "escape"),
            ],
            None,
        );
        let src = DirSource::new(&p, ctx.path());
        let ok = src.resolve("ok").unwrap();
        assert_eq!(std::fs::read(&ok.path).unwrap(), b"a");
        assert!(matches!(
            src.resolve("nope"),
            Err(SourceError::NotFound { .. })
        ));
        for id in ["dotdot", "abs", "via-link"] {
            let err = src.resolve(id).unwrap_err();
            assert!(matches!(err, SourceError::Outside { .. }), "{id}: {err}");
        }
        // The symlink itself is inside the root and is sent as a link, not followed.
        let link = src.resolve("link-itself").unwrap();
        assert!(
            link.path
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn stage_outputs_resolve_under_their_registered_directory() {
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("app.bin"), b"x").unwrap();
        let mut p = plan(vec![("st:app", "app.bin")], None);
        if let StepKind::Add(t) = &mut p.stages[0].steps[0].kind {
            t.origin = Origin::Stage { index: 0 };
        }
        // Not registered yet: unknown.
        let src = DirSource::new(&p, "/nonexistent");
        assert!(matches!(
            src.resolve("st:app"),
            Err(SourceError::NotFound { .. })
        ));
        let src = DirSource::new(&p, "/nonexistent").stage_output(0, out.path());
        assert_eq!(
            src.resolve("st:app").unwrap().path,
            out.path().canonicalize().unwrap().join("app.bin")
        );
    }

    #[test]
    fn with_urls_serves_downloads_and_context_binds_are_resources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dl");
        std::fs::write(&file, b"hello").unwrap();
        std::fs::write(dir.path().join("go.mod"), b"module x").unwrap();
        let mut p = plan(vec![], Some(("u", None)));
        p.stages[0].steps.push(Step {
            index: 1,
            span: Span::lines(3, 3),
            context: StepContext::default(),
            kind: StepKind::Run(firebuild_plan::Run {
                mounts: vec![RunMount::Bind {
                    target: "/src".into(),
                    from: Origin::Context,
                    source: String::new(),
                    rw: false,
                    resources: vec![Resource {
                        id: "bind:go.mod".into(),
                        path: "go.mod".into(),
                        kind: ResourceKind::File,
                        target: "/go.mod".into(),
                        extract: false,
                    }],
                }],
                ..firebuild_plan::Run::new(firebuild_plan::Command::Shell("go build".into()))
            }),
        });
        let src = DirSource::new(&p, dir.path()).with_urls(BTreeMap::from([
            ("u".to_owned(), file.clone()),
            ("not-in-plan".to_owned(), file.clone()),
        ]));
        assert_eq!(src.resolve("u").unwrap().path, file);
        assert!(matches!(
            src.resolve("not-in-plan"),
            Err(SourceError::NotFound { .. })
        ));
        let bind = src.resolve("bind:go.mod").unwrap();
        assert_eq!(std::fs::read(bind.path).unwrap(), b"module x");
        // No secrets unless given.
        assert!(src.secret("tok").is_none());
        let src = src.with_secrets(BTreeMap::from([(
            "tok".to_owned(),
            SecretBytes::new(b"v".to_vec()),
        )]));
        assert_eq!(src.secret("tok").unwrap().expose_secret(), b"v");
        assert!(!format!("{src:?}").contains("\"v\""));
    }

    #[test]
    fn url_files_are_checked_against_their_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dl");
        std::fs::write(&file, b"hello").unwrap();
        let good = format!("sha256:{}", hex::encode(Sha256::digest(b"hello")));
        let p = plan(vec![], Some(("u", Some(good))));
        let src = DirSource::new(&p, dir.path()).url_file("u", &file);
        assert_eq!(src.resolve("u").unwrap().path, file);

        let bad = format!("sha256:{}", hex::encode(Sha256::digest(b"other")));
        let p = plan(vec![], Some(("u", Some(bad))));
        let src = DirSource::new(&p, dir.path()).url_file("u", &file);
        let err = src.resolve("u").unwrap_err().to_string();
        assert!(err.contains("does not match its checksum"), "{err}");

        let p = plan(vec![], Some(("u", Some("md5:abc".into()))));
        let src = DirSource::new(&p, dir.path()).url_file("u", &file);
        assert!(matches!(
            src.resolve("u"),
            Err(SourceError::BadChecksum { .. })
        ));
        // A URL resource the embedder did not fetch is unknown.
        let src = DirSource::new(&p, dir.path());
        assert!(matches!(
            src.resolve("u"),
            Err(SourceError::NotFound { .. })
        ));
    }
}
