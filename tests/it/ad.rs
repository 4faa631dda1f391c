//! Active Directory, against a real Samba AD domain controller started by the harness.

use serde_json::{json, Value as Json};
use tempfile::TempDir;

use crate::harness::{SambaDc, ScimServer};
use crate::support::{actions, count, run_dirsync, stands, Run};

struct AdWorld {
    dc: SambaDc,
    portal: ScimServer,
    dir: TempDir,
    staff: String,
    /// Replaces the `[source]` connection lines (URL, TLS).
    connection: String,
    extra: String,
    /// The portal URL dirsync is given, when not the scim2-server's (a counting proxy's).
    portal_url: Option<String>,
}

impl AdWorld {
    fn start(dc: SambaDc) -> AdWorld {
        let staff = dc.add_ou("Staff");
        let connection = format!("url = \"{}\"\nstarttls = false\n", dc.ldap_url);
        AdWorld {
            dc,
            portal: ScimServer::start(),
            dir: tempfile::tempdir().unwrap(),
            staff,
            connection,
            extra: String::new(),
            portal_url: None,
        }
    }

    fn config(&self) -> std::path::PathBuf {
        std::fs::write(self.dir.path().join("pw"), &self.dc.admin_password).unwrap();
        std::fs::write(self.dir.path().join("token"), &self.portal.token).unwrap();
        let text = format!(
            r#"
[source]
kind = "active-directory"
{connection}
bind_dn = "{admin}"
bind_password_file = "pw"
timeout_secs = 20
page_size = 50

[source.users]
base = "{staff}"

[source.groups]
base = "{base}"

[portal]
url = "{portal}"
token_file = "token"

[state]
path = "state.db"

[safety]
max_closure_percent = 100

[[mapping]]
from = "mail"
to = "userName"

[[mapping]]
from = "givenName"
to = "name.givenName"

[[mapping]]
from = "sn"
to = "name.familyName"

[[mapping]]
from = "displayName"
to = "displayName"
{extra}
"#,
            connection = self.connection,
            admin = self.dc.admin_dn,
            staff = self.staff,
            base = self.dc.base_dn,
            portal = self.portal_url.as_deref().unwrap_or(&self.portal.url),
            extra = self.extra,
        );
        let path = self.dir.path().join("dirsync.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn run(&self, args: &[&str]) -> Run {
        run_dirsync(&self.config(), args)
    }

    fn sync(&self) -> Json {
        let run = self.run(&["sync", "--format", "json"]);
        assert_eq!(run.code, 0, "{}", run.all_output());
        run.json()
    }

    fn user(&self, login: &str) -> Json {
        let users = self.portal.users();
        users
            .into_iter()
            .find(|u| u["userName"] == login)
            .unwrap_or_else(|| panic!("no portal user {login}"))
    }

    fn modify(&self, dn: &str, change: &str) {
        self.dc
            .ldif(&format!("dn: {dn}\nchangetype: modify\n{change}\n"));
    }
}

#[test]
fn ad_users_under_two_ous_sync_with_guid_anchors_and_renames_and_moves_update_the_same_user() {
    let w = AdWorld::start(SambaDc::start());
    let sthlm = w.dc.add_ou("Stockholm,Staff");
    let oslo = w.dc.add_ou("Oslo,Staff");
    let anna =
        w.dc.add_user(&sthlm, "anna", "Anna", "Berg", Some("anna@dirsync.test"));
    w.dc.add_user(&oslo, "ola", "Ola", "Nordmann", Some("ola@dirsync.test"));
    let report = w.sync();
    assert_eq!(count(&report, "create"), 2, "{report:#}");
    let guid = w.dc.object_guid(&anna);
    assert_eq!(w.user("anna@dirsync.test")["externalId"], json!(guid));
    assert!(
        guid.len() == 36 && guid.chars().filter(|c| *c == '-').count() == 4,
        "{guid}"
    );
    let id = w.user("anna@dirsync.test")["id"].clone();

    // Rename (CN) and move to Oslo: same objectGUID, so the same portal user.
    w.dc.ldif(&format!("dn: {anna}\nchangetype: modrdn\nnewrdn: CN=Anna Lind\ndeleteoldrdn: 1\nnewsuperior: {oslo}\n"));
    let moved = format!("CN=Anna Lind,{oslo}");
    w.modify(
        &moved,
        "replace: sn\nsn: Lind\n-\nreplace: displayName\ndisplayName: Anna Lind",
    );
    let report = w.sync();
    assert_eq!(
        (
            count(&report, "create"),
            count(&report, "close"),
            count(&report, "update")
        ),
        (0, 0, 1),
        "{report:#}"
    );
    let after = w.user("anna@dirsync.test");
    assert_eq!(after["id"], id);
    assert_eq!(after["name"]["familyName"], "Lind");
    assert_eq!(w.portal.users().len(), 2);
}

#[test]
fn ad_disabled_and_expired_accounts_are_closed_and_reenabled_ones_reactivated() {
    let w = AdWorld::start(SambaDc::start());
    let ou = w.dc.add_ou("Sales,Staff");
    let dis =
        w.dc.add_user(&ou, "dis", "Dis", "Abled", Some("dis@dirsync.test"));
    let exp =
        w.dc.add_user(&ou, "exp", "Ex", "Pired", Some("exp@dirsync.test"));
    w.dc.add_user(&ou, "ok", "Ok", "Fine", Some("ok@dirsync.test"));
    w.sync();

    w.modify(&dis, "replace: userAccountControl\nuserAccountControl: 514");
    let past = dirsync::source::ad::filetime_from_now(-86_400, std::time::SystemTime::now());
    w.modify(
        &exp,
        &format!("replace: accountExpires\naccountExpires: {past}"),
    );
    let report = w.sync();
    assert_eq!(count(&report, "close"), 2, "{report:#}");
    assert_eq!(w.user("dis@dirsync.test")["active"], json!(false));
    assert_eq!(w.user("exp@dirsync.test")["active"], json!(false));
    assert_eq!(w.user("ok@dirsync.test")["active"], json!(true));

    w.modify(&dis, "replace: userAccountControl\nuserAccountControl: 512");
    w.modify(&exp, "replace: accountExpires\naccountExpires: 0");
    let report = w.sync();
    assert_eq!(
        (count(&report, "reactivate"), count(&report, "create")),
        (2, 0),
        "{report:#}"
    );
    assert_eq!(w.portal.users().len(), 3);
    assert!(w.portal.users().iter().all(|u| u["active"] == json!(true)));
}

#[test]
fn ad_nested_groups_three_deep_and_the_primary_group_give_roles_and_services() {
    let mut w = AdWorld::start(SambaDc::start());
    let ou = w.dc.add_ou("Ops,Staff");
    let anna =
        w.dc.add_user(&ou, "anna", "Anna", "Berg", Some("anna@dirsync.test"));
    let bo =
        w.dc.add_user(&ou, "bo", "Bo", "Ek", Some("bo@dirsync.test"));
    let groups = w.dc.add_ou("Groups");
    let night = w.dc.add_group(&groups, "Night-Shift", &[&anna]);
    let ops = w.dc.add_group(&groups, "Ops-Team", &[&night]);
    w.dc.add_group(&groups, "Portal-Admins", &[&ops]);
    w.dc.add_group(&groups, "Fax-Users", &[&bo]);
    w.extra = r#"
[roles]
default = "regular"
[[roles.rule]]
group = "Portal-Admins"
role = "administrator"

[[service]]
group = "Fax-Users"
service = "fax"

# Everyone's primary group: AD does not list its members in `member`.
[[service]]
group = "Domain Users"
service = "sms"
"#
    .into();
    let report = w.sync();
    assert_eq!(count(&report, "create"), 2, "{report:#}");
    let roles = |u: &Json| u["roles"][0]["value"].clone();
    let services = |u: &Json| {
        let mut s: Vec<String> = u["entitlements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["value"].as_str().unwrap().into())
            .collect();
        s.sort();
        s
    };
    let a = w.user("anna@dirsync.test");
    let b = w.user("bo@dirsync.test");
    assert_eq!(roles(&a), "administrator", "three levels down");
    assert_eq!(roles(&b), "regular");
    assert_eq!(services(&a), ["sms"], "Domain Users, the primary group");
    assert_eq!(services(&b), ["fax", "sms"]);
}

#[test]
fn ad_ldaps_verifies_with_the_domain_ca_and_a_wrong_ca_fails_clearly() {
    let mut w = AdWorld::start(SambaDc::start());
    w.dc.add_user(
        &w.staff.clone(),
        "anna",
        "Anna",
        "Berg",
        Some("anna@dirsync.test"),
    );
    w.connection = format!(
        "url = \"{}\"\nca_file = \"{}\"\n",
        w.dc.ldaps_url,
        w.dc.ca_file.display()
    );
    let run = w.run(&["check"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(
        run.stdout.contains("LDAPS") && run.stdout.contains("1 users in scope"),
        "{}",
        run.stdout
    );

    let other = tempfile::tempdir().unwrap();
    let wrong = crate::support::unrelated_ca(other.path());
    w.connection = format!(
        "url = \"{}\"\nca_file = \"{}\"\n",
        w.dc.ldaps_url,
        wrong.display()
    );
    let run = w.run(&["check"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(
        run.stderr.contains("TLS with") && run.stderr.contains("ca_file"),
        "{}",
        run.stderr
    );
}

#[test]
fn ad_refusing_a_plain_simple_bind_says_to_use_ldaps_or_starttls() {
    let w = AdWorld::start(SambaDc::start_strict());
    let run = w.run(&["check"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(
        run.stderr.contains("use an ldaps:// URL or StartTLS"),
        "{}",
        run.stderr
    );
    assert!(
        !run.all_output().contains(&w.dc.admin_password),
        "the password is never printed"
    );
}

/// Bulk-adds `n` enabled users (no password needed: userAccountControl 544) under `ou`.
fn bulk_users(dc: &SambaDc, ou: &str, n: usize) {
    let mut ldif = String::new();
    for i in 0..n {
        ldif.push_str(&format!(
            "dn: CN=Bulk {i:04},{ou}\nchangetype: add\nobjectClass: user\nsAMAccountName: bulk{i:04}\n\
             givenName: Bulk\nsn: N{i:04}\ndisplayName: Bulk {i:04}\nmail: bulk{i:04}@dirsync.test\nuserAccountControl: 544\n\n"
        ));
    }
    dc.ldif(&ldif);
}

fn read_of(report: &Json) -> (String, u64) {
    (
        report["directory"]["read"].as_str().unwrap().to_string(),
        report["directory"]["entries_read"].as_u64().unwrap(),
    )
}

#[test]
fn ad_delta_cycles_read_only_what_changed_and_reach_the_full_cycle_state() {
    let w = AdWorld::start(SambaDc::start());
    let ou = w.dc.add_ou("Bulk,Staff");
    bulk_users(&w.dc, &ou, 1000);
    let report = w.sync();
    assert_eq!(count(&report, "create"), 1000, "{report:#}");
    assert_eq!(read_of(&report).0, "full");
    assert_eq!(
        report["directory"]["read_reason"],
        "first read: nothing to build an incremental read on"
    );

    // Nothing changed: a delta that reads nothing.
    let report = w.sync();
    assert_eq!(
        read_of(&report),
        ("incremental".into(), 0),
        "{:#}",
        report["directory"]
    );

    // Three changes: a new surname, a disabled account, a deleted account.
    w.modify(&format!("CN=Bulk 0001,{ou}"), "replace: sn\nsn: Changed");
    w.modify(
        &format!("CN=Bulk 0002,{ou}"),
        "replace: userAccountControl\nuserAccountControl: 546",
    );
    w.dc.ldif(&format!("dn: CN=Bulk 0003,{ou}\nchangetype: delete\n"));
    let report = w.sync();
    // Each changed user is seen by the in-scope search and by the domain-wide one that
    // catches moves out of scope: two reads per changed user, one per deletion.
    assert_eq!(
        read_of(&report),
        ("incremental".into(), 5),
        "only the three changed entries were read: {:#}",
        report["directory"]
    );
    assert_eq!(
        (count(&report, "update"), count(&report, "close")),
        (1, 2),
        "{report:#}"
    );
    assert_eq!(
        w.user("bulk0001@dirsync.test")["name"]["familyName"],
        "Changed"
    );
    assert_eq!(w.user("bulk0002@dirsync.test")["active"], json!(false));
    assert_eq!(
        w.user("bulk0003@dirsync.test")["active"],
        json!(false),
        "deleted in AD: closed on the delta"
    );

    // The same portal state a full read reaches: forget the delta basis, read everything,
    // and nothing is left to do.
    let db = rusqlite::Connection::open(w.dir.path().join("state.db")).unwrap();
    db.execute("DELETE FROM meta WHERE key = 'directory.basis'", [])
        .unwrap();
    let report = w.sync();
    let (kind, entries) = read_of(&report);
    assert_eq!(kind, "full");
    assert!(
        entries >= 999,
        "a full read reads every user in scope ({entries})"
    );
    assert!(
        report["changes"].as_array().unwrap().is_empty(),
        "the delta left the portal as a full read does: {report:#}"
    );
}

#[test]
fn ad_an_incremental_cycle_lists_no_portal_and_reads_by_id_only_the_users_that_changed() {
    let mut w = AdWorld::start(SambaDc::start());
    let proxy = crate::harness::proxy::Proxy::start(&w.portal.url);
    w.portal_url = Some(proxy.url.clone());
    let ou = w.dc.add_ou("Few,Staff");
    bulk_users(&w.dc, &ou, 6);
    let report = w.sync();
    assert_eq!(count(&report, "create"), 6, "{report:#}");
    assert_eq!(read_of(&report).0, "full");

    w.modify(&format!("CN=Bulk 0001,{ou}"), "replace: sn\nsn: Changed");
    w.dc.ldif(&format!("dn: CN=Bulk 0002,{ou}\nchangetype: delete\n"));
    let ids: std::collections::BTreeSet<String> = ["bulk0001", "bulk0002"]
        .iter()
        .map(|u| {
            w.user(&format!("{u}@dirsync.test"))["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    proxy.clear();
    let report = w.sync();
    assert_eq!(
        read_of(&report).0,
        "incremental",
        "{:#}",
        report["directory"]
    );
    assert_eq!(
        (count(&report, "update"), count(&report, "close")),
        (1, 1),
        "{report:#}"
    );
    let requests = proxy.requests();
    let listings: Vec<&str> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("startIndex="))
        .map(|r| r.path.as_str())
        .collect();
    assert!(listings.is_empty(), "no listing: {}", proxy.summary());
    let read: std::collections::BTreeSet<String> = requests
        .iter()
        .filter(|r| r.method == "GET")
        .filter_map(|r| r.path.strip_prefix("/Users/").map(str::to_string))
        .collect();
    assert_eq!(
        read,
        ids,
        "only the changed users, by id: {}",
        proxy.summary()
    );
    assert_eq!(report["portal"]["listed"], false);

    // A full reconcile agrees: nothing left.
    let run = w.run(&["plan", "--full", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let full = run.json();
    assert_eq!(read_of(&full).0, "full");
    assert!(full["changes"].as_array().unwrap().is_empty(), "{full:#}");
}

/// The DC's invocationId as Samba reports it: the `invocationId` of the NTDS Settings
/// object the rootDSE's `dsServiceName` names, read with ldapsearch.
fn samba_invocation_id(dc: &SambaDc) -> String {
    let service = dc.attribute_values("", "dsServiceName").remove(0);
    let service = String::from_utf8(service).unwrap();
    let values = dc.attribute_values(&service, "invocationId");
    assert_eq!(values.len(), 1, "{service}: {values:?}");
    crate::harness::samba::guid_to_string(&values[0])
}

/// The delta basis the state keeps, as JSON.
fn stored_basis(db: &rusqlite::Connection) -> Json {
    let text: String = db
        .query_row(
            "SELECT value FROM meta WHERE key = 'directory.basis'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn ad_the_recorded_invocation_id_is_the_dcs_and_a_changed_one_or_another_dc_forces_a_full_read() {
    let w = AdWorld::start(SambaDc::start());
    let ou = w.dc.add_ou("Few,Staff");
    bulk_users(&w.dc, &ou, 5);
    let report = w.sync();
    let samba_says = samba_invocation_id(&w.dc);
    let db = rusqlite::Connection::open(w.dir.path().join("state.db")).unwrap();
    assert_eq!(stored_basis(&db)["invocation_id"], json!(samba_says));
    assert_eq!(
        report["directory"]["domain_controller"]["invocation_id"],
        json!(samba_says),
        "{:#}",
        report["directory"]
    );
    let text = w.run(&["plan"]);
    assert!(
        text.stdout.contains(&format!("invocationId {samba_says}")),
        "{}",
        text.stdout
    );
    assert_eq!(read_of(&w.sync()).0, "incremental");

    let restored = "00000000-0000-0000-0000-000000000001";
    for (field, bogus, reason) in [
        (
            "invocation_id",
            restored,
            format!(
                "the domain controller's invocationId changed ({restored} → {samba_says}): \
                 it was restored from a backup or reinstalled"
            ),
        ),
        (
            "host",
            "dc2.elsewhere.test",
            "another domain controller answered (dc2.elsewhere.test before, ".to_string(),
        ),
    ] {
        let mut basis = stored_basis(&db);
        basis[field] = json!(bogus);
        db.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'directory.basis'",
            [basis.to_string()],
        )
        .unwrap();
        let report = w.sync();
        assert_eq!(read_of(&report).0, "full", "{field}");
        let said = report["directory"]["read_reason"].as_str().unwrap();
        assert!(said.starts_with(&reason), "{said}");
        assert!(
            report["changes"].as_array().unwrap().is_empty(),
            "{report:#}"
        );
        assert_eq!(
            read_of(&w.sync()).0,
            "incremental",
            "back to deltas after the full read"
        );
        assert_eq!(stored_basis(&db)["invocation_id"], json!(samba_says));
    }
}

#[test]
fn ad_ranged_member_values_are_followed_to_the_end() {
    // Samba does not cut `member` into ranges by itself; ask for a small first range, as
    // AD's MaxValRange would give, and follow it to `*`.
    let w = AdWorld::start(SambaDc::start());
    let ou = w.dc.add_ou("Many,Staff");
    bulk_users(&w.dc, &ou, 25);
    let members: Vec<String> = (0..25).map(|i| format!("CN=Bulk {i:04},{ou}")).collect();
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let groups = w.dc.add_ou("Groups");
    let group = w.dc.add_group(&groups, "Big", &refs);
    let config = dirsync::config::Config::load(&w.config()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let values = rt.block_on(async {
        let mut source = dirsync::source::LdapSource::connect(&config.source, &[])
            .await
            .unwrap();
        let values = source
            .ranged_values(&group, "member;range=0-9".into())
            .await
            .unwrap();
        source.close().await;
        values
    });
    let mut got: Vec<String> = values.iter().map(|v| v.to_ascii_lowercase()).collect();
    got.sort();
    let mut want: Vec<String> = members.iter().map(|m| m.to_ascii_lowercase()).collect();
    want.sort();
    assert_eq!(got, want, "all 25 members, across two ranges");
}

#[test]
fn ad_a_user_moved_out_of_the_users_base_is_closed_by_the_next_delta() {
    let w = AdWorld::start(SambaDc::start());
    let ou = w.dc.add_ou("Movers,Staff");
    bulk_users(&w.dc, &ou, 3);
    let elsewhere = w.dc.add_ou("Contractors");
    w.sync();
    assert_eq!(read_of(&w.sync()).0, "incremental");
    w.dc.ldif(&format!("dn: CN=Bulk 0001,{ou}\nchangetype: modrdn\nnewrdn: CN=Bulk 0001\ndeleteoldrdn: 1\nnewsuperior: {elsewhere}\n"));
    let report = w.sync();
    assert_eq!(read_of(&report).0, "incremental");
    assert_eq!(count(&report, "close"), 1, "{report:#}");
    assert_eq!(
        report["changes"][0]["reason"],
        "no longer in the directory scope"
    );
    assert_eq!(w.user("bulk0001@dirsync.test")["active"], json!(false));
}

#[test]
fn ad_an_account_expiring_between_cycles_is_closed_by_the_next_delta_as_expired() {
    let w = AdWorld::start(SambaDc::start());
    let ou = w.dc.add_ou("Temps,Staff");
    let anna =
        w.dc.add_user(&ou, "anna", "Anna", "Berg", Some("anna@dirsync.test"));
    let bo =
        w.dc.add_user(&ou, "bo", "Bo", "Ek", Some("bo@dirsync.test"));
    let cid =
        w.dc.add_user(&ou, "cid", "Cid", "Al", Some("cid@dirsync.test"));
    w.dc.add_user(&ou, "dag", "Dag", "Ny", Some("dag@dirsync.test"));
    assert_eq!(count(&w.sync(), "create"), 4);

    // Anna's account expires in 20 s; the cycle right after sees it still valid.
    let start = std::time::SystemTime::now();
    let expires = dirsync::source::ad::filetime_from_now(20, start);
    w.modify(
        &anna,
        &format!("replace: accountExpires\naccountExpires: {expires}"),
    );
    let report = w.sync();
    assert_eq!(read_of(&report).0, "incremental");
    assert_eq!(count(&report, "close"), 0, "{report:#}");
    assert_eq!(w.user("anna@dirsync.test")["active"], json!(true));
    // Nothing changes: the next sync plans nothing and settles; the one after finds its
    // findings standing (nobody mapped), as long as nobody's account expired.
    let settling = w.sync();
    assert!(
        settling["changes"].as_array().unwrap().is_empty(),
        "{settling:#}"
    );
    assert!(!stands(&settling), "{:#}", settling["directory"]);
    let quiet = w.sync();
    assert!(stands(&quiet), "{:#}", quiet["directory"]);
    assert!(quiet["changes"].as_array().unwrap().is_empty(), "{quiet:#}");

    // Time passes; nothing changes in AD. Anna's expiry ends what stood: she is closed.
    let at = start + std::time::Duration::from_secs(21);
    if let Ok(wait) = at.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(wait);
    }
    let expired = w.run(&["plan", "--format", "json"]);
    assert_eq!(expired.code, 0, "{}", expired.all_output());
    let expired = expired.json();
    assert!(!stands(&expired), "{:#}", expired["directory"]);
    assert_eq!(
        actions(&expired),
        [("close".to_string(), "anna@dirsync.test".to_string())],
        "{expired:#}"
    );

    // Then Bo is disabled, Cid deleted.
    w.modify(&bo, "replace: userAccountControl\nuserAccountControl: 514");
    w.dc.ldif(&format!("dn: {cid}\nchangetype: delete\n"));
    let report = w.sync();
    assert_eq!(
        read_of(&report).0,
        "incremental",
        "{:#}",
        report["directory"]
    );
    let on =
        dirsync::source::Timestamp::from_system_time(start + std::time::Duration::from_secs(20));
    let mut reasons: Vec<(String, String)> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["action"], "close", "{c:#}");
            (
                c["user_name"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            (
                "anna@dirsync.test".to_string(),
                format!("account expired on {on}")
            ),
            (
                "bo@dirsync.test".to_string(),
                "disabled in the directory".to_string()
            ),
            (
                "cid@dirsync.test".to_string(),
                "deleted from the directory".to_string()
            ),
        ]
    );
    for (login, active) in [
        ("anna@dirsync.test", false),
        ("bo@dirsync.test", false),
        ("cid@dirsync.test", false),
        ("dag@dirsync.test", true),
    ] {
        assert_eq!(w.user(login)["active"], json!(active), "{login}");
    }

    // A full read agrees: nothing left to do.
    let db = rusqlite::Connection::open(w.dir.path().join("state.db")).unwrap();
    db.execute("DELETE FROM meta WHERE key = 'directory.basis'", [])
        .unwrap();
    let report = w.sync();
    assert_eq!(read_of(&report).0, "full");
    assert!(
        report["changes"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
}

const SUB_UNIT: &str = "urn:ietf:params:scim:schemas:extension:faxportal:2.0:User";

/// What access a portal user has: role, services (sorted), sub-unit, and the portal
/// groups they are in (sorted).
fn access_of(w: &AdWorld, login: &str) -> (String, Vec<String>, Json, Vec<String>) {
    let u = w.user(login);
    let mut services: Vec<String> = u["entitlements"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["value"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    services.sort();
    let id = u["id"].as_str().unwrap().to_string();
    let mut groups: Vec<String> = w
        .portal
        .groups()
        .iter()
        .filter(|g| {
            g["members"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["value"] == json!(id)))
        })
        .map(|g| g["displayName"].as_str().unwrap().to_string())
        .collect();
    groups.sort();
    (
        u["roles"][0]["value"].as_str().unwrap_or("").to_string(),
        services,
        u[SUB_UNIT]["subUnit"].clone(),
        groups,
    )
}

/// The fields a report's change touches, by login.
fn changed_fields(report: &Json) -> Vec<(String, String, Vec<String>)> {
    let mut out: Vec<(String, String, Vec<String>)> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["user_name"].as_str().unwrap().to_string(),
                c["action"].as_str().unwrap().to_string(),
                c["fields"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["path"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Forgets the delta basis: the next sync reads everything.
fn forget_basis(w: &AdWorld) {
    let db = rusqlite::Connection::open(w.dir.path().join("state.db")).unwrap();
    db.execute("DELETE FROM meta WHERE key = 'directory.basis'", [])
        .unwrap();
}

#[test]
fn ad_renamed_and_moved_members_of_nested_groups_keep_their_access_on_a_delta() {
    let mut w = AdWorld::start(SambaDc::start());
    let ops = w.dc.add_ou("Ops,Staff");
    let oslo = w.dc.add_ou("Oslo,Staff");
    let anna =
        w.dc.add_user(&ops, "anna", "Anna", "Berg", Some("anna@dirsync.test"));
    let bo =
        w.dc.add_user(&ops, "bo", "Bo", "Ek", Some("bo@dirsync.test"));
    let cid =
        w.dc.add_user(&ops, "cid", "Cid", "Al", Some("cid@dirsync.test"));
    let dag =
        w.dc.add_user(&ops, "dag", "Dag", "Ny", Some("dag@dirsync.test"));
    let groups = w.dc.add_ou("Groups");
    // Three deep, each: Anna an administrator, Bo and Cid account managers, everyone
    // fax (Night-Shift in Ops-Team in Fax-Users) and sms.
    let core = w.dc.add_group(&groups, "Admin-Core", &[&anna]);
    let team = w.dc.add_group(&groups, "Admin-Team", &[&core]);
    w.dc.add_group(&groups, "Portal-Admins", &[&team]);
    let keys = w.dc.add_group(&groups, "Key-Accounts", &[&bo, &cid]);
    let leads = w.dc.add_group(&groups, "Sales-Leads", &[&keys]);
    w.dc.add_group(&groups, "Account-Managers", &[&leads]);
    let night =
        w.dc.add_group(&groups, "Night-Shift", &[&anna, &bo, &cid, &dag]);
    let ops_team = w.dc.add_group(&groups, "Ops-Team", &[&night]);
    w.dc.add_group(&groups, "Fax-Users", &[&ops_team]);
    w.dc.add_group(&groups, "SMS-Users", &[&night]);
    w.extra = format!(
        r#"
[roles]
default = "regular"
[[roles.rule]]
group = "Portal-Admins"
role = "administrator"
[[roles.rule]]
group = "Account-Managers"
role = "account_manager"

[[service]]
group = "Fax-Users"
service = "fax"
[[service]]
group = "SMS-Users"
service = "sms"

[portal_groups]
groups = ["Ops-Team", "Sales-Leads"]

[sub_unit]
from = "ou"
to = "{SUB_UNIT}:subUnit"
"#
    );
    let report = w.sync();
    assert_eq!(count(&report, "create"), 4, "{report:#}");
    assert_eq!(read_of(&w.sync()), ("incremental".into(), 0));
    let logins = [
        "anna@dirsync.test",
        "bo@dirsync.test",
        "cid@dirsync.test",
        "dag@dirsync.test",
    ];
    let before: Vec<_> = logins.iter().map(|l| access_of(&w, l)).collect();
    let both = |role: &str, unit: &str, groups: &[&str]| {
        (
            role.to_string(),
            vec!["fax".to_string(), "sms".to_string()],
            json!(unit),
            groups.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        before,
        [
            both("administrator", "Ops", &["Ops-Team"]),
            both("account_manager", "Ops", &["Ops-Team", "Sales-Leads"]),
            both("account_manager", "Ops", &["Ops-Team", "Sales-Leads"]),
            both("regular", "Ops", &["Ops-Team"]),
        ]
    );

    // Anna renamed, Bo moved to Oslo, Cid renamed and moved. AD rewrites their DNs in
    // the groups' member values without touching the groups' uSNChanged.
    let night_usn = w.dc.attribute_values(&night, "uSNChanged");
    let modrdn = |dn: &str, rdn: &str, to: &str| {
        w.dc.ldif(&format!(
            "dn: {dn}\nchangetype: modrdn\nnewrdn: {rdn}\ndeleteoldrdn: 1\nnewsuperior: {to}\n"
        ))
    };
    modrdn(&anna, "CN=Anna Lind", &ops);
    modrdn(&bo, "CN=Bo Ek", &oslo);
    modrdn(&cid, "CN=Cid Berg-Al", &oslo);
    assert_eq!(
        w.dc.attribute_values(&night, "uSNChanged"),
        night_usn,
        "the group itself did not change"
    );

    let report = w.sync();
    assert_eq!(
        read_of(&report).0,
        "incremental",
        "{:#}",
        report["directory"]
    );
    let sub_unit = format!("{SUB_UNIT}:subUnit");
    assert_eq!(
        changed_fields(&report),
        [
            (
                "bo@dirsync.test".to_string(),
                "update".to_string(),
                vec![sub_unit.clone()]
            ),
            (
                "cid@dirsync.test".to_string(),
                "update".to_string(),
                vec![sub_unit.clone()]
            ),
        ],
        "only the moved users' sub-unit: {report:#}"
    );
    assert!(
        report["group_changes"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    let after: Vec<_> = logins.iter().map(|l| access_of(&w, l)).collect();
    assert_eq!(
        after,
        [
            both("administrator", "Ops", &["Ops-Team"]),
            both("account_manager", "Oslo", &["Ops-Team", "Sales-Leads"]),
            both("account_manager", "Oslo", &["Ops-Team", "Sales-Leads"]),
            both("regular", "Ops", &["Ops-Team"]),
        ]
    );

    // A full read finds the portal as the delta left it.
    forget_basis(&w);
    let report = w.sync();
    assert_eq!(read_of(&report).0, "full");
    assert!(
        report["changes"].as_array().unwrap().is_empty()
            && report["group_changes"].as_array().unwrap().is_empty(),
        "{report:#}"
    );

    // Dag is deleted and someone new takes his DN in the same delta: the newcomer gets
    // nothing of Dag's groups.
    assert_eq!(read_of(&w.sync()).0, "incremental");
    w.dc.ldif(&format!("dn: {dag}\nchangetype: delete\n"));
    let newcomer =
        w.dc.add_user(&ops, "dag2", "Dag", "Ny", Some("dag2@dirsync.test"));
    assert_eq!(newcomer, dag);
    let report = w.sync();
    assert_eq!(read_of(&report).0, "incremental");
    let closed: Vec<&Json> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "close")
        .collect();
    assert_eq!(closed.len(), 1, "{report:#}");
    assert_eq!(
        (&closed[0]["user_name"], &closed[0]["reason"]),
        (
            &json!("dag@dirsync.test"),
            &json!("deleted from the directory")
        )
    );
    assert_eq!(
        access_of(&w, "dag2@dirsync.test"),
        ("regular".to_string(), vec![], json!("Ops"), vec![]),
        "{report:#}"
    );
    forget_basis(&w);
    let report = w.sync();
    assert_eq!(read_of(&report).0, "full");
    assert!(
        report["changes"].as_array().unwrap().is_empty()
            && report["group_changes"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
}

#[test]
fn ad_a_renamed_nested_group_keeps_its_members_access_on_a_delta() {
    let mut w = AdWorld::start(SambaDc::start());
    let ops = w.dc.add_ou("Ops,Staff");
    let anna =
        w.dc.add_user(&ops, "anna", "Anna", "Berg", Some("anna@dirsync.test"));
    let groups = w.dc.add_ou("Groups");
    let elsewhere = w.dc.add_ou("Teams,Groups");
    let night = w.dc.add_group(&groups, "Night-Shift", &[&anna]);
    let ops_team = w.dc.add_group(&groups, "Ops-Team", &[&night]);
    w.dc.add_group(&groups, "Fax-Users", &[&ops_team]);
    w.extra = r#"
[roles]
default = "regular"
[[roles.rule]]
group = "Fax-Users"
role = "account_manager"
[[service]]
group = "Fax-Users"
service = "fax"
[portal_groups]
groups = ["Fax-Users"]
"#
    .into();
    w.sync();
    assert_eq!(read_of(&w.sync()).0, "incremental");
    let before = access_of(&w, "anna@dirsync.test");
    assert_eq!(before.0, "account_manager");
    assert_eq!(before.1, ["fax"]);
    assert_eq!(before.3, ["Fax-Users"]);

    // Both inner groups renamed and moved to another OU.
    w.dc.ldif(&format!(
        "dn: {night}\nchangetype: modrdn\nnewrdn: CN=Late-Shift\ndeleteoldrdn: 1\nnewsuperior: {elsewhere}\n"
    ));
    w.dc.ldif(&format!(
        "dn: {ops_team}\nchangetype: modrdn\nnewrdn: CN=Operations\ndeleteoldrdn: 1\nnewsuperior: {elsewhere}\n"
    ));
    let report = w.sync();
    assert_eq!(read_of(&report).0, "incremental");
    assert!(
        report["changes"].as_array().unwrap().is_empty()
            && report["group_changes"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    assert_eq!(access_of(&w, "anna@dirsync.test"), before);
    forget_basis(&w);
    let report = w.sync();
    assert_eq!(read_of(&report).0, "full");
    assert!(
        report["changes"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
}

#[test]
fn ad_a_renamed_ou_forces_a_full_read_and_its_users_keep_their_access() {
    let mut w = AdWorld::start(SambaDc::start());
    let ops = w.dc.add_ou("Ops,Staff");
    let anna =
        w.dc.add_user(&ops, "anna", "Anna", "Berg", Some("anna@dirsync.test"));
    let bo =
        w.dc.add_user(&ops, "bo", "Bo", "Ek", Some("bo@dirsync.test"));
    let cid = w.dc.add_user(
        &w.staff.clone(),
        "cid",
        "Cid",
        "Al",
        Some("cid@dirsync.test"),
    );
    let groups = w.dc.add_ou("Groups");
    let night = w.dc.add_group(&groups, "Night-Shift", &[&anna, &bo]);
    w.dc.add_group(&groups, "Fax-Users", &[&night]);
    w.extra = format!(
        r#"
[roles]
default = "regular"
[[roles.rule]]
group = "Fax-Users"
role = "account_manager"
[[service]]
group = "Fax-Users"
service = "fax"
[sub_unit]
from = "ou"
to = "{SUB_UNIT}:subUnit"
"#
    );
    w.sync();
    assert_eq!(read_of(&w.sync()).0, "incremental");

    // The OU is renamed: Anna's and Bo's DNs change, their uSNChanged does not. Cid joins
    // Night-Shift, so the group is read again, with the members' new DNs.
    let usn = w.dc.attribute_values(&anna, "uSNChanged");
    w.dc.ldif(&format!(
        "dn: {ops}\nchangetype: modrdn\nnewrdn: OU=Operations\ndeleteoldrdn: 1\n"
    ));
    let operations = format!("OU=Operations,{}", w.staff);
    assert_eq!(
        w.dc.attribute_values(&format!("CN=Anna Berg,{operations}"), "uSNChanged"),
        usn
    );
    w.modify(&night, &format!("add: member\nmember: {cid}"));
    let report = w.sync();
    assert_eq!(read_of(&report).0, "full", "{:#}", report["directory"]);
    assert_eq!(
        report["directory"]["read_reason"],
        json!(format!(
            "{ops} was renamed or moved to {operations}: the DNs of the users and groups below it changed"
        ))
    );
    let sub_unit = format!("{SUB_UNIT}:subUnit");
    let role = "roles.value".to_string();
    let fax = "entitlements[value eq \"fax\"].value".to_string();
    let changes = changed_fields(&report);
    assert_eq!(
        changes,
        [
            (
                "anna@dirsync.test".to_string(),
                "update".to_string(),
                vec![sub_unit.clone()]
            ),
            (
                "bo@dirsync.test".to_string(),
                "update".to_string(),
                vec![sub_unit.clone()]
            ),
            (
                "cid@dirsync.test".to_string(),
                "update".to_string(),
                vec![role, fax]
            ),
        ],
        "{report:#}"
    );
    for login in ["anna@dirsync.test", "bo@dirsync.test", "cid@dirsync.test"] {
        let (role, services, _, _) = access_of(&w, login);
        assert_eq!(
            (role.as_str(), services),
            ("account_manager", vec!["fax".to_string()]),
            "{login}"
        );
    }
    assert_eq!(access_of(&w, "anna@dirsync.test").2, json!("Operations"));
    assert_eq!(
        read_of(&w.sync()).0,
        "incremental",
        "deltas again after the full read"
    );
}
