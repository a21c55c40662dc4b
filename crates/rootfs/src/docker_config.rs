//! Registry credentials from Docker's `config.json`, as `docker pull` finds them.
//!
//! [`DockerConfig`] holds what the file says (`auths`, `credHelpers`, `credsStore`); the
//! credentials of one registry are resolved only when it is pulled from
//! ([`DockerConfig::credentials_for`]), in Docker's order:
//!
//! 1. `credHelpers[registry]`: run `docker-credential-<name> get`;
//! 2. else `credsStore`: the same with the default helper;
//! 3. else `auths[registry]`: `auth` (base64 `user:password`), else `username`/`password`;
//!    an `identitytoken` is sent as the password.
//!
//! A helper is run with an argv (never a shell), its name limited to `[A-Za-z0-9._-]`, the
//! registry's server address on its stdin; its answer is read bounded
//! ([`MAX_HELPER_OUTPUT_BYTES`]) within [`HELPER_TIMEOUT`], and its "credentials not found"
//! answer means anonymous access. Keys match as Docker matches them: exactly, else by host
//! (`https://` and any path dropped); Docker Hub (`docker.io`, `index.docker.io`) is
//! `https://index.docker.io/v1/`.
//!
//! Secrets never appear in `Debug` output, logs or errors.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use crate::error::{Error, Result};
use crate::registry::Credentials;

/// Largest `config.json` read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest answer read from a credential helper.
pub const MAX_HELPER_OUTPUT_BYTES: u64 = 64 << 10;
/// How long a credential helper may take.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Docker Hub's key in `auths` and what its helpers are asked for.
const HUB_SERVER: &str = "https://index.docker.io/v1/";
/// What a helper prints (exiting non-zero) when it has nothing for the registry.
const NOT_FOUND: &str = "credentials not found in native keychain";
/// A helper's user name meaning "the secret is an identity token".
const TOKEN_USER: &str = "<token>";

/// A parsed Docker `config.json`; credentials are looked up per registry at pull time.
#[derive(Clone)]
pub struct DockerConfig {
    path: PathBuf,
    auths: BTreeMap<String, Auth>,
    cred_helpers: BTreeMap<String, String>,
    creds_store: Option<String>,
    helper_dirs: Option<Vec<PathBuf>>,
    helper_timeout: Duration,
}

/// One `auths` entry, decoded (both empty: anonymous).
#[derive(Clone, Default)]
struct Auth {
    user: String,
    secret: String,
}

impl std::fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .field("auths", &self.auths.keys().collect::<Vec<_>>())
            .field("cred_helpers", &self.cred_helpers)
            .field("creds_store", &self.creds_store)
            .field("helper_dirs", &self.helper_dirs)
            .finish_non_exhaustive()
    }
}

impl DockerConfig {
    /// Docker's config directory: `docker_config_env` (the value of `$DOCKER_CONFIG`) when
    /// set and not empty, else `<home_env>/.docker` (`$HOME`); `None` when neither is set.
    ///
    /// The library reads no environment: the caller passes the two variables.
    pub fn default_dir(
        docker_config_env: Option<&OsStr>,
        home_env: Option<&OsStr>,
    ) -> Option<PathBuf> {
        match docker_config_env.filter(|d| !d.is_empty()) {
            Some(dir) => Some(PathBuf::from(dir)),
            None => home_env
                .filter(|h| !h.is_empty())
                .map(|h| Path::new(h).join(".docker")),
        }
    }

    /// The config in Docker's default place ([`DockerConfig::default_dir`]`/config.json`);
    /// `None` when there is no such file. The CLI calls it as
    /// `DockerConfig::load_default(env::var_os("DOCKER_CONFIG").as_deref(),
    /// env::var_os("HOME").as_deref())`.
    pub fn load_default(
        docker_config_env: Option<&OsStr>,
        home_env: Option<&OsStr>,
    ) -> Result<Option<Self>> {
        match Self::default_dir(docker_config_env, home_env) {
            Some(dir) => Self::load_dir(&dir),
            None => Ok(None),
        }
    }

    /// `<dir>/config.json`; `None` when the file does not exist.
    pub fn load_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("config.json");
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => Self::load(&path).map(Some),
        }
    }

    /// A `config.json` file, read bounded by [`MAX_CONFIG_BYTES`] and checked: a malformed
    /// field is an [`Error::DockerConfig`] naming the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(Error::io("open", path))?;
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(Error::io("read", path))?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(bad(
                path,
                "",
                format!("larger than {MAX_CONFIG_BYTES} bytes"),
            ));
        }
        Self::parse(path, &bytes)
    }

    /// Parses the bytes of `path`. Parsed as a [`Value`] and walked by hand, so that no
    /// decoder message quotes a value (a password) back.
    fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let mut config = DockerConfig {
            path: path.to_owned(),
            auths: BTreeMap::new(),
            cred_helpers: BTreeMap::new(),
            creds_store: None,
            helper_dirs: None,
            helper_timeout: HELPER_TIMEOUT,
        };
        // Docker reads an empty file as an empty config.
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(config);
        }
        let root: Value = serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: format!("docker config {}", path.display()),
            source,
        })?;
        let Value::Object(root) = root else {
            return Err(bad(path, "", "not a JSON object".into()));
        };
        if let Some(auths) = object(path, &root, "auths", "auths")? {
            for (key, entry) in auths {
                let field = format!("auths[{key:?}]");
                let Value::Object(entry) = entry else {
                    return Err(bad(path, &field, "not an object".into()));
                };
                let auth = parse_auth(path, &field, entry)?;
                config.auths.insert(key.clone(), auth);
            }
        }
        if let Some(helpers) = object(path, &root, "credHelpers", "credHelpers")? {
            for (key, name) in helpers {
                let field = format!("credHelpers[{key:?}]");
                let Value::String(name) = name else {
                    return Err(bad(path, &field, "not a string".into()));
                };
                // Docker ignores an empty helper name.
                if !name.is_empty() {
                    check_helper_name(path, &field, name)?;
                    config.cred_helpers.insert(key.clone(), name.clone());
                }
            }
        }
        if let Some(store) = string(path, &root, "credsStore", "credsStore")?
            && !store.is_empty()
        {
            check_helper_name(path, "credsStore", store)?;
            config.creds_store = Some(store.to_owned());
        }
        Ok(config)
    }

    /// Where the config was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks credential helpers up in these directories only (in order), not on the
    /// process's `PATH`: for tests and sandboxes.
    pub fn with_helper_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.helper_dirs = Some(dirs);
        self
    }

    /// How long a helper may take ([`HELPER_TIMEOUT`] unless changed).
    pub fn with_helper_timeout(mut self, timeout: Duration) -> Self {
        self.helper_timeout = timeout;
        self
    }

    /// The credentials for `registry` (a host as written in an image reference:
    /// `127.0.0.1:5000`, `ghcr.io`, `docker.io`): from its `credHelpers` entry, else the
    /// `credsStore` helper, else its `auths` entry, else [`Credentials::Anonymous`]. Never
    /// returns [`Credentials::DockerConfig`].
    pub async fn credentials_for(&self, registry: &str) -> Result<Credentials> {
        if let Some((key, helper)) = lookup(&self.cred_helpers, registry) {
            debug!(
                registry,
                key, helper, "registry credentials from credHelpers"
            );
            return self.run_helper(helper, registry).await;
        }
        if let Some(helper) = &self.creds_store {
            debug!(registry, helper, "registry credentials from credsStore");
            return self.run_helper(helper, registry).await;
        }
        match lookup(&self.auths, registry) {
            Some((key, auth)) if !(auth.user.is_empty() && auth.secret.is_empty()) => {
                debug!(registry, key, user = %auth.user, "registry credentials from auths");
                Ok(Credentials::Basic {
                    user: auth.user.clone(),
                    password: auth.secret.clone(),
                })
            }
            _ => {
                debug!(registry, config = %self.path.display(), "no credentials in docker config");
                Ok(Credentials::Anonymous)
            }
        }
    }

    /// Runs `docker-credential-<name> get` with the registry's server address on stdin.
    async fn run_helper(&self, name: &str, registry: &str) -> Result<Credentials> {
        let program = format!("docker-credential-{name}");
        let fail = |reason: String, source: Option<std::io::Error>| Error::CredentialHelper {
            helper: program.clone(),
            registry: registry.to_owned(),
            reason,
            source,
        };
        let command = match &self.helper_dirs {
            None => PathBuf::from(&program),
            Some(dirs) => dirs
                .iter()
                .map(|d| d.join(&program))
                .find(|p| p.is_file())
                .ok_or_else(|| fail(format!("not found in {dirs:?}"), None))?,
        };
        let mut child = spawn_helper(&command)
            .await
            .map_err(|e| fail("could not be run".into(), Some(e)))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(fail("no pipes to the helper".into(), None));
        };
        let server = server_address(registry);
        let exchange = async {
            // A helper may exit without reading: a broken pipe is not the error to report.
            let _ = stdin.write_all(server.as_bytes()).await;
            drop(stdin);
            let out = match read_bounded(stdout, MAX_HELPER_OUTPUT_BYTES).await {
                Ok(Some(out)) => out,
                Ok(None) => {
                    return Err(fail(
                        format!("answer larger than {MAX_HELPER_OUTPUT_BYTES} bytes"),
                        None,
                    ));
                }
                Err(e) => return Err(fail("read its answer".into(), Some(e))),
            };
            let status = child
                .wait()
                .await
                .map_err(|e| fail("wait".into(), Some(e)))?;
            Ok((out, status))
        };
        // On timeout or an error the child is dropped, which kills it.
        let (out, status) = tokio::time::timeout(self.helper_timeout, exchange)
            .await
            .map_err(|_| {
                fail(
                    format!("no answer within {} s", self.helper_timeout.as_secs_f32()),
                    None,
                )
            })??;
        let text = String::from_utf8_lossy(&out);
        if !status.success() {
            // The helper protocol puts the error message on stdout.
            let message = text.trim();
            if message == NOT_FOUND {
                debug!(registry, helper = %program, "helper has no credentials: anonymous");
                return Ok(Credentials::Anonymous);
            }
            let first: String = message
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            return Err(fail(format!("{status}: {first:?}"), None));
        }
        let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(&out) else {
            return Err(fail("answer is not a JSON object".into(), None));
        };
        let field = |name: &str| match answer.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(fail(format!("{name} in its answer is not a string"), None)),
        };
        let (user, secret) = (field("Username")?, field("Secret")?);
        if user.is_empty() && secret.is_empty() {
            return Ok(Credentials::Anonymous);
        }
        if user == TOKEN_USER {
            debug!(registry, helper = %program, "helper gave an identity token");
        }
        Ok(Credentials::Basic {
            user,
            password: secret,
        })
    }
}

/// Starts a helper: an argv, no shell, stdin and stdout piped, stderr discarded (Docker
/// ignores it too), killed when dropped. A helper being replaced can be briefly busy
/// (`ETXTBSY`, also seen when another thread forks while the file is being written): retried
/// a few times.
async fn spawn_helper(command: &Path) -> std::io::Result<tokio::process::Child> {
    let mut attempt = 0;
    loop {
        let spawned = tokio::process::Command::new(command)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        match spawned {
            Err(e)
                if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error())
                    && attempt < 5 =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            other => return other,
        }
    }
}

/// Reads at most `limit` bytes; `None` when there is more.
async fn read_bounded(
    reader: impl AsyncRead + Unpin,
    limit: u64,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    reader.take(limit + 1).read_to_end(&mut out).await?;
    Ok((out.len() as u64 <= limit).then_some(out))
}

/// The address Docker keys a registry's credentials by (and asks helpers for).
fn server_address(registry: &str) -> &str {
    if is_hub(registry) {
        HUB_SERVER
    } else {
        registry
    }
}

fn is_hub(host: &str) -> bool {
    ["docker.io", "index.docker.io", "registry-1.docker.io"]
        .iter()
        .any(|h| host.eq_ignore_ascii_case(h))
}

/// A key's host, as Docker's `ConvertToHostname`: scheme and path dropped.
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

/// The entry for `registry`: its exact key (`https://index.docker.io/v1/` for Docker Hub)
/// first, else the first key (in sorted order) whose host is the registry's.
fn lookup<'a, V>(map: &'a BTreeMap<String, V>, registry: &str) -> Option<(&'a str, &'a V)> {
    let server = server_address(registry);
    if let Some((k, v)) = map.get_key_value(server) {
        return Some((k, v));
    }
    let hub = is_hub(registry);
    map.iter()
        .find(|(k, _)| {
            let host = key_host(k);
            if hub {
                is_hub(host)
            } else {
                host.eq_ignore_ascii_case(registry)
            }
        })
        .map(|(k, v)| (k.as_str(), v))
}

fn parse_auth(path: &Path, field: &str, entry: &Map<String, Value>) -> Result<Auth> {
    let sub = |name: &str| format!("{field}.{name}");
    let mut auth = Auth {
        user: string(path, entry, "username", &sub("username"))?
            .unwrap_or_default()
            .to_owned(),
        secret: string(path, entry, "password", &sub("password"))?
            .unwrap_or_default()
            .to_owned(),
    };
    // As Docker: a non-empty `auth` wins over `username`/`password`.
    if let Some(encoded) = string(path, entry, "auth", &sub("auth"))?
        && !encoded.is_empty()
    {
        let bad_auth = |reason: &str| bad(path, &sub("auth"), reason.into());
        let decoded = base64_decode(encoded).ok_or_else(|| bad_auth("not valid base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad_auth("not UTF-8"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad_auth("not user:password"))?;
        auth.user = user.to_owned();
        auth.secret = password.to_owned();
    }
    if let Some(token) = string(path, entry, "identitytoken", &sub("identitytoken"))?
        && !token.is_empty()
    {
        // oci-client has no OAuth2 refresh-token grant: the token goes as the password of
        // the basic credentials sent to the token realm (registries such as ACR accept it).
        auth.secret = token.to_owned();
        if auth.user.is_empty() {
            auth.user = TOKEN_USER.to_owned();
        }
    }
    Ok(auth)
}

fn object<'a>(
    path: &Path,
    map: &'a Map<String, Value>,
    name: &str,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(bad(path, field, "not an object".into())),
    }
}

fn string<'a>(
    path: &Path,
    map: &'a Map<String, Value>,
    name: &str,
    field: &str,
) -> Result<Option<&'a str>> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(path, field, "not a string".into())),
    }
}

fn check_helper_name(path: &Path, field: &str, name: &str) -> Result<()> {
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok && !name.is_empty() && name.len() <= 64 {
        Ok(())
    } else {
        Err(bad(
            path,
            field,
            format!("helper name {name:?} is not 1-64 of [A-Za-z0-9._-]"),
        ))
    }
}

fn bad(path: &Path, field: &str, reason: String) -> Error {
    Error::DockerConfig {
        path: path.to_owned(),
        field: field.to_owned(),
        reason,
    }
}

/// Standard base64 (padding optional, as Docker writes it padded).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover sextet cannot end a valid encoding.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn parse(json: &str) -> Result<DockerConfig> {
        DockerConfig::parse(Path::new("/cfg/config.json"), json.as_bytes())
    }

    fn basic(c: Credentials) -> (String, String) {
        match c {
            Credentials::Basic { user, password } => (user, password),
            other => panic!("expected basic credentials, got {other:?}"),
        }
    }

    async fn creds(cfg: &DockerConfig, registry: &str) -> Credentials {
        cfg.credentials_for(registry).await.unwrap()
    }

    #[test]
    fn base64_round() {
        assert_eq!(base64_decode("YWxpY2U6czNjcmV0").unwrap(), b"alice:s3cret");
        assert_eq!(base64_decode("dTpw").unwrap(), b"u:p");
        assert_eq!(base64_decode("dTo=").unwrap(), b"u:");
        assert_eq!(base64_decode("dTo").unwrap(), b"u:");
        assert!(base64_decode("d").is_none());
        assert!(base64_decode("dT*w").is_none());
    }

    #[tokio::test]
    async fn auth_field_is_base64_user_password() {
        let cfg = parse(r#"{"auths":{"127.0.0.1:5000":{"auth":"YWxpY2U6czNjcmV0"}}}"#).unwrap();
        let (u, p) = basic(creds(&cfg, "127.0.0.1:5000").await);
        assert_eq!((u.as_str(), p.as_str()), ("alice", "s3cret"));
        // Another registry gets nothing.
        assert!(matches!(
            creds(&cfg, "127.0.0.1:5001").await,
            Credentials::Anonymous
        ));
    }

    #[tokio::test]
    async fn username_password_and_identity_token() {
        let cfg = parse(
            r#"{"auths":{
                "ghcr.io":{"username":"bob","password":"pw"},
                "acr.example":{"auth":"MDAwMDo=","identitytoken":"refresh-tok"},
                "bare.example":{"identitytoken":"tok2"},
                "empty.example":{}
            }}"#,
        )
        .unwrap();
        assert_eq!(
            basic(creds(&cfg, "ghcr.io").await),
            ("bob".into(), "pw".into())
        );
        assert_eq!(
            basic(creds(&cfg, "acr.example").await),
            ("0000".into(), "refresh-tok".into())
        );
        assert_eq!(
            basic(creds(&cfg, "bare.example").await),
            ("<token>".into(), "tok2".into())
        );
        assert!(matches!(
            creds(&cfg, "empty.example").await,
            Credentials::Anonymous
        ));
    }

    #[tokio::test]
    async fn keys_match_as_docker_matches_them() {
        let cfg = parse(
            r#"{"auths":{
                "https://index.docker.io/v1/":{"username":"hub","password":"h"},
                "https://registry.example:5000/v2/":{"username":"url","password":"u"},
                "http://plain.example":{"username":"plain","password":"p"}
            }}"#,
        )
        .unwrap();
        for hub in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(basic(creds(&cfg, hub).await).0, "hub", "{hub}");
        }
        assert_eq!(basic(creds(&cfg, "registry.example:5000").await).0, "url");
        assert_eq!(basic(creds(&cfg, "plain.example").await).0, "plain");
        // The port is part of the host.
        assert!(matches!(
            creds(&cfg, "registry.example").await,
            Credentials::Anonymous
        ));

        // Hub keyed by a bare host also matches, and an exact key wins over a host match.
        let cfg = parse(
            r#"{"auths":{
                "docker.io":{"username":"bare","password":"b"},
                "https://q.example/v1/":{"username":"url","password":"u"},
                "q.example":{"username":"exact","password":"e"}
            }}"#,
        )
        .unwrap();
        assert_eq!(basic(creds(&cfg, "docker.io").await).0, "bare");
        assert_eq!(basic(creds(&cfg, "q.example").await).0, "exact");
        assert_eq!(server_address("docker.io"), HUB_SERVER);
        assert_eq!(key_host("https://h:1/v2/x"), "h:1");
    }

    #[test]
    fn malformed_fields_are_named_and_secrets_never_shown() {
        let cases = [
            (r#"{"auths":[]}"#, "auths"),
            (r#"{"auths":{"r":"hunter2"}}"#, "auths[\"r\"]"),
            (
                r#"{"auths":{"r":{"auth":"hunter2!"}}}"#,
                "auths[\"r\"].auth",
            ),
            (
                r#"{"auths":{"r":{"auth":"aHVudGVyMg=="}}}"#,
                "auths[\"r\"].auth",
            ),
            (r#"{"auths":{"r":{"password":7}}}"#, "auths[\"r\"].password"),
            (
                r#"{"credHelpers":{"r":"../../bin/sh"}}"#,
                "credHelpers[\"r\"]",
            ),
            (r#"{"credHelpers":{"r":"a b"}}"#, "credHelpers[\"r\"]"),
            (r#"{"credsStore":"x;rm"}"#, "credsStore"),
            (r#"{"credsStore":5}"#, "credsStore"),
        ];
        for (json, field) in cases {
            let err = parse(json).unwrap_err();
            let shown = err.to_string();
            assert!(
                matches!(&err, Error::DockerConfig { field: f, .. } if f == field),
                "{json}: {shown}"
            );
            assert!(shown.contains("/cfg/config.json"), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let err = parse(r#"{"auths": {"r": {"password": "hunter2""#).unwrap_err();
        assert!(matches!(err, Error::Json { .. }), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"));

        let cfg = parse(r#"{"auths":{"r":{"auth":"dTpodW50ZXIy"}}}"#).unwrap();
        let shown = format!("{cfg:?}");
        assert!(
            shown.contains("\"r\"") && !shown.contains("hunter2"),
            "{shown}"
        );
        // Empty file, empty object: no credentials.
        assert!(parse("  \n").unwrap().auths.is_empty());
        assert!(parse("{}").unwrap().creds_store.is_none());
    }

    #[test]
    fn default_dir_follows_docker() {
        let d = |c: Option<&str>, h: Option<&str>| {
            DockerConfig::default_dir(c.map(OsStr::new), h.map(OsStr::new))
        };
        assert_eq!(d(Some("/dc"), Some("/home/u")), Some("/dc".into()));
        assert_eq!(d(Some(""), Some("/home/u")), Some("/home/u/.docker".into()));
        assert_eq!(d(None, Some("/home/u")), Some("/home/u/.docker".into()));
        assert_eq!(d(None, None), None);
    }

    #[test]
    fn load_dir_reads_config_json_bounded() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DockerConfig::load_dir(dir.path()).unwrap().is_none());
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"credsStore":"desktop"}"#).unwrap();
        let cfg = DockerConfig::load_dir(dir.path()).unwrap().unwrap();
        assert_eq!(cfg.creds_store.as_deref(), Some("desktop"));
        assert_eq!(cfg.path(), path);

        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_CONFIG_BYTES as usize));
        std::fs::write(&path, big).unwrap();
        let err = DockerConfig::load(&path).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    /// A directory holding `docker-credential-test`, a script with this body.
    fn helper(body: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker-credential-test");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn with_helper(json: &str, dir: &tempfile::TempDir) -> DockerConfig {
        parse(json)
            .unwrap()
            .with_helper_dirs(vec![dir.path().to_owned()])
    }

    #[tokio::test]
    async fn cred_helper_gets_the_server_address_and_its_answer_is_used() {
        // Echoes what it was asked for into the user name, and checks its argv.
        let dir = helper(
            r#"[ "$1" = get ] || exit 3
read -r server || true
printf '{"ServerURL":"%s","Username":"u-%s","Secret":"s3cret"}' "$server" "$server""#,
        );
        let cfg = with_helper(
            r#"{"credHelpers":{"127.0.0.1:5000":"test"},
                "auths":{"127.0.0.1:5000":{"username":"file","password":"f"}}}"#,
            &dir,
        );
        // credHelpers wins over auths.
        assert_eq!(
            basic(creds(&cfg, "127.0.0.1:5000").await),
            ("u-127.0.0.1:5000".into(), "s3cret".into())
        );

        // credsStore for everything else; Docker Hub is asked for by its v1 address.
        let cfg = with_helper(r#"{"credsStore":"test"}"#, &dir);
        assert_eq!(
            basic(creds(&cfg, "docker.io").await).0,
            "u-https://index.docker.io/v1/"
        );
    }

    #[tokio::test]
    async fn helper_not_found_answer_is_anonymous() {
        let dir = helper("echo 'credentials not found in native keychain'\nexit 1");
        let cfg = with_helper(
            r#"{"credsStore":"test","auths":{"r.example":{"username":"file","password":"f"}}}"#,
            &dir,
        );
        assert!(matches!(
            creds(&cfg, "r.example").await,
            Credentials::Anonymous
        ));
    }

    #[tokio::test]
    async fn helper_failures_are_errors_without_secrets() {
        let cfg = |body: &str| {
            let dir = helper(body);
            (
                with_helper(r#"{"credsStore":"test"}"#, &dir)
                    .with_helper_timeout(Duration::from_millis(500)),
                dir,
            )
        };
        let (c, _d) = cfg("echo 'keychain locked'\nexit 1");
        let err = c.credentials_for("r.example").await.unwrap_err();
        assert!(
            matches!(&err, Error::CredentialHelper { reason, .. } if reason.contains("keychain locked")),
            "{err}"
        );
        let (c, _d) = cfg(r#"printf '{"Username":"u","Secret":42}'"#);
        let err = c.credentials_for("r.example").await.unwrap_err();
        assert!(err.to_string().contains("Secret"), "{err}");
        let (c, _d) = cfg(r#"printf 'hunter2 not json'"#);
        let err = c.credentials_for("r.example").await.unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let (c, _d) = cfg("head -c 70000 /dev/zero");
        let err = c.credentials_for("r.example").await.unwrap_err();
        assert!(err.to_string().contains("larger than 65536"), "{err}");
        let (c, _d) = cfg("exec sleep 30");
        let err = c.credentials_for("r.example").await.unwrap_err();
        assert!(err.to_string().contains("no answer within"), "{err}");

        // A helper that is not there.
        let empty = tempfile::tempdir().unwrap();
        let c = with_helper(r#"{"credsStore":"absent"}"#, &empty);
        let err = c.credentials_for("r.example").await.unwrap_err();
        assert!(
            err.to_string().contains("docker-credential-absent"),
            "{err}"
        );
    }
}
