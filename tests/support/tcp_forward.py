"""A TCP forwarder for tests: listen on 0.0.0.0:LISTEN_PORT, connect to TARGET_HOST:TARGET_PORT.

Runs inside a throwaway container on the stack's networks, published on
127.0.0.1 only, so tests on the host can reach a service that the stack keeps
on its internal network (Chroma, the S3 gateway). Standard library only.
"""

import asyncio
import os
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def handle(client_reader, client_writer) -> None:
    try:
        target_reader, target_writer = await asyncio.open_connection(
            os.environ["TARGET_HOST"], int(os.environ["TARGET_PORT"])
        )
    except OSError as error:
        print(f"cannot reach target: {error}", file=sys.stderr, flush=True)
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, target_writer), pipe(target_reader, client_writer))


async def main() -> None:
    server = await asyncio.start_server(handle, "0.0.0.0", int(os.environ.get("LISTEN_PORT", "9000")))
    print("listening", flush=True)  # the test waits for this line
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
