//! Reading the small files gitgate is pointed at: the config, PEM certificates and keys, a CA
//! bundle, the upstream's secret.
//!
//! Each is read whole into memory, so a path that names something else — a device
//! (`/dev/zero`, `/dev/urandom`), a FIFO nobody writes to, a huge file by mistake — would
//! otherwise hang the start, `check` or a SIGHUP reload, or fill memory. Only a regular file (a
//! symbolic link to one too) of at most [`MAX_BYTES`] is read; anything else is an error that
//! says what the path is.

use std::io::Read;
use std::path::Path;

/// Far above any config, chain, key or CA bundle (the system's whole bundle is about 200 KiB).
pub const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// The file at `path` as text (see the module doc); the error is said without the path, which
/// the caller names with the setting it came from.
pub fn read_to_string(path: &Path) -> Result<String, String> {
    let bytes = read(path)?;
    String::from_utf8(bytes).map_err(|e| {
        // Where, so that the one accented letter saved in Latin-1 can be found.
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = good.len() - good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        format!("it is not UTF-8 text (the first byte that is not: line {line}, byte {column})")
    })
}

/// The file at `path` as bytes (see the module doc).
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    // Not blocking: opening a FIFO for reading would otherwise wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!("it is not a regular file but {}", kind(&meta)));
    }
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(format!(
            "it is larger than {} MiB, more than any such file holds",
            MAX_BYTES / (1024 * 1024)
        ));
    }
    Ok(bytes)
}

/// What kind of file `meta` is, in words for a message (`a folder`, `a FIFO`).
pub fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a folder"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_regular_file_of_a_sane_size_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "[server]\n").unwrap();
        assert_eq!(read_to_string(&ok).unwrap(), "[server]\n");
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_BYTES + 1)
            .unwrap();
        assert!(read(&big).unwrap_err().contains("larger than 4 MiB"));
        assert!(read(Path::new("/dev/zero"))
            .unwrap_err()
            .contains("a device"));
        assert!(read(dir.path()).unwrap_err().contains("a folder"));
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        // Opening a FIFO for reading would wait for a writer: it must not be opened at all.
        assert!(read(&fifo).unwrap_err().contains("a FIFO"));
        assert!(read(&dir.path().join("missing")).is_err());
        std::fs::write(&ok, [0xff, 0xfe]).unwrap();
        assert!(read_to_string(&ok)
            .unwrap_err()
            .contains("not UTF-8 text (the first byte that is not: line 1, byte 1)"));
        std::fs::write(&ok, b"[server]\nlisten = \"x\" # caf\xe9\n").unwrap();
        assert!(read_to_string(&ok)
            .unwrap_err()
            .contains("not UTF-8 text (the first byte that is not: line 2, byte 19)"));
    }

    /// A file of exactly [`MAX_BYTES`] is read whole: the limit is the most taken, not the
    /// first size refused.
    #[test]
    fn a_file_of_exactly_the_most_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let full = dir.path().join("full");
        std::fs::File::create(&full)
            .unwrap()
            .set_len(MAX_BYTES)
            .unwrap();
        assert_eq!(read(&full).unwrap().len() as u64, MAX_BYTES);
    }
}
