//! `--secret`: Docker's syntax (`id=ID,src=FILE`, `id=ID,env=VAR`, `type=file|env`), parsed
//! when the arguments are, read (bounded) just before the build.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use firebuild_bootstrap::{MAX_SECRET_BYTES, SecretBytes};
use zeroize::Zeroizing;

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file's content.
    File(PathBuf),
    /// An environment variable's value.
    Env(String),
}

/// One `--secret` flag, parsed (not read yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// The id the Dockerfile names (`RUN --mount=type=secret,id=ID`).
    pub id: String,
    /// Where the value is read from.
    pub source: SecretSource,
    /// The flag as given, for errors (it names files and variables, never values).
    pub raw: String,
}

/// Parses one `--secret` value as buildx does: comma-separated `key=value` fields, keys
/// `type` (`file` or `env`; default `env` when `env=` is given, else `file`), `id`,
/// `src`/`source`, `env`. A file secret's `id` defaults to the file name of `src`, and `src`
/// to the `id`; an env secret's `id` defaults to `env`, and `env` to the `id`.
pub fn parse_spec(raw: &str) -> Result<SecretSpec, String> {
    let (mut kind, mut id, mut src, mut env) = (None, None, None, None);
    for field in raw.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!("field {field:?} is not KEY=VALUE"));
        };
        let slot = match key.to_ascii_lowercase().as_str() {
            "type" => &mut kind,
            "id" => &mut id,
            "src" | "source" => &mut src,
            "env" => &mut env,
            _ => return Err(format!("unknown key {key:?} (type, id, src, env)")),
        };
        if value.is_empty() {
            return Err(format!("{key} is empty"));
        }
        if slot.replace(value.to_owned()).is_some() {
            return Err(format!("{key} is given twice"));
        }
    }
    if src.is_some() && env.is_some() {
        return Err("src= and env= exclude each other".to_owned());
    }
    let is_env = match kind.as_deref() {
        Some("env") => true,
        Some("file") => false,
        Some(other) => return Err(format!("unsupported type {other:?} (file or env)")),
        None => env.is_some(),
    };
    let (id, source) = if is_env {
        // buildx takes `type=env,src=VAR` as `env=VAR`.
        let var = env.or(src).or_else(|| id.clone());
        let id = id.or_else(|| var.clone());
        match (id, var) {
            (Some(id), Some(var)) => (id, SecretSource::Env(var)),
            _ => return Err("needs id= or env=".to_owned()),
        }
    } else {
        if env.is_some() {
            return Err("a file secret takes src=, not env=".to_owned());
        }
        let src = src.or_else(|| id.clone());
        let id = id.or_else(|| {
            src.as_deref()
                .and_then(|s| Path::new(s).file_name())
                .map(|n| n.to_string_lossy().into_owned())
        });
        match (id, src) {
            (Some(id), Some(src)) => (id, SecretSource::File(src.into())),
            _ => return Err("needs id= or src=".to_owned()),
        }
    };
    check_id(&id)?;
    Ok(SecretSpec {
        id,
        source,
        raw: raw.to_owned(),
    })
}

/// An id becomes a file name under `/run/secrets` in the guest: one plain path component.
fn check_id(id: &str) -> Result<(), String> {
    let ok = id.len() <= 255
        && id != "."
        && id != ".."
        && !id.contains('/')
        && !id.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "id {id:?} must be one file name (no '/', '.', '..' or control characters)"
        ))
    }
}

/// Reads every secret, bounded by [`MAX_SECRET_BYTES`] (the library's limit, as BuildKit's),
/// as the library takes them: `(id, value)`. An error names the flag; two flags with one id
/// are refused.
pub fn read_all(specs: &[SecretSpec]) -> anyhow::Result<Vec<(String, SecretBytes)>> {
    let mut secrets: Vec<(String, SecretBytes)> = Vec::with_capacity(specs.len());
    for spec in specs {
        if secrets.iter().any(|(id, _)| *id == spec.id) {
            bail!("--secret {}: id {:?} is given twice", spec.raw, spec.id);
        }
        let value = read(&spec.source).with_context(|| format!("--secret {}", spec.raw))?;
        secrets.push((spec.id.clone(), value.into()));
    }
    Ok(secrets)
}

fn read(source: &SecretSource) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let value = match source {
        SecretSource::File(path) => {
            // The library's bounded read: its error names the file and the limit.
            Zeroizing::new(firebuild_build::read_bounded(
                path,
                MAX_SECRET_BYTES,
                "secret",
            )?)
        }
        SecretSource::Env(var) => {
            let Some(value) = std::env::var_os(var) else {
                bail!("environment variable {var} is not set");
            };
            let value = Zeroizing::new(value.into_encoded_bytes());
            if value.len() as u64 > MAX_SECRET_BYTES {
                bail!("environment variable {var} is larger than {MAX_SECRET_BYTES} bytes");
            }
            value
        }
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn spec(raw: &str) -> (String, SecretSource) {
        let s = parse_spec(raw).unwrap();
        (s.id, s.source)
    }

    #[test]
    fn docker_forms_parse_with_buildx_defaults() {
        let file = |p: &str| SecretSource::File(p.into());
        let env = |v: &str| SecretSource::Env(v.into());
        assert_eq!(
            spec("id=npm,src=/home/me/.npmrc"),
            ("npm".into(), file("/home/me/.npmrc"))
        );
        assert_eq!(spec("id=npm,source=x"), ("npm".into(), file("x")));
        // id defaults to the file name of src, src to the id.
        assert_eq!(
            spec("src=/run/keys/aws.txt"),
            ("aws.txt".into(), file("/run/keys/aws.txt"))
        );
        assert_eq!(spec("id=token"), ("token".into(), file("token")));
        assert_eq!(spec("type=file,id=a,src=b"), ("a".into(), file("b")));
        // env: by key or by type; id and env default to each other.
        assert_eq!(spec("id=tok,env=GH_TOKEN"), ("tok".into(), env("GH_TOKEN")));
        assert_eq!(spec("env=GH_TOKEN"), ("GH_TOKEN".into(), env("GH_TOKEN")));
        assert_eq!(
            spec("type=env,id=GH_TOKEN"),
            ("GH_TOKEN".into(), env("GH_TOKEN"))
        );
        assert_eq!(spec("TYPE=env,ID=t,src=VAR"), ("t".into(), env("VAR")));
    }

    #[test]
    fn bad_forms_say_what_is_wrong() {
        for (raw, says) in [
            ("", "is not KEY=VALUE"),
            ("id=a,src", "\"src\" is not KEY=VALUE"),
            ("id=a,mode=0400", "unknown key \"mode\""),
            ("type=ssh,id=a", "unsupported type \"ssh\""),
            ("id=a,id=b", "id is given twice"),
            ("id=,src=x", "id is empty"),
            ("type=file", "needs id= or src="),
            ("type=env", "needs id= or env="),
            ("id=a,src=x,env=Y", "src= and env= exclude each other"),
            ("type=file,id=a,env=Y", "a file secret takes src=, not env="),
            ("id=../etc,src=x", "must be one file name"),
            ("id=..,src=x", "must be one file name"),
        ] {
            let e = parse_spec(raw).unwrap_err();
            assert!(e.contains(says), "{raw:?}: {e}");
        }
    }

    #[test]
    fn values_are_read_bounded_and_errors_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("token");
        std::fs::write(&ok, b"s3cret\n").unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_BYTES as usize + 1]).unwrap();

        let good = parse_spec(&format!("id=t,src={}", ok.display())).unwrap();
        let read = read_all(std::slice::from_ref(&good)).unwrap();
        assert_eq!(read[0].0, "t");
        assert_eq!(read[0].1.expose_secret(), b"s3cret\n");
        // The value never shows in Debug.
        let debug = format!("{read:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        // An environment variable's value, as bytes (PATH: set in any test environment).
        let path = read_all(&[parse_spec("id=p,env=PATH").unwrap()]).unwrap();
        assert_eq!(
            path[0].1.expose_secret(),
            std::env::var("PATH").unwrap().as_bytes()
        );

        let raw = format!("id=big,src={}", big.display());
        let e = format!("{:#}", read_all(&[parse_spec(&raw).unwrap()]).unwrap_err());
        assert!(e.contains(&format!("--secret {raw}")), "{e}");
        assert!(e.contains("larger than 1048576 bytes"), "{e}");

        let raw = format!("id=gone,src={}", dir.path().join("gone").display());
        let e = format!("{:#}", read_all(&[parse_spec(&raw).unwrap()]).unwrap_err());
        assert!(
            e.contains(&format!("--secret {raw}")) && e.contains("cannot read"),
            "{e}"
        );

        let e = format!(
            "{:#}",
            read_all(&[parse_spec("env=FIREBUILD_TEST_UNSET_SECRET").unwrap()]).unwrap_err()
        );
        assert!(
            e.contains("--secret env=FIREBUILD_TEST_UNSET_SECRET")
                && e.contains("FIREBUILD_TEST_UNSET_SECRET is not set"),
            "{e}"
        );

        let e = read_all(&[good.clone(), good]).unwrap_err().to_string();
        assert!(e.contains("id \"t\" is given twice"), "{e}");
    }
}
