"""Registers the example plug-ins in every Python process started with this folder on PYTHONPATH:
the `omk-ray` command and the local Ray workers it starts (they inherit PYTHONPATH)."""

from omk_ray.benches import register_bench
from omk_ray.engines import register_engine

register_engine("wordcounter", "wordcount_engine:WordCountEngine")
register_bench("wordcount", "wordcount_bench:WordCountBench")
