use super::body::{BODY_CHUNK, MAX_FINISHING};
use super::*;
use crate::upstream::UploadStalled;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::HeaderValue;
use hyper::StatusCode;

#[test]
fn git_http_backend_is_known_by_its_name_or_by_what_a_link_leads_to() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("git-http-backend");
    std::fs::write(&real, "#!/bin/sh\n").unwrap();
    let link = dir.path().join("ghb");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let wrapper = dir.path().join("backend.sh");
    std::fs::write(&wrapper, "#!/bin/sh\n").unwrap();
    let is = |program: &Path| {
        CgiBackend::new(program.to_path_buf(), dir.path().to_path_buf()).is_git_http_backend()
    };
    assert!(is(&real));
    assert!(is(&link), "a symbolic link to it");
    assert!(!is(&wrapper), "a wrapper");
    assert!(!is(&dir.path().join("missing")), "a path that is not there");
}

#[test]
fn one_directory_answers_to_a_repository() {
    use Found::{Folder, Indirect, Nothing, Repository};
    let refused = RepoDir::NotServed;
    assert_eq!(RepoDir::of(Repository, Nothing, false), RepoDir::WithGit);
    assert_eq!(RepoDir::of(Nothing, Repository, false), RepoDir::Plain);
    assert_eq!(
        RepoDir::of(Nothing, Nothing, false),
        refused(NotServed::Missing)
    );
    assert_eq!(
        RepoDir::of(Repository, Repository, false),
        refused(NotServed::Both)
    );
    // `<repo>.git.git` matters only where git would be asked for `<repo>.git`.
    assert_eq!(
        RepoDir::of(Repository, Nothing, true),
        refused(NotServed::Doubled)
    );
    assert_eq!(
        RepoDir::of(Repository, Repository, true),
        refused(NotServed::Both)
    );
    assert_eq!(RepoDir::of(Nothing, Repository, true), RepoDir::Plain);
    assert_eq!(
        RepoDir::of(Nothing, Nothing, true),
        refused(NotServed::Missing)
    );
    // A folder of repositories beside the repository of the same name.
    assert_eq!(RepoDir::of(Repository, Folder, false), RepoDir::WithGit);
    assert_eq!(RepoDir::of(Folder, Repository, false), RepoDir::Plain);
    assert_eq!(
        RepoDir::of(Folder, Folder, false),
        refused(NotServed::Missing)
    );
    // A link or a gitfile where git would go: refused (given `<repo>`, git goes on to
    // `<repo>.git` when it does not take `<repo>` for a repository). Beside `<repo>.git`, which
    // is what git is given then, it never looks.
    assert_eq!(
        RepoDir::of(Nothing, Indirect, false),
        refused(NotServed::Indirect)
    );
    assert_eq!(
        RepoDir::of(Indirect, Nothing, false),
        refused(NotServed::Indirect)
    );
    assert_eq!(
        RepoDir::of(Indirect, Folder, false),
        refused(NotServed::Indirect)
    );
    assert_eq!(
        RepoDir::of(Indirect, Repository, false),
        refused(NotServed::Indirect)
    );
    assert_eq!(RepoDir::of(Repository, Indirect, false), RepoDir::WithGit);
    // Where looking was refused and no repository was seen, nothing can be told: neither
    // missing nor served. A repository at the other name is served as git would serve it.
    for (with_git, plain) in [
        (Found::Unreadable, Nothing),
        (Found::Unreadable, Folder),
        (Nothing, Found::Unreadable),
        (Folder, Found::Unreadable),
    ] {
        assert_eq!(
            RepoDir::of(with_git, plain, false),
            refused(NotServed::Unreadable),
            "{with_git:?} {plain:?}"
        );
    }
    assert_eq!(
        RepoDir::of(Repository, Found::Unreadable, false),
        RepoDir::WithGit
    );
    assert_eq!(
        RepoDir::of(Found::Unreadable, Repository, false),
        RepoDir::Plain
    );
    assert_eq!(
        RepoDir::of(Found::Unreadable, Indirect, false),
        refused(NotServed::Indirect)
    );
}

#[test]
fn the_directory_on_disk_is_found_without_following_links() {
    let root = tempfile::tempdir().unwrap();
    let backend = CgiBackend::new("/bin/false".into(), root.path().to_owned());
    let bare = |name: &str| {
        let dir = root.path().join(name);
        std::fs::create_dir_all(dir.join("objects")).unwrap();
        std::fs::create_dir_all(dir.join("refs")).unwrap();
        std::fs::write(dir.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    };
    bare("team/app.git");
    bare("team/plain");
    bare("team/both");
    bare("team/both.git");
    bare("team/odd.git.git");
    // A working tree.
    std::fs::create_dir_all(root.path().join("team/tree/.git")).unwrap();
    // A folder of repositories beside the repository of the same name, and an empty one.
    bare("team/nested.git");
    bare("team/nested/lib.git");
    std::fs::create_dir_all(root.path().join("team/stray.git")).unwrap();
    bare("team/stray");
    // A file is no repository.
    std::fs::write(root.path().join("team/file"), "").unwrap();
    // A repository with anything named `<it>.git.git` beside it, where git could go next.
    bare("team/twice.git");
    bare("team/twice.git.git");
    bare("team/gitfile.git");
    std::fs::write(
        root.path().join("team/gitfile.git.git"),
        "gitdir: ../team/app.git\n",
    )
    .unwrap();
    // Links and gitfiles: to another project's repository, or out of the project root.
    bare("other/secret.git");
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        root.path().join("other/secret.git"),
        root.path().join("team/link.git"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("team/out")).unwrap();
    bare("team/out/x.git");
    std::os::unix::fs::symlink(root.path().join("other"), root.path().join("linked")).unwrap();
    std::fs::write(
        root.path().join("team/pointer.git"),
        "gitdir: ../other/secret.git\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.path().join("team/worktree")).unwrap();
    std::fs::write(
        root.path().join("team/worktree/.git"),
        "gitdir: ../../other/secret.git\n",
    )
    .unwrap();
    // A repository inside a working tree (anyone who pushes to it could have written it), and
    // inside a bare repository's folder.
    std::fs::create_dir_all(root.path().join("team/site/.git")).unwrap();
    bare("team/site/evil.git");
    bare("team/app.git/inner.git");

    let refused = RepoDir::NotServed;
    assert_eq!(backend.repo_dir("team/app"), RepoDir::WithGit);
    assert_eq!(backend.repo_dir("team/plain"), RepoDir::Plain);
    assert_eq!(backend.repo_dir("team/tree"), RepoDir::Plain);
    assert_eq!(backend.repo_dir("team/both"), refused(NotServed::Both));
    assert_eq!(backend.repo_dir("team/odd"), refused(NotServed::Missing));
    assert_eq!(backend.repo_dir("team/nested"), RepoDir::WithGit);
    assert_eq!(backend.repo_dir("team/nested/lib"), RepoDir::WithGit);
    assert_eq!(backend.repo_dir("team/stray"), RepoDir::Plain);
    assert_eq!(backend.repo_dir("team/twice"), refused(NotServed::Doubled));
    assert_eq!(
        backend.repo_dir("team/gitfile"),
        refused(NotServed::Doubled)
    );
    assert_eq!(backend.repo_dir("missing/app"), refused(NotServed::Missing));
    assert_eq!(
        backend.repo_dir("team/app/missing"),
        refused(NotServed::Missing)
    );
    // A file where a repository goes is read by git as a gitfile.
    assert_eq!(backend.repo_dir("team/file"), refused(NotServed::Indirect));
    assert_eq!(
        backend.repo_dir("team/pointer"),
        refused(NotServed::Indirect)
    );
    assert_eq!(
        backend.repo_dir("team/worktree"),
        refused(NotServed::Indirect)
    );
    assert_eq!(backend.repo_dir("team/link"), refused(NotServed::Indirect));
    assert_eq!(backend.repo_dir("team/out/x"), refused(NotServed::Indirect));
    assert_eq!(
        backend.repo_dir("linked/secret"),
        refused(NotServed::Indirect)
    );
    assert_eq!(
        backend.repo_dir("team/site/evil"),
        refused(NotServed::Nested)
    );
    assert_eq!(
        backend.repo_dir("team/app.git/inner"),
        refused(NotServed::Nested)
    );
    bare("team/worktree/y.git");
    assert_eq!(
        backend.repo_dir("team/worktree/y"),
        refused(NotServed::Nested)
    );
    // Below a repository where nothing is (a typo): not there, not a nested repository.
    assert_eq!(
        backend.repo_dir("team/worktree/x"),
        refused(NotServed::Missing)
    );
    assert_eq!(
        backend.repo_dir("team/app.git/typo"),
        refused(NotServed::Missing)
    );
    // A bare repository's own folders are no repository git could serve: not there either.
    for inside in ["objects", "refs", "info", "hooks"] {
        std::fs::create_dir_all(root.path().join("team/app.git").join(inside)).unwrap();
        assert_eq!(
            backend.repo_dir(&format!("team/app.git/{inside}")),
            refused(NotServed::Missing),
            "{inside}"
        );
    }
    // ... but a file there is what git would read as a gitfile: still refused as nested.
    std::fs::write(
        root.path().join("team/app.git/gitfile"),
        "gitdir: /elsewhere\n",
    )
    .unwrap();
    assert_eq!(
        backend.repo_dir("team/app.git/gitfile"),
        refused(NotServed::Nested)
    );
    // A HEAD that is a link into refs/ (core.preferSymlinkRefs; its ref packed) is a HEAD.
    bare("team/symhead.git");
    std::fs::remove_file(root.path().join("team/symhead.git/HEAD")).unwrap();
    std::os::unix::fs::symlink("refs/heads/main", root.path().join("team/symhead.git/HEAD"))
        .unwrap();
    assert_eq!(backend.repo_dir("team/symhead"), RepoDir::WithGit);
    // A stray file beside a repository: git, given the repository's name, never looks at it.
    bare("team/withfile.git");
    std::fs::write(root.path().join("team/withfile"), "").unwrap();
    assert_eq!(backend.repo_dir("team/withfile"), RepoDir::WithGit);
    // The project root itself may be reached through a link.
    let through = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root.path(), through.path().join("root")).unwrap();
    let backend = CgiBackend::new("/bin/false".into(), through.path().join("root"));
    assert_eq!(backend.repo_dir("team/app"), RepoDir::WithGit);
    // With the project root gone (storage not mounted), no repository is "not found".
    let gone = CgiBackend::new("/bin/false".into(), through.path().join("unmounted"));
    assert_eq!(
        gone.repo_dir("team/app"),
        refused(NotServed::RootUnavailable)
    );
}
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command as StdCommand;

use http_body_util::{Empty, Full};

// ---- real processes --------------------------------------------------------------------

fn http_backend() -> PathBuf {
    let exec_path = StdCommand::new("git").arg("--exec-path").output().ok();
    let from_git = exec_path
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("git-http-backend"));
    match from_git {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("/usr/lib/git-core/git-http-backend"),
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = StdCommand::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(["-c", "init.defaultBranch=main"])
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `<tmp>/root/team/app.git`, a bare repository with one commit on `main`.
fn repo() -> (tempfile::TempDir, CgiBackend) {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("README"), "hello\n").unwrap();
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("team")).unwrap();
    git(
        tmp.path(),
        &["clone", "-q", "--bare", "work", "root/team/app.git"],
    );
    let backend = CgiBackend::new(http_backend(), root);
    (tmp, backend)
}

/// A CGI program written as a shell script.
fn script(dir: &Path, name: &str, body: &str) -> CgiBackend {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    CgiBackend::new(path, dir.to_owned())
}

/// A push's POST (`git-receive-pack` for team/app) with `headers`.
fn push_request(headers: &HeaderMap) -> CgiRequest<'_> {
    request(
        &Method::POST,
        "/team/app.git/git-receive-pack",
        None,
        headers,
    )
}

fn request<'a>(
    method: &'a Method,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
) -> CgiRequest<'a> {
    CgiRequest {
        method,
        path_info: path,
        query,
        headers,
        remote_user: "alice",
        token_id: "abcdefghijkl",
        remote_addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        request_id: crate::request_id::RequestId::next(),
        still_allowed: None,
    }
}

/// `serve`, retrying while the kernel still sees the freshly written script as open for
/// writing (ETXTBSY: another test thread forked while we held it open).
async fn serve<B, F>(
    backend: &CgiBackend,
    req: CgiRequest<'_>,
    mut body: F,
) -> Result<Response<CgiBody>, CgiError>
where
    F: FnMut() -> B,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: fmt::Display + Send,
{
    for _ in 0..50 {
        match backend.serve(req, body()).await {
            Err(CgiError::Spawn(e)) if e.raw_os_error() == Some(26) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return other,
        }
    }
    panic!("script stayed busy");
}

async fn body_bytes(body: CgiBody) -> Bytes {
    body.collect().await.expect("clean body").to_bytes()
}

fn empty() -> Empty<Bytes> {
    Empty::new()
}

/// A request body whose frames come from a channel, as they arrive.
struct Trickle(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for Trickle {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A one-byte request body frame every 100 ms for 1.5 s: an upload that keeps moving. Its
/// writer's task gives when the body was made and when it handed over each frame, or found the
/// body gone (it then stops): what pace the test's own task kept, whatever gitgate did.
fn trickle() -> (Trickle, tokio::task::JoinHandle<Vec<std::time::Instant>>) {
    let made = std::time::Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let writer = tokio::spawn(async move {
        let mut written = vec![made];
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let sent = tx.send(Bytes::from_static(b"p")).await;
            written.push(std::time::Instant::now());
            if sent.is_err() {
                break;
            }
        }
        written
    });
    (Trickle(rx), writer)
}

#[tokio::test]
async fn a_body_of_declared_length_ends_with_its_last_byte() {
    // The backend keeps stdout open after its declared five bytes (and would send more).
    let dir = tempfile::tempdir().unwrap();
    let backend = script(
        dir.path(),
        "sized",
        "printf 'Content-Type: text/plain\\r\\nContent-Length: 5\\r\\n\\r\\nhello, and more'; exec sleep 5",
    );
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/team/app.git/HEAD", None, &headers);
    let resp = serve(&backend, req, empty).await.unwrap();
    let started = std::time::Instant::now();
    let body = resp.into_body();
    let bytes = tokio::time::timeout(Duration::from_secs(3), body_bytes(body))
        .await
        .expect("the body waited for the backend's exit, past its declared length");
    assert_eq!(&bytes[..], b"hello");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// An answer whose head declares `Content-Length: 0` is complete as its head comes: its body is
/// at its end before it is read, and the backend is left to exit by itself, not ended when the
/// body is dropped unread (as hyper does with the answer to a `HEAD`).
#[tokio::test]
async fn an_answer_declared_empty_is_complete_with_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let backend = script(
        dir.path(),
        "empty.cgi",
        &format!(
            "printf 'Content-Type: text/plain\\r\\nContent-Length: 0\\r\\n\\r\\n'; sleep 0.3; \
             touch '{}'",
            done.display()
        ),
    );
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/team/app.git/HEAD", None, &headers);
    let body = serve(&backend, req, empty).await.unwrap().into_body();
    assert!(body.is_end_stream());
    drop(body);
    assert_eq!(backend.wait_until_reaped().await, 0);
    assert!(done.exists(), "the backend was ended");
}

#[test]
fn running_out_of_processes_or_files_is_an_overload_not_a_failure() {
    // EAGAIN, ENOMEM (a memory limit reached), ENFILE, EMFILE.
    for errno in [11, 12, 23, 24] {
        assert!(CgiError::Spawn(io::Error::from_raw_os_error(errno)).is_overload());
    }
    assert!(!CgiError::Spawn(io::Error::from_raw_os_error(2)).is_overload());
    assert!(!CgiError::TimedOut(Duration::from_secs(1)).is_overload());
    // git http-backend started, and could not start upload-pack: the same shortage.
    assert!(CgiError::Exited(
        "exit status: 1; last stderr line: \"error: cannot fork() for upload-pack: Resource \
         temporarily unavailable\""
            .into()
    )
    .is_overload());
    assert!(!CgiError::Exited("exit status: 1; nothing on stderr".into()).is_overload());
}

/// Each shortage names the limit that gave its error, for the operator to raise: `ENOMEM` at a
/// process's start is the address space's limit (`LimitAS`, `ulimit -v`), not a cgroup's
/// `MemoryMax`, which refuses no process (the words said `MemoryMax` before); git's own
/// `cannot fork()` is read by the C library's words for the error.
#[test]
fn a_shortage_names_the_limit_to_raise() {
    let spawn = |errno| CgiError::Spawn(io::Error::from_raw_os_error(errno)).shortage();
    let memory = spawn(12);
    assert!(
        memory.starts_with("memory (") && memory.contains("LimitAS"),
        "{memory}"
    );
    assert!(memory.contains("ulimit -v"), "{memory}");
    assert!(spawn(11).starts_with("processes (") && spawn(11).contains("TasksMax"));
    assert!(spawn(24).contains("LimitNOFILE"));
    assert!(spawn(23).contains("fs.file-max"));
    let git = |words: &str| {
        CgiError::Exited(format!(
            "exit status: 1; last stderr line: \"error: cannot fork() for upload-pack: {words}\""
        ))
        .shortage()
    };
    assert_eq!(git("Cannot allocate memory"), memory);
    assert_eq!(git("Resource temporarily unavailable"), spawn(11));
    assert_eq!(git("Too many open files"), spawn(24));
    assert_eq!(git("Too many open files in system"), spawn(23));
    for errno in [11, 12, 23, 24] {
        assert!(!spawn(errno).contains("MemoryMax"), "{}", spawn(errno));
    }
}

/// What the gate answers when the runner asks again (`CgiRequest::still_allowed`).
struct Answers {
    allowed: bool,
    asked: std::sync::atomic::AtomicUsize,
}

impl StillAllowed for Answers {
    fn ask(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { self.allowed })
    }
}

/// The host out of processes: the start is tried again after a pause, and the request, let in
/// before that pause, is asked again first. A token revoked during it stops the request with
/// no backend started; one still allowed gets its backend.
#[tokio::test]
async fn a_request_that_waited_for_the_host_to_have_processes_is_asked_again_before_its_start() {
    fn out_of_processes<T>() -> Result<T, CgiError> {
        Err(CgiError::Spawn(io::Error::from_raw_os_error(11)))
    }
    for allowed in [false, true] {
        let answers = Answers {
            allowed,
            asked: Default::default(),
        };
        let mut tries = 0;
        let started = with_patience(
            Patience::new(Duration::from_secs(5)),
            Some(&answers),
            || {
                tries += 1;
                if tries < 3 {
                    out_of_processes()
                } else {
                    Ok("started")
                }
            },
        )
        .await;
        if allowed {
            assert_eq!(started.unwrap(), "started");
            assert_eq!((tries, answers.asked.into_inner()), (3, 2));
        } else {
            assert!(
                matches!(started, Err(CgiError::NoLongerAllowed)),
                "{started:?}"
            );
            assert_eq!(
                (tries, answers.asked.into_inner()),
                (1, 1),
                "no second start"
            );
        }
    }
    // Not asked (a request the gate does not ask again): tried again as before.
    let mut tries = 0;
    let started = with_patience(Patience::new(Duration::from_secs(5)), None, || {
        tries += 1;
        if tries < 2 {
            out_of_processes()
        } else {
            Ok(())
        }
    })
    .await;
    assert!(started.is_ok() && tries == 2);
    // Out of patience: the overload itself is the answer, and nothing is asked.
    let answers = Answers {
        allowed: true,
        asked: Default::default(),
    };
    let started = with_patience(
        Patience::new(Duration::ZERO),
        Some(&answers),
        out_of_processes::<()>,
    )
    .await;
    assert!(matches!(&started, Err(e) if e.is_overload()), "{started:?}");
    assert_eq!(answers.asked.into_inner(), 0);
}

#[tokio::test]
async fn a_backend_that_sends_no_headers_in_time_is_ended_with_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let backend =
        script(dir.path(), "hang", "exec sleep 60").with_head_timeout(Duration::from_millis(500));
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/team/app.git/info/refs", None, &headers);
    let started = std::time::Instant::now();
    let e = serve(&backend, req, empty).await.unwrap_err();
    assert!(matches!(e, CgiError::TimedOut(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        backend.wait_until_reaped().await,
        0,
        "the backend was not ended"
    );
}

/// While the body trickles in for three times the timeout, a backend says nothing: before its
/// headers (a CGI program may read the whole body first), or after them (git http-backend's way
/// with a push: headers first, then nothing until the pack is read).
///
/// The 100 ms between frames are this test's own task's sleeps, 400 ms short of the 500 ms
/// timeout: a test process held longer (a loaded machine) leaves the upload still for the
/// timeout, and gitgate is right to end the backend there. Such a try shows nothing, and is made
/// again (three times at most); the frames' real times are measured, and say so. A backend ended
/// while the frames kept well within the timeout fails at once.
#[tokio::test]
async fn a_backend_reading_an_upload_that_moves_is_not_timed_out() {
    let timeout = Duration::from_millis(500);
    for (name, reads) in [
        (
            "reader",
            "cat >/dev/null; printf 'Content-Type: text/plain\\r\\n\\r\\nread'",
        ),
        (
            "headers-first",
            "printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat >/dev/null; printf 'read'",
        ),
    ] {
        let mut late = Vec::new();
        loop {
            let dir = tempfile::tempdir().unwrap();
            let backend = script(dir.path(), name, reads).with_head_timeout(timeout);
            let headers = HeaderMap::new();
            let req = push_request(&headers);
            // The last body made is the one served (`serve` makes one per start).
            let mut writer = None;
            let answer = match serve(&backend, req, || {
                let (body, written) = trickle();
                writer = Some(written);
                body
            })
            .await
            {
                Ok(resp) => match resp.into_body().collect().await {
                    Ok(body) => Ok(body.to_bytes()),
                    Err(e) => Err(format!("the answer broke off: {e}")),
                },
                Err(e) => Err(format!("no answer: {e}")),
            };
            if matches!(&answer, Ok(read) if &read[..] == b"read") {
                break;
            }
            let written = tokio::time::timeout(Duration::from_secs(10), writer.unwrap())
                .await
                .expect("the test's upload ended")
                .unwrap();
            let widest = written
                .windows(2)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default();
            // A gap within 50 ms of the timeout is taken for it: a frame's time is taken as it
            // is handed over, a moment before gitgate takes it, and gitgate counts whole ms.
            assert!(
                widest >= timeout - Duration::from_millis(50),
                "{name}: {answer:?}, though the frames came {widest:?} apart at most"
            );
            late.push(format!(
                "{answer:?}, {} frames offered {widest:?} apart at most",
                written.len() - 1
            ));
            assert!(
                late.len() < 3,
                "{name}: the test's upload did not keep its pace in any try: {late:?}"
            );
        }
    }
}

#[tokio::test]
async fn info_refs_v0() {
    let (_tmp, backend) = repo();
    let headers = HeaderMap::new();
    let req = request(
        &Method::GET,
        "/team/app.git/info/refs",
        Some("service=git-upload-pack"),
        &headers,
    );
    let resp = serve(&backend, req, empty).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "application/x-git-upload-pack-advertisement"
    );
    let body = body_bytes(resp.into_body()).await;
    assert!(
        body.starts_with(b"001e# service=git-upload-pack\n"),
        "{body:?}"
    );
    assert!(body.windows(15).any(|w| w == b"refs/heads/main"));
}

#[tokio::test]
async fn info_refs_v2() {
    let (_tmp, backend) = repo();
    let mut headers = HeaderMap::new();
    headers.insert("git-protocol", HeaderValue::from_static("version=2"));
    let req = request(
        &Method::GET,
        "/team/app.git/info/refs",
        Some("service=git-upload-pack"),
        &headers,
    );
    let resp = serve(&backend, req, empty).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = body_bytes(resp.into_body()).await;
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("version 2\n"), "{text}");
    assert!(text.contains("ls-refs"), "{text}");
    assert!(text.contains("fetch"), "{text}");
}

#[tokio::test]
async fn missing_repo_is_404() {
    let (_tmp, backend) = repo();
    let headers = HeaderMap::new();
    let req = request(
        &Method::GET,
        "/team/nope.git/info/refs",
        Some("service=git-upload-pack"),
        &headers,
    );
    let resp = serve(&backend, req, empty).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    body_bytes(resp.into_body()).await;
}

#[tokio::test]
async fn upload_pack_v2_ls_refs() {
    let (_tmp, backend) = repo();
    let pkt = b"0014command=ls-refs\n0001000bsymrefs0000".as_slice();
    let mut headers = HeaderMap::new();
    headers.insert("git-protocol", HeaderValue::from_static("version=2"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-git-upload-pack-request"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(pkt.len()));
    let req = request(
        &Method::POST,
        "/team/app.git/git-upload-pack",
        None,
        &headers,
    );
    let resp = serve(&backend, req, || Full::new(Bytes::from_static(pkt)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "application/x-git-upload-pack-result"
    );
    let body = body_bytes(resp.into_body()).await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains(" HEAD symref-target:refs/heads/main\n"),
        "{text}"
    );
    assert!(text.contains(" refs/heads/main\n"), "{text}");
    assert!(text.ends_with("0000"), "{text}");
}

#[tokio::test]
async fn client_headers_do_not_reach_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "env.cgi",
        "printf 'Content-Type: text/plain\\r\\n\\r\\n'; env",
    );
    let mut headers = HeaderMap::new();
    headers.insert("proxy", HeaderValue::from_static("http://evil"));
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic c2VjcmV0"),
    );
    headers.insert("git-protocol", HeaderValue::from_static("version=2;evil"));
    headers.insert("x-request-id", HeaderValue::from_static("clients-own-id"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    let req = push_request(&headers);
    let id = req.request_id;
    let resp = serve(&backend, req, empty).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let env = String::from_utf8(body_bytes(resp.into_body()).await.to_vec()).unwrap();
    let vars: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    assert!(!vars.contains(&"HTTP_PROXY"), "{env}");
    assert!(!vars.contains(&"HTTP_AUTHORIZATION"), "{env}");
    assert!(!vars.contains(&"GIT_PROTOCOL"), "{env}");
    // The one `HTTP_` variable is gitgate's own id for the request, never the client's.
    let http: Vec<&str> = env.lines().filter(|l| l.starts_with("HTTP_")).collect();
    assert_eq!(http, [format!("HTTP_X_REQUEST_ID={id}")], "{env}");
    assert!(!env.contains("c2VjcmV0"), "{env}");
    assert!(env.lines().any(|l| l == "REMOTE_USER=alice"), "{env}");
    assert!(env.lines().any(|l| l == "REMOTE_ADDR=192.0.2.7"), "{env}");
    // A push is not told its length (see `cgi_env`).
    assert!(!vars.contains(&"CONTENT_LENGTH"), "{env}");
    assert!(env.lines().any(|l| l == "REQUEST_METHOD=POST"), "{env}");
    assert!(env.lines().any(|l| l == "GIT_HTTP_EXPORT_ALL=1"), "{env}");
    // cargo sets this for the test process; env_clear keeps it from the child.
    if std::env::var_os("CARGO_MANIFEST_DIR").is_some() {
        assert!(!vars.contains(&"CARGO_MANIFEST_DIR"), "{env}");
    }
}

/// The backend runs in `/`, not in gitgate's working directory, and is given `[upstream]
/// max_request_buffer_mib` as git reads it: in MiB (`16m`), not as a number of bytes.
#[tokio::test]
async fn the_backend_runs_in_the_root_folder_with_its_request_buffer_in_mib() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "where.cgi",
        "printf 'Content-Type: text/plain\\r\\n\\r\\n'; pwd; echo \"$GIT_HTTP_MAX_REQUEST_BUFFER\"",
    )
    .with_max_request_buffer(Some(16));
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let resp = serve(&backend, req, empty).await.unwrap();
    assert_eq!(&body_bytes(resp.into_body()).await[..], b"/\n16m\n");
}

#[tokio::test]
async fn exit_before_headers_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "fail.cgi",
        "echo 'first' >&2; echo 'fatal: it broke' >&2; exit 1",
    );
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    match serve(&backend, req, empty).await {
        Err(CgiError::Exited(why)) => {
            assert!(why.contains("exit status: 1"), "{why}");
            assert!(why.contains("fatal: it broke"), "{why}");
        }
        other => panic!("expected Exited, got {other:?}"),
    }
}

/// git http-backend that could not start upload-pack says so in its first `error:` and goes on
/// to a `fatal:` line: its end before its head is still a shortage of processes (a `503` to
/// retry), not a broken backend, whatever it wrote last.
#[tokio::test]
async fn a_backend_that_could_not_fork_is_an_overload_whatever_it_said_last() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "nofork.cgi",
        "echo 'error: cannot fork() for upload-pack: Resource temporarily unavailable' >&2; \
         echo 'fatal: unable to run upload-pack' >&2; exit 128",
    );
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let e = serve(&backend, req, empty).await.unwrap_err();
    assert!(matches!(e, CgiError::Exited(_)), "{e}");
    assert!(e.is_overload(), "{e}");
}

#[tokio::test]
async fn garbage_output_is_bad_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "garbage.cgi",
        "echo 'not a header'; echo; echo body",
    );
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let err = serve(&backend, req, empty).await.unwrap_err();
    assert!(matches!(err, CgiError::BadHeaders(_)), "{err}");

    let backend = script(tmp.path(), "endless.cgi", "exec yes X-Header: y");
    let err = serve(&backend, req, empty).await.unwrap_err();
    assert!(matches!(err, CgiError::BadHeaders(_)), "{err}");
}

/// The body's frames up to its error (which it must end with) and the error.
async fn body_until_error(mut body: CgiBody) -> (Vec<u8>, io::Error) {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the body moved on within 10 s")
        {
            Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap()),
            Some(Err(e)) => return (got, e),
            None => panic!(
                "the body ended cleanly after {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

#[tokio::test]
async fn the_request_body_reaches_the_backend_while_it_is_still_coming() {
    // A pack is streamed, never gathered first: the backend has the first bytes while the
    // client has not finished sending.
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("got");
    let backend = script(
        dir.path(),
        "first-bytes",
        &format!(
            "printf 'Content-Type: text/plain\\r\\n\\r\\n'; head -c 5 > {got}.part && mv {got}.part {got}; \
             printf 'ok'; cat >/dev/null",
            got = got.display()
        ),
    );
    let headers = HeaderMap::new();
    let req = push_request(&headers);
    let sender = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = sender.clone();
    let serving = serve(&backend, req, move || {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        *slot.lock().unwrap() = Some(tx);
        Trickle(rx)
    });
    // The client sends its first bytes while `serve` waits (the head is held until the body
    // is fed, or until the backend says more than its head, as this one does once it has them).
    let client = async {
        let tx = loop {
            let tx = sender.lock().unwrap().take();
            match tx {
                Some(tx) if tx.send(Bytes::from_static(b"hello")).await.is_ok() => break tx,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        assert!(
            eventually(|| std::fs::read(&got).is_ok_and(|b| b == b"hello")).await,
            "the first bytes did not reach the backend before the body's end"
        );
        drop(tx);
    };
    let (resp, ()) = tokio::join!(serving, client);
    let resp = resp.unwrap();
    assert_eq!(&body_bytes(resp.into_body()).await[..], b"ok");
}

/// Output short of its declared length ends with an error, one byte short included: the
/// client would take the answer for a whole one were the body to end cleanly.
#[tokio::test]
async fn output_short_of_its_declared_length_ends_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    for (declared, short) in [(10, 7), (4, 1)] {
        let backend = script(
            tmp.path(),
            &format!("short{declared}.cgi"),
            &format!(
                "printf 'Content-Type: text/plain\\r\\nContent-Length: {declared}\\r\\n\\r\\nabc'; exit 0"
            ),
        );
        let headers = HeaderMap::new();
        let req = request(&Method::GET, "/x", None, &headers);
        let body = serve(&backend, req, empty).await.unwrap().into_body();
        let (got, e) = body_until_error(body).await;
        assert_eq!(got, b"abc");
        assert!(
            e.to_string().contains(&format!("{short} bytes short")),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_backend_silent_after_its_headers_is_ended_with_a_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "stall.cgi",
        "printf 'Content-Type: text/plain\\r\\n\\r\\nstart'; exec sleep 60",
    )
    .with_head_timeout(Duration::from_millis(500));
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let body = serve(&backend, req, empty).await.unwrap().into_body();
    let (got, e) = body_until_error(body).await;
    assert_eq!(got, b"start");
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    assert!(e.to_string().contains("sent nothing"), "{e}");
    assert_eq!(
        backend.wait_until_reaped().await,
        0,
        "the backend was not ended"
    );
}

/// A backend that answered its headers and waits for an upload the client stopped sending:
/// the same timeout, but the error says it is the client's ([`UploadStalled`]); a backend that
/// has the whole upload and goes silent is still the backend's.
#[tokio::test]
async fn a_silence_waiting_for_the_clients_upload_is_the_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "reads.cgi",
        "printf 'Content-Type: text/plain\\r\\n\\r\\nstart'; cat > /dev/null; echo done",
    )
    .with_head_timeout(Duration::from_millis(500));
    let headers = HeaderMap::new();
    let req = request(&Method::POST, "/x", None, &headers);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut rx = Some(rx);
    let body = serve(&backend, req, || Trickle(rx.take().unwrap()))
        .await
        .unwrap()
        .into_body();
    tx.send(Bytes::from_static(b"some of it")).await.unwrap();
    let (got, e) = body_until_error(body).await;
    assert_eq!(got, b"start");
    assert!(UploadStalled::is(&e), "{e}");
    assert!(
        e.to_string().contains("the request body stopped arriving"),
        "{e}"
    );
    drop(tx);

    let silent = script(
        tmp.path(),
        "silent.cgi",
        "cat > /dev/null; printf 'Content-Type: text/plain\\r\\n\\r\\nstart'; exec sleep 60",
    )
    .with_head_timeout(Duration::from_millis(500));
    let req = request(&Method::POST, "/x", None, &headers);
    let body = serve(&silent, req, empty).await.unwrap().into_body();
    let (_, e) = body_until_error(body).await;
    assert!(!UploadStalled::is(&e), "{e}");
    assert!(e.to_string().contains("sent nothing"), "{e}");
}

/// A backend that writes its head and then reads the request body (as git http-backend does a
/// push) has that head held until the body is fed; a body that breaks off or stops coming
/// meanwhile is an error of `serve`, the client's, not the backend's `200` with a broken body.
#[tokio::test]
async fn a_request_body_that_fails_while_the_head_is_held_is_the_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "head-then-read.cgi",
        "printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat > /dev/null; printf done",
    )
    .with_head_timeout(Duration::from_millis(500));
    let headers = HeaderMap::new();
    let path = "/team/app.git/git-receive-pack";

    let req = request(&Method::POST, path, None, &headers);
    let broken = || Generated {
        remaining: 3 << 20,
        fail_at_end: true,
    };
    let e = serve(&backend, req, broken).await.unwrap_err();
    assert!(matches!(e, CgiError::RequestBroke), "{e}");

    let req = request(&Method::POST, path, None, &headers);
    let started = std::time::Instant::now();
    let e = serve(&backend, req, || Stalled(Arc::new(())))
        .await
        .unwrap_err();
    assert!(matches!(e, CgiError::UploadStalled(_)), "{e}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        e.to_string().contains("the request body stopped arriving"),
        "{e}"
    );

    // Whole, the same body has the backend's answer, and its head only then.
    let req = request(&Method::POST, path, None, &headers);
    let whole = || Generated {
        remaining: 3 << 20,
        fail_at_end: false,
    };
    let resp = serve(&backend, req, whole).await.unwrap();
    assert_eq!(&body_bytes(resp.into_body()).await[..], b"done");
}

/// A push to `backend` whose client sends `first` and then nothing: how `serve` ended, and
/// the client's side of the body, to send more.
async fn a_push_that_stalls(backend: &CgiBackend) -> (CgiError, tokio::sync::mpsc::Sender<Bytes>) {
    let headers = HeaderMap::new();
    let req = push_request(&headers);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut rx = Some(rx);
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    let e = serve(backend, req, || Trickle(rx.take().unwrap()))
        .await
        .unwrap_err();
    (e, tx)
}

/// A push answered `408` while its head was held gets nothing more of its body: bytes the
/// client sends late never reach receive-pack, which would apply the push after all.
#[tokio::test]
async fn a_body_that_stopped_arriving_is_not_fed_after_its_408() {
    let tmp = tempfile::tempdir().unwrap();
    let got = tmp.path().join("got");
    let backend = script(
        tmp.path(),
        "head-then-read.cgi",
        &format!(
            "printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat > '{}'; sleep 2",
            got.display()
        ),
    )
    .with_head_timeout(Duration::from_millis(500));
    let (e, tx) = a_push_that_stalls(&backend).await;
    assert!(matches!(e, CgiError::UploadStalled(_)), "{e}");
    // Ended by gitgate, not let finish as a push whose client left.
    assert_eq!(backend.running.finishing.load(Ordering::Acquire), 0);
    // The body is let go of: the client's late bytes have nowhere to go.
    let late = tokio::time::timeout(Duration::from_secs(5), async {
        while tx.send(Bytes::from_static(b"late")).await.is_ok() {}
    })
    .await;
    assert!(late.is_ok(), "the body was still read after its 408");
    assert_eq!(backend.wait_until_reaped().await, 0);
    assert_eq!(std::fs::read(&got).unwrap(), b"first");
}

/// A push gitgate ended is waited for until what it said has been read and told (whether its
/// refs were updated all the same), not only until its process is reaped: here something it
/// started in a session of its own holds its output open, and the wait lasts until the drain
/// gives up on it (3 s), long after the push itself exited on its closed input.
#[tokio::test]
async fn the_wait_for_the_backends_waits_until_an_ended_push_is_told() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "holds-stdout.cgi",
        "printf 'Content-Type: text/plain\\r\\n\\r\\n'; setsid sleep 4 2>/dev/null & \
         cat > /dev/null; exit 1",
    )
    .with_head_timeout(Duration::from_millis(500));
    let (e, _tx) = a_push_that_stalls(&backend).await;
    assert!(matches!(e, CgiError::UploadStalled(_)), "{e}");
    let started = std::time::Instant::now();
    assert_eq!(backend.wait_until_reaped().await, 0);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
}

/// A backend that reads the whole body before it writes its head (a CGI other than git
/// http-backend) waits for a client that stopped sending: the client's `408`, not the
/// backend's timeout.
#[tokio::test]
async fn a_backend_reading_first_waits_for_a_stalled_client_which_is_the_clients_408() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "reads-first.cgi",
        "cat > /dev/null; printf 'Content-Type: text/plain\\r\\n\\r\\ndone'",
    )
    .with_head_timeout(Duration::from_millis(500));
    let (e, tx) = a_push_that_stalls(&backend).await;
    assert!(matches!(e, CgiError::UploadStalled(_)), "{e}");
    drop(tx);
}

/// A backend that writes its head and exits without reading a body still coming (an error
/// answered early: a broken repository, pushes not taken over HTTP) has its answer given, not
/// a `400` blaming the client's body.
#[tokio::test]
async fn a_backend_that_answers_and_exits_while_the_body_is_coming_is_the_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "refuses.cgi",
        "printf 'Status: 403 Forbidden\\r\\n\\r\\n'",
    );
    let headers = HeaderMap::new();
    for _ in 0..5 {
        let req = push_request(&headers);
        let resp = serve(&backend, req, || Stalled(Arc::new(())))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
}

/// One that writes its head and dies while the body is still coming (a receive-pack killed
/// mid-push) has failed before any of its answer went out: an error to answer (`502`), not a
/// `200` cut off under a client still uploading.
#[tokio::test]
async fn a_backend_that_dies_after_its_head_while_the_body_is_coming_has_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "dies.cgi",
        "printf 'Status: 200 OK\\r\\nContent-Type: application/x-git-receive-pack-result\\r\\n\\r\\n'; \
         echo 'error: receive-pack died of signal 9' >&2; exit 1",
    );
    let headers = HeaderMap::new();
    let req = push_request(&headers);
    match serve(&backend, req, || Stalled(Arc::new(()))).await {
        Err(e @ CgiError::Failed(_)) => {
            let said = e.to_string();
            assert!(
                said.contains("exit status: 1")
                    && said.contains("before any of its answer went out"),
                "{said}"
            );
        }
        Err(e) => panic!("{e}"),
        Ok(resp) => panic!("answered {}", resp.status()),
    }
}

/// git http-backend refusing a chunked request over its buffer (a fetch naming very many
/// refs) writes its head, `fatal: request was larger than our maximum size ...; try setting
/// GIT_HTTP_MAX_REQUEST_BUFFER` and exits 0, with the request still coming: this server's
/// setting met, naming the setting to raise (`[upstream] max_request_buffer_mib`, since the
/// variable in gitgate's own environment is not passed on), not a backend that failed.
#[tokio::test]
async fn a_request_over_the_request_buffer_names_the_setting_to_raise() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "too-large.cgi",
        "printf 'Status: 200 OK\\r\\nContent-Type: application/x-git-upload-pack-result\\r\\n\\r\\n'; \
         echo 'fatal: request was larger than our maximum size (10485760); try setting \
         GIT_HTTP_MAX_REQUEST_BUFFER' >&2; exit 0",
    );
    let headers = HeaderMap::new();
    let req = request(
        &Method::POST,
        "/team/app.git/git-upload-pack",
        None,
        &headers,
    );
    match serve(&backend, req, || Stalled(Arc::new(()))).await {
        Err(e @ CgiError::TooLarge(_)) => {
            let said = e.to_string();
            assert!(
                said.contains("raise [upstream] max_request_buffer_mib")
                    && said.contains("larger than our maximum size (10485760)"),
                "{said}"
            );
        }
        Err(e) => panic!("{e:?}"),
        Ok(resp) => panic!("answered {}", resp.status()),
    }
}

/// What a `GET /x` to `backend` answered after its headers, read to the end, and how that
/// end came: cleanly, or with the body's error.
async fn body_and_end(backend: &CgiBackend) -> (Vec<u8>, Result<(), std::io::Error>) {
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    body_and_end_of(serve(backend, req, empty).await.unwrap().into_body()).await
}

/// A backend that writes a `200` head of `content_type`, then `answer` (shell text inside
/// `printf '...'`), then `stderr` on its stderr, and exits with `code`.
fn exits_after_headers(
    dir: &Path,
    name: &str,
    content_type: &str,
    answer: &str,
    stderr: &str,
    code: u8,
) -> CgiBackend {
    script(
        dir,
        name,
        &format!(
            "printf 'Status: 200 OK\\r\\nContent-Type: {content_type}\\r\\n\\r\\n{answer}'; \
             echo '{stderr}' >&2; exit {code}"
        ),
    )
}

/// git http-backend's `die` after its headers: `fatal: ...` on stderr, then exit 0 ("having
/// reported the failure"). With no answer after the headers, the body ends with an error; with
/// an answer (a hook's `fatal:` after a push's report), it is the answer.
#[tokio::test]
async fn a_fatal_error_and_exit_0_after_headers_without_an_answer_is_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, answer, fails) in [("silent.cgi", "", true), ("said.cgi", "report", false)] {
        let backend = exits_after_headers(
            tmp.path(),
            name,
            "text/plain",
            answer,
            "fatal: not a git repository",
            0,
        );
        let (got, ended) = body_and_end(&backend).await;
        assert_eq!(got, answer.as_bytes(), "{name}");
        match ended {
            Err(e) => {
                assert!(fails, "{name}: {e}");
                let msg = e.to_string();
                assert!(
                    msg.contains("without an answer") && msg.contains("not a git repository"),
                    "{msg}"
                );
            }
            Ok(()) => assert!(!fails, "{name} ended cleanly"),
        }
    }
}

#[tokio::test]
async fn failure_after_headers_ends_body_with_error() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = exits_after_headers(
        tmp.path(),
        "partial.cgi",
        "text/plain",
        "partial",
        "died",
        3,
    );
    let (got, ended) = body_and_end(&backend).await;
    let err = ended.expect_err("body ended cleanly after exit 3");
    assert_eq!(got, b"partial");
    let msg = err.to_string();
    assert!(
        msg.contains("exit status: 3") && msg.contains("died"),
        "{msg}"
    );
}

/// upload-pack refusing a fetch (`not our ref`): an `ERR` packet, then git http-backend exits
/// 1. The client was told why, so the answer ends cleanly — git then prints that reason alone —
/// where the same exit after anything else (a pack cut off) is still a failure.
#[tokio::test]
async fn an_exit_after_gits_err_packet_ends_the_answer_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let err = "0049ERR upload-pack: not our ref 1111111111111111111111111111111111111111";
    for (name, answer, clean) in [
        ("refused.cgi", err.to_string(), true),
        // Split over two writes, after some output: found in what came last.
        (
            "late.cgi",
            format!("0008NAK\n'; sleep 0.2; printf '{err}"),
            true,
        ),
        ("cut.cgi", format!("{err}PACK"), false),
        ("packet.cgi", "0008NAK\n".to_string(), false),
    ] {
        let backend = exits_after_headers(
            tmp.path(),
            name,
            "application/x-git-upload-pack-result",
            &answer,
            "fatal: git upload-pack: not our ref 1111",
            1,
        );
        let (_, ended) = body_and_end(&backend).await;
        assert_eq!(ended.is_ok(), clean, "{name}: {ended:?}");
    }
}

#[test]
fn an_err_packet_is_found_only_where_it_ends_the_output() {
    use super::body::git_error_at_end;
    let refusal = b"0049ERR upload-pack: not our ref 1111111111111111111111111111111111111111";
    assert_eq!(
        git_error_at_end(refusal).as_deref(),
        Some("upload-pack: not our ref 1111111111111111111111111111111111111111")
    );
    let mut after_output = b"0008NAK\n".to_vec();
    after_output.extend_from_slice(b"0016ERR access denied\n");
    assert_eq!(
        git_error_at_end(&after_output).as_deref(),
        Some("access denied")
    );
    // Followed by more, of another length, or no packet at all: no refusal.
    assert_eq!(git_error_at_end(b"0016ERR access denied\n0000"), None);
    assert_eq!(git_error_at_end(b"0015ERR access denied\n"), None);
    assert_eq!(git_error_at_end(b"PACK\x00\x00\x00\x02"), None);
    assert_eq!(git_error_at_end(b"zzzzERR x"), None);
    assert_eq!(git_error_at_end(b"+008ERR "), None);
    assert_eq!(git_error_at_end(b""), None);
    assert_eq!(git_error_at_end(b"0008ERR "), Some(String::new()));
}

/// A request body of `remaining` bytes in 1 MiB frames, produced on the fly, optionally
/// failing instead of ending.
struct Generated {
    remaining: usize,
    fail_at_end: bool,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = String;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
        if self.remaining == 0 {
            return Poll::Ready(self.fail_at_end.then(|| Err("client went away".to_owned())));
        }
        let n = self.remaining.min(1 << 20);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
    }
}

/// A POST of `len` bytes to `service` (`git-receive-pack` or `git-upload-pack`) of the test
/// repository, answered by `backend`: a push or fetch whose client then stays or leaves.
async fn post(backend: &CgiBackend, service: &str, len: usize) -> Response<CgiBody> {
    let headers = HeaderMap::new();
    let path = format!("/team/app.git/{service}");
    let req = request(&Method::POST, &path, None, &headers);
    let make = || Generated {
        remaining: len,
        fail_at_end: false,
    };
    serve(backend, req, make).await.unwrap()
}

#[tokio::test]
async fn large_body_streams_through() {
    const SIZE: usize = 50 * 1000 * 1000 + 7;
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "echo.cgi",
        "printf 'Content-Type: application/octet-stream\\r\\n\\r\\n'; exec cat",
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    let req = request(&Method::POST, "/x", None, &headers);
    let make = || Generated {
        remaining: SIZE,
        fail_at_end: false,
    };
    let mut body = serve(&backend, req, make).await.unwrap().into_body();
    let (mut total, mut biggest) = (0, 0);
    while let Some(frame) = body.frame().await {
        let data = frame.expect("clean body").into_data().unwrap();
        assert!(data.iter().all(|&b| b == b'x'));
        total += data.len();
        biggest = biggest.max(data.len());
    }
    assert_eq!(total, SIZE);
    assert!(biggest <= BODY_CHUNK);
    assert!(body.is_end_stream());
}

#[tokio::test]
async fn broken_request_body_kills_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let applied = tmp.path().join("applied");
    // Would succeed (exit 0) once stdin ends cleanly; must not get the chance.
    let backend = script(
        tmp.path(),
        "push.cgi",
        &format!(
            "printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat >/dev/null; sleep 1; \
             echo applied > '{}'",
            applied.display()
        ),
    );
    let headers = HeaderMap::new();
    let req = request(&Method::POST, "/x", None, &headers);
    let make = || Generated {
        remaining: 3 << 20,
        fail_at_end: true,
    };
    // Its head was held for the body, which broke: no answer of the backend's goes out.
    let e = serve(&backend, req, make).await.unwrap_err();
    assert!(matches!(e, CgiError::RequestBroke), "{e}");
    assert_eq!(backend.wait_until_reaped().await, 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !applied.exists(),
        "the backend went on to apply a broken body"
    );
}

#[tokio::test]
async fn pushes_finishing_alone_are_capped_and_ended_when_gitgate_stops() {
    let tmp = tempfile::tempdir().unwrap();
    // A push that reads its pack, then reports progress for a long time (a slow hook).
    let backend = script(
        tmp.path(),
        "slow-push.cgi",
        &format!(
            "echo $$ > '{0}/started.'$$; printf 'Content-Type: text/plain\\r\\n\\r\\n'; \
             cat >/dev/null; echo $$ > '{0}/pid.'$$; \
             i=0; while [ $i -lt 300 ]; do echo progress; sleep 0.1; i=$((i+1)); done",
            tmp.path().display()
        ),
    );
    // The backends that have their pack (`pid.*`), or have started at all (`started.*`,
    // written before the response's head, so there once `serve` has returned).
    let noted = |dir: &Path, prefix: &str| -> Vec<u32> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
            .collect()
    };
    let pids = |dir: &Path| noted(dir, "pid.");
    let alive_started = |dir: &Path| {
        noted(dir, "started.")
            .into_iter()
            .filter(|&p| running(p))
            .count()
    };
    // As many as may finish alone, each left by its client once it has its pack ...
    for n in 1..=MAX_FINISHING {
        let response = post(&backend, "git-receive-pack", 10).await;
        eventually(|| pids(tmp.path()).len() == n).await;
        assert_eq!(pids(tmp.path()).len(), n);
        drop(response);
    }
    // ... and one more, which is ended; the others go on.
    drop(post(&backend, "git-receive-pack", 10).await);
    assert_eq!(noted(tmp.path(), "started.").len(), MAX_FINISHING + 1);
    eventually(|| alive_started(tmp.path()) == MAX_FINISHING).await;
    assert_eq!(alive_started(tmp.path()), MAX_FINISHING);
    assert_eq!(
        backend.running.finishing.load(Ordering::Acquire),
        MAX_FINISHING
    );
    // gitgate stops: they are ended, reaped, and their places given back.
    backend.stop_finishing();
    assert_eq!(backend.wait_until_reaped().await, 0);
    assert!(pids(tmp.path()).into_iter().all(|p| !running(p)));
    tokio::time::timeout(Duration::from_secs(5), backend.pushes_finished())
        .await
        .expect("no push left finishing");
    // And from now on a push whose client leaves is ended at once.
    drop(post(&backend, "git-receive-pack", 10).await);
    assert_eq!(backend.wait_until_reaped().await, 0);
}

#[tokio::test]
async fn a_background_job_holding_stderr_does_not_hold_back_a_finished_answer() {
    let tmp = tempfile::tempdir().unwrap();
    // A hook's background job, started without redirecting stderr.
    let backend = script(
        tmp.path(),
        "hook.cgi",
        "printf 'Content-Type: text/plain\\r\\n\\r\\nok'; sleep 3 >/dev/null </dev/null & exit 0",
    );
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let body = serve(&backend, req, Empty::<Bytes>::new)
        .await
        .unwrap()
        .into_body();
    // From the headers to the body's end: the backend has exited by then, and the answer
    // waited a second more for the job's stderr to close.
    let started = std::time::Instant::now();
    assert_eq!(body_bytes(body).await, "ok");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(800), "{took:?}");
}

#[tokio::test]
async fn a_push_whose_client_left_is_let_finish_and_a_silent_one_is_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let done = tmp.path().join("post-receive-ran");
    // receive-pack's shape: headers at once, the pack read to its end, then the refs and
    // the post-receive hook, writing progress as it goes.
    let backend = script(
        tmp.path(),
        "push.cgi",
        &format!(
            "printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat >/dev/null; echo unpacked; \
             sleep 1; echo hook; touch '{}'",
            done.display()
        ),
    );
    drop(post(&backend, "git-receive-pack", 1000).await); // the client left
    assert!(
        eventually(|| done.exists()).await,
        "the push was killed before its hook ran"
    );

    // Not for a fetch: its backend goes with its client.
    let fetched = tmp.path().join("fetch-finished");
    let fetch_pid = tmp.path().join("fetch-pid");
    let backend = script(
        tmp.path(),
        "fetch.cgi",
        &format!(
            "echo $$ > '{}'; printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat >/dev/null; \
             sleep 1; touch '{}'",
            fetch_pid.display(),
            fetched.display()
        ),
    );
    drop(post(&backend, "git-upload-pack", 1000).await);
    // Ended, or (were it left alone) finished: either way it stops running; then its
    // last step tells which.
    let pid = pid_in(&fetch_pid).await;
    eventually(|| !running(pid)).await;
    assert!(!running(pid));
    assert!(!fetched.exists(), "the fetch's backend was left to finish");

    // A push left alone that writes nothing for the idle timeout is ended.
    let pid_file = tmp.path().join("pid");
    let backend = script(
        tmp.path(),
        "stuck.cgi",
        &format!(
            "printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat >/dev/null; echo $$ > '{}'; exec sleep 60",
            pid_file.display()
        ),
    )
    .with_head_timeout(Duration::from_millis(500));
    drop(post(&backend, "git-receive-pack", 1000).await);
    let pid = pid_in(&pid_file).await;
    assert!(
        eventually(|| !running(pid)).await,
        "a silent push whose client left must be ended"
    );
}

/// Whether process `pid` still runs (a zombie has stopped running).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

/// A client that leaves once receive-pack's report has reached it, while a hook still runs
/// (Ctrl-C during a slow post-receive): the log says what the push did, from the report the
/// client was sent, not "no report".
#[test]
fn a_push_whose_client_left_after_the_report_is_logged_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let done = tmp.path().join("hook-ran");
    let backend = script(
        tmp.path(),
        "push.cgi",
        &format!(
            "printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat >/dev/null; \
             printf '000eunpack ok\\n0017ok refs/heads/main\\n0018ok refs/heads/topic\\n'; \
             printf '0045ng refs/heads/evil\\033[2K\\r2026 INFO forged user=admin funny refname\\n'; \
             sleep 1; touch '{}'",
            done.display()
        ),
    );
    let log = crate::store::test_support::logged(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut body = post(&backend, "git-receive-pack", 1000).await.into_body();
            let mut said = Vec::new();
            while !said.ends_with(b"funny refname\n") {
                let frame = body.frame().await.expect("the report").unwrap();
                said.extend_from_slice(frame.data_ref().unwrap());
            }
            drop(body); // the client left, the hook still running
            assert!(eventually(|| done.exists()).await, "the push was ended");
            // Its exit, then the line.
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
    });
    assert!(
        log.contains("a push whose client left has finished")
            && log.contains(
                "outcome=\"unpack ok, 2 ref(s) updated, 1 refused: refs/heads/evil\\u001b[2K\\r2026 \
                 INFO forged user=admin funny refname\""
            ),
        "{log}"
    );
    // The client's ref name cannot forge a line: no raw control character reached the log.
    assert!(!log.contains(['\u{1b}', '\r']), "{log:?}");
}

/// Whether `done` holds within 5 s (polled every 20 ms).
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// The pid a script wrote to `file`, once it is there.
async fn pid_in(file: &Path) -> u32 {
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no pid in {}", file.display());
}

#[tokio::test]
async fn a_backend_killed_by_a_signal_leaves_nothing_it_started_running() {
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("helper.pid");
    // Starts a helper (as http-backend starts upload-pack), then dies of SIGKILL (as under
    // the OOM killer).
    let backend = script(
        tmp.path(),
        "dies.cgi",
        &format!(
            "sleep 30 & echo $! >'{}'; printf 'Content-Type: text/plain\\r\\n\\r\\n'; kill -9 $$",
            pidfile.display()
        ),
    );
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    // The helper holds the backend's stdout: the answer ends only when it is gone.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        if let Ok(resp) = serve(&backend, req, empty).await {
            assert!(resp.into_body().collect().await.is_err());
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the answer waited for the dead backend's helper"
    );
    let helper = pid_in(&pidfile).await;
    // It closed its stdout as it died; its end may take a moment more to show.
    for _ in 0..50 {
        if !running(helper) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the dead backend's helper {helper} is still running");
}

#[tokio::test]
async fn a_helper_that_ignores_sigterm_is_killed_when_the_backend_is_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("helper.pid");
    // The backend exits at SIGTERM at once; its helper ignores SIGTERM.
    let backend = script(
        tmp.path(),
        "stubborn.cgi",
        &format!(
            "sh -c 'trap \"\" TERM; echo $$ >{}; exec sleep 30' & printf 'Content-Type: text/plain\\r\\n\\r\\n'; exec sleep 30",
            pidfile.display()
        ),
    );
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let resp = serve(&backend, req, empty).await.unwrap();
    let helper = pid_in(&pidfile).await;
    // The client goes away: gitgate ends the backend.
    drop(resp);
    tokio::time::sleep(TERM_GRACE + Duration::from_millis(500)).await;
    for _ in 0..50 {
        if !running(helper) {
            assert_eq!(backend.wait_until_reaped().await, 0);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the helper {helper} that ignores SIGTERM outlived its backend");
}

/// A request body whose client never sends anything more.
struct Stalled(#[allow(dead_code)] Arc<()>);

impl Body for Stalled {
    type Data = Bytes;
    type Error = String;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
        Poll::Pending
    }
}

#[tokio::test]
async fn stdin_task_lets_go_of_the_body_when_backend_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "early.cgi",
        "printf 'Status: 403 Forbidden\\r\\n\\r\\nno'",
    );
    let headers = HeaderMap::new();
    let req = request(&Method::POST, "/x", None, &headers);
    let alive = Arc::new(());
    let body = serve(&backend, req, || Stalled(alive.clone()))
        .await
        .unwrap();
    assert_eq!(body.status(), StatusCode::FORBIDDEN);
    assert_eq!(body_bytes(body.into_body()).await, "no");
    for _ in 0..250 {
        if Arc::strong_count(&alive) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the stdin task still holds the request body");
}

#[tokio::test]
async fn dropped_body_kills_and_reaps_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "yes.cgi",
        "printf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' $$; exec yes",
    );
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let mut body = serve(&backend, req, empty).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let pid: u32 = String::from_utf8_lossy(&first)
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    drop(body);
    // Gone from the process table altogether: killed *and* reaped, not a zombie.
    for _ in 0..250 {
        if !proc_dir.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("backend {pid} still in the process table");
}

/// Whether `pid` has ended: gone from the process table, or a zombie waiting for whoever
/// inherited it (in a container that may be a PID 1 that never reaps).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[tokio::test]
async fn an_ended_backend_takes_what_it_started_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    // Like http-backend running upload-pack running pack-objects: a grandchild that would
    // go on working for minutes.
    let backend = script(
        tmp.path(),
        "spawns.cgi",
        "sleep 300 & printf 'Content-Type: text/plain\\r\\n\\r\\n%s %s\\n' $$ $!; exec yes",
    );
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let mut body = serve(&backend, req, empty).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let text = String::from_utf8_lossy(&first);
    let pids: Vec<u32> = text
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{text}");
    assert!(pids.iter().all(|&p| !ended(p)));
    drop(body);
    for _ in 0..250 {
        if pids.iter().all(|&p| ended(p)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<_> = pids.iter().filter(|&&p| !ended(p)).collect();
    panic!("still running after the request ended: {left:?}");
}

/// Promise 10 of docs/SECURITY.md: what the backend started gets SIGTERM first, the group's,
/// so that git's helpers clean up (a half-written pack, a push's quarantined objects) before
/// the SIGKILL that follows for what is left; a SIGTERM to the backend alone would leave them
/// only the SIGKILL.
#[tokio::test]
async fn an_ended_backends_helpers_are_sent_sigterm_before_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let mark = tmp.path().join("helper-got-sigterm");
    let ready = tmp.path().join("helper-ready");
    // The backend answers only once its helper has set its trap: a SIGTERM before that (a busy
    // machine scheduling the helper late) would end it by the default action, unrecorded.
    let backend = script(
        tmp.path(),
        "helper.cgi",
        &format!(
            "(trap 'echo term > {mark}; exit 0' TERM; : > {ready}; while :; do sleep 0.05; done) &\n\
             while [ ! -e {ready} ]; do sleep 0.01; done\n\
             printf 'Content-Type: text/plain\\r\\n\\r\\nstarted\\n'; exec yes",
            mark = mark.display(),
            ready = ready.display()
        ),
    );
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let mut body = serve(&backend, req, empty).await.unwrap().into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    // Waited for past the SIGKILL 2 s later: a helper that got only that never writes it.
    for _ in 0..150 {
        if mark.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the backend's helper was never sent SIGTERM");
}

/// Readiness asks for a program that is a file: a folder in its place (`program` set to
/// git's exec-path rather than the backend in it) is not ready, though it can be "executed"
/// (entered), and the project root is there.
#[tokio::test]
async fn a_folder_in_the_programs_place_is_not_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = CgiBackend::new(tmp.path().to_owned(), tmp.path().to_owned());
    let e = backend.ready().await.unwrap_err();
    assert!(e.contains("is not a file"), "{e}");
    let program = script(tmp.path(), "ok.cgi", "exit 0");
    assert_eq!(program.ready().await, Ok(()));
}

#[tokio::test]
async fn missing_program_is_spawn_error() {
    let backend = CgiBackend::new("/nonexistent/git-http-backend".into(), "/tmp".into());
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let err = backend.serve(req, Empty::<Bytes>::new()).await.unwrap_err();
    assert!(matches!(err, CgiError::Spawn(_)), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn body_is_send_and_static() {
    fn check<T: Body<Data = Bytes, Error = io::Error> + Send + 'static>() {}
    check::<CgiBody>();
}

/// receive-pack's report, plain and inside side-band 1 (with progress on band 2 around it).
#[test]
fn a_push_report_is_read_for_the_log() {
    use crate::pkt_line::encode as pkt;
    let report = |lines: &[&str]| {
        let mut r = Vec::new();
        for l in lines {
            r.extend(pkt(l.as_bytes()));
        }
        r.extend_from_slice(b"0000");
        r
    };
    let sideband = |inner: Vec<u8>| {
        let mut out = pkt(b"\x02Resolving deltas: 100% (3/3)\n");
        let mut band = vec![1u8];
        band.extend(inner);
        out.extend(pkt(&band));
        out.extend_from_slice(b"0000");
        out
    };
    let ok = report(&["unpack ok\n", "ok refs/heads/main\n", "ok refs/tags/v1\n"]);
    assert_eq!(
        super::body::push_outcome(&ok),
        "unpack ok, 2 ref(s) updated"
    );
    assert_eq!(
        super::body::push_outcome(&sideband(ok)),
        "unpack ok, 2 ref(s) updated"
    );
    let partly = report(&[
        "unpack ok\n",
        "ok refs/heads/main\n",
        "ng refs/heads/x non-fast-forward\n",
    ]);
    assert_eq!(
        super::body::push_outcome(&sideband(partly)),
        "unpack ok, 1 ref(s) updated, 1 refused: refs/heads/x non-fast-forward"
    );
    let broken = report(&[
        "unpack index-pack abnormal exit\n",
        "ng refs/heads/main unpacker error\n",
    ]);
    assert_eq!(
        super::body::push_outcome(&broken),
        "refused: unpack index-pack abnormal exit; no ref was updated"
    );
    assert!(super::body::push_outcome(b"").starts_with("no report"));
    // A hook's words on side-band 2 are no report lines, whatever they hold ("declining
    // refs/..." holds "ng refs/", "looking refs/" too).
    let mut hooked = pkt(b"\x02declining refs/heads/deny/x\n");
    hooked.extend(pkt(b"\x02looking refs/heads/y\n"));
    let mut band = vec![1u8];
    band.extend(report(&[
        "unpack ok\n",
        "ng refs/heads/deny/x pre-receive hook declined\n",
    ]));
    hooked.extend(pkt(&band));
    assert_eq!(
        super::body::push_outcome(&hooked),
        "unpack ok, 0 ref(s) updated, 1 refused: refs/heads/deny/x pre-receive hook declined"
    );
}

/// `[upstream] max_processes`: past the cap no process starts; the request waits for a place
/// and, none coming free, is refused as busy; a place comes back once its process is reaped.
#[tokio::test]
async fn no_process_starts_past_the_cap_and_a_reaped_one_frees_its_place() {
    let tmp = tempfile::tempdir().unwrap();
    let started = tmp.path().join("started");
    let cap = Arc::new(ProcessCap::with_waits(
        1,
        Duration::from_millis(300),
        Duration::from_millis(300),
    ));
    let backend = script(
        tmp.path(),
        "held.cgi",
        &format!(
            "echo $$ >> {}; printf 'Content-Type: text/plain\\r\\n\\r\\nheld\\n'; exec sleep 60",
            started.display()
        ),
    )
    .with_process_cap(cap.clone());
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let held = serve(&backend, req, empty).await.unwrap().into_body();
    assert_eq!(cap.in_use(), 1);

    let refused = serve(&backend, req, empty).await.unwrap_err();
    assert!(
        matches!(refused, CgiError::Busy(busy) if busy.max == 1),
        "{refused}"
    );
    assert_eq!(refused.summary(), "the server is busy");
    let lines = std::fs::read_to_string(&started).unwrap();
    assert_eq!(lines.lines().count(), 1, "only the first started: {lines}");

    // The held one ends (its client went away): killed, reaped, its place given back.
    drop(held);
    assert!(
        eventually(|| cap.in_use() == 0).await,
        "the place came back"
    );
    let mut again = serve(&backend, req, empty).await.unwrap().into_body();
    let first = again.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"held\n");
    let lines = std::fs::read_to_string(&started).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
}

/// The head timeout counts from the request's arrival, its wait for a place included: the
/// client connection's idle clock has run since then, and would otherwise close it before the
/// backend's `504` (a review saw an empty reply, `outcome=idle-timeout`).
#[tokio::test]
async fn the_wait_for_a_place_counts_against_the_head_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let cap = Arc::new(ProcessCap::with_waits(
        1,
        Duration::from_secs(5),
        Duration::from_secs(5),
    ));
    let backend = script(
        tmp.path(),
        "slow-head.cgi",
        "sleep 0.7; printf 'Content-Type: text/plain\\r\\n\\r\\nlate\\n'",
    )
    .with_head_timeout(Duration::from_secs(1))
    .with_process_cap(cap.clone());
    let held = cap.place(Asking::Other, "someone").await.unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(held);
    });
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    // Without the wait it would answer in time (0.7 s of its 1 s).
    let e = serve(&backend, req, empty).await.unwrap_err();
    assert!(matches!(e, CgiError::TimedOut(_)), "{e}");
    release.await.unwrap();
}

/// A `GET .../info/refs` starts an exchange under the process cap: the same token's `POST`
/// after it goes on with that exchange, and waits for a place as long as one going on may
/// (git shows no reason for a refused `POST`), not the short wait of a request that starts one.
#[tokio::test]
async fn an_advertisement_opens_an_exchange_whose_post_waits_the_longer_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let cap = Arc::new(ProcessCap::with_waits(
        1,
        Duration::from_millis(200),
        Duration::from_secs(5),
    ));
    let backend = script(
        tmp.path(),
        "quick.cgi",
        "printf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'",
    )
    .with_process_cap(cap.clone());
    let headers = HeaderMap::new();
    let advertisement = request(
        &Method::GET,
        "/team/app.git/info/refs",
        Some("service=git-upload-pack"),
        &headers,
    );
    let resp = serve(&backend, advertisement, empty).await.unwrap();
    assert_eq!(&body_bytes(resp.into_body()).await[..], b"ok\n");
    assert!(
        eventually(|| cap.in_use() == 0).await,
        "the place came back"
    );
    let held = cap.place(Asking::Other, "another-token").await.unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
    });
    let post = request(
        &Method::POST,
        "/team/app.git/git-upload-pack",
        None,
        &headers,
    );
    let resp = serve(&backend, post, empty).await.unwrap();
    assert_eq!(&body_bytes(resp.into_body()).await[..], b"ok\n");
    release.await.unwrap();
}

#[test]
fn another_spelling_of_a_name_is_tried_only_for_letters() {
    assert_eq!(case_swapped(b"Team.git"), Some(b"tEAM.GIT".to_vec()));
    assert_eq!(case_swapped(b"0-1_2.+~"), None);
}

#[test]
fn names_differing_in_case_are_different_repositories_here() {
    // On a file system that keeps case apart (this one), each spelling finds only itself, and
    // the extra look-up for the swapped spelling changes nothing.
    let root = tempfile::tempdir().unwrap();
    let backend = CgiBackend::new("/bin/false".into(), root.path().to_owned());
    for name in ["team/app.git", "Team/APP.git"] {
        let dir = root.path().join(name);
        std::fs::create_dir_all(dir.join("objects")).unwrap();
        std::fs::create_dir_all(dir.join("refs")).unwrap();
        std::fs::write(dir.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    }
    assert_eq!(backend.repo_dir("team/app"), RepoDir::WithGit);
    assert_eq!(backend.repo_dir("Team/APP"), RepoDir::WithGit);
    assert_eq!(
        backend.repo_dir("TEAM/app"),
        RepoDir::NotServed(NotServed::Missing)
    );
    assert_eq!(
        backend.repo_dir("team/App"),
        RepoDir::NotServed(NotServed::Missing)
    );
}

/// A folder is taken for a bare repository only with all of what git's own test asks for:
/// `HEAD`, `objects/` and `refs/`, and a `HEAD` that is a symbolic link only when it leads into
/// `refs/`. One with less is a folder, which git would not serve.
#[test]
fn a_bare_repository_has_a_head_objects_and_refs() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("app.git");
    std::fs::create_dir_all(dir.join("objects")).unwrap();
    std::fs::write(dir.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    assert_eq!(found_at(&dir), Found::Folder);
    std::fs::create_dir(dir.join("refs")).unwrap();
    assert_eq!(found_at(&dir), Found::Repository);
    std::fs::remove_file(dir.join("HEAD")).unwrap();
    std::os::unix::fs::symlink("../other.git/HEAD", dir.join("HEAD")).unwrap();
    assert_eq!(found_at(&dir), Found::Folder);
}

/// git's `ERR` packet after an `error:` of its own (a packfile that does not match its index)
/// is no client's mistake: the repository is damaged, and the answer ends with an error.
#[tokio::test]
async fn an_err_packet_after_gits_own_error_is_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = exits_after_headers(
        tmp.path(),
        "damaged.cgi",
        "application/x-git-upload-pack-result",
        "0049ERR upload-pack: not our ref 1111111111111111111111111111111111111111",
        "error: packfile ./objects/pack/pack-1.pack does not match index\n\
         fatal: git upload-pack: not our ref 1111111111111111111111111111111111111111",
        1,
    );
    let (_, ended) = body_and_end(&backend).await;
    let e = ended.expect_err("a damaged repository's refusal ended cleanly");
    assert!(e.to_string().contains("after an error of its own"), "{e}");
}

/// A backend that closed its stdout has not ended its answer while its exit is unknown: a body
/// that said it had ended then would let a failure go out as a whole answer.
#[tokio::test]
async fn an_answer_is_not_over_until_the_backends_exit_is_known() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "closes.cgi",
        "printf 'Content-Type: text/plain\\r\\n\\r\\nsome'; exec >&-; sleep 2; exit 3",
    );
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let mut body = serve(&backend, req, empty).await.unwrap().into_body();
    // What it said, until the body waits for its exit.
    loop {
        match tokio::time::timeout(Duration::from_millis(200), body.frame()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("the body ended before the backend's exit: {other:?}"),
            Err(_) => break,
        }
    }
    assert!(!body.is_end_stream());
    let (_, e) = body_until_error(body).await;
    assert!(e.to_string().contains("exit status: 3"), "{e}");
}

/// A request body that breaks off after the backend answered early (more than its head, before
/// reading its input, so the head was not held) still ends the backend: its input merely
/// closed, it would take the broken body for a whole one.
#[tokio::test]
async fn a_broken_body_ends_a_backend_that_answered_before_reading_it() {
    let tmp = tempfile::tempdir().unwrap();
    let applied = tmp.path().join("applied");
    let backend = script(
        tmp.path(),
        "early.cgi",
        &format!(
            "printf 'Content-Type: text/plain\\r\\n\\r\\nearly'; cat >/dev/null; sleep 0.3; \
             echo applied > '{}'",
            applied.display()
        ),
    );
    // A body that fails, and one that ends cleanly short of its `Content-Length`.
    let mut promised = HeaderMap::new();
    promised.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(4u32 << 20));
    for (headers, fail_at_end) in [(HeaderMap::new(), true), (promised, false)] {
        let req = request(&Method::POST, "/x", None, &headers);
        let make = || Generated {
            remaining: 3 << 20,
            fail_at_end,
        };
        if let Ok(resp) = serve(&backend, req, make).await {
            let (_, ended) = body_and_end_of(resp.into_body()).await;
            assert!(ended.is_err(), "the answer to a broken body ended cleanly");
        }
        assert_eq!(backend.wait_until_reaped().await, 0);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(
            !applied.exists(),
            "the backend went on to apply a broken body ({fail_at_end})"
        );
    }
}

/// A body's bytes up to its end, and how it ended.
async fn body_and_end_of(mut body: CgiBody) -> (Vec<u8>, Result<(), std::io::Error>) {
    let mut got = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap()),
            Some(Err(e)) => return (got, Err(e)),
            None => return (got, Ok(())),
        }
    }
}

/// The wait for a worker's backends to be reaped (a stop's) ends as the last one is reaped, not
/// at its deadline (`INPUT_CLOSED_GRACE + TERM_GRACE` and a second: 4 s).
#[tokio::test]
async fn the_wait_for_the_backends_ends_when_the_last_is_reaped() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = script(
        tmp.path(),
        "brief.cgi",
        "printf 'Content-Type: text/plain\\r\\n\\r\\n'; sleep 0.3; exit 0",
    );
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let resp = serve(&backend, req, empty).await.unwrap();
    let reading = tokio::spawn(body_and_end_of(resp.into_body()));
    let started = std::time::Instant::now();
    assert_eq!(backend.wait_until_reaped().await, 0);
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(1300), "{waited:?}");
    assert!(reading.await.unwrap().1.is_ok());
}

/// A backend that has said all it had to say — its stdout closed, or the length it declared
/// sent — but does not exit is ended after `EXIT_GRACE`, as one that closed its stdout before
/// its headers is: else a chunked answer never ended (its body waited for the exit), and the
/// process and its place under `[upstream] max_processes` were held for as long as it ran.
#[tokio::test]
async fn a_backend_that_said_all_but_does_not_exit_is_ended_and_its_place_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let cap = Arc::new(ProcessCap::with_waits(
        2,
        Duration::from_millis(300),
        Duration::from_millis(300),
    ));
    let closes = script(
        tmp.path(),
        "closes-stays.cgi",
        "printf 'Content-Type: text/plain\\r\\n\\r\\nsome'; exec >&-; exec sleep 60",
    )
    .with_process_cap(cap.clone());
    let declares = script(
        tmp.path(),
        "declares-stays.cgi",
        "printf 'Content-Length: 4\\r\\n\\r\\nsome'; exec sleep 60",
    )
    .with_process_cap(cap.clone());
    let headers = HeaderMap::new();
    let req = request(&Method::GET, "/x", None, &headers);
    let started = std::time::Instant::now();
    let chunked = serve(&closes, req, empty).await.unwrap().into_body();
    let declared = serve(&declares, req, empty).await.unwrap().into_body();
    assert_eq!(cap.in_use(), 2);
    // The declared length is a whole answer at once.
    assert_eq!(&body_bytes(declared).await[..], b"some");
    let bound = Duration::from_secs(15);
    // Not `body_until_error`, whose 10 s per frame is the grace itself.
    let (said, e) = tokio::time::timeout(bound, async move {
        let mut chunked = chunked;
        let mut said = Vec::new();
        loop {
            match chunked.frame().await {
                Some(Ok(frame)) => said.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(e)) => return (said, e),
                None => panic!("the body ended cleanly, its backend still running"),
            }
        }
    })
    .await
    .expect("the answer of a backend that closed its stdout ended");
    assert_eq!(said, b"some");
    assert!(e.to_string().contains("did not exit"), "{e}");
    let freed = tokio::time::timeout(bound.saturating_sub(started.elapsed()), async {
        while cap.in_use() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "{} places still held", cap.in_use());
    assert!(
        started.elapsed() >= super::EXIT_GRACE,
        "{:?}",
        started.elapsed()
    );
}
