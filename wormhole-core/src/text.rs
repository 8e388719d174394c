//! Showing text that came from outside (node names, origins, messages of a peer source) without
//! letting it act on whoever reads it: [`Escaped`] writes control characters (ANSI escapes,
//! carriage returns, newlines that would forge a log line) and bidirectional-override characters
//! as Rust-style escapes, so a log line, a status table or an Event stays one honest line.
//!
//! ```
//! use wormhole_core::Escaped;
//! assert_eq!(Escaped("node-1").to_string(), "node-1");
//! assert_eq!(Escaped("a\u{1b}[2J\nb").to_string(), "a\\u{1b}[2J\\nb");
//! ```

use std::fmt::{self, Write as _};

/// Displays a string with control, bidi-override and backslash characters escaped.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

/// Whether `c` must not reach a terminal or a log line as it is.
fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        // Bidirectional embeddings, overrides and isolates ("Trojan Source"), line/paragraph
        // separators and the zero-width no-break space / BOM.
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().expect("found a char at `at`");
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c => write!(f, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// `text` with [`Escaped`]'s escapes, borrowed when there is nothing to escape.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(needs_escape) {
        let mut out = String::with_capacity(text.len() + 8);
        let _ = write!(out, "{}", Escaped(text));
        out.into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_acts_on_a_reader_is_escaped() {
        assert_eq!(
            Escaped("node-1.example, Zoë").to_string(),
            "node-1.example, Zoë"
        );
        assert_eq!(
            Escaped("a\\b\tc\r\n\u{7}\u{1b}[31m\u{9b}\u{202e}\u{2066}").to_string(),
            "a\\\\b\\tc\\r\\n\\u{7}\\u{1b}[31m\\u{9b}\\u{202e}\\u{2066}"
        );
        assert!(matches!(
            escape("plain"),
            std::borrow::Cow::Borrowed("plain")
        ));
        assert_eq!(escape("x\u{1b}"), "x\\u{1b}");
    }
}
