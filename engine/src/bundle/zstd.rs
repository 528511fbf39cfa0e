//! The zstd seam: a `Decompressor` trait, the frame check both backends share, and the two backends.
//!
//! Each payload chunk is exactly one independent zstd frame. Before any backend
//! sees a chunk, [`check_frame`] insists on a plain frame with no dictionary, a
//! declared content size (the caller compares it with the signed chunk size), a
//! window no larger than the limits allow, and block headers that end exactly
//! at the chunk's end, so a decompression bomb never reaches the decoder. Both
//! backends decode every frame they are given, one after the other: a second
//! frame (a skippable one hiding bytes in a signed bundle, or an empty one
//! declaring a 96 MiB window that ruzstd would allocate) is refused here, by
//! the walk, without decompressing anything. Output goes into a slice of
//! exactly the signed size, so a frame cannot inflate past it either.

/// A backend failed to decompress a frame (corrupt data, or more output than `dst` holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecompressError;

/// A zstd decoder that turns one complete frame into bytes.
pub trait Decompressor {
    /// Decompresses the single frame `src` into `dst`, returning how many bytes were written.
    /// Must fail (never write beyond `dst`) if the frame needs more room.
    fn decompress_frame(&mut self, src: &[u8], dst: &mut [u8]) -> Result<usize, DecompressError>;
}

/// What the frame header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Declared decompressed size.
    pub content_size: u64,
    /// Window the decoder would need.
    pub window_size: u64,
}

const ZSTD_MAGIC: u32 = 0xFD2F_B528;

/// The largest block a frame may hold (RFC 8878, 3.1.1.2.4: `Block_Maximum_Size`).
const MAX_BLOCK: usize = 128 << 10;

/// Checks that `frame` is exactly one zstd frame (RFC 8878, section 3.1.1): its
/// header, then its block headers walked to the last block and the optional
/// checksum, which must end exactly at the end of `frame`. Reads no compressed
/// data: cheap enough for a chain-only check.
pub fn check_frame(frame: &[u8], max_window: u64) -> Result<FrameInfo, &'static str> {
    let (info, header_len, checksum) = check_frame_header(frame, max_window)?;
    let mut pos = header_len;
    loop {
        let h = frame
            .get(pos..pos + 3)
            .ok_or("zstd frame cut short in a block header")?;
        let (b0, b1, b2) = match *h {
            [b0, b1, b2] => (b0, b1, b2),
            _ => return Err("zstd frame cut short in a block header"),
        };
        let h = u32::from(b0) | u32::from(b1) << 8 | u32::from(b2) << 16;
        pos += 3;
        let size = (h >> 3) as usize;
        if size > MAX_BLOCK {
            return Err("zstd block larger than 128 KiB");
        }
        pos += match (h >> 1) & 3 {
            // Raw and compressed blocks carry `size` bytes; an RLE block one byte
            // repeated `size` times.
            0 | 2 => size,
            1 => 1,
            _ => return Err("zstd block of the reserved type"),
        };
        if pos > frame.len() {
            return Err("zstd frame cut short in a block");
        }
        if h & 1 != 0 {
            break;
        }
    }
    if checksum {
        pos += 4;
    }
    if pos != frame.len() {
        return Err(if pos > frame.len() {
            "zstd frame cut short in its checksum"
        } else {
            "bytes after the zstd frame (a chunk is exactly one frame)"
        });
    }
    Ok(info)
}

/// Parses and checks a zstd frame header (RFC 8878, section 3.1.1.1): what it
/// says, the header's length, and whether a content checksum ends the frame.
fn check_frame_header(
    frame: &[u8],
    max_window: u64,
) -> Result<(FrameInfo, usize, bool), &'static str> {
    let magic = frame
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or("zstd frame shorter than its header")?;
    if magic != ZSTD_MAGIC {
        return Err("not a zstd frame (skippable or foreign frames are refused)");
    }
    let fhd = *frame.get(4).ok_or("zstd frame shorter than its header")?;
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    if fhd & 0x08 != 0 {
        return Err("zstd frame header has its reserved bit set");
    }
    if fhd & 0x03 != 0 {
        return Err("zstd dictionaries are refused");
    }
    let mut pos = 5;
    let mut window: Option<u64> = None;
    if !single_segment {
        let wd = *frame.get(pos).ok_or("zstd frame shorter than its header")?;
        pos += 1;
        let exponent = u64::from(wd >> 3);
        let mantissa = u64::from(wd & 7);
        if exponent > 31 {
            return Err("zstd window too large");
        }
        let base = 1u64 << (10 + exponent);
        window = Some(base + (base / 8) * mantissa);
    }
    let fcs_len = match (fcs_flag, single_segment) {
        (0, false) => 0,
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    if fcs_len == 0 {
        return Err("zstd frame does not declare its content size");
    }
    let fcs_bytes = frame
        .get(pos..pos + fcs_len)
        .ok_or("zstd frame shorter than its header")?;
    let mut le = [0u8; 8];
    if let Some(dst) = le.get_mut(..fcs_len) {
        dst.copy_from_slice(fcs_bytes);
    }
    let mut content_size = u64::from_le_bytes(le);
    if fcs_len == 2 {
        content_size += 256;
    }
    let window_size = window.unwrap_or(content_size);
    if window_size > max_window {
        return Err("zstd window larger than the chunk size limit");
    }
    let info = FrameInfo {
        content_size,
        window_size,
    };
    Ok((info, pos + fcs_len, fhd & 0x04 != 0))
}

/// The pure-Rust backend (ruzstd), for targets without libzstd.
#[cfg(feature = "ruzstd")]
pub struct RuZstd {
    inner: ruzstd::decoding::FrameDecoder,
}

#[cfg(feature = "ruzstd")]
impl RuZstd {
    /// A decoder; its window buffer is allocated per frame, bounded by the checked window.
    pub fn new() -> Self {
        RuZstd {
            inner: ruzstd::decoding::FrameDecoder::new(),
        }
    }
}

#[cfg(feature = "ruzstd")]
impl Default for RuZstd {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "ruzstd")]
impl Decompressor for RuZstd {
    fn decompress_frame(&mut self, src: &[u8], dst: &mut [u8]) -> Result<usize, DecompressError> {
        self.inner.decode_all(src, dst).map_err(|_| DecompressError)
    }
}

/// The libzstd backend (the C library through the `zstd` crate), used by the Linux agent for speed.
#[cfg(feature = "libzstd")]
pub struct LibZstd {
    inner: zstd::bulk::Decompressor<'static>,
}

#[cfg(feature = "libzstd")]
impl LibZstd {
    /// A decoder context, reused across frames.
    pub fn new() -> std::io::Result<Self> {
        Ok(LibZstd {
            inner: zstd::bulk::Decompressor::new()?,
        })
    }
}

#[cfg(feature = "libzstd")]
impl Decompressor for LibZstd {
    fn decompress_frame(&mut self, src: &[u8], dst: &mut [u8]) -> Result<usize, DecompressError> {
        self.inner
            .decompress_to_buffer(src, dst)
            .map_err(|_| DecompressError)
    }
}
