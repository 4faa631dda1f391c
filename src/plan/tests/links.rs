//! The state's links: no second portal user for a linked one, creates again only after a
//! deletion in the portal, orphans reported until taken over, unrecorded groups linked.

use super::*;
use crate::access::{GroupRef, PortalGroupRule};
use crate::portal::PortalGroup;
use crate::source::DirectoryGroup;

fn plan_linked(
    directory: &[DirectoryUser],
    portal: &[PortalUser],
    state: &State,
    links: &Links,
) -> Plan {
    let schema = portal_schema();
    compute(&Input {
        directory,
        bad_entries: &[],
        portal,
        state,
        rules: &rules(),
        schema: &schema,
        groups: &[],
        access: &AccessRules::default(),
        portal_groups: &[],
        known_groups: &HashMap::new(),
        links,
        scope: &PlanScope::Full,
        now: Timestamp::from_unix(1_800_000_000),
        deleted: &HashSet::new(),
    })
}

fn links(pairs: &[(&str, &str)], deleted: &[&str], adopt_orphans: bool) -> Links {
    Links {
        portal_ids: pairs
            .iter()
            .map(|(a, id)| (a.to_ascii_lowercase(), id.to_string()))
            .collect(),
        deleted_in_portal: deleted.iter().map(|d| d.to_string()).collect(),
        adopt_orphans,
    }
}

#[test]
fn a_user_linked_to_a_portal_user_that_lost_its_external_id_is_never_created_again() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    // In the portal someone changed both the login and the externalId of anna's user.
    let mut p = portal_user_for(&anna, "p1");
    p.user_name = "anna.old@example.se".into();
    p.external_id = Some("something-else".into());
    let plan = plan_linked(
        std::slice::from_ref(&anna),
        &[p],
        &managed(&[&anna]),
        &links(&[("uuid-anna", "p1")], &[], false),
    );
    assert_eq!(plan.count(Action::Create), 0, "{:?}", plan.changes);
    assert_eq!(plan.skipped.len(), 1);
    assert!(
        plan.skipped[0]
            .problem
            .contains("portal user anna.old@example.se (id p1)")
            && plan.skipped[0].problem.contains("not created again"),
        "{}",
        plan.skipped[0].problem
    );
}

#[test]
fn a_user_deleted_in_the_portal_is_created_again_and_the_reason_says_so() {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let bo = dir_user("bo", Some("bo@example.se"), "Ek");
    let bo_p = portal_user_for(&bo, "p2");
    let state = managed(&[&anna, &bo]);
    let linked = [("uuid-anna", "p1"), ("uuid-bo", "p2")];

    // Not listed and not known to be deleted: no create (the cycle checks this before
    // planning; the planner refuses on its own too).
    let plan = plan_linked(
        &[anna.clone(), bo.clone()],
        std::slice::from_ref(&bo_p),
        &state,
        &links(&linked, &[], false),
    );
    assert_eq!(plan.count(Action::Create), 0, "{:?}", plan.changes);
    assert!(
        plan.skipped[0]
            .problem
            .contains("neither listed nor reported deleted"),
        "{:?}",
        plan.skipped
    );

    // The portal answered 404 for p1: deleted there, created again.
    let plan = plan_linked(
        &[anna, bo],
        &[bo_p],
        &state,
        &links(&linked, &["p1"], false),
    );
    let creates: Vec<(&str, Option<&str>)> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Create)
        .map(|c| (c.user_name.as_str(), c.reason.as_deref()))
        .collect();
    assert_eq!(
        creates,
        [(
            "anna@example.se",
            Some("deleted in the portal; created again")
        )]
    );
}

#[test]
fn orphans_are_listed_and_left_alone_until_taken_over_then_closed_like_leavers() {
    let bo = dir_user("bo", Some("bo@example.se"), "Ek");
    let gone: Vec<DirectoryUser> = ["cia", "dan"]
        .iter()
        .map(|u| dir_user(u, Some(&format!("{u}@example.se")), "X"))
        .collect();
    let mut portal: Vec<PortalUser> = gone
        .iter()
        .enumerate()
        .map(|(i, u)| portal_user_for(u, &format!("o{i}")))
        .collect();
    let mut closed = portal_user_for(&dir_user("eva", Some("eva@example.se"), "X"), "o9");
    closed.active = false;
    portal.push(closed);
    let mut hand_made = portal_user_for(&dir_user("fil", Some("fil@example.se"), "X"), "h1");
    hand_made.external_id = None;
    portal.push(hand_made);
    portal.push(portal_user_for(&bo, "p1"));
    // The state was lost: only bo has been linked again since.
    let state = managed(&[&bo]);

    let plan = plan_linked(
        std::slice::from_ref(&bo),
        &portal,
        &state,
        &links(&[("uuid-bo", "p1")], &[], false),
    );
    assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    let orphans: Vec<(&str, &str, &str, bool)> = plan
        .orphans
        .iter()
        .map(|o| {
            (
                o.user_name.as_str(),
                o.portal_id.as_str(),
                o.external_id.as_str(),
                o.adopted,
            )
        })
        .collect();
    assert_eq!(
        orphans,
        [
            ("cia@example.se", "o0", "uuid-cia", false),
            ("dan@example.se", "o1", "uuid-dan", false)
        ],
        "closed and hand-made users are no orphans"
    );

    let plan = plan_linked(
        std::slice::from_ref(&bo),
        &portal,
        &state,
        &links(&[("uuid-bo", "p1")], &[], true),
    );
    assert!(plan.orphans.iter().all(|o| o.adopted));
    let closes: Vec<(&str, Option<&str>)> = plan
        .changes
        .iter()
        .map(|c| {
            assert_eq!(c.action, Action::Close);
            (c.user_name.as_str(), c.reason.as_deref())
        })
        .collect();
    assert_eq!(
        closes,
        [
            ("cia@example.se", Some("no longer in the directory scope")),
            ("dan@example.se", Some("no longer in the directory scope"))
        ]
    );
}

#[test]
fn a_portal_group_with_the_directory_groups_anchor_that_the_state_lacks_is_linked_as_made_by_dirsync(
) {
    let anna = dir_user("anna", Some("anna@example.se"), "Berg");
    let p = portal_user_for(&anna, "p1");
    let share = DirectoryGroup {
        dn: "cn=Share,ou=groups,dc=x".into(),
        anchor: "g-Share".into(),
        name: "Share".into(),
        members: vec![anna.dn.clone()],
        selected: false,
        sid: None,
    };
    let access = AccessRules {
        portal_groups: Some(PortalGroupRule {
            groups: vec![GroupRef("Share".into())],
            by_filter: false,
            flatten: true,
        }),
        ..Default::default()
    };
    // Made by a run that was killed before it recorded it: right members, not in the state.
    let made = PortalGroup {
        id: "g1".into(),
        display_name: "Share".into(),
        external_id: Some("G-SHARE".into()),
        members: vec!["p1".into()],
    };
    let schema = portal_schema();
    let plan_with_known = |known: &HashMap<String, KnownGroup>| {
        compute(&Input {
            directory: std::slice::from_ref(&anna),
            bad_entries: &[],
            portal: std::slice::from_ref(&p),
            state: &managed(&[&anna]),
            rules: &rules(),
            schema: &schema,
            groups: std::slice::from_ref(&share),
            access: &access,
            portal_groups: std::slice::from_ref(&made),
            known_groups: known,
            links: &Links::default(),
            scope: &PlanScope::Full,
            now: Timestamp::from_unix(1_800_000_000),
            deleted: &HashSet::new(),
        })
    };
    let plan = plan_with_known(&HashMap::new());
    assert_eq!(plan.group_changes.len(), 1, "{:?}", plan.group_changes);
    let g = &plan.group_changes[0];
    assert_eq!(
        (g.action, g.portal_id.as_deref(), g.take_over),
        (GroupAction::Update, Some("g1"), true)
    );
    assert!(g.add.is_empty() && g.remove.is_empty() && g.rename.is_none());
    assert!(g
        .reason
        .as_deref()
        .unwrap()
        .contains("linked as a group dirsync made"));

    // Once recorded, nothing more to do.
    let known = HashMap::from([(
        "g-share".to_string(),
        KnownGroup {
            portal_id: "g1".into(),
            created: true,
        },
    )]);
    assert!(plan_with_known(&known).group_changes.is_empty());
}
