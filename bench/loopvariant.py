"""Run the proxy's CLI on another event loop or task factory, for A/B runs (bench.cpu).

    python -m bench.loopvariant [--uvloop] [--eager] serve --port ... (the proxy's own args)

`--uvloop` runs on uvloop's loop; `--eager` sets asyncio's eager task factory (Python
3.12+), which runs a new task's first step at once instead of a loop pass later (aiohttp
starts a task per request and per upstream request write). The proxy itself is unchanged:
`asyncio.run` is given a loop factory before the CLI starts.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine
from typing import Any


def loop_factory(uvloop: bool, eager: bool) -> Callable[[], asyncio.AbstractEventLoop]:
    def make() -> asyncio.AbstractEventLoop:
        if uvloop:
            import uvloop as uv

            loop: asyncio.AbstractEventLoop = uv.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        if eager and uvloop:
            # uvloop passes eager_start= to a task factory, which asyncio's
            # eager_task_factory does not take: start every task eagerly here instead.
            def eager_task(loop: Any, coro: Any, *, eager_start: Any = None, **kw: Any) -> Any:
                return asyncio.Task(coro, loop=loop, eager_start=True, **kw)  # type: ignore[call-arg]

            loop.set_task_factory(eager_task)
        elif eager:
            loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        return loop

    return make


def main() -> None:
    args = sys.argv[1:]
    uvloop = "--uvloop" in args
    eager = "--eager" in args
    args = [a for a in args if a not in ("--uvloop", "--eager")]
    if eager and sys.version_info < (3, 12):
        raise SystemExit("--eager needs Python 3.12+")
    original = asyncio.run
    factory = loop_factory(uvloop, eager)

    def run(main: Coroutine[Any, Any, Any], **kwargs: Any) -> Any:
        if sys.version_info >= (3, 12):
            return original(main, loop_factory=factory, **kwargs)
        loop = factory()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(main)
        finally:
            loop.close()

    asyncio.run = functools.wraps(original)(run)  # type: ignore[assignment]
    from blockrun_proxy.cli import main as cli

    sys.argv = ["blockrun-proxy", *args]
    cli()


if __name__ == "__main__":
    main()
