//! Step cache keys: a chain of SHA-256 digests, one per step, each over the previous key, the
//! step's definition and the digests of what it reads.
//!
//! What goes in, as in BuildKit's cache keys:
//! - the stage's start: `scratch`, the base image's manifest and config digests and layer diff
//!   ids (resolved when planning, so a moved tag is a new key), or the key of the stage it is
//!   based on; and the work image's size;
//! - the step's definition as the guest receives it, without its Dockerfile position (moving an
//!   instruction to another line changes nothing) and, for COPY/ADD/WORKDIR, without the env
//!   and ARGs in force (they do not reach those steps; RUN gets them as its environment, so
//!   for RUN they count: BuildKit keys a RUN on its env, ARGs in scope included);
//! - the contents of every context resource a COPY/ADD or bind mount reads, after
//!   `.dockerignore` and `--exclude`: paths, kinds, modes, sizes, link targets and bytes, not
//!   modification times or owners (BuildKit's content checksums ignore both);
//! - the file an `ADD <url>` fetched (its SHA-256), and the key of the stage or the digest of
//!   the image a `--from` names.
//!
//! Not in the key, as in BuildKit: secret values and cache mounts' contents (only their
//! definitions are).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use firebuild_bootstrap::{DirSource, ResourceSource};

/// The filter a resolved resource carries (what `EntryFilter` points to).
type FilterFn = dyn Fn(&Path, bool) -> bool + Send + Sync;
use firebuild_plan::{Origin, Resource, RunMount, Source, Step, StepKind};
use firebuild_rootfs::BaseProvenance;
use firebuild_transfer::{ChunkPlanner, Frame, ResourceEncoder};
use sha2::{Digest, Sha256};

/// Version of what goes into a key; bumped when the key or the snapshot's meaning changes.
const KEY_FORMAT: &str = "firebuild-step-cache-1";

/// A step key, hex SHA-256.
pub type Key = String;

/// Why a step cannot be keyed (it then runs, and nothing after it in its stage is cached).
pub type Uncacheable = String;

/// The key of a stage's start: its base, before any step.
pub fn start_key(base: &StartFrom<'_>, work_size_mib: u64) -> Result<Key, Uncacheable> {
    let mut h = Sha256::new();
    h.update(KEY_FORMAT);
    h.update(work_size_mib.to_le_bytes());
    match base {
        StartFrom::Scratch => h.update(b"scratch"),
        StartFrom::Stage(key) => {
            h.update(b"stage\0");
            h.update(key.as_bytes());
        }
        StartFrom::Image(reference, Some(p)) if p.config_digest.is_some() => {
            h.update(b"image\0");
            h.update(serde_json::to_vec(p).unwrap_or_default());
        }
        StartFrom::Image(reference, _) => {
            return Err(format!("base {reference} has no content digest"));
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Where a stage starts.
#[derive(Debug, Clone)]
pub enum StartFrom<'a> {
    /// `FROM scratch`.
    Scratch,
    /// An image, with its provenance when it has one.
    Image(&'a str, Option<&'a BaseProvenance>),
    /// An earlier stage, by its last key.
    Stage(Key),
}

/// What a step's inputs resolve against.
pub struct Inputs<'a> {
    /// The build's resources (context files, after `.dockerignore`).
    pub source: &'a DirSource,
    /// Files fetched for `ADD <url>`, by resource id.
    pub urls: &'a BTreeMap<String, PathBuf>,
    /// The last key of each stage built so far.
    pub stages: &'a BTreeMap<usize, Key>,
    /// The provenance of the images a `--from` names, by reference.
    pub images: &'a BTreeMap<String, BaseProvenance>,
}

/// The key of `step` after the key `prev`.
pub fn step_key(prev: &str, step: &Step, inputs: &Inputs<'_>) -> Result<Key, Uncacheable> {
    let mut h = Sha256::new();
    h.update(KEY_FORMAT);
    h.update(prev.as_bytes());
    h.update(definition(step));
    for (what, digest) in read_digests(step, inputs)? {
        h.update(what.as_bytes());
        h.update(b"\0");
        h.update(digest.as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

/// The step as the guest runs it, without its position, and without the env and ARGs for the
/// steps they do not reach.
fn definition(step: &Step) -> Vec<u8> {
    let mut step = step.clone();
    step.index = 0;
    step.span = Default::default();
    if !matches!(step.kind, StepKind::Run(_)) {
        step.context.env.clear();
        step.context.args.clear();
    }
    serde_json::to_vec(&step).unwrap_or_default()
}

/// `(what, digest)` for everything the step reads besides the disk.
fn read_digests(step: &Step, inputs: &Inputs<'_>) -> Result<Vec<(String, String)>, Uncacheable> {
    let mut out = Vec::new();
    match &step.kind {
        StepKind::Copy(t) | StepKind::Add(t) => {
            origin_digest(&t.origin, inputs, &mut out)?;
            for source in &t.sources {
                match source {
                    Source::Path { resources, .. } => {
                        resources_digests(&t.origin, resources, inputs, &mut out)?;
                    }
                    Source::Url { id, .. } => {
                        let path = inputs
                            .urls
                            .get(id)
                            .ok_or_else(|| format!("{id}: not fetched"))?;
                        out.push((id.clone(), file_sha256(path)?));
                    }
                    Source::Heredoc { .. } => {}
                }
            }
        }
        StepKind::Run(run) => {
            for m in &run.mounts {
                if let RunMount::Bind {
                    from, resources, ..
                } = m
                {
                    origin_digest(from, inputs, &mut out)?;
                    resources_digests(from, resources, inputs, &mut out)?;
                }
            }
        }
        StepKind::Workdir => {}
    }
    Ok(out)
}

fn origin_digest(
    origin: &Origin,
    inputs: &Inputs<'_>,
    out: &mut Vec<(String, String)>,
) -> Result<(), Uncacheable> {
    match origin {
        Origin::Context => {}
        Origin::Stage { index } => {
            let key = inputs
                .stages
                .get(index)
                .ok_or_else(|| format!("stage {index} has no key"))?;
            out.push((format!("stage {index}"), key.clone()));
        }
        Origin::Image { reference } => {
            let p = inputs
                .images
                .get(reference)
                .filter(|p| p.config_digest.is_some())
                .ok_or_else(|| format!("image {reference} has no content digest"))?;
            out.push((
                format!("image {reference}"),
                serde_json::to_string(p).unwrap_or_default(),
            ));
        }
    }
    Ok(())
}

/// Context resources: their content digests (other origins are keyed as a whole).
fn resources_digests(
    origin: &Origin,
    resources: &[Resource],
    inputs: &Inputs<'_>,
    out: &mut Vec<(String, String)>,
) -> Result<(), Uncacheable> {
    if *origin != Origin::Context {
        return Ok(());
    }
    for r in resources {
        let resolved = inputs
            .source
            .resolve(&r.id)
            .map_err(|e| format!("{}: {e}", r.path))?;
        let digest = tree_digest(&resolved.path, resolved.filter.as_deref())
            .map_err(|e| format!("{}: {e}", r.path))?;
        out.push((r.id.clone(), digest));
    }
    Ok(())
}

/// A file, link or directory tree's digest over what a COPY keeps of it: paths, kinds, modes,
/// sizes, link targets and bytes (the transfer encoder's walk, so the same entries the guest
/// receives).
fn tree_digest(path: &Path, filter: Option<&FilterFn>) -> Result<String, String> {
    let planner = ChunkPlanner::fixed(1 << 20).map_err(|e| e.to_string())?;
    let mut builder = ResourceEncoder::builder(path).planner(planner);
    if let Some(f) = filter {
        let f: &dyn Fn(&Path, bool) -> bool = f;
        builder = builder.filter(f);
    }
    let mut encoder = builder.build().map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    while let Some(frame) = encoder.next_frame().map_err(|e| e.to_string())? {
        match frame {
            Frame::Header(x) => {
                h.update([0u8, x.kind.code()]);
                h.update((x.path.len() as u64).to_le_bytes());
                h.update(x.path.as_bytes());
                h.update(x.mode.to_le_bytes());
                h.update(x.size.to_le_bytes());
                h.update((x.link_target.len() as u64).to_le_bytes());
                h.update(x.link_target.as_bytes());
            }
            Frame::Chunk(c) => {
                h.update([1u8]);
                h.update(&c.data);
            }
            Frame::Eof(_) => {}
        }
    }
    Ok(hex::encode(h.finalize()))
}

fn file_sha256(path: &Path) -> Result<String, Uncacheable> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}
