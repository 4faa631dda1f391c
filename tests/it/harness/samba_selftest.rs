//! Checks that the Samba AD DC harness works: the DC starts and answers, entries are
//! created where asked, and it behaves the way dirsync's Active Directory tests rely on
//! (LDAPS with the throwaway CA, strong-auth refusal, paging, nested groups, GUIDs).

use super::samba::{
    base64_decode, base64_encode, escape_rdn_value, guid_to_string, sid_to_string, DC_HOST_NAME,
    DNS_DOMAIN, USER_PASSWORD,
};
use super::slapd::make_ca;
use super::{openssl, output, SambaDc};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::process::{Command, Output};

/// ldapsearch as Administrator against `url` (`-LLL`, no line wrapping) plus `extra`.
fn search(dc: &SambaDc, url: &str, extra: &[&str]) -> Output {
    let mut cmd = dc.admin_command("ldapsearch", url);
    cmd.args(["-LLL", "-o", "ldif-wrap=no"]).args(extra);
    output(&mut cmd)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "failed ({}):\n{}{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// The DNs an ldapsearch printed (`dn:` lines, `dn::` base64 decoded).
fn dns(out: &Output) -> Vec<String> {
    stdout(out)
        .lines()
        .filter_map(|line| {
            if let Some(b64) = line.strip_prefix("dn:: ") {
                Some(String::from_utf8(base64_decode(b64)).unwrap())
            } else {
                line.strip_prefix("dn: ").map(str::to_owned)
            }
        })
        .collect()
}

/// The text values of `attribute` on `dn`.
fn text_values(dc: &SambaDc, dn: &str, attribute: &str) -> Vec<String> {
    dc.attribute_values(dn, attribute)
        .into_iter()
        .map(|v| String::from_utf8(v).unwrap())
        .collect()
}

/// Binds as `dn` with `password` over LDAPS and reads the rootDSE.
fn bind_as(dc: &SambaDc, dn: &str, password: &str) -> Output {
    let mut cmd = dc.client_command("ldapsearch", &dc.ldaps_url);
    cmd.arg("-D")
        .arg(dn)
        .arg("-w")
        .arg(password)
        .args(["-LLL", "-b", "", "-s", "base", "1.1"]);
    output(&mut cmd)
}

#[test]
fn guid_bytes_become_the_standard_string_form() {
    let bytes = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ];
    assert_eq!(
        guid_to_string(&bytes),
        "33221100-5544-7766-8899-aabbccddeeff"
    );
}

#[test]
fn sid_base64_and_rdn_helpers() {
    let mut sid = vec![1, 5, 0, 0, 0, 0, 0, 5];
    for sub in [21u32, 1_111_111_111, 2_222_222_222, 3_333_333_333, 500] {
        sid.extend_from_slice(&sub.to_le_bytes());
    }
    assert_eq!(
        sid_to_string(&sid),
        "S-1-5-21-1111111111-2222222222-3333333333-500"
    );

    // RFC 4648's test vectors.
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64_encode(plain.as_bytes()), encoded);
        assert_eq!(base64_decode(encoded), plain.as_bytes());
    }

    assert_eq!(escape_rdn_value("Doe, Jane"), "Doe\\, Jane");
    assert_eq!(escape_rdn_value(" #a=b+c "), "\\ #a\\=b\\+c\\ ");
    assert_eq!(escape_rdn_value("#x"), "\\#x");
}

#[test]
fn samba_dc_starts_and_answers() {
    let dc = SambaDc::start();
    assert!(dc.ldap_url.starts_with("ldap://127.0."), "{}", dc.ldap_url);
    assert!(dc.ldap_url.ends_with(":389"), "{}", dc.ldap_url);
    assert_eq!(dc.ldaps_url, format!("ldaps://{}:636", dc.address()));
    assert_eq!(dc.base_dn, "DC=dirsync,DC=test");
    assert_eq!(dc.realm, "DIRSYNC.TEST");
    assert_eq!(dc.domain, "DIRSYNC");
    assert_eq!(dc.admin_dn, "CN=Administrator,CN=Users,DC=dirsync,DC=test");
    assert!(dc.ca_file.is_file());

    // A simple bind over plain LDAP is allowed by start().
    let root_dse = search(
        &dc,
        &dc.ldap_url,
        &[
            "-b",
            "",
            "-s",
            "base",
            "(objectClass=*)",
            "defaultNamingContext",
            "dnsHostName",
            "supportedControl",
        ],
    );
    assert_success(&root_dse);
    let text = stdout(&root_dse);
    assert!(
        text.contains("defaultNamingContext: DC=dirsync,DC=test"),
        "{text}"
    );
    assert!(
        text.contains(&format!("dnsHostName: {DC_HOST_NAME}")),
        "{text}"
    );
    // Paged results and DirSync are advertised.
    assert!(
        text.contains("supportedControl: 1.2.840.113556.1.4.319"),
        "{text}"
    );
    assert!(
        text.contains("supportedControl: 1.2.840.113556.1.4.841"),
        "{text}"
    );

    let sid = &dc.domain_sid;
    assert!(sid.starts_with("S-1-5-21-"), "{sid}");
    assert_eq!(sid.split('-').count(), 7, "{sid}");
    assert_eq!(dc.object_sid(&dc.admin_dn), format!("{sid}-500"));

    // The same over LDAPS.
    let over_tls = search(
        &dc,
        &dc.ldaps_url,
        &["-b", &dc.base_dn, "-s", "base", "1.1"],
    );
    assert_success(&over_tls);
    assert_eq!(dns(&over_tls), vec![dc.base_dn.clone()]);
}

#[test]
fn samba_users_under_two_ous_are_found() {
    let dc = SambaDc::start();
    let sales = dc.add_ou("Sales,Stockholm");
    assert_eq!(sales, "OU=Sales,OU=Stockholm,DC=dirsync,DC=test");
    // Existing OUs are left alone.
    assert_eq!(dc.add_ou("Stockholm"), "OU=Stockholm,DC=dirsync,DC=test");
    let support = dc.add_ou("Support,Oslo");
    assert_eq!(support, "OU=Support,OU=Oslo,DC=dirsync,DC=test");

    let anna = dc.add_user(
        &sales,
        "anna.berg",
        "Anna",
        "Berg",
        Some("anna.berg@example.com"),
    );
    assert_eq!(anna, format!("CN=Anna Berg,{sales}"));
    dc.add_user(&sales, "bo.ek", "Bo", "Ek", Some("bo.ek@example.com"));
    let asa = dc.add_user(&sales, "asa.oberg", "Åsa", "Öberg", None);
    dc.add_user(&support, "ola.nord", "Ola", "Nord", Some("ola@example.com"));
    dc.add_user(&support, "kari.sol", "Kari", "Sol", None);

    let people = "(&(objectCategory=person)(objectClass=user))";
    assert_eq!(dc.search_count(&sales, people), 3);
    assert_eq!(dc.search_count(&support, people), 2);
    assert_eq!(
        dc.search_count("OU=Stockholm,DC=dirsync,DC=test", people),
        3
    );
    assert_eq!(dc.search_count("OU=Oslo,DC=dirsync,DC=test", people), 2);
    assert_eq!(dc.search_count("OU=Nowhere,DC=dirsync,DC=test", people), 0);
    assert_eq!(dc.search_count(&dc.base_dn, "(mail=*@example.com)"), 3);
    // Enabled: the ACCOUNTDISABLE bit (2) is clear.
    let enabled = "(&(objectClass=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))";
    assert_eq!(dc.search_count(&sales, enabled), 3);

    assert_eq!(
        text_values(&dc, &anna, "userPrincipalName"),
        [format!("anna.berg@{DNS_DOMAIN}")]
    );
    assert_eq!(text_values(&dc, &anna, "displayName"), ["Anna Berg"]);
    assert_eq!(text_values(&dc, &anna, "mail"), ["anna.berg@example.com"]);
    assert_eq!(text_values(&dc, &anna, "userAccountControl"), ["512"]);
    assert_eq!(text_values(&dc, &asa, "givenName"), ["Åsa"]);
    assert_eq!(text_values(&dc, &asa, "displayName"), ["Åsa Öberg"]);
    assert!(text_values(&dc, &asa, "mail").is_empty());
    let found = search(
        &dc,
        &dc.ldaps_url,
        &["-b", &dc.base_dn, "(sAMAccountName=asa.oberg)", "1.1"],
    );
    assert_success(&found);
    assert_eq!(dns(&found), [asa.as_str()]);

    // The users have a working password.
    assert_success(&bind_as(&dc, &anna, USER_PASSWORD));
    assert_success(&bind_as(&dc, &asa, USER_PASSWORD));
    assert_eq!(
        bind_as(&dc, &anna, "wrong-password").status.code(),
        Some(49)
    );
}

#[test]
fn samba_object_guid_is_the_standard_string_form() {
    let dc = SambaDc::start();
    let ou = dc.add_ou("Guids");
    let user = dc.add_user(&ou, "guid.user", "Guid", "User", None);
    let guid = dc.object_guid(&user);
    assert_eq!(guid.len(), 36, "{guid}");
    for (i, c) in guid.chars().enumerate() {
        if [8, 13, 18, 23].contains(&i) {
            assert_eq!(c, '-', "{guid}");
        } else {
            assert!(matches!(c, '0'..='9' | 'a'..='f'), "{guid}");
        }
    }
    assert_ne!(dc.object_guid(&ou), guid);

    // Samba parses `<GUID=...>` in the standard string form: it finds the same entry, so
    // the byte order agrees with Samba's own.
    let by_guid = search(
        &dc,
        &dc.ldaps_url,
        &["-b", &format!("<GUID={guid}>"), "-s", "base", "1.1"],
    );
    assert_success(&by_guid);
    assert_eq!(dns(&by_guid), [user.as_str()]);

    // And the raw bytes, escaped in a filter, find it too.
    let raw = dc.attribute_values(&user, "objectGUID").remove(0);
    let mut filter = String::from("(objectGUID=");
    for b in &raw {
        let _ = write!(filter, "\\{b:02x}");
    }
    filter.push(')');
    let by_bytes = search(&dc, &dc.ldaps_url, &["-b", &dc.base_dn, &filter, "1.1"]);
    assert_success(&by_bytes);
    assert_eq!(dns(&by_bytes), [user]);
}

#[test]
fn samba_nested_groups_three_deep() {
    let dc = SambaDc::start();
    let people = dc.add_ou("People");
    let groups = dc.add_ou("Groups");
    let u1 = dc.add_user(&people, "u1", "User", "One", None);
    let u2 = dc.add_user(&people, "u2", "User", "Two", None);
    let inner = dc.add_group(&groups, "Inner", &[&u1]);
    let middle = dc.add_group(&groups, "Middle", &[&inner, &u2]);
    let outer = dc.add_group(&groups, "Outer", &[&middle]);
    assert_eq!(outer, format!("CN=Outer,{groups}"));

    assert_eq!(text_values(&dc, &outer, "member"), [middle.as_str()]);
    assert_eq!(text_values(&dc, &outer, "groupType"), ["-2147483646"]);
    assert_eq!(text_values(&dc, &outer, "sAMAccountName"), ["Outer"]);
    assert_eq!(text_values(&dc, &u1, "memberOf"), [inner.as_str()]);
    assert_eq!(
        dc.search_count(&groups, "(&(objectClass=group)(groupType=-2147483646))"),
        3
    );

    // LDAP_MATCHING_RULE_IN_CHAIN: everything transitively in Outer.
    let chain = search(
        &dc,
        &dc.ldaps_url,
        &[
            "-b",
            &dc.base_dn,
            &format!("(memberOf:1.2.840.113556.1.4.1941:={outer})"),
            "1.1",
        ],
    );
    assert_success(&chain);
    let mut found = dns(&chain);
    found.sort();
    let mut expected = vec![u1, u2, inner, middle];
    expected.sort();
    assert_eq!(found, expected);
}

#[test]
fn samba_user_account_control_514_disables_the_user() {
    let dc = SambaDc::start();
    let ou = dc.add_ou("Leavers");
    let user = dc.add_user(&ou, "leaver", "Lea", "Ver", Some("lea@example.com"));
    assert_success(&bind_as(&dc, &user, USER_PASSWORD));

    dc.ldif(&format!(
        "dn: {user}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n"
    ));
    assert_eq!(text_values(&dc, &user, "userAccountControl"), ["514"]);
    let disabled = "(&(objectClass=user)(userAccountControl:1.2.840.113556.1.4.803:=2))";
    assert_eq!(dc.search_count(&ou, disabled), 1);
    let refused = bind_as(&dc, &user, USER_PASSWORD);
    assert_eq!(refused.status.code(), Some(49), "{}", stderr(&refused));
}

#[test]
fn samba_ldaps_verifies_with_its_ca_and_fails_with_another() {
    let dc = SambaDc::start();
    let ok = search(&dc, &dc.ldaps_url, &["-b", "", "-s", "base", "1.1"]);
    assert_success(&ok);
    // StartTLS on the plain port, same certificate.
    let start_tls = search(&dc, &dc.ldap_url, &["-ZZ", "-b", "", "-s", "base", "1.1"]);
    assert_success(&start_tls);

    let other = tempfile::tempdir().unwrap();
    let other_ca = make_ca(other.path(), "some other CA");
    let mut cmd = dc.admin_command("ldapsearch", &dc.ldaps_url);
    cmd.env("LDAPTLS_CACERT", &other_ca)
        .args(["-LLL", "-b", "", "-s", "base", "1.1"]);
    let refused = output(&mut cmd);
    assert!(
        !refused.status.success(),
        "LDAPS verified with a foreign CA:\n{}",
        stdout(&refused)
    );

    // The certificate names the DC's DNS name and its address.
    let address = dc.address().to_string();
    for (flag, name) in [("-verify_hostname", DC_HOST_NAME), ("-verify_ip", &address)] {
        let s_client = output(
            Command::new(openssl())
                .args(["s_client", "-connect", &format!("{address}:636")])
                .arg("-CAfile")
                .arg(&dc.ca_file)
                .args([flag, name, "-verify_return_error"]),
        );
        assert!(
            s_client.status.success() && stdout(&s_client).contains("Verify return code: 0 (ok)"),
            "openssl s_client {flag} {name}:\n{}{}",
            stdout(&s_client),
            stderr(&s_client),
        );
    }
}

#[test]
fn samba_strict_refuses_simple_bind_over_plain_ldap() {
    let dc = SambaDc::start_strict();
    let refused = search(&dc, &dc.ldap_url, &["-b", "", "-s", "base", "1.1"]);
    assert_eq!(refused.status.code(), Some(8), "{}", stderr(&refused));
    let text = stderr(&refused);
    assert!(
        text.contains("Strong(er) authentication required (8)"),
        "{text}"
    );
    assert!(
        text.contains("BindSimple: Transport encryption required."),
        "{text}"
    );

    // LDAPS and StartTLS are fine.
    assert_success(&search(
        &dc,
        &dc.ldaps_url,
        &["-b", "", "-s", "base", "1.1"],
    ));
    assert_success(&search(
        &dc,
        &dc.ldap_url,
        &["-ZZ", "-b", "", "-s", "base", "1.1"],
    ));
    // And so are the harness's helpers.
    let ou = dc.add_ou("Strict");
    dc.add_user(&ou, "strict.user", "Strict", "User", None);
    assert_eq!(dc.search_count(&ou, "(objectClass=user)"), 1);
}

#[test]
fn samba_paged_search_and_no_max_page_size() {
    const USERS: usize = 1005;
    let dc = SambaDc::start();
    let ou = dc.add_ou("Bulk");
    // Without a password Samba creates them disabled (546), which is fine for counting and
    // much faster than with one.
    let mut ldif = String::new();
    for i in 0..USERS {
        let _ = write!(
            ldif,
            "dn: CN=bulk{i:04},{ou}\nchangetype: add\nobjectClass: user\n\
             sAMAccountName: bulk{i:04}\n\n"
        );
    }
    dc.ldif(&ldif);
    assert_eq!(dc.search_count(&ou, "(objectClass=user)"), USERS);

    let paged = search(
        &dc,
        &dc.ldaps_url,
        &[
            "-E",
            "pr=100/noprompt",
            "-b",
            &ou,
            "(objectClass=user)",
            "1.1",
        ],
    );
    assert_success(&paged);
    assert_eq!(dns(&paged).len(), USERS);
    let pages = stdout(&paged)
        .lines()
        .filter(|line| line.starts_with("# pagedresults:"))
        .count();
    assert_eq!(pages, USERS.div_ceil(100), "{}", stdout(&paged));

    // Unlike Windows (MaxPageSize 1000: 1000 entries, then sizeLimitExceeded), Samba returns
    // everything to a search without the paged results control.
    let unpaged = search(
        &dc,
        &dc.ldaps_url,
        &["-b", &ou, "(objectClass=user)", "1.1"],
    );
    assert_success(&unpaged);
    assert_eq!(dns(&unpaged).len(), USERS);
}

#[test]
fn samba_two_dcs_in_parallel_threads() {
    let handles: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                let dc = SambaDc::start();
                let ou = dc.add_ou(&format!("Thread{i}"));
                dc.add_user(&ou, &format!("thread{i}"), "Thread", &format!("N{i}"), None);
                dc
            })
        })
        .collect();
    let dcs: Vec<SambaDc> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_ne!(dcs[0].address(), dcs[1].address());
    for (i, dc) in dcs.iter().enumerate() {
        let other = 1 - i;
        assert_eq!(
            dc.search_count(&dc.base_dn, &format!("(sAMAccountName=thread{i})")),
            1
        );
        assert_eq!(
            dc.search_count(&dc.base_dn, &format!("(sAMAccountName=thread{other})")),
            0
        );
    }
}

#[test]
fn samba_stop_is_idempotent_and_frees_the_ports() {
    let mut dc = SambaDc::start();
    let address = dc.address();
    let dir = dc.dir().to_owned();
    assert!(dc.pid().is_some());
    dc.stop();
    dc.stop();
    assert!(dc.pid().is_none());
    TcpListener::bind((address, 389)).unwrap();
    TcpListener::bind((address, 636)).unwrap();
    drop(dc);
    assert!(!dir.exists(), "{} left behind", dir.display());
}
