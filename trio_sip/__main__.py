"""``python -m trio_sip``: the same as the ``trio-sip`` console script.

Useful where the console script is not on PATH (a virtualenv not activated, a
container running the interpreter directly).
"""

from trio_sip.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
