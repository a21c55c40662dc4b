//! `firebuild-host mmds serve`: start the process, do the V2 flow with the crate client and
//! with curl (when installed), scrub over the API socket, stop it with SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use firebuild_mmds::client::{Client, ClientConfig, Error};

struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, extra: &[&str]) -> Serve {
    let sock = dir.join("api.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_firebuild-host"))
        .args(["mmds", "serve", "--listen", "127.0.0.1:0", "--api-sock"])
        .arg(&sock)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Serve { child, addr }
}

fn curl(args: &[&str]) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    Some((code.parse().unwrap(), body.to_owned()))
}

fn have_curl() -> bool {
    let found = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("skip: curl not installed; the curl half of the test did not run");
    }
    found
}

#[test]
fn serve_answers_v2_flow_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.json");
    std::fs::write(
        &data,
        r#"{"hostname": "vm1", "bootstrap": {"grpc-host-port": "127.0.0.1:1", "tls-ca-cert": "-----BEGIN CERTIFICATE-----\n", "tls-cert": "-----BEGIN CERTIFICATE-----\n", "tls-key": "-----BEGIN PRIVATE KEY-----\n"}}"#,
    )
    .unwrap();
    let mut s = serve(
        dir.path(),
        &["--data", data.to_str().unwrap(), "--limit", "4096"],
    );
    let sock = dir.path().join("api.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Client::new(ClientConfig::with_addr(s.addr));
        let (md, _) = c.fetch_metadata().await.unwrap();
        assert_eq!(md.hostname.as_deref(), Some("vm1"));
        assert!(md.is_build_mode());
        // Scrub through the host API with the Firecracker writer.
        let api = firebuild_mmds::firecracker::FirecrackerApi::new(&sock);
        api.patch(&serde_json::json!({"bootstrap": null}))
            .await
            .unwrap();
        assert!(matches!(
            c.get_json("/bootstrap").await,
            Err(Error::NotFound { .. })
        ));
        // --limit is honoured: 413 becomes a typed error.
        let big = serde_json::json!({"k": "x".repeat(5000)});
        assert!(matches!(
            api.put(&big).await,
            Err(firebuild_mmds::firecracker::Error::PayloadTooLarge { .. })
        ));
    });
    if have_curl() {
        let base = format!("http://{}", s.addr);
        let (code, token) = curl(&[
            "-X",
            "PUT",
            &format!("{base}/latest/api/token"),
            "-H",
            "X-metadata-token-ttl-seconds: 21600",
        ])
        .unwrap();
        assert_eq!(code, 200);
        let tok = format!("X-metadata-token: {token}");
        assert_eq!(
            curl(&[&format!("{base}/"), "-H", &tok]).unwrap(),
            (200, "hostname".to_owned())
        );
        assert_eq!(
            curl(&[&format!("{base}/hostname"), "-H", &tok]).unwrap(),
            (200, "vm1".to_owned())
        );
        let (code, body) = curl(&[
            &format!("{base}/"),
            "-H",
            &tok,
            "-H",
            "Accept: application/json",
        ])
        .unwrap();
        assert_eq!((code, body.as_str()), (200, r#"{"hostname":"vm1"}"#));
        // What Firecracker rejects, with its status codes.
        assert_eq!(curl(&[&format!("{base}/")]).unwrap().0, 401);
        assert_eq!(
            curl(&[&format!("{base}/"), "-H", "X-metadata-token: forged"])
                .unwrap()
                .0,
            401
        );
        let token_url = format!("{base}/latest/api/token");
        let hostname_url = format!("{base}/hostname");
        let rejected: [(&[&str], u16); 4] = [
            // TTL outside 1..=21600.
            (
                &[
                    "-X",
                    "PUT",
                    &token_url,
                    "-H",
                    "X-metadata-token-ttl-seconds: 0",
                ],
                400,
            ),
            (
                &[
                    "-X",
                    "PUT",
                    &token_url,
                    "-H",
                    "X-metadata-token-ttl-seconds: 21601",
                ],
                400,
            ),
            // A token PUT that went through a proxy.
            (
                &[
                    "-X",
                    "PUT",
                    &token_url,
                    "-H",
                    "X-metadata-token-ttl-seconds: 60",
                    "-H",
                    "X-Forwarded-For: 1.2.3.4",
                ],
                400,
            ),
            // PUT anywhere but the token path.
            (
                &[
                    "-X",
                    "PUT",
                    &hostname_url,
                    "-H",
                    "X-metadata-token-ttl-seconds: 60",
                ],
                404,
            ),
        ];
        for (args, status) in rejected {
            assert_eq!(curl(args).unwrap().0, status, "curl {args:?}");
        }
        assert_eq!(curl(&["-X", "POST", &format!("{base}/")]).unwrap().0, 405);
        assert_eq!(
            curl(&[&format!("{base}/bootstrap"), "-H", &tok]).unwrap().0,
            404
        );
        // The host API over the Unix socket, as with Firecracker.
        let sock_arg = sock.to_str().unwrap();
        let (code, _) = curl(&[
            "--unix-socket",
            sock_arg,
            "-X",
            "PATCH",
            "http://localhost/mmds",
            "-d",
            r#"{"hostname":"vm2"}"#,
        ])
        .unwrap();
        assert_eq!(code, 204);
        assert_eq!(
            curl(&[&format!("{base}/hostname"), "-H", &tok]).unwrap(),
            (200, "vm2".to_owned())
        );
    }
    let status = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = s.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(!sock.exists(), "the API socket is removed on exit");
}

#[test]
fn serve_refuses_bad_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.json");
    std::fs::write(&data, "[1, 2]").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_firebuild-host"))
        .args(["mmds", "serve", "--listen", "127.0.0.1:0", "--api-sock"])
        .arg(dir.path().join("api.sock"))
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be a JSON object"), "{err}");
}

/// `firebuild-host mmds get --api-sock P POINTER`: the value, or an error naming the pointer.
fn get(sock: &Path, pointer: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_firebuild-host"))
        .args(["mmds", "get", "--api-sock"])
        .arg(sock)
        .arg(pointer)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn guest_writes_are_seen_through_mmds_get() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("md.json");
    std::fs::write(
        &data,
        r#"{"hostname": "vm1", "users": [{"name": "ops", "password": {"hash": "$6$s$h"}}]}"#,
    )
    .unwrap();
    let data_arg = data.to_string_lossy().into_owned();
    let s = serve(dir.path(), &["--data", &data_arg, "--guest-writes"]);
    let sock = dir.path().join("api.sock");
    let (ok, out, _) = get(&sock, "/users/0/password");
    assert!(ok && out.contains("$6$s$h"), "{out}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = Client::new(ClientConfig::with_addr(s.addr));
    rt.block_on(client.delete("/users/0/password")).unwrap();
    let status =
        firebuild_mmds::schema::GuestStatus::new(firebuild_mmds::schema::GuestPhase::Running);
    rt.block_on(client.put_status(&status)).unwrap();
    // A host-owned key stays out of the guest's reach.
    let err = rt.block_on(client.delete("/hostname")).unwrap_err();
    assert!(matches!(err, Error::Status { .. }), "{err}");
    let (ok, _, err) = get(&sock, "/users/0/password");
    assert!(!ok && err.contains("/users/0/password"), "{err}");
    let (ok, out, _) = get(&sock, "/guest/status");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), r#"{"phase":"running"}"#);
    let (ok, out, _) = get(&sock, "/hostname");
    assert!(ok && out.trim() == "\"vm1\"", "{out}");
}
