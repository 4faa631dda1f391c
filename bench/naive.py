"""The naive baseline: a plain script that reads the directory users (paged) and lists the
portal users, and compares them with the example config's directory-owned mappings.
Nothing else: no groups, roles, services, state, safety or writes. Prints one line."""
import sys
import ldap3
import requests

ldap_url, bind_dn, bind_pw, base, portal, token, page = sys.argv[1:8]
conn = ldap3.Connection(ldap3.Server(ldap_url), bind_dn, bind_pw, auto_bind=True)
attrs = ["mail", "givenName", "sn", "displayName", "telephoneNumber",
         "facsimileTelephoneNumber", "entryUUID"]
directory = {}
for e in conn.extend.standard.paged_search(base, "(objectClass=inetOrgPerson)",
                                           attributes=attrs, paged_size=500, generator=True):
    a = e["attributes"]
    directory[a["entryUUID"].lower()] = a
http = requests.Session()
http.headers["Authorization"] = "Bearer " + token
portal_users, start = {}, 1
while True:
    body = http.get(f"{portal}/Users", params={"startIndex": start, "count": page}).json()
    for u in body.get("Resources", []):
        portal_users[(u.get("externalId") or "").lower()] = u
    start += len(body.get("Resources", []))
    if not body.get("Resources") or start > body["totalResults"]:
        break
FAX = "urn:ietf:params:scim:schemas:extension:faxportal:2.0:User"
first = lambda v: (v[0] if v else None) if isinstance(v, list) else v
work = lambda items: next((i.get("value") for i in items or [] if i.get("type") == "work"), None)
differ = 0
for anchor, a in directory.items():
    u = portal_users.get(anchor)
    want = (first(a["mail"]), first(a["givenName"]), first(a["sn"]), first(a["displayName"]),
            first(a["telephoneNumber"]), sorted(a["facsimileTelephoneNumber"] or []))
    have = None if u is None else (u["userName"], u.get("name", {}).get("givenName"),
                                   u.get("name", {}).get("familyName"), u.get("displayName"),
                                   work(u.get("phoneNumbers")), sorted(u.get(FAX, {}).get("faxNumbers", [])))
    differ += want != have
print(f"naive: {len(directory)} directory users, {len(portal_users)} portal users, {differ} differ")
