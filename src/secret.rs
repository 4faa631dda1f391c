//! Secrets (the LDAP bind password, the portal token) and where they come from.
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` show `***`, so a secret
//! that ends up in a log line, a report or an error message reveals nothing.

use std::fmt;
use std::path::{Path, PathBuf};

/// A secret string. Read it with [`Secret::expose`], only where it is sent on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, for the one place that sends it (a bind, an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret is read from. Inline secrets in the config file are not supported on
/// purpose: config files get copied into tickets and version control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding the secret; one trailing newline is ignored.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A systemd credential (`LoadCredential=`), read from `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
}

impl SecretSource {
    /// Reads the secret. The error names where it looked, never what it found.
    pub fn read(&self) -> Result<Secret, String> {
        match self {
            SecretSource::File(path) => read_secret_file(path),
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Secret(v)),
                Ok(_) => Err(format!("environment variable {var} is empty")),
                Err(std::env::VarError::NotPresent) => {
                    Err(format!("environment variable {var} is not set"))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(format!("environment variable {var} is not valid UTF-8"))
                }
            },
            SecretSource::Credential(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) => read_secret_file(&Path::new(&dir).join(name)),
                None => Err(format!(
                    "systemd credential {name:?} asked for, but CREDENTIALS_DIRECTORY is not set \
                     (is the service started with LoadCredential={name}:...?)"
                )),
            },
        }
    }
}

fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    let value = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if value.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(Secret(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn file_secret_drops_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "  pass word \n").unwrap();
        let s = SecretSource::File(p).read().unwrap();
        assert_eq!(s.expose(), "  pass word ");
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let err = SecretSource::File("/nonexistent/pw".into())
            .read()
            .unwrap_err();
        assert!(err.contains("/nonexistent/pw"), "{err}");
    }

    #[test]
    fn empty_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "\n").unwrap();
        assert!(SecretSource::File(p).read().unwrap_err().contains("empty"));
    }
}
