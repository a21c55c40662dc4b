//! The OCI image configuration (`application/vnd.oci.image.config.v1+json`) and its mapping onto
//! [`firebuild_plan::ImageConfig`].

use std::collections::BTreeMap;

use firebuild_plan::{Command, EnvVar, Healthcheck, ImageConfig, StepContext, default_shell};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Largest image config or manifest accepted (bytes); bounds the JSON decoders.
pub const MAX_JSON_BYTES: usize = 4 << 20;

/// The error for a JSON document of `len` bytes, over [`MAX_JSON_BYTES`].
pub(crate) fn json_too_large(what: impl Into<String>, len: impl std::fmt::Display) -> Error {
    Error::Image {
        what: what.into(),
        reason: format!("{len} bytes exceeds the {MAX_JSON_BYTES}-byte limit"),
    }
}

/// Decodes a JSON document `what` of at most [`MAX_JSON_BYTES`].
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    if bytes.len() > MAX_JSON_BYTES {
        return Err(json_too_large(what, bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what.to_owned(),
        source,
    })
}

/// The parts of an OCI/Docker image config that firebuild uses. Unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciImageConfig {
    /// CPU architecture (`amd64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// Creation time as written by the image builder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The run configuration.
    #[serde(default)]
    pub config: OciRunConfig,
    /// Uncompressed layer digests.
    #[serde(default)]
    pub rootfs: OciRootfs,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciRootfs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digest of each layer's uncompressed tar, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// `config` of an image config (Docker's capitalised field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OciRunConfig {
    /// `USER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `EXPOSE` (`"80/tcp": {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// `ENV` as `NAME=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// `ENTRYPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    /// `WORKDIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `LABEL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `STOPSIGNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `SHELL` (Docker extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// `ONBUILD` (Docker extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    /// `HEALTHCHECK` (Docker extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<OciHealthcheck>,
}

/// `Healthcheck` of a Docker image config: durations in nanoseconds, zero meaning unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OciHealthcheck {
    /// `[]` (inherit), `["NONE"]`, `["CMD", arg...]` or `["CMD-SHELL", command]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// `--interval`, in nanoseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: u64,
    /// `--timeout`, in nanoseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    /// `--start-period`, in nanoseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: u64,
    /// `--start-interval`, in nanoseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: u64,
    /// `--retries`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl OciHealthcheck {
    /// The plan's form of the check; `None` for an empty test (inherit: nothing to say).
    pub fn to_plan(&self) -> Option<Healthcheck> {
        let ms = |ns: u64| (ns > 0).then_some(ns / 1_000_000);
        let command = match self.test.split_first()? {
            (kind, _) if kind == "NONE" => return Some(Healthcheck::None),
            (kind, rest) if kind == "CMD" => Command::Exec(rest.to_vec()),
            (kind, rest) if kind == "CMD-SHELL" => Command::Shell(rest.join(" ")),
            // Docker's legacy form: no keyword, the argv itself.
            _ => Command::Exec(self.test.clone()),
        };
        Some(Healthcheck::Cmd {
            command,
            interval_ms: ms(self.interval),
            timeout_ms: ms(self.timeout),
            start_period_ms: ms(self.start_period),
            start_interval_ms: ms(self.start_interval),
            retries: (self.retries > 0).then(|| u32::try_from(self.retries).unwrap_or(u32::MAX)),
        })
    }
}

impl OciImageConfig {
    /// Decodes a config blob (bounded by [`MAX_JSON_BYTES`]).
    pub fn from_slice(bytes: &[u8], what: &str) -> Result<Self> {
        decode_json(bytes, what)
    }

    /// The layers' uncompressed digests, validated.
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        self.rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d))
            .collect()
    }

    /// The step context a stage built `FROM` this image starts in: the image's env, workdir
    /// (`/` when unset), user and shell (`/bin/sh -c` when unset); no args.
    pub fn starting_context(&self) -> StepContext {
        let ic = self.to_image_config();
        StepContext {
            env: ic.env,
            args: Vec::new(),
            workdir: ic.workdir.unwrap_or_else(|| "/".to_owned()),
            user: ic.user,
            shell: ic.shell.unwrap_or_else(default_shell),
        }
    }

    /// Maps the run configuration onto the build plan's image config: what a stage built
    /// `FROM` this image starts with (env, user, workdir, cmd, entrypoint, ports, labels...).
    pub fn to_image_config(&self) -> ImageConfig {
        let c = &self.config;
        let env = c
            .env
            .iter()
            .flatten()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => EnvVar::new(k, v),
                None => EnvVar::new(kv.as_str(), ""),
            })
            .collect();
        let keys = |m: &Option<BTreeMap<String, serde_json::Value>>| -> Vec<String> {
            m.iter().flat_map(|m| m.keys().cloned()).collect()
        };
        ImageConfig {
            env,
            cmd: c.cmd.clone().map(Command::Exec),
            entrypoint: c.entrypoint.clone().map(Command::Exec),
            workdir: c.working_dir.clone().filter(|w| !w.is_empty()),
            user: c.user.clone().filter(|u| !u.is_empty()),
            shell: c.shell.clone(),
            exposed_ports: keys(&c.exposed_ports),
            labels: c.labels.clone().unwrap_or_default(),
            volumes: keys(&c.volumes),
            stop_signal: c.stop_signal.clone(),
            healthcheck: c.healthcheck.as_ref().and_then(OciHealthcheck::to_plan),
            onbuild: c.on_build.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_docker_style_config() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{"User":"1000:1000",
            "Env":["PATH=/usr/bin:/bin","EMPTY="],"Entrypoint":["/init"],"Cmd":["-v"],
            "WorkingDir":"/srv","ExposedPorts":{"80/tcp":{},"53/udp":{}},
            "Labels":{"a":"b"}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let cfg = OciImageConfig::from_slice(json, "config").unwrap();
        let ic = cfg.to_image_config();
        assert_eq!(ic.user.as_deref(), Some("1000:1000"));
        assert_eq!(ic.env[0], EnvVar::new("PATH", "/usr/bin:/bin"));
        assert_eq!(ic.env[1], EnvVar::new("EMPTY", ""));
        assert_eq!(ic.entrypoint, Some(Command::Exec(vec!["/init".into()])));
        assert_eq!(ic.cmd, Some(Command::Exec(vec!["-v".into()])));
        assert_eq!(ic.workdir.as_deref(), Some("/srv"));
        assert_eq!(
            ic.exposed_ports,
            vec!["53/udp".to_string(), "80/tcp".to_string()]
        );
        assert_eq!(ic.labels.get("a").map(String::as_str), Some("b"));
        let ctx = cfg.starting_context();
        assert_eq!(ctx.workdir, "/srv");
        assert_eq!(ctx.user.as_deref(), Some("1000:1000"));
        assert_eq!(ctx.shell, default_shell());
        assert_eq!(ctx.env.len(), 2);
        assert_eq!(ic.healthcheck, None);
        let bare = OciImageConfig::from_slice(b"{}", "config")
            .unwrap()
            .starting_context();
        assert_eq!(bare, StepContext::default());
    }

    #[test]
    fn maps_every_field_imageconfig_models() {
        let json = br#"{"config":{"Env":["A=1"],"Entrypoint":["/e"],"Cmd":["c"],
            "WorkingDir":"/w","User":"u","ExposedPorts":{"80/tcp":{}},"Labels":{"l":"v"},
            "Volumes":{"/v":{}},"StopSignal":"SIGINT","Shell":["/bin/bash","-c"],
            "OnBuild":["RUN x"],"Healthcheck":{"Test":["CMD-SHELL","curl -f localhost"],
            "Interval":30000000000,"Timeout":5000000000,"StartPeriod":1000000000,
            "StartInterval":2000000000,"Retries":3}}}"#;
        let ic = OciImageConfig::from_slice(json, "config")
            .unwrap()
            .to_image_config();
        let exec = |w: &str| Some(Command::Exec(vec![w.to_owned()]));
        let want = ImageConfig {
            env: vec![EnvVar::new("A", "1")],
            cmd: exec("c"),
            entrypoint: exec("/e"),
            workdir: Some("/w".into()),
            user: Some("u".into()),
            shell: Some(vec!["/bin/bash".into(), "-c".into()]),
            exposed_ports: vec!["80/tcp".into()],
            labels: BTreeMap::from([("l".into(), "v".into())]),
            volumes: vec!["/v".into()],
            stop_signal: Some("SIGINT".into()),
            healthcheck: Some(Healthcheck::Cmd {
                command: Command::Shell("curl -f localhost".into()),
                interval_ms: Some(30_000),
                timeout_ms: Some(5_000),
                start_period_ms: Some(1_000),
                start_interval_ms: Some(2_000),
                retries: Some(3),
            }),
            onbuild: vec!["RUN x".into()],
        };
        assert_eq!(ic, want);
        let none = br#"{"config":{"Healthcheck":{"Test":["NONE"]}}}"#;
        let ic = OciImageConfig::from_slice(none, "config")
            .unwrap()
            .to_image_config();
        assert_eq!(ic.healthcheck, Some(Healthcheck::None));
        let cmd = br#"{"config":{"Healthcheck":{"Test":["CMD","/check","-q"]}}}"#;
        let ic = OciImageConfig::from_slice(cmd, "config")
            .unwrap()
            .to_image_config();
        assert!(
            matches!(ic.healthcheck, Some(Healthcheck::Cmd { command: Command::Exec(argv), interval_ms: None, .. }) if argv == ["/check", "-q"])
        );
    }
}
