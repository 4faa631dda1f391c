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

/// Why a secret could not be read. It never holds the secret's value nor the name the
/// config gave (an admin may have put the secret itself there by mistake): the caller
/// names the config key instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the file named by {key} cannot be read: {reason}")]
    Unreadable { key: String, reason: String },
    #[error("the file named by {key} is empty")]
    EmptyFile { key: String },
    #[error("the environment variable named by {key} is not set")]
    EnvNotSet { key: String },
    #[error("the environment variable named by {key} is empty")]
    EnvEmpty { key: String },
    #[error("the environment variable named by {key} is not valid UTF-8")]
    EnvNotUnicode { key: String },
    #[error(
        "{key} names a systemd credential, but CREDENTIALS_DIRECTORY is not set \
         (is the service started with LoadCredential=...?)"
    )]
    NoCredentials { key: String },
}

impl SecretSource {
    /// Reads the secret; `key` is the config key that named this source, for errors.
    pub fn read(&self, key: &str) -> Result<Secret, SecretError> {
        let key = key.to_string();
        match self {
            SecretSource::File(path) => read_secret_file(path, key),
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Secret(v)),
                Ok(_) => Err(SecretError::EnvEmpty { key }),
                Err(std::env::VarError::NotPresent) => Err(SecretError::EnvNotSet { key }),
                Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::EnvNotUnicode { key }),
            },
            SecretSource::Credential(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) => read_secret_file(&Path::new(&dir).join(name), key),
                None => Err(SecretError::NoCredentials { key }),
            },
        }
    }

    /// The permission bits of a secret file that group or others may read, if any (a
    /// file or credential that was read; `None` for environment variables).
    pub fn readable_by_others(&self) -> Option<u32> {
        use std::os::unix::fs::PermissionsExt;
        let path = match self {
            SecretSource::File(path) => path.clone(),
            SecretSource::Credential(name) => {
                Path::new(&std::env::var_os("CREDENTIALS_DIRECTORY")?).join(name)
            }
            SecretSource::Env(_) => return None,
        };
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o044 != 0).then_some(mode)
    }
}

fn read_secret_file(path: &Path, key: String) -> Result<Secret, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|e| SecretError::Unreadable {
        key: key.clone(),
        reason: io_reason(&e),
    })?;
    let value = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if value.is_empty() {
        return Err(SecretError::EmptyFile { key });
    }
    Ok(Secret(value.to_string()))
}

/// An I/O error in words, without the OS error number.
pub fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
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
        let s = SecretSource::File(p).read("k").unwrap();
        assert_eq!(s.expose(), "  pass word ");
    }

    #[test]
    fn errors_name_the_key_never_the_file_or_variable() {
        // An admin who pastes the secret where its file name belongs must not see it echoed.
        let err = SecretSource::File("/nonexistent/hunter2".into())
            .read("source.bind_password_file")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the file named by source.bind_password_file cannot be read: No such file or directory"
        );
        let err = SecretSource::Env("hunter2-not-a-variable".into())
            .read("portal.token_env")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the environment variable named by portal.token_env is not set"
        );
    }

    #[test]
    fn empty_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "\n").unwrap();
        assert_eq!(
            SecretSource::File(p).read("k").unwrap_err(),
            SecretError::EmptyFile { key: "k".into() }
        );
    }

    #[test]
    fn files_readable_by_others_are_noticed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(SecretSource::File(p.clone()).readable_by_others(), None);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(SecretSource::File(p).readable_by_others(), Some(0o640));
    }
}
