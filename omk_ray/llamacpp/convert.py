"""Run llama.cpp's convert_hf_to_gguf.py with the config keys transformers drops put back.

The converter reads a checkpoint's config through transformers (`AutoConfig(...).to_dict()`).
transformers 5 turns Gemma 4's `global_head_dim` into `per_layer_config` and writes that back
only where it differs from `head_dim`, so a model whose full-attention layers use `head_dim`
reaches the converter with neither key, and its Gemma 4 class asserts. This launcher wraps the
converter's config loader: a key of `KEPT` that config.json has (top level or `text_config`)
and the loaded config lacks is put back. Nothing else changes; the vendored files are untouched.

    python -m omk_ray.llamacpp.convert path/to/convert_hf_to_gguf.py ARGS...
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

KEPT = ("global_head_dim",)


def main(argv: list[str]) -> None:
    converter = Path(argv[0]).resolve()
    sys.path[:0] = [str(converter.parent), str(converter.parent / "gguf-py")]
    sys.argv = [str(converter), *argv[1:]]
    from conversion.base import ModelBase

    loader = ModelBase.load_hparams

    def load_hparams(dir_model, is_mistral_format):
        config = loader(dir_model, is_mistral_format)
        raw_path = Path(dir_model) / "config.json"
        if is_mistral_format or not raw_path.is_file():
            return config
        raw = json.loads(raw_path.read_text())
        for have, want in ((config, raw), (config.get("text_config"), raw.get("text_config"))):
            if isinstance(have, dict) and isinstance(want, dict):
                for key in KEPT:
                    if have.get(key) is None and want.get(key) is not None:
                        have[key] = want[key]
        return config

    ModelBase.load_hparams = staticmethod(load_hparams)
    runpy.run_path(str(converter), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
