//! Which build of gitgate a program is: the GNU build ID the linker writes into the executable.
//!
//! Every build says `gitgate 0.1.0`, so after an upgrade nothing told the old binary from the
//! new: not `--version`, the start line, `gitgate_build_info`, nor `check` beside a server still
//! running the binary that was replaced. The build ID (a hash of the linked code, 40 hex digits
//! with GNU ld's default) differs between any two builds that differ, and is read back from the
//! file itself — our own through `/proc/self/exe`, a running server's through `/proc/PID/exe`,
//! which still opens a binary that was replaced or deleted since it started. Nothing to keep in
//! step by hand, and no build script. `readelf -n FILE` and `file FILE` print the same ID.
//!
//! Read from the ELF program headers' `PT_NOTE` segments (64-bit, little-endian: the only
//! executables gitgate is built as here); anything else, or a build without the note, is
//! `None`, and the callers say nothing of the build.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::OnceLock;

/// This program's own build ID.
pub fn own() -> Option<&'static str> {
    static OWN: OnceLock<Option<String>> = OnceLock::new();
    OWN.get_or_init(|| of_file(Path::new("/proc/self/exe")))
        .as_deref()
}

/// `version` and, where there is one, the build ID: `0.1.0 (build 1f2e...)`, as `--version`
/// prints it after the name.
pub fn version_and_build() -> String {
    match own() {
        Some(id) => format!("{} (build {id})", env!("CARGO_PKG_VERSION")),
        None => env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// The build ID of the executable at `path`, in lower-case hex.
pub fn of_file(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut header = [0u8; 64];
    file.read_exact(&mut header).ok()?;
    let table = program_header_table(&header)?;
    let mut headers = vec![0u8; table.len()?];
    file.seek(SeekFrom::Start(table.offset)).ok()?;
    file.read_exact(&mut headers).ok()?;
    for (offset, size) in note_segments(&headers, table.entry_size) {
        // A note segment is a few hundred bytes; anything much larger is not one we read.
        if size > 64 * 1024 {
            continue;
        }
        let mut notes = vec![0u8; usize::try_from(size).ok()?];
        file.seek(SeekFrom::Start(offset)).ok()?;
        file.read_exact(&mut notes).ok()?;
        if let Some(id) = gnu_build_id(&notes) {
            return Some(id.iter().map(|b| format!("{b:02x}")).collect());
        }
    }
    None
}

/// Where an ELF file's program headers are.
#[derive(Debug, PartialEq, Eq)]
struct HeaderTable {
    offset: u64,
    entry_size: usize,
    count: usize,
}

impl HeaderTable {
    fn len(&self) -> Option<usize> {
        self.entry_size.checked_mul(self.count)
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The program header table of a 64-bit little-endian ELF header; `None` for anything else.
fn program_header_table(header: &[u8; 64]) -> Option<HeaderTable> {
    const ELFCLASS64: u8 = 2;
    const ELFDATA2LSB: u8 = 1;
    if header[..4] != *b"\x7fELF" || header[4] != ELFCLASS64 || header[5] != ELFDATA2LSB {
        return None;
    }
    let table = HeaderTable {
        offset: u64_at(header, 0x20)?,
        entry_size: usize::from(u16_at(header, 0x36)?),
        count: usize::from(u16_at(header, 0x38)?),
    };
    (table.entry_size >= 56).then_some(table)
}

/// The (file offset, size) of each `PT_NOTE` segment among `headers`.
fn note_segments(headers: &[u8], entry_size: usize) -> Vec<(u64, u64)> {
    const PT_NOTE: u32 = 4;
    headers
        .chunks_exact(entry_size)
        .filter(|h| u32_at(h, 0) == Some(PT_NOTE))
        .filter_map(|h| Some((u64_at(h, 0x08)?, u64_at(h, 0x20)?)))
        .collect()
}

/// The description of the `NT_GNU_BUILD_ID` note owned by `GNU` among `notes` (each note: the
/// sizes of its name and description, its type, then the two, each padded to 4 bytes).
fn gnu_build_id(notes: &[u8]) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let pad = |n: usize| n.checked_add(3).map(|n| n & !3);
    let mut at = 0;
    while at + 12 <= notes.len() {
        let name_size = usize::try_from(u32_at(notes, at)?).ok()?;
        let desc_size = usize::try_from(u32_at(notes, at + 4)?).ok()?;
        let kind = u32_at(notes, at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(pad(name_size)?)?;
        let next = desc_at.checked_add(pad(desc_size)?)?;
        let name = notes.get(name_at..name_at.checked_add(name_size)?)?;
        let desc = notes.get(desc_at..desc_at.checked_add(desc_size)?)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" && !desc.is_empty() {
            return Some(desc);
        }
        at = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One note as the linker writes it.
    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&u32::try_from(name.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&u32::try_from(desc.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(name);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(desc);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    #[test]
    fn the_gnu_build_id_note_is_found_among_others() {
        let mut notes = note(b"GNU\0", 1, &[0; 16]); // NT_GNU_ABI_TAG
        notes.extend(note(b"stapsdt\0", 3, b"not ours"));
        notes.extend(note(b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef, 0x01]));
        assert_eq!(
            gnu_build_id(&notes),
            Some(&[0xde, 0xad, 0xbe, 0xef, 0x01][..])
        );
        assert_eq!(gnu_build_id(&note(b"GNU\0", 1, &[1; 20])), None);
    }

    #[test]
    fn notes_cut_short_or_with_sizes_past_the_end_are_none() {
        let whole = note(b"GNU\0", 3, &[7; 20]);
        for cut in 0..whole.len() - 1 {
            assert_eq!(gnu_build_id(&whole[..cut]), None, "cut at {cut}");
        }
        let mut lying = whole.clone();
        lying[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(gnu_build_id(&lying), None);
    }

    /// The ELF header of a 64-bit little-endian executable with `count` program headers of 56
    /// bytes each, right after it.
    fn elf_header(count: u16) -> [u8; 64] {
        let mut header = [0u8; 64];
        header[..6].copy_from_slice(b"\x7fELF\x02\x01");
        header[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        header[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        header[0x38..0x3a].copy_from_slice(&count.to_le_bytes());
        header
    }

    /// A `PT_NOTE` program header: where its notes are in the file and where they are loaded,
    /// and their size in the file and in memory.
    fn note_segment(offset: u64, vaddr: u64, file_size: u64, memory_size: u64) -> Vec<u8> {
        let mut out = vec![0u8; 56];
        out[..4].copy_from_slice(&4u32.to_le_bytes());
        out[0x08..0x10].copy_from_slice(&offset.to_le_bytes());
        out[0x10..0x18].copy_from_slice(&vaddr.to_le_bytes());
        out[0x18..0x20].copy_from_slice(&vaddr.to_le_bytes());
        out[0x20..0x28].copy_from_slice(&file_size.to_le_bytes());
        out[0x28..0x30].copy_from_slice(&memory_size.to_le_bytes());
        out
    }

    #[test]
    fn only_a_64_bit_little_endian_elf_header_is_read() {
        let header = elf_header(9);
        assert_eq!(
            program_header_table(&header),
            Some(HeaderTable {
                offset: 64,
                entry_size: 56,
                count: 9
            })
        );
        let mut big_endian = header;
        big_endian[5] = 2;
        assert_eq!(program_header_table(&big_endian), None);
        let mut script = header;
        script[..4].copy_from_slice(b"#!/b");
        assert_eq!(program_header_table(&script), None);
    }

    /// A GNU build-ID note with nothing in it is no build ID: the one after it is read, and a
    /// build is never said to have an empty ID.
    #[test]
    fn an_empty_build_id_note_is_passed_over() {
        let mut notes = note(b"GNU\0", 3, &[]);
        assert_eq!(gnu_build_id(&notes), None);
        notes.extend(note(b"GNU\0", 3, &[0x5a; 8]));
        assert_eq!(gnu_build_id(&notes), Some(&[0x5a; 8][..]));
    }

    /// The notes are read where the segment says they are in the file, for as many bytes as it
    /// has there (not where it is loaded, nor its size in memory, which a linker may make
    /// differ), and a `PT_NOTE` too large to be read is passed over for the next one.
    #[test]
    fn the_notes_are_read_at_their_place_in_the_file_past_one_too_large() {
        let notes = note(b"GNU\0", 3, &[0xab; 20]);
        let len = u64::try_from(notes.len()).unwrap();
        let at = 64 + 2 * 56;
        let mut elf = elf_header(2).to_vec();
        elf.extend(note_segment(at + 1, 0, 1 << 20, 1 << 20));
        elf.extend(note_segment(at, 0x40_0000 + at, len, len + 4096));
        elf.extend(notes);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gitgate");
        std::fs::write(&path, elf).unwrap();
        assert_eq!(of_file(&path), Some("ab".repeat(20)));
    }

    /// This test program's own ID, read as `readelf -n` reads it, where readelf is installed.
    #[test]
    fn the_id_read_is_the_one_readelf_reads() {
        let exe = std::env::current_exe().unwrap();
        let ours = of_file(&exe);
        let Ok(out) = std::process::Command::new("readelf")
            .arg("-n")
            .arg(&exe)
            .output()
        else {
            eprintln!("no readelf: the comparison is left out");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let theirs = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: "))
            .map(str::to_owned);
        assert_eq!(ours, theirs, "{text}");
        assert!(ours.is_some(), "the linker wrote no build ID: {text}");
        assert_eq!(of_file(Path::new("/proc/self/exe")), ours);
        assert_eq!(of_file(Path::new("/etc/hostname")), None);
    }
}
