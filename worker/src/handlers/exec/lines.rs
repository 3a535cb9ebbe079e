//! Reading the exec child's output: lines capped in length (a longer line
//! is skipped, never buffered, but its start is kept so the attempt it
//! names can be told), and a limit on how many of its lines are logged.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Bytes kept of the start of an over-long line: enough for
/// `{"id":"<id>","attempt":<n>,` with any task id rtq makes.
pub(super) const PREFIX_KEPT: usize = 512;

/// A line read by [`CappedLines`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// A line (lossily decoded), without its newline.
    Text(String),
    /// A line over the limit, skipped; its first [`PREFIX_KEPT`] bytes.
    TooLong {
        /// The start of the line, lossily decoded.
        prefix: String,
    },
}

/// Lines of a child's output, each at most `max` bytes: a longer line is
/// skipped to its end (only its start is kept) and reported as
/// [`Line::TooLong`], and reading goes on with the next line. Cancel safe:
/// the partial line lives here, not in the `next` future.
pub(super) struct CappedLines<R> {
    reader: R,
    max: usize,
    buf: Vec<u8>,
    skipping: bool,
}

impl<R: AsyncBufRead + Unpin> CappedLines<R> {
    pub(super) fn new(reader: R, max: usize) -> Self {
        Self {
            reader,
            max,
            buf: Vec::new(),
            skipping: false,
        }
    }

    fn too_long(&mut self) -> Line {
        self.skipping = false;
        let prefix = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        Line::TooLong { prefix }
    }

    /// The next line; `None` at the end of the output.
    pub(super) async fn next(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                let line = if self.skipping {
                    Some(self.too_long())
                } else if self.buf.is_empty() {
                    None
                } else {
                    Some(Line::Text(String::from_utf8_lossy(&self.buf).into_owned()))
                };
                self.buf.clear();
                return Ok(line);
            }
            let newline = available.iter().position(|b| *b == b'\n');
            let take = newline.unwrap_or(available.len());
            if !self.skipping && self.buf.len() + take <= self.max {
                self.buf.extend_from_slice(&available[..take]);
            } else {
                if !self.skipping {
                    self.skipping = true;
                    self.buf.truncate(PREFIX_KEPT);
                }
                let room = PREFIX_KEPT.saturating_sub(self.buf.len()).min(take);
                self.buf.extend_from_slice(&available[..room]);
            }
            let consumed = newline.map_or(take, |i| i + 1);
            self.reader.consume(consumed);
            if newline.is_some() {
                if self.skipping {
                    return Ok(Some(self.too_long()));
                }
                let mut text = String::from_utf8_lossy(&self.buf).into_owned();
                if text.ends_with('\r') {
                    text.pop();
                }
                self.buf.clear();
                return Ok(Some(Line::Text(text)));
            }
        }
    }
}

/// The task id and attempt an over-long line starts with, if its start
/// reads `{"id":"...","attempt":N` (in either order, as the protocol's
/// lines do). A value with escapes is not read.
pub(super) fn attempt_of_prefix(prefix: &str) -> Option<(String, u64)> {
    /// The text after `"key"` and its colon.
    fn after_key<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        let at = text.find(&format!("\"{key}\""))?;
        text[at + key.len() + 2..]
            .trim_start()
            .strip_prefix(':')
            .map(str::trim_start)
    }
    let id = after_key(prefix, "id")?.strip_prefix('"')?;
    let id = &id[..id.find('"')?];
    if id.is_empty() || id.contains('\\') {
        return None;
    }
    let attempt = after_key(prefix, "attempt")?;
    let digits = attempt
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(attempt.len());
    let attempt = attempt[..digits].parse().ok()?;
    Some((id.to_string(), attempt))
}

/// At most `per_window` log lines per `window`; the rest are counted, and
/// the count is reported with the next line let through (or by
/// [`LogLimit::take_suppressed`]). A child writing megabytes of progress
/// bars to stderr must not flood the worker's log.
pub(super) struct LogLimit {
    per_window: u32,
    window: Duration,
    started: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    /// `per_window` lines per `window`.
    pub(super) fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            started: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether a line seen at `now` may be logged: `Some(k)` if so, where
    /// `k` lines were suppressed since the last one logged; `None` if it is
    /// suppressed.
    pub(super) fn admit(&mut self, now: Instant) -> Option<u64> {
        if now.duration_since(self.started) >= self.window {
            self.started = now;
            self.logged = 0;
        }
        if self.logged < self.per_window {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Lines suppressed and not yet reported (reported now).
    pub(super) fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn capped_lines_skip_a_long_line_but_keep_its_start_and_go_on() {
        let input: &[u8] = b"short\r\n0123456789abc\nnext\ntail";
        let mut lines = CappedLines::new(tokio::io::BufReader::with_capacity(4, input), 8);
        let mut got = Vec::new();
        while let Some(line) = lines.next().await.unwrap() {
            got.push(line);
        }
        let text = |t: &str| Line::Text(t.to_string());
        assert_eq!(
            got,
            [
                text("short"),
                Line::TooLong {
                    prefix: "0123456789abc".into()
                },
                text("next"),
                text("tail")
            ]
        );
        // The kept start is bounded, however long the line.
        let long = format!(
            "{{\"id\":\"t1\",\"attempt\":2,\"result\":\"{}\"}}\n",
            "r".repeat(100_000)
        );
        let mut lines = CappedLines::new(tokio::io::BufReader::new(long.as_bytes()), 1000);
        let Some(Line::TooLong { prefix }) = lines.next().await.unwrap() else {
            panic!("not reported as too long");
        };
        assert_eq!(prefix.len(), PREFIX_KEPT);
        assert_eq!(attempt_of_prefix(&prefix), Some(("t1".into(), 2)));
    }

    #[test]
    fn the_attempt_is_read_from_the_start_of_a_line() {
        let read = |p: &str| attempt_of_prefix(p);
        assert_eq!(
            read(r#"{"id":"abc","attempt":3,"chunk":"xx"#),
            Some(("abc".into(), 3))
        );
        assert_eq!(
            read(r#"{ "attempt" : 12 , "id" : "abc", "result"#),
            Some(("abc".into(), 12))
        );
        assert_eq!(read(r#"{"id":"abc","chunk":"zzzz"#), None, "no attempt yet");
        assert_eq!(read(r#"{"id":"a\"b","attempt":1"#), None);
        assert_eq!(read("zzzzzzzz"), None);
    }

    #[test]
    fn the_log_limit_lets_n_lines_a_window_through_and_counts_the_rest() {
        let mut limit = LogLimit::new(2, Duration::from_secs(1));
        let t0 = limit.started;
        assert_eq!(limit.admit(t0), Some(0));
        assert_eq!(limit.admit(t0), Some(0));
        assert_eq!(limit.admit(t0), None);
        assert_eq!(limit.admit(t0 + Duration::from_millis(500)), None);
        // The next window: the first line through carries the count.
        assert_eq!(limit.admit(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(limit.admit(t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(limit.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(limit.take_suppressed(), 1);
        assert_eq!(limit.take_suppressed(), 0);
    }
}
