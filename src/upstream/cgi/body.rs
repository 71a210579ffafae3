//! The response body read from the backend's stdout, and what happens to a push whose client
//! left before its end (let finish, a few at a time).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame};
use tokio::io::AsyncReadExt;
use tokio::process::ChildStdout;
use tokio::sync::oneshot;

use super::head::HEAD_READ;
use super::process::{ExitInfo, KillGuard, Running, INPUT_CLOSED_GRACE, TERM_GRACE};
use super::report::Report;
use super::stdio::Fed;
use super::{damage, CgiError};
use crate::log_value::{LogText, LogValue};
use crate::request_id::RequestId;
use crate::upstream::progress::{Progress, Silence, UploadStalled};

/// How much of the backend's stdout one response frame carries at most.
pub(super) const BODY_CHUNK: usize = 64 * 1024;

/// The backend's response body: whatever came with the header block, then stdout chunk by chunk
/// as hyper polls. Ends cleanly only if the backend exited successfully; otherwise the last frame
/// is an error, so the client sees a failure rather than a truncated success.
///
/// Dropping it before the backend finished writing (the client went away) kills the backend,
/// except a push's: that one is left to finish, its output read and thrown away, as long as it
/// keeps writing, a few at a time (see the `cgi` module docs). The supervisor task reaps
/// it either way.
pub struct CgiBody {
    pub(super) prefix: Option<Bytes>,
    pub(super) stdout: Option<ChildStdout>,
    pub(super) buf: BytesMut,
    pub(super) exit: Option<oneshot::Receiver<ExitInfo>>,
    pub(super) guard: KillGuard,
    /// What is left of a `Content-Length` the backend declared (git http-backend does for
    /// dumb-HTTP files). hyper stops reading at that length, so the body ends there, not at the
    /// backend's exit: else the finished answer would be logged as cut off, and its backend
    /// killed.
    pub(super) left: Option<u64>,
    /// For a push: what it needs to finish without its client (see [`Finishing`]).
    pub(super) finishing: Option<Finishing>,
    /// A backend that writes nothing for its idle time, while the request body does not move
    /// either, is stuck (the head timeout, a little under the connection's idle timeout): its
    /// body ends with an error — logged as the backend's fault and counted as an upstream
    /// error — rather than the connection's idle timeout cutting it off as if the client had
    /// left.
    pub(super) silence: Silence,
    /// When the request body last moved (a push's pack: receive-pack says nothing until it has
    /// read it).
    pub(super) uploading: Progress,
    /// What the backend said while its head was held (see [`CgiBody::hold_until_fed`]): the
    /// first frame to give.
    pub(super) early: Option<Option<Result<Frame<Bytes>, io::Error>>>,
    /// Whether any of the answer's body has been given (see [`ExitInfo::reported_a_failure`]).
    pub(super) answered: bool,
    /// The last bytes given (at most [`ERROR_TAIL`]): where git's `ERR` packet is, when it
    /// refused the request (see [`git_error_at_end`]).
    pub(super) tail: Vec<u8>,
    /// The request, for the log: repository path and user.
    pub(super) label: String,
    /// The request's id in every line of the log it writes.
    pub(super) request_id: RequestId,
    /// An upload-pack POST's repository directory: where to ask whether git's `not our ref`
    /// is the repository's damage (see [`damage`](super::damage)).
    pub(super) repository: Option<PathBuf>,
    /// That question being asked, with what to answer once it is.
    /// Boxed: nearly every answer goes without it.
    pub(super) checking: Option<Box<Checking>>,
    /// Every byte of the request body went to the backend's stdin, which was then closed
    /// (told while its head was held: see [`CgiBody::hold_until_fed`]). git that then says
    /// its input ended early (`the remote end hung up unexpectedly`) read a body whose own
    /// pkt-lines promised more than it held: the client's malformed request, not the
    /// backend's failure.
    pub(super) fed_whole: bool,
}

/// git's refusal of a fetch (`not our ref <oid>`), held while the repository is asked whether a
/// ref of its own names the object it could not find.
pub(super) struct Checking {
    info: ExitInfo,
    error: String,
    /// The ref that names the unreadable object, if one does.
    verdict: tokio::task::JoinHandle<Option<String>>,
}

/// How a push whose client left is let finish: for as long as it writes something within
/// `idle` (the head timeout), while fewer than [`MAX_FINISHING`] of this worker's pushes are
/// finishing so, and until gitgate stops.
pub(super) struct Finishing {
    pub(super) idle: Duration,
    pub(super) running: Arc<Running>,
    /// The request, for the log: repository path and user.
    pub(super) label: String,
    pub(super) request_id: RequestId,
    /// receive-pack's report, read from what the push has said to its client so far: the
    /// client may leave after the report reached it, while a hook still runs, and the log must
    /// still say what the push did.
    pub(super) said: Report,
    /// The request body broke off before its end (its client left mid-upload, or sent bad
    /// chunked framing and is answered `400`): the push fails, its input having ended early,
    /// as it should — its failure is no warning, and a client that sent a malformed body may
    /// well still be there.
    pub(super) body_broke: bool,
}

impl Finishing {
    /// How the log names the push's lot: a client that left, or a body that broke off.
    fn why_alone(&self) -> &'static str {
        if self.body_broke {
            "whose upload broke off (its client left, or sent a malformed body)"
        } else {
            "whose client left"
        }
    }

    /// Reads `data`, which the push said to its client, for its report.
    fn heard(&mut self, data: &[u8]) {
        self.said.feed(data);
    }
}

/// The most pushes of one worker that may finish without their client at once. Past it, a push
/// whose client leaves is ended as any other request is: a writer cannot stack unbounded
/// receive-packs and hooks by connecting and leaving.
pub(super) const MAX_FINISHING: usize = 8;

impl Drop for CgiBody {
    fn drop(&mut self) {
        let (Some(finishing), true) = (&mut self.finishing, self.stdout.is_some()) else {
            return; // the guard, if still armed, kills the backend
        };
        if let Some(prefix) = self.prefix.take() {
            // Not said to the client yet (its head was held), but part of the push's report.
            finishing.heard(&prefix);
        }
        let label = &finishing.label;
        // gitgate is stopping (the guard ends it with the rest), or too many are finishing.
        let slot = if *finishing.running.stopping.borrow() {
            None
        } else {
            let slot = FinishingSlot::take(&finishing.running);
            if slot.is_none() {
                tracing::warn!(target: "gitgate::cgi", request_id = %finishing.request_id, push = %LogValue(label), "the client left during a push, and {MAX_FINISHING} pushes are already finishing without theirs: ending this one");
            }
            slot
        };
        let (Some(slot), Ok(runtime)) = (slot, tokio::runtime::Handle::try_current()) else {
            self.ended_by_gitgate();
            return;
        };
        if finishing.body_broke {
            tracing::info!(target: "gitgate::cgi", request_id = %finishing.request_id, push = %LogValue(label), "a push's upload broke off (its client left, or sent a malformed body, answered 400); git receive-pack is let end by itself, which fails the push and removes what it received");
        } else {
            tracing::info!(target: "gitgate::cgi", request_id = %finishing.request_id, push = %LogValue(label), "the client left during a push; git receive-pack finishes it (its refs only if the whole pack arrived, and its hooks)");
        }
        let guard = std::mem::replace(&mut self.guard, KillGuard::disarmed());
        let (Some(finishing), Some(stdout)) = (self.finishing.take(), self.stdout.take()) else {
            return;
        };
        runtime.spawn(finish_alone(
            stdout,
            guard,
            self.exit.take(),
            finishing,
            slot,
        ));
    }
}

/// Reads and throws away a backend's output until it ends, for a while at most (the time its
/// supervisor gives it to end). For a push (`finishing`), what it said is kept: its refs may
/// have been updated before it was ended (receive-pack reports them before its `post-receive`
/// hook runs) or in the second it is given to end with its input closed
/// (`INPUT_CLOSED_GRACE`, a `pre-receive` hook ending then), and that is worth a warning — its
/// client did not get that report (git said the push failed), and its request is logged as
/// ended.
async fn drain(mut stdout: ChildStdout, finishing: Option<(Finishing, Telling)>) {
    let mut scratch = vec![0u8; HEAD_READ];
    let mut finishing = finishing;
    let _ = tokio::time::timeout(INPUT_CLOSED_GRACE + TERM_GRACE, async {
        while let Ok(n @ 1..) = stdout.read(&mut scratch).await {
            if let Some((push, _)) = &mut finishing {
                push.heard(&scratch[..n]);
            }
        }
    })
    .await;
    let Some((push, _telling)) = finishing else {
        return;
    };
    let outcome = push.said.outcome();
    if outcome.starts_with("unpack ok") && !outcome.contains(" 0 ref(s) updated") {
        tracing::warn!(target: "gitgate::cgi", request_id = %push.request_id, push = %LogValue(&push.label), outcome = %LogText(&outcome), "a push gitgate ended had its refs updated all the same (receive-pack reported them before, or as, it was ended); its client did not get that report, and git told its user the push failed (a fetch shows what the repository has)");
    }
}

/// What git ran out of, with the limit to raise, when it said it could not start a process of
/// its own (`error: cannot fork() for ...: <the C library's words>` on its stderr).
fn fork_shortage(info: &super::process::ExitInfo) -> Option<&'static str> {
    [&info.first_error, &info.last_stderr]
        .into_iter()
        .flatten()
        .find(|said| super::git_could_not_fork(said))
        .map(|said| super::git_fork_shortage(said))
}

/// A push answered whole whose repository refused some of it: receive-pack reports that inside
/// its `200` (smart HTTP has no other way), so the request line says `status=200
/// outcome=complete` and only git's user would know. A pack refused (`unpack <error>`: a full
/// disk, a quarantine it could not write, `receive.maxInputSize`) is the server's to look at:
/// a warning, and so is a ref git could not write (a lock file left behind), with git's own
/// words. Refs refused one by one (`ng`: a hook declined, a ref another push moved meanwhile)
/// are the repository's rules at work, or two pushes at once: a line at `info`. A push with no
/// report (the 4-byte probe git sends before a large pack) says nothing. A push refused, whole
/// or in part, while receive-pack could not start a process of its own (`error: cannot
/// fork()` on its stderr, `info`: for `unpack-objects` or `index-pack`, which refuses the
/// pack, or the `rev-list` of its connectivity check, which refuses the refs as `missing
/// necessary objects`) is a shortage of processes or memory, and said as one, with the limit
/// to raise: its user read only that refusal, and the repository is well.
fn log_a_refused_push(push: &Finishing, info: &super::process::ExitInfo) {
    if !push.said.has_begun() {
        return;
    }
    let outcome = push.said.outcome();
    let could_not_fork = fork_shortage(info);
    let refused =
        outcome.starts_with("refused:") || push.said.failed() > 0 || outcome.contains(" refused: ");
    if let Some(shortage) = could_not_fork.filter(|_| refused) {
        tracing::warn!(target: "gitgate::cgi", request_id = %push.request_id, push = %LogValue(&push.label), outcome = %LogText(&outcome), "git refused a push, or some of its refs, because it could not start a process of its own: this server is out of {shortage}, a capacity problem, not a broken repository, a full disk or the repository's rules; git told its user only the refusal (`unpacker error`, `missing necessary objects`)");
    } else if outcome.starts_with("refused:") {
        tracing::warn!(target: "gitgate::cgi", request_id = %push.request_id, push = %LogValue(&push.label), outcome = %LogText(&outcome), "the repository refused a push's pack (git told its user why; a full disk or the repository's limits, say)");
    } else if push.said.failed() > 0 {
        // Not a policy: git could not write what was allowed (a full disk at a ref's lock
        // file, a lock left behind). Its own words went to the client on side-band, and are
        // repeated here (without side-band they are the stderr line before this one).
        let said = push.said.git_errors();
        tracing::warn!(target: "gitgate::cgi", request_id = %push.request_id, push = %LogValue(&push.label), outcome = %LogText(&outcome), git_said = %LogText(&said), "the repository failed to update some of a push's refs (git's own failure, not a refusal: a full disk, a lock file left behind, permissions; git_said, or git's stderr, says which)");
    } else if push.said.raced() > 0 {
        // Two pushes to one branch at once: the one that came second is told so by git, and
        // pushes again after a fetch. The repository is well.
        tracing::info!(target: "gitgate::cgi", request_id = %push.request_id, push = %LogValue(&push.label), outcome = %LogText(&outcome), git_said = %LogText(&push.said.git_errors()), "another push updated some of a push's refs first (pushes to one ref at once; git told its user, who fetches and pushes again)");
    } else if outcome.contains(" refused: ") {
        tracing::info!(target: "gitgate::cgi", request_id = %push.request_id, push = %LogValue(&push.label), outcome = %LogText(&outcome), "the repository refused some of a push's refs");
    }
}

/// A push whose end is still to be told (see [`drain`]), counted in its backend's
/// [`Running`] so that a stop waits for the word before the process exits.
pub(super) struct Telling(Arc<Running>);

impl Telling {
    fn new(running: &Arc<Running>) -> Telling {
        running.telling.fetch_add(1, Ordering::AcqRel);
        Telling(running.clone())
    }
}

impl Drop for Telling {
    fn drop(&mut self) {
        if self.0.telling.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_reaped.notify_waiters();
        }
    }
}

/// One of a worker's [`MAX_FINISHING`] places, given back when dropped.
pub(super) struct FinishingSlot(Arc<Running>);

impl FinishingSlot {
    fn take(running: &Arc<Running>) -> Option<FinishingSlot> {
        running
            .finishing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_FINISHING).then_some(n + 1)
            })
            .ok()
            .map(|_| FinishingSlot(running.clone()))
    }
}

impl Drop for FinishingSlot {
    fn drop(&mut self) {
        if self.0.finishing.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_finishing.notify_waiters();
        }
    }
}

/// Reads a push's output to its end for a client that has left, so that receive-pack can
/// finish, then logs how it ended; `guard` kills it if it writes nothing for the idle time, or
/// when gitgate stops.
pub(super) async fn finish_alone(
    mut stdout: ChildStdout,
    mut guard: KillGuard,
    exit: Option<oneshot::Receiver<ExitInfo>>,
    mut finishing: Finishing,
    _slot: FinishingSlot,
) {
    let mut stopping = finishing.running.stopping.subscribe();
    let mut scratch = vec![0u8; HEAD_READ];
    // What it said, to its client and since, which holds receive-pack's report.
    let mut report = std::mem::take(&mut finishing.said);
    // `None` once it has said all it had to say; else why it is ended.
    let ended = loop {
        let read = tokio::select! {
            read = tokio::time::timeout(finishing.idle, stdout.read(&mut scratch)) => read,
            _ = stopping.wait_for(|s| *s) => break Some("gitgate is stopping"),
        };
        match read {
            Ok(Ok(0)) => break None,
            Ok(Ok(n)) => report.feed(&scratch[..n]),
            Ok(Err(_)) => break Some("reading the output of a push whose client left failed"),
            Err(_) => break Some("a push whose client left sent nothing for the idle timeout"),
        }
    };
    match ended {
        // Left to exit by itself, as a body read to its end is.
        None => guard.disarm_until_exit_grace(),
        Some(reason) => guard.reason = reason,
    }
    drop(guard);
    let Some(exit) = exit else { return };
    // receive-pack exits 0 also when it refused the pack or a ref: what it did is in its report.
    // Logged quoted, with control characters escaped (`?`): a refused ref's name and reason are
    // a client's text, and a `\r` or ` user=...` in them must not forge a log line or field.
    let outcome = report.outcome();
    match exit.await {
        Ok(info) if info.success() => {
            tracing::info!(target: "gitgate::cgi", request_id = %finishing.request_id, push = %LogValue(&finishing.label), outcome = %LogText(&outcome), "a push {} has finished: {info}", finishing.why_alone())
        }
        // Its input ended early: failing is what it should do, the client's doing.
        Ok(info) if finishing.body_broke => {
            tracing::info!(target: "gitgate::cgi", request_id = %finishing.request_id, push = %LogValue(&finishing.label), outcome = %LogText(&outcome), "a push {} has failed, as it should: {info}", finishing.why_alone())
        }
        Ok(info) => {
            tracing::warn!(target: "gitgate::cgi", request_id = %finishing.request_id, push = %LogValue(&finishing.label), outcome = %LogText(&outcome), "a push {} has failed: {info}", finishing.why_alone())
        }
        Err(_) => {}
    }
}

/// How much of the answer's end is kept for an `ERR` packet: git's are a line (`upload-pack:
/// not our ref <oid>`).
const ERROR_TAIL: usize = 512;

/// Keeps the last [`ERROR_TAIL`] bytes of what has been given, give or take one more tail
/// between trims: a few hundred bytes copied per 64 KiB frame.
fn keep_error_tail(tail: &mut Vec<u8>, data: &[u8]) {
    if data.len() >= ERROR_TAIL {
        tail.clear();
        tail.extend_from_slice(&data[data.len() - ERROR_TAIL..]);
    } else {
        tail.extend_from_slice(data);
        if tail.len() > 2 * ERROR_TAIL {
            tail.drain(..tail.len() - ERROR_TAIL);
        }
    }
}

/// The message of the `ERR` pkt-line (`00xxERR <message>`) that ends `output`, if one does:
/// git's way of refusing a request with a reason its client prints (`fatal: remote error:
/// upload-pack: not our ref ...`) before upload-pack dies, and with it git http-backend (exit
/// 1). Such an answer is whole — the client was told why — so its end is not a failure of the
/// backend's (see `CgiBody`'s end).
pub(super) fn git_error_at_end(output: &[u8]) -> Option<String> {
    const HEAD: usize = 4 + b"ERR ".len();
    (0..output.len().saturating_sub(HEAD - 1)).find_map(|i| {
        let length = std::str::from_utf8(&output[i..i + 4]).ok()?;
        let length = usize::from_str_radix(length, 16).ok()?;
        if !output[i..i + 4].iter().all(u8::is_ascii_hexdigit)
            || i + length != output.len()
            || &output[i + 4..i + HEAD] != b"ERR "
        {
            return None;
        }
        let message = &output[i + HEAD..];
        let message = message.strip_suffix(b"\n").unwrap_or(message);
        Some(String::from_utf8_lossy(message).into_owned())
    })
}

/// What receive-pack's whole answer (`output`) reports was done, in words for the log (see
/// [`Report`]).
#[cfg(test)]
pub(super) fn push_outcome(output: &[u8]) -> String {
    let mut report = Report::default();
    report.feed(output);
    report.outcome()
}

impl CgiBody {
    /// Returns once the request body has all been fed to the backend, or once the backend says
    /// more than its head (or its body fails); until then the response's head is held back.
    /// An error when the request body broke off or stopped coming meanwhile: the head was not
    /// sent, so the client can be told so, and the log does not claim the backend's `200`.
    ///
    /// `git http-backend` writes its head at once and only then reads the push. Passed on at
    /// once, that head answers a request still being sent, and a proxy in front of gitgate
    /// (nginx) then stops sending the rest: pushes of more than a few MB failed behind it. A
    /// backend that writes more than a head before it has read its input (one answering early)
    /// is not held, lest both wait on full pipes.
    ///
    /// A push whose client leaves while its head is held finishes as if the head had gone out
    /// (see [`CgiBody`]'s drop): its input ends early, and receive-pack removes its quarantine.
    pub(super) async fn hold_until_fed(
        &mut self,
        mut all_fed: oneshot::Receiver<Fed>,
    ) -> Result<(), CgiError> {
        if self.prefix.is_some() || self.is_end_stream() {
            return Ok(());
        }
        let early = std::future::poll_fn(|cx| {
            if let Poll::Ready(fed) = Pin::new(&mut all_fed).poll(cx) {
                return Poll::Ready(Err(fed));
            }
            Pin::new(&mut *self).poll_frame(cx).map(Ok)
        })
        .await;
        match early {
            // Its input's end reached the backend: its answer is due.
            Err(Ok(Fed::Whole)) => {
                self.fed_whole = true;
                Ok(())
            }
            // It stopped reading its input: it answered early, or it died (a receive-pack
            // killed mid-push). Which, its first frame says — held for the answer, or its
            // failure answered `502`, which git shows, rather than a `200` cut off under a
            // client still uploading (git would advise a bigger `http.postBuffer`).
            Err(Ok(Fed::NotRead)) => {
                match std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await {
                    Some(Err(e)) if UploadStalled::is(&e) => {
                        Err(CgiError::UploadStalled(self.silence.idle()))
                    }
                    // git died on a body it could not read, past the little of it that fits
                    // the pipe before the answer (garbage of more than 64 KiB).
                    Some(Err(e)) if crate::upstream::MalformedRequest::is(&e) => {
                        Err(CgiError::Malformed(e.to_string()))
                    }
                    Some(Err(e)) if crate::upstream::OverRequestBuffer::is(&e) => {
                        Err(CgiError::TooLarge(e.to_string()))
                    }
                    Some(Err(e)) => Err(CgiError::Failed(e.to_string())),
                    first => {
                        self.early = Some(first);
                        Ok(())
                    }
                }
            }
            // The request body broke off, or ended short of its length.
            Err(Err(_)) => {
                if let Some(finishing) = &mut self.finishing {
                    finishing.body_broke = true;
                }
                Err(CgiError::RequestBroke)
            }
            Ok(Some(Err(e))) if UploadStalled::is(&e) => {
                Err(CgiError::UploadStalled(self.silence.idle()))
            }
            Ok(early) => {
                self.early = Some(early);
                Ok(())
            }
        }
    }

    /// For a backend gitgate ends (its kill switch pulled, now or by the guard when this is
    /// dropped: at a stop, past [`MAX_FINISHING`], a `408`): nothing of it is let finish, but
    /// its output is still read a while. The guard closes a push's input first (see
    /// `process::INPUT_CLOSED_GRACE`); receive-pack, seeing the pack end early, says so and
    /// removes its quarantine — writing to a closed pipe would kill it first (SIGPIPE),
    /// leaving the folder.
    pub(super) fn ended_by_gitgate(&mut self) {
        let finishing = self.finishing.take();
        if let Some(stdout) = self.stdout.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let push = finishing.map(|f| {
                    let telling = Telling::new(&f.running);
                    (f, telling)
                });
                runtime.spawn(drain(stdout, push));
            }
        }
    }

    /// Pending while the backend's silence is shorter than its idle time, counted from its
    /// last output or the request body's last frame, whichever is later; past it, an error.
    /// The body's drop then ends the backend (or lets a push finish alone, which ends it when it
    /// stays silent).
    fn wait_for_output(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        ready!(self.silence.poll_over(Some(&self.uploading), cx));
        if self.uploading.waiting_for_client() {
            return Poll::Ready(Some(Err(UploadStalled(self.silence.idle()).into_io())));
        }
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the CGI backend sent nothing for {}s after its headers",
                self.silence.idle().as_secs_f32()
            ),
        ))))
    }

    /// `data` as far as the declared length goes; at its end the body is complete, and the
    /// backend is left to exit by itself.
    fn within_declared(&mut self, mut data: Bytes) -> Bytes {
        if let Some(left) = self.left {
            data.truncate(usize::try_from(left).unwrap_or(usize::MAX));
            let left = left - data.len() as u64;
            self.left = Some(left);
            if left == 0 {
                self.declared_length_sent();
            }
        }
        data
    }

    /// The end of an answer git ended with its refusal (`error`, an `ERR` packet's message).
    /// Told its client why (a fetch of an object it does not have), it is a whole answer, ended
    /// cleanly, so that git prints that reason alone — not followed by `RPC failed; curl 18` —
    /// and no backend failure is counted for a client's mistake. Unless the object refused is
    /// one the repository's own ref (`damaged`) names: then the repository is damaged, and the
    /// failure is the backend's.
    fn refused_by_git(
        &self,
        info: ExitInfo,
        error: &str,
        damaged: Option<String>,
    ) -> Option<Result<Frame<Bytes>, io::Error>> {
        let error = crate::credentials::without_secrets(error);
        if let Some(named) = damaged {
            return Some(Err(io::Error::other(format!(
                "git refused the request ({error:?}) for the object its own ref {named:?} points \
                 at, which the repository cannot read: is the repository damaged? `git fsck` in \
                 it will say; {info}"
            ))));
        }
        tracing::info!(target: "gitgate::cgi", request_id = %self.request_id, request = %LogValue(&self.label), error = %LogText(&error), "git refused the request and told its client why: {info}");
        None
    }

    pub(super) fn declared_length_sent(&mut self) {
        self.prefix = None;
        self.stdout = None;
        self.buf = BytesMut::new();
        self.exit = None;
        self.guard.disarm_until_exit_grace();
    }
}

impl fmt::Debug for CgiBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CgiBody")
            .field("reading_stdout", &self.stdout.is_some())
            .field("done", &self.is_end_stream())
            .finish()
    }
}

impl Body for CgiBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(early) = this.early.take() {
            return Poll::Ready(early);
        }
        if let Some(prefix) = this.prefix.take() {
            if let Some(finishing) = &mut this.finishing {
                finishing.heard(&prefix);
            }
            this.answered |= !prefix.is_empty();
            keep_error_tail(&mut this.tail, &prefix);
            return Poll::Ready(Some(Ok(Frame::data(this.within_declared(prefix)))));
        }

        if let Some(stdout) = &mut this.stdout {
            // Read into the buffer's spare room as it is: zeroing 64 KiB before each read (what
            // a safe `ReadBuf` over initialised bytes needs) cost a tenth of gitgate's CPU in a
            // clone through the CGI runner (`memset`, perf), as much as the copy it prepares.
            this.buf.reserve(BODY_CHUNK);
            let mut room = (&mut this.buf).limit(BODY_CHUNK);
            let result = match tokio_util::io::poll_read_buf(Pin::new(stdout), cx, &mut room) {
                Poll::Ready(result) => result,
                Poll::Pending => return this.wait_for_output(cx),
            };
            match result {
                Ok(n) if n > 0 => {
                    this.silence.heard();
                    let data = this.buf.split().freeze();
                    if let Some(finishing) = &mut this.finishing {
                        finishing.heard(&data);
                    }
                    this.answered = true;
                    keep_error_tail(&mut this.tail, &data);
                    return Poll::Ready(Some(Ok(Frame::data(this.within_declared(data)))));
                }
                Ok(_) => {
                    // The backend said all it had to say; from now on it is left to exit by
                    // itself (for a while), even if the body is dropped before we hear how.
                    this.buf = BytesMut::new();
                    this.stdout = None;
                    this.guard.disarm_until_exit_grace();
                    if let Some(short) = this.left.filter(|&left| left > 0) {
                        // Short of the length it declared, whatever its exit: the client would
                        // take a truncated answer for a whole one, were the body to end cleanly.
                        this.exit = None;
                        return Poll::Ready(Some(Err(io::Error::other(format!(
                            "the CGI backend's output ended {short} bytes short of the \
                             Content-Length it declared"
                        )))));
                    }
                }
                Err(e) => {
                    this.stdout = None;
                    this.exit = None;
                    if let Some(switch) = this.guard.switch.take() {
                        switch.kill("reading stdout failed");
                    }
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }

        if let Some(checking) = &mut this.checking {
            let damaged = ready!(Pin::new(&mut checking.verdict).poll(cx))
                .ok()
                .flatten();
            let Checking { info, error, .. } = *this.checking.take().expect("polled above");
            return Poll::Ready(this.refused_by_git(info, &error, damaged));
        }
        let Some(exit) = &mut this.exit else {
            return Poll::Ready(None);
        };
        let info = ready!(Pin::new(exit).poll(cx));
        this.exit = None;
        match info {
            Ok(info) if info.success() && (this.answered || !info.reported_a_failure()) => {
                if let Some(push) = &this.finishing {
                    log_a_refused_push(push, &info);
                }
                Poll::Ready(None)
            }

            // The same of a body git could not read (a `Content-Encoding: gzip` that does not
            // inflate: `fatal: zlib error inflating request`): the client's, as below.
            Ok(info) if info.success() && info.refused_a_malformed_request() => Poll::Ready(Some(
                Err(crate::upstream::MalformedRequest(info.to_string()).into_io()),
            )),
            // git http-backend dying after its headers on a chunked request over its buffer
            // says `fatal: ...` and exits 0, "having reported the failure": a limit of this
            // server's setup, told as one (see [`crate::upstream::OverRequestBuffer`]).
            Ok(info) if info.success() && info.refused_a_request_too_large() => {
                Poll::Ready(Some(Err(io::Error::other(
                    crate::upstream::OverRequestBuffer(info.to_string()),
                ))))
            }
            // Any other `fatal: ...` then exit 0: with no answer after the headers, that is no
            // answer at all.
            Ok(info) if info.success() => Poll::Ready(Some(Err(io::Error::other(format!(
                "the CGI backend failed after sending its response headers, without an answer \
                 (it exited 0 after a fatal error): {info}"
            ))))),
            Ok(info) => match git_error_at_end(&this.tail) {
                // git's refusal came after trouble of its own (`error: packfile ... does not
                // match index`): a damaged repository, whose objects upload-pack then cannot
                // find and calls "not our ref". The client's mistake it seems is the server's
                // failure, to be logged and counted as one.
                Some(error) if info.first_error.is_some() => {
                    Poll::Ready(Some(Err(io::Error::other(format!(
                        "git refused the request ({:?}) after an error of its own ({:?}): is the \
                         repository damaged? `git fsck` in it will say; {info}",
                        crate::credentials::without_secrets(&error),
                        info.first_error.as_deref().unwrap_or_default(),
                    )))))
                }
                // `not our ref` with nothing before it: the client's mistake, or a repository
                // that lost the object its own ref names. The repository is asked which.
                Some(error) => match (damage::refused_object(&error), &this.repository) {
                    (Some(oid), Some(repository)) => {
                        let verdict = tokio::spawn(damage::ref_without_its_object(
                            repository.clone(),
                            oid.to_owned(),
                        ));
                        this.checking = Some(Box::new(Checking {
                            info,
                            error,
                            verdict,
                        }));
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    _ => Poll::Ready(this.refused_by_git(info, &error, None)),
                },
                None if info.refused_a_malformed_request()
                    || (this.fed_whole && info.found_its_input_cut_short()) =>
                {
                    Poll::Ready(Some(Err(crate::upstream::MalformedRequest(
                        info.to_string(),
                    )
                    .into_io())))
                }
                None if fork_shortage(&info).is_some() => {
                    let shortage = fork_shortage(&info).unwrap_or_default();
                    Poll::Ready(Some(Err(io::Error::other(format!(
                        "git could not start a process of its own after its response headers: \
                         this server is out of {shortage}, a capacity problem, not a broken \
                         repository; {info}"
                    )))))
                }
                None => Poll::Ready(Some(Err(io::Error::other(format!(
                    "the CGI backend failed after sending its response headers: {info}"
                ))))),
            },
            Err(_) => Poll::Ready(Some(Err(io::Error::other(
                "the CGI backend's supervisor went away",
            )))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.checking.is_none()
            && self.early.is_none()
            && self.prefix.is_none()
            && self.stdout.is_none()
            && self.exit.is_none()
    }
}
