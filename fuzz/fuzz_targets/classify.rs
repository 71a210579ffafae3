//! `git::classify` on arbitrary method, path, query and prefix: it must never panic, and every
//! repository it accepts must be the one a plain resolver would serve.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Input layout: METHOD ' ' PATH ['?' QUERY], the shape of an HTTP request line; the prefix
    // is picked by the first byte so both "/" and a real prefix are exercised.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (prefix, text) = match text.as_bytes().first() {
        Some(b'#') => ("/scm", &text[1..]),
        _ => ("/", text),
    };
    let (method, target) = text.split_once(' ').unwrap_or(("GET", text));
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if let Ok(req) = gitgate::git::classify(method, path, query, prefix) {
        let repo = req.repo.as_str();
        for seg in repo.split('/') {
            assert!(
                gitgate::git::valid_segment(seg),
                "bad segment {seg:?} in {repo:?}"
            );
        }
        // `app..x` is a fine name; a `..` or `.` *segment*, or an empty one, is not.
        let tail = req
            .backend_path
            .strip_prefix('/')
            .expect("backend path is absolute");
        for seg in tail.split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "{}",
                req.backend_path
            );
        }
        assert!(!req.backend_path.contains('%'));
        assert!(!req.backend_path.contains('\\'));
        let expected = format!("/{repo}/");
        let expected_git = format!("/{repo}.git/");
        assert!(
            req.backend_path.starts_with(&expected) || req.backend_path.starts_with(&expected_git),
            "{} does not serve {repo}",
            req.backend_path
        );
    }
});
