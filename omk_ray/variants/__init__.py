"""Variant factory: CD scores, drop maps, expert surgery, quantization, fingerprints."""
