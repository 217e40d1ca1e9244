"""python -m mtdefect.report <dvclive dir> <out.png>: a run's train/val loss and val Dice."""

import sys

from mtdefect.report.figures import save_png, training_curves

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m mtdefect.report <dvclive dir> <out.png>   (train/val loss and val Dice)")
    save_png(training_curves(sys.argv[1]), sys.argv[2])
    print(f"wrote {sys.argv[2]}")
