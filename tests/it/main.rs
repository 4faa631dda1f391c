//! Integration tests: the real `dirsync` binary against a real `slapd` and the real
//! `scim2-server`, each started per test on free loopback ports by [`harness`].
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::unreachable
)]

mod harness;
mod support;

mod access;
mod ad;
mod cli;
mod daemon;
mod errors;
mod incremental;
mod names;
mod orphans;
mod packaging;
mod phases;
mod portal_listing;
mod report_content;
mod report_page;
mod reports;
mod safety;
mod schema_check;
mod skeleton;
mod source;
mod takeover;
mod three_way;
