"""A unix-socket → TCP relay standing in for a mongod on a unix socket (secantusdb cannot
listen on one): relay.py SOCKET_PATH HOST PORT. Prints "ready" once listening."""
import asyncio
import os
import sys


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def handle(reader, writer, host, port):
    up_reader, up_writer = await asyncio.open_connection(host, port)
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
    writer.close()
    up_writer.close()


async def main():
    path, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.start_unix_server(lambda r, w: handle(r, w, host, port), path=path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
