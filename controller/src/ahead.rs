//! Decompressing a bundle file's chunks on a second thread, ahead of the decoder that verifies them (`molt bundle verify`, inspect and the server's check of an upload).
//!
//! Why: the decoder is one thread, and decompression is most of its work, so a
//! 200 MiB bundle verified in series leaves the machine's other cores idle.
//! Chunks are independent zstd frames, so a helper thread can decompress chunk
//! n+1 while the decoder parses chunk n.
//!
//! The helper never decompresses a byte the signature does not cover. It waits
//! until the decoder has verified the manifest ([`Go::go`] hands it the signed
//! payload description), then follows the chunk chain itself with the engine's
//! [`Chain`]: each chunk is hashed and checked against the digest its predecessor
//! (or the manifest) names before its frame goes to zstd, and the helper stops at
//! the first chunk that fails. Nothing is trusted from the helper either: the
//! decoder still reads and checks every byte itself, and [`Ahead`] uses a
//! helper's output only for a frame byte-for-byte equal to the one the decoder
//! hands it, decompressing anything else itself. A helper that fails or reads
//! something else only makes the check slower, never different.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use molt_engine::bundle::chunk::{Chain, ChunkHeader};
use molt_engine::bundle::format::Payload;
use molt_engine::bundle::zstd::{DecompressError, LibZstd};
use molt_engine::bundle::Decompressor;
use molt_engine::Limits;

/// Chunks decompressed ahead of the decoder: memory is this many raw chunks.
const AHEAD: usize = 3;

/// One verified chunk (header and frame) and what its frame decompressed to.
struct Done {
    chunk: Vec<u8>,
    raw: Vec<u8>,
}

/// Where the helper starts: handed over once the decoder has verified the manifest.
struct Start {
    payload_start: u64,
    payload: Payload,
}

/// What the helper waits for before reading anything.
enum Signal {
    /// The manifest is verified: start here.
    Go(Start),
    /// The decoder is gone (refused, or done before any chunk): end.
    Stop,
}

/// A [`Decompressor`] that takes each frame's output from the helper thread when
/// the helper decompressed exactly that frame, and decompresses it itself otherwise.
pub struct Ahead {
    own: LibZstd,
    results: Option<Receiver<Done>>,
    /// Emptied buffers going back to the helper.
    spare: Option<SyncSender<Done>>,
    helper: Option<JoinHandle<()>>,
    /// Ends a helper still waiting for its [`Go`] (whose holder may outlive us).
    stop: SyncSender<Signal>,
    /// Frames whose output came from the helper (what the tests look at).
    #[cfg_attr(not(test), allow(dead_code))]
    helped: u64,
}

/// The signal that lets the helper start: sent once the manifest is verified.
pub struct Go(SyncSender<Signal>);

impl Go {
    /// Starts the helper at `payload_start` (the offset of the first chunk), following
    /// the chain the verified manifest's `payload` describes.
    pub fn go(self, payload_start: u64, payload: Payload) {
        let _ = self.0.try_send(Signal::Go(Start {
            payload_start,
            payload,
        }));
    }
}

impl Ahead {
    /// Prepares a helper for the bundle at `path`, whose chunks may be as large as
    /// `limits` allow; it reads nothing until [`Go::go`]. Dropping the [`Go`] unused
    /// ends the helper.
    pub fn start(path: &Path, limits: &Limits) -> io::Result<(Go, Ahead)> {
        let file = File::open(path)?;
        // Room for a Go and a Stop, so neither side ever blocks sending.
        let (go, start) = mpsc::sync_channel(2);
        let (tx, results) = mpsc::sync_channel(AHEAD);
        let (spare, back) = mpsc::sync_channel(AHEAD + 2);
        let max_window = u64::from(limits.max_chunk_size);
        let helper = std::thread::Builder::new()
            .name("molt-unzstd".into())
            .spawn(move || {
                let Ok(Signal::Go(s)) = start.recv() else {
                    return;
                };
                // Any error just ends the helper: the decoder then does the rest itself.
                let _ = run(file, s, max_window, &tx, &back);
            })?;
        Ok((
            Go(go.clone()),
            Ahead {
                stop: go,
                own: LibZstd::new()?,
                results: Some(results),
                spare: Some(spare),
                helper: Some(helper),
                helped: 0,
            },
        ))
    }

    /// How many frames so far came decompressed from the helper.
    #[cfg(test)]
    fn helped(&self) -> u64 {
        self.helped
    }
}

impl Decompressor for Ahead {
    fn decompress_frame(&mut self, src: &[u8], dst: &mut [u8]) -> Result<usize, DecompressError> {
        if let Some(done) = self.results.as_ref().and_then(|r| r.recv().ok()) {
            let n = done.raw.len();
            let used = done.chunk.get(ChunkHeader::LEN..) == Some(src) && n <= dst.len();
            if used {
                dst.get_mut(..n)
                    .ok_or(DecompressError)?
                    .copy_from_slice(&done.raw);
                self.helped += 1;
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
        // A helper still waiting to start ends on Stop (the Go may be held by whoever
        // outlives the decoder); closing both channels stops one reading ahead.
        let _ = self.stop.try_send(Signal::Stop);
        drop(self.results.take());
        drop(self.spare.take());
        if let Some(h) = self.helper.take() {
            let _ = h.join();
        }
    }
}

/// The helper: follows the chunk chain from `s`, checking each chunk before it
/// decompresses its frame, until the chain ends, a chunk fails, or the decoder is gone.
fn run(
    file: File,
    s: Start,
    max_window: u64,
    out: &SyncSender<Done>,
    back: &Receiver<Done>,
) -> io::Result<()> {
    let mut r = BufReader::with_capacity(1 << 20, file);
    r.seek(SeekFrom::Start(s.payload_start))?;
    let mut chain = Chain::new(s.payload, max_window);
    let mut z = LibZstd::new()?;
    let mut at = s.payload_start;
    while !chain.is_done() {
        let mut done = back.try_recv().unwrap_or(Done {
            chunk: Vec::new(),
            raw: Vec::new(),
        });
        done.chunk.resize(ChunkHeader::LEN, 0);
        r.read_exact(&mut done.chunk)?;
        let Ok(h) = chain.header(&done.chunk, at) else {
            return Ok(());
        };
        done.chunk.resize(h.chunk_len(), 0);
        r.read_exact(done.chunk.get_mut(ChunkHeader::LEN..).unwrap_or_default())?;
        let Ok((h, frame)) = chain.chunk(&done.chunk, at) else {
            return Ok(());
        };
        at += done.chunk.len() as u64;
        done.raw.resize(h.raw as usize, 0);
        match z.decompress_frame(frame, &mut done.raw) {
            Ok(n) if n == h.raw as usize => {}
            _ => return Ok(()),
        }
        if out.send(done).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_engine::bundle::chunk::Head;
    use molt_engine::bundle::Manifest;
    use std::io::Write;

    /// A signed bundle of three incompressible 64 KiB chunks, built by the engine's
    /// encoder; returns the file, the payload start and description, and the frames.
    fn bundle() -> (tempfile::NamedTempFile, u64, Payload, Vec<Vec<u8>>) {
        use molt_engine::bundle::encoder::{Encoder, EncoderOptions};
        use molt_engine::bundle::{EntryHeader, EntryKind};
        let opts = EncoderOptions {
            chunk_size: 64 * 1024,
            ..EncoderOptions::default()
        };
        let mut enc = Encoder::new(
            std::io::Cursor::new(Vec::new()),
            opts,
            false,
            Default::default(),
        )
        .unwrap();
        let content = molt_engine::testing::noise(5, 150_000);
        let meta = EntryHeader {
            path: "f",
            kind: EntryKind::Dir,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
        };
        enc.add_file_bytes(&meta, &content).unwrap();
        let m = Manifest {
            version: "1",
            compatible: "x",
            release: 1,
            allow_downgrade: false,
            kind: molt_engine::bundle::BundleKind::Patch { base_version: "" },
            created: 0,
            comment: "",
            recipe: Default::default(),
            payload: Default::default(),
            entries: Default::default(),
        };
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let mut bytes = Vec::new();
        enc.finish(m, &[key], &mut bytes).unwrap();
        let head = Head::parse(&bytes).unwrap();
        let start = head.payload_start();
        let mstart = (start - u64::from(head.manifest_len)) as usize;
        let manifest = Manifest::decode(&bytes[mstart..start as usize]).unwrap();
        let payload = manifest.payload;
        let mut frames = Vec::new();
        let mut at = start as usize;
        while at < bytes.len() {
            let h = ChunkHeader::parse(&bytes[at..]);
            frames.push(bytes[at + ChunkHeader::LEN..at + h.chunk_len()].to_vec());
            at += h.chunk_len();
        }
        assert_eq!(frames.len(), 3);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        f.flush().unwrap();
        (f, start, payload, frames)
    }

    fn unzstd(frame: &[u8]) -> Vec<u8> {
        zstd::bulk::decompress(frame, 1 << 20).unwrap()
    }

    #[test]
    fn takes_the_helpers_output_only_for_the_same_frame() {
        let (file, start, payload, frames) = bundle();
        let (go, mut ahead) = Ahead::start(file.path(), &Limits::DEFAULT).unwrap();
        go.go(start, payload);
        let mut dst = vec![0u8; 100_000];
        let n = ahead.decompress_frame(&frames[0], &mut dst).unwrap();
        assert_eq!(&dst[..n], &unzstd(&frames[0])[..]);
        assert_eq!(ahead.helped(), 1);
        // A frame the helper did not read (its second chunk is dropped): decompressed here.
        let other = zstd::bulk::compress(&[3u8; 10], 3).unwrap();
        let n = ahead.decompress_frame(&other, &mut dst).unwrap();
        assert_eq!(&dst[..n], &[3u8; 10]);
        assert_eq!(ahead.helped(), 1);
        let n = ahead.decompress_frame(&frames[2], &mut dst).unwrap();
        assert_eq!(&dst[..n], &unzstd(&frames[2])[..]);
        assert_eq!(ahead.helped(), 2);
        assert!(ahead.decompress_frame(b"not zstd", &mut dst).is_err());
    }

    #[test]
    fn nothing_is_decompressed_before_its_digest_matches() {
        let (file, start, payload, frames) = bundle();
        // Flip a byte inside the second frame: its chunk no longer hashes to the
        // digest the first chunk's header names.
        let mut bytes = std::fs::read(file.path()).unwrap();
        let second = start as usize + ChunkHeader::LEN + frames[0].len() + ChunkHeader::LEN + 100;
        bytes[second] ^= 1;
        let mut bad = tempfile::NamedTempFile::new().unwrap();
        bad.write_all(&bytes).unwrap();
        let (go, mut ahead) = Ahead::start(bad.path(), &Limits::DEFAULT).unwrap();
        go.go(start, payload);
        let mut dst = vec![0u8; 100_000];
        ahead.decompress_frame(&frames[0], &mut dst).unwrap();
        assert_eq!(ahead.helped(), 1);
        // The helper stopped at the bad chunk: it decompressed neither it nor the next.
        let helper = ahead.helper.take().unwrap();
        helper.join().unwrap();
        assert!(ahead.results.as_ref().unwrap().try_recv().is_err());

        // Without the go (no verified manifest) the helper reads nothing at all; and
        // dropping the decoder's Ahead ends it even while the Go is still held (a
        // refused signature: the caller's Go outlives the decoder).
        let (go, mut ahead) = Ahead::start(file.path(), &Limits::DEFAULT).unwrap();
        let _ = ahead.stop.try_send(Signal::Stop);
        ahead.helper.take().unwrap().join().unwrap();
        let n = ahead.decompress_frame(&frames[0], &mut dst).unwrap();
        assert_eq!(&dst[..n], &unzstd(&frames[0])[..]);
        assert_eq!(ahead.helped(), 0);
        let (_go, ahead) = Ahead::start(file.path(), &Limits::DEFAULT).unwrap();
        drop(ahead);
        drop(go);
    }
}
