//! The `oci_layer` fuzz harness, shared by the cargo-fuzz target and the stable replay test
//! (`crates/rootfs/tests/fuzz_corpus.rs`): any byte string is applied as an image layer (tar,
//! gzip or zstd, sniffed) by the real `Applier` to an in-memory tree that already holds a small
//! base image. Errors are fine; the invariants are:
//!
//! - nothing panics;
//! - every path the applier hands the tree is confined: relative, normal components only, each
//!   parent an existing directory of the tree (never a symlink, which a real directory would
//!   follow out of the root); the root itself is never removed nor replaced;
//! - whiteouts and opaque directories remove only such confined paths;
//! - file content written never exceeds the byte limit, and neither does the decompressed
//!   stream read (a bomb is cut while it is being read: see `usage`);
//! - every side-table entry names a path of the tree.
//!
//! Odd-length inputs are applied as root (`Ownership::Native`: device nodes, owners, xattrs go
//! to the tree), even-length ones unprivileged (`Ownership::SideTable`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use firebuild_rootfs::Error;
use firebuild_rootfs::layer::{Applier, Attrs, Limits, NodeType, Ownership, Special, Tree, Usage};

/// The limits the harness applies with (small, so the fuzzer reaches them).
pub const LIMITS: Limits = Limits {
    max_bytes: 16 << 10,
    max_entries: 16,
};

/// A node of the in-memory tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file of this many bytes (content is not kept).
    File(u64),
    /// A symlink and its target.
    Symlink(PathBuf),
    /// A device node or fifo.
    Special(Special),
}

/// An in-memory tree that checks every path it is handed (see the module docs).
#[derive(Debug, Default)]
pub struct MemTree {
    /// Nodes by path relative to the root; `""` is the root.
    pub nodes: BTreeMap<PathBuf, Node>,
    /// File bytes ever written (removed files included).
    pub written: u64,
}

impl MemTree {
    /// The base image the fuzzed layer lands on: merged-usr symlinks (one absolute), nested
    /// directories to whiteout or make opaque, a symlink pointing out of the root.
    pub fn base() -> Self {
        let mut t = MemTree::default();
        let p = PathBuf::from;
        t.nodes.insert(p(""), Node::Dir);
        for d in [
            "etc", "usr", "usr/bin", "usr/lib", "d", "d/e", "var", "var/tmp",
        ] {
            t.nodes.insert(p(d), Node::Dir);
        }
        for (f, n) in [
            ("etc/passwd", 32),
            ("usr/bin/sh", 100),
            ("d/old", 1),
            ("d/e/f", 2),
        ] {
            t.nodes.insert(p(f), Node::File(n));
        }
        t.nodes.insert(p("bin"), Node::Symlink(p("usr/bin")));
        t.nodes.insert(p("lib"), Node::Symlink(p("/usr/lib")));
        t.nodes.insert(p("up"), Node::Symlink(p("../../..")));
        t.nodes.insert(p("var/run"), Node::Symlink(p("../run")));
        t
    }

    /// Asserts that `rel` is confined: normal components, every parent a directory.
    ///
    /// Only the immediate parent is looked up: every node of the tree has directories of the
    /// tree as all its ancestors (a node is only added through this check, and `remove` takes
    /// the whole subtree), so a parent that is a directory of the tree has such ancestors too;
    /// `run` asserts this of every node at the end. Looking up every ancestor cost O(depth²)
    /// path comparisons per call, and the applier calls this for every prefix it resolves:
    /// the fuzzer's deep paths made that three quarters of the target's time.
    fn check(&self, rel: &Path, op: &str) {
        for c in rel.components() {
            let Component::Normal(n) = c else {
                panic!("{op}: path {rel:?} has a {c:?} component");
            };
            assert_ne!(n, OsStr::new(""), "{op}: empty component in {rel:?}");
        }
        if let Some(parent) = rel.parent() {
            assert_eq!(
                self.nodes.get(parent),
                Some(&Node::Dir),
                "{op}: {rel:?} goes through {parent:?}, not a directory of the tree"
            );
        }
    }

    fn must_be_new(&self, rel: &Path, op: &str) -> io::Result<()> {
        self.check(rel, op);
        assert!(!rel.as_os_str().is_empty(), "{op} on the root");
        if self.nodes.contains_key(rel) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        Ok(())
    }

    fn children<'a>(&'a self, rel: &'a Path) -> impl Iterator<Item = &'a PathBuf> + 'a {
        let depth = rel.components().count();
        self.nodes
            .range(rel.to_path_buf()..)
            .skip(1)
            .take_while(move |(k, _)| k.starts_with(rel))
            .map(|(k, _)| k)
            .filter(move |k| k.components().count() == depth + 1)
    }
}

impl Tree for MemTree {
    fn node_type(&self, rel: &Path) -> io::Result<Option<NodeType>> {
        self.check(rel, "stat");
        Ok(self.nodes.get(rel).map(|n| match n {
            Node::Dir => NodeType::Dir,
            Node::Symlink(_) => NodeType::Symlink,
            _ => NodeType::Other,
        }))
    }

    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        self.check(rel, "readlink");
        match self.nodes.get(rel) {
            Some(Node::Symlink(t)) => Ok(t.clone()),
            Some(_) => Err(io::ErrorKind::InvalidInput.into()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn create_dir(&mut self, rel: &Path) -> io::Result<()> {
        self.must_be_new(rel, "mkdir")?;
        self.nodes.insert(rel.to_path_buf(), Node::Dir);
        Ok(())
    }

    fn write_file(&mut self, rel: &Path, content: &mut dyn Read) -> io::Result<u64> {
        self.must_be_new(rel, "create")?;
        self.nodes.insert(rel.to_path_buf(), Node::File(0));
        let n = io::copy(content, &mut io::sink())?;
        self.written += n;
        self.nodes.insert(rel.to_path_buf(), Node::File(n));
        Ok(n)
    }

    fn symlink(&mut self, target: &OsStr, rel: &Path) -> io::Result<()> {
        self.must_be_new(rel, "symlink")?;
        self.nodes
            .insert(rel.to_path_buf(), Node::Symlink(PathBuf::from(target)));
        Ok(())
    }

    fn hard_link(&mut self, existing: &Path, rel: &Path) -> io::Result<()> {
        self.check(existing, "link source");
        self.must_be_new(rel, "link")?;
        match self.nodes.get(existing) {
            None => Err(io::ErrorKind::NotFound.into()),
            Some(Node::Dir) => Err(io::ErrorKind::PermissionDenied.into()),
            Some(n) => {
                let n = n.clone();
                self.nodes.insert(rel.to_path_buf(), n);
                Ok(())
            }
        }
    }

    fn make_node(&mut self, rel: &Path, node: Special) -> io::Result<()> {
        self.must_be_new(rel, "mknod")?;
        self.nodes.insert(rel.to_path_buf(), Node::Special(node));
        Ok(())
    }

    fn remove(&mut self, rel: &Path) -> io::Result<()> {
        self.check(rel, "remove");
        assert!(!rel.as_os_str().is_empty(), "remove of the root");
        if !self.nodes.contains_key(rel) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let doomed: Vec<PathBuf> = self
            .nodes
            .range(rel.to_path_buf()..)
            .take_while(|(k, _)| k.starts_with(rel))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
        Ok(())
    }

    fn list_dir(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        self.check(rel, "read_dir");
        if self.nodes.get(rel) != Some(&Node::Dir) {
            return Err(io::ErrorKind::NotADirectory.into());
        }
        Ok(self
            .children(rel)
            .filter_map(|k| k.file_name().map(OsStr::to_os_string))
            .collect())
    }

    fn set_attrs(&mut self, rel: &Path, attrs: &Attrs) -> io::Result<()> {
        self.check(rel, "set attributes");
        let Some(n) = self.nodes.get(rel) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        assert!(
            !(matches!(n, Node::Symlink(_)) && attrs.mode.is_some()),
            "chmod on a symlink {rel:?} (would follow it)"
        );
        Ok(())
    }
}

/// What one input did.
#[derive(Debug)]
pub struct Outcome {
    /// The layer's result: its diff id, or why it stopped.
    pub result: Result<String, Error>,
    /// What was extracted.
    pub usage: Usage,
    /// The tree afterwards.
    pub tree: MemTree,
}

/// Runs one input.
pub fn run(data: &[u8]) -> Outcome {
    let ownership = if data.len() % 2 == 1 {
        Ownership::Native
    } else {
        Ownership::SideTable
    };
    let mut applier = Applier::with_tree(MemTree::base(), ownership).limits(LIMITS);
    let result = applier
        .apply_reader("fuzz", data)
        .map(|d| d.as_str().to_owned());
    let usage = applier.usage();
    assert!(usage.file_bytes <= LIMITS.max_bytes, "{usage:?}");
    assert!(usage.stream_bytes <= LIMITS.max_bytes, "{usage:?}");
    assert!(usage.entries <= LIMITS.max_entries + 1, "{usage:?}");
    if let Err(Error::LayerLimit { limit, .. }) = &result {
        assert!(
            *limit == LIMITS.max_bytes || *limit == LIMITS.max_entries,
            "{result:?}"
        );
    }
    let (tree, side) = applier.into_parts();
    assert!(tree.written <= LIMITS.max_bytes, "wrote {}", tree.written);
    assert_eq!(tree.nodes.get(Path::new("")), Some(&Node::Dir), "root lost");
    for (k, n) in &tree.nodes {
        if !k.as_os_str().is_empty() {
            // With every node's parent a directory of the tree, every ancestor is one too.
            tree.check(k, "tree");
        }
        if let Node::File(len) = n {
            assert!(*len <= LIMITS.max_bytes);
        }
    }
    if ownership == Ownership::Native {
        assert!(side.is_empty(), "side table under Native");
    }
    for k in side.entries.keys() {
        assert!(
            tree.nodes.contains_key(k),
            "side table entry {k:?} not in the tree"
        );
    }
    Outcome {
        result,
        usage,
        tree,
    }
}
