//! Reading upstream bodies within limits, in time linear in their size.
//!
//! An upstream is input from outside the worker: it may send one endless
//! line, an enormous event, or a reply without end. Every read here is
//! bounded by [`Limits`], and going over a limit fails the task with a
//! reason naming the limit and its flag. Lines are found by scanning each
//! received byte once (the scan resumes where the last one stopped), and a
//! line is cut off the buffer without copying the rest, so a 10 MiB line
//! costs what reading 10 MiB costs.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use rtq_core::HandlerError;

/// Size limits on what an upstream sends.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest line (SSE or NDJSON) in bytes.
    pub max_line: usize,
    /// Largest SSE event (all its `data:` lines) in bytes.
    pub max_event: usize,
    /// Largest chunk passed on to the client in bytes.
    pub max_chunk: usize,
    /// Largest response body in bytes (a JSON reply, a whole stream, an
    /// error body).
    pub max_body: u64,
}

impl Default for Limits {
    /// 2 MiB lines and events, 1 MiB chunks (rtq's chunk limit), 64 MiB
    /// bodies (rtq's output limit per attempt).
    fn default() -> Self {
        Self {
            max_line: 2 << 20,
            max_event: 2 << 20,
            max_chunk: rtq_core::protocol::MAX_CHUNK_BYTES,
            max_body: 64 << 20,
        }
    }
}

impl Limits {
    /// Fails a chunk over [`Limits::max_chunk`].
    ///
    /// # Errors
    /// A fatal [`HandlerError`] naming the limit.
    pub fn check_chunk(&self, len: usize) -> Result<(), HandlerError> {
        if len > self.max_chunk {
            return Err(HandlerError::fatal(format!(
                "upstream sent a chunk of {len} bytes, over the {}-byte chunk limit (--max-chunk-bytes)",
                self.max_chunk
            )));
        }
        Ok(())
    }
}

fn broke(e: reqwest::Error) -> HandlerError {
    HandlerError::retryable(format!(
        "upstream stream broke: {}",
        crate::upstream::describe(&e)
    ))
}

fn body_over(limit: u64) -> HandlerError {
    HandlerError::fatal(format!(
        "upstream response is over the {limit}-byte body limit (--max-body-bytes)"
    ))
}

/// Reads a whole body, failing past `limit` bytes (without reading on).
///
/// # Errors
/// Over the limit (fatal), or the connection broke (retryable).
pub async fn read_capped(resp: reqwest::Response, limit: u64) -> Result<Bytes, HandlerError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(body_over(limit));
    }
    let mut body = resp.bytes_stream();
    let mut out = BytesMut::new();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(broke)?;
        if (out.len() + piece.len()) as u64 > limit {
            return Err(body_over(limit));
        }
        out.extend_from_slice(&piece);
    }
    Ok(out.freeze())
}

/// An error body for a failure reason: at most `limit` bytes are read,
/// lossily decoded; a broken connection gives what arrived.
pub async fn error_text(resp: reqwest::Response, limit: usize) -> String {
    let mut body = resp.bytes_stream();
    let mut out = Vec::new();
    while let Some(Ok(piece)) = body.next().await {
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&piece[..piece.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits a byte stream into lines (`\n` or `\r\n`), each byte scanned
/// once.
pub struct Lines<S> {
    body: S,
    buf: BytesMut,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    /// Bytes received so far.
    received: u64,
    limits: Limits,
    ended: bool,
}

impl<S> Lines<S>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Unpin,
{
    /// Lines of `body` within `limits`.
    pub fn new(body: S, limits: Limits) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            scanned: 0,
            received: 0,
            limits,
            ended: false,
        }
    }

    /// The next line without its line ending; the last line may lack one.
    /// `None` at the end of the body.
    ///
    /// # Errors
    /// A line over [`Limits::max_line`] or a body over
    /// [`Limits::max_body`] (fatal), a broken connection (retryable).
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, HandlerError> {
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let end = self.scanned + i;
                self.scanned = 0;
                if end > self.limits.max_line {
                    return Err(self.line_over());
                }
                let mut line = self.buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                return Ok(Some(line.freeze()));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.limits.max_line {
                return Err(self.line_over());
            }
            if self.ended {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                self.scanned = 0;
                return Ok(Some(self.buf.split().freeze()));
            }
            match self.body.next().await {
                Some(piece) => {
                    let piece = piece.map_err(broke)?;
                    self.received += piece.len() as u64;
                    if self.received > self.limits.max_body {
                        return Err(body_over(self.limits.max_body));
                    }
                    self.buf.extend_from_slice(&piece);
                }
                None => self.ended = true,
            }
        }
    }

    fn line_over(&self) -> HandlerError {
        HandlerError::fatal(format!(
            "upstream sent a line longer than the {}-byte line limit (--max-line-bytes)",
            self.limits.max_line
        ))
    }
}

/// One server-sent event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; empty for the default ("message").
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Server-sent events (the WHATWG format: `event:`, `data:`, comments,
/// a blank line ends an event) within [`Limits`].
pub struct Events<S> {
    lines: Lines<S>,
}

impl<S> Events<S>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Unpin,
{
    /// Events of `body`.
    pub fn new(body: S, limits: Limits) -> Self {
        Self {
            lines: Lines::new(body, limits),
        }
    }

    /// The next event with data, or `None` at the end of the body.
    ///
    /// # Errors
    /// As [`Lines::next_line`], and an event over [`Limits::max_event`]
    /// (fatal).
    pub async fn next_event(&mut self) -> Result<Option<Event>, HandlerError> {
        let mut event = Event::default();
        let mut has_data = false;
        loop {
            let Some(line) = self.lines.next_line().await? else {
                return Ok(has_data.then_some(event));
            };
            if line.is_empty() {
                if has_data {
                    return Ok(Some(event));
                }
                event = Event::default();
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let line = String::from_utf8_lossy(&line);
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => event.event = value.to_string(),
                "data" => {
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                    has_data = true;
                    if event.data.len() > self.lines.limits.max_event {
                        return Err(HandlerError::fatal(format!(
                            "upstream sent an event larger than the {}-byte event limit (--max-event-bytes)",
                            self.lines.limits.max_event
                        )));
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[&str]) -> impl Stream<Item = Result<Bytes, reqwest::Error>> + Unpin {
        let parts: Vec<Result<Bytes, reqwest::Error>> = parts
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p.as_bytes())))
            .collect();
        futures::stream::iter(parts)
    }

    fn small() -> Limits {
        Limits {
            max_line: 8,
            max_event: 12,
            max_chunk: 4,
            max_body: 40,
        }
    }

    #[tokio::test]
    async fn lines_split_across_pieces_with_crlf_and_a_last_line_without_newline() {
        let mut lines = Lines::new(body(&["ab", "c\r\nde\n", "\nf"]), small());
        let mut got = Vec::new();
        while let Some(l) = lines.next_line().await.unwrap() {
            got.push(String::from_utf8(l.to_vec()).unwrap());
        }
        assert_eq!(got, ["abc", "de", "", "f"]);
    }

    #[tokio::test]
    async fn a_long_line_and_a_long_body_fail_with_the_limit_named() {
        let mut lines = Lines::new(body(&["12345", "6789"]), small());
        let err = lines.next_line().await.unwrap_err();
        assert!(err.message.contains("--max-line-bytes"), "{}", err.message);
        let mut lines = Lines::new(body(&["1234\n"; 9]), small());
        let err = loop {
            match lines.next_line().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the body limit was not applied"),
                Err(e) => break e,
            }
        };
        assert!(err.message.contains("--max-body-bytes"), "{}", err.message);
    }

    #[tokio::test]
    async fn events_join_data_lines_skip_comments_and_name_the_event() {
        let mut events = Events::new(
            body(&[
                ": hi\n",
                "data: a\ndata:b\n\n",
                "event: result\ndata: {}\n\n",
                "data: tail",
            ]),
            Limits::default(),
        );
        let mut got = Vec::new();
        while let Some(e) = events.next_event().await.unwrap() {
            got.push((e.event, e.data));
        }
        assert_eq!(
            got,
            [
                (String::new(), "a\nb".to_string()),
                ("result".into(), "{}".into()),
                (String::new(), "tail".into())
            ]
        );
    }

    #[tokio::test]
    async fn an_event_over_its_limit_fails() {
        let limits = Limits {
            max_line: 16,
            max_event: 10,
            ..small()
        };
        let mut events = Events::new(
            body(&["data: 1234\n", "data: 5678\n", "data: 9\n\n"]),
            limits,
        );
        let err = events.next_event().await.unwrap_err();
        assert!(err.message.contains("--max-event-bytes"), "{}", err.message);
        assert!(small().check_chunk(5).is_err() && small().check_chunk(4).is_ok());
    }
}
