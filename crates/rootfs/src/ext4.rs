//! ext4 assembly with e2fsprogs: `mkfs.ext4 -d` (under `fakeroot` when not root), sizing,
//! `e2fsck -fn` checks, shrink (`resize2fs -M`) and grow.
//!
//! # Size formula
//! For a tree with `bytes` of file data (each file rounded up to 4 KiB blocks, plus one block per
//! directory and per symlink longer than 60 bytes) and `n` inodes:
//!
//! ```text
//! needed   = bytes + n * 256 (inode table) + 4 MiB (superblocks, bitmaps, root, lost+found)
//! journal  = 4 MiB below 128 MiB, 16 MiB below 1 GiB, else 64 MiB
//! headroom = max(needed / 4, 64 MiB)       (the build's own writes, ext4 slack)
//! size     = round_up(needed + journal + headroom, 1 MiB)
//! ```
//! A user size is accepted when it is at least `needed + journal`; otherwise [`Error::TooSmall`].
//! Inodes are reserved explicitly (`-N max(2 * n, 4096)`) so trees of many small files fit.
//! Reserved blocks are off (`-m 0`): the image is not a host root filesystem.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::{debug, info};

use crate::error::{Error, Result};
use crate::layer::{NodeKind, SideTable};

const MIB: u64 = 1 << 20;

/// What [`measure`] found in a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeSize {
    /// Bytes of data blocks (4 KiB granularity).
    pub data_bytes: u64,
    /// Inodes (files, directories, symlinks, nodes; hardlinks counted once).
    pub inodes: u64,
}

impl TreeSize {
    /// Smallest image this content fits in (no headroom).
    pub fn min_image_bytes(&self) -> u64 {
        let needed = self.data_bytes + self.inodes * 256 + 4 * MIB;
        round_up(needed + journal_for(needed), MIB)
    }

    /// Default image size: content plus headroom (see the module docs).
    pub fn default_image_bytes(&self) -> u64 {
        let needed = self.data_bytes + self.inodes * 256 + 4 * MIB;
        let headroom = (needed / 4).max(64 * MIB);
        round_up(needed + journal_for(needed) + headroom, MIB)
    }

    /// Inodes to reserve.
    pub fn inode_reservation(&self) -> u64 {
        (self.inodes * 2).max(4096)
    }
}

/// Bytes per inode in an image larger than its content: mkfs.ext4's default ratio.
const BYTES_PER_INODE: u64 = 16 * 1024;

/// Inodes for an image of `size` bytes holding `tree`: the tree's reservation, or mkfs's default
/// density when the image is larger (a work image that steps fill). Too few inodes per block
/// group would pin `resize2fs -M` to every group holding a used inode: a 4 GiB work image
/// with the reservation of a 280 MB Debian tree could not shrink below 1.9 GB.
fn inodes_for(tree: &TreeSize, size: u64) -> u64 {
    tree.inode_reservation().max(size / BYTES_PER_INODE)
}

fn journal_for(bytes: u64) -> u64 {
    if bytes < 128 * MIB {
        4 * MIB
    } else if bytes < 1024 * MIB {
        16 * MIB
    } else {
        64 * MIB
    }
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Walks `dir` (not following symlinks) and sums what ext4 will need.
pub fn measure(dir: &Path) -> Result<TreeSize> {
    let mut size = TreeSize::default();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        size.inodes += 1;
        size.data_bytes += 4096;
        for ent in fs::read_dir(&d).map_err(Error::io("read_dir", &d))? {
            let ent = ent.map_err(Error::io("read_dir", &d))?;
            let p = ent.path();
            let m = fs::symlink_metadata(&p).map_err(Error::io("stat", &p))?;
            if m.is_dir() {
                stack.push(p);
                continue;
            }
            if m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            size.inodes += 1;
            if m.file_type().is_symlink() {
                if m.len() > 60 {
                    size.data_bytes += 4096;
                }
            } else {
                size.data_bytes += round_up(m.len(), 4096);
            }
        }
    }
    Ok(size)
}

/// Options for [`make_ext4`].
#[derive(Debug, Clone, Default)]
pub struct Ext4Options {
    /// Image size in bytes; `None` computes content plus headroom.
    pub size: Option<u64>,
    /// Filesystem label (`-L`, at most 16 bytes).
    pub label: Option<String>,
    /// No journal (`-O ^has_journal`): for a work image, which a failed build throws away and
    /// which is journalled when it becomes an output ([`Checked::add_journal`]). Its writes
    /// skip the journal, and the image phase has none to remove before shrinking.
    pub without_journal: bool,
}

/// What [`make_ext4`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Image {
    /// The image file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// Builds an ext4 image at `out` from the tree `dir`, replaying `side` (owners, modes, device
/// nodes, xattrs) under `fakeroot` when it is not empty. The result is checked with
/// `e2fsck -fn`.
pub fn make_ext4(
    dir: &Path,
    out: &Path,
    side: &SideTable,
    opts: &Ext4Options,
) -> Result<Ext4Image> {
    let tree = measure(dir)?;
    let min = tree.min_image_bytes();
    let size = match opts.size {
        Some(s) if s < min => {
            return Err(Error::TooSmall {
                requested: s,
                needed: min,
            });
        }
        Some(s) => s,
        None => tree.default_image_bytes(),
    };
    let _ = fs::remove_file(out);
    let f = fs::File::create(out).map_err(Error::io("create", out))?;
    f.set_len(size).map_err(Error::io("truncate", out))?;
    drop(f);

    let mut mkfs: Vec<String> = vec![
        "mkfs.ext4".into(),
        "-q".into(),
        "-F".into(),
        "-b".into(),
        "4096".into(),
        "-m".into(),
        "0".into(),
        "-N".into(),
        inodes_for(&tree, size).to_string(),
        "-E".into(),
        "root_owner=0:0".into(),
    ];
    if opts.without_journal {
        mkfs.push("-O".into());
        mkfs.push("^has_journal".into());
    }
    if let Some(l) = &opts.label {
        mkfs.push("-L".into());
        mkfs.push(l.chars().take(16).collect());
    }
    mkfs.push("-d".into());
    mkfs.push(path_str(dir)?);
    mkfs.push(path_str(out)?);
    info!(dir = %dir.display(), image = %out.display(), size, inodes = tree.inodes, "making ext4");

    let result = if side.is_empty() {
        run(&mkfs[0], mkfs[1..].iter().map(String::as_str))
    } else {
        // Replay owners/modes/nodes and run mkfs in one fakeroot session (xattrs are written
        // into the image afterwards with debugfs: fakeroot keeps its own xattr table).
        let script_path = out.with_extension("fakeroot.sh");
        let mut script = replay_script(dir, side)?;
        script.push_str("exec ");
        script.push_str(
            &mkfs
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        );
        script.push('\n');
        let mut sf = fs::File::create(&script_path).map_err(Error::io("create", &script_path))?;
        sf.write_all(script.as_bytes())
            .map_err(Error::io("write", &script_path))?;
        drop(sf);
        let r = run(
            "fakeroot",
            ["--", "sh", "-e", path_str(&script_path)?.as_str()],
        );
        let _ = fs::remove_file(&script_path);
        r
    };
    if let Err(e) = result {
        let _ = fs::remove_file(out);
        if let Error::Tool { stderr, .. } = &e
            && (stderr.contains("No space left") || stderr.contains("Could not allocate"))
        {
            return Err(Error::TooSmall {
                requested: size,
                needed: size + size / 4,
            });
        }
        return Err(e);
    }
    if let Err(e) = set_xattrs(out, side).and_then(|()| fsck(out)) {
        let _ = fs::remove_file(out);
        return Err(e);
    }
    Ok(Ext4Image {
        path: out.to_path_buf(),
        size,
    })
}

/// The shell commands that give the tree its recorded owners, modes and nodes under fakeroot.
fn replay_script(dir: &Path, side: &SideTable) -> Result<String> {
    let mut s =
        String::from("# generated by firebuild-rootfs: replay owners/modes under fakeroot\n");
    // Children before parents for chmod so a 0555 dir does not block its children.
    for (rel, meta) in side.entries.iter().rev() {
        let p = shell_quote(&path_str(&dir.join(rel))?);
        match meta.node {
            NodeKind::Char(ma, mi) => s.push_str(&format!("rm -f {p}; mknod {p} c {ma} {mi}\n")),
            NodeKind::Block(ma, mi) => s.push_str(&format!("rm -f {p}; mknod {p} b {ma} {mi}\n")),
            NodeKind::Plain => {}
        }
        s.push_str(&format!("chown -h {}:{} {p}\n", meta.uid, meta.gid));
        if !meta.symlink {
            s.push_str(&format!("chmod {:o} {p}\n", meta.mode));
        }
    }
    Ok(s)
}

/// Longest line of the `debugfs -f` script, newline included. debugfs reads the script with
/// `fgets` into a `BUFSIZ` buffer (8192 bytes with glibc, 1024 with musl; very old releases
/// used 256): a longer line would be cut and its tail run as a second command.
const MAX_SCRIPT_LINE: usize = 1000;
/// Longest xattr name Linux accepts (`XATTR_NAME_MAX`).
const MAX_XATTR_NAME: usize = 255;

/// Writes the side table's xattrs into the image with `debugfs -w` (`ea_set -f`), which needs
/// no privilege on an image file.
///
/// The names come from base image layers, so the script is built so that no name can add a
/// command: each value goes through a file named by a counter (`ea_set -f 7`, the script run
/// from the directory holding the files), and each path and xattr name must pass
/// [`ea_set_line`]'s byte allow-list, which leaves nothing debugfs's line reader (`fgets`, `#`
/// comments, `\r`) or its parser (`ss_parse`: blanks split words, `"` quotes, `""` is a quote,
/// a leading `-` is an option) treats specially. A path or name outside it fails the image
/// with [`Error::Xattr`] naming both; nothing is written.
fn set_xattrs(image: &Path, side: &SideTable) -> Result<()> {
    let with: Vec<_> = side
        .entries
        .iter()
        .filter(|(_, m)| !m.xattrs.is_empty())
        .collect();
    if with.is_empty() {
        return Ok(());
    }
    let mut script = String::new();
    let mut values = Vec::new();
    for (rel, meta) in with {
        let path = Path::new("/").join(rel);
        for (name, value) in &meta.xattrs {
            script.push_str(&ea_set_line(values.len(), &path, name)?);
            values.push(value.as_slice());
        }
    }
    let image_abs = std::path::absolute(image).map_err(Error::io("resolve", image))?;
    let tmp = image.with_extension("xattrs");
    fs::create_dir_all(&tmp).map_err(Error::io("create", &tmp))?;
    let r = write_and_run_debugfs(&tmp, &script, &values, &image_abs, DebugfsRun::EA_SET);
    let _ = fs::remove_dir_all(&tmp);
    r
}

/// The names in the root directory of the ext4 `image` (`debugfs -R "ls -p /"`), without `.`
/// and `..`.
pub fn root_names(image: &Path) -> Result<Vec<String>> {
    let out = run("debugfs", ["-R", "ls -p /", path_str(image)?.as_str()])?;
    // `ls -p` lines: `/inode/mode/uid/gid/name/size/`.
    Ok(out
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .map(str::to_owned)
        .collect())
}

/// Removes the empty directories `dirs` from the ext4 `image` in one `debugfs -w` run (`rmdir`
/// each); a missing or non-empty one is an error. Each must be an absolute path of
/// `[A-Za-z0-9._-]` names, which debugfs reads as one word.
pub fn remove_empty_dirs(image: &Path, dirs: &[&str]) -> Result<()> {
    if dirs.is_empty() {
        return Ok(());
    }
    let plain = |d: &str| {
        d.starts_with('/')
            && d[1..].split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            })
    };
    if let Some(bad) = dirs.iter().find(|d| !plain(d)) {
        return Err(Error::Io {
            op: "remove with debugfs (an absolute path of [A-Za-z0-9._-] names only)",
            path: PathBuf::from(bad),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    let script: String = dirs.iter().map(|d| format!("rmdir {d}\n")).collect();
    let label = format!("({})", script.trim_end().replace('\n', "; "));
    let image_abs = std::path::absolute(image).map_err(Error::io("resolve", image))?;
    let tmp = image.with_extension("rmdir");
    fs::create_dir_all(&tmp).map_err(Error::io("create", &tmp))?;
    let run = DebugfsRun {
        label: &label,
        complaint: "rmdir:",
    };
    let r = write_and_run_debugfs(&tmp, &script, &[], &image_abs, run);
    let _ = fs::remove_dir_all(&tmp);
    r
}

/// One `ea_set` command line for the value file `n`, or [`Error::Xattr`] if `path` or `name`
/// has a byte outside the allow-list: path bytes `[A-Za-z0-9._+@:,=~%/-]`, absolute, no `.`
/// or `..` component; name bytes `[A-Za-z0-9._-]`, starting with a letter and holding a
/// `.` (`security.capability`); the whole line under [`MAX_SCRIPT_LINE`]. None of those bytes
/// is a blank, a quote, a line end or a comment mark to debugfs, so the line is always the
/// five words `ea_set -f N PATH NAME`.
fn ea_set_line(n: usize, path: &Path, name: &str) -> Result<String> {
    use std::os::unix::ffi::OsStrExt;
    use std::path::Component;
    let refuse = |reason| Error::Xattr {
        path: escaped(&format!("{path:?}")),
        name: escaped(&format!("{name:?}")),
        reason,
    };
    let path_ok = |b: &u8| b.is_ascii_alphanumeric() || b"._+@:,=~%/-".contains(b);
    let p = path.as_os_str().as_bytes();
    if !p.starts_with(b"/")
        || path
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(refuse("the path is not absolute and normalised"));
    }
    if !p.iter().all(path_ok) {
        return Err(refuse("the path has a byte outside [A-Za-z0-9._+@:,=~%/-]"));
    }
    let name_ok = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
    if name.len() > MAX_XATTR_NAME
        || !name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        || !name.contains('.')
        || !name.bytes().all(name_ok)
    {
        return Err(refuse(
            "the name is not namespace.name in [A-Za-z0-9._-] of at most 255 bytes",
        ));
    }
    let line = format!("ea_set -f {n} {} {name}\n", path.display());
    if line.len() > MAX_SCRIPT_LINE {
        return Err(refuse(
            "the path and name are too long for one debugfs command line",
        ));
    }
    Ok(line)
}

/// `s` cut to 256 bytes on a character boundary (`...` marks the cut).
fn escaped(s: &str) -> String {
    const LIMIT: usize = 256;
    match s.char_indices().find(|(i, c)| i + c.len_utf8() > LIMIT) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// How a `debugfs -w -f` script's run is named in errors, and how its commands complain.
#[derive(Clone, Copy)]
struct DebugfsRun<'a> {
    /// Shown after `debugfs -w` in an error.
    label: &'a str,
    /// What starts a failed command's line on standard error (`ea_set:`).
    complaint: &'a str,
}

impl DebugfsRun<'static> {
    const EA_SET: Self = Self {
        label: "-f cmds",
        complaint: "ea_set:",
    };
}

/// Writes value `i` to `dir/i` and `script` to `dir/cmds`, then runs `debugfs -w -f cmds` on
/// `image` from `dir`. debugfs exits 0 when a command fails, so a complaint (`ea_set:`...) on
/// its standard error is a failure too.
fn write_and_run_debugfs(
    dir: &Path,
    script: &str,
    values: &[&[u8]],
    image: &Path,
    run: DebugfsRun<'_>,
) -> Result<()> {
    for (i, v) in values.iter().enumerate() {
        let f = dir.join(i.to_string());
        fs::write(&f, v).map_err(Error::io("write", &f))?;
    }
    let cmds = dir.join("cmds");
    fs::write(&cmds, script).map_err(Error::io("write", &cmds))?;
    let tool = "debugfs";
    debug!(tool, image = %image.display(), commands = script.lines().count(), "running");
    let out = Command::new(tool)
        .current_dir(dir)
        .arg("-w")
        .arg("-f")
        .arg("cmds")
        .arg(image)
        .output()
        .map_err(|source| Error::Spawn {
            tool: tool.to_owned(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failed: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(run.complaint))
        .take(8)
        .collect();
    if !out.status.success() || !failed.is_empty() {
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        let shown = if failed.is_empty() {
            tail.into_iter().rev().collect()
        } else {
            failed
        };
        return Err(Error::Tool {
            tool: format!("{tool} -w {} {}", run.label, image.display()),
            status: out.status.to_string(),
            stderr: shown.join(" | "),
        });
    }
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str().map(str::to_owned).ok_or_else(|| Error::Io {
        op: "use non-UTF-8 path",
        path: p.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

fn run<'a>(tool: &str, args: impl IntoIterator<Item = &'a str>) -> Result<String> {
    let args: Vec<&str> = args.into_iter().collect();
    debug!(tool, ?args, "running");
    let out = Command::new(tool)
        .args(&args)
        .output()
        .map_err(|source| Error::Spawn {
            tool: tool.to_owned(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let text = format!("{stderr}{stdout}");
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        return Err(Error::Tool {
            tool: format!("{tool} {}", args.last().copied().unwrap_or("")),
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `e2fsck -fn`: a read-only full check; any problem is an error.
pub fn fsck(image: &Path) -> Result<()> {
    run("e2fsck", ["-fn", path_str(image)?.as_str()]).map(|_| ())
}

/// What the image phase reads from an ext4 superblock, in the file itself (no `dumpe2fs` run:
/// ~5 ms each, four to six of them per image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// `s_blocks_count` (with `s_blocks_count_hi` when the file system is 64-bit).
    pub blocks: u64,
    /// `1024 << s_log_block_size`.
    pub block_size: u64,
    /// Whether `s_feature_compat` has `has_journal`.
    pub has_journal: bool,
}

impl Superblock {
    /// Reads the primary superblock (1024 bytes at offset 1024) of the ext4 `image`.
    pub fn read(image: &Path) -> Result<Self> {
        use std::os::unix::fs::FileExt as _;
        let mut sb = [0u8; 1024];
        fs::File::open(image)
            .and_then(|f| f.read_exact_at(&mut sb, 1024))
            .map_err(Error::io("read the superblock of", image))?;
        Self::parse(&sb).ok_or_else(|| Error::Image {
            what: image.display().to_string(),
            reason: "no ext4 superblock (magic 0xEF53) at offset 1024".into(),
        })
    }

    /// The file system's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * self.block_size
    }

    fn parse(sb: &[u8; 1024]) -> Option<Self> {
        let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
        if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
            return None;
        }
        let log = u32_at(0x18);
        let block_size = 1024u64.checked_shl(log).filter(|_| log <= 6)?;
        let is_64bit = u32_at(0x60) & 0x80 != 0;
        let hi = if is_64bit {
            u64::from(u32_at(0x150))
        } else {
            0
        };
        Some(Self {
            blocks: (hi << 32) | u64::from(u32_at(0x04)),
            block_size,
            has_journal: u32_at(0x5C) & 0x4 != 0,
        })
    }
}

fn fs_bytes(image: &Path) -> Result<u64> {
    Superblock::read(image).map(|sb| sb.bytes())
}

/// Shrinks the filesystem to its minimum (`resize2fs -M`) and truncates the file to match.
/// Returns the new size.
pub fn shrink(image: &Path) -> Result<u64> {
    run("e2fsck", ["-fy", path_str(image)?.as_str()])?;
    let checked = Checked(image);
    let bytes = checked.shrink()?;
    checked.verify()?;
    Ok(bytes)
}

/// An image whose file system a full `e2fsck` found clean, and that nothing has mounted since:
/// the state in which a sequence of offline edits (journal, shrink, grow) needs no check between
/// them, so each `resize2fs` runs with `-f` instead of after an `e2fsck -fy` of its own. (It
/// refuses otherwise because the guest's mount left `s_mtime` after `s_lastcheck`, and a
/// read-only `e2fsck -fn` does not update the latter.) [`Checked::verify`] checks the result.
#[derive(Debug, Clone, Copy)]
pub struct Checked<'a>(&'a Path);

impl<'a> Checked<'a> {
    /// Runs `e2fsck -fn`: any problem is an error, nothing is repaired.
    pub fn new(image: &'a Path) -> Result<Self> {
        fsck(image)?;
        Ok(Self(image))
    }

    /// `resize2fs -M`, then truncates the file to the file system. Returns the new size.
    pub fn shrink(&self) -> Result<u64> {
        let p = path_str(self.0)?;
        run("resize2fs", ["-f", "-M", p.as_str()])?;
        let bytes = fs_bytes(self.0)?;
        set_file_len(self.0, bytes)?;
        Ok(bytes)
    }

    /// Grows the file and its file system to `size` bytes (nothing when already that big).
    /// Returns the file system's size, which can be a little under `size` when the last block
    /// group would be too small to hold its own metadata; the file is `size` bytes.
    pub fn grow(&self, size: u64) -> Result<u64> {
        let cur = fs::metadata(self.0)
            .map_err(Error::io("stat", self.0))?
            .len();
        if size <= cur {
            return Ok(cur);
        }
        set_file_len(self.0, size)?;
        run("resize2fs", ["-f", path_str(self.0)?.as_str()])?;
        fs_bytes(self.0)
    }

    /// Removes the journal (`tune2fs -O ^has_journal`): before [`Checked::shrink`], so the
    /// minimum is the content's, not the content plus a journal sized for a larger image.
    /// Nothing to do (no run) when the image has none: a work image made without one.
    pub fn drop_journal(&self) -> Result<()> {
        if !Superblock::read(self.0)?.has_journal {
            return Ok(());
        }
        run(
            "tune2fs",
            ["-O", "^has_journal", path_str(self.0)?.as_str()],
        )
        .map(|_| ())
    }

    /// Adds a journal sized for an image of `size` bytes ([`journal_size`]). Returns its size.
    pub fn add_journal(&self, size: u64) -> Result<u64> {
        let bytes = journal_for(size);
        let arg = format!("size={}", bytes / MIB);
        run("tune2fs", ["-J", arg.as_str(), path_str(self.0)?.as_str()])?;
        Ok(bytes)
    }

    /// The edits' result, checked again in full (`e2fsck -fn`).
    pub fn verify(self) -> Result<()> {
        fsck(self.0)
    }
}

/// Truncates or extends the image file to `bytes`.
fn set_file_len(image: &Path, bytes: u64) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(Error::io("open", image))?
        .set_len(bytes)
        .map_err(Error::io("truncate", image))
}

/// Removes the journal (`tune2fs -O ^has_journal`): before [`shrink`], so the minimum is the
/// content's, not the content plus a journal sized for a larger work image.
pub fn drop_journal(image: &Path) -> Result<()> {
    Checked(image).drop_journal()
}

/// Adds a journal sized for an image of `size` bytes (4 MiB under 128 MiB, 16 MiB under
/// 1 GiB, 64 MiB above: [`TreeSize::min_image_bytes`]'s rule). Returns its size in bytes.
pub fn add_journal(image: &Path, size: u64) -> Result<u64> {
    let checked = Checked(image);
    let bytes = checked.add_journal(size)?;
    checked.verify()?;
    Ok(bytes)
}

/// The journal [`add_journal`] gives an image of `size` bytes.
pub fn journal_size(size: u64) -> u64 {
    journal_for(size)
}

/// Grows the image file and its filesystem to `size` bytes (no-op when already that big).
/// Returns the filesystem's new size, which can be a little under `size` when the last block
/// group would be too small to hold its own metadata; the file is `size` bytes.
pub fn grow(image: &Path, size: u64) -> Result<u64> {
    let cur = fs::metadata(image).map_err(Error::io("stat", image))?.len();
    if size <= cur {
        return Ok(cur);
    }
    run("e2fsck", ["-fy", path_str(image)?.as_str()])?;
    let checked = Checked(image);
    let bytes = checked.grow(size)?;
    checked.verify()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    /// debugfs's reading of a `-f` script, from e2fsprogs' `source_file` and `ss_parse`: lines
    /// by `fgets` into a buffer of `bufsiz` (a longer line is cut in two), `#` lines skipped,
    /// `\n` and `\r` end the line, leading blanks skipped, `!` runs a shell, then words split
    /// on blanks with `"` quoting and `""` a quote inside quotes. `None` on unbalanced quotes.
    fn debugfs_commands(script: &[u8], bufsiz: usize) -> Vec<Option<Vec<Vec<u8>>>> {
        let mut lines = Vec::new();
        let mut rest = script;
        while !rest.is_empty() {
            let take = match rest.iter().position(|&b| b == b'\n') {
                Some(i) if i < bufsiz - 1 => i + 1,
                _ => rest.len().min(bufsiz - 1),
            };
            lines.push(&rest[..take]);
            rest = &rest[take..];
        }
        let mut out = Vec::new();
        for line in lines {
            if line.first() == Some(&b'#') {
                continue;
            }
            let end = line
                .iter()
                .position(|&b| b == b'\n' || b == b'\r' || b == 0)
                .unwrap_or(line.len());
            let mut l = &line[..end];
            while let Some((&(b' ' | b'\t'), tail)) = l.split_first() {
                l = tail;
            }
            if l.first() == Some(&b'!') {
                out.push(Some(vec![b"!shell".to_vec()]));
                continue;
            }
            out.push(ss_parse(l));
        }
        out
    }

    fn ss_parse(l: &[u8]) -> Option<Vec<Vec<u8>>> {
        let mut words = Vec::new();
        let mut cur: Option<Vec<u8>> = None;
        let mut quoted = false;
        let mut i = 0;
        loop {
            let c = l.get(i).copied();
            if quoted {
                match c {
                    None => return None,
                    Some(b'"') if l.get(i + 1) == Some(&b'"') => {
                        cur.get_or_insert_with(Vec::new).push(b'"');
                        i += 2;
                    }
                    Some(b'"') => {
                        quoted = false;
                        i += 1;
                    }
                    Some(c) => {
                        cur.get_or_insert_with(Vec::new).push(c);
                        i += 1;
                    }
                }
                continue;
            }
            match (c, cur.is_some()) {
                (None, _) => {
                    words.extend(cur.take());
                    return Some(words);
                }
                (Some(b' ' | b'\t'), _) => {
                    words.extend(cur.take());
                    i += 1;
                }
                (Some(b'"'), _) => {
                    cur.get_or_insert_with(Vec::new);
                    quoted = true;
                    i += 1;
                }
                (Some(c), _) => {
                    cur.get_or_insert_with(Vec::new).push(c);
                    i += 1;
                }
            }
        }
    }

    /// What a line must be: one command, exactly `ea_set -f N PATH NAME`, no word but `-f`
    /// starting with `-`, under every `fgets` buffer debugfs is built with.
    fn assert_one_ea_set(line: &str, n: usize, path: &[u8], name: &str) {
        assert!(line.len() <= MAX_SCRIPT_LINE, "{} bytes", line.len());
        assert_eq!(line.bytes().filter(|&b| b == b'\n').count(), 1, "{line:?}");
        for bufsiz in [1024, 8192] {
            let cmds = debugfs_commands(line.as_bytes(), bufsiz);
            let want: Vec<Vec<u8>> = vec![
                b"ea_set".to_vec(),
                b"-f".to_vec(),
                n.to_string().into_bytes(),
                path.to_vec(),
                name.as_bytes().to_vec(),
            ];
            assert_eq!(cmds, vec![Some(want)], "{line:?}");
        }
    }

    #[test]
    fn file_capability_on_ping_is_one_ea_set() {
        let line = ea_set_line(0, Path::new("/usr/bin/ping"), "security.capability").unwrap();
        assert_eq!(line, "ea_set -f 0 /usr/bin/ping security.capability\n");
        assert_one_ea_set(&line, 0, b"/usr/bin/ping", "security.capability");
        let rel = Path::new("/").join("usr/lib/x86_64-linux-gnu/gstreamer1.0/gst-ptp-helper");
        let line = ea_set_line(12, &rel, "user.mime_type").unwrap();
        assert_one_ea_set(&line, 12, rel.as_os_str().as_bytes(), "user.mime_type");
    }

    #[test]
    fn hostile_names_are_refused_naming_the_path() {
        for (path, name) in [
            ("/usr/bin/ping", "security.capability\nwrite /etc/shadow x"),
            ("/usr/bin/ping\nrdump / /tmp/x", "security.capability"),
            ("/a b", "user.x"),
            ("/a\"b", "user.x"),
            ("/a;b", "user.x"),
            ("/a#b", "user.x"),
            ("/a\\b", "user.x"),
            ("/a/../b", "user.x"),
            ("/ok", "-f/etc/shadow"),
            ("/ok", "user.x\r"),
            ("/ok", "user x"),
            ("/ok", "nodot"),
        ] {
            let e = ea_set_line(0, Path::new(path), name).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, Error::Xattr { .. }), "{msg}");
            assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
            assert!(msg.contains(&format!("{path:?}")), "{msg}");
        }
        let non_utf8 = Path::new(OsStr::from_bytes(b"/usr/bin/\xffping"));
        let msg = ea_set_line(0, non_utf8, "security.capability")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\\xFF"), "{msg}");
        let long = format!("/{}", "a/".repeat(600));
        assert!(ea_set_line(0, Path::new(&long), "user.x").is_err());
    }

    #[test]
    fn a_refused_name_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img.ext4");
        let mut side = SideTable::default();
        let mut xattrs = BTreeMap::new();
        xattrs.insert("user.a\nwrite /etc/passwd p".to_owned(), b"v".to_vec());
        side.entries.insert(
            "f".into(),
            crate::layer::FileMeta {
                uid: 0,
                gid: 0,
                mode: 0o644,
                symlink: false,
                node: NodeKind::Plain,
                xattrs,
            },
        );
        assert!(matches!(
            set_xattrs(&image, &side),
            Err(Error::Xattr { .. })
        ));
        assert!(!image.with_extension("xattrs").exists());
    }

    fn hostile_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            any::<u8>(),
            prop::sample::select(b"\n\r\"' \t\\#;!-<>\0./".to_vec()),
            prop::sample::select(b"abcz09._-/".to_vec()),
        ]
    }

    fn hostile_char() -> impl Strategy<Value = char> {
        prop_oneof![
            any::<char>(),
            prop::sample::select(vec![
                '\n', '\r', '"', '\'', ' ', '\t', '\\', '#', ';', '!', '-', '\0', 'é'
            ]),
            prop::sample::select(vec!['a', 'z', '0', '.', '_', '-']),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// No path or name, however hostile (line ends, quotes, blanks, non-UTF-8 bytes), makes
        /// more than one debugfs command: either it is refused or the line parses back to
        /// exactly `ea_set -f N PATH NAME`.
        #[test]
        fn no_name_adds_a_command(
            n in 0usize..100_000,
            path in prop::collection::vec(hostile_byte(), 0..80),
            name in prop::collection::vec(hostile_char(), 0..40),
        ) {
            let mut p = b"/".to_vec();
            p.extend_from_slice(&path);
            let path = Path::new(OsStr::from_bytes(&p));
            let name: String = name.into_iter().collect();
            match ea_set_line(n, path, &name) {
                Ok(line) => assert_one_ea_set(&line, n, &p, &name),
                Err(e) => {
                    let is_xattr = matches!(e, Error::Xattr { .. });
                    prop_assert!(is_xattr, "{e}");
                    let msg = e.to_string();
                    prop_assert!(!msg.contains('\n') && !msg.contains('\r'));
                }
            }
        }

        /// Realistic names are kept.
        #[test]
        fn plain_names_are_kept(
            n in 0usize..100_000,
            dirs in prop::collection::vec("[a-z0-9][a-z0-9._+-]{0,20}", 1..8),
            name in "(user|security|trusted)\\.[a-z][a-z0-9_.-]{0,30}",
        ) {
            let p = format!("/{}", dirs.join("/"));
            let line = ea_set_line(n, Path::new(&p), &name);
            prop_assert!(line.is_ok(), "{p} {name}: {line:?}");
            if let Ok(line) = line {
                assert_one_ea_set(&line, n, p.as_bytes(), &name);
            }
        }
    }

    #[test]
    fn sizes_follow_the_formula() {
        let t = TreeSize {
            data_bytes: 100 * MIB,
            inodes: 1000,
        };
        let needed = 100 * MIB + 256_000 + 4 * MIB;
        assert_eq!(t.min_image_bytes(), round_up(needed + 4 * MIB, MIB));
        assert_eq!(
            t.default_image_bytes(),
            round_up(needed + 4 * MIB + 64 * MIB, MIB)
        );
        assert_eq!(t.inode_reservation(), 4096);
        assert_eq!(inodes_for(&t, 64 * MIB), 4096);
        assert_eq!(inodes_for(&t, 4096 * MIB), 262_144);
    }

    #[test]
    fn replay_script_quotes_and_orders() {
        let mut side = SideTable::default();
        let meta = |mode, node| crate::layer::FileMeta {
            uid: 1000,
            gid: 1000,
            mode,
            symlink: false,
            node,
            xattrs: BTreeMap::new(),
        };
        side.entries
            .insert("d".into(), meta(0o555, NodeKind::Plain));
        side.entries
            .insert("d/it's".into(), meta(0o4755, NodeKind::Plain));
        side.entries
            .insert("dev/null".into(), meta(0o666, NodeKind::Char(1, 3)));
        let s = replay_script(Path::new("/r"), &side).unwrap();
        assert!(s.contains("chmod 4755 '/r/d/it'\\''s'"), "{s}");
        assert!(s.contains("mknod '/r/dev/null' c 1 3"), "{s}");
        let child = s.find("/r/d/it").unwrap();
        let parent = s.find("chmod 555 '/r/d'").unwrap();
        assert!(
            child < parent,
            "children must be replayed before their parent"
        );
    }
}
