#!/usr/bin/env python3
"""A stand-in for the `vllm` CLI's help where vLLM cannot be installed (no GPU): `vllm serve
--help=all` lists every engine argument, as vLLM >= 0.10 does; with STANDIN_VLLM_OLD set it
behaves as an earlier vLLM, whose argparse refuses `--help=all` and lists everything on `--help`.
Argument spellings as in vllm/engine/arg_utils.py (booleans with their --no- form)."""

import argparse
import os
import sys

old = bool(os.environ.get("STANDIN_VLLM_OLD"))
parser = argparse.ArgumentParser(prog="vllm")
serve = parser.add_subparsers(dest="command").add_parser("serve", add_help=old)
if not old:  # vLLM's own help action: a summary, or every argument with =all
    serve.add_argument("--help", "-h", nargs="?", const="summary")
serve.add_argument("model_tag", nargs="?")
serve.add_argument("--tensor-parallel-size", "-tp", type=int)
serve.add_argument("--pipeline-parallel-size", "-pp", type=int)
serve.add_argument("--gpu-memory-utilization", type=float)
serve.add_argument("--max-num-seqs", type=int)
serve.add_argument("--max-num-batched-tokens", type=int)
serve.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction)
serve.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction)

args = parser.parse_args()
if not old and args.help == "all":
    serve.print_help()
    sys.exit(0)
if not old and args.help:
    print("usage: vllm serve [model_tag] [options]\n\nUse --help=all to see every argument.")
    sys.exit(0)
sys.exit("the stand-in serves nothing")
