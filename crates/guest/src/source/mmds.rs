//! MMDS as a metadata source (V2 tokens), through the [`firebuild_mmds::client`].
//!
//! The answers map onto the outcomes of [`Sources::resolve`](super::Sources::resolve):
//! a document → found; 404, an empty document `{}` or a switched-off guest side (503) → absent;
//! no answer, a refused token or any other status → unreachable (an outage: the guest keeps its
//! identity); a body that is not JSON → invalid.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use firebuild_mmds::client::{Client, ClientConfig, Error as MmdsError};
use futures::future::BoxFuture;

use super::{Document, Fetch, MetadataSource, SourceError};

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

    fn document(&self, json: serde_json::Value, etag: String) -> Fetch {
        if json.as_object().is_some_and(|o| o.is_empty()) {
            return Fetch::Absent;
        }
        Fetch::Found(Document {
            json,
            revision: Some(etag),
            origin: self.url.clone(),
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
                Ok((json, etag)) => Ok(self.document(json, etag)),
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
                    Fetch::Found(doc) => Ok(Some(doc)),
                    _ => Ok(None),
                };
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            // The call's own deadline covers the long-poll plus connection set-up.
            let client = self.client(deadline + Duration::from_secs(10))?;
            match client.wait_for_change("/", revision, wait).await {
                Ok(None) => Ok(None),
                Ok(Some((json, etag))) => match self.document(json, etag) {
                    Fetch::Found(doc) => Ok(Some(doc)),
                    _ => Ok(None),
                },
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
