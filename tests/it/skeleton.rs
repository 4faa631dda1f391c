//! The walking skeleton, end to end: the real dirsync binary against a real slapd and the
//! real scim2-server started with the portal's published schema.

use serde_json::{json, Value as Json};

use crate::support::{count, person, without_meta, World};

fn staff(n: usize) -> String {
    (0..n)
        .map(|i| {
            person(
                &format!("user{i:02}"),
                &format!("Given{i}"),
                &format!("Family{i}"),
                Some(&format!("user{i:02}@example.se")),
            )
        })
        .collect()
}

#[test]
fn first_cycle_creates_every_user_with_mapped_attributes_and_second_plans_nothing() {
    let mut ldif = staff(12);
    ldif.push_str(
        "dn: uid=tel,ou=people,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: tel\ncn: Tove Lund\ngivenName: Tove\n\
         sn: Lund\ndisplayName: Tove Lund\nmail: Tove.Lund@example.se\npreferredLanguage: nb\ntelephoneNumber: +46 8 555 01\n\n",
    );
    let w = World::start(&ldif);

    let report = w.sync();
    assert_eq!(count(&report, "create"), 13, "{report:#}");
    assert_eq!(count(&report, "failed"), 0);
    let users = w.portal.users();
    assert_eq!(
        users.len(),
        13,
        "12 pages of 5 were read and written: {users:#?}"
    );

    let tove = w.portal_user("Tove.Lund@example.se");
    let uuid = w.ldap.entry_uuid("uid=tel,ou=people,dc=example,dc=com");
    assert_eq!(tove["externalId"], json!(uuid));
    assert_eq!(tove["active"], json!(true));
    assert_eq!(
        tove["name"],
        json!({"givenName": "Tove", "familyName": "Lund"})
    );
    assert_eq!(tove["displayName"], "Tove Lund");
    assert_eq!(tove["preferredLanguage"], "nb");
    assert_eq!(
        tove["emails"],
        json!([{"type": "work", "value": "Tove.Lund@example.se"}])
    );
    assert_eq!(
        tove["phoneNumbers"],
        json!([{"type": "work", "value": "+46 8 555 01"}])
    );

    let again = w.plan();
    assert!(
        again["changes"].as_array().unwrap().is_empty(),
        "second cycle must plan nothing: {again:#}"
    );
    let again = w.sync();
    assert!(again["changes"].as_array().unwrap().is_empty());
    assert_eq!(w.portal.users().len(), 13);
}

#[test]
fn changed_surname_becomes_one_patch_of_family_name_and_nothing_else() {
    let w = World::start(&staff(3));
    w.sync();
    let before = w.portal_user("user01@example.se");
    let others_before: Vec<Json> = w
        .portal
        .users()
        .into_iter()
        .filter(|u| u["id"] != before["id"])
        .collect();

    w.ldap.modify("dn: uid=user01,ou=people,dc=example,dc=com\nchangetype: modify\nreplace: sn\nsn: Lindqvist\n");
    let report = w.sync();
    let changes = report["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{report:#}");
    assert_eq!(changes[0]["action"], "update");
    assert_eq!(
        changes[0]["fields"],
        json!([{"path": "name.familyName", "old": "Family1", "new": "Lindqvist", "why": "directory_change"}])
    );
    assert_eq!(changes[0]["outcome"]["status"], "applied");

    let after = w.portal_user("user01@example.se");
    let mut expected = without_meta(before.clone());
    expected["name"]["familyName"] = json!("Lindqvist");
    assert_eq!(
        without_meta(after),
        expected,
        "only name.familyName may change"
    );
    let others_after: Vec<Json> = w
        .portal
        .users()
        .into_iter()
        .filter(|u| u["id"] != before["id"])
        .collect();
    assert_eq!(others_after, others_before, "no other user was written to");
}

#[test]
fn removed_and_disabled_users_are_closed_and_reactivated_when_they_return() {
    let w = World::start(&staff(4));
    w.sync();
    let gone_id = w.portal_user("user01@example.se")["id"].clone();
    let disabled_id = w.portal_user("user02@example.se")["id"].clone();

    w.ldap.delete("uid=user01,ou=people,dc=example,dc=com");
    w.ldap.modify("dn: uid=user02,ou=people,dc=example,dc=com\nchangetype: modify\nadd: employeeType\nemployeeType: disabled\n");
    let report = w.sync();
    assert_eq!(count(&report, "close"), 2, "{report:#}");
    let reasons: Vec<&str> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.contains(&"no longer in the directory scope")
            && reasons.contains(&"disabled in the directory"),
        "{reasons:?}"
    );
    for login in ["user01@example.se", "user02@example.se"] {
        assert_eq!(
            w.portal_user(login)["active"],
            json!(false),
            "{login} is closed, not deleted"
        );
    }
    assert_eq!(w.portal.users().len(), 4);
    assert!(
        w.plan()["changes"].as_array().unwrap().is_empty(),
        "closing is done once"
    );

    // Both come back: the disabled one is enabled again (same entry); the deleted one is
    // added again, a new entry with a new entryUUID but the same login.
    w.ldap.modify(
        "dn: uid=user02,ou=people,dc=example,dc=com\nchangetype: modify\ndelete: employeeType\n",
    );
    w.ldap.add(&person(
        "user01",
        "Given1",
        "Family1",
        Some("user01@example.se"),
    ));
    let report = w.sync();
    assert_eq!(count(&report, "reactivate"), 2, "{report:#}");
    assert_eq!(count(&report, "create"), 0);
    let users = w.portal.users();
    assert_eq!(users.len(), 4, "no duplicates");
    for (login, id) in [
        ("user01@example.se", &gone_id),
        ("user02@example.se", &disabled_id),
    ] {
        let u = w.portal_user(login);
        assert_eq!(u["active"], json!(true));
        assert_eq!(&u["id"], id, "{login} keeps its portal id");
    }
    let new_uuid = w.ldap.entry_uuid("uid=user01,ou=people,dc=example,dc=com");
    assert_eq!(
        w.portal_user("user01@example.se")["externalId"],
        json!(new_uuid),
        "relinked to the new entry"
    );
    assert!(
        w.plan()["changes"].as_array().unwrap().is_empty(),
        "and stays linked"
    );
}

#[test]
fn hand_made_portal_user_without_external_id_is_untouched() {
    let w = World::start(&staff(2));
    let boss = w.portal.create_user(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "boss@example.se", "displayName": "Made by hand", "active": true
    }));
    let report = w.sync();
    assert_eq!(count(&report, "create"), 2, "{report:#}");
    assert_eq!(count(&report, "adopt"), 0);
    // Users come and go in the directory; the hand-made user is never touched.
    w.ldap.delete("uid=user01,ou=people,dc=example,dc=com");
    let report = w.sync();
    assert_eq!(count(&report, "close"), 1, "{report:#}");
    w.sync();
    let (_, now) = w
        .portal
        .get(&format!("/Users/{}", boss["id"].as_str().unwrap()));
    assert_eq!(now, boss, "not even its meta changed: no write reached it");
}

#[test]
fn plan_changes_nothing_in_the_portal() {
    let w = World::start(&staff(5));
    w.sync();
    // Pending: one create, one update, one close.
    w.ldap
        .add(&person("new", "Nils", "Ny", Some("nils@example.se")));
    w.ldap.modify("dn: uid=user00,ou=people,dc=example,dc=com\nchangetype: modify\nreplace: displayName\ndisplayName: Changed\n");
    w.ldap.delete("uid=user03,ou=people,dc=example,dc=com");
    let before = w.portal.users();
    let state_before = std::fs::read(w.dir.path().join("state.db")).unwrap();

    let run = w.dirsync(&["plan"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(
        run.stdout.contains("dry run: nothing was changed"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("displayName: \"Given0 Family0\" → \"Changed\"  (directory change)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("Summary (planned): 1 create, 0 adopt, 1 update, 0 reactivate, 1 close"),
        "{}",
        run.stdout
    );
    let report = w.plan();
    assert_eq!(
        (
            count(&report, "create"),
            count(&report, "update"),
            count(&report, "close")
        ),
        (1, 1, 1)
    );

    assert_eq!(
        w.portal.users(),
        before,
        "plan must not write to the portal"
    );
    assert_eq!(
        std::fs::read(w.dir.path().join("state.db")).unwrap(),
        state_before,
        "nor to the state"
    );
}

#[test]
fn entries_without_mail_or_sharing_a_mail_are_reported_and_the_others_sync() {
    let mut ldif = staff(3);
    ldif.push_str(&person("nomail", "Nina", "Utan", None));
    ldif.push_str(&person("twin1", "Tor", "Ett", Some("twin@example.se")));
    ldif.push_str(&person("twin2", "Tor", "Tva", Some("TWIN@example.se")));
    ldif.push_str(
        "dn: uid=badurl,ou=people,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: badurl\ncn: Per Fel\n\
         sn: Fel\nmail: per.fel@example.se\nlabeledURI: not a url\n\n",
    );
    let w = World::start(&ldif);
    let run = w.dirsync(&["sync", "--format", "json"]);
    assert_eq!(
        run.code,
        0,
        "bad entries are reported, not a failure:\n{}",
        run.all_output()
    );
    let report = run.json();
    assert_eq!(count(&report, "create"), 3, "{report:#}");
    assert_eq!(count(&report, "skipped"), 3);
    assert_eq!(
        count(&report, "rejected"),
        1,
        "the portal refused the bad profileUrl"
    );
    let skipped: Vec<(String, String)> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["dn"].as_str().unwrap().to_string(),
                s["problem"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        skipped
            .iter()
            .any(|(dn, p)| dn.starts_with("uid=nomail") && p.contains("no mail")),
        "{skipped:?}"
    );
    assert!(
        skipped
            .iter()
            .any(|(dn, p)| dn.starts_with("uid=twin1") && p.contains("uid=twin2")),
        "{skipped:?}"
    );
    assert!(
        skipped
            .iter()
            .any(|(dn, p)| dn.starts_with("uid=twin2") && p.contains("uid=twin1")),
        "{skipped:?}"
    );
    let rejected = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["outcome"]["status"] == "rejected")
        .unwrap();
    assert_eq!(rejected["user_name"], "per.fel@example.se");
    assert!(
        rejected["outcome"]["message"]
            .as_str()
            .unwrap()
            .contains("400"),
        "{rejected:#}"
    );
    let logins: Vec<String> = w
        .portal
        .users()
        .iter()
        .map(|u| u["userName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(logins.len(), 3, "{logins:?}");

    // The text report says the same.
    let text = w.dirsync(&["plan"]).stdout;
    assert!(text.contains("Skipped directory entries (3):"), "{text}");
    assert!(text.contains("no mail (mapped to userName"), "{text}");
}

#[test]
fn secrets_appear_in_no_log_line_and_no_report() {
    let w = World::start(&staff(3));
    w.ldap.delete("uid=user02,ou=people,dc=example,dc=com");
    let mut outputs = Vec::new();
    for args in [
        vec!["--log-level", "trace", "check"],
        vec!["--log-level", "trace", "plan"],
        vec!["--log-level", "trace", "sync", "--format", "json"],
        vec!["--log-level", "trace", "--log-format", "json", "sync"],
        vec!["--log-level", "trace", "plan", "--format", "json"],
    ] {
        let run = w.dirsync(&args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.all_output());
        outputs.push(run.all_output());
    }
    // A failing bind and a refused token must not echo the secrets either.
    std::fs::write(w.dir.path().join("portal-token"), "wrong-token-zz9").unwrap();
    let cfg = w.config_path();
    let run = crate::support::run_dirsync(&cfg, &["--log-level", "trace", "sync"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(
        run.stderr.contains("refused the credentials"),
        "{}",
        run.stderr
    );
    outputs.push(run.all_output());
    let all = outputs.join("\n");
    assert!(
        all.contains("TRACE") || all.contains("DEBUG"),
        "trace logging was on"
    );
    for secret in [
        w.ldap.bind_password.as_str(),
        w.portal.token.as_str(),
        "wrong-token-zz9",
    ] {
        assert!(
            !all.contains(secret),
            "secret {secret:?} leaked into the output"
        );
    }
}

#[test]
fn the_html_report_is_one_self_contained_page_with_everything_escaped() {
    let mut ldif = staff(2);
    ldif.push_str(&person(
        "evil",
        "<script>alert(1)</script>",
        "Q",
        Some("evil@example.se"),
    ));
    ldif.push_str(&person("nomail", "No", "Mail", None));
    let w = World::start(&ldif);
    let run = w.dirsync(&["plan", "--format", "html"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let page = run.stdout;
    assert!(
        page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"),
        "{page}"
    );
    assert!(page.contains("<h2>Create (3)</h2>"), "{page}");
    assert!(
        page.contains("Skipped directory entries") && page.contains("no mail"),
        "{page}"
    );
    assert_eq!(
        page.matches("<script>").count(),
        1,
        "only the page's own filter script: directory values are escaped"
    );
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(
        !page.contains("src=") && !page.contains("href=") && !page.contains("http-equiv"),
        "nothing external"
    );
    let run = w.dirsync(&["sync", "--format", "html"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(
        run.stdout.contains("<span class=\"ok\">done</span>"),
        "{}",
        run.stdout
    );
}

#[test]
fn hostile_logins_are_skipped_with_the_reason_and_a_tab_in_a_name_becomes_a_space() {
    let mut ldif = staff(2);
    for (uid, mail) in [
        ("xss", "<script>alert(2)</script>@x.se"),
        ("quoted", "\"anna berg\"@x.se"),
        ("json", "{\"role\":\"administrator\"}@x.se"),
    ] {
        ldif.push_str(&person(uid, "Bad", "Login", Some(mail)));
    }
    // A tab inside givenName: LDIF carries it base64-encoded ("Ann\ta").
    ldif.push_str(
        &person("tab", "TABNAME", "Berg", Some("tab@example.se"))
            .replace("givenName: TABNAME\n", "givenName:: QW5uCWE=\n"),
    );
    let w = World::start(&ldif);
    // `check` counts what `plan` skips, and names each.
    let check = w.dirsync(&["check", "--format", "json"]);
    assert_eq!(check.code, 0, "{}", check.all_output());
    let checked = check.json();
    let planned = w.plan();
    assert_eq!(checked["directory"]["unusable_entries"], 3, "{checked:#}");
    assert_eq!(
        checked["directory"]["skipped"], planned["skipped"],
        "check names the entries plan skips"
    );
    let text = w.dirsync(&["check"]).stdout;
    assert!(
        text.contains("3 entries that plan skips") && text.contains("skipped uid=xss,"),
        "{text}"
    );
    let report = w.sync();
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 3, "{skipped:#?}");
    for uid in ["xss", "quoted", "json"] {
        let s = skipped
            .iter()
            .find(|s| {
                s["dn"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("uid={uid},"))
            })
            .unwrap_or_else(|| panic!("{uid} not skipped: {skipped:#?}"));
        assert!(
            s["problem"]
                .as_str()
                .unwrap()
                .contains("is not a usable email address"),
            "{s}"
        );
    }
    assert_eq!(count(&report, "create"), 3, "the others sync");
    assert_eq!(w.portal.users().len(), 3);
    assert_eq!(
        w.portal_user("tab@example.se")["name"]["givenName"],
        "Ann a"
    );
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("uid=tab,")
            && notes.contains("`name.givenName`")
            && notes.contains("replaced by spaces"),
        "{notes}"
    );
    // The next cycle changes nothing (the portal holds the cleaned value) and still says
    // why the value differs from the directory's.
    assert_eq!(w.plan()["changes"].as_array().map_or(0, Vec::len), 0);
    let text = w.dirsync(&["plan"]).stdout;
    assert!(
        text.contains("uid=tab,") && text.contains("replaced by spaces"),
        "{text}"
    );
}
