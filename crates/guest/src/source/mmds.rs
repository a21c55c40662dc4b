//! MMDS as a metadata source (V2 tokens), through the [`firebuild_mmds::client`].
//!
//! The answers map onto the outcomes of [`Sources::resolve`](super::Sources::resolve):
//! a document → found; 404, an empty document `{}` or a switched-off guest side (503) → absent;
//! no answer, a refused token or any other status → unreachable (an outage: the guest keeps its
//! identity); a body that is not JSON → invalid.
//!
//! # Other clouds' layouts
//!
//! A host that fills MMDS for cloud-init writes EC2's tree (`latest/meta-data/...`) or
//! OpenStack's (`openstack/latest/meta_data.json`) instead of our document. The root decides:
//!
//! - any key besides `latest`, `openstack` (and the guest's own status, `guest`) → our
//!   document, which wins; the layout subtrees next to it are dropped before validation;
//! - only layout keys, or a 404 at the root → the EC2 layout is read path by path, then
//!   OpenStack's (only the layouts whose top key is in the root, both after a 404), on the same
//!   server, with the same token and within the same deadline. The first that has anything is
//!   mapped onto the schema ([`Fetch::Mapped`], origin `<url>/latest (EC2 layout)` or
//!   `<url>/openstack/latest (OpenStack layout)`, revision the root's ETag); what it could not
//!   map is in the notes. A 404 on every path of every layout is absent ("no metadata"); an
//!   outage while reading one is an outage.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use firebuild_mmds::client::{Client, ClientConfig, Error as MmdsError};
use futures::future::BoxFuture;

use super::layout::Reader;
use super::{Document, Fetch, MetadataSource, SourceError, ec2, openstack};

/// How long reading a layout after a change seen by [`MmdsSource::watch`] may take.
const LAYOUT_READ: Duration = Duration::from_secs(10);

/// What the root of the MMDS tree holds.
#[derive(Debug, PartialEq)]
enum Root {
    /// Our document (layout subtrees next to it removed).
    Own(serde_json::Value),
    /// No document of ours; which layouts' top keys are there.
    Layouts { ec2: bool, openstack: bool },
}

/// The top-level key of the guest's own status (`/guest/status`): written by the guest, not
/// metadata.
fn guest_status_key() -> &'static str {
    firebuild_mmds::schema::GUEST_STATUS_POINTER
        .split('/')
        .nth(1)
        .unwrap_or_default()
}

impl Root {
    fn of(json: serde_json::Value) -> Self {
        let serde_json::Value::Object(mut map) = json else {
            return Self::Own(json);
        };
        let layouts = [ec2::TOP, openstack::TOP];
        let (ec2, openstack) = (map.contains_key(ec2::TOP), map.contains_key(openstack::TOP));
        let own = map
            .keys()
            .any(|k| !layouts.contains(&k.as_str()) && k != guest_status_key());
        if !own {
            return Self::Layouts { ec2, openstack };
        }
        for top in layouts {
            if map.remove(top).is_some() {
                tracing::debug!(
                    layout = top,
                    "the firebuild document at the MMDS root wins over the `{top}` layout next to it"
                );
            }
        }
        Self::Own(serde_json::Value::Object(map))
    }
}

/// Firecracker's MMDS address.
pub const DEFAULT_URL: &str = "http://169.254.169.254";

/// MMDS, asked over HTTP with a V2 session token.
#[derive(Debug, Clone)]
pub struct MmdsSource {
    url: String,
    addr: Result<SocketAddr, String>,
}

/// `http://IP[:PORT]` → the socket address (port 80 by default). Only IP literals: the guest
/// resolves no names before it is configured.
pub fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let hostport = rest.split('/').next().unwrap_or("");
    if let Ok(addr) = hostport.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let host = hostport.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 80))
        .map_err(|_| format!("{url}: the host must be an IP address"))
}

impl MmdsSource {
    /// A source asking the MMDS at `url` (`http://169.254.169.254`, `http://127.0.0.1:8080`).
    pub fn new(url: String) -> Self {
        Self {
            addr: parse_url(&url),
            url,
        }
    }

    fn client(&self, deadline: Instant) -> Result<Client, SourceError> {
        let addr = self.addr.clone().map_err(|e| SourceError::Invalid {
            source_name: "mmds".into(),
            origin: self.url.clone(),
            source: e.into(),
        })?;
        let left = deadline.saturating_duration_since(Instant::now());
        let mut cfg = ClientConfig::with_addr(addr);
        cfg.deadline = left.max(Duration::from_millis(1));
        cfg.attempt_timeout = cfg.attempt_timeout.min(cfg.deadline);
        Ok(Client::new(cfg))
    }

    fn classify(&self, e: MmdsError) -> Result<Fetch, SourceError> {
        match e {
            MmdsError::NotFound { .. } | MmdsError::Disabled => Ok(Fetch::Absent),
            e @ MmdsError::Json { .. } => Err(SourceError::Invalid {
                source_name: "mmds".into(),
                origin: self.url.clone(),
                source: Box::new(e),
            }),
            e => Err(SourceError::Unreachable {
                source_name: "mmds".into(),
                source: Box::new(e),
            }),
        }
    }

    /// Our document, or another cloud's layout when the root holds none (see the module docs).
    async fn read_root(
        &self,
        client: &Client,
        json: serde_json::Value,
        etag: Option<String>,
        deadline: Instant,
    ) -> Result<Fetch, SourceError> {
        match Root::of(json) {
            Root::Own(json) => Ok(Fetch::Found(Document {
                json,
                revision: etag,
                origin: self.url.clone(),
            })),
            Root::Layouts { ec2, openstack } => {
                self.layouts(client, ec2, openstack, etag, deadline).await
            }
        }
    }

    /// Reads the EC2 layout, then OpenStack's (those asked for); absent when neither has
    /// anything.
    async fn layouts(
        &self,
        client: &Client,
        try_ec2: bool,
        try_openstack: bool,
        etag: Option<String>,
        deadline: Instant,
    ) -> Result<Fetch, SourceError> {
        let reader = Reader::new(client, deadline, &self.url);
        let mut found = None;
        if try_ec2 {
            found = ec2::read(&reader).await?.map(|m| (m, ec2::ORIGIN));
        }
        if found.is_none() && try_openstack {
            found = openstack::read(&reader)
                .await?
                .map(|m| (m, openstack::ORIGIN));
        }
        let Some((mapped, origin)) = found else {
            return Ok(Fetch::Absent);
        };
        let (json, notes) = mapped.finish();
        Ok(Fetch::Mapped {
            document: Document {
                json,
                revision: etag,
                origin: format!("{}{origin}", self.url),
            },
            notes,
        })
    }
}

impl MetadataSource for MmdsSource {
    fn name(&self) -> &str {
        "mmds"
    }

    fn fetch(&self, deadline: Instant) -> BoxFuture<'_, Result<Fetch, SourceError>> {
        Box::pin(async move {
            let client = self.client(deadline)?;
            match client.get_json("/").await {
                Ok((json, etag)) => self.read_root(&client, json, Some(etag), deadline).await,
                // Nothing at the root: a server that serves only the layouts' paths.
                Err(MmdsError::NotFound { .. }) => {
                    self.layouts(&client, true, true, None, deadline).await
                }
                Err(e) => self.classify(e),
            }
        })
    }

    fn watch<'a>(
        &'a self,
        revision: Option<&'a str>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Option<Document>, SourceError>> {
        Box::pin(async move {
            let Some(revision) = revision else {
                return match self.fetch(deadline).await? {
                    Fetch::Found(doc) | Fetch::Mapped { document: doc, .. } => Ok(Some(doc)),
                    _ => Ok(None),
                };
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            // The call's own deadline covers the long-poll plus connection set-up.
            let client = self.client(deadline + Duration::from_secs(10))?;
            match client.wait_for_change("/", revision, wait).await {
                Ok(None) => Ok(None),
                Ok(Some((json, etag))) => {
                    let until = Instant::now() + LAYOUT_READ;
                    match self.read_root(&client, json, Some(etag), until).await? {
                        Fetch::Found(doc) | Fetch::Mapped { document: doc, .. } => Ok(Some(doc)),
                        _ => Ok(None),
                    }
                }
                Err(e) => self.classify(e).map(|_| None),
            }
        })
    }

    fn needs_network(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://169.254.169.254").unwrap(),
            "169.254.169.254:80".parse().unwrap()
        );
        assert_eq!(
            parse_url("http://127.0.0.1:8080/latest").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            parse_url("http://[::1]").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(parse_url("https://1.2.3.4").is_err());
        assert!(parse_url("http://metadata.internal").is_err());
    }

    async fn server(data: serde_json::Value) -> firebuild_mmds::server::ServerHandle {
        firebuild_mmds::server::Server::builder()
            .initial_data(data)
            .start()
            .await
            .unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn found_absent_and_unreachable() {
        let srv = server(serde_json::json!({"hostname": "h1"})).await;
        let src = MmdsSource::new(format!("http://{}", srv.local_addr()));
        let Fetch::Found(doc) = src.fetch(soon()).await.unwrap() else {
            panic!("not found")
        };
        assert_eq!(doc.json["hostname"], "h1");
        assert_eq!(doc.revision.as_deref(), Some(srv.get().etag.as_str()));

        srv.put(serde_json::json!({})).unwrap();
        assert_eq!(src.fetch(soon()).await.unwrap(), Fetch::Absent);
        srv.put(serde_json::json!({"hostname": "h1"})).unwrap();
        srv.set_guest_enabled(false);
        assert_eq!(src.fetch(soon()).await.unwrap(), Fetch::Absent);
        let addr = srv.local_addr();
        srv.shutdown().await;

        let down = MmdsSource::new(format!("http://{addr}"));
        let err = down
            .fetch(Instant::now() + Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.is_outage(), "{err}");
    }

    #[tokio::test]
    async fn watch_returns_the_changed_document() {
        let srv = server(serde_json::json!({"hostname": "h1"})).await;
        let src = MmdsSource::new(format!("http://{}", srv.local_addr()));
        let first = src.watch(None, soon()).await.unwrap().unwrap();
        let rev = first.revision.clone().unwrap();
        let waiter = src.watch(Some(&rev), Instant::now() + Duration::from_secs(20));
        let patch = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            srv.patch(&serde_json::json!({"hostname": "h2"})).unwrap()
        };
        let (changed, new_etag) = tokio::join!(waiter, patch);
        let changed = changed.unwrap().unwrap();
        assert_eq!(changed.json["hostname"], "h2");
        assert_eq!(changed.revision.as_deref(), Some(new_etag.as_str()));
        srv.shutdown().await;
    }
}
