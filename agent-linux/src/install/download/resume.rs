//! The download's resume checkpoint: when one is due, what it holds, and continuing from it after a restart.

use std::fs;
use std::time::{Duration, Instant};

use molt_engine::bundle::zstd::LibZstd;
use molt_engine::bundle::{Decoder, Event as BundleEvent, Manifest};
use molt_engine::slot::Status;
use molt_engine::update::{CauseKind, Plan};
use serde::{Deserialize, Serialize};

use super::{
    fs_failure, test_hook, Failure, Opened, Target, CHECKPOINT_BYTES, CHECKPOINT_MIN_MILLIS,
    CHECKPOINT_SECS,
};
use crate::fsops::{self, ExtractState, Extractor, TMP_PREFIX};
use crate::install::{layout, write_durable, Device};

/// What `staging/checkpoint` holds.
#[derive(Serialize, Deserialize)]
pub(super) struct Saved {
    /// The engine's checkpoint record (CRC-protected, bound to the bundle).
    decoder: Vec<u8>,
    extract: ExtractState,
    validator: Option<String>,
}

/// When the next checkpoint is due: after [`CHECKPOINT_BYTES`] of the bundle but not
/// sooner than [`CHECKPOINT_MIN_MILLIS`], or after [`CHECKPOINT_SECS`] while bytes
/// arrive.
pub(super) struct Cadence {
    last: u64,
    at: Instant,
    every: u64,
    min_gap: Duration,
}

impl Cadence {
    /// The cadence of a download that stands at byte `position` now.
    pub(super) fn new(position: u64) -> Cadence {
        let hook = test_hook("MOLT_TEST_CHECKPOINT_BYTES");
        // A checkpoint costs a syncfs, which waits for every byte written since the
        // last one: on a fast source it is cheaper to redo a second of work after a
        // power cut than to stall every 32 MiB (tests set the byte interval alone).
        let min_gap = if hook.is_some() {
            Duration::ZERO
        } else {
            Duration::from_millis(CHECKPOINT_MIN_MILLIS)
        };
        Cadence {
            last: position,
            at: Instant::now(),
            every: hook.unwrap_or(CHECKPOINT_BYTES),
            min_gap,
        }
    }

    pub(super) fn due(&self, position: u64) -> bool {
        let since = self.at.elapsed();
        (position - self.last >= self.every && since >= self.min_gap)
            || (since >= Duration::from_secs(CHECKPOINT_SECS) && position > self.last)
    }

    /// A checkpoint at `position` was saved.
    pub(super) fn saved(&mut self, position: u64) {
        self.last = position;
        self.at = Instant::now();
    }
}

impl Device {
    pub(super) fn load_checkpoint(&self) -> Option<(Vec<u8>, Saved)> {
        let head = fs::read(self.data.join(layout::HEAD)).ok()?;
        let bytes = fs::read(self.data.join(layout::CHECKPOINT)).ok()?;
        let saved: Saved = postcard::from_bytes(&bytes).ok()?;
        Some((head, saved))
    }

    pub(super) fn save_checkpoint(
        &self,
        target: &Target,
        decoder: &[u8],
        extract: ExtractState,
        validator: &Option<String>,
    ) -> Result<(), Failure> {
        // Durable data first: the checkpoint must never describe bytes still in the page cache.
        fsops::sync_tree(&target.dir).map_err(fs_failure)?;
        fsops::sync_tree(&target.staging).map_err(fs_failure)?;
        let saved = Saved {
            decoder: decoder.to_vec(),
            extract,
            validator: validator.clone(),
        };
        let bytes = postcard::to_allocvec(&saved)
            .map_err(|e| (CauseKind::Io, format!("cannot encode the checkpoint: {e}")))?;
        write_durable(&self.data.join(layout::CHECKPOINT), &bytes)
            .map_err(|e| (CauseKind::Io, format!("cannot save the checkpoint: {e}")))
    }

    /// Continues a download from `saved`, the bundle's stored first bytes `head` going
    /// through `dec` first. `Err` says why the checkpoint does not fit; the caller then
    /// downloads from the start.
    pub(super) fn resume_at<'d>(
        &self,
        source: &str,
        dec: &mut Decoder<'_, '_, LibZstd>,
        head: &[u8],
        saved: Saved,
        target: &'d Target,
        buf: &mut [u8],
    ) -> Result<Opened<'d>, String> {
        // The stored first bytes, verified again: the manifest must be the one the
        // record is staging, or this checkpoint is not ours.
        let mut rest = head;
        let mut verified = false;
        while !rest.is_empty() {
            let f = dec.feed(rest).map_err(|e| format!("stored head: {e}"))?;
            rest = &rest[f.consumed..];
            verified |= matches!(f.event, Some(BundleEvent::ManifestVerified { .. }));
        }
        if !verified {
            return Err("stored head holds no manifest".into());
        }
        let bytes = dec.manifest_bytes().to_vec();
        let m = Manifest::decode(&bytes).map_err(|e| format!("stored manifest: {e}"))?;
        let info = self.record.slot(target.slot);
        if info.status != Status::Staging || info.digest != m.entries.digest {
            return Err("the slot record stages another bundle".into());
        }
        if fs::read(self.data.join(layout::MANIFEST)).ok().as_deref() != Some(&bytes[..]) {
            return Err("the kept manifest differs".into());
        }
        let plan = Plan::from_recipe(&m.recipe);
        let resume = dec.resume(&saved.decoder).map_err(|e| e.to_string())?;
        // A crash leaves at most the temporary file being written when it struck; it
        // must not reach the snapshot. The checkpoint's own file in progress stays.
        let keep = saved.extract.pending_tmp();
        for (dir, is_staging) in [(&target.dir, false), (&target.staging, true)] {
            let k = keep
                .as_ref()
                .filter(|(s, _)| *s == is_staging)
                .map(|(_, p)| p.as_str());
            dir.remove_named(TMP_PREFIX, k).map_err(|e| e.to_string())?;
        }
        let extractor = Extractor::resume(&target.dir, &target.staging, &saved.extract)
            .map_err(|e| e.to_string())?;
        if resume.file_prefix != saved.extract.file_prefix() {
            return Err("decoder and extractor disagree".into());
        }
        let mut refused = None;
        extractor
            .read_pending(buf, |bytes| {
                if refused.is_none() {
                    refused = dec.rehash_prefix(bytes).err();
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        if let Some(e) = refused {
            return Err(e.to_string());
        }
        let src = self
            .open_source(source, resume.offset, saved.validator)
            .map_err(|e| format!("{e:#}"))?;
        let (chunk, chunks) = dec.chunk_progress();
        self.log(&format!(
            "resuming the download at byte {} (chunk {chunk} of {chunks}, {} bytes of the file in progress kept)",
            resume.offset, resume.file_prefix
        ));
        Ok(Opened {
            source: src,
            extractor,
            plan: Some(plan),
        })
    }
}
