"""The ``notices`` service of the routing tests, its own deployment."""

from tests.routing import make_service

notices = make_service("notices")
