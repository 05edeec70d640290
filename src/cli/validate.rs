//! `mcpod validate DIR|FILE...`: checks MCPServer and MCPServerGroup manifests offline with the
//! very checks `mcpod serve` applies (`reconcile::problems_in`: parsing,
//! duplicates, then the spec→workload step), so CI and pre-commit hooks reject
//! what `serve` would report in `/health`. Exit status 0 when all are valid.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use mcpod::manifests::{self, Loaded, LoadedGroup, Manifests};
use mcpod::reconcile::problems_in;
use mcpod::workload::{Defaults, Target};

use super::{CliError, CliResult};

/// Where the manifests are meant to run: what a spec may use differs
/// (`valueFromFile` on a Podman host, `valueFrom` Secrets on Kubernetes).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValidateTarget {
    Podman,
    Kubernetes,
}

/// Checks each path (a directory, as `serve --manifests` reads it, or a YAML
/// file); prints one line per problem and a summary per path.
pub fn run(paths: &[PathBuf], defaults: &Defaults, target: ValidateTarget) -> CliResult {
    let target = match target {
        ValidateTarget::Podman => Target::Podman,
        ValidateTarget::Kubernetes => Target::Kubernetes,
    };
    let mut invalid = 0;
    for path in paths {
        let manifests = load(path)?;
        let problems = problems_in(&manifests, defaults, target);
        for problem in &problems {
            eprintln!("invalid: {problem}");
        }
        invalid += problems.len();
        let names: Vec<String> = manifests
            .servers
            .iter()
            .filter_map(|l| l.server.metadata.name.clone())
            .collect();
        if problems.is_empty() {
            println!(
                "{}: {} valid MCPServer{} ({})",
                path.display(),
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            );
            for line in group_lines(&manifests) {
                println!("{}: {line}", path.display());
            }
        }
    }
    if invalid > 0 {
        return Err(CliError::Invalid(format!(
            "{invalid} problem{} found",
            if invalid == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// One line per group: its members among the declared servers.
fn group_lines(manifests: &Manifests) -> Vec<String> {
    mcpod::reconcile::declared_groups(manifests)
        .into_iter()
        .map(|(name, membership)| {
            let members: Vec<String> = membership
                .members
                .iter()
                .map(|m| m.server.clone())
                .collect();
            format!(
                "valid MCPServerGroup {name}: {} member{} ({})",
                members.len(),
                if members.len() == 1 { "" } else { "s" },
                members.join(", ")
            )
        })
        .collect()
}

/// A directory as `serve` reads it; a single file as if it were alone in one.
fn load(path: &Path) -> CliResult<Manifests> {
    if path.is_dir() {
        return Ok(manifests::load_dir(path)?);
    }
    if !path.exists() {
        return Err(CliError::Usage(format!(
            "{}: no such file or directory",
            path.display()
        )));
    }
    let mut result = Manifests::default();
    match manifests::load_file(path) {
        Ok(documents) => {
            result.servers = documents
                .servers
                .into_iter()
                .map(|server| Loaded {
                    file: path.to_path_buf(),
                    server,
                })
                .collect();
            result.groups = documents
                .groups
                .into_iter()
                .map(|group| LoadedGroup {
                    file: path.to_path_buf(),
                    group,
                })
                .collect();
        }
        Err(e) => {
            result
                .broken_files
                .insert(path.to_path_buf(), e.to_string());
        }
    }
    Ok(result)
}
