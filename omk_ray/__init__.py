"""omk-ray: a distributed evaluation and ablation farm for expert-pruned MoE models."""

__version__ = "0.1.0"
