"""A stand-in for SGLang's launcher where SGLang cannot be installed (no GPU): its `--help` is
argparse's, as SGLang's is, for a few of SGLang's real server arguments (spellings as in
sglang/srt/server_args.py: a long name and its short alias share one value name)."""

import argparse
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--model-path", "--model", type=str, required=True)
parser.add_argument("--host", type=str)
parser.add_argument("--port", type=int)
parser.add_argument("--served-model-name", type=str)
parser.add_argument("--tensor-parallel-size", "--tp-size", type=int, dest="tp_size")
parser.add_argument("--data-parallel-size", "--dp-size", type=int, dest="dp_size")
parser.add_argument("--mem-fraction-static", type=float, help="The fraction of the memory used for static "
                    "allocation (model weights and KV cache memory pool). Use a smaller value if you see "
                    "out-of-memory errors.")
parser.add_argument("--chunked-prefill-size", type=int)
parser.add_argument("--max-running-requests", type=int)
parser.add_argument("--schedule-policy", choices=["lpm", "random", "fcfs", "dfs-weight", "lof", "priority"])
parser.add_argument("--enable-mixed-chunk", action="store_true")
parser.add_argument("--disable-radix-cache", action="store_true")

if __name__ == "__main__":
    parser.parse_args()
    sys.exit("the stand-in serves nothing")
