//! The directory side: reads the users (and groups) in scope.
//!
//! A read is all or nothing. A search that ends in an error, a size or time limit, a
//! timeout or a dropped connection fails the whole read: a partial list returned as if it
//! were complete would look like "everyone else left" and close people.

pub mod ad;
pub mod ldap;

use std::collections::BTreeMap;

use serde::Serialize;

pub use self::ldap::LdapSource;

/// A user entry as read from the directory, before mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryUser {
    pub dn: String,
    /// The stable identity (e.g. `entryUUID`), sent to the portal as `externalId`.
    pub anchor: String,
    /// Attribute values by lowercased attribute name.
    pub attrs: BTreeMap<String, Vec<String>>,
    /// Matched the configured `disabled_filter`.
    pub disabled: bool,
}

/// A group entry as read from the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryGroup {
    pub dn: String,
    pub anchor: String,
    pub name: String,
    /// Member DNs as stored (`member` / `uniqueMember`).
    pub members: Vec<String>,
    /// Matched the configured `portal_groups.filter`.
    pub selected: bool,
}

/// An entry the source could not use; it is reported, never synced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BadEntry {
    pub dn: String,
    pub problem: String,
}

/// Everything read from the directory in one cycle.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub users: Vec<DirectoryUser>,
    pub groups: Vec<DirectoryGroup>,
    pub bad_entries: Vec<BadEntry>,
}

/// Why a directory read failed. Every variant fails the whole read; no closures follow.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Could not reach the server. Transient: the next cycle tries again.
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    /// TLS failed, usually a CA that does not match the server's certificate. Needs an admin.
    #[error("TLS with {url} failed: {message}")]
    Tls { url: String, message: String },
    /// The bind was refused. Needs an admin (wrong DN or password, locked account).
    #[error("bind as {dn:?} refused: {message}")]
    Bind { dn: String, message: String },
    /// A search failed or did not complete. Transient or a config problem; the read is void.
    #[error("search under {base:?} failed: {message}")]
    Search { base: String, message: String },
    /// An operation took longer than the configured timeout.
    #[error("{operation} timed out after {seconds} s")]
    Timeout { operation: String, seconds: u64 },
}
