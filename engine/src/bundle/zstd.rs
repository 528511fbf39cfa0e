//! The zstd seam: a `Decompressor` trait, the frame-header check both backends share, and the two backends.
//!
//! Each payload chunk is one independent zstd frame. Before any backend sees a
//! frame, [`check_frame_header`] insists on a plain frame with no dictionary,
//! a declared content size equal to the signed chunk size and a window no
//! larger than the limits allow, so a decompression bomb never reaches the
//! decoder. Output goes into a slice of exactly the signed size, so a frame
//! cannot inflate past it either.

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

/// Parses and checks a zstd frame header (RFC 8878, section 3.1.1).
pub fn check_frame_header(frame: &[u8], max_window: u64) -> Result<FrameInfo, &'static str> {
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
    Ok(FrameInfo {
        content_size,
        window_size,
    })
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
