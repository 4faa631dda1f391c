#!/usr/bin/env python3
"""Deterministic directory data for scripts/bench (same N, same bytes, every time).

    gen_ldif.py users N            the OUs and N users (LDIF for slapadd)
    gen_ldif.py groups N [G]       G groups (default 2000) under ou=groups (LDIF for slapadd)
    gen_ldif.py changes N C D      an ldapmodify file: C users get a new surname and
                                   display name, D other users are deleted

Users are uid=u000001 .. under ou=<department>,ou=<city>,ou=people (20 OUs, so the
example config's sub-unit rule has work to do); every 7th has two fax numbers.
Group k (1-based) has max(2, min(20000, N) // k) members: one large group, a few
departments, a long tail of small teams; 2 to 20,000 members in all, about
min(20000, N) * ln(G) memberships. Every 25th group also has the next two groups as
members (nested), and Fax-Users has Support-Oslo. Names: 1 Fax-Users, 2 SMS-Users,
3 Support-Oslo, G-1 Portal-Admins, G Fax-Admins (the example config's rule groups),
every 10th Share-NNNN (mirrored to the portal by the bench's portal_groups filter),
the rest Team-NNNN.
"""
import sys

SUFFIX = "dc=example,dc=com"
PEOPLE = "ou=people," + SUFFIX
GROUPS = "ou=groups," + SUFFIX
CITIES = ["Stockholm", "Oslo", "Helsinki", "Copenhagen", "Gothenburg"]
DEPTS = ["Sales", "Support", "Engineering", "Finance"]
GIVEN = ["Anna", "Erik", "Maja", "Lars", "Sara", "Johan", "Elin", "Karl", "Ida", "Nils",
         "Ola", "Kari", "Ingrid", "Per", "Liv", "Mikko", "Aino", "Jens", "Mette", "Sven"]
FAMILY = ["Andersson", "Berg", "Carlsson", "Dahl", "Ek", "Falk", "Holm", "Lund", "Nilsson",
          "Olsen", "Hansen", "Virtanen", "Jensen", "Strand", "Wik", "Lind", "Sandberg"]
LANGS = ["sv", "en", "nb", "fi", "da"]
MAX_GROUP = 20000


def uid(i):
    return "u%06d" % i


def user_dn(i):
    city = CITIES[i % len(CITIES)]
    dept = DEPTS[(i // len(CITIES)) % len(DEPTS)]
    return "uid=%s,ou=%s,ou=%s,%s" % (uid(i), dept, city, PEOPLE)


def group_name(k, count):
    fixed = {1: "Fax-Users", 2: "SMS-Users", 3: "Support-Oslo",
             count - 1: "Portal-Admins", count: "Fax-Admins"}
    if k in fixed:
        return fixed[k]
    return ("Share-%04d" if k % 10 == 0 else "Team-%04d") % k


def users(n, out):
    for city in CITIES:
        out.write("dn: ou=%s,%s\nobjectClass: organizationalUnit\nou: %s\n\n" % (city, PEOPLE, city))
        for dept in DEPTS:
            out.write("dn: ou=%s,ou=%s,%s\nobjectClass: organizationalUnit\nou: %s\n\n"
                      % (dept, city, PEOPLE, dept))
    for i in range(1, n + 1):
        g = GIVEN[i % len(GIVEN)]
        f = FAMILY[(i // len(GIVEN)) % len(FAMILY)]
        lines = [
            "dn: " + user_dn(i),
            "objectClass: inetOrgPerson",
            "uid: " + uid(i),
            "cn: %s %s" % (g, f),
            "givenName: " + g,
            "sn: " + f,
            "displayName: %s %s (%s)" % (g, f, uid(i)),
            "mail: %s.%s.%s@example.com" % (g.lower(), f.lower(), uid(i)),
            "telephoneNumber: +46 8 %03d %04d" % (100 + i // 10000, i % 10000),
            "preferredLanguage: " + LANGS[i % len(LANGS)],
        ]
        if i % 7 == 0:
            lines += ["facsimileTelephoneNumber: +46 8 %03d %04d" % (500 + i // 10000, i % 10000),
                      "facsimileTelephoneNumber: +46 8 %03d %04d" % (600 + i // 10000, i % 10000)]
        out.write("\n".join(lines) + "\n\n")


def groups(n, count, out):
    biggest = min(MAX_GROUP, n)
    for k in range(1, count + 1):
        size = max(2, biggest // k)
        start = (k * 7919) % n
        name = group_name(k, count)
        lines = ["dn: cn=%s,%s" % (name, GROUPS), "objectClass: groupOfNames", "cn: " + name]
        lines += ["member: " + user_dn((start + j) % n + 1) for j in range(min(size, n))]
        nested = [k + 1, k + 2] if k % 25 == 0 else [3] if k == 1 else []
        lines += ["member: cn=%s,%s" % (group_name(m, count), GROUPS) for m in nested if m <= count]
        out.write("\n".join(lines) + "\n\n")


def changes(n, changed, deleted, out):
    # Changed: users spread over the directory; deleted: others, also spread.
    step = max(1, n // max(1, changed + deleted))
    picked = [1 + (j * step) % n for j in range(changed + deleted)]
    for i in picked[:changed]:
        out.write("dn: %s\nchangetype: modify\nreplace: sn\nsn: Changed%06d\n-\n"
                  "replace: displayName\ndisplayName: Changed User %s\n\n" % (user_dn(i), i, uid(i)))
    for i in picked[changed:]:
        out.write("dn: %s\nchangetype: delete\n\n" % user_dn(i))


def main(argv):
    what, n = argv[1], int(argv[2])
    if n < 1:
        sys.exit("N must be at least 1")
    if what == "users":
        users(n, sys.stdout)
    elif what == "groups":
        groups(n, int(argv[3]) if len(argv) > 3 else 2000, sys.stdout)
    elif what == "changes":
        changes(n, int(argv[3]), int(argv[4]), sys.stdout)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
