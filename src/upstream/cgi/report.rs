//! What a push did, read from receive-pack's answer as it passes: its report (`unpack ok`, then
//! `ok <ref>` or `ng <ref> <reason>` for each ref), for the log of a push refused in part and
//! of one whose client left.
//!
//! Why a reader of the whole answer and not a search of its end: with side-band (which git
//! asks for) the report is inside channel 1, and channel 2 carries what hooks print — text a
//! client can put there (a hook that echoes a commit's subject), which a search for `ok refs/`
//! took for the report, so that a refused push could read as applied. The answer is followed
//! pkt-line by pkt-line from its first byte ([`PktLines`]); only channel 1 (or, without side-band, the lines
//! themselves) is read as the report. Memory is one pkt-line at most and a bounded list of
//! entries of at most [`ENTRY_KEPT`] bytes each.
//!
//! Channel 2 is read for one more thing: git's own `error:` lines, which with side-band go to
//! the client and nowhere else (not to receive-pack's stderr). They tell a ref that another
//! push moved first (`cannot lock ref '<ref>': is at <a> but expected <b>`: two pushes to one
//! branch at once, the everyday race) from a ref the repository could not write (a lock file
//! left behind, a full disk), both reported as `ng <ref> failed to update ref`; and they are
//! the words the log of such a failure repeats. A hook could print such a line too: at worst
//! a failure is then logged at `info` as a race, never a refusal as applied.

use crate::pkt_line::{Pkt, PktLines};

/// The most refused refs named in the outcome; the rest are counted.
const REFUSED_NAMED: usize = 100;

/// The most of one refused ref's entry (`<ref> <reason>`) or failed ref's name kept: a client
/// chooses the names, and git reports a name of up to a pkt-line's 65,516 bytes (`ng
/// refs/heads/a/a/...  failed to lock`), so [`REFUSED_NAMED`] entries kept whole held some
/// 13 MB per push (refused and failed), all but the first 2 KiB of it past what the log
/// line holds (`log_value::TEXT_KEPT`).
const ENTRY_KEPT: usize = 512;

/// The most of git's `error:` lines from channel 2 kept for the log, and the most of each.
const ERRORS_KEPT: usize = 3;
const ERROR_LINE_KEPT: usize = 512;

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
    /// Refused refs whose reason is git's own failure, not a refusal (see [`FAILURES`]): the
    /// first [`REFUSED_NAMED`] named, all counted.
    failed: Vec<String>,
    failed_count: u64,
    /// Channel 2's line so far (see [`ERROR_LINE_KEPT`]).
    text: Vec<u8>,
    /// Refs git could not lock because they had moved since the push began (see
    /// [`moved_meanwhile`]), the first [`REFUSED_NAMED`].
    moved: Vec<String>,
    /// git's first [`ERRORS_KEPT`] `error:` lines on channel 2.
    errors: Vec<String>,
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
        let mut channel_two = Vec::new();
        let mut lines = Vec::new();
        let sideband = &mut self.sideband;
        let outer = self.outer.feed(data, |pkt| {
            if let Pkt::Line(payload) = pkt {
                let banded = *sideband.get_or_insert(matches!(payload.first(), Some(1..=3)));
                match (banded, payload.split_first()) {
                    (true, Some((1, rest))) => channel_one.extend_from_slice(rest),
                    (true, Some((2, rest))) => channel_two.extend_from_slice(rest),
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
        self.text(&channel_two);
    }

    /// Reads channel 2's text, line by line (`\n`, or `\r` after progress), for git's own
    /// `error:` lines; each line is kept to [`ERROR_LINE_KEPT`] bytes.
    fn text(&mut self, data: &[u8]) {
        for &byte in data {
            if byte != b'\n' && byte != b'\r' {
                if self.text.len() < ERROR_LINE_KEPT {
                    self.text.push(byte);
                }
                continue;
            }
            let line = String::from_utf8_lossy(&self.text).into_owned();
            self.text.clear();
            if !line.starts_with("error: ") {
                continue;
            }
            if let Some(name) = moved_meanwhile(&line) {
                if self.moved.len() < REFUSED_NAMED {
                    self.moved.push(name.to_owned());
                }
            }
            if self.errors.len() < ERRORS_KEPT {
                self.errors.push(line);
            }
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
                if self.failed.len() < REFUSED_NAMED {
                    let name = refused.split_once(' ').map_or(refused, |(name, _)| name);
                    self.failed.push(kept(name));
                }
            }
            if self.refused.len() < REFUSED_NAMED {
                self.refused.push(kept(refused));
            }
        }
    }

    /// How many refs the repository failed to update for reasons of its own (see
    /// [`FAILURES`]), not refused, and not because another push moved them first.
    pub(super) fn failed(&self) -> u64 {
        self.failed_count - self.raced()
    }

    /// How many refs could not be updated because another push moved them after this one
    /// began: git said so on channel 2 (see the module's doc).
    pub(super) fn raced(&self) -> u64 {
        self.failed
            .iter()
            .filter(|name| self.moved.contains(name))
            .count() as u64
    }

    /// git's own `error:` lines on channel 2, joined for the log; empty without any.
    pub(super) fn git_errors(&self) -> String {
        self.errors.join(" / ")
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

/// `text`, or its first [`ENTRY_KEPT`] bytes (at a character's end) and `...`.
fn kept(text: &str) -> String {
    if text.len() <= ENTRY_KEPT {
        return text.to_owned();
    }
    let mut cut = ENTRY_KEPT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}

/// The ref named by git's error for a ref it could not lock because it is no longer what the
/// push was told it was: another push updated, created or deleted it meanwhile. Ref names
/// cannot hold `:`, so the name ends at the first `': `.
fn moved_meanwhile(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("error: cannot lock ref '")?;
    let (name, why) = rest.split_once("': ")?;
    let moved = (why.starts_with("is at ") && why.contains(" but expected "))
        || why == "reference already exists"
        || why.starts_with("reference is missing but expected ");
    moved.then_some(name)
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

    /// A refused ref's entry, and a failed ref's name, are kept to [`ENTRY_KEPT`] bytes: a
    /// report naming [`REFUSED_NAMED`] refs of the longest names a pkt-line holds keeps some
    /// 100 KiB, not 13 MB.
    #[test]
    fn a_long_refused_name_is_kept_cut() {
        let long = format!("refs/heads/{}", "ab/".repeat(20_000));
        let mut answer = pkt(b"unpack ok\n");
        for _ in 0..REFUSED_NAMED {
            answer.extend(pkt(format!("ng {long} failed to lock\n").as_bytes()));
        }
        answer.extend_from_slice(b"0000");
        let mut report = Report::default();
        report.feed(&answer);
        assert_eq!(report.failed(), REFUSED_NAMED as u64);
        let held: usize = report
            .refused
            .iter()
            .chain(&report.failed)
            .map(String::len)
            .sum();
        assert!(
            held <= 2 * REFUSED_NAMED * (ENTRY_KEPT + 3),
            "{held} bytes held"
        );
        assert!(report.refused[0].starts_with("refs/heads/ab/ab/"));
        assert!(report.refused[0].ends_with("..."));
        assert_eq!(kept("refs/heads/é"), "refs/heads/é");
        // Its byte ENTRY_KEPT is inside an `é`: the cut is at the character's start.
        let cut = kept(&format!("x{}", "é".repeat(ENTRY_KEPT)));
        assert_eq!(cut.len(), ENTRY_KEPT - 1 + "...".len());
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

    /// Two pushes to one branch at once: the one that loses gets `ng <ref> failed to update
    /// ref` as a full disk would, and only git's `error:` line on channel 2 (split over
    /// packets here) says the ref had moved. That is a race, not the repository failing; a
    /// lock file left behind stays a failure, and git's words are kept for its log.
    #[test]
    fn a_ref_another_push_moved_first_is_a_race_not_a_failure() {
        let raced = |errors: &[&str], refs: &[&str]| {
            let mut answer = Vec::new();
            for error in errors {
                let line = format!("{error}\n");
                let (first, second) = line.as_bytes().split_at(line.len() / 2);
                answer.extend(banded(2, first));
                answer.extend(banded(2, second));
            }
            let mut report = pkt(b"unpack ok\n");
            for name in refs {
                report.extend(pkt(format!("ng {name} failed to update ref\n").as_bytes()));
            }
            report.extend_from_slice(b"0000");
            answer.extend(banded(1, &report));
            let mut read = Report::default();
            for piece in answer.chunks(7) {
                read.feed(piece);
            }
            (read.raced(), read.failed(), read.git_errors())
        };
        let moved = "error: cannot lock ref 'refs/heads/main': is at \
                     7fb67336bc9ccec806b7895be09d8377f848734c but expected \
                     21a31f584e21c56e2525d07f967a431ee409f599";
        assert_eq!(
            raced(&[moved], &["refs/heads/main"]),
            (1, 0, moved.to_owned())
        );
        let created = "error: cannot lock ref 'refs/heads/nb': reference already exists";
        let deleted = "error: cannot lock ref 'refs/heads/gone': reference is missing but \
                       expected 21a31f584e21c56e2525d07f967a431ee409f599";
        assert_eq!(
            raced(&[created, deleted], &["refs/heads/nb", "refs/heads/gone"]).0,
            2
        );
        let left = "error: cannot lock ref 'refs/heads/main': Unable to create \
                    '/srv/repos/team/app.git/refs/heads/main.lock': File exists.";
        assert_eq!(
            raced(&[left], &["refs/heads/main"]),
            (0, 1, left.to_owned())
        );
        // The race of another ref does not excuse this one; without git's words it is a failure.
        assert_eq!(raced(&[created], &["refs/heads/main"]).1, 1);
        assert_eq!(raced(&[], &["refs/heads/main"]), (0, 1, String::new()));
        // A hook's chatter is not git's error, and a long line is cut.
        let long = format!("error: {}", "x".repeat(4000));
        let (_, _, said) = raced(&["hook: checking", &long, "warning: x"], &["refs/heads/a"]);
        assert_eq!(said.len(), ERROR_LINE_KEPT, "{said}");
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
