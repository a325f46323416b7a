"""A real x402 facilitator for tests, on 127.0.0.1: the SDK's `x402FacilitatorSync` with its
`exact` EVM scheme registered, behind the standard HTTP API (`GET /supported`, `POST /verify`,
`POST /settle`). EIP-712 hashing, signature recovery, amount, recipient and time window are
the SDK's own checks; only the chain is replaced, by an in-memory ledger (balances, used
nonces, the transfers it settled), since no chain is reachable here.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from x402 import x402FacilitatorSync
from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme
from x402.mechanisms.evm.exact.eip3009_utils import ERC20_TRANSFER_EVENT_TOPIC
from x402.mechanisms.evm.types import TransactionReceipt
from x402.schemas import PaymentPayload, PaymentRequirements

NETWORK = "eip155:84532"
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"  #: the SDK's USDC on Base Sepolia


@dataclass(frozen=True)
class Transfer:
    """One settled transferWithAuthorization."""

    token: str
    payer: str
    to: str
    value: int
    nonce: str
    tx: str


@dataclass
class Ledger:
    """The chain's state the exact scheme reads and writes: balances and used nonces."""

    balances: dict[tuple[str, str], int] = field(default_factory=dict)
    used: set[tuple[str, str, str]] = field(default_factory=set)
    transfers: list[Transfer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fund(self, token: str, owner: str, amount: int) -> None:
        """Give `owner` `amount` of `token` (smallest unit)."""
        self.balances[(token.lower(), owner.lower())] = amount

    def check(self, token: str, payer: str, value: int, nonce: str) -> None:
        """Revert as the token contract would: a used nonce, or too little balance."""
        if (token.lower(), payer.lower(), nonce) in self.used:
            raise RuntimeError("execution reverted: FiatTokenV2: authorization is used or canceled")
        if self.balances.get((token.lower(), payer.lower()), 0) < value:
            raise RuntimeError("execution reverted: ERC20: transfer amount exceeds balance")

    def transfer(self, token: str, payer: str, to: str, value: int, nonce: str) -> Transfer:
        """Apply one transfer (atomic with its checks) and record it."""
        with self.lock:
            self.check(token, payer, value, nonce)
            self.used.add((token.lower(), payer.lower(), nonce))
            self.balances[(token.lower(), payer.lower())] -= value
            key = (token.lower(), to.lower())
            self.balances[key] = self.balances.get(key, 0) + value
            done = Transfer(token, payer, to, value, nonce, "0x" + secrets.token_hex(32))
            self.transfers.append(done)
            return done


class LedgerSigner:
    """The facilitator's chain signer (`FacilitatorEvmSigner`), on the in-memory ledger."""

    def __init__(self, ledger: Ledger, contracts: tuple[str, ...] = (USDC,)):
        self.ledger = ledger
        self.contracts = {c.lower() for c in contracts}
        self.address = "0x" + "fa" * 20

    def get_addresses(self) -> list[str]:
        return [self.address]

    def get_chain_id(self) -> int:
        return int(NETWORK.split(":")[1])

    def get_code(self, address: str) -> bytes:
        return b"\x60\x80" if address.lower() in self.contracts else b""

    def get_balance(self, address: str, token_address: str) -> int:
        return self.ledger.balances.get((token_address.lower(), address.lower()), 0)

    def read_contract(self, address: str, abi: Any, function_name: str, *args: Any) -> Any:
        """eth_call: the transfer simulation checks what the contract would."""
        if function_name == "transferWithAuthorization":
            payer, _to, value, _after, _before, nonce = args[:6]
            self.ledger.check(address, payer, int(value), _hex(nonce))
            return None
        if function_name == "balanceOf":
            return self.get_balance(args[0], address)
        raise RuntimeError(f"execution reverted: {function_name} is not modelled")

    def write_contract(
        self, address: str, abi: Any, function_name: str, *args: Any, data_suffix: Any = None
    ) -> str:
        """A transaction: only transferWithAuthorization, applied to the ledger."""
        if function_name != "transferWithAuthorization":
            raise RuntimeError(f"execution reverted: {function_name} is not modelled")
        payer, to, value, _after, _before, nonce = args[:6]
        return self.ledger.transfer(address, payer, to, int(value), _hex(nonce)).tx

    def wait_for_transaction_receipt(self, tx_hash: str) -> TransactionReceipt:
        """The receipt, with the ERC-20 Transfer event the scheme checks."""
        done = next(t for t in self.ledger.transfers if t.tx == tx_hash)
        log = {
            "address": done.token,
            "topics": [ERC20_TRANSFER_EVENT_TOPIC, _topic(done.payer), _topic(done.to)],
            "data": "0x" + done.value.to_bytes(32, "big").hex(),
        }
        return TransactionReceipt(status=1, block_number=1, tx_hash=tx_hash, logs=[log])

    def verify_typed_data(self, *args: Any, **kwargs: Any) -> bool:
        raise NotImplementedError("EOA signatures are recovered by the scheme itself")

    def send_transaction(self, to: str, data: bytes) -> str:
        raise RuntimeError("execution reverted: raw transactions are not modelled")


def _hex(value: Any) -> str:
    return "0x" + value.hex() if isinstance(value, bytes) else str(value).lower()


def _topic(address: str) -> str:
    return "0x" + "00" * 12 + address.lower().removeprefix("0x")


class Facilitator:
    """The facilitator server: its URL, ledger, and switches a test flips."""

    def __init__(self, networks: tuple[str, ...] = (NETWORK,)):
        self.ledger = Ledger()
        self.sdk = x402FacilitatorSync()
        self.sdk.register(list(networks), ExactEvmFacilitatorScheme(LedgerSigner(self.ledger)))
        self.settle_away = False  #: /settle answers 503, like a facilitator that is down
        self.calls: dict[str, int] = {"supported": 0, "verify": 0, "settle": 0}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        """(status, JSON) for one request, as the standard facilitator API answers it."""
        name = path.strip("/")
        self.calls[name] = self.calls.get(name, 0) + 1
        if name == "supported":
            return 200, self.sdk.get_supported().model_dump(by_alias=True, exclude_none=True)
        if body is None or name not in ("verify", "settle"):
            return 404, {"error": "not found"}
        if name == "settle" and self.settle_away:
            return 503, {"error": "facilitator unavailable"}
        payload = PaymentPayload.model_validate(body["paymentPayload"])
        requirements = PaymentRequirements.model_validate(body["paymentRequirements"])
        result = getattr(self.sdk, name)(payload, requirements)
        return 200, result.model_dump(by_alias=True, exclude_none=True)


def _handler(facilitator: Facilitator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._send(*facilitator.answer(self.path, None))

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            self._send(*facilitator.answer(self.path, json.loads(self.rfile.read(length))))

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def running(networks: tuple[str, ...] = (NETWORK,)) -> Iterator[Facilitator]:
    """A facilitator serving on 127.0.0.1 until the block ends."""
    facilitator = Facilitator(networks)
    thread = threading.Thread(target=facilitator.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield facilitator
    finally:
        facilitator.server.shutdown()
        facilitator.server.server_close()
        thread.join(5)
