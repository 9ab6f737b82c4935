"""Average the weights of several checkpoints of one supernet run (an SWA-style diagnostic).

Used by the NAS-Bench-201 ablation "does averaging the last checkpoints rank better than the
last one?": the output is a normal supernet checkpoint (the last input's optimiser and sampler
state, the mean of every floating-point model tensor) that records the steps it averages in
``state["averaged_from_steps"]``; score it with

    .venv/bin/python benchmarks/nb201_cifar10.py --name NAME_avg --reuse NAME --no-search \
        --snapshot runs/snap/NAME_avg.ckpt <the overrides of NAME>

    .venv/bin/python benchmarks/average_weights.py OUT.ckpt RUN/supernet_step10000.ckpt \
        RUN/supernet_step12500.ckpt RUN/supernet.ckpt

BN running statistics are averaged too, but every scored path recalibrates them first.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="checkpoint to write")
    parser.add_argument("checkpoints", nargs="+", help="supernet checkpoints of one run, the last one's state is kept")
    args = parser.parse_args()

    from spos.checkpoint import load_checkpoint, save_checkpoint
    from spos.errors import SposError
    from spos.space import SearchSpace

    try:
        payloads = [load_checkpoint(path, kind="supernet") for path in args.checkpoints]
        fingerprints = {payload["space_fingerprint"] for payload in payloads}
        if len(fingerprints) != 1:
            raise SposError("the checkpoints are of different search spaces; average checkpoints of one run")
        last = payloads[-1]
        model = dict(last["state"]["model"])
        for name, value in model.items():
            if value.is_floating_point():
                model[name] = sum(payload["state"]["model"][name] for payload in payloads) / len(payloads)
        steps = [int(payload["step"]) for payload in payloads]
        save_checkpoint(
            args.out,
            kind="supernet",
            space=SearchSpace.from_dict(last["space"]),
            config=last["config"],
            step=last["step"],
            state={**last["state"], "model": model, "averaged_from_steps": steps},
        )
    except SposError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.out}: mean of the weights at steps {steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
