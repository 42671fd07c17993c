"""``python -m g2v_sklearn``: the ``g2v`` command line."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="g2v")
