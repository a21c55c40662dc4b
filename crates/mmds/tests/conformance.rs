//! Table-driven: the server and the client against the Firecracker MMDS behaviour listed in
//! `../shared/DESIGN.md` ("Facts that cost time to find").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{guest, host, token};
use firebuild_mmds::client::{Client, ClientConfig, Error};
use firebuild_mmds::server::Server;
use http::{Method, StatusCode};
use serde_json::json;

/// What a row expects from the guest side.
enum Want {
    Status(StatusCode),
    Body(StatusCode, &'static str),
    Json(serde_json::Value),
}

/// Token placement for a row.
#[derive(Clone, Copy)]
enum Tok {
    None,
    Valid,
    Bad,
}

/// (name, method, path, headers, token, expected).
type Row<'a> = (&'a str, Method, &'a str, Vec<(&'a str, &'a str)>, Tok, Want);

#[tokio::test]
async fn guest_side_matches_firecracker() {
    let data = json!({"latest": {"meta-data": {"ami-id": "ami-1", "count": 3, "ok": true, "arr": ["x"],
                                               "nested": {"k": "v"}}}});
    let s = common::serve(data.clone()).await;
    let addr = s.local_addr();
    let t = token(addr).await;
    use Tok::*;
    use Want::*;
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("token ttl 1", Method::PUT, "/latest/api/token", vec![("X-metadata-token-ttl-seconds", "1")], None, Status(StatusCode::OK)),
        ("token ttl 21600", Method::PUT, "/latest/api/token", vec![("X-metadata-token-ttl-seconds", "21600")], None, Status(StatusCode::OK)),
        ("token ttl 0", Method::PUT, "/latest/api/token", vec![("X-metadata-token-ttl-seconds", "0")], None, Status(StatusCode::BAD_REQUEST)),
        ("token ttl 21601", Method::PUT, "/latest/api/token", vec![("X-metadata-token-ttl-seconds", "21601")], None, Status(StatusCode::BAD_REQUEST)),
        ("PUT with X-Forwarded-For", Method::PUT, "/latest/api/token", vec![("X-metadata-token-ttl-seconds", "60"), ("X-Forwarded-For", "1.2.3.4")], None, Status(StatusCode::BAD_REQUEST)),
        ("PUT elsewhere", Method::PUT, "/latest/meta-data", vec![("X-metadata-token-ttl-seconds", "60")], None, Status(StatusCode::NOT_FOUND)),
        ("GET without token", Method::GET, "/latest/meta-data", vec![], None, Status(StatusCode::UNAUTHORIZED)),
        ("GET with bad token", Method::GET, "/latest/meta-data", vec![], Bad, Status(StatusCode::UNAUTHORIZED)),
        ("object lists keys, sub-objects end in /", Method::GET, "/latest/meta-data", vec![], Valid, Body(StatusCode::OK, "ami-id\narr\ncount\nnested/\nok")),
        ("string raw", Method::GET, "/latest/meta-data/ami-id", vec![], Valid, Body(StatusCode::OK, "ami-1")),
        ("number leaf 501", Method::GET, "/latest/meta-data/count", vec![], Valid, Status(StatusCode::NOT_IMPLEMENTED)),
        ("bool leaf 501", Method::GET, "/latest/meta-data/ok", vec![], Valid, Status(StatusCode::NOT_IMPLEMENTED)),
        ("array leaf 501", Method::GET, "/latest/meta-data/arr", vec![], Valid, Status(StatusCode::NOT_IMPLEMENTED)),
        ("JSON on Accept", Method::GET, "/latest/meta-data/nested", vec![("Accept", "application/json")], Valid, Json(json!({"k": "v"}))),
        ("JSON number leaf", Method::GET, "/latest/meta-data/count", vec![("Accept", "application/json")], Valid, Json(json!(3))),
        ("curl's Accept */* is IMDS", Method::GET, "/latest/meta-data/nested", vec![("Accept", "*/*")], Valid, Body(StatusCode::OK, "k")),
        ("missing path 404", Method::GET, "/latest/nothing", vec![], Valid, Status(StatusCode::NOT_FOUND)),
        ("POST 405", Method::POST, "/latest/meta-data", vec![], Valid, Status(StatusCode::METHOD_NOT_ALLOWED)),
    ];
    for (name, method, path, headers, tok, want) in rows {
        let mut h = headers.clone();
        match tok {
            Valid => h.push(("X-metadata-token", &t)),
            Bad => h.push(("X-metadata-token", "AAAA")),
            None => {}
        }
        let r = guest(addr, method, path, &h).await;
        assert!(r.header("etag").is_some(), "{name}: no ETag");
        match want {
            Status(st) => assert_eq!(r.status, st, "{name}: {}", r.text()),
            Body(st, body) => assert_eq!((r.status, r.text().as_str()), (st, body), "{name}"),
            Json(v) => assert_eq!((r.status, r.json()), (StatusCode::OK, v), "{name}"),
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn host_side_matches_firecracker() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let s = Server::builder().api_socket(&sock).start().await.unwrap();
    // Default limit 51200 bytes.
    let fits = format!(r#"{{"k": "{}"}}"#, "x".repeat(51200 - 10));
    let over = format!(r#"{{"k": "{}"}}"#, "x".repeat(51200));
    #[rustfmt::skip]
    let rows: Vec<(&str, Method, &str, String, StatusCode)> = vec![
        ("config V2", Method::PUT, "/mmds/config", r#"{"version":"V2","network_interfaces":["eth0"]}"#.into(), StatusCode::NO_CONTENT),
        ("PUT replaces", Method::PUT, "/mmds", r#"{"a": {"b": "c"}, "d": "e"}"#.into(), StatusCode::NO_CONTENT),
        ("PATCH merges (RFC 7396)", Method::PATCH, "/mmds", r#"{"a": {"x": "y"}, "d": null}"#.into(), StatusCode::NO_CONTENT),
        ("GET", Method::GET, "/mmds", String::new(), StatusCode::OK),
        ("PUT at the limit", Method::PUT, "/mmds", fits, StatusCode::NO_CONTENT),
        ("PUT past the limit", Method::PUT, "/mmds", over, StatusCode::PAYLOAD_TOO_LARGE),
        ("PUT bad JSON", Method::PUT, "/mmds", "{".into(), StatusCode::BAD_REQUEST),
    ];
    for (name, method, path, body, want) in rows {
        let r = host(&sock, method, path, &[], &body).await;
        assert_eq!(r.status, want, "{name}: {}", r.text());
        if name == "GET" {
            assert_eq!(r.json(), json!({"a": {"b": "c", "x": "y"}}));
        }
        if want.is_client_error() {
            assert!(
                r.json()["fault_message"].is_string(),
                "{name}: Firecracker fault body"
            );
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn client_maps_firecracker_answers() {
    let s = common::serve(json!({"s": "text", "n": 1, "o": {"k": "v"}})).await;
    let c = Client::new(ClientConfig {
        deadline: Duration::from_millis(500),
        ..ClientConfig::with_addr(s.local_addr())
    });
    // (path, JSON?, expected) — expected: Ok(body) or the error's name.
    #[rustfmt::skip]
    let rows: Vec<(&str, bool, Result<&str, &str>)> = vec![
        ("/s", false, Ok("text")),
        ("/o", false, Ok("k")),
        ("/o", true, Ok(r#"{"k":"v"}"#)),
        ("/n", true, Ok("1")),
        ("/n", false, Err("Status 501")),
        ("/missing", false, Err("NotFound")),
        ("/missing", true, Err("NotFound")),
    ];
    for (path, json, want) in rows {
        let got = if json {
            c.get_json(path).await.map(|(v, _)| v.to_string())
        } else {
            c.get_text(path).await.map(|(t, _)| t)
        };
        let got = got.map_err(|e| match e {
            Error::NotFound { .. } => "NotFound".to_owned(),
            Error::Status { status, .. } => format!("Status {}", status.as_u16()),
            other => format!("{other:?}"),
        });
        assert_eq!(
            got.as_deref().map_err(String::as_str),
            want,
            "{path} json={json}"
        );
    }
    s.shutdown().await;
}
