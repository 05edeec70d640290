//! The `mcpod` command: wires the library's parts together and nothing more.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing::{error, info};

use mcpod::mcp::http::EndpointConfig;
use mcpod::reconcile::Reconciler;
use mcpod::router::{self, RouterConfig};
use mcpod::runtime::podman::{self, PodmanRuntime};
use mcpod::server::Settings;
use mcpod::workload::Defaults;
use mcpod::{crd, duration, shutdown_signal};

mod cli;

#[derive(Parser)]
#[command(
    name = "mcpod",
    version,
    about = "Runs MCP servers as containers, on demand"
)]
struct Cli {
    /// mcpod's own log and each server's log: `text` lines, or one JSON object
    /// per line (for Loki, Elasticsearch and the like).
    #[arg(
        long,
        global = true,
        env = "MCPOD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: mcpod::logs::LogFormat,
    /// Threads that run mcpod's tasks. Default: half the CPUs this process may
    /// use, at least one. Relaying a message hands it between tasks (an HTTP
    /// connection, a server's stdin writer and stdout reader); on fewer threads
    /// those hand-offs stay on one core instead of waking another, and the
    /// servers mcpod starts keep the other cores for their own work.
    #[arg(long, global = true, env = "MCPOD_WORKER_THREADS")]
    worker_threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

/// Half the CPUs available to this process (cgroup quotas included), at least one.
fn default_worker_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / 2).max(1)
}

#[derive(Subcommand)]
enum Command {
    /// Serve every MCPServer in a directory of YAML files from local Podman.
    Serve(Box<ServeArgs>),
    /// Print the CustomResourceDefinitions (MCPServer, MCPServerGroup) as YAML.
    Crd(CrdArgs),
    /// Print a server's log (its stderr and lifecycle) from the data dir.
    Logs(LogsArgs),
    /// Kubernetes: run the operator (one pod per running MCPServer, none while idle).
    Operator(Box<OperatorArgs>),
    /// Kubernetes: run the HTTP router; it wakes servers through the operator and attaches to their pods.
    Router(Box<RouterArgs>),
    /// Print the Pod YAML of one MCPServer, for `podman kube play`.
    Export(Box<ExportArgs>),
    /// Save the manifests, the data directory and the declared named volumes to a .tar.gz.
    Backup(Box<BackupArgs>),
    /// Restore what `mcpod backup` saved (refuses to replace anything unless --force).
    Restore(Box<RestoreArgs>),
    /// Show the servers of a running mcpod, like `kubectl get` (`-o json|yaml`, `-w` to watch).
    #[command(visible_alias = "status")]
    Get(Box<cli::get::GetArgs>),
    /// Check MCPServer manifests offline, with the errors `serve` gives; exit status 1 if invalid.
    Validate(Box<ValidateArgs>),
    /// Print the configuration snippet that points an MCP client at mcpod's servers.
    Connect(Box<cli::connect::ConnectArgs>),
    /// Add an npm or PyPI MCP server (or an image): build it, write its YAML, start it.
    Add(Box<cli::add::AddArgs>),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Authentication: `mcpod auth add-key SUBJECT --keys-file FILE`.
    #[command(subcommand)]
    Auth(cli::auth::AuthCommand),
}

#[derive(Args)]
struct CrdArgs {
    /// Only this one (default: all, as one multi-document YAML).
    #[arg(value_enum)]
    kind: Option<CrdKind>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CrdKind {
    Mcpserver,
    Mcpservergroup,
}

#[derive(Args)]
struct ValidateArgs {
    /// Manifest directories (as `serve --manifests` reads them) or YAML files.
    #[arg(required = true, value_parser = cli::paths::absolute_path)]
    paths: Vec<PathBuf>,
    /// Check for Podman hosts (`serve`) or for Kubernetes (the operator).
    #[arg(long, value_enum, default_value = "podman")]
    target: cli::validate::ValidateTarget,
    #[command(flatten)]
    defaults: DefaultsArgs,
}

#[derive(Args)]
struct CompletionsArgs {
    /// The shell, e.g. `mcpod completions bash > /etc/bash_completion.d/mcpod`.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Args)]
struct BackupArgs {
    /// The data directory to save (`serve --data-dir`).
    #[arg(long, env = "MCPOD_DATA_DIR", value_parser = cli::paths::absolute_path)]
    data_dir: PathBuf,
    /// The MCPServer manifests directory to save (`serve --manifests`).
    #[arg(long, env = "MCPOD_MANIFESTS", value_parser = cli::paths::absolute_path)]
    manifests: PathBuf,
    /// The archive to write (.tar.gz).
    #[arg(long, value_parser = cli::paths::absolute_path)]
    output: PathBuf,
    /// Replace the archive if it exists.
    #[arg(long)]
    force: bool,
    /// Leave the named volumes out (they are exported with the `podman` CLI).
    #[arg(long)]
    no_volumes: bool,
}

#[derive(Args)]
struct RestoreArgs {
    /// The archive `mcpod backup` wrote.
    #[arg(long, value_parser = cli::paths::absolute_path)]
    input: PathBuf,
    /// Where to restore the data directory.
    #[arg(long, env = "MCPOD_DATA_DIR", value_parser = cli::paths::absolute_path)]
    data_dir: PathBuf,
    /// Where to restore the manifests.
    #[arg(long, env = "MCPOD_MANIFESTS", value_parser = cli::paths::absolute_path)]
    manifests: PathBuf,
    /// Replace existing files and import into existing volumes.
    #[arg(long)]
    force: bool,
    /// Do not import the named volumes the backup holds.
    #[arg(long)]
    no_volumes: bool,
}

/// Defaults for what an MCPServer leaves out (the same knobs as `serve`).
#[derive(Args)]
struct DefaultsArgs {
    /// Idle time before a server is scaled to zero, when its spec does not say (0 = never).
    #[arg(long, env = "AUTO_SHUTDOWN_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Longest wait for one answer from a server, when its spec does not say.
    #[arg(long, env = "STDIO_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Longest wait for a server to start and initialize, when its spec does not say.
    #[arg(long, env = "MCPOD_STARTUP_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    startup_timeout: Duration,
    /// Memory limit per server, when its spec does not say.
    #[arg(long, env = "MAX_MEMORY_PER_CONTAINER", default_value = "512Mi")]
    max_memory: String,
    /// CPU limit per server, when its spec does not say.
    #[arg(long, env = "MAX_CPU_PER_CONTAINER", default_value = "1")]
    max_cpu: String,
    /// How often a quiet running server must answer a ping, when its spec does not say (0 = never).
    #[arg(long, env = "HEALTH_CHECK_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    health_check_interval: Duration,
    /// Initial bytes buffered for a server's stdout, when its spec does not say.
    #[arg(long, env = "STDIO_BUFFER_SIZE", default_value_t = 8192)]
    stdio_buffer_size: usize,
    #[command(flatten)]
    policy: PolicyArgs,
}

impl DefaultsArgs {
    fn defaults(&self) -> Defaults {
        Defaults {
            memory: self.max_memory.clone(),
            cpu: self.max_cpu.clone(),
            idle_timeout: self.idle_timeout,
            startup_timeout: self.startup_timeout,
            request_timeout: self.request_timeout,
            health_check_interval: self.health_check_interval,
            stdio_buffer_size: self.stdio_buffer_size,
            policy: self.policy.policy(),
            host_users: true,
        }
    }
}

/// Which MCPServers a cluster component watches.
#[derive(Args)]
struct ScopeArgs {
    /// Namespace to watch (and the router's home namespace). Default: the in-cluster or kubeconfig namespace.
    #[arg(long, env = "MCPOD_NAMESPACE")]
    namespace: Option<String>,
    /// Watch every namespace (needs a ClusterRole).
    #[arg(long, env = "MCPOD_ALL_NAMESPACES")]
    all_namespaces: bool,
}

#[derive(Args)]
struct OperatorArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    #[command(flatten)]
    defaults: DefaultsArgs,
    /// Address of the operator's `/health` endpoint (for probes).
    #[arg(long, env = "MCPOD_HEALTH_LISTEN", default_value = "0.0.0.0:8081")]
    health_listen: SocketAddr,
    /// Give each server's pod a user namespace of its own (`hostUsers: false`;
    /// Kubernetes 1.30+ with a runtime that supports it).
    #[arg(long, env = "MCPOD_POD_USER_NAMESPACE")]
    pod_user_namespace: bool,
    /// Run as one of several replicas: only the holder of the Lease
    /// `mcpod-operator` (in the operator's namespace) reconciles.
    #[arg(long, env = "MCPOD_LEADER_ELECT")]
    leader_elect: bool,
    #[command(flatten)]
    lease: LeaseArgs,
}

/// How a replica among several holds its Leases (the operator's lead, the
/// router's servers).
#[derive(Args)]
struct LeaseArgs {
    /// This replica's name on Leases (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a Lease stays valid without renewal: the longest a crashed
    /// replica's work waits for another replica to take it over.
    #[arg(long, env = "MCPOD_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// How often a holder renews its Leases (and a standby looks at them).
    #[arg(long, env = "MCPOD_LEASE_RENEW_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    lease_renew_interval: Duration,
}

/// Bounds on the HTTP connections clients hold (a timeout of 0 disables it).
#[derive(Args)]
struct ConnectionArgs {
    /// Longest time from a connection's opening (or a request's first byte)
    /// to the end of the request's headers; slower clients are disconnected.
    #[arg(long, env = "MCPOD_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    #[arg(long, env = "MCPOD_KEEP_ALIVE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    keep_alive_timeout: Duration,
    /// Longest pause in the middle of a request body; the request is answered 408.
    #[arg(long, env = "MCPOD_BODY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    body_timeout: Duration,
    /// Open HTTP connections at most; past it, new ones get 503 at once. Needs
    /// this many file descriptors plus about 1024 (LimitNOFILE); mcpod lowers
    /// it, with a warning, if its descriptor limit is smaller.
    #[arg(long, env = "MCPOD_MAX_CONNECTIONS", default_value_t = 8192)]
    max_connections: usize,
}

impl ConnectionArgs {
    fn limits(&self) -> mcpod::listener::Limits {
        let enabled = |timeout: Duration| (!timeout.is_zero()).then_some(timeout);
        mcpod::listener::Limits {
            header_timeout: enabled(self.header_timeout),
            keep_alive_timeout: enabled(self.keep_alive_timeout),
            body_timeout: enabled(self.body_timeout),
            max_connections: self.max_connections,
        }
        .fit_to_descriptors()
    }
}

#[derive(Args)]
struct RouterArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    #[command(flatten)]
    defaults: DefaultsArgs,
    /// Address the HTTP router listens on.
    #[arg(long, env = "MCPOD_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Largest HTTP request body accepted.
    #[arg(long, env = "MCPOD_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    /// On the aggregated endpoint `/mcp`: what joins a server's name and its
    /// tool's or prompt's (`time__get_current_time`).
    #[arg(long, env = "MCPOD_TOOL_SEPARATOR", default_value = mcpod::aggregate::DEFAULT_SEPARATOR)]
    tool_separator: String,
    /// Largest JSON-RPC message accepted from a server.
    #[arg(long, env = "MCPOD_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_message_bytes: usize,
    #[command(flatten)]
    connections: ConnectionArgs,
    #[command(flatten)]
    replicas: ReplicaArgs,
    #[command(flatten)]
    auth: cli::auth::AuthArgs,
    /// A second address serving only GET /health and /metrics, without
    /// authentication (kubelet probes, Prometheus); none by default.
    #[arg(long, env = "MCPOD_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
}

/// Several router replicas: each server is served by the replica holding its
/// Lease; the others forward to the address it advertises.
#[derive(Args)]
struct ReplicaArgs {
    /// Where the other replicas reach this router (`pod-ip:port`). Set it to run
    /// several replicas; without it this router assumes it is the only one.
    #[arg(long, env = "MCPOD_ADVERTISE_ADDRESS")]
    advertise_address: Option<String>,
    #[command(flatten)]
    lease: LeaseArgs,
}

#[derive(Args)]
struct ExportArgs {
    /// The MCPServer to export.
    name: String,
    /// Directory of MCPServer YAML files.
    #[arg(long, env = "MCPOD_MANIFESTS", default_value = "examples", value_parser = cli::paths::absolute_path)]
    manifests: PathBuf,
    #[command(flatten)]
    defaults: DefaultsArgs,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    defaults: DefaultsArgs,
    /// Directory of MCPServer YAML files; watched for changes.
    #[arg(long, env = "MCPOD_MANIFESTS", default_value = "examples", value_parser = cli::paths::absolute_path)]
    manifests: PathBuf,
    /// Address the HTTP router listens on.
    #[arg(long, env = "MCPOD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Name that scopes this mcpod's containers, so several can share one Podman.
    #[arg(long, env = "MCPOD_INSTANCE", default_value = "default")]
    instance: String,
    /// Where mcpod keeps its state (and the Podman socket it starts, if any).
    #[arg(long, env = "MCPOD_DATA_DIR", value_parser = cli::paths::absolute_path)]
    data_dir: Option<PathBuf>,
    /// Largest HTTP request body accepted.
    #[arg(long, env = "MCPOD_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    /// On the aggregated endpoint `/mcp`: what joins a server's name and its
    /// tool's or prompt's (`time__get_current_time`).
    #[arg(long, env = "MCPOD_TOOL_SEPARATOR", default_value = mcpod::aggregate::DEFAULT_SEPARATOR)]
    tool_separator: String,
    /// Largest JSON-RPC message accepted from a server.
    #[arg(long, env = "MCPOD_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_message_bytes: usize,
    #[command(flatten)]
    auth: cli::auth::AuthArgs,
    /// Client sessions idle for longer than this end; their clients re-initialize.
    #[arg(long, env = "MCPOD_SESSION_TTL", default_value = "1h", value_parser = parse_duration)]
    session_ttl: Duration,
    /// How long a server may take to exit after its stdin closes, before SIGTERM.
    #[arg(long, env = "MCPOD_STOP_GRACE", default_value = "1s", value_parser = parse_duration)]
    stop_grace: Duration,
    /// Client sessions one server holds at most; past it `initialize` gets 503 and Retry-After.
    #[arg(long, env = "MCPOD_MAX_SESSIONS", default_value_t = 10_000)]
    max_sessions: usize,
    /// Client sessions one client holds per server at most (an authenticated
    /// subject; unauthenticated local callers share one budget); past it 429.
    #[arg(long, env = "MCPOD_MAX_SESSIONS_PER_CLIENT", default_value_t = 1_000)]
    max_sessions_per_client: usize,
    /// `sessionMode: Isolated`: containers one server runs at most (one per session).
    #[arg(long, env = "MCPOD_MAX_ISOLATED", default_value_t = 32)]
    max_isolated: usize,
    /// `sessionMode: Isolated`: containers of one server one client holds at most; past it 429.
    #[arg(long, env = "MCPOD_MAX_ISOLATED_PER_CLIENT", default_value_t = 8)]
    max_isolated_per_client: usize,
    #[command(flatten)]
    disk: DiskArgs,
    /// How servers are kept apart on the host: `per-server` (a user namespace and
    /// host uid range of its own, from a hash of its name; `per-server:BASE` moves
    /// the 2^30-id span), `auto` (Podman's userns=auto, needs /etc/subuid) or `host`.
    #[arg(long, env = "MCPOD_USER_NAMESPACE", default_value = "per-server")]
    user_namespace: podman::UserNamespace,
    /// How each server's stdio is reached: `auto` (conmon's attach socket, as
    /// `podman attach` does, when mcpod can open it on this host; else the
    /// Podman service) or `service` (always the service's attach endpoint,
    /// which relays every message).
    #[arg(long, env = "MCPOD_PODMAN_ATTACH", default_value = "auto")]
    podman_attach: podman::AttachVia,
    #[command(flatten)]
    connections: ConnectionArgs,
    /// How often each running container's CPU, memory and I/O is sampled for
    /// `/metrics` and `/servers` (0 = never).
    #[arg(long, env = "MCPOD_USAGE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    usage_interval: Duration,
}

/// Guardrails on what an MCPServer may ask of the host (see `mcpod::policy`).
#[derive(Args)]
struct PolicyArgs {
    /// Host folders `hostPath` volumes may mount (at or below; `/`, `/etc`, engine sockets never).
    #[arg(
        long = "allow-host-path",
        env = "MCPOD_ALLOWED_HOST_PATHS",
        value_delimiter = ',',
        default_value = "/srv/mcpod"
    )]
    allowed_host_paths: Vec<PathBuf>,
    /// Folders `valueFromFile` may read from.
    #[arg(
        long = "secrets-dir",
        env = "MCPOD_SECRETS_DIRS",
        value_delimiter = ',',
        default_value = "/etc/mcpod/secrets"
    )]
    secrets_dirs: Vec<PathBuf>,
    /// Allow `runAsUser: 0`.
    #[arg(long, env = "MCPOD_ALLOW_ROOT")]
    allow_root: bool,
    /// Capabilities `addCapabilities` may name (none by default).
    #[arg(
        long = "allow-capability",
        env = "MCPOD_ALLOWED_CAPABILITIES",
        value_delimiter = ','
    )]
    allowed_capabilities: Vec<String>,
}

impl PolicyArgs {
    fn policy(&self) -> mcpod::policy::Policy {
        mcpod::policy::Policy {
            allowed_host_paths: self.allowed_host_paths.clone(),
            secrets_dirs: self.secrets_dirs.clone(),
            allow_root: self.allow_root,
            allowed_capabilities: self.allowed_capabilities.clone(),
        }
    }
}

/// What mcpod may write to disk: its own log and each server's.
#[derive(Args)]
struct DiskArgs {
    /// Size at which mcpod's own log (`<data-dir>/logs/router/mcpod.log`) is rotated.
    #[arg(long, env = "MCPOD_LOG_MAX_BYTES", default_value_t = 20 * 1024 * 1024)]
    log_max_bytes: u64,
    /// Rotated files of mcpod's own log kept (`mcpod.log.1` … `.N`).
    #[arg(long, env = "MCPOD_LOG_KEEP", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    log_keep: u64,
    /// Size at which a server's log (`<data-dir>/logs/containers/<name>.log`) is rotated.
    #[arg(long, env = "MCPOD_SERVER_LOG_MAX_BYTES", default_value_t = 10 * 1024 * 1024)]
    server_log_max_bytes: u64,
    /// Rotated files of each server's log kept.
    #[arg(long, env = "MCPOD_SERVER_LOG_KEEP", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    server_log_keep: u64,
    /// Stderr lines per second a server may write to its log; the rest are dropped and counted (0 = no limit).
    #[arg(long, env = "MCPOD_STDERR_LINES_PER_SECOND", default_value_t = 100)]
    stderr_lines_per_second: u32,
    /// Stderr lines a server may write at once above that rate.
    #[arg(long, env = "MCPOD_STDERR_BURST", default_value_t = 1000)]
    stderr_burst: u32,
}

impl DiskArgs {
    fn server_log_limits(&self) -> mcpod::logs::LogLimits {
        mcpod::logs::LogLimits {
            max_bytes: self.server_log_max_bytes,
            keep: self.server_log_keep as usize,
            stderr_lines_per_second: self.stderr_lines_per_second,
            stderr_burst: self.stderr_burst,
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    duration::parse(text)
}

#[derive(Args)]
struct LogsArgs {
    /// The MCPServer's name.
    name: String,
    /// The data dir `mcpod serve` uses.
    #[arg(long, env = "MCPOD_DATA_DIR", value_parser = cli::paths::absolute_path)]
    data_dir: Option<PathBuf>,
    /// How many of the last lines to print.
    #[arg(long, default_value_t = 100)]
    tail: usize,
    /// Keep printing lines as they are written (across rotations), until interrupted.
    #[arg(short = 'f', long)]
    follow: bool,
}

fn data_dir_of(args: &ServeArgs) -> PathBuf {
    args.data_dir.clone().unwrap_or_else(default_data_dir)
}

/// `RUST_LOG` when unset. warp logs every connection a client drops
/// mid-response (a closed SSE stream, an impatient curl) as an ERROR, which is
/// the client's doing and not actionable: silenced (`warp::server=error` shows
/// it). Its two lines per request (`warp::filters::trace`) were the bulk of
/// the log under load: requests are counted in `/metrics` instead.
const DEFAULT_LOG_FILTER: &str = "info,warp::server=off,warp::filters::trace=warn";

/// mcpod's own log file, rotated by size.
struct LogFile<'a> {
    path: &'a std::path::Path,
    max_bytes: u64,
    keep: usize,
}

/// Logs to stderr (and, for `serve`, to a rotated file too), filtered by
/// `RUST_LOG`, as text or JSON lines; with `traces`, exports OpenTelemetry
/// traces when `OTEL_EXPORTER_OTLP_*` asks for them.
fn init_logging(file: Option<LogFile>, format: mcpod::logs::LogFormat, traces: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    mcpod::logs::configure_format(format);
    let json = format == mcpod::logs::LogFormat::Json;
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into());
    let tracer = if traces {
        mcpod::telemetry::from_env()
    } else {
        Ok(None)
    };
    if let Ok(Some(_)) = &tracer {
        if let Ok(directive) = mcpod::telemetry::DIRECTIVE.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(!json && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let stderr = if json {
        stderr.json().boxed()
    } else {
        stderr.boxed()
    };
    let file = file.map(|file| {
        let rotating = mcpod::logs::RotatingFile::open(file.path, file.max_bytes, file.keep);
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(std::sync::Mutex::new(rotating))
            .with_ansi(false);
        if json {
            layer.json().boxed()
        } else {
            layer.boxed()
        }
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .with(
            tracer
                .as_ref()
                .ok()
                .cloned()
                .flatten()
                .map(mcpod::telemetry::layer),
        )
        .init();
    if let Err(e) = tracer {
        error!("{e}; serving without traces");
    }
}

fn show_logs(args: &LogsArgs) -> mcpod::Result<()> {
    let dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let path = dir
        .join("logs/containers")
        .join(format!("{}.log", args.name));
    if args.follow {
        return cli::finish(cli::logs::follow(&path, args.tail));
    }
    if !path.exists() {
        return Err(mcpod::Error::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no log for this server yet"),
        });
    }
    for line in mcpod::logs::tail_file(&path, args.tail) {
        println!("{line}");
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let threads = cli
        .worker_threads
        .filter(|&n| n > 0)
        .unwrap_or_else(default_worker_threads);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("starting the async runtime");
    runtime.block_on(run(cli));
}

async fn run(cli: Cli) {
    // `serve` also keeps its own log under the data dir (logs/router/mcpod.log).
    let log_path = match &cli.command {
        Command::Serve(args) => Some(data_dir_of(args).join("logs/router/mcpod.log")),
        _ => None,
    };
    let log_file = match (&cli.command, &log_path) {
        (Command::Serve(args), Some(path)) => {
            mcpod::logs::configure(args.disk.server_log_limits());
            Some(LogFile {
                path,
                max_bytes: args.disk.log_max_bytes,
                keep: args.disk.log_keep as usize,
            })
        }
        _ => None,
    };
    let traces = matches!(cli.command, Command::Serve(_) | Command::Router(_));
    init_logging(log_file, cli.log_format, traces);
    let result = match cli.command {
        Command::Crd(args) => {
            let yaml = match args.kind {
                None => crd::all_crds_yaml(),
                Some(CrdKind::Mcpserver) => crd::crd_yaml(),
                Some(CrdKind::Mcpservergroup) => crd::group::crd_yaml(),
            };
            print!("{yaml}");
            Ok(())
        }
        Command::Serve(args) => serve(*args).await,
        Command::Logs(args) => show_logs(&args),
        Command::Operator(args) => kube_cli::operator(*args).await,
        Command::Router(args) => kube_cli::router(*args).await,
        Command::Export(args) => kube_cli::export(&args),
        Command::Backup(args) => backup_cli::backup(&args),
        Command::Restore(args) => backup_cli::restore(&args),
        Command::Get(args) => cli::finish(cli::get::run(*args).await),
        Command::Validate(args) => cli::finish(cli::validate::run(
            &args.paths,
            &args.defaults.defaults(),
            args.target,
        )),
        Command::Connect(args) => cli::finish(cli::connect::run(*args).await),
        Command::Auth(command) => cli::finish(cli::auth::run(command)),
        Command::Add(args) => {
            let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
            cli::finish(cli::add::run(*args, &data_dir).await)
        }
        Command::Completions(args) => {
            use clap::CommandFactory;
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "mcpod",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    mcpod::telemetry::shutdown();
    if let Err(e) = result {
        error!("{e}");
        eprintln!("mcpod: {e}");
        std::process::exit(1);
    }
}

fn default_data_dir() -> PathBuf {
    if nix_is_root() {
        return PathBuf::from("/var/lib/mcpod");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    // Absolute like every path option (see cli::paths), whatever XDG_DATA_HOME holds.
    std::path::absolute(base.join("mcpod")).unwrap_or_else(|_| base.join("mcpod"))
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

async fn serve(args: ServeArgs) -> mcpod::Result<()> {
    // First: a setting that cannot be served safely stops mcpod before anything starts.
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let access = Arc::new(args.auth.access.build(cli::access::AuditDefault {
        path: Some(&data_dir.join("logs/audit/audit.log")),
        max_bytes: args.disk.log_max_bytes,
        keep: args.disk.log_keep as usize,
    }));
    let auth = args.auth.build(args.listen, None, access.clone())?;
    let defaults = args.defaults.defaults();
    let settings = Settings {
        max_message_bytes: args.max_message_bytes,
        stop_grace: args.stop_grace,
        session_ttl: args.session_ttl,
        max_sessions: args.max_sessions,
        max_sessions_per_client: args.max_sessions_per_client,
        max_isolated: args.max_isolated,
        max_isolated_per_client: args.max_isolated_per_client,
        log_dir: Some(data_dir.join("logs/containers")),
        catalog_dir: Some(data_dir.join("catalog")),
        // `spec.package` servers are built on first use, as `mcpod add` builds.
        builder: Some(mcpod::package::Builder(Arc::new(
            cli::add::ServeBuilder::new(&data_dir, None),
        ))),
        access: access.clone(),
        ..Settings::default()
    };
    // A read-only or full data directory loses logs and state, but mcpod can
    // still serve: one loud warning, and /health lists it.
    if let Err(e) = mcpod::datadir::create_layout(&data_dir) {
        error!("{e}; mcpod keeps serving without it");
    }
    for dir in ["logs/router", "logs/containers"] {
        if let Err(problem) = mcpod::logs::check_writable(&data_dir.join(dir)) {
            error!("{problem}");
        }
    }
    // Kept alive for the whole run: dropping it stops a Podman service mcpod started.
    let (socket, _owned_service) = podman::connect(&data_dir.join("run")).await?;
    let runtime = Arc::new(
        PodmanRuntime::new(&socket, &args.instance)
            .with_user_namespace(args.user_namespace)
            .with_attach_via(args.podman_attach),
    );
    let reconciler = Reconciler::new(runtime.clone(), defaults, settings);
    if !args.usage_interval.is_zero() {
        mcpod::metrics::usage::spawn(runtime, &reconciler, args.usage_interval);
    }
    if !args.manifests.is_dir() {
        return Err(mcpod::Error::Io {
            path: args.manifests.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    reconciler.reload(&args.manifests).await;
    if !auth.required() {
        for server in reconciler.servers() {
            server.access_control().warn_if_unenforced(&server);
        }
    }
    reconciler.adopt().await;
    tokio::spawn(
        reconciler
            .clone()
            .watch(args.manifests.clone(), Duration::from_secs(1)),
    );

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| mcpod::Error::Io {
            path: PathBuf::from(args.listen.to_string()),
            source,
        })?;
    let address = listener.local_addr().map_err(|source| mcpod::Error::Io {
        path: PathBuf::from(args.listen.to_string()),
        source,
    })?;
    info!(%address, servers = reconciler.servers().len(), "router listening");
    println!("mcpod listening on http://{address}");
    // The URLs MCP clients recognise as Streamable HTTP (`mcpod connect` prints them as
    // config). Errors ignored: whoever started mcpod may have read only the line above and
    // closed the pipe, which must not stop mcpod.
    for server in reconciler.servers() {
        use std::io::Write;
        let name = server.status().name;
        let _ = writeln!(
            std::io::stdout(),
            "  {name}: http://{address}/servers/{name}/mcp"
        );
    }
    let routes = router::routes(
        reconciler.clone(),
        RouterConfig {
            endpoint: EndpointConfig {
                max_body_bytes: args.max_body_bytes,
                tool_separator: args.tool_separator.clone(),
            },
            auth,
            ownership: None,
        },
    );
    let limits = args.connections.limits();
    serve_until_signal(routes, listener, limits, reconciler.clone()).await;
    info!("shutting down: stopping servers");
    reconciler.shutdown().await;
    // Records of the last moments (stops included) are on disk before exit.
    access.audit.flush();
    Ok(())
}

/// Serves `routes` until SIGINT/SIGTERM, then ends client sessions (open SSE
/// streams would otherwise hold a graceful shutdown forever) and waits at most
/// 10 s for connections to finish.
async fn serve_until_signal<F>(
    routes: F,
    listener: tokio::net::TcpListener,
    limits: mcpod::listener::Limits,
    reconciler: Arc<Reconciler>,
) where
    F: warp::Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    // What a burst of clients made mcpod allocate goes back once it is freed.
    let _trimmer = mcpod::memory::spawn_trimmer(mcpod::memory::TRIM_INTERVAL);
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let server = mcpod::listener::serve(routes, listener, limits, async move {
        shutdown_signal().await;
        reconciler.end_sessions();
        let _ = stopping_tx.send(());
    });
    tokio::pin!(server);
    tokio::select! {
        _ = &mut server => {}
        _ = async {
            let _ = stopping.await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        } => info!("connections still open after 10 s; closing them"),
    }
}

/// `backup` and `restore`: thin wrappers over `mcpod::backup` that print what was done.
mod backup_cli {
    use super::{BackupArgs, RestoreArgs};
    use mcpod::backup::{self, BackupOptions, RestoreOptions, Summary};

    fn print(verb: &str, path: &std::path::Path, summary: &Summary) {
        println!(
            "{verb} {}: {} files, volumes: [{}]",
            path.display(),
            summary.files,
            summary.volumes.join(", ")
        );
        for name in &summary.missing_volumes {
            println!("volume {name} is declared but does not exist: nothing to save");
        }
    }

    pub fn backup(args: &BackupArgs) -> mcpod::Result<()> {
        let summary = backup::backup(&BackupOptions {
            data_dir: args.data_dir.clone(),
            manifests: args.manifests.clone(),
            output: args.output.clone(),
            force: args.force,
            volumes: !args.no_volumes,
        })?;
        print("wrote", &args.output, &summary);
        Ok(())
    }

    pub fn restore(args: &RestoreArgs) -> mcpod::Result<()> {
        let summary = backup::restore(&RestoreOptions {
            input: args.input.clone(),
            data_dir: args.data_dir.clone(),
            manifests: args.manifests.clone(),
            force: args.force,
            volumes: !args.no_volumes,
        })?;
        print("restored", &args.input, &summary);
        Ok(())
    }
}

/// The Kubernetes commands: `operator`, `router`, and `export` (which needs no cluster).
mod kube_cli {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::{Api, Client};
    use mcpod::crd::{MCPServer, MCPServerGroup};
    use mcpod::kube::catalog::KubeCatalogs;
    use mcpod::kube::election::{self, Election};
    use mcpod::kube::lease::LeaseSettings;
    use mcpod::kube::operator::{self, Scope};
    use mcpod::kube::ownership::Ownership;
    use mcpod::kube::pod;
    use mcpod::kube::runtime::{sync_groups, sync_servers, KubeRuntime};
    use mcpod::workload::{Target, Workload};
    use mcpod::Error;
    use tracing::warn;
    use warp::Filter;

    /// How long the router waits for the catalog ConfigMaps before serving.
    const CATALOG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

    async fn connect(scope: &ScopeArgs) -> mcpod::Result<(Client, String)> {
        let client = mcpod::kube::client::infer().await.map_err(Error::kube(
            "connect to the cluster (in-cluster config or kubeconfig)",
        ))?;
        let namespace = scope
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        Ok((client, namespace))
    }

    async fn bind(address: SocketAddr) -> mcpod::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| Error::Io {
                path: PathBuf::from(address.to_string()),
                source,
            })
    }

    pub async fn operator(args: OperatorArgs) -> mcpod::Result<()> {
        let (client, namespace) = connect(&args.scope).await?;
        let scope = if args.scope.all_namespaces {
            Scope::Cluster
        } else {
            Scope::Namespace(namespace.clone())
        };
        let listener = bind(args.health_listen).await?;
        // The probes' endpoint; the controller's own failures end the process.
        let health = warp::path!("health")
            .map(|| warp::reply::json(&serde_json::json!({"status": "healthy"})));
        tokio::spawn(mcpod::listener::serve(
            health,
            listener,
            mcpod::listener::Limits::default().fit_to_descriptors(),
            std::future::pending(),
        ));
        let election = if args.leader_elect {
            let (identity, settings) = args.lease.resolve("--leader-elect")?;
            info!(%identity, lease = election::LEASE_NAME, "one of several operator replicas");
            Some(Election::new(
                client.clone(),
                &namespace,
                &identity,
                settings,
            ))
        } else {
            None
        };
        let defaults = mcpod::workload::Defaults {
            host_users: !args.pod_user_namespace,
            ..args.defaults.defaults()
        };
        operator::run(client, scope, defaults, election).await
    }

    impl LeaseArgs {
        /// This replica's name (as given, else the host name: the pod's name)
        /// and the Lease timing, checked; `needed_by` names the flag that asked.
        fn resolve(&self, needed_by: &str) -> mcpod::Result<(String, LeaseSettings)> {
            let (duration, renew_interval) = (self.lease_duration, self.lease_renew_interval);
            if renew_interval >= duration {
                return Err(Error::Cluster(format!(
                    "--lease-renew-interval ({renew_interval:?}) must be shorter than --lease-duration ({duration:?})"
                )));
            }
            let identity = self
                .identity
                .clone()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .ok_or_else(|| {
                    Error::Cluster(format!(
                        "--identity (or POD_NAME) is needed with {needed_by}"
                    ))
                })?;
            let settings = LeaseSettings {
                duration,
                renew_interval,
            };
            Ok((identity, settings))
        }
    }

    /// The Leases of a replica among several, when it advertises an address.
    fn ownership(client: &Client, args: &ReplicaArgs) -> mcpod::Result<Option<Arc<Ownership>>> {
        let Some(address) = &args.advertise_address else {
            return Ok(None);
        };
        let (identity, settings) = args.lease.resolve("--advertise-address")?;
        info!(%identity, %address, "serving as one of several router replicas");
        Ok(Some(Ownership::new(
            client.clone(),
            &identity,
            address,
            settings,
        )))
    }

    pub async fn router(args: RouterArgs) -> mcpod::Result<()> {
        let (client, namespace) = connect(&args.scope).await?;
        // On stdout, for the cluster's log pipeline (mcpod's own log is on stderr).
        let access = Arc::new(args.auth.access.build(cli::access::AuditDefault {
            path: None,
            max_bytes: 20 * 1024 * 1024,
            keep: 5,
        }));
        let auth = args
            .auth
            .build(args.listen, Some(&client), access.clone())?;
        let ownership = ownership(&client, &args.replicas)?;
        let mut runtime = KubeRuntime::new(client.clone(), &namespace, args.scope.all_namespaces);
        if let Some(ownership) = &ownership {
            runtime = runtime.with_ownership(ownership.clone());
        }
        let runtime = Arc::new(runtime);
        let catalogs = KubeCatalogs::new(client.clone());
        let settings = Settings {
            max_message_bytes: args.max_message_bytes,
            access: access.clone(),
            catalog_store: Some(catalogs.clone()),
            ..Settings::default()
        };
        let reconciler =
            Reconciler::for_kubernetes(runtime, args.defaults.defaults(), settings, &namespace);
        if let Some(ownership) = &ownership {
            mcpod::kube::replicas::track_usage(ownership, &reconciler);
        }
        type Apis = (Api<MCPServer>, Api<MCPServerGroup>, Api<ConfigMap>);
        let (servers, groups, maps): Apis = if args.scope.all_namespaces {
            (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client),
            )
        } else {
            (
                Api::namespaced(client.clone(), &namespace),
                Api::namespaced(client.clone(), &namespace),
                Api::namespaced(client, &namespace),
            )
        };
        tokio::spawn(catalogs.clone().watch(maps, Arc::downgrade(&reconciler)));
        tokio::spawn(sync_servers(servers, reconciler.clone()));
        tokio::spawn(sync_groups(groups, reconciler.clone()));
        // Listing before the catalogs are read would start servers to list them.
        if !catalogs.wait_listed(CATALOG_WAIT).await {
            warn!(waited = ?CATALOG_WAIT, "catalog ConfigMaps not listed yet; serving anyway");
        }
        if let Some(address) = args.health_listen {
            let probes = bind(address).await?;
            info!(%address, "health and metrics listening (unauthenticated: GET /health, /metrics)");
            tokio::spawn(mcpod::listener::serve(
                router::probe_routes(reconciler.clone()),
                probes,
                mcpod::listener::Limits::default().fit_to_descriptors(),
                std::future::pending(),
            ));
        }
        let listener = bind(args.listen).await?;
        info!(address = %args.listen, %namespace, all_namespaces = args.scope.all_namespaces, "router listening");
        let routes = router::routes(
            reconciler.clone(),
            RouterConfig {
                endpoint: EndpointConfig {
                    max_body_bytes: args.max_body_bytes,
                    tool_separator: args.tool_separator.clone(),
                },
                auth,
                ownership: ownership.clone(),
            },
        );
        // Pods are left running on exit: the operator scales them to zero, and
        // another replica that takes a server over replaces its pod.
        let limits = args.connections.limits();
        serve_until_signal(routes, listener, limits, reconciler).await;
        if let Some(ownership) = ownership {
            // Released, not left to run out: the other replicas take over at once.
            ownership.shutdown(true).await;
        }
        access.audit.flush();
        Ok(())
    }

    pub fn export(args: &ExportArgs) -> mcpod::Result<()> {
        let manifests = mcpod::manifests::load_dir(&args.manifests)?;
        let Some(loaded) = manifests
            .servers
            .iter()
            .find(|l| l.server.metadata.name.as_deref() == Some(args.name.as_str()))
        else {
            let known: Vec<_> = manifests
                .servers
                .iter()
                .filter_map(|l| l.server.metadata.name.clone())
                .collect();
            return Err(Error::Manifest {
                file: args.manifests.clone(),
                message: format!(
                    "no MCPServer named '{}' (found: {})",
                    args.name,
                    known.join(", ")
                ),
            });
        };
        // Podman resolution: valueFromFile is read here, on the host that will run the pod.
        let workload = Workload::resolve(
            &args.name,
            &loaded.server.spec,
            &args.defaults.defaults(),
            Target::Podman,
        )?;
        print!("{}", pod::export_yaml(&workload)?);
        Ok(())
    }
}
