//! Which process listens on a TCP port, for `gitgate check`: a listen address in use is the
//! running gitgate's when the configuration is live, and `check` says so with a warning — but
//! in use by another program (node_exporter on the README's metrics port, a forgotten test
//! server) it means `serve` cannot start, and `check` must fail, naming it.
//!
//! Linux only, read from `/proc`: the listening sockets in `/proc/net/tcp` and `tcp6` (their
//! inode), then the process whose `/proc/PID/fd` holds that socket. A process of another user
//! is not seen without privileges: then nothing is said ([`holder`] gives `None`).

use std::path::Path;

/// A process that listens on a port.
#[derive(Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub name: String,
    /// For a gitgate, the configuration it runs with, when it can be read (its `--config`, or
    /// `GITGATE_CONFIG`, or `proxy.toml`, in its working folder).
    pub config: Option<std::path::PathBuf>,
    /// The build ID of the executable it runs (see [`crate::build_id`]), when it can be read.
    pub build_id: Option<String>,
    /// Its executable, under whatever name, holds gitgate's code (`holds_gitgates_code`).
    pub runs_gitgate: bool,
}

impl Holder {
    /// Whether it is a gitgate (the running server, most likely): a program whose name starts
    /// `gitgate` (`gitgate-0.1.0` or `gitgate.new` beside the installed one, as upgrades keep
    /// them), or one running this very build under any name.
    pub fn is_gitgate(&self) -> bool {
        self.runs_gitgate
            || is_gitgate(&self.name, self.build_id.as_deref(), crate::build_id::own())
    }
}

/// A name every gitgate build holds and no other program has reason to: the metric of its
/// build, which every build since the first serves.
const GITGATES_MARK: &[u8] = b"gitgate_build_info";

/// Whether the executable at `path` (a process's `/proc/PID/exe`, which opens a binary
/// replaced or deleted since it started) holds [`GITGATES_MARK`]: a gitgate under another name
/// and of another build, such as the one an upgrade replaced. Read in 1 MiB pieces (a
/// gitgate is some 60 MB: tens of milliseconds from the page cache; `check` does it only for a
/// port in use by a program not otherwise known).
fn holds_gitgates_code(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut buf = vec![0u8; 1024 * 1024 + GITGATES_MARK.len()];
    let mut kept = 0;
    loop {
        let Ok(n) = file.read(&mut buf[kept..]) else {
            return false;
        };
        if n == 0 {
            return false;
        }
        let filled = kept + n;
        if buf[..filled]
            .windows(GITGATES_MARK.len())
            .any(|w| w == GITGATES_MARK)
        {
            return true;
        }
        // The end of this piece, which the mark may straddle, begins the next.
        kept = (GITGATES_MARK.len() - 1).min(filled);
        buf.copy_within(filled - kept..filled, 0);
    }
}

fn is_gitgate(name: &str, build: Option<&str>, own_build: Option<&str>) -> bool {
    name.starts_with("gitgate") || build.is_some_and(|b| Some(b) == own_build)
}

/// The process listening on TCP `port` (any address), if one can be seen.
pub fn holder(port: u16) -> Option<Holder> {
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| listening_inodes(&text, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|target| target.to_str().map(|t| wanted.iter().any(|w| w == t)))
                .unwrap_or(false)
        });
        if holds {
            let name = command_name(&entry.path());
            let exe = entry.path().join("exe");
            let build_id = crate::build_id::of_file(&exe);
            let mut holder = Holder {
                pid,
                name,
                config: None,
                build_id,
                runs_gitgate: false,
            };
            // Of another name and build (`/tmp/gg-old`, a binary named `gy` replaced since):
            // what it runs is read for a name only gitgate's code holds.
            holder.runs_gitgate = !holder.is_gitgate() && holds_gitgates_code(&exe);
            if holder.is_gitgate() {
                holder.config = config_of(&entry.path());
            }
            return Some(holder);
        }
    }
    None
}

/// The configuration file a gitgate process runs with, as `serve` chose it: `--config PATH`
/// (or `--config=PATH`), else `GITGATE_CONFIG`, else `proxy.toml` — relative ones in its
/// working folder. `None` where its command line, environment or folder cannot be read.
fn config_of(proc_pid: &Path) -> Option<std::path::PathBuf> {
    let cmdline = std::fs::read(proc_pid.join("cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let from_args = args.iter().enumerate().find_map(|(i, a)| {
        if *a == b"--config" {
            args.get(i + 1).copied()
        } else {
            a.strip_prefix(b"--config=")
        }
    });
    let named = match from_args {
        Some(p) => p.to_vec(),
        None => {
            let environ = std::fs::read(proc_pid.join("environ")).ok()?;
            environ
                .split(|&b| b == 0)
                .find_map(|v| v.strip_prefix(b"GITGATE_CONFIG="))
                .filter(|v| !v.is_empty())
                .map_or_else(|| b"proxy.toml".to_vec(), <[u8]>::to_vec)
        }
    };
    use std::os::unix::ffi::OsStrExt;
    let named = Path::new(std::ffi::OsStr::from_bytes(&named));
    let cwd = std::fs::read_link(proc_pid.join("cwd")).ok()?;
    Some(config_identity(&cwd.join(named)))
}

/// What tells one configuration from another: its folder, resolved, and the file's name as
/// given — not the file a symbolic link leads to, since relative paths in a configuration are
/// taken from the folder of the path given (the link's), so one file reached through links in
/// two folders is two configurations (two stores).
pub fn config_identity(path: &Path) -> std::path::PathBuf {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (std::fs::canonicalize(folder), path.file_name()) {
        (Ok(folder), Some(name)) => folder.join(name),
        _ => path.to_path_buf(),
    }
}

fn command_name(proc_pid: &Path) -> String {
    std::fs::read_to_string(proc_pid.join("comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// The inodes of the sockets listening on `port` in a `/proc/net/tcp` or `tcp6` table: lines
/// of `sl local_address rem_address st ... inode`, the address `HEX:PORTHEX`, state `0A`
/// for LISTEN.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            let (_, port_hex) = local.rsplit_once(':')?;
            (*state == "0A" && u16::from_str_radix(port_hex, 16).ok()? == port && inode != 0)
                .then_some(inode)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitgates_code_is_found_in_its_executable_and_not_in_others() {
        // This test program is built from gitgate's code; sh is not.
        assert!(holds_gitgates_code(&std::env::current_exe().unwrap()));
        assert!(!holds_gitgates_code(Path::new("/bin/sh")));
        assert!(!holds_gitgates_code(Path::new("/nonexistent/gitgate")));
        // A mark across the boundary of two pieces is found.
        let dir = std::env::temp_dir().join(format!("gitgate-mark-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("straddled");
        let mut bytes = vec![b'x'; 1024 * 1024 - 5];
        bytes.extend_from_slice(GITGATES_MARK);
        bytes.extend_from_slice(&[b'y'; 100]);
        std::fs::write(&file, &bytes).unwrap();
        assert!(holds_gitgates_code(&file));
        std::fs::write(&file, &bytes[..1024 * 1024]).unwrap();
        assert!(!holds_gitgates_code(&file));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_gitgate_is_told_by_its_name_or_by_this_build() {
        assert!(is_gitgate("gitgate", None, None));
        assert!(is_gitgate("gitgate-0.1.0", None, Some("aa")));
        assert!(is_gitgate("gitgate.new", Some("bb"), Some("aa")));
        assert!(is_gitgate("gg", Some("aa"), Some("aa")));
        assert!(!is_gitgate("gg", Some("bb"), Some("aa")));
        assert!(!is_gitgate("node_exporter", None, None));
        assert!(!is_gitgate("nginx", None, Some("aa")));
    }

    #[test]
    fn listening_sockets_are_read_from_the_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000000000000000 20 4 30 10 -1\n\
   2: 00000000:2382 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 34567 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 8080), vec![12345]);
        assert_eq!(listening_inodes(table, 9090), vec![34567]);
        assert_eq!(listening_inodes(table, 1), Vec::<u64>::new());
        assert_eq!(listening_inodes("", 8080), Vec::<u64>::new());
    }

    /// A real listener of this process is found, with this process's name and build — this
    /// very build, so taken for a gitgate, and its configuration read.
    #[test]
    fn this_process_is_found_listening() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = holder(port).expect("this process listens there");
        assert_eq!(found.pid, std::process::id());
        assert_eq!(found.build_id.as_deref(), crate::build_id::own());
        assert!(found.build_id.is_some(), "{found:?}");
        assert!(found.is_gitgate(), "{found:?}");
        assert!(found.config.is_some(), "{found:?}");
        drop(listener);
        // A link's folder, not its target's, tells configurations apart.
        let dir = std::env::temp_dir().join(format!("gitgate-port-holder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(dir.join("a/proxy.toml"), "").unwrap();
        std::os::unix::fs::symlink(dir.join("a/proxy.toml"), dir.join("b/proxy.toml")).unwrap();
        std::os::unix::fs::symlink(dir.join("a"), dir.join("c")).unwrap();
        let id = |p: &str| config_identity(&dir.join(p));
        assert_ne!(id("a/proxy.toml"), id("b/proxy.toml"));
        assert_eq!(id("a/proxy.toml"), id("c/proxy.toml"));
        assert_eq!(id("a/proxy.toml"), id("b/../a/proxy.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(holder(port), None);
    }

    /// A line of the table with no inode (a socket that is going, or one of another network
    /// namespace) names no process's socket: it is not taken for one.
    #[test]
    fn a_listening_line_without_an_inode_is_not_a_socket() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 8080), Vec::<u64>::new());
    }

    /// A configuration named without a folder is the one in the working folder, as `serve`
    /// reads it, not a path that differs from the same file named in full.
    #[test]
    fn a_configuration_named_alone_is_the_one_in_the_working_folder() {
        let cwd = std::fs::canonicalize(std::env::current_dir().unwrap()).unwrap();
        assert_eq!(
            config_identity(Path::new("proxy.toml")),
            cwd.join("proxy.toml")
        );
    }

    /// A gitgate's configuration is read from its command line as `serve` reads it: `--config
    /// PATH` or `--config=PATH`, else `GITGATE_CONFIG` — an empty one naming nothing — else
    /// `proxy.toml`, relative ones in its working folder.
    #[test]
    fn a_processs_configuration_is_read_as_serve_chose_it() {
        let dir = tempfile::tempdir().unwrap();
        let folder = std::fs::canonicalize(dir.path()).unwrap();
        let config_of_child = |args: &[&str], env: Option<&str>| {
            let mut cmd = std::process::Command::new("sh");
            // `; :` keeps sh from becoming `sleep`, so that its command line stays as given.
            cmd.args(["-c", "sleep 30; :", "sh"])
                .args(args)
                .current_dir(&folder)
                .env_remove("GITGATE_CONFIG");
            if let Some(v) = env {
                cmd.env("GITGATE_CONFIG", v);
            }
            let mut child = cmd.spawn().unwrap();
            let proc_pid = std::path::PathBuf::from(format!("/proc/{}", child.id()));
            // Spawned is not yet exec'd: until then /proc shows this process's command line.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !std::fs::read(proc_pid.join("cmdline")).is_ok_and(|c| c.starts_with(b"sh\0")) {
                assert!(std::time::Instant::now() < deadline, "sh never started");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let found = config_of(&proc_pid);
            child.kill().unwrap();
            child.wait().unwrap();
            found
        };
        assert_eq!(
            config_of_child(&["--config", "a.toml"], Some("b.toml")),
            Some(folder.join("a.toml"))
        );
        assert_eq!(
            config_of_child(&["--config=a.toml"], Some("b.toml")),
            Some(folder.join("a.toml"))
        );
        assert_eq!(
            config_of_child(&[], Some("b.toml")),
            Some(folder.join("b.toml"))
        );
        assert_eq!(
            config_of_child(&[], Some("")),
            Some(folder.join("proxy.toml"))
        );
        assert_eq!(config_of_child(&[], None), Some(folder.join("proxy.toml")));
    }
}
