//! Checks that the harness itself works: the servers start, load their fixtures, and
//! behave the way dirsync's tests rely on.

use super::slapd::make_ca;
use super::{fixture, ldap_tool, openssl, output, ScimServer, Slapd};
use serde_json::json;
use std::process::{Command, Output};

const PEOPLE: &str = "ou=people,dc=example,dc=com";

/// ldapsearch bound as the dirsync service account, ignoring ldap.conf/.ldaprc.
fn search_as_bind_user(slapd: &Slapd, extra: &[&str]) -> Output {
    search_as(slapd, &slapd.bind_dn, extra)
}

fn search_as(slapd: &Slapd, bind_dn: &str, extra: &[&str]) -> Output {
    output(
        Command::new(ldap_tool("ldapsearch"))
            .env("LDAPNOINIT", "1")
            .args(["-x", "-LLL", "-o", "ldif-wrap=no", "-H", &slapd.url, "-D"])
            .arg(bind_dn)
            .arg("-w")
            .arg(&slapd.bind_password)
            .args(extra),
    )
}

fn count_dns(out: &Output) -> usize {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.starts_with("dn:"))
        .count()
}

#[test]
fn slapd_serves_the_demo_directory() {
    let slapd = Slapd::start(&fixture("demo.ldif"));
    assert!(slapd.url.starts_with("ldap://127.0.0.1:"), "{}", slapd.url);
    assert_eq!(slapd.ldaps_url, None);

    assert_eq!(
        slapd.search_count(PEOPLE, "(objectClass=inetOrgPerson)"),
        36
    );
    assert_eq!(
        slapd.search_count(
            "ou=Sales,ou=Stockholm,ou=people,dc=example,dc=com",
            "(uid=*)"
        ),
        12
    );
    assert_eq!(
        slapd.search_count("ou=Support,ou=Oslo,ou=people,dc=example,dc=com", "(uid=*)"),
        8
    );
    assert_eq!(
        slapd.search_count("ou=groups,dc=example,dc=com", "(objectClass=groupOfNames)"),
        6
    );
    assert_eq!(slapd.search_count(PEOPLE, "(employeeType=disabled)"), 2);
    assert_eq!(
        slapd.search_count(PEOPLE, "(mail=erik.johansson@example.com)"),
        2
    );
    assert_eq!(
        slapd.search_count(PEOPLE, "(&(objectClass=inetOrgPerson)(!(mail=*)))"),
        1
    );
    // base64-encoded UTF-8 in the LDIF comes back as the real name.
    assert_eq!(slapd.search_count(PEOPLE, "(cn=Øyvind Løken)"), 1);

    // The service account reads everything, userPassword included.
    let out = search_as_bind_user(
        &slapd,
        &[
            "-b",
            "uid=klindqvist,ou=people,dc=example,dc=com",
            "-s",
            "base",
            "*",
            "+",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("userPassword:"), "{text}");
    assert!(text.contains("entryUUID:"), "{text}");

    // Anonymous clients see nothing.
    let anonymous = output(
        Command::new(ldap_tool("ldapsearch"))
            .env("LDAPNOINIT", "1")
            .args([
                "-x", "-LLL", "-H", &slapd.url, "-b", PEOPLE, "(uid=*)", "1.1",
            ]),
    );
    assert_eq!(count_dns(&anonymous), 0);

    let uuid = slapd.entry_uuid("uid=olund,ou=Stockholm,ou=people,dc=example,dc=com");
    assert_eq!(uuid.len(), 36, "{uuid}");
    assert_eq!(uuid.matches('-').count(), 4, "{uuid}");
}

#[test]
fn slapd_add_modify_delete_and_stop() {
    let mut slapd = Slapd::start("");
    assert_eq!(slapd.search_count(PEOPLE, "(objectClass=inetOrgPerson)"), 0);

    let dn = "uid=tnew,ou=people,dc=example,dc=com";
    slapd.add(
        "dn: uid=tnew,ou=people,dc=example,dc=com\n\
         objectClass: inetOrgPerson\n\
         uid: tnew\n\
         cn: Tove New\n\
         sn: New\n\
         mail: tove.new@example.com\n",
    );
    let uuid = slapd.entry_uuid(dn);
    assert_eq!(slapd.search_count(PEOPLE, "(mail=tove.new@example.com)"), 1);

    slapd.modify(
        "dn: uid=tnew,ou=people,dc=example,dc=com\n\
         changetype: modify\n\
         replace: mail\n\
         mail: tove.nyberg@example.com\n\
         -\n\
         add: employeeType\n\
         employeeType: disabled\n",
    );
    assert_eq!(slapd.search_count(PEOPLE, "(mail=tove.new@example.com)"), 0);
    assert_eq!(
        slapd.search_count(
            PEOPLE,
            "(&(mail=tove.nyberg@example.com)(employeeType=disabled))"
        ),
        1
    );

    // entryUUID survives a rename and a move.
    slapd.modify(
        "dn: uid=tnew,ou=people,dc=example,dc=com\n\
         changetype: modrdn\n\
         newrdn: uid=tnyberg\n\
         deleteoldrdn: 1\n\
         newsuperior: ou=services,dc=example,dc=com\n",
    );
    let moved = "uid=tnyberg,ou=services,dc=example,dc=com";
    assert_eq!(slapd.entry_uuid(moved), uuid);

    slapd.delete(moved);
    assert_eq!(slapd.search_count(moved, "(objectClass=*)"), 0);
    assert_eq!(slapd.search_count(PEOPLE, "(uid=*)"), 0);

    let pid = slapd.pid().expect("running");
    slapd.stop();
    slapd.stop();
    assert_eq!(slapd.pid(), None);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "slapd {pid} survived stop"
    );
    let after = output(
        Command::new(ldap_tool("ldapsearch"))
            .env("LDAPNOINIT", "1")
            .args([
                "-x",
                "-o",
                "nettimeout=2",
                "-H",
                &slapd.url,
                "-b",
                "",
                "-s",
                "base",
            ]),
    );
    assert!(!after.status.success(), "slapd still answers after stop");
}

#[test]
fn slapd_drop_kills_the_server_and_removes_its_directory() {
    let slapd = Slapd::start("");
    let pid = slapd.pid().expect("running");
    let dir = slapd.dir().to_path_buf();
    assert!(dir.join("slapd.log").exists());
    drop(slapd);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "slapd {pid} survived drop"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn paged_search_as_bind_user_returns_more_than_the_size_limit() {
    let mut ldif = String::new();
    for i in 0..1200 {
        ldif.push_str(&format!(
            "dn: uid=bulk{i:04},ou=people,dc=example,dc=com\n\
             objectClass: inetOrgPerson\n\
             uid: bulk{i:04}\n\
             cn: Bulk User {i}\n\
             sn: User\n\
             mail: bulk{i:04}@example.com\n\n"
        ));
    }
    let slapd = Slapd::start(&ldif);
    assert_eq!(slapd.search_count(PEOPLE, "(uid=bulk*)"), 1200);

    // A plain search stops at slapd's default size limit (500): sizeLimitExceeded (4).
    let plain = search_as_bind_user(&slapd, &["-b", PEOPLE, "(uid=bulk*)", "1.1"]);
    assert_eq!(
        plain.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    assert_eq!(count_dns(&plain), 500);

    // Paged results get everything, whatever the page size.
    for page in ["pr=500/noprompt", "pr=100/noprompt", "pr=1000/noprompt"] {
        let paged = search_as_bind_user(&slapd, &["-E", page, "-b", PEOPLE, "(uid=bulk*)", "1.1"]);
        assert!(
            paged.status.success(),
            "{page}: {}",
            String::from_utf8_lossy(&paged.stderr)
        );
        assert_eq!(count_dns(&paged), 1200, "{page}");
    }

    // The limited account gets 5 entries, then sizeLimitExceeded, paged or not.
    for extra in [
        &["-E", "pr=3/noprompt"][..],
        &["-E", "pr=100/noprompt"][..],
        &[][..],
    ] {
        let mut args = extra.to_vec();
        args.extend(["-b", PEOPLE, "(uid=bulk*)", "1.1"]);
        let limited = search_as(&slapd, &slapd.limited_bind_dn, &args);
        assert_eq!(
            limited.status.code(),
            Some(4),
            "{extra:?}: {}",
            String::from_utf8_lossy(&limited.stderr)
        );
        assert!(
            count_dns(&limited) <= 5,
            "{extra:?}: {}",
            count_dns(&limited)
        );
    }
}

/// ldapsearch over TLS trusting only `ca_file`, with the system's ldap.conf in effect
/// otherwise (as a person would run it).
fn tls_search(url: &str, start_tls: bool, ca_file: &std::path::Path) -> Output {
    let mut cmd = Command::new(ldap_tool("ldapsearch"));
    cmd.env("LDAPTLS_CACERT", ca_file)
        .env("LDAPTLS_REQCERT", "demand")
        .args(["-x", "-LLL", "-o", "nettimeout=5", "-H", url]);
    if start_tls {
        cmd.arg("-ZZ");
    }
    // Anonymous: a successful empty search result proves the TLS handshake.
    cmd.args(["-b", "", "-s", "base", "(objectClass=*)", "1.1"]);
    output(&mut cmd)
}

#[test]
fn slapd_tls_verifies_with_its_ca_and_fails_with_another() {
    let slapd = Slapd::start_tls("");
    let ca = slapd.ca_file.clone().expect("ca_file with start_tls");
    let ldaps = slapd.ldaps_url.clone().expect("ldaps_url with start_tls");
    assert!(ldaps.starts_with("ldaps://127.0.0.1:"), "{ldaps}");

    let ok = tls_search(&slapd.url, true, &ca);
    assert!(
        ok.status.success(),
        "StartTLS: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ok = tls_search(&ldaps, false, &ca);
    assert!(
        ok.status.success(),
        "ldaps: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The server certificate names both 127.0.0.1 and localhost. (Not checked with
    // ldapsearch: libldap swaps "localhost" for the machine's hostname before comparing.)
    let cert = ca.with_file_name("server.crt");
    for check in [
        ["-verify_ip", "127.0.0.1"],
        ["-verify_hostname", "localhost"],
    ] {
        let verified = output(
            Command::new(openssl())
                .arg("verify")
                .arg("-CAfile")
                .arg(&ca)
                .args(check)
                .arg(&cert),
        );
        assert!(
            verified.status.success(),
            "{check:?}: {}{}",
            String::from_utf8_lossy(&verified.stdout),
            String::from_utf8_lossy(&verified.stderr)
        );
    }

    let other = tempfile::tempdir().expect("tempdir");
    let wrong_ca = make_ca(other.path(), "some other CA");
    let bad = tls_search(&slapd.url, true, &wrong_ca);
    assert!(
        !bad.status.success(),
        "StartTLS trusted a certificate from another CA"
    );
    let bad = tls_search(&ldaps, false, &wrong_ca);
    assert!(
        !bad.status.success(),
        "ldaps trusted a certificate from another CA"
    );

    // Plain LDAP still works on the same port.
    assert_eq!(
        slapd.search_count("ou=services,dc=example,dc=com", "(cn=dirsync)"),
        1
    );
}

#[test]
fn scim_server_creates_users_and_keeps_user_name_immutable() {
    let scim = ScimServer::start();
    assert!(scim.url.starts_with("http://127.0.0.1:"), "{}", scim.url);
    assert!(scim.token.starts_with("portal-token-"), "{}", scim.token);
    assert!(scim.users().is_empty());

    // The portal's schema is served.
    let (status, schemas) =
        scim.get("/Schemas/urn:ietf:params:scim:schemas:extension:faxportal:2.0:User");
    assert_eq!(status, 200, "{schemas}");

    let created = scim.create_user(json!({
        "schemas": [
            "urn:ietf:params:scim:schemas:core:2.0:User",
            "urn:ietf:params:scim:schemas:extension:faxportal:2.0:User"
        ],
        "userName": "karin.lindqvist@example.com",
        "externalId": "0b6f3c2e-5d1a-103f-8c4e-4b1f9a6d2e77",
        "displayName": "Karin Lindqvist",
        "active": true,
        "entitlements": [{ "value": "fax" }, { "value": "sms" }],
        "urn:ietf:params:scim:schemas:extension:faxportal:2.0:User": {
            "subUnit": "Stockholm/Sales",
            "faxNumbers": ["+46 8 555 019 03"]
        }
    }));
    let id = created["id"].as_str().expect("id").to_owned();

    let status = scim.patch_user(
        &id,
        json!([{ "op": "replace", "path": "userName", "value": "karin.l@example.com" }]),
    );
    assert_eq!(status, 400, "userName must be immutable");
    let status = scim.patch_user(
        &id,
        json!([{ "op": "replace", "path": "displayName", "value": "Karin L." },
               { "op": "replace", "path": "active", "value": false }]),
    );
    assert!(
        status == 200 || status == 204,
        "PATCH displayName/active: {status}"
    );

    let (status, user) = scim.get(&format!("/Users/{id}"));
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["userName"], "karin.lindqvist@example.com");
    assert_eq!(user["displayName"], "Karin L.");
    assert_eq!(user["active"], false);
    assert_eq!(
        user["urn:ietf:params:scim:schemas:extension:faxportal:2.0:User"]["subUnit"],
        "Stockholm/Sales"
    );

    let (status, missing) = scim.get("/Users/no-such-id");
    assert_eq!(status, 404, "{missing}");
}

#[test]
fn scim_server_lists_every_page_and_requires_its_token() {
    let scim = ScimServer::start();
    for i in 0..130 {
        scim.create_user(json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": format!("user{i:03}@example.com"),
        }));
    }
    let users = scim.users();
    assert_eq!(users.len(), 130);
    let mut names: Vec<&str> = users
        .iter()
        .filter_map(|u| u["userName"].as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 130, "pagination repeated or lost users");

    scim.create_group(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
        "displayName": "Fax-Users",
        "members": [{ "value": users[0]["id"] }],
    }));
    let groups = scim.groups();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["displayName"], "Fax-Users");

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let no_token = agent
        .get(&format!("{}/Users", scim.url))
        .call()
        .expect("GET");
    assert_eq!(no_token.status().as_u16(), 401);
    let wrong = agent
        .get(&format!("{}/Users", scim.url))
        .header("Authorization", "Bearer portal-token-wrong")
        .call()
        .expect("GET");
    assert_eq!(wrong.status().as_u16(), 401);
}
