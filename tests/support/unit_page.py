"""A small HTTPS client for the unit's local page, from the host: what a technician's laptop
does, without a browser (the QEMU boot tests use it through QEMU's forwarded port).

Why not urllib: the page is reached at 127.0.0.1:<forwarded port> while its certificate names
the unit's own address (the access point's; 10.0.2.15 in QEMU).  The certificate is checked
for real: it is the trust anchor (pinned, as a technician would accept it once), and its name
is checked against the unit's address, not the address connected to.  Cookies: the session
cookie only, as the page sets it.

Tests: a helper of tests/qemu/test_qemu_boot.py.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import urllib.parse
from dataclasses import dataclass, field

__all__ = ["Answer", "UnitPage"]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def title(self) -> str:
        found = re.search(r"<h1>(.*?)</h1>", self.text)
        return found.group(1) if found else ""

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.text)
        assert found, "no CSRF token on the page"
        return found.group(1)


class _Pinned(http.client.HTTPSConnection):
    """An HTTPS connection to ``host:port`` that checks the certificate for ``name``."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, name: str) -> None:
        super().__init__(host, port, context=context, timeout=60)
        self._name = name
        self._ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._name)


@dataclass
class UnitPage:
    """The page at https://127.0.0.1:``port``/, whose certificate ``cert_pem`` names ``name``."""

    port: int
    cert_pem: str
    name: str
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> Answer:
        context = ssl.create_default_context(cadata=self.cert_pem)  # check_hostname on
        conn = _Pinned("127.0.0.1", self.port, context, self.name)
        headers = {"Host": f"127.0.0.1:{self.port}"}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers |= {"Content-Type": "application/x-www-form-urlencoded",
                        "Origin": self.origin}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
        finally:
            conn.close()
        for value in response.headers.get_all("Set-Cookie") or []:
            pair = value.split(";", 1)[0]
            key, _, val = pair.partition("=")
            if val:
                self.cookies[key.strip()] = val.strip()
            else:
                self.cookies.pop(key.strip(), None)
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, text)

    def follow(self, answer: Answer) -> Answer:
        """The page a redirect leads to (GET), or ``answer`` itself."""
        while answer.status in (302, 303):
            location = urllib.parse.urlsplit(answer.headers["location"])
            answer = self.request("GET", location.path or "/")
        return answer
