"""`logo-cpp eval`: routers compared on held-out prompts by the LoGo paper's protocol (see run.py)."""
