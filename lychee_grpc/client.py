"""The Python client, from its own light package (clients/python: grpcio and protobuf only)."""

from lychee_client.client import *  # noqa: F403
from lychee_client.client import __all__  # noqa: F401
