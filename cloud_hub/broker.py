"""AMQP errors the hub's services retry, errors they do not, and how they are described in logs."""

from __future__ import annotations

import pika.exceptions

# Broker and network failures worth a reconnect.
RETRYABLE_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosedByBroker,
    pika.exceptions.StreamLostError,
    pika.exceptions.ChannelClosedByBroker,
    pika.exceptions.ChannelWrongStateError,
)
# Authentication and access errors need an operator, not another attempt. They subclass
# AMQPConnectionError, so handlers must catch them before RETRYABLE_ERRORS.
FATAL_ERRORS = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.AuthenticationError,
)


def describe_error(exc: BaseException) -> str:
    """Return an exception's class and message; pika's often have an empty message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text and text != "()" else type(exc).__name__
