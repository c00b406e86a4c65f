#!/usr/bin/env python3
"""Check `pot serve` with a client nobody here wrote: the official `openai` Python package.

Usage: openai-client-check.py BASE_URL MODEL
Exits 0 when every check holds, 1 with the failing check otherwise.
"""
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base.rstrip("/") + "/v1", api_key="unused", max_retries=0)


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


ids = [m.id for m in client.models.list()]
check(model in ids, f"models.list names {model}")

c = client.completions.create(model=model, prompt="def add(a, b):", max_tokens=8, temperature=0, logprobs=3)
ch = c.choices[0]
check(c.object == "text_completion" and len(ch.text) > 0, "completions.create returns text")
check(len(ch.logprobs.tokens) == len(ch.logprobs.token_logprobs) == len(ch.logprobs.text_offset) > 0, "completion logprobs are aligned")
check(all(len(t) <= 3 for t in ch.logprobs.top_logprobs), "top_logprobs has at most 3 alternatives")
check(c.usage.completion_tokens == len(ch.logprobs.tokens), "usage counts the completion tokens")
again = client.completions.create(model=model, prompt="def add(a, b):", max_tokens=8, temperature=0)
check(again.choices[0].text == ch.text, "temperature 0 is deterministic")
s1 = client.completions.create(model=model, prompt="Once", max_tokens=8, temperature=1.0, seed=42)
s2 = client.completions.create(model=model, prompt="Once", max_tokens=8, temperature=1.0, seed=42)
check(s1.choices[0].text == s2.choices[0].text, "seeded sampling repeats")

full = client.completions.create(model=model, prompt="def add(a, b):", max_tokens=24, temperature=0).choices[0].text
cut = client.completions.create(model=model, prompt="def add(a, b):", max_tokens=24, temperature=0, stop=["return"]).choices[0]
check("return" not in cut.text and full.startswith(cut.text) and cut.finish_reason == ("stop" if "return" in full else "length"),
      "a stop string cuts the text before it")

e = client.completions.create(model=model, prompt="Hello world", max_tokens=1, temperature=0, echo=True, logprobs=1)
lp = e.choices[0].logprobs
check(e.choices[0].text.startswith("Hello world") and lp.token_logprobs[0] is None, "echo returns the prompt and its logprobs")

chat = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0,
    logprobs=True, top_logprobs=2)
msg = chat.choices[0]
check(chat.object == "chat.completion" and msg.message.role == "assistant", "chat.completions.create answers as the assistant")
check(len(msg.logprobs.content) > 0 and all(len(t.top_logprobs) == 2 for t in msg.logprobs.content), "chat logprobs with 2 alternatives")

parts = [ev.choices[0].text for ev in client.completions.create(
    model=model, prompt="def add(a, b):", max_tokens=8, temperature=0, stream=True) if ev.choices]
check("".join(parts) == ch.text, "streamed completion equals the whole one")
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0,
    stream=True, stream_options={"include_usage": True})
text, usage = "", None
for ev in stream:
    if ev.choices:
        text += ev.choices[0].delta.content or ""
    if ev.usage:
        usage = ev.usage
check(text == msg.message.content and usage is not None, "streamed chat equals the whole one, with usage")

for what, call, exc in [
    ("unknown model is a 404", lambda: client.completions.create(model="nope", prompt="x", max_tokens=1), openai.NotFoundError),
    ("negative temperature is a 400", lambda: client.completions.create(model=model, prompt="x", temperature=-1), openai.BadRequestError),
    ("huge max_tokens is a 400", lambda: client.completions.create(model=model, prompt="x", max_tokens=10**9), openai.BadRequestError),
]:
    try:
        call()
        check(False, what)
    except exc:
        check(True, what)
print("all checks passed")
