//! The firebuild bootstrap protocol (gRPC over mutual TLS). Under construction.
