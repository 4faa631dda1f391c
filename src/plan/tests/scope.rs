//! Partial plans (an incremental cycle's): only the users and groups read from the portal
//! are planned; nothing outside them is created, closed, counted as an orphan or deleted.

use super::*;
use crate::access::{GroupRef, RoleRule};

fn partial(users: &[&str]) -> PlanScope {
    PlanScope::Only {
        users: users.iter().map(|u| format!("uuid-{u}")).collect(),
        groups: HashSet::new(),
    }
}

fn plan_in(
    scope: &PlanScope,
    directory: &[DirectoryUser],
    portal: &[PortalUser],
    state: &State,
    groups: &[DirectoryGroup],
    access: &AccessRules,
) -> Plan {
    let schema = portal_schema();
    let rules = effective_rules(&rules(), access);
    compute(&Input {
        directory,
        bad_entries: &[],
        portal,
        state,
        rules: &rules,
        schema: &schema,
        groups,
        access,
        portal_groups: &[],
        known_groups: &HashMap::new(),
        now: Timestamp::from_unix(1_800_000_000),
        deleted: &HashSet::new(),
        links: &Links::default(),
        scope,
    })
}

#[test]
fn a_partial_plan_closes_creates_and_finds_orphans_only_among_the_users_it_covers() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let bo = dir_user("bo", Some("bo@example.se"), "Ek");
    let cid = dir_user("cid", Some("cid@example.se"), "Al");
    let dag = dir_user("dag", Some("dag@example.se"), "Ny");
    let state = managed(&[&anna, &bo, &cid, &dag]);
    // Cid and Dag left the directory; only Cid's portal user was read, and a stranger's
    // came with a lookup.
    let mut stranger = portal_user_for(&dir_user("eve", Some("eve@example.se"), "Ek"), "p9");
    stranger.external_id = Some("someone-else".into());
    let portal = vec![portal_user_for(&cid, "p3"), stranger];
    let directory = vec![anna, bo];

    let plan = plan_in(
        &partial(&["cid"]),
        &directory,
        &portal,
        &state,
        &[],
        &AccessRules::default(),
    );
    let changes: Vec<(Action, &str)> = plan
        .changes
        .iter()
        .map(|c| (c.action, c.user_name.as_str()))
        .collect();
    assert_eq!(changes, [(Action::Close, "cid@example.se")]);
    assert!(plan.orphans.is_empty(), "orphans need the whole portal");

    // The same portal users in a full plan: Anna and Bo look new, the stranger an orphan.
    let full = plan_in(
        &PlanScope::Full,
        &directory,
        &portal,
        &state,
        &[],
        &AccessRules::default(),
    );
    assert_eq!(full.count(Action::Create), 2);
    assert_eq!(full.orphans.len(), 1);
}

#[test]
fn a_partial_plan_counts_the_managed_administrators_it_did_not_read() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let bo = dir_user("bo", Some("bo@example.se"), "Ek");
    let admins = |members: &[&DirectoryUser]| DirectoryGroup {
        dn: "cn=Admins,ou=groups,dc=x".into(),
        anchor: "g-admins".into(),
        name: "Admins".into(),
        members: members.iter().map(|u| u.dn.clone()).collect(),
        selected: false,
        sid: None,
    };
    let access = AccessRules {
        roles: Some((
            vec![RoleRule {
                group: GroupRef("Admins".into()),
                role: "administrator".into(),
            }],
            "regular".into(),
        )),
        keep_one_of: vec!["administrator".into()],
        ..AccessRules::default()
    };
    // Both were administrators; Anna leaves the group. Only Anna is read.
    let before = plan_in(
        &PlanScope::Full,
        &[anna.clone(), bo.clone()],
        &[],
        &State::new(),
        &[admins(&[&anna, &bo])],
        &access,
    );
    let as_created = |u: &DirectoryUser, id: &str| {
        let c = before
            .changes
            .iter()
            .find(|c| c.anchor == u.anchor)
            .unwrap();
        let mut body = crate::apply::create_body(c);
        body["id"] = json!(id);
        portal(body)
    };
    let state: State = before
        .changes
        .iter()
        .map(|c| (c.anchor.to_ascii_lowercase(), c.baseline.clone()))
        .collect();
    let plan = plan_in(
        &partial(&["anna"]),
        &[anna.clone(), bo.clone()],
        &[as_created(&anna, "p1")],
        &state,
        &[admins(&[&bo])],
        &access,
    );
    assert_eq!(
        plan.count(Action::Update),
        1,
        "Bo, not read, is still an administrator: Anna may be demoted ({:?})",
        plan.notes
    );
}
