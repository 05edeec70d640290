//! Who may call mcpod: the authentication flags `serve` and `router` share, and
//! `mcpod auth add-key`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};

use mcpod::auth::{self, keys, Auth, AuthConfig, Verify};

use super::{CliError, CliResult};

/// Authentication and cross-site settings (see the README's "Security").
#[derive(Args, Debug, Clone)]
pub struct AuthArgs {
    /// File of hashed API keys (`mcpod auth add-key` writes it); callers send
    /// `Authorization: Bearer <key>`. Re-read when it changes.
    #[arg(long, env = "MCPOD_API_KEYS", value_parser = super::paths::absolute_path)]
    pub api_keys: Option<PathBuf>,
    /// The URL clients use to reach mcpod (e.g. https://mcp.example.com), from
    /// which OAuth resource URLs are made; without it, http://{Host header}.
    #[arg(long, env = "MCPOD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Host names this mcpod answers to besides loopback names, IP addresses
    /// and the machine's hostname (DNS-rebinding protection; `*`: any).
    #[arg(
        long = "allowed-host",
        env = "MCPOD_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed besides loopback ones and mcpod's own (`*`: any).
    #[arg(
        long = "allowed-origin",
        env = "MCPOD_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Serve without authentication on a non-loopback address: anyone who can
    /// reach it may call every tool and stop every server.
    #[arg(long, env = "MCPOD_INSECURE_ALLOW_UNAUTHENTICATED")]
    pub insecure_allow_unauthenticated: bool,
    /// Authorization: operators, rate limits, the audit log.
    #[command(flatten)]
    pub access: super::access::AccessArgs,
}

impl AuthArgs {
    /// The configured verifiers, checked against the listen address: serving
    /// unauthenticated beyond loopback needs the insecure flag.
    pub fn build(&self, listen: SocketAddr) -> mcpod::Result<Auth> {
        let mut verifiers: Vec<Arc<dyn Verify>> = vec![];
        if let Some(path) = &self.api_keys {
            let keys =
                keys::ApiKeys::load(path).map_err(|e| mcpod::Error::Config(e.to_string()))?;
            verifiers.push(Arc::new(keys));
        }
        let auth = Auth::new(AuthConfig {
            verifiers,
            public_url: self.public_url.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            allowed_origins: self.allowed_origins.clone(),
            ..AuthConfig::default()
        });
        auth::check_exposure(listen, &auth, self.insecure_allow_unauthenticated)
            .map_err(mcpod::Error::Config)?;
        Ok(auth)
    }
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Make an API key for SUBJECT, append its hash to the keys file, print the key once.
    AddKey(AddKeyArgs),
}

#[derive(Args, Debug)]
pub struct AddKeyArgs {
    /// Who the key belongs to, as policies and the audit log name them.
    pub subject: String,
    /// The keys file (`serve --api-keys`); created mode 0600 if missing.
    #[arg(long, env = "MCPOD_API_KEYS", value_parser = super::paths::absolute_path)]
    pub keys_file: PathBuf,
    /// Groups the subject belongs to (repeat, or comma-separated).
    #[arg(long = "group", value_delimiter = ',')]
    pub groups: Vec<String>,
}

pub fn run(command: AuthCommand) -> CliResult<()> {
    match command {
        AuthCommand::AddKey(args) => {
            let key = keys::add_key(&args.keys_file, &args.subject, &args.groups)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            eprintln!(
                "API key for '{}' added to {} (only its hash is stored; this is the only time \
                 the key is shown):",
                args.subject,
                args.keys_file.display()
            );
            println!("{key}");
            Ok(())
        }
    }
}
