//! How many files gitgate may have open: what its connections need at most
//! (`max_connections` of them, a socket, an upstream connection and a CGI backend's pipes
//! each) and its workers at rest, against the process's soft and hard limits.
//!
//! The soft limit is raised toward what is wanted, within the hard one, at the start; a hard
//! limit too low to serve at all refuses the start with the reason (a server that starts and
//! then fails every `accept` is worse), and one too low for `max_connections` is a warning.
//! `gitgate check` says the same from the same figures.

use crate::log_value::LogText;

/// File descriptors a connection may need at once: its socket, an upstream connection, and a
/// CGI backend's three pipes and process handle, with room to spare.
const FDS_PER_CONNECTION: u64 = 8;

/// How many open files gitgate wants for `max_connections` (see [`FDS_PER_CONNECTION`]) and
/// `workers` (at least [`needed`]), and the soft limit to ask for given the current
/// `(soft, hard)` limits: `None` when the soft one is enough already. Never above the hard
/// limit, which only an administrator can raise.
pub(crate) fn wanted(
    max_connections: usize,
    workers: usize,
    soft: u64,
    hard: Option<u64>,
) -> (u64, Option<u64>) {
    let wanted = (max_connections as u64)
        .saturating_mul(FDS_PER_CONNECTION)
        .saturating_add(256)
        .max(needed(workers));
    let target = hard.map_or(wanted, |h| wanted.min(h));
    (wanted, (target > soft).then_some(target))
}

/// The fewest open files gitgate starts with: what it holds with nothing to serve (measured:
/// 17 and 4 per worker — stdio, the store's file, log and index for its first connections,
/// the inotify watch, the listeners, each event loop's epoll and wake-up descriptors), the
/// store's other connections — the 7 more of its pool, opened at the start
/// (`Store::fill_pool`), and its writer's: two descriptors each, the file and its `-wal`;
/// measured, 16 more — and room for [`ROOM_FOR_CONNECTIONS`] connections. Below it a start
/// would listen and then fail every connection ("Too many open files") or never accept one.
pub(crate) fn needed(workers: usize) -> u64 {
    const AT_REST: u64 = 24;
    const PER_WORKER: u64 = 4;
    const STORE_READERS: u64 = 16;
    AT_REST
        + PER_WORKER * workers as u64
        + STORE_READERS
        + ROOM_FOR_CONNECTIONS * FDS_PER_CONNECTION
}

/// How many connections the smallest open-files limit gitgate starts with leaves room for.
const ROOM_FOR_CONNECTIONS: u64 = 4;

/// The open-files limit `serve` will run with, raised as far as the hard limit lets it: the soft
/// limit to set (`None`: leave it), and what it is then (`None`: unlimited).
pub(crate) struct OpenFiles {
    pub raise_to: Option<u64>,
    pub limit: Option<u64>,
    pub wanted: u64,
}

/// [`OpenFiles`] for this process now.
pub(crate) fn at_start(max_connections: usize, workers: usize) -> OpenFiles {
    use rustix::process::{getrlimit, Resource};
    let now = getrlimit(Resource::Nofile);
    let Some(soft) = now.current else {
        return OpenFiles {
            raise_to: None,
            limit: None,
            wanted: 0,
        };
    };
    let (wanted, raise_to) = wanted(max_connections, workers, soft, now.maximum);
    OpenFiles {
        raise_to,
        limit: Some(raise_to.unwrap_or(soft)),
        wanted,
    }
}

/// Whether `limit` open files (`None`: unlimited) are enough to serve: `Err` with what to do
/// when they are too few to start, `Ok(Some(warning))` when they are fewer than
/// `max_connections` needs (`wanted`). `serve` and `check` say the same.
pub(crate) fn verdict(
    limit: Option<u64>,
    wanted: u64,
    workers: usize,
    max_connections: usize,
) -> Result<Option<String>, String> {
    let Some(limit) = limit else {
        return Ok(None);
    };
    let needed = needed(workers);
    if limit < needed {
        return Err(format!(
            "the open-files limit is {limit}, raised as far as its hard limit allows, too low to \
             serve: with {workers} workers gitgate needs at least {needed} to start and serve a \
             few connections (about {FDS_PER_CONNECTION} each); raise the hard limit (ulimit -Hn, \
             systemd LimitNOFILE) or lower [server] workers"
        ));
    }
    if limit < wanted {
        return Ok(Some(format!(
            "the open-files limit is {limit}, low for max_connections = {max_connections} \
             (about {FDS_PER_CONNECTION} per connection: {wanted}): raise the hard limit \
             (ulimit -Hn, systemd LimitNOFILE) or lower max_connections"
        )));
    }
    Ok(None)
}

/// Raise the soft limit on open files to what `max_connections` needs. The usual soft limit,
/// 1024, runs out at about 200 CGI requests at once: connections would then fail to be
/// accepted and backends to start (502s), long before `max_connections`. Refuses to start
/// below what serving needs at all ([`verdict`]).
pub(crate) fn raise_limit(max_connections: usize, workers: usize) -> Result<(), String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let mut at_start = at_start(max_connections, workers);
    if let Some(target) = at_start.raise_to {
        let now = getrlimit(Resource::Nofile);
        let raised = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: now.maximum,
            },
        );
        match raised {
            Ok(()) => tracing::debug!(
                from = now.current,
                to = target,
                "raised the open-files limit"
            ),
            Err(e) => {
                tracing::warn!(error = %LogText(&e.to_string()), "cannot raise the open-files limit");
                at_start.limit = now.current;
            }
        }
    }
    let verdict = verdict(at_start.limit, at_start.wanted, workers, max_connections)?;
    if let Some(warning) = verdict {
        tracing::warn!(reason = %LogText(&warning), "open-files limit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_wanted_are_what_the_connections_need_within_the_hard_limit() {
        // The default 1024 connections want 8448 descriptors.
        assert_eq!(wanted(1024, 2, 1024, Some(524_288)), (8448, Some(8448)));
        assert_eq!(wanted(1024, 2, 1024, Some(4096)), (8448, Some(4096)));
        assert_eq!(wanted(1024, 2, 1024, None), (8448, Some(8448)));
        // Enough already, or nothing to gain: left alone.
        assert_eq!(wanted(1024, 2, 65_536, Some(524_288)), (8448, None));
        assert_eq!(wanted(1024, 2, 1024, Some(1024)), (8448, None));
        // Few connections and many workers: what the workers need at rest comes first.
        assert_eq!(
            wanted(1, 256, 64, Some(524_288)),
            (needed(256), Some(needed(256)))
        );
    }

    #[test]
    fn too_few_open_files_to_serve_refuse_the_start_and_fewer_than_the_connections_warn() {
        // Measured at rest: 21 descriptors with 1 worker, 25 with 2, 49 with 8; then a few
        // connections' worth.
        assert_eq!(needed(2), 80);
        assert!(needed(8) >= 49 + 4 * FDS_PER_CONNECTION);
        let e = verdict(Some(79), 8448, 2, 1024).unwrap_err();
        assert!(e.contains("open-files limit is 79"), "{e}");
        assert!(e.contains("needs at least 80"), "{e}");
        assert!(e.contains("ulimit -Hn"), "{e}");
        let w = verdict(Some(80), 8448, 2, 1024).unwrap().unwrap();
        assert!(w.contains("low for max_connections = 1024"), "{w}");
        assert_eq!(verdict(Some(8448), 8448, 2, 1024), Ok(None));
        assert_eq!(verdict(None, 0, 256, 1024), Ok(None));
    }

    /// The limit `serve` runs with is the one it raised the soft limit to, not the soft limit
    /// it found: the verdict on it (and `check`'s) must not warn of a limit already raised.
    #[test]
    fn the_limit_after_a_raise_is_the_raised_one() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let before = getrlimit(Resource::Nofile);
        let (Some(soft), Some(hard)) = (before.current, before.maximum) else {
            // Unlimited: nothing to raise (and `at_start` says so).
            assert_eq!(at_start(usize::MAX, 2).limit, None);
            return;
        };
        // One below the hard limit, for the moment of the look, so that there is room to raise.
        let lowered = soft.min(hard) - 1;
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(lowered),
                maximum: before.maximum,
            },
        )
        .unwrap();
        let at = at_start(usize::MAX, 2);
        setrlimit(Resource::Nofile, before).unwrap();
        assert_eq!(at.raise_to, Some(hard));
        assert_eq!(at.limit, Some(hard));
    }
}
