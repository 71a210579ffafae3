//! gitgate puts personal-access-token authentication in front of any Git smart-HTTP server.
//!
//! # The path of one request
//!
//! ```text
//!  git client ──▶ server (over 100 header fields ─▶ 431, on HTTP/2 too; an HTTP/1 head over
//!                        max_header_bytes ─▶ 431, over TLS too; a connection over its
//!                        address's cap ─▶ 503; all logged; /healthz, /readyz: GET or
//!                        HEAD, other methods ─▶ 405)
//!                        ──▶ gate ──┬─ a request_id for each of its log lines
//!                                   ├─ client address: the peer, or behind trusted_proxies the right-most
//!                                   │     untrusted X-Forwarded-For entry (unreadable, or only a Forwarded header: 400)
//!                                   ├─ /rest/... ─▶ api::handle (a path and query over 8 KiB ─▶ 414, Host as
//!                                   │     below ─▶ 400, the address guard ─▶ 429, another site's page
//!                                   │     (Origin, Sec-Fetch-Site) ─▶ 403, then management: the
//!                                   │     user's password only, then the user's rate-limit bucket, 429); never forwarded
//!                                   ├─ which of the fields the checks below read are there (loop mark,
//!                                   │     Transfer-/Content-Encoding, Content-Length, Origin, Sec-Fetch-Site,
//!                                   │     Expect, User-Agent): one pass over the names (fields_present);
//!                                   │     a check whose field is absent, which would find nothing, is left out
//!                                   ├─ its own loop mark (X-Gitgate-Hop)?  ─▶ 508 (a request it sent upstream came back)
//!                                   ├─ a path and query over 8 KiB ─▶ 414
//!                                   ├─ git::classify(method, path, query) ─▶ GitRequest { repo, access }
//!                                   │     (git LFS's paths, any path under a repository's info/lfs/ too,
//!                                   │     ─▶ 404 in the LFS API's JSON, which git-lfs prints)
//!                                   ├─ Host: exactly one on HTTP/1.1; on HTTP/2 it or :authority, and
//!                                   │     none, Host or :authority, that is empty or no host name (letters, digits, .-_) and optional port (1-65535), or names another host
//!                                   │     than the :authority or the absolute target's, or an absolute target neither
//!                                   │     http nor https ─▶ 400 (refusals for the request's form:
//!                                   │     400/415/501, their reason logged once a minute per address and reason)
//!                                   ├─ a repository path holding a token secret (`ggt_`, a whole one
//!                                   │     without it: its checksum tells, or its random part alone)
//!                                   │     ─▶ 400, its path logged as a placeholder
//!                                   ├─ body framing: Transfer- only chunked ─▶ 501, Content-Length one
//!                                   │   length of at most i64::MAX ─▶ 400 (sent on as that plain number),
//!                                   │   Content- only gzip ─▶ 415,
//!                                   │   a GET or HEAD saying it has a body ─▶ 400
//!                                   ├─ another site's page (Sec-Fetch-Site, Origin: cross_site; git sends
//!                                   │     neither) ─▶ 403, before the credentials cost a rate-limit token
//!                                   ├─ guard: source address blocked?      ─▶ 429 (no store read; a sliding window,
//!                                   │     IPv6 by /64, `exempt` networks never; one atomic read while no
//!                                   │     address is blocked)
//!                                   ├─ credentials::from_headers(headers)  ─▶ Basic{user, secret} | Bearer{secret}
//!                                   │     (until the token says whose it is, a user name not written as
//!                                   │     user names are is logged as `<not a user name>`: a password?)
//!                                   ├─ token::parse(secret) → id; store: cache (WAL index header; ids the store
//!                                   │     lacks remembered too; the writer's own commits keep it, and a
//!                                   │     lookup during one reads the store) → on a miss SQLite: inline on an idle pooled
//!                                   │     connection (the pool's 8 opened at the start), else on the
//!                                   │     blocking pool a few at a time (at the open-files limit, waiting
//!                                   │     up to 2 s for a pooled connection when all 8 are taken),
//!                                   │     within 10 s, then 503 (Store::load_auth_record_now,
//!                                   │     Store::load_auth_record_in_turn; a store
//!                                   │     file deleted, replaced or emptied, or migrated by a newer
//!                                   │     gitgate ─▶ 503); hash compare
//!                                   │     (the current secret, or the previous one inside a rotation overlap;
//!                                   │     the one a rotation replaced is told so)
//!                                   ├─ policy::authorize(record, user, repo, access, addr, now) ─▶ Identity | Deny
//!                                   │     (401s first — revoked, expired, wrong user, disabled owner — then the
//!                                   │     token's networks, then the owner's and the token's permission: 403;
//!                                   │     past the 401s the token's last use is noted, whatever follows)
//!                                   ├─ a POST known empty (Content-Length: 0, or HTTP/2 HEADERS that end
//!                                   │     the stream) ─▶ 400
//!                                   ├─ guard: in-flight cap, then the principal's bucket (an advertisement pays
//!                                   │     for its POSTs) ─▶ 429
//!                                   └─ upstream.forward(request, identity) ─▶ streamed response
//!                                         │     (the request id sent as X-Request-Id, or as
//!                                         │     HTTP_X_REQUEST_ID to the CGI; the loop mark sent
//!                                         │     upstream; an answer a shared
//!                                         │     cache could keep made `private`; a push's
//!                                         │     commands read from its body as it passes:
//!                                         │     push_commands)
//!                                         ├─ http: an existing git server (nginx+fcgiwrap, Gitea, ...),
//!                                         │     on a TCP port or a Unix socket (a connection
//!                                         │     this host is short of descriptors or ports for
//!                                         │     tried again for a moment, upstream::patience,
//!                                         │     as the CGI runner's start is; a push sent
//!                                         │     chunked, its length unsaid); git's pkt-lines
//!                                         │     followed through its answer (upstream::framing),
//!                                         │     which fails if it ends cut short, however cleanly
//!                                         │     the HTTP ends, or with upload-pack's word that
//!                                         │     its pack-objects failed; a Content-Length past
//!                                         │     i64::MAX, which git cannot hold, or a status
//!                                         │     past 599 ─▶ 502
//!                                         └─ cgi:  git http-backend run by gitgate itself (its
//!                                               head held until the body is fed: a program that
//!                                               dies before it, or a head with a Status that is
//!                                               none or past 599 or a Content-Length that is
//!                                               none, is a 502, a stop
//!                                               before it a 503; an exit
//!                                               after the answer began cuts it off, unless git's
//!                                               own ERR packet ended it — and no `error:` of
//!                                               its own came before it, nor is the object it
//!                                               refused one its own ref names; one that died on a
//!                                               request it could not read, or a shallow fetch
//!                                               the repository cannot give, is the client's,
//!                                               `malformed-request`, a 400 if no answer had
//!                                               begun; a push's report read from channel 1;
//!                                               its head loses what an HTTP upstream's
//!                                               does: cookies, Server, X-Accel-*, X-Sendfile;
//!                                               one that has said all but does not exit is
//!                                               ended after 10 s)
//!  off the hot path, one writer thread on a store connection of its own (never a reader's; opened at the start):
//!  audit of failures (100 ms windows, repeats folded) and last-used time/address (at most
//!  every 5 s per token, all tokens' in one commit a second), a failed window tried again
//!  (up to 5 times; a store another process holds locked is waited for, however long, the
//!  holder named from /proc/locks; a write that keeps failing,
//!  a full disk, warned of once and then once a minute), written out at shutdown too; each
//!  audit row a request made (`auth.failed`, `auth.throttled`, a REST call's) keeps its
//!  request_id; metrics (relaxed
//!  atomics, a copy per thread, added up and rendered only when scraped); one log line per
//!  request (request_log; its `request_id` first, as in every line the request writes; its User-Agent
//!  last, unless it holds what looks like a token secret; a push's `push commands` line just
//!  before it, read from its body as it passes — inflated, 32 KiB at a time, for a gzip-encoded
//!  one; free text never holding what looks like a secret), when its answer's body ends
//!  (a refusal of credentials says why: `auth=`, a word from a fixed list) — or, as 499
//!  `client-gone`, when the client hangs up before it has an answer (one that hangs up over
//!  HTTP/1, or resets its HTTP/2 stream, after the last flush-pkt of a whole git answer, all
//!  of it written and its send queue empty, had it all: `complete`),
//!  `idle-timeout`, when the client idles (gitgate closes the connection for idling, over TLS
//!  with `close_notify`; lets go of an HTTP/2 stream given no window; or the backend waited
//!  that long for an upload the client stopped sending once the answer had begun; before, it
//!  is a 408 sent whole), or `shutdown`, when the grace period
//!  after SIGTERM ends first
//! ```
//!
//! - [`metrics`] counts requests, outcomes, bytes (as they move), latencies and connections
//!   and serves them as `GET /metrics` (Prometheus text) on its own listener, `[metrics]
//!   listen`, off by default; requests hyper's HTTP/1 parser refuses, which never reach the
//!   gate, get a log line (`unparsable`) and a counter of their own from [`server`].
//! - [`log_value`] writes a name or free text (a token's name as the `user`) as one logfmt
//!   field: bare when it is a plain word, else quoted with JSON's escapes (`LogText`, for a
//!   `reason`, `error` or `stderr`, always quoted), which go-logfmt and Loki read back;
//!   [`log_json`] writes the lines as JSON objects instead (`GITGATE_LOG_FORMAT=json`), and
//!   [`log_queue`] writes the server's without ever blocking a request on a log reader that
//!   stopped reading (a queue behind a write that would block).
//! - [`server`] accepts connections (hyper, HTTP/1.1 and HTTP/2 — over TLS, the one ALPN
//!   agreed — TLS via [`tls`] with the certificate reloaded on SIGHUP, on a thread of its own,
//!   and its chain's expiry looked at hourly by [`reload`]; a plain HTTP request on the HTTPS port is answered `400` in plain
//!   HTTP with what to do), with a header-read
//!   deadline (also for a connection
//!   waiting for a request: a silent one is closed after it), an idle timeout ([`idle`]:
//!   no byte moving, or no exchange moving — no request body or answer frame — so HTTP/2
//!   PINGs alone hold nothing; a client still reading — over HTTP/1 it acknowledged bytes of
//!   its answer within the timeout (TCP_INFO, looked at every quarter of it), or its socket's
//!   send queue drains — is not idle; one HTTP/2 stream given no window while others move lets
//!   go of its backend after the idle timeout: [`stall`]), a cap on connections (a listen
//!   backlog of 1024 past it, and a warning; and, if set, per client address: [`address_cap`],
//!   a `503` and the connection closed — over HTTP/2 with a GOAWAY) and header size, and
//!   a rapid reset or other HTTP/2 excess closed by h2 and logged by gitgate with the address
//!   once a minute, graceful shutdown on SIGINT/SIGTERM (SIGUSR1/2 logged and ignored) (an HTTP/1 connection awaiting a push's POST — git
//!   packing after the advertisement — is let carry it, within the header deadline from the
//!   stop; requests still waiting for a backend process, or for their backend's answer to
//!   begin ([`upstream::stop`]), are answered `503` before the cut;
//!   an answer sent whole reaches its client first — an HTTP/2 connection whose client asks for
//!   nothing new closes itself once h2 has sent its streams, and a socket closed with bytes
//!   still queued lingers until they are out ([`closing`]), either given up after 5 s without
//!   progress, and holds its places under `max_connections` and its address's cap until then;
//!   what is left at the end of the grace period, or at a second signal, is cut
//!   off by its worker, its backends reaped, then the REST calls' store work still running
//!   is waited for and pending writes are flushed, and the process ends without waiting for
//!   a lookup of the upstream's name nobody awaits any more; [`signals`]; a
//!   listening socket that fails for good — shut down or closed under gitgate — stops the
//!   process the same way, exit status 1, for a supervisor to start it again, as does a panic
//!   outside any connection: in a worker's loop or in the accepting itself; a panic of the
//!   `/metrics` listener's accepting ends `/metrics` alone, said in an ERROR, its port closed).
//!   Everything that can fail on a bad setting is checked before the store is opened (the
//!   open-files limit: [`open_files`]); every
//!   thread the server runs work on is started with it — threads of its own, waiting for work
//!   ([`own_thread`]), and each runtime's blocking pool, kept whole ([`blocking_pool`]) — so
//!   that one that cannot be started (a process or memory limit) stops the start with the
//!   reason, and a limit met later meets no thread start (under a memory limit, one aborted
//!   the process). Work that can hang for seconds takes few of the pool's eight threads, so
//!   that token reads and password checks still find one: lookups of the upstream's name
//!   ([`upstream::lookup`]) four at a time, REST calls' store work two at a time
//!   ([`api::STORE_WORK_AT_ONCE`]); blocks' audit events, batched by the store's writer with
//!   the failures', take none. An IPv6
//!   listener takes IPv4 clients too (`IPV6_V6ONLY` off, whatever the host's default). One
//!   single-threaded
//!   event loop per core (`[server] workers`): a connection and its upstream connection stay on
//!   one thread; limits, store and cache are shared.
//! - [`health`] answers `/healthz` and `/readyz` (an outcome remembered for a second, so probes
//!   cannot flood the upstream; another method than `GET` or `HEAD` is a `405`); the server routes them before the gate, and runs the readiness
//!   check once as it starts, so that an unreachable backend shows in the start's log; a
//!   look at the store or the CGI program stuck over 5 s (a hung file system) is "not ready",
//!   and no other starts until it returns ([`own_thread::OneAtATime`]); an
//!   outage is logged as news (its start, a change of cause, a reminder a minute, its end).
//!   The server also follows the audit events of command-line changes made while it runs
//!   and logs them (`via="command-line"`), once a second and at its stop.
//! - [`upstream::http`] forwards to an existing git server over keep-alive connections from a
//!   small pool per worker ([`upstream::pool`]), bodies streamed both ways; a `POST`'s answer
//!   (a pack) is read by the request's own task, which drives its connection, a `GET`'s by the
//!   connection's task; a `POST`'s chunked answer is handed to hyper one chunk per read, not one
//!   per 4 KiB chunk of the upstream's ([`upstream::rechunk`]);
//!   [`upstream::headers`] decides which headers cross (an allowlist of what git says about the
//!   content and itself: the client's token never does, nor any header an upstream might take
//!   for an identity; the identity header is always gitgate's; upstream redirects are pointed
//!   back at gitgate — the upstream's address recognised by value, in every spelling curl
//!   reads — and one that cannot be checked — not ASCII, several, or a host that cannot be
//!   read — is a `502`, as is one that leads away from gitgate (another site, a path out of
//!   the git prefix, a URL to gitgate not exactly as the client named it), since git follows
//!   redirects with its token; the answer's framing is hyper's to redo, its cookies and its
//!   `Server` stay behind; an HTTP/1.0 answer to a chunked body is a `502`, and so is an
//!   answer whose `Transfer-Encoding` hyper's client would read other than as gitgate does).
//!   `502`/`504` with a reason when the backend fails or stalls; `408` when the client's
//!   upload stops while the upstream waits for it; a `4xx`/`5xx` of the embedded CGI without a
//!   body gets one, since git would print only the status; its head is held until the request
//!   body is fed (git http-backend writes it before reading a push, and nginx in front stops
//!   sending on an answer).
//! - [`gate`] walks the steps above and turns every refusal into an answer in one place:
//!   `404/400/405` for what is not a git request (never forwarded), `501` for a request body in a
//!   transfer coding other than `chunked` (never forwarded), `401` with a Basic challenge
//!   for missing or bad credentials (`403` without one for any header but git's own `Basic`: a
//!   Bearer token, CI's lower-case `basic`, Gitea's `token` scheme, a token with no scheme, which
//!   git did not send itself and would answer a 401 to by prompting), `403` for too little
//!   permission, `503` when the store
//!   cannot be read, is gone, was found damaged, or was replaced by another file or had its
//!   `-wal`/`-shm` deleted (fail closed; a replaced or damaged one until a restart), `502` when the backend fails. Every refusal carries a
//!   one-line `text/plain` reason that git prints as `remote: ...`; what is left of a request's
//!   body at its answer (refused, or the backend failed) is read for a little while after it
//!   ([`linger`]), so that the answer is not lost to a reset.
//! - [`git`] says *what* a request is (repository, read or write) and builds the canonical path the
//!   backend will see; [`policy`] says *whether* it is allowed; neither does I/O.
//! - [`credentials`] parses `Authorization` (a token where the user name goes is refused before
//!   anything logs it); [`token`] knows the secret format
//!   (`ggt_<id>_<256 random bits>_<checksum>`) and hashes it; only the SHA-256 is stored.
//! - [`store`] is the SQLite token store (users, grants, tokens, settings, audit), shared with
//!   the CLI process, with an in-memory cache of auth records that any commit to the file (seen
//!   in the WAL index header, `PRAGMA data_version` as the fallback) drops — but gitgate's own
//!   writer's, which holds only audit rows and last uses: a revocation is seen on the next
//!   request. A store file, `-wal` or `-shm` deleted, moved or replaced under the server is
//!   refused on the next request too (a file replaced beside the old one's log leaves a
//!   `-replaced` marker at the stop, refused at every later open until the operator deals with
//!   that log), and so is a file whose header no longer says SQLite, or that any process found
//!   damaged (its `-damaged` marker, refused at every later open until the store is restored);
//!   the
//!   file checks that see it run after an inotify watch on
//!   the store's folders reports a change there (and every 0.1 s), not on every request; a
//!   watch lost with a folder moved away is set up again once the folder is back. An empty
//!   store file (0 bytes) is taken as a missing one; a newer gitgate's store is said to be
//!   newer, not damaged, whatever tables it changed. The CLI's
//!   read commands, run by an account that may read the store but not write it, read a
//!   private copy of it ([`store::Store::snapshot`]).
//! - [`upstream`] moves bytes: [`upstream::cgi`] runs `git http-backend` with both bodies
//!   streamed, in a process group of its own that is ended whole when the request ends early
//!   — but for a push, which is told by the end of its input and left to finish (a few per
//!   worker, until gitgate stops; one gitgate ends whose refs were updated all the same is
//!   said with a warning before the stop's last line) — or, `504`, when it sends no headers while the upload does
//!   not move either; it is given the one
//!   directory on disk that answers to the repository (`team/app.git` or `team/app`; both is a
//!   `500`), reached without a symbolic link or gitfile and not inside another repository (a
//!   missing one is a `404` without starting git); at most `[upstream] max_processes` of them
//!   run at once over the server ([`upstream::cgi::ProcessCap`]: a start waits up to 10 s and
//!   is then a `503`, the rest of an exchange under way goes first, places shared out by token
//!   while some wait; a request that waited, for a place or for the host to have processes
//!   again, is asked again by the gate before its backend starts, so that a token revoked
//!   during the wait is refused).
//! - [`lifecycle`] holds every token rule (who may create, list, edit, rotate and revoke which
//!   token; the expiry policy; expiry never changes) for both interfaces: [`cli`], the
//!   operator's command line, and [`api`], the Bitbucket-shaped REST API under `/rest/`, which
//!   the gate routes before git classification and which accepts passwords, never tokens;
//!   each change it makes checks again, in its own transaction, that the caller's account still
//!   stands (active; an administrator if it logged in as one).
//! - [`body`] lets the gate and the upstream watch frames stream past (byte counts, idle
//!   activity) without buffering them, and hands small upstream chunks on in bursts (one
//!   `writev` for many).
//! - [`network`] parses the CIDR lists a token may be limited to; [`config`] reads and
//!   validates `proxy.toml`; [`small_file`] reads it, and the PEM and secret files it names,
//!   only when each is a regular file of a sane size (never a device or a FIFO).
//! - [`guard`] defends the gate against abuse: [`throttle`] blocks an address after repeated
//!   failed authentications (before the store is read; the same credentials failing again, as
//!   libgit2 resends them, count once; a timer sweeps the addresses it may
//!   forget, off the request path), [`ratelimit`] gives each principal a
//!   token bucket, [`inflight`] caps its requests in flight; all answer `429` with
//!   `Retry-After`, and count time on a monotonic clock ([`clock::monotonic_ms`]); their
//!   per-principal overrides are read before the first request is served. Behind `trusted_proxies` they see the client's address
//!   ([`upstream::headers::client_address`]). [`unwind`] turns a panic in a request
//!   into a logged `500` so that no input can take the process down (the text a string's
//!   slice quotes in its panic left out: it may be a password).

pub mod address_cap;
pub mod api;
pub mod blocking_pool;
pub mod body;
pub mod build_id;
pub mod cli;
pub mod clock;
pub mod closing;
pub mod config;
pub mod credentials;
pub mod cross_site;
pub mod fields_present;
pub mod gate;
pub mod git;
pub mod guard;
pub mod health;
pub mod idle;
pub mod inflight;
pub mod lifecycle;
pub mod linger;
pub mod log_json;
pub mod log_queue;
pub mod log_value;
pub mod metrics;
pub mod network;
pub mod open_files;
pub mod own_thread;
pub mod password;
pub mod permission;
pub mod pkt_line;
pub mod policy;
pub mod port_holder;
pub mod push_commands;
pub mod ratelimit;
pub mod reload;
pub mod repeats;
pub mod request_id;
pub mod request_log;
pub mod server;
pub mod signals;
pub mod small_file;
pub mod stall;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod token;
pub mod unwind;
pub mod upstream;
