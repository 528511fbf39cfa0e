//! The mount points of `/proc/self/mountinfo`, the kernel's octal escapes undone.
//!
//! The agent (which unmounts what an interrupted chroot left inside a slot) and
//! xtask (which unmounts what an interrupted root-filesystem build left) both need
//! exactly this, and nothing else of the file; neither links the other.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// Every mount point of this process's mount namespace, in `/proc/self/mountinfo`
/// order (parents before what is mounted on them).
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    let text = std::fs::read("/proc/self/mountinfo")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read /proc/self/mountinfo: {e}")))?;
    Ok(parse(&text))
}

/// The mount point column (the fifth) of each mountinfo line, unescaped.
pub fn parse(text: &[u8]) -> Vec<PathBuf> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape(field))))
        .collect()
}

/// Mount points as one comma-separated line, for a message that names what is
/// still mounted.
pub fn describe(points: &[PathBuf]) -> String {
    let names: Vec<String> = points.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// Undoes octal escapes as the kernel writes them in mountinfo: `\040` is a space,
/// `\011` a tab, `\012` a newline, `\134` a backslash. A backslash not followed by
/// three octal digits of a byte's value stays as it is.
pub fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if let Some(v) = s
            .get(i + 1..i + 4)
            .filter(|_| b == b'\\')
            .and_then(octal_byte)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// Three octal digits as one byte (`\400` and above are no byte).
fn octal_byte(digits: &[u8]) -> Option<u8> {
    if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
        return None;
    }
    let v = digits
        .iter()
        .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
    u8::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        let text = b"36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                     37 35 98:0 / /x\\011y\\012z\\134w rw - ext3 /dev/root rw\n\
                     38 35 98:0 / /odd\\9 rw - ext3 /dev/root rw\n\
                     80 22 0:5 / /tmp/a\\040b/dev rw - devtmpfs udev rw\n";
        assert_eq!(
            parse(text),
            vec![
                PathBuf::from("/mnt/a b"),
                PathBuf::from("/x\ty\nz\\w"),
                PathBuf::from("/odd\\9"),
                PathBuf::from("/tmp/a b/dev"),
            ]
        );
    }

    #[test]
    fn what_is_not_an_escape_stays() {
        assert_eq!(unescape(b"a\\134b\\"), b"a\\b\\".to_vec());
        // Not a byte, a sign, too short: as written.
        assert_eq!(unescape(b"\\400"), b"\\400".to_vec());
        assert_eq!(unescape(b"\\+12"), b"\\+12".to_vec());
        assert_eq!(unescape(b"x\\04"), b"x\\04".to_vec());
    }

    #[test]
    fn this_process_has_a_root_mount() {
        let points = mount_points().unwrap();
        assert!(
            points.iter().any(|p| p == std::path::Path::new("/")),
            "{points:?}"
        );
    }
}
