"""The full Hessian-free comparison of chapter 6 (what `make hf` runs): HF against the study's tuned Adam and
momentum on the deep autoencoders, each for an equal wall-clock budget on all of MNIST.

    python report/hf_compare.py [--budget SECONDS] [--out report/hf_results.json]

It needs the study's tuned settings (build/cache/study.json, written when `make report` runs chapter 5) and takes
about three times the budget per architecture (six runs, two at a time).  The result is committed, so the report
reads it without rerunning; the chapter says when and where it was produced.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))
import nbtools  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=nbtools.HF_BUDGET, help="training seconds per run")
    parser.add_argument("--out", default=str(nbtools.HF_RESULTS), help="where the JSON goes")
    args = parser.parse_args(argv)
    if not args.budget > 0:
        parser.error(f"--budget must be positive; got {args.budget}")
    if nbtools.FAST:
        parser.error("AELIB_FAST is set: the full comparison needs the full study's settings; unset it "
                     "(smoke mode runs a miniature race inside notebook 06 instead)")
    try:
        result = nbtools.hf_comparison(args.budget)
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    nbtools.write_json(args.out, result)
    print(f"wrote {args.out}: {len(result['runs'])} runs in {result['minutes']:.1f} minutes")


if __name__ == "__main__":
    main()
