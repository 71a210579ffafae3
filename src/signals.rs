//! The process signals `serve` answers: SIGINT and SIGTERM stop it, SIGHUP reloads the TLS
//! certificate and the upstream credentials, and SIGUSR1 and SIGUSR2 are logged and ignored.
//!
//! Each handler is installed when its value is made, before the store is opened, and stays
//! installed: a SIGHUP from a certificate-renewal hook while gitgate is starting must not end
//! it (the default action), and a second stop signal during the drain must reach us — it cuts
//! the grace period short, as an operator pressing Ctrl-C twice expects.

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
}

impl StopSignals {
    pub fn listen() -> StopSignals {
        #[cfg(unix)]
        {
            StopSignals {
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
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

/// SIGHUP.
pub struct HangupSignal {
    #[cfg(unix)]
    hangup: Option<Signal>,
}

impl HangupSignal {
    pub fn listen() -> HangupSignal {
        #[cfg(unix)]
        {
            HangupSignal {
                hangup: listen(
                    SignalKind::hangup(),
                    "SIGHUP (certificate and credentials reload disabled)",
                ),
            }
        }
        #[cfg(not(unix))]
        HangupSignal {}
    }

    /// Completes on the next SIGHUP; `false` when there will be none to hear.
    pub async fn next(&mut self) -> bool {
        #[cfg(unix)]
        {
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
