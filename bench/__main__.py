"""`python -m bench`: fastlv's benchmarks on built-in defaults (quick mode on this machine).

Runs the op provider comparison (bench/ops.py) and the Table 5 reproduction (bench/table5.py), and
writes Markdown, JSON and PNG under bench/results/.
"""
import argparse

import torch

from bench import ops, table5


def main():
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--full", action="store_true", help="paper sizes / more repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="*", help="substrings of bench module names to run")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="Table 5: then train each model this many steps and add its held-out ELBO (0: off)")
    parser.add_argument("--data", default="speech", help="Table 5: fastlv.data set of --train-steps")
    args = parser.parse_args()
    if not args.only or "table5" in args.only:
        table5.main(full=args.full, train_steps=args.train_steps, data=args.data)
    ops.main(quick=not args.full, device=args.device, only=args.only)


if __name__ == "__main__":
    main()
