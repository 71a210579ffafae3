//! git's pkt-lines (four hex digits of length, then the payload), followed through the pieces
//! a body comes in: for a push's commands at the start of its request ([`crate::push_commands`])
//! and receive-pack's report in its answer (`upstream::cgi::report`). One reader, so that both
//! read the framing the same way; it holds at most one unfinished pkt-line.

/// One pkt-line.
#[derive(Debug, PartialEq, Eq)]
pub enum Pkt<'a> {
    /// A line and its payload.
    Line(&'a [u8]),
    /// `0000`: the end of a list.
    Flush,
    /// `0001`–`0003`: protocol v2's delimiters, which no list here has.
    Delimiter,
}

/// What came was no pkt-line.
#[derive(Debug, PartialEq, Eq)]
pub struct NotPktLines;

/// Follows pkt-lines through the pieces they come in.
#[derive(Debug, Default)]
pub struct PktLines {
    partial: Vec<u8>,
}

impl PktLines {
    /// Gives each whole pkt-line `data` completes to `each`, which returns whether to go on.
    /// Once it says no, the rest of `data` is dropped; so is everything once what comes is no
    /// pkt-line (`Err`).
    pub fn feed(
        &mut self,
        data: &[u8],
        mut each: impl FnMut(Pkt<'_>) -> bool,
    ) -> Result<(), NotPktLines> {
        self.partial.extend_from_slice(data);
        let mut at = 0;
        let result = loop {
            let Some(head) = self.partial.get(at..at + 4) else {
                break Ok(());
            };
            let Some(length) = std::str::from_utf8(head)
                .ok()
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| usize::from_str_radix(h, 16).ok())
            else {
                break Err(NotPktLines);
            };
            let (pkt, end) = match length {
                0 => (Pkt::Flush, at + 4),
                1..=3 => (Pkt::Delimiter, at + 4),
                _ => match self.partial.get(at + 4..at + length) {
                    Some(payload) => (Pkt::Line(payload), at + length),
                    None => break Ok(()),
                },
            };
            if !each(pkt) {
                at = self.partial.len();
                break Ok(());
            }
            at = end;
        };
        if result.is_err() {
            self.partial = Vec::new();
        } else {
            self.partial.drain(..at);
        }
        result
    }
}

/// One pkt-line of `payload` (its four hex digits of length, then the payload): how the
/// tests of every module that reads git's framing write the answers they feed it.
#[cfg(test)]
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut line = format!("{:04x}", payload.len() + 4).into_bytes();
    line.extend_from_slice(payload);
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_anywhere_are_read_whole_until_told_to_stop() {
        let body = b"0009abcde00000009axyz\n0005zPACK";
        for step in [1, 3, body.len()] {
            let mut lines = PktLines::default();
            let mut seen = Vec::new();
            let mut result = Ok(());
            for piece in body.chunks(step) {
                result = lines.feed(piece, |pkt| {
                    seen.push(format!("{pkt:?}"));
                    true
                });
                if result.is_err() {
                    break;
                }
            }
            assert_eq!(result, Err(NotPktLines), "step {step}");
            assert_eq!(
                seen,
                [
                    "Line([97, 98, 99, 100, 101])",
                    "Flush",
                    "Line([97, 120, 121, 122, 10])",
                    "Line([122])"
                ],
                "step {step}"
            );
        }
        // Told to stop at the flush: what follows it (a pack) is not read.
        let mut lines = PktLines::default();
        let mut seen = 0;
        let stopped = lines.feed(b"0005x0000PACK", |pkt| {
            seen += 1;
            pkt != Pkt::Flush
        });
        assert_eq!((stopped, seen), (Ok(()), 2));
    }

    /// `0001`, `0002` and `0003` are all delimiters, each four bytes long.
    #[test]
    fn the_three_delimiter_lengths_are_delimiters() {
        let mut lines = PktLines::default();
        let mut seen = Vec::new();
        let read = lines.feed(b"0001000200030000", |pkt| {
            seen.push(format!("{pkt:?}"));
            true
        });
        assert_eq!(read, Ok(()));
        assert_eq!(seen, ["Delimiter", "Delimiter", "Delimiter", "Flush"]);
    }

    /// What follows the line the reader was told to stop at is dropped for good: the next
    /// piece is read on its own.
    #[test]
    fn what_follows_a_stop_is_not_read_later() {
        let mut lines = PktLines::default();
        let stopped = lines.feed(b"0005x0000PACK", |pkt| pkt != Pkt::Flush);
        assert_eq!(stopped, Ok(()));
        let mut seen = Vec::new();
        let next = lines.feed(b"0005y", |pkt| {
            seen.push(format!("{pkt:?}"));
            true
        });
        assert_eq!((next, seen), (Ok(()), vec!["Line([121])".to_string()]));
    }

    /// After what was no pkt-line, nothing of it is kept: the next piece is read on its own.
    #[test]
    fn what_was_no_pkt_line_is_dropped() {
        let mut lines = PktLines::default();
        assert_eq!(lines.feed(b"zzzz", |_| true), Err(NotPktLines));
        let mut seen = 0;
        assert_eq!(
            lines.feed(b"0005y", |_| {
                seen += 1;
                true
            }),
            Ok(())
        );
        assert_eq!(seen, 1);
    }

    /// A length is four hex digits and nothing else: a sign in front (which Rust's number
    /// parser would take) is no pkt-line.
    #[test]
    fn a_length_with_a_sign_is_no_pkt_line() {
        let mut lines = PktLines::default();
        let mut seen = 0;
        let read = lines.feed(b"+00aabcdef", |_| {
            seen += 1;
            true
        });
        assert_eq!((read, seen), (Err(NotPktLines), 0));
    }
}
