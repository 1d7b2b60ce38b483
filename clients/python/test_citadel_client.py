"""Tests of citadel_client.py (standard library unittest).

Offline tests (tensors, webhooks, the wire format and retries against a local stand-in
server) always run. Tests against a running fleet run when CITADEL_API_URL, CITADEL_API_KEY
and CITADEL_TEST_FIXTURES are set; test/e2e/client-python.test.ts sets them, with reference
outputs from direct onnxruntime runs, and runs this file twice: with numpy, and with numpy
made unimportable (CITADEL_EXPECT_NUMPY says which, so neither run can pass by accident).

    cd clients/python && python3 -m unittest -v
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import struct
import threading
import unittest
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from unittest import mock

import citadel_client as cc
from citadel_client import CitadelError, Client, Tensor, WebhookVerificationError, verify_webhook

try:
    import numpy as np
except ImportError:
    np = None

API_URL = os.environ.get("CITADEL_API_URL")
API_KEY = os.environ.get("CITADEL_API_KEY")
FIXTURES = os.environ.get("CITADEL_TEST_FIXTURES")
LIVE = bool(API_URL and API_KEY and FIXTURES)
NO_FLEET = (
    "no fleet: set CITADEL_API_URL, CITADEL_API_KEY and CITADEL_TEST_FIXTURES (test/e2e/client-python.test.ts does)"
)
NO_NUMPY = "numpy is not importable in this run"


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


class NumpyPresence(unittest.TestCase):
    def test_numpy_is_as_the_runner_says(self) -> None:
        expect = os.environ.get("CITADEL_EXPECT_NUMPY")
        if expect is None:
            self.skipTest("CITADEL_EXPECT_NUMPY not set (the e2e runner sets it)")
        self.assertEqual(cc.numpy_available(), expect == "1")
        self.assertEqual(np is not None, expect == "1")


class TensorPacking(unittest.TestCase):
    def test_every_dtype_round_trips_through_bytes(self) -> None:
        cases: dict[str, list[Any]] = {
            "float32": [0.5, -1.25, 3.0, 1e-3],
            "float64": [0.1, -2.5e300, 0.0, 7.0],
            "float16": [1.0, -2.0, 65504.0, 0.0999755859375],
            "bfloat16": [1.0, -2.0, 3.015625, 1e30],
            "int8": [-128, 127, 0, 5],
            "uint8": [0, 255, 1, 2],
            "int16": [-32768, 32767, 0, -1],
            "uint16": [0, 65535, 1, 2],
            "int32": [-(2**31), 2**31 - 1, 0, 9],
            "int64": [-(2**63), 2**63 - 1, 2**53 + 1, -3],
            "bool": [True, False, True, True],
        }
        for dtype, values in cases.items():
            with self.subTest(dtype=dtype):
                t = Tensor.from_list(values, dtype, [2, 2])
                self.assertEqual(t.nbytes, 4 * cc.DTYPES[dtype][1])
                if dtype == "float32":
                    self.assertEqual(t.flat(), [struct.unpack("<f", struct.pack("<f", v))[0] for v in values])
                elif dtype == "bfloat16":
                    self.assertEqual(
                        t.flat(), [1.0, -2.0, 3.015625, struct.unpack("<f", struct.pack("<I", 0x714A << 16))[0]]
                    )
                else:
                    self.assertEqual(t.flat(), values)
                self.assertEqual(t.tolist(), [t.flat()[:2], t.flat()[2:]])
                self.assertEqual(Tensor(dtype, [2, 2], t.data), t)

    def test_little_endian_row_major(self) -> None:
        t = Tensor.from_list([[1, 2], [3, 4]], "int32")
        self.assertEqual(t.shape, [2, 2])
        self.assertEqual(t.data, bytes.fromhex("01000000020000000300000004000000"))
        self.assertEqual(Tensor.from_list([1.0], "float32", [1]).data, bytes.fromhex("0000803f"))
        self.assertEqual(Tensor.from_list(2.5, "float64", []).tolist(), 2.5)

    def test_float16_bits_round_to_nearest_even(self) -> None:
        # The same patterns test/e2e/half-precision.test.ts sends, and their values.
        pairs = [
            (1.0, 0x3C00),
            (-2.0, 0xC000),
            (65504.0, 0x7BFF),
            (2.0**-24, 0x0001),
            (-0.0, 0x8000),
            (2.0**-14, 0x0400),
            (1 + 2.0**-10, 0x3C01),
            (1 + 2.0**-11, 0x3C00),  # a tie: to even
            (1 + 3 * 2.0**-11, 0x3C02),  # a tie: to even
            (65520.0, 0x7C00),  # past the largest finite: Inf (the API refuses it)
            (2.0**-25, 0x0000),  # a tie with zero
            (math.inf, 0x7C00),
        ]
        for value, bits in pairs:
            self.assertEqual(cc.float16_bits(value), bits, value)
            if not math.isinf(value) and value != 65520.0 and bits != 0:
                self.assertEqual(cc._widen_float16(bits), struct.unpack("<e", struct.pack("<e", value))[0])
        self.assertEqual(cc.float16_bits(math.nan), 0x7E00)

    def test_bfloat16_bits_round_to_nearest_even_from_the_float64(self) -> None:
        pairs = [
            (1.0, 0x3F80),
            (1 + 2.0**-8, 0x3F80),  # a tie: to even
            (1 + 3 * 2.0**-8, 0x3F82),  # a tie: to even
            (1 + 2.0**-8 + 2.0**-30, 0x3F81),  # just past the tie (lost if rounded through float32 first)
            (-3.0078125, 0xC040),  # a tie (ulp 2^-6 here): to even, -3
            (3.015625, 0x4041),
            (3.4e38, 0x7F80),  # rounds past the largest finite: Inf
            (2.0**-133, 0x0001),  # the smallest subnormal
        ]
        for value, bits in pairs:
            self.assertEqual(cc.bfloat16_bits(value), bits, value)
        self.assertEqual(cc._widen_bfloat16(0x3F81), 1 + 2.0**-7)
        self.assertEqual(cc.bfloat16_bits(math.nan), 0x7FC0)

    def test_refuses_what_does_not_fit(self) -> None:
        with self.assertRaises(ValueError):
            Tensor.from_list([1, 2, 3], "float32", [2, 2])
        with self.assertRaises(ValueError):
            Tensor.from_list([300], "uint8", [1])
        with self.assertRaises(ValueError):
            Tensor.from_list([[1, 2], [3]], "int32")
        with self.assertRaises(ValueError):
            Tensor("float32", [2], b"\x00" * 7)
        with self.assertRaises(ValueError):
            Tensor("complex64", [1], b"\x00" * 8)

    @unittest.skipUnless(np is not None, NO_NUMPY)
    def test_numpy_helpers_match_the_struct_packing(self) -> None:
        for dtype in ("float32", "float64", "float16", "int8", "uint8", "int16", "uint16", "int32", "int64", "bool"):
            with self.subTest(dtype=dtype):
                arr = (np.arange(12).reshape(3, 4) % 3 - 1).astype(dtype)
                t = Tensor.from_numpy(arr)
                self.assertEqual(t, Tensor.from_list(arr.tolist(), dtype, [3, 4]))
                back = t.to_numpy()
                self.assertEqual(back.dtype, arr.dtype)
                self.assertTrue(np.array_equal(back, arr))
        # Big-endian and Fortran-ordered arrays are written little-endian, row-major.
        be = np.array([[1, 2], [3, 4]], dtype=">i4", order="F")
        self.assertEqual(Tensor.from_numpy(be).data, Tensor.from_list([[1, 2], [3, 4]], "int32").data)
        # bfloat16: uint16 bit patterns as they are, floats rounded like from_list; widened to float32.
        bits = np.array([0x3F80, 0xC040], dtype=np.uint16)
        t = Tensor.from_numpy(bits, dtype="bfloat16")
        self.assertEqual(t, Tensor.from_list([1.0, -3.0], "bfloat16", [2]))
        self.assertEqual(
            Tensor.from_numpy(np.array([1 + 3 * 2.0**-8]), dtype="bfloat16").data, struct.pack("<H", 0x3F82)
        )
        self.assertEqual(t.to_numpy().dtype, np.float32)
        self.assertEqual(t.to_numpy().tolist(), [1.0, -3.0])
        self.assertEqual(t.to_numpy(bfloat16_bits=True).tolist(), [0x3F80, 0xC040])

    @unittest.skipIf(np is not None, "numpy is importable in this run")
    def test_without_numpy_the_helpers_say_so(self) -> None:
        self.assertFalse(cc.numpy_available())
        t = Tensor.from_list([1.0], "float32", [1])
        with self.assertRaisesRegex(ImportError, "numpy is not installed"):
            t.to_numpy()
        with self.assertRaisesRegex(ImportError, "numpy is not installed"):
            Tensor.from_numpy([1.0])


class Webhooks(unittest.TestCase):
    # The Standard Webhooks signing vector (standard-webhooks/standard-webhooks,
    # libraries/go/webhook_test.go, TestWebhookSign).
    SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    TS = 1614265330
    BODY = b'{"test": 2432232314}'
    SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

    def headers(self, **over: str) -> dict[str, str]:
        h = {"webhook-id": self.ID, "webhook-timestamp": str(self.TS), "webhook-signature": self.SIG}
        h.update({k.replace("_", "-"): v for k, v in over.items()})
        return h

    def test_the_specification_vector_verifies(self) -> None:
        self.assertEqual(verify_webhook(self.SECRET, self.headers(), self.BODY, now=self.TS), {"test": 2432232314})
        # Header names are case-insensitive; the body may be text; the secret may come without its prefix.
        upper = {k.title(): v for k, v in self.headers().items()}
        self.assertEqual(
            verify_webhook(self.SECRET[6:], upper, self.BODY.decode(), now=self.TS + 299), {"test": 2432232314}
        )

    def test_an_independently_computed_signature_verifies(self) -> None:
        key = os.urandom(32)
        body = b'{"type":"job.completed","data":{"id":"multi.x"}}'
        mac = hmac.new(key, b"msg_1.1700000000." + body, hashlib.sha256).digest()
        secret = "whsec_" + base64.b64encode(key).decode()
        sig = "v1," + base64.b64encode(mac).decode()
        h = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": sig}
        self.assertEqual(verify_webhook(secret, h, body, now=1700000000)["type"], "job.completed")
        self.assertEqual(verify_webhook(key, list(h.items()), body, now=1700000000)["type"], "job.completed")

    def test_one_matching_entry_among_several_is_enough(self) -> None:
        other = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
        many = f"{other} v2,{self.SIG[3:]} {self.SIG} {other}"
        verify_webhook(self.SECRET, self.headers(webhook_signature=many), self.BODY, now=self.TS)

    def test_refusals(self) -> None:
        wrong = "whsec_" + base64.b64encode(b"another secret of thirty-two b!!").decode()
        cases: list[tuple[str, Callable[[], Any]]] = [
            (
                "tampered body",
                lambda: verify_webhook(self.SECRET, self.headers(), b'{"test": 2432232315}', now=self.TS),
            ),
            ("wrong secret", lambda: verify_webhook(wrong, self.headers(), self.BODY, now=self.TS)),
            ("other id", lambda: verify_webhook(self.SECRET, self.headers(webhook_id="msg_2"), self.BODY, now=self.TS)),
            (
                "only a v2 entry",
                lambda: verify_webhook(
                    self.SECRET, self.headers(webhook_signature="v2," + self.SIG[3:]), self.BODY, now=self.TS
                ),
            ),
            ("too old", lambda: verify_webhook(self.SECRET, self.headers(), self.BODY, now=self.TS + 301)),
            ("too new", lambda: verify_webhook(self.SECRET, self.headers(), self.BODY, now=self.TS - 301)),
            (
                "no signature",
                lambda: verify_webhook(
                    self.SECRET, {"webhook-id": self.ID, "webhook-timestamp": str(self.TS)}, self.BODY, now=self.TS
                ),
            ),
            (
                "bad timestamp",
                lambda: verify_webhook(
                    self.SECRET, self.headers(webhook_timestamp="16142653e1"), self.BODY, now=self.TS
                ),
            ),
            ("bad secret", lambda: verify_webhook("whsec_not base64!", self.headers(), self.BODY, now=self.TS)),
        ]
        for name, call in cases:
            with self.subTest(name):
                self.assertRaises(WebhookVerificationError, call)


class StandIn:
    """A local HTTP server that answers from a script and records every request (headers, body as received)."""

    def __init__(
        self, answer: Callable[[StandIn, BaseHTTPRequestHandler, bytes], tuple[int, dict[str, str], bytes]]
    ) -> None:
        self.requests: list[dict[str, Any]] = []
        self.first_chunk = threading.Event()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                        stand_in.first_chunk.set()
                    stand_in.requests[-1]["chunks"] = len(chunks)
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def _any(self) -> None:
                stand_in.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                body = self._read_body()
                stand_in.requests[-1]["body"] = body
                status, headers, out = answer(stand_in, self, body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def json_answer(status: int, doc: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(doc).encode()


class WireFormat(unittest.TestCase):
    def test_binary_submit_is_the_kserve_framing_and_a_binary_answer_is_sliced(self) -> None:
        y = struct.pack("<4f", 2, 3, 4, 5)
        view = {
            "id": "m.1",
            "status": "completed",
            "model": "m",
            "version": "1",
            "createdAt": "t",
            "result": {
                "provider": "cpu",
                "batchSize": 1,
                "queueMs": 1,
                "inferenceMs": 1,
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}],
            },
        }
        head = json.dumps(view).encode()

        def answer(_s: StandIn, _h: BaseHTTPRequestHandler, _b: bytes) -> tuple[int, dict[str, str], bytes]:
            return (
                200,
                {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
                head + y,
            )

        srv = StandIn(answer)
        try:
            c = Client(srv.url, "ctd_test-key")
            a = Tensor.from_list([[1, 2, 3, 4]], "float32")
            b = Tensor.from_list([[1]], "int64")
            got = c.submit_and_wait(
                "m", {"a": a, "b": b}, wait_ms=5000, custom_id="c-1", timeout_ms=900, idempotency_key="k-1"
            )
            self.assertEqual(got["result"]["outputs"]["y"].tolist(), [[2.0, 3.0, 4.0, 5.0]])
            req = srv.requests[0]
            self.assertEqual(req["path"], "/v1/jobs?wait=5000")
            self.assertEqual(req["headers"]["Authorization"], "Bearer ctd_test-key")
            self.assertEqual(req["headers"]["Content-Type"], "application/octet-stream")
            self.assertEqual(req["headers"]["Idempotency-Key"], "k-1")
            n = int(req["headers"]["Inference-Header-Content-Length"])
            header = json.loads(req["body"][:n])
            self.assertEqual(
                header,
                {
                    "model": "m",
                    "timeoutMs": 900,
                    "custom_id": "c-1",
                    "inputs": [
                        {"name": "a", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}},
                        {"name": "b", "datatype": "INT64", "shape": [1, 1], "parameters": {"binary_data_size": 8}},
                    ],
                    "parameters": {"binary_data_output": True},
                },
            )
            self.assertEqual(req["body"][n:], a.data + b.data)
        finally:
            srv.close()

    def test_retries_429_after_retry_after_with_the_same_idempotency_key(self) -> None:
        def answer(s: StandIn, _h: BaseHTTPRequestHandler, _b: bytes) -> tuple[int, dict[str, str], bytes]:
            if len(s.requests) <= 2:
                return json_answer(
                    429, {"error": {"code": "RATE_LIMITED", "message": "slow down"}}, {"Retry-After": "2"}
                )
            return json_answer(202, {"id": "m.1", "status": "queued", "model": "m", "version": "1"})

        srv = StandIn(answer)
        try:
            x = {"x": Tensor.from_list([1.0], "float32", [1, 1])}
            with mock.patch.object(cc.time, "sleep") as sleep:
                got = Client(srv.url, "k", retries=2).submit("m", x, idempotency_key="same-key")
            self.assertEqual(got["id"], "m.1")
            self.assertEqual([c.args[0] for c in sleep.call_args_list], [2.0, 2.0])
            self.assertEqual([r["headers"].get("Idempotency-Key") for r in srv.requests], ["same-key"] * 3)
            self.assertEqual(len({r["body"] for r in srv.requests}), 1)

            srv.requests.clear()
            with mock.patch.object(cc.time, "sleep"), self.assertRaises(CitadelError) as e:
                Client(srv.url, "k", retries=1).submit("m", x)
            self.assertEqual(
                (e.exception.status, e.exception.code, e.exception.retry_after), (429, "RATE_LIMITED", 2.0)
            )
            self.assertEqual(len(srv.requests), 2)
        finally:
            srv.close()

    def test_a_refusal_no_wait_can_fix_is_not_retried_and_v2_errors_are_parsed(self) -> None:
        def answer(_s: StandIn, h: BaseHTTPRequestHandler, _b: bytes) -> tuple[int, dict[str, str], bytes]:
            if h.path.startswith("/v2"):
                return json_answer(400, {"error": "TENSOR_SHAPE_MISMATCH: input 'a': expected [-1,4], got [1,5]"})
            return json_answer(
                429, {"error": {"code": "RATE_LIMITED", "message": "over the burst", "details": {"retryable": False}}}
            )

        srv = StandIn(answer)
        try:
            c = Client(srv.url, "k", retries=3)
            with self.assertRaises(CitadelError) as e:
                c.models()
            self.assertEqual((e.exception.code, e.exception.retry_after, len(srv.requests)), ("RATE_LIMITED", None, 1))
            with self.assertRaises(CitadelError) as e:
                c.infer_v2("multi", {"a": Tensor.from_list([[1, 2, 3, 4, 5]], "float32")})
            self.assertEqual((e.exception.status, e.exception.code), (400, "TENSOR_SHAPE_MISMATCH"))
            self.assertEqual(e.exception.message, "input 'a': expected [-1,4], got [1,5]")
        finally:
            srv.close()

    def test_create_batch_streams_its_lines_chunked(self) -> None:
        srv = StandIn(lambda s, h, b: json_answer(202, {"id": "batch_x", "object": "batch", "status": "in_progress"}))
        seen: dict[str, Any] = {}

        def lines():
            for i in range(400):  # about 100 KB: more than one 16 KiB chunk before the wait below
                yield {
                    "custom_id": f"r-{i}",
                    "model": "m",
                    "inputs": {"x": Tensor.from_list([float(i)] * 40, "float32", [1, 40])},
                }
                if i == 200:
                    # The upload must already be under way: the file is not built whole first.
                    seen["chunk_before_end"] = srv.first_chunk.wait(30)

        try:
            view = Client(srv.url, "k").create_batch(lines(), chunk_bytes=16 * 1024)
            self.assertEqual(view["id"], "batch_x")
            self.assertTrue(seen["chunk_before_end"])
            req = srv.requests[0]
            self.assertEqual(req["headers"]["Transfer-Encoding"], "chunked")
            self.assertNotIn("Content-Length", req["headers"])
            self.assertEqual(req["headers"]["Content-Type"], "application/jsonl")
            self.assertGreater(req["chunks"], 4)
            rows = [json.loads(line) for line in req["body"].decode().splitlines()]
            self.assertEqual(len(rows), 400)
            self.assertEqual(rows[7]["custom_id"], "r-7")
            self.assertEqual(rows[7]["body"]["inputs"]["x"]["dtype"], "float32")
            self.assertEqual(
                base64.b64decode(rows[7]["body"]["inputs"]["x"]["data"]), struct.pack("<40f", *([7.0] * 40))
            )
        finally:
            srv.close()

    def test_an_unreachable_api_is_named(self) -> None:
        srv = StandIn(lambda s, h, b: json_answer(200, {}))
        url = srv.url
        srv.close()
        with self.assertRaises(CitadelError) as e:
            Client(url, "k", timeout=5).get_job("m.1")
        self.assertEqual((e.exception.status, e.exception.code), (0, "CONNECTION_FAILED"))
        self.assertIn(url, e.exception.message)


# --- against a running fleet -----------------------------------------------------------


def fixtures() -> dict[str, Any]:
    with open(FIXTURES or "", encoding="utf-8") as f:
        return json.load(f)


@unittest.skipUnless(LIVE, NO_FLEET)
class Fleet(unittest.TestCase):
    fx: dict[str, Any]
    client: Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.fx = fixtures()
        cls.client = Client(API_URL or "", API_KEY or "", timeout=60)

    def assertClose(self, got: list[float], want: list[float], tol: float = 1e-5) -> None:
        self.assertEqual(len(got), len(want))
        worst = max((abs(g - w) for g, w in zip(got, want)), default=0.0)
        self.assertLessEqual(worst, tol)

    def ocr_input(self) -> Tensor:
        o = self.fx["ocr"]
        return Tensor("float32", o["shape"], base64.b64decode(o["x"]))

    def multi_inputs(self, cases: list[dict[str, Any]]) -> dict[str, Tensor]:
        return {
            "a": Tensor.from_list([c["a"] for c in cases], "float32"),
            "b": Tensor.from_list([[c["b"]] for c in cases], "int64"),
        }

    def completed(self, view: dict[str, Any]) -> dict[str, Tensor]:
        self.assertEqual(view["status"], "completed", view)
        return view["result"]["outputs"]

    def test_binary_and_json_submits_equal_a_direct_onnxruntime_run(self) -> None:
        o = self.fx["ocr"]
        for binary in (True, False):
            with self.subTest(binary=binary):
                view = self.client.submit_and_wait(
                    o["model"], {"x": self.ocr_input()}, wait_ms=self.fx["wait_ms"], binary=binary
                )
                if view["status"] != "completed":  # accepted, not final within the wait on a slow machine
                    view = self.client.wait(view["id"], timeout_s=120)
                y = self.completed(view)[o["output"]]
                self.assertEqual((y.dtype, y.shape), ("float32", o["y_shape"]))
                self.assertClose(y.flat(), o["y"])

    @unittest.skipUnless(np is not None, NO_NUMPY)
    def test_numpy_in_and_out(self) -> None:
        o = self.fx["ocr"]
        x = np.frombuffer(base64.b64decode(o["x"]), dtype="<f4").reshape(o["shape"])
        view = self.client.wait(self.client.submit(o["model"], {"x": x})["id"], timeout_s=120)
        y = self.completed(view)[o["output"]].to_numpy()
        self.assertEqual(y.shape, tuple(o["y_shape"]))
        self.assertLessEqual(float(np.max(np.abs(y.ravel() - np.array(o["y"], dtype=np.float32)))), 1e-5)

    def test_submit_then_wait_get_and_labels(self) -> None:
        cases = self.fx["multi"][:2]
        accepted = self.client.submit("multi", self.multi_inputs(cases), custom_id="py-1", metadata={"team": "py"})
        self.assertEqual((accepted["status"], accepted["model"]), ("queued", "multi"))
        view = self.client.wait(accepted["id"], timeout_s=120)
        y = self.completed(view)["y"]
        self.assertEqual(y.tolist(), [c["y"] for c in cases])
        self.assertEqual((view["custom_id"], view["metadata"]), ("py-1", {"team": "py"}))
        # The same result read as JSON (base64) and as bytes.
        as_json = self.client.get_job(accepted["id"], binary=False)
        self.assertEqual(as_json["result"]["outputs"]["y"], y)
        self.assertEqual(self.client.get_job(accepted["id"])["result"]["outputs"]["y"], y)

    def test_submit_and_wait_exact_outputs_and_idempotency(self) -> None:
        cases = self.fx["multi"][2:5]
        key = f"py-{uuid.uuid4()}"
        first = self.client.submit_and_wait(
            "multi", self.multi_inputs(cases), wait_ms=self.fx["wait_ms"], idempotency_key=key
        )
        if first["status"] != "completed":
            first = self.client.wait(first["id"], timeout_s=120)
        self.assertEqual(self.completed(first)["y"].tolist(), [c["y"] for c in cases])
        again = self.client.submit("multi", self.multi_inputs(cases), idempotency_key=key)
        self.assertEqual(again["id"], first["id"])

    def test_bulk_answers_each_item_with_one_bad_item(self) -> None:
        cases = self.fx["multi"][5:8]
        bad = {"a": Tensor.from_list([[1, 2, 3, 4, 5]], "float32"), "b": Tensor.from_list([[1]], "int64")}
        for binary in (True, False):
            with self.subTest(binary=binary):
                items = [
                    {"model": "multi", "inputs": self.multi_inputs([cases[0]]), "custom_id": "bulk-0"},
                    {"model": "multi", "inputs": bad},
                    {"model": "multi", "inputs": self.multi_inputs(cases[1:])},
                ]
                out = self.client.submit_bulk(items, binary=binary)
                self.assertEqual(len(out), 3)
                err = out[1]
                self.assertIsInstance(err, CitadelError)
                assert isinstance(err, CitadelError)
                self.assertEqual((err.status, err.code), (422, "TENSOR_SHAPE_MISMATCH"))
                first, third = out[0], out[2]
                assert isinstance(first, dict) and isinstance(third, dict)
                self.assertEqual(self.completed(self.client.wait(first["id"], 120))["y"].tolist(), [cases[0]["y"]])
                self.assertEqual(
                    self.completed(self.client.wait(third["id"], 120))["y"].tolist(), [c["y"] for c in cases[1:]]
                )

    def test_batch_round_trip_streamed_both_ways(self) -> None:
        cases = self.fx["multi"]
        produced: list[int] = []

        def lines():
            for i, c in enumerate(cases):
                produced.append(i)
                yield {"custom_id": f"req-{i}", "model": "multi", "inputs": self.multi_inputs([c])}
            # One line the manifest refuses (no input b): refused alone, with its line number.
            yield {
                "custom_id": "bad",
                "body": {"model": "multi", "inputs": {"a": Tensor.from_list([[1, 2, 3, 4]], "float32")}},
            }

        view = self.client.create_batch(lines())
        self.assertEqual(len(produced), len(cases))
        self.assertEqual(view["object"], "batch")
        self.assertEqual(view["counts"]["total"], len(cases) + 1)
        done = self.client.wait_batch(view["id"], timeout_s=300)
        self.assertEqual(done["status"], "completed")
        self.assertEqual(done["counts"]["completed"], len(cases))
        self.assertEqual(done["counts"]["refused"], 1)
        by_id = {r["custom_id"]: r for r in self.client.batch_results(view["id"])}
        self.assertEqual(len(by_id), len(cases) + 1)
        for i, c in enumerate(cases):
            r = by_id[f"req-{i}"]
            self.assertEqual((r["status"], r["line"]), ("completed", i + 1))
            self.assertEqual(r["result"]["outputs"]["y"].tolist(), [c["y"]])
        self.assertEqual(by_id["bad"]["status"], "refused")
        self.assertEqual((by_id["bad"]["line"], by_id["bad"]["error"]["code"]), (len(cases) + 1, "INPUT_MISSING"))

    def test_cancel_a_job_and_a_batch_no_worker_runs(self) -> None:
        parked = self.fx["parked"]
        x = {"x": Tensor.from_list([[1, 2, 3, 4]], "float32")}
        job = self.client.submit(parked, x)
        self.assertEqual(self.client.get_job(job["id"])["status"], "queued")
        self.assertEqual(self.client.cancel(job["id"]), {"id": job["id"], "status": "cancelled"})
        self.assertEqual(self.client.wait(job["id"], timeout_s=30)["status"], "cancelled")

        batch = self.client.create_batch({"custom_id": f"p-{i}", "model": parked, "inputs": x} for i in range(5))
        self.assertEqual(batch["counts"]["accepted"], 5)
        cancelled = self.client.cancel_batch(batch["id"])
        self.assertEqual((cancelled["status"], cancelled["counts"]["cancelled"]), ("cancelled", 5))
        self.assertEqual(self.client.get_batch(batch["id"])["status"], "cancelled")
        lines = list(self.client.batch_results(batch["id"]))
        self.assertEqual(
            [(r["custom_id"], r["status"], r["error"]["code"]) for r in lines],
            [(f"p-{i}", "cancelled", "CANCELLED") for i in range(5)],
        )

    def test_v2_infer_json_and_binary(self) -> None:
        cases = self.fx["multi"][8:11]
        for binary in (True, False):
            with self.subTest(binary=binary):
                answer = self.client.infer_v2("multi", self.multi_inputs(cases), binary=binary, request_id="py-42")
                self.assertEqual((answer["model_name"], answer["id"]), ("multi", "py-42"))
                self.assertTrue(answer["parameters"]["job_id"].startswith("multi."))
                y = answer["outputs"]["y"]
                self.assertEqual((y.dtype, y.shape), ("float32", [3, 4]))
                self.assertEqual(y.tolist(), [c["y"] for c in cases])
        versioned = self.client.infer_v2("multi", self.multi_inputs(cases[:1]), version="1")
        self.assertEqual(versioned["model_version"], "1")

    def test_float16_in_and_out_bit_equal_to_onnxruntime(self) -> None:
        h = self.fx["fp16"]
        x = Tensor("float16", h["shape"], struct.pack(f"<{len(h['bits'])}H", *h["bits"]))
        want = struct.pack(f"<{len(h['y_bits'])}H", *h["y_bits"])
        for binary in (True, False):
            with self.subTest(route="v1", binary=binary):
                view = self.client.submit_and_wait(h["model"], {"x": x}, wait_ms=self.fx["wait_ms"], binary=binary)
                if view["status"] != "completed":
                    view = self.client.wait(view["id"], timeout_s=120)
                y = self.completed(view)["y"]
                self.assertEqual((y.dtype, y.shape, y.data), ("float16", h["shape"], want))
            with self.subTest(route="v2", binary=binary):
                y = self.client.infer_v2(h["model"], {"x": x}, binary=binary)["outputs"]["y"]
                self.assertEqual((y.dtype, y.shape), ("float16", h["shape"]))
                if binary:
                    self.assertEqual(y.data, want)
                else:
                    # JSON numbers: every value exact, but -0 arrives as 0 (JavaScript's JSON writes it so).
                    self.assertEqual(y.flat(), Tensor("float16", h["shape"], want).flat())
        # Values packed by the client round as the API rounds: the same bits.
        self.assertEqual(Tensor.from_list(x.flat(), "float16", h["shape"]), x)
        if np is not None:
            self.assertEqual(Tensor.from_numpy(np.array(x.flat(), dtype=np.float16).reshape(h["shape"])), x)

    def test_bfloat16_into_a_float32_model(self) -> None:
        b = self.fx["bf16"]
        x = Tensor.from_list(b["values"], "bfloat16", b["shape"])
        self.assertEqual(list(struct.unpack(f"<{len(b['bits'])}H", x.data)), b["bits"])
        view = self.client.submit_and_wait(b["model"], {"x": x}, wait_ms=self.fx["wait_ms"])
        if view["status"] != "completed":
            view = self.client.wait(view["id"], timeout_s=120)
        y = self.completed(view)["y"]
        self.assertEqual((y.dtype, y.flat()), ("float32", b["y"]))

    def test_errors_carry_their_code(self) -> None:
        cases = self.fx["multi"][:1]
        with self.assertRaises(CitadelError) as e:
            self.client.submit("no-such-model", self.multi_inputs(cases))
        self.assertEqual((e.exception.status, e.exception.code), (404, "MODEL_NOT_FOUND"))
        bad = {"a": Tensor.from_list([[1, 2, 3, 4, 5]], "float32"), "b": Tensor.from_list([[1]], "int64")}
        with self.assertRaises(CitadelError) as e:
            self.client.submit("multi", bad, binary=False)
        self.assertEqual((e.exception.status, e.exception.code), (422, "TENSOR_SHAPE_MISMATCH"))
        with self.assertRaises(CitadelError) as e:
            self.client.infer_v2("multi", bad)
        self.assertEqual((e.exception.status, e.exception.code), (400, "TENSOR_SHAPE_MISMATCH"))
        with self.assertRaises(CitadelError) as e:
            self.client.get_job("multi.no-such-job")
        self.assertEqual((e.exception.status, e.exception.code), (404, "JOB_NOT_FOUND"))
        # A job that fails while it runs is a final view with its error, not an exception.
        failed = self.client.wait(self.client.submit("fails", {"x": Tensor.from_list([[1, 2]], "float32")})["id"], 120)
        self.assertEqual((failed["status"], failed["error"]["code"]), ("failed", "RUNTIME_ERROR"))

    def test_rate_limit_429_then_retry_after(self) -> None:
        slow = self.fx["slow_key"]
        strict = Client(API_URL or "", slow, retries=0)
        refused: CitadelError | None = None
        for _ in range(3):
            try:
                strict.models()
            except CitadelError as err:
                refused = err
                break
        self.assertIsNotNone(refused, "three requests at once never met the 1 per 2 s limit")
        assert refused is not None
        self.assertEqual((refused.status, refused.code), (429, "RATE_LIMITED"))
        self.assertIsNotNone(refused.retry_after)
        self.assertGreaterEqual(refused.retry_after or 0, 1)
        # A client that retries waits as it is told, and gets through.
        patient = Client(API_URL or "", slow, retries=5)
        self.assertTrue(any(m["name"] == "multi" for m in patient.models()))


if __name__ == "__main__":
    unittest.main()
