#!/usr/bin/env python3
"""scripts/bench's report: reads what the run measured (BENCH_* variables, the work
directory's NAME.times files and dirsync's JSON reports) and prints the figures as a
Markdown section.

    summary.py                          prints the section for this run
    summary.py --write FILE SECTION     puts SECTION (a file) into FILE (BENCHMARKS.md),
                                        replacing the section for the same N, if any
"""
import json
import os
import platform
import re
import statistics
import sys
import time


def env(name, default=""):
    return os.environ.get("BENCH_" + name, default)


WORK = env("WORK")
# What a report's read reason says when a settled cycle's findings stand (src/cycle.rs).
STANDS = "its findings stand"


def runs(name):
    """[(seconds, peak RSS KiB, user CPU s, system CPU s, portal CPU s)] of NAME's runs
    (portal CPU: what the portal's server spent meanwhile; None when not measured)."""
    path = os.path.join(WORK, name + ".times")
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path):
        parts = line.split()
        if len(parts) in (4, 5):
            values = [float(p) for p in parts]
            out.append(tuple(values[:4]) + ((values[4] if len(values) == 5 else None),))
    return out


def portal_cpu(name):
    """The portal server's CPU seconds during the median run (by wall time), as text."""
    r = sorted(runs(name), key=lambda x: x[0])
    if not r or r[(len(r) - 1) // 2][4] is None:
        return "—"
    return "%.1f s" % r[(len(r) - 1) // 2][4]


def median(name):
    r = runs(name)
    return statistics.median(x[0] for x in r) if r else None


def peak_mib(name):
    r = runs(name)
    return max(x[1] for x in r) / 1024 if r else None


def cpu(name):
    """User + system CPU seconds of the median run (by wall time)."""
    r = sorted(runs(name), key=lambda x: x[0])
    if not r:
        return None
    m = r[(len(r) - 1) // 2]
    return m[2] + m[3]


def reports(prefix):
    """dirsync's JSON reports WORK/PREFIX.json and WORK/PREFIX-<run>.json, in run order
    (only these: "incr" must not take "incr-none-1.json")."""
    own = re.compile(r"%s(?:-(\d+))?\.json" % re.escape(prefix))
    found = sorted((int(m.group(1) or 0), f) for f in os.listdir(WORK) for m in [own.fullmatch(f)] if m)
    out = []
    for _, f in found:
        try:
            out.append(json.load(open(os.path.join(WORK, f))))
        except (OSError, ValueError):
            pass
    return out


def phases_of(prefix):
    """The phase timings of the report of the median run: {phase: {...}} or None."""
    reps = [r.get("phases") for r in reports(prefix)]
    reps = [p for p in reps if p]
    if not reps:
        return None

    def total(p):
        return sum((v or {}).get("ms", 0) for v in p.values())

    reps.sort(key=total)
    return reps[(len(reps) - 1) // 2]


def group_patches():
    """[(group, members before, adds, removes)] of the group PATCHes W_groups replays."""
    path = os.path.join(WORK, "patch-groups", "sizes.txt")
    if not os.path.exists(path):
        return []
    return [(p[0], int(p[1]), int(p[2]), int(p[3])) for p in (l.split() for l in open(path)) if len(p) == 4]


def all_runs(name):
    return " ".join("%.2f" % x[0] for x in runs(name))


def secs(x):
    if x is None:
        return "n/a"
    return "%.2f s" % x if x < 10 else "%.1f s" % x


def ratio(x, base):
    if x is None or not base:
        return "n/a"
    return "%.2fx" % (x / base)


def verdict(ok):
    return "yes" if ok else "**no**"


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = "%.0f GiB" % (int(line.split()[1]) / 1024 / 1024)
    except OSError:
        pass
    return "%s, %d cores, %s, %s" % (model, os.cpu_count() or 0, mem, platform.system())


def criterion():
    path = env("CRITERION_OUT")
    if not path or not os.path.exists(path):
        return None
    text = open(path).read()
    # "name   time:   [low unit mid unit high unit]" (the name may be on the line before)
    found = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
        if not m:
            continue
        name = line.split("time:")[0].strip() or (lines[i - 1].strip() if i else "?")
        value, unit = float(m.group(1)), m.group(2)
        scale = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}.get(unit, 1.0)
        found.append((name, value * scale))
    return found


def render():
    n = int(env("N"))
    repeat = int(env("REPEAT", "1"))
    changed, deleted = int(env("CHANGED")), int(env("DELETED"))
    concurrency = int(env("CONCURRENCY"))
    incremental = env("INCREMENTAL") == "true"
    ldap, portal = median("ldap"), median("portal_read")
    full = median("full")
    raw = (ldap or 0) + (portal or 0)
    # W: the portal's own cost of the changes cycle's writes, user PATCHes and group PATCHes.
    w_users, w_groups = median("patch"), median("patch_groups")
    writes = w_users + (w_groups or 0) if w_users is not None else None
    out = []
    w = out.append
    w("<!-- bench N=%d begin -->" % n)
    w("## %s users" % format(n, ","))
    w("")
    w("%s users, %s groups (%s member values, some nested), %s of them mirrored to the portal; "
      "portal pages of %s. Measured %s on %s; load average before %s, after %s. %s%s (release build), %s, "
      "scim2-server %s. Median of %d runs (provisioning, the group sync and the cycle after the "
      "changes: one run). The whole run took %s s (slapadd: %s s)."
      % (format(n, ","), format(int(env("GROUPS")), ","), format(int(env("MEMBERSHIPS")), ","),
         env("PORTAL_GROUPS"), env("PAGE_SIZE"), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine(),
         env("LOAD_BEFORE"), env("LOAD_AFTER"), env("DIRSYNC_VERSION"),
         ", given as BENCH_DIRSYNC=%s" % env("GIVEN") if env("GIVEN")
         else ", with uncommitted changes in src/" if env("DIRTY") == "yes" else "",
         env("SLAPD_VERSION"), env("SCIM_VERSION"), repeat, env("SECS"), env("SLAPADD_SECS")))
    w("")
    w("| figure | dirsync | baseline in the same run | ratio | target | met |")
    w("|---|---|---|---|---|---|")
    full_ratio = full / raw if full and raw else None
    w("| full cycle, nothing to change | %s | ldapsearch %s + curl GET %s pages %s = %s | %s | ≤ 1.0x | %s |"
      % (secs(full), secs(ldap), env("PAGES"), secs(portal), secs(raw), ratio(full, raw),
         verdict(full_ratio is not None and full_ratio <= 1.0)))
    if incremental:
        incr, none = median("incr"), median("incr_none")
        w("| incremental cycle, %d users changed + %d deleted | %s | the full cycle %s; W, the portal's own cost of its writes, %s | %s; %s W | ≤ 0.02x and ≤ 3 s | %s |"
          % (changed, deleted, secs(incr), secs(full), secs(writes), ratio(incr, full), ratio(incr, writes),
             verdict(incr is not None and bool(full) and incr / full <= 0.02 and incr <= 3)))
        settle = median("incr_settle")
        stands = [r for r in reports("incr-none") if STANDS in (r.get("directory", {}).get("read_reason") or "")]
        how = ("its plan stands in %d of %d runs" % (len(stands), len(reports("incr-none")))) if settle is not None else ""
        w("| incremental cycle, nothing changed | %s%s | the first such cycle after a change, which maps every user again: %s | — | ≤ 0.5 s | %s |"
          % (secs(none), " (%s)" % how if how else "", secs(settle),
             verdict(none is not None and none <= 0.5)))
    else:
        na = "n/a (no incremental cycles in this build)"
        w("| incremental cycle, %d users changed + %d deleted | %s | the full cycle %s | — | ≤ 0.02x and ≤ 3 s | — |"
          % (changed, deleted, na, secs(full)))
        w("| incremental cycle, nothing changed | %s | — | — | ≤ 0.5 s | — |" % na)
    prov, post = median("provision"), median("post")
    prov_tp = n / prov if prov else None
    post_tp = n / post if post else None
    prov_phases = phases_of("provision")
    apply_note = ""
    if prov_phases and prov_phases.get("apply") and prov_phases["apply"].get("ms"):
        a = prov_phases["apply"]
        apply_tp = a.get("applied", 0) / (a["ms"] / 1000)
        apply_note = "; its apply phase alone %.0f users/s (%s requests in %s)" % (
            apply_tp, format(a.get("requests", 0), ","), secs(a["ms"] / 1000))
    tp_ratio = prov_tp / post_tp if prov_tp and post_tp else None
    w("| initial provisioning of %s users | %.0f users/s (%s, whole sync%s) | curl --parallel-max %d, the same bodies to a fresh portal: %.0f users/s (%s) | %s | ≥ 0.9x its throughput | %s |"
      % (format(n, ","), prov_tp or 0, secs(prov), apply_note, concurrency, post_tp or 0, secs(post),
         "%.2fx" % tp_ratio if tp_ratio else "n/a", verdict(tp_ratio is not None and tp_ratio >= 0.9)))
    crit = criterion()
    if crit:
        best = [c for c in crit if "100k" in c[0]] or crit
        name, value = best[0]
        w("| plan alone, 100k × 100k, 1%% changes (criterion) | %s (`%s`) | — | — | ≤ 0.25 s | %s |"
          % (secs(value), name, verdict(value <= 0.25)))
    else:
        why = ("not run (BENCH_CRITERION=0)" if env("CRITERION", "1") == "0"
               else "no `benches/plan.rs` in this build")
        w("| plan alone, 100k × 100k, 1%% changes (criterion) | n/a (%s) | — | — | ≤ 0.25 s | — |" % why)
    rss = peak_mib("full")
    w("| peak RSS, full cycle | %s | — | — | ≤ 250 MB at 100k | %s |"
      % ("%.0f MiB" % rss if rss else "n/a",
         verdict(rss is not None and rss <= 250) + ("" if n >= 100000 else " (at %s)" % format(n, ","))))
    naive, naive_rss = median("naive"), peak_mib("naive")
    w("| the naive Python script (bench/naive.py) | %s, %s | naive: %s, %s | time %s, memory %s | dirsync faster, ≤ 0.5x its memory | %s |"
      % (secs(full), "%.0f MiB" % rss if rss else "n/a", secs(naive), "%.0f MiB" % naive_rss if naive_rss else "n/a",
         ratio(full, naive), ratio(rss, naive_rss),
         verdict(full is not None and naive is not None and full < naive and rss is not None
                 and naive_rss and rss <= naive_rss / 2)))
    w("")
    if not incremental:
        cf = median("changes_full")
        w("Without incremental cycles, the sync after the %d changes and %d deletions read everything: %s "
          "(%s of the full cycle)." % (changed, deleted, secs(cf), ratio(cf, full)))
        w("")
    changes_phases = phases_of("incr" if incremental else "changes-full")
    if changes_phases and changes_phases.get("apply") and runs("patch"):
        a = changes_phases["apply"]
        apply_s = a.get("ms", 0) / 1000
        gp = group_patches()
        groups_note = ""
        if gp and runs("patch_groups"):
            groups_note = (", and its %d group PATCHes again (the same %d member additions and %d removals "
                           "on the same groups, of %s to %s members before; undone first, untimed) took %s (W_groups)"
                           % (len(gp), sum(g[2] for g in gp), sum(g[3] for g in gp),
                              format(min(g[1] for g in gp), ","), format(max(g[1] for g in gp), ","),
                              secs(w_groups)))
        w("The portal's own write cost (W): that cycle's apply phase sent %d requests in %s. From curl at "
          "the same concurrency, %d PATCHes of one attribute took %s (W_users)%s: W = %s. The apply phase "
          "took %s W, the whole cycle %s W."
          % (a.get("requests", 0), secs(apply_s), changed + deleted, secs(w_users), groups_note,
             secs(writes), ratio(apply_s, writes), ratio(median("incr" if incremental else "changes_full"), writes)))
        w("")
    if crit and len(crit) > 1:
        w("Criterion: " + "; ".join("`%s` %s" % (name, secs(v)) for name, v in crit) + ".")
        w("")

    w("Every measurement: wall time (median, and each run), CPU (user + system) and peak RSS of the "
      "process measured (the servers' are not counted), and for dirsync its own phase timings "
      "(its JSON report's `phases`, from the median run). The directory and the portal are read at "
      "the same time; each side is timed on its own.")
    w("")
    w("| run | wall | runs | CPU | peak RSS | portal's CPU | directory read | portal read | plan | apply | record |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    baselines = [("L: raw ldapsearch, the same searches", "ldap"),
                 ("P: curl GET, %s pages, sequential" % env("PAGES"), "portal_read"),
                 ("curl --parallel-max %d, %s POSTs" % (concurrency, format(n, ",")), "post"),
                 ("naive Python script", "naive"),
                 ("W_users: curl --parallel-max %d, %d user PATCHes" % (concurrency, changed + deleted), "patch"),
                 ("W_groups: curl --parallel-max %d, %d group PATCHes, %d member operations"
                  % (concurrency, len(group_patches()), sum(g[2] + g[3] for g in group_patches())), "patch_groups")]
    for label, name in baselines:
        if runs(name):
            w("| %s | %s | %s | %s | %.0f MiB | %s | | | | | |" % (
                label, secs(median(name)), all_runs(name), secs(cpu(name)), peak_mib(name), portal_cpu(name)))
    rows = [("plan, empty portal", "plan_empty", "plan-empty"),
            ("provisioning (sync, users only)", "provision", "provision"),
            ("group sync (creates the portal groups)", "groups_sync", "groups-sync"),
            ("full cycle, nothing to change", "full", "full"),
            ("plan, portal in sync", "plan_steady", "plan-steady")]
    if incremental:
        rows += [("incremental, %d changed + %d deleted" % (changed, deleted), "incr", "incr"),
                 ("incremental, nothing changed: the first after the changes", "incr_settle", "incr-settle"),
                 ("incremental, nothing changed", "incr_none", "incr-none")]
    else:
        rows += [("full cycle after %d changed + %d deleted" % (changed, deleted), "changes_full", "changes-full")]
    for label, name, prefix in rows:
        p = phases_of(prefix)
        r = runs(name)
        if not r:
            continue

        def cell(phase, what):
            if p is None:
                return "n/a"
            v = p.get(phase)
            if v is None:
                return "—"
            return "%s ms: %s" % (format(v.get("ms", 0), ","), what(v))

        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, secs(median(name)), all_runs(name), secs(cpu(name)), "%.0f MiB" % peak_mib(name),
            portal_cpu(name),
            cell("directory_read", lambda v: "%s entries" % format(v.get("entries", 0), ",")),
            cell("portal_read", lambda v: "%s users, %s groups, %s fetched, %s requests" % (
                format(v.get("users", 0), ","), format(v.get("groups", 0), ","),
                v.get("fetched", 0), format(v.get("requests", 0), ","))),
            cell("plan", lambda v: "%s changes" % format(v.get("changes", 0), ",")),
            cell("apply", lambda v: "%s requests, %s applied" % (
                format(v.get("requests", 0), ","), format(v.get("applied", 0), ","))),
            cell("record", lambda v: "%s users written" % format(v.get("users", 0), ","))))
    w("")
    w("The issue's \"before\" columns, measured now:")
    w("")
    w("| N | ldapsearch | portal listing | plan, empty portal | sync, nothing to change | peak RSS | Python script |")
    w("|---|---|---|---|---|---|---|")
    w("| %s | %s | %s | %s | %s | %s | %s, %s |" % (
        format(n, ","), secs(ldap), secs(portal), secs(median("plan_empty")), secs(full),
        "%.0f MiB" % rss if rss else "n/a", secs(naive), "%.0f MiB" % naive_rss if naive_rss else "n/a"))
    w("<!-- bench N=%d end -->" % n)
    return "\n".join(out) + "\n"


HEADER = """# Benchmarks

Written by `scripts/bench N` (see BENCHMARKS.md's text above the results for what each
figure means); each run replaces its own N's section below.

<!-- bench results -->
"""


def write(path, section_path):
    section = open(section_path).read()
    m = re.search(r"<!-- bench N=(\d+) begin -->", section)
    if not m:
        sys.exit("summary: the section has no N")
    n = m.group(1)
    text = open(path).read() if os.path.exists(path) else HEADER
    pattern = re.compile(r"<!-- bench N=%s begin -->.*?<!-- bench N=%s end -->\n?" % (n, n), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        # Sections in order of N.
        later = [mm for mm in re.finditer(r"<!-- bench N=(\d+) begin -->", text) if int(mm.group(1)) > int(n)]
        if later:
            at = later[0].start()
            text = text[:at] + section + "\n" + text[at:]
        else:
            text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--write":
        write(sys.argv[2], sys.argv[3])
    else:
        sys.stdout.write(render())
