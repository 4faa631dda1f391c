use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::json;

use super::*;
use crate::mapping::{self, Owner};
use crate::portal::PortalSchema;

mod links;
mod scope;

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
        owner: Owner::Directory,
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
        attrs: attrs.into(),
        disabled: false,
        expires: None,
    }
}

/// What the plan tests read of portal users: every path their rules compare.
fn fields() -> std::sync::Arc<UserFields> {
    static FIELDS: std::sync::OnceLock<std::sync::Arc<UserFields>> = std::sync::OnceLock::new();
    FIELDS
        .get_or_init(|| {
            let mut paths: Vec<AttrPath> = rules().into_iter().map(|r| r.to).collect();
            paths.extend([
                crate::access::role_path(),
                crate::access::service_path("fax"),
                crate::access::service_path("sms"),
            ]);
            UserFields::new(paths)
        })
        .clone()
}

/// A portal user read from a SCIM resource.
fn portal(resource: serde_json::Value) -> PortalUser {
    PortalUser::from_json(&resource, &fields()).unwrap()
}

/// The resource a create of `u` would have produced.
fn portal_json_for(u: &DirectoryUser, id: &str) -> serde_json::Value {
    let plan = plan_with(std::slice::from_ref(u), &[], &State::new());
    let mut body = crate::apply::create_body(&plan.changes[0]);
    body["id"] = json!(id);
    body["meta"] = json!({"version": "W/\"1\""});
    body
}

/// The portal user a create of `u` would have produced.
fn portal_user_for(u: &DirectoryUser, id: &str) -> PortalUser {
    portal(portal_json_for(u, id))
}

/// Sets a value as if edited in the portal.
fn edit(p: &mut PortalUser, path: &str, value: &str) {
    assert!(p.set(
        &AttrPath::parse(path).unwrap(),
        Some(Value::One(value.into()))
    ));
}

type State = HashMap<String, Baseline>;

fn plan_with(directory: &[DirectoryUser], portal: &[PortalUser], state: &State) -> Plan {
    plan_with_rules(directory, portal, state, &rules())
}

fn plan_with_rules(
    directory: &[DirectoryUser],
    portal: &[PortalUser],
    state: &State,
    rules: &[Rule],
) -> Plan {
    let schema = portal_schema();
    compute(&Input {
        directory,
        bad_entries: &[],
        portal,
        state,
        rules,
        schema: &schema,
        groups: &[],
        access: &AccessRules::default(),
        portal_groups: &[],
        known_groups: &HashMap::new(),
        now: Timestamp::from_unix(1_800_000_000),
        deleted: &HashSet::new(),
        links: &Links::default(),
        scope: &PlanScope::Full,
    })
}

/// The state after these users were created (or last synced) as they are now.
fn managed(users: &[&DirectoryUser]) -> State {
    users
        .iter()
        .map(|u| {
            let attrs = mapping::map_entry(&rules(), &u.attrs);
            (
                u.anchor.to_ascii_lowercase(),
                user::created_baseline(&attrs, &rules()),
            )
        })
        .collect()
}

#[test]
fn first_cycle_creates_every_user_with_the_mapped_attributes() {
    let dir = vec![
        dir_user("anna", Some("anna@example.se"), "Berg"),
        dir_user("bo", Some("bo@example.se"), "Ek"),
    ];
    let plan = plan_with(&dir, &[], &State::new());
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
    assert_eq!(plan.in_sync.len(), 1);
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
            why: Some(Why::DirectoryChange),
            detail: None,
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
fn an_account_whose_expiry_passed_is_closed_and_one_expiring_later_is_not() {
    let now = 1_800_000_000;
    let mut anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let mut bo = dir_user("bo", Some("bo@example.se"), "Ek");
    let mut cid = dir_user("cid", Some("cid@example.se"), "Al");
    let portal = vec![portal_user_for(&anna, "p1"), portal_user_for(&bo, "p2")];
    let state = managed(&[&anna, &bo]);
    anna.expires = Some(Timestamp::from_unix(now));
    bo.expires = Some(Timestamp::from_unix(now + 1));
    cid.expires = Some(Timestamp::from_unix(now - 60));
    let schema = portal_schema();
    let plan = compute(&Input {
        directory: &[anna, bo, cid],
        bad_entries: &[],
        portal: &portal,
        state: &state,
        rules: &rules(),
        schema: &schema,
        groups: &[],
        access: &AccessRules::default(),
        portal_groups: &[],
        known_groups: &HashMap::new(),
        now: Timestamp::from_unix(now),
        deleted: &HashSet::new(),
        links: &Links::default(),
        scope: &PlanScope::Full,
    });
    assert_eq!(
        plan.changes.len(),
        1,
        "cid is never created: {:?}",
        plan.changes
    );
    let c = &plan.changes[0];
    assert_eq!(
        (c.action, c.user_name.as_str()),
        (Action::Close, "anna@example.se")
    );
    assert_eq!(
        c.reason.as_deref(),
        Some("account expired on 2027-01-15 08:00:00 UTC")
    );
}

#[test]
fn a_user_whose_tombstone_was_read_is_closed_as_deleted() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let bo = dir_user("bo", Some("bo@example.se"), "Ek");
    let cid = dir_user("cid", Some("cid@example.se"), "Al");
    let portal = vec![
        portal_user_for(&anna, "p1"),
        portal_user_for(&bo, "p2"),
        portal_user_for(&cid, "p3"),
    ];
    let state = managed(&[&anna, &bo, &cid]);
    let schema = portal_schema();
    let plan = compute(&Input {
        directory: &[cid],
        bad_entries: &[],
        portal: &portal,
        state: &state,
        rules: &rules(),
        schema: &schema,
        groups: &[],
        access: &AccessRules::default(),
        portal_groups: &[],
        known_groups: &HashMap::new(),
        now: Timestamp::from_unix(1_800_000_000),
        deleted: &HashSet::from(["uuid-anna".to_string()]),
        links: &Links::default(),
        scope: &PlanScope::Full,
    });
    let reasons: Vec<(&str, Option<&str>)> = plan
        .changes
        .iter()
        .map(|c| (c.user_name.as_str(), c.reason.as_deref()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("anna@example.se", Some("deleted from the directory")),
            ("bo@example.se", Some("no longer in the directory scope")),
        ]
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
fn hand_made_portal_users_that_match_no_one_are_left_alone() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let hand_made = portal(json!({"id": "h1", "userName": "boss@example.se", "active": true}));
    let foreign =
        portal(json!({"id": "h2", "userName": "x@example.se", "externalId": "other-system-1"}));
    let plan = plan_with(
        std::slice::from_ref(&anna),
        &[hand_made, foreign],
        &managed(&[&anna]),
    );
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.changes[0].action, Action::Create);
}

#[test]
fn login_held_by_a_portal_user_of_another_system_is_reported_not_duplicated() {
    let anna = dir_user("anna", Some("Anna@Example.se"), "Berg");
    let foreign =
        portal(json!({"id": "h1", "userName": "anna@example.se", "externalId": "other-idm-7"}));
    let plan = plan_with(&[anna], &[foreign], &State::new());
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
    let plan = plan_with(&dir, &[], &State::new());
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
fn control_characters_in_other_values_become_spaces_and_are_noted() {
    let mut anna = dir_user("anna", Some("anna@example.se"), "Berg");
    anna.attrs.insert("sn".into(), vec!["Be\u{0}rg\tEk".into()]);
    let plan = plan_with(&[anna], &[], &State::new());
    assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);
    assert_eq!(plan.changes.len(), 1);
    let family = plan.changes[0]
        .fields
        .iter()
        .find(|f| f.path.to_string() == "name.familyName")
        .unwrap();
    assert_eq!(family.new, Some(Value::One("Be rg Ek".into())));
    assert!(
        plan.notes.iter().any(|n| n.contains("uid=anna")
            && n.contains("`name.familyName`")
            && n.contains("replaced by spaces")),
        "{:?}",
        plan.notes
    );
}

#[test]
fn control_characters_in_the_login_skip_the_entry() {
    let anna = dir_user("anna", Some("an\u{7}na@example.se"), "Berg");
    let plan = plan_with(&[anna], &[], &State::new());
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
    edit(&mut p, "userName", "ANNA@example.se");
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
    assert_eq!(plan.held.len(), 1);
    assert_eq!(plan.held[0].kind, guard::HeldKind::EmptySource);
    assert!(plan.held[0].message.contains("NOT closed"));
}

#[test]
fn two_portal_users_with_one_anchor_are_reported_and_untouched() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let p1 = portal_user_for(&anna, "p1");
    let mut p2 = portal_user_for(&anna, "p2");
    edit(&mut p2, "userName", "anna2@example.se");
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

// --- adoption ---

#[test]
fn hand_made_portal_user_with_the_same_login_is_adopted_not_duplicated() {
    let anna = dir_user("anna", Some("Anna@Example.se"), "Berg");
    let hand_made =
        portal(json!({"id": "h1", "userName": "anna@example.se", "displayName": "Anna (by hand)"}));
    let plan = plan_with(&[anna], &[hand_made], &State::new());
    assert_eq!(plan.changes.len(), 1, "{:?}", plan.changes);
    let c = &plan.changes[0];
    assert_eq!(
        (c.action, c.portal_id.as_deref()),
        (Action::Adopt, Some("h1"))
    );
    assert!(c.reason.as_deref().unwrap().contains("matched by userName"));
    let ops = crate::apply::patch_operations(c);
    assert!(
        ops.contains(&json!({"op": "replace", "path": "externalId", "value": "uuid-anna"})),
        "{ops:?}"
    );
    assert!(
        ops.contains(&json!({"op": "replace", "path": "displayName", "value": "anna Berg"})),
        "{ops:?}"
    );
    assert!(
        !ops.iter().any(|o| o["path"] == "userName"),
        "a case-only difference in the login is no change"
    );
}

#[test]
fn hand_made_portal_user_is_adopted_by_primary_email_too() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let hand_made = portal(json!({"id": "h1", "userName": "aberg", "emails": [
        {"value": "old@example.se", "type": "home"},
        {"value": "ANNA@example.se", "type": "work", "primary": true}]}));
    let plan = plan_with(&[anna], &[hand_made], &State::new());
    assert_eq!(plan.changes[0].action, Action::Adopt);
    assert!(plan.changes[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("primary email"));
    // userName is immutable in the portal: adopting cannot fix it, an admin must.
    assert_eq!(plan.needs_admin.len(), 1);
    assert!(plan.needs_admin[0].path.is_user_name());
}

#[test]
fn ambiguous_adoption_adopts_nothing_and_is_reported() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let by_login = portal(json!({"id": "h1", "userName": "anna@example.se"}));
    let by_mail = portal(
        json!({"id": "h2", "userName": "aberg", "emails": [{"value": "anna@example.se", "primary": true}]}),
    );
    let plan = plan_with(&[anna], &[by_login, by_mail], &State::new());
    assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    assert!(
        plan.skipped[0]
            .problem
            .starts_with("ambiguous: 2 portal users"),
        "{:?}",
        plan.skipped
    );
}

#[test]
fn closed_hand_made_user_is_adopted_and_opened() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let hand_made = portal(json!({"id": "h1", "userName": "anna@example.se", "active": false}));
    let plan = plan_with(&[anna], &[hand_made], &State::new());
    assert_eq!(plan.changes[0].set_active, Some(true));
}

// --- owners: the three-way rule ---

fn rules_with(owner_of: &[(&str, Owner)]) -> Vec<Rule> {
    rules()
        .into_iter()
        .map(|mut r| {
            if let Some((_, o)) = owner_of
                .iter()
                .find(|(p, _)| r.to == AttrPath::parse(p).unwrap())
            {
                r.owner = *o;
            }
            r
        })
        .collect()
}

/// anna as created, her portal user with `portal_edits` applied, the directory with
/// `directory_edits` applied: the plan under `rules`.
fn three_way(
    rules: &[Rule],
    portal_edits: &[(&str, serde_json::Value)],
    directory_edits: &[(&str, &str)],
) -> Plan {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let state: State = [(
        "uuid-anna".to_string(),
        user::created_baseline(&mapping::map_entry(rules, &anna.attrs), rules),
    )]
    .into();
    let mut resource = portal_json_for(&anna, "p1");
    for (pointer, v) in portal_edits {
        *resource.pointer_mut(pointer).unwrap() = v.clone();
    }
    let p = portal(resource);
    let mut now = anna.clone();
    for (attr, v) in directory_edits {
        now.attrs.insert(attr.to_string(), vec![v.to_string()]);
    }
    plan_with_rules(&[now], &[p], &state, rules)
}

#[test]
fn directory_owned_portal_edit_is_reverted_and_said_so() {
    let plan = three_way(&rules(), &[("/displayName", json!("Annie!"))], &[]);
    let f = &plan.changes[0].fields;
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].new, Some(Value::One("anna Berg".into())));
    assert_eq!(f[0].why, Some(Why::RevertedPortalEdit));
}

#[test]
fn portal_owned_edit_survives_even_a_directory_change() {
    let rules = rules_with(&[("displayName", Owner::Portal)]);
    let plan = three_way(
        &rules,
        &[("/displayName", json!("Annie!"))],
        &[("displayname", "Anna B.")],
    );
    assert!(
        plan.changes.is_empty() && plan.conflicts.is_empty(),
        "{plan:?}"
    );
}

#[test]
fn portal_owned_attribute_is_written_at_creation() {
    let rules = rules_with(&[("displayName", Owner::Portal)]);
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let plan = plan_with_rules(&[anna], &[], &State::new(), &rules);
    let body = crate::apply::create_body(&plan.changes[0]);
    assert_eq!(body["displayName"], "anna Berg");
    assert!(!plan.changes[0]
        .baseline
        .contains_key(&AttrPath::parse("displayName").unwrap()));
}

#[test]
fn merge_directory_only_change_flows() {
    let rules = rules_with(&[("displayName", Owner::Merge)]);
    let plan = three_way(&rules, &[], &[("displayname", "Anna B.")]);
    let f = &plan.changes[0].fields;
    assert_eq!(
        (f.len(), f[0].new.clone(), f[0].why),
        (
            1,
            Some(Value::One("Anna B.".into())),
            Some(Why::DirectoryChange)
        )
    );
    assert_eq!(
        plan.changes[0]
            .baseline
            .get(&AttrPath::parse("displayName").unwrap())
            .unwrap(),
        Some(Value::One("Anna B.".into()))
    );
}

#[test]
fn merge_portal_only_change_stays() {
    let rules = rules_with(&[("displayName", Owner::Merge)]);
    let plan = three_way(&rules, &[("/displayName", json!("Annie!"))], &[]);
    assert!(
        plan.changes.is_empty() && plan.conflicts.is_empty(),
        "{plan:?}"
    );
}

#[test]
fn merge_both_changed_keeps_the_portal_value_and_reports_three_values() {
    let rules = rules_with(&[("displayName", Owner::Merge)]);
    let plan = three_way(
        &rules,
        &[("/displayName", json!("Annie!"))],
        &[("displayname", "Anna B.")],
    );
    assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    assert_eq!(
        plan.conflicts,
        vec![Conflict {
            anchor: "uuid-anna".into(),
            user_name: "anna@example.se".into(),
            path: AttrPath::parse("displayName").unwrap(),
            last_synced: Some(Value::One("anna Berg".into())),
            directory: Some(Value::One("Anna B.".into())),
            portal: Some(Value::One("Annie!".into())),
        }]
    );
    // The baseline stays, so the conflict is reported until one side gives way.
    assert_eq!(
        plan.in_sync[0]
            .baseline
            .get(&AttrPath::parse("displayName").unwrap())
            .unwrap(),
        Some(Value::One("anna Berg".into()))
    );
}

#[test]
fn merge_conflict_resolved_by_the_user_stops_being_reported() {
    let rules = rules_with(&[("displayName", Owner::Merge)]);
    let plan = three_way(
        &rules,
        &[("/displayName", json!("Anna B."))],
        &[("displayname", "Anna B.")],
    );
    assert!(
        plan.changes.is_empty() && plan.conflicts.is_empty(),
        "{plan:?}"
    );
    assert_eq!(
        plan.in_sync[0]
            .baseline
            .get(&AttrPath::parse("displayName").unwrap())
            .unwrap(),
        Some(Value::One("Anna B.".into()))
    );
}

#[test]
fn merge_without_a_baseline_lets_the_directory_value_flow() {
    let rules = rules_with(&[("displayName", Owner::Merge)]);
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let mut p = portal_user_for(&anna, "p1");
    edit(&mut p, "displayName", "Annie!");
    let state: State = [("uuid-anna".to_string(), Baseline::new())].into();
    let plan = plan_with_rules(&[anna], &[p], &state, &rules);
    assert_eq!(plan.changes[0].fields[0].why, Some(Why::Initial));
}

#[test]
fn replan_after_412_honours_an_edit_made_in_between() {
    let rules = rules_with(&[("displayName", Owner::Merge)]);
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let state = managed(&[&anna]);
    let p = portal_user_for(&anna, "p1");
    let mut now = anna.clone();
    now.attrs.insert("sn".into(), vec!["Lind".into()]);
    now.attrs
        .insert("displayname".into(), vec!["Anna Lind".into()]);
    let plan = plan_with_rules(&[now], std::slice::from_ref(&p), &state, &rules);
    assert_eq!(plan.changes[0].fields.len(), 2);
    // Meanwhile the user renames herself in the portal (merge attribute).
    let mut fresh = p.clone();
    edit(&mut fresh, "displayName", "Annie");
    fresh.version = Some("W/\"9\"".into());
    let again = replan(&plan.changes[0], &fresh, &rules, &portal_schema()).unwrap();
    assert_eq!(again.version.as_deref(), Some("W/\"9\""));
    assert_eq!(again.fields.len(), 1, "{:?}", again.fields);
    assert_eq!(
        again.fields[0].path,
        AttrPath::parse("name.familyName").unwrap()
    );
}

#[test]
fn replan_with_nothing_left_is_none() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let p = portal_user_for(&anna, "p1");
    let mut now = anna.clone();
    now.attrs.insert("sn".into(), vec!["Lind".into()]);
    let plan = plan_with(&[now], std::slice::from_ref(&p), &managed(&[&anna]));
    let mut fresh = p;
    edit(&mut fresh, "name.familyName", "Lind");
    assert!(replan(&plan.changes[0], &fresh, &rules(), &portal_schema()).is_none());
}

// --- access: roles, services, guard rail, portal groups ---

mod access_rules {
    use super::*;
    use crate::access::{
        role_path, service_path, GroupRef, PortalGroupRule, RoleRule, ServiceRule,
    };
    use crate::portal::PortalGroup;
    use crate::source::DirectoryGroup;

    fn group(name: &str, members: &[&DirectoryUser]) -> DirectoryGroup {
        DirectoryGroup {
            dn: format!("cn={name},ou=groups,dc=x"),
            anchor: format!("g-{name}"),
            name: name.into(),
            members: members.iter().map(|u| u.dn.clone()).collect(),
            selected: false,
            sid: None,
        }
    }

    fn access() -> AccessRules {
        AccessRules {
            roles: Some((
                vec![RoleRule {
                    group: GroupRef("Fax-Admins".into()),
                    role: "account_manager".into(),
                }],
                "regular".into(),
            )),
            services: vec![ServiceRule {
                group: GroupRef("Fax-Users".into()),
                service: "fax".into(),
            }],
            keep_one_of: vec!["administrator".into(), "account_manager".into()],
            ..Default::default()
        }
    }

    struct World {
        users: Vec<DirectoryUser>,
        groups: Vec<DirectoryGroup>,
        portal: Vec<PortalUser>,
        /// The portal users' resources, as created.
        resources: Vec<serde_json::Value>,
        portal_groups: Vec<PortalGroup>,
        known_groups: HashMap<String, KnownGroup>,
        access: AccessRules,
    }

    impl World {
        fn plan(&self) -> Plan {
            self.plan_on(std::thread::available_parallelism().map_or(1, |n| n.get()))
        }

        /// [`World::plan`] on up to `threads` threads.
        fn plan_on(&self, threads: usize) -> Plan {
            let rules = effective_rules(&rules(), &self.access);
            let state: State = self
                .portal
                .iter()
                .filter_map(|p| p.external_id.clone())
                .map(|a| (a.to_ascii_lowercase(), Baseline::new()))
                .collect();
            let schema = portal_schema();
            compute_on(
                &Input {
                    directory: &self.users,
                    bad_entries: &[],
                    portal: &self.portal,
                    state: &state,
                    rules: &rules,
                    schema: &schema,
                    groups: &self.groups,
                    access: &self.access,
                    portal_groups: &self.portal_groups,
                    known_groups: &self.known_groups,
                    now: Timestamp::from_unix(1_800_000_000),
                    deleted: &HashSet::new(),
                    links: &Links::default(),
                    scope: &PlanScope::Full,
                },
                threads,
            )
        }

        /// Portal users as a first cycle would have created them.
        fn synced(
            users: Vec<DirectoryUser>,
            groups: Vec<DirectoryGroup>,
            access: AccessRules,
        ) -> World {
            let mut w = World {
                users,
                groups,
                portal: Vec::new(),
                resources: Vec::new(),
                portal_groups: Vec::new(),
                known_groups: HashMap::new(),
                access,
            };
            let plan = w.plan();
            w.resources = plan
                .changes
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut body = crate::apply::create_body(c);
                    body["id"] = json!(format!("p{i}"));
                    body
                })
                .collect();
            w.portal = w.resources.iter().cloned().map(portal).collect();
            w
        }
    }

    #[test]
    fn role_and_service_follow_groups_and_say_which_group() {
        let anna = dir_user("anna", Some("anna@example.se"), "Berg");
        let bo = dir_user("bo", Some("bo@example.se"), "Ek");
        let mut w = World::synced(
            vec![anna.clone(), bo.clone()],
            vec![group("Fax-Admins", &[&anna]), group("Fax-Users", &[&anna])],
            access(),
        );
        let anna_p = w
            .portal
            .iter()
            .find(|p| p.user_name == "anna@example.se")
            .unwrap();
        assert_eq!(
            anna_p.get(&role_path()),
            Some(Value::Many(vec!["account_manager".into()].into()))
        );
        assert_eq!(
            anna_p.get(&service_path("fax")),
            Some(Value::One("fax".into()))
        );
        assert!(w.plan().changes.is_empty());

        // bo joins the admins and the fax group; anna leaves the fax group.
        w.groups = vec![
            group("Fax-Admins", &[&anna, &bo]),
            group("Fax-Users", &[&bo]),
        ];
        let plan = w.plan();
        let bo_c = plan
            .changes
            .iter()
            .find(|c| c.user_name == "bo@example.se")
            .unwrap();
        let role_f = bo_c.fields.iter().find(|f| f.path == role_path()).unwrap();
        assert_eq!(
            role_f.new,
            Some(Value::Many(vec!["account_manager".into()].into()))
        );
        assert_eq!(role_f.detail.as_deref(), Some("via group Fax-Admins"));
        let ops = crate::apply::patch_operations(bo_c);
        assert!(
            ops.contains(
                &json!({"op": "add", "path": "entitlements", "value": [{"value": "fax"}]})
            ),
            "{ops:?}"
        );
        let anna_c = plan
            .changes
            .iter()
            .find(|c| c.user_name == "anna@example.se")
            .unwrap();
        assert_eq!(
            crate::apply::patch_operations(anna_c),
            vec![json!({"op": "remove", "path": "entitlements[value eq \"fax\"]"})]
        );
    }

    #[test]
    fn services_the_config_does_not_name_are_left_alone() {
        let anna = dir_user("anna", Some("anna@example.se"), "Berg");
        let mut w = World::synced(
            vec![anna.clone()],
            vec![group("Fax-Admins", &[]), group("Fax-Users", &[])],
            access(),
        );
        let mut resource = w.resources[0].clone();
        resource["entitlements"] = json!([{"value": "sms"}]);
        w.portal[0] = portal(resource);
        assert!(
            w.plan().changes.is_empty(),
            "sms is not dirsync's to revoke"
        );
    }

    #[test]
    fn the_last_account_manager_is_kept_and_the_report_says_why() {
        let anna = dir_user("anna", Some("anna@example.se"), "Berg");
        let bo = dir_user("bo", Some("bo@example.se"), "Ek");
        let mut w = World::synced(
            vec![anna.clone(), bo.clone()],
            vec![group("Fax-Admins", &[&anna]), group("Fax-Users", &[])],
            access(),
        );
        w.groups = vec![group("Fax-Admins", &[]), group("Fax-Users", &[])];
        let plan = w.plan();
        assert!(
            plan.changes.is_empty(),
            "the demotion is held back: {:?}",
            plan.changes
        );
        assert!(
            plan.notes
                .iter()
                .any(|n| n.starts_with("anna@example.se: keeps role")
                    && n.contains("last active administrator or account_manager")),
            "{:?}",
            plan.notes
        );
        // With another account manager appointed, the demotion goes through.
        w.groups = vec![group("Fax-Admins", &[&bo]), group("Fax-Users", &[])];
        let plan = w.plan();
        assert_eq!(plan.changes.len(), 2, "{:?}", plan.changes);
        // Closing the last one is held back too.
        w.groups = vec![group("Fax-Admins", &[&anna]), group("Fax-Users", &[])];
        w.users = vec![bo.clone()];
        let plan = w.plan();
        assert!(
            plan.changes.iter().all(|c| c.action != Action::Close),
            "{:?}",
            plan.changes
        );
        assert!(
            plan.notes.iter().any(|n| n.contains("not closed")),
            "{:?}",
            plan.notes
        );
    }

    fn mirrored(names: &[&str]) -> AccessRules {
        AccessRules {
            portal_groups: Some(PortalGroupRule {
                groups: names.iter().map(|n| GroupRef(n.to_string())).collect(),
                by_filter: false,
                flatten: true,
            }),
            ..Default::default()
        }
    }

    /// The groups are read and planned beside the users on a second thread: what each
    /// part finds (notes, skips, changes) comes out the same, in the same order, as on one.
    #[test]
    fn one_thread_and_two_give_the_same_plan_and_notes_in_order() {
        let mut users: Vec<DirectoryUser> = (0..6)
            .map(|i| dir_user(&format!("u{i}"), Some(&format!("u{i}@example.se")), "X"))
            .collect();
        users.push(dir_user("nomail", None, "Y"));
        let refs: Vec<&DirectoryUser> = users.iter().take(4).collect();
        let mut a = group("Loop-A", &refs[..2]);
        let mut b = group("Loop-B", &refs[2..]);
        a.members.push(b.dn.clone());
        b.members.push(a.dn.clone());
        let mut access = mirrored(&["Loop-A", "Missing-Group"]);
        access.services = vec![ServiceRule {
            group: GroupRef("No-Such-Service-Group".into()),
            service: "fax".into(),
        }];
        let w = World::synced(users, vec![a, b], access);
        let one = w.plan_on(1);
        assert_eq!(w.plan_on(2), one);
        // Access rules, then the directory's groups, then its users, then the portal groups.
        let at = |needle: &str| {
            one.notes
                .iter()
                .position(|n| n.contains(needle))
                .unwrap_or_else(|| panic!("no note with {needle:?}: {:#?}", one.notes))
        };
        assert!(
            at("No-Such-Service-Group") < at("group cycle"),
            "{:#?}",
            one.notes
        );
        assert!(at("group cycle") < at("Missing-Group"), "{:#?}", one.notes);
        assert_eq!(one.skipped.len(), 1, "{:?}", one.skipped);
        assert!(one.skipped[0].dn.starts_with("uid=nomail,"));
        assert_eq!(one.group_changes.len(), 1, "{:?}", one.group_changes);
        assert_eq!(one.group_changes[0].add.len(), 4);
    }

    #[test]
    fn mirrored_group_is_created_then_changed_incrementally() {
        let users: Vec<DirectoryUser> = (0..5)
            .map(|i| dir_user(&format!("u{i}"), Some(&format!("u{i}@example.se")), "X"))
            .collect();
        let refs: Vec<&DirectoryUser> = users.iter().take(3).collect();
        let mut w = World::synced(
            users.clone(),
            vec![group("Share", &refs)],
            mirrored(&["Share"]),
        );
        let plan = w.plan();
        assert_eq!(plan.group_changes.len(), 1);
        let g = &plan.group_changes[0];
        assert_eq!((g.action, g.add.len()), (GroupAction::Create, 3));

        // The portal group as created; then u0 leaves, u4 joins, and the group is renamed.
        let id_of = |anchor: &str| {
            w.portal
                .iter()
                .find(|p| p.external_id.as_deref() == Some(anchor))
                .unwrap()
                .id
                .clone()
        };
        w.portal_groups = vec![PortalGroup {
            id: "g1".into(),
            display_name: "Share".into(),
            external_id: Some("g-Share".into()),
            members: ["uuid-u0", "uuid-u1", "uuid-u2"]
                .iter()
                .map(|a| id_of(a))
                .collect(),
        }];
        // ... and recorded in the state (otherwise it would be linked first).
        w.known_groups = HashMap::from([(
            "g-share".into(),
            KnownGroup {
                portal_id: "g1".into(),
                created: true,
            },
        )]);
        assert!(w.plan().group_changes.is_empty(), "in step");
        let mut renamed = group("Share-2", &[&users[1], &users[2], &users[4]]);
        renamed.anchor = "g-Share".into();
        w.groups = vec![renamed];
        w.access = mirrored(&["Share-2"]);
        let plan = w.plan();
        let g = &plan.group_changes[0];
        assert_eq!(g.action, GroupAction::Update);
        assert_eq!(g.rename, Some(("Share".into(), "Share-2".into())));
        assert_eq!(
            g.add
                .iter()
                .map(|m| m.user_name.as_str())
                .collect::<Vec<_>>(),
            ["u4@example.se"]
        );
        assert_eq!(
            g.remove
                .iter()
                .map(|m| m.portal_id.clone().unwrap())
                .collect::<Vec<_>>(),
            [id_of("uuid-u0")]
        );
    }

    #[test]
    fn groups_leaving_scope_are_deleted_only_if_dirsync_made_them_and_hand_made_ones_are_untouched()
    {
        let anna = dir_user("anna", Some("anna@example.se"), "Berg");
        let mut w = World::synced(
            vec![anna.clone()],
            vec![group("Share", &[&anna])],
            mirrored(&["Share"]),
        );
        w.portal_groups = vec![
            PortalGroup {
                id: "g1".into(),
                display_name: "Old".into(),
                external_id: Some("g-Old".into()),
                members: vec![],
            },
            PortalGroup {
                id: "g2".into(),
                display_name: "Adopted".into(),
                external_id: Some("g-Adopted".into()),
                members: vec![],
            },
            PortalGroup {
                id: "g3".into(),
                display_name: "Share".into(),
                external_id: None,
                members: vec![],
            },
        ];
        w.known_groups = HashMap::from([
            (
                "g-old".into(),
                KnownGroup {
                    portal_id: "g1".into(),
                    created: true,
                },
            ),
            (
                "g-adopted".into(),
                KnownGroup {
                    portal_id: "g2".into(),
                    created: false,
                },
            ),
        ]);
        let plan = w.plan();
        let actions: Vec<(GroupAction, &str)> = plan
            .group_changes
            .iter()
            .map(|g| (g.action, g.name.as_str()))
            .collect();
        assert_eq!(
            actions,
            [(GroupAction::Delete, "Old")],
            "{:?}",
            plan.group_changes
        );
        assert!(
            plan.notes
                .iter()
                .any(|n| n.contains("\"Share\" exists but was not made by dirsync")),
            "{:?}",
            plan.notes
        );
        assert!(
            plan.notes
                .iter()
                .any(|n| n.contains("\"Adopted\" is no longer mirrored")),
            "{:?}",
            plan.notes
        );
        // A directory that returns no groups deletes nothing.
        w.groups.clear();
        let plan = w.plan();
        assert!(plan.group_changes.is_empty());
        assert!(plan.notes.iter().any(|n| n.contains("NOT deleted")));
    }
}

// --- safety guards ---

mod guards {
    use super::*;
    use crate::plan::guard::{apply_limits, Confirmed, Limits};

    fn limits(max: usize, pct: f64) -> Limits {
        Limits {
            max_closures: max,
            max_closure_percent: pct,
            max_access_removals: 2,
            privileged_roles: vec!["administrator".into()],
            dirsync: "dirsync".into(),
        }
    }

    /// 10 managed users; `leave` of them have left the directory; one other has a new name.
    fn leaving(leave: usize) -> Plan {
        let users: Vec<DirectoryUser> = (0..10)
            .map(|i| dir_user(&format!("u{i}"), Some(&format!("u{i}@example.se")), "X"))
            .collect();
        let portal: Vec<PortalUser> = users
            .iter()
            .enumerate()
            .map(|(i, u)| portal_user_for(u, &format!("p{i}")))
            .collect();
        let refs: Vec<&DirectoryUser> = users.iter().collect();
        let mut now: Vec<DirectoryUser> = users[leave..].to_vec();
        now[0].attrs.insert("sn".into(), vec!["Renamed".into()]);
        plan_with(&now, &portal, &managed(&refs))
    }

    #[test]
    fn too_many_closures_are_held_and_everything_else_goes_on() {
        let mut plan = leaving(6);
        let held = apply_limits(&mut plan, 10, &limits(50, 20.0), Confirmed::default());
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].count, 6);
        assert!(
            held[0].message.contains("--confirm-closures 6"),
            "{}",
            held[0].message
        );
        assert_eq!(plan.count(Action::Close), 0);
        assert_eq!(plan.count(Action::Update), 1, "the rename still applies");
    }

    #[test]
    fn the_exact_confirmed_number_releases_the_closures_and_no_other_number_does() {
        let mut plan = leaving(6);
        let held = apply_limits(
            &mut plan,
            10,
            &limits(50, 20.0),
            Confirmed {
                closures: Some(5),
                removals: None,
            },
        );
        assert!(
            held[0].message.contains("you confirmed 5, the plan has 6"),
            "{}",
            held[0].message
        );
        assert_eq!(plan.count(Action::Close), 0);
        let mut plan = leaving(6);
        let held = apply_limits(
            &mut plan,
            10,
            &limits(50, 20.0),
            Confirmed {
                closures: Some(6),
                removals: None,
            },
        );
        assert!(held.is_empty());
        assert_eq!(plan.count(Action::Close), 6);
    }

    #[test]
    fn closures_within_both_limits_pass() {
        let mut plan = leaving(2);
        assert!(apply_limits(&mut plan, 10, &limits(50, 20.0), Confirmed::default()).is_empty());
        assert_eq!(plan.count(Action::Close), 2);
        let mut plan = leaving(2);
        assert_eq!(
            apply_limits(&mut plan, 10, &limits(1, 100.0), Confirmed::default()).len(),
            1,
            "absolute limit"
        );
    }
}

mod removal_guard {
    use super::*;
    use crate::plan::guard::{access_removals, apply_limits, Confirmed, Limits};

    #[test]
    fn service_revocations_and_role_downgrades_have_their_own_limit() {
        let service = AttrPath::parse(r#"entitlements[value eq "fax"].value"#).unwrap();
        let role = crate::access::role_path();
        let change = |anchor: &str, fields: Vec<FieldChange>| Change {
            action: Action::Update,
            anchor: anchor.into(),
            user_name: format!("{anchor}@x.se"),
            dn: Some(format!("uid={anchor}")),
            portal_id: Some(anchor.into()),
            version: None,
            reason: None,
            fields,
            set_active: None,
            baseline: Baseline::new(),
            from: None,
        };
        let revoke = FieldChange {
            path: service.clone(),
            old: Some(Value::One("fax".into())),
            new: None,
            why: Some(Why::DirectoryChange),
            detail: None,
        };
        let demote = FieldChange {
            path: role.clone(),
            old: Some(Value::Many(vec!["administrator".into()].into())),
            new: Some(Value::Many(vec!["regular".into()].into())),
            why: Some(Why::DirectoryChange),
            detail: None,
        };
        let rename = FieldChange {
            path: AttrPath::parse("displayName").unwrap(),
            old: Some(Value::One("A".into())),
            new: Some(Value::One("B".into())),
            why: Some(Why::DirectoryChange),
            detail: None,
        };
        let mut plan = Plan {
            changes: vec![
                change("a", vec![revoke.clone(), rename.clone()]),
                change("b", vec![demote]),
                change("c", vec![revoke]),
            ],
            ..Default::default()
        };
        let limits = Limits {
            max_closures: 100,
            max_closure_percent: 100.0,
            max_access_removals: 2,
            privileged_roles: vec!["administrator".into()],
            dirsync: "dirsync".into(),
        };
        assert_eq!(access_removals(&plan, &limits), 3);
        let held = apply_limits(&mut plan, 3, &limits, Confirmed::default());
        assert_eq!(held.len(), 1);
        assert!(
            held[0].message.contains("--confirm-removals 3"),
            "{}",
            held[0].message
        );
        assert_eq!(
            plan.changes.len(),
            1,
            "only a's rename is left: {:?}",
            plan.changes
        );
        assert_eq!(plan.changes[0].fields, vec![rename]);
        assert_eq!(
            plan.changes[0].baseline.get(&service),
            Some(Some(Value::One("fax".into()))),
            "the held revocation stays owed"
        );
    }
}

#[test]
fn an_in_step_user_the_state_holds_as_it_is_needs_no_record() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let bo = dir_user("bo", Some("bo@example.se"), "Ek");
    let portal = vec![portal_user_for(&anna, "p1"), portal_user_for(&bo, "p2")];
    let mut state = managed(&[&anna, &bo]);
    // bo's last-synced family name is not what both sides hold now.
    state.get_mut("uuid-bo").unwrap().insert(
        AttrPath::parse("name.familyName").unwrap(),
        Some(Value::One("Old".into())),
    );
    let links = Links {
        portal_ids: [
            ("uuid-anna".to_string(), "p1".to_string()),
            ("uuid-bo".to_string(), "p2".to_string()),
        ]
        .into(),
        ..Links::default()
    };
    let schema = portal_schema();
    let plan = compute(&Input {
        directory: &[anna, bo],
        bad_entries: &[],
        portal: &portal,
        state: &state,
        rules: &rules(),
        schema: &schema,
        groups: &[],
        access: &AccessRules::default(),
        portal_groups: &[],
        known_groups: &HashMap::new(),
        now: Timestamp::from_unix(1_800_000_000),
        deleted: &HashSet::new(),
        links: &links,
        scope: &PlanScope::Full,
    });
    assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    let recorded: Vec<&str> = plan.in_sync.iter().map(|s| s.anchor.as_str()).collect();
    assert_eq!(recorded, ["uuid-bo"], "only bo's baseline needs writing");
    assert_eq!(
        plan.in_sync[0]
            .baseline
            .get(&AttrPath::parse("name.familyName").unwrap())
            .unwrap(),
        Some(Value::One("Ek".into()))
    );
}
