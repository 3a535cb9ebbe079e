#!/usr/bin/env python3
"""An rtq exec-handler child: a long-lived process that keeps its "model" in
memory and serves several tasks at once over JSON lines.

stdin  (from rtq-worker): {"type":"task","id":..,"attempt":..,"input":..,"input_ref":..,"labels":..}
                          {"type":"cancel","id":..}
stdout (to rtq-worker):   {"id":..,"chunk":"text"} ... then {"id":..,"result":{..}}
                          or {"id":..,"error":"why","retryable":false}

This toy model streams the words of input["prompt"] reversed, one per
input["delay_ms"] milliseconds. input["crash"] makes the process exit (to
show that rtq-worker restarts it), input["fail"] fails the task, and
input["report_cancel_to"] names a file that records cancels (for tests).

Run it under a worker:
  rtq-worker --handler exec --exec-command "python3 examples/exec_child.py" --queue llm
"""
import json
import sys
import threading
import time

out_lock = threading.Lock()
cancelled = set()
report_cancel_to = {}  # task id -> file to append "cancelled <id>" to (tests)


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def run(task):
    tid = task["id"]
    inp = task.get("input") or {}
    if inp.get("fail"):
        emit({"id": tid, "error": str(inp["fail"]), "retryable": False})
        return
    words = str(inp.get("prompt", "")).split()
    delay = inp.get("delay_ms", 0) / 1000.0
    for word in words:
        if tid in cancelled:
            cancelled.discard(tid)
            return  # the worker already ended the task; say nothing more
        if delay:
            time.sleep(delay)
        emit({"id": tid, "chunk": word[::-1] + " "})
    emit({"id": tid, "result": {"words": len(words), "attempt": task.get("attempt")}})


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        if msg.get("type") == "cancel":
            cancelled.add(msg["id"])
            print(f"cancelled {msg['id']}", file=sys.stderr, flush=True)
            path = report_cancel_to.pop(msg["id"], None)
            if path:
                with open(path, "a") as f:
                    f.write(f"cancelled {msg['id']}\n")
        elif msg.get("type") == "task":
            inp = msg.get("input") or {}
            if inp.get("report_cancel_to"):
                report_cancel_to[msg["id"]] = inp["report_cancel_to"]
            if inp.get("crash"):
                print("crashing on purpose", file=sys.stderr, flush=True)
                sys.exit(3)
            threading.Thread(target=run, args=(msg,), daemon=True).start()


if __name__ == "__main__":
    main()
