//! Runnable examples of the firebuild crates (not published). The code lives beside this file:
//! `cargo run -p firebuild-examples --example embed_server` embeds the bootstrap server and
//! drives it with the guest client over mutual TLS on 127.0.0.1.
