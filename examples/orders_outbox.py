"""A shop that sends a receipt for every order it stores, and for no other: a FastAPI app writes
the order and enqueues its receipt in one SQLAlchemy transaction, through Taskyard's outbox.

    createdb shop                                                           # the shop's database
    uv run taskyard outbox install --database-url postgresql:///shop        # its outbox table
    uv run taskyard engine --outbox default=postgresql:///shop              # terminal 1
    uv run python examples/orders_outbox.py worker                          # terminal 2
    ORDERS_DATABASE_URL=postgresql:///shop uv run python examples/orders_outbox.py demo

`demo` places two orders through the app (in-process, over ASGI): one is paid and stored with its
receipt's run id; the other's card is declined after the receipt was enqueued, so the transaction
rolls back and neither the order nor its receipt exists. Serve the app itself with any ASGI server
(`uvicorn examples.orders_outbox:app`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from taskyard_sdk import NotFound, Taskyard

ty = Taskyard()

DATABASE_URL = os.environ.get("ORDERS_DATABASE_URL", "postgresql:///shop")


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    order_id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]
    total_cents: Mapped[int]
    receipt_run: Mapped[uuid.UUID | None]  # the receipt's run, known before the commit


class Receipt(BaseModel):
    order_id: int
    email: str
    total_cents: int


@ty.task(name="send-receipt", retries=3)
async def send_receipt(receipt: Receipt) -> str:
    # A real shop would call its email provider here.
    return f"receipt for order {receipt.order_id} ({receipt.total_cents / 100:.2f}) sent"


database = create_async_engine(DATABASE_URL.replace("postgresql://", "postgresql+asyncpg://"))
sessions = async_sessionmaker(database, expire_on_commit=False)


async def session() -> AsyncIterator[AsyncSession]:
    async with sessions() as db:
        yield db


Database = Annotated[AsyncSession, Depends(session)]

app = FastAPI(title="shop")


class NewOrder(BaseModel):
    email: str
    total_cents: int = Field(gt=0)
    card: str


class PlacedOrder(BaseModel):
    order_id: int
    receipt_run: uuid.UUID


class OrderStatus(BaseModel):
    order_id: int
    receipt: str  # the receipt run's status, or "enqueued" until the engine has drained it


@app.post("/orders", status_code=201)
async def place_order(new: NewOrder, db: Database) -> PlacedOrder:
    async with db.begin():  # one transaction: the order, its receipt, or neither
        order = Order(email=new.email, total_cents=new.total_cents)
        db.add(order)
        await db.flush()  # the order gets its id
        receipt = Receipt(order_id=order.order_id, email=new.email, total_cents=new.total_cents)
        handle = await send_receipt.aio_run_in(db, receipt)
        order.receipt_run = handle.run_id
        if new.card == "declined":  # a failure after the enqueue rolls the receipt back too
            raise HTTPException(402, "the card was declined")
    return PlacedOrder(order_id=order.order_id, receipt_run=handle.run_id)


@app.get("/orders/{order_id}")
async def order_status(order_id: int, db: Database) -> OrderStatus:
    order = await db.get(Order, order_id)
    if order is None or order.receipt_run is None:
        raise HTTPException(404, f"no order {order_id}")
    try:
        run = await ty.runs.aio_get(order.receipt_run)
    except NotFound:
        return OrderStatus(order_id=order_id, receipt="enqueued")
    return OrderStatus(order_id=order_id, receipt=run.status.value)


async def demo() -> None:
    async with database.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop"
    ) as shop:
        paid = await shop.post(
            "/orders", json={"email": "ada@example.com", "total_cents": 4200, "card": "4242"}
        )
        declined = await shop.post(
            "/orders", json={"email": "bob@example.com", "total_cents": 999, "card": "declined"}
        )
        placed = PlacedOrder.model_validate(paid.json())
        print(f"paid order: HTTP {paid.status_code}")
        print(f"declined order: HTTP {declined.status_code} ({declined.json()['detail']})")
        outcome = await ty.runs.aio_wait([placed.receipt_run], timeout=60, enqueued=True)
        print(outcome[placed.receipt_run].output)
        status = OrderStatus.model_validate((await shop.get(f"/orders/{placed.order_id}")).json())
        print(f"order {status.order_id}: receipt {status.receipt}")
    async with sessions() as db:
        stored = await db.scalar(select(func.count()).select_from(Order))
    receipts = await ty.runs.aio_list(task=["send-receipt"])
    print(f"orders stored: {stored}, receipts sent: {len(receipts.runs)}")
    await database.dispose()
    await ty.aio_close()


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else "demo"
    if command == "worker":
        ty.worker("shop", tasks=[send_receipt]).start()
    elif command == "demo":
        asyncio.run(demo())
    else:
        sys.exit(f"usage: {sys.argv[0]} worker|demo")


if __name__ == "__main__":
    main()
