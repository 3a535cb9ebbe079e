//! Streaming completions whose model is slow to start, against a real
//! stack: the response starts (and keep-alive comments flow) before the
//! first token, and a late error arrives as the stream's last event.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use support::{parse_sse, Stack, SLEEPY};

fn chat(content: &str) -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": content}], "stream": true})
}

#[tokio::test]
async fn a_stream_sends_keep_alive_comments_before_a_slow_first_token() {
    let s = Stack::start(&[], &["--keepalive-secs", "1"]).await;
    let asked = Instant::now();
    let r = s
        .post("k-all", "/v1/chat/completions", chat("sleepy a b"))
        .await;
    let head = asked.elapsed();
    assert_eq!(r.status(), 200);
    assert!(
        head < SLEEPY - Duration::from_millis(500),
        "head after {head:?}"
    );
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let mut first_bytes = None;
    while !text.contains("data:") {
        let part = body.next().await.expect("the stream ended").unwrap();
        first_bytes.get_or_insert(asked.elapsed());
        text.push_str(&String::from_utf8_lossy(&part));
    }
    let first_bytes = first_bytes.unwrap();
    assert!(
        first_bytes < SLEEPY - Duration::from_millis(500),
        "first bytes after {first_bytes:?}"
    );
    let before_token = &text[..text.find("data:").unwrap()];
    assert!(
        before_token.lines().filter(|l| l.starts_with(':')).count() >= 2,
        "no keep-alive comments before the first token: {text:?}"
    );
    while let Some(part) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&part.unwrap()));
    }
    let events = parse_sse(&text);
    assert_eq!(events.last().unwrap().2, "[DONE]", "{text}");
    let content: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| {
            serde_json::from_str::<Value>(&e.2).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "sleepy a b ");
}

#[tokio::test]
async fn an_error_after_the_stream_started_is_its_last_event() {
    let s = Stack::start(&[], &["--keepalive-secs", "1"]).await;
    let r = s
        .post("k-all", "/v1/chat/completions", chat("sleepy refuse"))
        .await;
    assert_eq!(r.status(), 200);
    let events = parse_sse(&r.text().await.unwrap());
    let last: Value = serde_json::from_str(&events.last().unwrap().2).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refuses"),
        "{events:?}"
    );
    assert!(events.iter().all(|e| e.2 != "[DONE]"), "{events:?}");
    // A refusal that comes at once still gets its status.
    let r = s
        .post("k-all", "/v1/chat/completions", chat("refuse"))
        .await;
    assert_eq!(r.status(), 502);
}
