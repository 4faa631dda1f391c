//! The HTML report in a real browser: the golden page of a report with every kind of
//! change, hold, conflict, skip and failure (src/report/golden/all-kinds.html, which the
//! unit tests keep equal to the renderer's output) opened in headless Chromium with
//! scripts on and off. Every change row and every held-back user must be in the DOM either
//! way; screenshots are kept in target/test-artefacts/ to look at.
//!
//! Scripts off: a copy of the page whose Content-Security-Policy blocks every script.
//! Chromium's own `--blink-settings=scriptEnabled=false` cannot be used, since headless
//! Chromium then writes neither the DOM nor a screenshot (both go through script).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/report/golden")
        .join(name)
}

/// `target/test-artefacts/`, beside cargo's `target/tmp/`.
fn artefacts() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("test-artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headless Chromium as scripts/install-test-deps installs it (Debian's `chromium`), with
/// a fresh profile and nothing reaching out to the network.
fn chromium(profile: &Path) -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// A copy of `page` (beside it, `-noscript` added to its name) in which no script runs.
fn without_scripts(page: &Path) -> PathBuf {
    let html = std::fs::read_to_string(page).unwrap();
    let blocked = html.replacen(
        "<meta charset=\"utf-8\">",
        "<meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy\" content=\"script-src 'none'\">",
        1,
    );
    assert_ne!(blocked, html, "the page starts with its charset");
    let copy = page.with_file_name(format!(
        "{}-noscript.html",
        page.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::write(&copy, blocked).unwrap();
    copy
}

fn dump_dom(page: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = chromium(profile.path())
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium (scripts/install-test-deps installs it)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The logins of the changes (per action) and of the held-back changes, from the JSON.
fn logins(report: &Json) -> (Vec<String>, Vec<String>) {
    let names = |list: &Json| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["user_name"].as_str().unwrap().to_string())
            .collect()
    };
    let changes = names(&report["changes"]);
    let held = report["held"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| names(&h["changes"]))
        .collect();
    (changes, held)
}

#[test]
fn every_change_row_and_held_back_user_is_in_the_page_with_scripts_on_and_off() {
    let report: Json =
        serde_json::from_str(&std::fs::read_to_string(golden("all-kinds.json")).unwrap()).unwrap();
    let (changes, held) = logins(&report);
    assert!(
        !changes.is_empty() && held.len() >= 3,
        "the sample holds both"
    );
    let dir = artefacts();
    let page = dir.join("report.html");
    std::fs::copy(golden("all-kinds.html"), &page).unwrap();

    let noscript = without_scripts(&page);
    for scripts in [true, false] {
        let dom = dump_dom(if scripts { &page } else { &noscript });
        let rows = dom.matches("<tbody class=\"change\"").count();
        assert_eq!(
            rows,
            changes.len() + held.len(),
            "one row group per change and per held-back change (scripts {scripts})"
        );
        for login in changes.iter().chain(&held) {
            assert!(
                dom.contains(&format!("<b>{login}</b>")),
                "{login} is not in the page (scripts {scripts})"
            );
        }
        let filter = dom
            .split("<input id=\"filter\"")
            .nth(1)
            .and_then(|rest| rest.split('>').next())
            .unwrap_or_else(|| panic!("no filter box (scripts {scripts})"));
        assert_eq!(
            filter.contains("hidden"),
            !scripts,
            "the filter box shows only when scripts run: {filter}"
        );
        for login in &held {
            let held_section = dom.split("<section id=\"needs-admin\"").next().unwrap();
            assert!(
                held_section.contains(&format!("<b>{login}</b>")),
                "{login} is listed among the held-back changes, before the rest"
            );
        }
    }

    for (from, name) in [(&page, "report.png"), (&noscript, "report-noscript.png")] {
        let shot = dir.join(name);
        let _ = std::fs::remove_file(&shot);
        let profile = tempfile::tempdir().unwrap();
        let out = chromium(profile.path())
            .arg("--window-size=1300,3600")
            .arg(format!("--screenshot={}", shot.display()))
            .arg(format!("file://{}", from.display()))
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read(&shot).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 50_000,
            "a real screenshot in {}",
            shot.display()
        );
    }
}
