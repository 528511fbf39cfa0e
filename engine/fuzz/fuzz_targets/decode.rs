//! Fuzz target `decode`: arbitrary bytes through the streaming bundle decoder, which must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    molt_engine::bundle::fuzz_decode(data);
});
