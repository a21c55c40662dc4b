//! Buildkit-conformant Dockerfile parsing, shell-word expansion, `.dockerignore` matching and
//! resolution of a Dockerfile into a [`firebuild_plan::BuildPlan`].
//!
//! (Crate docs are completed as the modules land.)
pub mod dockerignore;
pub mod shell;
