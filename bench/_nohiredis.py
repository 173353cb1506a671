"""Run :func:`bench.l2_hits.measure_l2` where hiredis cannot be imported.

``python -m bench._nohiredis REDIS_URL SETTINGS_JSON`` prints one line of JSON. redis-py
decides at import time whether to use hiredis (parser and command packer), so hiredis is
hidden before redis is first imported.
"""

from __future__ import annotations

import sys

sys.modules["hiredis"] = None  # type: ignore[assignment]  # import hiredis -> ImportError

import json  # noqa: E402

from bench._report import Settings  # noqa: E402
from bench.l2_hits import measure_l2  # noqa: E402


def main(argv: list[str]) -> None:
    """Measure and print the result as JSON on the last line of stdout."""
    redis_url, settings = argv
    result = measure_l2(redis_url, Settings(**json.loads(settings)))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
