//! A chunk's digest, BLAKE3(header ‖ frame), hashed in two steps: the frame as soon as it is compressed, the 40-byte header once the chain reaches it.
//!
//! Why: a chunk header carries the digest of the *next* chunk, so the encoder
//! can only compute digests from the last chunk back, after every frame exists.
//! Re-reading and hashing the whole payload then was a serial pass at the end of
//! every build. But BLAKE3 is a tree over 1 KiB chunks, and the header sits
//! entirely inside the first one: every other subtree depends on the frame
//! alone. [`FrameHash::new`] hashes those subtrees while the frame is in memory
//! (on the spooling thread, beside compression) and keeps the first 984 frame
//! bytes; [`FrameHash::digest`] then costs one 1 KiB chunk and a few parent
//! nodes. The tree shape follows section 2.1 of the BLAKE3 paper, and the tests
//! compare the result with `blake3::hash` of the joined bytes.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use blake3::{Hasher, CHUNK_LEN};

use crate::bundle::format::{Digest, CHUNK_HEADER_LEN};

/// Frame bytes that share the first BLAKE3 chunk with the header.
const HEAD: usize = CHUNK_LEN - CHUNK_HEADER_LEN;

/// What a chunk's digest needs of its frame, computed before its header is known.
pub(crate) struct FrameHash {
    /// The frame's first bytes (all of it if it is short): hashed with the header.
    head: Vec<u8>,
    /// Chaining values of the subtrees right of the first chunk, bottom up: the
    /// siblings on the path from the first chunk to the root, the root's right
    /// subtree last. Empty when header and frame fit in one chunk.
    right: Vec<ChainingValue>,
}

impl FrameHash {
    /// Hashes every part of `header ‖ frame` that does not depend on the header.
    pub fn new(frame: &[u8]) -> FrameHash {
        let total = (CHUNK_HEADER_LEN + frame.len()) as u64;
        let head = frame.get(..HEAD).unwrap_or(frame).to_vec();
        let mut right = Vec::new();
        if total > CHUNK_LEN as u64 {
            // The subtree of the input bytes `start..end`, which are frame bytes
            // shifted by the header's length.
            let cv = |start: u64, end: u64| -> ChainingValue {
                let at = |x: u64| (x as usize).saturating_sub(CHUNK_HEADER_LEN);
                let bytes = frame.get(at(start)..at(end)).unwrap_or(&[]);
                Hasher::new()
                    .set_input_offset(start)
                    .update(bytes)
                    .finalize_non_root()
            };
            // The root joins a left subtree of a power of two chunks with the rest;
            // inside the left one, the first chunk's siblings double in size.
            let left = left_subtree_len(total);
            let mut size = CHUNK_LEN as u64;
            while size < left {
                right.push(cv(size, 2 * size));
                size *= 2;
            }
            right.push(cv(left, total));
        }
        FrameHash { head, right }
    }

    /// The chunk's digest, BLAKE3(`header` ‖ frame).
    pub fn digest(&self, header: &[u8; CHUNK_HEADER_LEN]) -> Digest {
        let mut first = Hasher::new();
        first.update(header).update(&self.head);
        let Some((root_right, path)) = self.right.split_last() else {
            // One chunk in all: it is the root.
            return *first.finalize().as_bytes();
        };
        let mut cv = first.finalize_non_root();
        for sibling in path {
            cv = merge_subtrees_non_root(&cv, sibling, Mode::Hash);
        }
        *merge_subtrees_root(&cv, root_right, Mode::Hash).as_bytes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn equals_blake3_of_header_and_frame_at_every_shape() {
        let mut header = [0u8; CHUNK_HEADER_LEN];
        for (i, b) in header.iter_mut().enumerate() {
            *b = i as u8 ^ 0x5a;
        }
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        // Empty, around every chunk and power-of-two boundary up to 64 KiB, and large.
        let mut lens = vec![0usize, 1, HEAD - 1, HEAD, HEAD + 1];
        let mut p = CHUNK_LEN;
        while p <= 64 * CHUNK_LEN {
            for d in [p - 1, p, p + 1] {
                lens.extend([d - CHUNK_HEADER_LEN, d - CHUNK_HEADER_LEN + 1]);
            }
            p *= 2;
        }
        lens.extend([3 * CHUNK_LEN + 17, 100_000, 299_999, 300_000]);
        for len in lens {
            let frame = &data[..len];
            let mut joined = header.to_vec();
            joined.extend_from_slice(frame);
            assert_eq!(
                FrameHash::new(frame).digest(&header),
                *blake3::hash(&joined).as_bytes(),
                "frame of {len} bytes"
            );
        }
    }
}
