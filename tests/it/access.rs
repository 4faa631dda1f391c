//! Roles, services, portal groups and sub-units from the directory, against the real
//! slapd and scim2-server.

use serde_json::{json, Value as Json};

use crate::support::{count, group_dn, group_ldif, person, user_dn, World};

const ROLES: &str = r#"
[roles]
default = "regular"
[[roles.rule]]
group = "Portal-Admins"
role = "administrator"
[[roles.rule]]
group = "Fax-Admins"
role = "account_manager"

[[service]]
group = "Fax-Users"
service = "fax"

[[service]]
group = "SMS-Users"
service = "sms"
"#;

fn role(u: &Json) -> Json {
    u["roles"].clone()
}

fn services(u: &Json) -> Vec<String> {
    let mut s: Vec<String> = u["entitlements"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["value"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    s.sort();
    s
}

fn people(uids: &[&str]) -> String {
    uids.iter()
        .map(|u| person(u, u, "Test", Some(&format!("{u}@example.se"))))
        .collect()
}

#[test]
fn role_precedence_with_groups_nested_three_deep_and_a_cycle_that_is_reported() {
    let mut ldif = people(&["anna", "bo", "cia", "dan"]);
    // Portal-Admins ⊃ Ops ⊃ Night-Shift ⊃ anna (three levels); Fax-Admins ⊃ anna, bo;
    // a cycle Loop-A ⊃ Loop-B ⊃ Loop-A with cia inside; dan in nothing.
    ldif.push_str(&group_ldif("Night-Shift", &[&user_dn("anna")]));
    ldif.push_str(&group_ldif("Ops", &[&group_dn("Night-Shift")]));
    ldif.push_str(&group_ldif("Portal-Admins", &[&group_dn("Ops")]));
    ldif.push_str(&group_ldif(
        "Fax-Admins",
        &[&user_dn("anna"), &user_dn("bo"), &group_dn("Loop-A")],
    ));
    ldif.push_str(&group_ldif(
        "Loop-A",
        &[&group_dn("Loop-B"), &user_dn("cia")],
    ));
    ldif.push_str(&group_ldif("Loop-B", &[&group_dn("Loop-A")]));
    ldif.push_str(&group_ldif("Fax-Users", &[&group_dn("Fax-Admins")]));
    ldif.push_str(&group_ldif("SMS-Users", &[]));
    let mut w = World::start(&ldif);
    w.extra_config = ROLES.into();

    let started = std::time::Instant::now();
    let run = w.dirsync(&["sync", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(
        started.elapsed().as_secs() < 60,
        "the cycle did not hang on the group cycle"
    );
    let report = run.json();
    let notes: Vec<&str> = report["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("group cycle") && n.contains("Loop-A ⊃ Loop-B ⊃ Loop-A")),
        "{notes:?}"
    );

    let primary = |r: &str| json!([{"value": r, "primary": true}]);
    assert_eq!(
        role(&w.portal_user("anna@example.se")),
        primary("administrator"),
        "first rule wins, three levels down"
    );
    assert_eq!(
        role(&w.portal_user("bo@example.se")),
        primary("account_manager")
    );
    assert_eq!(
        role(&w.portal_user("cia@example.se")),
        primary("account_manager"),
        "through the cycle"
    );
    assert_eq!(
        role(&w.portal_user("dan@example.se")),
        primary("regular"),
        "default"
    );
    assert_eq!(
        services(&w.portal_user("cia@example.se")),
        ["fax"],
        "Fax-Users ⊃ Fax-Admins ⊃ Loop-A ⊃ cia"
    );
    assert!(services(&w.portal_user("dan@example.se")).is_empty());

    let text = w.dirsync(&["plan"]).stdout;
    assert!(text.contains("No changes"), "{text}");
    // A role change is reported with the group that caused it.
    w.ldap.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n",
        group_dn("Portal-Admins"),
        user_dn("dan")
    ));
    let text = w.dirsync(&["plan"]).stdout;
    assert!(
        text.contains("roles.value: [\"regular\"] → [\"administrator\"]  (directory change) [via group Portal-Admins]"),
        "{text}"
    );
}

#[test]
fn joining_and_leaving_the_fax_group_grants_and_revokes_fax_and_nothing_else() {
    let mut ldif = people(&["anna", "bo"]);
    ldif.push_str(&group_ldif("Fax-Users", &[&user_dn("bo")]));
    ldif.push_str(&group_ldif(
        "SMS-Users",
        &[&user_dn("anna"), &user_dn("bo")],
    ));
    ldif.push_str(&group_ldif("Fax-Admins", &[&user_dn("bo")]));
    ldif.push_str(&group_ldif("Portal-Admins", &[]));
    let mut w = World::start(&ldif);
    w.extra_config = ROLES.into();
    w.sync();
    assert_eq!(services(&w.portal_user("anna@example.se")), ["sms"]);
    let before = w.portal.users();

    w.ldap.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n",
        group_dn("Fax-Users"),
        user_dn("anna")
    ));
    let report = w.sync();
    let changes = report["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{report:#}");
    assert_eq!(changes[0]["fields"].as_array().unwrap().len(), 1);
    assert_eq!(
        changes[0]["fields"][0]["path"],
        "entitlements[value eq \"fax\"].value"
    );
    assert_eq!(
        changes[0]["fields"][0]["detail"],
        "granted via group Fax-Users"
    );
    assert_eq!(services(&w.portal_user("anna@example.se")), ["fax", "sms"]);
    let bo_before = before
        .iter()
        .find(|u| u["userName"] == "bo@example.se")
        .unwrap();
    assert_eq!(&w.portal_user("bo@example.se"), bo_before, "bo untouched");

    w.ldap.modify(&format!(
        "dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n",
        group_dn("Fax-Users"),
        user_dn("anna")
    ));
    let report = w.sync();
    assert_eq!(report["changes"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(report["changes"][0]["fields"][0]["new"], Json::Null);
    let anna = w.portal_user("anna@example.se");
    assert_eq!(services(&anna), ["sms"]);
    let anna_before = before
        .iter()
        .find(|u| u["userName"] == "anna@example.se")
        .unwrap();
    let strip = |u: &Json| {
        let mut u = u.clone();
        u.as_object_mut().unwrap().remove("meta");
        u.as_object_mut().unwrap().remove("entitlements");
        u
    };
    assert_eq!(
        strip(&anna),
        strip(anna_before),
        "nothing but the service changed"
    );
}

#[test]
fn removing_the_last_account_manager_from_the_group_keeps_them_and_says_why() {
    let mut ldif = people(&["anna", "bo"]);
    ldif.push_str(&group_ldif("Fax-Admins", &[&user_dn("anna")]));
    ldif.push_str(&group_ldif("Portal-Admins", &[]));
    ldif.push_str(&group_ldif("Fax-Users", &[]));
    ldif.push_str(&group_ldif("SMS-Users", &[]));
    let mut w = World::start(&ldif);
    w.extra_config = ROLES.into();
    w.sync();
    w.ldap.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: member\nmember: cn=dirsync,ou=services,dc=example,dc=com\n-\ndelete: member\nmember: {}\n",
        group_dn("Fax-Admins"),
        user_dn("anna")
    ));
    for _ in 0..2 {
        let run = w.dirsync(&["sync"]);
        assert_eq!(run.code, 0, "{}", run.all_output());
        assert!(
            run.stdout
                .contains("anna@example.se: keeps role [\"account_manager\"]")
                && run.stdout.contains(
                    "it is the last active administrator or account_manager dirsync manages"
                ),
            "{}",
            run.stdout
        );
        assert_eq!(
            role(&w.portal_user("anna@example.se")),
            json!([{"value": "account_manager", "primary": true}])
        );
    }
    // Once bo is made an account manager, anna's demotion goes through.
    w.ldap.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n",
        group_dn("Fax-Admins"),
        user_dn("bo")
    ));
    w.sync();
    assert_eq!(
        role(&w.portal_user("anna@example.se")),
        json!([{"value": "regular", "primary": true}])
    );
    assert_eq!(
        role(&w.portal_user("bo@example.se")),
        json!([{"value": "account_manager", "primary": true}])
    );
}

#[test]
fn mirrored_group_rename_keeps_its_id_and_hand_made_groups_are_never_touched() {
    let mut ldif = people(&["anna", "bo", "cia"]);
    ldif.push_str(&group_ldif(
        "Sales-Share",
        &[&user_dn("anna"), &group_dn("Sales-Nordic")],
    ));
    ldif.push_str(&group_ldif("Sales-Nordic", &[&user_dn("bo")]));
    ldif.push_str(&group_ldif("Not-Mirrored", &[&user_dn("cia")]));
    let mut w = World::start(&ldif);
    w.extra_config = "[portal_groups]\nfilter = \"(cn=*-Share)\"\n".into();
    let hand_made = w.portal.create_group(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Reception", "members": []
    }));

    let report = w.sync();
    assert_eq!(count(&report, "group_create"), 1, "{report:#}");
    let groups = w.portal.groups();
    let share = groups
        .iter()
        .find(|g| g["displayName"] == "Sales-Share")
        .unwrap()
        .clone();
    let ids: Vec<&str> = share["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    let expect: Vec<String> = ["anna@example.se", "bo@example.se"]
        .iter()
        .map(|l| w.portal_user(l)["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "nested members are flattened: {share}");
    assert!(expect.iter().all(|e| ids.contains(&e.as_str())));
    assert_eq!(
        share["externalId"],
        json!(w.ldap.entry_uuid(&group_dn("Sales-Share")))
    );

    // Rename in the directory (same entryUUID): same portal group, new name.
    w.ldap.modify(&format!(
        "dn: {}\nchangetype: modrdn\nnewrdn: cn=Nordic-Share\ndeleteoldrdn: 1\n",
        group_dn("Sales-Share")
    ));
    let report = w.sync();
    assert_eq!(count(&report, "group_update"), 1, "{report:#}");
    let renamed = w
        .portal
        .groups()
        .into_iter()
        .find(|g| g["id"] == share["id"])
        .unwrap();
    assert_eq!(renamed["displayName"], "Nordic-Share");
    assert_eq!(w.portal.groups().len(), 2, "no new group");

    // Leaving scope: the group dirsync made is deleted; the hand-made one never changes.
    w.ldap.modify("dn: cn=Nordic-Share,ou=groups,dc=example,dc=com\nchangetype: modrdn\nnewrdn: cn=Nordic-Archive\ndeleteoldrdn: 1\n");
    let report = w.sync();
    assert_eq!(count(&report, "group_delete"), 1, "{report:#}");
    let left = w.portal.groups();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0], hand_made, "the hand-made group was never written");
}

#[test]
fn sub_unit_follows_ou_moves_and_can_come_from_an_attribute() {
    let mut ldif = String::new();
    for ou in ["Stockholm", "Oslo"] {
        ldif.push_str(&format!("dn: ou={ou},ou=people,dc=example,dc=com\nobjectClass: organizationalUnit\nou: {ou}\n\n"));
    }
    ldif.push_str("dn: ou=Sales,ou=Stockholm,ou=people,dc=example,dc=com\nobjectClass: organizationalUnit\nou: Sales\n\n");
    ldif.push_str(
        &person("anna", "Anna", "Berg", Some("anna@example.se")).replace(
            "uid=anna,ou=people",
            "uid=anna,ou=Sales,ou=Stockholm,ou=people",
        ),
    );
    ldif.push_str(&person("bo", "Bo", "Ek", Some("bo@example.se")));
    let mut w = World::start(&ldif);
    const SUB: &str = "urn:ietf:params:scim:schemas:extension:faxportal:2.0:User";
    w.extra_config = format!("[sub_unit]\nfrom = \"ou\"\nto = \"{SUB}:subUnit\"\n");
    w.sync();
    assert_eq!(
        w.portal_user("anna@example.se")[SUB]["subUnit"],
        "Stockholm/Sales"
    );
    assert!(
        w.portal_user("bo@example.se").get(SUB).is_none(),
        "no OU below the base: no sub-unit"
    );

    w.ldap.modify("dn: uid=anna,ou=Sales,ou=Stockholm,ou=people,dc=example,dc=com\nchangetype: modrdn\nnewrdn: uid=anna\ndeleteoldrdn: 1\nnewsuperior: ou=Oslo,ou=people,dc=example,dc=com\n");
    let report = w.sync();
    assert_eq!(
        (count(&report, "update"), count(&report, "create")),
        (1, 0),
        "{report:#}"
    );
    assert_eq!(w.portal_user("anna@example.se")[SUB]["subUnit"], "Oslo");

    // From an attribute instead, into the enterprise extension's department (the default).
    w.ldap.modify("dn: uid=bo,ou=people,dc=example,dc=com\nchangetype: modify\nadd: departmentNumber\ndepartmentNumber: Finance\n");
    w.extra_config = "[sub_unit]\nfrom = \"attribute\"\nattribute = \"departmentNumber\"\n".into();
    w.sync();
    let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    assert_eq!(w.portal_user("bo@example.se")[ent]["department"], "Finance");
}

#[test]
fn a_3000_member_group_changes_by_requests_proportional_to_the_change_not_the_group() {
    let uids: Vec<String> = (0..3001).map(|i| format!("m{i:04}")).collect();
    let mut ldif: String = uids
        .iter()
        .map(|u| person(u, "M", u, Some(&format!("{u}@example.se"))))
        .collect();
    let members: Vec<String> = uids[..3000].iter().map(|u| user_dn(u)).collect();
    let member_refs: Vec<&str> = members.iter().map(String::as_str).collect();
    ldif.push_str(&group_ldif("Big-Share", &member_refs));
    let mut w = World::start(&ldif);
    w.extra_config = "[portal_groups]\ngroups = [\"Big-Share\"]\n".into();
    w.portal_page_size = 100;
    let proxy = w.behind_proxy();

    let report = w.sync();
    assert_eq!(
        (count(&report, "create"), count(&report, "group_create")),
        (3001, 1)
    );
    assert_eq!(
        proxy.count("POST", "/Groups"),
        1,
        "the group is created in one request"
    );
    let big = || {
        w.portal
            .groups()
            .into_iter()
            .find(|g| g["displayName"] == "Big-Share")
            .unwrap()
    };
    assert_eq!(big()["members"].as_array().unwrap().len(), 3000);

    // Two members leave, one joins.
    proxy.clear();
    w.ldap.modify(&format!(
        "dn: {}\nchangetype: modify\ndelete: member\nmember: {}\nmember: {}\n-\nadd: member\nmember: {}\n",
        group_dn("Big-Share"),
        user_dn("m0000"),
        user_dn("m0001"),
        user_dn("m3000")
    ));
    let report = w.sync();
    assert_eq!(count(&report, "group_update"), 1, "{report:#}");
    let writes: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|s| s.method != "GET")
        .collect();
    assert_eq!(
        writes.len(),
        1,
        "one write for three membership changes: {writes:?}"
    );
    assert_eq!(writes[0].method, "PATCH");
    let body: Json = serde_json::from_str(&writes[0].body).unwrap();
    let ops = body["Operations"].as_array().unwrap();
    assert_eq!(ops.len(), 3, "{body}");
    assert_eq!(ops.iter().filter(|o| o["op"] == "remove").count(), 2);
    let add = ops.iter().find(|o| o["op"] == "add").unwrap();
    assert_eq!(
        add["value"].as_array().unwrap().len(),
        1,
        "only the new member is sent, not the list"
    );
    assert!(
        writes[0].body.len() < 1_000,
        "the request does not carry the 3000 members"
    );
    let reads = proxy.requests().len() - writes.len();
    eprintln!("3000-member group: 1 write for 3 membership changes; {reads} reads (user and group listing)");
    let now = big();
    let ids: Vec<&str> = now["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2999);
    assert!(ids.contains(&w.portal_user("m3000@example.se")["id"].as_str().unwrap()));
    assert!(!ids.contains(&w.portal_user("m0000@example.se")["id"].as_str().unwrap()));
}
