"""A real HTTP listener in front of a DICOMweb server (Orthanc) that passes every request on and
can spoil the answers to a WADO-RS Retrieve Study: the faults a VNA or the network between may
cause, for the tests of the engine's WADO-RS client (``pacs.qr_dicomweb``).

``fault`` (set it at any time; None passes everything on as it came):

- ``"cut"``: the answer announced with its whole Content-Length, the connection closed in the
  middle of the second part (an HTTP client sees the body end early);
- ``"cut-unframed"``: the same without a Content-Length (the end of the connection is the end of
  the body, as Orthanc answers): only the missing close delimiter shows that it was cut;
- ``"bad-part"``: the whole answer, but the second part's DICOM prefix spoilt (not a DICOM file);
- ``"status:NNN"``: that HTTP status, no body;
- ``"html"``: 200 with an HTML page instead of the multipart answer (a portal or proxy error page).

``search_fault`` spoils the answers to QIDO-RS searches (``/studies?...``):

- ``"not-json"``: 200 with a body that is not JSON;
- ``"ignore-patient"``: the search passed on without its PatientID key (a server that does not
  match on it answers with every patient's studies);
- ``"page:N"``: a server whose answers hold at most N matches: the client's ``offset`` honoured,
  and when more match, the Warning "There are additional results that can be requested."
  (PS3.18 8.3.4);
- ``"page-ignoring-offset:N"``: the same, but always the first N matches whatever the offset.

``searches`` counts the QIDO-RS study searches answered.

``before_answer``, when set, is called (no arguments) before a WADO-RS retrieval is answered:
something the test makes happen while the engine waits for the answer.

``requests`` counts the WADO-RS retrievals answered.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl, urlencode

import requests

from tests.support.http_listener import LocalHttpListener, QuietHandler

_STUDY_RETRIEVE = re.compile(r"^/dicom-web/studies/[0-9.]+/?$")


class FaultyDicomWeb(LocalHttpListener):
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")  # Orthanc's http://host:port
        self.fault: str | None = None
        self.search_fault: str | None = None
        self.before_answer = None
        self.retrievals = 0
        self.searches = 0
        proxy = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server's name
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization")}
                path, _, query = self.path.partition("?")
                search = path.rstrip("/").endswith("/studies")
                if search and proxy.search_fault == "not-json":
                    self._plain(200, "text/plain", b"search service temporarily moved")
                    return
                if search:
                    proxy.searches += 1
                if search and proxy.search_fault == "ignore-patient":
                    kept = [p for p in query.split("&") if not p.startswith(("PatientID=", "IssuerOfPatientID="))]
                    self.path = f"{path}?{'&'.join(kept)}"
                if search and proxy.search_fault and proxy.search_fault.startswith("page"):
                    self._page(path, query, headers)
                    return
                answer = requests.get(proxy.upstream + self.path, headers=headers, timeout=60)
                body = answer.content
                retrieve = _STUDY_RETRIEVE.match(self.path.split("?")[0]) is not None
                fault = proxy.fault if retrieve else None
                if retrieve:
                    proxy.retrievals += 1
                    if proxy.before_answer is not None:
                        proxy.before_answer()
                if fault and fault.startswith("status:"):
                    self._plain(int(fault.split(":")[1]), "text/plain", b"")
                    return
                if fault == "html":
                    self._plain(200, "text/html", b"<html><body>Service unavailable</body></html>")
                    return
                if fault == "bad-part":
                    second = _part_starts(body, answer.headers["Content-Type"])[1]
                    body = body[:second + 128] + b"XXXX" + body[second + 132:]
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "application/octet-stream"))
                if fault == "cut-unframed":
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault in ("cut", "cut-unframed"):
                    second = _part_starts(body, answer.headers["Content-Type"])[1]
                    self.wfile.write(body[:second + 600])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _page(self, path: str, query: str, headers: dict) -> None:
                size = int(proxy.search_fault.split(":")[1])
                params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in ("limit", "offset")]
                offset = 0 if proxy.search_fault.startswith("page-ignoring-offset") else int(
                    dict(parse_qsl(query)).get("offset", "0"))
                params += [("limit", str(size + 1)), ("offset", str(offset))]
                answer = requests.get(f"{proxy.upstream}{path}?{urlencode(params)}", headers=headers, timeout=60)
                items = answer.json() if answer.status_code == 200 else []
                self.send_response(200 if items else 204)
                if len(items) > size:
                    self.send_header("Warning", f'299 {proxy.upstream}: "There are additional results that can be '
                                                'requested."')
                body = json.dumps(items[:size]).encode() if items else b""
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _plain(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)

    @property
    def url(self) -> str:
        """The DICOMweb base URL through this listener."""
        return f"http://127.0.0.1:{self.port}/dicom-web"


def _part_starts(body: bytes, content_type: str) -> list[int]:
    """Where each part's content begins (after its header block)."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    starts = []
    at = body.find(b"--" + boundary)
    while at >= 0:
        end = body.find(b"\r\n\r\n", at)
        if body[at + 2 + len(boundary):at + 4 + len(boundary)] == b"--" or end < 0:
            break
        starts.append(end + 4)
        at = body.find(b"\r\n--" + boundary, end)
        at = at + 2 if at >= 0 else -1
    return starts
