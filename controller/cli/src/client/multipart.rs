//! A multipart/form-data body (RFC 7578) whose length is known before it is sent and whose files are read only while it streams.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

/// One part of a form.
#[derive(Debug)]
pub struct Part {
    /// The form field's name.
    pub name: String,
    /// The `filename` parameter, if any.
    pub filename: Option<String>,
    /// The part's `Content-Type`.
    pub content_type: &'static str,
    /// Further headers.
    pub headers: Vec<(&'static str, String)>,
    /// What it holds.
    pub body: PartBody,
}

/// A part's content.
#[derive(Debug)]
pub enum PartBody {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A file, read only when the upload reaches it; it must still be `len` bytes long then.
    File {
        /// The file.
        path: PathBuf,
        /// Its size when the form was made (the body's length counts on it).
        len: u64,
    },
}

impl PartBody {
    fn len(&self) -> u64 {
        match self {
            PartBody::Bytes(b) => b.len() as u64,
            PartBody::File { len, .. } => *len,
        }
    }
}

/// A multipart/form-data body whose length is known before it is sent and whose file
/// parts are read only while it is sent, so a large tree never sits in memory.
#[derive(Debug)]
pub struct Multipart {
    boundary: String,
    parts: Vec<Part>,
}

impl Multipart {
    /// An empty form with a random boundary.
    pub fn new() -> Result<Multipart> {
        let mut r = [0u8; 16];
        getrandom::getrandom(&mut r)
            .map_err(|e| anyhow!("cannot get randomness from the operating system: {e}"))?;
        Ok(Multipart::with_boundary(format!(
            "molt-boundary-{}",
            hex::encode(r)
        )))
    }

    /// An empty form with a given boundary (tests).
    pub fn with_boundary(boundary: String) -> Multipart {
        Multipart {
            boundary,
            parts: Vec::new(),
        }
    }

    /// Adds a part. Refuses names a `Content-Disposition` cannot carry unambiguously
    /// (quotes, backslashes, line breaks): no server would read them back the same.
    pub fn push(&mut self, part: Part) -> Result<()> {
        for (what, value) in [
            ("name", Some(part.name.as_str())),
            ("file name", part.filename.as_deref()),
        ] {
            if let Some(v) = value {
                if v.contains(['"', '\\', '\r', '\n']) {
                    bail!("the {what} `{v}` contains a quote, backslash or line break; it cannot be uploaded");
                }
            }
        }
        self.parts.push(part);
        Ok(())
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The request's `Content-Type`.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// The encoded body's length in bytes.
    pub fn len(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| self.head(p).len() as u64 + p.body.len() + 2)
            .sum::<u64>()
            + self.tail().len() as u64
    }

    /// The boundary line and headers before a part's body.
    fn head(&self, p: &Part) -> Vec<u8> {
        let mut h = format!(
            "--{}\r\nContent-Disposition: form-data; name=\"{}\"",
            self.boundary, p.name
        );
        if let Some(f) = &p.filename {
            let _ = write!(h, "; filename=\"{f}\"");
        }
        let _ = write!(h, "\r\nContent-Type: {}\r\n", p.content_type);
        for (k, v) in &p.headers {
            let _ = write!(h, "{k}: {v}\r\n");
        }
        h.push_str("\r\n");
        h.into_bytes()
    }

    fn tail(&self) -> Vec<u8> {
        format!("--{}--\r\n", self.boundary).into_bytes()
    }

    /// The body as a reader: exactly [`Multipart::len`] bytes, or an error if a file
    /// changed size since the form was made.
    pub fn into_reader(self) -> MultipartReader {
        let heads: Vec<Vec<u8>> = self.parts.iter().map(|p| self.head(p)).collect();
        let tail = self.tail();
        let mut segments = VecDeque::new();
        for (part, head) in self.parts.into_iter().zip(heads) {
            segments.push_back(Segment::Bytes(Cursor::new(head)));
            match part.body {
                PartBody::Bytes(b) => segments.push_back(Segment::Bytes(Cursor::new(b))),
                PartBody::File { path, len } => segments.push_back(Segment::File {
                    path,
                    len,
                    file: None,
                    done: 0,
                }),
            }
            segments.push_back(Segment::Bytes(Cursor::new(b"\r\n".to_vec())));
        }
        segments.push_back(Segment::Bytes(Cursor::new(tail)));
        MultipartReader { segments }
    }
}

/// Reads a [`Multipart`] body; files are opened one at a time, as the body reaches them.
pub struct MultipartReader {
    segments: VecDeque<Segment>,
}

enum Segment {
    Bytes(Cursor<Vec<u8>>),
    File {
        path: PathBuf,
        len: u64,
        file: Option<File>,
        done: u64,
    },
}

impl Read for MultipartReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while let Some(seg) = self.segments.front_mut() {
            let n = match seg {
                Segment::Bytes(c) => c.read(buf)?,
                Segment::File {
                    path,
                    len,
                    file,
                    done,
                } => {
                    let changed = |p: &Path| {
                        io::Error::other(format!(
                            "{} changed while it was being uploaded; push again",
                            p.display()
                        ))
                    };
                    let f = match file {
                        Some(f) => f,
                        None => file.insert(File::open(&*path).map_err(|e| {
                            io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
                        })?),
                    };
                    let left = *len - *done;
                    if left == 0 {
                        // The file must end where the form said it would.
                        let mut probe = [0u8; 1];
                        if f.read(&mut probe)? != 0 {
                            return Err(changed(path));
                        }
                        0
                    } else {
                        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        let n = f.read(&mut buf[..want]).map_err(|e| {
                            io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
                        })?;
                        if n == 0 {
                            return Err(changed(path));
                        }
                        *done += n as u64;
                        n
                    }
                }
            };
            if n > 0 {
                return Ok(n);
            }
            self.segments.pop_front();
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::push::MODE_HEADER;
    use std::fs;

    #[test]
    fn multipart_encodes_exactly_and_knows_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.bin");
        fs::write(&file, b"0123456789").unwrap();
        let mut form = Multipart::with_boundary("B".into());
        form.push(Part {
            name: "recipe".into(),
            filename: Some("r.toml".into()),
            content_type: "application/toml",
            headers: vec![],
            body: PartBody::Bytes(b"version = \"1\"".to_vec()),
        })
        .unwrap();
        form.push(Part {
            name: "app/a.bin".into(),
            filename: Some("a.bin".into()),
            content_type: "application/octet-stream",
            headers: vec![(MODE_HEADER, "0644".into())],
            body: PartBody::File {
                path: file,
                len: 10,
            },
        })
        .unwrap();
        let len = form.len();
        assert_eq!(form.content_type(), "multipart/form-data; boundary=B");
        let mut body = Vec::new();
        // Tiny reads cross every segment boundary.
        let mut r = form.into_reader();
        let mut buf = [0u8; 3];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
        let expected = "--B\r\n\
            Content-Disposition: form-data; name=\"recipe\"; filename=\"r.toml\"\r\n\
            Content-Type: application/toml\r\n\r\n\
            version = \"1\"\r\n\
            --B\r\n\
            Content-Disposition: form-data; name=\"app/a.bin\"; filename=\"a.bin\"\r\n\
            Content-Type: application/octet-stream\r\n\
            X-Molt-Mode: 0644\r\n\r\n\
            0123456789\r\n\
            --B--\r\n";
        assert_eq!(String::from_utf8(body.clone()).unwrap(), expected);
        assert_eq!(len, body.len() as u64);
    }

    #[test]
    fn multipart_refuses_a_file_that_changed_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        fs::write(&file, b"12345").unwrap();
        for now in [&b"123"[..], &b"1234567"[..]] {
            let mut form = Multipart::with_boundary("B".into());
            form.push(Part {
                name: "a".into(),
                filename: None,
                content_type: "application/octet-stream",
                headers: vec![],
                body: PartBody::File {
                    path: file.clone(),
                    len: 5,
                },
            })
            .unwrap();
            fs::write(&file, now).unwrap();
            let mut out = Vec::new();
            let e = form.into_reader().read_to_end(&mut out).unwrap_err();
            assert!(
                e.to_string()
                    .contains("changed while it was being uploaded"),
                "{e}"
            );
        }
    }

    #[test]
    fn multipart_refuses_names_it_cannot_quote() {
        let mut form = Multipart::with_boundary("B".into());
        for bad in ["a\"b", "a\\b", "a\nb"] {
            let e = form
                .push(Part {
                    name: bad.into(),
                    filename: None,
                    content_type: "text/plain",
                    headers: vec![],
                    body: PartBody::Bytes(vec![]),
                })
                .unwrap_err();
            assert!(e.to_string().contains("cannot be uploaded"), "{e}");
        }
    }

    #[test]
    fn the_boundary_is_random() {
        let a = Multipart::new().unwrap().content_type();
        let b = Multipart::new().unwrap().content_type();
        assert_ne!(a, b);
    }
}
