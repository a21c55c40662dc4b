//! Console logging: one line per phase on stderr, RFC 3339 timestamps, no colours. Secrets never
//! reach a log line: the metadata types redact the TLS key in `Debug`, and vminit logs neither
//! tokens nor PEM (the tests check stderr).

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
