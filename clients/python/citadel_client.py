"""Citadel client for Python: one module, standard library only (Python 3.9+).

Copy this file next to your code. It speaks Citadel's producer API (docs/api.md):
jobs (submit, submit-and-wait, bulk, get, wait, cancel), batch files (JSONL, streamed
both ways), the Open Inference Protocol (KServe v2) infer route, and Standard Webhooks
signature checks. Tensors travel as the KServe v2 binary tensor extension by default
(no base64, no JSON numbers); numpy is used when it is importable and never required.

    from citadel_client import Client, Tensor
    c = Client("http://127.0.0.1:8080", api_key)
    x = Tensor.from_list([0.5, 1, 1.5, 2], "float32", [1, 4])
    view = c.submit_and_wait("tiny", {"x": x}, wait_ms=5000)
    print(view["status"], view["result"]["outputs"]["y"].tolist())
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import math
import re
import ssl
import struct
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Union

__all__ = [
    "DTYPES",
    "CitadelError",
    "Client",
    "Tensor",
    "WebhookVerificationError",
    "numpy_available",
    "verify_webhook",
]

__version__ = "0.1.0"

# dtype -> (struct code, bytes per element, KServe datatype). float16/bfloat16 are
# packed by hand from the float64 (ties to even, as the API narrows JSON numbers).
DTYPES: dict[str, tuple[str, int, str]] = {
    "float32": ("f", 4, "FP32"),
    "float64": ("d", 8, "FP64"),
    "float16": ("H", 2, "FP16"),
    "bfloat16": ("H", 2, "BF16"),
    "int8": ("b", 1, "INT8"),
    "uint8": ("B", 1, "UINT8"),
    "int16": ("h", 2, "INT16"),
    "uint16": ("H", 2, "UINT16"),
    "int32": ("i", 4, "INT32"),
    "int64": ("q", 8, "INT64"),
    "bool": ("?", 1, "BOOL"),
}
_FROM_KSERVE = {kserve: dtype for dtype, (_, _, kserve) in DTYPES.items()}
_NUMPY_NAMES = {
    "float32": "float32",
    "float64": "float64",
    "float16": "float16",
    "int8": "int8",
    "uint8": "uint8",
    "int16": "int16",
    "uint16": "uint16",
    "int32": "int32",
    "int64": "int64",
    "bool": "bool",
}
_FINAL = ("completed", "failed", "cancelled")
_BATCH_FINAL = ("completed", "cancelled", "expired")
_OCTET = "application/octet-stream"
_HEADER_LENGTH = "Inference-Header-Content-Length"
# The API bounds ?wait by MAX_WAIT_MS (30 s by default): wait() long-polls in steps below it.
_POLL_MS = 10_000


def _numpy() -> Any:
    """numpy, imported on first use; None when it is not installed."""
    try:
        import numpy  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return numpy


def numpy_available() -> bool:
    return _numpy() is not None


class CitadelError(Exception):
    """A refusal or failure. `status` is the HTTP status (0 when no HTTP answer came:
    the API could not be reached, or a wait ran out), `code` Citadel's stable error code
    (packages/contracts/src/errors.ts), `retry_after` the seconds the API asked to wait."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: float | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.details = details

    @property
    def retryable(self) -> bool:
        """Whether waiting can help: a 429 or 503, unless its details say no wait can fix it (a request over its burst)."""
        if self.status not in (429, 503):
            return False
        return not (isinstance(self.details, dict) and self.details.get("retryable") is False)


class WebhookVerificationError(Exception):
    """A webhook delivery that does not verify: missing headers, a stale timestamp, no matching signature."""


# --- tensors -------------------------------------------------------------------------


def _round_half_even(q: float) -> int:
    # Python's round() on a float is exact and ties to even.
    return round(q)


def _narrow(x: float, mantissa_bits: int, bias: int, exp_mask: int, quiet_nan: int) -> int:
    """The 16-bit float nearest x, ties to even, straight from the float64 (no double rounding)."""
    if math.isnan(x):
        return quiet_nan
    sign = 0x8000 if math.copysign(1.0, x) < 0 else 0
    a = abs(x)
    if a == 0:
        return sign
    if a == math.inf:
        return sign | exp_mask
    e = math.frexp(a)[1] - 1  # floor(log2(a)), exact
    if e < 1 - bias:
        # Subnormal; rounding up to the smallest normal carries into the exponent field.
        return sign | _round_half_even(math.ldexp(a, mantissa_bits - (1 - bias)))
    if e > bias:
        return sign | exp_mask
    # q holds the implicit leading 1: a mantissa rounding up to 2^(m+1) carries on, into Inf at the top.
    q = _round_half_even(math.ldexp(a, mantissa_bits - e))
    return sign | (((e + bias - 1) << mantissa_bits) + q)


def float16_bits(x: float) -> int:
    """IEEE 754 binary16 bits of x (ties to even; out of range becomes ±Inf)."""
    return _narrow(float(x), 10, 15, 0x7C00, 0x7E00)


def bfloat16_bits(x: float) -> int:
    """bfloat16 bits of x (the top half of a float32; ties to even; out of range becomes ±Inf)."""
    return _narrow(float(x), 7, 127, 0x7F80, 0x7FC0)


def _widen_float16(bits: int) -> float:
    return float(struct.unpack("<e", struct.pack("<H", bits))[0])


def _widen_bfloat16(bits: int) -> float:
    return float(struct.unpack("<f", struct.pack("<I", bits << 16))[0])


def _count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _flatten(values: Any) -> tuple[list[Any], list[int]]:
    """Nested lists as (flat values, shape); ragged nesting is refused."""
    if not isinstance(values, (list, tuple)):
        return [values], []
    if len(values) == 0:
        return [], [0]
    parts = [_flatten(v) for v in values]
    inner = parts[0][1]
    if any(p[1] != inner for p in parts):
        raise ValueError("nested values are ragged: every row must have the same shape")
    return [v for p in parts for v in p[0]], [len(values), *inner]


def _nest(flat: list[Any], shape: Sequence[int]) -> Any:
    if len(shape) == 0:
        return flat[0]
    if len(shape) == 1:
        return list(flat)
    step = _count(shape[1:])
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


class Tensor:
    """A tensor as Citadel carries it: dtype, shape and the raw little-endian, row-major bytes.

    float16 and bfloat16 data are their 16-bit patterns; bool is one byte (0 or 1) per element.
    """

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, dtype: str, shape: Sequence[int], data: bytes) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}")
        dims = [int(d) for d in shape]
        if any(d < 0 for d in dims):
            raise ValueError(f"shape {dims} has a negative dimension")
        want = _count(dims) * DTYPES[dtype][1]
        if len(data) != want:
            raise ValueError(f"{dtype} {dims} takes {want} bytes, got {len(data)}")
        self.dtype = dtype
        self.shape = dims
        self.data = bytes(data)

    @classmethod
    def from_list(cls, values: Any, dtype: str, shape: Sequence[int] | None = None) -> Tensor:
        """Packs numbers (flat, or nested to mirror the shape) little-endian.

        float16/bfloat16 values are rounded to nearest even, as the API rounds JSON numbers.
        """
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}")
        flat, nested_shape = _flatten(values)
        dims = list(shape) if shape is not None else nested_shape
        if _count(dims) != len(flat):
            raise ValueError(f"{len(flat)} values do not fill shape {dims}")
        if dtype == "float16":
            flat = [float16_bits(v) for v in flat]
        elif dtype == "bfloat16":
            flat = [bfloat16_bits(v) for v in flat]
        elif dtype == "bool":
            flat = [bool(v) for v in flat]
        try:
            data = struct.pack(f"<{len(flat)}{DTYPES[dtype][0]}", *flat)
        except (struct.error, OverflowError) as err:
            raise ValueError(f"a value does not fit {dtype}: {err}") from None
        return cls(dtype, dims, data)

    @classmethod
    def from_numpy(cls, arr: Any, dtype: str | None = None) -> Tensor:
        """A tensor from a numpy array (copied into little-endian, C-order bytes).

        float16 is native. bfloat16: pass dtype="bfloat16" with a uint16 array of bit
        patterns, or a float array (rounded to nearest even); an ml_dtypes bfloat16 array
        is taken as it is.
        """
        np = _numpy()
        if np is None:
            raise ImportError("numpy is not installed: use Tensor.from_list or Tensor(dtype, shape, bytes)")
        a = np.asarray(arr)
        if a.dtype.name == "bfloat16":
            return cls("bfloat16", a.shape, np.ascontiguousarray(a).view(np.uint16).astype("<u2").tobytes())
        if dtype == "bfloat16":
            if a.dtype == np.uint16:
                return cls("bfloat16", a.shape, np.ascontiguousarray(a, dtype="<u2").tobytes())
            bits = [bfloat16_bits(v) for v in a.astype(np.float64).ravel().tolist()]
            return cls("bfloat16", a.shape, struct.pack(f"<{len(bits)}H", *bits))
        name = dtype or a.dtype.name
        if name not in _NUMPY_NAMES:
            raise ValueError(f"numpy dtype {a.dtype.name!r} has no Citadel dtype; one of {', '.join(DTYPES)}")
        le = np.dtype(_NUMPY_NAMES[name]).newbyteorder("<")
        return cls(name, a.shape, np.ascontiguousarray(a, dtype=le).tobytes())

    def to_numpy(self, bfloat16_bits: bool = False) -> Any:
        """The tensor as a new numpy array in native byte order.

        bfloat16 widens exactly to float32, or stays uint16 bit patterns with bfloat16_bits=True.
        """
        np = _numpy()
        if np is None:
            raise ImportError("numpy is not installed: use Tensor.tolist()")
        if self.dtype == "bfloat16":
            bits = np.frombuffer(self.data, dtype="<u2").reshape(self.shape)
            if bfloat16_bits:
                return bits.astype(np.uint16)
            return (bits.astype(np.uint32) << 16).view(np.float32)
        le = np.dtype(_NUMPY_NAMES[self.dtype]).newbyteorder("<")
        return np.frombuffer(self.data, dtype=le).reshape(self.shape).astype(le.newbyteorder("="))

    def flat(self) -> list[Any]:
        """The values as a flat Python list (float16/bfloat16 widened exactly to float)."""
        n = _count(self.shape)
        values = list(struct.unpack(f"<{n}{DTYPES[self.dtype][0]}", self.data))
        if self.dtype == "float16":
            return [_widen_float16(b) for b in values]
        if self.dtype == "bfloat16":
            return [_widen_bfloat16(b) for b in values]
        return values

    def tolist(self) -> Any:
        """The values nested to the shape, like numpy's tolist (a scalar for rank 0)."""
        return _nest(self.flat(), self.shape)

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tensor):
            return NotImplemented
        return (self.dtype, self.shape, self.data) == (other.dtype, other.shape, other.data)

    def __repr__(self) -> str:
        return f"Tensor(dtype={self.dtype!r}, shape={self.shape!r}, nbytes={len(self.data)})"


TensorLike = Union[Tensor, Any]


def _as_tensor(name: str, t: TensorLike) -> Tensor:
    if isinstance(t, Tensor):
        return t
    if hasattr(t, "dtype") and hasattr(t, "tobytes") and hasattr(t, "shape"):
        return Tensor.from_numpy(t)
    raise TypeError(f"input {name!r}: expected a Tensor or a numpy array, got {type(t).__name__}")


def _tensors(inputs: Mapping[str, TensorLike]) -> list[tuple[str, Tensor]]:
    return [(name, _as_tensor(name, t)) for name, t in inputs.items()]


def _json_tensor(t: Tensor) -> dict[str, Any]:
    return {"dtype": t.dtype, "shape": t.shape, "data": base64.b64encode(t.data).decode("ascii")}


def _descriptor(name: str, t: Tensor) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": DTYPES[t.dtype][2],
        "shape": t.shape,
        "parameters": {"binary_data_size": len(t.data)},
    }


def _binary_body(header: Mapping[str, Any], tensors: Iterable[Tensor]) -> tuple[bytes, int]:
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return b"".join([head, *(t.data for t in tensors)]), len(head)


def _split_binary(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None or not header_length.isdigit() or int(header_length) > len(body):
        raise CitadelError(0, "BINARY_HEADER_LENGTH_INVALID", f"answer has a bad {_HEADER_LENGTH}: {header_length!r}")
    n = int(header_length)
    return json.loads(body[:n].decode("utf-8")), body[n:]


def _slice_outputs(descriptors: Sequence[Mapping[str, Any]], data: bytes) -> dict[str, Tensor]:
    """Binary outputs in header order, each `parameters.binary_data_size` bytes."""
    out: dict[str, Tensor] = {}
    at = 0
    for d in descriptors:
        size = int(d["parameters"]["binary_data_size"])
        out[d["name"]] = Tensor(_FROM_KSERVE[d["datatype"]], d["shape"], data[at : at + size])
        at += size
    if at != len(data):
        raise CitadelError(0, "BINARY_DATA_SIZE_MISMATCH", f"answer has {len(data) - at} bytes past its outputs")
    return out


def _decode_view(view: dict[str, Any], binary: bytes | None = None) -> dict[str, Any]:
    """A job view (or batch result line) with result.outputs as {name: Tensor}."""
    result = view.get("result")
    if isinstance(result, dict) and "outputs" in result:
        outputs = result["outputs"]
        if binary is not None:
            result["outputs"] = _slice_outputs(outputs, binary)
        else:
            result["outputs"] = {
                name: Tensor(t["dtype"], t["shape"], base64.b64decode(t["data"])) for name, t in outputs.items()
            }
    return view


# --- errors and HTTP -----------------------------------------------------------------


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    v = value.strip()
    if v.isdigit():
        return float(v)
    try:
        return max(0.0, parsedate_to_datetime(v).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


_V2_ERROR = re.compile(r"^([A-Z][A-Z0-9_]*): (.*)$", re.DOTALL)


def _error(status: int, headers: Mapping[str, str], body: bytes) -> CitadelError:
    """The API's error envelope ({"error":{code,message}}, or /v2's {"error":"CODE: message"}) as a CitadelError."""
    retry = _retry_after(headers.get("retry-after"))
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        return CitadelError(status, err["code"], str(err.get("message", "")), retry, err.get("details"))
    if isinstance(err, str):
        m = _V2_ERROR.match(err)
        if m:
            return CitadelError(status, m.group(1), m.group(2), retry)
        return CitadelError(status, f"HTTP_{status}", err, retry)
    return CitadelError(status, f"HTTP_{status}", body[:200].decode("utf-8", "replace"), retry)


def _object(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise CitadelError(0, "UNEXPECTED_ANSWER", f"expected a JSON object, got {type(doc).__name__}")
    return doc


class _Answer:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (every answer of the API is one)."""
        return _object(json.loads(self.body.decode("utf-8")))

    @property
    def binary(self) -> bool:
        return self.headers.get("content-type", "").split(";")[0].strip() == _OCTET


def _jsonl_chunks(lines: Iterable[Any], chunk_bytes: int) -> Iterator[bytes]:
    """Batch lines encoded one at a time and sent in chunks of about chunk_bytes: never the whole file in memory."""
    buf: list[bytes] = []
    size = 0
    for line in lines:
        if isinstance(line, bytes):
            raw = line.rstrip(b"\r\n") + b"\n"
        elif isinstance(line, str):
            raw = (line.rstrip("\r\n") + "\n").encode("utf-8")
        else:
            raw = json.dumps(_batch_line(line), separators=(",", ":")).encode("utf-8") + b"\n"
        buf.append(raw)
        size += len(raw)
        if size >= chunk_bytes:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


def _batch_line(line: Mapping[str, Any]) -> dict[str, Any]:
    """A batch line as the API takes it: {custom_id, body}, tensors as base64. A bare job dict with custom_id is wrapped."""
    if "body" in line:
        out = dict(line)
        out["body"] = _json_job(line["body"])
        return out
    job = dict(line)
    if "custom_id" not in job:
        raise ValueError("a batch line needs a custom_id")
    return {"custom_id": job["custom_id"], "body": _json_job(job)}


_JOB_KEYS = {"timeout_ms": "timeoutMs"}


def _json_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """A job (as submit's keyword names) as a POST /v1/jobs JSON body."""
    body: dict[str, Any] = {}
    for key, value in job.items():
        if value is None:
            continue
        if key == "inputs":
            body["inputs"] = {
                name: (t if isinstance(t, dict) else _json_tensor(_as_tensor(name, t))) for name, t in value.items()
            }
        else:
            body[_JOB_KEYS.get(key, key)] = value
    return body


def _binary_job_header(job: Mapping[str, Any], tensors: list[tuple[str, Tensor]]) -> dict[str, Any]:
    header: dict[str, Any] = {}
    for key, value in job.items():
        if value is None or key == "inputs":
            continue
        if key == "outputs":
            header["outputs"] = [{"name": o} for o in value]
        else:
            header[_JOB_KEYS.get(key, key)] = value
    header["inputs"] = [_descriptor(name, t) for name, t in tensors]
    header["parameters"] = {"binary_data_output": True}
    return header


class Client:
    """A client of one Citadel API with one tenant key.

    `retries`: how many times a request refused with 429 or 503 is sent again, after the
    API's Retry-After (capped at `max_retry_wait_s`; 1 s when it sent none), with the same
    Idempotency-Key. Nothing was queued by those refusals, except that a 503
    QUEUE_UNAVAILABLE may leave an enqueue's outcome unknown: pass idempotency_key to make
    such a retry exactly-once. Batch uploads are not retried (their lines are a stream).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 30.0,
        retries: int = 2,
        max_retry_wait_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._scheme = url.scheme
        self._host = url.hostname
        self._port = url.port
        self._prefix = url.path.rstrip("/")
        self._key = api_key
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait_s = max_retry_wait_s
        self._ssl = ssl_context

    def __repr__(self) -> str:  # never the key
        return f"Client({self.base_url!r})"

    # --- transport ---

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._ssl or ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self._key}", "User-Agent": f"citadel-client-python/{__version__}"}
        h.update(extra or {})
        return h

    def _open(
        self,
        method: str,
        path: str,
        body: None | bytes | Iterable[bytes],
        headers: Mapping[str, str] | None,
        timeout: float,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Sends a request; the answer's body is left to read. A stream body goes chunked."""
        conn = self._connect(timeout)
        h = self._headers(headers)
        try:
            if body is None or isinstance(body, bytes):
                conn.request(method, self._prefix + path, body=body, headers=h)
            else:
                h["Transfer-Encoding"] = "chunked"
                try:
                    conn.request(method, self._prefix + path, body=body, headers=h, encode_chunked=True)
                except (BrokenPipeError, ConnectionResetError):
                    # The API may answer (413, 401) and close before the upload ends: read that answer.
                    pass
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise CitadelError(0, "CONNECTION_FAILED", f"cannot reach the API at {self.base_url}: {err}") from err

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        wait_ms: int | None = None,
        ok: Sequence[int] = (200, 202),
    ) -> _Answer:
        """One request, read whole; 429/503 retried per `retries`; any status outside `ok` raised as CitadelError."""
        timeout = self.timeout + (wait_ms or 0) / 1000
        attempt = 0
        while True:
            conn, resp = self._open(method, path, body, headers, timeout)
            try:
                data = resp.read()
            except (OSError, http.client.HTTPException) as err:
                raise CitadelError(0, "CONNECTION_FAILED", f"reading the answer from {self.base_url}: {err}") from err
            finally:
                conn.close()
            answer = _Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
            if answer.status in ok:
                return answer
            refusal = _error(answer.status, answer.headers, answer.body)
            if refusal.retryable and attempt < self.retries:
                attempt += 1
                wait_s = refusal.retry_after if refusal.retry_after is not None else 1.0
                time.sleep(min(self.max_retry_wait_s, wait_s))
                continue
            raise refusal

    def _json(self, body: Any) -> tuple[bytes, dict[str, str]]:
        return json.dumps(body, separators=(",", ":")).encode("utf-8"), {"Content-Type": "application/json"}

    # --- jobs ---

    def _submit_request(
        self,
        model: str,
        inputs: Mapping[str, TensorLike],
        options: dict[str, Any],
        idempotency_key: str | None,
        binary: bool,
    ) -> tuple[bytes, dict[str, str]]:
        job = {"model": model, "inputs": inputs, **options}
        if binary:
            tensors = _tensors(inputs)
            body, n = _binary_body(_binary_job_header(job, tensors), (t for _, t in tensors))
            headers = {"Content-Type": _OCTET, _HEADER_LENGTH: str(n), "Accept": f"{_OCTET}, application/json;q=0.9"}
        else:
            body, headers = self._json(_json_job(job))
            headers["Accept"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return body, headers

    @staticmethod
    def _options(
        version: str | None,
        outputs: Sequence[str] | None,
        timeout_ms: int | None,
        priority: str | None,
        custom_id: str | None,
        metadata: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        o = {
            "version": version,
            "outputs": list(outputs) if outputs is not None else None,
            "timeout_ms": timeout_ms,
            "priority": priority,
            "custom_id": custom_id,
            "metadata": dict(metadata) if metadata is not None else None,
        }
        return {k: v for k, v in o.items() if v is not None}

    def submit(
        self,
        model: str,
        inputs: Mapping[str, TensorLike],
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        timeout_ms: int | None = None,
        priority: str | None = None,
        custom_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        binary: bool = True,
    ) -> dict[str, Any]:
        """POST /v1/jobs: the accepted job, {id, status, model, version}."""
        opts = self._options(version, outputs, timeout_ms, priority, custom_id, metadata)
        body, headers = self._submit_request(model, inputs, opts, idempotency_key, binary)
        return self._send("POST", "/v1/jobs", body, headers, ok=(202,)).json()

    def submit_and_wait(
        self,
        model: str,
        inputs: Mapping[str, TensorLike],
        wait_ms: int = 30_000,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        timeout_ms: int | None = None,
        priority: str | None = None,
        custom_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        binary: bool = True,
    ) -> dict[str, Any]:
        """POST /v1/jobs?wait=ms (wait_ms at most the API's MAX_WAIT_MS): the job's final view
        (result.outputs as Tensors) when it finished in time, else the accepted body (status
        "queued"; follow it with wait())."""
        opts = self._options(version, outputs, timeout_ms, priority, custom_id, metadata)
        body, headers = self._submit_request(model, inputs, opts, idempotency_key, binary)
        answer = self._send("POST", f"/v1/jobs?wait={int(wait_ms)}", body, headers, wait_ms=wait_ms)
        return self._view(answer)

    def _view(self, answer: _Answer) -> dict[str, Any]:
        if answer.binary:
            header, data = _split_binary(answer.body, answer.headers.get(_HEADER_LENGTH.lower()))
            return _decode_view(header, data)
        return _decode_view(answer.json())

    def get_job(self, job_id: str, wait_ms: int | None = None, binary: bool = True) -> dict[str, Any]:
        """GET /v1/jobs/{id}[?wait=ms]: the job's view; a completed one with result.outputs as Tensors."""
        query = f"?wait={int(wait_ms)}" if wait_ms is not None else ""
        accept = f"{_OCTET}, application/json;q=0.9" if binary else "application/json"
        path = f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}{query}"
        return self._view(self._send("GET", path, headers={"Accept": accept}, wait_ms=wait_ms, ok=(200,)))

    def wait(
        self, job_id: str, timeout_s: float = 60.0, binary: bool = True, poll_ms: int = _POLL_MS
    ) -> dict[str, Any]:
        """Long-polls until the job is final and returns its view; CitadelError RESULT_PENDING when timeout_s passes first.

        Each GET waits up to poll_ms, which must not exceed the API's MAX_WAIT_MS (30 s by default)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            view = self.get_job(job_id, wait_ms=max(0, min(poll_ms, left_ms)), binary=binary)
            if view.get("status") in _FINAL:
                return view
            if time.monotonic() >= deadline:
                raise CitadelError(
                    0, "RESULT_PENDING", f"job {job_id!r} is still {view.get('status')} after {timeout_s} s"
                )

    def cancel(self, job_id: str) -> dict[str, Any]:
        """DELETE /v1/jobs/{id}: {id, status} — cancelled, cancelling (it was running), or its final status."""
        return self._send("DELETE", f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}", ok=(202,)).json()

    def submit_bulk(
        self,
        items: Sequence[Mapping[str, Any]],
        idempotency_key: str | None = None,
        binary: bool = True,
    ) -> list[dict[str, Any] | CitadelError]:
        """POST /v1/jobs/bulk. Each item takes submit's keyword names (model, inputs, version, outputs,
        timeout_ms, priority, custom_id, metadata). Returns one entry per item, in order: the
        accepted job {index, id, status, model, version}, or the CitadelError that refused it."""
        jobs = []
        for item in items:
            opts = self._options(
                item.get("version"),
                item.get("outputs"),
                item.get("timeout_ms"),
                item.get("priority"),
                item.get("custom_id"),
                item.get("metadata"),
            )
            jobs.append({"model": item["model"], "inputs": item["inputs"], **opts})
        if binary:
            headers_list = []
            tensors: list[Tensor] = []
            for job in jobs:
                ts = _tensors(job["inputs"])
                header = _binary_job_header(job, ts)
                del header["parameters"]  # bulk answers are never results
                headers_list.append(header)
                tensors.extend(t for _, t in ts)
            body, n = _binary_body({"jobs": headers_list}, tensors)
            headers = {"Content-Type": _OCTET, _HEADER_LENGTH: str(n)}
        else:
            body, headers = self._json({"jobs": [_json_job(j) for j in jobs]})
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        answer = self._send("POST", "/v1/jobs/bulk", body, headers, ok=(202,)).json()
        out: list[dict[str, Any] | CitadelError] = [None] * len(jobs)  # type: ignore[list-item]
        for r in answer["jobs"]:
            if "error" in r:
                e = r["error"]
                out[r["index"]] = CitadelError(r["status"], e["code"], e["message"], None, e.get("details"))
            else:
                out[r["index"]] = r
        return out

    def models(self) -> list[dict[str, Any]]:
        """GET /v1/models: the models this tenant may use, with their specs and limits."""
        models: list[dict[str, Any]] = self._send("GET", "/v1/models", ok=(200,)).json()["models"]
        return models

    # --- batches ---

    def create_batch(self, lines: Iterable[Any], chunk_bytes: int = 64 * 1024) -> dict[str, Any]:
        """POST /v1/batches: the batch's view. `lines` is any iterable (a generator, an open
        .jsonl file): dicts {custom_id, body} in the OpenAI Batch API's shape, or job dicts
        with custom_id (submit's keyword names; Tensors and numpy arrays sent as base64), or
        ready JSONL strings. It is consumed lazily and uploaded with chunked transfer
        encoding, so the file is never held whole."""
        conn, resp = self._open(
            "POST",
            "/v1/batches",
            _jsonl_chunks(lines, chunk_bytes),
            {"Content-Type": "application/jsonl", "Accept": "application/json"},
            self.timeout,
        )
        try:
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 202:
            raise _error(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        return _object(json.loads(data.decode("utf-8")))

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        """GET /v1/batches/{id}: status and counts."""
        return self._send("GET", f"/v1/batches/{urllib.parse.quote(batch_id, safe='')}", ok=(200,)).json()

    def wait_batch(self, batch_id: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> dict[str, Any]:
        """Polls a batch until it is completed, cancelled or expired; CitadelError RESULT_PENDING after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.get_batch(batch_id)
            if view["status"] in _BATCH_FINAL:
                return view
            if time.monotonic() >= deadline:
                raise CitadelError(
                    0, "RESULT_PENDING", f"batch {batch_id!r} is still {view['status']} after {timeout_s} s"
                )
            time.sleep(poll_s)

    def batch_results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """GET /v1/batches/{id}/results, streamed: one parsed line at a time, in the file's
        order ({custom_id, line, id, status, result with outputs as Tensors, or error})."""
        path = f"/v1/batches/{urllib.parse.quote(batch_id, safe='')}/results"
        conn, resp = self._open("GET", path, None, {"Accept": "application/jsonl"}, self.timeout)
        try:
            if resp.status != 200:
                raise _error(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
            for raw in resp:
                if raw.strip():
                    yield _decode_view(json.loads(raw.decode("utf-8")))
        finally:
            conn.close()

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """DELETE /v1/batches/{id}: the batch's view (queued jobs removed, active ones cancelled)."""
        return self._send("DELETE", f"/v1/batches/{urllib.parse.quote(batch_id, safe='')}", ok=(202,)).json()

    # --- Open Inference Protocol (KServe v2) ---

    def infer_v2(
        self,
        model: str,
        inputs: Mapping[str, TensorLike],
        version: str | None = None,
        binary: bool = True,
        outputs: Sequence[str] | None = None,
        request_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """POST /v2/models/{model}[/versions/{v}]/infer, synchronous: the protocol's answer
        {model_name, model_version, id, parameters: {job_id}, outputs: {name: Tensor}}.
        binary=False sends JSON numbers (exact for every dtype but int64 past ±2^53)."""
        tensors = _tensors(inputs)
        request: dict[str, Any] = {}
        if request_id is not None:
            request["id"] = request_id
        if outputs is not None:
            request["outputs"] = [{"name": o} for o in outputs]
        headers: dict[str, str] = {}
        if binary:
            request["inputs"] = [_descriptor(name, t) for name, t in tensors]
            request["parameters"] = {"binary_data_output": True}
            body, n = _binary_body(request, (t for _, t in tensors))
            headers = {"Content-Type": _OCTET, _HEADER_LENGTH: str(n)}
        else:
            request["inputs"] = [
                {"name": name, "shape": t.shape, "datatype": DTYPES[t.dtype][2], "data": t.flat()}
                for name, t in tensors
            ]
            body, headers = self._json(request)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{urllib.parse.quote(version, safe='')}"
        answer = self._send("POST", f"{path}/infer", body, headers, ok=(200,))
        if answer.binary:
            doc, data = _split_binary(answer.body, answer.headers.get(_HEADER_LENGTH.lower()))
        else:
            doc, data = answer.json(), b""
        # Outputs with binary_data_size are sliced from the bytes in order; the others carry data.
        sized = [o for o in doc["outputs"] if "data" not in o]
        from_bytes = _slice_outputs(sized, data)
        doc["outputs"] = {
            o["name"]: from_bytes[o["name"]]
            if "data" not in o
            else Tensor.from_list(o["data"], _FROM_KSERVE[o["datatype"]], o["shape"])
            for o in doc["outputs"]
        }
        return doc


# --- webhooks ------------------------------------------------------------------------


def _header(headers: Any, name: str) -> str | None:
    items = headers.items() if hasattr(headers, "items") else headers
    for k, v in items:
        if k.lower() == name:
            return str(v)
    return None


def verify_webhook(
    secret: str | bytes,
    headers: Any,
    body: bytes | str,
    tolerance_s: int = 300,
    now: float | None = None,
) -> Any:
    """Verifies a Standard Webhooks delivery (https://www.standardwebhooks.com/) and returns its parsed JSON body.

    `secret`: "whsec_<base64>" (or the base64 alone, or the raw key bytes). `headers`: any
    mapping or list of pairs (names case-insensitive) with webhook-id, webhook-timestamp and
    webhook-signature. `body`: the raw body as received. The signed content is
    "{id}.{timestamp}.{body}", HMAC-SHA256; webhook-signature lists "v1,<base64>" entries
    separated by spaces, one of which must match (compared in constant time); the
    timestamp must be within tolerance_s of now, either way. Raises WebhookVerificationError.
    """
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not stamp.isdigit():
        raise WebhookVerificationError("webhook-timestamp is not a number of seconds")
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance (a replay, or a skewed clock)")
    if isinstance(secret, bytes):
        key = secret
    else:
        encoded = secret.removeprefix("whsec_")
        try:
            key = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise WebhookVerificationError("the secret is not whsec_ followed by base64") from None
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + raw, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode("ascii")
    matched = False
    for entry in signatures.split(" "):
        version, _, sig = entry.partition(",")
        # Every entry is compared, so the time taken does not depend on which one matches.
        if version == "v1" and hmac.compare_digest(sig.encode("ascii", "replace"), expected.encode("ascii")):
            matched = True
    if not matched:
        raise WebhookVerificationError("no webhook-signature entry matches")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise WebhookVerificationError("the signature matches but the body is not JSON") from None
