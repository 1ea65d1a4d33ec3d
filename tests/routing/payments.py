"""The ``payments`` service of the routing tests, its own deployment."""

from tests.routing import make_service

payments = make_service("payments")
