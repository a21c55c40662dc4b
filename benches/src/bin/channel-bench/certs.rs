//! A throwaway per-run PKI from `firebuild-pki`, written to a directory so that separate server
//! and client processes share it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use firebuild_pki::{BuildId, BuildPki, ClientBundle, ClientPolicy, ServerBundle, Validity};

/// The name clients verify the server certificate against (one of the `certs --san` values).
pub const SERVER_NAME: &str = "127.0.0.1";

const BUILD_ID: &str = "channel-bench";

const FILES: [&str; 5] = [
    "ca.pem",
    "server.pem",
    "server-key.pem",
    "client.pem",
    "client-key.pem",
];

/// Mints a CA, a server certificate for `sans` and a client certificate bound to the bench's
/// build id, and writes them as PEM into `dir` (keys 0600).
pub fn mint_to_dir(dir: &Path, sans: &[String]) -> anyhow::Result<()> {
    let build = BuildId::new(BUILD_ID)?;
    let pki = BuildPki::generate(build, sans, &Validity::default())?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let texts = [
        pki.server.ca_cert_pem(),
        pki.server.cert_pem(),
        pki.server.key_pem().expose_secret(),
        pki.client.cert_pem(),
        pki.client.key_pem().expose_secret(),
    ];
    for (name, text) in FILES.iter().zip(texts) {
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The PKI read back from a directory written by [`mint_to_dir`].
pub struct Loaded {
    /// Host side.
    pub server: ServerBundle,
    /// Guest side.
    pub client: ClientBundle,
    /// The build id bound into the client certificate.
    pub build_id: BuildId,
}

impl Loaded {
    /// Reads and parses the five PEM files.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        let [ca, server_cert, server_key, client_cert, client_key] = FILES.map(read);
        let ca = ca?;
        Ok(Self {
            server: ServerBundle::from_pem(&ca, &server_cert?, &server_key?)?,
            client: ClientBundle::from_pem(&ca, &client_cert?, &client_key?)?,
            build_id: BuildId::new(BUILD_ID)?,
        })
    }

    /// rustls server config for the raw TLS baseline: client certificate of this build required.
    pub fn raw_server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        Ok(self
            .server
            .server_config(&ClientPolicy::Build(self.build_id.clone()))?)
    }

    /// rustls client config for the raw TLS baseline.
    pub fn raw_client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        Ok(self.client.client_config()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_directory_loads_back_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        mint_to_dir(dir.path(), &["127.0.0.1".to_owned()]).unwrap();
        let mode = |name: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("server-key.pem"), 0o600);
        assert_eq!(mode("client-key.pem"), 0o600);
        let loaded = Loaded::from_dir(dir.path()).unwrap();
        assert_eq!(
            firebuild_pki::client_build_id(&loaded.client.cert_chain_der()[0]),
            Some(loaded.build_id.clone())
        );
        loaded.raw_server_config().unwrap();
        loaded.raw_client_config().unwrap();
    }
}
