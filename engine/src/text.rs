//! Untrusted text shown to people: every control character escaped, so a path, a device name or a script's output can never move the cursor, recolour a terminal or forge a line.
//!
//! Bundles, devices and scripts all supply text that ends up on a terminal, in
//! a one-line file or in a log. A path holding `\n` and `ESC[` once forged an
//! "OK" line in `molt bundle verify`; device names with OSC sequences forged
//! rows in `molt devices`. Every such output goes through [`Escaped`]:
//!
//! * C0 and C1 control characters (and DEL) become `\n`, `\r`, `\t`, `\e` or
//!   `\u{9b}` style escapes;
//! * the bidirectional overrides and isolates (U+202A–U+202E, U+2066–U+2069),
//!   which reorder what a terminal shows ("Trojan Source"), are escaped too;
//!
//! Backslashes are left as they are: the escaped form of `a\nb` looks like the
//! text `a\nb`, which can mislead no terminal, and a field escaped twice (a table
//! cell, then the whole output) reads the same as once. [`Escaped::lines`] keeps
//! `\n` as a line break, for multi-line text such as a script's output (each
//! line is still safe on its own) and for the last pass over a whole output. Lives in the engine, with
//! no allocation, so every crate (and a microcontroller's console) shares it.

use core::fmt;

/// `text`, displayed with its control characters escaped.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a> {
    text: &'a str,
    keep_newlines: bool,
}

impl<'a> Escaped<'a> {
    /// One line: every control character escaped, `\n` included.
    pub fn new(text: &'a str) -> Self {
        Escaped {
            text,
            keep_newlines: false,
        }
    }

    /// Several lines: like [`Escaped::new`] but `\n` is kept as a line break.
    pub fn lines(text: &'a str) -> Self {
        Escaped {
            text,
            keep_newlines: true,
        }
    }
}

/// Whether a terminal acts on `c` rather than showing it: a control character or
/// a bidirectional override or isolate.
pub fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.text;
        let escape = |c: char| needs_escape(c) && !(self.keep_newlines && c == '\n');
        while let Some(i) = rest.find(escape) {
            let (plain, tail) = rest.split_at(i);
            f.write_str(plain)?;
            let mut chars = tail.chars();
            let Some(c) = chars.next() else { break };
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\u{1b}' => f.write_str("\\e")?,
                c => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = chars.as_str();
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn controls_are_escaped_and_plain_text_is_not() {
        assert_eq!(Escaped::new("plain/path é").to_string(), "plain/path é");
        assert_eq!(
            Escaped::new("a\nOK \u{1b}[32mgreen\u{7}\r\t\\").to_string(),
            "a\\nOK \\e[32mgreen\\u{7}\\r\\t\\"
        );
        // C1 controls (CSI as one character), DEL, and the bidi overrides.
        assert_eq!(
            Escaped::new("\u{9b}2J\u{7f}\u{202e}txt.exe").to_string(),
            "\\u{9b}2J\\u{7f}\\u{202e}txt.exe"
        );
        assert_eq!(
            Escaped::lines("one\ntwo\u{1b}]0;x\u{7}").to_string(),
            "one\ntwo\\e]0;x\\u{7}"
        );
    }
}
