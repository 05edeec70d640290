//! Static API keys for simple setups: a file (on Kubernetes, a Secret mounted
//! as one) with one line per key,
//!
//! ```text
//! # subject   key hash                                                                   groups
//! alice       sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08   ops,team-a
//! ```
//!
//! Only the SHA-256 of each key is kept, so the file gives nothing away: keys are
//! 256 random bits, which a fast hash protects as well as a slow one would.
//! `mcpod auth add-key SUBJECT` makes a key and appends its line. The file is
//! read again when it changes, so keys are added and revoked without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use sha2::{Digest, Sha256};

use super::{AuthError, Caller, Resource, Verdict, Verify, Via};

/// Every key starts with this, so a leaked one is recognisable (secret scanners).
pub const KEY_PREFIX: &str = "mcpod_";
/// How often the file's modification time is looked at, at most.
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read API keys file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot write API keys file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    subject: String,
    groups: Vec<String>,
}

struct Loaded {
    by_hash: HashMap<String, Entry>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// The keys of one file, kept fresh.
pub struct ApiKeys {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl ApiKeys {
    /// Reads `path` now: a broken file stops mcpod at start, with the line.
    pub fn load(path: &Path) -> Result<ApiKeys, KeysError> {
        let (by_hash, modified) = read(path)?;
        tracing::info!(path = %path.display(), keys = by_hash.len(), "API keys loaded");
        Ok(ApiKeys {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                by_hash,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    fn lookup(&self, hash: &str) -> Option<Entry> {
        let mut loaded = self.loaded.lock().expect("keys lock");
        if loaded.checked.elapsed() >= RECHECK {
            loaded.checked = Instant::now();
            let modified = modified(&self.path);
            if modified != loaded.modified {
                // A file broken while mcpod runs keeps the last good keys, loudly.
                match read(&self.path) {
                    Ok((by_hash, modified)) => {
                        tracing::info!(path = %self.path.display(), keys = by_hash.len(), "API keys reloaded");
                        loaded.by_hash = by_hash;
                        loaded.modified = modified;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "API keys file not reloaded; the previous keys stay");
                        loaded.modified = modified;
                    }
                }
            }
        }
        loaded.by_hash.get(hash).cloned()
    }
}

#[async_trait::async_trait]
impl Verify for ApiKeys {
    fn name(&self) -> &'static str {
        "api-keys"
    }

    async fn verify(&self, token: &str, _resource: &Resource) -> Verdict {
        if !token.starts_with(KEY_PREFIX) {
            return Verdict::NotMine;
        }
        match self.lookup(&hash(token)) {
            Some(entry) => Verdict::Valid(Caller {
                subject: entry.subject,
                groups: entry.groups,
                scopes: vec![],
                via: Via::ApiKey,
            }),
            None => Verdict::Invalid(AuthError::InvalidToken(
                "unknown or revoked API key".to_string(),
            )),
        }
    }
}

/// `sha256:<hex>` of a key, as the file keeps it.
pub fn hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A new random key.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Makes a key for `subject`, appends its line to `path` (created mode 0600),
/// and returns the key: the only time it is ever shown.
pub fn add_key(path: &Path, subject: &str, groups: &[String]) -> Result<String, KeysError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    validate_name(subject).map_err(|message| KeysError::Syntax {
        path: path.to_path_buf(),
        line: 0,
        message: format!("subject: {message}"),
    })?;
    for group in groups {
        validate_name(group).map_err(|message| KeysError::Syntax {
            path: path.to_path_buf(),
            line: 0,
            message: format!("group: {message}"),
        })?;
    }
    let key = generate();
    let mut line = format!("{subject} {}", hash(&key));
    if !groups.is_empty() {
        line.push(' ');
        line.push_str(&groups.join(","));
    }
    line.push('\n');
    let write = |source| KeysError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(write)?;
    file.write_all(line.as_bytes()).map_err(write)?;
    Ok(key)
}

fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' must be 1-253 characters of letters, digits and - _ . : @"
        ))
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

type Parsed = (HashMap<String, Entry>, Option<SystemTime>);

fn read(path: &Path) -> Result<Parsed, KeysError> {
    let modified = modified(path);
    let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((parse(path, &text)?, modified))
}

fn parse(path: &Path, text: &str) -> Result<HashMap<String, Entry>, KeysError> {
    let mut by_hash = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let syntax = |message: String| KeysError::Syntax {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (subject, key_hash, groups) = match fields.as_slice() {
            [subject, key_hash] => (*subject, *key_hash, ""),
            [subject, key_hash, groups] => (*subject, *key_hash, *groups),
            _ => {
                return Err(syntax(
                    "expected 'SUBJECT sha256:HEX [GROUP,GROUP…]'".to_string(),
                ))
            }
        };
        validate_name(subject).map_err(|m| syntax(format!("subject: {m}")))?;
        let hex = key_hash.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(syntax(
                "the key must be given as sha256:<64 hex digits> (never the key itself)"
                    .to_string(),
            ));
        }
        let groups: Vec<String> = groups
            .split(',')
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect();
        for group in &groups {
            validate_name(group).map_err(|m| syntax(format!("group: {m}")))?;
        }
        let entry = Entry {
            subject: subject.to_string(),
            groups,
        };
        if by_hash
            .insert(key_hash.to_ascii_lowercase(), entry)
            .is_some()
        {
            return Err(syntax("the same key is listed twice".to_string()));
        }
    }
    Ok(by_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource() -> Resource {
        Resource {
            base: "http://127.0.0.1:8080".into(),
            path: "/mcp/x".into(),
            server: Some("x".into()),
            server_paths: vec!["/mcp/x".into()],
        }
    }

    #[tokio::test]
    async fn keys_are_recognised_by_their_hash_and_carry_subject_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let alice = add_key(&path, "alice", &["ops".into(), "team-a".into()]).unwrap();
        let bob = add_key(&path, "bob", &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&alice) && !text.contains(&bob),
            "keys are stored hashed"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let keys = ApiKeys::load(&path).unwrap();
        match keys.verify(&alice, &resource()).await {
            Verdict::Valid(caller) => {
                assert_eq!(caller.subject, "alice");
                assert_eq!(caller.groups, vec!["ops", "team-a"]);
                assert_eq!(caller.via, Via::ApiKey);
            }
            _ => panic!("alice's key is valid"),
        }
        assert!(
            matches!(keys.verify(&bob, &resource()).await, Verdict::Valid(c) if c.subject == "bob")
        );
        assert!(matches!(
            keys.verify("mcpod_guessed", &resource()).await,
            Verdict::Invalid(AuthError::InvalidToken(_))
        ));
        assert!(matches!(
            keys.verify("eyJhbGciOi.x.y", &resource()).await,
            Verdict::NotMine
        ));
    }

    #[test]
    fn a_broken_file_is_refused_with_its_line() {
        let path = Path::new("keys");
        let error = parse(path, "# ok\nalice mcpod_plaintextkey\n").unwrap_err();
        assert!(error.to_string().contains("keys:2"), "{error}");
        assert!(
            error.to_string().contains("never the key itself"),
            "{error}"
        );
        let line = format!("bob {}\nbob {}\n", hash("k"), hash("k"));
        assert!(parse(path, &line)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(parse(path, &format!("b@d/name {}\n", hash("k"))).is_err());
        assert_eq!(parse(path, "\n# nothing\n").unwrap().len(), 0);
    }
}
