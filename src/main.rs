//! The `gitgate` command line: definition and dispatch only. The work happens in the library
//! (`gitgate::server` for `serve`, `gitgate::cli::*` for the operator's commands).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use gitgate::cli;
use gitgate::log_json::{JsonLines, LogFormat};
use gitgate::log_queue;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gitgate",
    version,
    about = "Token authentication in front of a Git smart-HTTP server",
    after_help = "Environment: GITGATE_CONFIG (the configuration file, as --config); GITGATE_LOG \
                  (the log filter: a level such as warn, or TARGET=LEVEL pairs such as \
                  gitgate::request=off; default info); GITGATE_LOG_FORMAT (text, the default, \
                  or json: one JSON object per line). The log goes to stderr."
)]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        env = "GITGATE_CONFIG",
        default_value = "proxy.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve,
    /// Check the configuration and what it names (TLS files, listen addresses, upstream, store)
    /// without starting, as `nginx -t` does: exit 1 where `serve` would refuse to start.
    /// Changes nothing.
    Check,
    /// Copy the token store, consistently, into a new file (mode 0600), also while gitgate
    /// serves it; the store is read as it is, never migrated. Restore: see the README.
    Backup {
        /// The new file (refused if there is one already).
        file: std::path::PathBuf,
    },
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage users' permissions on projects and repositories.
    #[command(subcommand)]
    Grant(GrantCommand),
    /// Manage access tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show or set the token expiry policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Per-user rate-limit overrides and exemptions.
    #[command(subcommand)]
    Ratelimit(RatelimitCommand),
    /// Show audit events.
    Audit {
        /// Only events at or after this date (YYYY-MM-DD), UTC time as gitgate prints them
        /// (2026-12-05T11:57:51Z) or epoch milliseconds.
        #[arg(long)]
        since: Option<String>,
        /// Only events before this date (YYYY-MM-DD: before that day begins, UTC), UTC time
        /// (2026-12-05T11:57:51Z) or epoch milliseconds.
        #[arg(long)]
        until: Option<String>,
        /// Only events of this action (token.revoked) or family of actions (token: every
        /// token.* event).
        #[arg(long)]
        action: Option<String>,
        /// Only events by this actor, exactly as printed (cli:root, alice).
        #[arg(long)]
        actor: Option<String>,
        /// Only events about this target, exactly as printed (a user's name, a token's id).
        #[arg(long)]
        target: Option<String>,
        /// One user's whole trail: events about the user or any of their tokens, and the
        /// user's own (their changes, their failed logins).
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Only the newest N events (still printed oldest first). Without it, all of them.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user (prompts for the password unless --password-stdin).
    Add {
        /// The new user's name: 1-64 of a-z 0-9 . _ -, first a letter or digit, with no ggt_ or
        /// ggt- in it (how a token starts).
        name: String,
        /// Make the user an administrator (ADMIN on every repository).
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users: role, status, and wrong passwords in a row against the lock, as the store
    /// has them. Wrong passwords a running server could not write into the store (a full
    /// disk, a store made read-only) are counted in its memory only, and shown here once
    /// written (within 5 s of the store taking writes again); meanwhile its log has them
    /// (ERROR "could not record a wrong password", with the user).
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Disable a user: their tokens stop working at once.
    Disable {
        /// The user's name (as `user list` prints it).
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        /// The user's name (as `user list` prints it).
        name: String,
    },
    /// Make a user an administrator (ADMIN on every repository) or a plain user again.
    Role {
        /// The user's name (as `user list` prints it).
        name: String,
        /// The role: admin or user.
        #[arg(value_parser = ["admin", "user"])]
        role: String,
    },
    /// Lift the lock that repeated wrong passwords put on a user's password logins.
    Unlock {
        /// The user's name (as `user list` prints it).
        name: String,
    },
    /// Change a user's password.
    Passwd {
        /// The user's name (as `user list` prints it).
        name: String,
        /// Read the new password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Show the policy and the tokens that do not meet it.
    Show {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change the policy; it applies to tokens created from then on.
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true)))]
    Set {
        /// yes|no: whether new tokens must have an expiry.
        #[arg(long, group = "change", value_parser = ["yes", "no"])]
        expiry_required: Option<String>,
        /// The most days a new token may live when an expiry is required.
        #[arg(long, group = "change", allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=gitgate::lifecycle::MAX_DAYS as i64))]
        max_expiry_days: Option<u32>,
        /// Remove the maximum.
        #[arg(long, group = "change", conflicts_with = "max_expiry_days")]
        no_max_expiry_days: bool,
    },
}

#[derive(Subcommand)]
enum GrantCommand {
    /// Give NAME LEVEL (read|write|admin) on TARGET (PROJECT or PROJECT/REPO).
    Add {
        /// The user's name (as `user list` prints it).
        name: String,
        /// PROJECT, or PROJECT/REPO for one repository.
        target: String,
        /// read, write or admin.
        level: String,
    },
    /// Take NAME's grant on TARGET away.
    Remove {
        /// The user's name (as `user list` prints it).
        name: String,
        /// PROJECT or PROJECT/REPO, as `grant list` prints it.
        target: String,
    },
    /// List grants, of one user or of everyone.
    List {
        /// Only this user's grants.
        name: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RatelimitCommand {
    /// Give USER (a user, or token:ID for a project/repository token) its own bucket.
    Set {
        /// A user's name, or token:ID for a project or repository token.
        user: String,
        /// Requests allowed in a burst (from 1).
        #[arg(long, allow_negative_numbers = true, value_parser = burst_capacity)]
        capacity: u32,
        /// Requests added back per second (may be fractional; from 0.0000116, one a day, to 1000000).
        #[arg(long, allow_negative_numbers = true)]
        refill: f64,
    },
    /// Never rate-limit USER.
    Exempt {
        /// A user's name, or token:ID for a project or repository token.
        user: String,
    },
    /// Remove USER's override: the [rate_limit] defaults apply again.
    Clear {
        /// A user's name, or token:ID for a project or repository token.
        user: String,
    },
    /// List overrides.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct TokenFor {
    /// A personal token of this user (needs the user's password).
    #[arg(long)]
    user: Option<String>,
    /// A token scoped to this project.
    #[arg(long)]
    project: Option<String>,
    /// A token scoped to this repository (PROJECT/REPO).
    #[arg(long)]
    repo: Option<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; prints the secret alone on stdout.
    Create {
        #[command(flatten)]
        target: TokenFor,
        /// A label for the token.
        #[arg(long)]
        name: String,
        /// PROJECT_READ|PROJECT_WRITE|PROJECT_ADMIN|REPO_READ|REPO_WRITE|REPO_ADMIN (repeatable).
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
        /// Expire this many days from now.
        #[arg(long, allow_negative_numbers = true, value_parser = days_of_expiry)]
        expiry_days: Option<u32>,
        /// Only accept the token from this network (CIDR, repeatable; default anywhere).
        #[arg(long = "allowed-network")]
        allowed_networks: Vec<String>,
        /// Read the owner's password from the first line of stdin (personal tokens).
        #[arg(long)]
        password_stdin: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a token's name, permissions or networks (never its expiry).
    Edit {
        /// The token's id (see `token list`).
        id: String,
        /// The new label.
        #[arg(long)]
        name: Option<String>,
        /// The new permission set (repeatable), replacing the old one.
        #[arg(long = "permission")]
        permissions: Vec<String>,
        /// The new network list (CIDR, repeatable), replacing the old one.
        #[arg(long = "allowed-network")]
        allowed_networks: Vec<String>,
        /// Accept the token from anywhere again.
        #[arg(long, conflicts_with = "allowed_networks")]
        any_network: bool,
        /// Refused: an expiry never changes (accepted only to say so clearly).
        #[arg(long, hide = true, allow_negative_numbers = true)]
        expiry_days: Option<u32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Give a token a new secret (same id, name and permissions); prints it on stdout.
    Rotate {
        /// The token's id (see `token list`).
        id: String,
        /// Keep the old secret working this many seconds (0: refused at once; at most 604800,
        /// 7 days).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = overlap_seconds)]
        overlap_seconds: u32,
        /// Read the owner's password from the first line of stdin (personal tokens).
        #[arg(long)]
        password_stdin: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this user's personal tokens.
        #[arg(long)]
        user: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one token.
    Show {
        /// The token's id (see `token list`).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token; refused from the next request on.
    Revoke {
        /// The token's id (see `token list`).
        id: String,
    },
}

/// `--expiry-days` as a number of days, refused below one day as the store refuses 0 (clap's
/// own words for `-1`, "not in 0..=4294967295", named a range nothing in it may take). Past
/// the most the store takes, it says its own limit.
fn days_of_expiry(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(days) if days < 1 => Err("the expiry must be at least 1 day".into()),
        Ok(days) => Ok(u32::try_from(days).unwrap_or(u32::MAX)),
        Err(_) => Err(format!("'{s}' is not a whole number of days")),
    }
}

/// A whole number as typed (` 30 `, `-1`, `+5`), or `None` if it is none; one past what any
/// count holds is the most or the least there is, so that it is refused as out of range rather
/// than as no number at all.
fn whole_number(s: &str) -> Option<i64> {
    let t = s.trim();
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(t.parse().unwrap_or(if t.starts_with('-') {
        i64::MIN
    } else {
        i64::MAX
    }))
}

/// `--capacity`: requests in a burst, at least one (the store refuses an empty bucket), said
/// in words rather than clap's "-1 is not in 0..=4294967295".
fn burst_capacity(s: &str) -> Result<u32, String> {
    match whole_number(s).map(u32::try_from) {
        Some(Ok(n)) if n >= 1 => Ok(n),
        Some(_) => Err(format!(
            "the capacity must be a whole number of requests from 1 to {}",
            u32::MAX
        )),
        None => Err(format!("'{s}' is not a whole number of requests")),
    }
}

/// `--overlap-seconds`: none or more, said in words below that; past what the count holds it
/// is the most, for the rotation to refuse in its own words as it does any overlap over
/// [`gitgate::lifecycle::MAX_OVERLAP_SECS`] (`at most 604800 seconds (7 days)`), never a count
/// wrapped around to a short one.
fn overlap_seconds(s: &str) -> Result<u32, String> {
    match whole_number(s) {
        Some(n) if n < 0 => Err(format!(
            "the overlap must be a whole number of seconds from 0 to {} (7 days)",
            gitgate::lifecycle::MAX_OVERLAP_SECS
        )),
        Some(n) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
        None => Err(format!("'{s}' is not a whole number of seconds")),
    }
}

fn main() -> ExitCode {
    // First, before the command line is read: a SIGHUP to a server starting is a reload once it
    // listens, not the end of the start (see the function).
    gitgate::signals::hold_hangups_until_listening();
    // A file-size limit (`ulimit -f`, systemd's `LimitFSIZE=`) reached by the log would kill the
    // server with SIGXFSZ, mid-line, with nothing said; ignored, the write fails (EFBIG) and
    // loses its line, as one on a full disk does, and the server goes on. Its git processes
    // inherit this, and report the failed write (`File too large`) instead of dying of it.
    // SAFETY: nothing else runs yet, and SIG_IGN has no handler to run.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    // No core dumps, of gitgate or the git processes it starts: one would write the process's
    // memory — the token secrets of requests in flight, a password typed at a prompt — to a
    // file (systemd-coredump keeps them too, and honours this limit). Soft and hard, so that
    // nothing this process starts raises it again.
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    );
    // Set but empty (`GITGATE_CONFIG= gitgate ...`, a unit file's `Environment=GITGATE_CONFIG=`)
    // is unset, as for most tools: clap would otherwise refuse every command with "a value is
    // required for '--config'", even one given `--config` on its command line.
    if std::env::var_os("GITGATE_CONFIG").is_some_and(|v| v.is_empty()) {
        // Nothing else runs yet: no other thread reads the environment.
        std::env::remove_var("GITGATE_CONFIG");
    }
    // `--version` names the build too: every build is `0.1.0`, and after an upgrade the
    // binary on disk is told from the one a server runs by it (see `gitgate::build_id`).
    let version: &'static str = Box::leak(gitgate::build_id::version_and_build().into_boxed_str());
    let parsed = <Cli as clap::CommandFactory>::command()
        .version(version)
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let args = match parsed {
        Ok(args) => args,
        Err(e) => return refuse_the_command_line(e),
    };
    // Only the server hears a SIGHUP (as a reload once it listens); a command ends on it, as
    // one whose terminal closed should.
    if !matches!(args.command, Command::Serve) {
        gitgate::signals::let_hangups_end_the_process();
    }
    let changes_the_store = !matches!(
        args.command,
        Command::Serve | Command::Check | Command::Backup { .. }
    ) && !args.command.only_reads();
    // Who revokes a leaked token, or disables its owner, is told in so many words when the store
    // failed it: what they meant to stop still works.
    let still_works = match &args.command {
        Command::Token(TokenCommand::Revoke { id }) => Some(format!(
            "token {} is NOT revoked and still works",
            id.trim()
        )),
        Command::User(UserCommand::Disable { name }) => Some(format!(
            "user '{name}' is NOT disabled, and their tokens still work"
        )),
        _ => None,
    };
    // The server logs every request; the operator's commands only warnings.
    let serving = matches!(args.command, Command::Serve);
    // Held to the end: the server's queued log lines are written before the process exits.
    let _log_flush = match init_logging(serving) {
        Ok(flush) => flush,
        Err(message) => {
            // A refused start like any other bad setting: 1, as `check` promises.
            gitgate::cli::note(format_args!("gitgate: {message}"));
            return ExitCode::FAILURE;
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // `gitgate audit | head`: the reader has what it wanted; end as SIGPIPE would, quietly.
        Err(message) if message == cli::STDOUT_CLOSED => ExitCode::from(141),
        Err(message) => {
            let message = if changes_the_store {
                let message = said_unchanged(message);
                match &still_works {
                    Some(what) if message.ends_with("; nothing was changed") => {
                        format!("{message}: {what}")
                    }
                    _ => message,
                }
            } else {
                message
            };
            // What the operator typed is often repeated: never a secret pasted by mistake.
            let message = gitgate::credentials::without_secrets_in_an_answer(&message);
            // A server's failure is a line of its log, stamped and levelled as the others are,
            // so that a filter on the log's format (journald, logfmt) keeps the one line that
            // says why it stopped; unless the filter silences that, then as any command's.
            if serving && tracing::enabled!(target: "gitgate::server", tracing::Level::ERROR) {
                let one_line = gitgate::config::on_one_line(message.to_string());
                tracing::error!(target: "gitgate::server", "{one_line}");
            } else {
                gitgate::cli::note(format_args!("gitgate: {message}"));
            }
            ExitCode::FAILURE
        }
    }
}

/// A command line the parser refused (or `--help`, `--version`), printed as the parser would —
/// but without a token secret it repeats: `user add bob ggt_...`, a secret pasted after the
/// name, is an "unexpected argument" the parser quotes whole. Written as a command's output is
/// (`print!` panicked on a failed write): `gitgate --version | true` ends as SIGPIPE would, 141,
/// and `--help > /dev/full` says why it failed, 1; a refusal that cannot be written to stderr
/// is still the parser's exit code.
fn refuse_the_command_line(e: clap::Error) -> ExitCode {
    use std::io::IsTerminal;
    let rendered = e.render();
    let to_stderr = e.use_stderr();
    let text = if to_stderr && std::io::stderr().is_terminal()
        || !to_stderr && std::io::stdout().is_terminal()
    {
        rendered.ansi().to_string()
    } else {
        rendered.to_string()
    };
    let text = gitgate::credentials::without_secrets(&text);
    if to_stderr {
        use std::io::Write;
        let _ = std::io::stderr().write_all(text.as_bytes());
    } else {
        match cli::out_raw(&text) {
            Ok(()) => {}
            Err(message) if message == cli::STDOUT_CLOSED => return ExitCode::from(141),
            Err(message) => {
                gitgate::cli::note(format_args!("gitgate: {message}"));
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::from(e.exit_code().clamp(0, 255) as u8)
}

/// A command's failure, saying that nothing was changed when the store failed it: its change was
/// one transaction, rolled back (or never begun). Who revokes a leaked token, or removes a grant,
/// at night must not take a failure for a change made.
fn said_unchanged(message: String) -> String {
    const STORE_FAILED: [&str; 3] = [
        "token store error",
        "cannot open the token store",
        "the token store is locked by another process",
    ];
    let failed_in_the_store = STORE_FAILED.iter().any(|m| message.contains(m));
    // Said already, or said more precisely (a revoke: "is NOT revoked and still works").
    let lower = message.to_ascii_lowercase();
    let said = lower.contains("nothing was changed")
        || lower.contains("nothing was opened or changed")
        || lower.contains("nothing was created or changed")
        || message.contains(" NOT ");
    if failed_in_the_store && !said {
        format!("{message}; nothing was changed")
    } else {
        message
    }
}

impl Command {
    /// Whether the command only reads the store: it then must not create one where there is
    /// none (a mistyped `[store] path` would leave an empty store behind and list nothing).
    /// Kept beside the commands, so that a new one is classed where it is added.
    fn only_reads(&self) -> bool {
        matches!(
            self,
            Command::User(UserCommand::List { .. })
                | Command::Grant(GrantCommand::List { .. })
                | Command::Token(TokenCommand::List { .. } | TokenCommand::Show { .. })
                | Command::Policy(PolicyCommand::Show { .. })
                | Command::Ratelimit(RatelimitCommand::List { .. })
                | Command::Audit { .. }
        )
    }

    /// Whether the command may create the store: one that can start a new install (a first
    /// user, a first project token, the policy). Every other command reads or changes what must
    /// be there already, so on a mistyped `[store] path` it says there is no store, instead of
    /// leaving a new empty one behind that later commands would read as "nothing there".
    fn may_create_the_store(&self) -> bool {
        matches!(
            self,
            Command::User(UserCommand::Add { .. })
                | Command::Token(TokenCommand::Create { .. })
                | Command::Policy(PolicyCommand::Set { .. })
        )
    }
}

fn run(args: Cli) -> Result<(), String> {
    if let Command::Serve = args.command {
        let config = gitgate::config::Config::load(&args.config).map_err(|e| e.to_string())?;
        return gitgate::server::run(config);
    }
    if let Command::Check = args.command {
        return cli::check::run(&args.config);
    }
    // Before the store is opened: opening it would migrate an older one.
    if let Command::Backup { file } = &args.command {
        return cli::backup::run(&args.config, file);
    }
    let store = cli::open_store(
        &args.config,
        !args.command.only_reads(),
        args.command.may_create_the_store(),
    )?;
    // A command that found the store locked names who holds it (unless it read a private
    // copy, whose locks are its own).
    let result = run_command(&store, args.command).map_err(|e| {
        if !store.is_a_private_copy() {
            cli::naming_the_lock_holder(e, || gitgate::store::write_lock_said(store.path()))
        } else {
            e
        }
    });
    // A store made for this command goes with it when it fails: a typo leaves no new store.
    // So does one it wrote nothing to (a first `policy set` of what is so already), since the
    // command says "nothing changed": the store kept only if the command changed something.
    match result {
        Ok(()) => {
            if let Some(note) = store.undo_if_new_and_unwritten() {
                cli::note(format_args!("{note}"));
            }
            Ok(())
        }
        Err(e) => Err(match store.undo_if_new() {
            Some(note) => format!("{e}\n{note}"),
            None => e,
        }),
    }
}

fn run_command(store: &cli::OpenStore, command: Command) -> Result<(), String> {
    match command {
        Command::Serve | Command::Check | Command::Backup { .. } => {
            unreachable!("handled above")
        }
        Command::User(cmd) => match cmd {
            UserCommand::Add {
                name,
                admin,
                password_stdin,
            } => cli::user::add(store, &name, admin, password_stdin),
            UserCommand::List { json } => cli::user::list(store, json),
            UserCommand::Disable { name } => cli::user::set_active(store, &name, false),
            UserCommand::Enable { name } => cli::user::set_active(store, &name, true),
            UserCommand::Role { name, role } => cli::user::set_role(store, &name, &role),
            UserCommand::Unlock { name } => cli::user::unlock(store, &name),
            UserCommand::Passwd {
                name,
                password_stdin,
            } => cli::user::passwd(store, &name, password_stdin),
        },
        Command::Grant(cmd) => match cmd {
            GrantCommand::Add {
                name,
                target,
                level,
            } => cli::grant::add(
                store,
                &name,
                &target,
                &level,
                &store.git_prefix,
                store.project_root.as_deref(),
            ),
            GrantCommand::Remove { name, target } => cli::grant::remove(store, &name, &target),
            GrantCommand::List { name, json } => cli::grant::list(store, name.as_deref(), json),
        },
        Command::Token(cmd) => match cmd {
            TokenCommand::Create {
                target,
                name,
                permissions,
                expiry_days,
                allowed_networks,
                password_stdin,
                json,
            } => cli::token::create(
                store,
                cli::token::For {
                    user: target.user.as_deref(),
                    project: target.project.as_deref(),
                    repo: target.repo.as_deref(),
                    git_prefix: &store.git_prefix,
                    project_root: store.project_root.as_deref(),
                },
                cli::token::Create {
                    name: &name,
                    permissions: &permissions,
                    expiry_days,
                    allowed_networks: &allowed_networks,
                    password_stdin,
                    json,
                },
            ),
            TokenCommand::List { user, json } => cli::token::list(store, user.as_deref(), json),
            TokenCommand::Show { id, json } => cli::token::show(store, &id, json),
            TokenCommand::Revoke { id } => cli::token::revoke(store, &id),
            TokenCommand::Edit {
                id,
                name,
                permissions,
                allowed_networks,
                any_network,
                expiry_days,
                json,
            } => cli::token::edit(
                store,
                &id,
                cli::token::Edit {
                    name: name.as_deref(),
                    permissions: &permissions,
                    allowed_networks: &allowed_networks,
                    any_network,
                    expiry_days,
                    json,
                },
            ),
            TokenCommand::Rotate {
                id,
                overlap_seconds,
                password_stdin,
                json,
            } => cli::token::rotate(store, &id, overlap_seconds, password_stdin, json),
        },
        Command::Policy(cmd) => match cmd {
            PolicyCommand::Show { json } => cli::policy::show(store, json),
            PolicyCommand::Set {
                expiry_required,
                max_expiry_days,
                no_max_expiry_days,
            } => cli::policy::set(
                store,
                expiry_required.as_deref(),
                max_expiry_days,
                no_max_expiry_days,
            ),
        },
        Command::Ratelimit(cmd) => match cmd {
            RatelimitCommand::Set {
                user,
                capacity,
                refill,
            } => cli::ratelimit::set(store, &user, capacity, refill),
            RatelimitCommand::Exempt { user } => cli::ratelimit::exempt(store, &user),
            RatelimitCommand::Clear { user } => cli::ratelimit::clear(store, &user),
            RatelimitCommand::List { json } => cli::ratelimit::list(store, json),
        },
        Command::Audit {
            since,
            until,
            action,
            actor,
            target,
            user,
            limit,
            json,
        } => {
            let wanted = cli::audit::Wanted {
                since: since.as_deref(),
                until: until.as_deref(),
                action: action.as_deref(),
                actor: actor.as_deref(),
                target: target.as_deref(),
                user: user.as_deref(),
            };
            cli::audit::show(store, &wanted, limit, json)
        }
    }
}

/// Logging to stderr, filtered by `GITGATE_LOG` (else `default`), as text or, with
/// `GITGATE_LOG_FORMAT=json`, as JSON objects. A value that is not understood is refused: read
/// as best it could be, it would turn logging off without a word. The server's lines never
/// block it on a log reader that stopped reading (see `gitgate::log_queue`): the guard
/// returned writes what is queued at the end.
fn init_logging(serving: bool) -> Result<Option<log_queue::Flush>, String> {
    let default = if serving { "info" } else { "warn" };
    let filter = match std::env::var("GITGATE_LOG") {
        Ok(value) if !value.trim().is_empty() => {
            if let Some(problem) = log_filter_problem(&value) {
                return Err(format!("GITGATE_LOG={value:?}: {problem}"));
            }
            tracing_subscriber::EnvFilter::try_new(without_library_warnings(&with_a_level(
                &value, default,
            )))
            .map_err(|e| format!("GITGATE_LOG={value:?} is not a log filter: {e}"))?
        }
        _ => tracing_subscriber::EnvFilter::new(without_library_warnings(default)),
    };
    // A log that cannot be written (a full disk, a reader gone) loses its lines, as nginx's
    // does: tracing's own report of the failure would be a panic in `eprintln!`, and with it
    // the panic hook's log line, an abort of the whole server.
    let format = LogFormat::from_setting(std::env::var("GITGATE_LOG_FORMAT").ok().as_deref())?;
    // The server's lines: written where they are made when that cannot block, else queued for
    // a writer thread of its own. Without that thread (a process limit reached at the start),
    // they are written as they come, and the start goes on to say what else that limit stops.
    let (queue, unqueued) = match serving.then(|| {
        let queue =
            log_queue::LogQueue::new(log_queue::QUEUE_BYTES, log_queue::Direct::for_stderr());
        log_queue::start_writer(&queue).map(|()| queue)
    }) {
        Some(Ok(queue)) => (Some(queue), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let writer = match &queue {
        Some(queue) => BoxMakeWriter::new(log_queue::Queued(queue.clone())),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let lines = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    if format == LogFormat::Json {
        // Every key, a command's log lines too (its own `gitgate:` and `note:` messages are
        // its output, text in either format).
        lines.event_format(JsonLines).init();
    } else if serving {
        lines.init();
    } else {
        // Among a command's own `gitgate:` and `note:` lines, a warning without the time and
        // module a server's log needs: `WARN creating a new, empty token store path=...`.
        lines.without_time().with_target(false).init();
    }
    if let Some(e) = unqueued {
        tracing::warn!(
            error = %e,
            "cannot start the log writer's thread: log lines are written as they come, and a \
             log reader that stops reading would stop the server"
        );
    }
    Ok(queue.map(log_queue::Flush))
}

/// `value` as a filter: as it is when it sets a level for everything (`warn`,
/// `warn,gitgate::request=info`), else on top of `default`. A filter of `TARGET=LEVEL` pairs
/// alone shows nothing else at all, errors included: `gitgate::request=off`, the way to drop
/// the request lines, would have silenced every line.
fn with_a_level(value: &str, default: &str) -> String {
    let sets_a_level = value.split(',').map(str::trim).any(|d| {
        LEVELS.contains(&d.to_ascii_lowercase().as_str())
            || matches!(d, "0" | "1" | "2" | "3" | "4" | "5")
    });
    if sets_a_level {
        value.to_string()
    } else {
        format!("{default},{value}")
    }
}

/// The libraries whose warnings are about what a client sent, which any client can have them
/// write at will, many a second, without the client's address, and which the operator cannot
/// mend: h2's, each an HTTP/2 connection it closed for a client's excess (gitgate says those
/// itself, with the address, once a minute: see `server::excessive_load`), and rustls's, each
/// an odd TLS handshake (an IP address or a name no host has as the SNI, a renegotiation asked
/// for) — a handshake that failed gitgate logs itself, at debug level, with the address.
const CLIENTS_LIBRARIES: [&str; 2] = ["h2", "rustls"];

/// `filter` with the warnings of [`CLIENTS_LIBRARIES`] off (`,h2=error,rustls=error`), each
/// unless the filter names it or asks for debug lines from everything (a bare `debug` or
/// `trace`; `gitgate::cgi=debug` is not h2's).
fn without_library_warnings(filter: &str) -> String {
    let directives: Vec<&str> = filter.split(',').map(str::trim).collect();
    let everything_in_detail = directives.iter().any(|d| {
        matches!(
            d.to_ascii_lowercase().as_str(),
            "debug" | "trace" | "4" | "5"
        )
    });
    let mut out = filter.to_string();
    if everything_in_detail {
        return out;
    }
    for library in CLIENTS_LIBRARIES {
        let named = directives.iter().any(|d| {
            let target = d.split(['=', '[']).next().unwrap_or(d);
            target == library
                || target
                    .strip_prefix(library)
                    .is_some_and(|rest| rest.starts_with("::"))
        });
        if !named {
            out.push_str(&format!(",{library}=error"));
        }
    }
    out
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// What is wrong with a `GITGATE_LOG` value that the filter syntax would take but no operator
/// means: a bare word that is neither a level nor a module path (`warning`, `verbose`, or a
/// typo such as `gitgate:debug`) is read as a target name, and then nothing else logs — not
/// even errors.
/// The same for `TARGET=LEVEL` with a target nothing logs under (`GITGATE=debug`: targets are
/// case-sensitive, `gitgat=info`): without a level of its own the filter then shows nothing.
fn log_filter_problem(value: &str) -> Option<String> {
    let directives = value
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.contains('['));
    for d in directives {
        match d.split_once('=') {
            Some((target, _)) if !is_log_target(target.trim()) => {
                return Some(format!(
                    "'{}' names nothing gitgate logs under (targets are lower-case: gitgate, \
                     gitgate::request, gitgate::audit, gitgate::cgi, a module such as \
                     gitgate::upstream::http, hyper, h2, rustls, rusqlite, ...)",
                    target.trim()
                ))
            }
            Some(_) => {}
            None if LEVELS.contains(&d.to_ascii_lowercase().as_str())
                || matches!(d, "0" | "1" | "2" | "3" | "4" | "5")
                || is_log_target(d) => {}
            None => {
                return Some(format!(
                    "'{d}' is not a log level: use one of {}, or TARGET=LEVEL \
                     (e.g. gitgate=debug)",
                    LEVELS.join(", ")
                ))
            }
        }
    }
    None
}

/// A bare word that names whose lines to show: one of the crates gitgate logs through, or a
/// module path (`gitgate::cgi`, `hyper::proto`), whose parts are Rust identifiers. Below
/// `gitgate`, only what gitgate logs under: a typo there (`gitgate::requests=off`) would
/// otherwise be taken, and do nothing.
fn is_log_target(word: &str) -> bool {
    const CRATES: [&str; 6] = ["gitgate", "hyper", "hyper_util", "h2", "rustls", "rusqlite"];
    let identifier = |part: &str| {
        !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let first = word.split("::").next().unwrap_or("");
    CRATES.contains(&first)
        && word.split("::").all(identifier)
        && (first != "gitgate"
            || word == "gitgate"
            || GITGATE_TARGETS
                .iter()
                .any(|t| *t == word || t.strip_prefix(word).is_some_and(|r| r.starts_with("::"))))
}

/// The targets gitgate's own lines are logged under, for [`is_log_target`]: the ones named for
/// what they log (`target: "gitgate::request"`), then every module's path (the target of a line
/// that names none). A test keeps the list in step with the source tree.
const GITGATE_TARGETS: &[&str] = &[
    "gitgate::audit",
    "gitgate::cgi",
    "gitgate::panic",
    "gitgate::request",
    "gitgate::address_cap",
    "gitgate::api",
    "gitgate::api::body",
    "gitgate::api::browser",
    "gitgate::api::policy",
    "gitgate::api::scoped_tokens",
    "gitgate::api::tokens",
    "gitgate::api::users_tokens",
    "gitgate::blocking_pool",
    "gitgate::body",
    "gitgate::build_id",
    "gitgate::cli",
    "gitgate::cli::audit",
    "gitgate::cli::backup",
    "gitgate::cli::check",
    "gitgate::cli::grant",
    "gitgate::cli::policy",
    "gitgate::cli::ratelimit",
    "gitgate::cli::token",
    "gitgate::cli::user",
    "gitgate::clock",
    "gitgate::closing",
    "gitgate::config",
    "gitgate::credentials",
    "gitgate::cross_site",
    "gitgate::fields_present",
    "gitgate::gate",
    "gitgate::git",
    "gitgate::guard",
    "gitgate::health",
    "gitgate::idle",
    "gitgate::inflight",
    "gitgate::lifecycle",
    "gitgate::linger",
    "gitgate::log_json",
    "gitgate::log_queue",
    "gitgate::log_value",
    "gitgate::metrics",
    "gitgate::network",
    "gitgate::open_files",
    "gitgate::own_thread",
    "gitgate::password",
    "gitgate::permission",
    "gitgate::pkt_line",
    "gitgate::policy",
    "gitgate::port_holder",
    "gitgate::push_commands",
    "gitgate::ratelimit",
    "gitgate::reload",
    "gitgate::repeats",
    "gitgate::request_id",
    "gitgate::request_log",
    "gitgate::server",
    "gitgate::signals",
    "gitgate::small_file",
    "gitgate::stall",
    "gitgate::store",
    "gitgate::store::audit",
    "gitgate::store::cache",
    "gitgate::store::files",
    "gitgate::store::grants",
    "gitgate::store::locks",
    "gitgate::store::ratelimits",
    "gitgate::store::schema",
    "gitgate::store::settings",
    "gitgate::store::tokens",
    "gitgate::store::users",
    "gitgate::store::watch",
    "gitgate::store::writer",
    "gitgate::throttle",
    "gitgate::tls",
    "gitgate::token",
    "gitgate::unwind",
    "gitgate::upstream",
    "gitgate::upstream::cgi",
    "gitgate::upstream::cgi::body",
    "gitgate::upstream::cgi::cap",
    "gitgate::upstream::cgi::damage",
    "gitgate::upstream::cgi::env",
    "gitgate::upstream::cgi::head",
    "gitgate::upstream::cgi::process",
    "gitgate::upstream::cgi::report",
    "gitgate::upstream::cgi::repositories",
    "gitgate::upstream::cgi::stdio",
    "gitgate::upstream::framing",
    "gitgate::upstream::headers",
    "gitgate::upstream::http",
    "gitgate::upstream::lookup",
    "gitgate::upstream::patience",
    "gitgate::upstream::pool",
    "gitgate::upstream::progress",
    "gitgate::upstream::rechunk",
    "gitgate::upstream::secret",
    "gitgate::upstream::stop",
];

#[cfg(test)]
mod tests {
    use super::{
        burst_capacity, days_of_expiry, log_filter_problem, overlap_seconds, said_unchanged,
        with_a_level, without_library_warnings,
    };

    #[test]
    fn a_change_the_store_failed_is_said_to_be_unmade() {
        let said = |m: &str| said_unchanged(m.to_string());
        assert_eq!(
            said("token store error: database or disk is full"),
            "token store error: database or disk is full; nothing was changed"
        );
        assert!(
            said("proxy.toml: [store] path: cannot open the token store /x: readonly")
                .ends_with("; nothing was changed")
        );
        assert!(
            said("the token store is locked by another process; try again in a moment")
                .ends_with("; nothing was changed")
        );
        // Not the store's failure, or said already.
        for as_is in [
            "no token with id 'AAAAAAAAAAAA'",
            "user 'bob' already exists",
            "token store error: full: token abc is NOT revoked and still works; free the store",
            "x; nothing was changed",
            "cannot open the token store /x: ... Stop that process first. Nothing was opened or changed",
        ] {
            assert_eq!(said(as_is), as_is);
        }
    }

    #[test]
    fn the_warnings_of_clients_libraries_are_off_unless_asked_for() {
        assert_eq!(
            without_library_warnings("info"),
            "info,h2=error,rustls=error"
        );
        assert_eq!(
            without_library_warnings("warn"),
            "warn,h2=error,rustls=error"
        );
        assert_eq!(
            without_library_warnings("info,gitgate::request=off"),
            "info,gitgate::request=off,h2=error,rustls=error"
        );
        for as_is in [
            "h2=warn,rustls=warn",
            "info,h2=info,rustls::msgs=debug",
            "debug",
            "TRACE",
            "4",
        ] {
            assert_eq!(without_library_warnings(as_is), as_is);
        }
        // One named, the other still off.
        assert_eq!(without_library_warnings("h2=warn"), "h2=warn,rustls=error");
        assert_eq!(
            without_library_warnings("info,h2::proto=debug"),
            "info,h2::proto=debug,rustls=error"
        );
        assert_eq!(
            without_library_warnings("info,rustls=warn"),
            "info,rustls=warn,h2=error"
        );
        // Debug lines of something else are not theirs.
        for quiet in [
            "info,gitgate::cgi=debug",
            "info,hyper=trace",
            "h2x=warn",
            "rustlsx=warn",
        ] {
            assert_eq!(
                without_library_warnings(quiet),
                format!("{quiet},h2=error,rustls=error")
            );
        }
    }

    #[test]
    fn target_pairs_alone_refine_the_default_level() {
        assert_eq!(
            with_a_level("gitgate::request=off", "info"),
            "info,gitgate::request=off"
        );
        assert_eq!(with_a_level("hyper=debug", "warn"), "warn,hyper=debug");
        assert_eq!(with_a_level("gitgate", "info"), "info,gitgate");
        for as_is in [
            "warn",
            "WARN,gitgate::request=info",
            "gitgate=debug,2",
            "off",
        ] {
            assert_eq!(with_a_level(as_is, "info"), as_is);
        }
    }

    #[test]
    fn a_log_filter_word_that_is_no_level_is_refused() {
        for ok in [
            "info",
            "WARN",
            "gitgate=debug,hyper=warn",
            "warn,gitgate::request=info",
            "gitgate",
            "gitgate::cgi",
            "off",
        ] {
            assert_eq!(log_filter_problem(ok), None, "{ok}");
        }
        for bad in [
            "warning",
            "verbose",
            "info,quiet",
            "gitgate:debug",
            "gitgate.debug",
            "hyper-util",
            "gitgate::",
            "gitgatex",
            "other::module",
        ] {
            let problem = log_filter_problem(bad).unwrap();
            assert!(problem.contains("is not a log level"), "{bad}: {problem}");
        }
        // A TARGET=LEVEL whose target nothing logs under would silence everything.
        for bad in [
            "GITGATE=debug",
            "gitgat=info",
            "warn,Hyper=debug",
            "x::y=trace",
        ] {
            let problem = log_filter_problem(bad).unwrap();
            assert!(
                problem.contains("names nothing gitgate logs under"),
                "{bad}: {problem}"
            );
        }
        for ok in [
            "gitgate::upstream::http=debug",
            "gitgate::upstream=debug",
            "gitgate::store::writer=trace",
            "gitgate::request=off",
            "h2=warn,rustls=error",
            "hyper_util=info",
        ] {
            assert_eq!(log_filter_problem(ok), None, "{ok}");
        }
        // Below gitgate, a typo would be a filter that changes nothing.
        for bad in [
            "gitgate::requests=off",
            "gitgate::Request=off",
            "gitgate::reques=off",
            "info,gitgate::upstream::htp=debug",
            "gitgate::store::writer::x=debug",
        ] {
            let problem = log_filter_problem(bad).unwrap();
            assert!(
                problem.contains("names nothing gitgate logs under"),
                "{bad}: {problem}"
            );
        }
        let problem = log_filter_problem("gitgate::requests").unwrap();
        assert!(problem.contains("is not a log level"), "{problem}");
    }

    /// Every module of the source tree, and every target a line names, is in the list.
    #[test]
    fn the_gitgate_targets_are_the_source_trees() {
        fn walk(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    found.push(path);
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        assert!(files.len() > 40, "{files:?}");
        for file in files {
            let relative = file.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if !matches!(parts.as_slice(), [one] if one == "main" || one == "lib") {
                let module = format!("gitgate::{}", parts.join("::"));
                assert!(
                    super::GITGATE_TARGETS.contains(&module.as_str())
                        || parts.last().is_some_and(|p| p == "tests"),
                    "{module} is missing from GITGATE_TARGETS"
                );
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for named in text.split("target: \"").skip(1) {
                let target = named.split('"').next().unwrap();
                if target.starts_with("gitgate") {
                    assert!(
                        super::GITGATE_TARGETS.contains(&target),
                        "{target} (named in {}) is missing from GITGATE_TARGETS",
                        file.display()
                    );
                }
            }
        }
    }

    /// `--expiry-days` is refused below one day, in its own words, and past what the count
    /// holds it is the most (for the store to say its limit), never a count wrapped around to
    /// a short expiry: 2^32 + 1 days is not one day.
    #[test]
    fn expiry_days_below_one_are_refused_and_too_many_are_never_few() {
        for below in ["0", "-1"] {
            assert_eq!(
                days_of_expiry(below),
                Err("the expiry must be at least 1 day".to_string()),
                "{below}"
            );
        }
        assert_eq!(days_of_expiry(" 30 "), Ok(30));
        assert_eq!(days_of_expiry("4294967297"), Ok(u32::MAX));
        assert!(days_of_expiry("thirty")
            .unwrap_err()
            .contains("not a whole number of days"));
    }

    /// An option whose default clap shows (`[default: 0]`) does not say it again in its own
    /// words: `token rotate --help` read "(default 0: refused at once) [default: 0]".
    #[test]
    fn no_help_says_a_default_twice() {
        fn walk(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    arg.get_default_values().is_empty() || !help.contains("default"),
                    "{path} --{}: {help}",
                    arg.get_id()
                );
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        use clap::CommandFactory;
        walk(&super::Cli::command(), "gitgate");
    }

    /// `--capacity` and `--overlap-seconds` say what they take in words, for a negative
    /// number (and the capacity for one past its range) or for no number, never clap's "-1 is
    /// not in 0..=4294967295"; and take what is in it.
    #[test]
    fn capacity_and_overlap_say_in_words_what_they_take() {
        let capacity = "the capacity must be a whole number of requests from 1 to 4294967295";
        for out in [
            "-1",
            "0",
            "4294967296",
            "-99999999999999999999",
            "99999999999999999999",
        ] {
            assert_eq!(burst_capacity(out), Err(capacity.to_string()), "{out}");
        }
        assert_eq!(burst_capacity(" 1 "), Ok(1));
        assert_eq!(burst_capacity("+5"), Ok(5));
        assert_eq!(burst_capacity("4294967295"), Ok(u32::MAX));
        assert_eq!(
            burst_capacity("ten"),
            Err("'ten' is not a whole number of requests".to_string())
        );
        assert_eq!(
            burst_capacity("1.5"),
            Err("'1.5' is not a whole number of requests".to_string())
        );

        let overlap = "the overlap must be a whole number of seconds from 0 to 604800 (7 days)";
        for out in ["-1", "-99999999999999999999"] {
            assert_eq!(overlap_seconds(out), Err(overlap.to_string()), "{out}");
        }
        assert_eq!(overlap_seconds("0"), Ok(0));
        assert_eq!(overlap_seconds("604800"), Ok(604_800));
        // Past the week, the rotation refuses it; past the count, it is the most.
        assert_eq!(overlap_seconds("604801"), Ok(604_801));
        assert_eq!(overlap_seconds("4294967297"), Ok(u32::MAX));
        assert_eq!(
            overlap_seconds("-"),
            Err("'-' is not a whole number of seconds".to_string())
        );
    }

    /// A span filter (`TARGET[SPAN]=LEVEL`) is tracing's own syntax, left to it; an empty
    /// directive (a trailing comma) is no word at all. Neither is refused.
    #[test]
    fn span_filters_and_empty_directives_are_not_refused() {
        for ok in ["gitgate[request]=debug", "info,", "info,,gitgate=debug"] {
            assert_eq!(log_filter_problem(ok), None, "{ok}");
        }
    }
}
