//! Buildkit-conformant Dockerfile parsing, shell-word expansion, `.dockerignore` matching and
//! resolution of a Dockerfile into a [`firebuild_plan::BuildPlan`].
//!
//! (Crate docs are completed as the modules land.)

pub mod ast;
pub mod context;
pub mod dockerignore;
pub mod dump;
pub mod error;
pub mod instructions;
pub mod parser;
pub mod shell;

pub use ast::{Ast, Heredoc, Node};
pub use error::{Error, Location, SyntaxError, render_snippet};
pub use parser::{parse, parse_bytes};

pub mod plan;
pub use plan::{PlanRequest, plan};
