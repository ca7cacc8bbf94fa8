"""client.py for names that do not resolve: every name under .moat.test (reserved for
tests) resolves to 127.0.0.1, so the driver dials it, sends it as SNI and verifies the
certificate against it, as it would a real node's name.

    resolve_client.py URI OP [OP ...]
"""
import os
import runpy
import socket

_getaddrinfo = socket.getaddrinfo


def _loopback_for_tests(host, *args, **kwargs):
    if isinstance(host, str) and host.rstrip(".").endswith(".moat.test"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_for_tests
runpy.run_path(os.path.join(os.path.dirname(__file__), "client.py"), run_name="__main__")
