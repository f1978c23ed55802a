//! Where a plugin's stdout, stderr and log lines go: through the execution's
//! masking, prefixed with the task id, bounded in size, to the operator's
//! stream (the host's stderr for the CLI).
//!
//! Control characters in plugin text are shown escaped, as `cat -v` and
//! `journalctl` do (`ESC` as `^[`, a carriage return as `^M`), so a plugin
//! cannot move the operator's cursor, retitle the terminal or forge a host
//! line. Text is masked first and cut to the output budget after, so a cut
//! can never split a secret in two.
//!
//! Invariant: plugin bytes reach the sink only after `mask` has seen them,
//! and only with their control characters escaped.

use crate::mask::{MaskSet, StreamMasker};
use bytes::Bytes;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The operator-facing stream plugin output is written to.
pub type Sink = Arc<Mutex<dyn Write + Send>>;

/// A sink writing to the host process's stderr.
pub fn stderr_sink() -> Sink {
    Arc::new(Mutex::new(std::io::stderr()))
}

/// A `tracing` writer for the host's own diagnostics: each event is masked
/// with `masks` before it reaches stderr, so a value can never slip out
/// through a host log line either.
#[derive(Debug, Clone)]
pub struct MaskedStderr(pub Arc<MaskSet>);

/// One event's bytes, masked and written when dropped.
#[derive(Debug)]
pub struct MaskedEvent {
    buf: Vec<u8>,
    masks: Arc<MaskSet>,
}

impl Write for MaskedEvent {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskedEvent {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let masked = self.masks.mask(&text);
        // A host diagnostic may quote plugin text: escape it too, newlines
        // included, so that text cannot add a line of its own (the final
        // newline of the event stays).
        let body = masked.strip_suffix('\n').unwrap_or(&masked);
        let mut line = one_line(body).into_owned().into_bytes();
        line.push(b'\n');
        let _ = std::io::stderr().lock().write_all(&line);
    }
}

/// Shows control characters the way `cat -v` does: `^[` for ESC, `^M` for a
/// carriage return, `^?` for DEL, `<U+009B>` for a C1 control. Newlines and
/// tabs pass.
pub fn escape_controls(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let c1 = |i: usize| bytes[i] == 0xC2 && bytes.get(i + 1).is_some_and(|b| (0x80..=0x9F).contains(b));
    let plain = |b: u8| b >= 0x20 && b != 0x7F || b == b'\n' || b == b'\t';
    if bytes.iter().all(|&b| plain(b)) && !(0..bytes.len()).any(c1) {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if c1(i) {
            out.extend_from_slice(format!("<U+{:04X}>", bytes[i + 1]).as_bytes());
            i += 2;
            continue;
        }
        match b {
            0x7F => out.extend_from_slice(b"^?"),
            _ if !plain(b) => out.extend_from_slice(&[b'^', b + 0x40]),
            _ => out.push(b),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// [`escape_controls`] for text shown within one line (a listing's cell, a
/// task's error in a summary): newlines and tabs are escaped too (`^J`,
/// `^I`), so plugin text can neither move the cursor nor start a line that
/// looks like the host's own.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    // Controls were replaced by ASCII text: still UTF-8.
    let shown = String::from_utf8_lossy(&escape_controls(text.as_bytes())).into_owned();
    std::borrow::Cow::Owned(shown.replace('\n', "^J").replace('\t', "^I"))
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MaskedStderr {
    type Writer = MaskedEvent;
    fn make_writer(&'a self) -> MaskedEvent {
        MaskedEvent { buf: Vec::new(), masks: self.0.clone() }
    }
}

/// Plugin output channels of one task.
#[derive(Clone)]
pub struct TaskOutput {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for TaskOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskOutput").finish_non_exhaustive()
    }
}

struct State {
    label: String,
    sink: Sink,
    masks: Arc<MaskSet>,
    budget: usize,
    used: usize,
    truncated: bool,
    channels: [Channel; 2],
}

#[derive(Default)]
struct Channel {
    masker: StreamMasker,
    at_line_start: bool,
}

/// Which standard stream a writer feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The plugin's stdout.
    Stdout = 0,
    /// The plugin's stderr.
    Stderr = 1,
}

impl State {
    /// Ends the half-written line of every channel but `except`, so that
    /// lines from different channels never run into each other.
    fn break_lines(&mut self, except: Option<usize>, buf: &mut Vec<u8>) {
        for (i, ch) in self.channels.iter_mut().enumerate() {
            if Some(i) != except && !ch.at_line_start {
                buf.push(b'\n');
                ch.at_line_start = true;
            }
        }
    }

    fn emit_lines(&mut self, stream: usize, masked: &[u8]) {
        if masked.is_empty() {
            return;
        }
        let mut buf = Vec::with_capacity(masked.len() + self.label.len() + 4);
        self.break_lines(Some(stream), &mut buf);
        for piece in masked.split_inclusive(|&b| b == b'\n') {
            if self.channels[stream].at_line_start {
                buf.extend_from_slice(self.label.as_bytes());
            }
            buf.extend_from_slice(piece);
            self.channels[stream].at_line_start = piece.ends_with(b"\n");
        }
        // A closed or full operator stream must not fail the task.
        let _ = self.sink.lock().unwrap_or_else(|p| p.into_inner()).write_all(&buf);
    }

    /// Takes `n` bytes from the budget; returns how many may pass.
    fn charge(&mut self, n: usize) -> usize {
        let allowed = n.min(self.budget - self.used);
        self.used += allowed;
        allowed
    }

    fn cut_off(&mut self) {
        if self.truncated {
            return;
        }
        // Held-back bytes may be the start of a secret: from here on
        // `write` and `finish` see `truncated` and never release them.
        self.truncated = true;
        let note = format!(
            "\n{}[keyhole] output limit of {} bytes reached; further plugin output is dropped\n",
            self.label, self.budget
        );
        let _ = self.sink.lock().unwrap_or_else(|p| p.into_inner()).write_all(note.as_bytes());
    }

    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        if self.truncated {
            return;
        }
        let matcher = self.masks.matcher();
        let mut out = Vec::with_capacity(bytes.len() + 8);
        self.channels[stream as usize].masker.push(&matcher, bytes, &mut out);
        self.emit_budgeted(stream as usize, &out);
    }

    /// Escapes masked bytes, then emits as much as the budget allows.
    fn emit_budgeted(&mut self, stream: usize, masked: &[u8]) {
        let shown = escape_controls(masked);
        let allowed = self.charge(shown.len());
        self.emit_lines(stream, &shown[..allowed]);
        if allowed < shown.len() {
            self.cut_off();
        }
    }
}

impl TaskOutput {
    /// Output for the task labelled `task_id`, masked with `masks`, at most
    /// `budget` plugin bytes in all.
    pub fn new(task_id: &str, sink: Sink, masks: Arc<MaskSet>, budget: usize) -> Self {
        let channel = || Channel { masker: StreamMasker::default(), at_line_start: true };
        TaskOutput {
            state: Arc::new(Mutex::new(State {
                label: format!("[{task_id}] "),
                sink,
                masks,
                budget,
                used: 0,
                truncated: false,
                channels: [channel(), channel()],
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes plugin bytes to `stream`.
    pub fn write(&self, stream: Stream, bytes: &[u8]) {
        self.lock().write(stream, bytes);
    }

    /// Emits one log line from the plugin.
    pub fn log(&self, level: &str, message: &str) {
        let mut st = self.lock();
        if st.truncated {
            return;
        }
        let masked = st.masks.mask(message).into_owned();
        let shown = escape_controls(masked.as_bytes()).into_owned();
        let allowed = st.charge(shown.len());
        let masked = String::from_utf8_lossy(&shown[..allowed]).into_owned();
        let mut buf = Vec::new();
        st.break_lines(None, &mut buf);
        for line in masked.split('\n') {
            buf.extend_from_slice(st.label.as_bytes());
            buf.extend_from_slice(level.as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
        let _ = st.sink.lock().unwrap_or_else(|p| p.into_inner()).write_all(&buf);
        if allowed < shown.len() {
            st.cut_off();
        }
    }

    /// Flushes held-back bytes and ends unterminated lines. Call once the
    /// plugin has stopped.
    pub fn finish(&self) {
        let mut st = self.lock();
        if st.truncated {
            return;
        }
        for i in 0..2 {
            let mut out = Vec::new();
            if st.channels[i].masker.has_pending() {
                let matcher = st.masks.matcher();
                st.channels[i].masker.finish(&matcher, &mut out);
            }
            st.emit_budgeted(i, &out);
            if st.truncated {
                return;
            }
            if !st.channels[i].at_line_start {
                st.emit_lines(i, b"\n");
            }
        }
    }

    /// A WASI stdout/stderr stream feeding `stream`.
    pub fn stream(&self, stream: Stream) -> PluginStream {
        PluginStream { out: self.clone(), stream }
    }

    /// Plugin bytes accepted so far.
    pub fn bytes_used(&self) -> usize {
        self.lock().used
    }
}

/// The WASI side of one channel.
#[derive(Debug, Clone)]
pub struct PluginStream {
    out: TaskOutput,
    stream: Stream,
}

impl IsTerminal for PluginStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Writes accepted at once; large writes are fine since the budget, not
/// backpressure, bounds output.
const WRITE_WINDOW: usize = 64 * 1024;

#[wasmtime_wasi::async_trait]
impl Pollable for PluginStream {
    async fn ready(&mut self) {}
}

impl OutputStream for PluginStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.out.write(self.stream, &bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_WINDOW)
    }
}

impl tokio::io::AsyncWrite for PluginStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.out.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A WASI command's stdout, kept (up to `limit` bytes) to become its output
/// document. Masking happens where every output is masked, once the
/// program has stopped; past the limit the stream reports itself closed
/// and [`Captured::overflowed`] says so.
#[derive(Clone)]
pub struct Captured {
    inner: Arc<Mutex<CapturedBytes>>,
}

struct CapturedBytes {
    bytes: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captured").finish_non_exhaustive()
    }
}

impl Captured {
    /// Keeps at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Captured { inner: Arc::new(Mutex::new(CapturedBytes { bytes: Vec::new(), limit, overflowed: false })) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CapturedBytes> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends what fits; false once the limit is passed.
    fn push(&self, b: &[u8]) -> bool {
        let mut c = self.lock();
        if c.overflowed || c.bytes.len() + b.len() > c.limit {
            c.overflowed = true;
            return false;
        }
        c.bytes.extend_from_slice(b);
        true
    }

    /// Everything written, unmasked: mask before it is shown.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().bytes)
    }

    /// Whether the program wrote more than the limit.
    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Captured {
    async fn ready(&mut self) {}
}

impl OutputStream for Captured {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.push(&bytes) { Ok(()) } else { Err(wasmtime_wasi::p2::StreamError::Closed) }
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        if self.overflowed() { Err(wasmtime_wasi::p2::StreamError::Closed) } else { Ok(WRITE_WINDOW) }
    }
}

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.push(buf) {
            Poll::Ready(Ok(buf.len()))
        } else {
            Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "stdout is over the output limit")))
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretValue;

    fn capture() -> (Sink, Arc<Mutex<Vec<u8>>>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        struct W(Arc<Mutex<Vec<u8>>>);
        impl Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        (Arc::new(Mutex::new(W(buf.clone()))), buf)
    }

    #[test]
    fn prefixes_lines_and_masks_across_writes() {
        let masks = Arc::new(MaskSet::new());
        masks.add(&SecretValue::new("s3cr3t-value".into()));
        let (sink, buf) = capture();
        let out = TaskOutput::new("sign", sink, masks, 1 << 20);
        out.write(Stream::Stdout, b"one s3cr3t-");
        out.write(Stream::Stdout, b"value two\nthree");
        out.log("INFO", "log s3cr3t-value");
        out.finish();
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "[sign] one *** two\n[sign] three\n[sign] INFO log ***\n");
    }

    #[test]
    fn control_characters_are_shown_escaped_and_masking_comes_before_the_cut() {
        let masks = Arc::new(MaskSet::new());
        masks.add(&SecretValue::new("0123456789-secret".into()));
        let (sink, buf) = capture();
        let out = TaskOutput::new("t", sink, masks, 20);
        out.write(Stream::Stdout, b"\x1b]0;pwned\x07\r");
        out.log("INFO", "0123456789-secret");
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("[t] ^[]0;pwned^G^M\n[t] INFO"), "{text:?}");
        assert!(!text.contains("0123456789"), "a secret cut at the budget must not leak its start: {text:?}");
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
        assert_eq!(escape_controls("a\u{9b}b\tc\n".as_bytes()).as_ref(), b"a<U+009B>b\tc\n");
    }

    proptest::proptest! {
        /// Whatever a plugin puts in text shown on one line, what is shown
        /// has no control character (so no cursor move, no new line, no
        /// terminal command), and text without one is shown as it is.
        #[test]
        fn one_line_shows_no_control_character(text in "(\\PC|\\p{Cc}|\u{9b}|\n|\t){0,40}") {
            let shown = one_line(&text);
            proptest::prop_assert!(!shown.chars().any(char::is_control), "{:?} -> {:?}", text, shown);
            if !text.chars().any(char::is_control) {
                proptest::prop_assert_eq!(shown.as_ref(), text.as_str());
            }
        }
    }

    #[test]
    fn output_is_bounded_and_says_so() {
        let (sink, buf) = capture();
        let out = TaskOutput::new("t", sink, Arc::new(MaskSet::new()), 10);
        out.write(Stream::Stderr, b"0123456789abcdef\n");
        out.write(Stream::Stdout, b"more\n");
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("[t] 0123456789\n[t] [keyhole] output limit of 10 bytes"), "{text}");
        assert!(!text.contains("more"));
        assert_eq!(out.bytes_used(), 10);
    }
}
