//! The download's writing thread: applies the decoder's events to the slot while the reading thread decodes and verifies the next ones.
//!
//! Decompression and hashing (user time) and creating and writing files (system
//! time) cost about the same; on one thread they add up, on two they overlap, as
//! `zstd -dc | tar -x` overlaps them in two processes. The decoder's events borrow
//! its buffers, so they are copied into a [`Batch`] (one byte buffer plus the list of
//! events in it) that crosses to the writer when it holds [`BATCH`] bytes: one
//! hand-over per 256 KiB rather than per event keeps the threads from waking each
//! other thousands of times a second. At most [`DEPTH`] batches are in flight and
//! spent ones come back for reuse, so memory stays bounded by a constant whatever
//! the bundle's size.
//!
//! Order is the one the decoder produced, and a checkpoint asks the writer for its
//! state through [`Writer::state`], which answers only once every earlier event is
//! applied, so a checkpoint never describes a write that has not happened.

use std::ops::Range;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

use molt_engine::bundle::format::EntryHeader;
use molt_engine::bundle::Event;

use crate::fsops::{ErrorKind, ExtractState, ExtractStats, Extractor, FsError};

/// Batches in flight between the two threads, at most (besides the one being filled).
const DEPTH: usize = 4;
/// Bytes a batch carries before it is handed over (content is split to fit).
const BATCH: usize = 256 * 1024;

/// One decoder event inside a batch; ranges index the batch's bytes.
enum Op {
    /// An entry header, postcard-encoded (the decoder's header borrows its buffers).
    Start(Range<usize>),
    /// File content.
    Data(Range<usize>),
    /// The entry is complete.
    End,
}

/// Consecutive events, owned.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    ops: Vec<Op>,
}

/// What crosses to the writing thread.
enum Work {
    Batch(Batch),
    /// Everything sent before is applied: answer with the extractor's state.
    State(SyncSender<Option<ExtractState>>),
    /// The bundle is complete: finish the extraction.
    Finish,
}

/// The sending side, owned by the reading thread.
pub(super) struct Writer<'scope> {
    tx: Option<SyncSender<Work>>,
    filling: Batch,
    spent: Receiver<Batch>,
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
        let (give_back, spent) = mpsc::channel::<Batch>();
        let thread = std::thread::Builder::new()
            .name("molt-writer".into())
            .spawn_scoped(scope, move || {
                apply_all(&mut x, rx, give_back).and_then(|done| {
                    if done {
                        x.finish().map(Some)
                    } else {
                        // Abandoned (the reading side failed): dropping the extractor
                        // removes the temporary file in progress.
                        Ok(None)
                    }
                })
            })
            .expect("cannot start the writing thread");
        Writer {
            tx: Some(tx),
            filling: Batch::default(),
            spent,
            thread: Some(thread),
        }
    }

    /// Queues `ev` for the writing thread; an error is the writer's own (it stopped).
    pub(super) fn send(&mut self, ev: &Event<'_>) -> Result<(), FsError> {
        match ev {
            Event::EntryStart(h) => {
                let b = &mut self.filling;
                let at = b.bytes.len();
                b.bytes = postcard::to_extend(h, std::mem::take(&mut b.bytes)).map_err(|_| {
                    FsError::other(
                        ErrorKind::Sequence,
                        "encode",
                        h.path,
                        "",
                        "unencodable entry header",
                    )
                })?;
                b.ops.push(Op::Start(at..b.bytes.len()));
            }
            Event::Data(mut d) => {
                while !d.is_empty() {
                    let b = &mut self.filling;
                    let room = BATCH.saturating_sub(b.bytes.len()).max(1);
                    let (piece, rest) = d.split_at(room.min(d.len()));
                    let at = b.bytes.len();
                    b.bytes.extend_from_slice(piece);
                    b.ops.push(Op::Data(at..b.bytes.len()));
                    d = rest;
                    if self.filling.bytes.len() >= BATCH {
                        self.flush()?;
                    }
                }
            }
            Event::EntryEnd => self.filling.ops.push(Op::End),
            Event::ManifestVerified { .. } | Event::Done => {}
        }
        if self.filling.bytes.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the batch being filled over (if it holds anything) and starts another,
    /// reusing a spent one.
    fn flush(&mut self) -> Result<(), FsError> {
        if self.filling.ops.is_empty() {
            return Ok(());
        }
        let mut next = self.spent.try_recv().unwrap_or_default();
        next.bytes.clear();
        next.ops.clear();
        let full = std::mem::replace(&mut self.filling, next);
        self.put(Work::Batch(full))
    }

    /// The extractor's state once everything sent so far is applied (for a checkpoint).
    pub(super) fn state(&mut self) -> Result<Option<ExtractState>, FsError> {
        self.flush()?;
        let (tx, rx) = mpsc::sync_channel(1);
        self.put(Work::State(tx))?;
        match rx.recv() {
            Ok(state) => Ok(state),
            Err(_) => Err(self.stopped()),
        }
    }

    /// Finishes the extraction and waits for the writing thread.
    pub(super) fn finish(mut self) -> Result<ExtractStats, FsError> {
        self.flush()?;
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
    give_back: Sender<Batch>,
) -> Result<bool, FsError> {
    for w in rx {
        match w {
            Work::Batch(b) => {
                for op in &b.ops {
                    match op {
                        Op::Start(r) => {
                            let h: EntryHeader<'_> = postcard::from_bytes(&b.bytes[r.clone()])
                                .map_err(|_| {
                                    FsError::other(
                                        ErrorKind::Sequence,
                                        "decode",
                                        "",
                                        "",
                                        "undecodable entry header",
                                    )
                                })?;
                            x.apply(&Event::EntryStart(h))?;
                        }
                        Op::Data(r) => x.apply(&Event::Data(&b.bytes[r.clone()]))?,
                        Op::End => x.apply(&Event::EntryEnd)?,
                    }
                }
                // The reading side may be gone; then the batch is simply freed.
                let _ = give_back.send(b);
            }
            Work::State(reply) => {
                let _ = reply.send(x.save());
            }
            Work::Finish => return Ok(true),
        }
    }
    Ok(false)
}

/// Bundle bytes between two early flushes.
const FLUSH_EVERY: u64 = 16 * 1024 * 1024;

/// A thread that starts the slot's writeback early: `syncfs` on its own handle of the
/// slot every [`FLUSH_EVERY`] bundle bytes, while the other two threads go on.
///
/// Without it the kernel holds the written pages until the final `syncfs` (its own
/// background writeback starts only at 10 % of RAM or after 30 s), so the disk idles
/// while the CPU decodes and the CPU idles while the disk writes. Purely a head start:
/// its errors are ignored, because the handle that wrote the slot flushes it again at
/// the end and reports any writeback error there (each open file description has its
/// own error cursor, so this handle does not consume it).
pub(super) struct Flusher {
    tx: Option<SyncSender<()>>,
    last: u64,
}

impl Flusher {
    /// Starts the thread in `scope` on a second handle of `slot` (none if durability is off
    /// or the handle cannot be opened: then there is simply no head start).
    pub(super) fn spawn<'scope, 'env>(
        scope: &'scope Scope<'scope, 'env>,
        slot: &crate::fsops::SlotDir,
    ) -> Flusher {
        let none = Flusher { tx: None, last: 0 };
        if !crate::durability::on() {
            return none;
        }
        let Ok(own) = crate::fsops::SlotDir::open(slot.path()) else {
            return none;
        };
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let started = std::thread::Builder::new()
            .name("molt-flusher".into())
            .spawn_scoped(scope, move || {
                for () in rx {
                    let _ = own.sync();
                }
            });
        match started {
            Ok(_) => Flusher {
                tx: Some(tx),
                last: 0,
            },
            Err(_) => none,
        }
    }

    /// Asks for a flush if the bundle advanced [`FLUSH_EVERY`] bytes since the last one
    /// (never waits: a flush still running absorbs the request).
    pub(super) fn poke(&mut self, position: u64) {
        if position.saturating_sub(self.last) < FLUSH_EVERY {
            return;
        }
        self.last = position;
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(());
        }
    }
}
