"""Variant factory: CD scores, drop maps, expert surgery, quantization, fingerprints.

    profile.profile_model(model_dir, prompts, generate_tokens=0, num_workers=1)  -> CD-scores dict
    dropmap.build_drop_map(cd, strategy="max", target=..., protect_top=...)      -> {"layer": [ids]}
    dropmap.plan_drop_map / summarize_plan / compare_drop_maps                   -> scores, boundary, diffs
    surgery.prune_checkpoint(model_dir, drop_map, out_dir, provenance=None)      -> pruned checkpoint
    quantize.quantize_checkpoint(model_dir, out_dir, scheme="NVFP4A16")          -> quantized checkpoint
    check.check_variant(model_dir)                                               -> vLLM layout report
    load.load_dequantized(model_dir)                                             -> transformers model (NVFP4)
    gguf.build_gguf(model_dir, out_dir, GGUFOptions(type="Q6_K", imatrix=...))   -> GGUF variant (llama.cpp)
    artifacts.ensure_variant(build_spec, artifact_root)                          -> artifact_root/<fingerprint>
    facts.checkpoint_facts(model_dir_or_hub_id)                                  -> parameters, experts, recipe
    routing.route_variant(results, variant, model=None)                          -> RESULTS/routing/ side table

Nothing heavy (torch, transformers, ray, compressed-tensors, numba, llm-compressor, gguf) is
imported until it is used.
"""
