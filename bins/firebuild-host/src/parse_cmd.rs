//! `firebuild-host parse`: parse a Dockerfile and print buildkit's parse-tree dump.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use firebuild_dockerfile::ast::MAX_DOCKERFILE_BYTES;
use firebuild_dockerfile::parse_bytes;

/// Arguments of `firebuild-host parse`.
#[derive(Debug, Args)]
pub struct ParseArgs {
    /// The Dockerfile; standard input when absent or `-`.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Also build the typed instructions, reporting unknown instructions, bad flags and
    /// wrong argument counts.
    #[arg(long)]
    pub check: bool,
}

/// Reads at most the parser's limit plus one byte, so an oversized input is rejected by the
/// parser's size check without being read whole.
fn read_input(file: Option<&Path>) -> anyhow::Result<(Vec<u8>, String)> {
    let limit = u64::try_from(MAX_DOCKERFILE_BYTES).unwrap_or(u64::MAX) + 1;
    let mut buf = Vec::new();
    match file {
        None => {
            std::io::stdin()
                .lock()
                .take(limit)
                .read_to_end(&mut buf)
                .context("reading the Dockerfile from standard input")?;
            Ok((buf, "<stdin>".to_owned()))
        }
        Some(path) if path == Path::new("-") => read_input(None),
        Some(path) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            file.take(limit)
                .read_to_end(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok((buf, path.display().to_string()))
        }
    }
}

/// Runs the subcommand: the dump goes to stdout, parser warnings to stderr.
pub fn run(args: &ParseArgs) -> anyhow::Result<()> {
    let (bytes, name) = read_input(args.file.as_deref())?;
    let ast = parse_bytes(&bytes).map_err(|e| e.with_file(name.clone()))?;
    for warning in &ast.warnings {
        eprintln!("warning: {name}:{}: {}", warning.span, warning.message);
    }
    if args.check {
        ast.instructions().map_err(|e| e.with_file(name.clone()))?;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out
        .write_all(ast.dump().as_bytes())
        .and_then(|()| out.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        bail!("writing the dump: {e}");
    }
    Ok(())
}
