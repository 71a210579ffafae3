//! The HTTP upstream's host name looked up, a few lookups at a time per worker.
//!
//! A name (`[upstream] url = "http://git-backend:8080"`) is looked up with the C library's
//! `getaddrinfo` at every new upstream connection, which blocks: tokio runs it on the runtime's
//! blocking pool. That pool is [`crate::blocking_pool::THREADS`] threads, kept from the start,
//! and the same threads read the token store on a cache miss, check the REST API's passwords
//! and write audit events. A lookup that hangs (a resolver that does not answer: glibc waits
//! 5 s per try and name server) cannot be cancelled, and a connect that gave up on it left it
//! running, or queued: with every connection to the upstream failing, each request added
//! another, every thread was soon in a lookup, and a git request with a token not in the cache
//! waited behind the whole queue for its store read, as did every REST call — minutes, though
//! the store was fine.
//!
//! So at most [`AT_ONCE`] lookups run at a time per worker (half its blocking threads); a
//! connect waits for its turn here, where its connect timeout can end the wait, and a lookup
//! given up before its turn, or before a blocking thread took it, never runs. An address (`127.0.0.1`, `::1`) is not looked up.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// How many lookups of a worker may run at once: half of its blocking threads, the rest left
/// to the store, the password checks and the CGI runner.
pub const AT_ONCE: usize = crate::blocking_pool::THREADS / 2;

/// How a name is looked up: the C library's resolver, but in tests.
type Look = fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

/// One worker's lookups (one per upstream connection pool).
#[derive(Debug)]
pub struct Lookups {
    turns: Arc<Semaphore>,
    look: Look,
}

impl Default for Lookups {
    fn default() -> Self {
        Lookups {
            turns: Arc::new(Semaphore::new(AT_ONCE)),
            look: |host, port| {
                std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).map(Iterator::collect)
            },
        }
    }
}

impl Lookups {
    /// Lookups made by `look` rather than the resolver (for tests: one that hangs).
    #[cfg(test)]
    pub(crate) fn by(look: Look) -> Lookups {
        Lookups {
            look,
            ..Lookups::default()
        }
    }

    /// The addresses of `host` (a name or an address, without brackets) with `port`: an
    /// address at once, a name looked up on the blocking pool when a lookup's turn comes.
    pub async fn addresses(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        self.addresses_by(host, port, self.look).await
    }

    /// [`Lookups::addresses`], names looked up by `look`.
    async fn addresses_by(&self, host: &str, port: u16, look: Look) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        // Never closed.
        let turn = self
            .turns
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let host = host.to_string();
        // The turn ends with the lookup, not with the connect that asked for it: one given up
        // on still holds its blocking thread. One given up before a thread took it (all of
        // them busy with the store's reads and password checks) never starts, and its turn
        // comes back: else it would still run, for nobody, holding a turn and then a thread.
        crate::blocking_pool::unless_given_up(move || {
            let _turn = turn;
            look(&host, port)
        })
        .await
        .map_err(|e| io::Error::other(format!("the lookup of the upstream's name failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    /// Lookups that hang (a resolver that does not answer).
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    static RELEASED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

    fn hanging(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
        STARTED.fetch_add(1, Ordering::SeqCst);
        let (released, wake) = &RELEASED;
        let mut released = released.lock().unwrap();
        while !*released {
            released = wake.wait(released).unwrap();
        }
        Ok(vec![])
    }

    /// Lets the hanging lookups end when dropped (the runtime's end waits for them).
    struct Release;

    impl Drop for Release {
        fn drop(&mut self) {
            *RELEASED.0.lock().unwrap() = true;
            RELEASED.1.notify_all();
        }
    }

    /// With the upstream's resolver not answering and connection after connection trying
    /// (each giving up at its connect timeout), a worker's blocking threads are not all taken
    /// by lookups: a store read on the blocking pool still runs at once, and the lookups given
    /// up while waiting for their turn never run. Before, every thread hung in a lookup and
    /// the store read waited behind all of them.
    #[test]
    fn hanging_lookups_leave_blocking_threads_to_the_store() {
        let runtime = crate::blocking_pool::started_for_a_test();
        let _release = Release;
        let lookups = Arc::new(Lookups::default());
        runtime.block_on(async {
            let connects: Vec<_> = (0..3 * crate::blocking_pool::THREADS)
                .map(|_| {
                    let lookups = lookups.clone();
                    // A connect that gives up (its connect timeout) on a lookup that hangs.
                    tokio::spawn(async move {
                        let connect = lookups.addresses_by("git-backend.invalid", 80, hanging);
                        let _ = tokio::time::timeout(Duration::from_millis(100), connect).await;
                    })
                })
                .collect();
            for connect in connects {
                connect.await.unwrap();
            }
            let read = tokio::task::spawn_blocking(|| "the token's record");
            let read = tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .expect("a store read waited behind the hanging lookups");
            assert_eq!(read.unwrap(), "the token's record");
            // The resolver answers again: the lookups that had their turn end, and those given
            // up before theirs never run.
            drop(Release);
            while lookups.turns.available_permits() < AT_ONCE {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(STARTED.load(Ordering::SeqCst), AT_ONCE);
        });
    }

    /// A connect that gives up on a lookup whose turn had come but that no blocking thread
    /// had taken yet (all eight busy: store reads, password checks) leaves it never run, and
    /// its turn free. Before, it ran once a thread came free, for nobody, holding the turn.
    #[test]
    fn a_lookup_given_up_before_a_thread_took_it_never_runs() {
        static RAN: AtomicUsize = AtomicUsize::new(0);
        fn counted(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
            RAN.fetch_add(1, Ordering::SeqCst);
            Ok(vec![])
        }
        let runtime = crate::blocking_pool::started_for_a_test();
        let lookups = Lookups::default();
        // Every blocking thread busy until `free` is set.
        let busy = Arc::new((Mutex::new((0usize, false)), Condvar::new()));
        for _ in 0..crate::blocking_pool::THREADS {
            let busy = busy.clone();
            runtime.spawn_blocking(move || {
                let (state, wake) = &*busy;
                let mut state = state.lock().unwrap();
                state.0 += 1;
                wake.notify_all();
                while !state.1 {
                    state = wake.wait(state).unwrap();
                }
            });
        }
        {
            let (state, wake) = &*busy;
            let mut state = state.lock().unwrap();
            while state.0 < crate::blocking_pool::THREADS {
                state = wake.wait(state).unwrap();
            }
        }
        runtime.block_on(async {
            let connect = lookups.addresses_by("git-backend.invalid", 80, counted);
            let given_up = tokio::time::timeout(Duration::from_millis(100), connect).await;
            assert!(given_up.is_err(), "{given_up:?}");
            {
                let (state, wake) = &*busy;
                state.lock().unwrap().1 = true;
                wake.notify_all();
            }
            // Once the threads are free, the given-up lookup's turn comes back, run or not.
            while lookups.turns.available_permits() < AT_ONCE {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // And a lookup asked for now runs at once.
            lookups
                .addresses_by("git-backend.invalid", 80, counted)
                .await
                .unwrap();
        });
        assert_eq!(RAN.load(Ordering::SeqCst), 1, "the given-up lookup ran");
    }

    /// An address is taken as it is, no lookup; a name is looked up.
    #[tokio::test]
    async fn an_address_is_not_looked_up() {
        let lookups = Lookups::default();
        fn never(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
            panic!("an address was looked up")
        }
        for (host, want) in [("127.0.0.1", "127.0.0.1:8080"), ("::1", "[::1]:8080")] {
            let found = lookups.addresses_by(host, 8080, never).await.unwrap();
            assert_eq!(found, vec![want.parse::<SocketAddr>().unwrap()]);
        }
        let found = lookups.addresses("localhost", 8080).await.unwrap();
        assert!(!found.is_empty() && found.iter().all(|a| a.port() == 8080));
    }
}
