//! Whether an authenticated token may do this git operation on this repository — and if not, the
//! one line that tells the user why.
//!
//! Pure: the token, its owner's state and the time come in as values, a decision comes out. The
//! rules (after Bitbucket Data Center):
//! - a revoked or expired token, a disabled owner, or a Basic username that is not the owner of a
//!   personal token → unauthenticated (401: git asks for other credentials);
//! - a personal token's effective permission is the lower of the token's `REPO_*` permission and
//!   the owner's permission on the repository *now* (admins hold ADMIN everywhere; otherwise the
//!   highest grant on the repository or its project), so taking a grant away takes it away from
//!   the user's tokens at once;
//! - a project or repository token has its `REPO_*` permission inside its scope and nothing
//!   outside;
//! - fetch needs read, push needs write; too little is forbidden (403);
//! - a token limited to source networks (CIDR) is forbidden (403) from anywhere else, so a
//!   leaked CI token is useless outside the CI network.

use std::fmt;
use std::net::IpAddr;

use crate::clock;
use crate::git::{valid_segment, RepoPath};
use crate::network;
use crate::permission::{Access, Level, TokenKind, TokenPermission};
use crate::store::{AuthRecord, Role};

/// What a grant or a scoped token covers: a whole project, or one repository.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Project(String),
    Repo(RepoPath),
}

/// The longest name of a folder on Linux's file systems, in bytes.
const NAME_MAX: usize = 255;

impl Target {
    /// `team` → project, `team/app` (or `team/app.git`) → repository.
    pub fn parse(s: &str) -> Result<Target, String> {
        // `team/` or `/team`: a project written as a path.
        let bare = s.trim_matches('/');
        if bare != s && !bare.is_empty() && !bare.contains('/') && valid_segment(bare) {
            return Err(format!(
                "'{s}' is not a project key or PROJECT/REPO path: write the project as \
                 '{bare}', without '/' (a repository as '{bare}/REPO')"
            ));
        }
        if s.contains('/') {
            RepoPath::parse(s).map(Target::Repo)
        } else if valid_segment(s) {
            Ok(Target::Project(s.to_string()))
        } else {
            Err(format!(
                "'{s}' is not a project key or PROJECT/REPO path: use letters, digits, '.', '_', '-', '+', '~'"
            ))
        }
    }

    /// A target for a new grant or scoped token: [`Target::parse`], and not one holding `ggt_`,
    /// the token prefix. The gate refuses every request for such a path before it is logged
    /// (it may be a secret pasted into a URL), so a grant or token for it could never be used.
    /// Stored targets are read with `parse`, so that older ones still list and can be removed.
    /// Also [`Target::served_under`] the server's `git_prefix`.
    pub fn parse_new(s: &str, git_prefix: &str) -> Result<Target, String> {
        let target = Target::parse(s)?;
        if crate::credentials::holds_a_token(s) {
            return Err(format!(
                "'{s}' holds 'ggt_', the prefix of gitgate's tokens: gitgate refuses requests \
                 for such a path (a token pasted into a URL must never be logged), so it could \
                 never be served; rename it"
            ));
        }
        target.served_under(git_prefix)?;
        Ok(target)
    }

    /// Refuses a target whose name no folder can have (over `NAME_MAX` bytes), or whose git
    /// paths are not git's under `git_prefix`: with `/`, every path
    /// under `/rest/` is the REST API's ([`crate::api::is_api_path`]), so a project `rest`
    /// could never be cloned. Nor is one whose path has the shape of a token secret's random
    /// part (a long mixed-case run with digits, `Platform-Services-Api-Gateway-V2-Deployment`):
    /// the gate refuses every request for such a path before it is logged, as it may be a
    /// secret pasted into a URL, so a grant or token for it could never be used. Nor is a
    /// repository under another's `info/lfs/` ([`crate::git::under_info_lfs`]), which the gate
    /// refuses as Git LFS's path.
    pub fn served_under(&self, git_prefix: &str) -> Result<(), String> {
        let (project, path) = match self {
            Target::Project(p) => (p.as_str(), p.as_str()),
            Target::Repo(r) => (r.project(), r.as_str()),
        };
        // No file system here takes a folder name over 255 bytes (Linux's NAME_MAX): no
        // repository could be found under a longer one.
        if let Some(long) = path.split('/').find(|name| name.len() > NAME_MAX) {
            return Err(format!(
                "'{}...' is {} bytes long, and no folder's name may be longer than {NAME_MAX}: \
                 a repository could never be served under it; shorten it",
                long.chars().take(24).collect::<String>(),
                long.len()
            ));
        }
        if crate::credentials::has_a_secrets_random_part(path) {
            return Err(format!(
                "'{path}' has {}, the shape of a token secret: gitgate refuses requests for \
                 such a path (a token pasted into a URL must never be logged), so it could \
                 never be served; rename it (a shorter name, or one in lower case)",
                crate::credentials::RANDOM_PART_SHAPE
            ));
        }
        if crate::git::under_info_lfs(path) {
            return Err(format!(
                "'{path}' lies under a repository's info/lfs/, Git LFS's path, which gitgate \
                 refuses as LFS whatever follows it, so it could never be served; rename it"
            ));
        }
        if git_prefix == "/" && crate::api::is_api_path(&format!("/{project}/")) {
            return Err(format!(
                "with [server] git_prefix = \"/\", /{project}/ is the REST API's: a grant or \
                 token for project '{project}' could never be used over git; rename the \
                 project, or serve git under a prefix (git_prefix = \"/scm\")"
            ));
        }
        Ok(())
    }

    /// Whether this target includes `repo`.
    pub fn covers(&self, repo: &RepoPath) -> bool {
        match self {
            Target::Project(p) => repo.project() == p,
            Target::Repo(r) => r == repo,
        }
    }

    /// [`Target::covers`] with ASCII letters' case ignored: only to say that a path refused
    /// was mistyped, never to grant.
    pub fn covers_ignoring_case(&self, repo: &RepoPath) -> bool {
        match self {
            Target::Project(p) => repo.project().eq_ignore_ascii_case(p),
            Target::Repo(r) => r.as_str().eq_ignore_ascii_case(repo.as_str()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Project(p) => format!("project {p}"),
            Target::Repo(r) => format!("repository {r}"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Project(p) => f.write_str(p),
            Target::Repo(r) => write!(f, "{r}"),
        }
    }
}

/// Who the request runs as, once allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Passed to the backend as REMOTE_USER: the owner for personal tokens, the token's name for
    /// scoped tokens.
    pub user: String,
    pub token_id: String,
}

/// Why a request is refused; the message is shown to the git user as `remote: ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deny {
    /// 401: the credentials do not stand for anyone who may act now, and why, in a word.
    Unauthenticated(AuthFailure, String),
    /// 403: a valid token without enough permission.
    Forbidden(String),
}

impl Deny {
    pub fn message(&self) -> &str {
        match self {
            Deny::Unauthenticated(_, m) | Deny::Forbidden(m) => m,
        }
    }
}

/// Why credentials were refused, in a word from a fixed list: the request's own log line says
/// it (`auth=revoked`), so that whoever reads one refused request's line can tell why without
/// finding its `auth.failed` audit event (which has the words the client was told, and is
/// folded with its repeats). Never anything the client sent, so never a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials, or a user name without a password: git's first round trip, before it
    /// asks its credential helper (a challenge, not a failure).
    NoCredentials,
    /// `Authorization: Bearer` with nothing after it (an empty CI variable).
    EmptyBearer,
    /// An `Authorization` header that cannot be read (not base64, no colon, another scheme).
    MalformedHeader,
    /// A token's secret given as (or in) the user name, with a password after it or without
    /// (`https://TOKEN@host/...`).
    TokenAsUser,
    /// Not a whole token: cut short, or with characters added.
    NotAToken,
    /// A token's length with a wrong character (its checksum does not match).
    MistypedToken,
    /// Not shaped as a token at all: an account password, most likely.
    Password,
    /// A well-formed token whose id the store does not have.
    UnknownToken,
    /// A token id the store has, with a secret that is not its own.
    WrongSecret,
    /// The secret a rotation replaced, after its overlap ended.
    ReplacedSecret,
    Revoked,
    Expired,
    /// A personal token sent with an empty user name.
    NoUserName,
    /// A personal token sent with a user name other than its owner's.
    WrongUser,
    /// A personal token whose owner is disabled.
    UserDisabled,
    /// A token whose owner or scope the store does not have (a damaged record).
    Orphaned,
}

impl AuthFailure {
    /// The word the log writes.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::NoCredentials => "no-credentials",
            AuthFailure::EmptyBearer => "empty-bearer",
            AuthFailure::MalformedHeader => "malformed-header",
            AuthFailure::TokenAsUser => "token-as-user-name",
            AuthFailure::NotAToken => "not-a-whole-token",
            AuthFailure::MistypedToken => "mistyped-token",
            AuthFailure::Password => "password-not-token",
            AuthFailure::UnknownToken => "unknown-token",
            AuthFailure::WrongSecret => "wrong-secret",
            AuthFailure::ReplacedSecret => "replaced-secret",
            AuthFailure::Revoked => "revoked",
            AuthFailure::Expired => "expired",
            AuthFailure::NoUserName => "no-user-name",
            AuthFailure::WrongUser => "wrong-user",
            AuthFailure::UserDisabled => "user-disabled",
            AuthFailure::Orphaned => "orphaned-token",
        }
    }
}

/// Decide whether the token in `record` (already matched against the presented secret) may do
/// `access` on `repo` at time `now` (epoch ms). `basic_user` is the username of Basic
/// credentials, `None` for Bearer; `remote` is the client's address.
pub fn authorize(
    record: &AuthRecord,
    basic_user: Option<&str>,
    repo: &RepoPath,
    access: Access,
    remote: IpAddr,
    now: i64,
) -> Result<Identity, Deny> {
    let token = &record.token;
    let name = &token.name;
    if token.revoked_at.is_some() {
        return Err(Deny::Unauthenticated(
            AuthFailure::Revoked,
            format!("token '{name}' has been revoked"),
        ));
    }
    if let Some(expires) = token.expires_at {
        if now >= expires {
            return Err(Deny::Unauthenticated(
                AuthFailure::Expired,
                format!("token '{name}' expired on {}", clock::datetime(expires)),
            ));
        }
    }
    // Checked once every 401 is ruled out: a wrong user or a disabled owner is told "not
    // authenticated", never where the token may be used.
    let from_allowed_network = || {
        if network::allowed(&token.allowed_networks, remote) {
            Ok(())
        } else {
            // A few are named: the line is git's `remote:` message.
            let names = token.network_names();
            let shown = match names.len() {
                n if n > 8 => format!("{} and {} more", names[..8].join(", "), n - 8),
                _ => names.join(", "),
            };
            Err(Deny::Forbidden(format!(
                "token '{name}' may only be used from {shown}; this request came from {remote}"
            )))
        }
    };
    let token_level = token.permissions.repo();
    let needed = access.required();
    let (user, effective) = match token.kind {
        TokenKind::Personal => {
            let Some(owner) = &record.owner else {
                return Err(Deny::Unauthenticated(
                    AuthFailure::Orphaned,
                    "invalid token".into(),
                ));
            };
            if let Some(presented) = basic_user {
                if presented.is_empty() {
                    return Err(Deny::Unauthenticated(
                        AuthFailure::NoUserName,
                        format!(
                            "token '{name}' is a personal token: give its owner's user name with it"
                        ),
                    ));
                }
                // User names are lower-case (see `store::users`), so no two differ in case
                // alone: `Alice`, as people and single sign-on helpers type it, is alice.
                if !presented.eq_ignore_ascii_case(&owner.slug) {
                    // Into the log and the audit table too: never a name that may be a password.
                    let message = match crate::store::as_written_down(presented) {
                        crate::store::NOT_A_USER_NAME => format!(
                            "token '{name}' does not belong to the user name given (not repeated: \
                             user names have only lower-case letters, digits, '.', '_' and '-', \
                             so it is none — an e-mail address is not one either — and it may \
                             be a password typed at git's Username prompt)"
                        ),
                        presented => {
                            format!("token '{name}' does not belong to user '{presented}'")
                        }
                    };
                    return Err(Deny::Unauthenticated(AuthFailure::WrongUser, message));
                }
            }
            if !owner.active {
                return Err(Deny::Unauthenticated(
                    AuthFailure::UserDisabled,
                    format!("user '{}' is disabled", owner.slug),
                ));
            }
            from_allowed_network()?;
            let owner_level = if owner.role == Role::Admin {
                Some(Level::Admin)
            } else {
                owner
                    .grants
                    .iter()
                    .filter(|(target, _)| target.covers(repo))
                    .map(|(_, level)| *level)
                    .max()
            };
            // The owner's access first: when it falls short, a token with more permission
            // would not help, and the message must not suggest it would.
            let owner_level = match owner_level {
                None => {
                    // A grant of theirs under another case: the path was mistyped, which the
                    // refusal should say rather than suggest a grant is missing.
                    let case = owner
                        .grants
                        .iter()
                        .find(|(target, _)| target.covers_ignoring_case(repo))
                        .map(|(target, _)| {
                            format!(" (paths are case-sensitive: their grant is on {target})")
                        })
                        .unwrap_or_default();
                    return Err(Deny::Forbidden(format!(
                        "user '{}' has no access to {repo}; {} needs {needed}{case}",
                        owner.slug,
                        access.verb()
                    )));
                }
                Some(level) if level < needed => {
                    return Err(Deny::Forbidden(format!(
                        "user '{}' has {level} access to {repo}; {} needs {needed}",
                        owner.slug,
                        access.verb()
                    )))
                }
                Some(level) => level,
            };
            (owner.slug.clone(), token_level.min(owner_level))
        }
        TokenKind::Project | TokenKind::Repository => {
            let Some(scope) = &token.scope else {
                return Err(Deny::Unauthenticated(
                    AuthFailure::Orphaned,
                    "invalid token".into(),
                ));
            };
            from_allowed_network()?;
            if !scope.covers(repo) {
                return Err(Deny::Forbidden(format!(
                    "token '{name}' is limited to {}; it cannot be used for {repo}",
                    scope.describe()
                )));
            }
            // The backend knows the token by its name, and HTTP and git trim spaces around it:
            // 'bob ' would arrive as 'bob'. Such names are refused when set; one from an older
            // store is refused here.
            if name.trim() != name {
                return Err(Deny::Forbidden(format!(
                    "token '{name}' has spaces around its name, which the git backend would read \
                     as another name; an administrator must rename it"
                )));
            }
            if name.is_empty() {
                return Err(Deny::Forbidden(
                    "this token has no name, and the git backend knows a project or repository \
                     token by its name; an administrator must rename it"
                        .into(),
                ));
            }
            if let Some(why) = &record.unusable_name {
                return Err(Deny::Forbidden(format!(
                    "token '{name}' cannot be used: {why} (an administrator must rename it)"
                )));
            }
            (name.clone(), token_level)
        }
    };
    if effective < needed {
        return Err(Deny::Forbidden(format!(
            "token '{name}' has {} on {repo}; {} needs {}",
            TokenPermission::Repo(token_level),
            access.verb(),
            TokenPermission::Repo(needed)
        )));
    }
    Ok(Identity {
        user,
        token_id: token.id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permission::TokenPermissions;
    use crate::store::{Owner, TokenRecord};

    const NOW: i64 = 1_790_812_800_000;

    fn repo(s: &str) -> RepoPath {
        RepoPath::parse(s).unwrap()
    }

    fn personal(perm: &str, role: Role, grants: &[(&str, Level)]) -> AuthRecord {
        AuthRecord {
            token: TokenRecord {
                id: "abcdefghijkl".into(),
                kind: TokenKind::Personal,
                name: "laptop".into(),
                owner: Some("alice".into()),
                scope: None,
                permissions: TokenPermissions::from_names(TokenKind::Personal, &[perm]).unwrap(),
                created_at: 0,
                created_by: "alice".into(),
                expires_at: None,
                last_used_at: None,
                last_used_addr: None,
                revoked_at: None,
                rotated_at: None,
                allowed_networks: vec![],
            },
            secret_hash: vec![],
            previous: None,
            owner: Some(Owner {
                slug: "alice".into(),
                role,
                active: true,
                grants: grants
                    .iter()
                    .map(|(t, l)| (Target::parse(t).unwrap(), *l))
                    .collect(),
            }),
            unusable_name: None,
            queued_use: Default::default(),
            previous_said: Default::default(),
        }
    }

    fn scoped(kind: TokenKind, scope: &str, perm: &str) -> AuthRecord {
        let mut r = personal(perm, Role::User, &[]);
        r.owner = None;
        r.token.kind = kind;
        r.token.owner = None;
        r.token.name = "ci".into();
        r.token.scope = Some(Target::parse(scope).unwrap());
        r
    }

    fn check(
        r: &AuthRecord,
        user: Option<&str>,
        repo_s: &str,
        a: Access,
    ) -> Result<Identity, Deny> {
        authorize(r, user, &repo(repo_s), a, "127.0.0.1".parse().unwrap(), NOW)
    }

    #[test]
    fn allowed_networks_are_enforced() {
        let mut r = personal("REPO_WRITE", Role::User, &[("team", Level::Write)]);
        r.token.allowed_networks = network::parse_list(&["10.0.0.0/8", "2001:db8::/32"]).unwrap();
        let at = |r: &AuthRecord, ip: &str| {
            authorize(
                r,
                None,
                &repo("team/app"),
                Access::Read,
                ip.parse().unwrap(),
                NOW,
            )
        };
        assert!(at(&r, "10.1.2.3").is_ok());
        assert!(at(&r, "2001:db8::7").is_ok());
        assert_eq!(
            at(&r, "127.0.0.1").unwrap_err(),
            Deny::Forbidden(
                "token 'laptop' may only be used from 10.0.0.0/8, 2001:db8::/32; this request came from 127.0.0.1"
                    .into()
            )
        );
        // Of many networks (a token made before they were capped), a few are named.
        let mut many = r.clone();
        many.token.allowed_networks = (0..10)
            .map(|i| format!("10.{i}.0.0/16").parse().unwrap())
            .collect();
        match at(&many, "127.0.0.1").unwrap_err() {
            Deny::Forbidden(m) => assert!(
                m.contains("10.7.0.0/16 and 2 more; this request came from 127.0.0.1"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        // A wrong user or a disabled owner is a 401 wherever the request comes from, and is
        // not told where the token may be used.
        let outside = "127.0.0.1".parse().unwrap();
        let wrong_user = authorize(
            &r,
            Some("mallory"),
            &repo("team/app"),
            Access::Read,
            outside,
            NOW,
        );
        assert_eq!(
            wrong_user.unwrap_err(),
            Deny::Unauthenticated(
                AuthFailure::WrongUser,
                "token 'laptop' does not belong to user 'mallory'".into()
            )
        );
        // The owner's name in another case is the owner (names are lower-case).
        let inside = "10.1.2.3".parse().unwrap();
        for spelled in ["Alice", "ALICE"] {
            let ok = authorize(
                &r,
                Some(spelled),
                &repo("team/app"),
                Access::Read,
                inside,
                NOW,
            );
            assert_eq!(ok.map(|i| i.user).unwrap(), "alice", "{spelled}");
        }
        let mut disabled = r.clone();
        disabled.owner.as_mut().unwrap().active = false;
        assert_eq!(
            at(&disabled, "127.0.0.1").unwrap_err(),
            Deny::Unauthenticated(AuthFailure::UserDisabled, "user 'alice' is disabled".into())
        );
        // Revocation is still reported first: the token is dead wherever it comes from.
        r.token.revoked_at = Some(1);
        assert!(matches!(
            at(&r, "127.0.0.1"),
            Err(Deny::Unauthenticated(AuthFailure::Revoked, _))
        ));
    }

    #[test]
    fn an_empty_basic_user_name_suits_scoped_tokens_only() {
        let r = personal("REPO_READ", Role::User, &[("team", Level::Read)]);
        assert_eq!(
            check(&r, Some(""), "team/app", Access::Read).unwrap_err(),
            Deny::Unauthenticated(
                AuthFailure::NoUserName,
                "token 'laptop' is a personal token: give its owner's user name with it".into()
            )
        );
        let scoped_token = scoped(TokenKind::Repository, "team/app", "REPO_READ");
        assert!(check(&scoped_token, Some(""), "team/app", Access::Read).is_ok());
    }

    #[test]
    fn a_scoped_token_outside_its_networks_is_refused_before_its_scope_is_told() {
        let mut r = scoped(TokenKind::Repository, "team/app", "REPO_READ");
        r.token.allowed_networks = network::parse_list(&["10.0.0.0/8"]).unwrap();
        let denied = check(&r, None, "other/repo", Access::Read).unwrap_err();
        assert!(
            matches!(&denied, Deny::Forbidden(m) if m.contains("may only be used from 10.0.0.0/8")),
            "{denied:?}"
        );
    }

    #[test]
    fn personal_token_within_owner_grant() {
        let r = personal("REPO_WRITE", Role::User, &[("team", Level::Write)]);
        let id = check(&r, Some("alice"), "team/app", Access::Write).unwrap();
        assert_eq!(id.user, "alice");
        assert!(check(&r, None, "team/app", Access::Read).is_ok());
    }

    #[test]
    fn token_permission_limits() {
        let r = personal("REPO_READ", Role::User, &[("team", Level::Admin)]);
        assert!(check(&r, Some("alice"), "team/app", Access::Read).is_ok());
        let d = check(&r, Some("alice"), "team/app", Access::Write).unwrap_err();
        assert_eq!(
            d,
            Deny::Forbidden(
                "token 'laptop' has REPO_READ on team/app; push needs REPO_WRITE".into()
            )
        );
    }

    #[test]
    fn owner_permission_limits() {
        let r = personal("REPO_WRITE", Role::User, &[("team", Level::Read)]);
        assert!(check(&r, Some("alice"), "team/app", Access::Read).is_ok());
        let d = check(&r, Some("alice"), "team/app", Access::Write).unwrap_err();
        assert_eq!(
            d,
            Deny::Forbidden("user 'alice' has read access to team/app; push needs write".into())
        );
        let d = check(&r, Some("alice"), "other/app", Access::Read).unwrap_err();
        assert!(matches!(d, Deny::Forbidden(m) if m.contains("no access to other/app")));
        // When both fall short, the owner's access is named: a token with more permission
        // would not help, and the message must not claim the token has any on the repository.
        let reader = personal("REPO_READ", Role::User, &[("team", Level::Read)]);
        assert_eq!(
            check(&reader, None, "other/app", Access::Write).unwrap_err(),
            Deny::Forbidden("user 'alice' has no access to other/app; push needs write".into())
        );
        assert_eq!(
            check(&reader, None, "team/app", Access::Write).unwrap_err(),
            Deny::Forbidden("user 'alice' has read access to team/app; push needs write".into())
        );
        // A repository grant above the project grant wins for that repository only.
        let r = personal(
            "REPO_WRITE",
            Role::User,
            &[("team", Level::Read), ("team/app", Level::Write)],
        );
        assert!(check(&r, None, "team/app", Access::Write).is_ok());
        assert!(check(&r, None, "team/lib", Access::Write).is_err());
        // A path that only a grant under another case would cover is refused all the same, and
        // the refusal says that paths are case-sensitive.
        assert_eq!(
            check(&r, None, "Team/Lib", Access::Read).unwrap_err(),
            Deny::Forbidden(
                "user 'alice' has no access to Team/Lib; fetch needs read (paths are \
                 case-sensitive: their grant is on team)"
                    .into()
            )
        );
        assert!(matches!(
            check(&r, None, "other/app", Access::Read).unwrap_err(),
            Deny::Forbidden(m) if !m.contains("case-sensitive")
        ));
    }

    #[test]
    fn admins_hold_admin_everywhere() {
        let r = personal("REPO_ADMIN", Role::Admin, &[]);
        assert!(check(&r, None, "any/thing", Access::Write).is_ok());
    }

    #[test]
    fn revoked_expired_disabled_wrong_user() {
        let mut r = personal("REPO_WRITE", Role::User, &[("team", Level::Write)]);
        assert!(matches!(
            check(&r, Some("bob"), "team/app", Access::Read),
            Err(Deny::Unauthenticated(AuthFailure::WrongUser, m)) if m == "token 'laptop' does not belong to user 'bob'"
        ));
        r.owner.as_mut().unwrap().active = false;
        assert!(matches!(
            check(&r, None, "team/app", Access::Read),
            Err(Deny::Unauthenticated(AuthFailure::UserDisabled, m)) if m == "user 'alice' is disabled"
        ));
        r.owner.as_mut().unwrap().active = true;
        r.token.expires_at = Some(NOW);
        assert!(matches!(
            check(&r, None, "team/app", Access::Read),
            Err(Deny::Unauthenticated(AuthFailure::Expired, m)) if m == "token 'laptop' expired on 2026-10-01T00:00:00Z"
        ));
        r.token.expires_at = Some(NOW + 1);
        assert!(check(&r, None, "team/app", Access::Read).is_ok());
        r.token.revoked_at = Some(NOW - 1);
        assert!(matches!(
            check(&r, None, "team/app", Access::Read),
            Err(Deny::Unauthenticated(AuthFailure::Revoked, m)) if m.contains("revoked")
        ));
    }

    #[test]
    fn scoped_tokens_stay_in_scope_and_accept_any_basic_user() {
        let r = scoped(TokenKind::Project, "team", "REPO_WRITE");
        let id = check(&r, Some("ci-runner"), "team/app", Access::Write).unwrap();
        assert_eq!(id.user, "ci");
        let d = check(&r, None, "other/app", Access::Read).unwrap_err();
        assert_eq!(
            d,
            Deny::Forbidden(
                "token 'ci' is limited to project team; it cannot be used for other/app".into()
            )
        );
        let r = scoped(TokenKind::Repository, "team/app", "REPO_READ");
        assert!(check(&r, None, "team/app", Access::Read).is_ok());
        assert!(check(&r, None, "team/app", Access::Write).is_err());
        assert!(check(&r, None, "team/lib", Access::Read).is_err());
    }

    #[test]
    fn a_scoped_token_named_with_surrounding_spaces_never_reaches_the_backend() {
        let mut r = scoped(TokenKind::Project, "team", "REPO_READ");
        for name in ["bob ", " bob", "bob\u{a0}"] {
            r.token.name = name.into();
            match check(&r, None, "team/app", Access::Read) {
                Err(Deny::Forbidden(m)) => assert!(m.contains("spaces around its name"), "{m}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
    }

    /// Names refused when set, met in a store edited by hand: never the backend's identity.
    #[test]
    fn a_scoped_token_without_a_usable_name_never_reaches_the_backend() {
        let mut r = scoped(TokenKind::Project, "team", "REPO_READ");
        r.token.name = String::new();
        match check(&r, None, "team/app", Access::Read) {
            Err(Deny::Forbidden(m)) => assert!(m.contains("has no name"), "{m}"),
            other => panic!("{other:?}"),
        }
        r.token.name = "alice".into();
        r.unusable_name = Some("that is a user's name".into());
        match check(&r, None, "team/app", Access::Read) {
            Err(Deny::Forbidden(m)) => {
                assert!(
                    m.contains("token 'alice' cannot be used: that is a user's name"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("team").unwrap(),
            Target::Project("team".into())
        );
        assert!(
            matches!(Target::parse("team/app.git").unwrap(), Target::Repo(r) if r.as_str() == "team/app")
        );
        assert!(Target::parse("").is_err());
        // A path the gate would refuse cannot be granted or given a token...
        for held in ["team/ggt_calc", "GGT_team", "team/x%5Fggt_y"] {
            let e = Target::parse_new(held, "/").unwrap_err();
            assert!(e.contains("ggt_"), "{e}");
        }
        assert!(Target::parse_new("team/ggcalc", "/").is_ok());
        // ... nor one no folder can be named (the gate could only answer 404).
        let key = "a".repeat(256);
        for held in [key.clone(), format!("{key}/app"), format!("team/{key}")] {
            let e = Target::parse_new(&held, "/scm").unwrap_err();
            assert!(e.contains("256 bytes long") && !e.contains(&key), "{e}");
            assert!(Target::parse(&held).unwrap().served_under("/scm").is_err());
        }
        assert!(Target::parse_new(&"a".repeat(255), "/scm").is_ok());
        // ... nor one whose name has the shape of a secret's random part, which the gate
        // refuses as such (`credentials::has_a_secrets_random_part`): a grant given for it
        // left its users with "the repository path holds what looks like a gitgate token".
        let long = "Platform-Services-Backend-Api-Gateway-V2";
        for held in [
            format!("team/{long}"),
            format!("team/{long}.git"),
            long.to_string(),
        ] {
            let e = Target::parse_new(&held, "/").unwrap_err();
            assert!(e.contains("the shape of a token secret"), "{e}");
            assert!(Target::parse_new(&held, "/scm").is_err(), "{held}");
            // The REST API's token creation asks the same of the target in its path.
            let e = Target::parse(&held).unwrap().served_under("/").unwrap_err();
            assert!(e.contains("rename it"), "{e}");
        }
        for fine in [
            "team/platform-services-backend-api-gateway-v2",
            "team/Platform-Services-Backend-Api-Gateway",
            "team/Platform-Services.Backend-Api-Gateway-V2",
        ] {
            assert!(Target::parse_new(fine, "/").is_ok(), "{fine}");
        }
        // ... nor can a project under `/rest/` when git is served at the root: the REST API's.
        for api in ["rest", "rest/app"] {
            let e = Target::parse_new(api, "/").unwrap_err();
            assert!(e.contains("REST API") && e.contains("git_prefix"), "{e}");
            assert!(Target::parse_new(api, "/scm").is_ok());
        }
        for git in ["restaurant", "Rest/app", "team/rest"] {
            assert!(Target::parse_new(git, "/").is_ok(), "{git}");
        }
        // ... nor a repository under another's `info/lfs/`, which the gate refuses as LFS.
        for lfs in [
            "team/app/info/lfs",
            "team/app.git/info/lfs.git",
            "a/b/info/lfs/c",
        ] {
            let e = Target::parse_new(lfs, "/scm").unwrap_err();
            assert!(e.contains("info/lfs/") && e.contains("rename it"), "{e}");
        }
        for fine in ["team/info/lfs", "team/app/lfs", "team/app/info/lfs-mirror"] {
            assert!(Target::parse_new(fine, "/scm").is_ok(), "{fine}");
        }
        // ... but one already stored still reads.
        assert!(Target::parse("team/ggt_calc").is_ok());
        assert!(Target::parse("../x").is_err());
        assert!(Target::parse("team/").is_err());
        // A project written as a path is told how to write it.
        for path in ["team/", "/team", "/team/"] {
            let e = Target::parse(path).unwrap_err();
            assert!(e.contains("write the project as 'team'"), "{e}");
        }
        assert!(!Target::parse("/")
            .unwrap_err()
            .contains("write the project"));
    }

    #[test]
    fn a_project_grant_or_token_covers_its_project_only_not_one_named_after_it() {
        let r = personal("REPO_WRITE", Role::User, &[("team", Level::Write)]);
        for other in ["teamx/app", "team-secrets/app", "team.old/app"] {
            assert!(
                matches!(
                    check(&r, None, other, Access::Read),
                    Err(Deny::Forbidden(_))
                ),
                "{other}"
            );
        }
        let t = scoped(TokenKind::Project, "team", "REPO_WRITE");
        assert!(matches!(
            check(&t, None, "teamx/app", Access::Read),
            Err(Deny::Forbidden(_))
        ));
        let r = personal("REPO_WRITE", Role::User, &[("team/app", Level::Write)]);
        assert!(check(&r, None, "team/app2", Access::Read).is_err());
    }

    /// SECURITY.md promise 2: a grant on `TEAM` does not open `team`. The policy compares
    /// repository paths as written: `team/App` is another repository than `team/app` (on a
    /// file system that folds case it would be the same folder, which the embedded runner
    /// refuses on its own; over an HTTP upstream the policy is all there is). A path spelled
    /// in another case is refused, with a word that paths are case-sensitive.
    #[test]
    fn a_repository_grant_or_token_covers_its_path_in_its_own_case_only() {
        let r = personal("REPO_WRITE", Role::User, &[("team/app", Level::Write)]);
        assert!(check(&r, None, "team/app", Access::Write).is_ok());
        for other in ["team/App", "TEAM/APP", "Team/app"] {
            assert!(
                matches!(
                    check(&r, None, other, Access::Read),
                    Err(Deny::Forbidden(m)) if m.contains("case-sensitive: their grant is on team/app")
                ),
                "{other}"
            );
        }
        for kind_scope in [
            (TokenKind::Repository, "team/app"),
            (TokenKind::Project, "team"),
        ] {
            let t = scoped(kind_scope.0, kind_scope.1, "REPO_WRITE");
            assert!(check(&t, None, "team/app", Access::Write).is_ok());
            for other in ["team/App", "TEAM/APP", "Team/app"] {
                let answer = check(&t, None, other, Access::Read);
                let in_scope = kind_scope.0 == TokenKind::Project && other.starts_with("team/");
                assert_eq!(answer.is_ok(), in_scope, "{kind_scope:?} {other}");
            }
        }
    }
}
