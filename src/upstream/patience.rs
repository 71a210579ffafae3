//! Trying again, for a moment, to start a backend when this host is short of what it takes.
//!
//! Out of processes, file descriptors, memory or local ports, gitgate can neither start git
//! http-backend nor open a connection to an HTTP upstream. These come free within milliseconds
//! as other requests end, so a request tries again — pausing 10 ms, then twice as long each
//! time up to 250 ms — for half a second, or for 5 s when it goes on with an exchange under
//! way (a clone's or push's `POST`): git prints no reason for a refused `POST` (`RPC failed;
//! HTTP 503`), while it prints the `503`'s reason for an advertisement. Only then is it
//! answered `503` with `Retry-After`.
//!
//! The gate let the request in before these pauses: a token revoked, an owner disabled or a
//! grant removed during them must stop it before its backend starts, so the gate is asked
//! again after each pause (`StillAllowed`).

use std::time::Duration;

use hyper::Method;

use super::cgi::StillAllowed;

/// How long a request that starts an exchange (an advertisement) tries again ...
pub const FOR_A_START: Duration = Duration::from_millis(500);
/// ... and one going on with an exchange (a `POST`).
pub const FOR_ONE_GOING_ON: Duration = Duration::from_secs(5);

/// The first pause, and the longest.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_millis(250);

/// What [`Patience::pause`] came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Pause {
    /// Paused, and the request may still be served: try again.
    TryAgain,
    /// No time left for another pause: the shortage is the answer.
    Spent,
    /// Paused, and the gate now refuses the request.
    NoLongerAllowed,
}

/// One request's tries.
pub struct Patience {
    started: tokio::time::Instant,
    pause: Duration,
    limit: Duration,
}

impl Patience {
    /// Tries for at most `limit` from now.
    pub fn new(limit: Duration) -> Patience {
        Patience {
            started: tokio::time::Instant::now(),
            pause: FIRST_PAUSE,
            limit,
        }
    }

    /// Tries for as long as a request with this method may (see the module's doc).
    pub fn for_method(method: &Method) -> Patience {
        Patience::new(if *method == Method::POST {
            FOR_ONE_GOING_ON
        } else {
            FOR_A_START
        })
    }

    /// After a try that failed for a shortage: pause, if the next pause still ends within the
    /// limit, then ask `still_allowed` (if given) whether the request may still be served.
    pub async fn pause(&mut self, still_allowed: Option<&dyn StillAllowed>) -> Pause {
        if self.started.elapsed() + self.pause > self.limit {
            return Pause::Spent;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        match still_allowed {
            Some(still_allowed) if !still_allowed.ask().await => Pause::NoLongerAllowed,
            _ => Pause::TryAgain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pauses double from 10 ms up to 250 ms, and those taken never add up to more than
    /// the limit. Said of the pauses, not of the clock: a test descheduled for a moment (a
    /// loaded machine) sleeps late, which may leave out a pause at the end but changes neither
    /// property. (It counted the tries a wall clock allowed, and failed when the process was
    /// stopped for 300 ms.)
    #[tokio::test]
    async fn pauses_double_from_10_ms_to_250_ms_and_stay_within_the_limit() {
        let limit = Duration::from_millis(700);
        let mut patience = Patience::new(limit);
        let mut taken = Vec::new();
        loop {
            let pause = patience.pause;
            match patience.pause(None).await {
                Pause::TryAgain => taken.push(pause),
                Pause::Spent => break,
                Pause::NoLongerAllowed => unreachable!("not asked"),
            }
            assert!(taken.len() < 20, "never spent: {taken:?}");
        }
        let schedule = [10, 20, 40, 80, 160, 250, 250].map(Duration::from_millis);
        assert!(!taken.is_empty(), "not one pause within {limit:?}");
        assert_eq!(taken, schedule[..taken.len()], "{taken:?}");
        assert!(taken.iter().sum::<Duration>() <= limit, "{taken:?}");
        // A limit shorter than the first pause is spent at once.
        assert_eq!(
            Patience::new(Duration::from_millis(9)).pause(None).await,
            Pause::Spent
        );
    }

    #[test]
    fn a_post_going_on_with_an_exchange_waits_longest() {
        assert_eq!(Patience::for_method(&Method::POST).limit, FOR_ONE_GOING_ON);
        for method in [Method::GET, Method::HEAD] {
            assert_eq!(Patience::for_method(&method).limit, FOR_A_START);
        }
    }

    struct Refusing;
    impl StillAllowed for Refusing {
        fn ask(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
            Box::pin(async { false })
        }
    }

    #[tokio::test]
    async fn a_request_refused_after_a_pause_is_not_tried_again() {
        let mut patience = Patience::for_method(&Method::POST);
        assert_eq!(
            patience.pause(Some(&Refusing)).await,
            Pause::NoLongerAllowed
        );
    }
}
