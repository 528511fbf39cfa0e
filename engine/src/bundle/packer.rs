//! The encoder's compressing half (host side): raw chunks in, zstd frames spooled in order, inline or on a pool of threads.
//!
//! Every chunk is an independent frame, so chunks compress in parallel: with
//! `threads` workers each compresses whole chunks with its own context, and one
//! spooling thread writes the frames in chunk order. The bytes are the same
//! whatever the number of threads (a frame depends only on its chunk and the
//! level). Memory is bounded: a worker takes a frame buffer from a fixed set
//! before it takes a chunk, and the spooler returns the buffer once the frame is
//! written, so at most `2 × threads` frames exist however unevenly the workers
//! run.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::bundle::format::CHUNK_HEADER_LEN;
use crate::bundle::frame_hash::FrameHash;

/// Where a chunk's frame lies in the spool, and the header-independent part of its digest.
pub(crate) struct ChunkMeta {
    pub offset: u64,
    pub wire: u32,
    pub raw: u32,
    pub hash: FrameHash,
}

/// The spool and what was written to it.
pub(crate) struct Spool<S> {
    pub file: S,
    /// Where the next frame goes: the spool's length, or its end past the reserve.
    pub len: u64,
    /// Leave a chunk header's room before each frame (for `finish_in_place`).
    pub slots: bool,
    pub chunks: Vec<ChunkMeta>,
    pub raw_len: u64,
}

impl<S: Write> Spool<S> {
    /// Spools a frame (of a chunk of `raw` bytes) after the ones before it.
    fn push(&mut self, frame: &[u8], raw: u32) -> io::Result<()> {
        if self.slots {
            self.file.write_all(&[0; CHUNK_HEADER_LEN])?;
            self.len += CHUNK_HEADER_LEN as u64;
        }
        self.file.write_all(frame)?;
        self.chunks.push(ChunkMeta {
            offset: self.len,
            wire: frame.len() as u32,
            raw,
            // Hashed now, while the frame is in memory: no second pass over the spool.
            hash: FrameHash::new(frame),
        });
        self.len += frame.len() as u64;
        self.raw_len += u64::from(raw);
        Ok(())
    }
}

/// Compresses `raw` into `frame` (emptied first) as one independent zstd frame.
fn compress(
    zstd: &mut zstd::bulk::Compressor<'static>,
    raw: &[u8],
    frame: &mut Vec<u8>,
) -> io::Result<()> {
    frame.clear();
    frame.reserve(zstd::zstd_safe::compress_bound(raw.len()));
    zstd.compress_to_buffer(raw, frame)?;
    Ok(())
}

/// A compressed chunk on its way to the spooler.
struct Done {
    seq: u64,
    frame: Vec<u8>,
    raw: u32,
}

/// Compresses full chunks into frames on the spool, in the order they are given.
pub(crate) enum Packer<S> {
    /// In the caller's thread.
    Inline {
        spool: Box<Spool<S>>,
        zstd: zstd::bulk::Compressor<'static>,
        frame: Vec<u8>,
    },
    /// On worker threads, spooled by one more.
    Pool(Pool<S>),
}

/// The threads of [`Packer::Pool`] and the channels to them.
pub(crate) struct Pool<S> {
    /// Chunks in order, numbered; bounded, so the producer runs ahead by a few.
    todo: Option<SyncSender<(u64, Vec<u8>)>>,
    /// Emptied chunk buffers coming back, so the producer does not allocate per chunk.
    free: Receiver<Vec<u8>>,
    /// Chunks handed out so far (the next one's number).
    sent: u64,
    /// Set by a worker that failed, so the others stop.
    failed: Arc<AtomicBool>,
    workers: Vec<JoinHandle<io::Result<()>>>,
    spooler: Option<JoinHandle<io::Result<Spool<S>>>>,
}

impl<S: Write + Send + 'static> Packer<S> {
    /// A packer compressing at `level` into `spool`: inline if `threads` is 0, else on
    /// that many worker threads.
    pub fn new(spool: Spool<S>, level: i32, threads: usize) -> io::Result<Self> {
        if threads == 0 {
            return Ok(Packer::Inline {
                spool: Box::new(spool),
                zstd: zstd::bulk::Compressor::new(level)?,
                frame: Vec::new(),
            });
        }
        let (todo, jobs) = mpsc::sync_channel::<(u64, Vec<u8>)>(threads);
        let jobs = Arc::new(Mutex::new(jobs));
        let (give_back, free) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        // The fixed set of frame buffers: the bound on frames in flight.
        let (frame_tx, frame_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..2 * threads {
            let _ = frame_tx.send(Vec::new());
        }
        let frame_rx = Arc::new(Mutex::new(frame_rx));
        let failed = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let mut zstd = zstd::bulk::Compressor::new(level)?;
            let (jobs, frames, give_back, done, failed) = (
                jobs.clone(),
                frame_rx.clone(),
                give_back.clone(),
                done_tx.clone(),
                failed.clone(),
            );
            let w = std::thread::Builder::new()
                .name(format!("molt-zstd-{i}"))
                .spawn(move || {
                    let r = work(&mut zstd, &jobs, &frames, &give_back, &done, &failed);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                })?;
            workers.push(w);
        }
        drop(done_tx);
        let spooler = std::thread::Builder::new()
            .name("molt-spool".into())
            .spawn(move || spool_in_order(spool, &done_rx, &frame_tx))?;
        Ok(Packer::Pool(Pool {
            todo: Some(todo),
            free,
            sent: 0,
            failed,
            workers,
            spooler: Some(spooler),
        }))
    }

    /// Packs the full chunk in `raw`, which comes back empty (a recycled buffer when
    /// threads compress).
    pub fn pack(&mut self, raw: &mut Vec<u8>, capacity: usize) -> io::Result<()> {
        match self {
            Packer::Inline { spool, zstd, frame } => {
                compress(zstd, raw, frame)?;
                spool.push(frame, raw.len() as u32)?;
                raw.clear();
                Ok(())
            }
            Packer::Pool(p) => {
                let mut next = p.free.try_recv().unwrap_or_default();
                next.reserve(capacity);
                let full = core::mem::replace(raw, next);
                let sent = !p.failed.load(Ordering::Relaxed)
                    && p.todo
                        .as_ref()
                        .is_some_and(|t| t.send((p.sent, full)).is_ok());
                if !sent {
                    // A thread stopped: stopping them all gives its error.
                    return Err(p
                        .stop()
                        .err()
                        .unwrap_or_else(|| io::Error::other("the compressor threads stopped")));
                }
                p.sent += 1;
                Ok(())
            }
        }
    }

    /// Waits until every chunk given is spooled, and returns the spool.
    pub fn finish(self) -> io::Result<Spool<S>> {
        match self {
            Packer::Inline { spool, .. } => Ok(*spool),
            Packer::Pool(mut p) => p.stop(),
        }
    }
}

impl<S> Pool<S> {
    /// Closes the queue, joins every thread and returns the spool, or the first
    /// error a thread stopped with.
    fn stop(&mut self) -> io::Result<Spool<S>> {
        // Closing the queue ends each worker's loop after the last chunk.
        drop(self.todo.take());
        let mut first_err = None;
        for w in self.workers.drain(..) {
            let r = w
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a compressor thread panicked")));
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        let spooled = self
            .spooler
            .take()
            .ok_or_else(|| io::Error::other("the compressor threads already stopped"))?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the spooling thread panicked")));
        if let Some(e) = first_err {
            return Err(e);
        }
        let spool = spooled?;
        if spool.chunks.len() as u64 != self.sent {
            return Err(io::Error::other(
                "the compressor threads stopped before every chunk was spooled",
            ));
        }
        Ok(spool)
    }
}

/// A worker: takes a frame buffer, then the next chunk, compresses it and hands the
/// frame to the spooler, until the queue closes or something failed.
fn work(
    zstd: &mut zstd::bulk::Compressor<'static>,
    jobs: &Mutex<Receiver<(u64, Vec<u8>)>>,
    frames: &Mutex<Receiver<Vec<u8>>>,
    give_back: &Sender<Vec<u8>>,
    done: &Sender<Done>,
    failed: &AtomicBool,
) -> io::Result<()> {
    let lock_err = || io::Error::other("a compressor thread panicked");
    loop {
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        // The frame buffer first: the chunk this worker then takes always has room
        // to land, so the spooler never waits on a worker that waits on it.
        let Ok(mut frame) = frames.lock().map_err(|_| lock_err())?.recv() else {
            return Ok(()); // the spooler stopped (its error is reported)
        };
        let Ok((seq, mut raw)) = jobs.lock().map_err(|_| lock_err())?.recv() else {
            return Ok(()); // the queue closed: every chunk is taken
        };
        compress(zstd, &raw, &mut frame)?;
        let n = raw.len() as u32;
        raw.clear();
        // The producer may be gone (it failed); the buffer is then dropped.
        let _ = give_back.send(raw);
        if done.send(Done { seq, frame, raw: n }).is_err() {
            return Ok(()); // the spooler stopped
        }
    }
}

/// The spooler: writes frames in chunk order as they arrive, returning each buffer
/// to the workers, until every worker is gone.
fn spool_in_order<S: Write>(
    mut spool: Spool<S>,
    done: &Receiver<Done>,
    frames: &Sender<Vec<u8>>,
) -> io::Result<Spool<S>> {
    let mut next = 0u64;
    let mut waiting = BTreeMap::new();
    for d in done {
        waiting.insert(d.seq, d);
        while let Some(d) = waiting.remove(&next) {
            spool.push(&d.frame, d.raw)?;
            let _ = frames.send(d.frame);
            next += 1;
        }
    }
    Ok(spool)
}
