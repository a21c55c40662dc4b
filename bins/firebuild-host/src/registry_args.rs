//! The registry flags `rootfs`, `build` and `plan` share: plain-HTTP registries and
//! credentials (flags, else Docker's `config.json`), applied to the library's [`PullOptions`].

use std::ffi::OsStr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use firebuild_rootfs::DockerConfig;
use firebuild_rootfs::registry::{Credentials, PullOptions};

/// How to reach registries.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Registry (`host:port`) to reach over plain HTTP (repeatable); loopback registries
    /// always are.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Registry user name (default: the credentials in Docker's `config.json`,
    /// `$DOCKER_CONFIG` or `~/.docker`, helpers included, as `docker pull` finds them).
    #[arg(long)]
    pub username: Option<String>,
    /// Name of the environment variable holding the registry password.
    #[arg(long, value_name = "VAR", requires = "username")]
    pub password_env: Option<String>,
}

impl RegistryArgs {
    /// Pull options over the layer cache `cache` with these flags applied.
    pub fn pull_options(&self, cache: impl Into<PathBuf>) -> anyhow::Result<PullOptions> {
        self.apply(PullOptions::new(cache))
    }

    /// Applies the flags to `pull`: the insecure registries; the credentials of `--username`
    /// (the password read from `--password-env`, empty without it), else those of Docker's
    /// `config.json` (`$DOCKER_CONFIG`, else `~/.docker`) when there is one.
    pub fn apply(&self, pull: PullOptions) -> anyhow::Result<PullOptions> {
        self.apply_with(
            pull,
            std::env::var_os("DOCKER_CONFIG").as_deref(),
            std::env::var_os("HOME").as_deref(),
        )
    }

    /// [`RegistryArgs::apply`] with `$DOCKER_CONFIG` and `$HOME` given.
    fn apply_with(
        &self,
        mut pull: PullOptions,
        docker_config_env: Option<&OsStr>,
        home_env: Option<&OsStr>,
    ) -> anyhow::Result<PullOptions> {
        pull.insecure_registries
            .clone_from(&self.insecure_registries);
        if let Some(user) = &self.username {
            let password = match &self.password_env {
                Some(var) => std::env::var(var)
                    .with_context(|| format!("cannot read the registry password from ${var}"))?,
                None => String::new(),
            };
            pull.credentials = Credentials::Basic {
                user: user.clone(),
                password,
            };
            return Ok(pull);
        }
        match DockerConfig::load_default(docker_config_env, home_env) {
            Ok(Some(config)) => Ok(pull.with_docker_config(config)),
            Ok(None) => Ok(pull),
            // As docker does: a config it cannot read is a warning, the pull goes on anonymous.
            Err(err) => {
                eprintln!(
                    "warning: registry credentials from Docker's config not used: {:#}",
                    anyhow::Error::from(err)
                );
                Ok(pull)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn args(insecure: &[&str], user: Option<&str>, var: Option<&str>) -> RegistryArgs {
        RegistryArgs {
            insecure_registries: insecure.iter().map(|s| (*s).to_owned()).collect(),
            username: user.map(str::to_owned),
            password_env: var.map(str::to_owned),
        }
    }

    #[test]
    fn flags_reach_the_pull_options() {
        let pull = args(&["reg.lan:5000"], None, None)
            .apply_with(PullOptions::new("/cache"), None, None)
            .unwrap();
        assert_eq!(pull.insecure_registries, ["reg.lan:5000"]);
        assert!(matches!(pull.credentials, Credentials::Anonymous));

        // PATH is set in any test environment: a stand-in for a password variable.
        let path = std::env::var("PATH").unwrap();
        let pull = args(&[], Some("ci"), Some("PATH"))
            .pull_options("/cache")
            .unwrap();
        let Credentials::Basic { user, password } = pull.credentials else {
            panic!("no credentials");
        };
        assert_eq!(user, "ci");
        assert_eq!(password, path);
    }

    #[test]
    fn docker_config_is_the_default_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"reg.lan:5000":{"auth":"dTpw"}}}"#,
        )
        .unwrap();
        let docker = Some(dir.path().as_os_str());
        let pull = args(&[], None, None)
            .apply_with(PullOptions::new("/cache"), docker, None)
            .unwrap();
        let Credentials::DockerConfig(config) = &pull.credentials else {
            panic!("{:?}", pull.credentials);
        };
        assert_eq!(config.path(), dir.path().join("config.json"));
        let pull = args(&[], Some("ci"), None)
            .apply_with(PullOptions::new("/cache"), docker, None)
            .unwrap();
        assert!(matches!(pull.credentials, Credentials::Basic { .. }));
        // No config: anonymous. A broken one: a warning, anonymous.
        let empty = tempfile::tempdir().unwrap();
        let pull = args(&[], None, None)
            .apply_with(
                PullOptions::new("/cache"),
                None,
                Some(empty.path().as_os_str()),
            )
            .unwrap();
        assert!(matches!(pull.credentials, Credentials::Anonymous));
        std::fs::write(empty.path().join("config.json"), "{not json").unwrap();
        let pull = args(&[], None, None)
            .apply_with(
                PullOptions::new("/cache"),
                Some(empty.path().as_os_str()),
                None,
            )
            .unwrap();
        assert!(matches!(pull.credentials, Credentials::Anonymous));
    }

    #[test]
    fn a_missing_password_variable_is_named() {
        let e = args(&[], Some("ci"), Some("FIREBUILD_TEST_UNSET_PASSWORD"))
            .pull_options("/cache")
            .unwrap_err();
        assert!(
            e.to_string().contains("$FIREBUILD_TEST_UNSET_PASSWORD"),
            "{e}"
        );
    }
}
