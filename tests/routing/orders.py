"""The ``orders`` service of the routing tests, its own deployment."""

from tests.routing import make_service

orders = make_service("orders")
