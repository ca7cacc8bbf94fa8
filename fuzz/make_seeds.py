#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/seeds/ (standard library only).

    python3 fuzz/make_seeds.py

seeds/wire/    the captured handshakes of tests/fixtures/wire, one conversation a file, in
               the `wire` target's chunk format, plus the 7,000-deep hello of issue 12 and a
               pipelined SASL conversation.
seeds/nested/  programs for the `nested` target: a 7,000-level spine in each placement,
               array spines, and one leaf of every BSON type.
seeds/sniff/   first bytes: a captured ClientHello, OP_MSG and OP_QUERY hellos, a 790-byte
               message (`16 03 00 00`), PROXY headers.
seeds/proxy_header/  PROXY v1 (TCP4, TCP6, UNKNOWN) and v2 (PROXY, LOCAL, with TLVs) headers.
seeds/config/  every config fixture under tests/config and the demo config.
seeds/admin/   request lines and reply lines of the admin protocol.
"""

import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent
FIXTURES = ROOT.parent / "tests" / "fixtures" / "wire"


def chunks(client, message):
    """`message` in the wire target's format: `[dir<<7 | k][8k+1 bytes]` chunks."""
    out = bytearray()
    flag = 0 if client else 0x80
    rest = memoryview(message)
    while rest:
        k = min(0x7F, (len(rest) - 1) // 8)
        n = 8 * k + 1
        out.append(flag | k)
        out += rest[:n]
        rest = rest[n:]
    return bytes(out)


def nested(levels):
    """`{a: {a: ... {}}}`: 8 bytes a level."""
    out = bytearray()
    for outer in range(1, levels):
        out += struct.pack("<i", 5 + 8 * (levels - outer)) + b"\x03a\x00"
    out += b"\x05\x00\x00\x00\x00" + b"\x00" * (levels - 1)
    return bytes(out)


def doc(*elements):
    body = b"".join(bytes([t]) + k.encode() + b"\x00" + v for k, v, t in elements)
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def bstr(s):
    return struct.pack("<i", len(s) + 1) + s.encode() + b"\x00"


def op_msg(request_id, response_to, body):
    return struct.pack("<iiiiI", 21 + len(body), request_id, response_to, 2013, 0) + b"\x00" + body


def scram(user):
    p = f"n,,n={user},r=0123456789".encode()
    return struct.pack("<i", len(p)) + b"\x00" + p


def write(target, name, data):
    d = ROOT / "seeds" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    for folder in sorted(FIXTURES.iterdir()):
        if not folder.is_dir():
            continue
        seed = b"".join(
            chunks(f.name.endswith("-client.bin"), f.read_bytes())
            for f in sorted(folder.glob("*.bin"))
        )
        write("wire", folder.name, seed)

    one = struct.pack("<i", 1)
    hello = doc(("hello", one, 0x10), ("client", nested(7000), 0x03), ("$db", bstr("admin"), 0x02))
    assert len(nested(7000)) == 55_997
    write("wire", "issue12-7000-deep-hello", chunks(True, op_msg(1, 0, hello)))

    start = lambda user: doc(
        ("saslStart", one, 0x10), ("mechanism", bstr("SCRAM-SHA-256"), 0x02),
        ("payload", scram(user), 0x05), ("$db", bstr("admin"), 0x02))
    reply = lambda done: doc(
        ("conversationId", one, 0x10), ("done", bytes([done]), 0x08),
        ("ok", struct.pack("<d", 1.0), 0x01))
    cont = doc(("saslContinue", one, 0x10), ("conversationId", one, 0x10),
               ("payload", scram("x"), 0x05), ("$db", bstr("admin"), 0x02))
    write("wire", "pipelined-sasl", b"".join([
        chunks(True, op_msg(1, 0, start("alice"))),
        chunks(False, op_msg(101, 1, reply(0))),
        chunks(True, op_msg(2, 0, cont)),
        chunks(True, op_msg(3, 0, start("root"))),
        chunks(False, op_msg(102, 2, reply(1))),
    ]))

    # nested: [placement][wrapping][chunk][program]; op 7 is a spine of (arg | next << 8)
    # levels: 7000 = 0x1b58.
    spine = bytes([7, 0x58, 0x1B])
    for placement in range(12):
        write("nested", f"spine-7000-placement-{placement}", bytes([placement, 0, 4]) + spine)
    write("nested", "spine-7000-op-query", bytes([0, 1, 4]) + spine)
    write("nested", "spine-7000-query-wrapper-op-reply", bytes([9, 5, 4]) + spine)
    for op in (73, 139, 205):  # array spines: alternate levels, or all arrays
        write("nested", f"array-spine-{op}", bytes([0, 0, 4, op, 0x58, 0x1B]))
    # Each op is followed by its argument byte, then what the op takes.
    sizes = [0, 0, 0, 0, 1, 12, 8, 8, 8, 16]  # op 9: null .. decimal128
    leaves = b"".join([
        bytes([3, 5]) + b"hello",                    # string
        bytes([4, 1]),                               # int32
        bytes([5, 2]) + struct.pack("<d", 2.5),      # double
        bytes([8, 4, 1, 2, 3, 4]),                   # binary, subtype 4
        *(bytes([9, i]) + b"\x01" * n for i, n in enumerate(sizes)),
        *(bytes([10, i]) + b"x" * i for i in range(4)),  # regex, symbol, code, DBPointer
        bytes([0, 3, 3, 4]) + b"mong",               # {driver: {name: "mong"}}
        bytes([2, 0]),
        bytes([6, 1]) + b"f",                        # code with scope
        bytes([1, 0, 4, 7, 2, 0]),                   # an array in the scope
        bytes([2, 0]),
    ])
    write("nested", "every-type", bytes([0, 0, 255]) + leaves)

    # sniff: what a connection's first bytes can be.
    hello = (FIXTURES / "pymongo-4.20-scram-sha-256")
    first = sorted(hello.iterdir())[0].read_bytes()
    write("sniff", "pymongo-hello", first)
    tls = ROOT.parent / "tests" / "fixtures" / "tls"
    write("sniff", "clienthello", (tls / "clienthello-openssl-3.0-sni-db.moat.test.bin").read_bytes())
    write("sniff", "790-byte-message", struct.pack("<i", 790) + b"\x07" * 12)
    write("sniff", "proxy-v1", b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 27017\r\n")
    v2 = b"\r\n\r\n\x00\r\nQUIT\n"
    write("sniff", "proxy-v2", v2 + bytes([0x21, 0x11, 0, 12, 198, 51, 100, 7, 127, 0, 0, 1, 0x9C, 0x40, 0x69, 0x89]))

    # proxy_header: v1 and v2 in their shapes.
    write("proxy_header", "v1-tcp4", b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 27017\r\nrest")
    write("proxy_header", "v1-tcp6", b"PROXY TCP6 2001:db8::1 2001:db8::2 51000 27017\r\n")
    write("proxy_header", "v1-unknown", b"PROXY UNKNOWN\r\n")
    addrs = bytes([198, 51, 100, 7, 127, 0, 0, 1, 0x9C, 0x40, 0x69, 0x89])
    write("proxy_header", "v2-proxy", v2 + bytes([0x21, 0x11, 0, 12]) + addrs)
    write("proxy_header", "v2-local", v2 + bytes([0x20, 0x00, 0, 0]))
    tlv = bytes([0x01, 0, 2]) + b"h2" + bytes([0x04, 0, 3]) + b"abc"  # ALPN, NOOP
    write("proxy_header", "v2-tlvs", v2 + bytes([0x21, 0x11, 0, 12 + len(tlv)]) + addrs + tlv)

    # config: every fixture, valid and invalid, and the demo config.
    configs = ROOT.parent / "tests" / "config"
    for kind in ("valid", "invalid"):
        for f in sorted((configs / kind).glob("*.toml")):
            write("config", f"{kind}-{f.stem}", f.read_bytes())
    write("config", "demo", (ROOT.parent / "config.toml").read_bytes())

    # admin: request lines, and reply lines as moat writes them.
    for i, line in enumerate([
        '{"cmd":"status"}',
        '{"cmd":"mode.set","mode":"requireSSL","force":false,"persist":true}',
        '{"cmd":"rules.add","cidr":"203.0.113.0/24","description":"office VPN"}',
        '{"cmd":"rules.copy","from":"/etc/other.toml","replace":true}',
        '{"cmd":"bans.clear","source":"203.0.113.5"}',
        '{"ok":true,"mode":"requireSSL","previous":"preferSSL","persisted":true,"applied_in_us":3}',
        '{"ok":false,"error":"1 plaintext connection is open","plaintext_connections":[{"id":1,"remote":"10.0.0.5:1","kind":"client","transport":"plaintext","sni":null,"domain":null,"age_secs":1.5,"bytes_in":1,"bytes_out":2,"driver":null,"app":null,"user":null}]}',
        '{"ok":true,"bans":[{"source":"203.0.113.5","remaining_secs":290,"failures":20}]}',
    ]):
        write("admin", f"line-{i}", line.encode())


if __name__ == "__main__":
    main()
