//! Path options are made absolute once, when the command line is parsed: a
//! relative `--data-dir state` would otherwise reach places that cannot read it
//! relative to anything (the Podman socket URL `unix://state/…` reads `state`
//! as a host name, and the service mcpod starts never answers).

use std::path::PathBuf;

/// clap value parser for every path option (flags, their env variables and defaults).
pub fn absolute_path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("an empty path".into());
    }
    std::path::absolute(text).map_err(|e| format!("cannot make {text} absolute: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute_under_the_working_directory() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(absolute_path("state").unwrap(), cwd.join("state"));
        assert_eq!(absolute_path("./a/b").unwrap(), cwd.join("a/b"));
        assert_eq!(absolute_path("/srv/x").unwrap(), PathBuf::from("/srv/x"));
        assert!(absolute_path("").is_err());
    }
}
