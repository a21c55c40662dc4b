//! Buildkit-conformant Dockerfile parsing, shell-word expansion, `.dockerignore` matching and
//! resolution of a Dockerfile into a [`firebuild_plan::BuildPlan`].
//!
//! The layers, each usable on its own:
//!
//! - [`parse`] → [`Ast`]: buildkit's parser (directives, continuations, comments,
//!   here-documents, per-instruction argument parsers) with a [`firebuild_plan::Span`] on every
//!   [`Node`]; [`Ast::dump`] prints buildkit's `Node.Dump()` format. Inputs are bounded
//!   ([`ast::MAX_DOCKERFILE_BYTES`], lines, line length) before parsing.
//! - [`instructions::from_ast`] → [`instructions::Instruction`]s: typed instructions
//!   ([`instructions::InstructionKind`]) with buildkit's checks (flags, argument counts,
//!   `--mount` syntax, durations), errors carrying line:col.
//! - [`shell::Lexer`]: shell-word expansion (`$X`, `${X:-w}`, `${X%%p}`, quotes, escapes) with
//!   buildkit's semantics, against any [`shell::Env`].
//! - [`dockerignore::PatternMatcher`]: `.dockerignore` patterns with moby's matching rules
//!   (exceptions, `**`), and [`context::BuildContext`] to resolve COPY/ADD sources in a context
//!   directory (globs, confinement, no symlink escapes).
//! - [`plan()`] with a [`PlanRequest`] → [`firebuild_plan::BuildPlan`]: ARG/ENV scoping, the stage
//!   graph and `--target` pruning, context resolution, and every step with its env, args,
//!   workdir, user and shell.
//!
//! Errors are one [`Error`] type; a syntax error renders as `file:line:col: message` with a
//! caret snippet ([`render_snippet`]). Nothing here touches the network or spawns a process;
//! the context directory is only read, and only when a COPY/ADD needs it.
//!
//! ```
//! use std::path::Path;
//! use firebuild_dockerfile::{PlanRequest, parse, plan};
//! use firebuild_plan::{Base, StepKind};
//!
//! let dockerfile = "\
//! ## syntax=docker/dockerfile:1
//! ARG TAG=12
//! FROM debian:${TAG} AS build
//! ENV PREFIX=/opt/app
//! WORKDIR $PREFIX
//! RUN make install
//!
//! FROM scratch
//! COPY --from=build /opt/app /app
//! CMD [\"/app/bin/serve\"]
//! ";
//!
//! // Syntax only: the parse tree, as buildkit dumps it.
//! let ast = parse(dockerfile).unwrap();
//! assert_eq!(ast.directive("syntax"), Some("docker/dockerfile:1"));
//! assert_eq!(ast.nodes[1].dump(), "from \"debian:${TAG}\" \"AS\" \"build\"");
//!
//! // The whole plan. No step reads the context, so none is needed on disk.
//! let built = plan(&PlanRequest::new("Dockerfile", dockerfile, Path::new("."))).unwrap();
//! assert_eq!(built.stages[0].base, Base::Image { reference: "debian:12".into() });
//! // WORKDIR is a step (the directory is made as the USER of its line), then the RUN.
//! let (_, run) = built.steps().nth(1).unwrap();
//! assert!(matches!(run.kind, StepKind::Run(_)));
//! assert_eq!(run.context.workdir, "/opt/app");
//! assert_eq!(run.context.env[0].value, "/opt/app");
//! let (_, copy) = built.steps().last().unwrap();
//! assert_eq!(copy.kind.name(), "COPY");
//! assert_eq!(copy.span.start_line, 9);
//! ```

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
