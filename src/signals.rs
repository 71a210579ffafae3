//! The process signals `serve` answers: SIGINT and SIGTERM stop it, SIGHUP reloads the TLS
//! certificate and the upstream credentials, and SIGUSR1 and SIGUSR2 are logged and ignored.
//!
//! Each handler is installed when its value is made, before the store is opened, and stays
//! installed: a second stop signal during the drain must reach us — it cuts the grace period
//! short, as an operator pressing Ctrl-C twice expects. A SIGHUP from a certificate-renewal
//! hook while gitgate is starting must not end it (the default action): from the first line of
//! `main` it is remembered ([`hold_hangups_until_listening`]), and answered once the server
//! listens. So is a stop signal: one before the server's own handler (a `systemctl stop` or
//! Ctrl-C in the start's first tens of milliseconds) ended it by the signal, with nothing
//! logged; remembered, it stops the start as any stop does, with its line and exit 0.

#[cfg(unix)]
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

#[cfg(unix)]
use tokio::signal::unix::{signal, Signal, SignalKind};

/// A signal's stream, or `None` (with a warning) when the handler cannot be installed.
#[cfg(unix)]
fn listen(kind: SignalKind, what: &str) -> Option<Signal> {
    match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %crate::log_value::LogText(&e.to_string()), "cannot listen for {what}");
            None
        }
    }
}

/// SIGINT and SIGTERM, as one stream.
pub struct StopSignals {
    #[cfg(unix)]
    interrupt: Option<Signal>,
    #[cfg(unix)]
    terminate: Option<Signal>,
    /// One came while gitgate started, before this listened: the first [`StopSignals::next`].
    #[cfg(unix)]
    heard_during_start: Option<&'static str>,
}

impl StopSignals {
    pub fn listen() -> StopSignals {
        #[cfg(unix)]
        {
            let interrupt = listen(SignalKind::interrupt(), "SIGINT");
            let terminate = listen(SignalKind::terminate(), "SIGTERM");
            // Read after the runtime's handlers are in place: none falls between the two.
            let heard_during_start = match STOP_DURING_START.swap(0, Ordering::SeqCst) {
                libc::SIGINT => Some("SIGINT"),
                libc::SIGTERM => Some("SIGTERM"),
                _ => None,
            };
            StopSignals {
                interrupt,
                terminate,
                heard_during_start,
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Completes on the next SIGINT or SIGTERM (never, for one we could not listen for), with
    /// its name for the log: which one came tells a terminal's Ctrl-C from a supervisor's stop.
    pub async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            if let Some(signal) = self.heard_during_start.take() {
                return signal;
            }
            async fn recv(s: &mut Option<Signal>) {
                let received = match s {
                    Some(s) => s.recv().await.is_some(),
                    None => false,
                };
                if !received {
                    std::future::pending::<()>().await;
                }
            }
            tokio::select! {
                _ = recv(&mut self.interrupt) => "SIGINT",
                _ = recv(&mut self.terminate) => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Set by [`hold_hangups_until_listening`]'s handler: a SIGHUP came before
/// [`HangupSignal::listen`].
#[cfg(unix)]
static HANGUP_DURING_START: AtomicBool = AtomicBool::new(false);

/// Set by [`hold_hangups_until_listening`]'s handler: the number of the stop signal (SIGINT or
/// SIGTERM) that came before [`StopSignals::listen`], 0 for none.
#[cfg(unix)]
static STOP_DURING_START: AtomicI32 = AtomicI32::new(0);

/// From the first line of `main` until [`HangupSignal::listen`], a SIGHUP is remembered instead
/// of ending the process (its default action). The start reads the config, the TLS files and
/// the upstream's secret, and builds each worker's backend, before the runtime that listens for
/// signals runs: a renewal hook or `systemctl reload` in that time killed gitgate with nothing
/// logged, and systemd counts a death by SIGHUP as a clean exit, which `Restart=on-failure`
/// does not restart. One remembered so is answered as a reload once the server listens: the
/// files may have changed after the start read them. A SIGINT or SIGTERM is remembered too,
/// and stops the start once [`StopSignals::listen`] does: before, it ended the process by the
/// signal (exit 143, no line), where a stop exits 0 and says so.
pub fn hold_hangups_until_listening() {
    #[cfg(unix)]
    {
        extern "C" fn remember(signal: libc::c_int) {
            if signal == libc::SIGHUP {
                HANGUP_DURING_START.store(true, Ordering::SeqCst);
            } else {
                STOP_DURING_START.store(signal, Ordering::SeqCst);
            }
        }
        let handler: extern "C" fn(libc::c_int) = remember;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; a handler
        // (not SIG_IGN) is reset to the default in the git processes gitgate starts.
        unsafe {
            for signal in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
                libc::signal(signal, handler as libc::sighandler_t);
            }
        }
    }
}

/// Undoes [`hold_hangups_until_listening`] for a command other than `serve`: a SIGHUP ends it
/// (its terminal closed), and a SIGINT or SIGTERM, one that came already too.
pub fn let_hangups_end_the_process() {
    #[cfg(unix)]
    // SAFETY: SIG_DFL has no handler to run; raise only delivers the signal to this thread.
    unsafe {
        for signal in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
            libc::signal(signal, libc::SIG_DFL);
        }
        if HANGUP_DURING_START.swap(false, Ordering::SeqCst) {
            libc::raise(libc::SIGHUP);
        }
        let stop = STOP_DURING_START.swap(0, Ordering::SeqCst);
        if stop != 0 {
            libc::raise(stop);
        }
    }
}

/// SIGHUP.
pub struct HangupSignal {
    #[cfg(unix)]
    hangup: Option<Signal>,
    /// One came while gitgate started, before this listened: the first [`HangupSignal::next`].
    #[cfg(unix)]
    heard_during_start: bool,
}

impl HangupSignal {
    pub fn listen() -> HangupSignal {
        #[cfg(unix)]
        {
            let hangup = listen(
                SignalKind::hangup(),
                "SIGHUP (certificate and credentials reload disabled)",
            );
            // Read after the runtime's handler is in place: none falls between the two.
            HangupSignal {
                hangup,
                heard_during_start: HANGUP_DURING_START.swap(false, Ordering::SeqCst),
            }
        }
        #[cfg(not(unix))]
        HangupSignal {}
    }

    /// Completes on the next SIGHUP; `false` when there will be none to hear.
    pub async fn next(&mut self) -> bool {
        #[cfg(unix)]
        {
            if std::mem::take(&mut self.heard_during_start) {
                return true;
            }
            match &mut self.hangup {
                Some(s) => s.recv().await.is_some(),
                None => false,
            }
        }
        #[cfg(not(unix))]
        false
    }
}

/// SIGUSR1 and SIGUSR2, which gitgate gives no meaning: their default action ends the process
/// at once — no drain, no stop line, pending audit events unwritten — and nginx's habit (SIGUSR1
/// reopens its logs, sent by logrotate) makes them likely. So each is heard and logged as what
/// it is not, for as long as the process runs.
pub fn ignore_user_signals() {
    #[cfg(unix)]
    for (kind, name) in [
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
    ] {
        let Some(mut signal) = listen(kind, name) else {
            continue;
        };
        tokio::spawn(async move {
            while signal.recv().await.is_some() {
                tracing::warn!(
                    "{name} ignored: gitgate gives it no meaning (its log goes to stderr, with \
                     nothing to reopen); SIGHUP reloads the TLS certificate and upstream \
                     credentials, SIGTERM stops"
                );
            }
        });
    }
}
