//! The token lifecycle rules, in one place for every interface (CLI now, REST API later):
//! who may create which token, with which permissions and expiry.
//!
//! - A personal token is created only by its owner, proven by the owner's password; an admin
//!   cannot create one for somebody else.
//! - Project and repository tokens are created by an administrator (the CLI operator is one).
//! - Permissions follow Bitbucket's combination rules ([`TokenPermissions::from_names`]).
//! - An expiry is a whole number of days from now, at least one.

use crate::clock::{self, DAY_MS};
use crate::credentials::Secret;
use crate::password;
use crate::permission::{TokenKind, TokenPermissions};
use crate::policy::Target;
use crate::store::{Actor, NewToken, Store, StoreError, TokenRecord};
use crate::token;

/// Who a new token is for.
pub enum Subject {
    /// A personal token of `user`, authorised by that user's password.
    Personal { user: String, password: String },
    /// A token scoped to a project or repository, created by an administrator.
    Scoped(Target),
}

pub struct CreateRequest {
    pub subject: Subject,
    pub name: String,
    pub permissions: Vec<String>,
    pub expiry_days: Option<u32>,
}

/// Why a token was not created.
#[derive(Debug)]
pub enum CreateError {
    /// The request itself is wrong (bad permissions, bad expiry, bad name).
    Invalid(String),
    /// The password does not prove ownership.
    NotOwner(String),
    Store(StoreError),
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateError::Invalid(m) | CreateError::NotOwner(m) => f.write_str(m),
            CreateError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CreateError {}

impl From<StoreError> for CreateError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => CreateError::Invalid(m),
            other => CreateError::Store(other),
        }
    }
}

/// Create a token; returns its record and the secret, which is shown once and never stored.
pub fn create(
    store: &Store,
    req: CreateRequest,
    actor: &Actor,
) -> Result<(TokenRecord, Secret), CreateError> {
    let (kind, owner, scope) = match &req.subject {
        Subject::Personal { user, password } => {
            let stored = store.password_hash(user)?;
            let ok = stored.is_some_and(|h| password::verify(password, &h));
            if !ok {
                let _ = store.record_event(
                    actor,
                    "auth.failed",
                    user,
                    "wrong password for personal token creation",
                );
                return Err(CreateError::NotOwner(format!(
                    "wrong password for user '{user}': a personal token can only be created by its owner, with the owner's password"
                )));
            }
            (TokenKind::Personal, Some(user.as_str()), None)
        }
        Subject::Scoped(target @ Target::Project(_)) => (TokenKind::Project, None, Some(target)),
        Subject::Scoped(target @ Target::Repo(_)) => (TokenKind::Repository, None, Some(target)),
    };
    let permissions =
        TokenPermissions::from_names(kind, &req.permissions).map_err(CreateError::Invalid)?;
    let expires_at = match req.expiry_days {
        None => None,
        Some(0) => {
            return Err(CreateError::Invalid(
                "--expiry-days must be at least 1".into(),
            ))
        }
        Some(days) => Some(clock::now_ms() + i64::from(days) * DAY_MS),
    };
    let fresh = token::generate()
        .map_err(|e| CreateError::Invalid(format!("no randomness from the OS: {e}")))?;
    let record = store.insert_token(
        &NewToken {
            id: fresh.id.as_str(),
            kind,
            name: &req.name,
            owner,
            scope,
            permissions,
            secret_hash: token::hash(fresh.secret.expose()),
            expires_at,
        },
        actor,
    )?;
    Ok((record, fresh.secret))
}
