//! `/healthz`: whether the daemon is doing its job, from how its cycles ended. Pure.

use std::time::{Duration, SystemTime};

use super::Outcome;

/// The longest reason `/healthz` repeats, in characters.
const MAX_REASON: usize = 500;

/// How the last cycle ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastCycle {
    pub outcome: Outcome,
    pub finished_at: SystemTime,
    /// Why it ended so, in one line.
    pub reason: String,
}

/// What `/healthz` knows: the last cycle and the last successful one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthState {
    last: Option<LastCycle>,
    last_success: Option<SystemTime>,
}

impl HealthState {
    /// Records a cycle that ended at `finished_at`; `reason` is kept on one line.
    pub fn record(&mut self, outcome: Outcome, finished_at: SystemTime, reason: &str) {
        if outcome.is_success() {
            self.last_success = Some(finished_at);
        }
        self.last = Some(LastCycle {
            outcome,
            finished_at,
            reason: one_line(reason),
        });
    }

    /// The last cycle, if one has run.
    pub fn last(&self) -> Option<&LastCycle> {
        self.last.as_ref()
    }

    /// When the last successful cycle (ok, or changes held back) ended.
    pub fn last_success(&self) -> Option<SystemTime> {
        self.last_success
    }
}

/// The `/healthz` answer: HTTP status and a one-line reason. 200 while the last cycle
/// succeeded or held changes back for confirmation and a successful one ended within
/// `max_age` of `now`; 503 otherwise.
pub fn healthz(state: &HealthState, now: SystemTime, max_age: Duration) -> (u16, String) {
    let Some(last) = &state.last else {
        return (503, "no cycle has run yet".to_string());
    };
    let at = timestamp(last.finished_at);
    let with_reason = |what: &str| {
        if last.reason.is_empty() {
            format!("{what} at {at}")
        } else {
            format!("{what} at {at}: {}", last.reason)
        }
    };
    match last.outcome {
        Outcome::Ok | Outcome::Held => {}
        Outcome::Failed => return (503, with_reason("last cycle failed")),
        Outcome::Partial => return (503, with_reason("last cycle partly failed")),
        Outcome::Interrupted => return (503, with_reason("last cycle was interrupted")),
        Outcome::TimedOut => return (503, with_reason("last cycle timed out")),
    }
    let Some(success) = state.last_success else {
        return (503, "no cycle has succeeded yet".to_string());
    };
    // A success stamped after `now` (the clock was set back) counts as just now.
    let age = now.duration_since(success).unwrap_or_default();
    if age > max_age {
        return (
            503,
            format!(
                "no successful cycle since {} (max_age_secs {})",
                timestamp(success),
                max_age.as_secs()
            ),
        );
    }
    let what = match last.outcome {
        Outcome::Held => "ok: last cycle held changes back",
        _ => "ok: last cycle succeeded",
    };
    (200, with_reason(what))
}

/// `t` in RFC 3339, UTC, to the second.
fn timestamp(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{} s after the Unix epoch", t.unix_timestamp()))
}

/// `text` on one line (line breaks and runs of white space become one space), cut at
/// [`MAX_REASON`] characters.
fn one_line(text: &str) -> String {
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = line.char_indices().nth(MAX_REASON) {
        line.truncate(cut);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_AGE: Duration = Duration::from_secs(3600);

    /// 2024-05-01T12:00:00Z plus `secs`.
    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800 + secs)
    }

    #[test]
    fn unhealthy_before_the_first_cycle() {
        let state = HealthState::default();
        assert_eq!(
            healthz(&state, at(0), MAX_AGE),
            (503, "no cycle has run yet".to_string())
        );
    }

    #[test]
    fn healthy_after_an_ok_cycle_within_max_age() {
        let mut state = HealthState::default();
        state.record(Outcome::Ok, at(0), "");
        assert_eq!(
            healthz(&state, at(3600), MAX_AGE),
            (
                200,
                "ok: last cycle succeeded at 2024-05-01T12:00:00Z".to_string()
            )
        );
    }

    #[test]
    fn changes_held_back_for_confirmation_are_healthy() {
        let mut state = HealthState::default();
        state.record(Outcome::Ok, at(0), "ok");
        state.record(
            Outcome::Held,
            at(600),
            "changes waiting for an admin's confirmation: 60",
        );
        assert_eq!(
            healthz(&state, at(700), MAX_AGE),
            (
                200,
                "ok: last cycle held changes back at 2024-05-01T12:10:00Z: changes waiting for an admin's confirmation: 60"
                    .to_string()
            )
        );
        assert_eq!(state.last_success(), Some(at(600)));
    }

    #[test]
    fn a_failed_last_cycle_is_unhealthy_with_its_reason_on_one_line() {
        let mut state = HealthState::default();
        state.record(Outcome::Ok, at(0), "ok");
        state.record(
            Outcome::Failed,
            at(60),
            "portal: portal unreachable or failing:\n  GET /Users failed: connection refused",
        );
        assert_eq!(
            healthz(&state, at(61), MAX_AGE),
            (
                503,
                "last cycle failed at 2024-05-01T12:01:00Z: portal: portal unreachable or failing: GET /Users failed: connection refused"
                    .to_string()
            )
        );
        // The failure does not move the last success.
        assert_eq!(state.last_success(), Some(at(0)));
    }

    #[test]
    fn partial_and_interrupted_cycles_are_unhealthy() {
        let mut state = HealthState::default();
        state.record(
            Outcome::Partial,
            at(0),
            "changes not applied: 3 failed, 0 rejected by the portal",
        );
        let (status, reason) = healthz(&state, at(1), MAX_AGE);
        assert_eq!(status, 503);
        assert_eq!(
            reason,
            "last cycle partly failed at 2024-05-01T12:00:00Z: changes not applied: 3 failed, 0 rejected by the portal"
        );
        state.record(Outcome::Interrupted, at(5), "");
        assert_eq!(
            healthz(&state, at(6), MAX_AGE),
            (
                503,
                "last cycle was interrupted at 2024-05-01T12:00:05Z".to_string()
            )
        );
    }

    #[test]
    fn a_success_older_than_max_age_is_unhealthy() {
        let mut state = HealthState::default();
        state.record(Outcome::Ok, at(0), "ok");
        assert_eq!(healthz(&state, at(3600), MAX_AGE).0, 200, "exactly max_age");
        assert_eq!(
            healthz(&state, at(3601), MAX_AGE),
            (
                503,
                "no successful cycle since 2024-05-01T12:00:00Z (max_age_secs 3600)".to_string()
            )
        );
    }

    #[test]
    fn a_clock_set_back_does_not_make_a_success_stale() {
        let mut state = HealthState::default();
        state.record(Outcome::Ok, at(100), "ok");
        assert_eq!(healthz(&state, at(0), MAX_AGE).0, 200);
    }

    #[test]
    fn a_long_reason_is_cut() {
        let mut state = HealthState::default();
        state.record(Outcome::Failed, at(0), &"x".repeat(2000));
        let reason = &state.last().map(|l| l.reason.clone()).unwrap_or_default();
        assert_eq!(reason.chars().count(), MAX_REASON + 1);
        assert!(reason.ends_with('…'));
    }
}
