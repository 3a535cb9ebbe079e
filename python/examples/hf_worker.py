"""A Python rtq worker wrapping a Hugging Face-style ``generate`` loop.

The model here is a stub that ships with the example (no weights are
downloaded): it has the shape of ``transformers`` code - a tokenizer, a
``model.generate(input_ids, max_new_tokens=..., streamer=...,
stopping_criteria=...)`` call that blocks while it produces tokens, and a
``TextIteratorStreamer``-like streamer that hands decoded text to another
thread. Swap ``StubTokenizer``/``StubModel`` for
``AutoTokenizer``/``AutoModelForCausalLM`` and the worker is unchanged.

What the worker shows:
- the blocking ``generate`` runs in a thread; the handler (a sync
  generator, run in rtq's handler thread pool) yields text chunks as the
  streamer produces them, then ``rtq.Result`` with the usage;
- a cancel (client cancel, deadline, shutdown) stops generation between
  two tokens through a stopping criterion that reads ``task.cancelled``;
- SIGTERM drains: running generations finish, then the process exits.

Run it (a Redis URL is required; nothing defaults to a Redis it was not
given):

    python examples/hf_worker.py --redis redis://127.0.0.1:6379 --queue llm --slots 2

and call it from anywhere, e.g. ``rtq --redis ... submit llm '{"prompt": "hi"}' --stream``.
"""

from __future__ import annotations

import argparse
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import rtq

# --- the stub model (what `transformers` would provide) ---------------------


class StubTokenizer:
    """Whitespace tokenizer over a growing vocabulary."""

    def __init__(self) -> None:
        self.vocab: Dict[str, int] = {}
        self.words: List[str] = []
        self.eos_token_id = self._id("</s>")

    def _id(self, word: str) -> int:
        if word not in self.vocab:
            self.vocab[word] = len(self.words)
            self.words.append(word)
        return self.vocab[word]

    def encode(self, text: str) -> List[int]:
        return [self._id(w) for w in text.split()]

    def decode(self, ids: List[int]) -> str:
        return "".join(self.words[i] + " " for i in ids if i != self.eos_token_id)


class TextStreamer:
    """Like ``transformers.TextIteratorStreamer``: ``generate`` calls
    ``put`` per token and ``end`` once; another thread iterates the text."""

    def __init__(self, tokenizer: StubTokenizer) -> None:
        self.tokenizer = tokenizer
        self.q: "queue.Queue[Optional[str]]" = queue.Queue()

    def put(self, token_ids: List[int]) -> None:
        self.q.put(self.tokenizer.decode(token_ids))

    def end(self) -> None:
        self.q.put(None)

    def __iter__(self) -> Iterator[str]:
        while True:
            text = self.q.get()
            if text is None:
                return
            yield text


class StubModel:
    """Generates a deterministic continuation, one token per ``delay``."""

    WORDS = "the quick brown fox jumps over the lazy dog".split()

    def __init__(self, tokenizer: StubTokenizer, delay: float = 0.01) -> None:
        self.tokenizer = tokenizer
        self.delay = delay

    def generate(
        self,
        input_ids: List[int],
        max_new_tokens: int = 16,
        streamer: Optional[TextStreamer] = None,
        stopping_criteria: Optional[List[Callable[[List[int]], bool]]] = None,
    ) -> List[int]:
        out = list(input_ids)
        try:
            for i in range(max_new_tokens):
                if any(stop(out) for stop in stopping_criteria or []):
                    break
                time.sleep(self.delay)  # the forward pass
                token = self.tokenizer._id(self.WORDS[(len(input_ids) + i) % len(self.WORDS)])
                out.append(token)
                if streamer is not None:
                    streamer.put([token])
        finally:
            if streamer is not None:
                streamer.end()
        return out


# --- the rtq worker ----------------------------------------------------------

TOKENIZER = StubTokenizer()
MODEL = StubModel(TOKENIZER, delay=float(os.environ.get("STUB_TOKEN_DELAY", "0.01")))


def handle(task: rtq.Task) -> Iterator[Any]:
    """Streams the generation of one task: ``{"prompt": str, "max_new_tokens": int}``."""
    spec = task.input if isinstance(task.input, dict) else {}
    prompt = spec.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError('input must be {"prompt": "<text>", "max_new_tokens": <int>}')
    max_new = int(spec.get("max_new_tokens", 16))
    if not 1 <= max_new <= 4096:
        raise ValueError("max_new_tokens must be in [1, 4096]")
    input_ids = TOKENIZER.encode(prompt)
    streamer = TextStreamer(TOKENIZER)
    generated: Dict[str, List[int]] = {}

    def run() -> None:
        generated["ids"] = MODEL.generate(
            input_ids,
            max_new_tokens=max_new,
            streamer=streamer,
            stopping_criteria=[lambda _ids: task.cancelled],
        )

    thread = threading.Thread(target=run, name=f"generate-{task.id}")
    thread.start()
    try:
        for text in streamer:
            yield text
    finally:
        thread.join()
    new_tokens = len(generated.get("ids", input_ids)) - len(input_ids)
    yield rtq.Result(
        {
            "finish_reason": "length" if new_tokens == max_new else "stop",
            "usage": {"prompt_tokens": len(input_ids), "completion_tokens": new_tokens},
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis", default=os.environ.get("RTQ_REDIS_URL"), help="Redis URL (or RTQ_REDIS_URL); required")
    ap.add_argument("--queue", default=os.environ.get("RTQ_QUEUE", "llm"))
    ap.add_argument("--slots", type=int, default=int(os.environ.get("RTQ_CONCURRENCY", "1")))
    ap.add_argument("--worker-id", default=os.environ.get("RTQ_WORKER_ID"))
    a = ap.parse_args()
    if not a.redis:
        ap.error("--redis <URL> (or RTQ_REDIS_URL) is required")
    rtq.init_logging(os.environ.get("RTQ_LOG", "info"))
    rtq.run_worker(
        a.redis,
        a.queue,
        handle,
        slots=a.slots,
        worker_id=a.worker_id,
        labels={"model": "stub-hf", "handler": "python"},
    )


if __name__ == "__main__":
    main()
