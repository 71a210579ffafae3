//! What a push did, read from receive-pack's answer as it passes: its report (`unpack ok`, then
//! `ok <ref>` or `ng <ref> <reason>` for each ref), for the log of a push refused in part and
//! of one whose client left.
//!
//! Why a reader of the whole answer and not a search of its end: with side-band (which git
//! asks for) the report is inside channel 1, and channel 2 carries what hooks print — text a
//! client can put there (a hook that echoes a commit's subject), which a search for `ok refs/`
//! took for the report, so that a refused push could read as applied. The answer is followed
//! pkt-line by pkt-line from its first byte ([`PktLines`]); only channel 1 (or, without side-band, the lines
//! themselves) is read as the report. Memory is one pkt-line at most and a bounded list.

use crate::pkt_line::{Pkt, PktLines};

/// The most refused refs named in the outcome; the rest are counted.
const REFUSED_NAMED: usize = 100;

/// receive-pack's report, as far as its answer has come (see the module's doc).
#[derive(Debug, Default)]
pub(super) struct Report {
    outer: PktLines,
    /// Channel 1's pkt-lines, with side-band.
    inner: PktLines,
    /// Whether the answer is in side-band channels: decided by its first line.
    sideband: Option<bool>,
    /// What came was no pkt-lines: nothing more is read.
    broken: bool,
    unpack: Option<String>,
    updated: u64,
    refused: Vec<String>,
    refused_count: u64,
    /// Refused refs whose reason is git's own failure, not a refusal (see [`FAILURES`]).
    failed_count: u64,
}

/// receive-pack's reasons (`ng <ref> <reason>`) that are the repository failing to do what
/// was allowed — a full disk at the ref's lock file, a lock left behind, objects it could not
/// move out of quarantine — rather than refusing it (a hook, a non-fast-forward, a setting).
const FAILURES: [&str; 6] = [
    "failed to update ref",
    "failed to lock",
    "failed to delete",
    "failed to update refs",
    "transaction failed to start",
    "unable to migrate objects to permanent storage",
];

impl Report {
    /// Reads the next piece of the answer.
    pub(super) fn feed(&mut self, data: &[u8]) {
        if self.broken {
            return;
        }
        let mut channel_one = Vec::new();
        let mut lines = Vec::new();
        let sideband = &mut self.sideband;
        let outer = self.outer.feed(data, |pkt| {
            if let Pkt::Line(payload) = pkt {
                let banded = *sideband.get_or_insert(matches!(payload.first(), Some(1..=3)));
                match (banded, payload.split_first()) {
                    (true, Some((1, rest))) => channel_one.extend_from_slice(rest),
                    (true, _) => {}
                    (false, _) => lines.push(payload.to_vec()),
                }
            }
            true
        });
        let inner = self.inner.feed(&channel_one, |pkt| {
            if let Pkt::Line(payload) = pkt {
                lines.push(payload.to_vec());
            }
            true
        });
        self.broken = outer.is_err() || inner.is_err();
        for line in lines {
            self.line(&line);
        }
    }

    fn line(&mut self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        if let Some(unpack) = text.strip_prefix("unpack ") {
            self.unpack = Some(unpack.to_owned());
        } else if text.starts_with("ok ") {
            self.updated += 1;
        } else if let Some(refused) = text.strip_prefix("ng ") {
            self.refused_count += 1;
            let reason = refused.split_once(' ').map_or("", |(_, reason)| reason);
            if FAILURES.contains(&reason) {
                self.failed_count += 1;
            }
            if self.refused.len() < REFUSED_NAMED {
                self.refused.push(refused.to_owned());
            }
        }
    }

    /// How many refs the repository failed to update for reasons of its own (see
    /// [`FAILURES`]), not refused.
    pub(super) fn failed(&self) -> u64 {
        self.failed_count
    }

    /// Whether the report has begun (its `unpack` line came).
    pub(super) fn has_begun(&self) -> bool {
        self.unpack.is_some()
    }

    /// What the report says was done, in words for the log.
    pub(super) fn outcome(&self) -> String {
        let Some(unpack) = &self.unpack else {
            return "no report from receive-pack (the pack did not arrive whole?)".into();
        };
        if unpack != "ok" {
            return format!("refused: unpack {unpack}; no ref was updated");
        }
        if self.refused.is_empty() {
            return format!("unpack ok, {} ref(s) updated", self.updated);
        }
        let more = self.refused_count - self.refused.len() as u64;
        format!(
            "unpack ok, {} ref(s) updated, {} refused: {}{}",
            self.updated,
            self.refused_count,
            self.refused.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pkt_line::encode as pkt;

    fn banded(band: u8, payload: &[u8]) -> Vec<u8> {
        let mut inner = vec![band];
        inner.extend_from_slice(payload);
        pkt(&inner)
    }

    fn outcome_of(answer: &[u8], step: usize) -> String {
        let mut report = Report::default();
        for piece in answer.chunks(step) {
            report.feed(piece);
        }
        report.outcome()
    }

    /// A ref git could not update (a full disk at its lock file) is told from one a hook
    /// refused: the first is the repository's failure, the second a policy.
    #[test]
    fn a_ref_git_failed_to_update_is_told_from_a_refused_one() {
        let mut answer = pkt(b"unpack ok\n");
        answer.extend(pkt(b"ng refs/heads/nb failed to update ref\n"));
        answer.extend(pkt(b"ng refs/tags/t1 failed to update ref\n"));
        answer.extend(pkt(b"ng refs/heads/x pre-receive hook declined\n"));
        answer.extend(pkt(b"ng refs/heads/y non-fast-forward\n"));
        answer.extend_from_slice(b"0000");
        let mut report = Report::default();
        report.feed(&answer);
        assert_eq!(report.failed(), 2);
        let mut only_policy = pkt(b"unpack ok\n");
        only_policy.extend(pkt(b"ng refs/heads/x pre-receive hook declined\n"));
        only_policy.extend(pkt(b"ng refs/heads/failed to update ref\n"));
        only_policy.extend_from_slice(b"0000");
        let mut policy = Report::default();
        policy.feed(&only_policy);
        assert_eq!(policy.failed(), 0, "a ref named like the reason is not one");
    }

    /// A hook's words on channel 2 that look like report lines — pkt-lines and all, as a hook
    /// echoing a commit's subject could print them — are not the report.
    #[test]
    fn a_hook_cannot_write_the_report() {
        let mut answer = Vec::new();
        answer.extend(banded(2, b"0019ok refs/heads/main\n"));
        answer.extend(banded(2, b"0030ng refs/heads/keep/one forged-from-hook\n"));
        answer.extend(banded(2, b"declining refs/heads/keep/six\n"));
        let mut report = pkt(b"unpack ok\n");
        report.extend(pkt(b"ng refs/heads/keep/six pre-receive hook declined\n"));
        report.extend_from_slice(b"0000");
        // The report split over two channel-1 packets, mid pkt-line.
        let (first, second) = report.split_at(9);
        answer.extend(banded(1, first));
        answer.extend(banded(1, second));
        answer.extend_from_slice(b"0000");
        for step in [answer.len(), 1, 3, 10] {
            assert_eq!(
                outcome_of(&answer, step),
                "unpack ok, 0 ref(s) updated, 1 refused: refs/heads/keep/six pre-receive hook \
                 declined",
                "step {step}"
            );
        }
    }

    #[test]
    fn without_side_band_the_lines_are_the_report() {
        let mut answer = pkt(b"unpack ok\n");
        answer.extend(pkt(b"ok refs/heads/main\n"));
        answer.extend(pkt(b"ok refs/tags/v1\n"));
        answer.extend_from_slice(b"0000");
        assert_eq!(outcome_of(&answer, 2), "unpack ok, 2 ref(s) updated");
        let mut refused = pkt(b"unpack index-pack abnormal exit\n");
        refused.extend(pkt(b"ng refs/heads/main unpacker error\n"));
        assert_eq!(
            outcome_of(&refused, 7),
            "refused: unpack index-pack abnormal exit; no ref was updated"
        );
        assert!(outcome_of(b"", 1).starts_with("no report"));
        // What is no pkt-line ends the reading, and says no report came.
        assert!(outcome_of(b"HTTP garbage", 4).starts_with("no report"));
    }

    #[test]
    fn past_a_hundred_refused_refs_the_rest_are_counted() {
        let mut answer = pkt(b"unpack ok\n");
        for i in 0..(REFUSED_NAMED + 3) {
            answer.extend(pkt(
                format!("ng refs/heads/b{i} non-fast-forward\n").as_bytes()
            ));
        }
        let said = outcome_of(&answer, 100);
        assert!(
            said.starts_with("unpack ok, 0 ref(s) updated, 103 refused: refs/heads/b0 "),
            "{said}"
        );
        assert!(said.ends_with("; and 3 more"), "{said}");
    }

    /// Once what came is no pkt-line, nothing after it is read — not even what seems to be a
    /// report beginning again in a later read, on the answer itself or inside channel 1.
    #[test]
    fn after_what_is_no_pkt_line_nothing_more_is_read() {
        let mut report = Report::default();
        report.feed(b"HTTP garbage");
        report.feed(&pkt(b"unpack ok\n"));
        report.feed(&pkt(b"ok refs/heads/main\n"));
        assert!(!report.has_begun());
        assert!(
            report.outcome().starts_with("no report"),
            "{}",
            report.outcome()
        );
        let mut report = Report::default();
        report.feed(&banded(1, b"zzzz"));
        report.feed(&banded(1, &pkt(b"unpack ok\n")));
        report.feed(&banded(1, &pkt(b"ok refs/heads/main\n")));
        assert!(!report.has_begun());
        assert!(
            report.outcome().starts_with("no report"),
            "{}",
            report.outcome()
        );
    }

    /// Whether the answer is in side-band channels is decided by its first line: once it is,
    /// a later line without a channel's byte is not read as the report.
    #[test]
    fn a_banded_answer_stays_banded() {
        let mut answer = banded(2, b"remote: checking\n");
        answer.extend(pkt(b"unpack ok\n"));
        answer.extend(pkt(b"ok refs/heads/main\n"));
        let mut report = pkt(b"unpack ok\n");
        report.extend(pkt(b"ng refs/heads/main pre-receive hook declined\n"));
        report.extend_from_slice(b"0000");
        answer.extend(banded(1, &report));
        answer.extend_from_slice(b"0000");
        for step in [answer.len(), 1, 5] {
            assert_eq!(
                outcome_of(&answer, step),
                "unpack ok, 0 ref(s) updated, 1 refused: refs/heads/main pre-receive hook \
                 declined",
                "step {step}"
            );
        }
    }
}
