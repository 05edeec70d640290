//! The commands a person types at a terminal (`get`, `validate`, `connect`,
//! `add`, `completions`, `logs -f`), kept out of `main.rs`, which only wires
//! subcommands to them. They talk to a running mcpod over its HTTP API or read
//! files; none of them runs servers.

pub mod access;
pub mod add;
pub mod api;
pub mod auth;
pub mod connect;
pub mod get;
pub mod logs;
pub mod paths;
pub mod progress;
pub mod validate;

/// What a CLI command can fail with; the message is what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Mcpod(#[from] mcpod::Error),
    /// Nothing answered at the API URL, or it answered with an error.
    #[error("{0}")]
    Api(String),
    /// The manifests are not valid (the problems were printed already).
    #[error("{0}")]
    Invalid(String),
    /// A build or a tool it runs failed.
    #[error("{0}")]
    Build(String),
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The process exit status: 1 for invalid input or a failure, 2 for a misuse.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

pub type CliResult<T = ()> = std::result::Result<T, CliError>;

/// Ends the process with the error's exit status (the message on stderr), so
/// callers in `main` need not know about [`CliError`].
pub fn finish(result: CliResult) -> mcpod::Result<()> {
    if let Err(e) = result {
        eprintln!("mcpod: {e}");
        std::process::exit(e.exit_code());
    }
    Ok(())
}
