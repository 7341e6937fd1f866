//! How errors and panics are put into words, once for every actor: an error with its causes on one line, and
//! the message a panic carried.

use std::error::Error;
use std::fmt;

/// An error and its causes on one line, `outer: cause: root cause`, for logs and for people: each cause's
/// `Display` once (a cause already spelled out by the error before it is not repeated), never `Debug`.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = e.source();
        }
        f.write_str(&out)
    }
}

/// The message a panic carried (`panic!("...")` gives a `&str` or a `String`); other payloads say so.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic whose payload is not a string".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the store")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_is_one_line_of_displays() {
        let err = Outer(std::io::Error::other("disk full"));
        assert_eq!(ErrorChain(&err).to_string(), "cannot open the store: disk full");
    }

    #[test]
    fn a_panic_says_its_message() {
        let caught = std::panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        assert_eq!(panic_message(caught.as_ref()), "boom 7");
        let caught = std::panic::catch_unwind(|| std::panic::panic_any(3_u8)).unwrap_err();
        assert_eq!(
            panic_message(caught.as_ref()),
            "a panic whose payload is not a string"
        );
    }
}
