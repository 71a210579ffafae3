//! The server's log lines, written to stderr by a thread of their own, so that a log reader
//! that stops reading never stops the server.
//!
//! Written where they are made, every line was a blocking `write` to stderr: when its reader
//! stops — a terminal held with Ctrl-S, a `| tee` on a stuck disk, a container runtime's log
//! driver in its default blocking mode, a journal that stalls — the pipe fills (64 KiB, some
//! 150 request lines) and the next request's log line blocks its worker thread, then every
//! other: the server stopped answering anything, `/healthz` included, after 155 requests in a
//! test. nginx drops nothing but writes its access log to a file; gitgate writes to stderr.
//!
//! So a line is written where it is made only when that cannot block: stderr is reopened
//! non-blocking for gitgate alone (a pipe or a terminal: `/proc/self/fd/2` opened again, a
//! description of its own, so the shell's is untouched), or written with `MSG_DONTWAIT` (a
//! socket: the journal's). While the reader keeps up — nearly always — every line is out when
//! its call returns, in order, as before. A write that would block puts the rest of the line
//! into a queue in memory ([`QUEUE_BYTES`] at most) that a writer thread empties, blocking,
//! many lines to a write; lines that come meanwhile queue behind it, so the order holds. A
//! queue that is full — its reader has not kept up for a while — drops the newest lines and
//! counts them (`gitgate_log_lines_dropped_total`); a line says how many were lost where they
//! were, when the queue is written. At the stop, what is queued is written before the process exits, for
//! [`FLUSH_PATIENCE`] at most: a reader that never reads again must not keep the server from
//! stopping either. A regular file is written as before (a file has no reader to wait for),
//! at its end from the start on (see `append_from_now_on`: rotated by `copytruncate`).
//! A write that fails (a full disk under a log file) loses its line, counted with the dropped
//! ones; the part of a line it left is ended with a newline before the next line, so that one
//! is whole, and the loss is said once a line can be written again.
//!
//! Used by `serve` only: a command's few warnings are written as they come.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The most bytes of lines held for a reader that does not keep up: some 10,000 request lines.
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// How much more an important line may find queued before it is dropped (see
/// [`LogQueue::push`]).
pub const RESERVE_BYTES: usize = 1024 * 1024;

thread_local! {
    /// The writer's batch while it says lines were dropped (see [`LogQueue::write_to`]): what
    /// it logs then is added to it, where the lines were lost.
    static SAYING_DROPS: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

/// How long the stop waits for the queued lines to be written.
pub const FLUSH_PATIENCE: Duration = Duration::from_secs(5);

/// Lines dropped for a full queue since the start: `gitgate_log_lines_dropped_total`.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// How a line is written where it is made, without blocking (see the module doc).
#[derive(Debug)]
pub enum Direct {
    /// Every line goes through the queue.
    Never,
    /// A description of stderr's own, non-blocking (a pipe, a terminal).
    Nonblocking(std::os::fd::OwnedFd),
    /// A socket, written with `MSG_DONTWAIT`.
    Socket(std::os::fd::RawFd),
    /// A regular file: written as it comes (it blocks on nothing a reader does).
    File(std::os::fd::RawFd),
    /// A test's stand-in for a descriptor, taking what its script says.
    #[cfg(test)]
    Scripted(tests::Script),
}

impl Direct {
    /// How stderr (fd 2) can be written without blocking.
    pub fn for_stderr() -> Direct {
        Direct::for_fd(2)
    }

    fn for_fd(fd: std::os::fd::RawFd) -> Direct {
        use std::os::fd::{FromRawFd, OwnedFd};
        let mut stat = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: fstat fills the stat it is given and says whether it did.
        if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
            return Direct::Never;
        }
        // SAFETY: filled by fstat (zeroed before in any case).
        let mode = unsafe { stat.assume_init() }.st_mode & libc::S_IFMT;
        match mode {
            libc::S_IFREG => {
                append_from_now_on(fd);
                Direct::File(fd)
            }
            libc::S_IFSOCK => Direct::Socket(fd),
            libc::S_IFIFO | libc::S_IFCHR => {
                let path =
                    std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default();
                // SAFETY: a path and flags; the descriptor returned is ours alone.
                let own = unsafe {
                    libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
                    )
                };
                if own < 0 {
                    Direct::Never
                } else {
                    // SAFETY: just opened, owned by nothing else.
                    Direct::Nonblocking(unsafe { OwnedFd::from_raw_fd(own) })
                }
            }
            _ => Direct::Never,
        }
    }

    /// Writes what it can of `bytes` without blocking: how much went out (all of it, or less
    /// when the reader is behind), and the error that stopped it, if one other than a full
    /// buffer did (a full disk under a log file, a reader gone): the rest of the line is lost.
    fn write(&self, bytes: &[u8]) -> (usize, Option<std::io::Error>) {
        use std::os::fd::AsRawFd;
        let mut done = 0;
        while done < bytes.len() {
            let rest = &bytes[done..];
            // SAFETY: writes from a live slice of its own length.
            let n = unsafe {
                match self {
                    Direct::Never => return (0, None),
                    Direct::Nonblocking(fd) => {
                        libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len())
                    }
                    Direct::Socket(fd) => libc::send(
                        *fd,
                        rest.as_ptr().cast(),
                        rest.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    ),
                    Direct::File(fd) => libc::write(*fd, rest.as_ptr().cast(), rest.len()),
                    #[cfg(test)]
                    Direct::Scripted(script) => script.write(rest),
                }
            };
            match usize::try_from(n) {
                Ok(0) => return (done, Some(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => done += n,
                Err(_) => {
                    let error = std::io::Error::last_os_error();
                    match error.kind() {
                        std::io::ErrorKind::Interrupted => {}
                        std::io::ErrorKind::WouldBlock => return (done, None),
                        _ => return (done, Some(error)),
                    }
                }
            }
        }
        (done, None)
    }
}

/// Makes every later write to the regular file `fd` go to its end (`O_APPEND`), as `2>>` would.
///
/// gitgate cannot reopen its log (it has only the descriptor it was given), so a log file is
/// rotated by copying it and emptying it in place (logrotate's `copytruncate`). A file opened
/// without `O_APPEND` — `serve 2>gitgate.log`, systemd's `StandardError=file:` — is written at
/// the descriptor's own offset: after the emptying, the next line landed at that old offset,
/// and the file began with as many NUL bytes as the rotated log had held. Set on the open file
/// description itself, so that the writer thread and anything else writing to stderr append
/// too; a file is only ever added to, so nothing else sharing it is harmed. A failure leaves
/// the file as it was.
fn append_from_now_on(fd: std::os::fd::RawFd) {
    // SAFETY: reads and sets the status flags of a descriptor that fstat has just seen open.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 && flags & libc::O_APPEND == 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_APPEND);
        }
    }
}

/// The queue between the threads that log and the one that writes.
pub struct LogQueue {
    state: Mutex<State>,
    direct: Direct,
    /// Woken when there are lines to write, or the queue closes.
    lines_came: Condvar,
    /// Woken when the writer has written everything (or gave up at the close).
    emptied: Condvar,
    capacity: usize,
}

/// What the queue holds: a line, or how many were dropped at that point (said there), from when
/// (epoch ms: the warning is written later, after lines queued before the first drop, whose
/// times are earlier than its own).
enum Entry {
    Line(Vec<u8>),
    Dropped {
        count: u64,
        since_ms: i64,
    },
    /// Lines a failed write lost ([`Lost`]), said where they were once writing works again.
    Lost(Lost),
}

/// Lines lost because writing them failed — a full disk under a log file — since `since_ms`
/// (epoch ms), with the first error; `torn` when the last write left part of a line in the
/// log, which the next line must not be glued to.
struct Lost {
    count: u64,
    since_ms: i64,
    error: String,
    torn: bool,
}

#[derive(Default)]
struct State {
    entries: VecDeque<Entry>,
    /// The bytes of the lines queued.
    bytes: usize,
    /// The writer is waiting for lines: only then is it woken (a wake is a system call).
    writer_idle: bool,
    /// Entries are being written (taken from the queue, not yet out).
    writing: bool,
    closed: bool,
    /// Lines lost to failed writes, not yet said (see [`LogQueue::push`]).
    lost: Option<Lost>,
}

impl State {
    fn queue(&mut self, line: &[u8]) {
        self.bytes += line.len();
        self.entries.push_back(Entry::Line(line.to_vec()));
    }

    /// One line lost to a failed write (`error`), `torn` if part of it was written.
    fn lose_one(&mut self, error: &std::io::Error, torn: bool) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        let lost = self.lost.get_or_insert_with(|| Lost {
            count: 0,
            since_ms: crate::clock::now_ms(),
            error: error.to_string(),
            torn: false,
        });
        lost.count += 1;
        lost.torn = torn;
    }

    /// One line dropped here: counted in the marker at the queue's end, or a new one.
    fn drop_one(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        if let Some(Entry::Dropped { count, .. }) = self.entries.back_mut() {
            *count += 1;
        } else {
            self.entries.push_back(Entry::Dropped {
                count: 1,
                since_ms: crate::clock::now_ms(),
            });
        }
    }
}

impl LogQueue {
    pub fn new(capacity: usize, direct: Direct) -> Arc<LogQueue> {
        Arc::new(LogQueue {
            state: Mutex::new(State::default()),
            direct,
            lines_came: Condvar::new(),
            emptied: Condvar::new(),
            capacity,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock is held leaves a queue of whole lines: go on with it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes one line where it can without blocking, else queues what is left of it (or
    /// drops it, counted where it would have been, when the queue is full). An `important`
    /// line — a warning, an error, the server's own start and stop — may take
    /// [`RESERVE_BYTES`] more: a flood of request lines a reader did not keep up with must not
    /// cost the line that says the server stopped.
    pub fn push(&self, line: &[u8], important: bool) {
        // The writer's own line of lines dropped goes where the drop is, not into the queue.
        if SAYING_DROPS
            .with_borrow_mut(|said| said.as_mut().map(|said| said.extend_from_slice(line)))
            .is_some()
        {
            return;
        }
        let mut state = self.state();
        let mut line = line;
        // Nothing waits before it: out now, under the lock, so that lines keep their order.
        if state.entries.is_empty() && !state.writing {
            // A line cut short by a failed write (a full disk) is ended first: the next line
            // glued to its fragment would be lost to a log reader too.
            if state.lost.as_ref().is_some_and(|lost| lost.torn) {
                match self.direct.write(b"\n") {
                    (1, _) => {}
                    (_, Some(error)) => return state.lose_one(&error, true),
                    (_, None) => state.queue(b"\n"),
                }
                if let Some(lost) = &mut state.lost {
                    lost.torn = false;
                }
            }
        }
        if state.entries.is_empty() && !state.writing {
            let (written, error) = self.direct.write(line);
            if let Some(error) = error {
                return state.lose_one(&error, written > 0);
            }
            // Writing works again: the lines lost before are said after this one's start.
            let lost = state.lost.take();
            if written == line.len() && lost.is_none() {
                return;
            }
            // The rest of a line begun must follow it, whatever the queue holds.
            line = &line[written..];
            if written > 0 || lost.is_some() {
                if !line.is_empty() {
                    state.queue(line);
                }
                if let Some(lost) = lost {
                    state.entries.push_back(Entry::Lost(lost));
                }
                self.wake_the_writer(&mut state);
                return;
            }
        }
        let room = if important {
            self.capacity + RESERVE_BYTES
        } else {
            self.capacity
        };
        if state.bytes + line.len() > room {
            state.drop_one();
        } else {
            state.queue(line);
        }
        self.wake_the_writer(&mut state);
    }

    fn wake_the_writer(&self, state: &mut State) {
        if state.writer_idle {
            state.writer_idle = false;
            self.lines_came.notify_one();
        }
    }

    /// Takes what is queued, waiting for it: `None` once the queue is closed and empty.
    fn take(&self) -> Option<VecDeque<Entry>> {
        let mut state = self.state();
        state.writing = false;
        loop {
            if !state.entries.is_empty() {
                state.bytes = 0;
                state.writing = true;
                return Some(std::mem::take(&mut state.entries));
            }
            self.emptied.notify_all();
            if state.closed {
                return None;
            }
            state.writer_idle = true;
            state = self
                .lines_came
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Closes the queue (the writer ends once it is empty) and waits, `patience` at most, for
    /// what it holds to be written, its drops said; whether it was.
    pub fn close(&self, patience: Duration) -> bool {
        let mut state = self.state();
        state.closed = true;
        self.wake_the_writer(&mut state);
        let (state, timeout) = self
            .emptied
            .wait_timeout_while(state, patience, |s| !s.entries.is_empty() || s.writing)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(state);
        !timeout.timed_out()
    }

    /// The writer: until the queue closes, writes what is queued to `out`, many lines to a
    /// write; a failed write loses its lines, as a log on a full disk does. Where lines were
    /// dropped, `say_dropped` is told how many and since when (epoch ms), and the error of the
    /// write that lost them if a failed write did (not a full queue), and what it logs (a line
    /// of the log's own format, through this queue's [`LogQueue::push`]) is written there.
    pub fn write_to(&self, mut out: impl Write, say_dropped: impl Fn(u64, i64, Option<&str>)) {
        let mut batch = Vec::with_capacity(64 * 1024);
        while let Some(entries) = self.take() {
            batch.clear();
            for entry in entries {
                match entry {
                    Entry::Line(line) => batch.extend_from_slice(&line),
                    Entry::Dropped { count, since_ms } => {
                        SAYING_DROPS.set(Some(std::mem::take(&mut batch)));
                        say_dropped(count, since_ms, None);
                        batch = SAYING_DROPS.take().unwrap_or_default();
                    }
                    Entry::Lost(lost) => {
                        SAYING_DROPS.set(Some(std::mem::take(&mut batch)));
                        say_dropped(lost.count, lost.since_ms, Some(&lost.error));
                        batch = SAYING_DROPS.take().unwrap_or_default();
                    }
                }
            }
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
    }
}

/// Starts the writer thread of `queue`, writing to stderr.
pub fn start_writer(queue: &Arc<LogQueue>) -> std::io::Result<()> {
    let queue = Arc::clone(queue);
    std::thread::Builder::new()
        .name("gitgate-log".into())
        .spawn(move || {
            queue.write_to(std::io::stderr(), say_dropped);
        })
        .map(drop)
}

/// The warning written where `dropped` lines were lost, the first of them at `since_ms`: for a
/// full queue, or for the `error` of a failed write.
fn say_dropped(dropped: u64, since_ms: i64, error: Option<&str>) {
    if let Some(error) = error {
        return say_lost(dropped, since_ms, error);
    }
    tracing::warn!(
        target: "gitgate::log_queue",
        dropped,
        // This line's own time is when it could be written, after lines queued before the
        // first drop: when the dropping began.
        since = %crate::clock::datetime(since_ms),
        "log lines dropped: the log's reader did not keep up (more than {} MiB of lines waited \
         to be written); see gitgate_log_lines_dropped_total",
        QUEUE_BYTES / (1024 * 1024)
    );
}

/// The warning written once lines can be written again after some could not be.
fn say_lost(dropped: u64, since_ms: i64, error: &str) {
    tracing::warn!(
        target: "gitgate::log_queue",
        dropped,
        since = %crate::clock::datetime(since_ms),
        error = %crate::log_value::LogText(error),
        "log lines dropped: writing them failed (a full disk under the log file, say); see \
         gitgate_log_lines_dropped_total"
    );
}

/// Held by `main` while it serves: at its drop (the end of `main`, or a panic unwinding it),
/// the queued lines are written, [`FLUSH_PATIENCE`] at most.
pub struct Flush(pub Arc<LogQueue>);

impl Drop for Flush {
    fn drop(&mut self) {
        self.0.close(FLUSH_PATIENCE);
    }
}

/// A [`tracing_subscriber::fmt::MakeWriter`] that queues each line.
#[derive(Clone)]
pub struct Queued(pub Arc<LogQueue>);

/// One event's bytes on their way into the queue (the formatter writes an event with one
/// `write_all`).
pub struct QueuedLine<'a>(&'a LogQueue, bool);

impl Write for QueuedLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf, self.1);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Queued {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine(&self.0, false)
    }

    /// A warning or an error, or a line of the server's start and stop (`gitgate::server`:
    /// `listening on`, `shutting down`, `stopped: ...`) or of what it read again on SIGHUP
    /// (`gitgate::reload`), is important (see [`LogQueue::push`]).
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        let important = matches!(*meta.level(), tracing::Level::ERROR | tracing::Level::WARN)
            || matches!(meta.target(), "gitgate::server" | "gitgate::reload");
        QueuedLine(&self.0, important)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes nothing until let go: a log reader that stopped reading.
    struct Stuck {
        go: Arc<(Mutex<bool>, Condvar)>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cvar) = &*self.go;
            let mut go = lock.lock().unwrap();
            while !*go {
                go = cvar.wait(go).unwrap();
            }
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A queue of `capacity` whose writer writes to a [`Stuck`] reader (reading from the
    /// start or not), and says lines dropped as `N log line(s) dropped`.
    struct Rig {
        queue: Arc<LogQueue>,
        go: Arc<(Mutex<bool>, Condvar)>,
        out: Arc<Mutex<Vec<u8>>>,
        writer: std::thread::JoinHandle<()>,
    }

    /// The warning where lines were lost says how many, and since when: its own time is when
    /// it could be written, later than the lines queued before the first drop.
    #[test]
    fn the_drop_warning_says_how_many_and_since_when() {
        let said = crate::store::test_support::logged(|| {
            super::say_dropped(14_052, 1_764_944_431_000, None)
        });
        assert!(said.contains("dropped=14052"), "{said}");
        assert!(said.contains("since=2025-12-05T14:20:31Z"), "{said}");
        assert!(said.contains("gitgate_log_lines_dropped_total"), "{said}");
    }

    impl Rig {
        fn new(capacity: usize, reading: bool) -> Rig {
            let queue = LogQueue::new(capacity, Direct::Never);
            let go = Arc::new((Mutex::new(reading), Condvar::new()));
            let out = Arc::new(Mutex::new(Vec::new()));
            let stuck = Stuck {
                go: Arc::clone(&go),
                out: Arc::clone(&out),
            };
            let writer = {
                let queue = Arc::clone(&queue);
                let noted = Arc::clone(&queue);
                std::thread::spawn(move || {
                    queue.write_to(stuck, |n, _, _| {
                        noted.push(format!("{n} log line(s) dropped\n").as_bytes(), false);
                    });
                })
            };
            Rig {
                queue,
                go,
                out,
                writer,
            }
        }

        /// The reader reads again.
        fn let_go(go: &(Mutex<bool>, Condvar)) {
            *go.0.lock().unwrap() = true;
            go.1.notify_all();
        }

        /// What the reader got, once the writer has ended.
        fn text(self) -> String {
            self.writer.join().unwrap();
            String::from_utf8(self.out.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn a_stuck_reader_costs_lines_not_the_loggers_and_the_loss_is_said() {
        let rig = Rig::new(100, false);
        let queue = Arc::clone(&rig.queue);
        // The first line reaches the writer, which then blocks on its reader; the rest queue
        // up to the capacity and then are dropped — none of these calls blocks.
        queue.push(b"line 0\n", false);
        std::thread::sleep(Duration::from_millis(50));
        let dropped_before = DROPPED.load(Ordering::Relaxed);
        for i in 1..=40 {
            queue.push(format!("line {i}\n").as_bytes(), false);
        }
        let dropped = DROPPED.load(Ordering::Relaxed) - dropped_before;
        assert!(dropped >= 20, "{dropped}");
        // The reader reads again: what was queued goes out, then the loss is said with the
        // lines that come after it.
        Rig::let_go(&rig.go);
        std::thread::sleep(Duration::from_millis(50));
        queue.push(b"after\n", false);
        assert!(queue.close(Duration::from_secs(5)));
        let text = rig.text();
        assert!(text.starts_with("line 0\nline 1\nline 2\n"), "{text}");
        // Said where the lines were lost: after those queued before, before what came after.
        let note = text.find("log line(s) dropped").expect(&text);
        assert!(note > text.find("line 1\n").unwrap(), "{text}");
        assert!(note < text.find("after\n").unwrap(), "{text}");
        assert!(text.ends_with("after\n"), "{text}");
        assert!(!text.contains("line 40\n"), "{text}");
    }

    /// The stop with the queue full and its reader stuck: the stop's own line, an important
    /// one, still finds room; once the reader reads again, everything queued, the line of
    /// lines dropped and the stop's line go out, and the close returns then — not at the end
    /// of its patience.
    #[test]
    fn a_stop_with_the_queue_full_still_says_it_stopped_and_what_was_dropped() {
        let rig = Rig::new(100, false);
        let queue = Arc::clone(&rig.queue);
        queue.push(b"line 0\n", false);
        std::thread::sleep(Duration::from_millis(50));
        for i in 1..=40 {
            queue.push(format!("line {i}\n").as_bytes(), false);
        }
        queue.push(b"stopped: every connection closed\n", true);
        // The reader reads again a little after the stop began.
        let release = {
            let go = Arc::clone(&rig.go);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                Rig::let_go(&go);
            })
        };
        assert!(
            queue.close(Duration::from_secs(30)),
            "the close waited out its patience"
        );
        release.join().unwrap();
        let text = rig.text();
        // The stop's line last, as a stop's always is; the loss said before it, where it was.
        assert!(
            text.ends_with("stopped: every connection closed\n"),
            "{text}"
        );
        assert!(text.contains("log line(s) dropped"), "{text}");
    }

    /// A pipe nobody reads for a while: lines go straight into it while it has room (out when
    /// `push` returns), then queue, then all arrive in order once it is read.
    #[test]
    fn lines_go_straight_out_until_the_pipe_is_full_then_queue_in_order() {
        use std::io::Read;
        let (mut reader, writer_end, direct) = pipe();
        let queue = LogQueue::new(QUEUE_BYTES, direct);
        let writer = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || queue.write_to(writer_end, |_, _, _| {}))
        };
        // The first line is in the pipe when push returns: no thread in between.
        queue.push(b"first\n", false);
        let mut got = [0u8; 6];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"first\n");
        // 20,000 lines of 100 bytes (some 2 MB) into a pipe of 64 KiB nobody reads: no push
        // blocks.
        let line = |i: usize| format!("{i:>99}\n");
        for i in 0..20_000 {
            queue.push(line(i).as_bytes(), false);
        }
        let reading = std::thread::spawn(move || {
            let mut all = String::new();
            reader.read_to_string(&mut all).unwrap();
            all
        });
        assert!(queue.close(Duration::from_secs(10)));
        writer.join().unwrap();
        drop(queue);
        let all = reading.join().unwrap();
        let expected: String = (0..20_000).map(line).collect();
        assert_eq!(all.len(), expected.len());
        assert!(all == expected, "lines out of order");
    }

    #[test]
    fn the_close_writes_what_is_queued_and_gives_up_on_a_reader_that_never_reads() {
        let rig = Rig::new(QUEUE_BYTES, true);
        for i in 0..1000 {
            rig.queue.push(format!("line {i}\n").as_bytes(), false);
        }
        assert!(rig.queue.close(Duration::from_secs(5)));
        let text = rig.text();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.ends_with("line 999\n"));

        // Its writer left blocked for good: the test process ends under it.
        let never = Rig::new(QUEUE_BYTES, false);
        never.queue.push(b"never written\n", false);
        std::thread::sleep(Duration::from_millis(20));
        never.queue.push(b"queued\n", false);
        assert!(!never.queue.close(Duration::from_millis(200)));
    }

    /// A descriptor's stand-in: each write takes at most the next count of its plan, or fails
    /// with `ENOSPC` (`None`: a full disk); past the plan it takes everything. What it took is
    /// in `out`, which a test's writer thread writes to as well.
    pub struct Script {
        plan: Mutex<VecDeque<Option<usize>>>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl std::fmt::Debug for Script {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Script")
        }
    }

    impl Script {
        pub fn write(&self, bytes: &[u8]) -> isize {
            match self.plan.lock().unwrap().pop_front() {
                Some(None) => {
                    // SAFETY: this thread's errno, as a failed write(2) sets it.
                    unsafe { *libc::__errno_location() = libc::ENOSPC };
                    -1
                }
                Some(Some(most)) => {
                    let n = most.min(bytes.len());
                    self.out.lock().unwrap().extend_from_slice(&bytes[..n]);
                    n as isize
                }
                None => {
                    self.out.lock().unwrap().extend_from_slice(bytes);
                    bytes.len() as isize
                }
            }
        }
    }

    /// What a writer thread writes: into the [`Script`]'s `out`, after what it took.
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A log file on a full disk: a line cut short by the failed write, then lines that could
    /// not be written at all. Once the disk has room again, the next line starts on a line of
    /// its own — not glued to the fragment, where a log reader would lose it too — and the
    /// loss is said right after it (the line whose write found room), counted in `gitgate_log_lines_dropped_total`, with the error.
    #[test]
    fn lines_a_full_disk_lost_are_said_and_the_next_is_not_glued_to_a_fragment() {
        let out = Arc::new(Mutex::new(Vec::new()));
        // "first" whole; 4 bytes of "second" and then ENOSPC; "third" and "fourth" fail; the
        // newline that ends the fragment fails once more; then there is room.
        let plan = [Some(100), Some(4), None, None, None, None]
            .into_iter()
            .collect();
        let script = Script {
            plan: Mutex::new(plan),
            out: Arc::clone(&out),
        };
        let queue = LogQueue::new(QUEUE_BYTES, Direct::Scripted(script));
        let said = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let queue = Arc::clone(&queue);
            let noted = Arc::clone(&queue);
            let said = Arc::clone(&said);
            let shared = Shared(Arc::clone(&out));
            std::thread::spawn(move || {
                queue.write_to(shared, |n, _, error| {
                    said.lock().unwrap().push(error.map(str::to_owned));
                    noted.push(format!("{n} log line(s) lost\n").as_bytes(), true);
                })
            })
        };
        let dropped_before = DROPPED.load(Ordering::Relaxed);
        for line in ["first", "second", "third", "fourth", "fifth", "sixth"] {
            queue.push(format!("{line}\n").as_bytes(), false);
        }
        assert!(queue.close(Duration::from_secs(5)));
        writer.join().unwrap();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text, "first\nseco\nsixth\n4 log line(s) lost\n",
            "the line after the fragment, then the loss"
        );
        assert!(DROPPED.load(Ordering::Relaxed) - dropped_before >= 4);
        let said = said.lock().unwrap();
        assert_eq!(said.len(), 1, "{said:?}");
        let error = said[0].as_deref().expect("said as lost to a failed write");
        assert!(error.contains("No space left on device"), "{error}");
    }

    /// A queue of `capacity` without a writer, and without writing where the lines are made.
    fn unwritten(capacity: usize) -> Arc<LogQueue> {
        LogQueue::new(capacity, Direct::Never)
    }

    /// What `queue` holds: `Ok(line)` for a line, `Err(count)` for lines dropped there.
    fn held(queue: &LogQueue) -> Vec<Result<String, u64>> {
        queue
            .state()
            .entries
            .iter()
            .map(|e| match e {
                Entry::Line(line) => Ok(String::from_utf8_lossy(line).into_owned()),
                Entry::Dropped { count, .. } => Err(*count),
                Entry::Lost(lost) => Err(lost.count),
            })
            .collect()
    }

    /// The capacity is the most bytes held: a line that fills it exactly is queued, the next
    /// byte is dropped.
    #[test]
    fn a_line_that_fills_the_queue_exactly_is_queued() {
        let queue = unwritten(10);
        queue.push(b"123456789\n", false);
        assert_eq!(held(&queue), [Ok("123456789\n".to_string())]);
        queue.push(b"\n", false);
        assert_eq!(held(&queue), [Ok("123456789\n".to_string()), Err(1)]);
    }

    /// Lines dropped one after another are said in one line, with their count.
    #[test]
    fn lines_dropped_in_a_row_are_counted_in_one_place() {
        let queue = unwritten(4);
        queue.push(b"kept\n"[..4].as_ref(), false);
        for _ in 0..3 {
            queue.push(b"dropped\n", false);
        }
        assert_eq!(held(&queue), [Ok("kept".to_string()), Err(3)]);
    }

    /// What the writer took no longer counts against the capacity: a queue written out takes
    /// as many lines again.
    #[test]
    fn lines_taken_by_the_writer_free_their_room() {
        let queue = unwritten(100);
        let line = [b'x'; 60];
        queue.push(&line, false);
        assert_eq!(queue.take().map(|taken| taken.len()), Some(1));
        queue.push(&line, false);
        assert_eq!(held(&queue), [Ok("x".repeat(60))]);
    }

    /// A warning, an error, and the server's own start and stop may use the reserve; a
    /// request line may not.
    #[test]
    fn warnings_and_the_servers_own_lines_find_room_in_a_full_queue() {
        use tracing_subscriber::layer::SubscriberExt;
        let queue = unwritten(0);
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(Queued(Arc::clone(&queue)))
                .with_ansi(false),
        );
        // Registers the second subscriber that keeps callsites asked per event (see there).
        crate::store::test_support::logged(|| {});
        tracing::subscriber::with_default(subscriber, || {
            tracing::callsite::rebuild_interest_cache();
            tracing::info!(target: "gitgate::request", "a request line");
            tracing::warn!("a warning");
            tracing::error!("an error");
            tracing::info!(target: "gitgate::server", "shutting down");
        });
        let held = held(&queue);
        assert_eq!(held.len(), 4, "{held:?}");
        assert_eq!(held[0], Err(1));
        for (line, said) in held[1..]
            .iter()
            .zip(["a warning", "an error", "shutting down"])
        {
            assert!(line.as_ref().is_ok_and(|l| l.contains(said)), "{held:?}");
        }
    }

    /// A pipe with room for part of a line: the part goes out, and the rest is queued
    /// whatever the capacity, so that no line is cut in the middle.
    #[test]
    fn the_rest_of_a_line_begun_is_queued_whatever_the_capacity() {
        use std::io::Read;
        let (mut reader, _, direct) = pipe();
        let queue = LogQueue::new(1000, direct);
        let line = vec![b'z'; 200 * 1024];
        queue.push(&line, false);
        let queued: usize = queue
            .state()
            .entries
            .iter()
            .map(|e| match e {
                Entry::Line(l) => l.len(),
                Entry::Dropped { .. } | Entry::Lost(_) => {
                    panic!("the rest of a line begun was dropped")
                }
            })
            .sum();
        let mut sent = Vec::new();
        // SAFETY: the read end is ours; non-blocking so that reading stops at the pipe's end.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        }
        let _ = reader.read_to_end(&mut sent);
        assert!(
            !sent.is_empty() && sent.len() < line.len(),
            "{}",
            sent.len()
        );
        assert_eq!(sent.len() + queued, line.len());
    }

    /// While the writer holds lines it has taken, a new line waits behind them even when the
    /// pipe has room: written at once, it would go out before them.
    #[test]
    fn a_line_waits_behind_those_the_writer_is_writing() {
        use std::io::Read;
        let (mut reader, _, direct) = pipe();
        let queue = LogQueue::new(QUEUE_BYTES, direct);
        // More than the pipe holds: its rest is queued, and the writer takes it.
        queue.push(&vec![b'z'; 200 * 1024], false);
        let taken = queue.take().expect("the rest of the line");
        assert_eq!(taken.len(), 1);
        // The pipe is read empty: room again, while the writer has not written what it took.
        let mut drained = vec![0u8; 64 * 1024];
        let mut total = 0;
        // SAFETY: the read end is ours; non-blocking so that reading stops at the pipe's end.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        }
        while let Ok(n) = reader.read(&mut drained) {
            if n == 0 {
                break;
            }
            total += n;
        }
        assert!(total > 0);
        queue.push(b"next\n", false);
        assert_eq!(held(&queue), [Ok("next\n".to_string())]);
        assert!(
            reader.read(&mut drained).is_err(),
            "written before the rest"
        );
    }

    /// A log file opened without `O_APPEND` (`serve 2>gitgate.log`) and emptied in place by a
    /// rotation (`copytruncate`) gets its next line at its start, not after a run of NUL bytes
    /// as long as what the rotation took away.
    #[test]
    fn a_log_file_emptied_by_a_rotation_is_written_from_its_start() {
        use std::io::{Read, Seek};
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitgate.log");
        let mut log = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let direct = Direct::for_fd(log.as_raw_fd());
        assert!(matches!(direct, Direct::File(_)), "{direct:?}");
        assert_eq!(direct.write(b"before the rotation\n").0, 20);
        log.write_all(b"and through the descriptor itself\n")
            .unwrap();
        // logrotate's copytruncate: the copy is made, the file emptied in place.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert_eq!(direct.write(b"after\n").0, 6);
        log.write_all(b"again\n").unwrap();
        let mut text = String::new();
        let mut reader = std::fs::File::open(&path).unwrap();
        reader.rewind().unwrap();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "after\nagain\n");
    }

    /// A pipe's two ends, and how its write end is written without blocking (on a
    /// description of its own: the write end given back can close).
    fn pipe() -> (std::fs::File, std::fs::File, Direct) {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let mut fds = [0; 2];
        // SAFETY: pipe fills the two descriptors it is given.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: just made, owned here alone.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let direct = Direct::for_fd(write_end.as_raw_fd());
        assert!(matches!(direct, Direct::Nonblocking(_)), "{direct:?}");
        (
            std::fs::File::from(read_end),
            std::fs::File::from(write_end),
            direct,
        )
    }
}
