//! `ADD <url>`: the host downloads the files a plan's URL sources name before the build VM
//! starts, and the bootstrap server serves them to the guest like context files
//! ([`firebuild_bootstrap::DirSource::with_urls`]).
//!
//! http and https only (https through rustls), redirects followed (at most [`MAX_REDIRECTS`]),
//! at most [`MAX_URL_BYTES`] per file, streamed to disk. `--checksum=sha256:<hex>` is verified.
//! Files are cached by content digest under `<cache>/urls/sha256/` (mode 0600, what buildkit
//! gives a downloaded file); a URL whose checksum is already cached needs no network, and a URL
//! without a checksum is revalidated with the validators (`ETag`, `Last-Modified`) of its last
//! download, kept in `<cache>/urls/index/`. A git URL is refused: firebuild does not clone.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use firebuild_plan::{BuildPlan, Source, StepKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;
use tracing::{debug, info};

use crate::{Error, Result};

/// The largest file `ADD <url>` downloads (2 GiB).
pub const MAX_URL_BYTES: u64 = 2 << 30;

/// Redirects followed before a download fails.
pub const MAX_REDIRECTS: usize = 10;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the next bytes of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Why one URL could not be fetched (inside [`Error::Fetch`], which names the URL).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// `git@...`, `git://...` or a `*.git` URL.
    #[error(
        "ADD of a git repository is not supported: clone it in a RUN step or into the build context"
    )]
    GitRepository,
    /// Not an http or https URL.
    #[error("unsupported URL (http and https only)")]
    Scheme,
    /// `--checksum` is not `sha256:<64 hex digits>`.
    #[error("unsupported checksum {checksum:?} (expected sha256:<64 hex digits>)")]
    BadChecksum {
        /// As written.
        checksum: String,
    },
    /// The download does not match `--checksum`.
    #[error("checksum mismatch: expected sha256:{expected}, got sha256:{actual}")]
    ChecksumMismatch {
        /// Hex digest from the Dockerfile (lower case).
        expected: String,
        /// Hex digest of what was downloaded.
        actual: String,
    },
    /// The server answered with a status other than success.
    #[error("the server answered HTTP {status}")]
    Status {
        /// The HTTP status code.
        status: u16,
    },
    /// The file is larger than allowed.
    #[error("larger than {max} bytes")]
    TooLarge {
        /// The limit ([`MAX_URL_BYTES`]).
        max: u64,
    },
    /// The request failed (connection, TLS, too many redirects, timeout).
    #[error("request failed")]
    Request(#[source] reqwest::Error),
    /// The download cache could not be read or written.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Downloads every `ADD <url>` source of `plan` into `cache_dir/urls/` and returns the file of
/// each resource id, for [`firebuild_bootstrap::DirSource::with_urls`]. A URL named twice is
/// fetched once. Fails on the first URL that cannot be fetched ([`Error::Fetch`] names it).
pub async fn fetch_urls(plan: &BuildPlan, cache_dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let sources = url_sources(plan);
    if sources.is_empty() {
        return Ok(BTreeMap::new());
    }
    let fetcher = Fetcher::new(cache_dir, MAX_URL_BYTES, reqwest::Client::builder())?;
    fetcher.fetch_all(&sources).await
}

/// `(id, url, checksum)` of every URL source, in plan order.
fn url_sources(plan: &BuildPlan) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for (_, step) in plan.steps() {
        let (StepKind::Add(t) | StepKind::Copy(t)) = &step.kind else {
            continue;
        };
        for source in &t.sources {
            if let Source::Url {
                url, checksum, id, ..
            } = source
            {
                out.push((id.clone(), url.clone(), checksum.clone()));
            }
        }
    }
    out
}

/// Whether `url` names a git repository (buildkit's git transports and `.git` suffix).
fn is_git(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    if ["git@", "git://", "git+", "ssh://"]
        .iter()
        .any(|p| lower.starts_with(p))
    {
        return true;
    }
    let base = lower.split(['#', '?']).next().unwrap_or_default();
    base.trim_end_matches('/').ends_with(".git")
}

/// The hex digest of `sha256:<hex>`, lower case.
fn parse_checksum(checksum: &str) -> std::result::Result<String, FetchError> {
    let bad = || FetchError::BadChecksum {
        checksum: checksum.to_owned(),
    };
    let hex = checksum.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(hex.to_ascii_lowercase())
}

/// What the cache remembers of a URL fetched without a checksum.
#[derive(Debug, Serialize, Deserialize)]
struct IndexEntry {
    url: String,
    sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
}

struct Fetcher {
    client: reqwest::Client,
    blobs: PathBuf,
    index: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
}

impl Fetcher {
    fn new(cache_dir: &Path, max_bytes: u64, builder: reqwest::ClientBuilder) -> Result<Self> {
        let root = cache_dir.join("urls");
        let blobs = root.join("sha256");
        let index = root.join("index");
        let tmp = root.join("tmp");
        for dir in [&blobs, &index, &tmp] {
            std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        }
        let client = builder
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("firebuild/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Invalid {
                what: "HTTP client",
                reason: e.to_string(),
            })?;
        Ok(Self {
            client,
            blobs,
            index,
            tmp,
            max_bytes,
        })
    }

    async fn fetch_all(
        &self,
        sources: &[(String, String, Option<String>)],
    ) -> Result<BTreeMap<String, PathBuf>> {
        let mut done: BTreeMap<(&str, Option<&str>), PathBuf> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (id, url, checksum) in sources {
            let key = (url.as_str(), checksum.as_deref());
            let path = match done.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let p = self
                        .fetch(url, checksum.as_deref())
                        .await
                        .map_err(|source| Error::Fetch {
                            location: String::new(),
                            url: url.clone(),
                            source,
                        })?;
                    done.insert(key, p.clone());
                    p
                }
            };
            out.insert(id.clone(), path);
        }
        Ok(out)
    }

    fn blob(&self, hex: &str) -> PathBuf {
        self.blobs.join(hex)
    }

    fn index_path(&self, url: &str) -> PathBuf {
        self.index.join(format!(
            "{}.json",
            hex::encode(Sha256::digest(url.as_bytes()))
        ))
    }

    async fn fetch(
        &self,
        url: &str,
        checksum: Option<&str>,
    ) -> std::result::Result<PathBuf, FetchError> {
        if is_git(url) {
            return Err(FetchError::GitRepository);
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| FetchError::Scheme)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(FetchError::Scheme);
        }
        let expected = checksum.map(parse_checksum).transpose()?;
        if let Some(hex) = &expected {
            let blob = self.blob(hex);
            if blob.is_file() {
                debug!(url, "ADD <url> found in the download cache");
                return Ok(blob);
            }
        }

        let index_path = self.index_path(url);
        let known = std::fs::read(&index_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<IndexEntry>(&b).ok())
            .filter(|e| e.url == url && self.blob(&e.sha256).is_file());
        let mut request = self.client.get(parsed);
        if let (Some(entry), None) = (&known, &expected) {
            if let Some(etag) = &entry.etag {
                request = request.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &entry.last_modified {
                request = request.header(reqwest::header::IF_MODIFIED_SINCE, lm);
            }
        }
        let mut response = request.send().await.map_err(FetchError::Request)?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED
            && let Some(entry) = &known
        {
            debug!(url, "ADD <url> not modified since it was cached");
            return Ok(self.blob(&entry.sha256));
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                status: status.as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|len| len > self.max_bytes)
        {
            return Err(FetchError::TooLarge {
                max: self.max_bytes,
            });
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header(reqwest::header::ETAG);
        let last_modified = header(reqwest::header::LAST_MODIFIED);

        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| FetchError::Io { op, path, source }
        };
        // Created 0600; removed on drop unless persisted.
        let tmp = tempfile::NamedTempFile::new_in(&self.tmp).map_err(io("create", &self.tmp))?;
        let mut file =
            tokio::fs::File::from_std(tmp.as_file().try_clone().map_err(io("open", tmp.path()))?);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(FetchError::Request)? {
            size += chunk.len() as u64;
            if size > self.max_bytes {
                return Err(FetchError::TooLarge {
                    max: self.max_bytes,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(io("write", tmp.path()))?;
        }
        file.flush().await.map_err(io("write", tmp.path()))?;
        file.sync_all().await.map_err(io("sync", tmp.path()))?;
        drop(file);
        let actual = hex::encode(hasher.finalize());
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(FetchError::ChecksumMismatch { expected, actual });
        }
        let blob = self.blob(&actual);
        tmp.persist(&blob).map_err(|e| FetchError::Io {
            op: "store",
            path: blob.clone(),
            source: e.error,
        })?;
        info!(url, bytes = size, sha256 = %actual, "ADD <url> downloaded");
        let entry = IndexEntry {
            url: url.to_owned(),
            sha256: actual,
            etag,
            last_modified,
        };
        // The index only saves a download next time: failing to write it is not an error.
        if let Err(e) = self.write_index(&index_path, &entry) {
            debug!(url, error = %e, "cannot record the download in the cache index");
        }
        Ok(blob)
    }

    fn write_index(&self, path: &Path, entry: &IndexEntry) -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.tmp)?;
        tmp.write_all(&serde_json::to_vec(entry).map_err(std::io::Error::other)?)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use firebuild_plan::{Origin, Span, Step, StepContext, Transfer};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    const BODY: &[u8] = b"hello from the test server\n";

    /// A tiny HTTP/1.1 server: `/file` (with Content-Length and an ETag), `/nolength` (body
    /// until close), `/redirect` (302 to `/file`), `/loop` (redirects to itself), else 404.
    /// Returns its address, counters of requests and of 304 answers, and the task (abort it to
    /// stop the server).
    async fn http_server() -> (String, Arc<[AtomicUsize; 2]>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let counter = Arc::clone(&hits);
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counter[0].fetch_add(1, Ordering::SeqCst);
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let revalidate = head.to_ascii_lowercase().contains("if-none-match: \"v1\"");
                    let mut out = Vec::new();
                    match path.as_str() {
                        "/file" if revalidate => {
                            counter[1].fetch_add(1, Ordering::SeqCst);
                            out.extend_from_slice(
                                b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n",
                            );
                        }
                        "/file" => {
                            out.extend_from_slice(
                                format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n",
                                    BODY.len()
                                )
                                .as_bytes(),
                            );
                            out.extend_from_slice(BODY);
                        }
                        "/nolength" => {
                            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                            out.extend_from_slice(&[b'x'; 4096]);
                        }
                        "/redirect" => out.extend_from_slice(
                            b"HTTP/1.1 302 Found\r\nLocation: /file\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        ),
                        "/loop" => out.extend_from_slice(
                            b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        ),
                        _ => out.extend_from_slice(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        ),
                    }
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, &out).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut conn).await;
                });
            }
        });
        (format!("http://{addr}"), hits, task)
    }

    fn plan(urls: &[(&str, String, Option<String>)]) -> BuildPlan {
        let sources = urls
            .iter()
            .map(|(id, url, checksum)| Source::Url {
                url: url.clone(),
                checksum: checksum.clone(),
                id: (*id).to_owned(),
                target: "/dl".into(),
            })
            .collect();
        BuildPlan::scratch(vec![Step {
            index: 0,
            span: Span::lines(2, 2),
            context: StepContext::default(),
            kind: StepKind::Add(Transfer::new(Origin::Context, sources, "/dl")),
        }])
    }

    use firebuild_dockerfile::error::chain;

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    /// What `fetch_urls` does, without proxies from the environment and with a size limit.
    async fn fetch(plan: &BuildPlan, cache: &Path, max: u64) -> Result<BTreeMap<String, PathBuf>> {
        let f = Fetcher::new(cache, max, reqwest::Client::builder().no_proxy())?;
        f.fetch_all(&url_sources(plan)).await
    }

    #[tokio::test]
    async fn checksum_ok_then_cache_hit_without_network() {
        let (base, hits, server) = http_server().await;
        let cache = tempfile::tempdir().unwrap();
        let url = format!("{base}/file");
        let p = plan(&[
            ("u1", url.clone(), Some(sha(BODY))),
            ("u2", format!("{base}/redirect"), None),
        ]);
        let files = fetch(&p, cache.path(), MAX_URL_BYTES).await.unwrap();
        assert_eq!(std::fs::read(&files["u1"]).unwrap(), BODY);
        // The redirect was followed to the same content: one cached file.
        assert_eq!(files["u1"], files["u2"]);
        assert!(files["u1"].starts_with(cache.path().join("urls")));
        let mode = std::fs::metadata(&files["u1"])
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(hits[0].load(Ordering::SeqCst) >= 3);

        // Server gone: a URL with a checksum already cached needs no network...
        server.abort();
        let _ = server.await;
        let before = hits[0].load(Ordering::SeqCst);
        let again = fetch(
            &plan(&[("u1", url.clone(), Some(sha(BODY)))]),
            cache.path(),
            100,
        )
        .await
        .unwrap();
        assert_eq!(again["u1"], files["u1"]);
        assert_eq!(hits[0].load(Ordering::SeqCst), before);
        // ...while one without a checksum must ask the server.
        let err = fetch(&plan(&[("u1", url.clone(), None)]), cache.path(), 100)
            .await
            .unwrap_err();
        assert!(chain(&err).contains("request failed"), "{}", chain(&err));
    }

    #[tokio::test]
    async fn unchanged_url_without_checksum_is_revalidated() {
        let (base, hits, _server) = http_server().await;
        let cache = tempfile::tempdir().unwrap();
        let p = plan(&[("u", format!("{base}/file"), None)]);
        let first = fetch(&p, cache.path(), MAX_URL_BYTES).await.unwrap();
        assert_eq!(hits[1].load(Ordering::SeqCst), 0);
        // The server answers 304 to the cached ETag: the cached file is used.
        let second = fetch(&p, cache.path(), MAX_URL_BYTES).await.unwrap();
        assert_eq!(
            hits[1].load(Ordering::SeqCst),
            1,
            "the second fetch was a 304"
        );
        assert_eq!(first, second);
        assert_eq!(std::fs::read(&second["u"]).unwrap(), BODY);
    }

    #[tokio::test]
    async fn checksum_mismatch_names_the_url_and_both_digests() {
        let (base, _hits, _server) = http_server().await;
        let cache = tempfile::tempdir().unwrap();
        let url = format!("{base}/file");
        let wrong = sha(b"something else");
        let err = fetch(
            &plan(&[("u", url.clone(), Some(wrong.clone()))]),
            cache.path(),
            MAX_URL_BYTES,
        )
        .await
        .unwrap_err();
        let text = chain(&err);
        assert!(text.contains(&url), "{text}");
        assert!(text.contains(&wrong), "{text}");
        assert!(text.contains(&sha(BODY)), "{text}");
        // Nothing was kept.
        assert_eq!(
            std::fs::read_dir(cache.path().join("urls/sha256"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(cache.path().join("urls/tmp"))
                .unwrap()
                .count(),
            0
        );

        let err = fetch(
            &plan(&[("u", url, Some("md5:abc".into()))]),
            cache.path(),
            MAX_URL_BYTES,
        )
        .await
        .unwrap_err();
        assert!(
            chain(&err).contains("unsupported checksum \"md5:abc\""),
            "{}",
            chain(&err)
        );
    }

    #[tokio::test]
    async fn size_bound_applies_with_and_without_content_length() {
        let (base, _hits, _server) = http_server().await;
        let cache = tempfile::tempdir().unwrap();
        for path in ["/file", "/nolength"] {
            let url = format!("{base}{path}");
            let err = fetch(&plan(&[("u", url.clone(), None)]), cache.path(), 10)
                .await
                .unwrap_err();
            let text = chain(&err);
            assert!(
                text.contains(&url) && text.contains("larger than 10 bytes"),
                "{text}"
            );
        }
        assert_eq!(
            std::fs::read_dir(cache.path().join("urls/tmp"))
                .unwrap()
                .count(),
            0
        );
        // Within the bound, a body without Content-Length arrives whole.
        let files = fetch(
            &plan(&[("u", format!("{base}/nolength"), None)]),
            cache.path(),
            4096,
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&files["u"]).unwrap(), vec![b'x'; 4096]);
    }

    #[tokio::test]
    async fn git_urls_other_schemes_errors_and_redirect_loops_are_refused() {
        let (base, hits, _server) = http_server().await;
        let cache = tempfile::tempdir().unwrap();
        for url in [
            "git@github.com:moby/buildkit.git",
            "https://github.com/moby/buildkit.git#v0.12.0",
            "git://example.invalid/repo",
            &format!("{base}/repo.git"),
        ] {
            let err = fetch(&plan(&[("u", url.to_owned(), None)]), cache.path(), 100)
                .await
                .unwrap_err();
            let text = chain(&err);
            assert!(
                text.contains(url) && text.contains("ADD of a git repository is not supported"),
                "{text}"
            );
        }
        assert_eq!(
            hits[0].load(Ordering::SeqCst),
            0,
            "git URLs never reach the network"
        );

        let err = fetch(
            &plan(&[("u", "ftp://example.invalid/f".into(), None)]),
            cache.path(),
            100,
        )
        .await
        .unwrap_err();
        assert!(
            chain(&err).contains("http and https only"),
            "{}",
            chain(&err)
        );
        let err = fetch(
            &plan(&[("u", format!("{base}/missing"), None)]),
            cache.path(),
            100,
        )
        .await
        .unwrap_err();
        assert!(chain(&err).contains("HTTP 404"), "{}", chain(&err));
        let err = fetch(
            &plan(&[("u", format!("{base}/loop"), None)]),
            cache.path(),
            100,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Fetch {
                    source: FetchError::Request(_),
                    ..
                }
            ),
            "{}",
            chain(&err)
        );
        assert!(hits[0].load(Ordering::SeqCst) <= MAX_REDIRECTS + 3);
    }

    #[tokio::test]
    async fn a_plan_without_urls_touches_nothing() {
        let cache = tempfile::tempdir().unwrap();
        let files = fetch_urls(&plan(&[]), &cache.path().join("absent"))
            .await
            .unwrap();
        assert!(files.is_empty());
        assert!(!cache.path().join("absent").exists());
    }
}
