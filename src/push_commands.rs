//! What a push asked to change, read from the start of its request body, for the request's log
//! line (`refs="refs/heads/main 1a2b3c4..5d6e7f8, refs/heads/old deleted (was 89abcde)"`).
//!
//! Why: after a leak, "which refs did this token change" must have an answer. git's own
//! reflogs do not give it — a tag is not in them, and deleting a branch deletes its reflog —
//! and the request line alone says only that a `git-receive-pack` POST was answered 200.
//!
//! A push's body begins with its commands, one pkt-line each (`<old> <new> <ref>`, the first
//! followed by `\0` and the capabilities), before a flush-pkt and the pack. Only those lines
//! are read, as the body passes on its way to the backend: nothing is held back or changed,
//! at most [`READ_AT_MOST`] bytes are looked at, and at most [`LISTED`] commands are kept
//! (the rest are counted). A signed push's commands are inside its certificate, and are read
//! from its text as git reads them (`Cert`). The list is what the client asked for; whether each ref was
//! changed is the backend's answer (the CGI backend logs a push it refused in part).
//!
//! A body sent gzip-encoded (`Content-Encoding: gzip`, which git never sends for a push, but
//! which the backend decodes and applies) is inflated as it passes, for these lines only
//! ([`PushCommands::gzipped`]): left unread, any write token could keep its refs out of the log
//! by compressing its push. What is inflated is bounded as a plain body's reading is
//! ([`READ_AT_MOST`] bytes of it), and is held 32 KiB at a time (`INFLATED_AT_ONCE`), however
//! much a few compressed bytes stand for.

use std::fmt;
use std::io::Write;

use crate::pkt_line::{Pkt, PktLines};

/// The most commands named in the log line; the rest are counted.
pub const LISTED: usize = 20;

/// How much of the body is looked at for commands: a mirror push of 100,000 refs sends some
/// 10 MB of them, which need not all be read.
pub const READ_AT_MOST: u64 = 1024 * 1024;

/// The most of a ref name kept (a client chooses it).
const NAME_KEPT: usize = 200;

/// The most inflated bytes of a gzip-encoded body held before they are read: a few compressed
/// bytes can stand for a thousand times as many.
const INFLATED_AT_ONCE: usize = 32 * 1024;

/// The most bytes of entries the line lists: with its end (`, and N more`, at most some 100
/// bytes) it stays within what a log field keeps (`log_value::TEXT_KEPT`, 2 KiB), so that long
/// names never have the field cut before its count — which a hand-made push could use to keep
/// refs after ten long-named ones out of the log, unnamed and uncounted. Past it, entries are
/// counted with the rest; the first is always listed (at most some 850 bytes).
const LIST_BYTES: usize = 1792;

/// The most of one line of a push certificate held until its end comes: a command with a
/// ref name of [`NAME_KEPT`] characters, and room to spare (no ref git can write is longer
/// than a path, 4 KiB).
const CERT_LINE_KEPT: usize = 8 * 1024;

/// One command: a ref, from `old` to `new` (all zeros: not there).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Command {
    name: String,
    old: String,
    new: String,
}

/// The commands of one push, read as its body passes (see the module's doc).
#[derive(Debug, Default)]
pub struct PushCommands {
    commands: Commands,
    pkt_lines: PktLines,
    /// A signed push's certificate: its text so far, and whether its lines are coming.
    cert: Cert,
    in_cert: bool,
    /// Bytes looked at so far (inflated ones, for a gzip-encoded body).
    read: u64,
    end: Option<End>,
    /// A gzip-encoded body's inflater, while its commands are read.
    gzip: Option<Box<flate2::write::GzDecoder<Inflated>>>,
}

/// Where a gzip-encoded body's inflater puts what it inflates: at most [`INFLATED_AT_ONCE`]
/// bytes, then "would block" until they are read, which the inflater takes as "try again"
/// (it keeps the rest, and writes it first at its next call).
#[derive(Debug, Default)]
struct Inflated(Vec<u8>);

impl Write for Inflated {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = INFLATED_AT_ONCE.saturating_sub(self.0.len());
        if room == 0 && !buf.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(room);
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The commands read so far.
#[derive(Debug, Default)]
struct Commands {
    listed: Vec<Command>,
    /// Every command seen, listed or not.
    count: u64,
    /// Pkt-lines read, commands or not.
    lines: u64,
}

/// Why no more of the body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The flush-pkt after the commands: the list is whole.
    Flush,
    /// [`READ_AT_MOST`] bytes were read before it.
    TooLong,
    /// What came was no pkt-line (a hand-made body).
    NotPktLines,
    /// The body said gzip-encoded could not be inflated: the backend cannot read it either.
    NotGzip,
}

impl PushCommands {
    /// The commands of a push whose body is gzip-encoded (`Content-Encoding: gzip` or
    /// `x-gzip`), read from it as it is inflated.
    pub fn gzipped() -> PushCommands {
        PushCommands {
            gzip: Some(Box::new(flate2::write::GzDecoder::new(Inflated::default()))),
            ..PushCommands::default()
        }
    }

    /// Whether nothing more is to be read: the rest of the body passes untouched.
    pub fn is_done(&self) -> bool {
        self.end.is_some()
    }

    /// Look at the next bytes of the body.
    pub fn feed(&mut self, data: &[u8]) {
        if self.end.is_some() {
            return;
        }
        match self.gzip.take() {
            Some(mut gzip) => {
                self.inflate(&mut gzip, data);
                if self.end.is_none() {
                    self.gzip = Some(gzip);
                }
            }
            None => self.read(data),
        }
    }

    /// The next bytes of a gzip-encoded body, inflated and read [`INFLATED_AT_ONCE`] bytes at
    /// a time, until they are all taken or nothing more is to be read.
    fn inflate(&mut self, gzip: &mut flate2::write::GzDecoder<Inflated>, mut data: &[u8]) {
        while self.end.is_none() {
            // With all of `data` taken, what the inflater still holds is put out too, so that
            // a body's last bytes are read without a call after them.
            let step = if data.is_empty() {
                gzip.flush().map(|()| 0)
            } else {
                gzip.write(data)
            };
            let inflated = std::mem::take(&mut gzip.get_mut().0);
            self.read(&inflated);
            match step {
                // All of it, or the end of the gzip stream (what follows it is not read).
                Ok(0) => break,
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    // What was inflated before the bytes that could not be is read first (the
                    // inflater holds at most as much as `Inflated` takes: it fits).
                    let _ = gzip.flush();
                    let inflated = std::mem::take(&mut gzip.get_mut().0);
                    self.read(&inflated);
                    if self.end.is_none() {
                        self.end = Some(End::NotGzip);
                    }
                }
            }
        }
    }

    /// The next bytes of the body as the backend reads them (inflated, for a gzip-encoded one).
    fn read(&mut self, data: &[u8]) {
        if self.end.is_some() {
            return;
        }
        let room = READ_AT_MOST.saturating_sub(self.read);
        let take = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.read += take as u64;
        let commands = &mut self.commands;
        let (cert, in_cert) = (&mut self.cert, &mut self.in_cert);
        let mut stop = None;
        let read = self.pkt_lines.feed(&data[..take], |pkt| match pkt {
            Pkt::Line(payload) => {
                match *in_cert {
                    // Its lines pause at this one (not chomped: git reads them whole); a
                    // `push-cert` later goes on with the same text.
                    true if up_to_a_nul(payload) == b"push-cert-end\n" => {
                        commands.lines += 1;
                        *in_cert = false;
                    }
                    true => {
                        commands.lines += 1;
                        cert.text(up_to_a_nul(payload), commands);
                    }
                    false if opens_a_certificate(payload) => {
                        commands.lines += 1;
                        *in_cert = true;
                    }
                    false => commands.line(payload),
                }
                true
            }
            // The list's end is the text's: its last line, if it has no line end, is read
            // then, as git reads the certificate then.
            Pkt::Flush => {
                cert.end(commands);
                stop = Some(End::Flush);
                false
            }
            Pkt::Delimiter => {
                // Inside a certificate, git dies on it; outside, the list ends.
                if !*in_cert {
                    cert.end(commands);
                }
                stop = Some(End::NotPktLines);
                false
            }
        });
        self.end = match (read, stop) {
            (Err(_), _) => Some(End::NotPktLines),
            (Ok(()), Some(end)) => Some(end),
            (Ok(()), None) if take < data.len() || self.read >= READ_AT_MOST => Some(End::TooLong),
            (Ok(()), None) => None,
        };
    }
}

impl Commands {
    /// One pkt-line's payload: a command, or a line around them (`shallow <oid>`), which is
    /// passed over.
    fn line(&mut self, payload: &[u8]) {
        self.lines += 1;
        let line = payload.split(|&b| b == 0).next().unwrap_or_default();
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        self.command(line);
    }

    /// One line, without its line end: a command (up to a NUL, as git's C strings end
    /// there), or else passed over.
    fn command(&mut self, line: &[u8]) {
        let line = line.split(|&b| b == 0).next().unwrap_or_default();
        let mut words = line.splitn(3, |&b| b == b' ');
        let (Some(old), Some(new), Some(name)) = (words.next(), words.next(), words.next()) else {
            return;
        };
        let is_id =
            |w: &[u8]| (w.len() == 40 || w.len() == 64) && w.iter().all(u8::is_ascii_hexdigit);
        if !is_id(old) || !is_id(new) || name.is_empty() {
            return;
        }
        self.count += 1;
        if self.listed.len() < LISTED {
            // A name git would refuse (a space, a control character, `..`: a hand-made push)
            // is quoted and said to be one, so that it cannot read as more entries of the list;
            // one that is no UTF-8 is said so, its bytes shown as they can be.
            let name = match std::str::from_utf8(name) {
                Ok(text) if is_a_ref_name(text) => std::borrow::Cow::Borrowed(text),
                Ok(text) => std::borrow::Cow::Owned(format!("<not a ref name: {text:?}>")),
                Err(_) => std::borrow::Cow::Owned(format!(
                    "<a ref name that is not UTF-8: {:?}>",
                    String::from_utf8_lossy(name)
                )),
            };
            let name = match name.char_indices().nth(NAME_KEPT) {
                Some((cut, _)) => format!("{}...", &name[..cut]),
                None => name.into_owned(),
            };
            self.listed.push(Command {
                name,
                old: String::from_utf8_lossy(old).into_owned(),
                new: String::from_utf8_lossy(new).into_owned(),
            });
        }
    }
}

/// A certificate's pkt-line as git adds it to the certificate's text, and compares it with
/// `push-cert-end`: as a C string, up to its first NUL. What follows a NUL is not in git's
/// text; read, a line end there split a command git reads whole.
fn up_to_a_nul(payload: &[u8]) -> &[u8] {
    payload.split(|&b| b == 0).next().unwrap_or_default()
}

/// Whether a pkt-line's payload opens a signed push's certificate: `push-cert`, as git
/// compares it (its line end taken off, then up to the capabilities' NUL).
fn opens_a_certificate(payload: &[u8]) -> bool {
    let line = payload.strip_suffix(b"\n").unwrap_or(payload);
    line.split(|&b| b == 0).next() == Some(b"push-cert")
}

/// A signed push's certificate: the pkt-lines between `push-cert` and `push-cert-end`.
///
/// Why: git (receive-pack's `queue_commands_from_cert`) takes a signed push's commands from
/// the certificate's text — its pkt-lines' payloads joined, then split at newlines: the lines
/// after the header's blank line, up to the signature — not from its pkt-lines one by one. Read
/// pkt-line by pkt-line, a hand-made push that split a command across two pkt-lines was
/// logged under the part of its name in the first (`re` for `refs/heads/x`, which git
/// deleted), and a header line written as a command was logged though git ignores it. A push
/// may send more than one `push-cert ... push-cert-end`: git joins them all into one text,
/// read at the list's end, so the second's lines go on where the first's stopped (a command
/// there with no header before it is one). Only the line being read is held, at most
/// [`CERT_LINE_KEPT`] bytes of it.
#[derive(Debug, Default)]
struct Cert {
    part: CertPart,
    /// The start of the line whose end has not come yet.
    partial: Vec<u8>,
    /// Whether any line has ended: the header ends at a blank line after its first (git looks
    /// for the first `\n\n`).
    began: bool,
}

/// Which part of a certificate its lines are in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum CertPart {
    /// `certificate version`, `pusher`, `pushee`, `nonce`, push options: no commands.
    #[default]
    Header,
    /// One command a line.
    Commands,
    /// From a line that begins an armoured signature (`-----BEGIN PGP SIGNATURE-----`, an SSH
    /// or X.509 one): no commands. git takes the last such line, and dies on any line in
    /// between that is no command — as the first such line is none —, so for a push it
    /// applies, the first is the last.
    Signature,
}

impl Cert {
    /// The next pkt-line's payload of the certificate's text.
    fn text(&mut self, mut payload: &[u8], commands: &mut Commands) {
        while let Some(at) = payload.iter().position(|&b| b == b'\n') {
            self.keep(&payload[..at]);
            let line = std::mem::take(&mut self.partial);
            self.line_ended(&line, commands);
            payload = &payload[at + 1..];
        }
        self.keep(payload);
    }

    /// The end of the certificate's text (the list's end): a last line without its line end
    /// is read too.
    fn end(&mut self, commands: &mut Commands) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line_ended(&line, commands);
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = CERT_LINE_KEPT.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn line_ended(&mut self, line: &[u8], commands: &mut Commands) {
        match self.part {
            CertPart::Header if line.is_empty() && self.began => self.part = CertPart::Commands,
            CertPart::Header | CertPart::Signature => {}
            CertPart::Commands if line.starts_with(b"-----BEGIN ") => {
                self.part = CertPart::Signature
            }
            CertPart::Commands => commands.command(line),
        }
        self.began = true;
    }
}

/// Whether git takes `name` for a ref's name (`git check-ref-format`'s rules, roughly): no
/// space, control character or `~^:?*[\`, no `..` or `@{`, not `@` alone, no empty or dot-led
/// component nor one ending in `.lock` (a lock file's name), and no `/` or `.` at the end.
fn is_a_ref_name(name: &str) -> bool {
    name != "@"
        && name
            .bytes()
            .all(|b| b > b' ' && b != 0x7f && !b"~^:?*[\\".contains(&b))
        && !name.contains("..")
        && !name.contains("@{")
        && !name.ends_with(['/', '.'])
        && name
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.') && !part.ends_with(".lock"))
}

/// An object id shortened as git shortens it in its own output.
fn short(id: &str) -> &str {
    &id[..7.min(id.len())]
}

fn is_zero(id: &str) -> bool {
    id.bytes().all(|b| b == b'0')
}

impl fmt::Display for PushCommands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Commands {
            listed,
            count,
            lines,
        } = &self.commands;
        let (count, lines) = (*count, *lines);
        let (mut shown, mut written) = (0u64, 0);
        for c in listed {
            let entry = match (is_zero(&c.old), is_zero(&c.new)) {
                (true, _) => format!("{} created at {}", c.name, short(&c.new)),
                (_, true) => format!("{} deleted (was {})", c.name, short(&c.old)),
                _ => format!("{} {}..{}", c.name, short(&c.old), short(&c.new)),
            };
            if shown > 0 && written + ", ".len() + entry.len() > LIST_BYTES {
                break;
            }
            if shown > 0 {
                f.write_str(", ")?;
                written += ", ".len();
            }
            f.write_str(&entry)?;
            written += entry.len();
            shown += 1;
        }
        let more = count - shown;
        let sep = if shown == 0 { "" } else { ", " };
        match self.end {
            Some(End::Flush) if count == 0 => f.write_str("none"),
            Some(End::Flush) if more > 0 => write!(f, "{sep}and {more} more"),
            Some(End::Flush) => Ok(()),
            Some(End::TooLong) => write!(
                f,
                "{sep}and more (the list was not read past its first {} KiB)",
                READ_AT_MOST / 1024
            ),
            Some(End::NotPktLines) if count == 0 && lines == 0 => {
                f.write_str("unread (the body does not begin with pkt-lines)")
            }
            Some(End::NotPktLines) if count == 0 => {
                f.write_str("none (its pkt-lines hold no command, then end in what is not one)")
            }
            Some(End::NotGzip) if count == 0 => f.write_str(
                "unread (the body is said gzip-encoded, and is not: the backend cannot read it \
                 either)",
            ),
            Some(End::NotGzip) => write!(
                f,
                "{sep}{}then what is not gzip (the backend cannot read it either)",
                if more > 0 {
                    format!("and {more} more, ")
                } else {
                    String::new()
                }
            ),
            // Commands past the listed ones are counted whatever ends the list: git applies a
            // list a delimiter ends as one a flush ends.
            Some(End::NotPktLines) if more > 0 => {
                write!(f, "{sep}and {more} more, then no more pkt-lines")
            }
            Some(End::NotPktLines) => write!(f, "{sep}then no more pkt-lines"),
            None if more > 0 => write!(
                f,
                "{sep}and {more} more, and maybe more (the body ended before its list did)"
            ),
            None => write!(
                f,
                "{sep}and maybe more (the body ended before its list did)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(payload: &str) -> String {
        format!("{:04x}{payload}", payload.len() + 4)
    }

    const ZERO: &str = "0000000000000000000000000000000000000000";
    const A: &str = "1a2b3c4d5e6f70811a2b3c4d5e6f70811a2b3c4d";
    const B: &str = "5d6e7f80910a1b2c5d6e7f80910a1b2c5d6e7f80";

    fn read(body: &[u8], step: usize) -> PushCommands {
        let mut p = PushCommands::default();
        for chunk in body.chunks(step) {
            p.feed(chunk);
        }
        p
    }

    /// `plain` gzip-encoded, as a hand-made client could send a push.
    fn gzip(plain: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(plain).unwrap();
        e.finish().unwrap()
    }

    /// `body` gzip-encoded, fed `step` bytes at a time.
    fn read_gzipped(body: &[u8], step: usize) -> PushCommands {
        let mut p = PushCommands::gzipped();
        for chunk in gzip(body).chunks(step) {
            p.feed(chunk);
        }
        p
    }

    /// A gzip-encoded push (git never sends one; the backend inflates and applies it) is read
    /// as the same body plain would be, however its compressed bytes are split: said "unread",
    /// any write token could keep the refs it changed out of the log by compressing its push.
    #[test]
    fn a_gzip_encoded_push_is_read_as_its_plain_body() {
        let commands: String = (0..LISTED + 3)
            .map(|i| pkt(&format!("{A} {ZERO} refs/heads/d{i}\n")))
            .collect();
        for body in [
            format!(
                "{}{}0000PACK\x00\x00\x00\x02",
                pkt(&format!("{A} {B} refs/heads/main\0 report-status\n")),
                pkt(&format!("{ZERO} {A} refs/tags/v9\n")),
            ),
            format!("{commands}0000PACK"),
            // A list cut off, and one that ends in what is no pkt-line.
            commands[..commands.len() - 9].to_string(),
            format!("{}zzzz", pkt(&format!("{B} {ZERO} refs/heads/old\n"))),
        ] {
            let plain = read(body.as_bytes(), body.len()).to_string();
            for step in [usize::MAX, 1, 5, 100] {
                let p = read_gzipped(body.as_bytes(), step);
                assert_eq!(p.to_string(), plain, "step {step}");
            }
        }
        assert!(read_gzipped(commands.as_bytes(), 7)
            .to_string()
            .contains("refs/heads/d0 deleted (was 1a2b3c4)"));
    }

    /// What a few compressed bytes stand for is read as a plain body is, no further than
    /// [`READ_AT_MOST`], and held [`INFLATED_AT_ONCE`] bytes at a time: 64 MiB of `shallow`
    /// lines (some 64 KiB gzip-encoded) stop the reading at its bound, in one feed.
    #[test]
    fn a_small_gzip_body_that_inflates_to_much_is_read_no_further_than_a_plain_one() {
        let line = pkt(&format!("shallow {A}\n"));
        let plain = line.repeat(64 * 1024 * 1024 / line.len());
        let body = gzip(plain.as_bytes());
        assert!(body.len() < 1024 * 1024, "{}", body.len());
        let mut p = PushCommands::gzipped();
        p.feed(&body);
        assert!(p.is_done());
        assert_eq!(p.read, READ_AT_MOST);
        assert_eq!(
            p.to_string(),
            "and more (the list was not read past its first 1024 KiB)"
        );
    }

    /// A body said gzip-encoded that is not (the backend cannot read it either) is said so,
    /// with the commands read before what could not be inflated.
    #[test]
    fn a_body_said_gzip_that_is_not_is_said_so() {
        let command = pkt(&format!("{A} {ZERO} refs/heads/x\n"));
        let mut p = PushCommands::gzipped();
        p.feed(command.as_bytes());
        assert!(p.is_done());
        assert_eq!(
            p.to_string(),
            "unread (the body is said gzip-encoded, and is not: the backend cannot read it either)"
        );
        // A command, flushed out of the deflate stream, then a block of no type deflate has.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(command.as_bytes()).unwrap();
        e.flush().unwrap();
        let mut body = e.get_ref().clone();
        body.extend_from_slice(&[0xff; 16]);
        for step in [body.len(), 3] {
            let mut p = PushCommands::gzipped();
            for chunk in body.chunks(step) {
                p.feed(chunk);
            }
            assert!(p.is_done());
            assert_eq!(
                p.to_string(),
                "refs/heads/x deleted (was 1a2b3c4), then what is not gzip (the backend cannot \
                 read it either)"
            );
        }
    }

    #[test]
    fn a_push_names_each_ref_it_updates_creates_or_deletes() {
        let body = format!(
            "{}{}{}0000PACK\x00\x00\x00\x02",
            pkt(&format!(
                "{A} {B} refs/heads/main\0 report-status side-band-64k agent=git/2.47\n"
            )),
            pkt(&format!("{ZERO} {A} refs/tags/v9\n")),
            pkt(&format!("{B} {ZERO} refs/heads/release\n")),
        );
        // Whole, and split at every byte: a pkt-line may come in two frames.
        for step in [body.len(), 1, 3, 7] {
            let p = read(body.as_bytes(), step);
            assert!(p.is_done());
            assert_eq!(
                p.to_string(),
                "refs/heads/main 1a2b3c4..5d6e7f8, refs/tags/v9 created at 1a2b3c4, \
                 refs/heads/release deleted (was 5d6e7f8)",
                "step {step}"
            );
        }
    }

    #[test]
    fn lines_around_the_commands_are_passed_over() {
        let body = format!(
            "{}{}0000",
            pkt(&format!("shallow {A}\n")),
            pkt(&format!("{A} {B} refs/heads/main\0report-status\n")),
        );
        assert_eq!(
            read(body.as_bytes(), 5).to_string(),
            "refs/heads/main 1a2b3c4..5d6e7f8"
        );
        // A push of nothing (git sends none, a hand-made client may).
        assert_eq!(read(b"0000", 1).to_string(), "none");
    }

    #[test]
    fn past_the_listed_ones_commands_are_counted() {
        let mut body: String = (0..LISTED + 5)
            .map(|i| pkt(&format!("{A} {B} refs/heads/b{i}\n")))
            .collect();
        body.push_str("0000");
        let text = read(body.as_bytes(), 64).to_string();
        assert!(
            text.starts_with("refs/heads/b0 1a2b3c4..5d6e7f8, refs/heads/b1 "),
            "{text}"
        );
        assert!(text.ends_with(", and 5 more"), "{text}");
        assert_eq!(text.matches("refs/heads/").count(), LISTED);
    }

    #[test]
    fn at_most_so_much_is_read() {
        let line = pkt(&format!("{A} {B} refs/heads/{}\n", "x".repeat(900)));
        let mut p = PushCommands::default();
        let mut fed = 0u64;
        while !p.is_done() {
            p.feed(line.as_bytes());
            fed += line.len() as u64;
            assert!(fed <= READ_AT_MOST + line.len() as u64, "never done");
        }
        let text = p.to_string();
        assert!(
            text.ends_with("and more (the list was not read past its first 1024 KiB)"),
            "{text}"
        );
        // A long name is cut.
        assert!(text.contains(&format!(
            "{}...",
            "x".repeat(NAME_KEPT - "refs/heads/".len())
        )));
    }

    #[test]
    fn names_git_refuses_are_told_from_ref_names() {
        for name in [
            "refs/heads/main",
            "refs/tags/v1.2",
            "refs/heads/ggt_x",
            "refs/heads/é",
        ] {
            assert!(is_a_ref_name(name), "{name}");
        }
        for name in [
            "refs/heads/a b",
            "refs/heads/v1..v2",
            "refs/heads/x@{1}",
            "refs/heads/x.lock",
            "refs/heads/x/",
            "refs/heads//x",
            "refs/heads/.x",
            "refs/heads/x.",
            "refs/heads/a\\b",
        ] {
            assert!(!is_a_ref_name(name), "{name}");
        }
        let body = format!("{}0000", pkt(&format!("{ZERO} {A} refs/heads/bad\u{fffd}")));
        let mut raw = body.into_bytes();
        // Bytes that are no UTF-8 in place of the replacement character.
        let at = raw
            .windows(3)
            .position(|w| w == "\u{fffd}".as_bytes())
            .unwrap();
        raw.splice(at..at + 3, [0xff, 0xfe, b'x']);
        assert!(read(&raw, 5)
            .to_string()
            .starts_with("<a ref name that is not UTF-8: "));
    }

    /// A hand-made push's name with `, ` and words in it cannot pass for more commands.
    #[test]
    fn a_name_git_would_refuse_cannot_forge_entries() {
        let forged = format!(
            "refs/heads/a created at 1111111, refs/heads/main {}..{}",
            &A[..7],
            &B[..7]
        );
        let body = format!("{}0000", pkt(&format!("{ZERO} {A} {forged}\n")));
        let text = read(body.as_bytes(), 16).to_string();
        assert_eq!(
            text,
            format!("<not a ref name: {forged:?}> created at 1a2b3c4")
        );
    }

    #[test]
    fn a_body_that_is_no_pkt_lines_is_said_unread() {
        let p = read(b"\x1f\x8b\x08\x00gzip", 3);
        assert!(p.is_done());
        assert_eq!(
            p.to_string(),
            "unread (the body does not begin with pkt-lines)"
        );
        // Pkt-lines, none a command, then what is not one.
        let p = read(format!("{}\x00\x00\x00\x00", pkt("x")).as_bytes(), 2);
        assert_eq!(
            p.to_string(),
            "none (its pkt-lines hold no command, then end in what is not one)"
        );
        // One that ends before its flush says so.
        let body = pkt(&format!("{A} {B} refs/heads/main\n"));
        let p = read(&body.as_bytes()[..body.len()], 4);
        assert!(!p.is_done());
        assert_eq!(
            p.to_string(),
            "refs/heads/main 1a2b3c4..5d6e7f8, and maybe more (the body ended before its list did)"
        );
        // sha256 ids are read too.
        let (a, b) = (A.repeat(2)[..64].to_string(), B.repeat(2)[..64].to_string());
        let body = format!("{}0000", pkt(&format!("{a} {b} refs/heads/main\n")));
        assert_eq!(
            read(body.as_bytes(), 9).to_string(),
            "refs/heads/main 1a2b3c4..5d6e7f8"
        );
    }

    /// A command's ids are hex of a sha1's or a sha256's length and its ref has a name: a line
    /// of three words that is not that (a hand-made one) is no command.
    #[test]
    fn only_hex_ids_and_a_name_make_a_command() {
        let not_hex = "g".repeat(40);
        for line in [
            format!("{not_hex} {B} refs/heads/main\n"),
            format!("{A} {not_hex} refs/heads/main\n"),
            format!("{A} {B} \n"),
            format!("{A} {B} "),
        ] {
            let body = format!("{}0000", pkt(&line));
            assert_eq!(read(body.as_bytes(), 7).to_string(), "none", "{line:?}");
        }
    }

    /// A delimiter-pkt (`0001`) has no place among a push's commands: the list ends there, and
    /// nothing after it is read as a command.
    #[test]
    fn a_delimiter_ends_the_list() {
        let body = format!(
            "{}0001{}0000",
            pkt(&format!("{A} {B} refs/heads/main\n")),
            pkt(&format!("{ZERO} {A} refs/heads/smuggled\n")),
        );
        let p = read(body.as_bytes(), 5);
        assert!(p.is_done());
        assert_eq!(
            p.to_string(),
            "refs/heads/main 1a2b3c4..5d6e7f8, then no more pkt-lines"
        );
    }

    /// A signed push's certificate: `push-cert` and the capabilities, its header, a blank
    /// line, `commands` as they are given (pkt-line payloads), a signature, `push-cert-end`.
    fn signed(commands: &[String]) -> String {
        let mut body = pkt("push-cert\0report-status delete-refs\n");
        for line in [
            "certificate version 0.1\n",
            // A header line written as a command: git reads no command there.
            &format!("{ZERO} {A} refs/heads/decoy\n"),
            "pusher x 0 +0000\n",
            "\n",
        ] {
            body.push_str(&pkt(line));
        }
        for payload in commands {
            body.push_str(&pkt(payload));
        }
        for line in [
            "-----BEGIN PGP SIGNATURE-----\n",
            // Past the signature's start, git reads no command either.
            &format!("{A} {ZERO} refs/heads/after\n"),
            "-----END PGP SIGNATURE-----\n",
            "push-cert-end\n",
        ] {
            body.push_str(&pkt(line));
        }
        body.push_str("0000PACK");
        body
    }

    /// A signed push's commands are read from its certificate's text as git reads them: a
    /// command split across pkt-lines is one command under its whole name, two in one
    /// pkt-line are two, and the header's and signature's lines are none (a hand-made push
    /// could otherwise have a ref logged under a name it did not change).
    #[test]
    fn a_certificates_commands_are_read_as_git_reads_them() {
        let split = [
            format!("{B} {ZERO} re"),
            "fs/heads/x\n".to_string(),
            format!("{ZERO} {A} refs/heads/y\n{A} {B} refs/heads/z\n"),
        ];
        let body = signed(&split);
        for step in [1, 5, body.len()] {
            let p = read(body.as_bytes(), step);
            assert!(p.is_done());
            assert_eq!(
                p.to_string(),
                "refs/heads/x deleted (was 5d6e7f8), refs/heads/y created at 1a2b3c4, \
                 refs/heads/z 1a2b3c4..5d6e7f8",
                "step {step}"
            );
        }
        // What follows a NUL in a pkt-line is not in git's text: a line end there does not
        // split the command around it.
        let hidden = [format!("{B} {ZERO} re\0\n"), "fs/heads/x\n".to_string()];
        assert_eq!(
            read(signed(&hidden).as_bytes(), 3).to_string(),
            "refs/heads/x deleted (was 5d6e7f8)"
        );
        // One pkt-line a command, as git itself sends a signed push.
        let body = signed(&[format!("{A} {B} refs/heads/main\n")]);
        assert_eq!(
            read(body.as_bytes(), 7).to_string(),
            "refs/heads/main 1a2b3c4..5d6e7f8"
        );
    }

    /// A certificate's last command may lack its line end: git reads it at the list's end,
    /// after `push-cert-end` or at a flush inside the certificate.
    #[test]
    fn a_certificates_last_line_needs_no_line_end() {
        let head = format!(
            "{}{}{}{}",
            pkt("push-cert\0report-status\n"),
            pkt("certificate version 0.1\n"),
            pkt("\n"),
            pkt(&format!("{A} {B} refs/heads/main")),
        );
        for end in ["0012push-cert-end\n0000", "0000"] {
            let body = format!("{head}{end}");
            assert_eq!(
                read(body.as_bytes(), 3).to_string(),
                "refs/heads/main 1a2b3c4..5d6e7f8",
                "{end:?}"
            );
        }
    }

    /// A second `push-cert ... push-cert-end` goes on with the first's text, as git joins
    /// them: its command needs no header before it, and a line the first left without its
    /// line end goes on in it.
    #[test]
    fn a_second_certificate_goes_on_with_the_firsts_text() {
        let body = format!(
            "{}{}{}{}{}{}{}{}{}{}0000",
            pkt("push-cert\0report-status\n"),
            pkt("certificate version 0.1\n"),
            pkt("\n"),
            pkt(&format!("{A} {ZERO} refs/heads/a\n")),
            pkt(&format!("{A} {ZERO} refs/he")),
            pkt("push-cert-end\n"),
            pkt("push-cert\n"),
            pkt("ads/b\n"),
            pkt(&format!("{A} {ZERO} refs/heads/c\n")),
            pkt("push-cert-end\n"),
        );
        assert_eq!(
            read(body.as_bytes(), 4).to_string(),
            "refs/heads/a deleted (was 1a2b3c4), refs/heads/b deleted (was 1a2b3c4), \
             refs/heads/c deleted (was 1a2b3c4)"
        );
    }

    /// The pkt-line payloads a push's list is made of, certificates' included: commands
    /// (whole, cut, or two in one), their pieces, blank lines, signature lines, NULs.
    fn payload() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just(format!("{A} {B} refs/heads/main\n")),
            Just(format!("{ZERO} {A} refs/heads/a\0report-status\n")),
            Just(format!("{B} {ZERO} refs/he")),
            Just("ads/x\n".to_string()),
            Just(format!("{A} {B} refs/heads/y\n{ZERO} {B} refs/tags/t\n")),
            Just("push-cert\0report-status\n".to_string()),
            Just("push-cert-end\n".to_string()),
            Just("push-cert-end\n\0x".to_string()),
            Just("\n".to_string()),
            Just("certificate version 0.1\n".to_string()),
            Just("-----BEGIN PGP SIGNATURE-----\n".to_string()),
            Just(format!("shallow {A}\n")),
            "[ -~\n\u{0}]{0,12}",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// However a body is cut into pieces, what is read of it is the same as of the whole
        /// (a certificate's line may span pkt-lines, and pkt-lines pieces), and reading
        /// never panics.
        #[test]
        fn the_pieces_a_body_comes_in_change_nothing(
            payloads in proptest::collection::vec(payload(), 0..12),
            end in proptest::prop_oneof![
                proptest::strategy::Just("0000PACK"),
                proptest::strategy::Just("0001"),
                proptest::strategy::Just(""),
            ],
            step in 1usize..40,
        ) {
            let mut body: String = payloads.iter().map(|p| pkt(p)).collect();
            body.push_str(end);
            let whole = read(body.as_bytes(), body.len().max(1));
            let pieces = read(body.as_bytes(), step);
            proptest::prop_assert_eq!(whole.to_string(), pieces.to_string());
            proptest::prop_assert_eq!(whole.is_done(), pieces.is_done());
            // Gzip-encoded, in pieces too: read as the plain body is.
            let gzipped = read_gzipped(body.as_bytes(), step);
            proptest::prop_assert_eq!(whole.to_string(), gzipped.to_string());
        }
    }

    /// Commands past the listed ones are counted however the list ends: git applies a list a
    /// delimiter ends (`0001`) as one a flush ends, so a hand-made push of more than
    /// [`LISTED`] commands ending so had the rest go unmentioned.
    #[test]
    fn past_the_listed_ones_commands_are_counted_however_the_list_ends() {
        let commands: String = (0..LISTED + 2)
            .map(|i| pkt(&format!("{A} {ZERO} refs/heads/d{i}\n")))
            .collect();
        let delimited = read(format!("{commands}0001").as_bytes(), 50).to_string();
        assert!(
            delimited.ends_with(", and 2 more, then no more pkt-lines"),
            "{delimited}"
        );
        let cut = read(commands.as_bytes(), 50).to_string();
        assert!(
            cut.ends_with(", and 2 more, and maybe more (the body ended before its list did)"),
            "{cut}"
        );
    }

    /// Long names do not push the count out of the log's field: the entries listed stay
    /// within [`LIST_BYTES`], the rest are counted, and the field is never cut.
    #[test]
    fn long_names_leave_room_for_the_count() {
        let long = |i: usize| format!("refs/heads/{i}-{}", "é".repeat(NAME_KEPT));
        let mut body: String = (0..LISTED)
            .map(|i| pkt(&format!("{ZERO} {A} {}\n", long(i))))
            .collect();
        body.push_str(&pkt(&format!("{B} {ZERO} refs/heads/main\n")));
        body.push_str("0000");
        let text = read(body.as_bytes(), 999).to_string();
        let logged = crate::log_value::LogText(&text).to_string();
        assert!(!logged.contains("bytes in all, cut)"), "{logged}");
        assert!(text.starts_with("refs/heads/0-é"), "{text}");
        let shown = text.matches(" created at ").count();
        assert!(shown >= 2, "{text}");
        assert!(
            text.ends_with(&format!(", and {} more", LISTED + 1 - shown)),
            "{text}"
        );
    }

    /// git refuses `.lock` at the end of any component, not only of the whole name (a lock
    /// file's name: `refs/heads/x.lock/y` could not be created beside the lock of
    /// `refs/heads/x`), and `@` alone; `git check-ref-format` agrees with each case here.
    #[test]
    fn a_component_ending_in_lock_or_a_lone_at_sign_is_no_ref_name() {
        for name in ["refs/heads/x.lock/y", "refs/tags/v1.lock/a/b", "@"] {
            assert!(!is_a_ref_name(name), "{name}");
        }
        for name in ["refs/heads/@", "refs/heads/x.locks/y", "refs/heads/lock/y"] {
            assert!(is_a_ref_name(name), "{name}");
        }
    }

    /// DEL (0x7f) is a control character to git: a name with it is no ref name.
    #[test]
    fn a_name_with_a_delete_character_is_no_ref_name() {
        assert!(!is_a_ref_name("refs/heads/a\u{7f}b"));
        assert!(is_a_ref_name("refs/heads/a-b"));
    }

    /// A name of [`NAME_KEPT`] characters is kept whole; a longer one is cut to exactly that
    /// many characters (not bytes), then `...`.
    #[test]
    fn a_name_is_cut_at_exactly_so_many_characters() {
        let name = |len: usize| format!("refs/heads/{}", "é".repeat(len - "refs/heads/".len()));
        for (len, shown) in [
            (NAME_KEPT, name(NAME_KEPT)),
            (NAME_KEPT + 1, format!("{}...", name(NAME_KEPT))),
        ] {
            let body = format!("{}0000", pkt(&format!("{ZERO} {A} {}\n", name(len))));
            assert_eq!(
                read(body.as_bytes(), 64).to_string(),
                format!("{shown} created at 1a2b3c4")
            );
        }
    }

    /// Exactly [`READ_AT_MOST`] bytes are read: a list that fills them is done there, and a
    /// flush-pkt that ends past them is not read.
    #[test]
    fn the_read_ends_at_exactly_so_many_bytes() {
        // Commands of at most 1 KiB each, `total` bytes in all.
        let commands = |total: usize| {
            let mut body = String::new();
            for i in 0.. {
                if body.len() == total {
                    break;
                }
                let size = (total - body.len()).min(1024);
                let start = format!("{A} {B} refs/heads/b{i}/");
                let fill = size - 4 - start.len() - 1;
                body.push_str(&pkt(&format!("{start}{}\n", "x".repeat(fill))));
            }
            body
        };
        let said = "and more (the list was not read past its first 1024 KiB)";
        let full = commands(READ_AT_MOST as usize);
        let p = read(full.as_bytes(), full.len());
        assert!(p.is_done());
        assert!(p.to_string().ends_with(said));
        let flush_past = format!("{}0000", commands(READ_AT_MOST as usize - 3));
        let p = read(flush_past.as_bytes(), flush_past.len());
        assert!(p.is_done());
        assert!(p.to_string().ends_with(said));
    }
}
