//! The backend's stdin and stderr: the request body copied to stdin frame by frame (and what a
//! broken body does to the backend), and stderr logged line by line, bounded.

use crate::log_value::LogText;
use crate::request_id::RequestId;
use std::fmt;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::ChildStdin;
use tokio::sync::oneshot;

use super::process::{killed, KillSwitch};
use crate::upstream::progress::Progress;

/// Longest stderr line we log as one event; longer lines are logged in pieces.
pub(super) const MAX_STDERR_LINE: u64 = 4 * 1024;

/// The most stderr lines of one backend we log. A backend (or a hook it runs) that writes
/// without end must not flood gitgate's log or its disk; the rest is read and counted, so the
/// backend never blocks on a full pipe, and the count is logged when stderr closes.
pub(super) const MAX_STDERR_LINES: u32 = 100;

/// What the stdin task does when the client's body breaks off (an error, or a clean end short of
/// its `Content-Length`, which hyper gives when an HTTP/2 client resets the stream with
/// `NO_ERROR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Break {
    /// Close stdin and let the backend fail by itself: a push. receive-pack, given an
    /// incomplete pack, fails its checksum and removes its quarantined objects; killed, it would
    /// leave them on disk (tens of MB per interrupted push).
    CloseStdin,
    /// Kill the backend: anything else, which has nothing to clean up.
    Kill,
}

/// How the feeding of a request body to the backend ended well; `told` is dropped unsent when
/// the body broke off (or ended short of its length), and the response's head, held until
/// one or the other (see `CgiBody::hold_until_fed`), is then not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fed {
    /// All of it, and stdin closed.
    Whole,
    /// The backend stopped reading it (it answered early, exited, or was ended): its answer
    /// is what counts.
    NotRead,
}

/// What a request body's feeding holds to, and whose request it is (for the log).
pub(super) struct Feeding {
    /// The length the backend was told (`CONTENT_LENGTH`), if any.
    pub promised: Option<u64>,
    pub on_break: Break,
    pub request_id: RequestId,
}

/// Copies the request body to the child's stdin frame by frame, then closes stdin; a broken
/// body is handled as `on_break` says. How it ended is `told` (see [`Fed`]), after stdin is
/// closed.
pub(super) async fn feed_stdin<B>(
    mut body: B,
    stdin: ChildStdin,
    feeding: Feeding,
    kill: KillSwitch,
    moved: Progress,
    told: oneshot::Sender<Fed>,
) where
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    let Feeding {
        promised,
        on_break,
        request_id: id,
    } = feeding;
    // A local, so that it is closed before `told` is dropped on a return (locals go first).
    let mut stdin = stdin;
    let mut stop = kill.subscribe();
    let mut fed = 0u64;
    // Whatever way this ends, nothing more is waited for from the client.
    struct Over(Progress);
    impl Drop for Over {
        fn drop(&mut self) {
            self.0.waiting(false);
        }
    }
    let moved = Over(moved);
    let moved = &moved.0;
    loop {
        moved.waiting(true);
        let frame = tokio::select! {
            // Once the backend is ended, not a byte more of the body goes to it.
            biased;
            _ = killed(&mut stop) => {
                // The backend exited (or was ended): the body is not at fault, and whatever
                // it answered is the answer.
                drop(stdin);
                let _ = told.send(Fed::NotRead);
                return;
            }
            frame = body.frame() => frame,
        };
        moved.waiting(false);
        match frame {
            None => break,
            Some(Ok(frame)) => {
                moved.touch();
                // Trailers have no CGI meaning; only data goes to the backend.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                fed += data.len() as u64;
                if let Err(e) = stdin.write_all(&data).await {
                    // The backend stopped reading (it answered early, or died); its exit status
                    // tells the rest of the story.
                    tracing::debug!(target: "gitgate::cgi", request_id = %id, error = %LogText(&e.to_string()), "CGI backend stopped reading the request body");
                    drop(stdin);
                    let _ = told.send(Fed::NotRead);
                    return;
                }
            }
            Some(Err(e)) => {
                if on_break == Break::CloseStdin {
                    // The client's body broke: its doing, told with the request by the gate.
                    tracing::info!(target: "gitgate::cgi", request_id = %id, error = %LogText(&e.to_string()), "push body failed; closing the backend's input so that the push fails and cleans up");
                    return; // closes stdin
                }
                tracing::info!(target: "gitgate::cgi", request_id = %id, error = %LogText(&e.to_string()), "request body failed; killing the CGI backend");
                kill.kill(&format!("request body failed: {e}"));
                return;
            }
        }
    }
    if let Some(promised) = promised.filter(|&promised| fed < promised) {
        if on_break == Break::CloseStdin {
            tracing::info!(target: "gitgate::cgi", request_id = %id, fed, promised, "push body ended short of its Content-Length; closing the backend's input so that the push fails and cleans up");
            return;
        }
        // A broken body, like an error: the kill is asked for before stdin closes (on return).
        tracing::info!(target: "gitgate::cgi", request_id = %id, fed, promised, "request body ended short of its Content-Length; killing the CGI backend");
        kill.kill(&format!(
            "request body ended after {fed} of its {promised} bytes"
        ));
        return;
    }
    // Dropping stdin closes the pipe: end of body for a backend reading to EOF.
    drop(stdin);
    let _ = told.send(Fed::Whole);
}

/// Whether a stderr line is git's progress and nothing else: each of its `\r`-separated
/// parts a phase and its count (`Counting objects: 33% (1/3)`, `Enumerating objects: 5,
/// done.`) or the pack's total (`Total 5 (delta 0), reused 0 (delta 0), pack-reused 0`).
/// git's errors begin in lower case (`fatal:`, `error:`, `warning:`).
fn is_progress(line: &str) -> bool {
    let mut parts = line.split('\r').map(str::trim).filter(|p| !p.is_empty());
    let phase = |p: &str| {
        p.starts_with(|c: char| c.is_ascii_uppercase())
            && p.split_once(": ").is_some_and(|(name, count)| {
                name.bytes().all(|b| b.is_ascii_alphabetic() || b == b' ')
                    // git pads the percentage: `Counting objects:   0% (1/205)`.
                    && count.trim_start().starts_with(|c: char| c.is_ascii_digit())
            })
    };
    let total = |p: &str| {
        p.strip_prefix("Total ")
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    };
    let mut any = false;
    parts.all(|p| {
        any = true;
        phase(p) || total(p)
    }) && any
}

/// Whether a stderr line is git http-backend's note of a dumb-HTTP file that is not there
/// (`Cannot open 'objects/info/http-alternates': No such file or directory`), said with its
/// `404`: a dumb clone asks for the alternates files, and for loose objects that are packed,
/// every time, and git takes the `404` as the answer. Normal traffic, not a warning.
fn is_a_missing_file(line: &str) -> bool {
    line.starts_with("Cannot open '") && line.ends_with("': No such file or directory")
}

/// Whether a stderr line is git's word that its input ended before it should have (`fatal:
/// the remote end hung up unexpectedly`, `fatal: early EOF`): its input is the client's
/// request body, which broke off, or which gitgate ended for a client that left — or which
/// came whole but with pkt-lines that promise more than it holds (see `CgiBody::fed_whole`).
pub(super) fn is_input_cut_short(line: &str) -> bool {
    matches!(
        line,
        "fatal: the remote end hung up unexpectedly" | "fatal: early EOF"
    )
}

/// Logs each stderr line of the child as a warning, up to [`MAX_STDERR_LINES`], then how many
/// more there were; returns the line that says why it ended: its first `fatal:` line, or else
/// its last non-empty one.
pub(super) async fn log_stderr<R: AsyncRead + Unpin>(
    stderr: R,
    path: String,
    id: RequestId,
) -> StderrWords {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut last = None;
    let mut first_error = None;
    let mut logged = 0u32;
    let mut unlogged = 0u64;
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_STDERR_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if text.is_empty() {
                    continue;
                }
                if is_progress(text) {
                    // upload-pack's progress, written to stderr for a client that asked for no
                    // side-band (an old or hand-made one): not a problem of the server's.
                    tracing::debug!(
                        target: "gitgate::cgi",
                        request_id = %id,
                        path = %crate::log_value::LogValue(&path),
                        stderr = %LogText(text),
                        "the CGI backend wrote its progress to stderr"
                    );
                } else if is_a_missing_file(text) {
                    tracing::debug!(
                        target: "gitgate::cgi",
                        request_id = %id,
                        path = %crate::log_value::LogValue(&path),
                        stderr = %LogText(text),
                        "the CGI backend answered 404 for a dumb-HTTP file that is not there"
                    );
                } else if is_input_cut_short(text) {
                    // Its input ended before its end: the request body broke off, or its
                    // client left (gitgate closed the input so that a push cleans up). The
                    // request's own lines say which; not a problem of the server's.
                    tracing::info!(
                        target: "gitgate::cgi",
                        request_id = %id,
                        path = %crate::log_value::LogValue(&path),
                        stderr = %LogText(text),
                        "the CGI backend's input ended early (the request body broke off, or its client left)"
                    );
                } else if logged < MAX_STDERR_LINES {
                    logged += 1;
                    // Quoted, with control characters escaped: the line can hold what a
                    // client sent (receive-pack names a refused ref, hooks echo commits), and
                    // as the message a `\r` or a ` user=...` in it could forge a log line.
                    tracing::warn!(
                        target: "gitgate::cgi",
                        request_id = %id,
                        path = %crate::log_value::LogValue(&path),
                        stderr = %LogText(text),
                        "the CGI backend wrote to stderr"
                    );
                } else {
                    unlogged += 1;
                }
                if text.contains("detected dubious ownership") {
                    tracing::error!(
                        target: "gitgate::cgi",
                        request_id = %id,
                        path = %crate::log_value::LogValue(&path),
                        "git refuses to serve a repository owned by another user than the one \
                         gitgate runs as: run gitgate as the repositories' owner, or add them to \
                         safe.directory in that user's (or the system's) git config"
                    );
                }
                // git dies at its first `fatal:`; a line after it can be the rest of what it
                // quoted from the client (a newline inside a ref name or an argument), which
                // must not stand for the cause.
                let after_fatal = last
                    .as_deref()
                    .is_some_and(|l: &str| l.starts_with("fatal:"));
                if !after_fatal {
                    if first_error.is_none() && text.starts_with("error:") {
                        first_error = Some(text.to_owned());
                    }
                    last = Some(text.to_owned());
                }
            }
        }
    }
    if unlogged > 0 {
        tracing::warn!(
            target: "gitgate::cgi",
            request_id = %id,
            path = %crate::log_value::LogValue(&path),
            logged,
            unlogged,
            "CGI backend wrote more stderr lines than are logged; the rest were read and dropped"
        );
    }
    StderrWords { last, first_error }
}

/// What a backend's stderr said, for how its end is judged (see `ExitInfo`).
#[derive(Debug, Default)]
pub(super) struct StderrWords {
    /// The line that explains a failure: the first `fatal:` (git dies at it), else the last.
    pub(super) last: Option<String>,
    /// The first `error:` line before any `fatal:`: git's own trouble (a packfile that does
    /// not match its index), which a refusal after it (`not our ref`) does not explain.
    pub(super) first_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use crate::request_id::RequestId;

    #[test]
    fn git_progress_is_told_from_what_the_backend_complains_of() {
        use super::is_progress;
        for line in [
            "Counting objects: 33% (1/3)\rCounting objects: 66% (2/3)\rCounting objects: 100% (3/3), done.",
            "Enumerating objects: 5, done.",
            "Compressing objects: 100% (3/3), done.",
            "Total 5 (delta 0), reused 0 (delta 0), pack-reused 0",
            "Counting objects:   0% (1/205)\rCounting objects:  50% (103/205)\rCompressing objects:  45% (1",
        ] {
            assert!(is_progress(line), "{line}");
        }
        for line in [
            "fatal: unknown repository extension found:",
            "error: object file ./objects/ab/cd is empty",
            "Request not supported: '/srv/git/team/app.git/git-upload-archive'",
            "Counting objects: 33% (1/3)\rfatal: the remote end hung up",
            "",
            "\r",
        ] {
            assert!(!is_progress(line), "{line}");
        }
    }

    #[test]
    fn a_dumb_http_file_that_is_not_there_is_no_complaint() {
        use super::is_a_missing_file;
        assert!(is_a_missing_file(
            "Cannot open 'objects/info/http-alternates': No such file or directory"
        ));
        assert!(is_a_missing_file(
            "Cannot open 'objects/cc/b66871a3f9e3b8d1bd3f8b1a0a4f4e5b6c7d8e9': No such file or directory"
        ));
        for line in [
            "Cannot open 'objects/pack/x.pack': Permission denied",
            "fatal: Cannot open 'x': No such file or directory",
            "error: Cannot open 'x': No such file or directory; and more",
        ] {
            assert!(!is_a_missing_file(line), "{line}");
        }
    }

    #[test]
    fn an_input_cut_short_is_told_from_other_failures() {
        use super::is_input_cut_short;
        assert!(is_input_cut_short(
            "fatal: the remote end hung up unexpectedly"
        ));
        assert!(is_input_cut_short("fatal: early EOF"));
        for line in [
            "fatal: index-pack failed",
            "error: remote unpack failed: unable to create temporary object directory",
            "fatal: the remote end hung up unexpectedly; and more",
        ] {
            assert!(!is_input_cut_short(line), "{line}");
        }
    }

    use super::*;

    #[test]
    fn a_backend_flooding_stderr_gets_a_bounded_number_of_log_lines() {
        let flood: String = (1..=5000).map(|n| format!("line {n}\n")).collect();
        let mut last = None;
        let log = crate::store::test_support::logged(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            last = rt
                .block_on(log_stderr(
                    flood.as_bytes(),
                    "/repo.git/x".into(),
                    RequestId::next(),
                ))
                .last;
        });
        // Every line is read (the last one is still reported), not every line is logged.
        assert_eq!(last.as_deref(), Some("line 5000"));
        assert_eq!(
            log.matches("line ").count(),
            MAX_STDERR_LINES as usize,
            "{log}"
        );
        assert!(log.contains(&format!("line {MAX_STDERR_LINES}")));
        assert!(!log.contains(&format!("line {}", MAX_STDERR_LINES + 1)));
        assert!(log.contains("logged=100 unlogged=4900"), "{log}");
    }

    #[test]
    fn a_backend_writing_a_few_stderr_lines_has_each_logged() {
        let mut last = None;
        let log = crate::store::test_support::logged(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            last = rt
                .block_on(log_stderr(
                    &b"error: zero\nfatal: one\n\nerror: two"[..],
                    "/r".into(),
                    RequestId::next(),
                ))
                .last;
        });
        // git dies at its first `fatal:`: what follows it (the rest of a quoted line a client
        // chose) does not stand for the cause.
        assert_eq!(last.as_deref(), Some("fatal: one"));
        assert!(log.contains("fatal: one") && log.contains("two"), "{log}");
        assert!(!log.contains("unlogged"), "{log}");
    }

    #[test]
    fn the_cause_is_the_last_line_when_no_fatal_came() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let words = rt.block_on(log_stderr(
            &b"warning: one\nerror: two\nerror: three\n"[..],
            "/r".into(),
            RequestId::next(),
        ));
        assert_eq!(words.last.as_deref(), Some("error: three"));
        assert_eq!(words.first_error.as_deref(), Some("error: two"));
        // An `error:` after git's `fatal:` is not git's own: it can be what a client quoted.
        let words = rt.block_on(log_stderr(
            &b"fatal: git upload-pack: not our ref 1111\nerror: quoted\n"[..],
            "/r".into(),
            RequestId::next(),
        ));
        assert_eq!(words.first_error, None);
    }

    #[test]
    fn a_stderr_line_cannot_forge_a_log_line_or_its_fields() {
        // What receive-pack writes for a ref name a client chose, without side-band.
        let forged = b"error: refusing to create funny ref 'refs/heads/x\r2026-12-02T06:00:00Z  \
            INFO gitgate::request: request user=alice\x1b[2K' remotely path=/x user=eve\n";
        let log = crate::store::test_support::logged(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(log_stderr(
                &forged[..],
                "/team/app.git/git-receive-pack".into(),
                RequestId::next(),
            ));
        });
        assert!(!log.contains('\r') && !log.contains('\x1b'), "{log:?}");
        assert!(
            log.contains("refs/heads/x\\r2026"),
            "escaped, not dropped: {log}"
        );
        // The line is one quoted field, after the request's own path.
        assert!(
            log.contains(
                "path=/team/app.git/git-receive-pack stderr=\"error: refusing to create funny ref"
            ),
            "{log}"
        );
        assert!(log.contains("remotely path=/x user=eve\""), "{log}");
    }
}
