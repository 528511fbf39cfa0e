//! The download's writing thread: applies the decoder's events to the slot while the reading thread decodes and verifies the next ones.
//!
//! Decompression and hashing (user time) and creating and writing files (system
//! time) cost about the same; on one thread they add up, on two they overlap, as
//! `zstd -dc | tar -x` overlaps them in two processes. The decoder's events borrow
//! its buffers, so each is copied into an owned [`Work`] message; the channel holds
//! at most [`DEPTH`] messages of at most [`PIECE`] bytes, and spent buffers come
//! back for reuse, so memory stays bounded by a constant whatever the bundle's size.
//!
//! Order is the one the decoder produced, and a checkpoint asks the writer for its
//! state through [`Writer::state`], which answers only once every earlier event is
//! applied, so a checkpoint never describes a write that has not happened.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

use molt_engine::bundle::format::EntryHeader;
use molt_engine::bundle::Event;

use crate::fsops::{ErrorKind, ExtractState, ExtractStats, Extractor, FsError};

/// Messages in flight between the two threads, at most.
const DEPTH: usize = 8;
/// The largest piece of file content one message carries (bigger `Data` events are split).
const PIECE: usize = 256 * 1024;

/// One event of the decoder, owned.
enum Work {
    /// An entry header, postcard-encoded (the decoder's header borrows its buffers).
    Start(Vec<u8>),
    /// File content.
    Data(Vec<u8>),
    /// The entry is complete.
    End,
    /// Everything sent before is applied: answer with the extractor's state.
    State(SyncSender<Option<ExtractState>>),
    /// The bundle is complete: finish the extraction.
    Finish,
}

/// The sending side, owned by the reading thread.
pub(super) struct Writer<'scope> {
    tx: Option<SyncSender<Work>>,
    spent: Receiver<Vec<u8>>,
    thread: Option<ScopedJoinHandle<'scope, Result<Option<ExtractStats>, FsError>>>,
}

impl<'scope> Writer<'scope> {
    /// Starts the writing thread in `scope`; it owns the extractor from now on.
    pub(super) fn spawn<'env>(
        scope: &'scope Scope<'scope, 'env>,
        mut x: Extractor<'env>,
    ) -> Writer<'scope>
    where
        'env: 'scope,
    {
        let (tx, rx) = mpsc::sync_channel::<Work>(DEPTH);
        let (give_back, spent) = mpsc::channel::<Vec<u8>>();
        let thread = std::thread::Builder::new()
            .name("molt-writer".into())
            .spawn_scoped(scope, move || apply_all(&mut x, rx, give_back).and_then(|done| {
                if done {
                    x.finish().map(Some)
                } else {
                    // Abandoned (the reading side failed): dropping the extractor
                    // removes the temporary file in progress.
                    Ok(None)
                }
            }))
            .expect("cannot start the writing thread");
        Writer {
            tx: Some(tx),
            spent,
            thread: Some(thread),
        }
    }

    /// Hands `ev` to the writing thread; an error is the writer's own (it stopped).
    pub(super) fn send(&mut self, ev: &Event<'_>) -> Result<(), FsError> {
        match ev {
            Event::EntryStart(h) => {
                let bytes = postcard::to_allocvec(h).map_err(|_| {
                    FsError::other(ErrorKind::Sequence, "encode", h.path, "", "unencodable entry header")
                })?;
                self.put(Work::Start(bytes))
            }
            Event::Data(d) => {
                for piece in d.chunks(PIECE) {
                    let mut buf = self.spent.try_recv().unwrap_or_default();
                    buf.clear();
                    buf.extend_from_slice(piece);
                    self.put(Work::Data(buf))?;
                }
                Ok(())
            }
            Event::EntryEnd => self.put(Work::End),
            Event::ManifestVerified { .. } | Event::Done => Ok(()),
        }
    }

    /// The extractor's state once everything sent so far is applied (for a checkpoint).
    pub(super) fn state(&mut self) -> Result<Option<ExtractState>, FsError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.put(Work::State(tx))?;
        match rx.recv() {
            Ok(state) => Ok(state),
            Err(_) => Err(self.stopped()),
        }
    }

    /// Finishes the extraction and waits for the writing thread.
    pub(super) fn finish(mut self) -> Result<ExtractStats, FsError> {
        self.put(Work::Finish)?;
        drop(self.tx.take());
        match self.join()? {
            Some(stats) => Ok(stats),
            None => Err(FsError::other(
                ErrorKind::Sequence,
                "finish",
                "",
                "",
                "the writing thread stopped early",
            )),
        }
    }

    fn put(&mut self, w: Work) -> Result<(), FsError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(w).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.stopped())
        }
    }

    /// The writing thread's error after it stopped on one.
    fn stopped(&mut self) -> FsError {
        drop(self.tx.take());
        match self.join() {
            Err(e) => e,
            Ok(_) => FsError::other(
                ErrorKind::Sequence,
                "write",
                "",
                "",
                "the writing thread stopped early",
            ),
        }
    }

    fn join(&mut self) -> Result<Option<ExtractStats>, FsError> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(FsError::other(
                ErrorKind::Sequence,
                "write",
                "",
                "",
                "the writing thread panicked",
            )),
            None => Ok(None),
        }
    }
}

/// The writing thread's loop: true when told to finish, false when abandoned.
fn apply_all(
    x: &mut Extractor<'_>,
    rx: Receiver<Work>,
    give_back: Sender<Vec<u8>>,
) -> Result<bool, FsError> {
    for w in rx {
        match w {
            Work::Start(bytes) => {
                let h: EntryHeader<'_> = postcard::from_bytes(&bytes).map_err(|_| {
                    FsError::other(ErrorKind::Sequence, "decode", "", "", "undecodable entry header")
                })?;
                x.apply(&Event::EntryStart(h))?;
            }
            Work::Data(buf) => {
                x.apply(&Event::Data(&buf))?;
                // The reading side may be gone; then the buffer is simply freed.
                let _ = give_back.send(buf);
            }
            Work::End => x.apply(&Event::EntryEnd)?,
            Work::State(reply) => {
                let _ = reply.send(x.save());
            }
            Work::Finish => return Ok(true),
        }
    }
    Ok(false)
}
