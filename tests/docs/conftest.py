from tests.server.conftest import broker  # noqa: F401
