"""Reference: a bare aiosmtpd server whose handler stores nothing and answers 250.

Run: python bench/bare_aiosmtpd.py PORT [--uvloop]
"""

from __future__ import annotations

import asyncio
import sys

from aiosmtpd.smtp import SMTP


class Handler:
    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        return "250 OK"


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Handler(), hostname="bench"),
                                      host="127.0.0.1", port=port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    port = int(sys.argv[1])
    if "--uvloop" in sys.argv:
        import uvloop
        uvloop.run(main(port))
    else:
        asyncio.run(main(port))
