use std::collections::{BTreeMap, HashSet};

use serde_json::json;

use super::*;
use crate::portal::PortalSchema;

fn rules() -> Vec<Rule> {
    [
        ("mail", "userName"),
        ("mail", r#"emails[type eq "work"].value"#),
        ("givenName", "name.givenName"),
        ("sn", "name.familyName"),
        ("displayName", "displayName"),
        ("telephoneNumber", r#"phoneNumbers[type eq "work"].value"#),
    ]
    .into_iter()
    .map(|(from, to)| Rule {
        from: from.into(),
        to: AttrPath::parse(to).unwrap(),
        multi: false,
    })
    .collect()
}

fn portal_schema() -> PortalSchema {
    PortalSchema::from_json(
        &serde_json::from_str(include_str!("../../tests/fixtures/portal/schemas.json")).unwrap(),
    )
}

fn dir_user(uid: &str, mail: Option<&str>, sn: &str) -> DirectoryUser {
    let mut attrs = BTreeMap::new();
    if let Some(m) = mail {
        attrs.insert("mail".to_string(), vec![m.to_string()]);
    }
    attrs.insert("givenname".to_string(), vec![uid.to_string()]);
    attrs.insert("sn".to_string(), vec![sn.to_string()]);
    attrs.insert("displayname".to_string(), vec![format!("{uid} {sn}")]);
    DirectoryUser {
        dn: format!("uid={uid},ou=people,dc=example,dc=com"),
        anchor: format!("uuid-{uid}"),
        attrs,
        disabled: false,
    }
}

/// The portal user a create of `u` would have produced.
fn portal_user_for(u: &DirectoryUser, id: &str) -> PortalUser {
    let plan = plan_with(std::slice::from_ref(u), &[], &HashSet::new());
    let mut body = crate::apply::create_body(&plan.changes[0]);
    body["id"] = json!(id);
    body["meta"] = json!({"version": "W/\"1\""});
    PortalUser::from_json(body).unwrap()
}

fn plan_with(
    directory: &[DirectoryUser],
    portal: &[PortalUser],
    managed: &HashSet<String>,
) -> Plan {
    let rules = rules();
    let schema = portal_schema();
    compute(&Input {
        directory,
        bad_entries: &[],
        portal,
        managed,
        rules: &rules,
        schema: &schema,
    })
}

fn managed(users: &[&DirectoryUser]) -> HashSet<String> {
    users
        .iter()
        .map(|u| u.anchor.to_ascii_lowercase())
        .collect()
}

#[test]
fn first_cycle_creates_every_user_with_the_mapped_attributes() {
    let dir = vec![
        dir_user("anna", Some("anna@example.se"), "Berg"),
        dir_user("bo", Some("bo@example.se"), "Ek"),
    ];
    let plan = plan_with(&dir, &[], &HashSet::new());
    assert_eq!(plan.count(Action::Create), 2);
    let anna = plan
        .changes
        .iter()
        .find(|c| c.user_name == "anna@example.se")
        .unwrap();
    let body = crate::apply::create_body(anna);
    assert_eq!(body["userName"], "anna@example.se");
    assert_eq!(body["externalId"], "uuid-anna");
    assert_eq!(body["active"], true);
    assert_eq!(
        body["name"],
        json!({"givenName": "anna", "familyName": "Berg"})
    );
    assert_eq!(
        body["emails"],
        json!([{"type": "work", "value": "anna@example.se"}])
    );
    assert!(
        body.get("phoneNumbers").is_none(),
        "absent attributes are not sent"
    );
}

#[test]
fn a_portal_that_matches_needs_nothing() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let p = portal_user_for(&anna, "p1");
    let plan = plan_with(std::slice::from_ref(&anna), &[p], &managed(&[&anna]));
    assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    assert_eq!(plan.links.len(), 1);
}

#[test]
fn changed_surname_is_one_field_change_and_nothing_else() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let p = portal_user_for(&anna, "p1");
    let mut renamed = anna.clone();
    renamed.attrs.insert("sn".into(), vec!["Lind".into()]);
    renamed
        .attrs
        .insert("displayname".into(), vec!["anna Berg".into()]);
    let plan = plan_with(&[renamed], &[p], &managed(&[&anna]));
    assert_eq!(plan.changes.len(), 1);
    let c = &plan.changes[0];
    assert_eq!(c.action, Action::Update);
    assert_eq!(c.portal_id.as_deref(), Some("p1"));
    assert_eq!(c.version.as_deref(), Some("W/\"1\""));
    assert_eq!(
        c.fields,
        vec![FieldChange {
            path: AttrPath::parse("name.familyName").unwrap(),
            old: Some(Value::One("Berg".into())),
            new: Some(Value::One("Lind".into())),
        }]
    );
    assert_eq!(
        crate::apply::patch_operations(c),
        vec![json!({"op": "replace", "path": "name.familyName", "value": "Lind"})]
    );
}

#[test]
fn attribute_removed_in_the_directory_is_removed_in_the_portal() {
    let mut anna = dir_user("anna", Some("anna@example.se"), "Berg");
    anna.attrs
        .insert("telephonenumber".into(), vec!["+46 8 1".into()]);
    let p = portal_user_for(&anna, "p1");
    anna.attrs.remove("telephonenumber");
    let plan = plan_with(std::slice::from_ref(&anna), &[p], &managed(&[&anna]));
    assert_eq!(
        crate::apply::patch_operations(&plan.changes[0]),
        vec![json!({"op": "remove", "path": "phoneNumbers[type eq \"work\"]"})]
    );
}

#[test]
fn user_gone_from_the_directory_is_closed_not_deleted() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let bo = dir_user("bo", Some("bo@example.se"), "Ek");
    let portal = vec![portal_user_for(&anna, "p1"), portal_user_for(&bo, "p2")];
    let plan = plan_with(std::slice::from_ref(&bo), &portal, &managed(&[&anna, &bo]));
    assert_eq!(plan.changes.len(), 1);
    let c = &plan.changes[0];
    assert_eq!(
        (c.action, c.portal_id.as_deref()),
        (Action::Close, Some("p1"))
    );
    assert_eq!(
        c.reason.as_deref(),
        Some("no longer in the directory scope")
    );
    assert_eq!(
        crate::apply::patch_operations(c),
        vec![json!({"op": "replace", "path": "active", "value": false})]
    );
}

#[test]
fn disabled_user_is_closed_and_never_created() {
    let mut anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let p = portal_user_for(&anna, "p1");
    anna.disabled = true;
    let mut cid = dir_user("cid", Some("cid@example.se"), "Al");
    cid.disabled = true;
    let plan = plan_with(&[anna.clone(), cid], &[p], &managed(&[&anna]));
    assert_eq!(plan.changes.len(), 1, "{:?}", plan.changes);
    assert_eq!(plan.changes[0].action, Action::Close);
    assert_eq!(
        plan.changes[0].reason.as_deref(),
        Some("disabled in the directory")
    );
}

#[test]
fn returning_user_is_reactivated_with_pending_changes_not_duplicated() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let mut p = portal_user_for(&anna, "p1");
    p.active = false;
    let mut back = anna.clone();
    back.attrs.insert("sn".into(), vec!["Lind".into()]);
    let plan = plan_with(&[back], &[p], &managed(&[&anna]));
    assert_eq!(plan.changes.len(), 1);
    let c = &plan.changes[0];
    assert_eq!(c.action, Action::Reactivate);
    let ops = crate::apply::patch_operations(c);
    assert!(ops.contains(&json!({"op": "replace", "path": "active", "value": true})));
    assert!(ops.contains(&json!({"op": "replace", "path": "name.familyName", "value": "Lind"})));
}

#[test]
fn hand_made_portal_users_are_left_alone() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let hand_made =
        PortalUser::from_json(json!({"id": "h1", "userName": "boss@example.se", "active": true}))
            .unwrap();
    let foreign = PortalUser::from_json(
        json!({"id": "h2", "userName": "x@example.se", "externalId": "other-system-1"}),
    )
    .unwrap();
    let plan = plan_with(
        std::slice::from_ref(&anna),
        &[hand_made, foreign],
        &managed(&[&anna]),
    );
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.changes[0].action, Action::Create);
}

#[test]
fn directory_user_whose_login_a_hand_made_portal_user_has_is_reported_not_duplicated() {
    let anna = dir_user("anna", Some("Anna@Example.se"), "Berg");
    let hand_made =
        PortalUser::from_json(json!({"id": "h1", "userName": "anna@example.se"})).unwrap();
    let plan = plan_with(&[anna], &[hand_made], &HashSet::new());
    assert!(plan.changes.is_empty());
    assert_eq!(plan.skipped.len(), 1);
    assert!(
        plan.skipped[0].problem.contains("not manage"),
        "{}",
        plan.skipped[0].problem
    );
}

#[test]
fn entries_without_mail_or_sharing_a_mail_are_skipped_and_the_rest_sync() {
    let dir = vec![
        dir_user("anna", Some("anna@example.se"), "Berg"),
        dir_user("nomail", None, "X"),
        dir_user("twin1", Some("twin@example.se"), "A"),
        dir_user("twin2", Some("TWIN@example.se"), "B"),
        dir_user("odd", Some("odd@example.se\u{1}"), "C"),
    ];
    let plan = plan_with(&dir, &[], &HashSet::new());
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.changes[0].user_name, "anna@example.se");
    let problems: BTreeMap<&str, &str> = plan
        .skipped
        .iter()
        .map(|s| (s.dn.as_str(), s.problem.as_str()))
        .collect();
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(problems["uid=nomail,ou=people,dc=example,dc=com"].contains("no mail"));
    assert!(problems["uid=twin1,ou=people,dc=example,dc=com"].contains("uid=twin2"));
    assert!(problems["uid=twin2,ou=people,dc=example,dc=com"].contains("uid=twin1"));
    assert!(problems["uid=odd,ou=people,dc=example,dc=com"].contains("not a usable email"));
}

#[test]
fn control_characters_in_other_values_skip_the_entry() {
    let mut anna = dir_user("anna", Some("anna@example.se"), "Berg");
    anna.attrs.insert("sn".into(), vec!["Be\u{0}rg".into()]);
    let plan = plan_with(&[anna], &[], &HashSet::new());
    assert!(plan.changes.is_empty());
    assert!(plan.skipped[0].problem.contains("control characters"));
}

#[test]
fn immutable_login_change_needs_an_admin_and_other_changes_still_apply() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let p = portal_user_for(&anna, "p1");
    let mut changed = anna.clone();
    changed
        .attrs
        .insert("mail".into(), vec!["anna.berg@example.se".into()]);
    let plan = plan_with(&[changed], &[p], &managed(&[&anna]));
    assert_eq!(plan.needs_admin.len(), 1);
    assert!(plan.needs_admin[0].path.is_user_name());
    assert_eq!(
        plan.needs_admin[0].new,
        Some(Value::One("anna.berg@example.se".into()))
    );
    let c = &plan.changes[0];
    assert_eq!(
        c.fields.len(),
        1,
        "only the work email changes: {:?}",
        c.fields
    );
    assert_eq!(c.fields[0].path.attr, "emails");
}

#[test]
fn login_differing_only_in_case_is_no_change() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let mut p = portal_user_for(&anna, "p1");
    p.resource["userName"] = json!("ANNA@example.se");
    let plan = plan_with(std::slice::from_ref(&anna), &[p], &managed(&[&anna]));
    assert!(
        plan.changes.is_empty() && plan.needs_admin.is_empty(),
        "{plan:?}"
    );
}

#[test]
fn an_empty_directory_closes_nobody() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let p = portal_user_for(&anna, "p1");
    let plan = plan_with(&[], &[p], &managed(&[&anna]));
    assert!(plan.changes.is_empty());
    assert_eq!(plan.notes.len(), 1);
    assert!(plan.notes[0].contains("NOT closed"));
}

#[test]
fn two_portal_users_with_one_anchor_are_reported_and_untouched() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let p1 = portal_user_for(&anna, "p1");
    let mut p2 = portal_user_for(&anna, "p2");
    p2.resource["userName"] = json!("anna2@example.se");
    p2.user_name = "anna2@example.se".into();
    let mut changed = anna.clone();
    changed.attrs.insert("sn".into(), vec!["Lind".into()]);
    let plan = plan_with(&[changed], &[p1, p2], &managed(&[&anna]));
    assert!(plan.changes.is_empty());
    assert!(plan.skipped[0]
        .problem
        .contains("2 portal users carry externalId uuid-anna"));
}

#[test]
fn anchors_match_regardless_of_case() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let mut p = portal_user_for(&anna, "p1");
    p.external_id = Some("UUID-ANNA".into());
    let plan = plan_with(std::slice::from_ref(&anna), &[p], &managed(&[&anna]));
    assert!(plan.changes.is_empty());
}

#[test]
fn recreated_entry_relinks_and_reactivates_the_closed_portal_user() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let mut p = portal_user_for(&anna, "p1");
    p.active = false;
    let mut recreated = anna.clone();
    recreated.anchor = "uuid-anna-2".into();
    let plan = plan_with(&[recreated], &[p], &managed(&[&anna]));
    assert_eq!(plan.changes.len(), 1, "{:?}", plan.changes);
    let c = &plan.changes[0];
    assert_eq!(
        (c.action, c.portal_id.as_deref()),
        (Action::Reactivate, Some("p1"))
    );
    let ops = crate::apply::patch_operations(c);
    assert!(
        ops.contains(&json!({"op": "replace", "path": "externalId", "value": "uuid-anna-2"})),
        "{ops:?}"
    );
    assert!(ops.contains(&json!({"op": "replace", "path": "active", "value": true})));
}

#[test]
fn a_login_held_by_a_managed_user_still_in_the_directory_is_not_relinked() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let p = portal_user_for(&anna, "p1");
    let mut impostor = dir_user("anna2", Some("anna@example.se"), "Berg");
    impostor.anchor = "uuid-other".into();
    let mut anna_renamed = anna.clone();
    anna_renamed
        .attrs
        .insert("mail".into(), vec!["anna.b@example.se".into()]);
    // anna is still in the directory (with another mail now); her old login is not free.
    let plan = plan_with(&[anna_renamed, impostor], &[p], &managed(&[&anna]));
    assert!(
        plan.changes
            .iter()
            .all(|c| c.portal_id.as_deref() != Some("p1") || c.anchor == "uuid-anna"),
        "{:?}",
        plan.changes
    );
    assert!(
        plan.skipped.iter().any(|s| s.dn.starts_with("uid=anna2")),
        "{:?}",
        plan.skipped
    );
}
