//! A file tree as both sides see it: what `docker export` streams and what the ext4 image holds,
//! reduced to what an image promises (paths, types, modes, owners, symlink targets, hardlinks,
//! content digests, xattrs). Timestamps are left out: neither builder makes them reproducible.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File { size: u64, sha256: String },
    Dir,
    Symlink(String),
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
    Socket,
}

/// One path's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub xattrs: BTreeMap<String, String>,
    /// The first path (in sort order) of this node's hardlink group, when it has more than one.
    pub hardlink_group: Option<String>,
}

/// Absolute path (`/etc/passwd`, root excluded) → node.
pub type Tree = BTreeMap<String, Node>;

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::File { size, sha256 } => format!("file {size} bytes sha256:{}", &sha256[..12]),
            Kind::Dir => "dir".to_owned(),
            Kind::Symlink(t) => format!("symlink -> {t}"),
            Kind::Fifo => "fifo".to_owned(),
            Kind::Char(a, b) => format!("char {a}:{b}"),
            Kind::Block(a, b) => format!("block {a}:{b}"),
            Kind::Socket => "socket".to_owned(),
        };
        write!(f, "{kind} {:04o} {}:{}", self.mode, self.uid, self.gid)?;
        if !self.xattrs.is_empty() {
            write!(f, " xattrs {:?}", self.xattrs)?;
        }
        if let Some(g) = &self.hardlink_group {
            write!(f, " hardlinked with {g}")?;
        }
        Ok(())
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `./a/b/` → `/a/b`; `None` for the root.
fn absolute(raw: &str) -> Option<String> {
    let trimmed = raw.trim_start_matches("./").trim_matches('/');
    (!trimmed.is_empty() && trimmed != ".").then(|| format!("/{trimmed}"))
}

/// Marks each hardlink group (members sharing a key) with its first path.
fn mark_hardlinks<K: Ord>(tree: &mut Tree, keys: &BTreeMap<String, K>) {
    let mut groups: BTreeMap<&K, Vec<&String>> = BTreeMap::new();
    for (path, key) in keys {
        groups.entry(key).or_default().push(path);
    }
    let mut first = Vec::new();
    for members in groups.values().filter(|m| m.len() > 1) {
        let head = (*members.iter().min().unwrap()).clone();
        first.extend(members.iter().map(|m| ((*m).clone(), head.clone())));
    }
    for (path, head) in first {
        tree.get_mut(&path).unwrap().hardlink_group = Some(head);
    }
}

/// The tree a `docker export` tar stream holds.
pub fn from_tar(reader: impl Read) -> Tree {
    let mut archive = tar::Archive::new(reader);
    let mut tree = Tree::new();
    // Hardlink entries name an earlier path: both get that path's key.
    let mut link_key: BTreeMap<String, String> = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(path) = absolute(&raw) else { continue };
        let header = entry.header().clone();
        let mut xattrs = BTreeMap::new();
        if let Some(exts) = entry.pax_extensions().unwrap() {
            for ext in exts {
                let ext = ext.unwrap();
                if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(name.to_owned(), sha256_hex(ext.value_bytes()));
                }
            }
        }
        let entry_type = header.entry_type();
        let kind = if entry_type.is_hard_link() {
            let target =
                absolute(&String::from_utf8_lossy(&entry.link_name_bytes().unwrap())).unwrap();
            let key = link_key[&target].clone();
            let node = tree[&target].clone();
            link_key.insert(path.clone(), key);
            tree.insert(path, node);
            continue;
        } else if entry_type.is_dir() {
            Kind::Dir
        } else if entry_type.is_symlink() {
            Kind::Symlink(String::from_utf8_lossy(&entry.link_name_bytes().unwrap()).into_owned())
        } else if entry_type.is_fifo() {
            Kind::Fifo
        } else if entry_type.is_character_special() || entry_type.is_block_special() {
            let (major, minor) = (
                header.device_major().unwrap().unwrap_or(0),
                header.device_minor().unwrap().unwrap_or(0),
            );
            if entry_type.is_character_special() {
                Kind::Char(major, minor)
            } else {
                Kind::Block(major, minor)
            }
        } else {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            Kind::File {
                size: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
            }
        };
        link_key.insert(path.clone(), path.clone());
        let node = Node {
            kind,
            mode: header.mode().unwrap() & 0o7777,
            uid: header.uid().unwrap(),
            gid: header.gid().unwrap(),
            xattrs,
            hardlink_group: None,
        };
        tree.insert(path, node);
    }
    mark_hardlinks(&mut tree, &link_key);
    tree
}

/// Runs a debugfs command script (read-only) against `image`; its stdout.
fn debugfs_script(image: &Path, script: &str, scratch: &Path) -> String {
    let file = scratch.join("debugfs.script");
    std::fs::write(&file, script).unwrap();
    let out = Command::new("debugfs")
        .arg("-f")
        .arg(&file)
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs on {}", image.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A path quoted for a debugfs command line; our own test trees only, so a name debugfs cannot
/// quote is a test failure, not something to escape.
fn quoted(path: &str) -> String {
    assert!(
        !path.contains(['"', '\n', '\\']),
        "unquotable path for debugfs: {path:?}"
    );
    format!("\"{path}\"")
}

/// Splits a debugfs `-f` transcript into the output of each command, in order.
fn per_command(transcript: &str) -> Vec<&str> {
    transcript.split("debugfs: ").skip(1).collect()
}

/// Per path: inode, mode (with type bits), uid, gid, from `ls -p` of each directory, level by level.
fn list_inodes(image: &Path, scratch: &Path) -> BTreeMap<String, (u64, u32, u64, u64)> {
    let mut found = BTreeMap::new();
    let mut level = vec![String::from("/")];
    while !level.is_empty() {
        let script: String = level
            .iter()
            .map(|d| format!("ls -p {}\n", quoted(d)))
            .collect();
        let transcript = debugfs_script(image, &script, scratch);
        let mut next = Vec::new();
        for (dir, output) in level.iter().zip(per_command(&transcript)) {
            for line in output.lines().skip(1) {
                // /inode/mode/uid/gid/name/size/
                let fields: Vec<&str> = line.split('/').collect();
                if fields.len() < 7 || matches!(fields[5], "" | "." | "..") {
                    continue;
                }
                let path = format!("{}/{}", dir.trim_end_matches('/'), fields[5]);
                let mode = u32::from_str_radix(fields[2], 8).unwrap();
                let row = (
                    fields[1].parse().unwrap(),
                    mode,
                    fields[3].parse().unwrap(),
                    fields[4].parse().unwrap(),
                );
                if mode & 0o170000 == 0o040000 {
                    next.push(path.clone());
                }
                found.insert(path, row);
            }
        }
        level = next;
    }
    found
}

/// Names of each path's xattrs (`ea_list`), then their values (`ea_get -f`), hashed.
fn xattrs(
    image: &Path,
    paths: &[&String],
    scratch: &Path,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let script: String = paths
        .iter()
        .map(|p| format!("ea_list {}\n", quoted(p)))
        .collect();
    let transcript = debugfs_script(image, &script, scratch);
    let mut names = Vec::new();
    for (path, output) in paths.iter().zip(per_command(&transcript)) {
        for line in output.lines().skip(1) {
            if let Some((name, _)) = line.strip_prefix("  ").and_then(|l| l.split_once(" (")) {
                names.push(((*path).clone(), name.to_owned()));
            }
        }
    }
    let mut script = String::new();
    for (i, (path, name)) in names.iter().enumerate() {
        let out = scratch.join(format!("xattr.{i}"));
        script += &format!("ea_get -f {} {} {name}\n", out.display(), quoted(path));
    }
    if !names.is_empty() {
        debugfs_script(image, &script, scratch);
    }
    let mut found: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (i, (path, name)) in names.into_iter().enumerate() {
        let value = std::fs::read(scratch.join(format!("xattr.{i}"))).unwrap();
        found
            .entry(path)
            .or_default()
            .insert(name, sha256_hex(&value));
    }
    found
}

/// The tree an ext4 image holds, read without mounting it: metadata from `ls -p`, contents and
/// symlink targets from `rdump` (run as root, which CI is), xattrs from `ea_list`/`ea_get`.
pub fn from_ext4(image: &Path, scratch: &Path) -> Tree {
    let inodes = list_inodes(image, scratch);
    let dump = scratch.join("rdump");
    std::fs::create_dir_all(&dump).unwrap();
    debugfs_script(image, &format!("rdump / {}\n", dump.display()), scratch);
    let paths: Vec<&String> = inodes.keys().collect();
    let mut attrs = xattrs(image, &paths, scratch);
    let special: Vec<&String> = inodes
        .iter()
        .filter(|(_, row)| matches!(row.1 & 0o170000, 0o020000 | 0o060000))
        .map(|(p, _)| p)
        .collect();
    let devices = device_numbers(image, &special, scratch);
    let mut tree = Tree::new();
    let mut keys = BTreeMap::new();
    for (path, &(inode, mode, uid, gid)) in &inodes {
        let local = dump.join(path.trim_start_matches('/'));
        let kind = match mode & 0o170000 {
            0o040000 => Kind::Dir,
            0o120000 => Kind::Symlink(
                std::fs::read_link(&local)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            ),
            0o010000 => Kind::Fifo,
            0o140000 => Kind::Socket,
            0o020000 => {
                let (major, minor) = devices[path];
                Kind::Char(major, minor)
            }
            0o060000 => {
                let (major, minor) = devices[path];
                Kind::Block(major, minor)
            }
            _ => {
                let bytes =
                    std::fs::read(&local).unwrap_or_else(|e| panic!("{path} ({mode:o}): {e}"));
                Kind::File {
                    size: bytes.len() as u64,
                    sha256: sha256_hex(&bytes),
                }
            }
        };
        keys.insert(path.clone(), inode);
        tree.insert(
            path.clone(),
            Node {
                kind,
                mode: mode & 0o7777,
                uid,
                gid,
                xattrs: attrs.remove(path).unwrap_or_default(),
                hardlink_group: None,
            },
        );
    }
    // Directories have several names (`.`, `..`) but are never hardlink groups.
    keys.retain(|p, _| tree[p].kind != Kind::Dir);
    mark_hardlinks(&mut tree, &keys);
    std::fs::remove_dir_all(&dump).unwrap();
    tree
}

/// Major and minor numbers of device nodes (`stat`; `rdump` skips them).
fn device_numbers(image: &Path, paths: &[&String], scratch: &Path) -> BTreeMap<String, (u32, u32)> {
    if paths.is_empty() {
        return BTreeMap::new();
    }
    let script: String = paths
        .iter()
        .map(|p| format!("stat {}\n", quoted(p)))
        .collect();
    let transcript = debugfs_script(image, &script, scratch);
    let mut found = BTreeMap::new();
    for (path, output) in paths.iter().zip(per_command(&transcript)) {
        // `Device major/minor number: 01:03 (hex 01:03)`
        let numbers = output
            .lines()
            .find_map(|l| l.trim().strip_prefix("Device major/minor number: "))
            .and_then(|l| l.split(' ').next())
            .and_then(|mm| mm.split_once(':'))
            .unwrap_or_else(|| panic!("no device numbers for {path} in: {output}"));
        found.insert(
            (*path).clone(),
            (numbers.0.parse().unwrap(), numbers.1.parse().unwrap()),
        );
    }
    found
}
