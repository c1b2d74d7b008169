"""The FastAPI lifespan shared by the partition and the gateway: start the service, close it on exit."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from fastapi import FastAPI


class Service(Protocol):
    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


def service_lifespan(service: Service) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.aclose()

    return lifespan
