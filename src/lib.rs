//! gitgate puts personal-access-token authentication in front of any Git smart-HTTP server.
//!
//! # The path of one request
//!
//! ```text
//!  git client ──▶ server ──▶ gate ──┬─ git::classify(method, path, query) ─▶ GitRequest { repo, access }
//!                                   ├─ guard: source address blocked?      ─▶ 429 (no store read)
//!                                   ├─ credentials::from_headers(headers)  ─▶ Basic{user, secret} | Bearer{secret}
//!                                   ├─ token::parse(secret) → id; store.auth_record(id); hash compare
//!                                   ├─ policy::authorize(record, user, repo, access, now) ─▶ Identity | Deny
//!                                   ├─ guard: principal's bucket (exchange starts only) ─▶ 429
//!                                   └─ upstream.forward(request, identity) ─▶ streamed response
//!                                         └─ cgi: git http-backend run by gitgate itself
//!  off the hot path: last-used time/address (at most every 5 s per token), audit of failures
//! ```
//!
//! - [`server`] accepts connections (hyper, HTTP/1.1 and h2c), with a header-read deadline and
//!   graceful shutdown on SIGINT/SIGTERM.
//! - [`gate`] walks the steps above and turns every refusal into an answer in one place:
//!   `404/400/405` for what is not a git request (never forwarded), `401` with a Basic challenge
//!   for missing or bad credentials, `403` for too little permission, `503` when the store
//!   cannot be read (fail closed), `502` when the backend fails. Every refusal carries a
//!   one-line `text/plain` reason that git prints as `remote: ...`.
//! - [`git`] says *what* a request is (repository, read or write) and builds the canonical path the
//!   backend will see; [`policy`] says *whether* it is allowed; neither does I/O.
//! - [`credentials`] parses `Authorization`; [`token`] knows the secret format
//!   (`ggt_<id>_<256 random bits>_<checksum>`) and hashes it; only the SHA-256 is stored.
//! - [`store`] is the SQLite token store (users, grants, tokens, settings, audit), shared with
//!   the CLI process: a revocation there is seen on the next request.
//! - [`upstream`] moves bytes: [`upstream::cgi`] runs `git http-backend` with both bodies
//!   streamed.
//! - [`guard`] defends the gate against abuse: [`throttle`] blocks an address after repeated
//!   failed authentications (before the store is read), [`ratelimit`] gives each principal a
//!   token bucket; both answer `429` with `Retry-After`. [`unwind`] turns a panic in a request
//!   into a logged `500` so that no input can take the process down.
//! - [`lifecycle`] holds the token creation rules for every interface; [`cli`] is the operator's
//!   command line; [`config`] reads and validates `proxy.toml`.

pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod gate;
pub mod git;
pub mod guard;
pub mod lifecycle;
pub mod password;
pub mod permission;
pub mod policy;
pub mod ratelimit;
pub mod server;
pub mod store;
pub mod throttle;
pub mod token;
pub mod unwind;
pub mod upstream;
