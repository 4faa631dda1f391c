//! Every cycle's report on disk, `dirsync report`, report mail and `dirsync explain`,
//! against the real slapd and scim2-server, with aiosmtpd receiving the mail.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value as Json};

use crate::harness::SmtpSink;
use crate::support::{
    group_dn, group_ldif, mappings_with_owner, person, run_dirsync, user_dn, World,
};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The report files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn every_sync_leaves_its_report_which_dirsync_report_prints_again() {
    let mut w = World::start(
        &(person("anna", "Anna", "Berg", Some("anna@example.se"))
            + &person("bo", "Bo", "Ek", Some("bo@example.se"))),
    );
    w.extra_config = "[reports]\nkeep = 2\n".into();
    let run = w.dirsync(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    // By default beside the state database, which the test config puts beside itself.
    let dir = w.dir.path().join("reports");
    assert_eq!(mode(&dir), 0o700);
    let names = files(&dir);
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        names[0].ends_with("Z-sync.html") && names[1].ends_with("Z-sync.json"),
        "{names:?}"
    );
    assert_eq!(&names[2..], ["latest.html", "latest.json"]);
    for n in &names {
        assert_eq!(mode(&dir.join(n)), 0o600, "{n}");
    }
    let saved = std::fs::read_to_string(dir.join(&names[1])).unwrap();
    assert_eq!(
        saved,
        std::fs::read_to_string(dir.join("latest.json")).unwrap()
    );
    let report: Json = serde_json::from_str(&saved).unwrap();
    assert_eq!(report["command"], "sync");
    assert_eq!(report["counts"]["create"], 2);

    // Printed again, without a config, exactly as the sync printed it.
    let nowhere = w.dir.path().join("no-such-config.toml");
    let latest = dir.join("latest.json");
    let again = run_dirsync(&nowhere, &["report", latest.to_str().unwrap()]);
    assert_eq!(again.code, 0, "{}", again.all_output());
    assert_eq!(again.stdout, run.stdout);
    let html = run_dirsync(
        &nowhere,
        &["report", latest.to_str().unwrap(), "--format", "html"],
    );
    assert_eq!(
        html.stdout,
        std::fs::read_to_string(dir.join("latest.html")).unwrap()
    );
    let json = run_dirsync(
        &nowhere,
        &["report", latest.to_str().unwrap(), "--format", "json"],
    );
    assert_eq!(json.stdout.trim_end(), saved);
    let bad = run_dirsync(&nowhere, &["report", w.config_path().to_str().unwrap()]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("is not a dirsync JSON report"),
        "{}",
        bad.stderr
    );

    // A dry run writes no report; later cycles do, and the oldest go (keep = 2).
    assert_eq!(w.dirsync(&["plan"]).code, 0);
    assert_eq!(files(&dir), names);
    w.sync();
    w.sync();
    let now = files(&dir);
    assert_eq!(now.len(), 6, "{now:?}");
    assert!(
        !now.contains(&names[0]) && !now.contains(&names[1]),
        "oldest removed: {now:?}"
    );
    assert_eq!(
        std::fs::read(dir.join(&now[3])).unwrap(),
        std::fs::read(dir.join("latest.json")).unwrap(),
        "latest.json is the newest: {now:?}"
    );
}

fn staff(n: usize) -> String {
    (0..n)
        .map(|i| {
            person(
                &format!("s{i}"),
                &format!("G{i}"),
                &format!("F{i}"),
                Some(&format!("s{i}@example.se")),
            )
        })
        .collect()
}

fn disable(w: &World, uid: &str) {
    w.ldap.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: employeeType\nemployeeType: disabled\n",
        user_dn(uid)
    ));
}

#[test]
fn a_guard_trip_is_mailed_once_until_it_changes_and_its_resolution_once() {
    let smtp = SmtpSink::start();
    let mut w = World::start(&staff(6));
    w.safety = "[safety]\nmax_closures = 1\nmax_closure_percent = 100\n".into();
    w.extra_config = smtp.config();
    w.sync();
    assert!(smtp.mails().is_empty(), "nothing needs an administrator");

    disable(&w, "s0");
    disable(&w, "s1");
    let run = w.dirsync(&["sync"]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "a guard trip sends one mail");
    let subject = mails[0].subject();
    assert!(subject.starts_with("dirsync on "), "{subject}");
    assert!(
        subject.ends_with(": sync: held back: 2 closures"),
        "{subject}"
    );
    assert_eq!(mails[0].header("To").as_deref(), Some("admins@example.com"));
    assert!(
        mails[0].raw.contains("Content-Type: text/html"),
        "{}",
        mails[0].raw
    );
    assert!(mails[0].raw.contains("Content-Type: text/plain"));
    let remembered = w.dir.path().join("state.db.mail.json");
    assert_eq!(mode(&remembered), 0o600);

    // The same condition next cycle: no mail.
    assert_eq!(w.dirsync(&["sync"]).code, 3);
    assert_eq!(smtp.mails().len(), 1, "an identical next cycle sends none");

    // It changes (a third closure held back): mailed again, once.
    disable(&w, "s2");
    for _ in 0..2 {
        assert_eq!(w.dirsync(&["sync"]).code, 3);
    }
    let mails = smtp.mails();
    assert_eq!(mails.len(), 2);
    assert!(
        mails[1].subject().ends_with("held back: 3 closures"),
        "{}",
        mails[1].subject()
    );

    // The admin confirms: the closures go through, the condition clears, one mail says so.
    let run = w.dirsync(&["sync", "--confirm-closures", "3"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let mails = smtp.mails();
    assert_eq!(mails.len(), 3, "a resolved condition sends one mail");
    assert!(
        mails[2]
            .subject()
            .contains(": resolved: held back: 3 closures"),
        "{}",
        mails[2].subject()
    );
    w.sync();
    assert_eq!(smtp.mails().len(), 3, "and then all is quiet");
}

#[test]
fn a_mail_server_that_is_down_never_fails_the_cycle_and_the_mail_comes_later() {
    let smtp = SmtpSink::start();
    let mut w = World::start(&staff(3));
    w.safety = "[safety]\nmax_closures = 0\nmax_closure_percent = 100\n".into();
    w.sync();
    disable(&w, "s0");
    // Nobody listens on this port.
    w.extra_config = smtp.config().replace(
        &format!("port = {}", smtp.port),
        &format!("port = {}", crate::harness::free_port()),
    );
    let run = w.dirsync(&["sync"]);
    assert_eq!(
        run.code,
        3,
        "the guard's exit code, not a mail failure: {}",
        run.all_output()
    );
    assert!(
        run.stderr.contains("the report mail was not sent"),
        "{}",
        run.stderr
    );
    w.extra_config = smtp.config();
    assert_eq!(w.dirsync(&["sync"]).code, 3);
    assert_eq!(smtp.mails().len(), 1, "sent at the next cycle");
}

#[test]
fn explain_shows_a_nested_group_role_a_merge_conflict_and_a_portal_owned_field() {
    let anna = user_dn("anna");
    let mut ldif = person("anna", "Anna", "Berg", Some("anna@example.se"));
    ldif.push_str(&person("bo", "Bo", "Ek", Some("bo@example.se")));
    ldif.push_str(&group_ldif("Staff", &[&anna]));
    ldif.push_str(&group_ldif("Portal-Admins", &[&group_dn("Staff")]));
    ldif.push_str(&group_ldif("Fax-Users", &[&user_dn("bo")]));
    let mut w = World::start(&ldif);
    w.mappings = mappings_with_owner(&[
        ("\"displayName\"", "merge"),
        ("\"preferredLanguage\"", "portal"),
    ]);
    w.extra_config = r#"
[roles]
default = "regular"
[[roles.rule]]
group = "Fax-Users"
role = "account_manager"
[[roles.rule]]
group = "Portal-Admins"
role = "administrator"

[[service]]
group = "Fax-Users"
service = "fax"
"#
    .into();
    w.sync();
    // Both sides change the merge-owned display name; the user edits the portal-owned language.
    let id = w.portal_user("anna@example.se")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let status = w.portal.patch_user(
        &id,
        json!([
            {"op": "replace", "path": "displayName", "value": "Queen Anna"},
            {"op": "replace", "path": "preferredLanguage", "value": "en"}
        ]),
    );
    assert_eq!(status, 204);
    w.ldap.modify(&format!(
        "dn: {anna}\nchangetype: modify\nreplace: displayName\ndisplayName: Anna B. Berg\n-\nreplace: sn\nsn: Bergqvist\n"
    ));
    let state_before = std::fs::read(w.dir.path().join("state.db")).unwrap();

    let run = w.dirsync(&["explain", "anna@example.se"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let text = &run.stdout;
    println!("{text}");
    for expected in [
        &format!("directory entry {anna}"),
        "Staff (direct member)",
        "Portal-Admins via Staff ⊂ Portal-Admins",
        "role administrator: rule 2 (the first that matches)",
        "rule 1: group Fax-Users → role account_manager: no match: not a member",
        "rule 2: group Portal-Admins → role administrator: matched, via Staff ⊂ Portal-Admins",
        "group Fax-Users → service fax: no match: not a member",
        "link: linked: externalId ",
        "displayName [owner merge] from directory attribute displayName",
        "last synced \"Anna Berg\" · directory \"Anna B. Berg\" · portal \"Queen Anna\"",
        "next: keeps the portal value: the directory and the portal both changed it",
        "preferredLanguage [owner portal] from directory attribute preferredLanguage",
        "directory \"sv\" · portal \"en\"",
        "next: never touched: owned by the portal",
        "name.familyName [owner directory]",
        "next: set to \"Bergqvist\" (directory change)",
        "roles.value [owner directory] from the access rules: via group Staff → Portal-Admins",
        "next: nothing: the portal has the directory's value",
        "next cycle: update",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }

    // The same facts for tools; found by DN and by anchor too.
    let uuid = w.ldap.entry_uuid(&anna);
    for who in [anna.as_str(), uuid.as_str()] {
        let run = w.dirsync(&["explain", who, "--format", "json"]);
        assert_eq!(run.code, 0, "{}", run.all_output());
        let e = run.json();
        assert_eq!(e["directory"]["anchor"], uuid.as_str());
        assert_eq!(e["role"]["role"], "administrator");
        assert_eq!(e["role"]["decided_by"], 1);
        assert_eq!(
            e["role"]["rules"][1]["via"],
            json!(["Staff", "Portal-Admins"])
        );
        assert_eq!(e["next"]["action"], "update");
        let field = |name: &str| {
            e["fields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["attribute"] == name)
                .unwrap_or_else(|| panic!("no field {name}: {e:#}"))
                .clone()
        };
        let display = field("displayName");
        assert_eq!(display["owner"], "merge");
        assert_eq!(
            display["last_synced"],
            json!({"known": "value", "value": "Anna Berg"})
        );
        assert_eq!(display["directory"], "Anna B. Berg");
        assert_eq!(display["portal"], "Queen Anna");
        assert_eq!(field("preferredLanguage")["owner"], "portal");
    }

    // Read-only: nothing was written, no report file, and a user nobody has is an error.
    assert_eq!(
        std::fs::read(w.dir.path().join("state.db")).unwrap(),
        state_before
    );
    let reports = w.dir.path().join("reports");
    assert_eq!(files(&reports).len(), 4, "only the first sync's report");
    let run = w.dirsync(&["explain", "nobody@example.se"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("no user nobody@example.se"),
        "{}",
        run.stderr
    );
}

#[test]
fn mail_over_starttls_verifies_the_server_certificate() {
    let smtp = SmtpSink::start_starttls();
    let mut w = World::start(&staff(3));
    w.safety = "[safety]\nmax_closures = 0\nmax_closure_percent = 100\n".into();
    w.sync();
    disable(&w, "s0");
    // Without the CA that signed it, the server's certificate is not trusted: no mail,
    // and the cycle is as it would be without mail.
    let ca_line = format!("ca_file = \"{}\"\n", smtp.ca.as_ref().unwrap().display());
    w.extra_config = smtp.config().replace(&ca_line, "");
    let run = w.dirsync(&["sync"]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    assert!(
        run.stderr.contains("the report mail was not sent"),
        "{}",
        run.stderr
    );
    assert!(smtp.mails().is_empty());
    // Trusting it (mail.ca_file), the mail goes out over TLS.
    w.extra_config = smtp.config();
    assert_eq!(w.dirsync(&["sync"]).code, 3);
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].subject().ends_with("held back: 1 closure"),
        "{}",
        mails[0].subject()
    );
}
