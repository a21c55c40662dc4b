//! Local sources: an inline document (kernel command line), a file or device, the CPIO config
//! device.

use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::{Document, Fetch, MAX_DOCUMENT, MetadataSource, SourceError, cpio, device};

/// A document given inline (`firebuild.metadata=base64:...`), or metadata switched off.
#[derive(Debug, Clone)]
pub struct InlineSource {
    bytes: Option<Vec<u8>>,
}

impl InlineSource {
    /// A source that always answers with `bytes` (JSON).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self { bytes: Some(bytes) }
    }

    /// A source that answers "no metadata, ask no one else" (`firebuild.metadata=off`).
    pub fn disabled() -> Self {
        Self { bytes: None }
    }
}

fn invalid(
    name: &str,
    origin: &str,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> SourceError {
    SourceError::Invalid {
        source_name: name.to_owned(),
        origin: origin.to_owned(),
        source: e.into(),
    }
}

fn parse_json(name: &str, origin: &str, bytes: &[u8]) -> Result<Value, SourceError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(invalid(
            name,
            origin,
            format!(
                "document is {} bytes, more than {MAX_DOCUMENT}",
                bytes.len()
            ),
        ));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| invalid(name, origin, e))?;
    if !v.is_object() {
        return Err(invalid(name, origin, "document is not a JSON object"));
    }
    Ok(v)
}

impl MetadataSource for InlineSource {
    fn name(&self) -> &str {
        "cmdline"
    }

    fn fetch(&self, _deadline: Instant) -> BoxFuture<'_, Result<Fetch, SourceError>> {
        Box::pin(async move {
            let Some(bytes) = &self.bytes else {
                return Ok(Fetch::Disabled);
            };
            let origin = "firebuild.metadata=base64:";
            Ok(Fetch::Found(Document {
                json: parse_json(self.name(), origin, bytes)?,
                revision: None,
                origin: origin.to_owned(),
            }))
        })
    }
}

/// A file or device named by `firebuild.metadata=file:PATH`: a cpio config archive (recognised by
/// its magic) or a JSON document. A missing file is an outage, not "no metadata": the operator
/// said where the metadata is.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    shown: String,
}

impl FileSource {
    /// `path` is absolute in the guest and resolved under `root`.
    pub fn new(root: &Path, path: impl Into<String>) -> Self {
        let shown = path.into();
        Self {
            path: root.join(shown.trim_start_matches('/')),
            shown,
        }
    }
}

fn unreachable(name: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> SourceError {
    SourceError::Unreachable {
        source_name: name.to_owned(),
        source: e.into(),
    }
}

fn read_bounded(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

impl MetadataSource for FileSource {
    fn name(&self) -> &str {
        "cmdline"
    }

    fn fetch(&self, _deadline: Instant) -> BoxFuture<'_, Result<Fetch, SourceError>> {
        Box::pin(async move {
            let format = device::probe(&self.path).map_err(|e| {
                unreachable(
                    self.name(),
                    std::io::Error::new(e.kind(), format!("{}: {e}", self.shown)),
                )
            })?;
            if format.is_some() {
                return read_cpio(self.name(), &self.path, &self.shown).map(Fetch::Found);
            }
            let bytes = read_bounded(&self.path, MAX_DOCUMENT).map_err(|e| {
                unreachable(
                    self.name(),
                    std::io::Error::new(e.kind(), format!("{}: {e}", self.shown)),
                )
            })?;
            Ok(Fetch::Found(Document {
                json: parse_json(self.name(), &self.shown, &bytes)?,
                revision: None,
                origin: self.shown.clone(),
            }))
        })
    }
}

/// The CPIO config device: found by scanning the block devices under a root, or given.
#[derive(Debug, Clone)]
pub struct CpioSource {
    root: PathBuf,
    device: Option<PathBuf>,
}

impl CpioSource {
    /// Scans `<root>/sys/class/block` (see [`device::scan`]).
    pub fn scan(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            device: None,
        }
    }

    /// Reads this image file or device (its absence is "no metadata").
    pub fn device(path: PathBuf) -> Self {
        Self {
            root: PathBuf::new(),
            device: Some(path),
        }
    }
}

fn read_cpio(name: &str, path: &Path, shown: &str) -> Result<Document, SourceError> {
    let file = std::fs::File::open(path).map_err(|e| unreachable(name, e))?;
    let archive = cpio::read(std::io::BufReader::new(file), cpio::Limits::default()).map_err(
        |e| match e {
            cpio::CpioError::Io { .. } => unreachable(name, e),
            e => invalid(name, shown, e),
        },
    )?;
    let json = document_from_cpio(&archive).map_err(|e| invalid(name, shown, e))?;
    Ok(Document {
        json,
        revision: None,
        origin: shown.to_owned(),
    })
}

impl MetadataSource for CpioSource {
    fn name(&self) -> &str {
        "cpio"
    }

    fn fetch(&self, _deadline: Instant) -> BoxFuture<'_, Result<Fetch, SourceError>> {
        Box::pin(async move {
            let path = match &self.device {
                Some(p) => {
                    match device::probe(p) {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            return Err(invalid(
                                self.name(),
                                &p.display().to_string(),
                                "no cpio magic at offset 0",
                            ));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            return Ok(Fetch::Absent);
                        }
                        Err(e) => return Err(unreachable(self.name(), e)),
                    }
                    p.clone()
                }
                None => {
                    let found =
                        device::scan(&self.root).map_err(|e| unreachable(self.name(), e))?;
                    match found.as_slice() {
                        [] => return Ok(Fetch::Absent),
                        [one] => one.path.clone(),
                        many => {
                            return Err(SourceError::Ambiguous {
                                devices: many.iter().map(|c| c.path.clone()).collect(),
                            });
                        }
                    }
                }
            };
            let shown = path.display().to_string();
            read_cpio(self.name(), &path, &shown).map(Fetch::Found)
        })
    }
}

/// Why a cpio config archive does not map onto the metadata schema.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CpioMapError {
    /// `metadata.json` is not a JSON object.
    #[error("metadata.json in the cpio archive")]
    Json(#[source] serde_json::Error),
    /// `metadata.json` is valid JSON but not an object.
    #[error("metadata.json in the cpio archive is not a JSON object")]
    NotObject,
    /// A text file is not UTF-8.
    #[error("{file} in the cpio archive is not UTF-8")]
    NotUtf8 {
        /// The file.
        file: &'static str,
    },
    /// `config.toml` does not parse.
    #[error("config.toml in the cpio archive")]
    Toml(#[source] toml::de::Error),
}

#[derive(serde::Deserialize, Default)]
struct AgentConfig {
    #[serde(default)]
    network: AgentNetwork,
}

#[derive(serde::Deserialize, Default)]
struct AgentNetwork {
    #[serde(default)]
    skip: bool,
}

fn text<'a>(
    archive: &'a cpio::Archive,
    file: &'static str,
) -> Result<Option<&'a str>, CpioMapError> {
    archive
        .file(file)
        .map(|e| std::str::from_utf8(&e.data).map_err(|_| CpioMapError::NotUtf8 { file }))
        .transpose()
}

/// Maps the files of a CPIO config archive onto a metadata document (schema JSON):
///
/// | file | becomes |
/// |---|---|
/// | `metadata.json` | the base document (the full schema) |
/// | `nodename` | `hostname` (first line, trimmed), replacing the base's |
/// | `authorized_keys` | SSH keys of `root`, added to the base's (one per non-comment line) |
/// | `config.toml` | `[network] skip = true` drops `network`: the guest's network is left alone |
/// | `firstboot.sh` | `firstboot`, replacing the base's |
pub fn document_from_cpio(archive: &cpio::Archive) -> Result<Value, CpioMapError> {
    let mut doc = match archive.file("metadata.json") {
        Some(e) => match serde_json::from_slice::<Value>(&e.data).map_err(CpioMapError::Json)? {
            Value::Object(m) => m,
            _ => return Err(CpioMapError::NotObject),
        },
        None => Map::new(),
    };
    if let Some(name) = text(archive, "nodename")? {
        let name = name.lines().next().unwrap_or("").trim();
        if !name.is_empty() {
            doc.insert("hostname".into(), Value::String(name.to_owned()));
        }
    }
    if let Some(keys) = text(archive, "authorized_keys")? {
        let keys: Vec<Value> = keys
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| Value::String(l.to_owned()))
            .collect();
        if !keys.is_empty() {
            add_root_keys(&mut doc, keys);
        }
    }
    if let Some(cfg) = text(archive, "config.toml")? {
        let cfg: AgentConfig = toml::from_str(cfg).map_err(CpioMapError::Toml)?;
        if cfg.network.skip {
            doc.remove("network");
        }
    }
    if let Some(script) = text(archive, "firstboot.sh")? {
        doc.insert("firstboot".into(), serde_json::json!({ "script": script }));
    }
    Ok(Value::Object(doc))
}

const KEYS_FIELD: &str = "ssh-authorized-keys";

fn add_root_keys(doc: &mut Map<String, Value>, keys: Vec<Value>) {
    let users = doc
        .entry("users")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(users) = users else {
        // Not an array: schema validation reports it; leave it as it is.
        return;
    };
    let root = users
        .iter_mut()
        .find(|u| u.get("name").and_then(Value::as_str) == Some("root"));
    match root {
        Some(Value::Object(u)) => {
            let list = u
                .entry(KEYS_FIELD)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = list {
                for k in keys {
                    if !list.contains(&k) {
                        list.push(k);
                    }
                }
            }
        }
        _ => users.push(serde_json::json!({ "name": "root", KEYS_FIELD: keys })),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::source::cpio::tests::encode;
    use crate::source::cpio::{Format, Limits};
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn cpio_files_map_onto_the_schema() {
        let meta = br#"{"instance-id":"i-1","hostname":"base","network":{"interfaces":[]},
            "users":[{"name":"root","ssh-authorized-keys":["ssh-ed25519 AAAA old"]},{"name":"app"}]}"#;
        let a = encode(
            Format::Newc,
            &[
                ("metadata.json", 0o100644, meta),
                ("nodename", 0o100644, b"  web-1 \nignored\n"),
                (
                    "authorized_keys",
                    0o100600,
                    b"# comment\nssh-ed25519 AAAA old\n\nssh-rsa BBBB new\n",
                ),
                ("config.toml", 0o100644, b"[network]\nskip = true\n"),
                ("firstboot.sh", 0o100755, b"#!/bin/sh\necho hi\n"),
            ],
        );
        let doc = document_from_cpio(&cpio::read(&a[..], Limits::default()).unwrap()).unwrap();
        assert_eq!(doc["instance-id"], "i-1");
        assert_eq!(doc["hostname"], "web-1");
        assert!(doc.get("network").is_none(), "[network] skip drops network");
        assert_eq!(
            doc["users"][0]["ssh-authorized-keys"],
            serde_json::json!(["ssh-ed25519 AAAA old", "ssh-rsa BBBB new"])
        );
        assert_eq!(doc["users"][1]["name"], "app");
        assert_eq!(doc["firstboot"]["script"], "#!/bin/sh\necho hi\n");
        // The mapped document is valid schema.
        let found = crate::source::Found::new(
            "cpio",
            Document {
                json: doc,
                revision: None,
                origin: "/dev/vdb".into(),
            },
        )
        .unwrap();
        assert_eq!(found.metadata.instance_id.as_deref(), Some("i-1"));
        assert_eq!(found.metadata.users[0].ssh_authorized_keys.len(), 2);
        assert!(found.metadata.firstboot.is_some());

        // Without metadata.json: root is created with the keys; network skip=false keeps all.
        let a = encode(
            Format::Odc,
            &[
                ("authorized_keys", 0o100600, b"ssh-ed25519 AAAA k\n"),
                ("config.toml", 0o100644, b"[network]\nskip = false\n"),
            ],
        );
        let doc = document_from_cpio(&cpio::read(&a[..], Limits::default()).unwrap()).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"users":[{"name":"root","ssh-authorized-keys":["ssh-ed25519 AAAA k"]}]})
        );
    }

    #[test]
    fn bad_cpio_contents_are_named() {
        for (file, data, want) in [
            (
                "metadata.json",
                &b"[1]"[..],
                "metadata.json in the cpio archive is not a JSON object",
            ),
            ("metadata.json", b"{", "metadata.json in the cpio archive"),
            (
                "nodename",
                b"\xff",
                "nodename in the cpio archive is not UTF-8",
            ),
            (
                "config.toml",
                b"[network\n",
                "config.toml in the cpio archive",
            ),
        ] {
            let a = encode(Format::Newc, &[(file, 0o100644, data)]);
            let err =
                document_from_cpio(&cpio::read(&a[..], Limits::default()).unwrap()).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
    }

    #[tokio::test]
    async fn device_scan_finds_one_and_refuses_two() {
        let root = tempfile::tempdir().unwrap();
        let dev = |name: &str, majmin: &str, data: &[u8]| {
            let sys = root.path().join("sys/class/block").join(name);
            std::fs::create_dir_all(&sys).unwrap();
            std::fs::write(sys.join("dev"), majmin).unwrap();
            std::fs::create_dir_all(root.path().join("dev")).unwrap();
            std::fs::write(root.path().join("dev").join(name), data).unwrap();
        };
        let source = CpioSource::scan(root.path());
        assert_eq!(source.fetch(soon()).await.unwrap(), Fetch::Absent);
        dev("vda", "254:0", b"\0\0\0\0\0\0\0\0");
        dev(
            "vdb",
            "254:16",
            &encode(Format::BinaryBe, &[("nodename", 0o100644, b"be-host\n")]),
        );
        let Fetch::Found(doc) = source.fetch(soon()).await.unwrap() else {
            panic!()
        };
        assert_eq!(doc.json["hostname"], "be-host");
        assert_eq!(
            doc.origin,
            root.path().join("dev/vdb").display().to_string()
        );
        dev("vdc", "254:32", &encode(Format::Odc, &[]));
        let err = source.fetch(soon()).await.unwrap_err();
        assert!(
            matches!(&err, SourceError::Ambiguous { devices } if devices.len() == 2),
            "{err}"
        );
    }

    #[tokio::test]
    async fn given_device_absent_or_not_cpio() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let source = CpioSource::device(path.clone());
        assert_eq!(source.fetch(soon()).await.unwrap(), Fetch::Absent);
        std::fs::write(&path, b"not an archive").unwrap();
        let err = source.fetch(soon()).await.unwrap_err();
        assert!(matches!(err, SourceError::Invalid { .. }), "{err}");
        assert!(!err.is_outage());
    }
}
