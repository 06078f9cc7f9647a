//! Text from the user's files or from model code made safe to print: the one definition of the
//! characters that must not reach a terminal or a document as themselves, used by the config's error
//! snippets, every report format and the command line.
use std::borrow::Cow;

/// Whether `c` must not reach a terminal or a document as itself: control characters (C0 but tab and
/// line feed, DEL, C1: they drive terminals, `ESC [` and `CSI` among them) and Unicode noncharacters
/// (U+FDD0..U+FDEF, U+xxFFFE, U+xxFFFF: not allowed or discouraged in XML, meaningless as text).
pub fn is_hidden_char(c: char) -> bool {
    let u = c as u32;
    (c.is_control() && c != '\n' && c != '\t')
        || (0xFDD0..=0xFDEF).contains(&u)
        || (u & 0xFFFE) == 0xFFFE
}

/// The way a hidden character is written instead: `\x1b` below U+0080, `\u{ffff}` above.
pub fn escaped_char(c: char) -> String {
    let u = c as u32;
    if u < 0x80 {
        format!("\\x{u:02x}")
    } else {
        format!("\\u{{{u:x}}}")
    }
}

/// Text from the user's files or from model code (exception messages, column names, keys) made safe to
/// print: every [`is_hidden_char`] becomes its visible escape (`ESC [31m` prints as `\x1b[31m`), so
/// that the text neither drives the terminal nor hides what it says.
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_hidden_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_hidden_char(c) {
            out.push_str(&escaped_char(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}
