//! The check that output printing untrusted text kept it inert: every control character and bidi override escaped, line breaks only where the output itself puts them.

/// Panics naming `what` unless every character of `out` but `\n` is one
/// `molt_engine::text::Escaped` would leave as it is.
pub fn assert_inert(what: &str, out: &str) {
    if let Some(c) = out
        .chars()
        .find(|&c| c != '\n' && molt_engine::text::needs_escape(c))
    {
        panic!("{what}: raw {c:?} in:\n{out}");
    }
}
