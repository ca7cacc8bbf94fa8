"""capture.py OUTDIR UPSTREAM_PORT: a recording relay for making wire fixtures.

Listens on 127.0.0.1 (prints "port N"), relays each connection to 127.0.0.1:UPSTREAM_PORT
and writes the whole MongoDB messages of each direction to
OUTDIR/connN-{client,server}-K.bin (K = message number), until killed. Used by hand to
capture the handshake bytes of real drivers into tests/fixtures/wire/.
"""
import asyncio
import os
import struct
import sys

OUT = sys.argv[1]
UP = int(sys.argv[2])
counter = 0


async def pump(reader, writer, prefix):
    buf = b""
    n = 0
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
            buf += data
            while len(buf) >= 4:
                (length,) = struct.unpack("<i", buf[:4])
                if len(buf) < length:
                    break
                with open("%s-%d.bin" % (prefix, n), "wb") as f:
                    f.write(buf[:length])
                buf = buf[length:]
                n += 1
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def handle(reader, writer):
    global counter
    counter += 1
    prefix = os.path.join(OUT, "conn%d" % counter)
    up_r, up_w = await asyncio.open_connection("127.0.0.1", UP)
    await asyncio.gather(pump(reader, up_w, prefix + "-client"),
                         pump(up_r, writer, prefix + "-server"), return_exceptions=True)
    writer.close()
    up_w.close()


async def main():
    os.makedirs(OUT, exist_ok=True)
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print("port", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
