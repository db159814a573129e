"""The mean of several training checkpoints' weights, as `optim.average_epochs` keeps it.

Given copies of one run's ``checkpoint.pt`` taken after consecutive epochs, writes a
checkpoint whose model is the mean of their weights (with the same ``WeightAverage`` the
training loop uses, so the same sums), ready for ``alexnet evaluate``. It measures what
``optim.average_epochs=k`` would have kept without training the run again.

    .venv/bin/python scripts/average-checkpoints.py e46.pt e47.pt ... e50.pt --out mean.pt
    alexnet evaluate mean.pt --data DATA --views ten-crop

The README's weight-averaging figures for CIFAR-10 come from this script, on copies of the
seed-2 run's checkpoint taken after each of its epochs.
"""

import argparse
import sys

from alexnet.engine.checkpoint import atomic_save, load_checkpoint
from alexnet.engine.optim import WeightAverage


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoint.pt copies, one per epoch")
    ap.add_argument("--out", required=True, help="the averaged checkpoint to write")
    args = ap.parse_args()
    states = [load_checkpoint(path) for path in args.checkpoints]
    for path, state in zip(args.checkpoints, states, strict=True):
        p = state["progress"]
        if p["batch"] != 0:
            sys.exit(f"{path}: saved mid-epoch (step {p['batch']}); give end-of-epoch copies")
    states.sort(key=lambda s: s["progress"]["epoch"])
    epochs = [s["progress"]["epoch"] for s in states]
    if epochs != list(range(epochs[0], epochs[0] + len(epochs))):
        sys.exit(f"the checkpoints are not consecutive epochs of one run: epochs {epochs}")
    average = WeightAverage(len(states), epochs[-1])
    for state in states:
        average.add(state["model"], state["progress"]["epoch"])
    last = states[-1]
    atomic_save({**last, "model": average.average(last["model"])}, args.out)
    print(f"{args.out}: the mean of the weights after epochs {epochs[0]}-{epochs[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
