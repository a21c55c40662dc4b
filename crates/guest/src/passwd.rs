//! Users and groups: `/etc/passwd`, `/etc/group`, `/etc/shadow` (and `/etc/gshadow` when it
//! exists) read and written directly, so a base image needs no `useradd`.
//!
//! [`UserDb::load`] reads the files under a guest root (missing files are empty), bounded to
//! [`MAX_FILE`] bytes and [`MAX_LINE`] bytes per line; a malformed line is an error naming
//! `file:line`. Lines this module does not manage (comments, blank lines, NIS `+`/`-` entries) are
//! kept verbatim. [`UserDb::resolve`] turns a Docker `USER` spec into an [`Identity`] the way
//! runc does; [`UserDb::add_group`] and [`UserDb::add_user`] edit the database, and
//! [`UserDb::save`] writes every changed file atomically, keeping its mode and owner.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::paths::{self, FileMeta};

/// Largest database file read (4 MiB).
pub const MAX_FILE: u64 = 4 << 20;
/// Longest accepted line.
pub const MAX_LINE: usize = 8192;
/// Highest id accepted in a spec or file (Docker rejects ids past `i32::MAX`).
pub const MAX_ID: u32 = i32::MAX as u32;

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password field (`x` when the hash lives in `/etc/shadow`).
    pub passwd: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Comment field.
    pub gecos: String,
    /// Home directory (guest path).
    pub home: String,
    /// Login shell.
    pub shell: String,
}

/// One `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Password field.
    pub passwd: String,
    /// Group id.
    pub gid: u32,
    /// Member user names.
    pub members: Vec<String>,
}

/// One `/etc/shadow` entry: the name, the hash and the remaining fields verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// Login name.
    pub name: String,
    /// Password hash, `!`/`*` for locked.
    pub hash: String,
    /// The seven fields after the hash, joined with `:` as read.
    pub rest: String,
}

/// A line of a database file: a parsed entry or a line kept as is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line<T> {
    Entry(T),
    Raw(String),
}

/// What a resolved `USER` runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (groups listing the user by name), without `gid`.
    pub groups: Vec<u32>,
    /// The user's name when the user exists in `/etc/passwd`.
    pub name: Option<String>,
    /// Home directory (`/` for an id without an entry, as Docker does).
    pub home: String,
    /// Login shell, if known.
    pub shell: Option<String>,
}

impl Identity {
    /// root (`0:0`, home `/root`).
    pub fn root() -> Self {
        Identity {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            name: Some("root".into()),
            home: "/root".into(),
            shell: None,
        }
    }
}

/// The password of a new user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Password {
    /// Locked (`!`): no password login.
    #[default]
    Locked,
    /// A crypt(3) hash written as is (`$6$...`, `$y$...`).
    Hash(String),
}

/// A user to create with [`UserDb::add_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// Login name.
    pub name: String,
    /// Wanted uid; the first free one from 1000 (or 100 for a system user) when absent.
    pub uid: Option<u32>,
    /// Primary group (name or id); when absent a group named like the user is created
    /// (gid = uid when free).
    pub group: Option<String>,
    /// Supplementary groups (names or ids); each must exist.
    pub groups: Vec<String>,
    /// Comment.
    pub gecos: String,
    /// Home directory; `/home/<name>` when absent.
    pub home: Option<String>,
    /// Shell; `/bin/sh` when absent.
    pub shell: Option<String>,
    /// Password.
    pub password: Password,
    /// Create the home directory (with `/etc/skel` copied) if it does not exist.
    pub create_home: bool,
    /// Mode of a created home directory.
    pub home_mode: u32,
    /// A system user (ids from 100 to 999).
    pub system: bool,
}

impl NewUser {
    /// A regular user with defaults: next free uid, own group, `/home/<name>`, `/bin/sh`,
    /// locked password, home created 0755.
    pub fn new(name: impl Into<String>) -> Self {
        NewUser {
            name: name.into(),
            uid: None,
            group: None,
            groups: Vec::new(),
            gecos: String::new(),
            home: None,
            shell: None,
            password: Password::Locked,
            create_home: true,
            home_mode: 0o755,
            system: false,
        }
    }
}

#[derive(Debug)]
struct DbFile<T> {
    lines: Vec<Line<T>>,
    exists: bool,
    dirty: bool,
}

impl<T> Default for DbFile<T> {
    fn default() -> Self {
        DbFile {
            lines: Vec::new(),
            exists: false,
            dirty: false,
        }
    }
}

impl<T> DbFile<T> {
    fn entries(&self) -> impl Iterator<Item = &T> {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry(e) => Some(e),
            Line::Raw(_) => None,
        })
    }
    fn entries_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.lines.iter_mut().filter_map(|l| match l {
            Line::Entry(e) => Some(e),
            Line::Raw(_) => None,
        })
    }
    fn push(&mut self, e: T) {
        self.lines.push(Line::Entry(e));
        self.dirty = true;
    }
}

/// The user and group database of one guest root.
#[derive(Debug)]
pub struct UserDb {
    root: PathBuf,
    passwd: DbFile<User>,
    group: DbFile<Group>,
    shadow: DbFile<Shadow>,
    gshadow: DbFile<Vec<String>>,
    sync: bool,
}

impl UserDb {
    /// Reads `/etc/passwd`, `/etc/group`, `/etc/shadow` and `/etc/gshadow` under `root`.
    pub fn load(root: &Path) -> Result<Self> {
        Ok(UserDb {
            root: root.to_path_buf(),
            passwd: load(root, "/etc/passwd", 7, parse_user)?,
            group: load(root, "/etc/group", 4, parse_group)?,
            shadow: load(root, "/etc/shadow", 9, parse_shadow)?,
            gshadow: load(root, "/etc/gshadow", 4, |f| {
                Ok(f.iter().map(|s| (*s).to_owned()).collect())
            })?,
            sync: true,
        })
    }

    /// Whether [`UserDb::save`] fsyncs each file (default: yes). A caller that syncs the file
    /// system itself before recording the change (the configuration journal) turns it off.
    pub fn set_sync(&mut self, yes: bool) {
        self.sync = yes;
    }

    /// All users in file order.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.passwd.entries()
    }

    /// All groups in file order.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.group.entries()
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users().find(|u| u.name == name)
    }

    /// A user by id (the first entry with it).
    pub fn user_by_uid(&self, uid: u32) -> Option<&User> {
        self.users().find(|u| u.uid == uid)
    }

    /// A group by name.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups().find(|g| g.name == name)
    }

    /// The shadow entry of a user.
    pub fn shadow(&self, name: &str) -> Option<&Shadow> {
        self.shadow.entries().find(|s| s.name == name)
    }

    /// Resolves a group given by name or id; a numeric id without an entry is accepted.
    pub fn resolve_group(&self, spec: &str) -> Result<u32> {
        if let Some(g) = self.group(spec) {
            return Ok(g.gid);
        }
        match parse_id(spec) {
            Some(id) => Ok(id),
            None => Err(Error::UnknownGroup(spec.to_owned())),
        }
    }

    /// Resolves a Docker `USER` spec (`name`, `uid`, `name:group`, `uid:gid`) as runc does:
    /// a name must exist; an id without an entry runs as that id with gid 0 (or the given
    /// group) and home `/`; supplementary groups are the groups listing the user's name, and
    /// only when no group was given explicitly. An empty spec is root.
    pub fn resolve(&self, spec: &str) -> Result<Identity> {
        let (user_part, group_part) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let mut id = if user_part.is_empty() {
            self.user_by_uid(0).map_or_else(Identity::root, identity_of)
        } else if let Some(u) = self.user(user_part) {
            identity_of(u)
        } else if let Some(uid) = parse_id(user_part) {
            match self.user_by_uid(uid) {
                Some(u) => identity_of(u),
                None => Identity {
                    uid,
                    gid: 0,
                    groups: Vec::new(),
                    name: None,
                    home: "/".into(),
                    shell: None,
                },
            }
        } else {
            return Err(Error::UnknownUser(user_part.to_owned()));
        };
        match group_part {
            Some(g) if !g.is_empty() => id.gid = self.resolve_group(g)?,
            _ => {
                if let Some(name) = &id.name {
                    let mut groups: Vec<u32> = self
                        .groups()
                        .filter(|g| g.members.iter().any(|m| m == name))
                        .map(|g| g.gid)
                        .filter(|&g| g != id.gid)
                        .collect();
                    groups.sort_unstable();
                    groups.dedup();
                    id.groups = groups;
                }
            }
        }
        Ok(id)
    }

    /// Creates a group; returns its gid. An existing group of the same name is returned as is
    /// when `gid` is `None` or matches, else [`Error::Exists`].
    pub fn add_group(&mut self, name: &str, gid: Option<u32>, system: bool) -> Result<u32> {
        check_name("group name", name)?;
        if let Some(g) = self.group(name) {
            let found = g.gid;
            if gid.is_some_and(|want| want != found) {
                return Err(Error::Exists {
                    what: "group",
                    name: name.to_owned(),
                });
            }
            // A crash between the renames of `save` can leave the group without its gshadow
            // line; asking for the group again completes it.
            self.complete_gshadow(name);
            return Ok(found);
        }
        let gid = match gid {
            Some(g) => check_id("gid", g)?,
            None => {
                let used: Vec<u32> = self.groups().map(|g| g.gid).collect();
                free_id(&used, system).ok_or(Error::IdsExhausted("group"))?
            }
        };
        self.group.push(Group {
            name: name.to_owned(),
            passwd: "x".into(),
            gid,
            members: Vec::new(),
        });
        self.complete_gshadow(name);
        tracing::debug!(group = name, gid, "group added");
        Ok(gid)
    }

    /// The gshadow line of group `name`, added when gshadow exists and has none (a line left
    /// by a crash between the renames of [`UserDb::save`] is kept, not repeated).
    fn complete_gshadow(&mut self, name: &str) {
        if self.gshadow.exists
            && !self
                .gshadow
                .entries()
                .any(|e| e.first().is_some_and(|n| n == name))
        {
            self.gshadow.push(vec![
                name.to_owned(),
                "!".into(),
                String::new(),
                String::new(),
            ]);
        }
    }

    /// Adds `user` to the member list of group `group` (by name).
    pub fn add_member(&mut self, group: &str, user: &str) -> Result<()> {
        let Some(g) = self.group.entries_mut().find(|g| g.name == group) else {
            return Err(Error::UnknownGroup(group.to_owned()));
        };
        if !g.members.iter().any(|m| m == user) {
            g.members.push(user.to_owned());
            self.group.dirty = true;
        }
        Ok(())
    }

    /// Completes an existing user as [`UserDb::add_user`] leaves a new one, after a crash
    /// between the renames of [`UserDb::save`] (one file per database): a primary group missing
    /// from `/etc/group` is created with the user's name and gid (unless that name is taken),
    /// a missing shadow entry is added with `password`. Anything present is left as it is.
    /// Returns whether something was missing.
    pub fn complete_user(&mut self, name: &str, password: &Password, system: bool) -> Result<bool> {
        let Some(user) = self.user(name) else {
            return Err(Error::UnknownUser(name.to_owned()));
        };
        let gid = user.gid;
        let count =
            |db: &Self| db.group.lines.len() + db.shadow.lines.len() + db.gshadow.lines.len();
        let before = count(self);
        let primary = self.groups().find(|g| g.gid == gid).map(|g| g.name.clone());
        match primary {
            // Present: asking for it again completes a missing gshadow line.
            Some(group) => {
                self.add_group(&group, Some(gid), system)?;
            }
            None if self.group(name).is_none() => {
                self.add_group(name, Some(gid), system)?;
            }
            None => {}
        }
        if self.shadow(name).is_none() {
            self.shadow.push(Shadow {
                name: name.to_owned(),
                hash: match password {
                    Password::Locked => "!".to_owned(),
                    Password::Hash(h) => {
                        check_field("password hash", h)?;
                        h.clone()
                    }
                },
                rest: format!("{}:0:99999:7:::", days_since_epoch()),
            });
        }
        let changed = count(self) != before;
        if changed {
            tracing::debug!(user = name, "user completed");
        }
        Ok(changed)
    }

    /// Creates a user (entries in passwd, shadow, group memberships, its own group when no
    /// primary group is given) and, when asked, its home directory with `/etc/skel` copied and
    /// owned by the user. An existing user of the same name is an [`Error::Exists`]. The files
    /// are written by [`UserDb::save`]; the home directory is created at once.
    pub fn add_user(&mut self, new: &NewUser) -> Result<Identity> {
        check_name("user name", &new.name)?;
        if self.user(&new.name).is_some() {
            return Err(Error::Exists {
                what: "user",
                name: new.name.clone(),
            });
        }
        let home = new
            .home
            .clone()
            .unwrap_or_else(|| format!("/home/{}", new.name));
        let shell = new.shell.clone().unwrap_or_else(|| "/bin/sh".into());
        check_field("gecos", &new.gecos)?;
        check_field("home", &home)?;
        check_field("shell", &shell)?;
        if let Password::Hash(h) = &new.password {
            check_field("password hash", h)?;
        }
        let uid = match new.uid {
            Some(u) => check_id("uid", u)?,
            None => {
                let used: Vec<u32> = self.users().map(|u| u.uid).collect();
                free_id(&used, new.system).ok_or(Error::IdsExhausted("user"))?
            }
        };
        let gid = match &new.group {
            Some(g) => self.resolve_group(g)?,
            None => {
                let want = self.groups().all(|g| g.gid != uid).then_some(uid);
                self.add_group(&new.name, want, new.system)?
            }
        };
        let mut extra = Vec::with_capacity(new.groups.len());
        for g in &new.groups {
            let name = match self.group(g) {
                Some(found) => found.name.clone(),
                None => match parse_id(g).and_then(|id| self.groups().find(|x| x.gid == id)) {
                    Some(found) => found.name.clone(),
                    None => return Err(Error::UnknownGroup(g.clone())),
                },
            };
            extra.push(name);
        }
        for g in &extra {
            self.add_member(g, &new.name)?;
        }
        self.passwd.push(User {
            name: new.name.clone(),
            passwd: "x".into(),
            uid,
            gid,
            gecos: new.gecos.clone(),
            home: home.clone(),
            shell: shell.clone(),
        });
        let hash = match &new.password {
            Password::Locked => "!".to_owned(),
            Password::Hash(h) => h.clone(),
        };
        let entry = Shadow {
            name: new.name.clone(),
            hash,
            rest: format!("{}:0:99999:7:::", days_since_epoch()),
        };
        // A shadow line without a passwd line (a crash between the renames of `save`) is
        // replaced, not repeated.
        let old = self.shadow.entries_mut().find(|e| e.name == new.name);
        if let Some(old) = old {
            *old = entry;
            self.shadow.dirty = true;
        } else {
            self.shadow.push(entry);
        }
        if new.create_home {
            self.create_home(&home, uid, gid, new.home_mode)?;
        }
        tracing::debug!(user = %new.name, uid, gid, "user added");
        self.resolve(&new.name)
    }

    fn create_home(&self, home: &str, uid: u32, gid: u32, mode: u32) -> Result<()> {
        let host = paths::resolve(&self.root, home)?;
        if fs::symlink_metadata(&host).is_ok() {
            return Ok(());
        }
        if let Some(parent) = Path::new(&paths::normalize(home)).parent() {
            paths::create_dirs(&self.root, &parent.to_string_lossy(), 0o755, 0, 0)?;
        }
        let host = paths::resolve(&self.root, home)?;
        fs::create_dir(&host).map_err(Error::io("create directory", &host))?;
        fs::set_permissions(&host, fs::Permissions::from_mode(mode))
            .map_err(Error::io("chmod", &host))?;
        paths::chown(&host, uid, gid)?;
        let skel = paths::resolve(&self.root, "/etc/skel")?;
        if skel.is_dir() {
            copy_tree(&skel, &host, uid, gid, 0)?;
        }
        Ok(())
    }

    /// Writes every changed file atomically (temporary file + rename), keeping the mode and
    /// owner of the file it replaces; new files get 0644 (passwd, group) or 0640 with group
    /// `shadow` when it exists (shadow, gshadow).
    pub fn save(&mut self) -> Result<()> {
        let shadow_gid = self.group("shadow").map_or(0, |g| g.gid);
        let public = FileMeta {
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        let secret = FileMeta {
            mode: 0o640,
            uid: 0,
            gid: shadow_gid,
        };
        if self.passwd.dirty {
            let text = render(&self.passwd, |u, s| {
                let _ = write!(
                    s,
                    "{}:{}:{}:{}:{}:{}:{}",
                    u.name, u.passwd, u.uid, u.gid, u.gecos, u.home, u.shell
                );
            });
            self.write("/etc/passwd", &text, public)?;
            self.passwd.dirty = false;
        }
        if self.group.dirty {
            let text = render(&self.group, |g, s| {
                let _ = write!(
                    s,
                    "{}:{}:{}:{}",
                    g.name,
                    g.passwd,
                    g.gid,
                    g.members.join(",")
                );
            });
            self.write("/etc/group", &text, public)?;
            self.group.dirty = false;
        }
        if self.shadow.dirty {
            let text = render(&self.shadow, |e, s| {
                let _ = write!(s, "{}:{}:{}", e.name, e.hash, e.rest);
            });
            self.write("/etc/shadow", &text, secret)?;
            self.shadow.dirty = false;
        }
        if self.gshadow.dirty {
            let text = render(&self.gshadow, |e, s| s.push_str(&e.join(":")));
            self.write("/etc/gshadow", &text, secret)?;
            self.gshadow.dirty = false;
        }
        Ok(())
    }

    fn write(&self, guest: &str, text: &str, default: FileMeta) -> Result<()> {
        paths::create_dirs(&self.root, "/etc", 0o755, 0, 0)?;
        let host = paths::resolve(&self.root, guest)?;
        paths::write_atomic_with(&host, text.as_bytes(), None, default, self.sync)
    }
}

/// Today as shadow's "last change" field counts it.
fn days_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

fn identity_of(u: &User) -> Identity {
    Identity {
        uid: u.uid,
        gid: u.gid,
        groups: Vec::new(),
        name: Some(u.name.clone()),
        home: u.home.clone(),
        shell: Some(u.shell.clone()),
    }
}

fn render<T>(f: &DbFile<T>, mut one: impl FnMut(&T, &mut String)) -> String {
    let mut s = String::new();
    for l in &f.lines {
        match l {
            Line::Entry(e) => one(e, &mut s),
            Line::Raw(r) => s.push_str(r),
        }
        s.push('\n');
    }
    s
}

fn load<T>(
    root: &Path,
    guest: &str,
    fields: usize,
    parse: impl Fn(&[&str]) -> std::result::Result<T, String>,
) -> Result<DbFile<T>> {
    let path = paths::resolve(root, guest)?;
    let Some(bytes) = paths::read_bounded(&path, MAX_FILE)? else {
        return Ok(DbFile::default());
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        Error::Parse {
            path: path.clone(),
            line,
            reason: "not valid UTF-8".into(),
        }
    })?;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |reason: String| Error::Parse {
            path: path.clone(),
            line: i + 1,
            reason,
        };
        if line.len() > MAX_LINE {
            return Err(err(format!("line longer than {MAX_LINE} bytes")));
        }
        let trimmed = line.trim();
        if trimmed.is_empty()
            || trimmed.starts_with('#')
            || matches!(line.as_bytes()[0], b'+' | b'-')
        {
            lines.push(Line::Raw(line.to_owned()));
            continue;
        }
        let parts: Vec<&str> = line.split(':').collect();
        if parts.len() != fields {
            return Err(err(format!(
                "expected {fields} fields separated by ':', found {}",
                parts.len()
            )));
        }
        lines.push(Line::Entry(parse(&parts).map_err(err)?));
    }
    Ok(DbFile {
        lines,
        exists: true,
        dirty: false,
    })
}

fn parse_num(what: &str, s: &str) -> std::result::Result<u32, String> {
    parse_id(s).ok_or_else(|| format!("invalid {what} {s:?}"))
}

fn parse_user(f: &[&str]) -> std::result::Result<User, String> {
    Ok(User {
        name: f[0].to_owned(),
        passwd: f[1].to_owned(),
        uid: parse_num("uid", f[2])?,
        gid: parse_num("gid", f[3])?,
        gecos: f[4].to_owned(),
        home: f[5].to_owned(),
        shell: f[6].to_owned(),
    })
}

fn parse_group(f: &[&str]) -> std::result::Result<Group, String> {
    Ok(Group {
        name: f[0].to_owned(),
        passwd: f[1].to_owned(),
        gid: parse_num("gid", f[2])?,
        members: f[3]
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

fn parse_shadow(f: &[&str]) -> std::result::Result<Shadow, String> {
    Ok(Shadow {
        name: f[0].to_owned(),
        hash: f[1].to_owned(),
        rest: f[2..].join(":"),
    })
}

/// A decimal id in `0..=MAX_ID`.
pub fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|&v| v <= MAX_ID)
}

fn check_id(what: &'static str, id: u32) -> Result<u32> {
    if id > MAX_ID {
        return Err(Error::Invalid {
            what,
            value: id.to_string(),
            reason: "larger than 2147483647",
        });
    }
    Ok(id)
}

/// User and group names: `[A-Za-z_][A-Za-z0-9_.-]*[$]?`, at most 32 bytes, not all digits.
fn check_name(what: &'static str, name: &str) -> Result<()> {
    let bad = |reason| Error::Invalid {
        what,
        value: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 32 {
        return Err(bad("must be 1 to 32 bytes"));
    }
    let body = name.strip_suffix('$').unwrap_or(name);
    let mut bytes = body.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Err(bad("must match [A-Za-z_][A-Za-z0-9_.-]*"));
    }
    Ok(())
}

fn check_field(what: &'static str, value: &str) -> Result<()> {
    if value.contains([':', '\n', '\r', '\0']) {
        return Err(Error::Invalid {
            what,
            value: value.to_owned(),
            reason: "must not contain ':' or line breaks",
        });
    }
    Ok(())
}

fn free_id(used: &[u32], system: bool) -> Option<u32> {
    let (lo, hi) = if system { (100, 999) } else { (1000, 59_999) };
    if system {
        (lo..=hi).rev().find(|id| !used.contains(id))
    } else {
        (lo..=hi).find(|id| !used.contains(id))
    }
}

/// Copies the tree `from` into the existing directory `to`, owned by `uid:gid`, modes kept.
fn copy_tree(from: &Path, to: &Path, uid: u32, gid: u32, depth: usize) -> Result<()> {
    if depth > paths::MAX_DEPTH {
        return Err(Error::io("copy", from)(io::Error::other("tree too deep")));
    }
    let entries = fs::read_dir(from).map_err(Error::io("read directory", from))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("read directory", from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let m = fs::symlink_metadata(&src).map_err(Error::io("stat", &src))?;
        let ft = m.file_type();
        if ft.is_symlink() {
            let t = fs::read_link(&src).map_err(Error::io("read link", &src))?;
            std::os::unix::fs::symlink(&t, &dst).map_err(Error::io("create link", &dst))?;
        } else if ft.is_dir() {
            fs::create_dir(&dst).map_err(Error::io("create directory", &dst))?;
            copy_tree(&src, &dst, uid, gid, depth + 1)?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(m.mode() & 0o7777))
                .map_err(Error::io("chmod", &dst))?;
        } else if ft.is_file() {
            fs::copy(&src, &dst).map_err(Error::io("copy", &dst))?;
        } else {
            continue;
        }
        paths::chown(&dst, uid, gid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\ndaemon:x:1:\nwheel:x:10:alice\nalice:x:1000:\nstaff:x:50:bob,alice\n";

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("etc/skel/.config")).unwrap();
        fs::write(t.path().join("etc/passwd"), PASSWD).unwrap();
        fs::write(t.path().join("etc/group"), GROUP).unwrap();
        fs::write(t.path().join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        fs::set_permissions(
            t.path().join("etc/shadow"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::write(t.path().join("etc/skel/.profile"), "PS1=x\n").unwrap();
        t
    }

    #[test]
    fn a_user_half_written_by_a_crash_is_completed_not_repeated() {
        let t = tree();
        fs::write(t.path().join("etc/gshadow"), "root:*::\n").unwrap();
        // passwd renamed into place, group, shadow and gshadow not.
        let mut db = UserDb::load(t.path()).unwrap();
        db.add_user(&NewUser::new("bob")).unwrap();
        db.save().unwrap();
        let full: Vec<String> = ["group", "shadow", "gshadow"]
            .iter()
            .map(|f| fs::read_to_string(t.path().join("etc").join(f)).unwrap())
            .collect();
        fs::write(t.path().join("etc/group"), GROUP).unwrap();
        fs::write(t.path().join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        fs::write(t.path().join("etc/gshadow"), "root:*::\n").unwrap();
        let mut db = UserDb::load(t.path()).unwrap();
        assert!(db.complete_user("bob", &Password::Locked, false).unwrap());
        assert!(!db.complete_user("bob", &Password::Locked, false).unwrap());
        assert!(matches!(
            db.complete_user("nobody", &Password::Locked, false),
            Err(Error::UnknownUser(_))
        ));
        db.save().unwrap();
        for (f, want) in ["group", "shadow", "gshadow"].iter().zip(&full) {
            let got = fs::read_to_string(t.path().join("etc").join(f)).unwrap();
            assert_eq!(&got, want, "{f}");
        }

        // shadow and gshadow renamed into place, passwd and group not: no second line.
        fs::write(t.path().join("etc/passwd"), PASSWD).unwrap();
        fs::write(t.path().join("etc/group"), GROUP).unwrap();
        let mut db = UserDb::load(t.path()).unwrap();
        db.add_user(&NewUser::new("bob")).unwrap();
        db.save().unwrap();
        for (f, want) in ["group", "shadow", "gshadow"].iter().zip(&full) {
            let got = fs::read_to_string(t.path().join("etc").join(f)).unwrap();
            assert_eq!(&got, want, "{f}");
        }
    }

    #[test]
    fn resolves_docker_user_specs() {
        let t = tree();
        let db = UserDb::load(t.path()).unwrap();
        let a = db.resolve("alice").unwrap();
        assert_eq!((a.uid, a.gid, a.groups.clone()), (1000, 1000, vec![10, 50]));
        assert_eq!(a.home, "/home/alice");
        assert_eq!(db.resolve("1000").unwrap(), a);
        let b = db.resolve("alice:staff").unwrap();
        assert_eq!((b.uid, b.gid, b.groups), (1000, 50, vec![]));
        let c = db.resolve("4242:77").unwrap();
        assert_eq!(
            (c.uid, c.gid, c.home.as_str(), c.name),
            (4242, 77, "/", None)
        );
        let d = db.resolve("4242").unwrap();
        assert_eq!((d.uid, d.gid), (4242, 0));
        assert_eq!(db.resolve("").unwrap().uid, 0);
        assert!(matches!(db.resolve("nobody"), Err(Error::UnknownUser(u)) if u == "nobody"));
        assert!(matches!(
            db.resolve("alice:nogroup"),
            Err(Error::UnknownGroup(_))
        ));
        assert!(db.resolve("99999999999").is_err());
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let t = tree();
        fs::write(t.path().join("etc/group"), "root:x:0:\nbad:x:zz:\n").unwrap();
        let err = UserDb::load(t.path()).unwrap_err().to_string();
        assert!(err.ends_with("etc/group:2: invalid gid \"zz\""), "{err}");
        fs::write(t.path().join("etc/group"), "root:x:0\n").unwrap();
        let err = UserDb::load(t.path()).unwrap_err().to_string();
        assert!(err.contains("etc/group:1: expected 4 fields"), "{err}");
    }

    #[test]
    fn add_user_writes_files_and_home() {
        let t = tree();
        let mut db = UserDb::load(t.path()).unwrap();
        let mut nu = NewUser::new("bob");
        nu.groups = vec!["wheel".into()];
        let id = db.add_user(&nu).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.groups.clone()),
            (1001, 1001, vec![10, 50])
        );
        db.save().unwrap();
        let passwd = fs::read_to_string(t.path().join("etc/passwd")).unwrap();
        assert!(passwd.starts_with(PASSWD), "existing lines kept: {passwd}");
        assert!(passwd.ends_with("bob:x:1001:1001::/home/bob:/bin/sh\n"));
        let group = fs::read_to_string(t.path().join("etc/group")).unwrap();
        assert!(group.contains("wheel:x:10:alice,bob\n"));
        assert!(group.ends_with("bob:x:1001:\n"));
        let shadow = fs::read_to_string(t.path().join("etc/shadow")).unwrap();
        assert!(
            shadow
                .lines()
                .any(|l| l.starts_with("bob:!:") && l.ends_with(":0:99999:7:::"))
        );
        let sm = fs::metadata(t.path().join("etc/shadow")).unwrap();
        assert_eq!(sm.mode() & 0o777, 0o600, "shadow mode kept");
        let home = fs::metadata(t.path().join("home/bob")).unwrap();
        assert_eq!(
            (home.uid(), home.gid(), home.mode() & 0o777),
            (1001, 1001, 0o755)
        );
        let prof = fs::metadata(t.path().join("home/bob/.profile")).unwrap();
        assert_eq!((prof.uid(), prof.gid()), (1001, 1001));
        assert_eq!(
            fs::read_to_string(t.path().join("home/bob/.profile")).unwrap(),
            "PS1=x\n"
        );
        assert!(t.path().join("home/bob/.config").is_dir());
        // Reload sees the same user.
        let db2 = UserDb::load(t.path()).unwrap();
        assert_eq!(db2.resolve("bob").unwrap(), id);
    }

    #[test]
    fn add_user_with_hash_uid_and_group() {
        let t = tree();
        let mut db = UserDb::load(t.path()).unwrap();
        let mut nu = NewUser::new("svc");
        nu.uid = Some(500);
        nu.group = Some("daemon".into());
        nu.password = Password::Hash("$6$salt$hash".into());
        nu.create_home = false;
        let id = db.add_user(&nu).unwrap();
        assert_eq!((id.uid, id.gid), (500, 1));
        assert!(
            db.group("svc").is_none(),
            "no private group when one is given"
        );
        db.save().unwrap();
        assert_eq!(
            UserDb::load(t.path()).unwrap().shadow("svc").unwrap().hash,
            "$6$salt$hash"
        );
        assert!(!t.path().join("home/svc").exists());
        assert!(matches!(db.add_user(&nu), Err(Error::Exists { .. })));
    }

    #[test]
    fn rejects_injection_in_names_and_fields() {
        let t = tree();
        let mut db = UserDb::load(t.path()).unwrap();
        assert!(db.add_user(&NewUser::new("a:b")).is_err());
        assert!(db.add_user(&NewUser::new("1234")).is_err());
        let mut nu = NewUser::new("eve");
        nu.gecos = "x\nroot::0:0::/:/bin/sh".into();
        assert!(db.add_user(&nu).is_err());
        assert!(db.add_group("g\n", None, false).is_err());
    }

    #[test]
    fn missing_files_start_empty_and_are_created() {
        let t = tempfile::tempdir().unwrap();
        let mut db = UserDb::load(t.path()).unwrap();
        assert_eq!(db.users().count(), 0);
        let gid = db.add_group("shadow", Some(42), true).unwrap();
        let mut nu = NewUser::new("u");
        nu.create_home = false;
        db.add_user(&nu).unwrap();
        db.save().unwrap();
        let m = fs::metadata(t.path().join("etc/shadow")).unwrap();
        assert_eq!((m.mode() & 0o777, m.gid()), (0o640, gid));
        let m = fs::metadata(t.path().join("etc/passwd")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o644);
    }

    #[test]
    fn oversized_file_is_refused() {
        let t = tree();
        let big = "a".repeat(MAX_LINE + 1);
        fs::write(t.path().join("etc/passwd"), big).unwrap();
        let err = UserDb::load(t.path()).unwrap_err().to_string();
        assert!(err.contains("etc/passwd:1: line longer"), "{err}");
    }
}
