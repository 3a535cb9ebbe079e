#!/usr/bin/env python3
"""An rtq exec-handler child: a long-lived process that keeps its "model" in
memory and serves several tasks at once over JSON lines.

stdin  (from rtq-worker): {"type":"task","id":..,"attempt":..,"input":..,"input_ref":..,"labels":..}
                          {"type":"cancel","id":..,"attempt":..}
stdout (to rtq-worker):   {"id":..,"attempt":..,"chunk":"text"} ... then {"id":..,"attempt":..,"result":{..}}
                          or {"id":..,"attempt":..,"error":"why","retryable":false}

Every line names the task's id *and* attempt: two attempts of one task can
be here at once (the old one winding down after a requeue, the new one
starting), and the worker routes output and cancels by the pair. Output for
an attempt the worker no longer runs is ignored, so a cancelled attempt may
finish its current step before it stops.

This toy model streams the words of input["prompt"] reversed, one per
input["delay_ms"] milliseconds, after a "prefill" of input["hold_ms"]
milliseconds in which it says nothing. A cancel stops an attempt at once,
even in the middle of its prefill or a delay. input["fail"] fails the task.

Task input is untrusted: it never names a file, a command or anything else
outside this process. What an operator may configure comes from the
environment the worker passes on:
  EXEC_CHILD_CANCEL_LOG=<path>  append "started <id> <attempt>" and
                                "cancelled <id> <attempt>" lines there
  EXEC_CHILD_TEST_HOOKS=1       honour input["crash"] (the process exits, to
                                show that rtq-worker restarts it) and
                                input["ignore_cancel"] (the attempt runs to
                                its end regardless); for rtq's own tests only

Run it under a worker:
  rtq-worker --redis redis://127.0.0.1:6379/ --handler exec \\
    --exec-command "python3 examples/exec_child.py" --queue llm
"""
import json
import os
import sys
import threading

CANCEL_LOG = os.environ.get("EXEC_CHILD_CANCEL_LOG") or None
TEST_HOOKS = os.environ.get("EXEC_CHILD_TEST_HOOKS") == "1"

out_lock = threading.Lock()
state_lock = threading.Lock()
cancel_events = {}  # (id, attempt) -> threading.Event, set by a cancel line


def emit(key, **fields):
    tid, attempt = key
    with out_lock:
        sys.stdout.write(json.dumps({"id": tid, "attempt": attempt, **fields}) + "\n")
        sys.stdout.flush()


def run(key, inp, cancelled):
    if TEST_HOOKS and inp.get("ignore_cancel"):
        cancelled = threading.Event()  # never set
    try:
        if inp.get("fail"):
            emit(key, error=str(inp["fail"]), retryable=False)
            return
        words = str(inp.get("prompt", "")).split()
        delay = inp.get("delay_ms", 0) / 1000.0
        if cancelled.wait(inp.get("hold_ms", 0) / 1000.0):
            return  # the worker already ended the attempt; say nothing more
        for word in words:
            if delay and cancelled.wait(delay) or cancelled.is_set():
                return
            emit(key, chunk=word[::-1] + " ")
        emit(key, result={"words": len(words), "attempt": key[1]})
    finally:
        with state_lock:
            cancel_events.pop(key, None)


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        key = (msg.get("id"), msg.get("attempt"))
        if msg.get("type") == "cancel":
            with state_lock:
                event = cancel_events.get(key)
            if event:
                event.set()
            print(f"cancelled {key[0]} attempt {key[1]}", file=sys.stderr, flush=True)
            if CANCEL_LOG and event:
                with open(CANCEL_LOG, "a") as f:
                    f.write(f"cancelled {key[0]} {key[1]}\n")
        elif msg.get("type") == "task":
            inp = msg.get("input") or {}
            if TEST_HOOKS and inp.get("crash"):
                print("crashing on purpose", file=sys.stderr, flush=True)
                sys.exit(3)
            cancelled = threading.Event()
            with state_lock:
                cancel_events[key] = cancelled
            if CANCEL_LOG:
                with open(CANCEL_LOG, "a") as f:
                    f.write(f"started {key[0]} {key[1]}\n")
            threading.Thread(target=run, args=(key, inp, cancelled), daemon=True).start()


if __name__ == "__main__":
    main()
