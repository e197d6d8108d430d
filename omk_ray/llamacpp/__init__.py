"""llama.cpp: the pinned tools (tools.py), built into a cache and found there, and a running
llama-server (server.py). The GGUF build step lives in variants/gguf.py, the engine in
engines/llamacpp_engine.py."""
