//! Where allowed requests go. The upstream only moves bytes: by the time a request gets here it has
//! been classified, authenticated and authorised, and it carries the canonical path and query that
//! the policy checked — never the client's raw ones.

pub mod cgi;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::http::request::Parts;
use hyper::Response;

use crate::gate::ResponseBody;
use crate::git::GitRequest;
use crate::policy::Identity;

pub use cgi::CgiBackend;

/// The configured backend.
pub enum Upstream {
    /// `git http-backend` (or another CGI program) run by gitgate itself.
    Cgi(CgiBackend),
}

impl Upstream {
    /// Send the authorised request on and stream the answer back.
    pub async fn forward<B>(
        &self,
        parts: &Parts,
        body: B,
        git_req: &GitRequest,
        identity: &Identity,
        remote: SocketAddr,
    ) -> Result<Response<ResponseBody>, String>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        match self {
            Upstream::Cgi(backend) => {
                let req = cgi::CgiRequest {
                    method: &parts.method,
                    path_info: &git_req.backend_path,
                    query: git_req.query.as_deref(),
                    headers: &parts.headers,
                    remote_user: &identity.user,
                    remote_addr: remote.ip(),
                };
                let resp = backend.serve(req, body).await.map_err(|e| e.to_string())?;
                Ok(resp.map(|b| b.boxed_unsync()))
            }
        }
    }
}
