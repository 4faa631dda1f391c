//! LDAP source on `ldap3` (tokio, rustls): simple bind, LDAPS or StartTLS verified against a
//! CA file or the system roots, simple paged results (RFC 2696).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ldap3::controls::{Control, ControlType, PagedResults, RawControl};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, SearchEntry, SearchResult};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tracing::{debug, info, warn};

use super::ad::Guid;
use super::sync::{self, Refresh};
use super::{
    ad, BadEntry, Changed, DirectoryGroup, DirectoryUser, Snapshot, SourceError, Timestamp,
};
use crate::config::{Scope, Search, SourceConfig, SourceKind, Tls};

/// A connected, bound LDAP session.
pub struct LdapSource {
    config: SourceConfig,
    /// Directory attributes to request for users (lowercased, deduplicated).
    user_attrs: Vec<String>,
    ldap: Ldap,
    /// Send the Show Deleted control with the next searches.
    show_deleted: bool,
}

/// Which AD domain controller answered, and its highest committed USN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DcIdentity {
    /// `dnsHostName`.
    pub host: String,
    /// The `invocationId` of its NTDS Settings object: a new one after a restore from
    /// backup. `None` when it could not be read.
    pub invocation_id: Option<Guid>,
    /// `highestCommittedUSN`.
    pub usn: u64,
    /// `defaultNamingContext`.
    pub naming_context: String,
}

/// AD's back link to the groups an entry is a direct member of.
const MEMBER_OF: &str = "memberof";

/// Anchors per search when entries are read again by anchor: a filter of this many
/// `(entryUUID=…)` terms stays a few kilobytes.
const ANCHORS_PER_SEARCH: usize = 200;

/// How a content synchronisation refresh (RFC 4533, `refreshOnly`) ended.
#[derive(Debug)]
pub enum SyncAnswer {
    /// The refresh is complete: what changed, what left, and the new cookie.
    Done(Refresh),
    /// The server offers no content synchronisation for this search: it refused the
    /// control (unavailableCriticalExtension) or answered as to a plain search.
    Unsupported(String),
    /// The server will not build on the cookie: e-syncRefreshRequired, or a cookie newer
    /// than the server's own state (its database was restored or replaced).
    Refused(String),
    /// More changed entries than one search may return to this account (sizeLimitExceeded):
    /// the refresh is not paged.
    TooMany(String),
}

/// The LDAP result code e-syncRefreshRequired (RFC 4533).
const SYNC_REFRESH_REQUIRED: u32 = 4096;

/// What a `check` found, for the admin.
#[derive(Debug, Clone)]
pub struct SourceCheck {
    pub users: usize,
    pub disabled: usize,
    pub groups: Option<usize>,
    pub bad_entries: usize,
}

impl LdapSource {
    /// Connects, upgrades to TLS as configured, and binds. `attributes` are the directory
    /// attributes the mapping reads.
    pub async fn connect(
        config: &SourceConfig,
        attributes: &[String],
    ) -> Result<Self, SourceError> {
        let url = config.url.to_string();
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(config.timeout)
            .set_starttls(config.tls == Tls::StartTls);
        if config.tls != Tls::None {
            settings = settings.set_config(Arc::new(tls_config(config)?));
        }
        let (conn, mut ldap) = LdapConnAsync::from_url_with_settings(settings, &config.url)
            .await
            .map_err(|e| connect_error(&url, &config.tls, e))?;
        ldap3::drive!(conn);
        if let Some(bind) = &config.bind {
            let result = ldap
                .with_timeout(config.timeout)
                .simple_bind(&bind.dn, bind.password.expose())
                .await
                .map_err(|e| {
                    timeout_or(e, "bind", config.timeout, |m| {
                        match dropped_plain_hint(&m).filter(|_| config.tls != Tls::Ldaps) {
                            Some(hint) => SourceError::Connect {
                                url: url.clone(),
                                message: format!("{m}: {hint}"),
                            },
                            None => SourceError::Bind {
                                dn: bind.dn.clone(),
                                message: m,
                            },
                        }
                    })
                })?;
            if result.rc != 0 {
                return Err(SourceError::Bind {
                    dn: bind.dn.clone(),
                    message: bind_hint(result.rc, &result.text, config.tls == Tls::None),
                });
            }
        }
        info!(url = %url, tls = ?config.tls, "connected to the directory");
        let mut user_attrs: Vec<String> =
            attributes.iter().map(|a| a.to_ascii_lowercase()).collect();
        user_attrs.push(config.anchor_attribute.to_ascii_lowercase());
        if config.kind == SourceKind::ActiveDirectory {
            for a in [
                "userAccountControl",
                "accountExpires",
                "objectSid",
                "primaryGroupID",
                "proxyAddresses",
            ] {
                user_attrs.push(a.to_ascii_lowercase());
            }
            // The virtual attributes the mapping may use are made from proxyAddresses.
            user_attrs.retain(|a| a != "primarysmtpaddress" && a != "smtpaliases");
        }
        let mut seen = HashSet::new();
        user_attrs.retain(|a| seen.insert(a.clone()));
        Ok(LdapSource {
            config: config.clone(),
            user_attrs,
            ldap,
            show_deleted: false,
        })
    }

    /// Reads every user and group in scope. All or nothing.
    pub async fn read(&mut self) -> Result<Snapshot, SourceError> {
        Ok(self.read_where(None, false).await?.snapshot)
    }

    /// Reads only the users and groups changed after `usn` (AD `uSNChanged`): a delta,
    /// with the groups each of them is a direct member of now (`memberOf`).
    pub async fn read_changed(&mut self, usn: u64) -> Result<Changed, SourceError> {
        self.read_where(
            Some(format!("(uSNChanged>={})", usn.saturating_add(1))),
            true,
        )
        .await
    }

    /// The DC this session talks to, and how far its changes go (AD rootDSE), read
    /// before any delta search so that nothing changed during the search is missed.
    pub async fn dc_identity(&mut self) -> Result<DcIdentity, SourceError> {
        let root = self
            .plain_search(
                "",
                ldap3::Scope::Base,
                "(objectClass=*)",
                &[
                    "dnsHostName",
                    "highestCommittedUSN",
                    "dsServiceName",
                    "defaultNamingContext",
                ],
            )
            .await?
            .map(|e| entry_attrs(e).values)
            .unwrap_or_default();
        let first = |k: &str| {
            root.get(&k.to_ascii_lowercase())
                .and_then(|v| v.first())
                .cloned()
                .unwrap_or_default()
        };
        let usn = first("highestCommittedUSN")
            .parse::<u64>()
            .map_err(|_| SourceError::Search {
                base: "rootDSE".into(),
                message: "no highestCommittedUSN: is this Active Directory?".into(),
            })?;
        let service = first("dsServiceName");
        let ntds = if service.is_empty() {
            None
        } else {
            self.plain_search(
                &service,
                ldap3::Scope::Base,
                "(objectClass=*)",
                &["invocationId"],
            )
            .await?
        };
        // Binary: read as bytes, never through text.
        let invocation_id = match ntds.map(|mut e| take_binary(&mut e, "invocationId")) {
            Some(values) => match values.as_slice() {
                [one] => Guid::from_bytes(one),
                _ => None,
            },
            None => None,
        };
        if invocation_id.is_none() {
            warn!(dn = %service, "the domain controller's invocationId could not be read");
        }
        Ok(DcIdentity {
            host: first("dnsHostName"),
            invocation_id,
            usn,
            naming_context: first("defaultNamingContext"),
        })
    }

    /// Anchors of entries matching `filter` (the users' or the groups' filter) changed
    /// after `usn` anywhere in the domain (`naming_context`): with the delta's in-scope
    /// changes, this shows what moved out of the users' or the groups' base.
    pub async fn changed_anywhere(
        &mut self,
        naming_context: &str,
        filter: &str,
        usn: u64,
    ) -> Result<HashSet<String>, SourceError> {
        let search = Search {
            base: naming_context.to_string(),
            scope: Scope::Subtree,
            filter: String::new(),
        };
        let filter = format!("(&{filter}(uSNChanged>={}))", usn.saturating_add(1));
        self.anchors_matching(&search, &filter).await
    }

    /// The anchors (lowercased) of the entries under `search` that match `filter`.
    async fn anchors_matching(
        &mut self,
        search: &Search,
        filter: &str,
    ) -> Result<HashSet<String>, SourceError> {
        let attr = [self.config.anchor_attribute.clone()];
        let key = attr[0].to_ascii_lowercase();
        Ok(self
            .search(search, filter, &attr)
            .await?
            .into_iter()
            .filter_map(|e| lower_attrs(e).remove(&key)?.into_iter().next())
            .map(|a| a.to_ascii_lowercase())
            .collect())
    }

    /// The OUs and containers under `base` (lowercased anchor → DN); with `usn`, only
    /// those changed after it. The users and groups below one that is renamed or moved
    /// get new DNs without a change of their own `uSNChanged`.
    pub async fn containers(
        &mut self,
        base: &str,
        usn: Option<u64>,
    ) -> Result<BTreeMap<String, String>, SourceError> {
        let search = Search {
            base: base.to_string(),
            scope: Scope::Subtree,
            filter: String::new(),
        };
        let kinds = "(|(objectClass=organizationalUnit)(objectClass=container))";
        let filter = match usn {
            Some(usn) => format!("(&{kinds}(uSNChanged>={}))", usn.saturating_add(1)),
            None => kinds.to_string(),
        };
        let anchor = self.config.anchor_attribute.clone();
        let key = anchor.to_ascii_lowercase();
        Ok(self
            .search(&search, &filter, std::slice::from_ref(&anchor))
            .await?
            .into_iter()
            .filter_map(|e| {
                let mut attrs = entry_attrs(e);
                let a = attrs.values.remove(&key)?.into_iter().next()?;
                Some((a.to_ascii_lowercase(), attrs.dn))
            })
            .collect())
    }

    /// The OUs and containers under the users' and the groups' bases.
    pub async fn containers_in_scope(&mut self) -> Result<BTreeMap<String, String>, SourceError> {
        let mut found = self
            .containers(&self.config.users.search.base.clone(), None)
            .await?;
        if let Some(groups) = self.config.groups.clone() {
            found.extend(self.containers(&groups.base, None).await?);
        }
        Ok(found)
    }

    /// Anchors of objects deleted after `usn`: tombstones under `CN=Deleted Objects`, read
    /// with the Show Deleted control (1.2.840.113556.1.4.417).
    pub async fn read_deleted(
        &mut self,
        naming_context: &str,
        usn: u64,
    ) -> Result<Vec<String>, SourceError> {
        let search = Search {
            base: format!("CN=Deleted Objects,{naming_context}"),
            scope: Scope::Subtree,
            filter: String::new(),
        };
        let filter = format!("(&(isDeleted=TRUE)(uSNChanged>={}))", usn.saturating_add(1));
        let anchor = self.config.anchor_attribute.clone();
        self.show_deleted = true;
        let found = self
            .search(&search, &filter, std::slice::from_ref(&anchor))
            .await;
        self.show_deleted = false;
        let key = anchor.to_ascii_lowercase();
        Ok(found?
            .into_iter()
            .filter_map(|e| lower_attrs(e).remove(&key)?.into_iter().next())
            .collect())
    }

    /// A content synchronisation refresh (RFC 4533 `refreshOnly`) of the entries under
    /// `search` matching `filter`, from `cookie` (from the start without one). Entries come
    /// without attributes: the refresh says which changed, and they are read again.
    pub async fn sync_refresh(
        &mut self,
        search: &Search,
        filter: &str,
        cookie: Option<Vec<u8>>,
    ) -> Result<SyncAnswer, SourceError> {
        let timeout = self.config.timeout;
        let fail = |message: String| SourceError::Search {
            base: search.base.clone(),
            message,
        };
        let had_cookie = cookie.is_some();
        let mut control: RawControl = ldap3::controls::SyncRequest {
            mode: ldap3::controls::RefreshMode::RefreshOnly,
            cookie,
            reload_hint: false,
        }
        .into();
        // Critical: a server without content synchronisation must refuse the search, not
        // answer it as a plain one.
        control.crit = true;
        // A streaming search without adapters: `search` would drop the intermediate
        // messages, and with them the Sync Info that names deleted entries.
        let op = "content synchronisation search";
        let mut stream = self
            .ldap
            .with_controls(vec![control])
            .with_timeout(timeout)
            .streaming_search(&search.base, ldap_scope(search.scope), filter, vec!["1.1"])
            .await
            .map_err(|e| timeout_or(e, op, timeout, fail))?;
        let mut items = Vec::new();
        loop {
            match stream.next().await {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => {
                    let _ = stream.finish().await;
                    return Err(timeout_or(e, op, timeout, fail));
                }
            }
        }
        let result = stream.finish().await;
        match result.rc {
            0 => {}
            12 => {
                return Ok(SyncAnswer::Unsupported(result_message(
                    result.rc,
                    &result.text,
                )))
            }
            SYNC_REFRESH_REQUIRED => {
                return Ok(SyncAnswer::Refused(format!(
                    "e-syncRefreshRequired (LDAP result {SYNC_REFRESH_REQUIRED}){}",
                    if result.text.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", result.text)
                    }
                )))
            }
            // slapd's syncprov: "consumer state is newer than provider!".
            53 if had_cookie => {
                return Ok(SyncAnswer::Refused(result_message(result.rc, &result.text)))
            }
            4 => return Ok(SyncAnswer::TooMany(result_message(result.rc, &result.text))),
            rc => return Err(fail(result_message(rc, &result.text))),
        }
        let mut refresh = Refresh::default();
        for item in items {
            if item.is_ref() {
                continue;
            }
            if item.is_intermediate() {
                let info = sync::parse_intermediate(item.0).ok_or_else(|| {
                    fail("an intermediate message that is not a readable Sync Info".into())
                })?;
                refresh.info(info);
                continue;
            }
            let state = item
                .1
                .iter()
                .find(|c| c.1.ctype == sync::SYNC_STATE_OID)
                .map(|c| c.1.val.as_deref().and_then(sync::parse_state));
            match state {
                Some(Some(s)) => refresh.entry(s),
                Some(None) => return Err(fail("an unreadable Sync State control".into())),
                None => {
                    return Ok(SyncAnswer::Unsupported(
                        "an entry came without a Sync State control".into(),
                    ))
                }
            }
        }
        let done = result
            .ctrls
            .iter()
            .find(|c| c.1.ctype == sync::SYNC_DONE_OID)
            .map(|c| c.1.val.as_deref().and_then(sync::parse_done));
        match done {
            Some(Some(d)) => refresh.finish(d),
            Some(None) => return Err(fail("an unreadable Sync Done control".into())),
            None => {
                return Ok(SyncAnswer::Unsupported(
                    "the search ended without a Sync Done control".into(),
                ))
            }
        }
        debug!(
            base = %search.base,
            changed = refresh.changed.len(),
            deleted = refresh.deleted.len(),
            present = refresh.present.len(),
            present_phase = refresh.present_phase,
            "content synchronisation refresh"
        );
        Ok(SyncAnswer::Done(refresh))
    }

    /// The users' and the groups' searches, as configured.
    pub fn searches(&self) -> (Search, Option<Search>) {
        (self.config.users.search.clone(), self.config.groups.clone())
    }

    /// Reads the users and groups in scope whose anchor is one of `anchors` (lowercased),
    /// a few hundred per search. Those not found are no longer in scope.
    pub async fn read_anchors(&mut self, anchors: &[String]) -> Result<Changed, SourceError> {
        let mut all = Changed::default();
        let attr = self.config.anchor_attribute.clone();
        for chunk in anchors.chunks(ANCHORS_PER_SEARCH) {
            let terms: String = chunk
                .iter()
                .map(|a| format!("({attr}={})", ldap3::ldap_escape(a.as_str())))
                .collect();
            let part = self.read_where(Some(format!("(|{terms})")), false).await?;
            all.snapshot.users.extend(part.snapshot.users);
            all.snapshot.groups.extend(part.snapshot.groups);
            all.snapshot.bad_entries.extend(part.snapshot.bad_entries);
            all.snapshot.entries_read += part.snapshot.entries_read;
        }
        Ok(all)
    }

    /// Reads the users and groups in scope modified at or after `since` (Unix seconds,
    /// `modifyTimestamp`), for a server without content synchronisation.
    pub async fn read_modified_since(&mut self, since: u64) -> Result<Changed, SourceError> {
        self.read_where(
            Some(format!("(modifyTimestamp>={})", generalized_time(since))),
            false,
        )
        .await
    }

    /// The anchors (lowercased) of every user and every group in scope: only the anchor
    /// attribute is read. What the last read had and these lack is gone.
    pub async fn anchors_in_scope(
        &mut self,
    ) -> Result<(HashSet<String>, HashSet<String>), SourceError> {
        let users = self.config.users.search.clone();
        let user_anchors = self.anchors_matching(&users, &users.filter).await?;
        let group_anchors = match self.config.groups.clone() {
            Some(g) => self.anchors_matching(&g, &g.filter).await?,
            None => HashSet::new(),
        };
        Ok((user_anchors, group_anchors))
    }

    /// One small non-paged search (rootDSE, configuration objects): the first entry.
    async fn plain_search(
        &mut self,
        base: &str,
        scope: ldap3::Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Option<SearchEntry>, SourceError> {
        let fail = |message: String| SourceError::Search {
            base: if base.is_empty() {
                "rootDSE".into()
            } else {
                base.to_string()
            },
            message,
        };
        let timeout = self.config.timeout;
        let result = self
            .ldap
            .with_timeout(timeout)
            .search(base, scope, filter, attrs.to_vec())
            .await
            .map_err(|e| timeout_or(e, "search", timeout, fail))?;
        let (entries, res) = (result.0, result.1);
        if res.rc != 0 {
            return Err(fail(result_message(res.rc, &res.text)));
        }
        Ok(entries
            .into_iter()
            .find(|re| !re.is_ref() && !re.is_intermediate())
            .map(SearchEntry::construct))
    }

    /// Reads the users and groups in scope that also match `extra`; with `member_of`,
    /// also the groups each is a direct member of.
    async fn read_where(
        &mut self,
        extra: Option<String>,
        member_of: bool,
    ) -> Result<Changed, SourceError> {
        let and = |f: &str| match &extra {
            Some(x) => format!("(&{f}{x})"),
            None => f.to_string(),
        };
        let mut snapshot = Snapshot::default();
        let mut groups_of: HashMap<String, Vec<String>> = HashMap::new();
        let search = self.config.users.search.clone();
        let mapped_member_of = self.user_attrs.iter().any(|a| a == MEMBER_OF);
        let mut user_attrs = self.user_attrs.clone();
        if member_of && !mapped_member_of {
            user_attrs.push(MEMBER_OF.to_string());
        }
        let anchor = self.config.anchor_attribute.to_ascii_lowercase();
        let ad = self.config.kind == SourceKind::ActiveDirectory;
        // Each entry becomes a compact record as its page comes; only a read that wants
        // `memberOf` (a delta: few entries) keeps the entries, whose ranged values may
        // need more requests.
        let read: Vec<(UserRead, Option<Vec<String>>)> = if member_of {
            let entries = self
                .search(&search, &and(&search.filter), &user_attrs)
                .await?;
            let mut read = Vec::with_capacity(entries.len());
            for mut entry in entries {
                let direct = self.take_all_values(&mut entry, MEMBER_OF).await?;
                let mapped = mapped_member_of.then_some(direct.as_slice());
                read.push((user_from(entry, &anchor, ad, mapped), Some(direct)));
            }
            read
        } else {
            self.search_map(&search, &and(&search.filter), &user_attrs, |entry| {
                (user_from(entry, &anchor, ad, None), None)
            })
            .await?
        };
        snapshot.entries_read += read.len();
        let disabled: HashSet<String> = match self.config.users.disabled_filter.clone() {
            Some(f) => {
                self.anchors_matching(&search, &and(&format!("(&{}{})", search.filter, f)))
                    .await?
            }
            None => HashSet::new(),
        };
        for (user, direct) in read {
            match user {
                Ok(mut user) => {
                    if let Some(direct) = direct {
                        groups_of.insert(user.anchor.to_ascii_lowercase(), direct);
                    }
                    user.disabled = disabled.contains(&user.anchor.to_ascii_lowercase());
                    if ad {
                        if let Err(bad) = read_account_control(&mut user) {
                            snapshot.bad_entries.push(bad);
                            continue;
                        }
                    }
                    snapshot.users.push(user);
                }
                Err(bad) => snapshot.bad_entries.push(bad),
            }
        }
        if let Some(groups) = self.config.groups.clone() {
            let mut attrs = vec![
                "cn".to_string(),
                "member".to_string(),
                "uniqueMember".to_string(),
                self.config.anchor_attribute.clone(),
            ];
            if ad {
                attrs.push("objectSid".into());
            }
            if member_of {
                attrs.push(MEMBER_OF.into());
            }
            let selected: HashSet<String> = match self.config.portal_groups_filter.clone() {
                Some(f) => {
                    self.anchors_matching(&groups, &and(&format!("(&{}{})", groups.filter, f)))
                        .await?
                }
                None => HashSet::new(),
            };
            let group_entries = self.search(&groups, &and(&groups.filter), &attrs).await?;
            snapshot.entries_read += group_entries.len();
            for mut entry in group_entries {
                let direct = if member_of {
                    Some(self.take_all_values(&mut entry, MEMBER_OF).await?)
                } else {
                    None
                };
                // What is left ranged is `member`.
                let more = pending_ranges(&entry);
                match group_from(entry, &anchor) {
                    Ok(mut g) => {
                        if let Some(direct) = direct {
                            groups_of.insert(g.anchor.to_ascii_lowercase(), direct);
                        }
                        for range in more {
                            let rest = self.ranged_values(&g.dn, range).await?;
                            g.members.extend(rest);
                        }
                        g.selected = selected.contains(&g.anchor.to_ascii_lowercase());
                        snapshot.groups.push(g)
                    }
                    Err(bad) => snapshot.bad_entries.push(bad),
                }
            }
        }
        info!(
            users = snapshot.users.len(),
            disabled = snapshot.users.iter().filter(|u| u.disabled).count(),
            expiring = snapshot
                .users
                .iter()
                .filter(|u| u.expires.is_some())
                .count(),
            groups = snapshot.groups.len(),
            bad_entries = snapshot.bad_entries.len(),
            "read the directory"
        );
        Ok(Changed {
            snapshot,
            member_of: groups_of,
        })
    }

    /// Removes attribute `attr` from `entry` and returns all its values, fetching the
    /// remaining ranges when AD returned it in ranges (`memberOf;range=0-1499`).
    async fn take_all_values(
        &mut self,
        entry: &mut SearchEntry,
        attr: &str,
    ) -> Result<Vec<String>, SourceError> {
        let keys: Vec<String> = entry
            .attrs
            .keys()
            .filter(|k| {
                k.eq_ignore_ascii_case(attr)
                    || ad::parse_range(k).is_some_and(|r| r.attr.eq_ignore_ascii_case(attr))
            })
            .cloned()
            .collect();
        let mut values = Vec::new();
        let mut next = None;
        for k in keys {
            if let Some(r) = ad::parse_range(&k) {
                next = ad::next_range(&r);
            }
            values.extend(entry.attrs.remove(&k).unwrap_or_default());
        }
        if let Some(range) = next {
            values.extend(self.ranged_values(&entry.dn, range).await?);
        }
        Ok(values)
    }

    /// Fetches the remaining ranges of a ranged attribute (`member;range=1500-*`, …) of one
    /// entry until the server says `*`.
    pub async fn ranged_values(
        &mut self,
        dn: &str,
        mut attr: String,
    ) -> Result<Vec<String>, SourceError> {
        let base = Search {
            base: dn.to_string(),
            scope: Scope::Base,
            filter: "(objectClass=*)".into(),
        };
        let mut values = Vec::new();
        for _ in 0..100_000 {
            let entries = self
                .search(&base, "(objectClass=*)", std::slice::from_ref(&attr))
                .await?;
            let Some(entry) = entries.into_iter().next() else {
                break;
            };
            let mut next = None;
            for (k, v) in entry.attrs {
                if let Some(r) = ad::parse_range(&k) {
                    next = ad::next_range(&r);
                    values.extend(v);
                }
            }
            match next {
                Some(n) => attr = n,
                None => return Ok(values),
            }
        }
        Ok(values)
    }

    /// Reads the directory and summarises it, for `dirsync check`.
    pub async fn check(&mut self) -> Result<SourceCheck, SourceError> {
        let s = self.read().await?;
        let now = Timestamp::now();
        Ok(SourceCheck {
            users: s.users.len(),
            disabled: s.users.iter().filter(|u| u.closure(now).is_some()).count(),
            groups: self.config.groups.as_ref().map(|_| s.groups.len()),
            bad_entries: s.bad_entries.len(),
        })
    }

    pub async fn close(mut self) {
        let _ = self.ldap.unbind().await;
    }

    /// One paged search. Fails unless the server says the search completed (rc 0).
    async fn search(
        &mut self,
        search: &Search,
        filter: &str,
        attrs: &[String],
    ) -> Result<Vec<SearchEntry>, SourceError> {
        self.search_map(search, filter, attrs, |entry| entry).await
    }

    /// [`Self::search`], each entry made a record by `each` as its page comes: the
    /// entries of one page at most are held as ldap3 read them.
    async fn search_map<T>(
        &mut self,
        search: &Search,
        filter: &str,
        attrs: &[String],
        mut each: impl FnMut(SearchEntry) -> T,
    ) -> Result<Vec<T>, SourceError> {
        let timeout = self.config.timeout;
        let fail = |message: String| SourceError::Search {
            base: search.base.clone(),
            message,
        };
        let scope = ldap_scope(search.scope);
        let attrs = attrs.to_vec();
        // Simple paged results (RFC 2696), page by page, strictly: every page must carry
        // the paging control back. A server (or a proxy) that drops it would otherwise end
        // the read early and a partial directory would pass for the whole.
        let mut entries = Vec::new();
        let mut cookie: Vec<u8> = Vec::new();
        loop {
            let mut controls: Vec<RawControl> = vec![PagedResults {
                size: self.config.page_size,
                cookie: std::mem::take(&mut cookie),
            }
            .into()];
            if self.show_deleted {
                controls.push(RawControl {
                    ctype: SHOW_DELETED_OID.into(),
                    crit: true,
                    val: None,
                });
            }
            let SearchResult(items, result) = self
                .ldap
                .with_controls(controls)
                .with_timeout(timeout)
                .search(&search.base, scope, filter, attrs.clone())
                .await
                .map_err(|e| timeout_or(e, "search", timeout, fail))?;
            if result.rc != 0 {
                return Err(fail(result_message(result.rc, &result.text)));
            }
            // Referrals (AD returns some at the domain root) and intermediate messages
            // are not entries.
            entries.extend(
                items
                    .into_iter()
                    .filter(|re| !re.is_ref() && !re.is_intermediate())
                    .map(|re| each(SearchEntry::construct(re))),
            );
            match page_cookie(&result.ctrls) {
                Some(next) if next.is_empty() => break,
                Some(next) => cookie = next,
                None => {
                    return Err(fail(
                        "the server answered a page without the paging control (no cookie): \
                         the read may be incomplete, so it is refused"
                            .into(),
                    ))
                }
            }
        }
        debug!(base = %search.base, filter, entries = entries.len(), "search complete");
        Ok(entries)
    }
}

/// The binary attributes the AD dialect reads, how each is rendered as text,
/// and what it is called when it cannot be.
const BINARY: [Binary; 3] = [
    Binary {
        name: "objectGUID",
        render: ad::guid_string,
        kind: "GUID",
    },
    Binary {
        name: "invocationId",
        render: ad::guid_string,
        kind: "GUID",
    },
    Binary {
        name: "objectSid",
        render: ad::sid_string,
        kind: "SID",
    },
];

/// A binary attribute of the AD dialect.
struct Binary {
    name: &'static str,
    render: fn(&[u8]) -> Option<String>,
    /// What its values are, for the report when one is not.
    kind: &'static str,
}

/// An entry's attributes as text.
struct Attrs {
    dn: String,
    /// Values by lowercased attribute name.
    values: BTreeMap<String, Vec<String>>,
    /// Binary values that could not be rendered: the entry cannot be used as it is.
    problems: Vec<String>,
}

/// Removes attribute `name` (any case) from `entry` and returns its values as bytes.
/// ldap3 files an attribute whose values are all valid UTF-8 under `attrs` and the others
/// under `bin_attrs`; a GUID or SID can be valid UTF-8 by chance, so both are looked at
/// and text is turned back into the very bytes it was made from.
fn take_binary(entry: &mut SearchEntry, name: &str) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    let text_keys: Vec<String> = entry
        .attrs
        .keys()
        .filter(|k| k.eq_ignore_ascii_case(name))
        .cloned()
        .collect();
    for k in text_keys {
        if let Some(v) = entry.attrs.remove(&k) {
            values.extend(v.into_iter().map(String::into_bytes));
        }
    }
    let bin_keys: Vec<String> = entry
        .bin_attrs
        .keys()
        .filter(|k| k.eq_ignore_ascii_case(name))
        .cloned()
        .collect();
    for k in bin_keys {
        if let Some(v) = entry.bin_attrs.remove(&k) {
            values.extend(v);
        }
    }
    values
}

/// An entry's attributes: text values by lowercased name, with the binary ones AD uses
/// (`objectGUID`, `objectSid`, `invocationId`) read as bytes and rendered from them. Other
/// values that are not valid UTF-8 are left out: no mapped text attribute can use them.
fn entry_attrs(mut entry: SearchEntry) -> Attrs {
    let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for Binary { name, render, kind } in BINARY {
        for bytes in take_binary(&mut entry, name) {
            match render(&bytes) {
                Some(text) => values
                    .entry(name.to_ascii_lowercase())
                    .or_default()
                    .push(text),
                None => problems.push(format!(
                    "its {name} value ({} bytes) is not a {kind}",
                    bytes.len()
                )),
            }
        }
    }
    for (k, v) in entry.attrs {
        values.entry(k.to_ascii_lowercase()).or_default().extend(v);
    }
    Attrs {
        dn: entry.dn,
        values,
        problems,
    }
}

/// A user entry as a record, or why it cannot be used.
type UserRead = Result<DirectoryUser, BadEntry>;

/// An entry's attributes, or why it cannot be used.
fn usable_attrs(entry: SearchEntry) -> Result<(String, BTreeMap<String, Vec<String>>), BadEntry> {
    let Attrs {
        dn,
        values,
        problems,
    } = entry_attrs(entry);
    if problems.is_empty() {
        Ok((dn, values))
    } else {
        Err(BadEntry {
            dn,
            problem: problems.join("; "),
        })
    }
}

/// The user record of an entry, with the attributes derived from what was read added
/// before it is made compact: `memberOf` as read in full (`member_of`, when mapped) and,
/// for AD (`ad`), `proxyAddresses` as two virtual attributes the mapping can use.
fn user_from(
    entry: SearchEntry,
    anchor: &str,
    ad: bool,
    member_of: Option<&[String]>,
) -> Result<DirectoryUser, BadEntry> {
    let (dn, mut attrs) = usable_attrs(entry)?;
    if let Some(direct) = member_of {
        attrs.insert(MEMBER_OF.into(), direct.to_vec());
    }
    if ad {
        let (primary, aliases) = ad::smtp_addresses(
            attrs
                .get("proxyaddresses")
                .map(Vec::as_slice)
                .unwrap_or_default(),
        );
        if let Some(p) = primary {
            attrs.insert("primarysmtpaddress".into(), vec![p]);
        }
        if !aliases.is_empty() {
            attrs.insert("smtpaliases".into(), aliases);
        }
    }
    let anchor_value = attrs
        .remove(anchor)
        .and_then(|v| v.into_iter().next())
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| BadEntry {
            dn: dn.clone(),
            problem: format!(
                "has no {anchor} (the anchor attribute); is it readable by the bind account?"
            ),
        })?;
    Ok(DirectoryUser {
        dn,
        anchor: anchor_value,
        attrs: attrs.into(),
        disabled: false,
        expires: None,
    })
}

/// AD: the disabled bit (`userAccountControl`) and the expiry (`accountExpires`), as
/// read. Whether the expiry has passed is decided at each cycle, not here.
fn read_account_control(user: &mut DirectoryUser) -> Result<(), BadEntry> {
    let bad = |problem: String| BadEntry {
        dn: user.dn.clone(),
        problem,
    };
    let first = |k: &str| user.attrs.get(k).and_then(|v| v.first());
    if let Some(uac) = first("useraccountcontrol") {
        if ad::account_disabled(uac).map_err(bad)? {
            user.disabled = true;
        }
    }
    if let Some(expires) = first("accountexpires") {
        user.expires = ad::account_expires(expires).map_err(bad)?;
    }
    Ok(())
}

/// A group, with its `objectSid` (AD) for primary-group resolution.
fn group_from(entry: SearchEntry, anchor: &str) -> Result<DirectoryGroup, BadEntry> {
    let (dn, mut attrs) = usable_attrs(entry)?;
    let anchor_value = attrs
        .remove(anchor)
        .and_then(|v| v.into_iter().next())
        .ok_or_else(|| BadEntry {
            dn: dn.clone(),
            problem: format!("group has no {anchor}"),
        })?;
    let name = attrs
        .remove("cn")
        .and_then(|v| v.into_iter().next())
        .unwrap_or_else(|| dn.clone());
    let sid = attrs.remove("objectsid").and_then(|v| v.into_iter().next());
    let mut members = attrs.remove("member").unwrap_or_default();
    members.extend(attrs.remove("uniquemember").unwrap_or_default());
    // AD returns a large group's members in ranges (`member;range=0-1499`); the first
    // range is here, the source fetches the rest.
    let ranged: Vec<String> = attrs
        .keys()
        .filter(|k| ad::parse_range(k).is_some())
        .cloned()
        .collect();
    for k in ranged {
        if let Some(v) = attrs.remove(&k) {
            members.extend(v);
        }
    }
    Ok(DirectoryGroup {
        dn,
        anchor: anchor_value,
        name,
        members,
        selected: false,
        sid,
    })
}

/// The ranged attribute keys of an entry that still have more values to fetch.
fn pending_ranges(entry: &SearchEntry) -> Vec<String> {
    entry
        .attrs
        .keys()
        .filter_map(|k| ad::parse_range(k).and_then(|r| ad::next_range(&r)))
        .collect()
}

fn lower_attrs(entry: SearchEntry) -> BTreeMap<String, Vec<String>> {
    entry_attrs(entry).values
}

fn tls_config(config: &SourceConfig) -> Result<rustls::ClientConfig, SourceError> {
    let url = config.url.to_string();
    let tls_err = |message: String| SourceError::Tls {
        url: url.clone(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| tls_err(format!("cannot read CA file {}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| tls_err(format!("CA file {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| tls_err(format!("CA file {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(tls_err(format!(
                    "CA file {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(tls_err(
                    "no system CA certificates found; set source.ca_file".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let Some(name) = &config.tls_server_name else {
        return Ok(builder.with_root_certificates(roots).with_no_client_auth());
    };
    let expected = rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|e| tls_err(format!("source.tls_server_name: {e}")))?;
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| tls_err(e.to_string()))?;
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectName { inner, expected }))
        .with_no_client_auth())
}

/// Verifies the server's certificate fully (chain, validity, usage) against the name in
/// `source.tls_server_name` instead of the URL's host: for a DC reached by an address or
/// alias its certificate does not name. Nothing is skipped; only the name differs.
#[derive(Debug)]
struct ExpectName {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expected: rustls::pki_types::ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for ExpectName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            &self.expected,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn connect_error(url: &str, mode: &Tls, e: LdapError) -> SourceError {
    let tls = *mode != Tls::None;
    let message = e.to_string();
    let lower = message.to_ascii_lowercase();
    let tls_err = |message: String| SourceError::Tls {
        url: url.to_string(),
        message,
    };
    if tls && lower.contains("not valid for name") {
        let none = lower.contains("not valid for any names");
        tls_err(format!(
            "{message}. The host name in source.url is checked against the names in the \
             certificate's subjectAltName, never its common name (CN){}. Give the server a \
             certificate whose subjectAltName names that host, or, when source.url uses \
             another name than the certificate does, set source.tls_server_name to a name \
             the certificate holds",
            if none {
                ", and this certificate has no subjectAltName at all (as Samba's \
                 self-generated DC certificate and some old AD certificates)"
            } else {
                ""
            }
        ))
    } else if tls
        && (lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake"))
    {
        tls_err(format!(
            "{message} (is source.ca_file the CA that signed the server's certificate, and does the URL's host name match it?)"
        ))
    } else if *mode != Tls::Ldaps
        && (dropped_plain_hint(&message).is_some() || lower.contains("timeout"))
    {
        SourceError::Connect {
            url: url.to_string(),
            message: format!(
                "{message}: no LDAP answer; if this port is an LDAPS port (TLS from the \
                 first byte, usually 636), use an ldaps:// URL"
            ),
        }
    } else {
        SourceError::Connect {
            url: url.to_string(),
            message,
        }
    }
}

/// A plain LDAP connection the server dropped before answering: the likely cause is an
/// LDAPS port (TLS from the first byte) given with `ldap://`.
fn dropped_plain_hint(message: &str) -> Option<&'static str> {
    let lower = message.to_ascii_lowercase();
    (lower.contains("channel closed")
        || lower.contains("connection reset")
        || lower.contains("end of stream")
        || lower.contains("eof"))
    .then_some(
        "the server closed the connection without an LDAP answer: it may expect TLS from \
         the first byte (an LDAPS port, usually 636); use an ldaps:// URL",
    )
}

fn timeout_or(
    e: LdapError,
    operation: &str,
    timeout: Duration,
    other: impl FnOnce(String) -> SourceError,
) -> SourceError {
    match e {
        LdapError::Timeout { .. } => SourceError::Timeout {
            operation: operation.to_string(),
            seconds: timeout.as_secs(),
        },
        e => other(e.to_string()),
    }
}

fn bind_hint(rc: u32, text: &str, plain: bool) -> String {
    let mut message = result_message(rc, text);
    if rc == 8 || (plain && rc == 13) {
        message.push_str(
            "; the server requires a protected connection: use an ldaps:// URL or StartTLS (starttls = true)",
        );
    }
    if rc == 49 {
        message.push_str("; check source.bind_dn and the bind password");
    }
    message
}

fn result_message(rc: u32, text: &str) -> String {
    let name = match rc {
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        13 => "confidentialityRequired",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        _ => "error",
    };
    if text.is_empty() {
        format!("{name} (LDAP result {rc})")
    } else {
        format!("{name} (LDAP result {rc}): {text}")
    }
}

fn ldap_scope(scope: Scope) -> ldap3::Scope {
    match scope {
        Scope::Base => ldap3::Scope::Base,
        Scope::One => ldap3::Scope::OneLevel,
        Scope::Subtree => ldap3::Scope::Subtree,
    }
}

/// Unix seconds as an LDAP GeneralizedTime in UTC (`20240131235959Z`).
pub fn generalized_time(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The Show Deleted control (AD): tombstones are returned too.
const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";

/// The paging cookie a page's result carries: `Some(empty)` on the last page, `None` when
/// the paging control is missing.
fn page_cookie(controls: &[Control]) -> Option<Vec<u8>> {
    controls.iter().find_map(|c| match c {
        Control(Some(ControlType::PagedResults), raw) => Some(raw.parse::<PagedResults>().cookie),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A search entry as ldap3 builds it: values that are valid UTF-8 in `attrs`.
    fn entry(text: &[(&str, Vec<u8>)], binary: &[(&str, Vec<u8>)]) -> SearchEntry {
        let mut attrs: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in text {
            attrs
                .entry(k.to_string())
                .or_default()
                .push(String::from_utf8(v.clone()).unwrap());
        }
        let mut bin_attrs: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for (k, v) in binary {
            bin_attrs.entry(k.to_string()).or_default().push(v.clone());
        }
        SearchEntry {
            dn: "CN=Anna Berg,OU=Staff,DC=dirsync,DC=test".into(),
            attrs,
            bin_attrs,
        }
    }

    #[test]
    fn binary_values_that_happen_to_be_valid_utf8_are_rendered_from_their_bytes() {
        // 16 ASCII bytes: ldap3 hands this GUID over as text.
        let guid = b"0123456789abcdef".to_vec();
        // S-1-5-21-1-2-3-1105, every byte below 0x80: text as well.
        let mut sid = vec![1u8, 5, 0, 0, 0, 0, 0, 5];
        for sub in [21u32, 1, 2, 3, 1105] {
            sid.extend_from_slice(&sub.to_le_bytes());
        }
        let invocation: Vec<u8> = (0..16u8).map(|i| 0xf0 - i).collect();
        let e = entry(
            &[
                ("objectGUID", guid.clone()),
                ("objectSid", sid),
                ("sn", b"Berg".to_vec()),
            ],
            &[("invocationId", invocation.clone())],
        );
        let a = entry_attrs(e);
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(
            a.values["objectguid"],
            ["33323130-3534-3736-3839-616263646566"]
        );
        assert_eq!(a.values["objectsid"], ["S-1-5-21-1-2-3-1105"]);
        assert_eq!(
            a.values["invocationid"],
            [Guid::from_bytes(&invocation).unwrap().to_string()]
        );
        assert_eq!(a.values["sn"], ["Berg"]);

        let user = user_from(
            entry(&[("objectGUID", guid.clone())], &[]),
            "objectguid",
            true,
            None,
        )
        .unwrap();
        assert_eq!(user.anchor, "33323130-3534-3736-3839-616263646566");
    }

    #[test]
    fn a_guid_that_is_not_16_bytes_makes_the_entry_unusable_and_says_why() {
        let bad = user_from(
            entry(&[], &[("objectGUID", vec![0xff; 15])]),
            "objectguid",
            true,
            None,
        )
        .unwrap_err();
        assert_eq!(bad.problem, "its objectGUID value (15 bytes) is not a GUID");
    }

    fn paged(cookie: &[u8]) -> Control {
        Control(
            Some(ControlType::PagedResults),
            PagedResults {
                size: 0,
                cookie: cookie.to_vec(),
            }
            .into(),
        )
    }

    #[test]
    fn unix_seconds_become_a_generalized_time_in_utc() {
        assert_eq!(generalized_time(0), "19700101000000Z");
        assert_eq!(generalized_time(1_800_000_000), "20270115080000Z");
        assert_eq!(
            generalized_time(u64::MAX),
            "19700101000000Z",
            "out of range"
        );
    }

    #[test]
    fn a_page_without_the_paging_control_has_no_cookie() {
        assert_eq!(
            page_cookie(&[paged(b"next-page")]),
            Some(b"next-page".to_vec())
        );
        assert_eq!(
            page_cookie(&[paged(b"")]),
            Some(Vec::new()),
            "the last page"
        );
        assert_eq!(page_cookie(&[]), None, "missing: the read is refused");
        let other = Control(
            None,
            RawControl {
                ctype: "1.2.3.4".into(),
                crit: false,
                val: None,
            },
        );
        assert_eq!(page_cookie(&[other]), None);
    }
}
