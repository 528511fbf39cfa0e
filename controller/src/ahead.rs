//! Decompressing a bundle file's chunks on a second thread, ahead of the decoder that verifies them (`molt bundle verify`, inspect and the build's self-check).
//!
//! Why: the decoder is one thread, and decompression is most of its work, so a
//! 200 MiB bundle verified in series leaves the machine's other cores idle.
//! Chunks are independent zstd frames: a helper thread reads the file's chunk
//! layout on its own and decompresses each frame as soon as it is read, while
//! the decoder checks digests and parses entries. Nothing is trusted from the
//! helper: the decoder still reads and hashes every byte itself, and [`Ahead`]
//! uses a helper's output only for a frame byte-for-byte equal to the one the
//! decoder hands it, decompressing anything else itself. A helper that fails
//! or reads garbage only makes the check slower, never different.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use molt_engine::bundle::format::{
    max_wire_chunk, CHUNK_HEADER_LEN, HEADER_LEN, SIG_BLOCK_PREFIX, SIG_RECORD_LEN,
};
use molt_engine::bundle::zstd::{DecompressError, LibZstd};
use molt_engine::bundle::Decompressor;
use molt_engine::Limits;

/// Chunks decompressed ahead of the decoder: memory is this many raw chunks.
const AHEAD: usize = 3;

/// One frame and what it decompressed to.
struct Done {
    frame: Vec<u8>,
    raw: Vec<u8>,
}

/// A [`Decompressor`] that takes each frame's output from the helper thread when
/// the helper decompressed exactly that frame, and decompresses it itself otherwise.
pub struct Ahead {
    own: LibZstd,
    results: Option<Receiver<Done>>,
    /// Emptied buffers going back to the helper.
    spare: Option<SyncSender<Done>>,
    helper: Option<JoinHandle<()>>,
}

impl Ahead {
    /// Starts the helper on the bundle at `path`, whose chunks may be as large as `limits` allow.
    pub fn start(path: &Path, limits: &Limits) -> io::Result<Ahead> {
        let file = File::open(path)?;
        let (tx, results) = mpsc::sync_channel(AHEAD);
        let (spare, back) = mpsc::sync_channel(AHEAD + 2);
        let max_raw = limits.max_chunk_size;
        let helper = std::thread::Builder::new()
            .name("molt-unzstd".into())
            .spawn(move || {
                // Any error just ends the helper: the decoder then does the rest itself.
                let _ = run(BufReader::with_capacity(1 << 20, file), max_raw, &tx, &back);
            })?;
        Ok(Ahead {
            own: LibZstd::new()?,
            results: Some(results),
            spare: Some(spare),
            helper: Some(helper),
        })
    }
}

impl Decompressor for Ahead {
    fn decompress_frame(&mut self, src: &[u8], dst: &mut [u8]) -> Result<usize, DecompressError> {
        if let Some(done) = self.results.as_ref().and_then(|r| r.recv().ok()) {
            let n = done.raw.len();
            let used = done.frame == src && n <= dst.len();
            if used {
                dst.get_mut(..n)
                    .ok_or(DecompressError)?
                    .copy_from_slice(&done.raw);
            }
            if let Some(s) = &self.spare {
                let _ = s.try_send(done);
            }
            if used {
                return Ok(n);
            }
        }
        self.own.decompress_frame(src, dst)
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        // Closing both channels stops a helper that is still reading ahead.
        drop(self.results.take());
        drop(self.spare.take());
        if let Some(h) = self.helper.take() {
            let _ = h.join();
        }
    }
}

/// The helper: skips the header, signatures and manifest, then reads and
/// decompresses chunk after chunk until the file ends, something is malformed,
/// or the decoder is gone.
fn run(
    mut r: impl Read,
    max_raw: u32,
    out: &SyncSender<Done>,
    back: &Receiver<Done>,
) -> io::Result<()> {
    let mut head = [0u8; HEADER_LEN + SIG_BLOCK_PREFIX];
    r.read_exact(&mut head)?;
    let manifest_len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
    let sigs = u64::from(head[HEADER_LEN]) * SIG_RECORD_LEN as u64;
    io::copy(
        &mut (&mut r).take(sigs + u64::from(manifest_len)),
        &mut io::sink(),
    )?;
    let mut z = LibZstd::new()?;
    let mut chunk = [0u8; CHUNK_HEADER_LEN];
    loop {
        match r.read_exact(&mut chunk) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            other => other?,
        }
        let wire = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let raw = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        if raw > max_raw || wire > max_wire_chunk(max_raw) {
            return Ok(());
        }
        let mut done = back.try_recv().unwrap_or(Done {
            frame: Vec::new(),
            raw: Vec::new(),
        });
        done.frame.resize(wire as usize, 0);
        r.read_exact(&mut done.frame)?;
        done.raw.resize(raw as usize, 0);
        match z.decompress_frame(&done.frame, &mut done.raw) {
            Ok(n) if n == raw as usize => {}
            _ => return Ok(()),
        }
        if out.send(done).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file laid out like a bundle (no signatures, no manifest) whose chunks are `frames`.
    fn bundle_file(chunks: &[&[u8]]) -> (tempfile::NamedTempFile, Vec<Vec<u8>>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut head = [0u8; HEADER_LEN + SIG_BLOCK_PREFIX];
        head[..8].copy_from_slice(b"MOLTBNDL");
        f.write_all(&head).unwrap();
        let mut frames = Vec::new();
        for raw in chunks {
            let frame = zstd::bulk::compress(raw, 3).unwrap();
            f.write_all(&(frame.len() as u32).to_le_bytes()).unwrap();
            f.write_all(&(raw.len() as u32).to_le_bytes()).unwrap();
            f.write_all(&[0; 32]).unwrap();
            f.write_all(&frame).unwrap();
            frames.push(frame);
        }
        f.flush().unwrap();
        (f, frames)
    }

    #[test]
    fn takes_the_helpers_output_only_for_the_same_frame() {
        let (a, b, c) = (vec![1u8; 50_000], vec![2u8; 70_000], vec![3u8; 10]);
        let (file, frames) = bundle_file(&[&a, &b]);
        let mut ahead = Ahead::start(file.path(), &Limits::DEFAULT).unwrap();
        let mut dst = vec![0u8; 100_000];
        // The first chunk, as the decoder hands it over.
        let n = ahead.decompress_frame(&frames[0], &mut dst).unwrap();
        assert_eq!(&dst[..n], &a[..]);
        // A frame the helper did not read (its second chunk is dropped): decompressed here.
        let other = zstd::bulk::compress(&c, 3).unwrap();
        let n = ahead.decompress_frame(&other, &mut dst).unwrap();
        assert_eq!(&dst[..n], &c[..]);
        // The helper has ended: frames are still decompressed, and errors still reported.
        let n = ahead.decompress_frame(&frames[1], &mut dst).unwrap();
        assert_eq!(&dst[..n], &b[..]);
        assert!(ahead.decompress_frame(b"not zstd", &mut dst).is_err());
    }

    #[test]
    fn a_helper_that_reads_garbage_changes_nothing() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0xff; 100]).unwrap();
        let mut ahead = Ahead::start(f.path(), &Limits::DEFAULT).unwrap();
        let frame = zstd::bulk::compress(b"hello", 3).unwrap();
        let mut dst = [0u8; 5];
        assert_eq!(ahead.decompress_frame(&frame, &mut dst).unwrap(), 5);
        assert_eq!(&dst, b"hello");
    }
}
