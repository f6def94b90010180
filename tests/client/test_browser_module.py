"""The browser helper's parts without a browser: its SSE parser, backoff and store, in Node
(skipped where ``node`` is not installed; the Chromium tests cover the module end to end)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from watchroutes.client import browser_module

SCRIPT = r"""
import assert from "node:assert/strict";
const { SSEParser, Backoff, Informer, INITIAL_EVENTS_END } = await import(
  "data:text/javascript;base64," + process.env.MODULE
);

// The parser: WHATWG line ends (a CRLF split across chunks included), id-only blocks kept.
const parser = new SSEParser();
const text = "retry: 2000\r\n\r\n: hb\n\nid: 7\n\nid: 8\rdata: a\r\ndata: b\r";
const blocks = [...text].flatMap((ch) => parser.feed(ch)).concat(parser.feed("\n\r\n"));
assert.deepEqual(blocks, [
  { data: null, id: null, retry: 2000 },
  { data: null, id: "7", retry: null },
  { data: "a\nb", id: "8", retry: null },
]);

// Backoff: full jitter under a doubling ceiling, capped, reset after a healthy period.
const backoff = new Backoff({}, () => 0.5);
assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map((t) => backoff.failure(t)),
  [400, 800, 1600, 3200, 6400, 12800, 15000]);
assert.equal(backoff.failure(6 + 120000), 400);

// The store: an atomic initial state, stale events ignored, a relist with tombstones.
const changes = [];
const onChange = (c) => changes.push(c);
const informer = new Informer("http://h/orders", { mode: "fetch", onChange });
const obj = (name, rv) => ({ metadata: { name, resourceVersion: rv } });
const send = (env) => informer._envelope(JSON.stringify(env));
const end = (rv) => ({ type: "BOOKMARK", resourceVersion: rv,
  object: { metadata: { resourceVersion: rv, annotations: { [INITIAL_EVENTS_END]: "true" } } } });
send({ type: "ADDED", object: obj("a", "1"), resourceVersion: "1" });
send({ type: "ADDED", object: obj("b", "2"), resourceVersion: "2" });
assert.equal(informer.store.size, 0);  // not before the state is complete
send(end("5"));
assert.deepEqual([...informer.store.keys()], ["a", "b"]);
assert.equal(informer.synced, true);
send({ type: "MODIFIED", object: obj("a", "6"), resourceVersion: "6" });
send({ type: "MODIFIED", object: obj("a", "6"), resourceVersion: "6" });  // again: stale
send({ type: "DELETED", object: obj("b", "4"), resourceVersion: "4" });  // older: stale
assert.equal(informer.stats.stale, 2);
assert.equal(informer._lastId, "6");
assert.equal(informer._envelope(""), null);  // an empty message is never an event
assert.equal(informer._envelope(null), null);
assert.equal(informer.stats.events, 5);  // received, stale ones included
send({ type: "RESET" });
send({ type: "ADDED", object: obj("a", "6"), resourceVersion: "6" });
send({ type: "ADDED", object: obj("c", "9"), resourceVersion: "9" });
send(end("10"));
assert.deepEqual([...informer.store.keys()], ["a", "c"]);
assert.deepEqual(changes.map((c) => [c.type, c.key, c.tombstone]), [
  ["ADDED", "a", false], ["ADDED", "b", false], ["MODIFIED", "a", false],
  ["DELETED", "b", true], ["ADDED", "c", false],
]);
assert.equal(informer.stats.relists, 1);
assert.equal(informer._lastId, "10");

// Statuses: what each refusal means.
assert.equal(informer._status({ code: 410 }).end, "relist");
assert.equal(informer._status({ code: 401 }).end, "auth");
assert.deepEqual(informer._status({ code: 503, details: { retryAfterSeconds: 3 } }).floor, 3000);
assert.equal(informer._status({ code: 404 }).end, "fail");
console.log("ok");
"""


def test_the_module_in_node() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node binary on PATH")
    import base64

    env = {"MODULE": base64.b64encode(browser_module()).decode(), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [node, "--input-type=module", "-e", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
