"""Bodies in and out: gunicorn's fast read path, Content-Encoding both ways, the size limit after decompression.

gunicorn's `wsgi.input` (gunicorn.http.body.Body) serves `read(n)` by asking its reader for 1,024
bytes at a time, pushing the rest of each 8-KiB socket chunk back into a buffer: a 600-KB batch
costs ~600 Python-level iterations and about as many buffer copies (measured: ~3.7 ms of CPU per
1,000-row batch, as much as parsing the JSON). When the body has a Content-Length and nothing is
buffered yet, reading the whole length from the underlying LengthReader in one call gives the
same bytes and leaves gunicorn's keep-alive bookkeeping (the reader's remaining length) correct.
Anything else (chunked bodies, other servers, the Flask test client) takes the standard path.

Clients of the Open Inference Protocol compress request bodies (`tritonclient`'s
`request_compression_algorithm`: `Content-Encoding: gzip` or `deflate`). The size limit protects the
memory of a worker, so it applies to what the body becomes: decompression is streamed with a cap and
stops one byte past the limit, so a few-KB "zip bomb" costs at most the limit, never its full size.

Responses are compressed when the request's Accept-Encoding accepts gzip or deflate (gzip preferred)
and the body is at least `MIN_COMPRESSED_BYTES`: below that the headers outweigh the saving. Level 1:
on 1,000-row answers it keeps most of the saving for a fraction of the default level's CPU.
"""

from __future__ import annotations

import zlib

from flask import Request, Response
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from tickguard.scoring.errors import ScoringError

# Content-Encoding -> zlib window bits. "deflate" is the zlib format (RFC 9110 section 8.4.1.2, and
# what tritonclient sends); a raw deflate stream, which some clients send, is recognised in `_inflate`.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_CHUNK = 256 * 1024
MIN_COMPRESSED_BYTES = 1024
_COMPRESS_LEVEL = 1


def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole request body, decoded per Content-Encoding; 413 past `max_bytes` (before or after decoding)."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity") and encoding not in _WBITS:
        raise ScoringError(
            415,
            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or an uncompressed body",
            code="unsupported_content_encoding",
        )
    raw = _read_raw(request, max_bytes)
    if encoding in ("", "identity"):
        return raw
    return _inflate(raw, encoding, max_bytes)


def _read_raw(request: Request, max_bytes: int) -> bytes:
    """The body as sent (no decoding), refusing more than `max_bytes` (413) like werkzeug does."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise RequestEntityTooLarge()
    stream = request.environ.get("wsgi.input")
    reader = getattr(stream, "reader", None)
    buffered = getattr(stream, "buf", None)
    if (
        length
        and type(reader).__name__ == "LengthReader"
        and type(reader).__module__ == "gunicorn.http.body"
        and buffered is not None
        and buffered.tell() == 0
        and getattr(reader, "length", None) == length
    ):
        data = reader.read(length)
        if len(data) != length:
            raise BadRequest(f"the client sent {len(data)} of the {length} bytes it announced")
        return data
    return request.get_data(cache=False)


def _inflate(raw: bytes, encoding: str, max_bytes: int) -> bytes:
    """Decompress `raw`, never producing more than `max_bytes` + 1 bytes (then 413)."""
    if not raw:
        return raw
    wbits = _WBITS[encoding]
    if encoding == "deflate" and raw[:1] and (raw[0] & 0x0F != 8 or int.from_bytes(raw[:2], "big") % 31):
        wbits = -zlib.MAX_WBITS  # no zlib header: a raw deflate stream
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    produced = 0
    pending = raw
    try:
        while True:
            part = inflater.decompress(pending, min(_CHUNK, max_bytes + 1 - produced))
            produced += len(part)
            parts.append(part)
            if produced > max_bytes:
                raise ScoringError(
                    413,
                    f"request body exceeds {max_bytes} bytes after {encoding} decompression "
                    "(TICKGUARD_MAX_BODY_BYTES)",
                    code="request_entity_too_large",
                )
            pending = inflater.unconsumed_tail
            if not pending:
                break
        if not inflater.eof:
            tail = inflater.flush()
            if len(tail) + produced > max_bytes:
                raise ScoringError(
                    413,
                    f"request body exceeds {max_bytes} bytes after {encoding} decompression "
                    "(TICKGUARD_MAX_BODY_BYTES)",
                    code="request_entity_too_large",
                )
            parts.append(tail)
            if not inflater.eof:
                raise ScoringError(
                    400, f"the {encoding} body is truncated", code="malformed_content_encoding"
                )
    except zlib.error as exc:
        raise ScoringError(
            400, f"the body is not valid {encoding} data: {exc}", code="malformed_content_encoding"
        ) from None
    if inflater.unused_data:
        raise ScoringError(
            400,
            f"{len(inflater.unused_data)} bytes follow the end of the {encoding} stream",
            code="malformed_content_encoding",
        )
    return b"".join(parts)


def compress_response(request: Request, response: Response) -> None:
    """Compress `response` in place when the client accepts gzip or deflate and the body is large enough."""
    if (
        request.method == "HEAD"
        or response.direct_passthrough
        or response.status_code in (204, 304)
        or "Content-Encoding" in response.headers
    ):
        return
    encoding = request.accept_encodings.best_match(("gzip", "deflate"))
    if encoding is None:
        return
    response.vary.add("Accept-Encoding")
    body = response.get_data()
    if len(body) < MIN_COMPRESSED_BYTES:
        return
    deflater = zlib.compressobj(_COMPRESS_LEVEL, zlib.DEFLATED, _WBITS[encoding])
    response.set_data(deflater.compress(body) + deflater.flush())
    response.headers["Content-Encoding"] = encoding
