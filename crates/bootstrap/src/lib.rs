//! placeholder
#![cfg_attr(docsrs, feature(doc_cfg))]

/// Generated protobuf and gRPC types of `firebuild.bootstrap.v1`.
#[rustfmt::skip]
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod pb {
    tonic::include_proto!("firebuild.bootstrap.v1");
}

mod convert;

pub use convert::ConversionError;
