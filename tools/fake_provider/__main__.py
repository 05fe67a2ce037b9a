"""``python -m tools.fake_provider --port 9100 [--realistic ...]``: the fake provider until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import tools.fake_provider
from tools.fake_provider.faults import parse_fault_header
from tools.fake_provider.realism import Realism
from tools.fake_provider.server import FakeProviderServer


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeProviderServer(
        host=args.host, port=args.port, latency_ms=args.latency_ms, chunk_delay_ms=args.chunk_delay_ms,
        answer_text=args.answer,
        realism=Realism(seed=args.seed, time_scale=args.time_scale) if args.realistic else None,
    )
    if args.fault:
        fake.install_fault(parse_fault_header(args.fault))
    async with fake:
        print(f"fake provider listening on {fake.base_url}", file=sys.stderr)
        print(f"  OPENAI_BASE_URL={fake.openai_base_url}  GEMINI_BASE_URL={fake.base_url}", file=sys.stderr)
        print(f"  faults: POST {fake.base_url}/_fake/fault {{\"kind\": \"503\", \"times\": 2}}",
              file=sys.stderr)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.fake_provider", description=tools.fake_provider.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=int, default=0, help="added before every answer")
    parser.add_argument("--chunk-delay-ms", type=int, default=0, help="pause between stream chunks")
    parser.add_argument("--answer", default=None, help="fixed plain answer text")
    parser.add_argument("--fault", default=None, help='standing fault, header syntax, e.g. "503; times=3"')
    parser.add_argument("--realistic", action="store_true",
                        help="published provider timings: TTFT, output speed, answer lengths "
                        "(tools/fake_provider/realism.py)")
    parser.add_argument("--seed", type=int, default=0, help="realistic mode: the random seed")
    parser.add_argument("--time-scale", type=float, default=1.0, help="realistic mode: multiply every sleep")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
