//! Whether an HTTP upstream's git answer came whole, told from git's own framing.
//!
//! An HTTP upstream can end its answer cleanly although the git process behind it died
//! mid-answer: nginx + fcgiwrap end their chunked answer with its last chunk when `git
//! http-backend` is killed, and other servers behind a CGI or a pipe can do the same. The HTTP
//! framing then says "whole", and a proxy that trusts it logs a broken clone as complete —
//! while git tells its user `early EOF`. git's answers are pkt-lines (four hex digits of length,
//! then the payload), and each kind ends in a known way, so gitgate follows that framing as the
//! answer streams through and calls an answer cut short when:
//!
//! - it ends inside a pkt-line (its length, or its payload); or
//! - it ends after a whole pkt-line but without git's closing flush-pkt (`0000`, or protocol
//!   v2's `0002`). An advertisement (`info/refs`) always ends with one; so does every answer
//!   that carried side-band packets (a pack, or a push's report), a push's report without
//!   side-band, and every protocol-v2 answer (`ls-refs`' list of refs, `fetch`'s sections).
//!
//! Two answers end without a flush and are whole: one whose last pkt-line is git's own error
//! (`ERR ...`, or side-band channel 3: the backend said why it stopped, and git shows that), and
//! a negotiation round of a protocol-v0 fetch, whose last line is its `ACK` or `NAK` (protocol
//! v2's `fetch` opens with its `acknowledgments` section header, and its `ACK`s and `NAK` are
//! then lines of a section, which ends with a flush or a delimiter). An empty
//! answer to a POST is whole too: git's answer to the probe its client sends before a request
//! larger than its POST buffer (a bare flush-pkt, `0000`, to upload-pack or receive-pack, which
//! git answers with nothing at all), and to a push whose client asked for no report. What is not
//! pkt-lines at all (a pack sent without side-band to an old client, which follows `NAK` raw)
//! gets no verdict: the follower stops at the first byte that cannot start a pkt-line, and says
//! nothing.
//!
//! Following costs a few instructions per pkt-line (of up to 65,520 bytes) and nothing per
//! byte: payloads are skipped, not read. Each answer is followed once: the HTTP upstream's
//! follower also tells the request line how far the answer is whole ([`WholeAt`]), which the
//! line asks of a client that hung up before the answer's end.

use std::sync::atomic::{AtomicU64, Ordering};

use hyper::header::{HeaderMap, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::StatusCode;

/// The longest pkt-line git reads or writes (`LARGE_PACKET_MAX`), its length digits included.
const LARGE_PACKET_MAX: u16 = 65520;

/// How much of an error line's text is kept for the log: git's own messages are one line.
const REFUSAL_MAX: usize = 512;

/// Which of git's answers it is: what its end must look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `info/refs?service=...`: ends with a flush-pkt.
    Advertisement,
    /// The answer to a fetch's POST (`git-upload-pack`): a protocol-v0 negotiation round
    /// ends with its `ACK` or `NAK`.
    FetchResult,
    /// The answer to a push's POST (`git-receive-pack`).
    PushResult,
}

/// Where the follower is in the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// Reading a pkt-line's length: `got` of its four hex digits so far, worth `value`.
    Length { got: u8, value: u16 },
    /// Inside a payload, `left` bytes of it still to come; `head` holds its first bytes (up to
    /// four, `seen` of them), which say what kind of line it is; `error`: they said git's own
    /// error, whose text is kept as it passes.
    Payload {
        left: u16,
        head: [u8; 4],
        seen: u8,
        error: bool,
    },
    /// What came is not pkt-lines: no verdict.
    Unframed,
}

/// The last whole pkt-line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Last {
    Nothing,
    /// `0000` (flush) or `0002` (protocol v2's response end).
    Closing,
    /// `0001`: protocol v2's delimiter.
    Delimiter,
    /// A line that is git's own error: `ERR ...`, or side-band channel 3.
    Error,
    /// `ACK ...` or `NAK`: how a protocol-v0 negotiation round ends.
    Negotiation,
    /// Any other line.
    Line,
}

/// Follows the pkt-lines of one upstream answer as its frames pass (see the module docs).
#[derive(Clone, Debug)]
pub struct AnswerFraming {
    kind: Kind,
    at: At,
    last: Last,
    /// A side-band packet (channel 1, 2 or 3) came: the answer must end with a flush.
    side_band: bool,
    /// The answer opened with protocol v2's `acknowledgments` section header: its `ACK`s and
    /// `NAK` do not end it (the section ends with a flush or a delimiter).
    sections: bool,
    /// The text of the last line when it is git's own error (up to [`REFUSAL_MAX`] bytes).
    refusal: Vec<u8>,
    /// Flush-pkts (or v2 response ends) so far, up to 255.
    closings: u8,
    /// How the answer opened: its first line's first bytes, when a line came before anything
    /// else (`# se` of smart HTTP's `# service=...` line, `shal` of a shallow list).
    first_line: Option<[u8; 4]>,
    /// Bytes followed so far.
    followed: u64,
}

impl AnswerFraming {
    /// A follower for an answer with this status and these header fields, or `None` when it
    /// is no git answer whose framing gitgate can read: not a `200`, not one of git's four
    /// smart-HTTP content types, or with a content coding (a compressed answer's bytes are no
    /// pkt-lines).
    pub fn for_answer(status: StatusCode, headers: &HeaderMap) -> Option<AnswerFraming> {
        if status != StatusCode::OK {
            return None;
        }
        if headers
            .get_all(CONTENT_ENCODING)
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            return None;
        }
        let content_type = headers.get(CONTENT_TYPE)?.to_str().ok()?;
        // Parameters (`; charset=...`) and letter case are the server's choice.
        let media = content_type.split(';').next()?.trim();
        let kind = [
            (
                "application/x-git-upload-pack-advertisement",
                Kind::Advertisement,
            ),
            (
                "application/x-git-receive-pack-advertisement",
                Kind::Advertisement,
            ),
            ("application/x-git-upload-pack-result", Kind::FetchResult),
            ("application/x-git-receive-pack-result", Kind::PushResult),
        ]
        .into_iter()
        .find(|(name, _)| media.eq_ignore_ascii_case(name))?
        .1;
        Some(AnswerFraming {
            kind,
            at: At::Length { got: 0, value: 0 },
            last: Last::Nothing,
            side_band: false,
            sections: false,
            refusal: Vec::new(),
            closings: 0,
            first_line: None,
            followed: 0,
        })
    }

    /// Follow the next piece of the answer.
    pub fn feed(&mut self, mut data: &[u8]) {
        self.followed += data.len() as u64;
        while let Some(&byte) = data.first() {
            match &mut self.at {
                At::Unframed => return,
                At::Length { got, value } => {
                    let Some(digit) = hex_digit(byte) else {
                        self.at = At::Unframed;
                        return;
                    };
                    *value = *value << 4 | u16::from(digit);
                    *got += 1;
                    data = &data[1..];
                    let (got, value) = (*got, *value);
                    if got == 4 {
                        self.at = self.line_of_length(value);
                    }
                }
                At::Payload {
                    left,
                    head,
                    seen,
                    error,
                } => {
                    let mut i = 0;
                    while usize::from(*seen) < head.len()
                        && i < data.len()
                        && i < usize::from(*left)
                    {
                        head[usize::from(*seen)] = data[i];
                        *seen += 1;
                        i += 1;
                    }
                    let n = data.len().min(usize::from(*left));
                    if i > 0 && usize::from(*seen) == head.len() && is_error(head) {
                        // The head is whole just now, and says git's own error: its text
                        // starts after `ERR ` or the channel byte.
                        *error = true;
                        self.refusal.clear();
                        if head[0] == 3 {
                            self.refusal.extend_from_slice(&head[1..]);
                        }
                    }
                    if *error && self.refusal.len() < REFUSAL_MAX {
                        let room = REFUSAL_MAX - self.refusal.len();
                        self.refusal.extend_from_slice(&data[i..n.min(i + room)]);
                    }
                    data = &data[n..];
                    *left -= n as u16;
                    if *left == 0 {
                        let (head, seen) = (*head, usize::from(*seen));
                        self.line_ended(&head[..seen]);
                    }
                }
            }
        }
    }

    /// A payload that began with `head` has ended.
    fn line_ended(&mut self, head: &[u8]) {
        self.side_band |= matches!(head.first(), Some(1..=3));
        // No v0 answer's line starts so (v0's are upper-case `ACK`/`NAK`, `shallow`, `ERR`).
        self.sections |= self.last == Last::Nothing && head == b"ackn";
        if self.last == Last::Nothing {
            let mut first = [0u8; 4];
            first[..head.len()].copy_from_slice(head);
            self.first_line = Some(first);
        }
        self.last = if is_error(head) {
            if head.len() < 4 {
                // A payload shorter than its head: its text is all there.
                self.refusal.clear();
                self.refusal.extend_from_slice(&head[1..]);
            }
            Last::Error
        } else {
            self.refusal.clear();
            if head.starts_with(b"ACK ") || head.starts_with(b"NAK") {
                Last::Negotiation
            } else {
                Last::Line
            }
        };
        self.at = At::Length { got: 0, value: 0 };
    }

    /// What a pkt-line whose four length digits say `value` starts.
    fn line_of_length(&mut self, value: u16) -> At {
        let next = At::Length { got: 0, value: 0 };
        match value {
            0 | 2 => {
                self.last = Last::Closing;
                self.closings = self.closings.saturating_add(1);
            }
            1 => self.last = Last::Delimiter,
            4 => self.last = Last::Line,
            // 3 is no length git writes; past the maximum, neither.
            3 => return At::Unframed,
            5..=LARGE_PACKET_MAX => {
                return At::Payload {
                    left: value - 4,
                    head: [0; 4],
                    seen: 0,
                    error: false,
                }
            }
            _ => return At::Unframed,
        }
        next
    }

    /// What git said when the answer, ended here, ends with git's own error (the text of its
    /// `ERR` line or channel-3 message, cut at [`REFUSAL_MAX`] bytes): the backend refused the
    /// request and told its client why.
    pub fn refusal(&self) -> Option<String> {
        (self.at == (At::Length { got: 0, value: 0 })
            && self.last == Last::Error
            && !self.pack_failed())
        .then(|| {
            String::from_utf8_lossy(&self.refusal)
                .trim_end_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_string()
        })
    }

    /// Whether the last line is upload-pack's word that its `pack-objects` failed mid-pack
    /// ([`PACK_FAILED`]): git's own error line, but no refusal of the client's request.
    fn pack_failed(&self) -> bool {
        self.last == Last::Error && said_pack_failed(&self.refusal)
    }

    /// Whether what came so far is, for certain, a whole answer: it ends with the flush-pkt
    /// that ends this kind of answer, and no other — stricter than [`AnswerFraming::cut_short`],
    /// which is asked only where the answer did end, and takes any closing flush there. For
    /// a client that hung up right after that flush, before its HTTP answer's own end (dulwich
    /// closes so), whether it had the whole answer. A flush that can come mid-answer is none:
    /// smart HTTP's advertisement has one after its `# service=...` line, and a protocol-v0
    /// fetch after its shallow list (a bare one for an empty list, which is also all of a v2
    /// `ls-refs` of an empty repository: not told apart, so not whole); a v0 negotiation round,
    /// whose `NAK` also opens a pack's answer, neither.
    pub fn ends_whole(&self) -> bool {
        if self.at != (At::Length { got: 0, value: 0 }) || self.last != Last::Closing {
            return false;
        }
        match self.kind {
            Kind::Advertisement => {
                let service_line = self.first_line.is_some_and(|h| &h == b"# se");
                self.closings >= if service_line { 2 } else { 1 }
            }
            Kind::FetchResult => {
                self.side_band
                    || self.sections
                    || self
                        .first_line
                        .is_some_and(|h| &h != b"shal" && &h != b"unsh")
            }
            Kind::PushResult => true,
        }
    }

    /// Why the answer, ended here, was cut short; `None` when it is whole or cannot be told.
    pub fn cut_short(&self) -> Option<&'static str> {
        match self.at {
            At::Unframed => None,
            At::Length { got: 1.., .. } => Some("it ended inside a pkt-line's length"),
            At::Payload { .. } => Some("it ended inside a pkt-line"),
            At::Length { got: 0, .. } => match self.last {
                Last::Error if self.pack_failed() => Some(
                    "git upload-pack ended it saying its pack-objects failed (\"aborting due to \
                     possible repository corruption on the remote side\": killed, out of memory, \
                     or an object it could not read)",
                ),
                Last::Closing | Last::Error => None,
                // A protocol-v0 negotiation round.
                Last::Negotiation
                    if self.kind == Kind::FetchResult && !self.side_band && !self.sections =>
                {
                    None
                }
                // git's answer to a probe (see the module docs), or to a push that asked for
                // no report.
                Last::Nothing if self.kind != Kind::Advertisement => None,
                _ => Some("it ended without git's closing flush-pkt"),
            },
        }
    }
}

/// How far an answer the HTTP upstream follows is whole, for the request line: the number of
/// the answer's bytes after which its [`AnswerFraming`] last said it was
/// ([`AnswerFraming::ends_whole`]), or none since more came. The upstream notes it as the
/// answer's frames come, and hands it on with the answer (in its `extensions`); the request
/// line (`request_log::LoggedBody`) sees the same frames later, as they are handed to the
/// client's connection (`body::Batched` between the two can hold some back), and counts their
/// bytes: a client that hung up had the whole answer only when all the upstream followed up to
/// that point was handed on. So each answer's pkt-lines are read once, not once by each.
#[derive(Debug)]
pub struct WholeAt(AtomicU64);

impl WholeAt {
    /// Not whole (an answer of `u64::MAX` bytes never comes).
    const NOWHERE: u64 = u64::MAX;

    /// An answer not (yet) whole.
    pub fn new() -> WholeAt {
        WholeAt(AtomicU64::new(Self::NOWHERE))
    }

    /// `framing` has followed the answer so far. Relaxed: the upstream's body and the request
    /// line's are polled, and dropped, on one task.
    pub fn note(&self, framing: &AnswerFraming) {
        let at = if framing.ends_whole() {
            framing.followed
        } else {
            Self::NOWHERE
        };
        self.0.store(at, Ordering::Relaxed);
    }

    /// Whether the answer's first `handed` bytes are, for certain, all of it.
    pub fn is_at(&self, handed: u64) -> bool {
        self.0.load(Ordering::Relaxed) == handed
    }
}

impl Default for WholeAt {
    fn default() -> Self {
        WholeAt::new()
    }
}

/// What upload-pack sends on side-band channel 3 (and then dies) when the `pack-objects` it
/// runs fails mid-pack: killed (the OOM killer, an operator), or stopped on an object it
/// cannot read. It is the only thing upload-pack says on that channel, and never a refusal of
/// the client's request: the clone fails (`early EOF`), and the failure is the backend's. An
/// HTTP upstream ends such an answer cleanly (nginx + fcgiwrap do), and the embedded runner
/// sees it as git's exit status 1; without this the former was logged as a request git
/// refused, `outcome=complete`, and not counted as an upstream error.
const PACK_FAILED: &[u8] = b"aborting due to possible repository corruption";

/// Pure: whether the text of git's error line (`refusal`, after its channel byte or `ERR `) is
/// upload-pack's [`PACK_FAILED`].
fn said_pack_failed(text: &[u8]) -> bool {
    text.windows(PACK_FAILED.len()).any(|w| w == PACK_FAILED)
}

/// Pure: whether a payload beginning with `head` is git's own error: `ERR ...`, or side-band
/// channel 3.
fn is_error(head: &[u8]) -> bool {
    head.first() == Some(&3) || head.starts_with(b"ERR ")
}

/// Pure: the value of one hex digit, as git reads a pkt-line's length (either case).
fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(content_type: &str, encoding: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        if let Some(e) = encoding {
            h.insert(CONTENT_ENCODING, HeaderValue::from_str(e).unwrap());
        }
        h
    }

    fn result() -> AnswerFraming {
        let h = headers("application/x-git-upload-pack-result", None);
        AnswerFraming::for_answer(StatusCode::OK, &h).unwrap()
    }

    fn push_result() -> AnswerFraming {
        let h = headers("application/x-git-receive-pack-result", None);
        AnswerFraming::for_answer(StatusCode::OK, &h).unwrap()
    }

    fn advertisement() -> AnswerFraming {
        let h = headers("application/x-git-upload-pack-advertisement", None);
        AnswerFraming::for_answer(StatusCode::OK, &h).unwrap()
    }

    fn push_advertisement() -> AnswerFraming {
        let h = headers("application/x-git-receive-pack-advertisement", None);
        AnswerFraming::for_answer(StatusCode::OK, &h).unwrap()
    }

    use crate::pkt_line::encode as pkt;

    /// A protocol-v0 clone's answer: `NAK`, side-band pack data and progress, a flush.
    fn whole_pack_answer() -> Vec<u8> {
        let mut a = pkt(b"NAK\n");
        let mut data = vec![1u8];
        data.extend(std::iter::repeat_n(0xA5, 65515));
        a.extend(pkt(&data));
        a.extend(pkt(b"\x02Total 3 (delta 0), reused 0 (delta 0)\n"));
        a.extend(pkt(b"\x01PACK-tail"));
        a.extend(b"0000");
        a
    }

    /// `f` after following `answer` fed in pieces of `size` bytes.
    fn followed(mut f: AnswerFraming, answer: &[u8], size: usize) -> AnswerFraming {
        for piece in answer.chunks(size) {
            f.feed(piece);
        }
        f
    }

    /// `answer` fed in pieces of `size` bytes; the verdict at its end.
    fn fed_in(f: AnswerFraming, answer: &[u8], size: usize) -> Option<&'static str> {
        followed(f, answer, size).cut_short()
    }

    #[test]
    fn a_whole_pack_answer_is_whole_in_pieces_of_any_size() {
        let answer = whole_pack_answer();
        for size in [1, 2, 3, 4, 5, 7, 4096, 65520, answer.len()] {
            assert_eq!(fed_in(result(), &answer, size), None, "pieces of {size}");
        }
    }

    #[test]
    fn a_pack_answer_cut_anywhere_is_cut_short() {
        let answer = whole_pack_answer();
        // Every cut but the whole answer, in pieces of 1 and of 4 KiB.
        let mut cuts: Vec<usize> = (0..40).collect();
        cuts.extend((answer.len() - 80)..answer.len());
        cuts.extend([1000, 65519, 65520, 65521, 65528]);
        for cut in cuts {
            for size in [1, 4096] {
                let verdict = fed_in(result(), &answer[..cut], size);
                // Before the first side-band packet, a cut at a line's end (nothing, or `NAK`
                // alone) looks like an answer to a probe, or a negotiation round, which are
                // whole.
                if cut == 0 || cut == 8 {
                    assert_eq!(verdict, None, "cut at {cut}");
                    continue;
                }
                assert!(verdict.is_some(), "cut at {cut}, pieces of {size}");
            }
        }
    }

    #[test]
    fn each_kind_of_cut_is_named() {
        let answer = whole_pack_answer();
        let nak_and_two = 8 + 2;
        assert_eq!(
            fed_in(result(), &answer[..nak_and_two], 3),
            Some("it ended inside a pkt-line's length")
        );
        assert_eq!(
            fed_in(result(), &answer[..100], 3),
            Some("it ended inside a pkt-line")
        );
        assert_eq!(
            fed_in(result(), &answer[..answer.len() - 4], 3),
            Some("it ended without git's closing flush-pkt")
        );
    }

    /// A push's report without side-band, and protocol v2's answers (which carry no side-band
    /// before their pack), end with a flush: cut at a line's end, they are cut short.
    #[test]
    fn a_report_or_a_v2_answer_cut_between_its_lines_is_cut_short() {
        let mut report = pkt(b"unpack ok\n");
        report.extend(pkt(b"ok refs/heads/main\n"));
        report.extend(pkt(b"ok refs/tags/v1\n"));
        let mut ls_refs =
            pkt(b"1111111111111111111111111111111111111111 HEAD symref-target:refs/heads/main\n");
        ls_refs.extend(pkt(
            b"1111111111111111111111111111111111111111 refs/heads/main\n",
        ));
        let mut acks = pkt(b"acknowledgments\n");
        acks.extend(pkt(b"ACK 1111111111111111111111111111111111111111\n"));
        acks.extend(pkt(b"ready\n"));
        acks.extend(b"0001");
        // A round with nothing in common (v2 says `NAK` or its `ACK`s, not both): the section
        // ends with a flush, and the client sends the next round.
        let mut not_ready = pkt(b"acknowledgments\n");
        not_ready.extend(pkt(b"NAK\n"));
        let fetch = result as fn() -> AnswerFraming;
        for (what, answer, follower) in [
            ("report", &report, push_result as fn() -> AnswerFraming),
            ("ls-refs", &ls_refs, fetch),
            ("v2 fetch", &acks, fetch),
            ("v2 fetch, not ready", &not_ready, fetch),
        ] {
            let ends: Vec<usize> = line_ends(answer);
            for &end in &ends[1..] {
                assert_eq!(
                    fed_in(follower(), &answer[..end], 3),
                    Some("it ended without git's closing flush-pkt"),
                    "{what} cut at {end}"
                );
            }
            let whole = [&answer[..], b"0000"].concat();
            assert_eq!(fed_in(follower(), &whole, 3), None, "{what} whole");
        }
    }

    /// Where each pkt-line of `answer` ends.
    fn line_ends(answer: &[u8]) -> Vec<usize> {
        let mut ends = vec![0];
        let mut at = 0;
        while at + 4 <= answer.len() {
            let len = usize::from_str_radix(std::str::from_utf8(&answer[at..at + 4]).unwrap(), 16)
                .unwrap();
            at += if len < 4 { 4 } else { len };
            ends.push(at);
        }
        ends
    }

    #[test]
    fn a_negotiation_round_without_a_flush_is_whole() {
        // A protocol-v0 stateless round: ACKs, then NAK, and git exits.
        let mut round = pkt(b"ACK 1111111111111111111111111111111111111111 common\n");
        round.extend(pkt(b"NAK\n"));
        assert_eq!(fed_in(result(), &round, 5), None);
        // A shallow fetch's round: its shallow lines and their flush first.
        let mut shallow = pkt(b"shallow 1111111111111111111111111111111111111111\n");
        shallow.extend(b"0000");
        shallow.extend(pkt(b"ACK 1111111111111111111111111111111111111111 ready\n"));
        assert_eq!(fed_in(result(), &shallow, 5), None);
        // Cut before its ACK or NAK, it is not a round that ended.
        let mut cut = pkt(b"shallow 1111111111111111111111111111111111111111\n");
        assert!(fed_in(result(), &cut, 5).is_some());
        cut.extend(b"0000");
        assert_eq!(fed_in(result(), &cut, 5), None, "a flush closes");
        assert_eq!(
            fed_in(push_result(), b"", 1),
            None,
            "an empty answer to a push (its client asked for no report)"
        );
        // git's answer to the probe (`0000`) its client sends before a request larger than
        // its POST buffer: nothing at all, from upload-pack as from receive-pack.
        assert_eq!(fed_in(result(), b"", 1), None, "an empty answer to a fetch");
        // A push's report is no negotiation: cut after a line, it is cut short.
        assert_eq!(
            fed_in(push_result(), &pkt(b"unpack ok\n"), 1),
            Some("it ended without git's closing flush-pkt")
        );
    }

    #[test]
    fn an_advertisement_must_end_with_its_flush() {
        let mut adv = pkt(b"# service=git-upload-pack\n");
        adv.extend(b"0000");
        adv.extend(pkt(
            b"1111111111111111111111111111111111111111 HEAD\0side-band-64k\n",
        ));
        assert_eq!(
            fed_in(advertisement(), &adv, 7),
            Some("it ended without git's closing flush-pkt")
        );
        // An empty line (`0004`) is a line, not a flush.
        let empty_last = [&adv[..], b"0004"].concat();
        assert_eq!(
            fed_in(advertisement(), &empty_last, 7),
            Some("it ended without git's closing flush-pkt")
        );
        adv.extend(b"0000");
        assert_eq!(fed_in(advertisement(), &adv, 7), None);
        assert_eq!(
            fed_in(advertisement(), b"", 1),
            Some("it ended without git's closing flush-pkt"),
            "an empty advertisement"
        );
    }

    #[test]
    fn protocol_v2_delimiters_and_response_ends_are_followed() {
        // ls-refs ends with a flush; fetch has a delimiter between sections.
        let mut fetch = pkt(b"acknowledgments\n");
        fetch.extend(pkt(b"ready\n"));
        fetch.extend(b"0001");
        fetch.extend(pkt(b"packfile\n"));
        fetch.extend(pkt(b"\x01PACK..."));
        assert_eq!(
            fed_in(result(), &fetch, 2),
            Some("it ended without git's closing flush-pkt")
        );
        let mut delimited = fetch.clone();
        delimited.extend(b"0001");
        assert!(
            fed_in(result(), &delimited, 2).is_some(),
            "a delimiter ends nothing"
        );
        let mut ended = fetch.clone();
        ended.extend(b"0002");
        assert_eq!(fed_in(result(), &ended, 2), None, "a response end closes");
        fetch.extend(b"0000");
        assert_eq!(fed_in(result(), &fetch, 2), None);
    }

    #[test]
    fn gits_own_error_as_the_last_line_is_whole() {
        let mut answer = pkt(b"NAK\n");
        answer.extend(pkt(b"\x01PACK..."));
        answer.extend(pkt(
            b"\x03fatal: the repository is in maintenance, try again later",
        ));
        assert_eq!(fed_in(result(), &answer, 6), None);
        let err = pkt(b"ERR upload-pack: not our ref 1111111111111111111111111111111111111111");
        assert_eq!(fed_in(advertisement(), &err, 6), None);
        // What git said is kept, in pieces of any size.
        for size in [1, 3, 4, 5, 6, 4096] {
            assert_eq!(
                followed(result(), &answer, size).refusal().as_deref(),
                Some("fatal: the repository is in maintenance, try again later"),
                "pieces of {size}"
            );
            assert_eq!(
                followed(advertisement(), &err, size).refusal().as_deref(),
                Some("upload-pack: not our ref 1111111111111111111111111111111111111111"),
                "pieces of {size}"
            );
        }
        // A line merely starting with E is no error.
        let mut adv = pkt(b"# service=git-upload-pack\n");
        adv.extend(pkt(b"ERRx\n"));
        assert!(fed_in(advertisement(), &adv, 6).is_some());
    }

    /// upload-pack's word that its pack-objects failed mid-pack (what it sends, trailing NUL
    /// included, before it dies) ends a clone that failed, by the backend's fault: cut short,
    /// and no refusal; in pieces of any size, and as a protocol-v2 answer's last line too.
    #[test]
    fn upload_packs_word_that_its_pack_failed_is_a_cut_not_a_refusal() {
        let abort =
            pkt(b"\x03aborting due to possible repository corruption on the remote side.\0");
        let mut v0 = pkt(b"NAK\n");
        v0.extend(pkt(b"\x01PACK..."));
        v0.extend(&abort);
        let mut v2 = pkt(b"packfile\n");
        v2.extend(pkt(b"\x01PACK..."));
        v2.extend(&abort);
        for answer in [&v0, &v2] {
            for size in [1, 3, 4, 5, 6, 4096] {
                let f = followed(result(), answer, size);
                assert!(
                    f.cut_short()
                        .is_some_and(|why| why.contains("pack-objects failed")),
                    "pieces of {size}: {:?}",
                    f.cut_short()
                );
                assert_eq!(f.refusal(), None, "pieces of {size}");
            }
        }
        // Another channel-3 message is still git's refusal, told whole, its NUL not kept.
        let other = [&pkt(b"NAK\n")[..], &pkt(b"\x03not today\0")].concat();
        assert_eq!(fed_in(result(), &other, 3), None);
        assert_eq!(
            followed(result(), &other, 3).refusal().as_deref(),
            Some("not today")
        );
    }

    #[test]
    fn only_a_last_error_line_is_a_refusal_and_its_text_is_bounded() {
        let f = |answer: &[u8]| followed(result(), answer, answer.len().max(1)).refusal();
        // A short channel-3 message, all of it in the line's head.
        assert_eq!(f(&pkt(b"\x03no\n")).as_deref(), Some("no"));
        assert_eq!(f(&pkt(b"\x03")).as_deref(), Some(""));
        // An error followed by other lines, or by the closing flush, is not the last line.
        let err = pkt(b"ERR upload-pack: not our ref");
        assert_eq!(f(&[&err[..], &pkt(b"\x01PACK")].concat()), None);
        assert_eq!(f(&[&err[..], b"0000"].concat()), None);
        // Cut inside the error line: no refusal (and a cut).
        assert_eq!(f(&err[..err.len() - 2]), None);
        // A whole error line, then a cut inside the next line or its length: the answer did not
        // end with git's error, so git said nothing of it.
        assert_eq!(f(&[&err[..], &pkt(b"\x01PACK")[..6]].concat()), None);
        assert_eq!(f(&[&err[..], b"00"].concat()), None);
        // No error at all.
        assert_eq!(f(&pkt(b"NAK\n")), None);
        // A long one is kept to its first REFUSAL_MAX bytes.
        let long = [&b"ERR "[..], &vec![b'x'; 3000]].concat();
        let kept = f(&pkt(&long)).unwrap();
        assert_eq!(kept.len(), REFUSAL_MAX);
        // The last of two errors is the one said.
        let two = [&pkt(b"\x03first")[..], &pkt(b"\x03second")].concat();
        assert_eq!(f(&two).as_deref(), Some("second"));
    }

    /// A push's advertisement (`git-receive-pack`) ends with its flush as a fetch's does: empty,
    /// or cut after a line, it is cut short.
    #[test]
    fn a_pushs_advertisement_must_end_with_its_flush_too() {
        let mut adv = pkt(b"# service=git-receive-pack\n");
        adv.extend(b"0000");
        adv.extend(pkt(
            b"1111111111111111111111111111111111111111 refs/heads/main\0report-status\n",
        ));
        assert_eq!(
            fed_in(push_advertisement(), b"", 1),
            Some("it ended without git's closing flush-pkt"),
            "an empty advertisement"
        );
        assert_eq!(
            fed_in(push_advertisement(), &adv, 5),
            Some("it ended without git's closing flush-pkt")
        );
        adv.extend(b"0000");
        assert_eq!(fed_in(push_advertisement(), &adv, 5), None);
    }

    /// Only a fetch has negotiation rounds: receive-pack writes no `ACK` or `NAK`, so a push's
    /// answer that stops after such a line stopped short of its flush.
    #[test]
    fn a_pushs_answer_is_never_a_negotiation_round() {
        for line in [
            &b"NAK\n"[..],
            b"ACK 1111111111111111111111111111111111111111 common\n",
        ] {
            assert_eq!(
                fed_in(push_result(), &pkt(line), 3),
                Some("it ended without git's closing flush-pkt"),
                "{line:?}"
            );
            assert_eq!(fed_in(result(), &pkt(line), 3), None, "{line:?}");
        }
    }

    /// Once a side-band packet has come (of any channel: data, progress or an error), the
    /// answer is past its negotiation: a line that looks like an `ACK` or `NAK` after it ends
    /// no round, and without the flush the answer is cut short.
    #[test]
    fn after_a_side_band_packet_an_ack_or_nak_ends_nothing() {
        for channel in [1u8, 2, 3] {
            let mut answer = pkt(b"NAK\n");
            answer.extend(pkt(&[&[channel][..], b"Enumerating objects: 3\n"].concat()));
            answer.extend(pkt(b"NAK\n"));
            assert_eq!(
                fed_in(result(), &answer, 7),
                Some("it ended without git's closing flush-pkt"),
                "channel {channel}"
            );
        }
    }

    /// Protocol v2's `acknowledgments` header is its answer's first line; a line starting so
    /// anywhere later opens no sections, and a v0 round that ends with `ACK` or `NAK` after it
    /// is whole.
    #[test]
    fn only_an_answer_that_opens_with_acknowledgments_has_sections() {
        let mut round = pkt(b"ACK 1111111111111111111111111111111111111111 common\n");
        round.extend(pkt(b"acknowledgments\n"));
        round.extend(pkt(b"NAK\n"));
        assert_eq!(fed_in(result(), &round, 5), None);
    }

    /// An empty line (`0004`) after a flush is a line, and the answer then ends without its
    /// flush, whatever came before.
    #[test]
    fn an_empty_line_after_a_flush_leaves_the_answer_unclosed() {
        for follower in [result as fn() -> AnswerFraming, push_result, advertisement] {
            let f = follower();
            assert_eq!(
                fed_in(f.clone(), b"00000004", 1),
                Some("it ended without git's closing flush-pkt"),
                "{:?}",
                f.kind
            );
            assert_eq!(fed_in(f.clone(), b"00040000", 1), None, "{:?}", f.kind);
        }
    }

    /// A line shorter than the four bytes that say its kind (a channel-3 message of a word,
    /// `NAK` without its newline) is read from its own bytes alone, whatever follows it in the
    /// same piece.
    #[test]
    fn a_line_shorter_than_its_head_is_read_from_its_own_bytes() {
        let f = |answer: &[u8], size: usize| followed(result(), answer, size);
        for size in [1, 2, 5, 4096] {
            for (message, said) in [(&b"\x03"[..], ""), (b"\x03n", "n"), (b"\x03no", "no")] {
                let alone = f(&pkt(message), size);
                assert_eq!(alone.refusal().as_deref(), Some(said), "pieces of {size}");
                assert_eq!(alone.cut_short(), None, "pieces of {size}");
                // Another error line after it is the one said; a flush after it closes.
                let two = [&pkt(message)[..], &pkt(b"\x03why")].concat();
                assert_eq!(f(&two, size).refusal().as_deref(), Some("why"));
                let closed = [&pkt(message)[..], b"0000"].concat();
                assert_eq!(f(&closed, size).refusal(), None, "pieces of {size}");
                assert_eq!(f(&closed, size).cut_short(), None, "pieces of {size}");
            }
            let nak = [&pkt(b"NAK")[..], &pkt(b"\x01PACK")].concat();
            assert_eq!(
                f(&nak, size).cut_short(),
                Some("it ended without git's closing flush-pkt"),
                "pieces of {size}"
            );
        }
    }

    /// A length's four digits are read as git reads them: every hex digit, in either case.
    #[test]
    fn every_hex_digit_of_a_length_is_read_in_either_case() {
        for length in 5..=0x1ffusize {
            let payload = vec![b'x'; length - 4];
            for digits in [format!("{length:04x}"), format!("{length:04X}")] {
                let line = [digits.as_bytes(), &payload].concat();
                assert_eq!(
                    fed_in(advertisement(), &[&line[..], b"0000"].concat(), 4096),
                    None,
                    "{digits}"
                );
                assert_eq!(
                    fed_in(advertisement(), &line[..line.len() - 1], 4096),
                    Some("it ended inside a pkt-line"),
                    "{digits}"
                );
            }
        }
    }

    #[test]
    fn what_is_not_pkt_lines_gets_no_verdict() {
        // A pack without side-band follows NAK raw; it is cut short or not, nobody can say.
        let mut raw = pkt(b"NAK\n");
        raw.extend(b"PACK\0\0\0\x02\0\0\0\x03");
        assert_eq!(fed_in(result(), &raw, 3), None);
        // Lengths git never writes: 3, and past the maximum.
        assert_eq!(fed_in(advertisement(), b"0003", 1), None);
        assert_eq!(fed_in(advertisement(), b"fff1xxxx", 1), None);
        // The maximum itself is a line.
        let mut max = format!("{LARGE_PACKET_MAX:04x}").into_bytes();
        max.extend(vec![b'x'; usize::from(LARGE_PACKET_MAX) - 4]);
        assert_eq!(
            fed_in(advertisement(), &max, 4096),
            Some("it ended without git's closing flush-pkt")
        );
        // Upper-case hex is read as git reads it.
        assert_eq!(
            fed_in(result(), b"000A\x01abcde", 1),
            Some("it ended without git's closing flush-pkt")
        );
        assert_eq!(
            fed_in(result(), b"000A\x01abcd", 1),
            Some("it ended inside a pkt-line")
        );
    }

    #[test]
    fn only_gits_uncompressed_200_answers_are_followed() {
        let ok = StatusCode::OK;
        for t in [
            "application/x-git-upload-pack-result",
            "application/x-git-receive-pack-result",
            "application/x-git-receive-pack-advertisement",
            "Application/X-Git-Upload-Pack-Advertisement; charset=utf-8",
            // Spaces around the parameters' `;` are the server's choice too (RFC 9110's OWS).
            "application/x-git-upload-pack-result ; charset=utf-8",
        ] {
            assert!(
                AnswerFraming::for_answer(ok, &headers(t, None)).is_some(),
                "{t}"
            );
            // A content coding's name is read in any case (RFC 9110, section 8.4.1).
            for identity in ["identity", "Identity", "IDENTITY"] {
                let identity = headers(t, Some(identity));
                assert!(AnswerFraming::for_answer(ok, &identity).is_some(), "{t}");
            }
            assert!(AnswerFraming::for_answer(ok, &headers(t, Some("gzip"))).is_none());
            let not_found = StatusCode::NOT_FOUND;
            assert!(AnswerFraming::for_answer(not_found, &headers(t, None)).is_none());
        }
        for t in [
            "text/plain",
            "application/x-git-upload-pack-request",
            "application/octet-stream",
        ] {
            assert!(
                AnswerFraming::for_answer(ok, &headers(t, None)).is_none(),
                "{t}"
            );
        }
        assert!(AnswerFraming::for_answer(ok, &HeaderMap::new()).is_none());
    }

    /// An answer is whole, for a client that left at its last flush, only at the flush that
    /// ends it: not at the one after smart HTTP's `# service=` line, nor after a v0 fetch's
    /// shallow list, nor at a v0 negotiation's `NAK`.
    #[test]
    fn an_answer_ends_whole_only_at_its_own_last_flush() {
        let framing = |content_type: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, content_type.parse().unwrap());
            AnswerFraming::for_answer(StatusCode::OK, &headers).unwrap()
        };
        let advertisement = "application/x-git-upload-pack-advertisement";
        let result = "application/x-git-upload-pack-result";
        let mut f = framing(advertisement);
        f.feed(b"001e# service=git-upload-pack\n0000");
        assert!(!f.ends_whole(), "the flush after the service line");
        f.feed(b"003d0123456789012345678901234567890123456789 refs/heads/main\n");
        assert!(!f.ends_whole(), "inside the refs");
        f.feed(b"0000");
        assert!(f.ends_whole());
        // Protocol v2's advertisement has no service line: its first flush ends it.
        let mut f = framing(advertisement);
        f.feed(b"000eversion 2\n0000");
        assert!(f.ends_whole());
        // A v0 fetch: shallow list, flush, NAK, then the pack on side-band, then the flush.
        let mut f = framing(result);
        f.feed(b"0035shallow 0123456789012345678901234567890123456789\n0000");
        assert!(!f.ends_whole(), "the flush after the shallow list");
        f.feed(b"0008NAK\n");
        assert!(!f.ends_whole(), "a NAK");
        f.feed(b"0009\x01PACK0000");
        assert!(f.ends_whole());
        // A bare flush first (an empty shallow list, or an empty ls-refs): not told apart.
        let mut f = framing(result);
        f.feed(b"0000");
        assert!(!f.ends_whole());
        // Cut inside a line, or before any flush: not whole.
        let mut f = framing(result);
        f.feed(b"0009\x01PA");
        assert!(!f.ends_whole());
        // A push's report ends at its flush.
        let mut f = framing("application/x-git-receive-pack-result");
        f.feed(b"000eunpack ok\n0000");
        assert!(f.ends_whole());
    }

    /// The request line is told the answer is whole only for as many bytes as the upstream
    /// followed up to its last flush: not for fewer (a frame held back, not handed on yet),
    /// nor once more came.
    #[test]
    fn an_answer_is_whole_to_the_request_line_only_where_all_followed_was_handed_on() {
        let answer = whole_pack_answer();
        let (before, flush) = answer.split_at(answer.len() - 4);
        let mut f = result();
        let whole = WholeAt::new();
        assert!(!whole.is_at(0), "nothing came");
        f.feed(before);
        whole.note(&f);
        assert!(!whole.is_at(before.len() as u64), "before its flush");
        f.feed(flush);
        whole.note(&f);
        assert!(whole.is_at(answer.len() as u64));
        assert!(!whole.is_at(before.len() as u64), "its flush not handed on");
        f.feed(b"0005x");
        whole.note(&f);
        assert!(!whole.is_at(answer.len() as u64), "more came after it");
        assert!(!whole.is_at(answer.len() as u64 + 5));
    }
}
