//! Permission levels and the permission sets that tokens carry.
//!
//! Bitbucket Data Center names token permissions `PROJECT_READ|WRITE|ADMIN` and
//! `REPO_READ|WRITE|ADMIN`, with two combination rules we keep: a token's repository permission is at
//! least its project permission, and repository tokens carry no project permission. Git only ever
//! looks at the repository level (fetch needs `REPO_READ`, push `REPO_WRITE`); the project level is
//! kept so that tokens round-trip with Bitbucket-shaped tooling.
//!
//! Everything here is pure: values in, values out.

use std::fmt;
use std::str::FromStr;

/// How much a principal may do. Ordered: `Read < Write < Admin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Read,
    Write,
    Admin,
}

impl Level {
    /// Lower-case name, as used by grants (`read`, `write`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Read => "read",
            Level::Write => "write",
            Level::Admin => "admin",
        }
    }

    fn upper(self) -> &'static str {
        match self {
            Level::Read => "READ",
            Level::Write => "WRITE",
            Level::Admin => "ADMIN",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "read" => Ok(Level::Read),
            "write" => Ok(Level::Write),
            "admin" => Ok(Level::Admin),
            _ => Err(format!(
                "unknown permission level '{s}': expected read, write or admin"
            )),
        }
    }
}

/// What a git operation needs: clone/fetch/ls-remote read, push writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    /// The repository level this access needs.
    pub fn required(self) -> Level {
        match self {
            Access::Read => Level::Read,
            Access::Write => Level::Write,
        }
    }

    /// The verb a user recognises, for messages ("push needs REPO_WRITE").
    pub fn verb(self) -> &'static str {
        match self {
            Access::Read => "fetch",
            Access::Write => "push",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// The kind of a token: who owns it and where it may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Owned by a user, created only by that user; limited by the owner's own permissions.
    Personal,
    /// Scoped to one project; created by admins.
    Project,
    /// Scoped to one repository; created by admins.
    Repository,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Personal => "personal",
            TokenKind::Project => "project",
            TokenKind::Repository => "repository",
        }
    }
}

impl FromStr for TokenKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "personal" => Ok(TokenKind::Personal),
            "project" => Ok(TokenKind::Project),
            "repository" => Ok(TokenKind::Repository),
            _ => Err(format!("unknown token kind '{s}'")),
        }
    }
}

/// One Bitbucket permission name, e.g. `REPO_WRITE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenPermission {
    Project(Level),
    Repo(Level),
}

impl fmt::Display for TokenPermission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenPermission::Project(l) => write!(f, "PROJECT_{}", l.upper()),
            TokenPermission::Repo(l) => write!(f, "REPO_{}", l.upper()),
        }
    }
}

impl FromStr for TokenPermission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let level = |rest: &str| match rest {
            "READ" => Some(Level::Read),
            "WRITE" => Some(Level::Write),
            "ADMIN" => Some(Level::Admin),
            _ => None,
        };
        let parsed = if let Some(rest) = s.strip_prefix("PROJECT_") {
            level(rest).map(TokenPermission::Project)
        } else if let Some(rest) = s.strip_prefix("REPO_") {
            level(rest).map(TokenPermission::Repo)
        } else {
            None
        };
        parsed.ok_or_else(|| {
            format!(
                "unknown permission '{s}': expected one of PROJECT_READ, PROJECT_WRITE, \
                 PROJECT_ADMIN, REPO_READ, REPO_WRITE, REPO_ADMIN"
            )
        })
    }
}

/// The validated permission set of one token.
///
/// Built only by [`TokenPermissions::from_names`], which applies Bitbucket's combination rules, so a
/// value of this type is always a legal combination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenPermissions {
    project: Option<Level>,
    repo: Level,
}

impl TokenPermissions {
    /// Validate a list of permission names for a token of `kind`.
    ///
    /// Rules: at most one `PROJECT_*` and one `REPO_*`; repository tokens carry no project
    /// permission; the repository permission is at least the project permission. A project
    /// permission given alone implies the same repository permission (as Bitbucket's UI does).
    pub fn from_names<S: AsRef<str>>(kind: TokenKind, names: &[S]) -> Result<Self, String> {
        let mut project = None;
        let mut repo = None;
        for name in names {
            let name = name.as_ref().trim();
            if name.is_empty() {
                continue;
            }
            match name.parse::<TokenPermission>()? {
                TokenPermission::Project(l) => {
                    if project.replace(l).is_some_and(|old| old != l) {
                        return Err("a token has at most one PROJECT_ permission".into());
                    }
                }
                TokenPermission::Repo(l) => {
                    if repo.replace(l).is_some_and(|old| old != l) {
                        return Err("a token has at most one REPO_ permission".into());
                    }
                }
            }
        }
        if kind == TokenKind::Repository && project.is_some() {
            return Err(
                "repository tokens carry no PROJECT_ permission; use REPO_READ, \
                        REPO_WRITE or REPO_ADMIN"
                    .into(),
            );
        }
        let repo = match (project, repo) {
            (None, None) => {
                return Err("a token needs at least one permission, e.g. REPO_READ".into());
            }
            (Some(p), None) => p,
            (Some(p), Some(r)) if r < p => {
                return Err(format!(
                    "REPO_{} is below PROJECT_{}: a token's repository permission must be at \
                     least its project permission",
                    r.upper(),
                    p.upper()
                ));
            }
            (_, Some(r)) => r,
        };
        Ok(TokenPermissions { project, repo })
    }

    /// The permission git checks.
    pub fn repo(&self) -> Level {
        self.repo
    }

    pub fn project(&self) -> Option<Level> {
        self.project
    }

    /// Bitbucket names, project first: `["PROJECT_READ", "REPO_WRITE"]`.
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(2);
        if let Some(p) = self.project {
            out.push(TokenPermission::Project(p).to_string());
        }
        out.push(TokenPermission::Repo(self.repo).to_string());
        out
    }
}

impl fmt::Display for TokenPermissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(kind: TokenKind, names: &[&str]) -> Result<TokenPermissions, String> {
        TokenPermissions::from_names(kind, names)
    }

    #[test]
    fn levels_are_ordered() {
        assert!(Level::Read < Level::Write && Level::Write < Level::Admin);
        assert_eq!(Access::Write.required(), Level::Write);
    }

    #[test]
    fn names_round_trip() {
        for n in [
            "PROJECT_READ",
            "PROJECT_WRITE",
            "PROJECT_ADMIN",
            "REPO_READ",
            "REPO_WRITE",
            "REPO_ADMIN",
        ] {
            assert_eq!(n.parse::<TokenPermission>().unwrap().to_string(), n);
        }
        assert!("ADMIN".parse::<TokenPermission>().is_err());
        assert!("repo_read".parse::<TokenPermission>().is_err());
        assert!("REPO_".parse::<TokenPermission>().is_err());
    }

    #[test]
    fn combination_rules() {
        let p = perms(TokenKind::Personal, &["REPO_WRITE"]).unwrap();
        assert_eq!((p.project(), p.repo()), (None, Level::Write));
        let p = perms(TokenKind::Personal, &["PROJECT_READ"]).unwrap();
        assert_eq!((p.project(), p.repo()), (Some(Level::Read), Level::Read));
        let p = perms(TokenKind::Project, &["PROJECT_READ", "REPO_ADMIN"]).unwrap();
        assert_eq!(p.names(), vec!["PROJECT_READ", "REPO_ADMIN"]);
        assert!(perms(TokenKind::Personal, &["PROJECT_WRITE", "REPO_READ"]).is_err());
        assert!(perms(TokenKind::Repository, &["PROJECT_READ", "REPO_READ"]).is_err());
        assert!(perms(TokenKind::Personal, &["REPO_READ", "REPO_WRITE"]).is_err());
        assert!(perms(TokenKind::Personal, &[] as &[&str]).is_err());
        assert!(perms(TokenKind::Personal, &["ADMIN"]).is_err());
        // The same name twice is harmless.
        assert!(perms(TokenKind::Personal, &["REPO_READ", "REPO_READ"]).is_ok());
    }

    /// A repository permission equal to the project permission is at least it, so allowed.
    #[test]
    fn a_repository_permission_equal_to_the_project_permission_is_allowed() {
        for level in ["READ", "WRITE", "ADMIN"] {
            let names = [format!("PROJECT_{level}"), format!("REPO_{level}")];
            let p = TokenPermissions::from_names(TokenKind::Project, &names[..]).unwrap();
            assert_eq!(p.names(), names, "{level}");
        }
    }
}
