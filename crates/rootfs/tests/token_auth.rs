//! Token auth: a fake loopback registry that answers 401 with a Bearer challenge, a token
//! endpoint that demands the user's basic credentials, and blobs served only with the token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use firebuild_rootfs::registry::{self, Credentials, PullOptions};
use firebuild_rootfs::{Digest, DockerConfig, Error};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TOKEN: &str = "t0k3n-for-test";

fn b64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[derive(Default)]
struct Seen {
    token_requests: Vec<(String, Option<String>)>,
    unauthorized: usize,
}

/// Serves `objects` (path → (content type, body)) behind Bearer auth.
async fn fake_registry(
    objects: HashMap<String, (String, Vec<u8>)>,
    basic: String,
) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (objects, seen2, addr2) = (Arc::new(objects), seen.clone(), addr.clone());
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (objects, seen, addr) = (objects.clone(), seen2.clone(), addr2.clone());
            let basic = basic.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Read one request head (GETs only: no bodies).
                    let head = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
                            buf.drain(..i + 4);
                            break head;
                        }
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let mut lines = head.lines();
                    let target = lines.next().unwrap().split(' ').nth(1).unwrap().to_owned();
                    let headers: HashMap<String, String> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let auth = headers.get("authorization").cloned();
                    let challenge = format!(
                        "Bearer realm=\"http://{addr}/token\",service=\"fake\",scope=\"repository:test/img:pull\""
                    );
                    let (status, ctype, body, extra): (&str, String, Vec<u8>, String) =
                        if let Some(q) = target.strip_prefix("/token") {
                            seen.lock()
                                .unwrap()
                                .token_requests
                                .push((q.to_owned(), auth.clone()));
                            if auth.as_deref() == Some(basic.as_str()) {
                                let b = format!("{{\"token\":\"{TOKEN}\"}}").into_bytes();
                                ("200 OK", "application/json".into(), b, String::new())
                            } else {
                                (
                                    "401 Unauthorized",
                                    "text/plain".into(),
                                    b"bad credentials".to_vec(),
                                    String::new(),
                                )
                            }
                        } else if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
                            seen.lock().unwrap().unauthorized += 1;
                            (
                                "401 Unauthorized",
                                "application/json".into(),
                                br#"{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}"#
                                    .to_vec(),
                                format!("WWW-Authenticate: {challenge}\r\n"),
                            )
                        } else if target == "/v2/" {
                            (
                                "200 OK",
                                "application/json".into(),
                                b"{}".to_vec(),
                                String::new(),
                            )
                        } else if let Some((ct, b)) = objects.get(&target) {
                            let d = Digest::of(b);
                            (
                                "200 OK",
                                ct.clone(),
                                b.clone(),
                                format!("Docker-Content-Digest: {d}\r\n"),
                            )
                        } else {
                            (
                                "404 Not Found",
                                "text/plain".into(),
                                b"no".to_vec(),
                                String::new(),
                            )
                        };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}\r\n",
                        body.len()
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err()
                        || sock.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn bearer_challenge_is_answered_with_a_token_from_the_realm() {
    let work = tempfile::tempdir().unwrap();
    let img = make_image_unprivileged();
    let objects = image_objects(&img);
    let basic = format!("Basic {}", b64(b"alice:s3cret"));
    let (addr, seen) = fake_registry(objects, basic.clone()).await;

    let mut opts = PullOptions::new(work.path().join("cache"));
    opts.credentials = Credentials::Basic {
        user: "alice".into(),
        password: "s3cret".into(),
    };
    let pulled = registry::pull(&format!("{addr}/test/img:v1"), &opts)
        .await
        .unwrap();
    assert_eq!(pulled.config_digest, img.config_digest());
    assert_eq!(pulled.layers.len(), 2);
    {
        let seen = seen.lock().unwrap();
        assert!(!seen.token_requests.is_empty(), "no token was requested");
        let (query, auth) = &seen.token_requests[0];
        assert_eq!(
            auth.as_deref(),
            Some(basic.as_str()),
            "credentials not sent to the realm"
        );
        assert!(
            query.contains("scope=repository")
                && (query.contains("test%2Fimg") || query.contains("test/img")),
            "{query}"
        );
    }

    // Wrong password: the token endpoint refuses and the pull fails with a registry error.
    opts.credentials = Credentials::Basic {
        user: "alice".into(),
        password: "wrong".into(),
    };
    opts.cache_dir = work.path().join("cache2");
    let err = registry::pull(&format!("{addr}/test/img:v1"), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");
}

/// A `DOCKER_CONFIG` directory holding `config` as its config.json.
fn docker_config_dir(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    dir
}

#[tokio::test]
async fn credentials_come_from_the_docker_config_of_the_registry() {
    let work = tempfile::tempdir().unwrap();
    let img = make_image_unprivileged();
    let basic = format!("Basic {}", b64(b"alice:s3cret"));
    let (addr, seen) = fake_registry(image_objects(&img), basic.clone()).await;
    let reference = format!("{addr}/test/img:v1");

    // `auths` keyed by the registry as `docker login` writes it; the other entry is not used.
    let dir = docker_config_dir(&format!(
        r#"{{"auths":{{"{addr}":{{"auth":"{}"}},"other.example":{{"auth":"{}"}}}}}}"#,
        b64(b"alice:s3cret"),
        b64(b"mallory:nope"),
    ));
    let config = DockerConfig::load_dir(dir.path()).unwrap().unwrap();
    let opts = PullOptions::new(work.path().join("cache")).with_docker_config(config.clone());
    assert!(
        matches!(opts.credentials, Credentials::DockerConfig(_)),
        "{:?}",
        opts.credentials
    );
    let pulled = registry::pull(&reference, &opts).await.unwrap();
    assert_eq!(pulled.config_digest, img.config_digest());
    assert_eq!(pulled.layers.len(), 2);
    {
        let seen = seen.lock().unwrap();
        let (_, auth) = seen.token_requests.last().expect("no token was requested");
        assert_eq!(auth.as_deref(), Some(basic.as_str()));
    }

    // Explicit credentials win over the config: these are wrong, so the pull fails.
    let mut explicit = PullOptions::new(work.path().join("cache-explicit"));
    explicit.credentials = Credentials::Basic {
        user: "alice".into(),
        password: "wrong".into(),
    };
    let explicit = explicit.with_docker_config(config);
    let err = registry::pull(&reference, &explicit).await.unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");

    // A config with nothing for this registry: anonymous, refused by the token realm.
    let dir = docker_config_dir(&format!(
        r#"{{"auths":{{"other.example":{{"auth":"{}"}}}}}}"#,
        b64(b"alice:s3cret"),
    ));
    let config = DockerConfig::load_dir(dir.path()).unwrap().unwrap();
    let opts = PullOptions::new(work.path().join("cache-none")).with_docker_config(config);
    let err = registry::pull(&reference, &opts).await.unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");
    let seen = seen.lock().unwrap();
    let (_, auth) = seen.token_requests.last().unwrap();
    assert_eq!(auth, &None, "anonymous token request expected");
}

#[tokio::test]
async fn credentials_come_from_a_credential_helper_named_in_the_docker_config() {
    use std::os::unix::fs::PermissionsExt;

    let work = tempfile::tempdir().unwrap();
    let img = make_image_unprivileged();
    let basic = format!("Basic {}", b64(b"helped:h3lper"));
    let (addr, seen) = fake_registry(image_objects(&img), basic.clone()).await;

    // Answers only for this registry, as a real helper would.
    let helpers = tempfile::tempdir().unwrap();
    let helper = helpers.path().join("docker-credential-test");
    std::fs::write(
        &helper,
        format!(
            r#"#!/bin/sh
read -r server || true
if [ "$1" = get ] && [ "$server" = "{addr}" ]; then
  printf '{{"ServerURL":"%s","Username":"helped","Secret":"h3lper"}}' "$server"
else
  echo "credentials not found in native keychain"; exit 1
fi
"#
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = docker_config_dir(&format!(
        r#"{{"credHelpers":{{"{addr}":"test"}},"auths":{{"{addr}":{{"auth":"{}"}}}}}}"#,
        b64(b"alice:wrong"),
    ));
    let config = DockerConfig::load_dir(dir.path())
        .unwrap()
        .unwrap()
        .with_helper_dirs(vec![helpers.path().to_owned()]);
    let opts = PullOptions::new(work.path().join("cache")).with_docker_config(config);
    let pulled = registry::pull(&format!("{addr}/test/img:v1"), &opts)
        .await
        .unwrap();
    assert_eq!(pulled.layers.len(), 2);
    {
        let seen = seen.lock().unwrap();
        let (_, auth) = seen.token_requests.last().expect("no token was requested");
        assert_eq!(
            auth.as_deref(),
            Some(basic.as_str()),
            "helper's credentials not used"
        );
    }
    let manifest = pulled.manifest_digest.clone().unwrap();
    let by_digest = format!("{addr}/test/img@{manifest}");

    // Everything cached: no helper is run (this one would fail: it does not exist).
    let nowhere = tempfile::tempdir().unwrap();
    let broken = docker_config_dir(r#"{"credsStore":"absent"}"#);
    let broken = DockerConfig::load_dir(broken.path())
        .unwrap()
        .unwrap()
        .with_helper_dirs(vec![nowhere.path().to_owned()]);
    let cached = PullOptions::new(work.path().join("cache")).with_docker_config(broken.clone());
    let resolved = registry::fetch_config(&by_digest, &cached).await.unwrap();
    assert_eq!(resolved.config_digest, img.config_digest());
    // ... and when the network is needed, the helper's failure is the error.
    let mut uncached = cached.clone();
    uncached.cache_dir = work.path().join("cache-empty");
    let err = registry::pull(&by_digest, &uncached).await.unwrap_err();
    assert!(
        matches!(&err, Error::CredentialHelper { helper, .. } if helper == "docker-credential-absent"),
        "{err}"
    );

    // Manifest and config cached, layers not: the blob requests are authenticated although
    // no manifest request was made (the fake registry only serves the manifest by tag).
    for layer in &pulled.layers {
        std::fs::remove_file(&layer.path).unwrap();
    }
    let again = registry::pull(&by_digest, &opts).await.unwrap();
    assert_eq!(again.layers.len(), 2);
    assert!(again.layers.iter().all(|l| l.path.is_file()));
}

/// The registry paths serving `img` as `test/img:v1`.
fn image_objects(img: &TestImage) -> HashMap<String, (String, Vec<u8>)> {
    let mut objects = HashMap::new();
    objects.insert(
        "/v2/test/img/manifests/v1".to_owned(),
        (
            "application/vnd.oci.image.manifest.v1+json".to_owned(),
            img.manifest.clone(),
        ),
    );
    objects.insert(
        format!("/v2/test/img/blobs/{}", img.config_digest()),
        ("application/octet-stream".to_owned(), img.config.clone()),
    );
    for (b, _, _) in &img.layers {
        objects.insert(
            format!("/v2/test/img/blobs/{}", Digest::of(b)),
            ("application/octet-stream".to_owned(), b.clone()),
        );
    }
    objects
}

/// The image fixture without root: layers from a tar built in memory.
fn make_image_unprivileged() -> TestImage {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, "hello", &b"hi\n"[..]).unwrap();
    let t = b.into_inner().unwrap();
    image_from_tars(&[gzip(&t), zstd(&t)], &[Digest::of(&t), Digest::of(&t)])
}
