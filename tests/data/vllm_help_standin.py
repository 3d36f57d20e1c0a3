#!/usr/bin/env python3
"""A stand-in for the `vllm` CLI's help where vLLM cannot be installed (no GPU), as three
generations of vLLM answer it (STANDIN_VLLM_HELP):
- "argparse" (before 0.9): `serve --help` lists everything; `--help=all` is an argparse error;
- "search" (0.9 to 0.10.1): `--help` lists everything; `--help=WORD` only the arguments whose
  names hold WORD (for "all": --tensor-parallel-size, --allowed-origins...), exit 0;
- "grouped" (the default, 0.10.2 on): `--help` a summary of a few arguments; `--help=all` everything.
Argument spellings as in vllm/engine/arg_utils.py (booleans with their --no- form)."""

import argparse
import os
import sys

style = os.environ.get("STANDIN_VLLM_HELP", "grouped")
parser = argparse.ArgumentParser(prog="vllm")
serve = parser.add_subparsers(dest="command").add_parser("serve", add_help=style == "argparse")
if style != "argparse":  # vLLM's own help action
    serve.add_argument("--help", "-h", nargs="?", const="")
serve.add_argument("model_tag", nargs="?")
serve.add_argument("--host", type=str)
serve.add_argument("--port", type=int)
serve.add_argument("--allowed-origins", type=str)
serve.add_argument("--tensor-parallel-size", "-tp", type=int)
serve.add_argument("--pipeline-parallel-size", "-pp", type=int)
serve.add_argument("--gpu-memory-utilization", type=float)
serve.add_argument("--max-num-seqs", type=int)
serve.add_argument("--max-num-batched-tokens", type=int)
serve.add_argument("--scheduling-policy", choices=["fcfs", "priority"])
serve.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction)
serve.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction)
serve.add_argument("--compilation-config", "-O", type=str)

args = parser.parse_args()
if style != "argparse" and args.help is not None:
    if style == "search" and args.help:
        text = serve.format_help()
        print("\n".join(line for line in text.splitlines() if args.help in line.split(",")[0]))
    elif style == "grouped" and args.help != "all":
        print("usage: vllm serve [model_tag] [options]\n\noptions:\n  --host HOST\n  --port PORT\n\n"
              "Use --help=all to show all available flags at once.")
    else:
        serve.print_help()
    sys.exit(0)
sys.exit("the stand-in serves nothing")
