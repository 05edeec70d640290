//! Who may call mcpod: the authentication flags `serve` and `router` share, and
//! `mcpod auth add-key`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};

use mcpod::auth::tokenreview::TokenReviewer;
use mcpod::auth::{self, jwt, keys, Auth, AuthConfig, Verify};

use super::{CliError, CliResult};

/// Authentication and cross-site settings (see the README's "Security").
#[derive(Args, Debug, Clone)]
pub struct AuthArgs {
    /// File of hashed API keys (`mcpod auth add-key` writes it); callers send
    /// `Authorization: Bearer <key>`. Re-read when it changes.
    #[arg(long, env = "MCPOD_API_KEYS", value_parser = super::paths::absolute_path)]
    pub api_keys: Option<PathBuf>,
    /// OAuth 2.1 authorization server (its issuer URL) whose access tokens
    /// (JWTs, `aud` = the MCP endpoint's URL) mcpod accepts; its keys come
    /// from the JWKS its metadata names.
    #[arg(long, env = "MCPOD_OAUTH_ISSUER")]
    pub oauth_issuer: Option<String>,
    /// The token claim holding the caller's groups.
    #[arg(long, env = "MCPOD_OAUTH_GROUPS_CLAIM", default_value = "groups")]
    pub oauth_groups_claim: String,
    /// Scopes clients may ask for, named in the Protected Resource Metadata
    /// and in 401 challenges (repeat, or comma-separated).
    #[arg(
        long = "oauth-scope",
        env = "MCPOD_OAUTH_SCOPES",
        value_delimiter = ','
    )]
    pub oauth_scopes: Vec<String>,
    /// Scopes every OAuth token must hold; a token without them gets 403
    /// `insufficient_scope` (repeat, or comma-separated).
    #[arg(
        long = "oauth-required-scope",
        env = "MCPOD_OAUTH_REQUIRED_SCOPES",
        value_delimiter = ','
    )]
    pub oauth_required_scopes: Vec<String>,
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
    /// Kubernetes (`router` only): accept ServiceAccount tokens projected with
    /// this audience (e.g. `mcpod`), checked with a TokenReview.
    #[arg(long, env = "MCPOD_TOKEN_REVIEW_AUDIENCE")]
    pub token_review_audience: Option<String>,
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
    /// unauthenticated beyond loopback needs the insecure flag. `kube`: the
    /// cluster client TokenReviews go to (`router` only).
    /// Refused authentications are recorded in `access`'s audit log.
    pub fn build(
        &self,
        listen: SocketAddr,
        kube: Option<&kube::Client>,
        access: Arc<mcpod::access::AccessControl>,
    ) -> mcpod::Result<Auth> {
        let mut verifiers: Vec<Arc<dyn Verify>> = vec![];
        if let Some(path) = &self.api_keys {
            let keys =
                keys::ApiKeys::load(path).map_err(|e| mcpod::Error::Config(e.to_string()))?;
            verifiers.push(Arc::new(keys));
        }
        let mut authorization_servers = vec![];
        if let Some(issuer) = &self.oauth_issuer {
            let verifier = jwt::JwtVerifier::new(issuer, &self.oauth_groups_claim)
                .map_err(|e| mcpod::Error::Config(e.to_string()))?;
            verifiers.push(Arc::new(verifier));
            authorization_servers.push(issuer.clone());
            if self.public_url.is_none() {
                tracing::warn!(
                    "--oauth-issuer without --public-url: token audiences are matched against \
                     the URL the request's Host header names, so a token the same issuer made \
                     for another address mcpod answers to (another IP, another allowed host) is \
                     accepted here too; set --public-url"
                );
            }
        }
        // Last: it claims any JWT that the verifiers above did not.
        if let Some(audience) = &self.token_review_audience {
            let client = kube.ok_or_else(|| {
                mcpod::Error::Config(
                    "--token-review-audience needs Kubernetes: only `mcpod router` can check \
                     ServiceAccount tokens"
                        .to_string(),
                )
            })?;
            verifiers.push(Arc::new(TokenReviewer::new(client.clone(), audience)));
        }
        // `..default()` although every field is set today: a setting added to
        // AuthConfig later needs no change here.
        #[allow(clippy::needless_update)]
        let config = AuthConfig {
            verifiers,
            authorization_servers,
            scopes: self.oauth_scopes.clone(),
            required_scopes: self.oauth_required_scopes.clone(),
            public_url: self.public_url.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            allowed_origins: self.allowed_origins.clone(),
            on_refused: Some(mcpod::access::refusal_recorder(access)),
            ..AuthConfig::default()
        };
        let auth = Auth::new(config);
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
