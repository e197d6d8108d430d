"""Comparison of variants with a baseline: scoreboard, agreement, tokens, anomalies, domains, reports.

samples.py   store -> rows (text summarised while streaming) -> per-problem pairs
cohort.py    refuses unlike samples in one table (declared.py: what the run manifests declared)
stats.py     exact McNemar, paired bootstrap, Holm
scoreboard.py, headline.py, agreement.py, domains.py, tokens.py, anomalies.py, variant_facts.py   the tables
compare.py   `compare(results, CompareOptions)` -> Comparison (every table as Arrow)
sections.py  the report's content once; markdown.py, html.py (+ plots.py, inline SVG), report.py write it
card.py      the model card's evaluation section (card.md), in the seed card's order and shape
canary.py    structural rules over sample rows, and the generation-mode canary run
experts.py   dropped-expert exposure: the baseline's routing (`omk-ray route`) on a variant's dropped experts
"""
