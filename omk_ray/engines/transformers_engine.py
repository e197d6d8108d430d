"""Hugging Face transformers `generate`, batched with left padding (CPU here, GPU elsewhere).

Requests arrive one by one (the farm keeps two batches' worth in flight); a refill loop gathers
those waiting into batches of up to
`engine_args.batch_size` that share their sampler settings and cap (and seed, when sampling), runs each
batch in a worker thread, and starts the next batch from whatever arrived meanwhile.
"""

from __future__ import annotations

import asyncio
from collections import deque

from omk_ray.config import VariantSpec
from omk_ray.engines.base import GenParams, RawOutput, TokenEngine, batch_key
from omk_ray.engines.identity import EngineIdentity

GATHER_S = 0.002  # let requests submitted together arrive before a batch is cut


class TransformersEngine(TokenEngine):
    kind = "transformers"
    packages = ("transformers",)
    scores = True

    def __init__(self, variant: VariantSpec, model_path: str):
        super().__init__(variant, model_path)
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = variant.engine_args.dtype
        # tensor_parallel_size > 1: the actor holds that many GPUs; accelerate spreads the layers.
        spread = self.device == "cuda" and variant.engine_args.tensor_parallel_size > 1
        from omk_ray.variants.load import is_nvfp4_checkpoint, load_dequantized

        # NVFP4A16 checkpoints run dequantized (the W4A16 arithmetic): transformers has no FP4 kernel here.
        nvfp4 = self.nvfp4 = is_nvfp4_checkpoint(model_path, variant.revision)
        load = load_dequantized if nvfp4 else AutoModelForCausalLM.from_pretrained
        self.model = load(
            model_path,
            revision=variant.revision,
            dtype="auto" if dtype == "auto" else getattr(torch, dtype),
            **({"device_map": "auto"} if spread else {}),
            **variant.engine_args.extra,
        )
        if not spread:
            self.model.to(self.device)
        self.model.eval()
        self.batch_size = variant.engine_args.batch_size
        config_eos = self.model.generation_config.eos_token_id
        eos = config_eos if isinstance(config_eos, list) else [config_eos]
        self.eos_ids = [e for e in {*eos, self.tokenizer.eos_token_id} if e is not None]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        self._waiting: deque[tuple[list[int], GenParams, asyncio.Future]] = deque()
        self._to_score: deque[tuple[list[int], list[int], asyncio.Future]] = deque()
        self._loop_task: asyncio.Task | None = None
        if self.max_model_len is None:  # the scoring window, as lm-eval resolves it (engines/scoring.py)
            cfg = getattr(self.model.config, "text_config", None) or self.model.config
            self.score_limit = next((int(v) for a in ("n_positions", "max_position_embeddings", "n_ctx")
                                     if (v := getattr(cfg, a, None)) is not None), None)
        else:
            self.score_limit = self.max_model_len

    @property
    def score_max_length(self) -> int:
        return self.score_limit or super().score_max_length

    @property
    def capacity(self) -> int:
        """The running batch and the next one: a batch is cut from whatever waits the moment the last
        ends, so a full one must be waiting then (the farm's refill comes a poll later)."""
        return 2 * self.batch_size

    @property
    def version(self) -> str:
        import transformers

        return f"transformers {transformers.__version__}"

    def identity(self) -> EngineIdentity:
        torch = self.torch
        on_cuda = self.device == "cuda"
        return super().identity().model_copy(update={
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "quantization": "nvfp4a16 (dequantized)" if self.nvfp4 else self.variant.engine_args.quantization,
            "device": torch.cuda.get_device_name(self.model.device) if on_cuda else "cpu",
            "device_count": torch.cuda.device_count() if on_cuda and self.variant.engine_args.tensor_parallel_size > 1
            else 1})

    async def _generate_ids(self, prompt: list[int], params: GenParams) -> RawOutput:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((prompt, params, future))
        self._start_refill()
        return await future

    async def _score_ids(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        future = asyncio.get_running_loop().create_future()
        self._to_score.append((context, continuation, future))
        self._start_refill()
        return await future

    def _start_refill(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._refill())

    async def _refill(self) -> None:
        while self._waiting or self._to_score:
            await asyncio.sleep(GATHER_S)
            if self._to_score:
                pairs = [self._to_score.popleft() for _ in range(min(len(self._to_score), self.batch_size))]
                try:
                    outs = await asyncio.to_thread(self._score_batch, [(c, x) for c, x, _ in pairs])
                except Exception as err:  # noqa: BLE001 - the batch's requests fail, the loop goes on
                    outs = [err] * len(pairs)
                for (_, _, future), out in zip(pairs, outs):
                    if not future.done():
                        (future.set_exception if isinstance(out, Exception) else future.set_result)(out)
                continue
            key = batch_key(self._waiting[0][1])
            batch = [w for w in self._waiting if batch_key(w[1]) == key][: self.batch_size]
            for w in batch:
                self._waiting.remove(w)
            try:
                outs = await asyncio.to_thread(self._generate_batch, [w[0] for w in batch], batch[0][1])
            except Exception as err:  # noqa: BLE001 - the batch's requests fail, the loop goes on
                for _, _, future in batch:
                    future.set_exception(err)
                continue
            for (_, _, future), out in zip(batch, outs):
                future.set_result(out)

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        torch = self.torch
        inputs = [self.model_input(c, x) for c, x in pairs]
        width = max(len(i) for i in inputs)
        ids = torch.tensor([i + [self.pad_id] * (width - len(i)) for i in inputs], device=self.model.device)
        with torch.inference_mode():
            logprobs = torch.log_softmax(self.model(input_ids=ids).logits, dim=-1)
        out = []
        for row, inp, (_, cont) in zip(logprobs, inputs, pairs):
            k = len(cont)
            picked = row[len(inp) - k: len(inp)]
            wanted = torch.tensor(cont, device=picked.device)
            greedy = bool((picked.argmax(dim=-1) == wanted).all())
            out.append((float(picked.gather(1, wanted[:, None]).sum()), greedy))
        return out

    def _generate_batch(self, prompts: list[list[int]], params: GenParams) -> list[RawOutput]:
        torch = self.torch
        width = max(len(p) for p in prompts)
        device = self.model.device
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        stop_ids = [*self.eos_ids, *params.stop_token_ids]
        cap = params.max_tokens
        sample = params.temperature > 0
        kwargs = dict(
            max_new_tokens=cap,
            min_new_tokens=params.min_tokens or None,
            do_sample=sample,
            eos_token_id=stop_ids,
            pad_token_id=self.pad_id,
        )
        if sample:
            torch.manual_seed(params.seed)
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None,
                          min_p=params.min_p or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        results = []
        for row in out[:, width:].tolist():
            ids = row
            for n, token in enumerate(row):
                if token in stop_ids:
                    ids = row[: n + 1]
                    break
            else:
                while ids and ids[-1] == self.pad_id:  # a stop string ended this row early
                    ids = ids[:-1]
            finish = "stop" if len(ids) < cap or (ids and ids[-1] in stop_ids) else "length"
            results.append(RawOutput(ids, finish))
        return results
