//! The backend's process and its group, from spawn to reaping: the kill switch a request pulls,
//! the supervisor that owns the child, the count of processes not yet reaped, and how a
//! group is ended (SIGTERM, then SIGKILL) without signalling a reused id.

use std::fmt;
use std::io;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};
use tokio::process::Child;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::cap::Place;
use crate::metrics::METRICS;

/// After the backend exited, how long we wait for its stderr to drain (a grandchild that kept
/// the pipe open must not hold the response hostage).
pub(super) const STDERR_GRACE: Duration = Duration::from_secs(1);

/// The same for a backend that exited successfully, whose last stderr line explains nothing.
pub(super) const SUCCESS_STDERR_GRACE: Duration = Duration::from_millis(50);

/// How long an ended backend's process group gets after SIGTERM before SIGKILL.
pub(super) const TERM_GRACE: Duration = Duration::from_secs(2);

/// How long a push that is to be ended is given to end by itself once its input is closed,
/// before SIGTERM. git receive-pack has no handler for SIGTERM while it waits for the pack
/// (`index-pack` or `unpack-objects` reading it): killed then, it leaves the pack it was
/// receiving in `objects/tmp_objdir-incoming-*` for good; its input ending early, it fails the
/// push and removes that folder at once (measured: within 20 ms).
pub(super) const INPUT_CLOSED_GRACE: Duration = Duration::from_secs(1);

/// Tells the supervisor to kill the child, with a reason for the error message. Cheap to clone;
/// the first reason wins.
#[derive(Clone)]
pub(super) struct KillSwitch(Arc<watch::Sender<Option<String>>>);

impl KillSwitch {
    pub(super) fn new() -> Self {
        KillSwitch(Arc::new(watch::channel(None).0))
    }

    pub(super) fn kill(&self, reason: &str) {
        self.0.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason.to_owned());
            true
        });
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.0.subscribe()
    }
}

/// Resolves once someone pulled the switch; never, if every switch was dropped unpulled.
pub(super) async fn killed(rx: &mut watch::Receiver<Option<String>>) -> String {
    let reason = rx
        .wait_for(Option::is_some)
        .await
        .map(|reason| reason.clone().unwrap_or_default());
    match reason {
        Ok(reason) => reason,
        Err(_) => std::future::pending().await,
    }
}

/// Pulls the switch when dropped, unless disarmed first.
pub(super) struct KillGuard {
    pub(super) switch: Option<KillSwitch>,
    pub(super) reason: &'static str,
}

impl KillGuard {
    pub(super) fn new(switch: KillSwitch, reason: &'static str) -> Self {
        KillGuard {
            switch: Some(switch),
            reason,
        }
    }

    pub(super) fn disarmed() -> Self {
        KillGuard {
            switch: None,
            reason: "",
        }
    }

    /// For a backend that has said all it had to say (its stdout closed, or the length it
    /// declared sent): disarmed, so that it is left to exit by itself, but for
    /// [`EXIT_GRACE`](super::EXIT_GRACE) at most, as one that closed its stdout before its
    /// headers. One that stays (a program that hangs, or closes its stdout and goes on) would
    /// otherwise hold its process, its place under `[upstream] max_processes`, and a chunked
    /// answer waiting for its exit, for as long as it runs. The wait ends when the supervisor
    /// has reaped it (it pulls the switch then).
    pub(super) fn disarm_until_exit_grace(&mut self) {
        let Some(switch) = self.switch.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut ended = switch.subscribe();
            if tokio::time::timeout(super::EXIT_GRACE, killed(&mut ended))
                .await
                .is_err()
            {
                switch.kill("it said all it had to say but did not exit");
            }
        });
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        if let Some(switch) = self.switch.take() {
            switch.kill(self.reason);
        }
    }
}

/// How the child ended, for error messages.
#[derive(Debug)]
pub(super) struct ExitInfo {
    pub(super) status: io::Result<ExitStatus>,
    pub(super) last_stderr: Option<String>,
    /// git's first `error:` line before its `fatal:` (see `StderrWords`).
    pub(super) first_error: Option<String>,
    pub(super) killed: Option<String>,
}

impl ExitInfo {
    pub(super) fn success(&self) -> bool {
        matches!(&self.status, Ok(s) if s.success())
    }

    /// Whether its last word on stderr was a fatal error (`fatal: ...`, git's `die`), which
    /// git http-backend follows with exit 0 (see `CgiBody`'s end).
    pub(super) fn reported_a_failure(&self) -> bool {
        self.last_stderr
            .as_deref()
            .is_some_and(|l| l.starts_with("fatal:"))
    }

    /// Whether git http-backend died on a chunked request larger than it buffers (its
    /// `GIT_HTTP_MAX_REQUEST_BUFFER`, which gitgate sets from `[upstream]
    /// max_request_buffer_mib`): `fatal: request was larger than our maximum size (N); try
    /// setting GIT_HTTP_MAX_REQUEST_BUFFER`.
    pub(super) fn refused_a_request_too_large(&self) -> bool {
        self.last_stderr
            .as_deref()
            .is_some_and(|l| l.contains("request was larger than our maximum size"))
    }

    /// Whether git died saying its input ended before it should have (see
    /// [`super::stdio::is_input_cut_short`]).
    pub(super) fn found_its_input_cut_short(&self) -> bool {
        self.last_stderr
            .as_deref()
            .is_some_and(super::stdio::is_input_cut_short)
    }

    /// Whether git died on what the client sent (see [`is_malformed_request`]).
    pub(super) fn refused_a_malformed_request(&self) -> bool {
        self.last_stderr
            .as_deref()
            .is_some_and(is_malformed_request)
    }
}

/// Whether a stderr line is git dying on a request it could not read: pkt-lines that are not
/// pkt-lines, a protocol v2 command or argument it does not know, a line where a flush belongs.
/// Real git never sends such a request; a hand-made client (or one through something that
/// mangled the body) did, and the failure is its own — not a backend failure to alert on. So
/// is a shallow fetch that asks what the repository cannot give, which real git does send.
pub(super) fn is_malformed_request(line: &str) -> bool {
    const CLIENTS: [&str; 12] = [
        "unexpected line:",
        // git http-backend's own, of a `Content-Encoding: gzip` body that does not inflate.
        "zlib error inflating request",
        "protocol error:",
        "expected flush after",
        "invalid command",
        "unknown capability",
        "git upload-pack: protocol error",
        "git upload-pack: expected",
        "expected packfile",
        // A shallow fetch asking for what the repository cannot give, as real git can: a
        // `--shallow-since` after every commit, a `--shallow-exclude` of no single ref, both
        // `--depth` and `--shallow-since`. git dies without an `ERR` packet for these.
        "no commits selected for shallow requests",
        "git upload-pack: ambiguous deepen-not",
        "git upload-pack: deepen and deepen-since (or deepen-not) cannot be used together",
    ];
    line.strip_prefix("fatal: ")
        .is_some_and(|rest| CLIENTS.iter().any(|c| rest.starts_with(c)))
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.status {
            Ok(status) => write!(f, "{status}")?,
            Err(e) => write!(f, "could not wait for it: {e}")?,
        }
        if let Some(reason) = &self.killed {
            write!(f, " (killed by gitgate: {reason})")?;
        }
        match &self.last_stderr {
            Some(line) => write!(f, "; last stderr line: {line:?}"),
            None => write!(f, "; nothing on stderr"),
        }
    }
}

/// The processes of one backend (one worker) started and not yet reaped.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) count: AtomicUsize,
    /// Pushes gitgate ended whose outcome is still to be logged ([`Telling`](super::body::Telling)).
    pub(super) telling: AtomicUsize,
    /// Woken when `count` or `telling` drops to zero.
    pub(super) all_reaped: Notify,
    /// Pushes finishing without their client ([`Finishing`](super::body::Finishing)).
    pub(super) finishing: AtomicUsize,
    /// Woken when `finishing` drops to zero.
    pub(super) none_finishing: Notify,
    /// Set when gitgate stops: pushes finishing alone are ended, and no more start.
    pub(super) stopping: watch::Sender<bool>,
}

impl Default for Running {
    fn default() -> Self {
        Running {
            count: AtomicUsize::new(0),
            telling: AtomicUsize::new(0),
            all_reaped: Notify::new(),
            finishing: AtomicUsize::new(0),
            none_finishing: Notify::new(),
            stopping: watch::channel(false).0,
        }
    }
}

/// One process counted in its backend's [`Running`] until its supervisor has reaped it (or is
/// dropped).
/// Holds its place under `[upstream] max_processes` as long.
pub(super) struct Counted(Arc<Running>, #[allow(dead_code)] Option<Place>);

impl Counted {
    pub(super) fn new(running: Arc<Running>, place: Option<Place>) -> Counted {
        running.count.fetch_add(1, Ordering::AcqRel);
        METRICS.backend_process_started();
        Counted(running, place)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        METRICS.backend_process_reaped();
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_reaped.notify_waiters();
        }
    }
}

/// Whether this process may run `program`: the kernel's own check for gitgate's effective user
/// (`faccessat` with `AT_EACCESS`), not the mode bits — a program mode 0700 owned by another
/// user has execute bits, and every request would end in a 502 "permission denied".
pub fn may_execute(program: &Path) -> io::Result<()> {
    use rustix::fs::{accessat, Access, AtFlags, CWD};
    accessat(CWD, program, Access::EXEC_OK, AtFlags::EACCESS).map_err(io::Error::from)
}

/// Owns the child until it has been reaped: waits for it to exit, or kills it when asked and then
/// waits. Reports how it ended, with the last stderr line, to whoever still wants to know.
pub(super) async fn supervise(
    mut child: Child,
    switch: KillSwitch,
    mut stderr: JoinHandle<super::stdio::StderrWords>,
    report: oneshot::Sender<ExitInfo>,
    counted: Counted,
    push: bool,
) {
    let mut kill = switch.subscribe();
    let mut killed_for = None;
    // The leader's end, seen without reaping it where the kernel allows (see `ExitWatch`).
    let mut watch = group_of(&child).and_then(|g| ExitWatch::new(g).ok().map(|w| (g, w)));
    let status = loop {
        if let Some((group, exits)) = &watch {
            tokio::select! {
                died = exits.died() => match died {
                    Ok(signaled) => {
                        if signaled {
                            // Killed by a signal (the OOM killer, an operator): what it started
                            // is left working for nobody. Ended while the dead leader's id still
                            // holds the group.
                            let _ = kill_process_group(*group, Signal::KILL);
                        }
                        break child.wait().await;
                    }
                    Err(_) => watch = None, // wait as below
                },
                reason = killed(&mut kill) => {
                    tracing::debug!(target: "gitgate::cgi", reason = %crate::log_value::LogText(&reason.to_string()), "killing CGI backend");
                    killed_for = Some(reason);
                    if push {
                        // Its input is closed with the same switch (the stdin task stops):
                        // receive-pack, seeing the pack end early, removes its quarantine.
                        if let Ok(Ok(signaled)) = tokio::time::timeout(INPUT_CLOSED_GRACE, exits.died()).await {
                            if signaled {
                                let _ = kill_process_group(*group, Signal::KILL);
                            }
                            break child.wait().await;
                        }
                    }
                    break end_group(&mut child).await;
                }
            }
            continue;
        }
        tokio::select! {
            status = child.wait() => break status,
            reason = killed(&mut kill) => {
                tracing::debug!(target: "gitgate::cgi", reason = %crate::log_value::LogText(&reason.to_string()), "killing CGI backend");
                killed_for = Some(reason);
                if push {
                    if let Ok(status) = tokio::time::timeout(INPUT_CLOSED_GRACE, child.wait()).await {
                        break status;
                    }
                }
                break end_group(&mut child).await;
            }
        }
    };
    // Reaped. Pulling the switch now only stops the stdin task, which must not hang on to the
    // client's body for a backend that is gone.
    drop(counted);
    switch.kill("the backend exited");
    // The last stderr line explains a failure, worth a second's wait. A success waits only
    // a moment: a hook's background job that keeps the pipe open would otherwise hold every
    // answer back by the full grace. Its lines are still logged as they come.
    let failed = killed_for.is_some() || !matches!(&status, Ok(s) if s.success());
    let grace = if failed {
        STDERR_GRACE
    } else {
        SUCCESS_STDERR_GRACE
    };
    let words = match tokio::time::timeout(grace, &mut stderr).await {
        Ok(words) => words.unwrap_or_default(),
        Err(_) if !failed => {
            // Left to log the rest for the full grace, off the answer's path; then ended like a
            // failure's, so that a job holding the pipe for good holds no task and no descriptor
            // of gitgate's.
            tokio::spawn(async move {
                if tokio::time::timeout(STDERR_GRACE, &mut stderr)
                    .await
                    .is_err()
                {
                    stderr.abort();
                }
            });
            Default::default()
        }
        Err(_) => {
            stderr.abort();
            Default::default()
        }
    };
    let _ = report.send(ExitInfo {
        status,
        last_stderr: words.last,
        first_error: words.first_error,
        killed: killed_for,
    });
}

/// The child's process group (its own id: it leads a group of its own), while not reaped.
pub(super) fn group_of(child: &Child) -> Option<Pid> {
    child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw)
}

/// Sees a group leader's end without reaping it: a dead but unreaped leader keeps its id, and
/// so its group's, from being reused, and the rest of the group can still be signalled safely.
pub(super) struct ExitWatch(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>);

impl ExitWatch {
    /// `Err` when the kernel has no pidfd (before Linux 5.4): callers then wait as before.
    pub(super) fn new(leader: Pid) -> io::Result<ExitWatch> {
        use rustix::process::{pidfd_open, PidfdFlags};
        let pidfd = pidfd_open(leader, PidfdFlags::NONBLOCK)?;
        // Deprecated because a type could return another descriptor later; an `OwnedFd` cannot.
        #[allow(deprecated)]
        let pidfd = tokio::io::unix::AsyncFd::with_interest(pidfd, tokio::io::Interest::READABLE)?;
        Ok(ExitWatch(pidfd))
    }

    /// Waits until the leader has exited, leaving it unreaped; `true` when it died of a signal.
    async fn died(&self) -> io::Result<bool> {
        use rustix::process::{waitid, WaitId, WaitIdOptions};
        use std::os::fd::AsFd;
        loop {
            let mut ready = self.0.readable().await?;
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
            match waitid(WaitId::PidFd(self.0.get_ref().as_fd()), options)? {
                Some(status) => return Ok(status.terminating_signal().is_some()),
                None => ready.clear_ready(),
            }
        }
    }
}

/// Ends the child and every process in its group: SIGTERM first, so that git removes its
/// temporary files (a push's quarantined objects, a half-written pack), then, after
/// [`TERM_GRACE`], SIGKILL for whatever of the group is left — the child itself, or a
/// descendant that ignores SIGTERM after the child is gone. Signals go to the group only while
/// the child is not reaped yet — its id is still taken then, so the group cannot be someone
/// else's. Errors from `kill` mean the group is already gone, which is what we wanted.
pub(super) async fn end_group(child: &mut Child) -> io::Result<ExitStatus> {
    let Some(group) = group_of(child) else {
        return child.wait().await; // already reaped
    };
    let _ = kill_process_group(group, Signal::TERM);
    let deadline = tokio::time::Instant::now() + TERM_GRACE;
    let died = async {
        match ExitWatch::new(group) {
            Ok(exits) => exits.died().await,
            Err(e) => Err(e),
        }
    };
    match tokio::time::timeout_at(deadline, died).await {
        Ok(Ok(_)) => {
            // The leader is gone but unreaped (its id, the group's, cannot be taken by another
            // process meanwhile). The rest of the group (git's helpers, cleaning up after
            // SIGTERM) gets what is left of the grace period, then SIGKILL — looked for in
            // `/proc` every 20 ms, so that a group that is all gone is reaped at once: waiting
            // the grace out held every answer that ends a backend (a `400` for a broken body)
            // for two seconds. Where `/proc` cannot say, the grace is waited out.
            while tokio::time::Instant::now() < deadline {
                let others = tokio::task::spawn_blocking(move || others_in_group(group)).await;
                if matches!(others, Ok(Some(false))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = kill_process_group(group, Signal::KILL);
            child.wait().await
        }
        // No pidfd: wait for the leader as before.
        Ok(Err(_)) => match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                let _ = kill_process_group(group, Signal::KILL);
                let _ = child.start_kill();
                child.wait().await
            }
        },
        Err(_) => {
            let _ = kill_process_group(group, Signal::KILL);
            let _ = child.start_kill();
            child.wait().await
        }
    }
}

/// Whether a process other than its leader is in process group `group`, from each process's
/// `/proc/PID/stat` (its fifth field); `None` where `/proc` cannot be read.
fn others_in_group(group: Pid) -> Option<bool> {
    let leader = group.as_raw_nonzero().get();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == leader {
            continue;
        }
        // Gone in between, or not ours to read: not in the group as far as can be told.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if group_in_stat(&stat) == Some(leader) {
            return Some(true);
        }
    }
    Some(false)
}

/// The process group in a `/proc/PID/stat` line: `PID (COMM) STATE PPID PGRP ...`, the command
/// name in parentheses that may hold spaces and parentheses itself (so read after the last).
fn group_in_stat(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::is_malformed_request;

    #[test]
    fn a_process_group_is_read_from_a_stat_line() {
        use super::group_in_stat;
        assert_eq!(group_in_stat("123 (git) S 1 120 120 0 -1"), Some(120));
        assert_eq!(group_in_stat("123 (a b) c)) R 1 77 77 0"), Some(77));
        assert_eq!(group_in_stat("123 (git"), None);
        assert_eq!(group_in_stat(""), None);
    }

    /// This process's group has this process in it, and a group nobody has, nobody.
    #[test]
    fn the_members_of_a_group_are_found_in_proc() {
        use super::others_in_group;
        let own_group = rustix::process::getpgrp();
        let own = rustix::process::getpid();
        if own_group != own {
            assert_eq!(others_in_group(own_group), Some(true));
        }
        let nobodys = rustix::process::Pid::from_raw(i32::MAX - 7).unwrap();
        assert_eq!(others_in_group(nobodys), Some(false));
    }

    #[test]
    fn git_dying_on_what_the_client_sent_is_told_from_a_failing_server() {
        for line in [
            "fatal: unexpected line: 'symrefs0'",
            "fatal: protocol error: bad line length character: abcd",
            "fatal: expected flush after ls-refs arguments",
            "fatal: invalid command 'frobnicate'",
            "fatal: git upload-pack: protocol error, expected to get object ID, not 'x'",
            "fatal: no commits selected for shallow requests",
            "fatal: git upload-pack: ambiguous deepen-not: deepen-not nonexist",
            "fatal: git upload-pack: deepen and deepen-since (or deepen-not) cannot be used together",
            "fatal: zlib error inflating request, result -3",
        ] {
            assert!(is_malformed_request(line), "{line}");
        }
        for line in [
            "fatal: unable to read 4b825dc642cb6eb9a060e54bf8d69288fbee4904",
            "fatal: the remote end hung up unexpectedly",
            "error: unexpected line: 'x'",
            "fatal: not a git repository: '/srv/git/team/app.git'",
        ] {
            assert!(!is_malformed_request(line), "{line}");
        }
    }

    /// A process alone in the group it leads has no others in it: its own entry in `/proc`
    /// does not count, or every ended backend would wait out the whole grace before being
    /// reaped.
    #[test]
    fn a_leader_alone_in_its_group_has_no_others_in_it() {
        use super::others_in_group;
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let group = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let alone = others_in_group(group);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(alone, Some(false));
    }

    /// The first reason given for ending a backend is the one kept: a later pull (the
    /// supervisor's own "the backend exited") does not overwrite why it was ended.
    #[test]
    fn the_first_reason_to_kill_a_backend_is_the_one_kept() {
        let switch = super::KillSwitch::new();
        let seen = switch.subscribe();
        switch.kill("request body failed");
        switch.kill("the backend exited");
        assert_eq!(seen.borrow().as_deref(), Some("request body failed"));
    }

    /// git's words for a client's mistake count only where its `fatal:` line begins with them:
    /// the same words further on (in a path, in text a hook quoted) are a failure like any
    /// other, to be alerted on.
    #[test]
    fn a_clients_mistake_is_told_by_how_the_fatal_line_begins() {
        for line in [
            "fatal: not a git repository: '/srv/git/protocol error: x.git'",
            "fatal: hook declined: invalid command",
            "fatal: cannot read: unexpected line: x",
        ] {
            assert!(!is_malformed_request(line), "{line}");
        }
    }
}
