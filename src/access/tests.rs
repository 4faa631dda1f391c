use super::*;

fn group(name: &str, members: &[&str]) -> DirectoryGroup {
    DirectoryGroup {
        dn: format!("cn={name},ou=groups,dc=x"),
        anchor: format!("g-{name}"),
        name: name.to_string(),
        members: members.iter().map(|m| m.to_string()).collect(),
        selected: false,
        sid: None,
    }
}

fn gdn(name: &str) -> String {
    format!("cn={name},ou=groups,dc=x")
}

fn user(uid: &str, dn: &str) -> DirectoryUser {
    DirectoryUser {
        dn: dn.to_string(),
        anchor: uid.to_string(),
        attrs: [("department", vec!["Finance"])].into(),
        disabled: false,
        expires: None,
    }
}

#[test]
fn membership_is_transitive_three_levels_deep() {
    let anna = "uid=anna,ou=people,dc=x";
    let groups = vec![
        group("Top", &[&gdn("Mid")]),
        group("Mid", &[&gdn("Low")]),
        group("Low", &[anna]),
        group("Other", &["uid=bo,ou=people,dc=x"]),
    ];
    let m = Membership::new(&groups);
    let of = m.groups_of(anna);
    assert_eq!(
        of,
        ["Low", "Mid", "Top"]
            .iter()
            .map(|g| gdn(g).to_ascii_lowercase())
            .collect()
    );
    assert_eq!(
        m.members_of(&groups[0], true),
        BTreeSet::from([anna.to_string()])
    );
    assert!(
        m.members_of(&groups[0], false).is_empty(),
        "without flattening, Top has only a group"
    );
}

#[test]
fn group_cycles_are_found_and_do_not_hang() {
    let anna = "uid=anna,ou=people,dc=x";
    let groups = vec![
        group("A", &[&gdn("B"), anna]),
        group("B", &[&gdn("A")]),
        group("C", &[&gdn("C")]),
    ];
    let m = Membership::new(&groups);
    assert_eq!(m.groups_of(anna).len(), 2);
    assert_eq!(
        m.members_of(&groups[1], true),
        BTreeSet::from([anna.to_string()])
    );
    let cycles = m.cycles();
    assert!(cycles.contains(&"A ⊃ B ⊃ A".to_string()), "{cycles:?}");
    assert!(cycles.contains(&"C ⊃ C".to_string()), "{cycles:?}");
}

#[test]
fn first_matching_role_rule_wins_with_a_default() {
    let anna = user("anna", "uid=anna,ou=people,dc=x");
    let bo = user("bo", "uid=bo,ou=people,dc=x");
    let cy = user("cy", "uid=cy,ou=people,dc=x");
    let groups = vec![
        group("Admins", &[&anna.dn]),
        group("Managers", &[&gdn("Team")]),
        group("Team", &[&anna.dn, &bo.dn]),
        group("Fax", &[&gdn("Team")]),
    ];
    let rules = AccessRules {
        roles: Some((
            vec![
                RoleRule {
                    group: GroupRef("Admins".into()),
                    role: "administrator".into(),
                },
                RoleRule {
                    group: GroupRef(gdn("Managers")),
                    role: "account_manager".into(),
                },
            ],
            "regular".into(),
        )),
        services: vec![ServiceRule {
            group: GroupRef("fax".into()),
            service: "fax".into(),
        }],
        ..Default::default()
    };
    let m = Membership::new(&groups);
    let r = resolve(&rules, &m);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let role = |u: &DirectoryUser| derive(&rules, &m, &r, u).0.get(&role_path()).cloned();
    assert_eq!(
        role(&anna),
        Some(Value::Many(vec!["administrator".into()].into()))
    );
    assert_eq!(
        role(&bo),
        Some(Value::Many(vec!["account_manager".into()].into()))
    );
    assert_eq!(role(&cy), Some(Value::Many(vec!["regular".into()].into())));
    let (bo_attrs, why) = derive(&rules, &m, &r, &bo);
    assert_eq!(
        bo_attrs.get(&service_path("fax")),
        Some(&Value::One("fax".into()))
    );
    assert_eq!(
        why[&role_path()],
        "via group Team → Managers",
        "the path from bo's own group up to the rule's"
    );
    assert!(!derive(&rules, &m, &r, &cy)
        .0
        .contains_key(&service_path("fax")));
}

#[test]
fn unknown_and_ambiguous_groups_are_problems_not_matches() {
    let groups = vec![
        group("Dup", &[]),
        DirectoryGroup {
            dn: "cn=Dup,ou=other,dc=x".into(),
            ..group("Dup", &[])
        },
    ];
    let rules = AccessRules {
        roles: Some((
            vec![
                RoleRule {
                    group: GroupRef("Dup".into()),
                    role: "administrator".into(),
                },
                RoleRule {
                    group: GroupRef("Missing".into()),
                    role: "account_manager".into(),
                },
            ],
            "regular".into(),
        )),
        ..Default::default()
    };
    let m = Membership::new(&groups);
    let r = resolve(&rules, &m);
    assert_eq!(r.roles, vec![None, None]);
    assert!(
        r.problems[0].contains("2 directory groups are named \"Dup\""),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems[1].contains("no directory group named \"Missing\""),
        "{:?}",
        r.problems
    );
}

#[test]
fn sub_unit_from_the_ou_path_or_an_attribute() {
    assert_eq!(
        ou_path(
            "uid=a,OU=Sales,OU=Stockholm,ou=people,dc=example,dc=com",
            "ou=people,dc=example,dc=com"
        )
        .as_deref(),
        Some("Stockholm/Sales")
    );
    assert_eq!(
        ou_path(
            "uid=a,ou=people,dc=example,dc=com",
            "ou=people,dc=example,dc=com"
        ),
        None
    );
    assert_eq!(
        ou_path("uid=a,ou=x,dc=other", "ou=people,dc=example,dc=com"),
        None
    );
    assert_eq!(
        ou_path("uid=a,ou=R\\, D,ou=people,dc=x", "ou=people,dc=x").as_deref(),
        Some("R, D")
    );
    // As slapd returns them: hex escapes, shown unescaped; the base spelt differently.
    assert_eq!(
        ou_path(
            r"uid=a,ou=\C3\85sg\C3\A5rd \C3\98st\2C Plus\2B,ou=R&D\2C Lab,ou=people,dc=x",
            "OU=People, DC=X"
        )
        .as_deref(),
        Some("R&D, Lab/Åsgård Øst, Plus+")
    );
    assert_eq!(ou_path("not a dn", "ou=people,dc=x"), None);
    let to = AttrPath::parse("urn:ietf:params:scim:schemas:extension:faxportal:2.0:User:subUnit")
        .unwrap();
    let rules = AccessRules {
        sub_unit: Some(SubUnitRule {
            from: SubUnitSource::Attribute("department".into()),
            to: to.clone(),
        }),
        ..Default::default()
    };
    let m = Membership::new(&[]);
    let r = resolve(&rules, &m);
    let (attrs, _) = derive(&rules, &m, &r, &user("a", "uid=a,ou=people,dc=x"));
    assert_eq!(attrs[&to], Value::One("Finance".into()));
}

#[test]
fn membership_matches_dns_whatever_their_escaping() {
    // The entry DNs as slapd returns them; the member values as another tool wrote them.
    let anna = r"uid=anna,ou=R&D\2C Lab,ou=people,dc=x";
    let eva = "uid=eva+cn=Eva,ou=\u{c5}sg\u{e5}rd,ou=people,dc=x";
    let mut inner = group("Night, Shift", &[r"UID=anna , OU=R&D\, Lab,ou=people,dc=x"]);
    inner.dn = r"cn=Night\2C Shift,ou=groups,dc=x".into();
    let outer = group(
        "Fax",
        &[
            r"CN=Night\, Shift, OU=groups, DC=x",
            r"CN=Eva+UID=eva,ou=\C3\85sg\C3\A5rd,ou=people,dc=x",
        ],
    );
    let groups = vec![inner, outer];
    let m = Membership::new(&groups);
    assert_eq!(
        m.groups_of(anna).len(),
        2,
        "anna is in both, through nesting"
    );
    assert_eq!(m.groups_of(eva).len(), 1);
    assert_eq!(
        m.members_of(&groups[1], true),
        BTreeSet::from([crate::dn::key(anna), crate::dn::key(eva)])
    );
    let by_dn = m
        .resolve(&GroupRef(r"cn=night\, shift,ou=Groups,dc=x".into()))
        .unwrap();
    assert_eq!(by_dn.name, "Night, Shift");
    assert!(m.cycles().is_empty());
}

#[test]
fn a_plain_member_dn_in_any_case_is_one_member_with_its_other_spellings() {
    // Plain DNs are kept as the groups list them (borrowed, any case); each must still
    // be the same member as the keyed spellings of its entry, nest a group named in
    // capitals, and come out of `members_of` as its key.
    let anna = "uid=anna,ou=people,dc=x";
    let groups = vec![
        group(
            "Plain",
            &["UID=Anna,OU=People,DC=x", "uid=bo,ou=people,dc=x"],
        ),
        group("Spaced", &["uid=ANNA, ou=people, dc=x"]),
        group("Escaped", &[r"uid=ann\61,ou=people,dc=x"]),
        group(
            "Outer",
            &["CN=Plain,OU=Groups,DC=X", "uid=Bo,ou=people,dc=x"],
        ),
    ];
    let m = Membership::new(&groups);
    assert_eq!(
        m.groups_of(anna),
        ["Plain", "Spaced", "Escaped", "Outer"]
            .iter()
            .map(|g| gdn(g).to_ascii_lowercase())
            .collect(),
        "one member, in every group that lists it in any spelling, and in Outer by nesting"
    );
    assert_eq!(
        m.members_of(&groups[3], true),
        BTreeSet::from([anna.to_string(), "uid=bo,ou=people,dc=x".to_string()]),
        "members come out as their keys, lowercased"
    );
    assert_eq!(
        m.members_of(&groups[0], false),
        BTreeSet::from([anna.to_string(), "uid=bo,ou=people,dc=x".to_string()])
    );
    assert_eq!(m.groups_of("uid=bo,ou=people,dc=x").len(), 2);
    assert!(m.groups_of("uid=anna,ou=other,dc=x").is_empty());
    assert!(m.cycles().is_empty());
}

#[test]
fn a_role_or_service_names_the_groups_from_the_users_own_up_to_the_rules() {
    let lea = user("lea", "uid=lea,ou=people,dc=x");
    let bo = user("bo", "uid=bo,ou=people,dc=x");
    // Portal-Admins ⊃ IT-Leads ⊃ lea, and a longer way round: Portal-Admins ⊃ Ops ⊃ Night
    // ⊃ lea. bo is in Portal-Admins itself; Fax-Users ⊃ Portal-Admins.
    let groups = vec![
        group("Portal-Admins", &[&gdn("Ops"), &gdn("IT-Leads"), &bo.dn]),
        group("Ops", &[&gdn("Night")]),
        group("Night", &[&lea.dn]),
        group("IT-Leads", &[&lea.dn]),
        group("Fax-Users", &[&gdn("Portal-Admins")]),
    ];
    let rules = AccessRules {
        roles: Some((
            vec![RoleRule {
                group: GroupRef("Portal-Admins".into()),
                role: "account_manager".into(),
            }],
            "regular".into(),
        )),
        services: vec![ServiceRule {
            group: GroupRef("Fax-Users".into()),
            service: "fax".into(),
        }],
        ..Default::default()
    };
    let m = Membership::new(&groups);
    let r = resolve(&rules, &m);
    let (_, why) = derive(&rules, &m, &r, &lea);
    assert_eq!(
        why[&role_path()],
        "via group IT-Leads → Portal-Admins",
        "the shortest of the two paths"
    );
    assert_eq!(
        why[&service_path("fax")],
        "granted via group IT-Leads → Portal-Admins → Fax-Users"
    );
    let (_, why) = derive(&rules, &m, &r, &bo);
    assert_eq!(why[&role_path()], "via group Portal-Admins");

    let via = m.members_via(&groups[4], true);
    assert_eq!(via[&crate::dn::key(&bo.dn)], "Portal-Admins → Fax-Users");
    assert_eq!(
        via[&crate::dn::key(&lea.dn)],
        "IT-Leads → Portal-Admins → Fax-Users"
    );
    assert_eq!(
        m.members_via(&groups[0], false).len(),
        1,
        "without flattening only bo"
    );
}
