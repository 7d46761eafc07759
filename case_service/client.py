"""Python client of the case service's HTTP API, for demos, scripts and tests.

It speaks only HTTP, like a browser front-end would, so whoever drives the service with it
exercises the same routes, authentication and rules as any other user.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

__all__ = ["CaseServiceClient", "CaseServiceError"]


class CaseServiceError(Exception):
    """A non-2xx answer: ``status``, the service's ``error`` code and its ``message``;
    ``body`` is the whole JSON error (a refused application names its ``case_no``)."""

    def __init__(
        self, status: int, error: str, message: str, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"HTTP {status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.body = body or {}


class CaseServiceClient:
    """Every call takes the bearer token of the user who acts (citizen or officer)."""

    def __init__(self, base_url: str, *, session: aiohttp.ClientSession | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> CaseServiceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        method: str,
        path: str,
        token: str | None,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self._session.request(
            method, self._base + path, json=json, params=params, headers=headers
        ) as resp:
            body = await resp.json(content_type=None)
            if resp.status >= 300:
                raise CaseServiceError(
                    resp.status,
                    str(body.get("error", "")) if isinstance(body, dict) else "",
                    str(body.get("message", "")) if isinstance(body, dict) else str(body),
                    body if isinstance(body, dict) else None,
                )
            return body

    @staticmethod
    def _case(case_no: str) -> str:
        return f"/cases/{quote(case_no, safe='')}"

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/health", None)
        return result

    async def evidence_types(self, token: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/evidence-types", token)
        return result

    async def apply(
        self, token: str, *, citizen_id: str, juristic_id: str, case_type: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"citizen_id": citizen_id, "juristic_id": juristic_id}
        if case_type is not None:
            body["case_type"] = case_type
        result: dict[str, Any] = await self._call("POST", "/cases", token, json=body)
        return result

    async def get(self, token: str, case_no: str, *, payload: bool = True) -> dict[str, Any]:
        params = None if payload else {"payload": "0"}
        result: dict[str, Any] = await self._call("GET", self._case(case_no), token, params=params)
        return result

    async def list_cases(self, token: str, *, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else None
        body = await self._call("GET", "/cases", token, params=params)
        cases: list[dict[str, Any]] = body["cases"]
        return cases

    async def confirm(self, token: str, case_no: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", f"{self._case(case_no)}/confirm", token)
        return result

    async def withdraw(self, token: str, case_no: str, reason: str | None = None) -> dict[str, Any]:
        body = {"reason": reason} if reason else None
        path = f"{self._case(case_no)}/withdraw"
        result: dict[str, Any] = await self._call("POST", path, token, json=body)
        return result

    async def retry(self, token: str, case_no: str, evidence_type: str) -> dict[str, Any]:
        path = f"{self._case(case_no)}/evidence/{quote(evidence_type, safe='')}/retry"
        result: dict[str, Any] = await self._call("POST", path, token)
        return result

    async def decide(
        self, token: str, case_no: str, decision: str, reason: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"decision": decision}
        if reason is not None:
            body["reason"] = reason
        path = f"{self._case(case_no)}/decision"
        result: dict[str, Any] = await self._call("POST", path, token, json=body)
        return result

    async def officer_cases(
        self, token: str, *, status: str | None = None, case_type: str | None = None
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("status", status), ("case_type", case_type)) if v}
        body = await self._call("GET", "/officer/cases", token, params=params or None)
        cases: list[dict[str, Any]] = body["cases"]
        return cases

    async def overdue(self, token: str) -> list[dict[str, Any]]:
        body = await self._call("GET", "/officer/overdue", token)
        cases: list[dict[str, Any]] = body["cases"]
        return cases

    async def stats(self, token: str, case_type: str | None = None) -> dict[str, Any]:
        params = {"case_type": case_type} if case_type else None
        result: dict[str, Any] = await self._call("GET", "/officer/stats", token, params=params)
        return result
