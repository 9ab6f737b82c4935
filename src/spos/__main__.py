"""``python -m spos`` (also what ``torchrun -m spos`` runs)."""

from spos.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
