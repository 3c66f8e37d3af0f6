//! Keeps secrets out of everything tally prints: every secret the config resolved is registered
//! here, and logs, start errors, `/metrics` and panic messages pass through [`redact`].

use std::borrow::Cow;
use std::io::Write;
use std::sync::RwLock;

/// What a secret's place says instead.
pub const MASK: &str = "<redacted>";

/// Shorter values are not masked in free text: a two-letter secret would blank out every word
/// holding those letters. The places that name a secret's key mask it whatever its length.
pub const MIN_MASKED_LEN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remembers a secret value so that no later output shows it.
pub fn register(secret: &str) {
    if secret.len() < MIN_MASKED_LEN {
        return;
    }
    let mut all = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    if !all.iter().any(|s| s == secret) {
        all.push(secret.to_string());
        // The longest first, so a secret that contains another is masked whole.
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every registered secret masked.
pub fn redact(text: &str) -> Cow<'_, str> {
    let all = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    let mut out = Cow::Borrowed(text);
    for s in all.iter() {
        if out.contains(s.as_str()) {
            out = Cow::Owned(out.replace(s.as_str(), MASK));
        }
    }
    out
}

/// The log writer: stderr, one event at a time, with secrets masked.
pub struct RedactingStderr {
    buf: Vec<u8>,
}

impl Write for RedactingStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buf);
        let masked = redact(&text);
        let result = std::io::stderr().lock().write_all(masked.as_bytes());
        self.buf.clear();
        result
    }
}

impl Drop for RedactingStderr {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// `tracing_subscriber`'s writer factory: a fresh buffer per event, written when it drops.
pub fn stderr() -> RedactingStderr {
    RedactingStderr {
        buf: Vec::with_capacity(256),
    }
}

/// Panic messages are masked too: a panic can quote whatever value it was handed.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let backtrace = std::backtrace::Backtrace::capture();
        let text = format!("thread '{name}' {info}\n{backtrace}");
        let _ = std::io::stderr()
            .lock()
            .write_all(redact(text.trim_end()).as_bytes());
        let _ = std::io::stderr().lock().write_all(b"\n");
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_secret_is_masked_wherever_it_appears() {
        register("hunter2-redact-test");
        let text = "auth failed for tally with hunter2-redact-test (twice: hunter2-redact-test)";
        let masked = redact(text);
        assert!(!masked.contains("hunter2-redact-test"), "{masked}");
        assert_eq!(masked.matches(MASK).count(), 2);
    }

    #[test]
    fn a_secret_holding_another_is_masked_whole() {
        register("outer-abcd-secret-redact");
        register("abcd");
        let masked = redact("x outer-abcd-secret-redact y");
        assert_eq!(masked, format!("x {MASK} y"));
    }

    #[test]
    fn text_without_secrets_is_not_copied() {
        register("never-in-this-text");
        assert!(matches!(redact("plain words"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_log_writer_masks_on_flush() {
        register("s3cr3t-writer-test");
        let mut w = stderr();
        w.write_all(b"password is s3cr3t-writer-test").unwrap();
        let masked = redact(&String::from_utf8_lossy(&w.buf)).into_owned();
        assert!(!masked.contains("s3cr3t-writer-test"));
        w.buf.clear();
    }
}
