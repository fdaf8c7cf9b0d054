"""Entry point: parse the configuration once, then run the sidecar (docs/contract.md#variables)."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["kpa"]:
        # `queueproxy kpa URL…`: watch pods' :9090 as Knative's autoscaler would.
        from queueproxy.kpacli import main as kpa_main

        raise SystemExit(kpa_main(args[1:]))

    # Start-up only allocates what the process keeps: no garbage for the collector to find, so
    # it stays off until the listeners are open (server.run freezes what was built, then
    # enables it).
    gc.disable()
    from queueproxy.config import ConfigError, load

    try:
        config = load(args, os.environ)
    except ConfigError as error:
        # Like Knative's envconfig failure: one line on stderr naming the variable, exit 1.
        print(f"queueproxy: configuration error: {error}", file=sys.stderr)
        raise SystemExit(1) from None

    from queueproxy.server import run

    raise SystemExit(run(config))


if __name__ == "__main__":
    main()
